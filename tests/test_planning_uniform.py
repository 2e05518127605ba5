"""uniform=True on every planner: equal widths in every remaining layer (each layer's own best units), budgets met
at the first uniform step at or past them and counted exactly, vanilla from_pretrained loading, config/CLI/callback,
and contradictory requests rejected."""

import copy
import json

import pytest
import torch
import transformers as tf
from test_callback import trainer_for
from test_cli import base_args, data, tiny_model_dir  # noqa: F401 (fixtures)
from test_planning_depth import StandInTable, predicted, scores_for
from tiny_models import make_inputs, make_model

from hf_prune import count_flops, count_parameters, layer_shapes, save_pruned
from hf_prune.cli import main
from hf_prune.cli.arguments import parse_args
from hf_prune.planning import PruningPlan, plan_from_flops, plan_from_latency, plan_from_params, plan_from_sparsity
from hf_prune.training.callback import HeadPruningCallback
from hf_prune.training.config import PruningConfig


def applied(plan, model):
    return plan.apply(copy.deepcopy(model))


def assert_uniform(model):
    shapes = layer_shapes(model)
    assert len(set(shapes)) == 1, shapes


def removed_score(plan: PruningPlan, scores) -> float:
    total = sum(float(scores.layers[i]) for i in plan.layers)
    total += sum(float(scores.heads[i][h]) for i, hs in plan.heads.items() for h in hs)
    return total + sum(float(scores.neurons[i][n]) for i, ns in plan.neurons.items() for n in ns)


def assert_own_best_units(plan: PruningPlan, scores):
    """Every layer removes its own lowest-scored neurons (ties aside)."""
    for i, gone in plan.neurons.items():
        values = scores.neurons[i].tolist()
        kept = [n for n in range(len(values)) if n not in set(gone)]
        assert max(values[n] for n in gone) <= min(values[n] for n in kept)


@pytest.mark.parametrize("model_type", ["bert", "llama", "gpt2"])
@pytest.mark.parametrize("structure", ["width", "depth", "joint"])
def test_uniform_cost_plans_are_uniform_and_exact(model_type, structure):
    model = make_model(model_type)
    scores = scores_for(model)
    table = StandInTable()
    for reduction in (0.2, 0.5):
        plans = {
            "params": plan_from_params(scores, model, reduction, structure=structure, uniform=True),
            "flops": plan_from_flops(scores, model, flops_reduction=reduction, seq_len=16, structure=structure,
                                     uniform=True),
            "latency": plan_from_latency(scores, model, table, 1 - reduction, structure=structure, uniform=True),
        }
        for kind, plan in plans.items():
            pruned = applied(plan, model)
            assert_uniform(pruned)
            assert plan.metadata["budget"]["uniform"] is True and plan.metadata["budget"]["structure"] == structure
            after = plan.metadata[kind]["after"]
            assert after <= plan.metadata[kind]["target"]
            counted = {"params": lambda m: count_parameters(m, layers_only=True),
                       "flops": lambda m: count_flops(m, seq_len=16), "latency": lambda m: predicted(table, m)}[kind]
            assert counted(pruned) == pytest.approx(after, rel=1e-12)
            assert_own_best_units(plan, scores)
            assert plan == PruningPlan.from_dict(json.loads(json.dumps(plan.to_dict())))


def kept_state(plan, model):
    shapes = layer_shapes(applied(plan, model))
    return shapes[0].heads, shapes[0].ffn, len(shapes)


def uniform_plan(scores, per_group: int, ffn: int) -> PruningPlan:
    """Every layer of the tiny llama (2 groups of 3 query heads, 37 neurons) keeps its best per_group heads per
    group and its best ffn neurons."""
    heads, neurons = {}, {}
    for i in range(3):
        rank = sorted(range(37), key=lambda n: (float(scores.neurons[i][n]), n))
        neurons[i] = sorted(rank[:37 - ffn])
        gone = []
        for g in range(2):
            gone += sorted(range(g * 3, g * 3 + 3), key=lambda h: (float(scores.heads[i][h]), h))[:3 - per_group]
        heads[i] = sorted(gone)
    return PruningPlan({i: h for i, h in heads.items() if h}, {i: n for i, n in neurons.items() if n})


def test_uniform_width_search_is_the_least_score_first_step_at_or_past_the_budget():
    """Brute force over every (heads per group, FFN width) pair of a tiny llama: for each head width the widest FFN
    width that fits, then the least removed score."""
    model = make_model("llama")
    scores = scores_for(model, layers=None)
    shapes = layer_shapes(model)
    for reduction in (0.1, 0.3, 0.6):
        plan = plan_from_params(scores, model, reduction, uniform=True)
        target = plan.metadata["params"]["target"]
        best = None
        for per_group in range(3, -1, -1):
            for ffn in range(shapes[0].ffn, -1, -1):  # the widest FFN width that fits with this head width
                candidate = uniform_plan(scores, per_group, ffn)
                if count_parameters(applied(candidate, model), layers_only=True) <= target:
                    score = removed_score(candidate, scores)
                    if best is None or score < best[0]:
                        best = (score, per_group * 2, ffn)
                    break
        assert removed_score(plan, scores) == pytest.approx(best[0])
        assert kept_state(plan, model)[:2] == best[1:]


