"""Read the current per-layer widths (query heads, key/value heads, FFN neurons) off a model's weights."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch.nn as nn

from .layouts import Layout, get_layers, get_layout, get_stacks, get_submodule


@dataclass(frozen=True)
class LayerShape:
    """Widths of one transformer layer."""

    heads: int  # query heads
    kv_heads: int  # key/value heads (== heads without grouped-query attention)
    ffn: int  # FFN neurons
    head_dim: int
    cross_heads: int = 0  # cross-attention heads of a decoder layer of an encoder-decoder (0: it has none)


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


def layer_shapes(model: nn.Module) -> list[LayerShape] | dict[str, list[LayerShape]]:
    """Current widths of every layer of a supported model; for a model with several layer stacks (T5, BART,
    CLIP) a dict {stack name: that stack's list}, decoder layers with their `cross_heads`."""
    from .stacks import StackView, stack_views

    if get_stacks(model) is not None:  # None for a StackView: it is one stack
        return {name: layer_shapes(view) for name, view in stack_views(model).items()}
    layout = get_layout(model)
    layers = get_layers(model, layout)
    shapes = [layer_shape(layer, layout) for layer in layers]
    cross = model.stack.cross if isinstance(model, StackView) else None
    if cross is not None:
        shapes = [replace(s, cross_heads=layer_shape(layer, cross).heads) for s, layer in zip(shapes, layers)]
    return shapes
