"""Data-driven scoring runs a padded batch as length-sorted pieces (hf_prune/importance/padding.py): the same scores,
fewer padded tokens, and only where that is exact."""

import pytest
import torch
from test_streaming import one_pass_and_layer_by_layer
from tiny_models import VOCAB, make_model

import hf_prune.importance.padding as padding
import hf_prune.recovery.moments as moments
from hf_prune import PruningConfig, compute_importance
from hf_prune.importance.padding import piece_bounds, split_by_length

LENGTHS = [3, 10, 5, 10, 2, 7, 10, 4]


def right_padded(lengths=LENGTHS, seed=0, labels="classes") -> dict:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(2, VOCAB, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, T): ones, then zeros
    ids = ids.masked_fill(mask == 0, 0)
    batch = {"input_ids": ids, "attention_mask": mask}
    batch["labels"] = torch.randint(0, 3, (len(lengths),), generator=g) if labels == "classes" else ids.clone()
    return batch


def test_piece_bounds_trade_padding_against_pieces():
    assert piece_bounds([10, 10, 3, 3], overhead=0) == [(0, 2), (2, 4)]
    assert piece_bounds([10, 10, 3, 3], overhead=100) == [(0, 4)]  # 14 padded tokens do not pay for a second call
    assert piece_bounds([7], overhead=0) == [(0, 1)]


def test_split_covers_every_sample_once_cut_to_its_longest_sentence(monkeypatch):
    batch = right_padded()
    pieces = split_by_length(batch, overhead=0)
    assert len(pieces) > 1
    assert sum(w for _, w in pieces) == pytest.approx(1.0)
    seen = []
    for piece, weight in pieces:
        lengths = piece["attention_mask"].sum(1)
        assert piece["input_ids"].shape[1] == int(lengths.max())  # no column of padding only
        assert weight == pytest.approx(len(lengths) / len(LENGTHS))
        seen += [tuple(row[:n].tolist()) for row, n in zip(piece["input_ids"], lengths)]
    full = [tuple(row[:n].tolist()) for row, n in zip(batch["input_ids"], batch["attention_mask"].sum(1))]
    assert sorted(seen) == sorted(full)
    ignored = dict(batch, labels=batch["labels"].clone())
    ignored["labels"][:4] = -100  # ignored samples do not count in the mean, so not in the weights either
    counted = {tuple(p["labels"].tolist()): w for p, w in split_by_length(ignored, overhead=0)}
    assert all(w == pytest.approx(sum(1 for x in labels if x != -100) / 4) for labels, w in counted.items())


@pytest.mark.parametrize("case", ["left_padding", "token_labels", "no_mask", "one_row", "no_padding"])
def test_batches_where_a_split_is_not_exact_run_whole(case):
    batch = right_padded()
    if case == "left_padding":
        batch["attention_mask"] = batch["attention_mask"].flip(1)
    elif case == "token_labels":  # a causal LM's mean over tokens: pieces would weigh them differently
        batch = right_padded(labels="tokens")
    elif case == "no_mask":
        del batch["attention_mask"]
    elif case == "one_row":
        batch = right_padded(lengths=[4])
    elif case == "no_padding":
        batch = right_padded(lengths=[6, 6, 6])
    pieces = split_by_length(batch, overhead=0)
    assert len(pieces) == 1 and pieces[0][1] == 1.0
    assert all(torch.equal(pieces[0][0][k], batch[k]) for k in batch)


def _counting_forwards(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "deberta-v2"])
@pytest.mark.parametrize("method", ["fisher", "gradient", "taylor", "activation"])
def test_scores_from_pieces_equal_the_whole_batches(family, method, monkeypatch):
    model = make_model(family)
    data = [right_padded(seed=s) for s in range(3)]
    monkeypatch.setattr(padding, "PIECE_OVERHEAD_TOKENS", 10 ** 9)  # never split
    calls, handle = _counting_forwards(model)
    whole = compute_importance(model, data, method, progress=False)
    assert len(calls) == 3
    monkeypatch.setattr(padding, "PIECE_OVERHEAD_TOKENS", 0)  # split wherever it saves a padded token
    calls.clear()
    split = compute_importance(model, data, method, progress=False)
    handle.remove()
    assert len(calls) > 3  # the pieces really ran
    for a, b in zip(whole.heads + whole.neurons, split.heads + split.neurons):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-10)


def test_one_pass_takes_its_statistics_from_the_pieces(monkeypatch):
    """The moments collected while the scoring pass runs batches in pieces count every sample once: no second pass,
    and the same pruned model as the layer-by-layer path."""
    monkeypatch.setattr(padding, "PIECE_OVERHEAD_TOKENS", 0)
    model = make_model("bert")
    data = [right_padded(seed=s) for s in range(3)]
    config = PruningConfig(flops_reduction=0.4, flops_seq_len=10, importance="fisher")
    streamed, expected, result, separate_passes = one_pass_and_layer_by_layer(model, data, config, monkeypatch)
    assert separate_passes == []
    assert result.plan.heads == expected.plan.heads and result.plan.neurons == expected.plan.neurons
    with torch.no_grad():  # the same model up to rounding (the solves of this tiny data amplify it in the weights)
        for batch in data:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            a, b = model(**inputs).logits, streamed(**inputs).logits
            assert (a - b).norm() <= 1e-5 * b.norm()


def test_moments_collected_from_pieces_equal_the_whole_batches(monkeypatch):
    monkeypatch.setattr(padding, "PIECE_OVERHEAD_TOKENS", 0)
    model = make_model("bert")
    data = [right_padded(seed=s) for s in range(3)]
    expected = moments.calibration_moments(model, data)
    with moments.MomentCollector(model) as collector:
        compute_importance(model, data, "fisher", progress=False)
    assert collector.rows == 3 * len(LENGTHS)
    o, down = collector.result()
    for a, b in zip(o + down, expected[0] + expected[1]):
        assert (a - b).norm() <= 1e-6 * b.norm()
