"""Pruning plans: what to remove per layer, chosen from importance scores under a budget, saved as JSON.

A `PruningPlan` holds exactly what `prune_model` takes ({layer: [head indices]}, {layer: [neuron indices]})
plus metadata (the widths it was made for, the budget, the scores' method, FLOPs before/after).

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

A FLOPs budget (``plan_from_flops``: ``flops_reduction`` in [0, 1), the fraction of the model's current
layer FLOPs to remove, or an absolute ``max_flops``; the deprecated ``flops_fraction`` is the fraction
*kept*, 1 - flops_reduction, and warns) searches heads and neurons jointly, as Kwon et al.'s
mask search: heads and neurons are each ordered by the global chunk ranking; for every number of head
chunks removed, the fewest neuron chunks that bring the FLOPs (hf_prune.architecture.counting.layer_flops at
``seq_len``, with ``removed`` counted as gone) under the target are added, and the pair removing the least
total score wins (ties: fewer head chunks). The result is at most the target, and within one neuron chunk
of it (unless ``removed`` alone already goes below it). Head and neuron scores are compared directly, so
use a gradient-based method (fisher, gradient, taylor) that puts both on the same loss scale.
"""

from __future__ import annotations

import heapq
import math
import warnings
from bisect import bisect_left
from dataclasses import dataclass, replace

from torch import nn

from ..architecture.counting import layer_flops
from ..architecture.layouts import get_layout
from ..architecture.shapes import layer_shapes
from ..importance.scores import ImportanceScores
from .plan import PruningPlan

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


def _remap(chunks: list[_Chunk], alive: list[int]) -> list[_Chunk]:
    """Chunks built over the remaining units, with their units mapped back to indices into the scores."""
    return [replace(c, units=tuple(alive[u] for u in c.units)) for c in chunks]


# ----------------------------------------------------------------------------- budgets


