"""Models loaded with a `device_map` (accelerate hooks, CPU/disk offload): scoring, gates, surgery, save and reload.

CPU is the only real device here, so "spread over devices" means layers kept in memory ("cpu") next to layers
offloaded to disk (meta tensors whose values the accelerate hook loads for each forward). Every result must
equal the one of the same model loaded fully in memory.
"""

from __future__ import annotations

import hashlib
import time

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_prune import attach_gates, compute_importance, layer_shapes, load_pruned, prune_model, save_pruned
from hf_prune.architecture.layouts import get_layers, get_layout, get_submodule
from hf_prune.importance import compute_layer_importance
from hf_prune.importance.estimators import METHODS, model_loss
from hf_prune.importance.layers import LAYER_METHODS
from hf_prune.importance.units import unit_sums
from hf_prune.surgery.depth import drop_layers
from hf_prune.utils import materialized, offload_hook, write_tensor

VOCAB = 97
HEADS = {0: [0, 1, 2], 2: [0, 3], 3: [1, 4]}  # 6 query heads over 2 key/value groups: whole groups or one per group
NEURONS = {1: [1, 2, 3], 2: list(range(0, 37, 3)), 3: list(range(30))}


def _config() -> LlamaConfig:
    return LlamaConfig(hidden_size=48, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2,
                       intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=0,
                       eos_token_id=0, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = LlamaForCausalLM(_config()).eval()
    folder = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(folder)
    return folder


def _nbytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _in_memory(folder):
    return LlamaForCausalLM.from_pretrained(folder).eval()


def _offloaded(folder, tmp_path, **kwargs):
    """The model with `max_memory` smaller than itself: most of it offloaded to disk."""
    dense = _in_memory(folder)
    kwargs.setdefault("device_map", "auto")
    if kwargs["device_map"] == "auto":
        kwargs.setdefault("max_memory", {"cpu": _nbytes(dense) // 3})
    offload = tmp_path / f"offload{time.monotonic_ns()}"
    model = LlamaForCausalLM.from_pretrained(folder, offload_folder=str(offload), **kwargs).eval()
    assert "disk" in set(model.hf_device_map.values())
    return model


def _batches(n: int = 2) -> list[dict]:
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(10 + i)
        ids = torch.randint(2, VOCAB, (2, 9), generator=g)
        mask = torch.ones_like(ids)
        mask[0, -2:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return out


def _logits(model) -> torch.Tensor:
    batch = _batches(1)[0]
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _offloaded_projections(model) -> list[str]:
    return [name for name, module in model.named_modules() if offload_hook(module) is not None and name.endswith("proj")]


def _assert_nothing_lost(model) -> None:
    """No weight silently left on the meta device: every meta tensor is an offloaded entry its hook can load."""
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if p.device.type == "meta":
                hook = offload_hook(module)
                assert hook is not None, f"{name}.{pname} is on meta with no hook"
                assert hook.weights_map[pname].shape == p.shape, f"{name}.{pname}"


def _checksum(folder) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


def test_disk_offload_scores_equal_in_memory_scores(checkpoint, tmp_path):
    dense, offloaded = _in_memory(checkpoint), _offloaded(checkpoint, tmp_path)
    assert _offloaded_projections(offloaded)  # the test means something: layers really are on disk
    data = _batches(1)
    for method in METHODS:
        a = compute_importance(dense, data, method, progress=False)
        b = compute_importance(offloaded, data, method, progress=False)
        for x, y in zip(a.heads + a.neurons, b.heads + b.neurons):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-12, msg=method)
    for method in LAYER_METHODS:
        a = compute_layer_importance(dense, data, method, progress=False)
        b = compute_layer_importance(offloaded, data, method, progress=False)
        torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(b.scores), rtol=1e-5, atol=1e-12, msg=method)
    _assert_nothing_lost(offloaded)
    for module in offloaded.modules():  # scoring left no hook of its own behind
        assert not module._forward_pre_hooks and not module._forward_hooks
    # nor changed requires_grad, although the offload hooks replace Parameters at every forward pass
    assert all(p.requires_grad for p in offloaded.parameters())
    assert not offloaded.training


def test_disk_offload_prune_drop_save_reload_match_in_memory(checkpoint, tmp_path):
    before = _checksum(checkpoint)
    dense, offloaded = _in_memory(checkpoint), _offloaded(checkpoint, tmp_path)
    torch.testing.assert_close(_logits(offloaded), _logits(dense), rtol=0, atol=0)
    prune_model(dense, heads=HEADS, neurons=NEURONS)
    prune_model(offloaded, heads=HEADS, neurons=NEURONS)
    assert layer_shapes(offloaded) == layer_shapes(dense)
    assert offloaded.config.hf_prune == dense.config.hf_prune
    _assert_nothing_lost(offloaded)
    layout = get_layout(offloaded)
    down = get_submodule(get_layers(offloaded)[3], layout.down)
    assert down.weight.device.type == "meta" and offload_hook(down) is not None  # still offloaded, now smaller
    torch.testing.assert_close(_logits(offloaded), _logits(dense), rtol=0, atol=0)

    drop_layers(dense, [1])
    drop_layers(offloaded, [1])
    torch.testing.assert_close(_logits(offloaded), _logits(dense), rtol=0, atol=0)
    assert _checksum(checkpoint) == before  # the checkpoint the model was loaded from is never written

    offloaded.save_pretrained(tmp_path / "plain")
    save_pruned(offloaded, tmp_path / "atomic")
    for folder in (tmp_path / "plain", tmp_path / "atomic"):
        torch.testing.assert_close(_logits(load_pruned(folder)), _logits(dense), rtol=0, atol=0)
        again = load_pruned(folder, device_map="auto", max_memory={"cpu": _nbytes(dense) // 3},
                            offload_folder=str(tmp_path / f"reload_{folder.name}"))
        assert "disk" in set(again.hf_device_map.values())
        torch.testing.assert_close(_logits(again), _logits(dense), rtol=0, atol=0)
        # and an offloaded reload prunes again like the in-memory model
        prune_model(again, heads={0: [0, 1]}, neurons={2: [0]})
        reference = load_pruned(folder)
        prune_model(reference, heads={0: [0, 1]}, neurons={2: [0]})
        torch.testing.assert_close(_logits(again), _logits(reference), rtol=0, atol=0)


def test_offloaded_layer_loses_every_head_and_neuron(checkpoint, tmp_path):
    dense, offloaded = _in_memory(checkpoint), _offloaded(checkpoint, tmp_path)
    request = dict(heads={3: list(range(6))}, neurons={3: list(range(37)), 2: list(range(37))})
    prune_model(dense, **request)
    prune_model(offloaded, **request)
    assert layer_shapes(offloaded)[3].heads == 0 and layer_shapes(offloaded)[2].ffn == 0
    torch.testing.assert_close(_logits(offloaded), _logits(dense), rtol=0, atol=0)
    save_pruned(offloaded, tmp_path / "saved")
    torch.testing.assert_close(_logits(load_pruned(tmp_path / "saved")), _logits(dense), rtol=0, atol=0)


def test_write_tensor_and_materialized_on_offloaded_and_in_memory_layers(checkpoint, tmp_path):
    """The helpers recovery code can use to read (`materialized`) and write (`write_tensor`) any layer's weights."""
    dense, offloaded = _in_memory(checkpoint), _offloaded(checkpoint, tmp_path)
    layout = get_layout(dense)
    for model in (dense, offloaded):
        o = get_submodule(get_layers(model)[3], layout.o)
        with materialized(o):
            value = o.weight.detach().clone()
            assert value.device.type == "cpu"
        write_tensor(o, "weight", value * 0.5)
    assert get_submodule(get_layers(offloaded)[3], layout.o).weight.device.type == "meta"
    torch.testing.assert_close(_logits(offloaded), _logits(dense), rtol=0, atol=0)


def test_explicit_device_map_with_cpu_and_disk_layers(checkpoint, tmp_path):
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu",
                  "lm_head": "disk"}
    dense, spread = _in_memory(checkpoint), _offloaded(checkpoint, tmp_path, device_map=device_map)
    layers = get_layers(spread)
    layout = get_layout(spread)
    assert get_submodule(layers[0], layout.o).weight.device.type == "cpu"
    assert get_submodule(layers[1], layout.o).weight.device.type == "meta"
    data = _batches()
    for method in ("fisher", "taylor", "l1", "activation"):
        a = compute_importance(dense, data, method, progress=False)
        b = compute_importance(spread, data, method, progress=False)
        for x, y in zip(a.heads + a.neurons, b.heads + b.neurons):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-12, msg=method)
    request = dict(heads={0: [2, 5], 1: [0, 1, 2], 3: [1, 4]}, neurons={0: [0], 1: list(range(9)), 3: [36]}, layers=[2])
    prune_model(dense, **request)
    prune_model(spread, **request)
    _assert_nothing_lost(spread)
    torch.testing.assert_close(_logits(spread), _logits(dense), rtol=0, atol=0)
    save_pruned(spread, tmp_path / "saved")
    torch.testing.assert_close(_logits(load_pruned(tmp_path / "saved")), _logits(dense), rtol=0, atol=0)


def test_gates_on_an_offloaded_model_live_on_the_execution_device(checkpoint, tmp_path):
    model = _offloaded(checkpoint, tmp_path)
    layout = get_layout(model)
    with attach_gates(model) as gates:
        for layer, heads, neurons in zip(get_layers(model), gates.heads, gates.neurons):
            assert heads.device == torch.device("cpu") and neurons.device == torch.device("cpu")
            assert offload_hook(get_submodule(layer, layout.o)) is not None or layer is get_layers(model)[0]
        batch = _batches(1)[0]
        model_loss(model, batch, False).backward()
        assert all(g.grad is not None and torch.isfinite(g.grad).all() for g in gates.heads + gates.neurons)


def test_accelerate_cpu_offload_weights_in_memory(checkpoint):
    """accelerate.cpu_offload keeps the weights in a CPU state dict (its loader's `state_dict`): rewritten there."""
    from accelerate import cpu_offload

    dense, model = _in_memory(checkpoint), _in_memory(checkpoint)
    cpu_offload(model, execution_device=torch.device("cpu"))
    assert _offloaded_projections(model)
    neurons = {k: v for k, v in NEURONS.items() if k != 1}
    prune_model(dense, heads=HEADS, neurons=neurons, layers=[1])
    prune_model(model, heads=HEADS, neurons=neurons, layers=[1])
    _assert_nothing_lost(model)
    torch.testing.assert_close(_logits(model), _logits(dense), rtol=0, atol=0)


def test_meta_weights_without_a_hook_raise_before_anything_changes(checkpoint):
    with torch.device("meta"):
        model = LlamaForCausalLM(_config())
    shapes, entry = layer_shapes(model), getattr(model.config, "hf_prune", None)
    with pytest.raises(ValueError, match="meta device.*device_map"):
        prune_model(model, heads=HEADS, neurons={2: [0]}, layers=[1])
    assert layer_shapes(model) == shapes and getattr(model.config, "hf_prune", None) == entry
    assert len(get_layers(model)) == 4
    with pytest.raises(ValueError, match="meta device"):
        compute_importance(model, method="l2", progress=False)
    # one layer materialised, another still meta: refused as a whole, the materialised layer is untouched
    dense = _in_memory(checkpoint)
    get_layers(dense)[2].to("meta")
    before = {k: v.clone() for k, v in get_layers(dense)[0].state_dict().items()}
    with pytest.raises(ValueError, match="layer 2"):
        prune_model(dense, heads={0: [0, 1, 2]}, neurons={2: [0]})
    after = get_layers(dense)[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "opt", "llama", "distilbert"])
