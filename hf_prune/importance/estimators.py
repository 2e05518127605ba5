"""The importance estimators, one function each, and the registry that `compute_importance` dispatches on.

Every estimator takes a `ScoringRun` and returns `Scores(heads, neurons, num_batches)`: final per-unit
scores of every layer (float64, on CPU), already summed over all processes under torch.distributed.
A new estimator is one function here and one line in `ESTIMATORS`.

- ``gradient``: mean over batches of |dL/dg| for a gate g multiplying the unit's output (Michel et al. 2019).
- ``fisher``: sum over batches of (dL/dg)^2 (Kwon et al. 2022).
- ``taylor``: |sum over the unit's weights of w * dL/dw| with dL/dw summed over all batches (first-order
  Taylor, as TextPruner), accumulated per unit from activations (see `taylor_scores`).
- ``l1`` / ``l2``: L1 / L2 norm of the unit's weights (no data needed).
- ``activation``: mean over (non-padding) tokens of the unit's output magnitude: the L2 norm of the head's
  context vector (its ``head_dim`` slice of the output projection's input), or |activation| of the neuron.
- ``random``: uniform random scores from a seeded generator (a baseline; no data needed).

The data-driven estimators run each batch as length-sorted pieces with less padding where that gives the same
sums exactly (`ScoringRun.pieces`, `padding.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..architecture.gates import attach_gates
from ..architecture.layouts import Layout, get_layers, get_stacks, get_submodule
from ..architecture.shapes import LayerShape
from ..architecture.stacks import mask_name
from ..utils import all_reduce, eval_mode, input_device, is_main_process, prepare_batch
from .padding import split_by_length
from .units import unit_columns, unit_rows, unit_sums


@dataclass
class ScoringRun:
    """What an estimator may use: the model, its layout and current shapes, the batches and the options."""

    model: nn.Module
    layout: Layout
    shapes: list[LayerShape]
    batches: Iterable | None
    method: str
    label_free: bool = False
    seed: int = 0
    progress: bool = True

    def mask_of(self, batch: dict, layer: int) -> torch.Tensor | None:
        """The padding mask of layer `layer`'s tokens: the batch's attention_mask, or on a model with several stacks
        that stack's own (a decoder's decoder_attention_mask; none for image patches)."""
        name = mask_name(self.model, layer)
        return batch.get(name) if name else None

    def pieces(self, batch: dict) -> list[tuple[dict, float]]:
        """[(piece, weight)]: the batch as length-sorted pieces whose weighted losses sum to its loss (padding.py),
        or [(batch, 1.0)] where that is not exact (label-free losses over tokens, several layer stacks)."""
        split = not self.label_free and isinstance(self.model, nn.Module) and get_stacks(self.model) is None
        return split_by_length(batch) if split else [(batch, 1.0)]

    def iterate(self) -> Iterable[dict]:
        """The batches on the model's input device, behind a progress bar on the main process."""
        device = input_device(self.model)
        bar = tqdm(self.batches, desc=f"importance ({self.method})", leave=False,
                   disable=not (self.progress and is_main_process()))
        for batch in bar:
            yield prepare_batch(batch, device)


@dataclass
class Scores:
    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]
    num_batches: int = 0


@dataclass(frozen=True)
class Estimator:
    """An importance method: its function, whether it needs batches, whether it uses gradients."""

    function: Callable[[ScoringRun], Scores]
    needs_data: bool
    gradient: bool = False  # from the loss's gradients (the callback can accumulate them from training steps)


# ----------------------------------------------------------------------------- shared pieces


def model_loss(model: nn.Module, batch: dict, label_free: bool) -> torch.Tensor:
    """The model's loss on the batch's labels, or on its own predictions when `label_free`."""
    if not label_free:
        if batch.get("labels") is None and not batch.get("return_loss"):  # CLIP's contrastive loss needs no labels
            raise ValueError(
                "a gradient method needs a loss: the batch has no `labels`. Add labels (or return_loss=True for a "
                "contrastive two-tower model), or pass label_free=True to use the model's own predictions as targets"
            )
        loss = model(**batch).loss
        if loss is None:
            raise ValueError("the model returned no loss for a batch with labels")
        return loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    if logits.dim() == 3:  # causal LM: (B, T, V); predict token t+1 from tokens <= t
        labels = inputs["input_ids"].to(logits.device)
        mask = inputs.get("attention_mask")
        if mask is not None:
            labels = labels.masked_fill(mask.to(logits.device) == 0, -100)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
    if logits.shape[-1] < 2:
        raise ValueError("label_free=True needs a classifier with at least 2 labels (regression has no own prediction)")
    return F.cross_entropy(logits.float(), logits.detach().argmax(-1))  # (B, C) against its own argmax


