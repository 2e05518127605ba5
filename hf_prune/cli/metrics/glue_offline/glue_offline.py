"""GLUE metrics for `evaluate`, offline: accuracy, F1, Matthews correlation, Pearson and Spearman.

Load with `evaluate.load(path_to_this_folder, config_name=task)`, or `hf_prune.cli.metrics.load_glue_metric(task)`.
"""

import datasets
import evaluate

from hf_prune.cli.metrics.core import TASK_METRICS, compute_metrics

_DESCRIPTION = "GLUE task metrics computed locally (hf_prune); config_name is the task, e.g. 'sst2' or 'stsb'."
_KWARGS = "predictions: class ids (or floats for stsb/regression); references: the same."


class GlueOffline(evaluate.Metric):
    def _info(self):
        if self.config_name not in TASK_METRICS:
            raise KeyError(f"config_name must be one of {list(TASK_METRICS)}")
        dtype = "float32" if self.config_name in ("stsb", "regression") else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
        )

    def _compute(self, predictions, references):
        return compute_metrics(self.config_name, predictions, references)
