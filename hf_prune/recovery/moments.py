"""Calibration statistics: second moments of the inputs of every layer's output and down projections.

With X a projection's inputs over the calibration tokens (padding excluded), the moment is
[X 1]^T [X 1] (float64, (F + 1, F + 1), a constant feature last), so a bias can be solved for too.
Both recovery (`mask_tuning`) and re-selection (`reselect`) work from these statistics alone.

A plan that also removes whole layers needs no statistics for them: `removed_layers` validates the plan's
`layers` against the model, and `calibration_moments(..., skip_layers=...)` leaves None in their place.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from ..architecture.layouts import Layout, get_layers, get_layout, get_stacks, get_submodule
from ..architecture.shapes import layer_shape
from ..architecture.stacks import FlatView, mask_name
from ..surgery.depth import validate_layer_request
from ..utils import all_reduce, batch_rows, eval_mode, input_device, is_main_process, prepare_batch, take


def removed_layers(plan, model: nn.Module) -> list[int]:
    """The layers `plan` removes (sorted), validated against `model` before anything is computed or changed.

    ValueError for indices `drop_layers` refuses, and for a plan that lists heads or neurons of a layer it
    also removes (as `prune_model` refuses them).
    """
    return validate_layer_request(plan.layers, len(get_layers(model)), set(plan.heads) | set(plan.neurons))


PRODUCT_ROWS = 4096  # at most this many rows of X^T X are computed at once (the work space beside the store)


def accumulate_moment(store: torch.Tensor | None, x: torch.Tensor, mask: torch.Tensor | None,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Add [X 1]^T [X 1] of a projection's inputs `x` (..., F), over the real tokens of `mask` when it has one entry
    per token, to `store` ((F + 1, F + 1) of `dtype` on x's device; a new one when None) and return it.

    X^T X is accumulated in place, the column sums and the token count go to the last row and column: no augmented
    copy of X is made. One batch's products are computed in float32 (float64 only for float64 inputs), twice as
    fast as float64 on CPU and as precise as the inputs, and added to the `dtype` store: a float64 store sums the
    batches in float64. X^T X is symmetric: only its upper triangle is computed, in blocks of rows, and each
    block's transpose is copied below the diagonal (about 60% of the full product's work)."""
    flat = x.detach().reshape(-1, x.shape[-1])  # (B*T, F)
    if mask is not None and mask.numel() == flat.shape[0]:
        flat = flat[mask.reshape(-1).to(flat.device).bool()]  # (N, F): real tokens only
    flat = flat.to(torch.float64 if flat.dtype == torch.float64 else torch.float32)
    f = flat.shape[1]
    if store is None:
        store = torch.zeros(f + 1, f + 1, dtype=dtype, device=flat.device)
    rows = min(PRODUCT_ROWS, max(256, -(-f // 4)))  # 4 blocks of rows at MiniLM / SmolLM2 widths
    for a in range(0, f, rows):
        b = min(a + rows, f)
        upper = store[a:b, a:f]  # (R, F - a): this block's rows, from the diagonal on
        if flat.dtype == dtype:
            upper.addmm_(flat[:, a:b].t(), flat[:, a:])
        else:
            upper += flat[:, a:b].t() @ flat[:, a:]  # (R, F - a) in float32, added in the store's dtype
        store[b:f, a:b] = store[a:b, b:f].t()  # below the diagonal: the transpose
    sums = flat.sum(0).to(dtype)  # (F,)
    store[:f, f] += sums
    store[f, :f] += sums
    store[f, f] += flat.shape[0]
    return store


class MomentCollector:
    """Forward hooks that add [X 1]^T [X 1] of every layer's output- and down-projection inputs (real tokens only)
    on each forward of the model, whoever runs it: `calibration_moments` runs its own pass, `prune_retrain_free(...,
    one_pass=True)` lets the scoring pass run it. Use as a context manager; `result()` afterwards."""

    def __init__(self, model, layout: Layout | None = None, skip: Collection[int] = ()):
        self.model, self.layout = model, layout or get_layout(model)
        shapes = [None if i in skip else layer_shape(layer, self.layout)
                  for i, layer in enumerate(get_layers(model, self.layout))]
        self.o = [None if s is None else zero_moment(s.heads * s.head_dim) for s in shapes]
        self.down = [None if s is None else zero_moment(s.ffn) for s in shapes]
        self.rows = 0  # samples the model ran on while collecting (a batch run in pieces counts once)
        self._inputs: dict = {}  # keyword inputs of the current forward: the padding masks
        self._handles: list = []

    def _hook_for(self, store: list, i: int):
        def hook(module, args):
            name = mask_name(self.model, i)  # a FlatView entry: its stack's own mask
            mask = self._inputs.get(name) if name else None
            if args[0].device == store[i].device:  # in place, as the layer-by-layer path accumulates
                accumulate_moment(store[i], args[0], mask)
            else:
                store[i] += accumulate_moment(None, args[0], mask).cpu()  # (F + 1, F + 1)
        return hook

    def _on_forward(self, module, args, kwargs):
        self._inputs = kwargs
        self.rows += batch_rows(kwargs) or (batch_rows({"input_ids": args[0]}) if args else 0)

    def __enter__(self) -> MomentCollector:
        root = self.model if isinstance(self.model, nn.Module) else self.model.model  # a FlatView: its model
        self._handles.append(root.register_forward_pre_hook(self._on_forward, with_kwargs=True))
        for i, layer in enumerate(get_layers(self.model, self.layout)):
            if self.o[i] is not None:
                self._handles.append(get_submodule(layer, self.layout.o).register_forward_pre_hook(
                    self._hook_for(self.o, i)))
                self._handles.append(get_submodule(layer, self.layout.down).register_forward_pre_hook(
                    self._hook_for(self.down, i)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._inputs = [], {}

    def result(self) -> tuple[list, list]:
        """(o_moments, down_moments) summed over every process; ValueError when no forward ran anywhere."""
        collected = [m for m in self.o + self.down if m is not None]
        reduced = iter(all_reduce(collected + [torch.tensor([float(self.rows)], dtype=torch.float64)]))
        o_moments = [None if m is None else next(reduced) for m in self.o]  # same order as `collected`
        down_moments = [None if m is None else next(reduced) for m in self.down]
        if next(reduced).item() == 0:
            raise ValueError("the calibration dataloader is empty: recovery needs at least one batch")
        return o_moments, down_moments


def zero_moment(width: int, device=None) -> torch.Tensor:
    """An empty float64 store for [X 1]^T [X 1] of inputs of `width` features: (width + 1, width + 1)."""
    return torch.zeros(width + 1, width + 1, dtype=torch.float64, device=device)


def _input_second_moments(model: nn.Module, layout: Layout, batches: Iterable,
                          skip: Collection[int] = ()) -> tuple[list, list]:
    """[X 1]^T [X 1] of the inputs X of every layer's output and down projections, over real tokens.

    Layers in `skip` get no hooks and None in place of their moments."""
    device = input_device(model)
    with MomentCollector(model, layout, skip) as collector, eval_mode(model), torch.no_grad():
        for batch in tqdm(batches, desc="calibration statistics", disable=not is_main_process(), leave=False):
            batch = prepare_batch(batch, device)
            batch.pop("labels", None)
            model(**batch)
    return collector.result()


def check_moments(moments, model: nn.Module, removed: Collection[int] = ()) -> None:
    """ValueError unless `moments` is (o_moments, down_moments) with one square matrix per layer of `model`,
    sized for the layer's current widths (heads * head_dim + 1 and ffn + 1). Layers in `removed` (about to
    be removed by a plan) are not checked and may hold None."""
    layout = get_layout(model)
    layers = get_layers(model, layout)
    if not isinstance(moments, (tuple, list)) or len(moments) != 2 or any(
            not isinstance(m, (tuple, list)) or len(m) != len(layers) for m in moments):
        raise ValueError("the moments do not match the model's layers: pass (o_moments, down_moments) from "
                         "calibration_moments(model, ...)")
    for i, (layer, o, down) in enumerate(zip(layers, *moments)):
        if i in removed:
            continue
        s = layer_shape(layer, layout)
        for m, size in ((o, s.heads * s.head_dim + 1), (down, s.ffn + 1)):
            if not isinstance(m, torch.Tensor) or tuple(m.shape) != (size, size):
                raise ValueError("the moments do not match the model's widths: use calibration_moments(model, ...) "
                                 "on the model you pass")


def calibration_moments(model: nn.Module, dataloader: Iterable[Mapping[str, torch.Tensor]],
                        max_batches: int | None = None, *, skip_layers: Collection[int] = ()) -> tuple[list, list]:
    """[X 1]^T [X 1] of every layer's output- and down-projection inputs on the calibration batches (dense model).

    Returns (o_moments, down_moments), one (F + 1, F + 1) float64 matrix per layer. Compute once and reuse
    for several plans with `apply_mask_tuning` and `reselect_units` (the moments do not depend on the plan).
    This holds every layer's statistics at once. skip_layers: layers whose statistics are not collected
    (None in their place), for instance the layers a plan removes; such moments serve only plans that
    remove those layers.

    Models with several layer stacks (T5, BART, CLIP): one matrix per entry of their `FlatView` (every stack's
    layers, then every decoder layer's cross-attention), each over its own stack's real tokens.
    """
    skip = frozenset(int(i) for i in skip_layers)
    if get_stacks(model) is not None:
        if skip:
            raise ValueError("skip_layers is not supported on models with several layer stacks yet")
        model = FlatView(model)
    return _input_second_moments(model, get_layout(model), take(dataloader, max_batches), skip)
