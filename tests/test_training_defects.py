"""HeadPruningCallback defects, each pinned by a test: NCCL reduction, host syncs per step, fp16 loss scaling,
gated units in FLOPs plans, kept heads after the final cut, event metrics reaching the report_to integrations."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_callback import Toy, trainer_for
from tiny_models import make_model
from transformers import TrainerCallback, TrainerControl, TrainerState

import hf_prune.utils
from hf_prune import layer_shapes
from hf_prune.training import DistillationTrainer, PruningTrainer
from hf_prune.training.callback import HeadPruningCallback

ARGS = SimpleNamespace(world_size=1, max_steps=10)


def batch(seed: int = 0) -> dict:
    data = Toy(n=8, seed=seed)
    return {k: torch.stack([data[i][k] for i in range(len(data))]) for k in ("input_ids", "attention_mask", "labels")}


def begin(callback, model, optimizer=None) -> tuple[TrainerState, TrainerControl]:
    """What the Trainer does before the first step, without a Trainer."""
    state, control = TrainerState(max_steps=ARGS.max_steps), TrainerControl()
    callback.on_train_begin(ARGS, state, control, model=model, optimizer=optimizer)
    return state, control


def backward(model, seed: int = 0, factor: float = 1.0) -> None:
    model.zero_grad()
    (model(**batch(seed)).loss * factor).backward()


def step(callback, model, state, control, optimizer=None, seed: int = 0, factor: float = 1.0) -> None:
    """One optimizer step as the Trainer runs it (the optimizer itself does not move the weights here)."""
    backward(model, seed, factor)
    callback.on_pre_optimizer_step(ARGS, state, control, model=model, optimizer=optimizer)
    state.global_step += 1
    callback.on_step_end(ARGS, state, control, model=model, optimizer=optimizer)


# ----------------------------------------------------------------------------- a. NCCL


class Reduced(Exception):
    """Raised by the fake all_reduce once it has seen the tensor (a meta tensor cannot be copied back)."""


def test_scores_are_summed_on_the_process_groups_device(monkeypatch):
    model = make_model("bert").train()
    callback = HeadPruningCallback(head_sparsity=0.5, start_step=2)
    group_device = torch.device("meta")  # stands in for cuda:<local rank>, which this machine may not have
    seen = []

    def nccl_all_reduce(tensor, op=None, group=None, async_op=False):
        if tensor.device != group_device:
            raise RuntimeError(f"NCCL reduces tensors on the process's GPU only, got a {tensor.device} tensor")
        seen.append(tensor)
        raise Reduced

    for name, value in (("is_available", True), ("is_initialized", True), ("get_backend", "nccl"), ("get_rank", 0)):
        monkeypatch.setattr(torch.distributed, name, lambda *a, _value=value, **k: _value)
    monkeypatch.setattr(torch.distributed, "all_reduce", nccl_all_reduce)
    monkeypatch.setattr(hf_prune.utils, "reduction_device", lambda: group_device)
    state, control = begin(callback, model)
    step(callback, model, state, control)
    with pytest.raises(Reduced):
        step(callback, model, state, control)  # the event at step 2 sums the scores over the processes
    heads, ffn = 3 * 4, 3 * 37
    assert len(seen) == 1 and seen[0].numel() >= heads + ffn  # one flat call for every layer's scores


# ----------------------------------------------------------------------------- b. host syncs


def test_running_scores_are_summed_on_the_device_without_host_transfers(monkeypatch):
    model = make_model("bert").train()
    callback = HeadPruningCallback(head_sparsity=0.5, start_step=5)
    state, control = begin(callback, model)
    backward(model)
    calls = []
    for name in ("item", "tolist", "__float__", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    callback.on_pre_optimizer_step(ARGS, state, control, model=model)
    monkeypatch.undo()
    assert calls == []  # no host synchronisation in the per-step path
    gate = model.bert.encoder.layer[0].output.dense.weight
    assert all(isinstance(t, torch.Tensor) and t.device == gate.device
               for t in callback.running.heads + callback.running.neurons)
    assert int(callback.running.steps) == 1 and callback.running.heads[0].abs().sum() > 0


# ----------------------------------------------------------------------------- c. fp16 loss scaling


class FakeGradScaler:
    """torch.amp.GradScaler's interface as the Trainer's AcceleratedOptimizer exposes it (`optimizer.scaler`)."""

    def __init__(self, scale: float):
        self.scale, self.unscaled = scale, set()

    def is_enabled(self):
        return True

    def get_scale(self):
        return self.scale

    def unscale_(self, optimizer):
        if id(optimizer) in self.unscaled:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        self.unscaled.add(id(optimizer))
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.div_(self.scale)

    def update(self):
        self.unscaled.clear()


def scores_after(importance: str, steps: list[tuple[int, float]], scaler: FakeGradScaler | None):
    """Scores summed over (batch seed, loss factor) steps; the factor is the scaler's scale, or inf: an overflow."""
    model = make_model("bert")  # eval mode: no dropout, so the runs see the same gradients
    optimizer = SimpleNamespace(optimizer=torch.optim.SGD(model.parameters(), lr=0.0), scaler=scaler)
    callback = HeadPruningCallback(head_sparsity=0.5, importance=importance, start_step=9)
    state, control = begin(callback, model, optimizer)
    for seed, factor in steps:
        step(callback, model, state, control, optimizer, seed=seed, factor=factor)
        if scaler is not None:
            scaler.update()
    return callback._scores(model)


