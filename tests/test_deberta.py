"""DeBERTa-v2 / v3: relative-position projections (`Layout.head_rows`) follow the kept heads, empty layers run.

The generic tests (test_surgery, test_save_load, test_depth, test_fuzz, ...) run TINY's DeBERTa-v2 (separate
pos_key_proj / pos_query_proj, log buckets, ConvLayer). Here every variant of the relative attention: with and
without share_att_key (DeBERTa-v3 shares key_proj / query_proj), with one or both of c2p / p2c, bucketed or not.
"""

import copy

import pytest
import torch
import transformers as tf
from test_fused_layouts import assert_parameter_costs_exact
from test_surgery import silence
from tiny_models import deberta_v2_config, make_inputs

from hf_prune import compute_importance, count_flops, count_parameters, get_layout, layer_shapes, load_pruned, prune_model
from hf_prune.architecture.layouts import get_layers, get_submodule
from hf_prune.importance import METHODS
from hf_prune.surgery.width import head_columns

VARIANTS = {
    "separate": {},  # TINY's: pos_key_proj and pos_query_proj, log buckets, ConvLayer after layer 0
    "separate-c2p": dict(pos_att_type=("c2p",), position_buckets=-1, conv_kernel_size=0),  # pos_key_proj only
    "shared": dict(share_att_key=True, conv_kernel_size=0),  # DeBERTa-v3: no extra projection
    "shared-unbucketed": dict(share_att_key=True, position_buckets=-1),
}
POSITION_PROJECTIONS = {  # which relative-position projections each variant builds
    "separate": ["attention.self.pos_key_proj", "attention.self.pos_query_proj"],
    "separate-c2p": ["attention.self.pos_key_proj"],
    "shared": [],
    "shared-unbucketed": [],
}
HEAD_DIM, HIDDEN = 8, 32
# layer 0 loses every head, the others different ones; different FFN widths per layer
HEADS = {0: [0, 1, 2, 3], 1: [1, 3], 2: [2]}
KEPT = {0: [], 1: [0, 2], 2: [0, 1, 3]}
NEURONS = {0: [0, 5, 36], 1: list(range(0, 37, 2)), 2: [7]}


