"""`LatencyTable`: a linear cost model of one model's measured latency on one machine for one workload.

    latency = base_seconds
            + sum over present layers of
                  layer_seconds
                + (attention_seconds + heads * head_seconds   if heads > 0 else 0)
                + (ffn_seconds + ffn * neuron_seconds         if ffn > 0 else 0)

A layer pruned to 0 heads (or 0 FFN neurons) still runs: `prune_model` gives the empty block a stub forward
that returns its output bias (and, for the attention, stores an empty key/value entry in the cache), and the
layer's norms and residual adds still run. Those costs are counted in `layer_seconds`; `attention_seconds` and
`ffn_seconds` are what a block with at least one unit costs on top of its empty stub.

The coefficients are fitted by non-negative least squares on relative errors to timings of pruned variants
(`hf_prune.deploy.measure_latency_table` measures them); `LatencyTable.fit` works on any recorded samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..architecture.shapes import layer_shapes
from ..serialization.json_file import JsonFile

MODES = ("forward", "decode")

# Feature columns from coarse to fine; a column that the coarser ones already explain is folded into them.
FEATURES = ("base_seconds", "layer_seconds", "attention_seconds", "ffn_seconds", "head_seconds", "neuron_seconds")


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _widths(values, name: str) -> list[int]:
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise ValueError(f"`{name}` must be a list of per-layer widths (one int per present layer), got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"`{name}` must hold non-negative integers (one per present layer), got {v!r}")
        out.append(int(v))
    return out


def _check_sample(sample, index: int) -> dict:
    """A sample as {"heads": [...], "ffn": [...], "seconds": float, ...}, validated."""
    if not isinstance(sample, dict) or not {"heads", "ffn", "seconds"} <= set(sample):
        raise ValueError(
            f"sample {index} must be a dict with 'heads' and 'ffn' (per-layer widths) and 'seconds' (median latency)"
        )
    heads = _widths(sample["heads"], f"samples[{index}]['heads']")
    ffn = _widths(sample["ffn"], f"samples[{index}]['ffn']")
    if len(heads) != len(ffn):
        raise ValueError(f"sample {index} lists {len(heads)} head widths but {len(ffn)} FFN widths: give one per layer")
    seconds = sample["seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"samples[{index}]['seconds'] must be a positive number of seconds, got {seconds!r}")
    return {**sample, "heads": heads, "ffn": ffn, "seconds": float(seconds)}


def features(heads: list[int], ffn: list[int]) -> list[float]:
    """[1, layers, attention blocks with heads, FFN blocks with neurons, total heads, total neurons] (FEATURES order)."""
    return [
        1.0,
        float(len(heads)),
        float(sum(1 for h in heads if h > 0)),
        float(sum(1 for f in ffn if f > 0)),
        float(sum(heads)),
        float(sum(ffn)),
    ]


def nnls(a: torch.Tensor, b: torch.Tensor, max_iter: int | None = None) -> torch.Tensor:
    """argmin ||a x - b|| subject to x >= 0 (Lawson-Hanson active set), in float64; a: (n, k), b: (n,)."""
    a, b = a.double(), b.double()
    n_features = a.shape[1]
    x = torch.zeros(n_features, dtype=torch.float64)
    passive = torch.zeros(n_features, dtype=torch.bool)
    tol = 1e-12 * max(1.0, float(a.abs().max())) * max(1.0, float(b.abs().max())) * a.shape[0]
    max_iter = max_iter or 3 * n_features + 10

    def solve(mask: torch.Tensor) -> torch.Tensor:
        z = torch.zeros(n_features, dtype=torch.float64)
        if mask.any():
            z[mask] = torch.linalg.lstsq(a[:, mask], b[:, None]).solution[:, 0]
        return z

    for _ in range(max_iter):
        w = a.T @ (b - a @ x)  # (k,) negative gradient
        candidates = (~passive) & (w > tol)
        if not candidates.any():
            break
        passive[torch.where(candidates, w, torch.full_like(w, -math.inf)).argmax()] = True
        for _ in range(max_iter):
            z = solve(passive)
            if (z[passive] > 0).all():
                break
            # step back along x -> z until the first passive coefficient hits 0, and make it active again
            blocking = passive & (z <= 0)
            alpha = torch.nan_to_num(torch.min(x[blocking] / (x[blocking] - z[blocking])), nan=0.0)
            x = x + alpha * (z - x)
            passive &= x > 1e-15
            x[~passive] = 0.0
        else:
            z = solve(passive)
        x = z.clamp_min(0.0)
    return x


def _identifiable(matrix: torch.Tensor) -> list[bool]:
    """Columns to fit: each column, coarse to fine, is kept only when it raises the rank of the kept ones."""
    scaled = matrix / matrix.norm(dim=0).clamp_min(1e-300)  # (n, k) unit columns, so the rank tolerance is scale-free
    keep: list[bool] = []
    for j in range(matrix.shape[1]):
        chosen = [i for i, k in enumerate(keep) if k] + [j]
        sub = scaled[:, chosen]
        rank = int(torch.linalg.matrix_rank(sub, rtol=1e-9)) if bool(matrix[:, j].abs().sum() > 0) else len(chosen) - 1
        keep.append(rank == len(chosen))
    return keep


@dataclass
class LatencyTable(JsonFile):
    """Fitted latency cost model of one model on one machine for one workload (see the module docstring).

    mode: "forward" (one full forward of batch_size x seq_len tokens) or "decode" (one new token per sequence,
    with a key/value cache already holding seq_len tokens). All costs are in seconds. `samples` holds the
    measured configurations ({"heads": [...], "ffn": [...], "seconds": median, ...}); `fit_error` the fit's
    relative errors on them ({"max": ..., "median": ...}); `folded` the coefficients the samples could not
    identify, fixed at 0 (their cost is carried by the coarser ones).
    """

    mode: str
    batch_size: int
    seq_len: int
    base_seconds: float = 0.0
    layer_seconds: float = 0.0
    attention_seconds: float = 0.0
    head_seconds: float = 0.0
    ffn_seconds: float = 0.0
    neuron_seconds: float = 0.0
    samples: list[dict] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    fit_error: dict = field(default_factory=dict)
    folded: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_workload(self.mode, self.batch_size, self.seq_len)
        for name in FEATURES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
            setattr(self, name, float(value))
        if not isinstance(self.metadata, dict):
            raise ValueError(f"`metadata` must be a dict, got {type(self.metadata).__name__}")
        self.samples = [_check_sample(s, i) for i, s in enumerate(self.samples)]

    # ------------------------------------------------------------------ costs

    def attention_cost(self, heads: int) -> float:
        """Seconds of one attention block with `heads` query heads (0 for an empty block: see the module docstring)."""
        return 0.0 if heads == 0 else self.attention_seconds + heads * self.head_seconds

    def ffn_cost(self, ffn: int) -> float:
        """Seconds of one feed-forward block with `ffn` neurons (0 for an empty block)."""
        return 0.0 if ffn == 0 else self.ffn_seconds + ffn * self.neuron_seconds

    def layer_cost(self, heads: int, ffn: int) -> float:
        """Seconds of one present layer with `heads` query heads and `ffn` FFN neurons."""
        return self.layer_seconds + self.attention_cost(heads) + self.ffn_cost(ffn)

    def predict(self, heads: list[int], ffn: list[int]) -> float:
        """Predicted seconds of a model whose present layers have these widths (removed layers not listed)."""
        heads, ffn = _widths(heads, "heads"), _widths(ffn, "ffn")
        if len(heads) != len(ffn):
            raise ValueError(f"got {len(heads)} head widths but {len(ffn)} FFN widths: give one of each per present layer")
        return self.base_seconds + sum(self.layer_cost(h, f) for h, f in zip(heads, ffn))

    def predict_model(self, model: nn.Module) -> float:
        """Predicted seconds of `model` (its current per-layer widths, from `layer_shapes`)."""
        shapes = layer_shapes(model)
        return self.predict([s.heads for s in shapes], [s.ffn for s in shapes])

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, samples: list[dict], *, mode: str, batch_size: int, seq_len: int,
            metadata: dict | None = None) -> LatencyTable:
        """Fit the coefficients to `samples` ({"heads": [...], "ffn": [...], "seconds": s}, one per measured variant).

        Non-negative least squares on relative errors (each row divided by its seconds), over the features
        [1, layers, attention blocks with heads, FFN blocks with neurons, total heads, total neurons]. A
        feature the samples cannot tell apart from the coarser ones (for example attention blocks when no
        sample has a 0-head layer) is fixed at 0 and listed in `folded`; the coarser coefficient absorbs it.
        """
        check_workload(mode, batch_size, seq_len)
        if isinstance(samples, (str, bytes, dict)) or not hasattr(samples, "__iter__"):
            raise ValueError("`samples` must be a list of {'heads': [...], 'ffn': [...], 'seconds': s} dicts")
        samples = [_check_sample(s, i) for i, s in enumerate(samples)]
        if not samples:
            raise ValueError("`samples` is empty: measure at least one configuration (see measure_latency_table)")
        x = torch.tensor([features(s["heads"], s["ffn"]) for s in samples], dtype=torch.float64)  # (n, 6)
        y = torch.tensor([s["seconds"] for s in samples], dtype=torch.float64)  # (n,)
        keep = _identifiable(x)
        cols = [j for j, k in enumerate(keep) if k]
        a = x[:, cols] / y[:, None]  # relative residuals: (pred - y) / y
        scale = a.norm(dim=0).clamp_min(1e-300)  # unit columns for a well-conditioned solve
        coef = nnls(a / scale, torch.ones_like(y)) / scale
        values = dict.fromkeys(FEATURES, 0.0)
        for j, c in zip(cols, coef.tolist()):
            values[FEATURES[j]] = max(0.0, float(c))
        table = cls(mode=mode, batch_size=batch_size, seq_len=seq_len, samples=samples,
                    metadata=dict(metadata or {}), folded=[FEATURES[j] for j, k in enumerate(keep) if not k], **values)
        errors = sorted(table.relative_errors())
        table.fit_error = {"max": max(errors), "median": errors[len(errors) // 2] if len(errors) % 2
                           else 0.5 * (errors[len(errors) // 2 - 1] + errors[len(errors) // 2])}
        return table

    def relative_errors(self) -> list[float]:
        """|predicted - measured| / measured for each sample."""
        return [abs(self.predict(s["heads"], s["ffn"]) - s["seconds"]) / s["seconds"] for s in self.samples]

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            **{name: getattr(self, name) for name in FEATURES},
            "samples": [dict(s) for s in self.samples],
            "metadata": self.metadata,
            "fit_error": dict(self.fit_error),
            "folded": list(self.folded),
        }

    @classmethod
    def from_dict(cls, data: dict) -> LatencyTable:
        required = {"mode", "batch_size", "seq_len", *FEATURES}
        if not isinstance(data, dict) or not required <= set(data):
            missing = sorted(required - set(data)) if isinstance(data, dict) else sorted(required)
            raise ValueError(f"a latency table is a dict from LatencyTable.to_dict; missing keys {missing}")
        return cls(
            mode=data["mode"], batch_size=data["batch_size"], seq_len=data["seq_len"],
            **{name: data[name] for name in FEATURES},
            samples=data.get("samples", []), metadata=data.get("metadata", {}),
            fit_error=data.get("fit_error", {}), folded=data.get("folded", []),
        )


def check_workload(mode, batch_size, seq_len) -> None:
    """ValueError for a mode outside MODES or a non-positive batch size or sequence length."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'forward' (a full forward pass) or 'decode' (one token with a KV cache), got {mode!r}")
    _positive_int(batch_size, "batch_size")
    _positive_int(seq_len, "seq_len")
