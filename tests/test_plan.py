"""Pruning plans: budgets met exactly, constraints honoured, deterministic ties, JSON round trip, and
plans that prune_model accepts (GQA included)."""

import json
import os

import pytest
import torch
from tiny_models import make_inputs, make_model

from hf_prune import layer_shapes
from hf_prune.architecture.counting import count_flops, layer_flops
from hf_prune.importance import ImportanceScores, compute_importance
from hf_prune.planning import PruningPlan, plan_from_flops, plan_from_sparsity


def random_scores(heads=(4, 4, 4), ffn=(37, 37, 37), kv=None, seed=0) -> ImportanceScores:
    g = torch.Generator().manual_seed(seed)
    return ImportanceScores(
        heads=[torch.rand(h, generator=g) for h in heads],
        neurons=[torch.rand(f, generator=g) for f in ffn],
        kv_heads=list(kv or heads),
        method="random",
    )


def removed(request: dict) -> int:
    return sum(len(v) for v in request.values())


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.25, 0.5, 0.77, 0.99])
def test_global_sparsity_is_exact_and_removes_the_lowest(sparsity):
    scores = random_scores()
    plan = plan_from_sparsity(scores, head_sparsity=sparsity, ffn_sparsity=sparsity)
    assert removed(plan.heads) == round(sparsity * 12)
    assert removed(plan.neurons) == int(sparsity * 111 + 0.5)
    flat = sorted((float(s), layer, i) for layer, t in enumerate(scores.neurons) for i, s in enumerate(t))
    expected = {(layer, i) for _, layer, i in flat[: removed(plan.neurons)]}
    assert {(layer, i) for layer, idx in plan.neurons.items() for i in idx} == expected


def test_per_layer_sparsity():
    scores = random_scores(heads=(4, 8, 2), ffn=(37, 20, 10))
    plan = plan_from_sparsity(scores, head_sparsity=0.5, ffn_sparsity=0.3, scope="layer")
    assert [len(plan.heads.get(i, [])) for i in range(3)] == [2, 4, 1]
    assert [len(plan.neurons.get(i, [])) for i in range(3)] == [11, 6, 3]
    for layer, idx in plan.neurons.items():  # the lowest of each layer
        order = torch.argsort(scores.neurons[layer], stable=True).tolist()
        assert sorted(idx) == sorted(order[: len(idx)])


def test_ties_are_broken_by_layer_then_index():
    scores = ImportanceScores([torch.ones(4)] * 3, [torch.ones(5)] * 3, [4, 4, 4], "l2")
    plan = plan_from_sparsity(scores, head_sparsity=0.5, ffn_sparsity=0.4)  # 6 heads, 6 neurons
    assert plan.heads == {0: [0, 1, 2, 3], 1: [0, 1]}
    assert plan.neurons == {0: [0, 1, 2, 3, 4], 1: [0]}
    assert plan_from_sparsity(scores, 0.5, 0.4).to_dict() == plan.to_dict()


def test_min_heads_and_multiples():
    scores = random_scores(heads=(4, 4, 4), ffn=(37, 40, 24))
    plan = plan_from_sparsity(scores, head_sparsity=0.5, ffn_sparsity=0.5, min_heads=2, neuron_multiple=8)
    kept = plan.kept_widths()
    assert all(h >= 2 for h in kept["heads"]) and removed(plan.heads) == 6
    assert all(f % 8 == 0 or f == w for f, w in zip(kept["ffn"], (37, 40, 24)))
    target = round(0.5 * 101)
    assert target - 8 < removed(plan.neurons) <= target  # whole chunks of 8 (first chunk of 37: 5)
    with pytest.raises(ValueError, match="at most"):
        plan_from_sparsity(scores, head_sparsity=0.75, min_heads=2)
    plan = plan_from_sparsity(scores, head_sparsity=0.99)  # min_heads=0: whole layers may go (round(11.88) = 12)
    assert plan.kept_widths()["heads"] == [0, 0, 0]


def test_bad_budgets_raise_value_error():
    scores = random_scores()
    for bad in (-0.1, 1.0, 1.5):  # one range for every sparsity: [0, 1)
        with pytest.raises(ValueError, match=r"head_sparsity must be in \[0, 1\)"):
            plan_from_sparsity(scores, head_sparsity=bad)
        with pytest.raises(ValueError, match=r"ffn_sparsity must be in \[0, 1\)"):
            plan_from_sparsity(scores, ffn_sparsity=bad)
    with pytest.raises(ValueError, match="scope"):
        plan_from_sparsity(scores, 0.5, scope="everywhere")
    with pytest.raises(ValueError, match="gqa"):
        plan_from_sparsity(scores, 0.5, gqa="some")
    model = make_model("bert")
    with pytest.raises(ValueError, match="exactly one"):
        plan_from_flops(compute_importance(model, None, "l2"), model)


def test_json_round_trip(tmp_path):
    plan = plan_from_sparsity(random_scores(), head_sparsity=0.5, ffn_sparsity=0.25)
    again = PruningPlan.from_json(plan.to_json())
    assert again == plan
    assert json.loads(plan.to_json())["heads"] == {str(k): v for k, v in plan.heads.items()}
    path = tmp_path / "plan.json"
    plan.save(path)
    assert PruningPlan.load(path) == plan
    assert os.listdir(tmp_path) == ["plan.json"]  # no temp file left behind
    with pytest.raises(ValueError, match="heads"):
        PruningPlan.from_dict({"layers": {}})


