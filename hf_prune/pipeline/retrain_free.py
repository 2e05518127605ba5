"""`prune_retrain_free`: score, plan and recover a model without training, one layer's statistics at a time.

Passes: (optional) whole-layer removal by layer importance -> one scoring pass over the whole model (only
per-unit score vectors are kept) -> a global plan from the `PruningConfig`'s target -> layer-by-layer recovery
(`hf_prune.recovery.streaming.stream_recover`): capture layer 0's inputs, then for each layer collect only its
own statistics, re-select its units (config.reselect), solve, prune, and compute the next layer's inputs from
the dense layer (mode="dense": the one-pass `tune_masks` result) or from the pruned one (mode="sequential").

`one_pass=True` (dense mode) trades the bounded memory for time: every layer's statistics are collected by
hooks during the scoring pass, so the calibration data is run through the model once instead of twice, and
recovery is `apply_mask_tuning` on them (the same result). Models with several layer stacks always do this.

With `checkpoint_dir` the plan and every finished layer are saved atomically with a fingerprint of the model,
data and config; a rerun loads them instead of recomputing and ends with the model an uninterrupted run gives.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..architecture.layouts import get_stacks
from ..planning.plan import PruningPlan
from ..recovery.moments import MomentCollector
from ..recovery.streaming import StreamingResult, model_digest, stream_recover
from ..training.config import PruningConfig
from ..utils import batch_rows, check_batch, is_main_process, prepare_batch


def make_plan(scores, model: nn.Module, config: PruningConfig, latency_table=None) -> PruningPlan:
    """The PruningPlan of a latency budget (with its measured table), a parameter budget, a FLOPs budget (counted
    at flops_seq_len) or head/FFN sparsities; `structure` lets the budgets remove whole layers, `uniform` (in plan_constraints)
    keeps every remaining layer at the same widths."""
    from ..planning.budgets import plan_from_flops, plan_from_latency, plan_from_params, plan_from_sparsity

    if config.latency_reduction is not None:
        if latency_table is None:
            raise ValueError("latency_reduction plans with a measured latency table: pass latency_table= "
                             "(hf_prune.measure_latency_table(model, ...))")
        return plan_from_latency(scores, model, latency_table, 1.0 - config.latency_reduction,
                                 structure=config.structure, **config.plan_constraints())
    if config.params_reduction is not None:
        return plan_from_params(scores, model, config.params_reduction, structure=config.structure,
                                **config.plan_constraints())
    if config.flops_reduction is not None:
        return plan_from_flops(scores, model, flops_reduction=config.flops_reduction, seq_len=config.flops_seq_len,
                               structure=config.structure, **config.plan_constraints())
    return plan_from_sparsity(scores, config.head_sparsity, config.ffn_sparsity, scope=config.pruning_scope,
                              **config.plan_constraints())


def drop_weakest_layers(model: nn.Module, calibration, config: PruningConfig) -> list[int]:
    """Remove the lowest-scoring layers (layer importance on the calibration batches) up to the config's layer
    target; returns their original indices (empty without layer removal)."""
    from ..architecture.config_entry import layer_history
    from ..architecture.layouts import get_layers, get_layout
    from ..importance.layers import compute_layer_importance
    from ..surgery.depth import drop_layers, fixed_layers
    from ..training.events import dense_layer_count, layers_due, lowest_layers

    n = len(get_layers(model))
    due = layers_due(config, dense_layers=dense_layer_count(model), alive=n, fraction=1.0) \
        if config.removes_layers else 0
    if not due:
        return []
    scores = compute_layer_importance(model, calibration, method=config.layer_importance, label_free=config.label_free)
    drop = lowest_layers(scores, [i for i in range(n) if i not in fixed_layers(get_layout(model))], due)
    original, _ = layer_history(model.config, n)
    drop_layers(model, drop)
    return [original[i] for i in drop]


def original_layer_indices(model: nn.Module, layers: list[int]) -> list[int]:
    """Original indices (config.hf_prune) of the model's current layers `layers`."""
    from ..architecture.config_entry import layer_history
    from ..architecture.layouts import get_layers

    original, _ = layer_history(model.config, len(get_layers(model)))
    return [original[i] for i in layers]


