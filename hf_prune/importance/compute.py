"""`compute_importance`: score every attention head and FFN neuron with one of the registered estimators.

The estimators and their definitions are in `hf_prune.importance.estimators`. The loss is the model's own
loss from the batch's labels; with ``label_free=True`` the targets are the model's own predictions: argmax
of the logits for sequence classification, the next input token for causal LMs (padding ignored). Scoring
leaves the model as it was (hooks, grads, requires_grad, modes).

Under torch.distributed (torchrun, accelerate) every process scores its own shard of the data and the
raw sums are all-reduced, so every process ends with identical scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..architecture.layouts import get_layers, get_layout, get_stacks
from ..architecture.shapes import layer_shape
from ..architecture.stacks import FlatView
from ..utils import take
from .estimators import ESTIMATORS, METHODS, ScoringRun
from .layers import LAYER_METHODS, compute_layer_importance
from .scores import ImportanceScores


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
    layer_method: str | None = None,
) -> ImportanceScores:
    """Score every current head and FFN neuron of a supported model (methods in `hf_prune.importance.estimators`).

    dataloader: batches as dicts of tensors (input_ids, attention_mask, token_type_ids, labels; pixel_values for
    vision models); needed by gradient, fisher, taylor and activation. label_free: use the model's own predictions as targets.
    normalize_heads: divide each layer's head scores by their L2 norm (Michel et al.). max_batches: stop
    after this many batches (per process). seed: for `random`. progress: show a tqdm bar (main process only).
    Models with several layer stacks (T5, BART, CLIP): one pass scores every stack and every decoder layer's
    cross-attention heads; the result's `.stacks` holds one `ImportanceScores` per stack (with `.cross_heads`).
    layer_method: also score every layer (`compute_layer_importance`, n=1) on the same batches into `.layers`;
    use "fisher" with method="fisher" to weigh layers against heads and neurons in one plan.
    """
    estimator = ESTIMATORS.get(method)
    if estimator is None:
        raise ValueError(f"unknown importance method {method!r}; choose one of {', '.join(METHODS)}")
    if get_stacks(model) is not None:  # every stack and every cross-attention block, scored in one pass
        if layer_method is not None:
            raise ValueError("layer_method is not supported on models with several layer stacks yet: drop it")
        flat = FlatView(model)
        scores = compute_importance(flat, dataloader, method, label_free=label_free, normalize_heads=normalize_heads,
                                    max_batches=max_batches, seed=seed, progress=progress)
        return ImportanceScores.from_flat(scores, flat.keys)
    layout = get_layout(model)
    shapes = [layer_shape(layer, layout) for layer in get_layers(model, layout)]
    if estimator.needs_data and dataloader is None:
        raise ValueError(f"method {method!r} needs a dataloader of batches")
    if layer_method is not None:
        if layer_method not in LAYER_METHODS:
            raise ValueError(f"unknown layer importance method {layer_method!r}; choose one of "
                             f"{', '.join(LAYER_METHODS)}")
        if dataloader is None or iter(dataloader) is dataloader:
            raise ValueError("layer_method reads the batches again after the head/neuron scores: pass a list or a "
                             "torch DataLoader, not None, a one-shot iterator or a generator")
    batches = take(dataloader, max_batches) if dataloader is not None else None
    run = ScoringRun(model, layout, shapes, batches, method, label_free=label_free, seed=seed, progress=progress)
    result = estimator.function(run)
    heads = result.heads
    if normalize_heads:
        heads = [h / (h.norm() + 1e-20) for h in heads]
    layers = None
    if layer_method is not None:
        layers = compute_layer_importance(model, dataloader, layer_method, label_free=label_free,
                                          max_batches=max_batches, progress=progress).scores
    return ImportanceScores(
        heads=[h.float() for h in heads],
        neurons=[x.float() for x in result.neurons],
        kv_heads=[s.kv_heads for s in shapes],
        method=method,
        num_batches=result.num_batches,
        layers=layers,
    )
