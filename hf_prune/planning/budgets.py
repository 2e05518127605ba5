"""Pruning plans: what to remove per layer, chosen from importance scores under a budget, saved as JSON.

A `PruningPlan` holds exactly what `prune_model` takes ({layer: [head indices]}, {layer: [neuron indices]},
[whole layers]) plus metadata (the widths it was made for, the budget, the scores' method, cost before/after).

Choosing units. Each layer offers a *ladder* of removal chunks, lowest-scoring first:
- plain attention and FFN: one unit per step, in ascending (score, index) order;
- grouped-query attention, ``gqa="per_group"``: one step removes the lowest remaining query head of
  *every* key/value group (so all groups keep the same count, as prune_model requires);
  ``gqa="groups"``: one step removes a whole key/value group (groups ranked by mean score).
Steps are merged into chunks so that every width the ladder passes through obeys the constraints:
at least ``min_heads`` / ``min_neurons`` kept, and the kept width a multiple of ``head_multiple`` /
``neuron_multiple`` (an untouched layer keeps its width, whatever it is).

Already-removed units. ``removed=`` (a `PruningPlan` in the scores' coordinates) lists units that are
gone already, e.g. gated off at dense shapes during training. Their scores are ignored: every layer's
ladder is built over its remaining units only, exactly as for a model physically pruned by ``removed``,
and ``removed`` is part of every returned plan. A layer that ``removed`` touches must already obey the
constraints (equal query heads per surviving key/value group, ``min_*``, ``*_multiple``).

Budgets. A sparsity s in [0, 1) removes N = round(s * units) units, counted over all units (already
removed ones included, and counting toward N), over all layers (``scope="global"``, one ranking of
chunks by mean score, ties by layer then index) or per layer (``scope="layer"``, N per layer). Chunks are
taken while they fit in N, so exactly N are removed whenever every chunk has one unit; with rounding or
GQA steps a layer stops at its first chunk that would overshoot, so at most N are removed (the shortfall
is smaller than the largest chunk). A budget beyond what the constraints allow, or smaller than
``removed``, raises ValueError.

Cost budgets. ``plan_from_flops`` (``flops_reduction`` in [0, 1), the fraction of the model's current layer
FLOPs to remove, or an absolute ``max_flops``; the deprecated ``flops_fraction`` is the fraction *kept* and
warns), ``plan_from_params`` (``params_reduction`` of ``count_parameters(model, layers_only=True)``, or
``max_params``, counted exactly, biases and norms included) and ``plan_from_latency`` (``target``, the fraction
in (0, 1] of a `LatencyTable`'s predicted seconds to keep, or ``max_seconds``) share one search over a cost
model (`hf_prune.planning.costs`: a layer's cost at given widths, what a head chunk, a neuron chunk or a whole
layer saves), with ``removed`` counted as gone. ``structure`` picks what may go:
- ``"width"`` (default), Kwon et al.'s mask search: heads and neurons are each ordered by the global chunk
  ranking; for every number of head chunks removed, the fewest neuron chunks that bring the cost under the
  target are added, and the pair removing the least total score wins (ties: fewer head chunks). The result is
  at most the target, within one neuron chunk of it (unless ``removed`` alone already goes below it);
- ``"depth"``: whole layers only, lowest ``scores.layers`` first (ties: index), the fewest that fit;
- ``"joint"``: for k = 0 .. layers - 1, the k lowest-scored layers go and the width search runs on the others
  for the remaining cost; the least total removed score (layers' scores + chunks' scores) wins, ties: fewer
  layers. A removed layer never appears in the plan's heads or neurons (its ``removed`` entries are dropped).
At least one layer always remains. Head, neuron and layer scores are compared directly, so use a
gradient-based method that puts them on the same loss scale (``compute_importance(..., method="fisher",
layer_method="fisher")``).

Uniform plans. ``uniform=True`` (every planner) makes every remaining layer keep the same number of query
heads, of key/value heads (with GQA: the same count per group) and of FFN neurons, which plain transformers
configs, vLLM, TGI and llama.cpp can express; each layer still keeps its own top-scored units. The search
runs over the widths every layer's ladder reaches (`hf_prune.planning.uniform`), so with uniform widths a
budget is met at the first uniform step at or past it:
- sparsity: the widest uniform width that removes at least N units (``scope="global"``: N over all units,
  the same count kept per layer; ``scope="layer"``: N per layer, which needs equal scored widths in every
  layer); never fewer than N, unlike the non-uniform rule;
- ``"width"``: for every uniform head width, the widest uniform FFN width that fits the target; of those
  pairs the least total removed score wins (ties: more heads kept);
- ``"depth"``: the fewest lowest-scored layers that fit and leave equal widths (widths are not changed);
- ``"joint"``: for every k layers removed, the uniform width search on the others; least total score wins.
A ``removed`` plan that left unequal widths is a starting point: every layer narrows to a common width it
reaches, never re-adding units; ValueError where no such width exists.
"""

from __future__ import annotations

