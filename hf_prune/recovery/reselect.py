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

At LLM widths (F = 11008 .. 28672) `greedy_obs` keeps one (F', F') float64 buffer: H^-1 is factored in place
(blocked Cholesky, triangular inverse, L^-T L^-1), removed features' rows and columns are dropped from it as the
greedy goes, and for single columns the update above is kept pending as low-rank factors (the error of column j
needs only H^-1_jj and ||W_:,j||^2, updated from them) and applied as one matrix product every few hundred
columns. The arithmetic runs on the moment's device.

A plan that also removes whole layers keeps them removed: only the surviving layers' units are re-chosen
(the removed layers need no moments), and the new plan carries the same `layers`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..architecture.layouts import get_layers, get_layout, get_stacks, get_submodule
from ..architecture.shapes import layer_shape
from ..architecture.stacks import FlatView
from ..importance.scores import ImportanceScores
from ..planning.plan import PruningPlan
from ..utils import as_out_in, is_main_process, materialized
from .least_squares import inverse_spd, solve_spd
from .moments import check_moments, removed_layers

_BLOCK = 256  # rows per block of the in-place factorisations


def _cholesky_(h: torch.Tensor) -> bool:
    """Lower Cholesky factor of symmetric `h` (n, n) in place (left-looking, blocked; upper triangle zeroed).

    False when `h` is not numerically positive definite (then `h` is left partly overwritten).
    """
    n = h.shape[0]
    for j in range(0, n, _BLOCK):
        e = min(j + _BLOCK, n)
        diag = h[j:e, j:e]  # (nb, nb)
        if j:
            diag.addmm_(h[j:e, :j], h[j:e, :j].t(), alpha=-1.0)
        factor, info = torch.linalg.cholesky_ex(diag)
        if int(info) != 0:
            return False
        diag.copy_(factor)
        if e < n:
            below = h[e:, j:e]  # (n - e, nb)
            if j:
                below.addmm_(h[e:, :j], h[j:e, :j].t(), alpha=-1.0)
            below.copy_(torch.linalg.solve_triangular(factor.t(), below, upper=True, left=False))  # X L^T = B
            h[j:e, e:].zero_()
    return True


def _triangular_inverse_(h: torch.Tensor) -> None:
    """Inverse of the lower-triangular `h` (n, n) in place (blocked, last block first, as LAPACK trtri)."""
    n = h.shape[0]
    for j in reversed(range(0, n, _BLOCK)):
        e = min(j + _BLOCK, n)
        diag = h[j:e, j:e].clone()  # (nb, nb): L_jj
        if e < n:
            trailing, below = h[e:, e:], h[e:, j:e]  # L_22^-1 (lower) and L_21 (n - e, nb)
            product = torch.empty_like(below)
            for i in range(0, n - e, _BLOCK):  # L_22^-1 L_21, skipping the zero upper triangle
                k = min(i + _BLOCK, n - e)
                torch.mm(trailing[i:k, :k], below[:k], out=product[i:k])
            below.copy_(torch.linalg.solve_triangular(diag, product, upper=False, left=False).neg_())  # -L22^-1 L21 L11^-1
        h[j:e, j:e] = torch.linalg.solve_triangular(diag, torch.eye(e - j, dtype=h.dtype, device=h.device), upper=False)


def _lower_gram_(h: torch.Tensor) -> None:
    """L^T L of the lower-triangular `h` (n, n) in place, as a full symmetric matrix (as LAPACK lauum)."""
    n = h.shape[0]
    for i in range(0, n, _BLOCK):
        e = min(i + _BLOCK, n)
        diag = h[i:e, i:e].clone()  # (nb, nb): L_ii
        gram = diag.t() @ diag
        if i:
            h[i:e, :i] = diag.t() @ h[i:e, :i]  # (nb, i)
        if e < n:
            if i:
                h[i:e, :i].addmm_(h[e:, i:e].t(), h[e:, :i])
            gram.addmm_(h[e:, i:e].t(), h[e:, i:e])
        h[i:e, i:e] = gram
    for j in range(0, n, _BLOCK):  # mirror the lower triangle into the upper one
        e = min(j + _BLOCK, n)
        h[j:e, e:] = h[e:, j:e].t()