@contextmanager
def frozen_except(model: nn.Module, trainable: list[nn.Parameter]) -> Iterator[None]:
    """Eval mode; only `trainable` parameters require grad, grads cleared; everything restored on exit.

    Flags are restored by (module, name), not on the Parameter objects seen on entry: accelerate's offload
    hooks replace an offloaded module's Parameters at every forward pass (device_map with CPU/disk offload).
    """
    keep = {id(p) for p in trainable}
    saved = [(module, name, p, p.requires_grad, p.grad)
             for module in model.modules() for name, p in module._parameters.items() if p is not None]
    with eval_mode(model):
        try:
            for p in model.parameters():
                p.requires_grad_(id(p) in keep)
                p.grad = None
            yield
        finally:
            for module, name, original, flag, grad in saved:
                current = module._parameters.get(name)
                for p in {id(original): original, id(current): current}.values():
                    if isinstance(p, torch.Tensor):
                        p.requires_grad_(flag)
                original.grad = grad


def _zeros(shapes: list[LayerShape], kind: str) -> list[torch.Tensor]:
    return [torch.zeros(s.heads if kind == "heads" else s.ffn, dtype=torch.float64) for s in shapes]


def _on_host(sums: list[torch.Tensor]) -> list[torch.Tensor]:
    return [s.double().cpu() for s in sums]


def reduce_batch_sums(sums: list[torch.Tensor], n_batches: int, what: str) -> tuple[list[torch.Tensor], int]:
    """All-reduce per-process sums and the batch count in one collective; ValueError when no process saw a batch."""
    out = all_reduce([*sums, torch.tensor([float(n_batches)], dtype=torch.float64)])
    total = int(out[-1].item())
    if total == 0:
        raise ValueError(f"the dataloader is empty: {what} needs at least one batch")
    return out[:-1], total


def _reduced(heads: list[torch.Tensor], neurons: list[torch.Tensor], extra: list[torch.Tensor], n_batches: int):
    """All-reduce the raw head, neuron and extra sums (one collective); (heads, neurons, extra, batches)."""
    n = len(heads)
    out, total = reduce_batch_sums(heads + neurons + extra, n_batches, "importance")
    return out[:n], out[n:2 * n], out[2 * n:], total


# ----------------------------------------------------------------------------- estimators


def _gate_gradients(run: ScoringRun, transform: Callable[[torch.Tensor], torch.Tensor]):
    """Sum over batches of transform(dL/dg) for every gate; sums stay on each gate's device until the end."""
    n_batches = 0
    with frozen_except(run.model, []), attach_gates(run.model, requires_grad=True) as gates:
        wrt = gates.heads + gates.neurons
        sums = [torch.zeros_like(g, dtype=torch.float64 if g.device.type != "mps" else torch.float32) for g in wrt]
        for batch in run.iterate():
            grads: list = [None] * len(wrt)  # the batch's dL/dg, summed over its pieces
            for piece, weight in run.pieces(batch):
                loss = model_loss(run.model, piece, run.label_free)
                for k, g in enumerate(torch.autograd.grad(loss * weight if weight != 1.0 else loss, wrt,
                                                          allow_unused=True)):
                    if g is not None:
                        grads[k] = g if grads[k] is None else grads[k] + g
            for total, g in zip(sums, grads):
                if g is not None:
                    total += transform(g.to(total.dtype))
            n_batches += 1
    n = len(gates.heads)
    return _reduced(_on_host(sums[:n]), _on_host(sums[n:]), [], n_batches)


def gradient_scores(run: ScoringRun) -> Scores:
    heads, neurons, _, n = _gate_gradients(run, torch.abs)
    return Scores([h / n for h in heads], [x / n for x in neurons], n)


def fisher_scores(run: ScoringRun) -> Scores:
    heads, neurons, _, n = _gate_gradients(run, torch.square)
    return Scores(heads, neurons, n)


