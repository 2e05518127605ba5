"""Wall-clock latency of forward passes, with several models alternated in one process.

Timing models one after the other lets CPU frequency, other processes and cache state drift between
them; alternating them round-robin (A, B, A, B, ...) exposes every model to the same conditions, so
ratios of the medians are meaningful even on a noisy machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one model's forward pass over `batch_size` sequences of `seq_len` tokens."""

    median_s: float
    p10_s: float
    p90_s: float
    throughput: float  # sequences per second at the median latency
    batch_size: int
    seq_len: int
    repeats: int


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, linearly interpolated between order statistics."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _vocab_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    if size is None and hasattr(model, "get_input_embeddings"):
        size = model.get_input_embeddings().num_embeddings
    if not size:
        raise ValueError(f"cannot tell the vocabulary size of {type(model).__name__}")
    return int(size)


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_args(models: dict, batch_size, seq_len, repeats, warmup, num_threads) -> None:
    """One ValueError for the first bad argument of `measure_latency`."""
    if not models:
        raise ValueError("`models` is empty: give at least one {name: model}")
    for name, value in {"batch_size": batch_size, "seq_len": seq_len, "repeats": repeats}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads <= 0):
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}")


def _eos_token(models: dict[str, nn.Module]) -> int | None:
    """The end-of-sequence id every encoder-decoder among `models` needs once per row (BART's and T5's
    classification heads pool the hidden state at it); None when no model is an encoder-decoder."""
    ids = {getattr(m.config, "eos_token_id", None) for m in models.values()
           if getattr(getattr(m, "config", None), "is_encoder_decoder", False)}
    eos = ids.pop() if len(ids) == 1 else None
    return eos if isinstance(eos, int) else None


def _shared_inputs(models: dict[str, nn.Module], batch_size: int, seq_len: int, seed: int) -> dict[str, dict]:
    """The same random `input_ids` (below the smallest vocabulary) and all-ones mask, on each model's device;
    for encoder-decoders each row ends with the one end-of-sequence token it has."""
    vocab = min(_vocab_size(m) for m in models.values())
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (batch_size, seq_len), generator=generator)  # (B, T)
    eos = _eos_token(models)
    if eos is not None:
        input_ids[input_ids == eos] = (eos + 1) % vocab
        input_ids[:, -1] = eos
    inputs = {}
    for name, model in models.items():
        device = _device(model)
        inputs[name] = {
            "input_ids": input_ids.to(device),  # (B, T)
            "attention_mask": torch.ones_like(input_ids, device=device),  # (B, T)
        }
    return inputs


def _time_round_robin(models: dict[str, nn.Module], inputs: dict[str, dict], rounds: int,
                      warmup: int) -> dict[str, list[float]]:
    """Seconds of each timed forward pass per model, alternating the models in every round (first `warmup` untimed)."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for round_idx in range(rounds):
            for name, model in models.items():  # round-robin: A, B, A, B, ...
                device = _device(model)
                _sync(device)
                start = time.perf_counter()
                model(**inputs[name])
                _sync(device)
                elapsed = time.perf_counter() - start
                if round_idx >= warmup:
                    times[name].append(elapsed)
    return times


def _timed(models: dict[str, nn.Module], inputs: dict[str, dict], warmup: int, repeats: int,
           num_threads: int | None) -> dict[str, list[float]]:
    """`_time_round_robin` in eval mode (and `num_threads`), restoring training flags and threads afterwards."""
    was_training = {name: model.training for name, model in models.items()}
    old_threads = torch.get_num_threads()
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        for model in models.values():
            model.eval()
        return _time_round_robin(models, inputs, warmup + repeats, warmup)
    finally:
        torch.set_num_threads(old_threads)
        for name, model in models.items():
            model.train(was_training[name])


def _stats(samples: list[float], batch_size: int, seq_len: int, repeats: int) -> LatencyStats:
    median = percentile(samples, 50)
    return LatencyStats(
        median_s=median,
        p10_s=percentile(samples, 10),
        p90_s=percentile(samples, 90),
        throughput=batch_size / median,
        batch_size=batch_size,
        seq_len=seq_len,
        repeats=repeats,
    )


def measure_latency(
    models: dict[str, nn.Module],
    batch_size: int = 8,
    seq_len: int = 128,
    repeats: int = 20,
    warmup: int = 3,
    num_threads: int | None = None,
    seed: int = 0,
) -> dict[str, LatencyStats]:
    """Time forward passes of `models`, alternated round-robin in this process; {name: LatencyStats}.

    Every model sees the same random `input_ids` (drawn below the smallest vocabulary) with an
    all-ones attention mask, under `torch.inference_mode` and in eval mode (training mode is
    restored afterwards). `warmup` untimed rounds come first. `num_threads`, when given, sets
    `torch.set_num_threads` for the measurement and restores the previous value afterwards.
    """
    _check_args(models, batch_size, seq_len, repeats, warmup, num_threads)
    inputs = _shared_inputs(models, batch_size, seq_len, seed)
    times = _timed(models, inputs, warmup, repeats, num_threads)
    return {name: _stats(samples, batch_size, seq_len, repeats) for name, samples in times.items()}
