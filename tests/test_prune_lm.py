"""prune_lm.py end to end on a tiny random llama and a GPT-2 tokenizer: retrain-free, healing, bad input."""

import gzip
import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

import hf_prune_assets as assets
from hf_prune import count_parameters, load_pruned
from hf_prune.cli import lm
from hf_prune.cli.lm_data import as_batches, perplexity, read_file, windows

ROOT = Path(__file__).resolve().parents[1]
# words whose GPT-2 token ids are all below VOCAB: the tiny model's vocabulary stays small (fast output layer)
WORDS = "the a and of least for on it is in to be not as at by he we one day year old".split()
VOCAB = 2048


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    tokenizer = GPT2TokenizerFast.from_pretrained(assets.gpt2_tokenizer_dir())
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                         num_key_value_heads=2, intermediate_size=40, max_position_embeddings=64,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    g = torch.Generator().manual_seed(0)

    def words(n):
        return " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (n,), generator=g))

    with gzip.open(folder / "train.raw.gz", "wt", encoding="utf-8") as handle:  # plain text, gz-compressed
        handle.write(words(600))
    (folder / "valid.jsonl").write_text("".join(json.dumps({"text": words(60)}) + "\n" for _ in range(4)))
    (folder / "nocol.csv").write_text("content\n" + "\n".join(words(40) for _ in range(4)) + "\n")
    (folder / "short.txt").write_text("it is not")
    return folder


def base_args(model_dir, text, out, *extra):
    return ["--model_name_or_path", str(model_dir), "--train_file", str(text / "train.raw.gz"),
            "--validation_file", str(text / "valid.jsonl"), "--output_dir", str(out), "--block_size", "32",
            "--calibration_samples", "8", "--per_device_eval_batch_size", "4", "--per_device_train_batch_size", "4",
            "--report_to", "none", "--use_cpu", "--save_strategy", "no", "--latency_repeats", "1",
            "--decode_context", "8", "--disable_tqdm", "true", *extra]


def test_retrain_free_end_to_end(tiny_lm, text, tmp_path, monkeypatch):
    out = tmp_path / "out"
    kept = {}
    write = lm.write_outputs

    def keep_model(job, *args):
        kept["model"] = job.model
        return write(job, *args)

    monkeypatch.setattr(lm, "write_outputs", keep_model)
    assert lm.main(base_args(tiny_lm, text, out, "--params_reduction", "0.3")) == 0
    assert {"config.json", "model.safetensors", "pruning_report.json", "heads_kept.png", "README.md",
            "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "perplexity.png").exists()  # no healing, no curve
    assert not (tmp_path / "out.work").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    report = json.loads((out / "pruning_report.json").read_text())
    assert set(report["before"]) >= {"perplexity", "parameters", "flops", "latency_ms", "decode_tokens_per_s",
                                     "structure"}
    assert report["pruning"]["mode"] == "retrain-free" and report["pruning"]["reselected"]
    assert report["pruning"]["importance"] == "fisher" and report["pruning"]["recovery"] == "weights"

    model = load_pruned(out).eval()  # the saved model is the in-process one
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, kept["model"](input_ids=ids).logits)
    tokenizer = GPT2TokenizerFast.from_pretrained(out)
    batches = as_batches(windows(read_file(text / "valid.jsonl", "text"), tokenizer, 32), 4)
    assert report["data"]["eval_windows"] == sum(len(b["input_ids"]) for b in batches) > 0
    assert perplexity(model, batches) == pytest.approx(report["after"]["perplexity"], rel=1e-5)
    dense = LlamaForCausalLM.from_pretrained(tiny_lm)
    assert perplexity(dense, batches) == pytest.approx(report["before"]["perplexity"], rel=1e-5)
    removed = 1 - count_parameters(model, layers_only=True) / count_parameters(dense, layers_only=True)
    assert 0.3 <= removed < 0.45, removed
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "perplexity" in card and "decode tokens/s" in card


@pytest.mark.parametrize("mode", ["distill", "full", "gradual"])
def test_healing_writes_a_perplexity_curve(mode, tiny_lm, text, tmp_path):
    out = tmp_path / mode
    target = ["--params_reduction", "0.3"] if mode == "gradual" else \
        ["--params_reduction", "0.2", "--importance", "l2", "--no_mask_tuning"]  # a fast cut: healing is the test
    assert lm.main(base_args(tiny_lm, text, out, "--healing", mode, "--max_steps", "3", "--eval_steps", "2",
                             "--max_train_windows", "12", "--eval_windows", "2", *target)) == 0
    report = json.loads((out / "pruning_report.json").read_text())
    steps = [step for step, _ in report["healing"]["perplexity_history"]]
    assert steps == [0, 2, 3] and (out / "perplexity.png").stat().st_size > 1000
    assert report["healing"]["perplexity_history"][-1][1] == pytest.approx(report["after"]["perplexity"], rel=1e-5)
    assert report["after"]["parameters"] < report["before"]["parameters"]
    assert report["pruning"]["mode"] == ("fine-tuned" if mode == "gradual" else "retrain-free")
    if mode == "gradual":
        assert report["pruning"]["schedule"]["num_events"] >= 1
    model = load_pruned(out)
    assert type(model).__name__ == "LlamaForCausalLM"
    dense_layers = count_parameters(LlamaForCausalLM.from_pretrained(tiny_lm), layers_only=True)
    reduction = 0.3 if mode == "gradual" else 0.2  # the parameter budget holds for gradual pruning too
    assert count_parameters(model, layers_only=True) <= (1 - reduction) * dense_layers


