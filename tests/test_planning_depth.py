"""Plans that mix width and depth: structure="width" | "depth" | "joint" on the FLOPs, parameter and latency
planners; budgets met exactly as counted on the applied model, the least total score, bad input rejected."""

import copy

import pytest
import torch
from test_importance import batches
from tiny_models import make_model

from hf_prune.architecture.counting import count_flops, count_parameters
from hf_prune.architecture.shapes import layer_shapes
from hf_prune.importance.compute import compute_importance
from hf_prune.importance.scores import ImportanceScores
from hf_prune.planning import PruningPlan
from hf_prune.planning.budgets import plan_from_flops, plan_from_latency, plan_from_params


def scores_for(model, layers=(1.0, 0.1, 5.0), seed=0) -> ImportanceScores:
    """Random head/neuron scores in [0, 1) for the model's current widths, and the given layer scores."""
    g = torch.Generator().manual_seed(seed)
    shapes = layer_shapes(model)
    return ImportanceScores([torch.rand(s.heads, generator=g) for s in shapes],
                            [torch.rand(s.ffn, generator=g) for s in shapes], [s.kv_heads for s in shapes],
                            "fisher", layers=None if layers is None else list(layers))


def removed_score(plan: PruningPlan, scores: ImportanceScores) -> float:
    """Total score a plan removes: its layers' scores plus its heads' and neurons' scores."""
    total = sum(float(scores.layers[i]) for i in plan.layers)
    total += sum(float(scores.heads[i][h]) for i, hs in plan.heads.items() for h in hs)
    return total + sum(float(scores.neurons[i][n]) for i, ns in plan.neurons.items() for n in ns)


class StandInTable:
    """A latency table with the LatencyTable interface: fixed cost per layer, per head and per neuron."""

    def __init__(self, metadata=None):
        self.layer_seconds, self.base_seconds, self.metadata = 1e-3, 5e-4, dict(metadata or {})

    def attention_cost(self, heads: int) -> float:
        return 0.0 if heads == 0 else 2e-4 + 1e-4 * heads

    def ffn_cost(self, ffn: int) -> float:
        return 0.0 if ffn == 0 else 1e-4 + 2e-5 * ffn

    def layer_cost(self, heads: int, ffn: int) -> float:
        return self.layer_seconds + self.attention_cost(heads) + self.ffn_cost(ffn)

    def predict(self, heads: list[int], ffn: list[int]) -> float:
        return self.base_seconds + sum(self.layer_cost(h, f) for h, f in zip(heads, ffn))


def predicted(table, model) -> float:
    shapes = layer_shapes(model)
    return table.predict([s.heads for s in shapes], [s.ffn for s in shapes])


def applied(plan: PruningPlan, model):
    return plan.apply(copy.deepcopy(model))


@pytest.mark.parametrize("model_type", ["bert", "llama", "gpt2"])
@pytest.mark.parametrize("structure", ["width", "depth", "joint"])
def test_applied_plans_meet_the_budget_exactly_as_counted(model_type, structure):
    model = make_model(model_type)
    scores = scores_for(model)
    for reduction in (0.2, 0.5):
        plan = plan_from_params(scores, model, reduction, structure=structure)
        params = plan.metadata["params"]
        assert params["before"] == count_parameters(model, layers_only=True)
        assert count_parameters(applied(plan, model), layers_only=True) == params["after"] <= params["target"]
        assert plan.metadata["budget"]["kind"] == "params" and plan.metadata["budget"]["structure"] == structure
        plan = plan_from_flops(scores, model, flops_reduction=reduction, seq_len=16, structure=structure)
        assert count_flops(applied(plan, model), seq_len=16) == plan.metadata["flops"]["after"]
        assert plan.metadata["flops"]["after"] <= plan.metadata["flops"]["target"]
        assert not set(plan.layers) & (set(plan.heads) | set(plan.neurons))
        if structure == "width":
            assert plan.layers == []


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_width_default_unchanged(model_type):
    model = make_model(model_type)
    scores = scores_for(model)
    for default, width in (
        (plan_from_flops(scores, model, flops_reduction=0.4, seq_len=16),
         plan_from_flops(scores, model, flops_reduction=0.4, seq_len=16, structure="width")),
        (plan_from_params(scores, model, 0.3), plan_from_params(scores, model, 0.3, structure="width")),
    ):
        assert (default.heads, default.neurons, default.layers) == (width.heads, width.neurons, [])
        assert default.metadata == width.metadata
    no_layers = scores_for(model, layers=None)  # width plans need no layer scores
    assert plan_from_params(no_layers, model, 0.3).heads == plan_from_params(scores, model, 0.3).heads


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_depth_removes_the_fewest_lowest_scored_layers(model_type):
    model = make_model(model_type)
    scores = scores_for(model, layers=(3.0, 1.0, 2.0))  # removal order: 1, 2, 0
    per_layer = count_parameters(model, layers_only=True) / 3
    for reduction, expected in ((0.0, []), (0.1, [1]), (0.3, [1]), (0.34, [1, 2]), (0.6, [1, 2])):
        plan = plan_from_params(scores, model, reduction, structure="depth")
        assert plan.layers == expected, reduction
        assert plan.heads == {} and plan.neurons == {}
        assert plan.metadata["params"]["after"] == count_parameters(model, layers_only=True) - len(expected) * per_layer
    with pytest.raises(ValueError, match="at least one layer"):
        plan_from_params(scores, model, 0.7, structure="depth")  # would need all three layers


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_joint_picks_layers_when_cheap_and_widths_when_layers_are_precious(model_type):
    model = make_model(model_type)
    cheap = plan_from_params(scores_for(model, layers=(1e-6, 1e-7, 1e-5)), model, 0.3, structure="joint")
    assert cheap.layers == [1]  # one layer covers 1/3 of the parameters at almost no score
    precious = plan_from_params(scores_for(model, layers=(1e6, 1e6, 1e6)), model, 0.3, structure="joint")
    assert precious.layers == [] and (precious.heads or precious.neurons)
    width = plan_from_params(scores_for(model), model, 0.3)
    assert (precious.heads, precious.neurons) == (width.heads, width.neurons)


