"""`prune_heads.py` / `hf-prune-heads`: prune and fine-tune on GLUE-style tasks, report, save and push.

Arguments: hf_prune/cli/arguments.py (run_glue.py style, every Trainer flag works). `run` is a sequence of
steps: load (check every input, read the data, load the model) -> evaluate the dense model -> prune
(retrain-free: drop the lowest-scoring layers, then score, plan, least-squares recovery of the widths; or
HeadPruningCallback while fine-tuning) -> evaluate
again -> measure (FLOPs, CPU latency, optional int8 copy) -> write the model, tokenizer, pruning_report.json,
heads_kept.png and a model card into a temporary folder, moved into `output_dir` only when complete ->
print a before/after table -> optionally push to the Hub. Models with several layer stacks (BART, T5 sequence
classifiers) are pruned retrain-free or while fine-tuning; the options not supported on them yet are refused up
front (`check_model_type`).
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..training.config import PruningConfig
from .arguments import CliArguments, DataArguments, ModelArguments, check_args, parse_args


@dataclass
class Job:
    """The parsed arguments and what `load` made of them, handed from step to step."""

    model_args: ModelArguments
    data_args: DataArguments
    config: PruningConfig
    cli: CliArguments
    training: Any  # transformers.TrainingArguments
    data: Any = None  # TaskData
    tokenizer: Any = None
    model: Any = None
    train_set: Any = None
    eval_set: Any = None
    collator: Any = None
    timings: dict = field(default_factory=dict)

    def evaluate(self, model) -> dict:
        """Trainer.evaluate on the validation set: {"eval_accuracy": ..., ...}."""
        from transformers import Trainer

        return Trainer(model=model, args=self.training, eval_dataset=self.eval_set, data_collator=self.collator,
                       compute_metrics=metrics_fn(self.data)).evaluate()

    def calibration(self):
        """A DataLoader of --calibration_samples training examples (seeded shuffle): scoring and recovery data."""
        import torch

        n = min(self.config.calibration_samples, len(self.train_set))
        subset = self.train_set.shuffle(seed=self.training.seed).select(range(n))
        return torch.utils.data.DataLoader(subset, batch_size=self.training.per_device_eval_batch_size,
                                           collate_fn=self.collator)


@dataclass
class Outputs:
    """Where results go: `final_dir` (moved into place when complete), Trainer files in `work_dir`, the Hub repo."""

    final_dir: Path
    work_dir: Path
    repo_id: str | None  # set only with --push_to_hub
    token: str | None


@contextmanager
def timed(timings: dict, key: str):
    """Record the seconds the block took as timings[key]."""
    start = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - start


def run(model_args, data_args, config, cli_args, training_args) -> dict:
    """The whole flow; returns the report. Raises ValueError/OSError on bad input before writing anything."""
    job = Job(model_args, data_args, config, cli_args, training_args)
    with timed(job.timings, "load_s"):
        load(job)
    outputs = redirect_outputs(job.training)
    with timed(job.timings, "evaluate_dense_s"):
        before_metrics = job.evaluate(job.model)
    dense = copy.deepcopy(job.model).eval()
    before = snapshot(job.model, data_args.max_seq_length)
    with timed(job.timings, "prune_s"):
        pruning = prune_retrain_free(job) if config.retrain_free else prune_while_fine_tuning(job, dense)
    job.model.eval()
    with timed(job.timings, "evaluate_pruned_s"):
        after_metrics = job.evaluate(job.model)
    after = snapshot(job.model, data_args.max_seq_length)
    report = measure(job, dense, pruning, (before, before_metrics), (after, after_metrics))
    write_outputs(job, report, outputs)
    print_summary(report, outputs.final_dir)
    if outputs.repo_id:
        push_folder(outputs.final_dir, outputs.repo_id, outputs.token)
    return report


def load(job: Job) -> None:
    """Check the arguments, read and check the data, load tokenizer and model, tokenize: before anything is written."""
    from transformers import DataCollatorWithPadding, set_seed

    from .data import load_task_data, tokenize

    check_args(job.model_args, job.data_args, job.config, job.cli, job.training)
    args = job.data_args
    job.data = load_task_data(args.task_name, args.train_file, args.validation_file, args.max_train_samples,
                              args.max_eval_samples)
    set_seed(job.training.seed)  # a new task head is initialised reproducibly
    job.tokenizer, job.model = load_model(job.model_args, job.data, job.training.device, job.config)
    if job.config.removes_layers:  # removing every layer -> ValueError, before any pass over the data
        from ..training.events import dense_layer_count

        job.config.layers_to_remove(dense_layer_count(job.model))
    job.train_set, job.eval_set = tokenize(job.data, job.tokenizer, args.max_seq_length)
    job.collator = DataCollatorWithPadding(job.tokenizer)


def redirect_outputs(training_args) -> Outputs:
    """Send the Trainer's checkpoints and logs to `<output_dir>.work`; we push the finished folder ourselves, once."""
    final_dir = Path(training_args.output_dir)
    repo_id = (training_args.hub_model_id or final_dir.name) if training_args.push_to_hub else None
    outputs = Outputs(final_dir, final_dir.with_name(final_dir.name + ".work"), repo_id, training_args.hub_token)
    training_args.output_dir = str(outputs.work_dir)
    training_args.push_to_hub = False
    return outputs


