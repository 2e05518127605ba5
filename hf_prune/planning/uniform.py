"""Uniform plans: every remaining layer keeps the same query heads, key/value heads and FFN neurons.

A layer's ladder (`hf_prune.planning.budgets`) passes through the widths the constraints allow it; a
*uniform width* is one that every remaining layer reaches: (query heads, key/value heads) for attention,
(neurons, 0) for the FFN. Each layer reaches it by taking its own ladder's chunks, lowest-scored first, so
it keeps its own top-scored units. A layer that `removed` left narrower cannot widen again (units are never
re-added), so the uniform widths are at most the narrowest layer's.

Search. Cost budgets: for every uniform head width, the widest uniform FFN width that (with it) saves enough,
i.e. the first uniform step at or past the budget; of those pairs the one removing the least total score
wins (ties: more heads kept). Sparsity budgets: the widest uniform width whose removed units (already
removed ones included) reach the count, i.e. the first uniform step at or past it.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass


@dataclass(frozen=True)
class UniformWidth:
    """One width every layer in `layers` reaches, and what reaching it takes there."""

    width: tuple[int, int]  # (kept units, kv heads); kv is 0 for FFN widths
    layers: tuple[int, ...]
    taken: tuple[int, ...]  # per layer of `layers`, how many of its ladder's chunks
    score: float  # summed score of those chunks
    saved: float  # summed cost they save
    removed: int  # units they remove

    def chunks(self, ladders) -> list:
        return [c for i, j in zip(self.layers, self.taken) for c in ladders[i][:j]]


def _reachable(ladder, start: tuple[int, int], saving) -> dict[tuple[int, int], tuple[int, float, float, int]]:
    """Every width the ladder reaches: (chunks taken, score, cost saved, units removed)."""
    out, score, saved, removed = {start: (0, 0.0, 0.0, 0)}, 0.0, 0.0, 0
    for j, chunk in enumerate(ladder, start=1):
        score, saved, removed = score + chunk.score, saved + saving(chunk), removed + len(chunk.units)
        out[chunk.after] = (j, score, saved, removed)
    return out


def uniform_widths(ladders, starts, layers, saving=lambda chunk: 0) -> list[UniformWidth]:
    """The widths every layer in `layers` reaches (widest first); `starts[i]` is layer i's current width."""
    layers = tuple(layers)
    reach = [_reachable(ladders[i], starts[i], saving) for i in layers]
    common = set.intersection(*(set(r) for r in reach)) if reach else set()
    out = []
    for width in sorted(common, reverse=True):
        steps = [r[width] for r in reach]
        out.append(UniformWidth(width, layers, tuple(s[0] for s in steps), sum(s[1] for s in steps),
                                sum(s[2] for s in steps), sum(s[3] for s in steps)))
    return out


def is_uniform(starts, layers) -> bool:
    return len({starts[i] for i in layers}) <= 1


def check_reachable(head_ladders, neuron_ladders, head_starts, neuron_starts) -> None:
    """ValueError when no uniform width exists over all layers (what `removed` left cannot be evened out)."""
    layers = range(len(head_starts))
    for what, ladders, starts in (("attention", head_ladders, head_starts), ("FFN", neuron_ladders, neuron_starts)):
        if not uniform_widths(ladders, starts, layers):
            widths = sorted({starts[i] for i in layers})
            raise ValueError(f"uniform=True: removed leaves {what} widths {widths} that no common width reachable under "
                             "the constraints (min kept, multiples, GQA) can even out without re-adding units: pass "
                             "uniform=False, or a removed plan that leaves equal widths")


def search_cost(head_ladders, neuron_ladders, head_starts, neuron_starts, layers, counter, need: float):
    """(head chunks, neuron chunks, cost saved) of the uniform pair that saves at least `need` at the least
    total score (rule in the module docstring), or None."""
    heads = uniform_widths(head_ladders, head_starts, layers, counter.head_saving)
    neurons = uniform_widths(neuron_ladders, neuron_starts, layers, counter.neuron_saving)
    saved = [n.saved for n in neurons]  # non-decreasing: narrower saves more
    best = None
    for h in heads:  # widest first, so ties keep more heads
        i = bisect_left(saved, need - h.saved)
        if i < len(neurons) and (best is None or h.score + neurons[i].score < best[0]):
            best = (h.score + neurons[i].score, h, neurons[i])
    if best is None:
        return None
    _, h, n = best
    return h.chunks(head_ladders), n.chunks(neuron_ladders), h.saved + n.saved


def select_count(ladders, starts, already: int, count: int, what: str) -> list:
    """Chunks of the widest uniform width whose removed units plus `already` reach `count`; ValueError if none."""
    widths = uniform_widths(ladders, starts, range(len(starts)))
    for w in widths:
        if already + w.removed >= count:
            return w.chunks(ladders)
    most = already + (widths[-1].removed if widths else 0)
    raise ValueError(f"cannot remove {count} {what} with uniform widths: the constraints (minimum kept, multiples, "
                     f"GQA) allow at most {most}; lower the sparsity or relax the constraints")
