"""HeadPruningCallback: interleave head, FFN-neuron and whole-layer pruning with fine-tuning in the transformers Trainer.

A thin TrainerCallback over plain functions and helpers of this subpackage:

- gates on every layer's output/down projections are attached when training begins; they carry the
  training gradients used for importance (summed on the device in `on_pre_optimizer_step`, no extra
  passes: `running_scores`) and hold pruned units at zero while the shapes cannot change (`gating`);
- at each pruning event (`schedule`) the next slice of units is planned from the scores (`events`); with
  layer removal, the lowest-scoring layers (layer importance on the calibration batches) go first and the
  widths are planned over the layers that remain;
- single process: the model is compacted physically at each event, and the optimizer's state is sliced
  with it (same Parameter objects; a removed layer's state is dropped), so fine-tuning runs faster;
- models with several layer stacks (T5, BART, CLIP): gates, scores, masks and plans are over the FlatView
  (`units`: every stack's layers and each decoder layer's cross-attention heads, ranked together); the cuts
  use "<stack>.<layer>" keys. Uniform plans, layer removal and unstructured sparsity are refused there;
- DDP / FSDP / DeepSpeed fix parameter shapes when they wrap the model: there the callback keeps gates
  (masks; a gated layer passes its input through) and cuts once training ends;
- event metrics reach the Trainer's loggers as `reporting` describes; the state travels in checkpoints
  (`checkpoint`).

When training ends `model` is physically pruned to exactly the targets and `model.config.hf_prune`
records the shapes, so `trainer.save_model` writes a checkpoint that `hf_prune.load_pruned` reloads.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..architecture.counting import default_seq_len
from ..architecture.gates import attach_gates
from ..architecture.layouts import get_layout
from ..architecture.shapes import layer_shapes
from ..importance.compute import compute_importance
from ..importance.estimators import DATA_METHODS
from ..importance.layers import LayerScores, compute_layer_importance
from ..importance.scores import ImportanceScores
from ..planning.plan import PruningPlan
from ..surgery.depth import fixed_layers
from ..unstructured.magnitude import apply_masks, prune_unstructured, zero_masks
from ..utils import distributed, is_main_process
from .checkpoint import callback_state, config_changes, resize_to_checkpoint, saved_config, saved_state
from .config import PruningConfig, config_from_keywords
from .events import dense_layer_count, dense_totals, event_record, layers_due, lowest_layers, plan_event
from .gating import GateMasks, attach_layer_gates
from .optimizers import inner_optimizer, loss_scale, unscale_parameter_gradients
from .reporting import EventLog
from .running_scores import RunningScores, gate_terms, legacy_state, taylor_terms
from .schedule import Schedule, schedule_fraction
from .units import check_stack_options, prune_units, unit_view

__all__ = ["HeadPruningCallback", "resize_to_checkpoint", "schedule_fraction"]

logger = logging.getLogger(__name__)


def callback_config(config, keywords: dict) -> PruningConfig:
    """The callback's config: `config` (a PruningConfig or a dict of its fields) with keyword overrides."""
    if isinstance(config, dict):
        config = PruningConfig.from_dict(config)
    elif config is not None and not isinstance(config, PruningConfig):
        raise ValueError(f"HeadPruningCallback's first argument is a PruningConfig, got {config!r}: pass options "
                         f"by keyword, e.g. HeadPruningCallback(head_sparsity=0.5)")
    return config_from_keywords(config, **keywords)


def compacting(compact: str, args, optimizer) -> bool:
    """Compact physically at each event (True), or hold pruned units with gates until training ends (False)?"""
    if compact == "never" or getattr(args, "world_size", 1) > 1 or distributed():
        return False
    inner = inner_optimizer(optimizer)
    if inner is not None and type(inner).__module__.split(".")[0] != "torch":
        if compact == "always":
            raise ValueError(f"cannot compact with optimizer {type(inner).__name__}: its state cannot be sliced "
                             f"safely. Use compact='auto' or 'never' (gates until training ends)")
        logger.warning("hf_prune: optimizer %s is not a torch optimizer; using gates until training ends",
                       type(inner).__name__)
        return False
    return True


