"""Physical removal of attention heads and FFN neurons: slice weights in place, patch attributes and config.

`prune_model` validates the whole request first and only then changes anything, so a bad request
leaves the model untouched. Parameters keep their identity (their `.data` is replaced by a slice),
so dtype, device, requires_grad and references held elsewhere survive.

Models loaded with a `device_map`: weights on any real device are sliced where they are. A weight offloaded by
accelerate (a meta tensor whose value an AlignDevicesHook loads for every forward pass) is read through its
hook's weights map, sliced, and written back in place of the offloaded entry (`hf_prune.utils.write_offloaded`:
into the offload folder for disk offload, in memory for CPU offload), and its meta tensor takes the new shape:
the layer stays offloaded, smaller, and computes exactly as the same layer pruned in memory. A meta weight with
no hook holding its value cannot be sliced: `prune_model` raises ValueError before changing anything.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn

from ..architecture.config_entry import write_config_entry
from ..architecture.fused import kept_rows, separate_rows
from ..architecture.layouts import Layout, find_submodule, get_layers, get_layout, get_stacks, get_submodule
from ..architecture.shapes import LayerShape, in_width, layer_shape, layer_shapes
from ..architecture.stacks import split_layers, split_request, stack_views
from ..utils import materialized, offload_hook, offload_problem, read_offloaded, write_offloaded
from .depth import as_layer_index, check_removable, drop_layers, validate_layer_request
from .layer_config import with_layer_value
from .new_parameters import adopt_new_parameters

# ----------------------------------------------------------------------------- weight slicing


def _slice_tensor(module: nn.Module, name: str, dim: int, keep: torch.Tensor, state=None) -> None:
    """Keep entries `keep` of `module.<name>` along `dim`, in place on the same Parameter, its grad and optimizer state.

    `state` is an optimizer's `state` mapping (param -> {"exp_avg": ..., "step": ...}); every per-element
    tensor in it (same shape as the parameter) is sliced the same way, so Adam's moments keep matching.
    A weight offloaded by accelerate (meta tensor, value in its hook's weights map, see `write_offloaded`) is
    read through the hook, sliced, and written back into the weights map; the module stays offloaded.
    A meta tensor with no hook (a skeleton being built by `load_pruned`) only changes shape.
    """
    param = getattr(module, name, None)
    if param is None:
        return
    if param.device.type == "meta" and offload_hook(module) is not None:
        value = read_offloaded(module, name)
        write_offloaded(module, name, value.index_select(dim, keep.to(value.device)))
        return
    index = keep.to(param.device)
    if state is not None and param in state:
        for key, value in state[param].items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                state[param][key] = value.index_select(dim, index.to(value.device)).contiguous()
    param.data = param.data.index_select(dim, index).contiguous()
    if param.grad is not None:
        param.grad = param.grad.index_select(dim, index).contiguous()


def slice_outputs(module: nn.Module, keep: torch.Tensor, conv1d: bool = False, state=None) -> None:
    """Keep output features `keep` of a Linear (weight (out, in)) or Conv1D (weight (in, out))."""
    _slice_tensor(module, "weight", 1 if conv1d else 0, keep, state)
    _slice_tensor(module, "bias", 0, keep, state)
    if conv1d:
        module.nf = len(keep)
    else:
        module.out_features = len(keep)


def slice_inputs(module: nn.Module, keep: torch.Tensor, conv1d: bool = False, state=None) -> None:
    """Keep input features `keep` of a Linear or Conv1D (the bias is per output and stays)."""
    _slice_tensor(module, "weight", 0 if conv1d else 1, keep, state)
    if conv1d:
        module.nx = len(keep)
    else:
        module.in_features = len(keep)


def check_writable(model: nn.Module, layer_indices: Iterable[int]) -> None:
    """ValueError, before anything changes, when a projection weight of these layers cannot be sliced.

    Weights on a real device can; an offloaded weight (meta tensor) can when its accelerate hook holds the
    value in a writable weights map; a meta weight with no hook cannot (there is nothing to slice).
    """
    layout = get_layout(model)
    layers = get_layers(model, layout)
    parts = ("q", "k", "v", "gate", "up")
    paths = dict.fromkeys(p for p in (*map(layout.path_of, parts), layout.o, layout.down) if p)
    for idx in layer_indices:
        for path in (*paths, *layout.head_rows_in(layers[idx])):
            module = get_submodule(layers[idx], path)
            for name in ("weight", "bias"):
                problem = offload_problem(module, name)
                if problem is not None:
                    raise ValueError(f"cannot prune layer {idx}: its {path}.{name} {problem}. Nothing was changed")


def head_columns(heads: Iterable[int], head_dim: int) -> torch.Tensor:
    """Feature indices of the given heads in a head-major layout: head h owns [h*d, (h+1)*d)."""
    heads = torch.as_tensor(list(heads), dtype=torch.long)
    # (n_heads, 1) * d + (1, d) -> (n_heads, d) -> (n_heads * d,)
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def _slice_projection_rows(layer: nn.Module, layout: Layout, keep: dict[str, list[int]], counts: dict[str, int],
                           width: int, state=None) -> None:
    """Keep the output rows of units `keep[part]` of the logical projections in `keep` ("q", "k", "v" / "gate", "up").

    counts: current units of each part; width: rows per unit. A separate projection keeps its units' row blocks;
    a fused one (`layout.fused`) keeps the rows of every part it holds at once, in its own row order.
    """
    sliced = set()
    for part, units in keep.items():
        fused = layout.holder(part)
        if fused is None:
            rows = separate_rows(counts[part], width)[torch.as_tensor(units, dtype=torch.long)].reshape(-1)
            slice_outputs(get_submodule(layer, getattr(layout, part)), rows, layout.conv1d, state)
        elif fused.path not in sliced:
            sliced.add(fused.path)
            rows = kept_rows(fused, counts, width, keep)
            slice_outputs(get_submodule(layer, fused.path), rows, layout.conv1d, state)


# ----------------------------------------------------------------------------- empty blocks


def _find_cache(kwargs: dict):
    names = ("cache", "past_key_values", "past_key_value", "layer_past")  # layer_past: GPT-NeoX
    cache = next((kwargs[name] for name in names if kwargs.get(name) is not None), None)
    return getattr(cache, "self_attention_cache", cache)  # EncoderDecoderCache -> its self-attention part


def _bias_output(proj: nn.Module, conv1d: bool, hidden_states: torch.Tensor) -> torch.Tensor:
    """What a projection with no input features returns: its bias (or zeros), shape (B, T, out)."""
    width = proj.weight.shape[1] if conv1d else proj.weight.shape[0]
    out = hidden_states.new_zeros(*hidden_states.shape[:-1], width)  # (B, T, out)
    if getattr(proj, "bias", None) is None:
        return out
    with materialized(proj):  # an offloaded projection is never called here, so load its bias through its hook
        return out + proj.bias.to(out.device)


def _empty_attention_forward(
    attention: nn.Module, output: nn.Module | None, conv1d: bool, head_dim: int, outputs: int, hidden_states, *args,
    **kwargs,
):
    """Forward of an attention block with no head left: its output is the output projection's bias, followed by
    `outputs - 1` Nones (attention weights; T5 also returns its position bias, which the next layer then computes)."""
    batch, seq = hidden_states.shape[:2]
    cross = kwargs.get("key_value_states") is not None  # a decoder's cross-attention (T5, BART): nothing to cache
    cache = None if cross else _find_cache(kwargs)
    layer_idx = getattr(attention, "layer_idx", None)
    if cache is not None and layer_idx is not None and hasattr(cache, "update"):
        # keep the self-attention cache's sequence length right: store zero heads for this layer
        empty = hidden_states.new_zeros(batch, 0, seq, head_dim)  # (B, 0 heads, T, hs)
        cache.update(empty, empty, layer_idx)
    if output is None:  # the caller applies the output projection (BERT's attention.output.dense)
        return (hidden_states.new_zeros(batch, seq, 0), *[None] * (outputs - 1))  # (B, T, 0): no head contributes
    return (_bias_output(output, conv1d, hidden_states), *[None] * (outputs - 1))


def _empty_ffn_forward(down: nn.Module, conv1d: bool, hidden_states, *args, **kwargs):
    """Forward of a feed-forward block with no neuron left: its output is the down projection's bias."""
    return _bias_output(down, conv1d, hidden_states)


def _install_empty_forwards(layer: nn.Module, layout: Layout, shape: LayerShape, ffn: bool = True) -> None:
    """Give blocks that lost every unit a forward that returns their bias (a width-0 view would fail)."""
    attention = get_submodule(layer, layout.attention)
    if shape.heads == 0:
        output = get_submodule(layer, layout.o) if layout.attention_includes_output else None
        attention.forward = functools.partial(
            _empty_attention_forward, attention, output, layout.conv1d, shape.head_dim, layout.attention_outputs
        )
    if ffn and shape.ffn == 0 and layout.ffn is not None:
        ffn = get_submodule(layer, layout.ffn)
        ffn.forward = functools.partial(_empty_ffn_forward, get_submodule(layer, layout.down), layout.conv1d)


# ----------------------------------------------------------------------------- per-layer cuts


def _cut_heads(layer: nn.Module, layout: Layout, keep_heads: list[int], keep_kv: list[int], state=None) -> None:
    """Keep query heads `keep_heads` and key/value heads `keep_kv` of one layer."""
    old = layer_shape(layer, layout)
    d = old.head_dim
    keep = {"q": keep_heads, "k": keep_kv, "v": keep_kv}
    counts = {"q": old.heads, "k": old.kv_heads, "v": old.kv_heads}
    _slice_projection_rows(layer, layout, keep, counts, d, state)
    for path in layout.head_rows_in(layer):  # more projections with one row block per query head, as q
        slice_outputs(get_submodule(layer, path), head_columns(keep_heads, d), layout.conv1d, state)
    slice_inputs(get_submodule(layer, layout.o), head_columns(keep_heads, d), layout.conv1d, state)

    table = find_submodule(layer, layout.head_bias)
    if table is not None:  # one column per head (T5's relative position bias)
        _slice_tensor(table, "weight", 1, torch.as_tensor(keep_heads, dtype=torch.long), state)
        table.embedding_dim = len(keep_heads)

    attention = get_submodule(layer, layout.attention)
    n_heads, n_kv = len(keep_heads), len(keep_kv)
    for attr in layout.head_count_attrs:
        setattr(attention, attr, n_heads)
    for attr in layout.width_attrs:
        setattr(attention, attr, n_heads * d)
    for attr in layout.kv_head_count_attrs:
        setattr(attention, attr, n_kv)
    if layout.kv_groups_attr is not None:
        setattr(attention, layout.kv_groups_attr, n_heads // n_kv if n_kv else 1)
    if layout.attention_config_heads is not None:
        attention.config = with_layer_value(attention.config, layout.attention_config_heads, n_heads)


def _drop_argument(argument: str, module, args, kwargs):
    """Forward pre-hook: the attention ignores the `argument` handed on by the previous layer (computes its own)."""
    if kwargs.get(argument) is not None:
        kwargs = {**kwargs, argument: None}
    return args, kwargs


def own_head_bias(layers: nn.ModuleList, layout: Layout) -> None:
    """Give every layer its own copy of a per-head bias that layer 0 computes and hands on (`Layout.shared_bias`,
    T5), so heads can then be cut layer by layer. Call it before the first cut; a second call changes nothing.

    Each layer gets a copy of layer 0's table (its columns are the same dense heads), the attention's flag is set
    so it computes the bias itself, and a pre-hook drops the bias handed on from the layer before.
    """
    shared = layout.shared_bias
    if shared is None:
        return
    first = find_submodule(layers[0], layout.head_bias) if shared.flag else None
    for layer in layers:
        attention = get_submodule(layer, layout.attention)
        if getattr(attention, "_hf_prune_own_bias", False):
            continue
        if first is not None and find_submodule(layer, layout.head_bias) is None:
            parent, _, name = layout.head_bias.rpartition(".")
            device = get_submodule(layer, layout.o).weight.device  # the layer's own device under a device_map
            table = nn.Embedding(first.num_embeddings, first.embedding_dim, device=device, dtype=first.weight.dtype)
            if device.type != "meta":  # a skeleton being built by load_pruned gets its values from the checkpoint
                table.weight.data.copy_(first.weight.data.to(device))
            table.weight.requires_grad_(first.weight.requires_grad)
            setattr(get_submodule(layer, parent), name, table)
            setattr(attention, shared.flag, True)
        attention.register_forward_pre_hook(functools.partial(_drop_argument, shared.argument), with_kwargs=True)
        attention._hf_prune_own_bias = True


def _cut_neurons(layer: nn.Module, layout: Layout, keep: list[int], state=None) -> None:
    """Keep FFN neurons `keep` of one layer."""
    down = get_submodule(layer, layout.down)
    parts = ("gate", "up") if layout.gated else ("up",)
    neurons = in_width(down, layout.conv1d)
    _slice_projection_rows(layer, layout, dict.fromkeys(parts, keep), dict.fromkeys(parts, neurons), 1, state)
    slice_inputs(down, torch.as_tensor(keep, dtype=torch.long), layout.conv1d, state)


# ----------------------------------------------------------------------------- request validation


def _as_index(value, what: str) -> int:
    """An index from an int-like value; JSON-style keys ("3") are accepted as well."""
    if isinstance(value, str):
        if not value.strip().lstrip("-").isdigit():
            raise ValueError(f"{what} must be an integer, got {value!r}")
        return int(value)
    return as_layer_index(value, what)


def _normalize_request(request, kind: str, n_layers: int) -> dict[int, set[int]]:
    """{layer: indices} with int layers (JSON gives str keys) and int indices; validates types and layers."""
    if request is None:
        return {}
    if not isinstance(request, Mapping):
        raise ValueError(f"`{kind}` must be a dict {{layer index: [{kind[:-1]} indices]}}, got {type(request).__name__}")
    out: dict[int, set[int]] = {}
    for key, indices in request.items():
        layer = _as_index(key, f"layer index in `{kind}`")
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} in `{kind}` is out of range: the model has {n_layers} layers (0..{n_layers - 1})")
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Iterable):
            raise ValueError(f"`{kind}[{layer}]` must be a list of indices, got {indices!r}")
        if isinstance(indices, torch.Tensor):
            indices = indices.reshape(-1).tolist()
        out.setdefault(layer, set()).update(_as_index(i, f"index in `{kind}[{layer}]`") for i in indices)
    return out


