"""Run by test_callback.py under `torchrun --nproc_per_node 2`: prune while training with DDP (gloo) on CPU.

argv: output folder, and optionally "layers" (test_callback_depth.py): also remove one of the three layers.
"""

import json
import os
import sys

import torch
from transformers import Trainer, TrainingArguments

sys.path.insert(0, os.path.dirname(__file__))
from test_callback import Toy  # noqa: E402
from tiny_models import make_model  # noqa: E402

from hf_prune import layer_shapes  # noqa: E402
from hf_prune.training.callback import HeadPruningCallback  # noqa: E402

out = sys.argv[1]
layers = len(sys.argv) > 2 and sys.argv[2] == "layers"
rank = int(os.environ.get("RANK", 0))
torch.manual_seed(0)
model = make_model("bert").train()
args = TrainingArguments(output_dir=out, max_steps=6, per_device_train_batch_size=4, report_to=[], save_strategy="no",
                         use_cpu=True, ddp_backend="gloo", disable_tqdm=True, seed=rank)  # different data per rank
if layers:  # the same calibration batches on both ranks; layer scores are summed over them
    data = Toy(n=8, seed=7)
    batches = [{k: torch.stack([data[i][k] for i in range(8)]) for k in data[0]}]
    callback = HeadPruningCallback(head_sparsity=0.5, ffn_sparsity=0.5, num_layers_to_remove=1, start_step=2,
                                   end_step=4, num_events=2, calibration_dataloader=batches)
else:
    callback = HeadPruningCallback(head_sparsity=0.5, ffn_sparsity=0.5, start_step=2, end_step=4, num_events=2)
trainer = Trainer(model=model, args=args, train_dataset=Toy(seed=rank), callbacks=[callback])
trainer.train()
shapes = [[s.heads, s.ffn] for s in layer_shapes(trainer.model)]
with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
    json.dump({"world_size": args.world_size, "shapes": shapes, "gates_only": not callback._compacting,
               "layers": trainer.model.config.hf_prune.get("layers"),
               "checksum": float(sum(p.double().sum() for p in trainer.model.parameters()))}, handle)
torch.distributed.barrier()  # both ranks have written their shapes
torch.distributed.destroy_process_group()
# Skip interpreter teardown: about 1 run in 12, a C++ thread of the process group is destroyed while joinable at
# exit ("terminate called without an active exception", SIGABRT) after all the work is done and written.
os._exit(0)
