"""The measured-latency cost model: fitting, arithmetic, JSON, recorded SmolLM2 timings, and measuring tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import make_model

from hf_prune.architecture.shapes import layer_shapes
from hf_prune.deploy.latency_table import measure_latency_table
from hf_prune.planning.latency_model import FEATURES, LatencyTable, features, nnls

DATA = Path(__file__).resolve().parent / "data"
TRUE = {"base_seconds": 0.004, "layer_seconds": 0.0003, "attention_seconds": 0.0002, "ffn_seconds": 0.0001,
        "head_seconds": 2e-5, "neuron_seconds": 3e-7}


def synthetic_samples(coef: dict, with_empty: bool = True) -> list[dict]:
    """Exact timings of a grid of uniform variants (30 layers x 9 heads x 1536 neurons, some truncated)."""
    grid = [(30, 9, 1536), (8, 9, 1536), (15, 9, 1536), (8, 6, 1536), (8, 9, 768), (8, 3, 384)]
    if with_empty:
        grid += [(8, 0, 1536), (8, 9, 0), (8, 0, 0), (8, 6, 0)]
    table = LatencyTable(mode="decode", batch_size=1, seq_len=128, **coef)
    samples = []
    for n, h, f in grid:
        heads, ffn = [h] * n, [f] * n
        samples.append({"heads": heads, "ffn": ffn, "seconds": table.predict(heads, ffn)})
    return samples


def test_fit_recovers_known_coefficients_exactly():
    table = LatencyTable.fit(synthetic_samples(TRUE), mode="decode", batch_size=1, seq_len=128)
    for name, value in TRUE.items():
        assert getattr(table, name) == pytest.approx(value, rel=1e-8), name
    assert table.folded == []
    assert table.fit_error["max"] < 1e-9


def test_fit_is_non_negative():
    # timings that a free least-squares fit would explain with a negative per-neuron cost
    samples = synthetic_samples(TRUE)
    for s in samples:
        s["seconds"] = 0.02 + 3e-4 * len(s["ffn"]) - 1e-7 * sum(s["ffn"])  # more neurons, less time
    free = torch.linalg.lstsq(
        torch.tensor([features(s["heads"], s["ffn"]) for s in samples], dtype=torch.float64)
        / torch.tensor([s["seconds"] for s in samples], dtype=torch.float64)[:, None],
        torch.ones(len(samples), 1, dtype=torch.float64),
    ).solution[:, 0]
    assert (free < 0).any()
    table = LatencyTable.fit(samples, mode="decode", batch_size=1, seq_len=128)
    assert all(getattr(table, name) >= 0 for name in FEATURES)


def test_nnls_matches_a_known_constrained_optimum():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64)
    x = nnls(a, b)  # unconstrained optimum has x2 < 0; constrained: x2 = 0, x1 = mean(1, 0) = 0.5
    assert torch.allclose(x, torch.tensor([0.5, 0.0], dtype=torch.float64))


def test_unidentifiable_features_are_folded_into_coarser_ones():
    # no sample with an empty block: attention and FFN block costs cannot be told from the layer cost
    coef = {**TRUE, "attention_seconds": 0.0, "ffn_seconds": 0.0}
    table = LatencyTable.fit(synthetic_samples(TRUE, with_empty=False), mode="decode", batch_size=1, seq_len=128)
    assert set(table.folded) == {"attention_seconds", "ffn_seconds"}
    assert table.attention_seconds == 0 and table.ffn_seconds == 0
    assert table.layer_seconds == pytest.approx(TRUE["layer_seconds"] + TRUE["attention_seconds"] + TRUE["ffn_seconds"])
    assert table.head_seconds == pytest.approx(coef["head_seconds"])
    assert table.fit_error["max"] < 1e-9  # the folded model still explains every sample
    # every sample at one depth: layers cannot be told from the base cost
    one_depth = [{"heads": [9] * 4, "ffn": [f] * 4, "seconds": 0.01 + 4e-6 * f} for f in (100, 200, 400)]
    table = LatencyTable.fit(one_depth, mode="forward", batch_size=2, seq_len=8)
    assert "layer_seconds" in table.folded and table.layer_seconds == 0
    assert table.predict([9] * 4, [300] * 4) == pytest.approx(0.01 + 4e-6 * 300)


def test_cost_arithmetic():
    t = LatencyTable(mode="forward", batch_size=2, seq_len=16, base_seconds=1.0, layer_seconds=0.5,
                     attention_seconds=0.25, head_seconds=0.125, ffn_seconds=0.0625, neuron_seconds=0.001)
    assert t.attention_cost(0) == 0 and t.ffn_cost(0) == 0
    assert t.attention_cost(4) == 0.25 + 4 * 0.125
    assert t.ffn_cost(100) == 0.0625 + 100 * 0.001
    assert t.layer_cost(0, 0) == 0.5
    assert t.layer_cost(4, 100) == 0.5 + 0.75 + 0.1625
    assert t.predict([], []) == 1.0
    assert t.predict([4, 0], [100, 0]) == pytest.approx(1.0 + t.layer_cost(4, 100) + 0.5)
    model = make_model("llama")
    shapes = layer_shapes(model)
    assert t.predict_model(model) == pytest.approx(t.predict([s.heads for s in shapes], [s.ffn for s in shapes]))


def test_json_round_trip_is_exact(tmp_path):
    table = LatencyTable.fit(synthetic_samples(TRUE), mode="decode", batch_size=1, seq_len=128,
                             metadata={"model_type": "llama", "threads": 2})
    assert LatencyTable.from_json(table.to_json()) == table
    table.save(tmp_path / "table.json")
    assert LatencyTable.load(tmp_path / "table.json") == table


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "generate"}, "mode must be"),
    ({"batch_size": 0}, "batch_size"),
    ({"seq_len": 2.5}, "seq_len"),
    ({"batch_size": True}, "batch_size"),
])
def test_bad_workload_raises(kwargs, match):
    base = {"mode": "decode", "batch_size": 1, "seq_len": 8}
    with pytest.raises(ValueError, match=match):
        LatencyTable(**{**base, **kwargs})
    with pytest.raises(ValueError, match=match):
        LatencyTable.fit(synthetic_samples(TRUE), **{**base, **kwargs})


def test_bad_samples_and_widths_raise():
    with pytest.raises(ValueError, match="empty"):
        LatencyTable.fit([], mode="decode", batch_size=1, seq_len=8)
    with pytest.raises(ValueError, match="seconds"):
        LatencyTable.fit([{"heads": [1], "ffn": [1], "seconds": -1.0}], mode="decode", batch_size=1, seq_len=8)
    with pytest.raises(ValueError, match="one per layer"):
        LatencyTable.fit([{"heads": [1, 2], "ffn": [1], "seconds": 1.0}], mode="decode", batch_size=1, seq_len=8)
    t = LatencyTable(mode="decode", batch_size=1, seq_len=8)
    with pytest.raises(ValueError, match="non-negative"):
        t.predict([-1], [3])
    with pytest.raises(ValueError, match="head widths"):
        t.predict([1, 2], [3])
    with pytest.raises(ValueError, match="non-negative"):
        LatencyTable(mode="decode", batch_size=1, seq_len=8, head_seconds=-1e-3)
    with pytest.raises(ValueError, match="missing keys"):
        LatencyTable.from_dict({"mode": "decode"})


# ----------------------------------------------------------------------------- recorded timings (real SmolLM2)

RECORDED_BOUND = 0.10  # see test_recorded_smollm2_decode_timings


def test_recorded_smollm2_decode_timings():
    """The fit on recorded SmolLM2 decode timings (this machine, benchmarks/bench_latency_model.py --save-samples).

    Every sample is predicted within RECORDED_BOUND: the fit's own error on the recording was well below it (its
    `fit_error` is stored with it), so this guards the fitting code, not the machine.
    """
    recorded = LatencyTable.load(DATA / "latency_samples_smollm2_decode.json")
    assert recorded.metadata["model_type"] == "llama" and recorded.metadata["num_layers"] == 30
    refit = LatencyTable.fit(recorded.samples, mode=recorded.mode, batch_size=recorded.batch_size,
                             seq_len=recorded.seq_len, metadata=recorded.metadata)
    assert refit.folded == []  # the grid identifies every coefficient
    assert refit.fit_error["max"] == pytest.approx(recorded.fit_error["max"], rel=1e-6)
    for s in refit.samples:
        predicted = refit.predict(s["heads"], s["ffn"])
        assert abs(predicted - s["seconds"]) / s["seconds"] <= RECORDED_BOUND, s["name"]
    assert all(getattr(refit, name) >= 0 for name in FEATURES)
    assert json.loads(refit.to_json())["mode"] == "decode"


# ----------------------------------------------------------------------------- measuring tiny models


@pytest.mark.parametrize("model_type, mode", [("llama", "decode"), ("llama", "forward"), ("gpt2", "decode"),
                                              ("bert", "forward")])
def test_measure_latency_table_on_a_tiny_model(model_type, mode):
    model = make_model(model_type).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = layer_shapes(model)
    table = measure_latency_table(model, mode=mode, seq_len=8, repeats=5, warmup=2, progress=False)
    assert model.training  # training flag restored
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert layer_shapes(model) == shapes
    assert table.mode == mode and table.batch_size == 1 and table.seq_len == 8
    names = [s["name"] for s in table.samples]
    assert names[0] == "dense" and len(names) == len(set(names)) == 10  # dense, 1 shallower, 8 width variants
    assert any(0 in s["heads"] for s in table.samples) and any(0 in s["ffn"] for s in table.samples)
    assert table.metadata["model_type"] == model.config.model_type
    dense = table.samples[0]["seconds"]
    assert dense / 10 < table.predict_model(model) < dense * 10  # loose: tiny models on a shared machine are noisy
    assert LatencyTable.from_json(table.to_json()) == table


def test_measure_latency_table_grouped_heads_respect_kv_groups():
    model = make_model("llama")  # 6 query heads over 2 key/value heads
    table = measure_latency_table(model, mode="forward", seq_len=4, repeats=1, warmup=0, widths=(1.0, 0.5),
                                  depths=(1.0,), progress=False)
    assert {h for s in table.samples for h in s["heads"]} == {6, 4}  # 3 -> round(1.5) = 2 kept per group


def test_measure_latency_table_bad_input():
    encoder = make_model("bert")
    with pytest.raises(ValueError, match="mode='forward'"):
        measure_latency_table(encoder, mode="decode", progress=False)
    decoder = make_model("llama")
    for kwargs, match in [({"mode": "prefill"}, "mode must be"), ({"repeats": 0}, "repeats"),
                          ({"seq_len": -3}, "seq_len"), ({"widths": (1.5,)}, "widths"),
                          ({"depths": (0.0,)}, "depths"), ({"warmup": -1}, "warmup")]:
        with pytest.raises(ValueError, match=match):
            measure_latency_table(decoder, progress=False, **kwargs)
