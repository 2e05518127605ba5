"""Layer importance: one score per current transformer layer (or per block of `n` consecutive layers).

Every method is one function here and one line in `LAYER_ESTIMATORS`; higher always means more important.
Each reads the hidden states that go into and come out of the layer modules (`get_layers`) through forward
hooks; a layer may return a tensor or a tuple whose first item is the hidden states.

- ``block_influence``: mean over real (non-padding) tokens of 1 - cos(layer input, layer output) (ShortGPT,
  Men et al. 2024).
- ``angular``: mean over real tokens of arccos(cos(input of layer l, output of layer l+n-1)) / pi, one score
  per block start l, so ``layers - n + 1`` scores (Gromov et al. 2024). With n=1 it is the block influence
  of each layer through the monotone map 1 - cos -> arccos(cos) / pi, token by token.
- ``loss``: mean calibration loss with the layer skipped (its output replaced by its input) minus the dense
  loss. One pass over the batches per layer, plus one dense pass: opt-in. It can be negative (skipping helps).
- ``fisher``: sum over batches of (dL/dg)^2 for a scalar gate g on the layer's residual contribution,
  output = input + g * (layer(input) - input) at g = 1: the same loss scale as the fisher head and neuron
  scores of `compute_importance`, so width and depth can be weighed in one plan.

The loss is the model's own (batches need `labels`), or with ``label_free=True`` next-token loss for causal
LMs and the model's own argmax for classifiers (`model_loss`). Sums are all-reduced under torch.distributed.
The model is left as it was (modes, grads, requires_grad, hooks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..architecture.layouts import get_layers
from ..serialization.json_file import JsonFile
from ..utils import eval_mode, execution_device, input_device, is_main_process, prepare_batch, take
from .estimators import frozen_except, model_loss, reduce_batch_sums, token_mask


@dataclass
class LayerScores(JsonFile):
    """One score per current layer (per block of `n` consecutive layers for ``angular``); higher = more important."""

    scores: list[float]
    method: str
    n: int = 1  # block length: scores[l] covers layers l .. l + n - 1
    num_batches: int = 0

    def __len__(self) -> int:
        return len(self.scores)

    def ranking(self) -> list[int]:
        """Layer (block start) indices, least important first."""
        return sorted(range(len(self.scores)), key=lambda i: (self.scores[i], i))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> LayerScores:
        return cls([float(s) for s in data["scores"]], str(data["method"]), int(data.get("n", 1)),
                   int(data.get("num_batches", 0)))



@dataclass
class LayerRun:
    """What a layer estimator may use: the model, its layers, the batches and the options."""

    model: nn.Module
    layers: nn.ModuleList
    batches: Iterable
    method: str
    n: int = 1
    label_free: bool = False
    progress: bool = True

    def iterate(self, what: str = "") -> Iterator[dict]:
        """The batches on the model's input device, behind a progress bar on the main process."""
        device = input_device(self.model)
        desc = f"layer importance ({self.method}{', ' + what if what else ''})"
        for batch in tqdm(self.batches, desc=desc, leave=False, disable=not (self.progress and is_main_process())):
            yield prepare_batch(batch, device)


# ----------------------------------------------------------------------------- hidden states of a layer call


def hidden_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a layer module was called with (first positional argument or `hidden_states=`)."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for key in ("hidden_states", "hidden_state", "x"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    raise ValueError("could not find the hidden states among a layer's inputs")


def hidden_output(output) -> torch.Tensor:
    """A layer's output hidden states: the tensor itself, or the first item of a tuple."""
    return output[0] if isinstance(output, (tuple, list)) else output


