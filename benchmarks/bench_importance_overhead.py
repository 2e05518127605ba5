"""Overhead of gradient-based importance scoring over a plain forward + backward pass, on the real MiniLM.

Run:  .venv/bin/python benchmarks/bench_importance_overhead.py [--batches 4 --batch-size 8 --seq 64 --repeats 5]

Writes benchmarks/results/importance_overhead.json (`--out`): the medians, every timing, the CPU that other
processes used during the timed rounds, the command and the machine.

Both sides see the same batches of real movie-review sentences, in eval mode (dropout off), in one
process; runs alternate (baseline, gradient, fisher, taylor, baseline, ...) and medians are reported.
The baseline is `model(**batch).loss.backward()` with every parameter requiring grad, which is what a
training step costs before the optimizer. The target is gradient scoring <= 1.15 x baseline.
Scoring freezes the weights (only the gates need gradients), so it skips the weight gradients;
"fwd+bwd with gates" keeps them, to show the gates' own cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import hf_prune_assets as assets
from hf_prune.architecture.gates import attach_gates
from hf_prune.importance import compute_importance
from hf_prune.serialization.atomic import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import OtherLoad, command_line, machine_info, minilm_label, now_utc  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "importance_overhead.json"
TARGET = 1.15  # gradient scoring / forward+backward


def make_batches(n: int, batch_size: int, seq: int) -> list[dict]:
    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_dir())
    train, _ = assets.movie_reviews()
    batches = []
    for i in range(n):
        rows = slice(i * batch_size, (i + 1) * batch_size)
        enc = tokenizer(train["sentence"][rows], padding="max_length", truncation=True, max_length=seq,
                        return_tensors="pt")
        enc["labels"] = torch.tensor(train["label"][rows])
        batches.append(dict(enc))
    return batches


def forward_backward(model, batches) -> None:
    for batch in batches:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)


def forward_backward_gated(model, batches) -> None:
    """The baseline with the importance gates attached (all weights still require grad): the hooks' own cost."""
    with attach_gates(model) as gates:
        for batch in batches:
            model(**batch).loss.backward()
        gates.zero_grad()
    model.zero_grad(set_to_none=True)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = AutoModelForSequenceClassification.from_pretrained(assets.minilm_dir(), num_labels=2).eval()
    batches = make_batches(args.batches, args.batch_size, args.seq)
    runs = {
        "forward+backward": lambda: forward_backward(model, batches),
        "fwd+bwd with gates": lambda: forward_backward_gated(model, batches),
        "gradient": lambda: compute_importance(model, batches, "gradient", progress=False),
        "fisher": lambda: compute_importance(model, batches, "fisher", progress=False),
        "taylor": lambda: compute_importance(model, batches, "taylor", progress=False),
    }
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    with OtherLoad() as load:
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn))

    base = statistics.median(times["forward+backward"])
    print(f"MiniLM-L6 (real weights), {args.batches} batches x {args.batch_size} x {args.seq} tokens, "
          f"{args.threads} threads, {args.repeats} alternating repeats (medians)")
    print(f"{'run':<18} {'median s':>9} {'ratio':>7}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<18} {median:9.3f} {median / base:7.3f}")
    ratio = statistics.median(times["gradient"]) / base
    print(f"gradient scoring / forward+backward = {ratio:.3f} (target <= {TARGET}): "
          f"{'PASS' if ratio <= TARGET else 'FAIL'}")
    if load.cores is not None:
        print(f"other processes used {load.cores:.2f} cores during the timed rounds")
    result = {
        "benchmark": "bench_importance_overhead",
        "date": now_utc(),
        "command": command_line("benchmarks/bench_importance_overhead.py", argv),
        "model": minilm_label() + ", AutoModelForSequenceClassification num_labels=2, eval mode",
        "batches": args.batches, "batch_size": args.batch_size, "seq_len": args.seq, "repeats": args.repeats,
        "threads": args.threads,
        "rows": [{"run": name, "median_s": statistics.median(values), "ratio": statistics.median(values) / base,
                  "times_s": values} for name, values in times.items()],
        "gradient_ratio": ratio, "target": TARGET, "pass": ratio <= TARGET,
        "other_load_cores": load.cores,  # CPU used by other processes during the timed rounds
        "machine": machine_info(args.threads),
    }
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
