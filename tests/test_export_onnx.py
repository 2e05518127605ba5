"""ONNX export (`hf_prune.deploy.onnx_export.export_onnx`): onnxruntime matches PyTorch on non-uniformly pruned models.

Each dynamo export of a tiny model takes several seconds on a busy 2-core machine, so the exported folders are
module fixtures shared by the tests that read them; argument checks never export.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import transformers as tf
from tiny_models import make_model

import hf_prune
from hf_prune.cli.export import main as export_main
from hf_prune.deploy import onnx_export
from hf_prune.deploy.onnx_export import export_onnx

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SHAPES = [(1, 5), (3, 11)]  # (batch, sequence): two of each, so the axes must be dynamic
TOLERANCE = 1e-4


def tiny_tokenizer():
    """A WordPiece tokenizer over single letters (57 ids, under the tiny models' 97)."""
    letters = [chr(97 + i) for i in range(26)]
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *("##" + c for c in letters)]
    return tf.BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})


def random_inputs(batch: int, seq: int, vocab: int = 97, segments: bool = True, seed: int = 0) -> dict:
    """int64 inputs with padding at the end of row 0 (when there are several rows) and a second segment."""
    g = torch.Generator().manual_seed(seed + 10 * batch + seq)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)  # (B, T)
    mask = torch.ones_like(ids)
    if batch > 1:
        mask[0, seq // 2:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if segments:
        inputs["token_type_ids"] = (torch.arange(seq) >= seq // 3).long().expand(batch, seq).contiguous()
    return inputs


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(sess, inputs: dict) -> list[np.ndarray]:
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {n: inputs[n].numpy() for n in names})


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def snapshot(model) -> tuple[dict, dict]:
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {name: m.training for name, m in model.named_modules()})


@pytest.fixture(scope="module")
def pruned_bert():
    """BERT classifier: layer 0 lost every head, layer 1 some heads and neurons, layer 2 every FFN neuron."""
    model = make_model("bert")
    hf_prune.prune_model(model, heads={0: [0, 1, 2, 3], 1: [1], 2: [0, 3]},
                         neurons={0: [2, 4, 6, 8, 10], 1: list(range(20)), 2: list(range(37))})
    return model


@pytest.fixture(scope="module")
def exported(pruned_bert, tmp_path_factory):
    """The pruned BERT exported with int8 and a tokenizer, from training mode; its state before the export."""
    pruned_bert.train()
    before = snapshot(pruned_bert)
    folder = export_onnx(pruned_bert, tmp_path_factory.mktemp("bert") / "onnx", quantize_int8=True,
                         tokenizer=tiny_tokenizer())
    after_modes = {name: m.training for name, m in pruned_bert.named_modules()}
    pruned_bert.eval()
    return folder, before, after_modes


def test_the_fixture_is_non_uniform_with_empty_blocks(pruned_bert):
    shapes = hf_prune.layer_shapes(pruned_bert)
    assert [s.heads for s in shapes] == [0, 3, 2]
    assert [s.ffn for s in shapes] == [32, 17, 0]


@pytest.mark.parametrize("batch,seq", SHAPES)
def test_onnxruntime_logits_equal_pytorch(exported, pruned_bert, batch, seq):
    folder, _, _ = exported
    inputs = random_inputs(batch, seq)
    with torch.no_grad():
        expected = pruned_bert(**inputs).logits
    (logits,) = run_onnx(session(folder / "model.onnx"), inputs)
    assert logits.shape == (batch, 3)
    assert max_diff(logits, expected) <= TOLERANCE


def test_inputs_outputs_and_axes(exported):
    folder, _, _ = exported
    sess = session(folder / "model.onnx")
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    for i in sess.get_inputs():
        assert i.type == "tensor(int64)"
        assert all(isinstance(d, str) for d in i.shape), i.shape  # symbolic batch and sequence