class HeadPruningCallback(TrainerCallback, ExportableState):
    """Prune attention heads, FFN neurons and whole layers while the Trainer fine-tunes.

    `config` (a `PruningConfig`, or a dict of its fields) says what to prune and when; any of its fields,
    and the historical keyword names (start_step, end_step, num_events, schedule, scope, min_heads, seq_len,
    compact=True/False; see `CALLBACK_ALIASES`), may be given as keywords and override it. The callback
    uses pruning_start_step 0, one event and the model's default flops_seq_len (128, or a ViT's patches + 1) where
    the config leaves them None.
    `calibration_dataloader`: batches for methods that are not summed from the training steps (activation:
    ValueError without them; a gradient method before its first step), and for layer importance (needed when
    layers are removed);
    `seed`: for the `random` method.
    """

    def __init__(self, config: PruningConfig | dict | None = None, *, calibration_dataloader=None, seed: int = 0,
                 **keywords):
        self.config = callback_config(config, keywords)
        if self.config.latency_reduction is not None or self.config.plans_layers:
            raise ValueError("latency_reduction and structure='depth'/'joint' are planned retrain-free (command line "
                             "--retrain_free, or plan_from_latency / plan_from_flops(structure=...) before training); "
                             "the callback removes layers with layer_sparsity or num_layers_to_remove")
        if self.config.importance in DATA_METHODS and not self.config.from_training_gradients \
                and calibration_dataloader is None:
            raise ValueError(f"importance={self.config.importance!r} scores units on calibration batches, not on the "
                             f"training steps: pass HeadPruningCallback(..., calibration_dataloader=<batches with "
                             f"input_ids and attention_mask>), or choose a method that needs none (fisher, gradient, "
                             f"taylor from the training steps; l1, l2, random)")
        self.schedule = Schedule.from_config(self.config)  # an iterative schedule without an end -> ValueError
        self.seq_len = self.config.flops_seq_len  # None: the model's default (128, a ViT's patches + 1), at train begin
        self.calibration_dataloader, self.seed = calibration_dataloader, seed
        self.event_log = EventLog()  # event metrics waiting for the Trainer's next log call (see reporting)
        # state carried through checkpoints (ExportableState)
        self.events_done = 0
        self.dense: dict | None = None  # {"layers", "heads", "ffn", "flops"} of the dense model, FLOPs at seq_len
        self.masks: GateMasks | None = None  # gate mode only
        self.running = RunningScores()  # training-gradient scores, on the gates' devices
        self._saved_scores: dict | None = None  # scores from a checkpoint, loaded when the gates are attached
        self._stack: ExitStack | None = None
        self._gates = None
        self._compacting = False
        self._weight_masks = None  # unstructured: True = kept; rebuilt from the weights' zeros on resume

    # ------------------------------------------------------------------ ExportableState

    def state(self) -> dict:
        scores = self.running.to_state() if self.running.steps is not None else self._saved_scores
        gated = self.masks is not None
        attributes = {"events_done": self.events_done, "dense": self.dense,
                      "head_masks": [list(m) for m in self.masks.heads] if gated else None,
                      "neuron_masks": [list(m) for m in self.masks.neurons] if gated else None,
                      "layer_masks": list(self.masks.layers) if gated else None,
                      "running_scores": scores}
        return callback_state(self.config, self.seed, attributes)

    def _restore(self, state) -> None:
        """Resuming: take the schedule state from the checkpoint's trainer_state.json.

        The Trainer restores callbacks only with `restore_callback_states_from_checkpoint=True`; the saved
        state is in `state.stateful_callbacks` either way, so a resumed run always continues.
        """
        saved = saved_state(state, type(self).__name__)
        if saved is None or not state.global_step:
            return  # a fresh run: stateful_callbacks holds this callback's own state
        self._warn_if_config_changed(saved)
        attributes = saved.get("attributes") or {}
        self.events_done = attributes.get("events_done", 0)
        self.dense = attributes.get("dense")
        heads, neurons = attributes.get("head_masks"), attributes.get("neuron_masks")
        layers = attributes.get("layer_masks")  # absent in checkpoints written before layer removal
        self.masks = GateMasks(heads, neurons, layers) if heads is not None else None
        scores = attributes.get("running_scores") or legacy_state(attributes)
        # each process saved only its own share of the sums, and only the main one's was written: the others
        # start again from zero, so that the sums over processes count it once
        self._saved_scores = scores if is_main_process() else None
        self.running = RunningScores()

    def _warn_if_config_changed(self, saved: dict) -> None:
        try:
            changed = config_changes(saved_config(saved), self.config)
        except (TypeError, ValueError) as err:
            logger.warning("hf_prune: cannot read the pruning config saved in the checkpoint (%s)", err)
            return
        if changed:
            logger.warning("hf_prune: the checkpoint was written with other values of %s; resuming with the "
                           "current ones", ", ".join(changed))

    # ------------------------------------------------------------------ schedule

    def event_steps(self) -> list[int]:
        """Global steps at which the pruning events happen."""
        return self.schedule.steps()

    def _check(self, args, model) -> None:
        check_stack_options(self.config, model)  # several stacks: the options not supported there yet
        get_layout(unit_view(model))  # unsupported model -> ValueError naming its model_type
        self.schedule.check_fits(getattr(args, "max_steps", -1))
        if self.config.removes_layers:
            self.config.layers_to_remove(dense_layer_count(model))  # removing every layer -> ValueError
            if self.calibration_dataloader is None:
                raise ValueError(
                    "removing layers (layer_sparsity / num_layers_to_remove) scores them on calibration batches: pass "
                    "HeadPruningCallback(..., calibration_dataloader=<batches with input_ids, attention_mask and, for "
                    "layer_importance loss or fisher, labels>). (restore_callback_states_from_checkpoint=True rebuilds "
                    "the callback without it: leave that option off, the callback resumes from checkpoints by itself)")

    # ------------------------------------------------------------------ Trainer events

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self._check(args, model)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._check(args, model)
        self._restore(state)
        self.schedule.check_fits(state.max_steps)
        self._compacting = compacting(self.config.compact, args, optimizer)
        units = unit_view(model)
        if self.seq_len is None and units is model:  # several stacks: None counts each at its own default
            self.seq_len = default_seq_len(model.config)
        if self.dense is None:
            self.dense = dense_totals(units, self.seq_len)
        self.dense.setdefault("layers", dense_layer_count(units))  # checkpoints written before layer removal
        self._weight_masks = None  # resumed runs rebuild them from the weights' zeros at the first step
        if not self.config.structured:
            return
        if self._compacting and self.masks is not None:  # resumed from a gate-mode (multi-process) checkpoint
            self.masks.cut(model, inner_optimizer(optimizer))
            self.masks = None
        if not self._compacting and self.masks is None:
            self.masks = GateMasks.all_kept(units)
        self._attach(model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.config.unstructured_sparsity and self.events_done and self._weight_masks is None:
            self._weight_masks = zero_masks(model)  # resumed: an exact zero is a pruned weight

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.config.from_training_gradients and self.config.prunes_widths and self._gates is not None:
            self._accumulate(model, optimizer)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self._weight_masks:
            apply_masks(model, self._weight_masks)  # hold unstructured zeros through the update

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        steps = self.event_steps()
        ran = False
        while self.events_done < self.schedule.events and state.global_step >= steps[self.events_done]:
            self._event(state, model, optimizer, self.events_done + 1)
            ran = True
        if ran:
            control.should_log = True  # the Trainer logs this step, with the event's metrics (see reporting)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        # still queued: the Trainer has no PruningLogMixin and its integrations have already seen `logs`; the
        # console callbacks come after this one and print what is added to `logs`
        self.event_log.flush(state.log_history, logs)

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.events_done < self.schedule.events:  # training stopped early: reach the final targets now
            self._event(state, model, optimizer, self.schedule.events)
        self.event_log.flush(state.log_history)  # the Trainer logs nothing more
        self._detach()
        if self.masks is not None:
            self.masks.cut(model)
            self.masks = None

    # ------------------------------------------------------------------ gates and scores

    def _attach(self, model) -> None:
        self._detach()
        units = unit_view(model)
        self._stack = ExitStack()
        self._gates = self._stack.enter_context(attach_gates(units, requires_grad=True))
        if self.masks is not None:
            self.masks.load_into(self._gates)
            self._stack.enter_context(attach_layer_gates(units, self.masks))
        if self._saved_scores is not None:
            self.running.load(self._saved_scores, self._gates)
            self._saved_scores = None
        elif not self.running.fits(self._gates):
            self.running.reset(self._gates)

    def _detach(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack, self._gates = None, None

    def _accumulate(self, model, optimizer) -> None:
        """Add this step's training-gradient importance to the running scores (no extra passes, no host sync)."""
        if self.config.importance == "taylor":
            unscale_parameter_gradients(optimizer)
            heads, neurons = taylor_terms(unit_view(model))
        else:
            heads, neurons = gate_terms(self._gates, self.config.importance, loss_scale(optimizer))
        self.running.add(heads, neurons)
        self._gates.zero_grad()

    def _scores(self, model) -> ImportanceScores:
        """Scores of the current units, summed over processes."""
        if self.config.from_training_gradients:
            heads, neurons, steps = self.running.reduced()  # every process takes the same branch below
            if steps > 0:
                if self.config.importance == "taylor":
                    heads, neurons = [h.abs() for h in heads], [n.abs() for n in neurons]
                return ImportanceScores(heads=[h.float() for h in heads], neurons=[n.float() for n in neurons],
                                        kv_heads=[s.kv_heads for s in layer_shapes(unit_view(model))],
                                        method=self.config.importance)
        return self._computed_scores(model)

    def _computed_scores(self, model) -> ImportanceScores:
        """Scores computed now, on the calibration batches or the weights (gates detached meanwhile)."""
        method, data = self.config.importance, self.calibration_dataloader
        if method in DATA_METHODS and data is None:
            method = "l2"  # no gradients seen yet and no calibration data: fall back to weight norms
            logger.warning("hf_prune: no %s scores available at this event; using l2 weight norms",
                           self.config.importance)
        self._detach()
        units = unit_view(model)
        with ExitStack() as stack:
            if self.masks is not None:  # gated layers stay silent while the widths are scored
                stack.enter_context(attach_layer_gates(units, self.masks))
            scores = compute_importance(units, data, method=method, label_free=self.config.label_free,
                                        max_batches=self.config.calibration_batches, seed=self.seed)
        self._attach(model)
        return scores

    def _layer_scores(self, model) -> LayerScores:
        """Layer importance on the calibration batches, with the gates (and gated layers) in place."""
        return compute_layer_importance(model, self.calibration_dataloader, method=self.config.layer_importance,
                                        label_free=self.config.label_free,
                                        max_batches=self.config.calibration_batches)

    # ------------------------------------------------------------------ events

    def _plan(self, model, fraction: float) -> PruningPlan:
        """This event's plan: the layers it removes (current indices), and the widths of the layers that remain
        (over `unit_view(model)`: on several stacks, FlatView entries)."""
        units = unit_view(model)
        n = len(layer_shapes(units))
        alive = self.masks.alive() if self.masks is not None else list(range(n))
        drop = []
        due = layers_due(self.config, dense_layers=self.dense["layers"], alive=len(alive), fraction=fraction) \
            if self.config.removes_layers else 0
        if due:
            removable = [i for i in alive if i not in fixed_layers(get_layout(model))]
            drop = lowest_layers(self._layer_scores(model), removable, due)
        if not self.config.prunes_widths:
            return PruningPlan(layers=drop)
        keep = [i for i in alive if i not in drop]
        widths = plan_event(self._scores(model), units, self.config, dense=self.dense, fraction=fraction,
                            seq_len=self.seq_len, masks=self.masks, keep=keep)
        return PruningPlan(widths.heads, widths.neurons, widths.metadata, layers=drop)

    def _event(self, state, model, optimizer, event: int) -> None:
        fraction = self.schedule.fraction(event)
        if self.config.structured:
            plan = self._plan(model, fraction)
            if self._compacting:
                self._detach()
                prune_units(model, plan, optimizer=inner_optimizer(optimizer))
            else:
                self.masks.remove(plan)
            self.running = RunningScores()  # the next event ranks on fresh scores
            self._attach(model)
        if self.config.unstructured_sparsity:
            self._unstructured_event(model, fraction)
        self.events_done = event
        self.event_log.add(event_record(model, event=event, step=state.global_step, seq_len=self.seq_len,
                                        masks=self.masks, weight_sparsity=bool(self.config.unstructured_sparsity)))

    def _unstructured_event(self, model, fraction: float) -> None:
        """Zero the smallest projection weights up to this event's share of `unstructured_sparsity`."""
        if self._weight_masks:
            apply_masks(model, self._weight_masks)  # pruned weights are the smallest: they stay pruned
        prune_unstructured(model, self.config.unstructured_sparsity * fraction, scope=self.config.unstructured_scope)
        self._weight_masks = zero_masks(model)
