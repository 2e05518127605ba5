"""export_gguf: llama.cpp model files for dense, uniform, non-uniform and depth-pruned llama-style decoders."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import transformers as tf
from tiny_models import make_model

import hf_prune
from hf_prune.deploy.gguf_export import _rotary_rows

gguf = pytest.importorskip("gguf")

HIDDEN, HEAD_DIM = 64, 8


@pytest.fixture(scope="module")
def tokenizer():
    """A real byte-level BPE tokenizer (trained here on a few sentences), as llama-style decoders use."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    text = ["the quick brown fox jumps over the lazy dog", "pruned models load anywhere", "llama.cpp runs gguf files"]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(text * 20, trainer)
    return tf.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                      unk_token="<|endoftext|>", pad_token="</s>")


def tiny_llama(tokenizer, layers: int = 4, tied: bool = False, seed: int = 0) -> tf.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = tf.LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                            head_dim=HEAD_DIM, intermediate_size=96, vocab_size=len(tokenizer),
                            max_position_embeddings=128, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    return tf.LlamaForCausalLM(config).eval()


def read(path):
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type) if t.tensor_type not in (
            gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else np.asarray(t.data)
        tensors[t.name] = np.asarray(data, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist())))
    return fields, tensors


def expected_tensors(model) -> dict[str, np.ndarray]:
    """What the file must hold for a model whose layers all have heads and neurons."""
    out = {"token_embd.weight": model.model.embed_tokens.weight, "output_norm.weight": model.model.norm.weight}
    if not model.config.tie_word_embeddings:
        out["output.weight"] = model.lm_head.weight
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        out |= {f"blk.{i}.attn_norm.weight": layer.input_layernorm.weight,
                f"blk.{i}.attn_q.weight": _rotary_rows(attn.q_proj.weight, HEAD_DIM),
                f"blk.{i}.attn_k.weight": _rotary_rows(attn.k_proj.weight, HEAD_DIM),
                f"blk.{i}.attn_v.weight": attn.v_proj.weight, f"blk.{i}.attn_output.weight": attn.o_proj.weight,
                f"blk.{i}.ffn_norm.weight": layer.post_attention_layernorm.weight,
                f"blk.{i}.ffn_gate.weight": mlp.gate_proj.weight, f"blk.{i}.ffn_up.weight": mlp.up_proj.weight,
                f"blk.{i}.ffn_down.weight": mlp.down_proj.weight}
    return {name: t.detach().float().numpy() for name, t in out.items()}


def assert_same_tensors(path, model):
    _, tensors = read(path)
    expected = expected_tensors(model)
    assert tensors.keys() == expected.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(tensors[name], array, err_msg=name)


def test_rotary_rows_pairs_each_frequency_with_its_partner():
    # one head of size 4: transformers pairs rows (0, 2) and (1, 3); llama.cpp wants them adjacent
    weight = torch.arange(8.0).reshape(4, 2)
    assert _rotary_rows(weight, 4)[:, 0].tolist() == [0.0, 4.0, 2.0, 6.0]


