"""HeadPruningCallback built from a PruningConfig: keyword/alias equivalence, checkpoint state, old checkpoints."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
from test_callback import Toy
from tiny_models import make_model
from transformers import Trainer, TrainerState, TrainingArguments

import hf_prune.training.callback as callback_module
from hf_prune import layer_shapes
from hf_prune.training import HeadPruningCallback, PruningConfig
from hf_prune.training.callback import resize_to_checkpoint

ARGS = SimpleNamespace(world_size=1, max_steps=8)
OLD_KEYWORDS = dict(head_sparsity=0.5, ffn_sparsity=0.25, importance="taylor", start_step=2, end_step=6, num_events=3,
                    schedule="linear", scope="layer", min_heads=1, head_multiple=1, neuron_multiple=2, seq_len=64,
                    compact=False, calibration_batches=4, label_free=True, unstructured_sparsity=0.1,
                    unstructured_scope="layer")
SAME_CONFIG = PruningConfig(head_sparsity=0.5, ffn_sparsity=0.25, importance="taylor", pruning_start_step=2,
                            pruning_end_step=6, pruning_events=3, pruning_schedule="linear", pruning_scope="layer",
                            min_heads_per_layer=1, neuron_multiple=2, flops_seq_len=64, compact="never",
                            calibration_batches=4, label_free=True, unstructured_sparsity=0.1,
                            unstructured_scope="layer")


def test_keyword_call_equals_config_call():
    by_keywords = HeadPruningCallback(**OLD_KEYWORDS, seed=3)
    by_config = HeadPruningCallback(SAME_CONFIG, seed=3)
    assert by_keywords.config == by_config.config == SAME_CONFIG
    assert by_keywords.state() == by_config.state()
    assert by_keywords.event_steps() == by_config.event_steps() == [2, 4, 6]
    assert by_keywords.seq_len == 64


def test_keywords_override_the_config_and_a_dict_is_a_config():
    callback = HeadPruningCallback(SAME_CONFIG, start_step=3, compact=True)
    assert callback.config == SAME_CONFIG.replace(pruning_start_step=3, compact="always")
    assert HeadPruningCallback(SAME_CONFIG.to_dict()).config == SAME_CONFIG
    assert SAME_CONFIG.pruning_start_step == 2  # the caller's config is not changed


def test_callback_defaults_where_the_config_leaves_none():
    callback = HeadPruningCallback(PruningConfig(head_sparsity=0.5))
    assert callback.event_steps() == [0] and callback.seed == 0
    assert callback.seq_len is None  # at train begin: the model's default_seq_len (128, a ViT's patches + 1)


@pytest.mark.parametrize("call, error, message", [
    (lambda: HeadPruningCallback(0.5), ValueError, "pass options by keyword"),
    (lambda: HeadPruningCallback(start_step=1, pruning_start_step=2), ValueError, "set the same option"),
    (lambda: HeadPruningCallback(PruningConfig(pruning_events=2)), ValueError, "needs pruning_end_step"),
    (lambda: HeadPruningCallback({"head_sparsty": 0.5}), ValueError, "unknown pruning config keys"),
    (lambda: HeadPruningCallback(sparsity=0.5), TypeError, "unknown pruning option"),
])
def test_bad_construction_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_state_holds_the_config_and_rebuilds_the_callback():
    callback = HeadPruningCallback(SAME_CONFIG, seed=7)
    state = json.loads(json.dumps(callback.state()))  # what trainer_state.json holds
    assert state["args"] == {"config": SAME_CONFIG.to_dict(), "seed": 7}
    rebuilt = HeadPruningCallback(**state["args"])  # restore_callback_states_from_checkpoint builds it so
    assert rebuilt.config == SAME_CONFIG and rebuilt.seed == 7


# ----------------------------------------------------------------------------- resuming


def old_format(saved: dict) -> dict:
    """A state as HeadPruningCallback wrote it before PruningConfig: old keyword names, scores as lists."""
    config = PruningConfig.from_dict(saved["args"]["config"])
    args = {"head_sparsity": config.head_sparsity, "ffn_sparsity": config.ffn_sparsity, "flops_reduction": None,
            "importance": config.importance, "start_step": config.pruning_start_step,
            "end_step": config.pruning_end_step, "num_events": config.pruning_events, "schedule": "cubic",
            "scope": "global", "min_heads": 0, "head_multiple": 1, "neuron_multiple": 1, "seq_len": 128,
            "compact": "auto", "calibration_batches": 8, "label_free": False, "seed": saved["args"]["seed"],
            "unstructured_sparsity": 0.0, "unstructured_scope": "global"}
    attributes = dict(saved["attributes"])
    scores = attributes.pop("running_scores")
    attributes.update(head_scores=scores["heads"], neuron_scores=scores["neurons"], accumulated_steps=scores["steps"])
    return {"args": args, "attributes": attributes}


def run(out, resume=None, model=None, restore_callbacks=False):
    model = model or make_model("bert").train()
    config = PruningConfig(head_sparsity=0.5, ffn_sparsity=0.5, pruning_start_step=2, pruning_end_step=6,
                           pruning_events=3)
    args = TrainingArguments(output_dir=str(out), max_steps=8, per_device_train_batch_size=8, learning_rate=1e-3,
                             report_to=[], save_strategy="steps", save_steps=3, use_cpu=True, seed=0,
                             disable_tqdm=True, restore_callback_states_from_checkpoint=restore_callbacks)
    trainer = Trainer(model=model, args=args, train_dataset=Toy(), callbacks=[HeadPruningCallback(config)])
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.parametrize("restore_callbacks", [False, True])
def test_checkpoint_written_before_pruning_config_resumes(tmp_path, restore_callbacks):
    full = run(tmp_path / "full")
    checkpoint = tmp_path / "full" / "checkpoint-3"
    path = checkpoint / "trainer_state.json"
    trainer_state = json.loads(path.read_text())
    saved = trainer_state["stateful_callbacks"]["HeadPruningCallback"]
    assert saved["args"]["config"]["head_sparsity"] == 0.5 and saved["attributes"]["running_scores"]["steps"] == 1
    trainer_state["stateful_callbacks"]["HeadPruningCallback"] = old_format(saved)
    path.write_text(json.dumps(trainer_state))
    model = resize_to_checkpoint(make_model("bert").train(), checkpoint)
    resumed = run(tmp_path / "full", resume=str(checkpoint), model=model, restore_callbacks=restore_callbacks)
    assert layer_shapes(resumed.model) == layer_shapes(full.model)
    assert resumed.model.config.hf_prune == full.model.config.hf_prune  # kept_heads: the same units were chosen


def test_old_format_gate_mode_state_is_restored_unit_by_unit():
    model = make_model("bert")
    callback = HeadPruningCallback(head_sparsity=0.5, start_step=2, end_step=6, num_events=3, compact=False)
    head_masks = [[1, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]]
    neuron_masks = [[1] * 37 for _ in range(3)]
    head_scores = [[0.5, 0.0, 0.25, 1.0], [1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0]]
    neuron_scores = [[float(n) for n in range(37)] for _ in range(3)]
    old = {"args": {"head_sparsity": 0.5, "start_step": 2, "end_step": 6, "num_events": 3, "compact": False},
           "attributes": {"events_done": 1, "dense": {"heads": 12, "ffn": 111, "flops": 1}, "head_masks": head_masks,
                          "neuron_masks": neuron_masks, "head_scores": head_scores, "neuron_scores": neuron_scores,
                          "accumulated_steps": 2}}
    state = TrainerState(global_step=3, max_steps=8, stateful_callbacks={"HeadPruningCallback": old})
    callback.on_train_begin(ARGS, state, None, model=model)
    assert callback.events_done == 1 and callback.masks.heads == head_masks
    heads, neurons, steps = callback.running.reduced()
    assert [h.tolist() for h in heads] == head_scores and [n.tolist() for n in neurons] == neuron_scores
    assert steps == 2
    assert callback.state()["attributes"]["running_scores"] == {"heads": head_scores, "neurons": neuron_scores,
                                                                "steps": 2}


def test_only_the_main_process_continues_from_the_saved_scores(monkeypatch):
    saved = HeadPruningCallback(head_sparsity=0.5, start_step=4).state()
    saved["attributes"].update(events_done=0, running_scores={"heads": [[1.0] * 4] * 3, "neurons": [[1.0] * 37] * 3,
                                                              "steps": 2})
    monkeypatch.setattr(callback_module, "is_main_process", lambda: False)
    callback = HeadPruningCallback(head_sparsity=0.5, start_step=4)
    state = TrainerState(global_step=3, max_steps=8, stateful_callbacks={"HeadPruningCallback": saved})
    callback.on_train_begin(ARGS, state, None,
                            model=make_model("bert"))
    heads, _, steps = callback.running.reduced()
    assert steps == 0 and all(h.abs().sum() == 0 for h in heads)  # the main process's sums count once


def test_resuming_with_another_config_warns(caplog):
    saved = HeadPruningCallback(head_sparsity=0.5, start_step=4).state()
    callback = HeadPruningCallback(head_sparsity=0.25, start_step=4)
    state = TrainerState(global_step=3, max_steps=8, stateful_callbacks={"HeadPruningCallback": saved})
    with caplog.at_level(logging.WARNING, logger="hf_prune"):
        callback.on_train_begin(ARGS, state, None,
                                model=make_model("bert"))
    assert "head_sparsity" in caplog.text and callback.config.head_sparsity == 0.25


def test_gate_mode_checkpoint_resumed_in_one_process_is_cut_at_once():
    saved = HeadPruningCallback(head_sparsity=0.5, start_step=2, end_step=6, num_events=3, compact=False).state()
    head_masks = [[1, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 0]]
    saved["attributes"].update(events_done=1, head_masks=head_masks, neuron_masks=[[1] * 36 + [0]] * 3)
    model = make_model("bert")
    callback = HeadPruningCallback(head_sparsity=0.5, start_step=2, end_step=6, num_events=3)  # compact="auto"
    state = TrainerState(global_step=3, max_steps=8, stateful_callbacks={"HeadPruningCallback": saved})
    callback.on_train_begin(ARGS, state, None, model=model)
    assert [(s.heads, s.ffn) for s in layer_shapes(model)] == [(3, 36), (4, 36), (2, 36)]
    assert model.config.hf_prune["kept_heads"] == [[0, 2, 3], [0, 1, 2, 3], [1, 2]] and callback.masks is None




@pytest.mark.parametrize("current", [1, 3, 12, 37, 1536, 98304])
def test_a_target_that_rounds_to_every_unit_stays_inside_the_sparsity_range(current):
    from hf_prune import compute_importance, plan_from_sparsity
    from hf_prune.training.events import removal_fraction

    fraction = removal_fraction(0.999, 1.0, current, current)  # round(0.999 * current) == current for these sizes
    assert 0.0 <= fraction < 1.0
    if current == 12:  # and planning removes exactly every unit with it
        model = make_model("bert")
        scores = compute_importance(model, method="l2")
        total = sum(len(h) for h in scores.heads)
        plan = plan_from_sparsity(scores, head_sparsity=removal_fraction(0.999, 1.0, total, total))
        assert sum(map(len, plan.heads.values())) == total
    for count in range(min(current, 50)):  # below every unit, the count is exact
        assert round(removal_fraction(count / current, 1.0, current, current) * current) == count
