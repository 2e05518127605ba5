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

from collections.abc import Mapping

import torch.nn as nn

from .layouts import Stack, base_model, find_layers, get_stacks


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