def build(variant: str, seed: int = 0) -> tf.DebertaV2ForSequenceClassification:
    """A tiny DeBERTa-v2 classifier whose attention weights are large enough for a misplaced head row to show."""
    torch.manual_seed(seed)
    config = deberta_v2_config(**VARIANTS[variant])
    config.num_labels = 3
    model = tf.DebertaV2ForSequenceClassification(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
            elif ".attention.self." in name:  # init std 0.02 leaves attention almost uniform
                p.normal_(0, 0.3)
    return model


def logits(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs).logits


def position_weights(model) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Per layer: {path: (weight, bias)} of every relative-position projection it has, cloned."""
    layout = get_layout(model)
    return [{path: (get_submodule(layer, path).weight.detach().clone(), get_submodule(layer, path).bias.detach().clone())
             for path in layout.head_rows_in(layer)} for layer in get_layers(model)]


def batches(n: int = 2, batch: int = 3) -> list[dict]:
    out = []
    for i in range(n):
        b = make_inputs(batch, 8, seed=10 + i)
        b["labels"] = torch.arange(batch) % 3
        out.append(b)
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_layout_finds_the_projections_the_config_builds(variant):
    model = build(variant)
    layout = get_layout(model)
    assert layout.head_rows and "deberta" not in layout.head_rows[0]
    for layer in get_layers(model):
        assert layout.head_rows_in(layer) == POSITION_PROJECTIONS[variant]


def test_misplaced_relative_position_rows_would_change_the_logits():
    """The checks below are sharp: swapping two heads' rows of a position projection moves the logits 10x past 1e-5."""
    inputs = make_inputs()
    for path in POSITION_PROJECTIONS["separate"]:
        model = build("separate")
        before = logits(model, inputs)
        proj = get_submodule(get_layers(model)[1], path)
        with torch.no_grad():
            proj.weight.copy_(proj.weight[head_columns([1, 0, 2, 3], HEAD_DIM)])
        assert (logits(model, inputs) - before).abs().max() > 1e-4, path


@pytest.mark.parametrize("variant", VARIANTS)
def test_removing_silent_heads_and_neurons_keeps_logits(variant):
    model = build(variant)
    inputs = make_inputs()
    silence(model, HEADS, NEURONS)  # zero the removed units' output-projection columns: they contribute nothing
    before = logits(model, inputs)
    params = count_parameters(model)
    prune_model(model, heads=HEADS, neurons=NEURONS)
    torch.testing.assert_close(logits(model, inputs), before, atol=1e-5, rtol=0)
    assert [s.heads for s in layer_shapes(model)] == [0, 2, 3]
    assert [s.ffn for s in layer_shapes(model)] == [34, 18, 36]
    assert count_parameters(model) < params


@pytest.mark.parametrize("variant", ["separate", "separate-c2p"])
def test_relative_position_projections_keep_the_rows_of_the_kept_heads(variant):
    model = build(variant)
    dense = position_weights(model)
    prune_model(model, heads=HEADS)
    layers = get_layers(model)
    for i, kept in KEPT.items():
        attention = layers[i].attention.self
        assert attention.num_attention_heads == len(kept) and attention.all_head_size == len(kept) * HEAD_DIM
        rows = head_columns(kept, HEAD_DIM)
        assert list(dense[i]) == POSITION_PROJECTIONS[variant]
        for path, (weight, bias) in dense[i].items():
            proj = get_submodule(layers[i], path)
            assert proj.weight.shape == (len(kept) * HEAD_DIM, HIDDEN) and proj.out_features == len(kept) * HEAD_DIM
            assert torch.equal(proj.weight, weight[rows]) and torch.equal(proj.bias, bias[rows]), (i, path)
        assert variant != "separate-c2p" or not hasattr(attention, "pos_query_proj")


@pytest.mark.parametrize("variant", VARIANTS)
def test_non_uniform_result_saves_and_loads_with_identical_logits(variant, tmp_path):
    model = build(variant)
    inputs = make_inputs()
    flops = count_flops(model)
    prune_model(model, heads=HEADS, neurons=NEURONS)
    assert count_flops(model) < flops
    model.save_pretrained(tmp_path)
    loaded = load_pruned(tmp_path)
    assert type(loaded) is type(model)
    assert layer_shapes(loaded) == layer_shapes(model)
    for ours, theirs in zip(position_weights(model), position_weights(loaded)):
        assert ours.keys() == theirs.keys()
        for path in ours:
            assert all(torch.equal(a, b) for a, b in zip(ours[path], theirs[path])), path
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), atol=0, rtol=0)


@pytest.mark.parametrize("variant", ["separate", "shared"])
def test_layer_without_heads_returns_no_attention_map_and_trains(variant):
    model = build(variant)
    prune_model(model, heads={0: HEADS[0]})
    inputs = make_inputs()
    out = model(**inputs, output_attentions=True)
    assert out.attentions[0] is None and out.attentions[1].shape == (2, 4, 9, 9)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(**inputs, labels=torch.tensor([0, 2])).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert "deberta.encoder.layer.0.attention.output.dense.bias" in changed  # what is left of layer 0's attention
    assert "deberta.encoder.layer.1.attention.self.query_proj.weight" in changed


@pytest.mark.parametrize("variant", ["separate", "shared"])
@pytest.mark.parametrize("method", ["gradient", "fisher", "taylor"])
def test_silent_units_score_zero_with_gates_and_taylor(variant, method):
    model = build(variant)
    silence(model, {1: [2]}, {1: [5]})
    scores = compute_importance(model, batches(), method, progress=False)
    heads, neurons = scores.heads[1], scores.neurons[1]
    assert heads[2].item() == pytest.approx(0.0, abs=1e-12) and heads.argmin().item() == 2
    assert neurons[5].item() == pytest.approx(0.0, abs=1e-12) and neurons.argmin().item() == 5
    assert (heads[[0, 1, 3]] > 0).all()


