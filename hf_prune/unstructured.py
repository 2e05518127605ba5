"""Unstructured magnitude pruning of the attention and FFN projections, built on `torch.nn.utils.prune`.

Individual weights are set to zero; shapes do not change, so a dense checkpoint is as large as before
and dense kernels are no faster. Embeddings, LayerNorms, biases and task heads are never touched.
`prune_unstructured` makes the zeros permanent (`prune.remove`): no `weight_orig` / `weight_mask`
and no forward pre-hooks are left behind. `save_sparse` / `load_sparse` store the pruned matrices
compactly (CSR components) and rebuild an identical model.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.utils.prune as prune
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_directory
from .config_entry import read_config_entry
from .layouts import get_layers, get_layout, get_submodule

SCOPES = ("global", "layer")
PROJECTIONS = ("q", "k", "v", "qkv", "o", "gate", "up", "down")


def prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """{qualified module name: projection module} of every non-empty attention/FFN projection, in layer order."""
    layout = get_layout(model)
    names = {id(module): name for name, module in model.named_modules()}
    found: dict[str, nn.Module] = {}
    for layer in get_layers(model, layout):
        for projection in PROJECTIONS:
            path = getattr(layout, projection)
            if path is None:
                continue
            module = get_submodule(layer, path)
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.numel() > 0:
                found[names[id(module)]] = module
    return found


def prunable_weight_names(model: nn.Module) -> list[str]:
    """State-dict keys of the weights `prune_unstructured` may zero (`<module>.weight`)."""
    return [f"{name}.weight" for name in prunable_modules(model)]


def check_amount(amount, scope: str = "global") -> None:
    """ValueError unless 0 <= amount < 1 and scope is 'global' or 'layer'."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be a number in [0, 1), got {amount!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


@torch.no_grad()
def prune_unstructured(model: nn.Module, amount: float, scope: str = "global") -> nn.Module:
    """Zero the `amount` fraction of smallest-magnitude weights of every attention/FFN projection; returns the model.

    scope="global": one magnitude threshold over all those weights together (`prune.global_unstructured`),
    so layers that matter less lose more. scope="layer": every matrix loses `amount` of its own weights
    (`prune.l1_unstructured`). Weights that are already zero count as pruned (they are the smallest), so
    calling again with a larger amount grows the sparsity. Bad input raises ValueError before anything changes.
    """
    check_amount(amount, scope)
    modules = list(prunable_modules(model).values())
    if amount == 0 or not modules:
        return model
    originals = [(m.weight, list(m._parameters)) for m in modules]
    if scope == "global":
        prune.global_unstructured([(m, "weight") for m in modules], pruning_method=prune.L1Unstructured, amount=amount)
    else:
        for module in modules:
            prune.l1_unstructured(module, "weight", amount=amount)
    for module, (weight, order) in zip(modules, originals):
        prune.remove(module, "weight")  # weight = weight_orig * weight_mask, hook and buffers dropped
        _restore_parameter(module, weight, order)
    return model


def _restore_parameter(module: nn.Module, original: nn.Parameter, order: list[str]) -> None:
    """Put the pruned values back into the original Parameter object, in its original state-dict position.

    `prune.remove` registers a new Parameter; an optimizer that holds the old one would stop updating it.
    """
    original.copy_(module.weight)
    module._parameters["weight"] = original
    for name in order:  # re-insert in the original order (prune.remove appended `weight` last)
        module._parameters[name] = module._parameters.pop(name)


def zero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """{weight name: bool mask, True = kept} of the prunable weights, read from the zeros in the weights."""
    return {f"{name}.weight": module.weight.detach() != 0 for name, module in prunable_modules(model).items()}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Multiply each named weight by its mask in place (holds pruned weights at zero during training)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        param = params.get(name)
        if param is not None and param.shape == mask.shape:
            param.mul_(mask.to(device=param.device, dtype=param.dtype))


@dataclass(frozen=True)
class ModuleSparsity:
    """Zeros of one projection weight."""

    name: str
    layer: int
    projection: str
    zeros: int
    total: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total if self.total else 0.0


