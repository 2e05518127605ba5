"""A parameter budget (`PruningConfig.params_reduction`): validation, the retrain-free planner, the callback's events."""

from __future__ import annotations

import pytest
from tiny_models import make_model

from hf_prune import PruningConfig, compute_importance, count_parameters
from hf_prune.pipeline import make_plan
from hf_prune.training.events import dense_totals, plan_event


@pytest.mark.parametrize("other", [{"flops_reduction": 0.2}, {"latency_reduction": 0.2}, {"head_sparsity": 0.5},
                                   {"ffn_sparsity": 0.5}])
def test_one_budget_only(other):
    with pytest.raises(ValueError, match="only one"):
        PruningConfig(params_reduction=0.3, **other)


@pytest.mark.parametrize("bad", [1.0, -0.1, "0.3", True])
def test_params_reduction_outside_zero_one_is_named(bad):
    with pytest.raises(ValueError, match="params_reduction must be a number in"):
        PruningConfig(params_reduction=bad)


def test_params_budget_is_a_width_budget_that_structure_may_use():
    config = PruningConfig(params_reduction=0.3)
    assert config.prunes_widths and config.budget == "params_reduction"
    assert PruningConfig(params_reduction=0.3, structure="depth").plans_layers
    with pytest.raises(ValueError, match="params_reduction"):
        PruningConfig(structure="depth")


@pytest.mark.parametrize("model_type", ["llama", "bert"])
def test_retrain_free_plan_meets_the_parameter_budget(model_type):
    model = make_model(model_type)
    dense = count_parameters(model, layers_only=True)
    plan = make_plan(compute_importance(model, method="l2", progress=False), model, PruningConfig(params_reduction=0.3))
    plan.apply(model)
    after = count_parameters(model, layers_only=True)
    assert after == plan.metadata["params"]["after"] <= plan.metadata["params"]["target"] <= 0.7 * dense
    assert after > 0.7 * dense - 0.05 * dense  # close to it: the search stops at the first combination that fits


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_callback_event_reaches_its_share_of_the_parameter_budget(fraction):
    model = make_model("llama")
    config = PruningConfig(params_reduction=0.4)
    dense = dense_totals(model, 16)
    assert dense["layer_params"] == count_parameters(model, layers_only=True)  # dense: exact
    scores = compute_importance(model, method="l2", progress=False)
    plan_event(scores, model, config, dense=dense, fraction=fraction, seq_len=16).apply(model)
    target = dense["layer_params"] * (1 - 0.4 * fraction)
    assert target - 0.05 * dense["layer_params"] < count_parameters(model, layers_only=True) <= target
