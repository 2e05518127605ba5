"""Which parameters make up each head and FFN neuron, and per-unit sums over them (norms, Taylor terms).

"The unit's weights" are, for a head: its rows (weights and biases) of the query, key and value
projections, its rows of any other per-head projection the layer has (`Layout.head_rows`, e.g. DeBERTa-v2's
pos_key_proj) and its input columns of the output projection; under grouped-query attention the key/value
rows are shared by the whole group and left out (they belong to the key/value head). For a neuron: its rows
of the up (and gate) projection and its input column of the down projection. Fused projections (GPT-2's
c_attn, Phi-3's qkv_proj and gate_up_proj, ...) give each unit its rows of every part, wherever the layout
puts them (`hf_prune.architecture.fused`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..architecture.fused import rows_by_module, separate_rows
from ..architecture.layouts import Layout, find_submodule, get_submodule
from ..architecture.shapes import LayerShape, in_width, out_width
from ..utils import as_out_in, materialized


@dataclass(frozen=True)
class UnitRows:
    """Output rows of one projection that belong to units: unit u owns rows `rows[u]` (weights and bias)."""

    path: str  # from the layer to the projection
    rows: torch.Tensor  # (units, rows per unit)


def unit_rows(layout: Layout, shape: LayerShape, layer: nn.Module | None = None) -> dict[str, list[UnitRows]]:
    """The projection rows of one layer's units: {"heads": ..., "kv_heads": ..., "neurons": ...}.

    heads: query rows (and key/value rows without grouped-query attention), plus the rows of the `layout.head_rows`
    projections that `layer` has (none without a layer); kv_heads: key and value rows under grouped-query attention
    (empty otherwise); neurons: up (and gate) rows.
    """
    def groups(parts, counts, width) -> list[UnitRows]:
        return [UnitRows(path, rows) for path, rows in rows_by_module(layout, parts, counts, width).items()]

    d = shape.head_dim
    head_counts = {"q": shape.heads, "k": shape.kv_heads, "v": shape.kv_heads}
    ffn_parts = ("gate", "up") if layout.gated else ("up",)
    # head_rows are the head's weights too (surgery removes them with it): norms, Taylor terms and costs include them
    extra = [UnitRows(path, separate_rows(shape.heads, d)) for path in layout.head_rows_in(layer)] if layer is not None else []
    return {
        "heads": groups(("q",) if layout.grouped else ("q", "k", "v"), head_counts, d) + extra,
        "kv_heads": groups(("k", "v"), head_counts, d) if layout.grouped else [],
        "neurons": groups(ffn_parts, dict.fromkeys(ffn_parts, shape.ffn), 1),
    }


def unit_columns(layout: Layout) -> dict[str, str]:
    """The projection whose input columns are grouped by unit, in consecutive blocks: {"heads": o, "neurons": down}."""
    return {"heads": layout.o, "neurons": layout.down}


def unit_sizes(layer: nn.Module, layout: Layout, shape: LayerShape) -> dict[str, int]:
    """Parameters of one unit of each kind: {"heads": ..., "kv_heads": ..., "neurons": ...} (0 for a kind with no unit).

    A head counts its rows (weights and biases) and its output-projection input columns, a key/value head (GQA)
    its key and value rows, a neuron its up/gate rows and its down-projection input column.
    """
    rows, cols = unit_rows(layout, shape, layer), unit_columns(layout)
    units = {"heads": shape.heads, "kv_heads": shape.kv_heads if layout.grouped else 0, "neurons": shape.ffn}
    widths = {"heads": shape.head_dim, "neurons": 1}
    sizes = {}
    for kind, count in units.items():
        size = 0
        for group in rows[kind]:
            module = get_submodule(layer, group.path)
            per_row = in_width(module, layout.conv1d) + (getattr(module, "bias", None) is not None)
            size += group.rows.shape[1] * per_row
        if kind in cols:
            size += widths[kind] * out_width(get_submodule(layer, cols[kind]), layout.conv1d)
        table = find_submodule(layer, layout.head_bias) if kind == "heads" else None
        if table is not None:
            size += table.weight.shape[0]  # its column of a per-head bias table (T5)
        sizes[kind] = size if count else 0
    return sizes


def _row_sums(values: torch.Tensor, rows: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """Sum of a projection's weight or bias over each unit's rows -> (units,)."""
    per_row = as_out_in(values, conv1d) if values.dim() == 2 else values  # (out, in) or (out,)
    picked = per_row[rows.to(per_row.device)]  # (units, rows per unit[, in])
    return picked.reshape(rows.shape[0], -1).sum(1)


def _col_sums(values: torch.Tensor, units: int, conv1d: bool) -> torch.Tensor:
    """Sum of a projection's input columns, grouped into `units` consecutive blocks -> (units,)."""
    w = as_out_in(values, conv1d)  # (out, units * width)
    return w.reshape(w.shape[0], units, -1).sum((0, 2))  # (out, units, width) -> (units,)


def unit_sums(layer: nn.Module, layout: Layout, shape: LayerShape, values) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head and per-neuron sums of `values(name, param)` (a tensor shaped like the parameter).

    Each projection's weights are materialised one module at a time (`hf_prune.utils.materialized`), so a
    layer offloaded by accelerate (device_map with CPU or disk offload) is read through its hook; `param` is
    then the module's parameter on its execution device for the duration of the call.
    """
    rows, cols = unit_rows(layout, shape, layer), unit_columns(layout)
    sums = {"heads": torch.zeros(shape.heads, dtype=torch.float64), "neurons": torch.zeros(shape.ffn, dtype=torch.float64)}
    for kind, total in sums.items():
        if not len(total):
            continue
        for group in rows[kind]:
            module = get_submodule(layer, group.path)
            with materialized(module):
                for name in ("weight", "bias"):
                    param = getattr(module, name, None)
                    if param is not None:
                        total += _row_sums(values(f"{group.path}.{name}", param), group.rows, layout.conv1d).double().cpu()
        module = get_submodule(layer, cols[kind])
        with materialized(module):
            total += _col_sums(values(f"{cols[kind]}.weight", module.weight), len(total), layout.conv1d).double().cpu()
    return sums["heads"], sums["neurons"]
