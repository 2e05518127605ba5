"""Fused projections: one weight whose output rows hold several logical projections (q, k, v or gate, up).

A `Fused` entry of a layout says which logical projections share one module and how their rows are laid out;
`part_rows` turns that into row indices, unit by unit (a unit is a head for q/k/v, a neuron for gate/up).
Surgery keeps the rows of the kept units (`kept_rows`), importance scores sum over each unit's rows
(`unit_rows`), both without knowing any architecture.

Row order of the layouts in use (d = head size, h query heads, k key/value heads, F FFN neurons):

    contiguous  [q_0 .. q_h-1 | k_0 .. k_k-1 | v_0 .. v_k-1]   GPT-2 c_attn, Phi-3 qkv_proj, ModernBERT Wqkv
                [gate_0 .. gate_F-1 | up_0 .. up_F-1]           Phi-3 gate_up_proj, ModernBERT Wi
    interleaved [q_0 k_0 v_0 | q_1 k_1 v_1 | ...]               GPT-NeoX query_key_value

Kept rows are returned in the weight's own order, so a sliced weight has the same layout with fewer units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

ATTENTION_PARTS = ("q", "k", "v")
FFN_PARTS = ("gate", "up")


@dataclass(frozen=True)
class Fused:
    """One module whose output rows stack several logical projections.

    path: from a layer to the module.
    parts: the logical projections it holds, in row order: some of ("q", "k", "v"), or of ("gate", "up")
        ("gate" is the activated half of a GLU, "up" the half it multiplies).
    interleaved: False: contiguous blocks, every row of the first part, then every row of the second, ...;
        True: unit by unit, each unit's rows of every part in turn (needs the same unit count in every part,
        so no grouped-query attention).
    """

    path: str
    parts: tuple[str, ...]
    interleaved: bool = False

    def __post_init__(self):
        known = ATTENTION_PARTS if self.parts and self.parts[0] in ATTENTION_PARTS else FFN_PARTS
        if len(self.parts) < 2 or len(set(self.parts)) != len(self.parts) or not set(self.parts) <= set(known):
            raise ValueError(
                f"Fused({self.path!r}): parts must be two or more distinct names, all from {ATTENTION_PARTS} or all from "
                f"{FFN_PARTS}; got {self.parts}"
            )


def part_rows(fused: Fused, counts: Mapping[str, int], width: int) -> dict[str, torch.Tensor]:
    """Row indices of every part, unit by unit: {part: (units, width)}.

    counts: units of each part (query heads for "q", key/value heads for "k" and "v", neurons for "gate"/"up");
    width: rows per unit (the head size, or 1 for neurons).
    """
    offsets = torch.arange(width)
    if fused.interleaved:
        units = {counts[p] for p in fused.parts}
        if len(units) != 1:
            raise ValueError(f"{fused.path}: interleaved parts need one unit count, got {dict(counts)}")
        n, stride = units.pop(), len(fused.parts) * width
        first = torch.arange(n)[:, None] * stride + offsets[None, :]  # (units, width): rows of the first part
        return {p: first + i * width for i, p in enumerate(fused.parts)}
    rows, start = {}, 0
    for p in fused.parts:
        n = counts[p]
        rows[p] = start + torch.arange(n)[:, None] * width + offsets[None, :]  # (units, width)
        start += n * width
    return rows


def kept_rows(fused: Fused, counts: Mapping[str, int], width: int, keep: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """Rows of the units `keep[part]` of every part, in the weight's order (the layout survives the slice)."""
    rows = part_rows(fused, counts, width)
    chosen = [rows[p][torch.as_tensor(list(keep[p]), dtype=torch.long)].reshape(-1) for p in fused.parts]
    return torch.cat(chosen).sort().values


def separate_rows(units: int, width: int) -> torch.Tensor:
    """Row indices of a plain (unfused) projection with `units` blocks of `width` rows: (units, width)."""
    return torch.arange(units * width).reshape(units, width)


def rows_by_module(layout, parts: Sequence[str], counts: Mapping[str, int], width: int) -> dict[str, torch.Tensor]:
    """{module path: (units, rows per unit)}: each unit's output rows in every module holding one of `parts`.

    `layout` is a `hf_prune.architecture.layouts.Layout`; every part in `parts` must have the same unit count.
    A fused module holding several of the parts gives each unit its rows of all of them (e.g. q, k and v).
    """
    found: dict[str, list[torch.Tensor]] = {}
    for part in parts:
        fused = layout.holder(part)
        if fused is None:
            path, rows = getattr(layout, part), separate_rows(counts[part], width)
        else:
            path, rows = fused.path, part_rows(fused, counts, width)[part]
        found.setdefault(path, []).append(rows)
    return {path: torch.cat(rows, dim=1) for path, rows in found.items()}  # (units, width * parts there)
