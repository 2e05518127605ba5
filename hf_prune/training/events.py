"""One pruning event's arithmetic: the budget it reaches, the plan that meets it, and what it logs.

Targets are fractions of the dense model (its widths and layer count from `config.hf_prune.base`, or the
config's plain keys), so a run that resumes, or starts from an already pruned model, still ends at the same
totals. Whole layers: at an event reaching fraction f of the schedule, round(f * target count) of the dense
layers are gone, the lowest-scoring ones first. Width targets (head/FFN sparsity, FLOPs reduction) apply to
the layers that remain: they are planned over those layers only, so a layer being removed is never part of
a width plan.

On a model with several layer stacks (T5, BART, CLIP) these functions take its FlatView (`unit_view`): every
stack's layers and each decoder layer's cross-attention entry are planned together, at their stacks' dense
widths; the callback does not remove whole layers there.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from ..architecture.config_entry import ENTRY_KEY, current_entry, dense_widths, layer_history
from ..architecture.counting import count_flops, count_parameters, layer_flops, position_flops
from ..architecture.layouts import get_layers, get_layout
from ..architecture.shapes import layer_shapes
from ..architecture.stacks import FlatView
from ..importance.layers import LayerScores
from ..importance.scores import ImportanceScores
from ..planning.budgets import plan_from_flops, plan_from_params, plan_from_sparsity
from ..planning.costs import ParamsCost, StackFlopsCost
from ..planning.plan import PruningPlan
from ..unstructured.magnitude import sparsity_report
from .config import PruningConfig
from .gating import GateMasks
from .units import unit_view


def dense_layer_count(model: nn.Module) -> int:
    """The dense model's layer count (`config.hf_prune.base.num_layers` after depth pruning, else the current one);
    of a FlatView, its entries."""
    if isinstance(model, FlatView):
        return len(model.keys)
    return layer_history(model.config, len(get_layers(model)))[1]


def dense_totals(model: nn.Module, seq_len: int | None) -> dict:
    """{"layers", "heads", "ffn": totals over layers, "flops": layer FLOPs at `seq_len`} of the dense model."""
    if isinstance(model, FlatView):
        return _dense_flat_totals(model, seq_len)
    entry = getattr(model.config, ENTRY_KEY, None)
    base = entry["base"] if isinstance(entry, dict) else dense_widths(model.config)
    shapes = layer_shapes(model)
    n, hidden, gated = dense_layer_count(model), model.config.hidden_size, get_layout(model).gated
    flops = n * layer_flops(hidden, base["heads"], base["kv_heads"], shapes[0].head_dim, base["ffn"], seq_len, gated,
                            position_flops(model))
    return {"layers": n, "heads": n * base["heads"], "ffn": n * base["ffn"], "flops": flops,
            "layer_params": n * dense_layer_params(model, base)}


def dense_layer_params(model: nn.Module, base: dict) -> int:
    """Parameters of one dense layer (the widest current layer's per-unit counts at the dense widths `base`)."""
    cost = ParamsCost.from_model(model)
    shapes = layer_shapes(model)
    widest = max(range(len(shapes)), key=lambda i: (shapes[i].heads > 0 and shapes[i].ffn > 0,
                                                    shapes[i].heads + shapes[i].ffn))
    return cost.layer(widest, base["heads"], base["kv_heads"], base["ffn"])


def _stack_dense_widths(view, cross: bool) -> tuple[int, int, int]:
    """(heads, kv heads, FFN neurons) of one stack's dense layers (or of their cross-attention), from the config
    entry's `base` when the model was pruned before, else from the stack's config."""
    fields = current_entry(view)
    base = fields.get("base") if isinstance(fields, dict) else None
    if cross:
        heads = (base or {}).get("cross_heads") or dense_widths(view.config, view.stack.cross)["heads"]
        return heads, heads, 0
    widths = base or dense_widths(view.config, view.hf_prune_layout)
    return widths["heads"], widths["kv_heads"], widths["ffn"]


def _dense_flat_totals(flat: FlatView, seq_len: int | None) -> dict:
    """`dense_totals` over a FlatView's entries (several stacks, cross-attention included): every present layer at
    its stack's dense widths; FLOPs at each stack's own width and tokens (`seq_len` None: each stack's default)."""
    flops, params = StackFlopsCost.from_view(flat, seq_len), ParamsCost.from_model(flat)
    totals = {"layers": len(flat.keys), "heads": 0, "ffn": 0, "flops": 0, "layer_params": 0}
    for i, (stack, _, cross) in enumerate(flat.keys):
        heads, kv, ffn = _stack_dense_widths(flat.views[stack], cross)
        totals["heads"] += heads
        totals["ffn"] += ffn
        totals["flops"] += flops.layer(i, heads, kv, ffn)
        totals["layer_params"] += params.layer(i, heads, kv, ffn)
    return totals


def layers_due(config: PruningConfig, *, dense_layers: int, alive: int, fraction: float) -> int:
    """How many of the `alive` layers must go now for round(fraction * target count) of the `dense_layers` to be
    removed in all (0 when none; at least one layer always remains)."""
    wanted = math.floor(config.layers_to_remove(dense_layers) * fraction + 0.5)
    return max(0, min(wanted - (dense_layers - alive), alive - 1))


def lowest_layers(layer_scores: LayerScores, alive: list[int], count: int) -> list[int]:
    """The `count` lowest-scoring layers among `alive` (current indices), sorted."""
    candidates = set(alive)
    return sorted([i for i in layer_scores.ranking() if i in candidates][:count])


@contextmanager
def layer_subset(model: nn.Module, keep: list[int]) -> Iterator[nn.Module]:
    """The model seen with only its layers `keep` (renumbered 0..), for planning: no forward pass inside.

    The planners read widths through the layer list (`layer_shapes`); nothing else changes, and the full
    list is back when the context exits.
    """
    layers = get_layers(model)
    modules = layers._modules
    layers._modules = OrderedDict((str(j), modules[str(i)]) for j, i in enumerate(keep))
    try:
        yield model
    finally:
        layers._modules = modules


def _scores_of(scores: ImportanceScores, keep: list[int]) -> ImportanceScores:
    return ImportanceScores(heads=[scores.heads[i] for i in keep], neurons=[scores.neurons[i] for i in keep],
                            kv_heads=[scores.kv_heads[i] for i in keep], method=scores.method,
                            num_batches=scores.num_batches)


def _plan_of(plan: PruningPlan, keep: list[int]) -> PruningPlan:
    """`plan`'s units in layers `keep`, renumbered 0.. (into the subset)."""
    where = {i: j for j, i in enumerate(keep)}
    return PruningPlan({where[i]: h for i, h in plan.heads.items() if i in where},
                       {where[i]: n for i, n in plan.neurons.items() if i in where})


def removal_fraction(target: float, fraction: float, dense: int, current: int) -> float:
    """Share of the `current` units (gated ones included) that must go for `target * fraction` of `dense` removed."""
    already = dense - current  # removed physically by earlier compactions, or before training
    count = math.floor(target * fraction * dense + 0.5) - already
    if current and count >= current:  # every unit: a fraction inside [0, 1) that still rounds to all of them
        return (current - 0.25) / current
    return max(count, 0) / max(current, 1)


def plan_event(scores: ImportanceScores, model: nn.Module, config: PruningConfig, *, dense: dict, fraction: float,
               seq_len: int, masks: GateMasks | None = None, keep: list[int] | None = None) -> PruningPlan:
    """The width plan that reaches `fraction` of the config's width targets over the layers `keep` (default:
    all), in the model's layer indices; in gate mode it includes the gated units of those layers.

    The targets are those of the dense widths of `len(keep)` layers; with layers left out, scores, gated units
    and the model are seen through the subset (`layer_subset`) and the plan is mapped back.
    """
    n = len(get_layers(model))
    keep = list(range(n)) if keep is None else list(keep)
    removed = masks.removed() if masks is not None else None  # gated units: already gone, counted toward the budget
    if keep != list(range(n)):
        scores, removed = _scores_of(scores, keep), _plan_of(removed, keep) if removed is not None else None
    share = len(keep) / dense.get("layers", n)  # of the dense totals, what the kept layers had
    constraints = config.plan_constraints()
    with layer_subset(model, keep) as view:
        if config.flops_reduction is not None:
            target = dense["flops"] * share * (1.0 - config.flops_reduction * fraction)
            plan = plan_from_flops(scores, view, max_flops=target, seq_len=seq_len, **constraints, removed=removed)
        elif config.params_reduction is not None:
            target = dense["layer_params"] * share * (1.0 - config.params_reduction * fraction)
            plan = plan_from_params(scores, view, max_params=round(target), **constraints, removed=removed)
        else:
            shapes = layer_shapes(view)
            heads = removal_fraction(config.head_sparsity, fraction, round(dense["heads"] * share),
                                     sum(s.heads for s in shapes))
            ffn = removal_fraction(config.ffn_sparsity, fraction, round(dense["ffn"] * share),
                                   sum(s.ffn for s in shapes))
            plan = plan_from_sparsity(scores, head_sparsity=heads, ffn_sparsity=ffn, scope=config.pruning_scope,
                                      **constraints, removed=removed)
    return PruningPlan({keep[j]: h for j, h in plan.heads.items()}, {keep[j]: u for j, u in plan.neurons.items()},
                       plan.metadata)


def event_record(model: nn.Module, *, event: int, step: int, seq_len: int | None, masks: GateMasks | None,
                 weight_sparsity: bool) -> dict:
    """What an event logs: kept layers, heads and FFN neurons and layer FLOPs (gated units and layers counted as
    cut), parameters. On several stacks: layers of every stack, heads with the cross-attention heads."""
    units = unit_view(model)
    if masks is not None:
        kept_heads, kept_ffn = masks.kept()
        flops, layers = masks.flops(units, seq_len), len(masks.alive())
    else:
        shapes = layer_shapes(units)
        kept_heads, kept_ffn = sum(s.heads for s in shapes), sum(s.ffn for s in shapes)
        flops, layers = count_flops(model, seq_len), len(shapes)
    if units is not model:  # FlatView: count layers, not their cross-attention entries
        layers = sum(not key.cross for key in units.keys)
    record = {"step": step, "hf_prune/event": event, "hf_prune/layers": layers, "hf_prune/heads": kept_heads,
              "hf_prune/ffn_neurons": kept_ffn, "hf_prune/flops": flops,
              "hf_prune/parameters": count_parameters(model)}
    if weight_sparsity:
        record["hf_prune/weight_sparsity"] = sparsity_report(model).sparsity
    return record
