"""hf_prune.deploy.latency: functional checks only (no assertion on how fast anything is)."""

from types import SimpleNamespace

import pytest
import torch
from tiny_models import make_model
from torch import nn

from hf_prune.deploy.latency import LatencyStats, measure_latency, percentile
from hf_prune.surgery.width import prune_model


class Recorder(nn.Module):
    """A stand-in model that logs each call: (name, training flag, inference mode, input shape, max id)."""

    def __init__(self, name: str, log: list, vocab_size: int):
        super().__init__()
        self.name, self.log = name, log
        self.config = SimpleNamespace(vocab_size=vocab_size)
        self.linear = nn.Linear(1, 1)

    def forward(self, input_ids, attention_mask):
        assert attention_mask.shape == input_ids.shape and bool((attention_mask == 1).all())
        self.log.append(
            (self.name, self.training, torch.is_inference_mode_enabled(), tuple(input_ids.shape), int(input_ids.max()))
        )
        return input_ids


def test_dense_and_pruned_give_positive_stats():
    dense = make_model("bert")
    pruned = prune_model(make_model("bert"), heads={0: [0, 1], 1: [3]}, neurons={2: list(range(20))})
    stats = measure_latency({"dense": dense, "pruned": pruned}, batch_size=2, seq_len=16, repeats=3, warmup=1)
    assert set(stats) == {"dense", "pruned"}
    for s in stats.values():
        assert isinstance(s, LatencyStats)
        assert 0 < s.p10_s <= s.median_s <= s.p90_s
        assert s.throughput == pytest.approx(2 / s.median_s)
        assert (s.batch_size, s.seq_len, s.repeats) == (2, 16, 3)


def test_models_are_alternated_in_eval_and_inference_mode():
    log = []
    a, b = Recorder("a", log, vocab_size=1000), Recorder("b", log, vocab_size=7)
    a.train()
    b.eval()
    measure_latency({"a": a, "b": b}, batch_size=3, seq_len=5, repeats=4, warmup=2)
    assert [name for name, *_ in log] == ["a", "b"] * 6  # warmup + repeats rounds, round-robin
    assert all(not training and inference for _, training, inference, _, _ in log)
    assert all(shape == (3, 5) and max_id < 7 for *_, shape, max_id in log)  # ids valid for the smaller vocab
    assert a.training and not b.training  # training mode restored


def test_num_threads_is_restored():
    before = torch.get_num_threads()
    seen = []

    class Probe(Recorder):
        def forward(self, input_ids, attention_mask):
            seen.append(torch.get_num_threads())
            return input_ids

    measure_latency({"p": Probe("p", [], 10)}, batch_size=1, seq_len=2, repeats=2, warmup=0, num_threads=1)
    assert seen == [1, 1]
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"seq_len": -1},
        {"repeats": 0},
        {"repeats": 2.5},
        {"warmup": -1},
        {"num_threads": 0},
    ],
)
def test_bad_sizes_raise(kwargs):
    with pytest.raises(ValueError):
        measure_latency({"m": Recorder("m", [], 10)}, **kwargs)


def test_empty_dict_raises():
    with pytest.raises(ValueError, match="empty"):
        measure_latency({})


def test_percentile_interpolates():
    values = [4.0, 1.0, 3.0, 2.0, 5.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 10) == pytest.approx(1.4)
    assert percentile([2.0], 90) == 2.0
