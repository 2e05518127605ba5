"""PruningConfig: one validation, JSON round-trip, help text everywhere, the callback's historical names."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hf_prune import PruningConfig
from hf_prune.training.config import CALLBACK_ALIASES, config_from_keywords


def test_json_round_trip(tmp_path):
    config = PruningConfig(flops_reduction=0.4, importance="taylor", pruning_start_step=5, pruning_end_step=50,
                           pruning_events=3, head_multiple=2, gqa="groups", reselect=False)
    assert PruningConfig.from_json(config.to_json()) == config
    config.save(tmp_path / "pruning.json")
    assert PruningConfig.load(tmp_path / "pruning.json") == config
    assert json.loads((tmp_path / "pruning.json").read_text())["flops_reduction"] == 0.4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


@pytest.mark.parametrize("field", ["head_sparsity", "ffn_sparsity", "unstructured_sparsity", "flops_reduction"])
@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, "0.5", True])
def test_fractions_are_in_zero_one_everywhere(field, value):
    with pytest.raises(ValueError, match=rf"{field} must be a number in \[0, 1\)"):
        PruningConfig(**{field: value})


@pytest.mark.parametrize("changes, message", [
    ({"flops_reduction": 0.5, "head_sparsity": 0.2}, "not both"),
    ({"importance": "magic"}, "importance must be one of"),
    ({"pruning_schedule": "exp"}, "pruning_schedule must be one of"),
    ({"gqa": "some"}, "gqa must be one of"),
    ({"head_multiple": 0}, "head_multiple must be an integer >= 1"),
    ({"min_heads_per_layer": -1}, "min_heads_per_layer must be an integer >= 0"),
    ({"pruning_events": 0}, "pruning_events must be an integer >= 1"),
    ({"pruning_start_step": 10, "pruning_end_step": 5}, "pruning_end_step"),
])
def test_bad_values_name_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        PruningConfig(**changes)


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"unknown pruning config keys \['head_sparsty'\]"):
        PruningConfig.from_dict({"head_sparsty": 0.5})


def test_every_field_has_help_text():
    for f in dataclasses.fields(PruningConfig):
        assert len(f.metadata.get("help", "")) > 15, f.name


def test_callback_names_map_onto_fields():
    names = {f.name for f in dataclasses.fields(PruningConfig)}
    assert set(CALLBACK_ALIASES.values()) <= names
    old = config_from_keywords(start_step=3, end_step=9, num_events=2, schedule="linear", scope="layer", min_heads=1,
                               seq_len=64, compact=False, head_sparsity=0.25)
    assert old == PruningConfig(pruning_start_step=3, pruning_end_step=9, pruning_events=2, pruning_schedule="linear",
                                pruning_scope="layer", min_heads_per_layer=1, flops_seq_len=64, compact="never",
                                head_sparsity=0.25)
    with pytest.raises(ValueError, match="set the same option"):
        config_from_keywords(start_step=1, pruning_start_step=2)
    with pytest.raises(TypeError, match="unknown pruning option"):
        config_from_keywords(sparsity=0.5)


def test_replace_validates():
    with pytest.raises(ValueError, match="head_sparsity"):
        PruningConfig().replace(head_sparsity=2.0)
