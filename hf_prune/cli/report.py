"""What a pruning run leaves behind for people: pruning_report.json, a PNG heatmap, a printed table (card: model_card.py)."""

from __future__ import annotations

import io
from pathlib import Path

from ..architecture.shapes import layer_shapes
from ..serialization.atomic import atomic_write_bytes, atomic_write_json


def structure(model) -> dict:
    """Per-layer widths and, when tracked, the dense indices of the heads each layer keeps."""
    shapes = layer_shapes(model)
    entry = getattr(model.config, "hf_prune", None) or {}
    base = entry.get("base") if isinstance(entry, dict) else None
    return {
        "heads_per_layer": [s.heads for s in shapes],
        "kv_heads_per_layer": [s.kv_heads for s in shapes],
        "ffn_per_layer": [s.ffn for s in shapes],
        "head_dim": shapes[0].head_dim if shapes else 0,
        "kept_heads": entry.get("kept_heads") if isinstance(entry, dict) else None,
        "base": base,
    }


def write_report(path: str | Path, report: dict) -> None:
    atomic_write_json(path, report)


def heatmap_png(report: dict, title: str = "Attention heads kept") -> bytes:
    """A layers x heads heatmap: kept heads dark, removed light (counts per layer when indices are unknown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    after = report["after"]["structure"]
    base_heads = report["before"]["structure"]["heads_per_layer"]
    n_layers, width = len(base_heads), max(base_heads) if base_heads else 1
    grid = np.zeros((n_layers, width))
    kept = after.get("kept_heads")
    valid = isinstance(kept, list) and len(kept) == n_layers and all(
        isinstance(k, list) and all(isinstance(h, int) and 0 <= h < width for h in k) for k in kept)
    for i in range(n_layers):
        if valid:
            grid[i, kept[i]] = 1
        else:
            grid[i, : after["heads_per_layer"][i]] = 1
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * width + 2), max(3, 0.4 * n_layers + 1.5)))
    ax.imshow(grid, cmap="Blues", vmin=0, vmax=1.3, aspect="auto")
    ax.set_xlabel("head (dense index)" if valid else "heads kept (count)")
    ax.set_ylabel("layer")
    ax.set_xticks(range(width))
    ax.set_yticks(range(n_layers))
    for i in range(n_layers):
        ax.text(width - 0.5 + 0.2, i, f"{after['heads_per_layer'][i]}/{base_heads[i]}  ffn {after['ffn_per_layer'][i]}",
                va="center", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return figure_png(fig, dpi=120, bbox_inches="tight")


def figure_png(fig, dpi: int = 110, **savefig_kwargs) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, **savefig_kwargs)
    plt.close(fig)
    return buffer.getvalue()


def write_figure(path: str | Path, fig, dpi: int = 110) -> None:
    """Save a matplotlib figure as a PNG, atomically (hf_prune.atomic)."""
    atomic_write_bytes(path, figure_png(fig, dpi=dpi))


def write_heatmap(path: str | Path, report: dict) -> None:
    atomic_write_bytes(path, heatmap_png(report))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def summary_table(report: dict) -> str:
    """A plain-text before/after table (markdown-compatible)."""
    before, after = report["before"], report["after"]
    rows = []
    for name in report["metric_names"]:
        rows.append((name, before["metrics"].get(name), after["metrics"].get(name)))
    rows += [
        ("parameters", before["parameters"], after["parameters"]),
        (f"FLOPs (layers, seq {report['seq_len']})", before["flops"], after["flops"]),
        (f"latency ms (batch {report['latency']['batch_size']})", before["latency_ms"], after["latency_ms"]),
        ("heads", sum(before["structure"]["heads_per_layer"]), sum(after["structure"]["heads_per_layer"])),
        ("FFN neurons", sum(before["structure"]["ffn_per_layer"]), sum(after["structure"]["ffn_per_layer"])),
    ]
    lines = ["| | before | after | after / before |", "|---|---:|---:|---:|"]
    for name, a, b in rows:
        ratio = f"{b / a:.3f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else ""
        lines.append(f"| {name} | {_fmt(a)} | {_fmt(b)} | {ratio} |")
    lines.append("")
    lines.append("heads kept per layer: " + " ".join(map(str, after["structure"]["heads_per_layer"])))
    lines.append("FFN width per layer:  " + " ".join(map(str, after["structure"]["ffn_per_layer"])))
    return "\n".join(lines)