@dataclass
class RetrainFreeResult:
    """What `prune_retrain_free` did: the plan applied (re-selected when asked), original indices of the layers
    removed, whether units were re-selected, the recovery used (None: just cut), seconds per stage, the
    layer-by-layer record (`streaming`: per-layer seconds, tokens, statistics bytes) and the scores."""

    plan: PruningPlan | None
    removed_layers: list[int] = field(default_factory=list)
    reselected: bool = False
    recovery: str | None = None
    seconds: dict = field(default_factory=dict)
    streaming: StreamingResult | None = None
    scores: object = None

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict() if self.plan is not None else None, "removed_layers": self.removed_layers,
                "reselected": self.reselected, "recovery": self.recovery, "seconds": self.seconds,
                "streaming": self.streaming.to_dict() if self.streaming is not None else None}


def _count_batches(batches: Iterable[Mapping[str, torch.Tensor]]) -> tuple[int, int]:
    """(number of batches, number of samples), without copying a tensor; a batch that is not a dict -> TypeError."""
    n = rows = 0
    for batch in batches:
        check_batch(batch)
        rows += batch_rows(batch)
        n += 1
    return n, rows


def _data_digest(batches: Iterable[Mapping[str, torch.Tensor]]) -> str:
    """sha256 of the batches' tensors (a checkpoint's fingerprint: resuming on other data starts over)."""
    h = hashlib.sha256()
    for batch in batches:
        batch = prepare_batch(batch, torch.device("cpu"))
        for key in sorted(batch):
            value = batch[key]
            if isinstance(value, torch.Tensor):
                h.update(f"{key}{tuple(value.shape)}{value.dtype}".encode())
                h.update(value.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_batches(batches) -> None:
    if batches is None or iter(batches) is batches:
        raise ValueError("calibration_batches are read several times (scoring, then recovery): pass a list or a "
                         "torch DataLoader, not None, a one-shot iterator or a generator")


def _plan_from_checkpoint(folder: Path, fingerprint: str) -> PruningPlan | None:
    path = folder / "plan.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("fingerprint") != fingerprint:
        raise ValueError(f"{folder} holds a run for another model, data or config: delete it or choose another "
                         "checkpoint_dir")
    return PruningPlan.from_dict(saved["plan"])


def prune_retrain_free(
    model: nn.Module,
    calibration_batches: Iterable[Mapping[str, torch.Tensor]],
    config: PruningConfig | None = None,
    *,
    mode: str = "dense",
    checkpoint_dir: str | os.PathLike | None = None,
    offload_dir: str | os.PathLike | None = None,
    stats_dtype: torch.dtype | None = None,
    latency_table=None,
    seed: int = 0,
    on_layer_end: Callable[[int, dict], None] | None = None,
    one_pass: bool = False,
) -> RetrainFreeResult:
    """Prune `model` in place without training, holding at most one layer's recovery statistics at a time.

    calibration_batches: a list or DataLoader of batch dicts (input_ids, attention_mask, labels for gradient
    scores), read once for scoring and once for recovery. config: what to remove and how (PruningConfig: target
    head/ffn sparsity, flops/latency reduction, layer removal, importance, mask_tuning, reconstruct, reselect,
    plan constraints, unstructured sparsity); default `PruningConfig(flops_reduction=0.5)`. mode: "dense" (each
    layer fitted on the dense model's hidden states; equals `tune_masks`) or "sequential" (on the pruned
    predecessors' outputs). checkpoint_dir: resumable (plan + finished layers). offload_dir: captured hidden
    states on disk. stats_dtype: statistics dtype (float64 on CPU, float32 on accelerators by default).
    latency_table: needed for config.latency_reduction (a LatencyTable, or a function of the model returning one,
    called after the layer removal). on_layer_end(index, record): after each layer. one_pass: collect every
    layer's recovery statistics during the scoring pass (one pass over the data instead of two; holds every
    layer's statistics at once, (F + 1)^2 float64 per output / down projection per layer, 0.24 GB for MiniLM;
    dense mode only, without checkpoint_dir / offload_dir / stats_dtype, which belong to the layer-by-layer path).

    ValueError for bad input (no batches, a config without target ...) before the model changes.
    """
    from ..importance.compute import compute_importance
    from ..unstructured.magnitude import prune_unstructured

    config = config if config is not None else PruningConfig(flops_reduction=0.5)
    if mode not in ("dense", "sequential"):
        raise ValueError(f"mode must be 'dense' or 'sequential', got {mode!r}")
    _check_batches(calibration_batches)
    if one_pass:
        given = [name for name, value in (("mode='sequential'", mode != "dense"), ("checkpoint_dir", checkpoint_dir),
                                          ("offload_dir", offload_dir), ("stats_dtype", stats_dtype)) if value]
        if given:
            raise ValueError(f"one_pass=True collects every layer's statistics with the scores, on dense inputs: "
                             f"{', '.join(given)} belong to the layer-by-layer path (one_pass=False)")
    if get_stacks(model) is not None:
        return _retrain_free_stacks(model, calibration_batches, config, mode=mode, checkpoint_dir=checkpoint_dir,
                                    offload_dir=offload_dir, seed=seed)
    if not config.structured and not config.unstructured_sparsity:
        raise ValueError("the config removes nothing: set a target (flops_reduction, params_reduction, head_sparsity / "
                         "ffn_sparsity, "
                         "latency_reduction, layer_sparsity ...)")
    if config.removes_layers:
        from ..training.events import dense_layer_count

        config.layers_to_remove(dense_layer_count(model))  # removing every layer -> ValueError
    seconds: dict = {}
    start = time.perf_counter()
    n_batches, n_rows = _count_batches(calibration_batches)
    if n_batches == 0:
        raise ValueError("the calibration dataloader is empty: retrain-free pruning needs at least one batch")
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    removed = drop_weakest_layers(model, calibration_batches, config)
    seconds["layer_removal_s"] = time.perf_counter() - start
    result = RetrainFreeResult(None, removed)
    if removed and not config.prunes_widths:  # depth only: no width scores, nothing to recover
        if config.unstructured_sparsity:
            prune_unstructured(model, config.unstructured_sparsity, scope=config.unstructured_scope)
        seconds["total_s"] = time.perf_counter() - start
        result.seconds = seconds
        return result
    plan = None
    fingerprint = None
    if folder is not None:
        identity = {"model": model_digest(model), "data": _data_digest(calibration_batches), "seed": seed,
                    "config": config.to_dict()}
        fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        plan = _plan_from_checkpoint(folder, fingerprint)
    t = time.perf_counter()
    if plan is None:
        if callable(latency_table):
            latency_table = latency_table(model)
        with (MomentCollector(model) if one_pass and config.mask_tuning else nullcontext()) as collector:
            scores = compute_importance(model, calibration_batches, method=config.importance,
                                        label_free=config.label_free, seed=seed,
                                        layer_method=config.layer_method if config.plans_layers else None)
        seconds["scoring_s"] = time.perf_counter() - t
        t = time.perf_counter()
        plan = make_plan(scores, model, config, latency_table)
        result.scores = scores
        if folder is not None and is_main_process():
            from ..serialization.atomic import atomic_write_json

            atomic_write_json(folder / "plan.json", {"fingerprint": fingerprint, "plan": plan.to_dict()})
    seconds["plan_s"] = time.perf_counter() - t
    result.removed_layers = sorted(removed + original_layer_indices(model, plan.layers))
    t = time.perf_counter()
    if config.mask_tuning and one_pass:
        result.plan = _recover_with_moments(model, plan, calibration_batches, config, collector, n_rows, seconds)
        result.reselected, result.recovery = config.reconstruct == "weights" and config.reselect, config.reconstruct
    elif config.mask_tuning:
        reselect = config.reconstruct == "weights" and config.reselect
        streaming = stream_recover(model, plan, calibration_batches, mode=mode, reconstruct=config.reconstruct,
                                   reselect=reselect, checkpoint_dir=folder, offload_dir=offload_dir,
                                   stats_dtype=stats_dtype, on_layer_end=on_layer_end)
        result.streaming, result.plan = streaming, streaming.plan
        result.reselected, result.recovery = reselect, config.reconstruct
        seconds.update({f"recovery_{k}": v for k, v in streaming.seconds.items()})
    else:
        plan.apply(model)
        result.plan = plan
    seconds["recovery_s"] = time.perf_counter() - t
    if config.unstructured_sparsity:
        prune_unstructured(model, config.unstructured_sparsity, scope=config.unstructured_scope)
    seconds["total_s"] = time.perf_counter() - start
    result.seconds = seconds
    return result


def _retrain_free_stacks(model: nn.Module, batches, config: PruningConfig, *, mode: str, checkpoint_dir, offload_dir,
                         seed: int) -> RetrainFreeResult:
    """`prune_retrain_free` on a model with several layer stacks (T5, BART, CLIP): one scoring pass over every
    stack, the global plan, then (optionally re-selected) recovery holding every layer's statistics at once."""
    from ..architecture.stacks import FlatView
    from ..importance.compute import compute_importance

    unsupported = [name for name, given in (
        ("mode='sequential'", mode != "dense"), ("checkpoint_dir", checkpoint_dir is not None),
        ("offload_dir", offload_dir is not None), ("layer removal", config.removes_layers or config.plans_layers),
        ("unstructured_sparsity", bool(config.unstructured_sparsity))) if given]
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)}: not supported by prune_retrain_free on models with several layer "
                         f"stacks yet (one pass, dense inputs, widths only)")
    if not config.structured:
        raise ValueError("the config removes nothing: set a target (flops_reduction, params_reduction, head_sparsity / "
                         "ffn_sparsity)")
    seconds, start = {}, time.perf_counter()
    _, n_rows = _count_batches(batches)
    with (MomentCollector(FlatView(model)) if config.mask_tuning else nullcontext()) as collector:
        scores = compute_importance(model, batches, method=config.importance, label_free=config.label_free, seed=seed)
    seconds["scoring_s"] = time.perf_counter() - start
    t = time.perf_counter()
    plan = make_plan(scores, model, config)
    seconds["plan_s"] = time.perf_counter() - t
    result = RetrainFreeResult(plan, scores=scores)
    t = time.perf_counter()
    if config.mask_tuning:
        result.plan = _recover_with_moments(model, plan, batches, config, collector, n_rows, seconds)
        result.reselected = config.reconstruct == "weights" and config.reselect
        result.recovery = config.reconstruct
    else:
        plan.apply(model)
    seconds["recovery_s"] = time.perf_counter() - t
    seconds["total_s"] = time.perf_counter() - start
    result.seconds = seconds
    return result


def _recover_with_moments(model: nn.Module, plan: PruningPlan, batches, config: PruningConfig,
                          collector: MomentCollector, n_rows: int, seconds: dict) -> PruningPlan:
    """Recovery holding every layer's statistics: those the scoring pass collected when it ran the model on every
    calibration sample exactly once (gradient and activation scores; `n_rows` samples in all, a batch possibly in
    pieces), else a pass of their own (weight norms, random). Re-selects when the config asks, prunes, solves;
    returns the plan applied."""
    from ..recovery.mask_tuning import apply_mask_tuning
    from ..recovery.moments import calibration_moments
    from ..recovery.reselect import reselect_units

    t = time.perf_counter()
    moments = collector.result() if collector.rows == n_rows else calibration_moments(model, batches)
    seconds["recovery_statistics_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if config.reconstruct == "weights" and config.reselect:
        plan = reselect_units(model, plan, moments)
    seconds["recovery_reselect_s"] = time.perf_counter() - t
    t = time.perf_counter()
    apply_mask_tuning(model, plan, moments, reconstruct=config.reconstruct)
    seconds["recovery_solve_s"] = time.perf_counter() - t
    return plan