def latency_table(job: Job):
    """The latency table a latency budget plans with: the model timed on this machine at a few widths (None
    without latency_reduction). Mode auto: decode for causal LMs, forward otherwise."""
    from ..deploy.latency_table import measure_latency_table

    config, model = job.config, job.model
    if config.latency_reduction is None:
        return None
    mode = config.latency_mode
    if mode == "auto":
        mode = "decode" if getattr(model, "can_generate", lambda: False)() else "forward"
    return measure_latency_table(model, mode=mode, batch_size=job.cli.latency_batch_size,
                                 seq_len=config.flops_seq_len, repeats=job.cli.latency_repeats)


def prune_retrain_free(job: Job) -> dict:
    """Drop the weakest layers, then score the widths of the remaining ones on calibration data, plan (a budget
    with --structure depth/joint may choose more layers), recover by least squares layer by layer (or just cut),
    then unstructured zeros: `hf_prune.prune_retrain_free` (dense mode unless --recovery_inputs sequential; with
    --one_pass the recovery statistics come from the scoring pass).

    Layers go first, so width scores, the plan and the recovery statistics all see the model as it will be:
    recovery re-fits the remaining layers' kept units to the outputs those layers had (dense widths) after the
    layer removal, so it cannot bring back what a removed layer contributed.
    """
    from ..pipeline.retrain_free import prune_retrain_free as run_pipeline

    config, model = job.config, job.model
    calibration = job.calibration()
    tables: list = []

    def measured_table(_model):  # measured after the layer removal, on the model as it will be planned
        tables.append(latency_table(job))
        return tables[-1]

    result = run_pipeline(model, calibration, config, mode=config.recovery_inputs or "dense",
                          latency_table=measured_table, seed=job.training.seed, one_pass=job.cli.one_pass)
    table = tables[-1] if tables else None
    if result.plan is None:  # depth only
        return {"mode": "retrain-free", "schedule": None, "reselected": False, "recovery": None, "config": config,
                "removed_layers": result.removed_layers}
    return {"mode": "retrain-free", "schedule": None, "reselected": result.reselected,
            "recovery": result.recovery, "config": config,
            "removed_layers": result.removed_layers, "predicted_latency": result.plan.metadata.get("latency"),
            "latency_table": table.to_dict() if table is not None else None, "stages_s": result.seconds}


def fine_tuning_schedule(config: PruningConfig, training_args, n_train: int) -> PruningConfig:
    """The config with the command line's schedule defaults: events from 10% to 60% of the training steps,
    4 of them when the schedule spans steps, else 1."""
    steps = training_args.max_steps
    if steps is None or steps <= 0:
        per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
        per_step *= max(1, training_args.world_size)
        steps = math.ceil(n_train / per_step) * math.ceil(training_args.num_train_epochs)
    start = config.pruning_start_step if config.pruning_start_step is not None else round(0.1 * steps)
    end = config.pruning_end_step if config.pruning_end_step is not None else max(start, round(0.6 * steps))
    events = (config.pruning_events if config.pruning_events is not None else 4) if end > start else 1
    return config.replace(pruning_start_step=start, pruning_end_step=end, pruning_events=events)


def make_callback(config: PruningConfig, calibration, seed: int):
    """HeadPruningCallback for a config whose schedule is complete; scoring data for the non-gradient methods."""
    from ..training.callback import HeadPruningCallback

    return HeadPruningCallback(config, calibration_dataloader=calibration, seed=seed)


def prune_while_fine_tuning(job: Job, dense) -> dict:
    """Fine-tune with HeadPruningCallback (and, with --distill, distillation from the dense model)."""
    from ..training.callback import resize_to_checkpoint
    from ..training.distillation import DistillationTrainer
    from ..training.reporting import PruningTrainer

    config = fine_tuning_schedule(job.config, job.training, len(job.train_set))
    calibration = job.calibration()  # --calibration_samples, all scored at an event that needs data
    config = config.replace(calibration_batches=len(calibration))
    callback = make_callback(config, calibration, job.training.seed)
    trainer_class, extra = PruningTrainer, {}  # both trainers hand the pruning events to --report_to loggers
    if job.cli.distill:
        trainer_class = DistillationTrainer
        extra = {"teacher": dense, "alpha": job.cli.distill_alpha, "temperature": job.cli.distill_temperature}
    resume = job.training.resume_from_checkpoint
    if resume:
        resize_to_checkpoint(job.model, resume)
    trainer = trainer_class(model=job.model, args=job.training, train_dataset=job.train_set,
                            data_collator=job.collator, callbacks=[callback], **extra)
    trainer.train(resume_from_checkpoint=resume)
    job.model = trainer.model
    schedule = {"start_step": config.pruning_start_step, "end_step": config.pruning_end_step,
                "num_events": config.pruning_events, "schedule": config.pruning_schedule}
    return {"mode": "fine-tuned", "schedule": schedule, "reselected": False, "recovery": None, "config": config,
            "removed_layers": removed_original_layers(dense, job.model)}


