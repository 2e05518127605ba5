"""Export the benchmark's movie-review split, tokenised, for the peer-tool venvs (run with the main venv).

Same data as benchmarks/bench_accuracy.py: `hf_prune_assets.movie_reviews(seed=0, validation_fraction=0.2)`,
tokenizer of `hf_prune_assets.minilm_dir()`, truncation at max_seq_length 64 (the benchmark's `tokenize`).
Writes benchmarks/peers/.cache/data.json: {"train": {"input_ids": [...], "labels": [...]}, "validation": ...}.
attention_mask is all ones and token_type_ids all zeros before padding, so only input_ids are stored.

    .venv/bin/python benchmarks/peers/export_data.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from hf_prune_assets import minilm_dir, movie_reviews  # noqa: E402

SEQ_LEN = 64


def main():
    from transformers import AutoTokenizer

    out = HERE / ".cache" / "data.json"
    if out.exists():
        print(f"{out} exists")
        return
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    data = {"seq_len": SEQ_LEN, "tokenizer": str(minilm_dir())}
    for name, split in zip(("train", "validation"), movie_reviews(seed=0, validation_fraction=0.2)):
        enc = tokenizer(split["sentence"], truncation=True, max_length=SEQ_LEN)
        assert all(all(t == 0 for t in row) for row in enc["token_type_ids"])
        assert all(all(a == 1 for a in row) for row in enc["attention_mask"])
        data[name] = {"input_ids": enc["input_ids"], "labels": split["label"]}
        print(f"{name}: {len(split['label'])} sentences")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
