"""Accuracy against FLOPs: all-MiniLM-L6-v2 on the movie-review sentences (issue 8, part 1).

Setup. The real MiniLM (`hf_prune_assets.minilm_dir()`) is fine-tuned densely for one epoch (batch 32) on the
seeded 80/20 split of `hf_prune_assets.movie_reviews(seed=0)` (~8058 train / 2014 validation) and cached under
benchmarks/cache/ (git-ignored). Every pruned model starts from that cached dense model and is evaluated on the
full validation split (max_seq_length 64, dynamic padding, batch 128, torch.inference_mode).

Modes.
- ``retrain-free``: score on a calibration slice of the training split (3 disjoint slices), plan the FLOPs
  budget, prune + least-squares mask tuning (`hf_prune.tune_masks`) on the same slice, no training.
  Variants ``+weights`` recover with `tune_masks(..., reconstruct="weights")` (kept projection weights and
  bias re-solved) instead of one scale per kept unit; ``+reselect`` (with +weights) re-chooses each layer's
  units by reconstruction error (`reselect_units`); ``+calN`` use N calibration sentences per slice.
  Gradient methods (gradient, fisher, taylor) put heads and neurons on one loss scale and use the joint
  search `plan_from_flops`; l2, activation and random cannot compare heads with neurons, so they remove the
  same fraction of heads and FFN neurons from every layer (`plan_from_sparsity(scope="layer")`), which
  removes that fraction of the layer FLOPs. One scoring per (method, slice) serves every budget.
- ``fine-tuned``: `HeadPruningCallback(flops_reduction=r, importance=...)` inside `DistillationTrainer`
  (teacher: the dense fine-tuned model), at most one epoch, from the dense fine-tuned model. l2, activation and
  random remove the fraction r of heads and neurons from every layer instead (as retrain-free); activation scores
  on calibration slice 0; random draws with the training seed. Methods with ``+weights`` (e.g.
  ``fisher+weights+reselect+1epoch``) prune first, retrain-free as above on calibration slice = the training
  seed, then fine-tune the smaller model with the same trainer and no callback (prune, then fine-tune).

FLOPs: `hf_prune.count_flops` (transformer layers only) at seq_len 64. Reported `flops_reduction` is the
nominal budget; `flops_reduction_actual` the measured one of the pruned model.

    .venv/bin/python benchmarks/bench_accuracy.py --quick          # smoke run (~1-2 min), writes to cache/quick
    .venv/bin/python benchmarks/bench_accuracy.py                  # full grid (resumes from cached runs)
    .venv/bin/python benchmarks/bench_accuracy.py --skip-retrain-free --ft-reductions 0.7 --ft-seeds 0 1 2

Raw runs are cached in <cache>/accuracy_runs.json (one entry per run, written atomically after each run) so an
interrupted run resumes; the aggregated rows go to results/accuracy.json and the plot to results/accuracy.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from batching import batches, eval_batches  # noqa: E402
from provenance import minilm_label  # noqa: E402  (benchmarks/provenance.py)

from hf_prune import (  # noqa: E402
    DistillationTrainer,
    HeadPruningCallback,
    apply_mask_tuning,
    calibration_moments,
    compute_importance,
    count_flops,
    plan_from_flops,
    plan_from_sparsity,
    reselect_units,
    tune_masks,
)
from hf_prune.architecture.shapes import layer_shapes  # noqa: E402
from hf_prune.cli.report import write_figure  # noqa: E402
from hf_prune.importance.estimators import DATA_METHODS  # noqa: E402  (activation: scored on calibration batches)
from hf_prune.serialization.atomic import atomic_write_json  # noqa: E402
from hf_prune.serialization.saving import save_pruned  # noqa: E402
from hf_prune_assets import minilm_dir, movie_reviews  # noqa: E402

GRADIENT_METHODS = ("gradient", "fisher", "taylor")
ALL_METHODS = ("gradient", "fisher", "taylor", "l2", "activation", "random")
SEQ_LEN = 64
PEER = {"TextPruner (iterative Taylor)": 0.834, "Torch-Pruning Taylor (best)": 0.831, "random (issue)": 0.69}  # issue 8


# ----------------------------------------------------------------------------- data


def tokenize(tokenizer, split, limit=None):
    sentences, labels = split["sentence"], split["label"]
    if limit is not None:
        sentences, labels = sentences[:limit], labels[:limit]
    enc = tokenizer(sentences, truncation=True, max_length=SEQ_LEN)
    return [{"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
             "attention_mask": enc["attention_mask"][i], "labels": labels[i]} for i in range(len(labels))]


@torch.inference_mode()
def accuracy(model, val_batches) -> float:
    model.eval()
    right = total = 0
    for b in val_batches:
        logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits
        right += int((logits.argmax(-1) == b["labels"]).sum())
        total += len(b["labels"])
    return right / total


# ----------------------------------------------------------------------------- dense fine-tuning


def dense_model(args, tokenizer, train):
    """The dense model fine-tuned for one epoch, cached under the cache folder."""
    from transformers import AutoModelForSequenceClassification

    folder = args.cache / "minilm-movie-dense"
    if (folder / "config.json").exists():
        return AutoModelForSequenceClassification.from_pretrained(folder).eval()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    data = batches(train, 32, shuffle_seed=0)
    if args.dense_steps is not None:
        data = data[:args.dense_steps]
    optim = torch.optim.AdamW(model.parameters(), lr=args.dense_lr, weight_decay=0.01)
    warmup = max(1, len(data) // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min((s + 1) / warmup, max(0.0, (len(data) - s) / max(1, len(data) - warmup))))
    model.train()
    bar = tqdm(data, desc="dense fine-tuning (1 epoch)")
    for b in bar:
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        optim.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    save_pruned(model, folder, tokenizer)  # atomic: a half-written cache never looks complete
    return model


# ----------------------------------------------------------------------------- runs


def load_runs(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {}


def run_key(method, mode, reduction, rep):
    return f"{method}|{mode}|{reduction:.2f}|{rep}"


def restore_runs(runs: dict, results: Path) -> list[str]:
    """Add the runs behind results/accuracy.json's own rows (not the peers') for every (method, mode, budget) that
    `runs` lacks: the run cache is not in git, the results file is, so a fresh checkout keeps what it reports.
    Only rows measured against the same dense accuracy are taken. Returns the run keys added."""
    if not results.exists():
        return []
    have = {(r["method"], r["mode"], round(r["flops_reduction"], 2)) for k, r in runs.items() if k != "dense"}
    added = []
    for row in json.loads(results.read_text())["rows"]:
        group = (row["method"], row["mode"], round(row["flops_reduction"], 2))
        if row.get("source") or group in have or row["dense_metric"] != runs["dense"]["accuracy"]:
            continue
        for rep, acc in zip(row.get("reps", range(row["runs"])), row["metric_runs"]):
            key = run_key(row["method"], row["mode"], row["flops_reduction"], rep)
            runs[key] = {"method": row["method"], "mode": row["mode"], "flops_reduction": row["flops_reduction"],
                         "rep": rep, "accuracy": acc, "flops_reduction_actual": row["flops_reduction_actual"],
                         "restored_from": results.name}
            added.append(key)
    return added


def base_method(name: str) -> tuple[str, dict]:
    """'fisher' or a variant like 'fisher+cal1024' / 'fisher+labelfree' / 'fisher+weights' -> (method, options)."""
    method, *tags = name.split("+")
    opts = {"calib": None, "label_free": False}
    for tag in tags:
        if tag.startswith("cal"):
            opts["calib"] = int(tag[3:])
        elif tag == "labelfree":
            opts["label_free"] = True
        elif tag == "global":
            opts["scope"] = "global"
        elif tag == "weights":  # recovery re-solves the kept projection weights instead of unit scales
            opts["reconstruct"] = "weights"
        elif tag == "reselect":  # each layer's units re-chosen by reconstruction error (reselect_units)
            opts["reselect"] = True
        elif tag.endswith("epoch"):  # fine-tuned variants that differ only in schedule (steps come from --ft-steps)
            opts["schedule_tag"] = tag
        else:
            raise ValueError(f"unknown variant tag {tag!r} in {name!r}")
    if opts.get("reselect") and opts.get("reconstruct") != "weights":
        raise ValueError(f"{name!r}: +reselect chooses units for weight reconstruction; add +weights")
    return method, opts


def plan_for(method, scores, model, reduction, opts):
    if method in GRADIENT_METHODS:
        return plan_from_flops(scores, model, flops_reduction=reduction, seq_len=SEQ_LEN)
    return plan_from_sparsity(scores, head_sparsity=reduction, ffn_sparsity=reduction,
                              scope=opts.get("scope", "layer"))


def pruned_copy(dense, scores, calib, method, reduction, opts):
    """A copy of `dense` pruned to `reduction` retrain-free: plan from `scores`, then recovery on `calib` (unit
    scales, or with +weights re-solved weights; +reselect re-chooses each layer's units first)."""
    model = copy.deepcopy(dense)
    plan = plan_for(method, scores, model, reduction, opts)
    if opts.get("reselect"):  # = tune_masks(..., "weights") on the re-chosen plan
        moments = calibration_moments(dense, calib)
        plan = reselect_units(dense, plan, moments)
        apply_mask_tuning(model, plan, moments, reconstruct="weights")
    else:
        tune_masks(model, plan, calib, reconstruct=opts.get("reconstruct", "scales"))
    return model


def retrain_free(args, dense, train, val_b, runs, save):
    dense_flops = count_flops(dense, seq_len=SEQ_LEN)
    for name in args.methods:
        method, opts = base_method(name)
        size = opts["calib"] or args.calib_size
        for rep in range(args.slices):
            todo = [r for r in args.reductions if run_key(name, "retrain-free", r, rep) not in runs]
            if not todo:
                continue
            calib = batches(train[rep * size:(rep + 1) * size], 32)
            t0 = time.time()
            scores = compute_importance(dense, calib, method=method, label_free=opts["label_free"], seed=rep,
                                        progress=False)
            t_score = time.time() - t0
            for r in tqdm(todo, desc=f"{name} slice {rep}"):
                t1 = time.time()
                model = pruned_copy(dense, scores, calib, method, r, opts)
                t_tune = time.time() - t1
                acc = accuracy(model, val_b)
                flops = count_flops(model, seq_len=SEQ_LEN)
                shapes = layer_shapes(model)
                runs[run_key(name, "retrain-free", r, rep)] = {
                    "method": name, "mode": "retrain-free", "flops_reduction": r, "rep": rep, "accuracy": acc,
                    "flops_reduction_actual": 1 - flops / dense_flops, "calibration_sentences": size,
                    "heads": [s.heads for s in shapes], "ffn": [s.ffn for s in shapes],
                    "seconds_scoring": t_score, "seconds_mask_tuning": t_tune,
                }
                tqdm.write(f"retrain-free {name:>18} r={r:.1f} slice={rep}: acc {acc:.4f} "
                           f"(FLOPs -{1 - flops / dense_flops:.3f})")
                save()


def fine_tuned_budget(method: str, reduction: float) -> dict:
    """The callback's budget: the joint FLOPs search for gradient scores; for l2, activation and random, which
    cannot compare heads with neurons, the same fraction of heads and neurons in every layer (as retrain-free)."""
    if method in GRADIENT_METHODS:
        return {"flops_reduction": reduction}
    return {"head_sparsity": reduction, "ffn_sparsity": reduction, "pruning_scope": "layer"}


def fine_tuned(args, dense, tokenizer, train, val_b, runs, save):
    from transformers import DataCollatorWithPadding, TrainingArguments

    dense_flops = count_flops(dense, seq_len=SEQ_LEN)
    collator = DataCollatorWithPadding(tokenizer)
    train_ds = [{k: v for k, v in e.items()} for e in train]
    for method in args.ft_methods:
        for r in args.ft_reductions:
            for seed in args.ft_seeds:
                key = run_key(method, "fine-tuned", r, seed)
                if key in runs:
                    continue
                steps = args.ft_steps
                importance, opts = base_method(method)
                extra = {}
                if opts.get("reconstruct"):  # prune first (retrain-free on slice `seed`), then fine-tune the result
                    calib = batches(train[seed * args.calib_size:(seed + 1) * args.calib_size], 32)
                    scores = compute_importance(dense, calib, method=importance, seed=seed, progress=False)
                    model = pruned_copy(dense, scores, calib, importance, r, opts)
                    extra["accuracy_before_training"] = accuracy(model, val_b)  # in eval mode
                    model.train()
                    callbacks = []
                else:  # prune gradually during training
                    model = copy.deepcopy(dense).train()
                    callbacks = [HeadPruningCallback(
                        **fine_tuned_budget(importance, r), importance=importance, start_step=args.ft_start,
                        end_step=args.ft_end, num_events=args.ft_events, schedule="cubic", seq_len=SEQ_LEN,
                        seed=seed, calibration_dataloader=batches(train[:args.calib_size], 32)
                        if importance in DATA_METHODS else None)]
                targs = TrainingArguments(
                    output_dir=str(args.cache / "ft-work"), max_steps=steps, per_device_train_batch_size=32,
                    learning_rate=args.ft_lr, warmup_steps=10, lr_scheduler_type="linear", weight_decay=0.01,
                    logging_steps=50, save_strategy="no", report_to=[], seed=seed, data_seed=seed,
                    disable_tqdm=False)
                trainer = DistillationTrainer(
                    model=model, args=targs, train_dataset=train_ds, data_collator=collator, callbacks=callbacks,
                    teacher=copy.deepcopy(dense), alpha=args.ft_alpha, temperature=2.0)
                t0 = time.time()
                trainer.train()
                acc = accuracy(trainer.model, val_b)
                flops = count_flops(trainer.model, seq_len=SEQ_LEN)
                shapes = layer_shapes(trainer.model)
                runs[key] = {
                    "method": method, "mode": "fine-tuned", "flops_reduction": r, "rep": seed, "accuracy": acc,
                    "flops_reduction_actual": 1 - flops / dense_flops, "steps": steps,
                    "epochs": steps * 32 / len(train), "distill_alpha": args.ft_alpha,
                    "heads": [s.heads for s in shapes], "ffn": [s.ffn for s in shapes],
                    "seconds_training": time.time() - t0, "lr": args.ft_lr, **extra,
                }
                tqdm.write(f"fine-tuned {method} r={r:.1f} seed={seed}: acc {acc:.4f} (FLOPs -{1 - flops / dense_flops:.3f})")
                save()


# ----------------------------------------------------------------------------- aggregation and plot


def aggregate(runs: dict, dense_acc: float) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for run in runs.values():
        groups.setdefault((run["method"], run["mode"], run["flops_reduction"]), []).append(run)
    rows = []
    for (method, mode, r), group in sorted(groups.items()):
        group = sorted(group, key=lambda g: g["rep"])
        accs = [g["accuracy"] for g in group]
        rows.append({
            "model": "sentence-transformers/all-MiniLM-L6-v2 (fine-tuned 1 epoch)",
            "task": "movie-reviews (rotten tomatoes sentences)",
            "method": method, "mode": mode, "flops_reduction": r,
            "flops_reduction_actual": statistics.mean(g["flops_reduction_actual"] for g in group),
            "metric_name": "accuracy", "metric": statistics.mean(accs),
            "metric_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0, "runs": len(accs),
            "metric_runs": accs, "reps": [g["rep"] for g in group], "dense_metric": dense_acc,
            "delta_points": 100 * (statistics.mean(accs) - dense_acc),
            "repeat_over": "calibration slices" if mode == "retrain-free" else "training seeds",
        })
    return rows


def peer_rows(path: Path = HERE / "peers" / "results.json") -> list[dict]:
    """Rows of the peer tools (benchmarks/peers/run.sh), on the same split and dense model; [] if not run."""
    if not path.exists():
        return []
    return [dict(row, source="benchmarks/peers") for row in json.loads(path.read_text())["rows"]]


def plot(rows, dense_acc, path: Path):
    """Two panels: least-squares weight recovery, fine-tuning and the peer tools; and unit-scale recovery."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), sharey=True)
    peers = [r for r in rows if r.get("source")]
    ours = [r for r in rows if not r.get("source")]
    panels = {0: [r for r in ours if "+weights" in r["method"] or r["mode"] == "fine-tuned"],
              1: [r for r in ours if "+weights" not in r["method"] and r["mode"] == "retrain-free"]}
    for k, ax in enumerate(axes):
        for method, mode in sorted({(r["method"], r["mode"]) for r in panels[k]}):
            pts = sorted((r["flops_reduction"], r["metric"], r["metric_sd"]) for r in panels[k]
                         if r["method"] == method and r["mode"] == mode)
            xs, ys, es = zip(*pts)
            style = "-o" if mode == "retrain-free" else "--s"
            ax.errorbar([100 * x for x in xs], ys, yerr=es, fmt=style, capsize=3, ms=4, label=f"{method} ({mode})")
        for r in peers:
            if r["mode"] == "retrain-free":
                ours = r["method"].startswith("hf_prune")
                kind = "the peers' uniform budget" if ours else "peer"
                ax.errorbar([100 * r["flops_reduction"]], [r["metric"]], yerr=[r["metric_sd"]], fmt="P" if ours else "*",
                            ms=10 if ours else 12, capsize=3, label=f"{r['method']} ({kind}, retrain-free)")
        ax.axhline(dense_acc, color="k", lw=1, label=f"dense {dense_acc:.3f}")
        ax.axhline(dense_acc - 0.01, color="k", lw=0.8, ls=":", label="dense - 1 point")
        ax.set_xlabel("FLOPs reduction of the transformer layers (%) at seq_len 64")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="lower left")
    axes[0].set_ylabel("validation accuracy (2014 sentences)")
    axes[0].set_title("recovery re-solves kept weights (+weights), fine-tuned, peers")
    axes[1].set_title("recovery rescales kept units (Kwon et al. mask tuning)")
    axes[0].set_ylim(0.55, 0.88)
    fig.suptitle("MiniLM-L6 on movie reviews: accuracy vs FLOPs (mean +- sd over 3 slices / seeds)")
    fig.tight_layout()
    write_figure(path, fig)


# ----------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run; writes under <cache>/quick")
    p.add_argument("--methods", nargs="+", default=list(ALL_METHODS),
                   help="methods, or variants such as fisher+cal1024, fisher+labelfree, l2+global")
    p.add_argument("--reductions", nargs="+", type=float, default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    p.add_argument("--slices", type=int, default=3, help="disjoint calibration slices of the training split")
    p.add_argument("--calib-size", type=int, default=256, help="calibration sentences per slice")
    p.add_argument("--skip-retrain-free", action="store_true")
    p.add_argument("--skip-fine-tuned", action="store_true")
    p.add_argument("--ft-methods", nargs="+", default=["fisher"])
    p.add_argument("--ft-reductions", nargs="+", type=float, default=[0.7, 0.8])
    p.add_argument("--ft-seeds", nargs="+", type=int, default=[0])
    p.add_argument("--ft-steps", type=int, default=200, help="<= one epoch (252 steps of 32)")
    p.add_argument("--ft-start", type=int, default=10)
    p.add_argument("--ft-end", type=int, default=110)
    p.add_argument("--ft-events", type=int, default=4)
    p.add_argument("--ft-lr", type=float, default=1e-4)
    p.add_argument("--ft-alpha", type=float, default=0.5)
    p.add_argument("--dense-lr", type=float, default=1e-4)
    p.add_argument("--dense-steps", type=int, default=None, help="truncate the dense epoch (quick mode)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, default=HERE / "cache")
    p.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.cache, args.results = args.cache / "quick", args.cache / "quick"
        args.methods = args.methods if args.methods != list(ALL_METHODS) else ["fisher", "random"]
        args.reductions, args.slices, args.calib_size = [0.5], 2, 32
        args.ft_reductions, args.ft_steps, args.ft_start, args.ft_end, args.ft_events = [0.5], 6, 1, 3, 2
        args.dense_steps = 8
    args.cache.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    train_split, val_split = movie_reviews(seed=0, validation_fraction=0.2)
    train = tokenize(tokenizer, train_split)
    val = tokenize(tokenizer, val_split, limit=128 if args.quick else None)
    val_b = eval_batches(val)
    print(f"train {len(train)} / validation {len(val)} sentences; torch threads {torch.get_num_threads()}")

    dense = dense_model(args, tokenizer, train)
    runs_path = args.cache / "accuracy_runs.json"
    runs = load_runs(runs_path)
    if "dense" not in runs:
        t0 = time.time()
        runs["dense"] = {"accuracy": accuracy(dense, val_b), "seconds_eval": time.time() - t0}
        atomic_write_json(runs_path, runs)
    dense_acc = runs["dense"]["accuracy"]
    restored = restore_runs(runs, args.results / "accuracy.json")
    if restored:
        atomic_write_json(runs_path, runs)
        print(f"restored {len(restored)} runs from {args.results / 'accuracy.json'} (the run cache lacked them)")
    print(f"dense accuracy {dense_acc:.4f} (eval {runs['dense']['seconds_eval']:.1f} s); "
          f"layer FLOPs at seq {SEQ_LEN}: {count_flops(dense, seq_len=SEQ_LEN):.4g}")

    def save():
        runs.update({k: v for k, v in load_runs(runs_path).items() if k not in runs})  # other processes' runs
        atomic_write_json(runs_path, runs)
        pruned = {k: v for k, v in runs.items() if k != "dense"}
        rows = aggregate(pruned, dense_acc) + peer_rows()
        atomic_write_json(args.results / "accuracy.json", {
            "rows": rows,
            "setup": {
                "model": minilm_label(), "dense_fine_tuning": f"1 epoch, batch 32, AdamW lr {args.dense_lr}",
                "train_sentences": len(train), "validation_sentences": len(val), "max_seq_length": SEQ_LEN,
                "flops": "hf_prune.count_flops (transformer layers) at seq_len 64",
                "calibration": f"{args.slices} disjoint slices of {args.calib_size} training sentences (variants +calN: N)",
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} shared CPU cores, "
                           f"torch {torch.__version__}",
                "peers_from_issue": PEER,
            },
        })
        if rows:
            plot(rows, dense_acc, args.results / "accuracy.png")

    if not args.skip_retrain_free:
        retrain_free(args, dense, train, val_b, runs, save)
    if not args.skip_fine_tuned:
        fine_tuned(args, dense, tokenizer, train, val_b, runs, save)
    save()
    for row in aggregate({k: v for k, v in runs.items() if k != "dense"}, dense_acc) + peer_rows():
        print(f"{row['method']:>26} {row['mode']:>18} -{row['flops_reduction']:.0%}: {row['metric']:.4f} "
              f"+- {row['metric_sd']:.4f} ({100 * (row['metric'] - row['dense_metric']):+.2f} pt, n={row['runs']})")


if __name__ == "__main__":
    main()
