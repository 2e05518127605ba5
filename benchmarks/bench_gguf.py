"""Pruned decoders in llama.cpp: `export_gguf` checked against transformers, and speed against the ideal (issue 17).

Two parts, one JSON (`results/gguf.json`):

1. ``shapes``: tiny random llama (and Qwen2: q/k/v biases) models (hidden 64, 8 query / 4 key-value heads of 16,
   FFN 128, SmolLM2's tokenizer) with the shapes pruning produces (non-uniform widths, a first layer without heads,
   a layer without FFN, a layer with neither, removed layers), exported to f32 GGUF and run by llama.cpp (float32 KV cache): the
   largest logit difference from transformers on a 24-token sequence. Two rows write the file *without* the exporter's
   equivalent forms (first layer without heads; layer with heads and no FFN), to show why they exist.
2. ``smollm2``: SmolLM2-135M dense, pruned by 20% of the layer parameters with the best retrain-free method
   (fisher + plan_from_params + reselect_units + weight recovery), the same under `uniform=True`, and a depth+width
   plan (the 3 layers of lowest block influence dropped + a width plan removing 10% of the layer parameters,
   recovered as above), each exported
   to GGUF f32 and f16 and run by llama.cpp:
   - perplexity on the first `--eval-windows` windows of 512 WikiText-2 test tokens (as bench_perplexity.py),
     against transformers' for the same model (target: within 1% in f32);
   - greedy continuation of `--new-tokens` tokens after a 64-token prompt, against transformers' (target:
     identical in f32);
   - speed: prompt processing (one 512-token prompt) and generation (per token over `--timing-tokens`, after the
     prompt), the models timed round-robin in one llama.cpp process, medians of `--repeats` rounds (one warm-up
     round first); speedup pruned / dense of the
     same dtype, and its share of the ideal, ideal = dense / pruned per-token matmul FLOPs of the whole model
     (layers at sequence length 1 + lm_head 2 x hidden x vocab) (target: at least 0.9 for generation).

llama.cpp comes from llama-cpp-python, built from source in its own virtual environment (not a dependency of
hf_prune, not needed by CI):

    .venv/bin/python benchmarks/bench_gguf.py --setup     # ~20-30 min on 2 cores
    .venv/bin/python benchmarks/bench_gguf.py --quick     # smoke run, writes under cache/quick
    .venv/bin/python benchmarks/bench_gguf.py             # resumes from cached pruned models and exports
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_depth import decode_flops, recover  # noqa: E402
from bench_perplexity import WINDOW, as_batches, perplexity, windows  # noqa: E402
from provenance import command_line, machine_info, now_utc, wait_for_quiet  # noqa: E402

import hf_prune.deploy.gguf_export as gguf_export  # noqa: E402
from hf_prune import (  # noqa: E402
    calibration_moments,
    compute_importance,
    compute_layer_importance,
    count_parameters,
    drop_layers,
    export_gguf,
    load_pruned,
    plan_from_params,
    prune_model,
    save_pruned,
)
from hf_prune.architecture.shapes import layer_shapes  # noqa: E402
from hf_prune.serialization.atomic import atomic_write_json  # noqa: E402
from hf_prune_assets import load_smollm2, wikitext2  # noqa: E402

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
LLAMA_VENV = HERE / "cache" / "llama-venv"
TARGET_PPL_REL = 0.01
TARGET_GENERATION_SHARE = 0.9


def setup_llama_cpp() -> Path:
    """Build llama-cpp-python (pinned) in its own virtual environment; return its python."""
    python = LLAMA_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LLAMA_VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import llama_cpp"], capture_output=True)
    if probe.returncode:
        env = {"CMAKE_ARGS": "-DGGML_NATIVE=ON -DLLAMA_CURL=OFF", "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
        subprocess.run([str(python), "-m", "pip", "install", "-q", LLAMA_CPP_PYTHON, "numpy"], check=True,
                       env={**__import__("os").environ, **env})
    return python


def run_llama_cpp(python: Path, job: dict, workdir: Path) -> dict:
    job_path, out_path = workdir / "llama_job.json", workdir / "llama_result.json"
    job_path.write_text(json.dumps(job))
    subprocess.run([str(python), str(HERE / "llama_cpp_runner.py"), str(job_path), str(out_path)], check=True)
    return json.loads(out_path.read_text())


@torch.inference_mode()
def transformers_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=model.config.eos_token_id)
    return out[0, len(prompt):].tolist()


@torch.inference_mode()
def transformers_logits(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0].float()


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


# ----------------------------------------------------------------------------- part 1: shapes


def tiny_llama(vocab: int, layers: int = 5, family: str = "llama"):
    """A random llama (or Qwen2: q/k/v biases) with head size 16; larger weights than the default init, so that
    every layer changes the logits visibly."""
    import transformers as tf

    torch.manual_seed(0)
    config_class, model_class = ((tf.LlamaConfig, tf.LlamaForCausalLM) if family == "llama"
                                 else (tf.Qwen2Config, tf.Qwen2ForCausalLM))
    config = config_class(hidden_size=64, num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                          head_dim=16, intermediate_size=128, vocab_size=vocab, max_position_embeddings=256,
                          tie_word_embeddings=False, rms_norm_eps=1e-5)
    model = model_class(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
            elif name.endswith("bias"):
                p.normal_(0, 0.5)
    return model


def shape_cases(vocab: int) -> dict:
    """name -> (model, pad equivalent forms?)"""
    every_head, every_neuron = list(range(8)), list(range(128))
    cases = {}

    def case(name, heads=None, neurons=None, layers=None, padded=True, family="llama"):
        model = tiny_llama(vocab, family=family)
        prune_model(model, heads=heads or {}, neurons=neurons or {}, layers=layers)
        cases[name] = (model, padded)

    case("dense")
    case("non-uniform widths", heads={0: [0, 1], 2: [2, 3, 4, 5]}, neurons={1: list(range(50)), 3: [7]})
    case("uniform, 2 layers removed", heads={i: [0, 1] for i in (0, 1, 4)},
         neurons={i: list(range(32)) for i in (0, 1, 4)}, layers=[2, 3])
    case("first layer without heads", heads={0: every_head})
    case("layer without FFN", neurons={2: every_neuron})
    case("layer with neither (identity)", heads={3: every_head}, neurons={3: every_neuron})
    case("later layer without heads", heads={1: every_head}, neurons={4: list(range(100))})
    case("qwen2 (q/k/v biases), dense", family="qwen2")
    case("qwen2 (q/k/v biases), non-uniform, first layer without heads", heads={0: every_head, 2: [2, 3, 4, 5]},
         neurons={1: list(range(50))}, family="qwen2")
    case("first layer without heads, unpadded", heads={0: every_head}, padded=False)
    case("layer without FFN, unpadded", neurons={2: every_neuron}, padded=False)
    return cases


def unpadded_blocks(model):
    """The layer list without the exporter's equivalent forms (to show what llama.cpp does with the raw shapes)."""
    return [gguf_export._Block(i, s.heads, s.kv_heads, s.ffn) for i, s in enumerate(layer_shapes(model))
            if s.heads or s.ffn]


