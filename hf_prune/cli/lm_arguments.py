"""`prune_lm.py` / `hf-prune-lm` arguments: model, text data, `PruningConfig`, LM options and TrainingArguments.

One `HfArgumentParser` over five dataclasses, as in transformers' run_clm.py (every Trainer flag works) and
as the GLUE command line (hf_prune/cli/arguments.py, whose parser class, help formatter and flag spelling of
PruningConfig messages are shared). `--preset NAME` sets the parser's defaults (explicit flags win); LM presets
live in `LM_PRESETS` below. Bad input raises one ValueError/OSError; `lm.main` prints it as one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from ..training.config import PruningConfig
from .arguments import (
    ArgumentParser,
    HelpFormatter,
    HubModelArguments,
    as_flags,
    check_hub_id_and_output,
    parse_with_preset,
)
from .preset import resolve_asset

PROG = "prune_lm"
HEALING = ("none", "distill", "full", "lora", "gradual")
TEXT_SUFFIXES = (".txt", ".raw", ".text")
TABLE_SUFFIXES = {".csv": "csv", ".json": "json", ".jsonl": "json"}


@dataclass
class LMModelArguments(HubModelArguments):
    """Which causal language model to prune (a GGUF file too), and how the model card names it."""

    gguf_file: str | None = field(default=None, metadata={
        "help": "a GGUF file inside --model_name_or_path: loaded (dequantised) as transformers does, then copied into "
                "a plain model so that the pruned result saves normally"})


@dataclass
class LMDataArguments:
    """Text from a Hub dataset or local files, cut into windows of block_size tokens."""

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset (datasets.load_dataset), e.g. wikitext"})
    dataset_config_name: str | None = field(default=None, metadata={"help": "its configuration, e.g. wikitext-2-raw-v1"})
    train_file: str | None = field(default=None, metadata={
        "help": "plain text (.txt/.raw, possibly .gz) or csv/json/jsonl with a text column; calibration and healing data"})
    validation_file: str | None = field(default=None, metadata={"help": "same formats as --train_file; perplexity data"})
    text_column_name: str = field(default="text", metadata={"help": "the text column of csv/json files and Hub datasets"})
    validation_split_percentage: int = field(default=5, metadata={
        "help": "without a validation split or file: the percentage of the training text held out for perplexity"})
    block_size: int | None = field(default=None, metadata={
        "help": "tokens per window (default: min(1024, the model's context length); larger than the context is an "
                "error). Also the sequence length of the reported FLOPs and prefill latency"})
    eval_windows: int | None = field(default=None, metadata={
        "help": "perplexity on the first N non-overlapping validation windows (default: all of them)"})
    max_train_windows: int | None = field(default=None, metadata={
        "help": "healing: use only the first N training windows (default: all of them)"})


@dataclass
class LMArguments:
    """Options of the LM command line only: healing, output folder, speed measurement (budgets: PruningConfig)."""

    preset: str | None = field(default=None, metadata={
        "help": "read default flag values from a preset shipped with hf_prune (LM_PRESETS in hf_prune/cli/lm_arguments.py);"
                " explicit flags win. 'smollm2-wikitext': SmolLM2-135M on WikiText-2 from the offline assets, 20%% of "
                "the layer parameters removed retrain-free"})
    healing: str = field(default="none", metadata={
        "help": "after retrain-free pruning: none, distill (from the dense model: KL on next-token logits mixed with the "
                "LM loss), full (fine-tuning), lora (peft adapters, merged at the end); or gradual (no retrain-free "
                "step: HeadPruningCallback prunes while fine-tuning). Steps: --max_steps", "choices": list(HEALING)})
    distill_alpha: float = field(default=0.5, metadata={"help": "--healing distill: weight of the distillation loss, in [0, 1]"})
    distill_temperature: float = field(default=2.0, metadata={"help": "--healing distill: softmax temperature"})
    lora_r: int = field(default=16, metadata={"help": "--healing lora: adapter rank"})
    lora_alpha: int = field(default=32, metadata={"help": "--healing lora: adapter scaling alpha"})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "replace a non-empty --output_dir"})
    latency_batch_size: int = field(default=1, metadata={"help": "sequences per timed prefill / decode step"})
    latency_repeats: int = field(default=5, metadata={"help": "timed runs per model for prefill and decode"})
    decode_context: int = field(default=128, metadata={
        "help": "tokens in the KV cache of the timed decode step (capped at --block_size)"})


DATACLASSES = (LMModelArguments, LMDataArguments, PruningConfig, LMArguments, TrainingArguments)

# name -> flag values; "asset:<name>" values are offline assets, resolved by `preset.resolve_asset`.
LM_PRESETS = {
    "smollm2-wikitext": {
        "model_name_or_path": "asset:smollm2/folder",
        "gguf_file": "asset:smollm2/file",
        "base_model_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "train_file": "asset:wikitext2/train",
        "validation_file": "asset:wikitext2/test",
        "block_size": 256,
        "calibration_samples": 32,
        "eval_windows": 16,
        "params_reduction": 0.2,
        "importance": "fisher",
        "per_device_eval_batch_size": 4,
        "output_dir": "outputs/demo-lm",
        "overwrite_output_dir": True,
        "report_to": "none",
        "save_strategy": "no",
        "seed": 0,
        "use_cpu": True,
    },
}
def read_lm_preset(name: str) -> dict:
    if name not in LM_PRESETS:
        raise ValueError(f"unknown --preset {name!r}; LM presets: {', '.join(sorted(LM_PRESETS))}")
    return {key: resolve_asset(value) for key, value in LM_PRESETS[name].items()}


def build_parser() -> ArgumentParser:
    return ArgumentParser(DATACLASSES, prog=PROG, formatter_class=HelpFormatter,
                          description="Prune attention heads, FFN neurons and layers of a causal language model; "
                                      "report perplexity, size and speed before and after.")


def parse_lm_args(argv: list[str] | None = None) -> tuple:
    """(LMModelArguments, LMDataArguments, PruningConfig, LMArguments, TrainingArguments) from the command line.

    The healing mode decides `retrain_free` (every mode but gradual prunes retrain-free first).
    """
    model_args, data_args, config, lm_args, training_args = parse_with_preset(build_parser(), argv, read_lm_preset,
                                                                               DATACLASSES)
    try:
        config = config.replace(retrain_free=lm_args.healing != "gradual")
    except ValueError as err:
        raise ValueError(as_flags(str(err))) from None
    return model_args, data_args, config, lm_args, training_args


def data_format(path: str) -> str:
    """"text" for plain text (.txt/.raw/.text, or any of them .gz-compressed), else the datasets builder name."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in TABLE_SUFFIXES:
        return TABLE_SUFFIXES[last]
    if last in TEXT_SUFFIXES:
        return "text"
    raise ValueError(f"{path}: unsupported file type {last or '(none)'!r}; use plain text (.txt, .raw, optionally .gz) "
                     "or csv/json/jsonl with a text column")


