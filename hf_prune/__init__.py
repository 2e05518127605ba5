"""hf_prune: remove attention heads and FFN neurons from transformers v5 models, and reload them anywhere."""

from .callback import HeadPruningCallback, resize_to_checkpoint
from .config_entry import read_config_entry, write_config_entry
from .counting import count_flops, count_parameters
from .distillation import DistillationTrainer, distillation_loss
from .gates import attach_gates
from .importance import METHODS as IMPORTANCE_METHODS
from .importance import ImportanceScores, compute_importance
from .latency import LatencyStats, measure_latency
from .layouts import Layout, get_layout, supported_model_types
from .loading import load_pruned
from .lottery import LotteryTicketRewinder, reinitialize, rewind, snapshot_weights
from .mask_tuning import apply_mask_tuning, calibration_moments, tune_masks
from .plan import PruningPlan, plan_from_flops, plan_from_sparsity
from .quantize import quantize_dynamic_int8
from .reselect import reconstruction_scores, reselect_units
from .saving import save_pruned
from .shapes import LayerShape, layer_shapes
from .surgery import prune_model
from .unstructured import SparsityReport, load_sparse, prune_unstructured, save_sparse, sparsity_report

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
    "DistillationTrainer",
    "HeadPruningCallback",
    "ImportanceScores",
    "LatencyStats",
    "LayerShape",
    "Layout",
    "PruningPlan",
    "attach_gates",
    "compute_importance",
    "count_flops",
    "count_parameters",
    "distillation_loss",
    "get_layout",
    "layer_shapes",
    "load_pruned",
    "measure_latency",
    "plan_from_flops",
    "plan_from_sparsity",
    "prune_model",
    "read_config_entry",
    "reconstruction_scores",
    "reselect_units",
    "resize_to_checkpoint",
    "save_pruned",
    "supported_model_types",
    "tune_masks",
    "write_config_entry",
]
