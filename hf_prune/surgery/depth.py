"""Physical removal of whole transformer layers: shrink the layer list, the config and the KV-cache numbering.

`drop_layers` validates the request before anything changes, so a bad request leaves the model untouched.
The remaining layers keep their modules (and Parameters); each attention module's `layer_idx` is
renumbered so a default `DynamicCache` (sized from the config) sees one cache layer per remaining layer,
and the config's layer count and per-layer lists (`layer_types`, ...) are sliced to match. Per-layer
behaviour that the architecture derives from the index (GPT-2's `scale_attn_by_inverse_layer_idx`) stays
the one of the layer's original position; `config.hf_prune.layers` records those original indices.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import torch
import torch.nn as nn

from ..architecture.config_entry import current_entry, layer_history, write_config_entry
from ..architecture.layouts import Layout, get_layers, get_layout, get_stacks
from ..architecture.shapes import layer_shapes
from ..architecture.stacks import StackView, split_layers, stack_views

# Config attributes that hold one entry per layer (sliced with the layers). Lists that merely happen to have
# the layer count's length (architectures, token ids, ...) are left alone: only these names are per-layer.
PER_LAYER_CONFIG_KEYS = ("layer_types", "mlp_layer_types", "no_rope_layers")


def as_layer_index(value, what: str = "layer index") -> int:
    """An int from an int-like value (int, numpy integer, one-element integer tensor); bools and the rest -> ValueError."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.is_complex():
            raise ValueError(f"{what} must be an integer, got {value!r}")
        return int(value.item())
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


