"""Offline GLUE metrics: an evaluate metric module shipped inside the package, and its plain numpy core."""

from .core import TASK_METRICS, compute_metrics, load_glue_metric, primary_metric

__all__ = ["TASK_METRICS", "compute_metrics", "load_glue_metric", "primary_metric"]