def removed_original_layers(dense, pruned) -> list[int]:
    """Original indices of the layers `dense` had and `pruned` no longer has ([] with several layer stacks, where
    the command line refuses layer removal)."""
    from ..architecture.config_entry import layer_history
    from ..architecture.layouts import get_layers
    from ..architecture.stacks import model_stacks

    if model_stacks(dense) is not None:
        return []
    before, _ = layer_history(dense.config, len(get_layers(dense)))
    after, _ = layer_history(pruned.config, len(get_layers(pruned)))
    return sorted(set(before) - set(after))


def measure(job: Job, dense, pruning: dict, before: tuple[dict, dict], after: tuple[dict, dict]) -> dict:
    """CPU latency (and the int8 copy) of the dense and the pruned model, and the report of the whole run."""
    import torch

    from ..deploy.latency import measure_latency
    from ..unstructured.magnitude import sparsity_report
    from .metrics import TASK_METRICS
    from .model_card import base_model_id

    seq_len, cli, config = job.data_args.max_seq_length, job.cli, job.config
    with timed(job.timings, "latency_s"):
        latency = measure_latency({"dense": dense.cpu(), "pruned": job.model.cpu()},  # saving is unaffected
                                  batch_size=cli.latency_batch_size, seq_len=seq_len, repeats=cli.latency_repeats)
    names = list(TASK_METRICS[job.data.metric_task])
    (before, before_metrics), (after, after_metrics) = before, after
    if config.unstructured_sparsity:
        after["unstructured"] = {k: v for k, v in sparsity_report(job.model).as_dict().items() if k != "per_module"}
    before.update(metrics={n: before_metrics.get(f"eval_{n}") for n in names}, latency_ms=latency["dense"].median_s * 1e3)
    after.update(metrics={n: after_metrics.get(f"eval_{n}") for n in names}, latency_ms=latency["pruned"].median_s * 1e3)
    report = {
        "model": job.model_args.model_name_or_path,
        "base_model_id": base_model_id(job.model_args.model_name_or_path, job.model_args.base_model_id),
        "task": job.data_args.task_name or f"files ({job.data.metric_task})",
        "metric_names": names,
        "seq_len": seq_len,
        "pruning": {"mode": pruning["mode"], "importance": config.importance, "head_sparsity": config.head_sparsity,
                    "ffn_sparsity": config.ffn_sparsity, "flops_reduction": config.flops_reduction,
                    "layer_sparsity": config.layer_sparsity, "num_layers_to_remove": config.num_layers_to_remove,
                    "latency_reduction": config.latency_reduction, "structure": config.structure,
                    "layer_importance": (config.layer_method if config.removes_layers or config.plans_layers
                                         else None),
                    "removed_layers": pruning.get("removed_layers", []),
                    "schedule": pruning["schedule"], "distill": cli.distill, "recovery": pruning["recovery"],
                    "reselected": pruning["reselected"], "one_pass": cli.one_pass,
                    "config": pruning["config"].to_dict(), "predicted_latency": pruning.get("predicted_latency"),
                    "latency_table": pruning.get("latency_table")},
        "before": before,
        "after": after,
        "latency": {"batch_size": cli.latency_batch_size, "seq_len": seq_len, "repeats": cli.latency_repeats,
                    "threads": torch.get_num_threads(), "dense_median_s": latency["dense"].median_s,
                    "pruned_median_s": latency["pruned"].median_s,
                    "speedup": latency["dense"].median_s / latency["pruned"].median_s},
        "time_s": job.timings,
    }
    if cli.quantize_int8:
        report["quantized_int8"] = quantized_summary(job, dense, names)
    return report


