"""What a pruning run leaves behind for people: pruning_report.json, a PNG heatmap, a printed table (card: model_card.py)."""

from __future__ import annotations

import io
from pathlib import Path

from ..architecture.config_entry import current_entry, layer_history
from ..architecture.shapes import layer_shapes
from ..architecture.stacks import StackView, stack_views
from ..serialization.atomic import atomic_write_bytes, atomic_write_json


def structure(model) -> dict:
    """Per-layer widths, which original layers remain and, when tracked, the dense indices of the heads each keeps.

    num_layers: the current layer count; layers: the original index of each current layer; removed_layers: the
    original indices of the layers removed (depth pruning), out of base num_layers. A model with several layer
    stacks (T5, BART, CLIP): {"stacks": {stack: that stack's structure}}, a decoder stack's with
    `cross_heads_per_layer`.
    """
    views = stack_views(model)
    if views:
        return {"stacks": {name: _structure(view) for name, view in views.items()}}
    return _structure(model)


def _structure(model) -> dict:
    """The structure of a single-stack model or of one stack (a StackView)."""
    shapes = layer_shapes(model)
    entry = current_entry(model) or {}
    layers, total = layer_history(model, len(shapes))
    out = {
        "heads_per_layer": [s.heads for s in shapes],
        "kv_heads_per_layer": [s.kv_heads for s in shapes],
        "ffn_per_layer": [s.ffn for s in shapes],
        "head_dim": shapes[0].head_dim if shapes else 0,
        "kept_heads": entry.get("kept_heads"),
        "base": entry.get("base"),
        "num_layers": len(shapes),
        "layers": layers,
        "removed_layers": sorted(set(range(total)) - set(layers)),
    }
    if isinstance(model, StackView) and model.stack.cross is not None:
        out["cross_heads_per_layer"] = [s.cross_heads for s in shapes]
    return out


def stack_parts(struct: dict) -> dict[str | None, dict]:
    """{stack name: its structure} of a report's structure; {None: struct} for a single-stack model."""
    stacks = struct.get("stacks")
    return dict(stacks) if isinstance(stacks, dict) else {None: struct}


def total(struct: dict, key: str) -> int:
    """Sum of a per-layer list over every stack ("heads_per_layer", "cross_heads_per_layer", "ffn_per_layer")."""
    return sum(sum(part.get(key) or []) for part in stack_parts(struct).values())


def layer_record(struct: dict) -> tuple[list[int], int]:
    """(original index of each current layer, original layer count) of a report's structure (of one stack).

    Structures written before depth pruning existed (or by hand) have every layer: (0..n-1, n).
    """
    n = len(struct["heads_per_layer"])
    layers = struct.get("layers")
    total = n + len(struct.get("removed_layers") or [])
    if isinstance(layers, list) and len(layers) == n and all(isinstance(i, int) and 0 <= i < total for i in layers):
        return layers, total
    return list(range(n)), n


def removed_layers(struct: dict) -> list[int]:
    """Original indices of the layers a structure (of one stack) no longer has (empty without depth pruning)."""
    layers, total = layer_record(struct)
    return sorted(set(range(total)) - set(layers))


def layer_count(struct: dict) -> int:
    """Current layers of a structure, over every stack."""
    return sum(len(part["heads_per_layer"]) for part in stack_parts(struct).values())


def removed_layer_names(struct: dict) -> tuple[list[str], int]:
    """(the removed layers, by original index, "<stack>.<index>" with several stacks; original layer count)."""
    names, count = [], 0
    for stack, part in stack_parts(struct).items():
        names += [str(i) if stack is None else f"{stack}.{i}" for i in removed_layers(part)]
        count += layer_record(part)[1]
    return names, count


def write_report(path: str | Path, report: dict) -> None:
    atomic_write_json(path, report)


def heatmap_panels(report: dict, title: str = "Attention heads kept") -> list[tuple[str, dict, dict, str]]:
    """(title, structure before, structure after, per-layer key) of each heatmap panel: one for a single-stack
    model; with several stacks one per stack, and one more for a decoder stack's cross-attention heads."""
    before, after = stack_parts(report["before"]["structure"]), stack_parts(report["after"]["structure"])
    if None in after:
        return [(title, before[None], after[None], "heads_per_layer")]
    panels = []
    for name, part in after.items():
        panels.append((f"{name}: {title[0].lower()}{title[1:]}", before[name], part, "heads_per_layer"))
        if "cross_heads_per_layer" in part:
            panels.append((f"{name}: cross-attention heads kept", before[name], part, "cross_heads_per_layer"))
    return panels


def _panel_grid(before: dict, after: dict, key: str):
    """(original layers x heads grid of kept heads, base heads per original layer, current row of each original
    layer, whether the grid shows dense head indices (else counts)) of one panel."""
    import numpy as np

    before_rows = dict(zip(layer_record(before)[0], before[key]))  # original index -> heads before
    after_layers, n_layers = layer_record(after)
    row_of = {original: j for j, original in enumerate(after_layers)}  # original index -> current layer
    base_heads = [before_rows.get(i, 0) for i in range(n_layers)]
    width = max(base_heads) if base_heads and max(base_heads) else 1
    grid = np.zeros((n_layers, width))
    kept = after.get("kept_heads") if key == "heads_per_layer" else None  # cross-attention: counts
    valid = isinstance(kept, list) and len(kept) == len(after_layers) and all(
        isinstance(k, list) and all(isinstance(h, int) and 0 <= h < width for h in k) for k in kept)
    for i, j in row_of.items():
        if valid:
            grid[i, kept[j]] = 1
        else:
            grid[i, : after[key][j]] = 1
    return grid, base_heads, row_of, valid


