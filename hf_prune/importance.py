"""Importance scores of every attention head and FFN neuron, by gradient, by weight norm or by activation.

Methods (`compute_importance(..., method=...)`):

- ``gradient``: mean over batches of |dL/dg| for a gate g multiplying the unit's output (Michel et al. 2019).
- ``fisher``: sum over batches of (dL/dg)^2 (Kwon et al. 2022).
- ``taylor``: |sum over the unit's weights of w * dL/dw| with dL/dw summed over all batches (first-order
  Taylor, as TextPruner).
- ``l1`` / ``l2``: L1 / L2 norm of the unit's weights (no data needed).
- ``activation``: mean over (non-padding) tokens of the unit's output magnitude: the L2 norm of the head's
  context vector (its ``head_dim`` slice of the output projection's input), or |activation| of the neuron.
- ``random``: uniform random scores from a seeded generator (a baseline; no data needed).

"The unit's weights" are, for a head: its rows (weights and biases) of the query, key and value
projections and its input columns of the output projection; under grouped-query attention the key/value
rows are shared by the whole group and left out. For a neuron: its rows of the up (and gate) projection
and its input column of the down projection.

The loss is the model's own loss from the batch's labels. With ``label_free=True`` the targets are the
model's own predictions: argmax of the logits for sequence classification, the next input token for
causal LMs (padding ignored). Scoring leaves the model as it was (hooks, grads, requires_grad, modes).

Under torch.distributed (torchrun, accelerate) every process scores its own shard of the data and the
raw sums are all-reduced, so every process ends with identical scores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save
from torch import nn
from tqdm.auto import tqdm

from .atomic import atomic_write_bytes
from .gates import attach_gates
from .layouts import Layout, get_layers, get_layout, get_submodule
from .shapes import LayerShape, layer_shape

METHODS = ("gradient", "fisher", "taylor", "l1", "l2", "activation", "random")
GRADIENT_METHODS = ("gradient", "fisher", "taylor")
DATA_METHODS = GRADIENT_METHODS + ("activation",)


# ----------------------------------------------------------------------------- the result


@dataclass
class ImportanceScores:
    """Per-layer scores: `heads[i]` has one score per current query head, `neurons[i]` one per FFN neuron."""

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]
    kv_heads: list[int]  # key/value heads per layer (== query heads without grouped-query attention)
    method: str
    num_batches: int = 0

    @property
    def groups(self) -> list[torch.Tensor]:
        """Scores per key/value group (sum over the group's query heads); query head h is in group h // (heads // kv)."""
        out = []
        for h, kv in zip(self.heads, self.kv_heads):
            out.append(h.reshape(kv, -1).sum(1) if kv else h.new_zeros(0))  # (kv, heads per group) -> (kv,)
        return out

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    def save(self, path: str | os.PathLike) -> None:
        """Write to a safetensors file (atomically: temp file, then os.replace)."""
        tensors = {f"heads.{i}": t.detach().float().cpu().contiguous() for i, t in enumerate(self.heads)}
        tensors.update({f"neurons.{i}": t.detach().float().cpu().contiguous() for i, t in enumerate(self.neurons)})
        metadata = {
            "method": self.method,
            "kv_heads": json.dumps(list(self.kv_heads)),
            "num_layers": str(self.num_layers),
            "num_batches": str(self.num_batches),
        }
        atomic_write_bytes(path, save(tensors, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImportanceScores:
        """Read a file written by `save`."""
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "num_layers" not in meta:
                raise ValueError(f"{path} is not an hf_prune importance file (no num_layers metadata)")
            n = int(meta["num_layers"])
            heads = [f.get_tensor(f"heads.{i}") for i in range(n)]
            neurons = [f.get_tensor(f"neurons.{i}") for i in range(n)]
        return cls(heads, neurons, json.loads(meta["kv_heads"]), meta["method"], int(meta.get("num_batches", 0)))


# ----------------------------------------------------------------------------- per-unit weight sums


def _as_out_in(weight: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """A weight as (out, in): Conv1D stores (in, out)."""
    return weight.t() if conv1d else weight


def _row_sums(values: torch.Tensor, units: int, conv1d: bool) -> torch.Tensor:
    """Sum of a projection's output rows, grouped into `units` consecutive blocks -> (units,)."""
    rows = _as_out_in(values, conv1d) if values.dim() == 2 else values
    return rows.reshape(units, -1).sum(1)  # (units, rows per unit * in) -> (units,)


def _col_sums(values: torch.Tensor, units: int, conv1d: bool) -> torch.Tensor:
    """Sum of a projection's input columns, grouped into `units` consecutive blocks -> (units,)."""
    w = _as_out_in(values, conv1d)  # (out, units * width)
    return w.reshape(w.shape[0], units, -1).sum((0, 2))  # (out, units, width) -> (units,)


def unit_parameters(layer: nn.Module, layout: Layout) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The parameters that make up one layer's heads and neurons, tagged by how they are split into units.

    Returns {"head_rows": ..., "head_cols": ..., "qkv_rows": ..., "neuron_rows": ..., "neuron_cols": ...},
    each a list of (name, parameter); see the module docstring for which weights belong to a unit.
    """
    def params(path: str | None, with_bias: bool = True) -> list[tuple[str, nn.Parameter]]:
        if path is None:
            return []
        module = get_submodule(layer, path)
        out = [(f"{path}.weight", module.weight)]
        if with_bias and getattr(module, "bias", None) is not None:
            out.append((f"{path}.bias", module.bias))
        return out

    head_rows = params(layout.q)
    if not layout.grouped:
        head_rows += params(layout.k) + params(layout.v)
    return {
        "head_rows": head_rows,
        "qkv_rows": params(layout.qkv),
        "head_cols": params(layout.o, with_bias=False),
        "neuron_rows": params(layout.up) + params(layout.gate),
        "neuron_cols": params(layout.down, with_bias=False),
    }


def _unit_sums(layer: nn.Module, layout: Layout, shape: LayerShape, values) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head and per-neuron sums of `values(name, param)` (a tensor shaped like the parameter)."""
    groups = unit_parameters(layer, layout)
    heads = torch.zeros(shape.heads, dtype=torch.float64)
    neurons = torch.zeros(shape.ffn, dtype=torch.float64)
    if shape.heads:
        for name, p in groups["head_rows"]:
            heads += _row_sums(values(name, p), shape.heads, layout.conv1d).double().cpu()
        for name, p in groups["qkv_rows"]:
            v = values(name, p)
            v = _as_out_in(v, layout.conv1d) if v.dim() == 2 else v
            # fused (q | k | v) rows: (3, heads, d * in) -> (heads,)
            heads += v.reshape(3, shape.heads, -1).sum((0, 2)).double().cpu()
        for name, p in groups["head_cols"]:
            heads += _col_sums(values(name, p), shape.heads, layout.conv1d).double().cpu()
    if shape.ffn:
        for name, p in groups["neuron_rows"]:
            neurons += _row_sums(values(name, p), shape.ffn, layout.conv1d).double().cpu()
        for name, p in groups["neuron_cols"]:
            neurons += _col_sums(values(name, p), shape.ffn, layout.conv1d).double().cpu()
    return heads, neurons


# ----------------------------------------------------------------------------- model state and data


@contextmanager
def _scoring_state(model: nn.Module, trainable: set[int]) -> Iterator[None]:
    """Eval mode; only parameters with id in `trainable` require grad; everything restored on exit."""
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    grads = {p: p.grad for p in model.parameters()}
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
            p.grad = None
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = grads[p]


def _prepare(batch, device: torch.device) -> dict:
    if not isinstance(batch, Mapping):
        raise TypeError(f"batches must be dicts of tensors (input_ids, attention_mask, labels, ...), got {type(batch).__name__}")
    out = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    if "label" in out and "labels" not in out:
        out["labels"] = out.pop("label")
    return out


def _loss(model: nn.Module, batch: dict, label_free: bool) -> torch.Tensor:
    """The model's loss on the batch's labels, or on its own predictions when `label_free`."""
    if not label_free:
        if batch.get("labels") is None:
            raise ValueError(
                "a gradient method needs a loss: the batch has no `labels`. Add labels, or pass label_free=True "
                "to use the model's own predictions as targets"
            )
        loss = model(**batch).loss
        if loss is None:
            raise ValueError("the model returned no loss for a batch with labels")
        return loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    if logits.dim() == 3:  # causal LM: (B, T, V); predict token t+1 from tokens <= t
        labels = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        if mask is not None:
            labels = labels.masked_fill(mask == 0, -100)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
    if logits.shape[-1] < 2:
        raise ValueError("label_free=True needs a classifier with at least 2 labels (regression has no own prediction)")
    return F.cross_entropy(logits.float(), logits.detach().argmax(-1))  # (B, C) against its own argmax


def _token_mask(batch: dict, lead: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """Float mask of real tokens shaped `lead`: (B, T), or (B*T,) where a block flattens tokens (OPT's FFN)."""
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2 or mask.numel() != lead.numel():
        return like.new_ones(lead, dtype=torch.float32)
    return mask.reshape(lead).float()


# ----------------------------------------------------------------------------- distributed


def _all_reduce(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum tensors over all processes (no-op without an initialised process group), one flat call."""
    if not (dist.is_available() and dist.is_initialized()) or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1).double() for t in tensors])
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    flat = flat.to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = flat.cpu()
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].reshape(t.shape).to(t.dtype))
        start += t.numel()
    return out


def _is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


# ----------------------------------------------------------------------------- estimators


def _weight_scores(model: nn.Module, layout: Layout, method: str):
    """l1 / l2 norms of every unit's weights."""
    heads, neurons = [], []
    for layer in get_layers(model, layout):
        shape = layer_shape(layer, layout)
        if method == "l1":
            h, n = _unit_sums(layer, layout, shape, lambda name, p: p.detach().abs())
        else:
            h, n = _unit_sums(layer, layout, shape, lambda name, p: p.detach().double() ** 2)
            h, n = h.sqrt(), n.sqrt()
        heads.append(h)
        neurons.append(n)
    return heads, neurons


def _random_scores(shapes: list[LayerShape], seed: int):
    gen = torch.Generator().manual_seed(seed)
    heads = [torch.rand(s.heads, generator=gen, dtype=torch.float64) for s in shapes]
    neurons = [torch.rand(s.ffn, generator=gen, dtype=torch.float64) for s in shapes]
    return heads, neurons


def _data_scores(model, layout, shapes, batches, method: str, label_free: bool, progress: bool = True):
    """Run the data methods; returns (raw head sums, raw neuron sums, counts) before the all-reduce."""
    layers = get_layers(model, layout)
    device = next(model.parameters()).device
    heads = [torch.zeros(s.heads, dtype=torch.float64) for s in shapes]
    neurons = [torch.zeros(s.ffn, dtype=torch.float64) for s in shapes]
    tokens = torch.zeros(len(shapes), 2, dtype=torch.float64)  # tokens seen per layer by (head, neuron) hooks
    n_batches = 0

    taylor_params: list[nn.Parameter] = []
    if method == "taylor":
        for layer in layers:
            for group in unit_parameters(layer, layout).values():
                taylor_params.extend(p for _, p in group)
    taylor_grads = {id(p): torch.zeros_like(p, dtype=torch.float32) for p in taylor_params}

    current: dict = {}

    def observe(kind: str, i: int, x: torch.Tensor) -> None:
        with torch.no_grad():
            if kind == "heads":
                magnitude = x.float().norm(dim=-1)  # (B, T, heads, d) -> (B, T, heads)
            else:
                magnitude = x.float().abs()  # (B, T, ffn), or (B*T, ffn)
            mask = _token_mask(current, magnitude.shape[:-1], magnitude)  # (B, T) or (B*T,)
            sums = (magnitude * mask[..., None]).flatten(0, -2).sum(0).double().cpu()  # (units,)
            col = 0 if kind == "heads" else 1
            (heads if kind == "heads" else neurons)[i] += sums
            tokens[i, col] += mask.sum().double().cpu()

    use_gates = method in ("gradient", "fisher")
    with _scoring_state(model, {id(p) for p in taylor_params}), attach_gates(
        model,
        heads=method != "taylor",
        neurons=method != "taylor",
        requires_grad=use_gates,
        observer=observe if method == "activation" else None,
    ) as gates:
        for batch in tqdm(batches, desc=f"importance ({method})", disable=not (progress and _is_main_process()),
                          leave=False):
            batch = _prepare(batch, device)
            current.clear()
            current.update(batch)
            n_batches += 1
            if method == "activation":
                with torch.no_grad():
                    model(**{k: v for k, v in batch.items() if k != "labels"})
                continue
            loss = _loss(model, batch, label_free)
            if use_gates:
                wrt = gates.heads + gates.neurons
                grads = torch.autograd.grad(loss, wrt, allow_unused=True)
                for i, g in enumerate(grads[: len(shapes)]):
                    if g is not None:
                        heads[i] += (g.abs() if method == "gradient" else g.double() ** 2).double().cpu()
                for i, g in enumerate(grads[len(shapes):]):
                    if g is not None:
                        neurons[i] += (g.abs() if method == "gradient" else g.double() ** 2).double().cpu()
            else:  # taylor: accumulate dL/dw over all batches
                grads = torch.autograd.grad(loss, taylor_params, allow_unused=True)
                for p, g in zip(taylor_params, grads):
                    if g is not None:
                        taylor_grads[id(p)] += g.float()

    if method == "taylor":  # signed per-unit sums of w * dL/dw; abs after the all-reduce
        for i, layer in enumerate(layers):
            h, n = _unit_sums(layer, layout, shapes[i], lambda name, p: p.detach().float() * taylor_grads[id(p)])
            heads[i], neurons[i] = h, n
    return heads, neurons, tokens, n_batches


def compute_importance(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, torch.Tensor]] | None = None,
    method: str = "fisher",
    *,
    label_free: bool = False,
    normalize_heads: bool = False,
    max_batches: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> ImportanceScores:
    """Score every current head and FFN neuron of a supported model (methods in the module docstring).

    dataloader: batches as dicts of tensors (input_ids, attention_mask, token_type_ids, labels); needed
    by gradient, fisher, taylor and activation. label_free: use the model's own predictions as targets.
    normalize_heads: divide each layer's head scores by their L2 norm (Michel et al.). max_batches: stop
    after this many batches (per process). seed: for `random`. progress: show a tqdm bar (main process only).
    """
    if method not in METHODS:
        raise ValueError(f"unknown importance method {method!r}; choose one of {', '.join(METHODS)}")
    layout = get_layout(model)
    shapes = [layer_shape(layer, layout) for layer in get_layers(model, layout)]
    n_batches = 0
    if method == "random":
        heads, neurons = _random_scores(shapes, seed)
    elif method in ("l1", "l2"):
        heads, neurons = _weight_scores(model, layout, method)
    else:
        if dataloader is None:
            raise ValueError(f"method {method!r} needs a dataloader of batches")
        batches = dataloader if max_batches is None else _take(dataloader, max_batches)
        heads, neurons, tokens, n_batches = _data_scores(model, layout, shapes, batches, method, label_free, progress)
        n = len(shapes)
        reduced = _all_reduce(heads + neurons + [tokens, torch.tensor([float(n_batches)], dtype=torch.float64)])
        heads, neurons, tokens, total = reduced[:n], reduced[n:2 * n], reduced[2 * n], reduced[2 * n + 1]
        n_batches = int(total.item())
        if n_batches == 0:
            raise ValueError("the dataloader is empty: importance needs at least one batch")
        if method == "gradient":
            heads = [h / n_batches for h in heads]
            neurons = [x / n_batches for x in neurons]
        elif method == "taylor":
            heads = [h.abs() for h in heads]
            neurons = [x.abs() for x in neurons]
        elif method == "activation":
            heads = [h / tokens[i, 0].clamp_min(1) for i, h in enumerate(heads)]
            neurons = [x / tokens[i, 1].clamp_min(1) for i, x in enumerate(neurons)]
    if normalize_heads:
        heads = [h / (h.norm() + 1e-20) for h in heads]
    return ImportanceScores(
        heads=[h.float() for h in heads],
        neurons=[x.float() for x in neurons],
        kv_heads=[s.kv_heads for s in shapes],
        method=method,
        num_batches=n_batches,
    )


def _take(batches: Iterable, n: int) -> Iterator:
    for i, batch in enumerate(batches):
        if i >= n:
            return
        yield batch
