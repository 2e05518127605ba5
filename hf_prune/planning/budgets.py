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

Budgets. A sparsity s removes N = round(s * units) units, over all layers (``scope="global"``, one
ranking of chunks by mean score, ties by layer then index) or per layer (``scope="layer"``, N per
layer). Chunks are taken while they fit in N, so exactly N are removed whenever every chunk has one
unit; with rounding or GQA steps a layer stops at its first chunk that would overshoot, so at most N
are removed (the shortfall is smaller than the largest chunk). A budget beyond what the constraints
allow raises ValueError.

A FLOPs budget (``plan_from_flops``) searches heads and neurons jointly, as Kwon et al.'s mask search:
heads and neurons are each ordered by the global chunk ranking; for every number of head chunks removed,
the fewest neuron chunks that bring the FLOPs (hf_prune.counting.layer_flops at ``seq_len``) under the
target are added, and the pair removing the least total score wins (ties: fewer head chunks). The result
is at most the target, and within one neuron chunk of it. Head and neuron scores are compared directly,
so use a gradient-based method (fisher, gradient, taylor) that puts both on the same loss scale.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from dataclasses import dataclass

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


def _as_request(chunks: list[_Chunk]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for c in chunks:
        out.setdefault(c.layer, []).extend(c.units)
    return {k: sorted(v) for k, v in sorted(out.items())}


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


def _ladders(scores: ImportanceScores, min_heads, min_neurons, head_multiple, neuron_multiple, gqa):
    heads = [
        _head_ladder(i, [float(x) for x in s], kv, min_heads, head_multiple, gqa)
        for i, (s, kv) in enumerate(zip(scores.heads, scores.kv_heads))
    ]
    neurons = [_neuron_ladder(i, [float(x) for x in s], min_neurons, neuron_multiple) for i, s in enumerate(scores.neurons)]
    return heads, neurons


def _shapes_meta(scores: ImportanceScores) -> dict:
    return {
        "heads": [len(h) for h in scores.heads],
        "kv_heads": list(scores.kv_heads),
        "ffn": [len(n) for n in scores.neurons],
    }


def _count(sparsity: float, units: int) -> int:
    return math.floor(sparsity * units + 0.5)


def _select(ladders: list[list[_Chunk]], sizes: list[int], sparsity: float, scope: str, what: str) -> list[_Chunk]:
    if scope == "global":
        groups = [(ladders, _count(sparsity, sum(sizes)))]
    else:
        groups = [([ladder], _count(sparsity, size)) for ladder, size in zip(ladders, sizes)]
    taken = []
    for group, budget in groups:
        available = sum(len(c.units) for ladder in group for c in ladder)
        if budget > available:
            raise ValueError(
                f"cannot remove {budget} {what}: the constraints (minimum kept, multiples, GQA) allow at most {available}"
            )
        taken.extend(_greedy(group, budget))
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
) -> PruningPlan:
    """Remove the lowest-scoring fraction `head_sparsity` of heads and `ffn_sparsity` of FFN neurons.

    scope: "global" ranks units across layers, "layer" removes the fraction from every layer.
    min_heads / min_neurons: kept per layer at least (0 allowed). head_multiple / neuron_multiple: kept
    widths rounded to multiples. gqa: "per_group" or "groups" (see the module docstring).
    """
    for name, value in (("head_sparsity", head_sparsity), ("ffn_sparsity", ffn_sparsity)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    _check_common(scope, gqa, min_heads, min_neurons, head_multiple, neuron_multiple)
    head_ladders, neuron_ladders = _ladders(scores, min_heads, min_neurons, head_multiple, neuron_multiple, gqa)
    shapes = _shapes_meta(scores)
    heads = _select(head_ladders, shapes["heads"], head_sparsity, scope, "heads")
    neurons = _select(neuron_ladders, shapes["ffn"], ffn_sparsity, scope, "FFN neurons")
    metadata = {
        "method": scores.method,
        "budget": {"kind": "sparsity", "head_sparsity": head_sparsity, "ffn_sparsity": ffn_sparsity, "scope": scope,
                   "min_heads": min_heads, "min_neurons": min_neurons, "head_multiple": head_multiple,
                   "neuron_multiple": neuron_multiple, "gqa": gqa},
        "shapes": shapes,
    }
    return PruningPlan(_as_request(heads), _as_request(neurons), metadata)


def _prefix(chunks: list[_Chunk], saved_by) -> tuple[list[float], list[int]]:
    """Cumulative (score removed, FLOPs saved) after the first j chunks, j = 0..len(chunks)."""
    score, saved = [0.0], [0]
    for c in chunks:
        score.append(score[-1] + c.score)
        saved.append(saved[-1] + saved_by(c))
    return score, saved


def plan_from_flops(
    scores: ImportanceScores,
    model: nn.Module,
    flops_fraction: float | None = None,
    *,
    max_flops: int | None = None,
    seq_len: int = 128,
    min_heads: int = 0,
    min_neurons: int = 0,
    head_multiple: int = 1,
    neuron_multiple: int = 1,
    gqa: str = "per_group",
) -> PruningPlan:
    """Remove heads and neurons jointly until the layers' FLOPs at `seq_len` are at most the budget.

    Budget: `flops_fraction` of the model's current layer FLOPs (hf_prune.counting.count_flops), or an
    absolute `max_flops` (one sequence of `seq_len` tokens). Search rule in the module docstring.
    """
    if (flops_fraction is None) == (max_flops is None):
        raise ValueError("pass exactly one of flops_fraction and max_flops")
    if flops_fraction is not None and not 0.0 <= flops_fraction <= 1.0:
        raise ValueError(f"flops_fraction must be in [0, 1], got {flops_fraction}")
    _check_common("global", gqa, min_heads, min_neurons, head_multiple, neuron_multiple)
    layout = get_layout(model)
    current = layer_shapes(model)
    shapes = _shapes_meta(scores)
    if [s.heads for s in current] != shapes["heads"] or [s.ffn for s in current] != shapes["ffn"]:
        raise ValueError("the scores do not match the model's current widths: score the model you plan for")
    hidden, gated = model.config.hidden_size, layout.gate is not None
    head_dim = {i: s.head_dim for i, s in enumerate(current)}

    def head_saving(c: _Chunk) -> int:  # attention FLOPs before minus after the chunk (FFN term held at 0)
        before, after = c.before, c.after  # (query heads, kv heads)
        d = head_dim[c.layer]
        return layer_flops(hidden, *before, d, 0, seq_len, gated) - layer_flops(hidden, *after, d, 0, seq_len, gated)

    def neuron_saving(c: _Chunk) -> int:  # FFN FLOPs before minus after (no heads)
        return layer_flops(hidden, 0, 0, 1, c.before[0], seq_len, gated) - layer_flops(
            hidden, 0, 0, 1, c.after[0], seq_len, gated
        )

    dense = sum(layer_flops(hidden, s.heads, s.kv_heads, s.head_dim, s.ffn, seq_len, gated) for s in current)
    target = dense * flops_fraction if max_flops is None else max_flops
    need = dense - target  # FLOPs to save

    head_ladders, neuron_ladders = _ladders(scores, min_heads, min_neurons, head_multiple, neuron_multiple, gqa)
    head_order = _greedy(head_ladders, math.inf)
    neuron_order = _greedy(neuron_ladders, math.inf)
    h_score, h_saved = _prefix(head_order, head_saving)
    n_score, n_saved = _prefix(neuron_order, neuron_saving)

    best = None
    for j in range(len(head_order) + 1):
        i = bisect_left(n_saved, need - h_saved[j])
        if i > len(neuron_order):
            continue
        cost = (h_score[j] + n_score[i], j)
        if best is None or cost < best[0]:
            best = (cost, j, i)
    if best is None:
        raise ValueError(
            f"cannot reach {target:.4g} FLOPs (dense {dense:.4g}) under the constraints (minimum kept, multiples, GQA)"
        )
    _, j, i = best
    after = dense - h_saved[j] - n_saved[i]
    metadata = {
        "method": scores.method,
        "budget": {"kind": "flops", "flops_fraction": flops_fraction, "max_flops": max_flops, "seq_len": seq_len,
                   "min_heads": min_heads, "min_neurons": min_neurons, "head_multiple": head_multiple,
                   "neuron_multiple": neuron_multiple, "gqa": gqa},
        "shapes": shapes,
        "flops": {"seq_len": seq_len, "before": int(dense), "target": float(target), "after": int(after)},
    }
    return PruningPlan(_as_request(head_order[:j]), _as_request(neuron_order[:i]), metadata)
