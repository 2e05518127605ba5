"""HeadPruningCallback removing whole layers: schedule, optimizer state, gate mode == cut model, resume, DDP, config."""

import json

import pytest
import torch
from test_callback import Toy, trainer_for
from tiny_models import TINY
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_prune import layer_shapes, load_pruned
from hf_prune.training import HeadPruningCallback, PruningConfig
from hf_prune.training.callback import resize_to_checkpoint


def deep_model(model_type="llama", layers=6, seed=0):
    """A tiny random model of `model_type` with `layers` layers (tiny_models' have 3)."""
    factory, cls = TINY[model_type]
    torch.manual_seed(seed)
    config = factory()
    config.num_hidden_layers = layers
    if model_type == "bert":
        config.num_labels = 2
    return cls(config).train()


def calibration(causal=True, n=2):
    data = Toy(n=8 * n, causal=causal, seed=5)
    return [{k: torch.stack([data[i][k] for i in range(b * 8, b * 8 + 8)]) for k in data[0]} for b in range(n)]


def layer_counts(trainer):
    return [r["hf_prune/layers"] for r in trainer.state.log_history if "hf_prune/event" in r]


def inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)


def test_compact_mode_removes_the_scheduled_layers_and_drops_their_optimizer_state(tmp_path):
    model = deep_model()
    removed_params = {}

    class Watch(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            removed_params[state.global_step] = {id(p) for p in model.parameters()}

        def on_step_end(self, args, state, control, model=None, **kwargs):
            removed_params[f"w{state.global_step}"] = model.model.layers[0].self_attn.q_proj.weight.detach().clone()

    callback = HeadPruningCallback(num_layers_to_remove=3, head_sparsity=0.5, start_step=2, end_step=6, num_events=3,
                                   schedule="linear", calibration_dataloader=calibration())
    trainer = trainer_for(model, tmp_path, callback, max_steps=8, causal=True)
    trainer.add_callback(Watch())
    trainer.train()
    assert layer_counts(trainer) == [5, 4, 3]  # round(f * 3) removed at f = 1/3, 2/3, 1
    pruned = trainer.model
    assert pruned.config.num_hidden_layers == 3 == len(pruned.model.layers)
    assert pruned.config.hf_prune["base"]["num_layers"] == 6 and len(pruned.config.hf_prune["layers"]) == 3
    # half of the 3 remaining layers' 18 heads, in steps of one head per key/value group (2 groups): 8 removed
    assert sum(s.heads for s in layer_shapes(pruned)) == 10
    # the optimizer holds exactly the remaining parameters, and state for none of the removed ones
    opt = inner(trainer.optimizer)
    live = {id(p) for p in pruned.parameters()}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == live
    assert {id(p) for p in opt.state} <= live
    assert removed_params[1] - live  # parameters of removed layers existed before the first event
    assert not torch.equal(removed_params["w6"], removed_params["w8"])  # training goes on after the last event


def test_layer_only_run_and_flops_with_layers(tmp_path):
    model = deep_model("bert", layers=4)
    callback = HeadPruningCallback(layer_sparsity=0.5, start_step=2, calibration_dataloader=calibration(False),
                                   layer_importance="angular")
    trainer = trainer_for(model, tmp_path / "a", callback, max_steps=4)
    trainer.train()
    assert layer_counts(trainer) == [2] and len(layer_shapes(trainer.model)) == 2
    assert [s.heads for s in layer_shapes(trainer.model)] == [4, 4]  # no width target: widths untouched

    from hf_prune.architecture.counting import count_flops

    model = deep_model("bert", layers=4)
    callback = HeadPruningCallback(num_layers_to_remove=1, flops_reduction=0.5, start_step=2,
                                   calibration_dataloader=calibration(False), layer_importance="fisher")
    trainer = trainer_for(model, tmp_path / "b", callback, max_steps=4)
    dense_layer = count_flops(deep_model("bert", layers=1), 128)
    trainer.train()
    flops = count_flops(trainer.model, 128)
    assert len(layer_shapes(trainer.model)) == 3
    assert 0.4 * 3 * dense_layer <= flops <= 0.5 * 3 * dense_layer  # the FLOPs target is over the 3 remaining layers


@pytest.mark.parametrize("model_type", ["llama", "bert"])
def test_gate_mode_outputs_equal_the_cut_model(model_type, tmp_path):
    causal = model_type == "llama"
    model = deep_model(model_type, layers=4)
    batch = {k: v for k, v in calibration(causal, 1)[0].items() if k != "labels"}
    gated = {}

    class BeforeCut(TrainerCallback):  # runs before HeadPruningCallback's on_train_end (listed first)
        def on_train_end(self, args, state, control, model=None, **kwargs):
            model.eval()
            with torch.no_grad():
                gated["logits"] = model(**batch).logits
            gated["params"] = sum(p.numel() for p in model.parameters())

    callback = HeadPruningCallback(num_layers_to_remove=2, head_sparsity=0.25, ffn_sparsity=0.25, start_step=2,
                                   end_step=4, num_events=2, schedule="linear", compact="never",
                                   calibration_dataloader=calibration(causal))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, learning_rate=1e-3,
                             report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Toy(causal=causal), callbacks=[BeforeCut(), callback])
    trainer.train()
    assert not callback._compacting and layer_counts(trainer) == [3, 2]
    cut = trainer.model.eval()
    assert len(layer_shapes(cut)) == 2 and gated["params"] > sum(p.numel() for p in cut.parameters())
    with torch.no_grad():
        torch.testing.assert_close(cut(**batch).logits, gated["logits"], atol=1e-5, rtol=1e-5)
    trainer.save_model(tmp_path / "final")
    with torch.no_grad():
        torch.testing.assert_close(load_pruned(tmp_path / "final").eval()(**batch).logits, cut(**batch).logits,
                                   atol=0, rtol=0)


