"""The versioned `hf_prune` entry of config.json: per-layer widths of a pruned model, and which layers remain.

Format 2 adds `layers` (the original indices of the layers that remain, after depth pruning) and
`base.num_layers` (the original layer count); format 1 entries (no depth pruning) still read, as
`layers = [0, 1, ..., n - 1]`.

Format 3 is the entry of a model with several layer stacks (T5, BART, CLIP): `stacks` maps each stack name to
that stack's fields (the format 2 fields without `format_version` and `family`), plus `cross_heads` (and
`base.cross_heads`) for a decoder stack with cross-attention. Single-stack models keep writing format 2.

Writing it on `model.config` is enough for `save_pretrained`, Trainer checkpoints and `push_to_hub`
to carry it (v5 configs keep unknown keys). Reading it validates every field before anything is
built, so a damaged or hostile config.json gives one clear ValueError.
"""

from __future__ import annotations

import torch.nn as nn

from .layouts import Layout, get_layout, get_stacks
from .shapes import layer_shapes
from .stacks import StackView, model_stacks

ENTRY_KEY = "hf_prune"
FORMAT_VERSION = 2  # single-stack entries
STACKS_FORMAT_VERSION = 3  # entries of models with several layer stacks


def _config_int(config, key: str | None, default=None):
    value = getattr(config, key, None) if key else None
    return default if value is None else int(value)


def dense_widths(config, layout: Layout | None = None) -> dict[str, int]:
    """Head, key/value head and FFN widths of the unpruned architecture, from the plain config keys
    (`layout`: the stack's, for one stack of a multi-stack model)."""
    layout = layout or get_layout(config)
    heads = _config_int(config, layout.config_heads)
    kv_heads = _config_int(config, layout.config_kv_heads, heads)
    hidden = _config_int(config, "hidden_size")
    ffn = _config_int(config, layout.config_ffn, 4 * hidden if hidden else None)  # GPT-2: n_inner None -> 4 * n_embd
    return {"heads": heads, "kv_heads": kv_heads, "ffn": ffn}


def current_entry(model_or_config) -> dict | None:
    """The entry as it stands (unvalidated): the config's, or for a StackView its stack's fields; None if none."""
    if isinstance(model_or_config, StackView):
        entry = getattr(model_or_config.model.config, ENTRY_KEY, None)
        stacks = entry.get("stacks") if isinstance(entry, dict) else None
        return stacks.get(model_or_config.name) if isinstance(stacks, dict) else None
    config = getattr(model_or_config, "config", model_or_config)
    entry = getattr(config, ENTRY_KEY, None)
    return entry if isinstance(entry, dict) else None


def layer_history(model_or_config, n_layers: int) -> tuple[list[int], int]:
    """(original indices of the current `n_layers` layers, original layer count), from the entry (of a config, a
    model, or one stack given a StackView).

    Without a usable record (no entry, a format 1 entry, or one that does not match `n_layers`), the layers
    are taken as never dropped: `(list(range(n_layers)), n_layers)`.
    """
    entry = current_entry(model_or_config)
    if isinstance(entry, dict):
        layers, base = entry.get("layers"), entry.get("base")
        total = base.get("num_layers") if isinstance(base, dict) else None
        if (
            isinstance(layers, list) and len(layers) == n_layers and all(_is_int(i) for i in layers)
            and _is_int(total) and all(0 <= i < total for i in layers)
        ):
            return list(layers), total
    return list(range(n_layers)), n_layers


def _stack_fields(model, previous: dict | None, layers: list[int] | None, total_layers: int | None) -> dict:
    """Per-layer widths, kept-layer map and `base` of a single-stack model or of one stack (a StackView)."""
    layout = get_layout(model)
    shapes = layer_shapes(model)
    if layers is None:
        layers, total_layers = layer_history(model, len(shapes))
    base = previous["base"] if isinstance(previous, dict) and isinstance(previous.get("base"), dict) else None
    base = {key: base[key] for key in ("heads", "kv_heads", "ffn")} if base else dense_widths(model.config, layout)
    base["num_layers"] = int(total_layers if total_layers is not None else len(shapes))
    fields = {
        "num_layers": len(shapes),
        "layers": [int(i) for i in layers],
        "head_dim": shapes[0].head_dim if shapes else 0,
        "heads": [s.heads for s in shapes],
        "kv_heads": [s.kv_heads for s in shapes],
        "ffn": [s.ffn for s in shapes],
        "base": base,
    }
    if isinstance(model, StackView) and model.stack.cross is not None:
        fields["cross_heads"] = [s.cross_heads for s in shapes]
        previous_base = (previous or {}).get("base") or {}
        base["cross_heads"] = previous_base.get("cross_heads", _config_int(model.config, model.stack.cross.config_heads))
    return fields


