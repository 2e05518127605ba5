"""The versioned `hf_prune` entry of config.json: per-layer widths of a pruned model, and which layers remain.

Format 2 adds `layers` (the original indices of the layers that remain, after depth pruning) and
`base.num_layers` (the original layer count); format 1 entries (no depth pruning) still read, as
`layers = [0, 1, ..., n - 1]`.

Writing it on `model.config` is enough for `save_pretrained`, Trainer checkpoints and `push_to_hub`
to carry it (v5 configs keep unknown keys). Reading it validates every field before anything is
built, so a damaged or hostile config.json gives one clear ValueError.
"""

from __future__ import annotations

import torch.nn as nn

from .layouts import get_layout
from .shapes import layer_shapes

ENTRY_KEY = "hf_prune"
FORMAT_VERSION = 2


def _config_int(config, key: str | None, default=None):
    value = getattr(config, key, None) if key else None
    return default if value is None else int(value)


def dense_widths(config) -> dict[str, int]:
    """Head, key/value head and FFN widths of the unpruned architecture, from the plain config keys."""
    layout = get_layout(config)
    heads = _config_int(config, layout.config_heads)
    kv_heads = _config_int(config, layout.config_kv_heads, heads)
    hidden = _config_int(config, "hidden_size")
    ffn = _config_int(config, layout.config_ffn, 4 * hidden if hidden else None)  # GPT-2: n_inner None -> 4 * n_embd
    return {"heads": heads, "kv_heads": kv_heads, "ffn": ffn}


def layer_history(config, n_layers: int) -> tuple[list[int], int]:
    """(original indices of the current `n_layers` layers, original layer count), from the config's entry.

    Without a usable record (no entry, a format 1 entry, or one that does not match `n_layers`), the layers
    are taken as never dropped: `(list(range(n_layers)), n_layers)`.
    """
    entry = getattr(config, ENTRY_KEY, None)
    if isinstance(entry, dict):
        layers, base = entry.get("layers"), entry.get("base")
        total = base.get("num_layers") if isinstance(base, dict) else None
        if (
            isinstance(layers, list) and len(layers) == n_layers and all(_is_int(i) for i in layers)
            and _is_int(total) and all(0 <= i < total for i in layers)
        ):
            return list(layers), total
    return list(range(n_layers)), n_layers


def write_config_entry(model: nn.Module, layers: list[int] | None = None, total_layers: int | None = None) -> dict:
    """Record the model's current per-layer widths in `model.config.hf_prune` (and plain keys when uniform).

    layers, total_layers: the original indices of the current layers and the original layer count (depth
    surgery passes them); by default they are carried over from the existing entry.
    """
    config = model.config
    layout = get_layout(model)
    shapes = layer_shapes(model)
    previous = getattr(config, ENTRY_KEY, None)
    if layers is None:
        layers, total_layers = layer_history(config, len(shapes))
    base = previous["base"] if isinstance(previous, dict) and "base" in previous else dense_widths(config)
    base = {key: base[key] for key in ("heads", "kv_heads", "ffn")}
    base["num_layers"] = int(total_layers if total_layers is not None else len(shapes))
    entry = {
        "format_version": FORMAT_VERSION,
        "family": layout.family,
        "num_layers": len(shapes),
        "layers": [int(i) for i in layers],
        "head_dim": shapes[0].head_dim if shapes else 0,
        "heads": [s.heads for s in shapes],
        "kv_heads": [s.kv_heads for s in shapes],
        "ffn": [s.ffn for s in shapes],
        "base": dict(base),
    }
    setattr(config, ENTRY_KEY, entry)

    # Plain keys, so vanilla from_pretrained loads uniform results: FFN width always can be expressed;
    # head counts only where the config carries head_dim (otherwise head size = hidden / heads).
    ffn = set(entry["ffn"])
    if len(ffn) == 1 and 0 not in ffn:
        setattr(config, layout.config_ffn, ffn.pop())
    heads, kv = set(entry["heads"]), set(entry["kv_heads"])
    if layout.config_head_dim and len(heads) == 1 and len(kv) == 1 and 0 not in heads:
        setattr(config, layout.config_heads, heads.pop())
        setattr(config, layout.config_kv_heads, kv.pop())
        setattr(config, layout.config_head_dim, entry["head_dim"])
    return entry


