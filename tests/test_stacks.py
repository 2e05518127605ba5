"""Models with several layer stacks: T5/BART-style encoder-decoders and CLIP/SigLIP two-tower models.

Keys are "<stack>.<layer>"; removing heads, cross-attention heads and neurons that contribute nothing leaves the
outputs unchanged (for T5, each layer keeps the position-bias columns of its own remaining heads); the pruned
model saves and reloads with identical outputs; bad requests change nothing.
"""

import json

import pytest
import torch
import transformers as tf
from test_surgery import silence
from tiny_stacks import SINGLE_TOWERS, STACKED, make_stacked, make_tower, stacked_inputs, stacked_output, tower_inputs

from hf_prune import (
    ImportanceScores,
    PruningConfig,
    PruningPlan,
    apply_mask_tuning,
    calibration_moments,
    compute_importance,
    count_flops,
    count_parameters,
    drop_layers,
    layer_shapes,
    layer_stacks,
    load_pruned,
    plan_from_flops,
    plan_from_latency,
    plan_from_params,
    plan_from_sparsity,
    prune_model,
    prune_retrain_free,
    read_config_entry,
    reselect_units,
    save_pruned,
    supported_model_types,
    tune_masks,
)
from hf_prune.architecture.counting import cross_attention_flops, layer_flops
from hf_prune.architecture.layouts import get_layers, get_layout, get_submodule
from hf_prune.architecture.stacks import stack_views

SEQ2SEQ = [name for name, (_, _, kind) in STACKED.items() if kind == "seq2seq"]
TOWERS = [name for name, (_, _, kind) in STACKED.items() if kind == "towers"]


def request_for(name: str) -> dict:
    """Non-uniform heads (one layer loses every head), cross heads (one layer loses all) and neurons, per stack."""
    if name in TOWERS:
        vision = 4 if name == "siglip" else 6
        return {"heads": {"text.0": [0, 3], "vision.1": [1, 2], "vision.2": list(range(vision))},
                "neurons": {"text.1": list(range(37)), "vision.0": [0, 5, 52]}}
    decoder_ffn = 37 if name.startswith(("t5", "mt5", "umt5")) else 29
    return {"heads": {"encoder.1": [0], "encoder.2": [1, 2], "decoder.0": list(range(4))},
            "cross_heads": {"decoder.1": [3], "decoder.0": list(range(4))},
            "neurons": {"decoder.0": list(range(decoder_ffn)), "encoder.0": [3, 4, 36]}}


def silence_request(model, request: dict) -> None:
    """Zero what `request` removes, so the removal cannot change the outputs."""
    views = stack_views(model)
    for kind in ("heads", "neurons", "cross_heads"):
        for key, units in request.get(kind, {}).items():
            stack, layer = key.split(".")
            view = views[stack].cross_view() if kind == "cross_heads" else views[stack]
            silence(view, {int(layer): units} if kind != "neurons" else {}, {int(layer): units} if kind == "neurons" else {})


def test_supported_and_stack_names():
    assert {"t5", "mt5", "umt5", "bart", "mbart", "marian", "pegasus", "clip", "siglip"} <= set(supported_model_types())
    assert layer_stacks(make_stacked("t5")) == ["encoder", "decoder"]
    assert layer_stacks(make_stacked("clip")) == ["text", "vision"]
    assert layer_stacks(tf.T5EncoderModel(STACKED["t5"][0]())) == ["encoder"]
    assert layer_stacks(tf.BertModel(tf.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                   intermediate_size=37))) == []


def test_layer_shapes_are_per_stack():
    shapes = layer_shapes(make_stacked("clip"))
    assert [(s.heads, s.ffn) for s in shapes["text"]] == [(4, 37)] * 2
    assert [(s.heads, s.ffn) for s in shapes["vision"]] == [(6, 53)] * 3
    t5 = layer_shapes(make_stacked("t5"))
    assert [s.cross_heads for s in t5["encoder"]] == [0, 0, 0] and [s.cross_heads for s in t5["decoder"]] == [4, 4]


