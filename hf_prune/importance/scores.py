"""`ImportanceScores`: one score per attention head and per FFN neuron of every layer (and optionally one per
layer), saveable as safetensors."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save

from ..serialization.atomic import atomic_write_bytes


@dataclass
class ImportanceScores:
    """Per-layer scores: `heads[i]` has one score per current query head, `neurons[i]` one per FFN neuron."""

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]
    kv_heads: list[int]  # key/value heads per layer (== query heads without grouped-query attention)
    method: str
    num_batches: int = 0
    layers: list[float] | torch.Tensor | None = None  # optional: one score per layer (`compute_layer_importance`)
    cross_heads: list[torch.Tensor] | None = None  # a decoder stack's cross-attention heads, per layer
    stacks: dict[str, ImportanceScores] | None = None  # models with several layer stacks: the scores of each
    # (then `heads`, `neurons` and `kv_heads` are empty), keyed and ordered as `hf_prune.layer_stacks(model)`

    def flatten(self) -> ImportanceScores:
        """Stacked scores as one list in `hf_prune.architecture.stacks.FlatView` order: every stack's layers, then
        every decoder layer's cross-attention heads (with no neuron)."""
        if self.stacks is None:
            return self
        heads, neurons, kv_heads = [], [], []
        for part in self.stacks.values():
            heads += part.heads
            neurons += part.neurons
            kv_heads += part.kv_heads
        for part in self.stacks.values():
            for cross in part.cross_heads or []:
                heads.append(cross)
                neurons.append(cross.new_zeros(0))
                kv_heads.append(len(cross))
        return ImportanceScores(heads, neurons, kv_heads, self.method, self.num_batches)

    def flat_keys(self) -> list[tuple[str, int, bool]]:
        """(stack, layer, cross) of every entry of `flatten()`, in order."""
        keys = [(name, i, False) for name, part in self.stacks.items() for i in range(part.num_layers)]
        return keys + [(name, i, True) for name, part in self.stacks.items() for i in range(len(part.cross_heads or []))]

    @classmethod
    def from_flat(cls, flat: ImportanceScores, keys) -> ImportanceScores:
        """Stacked scores from scores in FlatView order; `keys[i]`: (stack, layer, cross) of flat entry i."""
        stacks: dict[str, ImportanceScores] = {}
        for i, (stack, _, cross) in enumerate(keys):
            part = stacks.setdefault(stack, cls([], [], [], flat.method, flat.num_batches))
            if cross:
                part.cross_heads = (part.cross_heads or []) + [flat.heads[i]]
            else:
                part.heads.append(flat.heads[i])
                part.neurons.append(flat.neurons[i])
                part.kv_heads.append(flat.kv_heads[i])
        return cls([], [], [], flat.method, flat.num_batches, stacks=stacks)

    @property
    def groups(self) -> list[torch.Tensor]:
        """Scores per key/value group (sum over the group's query heads); query head h is in group h // (heads // kv)."""
        out = []
        for h, kv in zip(self.heads, self.kv_heads):
            out.append(h.reshape(kv, -1).sum(1) if kv else h.new_zeros(0))  # (kv, heads per group) -> (kv,)
        return out

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    def save(self, path: str | os.PathLike) -> None:
        """Write to a safetensors file (atomically: temp file, then os.replace)."""
        if self.stacks is not None:
            self._save_stacks(path)
            return
        tensors = {f"heads.{i}": t.detach().float().cpu().contiguous() for i, t in enumerate(self.heads)}
        tensors.update({f"neurons.{i}": t.detach().float().cpu().contiguous() for i, t in enumerate(self.neurons)})
        if self.layers is not None:
            tensors["layers"] = torch.as_tensor(self.layers, dtype=torch.float64).detach().cpu().reshape(-1).contiguous()
        metadata = {
            "method": self.method,
            "kv_heads": json.dumps(list(self.kv_heads)),
            "num_layers": str(self.num_layers),
            "num_batches": str(self.num_batches),
        }
        atomic_write_bytes(path, save(tensors, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImportanceScores:
        """Read a file written by `save`."""
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "stacks" in meta:
                return cls._load_stacks(f, meta)
            if "num_layers" not in meta:
                raise ValueError(f"{path} is not an hf_prune importance file (no num_layers metadata)")
            n = int(meta["num_layers"])
            heads = [f.get_tensor(f"heads.{i}") for i in range(n)]
            neurons = [f.get_tensor(f"neurons.{i}") for i in range(n)]
            layers = f.get_tensor("layers").tolist() if "layers" in f.keys() else None  # absent in older files
        return cls(heads, neurons, json.loads(meta["kv_heads"]), meta["method"], int(meta.get("num_batches", 0)),
                   layers=layers)



    def _save_stacks(self, path) -> None:
        tensors, layout = {}, {}
        for name, part in self.stacks.items():
            for kind in ("heads", "neurons", "cross_heads"):
                for i, t in enumerate(getattr(part, kind) or []):
                    tensors[f"{name}.{kind}.{i}"] = t.detach().float().cpu().contiguous()
            layout[name] = {"num_layers": part.num_layers, "kv_heads": list(part.kv_heads),
                            "cross": part.cross_heads is not None}
        metadata = {"method": self.method, "num_batches": str(self.num_batches), "stacks": json.dumps(layout)}
        atomic_write_bytes(path, save(tensors, metadata=metadata))

    @classmethod
    def _load_stacks(cls, f, meta: dict) -> ImportanceScores:
        stacks = {}
        for name, info in json.loads(meta["stacks"]).items():
            n = int(info["num_layers"])
            part = cls([f.get_tensor(f"{name}.heads.{i}") for i in range(n)],
                       [f.get_tensor(f"{name}.neurons.{i}") for i in range(n)], info["kv_heads"], meta["method"],
                       int(meta.get("num_batches", 0)))
            if info.get("cross"):
                part.cross_heads = [f.get_tensor(f"{name}.cross_heads.{i}") for i in range(n)]
            stacks[name] = part
        return cls([], [], [], meta["method"], int(meta.get("num_batches", 0)), stacks=stacks)
