"""The real MiniLM and SmolLM2 weights from the offline assets prune, save and reload with identical outputs."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_prune import assets, layer_shapes, load_pruned, prune_model

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
