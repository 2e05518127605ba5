"""The command line's arguments: model, data, `PruningConfig`, CLI-only options and TrainingArguments.

One `HfArgumentParser` over five dataclasses (every Trainer flag works, as in run_glue.py). A preset
(`--preset demo`, a JSON file in hf_prune/cli/presets) sets the parser's defaults, so explicit flags win
wherever they stand. Bad input raises one ValueError/OSError; `main` prints it as one line.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments

from ..training.config import PruningConfig
from .preset import read_preset


@dataclass
class HubModelArguments:
    """Which model to prune, its Hub revision and token, and how the model card names it (both command lines)."""

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Hub id or local folder of the model to prune (a checkpoint pruned by hf_prune works too)"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "tokenizer Hub id or folder (default: the model's)"})
    revision: str = field(default="main", metadata={"help": "Hub revision of the model and tokenizer"})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models"})
    base_model_id: str | None = field(default=None, metadata={
        "help": "Hub id the model card names as base_model when --model_name_or_path is a local folder (default: "
                "the Hub id itself, or a known offline asset's original id; else base_model is left out)"})


@dataclass
class ModelArguments(HubModelArguments):
    """The GLUE command line's model: a sequence classifier, whose task head may be re-initialised."""

    ignore_mismatched_sizes: bool = field(default=False, metadata={
        "help": "re-initialise a task head whose label count differs (unpruned checkpoints only, as run_glue)"})


@dataclass
class DataArguments:
    """A GLUE task from the Hub, or local train/validation files."""

    task_name: str | None = field(default=None, metadata={"help": "GLUE task: cola sst2 mrpc qqp stsb mnli qnli rte wnli"})
    train_file: str | None = field(default=None, metadata={
        "help": "csv, tsv or json(l) with `sentence` (or `sentence1` and `sentence2`) and `label`; float labels = regression"})
    validation_file: str | None = field(default=None, metadata={"help": "same format as --train_file"})
    max_seq_length: int = field(default=128, metadata={
        "help": "tokens per example; also the sequence length of the reported FLOPs and latency"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training examples"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use only the first N validation examples"})


@dataclass
class CliArguments:
    """Options of the command line only: preset, distillation, int8 copy, output folder, latency measurement."""

    preset: str | None = field(default=None, metadata={
        "help": "read default flag values from a preset shipped with hf_prune (hf_prune/cli/presets/<name>.json); "
                "explicit flags win. 'demo': real MiniLM fine-tuned on the offline movie reviews, 50%% heads and FFN"})
    distill: bool = field(default=False, metadata={"help": "distil from the dense model while fine-tuning"})
    distill_alpha: float = field(default=0.5, metadata={"help": "--distill: weight of the distillation loss, in [0, 1]"})
    distill_temperature: float = field(default=2.0, metadata={"help": "--distill: softmax temperature of the teacher"})
    quantize_int8: bool = field(default=False, metadata={
        "help": "also evaluate a dynamic int8 copy for CPU inference and add it to the report"})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "replace a non-empty --output_dir"})
    latency_batch_size: int = field(default=8, metadata={"help": "batch size of the CPU latency measurement"})
    latency_repeats: int = field(default=10, metadata={"help": "timed runs per model in the CPU latency measurement"})
    one_pass: bool = field(default=False, metadata={
        "help": "with --retrain_free (dense recovery inputs): collect every layer's recovery statistics during the "
                "scoring pass, so the calibration data goes through the model once (faster; holds every layer's "
                "statistics at once, (F + 1)^2 float64 per output / down projection per layer: 0.24 GB for MiniLM, "
                "about 1 GB for BERT-base)"})


