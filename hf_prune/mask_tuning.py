"""Retrain-free recovery after pruning: least-squares rescaling of the kept units (Kwon et al. 2022, "mask tuning").

For each layer, the attention output projection's output is a sum of per-head contributions
c_h = W_o[:, cols(h)] x_h (and the FFN down projection's output a sum of per-neuron contributions
c_n = W_down[:, n] x_n), plus a bias that pruning keeps. After choosing which units to remove, we
find for every layer the scales s over the kept units that minimise, over the calibration tokens,

    || sum_{i kept} s_i c_i  -  sum_{all i} c_i ||^2

and multiply each kept unit's output-projection input columns by s_i. Only the Gram matrix
G_ij = <c_i, c_j> is needed: with X the projection's inputs (tokens, units * width) and W its
weight (out, units * width), G is the block sum of (X^T X) * (W^T W) over each unit's width-by-width
block, so the dense contributions are never materialised. The normal equations
(G_KK + ridge) s = G_K,all 1 give s. The Gram matrices come from hooks on the dense model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from .importance import _all_reduce, _as_out_in, _is_main_process, _prepare
from .layouts import Layout, get_layers, get_layout, get_submodule
from .plan import PruningPlan
from .shapes import layer_shape


def _input_second_moments(model: nn.Module, layout: Layout, batches: Iterable) -> tuple[list, list]:
    """X^T X of the inputs of every layer's output projection and down projection, over real tokens."""
    layers = get_layers(model, layout)
    device = next(model.parameters()).device
    shapes = [layer_shape(layer, layout) for layer in layers]
    o_moments = [torch.zeros(s.heads * s.head_dim, s.heads * s.head_dim, dtype=torch.float64) for s in shapes]
    down_moments = [torch.zeros(s.ffn, s.ffn, dtype=torch.float64) for s in shapes]
    current: dict = {}

    def hook_for(store: list, i: int):
        def hook(module, args):
            x = args[0].detach()
            flat = x.reshape(-1, x.shape[-1]).double()  # (B*T, F)
            mask = current.get("attention_mask")
            if mask is not None and mask.numel() == flat.shape[0]:
                flat = flat[mask.reshape(-1).bool()]
            store[i] += (flat.t() @ flat).cpu()  # (F, F)

        return hook

    handles = []
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for i, layer in enumerate(layers):
            handles.append(get_submodule(layer, layout.o).register_forward_pre_hook(hook_for(o_moments, i)))
            handles.append(get_submodule(layer, layout.down).register_forward_pre_hook(hook_for(down_moments, i)))
        n = 0
        with torch.no_grad():
            for batch in tqdm(batches, desc="mask tuning", disable=not _is_main_process(), leave=False):
                batch = _prepare(batch, device)
                batch.pop("labels", None)
                current.clear()
                current.update(batch)
                model(**batch)
                n += 1
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    reduced = _all_reduce(o_moments + down_moments + [torch.tensor([float(n)], dtype=torch.float64)])
    if reduced[-1].item() == 0:
        raise ValueError("the calibration dataloader is empty: mask tuning needs at least one batch")
    return reduced[: len(layers)], reduced[len(layers): 2 * len(layers)]


def unit_gram(moment: torch.Tensor, weight: torch.Tensor, units: int, conv1d: bool) -> torch.Tensor:
    """Gram matrix <c_i, c_j> of per-unit contributions to a projection's output -> (units, units)."""
    w = _as_out_in(weight.detach(), conv1d).double().cpu()  # (out, units * width)
    full = moment * (w.t() @ w)  # (units * width, units * width)
    width = full.shape[0] // units
    return full.reshape(units, width, units, width).sum((1, 3))  # block sums


def least_squares_scales(gram: torch.Tensor, keep: list[int], ridge: float = 1e-6) -> torch.Tensor:
    """Scales s over the kept units minimising ||sum_kept s_i c_i - sum_all c_i||^2, given the units' Gram matrix."""
    index = torch.as_tensor(keep, dtype=torch.long)
    a = gram[index][:, index]  # (K, K)
    b = gram[index].sum(1)  # (K,): <c_i, sum_j c_j>
    scale = a.diagonal().mean().clamp_min(1e-30) * ridge
    return torch.linalg.solve(a + scale * torch.eye(len(keep), dtype=a.dtype), b)


