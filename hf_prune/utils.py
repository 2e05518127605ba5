"""Internal helpers shared by several modules (not public API): distributed reduction, batch preparation,
an eval-mode context, (out, in) weight views, iteration limits, and access to the weights of models spread
over devices or offloaded by accelerate (`device_map`).

They live here, at the bottom of the import graph, so that no module has to reach into another one's
private names. Nothing here knows about architectures, plans or training.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
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


BUCKET_NUMEL = 1 << 26  # float64 elements per collective call (512 MiB): bounds the extra memory of a reduction


def all_reduce(tensors: list[torch.Tensor], bucket_numel: int = BUCKET_NUMEL) -> list[torch.Tensor]:
    """Sum tensors over all processes, in as few flat calls as fit `bucket_numel`; no-op in a single process.

    The tensors may live on any devices and have any dtypes: they are summed in float64 on the process
    group's device (`reduction_device`) and each result comes back on its input's device and dtype. Every
    process must pass the same shapes in the same order. Consecutive tensors are packed into one flat
    float64 buffer of at most `bucket_numel` elements (a larger tensor travels alone), so reducing e.g. the
    second moments of every layer never needs one copy of all of them on the device at once.
    """
    if not distributed() or not tensors:
        return tensors
    device = reduction_device()
    out: list[torch.Tensor] = []
    start = 0
    while start < len(tensors):
        end, size = start, 0
        while end < len(tensors) and (end == start or size + tensors[end].numel() <= bucket_numel):
            size += tensors[end].numel()
            end += 1
        chunk = tensors[start:end]
        flat = torch.cat([t.detach().reshape(-1).to(device, torch.float64) for t in chunk])  # (sum of numels,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in chunk:
            out.append(flat[offset:offset + t.numel()].reshape(t.shape).to(t.device, t.dtype))
            offset += t.numel()
        del flat
        start = end
    return out


# ----------------------------------------------------------------------------- batches and model state


def check_batch(batch) -> None:
    """A batch must be a dict of tensors: anything else -> TypeError naming what was given."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"batches must be dicts of tensors (input_ids, attention_mask, labels, ...), got {type(batch).__name__}")


def prepare_batch(batch, device: torch.device) -> dict:
    """A batch dict with its tensors on `device`; a `label` key is renamed `labels` (datasets' habit)."""
    check_batch(batch)
    out = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    if "label" in out and "labels" not in out:
        out["labels"] = out.pop("label")
    return out


def batch_rows(batch: Mapping) -> int:
    """Samples in a batch dict: the rows of its input_ids, else of its first tensor (0 without tensors)."""
    value = batch.get("input_ids")
    if not isinstance(value, torch.Tensor):
        value = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    return int(value.shape[0]) if value is not None and value.dim() > 0 else 0


def input_device(model: nn.Module) -> torch.device:
    """Where a model's inputs go: its input embeddings' device (the first device of a `device_map` model).

    For embeddings offloaded by accelerate (weights on the meta device), their hook's execution device."""
    try:
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    except NotImplementedError:  # two-tower models (CLIPModel) have no single input embedding
        embeddings = None
    hooked = _hook_execution_device(embeddings) if embeddings is not None else None
    if hooked is not None:
        return hooked
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


# ----------------------------------------------------------------------------- models spread over devices (accelerate)
#
# A model loaded with `from_pretrained(..., device_map=...)` carries accelerate hooks (`module._hf_hook`,
# an AlignDevicesHook or a SequentialHook of them). A module whose weights are offloaded (to CPU memory or
# to disk) holds meta tensors; its hook's `weights_map` (usually a PrefixedDataset over an
# OffloadedWeightsLoader) holds the values, and the hook's `execution_device` is where it computes.


def _hooks(module: nn.Module) -> list:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])  # SequentialHook -> its hooks


def _hook_execution_device(module: nn.Module) -> torch.device | None:
    for hook in _hooks(module):
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    return None


def offload_hook(module: nn.Module):
    """The accelerate hook that offloads `module`'s own weights (it has a `weights_map`), or None."""
    for hook in _hooks(module):
        if getattr(hook, "offload", False) and getattr(hook, "weights_map", None) is not None:
            return hook
    return None