def run_shapes(python: Path, tokenizer, workdir: Path) -> list[dict]:
    cases = shape_cases(len(tokenizer))
    ids = tokenizer("Pruned models should run in llama.cpp exactly as they run in transformers, token by token.")[
        "input_ids"][:24]
    paths = {}
    for name, (model, padded) in cases.items():
        path = workdir / f"shape_{len(paths)}.gguf"
        original = gguf_export._blocks
        if not padded:
            gguf_export._blocks = unpadded_blocks
        try:
            export_gguf(model, path, dtype="f32", tokenizer=tokenizer, overwrite=True)
        finally:
            gguf_export._blocks = original
        paths[name] = str(path)
    result = run_llama_cpp(python, {"models": paths, "windows": [], "prompt": ids[:8], "new_tokens": 4,
                                    "logits": [ids], "repeats": 0, "timing": [], "f32_cache": list(paths)}, workdir)
    rows = []
    for name, (model, padded) in cases.items():
        ref = transformers_logits(model, ids)
        shapes = layer_shapes(model)
        row = {"case": name, "equivalent_forms": padded, "heads": [s.heads for s in shapes],
               "ffn": [s.ffn for s in shapes], "logit_scale": float(ref.abs().max())}
        if "error" in result[name]:
            row |= {"max_abs_logit_diff": None, "same": False, "llama_cpp_error": result[name]["error"]}
        else:
            diff = float((torch.tensor(result[name]["logits"][0]) - ref).abs().max())
            row |= {"max_abs_logit_diff": diff, "same": diff < 1e-3}
        rows.append(row)
        print(f"  shape {name:40s} max |llama.cpp - transformers| = {row['max_abs_logit_diff']} "
              f"{row.get('llama_cpp_error', '')}", flush=True)
    return rows


# ----------------------------------------------------------------------------- part 2: SmolLM2


