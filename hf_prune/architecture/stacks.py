"""Models with several layer stacks: encoder-decoders (T5, BART) and two-tower models (CLIP).

A multi-stack model type has one `Stack` per layer list, each with its own `Layout` (its own module paths and
config keys: BART's `encoder_attention_heads` / `decoder_attention_heads`, CLIP's `text_config` /
`vision_config`), and, for decoder stacks, a layout of the cross-attention of each layer (`Stack.cross`).
Everything that is per layer in hf_prune is addressed by `"<stack>.<layer>"` keys on such models
(`prune_model(model, heads={"encoder.3": [0, 1]})`), and `layer_shapes`, the config entry and the counts are
dicts keyed by stack name. Single-stack models keep their integer keys and formats.

Per-stack code reuses the single-stack code through a `StackView`: an object that answers `config` (the
stack's config), `base_model` and the layout of one stack, so `get_layout`, `get_layers`, `layer_shapes` and
surgery's request planning work on it unchanged.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import NamedTuple

import torch.nn as nn
from torch.nn.utils import skip_init

from .layouts import Layout, Stack, base_model, find_layers, find_submodule, get_layers, get_stacks


class StackView:
    """One stack of a multi-stack model, seen by hf_prune's per-stack code as a single-stack model.

    `config` is the stack's config, `base_model` the model's transformer body, `hf_prune_layout` the stack's layout
    (or, for `cross=True`, the layout of its cross-attention). Calling the view calls the whole model.
    """

    def __init__(self, model: nn.Module, stack: Stack, cross: bool = False):
        if cross and stack.cross is None:
            raise ValueError(f"stack {stack.name!r} has no cross-attention")
        self.model = model
        self.stack = stack
        self.hf_prune_layout = stack.cross if cross else stack.layout
        self.config = getattr(model.config, stack.config) if stack.config else model.config
        self.base_model = base_model(model)

    @property
    def name(self) -> str:
        return self.stack.name

    def cross_view(self) -> StackView:
        return StackView(self.model, self.stack, cross=True)

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):  # everything else (parameters(), device, training, ...) is the model's
        if name in ("model", "stack", "hf_prune_layout", "config", "base_model"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return f"StackView({type(self.model).__name__}, {self.stack.name!r})"


def model_stacks(model: nn.Module) -> tuple[Stack, ...] | None:
    """The stacks this model actually builds, in order (T5EncoderModel: the encoder; CLIPForImageClassification:
    the vision tower); None for a single-stack model."""
    stacks = get_stacks(model)
    if stacks is None:
        return None
    return tuple(stack for stack in stacks if find_layers(model, stack.layout) is not None)


def stack_views(model: nn.Module) -> dict[str, StackView]:
    """{stack name: view} of a multi-stack model's stacks, in order."""
    return {stack.name: StackView(model, stack) for stack in model_stacks(model) or ()}


def layer_stacks(model: nn.Module) -> list[str]:
    """Names of the layer stacks of a model with several ("encoder", "decoder"; "text", "vision"), in order;
    [] for a single-stack model, whose layers keep plain integer keys."""
    return [stack.name for stack in model_stacks(model) or ()]


def split_key(key, names: tuple[str, ...], what: str) -> tuple[str, int]:
    """`"<stack>.<layer>"` -> (stack, layer), or ValueError naming the accepted form."""
    if isinstance(key, str) and key.count(".") == 1:
        stack, layer = key.split(".")
        if stack in names and layer.strip().isdigit():
            return stack, int(layer)
    raise ValueError(
        f"{what} key {key!r} must be \"<stack>.<layer>\" on a model with several layer stacks, "
        f"stack one of {', '.join(names)} (e.g. \"{names[0]}.0\")"
    )


def split_request(request, names: tuple[str, ...], kind: str) -> dict[str, dict[int, object]]:
    """{"encoder.3": [...], ...} -> {"encoder": {3: [...]}, ...}; ValueError for a non-dict or a bad key."""
    if request is None:
        return {}
    if not isinstance(request, Mapping):
        raise ValueError(f"`{kind}` must be a dict {{\"<stack>.<layer>\": [indices]}}, got {type(request).__name__}")
    out: dict[str, dict[int, object]] = {}
    for key, value in request.items():
        stack, layer = split_key(key, names, f"`{kind}`")
        out.setdefault(stack, {})[layer] = value
    return out


def split_layers(layers, names: tuple[str, ...]) -> dict[str, list[int]]:
    """["encoder.3", "decoder.0"] -> {"encoder": [3], "decoder": [0]}."""
    if layers is None:
        return {}
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise ValueError(f"`layers` must be a list of \"<stack>.<layer>\" keys, got {layers!r}")
    out: dict[str, list[int]] = {}
    for key in layers:
        stack, layer = split_key(key, names, "`layers`")
        out.setdefault(stack, []).append(layer)
    return out