@pytest.mark.parametrize("gqa", ["per_group", "groups"])
def test_uniform_sparsity_global_removes_the_same_count_per_layer_at_or_past_n(gqa):
    model = make_model("llama")
    scores = scores_for(model, layers=None)
    for head_sparsity, ffn_sparsity in ((0.0, 0.0), (0.3, 0.25), (0.5, 0.5), (0.7, 0.9)):
        plan = plan_from_sparsity(scores, head_sparsity, ffn_sparsity, gqa=gqa, uniform=True)
        pruned = applied(plan, model)
        assert_uniform(pruned)
        assert plan.metadata["budget"]["uniform"] is True
        heads, ffn = layer_shapes(pruned)[0].heads, layer_shapes(pruned)[0].ffn
        n_heads, n_ffn = round(head_sparsity * 18), round(ffn_sparsity * 111)
        assert 3 * (6 - heads) >= n_heads and 3 * (37 - ffn) >= n_ffn
        assert 3 * (37 - ffn - 1) < n_ffn or ffn == 37  # the first FFN step at or past the count
        step = 2 if gqa == "per_group" else 3  # one query head per group, or one whole group
        assert 3 * (6 - heads - step) < n_heads or heads == 6
        assert_own_best_units(plan, scores)


def test_uniform_sparsity_scope_layer_and_constraints():
    model = make_model("bert")
    scores = scores_for(model, layers=None)
    plan = plan_from_sparsity(scores, 0.5, 0.5, scope="layer", uniform=True, min_heads=1, neuron_multiple=4)
    pruned = applied(plan, model)
    assert_uniform(pruned)
    assert layer_shapes(pruned)[0].ffn % 4 == 0 and layer_shapes(pruned)[0].heads >= 1
    narrow = PruningPlan({}, {0: [0, 1, 2]})  # layer 0 has 34 neurons left, the others 37
    uneven = scores_for(applied(narrow, model), layers=None)
    with pytest.raises(ValueError, match="scope='global'"):
        plan_from_sparsity(uneven, 0.0, 0.5, scope="layer", uniform=True)
    plan = plan_from_sparsity(uneven, 0.0, 0.5, scope="global", uniform=True)
    assert_uniform(applied(plan, applied(narrow, model)))


def test_non_uniform_removed_is_evened_out_without_re_adding_units():
    model = make_model("llama")
    scores = scores_for(model, layers=(1.0, 0.1, 5.0))
    removed = PruningPlan({0: [0, 3]}, {1: list(range(10)), 2: [5]})  # layer 0: 4 heads, layer 1: 27 neurons
    for plan in (plan_from_params(scores, model, 0.2, removed=removed, uniform=True),
                 plan_from_flops(scores, model, flops_reduction=0.3, seq_len=16, removed=removed, structure="joint",
                                 uniform=True),
                 plan_from_sparsity(scores, 0.0, 0.0, removed=removed, uniform=True)):
        pruned = applied(plan, model)
        assert_uniform(pruned)
        for i, gone in removed.heads.items():
            assert i in plan.layers or set(gone) <= set(plan.heads[i])
        for i, gone in removed.neurons.items():
            assert i in plan.layers or set(gone) <= set(plan.neurons[i])
        kept = [i for i in range(3) if i not in plan.layers]  # what removed left: heads 4, 6, 6; neurons 37, 27, 36
        assert layer_shapes(pruned)[0].heads <= min([4, 6, 6][i] for i in kept)
        assert layer_shapes(pruned)[0].ffn <= min([37, 27, 36][i] for i in kept)
    # a whole group gone from layer 0 (3 heads over 1 group): per-group steps take the others 6 -> 4 -> 2 -> 0
    # heads over 2 groups, so with min_heads=1 no common width exists
    groups = PruningPlan({0: [0, 1, 2]}, {})
    with pytest.raises(ValueError, match="re-adding units"):
        plan_from_params(scores, model, 0.2, removed=groups, uniform=True, min_heads=1)
    with pytest.raises(ValueError, match="re-adding units"):
        plan_from_sparsity(scores, 0.2, 0.0, removed=groups, uniform=True, min_heads=1)