def validate_layers(layers, n_layers: int) -> list[int]:
    """Sorted, validated layer indices to remove out of `n_layers`; ValueError for anything that cannot be done."""
    if layers is None:
        return []
    if isinstance(layers, torch.Tensor):
        layers = layers.reshape(-1).tolist() if layers.dtype != torch.bool else [layers]
    if isinstance(layers, (str, bytes, dict)) or not isinstance(layers, Iterable):
        raise ValueError(f"`layers` must be a list of layer indices, got {layers!r}")
    indices = [as_layer_index(v, "index in `layers`") for v in layers]
    for i in indices:
        if not 0 <= i < n_layers:
            raise ValueError(f"layer {i} in `layers` is out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    duplicates = sorted({i for i in indices if indices.count(i) > 1})
    if duplicates:
        raise ValueError(f"`layers` lists layer(s) {duplicates} more than once")
    if len(indices) >= n_layers:
        raise ValueError(f"`layers` would remove all {n_layers} layers: at least one layer must remain")
    return sorted(indices)


def validate_layer_request(layers, n_layers: int, width_layers: Iterable[int]) -> list[int]:
    """`validate_layers`, and ValueError when a removed layer is also among `width_layers` (those whose heads or
    neurons the same request cuts): each layer is either removed or narrowed, never both."""
    remove = validate_layers(layers, n_layers)
    both = sorted(set(remove) & set(width_layers))
    if both:
        raise ValueError(
            f"layer(s) {both} are removed by `layers` and also listed in `heads` or `neurons`: "
            f"list each layer in one of them only"
        )
    return remove


def check_removable(layout: Layout, remove: Iterable[int]) -> None:
    """ValueError when the layout cannot lose one of these layers (its first layer is built differently)."""
    if layout.first_layer_differs is not None and 0 in set(remove):
        raise ValueError(
            f"layer 0 of a {layout.family} model cannot be removed: it is built differently from the other layers "
            f"(`{layout.first_layer_differs}`), so the layer after it could not be rebuilt as the new first layer. "
            f"Nothing was changed"
        )


def fixed_layers(layout: Layout) -> list[int]:
    """Current layers that can never be removed (ModernBERT's layer 0, see `check_removable`); planners skip them."""
    return [0] if layout.first_layer_differs is not None else []


def _slice_config(config, layout: Layout, keep: list[int], n_layers: int, alias: bool = True) -> None:
    """Layer count, per-layer lists and Qwen-style `max_window_layers` follow the kept layers."""
    for key in PER_LAYER_CONFIG_KEYS:
        values = getattr(config, key, None)
        if isinstance(values, (list, tuple)) and len(values) == n_layers:
            setattr(config, key, type(values)(values[i] for i in keep))
    # max_window_layers: the current layers below it use full attention; keep it counting the same layers
    window = getattr(config, "max_window_layers", None)
    if isinstance(window, int) and not isinstance(window, bool):
        config.max_window_layers = sum(1 for i in keep if i < window)
    setattr(config, layout.config_layers, len(keep))
    # alias False: one stack of several, whose config's num_hidden_layers may alias another stack's count (T5, BART)
    if alias and layout.config_layers != "num_hidden_layers" and hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = len(keep)  # an alias of config_layers in transformers; set it in case it is not


def renumber_layers(layers: nn.ModuleList) -> None:
    """Set every `layer_idx` attribute inside layer i (self-attention, cross-attention, ...) to i."""
    for i, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = i


def restore_original_indices(model: nn.Module, original: list[int]) -> None:
    """Give freshly built layers the index-dependent behaviour of their original positions.

    For a layout with `inverse_index_scaling` (GPT-2's `scale_attn_by_inverse_layer_idx`), layer i was built
    with `scaling / (i + 1)`; it gets `scaling / (original[i] + 1)`. Call it right after construction only.
    """
    layout = get_layout(model)
    flag = layout.inverse_index_scaling
    if flag is None or not getattr(model.config, flag, False):
        return
    for i, layer in enumerate(get_layers(model, layout)):
        for module in layer.modules():
            if getattr(module, flag, False) and isinstance(getattr(module, "scaling", None), float):
                module.scaling = module.scaling * (i + 1) / (original[i] + 1)


def _drop_from_optimizer(optimizer: torch.optim.Optimizer, params: set[int]) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in params:
                optimizer.state.pop(p, None)
        group["params"] = [p for p in group["params"] if id(p) not in params]


@torch.no_grad()
def drop_layers(model: nn.Module, layers, optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
    """Remove whole transformer layers in place and return the model.

    layers: indices into the model's *current* layers. Validated first (ValueError for duplicates, negative,
    out-of-range or non-integer indices, or removing every layer); then the layer list shrinks, the config's
    layer count and per-layer lists (`layer_types`, ...) are sliced, every remaining attention module's
    `layer_idx` is renumbered for the KV cache, and `model.config.hf_prune` records the original indices of
    the layers that remain (`layers`) and the original layer count (`base.num_layers`).
    optimizer: the removed layers' parameters leave its parameter groups and state.
    Models with several layer stacks take "<stack>.<layer>" keys (`["encoder.3", "decoder.1"]`).
    """
    if get_stacks(model) is not None:
        return _drop_from_stacks(model, layers, optimizer)
    layout = get_layout(model)
    module_list = get_layers(model, layout)
    n_layers = len(module_list)
    remove = validate_layers(layers, n_layers)
    if not remove:
        return model
    check_removable(layout, remove)
    config = model.config
    original, total = layer_history(model, n_layers)
    previous = current_entry(model)
    if isinstance(previous, dict):
        kept_heads = previous.get("kept_heads")
    else:  # never pruned: every layer keeps all its heads, in their dense order (as prune_model records them)
        kept_heads = [list(range(s.heads)) for s in layer_shapes(model)]
    keep = [i for i in range(n_layers) if i not in set(remove)]

    if optimizer is not None:
        _drop_from_optimizer(optimizer, {id(p) for i in remove for p in module_list[i].parameters()})
    for i in reversed(remove):  # in place on the same ModuleList, which renumbers its keys "0".."n-1"
        del module_list[i]
    renumber_layers(module_list)
    _slice_config(config, layout, keep, n_layers, alias=not isinstance(model, StackView))

    entry = write_config_entry(model, layers=[original[i] for i in keep], total_layers=total)
    if isinstance(kept_heads, list) and len(kept_heads) == n_layers:
        entry["kept_heads"] = [kept_heads[i] for i in keep]
    return model



def _drop_from_stacks(model: nn.Module, layers, optimizer) -> nn.Module:
    """`drop_layers` with "<stack>.<layer>" keys: every stack's request is validated before any layer goes."""
    views = stack_views(model)
    requests = split_layers(layers, tuple(views))
    for name, remove in requests.items():
        try:
            check_removable(views[name].hf_prune_layout, validate_layers(remove, len(get_layers(views[name]))))
        except ValueError as err:
            raise ValueError(f"stack {name!r}: {err}") from None
    for name, remove in requests.items():
        drop_layers(views[name], remove, optimizer=optimizer)
    return model