def test_gate_mode_state_carries_layer_masks(tmp_path):
    model = deep_model("bert", layers=4)
    callback = HeadPruningCallback(num_layers_to_remove=1, start_step=2, compact="never",
                                   calibration_dataloader=calibration(False))
    seen = {}

    class Grab(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                seen["state"] = callback.state()

    trainer = trainer_for(model, tmp_path, callback, max_steps=4)
    trainer.add_callback(Grab())
    trainer.train()
    masks = seen["state"]["attributes"]["layer_masks"]
    assert sorted(masks) == [0, 1, 1, 1]
    restored = HeadPruningCallback(**{**seen["state"]["args"]["config"]}, calibration_dataloader=calibration(False))
    restored._restore(type("S", (), {"stateful_callbacks": {"HeadPruningCallback": seen["state"]},
                                     "global_step": 3})())
    assert restored.masks.layers == masks


def test_resume_after_a_layer_event(tmp_path):
    def run(out, resume=None, model=None):
        model = model or deep_model("bert", layers=4)
        callback = HeadPruningCallback(num_layers_to_remove=2, head_sparsity=0.5, start_step=2, end_step=6,
                                       num_events=2, schedule="linear", calibration_dataloader=calibration(False))
        args = TrainingArguments(output_dir=str(out), max_steps=8, per_device_train_batch_size=8, learning_rate=1e-3,
                                 report_to=[], save_strategy="steps", save_steps=3, use_cpu=True, seed=0,
                                 disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=Toy(), callbacks=[callback])
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    checkpoint = tmp_path / "full" / "checkpoint-3"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    attributes = state["stateful_callbacks"]["HeadPruningCallback"]["attributes"]
    assert attributes["events_done"] == 1 and attributes["dense"]["layers"] == 4
    assert json.loads((checkpoint / "config.json").read_text())["num_hidden_layers"] == 3
    model = resize_to_checkpoint(deep_model("bert", layers=4), checkpoint)
    assert len(layer_shapes(model)) == 3
    resumed = run(tmp_path / "full", resume=str(checkpoint), model=model)
    assert layer_shapes(resumed.model) == layer_shapes(full.model) and len(layer_shapes(full.model)) == 2
    assert resumed.model.config.hf_prune == full.model.config.hf_prune


@pytest.mark.parametrize("kwargs,message", [
    ({"layer_sparsity": 1.0}, r"layer_sparsity must be a number in \[0, 1\)"),
    ({"layer_sparsity": 0.5, "num_layers_to_remove": 1}, "not both"),
    ({"num_layers_to_remove": -1}, "num_layers_to_remove must be an integer"),
    ({"num_layers_to_remove": 1.5}, "num_layers_to_remove must be an integer"),
    ({"layer_importance": "magic"}, "layer_importance must be one of"),
])
def test_bad_layer_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningConfig(**kwargs)


def test_layer_removal_needs_calibration_data_and_a_remaining_layer(tmp_path):
    with pytest.raises(ValueError, match="calibration_dataloader"):
        trainer_for(deep_model("bert", layers=2), tmp_path, HeadPruningCallback(num_layers_to_remove=1))
    with pytest.raises(ValueError, match="at least one must remain"):
        trainer_for(deep_model("bert", layers=2), tmp_path,
                    HeadPruningCallback(num_layers_to_remove=2, calibration_dataloader=calibration(False)))
    config = PruningConfig(layer_sparsity=0.25, layer_importance="loss")
    assert config.structured and config.removes_layers and not config.prunes_widths
    assert PruningConfig.from_dict(config.to_dict()) == config
    old = {k: v for k, v in config.to_dict().items() if k not in ("layer_sparsity", "num_layers_to_remove",
                                                                    "layer_importance")}
    assert PruningConfig.from_dict(old) == PruningConfig()  # configs written before layer removal still load


def test_two_process_ddp_gate_mode_removes_layers(tmp_path):
    import os
    import subprocess
    import sys

    worker = os.path.join(os.path.dirname(__file__), "ddp_prune_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker,
           str(tmp_path), "layers"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-6000:])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["gates_only"]
    assert ranks[0]["shapes"] == ranks[1]["shapes"] and len(ranks[0]["shapes"]) == 2  # 3 layers, 1 removed
    assert ranks[0]["layers"] == ranks[1]["layers"]
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-6)



@pytest.mark.parametrize("fields", [{"latency_reduction": 0.3}, {"flops_reduction": 0.3, "structure": "joint"}])
def test_callback_refuses_budgets_planned_retrain_free(fields):
    with pytest.raises(ValueError, match="planned retrain-free"):
        HeadPruningCallback(PruningConfig(**fields))
