"""compute_importance: every method on every layout family, zero-output units score zero, the model is left
as it was, label-free targets, save/load, and two processes agree with one."""

import os

import pytest
import torch
from gloo_workers import run_two_processes
from tiny_models import assert_untouched, make_inputs, make_model

from hf_prune import get_layout, layer_shapes, prune_model
from hf_prune.architecture.layouts import get_layers, get_submodule
from hf_prune.importance import METHODS, ImportanceScores, compute_importance
from hf_prune.surgery.width import head_columns

FAMILIES = ["bert", "gpt2", "llama"]  # BERT-style, GPT-2 Conv1D with fused qkv, llama-style GQA


def batches(model_type: str, n: int = 2, batch: int = 3, seq: int = 8) -> list[dict]:
    """`n` labelled batches for a tiny model (class labels for encoders, input_ids for decoders)."""
    out = []
    for i in range(n):
        b = make_inputs(batch, seq, seed=10 + i)
        if model_type in ("bert", "distilbert"):
            b["labels"] = torch.arange(batch) % 3
        else:
            b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
        out.append(b)
    return out


def silence(model, layer: int, head: int, neuron: int) -> None:
    """Zero one head's output-projection input columns and one neuron's down-projection input column."""
    layout = get_layout(model)
    target = get_layers(model)[layer]
    cols = head_columns([head], layer_shapes(model)[layer].head_dim)
    with torch.no_grad():
        o = get_submodule(target, layout.o).weight
        down = get_submodule(target, layout.down).weight
        if layout.conv1d:  # Conv1D weight is (in, out)
            o[cols, :] = 0
            down[neuron, :] = 0
        else:
            o[:, cols] = 0
            down[:, neuron] = 0


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("method", ["gradient", "fisher", "taylor"])
def test_silent_units_score_zero_and_lowest(model_type, method):
    model = make_model(model_type)
    silence(model, layer=1, head=2, neuron=5)
    scores = compute_importance(model, batches(model_type), method)
    heads, neurons = scores.heads[1], scores.neurons[1]
    assert heads[2].item() == pytest.approx(0.0, abs=1e-12)
    assert neurons[5].item() == pytest.approx(0.0, abs=1e-12)
    assert torch.cat([heads[:2], heads[3:]]).min() > 0
    assert torch.cat([neurons[:5], neurons[6:]]).min() > 0
    assert heads.argmin().item() == 2 and neurons.argmin().item() == 5


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_method_runs_with_current_shapes(model_type):
    model = make_model(model_type)
    data = batches(model_type)
    shapes = layer_shapes(model)
    for method in METHODS:
        scores = compute_importance(model, data, method)
        assert scores.method == method
        assert [len(h) for h in scores.heads] == [s.heads for s in shapes]
        assert [len(n) for n in scores.neurons] == [s.ffn for s in shapes]
        for t in scores.heads + scores.neurons:
            assert torch.isfinite(t).all() and (t >= 0).all()
        if method in ("gradient", "fisher", "taylor", "activation"):
            assert scores.num_batches == len(data)


def test_gqa_group_scores():
    model = make_model("llama")  # 6 query heads over 2 key/value heads
    scores = compute_importance(model, batches("llama"), "fisher")
    assert scores.kv_heads == [2, 2, 2]
    for heads, groups in zip(scores.heads, scores.groups):
        assert groups.shape == (2,)
        torch.testing.assert_close(groups, torch.stack([heads[:3].sum(), heads[3:].sum()]))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_scores_of_pruned_model_have_current_shapes(model_type):
    model = make_model(model_type)
    heads = {0: [0, 3], 2: [0, 1, 2, 3, 4, 5]} if model_type == "llama" else {0: [1], 2: [0, 1, 2, 3]}
    prune_model(model, heads=heads, neurons={1: list(range(10)), 2: list(range(37))})
    shapes = layer_shapes(model)
    for method in ("fisher", "taylor", "activation", "l2", "random"):
        scores = compute_importance(model, batches(model_type), method)
        assert [len(h) for h in scores.heads] == [s.heads for s in shapes]
        assert [len(n) for n in scores.neurons] == [s.ffn for s in shapes]
        assert scores.kv_heads == [s.kv_heads for s in shapes]


def test_scoring_leaves_model_unchanged():
    model = make_model("bert").train()
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in METHODS:
        compute_importance(model, batches("bert"), method)
    assert_untouched(model, before, flags)
    # eval mode is restored as well
    model.eval()
    compute_importance(model, batches("bert"), "gradient")
    assert not any(m.training for m in model.modules())


def test_label_free_matches_own_targets():
    # causal LM: label_free == labels=input_ids (the model's own shifting), on unpadded text
    model = make_model("llama")
    data = [{"input_ids": torch.randint(2, 90, (2, 7), generator=torch.Generator().manual_seed(i))} for i in range(2)]
    free = compute_importance(model, data, "fisher", label_free=True)
    labelled = compute_importance(model, [dict(b, labels=b["input_ids"]) for b in data], "fisher")
    for a, b in zip(free.heads + free.neurons, labelled.heads + labelled.neurons):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-12)
    # sequence classification: argmax of its own logits
    model = make_model("bert")
    plain = [{k: v for k, v in b.items() if k != "labels"} for b in batches("bert")]
    with torch.no_grad():
        own = [model(**b).logits.argmax(-1) for b in plain]
    free = compute_importance(model, plain, "gradient", label_free=True)
    labelled = compute_importance(model, [dict(b, labels=y) for b, y in zip(plain, own)], "gradient")
    for a, b in zip(free.heads + free.neurons, labelled.heads + labelled.neurons):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-12)