def with_hidden_output(output, hidden: torch.Tensor):
    """The layer's output with its hidden states replaced, keeping the tuple structure."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden


@contextmanager
def layer_hooks(layers: nn.ModuleList, make_hook: Callable[[int], Callable]) -> Iterator[None]:
    """Forward hooks (with kwargs) `make_hook(i)` on every layer, removed on exit."""
    handles = []
    try:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(make_hook(i), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _layer_device(layer: nn.Module, fallback: torch.device) -> torch.device:
    """Where the layer computes (its accelerate hook's execution device when it has one), never meta."""
    device = execution_device(layer)
    return device if device.type != "meta" else fallback


def _total_batches(n_batches: int, extra: list[torch.Tensor]) -> tuple[list[torch.Tensor], int]:
    """All-reduce the sums and the batch count in one collective; refuse when no process saw a batch."""
    return reduce_batch_sums([t.double().cpu() for t in extra], n_batches, "layer importance")


# ----------------------------------------------------------------------------- estimators


def _similarity_scores(run: LayerRun, distance: Callable[[torch.Tensor], torch.Tensor]) -> tuple[list[float], int]:
    """Mean over real tokens of distance(cos(input of layer l, output of layer l + n - 1)) for every block start l."""
    blocks = len(run.layers) - run.n + 1
    sums = [torch.zeros((), dtype=torch.float64) for _ in range(blocks)]
    counts = [torch.zeros((), dtype=torch.float64) for _ in range(blocks)]
    inputs: dict[int, torch.Tensor] = {}
    current: dict = {}

    def make_hook(j: int) -> Callable:
        def hook(module, args, kwargs, output):
            if j < blocks:
                inputs[j] = hidden_input(args, kwargs).detach()
            start = j - run.n + 1
            if start >= 0 and start in inputs:
                first, last = inputs.pop(start), hidden_output(output).detach()
                cos = F.cosine_similarity(first.to(last.device, torch.float64), last.double(), dim=-1)
                mask = token_mask(current.get("attention_mask"), last.shape[:-1], last.device, torch.float64)
                per_token = distance(cos.clamp(-1.0, 1.0)) * mask
                sums[start] = sums[start] + per_token.sum().cpu()
                counts[start] = counts[start] + mask.sum().cpu()
        return hook

    n_batches = 0
    with eval_mode(run.model), torch.no_grad(), layer_hooks(run.layers, make_hook):
        for batch in run.iterate():
            current.clear()
            current.update(batch)
            inputs.clear()
            run.model(**{k: v for k, v in batch.items() if k != "labels"})
            n_batches += 1
    inputs.clear()
    (sums, counts), total = _total_batches(n_batches, [torch.stack(sums), torch.stack(counts)])
    return (sums / counts.clamp_min(1)).tolist(), total


def block_influence_scores(run: LayerRun) -> tuple[list[float], int]:
    return _similarity_scores(run, lambda cos: 1.0 - cos)


def angular_scores(run: LayerRun) -> tuple[list[float], int]:
    return _similarity_scores(run, lambda cos: torch.arccos(cos) / math.pi)


def _mean_loss_pass(run: LayerRun, what: str) -> tuple[torch.Tensor, int]:
    total, n_batches = torch.zeros((), dtype=torch.float64), 0
    for batch in run.iterate(what):
        total += model_loss(run.model, batch, run.label_free).detach().double().cpu()
        n_batches += 1
    return total, n_batches


def loss_scores(run: LayerRun) -> tuple[list[float], int]:
    skipped: set[int] = set()

    def make_hook(i: int) -> Callable:
        def hook(module, args, kwargs, output):
            if i in skipped:
                return with_hidden_output(output, hidden_input(args, kwargs))
            return None
        return hook

    sums = []
    with eval_mode(run.model), torch.no_grad(), layer_hooks(run.layers, make_hook):
        dense, n_batches = _mean_loss_pass(run, "dense")
        for i in range(len(run.layers)):
            skipped.clear()
            skipped.add(i)
            loss, seen = _mean_loss_pass(run, f"layer {i + 1}/{len(run.layers)} skipped")
            if seen != n_batches:
                raise ValueError(f"the dataloader gave {n_batches} batches, then {seen}: method 'loss' reads it once "
                                 "per layer, so pass a list or a torch DataLoader")
            sums.append(loss)
    (reduced,), total = _total_batches(n_batches, [torch.stack([dense, *sums])])
    return ((reduced[1:] - reduced[0]) / total).tolist(), total


def fisher_layer_scores(run: LayerRun) -> tuple[list[float], int]:
    fallback = input_device(run.model)
    gates = [torch.ones((), device=_layer_device(layer, fallback), requires_grad=True) for layer in run.layers]

    def make_hook(i: int) -> Callable:
        def hook(module, args, kwargs, output):
            out, inp = hidden_output(output), hidden_input(args, kwargs)
            g = gates[i]
            # value: exactly `out` (g - g == 0); gradient: that of input + g * (out - input) at g = 1
            return with_hidden_output(output, out + (g - g.detach()).to(out.dtype) * (out - inp.to(out.device)))
        return hook

    sums = [torch.zeros((), dtype=torch.float64, device=g.device) for g in gates]
    n_batches = 0
    with ExitStack() as stack:
        stack.enter_context(frozen_except(run.model, []))
        stack.enter_context(layer_hooks(run.layers, make_hook))
        for batch in run.iterate():
            grads = torch.autograd.grad(model_loss(run.model, batch, run.label_free), gates, allow_unused=True)
            for total, grad in zip(sums, grads):
                if grad is not None:
                    total += grad.double() ** 2
            n_batches += 1
    (reduced,), total = _total_batches(n_batches, [torch.stack([s.cpu() for s in sums])])
    return reduced.tolist(), total


@dataclass(frozen=True)
class LayerEstimator:
    """A layer-importance method: its function, and whether it scores blocks of `n` layers."""

    function: Callable[[LayerRun], tuple[list[float], int]]
    blocks: bool = False
    passes_per_layer: bool = False  # reads the dataloader once per layer (needs a re-iterable one)


LAYER_ESTIMATORS: dict[str, LayerEstimator] = {
    "block_influence": LayerEstimator(block_influence_scores),
    "angular": LayerEstimator(angular_scores, blocks=True),
    "loss": LayerEstimator(loss_scores, passes_per_layer=True),
    "fisher": LayerEstimator(fisher_layer_scores),
}
LAYER_METHODS = tuple(LAYER_ESTIMATORS)


class _Reiterable:
    """At most `limit` batches of a re-iterable dataloader, afresh on every iteration."""

    def __init__(self, batches: Iterable, limit: int | None):
        self.batches, self.limit = batches, limit

    def __iter__(self) -> Iterator:
        return iter(take(self.batches, self.limit))


def compute_layer_importance(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, torch.Tensor]],
    method: str = "block_influence",
    *,
    n: int = 1,
    label_free: bool = False,
    max_batches: int | None = None,
    progress: bool = True,
) -> LayerScores:
    """Score every current layer of a supported model (methods in `hf_prune.importance.layers`).

    dataloader: batches as dicts of tensors (input_ids, attention_mask, labels); ``loss`` reads it once per
    layer, so it must be re-iterable (a list or a torch DataLoader). n: block length for ``angular`` (one score
    per block start). label_free: the model's own predictions as targets (``loss``, ``fisher``). max_batches:
    stop after this many batches per pass (per process). progress: tqdm bars on the main process.
    """
    estimator = LAYER_ESTIMATORS.get(method)
    if estimator is None:
        raise ValueError(f"unknown layer importance method {method!r}; choose one of {', '.join(LAYER_METHODS)}")
    if dataloader is None:
        raise ValueError(f"layer importance method {method!r} needs a dataloader of batches")
    layers = get_layers(model)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(layers):
        raise ValueError(f"n must be an integer from 1 to the number of layers ({len(layers)}), got {n!r}")
    if n != 1 and not estimator.blocks:
        blocks = ", ".join(repr(name) for name, e in LAYER_ESTIMATORS.items() if e.blocks)
        raise ValueError(f"n (block length) is only for {blocks}; use n=1 with {method!r}")
    if estimator.passes_per_layer and iter(dataloader) is dataloader:
        raise ValueError(f"method {method!r} reads the batches once per layer: pass a list or a torch DataLoader, "
                         "not a one-shot iterator or generator")
    batches = _Reiterable(dataloader, max_batches)
    run = LayerRun(model, layers, batches, method, n=n, label_free=label_free, progress=progress)
    scores, num_batches = estimator.function(run)
    return LayerScores([float(s) for s in scores], method, n=n, num_batches=num_batches)
