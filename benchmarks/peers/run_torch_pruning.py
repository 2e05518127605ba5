"""Torch-Pruning (MetaPruner/BasePruner + TaylorImportance): 50% of heads and 50% of FFN neurons per layer.

The model is loaded with eager attention (Torch-Pruning traces the graph; SDPA hides the heads) and KV cache
off. Groups: q/k/v of every layer pruned by whole heads (`num_heads`, `prune_num_heads=True`,
`prune_head_dims=False`, `head_pruning_ratio=0.5`), intermediate.dense neurons with `pruning_ratio=0.5`,
local (per-layer) pruning. The hidden size is kept: the layers whose output channels are the residual stream
(attention.output.dense, output.dense), the pooler and the classifier are `ignored_layers`.
Taylor importance uses the gradients of the labelled loss summed over the calibration batches.
After `pruner.step()` the BertSelfAttention attributes (num_attention_heads, all_head_size) are updated, as in
Torch-Pruning's Hugging Face BERT example.

    benchmarks/peers/.venvs/torch-pruning/bin/python benchmarks/peers/run_torch_pruning.py [--recovery]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see common.latency_ratios

import copy  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import common as C  # noqa: E402
import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402

METHOD = "torch-pruning-taylor"


def prune(dense, calib):
    model = copy.deepcopy(dense)
    t0 = time.time()
    model.config.use_cache = False
    layers = model.bert.encoder.layer
    num_heads, ignored = {}, [model.classifier, model.bert.pooler.dense]
    for layer in layers:
        att = layer.attention.self
        for lin in (att.query, att.key, att.value):
            num_heads[lin] = att.num_attention_heads
        ignored += [layer.attention.output.dense, layer.output.dense]
    example = {k: v for k, v in calib[0].items() if k != "labels"}
    pruner = tp.pruner.BasePruner(
        model, example, importance=tp.importance.TaylorImportance(), global_pruning=False,
        pruning_ratio=0.5, ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True,
        prune_head_dims=False, head_pruning_ratio=0.5)
    model.zero_grad()
    model.eval()  # dropout off: the gradients are those of the deterministic loss
    for b in calib:
        model(**b).loss.backward()
    pruner.step()
    for layer in layers:
        att = layer.attention.self
        att.num_attention_heads = att.query.out_features // att.attention_head_size
        att.all_head_size = att.query.out_features
    model.zero_grad(set_to_none=True)
    return model.eval(), time.time() - t0


def reloads(pruned, val):
    batch = C.check_batch(val)
    ref = C.logits_of(pruned, batch)
    tmp = Path(tempfile.mkdtemp(prefix="peer-tp-"))
    notes = []
    try:
        # the documented way: pickle the whole (pruned) module
        pth = tmp / "model.pth"
        torch.save(pruned, pth)
        try:
            back = torch.load(pth, weights_only=False)
            diff = float((C.logits_of(back, batch) - ref).abs().max())
            notes.append(f"torch.save(model)/torch.load(weights_only=False) in the same venv: max|logit diff| {diff:.2e}")
        except Exception as exc:  # noqa: BLE001
            notes.append(f"torch.load fails: {type(exc).__name__}: {C._short(str(exc))}")
        # the Hugging Face way: save_pretrained writes the pruned weights with the unchanged dense config
        hf = tmp / "hf"
        pruned.save_pretrained(hf)
        ok4, note4 = C.reload_v4(hf, ref, batch)
        ok5, note5 = C.reload_v5(hf, ref, batch)
        notes.append(f"save_pretrained (Torch-Pruning leaves config.num_attention_heads/intermediate_size at the "
                     f"dense values; a per-layer pruned BERT has no config field for head_dim != hidden/heads): {note4}. {note5}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ok4, ok5, " ".join(notes)


def main():
    p = C.arguments()
    args = p.parse_args()
    recipes = C.recovery_modes(args)
    train, val, val_b, dense = C.setup(attn_implementation="eager")
    dense_acc, modes, runs, (pruned, _) = C.prune_over_slices(
        "torch-pruning", METHOD, dense, train, val_b, lambda calib, k: (*prune(dense, calib), None),
        lambda model, _: {"shapes": C.bert_shapes(model)}, recipes)

    lat = C.latency_ratios(dense, pruned)
    C.log(f"latency {lat}")
    ok4, ok5, notes = reloads(pruned, val)
    C.log(f"reload v4 {ok4}, v5 {ok5}: {notes}")
    extra = {
        **C.latency_fields(lat, "pruned vs dense, both eager attention (required by Torch-Pruning), median of 30 "
                                "alternating runs, seq 128, 2 threads, OMP_WAIT_POLICY=PASSIVE"),
        "reload_v4_from_pretrained": ok4, "reload_v5_from_pretrained": ok5, "reload_notes": notes,
        "budget": "50% of heads (6 of 12) and 50% of FFN neurons (768 of 1536) in every layer",
        "importance": "tp.importance.TaylorImportance (group mean of |w * dL/dw|), gradients summed over the "
                      "calibration batches, local (per-layer) pruning",
        "versions": C.versions("torch-pruning"),
    }
    C.finish(METHOD, modes, runs, dense_acc, extra, train, val_b, recipes)


if __name__ == "__main__":
    main()
