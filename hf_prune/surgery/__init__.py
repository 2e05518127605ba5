"""Surgery: physically rewrite layers to drop units, so a pruned model is a smaller dense model."""

from .width import prune_model, resize_to_shapes

__all__ = ["prune_model", "resize_to_shapes"]