@pytest.mark.parametrize("name", list(STACKED))
def test_removing_silent_units_keeps_outputs_and_reload_is_identical(name, tmp_path):
    model, inputs, request = make_stacked(name), stacked_inputs(name), request_for(name)
    silence_request(model, request)
    before = stacked_output(model, inputs)
    params = count_parameters(model)
    prune_model(model, **request)
    after = stacked_output(model, inputs)
    torch.testing.assert_close(after, before, atol=2e-5, rtol=1e-4)
    assert count_parameters(model) < params
    shapes = layer_shapes(model)
    if name in TOWERS:
        assert [s.heads for s in shapes["vision"]][1:] == [4 if name == "clip" else 2, 0]
        assert shapes["text"][1].ffn == 0
    else:
        assert [s.heads for s in shapes["encoder"]] == [4, 3, 2]
        assert [(s.heads, s.cross_heads) for s in shapes["decoder"]] == [(0, 0), (4, 3)]
        assert shapes["decoder"][0].ffn == 0

    save_pruned(model, tmp_path / "pruned")
    entry = json.loads((tmp_path / "pruned" / "config.json").read_text())["hf_prune"]
    assert entry["format_version"] == 3 and set(entry["stacks"]) == set(layer_stacks(model))
    reloaded = load_pruned(tmp_path / "pruned").eval()
    assert torch.equal(stacked_output(reloaded, inputs), after)
    assert layer_shapes(reloaded) == shapes


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_greedy_generation_after_pruning_and_reload(name, tmp_path):
    """Generation uses the KV cache; a pruned encoder-decoder and its reload generate the same tokens."""
    model = make_stacked(name)
    prune_model(model, **request_for(name))
    inputs = stacked_inputs(name)
    tokens = model.generate(inputs["input_ids"], max_new_tokens=6, do_sample=False, min_new_tokens=6)
    save_pruned(model, tmp_path / "m")
    again = load_pruned(tmp_path / "m").generate(inputs["input_ids"], max_new_tokens=6, do_sample=False,
                                                 min_new_tokens=6)
    assert torch.equal(tokens, again) and tokens.shape[1] >= 6


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_cross_attention_without_heads_leaves_the_self_attention_cache_alone(name):
    """A decoder layer whose cross-attention lost every head (its self-attention keeps all) runs with a cache:
    same logits as the dense model with those heads silenced, and greedy generation matches step by step."""
    model = make_stacked(name)
    request = {"cross_heads": {"decoder.1": [0, 1, 2, 3]}}
    silence_request(model, request)
    inputs = {**stacked_inputs(name), "use_cache": True}
    expected = stacked_output(model, inputs)
    dense_tokens = model.generate(inputs["input_ids"], max_new_tokens=4, do_sample=False, min_new_tokens=4)
    prune_model(model, **request)
    torch.testing.assert_close(stacked_output(model, inputs), expected, atol=1e-5, rtol=1e-5)
    tokens = model.generate(inputs["input_ids"], max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert torch.equal(tokens, dense_tokens)


def test_t5_heads_keep_their_own_position_bias_columns():
    """Removing a T5 head that does contribute: each later layer must still use the bias of its own heads, so the
    result equals running the dense model with that head's output columns zeroed."""
    model = make_stacked("t5")
    inputs = stacked_inputs("t5")
    reference = make_stacked("t5")
    silence(stack_views(reference)["encoder"], {0: [1], 2: [0, 3]}, {})  # same heads silenced in a dense copy
    prune_model(model, heads={"encoder.0": [1], "encoder.2": [0, 3]})
    torch.testing.assert_close(stacked_output(model, inputs), stacked_output(reference, inputs), atol=2e-5, rtol=1e-4)
    tables = [block.layer[0].SelfAttention.relative_attention_bias.weight for block in model.encoder.block]
    dense_table = reference.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    assert torch.equal(tables[0], dense_table[:, [0, 2, 3]])
    assert torch.equal(tables[1], dense_table) and torch.equal(tables[2], dense_table[:, [1, 2]])


def test_prune_model_gives_the_optimizer_the_position_bias_copies_it_creates():
    """Cutting T5 heads gives later layers their own position-bias tables: prune_model(optimizer=...) adds each to
    the group of its counterpart, so they train, and Adam's state of every other parameter is sliced with it."""
    model = make_stacked("t5")
    model.train()
    decay = [p for n, p in model.named_parameters() if "relative_attention_bias" not in n]
    bias = [p for n, p in model.named_parameters() if "relative_attention_bias" in n]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": bias, "weight_decay": 0.0}], lr=1e-3)
    inputs = stacked_inputs("t5")
    model(**inputs, labels=inputs["decoder_input_ids"]).loss.backward()
    optimizer.step()
    prune_model(model, heads={"encoder.1": [0], "decoder.1": [1]}, optimizer=optimizer)
    owned = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    named = dict(model.named_parameters())
    assert all(id(p) in owned for p in named.values())  # every parameter trains, the new tables included
    new_tables = [n for n in named if "relative_attention_bias" in n and ".block.1." in n]
    assert len(new_tables) == 2 and all(owned[id(named[n])] == 1 for n in new_tables)  # no weight decay, as layer 0
    optimizer.zero_grad()
    model(**inputs, labels=inputs["decoder_input_ids"]).loss.backward()
    before = {n: p.detach().clone() for n, p in named.items()}
    optimizer.step()  # shapes of the sliced Adam state match; the new tables move
    assert all(not torch.equal(before[n], named[n]) for n in new_tables)


def test_uniform_ffn_writes_plain_keys_only_where_every_stack_agrees(tmp_path):
    bart = make_stacked("bart")
    prune_model(bart, neurons={f"decoder.{i}": [0, 1] for i in range(2)})
    assert bart.config.decoder_ffn_dim == 27 and bart.config.encoder_ffn_dim == 37
    bart.save_pretrained(tmp_path / "bart")
    plain = tf.BartForConditionalGeneration.from_pretrained(tmp_path / "bart").eval()  # vanilla loading works
    inputs = stacked_inputs("bart")
    assert torch.equal(stacked_output(plain, inputs), stacked_output(bart, inputs))

    t5 = make_stacked("t5")  # d_ff is shared by both stacks: written only when both agree
    prune_model(t5, neurons={f"encoder.{i}": [0] for i in range(3)})
    assert t5.config.d_ff == 37
    prune_model(t5, neurons={f"decoder.{i}": [5] for i in range(2)})
    assert t5.config.d_ff == 36


def test_clip_checkpoint_loads_into_a_single_tower_class(tmp_path):
    model = make_stacked("clip")
    prune_model(model, heads={"vision.1": [0, 5]}, neurons={"vision.2": list(range(10)), "text.0": [1]})
    save_pruned(model, tmp_path / "clip")
    vision = load_pruned(tmp_path / "clip", model_class=tf.CLIPVisionModel).eval()
    assert [s.heads for s in layer_shapes(vision)] == [6, 4, 6]
    pixels = stacked_inputs("clip")["pixel_values"]
    with torch.no_grad():
        assert torch.equal(vision(pixel_values=pixels).pooler_output, model.vision_model(pixel_values=pixels).pooler_output)


def test_flops_per_stack_with_cross_attention():
    model = make_stacked("bart")
    prune_model(model, heads={"encoder.0": [0]}, cross_heads={"decoder.1": [0, 1]}, neurons={"decoder.1": [3]})
    prune_model(model, cross_heads={"decoder.1": [0]})  # 4 -> 3 -> 1 cross heads in decoder layer 1
    expected = layer_flops(32, 3, 3, 8, 37, 20, False) + 2 * layer_flops(32, 4, 4, 8, 37, 20, False)
    expected += layer_flops(32, 4, 4, 8, 29, 6, False) + layer_flops(32, 4, 4, 8, 28, 6, False)
    expected += cross_attention_flops(32, 4, 8, 6, 20) + cross_attention_flops(32, 1, 8, 6, 20)
    assert count_flops(model, seq_len={"encoder": 20, "decoder": 6}) == expected
    assert count_flops(model, seq_len=6, batch_size=2) == 2 * count_flops(model, seq_len={"encoder": 6, "decoder": 6})
    with pytest.raises(ValueError, match="unknown stacks"):
        count_flops(model, seq_len={"middle": 3})
    clip = make_stacked("clip")  # the vision tower defaults to its 16 patches + 1
    assert count_flops(clip) == count_flops(clip, seq_len={"text": 128, "vision": 17})


def test_flops_formula_matches_flop_counter_on_an_encoder_decoder():
    from torch.utils.flop_counter import FlopCounterMode

    model = make_stacked("bart")
    model.config._attn_implementation = "eager"  # QK^T and AV as plain matmuls
    prune_model(model, heads={"encoder.0": [0, 2]}, cross_heads={"decoder.1": [1]}, neurons={"decoder.0": [0, 1, 2]})
    inputs = stacked_inputs("bart")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=inputs["input_ids"][:1], decoder_input_ids=inputs["decoder_input_ids"][:1])
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    names = [f"{root}.model.encoder.layers.{i}" for i in range(3)] + [f"{root}.model.decoder.layers.{i}" for i in range(2)]
    measured = sum(sum(per_module[name].values()) for name in names if name in per_module)
    assert measured > 0
    assert count_flops(model, seq_len={"encoder": 9, "decoder": 5}) == pytest.approx(measured, rel=0.01)


