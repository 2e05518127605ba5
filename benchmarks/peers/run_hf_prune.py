"""hf_prune on the peers' exact setup: 6 of 12 heads and 768 of 1536 FFN neurons in every layer, retrain-free.

Fisher importance (labelled loss) on the slice, `plan_from_sparsity(scope="layer")` for the same uniform
budget as the peer tools, then `tune_masks(reconstruct="weights")` on the same slice. The pruned model is
saved with `hf_prune.save_pruned` and reloaded with plain transformers 5 `from_pretrained` (uniform widths are
written as ordinary config keys) and with `hf_prune.load_pruned`. Runs in the project's own venv:

    .venv/bin/python benchmarks/peers/run_hf_prune.py [--recovery]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see common.latency_ratios

import argparse  # noqa: E402
import copy  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import common as C  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(C.ROOT))
from transformers import AutoModelForSequenceClassification  # noqa: E402

from hf_prune import compute_importance, layer_shapes, load_pruned, plan_from_sparsity, save_pruned, tune_masks  # noqa: E402

METHOD = "hf_prune-fisher+weights"


def prune(dense, calib):
    model = copy.deepcopy(dense)
    t0 = time.time()
    scores = compute_importance(model, calib, method="fisher", progress=False)
    plan = plan_from_sparsity(scores, head_sparsity=0.5, ffn_sparsity=0.5, scope="layer")
    tune_masks(model, plan, calib, reconstruct="weights")
    return model.eval(), time.time() - t0


def reloads(pruned, val):
    batch = C.check_batch(val)
    ref = C.logits_of(pruned, batch)
    tmp = Path(tempfile.mkdtemp(prefix="peer-hfp-"))
    try:
        save_pruned(pruned, tmp / "model")
        ok5, note5 = C.reload_v5(tmp / "model", ref, batch)
        diff = float((C.logits_of(load_pruned(tmp / "model", AutoModelForSequenceClassification), batch) - ref).abs().max())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ok5, diff < 1e-4, f"save_pruned: {note5}; hf_prune.load_pruned: max|logit diff| {diff:.2e}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--recovery", action="store_true", help="also 100 fine-tuning steps after pruning")
    args = p.parse_args()
    torch.set_num_threads(2)
    train, val = C.load_data()
    val_b = C.eval_batches(val)
    dense = C.load_dense()
    cache = C.RunCache("hf_prune")
    dense_acc = cache.get("dense") or C.accuracy(dense, val_b)
    cache.put("dense", dense_acc)
    C.log(f"dense accuracy {dense_acc:.4f}")
    dense_flops = C.count_flops(dense)
    modes = ["retrain-free"] + (["recovery-100-steps"] if args.recovery else [])
    runs = {m: [] for m in modes}
    kept = None
    for k in range(C.SLICES):
        need = [m for m in modes if cache.get(f"{m}|{k}") is None]
        if need or kept is None:
            model, secs = prune(dense, C.calib_batches(train, k))
            shapes = [(s.heads, s.kv_heads, s.head_dim, s.ffn) for s in layer_shapes(model)]
            flops_red = 1 - C.count_flops(model) / dense_flops
            kept = model if k == 0 else kept
            if "retrain-free" in need:
                cache.put(f"retrain-free|{k}", {"accuracy": C.accuracy(model, val_b), "seconds_to_prune": secs,
                                                "flops_reduction": flops_red, "shapes": shapes})
            if "recovery-100-steps" in need:
                t0 = time.time()
                rec = C.recover(copy.deepcopy(model), train)
                cache.put(f"recovery-100-steps|{k}", {"accuracy": C.accuracy(rec, val_b), "seconds_to_prune": secs,
                                                      "seconds_training": time.time() - t0,
                                                      "flops_reduction": flops_red, "shapes": shapes})
        for m in modes:
            r = cache.get(f"{m}|{k}")
            runs[m].append(r)
            C.log(f"{METHOD} {m} slice {k}: acc {r['accuracy']:.4f} prune {r['seconds_to_prune']:.1f}s "
                  f"FLOPs -{r['flops_reduction']:.3f} shapes {r['shapes'][0]}")

    lat = C.latency_ratios(dense, kept)
    ok5, ok_ours, notes = reloads(kept, val)
    C.log(f"latency {lat}; reload v5 {ok5}: {notes}")
    extra = {
        "latency_ratio_b8": lat["b8"]["ratio"], "latency_ratio_b1": lat["b1"]["ratio"],
        "latency_ideal_ratio_seq128": lat["ideal_ratio_seq128"], "latency_ms": {k: lat[k] for k in ("b8", "b1")},
        "latency_note": "pruned vs dense, both default (sdpa) attention, median of 30 alternating runs, seq 128, "
                        "2 threads, OMP_WAIT_POLICY=PASSIVE",
        "reload_v4_from_pretrained": None, "reload_v5_from_pretrained": ok5,
        "reload_hf_prune_load_pruned": ok_ours,
        "reload_notes": notes + " (BertConfig cannot express 6 heads of 32 in a 384-wide layer, so plain "
                                "from_pretrained cannot rebuild these shapes; transformers 4.x not tested)",
        "budget": "50% of heads (6 of 12) and 50% of FFN neurons (768 of 1536) in every layer",
        "importance": "hf_prune fisher (labelled loss) + plan_from_sparsity(scope='layer') + "
                      "tune_masks(reconstruct='weights') on the same slice",
        "versions": C.versions("hf_prune"),
    }
    rows = [C.summarize(METHOD, m, runs[m], dense_acc, extra) for m in modes]
    for r in rows:
        if r["mode"].startswith("recovery"):
            r["dense_metric_after_same_recovery"] = C.recovery_control(train, val_b)
    C.write_rows(rows)
    for r in rows:
        C.log(f"{r['method']} {r['mode']}: {r['metric']:.4f} +- {r['metric_sd']:.4f}")


if __name__ == "__main__":
    main()
