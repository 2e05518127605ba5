"""prune_model: removing units that contribute nothing leaves outputs unchanged, and bad requests change nothing."""

import copy

import pytest
import torch
from tiny_models import GROUPED, TINY, make_inputs, make_inputs_for, make_model

from hf_prune import get_layout, layer_shapes, prune_model
from hf_prune.architecture.layouts import get_layers, get_submodule
from hf_prune.surgery.width import head_columns


def silence(model, heads: dict, neurons: dict) -> None:
    """Zero the output-projection input columns of `heads` and the down-projection input columns of `neurons`."""
    layout = get_layout(model)
    layers = get_layers(model)
    with torch.no_grad():
        for i, hs in heads.items():
            cols = head_columns(hs, layer_shapes(model)[i].head_dim)
            o = get_submodule(layers[i], layout.o).weight
            if layout.conv1d:  # Conv1D weight is (in, out)
                o[cols, :] = 0
            else:
                o[:, cols] = 0
        for i, ns in neurons.items():
            down = get_submodule(layers[i], layout.down).weight
            if layout.conv1d:
                down[ns, :] = 0
            else:
                down[:, ns] = 0


def request_for(model_type: str):
    """Layer 0 loses every head; layer 1 loses a whole GQA group (or two heads); layer 2 loses every neuron."""
    if model_type in GROUPED:  # 6 query heads over 2 groups of 3
        heads = {0: list(range(6)), 1: [0, 1, 2], 2: [1, 4]}
    else:
        heads = {0: [0, 1, 2, 3], 1: [1, 3], 2: [2]}
    neurons = {0: [0, 5, 36], 1: list(range(0, 37, 2)), 2: list(range(37))}
    return heads, neurons


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_removing_silent_units_keeps_logits(model_type):
    model = make_model(model_type)
    inputs = make_inputs_for(model_type)
    heads, neurons = request_for(model_type)
    silence(model, heads, neurons)
    before = logits(model, inputs)
    params_before = sum(p.numel() for p in model.parameters())

    assert prune_model(model, heads=heads, neurons=neurons) is model

    after = logits(model, inputs)
    assert after.shape == before.shape
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)
    shapes = layer_shapes(model)
    assert [s.heads for s in shapes] == ([0, 3, 4] if model_type in GROUPED else [0, 2, 3])
    assert [s.ffn for s in shapes] == [34, 18, 0]
    if model_type in GROUPED:
        assert [s.kv_heads for s in shapes] == [0, 1, 2]
    assert sum(p.numel() for p in model.parameters()) < params_before
    entry = model.config.hf_prune
    assert entry["heads"] == [s.heads for s in shapes] and entry["ffn"] == [34, 18, 0]


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama"])
def test_same_modules_dtype_device_and_requires_grad_are_kept(model_type):
    model = make_model(model_type, dtype=torch.bfloat16)
    layout = get_layout(model)
    layer = get_layers(model)[1]
    o = get_submodule(layer, layout.o)
    weight = o.weight
    weight.requires_grad_(False)
    heads = {1: [0, 3]} if model_type in GROUPED else {1: [0]}
    prune_model(model, heads=heads, neurons={1: [2]})
    assert get_submodule(get_layers(model)[1], layout.o) is o and o.weight is weight
    assert weight.dtype == torch.bfloat16 and not weight.requires_grad
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "opt", "llama"])
def test_pruning_twice_composes(model_type):
    once, twice = make_model(model_type), make_model(model_type)
    if model_type in GROUPED:  # remove heads 0 and 3 (one per group), then the new head 0 and 2 (old 1 and 4)
        prune_model(once, heads={0: [0, 1, 3, 4]}, neurons={0: [0, 1, 2]})
        prune_model(twice, heads={0: [0, 3]}, neurons={0: [0]})
        prune_model(twice, heads={0: [0, 2]}, neurons={0: [0, 1]})
    else:
        prune_model(once, heads={0: [0, 1]}, neurons={0: [0, 1, 2]})
        prune_model(twice, heads={0: [0]}, neurons={0: [0]})
        prune_model(twice, heads={0: [0]}, neurons={0: [0, 1]})
    a, b = once.state_dict(), twice.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    inputs = make_inputs()
    torch.testing.assert_close(logits(once, inputs), logits(twice, inputs), atol=0, rtol=0)


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "gpt2", "opt", "llama"])
def test_no_hooks_left_and_empty_layers_still_train(model_type):
    model = make_model(model_type).train()
    heads = {0: list(range(6 if model_type in GROUPED else 4))}
    prune_model(model, heads=heads, neurons={0: list(range(37)), 1: [3]})
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
    inputs = make_inputs()
    labels = inputs["input_ids"] if model_type in {"gpt2", "opt", "llama"} else torch.tensor([0, 2])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert any(".1." in n or "layer.1" in n or "h.1" in n for n in changed)


