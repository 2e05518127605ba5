"""What the callback needs to know about the Trainer's optimizer: the torch optimizer inside it and fp16 loss
scaling.

Under fp16 mixed precision the Trainer (accelerate) multiplies the loss by a GradScaler's scale before
backward. The scaler unscales only the gradients of the optimizer's own parameters (when the Trainer clips
them, or in `scaler.step`), so the gates' gradients still carry the scale. accelerate's
`AcceleratedOptimizer` holds that scaler as `.scaler` (None without fp16); FSDP's ShardedGradScaler has the
same interface. DeepSpeed scales losses inside its own engine: not seen here.
"""

from __future__ import annotations


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