def _plain_keys(model, fields: dict) -> dict[str, int]:
    """Plain config keys that express uniform widths, so vanilla from_pretrained loads the result: the FFN width
    always can; head counts only where the config carries head_dim (otherwise head size = hidden / heads)."""
    layout = get_layout(model)
    keys = {}
    ffn = set(fields["ffn"])
    if len(ffn) == 1 and 0 not in ffn:
        keys[layout.config_ffn] = ffn.pop()
    heads, kv = set(fields["heads"]), set(fields["kv_heads"])
    if layout.config_head_dim and len(heads) == 1 and len(kv) == 1 and 0 not in heads:
        keys.update({layout.config_heads: heads.pop(), layout.config_kv_heads: kv.pop(),
                     layout.config_head_dim: fields["head_dim"]})
    return keys


def write_config_entry(model: nn.Module, layers: list[int] | None = None, total_layers: int | None = None) -> dict:
    """Record the model's current per-layer widths in `model.config.hf_prune` (and plain keys when uniform).

    layers, total_layers: the original indices of the current layers and the original layer count (depth
    surgery passes them); by default they are carried over from the existing entry.
    A model with several layer stacks gets a format 3 entry with one set of fields per stack; given a StackView,
    `layers`/`total_layers` are that stack's, the whole entry is rewritten and that stack's fields are returned.
    """
    if isinstance(model, StackView):
        entry = _write_stacks(model.model, {model.name: (layers, total_layers)})
        return entry["stacks"][model.name]
    if model_stacks(model) is not None:
        return _write_stacks(model, {})
    layout = get_layout(model)
    fields = _stack_fields(model, current_entry(model), layers, total_layers)
    entry = {"format_version": FORMAT_VERSION, "family": layout.family, **fields}
    setattr(model.config, ENTRY_KEY, entry)
    for key, value in _plain_keys(model, fields).items():
        setattr(model.config, key, value)
    return entry


def _write_stacks(model: nn.Module, depth: dict[str, tuple]) -> dict:
    """The format 3 entry of a multi-stack model; `depth`: {stack: (layers, total_layers)} from depth surgery.

    A plain key shared by several stacks (T5's `d_ff`) is written only when every stack reading it agrees.
    """
    from .stacks import stack_views

    views = stack_views(model)
    entry = {"format_version": STACKS_FORMAT_VERSION, "family": next(iter(views.values())).hf_prune_layout.family,
             "stacks": {}}
    proposals: dict[tuple[int, str], tuple[object, set]] = {}
    for name, view in views.items():
        layers, total = depth.get(name, (None, None))
        fields = _stack_fields(view, current_entry(view), layers, total)
        entry["stacks"][name] = fields
        layout = view.hf_prune_layout
        wanted = _plain_keys(view, fields)
        for key in {layout.config_ffn, layout.config_heads} | set(wanted):
            _, values = proposals.setdefault((id(view.config), key), (view.config, set()))
            values.add(wanted.get(key))  # None: this stack cannot be expressed by the plain key
    setattr(model.config, ENTRY_KEY, entry)
    for (_, key), (config, values) in proposals.items():
        if len(values) == 1 and None not in values:
            setattr(config, key, values.pop())
    return entry


