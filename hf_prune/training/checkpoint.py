"""The callback's state in Trainer checkpoints (`trainer_state.json`), and shrinking a model to a checkpoint's shapes.

State format: {"args": {"config": PruningConfig fields, "seed": int}, "attributes": {events_done, dense,
head_masks, neuron_masks, layer_masks, running_scores}}. `args` are the callback's constructor keywords, as the Trainer's
`restore_callback_states_from_checkpoint` needs. Checkpoints written before PruningConfig existed hold
{"args": {the old keyword names}, "attributes": {..., head_scores, neuron_scores, accumulated_steps}};
both resume.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ..architecture.config_entry import layer_history, read_config_entry, write_config_entry
from ..architecture.layouts import get_layers, get_stacks
from ..architecture.stacks import stack_views
from ..surgery.depth import drop_layers
from ..surgery.width import resize_to_entry, resize_to_shapes
from .config import PruningConfig, config_from_keywords


def callback_state(config: PruningConfig, seed: int, attributes: dict) -> dict:
    """The ExportableState dict of a callback."""
    return {"args": {"config": config.to_dict(), "seed": seed}, "attributes": attributes}


def saved_state(state, name: str) -> dict | None:
    """The state a checkpoint's TrainerState holds for the callback class `name` (the first one), or None."""
    saved = (getattr(state, "stateful_callbacks", None) or {}).get(name)
    saved = saved[0] if isinstance(saved, list) and saved else saved
    return saved if isinstance(saved, dict) else None


def saved_config(saved: dict) -> PruningConfig:
    """The config a saved state was written with, in either format."""
    args = dict(saved.get("args") or {})
    if isinstance(args.get("config"), dict):
        return PruningConfig.from_dict(args["config"])
    args.pop("seed", None)
    return config_from_keywords(**args)  # the old keyword names


def config_changes(saved: PruningConfig, current: PruningConfig) -> list[str]:
    """Fields whose value differs between a checkpoint's config and the current one."""
    return [f.name for f in dataclasses.fields(PruningConfig) if getattr(saved, f.name) != getattr(current, f.name)]


def resize_to_checkpoint(model: nn.Module, checkpoint_dir) -> nn.Module:
    """Shrink `model` to the layers and shapes recorded in a checkpoint's config.json, before the Trainer loads
    its weights.

    Call it before `trainer.train(resume_from_checkpoint=checkpoint_dir)` when the checkpoint was written
    after a compaction (the dense weights would not fit otherwise). Layers the checkpoint no longer has are
    dropped first (matched by their original indices, `config.hf_prune.layers`), then the widths are cut.
    The kept units' values do not matter: the Trainer overwrites them from the checkpoint. Models with several
    layer stacks are resized stack by stack (their layers must be the checkpoint's).
    """
    from transformers import AutoConfig

    entry = read_config_entry(AutoConfig.from_pretrained(checkpoint_dir))
    if entry is not None and get_stacks(model) is not None:
        _resize_stacks(model, entry, checkpoint_dir)
    elif entry is not None:
        current, _ = layer_history(model.config, len(get_layers(model)))
        missing = sorted(set(entry["layers"]) - set(current))
        if missing:
            raise ValueError(f"the checkpoint {checkpoint_dir} has original layer(s) {missing}, which this model "
                             "no longer has: start from the model the run began with")
        drop_layers(model, [i for i, original in enumerate(current) if original not in set(entry["layers"])])
        resize_to_shapes(model, entry["heads"], entry["kv_heads"], entry["ffn"])
        written = write_config_entry(model)
        if "kept_heads" in entry:
            written["kept_heads"] = entry["kept_heads"]
    return model


def _resize_stacks(model: nn.Module, entry: dict, checkpoint_dir) -> None:
    """`resize_to_checkpoint` on a model with several layer stacks (the callback removes no layers there)."""
    for name, view in stack_views(model).items():
        fields = entry["stacks"].get(name)
        current, _ = layer_history(view, len(get_layers(view)))
        if fields is not None and fields["layers"] != current:
            raise ValueError(f"the checkpoint {checkpoint_dir} has layers {fields['layers']} in stack {name!r}, this "
                             f"model {current}: start from the model the run began with")
    resize_to_entry(model, entry)
    write_config_entry(model)
