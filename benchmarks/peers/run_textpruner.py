"""TextPruner TransformerPruner, iterative Taylor pruning of heads and FFN neurons: 6 of 12 heads and 768 of
1536 FFN neurons in every layer (`head_even_masking`, `ffn_even_masking`), `n_iters=4`, labelled loss.

TextPruner scores heads by |sum(w * dL/dw)| over each head's columns of the attention output projection and
FFN neurons by the same over the FFN weights, re-scoring after each of the n_iters masking rounds; the last
round removes the heads with `prune_heads` and slices the FFN. The pruned model is saved with the tool's own
`TransformerPruner.save_model()` (pytorch_model.bin + config.json with intermediate_size and pruned_heads).

    benchmarks/peers/.venvs/textpruner/bin/python benchmarks/peers/run_textpruner.py [--recovery]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see common.latency_ratios

import copy  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import common as C  # noqa: E402
from textpruner import GeneralConfig, TransformerPruner, TransformerPruningConfig  # noqa: E402

METHOD = "textpruner-taylor"
N_ITERS = 4


def prune(dense, calib, output_dir):
    model = copy.deepcopy(dense)
    t0 = time.time()
    pruner = TransformerPruner(
        model,
        transformer_pruning_config=TransformerPruningConfig(
            target_ffn_size=768, target_num_of_heads=6, pruning_method="iterative", n_iters=N_ITERS,
            head_even_masking=True, ffn_even_masking=True),
        general_config=GeneralConfig(use_device="cpu", output_dir=output_dir))
    pruner.prune(dataloader=calib, save_model=False)
    return model.eval(), time.time() - t0, pruner


def main():
    p = C.arguments()
    args = p.parse_args()
    recipes = C.recovery_modes(args)
    logging.getLogger("textpruner").setLevel(logging.WARNING)
    train, val, val_b, dense = C.setup()  # default (sdpa) attention; prune_heads works with it
    work = tempfile.mkdtemp(prefix="peer-textpruner-")
    try:
        dense_acc, modes, runs, (pruned, pruner) = C.prune_over_slices(
            "textpruner", METHOD, dense, train, val_b,
            lambda calib, k: prune(dense, calib, os.path.join(work, f"slice{k}")),
            lambda model, _: {"shapes": C.bert_shapes(model)}, recipes)
        lat = C.latency_ratios(dense, pruned)
        C.log(f"latency {lat}")
        batch = C.check_batch(val)
        ref = C.logits_of(pruned, batch)
        saved = pruner.save_model()  # the tool's documented save: pytorch_model.bin + config.json
        files = sorted(os.listdir(saved))
        ok4, note4 = C.reload_v4(saved, ref, batch)
        ok5, note5 = C.reload_v5(saved, ref, batch)
        notes = f"saved with TransformerPruner.save_model() -> {files}. {note4}. {note5}"
        C.log(f"reload v4 {ok4}, v5 {ok5}: {notes}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    extra = {
        **C.latency_fields(lat, "pruned vs dense, both default (sdpa) attention, median of 30 alternating runs, "
                                "seq 128, 2 threads, OMP_WAIT_POLICY=PASSIVE"),
        "reload_v4_from_pretrained": ok4, "reload_v5_from_pretrained": ok5, "reload_notes": notes,
        "budget": "50% of heads (6 of 12) and 50% of FFN neurons (768 of 1536) in every layer",
        "importance": f"TextPruner iterative Taylor (labelled loss), n_iters={N_ITERS}, even masking per layer",
        "versions": C.versions("textpruner"),
    }
    C.finish(METHOD, modes, runs, dense_acc, extra, train, val_b, recipes)


if __name__ == "__main__":
    main()
