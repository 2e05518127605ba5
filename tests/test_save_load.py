"""save_pretrained -> load_pruned gives the same model; plain from_pretrained never silently re-initialises."""

import json

import pytest
import torch
import transformers as tf
from test_surgery import request_for
from tiny_models import DECODERS, GROUPED, TINY, make_inputs, make_inputs_for, make_model

from hf_prune import layer_shapes, load_pruned, prune_model


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_save_then_load_pruned_gives_identical_logits(model_type, tmp_path):
    model = make_model(model_type)
    heads, neurons = request_for(model_type)
    prune_model(model, heads=heads, neurons=neurons)
    inputs = make_inputs_for(model_type)
    model.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["hf_prune"]["format_version"] == 2 and saved["hf_prune"]["heads"] == model.config.hf_prune["heads"]

    loaded = load_pruned(tmp_path)
    assert type(loaded) is type(model)
    assert layer_shapes(loaded) == layer_shapes(model)
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), atol=0, rtol=0)
    if model_type in DECODERS:
        prompt = {"input_ids": inputs["input_ids"][1:], "attention_mask": inputs["attention_mask"][1:]}
        kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(model.generate(**prompt, **kwargs), loaded.generate(**prompt, **kwargs))


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_non_uniform_checkpoint_fails_loudly_with_plain_from_pretrained(model_type, tmp_path):
    model = make_model(model_type)
    heads, neurons = request_for(model_type)
    prune_model(model, heads=heads, neurons=neurons)
    model.save_pretrained(tmp_path)
    with pytest.raises(Exception, match="mismatch|size"):
        type(model).from_pretrained(tmp_path)


@pytest.mark.parametrize("model_type", sorted(GROUPED))
def test_uniform_gqa_result_loads_with_plain_from_pretrained(model_type, tmp_path):
    model = make_model(model_type)
    prune_model(model, heads={i: [0, 1, 2] for i in range(3)}, neurons={i: list(range(5)) for i in range(3)})
    model.save_pretrained(tmp_path)
    plain = tf.AutoModelForCausalLM.from_pretrained(tmp_path)
    inputs = make_inputs()
    torch.testing.assert_close(logits(plain, inputs), logits(model, inputs), atol=0, rtol=0)


def test_uniform_bert_ffn_loads_with_plain_from_pretrained(tmp_path):
    model = make_model("bert")
    prune_model(model, neurons={i: list(range(10)) for i in range(3)})
    model.save_pretrained(tmp_path)
    plain = tf.BertForSequenceClassification.from_pretrained(tmp_path)
    inputs = make_inputs()
    torch.testing.assert_close(logits(plain, inputs), logits(model, inputs), atol=0, rtol=0)


def test_bfloat16_stays_bfloat16(tmp_path):
    # load in bf16 the usual way (a float32 model cast with .to() would also cast the rotary buffers)
    make_model("llama").save_pretrained(tmp_path / "dense")
    model = tf.LlamaForCausalLM.from_pretrained(tmp_path / "dense", dtype=torch.bfloat16)
    prune_model(model, heads={0: [0, 3], 1: [0, 1, 2]}, neurons={2: list(range(20))})
    model.save_pretrained(tmp_path)
    for kwargs in ({}, {"dtype": torch.bfloat16}):
        loaded = load_pruned(tmp_path, **kwargs)
        assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
        inputs = make_inputs()
        torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), atol=0, rtol=0)


def test_model_class_may_be_an_auto_class_or_a_concrete_class(tmp_path):
    model = make_model("bert")
    prune_model(model, heads={0: [1, 2]}, neurons={1: [4]})
    model.save_pretrained(tmp_path)
    base = load_pruned(tmp_path, model_class=tf.AutoModel)
    assert type(base) is tf.BertModel and layer_shapes(base) == layer_shapes(model)
    task = load_pruned(tmp_path, model_class=tf.BertForSequenceClassification)
    torch.testing.assert_close(logits(task, make_inputs()), logits(model, make_inputs()), atol=0, rtol=0)
    auto_task = load_pruned(tmp_path, model_class=tf.AutoModelForSequenceClassification)
    assert type(auto_task) is tf.BertForSequenceClassification
    with pytest.raises(ValueError, match="model_class"):
        load_pruned(tmp_path, model_class=int)


