"""Peak extra memory of retrain-free pruning of a tiny-vocabulary llama, measured in this (fresh) process.

Usage: python tests/streaming_memory_worker.py LAYERS {pipeline,onepass} -> prints one JSON line.

Peak extra = highest resident set size (RSS) during the call minus the RSS just before it. RSS is sampled every
millisecond from /proc/self/statm by a background thread; `ru_maxrss` (the process's lifetime peak) is read too
and used when the call raised it, which catches a spike shorter than the sampling interval. torch's CPU
allocations go through malloc, so they are visible in RSS; a freed block that malloc keeps for reuse stays in
RSS, which can only overstate the peak, never hide it.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time

import torch
import transformers as tf

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class PeakSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak = rss()
        self.running = True

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.001)


def make_llama(layers: int):
    torch.manual_seed(0)
    config = tf.LlamaConfig(hidden_size=256, intermediate_size=2048, num_hidden_layers=layers, num_attention_heads=4,
                            num_key_value_heads=4, vocab_size=128, max_position_embeddings=256, bos_token_id=0,
                            eos_token_id=0)
    return tf.LlamaForCausalLM(config).eval()


def batches(n: int = 2, batch: int = 4, seq: int = 64) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(1, 128, (batch, seq), generator=g),
             "attention_mask": torch.ones(batch, seq, dtype=torch.long)} for _ in range(n)]


def main(layers: int, how: str) -> dict:
    from hf_prune import PruningConfig, apply_mask_tuning, calibration_moments, prune_retrain_free
    from hf_prune.importance.compute import compute_importance
    from hf_prune.pipeline import make_plan

    torch.set_num_threads(2)
    model = make_llama(layers)
    data = batches()
    config = PruningConfig(head_sparsity=0.5, ffn_sparsity=0.5, pruning_scope="layer", importance="l2",
                           reselect=False)
    warm = make_llama(1)  # first-use costs (thread pools, LAPACK) paid before the measurement
    prune_retrain_free(warm, data[:1], config)
    del warm
    before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    before = rss()
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    if how == "pipeline":
        prune_retrain_free(model, data, config)
    else:  # one pass: every layer's statistics at once
        plan = make_plan(compute_importance(model, None, "l2"), model, config)
        apply_mask_tuning(model, plan, calibration_moments(model, data), reconstruct="weights")
    seconds = time.perf_counter() - start
    sampler.running = False
    sampler.join()
    after_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = max(sampler.peak, after_max if after_max > before_max else 0)
    return {"layers": layers, "how": how, "peak_extra_bytes": peak - before, "sampled_peak_extra_bytes":
            sampler.peak - before, "seconds": seconds}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), sys.argv[2])))
