"""Dynamic int8 quantization of pruned models: runs, agrees with the float model, leaves the input alone."""

import warnings

import pytest
import torch
from tiny_models import make_inputs, make_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_prune import prune_model
from hf_prune.deploy.quantize import quantize_dynamic_int8
from hf_prune.unstructured.magnitude import prune_unstructured


def argmax_agreement(float_logits, int8_logits) -> float:
    """Share of rows (sequences, or token positions for LMs) whose predicted class is the same."""
    return float((float_logits.argmax(-1) == int8_logits.argmax(-1)).float().mean())


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama"])
def test_quantized_pruned_model_runs_and_agrees(model_type):
    model = make_model(model_type)
    prune_model(model, heads={0: [0, 1]} if model_type != "llama" else {0: [0, 1, 2]}, neurons={1: [0, 3, 4]})
    prune_unstructured(model, 0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantized = quantize_dynamic_int8(model)
    assert not [w for w in caught if "torch.ao.quantization is deprecated" in str(w.message)]
    inputs = make_inputs(batch=32, seq=9)
    with torch.no_grad():
        float_logits, int8_logits = model(**inputs).logits, quantized(**inputs).logits
    assert torch.isfinite(int8_logits).all() and int8_logits.shape == float_logits.shape
    assert argmax_agreement(float_logits, int8_logits) >= 0.9  # tiny random models have near-flat logits
    scale = float_logits.abs().max()
    assert (int8_logits - float_logits).abs().max() < 0.05 * scale
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert any(isinstance(m, dynamic) for m in quantized.modules())
    assert not any(type(m) in (nn.Linear, Conv1D) for m in quantized.modules())  # every projection is int8


def test_the_float_model_is_left_untouched():
    model = make_model("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantize_dynamic_int8(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert not any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())