@pytest.mark.parametrize("model_type", ["bert", "gpt2"])
def test_applied_plan_gives_expected_shapes(model_type):
    model = make_model(model_type)
    scores = compute_importance(model, None, "l1")
    plan = PruningPlan.from_json(plan_from_sparsity(scores, 0.5, 0.5, scope="layer").to_json())
    plan.apply(model)
    shapes = layer_shapes(model)
    assert [s.heads for s in shapes] == [2, 2, 2] == plan.kept_widths()["heads"]
    assert [s.ffn for s in shapes] == [18, 18, 18] == plan.kept_widths()["ffn"]
    model(**make_inputs())
    with pytest.raises(ValueError, match="made for"):
        plan.apply(model)  # widths no longer match


@pytest.mark.parametrize("gqa", ["per_group", "groups"])
def test_gqa_plans_are_accepted_by_prune_model(gqa):
    model = make_model("llama")  # 6 query heads in 2 groups of 3, per layer
    scores = compute_importance(model, None, "random", seed=1)
    plan = plan_from_sparsity(scores, head_sparsity=0.5, gqa=gqa)
    # per_group: steps of 2 heads (one per group); groups: steps of 3 heads (a whole group)
    assert (removed(plan.heads) == 9) if gqa == "groups" else (removed(plan.heads) in (8, 9))
    plan.apply(model)
    for s, kept in zip(layer_shapes(model), plan.kept_widths()["heads"]):
        assert s.heads == kept
        assert s.kv_heads == 0 or s.heads % s.kv_heads == 0
        if gqa == "per_group" and s.heads:
            assert s.kv_heads == 2
    model(**make_inputs())


def test_gqa_per_group_removes_lowest_of_each_group():
    scores = ImportanceScores([torch.tensor([5.0, 1.0, 3.0, 0.5, 4.0, 2.0])], [torch.ones(4)], [2], "fisher")
    plan = plan_from_sparsity(scores, head_sparsity=2 / 6)
    assert plan.heads == {0: [1, 3]}  # lowest of group 0 (heads 0-2) and of group 1 (heads 3-5)
    plan = plan_from_sparsity(scores, head_sparsity=0.5, gqa="groups")
    assert plan.heads == {0: [3, 4, 5]}  # group 1 has the lower mean


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_flops_budget(model_type):
    model = make_model(model_type)
    data = [dict(make_inputs(3, 8, seed=i), labels=torch.arange(3) % 3) for i in range(2)]
    if model_type == "llama":
        data = [dict(b, labels=b["input_ids"]) for b in data]
    scores = compute_importance(model, data, "fisher")
    dense = count_flops(model, seq_len=16)
    plan = plan_from_flops(scores, model, flops_reduction=0.4, seq_len=16)
    flops = plan.metadata["flops"]
    assert flops["before"] == dense
    plan.apply(model)
    after = count_flops(model, seq_len=16)
    assert after == flops["after"] <= 0.6 * dense
    # within one unit: one neuron's FLOPs (2*T*H*(2 or 3))
    hidden = model.config.hidden_size
    one_neuron = layer_flops(hidden, 0, 0, 1, 1, 16, model_type == "llama")
    assert 0.6 * dense - after < one_neuron or removed(plan.neurons) == 0
    assert PruningPlan.from_json(plan.to_json()) == plan


def test_flops_budget_uses_jointly_cheapest_units():
    model = make_model("bert")
    shapes = layer_shapes(model)
    # heads look unimportant, neurons important: the FLOPs must come from heads first
    scores = ImportanceScores([torch.full((s.heads,), 1e-6) for s in shapes], [torch.ones(s.ffn) for s in shapes],
                              [s.kv_heads for s in shapes], "fisher")
    plan = plan_from_flops(scores, model, flops_reduction=0.2, seq_len=16)
    assert removed(plan.heads) > 0
    assert plan.metadata["flops"]["after"] <= 0.8 * count_flops(model, seq_len=16)
    with pytest.raises(ValueError, match="cannot reach"):
        plan_from_flops(scores, model, flops_reduction=0.9, seq_len=16, min_heads=4, min_neurons=37)


def test_flops_reduction_is_the_fraction_removed_and_flops_fraction_is_deprecated():
    import warnings

    model = make_model("bert")
    shapes = layer_shapes(model)
    g = torch.Generator().manual_seed(0)
    scores = ImportanceScores([torch.rand(s.heads, generator=g) for s in shapes],
                              [torch.rand(s.ffn, generator=g) for s in shapes], [s.kv_heads for s in shapes], "fisher")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling warns about nothing
        plan = plan_from_flops(scores, model, flops_reduction=0.4, seq_len=16)
    assert plan.metadata["budget"]["flops_reduction"] == 0.4
    assert plan.metadata["flops"]["after"] <= 0.6 * count_flops(model, seq_len=16)
    with pytest.warns(FutureWarning, match=r"flops_reduction=1 - x"):
        old = plan_from_flops(scores, model, 0.6, seq_len=16)  # positional: still the fraction kept
    assert old.to_dict() == plan.to_dict()
    with pytest.warns(FutureWarning):
        assert plan_from_flops(scores, model, flops_fraction=0.6, seq_len=16) == plan
    absolute = plan_from_flops(scores, model, max_flops=plan.metadata["flops"]["target"], seq_len=16)
    assert (absolute.heads, absolute.neurons) == (plan.heads, plan.neurons)
    assert absolute.metadata["budget"]["flops_reduction"] is None
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"flops_reduction .* must be in \[0, 1\)"):
            plan_from_flops(scores, model, flops_reduction=bad)
    with pytest.raises(ValueError, match="exactly one.*flops_reduction, max_flops"):
        plan_from_flops(scores, model, flops_reduction=0.5, max_flops=10)
    with pytest.raises(ValueError, match=r"flops_fraction.*\(0, 1\].*flops_reduction"), pytest.warns(FutureWarning):
        plan_from_flops(scores, model, 0.0)