@dataclass(frozen=True)
class SparsityReport:
    """Per-module and per-layer zero fractions of the prunable weights; `print(report)` shows a table."""

    modules: list[ModuleSparsity]

    @property
    def zeros(self) -> int:
        return sum(m.zeros for m in self.modules)

    @property
    def total(self) -> int:
        return sum(m.total for m in self.modules)

    @property
    def sparsity(self) -> float:
        """Zero fraction over all prunable weights."""
        return self.zeros / self.total if self.total else 0.0

    def per_layer(self) -> dict[int, float]:
        """{layer index: zero fraction over that layer's projections}."""
        zeros: dict[int, int] = {}
        total: dict[int, int] = {}
        for m in self.modules:
            zeros[m.layer] = zeros.get(m.layer, 0) + m.zeros
            total[m.layer] = total.get(m.layer, 0) + m.total
        return {i: zeros[i] / total[i] if total[i] else 0.0 for i in sorted(total)}

    def as_dict(self) -> dict:
        return {
            "sparsity": self.sparsity, "zeros": self.zeros, "total": self.total,
            "per_layer": {str(i): s for i, s in self.per_layer().items()},
            "per_module": {m.name: m.sparsity for m in self.modules},
        }

    def __str__(self) -> str:
        projections = [p for p in PROJECTIONS if any(m.projection == p for m in self.modules)]
        cells = {(m.layer, m.projection): m.sparsity for m in self.modules}
        lines = ["layer " + " ".join(f"{p:>6}" for p in projections) + "    all"]
        for layer, share in self.per_layer().items():
            row = " ".join(f"{cells[(layer, p)]:6.1%}" if (layer, p) in cells else f"{'-':>6}" for p in projections)
            lines.append(f"{layer:5d} {row} {share:6.1%}")
        lines.append(f"total {self.sparsity:.2%} zeros ({self.zeros:,} of {self.total:,} projection weights)")
        return "\n".join(lines)


def sparsity_report(model: nn.Module) -> SparsityReport:
    """Zero fractions of every attention/FFN projection weight, per module and per layer."""
    layout = get_layout(model)
    by_id = {id(m): name for name, m in prunable_modules(model).items()}
    rows = []
    for i, layer in enumerate(get_layers(model, layout)):
        for projection in PROJECTIONS:
            path = getattr(layout, projection)
            module = get_submodule(layer, path) if path is not None else None
            if module is None or id(module) not in by_id:
                continue
            weight = module.weight.detach()
            rows.append(ModuleSparsity(by_id[id(module)], i, projection, int((weight == 0).sum()), weight.numel()))
    return SparsityReport(rows)


# ----------------------------------------------------------------------------- compact storage

SPARSE_FORMAT = "hf_prune.sparse"
SPARSE_FORMAT_VERSION = 1
SPARSE_FILE = "sparse.safetensors"  # CSR components of the prunable matrices
DENSE_FILE = "dense.safetensors"  # every other tensor of the state dict


