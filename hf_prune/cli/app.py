"""`prune_heads.py` / `hf-prune-heads`: prune and fine-tune on GLUE-style tasks, report, save and push.

Arguments follow transformers' run_glue.py (HfArgumentParser with TrainingArguments, so every Trainer
flag works). Flow: check every input -> evaluate the dense model -> prune (HeadPruningCallback while
fine-tuning, or retrain-free: score, plan, mask tuning) -> evaluate again -> write the model, tokenizer,
pruning_report.json, heads_kept.png and a model card into a temporary folder, moved into `output_dir`
only when complete -> print a before/after table -> optionally push to the Hub.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEMO_DATA_DIR = Path(os.environ.get("HF_PRUNE_CACHE", Path.home() / ".cache" / "hf_prune"))


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Hub id or folder (pruned checkpoints too)"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "defaults to model_name_or_path"})
    revision: str = field(default="main", metadata={"help": "Hub revision"})
    token: str | None = field(default=None, metadata={"help": "Hub token"})
    ignore_mismatched_sizes: bool = field(default=False, metadata={
        "help": "re-initialise a task head whose label count differs (unpruned checkpoints only, as run_glue)"})


@dataclass
class DataArguments:
    task_name: str | None = field(default=None, metadata={"help": "GLUE task: cola sst2 mrpc qqp stsb mnli qnli rte wnli"})
    train_file: str | None = field(default=None, metadata={"help": "csv, tsv or json with sentence(s) and label"})
    validation_file: str | None = field(default=None, metadata={"help": "same format as train_file"})
    max_seq_length: int = field(default=128, metadata={"help": "tokens per example (also the FLOPs/latency length)"})
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)


@dataclass
class PruningArguments:
    preset: str | None = field(default=None, metadata={"help": "'demo': real MiniLM on the offline movie reviews"})
    head_sparsity: float = field(default=0.0, metadata={"help": "fraction of attention heads to remove, in [0, 1)"})
    ffn_sparsity: float = field(default=0.0, metadata={"help": "fraction of FFN neurons to remove, in [0, 1)"})
    flops_reduction: float | None = field(default=None, metadata={"help": "fraction of layer FLOPs to remove"})
    importance: str = field(default="fisher", metadata={
        "help": "gradient, fisher, taylor, l1, l2, activation or random",
        "choices": ["gradient", "fisher", "taylor", "l1", "l2", "activation", "random"]})
    pruning_start_step: int | None = field(default=None, metadata={"help": "first pruning event (default 10%% of steps)"})
    pruning_end_step: int | None = field(default=None, metadata={"help": "last pruning event (default 60%% of steps)"})
    pruning_events: int = field(default=4, metadata={"help": "number of pruning events"})
    pruning_schedule: str = field(default="cubic", metadata={"choices": ["cubic", "linear"]})
    pruning_scope: str = field(default="global", metadata={"choices": ["global", "layer"]})
    min_heads_per_layer: int = field(default=0)
    head_multiple: int = field(default=1)
    neuron_multiple: int = field(default=1)
    retrain_free: bool = field(default=False, metadata={"help": "score, plan and mask-tune without training"})
    mask_tuning: bool = field(default=True, metadata={"help": "least-squares recovery in --retrain_free"})
    reconstruct: str = field(default="weights", metadata={
        "choices": ["weights", "scales"],
        "help": "what --mask_tuning re-solves: the kept projection weights and bias, or one scale per kept unit"})
    reselect: bool = field(default=True, metadata={
        "help": "with --retrain_free weight recovery: keep the plan's per-layer counts but re-choose each layer's "
                "heads / neurons as those the rest can best rebuild (greedy OBS, hf_prune.reselect_units); "
                "--no_reselect keeps the scores' choice"})
    calibration_samples: int = field(default=256, metadata={"help": "training examples used for scoring"})
    label_free: bool = field(default=False, metadata={"help": "score with the model's own predictions as targets"})
    distill: bool = field(default=False, metadata={"help": "distil from the dense model while fine-tuning"})
    distill_alpha: float = field(default=0.5)
    distill_temperature: float = field(default=2.0)
    unstructured_sparsity: float = field(default=0.0, metadata={
        "help": "also zero this fraction of the projection weights by magnitude (unstructured), in [0, 1)"})
    unstructured_scope: str = field(default="global", metadata={"choices": ["global", "layer"]})
    quantize_int8: bool = field(default=False, metadata={
        "help": "also evaluate a dynamic int8 copy for CPU inference and add it to the report"})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "replace a non-empty output_dir"})
    latency_batch_size: int = field(default=8)
    latency_repeats: int = field(default=10)


def demo_args() -> list[str]:
    """The embedded default: real MiniLM, real movie-review sentences (seeded 80/20 split), 50% heads and FFN."""
    from hf_prune_assets import minilm_dir

    from .data import movie_review_files

    train, validation = movie_review_files(DEMO_DATA_DIR)
    return [
        "--model_name_or_path", str(minilm_dir()), "--train_file", str(train), "--validation_file", str(validation),
        "--max_seq_length", "64", "--max_eval_samples", "1000",
        "--head_sparsity", "0.5", "--ffn_sparsity", "0.5", "--importance", "fisher",
        "--pruning_start_step", "40", "--pruning_end_step", "120", "--pruning_events", "4",
        "--output_dir", "outputs/demo", "--overwrite_output_dir",
        "--max_steps", "180", "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "64",
        "--learning_rate", "1e-4", "--warmup_steps", "10", "--logging_steps", "20", "--save_strategy", "no",
        "--report_to", "none", "--seed", "0", "--use_cpu",
    ]


def parse_args(argv: list[str] | None = None):
    from transformers import HfArgumentParser, TrainingArguments

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--preset" in argv:
        i = argv.index("--preset")
        preset = argv[i + 1] if i + 1 < len(argv) else ""
        if preset != "demo":
            raise ValueError(f"unknown --preset {preset!r}; the only preset is 'demo'")
        argv = demo_args() + argv[:i] + argv[i + 2:]  # explicit flags after the preset win
    parser = HfArgumentParser((ModelArguments, DataArguments, PruningArguments, TrainingArguments))
    return parser.parse_args_into_dataclasses(args=argv)


def check_args(model_args, data_args, prune_args, training_args) -> None:
    """Every check that needs no model or data, before anything is loaded or written."""
    for name in ("head_sparsity", "ffn_sparsity", "unstructured_sparsity"):
        value = getattr(prune_args, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"--{name} must be in [0, 1), got {value}")
    if prune_args.flops_reduction is not None:
        if not 0.0 <= prune_args.flops_reduction < 1.0:
            raise ValueError(f"--flops_reduction must be in [0, 1), got {prune_args.flops_reduction}")
        if prune_args.head_sparsity or prune_args.ffn_sparsity:
            raise ValueError("give --flops_reduction or --head_sparsity/--ffn_sparsity, not both")
    if model_args.model_name_or_path is None:
        raise ValueError("--model_name_or_path is required (or use --preset demo)")
    if data_args.task_name is None and data_args.train_file is None:
        raise ValueError("give --task_name or --train_file and --validation_file")
    if data_args.max_seq_length <= 0:
        raise ValueError(f"--max_seq_length must be positive, got {data_args.max_seq_length}")
    out = Path(training_args.output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not prune_args.overwrite_output_dir:
        raise FileExistsError(f"output_dir {out} exists and is not empty: pass --overwrite_output_dir or pick another")


def _load_model(model_args, data, device):
    """Tokenizer and sequence-classification model; pruned checkpoints through load_pruned."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from ..architecture.config_entry import ENTRY_KEY
    from ..architecture.layouts import get_layout
    from ..serialization.loading import load_pruned

    hub = {"revision": model_args.revision, "token": model_args.token}
    extra = {"num_labels": data.num_labels, "problem_type": "regression" if data.is_regression else None}
    if not data.is_regression:
        extra["id2label"] = {i: str(v) for i, v in enumerate(data.label_list)}
        extra["label2id"] = {str(v): i for i, v in enumerate(data.label_list)}
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, **hub)
    get_layout(config)  # unsupported model -> ValueError naming its model_type, before any weights load
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path, **hub)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:  # decoders (gpt2, llama) classify with padding
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(config, "pad_token_id", None) is None:
        extra["pad_token_id"] = tokenizer.pad_token_id
    for key, value in extra.items():
        setattr(config, key, value)
    if getattr(config, ENTRY_KEY, None) is not None:
        model = load_pruned(model_args.model_name_or_path, model_class=AutoModelForSequenceClassification,
                            config=config, **hub)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_args.model_name_or_path, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **hub)
    return tokenizer, model.to(device)


