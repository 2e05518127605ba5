"""hf_prune: remove attention heads and FFN neurons from transformers v5 models, and reload them anywhere."""

from .architecture.config_entry import read_config_entry, write_config_entry
from .architecture.counting import count_flops, count_parameters
from .architecture.gates import attach_gates
from .architecture.layouts import Layout, get_layout, supported_model_types
from .architecture.shapes import LayerShape, layer_shapes
from .architecture.stacks import layer_stacks
from .deploy.gguf_export import export_gguf
from .deploy.latency import LatencyStats, measure_latency
from .deploy.latency_table import measure_latency_table
from .deploy.onnx_export import export_onnx
from .deploy.quantize import quantize_dynamic_int8
from .importance.compute import compute_importance
from .importance.estimators import METHODS as IMPORTANCE_METHODS
from .importance.layers import LAYER_METHODS as LAYER_IMPORTANCE_METHODS
from .importance.layers import LayerScores, compute_layer_importance
from .importance.scores import ImportanceScores
from .pipeline.retrain_free import RetrainFreeResult, prune_retrain_free
from .planning.budgets import plan_from_flops, plan_from_latency, plan_from_params, plan_from_sparsity
from .planning.latency_model import LatencyTable
from .planning.plan import PruningPlan
from .recovery.mask_tuning import apply_mask_tuning, tune_masks
from .recovery.moments import calibration_moments
from .recovery.reselect import reconstruction_scores, reselect_units
from .recovery.streaming import StreamingResult, stream_recover
from .serialization.loading import load_pruned
from .serialization.saving import save_pruned
from .serialization.sparse import load_sparse, save_sparse
from .surgery.depth import drop_layers
from .surgery.width import prune_model
from .training.callback import HeadPruningCallback, resize_to_checkpoint
from .training.config import PruningConfig
from .training.distillation import DistillationTrainer, distillation_loss
from .training.reporting import PruningLogMixin, PruningTrainer
from .unstructured.lottery import LotteryTicketRewinder, reinitialize, rewind, snapshot_weights
from .unstructured.magnitude import SparsityReport, prune_unstructured, sparsity_report

__version__ = "0.1.0"

__all__ = [
    "apply_mask_tuning",
    "calibration_moments",
    "sparsity_report",
    "save_sparse",
    "prune_unstructured",
    "load_sparse",
    "SparsityReport",
    "quantize_dynamic_int8",
    "snapshot_weights",
    "rewind",
    "reinitialize",
    "LotteryTicketRewinder",
    "IMPORTANCE_METHODS",
    "LAYER_IMPORTANCE_METHODS",
    "LayerScores",
    "compute_layer_importance",
    "DistillationTrainer",
    "HeadPruningCallback",
    "ImportanceScores",
    "LatencyStats",
    "LatencyTable",
    "LayerShape",
    "Layout",
    "PruningConfig",
    "PruningLogMixin",
    "PruningTrainer",
    "PruningPlan",
    "attach_gates",
    "compute_importance",
    "count_flops",
    "count_parameters",
    "distillation_loss",
    "drop_layers",
    "export_gguf",
    "export_onnx",
    "get_layout",
    "layer_shapes",
    "layer_stacks",
    "load_pruned",
    "measure_latency",
    "measure_latency_table",
    "plan_from_flops",
    "plan_from_latency",
    "plan_from_params",
    "plan_from_sparsity",
    "prune_model",
    "read_config_entry",
    "reconstruction_scores",
    "reselect_units",
    "resize_to_checkpoint",
    "save_pruned",
    "supported_model_types",
    "tune_masks",
    "prune_retrain_free",
    "RetrainFreeResult",
    "stream_recover",
    "StreamingResult",
    "write_config_entry",
]
