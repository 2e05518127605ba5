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
            if "num_layers" not in meta:
                raise ValueError(f"{path} is not an hf_prune importance file (no num_layers metadata)")
            n = int(meta["num_layers"])
            heads = [f.get_tensor(f"heads.{i}") for i in range(n)]
            neurons = [f.get_tensor(f"neurons.{i}") for i in range(n)]
            layers = f.get_tensor("layers").tolist() if "layers" in f.keys() else None  # absent in older files
        return cls(heads, neurons, json.loads(meta["kv_heads"]), meta["method"], int(meta.get("num_batches", 0)),
                   layers=layers)