def _where(name: str, index: int | None = None) -> str:
    """How a message names a field: config.json `hf_prune.heads[3]`."""
    return f"config.json `{ENTRY_KEY}.{name}{'' if index is None else f'[{index}]'}`"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field(entry: dict, name: str, kind, what: str):
    if name not in entry:
        raise ValueError(f"{_where(name)} is missing: expected {what}")
    value = entry[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{_where(name)} must be {what}, got {_short(value)}")
    return value


def _short(value, limit: int = 80) -> str:
    """repr() of a value from a possibly hostile file, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _int_list(entry: dict, name: str, n_layers: int, upper: int) -> list[int]:
    values = _field(entry, name, list, f"a list of {n_layers} integers")
    if len(values) != n_layers:
        raise ValueError(f"{_where(name)} has {len(values)} entries but the config has {n_layers} layers")
    for i, v in enumerate(values):
        if not _is_int(v):
            raise ValueError(f"{_where(name, i)} must be an integer, got {_short(v)}")
        if v < 0 or v > upper:
            raise ValueError(
                f"{_where(name, i)} is {_short(v)}: expected 0..{upper}, what the base architecture allows"
            )
    return values


def _config_layers(config) -> int:
    """The config's layer count, or ValueError when it is missing or not a positive integer."""
    n_layers = getattr(config, "num_hidden_layers", None)
    if not _is_int(n_layers) or n_layers < 1:
        raise ValueError(f"config.json `num_hidden_layers` must be a positive integer, got {_short(n_layers)}")
    return n_layers


def _read_base(entry: dict, config, layout) -> dict[str, int]:
    """`base`: the unpruned widths; positive integers, GQA-consistent, never narrower than the config's skeleton."""
    base = _field(entry, "base", dict, "an object with integer heads, kv_heads and ffn")
    for key in ("heads", "kv_heads", "ffn"):
        value = base.get(key)
        if not _is_int(value) or value < 1:
            raise ValueError(f"{_where('base.' + key)} must be a positive integer, got {_short(value)}")
    heads, kv_heads = base["heads"], base["kv_heads"]
    if layout.grouped and heads % kv_heads:
        raise ValueError(
            f"{_where('base')} has {heads} query heads over {kv_heads} key/value heads: heads must be a multiple of kv_heads"
        )
    if not layout.grouped and kv_heads != heads:
        raise ValueError(f"{_where('base.kv_heads')} is {kv_heads} but must equal base.heads ({heads}) for {layout.family}")
    try:
        dense = dense_widths(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config.json has unusable width keys: {err}") from err
    for key in ("heads", "kv_heads", "ffn"):
        if dense[key] is not None and dense[key] > base[key]:
            raise ValueError(
                f"{_where('base.' + key)} is {base[key]}, narrower than the {dense[key]} that config.json's own keys give"
            )
    if not layout.grouped and dense["heads"] is not None and dense["heads"] != heads:
        # non-GQA configs never get their head count rewritten, so base.heads must be exactly the config's
        raise ValueError(
            f"{_where('base.heads')} is {heads} but config.json `{layout.config_heads}` is {dense['heads']}"
        )
    return {"heads": heads, "kv_heads": kv_heads, "ffn": base["ffn"]}


def read_config_entry(config) -> dict | None:
    """The validated `hf_prune` entry of a config, or None for an unpruned model. ValueError names a bad field."""
    entry = getattr(config, ENTRY_KEY, None)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ValueError(f"config.json `{ENTRY_KEY}` must be an object, got {type(entry).__name__}")
    layout = get_layout(config)  # unsupported model_type -> ValueError
    version = _field(entry, "format_version", int, "an integer")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{_where('format_version')} is {_short(version)}, newer than this hf_prune understands "
            f"({FORMAT_VERSION}): upgrade hf_prune (pip install -U hf-prune)"
        )
    if version < 1:
        raise ValueError(f"{_where('format_version')} must be >= 1, got {version}")
    family = _field(entry, "family", str, f"the string {layout.family!r}")
    if family != layout.family:
        raise ValueError(
            f"{_where('family')} is {_short(family)} but config.json's model_type "
            f"{getattr(config, 'model_type', None)!r} is of family {layout.family!r}: the entry belongs to another model"
        )
    n_layers = _config_layers(config)
    declared = _field(entry, "num_layers", int, "an integer")
    if declared != n_layers:
        raise ValueError(f"{_where('num_layers')} is {_short(declared)} but the config has {n_layers} layers")
    base = _read_base(entry, config, layout)
    layers, base["num_layers"] = _read_layers(entry, version, n_layers)
    head_dim = _field(entry, "head_dim", int, "a positive integer")
    if head_dim <= 0:
        raise ValueError(f"{_where('head_dim')} must be a positive integer, got {head_dim}")
    heads = _int_list(entry, "heads", n_layers, base["heads"])
    kv_heads = _int_list(entry, "kv_heads", n_layers, base["kv_heads"])
    ffn = _int_list(entry, "ffn", n_layers, base["ffn"])
    base_group = base["heads"] // base["kv_heads"]
    for i, (h, k) in enumerate(zip(heads, kv_heads)):
        if not layout.grouped and h != k:
            raise ValueError(f"{_where('kv_heads', i)} is {k} but must equal heads[{i}] ({h}) for {layout.family}")
        if layout.grouped and ((h == 0) != (k == 0) or (k and (h % k or h // k > base_group))):
            raise ValueError(
                f"config.json `{ENTRY_KEY}` layer {i}: {h} query heads over {k} key/value heads cannot be built "
                f"(each group must keep the same number of heads, at most {base_group})"
            )
    return {
        **entry, "base": base, "layers": layers,
        "heads": heads, "kv_heads": kv_heads, "ffn": ffn, "head_dim": head_dim,
    }


def _read_layers(entry: dict, version: int, n_layers: int) -> tuple[list[int], int]:
    """`layers` and `base.num_layers` (format 2): which original layers remain, out of how many; format 1: all."""
    if version < 2:
        return list(range(n_layers)), n_layers
    total = entry["base"].get("num_layers")
    if not _is_int(total) or total < n_layers:
        raise ValueError(
            f"{_where('base.num_layers')} must be an integer of at least {n_layers} (the config's layers), got {_short(total)}"
        )
    layers = _int_list(entry, "layers", n_layers, total - 1)
    if any(a >= b for a, b in zip(layers, layers[1:])):
        raise ValueError(
            f"{_where('layers')} must list distinct original layer indices in increasing order, got {_short(layers)}"
        )
    return layers, total
