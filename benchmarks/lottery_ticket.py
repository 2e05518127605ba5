"""Lottery tickets with rewinding on the real MiniLM: rewound ticket vs random re-initialisation, same masks.

Run:  .venv/bin/python benchmarks/lottery_ticket.py [--steps 60 --rounds 3 --rate 0.3 --rewind-step 6 --threads 1]

MiniLM (all-MiniLM-L6-v2 + a fresh 2-way head) is fine-tuned on movie-review sentiment for `--steps`
steps (AdamW, lr 2e-4 decaying linearly, batch 16 x 32 tokens); every parameter is snapshotted at `--rewind-step`.
Each round prunes a further `--rate` of the surviving attention/FFN projection weights by global
magnitude (`hf_prune.prune_unstructured`), then retrains steps rewind_step..steps with the zeros held:
- ticket: every parameter rewound to the snapshot (`hf_prune.unstructured.lottery.rewind`);
- random: the same masks and the same rewound embeddings/biases/LayerNorms/head, but the surviving
  projection weights redrawn at random (`hf_prune.unstructured.lottery.reinitialize`).
The ticket's retrained weights are pruned in the next round. Accuracy on `--eval` validation sentences.
Writes benchmarks/results/lottery.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from pathlib import Path

import torch
from provenance import command_line, repo_relative  # benchmarks/provenance.py
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import hf_prune_assets as assets
from hf_prune.serialization.atomic import atomic_write_json
from hf_prune.unstructured.lottery import LotteryTicketRewinder, reinitialize
from hf_prune.unstructured.magnitude import apply_masks, sparsity_report

RESULTS = Path(__file__).parent / "results"


def encode(sentences: list[str], labels: list[int], seq: int) -> dict[str, torch.Tensor]:
    """Tokenize all sentences at once, padded to `seq` tokens: {input_ids (N, seq), attention_mask, labels (N,)}."""
    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_dir())
    enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": torch.tensor(labels)}


def load_data(seq: int, n_eval: int) -> tuple[dict, dict]:
    train, validation = assets.movie_reviews(seed=0)
    return (encode(train["sentence"], train["label"], seq),
            encode(validation["sentence"][:n_eval], validation["label"][:n_eval], seq))


def fresh_model(seed: int = 0):
    torch.manual_seed(seed)  # the classification head's initialisation
    return AutoModelForSequenceClassification.from_pretrained(assets.minilm_dir(), num_labels=2)


def batch_at(data: dict, step: int, batch_size: int, seed: int = 0) -> dict:
    """The batch of global step `step`: the same examples in every round (one seeded permutation per epoch)."""
    n = len(data["labels"])
    epoch, offset = divmod(step * batch_size, n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    rows = order[offset:offset + batch_size]
    return {k: v[rows] for k, v in data.items()}


def train(model, data: dict, start: int, end: int, total: int, batch_size: int, lr: float, masks=None,
          on_step=None, desc: str = "train") -> None:
    """Steps start..end-1 of a `total`-step AdamW run with linear decay; masks re-applied after every step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    for step in tqdm(range(start, end), desc=desc, leave=False):
        if on_step is not None:
            on_step(step, model)  # before step `step`: the weights after `step` optimizer steps
        for group in optimizer.param_groups:
            group["lr"] = lr * (1.0 - step / total)
        loss = model(**batch_at(data, step, batch_size)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if masks:
            apply_masks(model, masks)
    model.eval()


@torch.no_grad()
def accuracy(model, data: dict, batch_size: int = 128) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(data["labels"]), batch_size):
        batch = {k: v[i:i + batch_size] for k, v in data.items() if k != "labels"}
        correct += int((model(**batch).logits.argmax(-1) == data["labels"][i:i + batch_size]).sum())
    return correct / len(data["labels"])


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
            f"threads, torch {torch.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.3, help="share of surviving weights pruned per round")
    parser.add_argument("--rewind-step", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--eval", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "lottery.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train_data, eval_data = load_data(args.seq, args.eval)
    rewinder = LotteryTicketRewinder(rate_per_round=args.rate, scope="global")

    def snapshot_at_rewind_step(step, model):
        if step == args.rewind_step:
            rewinder.snapshot(model)

    model = fresh_model()
    common = dict(total=args.steps, batch_size=args.batch_size, lr=args.lr)
    train(model, train_data, 0, args.steps, on_step=snapshot_at_rewind_step, desc="dense", **common)
    rows = [{"round": 0, "sparsity": 0.0, "ticket": accuracy(model, eval_data), "random": None}]
    print(f"dense: accuracy {rows[0]['ticket']:.4f}")
    for r in range(1, args.rounds + 1):
        masks = rewinder.prune_and_rewind(model)  # prune the trained ticket, rewind survivors
        control = reinitialize(copy.deepcopy(model), masks, seed=r)
        train(model, train_data, args.rewind_step, args.steps, masks=masks, desc=f"round {r} ticket", **common)
        train(control, train_data, args.rewind_step, args.steps, masks=masks, desc=f"round {r} random", **common)
        row = {"round": r, "sparsity": sparsity_report(model).sparsity, "ticket": accuracy(model, eval_data),
               "random": accuracy(control, eval_data), "control_sparsity": sparsity_report(control).sparsity}
        rows.append(row)
        print(f"round {r}: sparsity {row['sparsity']:.3f}  ticket {row['ticket']:.4f}  random {row['random']:.4f}")
    report = sparsity_report(model)
    print(report)
    result = {"command": command_line("benchmarks/lottery_ticket.py"), "args": {**vars(args), "out": repo_relative(args.out)},
              "rows": rows, "final_per_layer": report.per_layer(), "wall_s": time.perf_counter() - started, "machine": machine()}
    atomic_write_json(args.out, result)
    print(f"wrote {args.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
