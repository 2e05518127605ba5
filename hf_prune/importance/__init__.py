"""Importance: one score per attention head and FFN neuron, from gradients, weight norms or activations, and one
score per layer (`compute_layer_importance`)."""

from .compute import compute_importance
from .estimators import DATA_METHODS, ESTIMATORS, GRADIENT_METHODS, METHODS, Estimator
from .layers import LAYER_ESTIMATORS, LAYER_METHODS, LayerEstimator, LayerScores, compute_layer_importance
from .scores import ImportanceScores
from .units import unit_rows, unit_sums

__all__ = ["DATA_METHODS", "ESTIMATORS", "Estimator", "GRADIENT_METHODS", "ImportanceScores", "LAYER_ESTIMATORS",
           "LAYER_METHODS", "LayerEstimator", "LayerScores", "METHODS", "compute_importance", "compute_layer_importance",
           "unit_rows", "unit_sums"]
