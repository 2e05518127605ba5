"""What a pruning run leaves behind for people: pruning_report.json, a PNG heatmap, a printed table (card: model_card.py)."""

from __future__ import annotations

import io
from pathlib import Path

from ..architecture.config_entry import layer_history
from ..architecture.shapes import layer_shapes
from ..serialization.atomic import atomic_write_bytes, atomic_write_json


def structure(model) -> dict:
    """Per-layer widths, which original layers remain and, when tracked, the dense indices of the heads each keeps.

    num_layers: the current layer count; layers: the original index of each current layer; removed_layers: the
    original indices of the layers removed (depth pruning), out of base num_layers.
    """
    shapes = layer_shapes(model)
    entry = getattr(model.config, "hf_prune", None) or {}
    base = entry.get("base") if isinstance(entry, dict) else None
    layers, total = layer_history(model.config, len(shapes))
    return {
        "heads_per_layer": [s.heads for s in shapes],
        "kv_heads_per_layer": [s.kv_heads for s in shapes],
        "ffn_per_layer": [s.ffn for s in shapes],
        "head_dim": shapes[0].head_dim if shapes else 0,
        "kept_heads": entry.get("kept_heads") if isinstance(entry, dict) else None,
        "base": base,
        "num_layers": len(shapes),
        "layers": layers,
        "removed_layers": sorted(set(range(total)) - set(layers)),
    }


def layer_record(struct: dict) -> tuple[list[int], int]:
    """(original index of each current layer, original layer count) of a report's structure.

    Structures written before depth pruning existed (or by hand) have every layer: (0..n-1, n).
    """
    n = len(struct["heads_per_layer"])
    layers = struct.get("layers")
    total = n + len(struct.get("removed_layers") or [])
    if isinstance(layers, list) and len(layers) == n and all(isinstance(i, int) and 0 <= i < total for i in layers):
        return layers, total
    return list(range(n)), n


def removed_layers(struct: dict) -> list[int]:
    """Original indices of the layers a structure no longer has (empty without depth pruning)."""
    layers, total = layer_record(struct)
    return sorted(set(range(total)) - set(layers))


def write_report(path: str | Path, report: dict) -> None:
    atomic_write_json(path, report)


def heatmap_png(report: dict, title: str = "Attention heads kept") -> bytes:
    """An original layers x heads heatmap: kept heads dark, removed light (counts per layer when indices are unknown).

    One row per layer of the original model, at its original index; layers removed whole (depth pruning) are
    drawn as grey hatched rows annotated "removed".
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    before, after = report["before"]["structure"], report["after"]["structure"]
    before_rows = dict(zip(layer_record(before)[0], before["heads_per_layer"]))  # original index -> heads before
    after_layers, n_layers = layer_record(after)
    row_of = {original: j for j, original in enumerate(after_layers)}  # original index -> current layer
    base_heads = [before_rows.get(i, 0) for i in range(n_layers)]
    width = max(base_heads) if base_heads and max(base_heads) else 1
    grid = np.zeros((n_layers, width))
    kept = after.get("kept_heads")
    valid = isinstance(kept, list) and len(kept) == len(after_layers) and all(
        isinstance(k, list) and all(isinstance(h, int) and 0 <= h < width for h in k) for k in kept)
    for i, j in row_of.items():
        if valid:
            grid[i, kept[j]] = 1
        else:
            grid[i, : after["heads_per_layer"][j]] = 1
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * width + 2), max(3, 0.4 * n_layers + 1.5)))
    ax.imshow(grid, cmap="Blues", vmin=0, vmax=1.3, aspect="auto")
    ax.set_xlabel("head (dense index)" if valid else "heads kept (count)")
    ax.set_ylabel("layer" if len(after_layers) == n_layers else "layer (original index)")
    ax.set_xticks(range(width))
    ax.set_yticks(range(n_layers))
    for i in range(n_layers):
        if i not in row_of:  # removed whole
            ax.add_patch(Rectangle((-0.5, i - 0.5), width, 1, facecolor="0.8", edgecolor="0.45", hatch="///"))
            ax.text(width - 0.5 + 0.2, i, "layer removed", va="center", fontsize=8, color="0.3")
            continue
        j = row_of[i]
        ax.text(width - 0.5 + 0.2, i, f"{after['heads_per_layer'][j]}/{base_heads[i]}  ffn {after['ffn_per_layer'][j]}",
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
    depth = removed_layers(after["structure"])
    if depth:  # after the heads: rows of models without depth pruning stay as they were
        rows.append(("layers", len(before["structure"]["heads_per_layer"]), len(after["structure"]["heads_per_layer"])))
    lines = ["| | before | after | after / before |", "|---|---:|---:|---:|"]
    for name, a, b in rows:
        ratio = f"{b / a:.3f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else ""
        lines.append(f"| {name} | {_fmt(a)} | {_fmt(b)} | {ratio} |")
    lines.append("")
    if depth:
        kept, total = layer_record(after["structure"])
        lines.append(f"layers removed:       {len(depth)} of {total} (original index " + " ".join(map(str, depth)) + ")")
        lines.append("layers kept (orig.):  " + " ".join(map(str, kept)))
    lines.append("heads kept per layer: " + " ".join(map(str, after["structure"]["heads_per_layer"])))
    lines.append("FFN width per layer:  " + " ".join(map(str, after["structure"]["ffn_per_layer"])))
    return "\n".join(lines)
