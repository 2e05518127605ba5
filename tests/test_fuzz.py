"""Property-based tests (hypothesis): random prune requests on every family, damaged and hostile checkpoints.

- every valid request keeps the model runnable, and save -> load_pruned gives identical logits;
- every invalid request raises ValueError and changes nothing (weights, config, forwards);
- every damaged config.json makes load_pruned raise ValueError or OSError, never another exception type;
- a pickle that would run code is refused and never runs.
"""

import copy
import functools
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_surgery import request_for
from tiny_models import TINY, make_inputs, make_inputs_for, make_model

from hf_prune import get_layout, layer_shapes, load_pruned, prune_model

FAMILIES = sorted(TINY)
EXAMPLES = int(os.environ.get("HF_PRUNE_FUZZ_EXAMPLES", "25"))  # e.g. 2000 for a long fuzzing session
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one thread is many times faster than two on a busy machine (no thread handoffs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def _built(model_type):
    return make_model(model_type)


def fresh(model_type):
    """A private copy of the family's tiny model (built once per family)."""
    return copy.deepcopy(_built(model_type))


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


# ----------------------------------------------------------------------------- prune requests


def draw_layer_heads(data, shape, grouped):
    """(head indices whose removal is valid for one layer, key/value heads left): any subset, or for GQA whole
    groups plus the same number of heads from every other group."""
    if shape.heads == 0:
        return [], 0
    if data.draw(st.booleans()):
        return (list(range(shape.heads)), 0) if data.draw(st.booleans()) else ([], shape.kv_heads)
    if not grouped:
        heads = sorted(data.draw(st.sets(st.integers(0, shape.heads - 1))))
        return heads, shape.heads - len(heads)
    per_group = shape.heads // shape.kv_heads
    dropped = data.draw(st.sets(st.integers(0, shape.kv_heads - 1)))
    cut = data.draw(st.integers(0, per_group - 1))
    heads = []
    for g in range(shape.kv_heads):
        within = range(per_group) if g in dropped else data.draw(
            st.sets(st.integers(0, per_group - 1), min_size=cut, max_size=cut))
        heads += [g * per_group + j for j in within]
    kv_left = shape.kv_heads - len(dropped)
    return sorted(heads), kv_left


def draw_valid_request(data, model):
    """(heads, neurons, expected shapes as [(heads, kv_heads, ffn)]) for a random valid request."""
    grouped = get_layout(model).grouped
    heads, neurons, expected = {}, {}, []
    for i, s in enumerate(layer_shapes(model)):
        key = data.draw(st.sampled_from([i, str(i)]))  # JSON-style string keys are allowed
        h, kv = draw_layer_heads(data, s, grouped) if data.draw(st.booleans()) else ([], s.kv_heads)
        if s.ffn and data.draw(st.booleans()):
            n = list(range(s.ffn)) if data.draw(st.booleans()) else sorted(data.draw(st.sets(st.integers(0, s.ffn - 1))))
        else:
            n = []
        if h:
            heads[key] = h
        if n:
            neurons[key] = n
        expected.append((s.heads - len(h), kv, s.ffn - len(n)))
    return heads, neurons, expected


@FUZZ
@given(model_type=st.sampled_from(FAMILIES), data=st.data())
def test_valid_requests_keep_the_model_runnable_and_reloadable(model_type, data):
    model = fresh(model_type)
    inputs = make_inputs_for(model_type)
    for _ in range(data.draw(st.integers(1, 2), label="rounds")):  # a second round composes on current indices
        heads, neurons, expected = draw_valid_request(data, model)
        prune_model(model, heads=heads, neurons=neurons)
        assert [(s.heads, s.kv_heads, s.ffn) for s in layer_shapes(model)] == expected
    out = logits(model, inputs)
    assert torch.isfinite(out).all()
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = load_pruned(folder)
    assert layer_shapes(loaded) == layer_shapes(model)
    torch.testing.assert_close(logits(loaded, inputs), out, atol=0, rtol=0)


def snapshot(model):
    """Everything a request may change: weights, config and per-module forward overrides."""
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        model.config.to_dict(),
        {name for name, m in model.named_modules() if "forward" in vars(m)},
    )


def assert_same(model, before):
    weights, config, forwards = before
    now = model.state_dict()
    assert now.keys() == weights.keys()
    assert all(now[k].shape == v.shape and torch.equal(now[k], v) for k, v in weights.items())
    assert model.config.to_dict() == config
    assert {name for name, m in model.named_modules() if "forward" in vars(m)} == forwards


