"""Batching of tokenised movie-review examples, shared by bench_accuracy.py and the peer-tool scripts.

Imports only torch, so the peers' transformers-4.x venvs can use it too. An example is a dict of lists
`input_ids`, `token_type_ids`, `attention_mask` and an int `labels`.
"""

from __future__ import annotations

import random

import torch


def collate(examples, pad_id=0):
    """Pad a list of examples to the longest one -> dict of (batch, width) tensors plus (batch,) labels."""
    width = max(len(e["input_ids"]) for e in examples)
    out = {}
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        pad = pad_id if key == "input_ids" else 0
        out[key] = torch.tensor([e[key] + [pad] * (width - len(e[key])) for e in examples], dtype=torch.long)
    out["labels"] = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
    return out


def batches(examples, size, shuffle_seed=None):
    """Batches in order, or (shuffle_seed) shuffled with length bucketing: less padding, same epoch."""
    order = list(range(len(examples)))
    if shuffle_seed is None:
        return [collate([examples[i] for i in order[k:k + size]]) for k in range(0, len(order), size)]
    rng = random.Random(shuffle_seed)
    rng.shuffle(order)
    chunk = size * 16
    out = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c:c + chunk], key=lambda i: len(examples[i]["input_ids"]))
        out += [collate([examples[i] for i in part[k:k + size]]) for k in range(0, len(part), size)]
    rng.shuffle(out)
    return out


def eval_batches(examples, size=128):
    """Length-sorted batches (less padding) for evaluation."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    return [collate([examples[i] for i in order[k:k + size]]) for k in range(0, len(order), size)]
