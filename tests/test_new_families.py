"""Llama-named relatives (gemma2, gemma3_text, smollm3, ...) and ViT: importance, plan and retrain-free recovery
run end to end; ViT takes image batches (pixel_values) everywhere and counts FLOPs over its patches plus [CLS].

(Surgery, save/load, depth and fuzzing run on these types through the tests parametrized over tiny_models.TINY.)
"""

import pytest
import torch
from test_surgery import request_for, silence
from tiny_models import LLAMA_RELATIVES, TINY, VISION, make_inputs_for, make_model
from torch.utils.flop_counter import FlopCounterMode

from hf_prune import (
    PruningConfig,
    compute_importance,
    count_flops,
    layer_shapes,
    load_pruned,
    plan_from_flops,
    prune_model,
    prune_retrain_free,
)
from hf_prune.architecture.counting import default_seq_len
from hf_prune.importance import METHODS


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def batches(model_type: str, n: int = 2, batch: int = 3) -> list[dict]:
    """Labelled calibration batches: images with class labels for ViT, token ids with next-token labels otherwise."""
    out = []
    for i in range(n):
        b = make_inputs_for(model_type, batch, 8, seed=10 + i)
        if "pixel_values" in b:
            b["labels"] = torch.arange(batch) % 3
        else:
            b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
        out.append(b)
    return out


NEW = sorted(LLAMA_RELATIVES | VISION)


@pytest.mark.parametrize("model_type", NEW)
def test_silent_units_score_zero_and_every_method_runs(model_type):
    model = make_model(model_type)
    silence(model, {1: [2]}, {1: [5]})
    data = batches(model_type)
    scores = compute_importance(model, data, "fisher", progress=False)
    assert scores.heads[1][2].item() == pytest.approx(0.0, abs=1e-12)
    assert scores.neurons[1][5].item() == pytest.approx(0.0, abs=1e-12)
    assert scores.heads[1].argmin().item() == 2 and scores.neurons[1].argmin().item() == 5
    shapes = layer_shapes(model)
    for method in METHODS:
        scores = compute_importance(model, data, method, progress=False)
        assert [len(h) for h in scores.heads] == [s.heads for s in shapes]
        assert all(torch.isfinite(t).all() for t in scores.heads + scores.neurons)
    free = compute_importance(model, [{k: v for k, v in b.items() if k != "labels"} for b in data], "fisher",
                              label_free=True, progress=False)
    assert all(torch.isfinite(t).all() for t in free.heads + free.neurons)


@pytest.mark.parametrize("model_type", NEW)
def test_importance_plan_and_retrain_free_recovery_end_to_end(model_type, tmp_path):
    model = make_model(model_type)
    data = batches(model_type, n=3)
    inputs = make_inputs_for(model_type)
    params = sum(p.numel() for p in model.parameters())
    prune_retrain_free(model, data, PruningConfig(head_sparsity=0.34, ffn_sparsity=0.3, importance="fisher"))
    assert sum(p.numel() for p in model.parameters()) < params
    out = logits(model, inputs)
    assert torch.isfinite(out).all()
    model.save_pretrained(tmp_path)
    loaded = load_pruned(tmp_path)
    assert layer_shapes(loaded) == layer_shapes(model)
    torch.testing.assert_close(logits(loaded, inputs), out, atol=0, rtol=0)


# ----------------------------------------------------------------------------- ViT


def test_vit_removing_silent_units_keeps_image_logits_and_reloads(tmp_path):
    model = make_model("vit")
    heads, neurons = request_for("vit")  # layer 0 loses every head, layer 2 every neuron
    silence(model, heads, neurons)
    images = make_inputs_for("vit")
    assert set(images) == {"pixel_values"}
    before = logits(model, images)
    prune_model(model, heads=heads, neurons=neurons)
    torch.testing.assert_close(logits(model, images), before, atol=1e-4, rtol=0)
    assert [s.heads for s in layer_shapes(model)] == [0, 2, 3] and [s.ffn for s in layer_shapes(model)] == [34, 18, 0]
    model.save_pretrained(tmp_path)
    loaded = load_pruned(tmp_path)
    assert type(loaded) is type(model)
    torch.testing.assert_close(logits(loaded, images), logits(model, images), atol=0, rtol=0)


def test_vit_flops_default_to_patches_plus_one_and_match_the_flop_counter():
    model = make_model("vit")
    config = model.config
    tokens = (config.image_size // config.patch_size) ** 2 + 1
    assert default_seq_len(config) == tokens == 5
    assert default_seq_len(TINY["bert"][0]()) == 128
    prune_model(model, heads={0: [1], 2: [0, 3]}, neurons={1: list(range(11))})
    assert count_flops(model) == count_flops(model, tokens) != count_flops(model, 128)
    model.config._attn_implementation = "eager"  # QK^T and AV as plain matmuls
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(**make_inputs_for("vit", batch=1))
    per_module = counter.get_flop_counts()
    measured = sum(sum(per_module[f"ViTForImageClassification.vit.layers.{i}"].values()) for i in range(3))
    assert count_flops(model) == pytest.approx(measured, rel=0.01)
    scores = compute_importance(model, method="l2", progress=False)
    plan = plan_from_flops(scores, model, flops_reduction=0.3, seq_len=tokens)
    assert plan.metadata["flops"]["seq_len"] == tokens
    default = plan_from_flops(scores, model, flops_reduction=0.3)  # the FLOPs budget counts the patches by default
    assert default.metadata["flops"]["seq_len"] == tokens and default.to_dict() == plan.to_dict()

