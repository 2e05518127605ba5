"""`PruningPlan`: what to remove per layer, in exactly the form `prune_model` takes, plus metadata; JSON round-trip."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..architecture.shapes import layer_shapes
from ..serialization.json_file import JsonFile
from ..surgery.depth import as_layer_index
from ..surgery.width import prune_model


def _layer_key(key) -> int | tuple[str, int]:
    """Sort key of a layer key: an int (or "3"), or "<stack>.<layer>" on models with several stacks."""
    if isinstance(key, str) and "." in key:
        stack, _, layer = key.partition(".")
        return stack, int(layer)
    return int(key)


def _int_keys(mapping) -> dict:
    """{layer: sorted unit indices}: int layer keys, or "<stack>.<layer>" strings kept as they are (empty lists dropped)."""
    out = {}
    for key, units in mapping.items():
        if len(units):
            out[key if isinstance(key, str) and "." in key else int(key)] = sorted(int(i) for i in units)
    return dict(sorted(out.items(), key=lambda kv: _layer_key(kv[0])))


@dataclass(frozen=True)
class PruningPlan(JsonFile):
    """What to remove: {layer: [query head indices]}, {layer: [FFN neuron indices]} and [whole layers], plus metadata.

    On models with several layer stacks the keys are "<stack>.<layer>" strings and `cross_heads` holds the
    cross-attention heads of decoder layers.

    All layer indices refer to the model's layers before the plan is applied (heads and neurons are cut
    first, layers removed last, as `prune_model` does).
    """

    heads: dict[int, list[int]] = field(default_factory=dict)
    neurons: dict[int, list[int]] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    layers: list[int] = field(default_factory=list)
    cross_heads: dict[str, list[int]] = field(default_factory=dict)  # encoder-decoders: {"decoder.2": [1]}

    def __post_init__(self):
        object.__setattr__(self, "heads", _int_keys(self.heads))
        object.__setattr__(self, "neurons", _int_keys(self.neurons))
        object.__setattr__(self, "cross_heads", _int_keys(self.cross_heads))
        if isinstance(self.layers, (str, bytes, dict)) or not hasattr(self.layers, "__iter__"):
            raise ValueError(f"`layers` of a pruning plan must be a list of layer indices, got {self.layers!r}")
        object.__setattr__(self, "layers", sorted(
            (i if isinstance(i, str) and "." in i else as_layer_index(i, "index in `layers`") for i in self.layers),
            key=_layer_key))

    def to_dict(self) -> dict:
        out = {
            "heads": {str(k): v for k, v in self.heads.items()},
            "neurons": {str(k): v for k, v in self.neurons.items()},
            "layers": list(self.layers),
            "metadata": self.metadata,
        }
        if self.cross_heads:
            out["cross_heads"] = dict(self.cross_heads)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> PruningPlan:
        """A plan from `to_dict`'s form; plans written before `layers` existed load with no layer removed."""
        if not isinstance(data, dict) or not {"heads", "neurons"} <= set(data):
            raise ValueError(
                "a pruning plan is a dict with keys 'heads' and 'neurons' (and optional 'layers' and 'metadata')"
            )
        return cls(data["heads"], data["neurons"], data.get("metadata", {}), data.get("layers", []),
                   data.get("cross_heads", {}))

    def to_flat(self, keys) -> PruningPlan:
        """This plan ("<stack>.<layer>" keys, `cross_heads`) over the entries of a FlatView whose entry i comes from
        `keys[i]` = (stack, layer, cross). ValueError for a key naming no such layer, or for whole layers."""
        if self.layers:
            raise ValueError("plans that remove whole layers are not supported here on models with several layer "
                             "stacks yet: apply the width plan, then drop_layers")
        index = {tuple(key): i for i, key in enumerate(keys)}
        stacks = sorted({key[0] for key in keys})
        flat: dict[str, dict[int, list[int]]] = {"heads": {}, "neurons": {}}
        for kind, mapping, cross in (("heads", self.heads, False), ("heads", self.cross_heads, True),
                                     ("neurons", self.neurons, False)):
            for key, units in mapping.items():
                stack, _, layer = str(key).partition(".")
                entry = (stack, int(layer), cross) if layer.isdigit() else None
                if entry not in index:
                    raise ValueError(f"plan key {key!r} names no {'decoder ' if cross else ''}layer of this model "
                                     f"(stacks: {', '.join(stacks)}; keys are \"<stack>.<layer>\")")
                flat[kind][index[entry]] = units
        return PruningPlan(flat["heads"], flat["neurons"], dict(self.metadata))

    @classmethod
    def from_flat(cls, plan: PruningPlan, keys) -> PruningPlan:
        """A plan over FlatView entries (`keys[i]` = (stack, layer, cross)) with "<stack>.<layer>" keys and
        `cross_heads`."""
        heads, cross, neurons = {}, {}, {}
        for index, units in plan.heads.items():
            stack, layer, is_cross = keys[index]
            (cross if is_cross else heads)[f"{stack}.{layer}"] = units
        for index, units in plan.neurons.items():
            stack, layer, _ = keys[index]
            neurons[f"{stack}.{layer}"] = units
        metadata = {key: value for key, value in plan.metadata.items() if key != "shapes"}  # flat shapes mean nothing
        metadata["stacks"] = list(dict.fromkeys(key[0] for key in keys))
        return cls(heads, neurons, metadata, [], cross)

    def kept_widths(self) -> dict[str, list[int]]:
        """Query heads and FFN neurons each layer keeps (needs the `shapes` metadata)."""
        shapes = self.metadata["shapes"]
        return {
            "heads": [h - len(self.heads.get(i, [])) for i, h in enumerate(shapes["heads"])],
            "ffn": [f - len(self.neurons.get(i, [])) for i, f in enumerate(shapes["ffn"])],
        }

    def check_model(self, model: nn.Module) -> None:
        """ValueError unless the model has the widths this plan was made for (when recorded)."""
        shapes = self.metadata.get("shapes")
        current = layer_shapes(model)
        if shapes is None or isinstance(current, dict):  # several stacks: prune_model checks every index
            return
        have = {"heads": [s.heads for s in current], "ffn": [s.ffn for s in current]}
        for key in ("heads", "ffn"):
            if have[key] != list(shapes[key]):
                raise ValueError(f"the plan was made for {key} widths {shapes[key]}, but the model has {have[key]}")

    def apply(self, model: nn.Module) -> nn.Module:
        """Check the model's widths, then `prune_model(model, heads=..., neurons=..., layers=...)`."""
        self.check_model(model)
        return prune_model(model, heads=self.heads, neurons=self.neurons, layers=self.layers,
                           cross_heads=self.cross_heads or None)
