"""Re-selecting units by reconstruction error: keeps the plan's counts, picks the units the rest can rebuild,
and agrees with brute force on small problems."""

import copy
import itertools

import pytest
import torch
from test_mask_tuning import calibration, duplicate_neuron, logits
from tiny_models import make_model

from hf_prune import apply_mask_tuning, calibration_moments, layer_shapes, reselect_units
from hf_prune.planning import PruningPlan
from hf_prune.recovery.least_squares import reconstruct_weights
from hf_prune.recovery.reselect import default_block, greedy_obs, removed_groups


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "bert"])
def test_a_duplicated_neuron_is_chosen_over_the_planned_one_and_output_is_kept(model_type):
    model = make_model(model_type)
    duplicate_neuron(model, layer=0, src=3, dst=7)
    data = calibration()
    dense = logits(model, data)
    moments = calibration_moments(model, data)
    plan = PruningPlan(neurons={0: [11]})  # a neuron no other can stand in for
    new = reselect_units(model, plan, moments, ridge=1e-10, block=1)
    assert new.neurons[0] in ([3], [7]) and new.heads == {}
    assert torch.equal(logits(model, data), dense)  # the model is not modified
    apply_mask_tuning(model, new, moments, ridge=1e-12, reconstruct="weights")
    assert (logits(model, data) - dense).abs().max() < 1e-4


def _residual(x, w, keep):
    """Squared error of the best least-squares fit of x @ w.T from the kept columns of x."""
    fit = torch.linalg.lstsq(x[:, keep], x @ w.t()).solution  # (K, out)
    return ((x[:, keep] @ fit - x @ w.t()) ** 2).sum().item()


