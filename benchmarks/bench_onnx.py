"""ONNX Runtime deployment of a non-uniformly pruned MiniLM: accuracy equal to PyTorch, latency, int8 (issue 17).

Model and data as `bench_accuracy.py` (whose cached dense fine-tuning and helpers this script reuses):
all-MiniLM-L6-v2 + a 2-way classifier fine-tuned one epoch on the movie-review sentences; the validation split
(max_seq_length 64). Pruned retrain-free to 50% fewer layer FLOPs, non-uniformly, with the `width` recipe of
`bench_depth_minilm.py`: fisher scores on 256 calibration sentences, `plan_from_flops(flops_reduction=0.5,
seq_len=64)`, `reselect_units`, `apply_mask_tuning(reconstruct="weights")`.

Both models go through `hf_prune.deploy.onnx_export.export_onnx(..., quantize_int8=True)`. Reported:
- accuracy of ONNX Runtime vs PyTorch on the validation sentences, and the number of differing predictions;
- ONNX Runtime latency (intra_op_num_threads=2) at batch 1 x 64 and batch 8 x 128 tokens, dense and pruned
  alternated round-robin in one process, medians of `--repeats`; the speedup and its share of the ideal
  speedup (ratio of the whole model's matmul FLOPs, formula in the JSON);
- int8: accuracy and latency of the ONNX int8 files (dense, pruned) against PyTorch's
  `hf_prune.quantize_dynamic_int8` (dense, pruned), timed in the same round-robin.

    .venv/bin/python benchmarks/bench_onnx.py --quick    # smoke run, writes under benchmarks/cache/quick
    .venv/bin/python benchmarks/bench_onnx.py            # full run -> benchmarks/results/onnx.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP threads
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from batching import batches, eval_batches  # noqa: E402
from bench_accuracy import SEQ_LEN, dense_model, tokenize  # noqa: E402
from bench_depth import alternated, recover  # noqa: E402  (reselect_units + apply_mask_tuning(reconstruct="weights"))
from provenance import OtherLoad, command_line, machine_info, minilm_label, now_utc, wait_for_quiet  # noqa: E402

from hf_prune import (  # noqa: E402
    calibration_moments,
    compute_importance,
    count_flops,
    load_pruned,
    plan_from_flops,
    quantize_dynamic_int8,
    save_pruned,
)
from hf_prune.architecture.shapes import layer_shapes  # noqa: E402
from hf_prune.deploy.latency import percentile  # noqa: E402
from hf_prune.deploy.onnx_export import export_onnx  # noqa: E402
from hf_prune.serialization.atomic import atomic_write_json  # noqa: E402
from hf_prune_assets import minilm_dir, movie_reviews  # noqa: E402

REDUCTION = 0.5
SETTINGS = ((1, 64), (8, 128))  # (batch, tokens) of the latency measurements
FLOPS_FORMULA = ("ideal speedup = F(dense) / F(pruned), F = count_flops(model, seq_len=T) (q/k/v/o projections, "
                 "attention scores, FFN of every layer, per sequence) + 2*H*H (pooler) + 2*H*num_labels "
                 "(classifier); embeddings are lookups (no matmul), biases/norms/softmax left out")
TARGET_SHARE = 0.9


# ----------------------------------------------------------------------------- models


def pruned_model(args, dense, train):
    """The retrain-free 50%-FLOPs width-pruned model (cached under the cache folder)."""
    folder = args.cache / f"minilm-movie-width-{REDUCTION:.2f}-cal{args.calib_size}"
    if (folder / "config.json").exists():
        return load_pruned(folder).eval()
    calib = batches(train[:args.calib_size], 32)
    scores = compute_importance(dense, calib, method="fisher", seed=0, progress=False)
    plan = plan_from_flops(scores, dense, flops_reduction=REDUCTION, seq_len=SEQ_LEN)
    model = recover(dense, plan, calibration_moments(dense, calib)).eval()
    save_pruned(model, folder)
    return model


def matmul_flops(model, seq_len: int) -> int:
    """Whole-model matmul FLOPs of one sequence (FLOPS_FORMULA)."""
    hidden, labels = model.config.hidden_size, model.config.num_labels
    return count_flops(model, seq_len=seq_len) + 2 * hidden * hidden + 2 * hidden * labels


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Eight engines take turns in one process: an idle session's spinning threads would steal the cores of the
    # one being timed (torch's OpenMP threads are made passive for the same reason: OMP_WAIT_POLICY).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- accuracy


@torch.inference_mode()
def torch_predictions(model, val_b) -> np.ndarray:
    model.eval()
    return np.concatenate([model(**{k: v for k, v in b.items() if k != "labels"}).logits.argmax(-1).numpy()
                           for b in val_b])


def ort_predictions(sess, val_b) -> np.ndarray:
    names = [i.name for i in sess.get_inputs()]
    return np.concatenate([sess.run(None, {n: b[n].numpy() for n in names})[0].argmax(-1) for b in val_b])


# ----------------------------------------------------------------------------- latency


def latency_inputs(batch: int, tokens: int, vocab: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (batch, tokens), generator=generator)  # (B, T) real-word ids
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def runner(model_or_session, inputs: dict):
    """A no-argument callable that runs one forward pass and returns None (so `alternated` times its wall clock)."""
    if hasattr(model_or_session, "run"):
        feed = {i.name: inputs[i.name].numpy() for i in model_or_session.get_inputs()}

        def session_run():
            model_or_session.run(None, feed)

        return session_run

    def forward():
        with torch.inference_mode():
            model_or_session(**inputs)

    return forward


def measure(engines: dict, batch: int, tokens: int, args) -> dict:
    waited = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    inputs = latency_inputs(batch, tokens, 30522)
    runners = {name: runner(engine, inputs) for name, engine in engines.items()}
    with OtherLoad() as load:
        times = alternated(runners, args.repeats, warmup=3)
    out = {name: {"median_ms": 1e3 * statistics.median(t), "p10_ms": 1e3 * percentile(t, 10),
                  "p90_ms": 1e3 * percentile(t, 90)} for name, t in times.items()}
    return {"batch": batch, "tokens": tokens, "repeats": args.repeats, "models": out,
            "other_load_cores": load.cores, "load_before_timing_cores": waited}


# ----------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few sentences, few repeats, under <cache>/quick")
    p.add_argument("--calib-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--wait-quiet", type=float, default=30.0, metavar="SECONDS")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dense-lr", type=float, default=1e-4)
    p.add_argument("--dense-steps", type=int, default=None)
    p.add_argument("--cache", type=Path, default=HERE / "cache")
    p.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.cache = args.results = args.cache / "quick"
        args.calib_size, args.repeats, args.wait_quiet, args.dense_steps = 32, 3, 0.0, 8
    args.cache.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    started = time.time()

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    train_split, val_split = movie_reviews(seed=0, validation_fraction=0.2)
    train = tokenize(tokenizer, train_split)
    val = tokenize(tokenizer, val_split, limit=64 if args.quick else None)
    val_b = eval_batches(val)
    labels = np.concatenate([b["labels"].numpy() for b in val_b])
    dense = dense_model(args, tokenizer, train).eval()
    pruned = pruned_model(args, dense, train)
    shapes = layer_shapes(pruned)
    print(f"validation {len(val)}; pruned heads {[s.heads for s in shapes]}, ffn {[s.ffn for s in shapes]}", flush=True)

    exports, folders = {}, {}
    for name, model in (("dense", dense), ("pruned", pruned)):
        t0 = time.time()
        folders[name] = export_onnx(model, args.cache / "onnx" / name, quantize_int8=True, tokenizer=tokenizer,
                                    overwrite=True)
        exports[name] = {"seconds": time.time() - t0, **{f.name: f.stat().st_size for f in folders[name].glob("*.onnx*")}}
        print(f"exported {name} in {exports[name]['seconds']:.1f} s: {exports[name]}", flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_int8 = {name: quantize_dynamic_int8(model) for name, model in (("dense", dense), ("pruned", pruned))}
    engines = {
        "onnx dense": ort_session(folders["dense"] / "model.onnx", args.threads),
        "onnx pruned": ort_session(folders["pruned"] / "model.onnx", args.threads),
        "onnx int8 dense": ort_session(folders["dense"] / "model_int8.onnx", args.threads),
        "onnx int8 pruned": ort_session(folders["pruned"] / "model_int8.onnx", args.threads),
        "torch dense": dense, "torch pruned": pruned,
        "torch int8 dense": torch_int8["dense"], "torch int8 pruned": torch_int8["pruned"],
    }

    predictions = {name: (ort_predictions(e, val_b) if hasattr(e, "run") else torch_predictions(e, val_b))
                   for name, e in engines.items()}
    accuracy = {name: float((pred == labels).mean()) for name, pred in predictions.items()}
    differing = {
        f"{a} vs {b}": int((predictions[a] != predictions[b]).sum())
        for a, b in (("onnx dense", "torch dense"), ("onnx pruned", "torch pruned"), ("onnx int8 dense", "onnx dense"),
                     ("onnx int8 pruned", "onnx pruned"), ("torch int8 dense", "torch dense"),
                     ("torch int8 pruned", "torch pruned"))
    }
    print(f"accuracy {accuracy}\ndiffering predictions {differing}", flush=True)

    latency = []
    for batch, tokens in SETTINGS:
        result = measure(engines, batch, tokens, args)
        ms = {name: v["median_ms"] for name, v in result["models"].items()}
        ideal = matmul_flops(dense, tokens) / matmul_flops(pruned, tokens)
        result["ideal_speedup"] = ideal
        result["speedup"] = {kind: ms[f"{kind} dense"] / ms[f"{kind} pruned"]
                             for kind in ("onnx", "onnx int8", "torch", "torch int8")}
        result["share_of_ideal"] = {kind: s / ideal for kind, s in result["speedup"].items()}
        result["int8_vs_float"] = {f"{kind} {which}": ms[f"{kind} {which}"] / ms[f"{kind.replace(' int8', '')} {which}"]
                                   for kind in ("onnx int8", "torch int8") for which in ("dense", "pruned")}
        result["onnx_vs_torch"] = {f"{k} {w}": ms[f"torch{k} {w}"] / ms[f"onnx{k} {w}"]
                                   for k in ("", " int8") for w in ("dense", "pruned")}
        latency.append(result)
        print(f"b{batch} x {tokens}: " + ", ".join(f"{n} {v:.1f} ms" for n, v in ms.items())
              + f"; onnx speedup x{result['speedup']['onnx']:.3f} of ideal x{ideal:.3f} "
              f"({result['share_of_ideal']['onnx']:.2f}); other load {result['other_load_cores']}", flush=True)

    big = latency[-1]
    out = {
        "benchmark": "bench_onnx", "date": now_utc(), "command": command_line("benchmarks/bench_onnx.py", argv),
        "machine": {**machine_info(args.threads), "onnxruntime": metadata.version("onnxruntime"),
                    "onnx": metadata.version("onnx"), "onnxscript": metadata.version("onnxscript")},
        "seconds_total": time.time() - started,
        "setup": {
            "model": minilm_label(), "dense_fine_tuning": "as bench_accuracy.py (cached minilm-movie-dense)",
            "task": "movie-reviews (rotten tomatoes sentences), seeded 80/20 split", "validation_sentences": len(val),
            "max_seq_length": SEQ_LEN,
            "pruning": f"retrain-free, fisher on {args.calib_size} training sentences, plan_from_flops(flops_reduction="
                       f"{REDUCTION}, seq_len={SEQ_LEN}), reselect_units, apply_mask_tuning(reconstruct='weights')",
            "export": "hf_prune.deploy.onnx_export.export_onnx(quantize_int8=True): torch.onnx.export(dynamo=True), "
                      "float32 model.onnx + onnxruntime quantize_dynamic (QInt8 weights per channel, reduce_range) "
                      "model_int8.onnx",
            "onnxruntime": f"CPUExecutionProvider, intra_op_num_threads={args.threads}, inter_op 1, sequential, "
                           "no spinning (idle sessions must not steal the timed one's cores), "
                           "default graph optimizations",
            "torch": f"torch.set_num_threads({args.threads}), inference_mode; int8 = hf_prune.quantize_dynamic_int8",
            "latency": f"all 8 engines alternated round-robin in one process, 3 warm-up rounds, {args.repeats} timed, "
                       "medians; random token ids, all-ones mask",
            "ideal_speedup": FLOPS_FORMULA,
            "target": f"onnx speedup >= {TARGET_SHARE} x ideal at batch 8 x 128",
        },
        "pruned_shape": {"heads": [s.heads for s in shapes], "ffn": [s.ffn for s in shapes],
                         "layer_flops_reduction_at_64": 1 - count_flops(pruned, seq_len=SEQ_LEN)
                         / count_flops(dense, seq_len=SEQ_LEN)},
        "export": exports,
        "accuracy": accuracy,
        "differing_predictions": differing,
        "onnx_equals_pytorch": all(differing[k] <= 1 for k in ("onnx dense vs torch dense", "onnx pruned vs torch pruned")),
        "latency": latency,
        "target_met": big["share_of_ideal"]["onnx"] >= TARGET_SHARE,
    }
    atomic_write_json(args.results / "onnx.json", out)
    print(f"wrote {args.results / 'onnx.json'} in {out['seconds_total']:.0f} s; target met: {out['target_met']}")


if __name__ == "__main__":
    main()
