"""`prune_lm.py` / `hf-prune-lm`: prune a causal language model, optionally heal it, report perplexity and speed.

In the style of transformers' run_clm.py, beside the GLUE command line (app.py, whose steps it reuses). `run`:
load (check every input, read and tokenise the text, load the model: nothing heavy before all checks pass) ->
dense perplexity -> prune retrain-free (`retrain_free`: fisher scores, a budget plan, re-selection and weight
recovery, layer by layer: `hf_prune.prune_retrain_free`; skipped by --healing gradual) -> heal (none, distill,
full, lora, or gradual pruning while fine-tuning; perplexity every --eval_steps) -> perplexity again -> measure
(parameters, FLOPs, CPU prefill latency, decode tokens/s) -> write model, tokenizer, pruning_report.json, heads_kept.png,
perplexity.png (healing only) and README.md into a temporary folder moved into --output_dir when complete ->
print the before/after table -> optionally push to the Hub.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..training.config import PruningConfig
from .app import Outputs, push_folder, redirect_outputs, snapshot, timed
from .lm_arguments import check_lm_args, parse_lm_args

DEFAULT_BLOCK = 1024


@dataclass
class LMJob:
    """The parsed arguments and what `load` made of them, handed from step to step."""

    model_args: Any
    data_args: Any
    config: PruningConfig
    lm: Any  # LMArguments
    training: Any  # transformers.TrainingArguments
    block_size: int = 0
    source: str = ""
    tokenizer: Any = None
    model: Any = None
    calibration: list = field(default_factory=list)  # batches of --calibration_samples training windows
    eval_batches: list = field(default_factory=list)  # batches of validation windows
    train_windows: Any = None  # (N, block_size) tensor, for healing
    timings: dict = field(default_factory=dict)

    @property
    def eval_tokens(self) -> int:
        return sum(b["input_ids"].numel() for b in self.eval_batches)


def run(model_args, data_args, config, lm_args, training_args) -> dict:
    """The whole flow; returns the report. Raises ValueError/OSError on bad input before writing anything."""
    from .lm_data import perplexity

    job = LMJob(model_args, data_args, config, lm_args, training_args)
    with timed(job.timings, "load_s"):
        load(job)
    outputs = redirect_outputs(job.training)
    with timed(job.timings, "evaluate_dense_s"):
        before_ppl = perplexity(job.model, job.eval_batches)
    dense = copy.deepcopy(job.model).eval()
    before = snapshot(job.model, job.block_size)
    healing = lm_args.healing
    pruning = {"mode": "fine-tuned", "schedule": None, "reselected": False, "recovery": None, "removed_layers": []}
    if healing != "gradual":
        with timed(job.timings, "prune_s"):
            pruning = retrain_free(job, seed=training_args.seed)
    history, schedule = [], None
    if healing != "none":
        from .lm_healing import heal

        with timed(job.timings, "heal_s"):
            job.model, history, schedule = heal(job.model, dense, healing, job.train_windows, job.eval_batches,
                                                job.training, lm_args, job.config, job.calibration, training_args.seed)
        if schedule is not None:
            pruning.update(schedule=schedule, removed_layers=removed_layers_between(dense, job.model))
    job.model.eval()
    with timed(job.timings, "evaluate_pruned_s"):
        after_ppl = perplexity(job.model, job.eval_batches)
    after = snapshot(job.model, job.block_size)
    report = measure(job, dense, pruning, (before, before_ppl), (after, after_ppl), history)
    write_outputs(job, report, outputs, history)
    print_summary(report, outputs.final_dir)
    if outputs.repo_id:
        push_folder(outputs.final_dir, outputs.repo_id, outputs.token)
    return report


# ---------------------------------------------------------------------------------------------------- load


def load(job: LMJob) -> None:
    """Check the arguments, the model's config, the text and its windows, then load the weights."""
    from transformers import set_seed

    from .lm_data import as_batches, load_lm_text, windows

    check_lm_args(job.model_args, job.data_args, job.config, job.lm, job.training)
    model_config = load_config(job.model_args)
    job.block_size = block_size_for(model_config, job.data_args.block_size)
    if job.config.flops_seq_len is None:
        job.config = job.config.replace(flops_seq_len=job.block_size)
    text = load_lm_text(job.data_args)
    job.source = text.source
    job.tokenizer = load_tokenizer(job.model_args)
    args, block = job.data_args, job.block_size
    eval_wins = windows(text.validation, job.tokenizer, block, args.eval_windows)
    if len(eval_wins) == 0:
        raise ValueError(f"the validation text has no window of {block} tokens (--block_size): give more validation "
                         "text or a smaller --block_size")
    need = job.config.calibration_samples
    if job.lm.healing != "none":
        need = None if args.max_train_windows is None else max(need, args.max_train_windows)
    train_wins = windows(text.train, job.tokenizer, block, need)
    if len(train_wins) == 0:
        raise ValueError(f"the training text has no window of {block} tokens (--block_size): give more training "
                         "text or a smaller --block_size")
    batch = job.training.per_device_eval_batch_size
    job.calibration = as_batches(train_wins[: job.config.calibration_samples], batch)
    job.eval_batches = as_batches(eval_wins, batch)
    if job.lm.healing != "none":
        job.train_windows = train_wins if args.max_train_windows is None else train_wins[: args.max_train_windows]
    set_seed(job.training.seed)
    job.model = load_model(job.model_args, model_config).to(job.training.device)
    if job.config.removes_layers:  # removing every layer -> ValueError, before any pass over the data
        from ..training.events import dense_layer_count

        job.config.layers_to_remove(dense_layer_count(job.model))


