"""Unstructured magnitude pruning of the attention and FFN projections, built on `torch.nn.utils.prune`.

Individual weights are set to zero; shapes do not change, so a dense checkpoint is as large as before
and dense kernels are no faster. Embeddings, LayerNorms, biases and task heads are never touched.
`prune_unstructured` makes the zeros permanent (`prune.remove`): no `weight_orig` / `weight_mask`
and no forward pre-hooks are left behind. `hf_prune.serialization.sparse` stores the pruned matrices
compactly (CSR components) and rebuilds an identical model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.utils.prune as prune
from torch import nn

from ..architecture.layouts import get_layers, get_layout, get_submodule

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
