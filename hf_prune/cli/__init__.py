"""The command-line application (`scripts/prune_heads.py`, `hf-prune-heads`): arguments, data, metrics, report."""


from .app import main

__all__ = ["main"]
