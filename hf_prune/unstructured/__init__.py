"""Unstructured magnitude pruning (torch.nn.utils.prune) and lottery tickets with rewinding."""

from .lottery import LotteryTicketRewinder, reinitialize, rewind, snapshot_weights
from .magnitude import SparsityReport, prune_unstructured, sparsity_report

__all__ = [
    "LotteryTicketRewinder", "SparsityReport", "prune_unstructured", "reinitialize", "rewind",
    "snapshot_weights", "sparsity_report",
]
