"""HeadPruningCallback in real (tiny, CPU) Trainer runs: targets met exactly, reload, resume, optimizer, gates."""

import json

import pytest
import torch
from tiny_models import make_model
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_prune import layer_shapes, load_pruned
from hf_prune.training.callback import HeadPruningCallback, resize_to_checkpoint, schedule_fraction


class Toy(torch.utils.data.Dataset):
    """Random token sequences; the label is whether token 5 appears (learnable), or the tokens themselves (LM)."""

    def __init__(self, n=64, seq=12, causal=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, 97, (n, seq), generator=g)
        self.causal = causal

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        ids = self.ids[i]
        label = ids.clone() if self.causal else torch.tensor(int((ids < 20).any()))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": label}


def trainer_for(model, tmp_path, callback, max_steps=8, causal=False, trainer_class=Trainer, **kwargs):
    options = dict(output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=1e-3,
                   report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    args = TrainingArguments(**{**options, **kwargs})
    return trainer_class(model=model, args=args, train_dataset=Toy(causal=causal), callbacks=[callback])


def totals(model):
    shapes = layer_shapes(model)
    return sum(s.heads for s in shapes), sum(s.ffn for s in shapes)


@pytest.mark.parametrize("model_type,causal", [("bert", False), ("llama", True), ("gpt2", True)])
def test_iterative_pruning_meets_targets_and_reloads(model_type, causal, tmp_path):
    model = make_model(model_type).train()
    heads0, ffn0 = totals(model)
    callback = HeadPruningCallback(head_sparsity=0.5, ffn_sparsity=0.5, start_step=2, end_step=6, num_events=3)
    trainer = trainer_for(model, tmp_path / "run", callback, causal=causal)
    trainer.train()
    heads, ffn = totals(trainer.model)
    assert heads == heads0 - round(0.5 * heads0) and ffn == ffn0 - round(0.5 * ffn0)
    events = [r for r in trainer.state.log_history if "hf_prune/event" in r]
    assert [r["hf_prune/event"] for r in events] == [1, 2, 3]
    assert [r["step"] for r in events] == [2, 4, 6]
    assert events[0]["hf_prune/heads"] > events[-1]["hf_prune/heads"] == heads
    trainer.save_model(tmp_path / "final")
    loaded = load_pruned(tmp_path / "final")
    batch = Toy(causal=causal)[0]
    inputs = {k: v[None] for k, v in batch.items() if k != "labels"}
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, trainer.model(**inputs).logits, atol=0, rtol=0)


def test_flops_target_is_met(tmp_path):
    from hf_prune.architecture.counting import count_flops

    model = make_model("bert").train()
    dense = count_flops(model, 128)
    callback = HeadPruningCallback(flops_reduction=0.6, start_step=2, end_step=4, num_events=2)
    trainer = trainer_for(model, tmp_path, callback, max_steps=5)
    trainer.train()
    assert count_flops(trainer.model, 128) <= 0.4 * dense
    assert count_flops(trainer.model, 128) >= 0.35 * dense  # within a unit or so, not pruned to nothing


def test_kept_parameters_keep_training_after_compaction(tmp_path):
    model = make_model("bert").train()
    callback = HeadPruningCallback(head_sparsity=0.25, ffn_sparsity=0.25, start_step=2)
    snapshots = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots[state.global_step] = model.bert.encoder.layer[0].output.dense.weight.detach().clone()

    trainer = trainer_for(model, tmp_path, callback, max_steps=6)
    trainer.add_callback(Snapshot())
    trainer.train()
    assert snapshots[1].shape[1] == 37 and snapshots[2].shape[1] < 37  # (hidden, ffn): compacted at step 2
    assert snapshots[3].shape == snapshots[6].shape
    assert not torch.equal(snapshots[3], snapshots[6])  # the optimizer still updates the compacted weights
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    for p in trainer.model.parameters():
        for v in opt.state[p].values():
            assert v.dim() == 0 or v.shape == p.shape


def test_gate_mode_cuts_at_the_end_and_keeps_pruned_units_silent(tmp_path):
    model = make_model("bert").train()
    heads0, ffn0 = totals(model)
    callback = HeadPruningCallback(head_sparsity=0.5, ffn_sparsity=0.25, start_step=2, end_step=4, num_events=2,
                                   compact=False)
    trainer = trainer_for(model, tmp_path, callback, max_steps=6)
    trainer.train()
    heads, ffn = totals(trainer.model)
    assert heads == heads0 - round(0.5 * heads0) and ffn == ffn0 - round(0.25 * ffn0)
    assert trainer.model.config.hf_prune["heads"] == [s.heads for s in layer_shapes(trainer.model)]