def _plan_heads(layer_idx: int, shape: LayerShape, remove: set[int], grouped: bool) -> tuple[list[int], list[int]]:
    """Kept query heads and kept key/value heads of one layer, or ValueError for an impossible request."""
    for h in remove:
        if not 0 <= h < shape.heads:
            raise ValueError(f"head {h} of layer {layer_idx} is out of range: the layer has {shape.heads} heads")
    keep = [h for h in range(shape.heads) if h not in remove]
    if not grouped or shape.heads == 0:
        return keep, keep
    per_group = shape.heads // shape.kv_heads
    left = [sum(1 for h in keep if h // per_group == g) for g in range(shape.kv_heads)]
    sizes = {n for n in left if n > 0}
    if len(sizes) > 1:
        raise ValueError(
            f"layer {layer_idx} uses grouped-query attention ({shape.kv_heads} key/value groups of {per_group} query heads); "
            f"the request would leave {left} query heads per group. Remove whole groups, or the same number of "
            f"query heads from every group."
        )
    keep_kv = [g for g in range(shape.kv_heads) if left[g] > 0]
    return keep, keep_kv


def plan_cuts(model: nn.Module, heads=None, neurons=None) -> dict[int, tuple]:
    """Validate a request and return {layer: (keep_heads, keep_kv, keep_neurons)}; entries are None when untouched."""
    layout = get_layout(model)
    layers = get_layers(model, layout)
    head_req = _normalize_request(heads, "heads", len(layers))
    neuron_req = _normalize_request(neurons, "neurons", len(layers))
    cuts: dict[int, tuple] = {}
    for idx in sorted(set(head_req) | set(neuron_req)):
        shape = layer_shape(layers[idx], layout)
        keep_heads = keep_kv = keep_neurons = None
        if head_req.get(idx):
            keep_heads, keep_kv = _plan_heads(idx, shape, head_req[idx], layout.grouped)
        if neuron_req.get(idx):
            for n in neuron_req[idx]:
                if not 0 <= n < shape.ffn:
                    raise ValueError(f"neuron {n} of layer {idx} is out of range: the layer has {shape.ffn} FFN neurons")
            keep_neurons = [n for n in range(shape.ffn) if n not in neuron_req[idx]]
        cuts[idx] = (keep_heads, keep_kv, keep_neurons)
    return cuts


# ----------------------------------------------------------------------------- public entry points


def _apply_cuts(layers: nn.ModuleList, layout: Layout, cuts: dict[int, tuple], state=None, ffn: bool = True) -> None:
    """Apply validated cuts {layer: (keep_heads, keep_kv, keep_neurons)} (from `plan_cuts`) to one stack's layers."""
    if any(keep_heads is not None for keep_heads, _, _ in cuts.values()):
        own_head_bias(layers, layout)
    for idx, (keep_heads, keep_kv, keep_neurons) in cuts.items():
        layer = layers[idx]
        if keep_heads is not None:
            _cut_heads(layer, layout, keep_heads, keep_kv, state)
        if keep_neurons is not None:
            _cut_neurons(layer, layout, keep_neurons, state)
        _install_empty_forwards(layer, layout, layer_shape(layer, layout), ffn=ffn)


def _prune_stacks(model: nn.Module, heads, neurons, cross_heads, layers, optimizer) -> nn.Module:
    """`prune_model` on a model with several layer stacks: keys are "<stack>.<layer>"; all validated first."""
    views = stack_views(model)
    names = tuple(views)
    requests = {kind: split_request(value, names, kind)
                for kind, value in (("heads", heads), ("neurons", neurons), ("cross_heads", cross_heads))}
    removals = split_layers(layers, names)
    plans = {}
    for name, view in views.items():
        try:
            if name in requests["cross_heads"] and view.stack.cross is None:
                with_cross = [n for n, v in views.items() if v.stack.cross is not None]
                raise ValueError(f"it has no cross-attention; `cross_heads` keys name {' or '.join(with_cross) or 'none'}")
            cuts = plan_cuts(view, requests["heads"].get(name), requests["neurons"].get(name))
            cross_cuts = plan_cuts(view.cross_view(), requests["cross_heads"].get(name)) if view.stack.cross else {}
            remove = validate_layer_request(removals.get(name), len(get_layers(view)), set(cuts) | set(cross_cuts))
            check_removable(view.hf_prune_layout, remove)
            check_writable(view, cuts)
            if cross_cuts:
                check_writable(view.cross_view(), cross_cuts)
        except ValueError as err:
            raise ValueError(f"stack {name!r}: {err}") from None
        plans[name] = (cuts, cross_cuts, remove)
    state = optimizer.state if optimizer is not None else None
    known = list(model.parameters())  # held, so no new parameter can reuse one of their ids
    for name, (cuts, cross_cuts, _) in plans.items():
        stack_layers = get_layers(views[name])
        _apply_cuts(stack_layers, views[name].hf_prune_layout, cuts, state)
        if cross_cuts:
            _apply_cuts(stack_layers, views[name].stack.cross, cross_cuts, state, ffn=False)
    write_config_entry(model)
    if optimizer is not None:  # T5: the layers that lost heads now own a copy of the position-bias table
        adopt_new_parameters(optimizer, model, {id(p) for p in known})
    for name, (_, _, remove) in plans.items():
        if remove:
            drop_layers(views[name], remove, optimizer=optimizer)
    return model


@torch.no_grad()
def prune_model(
    model: nn.Module, heads=None, neurons=None, layers=None, optimizer: torch.optim.Optimizer | None = None,
    cross_heads=None,
) -> nn.Module:
    """Remove attention heads, FFN neurons and whole layers in place and return the model.

    heads:   {layer index: [query head indices]}, indices into the layer's *current* heads.
    neurons: {layer index: [FFN neuron indices]}, indices into the layer's *current* FFN width.
    layers:  [layer indices] to remove entirely (see `drop_layers`).

    Every layer index refers to the layers *before* the call: heads and neurons are cut first, layers removed
    last; a request that removes a layer and also lists heads or neurons of it is refused.
    The whole request is validated before anything changes (ValueError otherwise). With grouped-query
    attention, a request must remove whole key/value groups or the same number of heads from each group.
    The per-layer widths are recorded in `model.config.hf_prune`, so `save_pretrained` carries them.
    optimizer: its per-parameter state (e.g. Adam's exp_avg, exp_avg_sq) is sliced the same way, so training
    goes on in the smaller network with the same Parameter objects.
    Models loaded with a `device_map` work: weights are sliced on their own devices, and weights offloaded by
    accelerate (CPU or disk) are read through their hook, sliced and written back as offloaded entries
    (`hf_prune.utils.write_offloaded`); a weight on the meta device with no hook raises ValueError first.
    Models with several layer stacks (T5, BART, CLIP; `hf_prune.layer_stacks`) take "<stack>.<layer>" keys
    (`heads={"encoder.3": [0, 1]}`, `layers=["decoder.5"]`), and `cross_heads` removes cross-attention heads of
    decoder layers (`cross_heads={"decoder.2": [1]}`).
    """
    if get_stacks(model) is not None:
        return _prune_stacks(model, heads, neurons, cross_heads, layers, optimizer)
    if cross_heads:
        raise ValueError(f"`cross_heads` given, but a {get_layout(model).family} model has no cross-attention")
    layout = get_layout(model)
    cuts = plan_cuts(model, heads, neurons)
    layers_module = get_layers(model, layout)
    remove = validate_layer_request(layers, len(layers_module), cuts)
    check_removable(layout, remove)
    check_writable(model, cuts)
    state = optimizer.state if optimizer is not None else None
    kept = _original_heads(model)
    _apply_cuts(layers_module, layout, cuts, state)
    for idx, (keep_heads, _, _) in cuts.items():
        if kept is not None and keep_heads is not None:
            kept[idx] = [kept[idx][h] for h in keep_heads]
    entry = write_config_entry(model)
    if kept is not None:
        entry["kept_heads"] = kept  # original (dense) indices of the heads each layer keeps
    if remove:
        drop_layers(model, remove, optimizer=optimizer)  # last, so every index above meant the layers before the call
    return model


def _original_heads(model: nn.Module) -> list[list[int]] | None:
    """Dense-model indices of each layer's current heads, when known (None after an untracked prune)."""
    entry = getattr(model.config, "hf_prune", None)
    heads = [s.heads for s in layer_shapes(model)]
    if not isinstance(entry, dict):
        return [list(range(h)) for h in heads]
    kept = entry.get("kept_heads")
    if isinstance(kept, list) and [len(k) if isinstance(k, list) else -1 for k in kept] == heads:
        return [list(k) for k in kept]
    return None


@torch.no_grad()
def resize_to_entry(model: nn.Module, entry: dict) -> None:
    """Shrink a freshly built skeleton to the widths of a validated config entry (`read_config_entry`)."""
    if get_stacks(model) is None:
        resize_to_shapes(model, entry["heads"], entry["kv_heads"], entry["ffn"])
        return
    for name, view in stack_views(model).items():
        fields = entry["stacks"].get(name)
        if fields is None:
            continue  # a stack the entry does not record keeps the config's widths
        resize_to_shapes(view, fields["heads"], fields["kv_heads"], fields["ffn"])
        if view.stack.cross is not None:
            cross = view.cross_view()
            resize_to_shapes(cross, fields["cross_heads"], fields["cross_heads"], None)


@torch.no_grad()
def resize_to_shapes(model: nn.Module, heads: list[int], kv_heads: list[int], ffn: list[int] | None) -> None:
    """Shrink every layer to the given widths by keeping the first units (used to rebuild shapes before loading).
    ffn None: leave the FFN alone (a cross-attention view of a decoder stack)."""
    layout = get_layout(model)
    layers = get_layers(model, layout)
    if any(h != layer_shape(layer, layout).heads for h, layer in zip(heads, layers)):
        own_head_bias(layers, layout)
    for idx, layer in enumerate(layers):
        shape = layer_shape(layer, layout)
        if heads[idx] != shape.heads or kv_heads[idx] != shape.kv_heads:
            if layout.grouped and kv_heads[idx]:
                per_group, new_per_group = shape.heads // shape.kv_heads, heads[idx] // kv_heads[idx]
                keep = [g * per_group + j for g in range(kv_heads[idx]) for j in range(new_per_group)]
            else:
                keep = list(range(heads[idx]))
            _cut_heads(layer, layout, keep, list(range(kv_heads[idx])) if layout.grouped else keep)
        if ffn is not None and ffn[idx] != shape.ffn:
            _cut_neurons(layer, layout, list(range(ffn[idx])))
        _install_empty_forwards(layer, layout, layer_shape(layer, layout), ffn=ffn is not None)
