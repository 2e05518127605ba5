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

``reconstruct="weights"`` goes one step further: instead of one scale per kept unit, it re-solves every
kept input column of the projection (and its bias, when it has one) so that the pruned projection
reproduces the dense projection's output on the calibration tokens. With the projection's inputs
augmented by a constant 1, M = [X 1]^T [X 1], dense weight [W b] and kept features K (plus the constant
when there is a bias), the new weight is the ridge least-squares solution
[W_K' b'] = [W b] M[:, K] (M_KK + ridge)^-1, a closed-form, per-layer OBS-style update; it contains the
scale solution as a special case (and FLAP-style bias compensation), so it never fits the dense output worse.

Plans that also remove whole layers (`plan.layers`): the layers to be removed get no statistics and no
solve; the surviving layers are pruned and recovered as above, and the layers are removed last, so the
result is the width-only recovery followed by `drop_layers`. What this cannot do: each surviving layer is
fitted to its own dense output *given its dense inputs*; a removed layer's contribution to the residual
stream is simply gone, so the inputs of every later layer differ from the dense ones and nothing here
compensates that (fine-tuning or distillation does).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..architecture.layouts import get_layers, get_layout, get_stacks, get_submodule
from ..architecture.shapes import layer_shape
from ..architecture.stacks import FlatView
from ..planning.plan import PruningPlan
from ..surgery.depth import check_removable, drop_layers
from ..surgery.width import prune_model
from ..utils import materialized
from .least_squares import least_squares_scales, reconstruct_weights, unit_gram
from .moments import calibration_moments, check_moments, removed_layers
from .streaming import check_reconstruct, scale_columns, stream_recover, write_projection


@torch.no_grad()
def apply_mask_tuning(model: nn.Module, plan: PruningPlan, moments: tuple[list, list], ridge: float | None = None,
                      reconstruct: str = "scales") -> dict[str, dict[int, torch.Tensor]]:
    """Prune `model` in place with `plan`, then recover each layer's output from the calibration `moments`.

    `moments` hold every layer's statistics at once (reusable across plans); `tune_masks` / `stream_recover`
    hold one layer's at a time.

    reconstruct: "scales" (one scale per kept unit, Kwon et al.) or "weights" (re-solve the kept input columns and
    bias of every output / down projection). Returns the scales ("scales") or {} entries ("weights"), keyed by
    the layers' indices before the plan. Layers the plan removes are neither solved nor need moments (None
    allowed); they are removed after the surviving layers are recovered.
    """
    ridge = check_reconstruct(reconstruct, ridge)
    if get_stacks(model) is not None:
        return _tune_stacks(model, plan, moments, ridge, reconstruct)
    layout = get_layout(model)
    plan.check_model(model)
    removed = removed_layers(plan, model)
    check_removable(get_layout(model), removed)  # ModernBERT's layer 0: refused before any width is cut
    check_moments(moments, model, removed)
    width_plan = PruningPlan(plan.heads, plan.neurons, plan.metadata)
    layers = list(get_layers(model, layout))  # the layers before the plan: indices stay valid after removal
    if reconstruct == "weights":
        solved = _apply_weight_reconstruction(lambda: width_plan.apply(model), width_plan, layout, layers, *moments, ridge)
    else:
        solved = _apply_scales(lambda: width_plan.apply(model), width_plan, layout, layers, *moments, ridge)
    drop_layers(model, removed)  # last, as `plan.apply` does
    return solved


def _tune_stacks(model: nn.Module, plan: PruningPlan, moments, ridge: float, reconstruct: str) -> dict:
    """`apply_mask_tuning` on a model with several layer stacks: solved on its FlatView (moments from
    `calibration_moments(model, ...)`), pruned with the stacked plan, solutions written into the same modules."""
    flat = FlatView(model)
    flat_plan = plan.to_flat(flat.keys)
    check_moments(moments, flat)
    layers, layout = list(get_layers(flat)), get_layout(flat)
    solve = _apply_weight_reconstruction if reconstruct == "weights" else _apply_scales
    solved = solve(lambda: prune_model(model, plan.heads, plan.neurons, cross_heads=plan.cross_heads or None),
                   flat_plan, layout, layers, *moments, ridge)
    return {kind: {flat.key(i): s for i, s in values.items()} for kind, values in solved.items()}


