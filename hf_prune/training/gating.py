"""Gate mode: pruned units held at zero by their gates while parameter shapes cannot change (DDP, FSDP).

`GateMasks` records, per layer and in the model's current (un-compacted) coordinates, which heads and FFN
neurons are kept (1) or gated off (0). Planning treats the gated units as already removed
(`removed=`), and when training ends `cut` removes them physically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..architecture.counting import layer_flops
from ..architecture.gates import Gates
from ..architecture.layouts import get_layout
from ..architecture.shapes import layer_shapes
from ..planning.plan import PruningPlan
from ..surgery.width import prune_model


@dataclass
class GateMasks:
    """1 = kept, 0 = gated off: one list per layer for heads and for FFN neurons."""

    heads: list[list[int]]
    neurons: list[list[int]]

    @classmethod
    def all_kept(cls, model: nn.Module) -> GateMasks:
        shapes = layer_shapes(model)
        return cls([[1] * s.heads for s in shapes], [[1] * s.ffn for s in shapes])

    def kept(self) -> tuple[int, int]:
        """Heads and FFN neurons still kept, over all layers."""
        return sum(map(sum, self.heads)), sum(map(sum, self.neurons))

    def removed(self) -> PruningPlan:
        """The gated-off units as a plan (what `plan_from_*(removed=...)` and `prune_model` take)."""
        heads = {i: [h for h, keep in enumerate(m) if not keep] for i, m in enumerate(self.heads)}
        neurons = {i: [n for n, keep in enumerate(m) if not keep] for i, m in enumerate(self.neurons)}
        return PruningPlan(heads, neurons)

    def remove(self, plan: PruningPlan) -> None:
        """Gate off every unit of `plan` (units already gated stay gated)."""
        for masks, request in ((self.heads, plan.heads), (self.neurons, plan.neurons)):
            for layer, units in request.items():
                for unit in units:
                    masks[layer][unit] = 0

    @torch.no_grad()
    def load_into(self, gates: Gates) -> None:
        """Set the gates' values to the masks."""
        for gate, mask in zip(gates.heads + gates.neurons, self.heads + self.neurons):
            gate.copy_(torch.tensor(mask, dtype=gate.dtype))

    def flops(self, model: nn.Module, seq_len: int) -> int:
        """Layer FLOPs at `seq_len` of the model once the gated units are cut."""
        hidden, gated = model.config.hidden_size, get_layout(model).gate is not None
        total = 0
        for s, head_mask, neuron_mask in zip(layer_shapes(model), self.heads, self.neurons):
            kept = sum(head_mask)
            kv = kept if s.kv_heads == s.heads else (s.kv_heads * kept // s.heads if s.heads else 0)
            total += layer_flops(hidden, kept, kv, s.head_dim, sum(neuron_mask), seq_len, gated)
        return total

    def cut(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Remove every gated-off unit physically (and slice `optimizer`'s state with it);
        `model.config.hf_prune` records the shapes and the kept heads."""
        removed = self.removed()
        prune_model(model, heads=removed.heads, neurons=removed.neurons, optimizer=optimizer)
