"""Retrain-free recovery: calibration statistics, least-squares scales / weights, and re-selection of units."""

from .mask_tuning import apply_mask_tuning, tune_masks
from .moments import calibration_moments, check_moments
from .reselect import reconstruction_scores, reselect_units
from .streaming import StreamingResult, stream_recover

__all__ = ["apply_mask_tuning", "calibration_moments", "check_moments", "reconstruction_scores", "reselect_units", "tune_masks",
           "StreamingResult", "stream_recover"]
