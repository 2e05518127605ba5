"""drop_layers / prune_model(layers=...): removing whole layers, the config, the KV cache, save and load."""

import copy
import json

import pytest
import torch
from tiny_models import DECODERS, GROUPED, TINY, make_inputs, make_inputs_for, make_model

from hf_prune import PruningPlan, drop_layers, get_layout, layer_shapes, load_pruned, prune_model
from hf_prune.architecture.config_entry import read_config_entry
from hf_prune.architecture.layouts import get_layers, get_submodule

ENCODERS = sorted(set(TINY) - DECODERS)  # post-norm: bert-style and distilbert
PRE_NORM = sorted(DECODERS)  # llama-style, gpt2, opt (do_layer_norm_before=True)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def greedy(model, inputs, tokens=6):
    prompt = {"input_ids": inputs["input_ids"][1:], "attention_mask": inputs["attention_mask"][1:]}
    return model.generate(**prompt, max_new_tokens=tokens, do_sample=False, pad_token_id=0)


def make_inert(model, index: int) -> None:
    """Zero layer `index`'s output and down projections (weights and biases): in a pre-norm block it adds nothing."""
    layout = get_layout(model)
    layer = get_layers(model)[index]
    with torch.no_grad():
        for path in (layout.o, layout.down):
            proj = get_submodule(layer, path)
            proj.weight.zero_()
            if getattr(proj, "bias", None) is not None:
                proj.bias.zero_()


def build(model_type: str, seed: int = 0, **config_changes):
    """A tiny model of the given family with config changes (e.g. more layers), random biases like make_model."""
    factory, cls = TINY[model_type]
    config = factory()
    for key, value in config_changes.items():
        setattr(config, key, value)
    for key in ("layer_types", "no_rope_layers"):  # per-layer lists, set at init for the old layer count
        if isinstance(getattr(config, key, None), list):
            setattr(config, key, [getattr(config, key)[0]] * config.num_hidden_layers)
    if model_type not in DECODERS:
        config.num_labels = 3
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    return model


def layer_indices(model) -> list[list[int]]:
    """Every `layer_idx` found inside each layer."""
    return [[m.layer_idx for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int)]
            for layer in get_layers(model)]


# ----------------------------------------------------------------------------- pre-norm: inert layers


@pytest.mark.parametrize("model_type", PRE_NORM)
def test_dropping_an_inert_layer_keeps_logits_and_cached_generation(model_type):
    model = build(model_type, num_hidden_layers=4)
    make_inert(model, 1)
    inputs = make_inputs()
    before, generated = logits(model, inputs), greedy(model, inputs)
    kept = [get_layers(model)[i] for i in (0, 2, 3)]

    assert drop_layers(model, [1]) is model
    assert list(get_layers(model)) == kept  # the same modules, in order
    assert model.config.num_hidden_layers == 3 and len(get_layers(model)) == 3
    assert all(set(ids) == {i} for i, ids in enumerate(layer_indices(model)))
    assert model.config.hf_prune["layers"] == [0, 2, 3] and model.config.hf_prune["base"]["num_layers"] == 4
    torch.testing.assert_close(logits(model, inputs), before, atol=1e-5, rtol=1e-5)
    assert torch.equal(greedy(model, inputs), generated)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    assert len(out.past_key_values.layers) == 3


def test_gpt2_inverse_layer_idx_scaling_keeps_the_original_index(tmp_path):
    model = build("gpt2", num_hidden_layers=4, scale_attn_by_inverse_layer_idx=True)
    make_inert(model, 0)
    make_inert(model, 2)
    inputs = make_inputs()
    before, generated = logits(model, inputs), greedy(model, inputs)
    scalings = [layer.attn.scaling for layer in get_layers(model)]

    drop_layers(model, [0, 2])
    assert [layer.attn.scaling for layer in get_layers(model)] == [scalings[1], scalings[3]]
    assert [layer.attn.layer_idx for layer in get_layers(model)] == [0, 1]
    torch.testing.assert_close(logits(model, inputs), before, atol=1e-5, rtol=1e-5)
    assert torch.equal(greedy(model, inputs), generated)

    model.save_pretrained(tmp_path)
    loaded = load_pruned(tmp_path)  # rebuilt with indices 0, 1: load_pruned restores the original scaling
    assert [layer.attn.scaling for layer in get_layers(loaded)] == [scalings[1], scalings[3]]
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), atol=0, rtol=0)
    again = load_pruned(tmp_path)
    drop_layers(again, [0])  # a loaded model keeps composing: original layer 3 alone remains
    assert again.config.hf_prune["layers"] == [3] and get_layers(again)[0].attn.scaling == scalings[3]