def test_every_importance_method_runs_on_a_pruned_model():
    model = build("separate")
    prune_model(model, heads=HEADS, neurons=NEURONS)
    shapes = layer_shapes(model)
    for method in METHODS:
        scores = compute_importance(model, batches(), method, progress=False)
        assert [len(h) for h in scores.heads] == [s.heads for s in shapes], method
        assert [len(n) for n in scores.neurons] == [s.ffn for s in shapes], method
        assert all(torch.isfinite(t).all() for t in scores.heads + scores.neurons), method


@pytest.mark.parametrize("variant", VARIANTS)
def test_norm_scores_and_parameter_costs_count_the_relative_position_rows(variant):
    model = build(variant)
    with torch.no_grad():
        for p in get_layers(model)[1].parameters():
            p.fill_(1.0)
    scores = compute_importance(model, None, "l1", progress=False)
    projections = 3 + len(POSITION_PROJECTIONS[variant])  # q, k, v and the position projections, all with biases
    per_head = projections * HEAD_DIM * (HIDDEN + 1) + HEAD_DIM * HIDDEN  # + the output projection's columns
    assert scores.heads[1].tolist() == [per_head] * 4

    assert_parameter_costs_exact(model, HEADS, NEURONS)


@pytest.mark.parametrize("heads,neurons", [({1: [0], 2: [4]}, None), ({0: [0, 1]}, {2: [37]}), ({3: [0]}, None)])
def test_bad_request_raises_and_changes_nothing(heads, neurons):
    model = build("separate")
    inputs = make_inputs()
    state = copy.deepcopy(model.state_dict())
    config = model.config.to_dict()
    before = logits(model, inputs)
    with pytest.raises(ValueError, match="out of range"):
        prune_model(model, heads=heads, neurons=neurons)
    assert model.config.to_dict() == config and not hasattr(model.config, "hf_prune")
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key, value in after.items():
        assert torch.equal(value, state[key]), key
    assert all(layer.attention.self.num_attention_heads == 4 for layer in get_layers(model))
    torch.testing.assert_close(logits(model, inputs), before, atol=0, rtol=0)


def test_an_unsliceable_position_projection_is_refused_before_anything_changes():
    """check_writable covers head_rows: a meta weight with no offload hook behind it stops the whole request."""
    model = build("separate")
    layers = get_layers(model)
    layers[2].attention.self.pos_query_proj.bias = torch.nn.Parameter(torch.empty(32, device="meta"))
    state = {k: v.clone() for k, v in model.state_dict().items() if v.device.type != "meta"}
    with pytest.raises(ValueError, match=r"layer 2: its attention.self.pos_query_proj.bias .*Nothing was changed"):
        prune_model(model, heads={1: [0], 2: [1]})
    assert not hasattr(model.config, "hf_prune")
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("variant", ["separate", "separate-c2p", "shared-unbucketed"])
def test_flops_count_the_relative_position_work_and_match_the_flop_counter(variant):
    """count_flops includes the relative-position projections and c2p/p2c scores (per head), so FLOPs budgets
    price DeBERTa's heads right; checked against torch's FlopCounterMode inside the layers (the conv layer and
    the embeddings' LayerNorm are outside the count)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build(variant)
    prune_model(model, heads={1: [0], 2: [1, 3]}, neurons={0: list(range(9))})
    ids = make_inputs(batch=1, seq=12)["input_ids"]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=ids)
    per_module = counter.get_flop_counts()
    layers = [f"DebertaV2ForSequenceClassification.deberta.encoder.layer.{i}" for i in range(3)]
    measured = sum(sum(per_module[name].values()) for name in layers)
    assert count_flops(model, seq_len=12) == pytest.approx(measured, rel=0.01)