def test_folder_has_config_and_tokenizer(exported, pruned_bert):
    folder, _, _ = exported
    assert {"model.onnx", "model_int8.onnx", "config.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["hf_prune"]["heads"] == [0, 3, 2]
    assert config["hf_prune"]["ffn"] == [32, 17, 0]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


ORT_ONLY = """
import json, sys
for name in ("hf_prune", "torch", "transformers"):
    sys.modules[name] = None  # importing any of them now fails
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

folder = sys.argv[1]
tokenizer = Tokenizer.from_file(folder + "/tokenizer.json")
tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
encodings = tokenizer.encode_batch([("a short one", "and a pair"), "a longer sentence with more letters"])
feed = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings]}
sess = ort.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
feed = {i.name: np.array(feed[i.name], dtype=np.int64) for i in sess.get_inputs()}
print(json.dumps({"feed": {k: v.tolist() for k, v in feed.items()}, "logits": sess.run(None, feed)[0].tolist()}))
"""


def test_runs_with_onnxruntime_and_tokenizers_only(exported, pruned_bert):
    folder, _, _ = exported
    done = subprocess.run([sys.executable, "-c", ORT_ONLY, str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    feed = {k: torch.tensor(v) for k, v in result["feed"].items()}
    assert feed["attention_mask"].min() == 0 and feed["token_type_ids"].max() == 1  # padding and a sentence pair
    with torch.no_grad():
        expected = pruned_bert(**feed).logits
    assert max_diff(result["logits"], expected) <= TOLERANCE


def test_int8_file_is_smaller_and_close(exported, pruned_bert):
    folder, _, _ = exported
    float_file, int8_file = folder / "model.onnx", folder / "model_int8.onnx"
    assert int8_file.stat().st_size < float_file.stat().st_size
    inputs = random_inputs(3, 11)
    (reference,) = run_onnx(session(float_file), inputs)
    (logits,) = run_onnx(session(int8_file), inputs)
    assert logits.shape == reference.shape
    assert max_diff(logits, reference) <= 0.01  # logits ~0.03 here; int8 typically within 0.002


def test_the_model_is_left_unchanged(exported, pruned_bert):
    _, (state, modes), modes_after = exported
    assert modes_after == modes  # training mode restored, module by module
    after = pruned_bert.state_dict()
    assert state.keys() == after.keys()
    for key, value in state.items():
        assert torch.equal(value, after[key]), key
        assert after[key].device.type == "cpu" and after[key].dtype == value.dtype
    assert pruned_bert.config.architectures is None  # config.json named the class, the model's config was not touched


def test_base_model_from_a_saved_folder(tmp_path):
    """A pruned BertModel saved with its tokenizer, exported from the path by `hf-prune-export onnx`."""
    torch.manual_seed(0)
    config = tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                           vocab_size=97, max_position_embeddings=64)
    model = tf.BertModel(config).eval()
    hf_prune.prune_model(model, heads={0: [1, 2]}, neurons={1: list(range(30))})
    hf_prune.save_pruned(model, tmp_path / "saved", tokenizer=tiny_tokenizer())
    target = tmp_path / "onnx"
    target.mkdir()
    (target / "stale.txt").write_text("from an earlier export")
    assert export_main(["onnx", str(tmp_path / "saved"), str(target), "--overwrite"]) == 0  # the command line
    names = {p.name for p in target.iterdir()}
    assert "stale.txt" not in names and "model_int8.onnx" not in names
    assert {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    sess = session(target / "model.onnx")
    assert [o.name for o in sess.get_outputs()] == ["last_hidden_state"]
    for batch, seq in SHAPES:
        inputs = random_inputs(batch, seq)
        with torch.no_grad():
            expected = model(**inputs).last_hidden_state
        (hidden,) = run_onnx(sess, inputs)
        assert hidden.shape == (batch, seq, 32)
        assert max_diff(hidden, expected) <= TOLERANCE


def test_llama_decoder_logits(tmp_path):
    """A GQA decoder: layer 0 lost every head, layer 1 one head per key/value group, layer 2 every FFN neuron."""
    model = make_model("llama")
    hf_prune.prune_model(model, heads={0: list(range(6)), 1: [0, 3]}, neurons={1: [1, 5], 2: list(range(37))})
    export_onnx(model, tmp_path / "onnx")
    sess = session(tmp_path / "onnx" / "model.onnx")
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    for batch, seq in SHAPES:
        inputs = random_inputs(batch, seq, segments=False)
        with torch.no_grad():
            expected = model(**inputs, use_cache=False).logits
        (logits,) = run_onnx(sess, inputs)
        assert logits.shape == (batch, seq, 97)
        assert max_diff(logits, expected) <= TOLERANCE


def test_torchscript_fallback_when_dynamo_fails(tmp_path, monkeypatch):
    """A dynamo failure falls back to the TorchScript exporter (with a warning); DistilBERT with an emptied attention."""
    model = make_model("distilbert")
    hf_prune.prune_model(model, heads={1: [0, 1, 2, 3]}, neurons={0: [3, 4]})

    def broken(*args, **kwargs):
        raise RuntimeError("simulated torch.export failure")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    with pytest.warns(UserWarning, match="TorchScript"):
        export_onnx(model, tmp_path / "onnx")
    sess = session(tmp_path / "onnx" / "model.onnx")
    for batch, seq in SHAPES:
        inputs = random_inputs(batch, seq, segments=False)
        with torch.no_grad():
            expected = model(**inputs).logits
        assert max_diff(run_onnx(sess, inputs)[0], expected) <= TOLERANCE


# ----------------------------------------------------------------------------- refusals: nothing written


def assert_nothing_written(parent, before: set) -> None:
    assert {p.name for p in parent.iterdir()} == before


@pytest.mark.parametrize("opset", [17, 10_000, "18", 18.0, True])
def test_bad_opset(tmp_path, opset):
    with pytest.raises(ValueError, match="opset"):
        export_onnx(make_model("bert"), tmp_path / "onnx", opset=opset)
    assert_nothing_written(tmp_path, set())


@pytest.mark.parametrize("thing", [42, None, torch.nn.Linear(2, 2)])
def test_not_a_model(tmp_path, thing):
    with pytest.raises(ValueError, match="model_or_path"):
        export_onnx(thing, tmp_path / "onnx")
    assert_nothing_written(tmp_path, set())


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        export_onnx(tmp_path / "empty", tmp_path / "onnx")
    assert_nothing_written(tmp_path, {"empty"})


def test_unsupported_model_type(tmp_path):
    config = tf.AlbertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
                             vocab_size=97, embedding_size=16)
    with pytest.raises(ValueError, match="albert"):
        export_onnx(tf.AlbertModel(config), tmp_path / "onnx")
    assert_nothing_written(tmp_path, set())


def test_unsupported_task_head(tmp_path):
    model = tf.BertForMultipleChoice(make_model("bert").config)  # inputs (batch, choices, sequence)
    with pytest.raises(ValueError, match="BertForMultipleChoice"):
        export_onnx(model, tmp_path / "onnx")
    assert_nothing_written(tmp_path, set())


def test_existing_folder_needs_overwrite(tmp_path):
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_onnx(make_model("bert"), tmp_path / "onnx")
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == ["keep.txt"]
    assert_nothing_written(tmp_path, {"onnx"})


def test_torch_int8_model_is_refused(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = hf_prune.quantize_dynamic_int8(make_model("bert"))
    with pytest.raises(ValueError, match="quantize_int8=True"):
        export_onnx(quantized, tmp_path / "onnx")
    assert_nothing_written(tmp_path, set())


def test_bad_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="tokenizer"):
        export_onnx(make_model("bert"), tmp_path / "onnx", tokenizer="bert-base-uncased")
    assert_nothing_written(tmp_path, set())


def test_missing_onnx_packages(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=r'pip install "hf-prune\[onnx\]"'):
        export_onnx(make_model("bert"), tmp_path / "onnx")
    assert_nothing_written(tmp_path, set())


def test_import_hf_prune_does_not_import_onnx():
    code = ("import sys, hf_prune, hf_prune.deploy.onnx_export; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'onnx', 'onnxscript', 'onnxruntime'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_command_line_refuses_bad_input_with_one_line(tmp_path, capsys):
    target = tmp_path / "onnx"
    assert export_main(["onnx", str(tmp_path / "missing"), str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hf-prune-export: error:")
    (tmp_path / "saved").mkdir()
    assert export_main(["onnx", str(tmp_path / "saved"), str(target)]) == 2  # a folder without config.json
    assert "config.json" in capsys.readouterr().err
    assert not target.exists()
