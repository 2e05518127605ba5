"""`measure_latency_table`: time pruned variants of a model on this machine and fit a `LatencyTable`.

Variants (all made by `prune_model` on copies; the input model itself is the full-depth dense variant):

- for every depth fraction d in `depths` (besides 1.0): round(d * layers) evenly spread layers kept, full widths;
- for every pair (a, b) of fractions in `widths` besides (1, 1), on a copy truncated to the smallest depth:
  a fraction a of every layer's query heads kept (with grouped-query attention the same number is kept in
  every key/value group) and a fraction b of its FFN neurons; a = 0 or b = 0 leaves empty blocks, which is
  what makes the fixed per-block costs identifiable.

Memory: the copies share the input model's embeddings, final norm and head (the same tensors, not copied), and
only the layers they keep are copied, so the extra memory is the variants' layers: at the defaults (depths 1
and 0.25, widths 1, 0.5, 0) about 1.1 times the model's layers (0.25 for the truncated dense variant, about
0.9 for the eight width variants, which are smaller than dense).

Timing: variants are alternated round-robin (A, B, C, A, B, C, ...) so machine noise spreads over all of them;
the median of each variant's `repeats` timed runs (after `warmup` untimed rounds) is its sample. In "decode"
mode each variant's key/value cache of `seq_len` tokens is prefilled once (untimed) and a fresh copy of it
(untimed) serves every timed one-token step, so the cache never grows.
"""

from __future__ import annotations

import copy
import datetime
import inspect
import platform
import time

import torch
from torch import nn

from ..architecture.layouts import get_layers, get_layout
from ..architecture.shapes import layer_shapes
from ..planning.latency_model import LatencyTable, check_workload
from ..surgery.width import prune_model
from .latency import percentile


def _fraction_list(values, name: str, need_one: bool) -> list[float]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"`{name}` must be a list of fractions in [0, 1], got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ValueError(f"`{name}` must hold fractions in [0, 1], got {v!r}")
        out.append(float(v))
    if not out:
        raise ValueError(f"`{name}` is empty: give fractions such as (1.0, 0.5, 0.0)")
    if need_one and 1.0 not in out:
        out.append(1.0)
    return sorted(set(out), reverse=True)


def _check_args(model, mode, batch_size, seq_len, repeats, warmup, num_threads) -> None:
    check_workload(mode, batch_size, seq_len)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats <= 0:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads <= 0):
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    get_layout(model)  # ValueError for an unsupported model
    can_generate = getattr(model, "can_generate", None)
    if mode == "decode" and not (callable(can_generate) and can_generate()):
        raise ValueError(
            f"mode='decode' needs a causal language model with a KV cache; {type(model).__name__} is not one: "
            f"use mode='forward'"
        )


def _kept(n: int, fraction: float) -> int:
    """Units kept out of n at `fraction`: 0 only for fraction 0, at least 1 otherwise."""
    return 0 if fraction == 0 or n == 0 else min(n, max(1, round(fraction * n)))


def _head_request(model: nn.Module, fraction: float) -> dict[int, list[int]]:
    """{layer: heads to remove} keeping `fraction` of each layer's heads (the same number in every KV group)."""
    grouped = get_layout(model).grouped
    request = {}
    for idx, shape in enumerate(layer_shapes(model)):
        if grouped and shape.kv_heads:
            per_group = shape.heads // shape.kv_heads
            keep = _kept(per_group, fraction)
            remove = [h for h in range(shape.heads) if h % per_group >= keep]
        else:
            remove = list(range(_kept(shape.heads, fraction), shape.heads))
        if remove:
            request[idx] = remove
    return request


def _neuron_request(model: nn.Module, fraction: float) -> dict[int, list[int]]:
    request = {}
    for idx, shape in enumerate(layer_shapes(model)):
        remove = list(range(_kept(shape.ffn, fraction), shape.ffn))
        if remove:
            request[idx] = remove
    return request


