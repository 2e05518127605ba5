"""benchmarks/bench_accuracy.py: a fresh run cache takes back the runs behind results/accuracy.json's own rows (the
cache is not in git), and the fine-tuned grid's budget per method. Pure functions, no model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_accuracy  # noqa: E402


def run(method, mode, reduction, rep, accuracy):
    return {"method": method, "mode": mode, "flops_reduction": reduction, "rep": rep, "accuracy": accuracy,
            "flops_reduction_actual": reduction}


def test_a_fresh_cache_restores_the_runs_behind_the_results_rows(tmp_path):
    runs = {"dense": {"accuracy": 0.86},
            **{bench_accuracy.run_key(*r[:4]): run(*r) for r in [("fisher", "fine-tuned", 0.7, 0, 0.84),
                                                                  ("fisher", "fine-tuned", 0.7, 2, 0.85),
                                                                  ("l2", "retrain-free", 0.5, 0, 0.70)]}}
    rows = bench_accuracy.aggregate({k: v for k, v in runs.items() if k != "dense"}, 0.86)
    peer = {**rows[0], "method": "textpruner", "source": "benchmarks/peers"}
    other_dense = {**rows[1], "method": "l1", "dense_metric": 0.85}  # measured against another dense model
    results = tmp_path / "accuracy.json"
    results.write_text(json.dumps({"rows": [*rows, peer, other_dense]}))

    fresh = {"dense": {"accuracy": 0.86}, "l2|retrain-free|0.50|0": run("l2", "retrain-free", 0.5, 0, 0.71)}
    added = bench_accuracy.restore_runs(fresh, results)
    assert added == ["fisher|fine-tuned|0.70|0", "fisher|fine-tuned|0.70|2"]  # the reps, not positions
    assert fresh["fisher|fine-tuned|0.70|2"]["accuracy"] == 0.85
    assert fresh["l2|retrain-free|0.50|0"]["accuracy"] == 0.71  # a cached group is never overwritten
    restored_rows = bench_accuracy.aggregate({k: v for k, v in fresh.items() if k != "dense"}, 0.86)
    assert [r["metric_runs"] for r in restored_rows if r["method"] == "fisher"] == [[0.84, 0.85]]
    assert bench_accuracy.restore_runs(fresh, results) == []
    assert bench_accuracy.restore_runs({"dense": {"accuracy": 0.86}}, tmp_path / "missing.json") == []


def test_fine_tuned_budget_per_method():
    assert bench_accuracy.fine_tuned_budget("fisher", 0.7) == {"flops_reduction": 0.7}
    for method in ("l2", "activation", "random"):
        assert bench_accuracy.fine_tuned_budget(method, 0.7) == {"head_sparsity": 0.7, "ffn_sparsity": 0.7,
                                                                 "pruning_scope": "layer"}
