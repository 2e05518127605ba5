"""What the LM command line reports: speed (prefill latency, decode tokens/s), the before/after table and the
model card. The report has the GLUE command line's structure (report.py's table and heatmap read it), with
perplexity as the metric."""

from __future__ import annotations

import statistics
from pathlib import Path

from ..serialization.atomic import atomic_write_text
from .model_card import card_title, removed_summary
from .report import summary_table


def measure_speed(dense, pruned, batch_size: int, seq_len: int, decode_context: int, repeats: int) -> dict:
    """CPU prefill latency (one forward of batch_size x seq_len tokens) and greedy decode speed (one new token per
    sequence on a decode_context-token KV cache) of both models, alternated round-robin."""
    import torch

    from ..deploy.latency import measure_latency
    from ..deploy.latency_table import time_round_robin

    models = {"dense": dense.cpu().eval(), "pruned": pruned.cpu().eval()}
    prefill = measure_latency(models, batch_size=batch_size, seq_len=seq_len, repeats=repeats, warmup=1)
    decode = time_round_robin(models, mode="decode", batch_size=batch_size, seq_len=decode_context, repeats=repeats,
                              warmup=1, progress=False)
    step = {name: statistics.median(times) for name, times in decode.items()}
    return {
        "batch_size": batch_size, "seq_len": seq_len, "repeats": repeats, "threads": torch.get_num_threads(),
        "dense_median_s": prefill["dense"].median_s, "pruned_median_s": prefill["pruned"].median_s,
        "speedup": prefill["dense"].median_s / prefill["pruned"].median_s,
        "decode": {"context": decode_context, "dense_step_s": step["dense"], "pruned_step_s": step["pruned"],
                   "dense_tokens_per_s": batch_size / step["dense"], "pruned_tokens_per_s": batch_size / step["pruned"],
                   "speedup": step["dense"] / step["pruned"]},
    }


def lm_summary_table(report: dict) -> str:
    """report.py's before/after table with a decode tokens/s row after the latency row."""
    table = summary_table(report).split("\n")
    before, after = report["before"], report["after"]
    row = (f"| decode tokens/s (batch {report['latency']['batch_size']}) | {before['decode_tokens_per_s']:,.1f} | "
           f"{after['decode_tokens_per_s']:,.1f} | {after['decode_tokens_per_s'] / before['decode_tokens_per_s']:.3f} |")
    at = next(i for i, line in enumerate(table) if line.startswith("| latency ms"))
    table.insert(at + 1, row)
    table[at] = table[at].replace("| latency ms", "| prefill latency ms", 1)
    return "\n".join(table)


def lm_model_card_text(report: dict, repo_id: str | None = None, folder: str | Path | None = None) -> str:
    """A Hub model card for a pruned causal LM: base_model only as a Hub id, the results, how to load it."""
    from huggingface_hub import ModelCard, ModelCardData

    base_id = report.get("base_model_id")
    data = ModelCardData(base_model=base_id, library_name="transformers", pipeline_tag="text-generation",
                         tags=["pruned", "hf_prune", "structured-pruning"])
    source = f"[`{base_id}`](https://huggingface.co/{base_id})" if base_id else \
        f"a local model (`{Path(str(report['model'])).name}`)"
    load_from = repo_id or str(folder or "path/to/this/folder")
    pruning = report["pruning"]
    healing = report["healing"]["mode"]
    how = "retrain-free (calibration statistics only)" if healing == "none" else f"then healed by `{healing}` " \
        f"for {report['healing']['steps']} steps"
    if healing == "gradual":
        how = f"while fine-tuning ({report['healing']['steps']} steps)"
    content = f"""---
{data.to_yaml()}
---

# {card_title(report, repo_id)}

A structurally pruned version of {source}, made with hf_prune ({removed_summary(report)}): attention heads, FFN
neurons and possibly whole layers were removed physically, so this is a smaller dense model. Pruned {how}.

## Pruning

{lm_summary_table(report)}

Perplexity: {report['task']}, {report['data']['eval_windows']} windows of {report['data']['block_size']} tokens.
Importance: {pruning['importance']}. Mode: {pruning['mode']}.

## How to load

Layers have different numbers of heads / FFN widths, recorded in `config.json` (`hf_prune`):

```python
from hf_prune import load_pruned
model = load_pruned({load_from!r})
```
"""
    return str(ModelCard(content))


def write_lm_model_card(folder: str | Path, report: dict, repo_id: str | None = None,
                        load_from: str | Path | None = None) -> None:
    atomic_write_text(Path(folder) / "README.md", lm_model_card_text(report, repo_id, load_from or folder))