def _panel_size(grid) -> tuple[float, float]:
    n_layers, width = grid.shape
    return max(4, 0.45 * width + 2), max(3, 0.4 * n_layers + 1.5)


def _draw_panel(ax, panel: tuple[str, dict, dict, str], grid, base_heads, row_of, valid) -> None:
    """One layers x heads heatmap with its per-layer annotations and removed-layer rows."""
    from matplotlib.patches import Rectangle

    title, _, after, key = panel
    n_layers, width = grid.shape
    ax.imshow(grid, cmap="Blues", vmin=0, vmax=1.3, aspect="auto")
    ax.set_xlabel("head (dense index)" if valid else "heads kept (count)")
    ax.set_ylabel("layer" if len(row_of) == n_layers else "layer (original index)")
    ax.set_xticks(range(width))
    ax.set_yticks(range(n_layers))
    for i in range(n_layers):
        if i not in row_of:  # removed whole
            ax.add_patch(Rectangle((-0.5, i - 0.5), width, 1, facecolor="0.8", edgecolor="0.45", hatch="///"))
            ax.text(width - 0.5 + 0.2, i, "layer removed", va="center", fontsize=8, color="0.3")
            continue
        j = row_of[i]
        note = f"{after[key][j]}/{base_heads[i]}"
        if key == "heads_per_layer":
            note += f"  ffn {after['ffn_per_layer'][j]}"
        ax.text(width - 0.5 + 0.2, i, note, va="center", fontsize=8)
    ax.set_title(title)


def heatmap_png(report: dict, title: str = "Attention heads kept") -> bytes:
    """An original layers x heads heatmap: kept heads dark, removed light (counts per layer when indices are unknown).

    One row per layer of the original model, at its original index; layers removed whole (depth pruning) are
    drawn as grey hatched rows annotated "removed". A model with several layer stacks gets one panel per stack
    (titled with its name) and one per decoder stack's cross-attention heads, one above the other.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = heatmap_panels(report, title)
    grids = [_panel_grid(before, after, key) for _, before, after, key in panels]
    sizes = [_panel_size(grid) for grid, *_ in grids]
    heights = [h for _, h in sizes]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(w for w, _ in sizes), sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, panel, grid in zip(axes[:, 0], panels, grids):
        _draw_panel(ax, panel, *grid)
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
    """A plain-text before/after table (markdown-compatible); with several layer stacks, per-layer lines per stack."""
    before, after = report["before"], report["after"]
    rows = []
    for name in report["metric_names"]:
        rows.append((name, before["metrics"].get(name), after["metrics"].get(name)))
    rows += [
        ("parameters", before["parameters"], after["parameters"]),
        (f"FLOPs (layers, seq {report['seq_len']})", before["flops"], after["flops"]),
        (f"latency ms (batch {report['latency']['batch_size']})", before["latency_ms"], after["latency_ms"]),
        ("heads", total(before["structure"], "heads_per_layer"), total(after["structure"], "heads_per_layer")),
    ]
    if total(before["structure"], "cross_heads_per_layer"):
        rows.append(("cross-attention heads", total(before["structure"], "cross_heads_per_layer"),
                     total(after["structure"], "cross_heads_per_layer")))
    rows.append(("FFN neurons", total(before["structure"], "ffn_per_layer"), total(after["structure"], "ffn_per_layer")))
    if removed_layer_names(after["structure"])[0]:  # after the heads: rows of models without depth pruning stay
        rows.append(("layers", layer_count(before["structure"]), layer_count(after["structure"])))
    lines = ["| | before | after | after / before |", "|---|---:|---:|---:|"]
    for name, a, b in rows:
        ratio = f"{b / a:.3f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else ""
        lines.append(f"| {name} | {_fmt(a)} | {_fmt(b)} | {ratio} |")
    lines.append("")
    for stack, part in stack_parts(after["structure"]).items():
        tag = "" if stack is None else f" ({stack})"
        depth = removed_layers(part)
        if depth:
            kept, count = layer_record(part)
            lines.append(f"layers removed{tag}:       {len(depth)} of {count} (original index "
                         + " ".join(map(str, depth)) + ")")
            lines.append(f"layers kept (orig.){tag}:  " + " ".join(map(str, kept)))
        lines.append(f"heads kept per layer{tag}: " + " ".join(map(str, part["heads_per_layer"])))
        if "cross_heads_per_layer" in part:
            lines.append(f"cross-attention heads per layer{tag}: " + " ".join(map(str, part["cross_heads_per_layer"])))
        lines.append(f"FFN width per layer{tag}:  " + " ".join(map(str, part["ffn_per_layer"])))
    return "\n".join(lines)