def test_loaded_model_can_be_pruned_saved_and_loaded_again(tmp_path):
    model = make_model("gpt2")
    prune_model(model, heads={0: [0]}, neurons={0: [0]})
    model.save_pretrained(tmp_path / "a")
    again = load_pruned(tmp_path / "a")
    prune_model(again, heads={0: [0], 2: [1, 2, 3, 0]}, neurons={1: list(range(37))})
    again.save_pretrained(tmp_path / "b")
    final = load_pruned(tmp_path / "b")
    assert [s.heads for s in layer_shapes(final)] == [2, 4, 0]
    assert [s.ffn for s in layer_shapes(final)] == [36, 0, 37]
    assert final.config.hf_prune["base"] == {"heads": 4, "kv_heads": 4, "ffn": 37, "num_layers": 3}
    torch.testing.assert_close(logits(final, make_inputs()), logits(again, make_inputs()), atol=0, rtol=0)


def test_unpruned_checkpoint_loads_like_from_pretrained(tmp_path):
    model = make_model("opt")
    model.save_pretrained(tmp_path)
    loaded = load_pruned(tmp_path)
    torch.testing.assert_close(logits(loaded, make_inputs()), logits(model, make_inputs()), atol=0, rtol=0)


def _save_with_entry(tmp_path, edit):
    model = make_model("llama")
    prune_model(model, heads={0: [0, 3]}, neurons={1: [0]})
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    edit(config["hf_prune"])
    (tmp_path / "config.json").write_text(json.dumps(config))


DAMAGED = [
    (lambda e: e.update(format_version=99), "upgrade hf_prune"),
    (lambda e: e.update(heads="6,6,6"), "heads"),
    (lambda e: e.pop("ffn"), "ffn` is missing"),
    (lambda e: e["ffn"].__setitem__(0, -1), r"ffn\[0\]"),
    (lambda e: e["heads"].__setitem__(1, 60), r"heads\[1\]"),
    (lambda e: e["heads"].append(6), "layers"),
    (lambda e: e.update(num_layers=7), "num_layers"),
    (lambda e: e["kv_heads"].__setitem__(0, 0), "cannot be built"),
    (lambda e: e["ffn"].__setitem__(2, 1.5), "integer"),
]


@pytest.mark.parametrize("edit,message", DAMAGED)
def test_damaged_entry_gives_a_clear_error(edit, message, tmp_path):
    _save_with_entry(tmp_path, edit)
    with pytest.raises(ValueError, match=message):
        load_pruned(tmp_path)


def test_weights_that_disagree_with_the_entry_are_refused(tmp_path):
    _save_with_entry(tmp_path, lambda e: e["ffn"].__setitem__(1, 30))  # weights say 36
    with pytest.raises(ValueError, match="do not match"):
        load_pruned(tmp_path)


def test_remote_code_and_mismatch_flags_are_refused(tmp_path):
    make_model("bert").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="remote code"):
        load_pruned(tmp_path, trust_remote_code=True)
    with pytest.raises(ValueError, match="ignore_mismatched_sizes"):
        load_pruned(tmp_path, ignore_mismatched_sizes=True)


def test_push_to_hub_uploads_the_entry(tmp_path, monkeypatch):
    """push_to_hub goes through huggingface_hub; only its network boundary (create_repo/create_commit) is replaced."""
    import huggingface_hub

    model = make_model("bert")
    prune_model(model, heads={0: [0]}, neurons={1: [1, 2]})
    uploaded = {}

    def fake_create_commit(self, repo_id, operations, **kwargs):
        for op in operations:
            source = op.path_or_fileobj
            uploaded[op.path_in_repo] = source.read() if hasattr(source, "read") else open(source, "rb").read()
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message="", commit_description="",
            oid="0" * 40, pr_url=None,
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: huggingface_hub.RepoUrl(
        f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", fake_create_commit)
    model.push_to_hub("someone/pruned-bert", token="hf_fake")
    config = json.loads(uploaded["config.json"])
    assert config["hf_prune"]["heads"] == [3, 4, 4] and config["hf_prune"]["ffn"] == [37, 35, 37]
    assert "model.safetensors" in uploaded


def test_from_pretrained_kwargs_pass_through(tmp_path):
    model = make_model("llama")
    prune_model(model, heads={1: [0, 1, 2]}, neurons={0: list(range(7))})
    model.save_pretrained(tmp_path)
    loaded = load_pruned(tmp_path, device_map="cpu", dtype=torch.float16)
    assert {p.dtype for p in loaded.parameters()} == {torch.float16}
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    assert layer_shapes(loaded) == layer_shapes(model)
