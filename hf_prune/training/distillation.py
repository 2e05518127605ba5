"""Knowledge distillation from the dense model while pruning: soft-label KL on logits (as nn_pruning and CoFi).

`DistillationTrainer` is a Trainer whose loss is
    (1 - alpha) * task loss + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)),
with the teacher (usually a frozen copy of the dense starting model) run without gradients on each batch.
It includes `PruningLogMixin`, so pruning events reach every logger (see hf_prune.training.reporting).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer

from .reporting import PruningLogMixin


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2-scaled KL(teacher || student) over the last dimension, averaged over positions (where `mask` is 1)."""
    t = temperature
    log_p = F.log_softmax(student_logits.float() / t, dim=-1)
    q = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (q.exp() * (q - log_p)).sum(-1)  # (B,) or (B, T)
    if mask is not None and kl.dim() == mask.dim():
        return (kl * mask).sum() / mask.sum().clamp_min(1) * t * t
    return kl.mean() * t * t


class DistillationTrainer(PruningLogMixin, Trainer):
    """A Trainer that adds soft-label distillation from `teacher` (default: a frozen copy of the starting model).

    Its loggers (report_to integrations, console, log_history) receive HeadPruningCallback's event metrics.
    """

    def __init__(self, *args, teacher: nn.Module | None = None, alpha: float = 0.5, temperature: float = 2.0,
                 **kwargs):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        super().__init__(*args, **kwargs)
        if teacher is None and alpha > 0.0:  # at alpha 0 no teacher runs, so none is copied
            teacher = copy.deepcopy(self.model)
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False) if teacher is not None else None
        self.alpha, self.temperature = alpha, temperature

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.alpha == 0.0:  # the task loss alone: no teacher forward
            return (loss, outputs) if return_outputs else loss
        with torch.no_grad():
            teacher_logits = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        mask = inputs.get("attention_mask") if outputs.logits.dim() == 3 else None
        kd = distillation_loss(outputs.logits, teacher_logits, self.temperature, mask)
        loss = (1.0 - self.alpha) * loss + self.alpha * kd
        return (loss, outputs) if return_outputs else loss