BAD_INDICES = st.one_of(
    st.sampled_from([True, False, 1.5, float("nan"), "x", "", "1.0", None, [0], (0,), {}, b"1"]),
    st.integers(max_value=-1),
)


def _is_valid_layer_key(key, n_layers):
    try:
        value = int(key)
    except (TypeError, ValueError, OverflowError):
        return False
    return isinstance(key, str) and key.strip().lstrip("-").isdigit() and 0 <= value < n_layers


def draw_invalid_request(data, model):
    """A valid request with exactly one kind of damage injected; returns (heads, neurons, kind)."""
    heads, neurons, _ = draw_valid_request(data, model)
    shapes = layer_shapes(model)
    n_layers = len(shapes)
    layer = data.draw(st.integers(0, n_layers - 1))
    s = shapes[layer]
    grouped = get_layout(model).grouped
    kinds = ["layer out of range", "bad layer key", "head out of range", "neuron out of range", "bad index",
             "not a list", "not a dict"]
    if grouped and s.kv_heads >= 2 and s.heads // s.kv_heads >= 2:
        kinds.append("uneven groups")
    kind = data.draw(st.sampled_from(kinds))
    for request in (heads, neurons):  # the damage replaces the layer's valid part (keys 1 and "1" merge)
        request.pop(layer, None)
        request.pop(str(layer), None)
    target = neurons if data.draw(st.booleans()) else heads
    if kind == "layer out of range":
        key = data.draw(st.one_of(st.integers(min_value=n_layers), st.integers(max_value=-1),
                                  st.integers(min_value=n_layers).map(str)))
        target[key] = [0]
    elif kind == "bad layer key":
        key = data.draw(st.one_of(st.sampled_from([None, 1.5, (0,), "", "1.5", "0x1", "one", b"0"]),
                                  st.text(max_size=4).filter(lambda t: not _is_valid_layer_key(t, n_layers))))
        target[key] = [0]
    elif kind == "head out of range":
        heads[layer] = [data.draw(st.one_of(st.integers(min_value=s.heads), st.integers(max_value=-1)))]
    elif kind == "neuron out of range":
        neurons[layer] = [data.draw(st.one_of(st.integers(min_value=s.ffn), st.integers(max_value=-1)))]
    elif kind == "bad index":
        target[layer] = [0, data.draw(BAD_INDICES)]
    elif kind == "not a list":
        target[layer] = data.draw(st.sampled_from([0, 1.5, "01", None, True]))
    elif kind == "not a dict":
        bad = data.draw(st.sampled_from([[[0]], "0:1", 3, (0, 1)]))
        heads, neurons = (bad, neurons) if target is heads else (heads, bad)
    else:  # uneven GQA groups: both groups keep heads, but a different number
        per_group = s.heads // s.kv_heads
        a, b = data.draw(st.lists(st.integers(0, per_group - 1), min_size=2, max_size=2, unique=True))
        heads[layer] = list(range(a)) + [per_group + j for j in range(b)]
    return heads, neurons, kind


@FUZZ
@given(model_type=st.sampled_from(FAMILIES), data=st.data())
def test_invalid_requests_raise_value_error_and_change_nothing(model_type, data):
    model = fresh(model_type)
    if data.draw(st.booleans(), label="pruned first"):
        heads, neurons, _ = draw_valid_request(data, model)
        prune_model(model, heads=heads, neurons=neurons)
    before = snapshot(model)
    heads, neurons, kind = draw_invalid_request(data, model)
    with pytest.raises(ValueError):
        prune_model(model, heads=heads, neurons=neurons)
    assert_same(model, before)