def _unit_terms(t: torch.Tensor, g: torch.Tensor, units: int, rows: torch.Tensor | None) -> torch.Tensor:
    """Per-unit sum of t * g over every token, in float64: (..., features) -> (units,).

    rows: (units, rows per unit) output rows of each unit (`unit_rows`); None: `units` consecutive blocks.
    """
    prod = t.float() * g.float()
    if rows is not None:  # (tokens, features) -> (tokens, units, rows per unit)
        return prod.reshape(-1, prod.shape[-1])[:, rows.to(prod.device)].sum((0, 2), dtype=torch.float64)
    return prod.reshape(-1, units, prod.shape[-1] // units).sum((0, 2), dtype=torch.float64)


def taylor_scores(run: ScoringRun) -> Scores:
    """|sum over the unit's weights of w * dL/dw|, accumulated per unit from the activations, never per weight.

    For the output rows r of a projection y = W x + b, sum over r's weights and bias of w * dL/dw equals
    sum over tokens of y_r * dL/dy_r; for its input columns c, sum over c's weights of w * dL/dw equals sum
    over tokens of x_c * dL/dx_c. So each batch adds per-unit sums of y * dL/dy (rows of q, k, v, up, gate)
    and x * dL/dx (inputs of the output and down projections): no weight is copied or needs a gradient, and
    layers offloaded by accelerate work, as their hooks load the weights for the forward pass as usual.
    """
    layers = get_layers(run.model, run.layout)
    anchors: dict[torch.device, torch.Tensor] = {}  # a 0 requiring grad, so every hooked tensor is in the graph
    captured: list[tuple[str, int, int, torch.Tensor | None, torch.Tensor]] = []  # (kind, layer, units, rows, tensor)

    def tracked(t: torch.Tensor) -> torch.Tensor:
        if t.device not in anchors:
            anchors[t.device] = torch.zeros((), device=t.device, requires_grad=True)
        return t + anchors[t.device].to(t.dtype)

    def rows_hook(kind: str, i: int, units: int, rows: torch.Tensor):
        def hook(module, args, output):
            out = tracked(output)
            captured.append((kind, i, units, rows, out))
            return out
        return hook

    def cols_hook(kind: str, i: int, units: int):
        def hook(module, args):
            x = tracked(args[0])
            captured.append((kind, i, units, None, x))
            return (x, *args[1:])
        return hook

    sums: dict[str, list] = {"heads": [None] * len(run.shapes), "neurons": [None] * len(run.shapes)}
    handles = []
    n_batches = 0
    try:
        for i, (layer, shape) in enumerate(zip(layers, run.shapes)):
            rows, cols = unit_rows(run.layout, shape, layer), unit_columns(run.layout)
            for kind, units in (("heads", shape.heads), ("neurons", shape.ffn)):
                if not units:
                    continue
                for group in rows[kind]:
                    hook = rows_hook(kind, i, units, group.rows)
                    handles.append(get_submodule(layer, group.path).register_forward_hook(hook))
                handles.append(get_submodule(layer, cols[kind]).register_forward_pre_hook(cols_hook(kind, i, units)))
        with frozen_except(run.model, []):
            for batch in run.iterate():
                for piece, weight in run.pieces(batch):  # weighted pieces: the batch's signed sums
                    captured.clear()
                    loss = model_loss(run.model, piece, run.label_free)
                    loss = loss * weight if weight != 1.0 else loss
                    tensors = [c[-1] for c in captured]
                    grads = torch.autograd.grad(loss, tensors, allow_unused=True) if tensors else []
                    for (kind, i, units, rows, t), g in zip(captured, grads):
                        if g is not None:  # signed per-unit sums on the layer's device; abs after every batch
                            term = _unit_terms(t.detach(), g, units, rows)
                            sums[kind][i] = term if sums[kind][i] is None else \
                                sums[kind][i] + term.to(sums[kind][i].device)
                    captured.clear()
                n_batches += 1
    finally:
        for handle in handles:
            handle.remove()
        captured.clear()
    host = {kind: [zero if v is None else v.double().cpu() for v, zero in zip(sums[kind], _zeros(run.shapes, kind))]
            for kind in sums}
    heads, neurons, _, n = _reduced(host["heads"], host["neurons"], [], n_batches)
    return Scores([h.abs() for h in heads], [x.abs() for x in neurons], n)


def token_mask(mask: torch.Tensor | None, lead: torch.Size, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """Mask of real tokens shaped `lead`: (B, T), or (B*T,) where a block flattens tokens (OPT's FFN); ones if unknown."""
    if mask is None or mask.dim() != 2 or mask.numel() != lead.numel():
        return torch.ones(lead, device=device, dtype=dtype)
    return mask.reshape(lead).to(device, dtype)


def activation_scores(run: ScoringRun) -> Scores:
    sums = {"heads": [None] * len(run.shapes), "neurons": [None] * len(run.shapes)}
    tokens = {"heads": [None] * len(run.shapes), "neurons": [None] * len(run.shapes)}
    current: dict = {}

    def observe(kind: str, i: int, x: torch.Tensor) -> None:
        # heads: (B, T, heads, d) -> (B, T, heads); neurons: (B, T, ffn) or (B*T, ffn)
        magnitude = x.float().norm(dim=-1) if kind == "heads" else x.float().abs()
        mask = token_mask(run.mask_of(current, i), magnitude.shape[:-1], magnitude.device)  # (B, T) or (B*T,)
        total = (magnitude * mask[..., None]).flatten(0, -2).sum(0).double()  # (units,), on the layer's device
        count = mask.sum().double()
        sums[kind][i] = total if sums[kind][i] is None else sums[kind][i] + total
        tokens[kind][i] = count if tokens[kind][i] is None else tokens[kind][i] + count

    n_batches = 0
    with eval_mode(run.model), torch.no_grad(), attach_gates(run.model, requires_grad=False, observer=observe):
        for batch in run.iterate():
            for piece, _ in run.pieces(batch):  # sums and token counts: pieces add up to the batch
                current.clear()
                current.update(piece)
                run.model(**{k: v for k, v in piece.items() if k != "labels"})
            n_batches += 1

    def host(values: list, sizes: list[torch.Tensor]) -> list[torch.Tensor]:  # a layer never observed sums to 0
        return [v.double().cpu() if v is not None else zero.clone() for v, zero in zip(values, sizes)]

    raw_heads = host(sums["heads"], _zeros(run.shapes, "heads"))
    raw_neurons = host(sums["neurons"], _zeros(run.shapes, "neurons"))
    scalar = [torch.zeros((), dtype=torch.float64)] * len(run.shapes)
    counts = torch.stack([torch.stack(host(tokens[kind], scalar)) for kind in ("heads", "neurons")])  # (2, layers)
    heads, neurons, (counts,), n = _reduced(raw_heads, raw_neurons, [counts], n_batches)
    return Scores([h / counts[0, i].clamp_min(1) for i, h in enumerate(heads)],
                  [x / counts[1, i].clamp_min(1) for i, x in enumerate(neurons)], n)


def _norm_scores(run: ScoringRun, power: int) -> Scores:
    heads, neurons = [], []
    for layer, shape in zip(get_layers(run.model, run.layout), run.shapes):
        h, x = unit_sums(layer, run.layout, shape, lambda name, p: p.detach().double().abs() ** power)
        heads.append(h if power == 1 else h.sqrt())
        neurons.append(x if power == 1 else x.sqrt())
    return Scores(heads, neurons)


def l1_scores(run: ScoringRun) -> Scores:
    return _norm_scores(run, 1)


def l2_scores(run: ScoringRun) -> Scores:
    return _norm_scores(run, 2)


def random_scores(run: ScoringRun) -> Scores:
    gen = torch.Generator().manual_seed(run.seed)
    heads = [torch.rand(s.heads, generator=gen, dtype=torch.float64) for s in run.shapes]
    neurons = [torch.rand(s.ffn, generator=gen, dtype=torch.float64) for s in run.shapes]
    return Scores(heads, neurons)


ESTIMATORS: dict[str, Estimator] = {
    "gradient": Estimator(gradient_scores, needs_data=True, gradient=True),
    "fisher": Estimator(fisher_scores, needs_data=True, gradient=True),
    "taylor": Estimator(taylor_scores, needs_data=True, gradient=True),
    "l1": Estimator(l1_scores, needs_data=False),
    "l2": Estimator(l2_scores, needs_data=False),
    "activation": Estimator(activation_scores, needs_data=True),
    "random": Estimator(random_scores, needs_data=False),
}
METHODS = tuple(ESTIMATORS)
GRADIENT_METHODS = tuple(name for name, e in ESTIMATORS.items() if e.gradient)
DATA_METHODS = tuple(name for name, e in ESTIMATORS.items() if e.needs_data)
