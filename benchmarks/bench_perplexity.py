"""Perplexity against parameters removed: SmolLM2-135M on WikiText-2, retrain-free (issue 8, part 2).

Model: the real SmolLM2-135M (`hf_prune_assets.load_smollm2()`, llama, 30 layers, 9 query heads over 3 kv
heads, FFN 1536, float32). Text: WikiText-2 raw (`hf_prune_assets.wikitext2`), tokenised as one stream and
cut into non-overlapping windows of 512 tokens. Perplexity = exp(mean next-token NLL) over the first
`--eval-windows` windows of the *test* split (the dense number on the same windows is reported next to it).

Pruning (retrain-free): score on a calibration slice of WikiText-2 *train* (3 disjoint slices of
`--calib-windows` windows, causal-LM loss with labels = input_ids), `plan_from_sparsity(..., gqa="per_group")`,
prune, least-squares mask tuning on the same slice (the library's `tune_masks` algorithm; the Gram moments of
the dense model are computed once per slice and reused for every budget and method, which gives the same
result as calling `tune_masks` each time). Budgets are fractions of the layer parameters
(`count_parameters(layers_only=True)`) removed; per layer (scope "layer", the issue's peer configuration):

    10%: FFN 1536 -> 1331, heads 9 -> 9      (per_group removes heads 3 at a time per layer: 9 -> 6 -> 3)
    20%: FFN 1536 -> 1256, heads 9 -> 6      (exactly the issue's Torch-Pruning configuration)
    30%: FFN 1536 -> 1049, heads 9 -> 6

The measured fraction removed is written next to the nominal one.

Variants (tags after the method): ``+global`` ranks units across layers; ``+params`` lets the joint search
(`plan_from_flops` at seq_len 1, where a layer's FLOPs are twice its projection parameters) choose heads and
FFN neurons of every layer for the parameter budget; ``+weights`` recovers with
`reconstruct="weights"` (kept projection weights re-solved; statistics from `--moment-windows` windows per
slice: the slice's scoring windows, then further windows of the training split); ``+reselect`` (with +weights)
keeps the plan's per-layer counts and re-chooses the units by reconstruction error (`reselect_units`);
``+obs`` plans on `reconstruction_scores` instead of the raw scores.

    .venv/bin/python benchmarks/bench_perplexity.py --quick     # smoke run, writes under cache/quick
    .venv/bin/python benchmarks/bench_perplexity.py             # default grid (resumes from cached runs)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
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

from hf_prune import compute_importance, count_parameters, plan_from_flops, plan_from_sparsity  # noqa: E402
from hf_prune.architecture.shapes import layer_shapes  # noqa: E402
from hf_prune.cli.report import write_figure  # noqa: E402
from hf_prune.recovery import apply_mask_tuning, calibration_moments  # noqa: E402
from hf_prune.recovery.reselect import reconstruction_scores, reselect_units  # noqa: E402
from hf_prune.serialization.atomic import atomic_write_json  # noqa: E402
from hf_prune_assets import load_smollm2, wikitext2  # noqa: E402

ALL_METHODS = ("gradient", "fisher", "taylor", "l2", "activation", "random")
WINDOW = 512
# fraction of layer parameters removed -> (query heads kept per layer, FFN neurons kept per layer)
BUDGETS = {0.1: (9, 1331), 0.2: (6, 1256), 0.3: (6, 1049)}
PEER = {"dense (issue, full test set)": 28.5, "Torch-Pruning Taylor at 20% (issue)": 199.7}


def windows(text: str, tokenizer, n: int, start: int = 0) -> list[torch.Tensor]:
    # tokenise only a prefix that is surely long enough (WikiText-2 has ~4-5 characters per token)
    need = (start + n) * WINDOW
    ids = tokenizer(text[: need * 8], return_tensors="pt").input_ids[0]
    if len(ids) < need:
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
    return [ids[(start + k) * WINDOW:(start + k + 1) * WINDOW] for k in range(n)]


def as_batches(wins: list[torch.Tensor], size: int) -> list[dict]:
    out = []
    for k in range(0, len(wins), size):
        ids = torch.stack(wins[k:k + size])
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return out


@torch.inference_mode()
def perplexity(model, eval_b) -> float:
    model.eval()
    nll = count = 0.0
    for b in tqdm(eval_b, desc="perplexity", leave=False):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        target = b["input_ids"][:, 1:]
        nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                       reduction="sum"))
        count += target.numel()
    return math.exp(nll / count)


def base_method(name):
    """'fisher' or a variant: +global (rank across layers), +params (joint heads/FFN search for the parameter
    budget), +weights (recovery re-solves the kept projection weights), +reselect (the plan's units re-chosen by
    reconstruction error, `reselect_units`), +obs (plan on `reconstruction_scores`), +labelfree."""
    method, *tags = name.split("+")
    unknown = set(tags) - {"global", "params", "weights", "labelfree", "reselect", "obs"}
    if unknown:
        raise ValueError(f"unknown variant tags {sorted(unknown)} in {name!r}")
    if ({"reselect", "obs"} & set(tags)) and "weights" not in tags:
        raise ValueError(f"{name!r}: +reselect and +obs choose units for weight reconstruction; add +weights")
    return method, {"scope": "global" if "global" in tags else "layer", "label_free": "labelfree" in tags,
                    "params": "params" in tags, "reconstruct": "weights" if "weights" in tags else "scales",
                    "reselect": "reselect" in tags, "obs": "obs" in tags}


def plan_for(scores, model, fraction, opts, dense_heads, dense_ffn):
    """The pruning plan for a fraction of layer parameters removed."""
    if opts["params"]:
        # at seq_len 1 a layer's FLOPs are 2 x its projection parameters (+ a negligible 4*h*d score term), so
        # the joint FLOPs search is a parameter-budget search over heads and FFN neurons of all layers
        return plan_from_flops(scores, model, flops_reduction=fraction, seq_len=1)
    heads, ffn = BUDGETS[fraction]
    return plan_from_sparsity(scores, head_sparsity=(dense_heads - heads) / dense_heads,
                              ffn_sparsity=(dense_ffn - ffn) / dense_ffn, scope=opts["scope"], gqa="per_group")


def label(method: str, statistics_windows: int) -> str:
    """The method's name, with the number of +weights statistics windows when it is not the default 32."""
    return method if "+weights" not in method or statistics_windows == 32 else f"{method} ({statistics_windows} windows)"


