"""GLUE metrics in plain numpy (no scipy/sklearn), and `load_glue_metric`, which loads them through evaluate's API.

`evaluate.load("glue", task)` fetches a script from the Hub; this package ships its own metric module
(hf_prune/cli/metrics/glue_offline/glue_offline.py) and loads it by path, so it works offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# task -> metric names, primary first (as the GLUE benchmark reports them)
TASK_METRICS = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "qqp": ("f1", "accuracy"),
    "stsb": ("pearson", "spearmanr"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
    "classification": ("accuracy",),  # files with a categorical label
    "binary": ("accuracy", "f1"),  # files with two classes
    "regression": ("pearson", "spearmanr"),  # files with a float label
}


def primary_metric(task: str) -> str:
    return TASK_METRICS[task][0]


def _accuracy(pred, ref) -> float:
    return float((pred == ref).mean())


def _f1(pred, ref) -> float:
    tp = float(((pred == 1) & (ref == 1)).sum())
    fp = float(((pred == 1) & (ref != 1)).sum())
    fn = float(((pred != 1) & (ref == 1)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _matthews(pred, ref) -> float:
    labels = np.unique(np.concatenate([pred, ref]))
    index = {v: i for i, v in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)))
    for p, r in zip(pred, ref):
        confusion[index[r], index[p]] += 1
    t, p, c, s = confusion.sum(1), confusion.sum(0), np.trace(confusion), confusion.sum()
    denominator = np.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    return 0.0 if denominator == 0 else float((c * s - (t * p).sum()) / denominator)


def _pearson(x, y) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return 0.0 if denominator == 0 else float((x * y).sum() / denominator)


def _ranks(x) -> np.ndarray:
    """Average ranks (ties share the mean rank), as Spearman's correlation needs."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    values = np.asarray(x)[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or values[end] != values[start]:
            ranks[order[start:end]] = (start + end - 1) / 2
            start = end
    return ranks


_FUNCTIONS = {
    "accuracy": _accuracy,
    "f1": _f1,
    "matthews_correlation": _matthews,
    "pearson": lambda p, r: _pearson(p.astype(float), r.astype(float)),
    "spearmanr": lambda p, r: _pearson(_ranks(p.astype(float)), _ranks(r.astype(float))),
}


def compute_metrics(task: str, predictions, references) -> dict[str, float]:
    """The task's metrics for `predictions` (class ids or floats) against `references`."""
    if task not in TASK_METRICS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_METRICS)}")
    pred, ref = np.asarray(predictions), np.asarray(references)
    if pred.shape != ref.shape or pred.size == 0:
        raise ValueError(f"need as many predictions as references (> 0), got {pred.shape} and {ref.shape}")
    return {name: _FUNCTIONS[name](pred, ref) for name in TASK_METRICS[task]}


def load_glue_metric(task: str):
    """The task's metric as an `evaluate` module, loaded from this package (no Hub access)."""
    import evaluate

    if task not in TASK_METRICS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_METRICS)}")
    return evaluate.load(str(Path(__file__).parent / "glue_offline"), config_name=task)
