"""A per-layer view of a model config, for attention modules that read their head count from the config.

Phi-3's attention splits its fused qkv_proj at `config.num_attention_heads * head_dim`, reading the shared
model config at every forward pass. After non-uniform pruning each layer needs its own count, so surgery gives
such a module a `LayerConfigView`: it answers the overridden keys itself and everything else (attention
implementation, sliding window, ...) from the live model config, so later changes to the model config are seen.
"""

from __future__ import annotations

from typing import Any


class LayerConfigView:
    """The model config `base`, except for the keys in `overrides`. Writes go to `base` unless overridden."""

    def __init__(self, base: Any, overrides: dict[str, Any]):
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_overrides", dict(overrides))

    def __getattr__(self, name: str):
        if name in ("_base", "_overrides") or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)  # during copy/pickle, before __init__ ran
        overrides = self._overrides
        return overrides[name] if name in overrides else getattr(self._base, name)

    def __setattr__(self, name: str, value) -> None:
        if name in self._overrides:
            self._overrides[name] = value
        else:
            setattr(self._base, name, value)

    def __repr__(self) -> str:
        return f"LayerConfigView({type(self._base).__name__}, {self._overrides})"


def with_layer_value(config: Any, key: str, value) -> LayerConfigView:
    """A view of `config` (or of the config under an existing view) whose `key` is `value`."""
    if isinstance(config, LayerConfigView):
        return LayerConfigView(config._base, {**config._overrides, key: value})
    return LayerConfigView(config, {key: value})