def test_resumed_run_ends_with_the_same_shapes(tmp_path):
    def run(out, max_steps, resume=None, model=None):
        model = model or make_model("bert").train()
        callback = HeadPruningCallback(head_sparsity=0.5, ffn_sparsity=0.5, start_step=2, end_step=6, num_events=3)
        args = TrainingArguments(
            output_dir=str(out), max_steps=8, per_device_train_batch_size=8, learning_rate=1e-3, report_to=[],
            save_strategy="steps", save_steps=3, use_cpu=True, seed=0, disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=Toy(), callbacks=[callback])
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full", 8)
    checkpoint = tmp_path / "full" / "checkpoint-3"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["HeadPruningCallback"]["attributes"]["events_done"] == 1
    model = resize_to_checkpoint(make_model("bert").train(), checkpoint)
    resumed = run(tmp_path / "full", 8, resume=str(checkpoint), model=model)
    assert layer_shapes(resumed.model) == layer_shapes(full.model)
    assert resumed.model.config.hf_prune == full.model.config.hf_prune


@pytest.mark.parametrize("kwargs,message", [
    ({"head_sparsity": 1.0}, r"\[0, 1\)"),
    ({"ffn_sparsity": -0.1}, r"\[0, 1\)"),
    ({"flops_reduction": 1.5}, r"\[0, 1\)"),
    ({"importance": "magic"}, "importance must be one of"),
    ({"schedule": "exp"}, "schedule"),
    ({"num_events": 3}, "end_step"),
    ({"start_step": 5, "end_step": 2, "num_events": 2}, "pruning_end_step"),
    ({"compact": "sometimes"}, "compact must be one of"),
    ({"head_sparsity": 0.5, "importance": "activation"}, "calibration_dataloader"),  # was l2 norms, silently
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HeadPruningCallback(**kwargs)


def test_activation_scores_with_calibration_batches_are_accepted():
    batches = [{"input_ids": torch.randint(2, 50, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}]
    callback = HeadPruningCallback(head_sparsity=0.5, importance="activation", calibration_dataloader=batches)
    assert callback.config.importance == "activation"


def test_end_step_beyond_max_steps_and_unsupported_model_raise(tmp_path):
    with pytest.raises(ValueError, match="max_steps"):
        trainer_for(make_model("bert"), tmp_path, HeadPruningCallback(head_sparsity=0.5, start_step=1, end_step=20, num_events=2))
    from transformers import BloomConfig, BloomForCausalLM

    bloom = BloomForCausalLM(BloomConfig(hidden_size=16, n_layer=1, n_head=2, vocab_size=50))  # T5: tests/test_stacks_callback.py
    with pytest.raises(ValueError, match="bloom"):
        trainer_for(bloom, tmp_path, HeadPruningCallback(head_sparsity=0.5))


def test_schedules():
    assert schedule_fraction(3, 3, "cubic") == 1.0 == schedule_fraction(3, 3, "linear")
    assert schedule_fraction(1, 3, "cubic") > schedule_fraction(1, 3, "linear")


def test_distillation_trainer_prunes_and_learns_from_the_teacher(tmp_path):
    from hf_prune.training.distillation import DistillationTrainer, distillation_loss

    logits = torch.randn(4, 3)
    assert distillation_loss(logits, logits).abs() < 1e-6 < distillation_loss(logits, torch.randn(4, 3))
    model = make_model("bert").train()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = DistillationTrainer(model=model, args=args, train_dataset=Toy(), alpha=0.7,
                                  callbacks=[HeadPruningCallback(head_sparsity=0.5, start_step=2)])
    teacher_shapes = layer_shapes(trainer.teacher)
    trainer.train()
    assert layer_shapes(trainer.teacher) == teacher_shapes  # the dense teacher is never pruned
    assert totals(trainer.model)[0] == 6
    with pytest.raises(ValueError, match="alpha"):
        DistillationTrainer(model=make_model("bert"), args=args, alpha=2.0)


def test_distillation_at_alpha_zero_is_the_task_loss_without_a_teacher_forward(tmp_path):
    from hf_prune.training.distillation import DistillationTrainer

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    model = make_model("bert").eval()
    batch = {k: torch.stack([Toy()[i][k] for i in range(8)]) for k in ("input_ids", "attention_mask", "labels")}
    calls = []
    for alpha in (0.0, 0.5):
        trainer = DistillationTrainer(model=model, args=args, alpha=alpha, teacher=make_model("bert", seed=1).eval())
        trainer.teacher.register_forward_hook(lambda *_, alpha=alpha: calls.append(alpha))
        loss = trainer.compute_loss(model, dict(batch))
        if alpha == 0.0:
            assert torch.equal(loss, model(**batch).loss) and calls == []
        else:
            assert not torch.allclose(loss, model(**batch).loss) and calls == [0.5]
    no_teacher = DistillationTrainer(model=model, args=args, alpha=0.0)
    assert no_teacher.teacher is None  # no copy of the model is made when it would never run
    assert torch.equal(no_teacher.compute_loss(model, dict(batch)), model(**batch).loss)


def test_two_process_ddp_run_ends_with_identical_shapes(tmp_path):
    import os
    import subprocess
    import sys

    worker = os.path.join(os.path.dirname(__file__), "ddp_prune_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun picks a free rendezvous port itself (no race with other processes)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker,
           str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-6000:])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["gates_only"]  # DDP: gates while training, cut at the end
    assert ranks[0]["shapes"] == ranks[1]["shapes"]
    assert sum(h for h, _ in ranks[0]["shapes"]) == 6 and sum(f for _, f in ranks[0]["shapes"]) == 111 - 56
