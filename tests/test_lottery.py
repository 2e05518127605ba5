"""Lottery-ticket rewinding: survivors return to the snapshot, zeros are kept, the random control shares the masks."""

import pytest
import torch
from tiny_models import make_inputs, make_model

from hf_prune.unstructured.lottery import LotteryTicketRewinder, cumulative_sparsity, reinitialize, rewind, snapshot_weights
from hf_prune.unstructured.magnitude import prunable_weight_names, sparsity_report, zero_masks


def train_a_little(model, steps=3, seed=0):
    """A few SGD steps on random labels, so weights move away from the snapshot."""
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(steps):
        inputs = make_inputs()
        labels = torch.randint(0, 3, (2,), generator=g)
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def test_rewinding_restores_survivors_and_keeps_zeros():
    model = make_model("bert")
    train_a_little(model, 1)
    rewinder = LotteryTicketRewinder(rate_per_round=0.5)
    rewinder.snapshot(model)
    snapshot = {k: v.clone() for k, v in rewinder.rewind_state.items()}
    train_a_little(model, 3, seed=1)
    ids = [id(p) for p in model.parameters()]
    masks = rewinder.prune_and_rewind(model)
    names = set(prunable_weight_names(model))
    assert set(masks) == names
    for name, param in model.named_parameters():
        if name in names:
            assert torch.equal(param[masks[name]], snapshot[name][masks[name]])
            assert not param[~masks[name]].any()
        else:
            assert torch.equal(param, snapshot[name]), name
    assert ids == [id(p) for p in model.parameters()]
    assert abs(sparsity_report(model).sparsity - 0.5) < 0.01


def test_rounds_compound_and_never_revive_pruned_weights():
    model = make_model("gpt2")
    rewinder = LotteryTicketRewinder(rate_per_round=0.5, scope="layer")
    rewinder.snapshot(model)
    first = rewinder.prune_and_rewind(model)
    train_a_little_lm(model)
    rewinder.hold(model)
    second = rewinder.prune_and_rewind(model)
    assert all(not (second[n] & ~first[n]).any() for n in first)
    assert abs(sparsity_report(model).sparsity - cumulative_sparsity(0.5, 2)) < 0.01
    assert rewinder.sparsity == pytest.approx(0.75)


def train_a_little_lm(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    inputs = make_inputs()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    optimizer.step()


def test_random_control_shares_masks_and_everything_but_the_survivor_values():
    model = make_model("bert")
    snapshot = snapshot_weights(model)
    from hf_prune.unstructured.magnitude import prune_unstructured

    prune_unstructured(model, 0.5)
    masks = zero_masks(model)
    rewind(model, snapshot, masks)
    ticket = {k: v.clone() for k, v in model.state_dict().items()}
    reinitialize(model, masks, seed=3)
    assert zero_masks(model).keys() == masks.keys()
    assert all(torch.equal(zero_masks(model)[n], masks[n]) for n in masks)
    for name, value in model.state_dict().items():
        if name in masks:
            assert not torch.equal(value, ticket[name])
        else:
            assert torch.equal(value, ticket[name])
    with torch.no_grad():
        assert torch.isfinite(model(**make_inputs()).logits).all()


def test_misuse_raises_value_error():
    model = make_model("bert")
    with pytest.raises(ValueError, match="snapshot"):
        LotteryTicketRewinder().prune_and_rewind(model)
    with pytest.raises(ValueError):
        LotteryTicketRewinder(rate_per_round=1.0)
    with pytest.raises(ValueError, match="does not fit"):
        rewind(model, snapshot_weights(make_model("gpt2")), {})
