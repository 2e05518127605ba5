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
    p = C.arguments()
    args = p.parse_args()
    recipes = C.recovery_modes(args)
    train, val, val_b, dense = C.setup(attn_implementation="eager")  # head_mask needs eager attention (sdpa falls back)
    dense_acc, modes, runs, (pruned, _) = C.prune_over_slices(
        "transformers4", METHOD, dense, train, val_b, lambda calib, k: prune(dense, calib),
        lambda model, to_prune: {"pruned_heads": to_prune}, recipes)

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
        **C.latency_fields(lat, "heads-only 50% pruned (FFN untouched) vs dense, both eager attention, "
                                "median of 30 alternating runs, seq 128, 2 threads, OMP_WAIT_POLICY=PASSIVE"),
        "reload_v4_from_pretrained": ok4, "reload_v5_from_pretrained": ok5,
        "reload_notes": f"saved with save_pretrained (config.pruned_heads). {note4}. {note5}",
        "budget": "50% of heads per layer (6 of 12); FFN untouched (transformers 4.x cannot prune FFN neurons)",
        "importance": "|d loss / d head_mask| summed over the calibration batches (Michel et al. 2019)",
        "versions": C.versions(),
    }
    C.finish(METHOD, modes, runs, dense_acc, extra, train, val_b, recipes)


if __name__ == "__main__":
    main()
