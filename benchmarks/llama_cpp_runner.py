"""Run GGUF files in llama.cpp (through llama-cpp-python) for `bench_gguf.py`: perplexity, greedy text, speed.

Runs in its own virtual environment (llama-cpp-python is built from source there, see bench_gguf.py), so it
imports nothing from hf_prune and reads token ids, not text:

    <llama venv>/bin/python benchmarks/llama_cpp_runner.py job.json result.json

job.json: {"models": {name: path}, "windows": [[ids]], "prompt": [ids], "new_tokens": n, "timing_tokens": m,
"logits": [[ids]],
"prefill": [ids], "repeats": r, "threads": t, "timing": [names], "f32_cache": [names]}. Every model is scored on the same windows;
the models named in "timing" are timed round-robin, one round at a time, so machine noise hits them alike.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time

import numpy as np
from llama_cpp import Llama

GGML_TYPE_F32 = 0


def load(path: str, n_ctx: int, threads: int, logits_all: bool, f32_cache: bool) -> Llama:
    """A llama.cpp context; f32_cache keeps the KV cache in float32 (llama.cpp's default is f16)."""
    cache = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if f32_cache else {}
    return Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                 n_threads_batch=threads, logits_all=logits_all, verbose=False, seed=0, **cache)


def log_softmax(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    rows = rows - rows.max(axis=-1, keepdims=True)
    return rows - np.log(np.exp(rows).sum(axis=-1, keepdims=True))


def perplexity(llm: Llama, windows: list[list[int]]) -> float:
    """exp(mean next-token NLL) over the windows, each evaluated from an empty context (as transformers does)."""
    nll, count = 0.0, 0
    for ids in windows:
        llm.reset()
        llm.eval(ids)
        logp = log_softmax(np.asarray(llm.scores[: len(ids) - 1]))  # (n - 1, vocab)
        nll -= float(logp[np.arange(len(ids) - 1), ids[1:]].sum())
        count += len(ids) - 1
    return math.exp(nll / count)


def last_logits(llm: Llama) -> np.ndarray:
    """Logits of the last evaluated token (without logits_all, llama-cpp-python keeps only llama.cpp's own copy)."""
    if llm._logits_all:
        return np.asarray(llm.scores[llm.n_tokens - 1])
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))


def greedy(llm: Llama, prompt: list[int], new_tokens: int) -> tuple[list[int], float]:
    """Greedy continuation of `prompt` and the seconds per generated token (prompt pass not timed)."""
    llm.reset()
    llm.eval(prompt)
    out = [int(np.argmax(last_logits(llm)))]
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        llm.eval([out[-1]])
        out.append(int(np.argmax(last_logits(llm))))
    return out, (time.perf_counter() - start) / max(new_tokens - 1, 1)


def prefill_seconds(llm: Llama, ids: list[int]) -> float:
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    return time.perf_counter() - start


def main(job_path: str, out_path: str) -> None:
    job = json.loads(open(job_path).read())
    threads = job.get("threads", 2)
    window = max(len(w) for w in job["windows"]) if job["windows"] else 512
    generated = max(job["new_tokens"], job.get("timing_tokens", 0))
    n_ctx = max(window, len(job["prompt"]) + generated, len(job.get("prefill", [])), 64)
    f32_cache = set(job.get("f32_cache", []))
    result = {}
    for name, path in job["models"].items():
        try:
            llm = load(path, n_ctx, threads, logits_all=True, f32_cache=name in f32_cache)
        except ValueError as error:  # llama.cpp refused the file: recorded (without this machine's path), not fatal
            result[name] = {"error": str(error).replace(path, os.path.basename(path))}
            print(f"  llama.cpp {name}: {error}", flush=True)
            continue
        entry = {"perplexity": perplexity(llm, job["windows"]) if job["windows"] else None}
        entry["greedy"], _ = greedy(llm, job["prompt"], job["new_tokens"])
        entry["logits"] = []
        for ids in job.get("logits", []):  # full logits of short sequences, for exactness checks
            llm.reset()
            llm.eval(ids)
            entry["logits"].append(np.asarray(llm.scores[: len(ids)]).tolist())
        result[name] = entry
        del llm
        print(f"  llama.cpp {name}: perplexity {entry['perplexity']}", flush=True)

    timed = {name: load(job["models"][name], n_ctx, threads, logits_all=False, f32_cache=name in f32_cache)
             for name in job.get("timing", [])}
    times = {name: {"prefill": [], "decode": []} for name in timed}
    for r in range(job.get("repeats", 0) + 1):  # round 0 warms up
        for name, llm in timed.items():
            pre = prefill_seconds(llm, job["prefill"])
            _, dec = greedy(llm, job["prompt"], job.get("timing_tokens", job["new_tokens"]))
            if r:
                times[name]["prefill"].append(pre)
                times[name]["decode"].append(dec)
    for name, t in times.items():
        result[name]["prefill_s"] = statistics.median(t["prefill"])
        result[name]["decode_s_per_token"] = statistics.median(t["decode"])
        result[name]["prefill_tokens_per_s"] = len(job["prefill"]) / result[name]["prefill_s"]
        result[name]["decode_tokens_per_s"] = 1.0 / result[name]["decode_s_per_token"]
        result[name]["timing_rounds"] = len(t["decode"])
    with open(out_path, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
