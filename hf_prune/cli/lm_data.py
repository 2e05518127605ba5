"""Text for the LM command line: read the train/validation text, tokenise it as one stream, cut it into windows.

Sources: a Hub dataset (`datasets.load_dataset(name, config)`, its `text_column_name`), or local files: plain
text (.txt/.raw, possibly .gz-compressed: the whole file is one document, as WikiText's raw files) or
csv/json/jsonl with a text column (one document per row). Documents are tokenised with the tokenizer's
defaults and concatenated (as run_clm.py's `group_texts`); windows are the stream's non-overlapping
`block_size`-token slices from its start (benchmarks/bench_perplexity.py measures SmolLM2 the same way).
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass

import torch

from .lm_arguments import data_format

CHARS_PER_TOKEN = 8  # a prefix of need * 8 characters surely holds `need` tokens of natural text (WikiText: ~4.5)


@dataclass
class LMText:
    """The documents of the training (calibration, healing) and validation (perplexity) splits."""

    train: list[str]
    validation: list[str]
    source: str  # how the report names the data


def read_text_file(path: str) -> list[str]:
    """A plain text file (gzip when it ends in .gz) as one document."""
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [handle.read()]


def read_table_file(path: str, column: str) -> list[str]:
    """The `column` of a csv/json/jsonl file; ValueError naming the columns when it is missing."""
    from datasets import load_dataset

    table = load_dataset(data_format(path), data_files={"data": str(path)})["data"]
    if column not in table.column_names:
        raise ValueError(f"{path} has no column {column!r} (columns: {', '.join(table.column_names)}): "
                         "pass --text_column_name")
    return [t for t in table[column] if isinstance(t, str)]


def read_file(path: str, column: str) -> list[str]:
    return read_text_file(path) if data_format(path) == "text" else read_table_file(path, column)


def hub_texts(args) -> tuple[list[str], list[str] | None]:
    """Train and (if the dataset has one) validation documents of a Hub dataset."""
    from datasets import load_dataset

    raw = load_dataset(args.dataset_name, args.dataset_config_name)
    if "train" not in raw:
        raise ValueError(f"dataset {args.dataset_name!r} has no train split (splits: {', '.join(raw)})")
    column = args.text_column_name
    for split in raw.values():
        if column not in split.column_names:
            raise ValueError(f"dataset {args.dataset_name!r} has no column {column!r} (columns: "
                             f"{', '.join(split.column_names)}): pass --text_column_name")
    validation = raw["validation"][column] if "validation" in raw else None
    return list(raw["train"][column]), validation


def load_lm_text(args) -> LMText:
    """The documents of both splits; without a validation split, the last --validation_split_percentage of train."""
    if args.dataset_name is not None:
        train, validation = hub_texts(args)
        source = args.dataset_name + (f" ({args.dataset_config_name})" if args.dataset_config_name else "")
    else:
        train = read_file(args.train_file, args.text_column_name)
        validation = read_file(args.validation_file, args.text_column_name) if args.validation_file else None
        source = "files"
    if validation is None:
        train, validation = split_off(train, args.validation_split_percentage)
    return LMText(train=train, validation=validation, source=source)


def split_off(documents: list[str], percentage: int) -> tuple[list[str], list[str]]:
    """(train, validation): the last `percentage` percent of the documents, or of the characters of one document."""
    if len(documents) == 1:
        text = documents[0]
        cut = len(text) - len(text) * percentage // 100
        return [text[:cut]], [text[cut:]]
    cut = len(documents) - max(1, len(documents) * percentage // 100)
    return documents[:cut], documents[cut:]


def token_stream(documents: list[str], tokenizer, need: int | None = None) -> torch.Tensor:
    """The documents' tokens, concatenated; with `need`, only (at least) the first `need` tokens when there are.

    A long single document is tokenised from a prefix that surely holds `need` tokens (the whole text if not).
    """
    pieces, total = [], 0
    for doc in documents:
        if not doc.strip():
            continue
        if need is not None and len(doc) > (need - total) * CHARS_PER_TOKEN:
            ids = tokenizer(doc[: (need - total) * CHARS_PER_TOKEN]).input_ids
            if len(ids) < need - total:
                ids = tokenizer(doc).input_ids
        else:
            ids = tokenizer(doc).input_ids
        pieces.append(torch.tensor(ids, dtype=torch.long))
        total += len(ids)
        if need is not None and total >= need:
            break
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def windows(documents: list[str], tokenizer, block_size: int, limit: int | None = None) -> torch.Tensor:
    """(N, block_size) non-overlapping windows from the start of the stream; the first `limit` when given."""
    ids = token_stream(documents, tokenizer, None if limit is None else limit * block_size)
    n = len(ids) // block_size
    if limit is not None:
        n = min(n, limit)
    return ids[: n * block_size].view(n, block_size)


def as_batches(wins: torch.Tensor, batch_size: int) -> list[dict]:
    """Batches of windows for scoring, recovery statistics and perplexity: labels = input_ids."""
    out = []
    for k in range(0, len(wins), batch_size):
        ids = wins[k:k + batch_size]
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return out


class WindowDataset(torch.utils.data.Dataset):
    """Training windows for the Trainer: input_ids, attention_mask and labels (the model shifts them)."""

    def __init__(self, wins: torch.Tensor):
        self.wins = wins

    def __len__(self) -> int:
        return len(self.wins)

    def __getitem__(self, i: int) -> dict:
        ids = self.wins[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


@torch.inference_mode()
def perplexity(model, batches: list[dict]) -> float:
    """exp(mean next-token negative log-likelihood) over every position of every window."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    try:
        for b in batches:
            ids = b["input_ids"].to(device)
            logits = model(input_ids=ids, attention_mask=b["attention_mask"].to(device)).logits[:, :-1]
            target = ids[:, 1:]
            nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                           target.reshape(-1), reduction="sum"))
            count += target.numel()
    finally:
        model.train(was_training)
    return math.exp(nll / count)
