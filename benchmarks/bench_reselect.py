"""Re-selection at LLM widths (issue 15 §3): greedy structured OBS before and after, on synthetic FFN layers.

One synthetic down projection per width (weight (out, F), out = the model's hidden size; moment X^T X of
correlated random inputs X (2F tokens, plus the constant feature: the projection has a bias, so F' = F + 1)),
50% of the F neurons removed, `block` 8, as `reselect_units` does. `baseline_greedy_obs` below is the
implementation before issue 15, kept for comparison; the new one is `hf_prune.recovery.reselect.greedy_obs`.
Rows record wall-clock seconds, peak RSS of the process so far, and whether the two select the same neurons
(else the overlap fraction). Widths <= 4096 alternate baseline / new `--repeats` times; wider ones run the
baseline once and the new one `--large-repeats` times. Finished rows are cached in cache/reselect_runs.json (a
rerun resumes; each row keeps its own timestamp and the load of other processes while it ran), so the slow
baseline at 11008 may run in its own invocation (`--only baseline`).

    .venv/bin/python benchmarks/bench_reselect.py                         # 1536 and 11008
    .venv/bin/python benchmarks/bench_reselect.py --widths 28672 --skip-baseline --large-repeats 1   # 70B width
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from provenance import OtherLoad, command_line, machine_info, now_utc  # noqa: E402

from hf_prune.recovery.reselect import cheapest_groups, greedy_obs  # noqa: E402
from hf_prune.serialization.atomic import atomic_write_json  # noqa: E402

HIDDEN = {1536: 576, 11008: 4096, 14336: 4096, 28672: 8192}  # SmolLM2-135M, Llama-2-7B, Llama-3-8B, Llama-2/3-70B


# ----------------------------------------------------------------------------- the implementation before issue 15,
# kept for comparison (greedy_obs and the two least-squares helpers it used, frozen as they were)


def _baseline_solve_spd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    vector = b.dim() == a.dim() - 1
    rhs = b.unsqueeze(-1) if vector else b
    factor, info = torch.linalg.cholesky_ex(a)
    x = torch.cholesky_solve(rhs, factor)
    failed = info != 0
    if bool(failed.any()):
        x[failed] = torch.linalg.pinv(a[failed], hermitian=True) @ rhs[failed]
    return x.squeeze(-1) if vector else x


def _baseline_inverse_spd(a: torch.Tensor) -> torch.Tensor:
    factor, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        return torch.linalg.pinv(a, hermitian=True)
    return torch.cholesky_inverse(factor)


def baseline_greedy_obs(moment, weight, groups, families, quota, ridge, block):
    """The implementation before issue 15, kept for comparison (copies of H and W, a full update per step)."""
    h = moment.clone()
    h.diagonal().add_(h.diagonal().mean().clamp_min(1e-30) * ridge)
    h_inv = _baseline_inverse_spd(h)
    w = weight.clone()
    left = dict(quota)
    alive = [g for g in range(len(groups)) if left.get(families[g], 0) > 0]
    steps = []
    while alive:
        cols_alive = torch.as_tensor([groups[g] for g in alive])
        if cols_alive.shape[1] == 1:
            j = cols_alive[:, 0]
            errors = ((w[:, j] ** 2).sum(0) / h_inv.diagonal()[j]).tolist()
        else:
            w_g = w[:, cols_alive].permute(1, 0, 2)
            inv_blocks = h_inv[cols_alive[:, :, None], cols_alive[:, None, :]]
            solved = _baseline_solve_spd(inv_blocks, w_g.transpose(1, 2))
            errors = (w_g.transpose(1, 2) * solved).sum((1, 2)).tolist()
        take = cheapest_groups(errors, alive, families, left, block)
        cols = torch.as_tensor([c for g in take for c in groups[g]])
        inv_gg = _baseline_inverse_spd(h_inv[cols][:, cols])
        steps.append((take, torch.trace(w[:, cols] @ inv_gg @ w[:, cols].t()).item()))
        w -= w[:, cols] @ inv_gg @ h_inv[cols]
        h_inv -= h_inv[:, cols] @ inv_gg @ h_inv[cols]
        w[:, cols] = 0.0
        h_inv[:, cols] = 0.0
        h_inv[cols] = 0.0
        for g in take:
            left[families[g]] -= 1
        taken = set(take)
        alive = [g for g in alive if g not in taken and left[families[g]] > 0]
    return steps


# ----------------------------------------------------------------------------- problems


def problem(width: int, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(moment (F + 1, F + 1), weight (out, F + 1)) of a synthetic down projection with a bias, cached on disk.

    X: 2F tokens of correlated features (each a mix of its own noise, its neighbour's and 32 shared factors),
    with a trailing constant 1; float32 for the product, float64 moment as `calibration_moments` keeps it.
    """
    path = cache / f"reselect_problem_{width}.pt"
    if path.exists():
        saved = torch.load(path)
        return saved["moment"], saved["weight"]
    g = torch.Generator().manual_seed(width)
    tokens = 2 * width
    z = torch.randn(tokens, width, generator=g)  # (T, F)
    shared = torch.randn(tokens, 32, generator=g) @ torch.randn(32, width, generator=g) / 4  # (T, F)
    x = z + 0.5 * torch.roll(z, 1, dims=1) + shared + 0.3  # (T, F): correlated, nonzero mean
    del z, shared
    x = torch.cat([x, torch.ones(tokens, 1)], 1)  # (T, F + 1): the constant feature
    moment = (x.t() @ x).double() / tokens  # (F + 1, F + 1)
    del x
    out = HIDDEN.get(width, max(1, width * 3 // 8))
    weight = torch.randn(out, width + 1, generator=g, dtype=torch.float64) / width ** 0.5  # (out, F + 1)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"moment": moment, "weight": weight}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)  # atomic: another invocation may be waiting for it
    return moment, weight


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def load_runs(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def stop_after(cap: float, row: dict, runs_path: Path, start: float, cpu: float) -> threading.Timer:
    """A timer that, after `cap` s, records `row` as unfinished (a lower bound on its time) and ends the process."""
    def stop():
        row.update(seconds=round(time.perf_counter() - start, 3), cpu_seconds=round(time.process_time() - cpu, 3),
                   complete=False, peak_rss_gib=round(peak_rss_gib(), 2), finished=now_utc(), removed=[])
        atomic_write_json(runs_path, load_runs(runs_path) + [row])
        print(f"  stopped unfinished after {row['seconds']} s ({row['cpu_seconds']} CPU s)", flush=True)
        os._exit(3)

    timer = threading.Timer(cap, stop)
    timer.daemon = True
    timer.start()
    return timer


def run_one(impl: str, moment, weight, width: int, block: int, cap: float | None = None,
            stub: dict | None = None, runs_path: Path | None = None) -> dict:
    groups, families, quota = [[n] for n in range(width)], [0] * width, {0: width // 2}
    with OtherLoad() as load:
        start, cpu = time.perf_counter(), time.process_time()
        timer = stop_after(cap, {"impl": impl, "width": width, "out": weight.shape[0], **stub}, runs_path, start,
                           cpu) if cap else None
        if impl == "baseline":
            steps = baseline_greedy_obs(moment, weight, groups, families, quota, 1e-4, block)
        else:
            steps = greedy_obs(moment, weight, groups, families, quota, 1e-4, block, progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        if timer is not None:
            timer.cancel()
    return {"impl": impl, "width": width, "out": weight.shape[0], "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
            "peak_rss_gib": round(peak_rss_gib(), 2), "other_load_cores": None if load.cores is None else round(load.cores, 2),
            "finished": now_utc(), "removed": sorted(g for take, _ in steps for g in take)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[1536, 11008])
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats at widths <= 4096")
    parser.add_argument("--large-repeats", type=int, default=2, help="runs of the new implementation above 4096")
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on the 2 shared, oversubscribed cores two OpenMP threads spin-wait)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--only", choices=["baseline", "new"], default=None, help="run only this implementation")
    parser.add_argument("--cache", type=Path, default=HERE / "cache")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "reselect.json")
    parser.add_argument("--note", action="append", default=[], help="a line for setup.notes (repeatable)")
    parser.add_argument("--cap", type=float, default=None,
                        help="seconds after which a run is recorded as unfinished (a lower bound) and the process ends")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs_path = args.cache / "reselect_runs.json"
    runs = load_runs(runs_path)
    commands = set()
    for width in args.widths:
        moment, weight = problem(width, args.cache)
        small = width <= 4096
        plan = (["baseline", "new"] * args.repeats if small
                else ["baseline"] + ["new"] * args.large_repeats)
        for impl in plan:
            if (args.skip_baseline and impl == "baseline") or (args.only and impl != args.only):
                continue
            done = [r for r in runs if r["impl"] == impl and r["width"] == width and r["block"] == args.block
                    and r.get("complete", True)]
            if len(done) >= plan.count(impl):
                continue
            print(f"width {width}: {impl} ...", flush=True)
            stub = {"block": args.block, "threads": args.threads, "command": command_line("benchmarks/bench_reselect.py")}
            row = dict(run_one(impl, moment, weight, width, args.block, args.cap, stub, runs_path), **stub)
            print(f"  {row['seconds']} s, peak RSS {row['peak_rss_gib']} GiB", flush=True)
            runs = load_runs(runs_path) + [row]  # re-read: another invocation may have added rows meanwhile
            atomic_write_json(runs_path, runs)
        commands.add(command_line("benchmarks/bench_reselect.py"))
        del moment, weight
    runs, table = load_runs(runs_path), []
    for width in sorted({r["width"] for r in runs}):
        rows = {impl: [r for r in runs if r["width"] == width and r["impl"] == impl and r["block"] == args.block
                       and r.get("complete", True)] for impl in ("baseline", "new")}
        unfinished = [r for r in runs if r["width"] == width and r["block"] == args.block and r.get("complete") is False]
        entry = {"width": width, "out": (rows["new"] or rows["baseline"])[0]["out"], "block": args.block,
                 "removed": width // 2}
        for impl, found in rows.items():
            if found:
                entry[f"{impl}_seconds"] = [r["seconds"] for r in found]
                entry[f"{impl}_median_s"] = statistics.median(r["seconds"] for r in found)
                entry[f"{impl}_peak_rss_gib"] = max(r["peak_rss_gib"] for r in found)
                cpu = [r["cpu_seconds"] for r in found if "cpu_seconds" in r]
                if cpu:
                    entry[f"{impl}_cpu_median_s"] = statistics.median(cpu)
        if rows["baseline"] and rows["new"]:
            entry["speedup"] = round(entry["baseline_median_s"] / entry["new_median_s"], 2)
            if "baseline_cpu_median_s" in entry and "new_cpu_median_s" in entry:
                entry["cpu_speedup"] = round(entry["baseline_cpu_median_s"] / entry["new_cpu_median_s"], 2)
            old, new = set(rows["baseline"][0]["removed"]), set(rows["new"][0]["removed"])
            entry["same_selection"] = old == new
            entry["overlap"] = round(len(old & new) / max(len(old), 1), 4)
        entry["new_runs_agree"] = len({tuple(r["removed"]) for r in rows["new"]}) <= 1
        for r in unfinished:  # stopped by --cap: its time is only a lower bound
            entry[f"{r['impl']}_unfinished_after_s"] = r["seconds"]
            entry[f"{r['impl']}_unfinished_after_cpu_s"] = r["cpu_seconds"]
            if r["impl"] == "baseline" and rows["new"]:
                entry["speedup_at_least"] = round(r["seconds"] / entry["new_median_s"], 2)
                if "new_cpu_median_s" in entry:
                    entry["cpu_speedup_at_least"] = round(r["cpu_seconds"] / entry["new_cpu_median_s"], 2)
        table.append(entry)
    result = {
        "setup": {
            "what": "greedy structured OBS (reselect.greedy_obs) on one synthetic FFN down projection per width: "
                    "moment X^T X / T of 2F correlated random tokens plus the constant feature (bias: F' = F + 1), "
                    "weight (hidden, F + 1), 50% of neurons removed, ridge 1e-4",
            "baseline": "baseline_greedy_obs in this file: the implementation before issue 15",
            "machine": "shared 2-core, other jobs running",
            "machine_info": machine_info(args.threads),
            "commands": sorted(commands | {r["command"] for r in runs}),
            "note": "rows may come from separate invocations (cached in cache/reselect_runs.json); each run keeps its "
                    "finish time and the CPU cores other processes used meanwhile",
            "finished": now_utc(),
            "notes": args.note,
        },
        "rows": table,
        "runs": [{k: v for k, v in r.items() if k != "removed"} for r in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