import heapq
import math
import warnings
from bisect import bisect_left
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..architecture.counting import default_seq_len, position_flops, stack_lengths
from ..architecture.layouts import get_layout
from ..architecture.shapes import layer_shapes
from ..architecture.stacks import FlatView
from ..importance.scores import ImportanceScores
from ..surgery.depth import fixed_layers
from .costs import CostModel, FlopsCost, LatencyCost, ParamsCost, StackFlopsCost
from .plan import PruningPlan
from .uniform import check_reachable, is_uniform, search_cost, select_count

# ----------------------------------------------------------------------------- ladders of chunks


@dataclass(frozen=True)
class _Chunk:
    layer: int
    units: tuple[int, ...]
    score: float  # summed score of the units
    before: tuple[int, int]  # (width, kv heads) before the chunk
    after: tuple[int, int]  # (width, kv heads) after the chunk

    @property
    def key(self):
        return (self.score / len(self.units), self.layer, min(self.units))


def _ladder(layer: int, steps: list[list[int]], scores: list[float], width: int, kv_after, min_keep: int,
            multiple: int) -> list[_Chunk]:
    """Merge removal steps into chunks that end only at allowed widths (>= min_keep, multiple of `multiple`)."""
    chunks, pending, removed, start = [], [], 0, (width, kv_after(0))
    for k, step in enumerate(steps, start=1):
        pending.extend(step)
        removed += len(step)
        kept = width - removed
        if kept < min_keep:
            break
        if kept % multiple == 0:
            after = (kept, kv_after(k))
            chunks.append(_Chunk(layer, tuple(pending), sum(scores[u] for u in pending), start, after))
            pending, start = [], after
    return chunks


def _order(values: list[float], units: list[int]) -> list[int]:
    return sorted(units, key=lambda u: (values[u], u))


def _head_ladder(layer: int, scores: list[float], kv: int, min_keep: int, multiple: int, gqa: str) -> list[_Chunk]:
    heads = len(scores)
    if heads == 0:
        return []
    per_group = heads // kv if kv else heads
    if kv == heads or kv == 0:  # every head is its own group: any subset is allowed
        steps = [[h] for h in _order(scores, list(range(heads)))]
        return _ladder(layer, steps, scores, heads, lambda k: heads - k, min_keep, multiple)
    groups = [list(range(g * per_group, (g + 1) * per_group)) for g in range(kv)]  # query head h is in group h // per_group
    if gqa == "groups":
        mean = [sum(scores[h] for h in grp) / per_group for grp in groups]
        order = sorted(range(kv), key=lambda g: (mean[g], g))
        steps = [groups[g] for g in order]
        return _ladder(layer, steps, scores, heads, lambda k: kv - k, min_keep, multiple)
    ranked = [_order(scores, grp) for grp in groups]
    steps = [[ranked[g][j] for g in range(kv)] for j in range(per_group)]  # j-th lowest of every group
    return _ladder(layer, steps, scores, heads, lambda k: kv if k < per_group else 0, min_keep, multiple)


def _neuron_ladder(layer: int, scores: list[float], min_keep: int, multiple: int) -> list[_Chunk]:
    steps = [[n] for n in _order(scores, list(range(len(scores))))]
    return _ladder(layer, steps, scores, len(scores), lambda k: 0, min_keep, multiple)


def _greedy(ladders: list[list[_Chunk]], budget: float) -> list[_Chunk]:
    """Take chunks lowest mean score first (ties: layer, index) while they fit in `budget` units."""
    heap = [(ladder[0].key, i, 0) for i, ladder in enumerate(ladders) if ladder]
    heapq.heapify(heap)
    taken, total = [], 0
    while heap and total < budget:
        _, i, j = heapq.heappop(heap)
        chunk = ladders[i][j]
        if total + len(chunk.units) > budget:
            continue  # this layer stops here
        taken.append(chunk)
        total += len(chunk.units)
        if j + 1 < len(ladders[i]):
            heapq.heappush(heap, (ladders[i][j + 1].key, i, j + 1))
    return taken


def _as_request(chunks: list[_Chunk], already: list[list[int]]) -> dict[int, list[int]]:
    """{layer: sorted indices} of the chunks' units plus the already-removed units of every layer."""
    out: dict[int, list[int]] = {i: list(gone) for i, gone in enumerate(already) if gone}
    for c in chunks:
        out.setdefault(c.layer, []).extend(c.units)
    return {k: sorted(v) for k, v in sorted(out.items())}


# ----------------------------------------------------------------------------- already-removed units


@dataclass(frozen=True)
class _Present:
    """What is left of every layer once `removed` is gone: unit indices (into the scores) and key/value heads."""

    heads: list[list[int]]
    kv_heads: list[int]
    neurons: list[list[int]]
    gone_heads: list[list[int]]
    gone_neurons: list[list[int]]