def _scale_columns(module: nn.Module, scales: torch.Tensor, width: int, conv1d: bool) -> None:
    """Multiply each unit's `width` input columns of a Linear / Conv1D by its scale (in place)."""
    per_column = scales.repeat_interleave(width)  # (units * width,)
    weight = module.weight
    per_column = per_column.to(weight.device, weight.dtype)
    if conv1d:  # (in, out)
        weight.data.mul_(per_column[:, None])
    else:  # (out, in)
        weight.data.mul_(per_column[None, :])


def calibration_moments(model: nn.Module, dataloader: Iterable[Mapping[str, torch.Tensor]],
                        max_batches: int | None = None) -> tuple[list, list]:
    """X^T X of every layer's output- and down-projection inputs on the calibration batches (dense model).

    Compute once and reuse for several plans with `apply_mask_tuning` (the moments do not depend on the plan).
    """
    batches = dataloader
    if max_batches is not None:
        batches = (b for _, b in zip(range(max_batches), dataloader))
    return _input_second_moments(model, get_layout(model), batches)


@torch.no_grad()
def apply_mask_tuning(model: nn.Module, plan: PruningPlan, moments: tuple[list, list],
                      ridge: float = 1e-6) -> dict[str, dict[int, torch.Tensor]]:
    """Prune `model` in place with `plan`, then rescale the kept units with scales solved from `moments`."""
    layout = get_layout(model)
    plan.check_model(model)
    o_moments, down_moments = moments
    layers = get_layers(model, layout)
    solved: dict[str, dict[int, torch.Tensor]] = {"heads": {}, "neurons": {}}
    for i, layer in enumerate(layers):
        shape = layer_shape(layer, layout)
        removed_heads = set(plan.heads.get(i, []))
        removed_neurons = set(plan.neurons.get(i, []))
        keep_heads = [h for h in range(shape.heads) if h not in removed_heads]
        keep_neurons = [n for n in range(shape.ffn) if n not in removed_neurons]
        if removed_heads and keep_heads:
            gram = unit_gram(o_moments[i], get_submodule(layer, layout.o).weight, shape.heads, layout.conv1d)
            solved["heads"][i] = least_squares_scales(gram, keep_heads, ridge)
        if removed_neurons and keep_neurons:
            gram = unit_gram(down_moments[i], get_submodule(layer, layout.down).weight, shape.ffn, layout.conv1d)
            solved["neurons"][i] = least_squares_scales(gram, keep_neurons, ridge)

    plan.apply(model)
    for i, scales in solved["heads"].items():
        head_dim = layer_shape(layers[i], layout).head_dim
        _scale_columns(get_submodule(layers[i], layout.o), scales, head_dim, layout.conv1d)
    for i, scales in solved["neurons"].items():
        _scale_columns(get_submodule(layers[i], layout.down), scales, 1, layout.conv1d)
    return {kind: {i: s.float() for i, s in d.items()} for kind, d in solved.items()}


@torch.no_grad()
def tune_masks(
    model: nn.Module,
    plan: PruningPlan,
    dataloader: Iterable[Mapping[str, torch.Tensor]],
    *,
    max_batches: int | None = None,
    ridge: float = 1e-6,
) -> dict[str, dict[int, torch.Tensor]]:
    """Prune `model` in place with `plan`, then rescale the kept units per layer by least squares.

    dataloader: calibration batches (dicts of tensors; labels are ignored). max_batches: use at most
    this many. ridge: relative Tikhonov term for a well-posed solve. Returns the scales applied,
    {"heads": {layer: (kept heads,)}, "neurons": {layer: (kept neurons,)}}, for layers that lost units.
    """
    plan.check_model(model)  # before the calibration pass
    return apply_mask_tuning(model, plan, calibration_moments(model, dataloader, max_batches), ridge)
