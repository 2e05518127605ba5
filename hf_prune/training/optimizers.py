"""What the callback needs to know about the Trainer's optimizer: the torch optimizer inside it, fp16 loss scaling,
and where parameters created by a cut go.

Under fp16 mixed precision the Trainer (accelerate) multiplies the loss by a GradScaler's scale before
backward. The scaler unscales only the gradients of the optimizer's own parameters (when the Trainer clips
them, or in `scaler.step`), so the gates' gradients still carry the scale. accelerate's
`AcceleratedOptimizer` holds that scaler as `.scaler` (None without fp16); FSDP's ShardedGradScaler has the
same interface. DeepSpeed scales losses inside its own engine: not seen here.
"""

from __future__ import annotations

import re

from torch import nn


def inner_optimizer(optimizer):
    """The torch optimizer inside accelerate's AcceleratedOptimizer (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def grad_scaler(optimizer):
    """The enabled GradScaler behind the Trainer's optimizer, or None (no fp16 loss scaling)."""
    scaler = getattr(optimizer, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return None
    return scaler


def loss_scale(optimizer) -> float:
    """The factor still in gradients that the optimizer does not own, e.g. the gates' (1.0 without fp16 scaling).

    One host sync per call with a scaler (`GradScaler.get_scale`); call it once per optimizer step.
    """
    scaler = grad_scaler(optimizer)
    return 1.0 if scaler is None else float(scaler.get_scale())


def unscale_parameter_gradients(optimizer) -> None:
    """Make sure the optimizer's parameter gradients are unscaled before they are read.

    The Trainer has already done it when it clips gradients (max_grad_norm > 0); `unscale_` is then
    refused ("already been called"), which is fine. `scaler.step` skips unscaling that was done here.
    """
    scaler = grad_scaler(optimizer)
    if scaler is None:
        return
    try:
        scaler.unscale_(inner_optimizer(optimizer))
    except RuntimeError as err:
        if "already been called" not in str(err):
            raise


def _same_in_every_layer(name: str) -> str:
    """A parameter's name with its layer indices blanked: "encoder.block.#.layer.#.SelfAttention.q.weight"."""
    return re.sub(r"\.\d+\.", ".#.", name)


def adopt_new_parameters(optimizer, model: nn.Module, known: set[int]) -> None:
    """Add the model's trainable parameters whose id is not in `known` to `optimizer` (a cut can create some: T5's
    per-layer copies of its position-bias table). Each joins the group of the parameter of the same name in another
    layer, and a group that grows keeps the model's parameter order, as the Trainer builds its groups, so a resumed
    run loads the optimizer's state onto the same parameters. One with no such counterpart is left out."""
    named = list(model.named_parameters())
    new = [(name, p) for name, p in named if id(p) not in known and p.requires_grad]
    if not new:
        return
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    groups = {_same_in_every_layer(name): group_of[id(p)] for name, p in named if id(p) in group_of}
    order = {id(p): i for i, (_, p) in enumerate(named)}
    grown = {}
    for name, p in new:
        group = groups.get(_same_in_every_layer(name))
        if group is not None:
            group["params"].append(p)
            grown[id(group)] = group
    for group in grown.values():
        group["params"].sort(key=lambda q: order.get(id(q), len(order)))