def test_depth_on_one_stack(tmp_path):
    model = make_stacked("bart")
    inputs = stacked_inputs("bart")
    drop_layers(model, ["decoder.1", "encoder.0"])
    assert model.config.decoder_layers == 1 and model.config.encoder_layers == 2
    entry = read_config_entry(model.config)
    assert entry["stacks"]["decoder"]["layers"] == [0] and entry["stacks"]["encoder"]["layers"] == [1, 2]
    save_pruned(model, tmp_path / "m")
    assert torch.equal(stacked_output(load_pruned(tmp_path / "m"), inputs), stacked_output(model, inputs))
    t5 = make_stacked("t5")
    with pytest.raises(ValueError, match="layer 0 .* cannot be removed"):
        drop_layers(t5, ["encoder.0"])
    drop_layers(t5, ["decoder.1"])
    assert t5.config.num_decoder_layers == 1 and t5.config.num_layers == 3


BAD_REQUESTS = [
    ({"heads": {3: [0]}}, "must be \"<stack>.<layer>\""),
    ({"heads": {"middle.1": [0]}}, "stack one of encoder, decoder"),
    ({"heads": {"encoder.7": [0]}}, "stack 'encoder'.*out of range"),
    ({"heads": {"decoder.0": [0]}, "neurons": {"encoder.1": [99]}}, "stack 'encoder'.*neuron 99"),
    ({"cross_heads": {"encoder.0": [0]}}, "no cross-attention"),
    ({"cross_heads": {"decoder.0": [4]}}, "head 4 of layer 0 is out of range"),
    ({"heads": {"decoder.1": [0]}, "layers": ["decoder.1"]}, "removed by `layers` and also listed"),
    ({"heads": "all"}, "must be a dict"),
]


