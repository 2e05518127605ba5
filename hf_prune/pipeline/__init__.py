"""End-to-end pruning pipelines built from the library's parts (scoring, planning, recovery)."""

from .retrain_free import RetrainFreeResult, make_plan, prune_retrain_free

__all__ = ["RetrainFreeResult", "make_plan", "prune_retrain_free"]