def write_outputs(job: Job, report: dict, outputs: Outputs) -> None:
    """Model, tokenizer, report, heatmap and model card, moved into place only when all are written."""
    from ..serialization.atomic import atomic_directory
    from .model_card import write_model_card
    from .report import write_heatmap, write_report

    with atomic_directory(outputs.final_dir, overwrite=job.cli.overwrite_output_dir) as tmp:
        job.model.save_pretrained(tmp)
        job.tokenizer.save_pretrained(tmp)
        report["time_s"] = {**job.timings, "total_s": sum(job.timings.values())}
        write_report(tmp / "pruning_report.json", report)
        write_heatmap(tmp / "heads_kept.png", report)
        write_model_card(tmp, report, outputs.repo_id, load_from=outputs.final_dir)
    save_strategy = job.training.save_strategy
    if save_strategy == "no" or str(save_strategy).endswith("NO"):
        shutil.rmtree(outputs.work_dir, ignore_errors=True)


def check_model_type(model_config, pruning: PruningConfig | None) -> None:
    """ValueError for a model type hf_prune cannot prune, and on a model with several layer stacks (T5, BART)
    for the options the command line does not support on them yet, before any weights load."""
    from ..architecture.layouts import get_layout, get_stacks

    stacks = get_stacks(model_config)
    if stacks is None:
        get_layout(model_config)  # unsupported model -> ValueError naming its model_type
        return
    refused = [] if pruning is None else pruning.stack_conflicts(as_flags=True)
    if pruning is not None and pruning.recovery_inputs == "sequential":  # sequential recovery: single-stack models only
        refused.append("--recovery_inputs sequential")
    if refused:
        names = ", ".join(stack.name for stack in stacks)
        raise ValueError(f"{'; '.join(refused)}: not supported yet on model_type {model_config.model_type!r}, "
                         f"which has several layer stacks ({names}); prune it retrain-free by head/FFN sparsity "
                         f"or a FLOPs/parameter budget (--retrain_free --flops_reduction 0.3)")


def load_model(model_args, data, device, pruning: PruningConfig | None = None):
    """Tokenizer and sequence-classification model; pruned checkpoints through load_pruned. `pruning`: the run's
    config, checked against the model type first (`check_model_type`)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from ..architecture.config_entry import ENTRY_KEY
    from ..serialization.loading import load_pruned

    hub = {"revision": model_args.revision, "token": model_args.token}
    extra = {"num_labels": data.num_labels, "problem_type": "regression" if data.is_regression else None}
    if not data.is_regression:
        extra["id2label"] = {i: str(v) for i, v in enumerate(data.label_list)}
        extra["label2id"] = {str(v): i for i, v in enumerate(data.label_list)}
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, **hub)
    check_model_type(config, pruning)
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


def metrics_fn(data):
    """Trainer's compute_metrics for the task's GLUE metric (argmax of the logits, or the regression value)."""
    from .metrics import load_glue_metric

    metric = load_glue_metric(data.metric_task)

    def compute(eval_pred):
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        predictions = np.squeeze(logits, -1) if data.is_regression else np.argmax(logits, -1)
        return metric.compute(predictions=predictions, references=eval_pred.label_ids)

    return compute


def snapshot(model, seq_len: int) -> dict:
    """Parameters, layer FLOPs at `seq_len` (every stack's tokens, with several), layer count ({stack: count}
    with several stacks) and per-layer structure of a model."""
    from ..architecture.counting import count_flops, count_parameters
    from .report import stack_parts, structure

    struct = structure(model)
    counts = {name: part["num_layers"] for name, part in stack_parts(struct).items()}
    return {"parameters": count_parameters(model), "flops": count_flops(model, seq_len),
            "num_layers": counts[None] if None in counts else counts, "structure": struct}


def state_dict_bytes(model) -> int:
    """Serialized size of a model's state dict (what torch.save would write)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def quantized_summary(job, dense, names) -> dict:
    """Metric, size and CPU latency of dynamic int8 copies of the pruned and the dense model."""
    from ..deploy.latency import measure_latency
    from ..deploy.quantize import quantize_dynamic_int8

    model = job.model
    pruned_int8, dense_int8 = quantize_dynamic_int8(model), quantize_dynamic_int8(dense)
    metrics = job.evaluate(pruned_int8)
    latency = measure_latency({"dense_int8": dense_int8, "pruned_int8": pruned_int8},
                              batch_size=job.cli.latency_batch_size, seq_len=job.data_args.max_seq_length,
                              repeats=job.cli.latency_repeats)
    return {
        "metrics": {n: metrics.get(f"eval_{n}") for n in names},
        "size_bytes": {"dense_fp32": state_dict_bytes(dense), "pruned_fp32": state_dict_bytes(model),
                       "dense_int8": state_dict_bytes(dense_int8), "pruned_int8": state_dict_bytes(pruned_int8)},
        "latency_ms": {k: v.median_s * 1e3 for k, v in latency.items()},
    }


def print_summary(report: dict, folder: Path) -> None:
    """The before/after table and where the results are."""
    from .report import summary_table

    print(summary_table(report))
    print(f"\nsaved to {folder} (pruning_report.json, heads_kept.png, README.md); "
          f"reload with hf_prune.load_pruned({str(folder)!r})")


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