def _check_common(scope: str, gqa: str, min_heads: int, min_neurons: int, head_multiple: int, neuron_multiple: int):
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
) -> PruningPlan:
    """Remove the lowest-scoring fraction `head_sparsity` of heads and `ffn_sparsity` of FFN neurons (each in [0, 1)).

    scope: "global" ranks units across layers, "layer" removes the fraction from every layer.
    min_heads / min_neurons: kept per layer at least (0 allowed). head_multiple / neuron_multiple: kept
    widths rounded to multiples. gqa: "per_group" or "groups". removed: units already gone, in the scores'
    coordinates; they count toward the sparsity and are part of the plan (see the module docstring).
    """
    for name, value in (("head_sparsity", head_sparsity), ("ffn_sparsity", ffn_sparsity)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    _check_common(scope, gqa, min_heads, min_neurons, head_multiple, neuron_multiple)
    present = _present(scores, removed, min_heads, min_neurons, head_multiple, neuron_multiple)
    head_ladders, neuron_ladders = _ladders(scores, present, min_heads, min_neurons, head_multiple, neuron_multiple, gqa)
    shapes = _shapes_meta(scores)
    heads = _select(head_ladders, shapes["heads"], [len(g) for g in present.gone_heads], head_sparsity, scope, "heads")
    neurons = _select(neuron_ladders, shapes["ffn"], [len(g) for g in present.gone_neurons], ffn_sparsity, scope,
                      "FFN neurons")
    metadata = {
        "method": scores.method,
        "budget": {"kind": "sparsity", "head_sparsity": head_sparsity, "ffn_sparsity": ffn_sparsity, "scope": scope,
                   "min_heads": min_heads, "min_neurons": min_neurons, "head_multiple": head_multiple,
                   "neuron_multiple": neuron_multiple, "gqa": gqa, "removed": _removed_counts(present)},
        "shapes": shapes,
    }
    return PruningPlan(_as_request(heads, present.gone_heads), _as_request(neurons, present.gone_neurons), metadata)


def _removed_counts(present: _Present) -> dict[str, int]:
    return {"heads": sum(map(len, present.gone_heads)), "neurons": sum(map(len, present.gone_neurons))}


# ----------------------------------------------------------------------------- FLOPs budget


@dataclass(frozen=True)
class _FlopsCounter:
    """Layer FLOPs of one model at `seq_len` tokens, and the FLOPs a chunk's removal saves."""

    hidden: int
    gated: bool
    seq_len: int
    head_dim: tuple[int, ...]  # per layer

    def layer(self, i: int, heads: int, kv_heads: int, ffn: int) -> int:
        return layer_flops(self.hidden, heads, kv_heads, self.head_dim[i], ffn, self.seq_len, self.gated)

    def head_saving(self, c: _Chunk) -> int:
        """Attention FLOPs before minus after the chunk (the FFN term held at 0)."""
        return self.layer(c.layer, *c.before, 0) - self.layer(c.layer, *c.after, 0)

    def neuron_saving(self, c: _Chunk) -> int:
        """FFN FLOPs before minus after the chunk (no heads)."""
        return self.layer(c.layer, 0, 0, c.before[0]) - self.layer(c.layer, 0, 0, c.after[0])


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


def _prefix(chunks: list[_Chunk], saved_by) -> tuple[list[float], list[int]]:
    """Cumulative (score removed, FLOPs saved) after the first j chunks, j = 0..len(chunks)."""
    score, saved = [0.0], [0]
    for c in chunks:
        score.append(score[-1] + c.score)
        saved.append(saved[-1] + saved_by(c))
    return score, saved


def _joint_search(head_ladders, neuron_ladders, counter: _FlopsCounter, need: float):
    """(head chunks, neuron chunks) saving at least `need` FLOPs at the least total score, or None."""
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


def _flops_setup(scores: ImportanceScores, model: nn.Module, present: _Present, seq_len: int):
    """(counter, FLOPs of the current layers, FLOPs once `removed` is gone), after checking scores against model."""
    current = layer_shapes(model)
    shapes = _shapes_meta(scores)
    if [s.heads for s in current] != shapes["heads"] or [s.ffn for s in current] != shapes["ffn"]:
        raise ValueError("the scores do not match the model's current widths: score the model you plan for")
    counter = _FlopsCounter(model.config.hidden_size, get_layout(model).gate is not None, seq_len,
                            tuple(s.head_dim for s in current))
    dense = sum(counter.layer(i, s.heads, s.kv_heads, s.ffn) for i, s in enumerate(current))
    left = sum(counter.layer(i, len(h), kv, len(f))
               for i, (h, kv, f) in enumerate(zip(present.heads, present.kv_heads, present.neurons)))
    return counter, dense, left


def plan_from_flops(
    scores: ImportanceScores,
    model: nn.Module,
    flops_fraction: float | None = None,
    *,
    flops_reduction: float | None = None,
    max_flops: int | None = None,
    seq_len: int = 128,
    min_heads: int = 0,
    min_neurons: int = 0,
    head_multiple: int = 1,
    neuron_multiple: int = 1,
    gqa: str = "per_group",
    removed: PruningPlan | None = None,
) -> PruningPlan:
    """Remove heads and neurons jointly until the layers' FLOPs at `seq_len` are at most the budget.

    Budget, exactly one of: `flops_reduction`, the fraction in [0, 1) of the model's current layer FLOPs
    (hf_prune.count_flops) to remove; an absolute `max_flops` (one sequence of `seq_len` tokens);
    `flops_fraction` (deprecated: the fraction kept, use flops_reduction=1 - x). removed: units already gone,
    in the scores' coordinates, counted as gone and part of the plan. Search rule in the module docstring.
    """
    if flops_fraction is not None:
        warnings.warn("plan_from_flops(flops_fraction=x) is deprecated (x is the fraction kept): pass "
                      "flops_reduction=1 - x, the fraction of FLOPs removed", FutureWarning, stacklevel=2)
    kept, reduction = _flops_budget(flops_fraction, flops_reduction, max_flops)
    _check_common("global", gqa, min_heads, min_neurons, head_multiple, neuron_multiple)
    present = _present(scores, removed, min_heads, min_neurons, head_multiple, neuron_multiple)
    counter, dense, left = _flops_setup(scores, model, present, seq_len)
    target = dense * kept if max_flops is None else max_flops
    head_ladders, neuron_ladders = _ladders(scores, present, min_heads, min_neurons, head_multiple, neuron_multiple, gqa)
    found = _joint_search(head_ladders, neuron_ladders, counter, left - target)
    if found is None:
        raise ValueError(
            f"cannot reach {target:.4g} FLOPs (dense {dense:.4g}) under the constraints (minimum kept, multiples, GQA)"
        )
    heads, neurons, saved = found
    metadata = {
        "method": scores.method,
        "budget": {"kind": "flops", "flops_reduction": reduction, "max_flops": max_flops, "seq_len": seq_len,
                   "min_heads": min_heads, "min_neurons": min_neurons, "head_multiple": head_multiple,
                   "neuron_multiple": neuron_multiple, "gqa": gqa, "removed": _removed_counts(present)},
        "shapes": _shapes_meta(scores),
        "flops": {"seq_len": seq_len, "before": int(dense), "target": float(target), "after": int(left - saved)},
    }
    return PruningPlan(_as_request(heads, present.gone_heads), _as_request(neurons, present.gone_neurons), metadata)
