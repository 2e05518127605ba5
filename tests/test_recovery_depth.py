"""Retrain-free recovery with plans that also remove whole layers: widths recovered on the surviving layers, layers
removed last, so the result is the width-only recovery followed by `drop_layers`."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_prune import ImportanceScores, drop_layers
from hf_prune.architecture.config_entry import read_config_entry
from hf_prune.architecture.layouts import get_layers
from hf_prune.planning.plan import PruningPlan
from hf_prune.recovery import apply_mask_tuning, calibration_moments, reconstruction_scores, reselect_units, tune_masks
from tests.tiny_models import assert_untouched, make_inputs, make_model

# layer 1 of 3 removed; widths cut on layers 0 and 2 (llama: one whole key/value group of heads at layer 0)
WIDTHS = {"llama": ({0: [0, 1, 2]}, {0: [3, 5], 2: [1, 2, 3, 4]}),
          "bert": ({0: [1], 2: [0, 3]}, {0: [3, 5], 2: [1, 2, 3, 4]})}


def _batches():
    return [make_inputs(seed=s) for s in (1, 2, 3)]


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**make_inputs(seed=7)).logits


@pytest.mark.parametrize("reconstruct", ["scales", "weights"])
@pytest.mark.parametrize("family", ["llama", "bert"])
def test_plan_with_layers_equals_width_recovery_then_drop(family, reconstruct):
    heads, neurons = WIDTHS[family]
    model = make_model(family)
    reference = copy.deepcopy(model)

    solved = tune_masks(model, PruningPlan(heads, neurons, layers=[1]), _batches(), reconstruct=reconstruct)
    expected = tune_masks(reference, PruningPlan(heads, neurons), _batches(), reconstruct=reconstruct)
    drop_layers(reference, [1])

    torch.testing.assert_close(_logits(model), _logits(reference), rtol=1e-5, atol=1e-5)
    assert solved.keys() == expected.keys()
    for kind in solved:  # keyed by the layers' indices before the plan
        assert solved[kind].keys() == expected[kind].keys()
        for i in solved[kind]:
            torch.testing.assert_close(solved[kind][i], expected[kind][i])
    assert len(get_layers(model)) == 2
    entry = read_config_entry(model.config)
    assert entry["layers"] == [0, 2] and entry["base"]["num_layers"] == 3
    assert entry == read_config_entry(reference.config)
    assert model.config.hf_prune == reference.config.hf_prune


def test_removed_layers_get_no_statistics():
    heads, neurons = WIDTHS["llama"]
    model = make_model("llama")
    o_moments, down_moments = calibration_moments(model, _batches(), skip_layers=[1])
    assert o_moments[1] is None and down_moments[1] is None
    full = calibration_moments(model, _batches())
    for i in (0, 2):
        assert torch.equal(o_moments[i], full[0][i]) and torch.equal(down_moments[i], full[1][i])

    plan = PruningPlan(heads, neurons, layers=[1])
    other = copy.deepcopy(model)
    apply_mask_tuning(model, plan, (o_moments, down_moments))  # the skipped layers' moments are not needed
    apply_mask_tuning(other, plan, full)  # and full moments work as well
    torch.testing.assert_close(_logits(model), _logits(other))
    with pytest.raises(ValueError, match="moments"):  # missing moments for a layer that survives
        apply_mask_tuning(make_model("llama"), PruningPlan(heads, neurons), (o_moments, down_moments))


class _Unread:
    """A calibration loader that fails when read: refusals must come before the calibration pass."""

    def __iter__(self):
        raise AssertionError("the calibration data was read")


@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("bad", [
    PruningPlan({1: [0, 1, 2]}, {}, layers=[1]),  # heads of a removed layer
    PruningPlan({}, {1: [0]}, layers=[1]),  # neurons of a removed layer
    PruningPlan({}, {}, layers=[0, 1, 2]),  # every layer
    PruningPlan({}, {}, layers=[3]),  # out of range
])
def test_inconsistent_plan_refused_before_anything_changes(family, bad):
    model = make_model(family).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    moments = calibration_moments(model, _batches())
    for call in (lambda: tune_masks(model, bad, _Unread()),
                 lambda: tune_masks(model, bad, _Unread(), reconstruct="weights"),
                 lambda: apply_mask_tuning(model, bad, moments),
                 lambda: reselect_units(model, bad, moments)):
        with pytest.raises(ValueError):
            call()
        assert_untouched(model, state, requires_grad)
        assert len(get_layers(model)) == 3 and getattr(model.config, "hf_prune", None) is None


def test_reselect_keeps_the_removed_layers():
    heads, neurons = WIDTHS["llama"]
    model = make_model("llama")
    moments = calibration_moments(model, _batches(), skip_layers=[1])
    plan = reselect_units(model, PruningPlan(heads, neurons, layers=[1]), moments)
    assert plan.layers == [1]
    assert [len(plan.heads[0])] == [3] and {i: len(v) for i, v in plan.neurons.items()} == {0: 2, 2: 4}
    apply_mask_tuning(model, plan, moments, reconstruct="weights")
    assert read_config_entry(model.config)["layers"] == [0, 2]
    assert read_config_entry(model.config)["heads"] == [3, 6]


def test_reconstruction_scores_keep_layer_scores():
    model = make_model("llama")
    moments = calibration_moments(model, _batches())
    g = torch.Generator().manual_seed(0)
    scores = ImportanceScores([torch.rand(6, generator=g) for _ in range(3)],
                              [torch.rand(37, generator=g) for _ in range(3)], [2, 2, 2], "fisher", 3,
                              layers=[0.5, 0.1, 0.9])
    assert reconstruction_scores(model, scores, moments).layers == [0.5, 0.1, 0.9]