def test_taylor_equals_weight_times_gradient(model_type):
    """Per-unit Taylor sums from activations equal |sum of w * dL/dw| over each unit's weights (the definition)."""
    from tiny_models import make_inputs, make_model

    model = make_model(model_type)
    data = []
    for i in range(2):
        b = make_inputs(seed=10 + i)
        b["labels"] = torch.arange(2) % 3 if model_type in ("bert", "distilbert") else b["input_ids"]
        data.append(b)
    scores = compute_importance(model, data, "taylor", progress=False)
    for p in model.parameters():
        p.grad = None
    for b in data:
        model(**b).loss.backward()
    layout = get_layout(model)
    for i, layer in enumerate(get_layers(model)):
        h, n = unit_sums(layer, layout, layer_shapes(model)[i],
                         lambda name, p: p.detach().double() * p.grad.double())
        torch.testing.assert_close(scores.heads[i].double(), h.abs(), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(scores.neurons[i].double(), n.abs(), rtol=1e-4, atol=1e-7)


@pytest.mark.slow  # the GGUF dequantisation dominates (about 20 s on an idle machine); the rest takes seconds
def test_smollm2_disk_offload_prunes_like_in_memory(tmp_path):
    """The real SmolLM2 with its last layers on disk: l2 scores, pruning, save and reload as in memory."""
    assets = pytest.importorskip("hf_prune_assets")
    model, tokenizer = assets.load_smollm2()
    model.eval()
    model.save_pretrained(tmp_path / "dense")  # a plain LlamaForCausalLM checkpoint (GGUF cannot save itself)
    offloaded = LlamaForCausalLM.from_pretrained(
        tmp_path / "dense", device_map="auto", max_memory={"cpu": _nbytes(model) * 4 // 5},
        offload_folder=str(tmp_path / "offload")).eval()
    assert "disk" in set(offloaded.hf_device_map.values())
    a = compute_importance(model, method="l2", progress=False)
    b = compute_importance(offloaded, method="l2", progress=False)
    for x, y in zip(a.heads + a.neurons, b.heads + b.neurons):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=0)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    heads = {i: [0, 4, 8] for i in range(0, 30, 3)}
    neurons = {i: list(range(0, 1536, 4)) for i in range(30) if i != 28}
    prune_model(model, heads=heads, neurons=neurons, layers=[28])
    prune_model(offloaded, heads=heads, neurons=neurons, layers=[28])
    _assert_nothing_lost(offloaded)
    with torch.no_grad():
        expected = model(**prompt).logits
        torch.testing.assert_close(offloaded(**prompt).logits, expected, rtol=0, atol=0)
    save_pruned(offloaded, tmp_path / "pruned")
    with torch.no_grad():
        torch.testing.assert_close(load_pruned(tmp_path / "pruned")(**prompt).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["dense", "sequential"])
def test_retrain_free_pipeline_on_disk_offload_equals_in_memory(checkpoint, tmp_path, mode):
    """prune_retrain_free (fisher scores, parameter budget, re-selection, weight recovery layer by layer) on a
    model mostly on disk gives the in-memory result: same plan, same logits, nothing left on meta unaccounted."""
    from hf_prune import PruningConfig, prune_retrain_free

    config = PruningConfig(params_reduction=0.3, importance="fisher")
    dense, offloaded = _in_memory(checkpoint), _offloaded(checkpoint, tmp_path)
    a = prune_retrain_free(dense, _batches(2), config, mode=mode)
    b = prune_retrain_free(offloaded, _batches(2), config, mode=mode)
    assert b.plan.heads == a.plan.heads and b.plan.neurons == a.plan.neurons
    assert layer_shapes(offloaded) == layer_shapes(dense)
    _assert_nothing_lost(offloaded)
    assert _offloaded_projections(offloaded)  # still offloaded after the surgery and the writes
    torch.testing.assert_close(_logits(offloaded), _logits(dense), rtol=1e-5, atol=1e-6)
    save_pruned(offloaded, tmp_path / "pruned")
    torch.testing.assert_close(_logits(load_pruned(tmp_path / "pruned")), _logits(dense), rtol=1e-5, atol=1e-6)
