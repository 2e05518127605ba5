"""Run `make demo` (scripts/prune_heads.py --preset demo) and record its numbers in benchmarks/results/demo.json.

    .venv/bin/python benchmarks/record_demo.py            # ~2 minutes on 2 quiet cores
    .venv/bin/python benchmarks/record_demo.py -- --latency_repeats 20    # flags after -- go to the CLI

The demo fine-tunes the real all-MiniLM-L6-v2 with a new 2-label head on the offline movie-review
sentences while removing 50% of the heads and FFN neurons (fisher importance, 4 cubic events), then
evaluates, counts FLOPs and times dense and pruned alternated (`measure_latency`). The CLI writes
outputs/demo/pruning_report.json; this script runs it as a subprocess (as `make demo` does: offline,
no tokenizers parallelism) and copies the figures, the wall time, the CPU that other processes used
meanwhile and the machine into the JSON. The latency ratio is a wall-clock ratio on a shared machine:
read it with `other_load_cores`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from provenance import ROOT, OtherLoad, command_line, machine_info, model_label, now_utc  # noqa: E402

DEMO = ["scripts/prune_heads.py", "--preset", "demo"]
REPORT = ROOT / "outputs" / "demo" / "pruning_report.json"  # the preset's --output_dir


def layer_summary(side: dict) -> dict:
    structure = side["structure"]
    return {
        "metrics": side["metrics"],
        "parameters": side["parameters"],
        "layer_flops": side["flops"],
        "latency_ms": side["latency_ms"],
        "heads": sum(structure["heads_per_layer"]),
        "heads_per_layer": structure["heads_per_layer"],
        "ffn_neurons": sum(structure["ffn_per_layer"]),
        "ffn_per_layer": structure["ffn_per_layer"],
    }


def record(report: dict, wall_s: float, other_load: float | None, cli_args: list[str], argv: list[str]) -> dict:
    before, after = layer_summary(report["before"]), layer_summary(report["after"])
    latency = report["latency"]
    return {
        "benchmark": "record_demo",
        "date": now_utc(),
        "command": command_line("benchmarks/record_demo.py", argv),
        "demo_command": " ".join([".venv/bin/python", *DEMO, *cli_args]),
        "model": model_label(report["model"]),
        "task": report["task"],
        "seq_len": report["seq_len"],
        "pruning": report["pruning"],
        "before": before,
        "after": after,
        "ratios": {
            "parameters": after["parameters"] / before["parameters"],
            "layer_flops": after["layer_flops"] / before["layer_flops"],
            "latency": after["latency_ms"] / before["latency_ms"],
        },
        "latency": {k: latency[k] for k in ("batch_size", "seq_len", "repeats", "threads", "dense_median_s",
                                              "pruned_median_s", "speedup") if k in latency},
        "time_s": report.get("time_s"),
        "wall_s": wall_s,
        "other_load_cores": other_load,  # CPU used by other processes during the whole demo (not the CLI itself)
        "load_average_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "machine": machine_info(latency.get("threads")),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "demo.json")
    parser.add_argument("cli_args", nargs="*", help="after --: extra flags for scripts/prune_heads.py")
    args = parser.parse_args(argv)

    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")  # as the Makefile exports them
    if REPORT.exists():
        REPORT.unlink()  # never record a report left by an earlier run
    started = time.perf_counter()
    with OtherLoad() as load:
        done = subprocess.run([sys.executable, *DEMO, *args.cli_args], cwd=ROOT, env=env)
    wall_s = time.perf_counter() - started
    if done.returncode != 0 or not REPORT.exists():
        print(f"the demo failed (exit status {done.returncode}); nothing recorded", file=sys.stderr)
        return done.returncode or 1

    result = record(json.loads(REPORT.read_text()), wall_s, load.cores, args.cli_args, argv)
    from hf_prune.serialization.atomic import atomic_write_json

    atomic_write_json(args.out, result)
    b, a, r = result["before"], result["after"], result["ratios"]
    print(f"\naccuracy {b['metrics'].get('accuracy'):.4f} -> {a['metrics'].get('accuracy'):.4f}, layer FLOPs x"
          f"{r['layer_flops']:.3f}, latency x{r['latency']:.3f} ({b['latency_ms']:.1f} -> {a['latency_ms']:.1f} ms), "
          f"wall {wall_s:.0f} s, other processes {load.cores if load.cores is None else round(load.cores, 2)} cores")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
