"""The fast greedy OBS (in-place factorisation, pending low-rank updates, compaction) takes the same steps as a
straightforward implementation, leaves its inputs alone, and its progress bar changes nothing."""

import pytest
import torch
from test_mask_tuning import calibration
from tiny_models import make_model

from hf_prune import calibration_moments, reselect_units
from hf_prune.planning import PruningPlan
from hf_prune.recovery import reselect
from hf_prune.recovery.reselect import _ridge_inverse, greedy_obs


def reference_greedy_obs(moment, weight, groups, families, quota, ridge, block):
    """Textbook greedy structured OBS: full H^-1 and W, updated explicitly after every step."""
    h = moment.clone()
    h.diagonal().add_(h.diagonal().mean() * ridge)
    h_inv = torch.linalg.inv(h)
    w = weight.clone()
    left = dict(quota)
    alive = [g for g in range(len(groups)) if left.get(families[g], 0) > 0]
    steps = []
    while alive:
        errors = []
        for g in alive:
            cols = torch.as_tensor(groups[g])
            errors.append(torch.trace(w[:, cols] @ torch.linalg.inv(h_inv[cols][:, cols]) @ w[:, cols].t()).item())
        take, counts = [], {}
        for _, g in sorted(zip(errors, alive)):
            if counts.get(families[g], 0) < left[families[g]] and len(take) < block:
                take.append(g)
                counts[families[g]] = counts.get(families[g], 0) + 1
        cols = torch.as_tensor([c for g in take for c in groups[g]])
        inv_gg = torch.linalg.inv(h_inv[cols][:, cols])
        steps.append((take, torch.trace(w[:, cols] @ inv_gg @ w[:, cols].t()).item()))
        w = w - w[:, cols] @ inv_gg @ h_inv[cols]
        h_inv = h_inv - h_inv[:, cols] @ inv_gg @ h_inv[cols]
        for g in take:
            left[families[g]] -= 1
        alive = [g for g in alive if g not in take and left[families[g]] > 0]
    return steps


def problem(features, out, seed, bias=False):
    """(moment, weight) of correlated random inputs; with `bias`, a trailing constant feature (never removed)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * features, features, generator=g, dtype=torch.float64)
    x = x @ torch.randn(features, features, generator=g, dtype=torch.float64) / features**0.5 + 0.2  # (T, F)
    if bias:
        x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)  # (T, F + 1)
    return x.t() @ x, torch.randn(out, x.shape[1], generator=g, dtype=torch.float64)


def assert_same_steps(steps, expected):
    assert [take for take, _ in steps] == [take for take, _ in expected]
    torch.testing.assert_close(torch.tensor([e for _, e in steps]), torch.tensor([e for _, e in expected]),
                               rtol=1e-7, atol=1e-9)


@pytest.fixture(params=[16, 256], ids=["small-blocks", "default-blocks"])
def blocks(request, monkeypatch):
    """Small blocks: many factorisation blocks, pending updates applied and rows dropped every other step."""
    monkeypatch.setattr(reselect, "_BLOCK", request.param)
    return request.param


@pytest.mark.parametrize("features,out,block,removed,bias", [
    (40, 7, 1, 20, False), (70, 30, 8, 35, True), (90, 5, 3, 80, True), (64, 100, 8, 64, False)])
def test_single_columns_match_the_reference(blocks, features, out, block, removed, bias):
    moment, weight = problem(features, out, seed=features, bias=bias)
    groups = [[n] for n in range(features)]
    args = (moment, weight, groups, [0] * features, {0: removed}, 1e-4, block)
    assert_same_steps(greedy_obs(*args, progress=False), reference_greedy_obs(*args))


def test_families_with_quotas_match_the_reference_for_columns_and_heads(blocks):
    moment, weight = problem(48, 9, seed=1, bias=True)
    columns = [[n] for n in range(48)]
    families = [n % 3 for n in range(48)]  # three families; one with no quota
    args = (moment, weight, columns, families, {0: 10, 1: 4}, 1e-4, 4)
    assert_same_steps(greedy_obs(*args, progress=False), reference_greedy_obs(*args))
    heads = [list(range(h * 4, (h + 1) * 4)) for h in range(12)]  # width-4 heads in 3 key/value groups
    kv = [h // 4 for h in range(12)]
    args = (moment, weight, heads, kv, {0: 2, 1: 1, 2: 3}, 1e-4, 1)
    steps = greedy_obs(*args, progress=False)
    assert_same_steps(steps, reference_greedy_obs(*args))
    assert sorted(kv[g] for take, _ in steps for g in take) == [0, 0, 1, 2, 2, 2]


def test_the_in_place_inverse_is_the_inverse(blocks):
    moment, _ = problem(50, 1, seed=2, bias=True)
    h = moment.clone()
    h.diagonal().add_(h.diagonal().mean() * 1e-3)
    torch.testing.assert_close(_ridge_inverse(moment, 1e-3), torch.linalg.inv(h), rtol=1e-9, atol=1e-12)


def test_a_failed_factorisation_falls_back_to_the_pseudo_inverse(monkeypatch):
    moment, _ = problem(30, 1, seed=5)
    h = moment.clone()
    h.diagonal().add_(h.diagonal().mean() * 1e-3)
    monkeypatch.setattr(reselect, "_cholesky_", lambda h: False)  # as for a matrix that is not numerically PD
    torch.testing.assert_close(_ridge_inverse(moment, 1e-3), torch.linalg.pinv(h, hermitian=True))


def test_inputs_are_not_modified_even_when_views_would_alias_them():
    moment, weight = problem(20, 1, seed=3)  # weight (1, F): its transpose is already contiguous
    before = moment.clone(), weight.clone()
    greedy_obs(moment, weight, [[n] for n in range(20)], [0] * 20, {0: 10}, 1e-4, 2, progress=False)
    greedy_obs(moment, weight, [[0, 1], [2, 3]], [0, 0], {0: 1}, 1e-4, 1, progress=False)
    assert torch.equal(moment, before[0]) and torch.equal(weight, before[1])
    assert greedy_obs(moment, weight, [[n] for n in range(20)], [0] * 20, {0: 0}, 1e-4, 2) == []


def test_the_progress_bar_changes_nothing_and_is_off_off_the_main_process(capsys, monkeypatch):
    moment, weight = problem(30, 6, seed=4)
    args = (moment, weight, [[n] for n in range(30)], [0] * 30, {0: 12}, 1e-4, 4)
    quiet = greedy_obs(*args, progress=False)
    assert greedy_obs(*args, progress=True, desc="layer 0") == quiet
    monkeypatch.setattr(reselect, "is_main_process", lambda: False)
    capsys.readouterr()
    assert greedy_obs(*args, progress=True) == quiet
    assert "unit" not in capsys.readouterr().err
    model = make_model("llama")
    moments = calibration_moments(model, calibration(1))
    plan = PruningPlan(heads={0: [1]}, neurons={1: [0, 5, 9]})
    assert reselect_units(model, plan, moments, progress=False).neurons == reselect_units(model, plan, moments).neurons