def _ridge_inverse(moment: torch.Tensor, ridge: float) -> torch.Tensor:
    """(M + ridge * mean diag)^-1 in one new (F', F') float64 buffer (on the moment's device), factored in place."""
    n = moment.shape[0]
    h = torch.empty(n, n, dtype=torch.float64, device=moment.device)
    h.copy_(moment)
    shift = h.diagonal().mean().clamp_min(1e-30) * ridge
    h.diagonal().add_(shift)
    if _cholesky_(h):
        _triangular_inverse_(h)
        _lower_gram_(h)
        return h
    h.copy_(moment)  # not numerically positive definite: the pseudo-inverse, as `inverse_spd`
    h.diagonal().add_(shift)
    return torch.linalg.pinv(h, hermitian=True)


def _psd_root(a: torch.Tensor) -> torch.Tensor:
    """s with s s^T = a for symmetric positive semi-definite `a` (b, b): Cholesky, else eigenvectors."""
    factor, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return factor
    values, vectors = torch.linalg.eigh(a)
    return vectors * values.clamp_min(0.0).sqrt()


def _keep_rows_(t: torch.Tensor, keep: torch.Tensor, square: bool = False) -> torch.Tensor:
    """Rows `keep` (sorted) of `t` (a, c), also columns `keep` when `square`, moved to the front of t's storage.

    In place, a chunk of rows at a time: no row is overwritten before it is read. Returns the compacted view.
    """
    a, c = t.shape
    cols = len(keep) if square else c
    flat = t.view(-1)  # t is a contiguous view at the start of its storage
    chunk = max(1, (1 << 22) // max(c, 1))
    for r in range(0, len(keep), chunk):
        rows = t.index_select(0, keep[r:r + chunk])  # (chunk, c)
        if square:
            rows = rows.index_select(1, keep)  # (chunk, kept)
        flat[r * cols:(r + len(rows)) * cols] = rows.reshape(-1)
    return flat[:len(keep) * cols].view(len(keep), cols)


def _row_norms(t: torch.Tensor) -> torch.Tensor:
    """Squared norm of each row of `t` (a, c) -> (a,), a chunk of rows at a time (no (a, c) temporary)."""
    return torch.cat([chunk.pow(2).sum(1) for chunk in t.split(max(1, (1 << 22) // max(t.shape[1], 1)))])


def greedy_obs(moment: torch.Tensor, weight: torch.Tensor, groups: list[list[int]], families: list[int],
                quota: dict[int, int], ridge: float, block: int, *, progress: bool = True,
                desc: str = "greedy OBS") -> list[tuple[list[int], float]]:
    """Greedy removal steps [(groups removed, OBS error of the step)], cheapest first, `quota[f]` from family `f`.

    moment: (F', F') input second moment (F' >= F: trailing features, like a bias constant, are never removed);
    weight: (out, F'); groups: column indices of each group (all of one width); families[g]: the family of
    group g. progress: a tqdm bar over the units removed (main process only).

    Works in float64 on the moment's device with one (F', F') buffer: H^-1 is factored in place, then the rows
    and columns of removed features are dropped from it as the greedy goes. For single columns the updates of
    H^-1 and W are kept as a pending low-rank product U U^T / U V^T (the error of column j needs only
    H^-1_jj and ||W_:,j||^2, updated from U and V) and applied as one matrix product every `_BLOCK` columns;
    for groups wider than one column (heads) they are applied at every step.
    """
    from tqdm.auto import tqdm

    left = dict(quota)
    alive = [g for g in range(len(groups)) if left.get(families[g], 0) > 0]
    if not alive:
        return []
    available: dict[int, int] = {}
    for g in alive:
        available[families[g]] = available.get(families[g], 0) + 1
    total = sum(min(left[f], count) for f, count in available.items())
    device = moment.device
    width = len(groups[alive[0]])
    hinv = _ridge_inverse(moment, ridge)  # (F', F')
    n, out = hinv.shape[0], weight.shape[0]
    wt = torch.empty(n, out, dtype=torch.float64, device=device)  # (F', out): W^T, a row per feature
    wt.copy_(weight.t())
    rank = max(_BLOCK, block) if width == 1 else 0  # pending columns before they are applied
    u_all = torch.empty(n, rank, dtype=torch.float64, device=device)  # (F', rank): pending U
    v_all = torch.empty(out, rank, dtype=torch.float64, device=device)  # (out, rank): pending V
    k = 0  # pending columns in use
    where = torch.arange(n)  # buffer row of each feature (valid for features not yet removed)
    index = torch.arange(n)  # feature of each buffer row
    gone: list[int] = []  # buffer rows removed since the last compaction
    diag, norms = hinv.diagonal().clone(), _row_norms(wt)  # (a,): H^-1_jj and ||W_:,j||^2 now
    steps: list[tuple[list[int], float]] = []
    one_family = width == 1 and len({families[g] for g in alive}) == 1  # FFN neurons: tensors, no Python sort
    if one_family:
        family = families[alive[0]]
        alive_ids = torch.as_tensor(alive)  # (A,) ascending, as `alive`
        alive_features = torch.as_tensor([groups[g][0] for g in alive])  # (A,)
    bar = tqdm(total=total, desc=desc, unit="unit", leave=False, disable=not (progress and is_main_process()))
    try:
        while alive:
            a = hinv.shape[0]
            u, v = u_all[:a, :k], v_all[:, :k]  # pending (a, k), (out, k)
            if one_family:  # the `block` cheapest, ties to the lower index (as the sort below): one tensor sort
                cols_alive = where[alive_features].to(device)  # (A,) buffer rows
                chosen = torch.sort(norms[cols_alive] / diag[cols_alive], stable=True).indices[:min(block, left[family])]
                take = alive_ids[chosen.cpu()].tolist()
            elif width == 1:  # ||W_j||^2 / H^-1_jj
                cols_alive = where[torch.as_tensor([groups[g] for g in alive])].to(device)  # (A, 1) buffer rows
                errors = (norms[cols_alive[:, 0]] / diag[cols_alive[:, 0]]).tolist()
            else:  # nothing pending
                cols_alive = where[torch.as_tensor([groups[g] for g in alive])].to(device)  # (A, width) buffer rows
                w_g = wt[cols_alive]  # (A, width, out)
                inv_blocks = hinv[cols_alive[:, :, None], cols_alive[:, None, :]]  # (A, width, width)
                solved = solve_spd(inv_blocks, w_g)  # (A, width, out)
                errors = (w_g * solved).sum((1, 2)).tolist()  # trace(W_G (H^-1_GG)^-1 W_G^T)
            if not one_family:
                take = cheapest_groups(errors, alive, families, left, block)
            rows = where[torch.as_tensor([c for g in take for c in groups[g]])]  # (b,) buffer rows
            rows = rows.to(device)
            h_g = hinv.index_select(0, rows)  # (b, a): rows G of H^-1 now
            w_g = wt.index_select(0, rows)  # (b, out): W_G^T now
            if k:
                h_g.addmm_(u[rows], u.t(), alpha=-1.0)
                w_g.addmm_(u[rows], v.t(), alpha=-1.0)
            inv_gg = inverse_spd(h_g[:, rows])  # (b, b): (H^-1_GG)^-1
            steps.append((take, (w_g * (inv_gg @ w_g)).sum().item()))  # trace(W_G (H^-1_GG)^-1 W_G^T)
            root = _psd_root(inv_gg)  # (b, b)
            u_new = h_g.t() @ root  # (a, b): H^-1 <- H^-1 - u_new u_new^T
            v_new = w_g.t() @ root  # (out, b): W <- W - v_new u_new^T
            if width == 1:
                w_v = wt @ v_new  # (a, b): W_:,j . v_new, with the pending update below
                if k:
                    w_v.addmm_(u, v.t() @ v_new, alpha=-1.0)
                norms.add_((u_new @ (v_new.t() @ v_new) * u_new).sum(1) - 2.0 * (u_new * w_v).sum(1))
                diag.sub_(u_new.pow(2).sum(1))
                b = u_new.shape[1]
                u_all[:a, k:k + b] = u_new
                v_all[:, k:k + b] = v_new
                k += b
            else:
                hinv.addmm_(u_new, u_new.t(), alpha=-1.0)
                wt.addmm_(u_new, v_new.t(), alpha=-1.0)
            gone.extend(rows.tolist())
            for g in take:
                left[families[g]] -= 1
            if one_family:
                kept = torch.ones(len(alive_ids), dtype=torch.bool)
                kept[chosen.cpu()] = False
                alive_ids, alive_features = alive_ids[kept], alive_features[kept]
                alive = alive_ids.tolist() if left[family] > 0 else []
            else:
                taken = set(take)
                alive = [g for g in alive if g not in taken and left[families[g]] > 0]
            bar.update(len(take))
            if alive and (width > 1 or k + block > rank):  # apply the pending updates, drop removed rows
                hinv, wt, index, where, k = _flush(hinv, wt, u_all, v_all, k, index, where, gone)
                gone = []
                diag, norms = hinv.diagonal().clone(), _row_norms(wt)
    finally:
        bar.close()
    return steps


def cheapest_groups(errors: list[float], alive: list[int], families: list[int], left: dict[int, int],
                    block: int) -> list[int]:
    """Up to `block` of the `alive` groups with the lowest errors (ties: the lower group), never more from a family
    than its remaining quota `left`."""
    take: list[int] = []
    counts: dict[int, int] = {}
    for _, g in sorted(zip(errors, alive)):
        f = families[g]
        if counts.get(f, 0) < left[f]:
            take.append(g)
            counts[f] = counts.get(f, 0) + 1
            if len(take) == block:
                break
    return take


def _flush(hinv, wt, u_all, v_all, k, index, where, gone):
    """Drop the removed rows (and columns of H^-1), then apply the pending rank-k update; pending becomes 0."""
    a = hinv.shape[0]
    if gone:
        mask = torch.ones(a, dtype=torch.bool)
        mask[torch.as_tensor(gone)] = False
        keep = mask.nonzero().flatten()  # (a',) sorted
        hinv = _keep_rows_(hinv, keep.to(hinv.device), square=True)  # (a', a')
        wt = _keep_rows_(wt, keep.to(wt.device))  # (a', out)
        if k:
            u_all[:len(keep), :k] = u_all[keep.to(u_all.device), :k]  # (a', k)
        index = index[keep]
        where = where.clone()
        where[index] = torch.arange(len(index))
        a = len(keep)
    if k:
        u = u_all[:a, :k]  # (a, k)
        hinv.addmm_(u, u.t(), alpha=-1.0)
        wt.addmm_(u, v_all[:, :k].t(), alpha=-1.0)
    return hinv, wt, index, where, 0


def removed_groups(steps: list[tuple[list[int], float]]) -> list[int]:
    return sorted(g for take, _ in steps for g in take)


def _projection(layer, path, moment, conv1d):
    """(moment, weight (out, F')) of a projection; the constant feature is kept only when there is a bias.

    The weight keeps its own dtype (no float64 copy: `greedy_obs` makes the one float64 copy it works on)."""
    proj = get_submodule(layer, path)
    with materialized(proj):  # offloaded weights are read through their accelerate hook
        w = as_out_in(proj.weight.detach(), conv1d).to(moment.device)  # (out, F)
        bias = getattr(proj, "bias", None)
        bias = None if bias is None else bias.detach().to(moment.device, w.dtype)
    if bias is None:
        return moment[:-1, :-1], w
    return moment, torch.cat([w, bias[:, None]], 1)  # (out, F + 1)


def default_block(ffn: int) -> int:
    """FFN neurons removed per greedy step when `block` is None: 8, or ffn // 1024 for wider layers, so a layer
    takes at most about 512 steps (each step reads the whole (F', out) weight: at LLM widths that dominates)."""
    return max(8, ffn // 1024)


def _check(ridge, block) -> None:
    if not ridge > 0:
        raise ValueError(f"ridge must be a number > 0 (the inverse needs it), got {ridge!r}")
    if block is not None and not (isinstance(block, int) and block >= 1):
        raise ValueError(f"block must be an integer >= 1, got {block!r}")


@torch.no_grad()
def reselect_units(model: nn.Module, plan: PruningPlan, moments: tuple[list, list], *, ridge: float = 1e-4,
                   block: int | None = None, progress: bool = True) -> PruningPlan:
    """A plan removing as many heads / neurons per layer as `plan`, chosen to minimise reconstruction error.

    moments: `calibration_moments(model, ...)` of the dense `model` (the one the plan is for). ridge: relative
    Tikhonov term, as in `reconstruct_weights`. block: FFN neurons removed per greedy step (1 is exact greedy
    and slowest; None: `default_block` of the layer's width, 8 up to 9,215 neurons). progress: tqdm bars per
    layer (main process only). The model is not modified. Follow with
    `apply_mask_tuning(model, new_plan, moments, reconstruct="weights")`. The plan's `layers` (whole layers
    removed) are kept as they are.
    """
    _check(ridge, block)
    if get_stacks(model) is not None:  # several stacks: re-selected on the FlatView (moments from calibration_moments)
        flat = FlatView(model)
        chosen = reselect_units(flat, plan.to_flat(flat.keys), moments, ridge=ridge, block=block, progress=progress)
        return PruningPlan.from_flat(chosen, flat.keys)
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
            heads[i] = removed_groups(greedy_obs(moment, w, groups, families, quota, ridge, 1, progress=progress,
                                                 desc=f"re-selecting heads, layer {i}"))
        if plan.neurons.get(i):
            moment, w = _projection(layer, layout.down, down_moments[i], layout.conv1d)
            groups = [[n] for n in range(shape.ffn)]
            neurons[i] = removed_groups(greedy_obs(moment, w, groups, [0] * shape.ffn, {0: len(plan.neurons[i])}, ridge,
                                                   block or default_block(shape.ffn), progress=progress,
                                                   desc=f"re-selecting neurons, layer {i}"))
    metadata = dict(plan.metadata, reselected={"rule": "greedy OBS reconstruction error", "ridge": ridge,
                                                "block": block or "default_block"})
    return PruningPlan(heads, neurons, metadata, plan.layers)


def _uncompensated(moment: torch.Tensor, weight: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """Summed squared output of each group with nothing compensating, trace(W_G M_GG W_G^T) -> (groups,)."""
    cols = torch.as_tensor(groups)  # (G, width)
    w_g = weight[:, cols].permute(1, 0, 2).to(moment.dtype)  # (G, out, width)
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
                          ridge: float = 1e-4, block: int | None = None, progress: bool = True) -> ImportanceScores:
    """Scores ordered by greedy OBS removal within each layer and put on the loss scale of `scores`.

    Within a layer, a unit's score is the reconstruction error of the greedy step that removes it (non-decreasing
    along the greedy order), so `plan_*` removes units in the order the rest can best rebuild them. Across layers
    and between heads and neurons, each block's errors are multiplied by its loss-per-error factor: the block's
    `scores` summed over its units divided by their uncompensated errors summed. Use fisher `scores` (squared
    gradients, a second-order loss estimate). moments: `calibration_moments` of the same dense model. progress:
    tqdm bars per layer (main process only).
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
            step = 1 if width > 1 else block or default_block(units)
            steps = greedy_obs(m, w, groups, [0] * units, {0: units}, ridge, step,
                               progress=progress, desc=f"reconstruction scores, layer {i}")
            out.append(_step_scores(steps, units, factor).float())
    return ImportanceScores(heads, neurons, [s.kv_heads for s in shapes], f"{scores.method}+reconstruction",
                            scores.num_batches, layers=scores.layers)