def run_key(name: str, fraction: float, rep: int, eval_windows: int, statistics_windows: int) -> str:
    """Cache key of one run; +weights runs with other than 32 statistics windows say how many."""
    base = f"{name}|{fraction:.2f}|{rep}|{eval_windows}"
    return base if "+weights" not in name or statistics_windows == 32 else f"{base}|{statistics_windows}w"


def aggregate(runs, dense_ppl, n_eval):
    groups = {}
    for r in runs.values():
        groups.setdefault((label(r["method"], r.get("statistics_windows", 0)), r["params_removed"]), []).append(r)
    rows = []
    for (method, frac), g in sorted(groups.items()):
        ppl = [x["perplexity"] for x in sorted(g, key=lambda x: x["rep"])]
        mean = statistics.mean(ppl)
        rows.append({
            "model": "HuggingFaceTB/SmolLM2-135M(-Instruct GGUF, float32)", "task": "wikitext-2 test",
            "method": method, "mode": "retrain-free", "params_removed": frac,
            "params_removed_actual": statistics.mean(x["params_removed_actual"] for x in g),
            "metric_name": "perplexity", "metric": mean, "metric_sd": statistics.stdev(ppl) if len(ppl) > 1 else 0.0,
            "runs": len(ppl), "metric_runs": ppl, "statistics_windows": g[0].get("statistics_windows"),
            "dense_metric": dense_ppl, "rise": mean / dense_ppl - 1,
            "eval_tokens": n_eval * WINDOW, "heads_per_layer": g[0]["heads"][0], "ffn_per_layer": g[0]["ffn"][0],
            "heads_all_layers": g[0]["heads"], "ffn_all_layers": g[0]["ffn"],  # slice 0's widths, layer by layer
        })
    return rows


def peer_rows(path: Path = HERE / "peers" / "results_perplexity.json") -> list[dict]:
    """Torch-Pruning on the same windows (benchmarks/peers/run.sh); [] if not run."""
    if not path.exists():
        return []
    return [dict(row, source="benchmarks/peers") for row in json.loads(path.read_text())["rows"]]


