"""Speed, size on disk and peak loading memory of pruned models against their dense originals (issue 8, part 3).

Models: BERT-base shapes (random weights), the real MiniLM, the real SmolLM2 (GQA). For each sparsity, the
same fraction of query heads (rounded to whole heads per key/value group for GQA) and FFN neurons is removed
from every layer with `prune_model`. Latency: `measure_latency`, dense and pruned alternated in one process,
medians, 2 threads, sequence 128, batch 1 and 8. Size on disk: the `save_pretrained` folder. Peak memory while
loading: max RSS of a fresh process that only loads the model (dense with from_pretrained, pruned with
load_pruned), next to a process that only imports torch and transformers.

    .venv/bin/python benchmarks/bench_speed_models.py            # writes benchmarks/results/speed_models.json
"""

from __future__ import annotations

import argparse
import copy
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModel, BertConfig, BertModel

import hf_prune_assets as assets
from hf_prune import count_flops, count_parameters, layer_shapes, measure_latency, prune_model
from hf_prune.serialization.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
LOAD_SNIPPET = """
import sys
import transformers
from hf_prune import load_pruned
if sys.argv[2] == "dense":
    transformers.AutoModel.from_pretrained(sys.argv[1])
elif sys.argv[2] == "pruned":
    load_pruned(sys.argv[1], model_class=transformers.AutoModel)
# VmHWM: this process's peak RSS (ru_maxrss would carry the parent's peak across fork + exec)
print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0])  # KiB
"""


def uniform_request(model, sparsity: float) -> tuple[dict, dict]:
    """Remove `sparsity` of each layer's query heads (whole heads per GQA group) and FFN neurons."""
    heads, neurons = {}, {}
    for i, s in enumerate(layer_shapes(model)):
        if s.kv_heads == s.heads:  # plain multi-head attention
            heads[i] = list(range(round(sparsity * s.heads)))
        else:  # GQA: the same number of query heads from every key/value group
            per_group = s.heads // s.kv_heads
            drop = round(sparsity * per_group)
            heads[i] = [g * per_group + j for g in range(s.kv_heads) for j in range(drop)]
        neurons[i] = list(range(round(sparsity * s.ffn)))
    return heads, neurons


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def peak_load_mib(folder: Path | str, kind: str) -> float:
    out = subprocess.run([sys.executable, "-c", LOAD_SNIPPET, str(folder), kind], capture_output=True, text=True,
                         check=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def load_models() -> dict:
    torch.manual_seed(0)
    bert_base = BertModel(BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     intermediate_size=3072), add_pooling_layer=False).eval()
    minilm = AutoModel.from_pretrained(assets.minilm_dir()).eval()
    smollm2 = assets.load_smollm2()[0].model.eval()  # the LlamaModel body; lm_head is untouched by pruning
    return {"bert-base (random)": bert_base, "all-MiniLM-L6-v2": minilm, "SmolLM2-135M": smollm2}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed_models.json"))
    args = parser.parse_args(argv)

    rows = []
    baseline = peak_load_mib("-", "none")
    for name, dense in load_models().items():
        with tempfile.TemporaryDirectory() as tmp:
            dense_dir = Path(tmp) / "dense"
            dense.save_pretrained(dense_dir)
            dense_disk, dense_peak = folder_bytes(dense_dir), peak_load_mib(dense_dir, "dense")
            for sparsity in args.sparsities:
                pruned = prune_model(copy.deepcopy(dense), *uniform_request(dense, sparsity))
                pruned_dir = Path(tmp) / f"pruned{sparsity}"
                pruned.save_pretrained(pruned_dir)
                ideal = count_flops(dense, args.seq_len) / count_flops(pruned, args.seq_len)
                row = {
                    "model": name, "sparsity": sparsity,
                    "heads": [s.heads for s in layer_shapes(pruned)][0], "ffn": [s.ffn for s in layer_shapes(pruned)][0],
                    "params_ratio": count_parameters(pruned) / count_parameters(dense), "ideal_speedup": ideal,
                    "disk_mb": {"dense": dense_disk / 2**20, "pruned": folder_bytes(pruned_dir) / 2**20},
                    "peak_load_mib": {"dense": dense_peak, "pruned": peak_load_mib(pruned_dir, "pruned"),
                                      "imports_only": baseline},
                }
                for batch in args.batches:
                    stats = measure_latency({"dense": dense, "pruned": pruned}, batch_size=batch, seq_len=args.seq_len,
                                            repeats=args.repeats, num_threads=2)
                    speedup = stats["dense"].median_s / stats["pruned"].median_s
                    row[f"batch{batch}"] = {"dense_ms": stats["dense"].median_s * 1e3,
                                            "pruned_ms": stats["pruned"].median_s * 1e3, "speedup": speedup,
                                            "share_of_ideal": speedup / ideal,
                                            "pruned_throughput": stats["pruned"].throughput}
                rows.append(row)
                print(f"{name} {sparsity:.0%}: ideal {ideal:.2f}x, " + ", ".join(
                    f"batch {b}: {row[f'batch{b}']['speedup']:.2f}x ({row[f'batch{b}']['share_of_ideal']:.2f})"
                    for b in args.batches) + f", disk {row['disk_mb']['pruned']:.0f}/{dense_disk / 2**20:.0f} MB, "
                    f"peak load {row['peak_load_mib']['pruned']:.0f}/{dense_peak:.0f} MiB", flush=True)
    atomic_write_json(args.out, {"machine": f"{platform.processor() or platform.machine()}, 2 torch threads",
                                 "seq_len": args.seq_len, "repeats": args.repeats, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
