"""One real-width decoder layer of Llama-3-8B and Llama-70B shape: time and memory of each retrain-free stage.

Issue 15, part 6. A 1-layer llama with the real widths (random weights, a 256-token vocabulary, built on the
CPU) goes through the three per-layer stages of the retrain-free path, each on the public API:

    statistics  `calibration_moments`       one forward of the layer over the calibration tokens, with the float64
                                            second moments of its o_proj and down_proj inputs
    reselect    `reselect_units`            greedy structured OBS re-choice of the removed heads / neurons
    recovery    `apply_mask_tuning("weights")` least-squares solve of the kept columns, surgery, write-back

On a 1-layer model these calls are exactly what `prune_retrain_free` does per layer. Calibration batches are
generated per batch (random token ids, 2,048 tokens each), so no dataset is held. The plan removes 50% of the
FFN neurons and one query head per key/value group (25% of the heads), chosen at random (seeded).

Each (shape, calibration size) runs in its own subprocess; a sampler thread reads the resident memory from
/proc/self/statm every 5 ms, and each stage's peak is reported as (peak during the stage) - (resident memory
just before the stage). The per-stage times at two calibration sizes give a fit, seconds = a + b * tokens;
from it the script tabulates a 128 x 2,048-token calibration per layer and for the whole model (x layers)
on this CPU. On a GPU the estimate is FLOPs / throughput (formula in `gpu_estimate`).

    .venv/bin/python benchmarks/bench_large_layer.py --quick        # small widths, seconds
    .venv/bin/python benchmarks/bench_large_layer.py                 # 8B and 70B shapes (about an hour)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from memory import PeakRSS  # noqa: E402
from provenance import OtherLoad, command_line, machine_info, now_utc  # noqa: E402

SHAPES = {  # name -> (hidden, query heads, key/value heads, FFN width, layers of the whole model)
    "llama3-8b": (4096, 32, 8, 14336, 32),
    "llama-70b": (8192, 64, 8, 28672, 80),
    "quick": (256, 8, 2, 1024, 4),
}
TOKENS_PER_BATCH = 2048
STAGES = ("statistics", "reselect", "recovery")
TOKEN_STAGES = ("statistics",)  # the only stage whose work grows with the calibration tokens
# One 80 GB GPU (A100 80GB data sheet): sustained fractions are assumptions, stated in the JSON.
GPU = {"name": "A100 80GB", "fp32_tflops": 19.5, "tf32_tflops": 156.0, "fp64_tflops": 19.5, "efficiency": 0.5}


def build(shape: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, heads, kv, ffn, _ = SHAPES[shape]
    config = LlamaConfig(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv,
                         head_dim=hidden // heads, intermediate_size=ffn, num_hidden_layers=1, vocab_size=256,
                         max_position_embeddings=TOKENS_PER_BATCH, tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).eval()
    return model


def batches(n: int, seed: int = 0):
    """`n` calibration batches of one 2,048-token sequence, generated one at a time."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        ids = torch.randint(0, 256, (1, TOKENS_PER_BATCH), generator=g)
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def random_plan(model):
    import torch

    from hf_prune import PruningPlan, layer_shapes

    s = layer_shapes(model)[0]
    g = torch.Generator().manual_seed(1)
    per_group = s.heads // s.kv_heads
    heads = [grp * per_group + int(torch.randint(0, per_group, (1,), generator=g)) for grp in range(s.kv_heads)]
    neurons = sorted(torch.randperm(s.ffn, generator=g)[: s.ffn // 2].tolist())
    return PruningPlan({0: sorted(heads)}, {0: neurons}, {"rule": "random, seeded"})


def run_one(shape: str, n_batches: int, threads: int, stages: tuple[str, ...] = STAGES) -> dict:
    """The stages on one layer (in this process); seconds and peak extra resident memory per stage. Re-selection
    and recovery need the statistics stage before them."""
    import torch

    from hf_prune import apply_mask_tuning, calibration_moments, reselect_units

    torch.set_num_threads(threads)
    model = build(shape)
    plan = random_plan(model)
    meter = PeakRSS(interval=0.005)
    out: dict = {"shape": shape, "batches": n_batches, "tokens": n_batches * TOKENS_PER_BATCH}
    for stage in stages:
        meter.mark()
        with OtherLoad() as load:  # CPU cores other processes used meanwhile: wall time is only quiet when ~0
            start, cpu_start = time.perf_counter(), time.process_time()
            if stage == "statistics":
                moments = calibration_moments(model, batches(n_batches))
            elif stage == "reselect":
                plan = reselect_units(model, plan, moments)
            else:
                apply_mask_tuning(model, plan, moments, reconstruct="weights")
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        out[stage] = {"seconds": seconds, "cpu_seconds": cpu, "other_load_cores": load.cores,
                      "peak_extra_gib": meter.peak_since_mark() / 2**30,
                      "peak_rss_gib": meter.peak / 2**30}
    meter.stop()
    out["peak_rss_gib"] = max(out[stage]["peak_rss_gib"] for stage in stages)
    out["statistics_bytes"] = sum(m.numel() * m.element_size() for pair in moments for m in pair if m is not None)
    return out


def stage_flops(shape: str, tokens: int) -> dict:
    """Floating-point operations of each stage for one layer (multiply-add = 2)."""
    hidden, heads, kv, ffn, _ = SHAPES[shape]
    d = hidden // heads
    params = hidden * (heads * d * 2 + kv * d * 2) + 3 * hidden * ffn
    o_in, down_in = heads * d + 1, ffn + 1
    removed = ffn // 2
    return {
        "statistics": tokens * (2 * params + 2 * (o_in ** 2 + down_in ** 2)),  # forward + X^T X (fp32 on GPU)
        # greedy OBS: a Cholesky inverse (F^3) plus one rank-`block` update of the shrinking inverse per step
        "reselect": down_in ** 3 + 2 * sum((down_in - k) ** 2 for k in range(0, removed, 8)) * 8,
        "recovery": (down_in - removed) ** 3 / 3 + 2 * (down_in - removed) ** 2 * hidden,  # Cholesky + solve
    }


def gpu_estimate(shape: str, tokens: int) -> dict:
    """seconds = FLOPs / (efficiency x peak): statistics at fp32 peak, reselect and recovery at fp64 peak."""
    f = stage_flops(shape, tokens)
    return {
        "statistics": f["statistics"] / (GPU["efficiency"] * GPU["fp32_tflops"] * 1e12),
        "reselect": f["reselect"] / (GPU["efficiency"] * GPU["fp64_tflops"] * 1e12),
        "recovery": f["recovery"] / (GPU["efficiency"] * GPU["fp64_tflops"] * 1e12),
    }


def fit(rows: list[dict], stage: str) -> tuple[float, float]:
    """seconds = a + b * tokens, least squares over the calibration sizes.

    Only the statistics stage sees the tokens; re-selection and recovery work on the (F + 1)^2 moments alone, so
    their b is 0 by construction and a is their mean time (a slope fitted to their noise would be meaningless)."""
    rows = [r for r in rows if stage in r]
    xs = [r["tokens"] for r in rows]
    ys = [r[stage]["seconds"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    if stage not in TOKEN_STAGES:
        return my, 0.0
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def summarise(shape: str, rows: list[dict], target_tokens: int) -> dict:
    layers = SHAPES[shape][4]
    per_layer = {}
    for stage in STAGES:
        a, b = fit(rows, stage)
        per_layer[stage] = {"a_seconds": a, "b_seconds_per_token": b, "seconds_at_target": a + b * target_tokens}
    cpu_layer = sum(v["seconds_at_target"] for v in per_layer.values())
    gpu = gpu_estimate(shape, target_tokens)
    return {
        "shape": shape, "layers": layers, "target_tokens": target_tokens, "fit": per_layer,
        "cpu_hours_per_layer": cpu_layer / 3600, "cpu_hours_model": cpu_layer * layers / 3600,
        "gpu_seconds_per_layer": gpu, "gpu_hours_model": sum(gpu.values()) * layers / 3600,
        "peak_extra_gib": max(r[s]["peak_extra_gib"] for r in rows for s in STAGES if s in r),
        "peak_rss_gib": max(r["peak_rss_gib"] for r in rows),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small widths; writes under benchmarks/cache/quick")
    p.add_argument("--shapes", nargs="+", default=["llama3-8b", "llama-70b"], choices=sorted(SHAPES))
    p.add_argument("--batches", type=json.loads, default={"llama3-8b": [2, 4], "llama-70b": [1, 2], "quick": [1, 2]},
                   help='JSON: shape -> calibration sizes in 2,048-token batches')
    p.add_argument("--target-batches", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--cache", type=Path, default=HERE / "cache")
    p.add_argument("--all-stages-every-size", action="store_true",
                   help="also time re-selection and recovery at every calibration size (by default only at the largest:"
                        " they work on the moments alone, so their time does not depend on the tokens)")
    p.add_argument("--remeasure", choices=("reselect", "recovery"),
                   help="measure this stage again (after the statistics, with the seeded random plan) at each shape's "
                        "largest calibration size and replace it in the cached run, marked 'remeasured' with the date "
                        "(e.g. after a change that affects only that stage)")
    p.add_argument("--one", nargs=3, metavar=("SHAPE", "BATCHES", "STAGES"), help=argparse.SUPPRESS)  # subprocess
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.threads, tuple(args.one[2].split(",")))))
        return
    shapes = ["quick"] if args.quick else args.shapes
    results = args.cache / "quick" if args.quick else args.results
    runs_path = args.cache / ("quick" if args.quick else "") / "large_layer_runs.json"
    runs_path.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(runs_path.read_text()) if runs_path.exists() else {}
    if args.remeasure:
        for shape in shapes:
            n = max(args.batches[shape])
            print(f"{shape}: {n} x {TOKENS_PER_BATCH} tokens, statistics,{args.remeasure} (remeasure) ...", flush=True)
            done = subprocess.run([sys.executable, __file__, "--one", shape, str(n), f"statistics,{args.remeasure}",
                                   "--threads", str(args.threads)], check=True, capture_output=True, text=True)
            record = json.loads(done.stdout.strip().splitlines()[-1])
            runs[f"{shape}|{n}"][args.remeasure] = dict(record[args.remeasure], remeasured=now_utc())
            runs[f"{shape}|{n}"]["peak_rss_gib"] = max(runs[f"{shape}|{n}"][s]["peak_rss_gib"] for s in STAGES)
            runs_path.write_text(json.dumps(runs, indent=1))
    for shape in shapes:
        for n in args.batches[shape]:
            key = f"{shape}|{n}"
            if key in runs:
                continue
            every = args.all_stages_every_size or n == max(args.batches[shape])
            stages = ",".join(STAGES if every else TOKEN_STAGES)
            print(f"{shape}: {n} x {TOKENS_PER_BATCH} tokens, {stages} ...", flush=True)
            done = subprocess.run([sys.executable, __file__, "--one", shape, str(n), stages, "--threads",
                                   str(args.threads)], check=True, capture_output=True, text=True)
            runs[key] = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(runs[key]), flush=True)
            runs_path.write_text(json.dumps(runs, indent=1))
    target = args.target_batches * TOKENS_PER_BATCH
    rows = [runs[f"{s}|{n}"] for s in shapes for n in args.batches[s]]
    summary = [summarise(s, [runs[f"{s}|{n}"] for n in args.batches[s]], target) for s in shapes]
    payload = {
        "setup": {"command": command_line("benchmarks/bench_large_layer.py", argv), "date": now_utc(),
                  "machine": machine_info(), "threads": args.threads, "tokens_per_batch": TOKENS_PER_BATCH,
                  "plan": "50% of FFN neurons and one query head per key/value group, random (seeded)",
                  "weights": "random, float32, 1-layer LlamaForCausalLM with the real widths, vocabulary 256",
                  "gpu_formula": "seconds = stage FLOPs / (efficiency x peak); statistics at the fp32 peak, "
                                 "reselect and recovery at the fp64 peak",
                  "gpu": GPU, "memory": "peak extra = peak resident memory during the stage minus just before it "
                                        "(sampled every 5 ms); peak_rss = the whole process"},
        "runs": rows,
        "summary": summary,
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / "large_layer.json").write_text(json.dumps(payload, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
