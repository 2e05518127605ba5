"""Planning: importance scores + a budget (sparsity, FLOPs) + constraints -> a JSON-serialisable `PruningPlan`."""

from .budgets import plan_from_flops, plan_from_sparsity
from .plan import PruningPlan

__all__ = ["PruningPlan", "plan_from_flops", "plan_from_sparsity"]