def _removed_sets(removed: PruningPlan | None, scores: ImportanceScores) -> tuple[list[set], list[set]]:
    """Per layer, the head and neuron indices `removed` lists, checked against the scores' widths."""
    n = scores.num_layers
    if removed is None:
        return [set() for _ in range(n)], [set() for _ in range(n)]
    if not isinstance(removed, PruningPlan):
        raise ValueError(f"removed must be a PruningPlan (or None), got {type(removed).__name__}")
    shapes, recorded = _shapes_meta(scores), removed.metadata.get("shapes")
    for key in ("heads", "ffn"):
        if recorded is not None and list(recorded.get(key, shapes[key])) != shapes[key]:
            raise ValueError(f"removed was made for {key} widths {recorded[key]}, but the scores have {shapes[key]}: "
                             "removed must index the scores' current units")
    out = []
    for kind, request, widths in (("head", removed.heads, shapes["heads"]), ("neuron", removed.neurons, shapes["ffn"])):
        sets = [set() for _ in range(n)]
        for layer, indices in request.items():
            if not 0 <= layer < n:
                raise ValueError(f"removed lists layer {layer}, but the scores have {n} layers: "
                                 "removed must index the scores' current units")
            bad = [u for u in indices if not 0 <= u < widths[layer]]
            if bad:
                raise ValueError(f"removed lists {kind} {bad[0]} of layer {layer}, which has {widths[layer]} {kind}s: "
                                 "removed must index the scores' current units")
            sets[layer] = set(indices)
        out.append(sets)
    return out[0], out[1]


