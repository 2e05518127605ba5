"""Planning with already-removed units (`removed=`): the same plan as for a model physically pruned by them,
their scores ignored, budgets counting them, constraints on the final widths, and bad input rejected."""

import copy
import math

import pytest
import torch
from tiny_models import make_model

from hf_prune import count_flops, layer_shapes
from hf_prune.importance import ImportanceScores
from hf_prune.planning import PruningPlan, plan_from_flops, plan_from_sparsity


def small_scores(heads, ffn, kv, seed, head_scale=1e-3, ffn_scale=1e-3) -> ImportanceScores:
    """Realistic fisher-like scores: tiny positive numbers (1e-6 .. scale)."""
    g = torch.Generator().manual_seed(seed)
    return ImportanceScores([head_scale * torch.rand(h, generator=g) + 1e-6 for h in heads],
                            [ffn_scale * torch.rand(f, generator=g) + 1e-6 for f in ffn], list(kv), "fisher")


def model_scores(model, seed, **scales) -> ImportanceScores:
    shapes = layer_shapes(model)
    return small_scores([s.heads for s in shapes], [s.ffn for s in shapes], [s.kv_heads for s in shapes], seed, **scales)


def alive(width: int, gone) -> list[int]:
    return [u for u in range(width) if u not in set(gone)]