def _csr_parts(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """CSR components of a 2-D weight: row pointers (int32), column indices (int16 when they fit), values."""
    matrix = weight.detach().cpu()  # (rows, cols); Conv1D weights are stored (in, out) and kept that way
    kept = matrix != 0  # (rows, cols)
    crow = torch.zeros(matrix.shape[0] + 1, dtype=torch.int64)  # (rows + 1,)
    crow[1:] = kept.sum(dim=1).cumsum(0)
    col_dtype = torch.int16 if matrix.shape[1] <= torch.iinfo(torch.int16).max else torch.int32
    cols = kept.nonzero()[:, 1]  # (nnz,), row-major like matrix[kept]
    return {"crow": crow.to(torch.int32), "col": cols.to(col_dtype), "values": matrix[kept].contiguous()}


def _from_csr(parts: dict[str, torch.Tensor], shape: list[int]) -> torch.Tensor:
    """The dense (rows, cols) matrix back from `_csr_parts`."""
    values = parts["values"]
    matrix = torch.zeros(shape, dtype=values.dtype)  # (rows, cols)
    per_row = parts["crow"].long().diff()  # (rows,)
    rows = torch.repeat_interleave(torch.arange(shape[0]), per_row)  # (nnz,)
    matrix[rows, parts["col"].long()] = values
    return matrix


def save_sparse(model: nn.Module, folder: str | os.PathLike, overwrite: bool = False) -> dict[str, int]:
    """Save `model` with its prunable matrices as CSR components; returns {file name: bytes}.

    Writes config.json (it carries `hf_prune` shapes of a head-pruned model), `sparse.safetensors`
    (per matrix: int32 row pointers, int16/int32 column indices, values in the weight's dtype) and
    `dense.safetensors` (all other tensors; tied duplicates once). The folder is written atomically.
    Smaller than a dense checkpoint only at high sparsity: each kept weight costs its value plus a
    2-4 byte index (float32 at 50% zeros: ~25% smaller matrices; at 90%: ~85% smaller).
    """
    sparse_names = set(prunable_weight_names(model))
    state = model.state_dict()
    sparse, shapes = {}, {}
    for name in sparse_names:
        for part, tensor in _csr_parts(state[name]).items():
            sparse[f"{name}.{part}"] = tensor
        shapes[name] = list(state[name].shape)
    dense, aliases, seen = {}, {}, {}
    for name, tensor in state.items():
        if name in sparse_names:
            continue
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype) if tensor.numel() else None
        if key is not None and key in seen:  # tied weights (e.g. an LM head sharing the embedding)
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        dense[name] = tensor.detach().cpu().contiguous().clone()
    metadata = {"format": SPARSE_FORMAT, "format_version": str(SPARSE_FORMAT_VERSION),
                "model_class": type(model).__name__, "shapes": json.dumps(shapes), "aliases": json.dumps(aliases)}
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        config = copy.deepcopy(model.config)
        config.architectures = [type(model).__name__]
        config.save_pretrained(tmp)
        save_file(sparse, str(tmp / SPARSE_FILE), metadata=metadata)
        save_file(dense, str(tmp / DENSE_FILE), metadata={"format": SPARSE_FORMAT})
    return {p.name: p.stat().st_size for p in sorted(Path(folder).iterdir())}


@torch.no_grad()
def load_sparse(folder: str | os.PathLike, model_class=None) -> nn.Module:
    """Rebuild the model `save_sparse` wrote (same class, shapes and weights), in eval mode.

    model_class: a transformers Auto class or concrete class; default from config.architectures.
    """
    from safetensors import safe_open
    from transformers import AutoConfig

    from .loading import resolve_model_class
    from .surgery import resize_to_shapes

    folder = Path(folder)
    with safe_open(str(folder / SPARSE_FILE), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != SPARSE_FORMAT:
        raise ValueError(f"{folder / SPARSE_FILE} was not written by hf_prune.save_sparse")
    if int(metadata.get("format_version", 0)) > SPARSE_FORMAT_VERSION:
        raise ValueError(f"{folder} uses sparse format version {metadata['format_version']}: upgrade hf_prune")
    config = AutoConfig.from_pretrained(folder)
    model = resolve_model_class(config, model_class)(config)
    entry = read_config_entry(config)
    if entry is not None:  # head/neuron-pruned: shrink the skeleton to the recorded widths first
        resize_to_shapes(model, entry["heads"], entry["kv_heads"], entry["ffn"])
    parts = load_file(str(folder / SPARSE_FILE))
    state = load_file(str(folder / DENSE_FILE))
    for name, shape in json.loads(metadata["shapes"]).items():
        state[name] = _from_csr({p: parts[f"{name}.{p}"] for p in ("crow", "col", "values")}, shape)
    aliases = json.loads(metadata.get("aliases", "{}"))
    result = model.load_state_dict(state, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if k not in aliases]
    if missing or unexpected:
        raise ValueError(f"{folder} does not match the model: missing {missing}, unexpected {unexpected}")
    params = model.state_dict(keep_vars=True)
    for name, source in aliases.items():  # tied in the saved model: make sure they are equal here too
        if params[name].data_ptr() != params[source].data_ptr():
            params[name].copy_(params[source])
    return model.eval()
