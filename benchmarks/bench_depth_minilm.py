"""Width vs depth vs joint pruning of MiniLM on the movie-review sentences, retrain-free and fine-tuned (issue 14).

Model, data, dense fine-tuning (cached, shared with `bench_accuracy.py`) and accuracy as in `bench_accuracy.py`,
whose helpers this script imports: all-MiniLM-L6-v2 (6 BERT layers, 12 heads, FFN 1536) + a 2-way classifier
fine-tuned densely for one epoch; accuracy on the validation sentences. Budgets: 1/3 and 1/2 of the layer FLOPs
(`count_flops` at seq_len 64) removed, i.e. 2 and 3 of the 6 layers for depth-only plans (all layers have the
same FLOPs, so those are exact).

Families:
- ``width``: today's best retrain-free row of RESULTS.md (fisher+weights+reselect): fisher scores on a calibration
  slice, `plan_from_flops(flops_reduction=r, seq_len=64)`, `reselect_units`, `apply_mask_tuning(reconstruct=
  "weights")` on the same slice's moments.
- ``depth/fisher`` and ``depth/block_influence``: the k lowest-scoring layers (`compute_layer_importance` on the
  slice) removed; no recovery (nothing left to re-fit). Both are reported: fisher (the gradient of a residual
  gate, the score the joint planner uses) and block influence (ShortGPT, label-free).
- ``joint``: fisher head/neuron scores + fisher layer scores in `ImportanceScores.layers`,
  `plan_from_flops(structure="joint")`, reselect + weight recovery of the surviving widths, layers dropped last.

Modes: ``retrain-free`` (`--slices` calibration slices of `--calib-size` sentences) and ``fine-tuned`` (one epoch
from the dense fine-tuned model, `DistillationTrainer` with the dense teacher as bench_accuracy's fine-tuned
rows, seed 0): width = `HeadPruningCallback(flops_reduction=r, importance="fisher")`; depth =
`HeadPruningCallback(PruningConfig(num_layers_to_remove=k, layer_importance=m), calibration_dataloader=...)`;
joint = slice 0's retrain-free joint plan applied (with recovery), then one epoch of the same trainer without
a callback. The same distillation trainer for all three keeps the comparison about the structure.

Latency: batch 1 x 64 tokens forward passes (`hf_prune.deploy.measure_latency`), each pruned shape alternated with
the dense model in one process, medians; cached by shape (per-layer heads and FFN widths).

    .venv/bin/python benchmarks/bench_depth_minilm.py --quick    # smoke run, writes under cache/quick
    .venv/bin/python benchmarks/bench_depth_minilm.py            # full grid (resumes from cached cells)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from batching import batches, eval_batches  # noqa: E402
from bench_accuracy import SEQ_LEN, accuracy, dense_model, tokenize  # noqa: E402
from bench_depth import recover, shape_key  # noqa: E402  (recover: reselect + weight recovery, then drop_layers)
from provenance import OtherLoad, command_line, machine_info, minilm_label, now_utc, wait_for_quiet  # noqa: E402

from hf_prune import (  # noqa: E402
    DistillationTrainer,
    HeadPruningCallback,
    PruningConfig,
    PruningPlan,
    calibration_moments,
    compute_importance,
    compute_layer_importance,
    count_flops,
    drop_layers,
    measure_latency,
    plan_from_flops,
)
from hf_prune.architecture.shapes import layer_shapes  # noqa: E402
from hf_prune.cli.report import write_figure  # noqa: E402
from hf_prune.serialization.atomic import atomic_write_json  # noqa: E402
from hf_prune_assets import minilm_dir, movie_reviews  # noqa: E402

REDUCTIONS = (1 / 3, 1 / 2)
DEPTH_METHODS = ("fisher", "block_influence")


def depth_drop(dense, calib, method: str, k: int) -> list[int]:
    scores = compute_layer_importance(dense, calib, method=method, progress=False)
    return sorted(scores.ranking()[:k])


def joint_plan(dense, calib, reduction: float, rep: int) -> tuple[PruningPlan, object]:
    scores = compute_importance(dense, calib, method="fisher", seed=rep, progress=False)
    layers = compute_layer_importance(dense, calib, method="fisher", progress=False)
    joint = dataclasses.replace(scores, layers=list(layers.scores))
    return plan_from_flops(joint, dense, flops_reduction=reduction, seq_len=SEQ_LEN, structure="joint"), scores


def retrain_free_model(family: str, method: str, dense, calib, reduction: float, rep: int, n_layers: int):
    """(pruned model, extra fields) for one retrain-free cell."""
    if family == "depth":
        drop = depth_drop(dense, calib, method, round(reduction * n_layers))
        return drop_layers(copy.deepcopy(dense), drop), {"layers_removed": drop}
    moments = calibration_moments(dense, calib)
    if family == "width":
        scores = compute_importance(dense, calib, method="fisher", seed=rep, progress=False)
        plan = plan_from_flops(scores, dense, flops_reduction=reduction, seq_len=SEQ_LEN)
    else:
        plan, _ = joint_plan(dense, calib, reduction, rep)
    return recover(dense, plan, moments), {"layers_removed": list(plan.layers)}


def fine_tune(args, family: str, method: str, dense, tokenizer, train, calib, reduction: float, n_layers: int):
    from transformers import DataCollatorWithPadding, TrainingArguments

    schedule = {"start_step": args.ft_start, "end_step": args.ft_end, "num_events": args.ft_events,
                "schedule": "cubic", "seq_len": SEQ_LEN}
    callbacks, extra = [], {}
    if family == "width":
        callbacks = [HeadPruningCallback(flops_reduction=reduction, importance="fisher", **schedule)]
        model = copy.deepcopy(dense)
    elif family == "depth":
        k = round(reduction * n_layers)
        config = PruningConfig(num_layers_to_remove=k, layer_importance=method)
        callbacks = [HeadPruningCallback(config, calibration_dataloader=calib, **schedule)]
        model = copy.deepcopy(dense)
    else:  # joint: slice 0's retrain-free joint plan, recovered, then plain fine-tuning
        plan, _ = joint_plan(dense, calib, reduction, 0)
        model = recover(dense, plan, calibration_moments(dense, calib))
        extra["layers_removed"] = list(plan.layers)
    model.train()
    targs = TrainingArguments(
        output_dir=str(args.cache / "ft-work-depth"), max_steps=args.ft_steps, per_device_train_batch_size=32,
        learning_rate=args.ft_lr, warmup_steps=10, lr_scheduler_type="linear", weight_decay=0.01, logging_steps=50,
        save_strategy="no", report_to=[], seed=0, data_seed=0, disable_tqdm=False)
    trainer = DistillationTrainer(
        model=model, args=targs, train_dataset=[dict(e) for e in train], data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=callbacks, teacher=copy.deepcopy(dense), alpha=args.ft_alpha, temperature=2.0)
    trainer.train()
    out = trainer.model.eval()
    if "layers_removed" not in extra:
        entry = getattr(out.config, "hf_prune", None) or {}
        kept = entry.get("layers") if isinstance(entry, dict) else None
        extra["layers_removed"] = sorted(set(range(n_layers)) - set(kept)) if kept is not None else []
    extra.update({"steps": args.ft_steps, "epochs": args.ft_steps * 32 / len(train), "distill_alpha": args.ft_alpha})
    return out, extra


def aggregate(runs: dict, latency: dict, dense_acc: float) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs.values():
        groups.setdefault((r["family"], r["method"], r["mode"], r["flops_reduction"]), []).append(r)
    rows = []
    for (family, method, mode, red), g in sorted(groups.items()):
        accs = [r["accuracy"] for r in sorted(g, key=lambda r: r["rep"])]
        lat = [latency[r["shape"]] for r in g if r["shape"] in latency]
        row = {"family": family, "method": method, "mode": mode, "flops_reduction": red,
               "flops_reduction_actual": statistics.mean(r["flops_reduction_actual"] for r in g),
               "accuracy": statistics.mean(accs), "accuracy_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
               "accuracy_runs": accs, "runs": len(accs), "dense_accuracy": dense_acc,
               "delta_points": 100 * (statistics.mean(accs) - dense_acc),
               "layers_removed": g[0]["layers_removed"], "heads_all_layers": g[0]["heads"], "ffn_all_layers": g[0]["ffn"]}
        if lat:
            speedup = statistics.mean(x["dense_s"] / x["pruned_s"] for x in lat)
            row.update({"speedup": speedup, "ideal_speedup": 1 / (1 - row["flops_reduction_actual"]),
                        "latency_ratio": 1 / speedup})
        rows.append(row)
    return rows


def plot(rows: list[dict], dense_acc: float, dense_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, mode in zip(axes, ("retrain-free", "fine-tuned")):
        names = sorted({(r["family"], r["method"]) for r in rows if r["mode"] == mode and "latency_ratio" in r})
        for family, method in names:
            pts = sorted((r for r in rows if (r["family"], r["method"], r["mode"]) == (family, method, mode)
                          and "latency_ratio" in r), key=lambda r: -r["latency_ratio"])
            ax.errorbar([dense_ms] + [r["latency_ratio"] * dense_ms for r in pts], [dense_acc] + [r["accuracy"] for r in pts],
                        yerr=[0] + [r["accuracy_sd"] for r in pts], fmt="-o" if family != "depth" else "--s", capsize=3,
                        ms=5, label=f"{family}" + (f"/{method}" if family == "depth" else ""))
        ax.plot([dense_ms], [dense_acc], "k*", ms=14, label=f"dense ({dense_acc:.3f})")
        ax.set_title(mode)
        ax.set_xlabel(f"forward latency, batch 1 x {SEQ_LEN} tokens (ms, normalised to the median dense session)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("validation accuracy")
    fig.suptitle("MiniLM-L6 on movie reviews: width vs depth vs joint at 1/3 and 1/2 fewer layer FLOPs")
    fig.tight_layout()
    write_figure(path, fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run; writes under <cache>/quick")
    p.add_argument("--reductions", nargs="+", type=float, default=list(REDUCTIONS))
    p.add_argument("--depth-methods", nargs="+", default=list(DEPTH_METHODS))
    p.add_argument("--families", nargs="+", default=["width", "depth", "joint"])
    p.add_argument("--slices", type=int, default=3)
    p.add_argument("--calib-size", type=int, default=256)
    p.add_argument("--skip-retrain-free", action="store_true")
    p.add_argument("--skip-fine-tuned", action="store_true")
    p.add_argument("--ft-steps", type=int, default=252, help="one epoch of batch 32")
    p.add_argument("--ft-start", type=int, default=10)
    p.add_argument("--ft-end", type=int, default=150)
    p.add_argument("--ft-events", type=int, default=4)
    p.add_argument("--ft-lr", type=float, default=1e-4)
    p.add_argument("--ft-alpha", type=float, default=0.5)
    p.add_argument("--dense-lr", type=float, default=1e-4)
    p.add_argument("--dense-steps", type=int, default=None)
    p.add_argument("--latency-repeats", type=int, default=50)
    p.add_argument("--wait-quiet", type=float, default=30.0, metavar="SECONDS")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, default=HERE / "cache")
    p.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.cache = args.results = args.cache / "quick"
        args.reductions, args.slices, args.calib_size = [0.5], 1, 32
        args.ft_steps, args.ft_start, args.ft_end, args.ft_events, args.dense_steps = 6, 1, 3, 2, 8
        args.latency_repeats, args.wait_quiet = 3, 0.0
    args.cache.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    train_split, val_split = movie_reviews(seed=0, validation_fraction=0.2)
    train = tokenize(tokenizer, train_split)
    val = tokenize(tokenizer, val_split, limit=128 if args.quick else None)
    val_b = eval_batches(val)
    dense = dense_model(args, tokenizer, train)
    n_layers = len(layer_shapes(dense))
    dense_flops = count_flops(dense, seq_len=SEQ_LEN)

    runs_path, latency_path = args.cache / "depth_minilm_runs.json", args.cache / "depth_minilm_latency.json"
    runs = json.loads(runs_path.read_text()) if runs_path.exists() else {}
    latency = json.loads(latency_path.read_text()) if latency_path.exists() else {}
    if f"dense|{len(val)}" not in runs:
        runs[f"dense|{len(val)}"] = {"accuracy": accuracy(dense, val_b)}
        atomic_write_json(runs_path, runs)
    dense_acc = runs[f"dense|{len(val)}"]["accuracy"]
    print(f"train {len(train)} / validation {len(val)}; dense accuracy {dense_acc:.4f}; {n_layers} layers; "
          f"layer FLOPs at {SEQ_LEN} tokens {dense_flops:.4g}", flush=True)
    lat_setting = f"b1|s{SEQ_LEN}|reps {args.latency_repeats}|threads {args.threads}"

    def latency_of(model) -> dict:
        key = f"{lat_setting}|{shape_key(model)}"
        if key not in latency:
            waited = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
            with OtherLoad() as load:
                stats = measure_latency({"dense": dense, "pruned": model}, batch_size=1, seq_len=SEQ_LEN,
                                        repeats=args.latency_repeats, warmup=3, num_threads=args.threads)
            latency[key] = {"dense_s": stats["dense"].median_s, "pruned_s": stats["pruned"].median_s,
                            "other_load_cores": load.cores, "load_before_timing": waited, "date": now_utc()}
            atomic_write_json(latency_path, latency)
        return latency[key]

    def save():
        atomic_write_json(runs_path, runs)
        lat = {k[len(lat_setting) + 1:]: v for k, v in latency.items() if k.startswith(lat_setting + "|")}
        dense_ms = 1e3 * statistics.median(v["dense_s"] for v in lat.values()) if lat else float("nan")
        mine = {k: v for k, v in runs.items() if not k.startswith("dense") and v["validation"] == len(val)}
        rows = aggregate(mine, lat, dense_acc)
        atomic_write_json(args.results / "depth_minilm.json", {
            "benchmark": "bench_depth_minilm", "date": now_utc(),
            "command": command_line("benchmarks/bench_depth_minilm.py", argv), "machine": machine_info(args.threads),
            "rows": rows, "dense": {"accuracy": dense_acc, "forward_ms": dense_ms, "layer_flops": dense_flops},
            "latency_by_shape": lat,
            "setup": {
                "model": minilm_label(), "dense_fine_tuning": "as bench_accuracy.py (cached minilm-movie-dense)",
                "validation_sentences": len(val), "flops": f"count_flops (transformer layers) at seq_len {SEQ_LEN}",
                "calibration": f"{args.slices} disjoint slices of {args.calib_size} training sentences (retrain-free); "
                               "fine-tuned: slice 0",
                "width": "fisher, plan_from_flops, reselect_units, apply_mask_tuning(reconstruct='weights') / "
                         "fine-tuned: HeadPruningCallback(flops_reduction, importance='fisher')",
                "depth": "k = round(reduction x layers) lowest layer scores removed (fisher, block_influence) / "
                         "fine-tuned: HeadPruningCallback(PruningConfig(num_layers_to_remove=k, layer_importance))",
                "joint": "fisher + fisher layer scores, plan_from_flops(structure='joint'), recovery / fine-tuned: "
                         "that plan then one epoch without callback",
                "fine_tuning": f"DistillationTrainer alpha {args.ft_alpha} T 2 (teacher: dense), {args.ft_steps} steps "
                               f"of 32, lr {args.ft_lr}, events {args.ft_events} at steps {args.ft_start}-{args.ft_end}",
                "latency": f"measure_latency batch 1 x {SEQ_LEN}, dense alternated, {args.latency_repeats} repeats, "
                           "medians; normalised to the median dense session",
            },
        })
        if any("latency_ratio" in r for r in rows):
            plot(rows, dense_acc, dense_ms, args.results / "depth_minilm.png")
        return rows

    def record(key, family, method, mode, red, rep, model, extra, t0):
        acc = accuracy(model, val_b)
        shapes = layer_shapes(model)
        flops = count_flops(model, seq_len=SEQ_LEN)
        lat = latency_of(model)
        runs[key] = {"family": family, "method": method, "mode": mode, "flops_reduction": red, "rep": rep,
                     "accuracy": acc, "flops_reduction_actual": 1 - flops / dense_flops, "shape": shape_key(model),
                     "heads": [s.heads for s in shapes], "ffn": [s.ffn for s in shapes], "validation": len(val),
                     "seconds": time.time() - t0, **extra}
        print(f"{mode:>12} {family:>6} {method:>16} -{red:.0%}: acc {acc:.4f} ({100 * (acc - dense_acc):+.2f} pt), "
              f"FLOPs -{1 - flops / dense_flops:.3f}, layers removed {extra.get('layers_removed')}, speedup "
              f"x{lat['dense_s'] / lat['pruned_s']:.3f}", flush=True)
        save()

    cells = [(f, m) for f in args.families for m in (args.depth_methods if f == "depth" else ["fisher"])]
    modes = [m for m, skip in (("retrain-free", args.skip_retrain_free), ("fine-tuned", args.skip_fine_tuned)) if not skip]
    for mode in modes:
        for rep in range(args.slices if mode == "retrain-free" else 1):
            calib = batches(train[rep * args.calib_size:(rep + 1) * args.calib_size], 32)
            for family, method in cells:
                for red in args.reductions:
                    key = f"{family}|{method}|{mode}|{red:.3f}|{rep}|{len(val)}"
                    if key in runs:
                        continue
                    t0 = time.time()
                    if mode == "retrain-free":
                        model, extra = retrain_free_model(family, method, dense, calib, red, rep, n_layers)
                    else:
                        model, extra = fine_tune(args, family, method, dense, tokenizer, train, calib, red, n_layers)
                    record(key, family, method, mode, red, rep, model, extra, t0)
    rows = save()
    for r in rows:
        print(f"  {r['mode']:>12} {r['family']:>6} {r['method']:>16} -{r['flops_reduction']:.0%}: {r['accuracy']:.4f} "
              f"+- {r['accuracy_sd']:.4f} ({r['delta_points']:+.2f} pt, n={r['runs']}), speedup "
              f"x{r.get('speedup', float('nan')):.3f}, layers removed {r['layers_removed']}")
    print(f"wrote {args.results / 'depth_minilm.json'}")


if __name__ == "__main__":
    main()