def _present_heads(layer: int, heads: int, kv: int, gone: set) -> tuple[list[int], int]:
    """Remaining query heads of one layer and their key/value heads; ValueError for unequal groups."""
    alive = [h for h in range(heads) if h not in gone]
    if kv in (0, heads):
        return alive, len(alive)
    per_group = heads // kv
    left = [sum(1 for h in alive if h // per_group == g) for g in range(kv)]
    if len({c for c in left if c}) > 1:
        raise ValueError(f"removed leaves layer {layer} with {left} query heads per key/value group: remove as many "
                         "from every group, or whole groups")
    return alive, sum(1 for c in left if c)


def _check_widths(layer: int, what: str, kept: int, min_keep: int, multiple: int, names: tuple[str, str]) -> None:
    if kept < min_keep or kept % multiple:
        raise ValueError(f"removed leaves layer {layer} with {kept} {what}, against {names[0]}={min_keep} / "
                         f"{names[1]}={multiple}: pass a removed plan made under the same constraints")


def _present(scores: ImportanceScores, removed: PruningPlan | None, min_heads: int, min_neurons: int,
             head_multiple: int, neuron_multiple: int) -> _Present:
    """Validate `removed` against the scores and the constraints; what every layer has left."""
    gone_heads, gone_neurons = _removed_sets(removed, scores)
    heads, kv_heads, neurons = [], [], []
    for i, (h, kv, f) in enumerate(zip(scores.heads, scores.kv_heads, scores.neurons)):
        alive, kv_left = _present_heads(i, len(h), kv, gone_heads[i])
        if gone_heads[i]:
            _check_widths(i, "query heads", len(alive), min_heads, head_multiple, ("min_heads", "head_multiple"))
        if gone_neurons[i]:
            _check_widths(i, "FFN neurons", len(f) - len(gone_neurons[i]), min_neurons, neuron_multiple,
                          ("min_neurons", "neuron_multiple"))
        heads.append(alive)
        kv_heads.append(kv_left)
        neurons.append([n for n in range(len(f)) if n not in gone_neurons[i]])
    return _Present(heads, kv_heads, neurons, [sorted(s) for s in gone_heads], [sorted(s) for s in gone_neurons])


def _starts(present: _Present) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Every layer's current (heads, kv heads) and (neurons, 0): where its ladders start."""
    return ([(len(h), kv) for h, kv in zip(present.heads, present.kv_heads)],
            [(len(f), 0) for f in present.neurons])


def _remap(chunks: list[_Chunk], alive: list[int]) -> list[_Chunk]:
    """Chunks built over the remaining units, with their units mapped back to indices into the scores."""
    return [replace(c, units=tuple(alive[u] for u in c.units)) for c in chunks]


# ----------------------------------------------------------------------------- budgets


def _check_common(scope: str, gqa: str, min_heads: int, min_neurons: int, head_multiple: int, neuron_multiple: int,
                  uniform: bool = False):
    if not isinstance(uniform, bool):
        raise ValueError(f"uniform must be True or False, got {uniform!r}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    if gqa not in ("per_group", "groups"):
        raise ValueError(f"gqa must be 'per_group' or 'groups', got {gqa!r}")
    if min_heads < 0 or min_neurons < 0:
        raise ValueError("min_heads and min_neurons must be >= 0")
    if head_multiple < 1 or neuron_multiple < 1:
        raise ValueError("head_multiple and neuron_multiple must be >= 1")


def _ladders(scores: ImportanceScores, present: _Present, min_heads, min_neurons, head_multiple, neuron_multiple, gqa):
    """Every layer's head and neuron ladders over its remaining units (indices into the scores)."""
    heads, neurons = [], []
    for i, (h, f) in enumerate(zip(scores.heads, scores.neurons)):
        h_values, f_values = [float(x) for x in h], [float(x) for x in f]
        alive_h, alive_f = present.heads[i], present.neurons[i]
        ladder = _head_ladder(i, [h_values[u] for u in alive_h], present.kv_heads[i], min_heads, head_multiple, gqa)
        heads.append(_remap(ladder, alive_h))
        ladder = _neuron_ladder(i, [f_values[u] for u in alive_f], min_neurons, neuron_multiple)
        neurons.append(_remap(ladder, alive_f))
    return heads, neurons


def _shapes_meta(scores: ImportanceScores) -> dict:
    return {
        "heads": [len(h) for h in scores.heads],
        "kv_heads": list(scores.kv_heads),
        "ffn": [len(n) for n in scores.neurons],
    }


def _count(sparsity: float, units: int) -> int:
    return math.floor(sparsity * units + 0.5)


def _select(ladders: list[list[_Chunk]], sizes: list[int], gone: list[int], sparsity: float, scope: str,
            what: str) -> list[_Chunk]:
    """Chunks that bring the removed units (already-removed `gone` included) to round(sparsity * units)."""
    if scope == "global":
        groups = [(ladders, _count(sparsity, sum(sizes)), sum(gone))]
    else:
        groups = [([ladder], _count(sparsity, size), n) for ladder, size, n in zip(ladders, sizes, gone)]
    taken = []
    for group, budget, already in groups:
        if already > budget:
            raise ValueError(f"removed already lists {already} {what}, more than the {budget} the sparsity removes: "
                             "raise the sparsity or pass fewer removed units")
        available = sum(len(c.units) for ladder in group for c in ladder)
        if budget - already > available:
            raise ValueError(f"cannot remove {budget} {what}: the constraints (minimum kept, multiples, GQA) allow "
                             f"at most {already + available}")
        taken.extend(_greedy(group, budget - already))
    return taken


def _select_uniform(head_ladders, neuron_ladders, present: _Present, shapes: dict, sparsities: tuple[float, float],
                    scope: str) -> tuple[list[_Chunk], list[_Chunk]]:
    """Head and neuron chunks of the widest uniform widths that reach the sparsities (module docstring)."""
    head_starts, neuron_starts = _starts(present)
    check_reachable(head_ladders, neuron_ladders, head_starts, neuron_starts)
    out = []
    for ladders, starts, sizes, gone, sparsity, what in (
        (head_ladders, head_starts, shapes["heads"], present.gone_heads, sparsities[0], "heads"),
        (neuron_ladders, neuron_starts, shapes["ffn"], present.gone_neurons, sparsities[1], "FFN neurons"),
    ):
        if scope == "layer" and len(set(sizes)) > 1:
            raise ValueError(f"uniform=True with scope='layer' removes a fraction of each layer's own width, but the "
                             f"layers have {what} widths {sorted(set(sizes))}: use scope='global'")
        count = _count(sparsity, sizes[0]) * len(sizes) if scope == "layer" else _count(sparsity, sum(sizes))
        out.append(select_count(ladders, starts, sum(map(len, gone)), count, what))
    return out[0], out[1]


def plan_from_sparsity(
    scores: ImportanceScores,
    head_sparsity: float = 0.0,
    ffn_sparsity: float = 0.0,
    *,
    scope: str = "global",
    min_heads: int = 0,
    min_neurons: int = 0,
    head_multiple: int = 1,
    neuron_multiple: int = 1,
    gqa: str = "per_group",
    removed: PruningPlan | None = None,
    uniform: bool = False,
) -> PruningPlan:
    """Remove the lowest-scoring fraction `head_sparsity` of heads and `ffn_sparsity` of FFN neurons (each in [0, 1)).

    scope: "global" ranks units across layers, "layer" removes the fraction from every layer.
    min_heads / min_neurons: kept per layer at least (0 allowed). head_multiple / neuron_multiple: kept
    widths rounded to multiples. gqa: "per_group" or "groups". removed: units already gone, in the scores'
    coordinates; they count toward the sparsity and are part of the plan (see the module docstring).
    uniform: every layer keeps the same number of heads (and key/value heads) and of neurons; the sparsity is
    then met at the first uniform width at or past it (module docstring).
    """
    if scores.stacks is not None:
        _stack_options(uniform=uniform, removed=removed)
        plan = plan_from_sparsity(scores.flatten(), head_sparsity, ffn_sparsity, scope=scope, min_heads=min_heads,
                                  min_neurons=min_neurons, head_multiple=head_multiple,
                                  neuron_multiple=neuron_multiple, gqa=gqa)
        return PruningPlan.from_flat(plan, scores.flat_keys())
    for name, value in (("head_sparsity", head_sparsity), ("ffn_sparsity", ffn_sparsity)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    _check_common(scope, gqa, min_heads, min_neurons, head_multiple, neuron_multiple, uniform)
    present = _present(scores, removed, min_heads, min_neurons, head_multiple, neuron_multiple)
    head_ladders, neuron_ladders = _ladders(scores, present, min_heads, min_neurons, head_multiple, neuron_multiple, gqa)
    shapes = _shapes_meta(scores)
    if uniform:
        heads, neurons = _select_uniform(head_ladders, neuron_ladders, present, shapes, (head_sparsity, ffn_sparsity),
                                         scope)
    else:
        heads = _select(head_ladders, shapes["heads"], [len(g) for g in present.gone_heads], head_sparsity, scope,
                        "heads")
        neurons = _select(neuron_ladders, shapes["ffn"], [len(g) for g in present.gone_neurons], ffn_sparsity, scope,
                          "FFN neurons")
    metadata = {
        "method": scores.method,
        "budget": {"kind": "sparsity", "head_sparsity": head_sparsity, "ffn_sparsity": ffn_sparsity, "scope": scope,
                   "min_heads": min_heads, "min_neurons": min_neurons, "head_multiple": head_multiple,
                   "neuron_multiple": neuron_multiple, "gqa": gqa, "uniform": uniform,
                   "removed": _removed_counts(present)},
        "shapes": shapes,
    }
    return PruningPlan(_as_request(heads, present.gone_heads), _as_request(neurons, present.gone_neurons), metadata)


def _removed_counts(present: _Present) -> dict[str, int]:
    return {"heads": sum(map(len, present.gone_heads)), "neurons": sum(map(len, present.gone_neurons))}


# ----------------------------------------------------------------------------- cost budgets (FLOPs, parameters, latency)

STRUCTURES = ("width", "depth", "joint")


def _check_structure(structure: str, scores: ImportanceScores) -> list[float] | None:
    """The layer scores a structure needs (None for "width"); ValueError for an unknown structure or missing scores."""
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {', '.join(map(repr, STRUCTURES))}, got {structure!r}")
    if structure == "width":
        return None
    if scores.layers is None:
        raise ValueError(f"structure={structure!r} needs one score per layer in scores.layers: compute them on the "
                         "same loss scale as the head/neuron scores, e.g. compute_importance(..., method='fisher', "
                         "layer_method='fisher')")
    values = [float(x) for x in torch.as_tensor(scores.layers, dtype=torch.float64).reshape(-1).tolist()]
    if len(values) != scores.num_layers:
        raise ValueError(f"scores.layers has {len(values)} scores, but the scores have {scores.num_layers} layers: "
                         "score the layers of the model you plan for (one score per layer, n=1)")
    return values


def _prefix(chunks: list[_Chunk], saved_by) -> tuple[list[float], list[float]]:
    """Cumulative (score removed, cost saved) after the first j chunks, j = 0..len(chunks)."""
    score, saved = [0.0], [0]
    for c in chunks:
        score.append(score[-1] + c.score)
        saved.append(saved[-1] + saved_by(c))
    return score, saved


def _joint_search(head_ladders, neuron_ladders, counter: CostModel, need: float):
    """(head chunks, neuron chunks, cost saved) saving at least `need` at the least total score, or None."""
    head_order = _greedy(head_ladders, math.inf)
    neuron_order = _greedy(neuron_ladders, math.inf)
    h_score, h_saved = _prefix(head_order, counter.head_saving)
    n_score, n_saved = _prefix(neuron_order, counter.neuron_saving)
    best = None
    for j in range(len(head_order) + 1):
        i = bisect_left(n_saved, need - h_saved[j])  # fewest neuron chunks that, with j head chunks, save enough
        if i > len(neuron_order):
            continue
        cost = (h_score[j] + n_score[i], j)
        if best is None or cost < best[0]:
            best = (cost, j, i)
    if best is None:
        return None
    _, j, i = best
    return head_order[:j], neuron_order[:i], h_saved[j] + n_saved[i]


@dataclass(frozen=True)
class _Found:
    layers: list[int]  # whole layers removed
    heads: list[_Chunk]
    neurons: list[_Chunk]
    saved: float  # cost saved by all of them, on top of `removed`


def _width_search(head_ladders, neuron_ladders, counter: CostModel, present: _Present, keep: list[int], need: float,
                  uniform: bool):
    """(head chunks, neuron chunks, cost saved) over the layers `keep`, uniform or not, or None."""
    if uniform:
        head_starts, neuron_starts = _starts(present)
        return search_cost(head_ladders, neuron_ladders, head_starts, neuron_starts, keep, counter, need)
    keep = set(keep)
    return _joint_search([ladder if i in keep else [] for i, ladder in enumerate(head_ladders)],
                         [ladder if i in keep else [] for i, ladder in enumerate(neuron_ladders)], counter, need)


def _search(structure: str, head_ladders, neuron_ladders, counter: CostModel, present: _Present,
            layer_scores: list[float] | None, need: float, uniform: bool = False) -> _Found | None:
    """Whole layers and/or head and neuron chunks that save at least `need` (rule in the module docstring)."""
    n = len(present.heads)
    if structure == "width":
        found = _width_search(head_ladders, neuron_ladders, counter, present, list(range(n)), need, uniform)
        return None if found is None else _Found([], *found)
    order = [i for i in sorted(range(n), key=lambda i: (layer_scores[i], i)) if math.isfinite(layer_scores[i])]
    best = None  # `order`: removable layers, least important first
    for k in range(min(n, len(order) + 1)):  # k layers removed; at least one remains
        drop = order[:k]
        dropped = sum(counter.layer_saving(i, len(present.heads[i]), present.kv_heads[i], len(present.neurons[i]))
                      for i in drop)
        gone = set(drop)
        keep = [i for i in range(n) if i not in gone]
        if structure == "depth":
            even = not uniform or all(is_uniform(starts, keep) for starts in _starts(present))
            if dropped >= need and even:
                return _Found(sorted(drop), [], [], dropped)
            continue
        found = _width_search(head_ladders, neuron_ladders, counter, present, keep, need - dropped, uniform)
        if found is None:
            continue
        heads, neurons, saved = found
        total = (sum(layer_scores[i] for i in drop) + sum(c.score for c in heads) + sum(c.score for c in neurons), k)
        if best is None or total < best[0]:  # ties: fewer layers (k ascending)
            best = (total, _Found(sorted(drop), heads, neurons, dropped + saved))
    return None if best is None else best[1]


def _check_model_widths(scores: ImportanceScores, model: nn.Module) -> None:
    current = layer_shapes(model)
    shapes = _shapes_meta(scores)
    if [s.heads for s in current] != shapes["heads"] or [s.ffn for s in current] != shapes["ffn"]:
        raise ValueError("the scores do not match the model's current widths: score the model you plan for")


def _dense_total(counter: CostModel, model: nn.Module) -> float:
    """Sum of the current layers' costs."""
    return sum(counter.layer(i, s.heads, s.kv_heads, s.ffn) for i, s in enumerate(layer_shapes(model)))


def _totals_left(counter: CostModel, present: _Present) -> float:
    return sum(counter.layer(i, len(h), kv, len(f))
               for i, (h, kv, f) in enumerate(zip(present.heads, present.kv_heads, present.neurons)))


def _relative_budget(relative: tuple[str, float | None], absolute: tuple[str, float | None], low: float,
                     high: float, closed: str) -> None:
    """ValueError unless exactly one of the two budgets is given and the relative one lies in its range."""
    given = [name for name, value in (relative, absolute) if value is not None]
    if len(given) != 1:
        raise ValueError(f"pass exactly one of {relative[0]} and {absolute[0]} (got {', '.join(given) or 'neither'})")
    name, value = relative
    if value is not None:
        inside = (low <= value < high) if closed == "low" else (low < value <= high)
        if not inside:
            bounds = f"[{low:g}, {high:g})" if closed == "low" else f"({low:g}, {high:g}]"
            raise ValueError(f"{name} must be in {bounds}, got {value}")


@dataclass(frozen=True)
class _Constraints:
    min_heads: int
    min_neurons: int
    head_multiple: int
    neuron_multiple: int
    gqa: str
    uniform: bool = False

    def as_dict(self) -> dict:
        return {"min_heads": self.min_heads, "min_neurons": self.min_neurons, "head_multiple": self.head_multiple,
                "neuron_multiple": self.neuron_multiple, "gqa": self.gqa, "uniform": self.uniform}


def _budget_plan(scores: ImportanceScores, counter: CostModel, present: _Present, c: _Constraints, structure: str,
                 layer_scores, dense: float, target: float, base: float, kind: str, budget: dict,
                 unit: str) -> PruningPlan:
    """Search `counter` for a plan with at most `target` (dense/target/after include the fixed `base`)."""
    left = base + _totals_left(counter, present)
    head_ladders, neuron_ladders = _ladders(scores, present, c.min_heads, c.min_neurons, c.head_multiple,
                                            c.neuron_multiple, c.gqa)
    if c.uniform and structure != "depth":
        check_reachable(head_ladders, neuron_ladders, *_starts(present))
    found = _search(structure, head_ladders, neuron_ladders, counter, present, layer_scores, left - target, c.uniform)
    if found is None:
        what = "the constraints (minimum kept, multiples, GQA)" + ("" if structure == "width" else
                                                                  " and keeping at least one layer")
        if c.uniform:
            what += " with uniform widths" + (" (depth removes whole layers only: the layers it keeps must already "
                                              "have equal widths; use structure='joint')" if structure == "depth" else "")
        raise ValueError(f"cannot reach {target:.4g} {unit} (dense {dense:.4g}) under {what}")
    gone = set(found.layers)
    already_heads = [[] if i in gone else g for i, g in enumerate(present.gone_heads)]
    already_neurons = [[] if i in gone else g for i, g in enumerate(present.gone_neurons)]
    metadata = {
        "method": scores.method,
        "budget": {"kind": kind, **budget, **c.as_dict(), "structure": structure, "removed": _removed_counts(present)},
        "shapes": _shapes_meta(scores),
        kind: {"before": dense, "target": target, "after": left - found.saved},
    }
    return PruningPlan(_as_request(found.heads, already_heads), _as_request(found.neurons, already_neurons), metadata,
                       layers=found.layers)


def _prepare(scores, model, structure, min_heads, min_neurons, head_multiple, neuron_multiple, gqa, removed,
             uniform=False):
    """Validated constraints, what `removed` leaves, and the layer scores the structure needs."""
    _check_common("global", gqa, min_heads, min_neurons, head_multiple, neuron_multiple, uniform)
    layer_scores = _check_structure(structure, scores)
    if layer_scores is not None:
        for i in fixed_layers(get_layout(model)):  # never removed: the search skips infinite scores
            layer_scores[i] = math.inf
    present = _present(scores, removed, min_heads, min_neurons, head_multiple, neuron_multiple)
    _check_model_widths(scores, model)
    return _Constraints(min_heads, min_neurons, head_multiple, neuron_multiple, gqa, uniform), present, layer_scores


def _flops_budget(flops_fraction: float | None, flops_reduction: float | None,
                  max_flops: int | None) -> tuple[float | None, float | None]:
    """(fraction of the FLOPs kept, fraction removed) of a relative budget, (None, None) for `max_flops`."""
    given = [n for n, v in (("flops_fraction", flops_fraction), ("flops_reduction", flops_reduction),
                            ("max_flops", max_flops)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"pass exactly one of flops_reduction and max_flops (got {', '.join(given) or 'neither'})")
    if flops_fraction is not None:
        if not 0.0 < flops_fraction <= 1.0:
            raise ValueError(f"flops_fraction (the fraction kept) must be in (0, 1], got {flops_fraction}: "
                             f"pass flops_reduction=1 - flops_fraction, in [0, 1), instead")
        return flops_fraction, 1.0 - flops_fraction
    if flops_reduction is not None:
        if not 0.0 <= flops_reduction < 1.0:
            raise ValueError(f"flops_reduction (the fraction of FLOPs removed) must be in [0, 1), got {flops_reduction}")
        return 1.0 - flops_reduction, flops_reduction
    return None, None


def plan_from_flops(
    scores: ImportanceScores,
    model: nn.Module,
    flops_fraction: float | None = None,
    *,
    flops_reduction: float | None = None,
    max_flops: int | None = None,
    seq_len: int | None = None,
    structure: str = "width",
    min_heads: int = 0,
    min_neurons: int = 0,
    head_multiple: int = 1,
    neuron_multiple: int = 1,
    gqa: str = "per_group",
    removed: PruningPlan | None = None,
    uniform: bool = False,
) -> PruningPlan:
    """Remove heads and neurons (and, with `structure`, whole layers) until the layers' FLOPs at `seq_len` fit.

    Budget, exactly one of: `flops_reduction`, the fraction in [0, 1) of the model's current layer FLOPs
    (hf_prune.count_flops) to remove; an absolute `max_flops` (one sequence of `seq_len` tokens);
    `flops_fraction` (deprecated: the fraction kept, use flops_reduction=1 - x). structure: "width" (heads and
    neurons), "depth" (whole layers, needs scores.layers) or "joint" (all three). removed: units already gone,
    in the scores' coordinates, counted as gone and part of the plan. uniform: every remaining layer keeps the
    same heads, key/value heads and FFN width (met at the first uniform step at or past the budget). Search
    rules in the module docstring. seq_len: the tokens the FLOPs are counted for; by default
    `hf_prune.architecture.counting.default_seq_len(model.config)` (128, or a vision transformer's patches + 1).
    """
    if scores.stacks is not None:
        _stack_options(uniform=uniform, removed=removed, structure=structure)
        flat = FlatView(model)
        plan = plan_from_flops(scores.flatten(), flat, flops_fraction, flops_reduction=flops_reduction,
                               max_flops=max_flops, seq_len=seq_len, min_heads=min_heads, min_neurons=min_neurons,
                               head_multiple=head_multiple, neuron_multiple=neuron_multiple, gqa=gqa)
        return PruningPlan.from_flat(plan, flat.keys)
    if seq_len is None and not isinstance(model, FlatView):
        seq_len = default_seq_len(model.config)
    if flops_fraction is not None:
        warnings.warn("plan_from_flops(flops_fraction=x) is deprecated (x is the fraction kept): pass "
                      "flops_reduction=1 - x, the fraction of FLOPs removed", FutureWarning, stacklevel=2)
    kept, reduction = _flops_budget(flops_fraction, flops_reduction, max_flops)
    c, present, layer_scores = _prepare(scores, model, structure, min_heads, min_neurons, head_multiple,
                                        neuron_multiple, gqa, removed, uniform)
    current = layer_shapes(model)
    if isinstance(model, FlatView):  # several stacks: each entry at its stack's width and tokens
        counter = StackFlopsCost.from_view(model, seq_len)
        seq_len = stack_lengths(model.views, seq_len)
    else:
        counter = FlopsCost(model.config.hidden_size, get_layout(model).gated, seq_len,
                            tuple(s.head_dim for s in current), position_flops(model))
    dense = _dense_total(counter, model)
    target = dense * kept if max_flops is None else max_flops
    plan = _budget_plan(scores, counter, present, c, structure, layer_scores, dense, target, 0, "flops",
                        {"flops_reduction": reduction, "max_flops": max_flops, "seq_len": seq_len}, "FLOPs")
    flops = plan.metadata["flops"]
    flops.update({"seq_len": seq_len, "before": int(dense), "target": float(target), "after": int(flops["after"])})
    return plan


def plan_from_params(
    scores: ImportanceScores,
    model: nn.Module,
    params_reduction: float | None = None,
    *,
    max_params: int | None = None,
    structure: str = "width",
    min_heads: int = 0,
    min_neurons: int = 0,
    head_multiple: int = 1,
    neuron_multiple: int = 1,
    gqa: str = "per_group",
    removed: PruningPlan | None = None,
    uniform: bool = False,
) -> PruningPlan:
    """Remove heads and neurons (and, with `structure`, whole layers) until the layers' parameters fit.

    Budget, exactly one of: `params_reduction`, the fraction in [0, 1) of the model's current layer parameters
    (hf_prune.count_parameters(model, layers_only=True)) to remove; an absolute `max_params`. Parameters are
    counted exactly from the model's modules (biases and norms included). Other arguments as `plan_from_flops`.
    """
    if scores.stacks is not None:
        _stack_options(uniform=uniform, removed=removed, structure=structure)
        flat = FlatView(model)
        plan = plan_from_params(scores.flatten(), flat, params_reduction, max_params=max_params,
                                min_heads=min_heads, min_neurons=min_neurons, head_multiple=head_multiple,
                                neuron_multiple=neuron_multiple, gqa=gqa)
        return PruningPlan.from_flat(plan, flat.keys)
    _relative_budget(("params_reduction", params_reduction), ("max_params", max_params), 0.0, 1.0, "low")
    c, present, layer_scores = _prepare(scores, model, structure, min_heads, min_neurons, head_multiple,
                                        neuron_multiple, gqa, removed, uniform)
    counter = ParamsCost.from_model(model)
    dense = _dense_total(counter, model)
    target = dense * (1.0 - params_reduction) if max_params is None else max_params
    plan = _budget_plan(scores, counter, present, c, structure, layer_scores, dense, target, 0, "params",
                        {"params_reduction": params_reduction, "max_params": max_params}, "parameters")
    params = plan.metadata["params"]
    params.update({"before": int(dense), "target": float(target), "after": int(params["after"])})
    return plan


def _check_table(table, model: nn.Module) -> None:
    """ValueError when the table records a model type or hidden size other than the model's."""
    meta = getattr(table, "metadata", None) or {}
    for key in ("model_type", "hidden_size"):
        have = getattr(model.config, key, None)
        if meta.get(key) is not None and have is not None and meta[key] != have:
            raise ValueError(f"the latency table was measured for {key}={meta[key]!r}, but the model has {have!r}: "
                             "measure a table for this model")


def plan_from_latency(
    scores: ImportanceScores,
    model: nn.Module,
    table,
    target: float | None = None,
    *,
    max_seconds: float | None = None,
    structure: str = "width",
    min_heads: int = 0,
    min_neurons: int = 0,
    head_multiple: int = 1,
    neuron_multiple: int = 1,
    gqa: str = "per_group",
    removed: PruningPlan | None = None,
    uniform: bool = False,
) -> PruningPlan:
    """Remove heads and neurons (and, with `structure`, whole layers) until the predicted latency fits.

    table: a `LatencyTable` (`layer_seconds`, `attention_cost(heads)`, `ffn_cost(ffn)`, `layer_cost`, `predict`)
    measured for this model. Budget, exactly one of: `target`, the fraction in (0, 1] of the model's current
    predicted latency to keep (0.6: 60% of it); an absolute `max_seconds`. Other arguments as `plan_from_flops`.
    """
    if scores.stacks is not None:
        raise ValueError("plan_from_latency does not support models with several layer stacks yet: use "
                         "plan_from_flops or plan_from_params")
    _relative_budget(("target", target), ("max_seconds", max_seconds), 0.0, 1.0, "high")
    _check_table(table, model)
    c, present, layer_scores = _prepare(scores, model, structure, min_heads, min_neurons, head_multiple,
                                        neuron_multiple, gqa, removed, uniform)
    counter = LatencyCost(table)
    current = layer_shapes(model)
    dense = float(table.predict([s.heads for s in current], [s.ffn for s in current]))
    base = dense - _dense_total(counter, model)  # what the table predicts outside the layers
    goal = dense * target if max_seconds is None else float(max_seconds)
    return _budget_plan(scores, counter, present, c, structure, layer_scores, dense, goal, base, "latency",
                        {"target": target, "max_seconds": max_seconds}, "seconds")


# ----------------------------------------------------------------------------- several layer stacks


def _stack_options(uniform: bool = False, removed=None, structure: str = "width") -> None:
    """ValueError for options the planners do not support on models with several layer stacks yet."""
    unsupported = [name for name, given in (("uniform=True", uniform), ("removed=", removed is not None),
                                            (f"structure={structure!r}", structure != "width")) if given]
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)} is not supported on models with several layer stacks yet: "
                         f"plan heads and neurons (structure='width'), then use drop_layers for whole layers")
