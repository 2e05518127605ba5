"""HeadPruningCallback on models with several layer stacks (tiny T5, BART, CLIP; CPU Trainer runs of a few steps).

Heads are counted over every stack with the decoder layers' cross-attention heads, as the planners rank them.
"""

import json
import math

import pytest
import torch
from tiny_stacks import VOCAB, make_stacked, stacked_inputs, stacked_output
from transformers import Trainer, TrainerCallback, TrainingArguments

import hf_prune.training.units as units_module
from hf_prune import count_flops, count_parameters, layer_shapes, load_pruned, prune_model
from hf_prune.training.callback import HeadPruningCallback, resize_to_checkpoint

MODELS = ["t5", "bart", "clip"]


class Batches(torch.utils.data.Dataset):
    """Random seq2seq pairs (T5, BART) or random captions and images (CLIP)."""

    def __init__(self, name: str, n: int = 32):
        g = torch.Generator().manual_seed(0)
        self.towers = name == "clip"
        self.ids = torch.randint(3, VOCAB, (n, 7 if self.towers else 9), generator=g)
        self.other = torch.randn(n, 3, 16, 16, generator=g) if self.towers else torch.randint(3, VOCAB, (n, 5),
                                                                                               generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        item = {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i])}
        item["pixel_values" if self.towers else "labels"] = self.other[i]
        return item


def collate(items):
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    if "pixel_values" in batch:
        batch["return_loss"] = True  # CLIP's contrastive loss
    return batch