def test_greedy_matches_brute_force_for_one_unit_and_is_never_worse_than_the_planned_set():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, 10, generator=g, dtype=torch.float64) @ torch.randn(10, 10, generator=g, dtype=torch.float64)
    w = torch.randn(6, 10, generator=g, dtype=torch.float64)  # (out, F)
    moment = x.t() @ x
    groups, families = [[n] for n in range(10)], [0] * 10
    best = min(range(10), key=lambda n: _residual(x, w, [k for k in range(10) if k != n]))
    assert removed_groups(greedy_obs(moment, w, groups, families, {0: 1}, 1e-12, 1)) == [best]
    # three at a time: greedy is at least as good as most three-subsets and matches the solver's own residual
    chosen = removed_groups(greedy_obs(moment, w, groups, families, {0: 3}, 1e-12, 1))
    keep = [k for k in range(10) if k not in chosen]
    residuals = sorted(_residual(x, w, [k for k in range(10) if k not in s]) for s in itertools.combinations(range(10), 3))
    assert _residual(x, w, keep) <= residuals[len(residuals) // 10]  # in the best tenth of all 120 subsets
    new_w, _ = reconstruct_weights(torch.nn.functional.pad(moment, (0, 1, 0, 1)), w, None, keep, False, ridge=0.0)
    torch.testing.assert_close(((x[:, keep] @ new_w.t() - x @ w.t()) ** 2).sum().item(), _residual(x, w, keep))


def test_head_groups_of_width_head_dim_and_per_kv_group_quotas_are_respected():
    model = make_model("llama")  # 6 query heads over 2 key/value groups
    data = calibration()
    moments = calibration_moments(model, data)
    plan = PruningPlan(heads={0: [0, 3], 2: [1, 2, 4, 5]}, neurons={1: list(range(10))},
                       metadata={"shapes": {"heads": [6, 6, 6], "ffn": [37, 37, 37]}})
    new = reselect_units(model, plan, moments)
    assert {k: len(v) for k, v in new.heads.items()} == {0: 2, 2: 4}
    for layer, heads in new.heads.items():  # as many from each key/value group (heads 0-2, 3-5) as the plan
        assert sum(h < 3 for h in heads) == sum(h < 3 for h in plan.heads[layer])
    assert len(new.neurons[1]) == 10 and new.metadata["shapes"] == plan.metadata["shapes"]
    pruned = copy.deepcopy(model)
    apply_mask_tuning(pruned, new, moments, reconstruct="weights")
    assert [s.heads for s in layer_shapes(pruned)] == [4, 6, 2] and layer_shapes(pruned)[1].ffn == 27


def test_bad_input_raises_and_leaves_the_model_untouched():
    model = make_model("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = calibration_moments(model, calibration(1))
    plan = PruningPlan(neurons={0: [1]})
    with pytest.raises(ValueError, match="ridge must be a number > 0"):
        reselect_units(model, plan, moments, ridge=0.0)
    with pytest.raises(ValueError, match="block must be an integer >= 1"):
        reselect_units(model, plan, moments, block=0)
    with pytest.raises(ValueError, match="moments do not match"):
        reselect_units(model, plan, (moments[0][:1], moments[1][:1]))
    with pytest.raises(ValueError, match="widths"):
        reselect_units(model, PruningPlan(neurons={0: [1]}, metadata={"shapes": {"heads": [9], "ffn": [9]}}), moments)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_reconstruction_scores_rank_a_duplicated_neuron_first_and_follow_the_loss_scale_of_the_scores():
    from hf_prune import compute_importance, plan_from_sparsity, reconstruction_scores

    model = make_model("llama")
    duplicate_neuron(model, layer=0, src=3, dst=7)
    data = calibration()
    moments = calibration_moments(model, data)
    fisher = compute_importance(model, [dict(b, labels=b["input_ids"]) for b in data], "fisher", progress=False)
    rs = reconstruction_scores(model, fisher, moments, ridge=1e-10, block=1)
    assert rs.neurons[0].argmin().item() in (3, 7) and rs.neurons[0].min() < 1e-6 * rs.neurons[0].max()
    assert [len(h) for h in rs.heads] == [6, 6, 6] and rs.kv_heads == fisher.kv_heads and rs.method == "fisher+reconstruction"
    plan = plan_from_sparsity(rs, ffn_sparsity=1 / 37)
    assert plan.neurons[0] in ([3], [7])
    # the per-block loss factor is linear in the given scores; the order within a block does not depend on them
    fisher.neurons[1] = fisher.neurons[1] * 10
    scaled = reconstruction_scores(model, fisher, moments, ridge=1e-10, block=1)
    torch.testing.assert_close(scaled.neurons[1], rs.neurons[1] * 10)
    torch.testing.assert_close(scaled.neurons[2], rs.neurons[2])
    smaller = PruningPlan(neurons={0: [1]}).apply(copy.deepcopy(model))
    with pytest.raises(ValueError, match="scores do not match"):
        reconstruction_scores(model, compute_importance(smaller, None, "l2"), moments)
    with pytest.raises(ValueError, match="moments do not match the model's widths"):
        reconstruction_scores(smaller, compute_importance(smaller, None, "l2"), moments)


def test_default_block_is_8_at_bert_widths_and_bounds_the_steps_at_llm_widths():
    assert [default_block(f) for f in (37, 1536, 9215, 9216, 11008, 14336, 28672)] == [8, 8, 8, 9, 10, 14, 28]
    model = make_model("llama")
    moments = calibration_moments(model, calibration())
    plan = PruningPlan(neurons={0: list(range(12)), 2: [3, 4]})
    default, eight = reselect_units(model, plan, moments), reselect_units(model, plan, moments, block=8)
    assert default.neurons == eight.neurons  # 37 neurons: the default is block 8
    # a wide synthetic layer: the default takes about 512 greedy steps where block 8 would take 1,792
    torch.manual_seed(0)
    width = 28672
    steps = greedy_obs(torch.eye(width + 1, dtype=torch.float64)[:64, :64], torch.randn(4, 64), [[i] for i in range(64)],
                       [0] * 64, {0: 32}, 1e-4, default_block(width), progress=False)
    assert len(steps) == 32 // 28 + 1 and [len(take) for take, _ in steps] == [28, 4]
