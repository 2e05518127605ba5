"""Fused projections (hf_prune.architecture.fused): Phi-3's qkv_proj / gate_up_proj, GPT-NeoX's per-head
query_key_value, ModernBERT's Wqkv / Wi, GLM's gate_up_proj, ModernBERT-decoder's Wi, and GPT-2's c_attn.

The generic tests (test_surgery, test_save_load, test_fuzz, ...) run these families through TINY. Here: the row
layouts against the installed modeling code, greedy generation with the cache, parallel / sequential residuals,
uniform results with plain from_pretrained, exact parameter counts, importance, plans and recovery end to end.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_depth import greedy, logits
from test_surgery import silence
from tiny_models import DECODERS, FUSED, GROUPED, TINY, make_inputs, make_model

from hf_prune import (
    PruningConfig,
    PruningPlan,
    apply_mask_tuning,
    calibration_moments,
    compute_importance,
    count_parameters,
    drop_layers,
    get_layout,
    layer_shapes,
    load_pruned,
    plan_from_params,
    plan_from_sparsity,
    prune_model,
    prune_retrain_free,
    stream_recover,
)
from hf_prune.architecture.fused import Fused, kept_rows, part_rows
from hf_prune.architecture.layouts import Layout, get_layers, get_submodule
from hf_prune.importance import METHODS
from hf_prune.planning.costs import ParamsCost

NEW_TYPES = sorted(FUSED)
FUSED_TYPES = ["gpt2", *NEW_TYPES]
FUSED_QKV = ["phi3", "gpt_neox", "modernbert"]
FUSED_GATE_UP = ["phi3", "modernbert", "modernbert-decoder", "glm", "glm4"]
MIXED_LAYER_TYPES = ["modernbert", "modernbert-decoder"]  # global and local attention layers


def request_for(model_type: str) -> tuple[dict, dict]:
    """Layer 0 loses every head, the others different numbers (whole groups under GQA); non-uniform FFN widths."""
    if model_type in GROUPED:  # 6 query heads over 2 groups of 3
        heads = {0: list(range(6)), 1: [3, 4, 5], 2: [1, 4]}
    else:
        heads = {0: [0, 1, 2, 3], 1: [1, 3], 2: [2]}
    return heads, {0: [0, 5, 36], 1: list(range(0, 37, 2)), 2: list(range(30))}


def batches(model_type: str, n: int = 2, batch: int = 3, seq: int = 8) -> list[dict]:
    out = []
    for i in range(n):
        b = make_inputs(batch, seq, seed=10 + i)
        if model_type not in DECODERS:
            b["labels"] = torch.arange(batch) % 3
        else:
            b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
        out.append(b)
    return out


# ----------------------------------------------------------------------------- row layouts


def test_contiguous_rows_follow_the_part_sizes():
    fused = Fused("qkv", ("q", "k", "v"))
    rows = part_rows(fused, {"q": 4, "k": 2, "v": 2}, 3)  # [q: 12 rows | k: 6 | v: 6]
    assert rows["q"].tolist()[1] == [3, 4, 5] and rows["k"].tolist()[0] == [12, 13, 14]
    assert rows["v"].tolist()[1] == [21, 22, 23]
    kept = kept_rows(fused, {"q": 4, "k": 2, "v": 2}, 3, {"q": [2, 3], "k": [1], "v": [1]})
    assert kept.tolist() == [6, 7, 8, 9, 10, 11, 15, 16, 17, 21, 22, 23]


def test_interleaved_rows_go_head_by_head():
    fused = Fused("query_key_value", ("q", "k", "v"), interleaved=True)
    rows = part_rows(fused, {"q": 3, "k": 3, "v": 3}, 2)  # [q0 k0 v0 | q1 k1 v1 | q2 k2 v2], 2 rows each
    assert rows["q"].tolist() == [[0, 1], [6, 7], [12, 13]] and rows["v"].tolist()[1] == [10, 11]
    kept = kept_rows(fused, {"q": 3, "k": 3, "v": 3}, 2, dict.fromkeys("qkv", [0, 2]))
    assert kept.tolist() == [0, 1, 2, 3, 4, 5, 12, 13, 14, 15, 16, 17]


def test_inconsistent_layout_lines_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        Fused("qkv", ("q", "q"))
    with pytest.raises(ValueError, match="parts"):
        Fused("mixed", ("q", "up"))
    with pytest.raises(ValueError, match="interleaved"):
        Layout(family="x", layers="layers", attention="attn", attention_includes_output=True, q=None, k=None, v=None,
               o="attn.o", up="mlp.up", down="mlp.down", fused=(Fused("attn.qkv", ("q", "k", "v"), interleaved=True),),
               config_kv_heads="num_key_value_heads")
    with pytest.raises(ValueError, match="both"):
        Layout(family="x", layers="layers", attention="attn", attention_includes_output=True, q="attn.q", k=None,
               v=None, o="attn.o", up="mlp.up", down="mlp.down", fused=(Fused("attn.qkv", ("q", "k", "v")),))


def _split_like_transformers(model_type: str, out: torch.Tensor, heads: int, kv: int, d: int):
    """q, k, v of a fused projection's output (..., features), split the way the installed modeling code does."""
    if model_type == "gpt_neox":  # view(..., -1, 3 * head_size) then chunk(3)
        return out.view(*out.shape[:-1], heads, 3 * d).chunk(3, dim=-1)
    q, k, v = out.split([heads * d, kv * d, kv * d], dim=-1)
    return (t.view(*t.shape[:-1], -1, d) for t in (q, k, v))


