"""`make quick-demo`: retrain-free, in about a minute: prune half the heads and half the FFN neurons of MiniLM.

Steps: load all-MiniLM-L6-v2 as a 2-label classifier, score heads and neurons by L2 weight norm (no data
needed), plan 50% head and 50% FFN sparsity, prune, save to a temp folder, reload with
hf_prune.load_pruned and check the logits are identical, then print parameters, FLOPs (count_flops at
seq 128) and CPU latency (batch 8, seq 128, median of alternating dense / pruned runs, 2 threads).
"""

from __future__ import annotations

import copy
import tempfile

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import hf_prune_assets as assets
from hf_prune import layer_shapes, load_pruned
from hf_prune.architecture.counting import count_flops, count_parameters
from hf_prune.deploy.latency import measure_latency
from hf_prune.importance import compute_importance
from hf_prune.planning import plan_from_sparsity

BATCH, SEQ, REPEATS = 8, 128, 5


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    folder = assets.minilm_dir()
    dense = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    train, _ = assets.movie_reviews()
    inputs = dict(tokenizer(train["sentence"][:BATCH], padding="max_length", truncation=True, max_length=SEQ,
                            return_tensors="pt"))

    scores = compute_importance(dense, None, "l2")
    plan = plan_from_sparsity(scores, head_sparsity=0.5, ffn_sparsity=0.5)
    pruned = plan.apply(copy.deepcopy(dense))
    print(f"plan: {sum(map(len, plan.heads.values()))} heads and {sum(map(len, plan.neurons.values()))} "
          f"FFN neurons removed; heads per layer {[s.heads for s in layer_shapes(pruned)]}, "
          f"FFN per layer {[s.ffn for s in layer_shapes(pruned)]}")

    with tempfile.TemporaryDirectory() as tmp:
        pruned.save_pretrained(tmp)
        reloaded = load_pruned(tmp, model_class=AutoModelForSequenceClassification).eval()
        with torch.no_grad():
            same = torch.equal(pruned(**inputs).logits, reloaded(**inputs).logits)
    print(f"reloaded with load_pruned: logits identical = {same}")
    if not same:
        raise SystemExit("reloaded logits differ from the pruned model's")

    stats = measure_latency({"dense": dense, "pruned": pruned}, batch_size=BATCH, seq_len=SEQ, repeats=REPEATS,
                            num_threads=2)  # dense and pruned alternated, medians
    rows = []
    for name, model in (("dense", dense), ("pruned", pruned)):
        rows.append((name, count_parameters(model), count_flops(model, seq_len=SEQ), stats[name].median_s))
    print(f"\n{'model':<8} {'parameters':>12} {'layer GFLOPs@128':>17} {'latency ms (8x128)':>19}")
    for name, params, flops, seconds in rows:
        print(f"{name:<8} {params:>12,} {flops / 1e9:>17.3f} {seconds * 1e3:>19.1f}")
    (_, p0, f0, t0), (_, p1, f1, t1) = rows
    print(f"{'ratio':<8} {p1 / p0:>12.3f} {f1 / f0:>17.3f} {t1 / t0:>19.3f}")


if __name__ == "__main__":
    main()