# ----------------------------------------------------------------------------- post-norm encoders


@pytest.mark.parametrize("model_type", ENCODERS)
def test_encoder_drop_reloads_identically_and_trains(model_type, tmp_path):
    model = make_model(model_type)
    inputs = make_inputs_for(model_type)
    drop_layers(model, [1])
    assert len(get_layers(model)) == 2 and model.config.num_hidden_layers == 2
    assert model.config.hf_prune["layers"] == [0, 2]
    expected = logits(model, inputs)

    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved[get_layout(model).config_layers] == 2
    plain = type(model).from_pretrained(tmp_path).eval()  # all widths dense: vanilla loading works
    torch.testing.assert_close(logits(plain, inputs), expected, atol=0, rtol=0)
    loaded = load_pruned(tmp_path)
    torch.testing.assert_close(logits(loaded, inputs), expected, atol=0, rtol=0)

    loaded.train()
    optimizer = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    out = loaded(**inputs, labels=torch.tensor([0, 2]))
    out.loss.backward()
    optimizer.step()
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_depth_only_model_loads_with_plain_from_pretrained(model_type, tmp_path):
    model = make_model(model_type)
    inputs = make_inputs_for(model_type)
    drop_layers(model, [1] if get_layout(model).first_layer_differs else [0])  # ModernBERT's layer 0 stays
    model.save_pretrained(tmp_path)
    plain = type(model).from_pretrained(tmp_path).eval()
    assert len(get_layers(plain)) == 2
    torch.testing.assert_close(logits(plain, inputs), logits(model, inputs), atol=0, rtol=0)
    if model_type in DECODERS:
        assert torch.equal(greedy(plain, inputs), greedy(model, inputs))


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "gpt2", "opt", "llama", "qwen3"])
def test_depth_and_non_uniform_width_load_with_load_pruned(model_type, tmp_path):
    model = build(model_type, num_hidden_layers=5)
    heads = {1: [0, 1, 2]} if model_type in GROUPED else {1: [0, 2], 3: [3]}  # GQA: a whole group
    prune_model(model, heads=heads, neurons={3: [0, 4, 9], 4: list(range(10))}, layers=[0, 2])
    entry = model.config.hf_prune
    assert entry["layers"] == [1, 3, 4] and entry["num_layers"] == 3 and entry["base"]["num_layers"] == 5
    assert entry["heads"] == [s.heads for s in layer_shapes(model)] and len(entry["kept_heads"]) == 3
    inputs = make_inputs()
    model.save_pretrained(tmp_path)
    loaded = load_pruned(tmp_path)
    assert layer_shapes(loaded) == layer_shapes(model)
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), atol=0, rtol=0)
    if model_type in DECODERS:
        assert torch.equal(greedy(loaded, inputs), greedy(model, inputs))


