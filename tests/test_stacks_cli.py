"""The command lines, the report and the heatmap on models with several layer stacks (BART, T5).

prune_heads --retrain_free on a tiny BART / T5 sequence classifier: the report's shapes, parameters and FLOPs are
the reloaded model's, the heatmap is a PNG with one panel per stack plus cross-attention, the reloaded model gives
the pruned model's logits; options not supported on several stacks give one error line, exit 2, and write nothing.
"""

import copy
import json

import pytest
import torch
import transformers as tf
from test_cli import WORDS, base_args, write_csv
from tiny_stacks import bart_config, make_stacked, t5_config
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from hf_prune import count_flops, count_parameters, drop_layers, layer_shapes, load_pruned
from hf_prune.cli import app, lm, main
from hf_prune.cli.model_card import removed_summary
from hf_prune.cli.report import _panel_grid, heatmap_panels, heatmap_png, structure, summary_table
from hf_prune.planning.plan import PruningPlan

SEQ = 16
# model -> (config, special tokens in id order, as the config numbers them: BART <s>=0 <pad>=1 </s>=2, T5 <pad>=0 </s>=1)
CLASSIFIERS = {
    "bart": (bart_config, ["<s>", "<pad>", "</s>", "<unk>"], tf.BartForSequenceClassification),
    "t5": (t5_config, ["<pad>", "</s>", "<unk>", "<s>"], tf.T5ForSequenceClassification),
}