@pytest.mark.parametrize("request_, message", BAD_REQUESTS)
def test_bad_requests_change_nothing(request_, message):
    model = make_stacked("t5")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        prune_model(model, **request_)
    assert getattr(model.config, "hf_prune", None) is None
    after = model.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)


def test_cross_heads_refused_on_models_without_cross_attention():
    with pytest.raises(ValueError, match="no cross-attention"):
        prune_model(make_stacked("clip"), cross_heads={"text.0": [0]})


def test_single_stack_functions_refuse_multi_stack_models_clearly():
    from hf_prune import measure_latency_table

    with pytest.raises(ValueError, match="several layer stacks \\(encoder, decoder\\)"):
        measure_latency_table(make_stacked("t5"))


DAMAGED = [
    (lambda e: e.update(format_version=2), "several layer stacks"),
    (lambda e: e["stacks"].update(middle=e["stacks"]["encoder"]), "must name some of encoder, decoder"),
    (lambda e: e["stacks"]["decoder"].update(cross_heads=[4, 9]), "stacks.decoder.cross_heads\\[1\\]"),
    (lambda e: e["stacks"]["encoder"].update(heads=[4, 4]), "stacks.encoder.heads` has 2 entries"),
    (lambda e: e["stacks"]["decoder"]["base"].update(cross_heads=8), "base.cross_heads"),
    (lambda e: e.update(stacks=[1]), "must be an object"),
]