def test_dense_model_round_trips_as_llama(tmp_path, tokenizer):
    model = tiny_llama(tokenizer)
    path = hf_prune.export_gguf(model, tmp_path / "dense.gguf", dtype="f32", tokenizer=tokenizer)
    fields, _ = read(path)
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == 4
    assert fields["llama.attention.head_count"] == 8 and fields["llama.attention.head_count_kv"] == 4
    assert fields["llama.feed_forward_length"] == 96
    assert fields["llama.rope.dimension_count"] == HEAD_DIM
    assert_same_tensors(path, model)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.tokens"] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert fields["tokenizer.ggml.token_type"][:3] == [3, 3, 3] and set(fields["tokenizer.ggml.token_type"][3:]) == {1}
    assert fields["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert len(fields["tokenizer.ggml.merges"]) > 0


def test_uniformly_pruned_and_shallower_model_stays_llama(tmp_path, tokenizer):
    model = tiny_llama(tokenizer, tied=True)
    kept = (0, 1, 3)
    hf_prune.prune_model(model, heads={i: [0, 1] for i in kept}, neurons={i: list(range(40)) for i in kept}, layers=[2])
    path = hf_prune.export_gguf(model, tmp_path / "uniform.gguf", dtype="f32", tokenizer=tokenizer)
    fields, _ = read(path)
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == 3
    assert (fields["llama.attention.head_count"], fields["llama.attention.head_count_kv"]) == (6, 3)
    assert fields["llama.feed_forward_length"] == 56
    assert_same_tensors(path, model)  # tied: no output.weight, llama.cpp reuses token_embd


def test_non_uniform_model_uses_per_layer_counts(tmp_path, tokenizer):
    model = tiny_llama(tokenizer)
    hf_prune.prune_model(model, heads={0: [0, 1], 2: [2, 3, 4, 5]}, neurons={1: list(range(50)), 3: [7]})
    path = hf_prune.export_gguf(model, tmp_path / "ragged.gguf", dtype="f32", tokenizer=tokenizer)
    fields, _ = read(path)
    assert fields["general.architecture"] == "deci"
    assert fields["deci.attention.head_count"] == [6, 8, 4, 8]
    assert fields["deci.attention.head_count_kv"] == [3, 4, 2, 4]
    assert fields["deci.feed_forward_length"] == [96, 46, 96, 95]
    assert fields["deci.attention.key_length"] == HEAD_DIM and fields["deci.attention.value_length"] == HEAD_DIM
    assert_same_tensors(path, model)


def test_qwen2_biases_follow_their_rows(tmp_path, tokenizer):
    torch.manual_seed(0)
    config = tf.Qwen2Config(hidden_size=HIDDEN, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4,
                            intermediate_size=96, vocab_size=len(tokenizer), max_position_embeddings=128)
    model = tf.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    hf_prune.prune_model(model, heads={1: [0, 1]}, neurons={2: list(range(10))})
    path = hf_prune.export_gguf(model, tmp_path / "qwen2.gguf", dtype="f32", tokenizer=tokenizer)
    fields, tensors = read(path)
    assert fields["general.architecture"] == "deci" and fields["deci.attention.head_count"] == [8, 6, 8]
    attn = model.model.layers[1].self_attn
    np.testing.assert_array_equal(tensors["blk.1.attn_q.bias"], _rotary_rows(attn.q_proj.bias[:, None], HEAD_DIM)[:, 0]
                                  .detach().numpy())
    np.testing.assert_array_equal(tensors["blk.1.attn_k.bias"], _rotary_rows(attn.k_proj.bias[:, None], HEAD_DIM)[:, 0]
                                  .detach().numpy())
    np.testing.assert_array_equal(tensors["blk.1.attn_v.bias"], attn.v_proj.bias.detach().numpy())
    np.testing.assert_array_equal(tensors["blk.1.attn_q.weight"], _rotary_rows(attn.q_proj.weight, HEAD_DIM).detach()
                                  .numpy())


def test_layers_without_heads_or_neurons_get_an_equivalent_form(tmp_path, tokenizer):
    model = tiny_llama(tokenizer, layers=5)
    all_heads, all_neurons = list(range(8)), list(range(96))
    # layer 0: no heads (first layer: padded with one zero head); layer 1: no FFN (padded with one zero neuron);
    # layer 3: neither (the identity, left out); layer 4: no heads (not first: written without attention)
    hf_prune.prune_model(model, heads={0: all_heads, 3: all_heads, 4: all_heads}, neurons={1: all_neurons, 3: all_neurons})
    path = hf_prune.export_gguf(model, tmp_path / "edges.gguf", dtype="f32", tokenizer=tokenizer)
    fields, tensors = read(path)
    assert fields["deci.block_count"] == 4
    assert fields["deci.attention.head_count"] == [1, 8, 8, 0]
    assert fields["deci.attention.head_count_kv"] == [1, 4, 4, 0]
    assert fields["deci.feed_forward_length"] == [96, 1, 96, 96]
    assert not tensors["blk.0.attn_output.weight"].any() and tensors["blk.0.attn_q.weight"].shape == (HEAD_DIM, HIDDEN)
    assert not tensors["blk.1.ffn_down.weight"].any() and tensors["blk.1.ffn_up.weight"].shape == (1, HIDDEN)
    assert "blk.3.attn_q.weight" not in tensors and "blk.3.ffn_up.weight" in tensors
    layers = model.model.layers
    np.testing.assert_array_equal(tensors["blk.2.ffn_up.weight"], layers[2].mlp.up_proj.weight.detach().numpy())
    np.testing.assert_array_equal(tensors["blk.3.ffn_down.weight"], layers[4].mlp.down_proj.weight.detach().numpy())


@pytest.mark.parametrize("dtype, kind", [("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")])
def test_dtypes(tmp_path, tokenizer, dtype, kind):
    model = tiny_llama(tokenizer)
    path = hf_prune.export_gguf(model, tmp_path / f"{dtype}.gguf", dtype=dtype, tokenizer=tokenizer)
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == kind and types["blk.0.attn_norm.weight"] == "F32"
    _, tensors = read(path)
    expected = expected_tensors(model)
    for name in ("blk.0.attn_q.weight", "blk.1.ffn_down.weight"):
        np.testing.assert_allclose(tensors[name], expected[name], atol=0.02 * np.abs(expected[name]).max())


def test_q8_0_falls_back_to_f16_for_rows_not_a_multiple_of_32(tmp_path, tokenizer):
    model = tiny_llama(tokenizer)
    hf_prune.prune_model(model, neurons={1: list(range(50))})  # ffn_down of layer 1 has rows of 46
    with pytest.warns(UserWarning, match="blk.1.ffn_down.weight"):
        path = hf_prune.export_gguf(model, tmp_path / "q8.gguf", dtype="q8_0", tokenizer=tokenizer)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.1.ffn_down.weight"] == "F16" and types["blk.1.ffn_up.weight"] == "Q8_0"


def test_exports_from_a_saved_folder_with_its_tokenizer(tmp_path, tokenizer):
    model = tiny_llama(tokenizer)
    hf_prune.prune_model(model, heads={1: [0, 1]}, layers=[3])
    folder = hf_prune.save_pruned(model, tmp_path / "saved", tokenizer=tokenizer)
    path = hf_prune.export_gguf(folder, tmp_path / "from_folder.gguf", dtype="f32")
    assert_same_tensors(path, model)
    assert read(path)[0]["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<s>", "</s>"]


def _assert_refused(tmp_path, call, error, match):
    with pytest.raises(error, match=match):
        call()
    assert list(tmp_path.iterdir()) == [] or all(p.name == "saved" for p in tmp_path.iterdir())


def test_bad_input_raises_and_writes_nothing(tmp_path, tokenizer):
    target = tmp_path / "out.gguf"
    gpt2 = make_model("gpt2")
    _assert_refused(tmp_path, lambda: hf_prune.export_gguf(gpt2, target, tokenizer=tokenizer), ValueError,
                    "llama-style decoders")
    qwen3 = make_model("qwen3")  # per-head q/k norms: not in llama.cpp's llama graph
    _assert_refused(tmp_path, lambda: hf_prune.export_gguf(qwen3, target, tokenizer=tokenizer), ValueError, "qwen3")
    biased = tiny_llama(tokenizer)
    biased.model.layers[1].mlp.down_proj.bias = torch.nn.Parameter(torch.zeros(HIDDEN))
    _assert_refused(tmp_path, lambda: hf_prune.export_gguf(biased, target, tokenizer=tokenizer), ValueError,
                    "has a bias")
    model = tiny_llama(tokenizer)
    _assert_refused(tmp_path, lambda: hf_prune.export_gguf(model, target, dtype="q4_k", tokenizer=tokenizer),
                    ValueError, "dtype must be one of")
    quantized = hf_prune.quantize_dynamic_int8(tiny_llama(tokenizer))
    _assert_refused(tmp_path, lambda: hf_prune.export_gguf(quantized, target, tokenizer=tokenizer), ValueError,
                    "quantized")
    _assert_refused(tmp_path, lambda: hf_prune.export_gguf(model, target), ValueError, "needs the model's tokenizer")
    hf_prune.save_pruned(model, tmp_path / "saved")  # no tokenizer saved with it
    _assert_refused(tmp_path, lambda: hf_prune.export_gguf(tmp_path / "saved", target), ValueError,
                    "needs the model's tokenizer")
    _assert_refused(tmp_path, lambda: hf_prune.export_gguf("nowhere/at/all", target), ValueError, "no config.json")


def test_existing_file_is_kept_unless_overwrite(tmp_path, tokenizer):
    model = tiny_llama(tokenizer)
    target = tmp_path / "out.gguf"
    target.write_bytes(b"previous")
    with pytest.raises(FileExistsError):
        hf_prune.export_gguf(model, target, tokenizer=tokenizer)
    assert target.read_bytes() == b"previous"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hf_prune.export_gguf(model, target, tokenizer=tokenizer, overwrite=True)
    assert read(target)[0]["general.architecture"] == "llama"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]  # no temporary file left