def pruned_models(dense, args, calib, stats_b, cache: Path) -> dict:
    """name -> model, each built once and cached as a saved folder (reloaded with load_pruned)."""
    out = {"dense": dense}
    wanted = {"width 20%": None, "uniform width 20%": None, "depth 3 layers + width 10%": None}
    missing = [name for name in wanted if not (cache / slug(name) / "config.json").exists()]
    if missing:
        t0 = time.time()
        scores = compute_importance(dense, calib, method="fisher", seed=0, progress=True)
        moments = calibration_moments(dense, stats_b)
        print(f"fisher scores + moments in {time.time() - t0:.0f} s", flush=True)
        for name in missing:
            t0 = time.time()
            if name in ("width 20%", "uniform width 20%"):
                plan = plan_from_params(scores, dense, params_reduction=0.2, uniform=name.startswith("uniform"))
                model = recover(dense, plan, moments, block=args.reselect_block)
            else:
                influence = compute_layer_importance(dense, calib, method="block_influence")
                drop = sorted(influence.ranking()[:3])
                model = recover(dense, plan_from_params(scores, dense, params_reduction=0.1), moments,
                                block=args.reselect_block)
                drop_layers(model, drop)
            save_pruned(model, cache / slug(name), overwrite=True)
            print(f"built {name} in {time.time() - t0:.0f} s", flush=True)
    for name in wanted:
        out[name] = load_pruned(cache / slug(name), dtype=torch.float32).eval()
    return out


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setup", action="store_true", help="build llama-cpp-python in its own venv, then stop")
    p.add_argument("--quick", action="store_true", help="smoke run; writes under <cache>/quick")
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--calib-windows", type=int, default=8)
    p.add_argument("--moment-windows", type=int, default=32)
    p.add_argument("--reselect-block", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--timing-tokens", type=int, default=128, help="generated tokens per timed round")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--dtypes", nargs="+", default=["f32", "f16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--wait-quiet", type=float, default=60.0)
    p.add_argument("--cache", type=Path, default=HERE / "cache")
    p.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    python = setup_llama_cpp()
    if args.setup:
        print(f"llama.cpp ready: {python}")
        return
    torch.set_num_threads(args.threads)
    if args.quick:
        args.cache = args.results = args.cache / "quick"
        args.eval_windows, args.calib_windows, args.moment_windows, args.repeats = 1, 1, 2, 1
        args.reselect_block, args.new_tokens, args.timing_tokens = 128, 8, 8
    work = args.cache / "gguf"
    work.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)

    dense, tokenizer = load_smollm2()
    t0 = time.time()
    shapes = run_shapes(python, tokenizer, work)
    print(f"shapes checked in {time.time() - t0:.0f} s", flush=True)

    test_wins = windows(wikitext2("test"), tokenizer, args.eval_windows + 1)
    eval_wins, prompt_win = test_wins[:args.eval_windows], test_wins[-1]
    prompt = prompt_win[:64].tolist()
    calib_all = windows(wikitext2("train"), tokenizer, max(args.calib_windows, args.moment_windows))
    calib = as_batches(calib_all[:args.calib_windows], 1)
    stats_b = as_batches(calib_all[:args.moment_windows], 1)
    models = pruned_models(dense, args, calib, stats_b, work)

    layer_params = count_parameters(dense, layers_only=True)
    rows, files = {}, {}
    for name, model in models.items():
        t0 = time.time()
        rows[name] = {"model": name, "perplexity_transformers": perplexity(model, as_batches(eval_wins, 2)),
                      "greedy_transformers": transformers_greedy(model, prompt, args.new_tokens),
                      "layers": len(layer_shapes(model)), "heads": [s.heads for s in layer_shapes(model)],
                      "ffn": [s.ffn for s in layer_shapes(model)],
                      "params_removed": 1 - count_parameters(model, layers_only=True) / layer_params,
                      "decode_flops_per_token": decode_flops(model),
                      "ideal_speedup": decode_flops(dense) / decode_flops(model)}
        for dtype in args.dtypes:
            path = work / f"smollm2_{slug(name)}_{dtype}.gguf"
            if not path.exists():
                export_gguf(model, path, dtype=dtype, tokenizer=tokenizer)
            files[f"{name} | {dtype}"] = str(path)
            rows[name][f"gguf_{dtype}_bytes"] = path.stat().st_size
        print(f"{name}: transformers perplexity {rows[name]['perplexity_transformers']:.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)

    waited = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    result = run_llama_cpp(python, {"models": files, "windows": [w.tolist() for w in eval_wins], "prompt": prompt,
                                    "new_tokens": args.new_tokens, "timing_tokens": args.timing_tokens,
                                    "prefill": prompt_win.tolist(),
                                    "repeats": args.repeats, "threads": args.threads, "timing": list(files),
                                    "f32_cache": [k for k in files if k.endswith("| f32")]}, work)
    table = []
    for key, entry in result.items():
        name, dtype = key.split(" | ")
        row = rows[name]
        dense_entry = result[f"dense | {dtype}"]
        ppl_rel = entry["perplexity"] / row["perplexity_transformers"] - 1
        generation = dense_entry["decode_s_per_token"] / entry["decode_s_per_token"]
        prompt_speedup = dense_entry["prefill_s"] / entry["prefill_s"]
        table.append({
            "model": name, "dtype": dtype, "layers": row["layers"], "params_removed": row["params_removed"],
            "perplexity_llama_cpp": entry["perplexity"], "perplexity_transformers": row["perplexity_transformers"],
            "perplexity_rel_diff": ppl_rel,
            "greedy_identical": entry["greedy"] == row["greedy_transformers"],
            "greedy_first_difference": first_difference(entry["greedy"], row["greedy_transformers"]),
            "prompt_tokens_per_s": entry["prefill_tokens_per_s"], "generation_tokens_per_s": entry["decode_tokens_per_s"],
            "prompt_speedup": prompt_speedup, "generation_speedup": generation, "ideal_speedup": row["ideal_speedup"],
            "prompt_share_of_ideal": prompt_speedup / row["ideal_speedup"],
            "generation_share_of_ideal": generation / row["ideal_speedup"],
            "gguf_bytes": row[f"gguf_{dtype}_bytes"], "timing_rounds": entry["timing_rounds"]})
        print(f"{name:28s} {dtype}: llama.cpp ppl {entry['perplexity']:.3f} vs {row['perplexity_transformers']:.3f} "
              f"({100 * ppl_rel:+.2f}%), greedy same {table[-1]['greedy_identical']}, gen x{generation:.2f} / ideal "
              f"x{row['ideal_speedup']:.2f}", flush=True)

    targets = []
    for r in table:
        if r["dtype"] == "f32":
            targets.append({"target": f"{r['model']} f32: llama.cpp perplexity within 1% of transformers'",
                            "value": r["perplexity_rel_diff"],
                            "status": "PASS" if abs(r["perplexity_rel_diff"]) <= TARGET_PPL_REL else "MISS"})
            targets.append({"target": f"{r['model']} f32: greedy {args.new_tokens} tokens identical",
                            "value": r["greedy_first_difference"], "status": "PASS" if r["greedy_identical"] else "MISS"})
        if r["model"] != "dense":
            targets.append({"target": f"{r['model']} {r['dtype']}: generation speedup >= 0.9 of ideal",
                            "value": r["generation_share_of_ideal"],
                            "status": "PASS" if r["generation_share_of_ideal"] >= TARGET_GENERATION_SHARE else "MISS"})
    targets.append({"target": "every exported shape runs in llama.cpp with transformers' logits (< 1e-3)",
                    "value": max((s["max_abs_logit_diff"] or float("inf")) for s in shapes if s["equivalent_forms"]),
                    "status": "PASS" if all(s["same"] for s in shapes if s["equivalent_forms"]) else "MISS"})
    atomic_write_json(args.results / "gguf.json", {
        "benchmark": "bench_gguf", "date": now_utc(), "command": command_line("benchmarks/bench_gguf.py", argv),
        "machine": machine_info(args.threads), "llama_cpp": LLAMA_CPP_PYTHON, "load_before_timing": waited,
        "shapes": shapes, "rows": table, "targets": targets,
        "setup": {
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct (offline asset, GGUF Q4_1 dequantised to float32)",
            "eval": f"first {args.eval_windows} non-overlapping windows of {WINDOW} tokens of WikiText-2 test, each "
                    "evaluated from an empty context in both runtimes",
            "calibration": f"WikiText-2 train windows of {WINDOW} tokens: {args.calib_windows} scoring, "
                           f"{args.moment_windows} statistics windows",
            "width 20%": "fisher, plan_from_params(params_reduction=0.2), reselect_units, "
                         "apply_mask_tuning(reconstruct='weights')",
            "uniform width 20%": "the same with plan_from_params(..., uniform=True): the same heads and FFN width in "
                                 "every layer, so llama.cpp's llama graph (and a plain config) can hold it",
            "depth 3 layers + width 10%": "width plan at params_reduction=0.1 recovered as above, then the 3 layers "
                                          "of lowest block influence dropped",
            "greedy": f"{args.new_tokens} tokens after the first 64 tokens of test window {args.eval_windows}",
            "kv_cache": "float32 for the f32 files (exactness), llama.cpp's default f16 for the others",
            "speed": f"llama-cpp-python, {args.threads} threads; prompt: one {WINDOW}-token prompt; generation: per "
                     f"token over {args.timing_tokens} greedy tokens after a 64-token prompt; all files timed "
                     f"round-robin in one process, medians of "
                     f"{args.repeats} rounds after one warm-up round",
            "ideal_speedup": "dense / pruned per-token matmul FLOPs: layers at sequence length 1 + lm_head "
                             "(2 x hidden x vocab)",
        },
    })
    for t in targets:
        print(f"{t['status']}: {t['target']} ({t['value']})")


if __name__ == "__main__":
    main()