BAD_REQUESTS = [
    ({5: [0]}, None, "out of range"),
    ({-1: [0]}, None, "out of range"),
    ({0: [4]}, None, "out of range"),
    ({0: [-1]}, None, "out of range"),
    ({0: [1.5]}, None, "integer"),
    ({0: "1"}, None, "list"),
    ([0, 1], None, "dict"),
    ({"x": [0]}, None, "integer"),
    (None, {0: [37]}, "out of range"),
    (None, {3: [0]}, "out of range"),
    ({1: [0]}, {0: [-2]}, "out of range"),  # a valid part must not be applied either
]


@pytest.mark.parametrize("heads,neurons,message", BAD_REQUESTS)
def test_bad_requests_raise_and_leave_model_unchanged(heads, neurons, message):
    model = make_model("bert")
    state = copy.deepcopy(model.state_dict())
    config = model.config.to_dict()
    with pytest.raises(ValueError, match=message):
        prune_model(model, heads=heads, neurons=neurons)
    assert model.config.to_dict() == config and not hasattr(model.config, "hf_prune")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("heads", [{0: [0]}, {0: [0, 1, 3]}, {0: [0, 3, 4]}])
def test_gqa_requests_must_keep_groups_even(heads):
    model = make_model("llama")  # 2 groups of 3 query heads
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="grouped-query attention"):
        prune_model(model, heads=heads)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_unsupported_model_raises_naming_model_type():
    from transformers import BloomConfig, BloomModel

    model = BloomModel(BloomConfig(hidden_size=16, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match=r"'bloom'.*bert.*llama"):
        prune_model(model, heads={0: [0]})


def test_json_style_string_keys_and_tensor_indices_are_accepted():
    model = make_model("bert")
    prune_model(model, heads={"1": torch.tensor([0, 2])}, neurons={"0": [1, 1, 2]})  # duplicates count once
    shapes = layer_shapes(model)
    assert shapes[1].heads == 2 and shapes[0].ffn == 35


def test_uniform_result_writes_plain_config_keys():
    llama = make_model("llama")
    prune_model(llama, heads={i: [2, 5] for i in range(3)}, neurons={i: [0, 1] for i in range(3)})
    assert llama.config.num_attention_heads == 4 and llama.config.num_key_value_heads == 2
    assert llama.config.head_dim == 8 and llama.config.intermediate_size == 35
    bert = make_model("bert")
    prune_model(bert, heads={0: [1]}, neurons={i: [0] for i in range(3)})
    assert bert.config.intermediate_size == 36  # FFN width is uniform
    assert bert.config.num_attention_heads == 4  # head size = hidden / heads: heads stay in the hf_prune entry
    assert bert.config.hf_prune["heads"] == [3, 4, 4] and bert.config.hf_prune["base"]["heads"] == 4


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama"])
def test_optimizer_state_is_sliced_with_the_weights(model_type):
    model = make_model(model_type).train()
    inputs = make_inputs()
    labels = inputs["input_ids"] if model_type in {"gpt2", "llama"} else torch.tensor([0, 2])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    layout = get_layout(model)
    down = get_submodule(get_layers(model)[1], layout.down).weight
    moment = optimizer.state[down]["exp_avg"].clone()
    prune_model(model, heads={1: [0, 3]} if model_type in GROUPED else {1: [0]}, neurons={1: [0, 1]}, optimizer=optimizer)
    kept = moment[2:, :] if layout.conv1d else moment[:, 2:]  # Conv1D weight is (in, out)
    assert torch.equal(optimizer.state[down]["exp_avg"], kept)
    for p in model.parameters():
        for value in optimizer.state[p].values():
            assert value.dim() == 0 or value.shape == p.shape
    before = down.detach().clone()
    model(**inputs, labels=labels).loss.backward()
    optimizer.step()  # Adam runs on the smaller tensors, and the kept weights keep training
    assert not torch.equal(before, down)


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_base_models_prune_too(model_type):
    task = make_model(model_type)
    base = task.base_model
    heads, neurons = request_for(model_type)
    silence(base, heads, neurons)
    inputs = make_inputs()
    with torch.no_grad():
        before = base(**inputs).last_hidden_state
        prune_model(base, heads=heads, neurons=neurons)
        torch.testing.assert_close(base(**inputs).last_hidden_state, before, atol=1e-4, rtol=0)
    assert base.config.hf_prune["ffn"] == [34, 18, 0]