def execution_device(module: nn.Module) -> torch.device:
    """Where `module` computes: its accelerate hook's execution device, else the device of its first parameter."""
    hooked = _hook_execution_device(module)
    if hooked is not None:
        return hooked
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _offload_slot(module: nn.Module, name: str):
    """(store, key) where `module`'s offloaded tensor `name` lives, or None when there is no such entry."""
    hook = offload_hook(module)
    if hook is None:
        return None
    store, key = hook.weights_map, name
    if hasattr(store, "dataset") and hasattr(store, "prefix"):  # accelerate's PrefixedDataset
        store, key = store.dataset, f"{store.prefix}{name}"
    if hasattr(store, "index") and hasattr(store, "state_dict"):  # accelerate's OffloadedWeightsLoader
        return (store, key) if key in store.state_dict or key in store.index else None
    if isinstance(store, Mapping):
        return (store, key) if key in store else None
    return None


def offload_problem(module: nn.Module, name: str) -> str | None:
    """Why tensor `name` of `module` could not be read and rewritten in place, or None when it can.

    Materialised tensors (any real device) can; a meta tensor can when an accelerate offload hook holds its
    value in a weights map hf_prune can write to (an OffloadedWeightsLoader or a plain dict)."""
    tensor = getattr(module, name, None)
    if not isinstance(tensor, torch.Tensor) or tensor.device.type != "meta":
        return None
    slot = _offload_slot(module, name)
    if slot is None:
        return ("is on the meta device and no accelerate offload hook holds its values: load the model with "
                "from_pretrained(..., device_map=..., offload_folder=...) or load its weights before pruning or scoring")
    store, _ = slot
    if not (hasattr(store, "index") and hasattr(store, "state_dict")) and not isinstance(store, MutableMapping):
        return (f"is offloaded in a read-only {type(store).__name__}: load the model with from_pretrained(..., "
                "device_map=..., offload_folder=...) or keep this layer in memory (max_memory / device_map)")
    return None


def read_offloaded(module: nn.Module, name: str) -> torch.Tensor:
    """The value of an offloaded tensor (on the CPU, or where accelerate's loader puts it)."""
    slot = _offload_slot(module, name)
    if slot is None:
        raise ValueError(f"{type(module).__name__}.{name} {offload_problem(module, name)}")
    store, key = slot
    return store[key]


def write_offloaded(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace the offloaded value of `module`'s tensor `name` by `value` (any shape) and resize its meta tensor.

    Disk-offloaded entries (an OffloadedWeightsLoader with a `save_folder`) are written back to that folder as
    accelerate writes them (`offload_weight`: a .dat memmap plus its index entry, which replaces the one that
    pointed into the checkpoint; the checkpoint itself is never written). Entries kept in CPU memory are
    replaced in memory. The module stays offloaded: the next forward loads the new value through its hook.
    """
    problem = offload_problem(module, name)
    slot = _offload_slot(module, name)
    if problem is not None or slot is None:
        raise ValueError(f"{type(module).__name__}.{name} {problem or 'is not offloaded'}")
    store, key = slot
    value = value.detach().contiguous()
    if hasattr(store, "index") and hasattr(store, "state_dict"):
        if key in store.state_dict or store.save_folder is None or value.numel() == 0:  # no empty memmaps
            store.state_dict[key] = value.cpu()
        else:
            from accelerate.utils import offload_weight

            offload_weight(value.cpu(), key, store.save_folder, index=store.index)
    else:
        store[key] = value.to(store[key].device) if isinstance(store.get(key), torch.Tensor) else value.cpu()
    tensor = getattr(module, name)
    tensor.data = torch.empty(value.shape, dtype=tensor.dtype, device="meta")


def write_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set `module.<name>` to `value` (any shape, keeping the tensor's dtype and the same Parameter object).

    A materialised tensor gets the value on its own device; an offloaded one (meta, with an accelerate hook)
    gets it in its weights map (`write_offloaded`). ValueError for a meta tensor no hook can hold."""
    tensor = getattr(module, name)
    if tensor.device.type == "meta":
        problem = offload_problem(module, name)
        if problem is not None:
            raise ValueError(f"{type(module).__name__}.{name} {problem}")
        write_offloaded(module, name, value.to(tensor.dtype))
        return
    tensor.data = value.detach().to(tensor.device, tensor.dtype).contiguous()


@contextmanager
def materialized(module: nn.Module) -> Iterator[nn.Module]:
    """Within the context, `module`'s own offloaded weights are real tensors on its execution device.

    Uses accelerate's `align_module_device` (the hook's own pre/post forward); a module with nothing offloaded
    is left as it is. ValueError when a weight is on the meta device and no hook can load it."""
    if offload_hook(module) is not None:
        from accelerate.utils import align_module_device

        with align_module_device(module):
            yield module
        return
    for name, _ in module.named_parameters(recurse=False):
        problem = offload_problem(module, name)
        if problem is not None:
            raise ValueError(f"{type(module).__name__}.{name} {problem}")
    yield module
