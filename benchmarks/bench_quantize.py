"""Prune, then quantize: size, CPU latency and accuracy of dense / pruned models, float32 vs dynamic int8.

Run:  .venv/bin/python benchmarks/bench_quantize.py [--steps 60 --recovery-steps 30 --threads 1]

MiniLM (all-MiniLM-L6-v2 + 2-way head) is fine-tuned on movie-review sentiment (`--steps`). Two pruned
copies are made from it and briefly retrained (`--recovery-steps`): "heads+ffn" (`prune_model` via
Fisher importance, 50% of heads and 50% of FFN neurons removed physically) and "unstructured" (50% of
the projection weights zeroed by global magnitude, zeros held while retraining). Each of the three is
then quantized with `hf_prune.quantize_dynamic_int8`. Size: bytes of the saved weights (safetensors for
float32, torch.save for int8, which safetensors cannot hold; `save_sparse` for the unstructured model).
Latency: `measure_latency`, all six models alternated in one process. Accuracy on `--eval` validation
sentences, and the share of int8 predictions equal to the float model's. Writes benchmarks/results/quantize.json.
"""

from __future__ import annotations

import argparse
import copy
import io
import tempfile
import time
from pathlib import Path

import torch
from lottery_ticket import batch_at, fresh_model, load_data, machine, train
from provenance import command_line, repo_relative  # benchmarks/provenance.py
from safetensors.torch import save_file

from hf_prune.architecture.counting import count_parameters
from hf_prune.deploy.latency import measure_latency
from hf_prune.deploy.quantize import quantize_dynamic_int8
from hf_prune.importance import compute_importance
from hf_prune.planning import plan_from_sparsity
from hf_prune.serialization.atomic import atomic_write_json
from hf_prune.serialization.sparse import save_sparse
from hf_prune.unstructured.magnitude import prune_unstructured, sparsity_report, zero_masks

RESULTS = Path(__file__).parent / "results"


def saved_bytes(model, quantized: bool) -> int:
    """Bytes of the model's weights as saved: safetensors (float) or torch.save (int8 packed params)."""
    if quantized:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        return buffer.tell()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return path.stat().st_size


def sparse_bytes(model) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        return sum(save_sparse(model, Path(tmp) / "sparse").values())


@torch.no_grad()
def predictions(model, data: dict, batch_size: int = 128) -> torch.Tensor:
    model.eval()
    return torch.cat([model(**{k: v[i:i + batch_size] for k, v in data.items() if k != "labels"}).logits.argmax(-1)
                      for i in range(0, len(data["labels"]), batch_size)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--recovery-steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--eval", type=int, default=500)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--latency-batch", type=int, default=8)
    parser.add_argument("--latency-seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "quantize.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train_data, eval_data = load_data(args.seq, args.eval)
    common = dict(batch_size=args.batch_size, lr=args.lr)

    dense = fresh_model()
    train(dense, train_data, 0, args.steps, total=args.steps, desc="fine-tune dense", **common)

    structured = copy.deepcopy(dense)
    calibration = [batch_at(train_data, args.steps + i, args.batch_size) for i in range(4)]
    scores = compute_importance(structured, calibration, "fisher", progress=False)
    plan_from_sparsity(scores, head_sparsity=args.sparsity, ffn_sparsity=args.sparsity).apply(structured)
    train(structured, train_data, args.steps, args.steps + args.recovery_steps, total=args.steps + args.recovery_steps,
          desc="recover heads+ffn", **common)

    unstructured = prune_unstructured(copy.deepcopy(dense), args.sparsity, scope="global")
    train(unstructured, train_data, args.steps, args.steps + args.recovery_steps, total=args.steps + args.recovery_steps,
          masks=zero_masks(unstructured), desc="recover unstructured", **common)

    floats = {"dense": dense, "heads+ffn": structured, "unstructured": unstructured}
    models = {}
    for name, model in floats.items():
        models[f"{name} fp32"] = model.eval()
        models[f"{name} int8"] = quantize_dynamic_int8(model)
    latency = measure_latency(models, batch_size=args.latency_batch, seq_len=args.latency_seq, repeats=args.repeats)
    rows = []
    for name, model in models.items():
        quantized = name.endswith("int8")
        base = floats[name.rsplit(" ", 1)[0]]
        preds = predictions(model, eval_data)
        rows.append({
            "model": name,
            "parameters": count_parameters(base),
            "projection_sparsity": sparsity_report(base).sparsity,
            "size_bytes": saved_bytes(model, quantized),
            "sparse_export_bytes": sparse_bytes(base) if name == "unstructured fp32" else None,
            "latency_ms": latency[name].median_s * 1e3,
            "latency_p10_p90_ms": [latency[name].p10_s * 1e3, latency[name].p90_s * 1e3],
            "accuracy": float((preds == eval_data["labels"]).float().mean()),
            "agreement_with_fp32": float((preds == predictions(base, eval_data)).float().mean()),
        })
    print(f"{'model':<18} {'size MB':>8} {'latency ms':>11} {'accuracy':>9} {'agree':>6}")
    for row in rows:
        print(f"{row['model']:<18} {row['size_bytes'] / 1e6:>8.1f} {row['latency_ms']:>11.1f} {row['accuracy']:>9.4f} "
              f"{row['agreement_with_fp32']:>6.3f}")
    result = {"command": command_line("benchmarks/bench_quantize.py"), "args": {**vars(args), "out": repo_relative(args.out)},
              "rows": rows, "wall_s": time.perf_counter() - started, "machine": machine()}
    atomic_write_json(args.out, result)
    print(f"wrote {args.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