def hub_kwargs(model_args) -> dict:
    return {"revision": model_args.revision, "token": model_args.token}


def load_config(model_args):
    """The model's config; ValueError for a model type hf_prune cannot prune, that is no causal LM or that has
    several layer stacks (T5, BART: the command prunes one)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from ..architecture.layouts import get_layout, get_stacks

    path = model_args.model_name_or_path
    if model_args.gguf_file is not None and Path(path).is_dir() and not (Path(path) / model_args.gguf_file).is_file():
        raise FileNotFoundError(f"--gguf_file {model_args.gguf_file} does not exist in {path}")
    extra = {"gguf_file": model_args.gguf_file} if model_args.gguf_file else {}
    config = AutoConfig.from_pretrained(path, **hub_kwargs(model_args), **extra)
    stacks = get_stacks(config)
    if stacks is not None:  # BART's BartForCausalLM is a causal LM, but the checkpoint holds every stack
        raise ValueError(f"model_type {config.model_type!r} has several layer stacks "
                         f"({', '.join(stack.name for stack in stacks)}): prune_lm prunes causal language models of one "
                         f"layer stack; prune it with hf_prune.prune_retrain_free, or with prune_heads --retrain_free "
                         f"for sequence classification")
    get_layout(config)  # unsupported model -> ValueError naming its model_type
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"model_type {config.model_type!r} is not a causal language model (AutoModelForCausalLM)")
    return config


def context_length(config) -> int | None:
    return getattr(config, "max_position_embeddings", None)


def block_size_for(config, requested: int | None) -> int:
    """--block_size, default min(1024, context); larger than the model's context length is an error."""
    context = context_length(config)
    if requested is None:
        return min(DEFAULT_BLOCK, context) if context else DEFAULT_BLOCK
    if context is not None and requested > context:
        raise ValueError(f"--block_size {requested} is larger than the model's context length "
                         f"(max_position_embeddings = {context})")
    return requested


