"""What the callback scores, gates, plans and cuts: a model's layers, or on a model with several layer stacks
(T5, BART, CLIP) the entries of its `FlatView` (every stack's layers, then each decoder layer's cross-attention).

Gates, running scores, gate masks and plans are all kept over these units, so the callback's code is the same
for both; only the cut translates a plan over FlatView entries into `"<stack>.<layer>"` keys and `cross_heads`.
"""

from __future__ import annotations

from torch import nn

from ..architecture.layouts import get_stacks
from ..architecture.stacks import FlatView, layer_stacks
from ..planning.plan import PruningPlan
from ..surgery.width import prune_model
from .config import PruningConfig


def unit_view(model: nn.Module):
    """The model itself, or for a model with several layer stacks its FlatView (a new one: the entries hold the
    layers' current modules, so build it again after a cut)."""
    return FlatView(model) if get_stacks(model) is not None else model


def prune_units(model: nn.Module, plan: PruningPlan, optimizer=None) -> None:
    """`prune_model` with a plan over `unit_view(model)`'s layers, slicing `optimizer`'s state with them; parameters
    the cut creates (T5's per-layer position-bias tables) join the optimizer (`prune_model` does it)."""
    if get_stacks(model) is not None:
        plan = PruningPlan.from_flat(plan, FlatView(model).keys)
    prune_model(model, heads=plan.heads, neurons=plan.neurons, layers=plan.layers, optimizer=optimizer,
                cross_heads=plan.cross_heads or None)


def check_stack_options(config: PruningConfig, model: nn.Module) -> None:
    """ValueError naming the options the callback does not support on a model with several layer stacks yet."""
    if get_stacks(model) is None:
        return
    refused = config.stack_conflicts()
    if refused:
        raise ValueError(
            f"HeadPruningCallback: {', '.join(refused)} is not supported on models with several layer stacks "
            f"({', '.join(layer_stacks(model))}) yet: drop it and prune heads and FFN neurons (head_sparsity / "
            f"ffn_sparsity, flops_reduction or params_reduction); remove whole layers before or after training with "
            f"hf_prune.drop_layers(model, [\"<stack>.<layer>\"])")
