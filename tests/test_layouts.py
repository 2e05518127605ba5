"""Every layout entry matches the installed transformers: paths resolve, attributes and config keys exist."""

import pytest
import torch.nn as nn
from tiny_models import TINY, make_model
from tiny_stacks import SINGLE_TOWERS
from transformers.pytorch_utils import Conv1D

from hf_prune import get_layout, supported_model_types
from hf_prune.architecture.layouts import LAYOUTS, get_layers, get_submodule


def test_every_layout_has_a_tiny_model():
    assert set(LAYOUTS) == set(TINY) | set(SINGLE_TOWERS)  # the towers are tested in test_stacks.py


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_layout_matches_installed_transformers(model_type):
    model = make_model(model_type)
    layout = get_layout(model)
    assert model.config.model_type == model_type
    layers = get_layers(model)
    assert isinstance(layers, nn.ModuleList) and len(layers) == model.config.num_hidden_layers
    projection = Conv1D if layout.conv1d else nn.Linear
    names = [layout.q, layout.k, layout.v, layout.qkv, layout.o, layout.up, layout.gate, layout.down]
    for layer in layers:
        for name in (*filter(None, names), *layout.head_rows_in(layer)):
            assert isinstance(get_submodule(layer, name), projection), name
        attention = get_submodule(layer, layout.attention)
        for attr in (layout.head_dim_attr, *layout.head_count_attrs, *layout.width_attrs, layout.kv_groups_attr):
            if attr:
                assert hasattr(attention, attr), f"{type(attention).__name__} has no attribute {attr}"
        if layout.ffn:
            assert isinstance(get_submodule(layer, layout.ffn), nn.Module)
    config = model.config
    # config_head_dim may be absent until written (qwen2): test_save_load checks plain loading of uniform results
    for key in (layout.config_heads, layout.config_kv_heads, layout.config_ffn):
        if key:
            assert hasattr(config, key), f"config of {model_type} has no key {key}"
    count = getattr(get_submodule(layers[0], layout.attention), layout.head_count_attrs[0]) \
        if layout.head_count_attrs else config.num_attention_heads
    assert count == getattr(config, layout.config_heads)


def test_unsupported_model_type_lists_the_supported_ones():
    class Config:
        model_type = "bloom"

    with pytest.raises(ValueError) as err:
        get_layout(Config())
    message = str(err.value)
    assert "'bloom'" in message and all(t in message for t in supported_model_types())