@pytest.mark.parametrize("model_type", FUSED_QKV)
def test_sliced_fused_weight_computes_the_kept_heads(model_type):
    model = make_model(model_type)
    layout = get_layout(model)
    layer = get_layers(model)[1]
    qkv = get_submodule(layer, layout.qkv)
    shape = layer_shapes(model)[1]
    x = torch.randn(5, qkv.in_features)
    q, k, v = _split_like_transformers(model_type, qkv(x), shape.heads, shape.kv_heads, shape.head_dim)
    drop = [3, 4, 5] if model_type == "phi3" else [1, 3]
    prune_model(model, heads={1: drop})
    new = layer_shapes(model)[1]
    q2, k2, v2 = _split_like_transformers(model_type, qkv(x), new.heads, new.kv_heads, new.head_dim)
    keep = [h for h in range(shape.heads) if h not in drop]
    keep_kv = [0] if model_type == "phi3" else keep
    torch.testing.assert_close(q2, q[:, keep], atol=1e-6, rtol=0)  # a narrower matmul may sum in another order
    torch.testing.assert_close(k2, k[:, keep_kv], atol=1e-6, rtol=0)
    torch.testing.assert_close(v2, v[:, keep_kv], atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_type", FUSED_GATE_UP)
def test_sliced_gate_up_weight_keeps_each_neuron_with_its_gate(model_type):
    model = make_model(model_type)
    layout = get_layout(model)
    assert layout.gated and layout.gate is None and layout.up == layout.holder("up").path
    mlp = get_submodule(get_layers(model)[2], layout.up)
    x = torch.randn(5, mlp.in_features)
    first, second = mlp(x).chunk(2, dim=-1)
    drop = [0, 7, 36]
    prune_model(model, neurons={2: drop})
    first2, second2 = mlp(x).chunk(2, dim=-1)
    keep = [n for n in range(37) if n not in drop]
    torch.testing.assert_close(first2, first[:, keep], atol=1e-6, rtol=0)  # a narrower matmul may sum in another order
    torch.testing.assert_close(second2, second[:, keep], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- exact removal


@pytest.mark.parametrize("model_type", FUSED_TYPES)
def test_removing_silent_units_keeps_logits_and_cached_generation(model_type):
    model = make_model(model_type)
    inputs = make_inputs()
    heads, neurons = request_for(model_type)
    silence(model, heads, neurons)
    before = logits(model, inputs)
    generated = greedy(model, inputs) if model_type in DECODERS else None

    prune_model(model, heads=heads, neurons=neurons)

    torch.testing.assert_close(logits(model, inputs), before, atol=1e-4, rtol=0)
    if generated is not None:
        assert torch.equal(greedy(model, inputs), generated)
    shapes = layer_shapes(model)
    assert [s.heads for s in shapes] == ([0, 3, 4] if model_type in GROUPED else [0, 2, 3])
    assert [s.ffn for s in shapes] == [34, 18, 7]
    if model_type in GROUPED:
        assert [s.kv_heads for s in shapes] == [0, 1, 2]


@pytest.mark.parametrize("parallel", [True, False])
def test_gpt_neox_sequential_and_parallel_residuals(parallel):
    factory, cls = TINY["gpt_neox"]
    config = factory()
    config.use_parallel_residual = parallel
    torch.manual_seed(0)
    model = cls(config).eval()
    inputs = make_inputs()
    heads, neurons = request_for("gpt_neox")
    silence(model, heads, neurons)
    before, generated = logits(model, inputs), greedy(model, inputs)
    prune_model(model, heads=heads, neurons=neurons)
    torch.testing.assert_close(logits(model, inputs), before, atol=1e-4, rtol=0)
    assert torch.equal(greedy(model, inputs), generated)


def test_phi3_layers_read_their_own_head_count():
    model = make_model("phi3")
    heads, neurons = request_for("phi3")
    prune_model(model, heads=heads, neurons=neurons)
    counts = [layer.self_attn.config.num_attention_heads for layer in get_layers(model)]
    assert counts == [0, 3, 4] and model.config.num_attention_heads == 6  # the model config keeps the dense count
    inputs = make_inputs()
    expected = logits(model, inputs)
    clone = copy.deepcopy(model)
    torch.testing.assert_close(logits(clone, inputs), expected, atol=0, rtol=0)
    model.set_attn_implementation("eager")  # the per-layer views follow the model config
    assert all(layer.self_attn.config._attn_implementation == "eager" for layer in get_layers(model))
    torch.testing.assert_close(logits(model, inputs), expected, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- save and load


@pytest.mark.parametrize("model_type", NEW_TYPES)
def test_non_uniform_result_reloads_with_load_pruned(model_type, tmp_path):
    model = make_model(model_type)
    heads, neurons = request_for(model_type)
    prune_model(model, heads=heads, neurons=neurons)
    model.save_pretrained(tmp_path)
    loaded = load_pruned(tmp_path)
    inputs = make_inputs()
    assert layer_shapes(loaded) == layer_shapes(model)
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), atol=0, rtol=0)
    if model_type in DECODERS:
        assert torch.equal(greedy(loaded, inputs), greedy(model, inputs))


@pytest.mark.parametrize("model_type", ["phi3", "glm", "glm4"])
def test_uniform_gqa_result_loads_with_plain_from_pretrained(model_type, tmp_path):
    model = make_model(model_type)
    prune_model(model, heads={i: [0, 1, 2] for i in range(3)}, neurons={i: list(range(5)) for i in range(3)})
    model.save_pretrained(tmp_path)
    plain = type(model).from_pretrained(tmp_path).eval()
    inputs = make_inputs()
    torch.testing.assert_close(logits(plain, inputs), logits(model, inputs), atol=0, rtol=0)
    assert torch.equal(greedy(plain, inputs), greedy(model, inputs))


@pytest.mark.parametrize("model_type", ["gpt_neox", "modernbert", "modernbert-decoder"])
def test_uniform_ffn_loads_with_plain_from_pretrained_and_heads_fail_loudly(model_type, tmp_path):
    model = make_model(model_type)
    prune_model(model, neurons={i: list(range(6)) for i in range(3)})
    model.save_pretrained(tmp_path / "ffn")
    plain = type(model).from_pretrained(tmp_path / "ffn").eval()
    inputs = make_inputs()
    torch.testing.assert_close(logits(plain, inputs), logits(model, inputs), atol=0, rtol=0)
    # head size is hidden / heads and the output projection is hidden wide: no plain key expresses fewer heads
    prune_model(model, heads={i: [0] for i in range(3)})
    model.save_pretrained(tmp_path / "heads")
    with pytest.raises(Exception, match="mismatch|size"):
        type(model).from_pretrained(tmp_path / "heads")


# ----------------------------------------------------------------------------- counting, importance, recovery


def assert_parameter_costs_exact(model, heads: dict, neurons: dict) -> None:
    """ParamsCost, built on the dense model, predicts the layers' parameters before and after `prune_model`."""
    cost = ParamsCost.from_model(model)
    for request in ({}, {"heads": heads, "neurons": neurons}):
        prune_model(model, **request)
        predicted = sum(cost.layer(i, s.heads, s.kv_heads, s.ffn) for i, s in enumerate(layer_shapes(model)))
        assert predicted == count_parameters(model, layers_only=True)


@pytest.mark.parametrize("model_type", FUSED_TYPES)
def test_parameter_costs_are_exact(model_type):
    assert_parameter_costs_exact(make_model(model_type), *request_for(model_type))


@pytest.mark.parametrize("model_type", NEW_TYPES)
@pytest.mark.parametrize("method", ["gradient", "fisher", "taylor"])
def test_silent_units_score_zero(model_type, method):
    model = make_model(model_type)
    silence(model, {1: [2]}, {1: [5]})
    scores = compute_importance(model, batches(model_type), method, progress=False)
    heads, neurons = scores.heads[1], scores.neurons[1]
    assert heads[2].item() == pytest.approx(0.0, abs=1e-12) and heads.argmin().item() == 2
    assert neurons[5].item() == pytest.approx(0.0, abs=1e-12) and neurons.argmin().item() == 5


@pytest.mark.parametrize("model_type", FUSED_TYPES)
def test_norm_scores_use_the_fused_rows(model_type):
    """l1 of a unit = |its rows of every fused part| + |its output/down columns|, counted once."""
    model = make_model(model_type)
    layout = get_layout(model)
    layer, shape = get_layers(model)[1], layer_shapes(model)[1]
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(1.0)
    scores = compute_importance(model, None, "l1", progress=False)
    q = get_submodule(layer, layout.qkv or layout.q)
    hidden = q.weight.shape[0] if layout.conv1d else q.weight.shape[1]
    d, parts = shape.head_dim, 1 if layout.grouped else 3  # GQA: key/value rows belong to the group
    bias = getattr(q, "bias", None) is not None
    per_head = parts * d * (hidden + bias) + d * hidden
    assert scores.heads[1].tolist() == [per_head] * shape.heads
    up = get_submodule(layer, layout.up)
    per_neuron = (2 if layout.gated else 1) * (hidden + (getattr(up, "bias", None) is not None)) + hidden
    assert scores.neurons[1].tolist() == [per_neuron] * shape.ffn


@pytest.mark.parametrize("model_type", NEW_TYPES)
def test_every_importance_method_runs(model_type):
    model = make_model(model_type)
    data = batches(model_type)
    heads, neurons = request_for(model_type)
    prune_model(model, heads={1: heads[1]}, neurons={2: neurons[2]})
    shapes = layer_shapes(model)
    for method in METHODS:
        scores = compute_importance(model, data, method, progress=False)
        assert [len(h) for h in scores.heads] == [s.heads for s in shapes]
        assert [len(n) for n in scores.neurons] == [s.ffn for s in shapes]
        assert all(torch.isfinite(t).all() for t in scores.heads + scores.neurons)


@pytest.mark.parametrize("model_type", sorted(NEW_TYPES))
def test_retrain_free_end_to_end(model_type, tmp_path):
    model = make_model(model_type)
    dense = count_parameters(model, layers_only=True)
    config = PruningConfig(head_sparsity=0.34, ffn_sparsity=0.3, importance="fisher")
    prune_retrain_free(model, batches(model_type, n=3), config)
    assert count_parameters(model, layers_only=True) < dense
    inputs = make_inputs()
    out = logits(model, inputs)
    assert torch.isfinite(out).all()
    model.save_pretrained(tmp_path)
    loaded = load_pruned(tmp_path)
    torch.testing.assert_close(logits(loaded, inputs), out, atol=0, rtol=0)


@pytest.mark.parametrize("model_type", MIXED_LAYER_TYPES)
def test_recovery_with_calibration_moments(model_type, tmp_path):
    """ModernBERT mixes global and local attention layers (a 4-token window on 8-token batches): the one-pass
    recovery and the layer-by-layer one (each layer called with its own type's mask) give the same model."""
    model = make_model(model_type)
    data = batches(model_type, n=3)
    plan = plan_from_sparsity(compute_importance(model, data, "fisher", progress=False), head_sparsity=0.5,
                              ffn_sparsity=0.3)
    dense = copy.deepcopy(model)
    inputs = make_inputs()
    for reconstruct in ("scales", "weights"):
        pruned = copy.deepcopy(dense)
        apply_mask_tuning(pruned, plan, calibration_moments(dense, data), reconstruct=reconstruct)
        assert sum(s.heads for s in layer_shapes(pruned)) == 6
        streamed = copy.deepcopy(dense)
        stream_recover(streamed, plan, data, mode="dense", reconstruct=reconstruct)
        torch.testing.assert_close(logits(streamed, inputs), logits(pruned, inputs), atol=1e-5, rtol=1e-5)
        assert torch.isfinite(logits(pruned, inputs)).all()
    pruned.save_pretrained(tmp_path)
    torch.testing.assert_close(logits(load_pruned(tmp_path), inputs), logits(pruned, inputs), atol=0, rtol=0)


@pytest.mark.parametrize("model_type", MIXED_LAYER_TYPES)
def test_modernbert_keeps_its_first_layer_and_drops_others_exactly(model_type, tmp_path):
    """ModernBERT's layer 0 has no attention norm (an Identity): removing it could not be rebuilt from the config."""
    model = make_model(model_type)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for call in (lambda: drop_layers(model, [0, 2]), lambda: prune_model(model, heads={1: [0]}, layers=[0])):
        with pytest.raises(ValueError, match=f"layer 0 of a {model_type} model cannot be removed"):
            call()
        assert model.state_dict().keys() == before.keys()
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    inputs = make_inputs()
    drop_layers(model, [1])  # the local-attention layer: global, global remain
    assert model.config.layer_types == ["full_attention", "full_attention"]
    model.save_pretrained(tmp_path)
    plain = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(plain, inputs), logits(model, inputs), atol=0, rtol=0)


@pytest.mark.parametrize("model_type", ["phi3", "gpt_neox", "glm"])
def test_gguf_export_refuses_fused_families(model_type, tmp_path):
    from hf_prune import export_gguf

    with pytest.raises(ValueError, match=f"model_type '{model_type}' cannot be exported to GGUF"):
        export_gguf(make_model(model_type), tmp_path / "model.gguf")
    assert not (tmp_path / "model.gguf").exists()


@pytest.mark.parametrize("model_type", MIXED_LAYER_TYPES)
def test_depth_planners_never_pick_modernberts_first_layer(model_type):
    model = make_model(model_type)
    scores = compute_importance(model, batches(model_type), "fisher", layer_method="fisher", progress=False)
    scores.layers = [-1.0, 5.0, 6.0]  # layer 0 looks least important: it must still be skipped
    for structure in ("depth", "joint"):
        plan = plan_from_params(scores, model, 0.5, structure=structure)
        assert 0 not in plan.layers and (structure == "joint" or plan.layers)
    with pytest.raises(ValueError, match="layer 0 of a"):  # a hand-written plan that removes it changes nothing
        apply_mask_tuning(model, PruningPlan(layers=[0]), calibration_moments(model, batches(model_type)))
