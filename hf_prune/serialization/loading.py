"""`load_pruned`: rebuild a pruned model's shapes from config.json, then let `from_pretrained` load the weights.

The model class is subclassed for the duration of the load only: its `__init__` builds the dense
skeleton (on the meta device, under `from_pretrained`; with the config's layer count, so depth-pruned
models are built with their remaining layers only), shrinks it to the recorded widths and gives each
layer the index-dependent behaviour of its original position, so
no dense copy is ever materialised and dtype, device_map, quantization and the rest pass through.
"""

from __future__ import annotations

import os
import pickle

import torch
import torch.nn as nn
import transformers
from transformers import AutoConfig, PreTrainedModel

from ..architecture.config_entry import ENTRY_KEY, FORMAT_VERSION, read_config_entry
from ..architecture.layouts import get_layers, get_layout, get_stacks
from ..architecture.shapes import layer_shape, layer_shapes
from ..architecture.stacks import stack_views
from ..surgery.depth import restore_original_indices
from ..surgery.width import resize_to_entry

_HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "subfolder", "proxies")


def resolve_model_class(config, model_class=None) -> type[PreTrainedModel]:
    """The concrete class to build: `model_class` (Auto or concrete) or `config.architectures[0]`."""
    if model_class is None:
        names = getattr(config, "architectures", None) or []
        name = names[0] if isinstance(names, list) and names else None
        cls = getattr(transformers, name, None) if isinstance(name, str) else None
        if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
            raise ValueError(
                f"cannot tell which class to load: config.architectures is {names!r}. "
                f"Pass model_class, e.g. load_pruned(path, model_class=AutoModelForSequenceClassification)"
            )
        config_class = getattr(cls, "config_class", None)
        if isinstance(config_class, type) and not isinstance(config, config_class):
            raise ValueError(
                f"config.architectures names {name}, which takes a {config_class.__name__}, "
                f"but config.json's model_type gives a {type(config).__name__}"
            )
        return cls
    mapping = getattr(model_class, "_model_mapping", None)
    if mapping is not None:  # an Auto class
        try:
            return mapping[type(config)]
        except KeyError:
            raise ValueError(f"{model_class.__name__} has no model for config type {type(config).__name__}") from None
    if isinstance(model_class, type) and issubclass(model_class, PreTrainedModel):
        return model_class
    raise ValueError(f"model_class must be a transformers Auto class or a PreTrainedModel subclass, got {model_class!r}")


def _check_buildable(model: nn.Module, entry: dict) -> None:
    """The recorded widths must fit inside the dense skeleton built from the config (same GQA group layout too)."""
    if get_stacks(model) is not None:
        for name, view in stack_views(model).items():
            if name in entry["stacks"]:
                try:
                    _check_buildable(view, entry["stacks"][name])
                except ValueError as err:
                    raise ValueError(f"stack {name!r}: {err}") from None
        return
    layout = get_layout(model)
    for i, layer in enumerate(get_layers(model, layout)):
        dense = layer_shape(layer, layout)
        if entry["head_dim"] != dense.head_dim:
            raise ValueError(f"config.json `hf_prune.head_dim` is {entry['head_dim']} but the architecture has {dense.head_dim}")
        for key, have in (("heads", dense.heads), ("kv_heads", dense.kv_heads), ("ffn", dense.ffn)):
            if entry[key][i] > have:
                raise ValueError(
                    f"config.json `hf_prune.{key}[{i}]` is {entry[key][i]}, more than the {have} the architecture allows"
                )
        if layout.grouped and entry["kv_heads"][i]:
            if not dense.kv_heads or dense.heads % dense.kv_heads:
                raise ValueError(
                    f"config.json builds layer {i} with {dense.heads} query heads over {dense.kv_heads} key/value heads: "
                    f"num_attention_heads must be a multiple of num_key_value_heads"
                )
            group, dense_group = entry["heads"][i] // entry["kv_heads"][i], dense.heads // dense.kv_heads
            if group > dense_group:
                raise ValueError(
                    f"config.json `hf_prune` layer {i} has {group} query heads per key/value head, more than the "
                    f"{dense_group} the architecture allows"
                )


def _pruned_builder(cls: type[PreTrainedModel], entry: dict) -> type[PreTrainedModel]:
    """A throwaway subclass of `cls` whose __init__ shrinks the freshly built skeleton to `entry`'s widths."""

    def __init__(self, config, *args, **kwargs):
        cls.__init__(self, config, *args, **kwargs)
        _check_buildable(self, entry)
        resize_to_entry(self, entry)
        if "stacks" not in entry:
            restore_original_indices(self, entry["layers"])  # e.g. GPT-2's per-layer attention scaling

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__, "__qualname__": cls.__qualname__})