DATACLASSES = (ModelArguments, DataArguments, PruningConfig, CliArguments, TrainingArguments)
PROG = "prune_heads"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except where they mislead: on the generated `--no_X` switches ("default: False"
    of a feature that is on) and "default: None" after a help text that already says what the default is."""

    def _get_help_string(self, action):
        negated = [s for s in action.option_strings if s.startswith("--no_")]
        if negated and action.nargs == 0 and action.const is False:
            return f"turn {negated[0].replace('--no_', '--', 1)} off (it is on by default)"
        if action.default is None and "default" in (action.help or "").lower():
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(HfArgumentParser):
    """HfArgumentParser whose usage errors raise ValueError, so that `main` prints them as one line."""

    def error(self, message):
        raise ValueError(message)


def build_parser() -> ArgumentParser:
    return ArgumentParser(DATACLASSES, prog=PROG, formatter_class=HelpFormatter,
                          description="Prune attention heads and FFN neurons on a GLUE-style task.")


def preset_name(argv: list[str]) -> str | None:
    """The value of `--preset NAME` or `--preset=NAME` (the last one given), or None."""
    early = ArgumentParser(add_help=False)
    early.add_argument("--preset")
    return early.parse_known_args(argv)[0].preset


def parse_with_preset(parser, argv: list[str] | None, read, dataclasses: tuple) -> tuple:
    """The parser's dataclasses from `argv` (default sys.argv), with a --preset's values (`read(name)`) as defaults:
    explicit flags, before or after --preset, win. ValueError for a preset setting unknown options, and for
    PruningConfig errors (field names written as flags)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = preset_name(argv)
    if name is not None:
        values = read(name)
        known = {f.name for dtype in dataclasses for f in fields(dtype)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"preset {name!r} sets unknown options {unknown}")
        parser.set_defaults(**values)
    try:
        return tuple(parser.parse_args_into_dataclasses(args=argv))
    except ValueError as err:
        raise ValueError(as_flags(str(err))) from None


def parse_args(argv: list[str] | None = None) -> tuple:
    """(ModelArguments, DataArguments, PruningConfig, CliArguments, TrainingArguments) from the command line."""
    model_args, data_args, config, cli_args, training_args = parse_with_preset(build_parser(), argv, read_preset,
                                                                                DATACLASSES)
    if config.flops_seq_len is None:
        config = config.replace(flops_seq_len=data_args.max_seq_length)
    return model_args, data_args, config, cli_args, training_args


_CONFIG_FIELDS = "|".join(sorted((f.name for f in fields(PruningConfig)), key=len, reverse=True))


def as_flags(message: str) -> str:
    """A PruningConfig message with its field names written as the flags (`head_sparsity` -> `--head_sparsity`)."""
    return re.sub(rf"(?<![\w-])({_CONFIG_FIELDS})(?![\w-])", r"--\1", message)



def check_hub_id_and_output(model_args, training_args, overwrite: bool) -> None:
    """Checks both command lines make before any work: --base_model_id is a Hub id, and --output_dir is new or empty
    unless --overwrite_output_dir."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if model_args.base_model_id is not None:
        try:
            validate_repo_id(model_args.base_model_id)
        except HFValidationError as err:
            raise ValueError(f"--base_model_id {model_args.base_model_id!r} is not a Hub id: {err}") from None
    out = Path(training_args.output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"output_dir {out} exists and is not empty: pass --overwrite_output_dir or pick another")

def check_args(model_args, data_args, config, cli_args, training_args) -> None:
    """The checks PruningConfig and the parser leave, that need no model or data; nothing is loaded or written."""

    if model_args.model_name_or_path is None:
        raise ValueError("--model_name_or_path is required (or use --preset demo)")
    if data_args.task_name is None and data_args.train_file is None:
        raise ValueError("give --task_name or --train_file and --validation_file")
    if data_args.max_seq_length <= 0:
        raise ValueError(f"--max_seq_length must be positive, got {data_args.max_seq_length}")
    if config.calibration_batches != PruningConfig.calibration_batches:
        raise ValueError("--calibration_batches is the callback's option: on the command line, --calibration_samples "
                         "sets the scoring and recovery data")
    if not 0.0 <= cli_args.distill_alpha <= 1.0 or cli_args.distill_temperature <= 0:
        raise ValueError("--distill_alpha must be in [0, 1] and --distill_temperature positive, got "
                         f"{cli_args.distill_alpha} and {cli_args.distill_temperature}")
    if (config.latency_reduction is not None or config.plans_layers) and not config.retrain_free:
        raise ValueError("--latency_reduction and --structure depth/joint are planned retrain-free: add --retrain_free "
                         "(while fine-tuning, remove layers with --num_layers_to_remove or --layer_sparsity)")
    if cli_args.one_pass and (not config.retrain_free or config.recovery_inputs == "sequential"):
        raise ValueError("--one_pass collects the recovery statistics while scoring, on the dense model's inputs: it "
                         "needs --retrain_free and not --recovery_inputs sequential")
    if cli_args.latency_batch_size < 1 or cli_args.latency_repeats < 1:
        raise ValueError("--latency_batch_size and --latency_repeats must be >= 1")
    check_hub_id_and_output(model_args, training_args, cli_args.overwrite_output_dir)