@pytest.mark.parametrize("edit, message", DAMAGED)
def test_damaged_stack_entry_gives_a_clear_error(edit, message, tmp_path):
    model = make_stacked("t5")
    prune_model(model, heads={"encoder.1": [0]}, cross_heads={"decoder.1": [2]})
    save_pruned(model, tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    edit(config["hf_prune"])
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_pruned(tmp_path / "m")


@pytest.mark.parametrize("name", list(STACKED))
def test_stack_layouts_match_installed_transformers(name):
    model = make_stacked(name)
    for view in stack_views(model).values():
        for layout in filter(None, (view.hf_prune_layout, view.stack.cross)):
            assert len(get_layers(view)) == getattr(view.config, layout.config_layers)
            for layer in get_layers(view):
                for path in filter(None, (layout.q, layout.k, layout.v, layout.o, layout.up, layout.gate, layout.down)):
                    assert isinstance(get_submodule(layer, path), torch.nn.Linear), path
                attention = get_submodule(layer, layout.attention)
                for attr in (layout.head_dim_attr, *layout.head_count_attrs, *layout.width_attrs):
                    assert hasattr(attention, attr), attr
                assert getattr(attention, layout.head_count_attrs[0]) == getattr(view.config, layout.config_heads)


@pytest.mark.parametrize("model_type", sorted(SINGLE_TOWERS))
def test_single_towers_prune_and_reload(model_type, tmp_path):
    """CLIPVisionModel, SiglipTextModel, ...: single-stack models with integer keys."""
    model, inputs = make_tower(model_type), tower_inputs(model_type)
    assert model.config.model_type == model_type and layer_stacks(model) == []
    heads = get_layout(model).head_count_attrs and layer_shapes(model)[0].heads
    silence(model, {0: [1], 1: list(range(heads))}, {0: [0, 2]})
    with torch.no_grad():
        before = model(**inputs).last_hidden_state
    prune_model(model, heads={0: [1], 1: list(range(heads))}, neurons={0: [0, 2]})
    with torch.no_grad():
        after = model(**inputs).last_hidden_state
    torch.testing.assert_close(after, before, atol=2e-5, rtol=1e-4)
    assert [s.heads for s in layer_shapes(model)][:2] == [heads - 1, 0]
    save_pruned(model, tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path / "m")(**inputs).last_hidden_state, after)


# ----------------------------------------------------------------------------- importance and plans


def loss_batches(name: str, n: int = 2) -> list[dict]:
    """Batches with a loss: seq2seq labels, or CLIP/SigLIP's contrastive loss (return_loss=True)."""
    batches = []
    for seed in range(n):
        inputs = stacked_inputs(name, seed=seed + 1)
        extra = {"return_loss": True} if name in TOWERS else {"labels": inputs["decoder_input_ids"]}
        batches.append({**inputs, **extra})
    return batches


@pytest.mark.parametrize("method", ["fisher", "gradient", "taylor", "activation", "l1", "l2", "random"])
@pytest.mark.parametrize("name", ["t5", "bart", "clip"])
def test_importance_scores_every_stack_and_cross_heads(name, method):
    model = make_stacked(name)
    scores = compute_importance(model, loss_batches(name), method=method, progress=False)
    shapes = layer_shapes(model)
    assert list(scores.stacks) == layer_stacks(model) and scores.heads == []
    for stack, part in scores.stacks.items():
        assert [len(h) for h in part.heads] == [s.heads for s in shapes[stack]]
        assert [len(x) for x in part.neurons] == [s.ffn for s in shapes[stack]]
        crossed = part.cross_heads is not None
        assert crossed == (stack == "decoder")
        if crossed:
            assert [len(h) for h in part.cross_heads] == [s.cross_heads for s in shapes[stack]]
        assert all(torch.isfinite(t).all() for t in part.heads + part.neurons + (part.cross_heads or []))


