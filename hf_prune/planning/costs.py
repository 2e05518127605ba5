"""Cost models for budgeted plans: what one layer costs at given widths, and what a removal saves.

A cost model answers `layer(i, heads, kv_heads, ffn)`: the cost of layer i with that many query heads,
key/value heads and FFN neurons. Every cost here is an attention part plus an FFN part (plus a fixed part
per present layer), so a chunk of heads saves ``layer(i, before, 0) - layer(i, after, 0)``, a chunk of
neurons ``layer(i, 0, 0, before) - layer(i, 0, 0, after)``, and removing a whole layer saves all of
``layer(i, heads, kv_heads, ffn)``. The planners' search (`hf_prune.planning.budgets`) only uses these.

- `FlopsCost`: analytic layer FLOPs at `seq_len` tokens (`hf_prune.architecture.counting.layer_flops`);
  `StackFlopsCost` the same per stack (hidden size, tokens) with cross-attention, for models with several stacks.
- `ParamsCost`: exact parameter counts read off the model's modules (biases and norms included).
- `LatencyCost`: predicted seconds from a latency table (`layer_seconds`, `attention_cost`, `ffn_cost`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..architecture.counting import FlopsEntry, entry_flops, layer_flops, stack_flops_entries
from ..architecture.layouts import PositionFlops, get_layers, get_layout
from ..architecture.shapes import layer_shape, layer_shapes
from ..importance.units import unit_sizes


class CostModel:
    """Base: subclasses define `layer`; the savings of head chunks, neuron chunks and whole layers follow."""

    def layer(self, i: int, heads: int, kv_heads: int, ffn: int) -> float:
        raise NotImplementedError

    def head_saving(self, chunk) -> float:
        """Attention cost before minus after the chunk (a chunk has .layer, .before and .after (width, kv))."""
        return self.layer(chunk.layer, *chunk.before, 0) - self.layer(chunk.layer, *chunk.after, 0)

    def neuron_saving(self, chunk) -> float:
        """FFN cost before minus after the chunk."""
        return self.layer(chunk.layer, 0, 0, chunk.before[0]) - self.layer(chunk.layer, 0, 0, chunk.after[0])

    def layer_saving(self, i: int, heads: int, kv_heads: int, ffn: int) -> float:
        """What removing the whole layer saves: all of its cost."""
        return self.layer(i, heads, kv_heads, ffn)


@dataclass(frozen=True)
class FlopsCost(CostModel):
    """Layer FLOPs of one model at `seq_len` tokens."""

    hidden: int
    gated: bool
    seq_len: int
    head_dim: tuple[int, ...]  # per layer
    position: PositionFlops | None = None  # DeBERTa's relative-position work per head

    def layer(self, i: int, heads: int, kv_heads: int, ffn: int) -> int:
        return layer_flops(self.hidden, heads, kv_heads, self.head_dim[i], ffn, self.seq_len, self.gated,
                           self.position)


@dataclass(frozen=True)
class StackFlopsCost(CostModel):
    """Layer FLOPs of the entries of a `FlatView` (several stacks): each entry has its stack's hidden size and
    tokens; a cross-attention entry costs `cross_attention_flops` over its source stack's tokens."""

    entries: tuple[FlopsEntry, ...]  # per entry: (hidden, tokens, source tokens, cross, head_dim)
    gated: bool

    def layer(self, i: int, heads: int, kv_heads: int, ffn: int) -> int:
        return entry_flops(self.entries[i], heads, kv_heads, ffn, self.gated)

    @classmethod
    def from_view(cls, flat, seq_len) -> StackFlopsCost:
        """From a FlatView and `seq_len` (one length, {stack: length}, or None for every stack's default)."""
        return cls(stack_flops_entries(flat, seq_len, layer_shapes(flat)), flat.hf_prune_layout.gated)


@dataclass(frozen=True)
class ParamsCost(CostModel):
    """Exact parameters of every layer as fixed + heads * per_head + kv_heads * per_kv_head + ffn * per_neuron."""

    fixed: tuple[int, ...]  # what a layer keeps at zero width: norms, output biases, ...
    per_head: tuple[int, ...]  # query rows (+ k/v rows without GQA, + biases) and output columns of one head
    per_kv_head: tuple[int, ...]  # key and value rows (+ biases) of one key/value head (GQA only)
    per_neuron: tuple[int, ...]  # up (and gate) rows (+ biases) and down columns of one neuron

    def layer(self, i: int, heads: int, kv_heads: int, ffn: int) -> int:
        return self.fixed[i] + heads * self.per_head[i] + kv_heads * self.per_kv_head[i] + ffn * self.per_neuron[i]

    @classmethod
    def from_model(cls, model: nn.Module) -> ParamsCost:
        """Per-unit counts from the model's current modules (`hf_prune.importance.units.unit_sizes`)."""
        layout = get_layout(model)
        fixed, per_head, per_kv, per_neuron = [], [], [], []
        for layer in get_layers(model, layout):
            shape = layer_shape(layer, layout)
            sizes = unit_sizes(layer, layout, shape)
            head, kv, neuron = sizes["heads"], sizes["kv_heads"], sizes["neurons"]
            total = sum(p.numel() for p in {id(p): p for p in layer.parameters()}.values())
            fixed.append(total - shape.heads * head - shape.kv_heads * kv - shape.ffn * neuron)
            per_head.append(head)
            per_kv.append(kv)
            per_neuron.append(neuron)
        return cls(tuple(fixed), tuple(per_head), tuple(per_kv), tuple(per_neuron))


@dataclass(frozen=True)
class LatencyCost(CostModel):
    """Predicted seconds of one layer from a latency table: layer_seconds + attention_cost(heads) + ffn_cost(ffn)."""

    table: Any  # hf_prune.planning.latency_model.LatencyTable, or anything with the same methods

    def layer(self, i: int, heads: int, kv_heads: int, ffn: int) -> float:
        return float(self.table.layer_cost(heads, ffn))

    def head_saving(self, chunk) -> float:
        return float(self.table.attention_cost(chunk.before[0]) - self.table.attention_cost(chunk.after[0]))

    def neuron_saving(self, chunk) -> float:
        return float(self.table.ffn_cost(chunk.before[0]) - self.table.ffn_cost(chunk.after[0]))