def _apply_scales(apply, plan, layout, layers, o_moments, down_moments, ridge) -> dict:
    """Solve the kept units' scales on the dense weights, prune the widths (`apply()`), then scale the kept columns."""
    solved: dict[str, dict[int, torch.Tensor]] = {"heads": {}, "neurons": {}}
    for i, layer in enumerate(layers):
        shape = layer_shape(layer, layout)
        removed_heads = set(plan.heads.get(i, []))
        removed_neurons = set(plan.neurons.get(i, []))
        keep_heads = [h for h in range(shape.heads) if h not in removed_heads]
        keep_neurons = [n for n in range(shape.ffn) if n not in removed_neurons]
        for kind, path, moment, units, keep in (("heads", layout.o, o_moments[i], shape.heads, keep_heads),
                                                ("neurons", layout.down, down_moments[i], shape.ffn, keep_neurons)):
            if keep and len(keep) < units:
                proj = get_submodule(layer, path)
                with materialized(proj):  # offloaded weights are read through their accelerate hook
                    gram = unit_gram(moment[:-1, :-1], proj.weight, units, layout.conv1d)
                solved[kind][i] = least_squares_scales(gram, keep, ridge)

    apply()  # prunes the model: validates the whole request, then cuts
    for i, scales in solved["heads"].items():
        head_dim = layer_shape(layers[i], layout).head_dim
        scale_columns(get_submodule(layers[i], layout.o), scales, head_dim, layout.conv1d)
    for i, scales in solved["neurons"].items():
        scale_columns(get_submodule(layers[i], layout.down), scales, 1, layout.conv1d)
    return {kind: {i: s.float() for i, s in d.items()} for kind, d in solved.items()}


def _apply_weight_reconstruction(apply, plan, layout, layers, o_moments, down_moments, ridge) -> dict:
    """Solve every touched projection on the dense weights, prune the widths, then write the solutions in."""
    solved = []  # (layer, projection path, weight (out, K), bias or None)
    for i, layer in enumerate(layers):
        shape = layer_shape(layer, layout)
        removed_heads, removed_neurons = set(plan.heads.get(i, [])), set(plan.neurons.get(i, []))
        kept_columns = [h * shape.head_dim + j for h in range(shape.heads) if h not in removed_heads
                        for j in range(shape.head_dim)]  # o_proj inputs of the kept heads
        kept_neurons = [n for n in range(shape.ffn) if n not in removed_neurons]
        for path, moment, removed, keep in ((layout.o, o_moments[i], removed_heads, kept_columns),
                                            (layout.down, down_moments[i], removed_neurons, kept_neurons)):
            proj = get_submodule(layer, path)
            if removed and (keep or getattr(proj, "bias", None) is not None):  # an emptied block without bias: nothing
                with materialized(proj):
                    bias = getattr(proj, "bias", None)
                    solved.append((i, path, *reconstruct_weights(moment, proj.weight, bias, keep, layout.conv1d,
                                                                 ridge)))
    apply()
    for i, path, weight, bias in solved:
        write_projection(get_submodule(layers[i], path), weight, bias, layout.conv1d)
    return {"heads": {}, "neurons": {}}


@torch.no_grad()
def tune_masks(
    model: nn.Module,
    plan: PruningPlan,
    dataloader: Iterable[Mapping[str, torch.Tensor]],
    *,
    max_batches: int | None = None,
    ridge: float | None = None,
    reconstruct: str = "scales",
) -> dict[str, dict[int, torch.Tensor]]:
    """Prune `model` in place with `plan`, then recover each layer's output by least squares.

    dataloader: calibration batches (dicts of tensors; labels are ignored). max_batches: use at most
    this many. reconstruct: "scales" rescales the kept units (Kwon et al. 2022); "weights" re-solves the kept
    columns and bias of every output / down projection (stronger, needs more calibration tokens than units).
    ridge: relative Tikhonov term (default 1e-6 for scales, 1e-4 for weights). Returns the scales applied,
    {"heads": {layer: (kept heads,)}, "neurons": {layer: (kept neurons,)}}, for layers that lost units
    (empty dicts for "weights"). Layers in `plan.layers` are skipped by the calibration pass and removed last
    (see the module docstring for what recovery cannot compensate after a layer is removed).

    Layer by layer: this holds one layer's statistics at a time (`stream_recover(..., mode="dense")`) and gives
    the result of `calibration_moments` + `apply_mask_tuning`, which hold every layer's statistics at once.
    Models with several layer stacks (T5, BART, CLIP) take the second route (every layer's statistics at once),
    with "<stack>.<layer>" keys in the plan and in the scales returned.
    """
    if get_stacks(model) is not None:  # one pass holding every layer's statistics (layer by layer: single stacks)
        moments = calibration_moments(model, dataloader, max_batches)
        return apply_mask_tuning(model, plan, moments, ridge=ridge, reconstruct=reconstruct)
    result = stream_recover(model, plan, dataloader, mode="dense", reconstruct=reconstruct, ridge=ridge,
                            max_batches=max_batches)
    return {kind: dict(values) for kind, values in result.scales.items()}