def load_tokenizer(model_args):
    from transformers import AutoTokenizer

    extra = {"gguf_file": model_args.gguf_file} if model_args.gguf_file and not model_args.tokenizer_name else {}
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path,
                                              **hub_kwargs(model_args), **extra)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_args, config):
    """The causal LM: a GGUF file dequantised and copied into a plain model (which can save itself), a checkpoint
    pruned by hf_prune through load_pruned, else AutoModelForCausalLM.from_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..architecture.config_entry import ENTRY_KEY
    from ..serialization.loading import load_pruned

    path, hub = model_args.model_name_or_path, hub_kwargs(model_args)
    if model_args.gguf_file:
        gguf = AutoModelForCausalLM.from_pretrained(path, gguf_file=model_args.gguf_file, dtype=torch.float32, **hub)
        plain = gguf.config
        plain.quantization_config = None
        delattr(plain, "quantization_config")
        model = AutoModelForCausalLM.from_config(plain, dtype=torch.float32)
        model.load_state_dict(gguf.state_dict())
        model.tie_weights()
        return model.eval()
    if getattr(config, ENTRY_KEY, None) is not None:
        return load_pruned(path, model_class=AutoModelForCausalLM, **hub).eval()
    return AutoModelForCausalLM.from_pretrained(path, config=config, **hub).eval()


# ---------------------------------------------------------------------------------------------------- prune


def latency_table_for(job: LMJob):
    """The latency table a --latency_reduction budget plans with (None without one)."""
    from ..deploy.latency_table import measure_latency_table

    config = job.config
    if config.latency_reduction is None:
        return None
    mode = "decode" if config.latency_mode == "auto" else config.latency_mode
    return measure_latency_table(job.model, mode=mode, batch_size=job.lm.latency_batch_size,
                                 seq_len=config.flops_seq_len, repeats=job.lm.latency_repeats)


def retrain_free(job: LMJob, *, seed: int = 0) -> dict:
    """`hf_prune.prune_retrain_free` (layer by layer, dense-input mode) on the calibration windows; the report's
    pruning record. The latency table of a --latency_reduction budget is measured after any layer removal."""
    from ..pipeline.retrain_free import prune_retrain_free

    tables: list = []

    def measured_table(_model):
        tables.append(latency_table_for(job))
        return tables[-1]

    mode = job.config.recovery_inputs or "sequential"  # measured best on SmolLM2 (bench_streaming.py)
    result = prune_retrain_free(job.model, job.calibration, job.config, mode=mode, latency_table=measured_table,
                                seed=seed)
    table = tables[-1] if tables else None
    plan = result.plan
    return {"mode": "retrain-free", "schedule": None, "reselected": result.reselected, "recovery": result.recovery,
            "recovery_inputs": mode, "removed_layers": result.removed_layers,
            "predicted_latency": plan.metadata.get("latency") if plan is not None else None,
            "latency_table": table.to_dict() if table is not None else None, "stages_s": result.seconds}


def removed_layers_between(dense, pruned) -> list[int]:
    from .app import removed_original_layers

    return removed_original_layers(dense, pruned)


# ---------------------------------------------------------------------------------------------------- report


def measure(job: LMJob, dense, pruning: dict, before: tuple[dict, float], after: tuple[dict, float],
            history: list) -> dict:
    """Speed of the dense and the pruned model, and the report of the whole run (the GLUE report's structure)."""
    from .lm_report import measure_speed
    from .model_card import base_model_id

    lm, config = job.lm, job.config
    with timed(job.timings, "latency_s"):
        speed = measure_speed(dense, job.model, lm.latency_batch_size, job.block_size,
                              min(lm.decode_context, job.block_size), lm.latency_repeats)
    (before, before_ppl), (after, after_ppl) = before, after
    for snap, ppl, name in ((before, before_ppl, "dense"), (after, after_ppl, "pruned")):
        snap.update(metrics={"perplexity": ppl}, perplexity=ppl, latency_ms=speed[f"{name}_median_s"] * 1e3,
                    decode_tokens_per_s=speed["decode"][f"{name}_tokens_per_s"])
    if config.unstructured_sparsity:
        from ..unstructured.magnitude import sparsity_report

        after["unstructured"] = {k: v for k, v in sparsity_report(job.model).as_dict().items() if k != "per_module"}
    config_record = (pruning.get("schedule") or {}).get("config") or config.to_dict()
    return {
        "model": job.model_args.model_name_or_path,
        "gguf_file": job.model_args.gguf_file,
        "base_model_id": base_model_id(job.model_args.model_name_or_path, job.model_args.base_model_id),
        "task": f"causal LM perplexity on {job.source}",
        "metric_names": ["perplexity"],
        "seq_len": job.block_size,
        "data": {"source": job.source, "block_size": job.block_size, "calibration_windows":
                 sum(len(b["input_ids"]) for b in job.calibration), "eval_windows": job.eval_tokens // job.block_size,
                 "eval_tokens": job.eval_tokens},
        "pruning": {"mode": pruning["mode"], "importance": config.importance, "params_reduction": config.params_reduction,
                    "head_sparsity": config.head_sparsity, "ffn_sparsity": config.ffn_sparsity,
                    "flops_reduction": config.flops_reduction, "layer_sparsity": config.layer_sparsity,
                    "num_layers_to_remove": config.num_layers_to_remove, "latency_reduction": config.latency_reduction,
                    "structure": config.structure,
                    "layer_importance": config.layer_method if config.removes_layers or config.plans_layers else None,
                    "removed_layers": pruning.get("removed_layers", []), "schedule": pruning["schedule"],
                    "distill": lm.healing == "distill", "recovery": pruning["recovery"],
                    "reselected": pruning["reselected"], "config": config_record,
                    "predicted_latency": pruning.get("predicted_latency"),
                    "latency_table": pruning.get("latency_table")},
        "healing": {"mode": lm.healing, "steps": job.training.max_steps if lm.healing != "none" else 0,
                    "perplexity_history": [list(point) for point in history]},
        "before": before,
        "after": after,
        "latency": speed,
        "time_s": job.timings,
    }


def write_outputs(job: LMJob, report: dict, outputs: Outputs, history: list) -> None:
    """Model, tokenizer, report, heatmap, perplexity plot and model card, moved into place only when all are written."""
    from ..serialization.atomic import atomic_directory, atomic_write_bytes
    from .lm_healing import perplexity_png
    from .lm_report import write_lm_model_card
    from .report import write_heatmap, write_report

    with atomic_directory(outputs.final_dir, overwrite=job.lm.overwrite_output_dir) as tmp:
        job.model.save_pretrained(tmp)
        job.tokenizer.save_pretrained(tmp)
        report["time_s"] = {**job.timings, "total_s": sum(job.timings.values())}
        write_report(tmp / "pruning_report.json", report)
        write_heatmap(tmp / "heads_kept.png", report)
        if history:
            title = f"Healing ({job.lm.healing}): validation perplexity"
            atomic_write_bytes(tmp / "perplexity.png", perplexity_png(history, report["before"]["perplexity"], title))
        write_lm_model_card(tmp, report, outputs.repo_id, load_from=outputs.final_dir)
    save_strategy = job.training.save_strategy
    if save_strategy == "no" or str(save_strategy).endswith("NO"):
        shutil.rmtree(outputs.work_dir, ignore_errors=True)


def print_summary(report: dict, folder: Path) -> None:
    from .lm_report import lm_summary_table

    print(lm_summary_table(report))
    files = "pruning_report.json, heads_kept.png, " + ("perplexity.png, " if report["healing"]["perplexity_history"]
                                                        else "") + "README.md"
    print(f"\nsaved to {folder} ({files}); reload with hf_prune.load_pruned({str(folder)!r})")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one clear error line and exit status 2 on bad input (HF_PRUNE_DEBUG=1: traceback)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run(*parse_lm_args(argv))
    except (ValueError, OSError) as err:
        if os.environ.get("HF_PRUNE_DEBUG"):
            raise
        message = " ".join(str(err).split())  # one line, whatever the message
        print(f"prune_lm: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