def test_one_pass_scores_silent_units_zero_and_round_trip(tmp_path):
    """Gradient scores of heads, cross heads and neurons that contribute nothing are 0, from one forward and
    backward pass per batch over the whole encoder-decoder."""
    model = make_stacked("t5")
    request = {"heads": {"encoder.1": [2]}, "cross_heads": {"decoder.1": [0]}, "neurons": {"decoder.0": [4, 7]}}
    silence_request(model, request)
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    batches = loss_batches("t5", 3)
    scores = compute_importance(model, batches, method="fisher", progress=False)
    handle.remove()
    assert len(calls) == len(batches)
    encoder, decoder = scores.stacks["encoder"], scores.stacks["decoder"]
    assert encoder.heads[1][2] == 0 and (encoder.heads[1][[0, 1, 3]] > 0).all()
    assert decoder.cross_heads[1][0] == 0 and (decoder.cross_heads[1][1:] > 0).all()
    assert (decoder.neurons[0][[4, 7]] == 0).all() and decoder.neurons[0].count_nonzero() > 30
    scores.save(tmp_path / "scores.safetensors")
    again = ImportanceScores.load(tmp_path / "scores.safetensors")
    assert again.flat_keys() == scores.flat_keys()
    assert all(torch.equal(a, b.float()) for a, b in zip(again.flatten().heads, scores.flatten().heads))


@pytest.mark.parametrize("name", ["t5", "bart", "clip"])
def test_plans_over_stacks_meet_their_budgets(name):
    model = make_stacked(name)
    scores = compute_importance(model, loss_batches(name), method="fisher", progress=False)
    plan = plan_from_sparsity(scores, head_sparsity=0.5, ffn_sparsity=0.3)
    assert all("." in key for key in [*plan.heads, *plan.neurons, *plan.cross_heads])
    assert PruningPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    removed = sum(map(len, plan.heads.values())) + sum(map(len, plan.cross_heads.values()))
    total = sum(len(h) for h in scores.flatten().heads)
    assert removed == total // 2

    lengths = {"encoder": 20, "decoder": 6} if name != "clip" else {"text": 7}
    flops_plan = plan_from_flops(scores, model, flops_reduction=0.3, seq_len=lengths)
    params_plan = plan_from_params(scores, make_stacked(name), params_reduction=0.3)
    dense_flops = count_flops(model, seq_len=lengths)
    assert flops_plan.metadata["flops"]["before"] == dense_flops
    flops_plan.apply(model)
    assert count_flops(model, seq_len=lengths) == flops_plan.metadata["flops"]["after"] <= 0.7 * dense_flops
    second = make_stacked(name)
    dense_params = count_parameters(second, layers_only=True)
    params_plan.apply(second)
    budget = params_plan.metadata["params"]
    assert budget["before"] == dense_params and budget["after"] <= 0.7 * dense_params
    # T5 only: removing heads gives each later layer its own copy of layer 0's position-bias table (buckets x heads)
    copies = [block.layer[0].SelfAttention for stack in (second.encoder, second.decoder) for block in stack.block[1:]] \
        if name == "t5" else []
    extra = sum(attention.relative_attention_bias.weight.numel() for attention in copies
                if getattr(attention, "relative_attention_bias", None) is not None)
    assert count_parameters(second, layers_only=True) == budget["after"] + extra
    stacked_output(second, stacked_inputs(name))  # still runs


def test_planner_options_not_supported_on_stacks_are_refused():
    model = make_stacked("bart")
    scores = compute_importance(model, method="l2", progress=False)
    with pytest.raises(ValueError, match="uniform=True is not supported on models with several layer stacks"):
        plan_from_sparsity(scores, 0.5, uniform=True)
    with pytest.raises(ValueError, match="structure='joint'"):
        plan_from_params(scores, model, 0.2, structure="joint")
    with pytest.raises(ValueError, match="plan_from_latency does not support"):
        plan_from_latency(scores, model, None, 0.5)
    with pytest.raises(ValueError, match="layer_method"):
        compute_importance(model, loss_batches("bart"), layer_method="block_influence", progress=False)