# ----------------------------------------------------------------------------- damaged checkpoints


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{model_type: folder} of a pruned tiny model of every family, saved once."""
    root = tmp_path_factory.mktemp("saved")
    folders = {}
    for model_type in FAMILIES:
        model = make_model(model_type)
        prune_model(model, *request_for(model_type))
        model.save_pretrained(root / model_type)
        folders[model_type] = root / model_type
    return folders


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70) | st.integers() | st.sampled_from([10**40, -(10**40)])
    | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELD_VALUE = st.one_of(st.integers(-2, 70), JSON)  # near-valid integers reach the deeper checks
ENTRY_FIELDS = ["format_version", "family", "num_layers", "head_dim", "heads", "kv_heads", "ffn", "base"]
LIST_FIELDS = ["heads", "kv_heads", "ffn"]
BASE_FIELDS = ["heads", "kv_heads", "ffn"]
CONFIG_KEYS = ["model_type", "num_hidden_layers", "architectures", "num_attention_heads", "num_key_value_heads",
               "intermediate_size", "hidden_size", "head_dim", "n_head", "n_layer", "n_inner", "n_heads", "n_layers",
               "ffn_dim", "hidden_dim", "dim"]


def damage(data, config: dict) -> dict | str:
    """Apply 1-3 random damages to a config dict (or replace the whole file); returns the new dict or file text."""
    for _ in range(data.draw(st.integers(1, 3), label="damages")):
        entry = config.get("hf_prune")
        kind = data.draw(st.sampled_from(
            ["entry", "set field", "drop field", "list item", "list length", "base field", "config key", "model_type",
             "file"]))
        if kind == "file":
            return data.draw(st.one_of(st.text(max_size=40), st.just(json.dumps(config)[:-7]), st.just("")))
        if kind == "entry":
            config["hf_prune"] = data.draw(JSON)
        elif kind == "config key":
            config[data.draw(st.sampled_from(CONFIG_KEYS))] = data.draw(FIELD_VALUE)
        elif kind == "model_type":
            config["model_type"] = data.draw(st.sampled_from(FAMILIES + ["t5", "Bert", ""]))
        elif not isinstance(entry, dict):
            continue
        elif kind == "set field":
            entry[data.draw(st.sampled_from(ENTRY_FIELDS + ["extra"]))] = data.draw(FIELD_VALUE)
        elif kind == "drop field":
            entry.pop(data.draw(st.sampled_from(ENTRY_FIELDS)), None)
        elif kind in ("list item", "list length"):
            values = entry.get(data.draw(st.sampled_from(LIST_FIELDS)))
            if not isinstance(values, list):
                continue
            if kind == "list length":
                if values and data.draw(st.booleans()):
                    values.pop()
                else:
                    values.append(values[-1] if values else 0)
            elif values:
                values[data.draw(st.integers(0, len(values) - 1))] = data.draw(FIELD_VALUE)
        elif kind == "base field" and isinstance(entry.get("base"), dict):
            key = data.draw(st.sampled_from(BASE_FIELDS))
            if data.draw(st.booleans()):
                entry["base"].pop(key, None)
            else:
                entry["base"][key] = data.draw(FIELD_VALUE)
    return config


def _finite(obj) -> bool:
    """False when a JSON value holds NaN or infinity (json.dumps writes them as NaN / Infinity)."""
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    return True


@settings(FUZZ, max_examples=4 * EXAMPLES)  # ~10 ms each: most damage is caught before anything is built
@given(model_type=st.sampled_from(FAMILIES), data=st.data())
def test_damaged_config_gives_value_error_or_os_error_only(saved, model_type, data):
    source = saved[model_type]
    original = json.loads((source / "config.json").read_text())
    damaged = damage(data, copy.deepcopy(original))
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(source / "model.safetensors", folder)
        text = damaged if isinstance(damaged, str) else json.dumps(damaged)
        (Path(folder) / "config.json").write_text(text)
        try:
            model = load_pruned(folder)
        except (ValueError, OSError):
            return
        except Exception as err:  # the property: nothing else may escape
            raise AssertionError(f"load_pruned raised {type(err).__name__}, not ValueError/OSError: {err}") from err
    # it loaded: then the damage was harmless, and the model has exactly the shapes its entry announces
    entry = model.config.hf_prune
    shapes = layer_shapes(model)
    assert [s.heads for s in shapes] == entry["heads"] and [s.ffn for s in shapes] == entry["ffn"]
    assert [s.kv_heads for s in shapes] == entry["kv_heads"]


DAMAGED_EXAMPLES = [
    ("hf_prune is a list", lambda c: c.update(hf_prune=[]), "must be an object"),
    ("base is a string", lambda c: c["hf_prune"].update(base="x"), r"hf_prune\.base"),
    ("base heads missing", lambda c: c["hf_prune"]["base"].pop("heads"), r"base\.heads"),
    ("base not divisible", lambda c: c["hf_prune"]["base"].update(heads=7), "multiple of kv_heads"),
    ("base narrower than config", lambda c: c["hf_prune"]["base"].update(ffn=20), r"base\.ffn"),
    ("huge layer count", lambda c: c["hf_prune"].update(num_layers=10**40), "num_layers"),
    ("huge width", lambda c: c["hf_prune"]["ffn"].__setitem__(0, 10**40), r"ffn\[0\]"),
    ("float version", lambda c: c["hf_prune"].update(format_version=1.0), "format_version"),
    ("nested garbage", lambda c: c["hf_prune"].update(heads=[[6], {"a": 1}, None]), r"heads\[0\]"),
    ("family changed", lambda c: c["hf_prune"].update(family="bert"), "family"),
    ("model_type changed", lambda c: c.update(model_type="gpt2"), "family"),
    ("model_type unknown", lambda c: c.update(model_type="no-such-model"), "no-such-model"),
    ("model_type a list", lambda c: c.update(model_type=["llama"]), "config.json"),
    ("layers missing", lambda c: c.pop("num_hidden_layers"), "num_layers"),
    ("layers null", lambda c: c.update(num_hidden_layers=None), "num_hidden_layers"),
    ("heads not divisible by kv heads", lambda c: c.update(num_key_value_heads=4), "kv_heads"),
    ("zero attention heads", lambda c: c.update(num_attention_heads=0), "config.json"),
    ("architectures garbage", lambda c: c.update(architectures=[3]), "architectures"),
    ("architectures not a model", lambda c: c.update(architectures=["AutoConfig"]), "architectures"),
    ("architectures of another family", lambda c: c.update(architectures=["BertModel"]), "BertConfig"),
    ("NaN head_dim", lambda c: c["hf_prune"].update(head_dim=float("nan")), "head_dim"),
]


@pytest.mark.parametrize("name,edit,message", DAMAGED_EXAMPLES, ids=[d[0] for d in DAMAGED_EXAMPLES])
def test_damaged_config_examples_name_what_is_wrong(saved, tmp_path, name, edit, message):
    config = json.loads((saved["llama"] / "config.json").read_text())
    edit(config)
    shutil.copy(saved["llama"] / "model.safetensors", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_pruned(tmp_path)


@pytest.mark.parametrize("text", ["{not json", "", "[]", "null"])
def test_config_json_that_is_not_an_object_is_refused(saved, tmp_path, text):
    shutil.copy(saved["bert"] / "model.safetensors", tmp_path)
    (tmp_path / "config.json").write_text(text)
    with pytest.raises((ValueError, OSError)):
        load_pruned(tmp_path)


def test_missing_folder_and_missing_weights_give_os_error(saved, tmp_path):
    with pytest.raises(OSError):
        load_pruned(tmp_path / "nothing-here")
    shutil.copy(saved["bert"] / "config.json", tmp_path)
    with pytest.raises(OSError):
        load_pruned(tmp_path)


def test_truncated_weights_are_refused(saved, tmp_path):
    shutil.copy(saved["gpt2"] / "config.json", tmp_path)
    data = (saved["gpt2"] / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises((ValueError, OSError)):
        load_pruned(tmp_path)


# ----------------------------------------------------------------------------- hostile pickles


class _TouchOnLoad:
    """Unpickling this would create `marker`: what a hostile pytorch_model.bin does with os.system instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("pruned", [True, False])
