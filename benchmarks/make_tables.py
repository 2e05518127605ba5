"""Regenerate every table of benchmarks/RESULTS.md and README's "Results at a glance" from benchmarks/results/*.json,
and README's list of supported model types from `hf_prune.supported_model_types()`.

    .venv/bin/python benchmarks/make_tables.py           # rewrite the generated regions in place
    .venv/bin/python benchmarks/make_tables.py --check   # exit 1 (and print a diff) if a region is out of date
    .venv/bin/python benchmarks/make_tables.py --print   # print every region, write nothing

Only the text between

    <!-- begin generated: NAME -->
    <!-- end generated: NAME -->

is rewritten; the prose around it is written by hand. Every region comes from one function below, which
reads only JSON files in benchmarks/results/ (each written by the benchmark command it names; the supported
model types come from the package itself), so a number edited by hand inside a region is put back by the next
run and fails tests/test_results_tables.py.
Running this twice changes nothing.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"
README_MD = ROOT / "README.md"

REGION = re.compile(r"(<!-- begin generated: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- end generated: (?P=name) -->)",
                    re.DOTALL)


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


# ----------------------------------------------------------------------------------------------- helpers


def machine_text(machine) -> str:
    """A JSON's machine record in words (older files hold a string, newer ones a dict)."""
    if isinstance(machine, str):
        return machine
    parts = [machine.get("processor", "?")]
    if machine.get("cpu_capability"):
        parts[0] += f" ({machine['cpu_capability']})"
    parts.append(f"{machine.get('cpu_count')} CPUs")
    if machine.get("torch_threads") is not None:
        parts.append(f"{machine['torch_threads']} torch threads")
    parts.append(f"torch {machine.get('torch')}")
    if machine.get("transformers"):
        parts.append(f"transformers {machine['transformers']}")
    return ", ".join(parts)


def command_from_args(script: str, args: dict, default_out: str) -> str:
    """The command line of an older JSON that kept only its argparse namespace (`args`)."""
    flags = []
    for key, value in args.items():
        if key == "out" and value == default_out:
            continue
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return " ".join([".venv/bin/python", f"benchmarks/{script}", *flags])


