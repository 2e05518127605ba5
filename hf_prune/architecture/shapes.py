"""Read the current per-layer widths (query heads, key/value heads, FFN neurons) off a model's weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .layouts import Layout, get_layers, get_layout, get_submodule


@dataclass(frozen=True)
class LayerShape:
    """Widths of one transformer layer."""

    heads: int  # query heads
    kv_heads: int  # key/value heads (== heads without grouped-query attention)
    ffn: int  # FFN neurons
    head_dim: int


def in_width(module: nn.Module, conv1d: bool) -> int:
    """Input features of a Linear (weight (out, in)) or a Conv1D (weight (in, out))."""
    return module.weight.shape[0] if conv1d else module.weight.shape[1]


def out_width(module: nn.Module, conv1d: bool) -> int:
    """Output features of a Linear or a Conv1D."""
    return module.weight.shape[1] if conv1d else module.weight.shape[0]


def head_dim_of(layer: nn.Module, layout: Layout) -> int:
    return int(getattr(get_submodule(layer, layout.attention), layout.head_dim_attr))


def _kv_heads(layer: nn.Module, layout: Layout, heads: int, head_dim: int) -> int:
    """Key/value heads of a grouped-query layer, from the rows of the module holding k (fused with q and v or not)."""
    rows = out_width(get_submodule(layer, layout.path_of("k")), layout.conv1d)
    fused = layout.holder("k")
    if fused is None:
        return rows // head_dim
    query_rows = heads * head_dim if "q" in fused.parts else 0
    kv_parts = len(set(fused.parts) & {"k", "v"})
    return (rows - query_rows) // (kv_parts * head_dim)  # [q (heads * d) | k (kv * d) | v (kv * d)]


def layer_shape(layer: nn.Module, layout: Layout) -> LayerShape:
    """Current widths of one layer, read from its weights (never from the config)."""
    head_dim = head_dim_of(layer, layout)
    heads = in_width(get_submodule(layer, layout.o), layout.conv1d) // head_dim
    kv_heads = _kv_heads(layer, layout, heads, head_dim) if layout.grouped else heads
    ffn = in_width(get_submodule(layer, layout.down), layout.conv1d)
    return LayerShape(heads=heads, kv_heads=kv_heads, ffn=ffn, head_dim=head_dim)


def layer_shapes(model: nn.Module) -> list[LayerShape]:
    """Current widths of every layer of a supported model."""
    layout = get_layout(model)
    return [layer_shape(layer, layout) for layer in get_layers(model, layout)]
