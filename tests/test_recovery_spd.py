"""Symmetric positive-definite solves of recovery: Cholesky matches the general solvers on well-conditioned
input, and singular (duplicated units, no ridge) systems give finite minimum-norm answers instead of raising."""

import torch

from hf_prune.recovery.least_squares import (
    inverse_spd,
    least_squares_scales,
    reconstruct_weights,
    solve_spd,
    unit_gram,
)
from hf_prune.recovery.reselect import greedy_obs, removed_groups


def spd(n: int, seed: int, batch: tuple = ()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, n, n, generator=g, dtype=torch.float64)
    return x @ x.transpose(-1, -2) + n * torch.eye(n, dtype=torch.float64)  # (*, n, n), well conditioned


def duplicated(seed: int = 0):
    """Inputs x (tokens, 6) and weight w (out, 6) whose feature 4 duplicates feature 1 exactly."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    w = torch.randn(3, 6, generator=g, dtype=torch.float64)
    x[:, 4], w[:, 4] = x[:, 1], w[:, 1]
    return x, w


def test_cholesky_solves_equal_the_general_solvers_on_well_conditioned_input():
    g = torch.Generator().manual_seed(1)
    a = spd(7, seed=0)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    torch.testing.assert_close(solve_spd(a, b), torch.linalg.solve(a, b))
    bs = torch.randn(7, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(solve_spd(a, bs), torch.linalg.solve(a, bs))
    batch = spd(4, seed=2, batch=(5,))  # (5, 4, 4)
    rhs = torch.randn(5, 4, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(solve_spd(batch, rhs), torch.linalg.solve(batch, rhs))
    torch.testing.assert_close(inverse_spd(a), torch.linalg.inv(a))


def test_least_squares_solves_are_unchanged_on_well_conditioned_input():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 12, generator=g, dtype=torch.float64) + 0.3  # (tokens, units * width)
    w = torch.randn(5, 12, generator=g, dtype=torch.float64)
    gram = unit_gram(x.t() @ x, w, units=4, conv1d=False)  # (4, 4)
    keep = [0, 2, 3]
    a = gram[keep][:, keep]
    old = torch.linalg.solve(a + a.diagonal().mean() * 1e-6 * torch.eye(3, dtype=a.dtype), gram[keep].sum(1))
    torch.testing.assert_close(least_squares_scales(gram, keep), old)
    xa = torch.cat([x, torch.ones(300, 1, dtype=torch.float64)], 1)
    moment, bias, features = xa.t() @ xa, torch.randn(5, generator=g, dtype=torch.float64), [0, 1, 5, 7, 12]
    m = moment[features][:, features]
    wb = torch.cat([w, bias[:, None]], 1)  # (out, F + 1)
    old = torch.linalg.solve(m + m.diagonal().mean() * 1e-4 * torch.eye(5, dtype=m.dtype), moment[features] @ wb.t()).t()
    new_w, new_b = reconstruct_weights(moment, w, bias, features[:-1], conv1d=False)
    torch.testing.assert_close(torch.cat([new_w, new_b[:, None]], 1), old)


def test_singular_systems_give_finite_minimum_norm_solutions():
    a = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # PSD, rank 1
    x = solve_spd(a, torch.tensor([2.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(x, torch.tensor([1.0, 1.0], dtype=torch.float64))  # the minimum-norm solution
    torch.testing.assert_close(inverse_spd(a), torch.linalg.pinv(a))
    batch = torch.stack([a, 2 * torch.eye(2, dtype=torch.float64)])  # one singular, one regular block
    solved = solve_spd(batch, torch.ones(2, 2, 1, dtype=torch.float64))
    torch.testing.assert_close(solved[:, :, 0], torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=torch.float64))


def test_duplicated_units_without_ridge_give_finite_scales_that_fit_best():
    x, w = duplicated()
    gram = unit_gram(x.t() @ x, w, units=6, conv1d=False)  # units 1 and 4 contribute identically: singular
    keep = [0, 1, 3, 4, 5]
    scales = least_squares_scales(gram, keep, ridge=0.0)  # torch.linalg.solve raised "singular" here
    assert torch.isfinite(scales).all()
    contributions = torch.stack([x[:, [u]] @ w[:, [u]].t() for u in range(6)])  # (6, tokens, out)
    a = contributions[keep].reshape(5, -1).t()  # (tokens * out, K)
    residual = a @ scales - contributions.sum(0).reshape(-1)  # (tokens * out,)
    assert (a.t() @ residual).abs().max() < 1e-9 * a.norm() * residual.norm()  # normal equations: a best fit
    minimum_norm = torch.linalg.pinv(a) @ contributions.sum(0).reshape(-1)
    torch.testing.assert_close(scales, minimum_norm, rtol=1e-6, atol=1e-6)
    assert abs(scales[1] - scales[3]).item() < 1e-6  # minimum norm: the duplicates share the weight equally


def test_duplicated_features_without_ridge_reconstruct_the_output():
    x, w = duplicated(1)
    moment = torch.nn.functional.pad(x.t() @ x, (0, 1, 0, 1))  # (F + 1, F + 1); no bias, constant unused
    keep = [0, 1, 3, 4, 5]  # feature 2 goes; 1 and 4 are the same column
    new_w, _ = reconstruct_weights(moment, w, None, keep, conv1d=False, ridge=0.0)
    assert torch.isfinite(new_w).all() and new_w.abs().max() < 100
    residual = x[:, keep] @ new_w.t() - x @ w.t()  # (tokens, out)
    assert (x[:, keep].t() @ residual).abs().max() < 1e-9 * x.norm() * residual.norm()  # normal equations: a best fit
    minimum_norm = torch.linalg.pinv(x[:, keep]) @ x @ w.t()  # (K, out)
    torch.testing.assert_close(new_w.t(), minimum_norm, rtol=1e-6, atol=1e-6)


def test_greedy_obs_removes_a_duplicated_column_first_at_a_tiny_ridge():
    x, w = duplicated(2)
    steps = greedy_obs(x.t() @ x, w, [[n] for n in range(6)], [0] * 6, {0: 2}, 1e-14, 1)
    assert all(torch.isfinite(torch.tensor(error)) for _, error in steps)
    assert steps[0][0][0] in (1, 4) and steps[0][1] < 1e-6 * steps[1][1]  # a duplicate costs (almost) nothing
    heads = greedy_obs(x.t() @ x, w, [[0, 1], [2, 3], [4, 5]], [0, 0, 0], {0: 1}, 1e-14, 1)  # width-2 groups
    assert len(removed_groups(heads)) == 1 and torch.isfinite(torch.tensor(heads[0][1]))