@pytest.mark.parametrize("model_type", ["bert", "llama"])
@pytest.mark.parametrize("layers", [(1.0, 0.1, 5.0), (20.0, 3.0, 9.0), (0.5, 0.6, 0.7)])
def test_joint_is_never_worse_than_width_or_depth(model_type, layers):
    model = make_model(model_type)
    scores = scores_for(model, layers=layers, seed=3)
    for reduction in (0.1, 0.3, 0.5):
        joint = plan_from_params(scores, model, reduction, structure="joint")
        for structure in ("width", "depth"):
            other = plan_from_params(scores, model, reduction, structure=structure)
            assert removed_score(joint, scores) <= removed_score(other, scores) + 1e-9, (structure, reduction)
        flops = plan_from_flops(scores, model, flops_reduction=reduction, seq_len=16, structure="joint")
        for structure in ("width", "depth"):
            other = plan_from_flops(scores, model, flops_reduction=reduction, seq_len=16, structure=structure)
            assert removed_score(flops, scores) <= removed_score(other, scores) + 1e-9, (structure, reduction)


def test_depth_with_removed_units_drops_their_entries():
    model = make_model("llama")
    scores = scores_for(model, layers=(3.0, 1.0, 2.0))
    removed = PruningPlan(heads={1: [0, 3]}, neurons={1: [5], 2: [7]})  # one head of each of layer 1's groups
    plan = plan_from_params(scores, model, 0.3, structure="depth", removed=removed)
    assert plan.layers == [1]
    assert plan.heads == {} and plan.neurons == {2: [7]}
    before = count_parameters(model, layers_only=True)
    assert plan.metadata["params"]["before"] == before
    assert count_parameters(applied(plan, model), layers_only=True) == plan.metadata["params"]["after"]
    assert plan.metadata["params"]["after"] <= 0.7 * before


@pytest.mark.parametrize("structure", ["width", "depth", "joint"])
def test_latency_budget(structure):
    model = make_model("llama")
    scores = scores_for(model)
    table = StandInTable({"model_type": "llama", "hidden_size": 48})
    dense = predicted(table, model)
    plan = plan_from_latency(scores, model, table, 0.6, structure=structure)
    latency = plan.metadata["latency"]
    assert plan.metadata["budget"]["kind"] == "latency"
    assert latency["before"] == pytest.approx(dense) and latency["target"] == pytest.approx(0.6 * dense)
    assert latency["after"] == pytest.approx(predicted(table, applied(plan, model)), rel=1e-12)
    assert latency["after"] <= latency["target"] + 1e-15
    absolute = plan_from_latency(scores, model, table, max_seconds=latency["target"], structure=structure)
    assert (absolute.heads, absolute.neurons, absolute.layers) == (plan.heads, plan.neurons, plan.layers)
    if structure == "depth":
        assert plan.layers == [0, 1]  # the two lowest-scored layers (scores 0.1 and 1.0)


