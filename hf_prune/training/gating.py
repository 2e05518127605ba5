"""Gate mode: pruned units held at zero by their gates while parameter shapes cannot change (DDP, FSDP).

`GateMasks` records, per layer and in the model's current (un-compacted) coordinates, which heads and FFN
neurons are kept (1) or gated off (0), and which whole layers are kept (1) or gated off (0). A gated-off
layer passes its input through: output = input + g * (layer(input) - input) with g = 0, so its parameters
stay in the autograd graph (zero gradients, as DDP expects of every parameter) and keep their shapes.
Planning treats the gated units as already removed (`removed=`), and when training ends `cut` removes
them physically: widths first, then the gated layers, as `prune_model` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..architecture.counting import position_flops
from ..architecture.gates import Gates
from ..architecture.layouts import get_layers, get_layout
from ..architecture.shapes import layer_shapes
from ..architecture.stacks import FlatView
from ..importance.layers import hidden_input, hidden_output, layer_hooks, with_hidden_output
from ..planning.costs import FlopsCost, StackFlopsCost
from ..planning.plan import PruningPlan
from .units import prune_units


@dataclass
class GateMasks:
    """1 = kept, 0 = gated off: one list per layer for heads and for FFN neurons, one flag per whole layer (the
    layers of `unit_view(model)`: on a model with several stacks, its FlatView entries)."""

    heads: list[list[int]]
    neurons: list[list[int]]
    layers: list[int] | None = None  # None (checkpoints without layer masks): every layer kept

    def __post_init__(self):
        if self.layers is None:
            self.layers = [1] * len(self.heads)

    @classmethod
    def all_kept(cls, model: nn.Module) -> GateMasks:
        shapes = layer_shapes(model)
        return cls([[1] * s.heads for s in shapes], [[1] * s.ffn for s in shapes], [1] * len(shapes))

    def alive(self) -> list[int]:
        """Indices of the layers not gated off."""
        return [i for i, keep in enumerate(self.layers) if keep]

    def dead(self) -> list[int]:
        """Indices of the gated-off layers (removed when `cut`)."""
        return [i for i, keep in enumerate(self.layers) if not keep]

    def kept(self) -> tuple[int, int]:
        """Heads and FFN neurons still kept, over the layers not gated off."""
        alive = self.alive()
        return sum(sum(self.heads[i]) for i in alive), sum(sum(self.neurons[i]) for i in alive)

    def removed(self) -> PruningPlan:
        """The gated-off units as a plan (what `plan_from_*(removed=...)` and `prune_model` take)."""
        heads = {i: [h for h, keep in enumerate(m) if not keep] for i, m in enumerate(self.heads)}
        neurons = {i: [n for n, keep in enumerate(m) if not keep] for i, m in enumerate(self.neurons)}
        return PruningPlan(heads, neurons)

    def remove(self, plan: PruningPlan) -> None:
        """Gate off every unit and layer of `plan` (units already gated stay gated)."""
        for layer in plan.layers:
            self.layers[layer] = 0
        for masks, request in ((self.heads, plan.heads), (self.neurons, plan.neurons)):
            for layer, units in request.items():
                for unit in units:
                    masks[layer][unit] = 0

    @torch.no_grad()
    def load_into(self, gates: Gates) -> None:
        """Set the gates' values to the masks."""
        for gate, mask in zip(gates.heads + gates.neurons, self.heads + self.neurons):
            gate.copy_(torch.tensor(mask, dtype=gate.dtype))

    def flops(self, model: nn.Module, seq_len: int | None) -> int:
        """Layer FLOPs at `seq_len` of the model (or FlatView) once the gated units are cut."""
        shapes = layer_shapes(model)
        if isinstance(model, FlatView):  # each entry at its stack's width and tokens (None: every stack's default)
            cost = StackFlopsCost.from_view(model, seq_len)
        else:
            cost = FlopsCost(model.config.hidden_size, get_layout(model).gated, seq_len,
                             tuple(s.head_dim for s in shapes), position_flops(model))
        total = 0
        for i, (s, head_mask, neuron_mask, alive) in enumerate(zip(shapes, self.heads, self.neurons, self.layers)):
            if not alive:
                continue
            kept = sum(head_mask)
            kv = kept if s.kv_heads == s.heads else (s.kv_heads * kept // s.heads if s.heads else 0)
            total += cost.layer(i, kept, kv, sum(neuron_mask))
        return total

    def cut(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Remove every gated-off unit and layer physically (and slice or drop `optimizer`'s state with them);
        `model.config.hf_prune` records the shapes, the kept heads and the remaining layers."""
        removed, dead = self.removed(), set(self.dead())
        heads = {i: h for i, h in removed.heads.items() if i not in dead}
        neurons = {i: n for i, n in removed.neurons.items() if i not in dead}
        prune_units(model, PruningPlan(heads, neurons, layers=sorted(dead)), optimizer=optimizer)


@contextmanager
def attach_layer_gates(model: nn.Module, masks: GateMasks) -> Iterator[None]:
    """While the context lasts, every layer gated off in `masks` (read at each call) passes its input through.

    output = input + 0 * (layer(input) - input): exactly the input, with the layer's parameters still in the
    graph (zero gradients), and the layer's output structure (tensor or tuple) kept.
    """
    def make_hook(i: int):
        def hook(module, args, kwargs, output):
            if masks.layers[i]:
                return None
            inp, out = hidden_input(args, kwargs), hidden_output(output)
            inp = inp.to(out.device, out.dtype)
            return with_hidden_output(output, inp + (out - inp) * 0.0)
        return hook

    with layer_hooks(get_layers(model), make_hook):
        yield