def _where(at: str, name: str, index: int | None = None) -> str:
    """How a message names a field: config.json `hf_prune.heads[3]` (`at`: "hf_prune" or "hf_prune.stacks.encoder")."""
    return f"config.json `{at}.{name}{'' if index is None else f'[{index}]'}`"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field(entry: dict, name: str, kind, what: str, at: str = ENTRY_KEY):
    if name not in entry:
        raise ValueError(f"{_where(at, name)} is missing: expected {what}")
    value = entry[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{_where(at, name)} must be {what}, got {_short(value)}")
    return value


def _short(value, limit: int = 80) -> str:
    """repr() of a value from a possibly hostile file, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _int_list(entry: dict, name: str, n_layers: int, upper: int, at: str) -> list[int]:
    values = _field(entry, name, list, f"a list of {n_layers} integers", at)
    if len(values) != n_layers:
        raise ValueError(f"{_where(at, name)} has {len(values)} entries but the config has {n_layers} layers")
    for i, v in enumerate(values):
        if not _is_int(v):
            raise ValueError(f"{_where(at, name, i)} must be an integer, got {_short(v)}")
        if v < 0 or v > upper:
            raise ValueError(
                f"{_where(at, name, i)} is {_short(v)}: expected 0..{upper}, what the base architecture allows"
            )
    return values


def _config_layers(config, key: str = "num_hidden_layers") -> int:
    """The config's layer count (`key`: the stack's layer-count key), or ValueError when it is not a positive integer."""
    n_layers = getattr(config, key, None)
    if not _is_int(n_layers) or n_layers < 1:
        raise ValueError(f"config.json `{key}` must be a positive integer, got {_short(n_layers)}")
    return n_layers


def _read_base(entry: dict, config, layout: Layout, at: str) -> dict[str, int]:
    """`base`: the unpruned widths; positive integers, GQA-consistent, never narrower than the config's skeleton."""
    base = _field(entry, "base", dict, "an object with integer heads, kv_heads and ffn", at)
    for key in ("heads", "kv_heads", "ffn"):
        value = base.get(key)
        if not _is_int(value) or value < 1:
            raise ValueError(f"{_where(at, 'base.' + key)} must be a positive integer, got {_short(value)}")
    heads, kv_heads = base["heads"], base["kv_heads"]
    if layout.grouped and heads % kv_heads:
        raise ValueError(
            f"{_where(at, 'base')} has {heads} query heads over {kv_heads} key/value heads: heads must be a multiple of kv_heads"
        )
    if not layout.grouped and kv_heads != heads:
        raise ValueError(f"{_where(at, 'base.kv_heads')} is {kv_heads} but must equal base.heads ({heads}) for {layout.family}")
    try:
        dense = dense_widths(config, layout)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config.json has unusable width keys: {err}") from err
    for key in ("heads", "kv_heads", "ffn"):
        if dense[key] is not None and dense[key] > base[key]:
            raise ValueError(
                f"{_where(at, 'base.' + key)} is {base[key]}, narrower than the {dense[key]} that config.json's own keys give"
            )
    if not layout.grouped and dense["heads"] is not None and dense["heads"] != heads:
        # non-GQA configs never get their head count rewritten, so base.heads must be exactly the config's
        raise ValueError(
            f"{_where(at, 'base.heads')} is {heads} but config.json `{layout.config_heads}` is {dense['heads']}"
        )
    return {"heads": heads, "kv_heads": kv_heads, "ffn": base["ffn"]}


def _check_version(entry: dict, newest: int) -> int:
    version = _field(entry, "format_version", int, "an integer")
    if version > newest:
        raise ValueError(
            f"{_where(ENTRY_KEY, 'format_version')} is {_short(version)}, newer than this hf_prune understands "
            f"({newest}): upgrade hf_prune (pip install -U hf-prune)"
        )
    if version < 1:
        raise ValueError(f"{_where(ENTRY_KEY, 'format_version')} must be >= 1, got {version}")
    return version


def _check_family(entry: dict, config, family: str) -> None:
    found = _field(entry, "family", str, f"the string {family!r}")
    if found != family:
        raise ValueError(
            f"{_where(ENTRY_KEY, 'family')} is {_short(found)} but config.json's model_type "
            f"{getattr(config, 'model_type', None)!r} is of family {family!r}: the entry belongs to another model"
        )


def read_config_entry(config) -> dict | None:
    """The validated `hf_prune` entry of a config, or None for an unpruned model. ValueError names a bad field."""
    entry = getattr(config, ENTRY_KEY, None)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ValueError(f"config.json `{ENTRY_KEY}` must be an object, got {type(entry).__name__}")
    stacks = get_stacks(config)  # unsupported model_type -> ValueError (below, from get_layout)
    if stacks is not None:
        return _read_stacks_entry(entry, config, stacks)
    layout = get_layout(config)
    version = _check_version(entry, FORMAT_VERSION)
    _check_family(entry, config, layout.family)
    fields = _read_fields(entry, version, config, layout, _config_layers(config), ENTRY_KEY)
    return {**entry, **fields}