def _spread(n_layers: int, fraction: float) -> list[int]:
    """Indices of round(fraction * n) layers (at least 1) spread evenly over 0..n-1."""
    keep = max(1, round(fraction * n_layers))
    return sorted({round(i * (n_layers - 1) / max(1, keep - 1)) for i in range(keep)}) if keep > 1 else [0]


def _shallow_copy(model: nn.Module, keep: list[int]) -> nn.Module:
    """A copy with only layers `keep` (copied); every other tensor is shared with `model`, not copied."""
    layers = get_layers(model)
    layer_tensors = {id(t) for layer in layers for t in [*layer.parameters(), *layer.buffers()]}
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()] if id(t) not in layer_tensors}
    memo.update({id(layers[i]): layers[i] for i in range(len(layers)) if i not in set(keep)})  # shared, then dropped
    variant = copy.deepcopy(model, memo)
    drop = [i for i in range(len(layers)) if i not in set(keep)]
    if drop:
        prune_model(variant, layers=drop)
    return variant.eval()


def _variants(model: nn.Module, widths: list[float], depths: list[float]) -> dict[str, nn.Module]:
    n_layers = len(get_layers(model))
    variants: dict[str, nn.Module] = {"dense": model}
    for d in depths:
        if d < 1.0 and len(_spread(n_layers, d)) < n_layers:
            variants[f"depth{d:g}"] = _shallow_copy(model, _spread(n_layers, d))
    probe = _spread(n_layers, min(depths))
    for a in widths:
        for b in widths:
            if (a, b) == (1.0, 1.0):
                continue
            variant = _shallow_copy(model, probe)
            prune_model(variant, heads=_head_request(variant, a), neurons=_neuron_request(variant, b))
            variants[f"heads{a:g}_ffn{b:g}_depth{len(probe)}/{n_layers}"] = variant
    return variants


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(model: nn.Module, batch_size: int, seq_len: int, seed: int) -> dict:
    config = model.config
    vocab = getattr(config, "vocab_size", None) or model.get_input_embeddings().num_embeddings
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=generator).to(device)  # (B, T + 1)
    return {"prompt": ids[:, :seq_len], "next": ids[:, seq_len:], "device": device}


def _step(model: nn.Module, mode: str, inputs: dict):
    """One call to time: a full forward, or one new token per sequence on a copy of the prefilled cache."""
    if mode == "forward":
        prompt = inputs["prompt"]
        return lambda: model(input_ids=prompt, attention_mask=torch.ones_like(prompt))
    mask = torch.ones(inputs["prompt"].shape[0], inputs["prompt"].shape[1] + 1, dtype=torch.long,
                      device=inputs["device"])  # (B, T + 1)
    key = _cache_argument(model)
    return lambda fresh: model(input_ids=inputs["next"], attention_mask=mask, use_cache=True, **{key: fresh})