def check_lm_args(model_args, data_args, config, lm_args, training_args) -> None:
    """The checks that need no model or data; nothing is loaded or written."""

    if model_args.model_name_or_path is None:
        raise ValueError("--model_name_or_path is required (or use --preset smollm2-wikitext)")
    if data_args.dataset_name is None and data_args.train_file is None:
        raise ValueError("give --dataset_name or --train_file (and --validation_file)")
    if data_args.dataset_name is not None and data_args.train_file is not None:
        raise ValueError("give --dataset_name or --train_file, not both")
    for flag in ("train_file", "validation_file"):
        path = getattr(data_args, flag)
        if path is not None:
            if not Path(path).is_file():
                raise FileNotFoundError(f"--{flag} {path} does not exist")
            data_format(path)
    for flag in ("block_size", "eval_windows", "max_train_windows"):
        value = getattr(data_args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag} must be >= 1, got {value}")
    if not 0 < data_args.validation_split_percentage < 100:
        raise ValueError(f"--validation_split_percentage must be in (0, 100), got {data_args.validation_split_percentage}")
    check_budget(config, lm_args)
    if config.calibration_batches != PruningConfig.calibration_batches:
        raise ValueError("--calibration_batches is the callback's option: on the command line, --calibration_samples "
                         "sets the calibration windows")
    if not 0.0 <= lm_args.distill_alpha <= 1.0 or lm_args.distill_temperature <= 0:
        raise ValueError("--distill_alpha must be in [0, 1] and --distill_temperature positive, got "
                         f"{lm_args.distill_alpha} and {lm_args.distill_temperature}")
    if min(lm_args.latency_batch_size, lm_args.latency_repeats, lm_args.decode_context, lm_args.lora_r) < 1:
        raise ValueError("--latency_batch_size, --latency_repeats, --decode_context and --lora_r must be >= 1")
    if lm_args.healing != "none" and training_args.max_steps <= 0:
        raise ValueError(f"--healing {lm_args.healing} trains for --max_steps steps: give --max_steps > 0")
    if lm_args.healing == "lora":
        check_peft()
    check_hub_id_and_output(model_args, training_args, lm_args.overwrite_output_dir)


def check_budget(config: PruningConfig, lm_args) -> None:
    """Something to prune, and the budgets that are planned retrain-free only with a retrain-free run.

    (PruningConfig itself refuses two budgets at once and values outside [0, 1).)"""
    if not (config.structured or config.unstructured_sparsity):
        raise ValueError("nothing to prune: give --params_reduction, --flops_reduction, --latency_reduction, "
                         "--head_sparsity/--ffn_sparsity, --layer_sparsity or --num_layers_to_remove")
    if (config.latency_reduction is not None or config.plans_layers) and not config.retrain_free:
        raise ValueError("--latency_reduction and --structure depth/joint are planned retrain-free: use --healing "
                         "none/distill/full/lora with them, not gradual")


def check_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ValueError("--healing lora needs the peft package, which is not installed: pip install peft "
                         "(or pip install 'hf-prune[peft]')") from None