def test_lora_healing_merges_into_a_plain_model(tiny_lm, text, tmp_path):
    pytest.importorskip("peft", reason="peft is not installed (pip install peft): --healing lora is untested here")
    out = tmp_path / "lora"
    assert lm.main(base_args(tiny_lm, text, out, "--healing", "lora", "--max_steps", "2", "--lora_r", "4",
                             "--max_train_windows", "8", "--params_reduction", "0.2")) == 0
    model = load_pruned(out)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert (out / "perplexity.png").exists()


CASES = {
    "missing_file": (lambda d, t, tmp: ["--train_file", str(tmp / "nope.txt")], "does not exist"),
    "missing_column": (lambda d, t, tmp: ["--validation_file", str(t / "nocol.csv")], "no column 'text'"),
    "block_size": (lambda d, t, tmp: ["--block_size", "128"], "larger than the model's context length"),
    "empty_validation": (lambda d, t, tmp: ["--validation_file", str(t / "short.txt")], "validation text has no window"),
    "no_target": (lambda d, t, tmp: [], "nothing to prune"),
    "healing_steps": (lambda d, t, tmp: ["--healing", "full"], "--max_steps"),
    "budgets": (lambda d, t, tmp: ["--flops_reduction", "0.2"], "only one"),
    "existing_output": (lambda d, t, tmp: [], "overwrite_output_dir"),
    "unsupported_model": (None, "does not support model_type 'bloom'"),
    "lora_without_peft": (lambda d, t, tmp: ["--healing", "lora", "--max_steps", "2"], "pip install peft"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_error_line_exit_2_nothing_written(case, tiny_lm, text, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    extra, message = CASES[case]
    model_dir = tiny_lm
    if case == "unsupported_model":  # only a config: it is rejected before any weights would load
        from transformers import BloomConfig  # ALiBi slopes depend on the head index: not prunable exactly

        model_dir = tmp_path / "bloom"
        BloomConfig(hidden_size=32, n_layer=1, n_head=4).save_pretrained(model_dir)
        extra = lambda d, t, tmp: []  # noqa: E731
    if case == "existing_output":
        out.mkdir()
        (out / "keep.txt").write_text("previous result")
    if case == "lora_without_peft":
        monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    budget = [] if case == "no_target" else ["--params_reduction", "0.2"]
    assert lm.main(base_args(model_dir, text, out, *budget, *extra(model_dir, text, tmp_path))) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(err) == 1 and err[0].startswith("prune_lm: error:"), err
    assert re.search(re.escape(message), err[0]), err[0]
    if case == "existing_output":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not (tmp_path / "out.work").exists()


def test_script_and_console_entry_point(tiny_lm, text, tmp_path, capsys, monkeypatch):
    """scripts/prune_lm.py (run as a script, in this process: no second interpreter start) and `hf-prune-lm`."""
    argv = base_args(tiny_lm, text, tmp_path / "o", "--params_reduction", "1.5")
    monkeypatch.setattr(sys, "argv", ["prune_lm.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts" / "prune_lm.py"), run_name="__main__")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "prune_lm: error: --params_reduction must be a number in [0, 1), got 1.5"
    assert not (tmp_path / "o").exists()
    assert 'hf-prune-lm = "hf_prune.cli.lm:main"' in (ROOT / "pyproject.toml").read_text()


def test_hub_dataset_without_validation_split_holds_out_the_last_percent(tiny_lm, text, tmp_path, monkeypatch):
    """--dataset_name goes through datasets.load_dataset (faked here: no Hub); no validation split -> a held-out tail."""
    import datasets

    docs = [" ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(40)) for i in range(40)]
    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config))
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs})})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = tmp_path / "hub"
    args = base_args(tiny_lm, text, out, "--params_reduction", "0.2", "--importance", "l2", "--no_mask_tuning",
                     "--validation_split_percentage", "10")
    args = args[:2] + ["--dataset_name", "me/text", "--dataset_config_name", "raw"] + args[6:]  # no files
    assert lm.main(args) == 0
    report = json.loads((out / "pruning_report.json").read_text())
    assert calls == [("me/text", "raw")] and report["task"] == "causal LM perplexity on me/text (raw)"
    assert report["data"]["eval_windows"] == 4 * 40 // 32  # the last 4 documents: 4 x 40 one-token words
