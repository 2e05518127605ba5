"""HeadPruningCallback: interleave head and FFN-neuron pruning with fine-tuning in the transformers Trainer.

A thin TrainerCallback over plain functions (gates, importance, plan, prune_model):

- gates on every layer's output/down projections are attached when training begins; they carry the
  training gradients used for importance (accumulated in `on_pre_optimizer_step`, no extra passes) and
  hold pruned units at zero while the shapes cannot change;
- at each pruning event the next slice of units (linear or cubic schedule, Zhu & Gupta 2017) is chosen
  from the accumulated scores with hf_prune.plan;
- single process: the model is compacted physically at each event, and the optimizer's state is sliced
  with it (same Parameter objects), so fine-tuning runs faster;
- DDP / FSDP / DeepSpeed fix parameter shapes when they wrap the model: there the callback keeps gates
  (masks) and cuts once training ends.

When training ends `model` is physically pruned to exactly the targets and `model.config.hf_prune`
records the shapes, so `trainer.save_model` writes a checkpoint that `hf_prune.load_pruned` reloads.
"""

from __future__ import annotations

import logging
import math
from contextlib import ExitStack

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..architecture.config_entry import ENTRY_KEY, dense_widths, read_config_entry, write_config_entry
from ..architecture.counting import count_flops, count_parameters, layer_flops
from ..architecture.gates import attach_gates
from ..architecture.layouts import get_layers, get_layout
from ..architecture.shapes import layer_shape, layer_shapes
from ..importance.compute import compute_importance
from ..importance.estimators import METHODS
from ..importance.scores import ImportanceScores
from ..importance.units import unit_sums
from ..planning.budgets import plan_from_flops, plan_from_sparsity
from ..surgery.width import prune_model, resize_to_shapes
from ..unstructured.magnitude import apply_masks, check_amount, prune_unstructured, sparsity_report, zero_masks

logger = logging.getLogger(__name__)

TRAINING_GRADIENT_METHODS = ("gradient", "fisher", "taylor")
SCHEDULES = ("linear", "cubic")
_MASKED = -1e30  # score given to units that are already gated off, so every plan removes them first


def schedule_fraction(event: int, num_events: int, schedule: str) -> float:
    """Share of the final sparsity reached after event `event` (1-based) of `num_events`."""
    t = event / num_events
    return t if schedule == "linear" else 1.0 - (1.0 - t) ** 3


def resize_to_checkpoint(model: nn.Module, checkpoint_dir) -> nn.Module:
    """Shrink `model` to the shapes recorded in a checkpoint's config.json, before the Trainer loads its weights.

    Call it before `trainer.train(resume_from_checkpoint=checkpoint_dir)` when the checkpoint was written
    after a compaction (the dense weights would not fit otherwise). The kept units' values do not matter:
    the Trainer overwrites them from the checkpoint.
    """
    from transformers import AutoConfig

    entry = read_config_entry(AutoConfig.from_pretrained(checkpoint_dir))
    if entry is not None:
        resize_to_shapes(model, entry["heads"], entry["kv_heads"], entry["ffn"])
        written = write_config_entry(model)
        if "kept_heads" in entry:
            written["kept_heads"] = entry["kept_heads"]
    return model


def _unwrap_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer -> torch optimizer