def delete(scores: ImportanceScores, removed: PruningPlan) -> ImportanceScores:
    """The scores of a model physically pruned by `removed`: its entries deleted, key/value heads recounted."""
    heads, neurons, kv_heads = [], [], []
    for i, (h, f, kv) in enumerate(zip(scores.heads, scores.neurons, scores.kv_heads)):
        keep = alive(len(h), removed.heads.get(i, []))
        per_group = len(h) // kv if kv else 1
        heads.append(h[keep])
        neurons.append(f[alive(len(f), removed.neurons.get(i, []))])
        kv_heads.append(len(keep) if kv == len(h) else len({k // per_group for k in keep}))
    return ImportanceScores(heads, neurons, kv_heads, scores.method)


def lift(plan: PruningPlan, removed: PruningPlan, scores: ImportanceScores) -> tuple[dict, dict]:
    """A plan made on `delete(scores, removed)`, in the dense scores' coordinates, plus `removed`."""
    out = []
    for request, gone, widths in ((plan.heads, removed.heads, [len(h) for h in scores.heads]),
                                  (plan.neurons, removed.neurons, [len(f) for f in scores.neurons])):
        merged = {i: list(v) for i, v in gone.items()}
        for i, units in request.items():
            present = alive(widths[i], gone.get(i, []))
            merged.setdefault(i, []).extend(present[u] for u in units)
        out.append({i: sorted(v) for i, v in sorted(merged.items()) if v})
    return out[0], out[1]


def count(sparsity: float, total: int) -> int:
    return math.floor(sparsity * total + 0.5)  # the planner's rounding (half up)


def sparsity_left(total: int, already: int, target: int) -> float:
    """The sparsity that removes `target - already` of the `total - already` units left."""
    return (target - already) / (total - already)


def real_cost(plan: PruningPlan, scores: ImportanceScores) -> float:
    """Summed (real) score of the units a plan removes."""
    return sum(float(scores.heads[i][u]) for i, v in plan.heads.items() for u in v) + sum(
        float(scores.neurons[i][u]) for i, v in plan.neurons.items() for u in v)


@pytest.mark.parametrize("kv,gqa", [((4, 4, 4), "per_group"), ((2, 2, 2), "per_group"), ((2, 2, 2), "groups")])
@pytest.mark.parametrize("multiple", [1, 2])
def test_sparsity_with_removed_equals_the_plan_of_the_physically_pruned_scores(kv, gqa, multiple):
    heads, ffn = (6, 6, 6) if kv[0] == 2 else (4, 4, 4), (37, 40, 24)
    first = plan_from_sparsity(small_scores(heads, ffn, kv, seed=1), 0.3, 0.25, gqa=gqa, neuron_multiple=multiple)
    assert first.heads and first.neurons
    scores = small_scores(heads, ffn, kv, seed=2)  # the next event's scores
    got = plan_from_sparsity(scores, 0.6, 0.5, gqa=gqa, neuron_multiple=multiple, removed=first)
    n_heads, n_ffn = sum(heads), sum(ffn)
    r_heads, r_ffn = sum(map(len, first.heads.values())), sum(map(len, first.neurons.values()))
    pruned = plan_from_sparsity(delete(scores, first), sparsity_left(n_heads, r_heads, count(0.6, n_heads)),
                                sparsity_left(n_ffn, r_ffn, count(0.5, n_ffn)), gqa=gqa, neuron_multiple=multiple)
    assert (got.heads, got.neurons) == lift(pruned, first, scores)
    assert all(set(first.heads[i]) <= set(got.heads[i]) for i in first.heads)  # removed is part of the plan
    assert sum(map(len, got.neurons.values())) <= count(0.5, n_ffn)  # counted toward the budget
    assert got.metadata["budget"]["removed"] == {"heads": r_heads, "neurons": r_ffn}


def test_removed_scores_are_ignored_entirely():
    scores = small_scores((4, 4, 4), (37, 37, 37), (4, 4, 4), seed=3)
    removed = PruningPlan(heads={0: [0], 2: [1, 3]}, neurons={1: [0, 5, 36]})
    expected = plan_from_sparsity(scores, 0.5, 0.3, removed=removed)
    for value in (-1e30, 1e30, float("nan")):
        masked = copy.deepcopy(scores)
        for i, units in removed.heads.items():
            masked.heads[i][units] = value
        for i, units in removed.neurons.items():
            masked.neurons[i][units] = value
        assert plan_from_sparsity(masked, 0.5, 0.3, removed=removed) == expected


def test_layer_scope_counts_removed_units_in_their_own_layer():
    scores = small_scores((4, 4, 4), (10, 10, 10), (4, 4, 4), seed=4)
    removed = PruningPlan(heads={0: [1, 2]}, neurons={2: [9]})
    plan = plan_from_sparsity(scores, 0.5, 0.2, scope="layer", removed=removed)
    assert plan.heads[0] == [1, 2]  # layer 0 already has its 2 of 4
    assert [len(plan.heads[i]) for i in (1, 2)] == [2, 2]
    assert [len(plan.neurons[i]) for i in range(3)] == [2, 2, 2] and 9 in plan.neurons[2]
    with pytest.raises(ValueError, match="removed already lists 2 heads, more than the 1"):
        plan_from_sparsity(scores, 0.25, scope="layer", removed=removed)


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_flops_with_removed_equals_the_plan_of_the_physically_pruned_model(model_type):
    model = make_model(model_type)
    first = plan_from_flops(model_scores(model, seed=5), model, flops_reduction=0.25, seq_len=16)
    assert first.heads and first.neurons
    scores = model_scores(model, seed=6)
    target = 0.5 * count_flops(model, seq_len=16)
    got = plan_from_flops(scores, model, max_flops=target, seq_len=16, removed=first)
    pruned_model = first.apply(copy.deepcopy(model))
    pruned = plan_from_flops(delete(scores, first), pruned_model, max_flops=target, seq_len=16)
    assert (got.heads, got.neurons) == lift(pruned, first, scores)
    assert got.metadata["flops"]["after"] == pruned.metadata["flops"]["after"] <= target
    assert got.metadata["flops"]["before"] == count_flops(model, seq_len=16)
    got.apply(model)
    assert count_flops(model, seq_len=16) == got.metadata["flops"]["after"]
    if model_type == "llama":  # GQA: every layer keeps equal query heads per key/value group
        assert all(s.kv_heads in (0, 2) and s.heads % 2 == 0 for s in layer_shapes(model))


def test_flops_with_removed_follows_the_real_scores_where_minus_1e30_masking_does_not():
    """Masking removed units with -1e30 swamps the float64 prefix sums: every later chunk costs "nothing more", so
    the search, breaking the tie toward fewer heads, takes as few heads as it can. `removed=` keeps the real scores."""
    model = make_model("bert")
    # heads far cheaper than neurons (both realistic magnitudes): the FLOPs should come from heads
    scores = model_scores(model, seed=7, head_scale=1e-6, ffn_scale=1e-3)
    first = PruningPlan(heads={0: [0]}, neurons={1: [2, 3]})
    target = 0.6 * count_flops(model, seq_len=16)
    got = plan_from_flops(scores, model, max_flops=target, seq_len=16, removed=first)
    pruned = plan_from_flops(delete(scores, first), first.apply(copy.deepcopy(model)), max_flops=target, seq_len=16)
    assert (got.heads, got.neurons) == lift(pruned, first, scores)
    masked = copy.deepcopy(scores)
    masked.heads[0][0] = masked.neurons[1][[2, 3]] = -1e30
    swamped = plan_from_flops(masked, model, max_flops=target, seq_len=16)
    assert swamped.metadata["flops"]["after"] <= target and got.metadata["flops"]["after"] <= target
    # the bug: fewest heads, the expensive neurons pay for the rest; the real scores say remove cheap heads
    assert sum(map(len, got.heads.values())) > sum(map(len, swamped.heads.values()))
    assert real_cost(got, scores) < 0.5 * real_cost(swamped, scores)


def test_flops_removed_already_under_the_target_is_returned_as_is():
    model = make_model("bert")
    scores = model_scores(model, seed=8)
    removed = PruningPlan(heads={0: [0, 1, 2, 3], 1: [0, 1, 2, 3]})
    plan = plan_from_flops(scores, model, flops_reduction=0.05, seq_len=16, removed=removed)
    assert (plan.heads, plan.neurons) == (removed.heads, {})
    assert plan.metadata["flops"]["after"] < plan.metadata["flops"]["target"]


def test_constraints_apply_to_the_final_widths():
    scores = small_scores((6, 6), (40, 40), (2, 2), seed=9)
    removed = PruningPlan(heads={0: [0, 3]}, neurons={1: list(range(8))})  # one head of each group; 32 neurons left
    plan = plan_from_sparsity(scores, 0.5, 0.3, min_heads=2, neuron_multiple=8, removed=removed)
    kept = plan.kept_widths()
    assert kept["heads"][0] >= 2 and all(f % 8 == 0 for f in kept["ffn"])
    for heads in plan.heads.values():  # equal count from both key/value groups (heads 0-2, 3-5)
        assert sum(h < 3 for h in heads) == sum(h >= 3 for h in heads)
    assert set(removed.heads[0]) <= set(plan.heads[0]) and set(removed.neurons[1]) <= set(plan.neurons[1])


@pytest.mark.parametrize("removed,kwargs,match", [
    (PruningPlan(heads={3: [0]}), {}, "removed lists layer 3, but the scores have 2 layers"),
    (PruningPlan(heads={1: [6]}), {}, "removed lists head 6 of layer 1, which has 6 heads"),
    (PruningPlan(neurons={0: [-1]}), {}, "removed lists neuron -1 of layer 0"),
    (PruningPlan(heads={0: [0]}), {}, r"layer 0 with \[2, 3\] query heads per key/value group"),
    (PruningPlan(heads={0: [0, 1, 3, 4]}), {"min_heads": 4}, "layer 0 with 2 query heads, against min_heads=4"),
    (PruningPlan(neurons={1: [0]}), {"neuron_multiple": 8}, "layer 1 with 39 FFN neurons.*neuron_multiple=8"),
    (PruningPlan(heads={0: [0, 1, 2, 3, 4, 5]}), {}, "removed already lists 6 heads, more than the 3"),
    (PruningPlan(metadata={"shapes": {"heads": [4, 4], "ffn": [40, 40]}}), {}, "made for heads widths"),
    ({0: [1]}, {}, "removed must be a PruningPlan"),
])
def test_bad_removed_raises_one_clear_value_error(removed, kwargs, match):
    scores = small_scores((6, 6), (40, 40), (2, 2), seed=10)
    with pytest.raises(ValueError, match=match):
        plan_from_sparsity(scores, 0.25, 0.25, removed=removed, **kwargs)


def test_bad_removed_is_rejected_by_the_flops_budget_too():
    model = make_model("llama")
    scores = model_scores(model, seed=11)
    with pytest.raises(ValueError, match="removed lists layer 3"):
        plan_from_flops(scores, model, flops_reduction=0.3, removed=PruningPlan(neurons={3: [0]}))
    with pytest.raises(ValueError, match="query heads per key/value group"):
        plan_from_flops(scores, model, flops_reduction=0.3, removed=PruningPlan(heads={0: [0]}))