def word_tokenizer(specials: list[str]) -> tf.PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over WORDS that ends every sentence with </s> (the classification heads of
    BART and T5 read the hidden state at </s>), no token_type_ids."""
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    eos = vocab["</s>"]
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", eos)])
    return tf.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                      unk_token="<unk>", model_input_names=["input_ids", "attention_mask"])


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    """{name: folder} of tiny BART and T5 sequence classifiers (2 labels) with their tokenizer."""
    folders = {}
    for name, (factory, specials, model_class) in CLASSIFIERS.items():
        folder = tmp_path_factory.mktemp(name)
        config = factory()
        config.id2label, config.label2id = {0: "0", 1: "1"}, {"0": 0, "1": 1}  # as the command line sets them
        torch.manual_seed(0)
        model_class(config).save_pretrained(folder)
        word_tokenizer(specials).save_pretrained(folder)
        folders[name] = folder
    return folders


@pytest.fixture(scope="module")
def sentences(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stack-data")
    g = torch.Generator().manual_seed(0)
    rows = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (5,), generator=g)) for _ in range(32)]
    rows = [(s, int(s.split()[0] in WORDS[:5])) for s in rows]
    return (write_csv(folder / "train.csv", ["sentence", "label"], rows[:24]),
            write_csv(folder / "val.csv", ["sentence", "label"], rows[24:]))


def cli_args(folder, data, out, *extra):
    return base_args(folder, *data, out) + ["--calibration_samples", "8", "--per_device_eval_batch_size", "8",
                                           "--latency_repeats", "1", *extra]


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data.rstrip(b"\x00")[-8:-4] == b"IEND"


@pytest.mark.parametrize("name, budget", [
    ("bart", ["--flops_reduction", "0.4"]),
    ("t5", ["--head_sparsity", "0.5", "--ffn_sparsity", "0.3", "--importance", "taylor"]),
])
def test_retrain_free_end_to_end(name, budget, classifiers, sentences, tmp_path, monkeypatch):
    pruned = {}
    write_outputs = app.write_outputs

    def keep_model(job, report, outputs):  # the in-memory pruned model, to compare with the reloaded one
        pruned["model"] = copy.deepcopy(job.model)
        write_outputs(job, report, outputs)

    monkeypatch.setattr(app, "write_outputs", keep_model)
    out = tmp_path / "out"
    assert main(cli_args(classifiers[name], sentences, out, "--retrain_free", *budget)) == 0

    report = json.loads((out / "pruning_report.json").read_text())
    model = load_pruned(out)
    dense = tf.AutoModelForSequenceClassification.from_pretrained(classifiers[name])
    assert type(model) is CLASSIFIERS[name][2]
    shapes = layer_shapes(model)
    after = report["after"]["structure"]["stacks"]
    assert list(shapes) == ["encoder", "decoder"] and set(after) == set(shapes)
    for stack, stack_shapes in shapes.items():
        assert after[stack]["heads_per_layer"] == [s.heads for s in stack_shapes]
        assert after[stack]["kv_heads_per_layer"] == [s.kv_heads for s in stack_shapes]
        assert after[stack]["ffn_per_layer"] == [s.ffn for s in stack_shapes]
    assert after["decoder"]["cross_heads_per_layer"] == [s.cross_heads for s in shapes["decoder"]]
    assert "cross_heads_per_layer" not in after["encoder"]
    assert report["after"]["num_layers"] == {"encoder": 3, "decoder": 2}
    assert report["after"]["flops"] == count_flops(model, SEQ) < report["before"]["flops"] == count_flops(dense, SEQ)
    assert report["after"]["parameters"] == count_parameters(model) < report["before"]["parameters"]
    assert_png(out / "heads_kept.png")
    card = (out / "README.md").read_text()
    assert "heads kept per layer (encoder)" in card and "cross-attention heads per layer (decoder)" in card
    assert not (tmp_path / "out.work").exists()

    tokenizer = tf.AutoTokenizer.from_pretrained(out)
    inputs = tokenizer(["good fun dull", "awful boring nice poor", "fine"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = pruned["model"].eval()(**inputs).logits
        assert torch.equal(model.eval()(**inputs).logits, expected)


def test_fine_tuning_with_gradual_pruning(classifiers, sentences, tmp_path):
    """The fine-tuning mode (HeadPruningCallback) on BART: the exact budget over every stack's heads (self and
    cross-attention) and FFN neurons, physically removed; the report's shapes are the reloaded model's."""
    out = tmp_path / "out"
    args = cli_args(classifiers["bart"], sentences, out, "--head_sparsity", "0.5", "--ffn_sparsity", "0.25",
                    "--pruning_start_step", "2", "--pruning_end_step", "4", "--pruning_events", "2")
    assert main(args) == 0
    dense = layer_shapes(tf.AutoModelForSequenceClassification.from_pretrained(classifiers["bart"]))
    model = load_pruned(out)
    shapes = layer_shapes(model)

    def heads(all_shapes):
        return sum(s.heads + s.cross_heads for stack in all_shapes.values() for s in stack)

    def ffn(all_shapes):
        return sum(s.ffn for stack in all_shapes.values() for s in stack)

    assert heads(shapes) == heads(dense) - int(0.5 * heads(dense) + 0.5)
    assert ffn(shapes) == ffn(dense) - int(0.25 * ffn(dense) + 0.5)
    after = json.loads((out / "pruning_report.json").read_text())["after"]
    assert after["flops"] == count_flops(model, SEQ)
    for stack, stack_shapes in shapes.items():
        assert after["structure"]["stacks"][stack]["heads_per_layer"] == [s.heads for s in stack_shapes]
    assert_png(out / "heads_kept.png")


@pytest.mark.parametrize("extra, refused", [
    (["--retrain_free", "--flops_reduction", "0.3", "--uniform"], "--uniform"),
    (["--retrain_free", "--flops_reduction", "0.3", "--structure", "joint"], "--structure depth or joint"),
    (["--retrain_free", "--head_sparsity", "0.3", "--num_layers_to_remove", "1"], "--num_layers_to_remove"),
    (["--retrain_free", "--latency_reduction", "0.3"], "--latency_reduction"),
    (["--retrain_free", "--head_sparsity", "0.3", "--unstructured_sparsity", "0.2"], "--unstructured_sparsity"),
])
def test_options_not_supported_on_stacks_write_nothing(extra, refused, classifiers, sentences, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(cli_args(classifiers["bart"], sentences, out, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prune_heads: error: ") and refused in err[0]
    assert "several layer stacks (encoder, decoder)" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_lm_command_refuses_a_model_with_several_stacks(classifiers, tmp_path, capsys):
    (tmp_path / "train.txt").write_text(" ".join(WORDS * 20))
    (tmp_path / "valid.txt").write_text(" ".join(WORDS * 4))
    out = tmp_path / "out"
    args = ["--model_name_or_path", str(classifiers["bart"]), "--train_file", str(tmp_path / "train.txt"),
            "--validation_file", str(tmp_path / "valid.txt"), "--output_dir", str(out), "--params_reduction", "0.3",
            "--use_cpu", "--report_to", "none"]
    assert lm.main(args) == 2  # bart is a causal LM type (BartForCausalLM), but the checkpoint has both stacks
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prune_lm: error: model_type 'bart' has several layer stacks")
    assert not out.exists()


def side(model) -> dict:
    return {"parameters": count_parameters(model), "flops": count_flops(model, SEQ), "structure": structure(model),
            "latency_ms": 1.0, "metrics": {"accuracy": 0.5}}


def report_of(before, after) -> dict:
    return {"model": "tiny-t5", "base_model_id": None, "task": "files (binary)", "metric_names": ["accuracy"],
            "seq_len": SEQ, "latency": {"batch_size": 1}, "pruning": {"importance": "fisher", "mode": "retrain-free"},
            "before": side(before), "after": side(after)}


def test_heatmap_and_table_of_a_stacked_plan():
    dense = make_stacked("t5")
    model = copy.deepcopy(dense)
    PruningPlan(heads={"encoder.1": [0], "encoder.2": [1, 2]}, neurons={"decoder.0": [0, 1, 2]},
                cross_heads={"decoder.1": [0, 1, 2, 3]}).apply(model)
    report = json.loads(json.dumps(report_of(dense, model)))  # as pruning_report.json holds it
    panels = heatmap_panels(report)
    assert [title for title, *_ in panels] == ["encoder: attention heads kept", "decoder: attention heads kept",
                                               "decoder: cross-attention heads kept"]
    drawn = [_panel_grid(before, after, key)[0].sum(axis=1).tolist() for _, before, after, key in panels]
    assert drawn == [[4, 3, 2], [4, 4], [4, 0]]  # kept heads per layer, as the panels draw them
    assert heatmap_png(report)[:8] == b"\x89PNG\r\n\x1a\n"
    table = summary_table(report)
    assert "| heads | 20 | 17 | 0.850 |" in table and "| cross-attention heads | 8 | 4 | 0.500 |" in table
    assert "heads kept per layer (encoder): 4 3 2" in table
    assert "cross-attention heads per layer (decoder): 4 0" in table
    assert removed_summary(report) == "15% heads, 50% cross-attention heads, 2% FFN"

    drop_layers(model, ["decoder.1"])  # a whole decoder layer: a hatched row in both decoder panels
    report = report_of(dense, model)
    assert report["after"]["structure"]["stacks"]["decoder"]["removed_layers"] == [1]
    assert [_panel_grid(b, a, key)[2] for _, b, a, key in heatmap_panels(report)] == [
        {0: 0, 1: 1, 2: 2}, {0: 0}, {0: 0}]  # original layer -> current row
    assert heatmap_png(report)[:4] == b"\x89PNG"
    table = summary_table(report)
    assert "| layers | 5 | 4 | 0.800 |" in table and "layers removed (decoder):       1 of 2 (original index 1)" in table
    assert removed_summary(report).startswith("1 of 5 layers, ")