def minutes(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def duration(seconds: float) -> str:
    """'4.2 h' from an hour on, else `minutes`."""
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else minutes(seconds)


def load_text(cores) -> str:
    return "not measured" if cores is None else f"{cores:.2f} cores"


def table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    lines = ["|" + "|".join(f" {cell} " if cell else " " for cell in header) + "|",
             "|" + "|".join(align or ["---"] * len(header)) + "|"]
    lines += ["|" + "|".join(f" {cell} " if cell else " " for cell in row) + "|" for row in rows]
    return "\n".join(lines)


def accuracy_rows() -> list[dict]:
    return load("accuracy.json")["rows"]


def find(rows: list[dict], **match) -> dict:
    hits = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    if len(hits) != 1:
        raise LookupError(f"{len(hits)} rows match {match}")
    return hits[0]


# ----------------------------------------------------------------------------------------------- speed


def speed_required_row(payload: dict) -> dict:
    return next(r for r in payload["rows"] if r["required"])


def speed() -> str:
    """benchmarks/results/speed.json (bench_speed.py, `--full` for the whole grid)."""
    payload = load("speed.json")
    rows = payload["rows"]
    loads = [r["other_load_cores"] for r in rows if r["other_load_cores"] is not None]
    load_range = f"{min(loads):.2f}-{max(loads):.2f} cores" if loads else "not measured"
    head = (f"Recorded by `{payload['command']}` on {payload['date'][:10]} ({machine_text(payload['machine'])}; "
            f"{rows[0]['repeats']} alternated rounds, seq {rows[0]['seq_len']}). Other processes used {load_range} "
            f"during the timing.")
    body = []
    for r in sorted(rows, key=lambda r: (r["batch_size"], r["sparsity"])):
        share = f"{r['share_layers']:.3f}"
        if r["required"]:
            share = f"**{share} (required config: {'PASS' if r['pass'] else 'FAIL'})**"
        body.append([f"{r['sparsity']:.0%}", str(r["batch_size"]), f"{r['ideal_speedup_layers']:.3f}",
                     f"{1e3 * r['dense_median_s']:.1f}", f"{1e3 * r['pruned_median_s']:.1f}",
                     f"{r['measured_speedup']:.3f}", share])
    return head + "\n\n" + table(["sparsity (heads and FFN)", "batch", "ideal speedup", "dense ms", "pruned ms",
                                  "measured speedup", "share of ideal"], body)


def speed_models() -> str:
    """benchmarks/results/speed_models.json (bench_speed_models.py)."""
    payload = load("speed_models.json")
    names = {"bert-base (random)": "BERT-base shapes (random)", "SmolLM2-135M": "SmolLM2-135M (GQA)"}
    body, previous = [], None
    for r in payload["rows"]:
        name = names.get(r["model"], r["model"])
        b1, b8 = r["batch1"], r["batch8"]
        body.append([
            name if name != previous else "", f"{r['sparsity']:.0%}", f"{r['ideal_speedup']:.2f}",
            f"{b1['speedup']:.2f} ({b1['share_of_ideal']:.2f})", f"{b8['speedup']:.2f} ({b8['share_of_ideal']:.2f})",
            f"{r['disk_mb']['pruned']:.0f} / {r['disk_mb']['dense']:.0f}",
            f"{r['peak_load_mib']['pruned']:.0f} / {r['peak_load_mib']['dense']:.0f}",
        ])
        previous = name
    imports_only = statistics.median(r["peak_load_mib"]["imports_only"] for r in payload["rows"])
    head = (f"Machine: {payload['machine']}; sequence {payload['seq_len']}, {payload['repeats']} alternated repeats, "
            f"medians. A process that only imports torch and transformers peaks at {imports_only:.0f} MiB.")
    return head + "\n\n" + table(["model", "sparsity", "ideal", "batch 1 speedup (share)", "batch 8 speedup (share)",
                                  "disk MB pruned / dense", "peak load MiB pruned / dense"], body)


# ----------------------------------------------------------------------------------------------- scoring cost


def importance_overhead() -> str:
    """benchmarks/results/importance_overhead.json (bench_importance_overhead.py)."""
    p = load("importance_overhead.json")
    head = (f"Recorded by `{p['command']}` on {p['date'][:10]} ({machine_text(p['machine'])}): {p['batches']} batches "
            f"x {p['batch_size']} x {p['seq_len']} tokens, {p['repeats']} alternating rounds, medians. Other processes "
            f"used {load_text(p['other_load_cores'])} during the timed rounds.")
    body = []
    for r in p["rows"]:
        ratio = f"{r['ratio']:.3f}"
        if r["run"] == "gradient":
            ratio = f"**{ratio}**"
        body.append([r["run"], f"{r['median_s']:.3f}", ratio])
    verdict = (f"gradient scoring / forward+backward = {p['gradient_ratio']:.3f} (target <= {p['target']}): "
               f"{'PASS' if p['pass'] else 'FAIL'}.")
    return head + "\n\n" + table(["run", "median s", "/ forward+backward"], body) + "\n\n" + verdict


# ----------------------------------------------------------------------------------------------- lottery, quantize


def lottery() -> str:
    """benchmarks/results/lottery.json (lottery_ticket.py)."""
    p = load("lottery.json")
    command = p.get("command") or command_from_args("lottery_ticket.py", p["args"], "benchmarks/results/lottery.json")
    head = f"Recorded by `{command}` ({p['machine']}); wall time {p['wall_s']:.0f} s."
    body = [[f"{r['round']}" + (" (dense)" if r["round"] == 0 else ""),
             "0%" if r["sparsity"] == 0 else f"{r['sparsity']:.1%}", f"{r['ticket']:.3f}",
             "-" if r["random"] is None else f"{r['random']:.3f}"] for r in p["rows"]]
    return head + "\n\n" + table(["round", "projection sparsity", "rewound ticket", "random re-init, same masks"], body)


def quantize() -> str:
    """benchmarks/results/quantize.json (bench_quantize.py)."""
    p = load("quantize.json")
    command = p.get("command") or command_from_args("bench_quantize.py", p["args"], "benchmarks/results/quantize.json")
    head = f"Recorded by `{command}` ({p['machine']}); wall time {p['wall_s']:.0f} s."
    names = {"heads+ffn": "heads+ffn 50%", "unstructured": "unstructured 50%"}
    body = []
    for r in p["rows"]:
        kind, precision = r["model"].rsplit(" ", 1)
        size = f"{r['size_bytes'] / 1e6:.1f}"
        if r.get("sparse_export_bytes"):
            size += f" (`save_sparse`: {r['sparse_export_bytes'] / 1e6:.1f})"
        p10, p90 = r["latency_p10_p90_ms"]
        body.append([f"{names.get(kind, kind)} {precision}", f"{r['parameters'] / 1e6:.1f} M", size,
                     f"{r['latency_ms']:.1f} ({p10:.0f}-{p90:.0f})", f"{r['accuracy']:.3f}",
                     "-" if precision == "fp32" else f"{r['agreement_with_fp32']:.3f}"])
    return head + "\n\n" + table(["model", "parameters", "size MB", "latency ms (p10-p90)", "accuracy",
                                  "agreement with fp32"], body)


# ----------------------------------------------------------------------------------------------- demo


def demo() -> str:
    """benchmarks/results/demo.json (record_demo.py, which runs `make demo`)."""
    p = load("demo.json")
    b, a, ratio, lat = p["before"], p["after"], p["ratios"], p["latency"]

    def per_layer(values):
        return " ".join(map(str, values))

    head = (f"Recorded by `{p['command']}` on {p['date'][:10]} (it runs `{p['demo_command']}`; "
            f"{machine_text(p['machine'])}): **{minutes(p['wall_s'])}** wall in all; other processes used "
            f"{load_text(p['other_load_cores'])} meanwhile.")
    body = [
        ["accuracy", f"{b['metrics']['accuracy']:.3f}", f"{a['metrics']['accuracy']:.3f}"],
        ["F1", f"{b['metrics']['f1']:.3f}", f"{a['metrics']['f1']:.3f}"],
        ["parameters", f"{b['parameters']:,}", f"{a['parameters']:,} ({ratio['parameters']:.3f})"],
        [f"layer FLOPs at {p['seq_len']} tokens", f"{b['layer_flops'] / 1e9:.3f} G",
         f"{a['layer_flops'] / 1e9:.3f} G ({ratio['layer_flops']:.3f})"],
        [f"CPU latency, batch {lat['batch_size']} x {lat['seq_len']}, {lat['threads']} threads "
         f"(median of {lat['repeats']}, alternated)", f"{b['latency_ms']:.1f} ms",
         f"{a['latency_ms']:.1f} ms ({ratio['latency']:.3f})"],
        ["heads", f"{b['heads']:,}", f"{a['heads']:,} (per layer {per_layer(a['heads_per_layer'])})"],
        ["FFN neurons", f"{b['ffn_neurons']:,}", f"{a['ffn_neurons']:,} (per layer {per_layer(a['ffn_per_layer'])})"],
    ]
    return head + "\n\n" + table(["", "before (untrained head)", "after"], body, ["---", "---:", "---:"])


# ----------------------------------------------------------------------------------------------- accuracy, peers


def accuracy_table(mode: str) -> str:
    """benchmarks/results/accuracy.json (bench_accuracy.py), hf_prune's own rows of one mode."""
    rows = accuracy_rows()
    mine = [r for r in rows if r["mode"] == mode and not r.get("source")]
    budgets = sorted({r["flops_reduction"] for r in mine})
    body = []
    for method in sorted({r["method"] for r in mine}, key=lambda m: ("+weights" not in m, m)):
        cells = []
        for budget in budgets:
            hit = [r for r in mine if r["method"] == method and r["flops_reduction"] == budget]
            cells.append(f"{hit[0]['metric']:.4f} ± {hit[0]['metric_sd']:.4f}"
                         + (f" (n={hit[0]['runs']})" if hit[0]["runs"] != 3 else "") if hit else "–")
        body.append([method, *cells])
    return table([f"method ({mode})", *(f"-{b:.0%}" for b in budgets)], body)


def accuracy_retrain_free() -> str:
    return accuracy_table("retrain-free")


def accuracy_fine_tuned() -> str:
    return accuracy_table("fine-tuned")


def peers_minilm() -> str:
    """The peer rows of benchmarks/results/accuracy.json (benchmarks/peers/run.sh, merged by bench_accuracy.py)."""
    peers = [r for r in accuracy_rows() if r.get("source")]
    dense = {r["dense_metric"] for r in peers}
    yes_no = {True: "yes", False: "no", None: "–"}
    body = []
    for r in sorted(peers, key=lambda r: (r["mode"], -r["metric"])):
        v5 = yes_no[r.get("reload_v5_from_pretrained")]
        if r.get("reload_hf_prune_load_pruned"):
            v5 += " (load_pruned: yes)"
        body.append([r["method"], r["mode"], f"{r['flops_reduction']:.3f}", f"{r['metric']:.4f} ± {r['metric_sd']:.4f}",
                     f"{r['seconds_to_prune']:.0f}",
                     f"{r['latency_ratio_b8']:.2f} / {r['latency_ratio_b1']:.2f} ({r['latency_ideal_ratio_seq128']:.2f})",
                     f"{yes_no[r.get('reload_v4_from_pretrained')]} / {v5}"])
    head = "Dense accuracy: " + " / ".join(f"{d:.4f}" for d in sorted(dense)) + "."
    return head + "\n\n" + table(["tool (same run, benchmarks/peers)", "mode", "FLOPs reduction", "accuracy",
                                  "s to prune", "latency b8 / b1 (ideal)", "plain from_pretrained (v4 / v5)"], body)


# ----------------------------------------------------------------------------------------------- perplexity


def perplexity_rows() -> list[dict]:
    return load("perplexity.json")["rows"]


def perplexity() -> str:
    """benchmarks/results/perplexity.json (bench_perplexity.py, Torch-Pruning rows from benchmarks/peers/run.sh)."""
    rows = perplexity_rows()
    dense = rows[0]["dense_metric"]
    fractions = sorted({r["params_removed"] for r in rows})
    order = sorted({r["method"] for r in rows}, key=lambda m: min(r["metric"] for r in rows if r["method"] == m))
    body = []
    for method in order:
        cells = []
        for f in fractions:
            hit = [r for r in rows if r["method"] == method and r["params_removed"] == f]
            cells.append(f"{hit[0]['metric']:.1f} ± {hit[0]['metric_sd']:.1f} (×{hit[0]['metric'] / dense:.2f}, "
                         f"n={hit[0]['runs']})" if hit else "–")
        name = method + (" (peer)" if any(r.get("source") for r in rows if r["method"] == method) else "")
        body.append([name, *cells])
    return table([f"method (dense {dense:.2f})", *(f"-{f:.0%} params" for f in fractions)], body)


def perplexity_full_test() -> str:
    """benchmarks/results/perplexity_592_windows.json (bench_perplexity.py --eval-windows 0)."""
    p = load("perplexity_592_windows.json")
    body = [[r["method"], f"{r['params_removed']:.0%}", f"{r['eval_tokens']:,}", f"{r['dense_metric']:.2f}",
             f"{r['metric']:.2f} (×{r['metric'] / r['dense_metric']:.2f}, n={r['runs']})"] for r in p["rows"]]
    return table(["method", "params removed", "test tokens", "dense", "pruned"], body)


def depth_setup() -> str:
    """benchmarks/results/depth.json (bench_depth.py): how it was recorded."""
    d = load("depth.json")
    dense = d["dense"]
    loads = [r["other_load_cores"] for r in d["rows"] if r.get("other_load_cores") is not None]
    text = (f"Recorded by `{d['command']}` on {d['date'][:10]} ({machine_text(d['machine'])}). Dense: perplexity "
            f"{dense['perplexity']:.2f}, decode {dense['decode_ms_per_token']:.1f} ms/token, prefill "
            f"{dense['prefill_ms']:.0f} ms.")
    if loads:
        text += f" Other processes used {load_text(max(loads))} during the timing."
    return text + "\n"


def _depth_name(r: dict) -> str:
    if r["family"] == "depth":
        return f"depth: {r['method']}"
    return {"width": "width (fisher, reselect, weight recovery)", "joint": "joint (plan_from_params)",
            "joint-latency": "joint (plan_from_latency)"}.get(r["family"], r["family"])


def depth_table() -> str:
    """benchmarks/results/depth.json (bench_depth.py): perplexity and measured speed of every family of plans."""
    d = load("depth.json")
    dense = d["dense"]["perplexity"]
    body = []
    for r in sorted(d["rows"], key=lambda r: (r["family"] == "joint-latency", r["budget"] if r["family"] != "joint-latency"
                                              else 1 - r["budget"], r["family"] != "width", r["perplexity"])):
        budget = (f"{r['budget']:.0%} of latency" if r["family"] == "joint-latency" else f"-{r['budget']:.0%} params")
        ppl = f"{r['perplexity']:.1f}" + (f" ± {r['perplexity_sd']:.1f}" if r["runs"] > 1 else "")
        speed = (f"×{r['decode_speedup']:.3f} (ideal ×{r['decode_ideal_speedup']:.3f}, share "
                 f"{r['decode_share_of_ideal']:.2f})" if "decode_speedup" in r else "–")
        prefill = f"×{r['prefill_speedup']:.3f}" if "prefill_speedup" in r else "–"
        body.append([budget, _depth_name(r), f"{ppl} (×{r['perplexity'] / dense:.2f}, n={r['runs']})",
                     f"{r['params_removed_actual']:.3f}", str(len(r["layers_removed"])), speed, prefill])
    return table(["budget", "plan", f"perplexity (dense {dense:.2f})", "params removed", "layers removed",
                  "decode speedup (1 x 128 tokens)", "prefill speedup (1 x 512)"], body)


def depth_targets() -> str:
    """benchmarks/results/depth.json (bench_depth.py): the issue's targets, as the benchmark judged them."""
    d = load("depth.json")
    body, seen = [], set()
    for t in d["targets"]:
        if t["target"].startswith("depth-only"):  # every depth method at a budget has the same shape and timing
            budget = t["cell"].rsplit(" ", 1)[-1]
            if (budget, t["value"]) in seen:
                continue
            seen.add((budget, t["value"]))
            t = {**t, "cell": f"depth-only, every layer score, {budget}"}
        value = f"{t['value']:+.1%}" if "within" in t["target"] else f"{t['value']:.3g}"
        if t.get("frontier_perplexity") is not None:
            value += f" vs {t['frontier_perplexity']:.3g} ({t.get('how', '')})"
        body.append([t["target"], t["cell"], value, f"**{t['verdict']}**" if t["verdict"].startswith("MISS")
                     else t["verdict"]])
    return table(["target", "cell", "measured", "verdict"], body)


def depth_minilm() -> str:
    """benchmarks/results/depth_minilm.json (bench_depth_minilm.py): width vs depth vs joint on MiniLM."""
    d = load("depth_minilm.json")
    dense = d["dense"]["accuracy"]
    text = (f"Recorded by `{d['command']}` on {d['date'][:10]} ({machine_text(d['machine'])}); dense accuracy "
            f"{dense:.3f}, batch-1 forward {d['dense']['forward_ms']:.1f} ms.\n\n")
    body = []
    for r in sorted(d["rows"], key=lambda r: (r["mode"] != "retrain-free", r["flops_reduction"], -r["accuracy"])):
        name = r["family"] if r["family"] != "depth" else f"depth: {r['method']}"
        acc = f"{r['accuracy']:.3f}" + (f" ± {r['accuracy_sd']:.3f}" if r["runs"] > 1 else "")
        speed = f"×{r['speedup']:.2f} (FLOPs ×{r['ideal_speedup']:.2f})" if "speedup" in r else "–"
        body.append([r["mode"], f"-{r['flops_reduction']:.0%}", name, f"{acc} ({r['delta_points']:+.1f} pt, n={r['runs']})",
                     str(len(r["layers_removed"])), speed])
    return text + table(["mode", "layer FLOPs", "plan", "accuracy", "layers removed", "batch-1 speedup"], body)


# ----------------------------------------------------------------------------------------------- README


def gguf_shapes() -> str:
    """benchmarks/results/gguf.json (bench_gguf.py): every pruned shape exported to f32 GGUF, run by llama.cpp."""
    d = load("gguf.json")
    body = []
    for r in d["shapes"]:
        diff = r["max_abs_logit_diff"]
        result = f"refused: {r['llama_cpp_error'].split(':')[0]}" if diff is None else f"{diff:.1e}"
        written = "exporter's equivalent form" if r["equivalent_forms"] else "raw shape (forms disabled)"
        body.append([r["case"], written, f"{r['heads']} / {r['ffn']}", result])
    return (f"Recorded by `{d['command']}` on {d['date'][:10]} ({machine_text(d['machine'])}), "
            f"{d['llama_cpp']}.\n\n" + table(["shape", "written as", "heads / FFN per layer",
                                                 "max abs logit difference, llama.cpp vs transformers"], body))


def gguf_table() -> str:
    """benchmarks/results/gguf.json (bench_gguf.py): SmolLM2 in llama.cpp against transformers, and its speed."""
    d = load("gguf.json")
    body = []
    for r in d["rows"]:
        body.append([r["model"], r["dtype"], str(r["layers"]), f"{r['params_removed']:.3f}",
                     f"{r['perplexity_llama_cpp']:.3f} vs {r['perplexity_transformers']:.3f} "
                     f"({r['perplexity_rel_diff']:+.2%})",
                     "yes" if r["greedy_identical"] else f"no (from token {r['greedy_first_difference']})",
                     f"{r['prompt_tokens_per_s']:.0f}", f"{r['generation_tokens_per_s']:.1f}",
                     "–" if r["model"] == "dense" else f"×{r['generation_speedup']:.2f} / ×{r['ideal_speedup']:.2f} "
                                                      f"= {r['generation_share_of_ideal']:.2f}",
                     "–" if r["model"] == "dense" else f"{r['prompt_share_of_ideal']:.2f}"])
    return table(["model", "GGUF", "layers", "params removed", "perplexity llama.cpp vs transformers",
                  "greedy tokens identical", "prompt tok/s", "generation tok/s",
                  "generation speedup / ideal = share", "prompt share of ideal"], body)


def gguf_targets() -> str:
    """benchmarks/results/gguf.json (bench_gguf.py): the issue's targets, as the benchmark judged them."""
    d = load("gguf.json")
    body = []
    for t in d["targets"]:
        value = t["value"]
        shown = "–" if value is None else (f"{value:+.2%}" if "within 1%" in t["target"] else f"{value:.3g}")
        body.append([t["target"], shown, f"**{t['status']}**" if t["status"] != "PASS" else t["status"]])
    return table(["target", "measured", "verdict"], body)


def onnx_table() -> str:
    """benchmarks/results/onnx.json (bench_onnx.py): MiniLM in ONNX Runtime, float and int8, against PyTorch."""
    d = load("onnx.json")
    acc, diff = d["accuracy"], d["differing_predictions"]
    body = [[engine, f"{acc[f'{engine} dense']:.4f}", f"{acc[f'{engine} pruned']:.4f}"] for engine in
            ("torch", "onnx", "torch int8", "onnx int8")]
    text = (f"Recorded by `{d['command']}` on {d['date'][:10]} ({machine_text(d['machine'])}). Pruned shape: heads "
            f"{d['pruned_shape']['heads']}, FFN {d['pruned_shape']['ffn']} "
            f"({d['pruned_shape']['layer_flops_reduction_at_64']:.1%} fewer layer FLOPs at 64 tokens). ONNX Runtime "
            f"predictions that differ from PyTorch's: {diff['onnx dense vs torch dense']} (dense), "
            f"{diff['onnx pruned vs torch pruned']} (pruned); int8 predictions that differ from float: ONNX Runtime "
            f"{diff['onnx int8 dense vs onnx dense']} / {diff['onnx int8 pruned vs onnx pruned']}, PyTorch "
            f"{diff['torch int8 dense vs torch dense']} / {diff['torch int8 pruned vs torch pruned']} (dense / pruned)."
            f"\n\n" + table(["engine", f"accuracy dense ({d['setup']['validation_sentences']} sentences)",
                                "accuracy pruned"], body) + "\n")
    rows = []
    for lat in d["latency"]:
        shape = f"{lat['batch']} x {lat['tokens']}"
        ms = {name: m["median_ms"] for name, m in lat["models"].items()}
        for engine in ("onnx", "onnx int8", "torch", "torch int8"):
            rows.append([shape, engine, f"{ms[engine + ' dense']:.1f} → {ms[engine + ' pruned']:.1f}",
                         f"×{lat['speedup'][engine]:.2f}", f"×{lat['ideal_speedup']:.2f}",
                         f"{lat['share_of_ideal'][engine]:.3f}", load_text(lat.get("other_load_cores"))])
    b8 = max(d["latency"], key=lambda lat: lat["batch"] * lat["tokens"])
    verdict = (f"\nTarget ({d['setup']['target']}): {b8['share_of_ideal']['onnx']:.3f}, "
               f"**{'PASS' if d['target_met'] else 'MISS'}**.\n")
    return text + table(["batch x tokens", "engine", "median ms dense → pruned", "speedup", "ideal",
                         "share of ideal", "other load"], rows) + verdict


def uniform() -> str:
    """benchmarks/results/uniform.json (bench_uniform.py): what requiring uniform widths costs at the same budget."""
    d = load("uniform.json")
    body = []
    for r in d["rows"]:
        metric = "accuracy" if "accuracy" in r else "perplexity"
        se = f" ± {r[metric + '_se']:.4f}" if r.get(metric + "_se") is not None else ""
        vanilla = r.get("vanilla_load")
        if vanilla is None:
            loads = "–"
        elif vanilla.get("loads"):
            loads = "yes, identical logits" if vanilla.get("identical_logits") else "yes, different logits"
        else:
            loads = "no (size mismatch)"
        shape = (f"{r['heads_per_layer'][0]} heads, FFN {r['ffn_per_layer'][0]}" if r["uniform_shapes"]
                 else f"heads {r['heads_per_layer']}, FFN {r['ffn_per_layer']}")
        body.append([r["model"], r["family"], f"-{r['budget']:.0%}", f"{r[metric]:.4f}{se} (n={r['runs']})",
                     f"{r['dense_' + metric]:.4f}", shape, loads])
    return (f"Recorded by `{d['command']}` on {d['date'][:10]} ({machine_text(d['machine'])}).\n\n"
            + table(["model", "plan", "budget", "metric (accuracy / perplexity)", "dense", "widths (slice 0)",
                     "vanilla `from_pretrained`"], body))


def prune_time() -> str:
    """benchmarks/results/prune_time.json (bench_prune_time.py): MiniLM retrain-free prune time per stage."""
    d = load("prune_time.json")
    stages = [("scoring_s", "scoring"), ("recovery_statistics_s", "statistics"), ("recovery_reselect_s", "re-selection"),
              ("recovery_solve_s", "solve + surgery"), ("total_s", "total")]
    body = []
    for r in d["rows"]:
        m = r["median_s"]
        verdict = "PASS" if m["total_s"] <= d["target_s"] else "MISS"
        path = ("with re-selection" if r["reselect"] else "without re-selection") + (
            ", `one_pass=True` (statistics during scoring)" if r.get("one_pass") else ", layer by layer") + (
            ", every batch scored whole (as before length-sorted pieces)" if r.get("whole_batches") else "")
        body.append([path, *[f"{m[k]:.1f}" for k, _ in stages], f"{r['accuracy']:.3f}", f"**{verdict}**"])
    load_cores = max(run["other_load_cores"] for r in d["rows"] for run in r["runs"])
    return (f"Recorded by `{d['command']}` on {d['date'][:10]} ({machine_text(d['machine'])}; other load at most "
            f"{load_cores:.2f} cores). Medians of {len(d['rows'][0]['runs'])} runs, seconds after tokenisation; "
            f"target ≤ {d['target_s']:.0f} s. Calibration: {d['setup']['real_tokens']:,} real tokens in batches "
            f"of {d['setup']['padded_tokens']:,} padded ones"
            + (f", scored as length-sorted pieces of {d['setup']['scored_tokens']:,}" if "scored_tokens" in d["setup"]
               else "") + f". Dense accuracy {d['dense']['accuracy']:.3f} on "
            f"{d['dense']['validation_sentences']} validation sentences.\n\n"
            + table(["path", *[name for _, name in stages], "accuracy", "≤ target"], body))


def reselect() -> str:
    """benchmarks/results/reselect.json (bench_reselect.py): greedy OBS re-selection, before and after issue 15."""
    d = load("reselect.json")
    body = []
    for r in d["rows"]:
        if "baseline_median_s" in r:
            old, cpu_old = f"{r['baseline_median_s']:.1f}", r.get("baseline_cpu_median_s")
            wall, cpu = f"x{r['speedup']:.1f}", r.get("cpu_speedup")
        else:
            old, cpu_old = f"> {r['baseline_unfinished_after_s']:.0f} (stopped)", r["baseline_unfinished_after_cpu_s"]
            wall, cpu = f"≥ x{r['speedup_at_least']:.1f}", r["cpu_speedup_at_least"]
        cpu_text = "–" if cpu is None else (f"≥ x{cpu:.1f}" if "baseline_unfinished_after_s" in r else f"x{cpu:.1f}")
        body.append([f"{r['width']} (out {r['out']})", str(r["removed"]), old,
                     "–" if cpu_old is None else f"{cpu_old:.0f}", f"{r['new_median_s']:.1f}",
                     "–" if r.get("new_cpu_median_s") is None else f"{r['new_cpu_median_s']:.0f}", wall, cpu_text,
                     ("yes" if r["same_selection"] else "no") if "same_selection" in r else "before unfinished"])
    return ("Recorded by the commands in `benchmarks/results/reselect.json` (`setup.commands`) on a shared 2-core "
            "machine with other jobs running, 1 torch thread; wall seconds are medians, CPU seconds the process's "
            "own.\n\n"
            + table(["FFN width", "removed", "before (s)", "before CPU s", "after (s)", "after CPU s", "speedup (wall)",
                     "speedup (CPU)", "same units"], body))


def recovery() -> str:
    """benchmarks/results/recovery.json (benchmarks/peers/run_recovery.sh): 100 recovery steps after pruning,
    hf_prune and the peers, 5 calibration slices, mean ± standard error."""
    rows = load("recovery.json")["rows"]
    start = {r["method"]: r for r in rows if r["mode"] == "retrain-free"}
    dense = rows[0]["dense_metric"]
    recipe_names = {"recovery-100-steps": "peers' (lr 1e-4 constant)",
                    "recovery-100-steps-distill": "warmup + decay + distillation",
                    "recovery-100-steps-distill-low-lr": "warmup + decay + distillation, lr 3e-5"}
    order = list(recipe_names)

    def acc(r):
        return f"{r['metric']:.4f} ± {r['metric_se']:.4f}"

    body = []
    recovered = [r for r in rows if r["mode"] in recipe_names]
    for r in sorted(recovered, key=lambda r: (order.index(r["mode"]), -r["metric"])):
        s = start[r["method"]]
        body.append([r["method"], recipe_names[r["mode"]], acc(s), acc(r), f"{100 * (r['metric'] - s['metric']):+.1f}",
                     f"{r['dense_metric_after_same_recovery']:.4f}",
                     f"{statistics.mean(r['train_first_loss_runs']):.3f}", f"{statistics.mean(r['train_last10_loss_runs']):.3f}"])
    methods = {r["method"] for r in rows}
    default = "hf_prune-fisher+weights+reselect"  # hf_prune's default retrain-free method (the command lines')
    ours = default if default in methods else "hf_prune-fisher+weights"
    other = [m for m in ("hf_prune-fisher+weights", default, "hf_prune-fisher") if m in methods and m != ours]
    peers = [r for r in rows if r["mode"] == "recovery-100-steps" and not r["method"].startswith("hf_prune")]
    best = max(peers, key=lambda r: r["metric"])
    floor = dense - 0.005

    def measured(mode, against):
        row = find(rows, method=ours, mode=mode)
        also = "".join(f" ({r['method']}: {acc(r)})" for r in rows if r["method"] in other and r["mode"] == mode)
        return row, f"{ours} {acc(row)}{also}; {against}"

    def verdict(ok):
        return "**PASS**" if ok else "**MISS**"

    peers_row, peers_text = measured("recovery-100-steps", f"best peer {best['method']} {acc(best)}")
    targets = [["the peers' recipe: hf_prune at or above the best peer", peers_text,
                verdict(peers_row["metric"] >= best["metric"])]]
    for mode in order[1:]:
        if any(r["method"] == ours and r["mode"] == mode for r in rows):
            row, text = measured(mode, f"target {floor:.4f} (dense {dense:.4f})")
            targets.append([f"{recipe_names[mode]}: at or above dense − 0.5 points", text, verdict(row["metric"] >= floor)])
    head = (f"Dense accuracy {dense:.4f}; {peers_row['runs']} calibration slices; 50% of heads and 50% of FFN neurons "
            "in every layer; every run fine-tunes for 100 steps of batch 32 from its pruned model "
            "(accuracy: mean ± standard error over the slices).")
    return (head + "\n\n" + table(["method", "recovery recipe", "before recovery", "after recovery", "points",
                                     "dense after the same recipe", "first-step loss", "last-10-steps loss"], body)
            + "\n\n" + table(["target (issue 18 §2)", "measured", ""], targets))


def streaming() -> str:
    """benchmarks/results/streaming.json (bench_streaming.py): one-pass vs layer-by-layer recovery on SmolLM2."""
    d = load("streaming.json")
    setup = d["setup"]
    one_pass = next(r for r in d["rows"] if r["variant"] == "one-pass")
    body = []
    for r in d["rows"]:
        change = r["perplexity"] / one_pass["perplexity"] - 1
        body.append([r["variant"], f"{r['perplexity']:.3f}", ", ".join(f"{p:.3f}" for p in r["perplexity_runs"]),
                     f"{change:+.1%}", f"{r['peak_extra_mb']:.0f}", f"{one_pass['peak_extra_mb'] / r['peak_extra_mb']:.1f}",
                     f"{r['seconds']:.0f}"])
    check = d["dense_streaming_vs_one_pass"]
    verdict = "PASS" if check["within_0.5%"] else "MISS"
    worst = max(abs(x - 1) for x in check["perplexity_ratio_per_slice"])
    return (f"Recorded by `{d['command']}` on {d['date'][:10]} ({machine_text(d['machine'])}). {setup['model']}; "
            f"{setup['method']} at {setup['params_reduction']:.0%} of the layer parameters; windows of "
            f"{setup['windows']}; {setup['slices']} slices. Memory: {setup['memory']}. Seconds are medians, measured "
            f"while other work shared the 2 cores (compare memory and perplexity, not time).\n\n"
            + table(["variant", "perplexity (mean)", "per slice", "vs one-pass", "peak extra MB", "memory ÷",
                     "seconds"], body)
            + f"\n\nStreaming in dense-input mode against one-pass, per slice: largest perplexity difference "
              f"{worst:.2%} (target ≤ 0.5%: **{verdict}**).")


def large_layer() -> str:
    """benchmarks/results/large_layer.json (bench_large_layer.py): per-stage time and memory of one real-width layer."""
    d = load("large_layer.json")
    setup = d["setup"]
    runs = []
    for r in d["runs"]:
        for stage in ("statistics", "reselect", "recovery"):
            if stage in r:
                cpu, load_cores = r[stage].get("cpu_seconds"), r[stage].get("other_load_cores")  # newer runs only
                runs.append([r["shape"], f"{r['batches']} x {setup['tokens_per_batch']}", stage,
                             f"{r[stage]['seconds']:.1f}", "–" if cpu is None else f"{cpu:.0f}",
                             "–" if load_cores is None else f"{load_cores:.2f}", f"{r[stage]['peak_extra_gib']:.2f}",
                             f"{r[stage]['peak_rss_gib']:.2f}"])
    fits = []
    for summary in d["summary"]:
        fit = summary["fit"]
        fits.append([summary["shape"], f"{summary['target_tokens']:,}",
                     *[f"{fit[s]['seconds_at_target']:.0f}" for s in ("statistics", "reselect", "recovery")],
                     f"{summary['cpu_hours_per_layer']:.2f}", f"{summary['layers']}",
                     f"{summary['cpu_hours_model']:.1f}", f"{summary['gpu_hours_model'] * 60:.1f}"])
    gpu = setup["gpu"]
    return (f"Recorded by `{setup['command']}` on {setup['date'][:10]} ({machine_text(setup['machine'])}). "
            f"{setup['weights']}; plan: {setup['plan']}.\n\n"
            + table(["layer shape", "calibration tokens", "stage", "seconds", "CPU seconds",
                     "other processes (cores)", "peak extra GiB", "peak RSS GiB"], runs)
            + "\n\nFitted seconds = a + b x tokens (statistics; re-selection and recovery do not depend on the tokens), "
            f"extrapolated; GPU: {setup['gpu_formula']}, {gpu['name']} at {gpu['efficiency']:.0%} of "
            f"{gpu['fp32_tflops']} (fp32) / {gpu['fp64_tflops']} (fp64) TFLOP/s, an estimate, not a measurement.\n\n"
            + table(["layer shape", "tokens", "statistics s", "re-selection s", "recovery s", "CPU h per layer",
                     "layers", "CPU h whole model", "GPU min whole model (est.)"], fits))


def healing() -> str:
    """benchmarks/results/healing.json (bench_healing.py): pruned SmolLM2 healed by distillation, against the dense
    model trained the same way; until the file exists, how to record it."""
    if not (RESULTS / "healing.json").exists():
        return ("Not recorded yet: `.venv/bin/python benchmarks/bench_healing.py` (hours on 2 cores, resumable) writes "
                "`benchmarks/results/healing.json` and `healing.png`; then `.venv/bin/python benchmarks/make_tables.py` "
                "fills this section. Targets (issue 18 §3): 20% of the layer parameters removed within x1.15 of the "
                "dense model trained the same way, 30% within x1.30.")
    d = load("healing.json")
    setup, recipe, runs = d["setup"], d["setup"]["recipe"], d["runs"]
    dense = next((r for r in runs if r["kind"] == "dense"), None)
    steps = sorted({step for r in runs for step, _ in r["history"]})
    body = []
    for r in runs:
        at = {step: ppl for step, ppl in r["history"]}
        ratio = f"x{r['final_perplexity'] / dense['final_perplexity']:.3f}" if dense else "–"
        pruning = r.get("pruning")
        body.append([r["run"], f"{r['params_removed_actual']:.1%}", *(f"{at[s]:.2f}" if s in at else "–" for s in steps),
                     ratio, duration(pruning["seconds"]) if pruning else "–", duration(r["wall_s"])])
    targets = [[f"{t['params_reduction']:.0%} removed: within x{t['target_ratio']:.2f} of the dense reference",
                f"{t['run']} {t['perplexity']:.2f} / dense {t['dense_reference']:.2f} = x{t['ratio']:.3f}",
                "**PASS**" if t["pass"] else "**MISS**"] for t in d["targets"]]
    gradual = "".join(f" Gradual pruning during the same steps ({g['gradual']}) ends at {g['gradual_perplexity']:.2f}, "
                      f"one-shot pruning then healing ({g['oneshot']}) at {g['oneshot_perplexity']:.2f} "
                      f"(x{g['ratio']:.3f})." for g in d["gradual_vs_oneshot"])
    head = (f"Recorded by {run_commands(d)} on {d['date'][:10]} ({machine_text(d['machine'])}). {setup['model']}; "
            f"every run {recipe['steps']} steps of {recipe['windows_per_step']} x {setup['window']} training tokens, "
            f"AdamW lr {recipe['learning_rate']:g}, {recipe['warmup_steps']} warmup steps then {recipe['lr_scheduler']} "
            f"decay, distillation from the dense model (alpha {recipe['distill_alpha']:g}, T "
            f"{recipe['distill_temperature']:g}), seed {recipe['seed']}; {setup['eval']}; one-shot runs pruned on "
            f"{setup['calibration_windows']} calibration windows.")
    loads = [c for r in runs for c in r.get("other_load_cores", []) if c is not None]
    if loads:
        head += f" Other processes used {min(loads):.2f}-{max(loads):.2f} cores while the runs trained."
    text = (head + "\n\n" + table(["run", "layer parameters removed", *(f"step {s}" for s in steps),
                                     "final ÷ dense reference's", "pruning time", "healing time"], body))
    if targets:
        text += "\n\n" + table(["target (issue 18 §3)", "measured", ""], targets)
    pending = [name for name in setup["targets"] if name not in {r["run"] for r in runs}]
    if pending:
        text += (f"\n\nNot finished yet: {', '.join(pending)} (targets: "
                 + "; ".join(f"{name} {rule}" for name, rule in setup["targets"].items() if name in pending)
                 + "). Rerunning the command resumes them from their cached progress.")
    return text + ("\n\n" + gradual.strip() if gradual else "")


def run_commands(d: dict) -> str:
    """The distinct commands that recorded a healing JSON's runs, in run order (the file's own when none says)."""
    commands = list(dict.fromkeys(r.get("command") or d["command"] for r in d["runs"])) or [d["command"]]
    return ", ".join(f"`{c}`" for c in commands)


def healing_variant_files() -> list[Path]:
    """results/healing-<variant>/healing.json: bench_healing.py rerun with another recipe (`--results`)."""
    return sorted(RESULTS.glob("healing-*/healing.json"))


def recipe_change(base: dict, other: dict, was: str = "main: ") -> str:
    """The recipe fields where `other` differs from `base`, in words: 'learning_rate 0.0002 (main: 5e-05)'; `was`
    precedes the base's value ('not ' gives 'learning_rate 0.0002 (not 5e-05)')."""
    def text(value):
        return f"{value:g}" if isinstance(value, float) else str(value)

    changed = [f"{k} {text(other[k])} ({was}{text(base.get(k))})" for k in other if other[k] != base.get(k)]
    return ", ".join(changed) or "same recipe"


def healing_variants() -> str:
    """benchmarks/results/healing-<variant>/healing.json: the healing benchmark rerun with another recipe (its own
    dense reference), next to the main recipe's runs."""
    files = healing_variant_files()
    if not files or not (RESULTS / "healing.json").exists():
        return ("No other recipe recorded: `.venv/bin/python benchmarks/bench_healing.py --learning-rate LR --cache "
                "benchmarks/cache/NAME --results benchmarks/results/healing-NAME` reruns the benchmark with another "
                "recipe (and its own dense reference); then `.venv/bin/python benchmarks/make_tables.py`.")
    main = load("healing.json")
    main_runs = {r["run"]: r for r in main["runs"]}
    main_dense = main_runs.get("dense")
    targets = {t["run"]: t["target_ratio"] for t in main["targets"]}
    body, notes = [], []
    for path in files:
        d = json.loads(path.read_text())
        runs = {r["run"]: r for r in d["runs"]}
        dense = runs.get("dense")
        change = recipe_change(main["setup"]["recipe"], d["setup"]["recipe"])
        notes.append(f"`{path.relative_to(RESULTS)}`: {run_commands(d)} on {d['date'][:10]}")
        for name, r in runs.items():
            ratio = r["final_perplexity"] / dense["final_perplexity"] if dense else None
            before = main_runs.get(name)
            before_text = "–"
            if before and main_dense:
                before_text = (f"{before['final_perplexity']:.2f} "
                               f"(x{before['final_perplexity'] / main_dense['final_perplexity']:.3f})")
            goal = targets.get(name)
            verdict = "–" if goal is None or ratio is None else ("**PASS**" if ratio <= goal else "**MISS**")
            body.append([change, name, f"{r['perplexity_start']:.2f}", f"{r['final_perplexity']:.2f}",
                         f"x{ratio:.3f}" if ratio is not None else "– (no dense run yet)", before_text,
                         f"x{goal:.2f}" if goal else "–", verdict])
    return (table(["recipe change", "run", "step 0", "final", "final ÷ this recipe's dense", "main recipe: final "
                   "(÷ dense)", "target", ""], body) + "\n\nRecorded by: " + "; ".join(notes) + ".")


def depth_summary_rows() -> list[list[str]]:
    """README rows from benchmarks/results/depth.json: width vs depth at 20% on SmolLM2, and the latency planner."""
    d = load("depth.json")
    rows, dense = d["rows"], d["dense"]["perplexity"]
    width = find(rows, family="width", budget=0.2)
    depth = min((r for r in rows if r["family"] == "depth" and r["budget"] == 0.2), key=lambda r: r["perplexity"])
    planner = [t for t in d["targets"] if "within" in t["target"]]
    passed = sum(t["verdict"] == "PASS" for t in planner)
    errors = ", ".join(format(t["value"], "+.1%") for t in planner)
    return [
        ["SmolLM2-135M, 20% of layer parameters removed, retrain-free: width vs 6 whole layers (best layer score)",
         f"perplexity x{width['perplexity'] / dense:.2f} vs x{depth['perplexity'] / dense:.2f} ({depth['method']}); "
         f"decode (batch 1) x{width['decode_speedup']:.2f} vs x{depth['decode_speedup']:.2f} faster",
         "`depth.json`"],
        ["latency planner (`plan_from_latency` on a measured table), decode at batch 1",
         f"within 5% of the requested latency at {passed} of {len(planner)} targets "
         f"({errors})", "`depth.json`"],
    ]


def healing_summary_rows() -> list[list[str]]:
    """README row from benchmarks/results/healing.json: one-shot and gradual pruning healed, against the dense
    model trained the same way (none until the file exists)."""
    if not (RESULTS / "healing.json").exists():
        return []
    d = load("healing.json")
    targets = sorted(d["targets"], key=lambda t: t["params_reduction"])
    if not targets:
        return []
    shares = " / ".join(f"{t['params_reduction']:.0%}" for t in targets)
    measured = " / ".join(f"x{t['ratio']:.2f}" for t in targets)
    goals = " / ".join(f"x{t['target_ratio']:.2f}" for t in targets)
    verdict = "met" if all(t["pass"] for t in targets) else "targets " + goals + " missed"
    gradual = "".join(f"; gradual pruning ({g['gradual']}) x{g['gradual_perplexity'] / targets[0]['dense_reference']:.2f}"
                      for g in d["gradual_vs_oneshot"])
    variants, files = "", ["`healing.json`"]
    for path in healing_variant_files():
        v = json.loads(path.read_text())
        if v["targets"]:
            change = recipe_change(d["setup"]["recipe"], v["setup"]["recipe"], was="not ")
            variants += (f"; with {change}: " + " / ".join(f"{t['run']} x{t['ratio']:.2f}" for t in v["targets"])
                         + " of its own dense reference")
            files.append(f"`{path.relative_to(RESULTS)}`")
    steps, per_step = d["setup"]["recipe"]["steps"], d["setup"]["recipe"]["windows_per_step"] * d["setup"]["window"]
    return [[f"SmolLM2-135M, {shares} of layer parameters removed, then healed by distillation ({steps} steps of "
             f"{per_step:,} tokens)", f"perplexity {measured} of the dense model trained the same way ({verdict})"
             f"{gradual}{variants}", ", ".join(files)]]


def serving_summary_rows() -> list[list[str]]:
    """README rows from benchmarks/results/gguf.json, onnx.json and uniform.json."""
    g = load("gguf.json")
    width = next(r for r in g["rows"] if r["model"] == "width 20%" and r["dtype"] == "f16")
    exact = all(r["greedy_identical"] for r in g["rows"] if r["dtype"] == "f32")
    worst = max(abs(r["perplexity_rel_diff"]) for r in g["rows"] if r["dtype"] == "f32")
    o = load("onnx.json")
    b8 = next(lat for lat in o["latency"] if lat["batch"] == 8)
    u = {r["family"]: r for r in load("uniform.json")["rows"] if r["model"] == "minilm"}
    return [
        ["SmolLM2-135M, 20% of layer parameters removed, exported with `export_gguf`, run by llama.cpp",
         f"perplexity within {worst:.2%} of transformers', greedy text {'identical' if exact else 'different'} (f32); "
         f"f16 generation x{width['generation_speedup']:.2f} faster ({width['generation_share_of_ideal']:.2f} of "
         f"ideal)", "`gguf.json`"],
        ["MiniLM, 50% fewer layer FLOPs, exported with `export_onnx`, ONNX Runtime, batch 8 x 128",
         f"{o['differing_predictions']['onnx pruned vs torch pruned']} predictions differ from PyTorch's; "
         f"x{b8['speedup']['onnx']:.2f} faster ({b8['share_of_ideal']['onnx']:.3f} of "
         f"ideal, other load {b8.get('other_load_cores', 0):.2f} cores)", "`onnx.json`"],
        ["MiniLM, 50% fewer layer FLOPs, retrain-free: non-uniform vs uniform widths",
         f"{u['non-uniform']['accuracy']:.3f} vs {u['uniform']['accuracy']:.3f} (uniform FFN only, loads in vanilla "
         f"transformers: {u['uniform-ffn']['accuracy']:.3f})", "`uniform.json`"],
    ]


def readme_summary() -> str:
    """README "Results at a glance": one row per headline, each from the JSON named in its last column."""
    speed_payload = load("speed.json")
    req = speed_required_row(speed_payload)
    quiet = req["other_load_cores"] is not None and req["other_load_cores"] < 0.25
    conditions = "quiet machine" if quiet else "other load " + load_text(req["other_load_cores"])

    acc = accuracy_rows()
    mine = [r for r in acc if not r.get("source")]
    rf = [r for r in mine if r["mode"] == "retrain-free"]
    ft = [r for r in mine if r["mode"] == "fine-tuned"]
    fw50 = find(rf, method="fisher+weights", flops_reduction=0.5)
    dense = fw50["dense_metric"]
    rs60, rs70 = (find(rf, method="fisher+weights+reselect", flops_reduction=b) for b in (0.6, 0.7))
    fw60, fw70 = (find(rf, method="fisher+weights", flops_reduction=b) for b in (0.6, 0.7))
    ft70, ft80 = (find(ft, method="fisher+1epoch", flops_reduction=b) for b in (0.7, 0.8))
    pf70, pf80 = (find(ft, method="fisher+weights+reselect+1epoch", flops_reduction=b) for b in (0.7, 0.8))
    peers = [r for r in acc if r.get("source")]
    names = {"hf_prune-fisher+weights": "hf_prune", "textpruner-taylor": "TextPruner",
             "torch-pruning-taylor": "Torch-Pruning", "transformers4-prune-heads": "4.x `prune_heads`"}
    uniform = [find(peers, method=m, mode="retrain-free") for m in list(names)[:3]]

    ours = find(peers, method="hf_prune-fisher+weights", mode="retrain-free")
    diff = re.search(r"load_pruned: max\|logit diff\| ([0-9.e+-]+)", ours["reload_notes"])
    if ours.get("reload_hf_prune_load_pruned") and diff and float(diff.group(1)) == 0.0:
        ours_reload = "identical logits"
    elif ours.get("reload_hf_prune_load_pruned"):
        ours_reload = f"max logit difference {diff.group(1) if diff else '?'}"
    else:
        ours_reload = "fails"
    others = [r for r in peers if r["mode"] == "retrain-free" and r["method"] in list(names)[1:]]
    others.sort(key=lambda r: list(names).index(r["method"]))
    failing = [names[r["method"]] for r in others if not r["reload_v5_from_pretrained"]]
    ok = [names[r["method"]] for r in others if r["reload_v5_from_pretrained"]]
    reload_text = f"hf_prune (`load_pruned`): {ours_reload}; " + ", ".join(failing) + ": fail"
    if ok:
        reload_text += "; " + ", ".join(ok) + ": load"

    ppl = perplexity_rows()
    best, peer = "fisher+params+weights+reselect (128 windows)", "torch-pruning-taylor"
    ppl_dense = ppl[0]["dense_metric"]

    def rise(method, fraction):
        return f"x{find(ppl, method=method, params_removed=fraction)['metric'] / ppl_dense:.2f}"

    demo_payload = load("demo.json")
    d_ratio = demo_payload["ratios"]
    flops_text = "half the layer FLOPs" if round(d_ratio["layer_flops"], 3) == 0.5 else \
        f"{d_ratio['layer_flops']:.2f}x the layer FLOPs"
    d_load = demo_payload["other_load_cores"]
    overhead = load("importance_overhead.json")

    def sd(r):
        return f"{r['metric']:.3f} ± {r['metric_sd']:.3f}"

    rows = [
        [f"speed: 50% heads + 50% FFN of a 4-layer, 512-wide BERT, batch {req['batch_size']} x {req['seq_len']}",
         f"{req['measured_speedup']:.2f}x faster, {req['share_layers']:.2f} of the FLOPs-ideal "
         f"{req['ideal_speedup_layers']:.1f}x ({conditions})",
         "`speed.json`"],
        [f"MiniLM on movie reviews, retrain-free (fisher, weight recovery), {fw50['flops_reduction']:.0%} fewer layer FLOPs",
         f"{sd(fw50)} vs dense {dense:.3f} ({fw50['runs']} slices)", "`accuracy.json`"],
        ["same, units re-chosen by reconstruction error (`reselect_units`), 60% / 70% fewer layer FLOPs",
         f"{sd(rs60)} / {sd(rs70)} (without: {fw60['metric']:.3f} / {fw70['metric']:.3f})", "`accuracy.json`"],
        ["same run and setup, 50% of heads and FFN in every layer, retrain-free",
         ", ".join(f"{names[r['method']]} {r['metric']:.3f}" for r in uniform), "`accuracy.json` (peers)"],
        ["reload a pruned MiniLM in transformers 5", reload_text, "`accuracy.json` (peers)"],
        ["same, fine-tuned with `HeadPruningCallback` + distillation, one epoch, 70% / 80% fewer FLOPs",
         f"{sd(ft70)} / {sd(ft80)} ({ft70['runs']} seeds; dense {ft70['dense_metric']:.3f})", "`accuracy.json`"],
        ["same budgets, pruned retrain-free first (fisher, re-selection, weight recovery), then fine-tuned one "
         "epoch with distillation", f"{sd(pf70)} / {sd(pf80)} ({pf80['runs']} seeds; {pf80['delta_points']:+.2f} "
         f"points at 80%)", "`accuracy.json`"],
        ["SmolLM2-135M (GQA), 20% / 10% of layer parameters removed, retrain-free",
         f"WikiText-2 perplexity {rise(best, 0.2)} / {rise(best, 0.1)} (fisher, parameter-budget search, units "
         f"re-chosen, weight recovery; Torch-Pruning Taylor on the same windows: {rise(peer, 0.2)} / {rise(peer, 0.1)})",
         "`perplexity.json`"],
        [f"`make demo`: fine-tune while removing 50% of heads and FFN neurons ({minutes(demo_payload['wall_s'])} on "
         f"{demo_payload['machine']['cpu_count']} cores)",
         f"{demo_payload['after']['metrics']['accuracy']:.3f} accuracy, {flops_text}, {d_ratio['latency']:.3f}x latency"
         + ("" if d_load is None or d_load < 0.25 else f" (other load {d_load:.2f} cores: noisy)"),
         "`demo.json`"],
        ["gradient scoring cost", f"{overhead['gradient_ratio']:.2f}x one forward + backward pass",
         "`importance_overhead.json`"],
        *depth_summary_rows(),
        *serving_summary_rows(),
        *healing_summary_rows(),
    ]
    return table(["what", "result", "data (`benchmarks/results/`)"], rows, [" --- ", " --- ", " --- "])


# ----------------------------------------------------------------------------------------------- supported types


def supported_types() -> str:
    """README's list of supported model types, from `hf_prune.supported_model_types()` (no JSON: it is the code)."""
    from transformers import AutoConfig

    from hf_prune import get_layout, supported_model_types
    from hf_prune.architecture.layouts import get_stacks

    by_family: dict[str, list[str]] = {}
    for model_type in supported_model_types():
        config = AutoConfig.for_model(model_type)
        stacks = get_stacks(config)
        family = get_layout(config).family if stacks is None else (
            f"{stacks[0].layout.family} ({' + '.join(stack.name for stack in stacks)} stacks)")
        by_family.setdefault(family, []).append(model_type)
    lines = [f"- {family} layout: " + ", ".join(f"`{t}`" for t in types) for family, types in by_family.items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- regions

GENERATORS: dict[str, Callable[[], str]] = {
    "speed": speed,
    "importance-overhead": importance_overhead,
    "lottery": lottery,
    "quantize": quantize,
    "demo": demo,
    "accuracy-retrain-free": accuracy_retrain_free,
    "accuracy-fine-tuned": accuracy_fine_tuned,
    "perplexity": perplexity,
    "perplexity-full-test": perplexity_full_test,
    "speed-models": speed_models,
    "peers-minilm": peers_minilm,
    "results-at-a-glance": readme_summary,
    "depth-setup": depth_setup,
    "depth": depth_table,
    "depth-targets": depth_targets,
    "depth-minilm": depth_minilm,
    "gguf-shapes": gguf_shapes,
    "gguf": gguf_table,
    "gguf-targets": gguf_targets,
    "uniform": uniform,
    "prune-time": prune_time,
    "reselect": reselect,
    "large-layer": large_layer,
    "streaming": streaming,
    "recovery": recovery,
    "healing": healing,
    "healing-variants": healing_variants,
    "onnx": onnx_table,
    "supported-model-types": supported_types,
}

FILES: dict[Path, tuple[str, ...]] = {
    RESULTS_MD: ("speed", "importance-overhead", "lottery", "quantize", "demo", "accuracy-retrain-free",
                 "accuracy-fine-tuned", "perplexity", "perplexity-full-test", "speed-models", "peers-minilm",
                 "depth-setup", "depth", "depth-targets", "depth-minilm", "gguf-shapes", "gguf", "gguf-targets",
                 "onnx", "uniform", "prune-time", "reselect", "large-layer", "streaming", "recovery",
                 "healing", "healing-variants"),
    README_MD: ("supported-model-types", "results-at-a-glance"),
}


def render(text: str, expected: tuple[str, ...] = (), cache: dict[str, str] | None = None) -> str:
    """`text` with every generated region rewritten; ValueError for unknown, missing or repeated regions."""
    cache = {} if cache is None else cache
    found = [m.group("name") for m in REGION.finditer(text)]
    unknown = sorted(set(found) - set(GENERATORS))
    missing = [name for name in expected if name not in found]
    repeated = sorted({name for name in found if found.count(name) > 1})
    if unknown or missing or repeated:
        raise ValueError(f"generated regions: unknown {unknown}, missing {missing}, repeated {repeated}")
    if text.count("<!-- begin generated:") != len(found) or text.count("<!-- end generated:") != len(found):
        raise ValueError("an unmatched '<!-- begin/end generated: ... -->' marker")

    def body(match: re.Match) -> str:
        name = match.group("name")
        if name not in cache:
            cache[name] = GENERATORS[name]().strip("\n")
        return f"{match.group(1)}{cache[name]}\n{match.group(4)}"

    return REGION.sub(body, text)


def regenerate() -> dict[Path, tuple[str, str]]:
    """{file: (current text, regenerated text)} for RESULTS.md and README.md."""
    cache: dict[str, str] = {}
    out = {}
    for path, names in FILES.items():
        current = path.read_text()
        out[path] = (current, render(current, names, cache))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a region is out of date")
    parser.add_argument("--print", action="store_true", help="print every region and write nothing")
    args = parser.parse_args(argv)
    if args.print:
        for name, fn in GENERATORS.items():
            print(f"<!-- {name} -->\n{fn().strip()}\n")
        return 0
    stale = 0
    for path, (current, new) in regenerate().items():
        if current == new:
            continue
        stale += 1
        rel = path.relative_to(ROOT).as_posix()
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), new.splitlines(True), rel, rel + " (generated)"))
        else:
            path.write_text(new)
            print(f"rewrote the generated regions of {rel}")
    if args.check and stale:
        print(f"\n{stale} file(s) out of date: run .venv/bin/python benchmarks/make_tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
