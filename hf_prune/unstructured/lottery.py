"""Lottery-ticket rewinding: iterative magnitude pruning where survivors restart from early-training values.

Frankle & Carbin (2019) prune the smallest weights of a trained network and retrain the survivors from
their initial values; Frankle et al. (2020) rewind instead to an early training step, which is what
makes tickets work for larger networks. Here a round is: train, `prune_unstructured` a further slice of
the surviving projection weights (magnitudes of the trained weights), `rewind` every parameter to the
snapshot taken at the rewind step, keep the zeros, retrain. `reinitialize` is the control: same masks,
random values.
"""

from __future__ import annotations

import torch
from torch import nn

from .magnitude import apply_masks, check_amount, prune_unstructured, zero_masks


def snapshot_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter, taken at the rewind step ({name: tensor})."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@torch.no_grad()
def rewind(model: nn.Module, snapshot: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> nn.Module:
    """Set every parameter back to its snapshot value, then zero the pruned weights; returns the model.

    The same Parameter objects are kept (only their values change), so an optimizer may be reused.
    """
    params = dict(model.named_parameters())
    missing = [name for name in snapshot if name not in params or params[name].shape != snapshot[name].shape]
    if missing:
        raise ValueError(f"the snapshot does not fit the model (missing or reshaped: {missing[:3]}...)")
    for name, value in snapshot.items():
        params[name].copy_(value)
    apply_masks(model, masks)
    return model


@torch.no_grad()
def reinitialize(model: nn.Module, masks: dict[str, torch.Tensor], seed: int = 0) -> nn.Module:
    """Random-reinitialisation control: each masked matrix gets fresh N(0, std) values, std of its current values.

    Apply after `rewind`, so everything else (embeddings, biases, LayerNorms, task head) equals the ticket's
    and only the surviving weights' values differ. The zeros are kept.
    """
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    for name in masks:
        param = params[name]
        std = float(param.detach().float().std())
        noise = torch.randn(param.shape, generator=generator) * std
        param.copy_(noise.to(dtype=param.dtype, device=param.device))
    apply_masks(model, masks)
    return model


def cumulative_sparsity(rate_per_round: float, rounds: int) -> float:
    """Sparsity after `rounds` rounds that each remove `rate_per_round` of the surviving weights."""
    return 1.0 - (1.0 - rate_per_round) ** rounds


class LotteryTicketRewinder:
    """State of an iterative-magnitude-pruning-with-rewinding run.

    >>> rewinder = LotteryTicketRewinder(rate_per_round=0.2)
    >>> # train to the rewind step, then
    >>> rewinder.snapshot(model)
    >>> # finish training; then each round:
    >>> masks = rewinder.prune_and_rewind(model)   # prune 20% of survivors, rewind; retrain with masks held
    """

    def __init__(self, rate_per_round: float = 0.2, scope: str = "global"):
        check_amount(rate_per_round, scope)
        self.rate_per_round, self.scope = rate_per_round, scope
        self.rounds_done = 0
        self.rewind_state: dict[str, torch.Tensor] | None = None
        self.masks: dict[str, torch.Tensor] = {}

    @property
    def sparsity(self) -> float:
        """Target sparsity of the projection weights after the rounds done so far."""
        return cumulative_sparsity(self.rate_per_round, self.rounds_done)

    def snapshot(self, model: nn.Module) -> None:
        """Remember every parameter's value at the rewind step."""
        self.rewind_state = snapshot_weights(model)

    def prune_and_rewind(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """One round: prune the trained model by magnitude to the next sparsity, rewind survivors; returns the masks."""
        if self.rewind_state is None:
            raise ValueError("take a snapshot at the rewind step first: rewinder.snapshot(model)")
        self.rounds_done += 1
        prune_unstructured(model, self.sparsity, scope=self.scope)  # current zeros are the smallest: kept pruned
        self.masks = zero_masks(model)
        rewind(model, self.rewind_state, self.masks)
        return self.masks

    def hold(self, model: nn.Module) -> None:
        """Re-zero the pruned weights (call after every optimizer step while retraining)."""
        apply_masks(model, self.masks)
