"""Report, heatmap, summary table and model card of models with whole layers removed (real pruned tiny models)."""

from __future__ import annotations

import copy
import json

import pytest

from hf_prune import drop_layers, prune_model
from hf_prune.architecture.counting import count_flops, count_parameters
from hf_prune.cli.model_card import card_title, model_card_text
from hf_prune.cli.report import heatmap_png, structure, summary_table, write_heatmap, write_report
from tests.tiny_models import make_model


def side(model) -> dict:
    return {"parameters": count_parameters(model), "flops": count_flops(model, 16), "structure": structure(model),
            "latency_ms": 1.0, "metrics": {"accuracy": 0.5}}


def report_of(before, after) -> dict:
    return {"model": "tiny", "base_model_id": None, "task": "files (binary)", "metric_names": ["accuracy"],
            "seq_len": 16, "latency": {"batch_size": 1}, "pruning": {"importance": "fisher", "mode": "retrain-free"},
            "before": side(before), "after": side(after)}


def pruned(family: str, **request):
    dense = make_model(family)
    return dense, prune_model(copy.deepcopy(dense), **request)


def test_structure_records_the_remaining_and_removed_layers():
    dense, model = pruned("llama", heads={0: [0, 1, 2]}, neurons={2: [4]}, layers=[1])
    s = structure(dense)
    assert s["num_layers"] == 3 and s["layers"] == [0, 1, 2] and s["removed_layers"] == []
    s = json.loads(json.dumps(structure(model)))  # what pruning_report.json holds
    assert s["num_layers"] == 2 and s["layers"] == [0, 2] and s["removed_layers"] == [1]
    assert s["heads_per_layer"] == [3, 6] and s["ffn_per_layer"] == [37, 36] and s["base"]["num_layers"] == 3
    drop_layers(model, [0])  # again: indices are the current layers', the record stays in original indices
    s = structure(model)
    assert s["num_layers"] == 1 and s["layers"] == [2] and s["removed_layers"] == [0, 1]


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_report_files_of_a_depth_pruned_model(family, tmp_path):
    dense, model = pruned(family, heads={0: [0, 1]} if family == "bert" else {0: [0, 1, 2]}, layers=[1])
    report = report_of(dense, model)
    write_report(tmp_path / "pruning_report.json", report)
    after = json.loads((tmp_path / "pruning_report.json").read_text())["after"]["structure"]
    assert after["layers"] == [0, 2] and after["removed_layers"] == [1] and after["num_layers"] == 2
    write_heatmap(tmp_path / "heads_kept.png", report)  # before 3 layers, after 2
    png = (tmp_path / "heads_kept.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png.rstrip(b"\x00")[-8:-4] == b"IEND"


def test_heatmap_without_head_indices_and_twice_depth_pruned():
    dense, model = pruned("bert", layers=[0])
    model.config.hf_prune.pop("kept_heads")  # head counts only
    assert heatmap_png(report_of(dense, model))[:4] == b"\x89PNG"
    again = drop_layers(copy.deepcopy(model), [1])  # original layers [1] left; the before side already lacks 0
    report = report_of(model, again)
    assert report["after"]["structure"]["removed_layers"] == [0, 2]
    assert heatmap_png(report)[:4] == b"\x89PNG"
    table = summary_table(report)
    assert "| layers | 2 | 1 | 0.500 |" in table
    assert "layers removed:       2 of 3 (original index 0 2)" in table


def test_summary_table_and_card_name_the_removed_layers():
    dense, model = pruned("llama", heads={0: [0, 1, 2]}, layers=[1])
    report = report_of(dense, model)
    table = summary_table(report)
    assert "| layers | 3 | 2 | 0.667 |" in table
    assert "layers removed:       1 of 3 (original index 1)" in table
    assert "layers kept (orig.):  0 2" in table
    assert "heads kept per layer: 3 6" in table
    assert card_title(report).startswith("tiny, pruned (1 of 3 layers, ")
    card = model_card_text(report, folder="out")
    assert "whole layers (1 of 3: original layer 1)" in card and "layers removed:" in card


def test_no_depth_pruning_leaves_table_and_card_as_they_were():
    dense, model = pruned("llama", heads={0: [0, 1, 2]})
    report = report_of(dense, model)
    table = summary_table(report)
    assert "| layers |" not in table and "layers removed" not in table and "layers kept" not in table
    assert table.splitlines()[-2] == "heads kept per layer: 3 6 6"
    card = model_card_text(report, folder="out")
    assert "hf_prune: attention heads\nand FFN neurons were removed physically" in card
    assert "pruned (17% heads)" in card