def _metrics_fn(data):
    from .metrics import load_glue_metric

    metric = load_glue_metric(data.metric_task)

    def compute(eval_pred):
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        predictions = np.squeeze(logits, -1) if data.is_regression else np.argmax(logits, -1)
        return metric.compute(predictions=predictions, references=eval_pred.label_ids)

    return compute


def _default_schedule(prune_args, training_args, n_train: int) -> tuple[int, int, int]:
    steps = training_args.max_steps
    if steps is None or steps <= 0:
        per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
        per_step *= max(1, training_args.world_size)
        steps = math.ceil(n_train / per_step) * math.ceil(training_args.num_train_epochs)
    start = prune_args.pruning_start_step if prune_args.pruning_start_step is not None else round(0.1 * steps)
    end = prune_args.pruning_end_step if prune_args.pruning_end_step is not None else max(start, round(0.6 * steps))
    events = prune_args.pruning_events if end > start else 1
    return start, end, events


def _snapshot(model, seq_len: int) -> dict:
    from ..architecture.counting import count_flops, count_parameters
    from .report import structure

    return {"parameters": count_parameters(model), "flops": count_flops(model, seq_len), "structure": structure(model)}


def _state_dict_bytes(model) -> int:
    """Serialized size of a model's state dict (what torch.save would write)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def _quantized_summary(model, dense, evaluator, names, prune_args, data_args) -> dict:
    """Metric, size and CPU latency of dynamic int8 copies of the pruned and the dense model."""
    from ..deploy.latency import measure_latency
    from ..deploy.quantize import quantize_dynamic_int8

    pruned_int8, dense_int8 = quantize_dynamic_int8(model), quantize_dynamic_int8(dense)
    metrics = evaluator(pruned_int8).evaluate()
    latency = measure_latency({"dense_int8": dense_int8, "pruned_int8": pruned_int8},
                              batch_size=prune_args.latency_batch_size, seq_len=data_args.max_seq_length,
                              repeats=prune_args.latency_repeats)
    return {
        "metrics": {n: metrics.get(f"eval_{n}") for n in names},
        "size_bytes": {"dense_fp32": _state_dict_bytes(dense), "pruned_fp32": _state_dict_bytes(model),
                       "dense_int8": _state_dict_bytes(dense_int8), "pruned_int8": _state_dict_bytes(pruned_int8)},
        "latency_ms": {k: v.median_s * 1e3 for k, v in latency.items()},
    }


def run(model_args, data_args, prune_args, training_args) -> dict:
    """The whole flow; returns the report. Raises ValueError/OSError on bad input before writing anything."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer, set_seed

    from ..deploy.latency import measure_latency
    from ..importance.compute import compute_importance
    from ..planning.budgets import plan_from_flops, plan_from_sparsity
    from ..recovery.mask_tuning import apply_mask_tuning, tune_masks
    from ..recovery.moments import calibration_moments
    from ..recovery.reselect import reselect_units
    from ..serialization.atomic import atomic_directory
    from ..training.callback import HeadPruningCallback, resize_to_checkpoint
    from ..training.distillation import DistillationTrainer
    from ..unstructured.magnitude import prune_unstructured, sparsity_report
    from .data import load_task_data, tokenize
    from .metrics import TASK_METRICS
    from .report import summary_table, write_heatmap, write_model_card, write_report

    timings, clock = {}, time.perf_counter()
    check_args(model_args, data_args, prune_args, training_args)
    data = load_task_data(data_args.task_name, data_args.train_file, data_args.validation_file,
                          data_args.max_train_samples, data_args.max_eval_samples)
    set_seed(training_args.seed)  # a new task head is initialised reproducibly
    tokenizer, model = _load_model(model_args, data, training_args.device)
    train_set, eval_set = tokenize(data, tokenizer, data_args.max_seq_length)
    collator = DataCollatorWithPadding(tokenizer)
    timings["load_s"] = time.perf_counter() - clock

    final_dir = Path(training_args.output_dir)
    work_dir = final_dir.with_name(final_dir.name + ".work")  # Trainer checkpoints and logs, never the results
    push, hub_model_id, hub_token = training_args.push_to_hub, training_args.hub_model_id, training_args.hub_token
    training_args.output_dir = str(work_dir)
    training_args.push_to_hub = False  # we push the finished folder ourselves, once

    def evaluator(m):
        return Trainer(model=m, args=training_args, eval_dataset=eval_set, data_collator=collator,
                       compute_metrics=_metrics_fn(data))

    clock = time.perf_counter()
    before_metrics = evaluator(model).evaluate()
    timings["evaluate_dense_s"] = time.perf_counter() - clock
    dense = copy.deepcopy(model).eval()
    before = _snapshot(model, data_args.max_seq_length)

    clock = time.perf_counter()
    common = {"min_heads": prune_args.min_heads_per_layer, "head_multiple": prune_args.head_multiple,
              "neuron_multiple": prune_args.neuron_multiple}
    reselected = False  # whether reselect_units ran (retrain-free weight recovery only)
    if prune_args.retrain_free:
        mode = "retrain-free"
        calibration = torch.utils.data.DataLoader(
            train_set.shuffle(seed=training_args.seed).select(range(min(prune_args.calibration_samples, len(train_set)))),
            batch_size=training_args.per_device_eval_batch_size, collate_fn=collator)
        scores = compute_importance(model, calibration, method=prune_args.importance, label_free=prune_args.label_free,
                                    seed=training_args.seed)
        if prune_args.flops_reduction is not None:
            plan = plan_from_flops(scores, model, 1.0 - prune_args.flops_reduction, seq_len=data_args.max_seq_length,
                                   **common)
        else:
            plan = plan_from_sparsity(scores, prune_args.head_sparsity, prune_args.ffn_sparsity,
                                      scope=prune_args.pruning_scope, **common)
        reselected = prune_args.mask_tuning and prune_args.reconstruct == "weights" and prune_args.reselect
        if reselected:  # = tune_masks(..., "weights") on the re-chosen plan
            moments = calibration_moments(model, calibration)
            plan = reselect_units(model, plan, moments)
            apply_mask_tuning(model, plan, moments, reconstruct="weights")
        elif prune_args.mask_tuning:
            tune_masks(model, plan, calibration, reconstruct=prune_args.reconstruct)
        else:
            plan.apply(model)
        if prune_args.unstructured_sparsity:
            prune_unstructured(model, prune_args.unstructured_sparsity, scope=prune_args.unstructured_scope)
        schedule = None
    else:
        mode = "fine-tuned"
        start, end, events = _default_schedule(prune_args, training_args, len(train_set))
        schedule = {"start_step": start, "end_step": end, "num_events": events, "schedule": prune_args.pruning_schedule}
        callback = HeadPruningCallback(
            head_sparsity=prune_args.head_sparsity, ffn_sparsity=prune_args.ffn_sparsity,
            flops_reduction=prune_args.flops_reduction, importance=prune_args.importance, scope=prune_args.pruning_scope,
            seq_len=data_args.max_seq_length, label_free=prune_args.label_free,
            unstructured_sparsity=prune_args.unstructured_sparsity, unstructured_scope=prune_args.unstructured_scope,
            **schedule, **common)
        trainer_class, extra = Trainer, {}
        if prune_args.distill:
            trainer_class = DistillationTrainer
            extra = {"teacher": dense, "alpha": prune_args.distill_alpha, "temperature": prune_args.distill_temperature}
        resume = training_args.resume_from_checkpoint
        if resume:
            resize_to_checkpoint(model, resume)
        trainer = trainer_class(model=model, args=training_args, train_dataset=train_set, data_collator=collator,
                                callbacks=[callback], **extra)
        trainer.train(resume_from_checkpoint=resume)
        model = trainer.model
    timings["prune_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    model.eval()
    after_metrics = evaluator(model).evaluate()
    timings["evaluate_pruned_s"] = time.perf_counter() - clock
    after = _snapshot(model, data_args.max_seq_length)

    clock = time.perf_counter()
    latency = measure_latency({"dense": dense.cpu(), "pruned": model.cpu()},  # CPU latency; saving is unaffected
                              batch_size=prune_args.latency_batch_size, seq_len=data_args.max_seq_length,
                              repeats=prune_args.latency_repeats)
    timings["latency_s"] = time.perf_counter() - clock
    names = list(TASK_METRICS[data.metric_task])
    quantized = _quantized_summary(model, dense, evaluator, names, prune_args, data_args) if prune_args.quantize_int8 \
        else None
    if prune_args.unstructured_sparsity:
        after["unstructured"] = {k: v for k, v in sparsity_report(model).as_dict().items() if k != "per_module"}
    before.update(metrics={n: before_metrics.get(f"eval_{n}") for n in names}, latency_ms=latency["dense"].median_s * 1e3)
    after.update(metrics={n: after_metrics.get(f"eval_{n}") for n in names}, latency_ms=latency["pruned"].median_s * 1e3)
    report = {
        "model": model_args.model_name_or_path,
        "task": data_args.task_name or f"files ({data.metric_task})",
        "metric_names": names,
        "seq_len": data_args.max_seq_length,
        "pruning": {"mode": mode, "importance": prune_args.importance, "head_sparsity": prune_args.head_sparsity,
                    "ffn_sparsity": prune_args.ffn_sparsity, "flops_reduction": prune_args.flops_reduction,
                    "schedule": schedule, "distill": prune_args.distill,
                    "recovery": prune_args.reconstruct if mode == "retrain-free" and prune_args.mask_tuning else None,
                    "reselected": reselected},
        "before": before,
        "after": after,
        "latency": {"batch_size": prune_args.latency_batch_size, "seq_len": data_args.max_seq_length,
                    "repeats": prune_args.latency_repeats, "threads": torch.get_num_threads(),
                    "dense_median_s": latency["dense"].median_s, "pruned_median_s": latency["pruned"].median_s,
                    "speedup": latency["dense"].median_s / latency["pruned"].median_s},
        "time_s": timings,
    }
    if quantized is not None:
        report["quantized_int8"] = quantized

    with atomic_directory(final_dir, overwrite=prune_args.overwrite_output_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        report["time_s"]["total_s"] = sum(timings.values())
        write_report(tmp / "pruning_report.json", report)
        write_heatmap(tmp / "heads_kept.png", report)
        write_model_card(tmp, report, model_args.model_name_or_path, hub_model_id)
    if training_args.save_strategy == "no" or str(training_args.save_strategy).endswith("NO"):
        shutil.rmtree(work_dir, ignore_errors=True)
    print(summary_table(report))
    print(f"\nsaved to {final_dir} (pruning_report.json, heads_kept.png, README.md); "
          f"reload with hf_prune.load_pruned({str(final_dir)!r})")
    if push:
        push_folder(final_dir, hub_model_id or final_dir.name, hub_token)
    return report


def push_folder(folder: Path, repo_id: str, token: str | None = None) -> str:
    """Upload the finished folder (model, tokenizer, card, report) to the Hub in one commit."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
                  for path in sorted(folder.rglob("*")) if path.is_file()]
    info = api.create_commit(repo_id, operations, commit_message="Upload pruned model (hf_prune)")
    print(f"pushed to {repo_id}")
    return str(info)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one clear error line and exit status 2 on bad input (HF_PRUNE_DEBUG=1: traceback)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = parse_args(argv)
        run(*args)
    except (ValueError, OSError) as err:
        if os.environ.get("HF_PRUNE_DEBUG"):
            raise  # the full traceback, for bug reports
        print(f"prune_heads: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
