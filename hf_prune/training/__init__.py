"""Training: pruning inside the transformers Trainer (callback) and distillation from the dense model."""

from .callback import HeadPruningCallback, resize_to_checkpoint
from .config import PruningConfig
from .distillation import DistillationTrainer, distillation_loss
from .reporting import PruningLogMixin, PruningTrainer

__all__ = ["DistillationTrainer", "HeadPruningCallback", "PruningConfig", "PruningLogMixin", "PruningTrainer",
           "distillation_loss", "resize_to_checkpoint"]
