"""Which parameters make up each head and FFN neuron, and per-unit sums over them (norms, Taylor terms).

"The unit's weights" are, for a head: its rows (weights and biases) of the query, key and value
projections and its input columns of the output projection; under grouped-query attention the key/value
rows are shared by the whole group and left out. For a neuron: its rows of the up (and gate) projection
and its input column of the down projection.
"""

from __future__ import annotations

import torch
from torch import nn

from ..architecture.layouts import Layout, get_submodule
from ..architecture.shapes import LayerShape
from ..utils import as_out_in, materialized


def _row_sums(values: torch.Tensor, units: int, conv1d: bool) -> torch.Tensor:
    """Sum of a projection's output rows, grouped into `units` consecutive blocks -> (units,)."""
    rows = as_out_in(values, conv1d) if values.dim() == 2 else values
    return rows.reshape(units, -1).sum(1)  # (units, rows per unit * in) -> (units,)


def _col_sums(values: torch.Tensor, units: int, conv1d: bool) -> torch.Tensor:
    """Sum of a projection's input columns, grouped into `units` consecutive blocks -> (units,)."""
    w = as_out_in(values, conv1d)  # (out, units * width)
    return w.reshape(w.shape[0], units, -1).sum((0, 2))  # (out, units, width) -> (units,)


def unit_parameters(layer: nn.Module, layout: Layout) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The parameters that make up one layer's heads and neurons, tagged by how they are split into units.

    Returns {"head_rows": ..., "head_cols": ..., "qkv_rows": ..., "neuron_rows": ..., "neuron_cols": ...},
    each a list of (name, parameter); see the module docstring for which weights belong to a unit.
    """
    def params(path: str | None, with_bias: bool = True) -> list[tuple[str, nn.Parameter]]:
        if path is None:
            return []
        module = get_submodule(layer, path)
        out = [(f"{path}.weight", module.weight)]
        if with_bias and getattr(module, "bias", None) is not None:
            out.append((f"{path}.bias", module.bias))
        return out

    head_rows = params(layout.q)
    if not layout.grouped:
        head_rows += params(layout.k) + params(layout.v)
    return {
        "head_rows": head_rows,
        "qkv_rows": params(layout.qkv),
        "head_cols": params(layout.o, with_bias=False),
        "neuron_rows": params(layout.up) + params(layout.gate),
        "neuron_cols": params(layout.down, with_bias=False),
    }


def unit_sums(layer: nn.Module, layout: Layout, shape: LayerShape, values) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head and per-neuron sums of `values(name, param)` (a tensor shaped like the parameter).

    Each projection's weights are materialised one module at a time (`hf_prune.utils.materialized`), so a
    layer offloaded by accelerate (device_map with CPU or disk offload) is read through its hook; `param` is
    then the module's parameter on its execution device for the duration of the call.
    """
    groups = unit_parameters(layer, layout)
    heads = torch.zeros(shape.heads, dtype=torch.float64)
    neurons = torch.zeros(shape.ffn, dtype=torch.float64)

    def each(group: str):
        for name, _ in groups[group]:
            path, attr = name.rsplit(".", 1)
            module = get_submodule(layer, path)
            with materialized(module):
                yield values(name, getattr(module, attr))

    if shape.heads:
        for v in each("head_rows"):
            heads += _row_sums(v, shape.heads, layout.conv1d).double().cpu()
        for v in each("qkv_rows"):
            v = as_out_in(v, layout.conv1d) if v.dim() == 2 else v
            # fused (q | k | v) rows: (3, heads, d * in) -> (heads,)
            heads += v.reshape(3, shape.heads, -1).sum((0, 2)).double().cpu()
        for v in each("head_cols"):
            heads += _col_sums(v, shape.heads, layout.conv1d).double().cpu()
    if shape.ffn:
        for v in each("neuron_rows"):
            neurons += _row_sums(v, shape.ffn, layout.conv1d).double().cpu()
        for v in each("neuron_cols"):
            neurons += _col_sums(v, shape.ffn, layout.conv1d).double().cpu()
    return heads, neurons