def test_activation_scores_use_each_stacks_own_padding_mask():
    """Decoder tokens are masked with decoder_attention_mask, never with the encoder's mask (even at equal
    lengths): changing only the padded decoder tokens leaves every score unchanged."""
    model = make_stacked("bart")
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 97, (2, 9), generator=generator)
    decoder = torch.randint(3, 97, (2, 9), generator=generator)
    decoder_mask = torch.ones_like(decoder)
    decoder_mask[:, -3:] = 0
    changed = decoder.clone()
    changed[:, -3:] = torch.randint(3, 97, (2, 3), generator=generator)
    scores = [compute_importance(model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                          "decoder_input_ids": d, "decoder_attention_mask": decoder_mask}],
                                 method="activation", progress=False).flatten() for d in (decoder, changed)]
    for a, b in zip(scores[0].heads + scores[0].neurons, scores[1].heads + scores[1].neurons):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- retrain-free recovery


@pytest.mark.parametrize("reconstruct", ["scales", "weights"])
def test_recovery_of_silent_units_changes_nothing(reconstruct):
    """Removing heads, cross heads and neurons that contribute nothing: every least-squares solve must give back
    the dense output, so a solution written to the wrong block (self- for cross-attention, encoder for decoder)
    would show."""
    model = make_stacked("t5")
    request = {"heads": {"encoder.1": [2], "decoder.0": [1]}, "cross_heads": {"decoder.1": [0, 3]},
               "neurons": {"decoder.0": [4, 7], "encoder.2": list(range(10))}}
    silence_request(model, request)
    inputs = {k: v for k, v in loss_batches("t5", 1)[0].items() if k != "labels"}
    before = stacked_output(model, inputs)
    solved = tune_masks(model, PruningPlan(request["heads"], request["neurons"], cross_heads=request["cross_heads"]),
                        loss_batches("t5", 6), reconstruct=reconstruct, ridge=1e-10)  # exact solves
    torch.testing.assert_close(stacked_output(model, inputs), before, atol=1e-4, rtol=1e-4)
    if reconstruct == "scales":
        assert set(solved["heads"]) == {"encoder.1", "decoder.0", "decoder.1"}
        for scales in [*solved["heads"].values(), *solved["neurons"].values()]:
            torch.testing.assert_close(scales, torch.ones_like(scales), atol=1e-3, rtol=0)
    assert layer_shapes(model)["decoder"][1].cross_heads == 2


