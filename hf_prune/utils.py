"""Internal helpers shared by several modules (not public API): distributed reduction, batch preparation,
an eval-mode context, (out, in) weight views and iteration limits.

They live here, at the bottom of the import graph, so that no module has to reach into another one's
private names. Nothing here knows about architectures, plans or training.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

# ----------------------------------------------------------------------------- distributed


def distributed() -> bool:
    """Is a torch.distributed process group initialised (torchrun, accelerate)?"""
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """Rank 0, or a single process."""
    return not distributed() or dist.get_rank() == 0


def reduction_device() -> torch.device:
    """The device collective calls of the default process group run on.

    gloo reduces CPU tensors; NCCL (and the other accelerator backends) only reduce tensors on the
    process's own accelerator, so CPU sums must travel there and back.
    """
    backend = str(dist.get_backend()).lower()
    if backend == "gloo":
        return torch.device("cpu")
    if backend == "nccl" or not hasattr(torch, "accelerator"):
        return torch.device("cuda", torch.cuda.current_device())
    accelerator = torch.accelerator.current_accelerator()
    if accelerator is None:
        return torch.device("cpu")
    return torch.device(accelerator.type, torch.accelerator.current_device_index())


def all_reduce(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum tensors over all processes in one flat call; no-op in a single process.

    The tensors may live on any devices and have any dtypes: they are summed in float64 on the process
    group's device (`reduction_device`) and each result comes back on its input's device and dtype.
    """
    if not distributed() or not tensors:
        return tensors
    device = reduction_device()
    flat = torch.cat([t.detach().reshape(-1).to(device, torch.float64) for t in tensors])  # (sum of numels,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].reshape(t.shape).to(t.device, t.dtype))
        start += t.numel()
    return out


# ----------------------------------------------------------------------------- batches and model state


def prepare_batch(batch, device: torch.device) -> dict:
    """A batch dict with its tensors on `device`; a `label` key is renamed `labels` (datasets' habit)."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"batches must be dicts of tensors (input_ids, attention_mask, labels, ...), got {type(batch).__name__}")
    out = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    if "label" in out and "labels" not in out:
        out["labels"] = out.pop("label")
    return out


def input_device(model: nn.Module) -> torch.device:
    """Where a model's inputs go: its input embeddings' device (the first device of a `device_map` model)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
        return weight.device
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own training flag on exit."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def take(batches: Iterable, n: int | None) -> Iterable:
    """At most `n` items of `batches` (all of them when `n` is None), lazily."""
    if n is None:
        return batches
    return (b for _, b in zip(range(n), batches))


# ----------------------------------------------------------------------------- weights


def as_out_in(weight: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """A projection weight viewed as (out, in): GPT-2's Conv1D stores (in, out)."""
    return weight.t() if conv1d else weight
