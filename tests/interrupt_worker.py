"""Run by test_interrupted_training.py: prune while fine-tuning, optionally freeze for a SIGKILL, or resume.

    python interrupt_worker.py OUT run [--pause-after STEP]   # train from scratch; with --pause-after, write
                                                             # OUT/paused after that step and sleep until killed
    python interrupt_worker.py OUT resume                    # resume from OUT's last Trainer checkpoint

Writes OUT/result-<mode>.json: final shapes, config.hf_prune, the plan of every pruning event it ran, logits.
"""

import argparse
import json
import os
import sys
import time

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

sys.path.insert(0, os.path.dirname(__file__))
from test_callback import Toy  # noqa: E402
from tiny_models import make_model  # noqa: E402

from hf_prune import layer_shapes  # noqa: E402
from hf_prune.training import PruningConfig  # noqa: E402
from hf_prune.training.callback import HeadPruningCallback, resize_to_checkpoint  # noqa: E402

MAX_STEPS, SAVE_STEPS = 8, 3


class PauseAfter(TrainerCallback):
    """After step `step` (and the Trainer's save of that step), announce it and wait to be killed."""

    def __init__(self, step, marker):
        self.step, self.marker = step, marker

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step + 1:  # the checkpoint of `step` was saved after its on_step_end
            with open(self.marker, "w") as handle:
                handle.write(str(self.step))
            time.sleep(600)


def recording(callback, plans):
    """Record the plan of every pruning event (which units, in current indices) without changing the class."""
    plan_for = callback._plan

    def plan(model, fraction):
        chosen = plan_for(model, fraction)
        plans.append({"heads": {str(k): sorted(v) for k, v in chosen.heads.items()},
                      "neurons": {str(k): sorted(v) for k, v in chosen.neurons.items()}})
        return chosen

    callback._plan = plan
    return callback


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("mode", choices=["run", "resume"])
    parser.add_argument("--pause-after", type=int, default=None)
    options = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    model = make_model("llama").train()
    checkpoint = None
    if options.mode == "resume":
        checkpoint = get_last_checkpoint(options.out)
        resize_to_checkpoint(model, checkpoint)  # the checkpoint holds the compacted shapes
    plans = []
    config = PruningConfig(head_sparsity=0.5, ffn_sparsity=0.5, pruning_start_step=2, pruning_end_step=6,
                           pruning_events=3)
    callback = recording(HeadPruningCallback(config), plans)
    args = TrainingArguments(
        output_dir=options.out, max_steps=MAX_STEPS, per_device_train_batch_size=8, learning_rate=1e-3,
        report_to=[], save_strategy="steps", save_steps=SAVE_STEPS, use_cpu=True, seed=0, disable_tqdm=True,
        logging_steps=1,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Toy(causal=True), callbacks=[callback])
    if options.pause_after is not None:
        trainer.add_callback(PauseAfter(options.pause_after, os.path.join(options.out, "paused")))
    trainer.train(resume_from_checkpoint=checkpoint)

    final = trainer.model.eval()
    with torch.no_grad():
        logits = final(input_ids=Toy(causal=True)[0]["input_ids"][None]).logits
    result = {
        "resumed_from": os.path.basename(checkpoint) if checkpoint else None,
        "shapes": [[s.heads, s.kv_heads, s.ffn] for s in layer_shapes(final)],
        "hf_prune": final.config.hf_prune,
        "plans": plans,
        "events": [r for r in trainer.state.log_history if "hf_prune/event" in r],
        "logits": logits.flatten().tolist(),
    }
    with open(os.path.join(options.out, f"result-{options.mode}.json"), "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