@pytest.mark.parametrize("importance", ["fisher", "gradient", "taylor"])
def test_fp16_loss_scale_is_removed_and_overflow_steps_are_skipped(importance):
    reference = scores_after(importance, [(0, 1.0), (1, 1.0)], scaler=None)
    overflow = (2, float("inf"))  # the scaled loss overflows: every gradient is inf or nan
    scaled = scores_after(importance, [(0, 1024.0), overflow, (1, 1024.0)], scaler=FakeGradScaler(1024.0))
    for got, want in zip(scaled.heads + scaled.neurons, reference.heads + reference.neurons):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-12)


# ----------------------------------------------------------------------------- d. gated units in FLOPs plans


def test_gate_mode_flops_events_after_the_first_follow_the_scores():
    model = make_model("bert").train()
    with torch.no_grad():  # heads far less important than neurons (l2 norms): every FLOPs plan takes heads first
        for layer in model.bert.encoder.layer:
            for linear in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value,
                           layer.attention.output.dense):
                linear.weight.mul_(1e-3)
    callback = HeadPruningCallback(flops_reduction=0.5, importance="l2", start_step=1, end_step=2, num_events=2,
                                   schedule="linear", compact=False)
    state, control = begin(callback, model)
    step(callback, model, state, control)
    step(callback, model, state, control)
    events = [(r["hf_prune/heads"], r["hf_prune/ffn_neurons"]) for r in callback.event_log.take()]
    assert events == [(8, 111), (4, 111)]  # the second event also removes the cheapest units: heads, no neurons


# ----------------------------------------------------------------------------- e. kept heads after the final cut


def test_gate_mode_final_cut_records_the_kept_heads(tmp_path):
    model = make_model("bert").train()
    callback = HeadPruningCallback(head_sparsity=0.5, start_step=2, end_step=4, num_events=2, compact=False)
    trainer = trainer_for(model, tmp_path, callback, max_steps=5)
    trainer.train()
    entry = trainer.model.config.hf_prune
    assert [len(k) for k in entry["kept_heads"]] == entry["heads"] == [s.heads for s in layer_shapes(trainer.model)]
    assert all(0 <= h < 4 for kept in entry["kept_heads"] for h in kept)


# ----------------------------------------------------------------------------- f. report_to integrations


class IntegrationRecorder(TrainerCallback):
    """Registered as report_to integrations are (before the user's callbacks); records what on_log receives."""

    logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        IntegrationRecorder.logs.append(dict(logs))


@pytest.mark.parametrize("trainer_class", [PruningTrainer, DistillationTrainer])
def test_report_to_integrations_receive_the_event_metrics(trainer_class, tmp_path, monkeypatch):
    import transformers.trainer

    monkeypatch.setattr(transformers.trainer, "get_reporting_integration_callbacks", lambda report_to: [
        IntegrationRecorder])
    IntegrationRecorder.logs = []
    callback = HeadPruningCallback(head_sparsity=0.5, start_step=2, end_step=4, num_events=2)
    trainer = trainer_for(make_model("bert").train(), tmp_path, callback, max_steps=5, logging_steps=100,
                          trainer_class=trainer_class)
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names.index("IntegrationRecorder") < names.index("HeadPruningCallback")
    trainer.train()
    seen = [r for r in IntegrationRecorder.logs if "hf_prune/event" in r]
    assert [r["hf_prune/event"] for r in seen] == [1, 2] and all("loss" in r for r in seen)
    history = [r for r in trainer.state.log_history if "hf_prune/event" in r]
    assert [(r["step"], r["hf_prune/heads"]) for r in history] == [(2, 7), (4, 6)]


def test_plain_trainer_keeps_events_in_the_log_history_and_the_console(tmp_path):
    printed = []

    class Console(TrainerCallback):  # the Trainer adds its printer after the user's callbacks
        def on_log(self, args, state, control, logs=None, **kwargs):
            printed.append(dict(logs))

    callback = HeadPruningCallback(head_sparsity=0.5, start_step=2)
    trainer = trainer_for(make_model("bert").train(), tmp_path, callback, max_steps=3, logging_steps=100)
    trainer.add_callback(Console())
    trainer.train()
    assert [r["hf_prune/event"] for r in trainer.state.log_history if "hf_prune/event" in r] == [1]
    assert [r["hf_prune/heads"] for r in printed if "hf_prune/event" in r] == [6]
