"""Calibration data sharded over processes: every scoring method reduces to the single-process result.

Two gloo processes (tests/gloo_workers.py), each on its half of the batches, must end with identical
results, equal to one process scoring all the batches: head and neuron scores of every method, layer
importance of every method, the combined `layer_method`, and the calibration moments of recovery.
"""

from __future__ import annotations

import pytest
import torch
from gloo_workers import run_two_processes
from test_importance import batches
from tiny_models import make_model

from hf_prune.importance import compute_importance, compute_layer_importance
from hf_prune.importance.estimators import METHODS
from hf_prune.importance.layers import LAYER_METHODS
from hf_prune.recovery.moments import calibration_moments

MODEL_TYPES = ("bert", "llama")

WORKER = """
import torch
from test_importance import batches
from tiny_models import make_model
from hf_prune.importance import compute_importance, compute_layer_importance
from hf_prune.importance.estimators import METHODS
from hf_prune.importance.layers import LAYER_METHODS
from hf_prune.recovery.moments import calibration_moments
from hf_prune.utils import all_reduce

results = {{}}
for model_type in ("bert", "llama"):
    model = make_model(model_type)
    shard = batches(model_type, n=4)[rank::world]
    for method in METHODS:
        s = compute_importance(model, shard, method, progress=False)
        results[(model_type, method)] = (s.heads, s.neurons, s.num_batches)
    s = compute_importance(model, shard, "fisher", layer_method="fisher", progress=False)
    results[(model_type, "fisher+layers")] = (s.heads, s.neurons, s.layers)
    for method in LAYER_METHODS:
        n = 2 if method == "angular" else 1
        s = compute_layer_importance(model, shard, method, n=n, progress=False)
        results[(model_type, "layer", method)] = (s.scores, s.num_batches)
    results[(model_type, "moments")] = calibration_moments(model, shard)
# buckets smaller than one tensor and than several: the same sums as one flat call
tensors = [torch.arange(n, dtype=torch.float32) * (rank + 1) for n in (3, 5, 1, 7)]
results["buckets"] = (all_reduce(tensors, bucket_numel=6), all_reduce(tensors))
torch.save(results, f"{out}/results.{{rank}}.pt")
"""


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("gloo")
    run_two_processes(WORKER, out, timeout=600)
    return [torch.load(out / f"results.{r}.pt", weights_only=False) for r in range(2)]


def _close(a, b, rtol=1e-4, atol=1e-10):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               rtol=rtol, atol=atol)


def _same_on_both(ranks, key):
    first, second = ranks[0][key], ranks[1][key]
    flat = [torch.as_tensor(x) for x in _flatten(first)], [torch.as_tensor(x) for x in _flatten(second)]
    assert all(torch.equal(a, b) for a, b in zip(*flat)), key  # bit-identical on every process


def _flatten(value):
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _flatten(v)
    elif value is not None:
        yield value


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_method_two_processes_match_one(ranks, model_type):
    model = make_model(model_type)
    data = batches(model_type, n=4)
    for method in METHODS:
        single = compute_importance(model, data, method, progress=False)
        _same_on_both(ranks, (model_type, method))
        heads, neurons, num_batches = ranks[0][(model_type, method)]
        if method in ("gradient", "fisher", "taylor", "activation"):
            assert num_batches == 4, method
        for a, b in zip(heads + neurons, single.heads + single.neurons):
            _close(a, b)
    single = compute_importance(model, data, "fisher", layer_method="fisher", progress=False)
    _same_on_both(ranks, (model_type, "fisher+layers"))
    heads, neurons, layers = ranks[0][(model_type, "fisher+layers")]
    for a, b in zip(heads + neurons, single.heads + single.neurons):
        _close(a, b)
    _close(layers, single.layers)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_layer_importance_two_processes_match_one(ranks, model_type):
    model = make_model(model_type)
    data = batches(model_type, n=4)
    for method in LAYER_METHODS:
        n = 2 if method == "angular" else 1
        single = compute_layer_importance(model, data, method, n=n, progress=False)
        _same_on_both(ranks, (model_type, "layer", method))
        scores, num_batches = ranks[0][(model_type, "layer", method)]
        assert num_batches == 4 and len(scores) == len(single.scores), method
        _close(scores, single.scores, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_calibration_moments_two_processes_match_one(ranks, model_type):
    single = calibration_moments(make_model(model_type), batches(model_type, n=4))
    _same_on_both(ranks, (model_type, "moments"))
    for a, b in zip(_flatten(ranks[0][(model_type, "moments")]), _flatten(single)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_bucketed_all_reduce_equals_one_flat_call(ranks):
    for r in ranks:
        bucketed, flat = r["buckets"]
        for a, b, n in zip(bucketed, flat, (3, 5, 1, 7)):
            assert torch.equal(a, b) and torch.equal(a, torch.arange(n, dtype=torch.float32) * 3)
            assert a.dtype == torch.float32


OFFLOADED_WORKER = """
import torch
from transformers import LlamaForCausalLM
from test_device_map import _batches
from hf_prune.importance import compute_importance, compute_layer_importance

model = LlamaForCausalLM.from_pretrained("{out}/checkpoint", device_map="auto", max_memory={{"cpu": 60000}},
                                         offload_folder="{out}/offload.{{rank}}".format(rank=rank)).eval()
assert "disk" in set(model.hf_device_map.values())
shard = _batches(4)[rank::world]
results = {{}}
for method in ("fisher", "taylor", "activation"):
    s = compute_importance(model, shard, method, progress=False)
    results[method] = (s.heads, s.neurons)
results["layers"] = compute_layer_importance(model, shard, "block_influence", progress=False).scores
torch.save(results, f"{out}/offloaded.{{rank}}.pt")
"""


def test_offloaded_model_in_two_processes_matches_one_in_memory(tmp_path):
    """device_map with disk offload and data sharded over two processes: the single-process in-memory scores."""
    from test_device_map import _batches, _config
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(_config()).save_pretrained(tmp_path / "checkpoint")
    run_two_processes(OFFLOADED_WORKER, tmp_path, timeout=600)
    dense = LlamaForCausalLM.from_pretrained(tmp_path / "checkpoint").eval()
    ranks = [torch.load(tmp_path / f"offloaded.{r}.pt") for r in range(2)]
    for method in ("fisher", "taylor", "activation"):
        single = compute_importance(dense, _batches(4), method, progress=False)
        for r in ranks:
            for a, b in zip(r[method][0] + r[method][1], single.heads + single.neurons):
                _close(a, b, rtol=1e-5, atol=1e-12)
    single = compute_layer_importance(dense, _batches(4), "block_influence", progress=False)
    for r in ranks:
        _close(r["layers"], single.scores, rtol=1e-6, atol=1e-12)
