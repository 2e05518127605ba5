"""Layer-by-layer retrain-free recovery (`stream_recover`, `prune_retrain_free`): dense mode equals the one-pass
path, sequential mode differs, interrupted runs resume to the same model, bad input changes nothing, low-precision
models work, and the peak memory does not grow with depth."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from tiny_models import make_inputs, make_model

from hf_prune import (
    PruningConfig,
    apply_mask_tuning,
    calibration_moments,
    compute_importance,
    layer_shapes,
    plan_from_sparsity,
    prune_retrain_free,
    reselect_units,
    stream_recover,
    tune_masks,
)
from hf_prune.architecture.layouts import get_layers
from hf_prune.planning.plan import PruningPlan
from hf_prune.surgery.depth import drop_layers

HERE = os.path.dirname(os.path.abspath(__file__))


def _batches(n: int = 3) -> list[dict]:
    return [make_inputs(4, 10, seed=30 + i) for i in range(n)]


def _plan(model, layers=()) -> PruningPlan:
    plan = plan_from_sparsity(compute_importance(model, None, "l2"), head_sparsity=0.34, ffn_sparsity=0.4,
                              scope="layer")
    if not layers:
        return plan
    heads = {i: h for i, h in plan.heads.items() if i not in layers}
    neurons = {i: n for i, n in plan.neurons.items() if i not in layers}
    return PruningPlan(heads, neurons, plan.metadata, list(layers))


def _assert_states_close(a, b, rtol=1e-5):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].shape == sb[key].shape, key
        diff = (sa[key].double() - sb[key].double()).norm()
        assert diff <= rtol * sb[key].double().norm() + 1e-12, (key, diff.item())


def _outputs(model, data=None):
    data = data or [make_inputs(4, 10, seed=99)]
    with torch.no_grad():
        return torch.cat([model(**b).logits.flatten().float() for b in data])


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before: dict):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


# ----------------------------------------------------------------------------- dense == one pass


@pytest.mark.parametrize("family", ["llama", "bert", "gpt2"])
@pytest.mark.parametrize("reselect", [False, True])
def test_dense_streaming_equals_one_pass(family, reselect):
    model = make_model(family)
    plan = _plan(model)
    one_pass = copy.deepcopy(model)
    moments = calibration_moments(one_pass, _batches())
    expected_plan = reselect_units(one_pass, plan, moments) if reselect else plan
    apply_mask_tuning(one_pass, expected_plan, moments, reconstruct="weights")

    streamed = copy.deepcopy(model)
    result = stream_recover(streamed, plan, _batches(), mode="dense", reconstruct="weights", reselect=reselect)
    assert result.plan.heads == expected_plan.heads and result.plan.neurons == expected_plan.neurons
    _assert_states_close(streamed, one_pass)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in streamed.modules())
    # one layer's statistics at a time: the largest layer's pair of moments, never the sum over layers
    s = layer_shapes(model)[0]
    one_layer = ((s.heads * s.head_dim + 1) ** 2 + (s.ffn + 1) ** 2) * 8
    assert result.peak_stats_bytes == one_layer
    assert [r["layer"] for r in result.layers] == list(range(len(layer_shapes(model))))


@pytest.mark.parametrize("reconstruct", ["scales", "weights"])
def test_tune_masks_streams_and_keeps_its_results(reconstruct):
    model = make_model("llama")
    plan = _plan(model, layers=[1])
    reference = copy.deepcopy(model)
    moments = calibration_moments(reference, _batches(), skip_layers=[1])
    expected = apply_mask_tuning(reference, plan, moments, reconstruct=reconstruct)
    solved = tune_masks(model, plan, _batches(), reconstruct=reconstruct)
    _assert_states_close(model, reference)
    assert solved.keys() == expected.keys()
    for kind in solved:
        assert solved[kind].keys() == expected[kind].keys()
        for i in solved[kind]:
            torch.testing.assert_close(solved[kind][i], expected[kind][i])
    assert len(get_layers(model)) == 2


def test_sequential_mode_runs_and_differs_and_skips_removed_layers():
    model = make_model("llama")
    plan = _plan(model, layers=[1])
    dense_out = _outputs(model)
    dense_mode, sequential = copy.deepcopy(model), copy.deepcopy(model)
    stream_recover(dense_mode, plan, _batches(), mode="dense")
    result = stream_recover(sequential, plan, _batches(), mode="sequential")
    assert [s.ffn for s in layer_shapes(sequential)] == [s.ffn for s in layer_shapes(dense_mode)]
    # layer 0 sees the same (dense) inputs in both modes; layer 2 does not
    w0 = get_layers(sequential)[0].mlp.down_proj.weight
    torch.testing.assert_close(w0, get_layers(dense_mode)[0].mlp.down_proj.weight)
    w2 = get_layers(sequential)[1].mlp.down_proj.weight
    assert not torch.allclose(w2, get_layers(dense_mode)[1].mlp.down_proj.weight)
    assert result.layers[1].get("removed") is True
    assert torch.isfinite(_outputs(sequential)).all()
    assert (_outputs(sequential) - dense_out).norm() < dense_out.norm()


def test_sequential_mode_skips_a_removed_layer():
    """Sequential with layer 1 removed = sequential on the model without layer 1 (its inputs pass through)."""
    model = make_model("bert")
    plan = _plan(model, layers=[1])
    a = copy.deepcopy(model)
    stream_recover(a, plan, _batches(), mode="sequential")
    b = copy.deepcopy(model)
    drop_layers(b, [1])
    shifted = PruningPlan({0 if i == 0 else 1: h for i, h in plan.heads.items()},
                          {0 if i == 0 else 1: n for i, n in plan.neurons.items()})
    stream_recover(b, shifted, _batches(), mode="sequential")
    _assert_states_close(a, b)


def test_offloaded_hidden_states_give_the_same_model(tmp_path):
    model = make_model("gpt2")
    plan = _plan(model)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    stream_recover(a, plan, _batches(), mode="sequential")
    stream_recover(b, plan, _batches(), mode="sequential", offload_dir=tmp_path / "spill")
    _assert_states_close(a, b, rtol=0)
    assert list((tmp_path / "spill").iterdir()) == []  # the temporary folder is removed


def test_float32_statistics_are_close():
    model = make_model("llama")
    plan = _plan(model)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    stream_recover(a, plan, _batches())
    stream_recover(b, plan, _batches(), stats_dtype=torch.float32)
    _assert_states_close(a, b, rtol=1e-2)  # float32 sums of few tokens, ridge 1e-4: close, not equal


# ----------------------------------------------------------------------------- resume


class Interrupt(Exception):
    pass


def _interrupt_after(k: int):
    def callback(index, record):
        if index == k:
            raise Interrupt

    return callback


@pytest.mark.parametrize("mode", ["dense", "sequential"])
def test_an_interrupted_run_resumes_to_the_same_model(mode, tmp_path):
    model = make_model("llama")
    plan = _plan(model, layers=[2])
    uninterrupted = copy.deepcopy(model)
    stream_recover(uninterrupted, plan, _batches(), mode=mode, reselect=True)

    first = copy.deepcopy(model)
    with pytest.raises(Interrupt):
        stream_recover(first, plan, _batches(), mode=mode, reselect=True, checkpoint_dir=tmp_path,
                       on_layer_end=_interrupt_after(0))
    assert sorted(p.name for p in tmp_path.glob("layer_*.pt")) == ["layer_00000.pt"]
    rerun = copy.deepcopy(model)  # a fresh process would reload the dense model
    result = stream_recover(rerun, plan, _batches(), mode=mode, reselect=True, checkpoint_dir=tmp_path)
    assert [r["resumed"] for r in result.layers] == [True, False, False, False][:len(result.layers)]
    _assert_states_close(rerun, uninterrupted, rtol=0)
    assert rerun.config.hf_prune == uninterrupted.config.hf_prune

    with pytest.raises(ValueError, match="another model, plan"):  # a mismatched rerun refuses
        other = copy.deepcopy(model)
        stream_recover(other, _plan(model), _batches(), mode=mode, checkpoint_dir=tmp_path)


def test_the_pipeline_resumes_with_its_saved_plan(tmp_path):
    model = make_model("bert")
    data = [dict(b, labels=torch.tensor([0, 1, 2, 0])) for b in _batches()]
    config = PruningConfig(head_sparsity=0.25, ffn_sparsity=0.4, importance="fisher")
    uninterrupted = copy.deepcopy(model)
    expected = prune_retrain_free(uninterrupted, data, config)
    first = copy.deepcopy(model)
    with pytest.raises(Interrupt):
        prune_retrain_free(first, data, config, checkpoint_dir=tmp_path, on_layer_end=_interrupt_after(1))
    assert (tmp_path / "plan.json").exists()
    rerun = copy.deepcopy(model)
    result = prune_retrain_free(rerun, data, config, checkpoint_dir=tmp_path)
    assert "scoring_s" not in result.seconds  # the plan came from the checkpoint
    assert result.plan.heads == expected.plan.heads and result.plan.neurons == expected.plan.neurons
    _assert_states_close(rerun, uninterrupted, rtol=0)
    with pytest.raises(ValueError, match="another model, data or config"):
        prune_retrain_free(copy.deepcopy(model), data, config.replace(ffn_sparsity=0.2), checkpoint_dir=tmp_path)


def test_the_calibration_data_is_hashed_only_for_a_checkpoint(tmp_path, monkeypatch):
    from hf_prune.pipeline import retrain_free

    hashed = []
    real = retrain_free._data_digest
    monkeypatch.setattr(retrain_free, "_data_digest", lambda batches: hashed.append(1) or real(batches))
    config = PruningConfig(head_sparsity=0.25, ffn_sparsity=0.4, importance="l2")
    prune_retrain_free(make_model("bert"), _batches(), config)
    assert hashed == []  # nothing to fingerprint without a checkpoint
    prune_retrain_free(make_model("bert"), _batches(), config, checkpoint_dir=tmp_path)
    assert hashed == [1]


def test_a_batch_that_is_not_a_dict_is_refused_before_anything_changes():
    model = make_model("bert")
    before = _state(model)
    with pytest.raises(TypeError, match="dicts of tensors.*got list"):
        prune_retrain_free(model, [list(_batches(1)[0].values())], PruningConfig(head_sparsity=0.5))
    _assert_unchanged(model, before)


# ----------------------------------------------------------------------------- the pipeline


def test_pipeline_equals_scores_plan_reselect_and_one_pass_recovery():
    model = make_model("bert")
    data = [dict(b, labels=torch.tensor([0, 1, 2, 0])) for b in _batches()]
    config = PruningConfig(flops_reduction=0.4, flops_seq_len=10, importance="fisher")
    reference = copy.deepcopy(model)
    from hf_prune.pipeline import make_plan

    plan = make_plan(compute_importance(reference, data, "fisher"), reference, config)
    moments = calibration_moments(reference, data)
    plan = reselect_units(reference, plan, moments)
    apply_mask_tuning(reference, plan, moments, reconstruct="weights")

    result = prune_retrain_free(model, data, config)
    _assert_states_close(model, reference)
    assert result.reselected and result.recovery == "weights"
    assert {"scoring_s", "plan_s", "recovery_s", "total_s"} <= set(result.seconds)
    assert json.loads(json.dumps(result.to_dict()))["plan"]["heads"] == {str(k): v for k, v in plan.heads.items()}


def one_pass_and_layer_by_layer(model, data, config, monkeypatch):
    """Prune a copy layer by layer and `model` with one_pass=True: (copy, its result, model's result, one entry per
    statistics pass `calibration_moments` ran of its own during the one-pass call)."""
    import hf_prune.recovery.moments as moments

    streamed = copy.deepcopy(model)
    expected = prune_retrain_free(streamed, data, config)
    separate_passes = []
    own_pass = moments.calibration_moments
    monkeypatch.setattr(moments, "calibration_moments", lambda *a, **k: separate_passes.append(1) or own_pass(*a, **k))
    return streamed, expected, prune_retrain_free(model, data, config, one_pass=True), separate_passes


@pytest.mark.parametrize("family,importance", [("bert", "fisher"), ("llama", "fisher"), ("llama", "activation"),
                                               ("gpt2", "l2")])
def test_one_pass_equals_the_layer_by_layer_pipeline(family, importance, monkeypatch):
    """one_pass=True collects the statistics during scoring (fisher, activation) or in a pass of their own (l2, which
    runs no forward): the same plan and weights as the layer-by-layer path, and no hooks left behind."""
    model = make_model(family)
    data = [dict(b, labels=b["input_ids"] if family != "bert" else torch.tensor([0, 1, 2, 0])) for b in _batches()]
    config = PruningConfig(flops_reduction=0.4, flops_seq_len=10, importance=importance)
    streamed, expected, result, separate_passes = one_pass_and_layer_by_layer(model, data, config, monkeypatch)
    assert len(separate_passes) == (importance == "l2")  # scores from a forward pass bring the statistics along
    assert result.plan.heads == expected.plan.heads and result.plan.neurons == expected.plan.neurons
    assert result.reselected and result.streaming is None
    _assert_states_close(model, streamed)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert {"scoring_s", "recovery_statistics_s", "recovery_reselect_s", "recovery_solve_s"} <= set(result.seconds)


@pytest.mark.parametrize("bad", ["mode", "checkpoint_dir", "offload_dir", "stats_dtype"])
def test_one_pass_refuses_the_layer_by_layer_options(bad, tmp_path):
    model = make_model("llama")
    before = _state(model)
    kwargs = {"mode": "sequential", "checkpoint_dir": tmp_path / "c", "offload_dir": tmp_path / "o",
              "stats_dtype": torch.float32}
    with pytest.raises(ValueError, match=f"one_pass=True.*{bad}"):
        prune_retrain_free(model, _batches(), PruningConfig(head_sparsity=0.5), one_pass=True, **{bad: kwargs[bad]})
    _assert_unchanged(model, before)
    assert not any(tmp_path.iterdir())


def test_bf16_llama_works_and_is_close_to_float32():
    data = _batches()
    f32 = make_model("llama")
    plan = _plan(f32)
    bf16 = make_model("llama", dtype=torch.bfloat16)
    stream_recover(f32, plan, data, mode="sequential", reselect=True)
    stream_recover(bf16, plan, data, mode="sequential", reselect=True)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    a, b = _outputs(f32), _outputs(bf16)
    assert torch.isfinite(b).all()
    assert (a - b).norm() <= 0.05 * a.norm()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", ["empty", "other_widths", "index_out_of_range", "mode", "reselect_scales"])
def test_bad_input_raises_and_leaves_the_model_unchanged(bad):
    model = make_model("llama")
    plan = _plan(model)
    before = _state(model)
    kwargs: dict = {}
    data = _batches()
    if bad == "empty":
        data = []
    elif bad == "other_widths":
        plan = _plan(make_model("llama"))
        plan.metadata["shapes"]["ffn"][0] += 1
    elif bad == "index_out_of_range":
        plan = PruningPlan({0: [0, 1, 2]}, {2: [5, 400]})
    elif bad == "mode":
        kwargs["mode"] = "parallel"
    else:
        kwargs.update(reconstruct="scales", reselect=True)
    with pytest.raises(ValueError):
        stream_recover(model, plan, data, **kwargs)
    _assert_unchanged(model, before)


def test_pipeline_bad_input_leaves_the_model_unchanged():
    model = make_model("bert")
    before = _state(model)
    with pytest.raises(ValueError, match="empty"):
        prune_retrain_free(model, [], PruningConfig(head_sparsity=0.5))
    with pytest.raises(ValueError, match="removes nothing"):
        prune_retrain_free(model, _batches(), PruningConfig())
    with pytest.raises(ValueError, match="several times"):
        prune_retrain_free(model, iter(_batches()), PruningConfig(head_sparsity=0.5))
    _assert_unchanged(model, before)


# ----------------------------------------------------------------------------- memory


def _peak(layers: int) -> dict:
    # glibc's dynamic mmap threshold keeps freed multi-megabyte blocks in the heap, so RSS would track what the
    # allocator retains (it grows with every pruned layer's reallocated weights) rather than live memory; a fixed
    # threshold returns freed large blocks to the system, so the measured peak is the live peak
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="2",
               PYTHONPATH=os.path.dirname(HERE))
    out = subprocess.run([sys.executable, os.path.join(HERE, "streaming_memory_worker.py"), str(layers), "pipeline"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_depth():
    four, sixteen = _peak(4), _peak(16)
    assert sixteen["peak_extra_bytes"] <= 1.3 * four["peak_extra_bytes"], (four, sixteen)


# ----------------------------------------------------------------------------- torch.distributed

WORKER = """
from tiny_models import make_inputs, make_model
from hf_prune import stream_recover
from hf_prune.planning.plan import PruningPlan
model = make_model("bert")
data = [make_inputs(4, 10, seed=30 + i) for i in range(4)]
plan = PruningPlan({{0: [1], 2: [0, 3]}}, {{0: [3, 5, 7], 1: list(range(10)), 2: [1, 2]}})
stream_recover(model, plan, data[2 * rank:2 * rank + 2], mode="sequential", reselect=True)
torch.save(model.state_dict(), "{out}/rank%d.pt" % rank)
"""


def test_two_processes_match_one(tmp_path):
    """Two gloo processes, each on half the batches: per-layer statistics all-reduced, the model of one process."""
    from gloo_workers import run_two_processes

    run_two_processes(WORKER, tmp_path)
    model = make_model("bert")
    plan = PruningPlan({0: [1], 2: [0, 3]}, {0: [3, 5, 7], 1: list(range(10)), 2: [1, 2]})
    stream_recover(model, plan, [make_inputs(4, 10, seed=30 + i) for i in range(4)], mode="sequential",
                   reselect=True)
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6)
