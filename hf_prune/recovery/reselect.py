"""Choose *which* units to remove so that weight reconstruction loses least (greedy structured OBS).

A plan from importance scores fixes how many heads and neurons every layer loses and which ones. The
scores measure the loss when a unit is masked with no compensation; but `reconstruct="weights"` then
re-solves the kept columns of the output / down projection, so a unit whose output the others can rebuild
costs little even when its score is high. `reselect_units` keeps the plan's per-layer counts (and, with
grouped-query attention, the count per key/value group) and re-chooses the units of every layer to minimise
the projection's reconstruction error on the calibration statistics, Optimal-Brain-Surgeon style
(Hassibi & Stork 1993; structured as in ZipLM, Kurtic et al. 2023):

with M the second moment of the projection's inputs (plus a constant feature when it has a bias),
H = M + ridge and H^-1 its inverse, W the projection weight (out, F), removing the column group G and
re-solving the rest raises the summed squared output error by

    err(G) = trace(W_G (H^-1_GG)^-1 W_G^T)

and the remaining weights and inverse update in closed form:

    W   <- W   - W_G (H^-1_GG)^-1 H^-1_G,:        H^-1 <- H^-1 - H^-1_:,G (H^-1_GG)^-1 H^-1_G,:

Groups are removed greedily, cheapest first: one head (head_dim columns) at a time, FFN neurons `block` at a
time. The final weights are then solved exactly by `apply_mask_tuning(..., reconstruct="weights")`.

A plan that also removes whole layers keeps them removed: only the surviving layers' units are re-chosen
(the removed layers need no moments), and the new plan carries the same `layers`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..architecture.layouts import get_layers, get_layout, get_submodule
from ..architecture.shapes import layer_shape
from ..importance.scores import ImportanceScores
from ..planning.plan import PruningPlan
from ..utils import as_out_in
from .least_squares import inverse_spd, solve_spd
from .moments import check_moments, removed_layers


def greedy_obs(moment: torch.Tensor, weight: torch.Tensor, groups: list[list[int]], families: list[int],
                quota: dict[int, int], ridge: float, block: int) -> list[tuple[list[int], float]]:
    """Greedy removal steps [(groups removed, OBS error of the step)], cheapest first, `quota[f]` from family `f`.

    moment: (F', F') input second moment (F' >= F: trailing features, like a bias constant, are never removed);
    weight: (out, F'); groups: column indices of each group; families[g]: the family of group g.
    """
    h = moment.clone()
    h.diagonal().add_(h.diagonal().mean().clamp_min(1e-30) * ridge)
    h_inv = inverse_spd(h)  # (F', F')
    w = weight.clone()  # (out, F')
    left = dict(quota)
    alive = [g for g in range(len(groups)) if left.get(families[g], 0) > 0]
    steps: list[tuple[list[int], float]] = []
    while alive:
        cols_alive = torch.as_tensor([groups[g] for g in alive])  # (A, width): groups have equal width
        if cols_alive.shape[1] == 1:  # single columns: ||W_j||^2 / H^-1_jj
            j = cols_alive[:, 0]
            errors = ((w[:, j] ** 2).sum(0) / h_inv.diagonal()[j]).tolist()
        else:
            w_g = w[:, cols_alive].permute(1, 0, 2)  # (A, out, width)
            inv_blocks = h_inv[cols_alive[:, :, None], cols_alive[:, None, :]]  # (A, width, width)
            solved = solve_spd(inv_blocks, w_g.transpose(1, 2))  # (A, width, out)
            errors = (w_g.transpose(1, 2) * solved).sum((1, 2)).tolist()  # trace(W_G (H^-1_GG)^-1 W_G^T)
        # take up to `block` cheapest groups, never more than a family's remaining quota
        take: list[int] = []
        counts: dict[int, int] = {}
        for _, g in sorted(zip(errors, alive)):
            f = families[g]
            if counts.get(f, 0) < left[f]:
                take.append(g)
                counts[f] = counts.get(f, 0) + 1
                if len(take) == block:
                    break
        cols = torch.as_tensor([c for g in take for c in groups[g]])
        inv_gg = inverse_spd(h_inv[cols][:, cols])  # (|cols|, |cols|)
        steps.append((take, torch.trace(w[:, cols] @ inv_gg @ w[:, cols].t()).item()))
        w -= w[:, cols] @ inv_gg @ h_inv[cols]  # (out, F'): the rest compensates
        h_inv -= h_inv[:, cols] @ inv_gg @ h_inv[cols]  # inverse of H without cols (zeros at cols)
        w[:, cols] = 0.0
        h_inv[:, cols] = 0.0
        h_inv[cols] = 0.0
        for g in take:
            left[families[g]] -= 1
        taken = set(take)
        alive = [g for g in alive if g not in taken and left[families[g]] > 0]
    return steps


def removed_groups(steps: list[tuple[list[int], float]]) -> list[int]:
    return sorted(g for take, _ in steps for g in take)


def _projection(layer, path, moment, conv1d):
    """(moment, weight (out, F')) of a projection; the constant feature is kept only when there is a bias."""
    proj = get_submodule(layer, path)
    w = as_out_in(proj.weight.detach(), conv1d).double().cpu()  # (out, F)
    bias = getattr(proj, "bias", None)
    if bias is None:
        return moment[:-1, :-1], w
    return moment, torch.cat([w, bias.detach().double().cpu()[:, None]], 1)  # (out, F + 1)


def _check(ridge, block) -> None:
    if not ridge > 0:
        raise ValueError(f"ridge must be a number > 0 (the inverse needs it), got {ridge!r}")
    if not (isinstance(block, int) and block >= 1):
        raise ValueError(f"block must be an integer >= 1, got {block!r}")


@torch.no_grad()
def reselect_units(model: nn.Module, plan: PruningPlan, moments: tuple[list, list], *, ridge: float = 1e-4,
                   block: int = 8) -> PruningPlan:
    """A plan removing as many heads / neurons per layer as `plan`, chosen to minimise reconstruction error.

    moments: `calibration_moments(model, ...)` of the dense `model` (the one the plan is for). ridge: relative
    Tikhonov term, as in `reconstruct_weights`. block: FFN neurons removed per greedy step (1 is exact greedy
    and slowest). The model is not modified. Follow with `apply_mask_tuning(model, new_plan, moments,
    reconstruct="weights")`. The plan's `layers` (whole layers removed) are kept as they are.
    """
    _check(ridge, block)
    layout = get_layout(model)
    plan.check_model(model)
    layers = get_layers(model, layout)
    check_moments(moments, model, removed_layers(plan, model))
    o_moments, down_moments = moments
    heads: dict[int, list[int]] = {}
    neurons: dict[int, list[int]] = {}
    for i, layer in enumerate(layers):
        shape = layer_shape(layer, layout)
        if plan.heads.get(i):
            moment, w = _projection(layer, layout.o, o_moments[i], layout.conv1d)
            d = shape.head_dim
            groups = [list(range(h * d, (h + 1) * d)) for h in range(shape.heads)]
            per_group = shape.heads // shape.kv_heads if shape.kv_heads != shape.heads else shape.heads
            families = [h // per_group for h in range(shape.heads)]  # key/value group (one family without GQA)
            quota: dict[int, int] = {}
            for h in plan.heads[i]:
                quota[families[h]] = quota.get(families[h], 0) + 1
            heads[i] = removed_groups(greedy_obs(moment, w, groups, families, quota, ridge, 1))
        if plan.neurons.get(i):
            moment, w = _projection(layer, layout.down, down_moments[i], layout.conv1d)
            groups = [[n] for n in range(shape.ffn)]
            neurons[i] = removed_groups(greedy_obs(moment, w, groups, [0] * shape.ffn, {0: len(plan.neurons[i])}, ridge, block))
    metadata = dict(plan.metadata, reselected={"rule": "greedy OBS reconstruction error", "ridge": ridge,
                                                "block": block})
    return PruningPlan(heads, neurons, metadata, plan.layers)


def _uncompensated(moment: torch.Tensor, weight: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """Summed squared output of each group with nothing compensating, trace(W_G M_GG W_G^T) -> (groups,)."""
    cols = torch.as_tensor(groups)  # (G, width)
    w_g = weight[:, cols].permute(1, 0, 2)  # (G, out, width)
    m_gg = moment[cols[:, :, None], cols[:, None, :]]  # (G, width, width)
    return (w_g @ m_gg * w_g).sum((1, 2))


def _step_scores(steps: list[tuple[list[int], float]], n: int, factor: float) -> torch.Tensor:
    """Each group's score: its step's error shared by the step's groups, non-decreasing along the order, x factor."""
    out = torch.zeros(n, dtype=torch.float64)
    running = 0.0
    for take, error in steps:
        running = max(running, error / len(take))
        out[torch.as_tensor(take)] = running * factor
    return out


@torch.no_grad()
def reconstruction_scores(model: nn.Module, scores: ImportanceScores, moments: tuple[list, list], *,
                          ridge: float = 1e-4, block: int = 8) -> ImportanceScores:
    """Scores ordered by greedy OBS removal within each layer and put on the loss scale of `scores`.

    Within a layer, a unit's score is the reconstruction error of the greedy step that removes it (non-decreasing
    along the greedy order), so `plan_*` removes units in the order the rest can best rebuild them. Across layers
    and between heads and neurons, each block's errors are multiplied by its loss-per-error factor: the block's
    `scores` summed over its units divided by their uncompensated errors summed. Use fisher `scores` (squared
    gradients, a second-order loss estimate). moments: `calibration_moments` of the same dense model.
    Layer scores (`scores.layers`) are passed through unchanged, so the result can still plan layer removal.
    """
    _check(ridge, block)
    layout = get_layout(model)
    layers = get_layers(model, layout)
    check_moments(moments, model)
    shapes = [layer_shape(layer, layout) for layer in layers]
    if [s.heads for s in shapes] != [len(h) for h in scores.heads] or [s.ffn for s in shapes] != [len(n) for n in scores.neurons]:
        raise ValueError("the scores do not match the model's current widths: score the model you pass")
    heads, neurons = [], []
    for i, (layer, shape) in enumerate(zip(layers, shapes)):
        for path, moment, width, units, given, out in (
            (layout.o, moments[0][i], shape.head_dim, shape.heads, scores.heads[i], heads),
            (layout.down, moments[1][i], 1, shape.ffn, scores.neurons[i], neurons),
        ):
            if units == 0:
                out.append(torch.zeros(0))
                continue
            m, w = _projection(layer, path, moment, layout.conv1d)
            groups = [list(range(u * width, (u + 1) * width)) for u in range(units)]
            plain = _uncompensated(m, w, groups).sum().item()
            factor = given.double().sum().item() / plain if plain > 0 else 0.0
            steps = greedy_obs(m, w, groups, [0] * units, {0: units}, ridge, 1 if width > 1 else block)
            out.append(_step_scores(steps, units, factor).float())
    return ImportanceScores(heads, neurons, [s.kv_heads for s in shapes], f"{scores.method}+reconstruction",
                            scores.num_batches, layers=scores.layers)
