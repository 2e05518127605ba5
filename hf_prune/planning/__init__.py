"""Planning: importance scores + a budget (sparsity, FLOPs, parameters, latency) + constraints -> a
JSON-serialisable `PruningPlan` that may remove heads, FFN neurons and whole layers."""

from .budgets import STRUCTURES, plan_from_flops, plan_from_latency, plan_from_params, plan_from_sparsity
from .latency_model import LatencyTable
from .plan import PruningPlan

__all__ = ["STRUCTURES", "LatencyTable", "PruningPlan", "plan_from_flops", "plan_from_latency", "plan_from_params",
           "plan_from_sparsity"]
