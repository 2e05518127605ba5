"""Importance: one score per attention head and FFN neuron, from gradients, weight norms or activations."""

from .compute import compute_importance
from .estimators import DATA_METHODS, ESTIMATORS, GRADIENT_METHODS, METHODS, Estimator
from .scores import ImportanceScores
from .units import unit_parameters, unit_sums

__all__ = ["DATA_METHODS", "ESTIMATORS", "Estimator", "GRADIENT_METHODS", "ImportanceScores", "METHODS",
           "compute_importance", "unit_parameters", "unit_sums"]