@pytest.mark.parametrize("reconstruct", ["scales", "weights"])
def test_recovery_of_one_tower_equals_the_single_tower_model(reconstruct, tmp_path):
    """The vision tower of a CLIPModel recovered through the stacked path equals CLIPVisionModel recovered alone."""
    clip = make_stacked("clip")
    save_pruned(clip, tmp_path / "clip")
    tower = load_pruned(tmp_path / "clip", model_class=tf.CLIPVisionModel).eval()
    pixels = [stacked_inputs("clip", seed=s)["pixel_values"] for s in range(4)]
    heads, neurons = {1: [0, 4], 2: [5]}, {0: list(range(20)), 2: [1, 2, 3]}
    tune_masks(tower, PruningPlan(heads, neurons), [{"pixel_values": p} for p in pixels], reconstruct=reconstruct)
    plan = PruningPlan({f"vision.{i}": h for i, h in heads.items()}, {f"vision.{i}": n for i, n in neurons.items()})
    text = stacked_inputs("clip")["input_ids"]
    tune_masks(clip, plan, [{"pixel_values": p, "input_ids": text} for p in pixels], reconstruct=reconstruct)
    for mine, alone in zip(clip.vision_model.encoder.layers, tower.encoder.layers):
        for a, b in ((mine.self_attn.out_proj, alone.self_attn.out_proj), (mine.mlp.fc2, alone.mlp.fc2)):
            torch.testing.assert_close(a.weight, b.weight, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(a.bias, b.bias, atol=1e-6, rtol=1e-5)


def test_reselection_keeps_counts_and_prefers_silent_units():
    """Re-selection keeps every layer's (and cross-attention's) counts, and picks units that contribute nothing
    before the ones the scores chose."""
    model = make_stacked("t5")
    silence_request(model, {"heads": {"encoder.2": [3]}, "cross_heads": {"decoder.0": [2]},
                            "neurons": {"encoder.1": [5, 6]}})
    plan = PruningPlan({"encoder.2": [0]}, {"encoder.1": [0, 1]}, cross_heads={"decoder.0": [0]})
    moments = calibration_moments(model, loss_batches("t5", 6))
    chosen = reselect_units(model, plan, moments, progress=False)
    assert chosen.heads == {"encoder.2": [3]} and chosen.cross_heads == {"decoder.0": [2]}
    assert chosen.neurons == {"encoder.1": [5, 6]}


@pytest.mark.parametrize("name", ["t5", "clip"])
def test_prune_retrain_free_on_stacks(name):
    model = make_stacked(name)
    batches = loss_batches(name, 4)
    dense_flops = count_flops(model)
    result = prune_retrain_free(model, batches, PruningConfig(flops_reduction=0.3))
    assert result.reselected and result.recovery == "weights"
    assert all("." in key for key in [*result.plan.heads, *result.plan.neurons, *result.plan.cross_heads])
    assert count_flops(model) <= 0.7 * dense_flops
    stacked_output(model, stacked_inputs(name))
    with pytest.raises(ValueError, match="mode='sequential'.*several layer stacks"):
        prune_retrain_free(make_stacked(name), batches, PruningConfig(flops_reduction=0.3), mode="sequential")


@pytest.mark.parametrize("name", ["t5", "bart", "clip"])
def test_prune_retrain_free_on_stacks_takes_the_statistics_from_the_scoring_pass(name, monkeypatch):
    """The statistics come from the fisher pass (no pass of their own) and give the model that scores, a plan,
    `calibration_moments`, re-selection and `apply_mask_tuning` give."""
    import hf_prune.recovery.moments as moments
    from hf_prune.pipeline import make_plan

    batches = loss_batches(name, 3)
    config = PruningConfig(flops_reduction=0.3)
    reference = make_stacked(name)
    plan = make_plan(compute_importance(reference, batches, "fisher", progress=False), reference, config)
    stats = calibration_moments(reference, batches)
    apply_mask_tuning(reference, reselect_units(reference, plan, stats, progress=False), stats, reconstruct="weights")

    model = make_stacked(name)
    monkeypatch.setattr(moments, "calibration_moments", lambda *a, **k: pytest.fail("a separate statistics pass"))
    prune_retrain_free(model, batches, config)
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].shape == want[key].shape, key
        assert (got[key] - want[key]).norm() <= 1e-5 * want[key].norm() + 1e-9, key


def test_classes_with_one_stack_of_a_multi_stack_type_and_bf16_reload(tmp_path):
    """T5EncoderModel (encoder only) and BartForCausalLM (decoder only) address their one stack with the same keys;
    a bfloat16 T5 reloads with device_map and keeps bfloat16 in every layer's own position-bias table."""
    from tiny_stacks import bart_config, t5_config

    ids = stacked_inputs("t5")["input_ids"]
    cases = [(tf.T5EncoderModel(t5_config()).eval(), {"heads": {"encoder.1": [0, 2]}, "neurons": {"encoder.0": [1]}},
              "last_hidden_state"),
             (tf.BartForCausalLM(bart_config()).eval(), {"heads": {"decoder.1": [0]}, "cross_heads": {"decoder.0": [1]}},
              "logits")]
    for i, (model, request, field) in enumerate(cases):
        assert layer_stacks(model) == [next(iter(request["heads"])).split(".")[0]]
        prune_model(model, **request)
        save_pruned(model, tmp_path / str(i))
        with torch.no_grad():
            assert torch.equal(getattr(load_pruned(tmp_path / str(i))(input_ids=ids), field),
                               getattr(model(input_ids=ids), field))
    t5 = make_stacked("t5").to(torch.bfloat16)
    prune_model(t5, heads={"encoder.1": [0], "decoder.1": [3]}, cross_heads={"decoder.0": [0]})
    save_pruned(t5, tmp_path / "bf16")
    again = load_pruned(tmp_path / "bf16", dtype=torch.bfloat16, device_map="cpu")
    inputs = stacked_inputs("t5")
    assert torch.equal(stacked_output(again, inputs), stacked_output(t5, inputs))
    assert again.encoder.block[2].layer[0].SelfAttention.relative_attention_bias.weight.dtype == torch.bfloat16
