"""Least-squares solves of recovery: unit Gram matrices, per-unit scales and re-solved projection weights.

The normal equations of recovery (and the OBS inverses of re-selection) are symmetric positive
(semi-)definite: `solve_spd` / `inverse_spd` factor them by Cholesky and, where a matrix is not
numerically positive definite (duplicated units, no ridge), fall back to the pseudo-inverse, whose
minimum-norm solution stays finite.
"""

from __future__ import annotations

import torch

from ..utils import as_out_in


def solve_spd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x with a x = b for symmetric positive (semi-)definite `a` (n, n) or a batch (*, n, n).

    b: (*, n) or (*, n, k), with the batch shape of `a`. Cholesky where `a` is numerically positive definite;
    the minimum-norm pseudo-inverse solution elsewhere (per matrix of a batch), so singular `a` gives finite x.
    """
    vector = b.dim() == a.dim() - 1
    rhs = b.unsqueeze(-1) if vector else b  # (*, n, k)
    factor, info = torch.linalg.cholesky_ex(a)
    x = torch.cholesky_solve(rhs, factor)  # (*, n, k)
    failed = info != 0  # () or (*,): not numerically positive definite; those solutions are replaced
    if bool(failed.any()):  # a 0-dim mask indexes the whole unbatched matrix, as a batch of one
        x[failed] = torch.linalg.pinv(a[failed], hermitian=True) @ rhs[failed]  # (failed, n, k)
    return x.squeeze(-1) if vector else x


def inverse_spd(a: torch.Tensor) -> torch.Tensor:
    """Inverse of a symmetric positive definite (n, n) `a` by Cholesky; the pseudo-inverse when it is not."""
    factor, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:  # not numerically positive definite
        return torch.linalg.pinv(a, hermitian=True)
    return torch.cholesky_inverse(factor)


def unit_gram(moment: torch.Tensor, weight: torch.Tensor, units: int, conv1d: bool) -> torch.Tensor:
    """Gram matrix <c_i, c_j> of per-unit contributions to a projection's output -> (units, units)."""
    moment = moment.double()
    w = as_out_in(weight.detach(), conv1d).to(moment.device, torch.float64)  # (out, units * width)
    full = moment * (w.t() @ w)  # (units * width, units * width)
    width = full.shape[0] // units
    return full.reshape(units, width, units, width).sum((1, 3))  # block sums


def least_squares_scales(gram: torch.Tensor, keep: list[int], ridge: float = 1e-6) -> torch.Tensor:
    """Scales s over the kept units minimising ||sum_kept s_i c_i - sum_all c_i||^2, given the units' Gram matrix."""
    index = torch.as_tensor(keep, dtype=torch.long, device=gram.device)
    a = gram[index][:, index]  # (K, K)
    b = gram[index].sum(1)  # (K,): <c_i, sum_j c_j>
    scale = a.diagonal().mean().clamp_min(1e-30) * ridge
    return solve_spd(a + scale * torch.eye(len(keep), dtype=a.dtype, device=a.device), b)


def reconstruct_weights(moment: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, keep: list[int],
                        conv1d: bool, ridge: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ridge least-squares weights over the kept input features that best reproduce the dense projection.

    moment: (F + 1, F + 1) second moment of the inputs augmented with a trailing constant 1. weight: the
    dense projection (Linear (out, F) or Conv1D (F, out)); bias: its bias or None. keep: kept input features.
    Returns the new weight (out, K) as (out, in) and the new bias (out,) (None when there is no bias).
    """
    moment = moment.double()  # solved in float64 on the moment's device, whatever the statistics' dtype
    features = torch.as_tensor(list(keep) + ([moment.shape[0] - 1] if bias is not None else []), dtype=torch.long,
                               device=moment.device)
    w = as_out_in(weight.detach(), conv1d).to(moment.device, torch.float64)  # (out, F)
    if bias is not None:
        w = torch.cat([w, bias.detach().to(moment.device, torch.float64)[:, None]], 1)  # (out, F + 1)
        m = moment
    else:
        m = moment[:-1, :-1]  # (F, F)
    rows = m.index_select(0, features)  # (K', F'): gathered once, freed before the solve
    a = rows.index_select(1, features)  # (K', K')
    b = rows @ w.t()  # (K', out): <kept feature, dense output>
    del rows, w
    if len(features):
        a.diagonal().add_(a.diagonal().mean().clamp_min(1e-30) * ridge)  # ridge in place: no (K', K') identity
    solution = solve_spd(a, b).t()  # (out, K')
    if bias is None:
        return solution, None
    return solution[:, :-1], solution[:, -1]