def plot(rows, dense_ppl, path, eval_windows=8):
    """Two panels: recovery by re-solved weights (+weights) with the peers; recovery by unit scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), sharey=True)
    panels = {0: [r for r in rows if "+weights" in r["method"] or r.get("source")],
              1: [r for r in rows if "+weights" not in r["method"] and not r.get("source")]}
    for k, ax in enumerate(axes):
        for m in sorted({r["method"] for r in panels[k]}):
            pts = sorted((r["params_removed"], r["metric"], r["metric_sd"]) for r in panels[k] if r["method"] == m)
            xs, ys, es = zip(*pts)
            peer = any(r.get("source") for r in panels[k] if r["method"] == m)
            ax.errorbar([0] + [100 * x for x in xs], [dense_ppl] + list(ys), yerr=[0] + list(es),
                        fmt="--*" if peer else "-o", ms=10 if peer else 4, capsize=3, label=m + (" (peer)" if peer else ""))
        ax.axhline(dense_ppl * 1.25, color="k", ls=":", lw=0.8, label="dense + 25%")
        ax.set_yscale("log")
        ax.set_xlabel("layer parameters removed (%)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"WikiText-2 test perplexity, first {eval_windows} windows of 512 (log)")
    axes[0].set_title("recovery re-solves kept weights (+weights); Torch-Pruning Taylor")
    axes[1].set_title("recovery rescales kept units (mask tuning)")
    fig.suptitle("SmolLM2-135M, retrain-free: mean +- sd over calibration slices")
    fig.tight_layout()
    write_figure(path, fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run; writes under <cache>/quick")
    p.add_argument("--methods", nargs="+", default=list(ALL_METHODS), help="methods, or variants like fisher+global")
    p.add_argument("--fractions", nargs="+", type=float, default=sorted(BUDGETS))
    p.add_argument("--slices", type=int, default=3)
    p.add_argument("--eval-windows", type=int, default=8,
                   help="first N windows of 512 tokens of the test split (0: all of it; other than 8 writes "
                        "perplexity_<N>_windows.json/png beside the main table)")
    p.add_argument("--calib-windows", type=int, default=4, help="windows of 512 train tokens per calibration slice")
    p.add_argument("--moment-windows", type=int, default=32,
                   help="windows per slice for the +weights recovery statistics (the slice's scoring windows first)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, default=HERE / "cache")
    p.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.cache = args.results = args.cache / "quick"
        args.methods = args.methods if args.methods != list(ALL_METHODS) else ["fisher", "random"]
        args.fractions, args.slices, args.eval_windows, args.calib_windows, args.moment_windows = [0.2], 1, 1, 1, 2
    args.cache.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)

    dense, tokenizer = load_smollm2()
    test_text = wikitext2("test")
    if args.eval_windows == 0:  # the whole test split, in full windows
        args.eval_windows = len(tokenizer(test_text).input_ids) // WINDOW
    eval_b = as_batches(windows(test_text, tokenizer, args.eval_windows), 2)
    stem = "perplexity" if args.eval_windows == 8 else f"perplexity_{args.eval_windows}_windows"  # 8: the main table
    extra = max(args.moment_windows - args.calib_windows, 0)  # more windows for the +weights statistics
    calib_all = windows(wikitext2("train"), tokenizer, args.slices * (args.calib_windows + extra))
    extra_all = calib_all[args.slices * args.calib_windows:]
    layer_params = count_parameters(dense, layers_only=True)
    print(f"eval {args.eval_windows} x {WINDOW} test tokens; calibration {args.slices} x {args.calib_windows} x "
          f"{WINDOW} train tokens; layer parameters {layer_params}; threads {torch.get_num_threads()}")

    runs_path = args.cache / "perplexity_runs.json"
    runs = {}
    if runs_path.exists():
        runs = json.loads(runs_path.read_text())
    key_dense = f"dense|{args.eval_windows}"
    if key_dense not in runs:
        t0 = time.time()
        runs[key_dense] = {"perplexity": perplexity(dense, eval_b), "seconds": time.time() - t0}
        atomic_write_json(runs_path, runs)
    dense_ppl = runs[key_dense]["perplexity"]
    print(f"dense perplexity {dense_ppl:.3f} on {args.eval_windows} windows ({runs[key_dense]['seconds']:.0f} s)")

    def save():
        if runs_path.exists():  # keep runs that another process (another method list) saved meanwhile
            runs.update({k: v for k, v in json.loads(runs_path.read_text()).items() if k not in runs})
        atomic_write_json(runs_path, runs)
        pruned = {k: v for k, v in runs.items() if not k.startswith("dense") and v["eval_windows"] == args.eval_windows}
        rows = aggregate(pruned, dense_ppl, args.eval_windows)
        rows += [r for r in peer_rows() if r.get("dense_metric") and abs(r["dense_metric"] - dense_ppl) < 0.01]
        atomic_write_json(args.results / f"{stem}.json", {"rows": rows, "setup": {
            "eval": f"first {args.eval_windows} non-overlapping windows of {WINDOW} tokens of WikiText-2 test "
                    f"({args.eval_windows * WINDOW} tokens)",
            "calibration": "disjoint slices of WikiText-2 train windows of 512 tokens; per run: scoring_windows, "
                           "statistics_windows (recovery statistics: the scoring windows, then more for +weights)",
            "plan": "plan_from_sparsity(scope='layer' unless +global, gqa='per_group'); budgets (heads, ffn) kept "
                    f"per layer: { {str(k): v for k, v in BUDGETS.items()} }; +params: plan_from_flops(seq_len=1) "
                    "for the parameter budget, heads and FFN of all layers jointly",
            "recovery": "tune_masks algorithm: scale per kept unit, or re-solved projection weights for +weights",
            "loss": "causal LM, labels = input_ids (label_free=False)",
            "machine": f"{platform.machine()}, {os.cpu_count()} shared CPU cores, torch {torch.__version__}",
            "peers_from_issue": PEER,
        }})
        if rows:
            plot(rows, dense_ppl, args.results / f"{stem}.png", args.eval_windows)

    dense_heads, dense_ffn = layer_shapes(dense)[0].heads, layer_shapes(dense)[0].ffn
    for rep in range(args.slices):
        scoring_windows = calib_all[rep * args.calib_windows:(rep + 1) * args.calib_windows]
        calib = as_batches(scoring_windows, 1)
        statistics_batches = {"scales": calib,
                              "weights": calib + as_batches(extra_all[rep * extra:(rep + 1) * extra], 1)}
        moments, base_scores = {}, {}
        for name in args.methods:
            method, opts = base_method(name)
            key = {f: run_key(name, f, rep, args.eval_windows, len(statistics_batches[opts["reconstruct"]]))
                   for f in args.fractions}
            todo = [f for f in args.fractions if key[f] not in runs]
            if not todo:
                continue
            recon = opts["reconstruct"]
            if recon not in moments:
                t0 = time.time()
                moments[recon] = calibration_moments(dense, statistics_batches[recon])
                print(f"slice {rep}: dense Gram moments ({len(statistics_batches[recon])} windows) in "
                      f"{time.time() - t0:.0f} s")
            t0 = time.time()
            if (method, opts["label_free"]) not in base_scores:  # the same scores serve every variant of a method
                base_scores[method, opts["label_free"]] = (
                    compute_importance(dense, calib, method=method, label_free=opts["label_free"], seed=rep,
                                       progress=False), time.time() - t0)
            scores, t_score = base_scores[method, opts["label_free"]]
            t0 = time.time()
            if opts["obs"]:
                scores = reconstruction_scores(dense, scores, moments[recon])
            t_select = time.time() - t0
            for f in todo:
                model = copy.deepcopy(dense)
                plan = plan_for(scores, model, f, opts, dense_heads, dense_ffn)
                t0 = time.time()
                if opts["reselect"]:
                    plan = reselect_units(dense, plan, moments[recon])
                t_chosen = t_select + time.time() - t0
                apply_mask_tuning(model, plan, moments[recon], reconstruct=recon)  # = tune_masks on these windows
                removed = 1 - count_parameters(model, layers_only=True) / layer_params
                t1 = time.time()
                ppl = perplexity(model, eval_b)
                shapes = layer_shapes(model)
                runs[key[f]] = {
                    "method": name, "params_removed": f, "rep": rep, "perplexity": ppl,
                    "params_removed_actual": removed, "eval_windows": args.eval_windows,
                    "heads": [s.heads for s in shapes], "ffn": [s.ffn for s in shapes],
                    "seconds_scoring": t_score, "seconds_eval": time.time() - t1, "seconds_selection": t_chosen,
                    "scoring_windows": args.calib_windows, "statistics_windows": len(statistics_batches[recon]),
                }
                print(f"{name:>12} -{f:.0%} params (actual {removed:.3f}) slice {rep}: ppl {ppl:.2f} "
                      f"(dense {dense_ppl:.2f}, x{ppl / dense_ppl:.2f})", flush=True)
                save()
    save()


if __name__ == "__main__":
    main()
