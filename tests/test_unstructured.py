"""Unstructured magnitude pruning: exact sparsity, global threshold, no masks left, scope, storage, Trainer mode."""

import pytest
import torch
from test_callback import Toy, trainer_for
from tiny_models import make_inputs, make_model
from transformers import TrainerCallback

from hf_prune import layer_shapes, prune_model
from hf_prune.serialization.sparse import load_sparse, save_sparse
from hf_prune.training.callback import HeadPruningCallback
from hf_prune.unstructured.magnitude import prunable_weight_names, prune_unstructured, sparsity_report, zero_masks

TYPES = ["bert", "distilbert", "gpt2", "opt", "llama"]


def folder_bytes(folder):
    return sum(p.stat().st_size for p in folder.iterdir())


@pytest.mark.parametrize("model_type", TYPES)
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_zero_fraction_matches_the_amount(model_type, scope):
    model = make_model(model_type)
    prune_unstructured(model, 0.6, scope=scope)
    report = sparsity_report(model)
    assert abs(report.sparsity - 0.6) < 0.01
    if scope == "layer":
        assert all(abs(m.sparsity - 0.6) < 0.01 for m in report.modules)
    assert len(report.per_layer()) == len(layer_shapes(model))
    assert "total" in str(report)


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama"])
def test_global_scope_keeps_every_weight_larger_than_every_removed_one(model_type):
    model = make_model(model_type)
    names = prunable_weight_names(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    prune_unstructured(model, 0.5, scope="global")
    params = dict(model.named_parameters())
    removed = torch.cat([before[n][params[n] == 0].abs().flatten() for n in names])
    kept = torch.cat([before[n][params[n] != 0].abs().flatten() for n in names])
    assert removed.max() <= kept.min()
    for n in names:  # survivors keep their exact values
        assert torch.equal(params[n][params[n] != 0], before[n][params[n] != 0])


@pytest.mark.parametrize("model_type", TYPES)
def test_no_masks_left_model_runs_and_embeddings_and_heads_are_untouched(model_type):
    model = make_model(model_type)
    names = set(prunable_weight_names(model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = [id(p) for p in model.parameters()]
    prune_unstructured(model, 0.7)
    keys = list(model.state_dict())
    assert not [k for k in keys if k.endswith(("weight_orig", "weight_mask"))]
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert ids == [id(p) for p in model.parameters()]  # same Parameter objects: an optimizer keeps working
    for n, p in model.named_parameters():
        if n not in names:
            assert torch.equal(p, before[n]), n  # embeddings, LayerNorms, biases, task heads
    assert any("embed" in n or "wte" in n for n in before) and not any("embed" in n or "wte" in n for n in names)
    with torch.no_grad():
        assert torch.isfinite(model(**make_inputs()).logits).all()


def test_gpt2_conv1d_weights_are_pruned_in_their_in_out_layout():
    model = make_model("gpt2")
    c_attn = model.transformer.h[0].attn.c_attn
    assert tuple(c_attn.weight.shape) == (32, 96)  # Conv1D: (in, out)
    prune_unstructured(model, 0.5, scope="layer")
    assert tuple(c_attn.weight.shape) == (32, 96)
    assert abs(float((c_attn.weight == 0).float().mean()) - 0.5) < 0.01
    assert {m.projection for m in sparsity_report(model).modules} == {"qkv", "o", "up", "down"}


def test_pruning_again_grows_the_sparsity_and_keeps_old_zeros():
    model = make_model("bert")
    prune_unstructured(model, 0.3)
    first = zero_masks(model)
    prune_unstructured(model, 0.6)
    second = zero_masks(model)
    assert all(not (second[n] & ~first[n]).any() for n in first)  # nothing pruned comes back
    assert abs(sparsity_report(model).sparsity - 0.6) < 0.01


@pytest.mark.parametrize("amount,scope", [(-0.1, "global"), (1.0, "global"), (1.5, "layer"), ("0.5", "global"),
                                          (True, "global"), (None, "layer"), (0.5, "neuron"), (0.5, None)])
def test_bad_input_raises_value_error_and_changes_nothing(amount, scope):
    model = make_model("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="amount|scope"):
        prune_unstructured(model, amount, scope=scope)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama"])
def test_sparse_export_reloads_exactly_and_is_smaller_at_high_sparsity(model_type, tmp_path):
    model = make_model(model_type)
    if model_type == "bert":
        prune_model(model, heads={0: [1]}, neurons={2: [0, 5]})  # head-pruned shapes are rebuilt too
    prune_unstructured(model, 0.9)
    model.save_pretrained(tmp_path / "dense")
    save_sparse(model, tmp_path / "sparse")
    loaded = load_sparse(tmp_path / "sparse")
    inputs = make_inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)
    assert type(loaded) is type(model)
    assert folder_bytes(tmp_path / "sparse") < folder_bytes(tmp_path / "dense")
    with pytest.raises(FileExistsError):
        save_sparse(model, tmp_path / "sparse")  # no silent overwrite
    with pytest.raises((ValueError, FileNotFoundError)):
        load_sparse(tmp_path / "dense")


class ZeroSnapshots(TrainerCallback):
    """Records each step's zero masks of the prunable weights (after the pruning callback's on_step_end)."""

    def __init__(self):
        self.masks = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.masks[state.global_step] = {n: ~m for n, m in zero_masks(model).items()}  # True = zero


def test_callback_mode_holds_zeros_through_training_and_meets_the_sparsity(tmp_path):
    model = make_model("bert").train()
    callback = HeadPruningCallback(unstructured_sparsity=0.6, start_step=2, end_step=6, num_events=3)
    snapshots = ZeroSnapshots()
    trainer = trainer_for(model, tmp_path, callback, max_steps=10)
    trainer.add_callback(snapshots)
    before = model.bert.encoder.layer[0].output.dense.weight.detach().clone()
    trainer.train()
    zeros = snapshots.masks
    share = [sum(int(m.sum()) for m in zeros[s].values()) / sum(m.numel() for m in zeros[s].values()) for s in (2, 4, 6)]
    assert share[0] < share[1] < share[2] and abs(share[2] - 0.6) < 0.01
    for early, late in ((2, 3), (4, 5), (6, 10)):  # zeros survive the optimizer steps after each event
        assert all((zeros[late][n] | ~zeros[early][n]).all() for n in zeros[early])
    assert abs(sparsity_report(trainer.model).sparsity - 0.6) < 0.01
    assert not torch.equal(before, trainer.model.bert.encoder.layer[0].output.dense.weight)  # it did train
    assert layer_shapes(trainer.model) == layer_shapes(make_model("bert"))  # no head pruning asked for
    events = [r for r in trainer.state.log_history if "hf_prune/event" in r]
    assert [r["step"] for r in events] == [2, 4, 6] and abs(events[-1]["hf_prune/weight_sparsity"] - 0.6) < 0.01


def test_callback_combines_head_compaction_with_unstructured_sparsity_on_gpt2(tmp_path):
    model = make_model("gpt2").train()
    callback = HeadPruningCallback(head_sparsity=0.5, unstructured_sparsity=0.5, start_step=2, end_step=4,
                                   num_events=2)
    trainer = trainer_for(model, tmp_path, callback, max_steps=6, causal=True)
    trainer.train()
    assert sum(s.heads for s in layer_shapes(trainer.model)) == 6
    assert abs(sparsity_report(trainer.model).sparsity - 0.5) < 0.01


def test_resumed_run_keeps_the_zeros(tmp_path):
    from transformers import Trainer, TrainingArguments

    def run(max_steps_seen, resume=None):
        model = make_model("bert").train()
        callback = HeadPruningCallback(unstructured_sparsity=0.5, start_step=2, end_step=6, num_events=3)
        args = TrainingArguments(
            output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=8, learning_rate=1e-3, report_to=[],
            save_strategy="steps", save_steps=3, use_cpu=True, seed=0, disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=Toy(), callbacks=[callback])
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    run(8)
    import safetensors.torch

    saved = safetensors.torch.load_file(str(tmp_path / "checkpoint-3" / "model.safetensors"))
    name = "bert.encoder.layer[1].intermediate.dense.weight".replace("[1]", ".1")
    zeros_at_3 = saved[name] == 0
    assert 0.1 < float(zeros_at_3.float().mean()) < 0.4  # one event done at step 2
    trainer = run(8, resume=str(tmp_path / "checkpoint-3"))
    final = dict(trainer.model.named_parameters())[name]
    assert bool((final[zeros_at_3] == 0).all())  # checkpoint zeros were recognised as pruned and held
    assert abs(sparsity_report(trainer.model).sparsity - 0.5) < 0.01
