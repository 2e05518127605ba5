"""Training: pruning inside the transformers Trainer (callback) and distillation from the dense model."""

from .callback import HeadPruningCallback, resize_to_checkpoint
from .config import PruningConfig
from .distillation import DistillationTrainer, distillation_loss

__all__ = ["DistillationTrainer", "HeadPruningCallback", "PruningConfig", "distillation_loss", "resize_to_checkpoint"]