class HeadPruningCallback(TrainerCallback, ExportableState):
    """Prune attention heads and FFN neurons while the Trainer fine-tunes.

    Targets: `head_sparsity` and `ffn_sparsity` (fractions of the dense model's units removed), or
    `flops_reduction` (fraction of the dense layers' FLOPs at `seq_len` removed, heads and neurons jointly).
    Schedule: `num_events` pruning events from `start_step` to `end_step` (one-shot at `start_step` when
    `num_events=1`), sparsity growing `linear`ly or `cubic`ally. Importance: `gradient`, `fisher` or `taylor`
    from the training gradients themselves, or any hf_prune method computed at each event on
    `calibration_dataloader` (or, for `l1`, `l2`, `random`, on the weights). `compact`: "auto" compacts
    physically in single-process training with a torch optimizer and keeps gates otherwise.
    `unstructured_sparsity`: also (or only) zero that fraction of the attention/FFN projection weights by
    magnitude (`unstructured_scope` "global" or "layer"), growing on the same schedule; the zeros are held
    after every optimizer step, and recomputed from the weights' zeros when a run resumes.
    """

    def __init__(
        self,
        head_sparsity: float = 0.0,
        ffn_sparsity: float = 0.0,
        flops_reduction: float | None = None,
        importance: str = "fisher",
        start_step: int = 0,
        end_step: int | None = None,
        num_events: int = 1,
        schedule: str = "cubic",
        scope: str = "global",
        min_heads: int = 0,
        head_multiple: int = 1,
        neuron_multiple: int = 1,
        seq_len: int = 128,
        compact: str | bool = "auto",
        calibration_dataloader=None,
        calibration_batches: int = 8,
        label_free: bool = False,
        seed: int = 0,
        unstructured_sparsity: float = 0.0,
        unstructured_scope: str = "global",
    ):
        for name, value in (("head_sparsity", head_sparsity), ("ffn_sparsity", ffn_sparsity)):
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if flops_reduction is not None:
            if not 0.0 <= flops_reduction < 1.0:
                raise ValueError(f"flops_reduction must be in [0, 1), got {flops_reduction!r}")
            if head_sparsity or ffn_sparsity:
                raise ValueError("give either flops_reduction or head_sparsity/ffn_sparsity, not both")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if num_events < 1:
            raise ValueError(f"num_events must be >= 1, got {num_events}")
        if start_step < 0 or (end_step is not None and end_step < start_step):
            raise ValueError(f"need 0 <= start_step <= end_step, got start_step={start_step}, end_step={end_step}")
        if num_events > 1 and end_step is None:
            raise ValueError("an iterative schedule (num_events > 1) needs end_step")
        if importance not in METHODS:
            raise ValueError(f"unknown importance method {importance!r}; choose one of {', '.join(METHODS)}")
        if compact not in ("auto", True, False):
            raise ValueError(f"compact must be 'auto', True or False, got {compact!r}")
        self.head_sparsity, self.ffn_sparsity, self.flops_reduction = head_sparsity, ffn_sparsity, flops_reduction
        self.importance, self.start_step, self.end_step = importance, start_step, end_step
        self.num_events, self.schedule, self.scope = num_events, schedule, scope
        self.min_heads, self.head_multiple, self.neuron_multiple = min_heads, head_multiple, neuron_multiple
        self.seq_len, self.compact, self.label_free, self.seed = seq_len, compact, label_free, seed
        self.calibration_dataloader, self.calibration_batches = calibration_dataloader, calibration_batches
        check_amount(unstructured_sparsity, unstructured_scope)
        self.unstructured_sparsity, self.unstructured_scope = unstructured_sparsity, unstructured_scope
        self._weight_masks: dict[str, torch.Tensor] | None = None  # unstructured: True = kept; rebuilt from zeros
        # state carried through checkpoints (ExportableState)
        self.events_done = 0
        self.dense = None  # {"heads": total, "ffn": total, "flops": layer FLOPs at seq_len} of the dense model
        self.head_masks: list[list[int]] | None = None  # gate mode: 1 = kept, per layer, dense coordinates
        self.neuron_masks: list[list[int]] | None = None
        self.head_scores: list[list[float]] | None = None  # accumulated training-gradient scores
        self.neuron_scores: list[list[float]] | None = None
        self.accumulated_steps = 0  # optimizer steps in the running scores (the same on every process)
        self._stack: ExitStack | None = None
        self._gates = None
        self._compacting = False

    # ------------------------------------------------------------------ ExportableState

    def state(self) -> dict:
        args = {k: getattr(self, k) for k in (
            "head_sparsity", "ffn_sparsity", "flops_reduction", "importance", "start_step", "end_step", "num_events",
            "schedule", "scope", "min_heads", "head_multiple", "neuron_multiple", "seq_len", "compact",
            "calibration_batches", "label_free", "seed", "unstructured_sparsity", "unstructured_scope")}
        attributes = {k: getattr(self, k) for k in (
            "events_done", "dense", "head_masks", "neuron_masks", "head_scores", "neuron_scores",
            "accumulated_steps")}
        return {"args": args, "attributes": attributes}

    def _restore(self, state) -> None:
        """Take the schedule state from a resumed checkpoint's trainer_state.json.

        The Trainer restores callbacks only with `restore_callback_states_from_checkpoint=True`; the
        saved state is in `state.stateful_callbacks` either way, so a resumed run always continues.
        """
        saved = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
        saved = saved[0] if isinstance(saved, list) and saved else saved
        attributes = saved.get("attributes", {}) if isinstance(saved, dict) else {}
        if attributes.get("events_done", 0) > self.events_done:
            for key, value in attributes.items():
                setattr(self, key, value)

    # ------------------------------------------------------------------ schedule

    def event_steps(self) -> list[int]:
        """Global steps at which the pruning events happen."""
        if self.num_events == 1:
            return [self.start_step]
        span = self.end_step - self.start_step
        return [self.start_step + round(span * k / (self.num_events - 1)) for k in range(self.num_events)]

    def _check(self, args, model) -> None:
        get_layout(model)  # unsupported model -> ValueError naming its model_type
        max_steps = getattr(args, "max_steps", -1)
        last = self.event_steps()[-1]
        if max_steps and max_steps > 0 and last > max_steps:
            raise ValueError(f"the last pruning event is at step {last}, beyond max_steps={max_steps}: lower end_step")

    def _use_gates_only(self, args, optimizer) -> bool:
        distributed = getattr(args, "world_size", 1) > 1 or torch.distributed.is_initialized()
        if self.compact is False or distributed:
            return True
        inner = _unwrap_optimizer(optimizer)
        if inner is not None and type(inner).__module__.split(".")[0] != "torch":
            if self.compact is True:
                raise ValueError(
                    f"cannot compact with optimizer {type(inner).__name__}: its state cannot be sliced safely. "
                    f"Use compact='auto' or False (gates until training ends)"
                )
            logger.warning("hf_prune: optimizer %s is not a torch optimizer; using gates until training ends",
                           type(inner).__name__)
            return True
        return False

    # ------------------------------------------------------------------ Trainer events

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self._check(args, model)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._check(args, model)
        self._restore(state)
        if state.max_steps and self.event_steps()[-1] > state.max_steps:
            raise ValueError(
                f"the last pruning event is at step {self.event_steps()[-1]}, beyond max_steps={state.max_steps}"
            )
        self._compacting = not self._use_gates_only(args, optimizer)
        if self.dense is None:
            self.dense = self._dense_totals(model)
        self._weight_masks = None  # resumed runs rebuild them from the weights' zeros at the first step
        if not self._structured:
            return
        shapes = layer_shapes(model)
        if not self._compacting and self.head_masks is None:
            self.head_masks = [[1] * s.heads for s in shapes]
            self.neuron_masks = [[1] * s.ffn for s in shapes]
        self._attach(model)

    @property
    def _structured(self) -> bool:
        """Are heads or FFN neurons pruned (or only individual weights)?"""
        return bool(self.head_sparsity or self.ffn_sparsity or self.flops_reduction is not None)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.unstructured_sparsity and self.events_done and self._weight_masks is None:
            self._weight_masks = zero_masks(model)  # resumed: an exact zero is a pruned weight

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self._weight_masks:
            apply_masks(model, self._weight_masks)  # hold unstructured zeros through the update

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.importance not in TRAINING_GRADIENT_METHODS or self._gates is None:
            return
        self._accumulate(model)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        steps = self.event_steps()
        while self.events_done < self.num_events and state.global_step >= steps[self.events_done]:
            self._event(args, state, model, optimizer, self.events_done + 1)

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.events_done < self.num_events:  # training stopped early: reach the final targets now
            self._event(args, state, model, optimizer, self.num_events)
        self._detach()
        if not self._compacting and self.head_masks is not None:
            self._cut_masked(model, optimizer=None)

    # ------------------------------------------------------------------ gates and scores

    def _attach(self, model) -> None:
        self._detach()
        self._stack = ExitStack()
        self._gates = self._stack.enter_context(attach_gates(model, requires_grad=True))
        if self.head_masks is not None:
            with torch.no_grad():
                for gate, mask in zip(self._gates.heads + self._gates.neurons, self.head_masks + self.neuron_masks):
                    gate.copy_(torch.tensor(mask, dtype=gate.dtype))
        shapes = layer_shapes(model)
        if self.head_scores is None or [len(s) for s in self.head_scores] != [s.heads for s in shapes]:
            self.head_scores = [[0.0] * s.heads for s in shapes]
            self.neuron_scores = [[0.0] * s.ffn for s in shapes]
            self.accumulated_steps = 0

    def _detach(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack, self._gates = None, None

    @torch.no_grad()
    def _accumulate(self, model) -> None:
        """Add this step's training-gradient importance to the running scores (no extra passes)."""
        if self.importance == "taylor":
            layout = get_layout(model)
            for i, layer in enumerate(get_layers(model, layout)):
                heads, neurons = unit_sums(layer, layout, layer_shape(layer, layout),
                                            lambda name, p: p.detach().float() * (p.grad if p.grad is not None else 0))
                self.head_scores[i] = [a + float(b) for a, b in zip(self.head_scores[i], heads)]
                self.neuron_scores[i] = [a + float(b) for a, b in zip(self.neuron_scores[i], neurons)]
        else:
            square = self.importance == "fisher"
            for scores, grads in ((self.head_scores, self._gates.grads("heads")),
                                  (self.neuron_scores, self._gates.grads("neurons"))):
                for i, g in enumerate(grads):
                    g = g.double()
                    add = g**2 if square else g.abs()
                    scores[i] = [a + float(b) for a, b in zip(scores[i], add)]
        self._gates.zero_grad()
        self.accumulated_steps += 1

    def _scores(self, model) -> ImportanceScores:
        """Scores of the current units, reduced across processes; gated-off units score lowest."""
        shapes = layer_shapes(model)
        if self.importance in TRAINING_GRADIENT_METHODS and self.accumulated_steps > 0:
            heads = [torch.tensor(s, dtype=torch.float64) for s in self.head_scores]
            neurons = [torch.tensor(s, dtype=torch.float64) for s in self.neuron_scores]
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                for t in heads + neurons:
                    torch.distributed.all_reduce(t)
            if self.importance == "taylor":
                heads, neurons = [h.abs() for h in heads], [n.abs() for n in neurons]
            scores = ImportanceScores(heads=[h.float() for h in heads], neurons=[n.float() for n in neurons],
                                      kv_heads=[s.kv_heads for s in shapes], method=self.importance)
        else:
            self._detach()
            method = self.importance
            data = self.calibration_dataloader
            if method in TRAINING_GRADIENT_METHODS + ("activation",) and data is None:
                method = "l2"  # no gradients seen yet and no calibration data: fall back to weight norms
                logger.warning("hf_prune: no %s scores available at this event; using l2 weight norms", self.importance)
            scores = compute_importance(model, data, method=method, label_free=self.label_free,
                                        max_batches=self.calibration_batches, seed=self.seed)
            self._attach(model)
        if self.head_masks is not None:
            for score, mask in zip(scores.heads + scores.neurons, self.head_masks + self.neuron_masks):
                score[torch.tensor(mask, dtype=torch.bool).logical_not()] = _MASKED
        return scores

    # ------------------------------------------------------------------ events

    def _dense_totals(self, model) -> dict:
        entry = getattr(model.config, ENTRY_KEY, None)
        base = entry["base"] if isinstance(entry, dict) else dense_widths(model.config)
        shapes = layer_shapes(model)
        n, hidden, gated = len(shapes), model.config.hidden_size, get_layout(model).gate is not None
        flops = n * layer_flops(hidden, base["heads"], base["kv_heads"], shapes[0].head_dim, base["ffn"], self.seq_len,
                                gated)
        return {"heads": n * base["heads"], "ffn": n * base["ffn"], "flops": flops}

    def _kept(self, model) -> tuple[int, int]:
        if self.head_masks is not None:
            return sum(map(sum, self.head_masks)), sum(map(sum, self.neuron_masks))
        shapes = layer_shapes(model)
        return sum(s.heads for s in shapes), sum(s.ffn for s in shapes)

    def _plan(self, model, fraction: float):
        scores = self._scores(model)
        common = dict(min_heads=self.min_heads, head_multiple=self.head_multiple, neuron_multiple=self.neuron_multiple)
        if self.flops_reduction is not None:
            target = self.dense["flops"] * (1.0 - self.flops_reduction * fraction)
            return plan_from_flops(scores, model, max_flops=target, seq_len=self.seq_len, **common)
        units = layer_shapes(model)
        total_heads, total_ffn = sum(s.heads for s in units), sum(s.ffn for s in units)
        kept_heads, kept_ffn = self._kept(model)
        # remove, from the current units, enough to reach round(target * dense) removed in all
        remove_heads = math.floor(self.head_sparsity * fraction * self.dense["heads"] + 0.5) - (self.dense["heads"] - kept_heads)
        remove_ffn = math.floor(self.ffn_sparsity * fraction * self.dense["ffn"] + 0.5) - (self.dense["ffn"] - kept_ffn)
        # in gate mode the masked units are still "current" and are ranked first: count them in
        remove_heads += total_heads - kept_heads
        remove_ffn += total_ffn - kept_ffn
        return plan_from_sparsity(
            scores, head_sparsity=max(remove_heads, 0) / max(total_heads, 1),
            ffn_sparsity=max(remove_ffn, 0) / max(total_ffn, 1), scope=self.scope, **common,
        )

    def _event(self, args, state, model, optimizer, event: int) -> None:
        fraction = schedule_fraction(event, self.num_events, self.schedule)
        if self._structured and self._compacting:
            plan = self._plan(model, fraction)
            self._detach()
            prune_model(model, heads=plan.heads, neurons=plan.neurons, optimizer=_unwrap_optimizer(optimizer))
            self.head_scores = self.neuron_scores = None
            self.accumulated_steps = 0
            self._attach(model)
        elif self._structured:
            plan = self._plan(model, fraction)
            for i, heads in plan.heads.items():
                for h in heads:
                    self.head_masks[i][h] = 0
            for i, neurons in plan.neurons.items():
                for n in neurons:
                    self.neuron_masks[i][n] = 0
            self.head_scores = [[0.0] * len(m) for m in self.head_masks]
            self.neuron_scores = [[0.0] * len(m) for m in self.neuron_masks]
            self.accumulated_steps = 0
            self._attach(model)
        if self.unstructured_sparsity:
            self._unstructured_event(model, fraction)
        self.events_done = event
        kept_heads, kept_ffn = self._kept(model)
        record = {
            "step": state.global_step,
            "hf_prune/event": event,
            "hf_prune/heads": kept_heads,
            "hf_prune/ffn_neurons": kept_ffn,
            "hf_prune/flops": self._flops(model),
            "hf_prune/parameters": count_parameters(model),
        }
        if self.unstructured_sparsity:
            record["hf_prune/weight_sparsity"] = sparsity_report(model).sparsity
        state.log_history.append(record)
        logger.info("hf_prune event %d/%d at step %d: %s", event, self.num_events, state.global_step, record)

    def _unstructured_event(self, model, fraction: float) -> None:
        """Zero the smallest projection weights up to this event's share of `unstructured_sparsity`."""
        if self._weight_masks:
            apply_masks(model, self._weight_masks)  # pruned weights are the smallest: they stay pruned
        prune_unstructured(model, self.unstructured_sparsity * fraction, scope=self.unstructured_scope)
        self._weight_masks = zero_masks(model)

    def _flops(self, model) -> int:
        if self.head_masks is None:
            return count_flops(model, self.seq_len)
        hidden, gated = model.config.hidden_size, get_layout(model).gate is not None
        total = 0
        for s, hm, nm in zip(layer_shapes(model), self.head_masks, self.neuron_masks):
            kept = sum(hm)
            kv = kept if s.kv_heads == s.heads else (s.kv_heads * kept // s.heads if s.heads else 0)
            total += layer_flops(hidden, kept, kv, s.head_dim, sum(nm), self.seq_len, gated)
        return total

    def _cut_masked(self, model, optimizer) -> None:
        """Gate mode, end of training: remove every gated-off unit physically."""
        heads = {i: [h for h, keep in enumerate(m) if not keep] for i, m in enumerate(self.head_masks)}
        neurons = {i: [n for n, keep in enumerate(m) if not keep] for i, m in enumerate(self.neuron_masks)}
        prune_model(model, heads=heads, neurons=neurons, optimizer=optimizer)
        self.head_masks = self.neuron_masks = None
        write_config_entry(model)