def test_normalized_head_scores_have_unit_norm():
    model = make_model("bert")
    scores = compute_importance(model, batches("bert"), "gradient", normalize_heads=True)
    for h in scores.heads:
        assert h.norm().item() == pytest.approx(1.0, rel=1e-5)


def test_random_is_seeded_and_needs_no_data():
    model = make_model("gpt2")
    a = compute_importance(model, None, "random", seed=3)
    b = compute_importance(model, None, "random", seed=3)
    c = compute_importance(model, None, "random", seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.heads + a.neurons, b.heads + b.neurons))
    assert not torch.equal(a.heads[0], c.heads[0])


def test_l2_is_norm_of_unit_weights():
    model = make_model("bert")
    scores = compute_importance(model, None, "l2")
    layer = get_layers(model)[0]
    att, d = layer.attention, layer_shapes(model)[0].head_dim
    parts = [att.self.query.weight[:d], att.self.query.bias[:d], att.self.key.weight[:d], att.self.key.bias[:d],
             att.self.value.weight[:d], att.self.value.bias[:d], att.output.dense.weight[:, :d]]
    expected = torch.sqrt(sum((p.detach().double() ** 2).sum() for p in parts))
    assert scores.heads[0][0].item() == pytest.approx(expected.item(), rel=1e-5)
    parts = [layer.intermediate.dense.weight[3], layer.intermediate.dense.bias[3:4], layer.output.dense.weight[:, 3]]
    expected = torch.sqrt(sum((p.detach().double() ** 2).sum() for p in parts))
    assert scores.neurons[0][3].item() == pytest.approx(expected.item(), rel=1e-5)


def test_save_and_load(tmp_path):
    model = make_model("llama")
    prune_model(model, neurons={0: list(range(37))})  # a zero-width layer survives the round trip
    scores = compute_importance(model, batches("llama"), "taylor")
    path = tmp_path / "scores.safetensors"
    scores.save(path)
    loaded = ImportanceScores.load(path)
    assert loaded.method == "taylor" and loaded.kv_heads == scores.kv_heads
    assert loaded.num_batches == scores.num_batches
    for a, b in zip(scores.heads + scores.neurons, loaded.heads + loaded.neurons):
        assert torch.equal(a, b)
    assert os.listdir(tmp_path) == ["scores.safetensors"]


def test_bad_input_raises_value_error():
    model = make_model("bert")
    with pytest.raises(ValueError, match="unknown importance method"):
        compute_importance(model, batches("bert"), "magic")
    with pytest.raises(ValueError, match="empty"):
        compute_importance(model, [], "fisher")
    with pytest.raises(ValueError, match="needs a dataloader"):
        compute_importance(model, None, "gradient")
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in batches("bert")]
    for method in ("gradient", "fisher", "taylor"):
        with pytest.raises(ValueError, match="label_free=True"):
            compute_importance(model, unlabelled, method)
    compute_importance(model, unlabelled, "activation")  # needs no labels
    assert not any(m._forward_pre_hooks for m in model.modules())


WORKER = """
from test_importance import batches
from tiny_models import make_model
from hf_prune.importance import compute_importance

model = make_model("bert")
shard = batches("bert", n=4)[rank::world]
for method in ("gradient", "fisher", "taylor", "activation"):
    compute_importance(model, shard, method).save(f"{out}/{{method}}.{{rank}}.safetensors")
"""


def test_two_processes_match_one(tmp_path):
    """Two gloo processes (torch.multiprocessing.spawn), each on half the batches, all-reduce to the 1-process scores."""
    run_two_processes(WORKER, tmp_path)
    model = make_model("bert")
    for method in ("gradient", "fisher", "taylor", "activation"):
        single = compute_importance(model, batches("bert", n=4), method)
        ranks = [ImportanceScores.load(tmp_path / f"{method}.{r}.safetensors") for r in range(2)]
        assert ranks[0].num_batches == ranks[1].num_batches == 4
        for r in ranks:
            for a, b in zip(r.heads + r.neurons, single.heads + single.neurons):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-10)
        for a, b in zip(ranks[0].heads + ranks[0].neurons, ranks[1].heads + ranks[1].neurons):
            assert torch.equal(a, b)  # identical on every process


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_gates_live_on_each_layers_device(model_type):
    """A model spread over devices (device_map): every gate sits with its own layer's projections.

    CPU-only stand-in for a second accelerator: layer 1 is moved to the meta device.
    """
    from hf_prune import attach_gates

    model = make_model(model_type)
    layout = get_layout(model)
    layers = get_layers(model, layout)
    layers[1].to("meta")
    with attach_gates(model) as gates:
        for i, (heads, neurons) in enumerate(zip(gates.heads, gates.neurons)):
            expected = get_submodule(layers[i], layout.o).weight.device
            assert heads.device == expected and neurons.device == expected, i
        assert gates.heads[1].device.type == "meta" and gates.heads[0].device.type == "cpu"


def test_inputs_go_to_the_embeddings_device():
    from hf_prune.utils import input_device

    model = make_model("llama")
    model.get_input_embeddings().to("meta")  # the first device of a spread model
    assert input_device(model).type == "meta"