def _read_stacks_entry(entry: dict, config, stacks) -> dict:
    """A format 3 entry: `stacks` holds, per stack of the model type, that stack's validated fields."""
    version = _check_version(entry, STACKS_FORMAT_VERSION)
    if version < STACKS_FORMAT_VERSION:
        raise ValueError(
            f"{_where(ENTRY_KEY, 'format_version')} is {version}, but a {config.model_type} model has several layer "
            f"stacks, recorded from format {STACKS_FORMAT_VERSION} on: the entry belongs to another model"
        )
    _check_family(entry, config, stacks[0].layout.family)
    recorded = _field(entry, "stacks", dict, "an object {stack name: per-layer fields}")
    known = {stack.name: stack for stack in stacks}
    unknown = sorted(set(recorded) - set(known))
    if unknown or not recorded:
        raise ValueError(
            f"{_where(ENTRY_KEY, 'stacks')} must name some of {', '.join(known)}, got {_short(sorted(recorded))}"
        )
    out = {}
    for name, fields in recorded.items():
        at = f"{ENTRY_KEY}.stacks.{name}"
        if not isinstance(fields, dict):
            raise ValueError(f"config.json `{at}` must be an object, got {type(fields).__name__}")
        stack = known[name]
        stack_config = getattr(config, stack.config) if stack.config else config
        n_layers = _config_layers(stack_config, stack.layout.config_layers)
        out[name] = _read_fields(fields, version, stack_config, stack.layout, n_layers, at)
        if stack.cross is not None:
            out[name]["base"]["cross_heads"] = fields["base"].get("cross_heads")
            out[name].update(_read_cross(out[name], stack_config, stack.cross, n_layers, at))
    return {**entry, "stacks": out}


def _read_cross(fields: dict, config, cross: Layout, n_layers: int, at: str) -> dict:
    """`cross_heads` and `base.cross_heads` of a decoder stack."""
    dense = _config_int(config, cross.config_heads)
    total = fields["base"].get("cross_heads")
    if not _is_int(total) or total < 1 or (dense is not None and total != dense):
        raise ValueError(
            f"{_where(at, 'base.cross_heads')} must be the config's `{cross.config_heads}` ({dense}), got {_short(total)}"
        )
    return {"cross_heads": _int_list(fields, "cross_heads", n_layers, total, at)}


def _read_fields(entry: dict, version: int, config, layout: Layout, n_layers: int, at: str) -> dict:
    """The per-layer fields of one stack (or of a single-stack entry), validated against its config."""
    declared = _field(entry, "num_layers", int, "an integer", at)
    if declared != n_layers:
        raise ValueError(f"{_where(at, 'num_layers')} is {_short(declared)} but the config has {n_layers} layers")
    base = _read_base(entry, config, layout, at)
    layers, base["num_layers"] = _read_layers(entry, version, n_layers, at)
    head_dim = _field(entry, "head_dim", int, "a positive integer", at)
    if head_dim <= 0:
        raise ValueError(f"{_where(at, 'head_dim')} must be a positive integer, got {head_dim}")
    heads = _int_list(entry, "heads", n_layers, base["heads"], at)
    kv_heads = _int_list(entry, "kv_heads", n_layers, base["kv_heads"], at)
    ffn = _int_list(entry, "ffn", n_layers, base["ffn"], at)
    base_group = base["heads"] // base["kv_heads"]
    for i, (h, k) in enumerate(zip(heads, kv_heads)):
        if not layout.grouped and h != k:
            raise ValueError(f"{_where(at, 'kv_heads', i)} is {k} but must equal heads[{i}] ({h}) for {layout.family}")
        if layout.grouped and ((h == 0) != (k == 0) or (k and (h % k or h // k > base_group))):
            raise ValueError(
                f"config.json `{at}` layer {i}: {h} query heads over {k} key/value heads cannot be built "
                f"(each group must keep the same number of heads, at most {base_group})"
            )
    return {**entry, "base": base, "layers": layers, "heads": heads, "kv_heads": kv_heads, "ffn": ffn,
            "head_dim": head_dim}


def _read_layers(entry: dict, version: int, n_layers: int, at: str) -> tuple[list[int], int]:
    """`layers` and `base.num_layers` (format 2): which original layers remain, out of how many; format 1: all."""
    if version < 2:
        return list(range(n_layers)), n_layers
    total = entry["base"].get("num_layers")
    if not _is_int(total) or total < n_layers:
        raise ValueError(
            f"{_where(at, 'base.num_layers')} must be an integer of at least {n_layers} (the config's layers), "
            f"got {_short(total)}"
        )
    layers = _int_list(entry, "layers", n_layers, total - 1, at)
    if any(a >= b for a, b in zip(layers, layers[1:])):
        raise ValueError(
            f"{_where(at, 'layers')} must list distinct original layer indices in increasing order, got {_short(layers)}"
        )
    return layers, total
