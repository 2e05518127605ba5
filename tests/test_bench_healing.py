"""benchmarks/bench_healing.py: a run stopped after 2 of 4 steps and run again gives the uninterrupted run's
perplexity history (dense, one-shot pruned from its saved start, gradual pruning resized to its checkpoint); a
finished run is not recomputed; the results JSON and its RESULTS.md table. Tiny random llama, a few seconds."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers as tf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_healing  # noqa: E402
import make_tables  # noqa: E402

from hf_prune.cli.lm_data import as_batches  # noqa: E402

RUN_NAMES = ["dense", "oneshot-20", "gradual-20"]
RECIPE = bench_healing.Recipe(steps=4, eval_every=2, learning_rate=1e-3, warmup_steps=1)
SETTING = {"recipe": "tiny", "window": 16}


def make_bench(cache: Path, setting: dict = SETTING) -> bench_healing.Bench:
    """A fresh tiny llama and random windows, the same at every call (as a new process would rebuild them)."""
    torch.manual_seed(0)
    config = tf.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=128, vocab_size=61, max_position_embeddings=64, bos_token_id=0,
                            eos_token_id=0)
    dense = tf.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 61, (28, 16), generator=torch.Generator().manual_seed(0))
    return bench_healing.Bench(dense=dense, train_windows=ids[:24], eval_batches=as_batches(ids[24:], 2),
                               calibration=as_batches(ids[:2], 2), recipe=RECIPE, cache=cache, setting=setting,
                               progress_bars=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # module scope: set before the module's `uninterrupted` runs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cache = tmp_path_factory.mktemp("whole")
    bench = make_bench(cache)
    return cache, {name: bench_healing.train_run(name, bench) for name in RUN_NAMES}


@pytest.mark.parametrize("name", RUN_NAMES)
def test_a_stopped_run_resumes_to_the_uninterrupted_history(uninterrupted, tmp_path, name):
    whole = uninterrupted[1][name]
    assert [step for step, _ in whole["history"]] == [0, 2, 4]
    assert bench_healing.train_run(name, make_bench(tmp_path), stop_after=2) is None
    progress = json.loads((tmp_path / name / "progress.json").read_text())
    assert [step for step, _ in progress["history"]] == [0, 2] and progress["checkpoint"]["step"] == 2
    assert not (tmp_path / name / "result.json").exists()
    (tmp_path / name / "trainer" / "checkpoint-3").mkdir()  # a save cut short: no trainer_state.json
    resumed = bench_healing.train_run(name, make_bench(tmp_path))
    assert [step for step, _ in resumed["history"]] == [0, 2, 4]
    assert [p for _, p in resumed["history"]] == pytest.approx([p for _, p in whole["history"]], rel=1e-5)
    assert [loss for _, loss in resumed["train_loss"]] == pytest.approx([loss for _, loss in whole["train_loss"]],
                                                                       rel=1e-5)
    assert (resumed["heads"], resumed["ffn"]) == (whole["heads"], whole["ffn"])
    assert resumed["params_removed_actual"] == whole["params_removed_actual"]
    if name != "dense":
        assert resumed["params_removed_actual"] > 0.1
    assert not (tmp_path / name / "trainer").exists()  # checkpoints go once result.json holds the run


def test_a_finished_run_is_read_back_not_recomputed(uninterrupted):
    cache, results = uninterrupted
    path = cache / "oneshot-20" / "result.json"
    before = path.stat().st_mtime_ns
    assert bench_healing.train_run("oneshot-20", make_bench(cache)) == results["oneshot-20"]
    assert path.stat().st_mtime_ns == before


def test_a_run_cached_with_other_settings_is_refused(uninterrupted):
    cache, _ = uninterrupted
    with pytest.raises(SystemExit, match="other settings"):
        bench_healing.train_run("dense", make_bench(cache, {**SETTING, "window": 32}))


def test_a_recipe_variant_heals_the_same_pruned_start_without_pruning_again(uninterrupted, tmp_path, monkeypatch):
    cache, results = uninterrupted
    variant = make_bench(tmp_path / "variant", {**SETTING, "recipe": "tiny at another lr"})
    variant.starts = cache / "starts"  # the main run's starts
    assert variant.start_folder(0.2) == make_bench(cache).start_folder(0.2)  # the recipe is not part of the key
    other_window, _ = make_bench(cache, {**SETTING, "window": 32}).start_folder(0.2)
    assert other_window != variant.start_folder(0.2)[0]  # pruning settings are

    import hf_prune.cli.lm

    def refuse(*args, **kwargs):
        raise AssertionError("pruned again")

    monkeypatch.setattr(hf_prune.cli.lm, "retrain_free", refuse)
    healed = bench_healing.train_run("oneshot-20", variant)
    assert healed["perplexity_start"] == pytest.approx(results["oneshot-20"]["perplexity_start"], rel=1e-6)
    assert healed["pruning"]["heads"] == results["oneshot-20"]["pruning"]["heads"]
    assert healed["setting"]["recipe"] == "tiny at another lr"


def test_run_names():
    assert bench_healing.parse_run("dense") == ("dense", 0.0)
    assert bench_healing.parse_run("oneshot-30") == ("oneshot", 0.3)
    with pytest.raises(ValueError):
        bench_healing.parse_run("oneshot-0")


def test_results_json_and_table(uninterrupted, tmp_path, monkeypatch):
    cache, _ = uninterrupted
    args = SimpleNamespace(layers=2, window=16, eval_windows=4, train_windows=24, calib_windows=2)
    finished = bench_healing.finished_runs(cache, SETTING)
    assert list(finished) == RUN_NAMES
    bench_healing.write_results(finished, bench_healing.describe(args, RECIPE), tmp_path, "cmd", 1)
    payload = json.loads((tmp_path / "healing.json").read_text())
    assert (tmp_path / "healing.png").stat().st_size > 0
    [target] = payload["targets"]
    assert target["run"] == "oneshot-20" and target["target_ratio"] == 1.15
    assert target["pass"] == (target["ratio"] <= 1.15)
    [pair] = payload["gradual_vs_oneshot"]
    assert pair["gradual"] == "gradual-20" and pair["oneshot"] == "oneshot-20"
    monkeypatch.setattr(make_tables, "RESULTS", tmp_path)
    text = make_tables.healing()
    assert "| oneshot-20 |" in text and ("**PASS**" in text or "**MISS**" in text)
    assert f"{finished['dense']['final_perplexity']:.2f}" in text
    [[what, result, data]] = make_tables.healing_summary_rows()
    assert "20% of layer parameters removed" in what and f"x{target['ratio']:.2f}" in result
    assert ("missed" in result) != target["pass"] and "gradual-20" in result and data == "`healing.json`"


def test_table_without_results_says_how_to_record_them(tmp_path, monkeypatch):
    monkeypatch.setattr(make_tables, "RESULTS", tmp_path)
    text = make_tables.healing()
    assert "bench_healing.py" in text and "|" not in text
    assert make_tables.healing_summary_rows() == []


def test_a_fresh_cache_restores_the_finished_runs_from_the_results_json(uninterrupted, tmp_path):
    cache, results = uninterrupted
    finished = bench_healing.finished_runs(cache, SETTING)
    args = SimpleNamespace(layers=2, window=16, eval_windows=4, train_windows=24, calib_windows=2)
    bench_healing.write_results(finished, bench_healing.describe(args, RECIPE), tmp_path, "cmd", 1)
    fresh = tmp_path / "fresh-cache"
    other = {**SETTING, "window": 32}
    assert bench_healing.restore_finished(tmp_path / "healing.json", fresh, other) == []  # other settings: not taken
    assert bench_healing.restore_finished(tmp_path / "healing.json", fresh, SETTING) == RUN_NAMES
    assert bench_healing.finished_runs(fresh, SETTING) == finished
    bench = make_bench(fresh)
    assert bench_healing.train_run("oneshot-20", bench) == results["oneshot-20"]  # read back, not trained again
    assert not (fresh / "oneshot-20" / "trainer").exists()
    assert bench_healing.restore_finished(tmp_path / "healing.json", fresh, SETTING) == []  # nothing left to restore


def test_a_variant_recipe_is_tabled_against_its_own_dense_reference(uninterrupted, tmp_path, monkeypatch):
    cache, _ = uninterrupted
    args = SimpleNamespace(layers=2, window=16, eval_windows=4, train_windows=24, calib_windows=2)
    finished = bench_healing.finished_runs(cache, SETTING)
    monkeypatch.setattr(make_tables, "RESULTS", tmp_path)
    bench_healing.write_results(finished, bench_healing.describe(args, RECIPE), tmp_path, "main-cmd", 1)
    assert "No other recipe recorded" in make_tables.healing_variants()
    other = bench_healing.Recipe(steps=4, eval_every=2, learning_rate=2e-3, warmup_steps=1)
    variant = {name: {**run, "command": "variant-cmd"} for name, run in finished.items()}
    variant["oneshot-20"] = {**variant["oneshot-20"], "final_perplexity": 1.1 * finished["dense"]["final_perplexity"]}
    (tmp_path / "healing-lr").mkdir()
    bench_healing.write_results(variant, bench_healing.describe(args, other), tmp_path / "healing-lr", "cmd", 1)
    text = make_tables.healing_variants()
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| learning_rate")}
    assert set(rows) == set(RUN_NAMES)
    assert "| learning_rate 0.002 (main: 0.001) | oneshot-20 |" in rows["oneshot-20"]
    assert "| x1.100 |" in rows["oneshot-20"] and rows["oneshot-20"].endswith("| x1.15 | **PASS** |")
    main_ratio = finished["oneshot-20"]["final_perplexity"] / finished["dense"]["final_perplexity"]
    assert f"(x{main_ratio:.3f})" in rows["oneshot-20"]
    assert rows["dense"].endswith("| – | – |") and "`healing-lr/healing.json`: `variant-cmd`" in text
    [[_, result, data]] = make_tables.healing_summary_rows()
    assert "with learning_rate 0.002 (not 0.001): oneshot-20 x1.10 of its own dense reference" in result
    assert data == "`healing.json`, `healing-lr/healing.json`"