def test_depth_keeps_widths_so_needs_equal_widths_in_the_layers_it_keeps():
    model = make_model("bert")
    scores = scores_for(model, layers=(1.0, 0.1, 5.0))
    narrow = PruningPlan({}, {1: [0, 1]})  # layer 1 is the lowest-scored: depth drops it first, leaving equal widths
    plan = plan_from_params(scores, model, 0.2, structure="depth", removed=narrow, uniform=True)
    assert plan.layers == [1]
    assert_uniform(applied(plan, model))
    narrow = PruningPlan({}, {2: [0, 1]})  # the best layer is narrower: only dropping the other two evens it out
    plan = plan_from_params(scores, model, 0.2, structure="depth", removed=narrow, uniform=True)
    assert plan.layers == [0, 1]
    with pytest.raises(ValueError, match="structure='joint'"):
        plan_from_params(scores, model, 0.9, structure="depth", removed=PruningPlan({}, {0: [0], 1: [0, 1]}),
                         uniform=True)


@pytest.mark.parametrize("call", [
    lambda s, m: plan_from_params(s, m, 0.3, uniform="yes"),
    lambda s, m: plan_from_sparsity(s, 0.3, uniform=1),
    lambda s, m: plan_from_params(s, m, 0.99, uniform=True, min_heads=2, min_neurons=30),
    lambda s, m: plan_from_sparsity(s, 0.9, 0.0, uniform=True, min_heads=2),
])
def test_contradictory_uniform_requests_raise_value_error(call):
    model = make_model("bert")
    with pytest.raises(ValueError, match="uniform"):
        call(scores_for(model, layers=None), model)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("structure", ["width", "depth", "joint"])
def test_uniform_llama_loads_with_vanilla_from_pretrained(structure, tmp_path):
    model = make_model("llama")
    scores = scores_for(model)
    plan = plan_from_params(scores, model, 0.3, structure=structure, uniform=True, min_heads=2, min_neurons=8)
    pruned = applied(plan, model)
    assert_uniform(pruned)
    assert (structure == "width") != bool(plan.layers)
    save_pruned(pruned, tmp_path / "out")
    plain = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert layer_shapes(plain) == layer_shapes(pruned)
    inputs = make_inputs()
    torch.testing.assert_close(logits(plain, inputs), logits(pruned, inputs), atol=0, rtol=0)


@pytest.mark.parametrize("structure", ["width", "depth"])
def test_uniform_bert_ffn_or_depth_plan_loads_with_vanilla_from_pretrained(structure, tmp_path):
    model = make_model("bert")
    scores = scores_for(model)
    if structure == "width":  # FFN only: the width a plain BERT config carries
        plan = plan_from_sparsity(scores, 0.0, 0.4, uniform=True)
    else:
        plan = plan_from_params(scores, model, 0.3, structure="depth", uniform=True)
    pruned = applied(plan, model)
    assert_uniform(pruned)
    save_pruned(pruned, tmp_path / "out")
    plain = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    inputs = make_inputs()
    torch.testing.assert_close(logits(plain, inputs), logits(pruned, inputs), atol=0, rtol=0)
    base = tf.AutoModel.from_pretrained(tmp_path / "out")
    assert len(base.encoder.layer) == len(layer_shapes(pruned))


def test_pruning_config_and_cli_flag():
    assert PruningConfig().uniform is False and PruningConfig().plan_constraints()["uniform"] is False
    config = PruningConfig(flops_reduction=0.3, uniform=True)
    assert config.plan_constraints()["uniform"] is True
    assert PruningConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="uniform"):
        PruningConfig(uniform="yes")
    parsed = parse_args(["--model_name_or_path", "m", "--train_file", "t.csv", "--output_dir", "o",
                         "--flops_reduction", "0.3", "--uniform"])[2]
    assert parsed.uniform is True


def test_cli_retrain_free_uniform(tiny_model_dir, data, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    args = base_args(tiny_model_dir, *data["single"], out) + ["--retrain_free", "--flops_reduction", "0.4",
                                                              "--uniform", "--importance", "taylor"]
    assert main(args) == 0
    report = json.loads((out / "pruning_report.json").read_text())
    assert len(set(report["after"]["structure"]["heads_per_layer"])) == 1
    assert report["after"]["flops"] <= 0.6 * report["before"]["flops"]


@pytest.mark.parametrize("compact", ["always", "never"])
def test_callback_honours_uniform(compact, tmp_path):
    model = make_model("llama").train()
    callback = HeadPruningCallback(head_sparsity=0.5, ffn_sparsity=0.5, uniform=True, start_step=2, end_step=6,
                                   num_events=3, compact=compact)
    trainer = trainer_for(model, tmp_path / "run", callback, causal=True)
    trainer.train()
    assert_uniform(trainer.model)
    shapes = layer_shapes(trainer.model)
    assert 3 * (6 - shapes[0].heads) >= 9 and 3 * (37 - shapes[0].ffn) >= round(0.5 * 111)
