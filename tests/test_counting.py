"""The analytic FLOPs count agrees with torch's FlopCounterMode on a real forward pass."""

import pytest
import torch
from tiny_models import make_model
from torch.utils.flop_counter import FlopCounterMode

from hf_prune import prune_model
from hf_prune.architecture.counting import count_flops, count_parameters


def measured_layer_flops(model, seq_len):
    """FLOPs torch counts inside the transformer layers (eager attention so QK^T and AV are plain matmuls)."""
    model.config._attn_implementation = "eager"
    ids = torch.randint(2, 90, (1, seq_len))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=ids)
    per_module = counter.get_flop_counts()  # keys like "LlamaForCausalLM.model.layers.0"
    root = type(model).__name__
    path = {"bert": "bert.encoder.layer", "llama": "model.layers", "gpt2": "transformer.h"}[model.config.model_type]
    names = [f"{root}.{path}.{i}" for i in range(model.config.num_hidden_layers)]
    total = sum(sum(per_module[name].values()) for name in names if name in per_module)
    return total


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama"])
def test_flops_formula_matches_flop_counter(model_type):
    model = make_model(model_type)
    heads = {0: [0, 3], 2: [1, 4]} if model_type == "llama" else {0: [0], 2: [1, 2]}
    for request in ({}, {"heads": heads, "neurons": {1: list(range(20))}}):
        prune_model(model, **request)
        expected = measured_layer_flops(model, 16)
        assert expected > 0
        assert count_flops(model, seq_len=16) == pytest.approx(expected, rel=0.01)


def test_counts_shrink_after_pruning_and_bad_sizes_raise():
    model = make_model("bert")
    flops, params, layer_params = count_flops(model, 64), count_parameters(model), count_parameters(model, True)
    prune_model(model, heads={i: [0, 1] for i in range(3)}, neurons={i: list(range(18)) for i in range(3)})
    assert count_flops(model, 64) < flops and count_parameters(model) < params
    assert layer_params - count_parameters(model, True) == params - count_parameters(model)
    assert count_flops(model, 64, batch_size=4) == 4 * count_flops(model, 64)
    with pytest.raises(ValueError, match="positive"):
        count_flops(model, 0)