def test_latency_with_the_library_table():
    latency_model = pytest.importorskip("hf_prune.planning.latency_model")
    model = make_model("bert")
    table = latency_model.LatencyTable("forward", 1, 16, base_seconds=1e-3, layer_seconds=2e-3,
                                       attention_seconds=1e-4, head_seconds=2e-4, ffn_seconds=1e-4,
                                       neuron_seconds=1e-5, metadata={"model_type": "bert"})
    for structure, target in (("width", 0.8), ("joint", 0.5)):  # fixed per-layer costs: width alone cannot reach 0.5
        plan = plan_from_latency(scores_for(model), model, table, target, structure=structure)
        assert plan.metadata["latency"]["after"] == pytest.approx(table.predict_model(applied(plan, model)))
        assert plan.metadata["latency"]["after"] <= target * table.predict_model(model) + 1e-15


def test_bad_input_raises_value_error():
    model = make_model("llama")
    scores = scores_for(model)
    no_layers = scores_for(model, layers=None)
    for structure in ("depth", "joint"):
        with pytest.raises(ValueError, match="layer_method='fisher'"):
            plan_from_params(no_layers, model, 0.3, structure=structure)
        with pytest.raises(ValueError, match="layer_method='fisher'"):
            plan_from_flops(no_layers, model, flops_reduction=0.3, structure=structure)
    with pytest.raises(ValueError, match="2 scores, but the scores have 3 layers"):
        plan_from_params(scores_for(model, layers=(1.0, 2.0)), model, 0.3, structure="depth")
    for call in (lambda s: plan_from_params(scores, model, 0.3, structure=s),
                 lambda s: plan_from_flops(scores, model, flops_reduction=0.3, structure=s),
                 lambda s: plan_from_latency(scores, model, StandInTable(), 0.5, structure=s)):
        with pytest.raises(ValueError, match="structure must be one of"):
            call("foo")
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"params_reduction must be in \[0, 1\)"):
            plan_from_params(scores, model, bad)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"target must be in \(0, 1\]"):
            plan_from_latency(scores, model, StandInTable(), bad)
    with pytest.raises(ValueError, match="exactly one of params_reduction and max_params"):
        plan_from_params(scores, model)
    with pytest.raises(ValueError, match="exactly one of params_reduction and max_params"):
        plan_from_params(scores, model, 0.3, max_params=100)
    with pytest.raises(ValueError, match="exactly one of target and max_seconds"):
        plan_from_latency(scores, model, StandInTable())
    with pytest.raises(ValueError, match="exactly one of target and max_seconds"):
        plan_from_latency(scores, model, StandInTable(), 0.5, max_seconds=1.0)
    with pytest.raises(ValueError, match="hidden_size=64"):
        plan_from_latency(scores, model, StandInTable({"hidden_size": 64}), 0.5)
    with pytest.raises(ValueError, match="model_type='bert'"):
        plan_from_latency(scores, model, StandInTable({"model_type": "bert"}), 0.5)
    with pytest.raises(ValueError, match="do not match the model"):
        plan_from_params(scores_for(make_model("bert")), model, 0.3)


def test_json_round_trip_keeps_layers(tmp_path):
    model = make_model("llama")
    scores = scores_for(model, layers=(1e-6, 1e-7, 1e-5))
    plan = plan_from_params(scores, model, 0.5, structure="joint")
    assert plan.layers
    again = PruningPlan.from_json(plan.to_json())
    assert again == plan and again.layers == plan.layers
    path = tmp_path / "plan.json"
    plan.save(path)
    assert PruningPlan.load(path) == plan


def test_compute_importance_with_layer_scores(tmp_path):
    model = make_model("llama")
    data = batches("llama")
    plain = compute_importance(model, data, "fisher", progress=False)
    assert plain.layers is None
    both = compute_importance(model, data, "fisher", layer_method="fisher", progress=False)
    assert len(both.layers) == 3 and all(s >= 0 for s in both.layers)
    assert all(torch.equal(a, b) for a, b in zip(plain.heads, both.heads))
    both.save(tmp_path / "scores.safetensors")
    assert ImportanceScores.load(tmp_path / "scores.safetensors").layers == pytest.approx(both.layers)
    plan = plan_from_flops(both, model, flops_reduction=0.3, seq_len=16, structure="joint")
    assert count_flops(applied(plan, model), seq_len=16) == plan.metadata["flops"]["after"]
    with pytest.raises(ValueError, match="unknown layer importance method"):
        compute_importance(model, data, "fisher", layer_method="nope")
    with pytest.raises(ValueError, match="one-shot iterator"):
        compute_importance(model, iter(data), "fisher", layer_method="fisher")