def _cache_argument(model: nn.Module) -> str:
    """The forward argument that takes a KV cache: `cache` in recent transformers, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _prefill(model: nn.Module, prompt: torch.Tensor):
    """The KV cache after a forward of `prompt` (B, T)."""
    out = model(input_ids=prompt, attention_mask=torch.ones_like(prompt), use_cache=True)
    return out["cache"] if "cache" in out else out["past_key_values"]


def time_round_robin(models: dict[str, nn.Module], *, mode: str = "decode", batch_size: int = 1, seq_len: int = 128,
                     repeats: int = 15, warmup: int = 2, seed: int = 0, progress: bool = True) -> dict[str, list[float]]:
    """Seconds of each timed step per model, the models alternated round-robin (after `warmup` untimed rounds).

    A step is one forward of batch_size x seq_len tokens ("forward") or one new token per sequence on a fresh
    copy of a prefilled seq_len-token KV cache ("decode"; the prefill and the copies are not timed). Runs
    under `torch.inference_mode`; the models should be in eval mode and share one vocabulary.
    """
    from tqdm.auto import tqdm

    check_workload(mode, batch_size, seq_len)
    if not models:
        raise ValueError("`models` is empty: give at least one {name: model}")
    with torch.inference_mode():
        inputs = _inputs(next(iter(models.values())), batch_size, seq_len, seed)
        device = inputs["device"]
        caches = {name: _prefill(m, inputs["prompt"]) for name, m in models.items()} if mode == "decode" else {}
        steps = {name: _step(m, mode, inputs) for name, m in models.items()}
        times: dict[str, list[float]] = {name: [] for name in models}
        bar = tqdm(total=(warmup + repeats) * len(models), desc=f"timing ({mode})", disable=not progress)
        for round_idx in range(warmup + repeats):
            for name in models:  # round-robin
                args = (copy.deepcopy(caches[name]),) if mode == "decode" else ()
                _sync(device)
                start = time.perf_counter()
                steps[name](*args)
                _sync(device)
                elapsed = time.perf_counter() - start
                if round_idx >= warmup:
                    times[name].append(elapsed)
                bar.update(1)
        bar.close()
    return times


def _metadata(model: nn.Module, mode: str, repeats: int, warmup: int, widths, depths) -> dict:
    import transformers

    config = model.config
    shapes = layer_shapes(model)
    return {
        "model_type": config.model_type,
        "hidden_size": getattr(config, "hidden_size", None),
        "num_layers": len(shapes),
        "heads": [s.heads for s in shapes],
        "kv_heads": [s.kv_heads for s in shapes],
        "ffn": [s.ffn for s in shapes],
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": str(next(model.parameters()).device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "repeats": repeats,
        "warmup": warmup,
        "widths": list(widths),
        "depths": list(depths),
    }


def measure_latency_table(
    model: nn.Module,
    *,
    mode: str = "decode",
    batch_size: int = 1,
    seq_len: int = 128,
    widths=(1.0, 0.5, 0.0),
    depths=(1.0, 0.25),
    repeats: int = 15,
    warmup: int = 2,
    num_threads: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> LatencyTable:
    """Time pruned variants of `model` on this machine and fit a `LatencyTable` (see the module docstring).

    mode: "forward" (one forward of batch_size x seq_len tokens) or "decode" (one new token per sequence with a
    KV cache holding seq_len tokens; causal language models only). widths: fractions of heads and of FFN
    neurons per layer (every pair is a variant); depths: fractions of layers kept (1.0 is the model itself).
    The model is left unchanged (eval mode during the measurement, its training flag restored afterwards).
    """
    _check_args(model, mode, batch_size, seq_len, repeats, warmup, num_threads)
    widths = _fraction_list(widths, "widths", need_one=True)
    depths = _fraction_list(depths, "depths", need_one=True)
    if min(depths) == 0:
        raise ValueError("`depths` must be fractions in (0, 1]: a model keeps at least one layer")
    was_training = model.training
    old_threads = torch.get_num_threads()
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        model.eval()
        with torch.no_grad():
            variants = _variants(model, widths, depths)
        times = time_round_robin(variants, mode=mode, batch_size=batch_size, seq_len=seq_len, repeats=repeats,
                                 warmup=warmup, seed=seed, progress=progress)
        samples = []
        for name, variant in variants.items():
            shapes = layer_shapes(variant)
            samples.append({
                "name": name,
                "heads": [s.heads for s in shapes],
                "ffn": [s.ffn for s in shapes],
                "seconds": percentile(times[name], 50),
                "p10": percentile(times[name], 10),
                "p90": percentile(times[name], 90),
            })
        metadata = _metadata(model, mode, repeats, warmup, widths, depths)
        del variants
        return LatencyTable.fit(samples, mode=mode, batch_size=batch_size, seq_len=seq_len, metadata=metadata)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
