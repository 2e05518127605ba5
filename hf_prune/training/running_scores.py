"""Importance summed over the training steps themselves: the `gradient`, `fisher` and `taylor` methods.

Each optimizer step adds one term per head and FFN neuron, computed on the device where the gates live
(one accumulator tensor per layer and kind), without any host synchronisation: the running sums reach
the host only at a pruning event (`reduced`) and in checkpoints (`to_state`).

fp16 mixed precision: the gates' gradients carry the GradScaler's scale, so they are divided by it;
a step whose terms are not all finite (an overflow step, which the optimizer skips too) adds nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from ..architecture.gates import Gates
from ..architecture.layouts import get_layers, get_layout
from ..architecture.shapes import layer_shape
from ..importance.units import unit_sums
from ..utils import all_reduce

# The checkpoint attributes of callbacks written before the running scores were kept as tensors.
LEGACY_KEYS = ("head_scores", "neuron_scores", "accumulated_steps")


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (sums over thousands of steps), float32 elsewhere (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def gate_terms(gates: Gates, method: str, scale: float = 1.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """This step's per-unit terms from the gates' gradients: |dL/dg| (gradient) or (dL/dg)^2 (fisher)."""
    out = []
    for kind in ("heads", "neurons"):
        terms = []
        for g in gates.grads(kind):
            g = g.to(accumulator_dtype(g.device)) / scale
            terms.append(g.square() if method == "fisher" else g.abs())
        out.append(terms)
    return out[0], out[1]


@torch.no_grad()
def taylor_terms(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """This step's signed first-order Taylor terms sum(w * dL/dw) per unit (made absolute at the event)."""
    layout = get_layout(model)
    heads, neurons = [], []
    for layer in get_layers(model, layout):
        h, n = unit_sums(layer, layout, layer_shape(layer, layout),
                         lambda name, p: p.detach().float() * (p.grad if p.grad is not None else 0))
        heads.append(h)
        neurons.append(n)
    return heads, neurons


class RunningScores:
    """Per-unit importance summed over optimizer steps, one tensor per layer on that layer's gate device."""

    def __init__(self):
        self.heads: list[torch.Tensor] = []
        self.neurons: list[torch.Tensor] = []
        self.steps: torch.Tensor | None = None  # steps added (overflow steps are not), on the first gate's device

    def reset(self, gates: Gates) -> None:
        """Zero sums shaped like `gates`, on the gates' devices."""
        self.heads = [torch.zeros(g.shape, dtype=accumulator_dtype(g.device), device=g.device) for g in gates.heads]
        self.neurons = [torch.zeros(g.shape, dtype=accumulator_dtype(g.device), device=g.device) for g in gates.neurons]
        device = gates.heads[0].device if gates.heads else torch.device("cpu")
        self.steps = torch.zeros((), dtype=torch.int64, device=device)

    def fits(self, gates: Gates) -> bool:
        """Do the sums have the gates' shapes (false before the first reset and after a compaction)?"""
        return self.steps is not None and [t.shape for t in self.heads + self.neurons] == [
            g.shape for g in gates.heads + gates.neurons]

    def load(self, saved: dict, gates: Gates) -> None:
        """Continue from `to_state()`'s output; zero sums when it does not fit the gates."""
        self.reset(gates)
        heads, neurons = saved.get("heads"), saved.get("neurons")
        if heads is None or [len(h) for h in heads] != [len(t) for t in self.heads] or \
                [len(n) for n in (neurons or [])] != [len(t) for t in self.neurons]:
            return
        with torch.no_grad():
            for acc, values in zip(self.heads + self.neurons, heads + neurons):
                acc.copy_(torch.tensor(values, dtype=torch.float64))
            self.steps.fill_(int(saved.get("steps", 0)))

    @torch.no_grad()
    def add(self, heads: list[torch.Tensor], neurons: list[torch.Tensor]) -> None:
        """Add one step's terms, unless one of them is not finite (then the step adds nothing)."""
        terms = heads + neurons
        anchor = self.steps.device
        finite = torch.stack([torch.isfinite(t).all().to(anchor) for t in terms]).all() if terms else \
            torch.ones((), dtype=torch.bool, device=anchor)
        for acc, term in zip(self.heads + self.neurons, terms):
            term = term.to(acc.device, acc.dtype)
            acc.add_(torch.where(finite.to(acc.device), term, torch.zeros_like(term)))
        self.steps.add_(finite.to(torch.int64))

    def reduced(self) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
        """The sums over every process, on the host (float64), and the number of steps they hold."""
        summed = all_reduce(self.heads + self.neurons + [self.steps])
        n = len(self.heads)
        host = [t.detach().to("cpu", torch.float64) for t in summed[:-1]]
        return host[:n], host[n:], int(summed[-1])

    def to_state(self) -> dict:
        """This process's sums as JSON-ready lists (for checkpoints)."""
        if self.steps is None:
            return {"heads": None, "neurons": None, "steps": 0}
        return {"heads": [t.detach().cpu().tolist() for t in self.heads],
                "neurons": [t.detach().cpu().tolist() for t in self.neurons], "steps": int(self.steps)}


def legacy_state(attributes: dict) -> dict | None:
    """The running scores of a checkpoint written before they were kept as tensors (or None)."""
    if attributes.get("head_scores") is None:
        return None
    return {"heads": attributes["head_scores"], "neurons": attributes.get("neuron_scores"),
            "steps": attributes.get("accumulated_steps", 0)}
