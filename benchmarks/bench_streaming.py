"""One-pass vs layer-by-layer retrain-free recovery on SmolLM2-135M: perplexity, peak memory, wall time (issue 15).

Model, text and windows as bench_perplexity.py (SmolLM2-135M float32, WikiText-2 windows of 512 tokens, perplexity
on the first `--eval-windows` test windows). Method: its best retrain-free row at 20% of the layer parameters
(fisher+params+weights+reselect, 128 statistics windows): fisher scores on the slice's `--calib-windows` windows,
`plan_from_params(params_reduction=0.2)`, units re-selected (`reselect_units`), kept weights re-solved. The same
plan (per slice) is recovered three ways from the same `--moment-windows` statistics windows:

- ``one-pass``: `calibration_moments` (every layer's statistics at once) + `reselect_units` + `apply_mask_tuning`;
- ``streaming-dense``: `stream_recover(mode="dense", reselect=True)` (must give the one-pass perplexity within 0.5%);
- ``streaming-sequential``: `stream_recover(mode="sequential", reselect=True)`.

Each (variant, slice) runs in a fresh subprocess: peak memory = highest RSS sampled every millisecond during the
recovery call (or the process's ru_maxrss when the call raised it) minus the RSS just before it, with glibc's
mmap threshold fixed (MALLOC_MMAP_THRESHOLD_=65536) so freed large blocks go back to the system and RSS follows
live memory. Wall time is the recovery call's. Finished runs are cached in `cache/streaming_runs.json` (plans in
`cache/streaming_plan_<slice>.json`), so a rerun resumes.

    .venv/bin/python benchmarks/bench_streaming.py --quick   # smoke run (4 layers, tiny windows), under cache/quick
    .venv/bin/python benchmarks/bench_streaming.py           # -> results/streaming.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from memory import PeakRSS, rss  # noqa: E402

VARIANTS = ("one-pass", "streaming-dense", "streaming-sequential")
def setting(args) -> str:
    return (f"calib {args.calib_windows}|stats {args.moment_windows}|eval {args.eval_windows}|window {args.window}|"
            f"layers {args.layers}|params {args.params_reduction}")


def load(args):
    """(dense model, eval batches, scoring batches, statistics batches) of slice `args.slice`."""
    from bench_perplexity import as_batches

    from hf_prune import drop_layers
    from hf_prune_assets import load_smollm2, wikitext2

    dense, tokenizer = load_smollm2()
    if args.layers:
        drop_layers(dense, list(range(args.layers, len(dense.model.layers))))
    dense.eval()

    def windows(text, n, start=0):
        need = (start + n) * args.window
        ids = tokenizer(text[: need * 8], return_tensors="pt").input_ids[0]
        return [ids[(start + k) * args.window:(start + k + 1) * args.window] for k in range(n)]

    eval_b = as_batches(windows(wikitext2("test"), args.eval_windows), 2)
    extra = max(args.moment_windows - args.calib_windows, 0)
    train = windows(wikitext2("train"), args.slices * (args.calib_windows + extra))
    k = args.slice
    scoring = train[k * args.calib_windows:(k + 1) * args.calib_windows]
    more = train[args.slices * args.calib_windows:][k * extra:(k + 1) * extra]
    return dense, eval_b, as_batches(scoring, 1), as_batches(scoring + more, 1)


def one(args) -> dict:
    """One (variant, slice) run in this process -> its record."""
    from bench_perplexity import perplexity

    from hf_prune import (
        PruningPlan,
        apply_mask_tuning,
        calibration_moments,
        compute_importance,
        count_parameters,
        plan_from_params,
        reselect_units,
        stream_recover,
    )

    torch.set_num_threads(args.threads)
    model, eval_b, scoring, stats = load(args)
    plan_path = args.cache / f"streaming_plan_{args.slice}.json"
    cached = json.loads(plan_path.read_text()) if plan_path.exists() else {}
    if cached.get("setting") == setting(args):
        plan = PruningPlan.from_dict(cached["plan"])
    else:
        scores = compute_importance(model, scoring, "fisher", seed=args.slice, progress=False)
        plan = plan_from_params(scores, model, params_reduction=args.params_reduction)
        from hf_prune.serialization.atomic import atomic_write_json

        atomic_write_json(plan_path, {"setting": setting(args), "plan": plan.to_dict()})
    dense_params = count_parameters(model, layers_only=True)
    before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    before = rss()
    sampler = PeakRSS()
    start = time.perf_counter()
    if args.variant == "one-pass":
        moments = calibration_moments(model, stats)
        chosen = reselect_units(model, plan, moments)
        apply_mask_tuning(model, chosen, moments, reconstruct="weights")
        del moments
    else:
        mode = args.variant.split("-")[1]
        stream_recover(model, plan, stats, mode=mode, reconstruct="weights", reselect=True)
    seconds = time.perf_counter() - start
    sampler.stop()
    after_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = max(sampler.peak, after_max if after_max > before_max else 0) - before
    return {"variant": args.variant, "slice": args.slice, "perplexity": perplexity(model, eval_b),
            "peak_extra_mb": peak / 2**20, "seconds": seconds, "statistics_windows": len(stats),
            "params_removed_actual": 1 - count_parameters(model, layers_only=True) / dense_params}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run; writes under <cache>/quick")
    p.add_argument("--slices", type=int, default=3)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--calib-windows", type=int, default=4)
    p.add_argument("--moment-windows", type=int, default=128)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--layers", type=int, default=0, help="keep only the first N layers (0: all; --quick: 4)")
    p.add_argument("--params-reduction", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--note", default="", help="free text recorded in setup (e.g. 'shared, other jobs running')")
    p.add_argument("--cache", type=Path, default=HERE / "cache")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one run, JSON on stdout
    p.add_argument("--slice", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.cache = args.results = args.cache / "quick"
        args.slices, args.eval_windows, args.calib_windows, args.moment_windows = 1, 1, 1, 2
        args.window, args.layers = 64, args.layers or 4
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.variant is not None:
        print(json.dumps(one(args)))
        return

    from provenance import command_line, machine_info, now_utc

    from hf_prune.serialization.atomic import atomic_write_json

    runs_path = args.cache / "streaming_runs.json"
    runs = json.loads(runs_path.read_text()) if runs_path.exists() else {}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(HERE.parent))
    forwarded = ["--slices", str(args.slices), "--eval-windows", str(args.eval_windows), "--calib-windows",
                 str(args.calib_windows), "--moment-windows", str(args.moment_windows), "--window", str(args.window),
                 "--layers", str(args.layers), "--params-reduction", str(args.params_reduction), "--threads",
                 str(args.threads), "--cache", str(args.cache)]
    for k in range(args.slices):
        for variant in VARIANTS:
            key = f"{variant}|{k}|{setting(args)}"
            if key in runs:
                continue
            out = subprocess.run([sys.executable, __file__, *forwarded, "--variant", variant, "--slice", str(k)],
                                 env=env, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{variant} slice {k} failed:\n{out.stderr[-3000:]}")
            runs[key] = json.loads(out.stdout.strip().splitlines()[-1])
            atomic_write_json(runs_path, runs)
            r = runs[key]
            print(f"slice {k} {variant:>21}: perplexity {r['perplexity']:.3f}, peak +{r['peak_extra_mb']:.0f} MB, "
                  f"{r['seconds']:.1f} s", flush=True)
    mine = [r for key, r in runs.items() if key.endswith(setting(args))]
    rows = []
    for variant in VARIANTS:
        rs = sorted((r for r in mine if r["variant"] == variant), key=lambda r: r["slice"])
        rows.append({"variant": variant, "perplexity": statistics.mean(r["perplexity"] for r in rs),
                     "perplexity_runs": [r["perplexity"] for r in rs],
                     "peak_extra_mb": statistics.median(r["peak_extra_mb"] for r in rs),
                     "seconds": statistics.median(r["seconds"] for r in rs),
                     "params_removed_actual": statistics.mean(r["params_removed_actual"] for r in rs)})
    by = {r["variant"]: r for r in rows}
    ratios = [a / b for a, b in zip(by["streaming-dense"]["perplexity_runs"], by["one-pass"]["perplexity_runs"])]
    atomic_write_json(args.results / "streaming.json", {
        "benchmark": "bench_streaming", "date": now_utc(), "command": command_line("benchmarks/bench_streaming.py", argv),
        "machine": machine_info(args.threads), "rows": rows,
        "dense_streaming_vs_one_pass": {"perplexity_ratio_per_slice": ratios,
                                        "within_0.5%": all(abs(x - 1) <= 0.005 for x in ratios)},
        "setup": {"model": "HuggingFaceTB/SmolLM2-135M (offline asset), float32" + (
                      f", first {args.layers} layers" if args.layers else ""),
                  "method": "fisher scores, plan_from_params(params_reduction), reselect_units, weight recovery",
                  "windows": f"{args.window} tokens; eval first {args.eval_windows} test windows; per slice "
                             f"{args.calib_windows} scoring and {args.moment_windows} statistics windows of train",
                  "slices": args.slices, "params_reduction": args.params_reduction,
                  "memory": "peak RSS during the recovery call minus RSS before it, fresh process per run, "
                            "MALLOC_MMAP_THRESHOLD_=65536", "note": args.note},
    })
    print(f"wrote {args.results / 'streaming.json'}")


if __name__ == "__main__":
    main()