# ----------------------------------------------------------------------------- one flat list for scoring and planning

ATTENTION_FIELDS = ("attention", "q", "k", "v", "o")
FFN_FIELDS = ("up", "gate", "down")


class UnitKey(NamedTuple):
    """Where one entry of a FlatView comes from: a stack's layer, or that layer's cross-attention."""

    stack: str
    layer: int
    cross: bool


def _zero_width(in_features: int, out_features: int, like: nn.Module) -> nn.Linear:
    """A Linear with no units, on `like`'s device: the FFN of a cross-attention entry (never called)."""
    device = like.weight.device if like.weight.device.type != "meta" else "cpu"
    with warnings.catch_warnings():  # "Initializing zero-element tensors is a no-op": there is nothing to initialise
        warnings.simplefilter("ignore", UserWarning)
        linear = skip_init(nn.Linear, in_features, out_features, bias=False, device=device)
    linear.weight.requires_grad_(False)
    return linear


def _virtual_layer(layer: nn.Module, layout: Layout, cross: bool) -> nn.Module:
    """A module naming one layer's projections canonically ("q", "o", "down", ...) without owning them.

    A stack's own layer keeps the real layer as its only child (`block`), so its parameters are the layer's;
    a cross-attention entry owns nothing but zero-width FFN stand-ins, so no parameter is counted twice.
    """
    virtual = nn.Module()
    if not cross:
        virtual.block = layer
    for name in ATTENTION_FIELDS + (() if cross else FFN_FIELDS) + ("head_bias",):
        # a plain reference, not a child: hooks land on the real module (None: the layer has none, e.g. no T5 table)
        virtual.__dict__[name] = find_submodule(layer, getattr(layout, name))
    if cross:
        o = virtual.__dict__["o"]
        hidden = o.weight.shape[0]
        virtual.up, virtual.down = _zero_width(hidden, 0, o), _zero_width(0, hidden, o)
        if layout.gated:
            virtual.gate = _zero_width(hidden, 0, o)
    return virtual


class FlatView:
    """A multi-stack model seen as one single-stack model whose layers are every stack's layers, in stack order,
    followed by one entry per decoder layer for its cross-attention (heads only). Importance scoring and the
    planners run on it unchanged; `keys[i]` says where flat entry i comes from.
    """

    def __init__(self, model: nn.Module):
        views = stack_views(model)
        if not views:
            raise ValueError(f"{type(model).__name__} has one layer stack: use it directly")
        first = next(iter(views.values())).hf_prune_layout
        self.model = model
        self.hf_prune_layout = dataclasses.replace(
            first, layers="layers", attention="attention", q="q", k="k", v="v", o="o", up="up",
            gate="gate" if first.gated else None, down="down", fused=(), head_rows=(),
            head_bias="head_bias" if first.head_bias else None, shared_bias=None, first_layer_differs=None, ffn=None,
        )
        self.keys: list[UnitKey] = []
        layers = []
        for name, view in views.items():
            for i, layer in enumerate(get_layers(view)):
                layers.append(_virtual_layer(layer, view.hf_prune_layout, cross=False))
                self.keys.append(UnitKey(name, i, False))
        for name, view in views.items():
            if view.stack.cross is not None:
                for i, layer in enumerate(get_layers(view)):
                    layers.append(_virtual_layer(layer, view.stack.cross, cross=True))
                    self.keys.append(UnitKey(name, i, True))
        self.base_model = nn.Module()
        self.base_model.layers = nn.ModuleList(layers)
        self.config = model.config
        self.views = views

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):  # parameters(), modules(), train(), device, ... are the model's
        if name in ("model", "hf_prune_layout", "keys", "base_model", "config", "views", "mask_name"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def mask_name(self, index: int) -> str | None:
        """The batch key with the padding mask of flat entry `index`'s tokens (None: every token is real)."""
        return self.views[self.keys[index].stack].stack.mask

    def key(self, index: int) -> str:
        """The "<stack>.<layer>" key of flat entry `index` (a cross-attention entry gives its layer's key)."""
        stack, layer, _ = self.keys[index]
        return f"{stack}.{layer}"


def mask_name(model, index: int) -> str | None:
    """The batch key with the padding mask of layer `index`'s tokens: "attention_mask", or for an entry of a
    FlatView its stack's own (a decoder's "decoder_attention_mask"; None for image patches)."""
    return model.mask_name(index) if isinstance(model, FlatView) else "attention_mask"
