"""The model card: base_model only as a Hub id, a title naming the model, the right folder or repo to load."""

import pytest
from huggingface_hub import ModelCard

import hf_prune_assets as assets
from hf_prune.cli.model_card import base_model_id, card_title, model_card_text, write_model_card


def fake_report(model: str, base_id: str | None, heads=(6, 6), ffn=(768, 768), unstructured=None) -> dict:
    def side(h, f, ms):
        return {"parameters": 1000, "flops": 2000, "latency_ms": ms, "metrics": {"accuracy": 0.8},
                "structure": {"heads_per_layer": list(h), "ffn_per_layer": list(f)}}

    after = side(heads, ffn, 5.0)
    if unstructured is not None:
        after["unstructured"] = {"sparsity": unstructured}
    return {"model": model, "base_model_id": base_id, "task": "files (binary)", "metric_names": ["accuracy"],
            "seq_len": 64, "latency": {"batch_size": 8},
            "pruning": {"importance": "fisher", "mode": "fine-tuned"},
            "before": side((12, 12), (1536, 1536), 10.0), "after": after}


def metadata(text: str):
    card = ModelCard(text)
    return card.data.to_dict(), card.text


def test_offline_asset_folder_is_named_by_its_original_hub_id(tmp_path):
    folder = str(assets.minilm_dir())
    assert assets.hub_id(folder) == "sentence-transformers/all-MiniLM-L6-v2" == base_model_id(folder)
    assert assets.hub_id(tmp_path) is None and base_model_id(str(tmp_path)) is None
    assert base_model_id(str(tmp_path), "me/original") == "me/original"  # --base_model_id wins
    assert base_model_id("google-bert/bert-base-uncased") == "google-bert/bert-base-uncased"  # not a folder: a Hub id


def test_demo_card_names_minilm_and_the_output_folder():
    report = fake_report(str(assets.minilm_dir()), "sentence-transformers/all-MiniLM-L6-v2")
    data, body = metadata(model_card_text(report, folder="outputs/demo"))
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "pruned" in data["tags"] and data["library_name"] == "transformers"
    assert "\n# all-MiniLM-L6-v2, pruned (50% heads, 50% FFN)\n" in body
    assert "load_pruned('outputs/demo')" in body
    assert str(assets.minilm_dir()) not in body  # no absolute local path anywhere
    assert "this model" not in body


def test_local_model_of_unknown_origin_leaves_base_model_out(tmp_path):
    report = fake_report(str(tmp_path / "my-bert"), None, heads=(12, 12), ffn=(1536, 1536), unstructured=0.3)
    data, body = metadata(model_card_text(report, folder=tmp_path / "out"))
    assert "base_model" not in data
    assert "\n# my-bert, pruned (30% weights zeroed)\n" in body
    assert f"load_pruned({str(tmp_path / 'out')!r})" in body


@pytest.mark.parametrize("repo_id", [None, "me/minilm-pruned"])
def test_pushed_card_is_titled_and_loaded_by_the_hub_id(repo_id, tmp_path):
    report = fake_report("bert-base-uncased", "bert-base-uncased", heads=(9, 6), ffn=(1000, 1536))
    write_model_card(tmp_path, report, repo_id, load_from="out/x")
    data, body = metadata((tmp_path / "README.md").read_text())
    assert data["base_model"] == "bert-base-uncased"
    if repo_id:
        assert f"\n# {repo_id}\n" in body and f"load_pruned('{repo_id}')" in body and "out/x" not in body
    else:
        assert "\n# bert-base-uncased, pruned (38% heads, 17% FFN)\n" in body and "load_pruned('out/x')" in body


def test_title_when_nothing_was_removed():
    assert card_title(fake_report("m", None, heads=(12, 12), ffn=(1536, 1536))) == "m, pruned (nothing removed)"


def test_card_names_the_removed_layers():
    report = fake_report("bert-base-uncased", "bert-base-uncased", heads=(12,), ffn=(1536,))
    report["after"]["structure"].update(num_layers=1, layers=[1], removed_layers=[0])
    assert card_title(report) == "bert-base-uncased, pruned (1 of 2 layers, 50% heads, 50% FFN)"
    data, body = metadata(model_card_text(report, folder="out"))
    assert "whole layers (1 of 2: original layer 0), attention heads\nand FFN neurons were removed" in body
    assert "layers removed:       1 of 2 (original index 0)" in body and "| layers | 2 | 1 | 0.500 |" in body
