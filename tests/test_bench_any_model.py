"""benchmarks/bench_any_model.py runs offline on the assets (MiniLM with labelled movie reviews, SmolLM2 with
WikiText-2), with small settings: prune retrain-free, measure, save, reload identically, write the JSON; an
unsupported model is refused before anything is loaded or written."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import transformers as tf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_any_model  # noqa: E402

FAST = ["--no-reselect", "--batch-size", "4"]


@pytest.fixture(autouse=True)
def _quiet_progress_bars(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")


def run(tmp_path, *argv) -> dict:
    assert bench_any_model.main([*argv, "--results", str(tmp_path), *FAST]) == 0
    [path] = tmp_path.glob("any_model_*.json")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # written atomically: no temporary file is left
    return json.loads(path.read_text())


@pytest.mark.slow
def test_minilm_accuracy_on_labelled_reviews(tmp_path):
    report = run(tmp_path, "--model", "minilm", "--labelled", "movie_reviews", "--calibration", "8", "--eval", "16",
                 "--max-length", "24")
    assert report["model_type"] == "bert" and report["task"] == "accuracy"
    assert report["model"].startswith("sentence-transformers/all-MiniLM-L6-v2")
    assert [r["sparsity"] for r in report["runs"]] == [0.25, 0.5]
    dense = report["dense"]
    for r in report["runs"]:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["agreement"] <= 1
        assert r["reload_max_abs_diff"] == 0 and r["reloaded_class"] == "BertForSequenceClassification"
        assert r["parameters"] < dense["parameters"] and r["layer_flops"] < dense["layer_flops"]
        assert sum(r["heads_kept"]) < sum(dense["heads"]) and sum(r["ffn_kept"]) < sum(dense["ffn"])


@pytest.mark.slow
def test_smollm2_perplexity_on_wikitext(tmp_path):
    report = run(tmp_path, "--model", "smollm2", "--text", "wikitext2", "--block-size", "32", "--calibration", "2",
                 "--eval", "2", "--sparsities", "0.5")
    assert report["model_type"] == "llama" and report["task"] == "perplexity"
    assert report["model"].startswith("HuggingFaceTB/SmolLM2-135M-Instruct") and report["gguf_file"]
    [r] = report["runs"]
    assert math.isfinite(report["dense"]["perplexity"]) and math.isfinite(r["perplexity"])
    assert r["reload_max_abs_diff"] == 0 and r["reloaded_class"] == "LlamaForCausalLM"
    assert r["parameters"] < report["dense"]["parameters"]


def test_an_unsupported_model_is_refused_before_loading(tmp_path, capsys):
    folder = tmp_path / "t5"
    tf.T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=50).save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text("some text " * 50)
    results = tmp_path / "results"
    assert bench_any_model.main(["--model", str(folder), "--text", str(text), "--results", str(results)]) == 2
    assert "'t5'" in capsys.readouterr().err
    assert not results.exists()
