"""Markdown tables for RESULTS.md from benchmarks/results/{accuracy,perplexity}.json.

    .venv/bin/python benchmarks/make_tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def accuracy_tables() -> str:
    rows = json.loads((RESULTS / "accuracy.json").read_text())["rows"]
    out = []
    for mode in ("retrain-free", "fine-tuned"):
        mine = [r for r in rows if r["mode"] == mode and not r.get("source")]
        budgets = sorted({r["flops_reduction"] for r in mine})
        out.append(f"| method ({mode}) | " + " | ".join(f"-{b:.0%}" for b in budgets) + " |")
        out.append("|---" * (len(budgets) + 1) + "|")
        for method in sorted({r["method"] for r in mine}, key=lambda m: ("+weights" not in m, m)):
            cells = []
            for b in budgets:
                hit = [r for r in mine if r["method"] == method and r["flops_reduction"] == b]
                cells.append(f"{hit[0]['metric']:.4f} ± {hit[0]['metric_sd']:.4f}"
                             + (f" (n={hit[0]['runs']})" if hit[0]["runs"] != 3 else "") if hit else "–")
            out.append(f"| {method} | " + " | ".join(cells) + " |")
        out.append("")
    peers = [r for r in rows if r.get("source")]
    if peers:
        out.append("| tool (same run, benchmarks/peers) | mode | FLOPs reduction | accuracy | s to prune | "
                   "latency b8 / b1 (ideal) | plain from_pretrained (v4 / v5) |")
        out.append("|---|---|---|---|---|---|---|")
        for r in sorted(peers, key=lambda r: (r["mode"], -r["metric"])):
            v4 = {True: "yes", False: "no", None: "–"}[r.get("reload_v4_from_pretrained")]
            v5 = {True: "yes", False: "no", None: "–"}[r.get("reload_v5_from_pretrained")]
            if r.get("reload_hf_prune_load_pruned"):
                v5 += " (load_pruned: yes)"
            out.append(f"| {r['method']} | {r['mode']} | {r['flops_reduction']:.3f} | {r['metric']:.4f} ± "
                       f"{r['metric_sd']:.4f} | {r['seconds_to_prune']:.0f} | {r['latency_ratio_b8']:.2f} / "
                       f"{r['latency_ratio_b1']:.2f} ({r['latency_ideal_ratio_seq128']:.2f}) | {v4} / {v5} |")
        out.append("")
    return "\n".join(out)


def perplexity_table() -> str:
    rows = json.loads((RESULTS / "perplexity.json").read_text())["rows"]
    dense = rows[0]["dense_metric"]
    fractions = sorted({r["params_removed"] for r in rows})
    out = [f"| method (dense {dense:.2f}) | " + " | ".join(f"-{f:.0%} params" for f in fractions) + " |",
           "|---" * (len(fractions) + 1) + "|"]
    order = sorted({r["method"] for r in rows}, key=lambda m: min(r["metric"] for r in rows if r["method"] == m))
    for method in order:
        cells = []
        for f in fractions:
            hit = [r for r in rows if r["method"] == method and r["params_removed"] == f]
            cells.append(f"{hit[0]['metric']:.1f} ± {hit[0]['metric_sd']:.1f} (×{hit[0]['metric'] / dense:.2f}, "
                         f"n={hit[0]['runs']})" if hit else "–")
        name = method + (" (peer)" if any(r.get("source") for r in rows if r["method"] == method) else "")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(accuracy_tables())
    print(perplexity_table())
