"""One pruning event's arithmetic: the budget it reaches, the plan that meets it, and what it logs.

Targets are fractions of the dense model (its widths from `config.hf_prune.base`, or the config's plain
keys), so a run that resumes, or starts from an already pruned model, still ends at the same totals.
"""

from __future__ import annotations

import math

from torch import nn

from ..architecture.config_entry import ENTRY_KEY, dense_widths
from ..architecture.counting import count_flops, count_parameters, layer_flops
from ..architecture.layouts import get_layout
from ..architecture.shapes import layer_shapes
from ..importance.scores import ImportanceScores
from ..planning.budgets import plan_from_flops, plan_from_sparsity
from ..planning.plan import PruningPlan
from ..unstructured.magnitude import sparsity_report
from .config import PruningConfig
from .gating import GateMasks


def dense_totals(model: nn.Module, seq_len: int) -> dict:
    """{"heads", "ffn": totals over layers, "flops": layer FLOPs at `seq_len`} of the dense model."""
    entry = getattr(model.config, ENTRY_KEY, None)
    base = entry["base"] if isinstance(entry, dict) else dense_widths(model.config)
    shapes = layer_shapes(model)
    n, hidden, gated = len(shapes), model.config.hidden_size, get_layout(model).gate is not None
    flops = n * layer_flops(hidden, base["heads"], base["kv_heads"], shapes[0].head_dim, base["ffn"], seq_len, gated)
    return {"heads": n * base["heads"], "ffn": n * base["ffn"], "flops": flops}


def removal_fraction(target: float, fraction: float, dense: int, current: int) -> float:
    """Share of the `current` units (gated ones included) that must go for `target * fraction` of `dense` removed."""
    already = dense - current  # removed physically by earlier compactions, or before training
    count = math.floor(target * fraction * dense + 0.5) - already
    if current and count >= current:  # every unit: a fraction inside [0, 1) that still rounds to all of them
        return (current - 0.25) / current
    return max(count, 0) / max(current, 1)


def plan_event(scores: ImportanceScores, model: nn.Module, config: PruningConfig, *, dense: dict, fraction: float,
               seq_len: int, masks: GateMasks | None = None) -> PruningPlan:
    """The plan that reaches `fraction` of the config's targets; in gate mode it includes the gated units."""
    removed = masks.removed() if masks is not None else None  # gated units: already gone, counted toward the budget
    constraints = config.plan_constraints()
    if config.flops_reduction is not None:
        target = dense["flops"] * (1.0 - config.flops_reduction * fraction)
        return plan_from_flops(scores, model, max_flops=target, seq_len=seq_len, **constraints, removed=removed)
    shapes = layer_shapes(model)
    heads = removal_fraction(config.head_sparsity, fraction, dense["heads"], sum(s.heads for s in shapes))
    ffn = removal_fraction(config.ffn_sparsity, fraction, dense["ffn"], sum(s.ffn for s in shapes))
    return plan_from_sparsity(scores, head_sparsity=heads, ffn_sparsity=ffn, scope=config.pruning_scope,
                              **constraints, removed=removed)


def event_record(model: nn.Module, *, event: int, step: int, seq_len: int, masks: GateMasks | None,
                 weight_sparsity: bool) -> dict:
    """What an event logs: kept heads and FFN neurons and layer FLOPs (gated units counted as cut), parameters."""
    if masks is not None:
        kept_heads, kept_ffn = masks.kept()
        flops = masks.flops(model, seq_len)
    else:
        shapes = layer_shapes(model)
        kept_heads, kept_ffn = sum(s.heads for s in shapes), sum(s.ffn for s in shapes)
        flops = count_flops(model, seq_len)
    record = {"step": step, "hf_prune/event": event, "hf_prune/heads": kept_heads, "hf_prune/ffn_neurons": kept_ffn,
              "hf_prune/flops": flops, "hf_prune/parameters": count_parameters(model)}
    if weight_sparsity:
        record["hf_prune/weight_sparsity"] = sparsity_report(model).sparsity
    return record
