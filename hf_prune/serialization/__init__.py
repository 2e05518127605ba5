"""Saving and loading: atomic writes, `load_pruned`, `save_pruned`, and the compact sparse export."""

from .atomic import atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_text
from .loading import load_pruned
from .saving import save_pruned
from .sparse import load_sparse, save_sparse

__all__ = [
    "atomic_directory", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "load_pruned",
    "load_sparse", "save_pruned", "save_sparse",
]
