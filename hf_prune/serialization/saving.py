"""`save_pruned`: `save_pretrained` (and the tokenizer) into a folder that appears all at once, or not at all."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import PreTrainedModel

from .atomic import atomic_directory


def save_pruned(model: PreTrainedModel, folder: str | os.PathLike, tokenizer=None, overwrite: bool = False,
                **save_pretrained_kwargs) -> Path:
    """Save a (pruned) model, and optionally its tokenizer or processor, atomically; return the folder.

    Everything is written to a hidden temporary folder next to `folder`, which replaces `folder` only once
    every file is complete: an interrupted save leaves the previous folder as it was and no half-written
    folder behind. overwrite=False refuses (FileExistsError) a non-empty `folder`, before writing anything.
    Extra keywords (safe_serialization, max_shard_size, ...) go to `save_pretrained`.
    """
    if not hasattr(model, "save_pretrained"):
        raise ValueError(f"save_pruned needs a transformers model with save_pretrained, got {type(model).__name__}")
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, **save_pretrained_kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(folder)
