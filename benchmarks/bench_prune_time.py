"""How long retrain-free pruning of MiniLM takes, stage by stage (issue 15 section 6).

The fine-tuned dense MiniLM movie-review classifier (`cache/minilm-movie-dense`, as bench_accuracy.py) pruned to 50%
fewer layer FLOPs (`count_flops` at 64 tokens) by `hf_prune.prune_retrain_free`: fisher scores on 256 training
sentences (truncated to 64 tokens, batches of 32 padded to their longest sentence), the global plan, then
layer-by-layer weight recovery (dense mode), with and without re-selection (`reselect_units`). Timed after
tokenisation; every configuration `--repeats` times (medians per stage), each on a fresh copy of the dense model.
Stages come from `RetrainFreeResult.seconds`: scoring, plan, recovery (capture of layer 0's inputs, statistics =
layer forwards + second moments, re-selection, solves), total. Gradient scoring runs each batch as length-sorted
pieces (`hf_prune.importance.padding`, the same scores); a last row runs the one-pass configuration with re-selection
on whole batches, as before. `--sorted` batches the sentences by length (less padding; the scores then sum over
other batches, so the plan can differ slightly).

    .venv/bin/python benchmarks/bench_prune_time.py --quick   # smoke run, writes under cache/quick
    .venv/bin/python benchmarks/bench_prune_time.py           # -> results/prune_time.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from batching import batches, collate, eval_batches  # noqa: E402
from bench_accuracy import SEQ_LEN, accuracy, dense_model, tokenize  # noqa: E402
from provenance import OtherLoad, command_line, machine_info, minilm_label, now_utc, wait_for_quiet  # noqa: E402

import hf_prune.importance.padding as padding  # noqa: E402
from hf_prune import PruningConfig, count_flops, prune_retrain_free  # noqa: E402
from hf_prune.serialization.atomic import atomic_write_json  # noqa: E402
from hf_prune_assets import minilm_dir, movie_reviews  # noqa: E402

TARGET_S = 10.0


def calibration(examples, size: int, sort: bool) -> list[dict]:
    if sort:  # length-sorted batches, as eval_batches
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
        return [collate([examples[i] for i in order[k:k + size]]) for k in range(0, len(order), size)]
    return batches(examples, size)


@contextmanager
def whole_batches(on: bool):
    """With `on`, gradient scoring runs every batch whole (as before hf_prune.importance.padding existed)."""
    saved = padding.PIECE_OVERHEAD_TOKENS
    padding.PIECE_OVERHEAD_TOKENS = 10 ** 12 if on else saved
    try:
        yield
    finally:
        padding.PIECE_OVERHEAD_TOKENS = saved


def one_run(dense, calib, reselect: bool, one_pass: bool, whole: bool = False) -> tuple[object, dict]:
    model = copy.deepcopy(dense)
    config = PruningConfig(flops_reduction=0.5, flops_seq_len=SEQ_LEN, importance="fisher", reselect=reselect)
    with OtherLoad() as load, whole_batches(whole):
        start = time.perf_counter()
        result = prune_retrain_free(model, calib, config, one_pass=one_pass)
        wall = time.perf_counter() - start
    stages = {k: v for k, v in result.seconds.items()}
    stages["wall_s"] = wall
    return model, {"stages": stages, "other_load_cores": load.cores}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run; writes under <cache>/quick")
    p.add_argument("--calib-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sorted", action="store_true", help="length-sorted calibration batches")
    p.add_argument("--validation", type=int, default=1000, help="validation sentences for the accuracy check")
    p.add_argument("--wait-quiet", type=float, default=30.0, metavar="SECONDS")
    p.add_argument("--note", default="", help="free text recorded in setup (e.g. 'shared, other jobs running')")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dense-lr", type=float, default=1e-4)
    p.add_argument("--dense-steps", type=int, default=None)
    p.add_argument("--cache", type=Path, default=HERE / "cache")
    p.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dense_cache = args.cache
    if args.quick:
        args.results = args.cache / "quick"
        args.calib_size, args.repeats, args.validation, args.wait_quiet = 32, 1, 64, 0.0
    args.results.mkdir(parents=True, exist_ok=True)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    train_split, val_split = movie_reviews(seed=0, validation_fraction=0.2)
    args.cache = dense_cache
    dense = dense_model(args, tokenizer, tokenize(tokenizer, train_split))
    start = time.perf_counter()
    examples = tokenize(tokenizer, train_split, limit=args.calib_size)
    calib = calibration(examples, args.batch_size, args.sorted)
    tokenise_s = time.perf_counter() - start
    val_b = eval_batches(tokenize(tokenizer, val_split, limit=args.validation))
    dense_acc = accuracy(dense, val_b)
    dense_flops = count_flops(dense, seq_len=SEQ_LEN)
    waited = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None

    rows = []

    def save():  # after every configuration, so an interrupted run keeps what it finished
        out = {
            "benchmark": "bench_prune_time", "date": now_utc(), "command": command_line("benchmarks/bench_prune_time.py", argv),
            "machine": machine_info(args.threads), "target_s": TARGET_S, "rows": rows,
            "dense": {"accuracy": dense_acc, "validation_sentences": sum(len(b["labels"]) for b in val_b)},
            "setup": {
                "model": minilm_label(), "dense": "as bench_accuracy.py (cached minilm-movie-dense)",
                "calibration": f"first {args.calib_size} training sentences, truncated to {SEQ_LEN} tokens, batches of "
                               f"{args.batch_size} " + ("sorted by length" if args.sorted else "in order, each padded to "
                                                        "its longest sentence"),
                "real_tokens": sum(int(b["attention_mask"].sum()) for b in calib),
                "padded_tokens": sum(int(b["attention_mask"].numel()) for b in calib),
                "scored_tokens": sum(int(p["attention_mask"].numel()) for b in calib
                                     for p, _ in padding.split_by_length(b)),
                "tokenise_s": tokenise_s,
                "pipeline": "prune_retrain_free(model, batches, PruningConfig(flops_reduction=0.5, flops_seq_len=64, "
                            "importance='fisher', reselect=...), one_pass=...), mode='dense' (weight recovery; "
                            "layer by layer, or with every layer's statistics collected during scoring)",
                "repeats": args.repeats, "load_before_timing": waited, "note": args.note,
            },
        }
        atomic_write_json(args.results / "prune_time.json", out)

    # the last row: the configuration with every batch scored whole, as before length-sorted pieces
    for reselect, one_pass, whole in ((False, False, False), (True, False, False), (False, True, False),
                                      (True, True, False), (True, True, True)):
        runs = []
        model = None
        for _ in range(args.repeats):
            model, run = one_run(dense, calib, reselect, one_pass, whole)
            runs.append(run)
            print(f"reselect={reselect}, one_pass={one_pass}, whole_batches={whole}: {run['stages']['total_s']:.2f} s "
                  f"({', '.join(f'{k} {v:.2f}' for k, v in run['stages'].items())}); other load "
                  f"{run['other_load_cores']}", flush=True)
        keys = set.intersection(*(set(r["stages"]) for r in runs))
        medians = {k: statistics.median(r["stages"][k] for r in runs) for k in keys}
        rows.append({"reselect": reselect, "one_pass": one_pass, "whole_batches": whole, "median_s": medians, "runs": runs,
                     "accuracy": accuracy(model, val_b), "flops_reduction_actual": 1 - count_flops(model, seq_len=SEQ_LEN)
                     / dense_flops, "within_target": medians["total_s"] <= TARGET_S})
        save()
    print(f"wrote {args.results / 'prune_time.json'}")


if __name__ == "__main__":
    main()
