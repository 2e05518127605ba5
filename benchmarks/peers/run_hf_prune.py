"""hf_prune on the peers' exact setup: 6 of 12 heads and 768 of 1536 FFN neurons in every layer, retrain-free.

Fisher importance (labelled loss) on the slice, `plan_from_sparsity(scope="layer")` for the same uniform
budget as the peer tools, then `tune_masks(reconstruct="weights")` on the same slice. The pruned model is
saved with `hf_prune.save_pruned` and reloaded with plain transformers 5 `from_pretrained` (uniform widths are
written as ordinary config keys) and with `hf_prune.load_pruned`. Runs in the project's own venv:

    .venv/bin/python benchmarks/peers/run_hf_prune.py [--recovery] [--reselect]

``--reselect`` keeps the same per-layer counts but re-chooses the units by reconstruction error
(`hf_prune.reselect_units`) before the weights are re-solved. ``--no-recovery`` removes the chosen units and
re-solves nothing (`plan.apply`), as the peer tools hand over; ``--importance taylor`` scores with hf_prune's
first-order Taylor estimator instead of fisher.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see common.latency_ratios

import copy  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import common as C  # noqa: E402

sys.path.insert(0, str(C.ROOT))
from transformers import AutoModelForSequenceClassification  # noqa: E402

from hf_prune import (  # noqa: E402
    apply_mask_tuning,
    calibration_moments,
    compute_importance,
    distillation_loss,
    layer_shapes,
    load_pruned,
    plan_from_sparsity,
    reselect_units,
    save_pruned,
)


def prune(dense, calib, reselect, recovery=True, importance="fisher"):
    model = copy.deepcopy(dense)
    t0 = time.time()
    scores = compute_importance(model, calib, method=importance, progress=False)
    plan = plan_from_sparsity(scores, head_sparsity=0.5, ffn_sparsity=0.5, scope="layer")
    if not recovery:  # the chosen units removed, the rest untouched
        plan.apply(model)
        return model.eval(), time.time() - t0
    moments = calibration_moments(model, calib)  # what tune_masks computes
    if reselect:
        plan = reselect_units(model, plan, moments)
    apply_mask_tuning(model, plan, moments, reconstruct="weights")
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
    p = C.arguments()
    p.add_argument("--reselect", action="store_true", help="re-choose the units by reconstruction error")
    p.add_argument("--no-recovery", action="store_true", help="remove the chosen units, re-solve nothing")
    p.add_argument("--importance", default="fisher", help="hf_prune importance method (default fisher)")
    args = p.parse_args()
    if args.no_recovery and args.reselect:
        p.error("--reselect re-chooses units by the re-solved weights' error: it needs the recovery")
    recipes = C.recovery_modes(args)
    method = f"hf_prune-{args.importance}" + ("" if args.no_recovery else "+weights") + ("+reselect" if args.reselect else "")
    train, val, val_b, dense = C.setup()

    def shapes(model, _):
        return {"shapes": [(s.heads, s.kv_heads, s.head_dim, s.ffn) for s in layer_shapes(model)]}

    def prune_slice(calib, k):
        return (*prune(dense, calib, args.reselect, not args.no_recovery, args.importance), None)

    dense_acc, modes, runs, (kept, _) = C.prune_over_slices(
        method, method, dense, train, val_b, prune_slice, shapes, recipes, kd_loss=distillation_loss)
    lat = C.latency_ratios(dense, kept)
    ok5, ok_ours, notes = reloads(kept, val)
    C.log(f"latency {lat}; reload v5 {ok5}: {notes}")
    extra = {
        **C.latency_fields(lat, "pruned vs dense, both default (sdpa) attention, median of 30 alternating runs, "
                                "seq 128, 2 threads, OMP_WAIT_POLICY=PASSIVE"),
        "reload_v4_from_pretrained": None, "reload_v5_from_pretrained": ok5,
        "reload_hf_prune_load_pruned": ok_ours,
        "reload_notes": notes + " (BertConfig cannot express 6 heads of 32 in a 384-wide layer, so plain "
                                "from_pretrained cannot rebuild these shapes; transformers 4.x not tested)",
        "budget": "50% of heads (6 of 12) and 50% of FFN neurons (768 of 1536) in every layer",
        "importance": f"hf_prune {args.importance} (labelled loss) + plan_from_sparsity(scope='layer')"
                      + (" + reselect_units" if args.reselect else "")
                      + (", no weight recovery (plan.apply)" if args.no_recovery
                         else " + weight reconstruction (tune_masks(reconstruct='weights')) on the same slice"),
        "versions": C.versions("hf_prune"),
    }
    C.finish(method, modes, runs, dense_acc, extra, train, val_b, recipes)


if __name__ == "__main__":
    main()
