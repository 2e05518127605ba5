"""Surgery: physically rewrite layers to drop units, so a pruned model is a smaller dense model."""

from .depth import drop_layers
from .width import prune_model, resize_to_shapes

__all__ = ["drop_layers", "prune_model", "resize_to_shapes"]
