"""The command line's arguments: PruningConfig parsed by HfArgumentParser, help text, presets, schedule defaults."""

import dataclasses
import json
import re
import sys

import pytest
from transformers import TrainingArguments

import hf_prune_assets as assets
from hf_prune.cli import main
from hf_prune.cli.app import fine_tuning_schedule
from hf_prune.cli.arguments import CliArguments, DataArguments, ModelArguments, build_parser, parse_args
from hf_prune.cli.preset import preset_names, read_preset
from hf_prune.training.config import PruningConfig

# What `--preset demo` expanded to before the preset became a JSON file (asset paths filled in by the test).
FORMER_DEMO_FLAGS = [
    "--max_seq_length", "64", "--max_eval_samples", "1000",
    "--head_sparsity", "0.5", "--ffn_sparsity", "0.5", "--importance", "fisher",
    "--pruning_start_step", "40", "--pruning_end_step", "120", "--pruning_events", "4",
    "--output_dir", "outputs/demo", "--overwrite_output_dir",
    "--max_steps", "180", "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "64",
    "--learning_rate", "1e-4", "--warmup_steps", "10", "--logging_steps", "20", "--save_strategy", "no",
    "--report_to", "none", "--seed", "0", "--use_cpu",
]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The demo's csv files go to a temporary cache; relative output folders to a temporary working folder."""
    monkeypatch.setenv("HF_PRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cache"


def as_dicts(parsed):
    return [x.to_dict() if hasattr(x, "to_dict") else dataclasses.asdict(x) for x in parsed]


def help_text(capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def help_block(text: str, flag: str) -> str:
    """The help lines of one option, joined into one line."""
    match = re.search(rf"^  {re.escape(flag)}\b.*?(?=^  -)", text, re.S | re.M)
    assert match, flag
    return " ".join(match.group(0).split())


def test_parse_gives_a_pruning_config_with_the_cli_flag_names():
    model, data, config, cli, training = parse_args(
        ["--model_name_or_path", "m", "--train_file", "t.csv", "--output_dir", "o", "--head_sparsity", "0.3",
         "--ffn_sparsity", "0.2", "--no_reselect", "--min_neurons_per_layer", "4", "--gqa", "groups",
         "--max_seq_length", "64", "--distill", "--latency_repeats", "3"])
    assert isinstance(config, PruningConfig) and (config.head_sparsity, config.ffn_sparsity) == (0.3, 0.2)
    assert config.reselect is False and config.min_neurons_per_layer == 4 and config.gqa == "groups"
    assert config.flops_seq_len == 64  # from --max_seq_length when not given
    assert config.pruning_events is None  # the schedule decides (see below)
    assert cli.distill and cli.latency_repeats == 3 and model.model_name_or_path == "m"
    assert not hasattr(cli, "head_sparsity")  # one PruningConfig, no duplicate CLI copy of its fields
    config = parse_args(["--max_seq_length", "64", "--flops_seq_len", "32", "--flops_reduction", "0.4"])[2]
    assert config.flops_seq_len == 32 and config.flops_reduction == 0.4


@pytest.mark.parametrize("flags, message", [
    (["--head_sparsity", "1.0"], "prune_heads: error: --head_sparsity must be a number in [0, 1), got 1.0"),
    (["--unstructured_sparsity", "-0.1"], "--unstructured_sparsity must be a number in [0, 1)"),
    (["--flops_reduction", "1.5"], "--flops_reduction must be a number in [0, 1)"),
    (["--flops_reduction", "0.5", "--head_sparsity", "0.5"], "give --flops_reduction or --head_sparsity/--ffn_sparsity"),
    (["--pruning_start_step", "9", "--pruning_end_step", "3"], "--pruning_end_step (3) must be >= --pruning_start_step (9)"),
    (["--importance", "magic"], "argument --importance: invalid choice"),
    (["--calibration_batches", "2"], "--calibration_batches is the callback's option"),
    (["--base_model_id", "not a/valid id"], "--base_model_id 'not a/valid id' is not a Hub id"),
    (["--no_such_flag"], "not used by the HfArgumentParser: ['--no_such_flag']"),
    (["--one_pass"], "--one_pass collects the recovery statistics while scoring"),
    (["--one_pass", "--retrain_free", "--recovery_inputs", "sequential"], "not --recovery_inputs sequential"),
])
def test_bad_flags_give_one_error_line_and_status_2(flags, message, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--model_name_or_path", "m", "--train_file", "t.csv", "--output_dir", str(out), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("prune_heads: error: ") and message in err[0], err
    assert not out.exists()


def test_every_flag_has_help_and_negated_flags_do_not_claim_default_false(capsys):
    for dtype in (ModelArguments, DataArguments, PruningConfig, CliArguments):
        for f in dataclasses.fields(dtype):
            assert f.metadata.get("help", "").strip(), f"{dtype.__name__}.{f.name} has no help"
    undocumented = [a.option_strings[0] for a in build_parser()._actions if not (a.help or "").strip()]
    assert undocumented == [], undocumented  # TrainingArguments' flags too
    text = help_text(capsys)
    for flag in ("--no_mask_tuning", "--no_reselect", "--no_remove_unused_columns"):
        block = help_block(text, flag)
        assert "(default: False)" not in block and "on by default" in block, block
    assert "(default: True)" in help_block(text, "--mask_tuning")
    for flag in ("--pruning_start_step", "--pruning_events", "--flops_seq_len", "--tokenizer_name"):
        assert "(default: None)" not in help_block(text, flag)  # the help says what the default is
    assert "flops_seq_len tokens (default: --max_seq_length" in help_block(text, "--flops_reduction")
    assert "scoring" in help_block(text, "--calibration_samples") and "recovery" in help_block(text, "--calibration_samples")


def test_demo_preset_is_shipped_and_gives_the_former_demo_arguments(cache):
    assert "demo" in preset_names()
    train, validation = read_preset("demo")["train_file"], read_preset("demo")["validation_file"]
    former = parse_args(["--model_name_or_path", str(assets.minilm_dir()), "--train_file", train,
                         "--validation_file", validation, *FORMER_DEMO_FLAGS])
    for spelling in (["--preset", "demo"], ["--preset=demo"]):
        parsed = parse_args(spelling)
        assert parsed[3].preset == "demo"
        for old, new in zip(as_dicts(former), as_dicts(parsed)):
            new.pop("preset", None), old.pop("preset", None)
            assert old == new
            assert {k: type(v) for k, v in old.items()} == {k: type(v) for k, v in new.items()}
    assert train.startswith(str(cache)) and validation.endswith(".csv")


def test_explicit_flags_win_over_the_preset_before_and_after_it(cache):
    _, data, config, _, training = parse_args(["--seed", "5", "--preset", "demo", "--head_sparsity", "0.25",
                                               "--max_seq_length", "32"])
    assert training.seed == 5 and config.head_sparsity == 0.25 and config.ffn_sparsity == 0.5
    assert data.max_seq_length == 32 and config.flops_seq_len == 32
    assert parse_args(["--preset=demo"])[3].overwrite_output_dir is True
    assert parse_args(["--preset=demo", "--overwrite_output_dir", "false"])[3].overwrite_output_dir is False


def test_preset_values_go_through_pruning_config_validation(cache, monkeypatch):
    import hf_prune.cli.arguments as arguments

    monkeypatch.setattr(arguments, "read_preset", lambda name: {"head_sparsity": 1.5})
    with pytest.raises(ValueError, match=r"--head_sparsity must be a number in \[0, 1\)"):
        parse_args(["--preset", "demo"])
    monkeypatch.setattr(arguments, "read_preset", lambda name: {"sparsity": 0.5})
    with pytest.raises(ValueError, match=r"preset 'demo' sets unknown options \['sparsity'\]"):
        parse_args(["--preset", "demo"])


def test_unknown_preset_lists_the_shipped_ones(cache, capsys):
    assert main(["--preset", "nope"]) == 2
    assert capsys.readouterr().err.strip() == "prune_heads: error: unknown --preset 'nope'; shipped presets: demo"
    assert main(["--preset"]) == 2
    assert "argument --preset: expected one argument" in capsys.readouterr().err


def test_demo_preset_without_the_assets_says_to_run_make_install(cache, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hf_prune_assets", None)  # import hf_prune_assets -> ImportError
    assert main(["--preset", "demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prune_heads: error: ") and "run `make install`" in err[0], err
    assert not (cache.parent / "outputs").exists() and not cache.exists()


def test_preset_file_is_package_data():
    from importlib import resources

    text = (resources.files("hf_prune.cli") / "presets" / "demo.json").read_text()
    assert json.loads(text)["model_name_or_path"] == "asset:minilm"
    pyproject = (__import__("pathlib").Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"presets/*.json"' in pyproject


@pytest.mark.parametrize("given, expected", [
    ({}, (10, 60, 4)),  # 10% and 60% of the steps, 4 events when the schedule spans steps
    ({"pruning_start_step": 30, "pruning_end_step": 30}, (30, 30, 1)),  # one step: one event
    ({"pruning_events": 2}, (10, 60, 2)),
    ({"pruning_start_step": 5, "pruning_end_step": 5, "pruning_events": 3}, (5, 5, 1)),
])
def test_fine_tuning_schedule_defaults(given, expected, tmp_path):
    training = TrainingArguments(output_dir=str(tmp_path), max_steps=100, use_cpu=True, report_to="none")
    config = fine_tuning_schedule(PruningConfig(head_sparsity=0.5, **given), training, n_train=1000)
    assert (config.pruning_start_step, config.pruning_end_step, config.pruning_events) == expected