def test_a_pickle_that_would_run_code_is_refused(saved, tmp_path, pruned):
    folder, marker = tmp_path / "model", tmp_path / "pwned"
    folder.mkdir()
    source = saved["bert"] if pruned else None
    if source is None:
        make_model("bert").save_pretrained(folder)
        (folder / "model.safetensors").unlink()
        state = make_model("bert").state_dict()
    else:
        shutil.copy(source / "config.json", folder)
        state = load_pruned(source).state_dict()
    state["payload"] = _TouchOnLoad(marker)
    torch.save(state, folder / "pytorch_model.bin")  # saving does not run __reduce__'s callable
    assert not marker.exists()
    with pytest.raises((ValueError, OSError)) as info:
        load_pruned(folder)
    assert not marker.exists()
    assert "refused to load the weights" in str(info.value)
    with pytest.raises(ValueError, match="weights_only"):
        load_pruned(folder, weights_only=False)
    assert not marker.exists()


def test_a_plain_tensor_pickle_still_loads(saved, tmp_path):
    """Old `.bin` checkpoints (tensors only) load through torch.load(weights_only=True)."""
    model = load_pruned(saved["bert"])
    shutil.copy(saved["bert"] / "config.json", tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = load_pruned(tmp_path)
    torch.testing.assert_close(logits(loaded, make_inputs()), logits(model, make_inputs()), atol=0, rtol=0)