# ----------------------------------------------------------------------------- sliding-window layer types


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_sliding_window_layer_types_stay_with_their_layers(model_type, tmp_path):
    config = TINY[model_type][0]()
    config = type(config)(**{**config.to_dict(), "num_hidden_layers": 5, "use_sliding_window": True,
                             "sliding_window": 3, "max_window_layers": 2, "layer_types": None})
    model = TINY[model_type][1](config).eval()
    assert config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 3
    make_inert(model, 1)
    make_inert(model, 3)
    inputs = make_inputs()  # 9 tokens, longer than the window
    before, generated = logits(model, inputs), greedy(model, inputs)

    drop_layers(model, [1, 3])
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert model.config.max_window_layers == 1
    windows = [layer.self_attn.sliding_window for layer in get_layers(model)]
    assert windows == [None, 3, 3]
    torch.testing.assert_close(logits(model, inputs), before, atol=1e-5, rtol=1e-5)
    assert torch.equal(greedy(model, inputs), generated)

    model.save_pretrained(tmp_path)
    plain = type(model).from_pretrained(tmp_path).eval()
    assert plain.config.layer_types == model.config.layer_types
    drop_layers(plain, [0])  # again: max_window_layers counts the current layers
    assert plain.config.max_window_layers == 0 and plain.config.layer_types == ["sliding_attention"] * 2
    plain = type(model).from_pretrained(tmp_path).eval()
    assert [layer.self_attn.sliding_window for layer in get_layers(plain)] == windows
    torch.testing.assert_close(logits(plain, inputs), logits(model, inputs), atol=0, rtol=0)


def test_only_per_layer_config_lists_are_sliced():
    model = make_model("llama")
    model.config.some_list = [1, 2, 3]  # as long as the layer count, but not a per-layer key
    drop_layers(model, [2])
    assert model.config.some_list == [1, 2, 3] and model.config.num_hidden_layers == 2


# ----------------------------------------------------------------------------- bad requests


BAD = [
    ([1, 1], "more than once"),
    ([-1], "out of range"),
    ([3], "out of range"),
    ([0, 1, 2], "at least one layer"),
    ([1.0], "integer"),
    ([True], "integer"),
    (["1"], "integer"),
    (1, "list of layer indices"),
    ("1", "list of layer indices"),
    ({1: []}, "list of layer indices"),
]


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("layers,message", BAD)
def test_bad_requests_change_nothing(model_type, layers, message):
    model = make_model(model_type)
    prune_model(model, heads={0: [0, 1, 2]} if model_type in GROUPED else {0: [1]})
    state = copy.deepcopy(model.state_dict())
    config = copy.deepcopy(model.config.to_dict())
    for call in (lambda: drop_layers(model, layers), lambda: prune_model(model, neurons={2: [0]}, layers=layers)):
        with pytest.raises(ValueError, match=message):
            call()
        assert model.config.to_dict() == config
        assert state.keys() == model.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("request_", [dict(heads={1: [0]}), dict(neurons={1: [3]})])
def test_removing_a_layer_and_cutting_it_is_refused(request_):
    model = make_model("bert")
    state = copy.deepcopy(model.state_dict())
    config = copy.deepcopy(model.config.to_dict())
    with pytest.raises(ValueError, match="also listed"):
        prune_model(model, layers=[1], **request_)
    assert model.config.to_dict() == config
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- one call = step by step


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama"])
def test_one_call_equals_step_by_step(model_type):
    heads = {0: [0, 1, 2], 3: [3, 4, 5]} if model_type in GROUPED else {0: [1], 3: [0, 2]}
    neurons = {3: [1, 2, 30], 4: [0]}
    one, steps = build(model_type, num_hidden_layers=5), build(model_type, num_hidden_layers=5)
    prune_model(one, heads=heads, neurons=neurons, layers=[1, 2])

    drop_layers(steps, [1, 2])  # layers 0, 3, 4 are now 0, 1, 2
    translate = {0: 0, 3: 1, 4: 2}
    prune_model(steps, heads={translate[k]: v for k, v in heads.items()},
                neurons={translate[k]: v for k, v in neurons.items()})

    assert one.config.to_dict() == steps.config.to_dict()
    assert one.config.hf_prune["layers"] == [0, 3, 4]
    assert one.state_dict().keys() == steps.state_dict().keys()
    assert all(torch.equal(v, steps.state_dict()[k]) for k, v in one.state_dict().items())
    inputs = make_inputs()
    torch.testing.assert_close(logits(one, inputs), logits(steps, inputs), atol=0, rtol=0)