def _reraise_as_load_error(err: Exception, name_or_path, what: str, pruned: bool = True) -> None:
    """Give a damaged checkpoint's errors one of two types: OSError (files) or ValueError (contents)."""
    if isinstance(err, (OSError, ValueError, ImportError, MemoryError, torch.OutOfMemoryError)):
        raise err  # already clear: missing files, bad JSON, our own validation, a missing package, no memory
    text = str(err)
    if isinstance(err, RuntimeError) and any(word in text for word in ("mismatch", "size", "shape")):
        announced = "announced in config.json `hf_prune`" if pruned else "of config.json, which has no `hf_prune` entry"
        raise ValueError(f"the weights in {name_or_path} do not match the per-layer shapes {announced}: {text}") from err
    if isinstance(err, pickle.UnpicklingError):
        raise ValueError(
            f"refused to load the weights in {name_or_path}: the pickle holds more than tensors "
            f"(only safetensors and torch.load(weights_only=True) are used): {text}"
        ) from err
    raise ValueError(f"{what} {name_or_path} failed, the checkpoint looks damaged: {type(err).__name__}: {text}") from err


def load_pruned(name_or_path: str | os.PathLike, model_class=None, **from_pretrained_kwargs) -> PreTrainedModel:
    """Load a model saved after `prune_model` (or a plain one) from a folder or a Hub id.

    model_class: a transformers Auto class or concrete class; default from `config.architectures`.
    Every other keyword (dtype, device_map, revision, token, ...) goes to `from_pretrained`.
    A damaged or hostile checkpoint raises ValueError (contents) or OSError (files), nothing else.
    """
    if from_pretrained_kwargs.get("trust_remote_code"):
        raise ValueError("load_pruned never runs remote code: drop trust_remote_code=True")
    if from_pretrained_kwargs.get("ignore_mismatched_sizes"):
        raise ValueError("ignore_mismatched_sizes=True would silently re-initialise pruned weights: drop it")
    if from_pretrained_kwargs.get("weights_only", True) is not True:
        raise ValueError("load_pruned never unpickles arbitrary objects: drop weights_only=False")
    from_pretrained_kwargs["weights_only"] = True
    config = from_pretrained_kwargs.pop("config", None)
    if config is None:
        hub = {k: from_pretrained_kwargs[k] for k in _HUB_KWARGS if k in from_pretrained_kwargs}
        try:
            config = AutoConfig.from_pretrained(name_or_path, **hub)
        except Exception as err:
            _reraise_as_load_error(err, name_or_path, "reading config.json of")
    entry = read_config_entry(config)
    cls = resolve_model_class(config, model_class)
    config, entry = _tower_config(config, entry, cls)
    builder = cls if entry is None else _pruned_builder(cls, entry)
    try:
        model = builder.from_pretrained(name_or_path, config=config, **from_pretrained_kwargs)
    except Exception as err:
        _reraise_as_load_error(err, name_or_path, "loading", pruned=entry is not None)
    model.__class__ = cls  # drop the throwaway subclass: the result is a plain transformers model
    if entry is not None:
        _check_loaded(model, entry, name_or_path)
    return model


def _check_loaded(model: nn.Module, entry: dict, name_or_path) -> None:
    """The loaded model's widths are the entry's, stack by stack."""
    loaded = layer_shapes(model)
    stacks = entry.get("stacks", {None: entry})
    loaded = loaded if isinstance(loaded, dict) else {None: loaded}
    for name, fields in stacks.items():
        if name not in loaded:
            continue  # a tower this class does not build (CLIPForImageClassification has no text tower)
        where = "hf_prune" if name is None else f"hf_prune.stacks.{name}"
        for key in ("heads", "kv_heads", "ffn", "cross_heads"):
            have = [getattr(s, key) for s in loaded[name]]
            if key in fields and have != fields[key]:
                raise ValueError(
                    f"the weights in {name_or_path} do not match config.json `{where}.{key}`: the loaded model has {have}"
                )


def _tower_config(config, entry: dict | None, cls: type[PreTrainedModel]):
    """(config, entry) for building `cls`: a single-tower class (CLIPVisionModel) asked to load a two-tower
    checkpoint (CLIPModel) takes its tower's sub-config, with that tower's recorded widths as a format 2 entry."""
    config_class = getattr(cls, "config_class", None)
    sub_key = getattr(config_class, "base_config_key", None)
    stacks = get_stacks(config)
    if stacks is None or not sub_key or isinstance(config, config_class) or getattr(config, sub_key, None) is None:
        return config, entry
    sub = getattr(config, sub_key)
    stack = next((s for s in stacks if s.config == sub_key), None)
    fields = (entry or {}).get("stacks", {}).get(stack.name) if stack else None
    if stack is None or fields is None:
        return sub, None
    tower_entry = {"format_version": FORMAT_VERSION, "family": get_layout(sub).family,
                   **{k: v for k, v in fields.items() if k not in ("cross_heads",)}}
    setattr(sub, ENTRY_KEY, tower_entry)
    return sub, read_config_entry(sub)