def trainer_for(name, model, tmp_path, callback, max_steps=6, **kwargs):
    options = dict(output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=1e-3,
                   report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    args = TrainingArguments(**{**options, **kwargs})
    return Trainer(model=model, args=args, train_dataset=Batches(name), data_collator=collate, callbacks=[callback])


def totals(model) -> tuple[int, int]:
    """Heads (self- and cross-attention) and FFN neurons over every stack."""
    shapes = [s for stack in layer_shapes(model).values() for s in stack]
    return sum(s.heads + s.cross_heads for s in shapes), sum(s.ffn for s in shapes)


def kept_after(total: int, sparsity: float) -> int:
    return total - math.floor(sparsity * total + 0.5)


def output(model, name):
    model.eval()
    return stacked_output(model, stacked_inputs(name))


@pytest.fixture
def recorded_cuts(monkeypatch):
    """Every prune_model request the callback makes, in "<stack>.<layer>" keys, in order."""
    calls = []

    def recording(model, **request):
        calls.append({key: request[key] for key in ("heads", "neurons", "cross_heads")})
        return prune_model(model, **request)

    monkeypatch.setattr(units_module, "prune_model", recording)
    return calls


@pytest.mark.parametrize("compact", ["auto", "never"])
@pytest.mark.parametrize("name", MODELS)
def test_iterative_pruning_meets_targets_and_reloads(name, compact, tmp_path):
    model = make_stacked(name).train()
    heads0, ffn0 = totals(model)
    callback = HeadPruningCallback(head_sparsity=0.5, ffn_sparsity=0.5, start_step=2, end_step=4, num_events=2,
                                   compact=compact)
    trainer = trainer_for(name, model, tmp_path / "run", callback)
    trainer.train()
    heads, ffn = totals(trainer.model)
    assert (heads, ffn) == (kept_after(heads0, 0.5), kept_after(ffn0, 0.5))
    events = [r for r in trainer.state.log_history if "hf_prune/event" in r]
    assert [(r["hf_prune/event"], r["step"]) for r in events] == [(1, 2), (2, 4)]
    assert events[0]["hf_prune/heads"] > events[-1]["hf_prune/heads"] == heads
    assert events[-1]["hf_prune/ffn_neurons"] == ffn and events[-1]["hf_prune/layers"] == 5
    entry = trainer.model.config.hf_prune
    assert entry["format_version"] == 3
    assert [entry["stacks"][stack]["heads"] for stack in entry["stacks"]] == [
        [s.heads for s in shapes] for shapes in layer_shapes(trainer.model).values()]
    if compact == "auto":  # compacted at each event: the optimizer's state was sliced with the weights
        optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
        for p in trainer.model.parameters():
            assert all(v.dim() == 0 or v.shape == p.shape for v in optimizer.state[p].values())
        trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert all(id(p) in trained for p in trainer.model.parameters())  # T5's new per-layer bias tables too
    trainer.save_model(tmp_path / "final")
    loaded = load_pruned(tmp_path / "final")
    assert torch.equal(output(loaded, name), output(trainer.model, name))


def test_cross_attention_heads_are_scored_from_training_and_pruned(tmp_path):
    model = make_stacked("t5").train()
    callback = HeadPruningCallback(head_sparsity=0.5, scope="layer", start_step=2)
    seen = {}

    class Spy(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                heads, _, steps = callback.running.reduced()
                seen["cross"], seen["steps"] = heads[5:], steps  # FlatView: 3 encoder, 2 decoder, 2 cross entries

    trainer = trainer_for("t5", model, tmp_path, callback, max_steps=3)
    trainer.add_callback(Spy())
    trainer.train()
    assert seen["steps"] == 1 and len(seen["cross"]) == 2
    assert all(len(h) == 4 and bool((h > 0).all()) for h in seen["cross"])  # every cross-attention head got a gradient
    shapes = layer_shapes(trainer.model)
    assert [s.heads for s in shapes["encoder"] + shapes["decoder"]] == [2] * 5
    assert [s.cross_heads for s in shapes["decoder"]] == [2, 2]  # scope="layer": half of every entry's heads


@pytest.mark.parametrize("compact", ["auto", "never"])
@pytest.mark.parametrize("name", ["t5", "bart"])
def test_outputs_equal_prune_model_and_gated_units_contribute_nothing(name, compact, tmp_path, recorded_cuts):
    # learning_rate 0: the weights stay the dense model's, so the result must be prune_model's on a fresh copy
    model = make_stacked(name).train()
    callback = HeadPruningCallback(head_sparsity=0.5, ffn_sparsity=0.4, start_step=2, compact=compact)
    gated = {}

    class Spy(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 3:  # after the event: in gate mode the gates hold the pruned units at zero
                gated["output"] = output(model, name)
                model.train()

    trainer = trainer_for(name, model, tmp_path, callback, max_steps=4, learning_rate=0.0)
    trainer.add_callback(Spy())
    trainer.train()
    assert len(recorded_cuts) == 1
    reference = make_stacked(name)
    prune_model(reference, **recorded_cuts[0])
    assert layer_shapes(reference) == layer_shapes(trainer.model)
    after = output(trainer.model, name)
    assert torch.equal(after, output(reference, name))
    if compact == "never":  # cutting the gated units physically changes nothing
        torch.testing.assert_close(gated["output"], after, atol=1e-5, rtol=1e-5)
    assert totals(trainer.model)[0] < totals(make_stacked(name))[0]


@pytest.mark.parametrize("name,option", [("t5", "flops_reduction"), ("bart", "params_reduction")])
def test_cost_targets_are_met(name, option, tmp_path):
    model = make_stacked(name).train()
    cost = (lambda m: count_flops(m)) if option == "flops_reduction" else (
        lambda m: count_parameters(m, layers_only=True))
    dense = cost(model)
    callback = HeadPruningCallback(**{option: 0.4}, start_step=2, end_step=4, num_events=2)
    trainer = trainer_for(name, model, tmp_path, callback, max_steps=5)
    trainer.train()
    assert 0.5 * dense <= cost(trainer.model) <= 0.6 * dense


@pytest.mark.parametrize("importance,calibration", [("taylor", False), ("l2", False), ("activation", True)])
def test_other_importance_methods(importance, calibration, tmp_path):
    model = make_stacked("t5").train()
    heads0, ffn0 = totals(model)
    decoder = {"decoder_input_ids": torch.randint(3, VOCAB, (4, 5))}  # activation runs the model without labels
    loader = [{**collate([Batches("t5")[i] for i in range(4)]), **decoder}] if calibration else None
    callback = HeadPruningCallback(head_sparsity=0.25, ffn_sparsity=0.25, start_step=1, importance=importance,
                                   calibration_dataloader=loader)
    trainer = trainer_for("t5", model, tmp_path, callback, max_steps=2)
    trainer.train()
    assert totals(trainer.model) == (kept_after(heads0, 0.25), kept_after(ffn0, 0.25))


@pytest.mark.parametrize("compact", ["auto", "never"])
def test_resumed_run_ends_with_the_same_model(compact, tmp_path):
    def run(max_steps, resume=None, model=None):
        callback = HeadPruningCallback(head_sparsity=0.5, ffn_sparsity=0.5, start_step=2, end_step=4, num_events=2,
                                       compact=compact)
        trainer = trainer_for("t5", model or make_stacked("t5").train(), tmp_path / "full", callback,
                              max_steps=max_steps, save_strategy="steps", save_steps=3)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(5)
    checkpoint = tmp_path / "full" / "checkpoint-3"
    state = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["HeadPruningCallback"]
    assert state["attributes"]["events_done"] == 1
    if compact == "never":  # masks over the FlatView: 5 layers, then 2 cross-attention entries
        assert [len(m) for m in state["attributes"]["head_masks"]] == [4] * 7
    model = resize_to_checkpoint(make_stacked("t5").train(), checkpoint)
    resumed = run(5, resume=str(checkpoint), model=model)
    assert layer_shapes(resumed.model) == layer_shapes(full.model)
    assert resumed.model.config.hf_prune == full.model.config.hf_prune
    assert torch.equal(output(resumed.model, "t5"), output(full.model, "t5"))


@pytest.mark.parametrize("name", ["t5", "clip"])
@pytest.mark.parametrize("options,named", [
    ({"head_sparsity": 0.5, "uniform": True}, "uniform=True"),
    ({"head_sparsity": 0.5, "layer_sparsity": 0.25}, "layer removal"),
    ({"num_layers_to_remove": 1}, "layer removal"),
    ({"ffn_sparsity": 0.5, "unstructured_sparsity": 0.5}, "unstructured_sparsity"),
])
def test_unsupported_options_are_refused_before_anything_changes(name, options, named, tmp_path):
    model = make_stacked(name).train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    loader = [collate([Batches(name)[0]])]
    with pytest.raises(ValueError, match=rf"{named}.*several layer stacks.*drop_layers"):
        trainer_for(name, model, tmp_path, HeadPruningCallback(**options, calibration_dataloader=loader))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_targets_are_fractions_of_the_dense_model_after_earlier_pruning(tmp_path):
    model = make_stacked("t5").train()
    heads0, ffn0 = totals(model)
    prune_model(model, heads={"encoder.0": [0, 1]}, neurons={"decoder.1": list(range(10))},
                cross_heads={"decoder.0": [3]})
    callback = HeadPruningCallback(head_sparsity=0.5, ffn_sparsity=0.5, start_step=1)
    trainer = trainer_for("t5", model, tmp_path, callback, max_steps=2)
    trainer.train()
    assert totals(trainer.model) == (kept_after(heads0, 0.5), kept_after(ffn0, 0.5))
