"""transformers 4.x `model.prune_heads` with Michel et al. (2019) head importance, heads only.

Importance of head (l, h) = sum over the calibration batches of |d loss / d head_mask[l, h]| with a
head_mask of ones (eager attention, the loss of the labelled batch), as in transformers 4.x's bertology
example; the 6 least important heads of every layer are removed with `model.prune_heads` (which updates
config.pruned_heads). transformers 4.x has no FFN-neuron pruning, so the FFN is untouched.

    benchmarks/peers/.venvs/transformers4/bin/python benchmarks/peers/run_transformers4.py [--recovery]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see common.latency_ratios

import argparse  # noqa: E402
import copy  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import common as C  # noqa: E402
import torch  # noqa: E402

METHOD = "transformers4-prune-heads"


def head_importance(model, calib):
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    mask = torch.ones(n_layers, n_heads, requires_grad=True)
    scores = torch.zeros(n_layers, n_heads)
    model.eval()
    for b in calib:
        loss = model(**b, head_mask=mask).loss
        loss.backward()
        scores += mask.grad.abs().detach()
        mask.grad = None
        model.zero_grad(set_to_none=True)
    return scores


def prune(dense, calib, keep=6):
    model = copy.deepcopy(dense)
    t0 = time.time()
    scores = head_importance(model, calib)
    to_prune = {layer: sorted(torch.argsort(scores[layer])[: scores.shape[1] - keep].tolist())
                for layer in range(scores.shape[0])}
    model.prune_heads(to_prune)
    return model.eval(), time.time() - t0, to_prune


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--recovery", action="store_true", help="also 100 fine-tuning steps after pruning")
    args = p.parse_args()
    torch.set_num_threads(2)
    train, val = C.load_data()
    val_b = C.eval_batches(val)
    dense = C.load_dense(attn_implementation="eager")  # head_mask needs eager attention (sdpa falls back)
    cache = C.RunCache("transformers4")
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
            model, secs, to_prune = prune(dense, C.calib_batches(train, k))
            flops_red = 1 - C.count_flops(model) / dense_flops
            if k == 0:
                kept = model
            if "retrain-free" in need:
                acc = C.accuracy(model, val_b)
                cache.put(f"retrain-free|{k}", {"accuracy": acc, "seconds_to_prune": secs,
                                                "flops_reduction": flops_red, "pruned_heads": to_prune})
            if "recovery-100-steps" in need:
                t0 = time.time()
                rec = C.recover(copy.deepcopy(model), train)
                cache.put(f"recovery-100-steps|{k}", {"accuracy": C.accuracy(rec, val_b), "seconds_to_prune": secs,
                                                      "seconds_training": time.time() - t0,
                                                      "flops_reduction": flops_red})
        for m in modes:
            runs[m].append(cache.get(f"{m}|{k}"))
            C.log(f"{METHOD} {m} slice {k}: acc {runs[m][-1]['accuracy']:.4f} "
                  f"prune {runs[m][-1]['seconds_to_prune']:.1f}s FLOPs -{runs[m][-1]['flops_reduction']:.3f}")

    pruned = kept
    # latency: same attention implementation (eager, where prune_heads and head_mask are supported) for both
    lat = C.latency_ratios(dense, pruned)
    C.log(f"latency {lat}")
    # reloadability: save_pretrained (config.pruned_heads records the surgery)
    batch = C.check_batch(val)
    ref = C.logits_of(pruned, batch)
    tmp = tempfile.mkdtemp(prefix="peer-t4-")
    try:
        pruned.save_pretrained(tmp)
        ok4, note4 = C.reload_v4(tmp, ref, batch)
        ok5, note5 = C.reload_v5(tmp, ref, batch)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    C.log(f"reload v4 {ok4}: {note4}\nreload v5 {ok5}: {note5}")
    extra = {
        "latency_ratio_b8": lat["b8"]["ratio"], "latency_ratio_b1": lat["b1"]["ratio"],
        "latency_ideal_ratio_seq128": lat["ideal_ratio_seq128"], "latency_ms": {k: lat[k] for k in ("b8", "b1")},
        "latency_note": "heads-only 50% pruned (FFN untouched) vs dense, both eager attention, "
                        "median of 30 alternating runs, seq 128, 2 threads, OMP_WAIT_POLICY=PASSIVE",
        "reload_v4_from_pretrained": ok4, "reload_v5_from_pretrained": ok5,
        "reload_notes": f"saved with save_pretrained (config.pruned_heads). {note4}. {note5}",
        "budget": "50% of heads per layer (6 of 12); FFN untouched (transformers 4.x cannot prune FFN neurons)",
        "importance": "|d loss / d head_mask| summed over the calibration batches (Michel et al. 2019)",
        "versions": C.versions(),
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