@pytest.mark.slow
def test_dense_smollm2_matches_llama_cpp_converter_output():
    """The SmolLM2 asset was written by llama.cpp's own converter (Q4_1); the offline loader dequantises it.
    Exported to f32, every tensor equals the asset's tensor dequantised by gguf (names, shapes, q/k row order),
    and the architecture, hyperparameter and tokenizer metadata equal the asset's."""
    import tempfile

    from hf_prune_assets import load_smollm2, smollm2_gguf

    model, tok = load_smollm2()
    folder, name = smollm2_gguf()
    with tempfile.TemporaryDirectory() as tmp:
        path = hf_prune.export_gguf(model, f"{tmp}/smollm2.gguf", dtype="f32", tokenizer=tok)
        ours, reference = gguf.GGUFReader(path), gguf.GGUFReader(folder / name)
        theirs = {t.name: t for t in reference.tensors}
        assert {t.name for t in ours.tensors} == set(theirs)
        for t in ours.tensors:
            ref = theirs[t.name]
            assert t.shape.tolist() == ref.shape.tolist(), t.name
            expected = gguf.quants.dequantize(ref.data, ref.tensor_type).reshape(-1)
            np.testing.assert_array_equal(np.asarray(t.data).reshape(-1), expected, err_msg=t.name)
        compared = 0
        for key, field in reference.fields.items():
            if key.startswith(("llama.", "tokenizer.")) or key == "general.architecture":
                assert ours.fields[key].contents() == field.contents(), key
                compared += 1
        assert compared >= 20


def test_command_line_exports_and_refuses_bad_input(tmp_path, tokenizer, capsys):
    from hf_prune.cli.export import main

    model = tiny_llama(tokenizer)
    hf_prune.prune_model(model, heads={2: [0, 1]})
    folder = hf_prune.save_pruned(model, tmp_path / "saved", tokenizer=tokenizer)
    assert main(["gguf", str(folder), str(tmp_path / "m.gguf"), "--dtype", "f32"]) == 0
    assert_same_tensors(tmp_path / "m.gguf", model)
    capsys.readouterr()
    assert main(["gguf", str(tmp_path / "missing"), str(tmp_path / "n.gguf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hf-prune-export: error:") and "not a folder" in err[0]
    assert main(["gguf", str(folder), str(tmp_path / "m.gguf")]) == 2  # exists, no --overwrite
    assert "exists" in capsys.readouterr().err
    assert not (tmp_path / "n.gguf").exists()