def test_repeated_drops_compose_original_indices_and_per_layer_lists():
    model = build("bert", num_hidden_layers=6)
    prune_model(model, heads={3: [0], 5: [1, 2]}, neurons={4: [0, 1]})
    drop_layers(model, [1])  # -> original 0, 2, 3, 4, 5
    drop_layers(model, [0, 2])  # -> original 2, 4, 5
    entry = model.config.hf_prune
    assert entry["layers"] == [2, 4, 5] and entry["base"] == {"heads": 4, "kv_heads": 4, "ffn": 37, "num_layers": 6}
    assert entry["heads"] == [4, 4, 2] and entry["ffn"] == [37, 35, 37] and entry["num_layers"] == 3
    assert entry["kept_heads"] == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 3]]
    assert model.config.num_hidden_layers == 3 and entry["format_version"] == 2
    assert read_config_entry(model.config)["layers"] == [2, 4, 5]


def test_optimizer_forgets_the_removed_layers():
    model = make_model("llama")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(**make_inputs(), labels=make_inputs()["input_ids"]).loss.backward()
    optimizer.step()
    gone = {id(p) for p in get_layers(model)[1].parameters()}
    drop_layers(model, [1], optimizer=optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert not gone & {id(p) for p in params} and not gone & {id(p) for p in optimizer.state}
    assert len(params) == len(list(model.parameters()))
    model(**make_inputs(), labels=make_inputs()["input_ids"]).loss.backward()
    optimizer.step()


# ----------------------------------------------------------------------------- the config entry, old and new


def test_format_1_entries_still_load(tmp_path):
    model = make_model("llama")
    prune_model(model, heads={0: [0, 1, 2]}, neurons={2: [0, 1]})
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    entry = config["hf_prune"]
    entry["format_version"] = 1
    del entry["layers"], entry["base"]["num_layers"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_pruned(tmp_path)
    inputs = make_inputs()
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), atol=0, rtol=0)
    assert read_config_entry(loaded.config)["layers"] == [0, 1, 2]
    drop_layers(loaded, [1])  # a format 1 model can be depth-pruned: its entry becomes format 2
    assert loaded.config.hf_prune["format_version"] == 2 and loaded.config.hf_prune["layers"] == [0, 2]
    assert loaded.config.hf_prune["base"]["num_layers"] == 3


@pytest.mark.parametrize("edit,message", [
    (lambda e: e.update(layers=[2, 0, 1]), "increasing"),
    (lambda e: e.update(layers=[0, 2]), "layers` has 2 entries"),
    (lambda e: e.update(layers=[0, 2, 5]), r"layers\[2\]"),
    (lambda e: e["base"].pop("num_layers"), "num_layers"),
    (lambda e: e["base"].update(num_layers=2), "num_layers"),
    (lambda e: e.pop("layers"), "layers` is missing"),
])
def test_damaged_layer_record_gives_a_clear_error(edit, message, tmp_path):
    model = make_model("bert")
    prune_model(model, heads={0: [1]})
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    edit(config["hf_prune"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_pruned(tmp_path)


# ----------------------------------------------------------------------------- plans


def test_plan_layers_round_trip_and_apply(tmp_path):
    plan = PruningPlan(heads={0: [1]}, neurons={2: [3]}, layers=[1])
    assert PruningPlan.from_json(plan.to_json()) == plan
    plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(tmp_path / "plan.json").layers == [1]
    old = {"heads": {"0": [1]}, "neurons": {}, "metadata": {}}  # written before `layers` existed
    assert PruningPlan.from_dict(old).layers == []

    model, reference = make_model("bert"), make_model("bert")
    plan.apply(model)
    prune_model(reference, heads={0: [1]}, neurons={2: [3]}, layers=[1])
    assert model.config.to_dict() == reference.config.to_dict()
    assert len(get_layers(model)) == 2
    with pytest.raises(ValueError, match="integer"):
        PruningPlan(layers=[True])

