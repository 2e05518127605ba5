"""The real MiniLM and SmolLM2 weights from the offline assets prune, save and reload with identical outputs."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import hf_prune_assets as assets
from hf_prune import layer_shapes, load_pruned, prune_model

pytestmark = pytest.mark.slow


def test_minilm_prunes_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(assets.minilm_dir(), num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_dir())
    batch = tokenizer(["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate clichés"],
                      padding=True, return_tensors="pt")
    heads = {i: list(range(0, 12, 2)) for i in range(6)}
    heads[5] = list(range(12))  # the last layer loses every head
    prune_model(model, heads=heads, neurons={i: list(range(i * 100, i * 100 + 768)) for i in range(6)})
    assert [s.heads for s in layer_shapes(model)] == [6, 6, 6, 6, 6, 0]
    assert {s.ffn for s in layer_shapes(model)} == {768}
    model.save_pretrained(tmp_path)
    loaded = load_pruned(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=0, rtol=0)


def test_smollm2_gqa_prunes_and_reloads(tmp_path):
    model, tokenizer = assets.load_smollm2()
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    # 9 query heads in 3 groups of 3: drop a whole group in layer 0, one head per group elsewhere
    heads = {0: [3, 4, 5]}
    heads.update({i: [0, 4, 8] for i in range(1, 30)})
    prune_model(model, heads=heads, neurons={i: list(range(0, 1536, 6)) for i in range(30)})
    shapes = layer_shapes(model)
    assert (shapes[0].heads, shapes[0].kv_heads) == (6, 2) and (shapes[1].heads, shapes[1].kv_heads) == (6, 3)
    model.save_pretrained(tmp_path)
    loaded = load_pruned(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**prompt).logits, model(**prompt).logits, atol=0, rtol=0)
    kwargs = dict(max_new_tokens=8, do_sample=False)
    assert torch.equal(loaded.generate(**prompt, **kwargs), model.generate(**prompt, **kwargs))


def _held_out_error(moments, dense, pruned, layout):
    """Summed squared error of every pruned down projection against the dense one, on the held-out inputs."""
    from hf_prune.architecture.layouts import get_layers, get_submodule

    total = 0.0
    for moment, d_layer, p_layer in zip(moments[1], get_layers(dense), get_layers(pruned)):
        d, p = get_submodule(d_layer, layout.down), get_submodule(p_layer, layout.down)
        keep = p.kept  # (K,) columns of the dense projection that the pruned one reads
        delta = torch.cat([d.weight.detach().double(), d.bias.detach().double()[:, None]], 1)  # (out, F + 1)
        delta[:, keep] -= p.weight.detach().double()
        delta[:, -1] -= p.bias.detach().double()
        total += torch.trace(delta @ moment @ delta.t()).item()
    return total


def test_minilm_reselected_units_reconstruct_held_out_sentences_better():
    import copy

    from hf_prune import (
        apply_mask_tuning,
        calibration_moments,
        compute_importance,
        get_layout,
        plan_from_sparsity,
        reselect_units,
    )
    from hf_prune.architecture.layouts import get_layers, get_submodule

    dense = AutoModelForSequenceClassification.from_pretrained(assets.minilm_dir(), num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_dir())
    sentences = assets.movie_reviews(seed=0)[0]["sentence"]
    batches = [tokenizer(sentences[k:k + 16], padding=True, truncation=True, max_length=64, return_tensors="pt")
               for k in range(0, 256, 16)]
    calibration, held_out = [dict(b) for b in batches[:12]], [dict(b) for b in batches[12:]]
    moments = calibration_moments(dense, calibration)
    plan = plan_from_sparsity(compute_importance(dense, None, "l2"), ffn_sparsity=0.5)
    held_out_moments = calibration_moments(dense, held_out)
    errors = {}
    for name, chosen in (("plan", plan), ("reselected", reselect_units(dense, plan, moments))):
        pruned = copy.deepcopy(dense)
        for layer, removed in chosen.neurons.items():  # remember which dense columns each layer keeps
            get_submodule(get_layers(pruned)[layer], get_layout(dense).down).kept = [
                n for n in range(1536) if n not in set(removed)]
        apply_mask_tuning(pruned, chosen, moments, reconstruct="weights")
        errors[name] = _held_out_error(held_out_moments, dense, pruned, get_layout(dense))
    assert [s.ffn for s in layer_shapes(pruned)] == plan.kept_widths()["ffn"]  # the same counts per layer
    assert errors["reselected"] < 0.8 * errors["plan"]
