"""The model card (README.md) written next to a pruned model: Hub metadata, a title, the results, how to load it."""

from __future__ import annotations

from pathlib import Path

from ..serialization.atomic import atomic_write_text
from .report import removed_layer_names, summary_table, total


def base_model_id(model_name_or_path: str, explicit: str | None = None) -> str | None:
    """The Hub id of the model that was pruned: `explicit`, the name itself when it is no local folder (a Hub id),
    the original id of a known offline asset folder, else None (a local folder of unknown origin)."""
    if explicit:
        return explicit
    if not Path(model_name_or_path).exists():
        return model_name_or_path
    try:
        from hf_prune_assets import hub_id
    except ImportError:
        return None
    return hub_id(model_name_or_path)


def removed_summary(report: dict) -> str:
    """What was removed, from the shapes before and after: "50% heads, 50% FFN" (+ "30% weights zeroed"),
    led by "1 of 12 layers" when whole layers were removed (counted over every stack of a model with several)."""
    before, after = report["before"]["structure"], report["after"]["structure"]
    depth, count = removed_layer_names(after)
    parts = [f"{len(depth)} of {count} layers"] if depth else []
    for label, key in (("heads", "heads_per_layer"), ("cross-attention heads", "cross_heads_per_layer"),
                       ("FFN", "ffn_per_layer")):
        dense = total(before, key)
        if dense and total(after, key) < dense:
            parts.append(f"{1 - total(after, key) / dense:.0%} {label}")
    zeroed = (report["after"].get("unstructured") or {}).get("sparsity")
    if zeroed:
        parts.append(f"{zeroed:.0%} weights zeroed")
    return ", ".join(parts) or "nothing removed"


def card_title(report: dict, repo_id: str | None = None) -> str:
    """The Hub repo id when pushed, else "<base model name>, pruned (<what was removed>)"."""
    if repo_id:
        return repo_id
    base = report.get("base_model_id") or str(report["model"])
    return f"{Path(base.rstrip('/')).name or base}, pruned ({removed_summary(report)})"


def model_card_text(report: dict, repo_id: str | None = None, folder: str | Path | None = None) -> str:
    """A Hub model card: base_model only as a Hub id, a title naming the model, the results, how to load it.

    `repo_id`: where the model is pushed (the loading snippet shows it); otherwise the snippet loads `folder`.
    """
    from huggingface_hub import ModelCard, ModelCardData

    base_id = report.get("base_model_id")
    data = ModelCardData(base_model=base_id, library_name="transformers", pipeline_tag="text-classification",
                         tags=["pruned", "hf_prune", "structured-pruning"])
    source = f"[`{base_id}`](https://huggingface.co/{base_id})" if base_id else \
        f"a local model (`{Path(str(report['model'])).name}`)"
    load_from = repo_id or str(folder or "path/to/this/folder")
    depth, count = removed_layer_names(report["after"]["structure"])
    if depth:
        layers = ", ".join(depth)
        removed = (f"whole layers ({len(depth)} of {count}: "
                   f"original layer{'s' if len(depth) > 1 else ''} {layers}), attention heads\nand FFN neurons")
    else:
        removed = "attention heads\nand FFN neurons"
    intro = f"A structurally pruned version of {source}, made with hf_prune: {removed}"
    content = f"""---
{data.to_yaml()}
---

# {card_title(report, repo_id)}

{intro} were removed physically, so this is a smaller dense model.

## Pruning

{summary_table(report)}

Task: {report['task']}. Importance: {report['pruning']['importance']}. Mode: {report['pruning']['mode']}.

## How to load

Layers have different numbers of heads / FFN widths, recorded in `config.json` (`hf_prune`):

```python
from hf_prune import load_pruned
model = load_pruned({load_from!r})
```
"""
    return str(ModelCard(content))


def write_model_card(folder: str | Path, report: dict, repo_id: str | None = None,
                     load_from: str | Path | None = None) -> None:
    """README.md in `folder`; the snippet loads `repo_id` if given, else `load_from` (default: `folder`)."""
    atomic_write_text(Path(folder) / "README.md", model_card_text(report, repo_id, load_from or folder))
