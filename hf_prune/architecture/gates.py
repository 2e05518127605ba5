"""Per-head and per-neuron gates: forward pre-hooks that multiply the inputs of the output projections.

transformers v5 has no `head_mask`; these gates replace it. A head's gate multiplies its `head_dim`
columns of the attention output projection's input (o_proj / c_proj / attention.output.dense), a
neuron's gate multiplies its column of the FFN down projection's input. Shapes never change while
gates are attached, and `attach_gates` removes every hook it added when its context exits.

Each gate lives on its projection's execution device (for a layer offloaded by accelerate, its hook's
`execution_device`). An optional `observer(kind, layer, x)` sees each gated input (before gating), e.g. to record
activations; `kind` is "heads" (x of shape (B, T, heads, head_dim)) or "neurons" (x of shape (B, T, ffn)).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..utils import execution_device
from .layouts import get_layers, get_layout, get_submodule
from .shapes import layer_shape

Observer = Callable[[str, int, torch.Tensor], None]


@dataclass
class Gates:
    """The gate tensors of a model: one 1-D tensor per layer for heads and for neurons (all ones at start)."""

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]
    handles: list = field(default_factory=list, repr=False)

    def zero_grad(self) -> None:
        for g in self.heads + self.neurons:
            g.grad = None

    def grads(self, kind: str) -> list[torch.Tensor]:
        """Gradients of the gates of `kind` ("heads" or "neurons"); zeros where a gate was never used."""
        gates = self.heads if kind == "heads" else self.neurons
        return [g.grad.detach().clone() if g.grad is not None else torch.zeros_like(g) for g in gates]


def _head_hook(gate: torch.Tensor, layer: int, head_dim: int, observer: Observer | None):
    def hook(module, args):
        x = args[0]
        heads = gate.shape[0]
        x4 = x.reshape(*x.shape[:-1], heads, head_dim)  # (B, T, heads, d)
        if observer is not None:
            observer("heads", layer, x4)
        gated = (x4 * gate.to(x.device, x.dtype)[:, None]).reshape(x.shape)  # (B, T, heads * d)
        return (gated, *args[1:])

    return hook


def _neuron_hook(gate: torch.Tensor, layer: int, observer: Observer | None):
    def hook(module, args):
        x = args[0]  # (B, T, ffn)
        if observer is not None:
            observer("neurons", layer, x)
        return (x * gate.to(x.device, x.dtype), *args[1:])

    return hook


@contextmanager
def attach_gates(
    model: nn.Module,
    heads: bool = True,
    neurons: bool = True,
    requires_grad: bool = True,
    observer: Observer | None = None,
) -> Iterator[Gates]:
    """Attach gates (all ones) to every layer's output and down projections for the duration of the context.

    heads / neurons: which projections get a gate. requires_grad: make the gates leaf tensors whose
    `.grad` is dL/dg after a backward pass. The hooks are removed on exit, even after an exception.
    """
    layout = get_layout(model)
    gates = Gates(heads=[], neurons=[])
    try:
        for i, layer in enumerate(get_layers(model, layout)):
            shape = layer_shape(layer, layout)
            o, down = get_submodule(layer, layout.o), get_submodule(layer, layout.down)
            # each gate lives where its projection computes (models spread over devices or offloaded with device_map:
            # the accelerate hook's execution device, never the meta device of an offloaded weight)
            head_gate = torch.ones(shape.heads, device=execution_device(o), requires_grad=requires_grad)
            neuron_gate = torch.ones(shape.ffn, device=execution_device(down), requires_grad=requires_grad)
            gates.heads.append(head_gate)
            gates.neurons.append(neuron_gate)
            if heads:
                gates.handles.append(o.register_forward_pre_hook(_head_hook(head_gate, i, shape.head_dim, observer)))
            if neurons:
                gates.handles.append(down.register_forward_pre_hook(_neuron_hook(neuron_gate, i, observer)))
        yield gates
    finally:
        for handle in gates.handles:
            handle.remove()
        gates.handles.clear()
