"""Torch-Pruning Taylor on SmolLM2-135M, retrain-free, WikiText-2 perplexity (issue 8, part 2 peer row).

Same setup as benchmarks/bench_perplexity.py: the model and token windows exported by export_smollm2.py
(run it first; setup.sh does), perplexity = exp(mean next-token NLL) over the first 8 windows of 512 tokens
of WikiText-2 test (batch 2, inference mode), calibration slice k = train windows [4k, 4k+4) (batch 1,
causal-LM loss with labels = input_ids). Budgets = fraction of the 30 decoder layers' parameters removed,
per layer (bench_perplexity.BUDGETS):

    10%: FFN 1536 -> 1331, query heads 9 -> 9
    20%: FFN 1536 -> 1256, query heads 9 -> 6   (the issue's Torch-Pruning configuration)
    30%: FFN 1536 -> 1049, query heads 9 -> 6

Torch-Pruning is used through its public API the way its LLM example (examples/LLMs/prune_llm.py) sets up a
llama model: `BasePruner` with `num_heads` {q_proj: 9, k_proj: 3, v_proj: 3}, `prune_num_heads=True`,
`prune_head_dims=False` (RoPE untouched), local (per-layer) pruning; the importance is
`TaylorImportance` (|w * dL/dw| per channel, mean over the group) from the gradients of the causal-LM loss
summed over the slice's 4 windows. Unlike the example (which also halves the hidden size), the hidden size
is kept at 576 like every method of bench_perplexity.py: the residual-stream outputs (o_proj, down_proj)
and lm_head are `ignored_layers`. The model is loaded in transformers 4.57.6 with eager attention and the
KV cache off (Torch-Pruning traces the graph). After `pruner.step()` the attention modules'
`num_key_value_groups` and the config's `num_attention_heads` / `intermediate_size` are set by hand, as the
example does.

The gradients of a slice are computed once on the dense model and copied into a fresh deep copy for each
budget (the same gradients Torch-Pruning would see on that copy); seconds to prune = that gradient time +
tracing, scoring and pruning of the copy.

    benchmarks/peers/.venvs/torch-pruning/bin/python benchmarks/peers/run_torch_pruning_llm.py [--slices 3]

Finished runs are cached in .cache/runs-torch-pruning-llm.json (delete it to start over); rows are merged
into benchmarks/peers/results_perplexity.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see common.latency_ratios

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import common as C  # noqa: E402
import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402

METHOD = "torch-pruning-taylor"
MODEL_NAME = "SmolLM2-135M"
TASK = "wikitext-2 test, first 8 windows of 512 tokens"
MODEL_V4_DIR = C.CACHE / "smollm2-v4"  # written by export_smollm2.py (config readable by transformers 4.x)
WINDOWS = C.CACHE / "smollm2_windows.json"
RESULTS = C.HERE / "results_perplexity.json"
BUDGETS = {0.1: (9, 1331), 0.2: (6, 1256), 0.3: (6, 1049)}  # as bench_perplexity.BUDGETS: (q heads, FFN) kept
DENSE_TOLERANCE = 0.05
# Torch-Pruning lists the RMSNorm weights as "unwrapped parameters" (it would prune their last dimension with
# the hidden size); the hidden size is not pruned here, so the warning is noise
warnings.filterwarnings("ignore", message="Unwrapped parameters detected")


# ----------------------------------------------------------------------------- data, model, perplexity


def load_windows():
    data = json.loads(WINDOWS.read_text())
    as_t = lambda rows: [torch.tensor(r, dtype=torch.long) for r in rows]  # noqa: E731
    return data, as_t(data["eval"]), as_t(data["calib"])


def as_batches(wins, size):
    out = []
    for k in range(0, len(wins), size):
        ids = torch.stack(wins[k:k + size])
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def load_dense():
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(MODEL_V4_DIR, attn_implementation="eager", dtype=torch.float32)
    model.config.use_cache = False
    return model.eval()


@torch.inference_mode()
def perplexity(model, eval_b) -> float:
    """As bench_perplexity.perplexity: exp(summed next-token NLL / number of predicted tokens)."""
    model.eval()
    nll = count = 0.0
    for b in eval_b:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits[:, :-1]
        target = b["input_ids"][:, 1:]
        nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                       reduction="sum"))
        count += target.numel()
    return math.exp(nll / count)


def layer_params(model) -> int:
    return sum(p.numel() for p in model.model.layers.parameters())


def shapes_of(model):
    """(query heads, kv heads, head_dim, FFN) per layer, read from the weight tensors."""
    d = model.config.head_dim
    out = []
    for layer in model.model.layers:
        att, mlp = layer.self_attn, layer.mlp
        out.append((att.q_proj.weight.shape[0] // d, att.k_proj.weight.shape[0] // d, d, mlp.gate_proj.weight.shape[0]))
    return out


def shape_summary(model):
    per_layer = shapes_of(model)
    uniq = sorted(set(per_layer))
    return {"heads_kvheads_headdim_ffn_per_layer": [list(s) for s in uniq] if len(uniq) == 1 else [list(s) for s in per_layer],
            "uniform": len(uniq) == 1, "layers": len(per_layer), "hidden": model.model.embed_tokens.weight.shape[1],
            "q_proj": list(model.model.layers[0].self_attn.q_proj.weight.shape),
            "k_proj": list(model.model.layers[0].self_attn.k_proj.weight.shape),
            "v_proj": list(model.model.layers[0].self_attn.v_proj.weight.shape),
            "o_proj": list(model.model.layers[0].self_attn.o_proj.weight.shape),
            "gate_proj": list(model.model.layers[0].mlp.gate_proj.weight.shape),
            "down_proj": list(model.model.layers[0].mlp.down_proj.weight.shape)}


def kept_indices(pruned_w, dense_w):
    """Indices of the dense rows that the pruned rows are (exact copies), in order."""
    dist = torch.cdist(pruned_w.detach().double(), dense_w.detach().double())
    idx = dist.argmin(1)
    if float(dist.gather(1, idx[:, None]).max()) > 0:
        raise AssertionError("a pruned row is not a copy of a dense row")
    return idx.tolist()


def check_structure(pruned, dense):
    """Which query heads / FFN neurons were kept, and whether every coupled tensor kept the same ones
    (q_proj rows = o_proj columns by whole heads, k/v untouched, gate/up rows = down_proj columns)."""
    d = dense.config.head_dim
    group = dense.config.num_attention_heads // dense.config.num_key_value_heads
    per_group, consistent = set(), True
    for lp, ld in zip(pruned.model.layers, dense.model.layers):
        ap, ad = lp.self_attn, ld.self_attn
        rows = kept_indices(ap.q_proj.weight, ad.q_proj.weight)
        heads = sorted({r // d for r in rows})
        whole = rows == [h * d + i for h in heads for i in range(d)]
        o_cols = kept_indices(ap.o_proj.weight.T, ad.o_proj.weight.T)
        kv_same = (torch.equal(ap.k_proj.weight, ad.k_proj.weight) and torch.equal(ap.v_proj.weight, ad.v_proj.weight))
        f_gate = kept_indices(lp.mlp.gate_proj.weight, ld.mlp.gate_proj.weight)
        f_up = kept_indices(lp.mlp.up_proj.weight, ld.mlp.up_proj.weight)
        f_down = kept_indices(lp.mlp.down_proj.weight.T, ld.mlp.down_proj.weight.T)
        consistent &= whole and o_cols == rows and kv_same and f_gate == f_up == f_down
        per_group.add(tuple(sum(1 for h in heads if h // group == g) for g in range(dense.config.num_key_value_heads)))
    return {"query_heads_kept_per_kv_group": sorted(per_group), "indices_consistent": consistent}


# ----------------------------------------------------------------------------- pruning


def slice_gradients(dense, calib):
    """Gradients of the causal-LM loss (labels = input_ids) summed over the slice's windows, batch 1."""
    t0 = time.time()
    dense.zero_grad(set_to_none=True)
    dense.eval()  # no dropout in llama; eval for a deterministic loss
    for w in calib:
        ids = w.unsqueeze(0)
        dense(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids, use_cache=False).loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in dense.named_parameters() if p.grad is not None}
    dense.zero_grad(set_to_none=True)
    return grads, time.time() - t0


def prune(dense, grads, fraction, example_ids):
    heads_kept, ffn_kept = BUDGETS[fraction]
    cfg = dense.config
    model = copy.deepcopy(dense)
    t0 = time.time()
    for n, p in model.named_parameters():
        p.grad = grads[n].clone() if n in grads else None
    num_heads, ignored = {}, [model.lm_head]
    for layer in model.model.layers:
        att = layer.self_attn
        num_heads[att.q_proj] = cfg.num_attention_heads
        num_heads[att.k_proj] = cfg.num_key_value_heads
        num_heads[att.v_proj] = cfg.num_key_value_heads
        ignored += [att.o_proj, layer.mlp.down_proj]  # residual stream: hidden size stays 576
    # Torch-Pruning keeps int(channels * (1 - ratio)) channels of a scope: aim half a channel above the target
    ffn_ratio = (cfg.intermediate_size - ffn_kept - 0.5) / cfg.intermediate_size
    head_ratio = (cfg.num_attention_heads - heads_kept) / cfg.num_attention_heads
    pruner = tp.pruner.BasePruner(
        model, {"input_ids": example_ids, "use_cache": False}, importance=tp.importance.TaylorImportance(),
        global_pruning=False, pruning_ratio=ffn_ratio, ignored_layers=ignored, num_heads=num_heads,
        prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=head_ratio)
    pruner.step()
    d = cfg.head_dim
    heads = set()
    for layer in model.model.layers:
        att = layer.self_attn
        q, kv = att.q_proj.weight.shape[0] // d, att.k_proj.weight.shape[0] // d
        att.num_key_value_groups = q // kv
        heads.add(q)
        model.config.intermediate_size = layer.mlp.gate_proj.weight.shape[0]
    if len(heads) == 1:
        model.config.num_attention_heads = heads.pop()
    model.zero_grad(set_to_none=True)
    del pruner
    return model.eval(), time.time() - t0


# ----------------------------------------------------------------------------- reload checks


@torch.inference_mode()
def logits_of(model, ids):
    return model.eval()(input_ids=ids, use_cache=False).logits.float()


def reloads(pruned, window):
    """save_pretrained (config updated as above), then from_pretrained in 4.57 and in the main venv's v5."""
    from transformers import LlamaForCausalLM

    ids = window[:128].unsqueeze(0)
    ref = logits_of(pruned, ids)
    tmp = Path(tempfile.mkdtemp(prefix="peer-tp-llm-"))
    try:
        pruned.save_pretrained(tmp / "hf")
        try:
            back = LlamaForCausalLM.from_pretrained(tmp / "hf", attn_implementation="eager")
            diff4 = float((logits_of(back, ids) - ref).abs().max())
            ok4, note4 = diff4 < 1e-3, f"v4 from_pretrained loads; max|logit diff| {diff4:.2e}"
            del back
        except Exception as exc:  # noqa: BLE001
            ok4, note4 = False, f"v4 from_pretrained fails: {type(exc).__name__}: {C._short(str(exc))}"
        ok5, note5 = C.reload_v5(tmp / "hf", ref, {"input_ids": ids}, auto_class="AutoModelForCausalLM",
                                 load_kwargs={"attn_implementation": "eager"}, call_kwargs={"use_cache": False},
                                 tolerance=1e-3, timeout=900)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ok4, ok5, (f"save_pretrained after setting config.num_attention_heads/intermediate_size to the pruned "
                      f"widths (head_dim 64 is explicit in the config); logits on 128 test tokens: {note4}. {note5}")


# ----------------------------------------------------------------------------- results


def write_rows(rows, machine):
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": []}
    keys = {(r["method"], r["mode"], r["params_removed"]) for r in rows}
    data["rows"] = [r for r in data["rows"] if (r["method"], r["mode"], r["params_removed"]) not in keys] + rows
    data["rows"].sort(key=lambda r: (r["method"], r["mode"], r["params_removed"]))
    data["machine"] = machine
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, RESULTS)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--slices", type=int, default=3)
    p.add_argument("--fractions", nargs="+", type=float, default=sorted(BUDGETS))
    p.add_argument("--no-reload", action="store_true", help="skip the save_pretrained/from_pretrained checks")
    args = p.parse_args()
    torch.set_num_threads(2)
    t_start = time.time()
    data, eval_w, calib_w = load_windows()
    eval_b = as_batches(eval_w, 2)
    dense = load_dense()
    cache = C.RunCache("torch-pruning-llm")
    dense_ppl = cache.get("dense")
    if dense_ppl is None:
        dense_ppl = perplexity(dense, eval_b)
        cache.put("dense", dense_ppl)
    ref = data["dense_perplexity"]
    C.log(f"dense perplexity {dense_ppl:.4f} (transformers 4.57, eager, cache off) vs {ref:.4f} (main venv)")
    if abs(dense_ppl - ref) > DENSE_TOLERANCE:
        raise SystemExit(f"dense perplexity {dense_ppl:.4f} differs from the main venv's {ref:.4f} by more than "
                         f"{DENSE_TOLERANCE}: the export or the loading is wrong")
    dense_layer_params = layer_params(dense)
    per_slice = data["calib_windows_per_slice"]
    example_ids = calib_w[0][:32].unsqueeze(0)  # tracing input (any short sequence)
    for k in range(args.slices):
        todo = [f for f in args.fractions if cache.get(f"{f:.2f}|{k}") is None]
        if not todo:
            continue
        grads, t_grad = slice_gradients(dense, calib_w[k * per_slice:(k + 1) * per_slice])
        C.log(f"slice {k}: gradients of {per_slice} windows in {t_grad:.1f} s")
        for f in todo:
            model, t_prune = prune(dense, grads, f, example_ids)
            t1 = time.time()
            ppl = perplexity(model, eval_b)
            run = {"perplexity": ppl, "params_removed_actual": 1 - layer_params(model) / dense_layer_params,
                   "seconds_to_prune": t_grad + t_prune, "seconds_gradients": t_grad, "seconds_pruner": t_prune,
                   "seconds_eval": time.time() - t1,
                   "shapes": {**shape_summary(model), **check_structure(model, dense)}}
            cache.put(f"{f:.2f}|{k}", run)
            C.log(f"{METHOD} -{f:.0%} slice {k}: ppl {ppl:.2f} (x{ppl / dense_ppl:.2f}), removed "
                  f"{run['params_removed_actual']:.4f}, prune {run['seconds_to_prune']:.1f} s, shapes "
                  f"{run['shapes']['heads_kvheads_headdim_ffn_per_layer']}, heads kept per kv group "
                  f"{run['shapes']['query_heads_kept_per_kv_group']}, consistent {run['shapes']['indices_consistent']}")
            if k == 0 and not args.no_reload and cache.get(f"reload|{f:.2f}") is None:
                ok4, ok5, notes = reloads(model, eval_w[0])
                cache.put(f"reload|{f:.2f}", {"v4": ok4, "v5": ok5, "notes": notes})
                C.log(f"reload -{f:.0%}: v4 {ok4}, v5 {ok5}: {notes}")
            del model
        del grads

    rows = []
    for f in args.fractions:
        runs = [cache.get(f"{f:.2f}|{k}") for k in range(args.slices)]
        runs = [r for r in runs if r is not None]
        if not runs:
            continue
        ppl = [r["perplexity"] for r in runs]
        rel = cache.get(f"reload|{f:.2f}") or {}
        heads, ffn = BUDGETS[f]
        rows.append({
            "model": MODEL_NAME, "task": TASK, "method": METHOD, "mode": "retrain-free", "params_removed": f,
            "params_removed_actual": statistics.mean(r["params_removed_actual"] for r in runs),
            "metric_name": "perplexity", "metric": statistics.mean(ppl),
            "metric_sd": statistics.stdev(ppl) if len(ppl) > 1 else 0.0, "runs": len(ppl), "metric_runs": ppl,
            "dense_metric": dense_ppl, "dense_metric_main_venv": ref, "ratio_to_dense": statistics.mean(ppl) / dense_ppl,
            "seconds_to_prune": statistics.median(r["seconds_to_prune"] for r in runs),
            "seconds_to_prune_runs": [r["seconds_to_prune"] for r in runs],
            "shapes": runs[0]["shapes"], "budget": f"per layer: query heads 9 -> {heads}, FFN 1536 -> {ffn}, hidden 576 kept",
            "reload_v4_from_pretrained": rel.get("v4"), "reload_v5_from_pretrained": rel.get("v5"),
            "reload_notes": rel.get("notes", "not checked"),
            "importance": "tp.importance.TaylorImportance (group mean of |w * dL/dw|), causal-LM loss with "
                          "labels = input_ids summed over the slice's 4 windows (batch 1), local (per-layer) pruning",
            "calibration": f"{len(ppl)} disjoint slices of {per_slice} windows of 512 tokens of WikiText-2 train "
                           "(windows [4k, 4k+4) of bench_perplexity.windows(wikitext2('train'), tok, 12))",
            "pruner": "tp.pruner.BasePruner(num_heads={q_proj: 9, k_proj: 3, v_proj: 3}, prune_num_heads=True, "
                      "prune_head_dims=False, head_pruning_ratio=(9 - heads)/9, pruning_ratio=FFN ratio, "
                      "ignored_layers=[o_proj, down_proj of every layer, lm_head]); eager attention, use_cache=False",
            "versions": C.versions("torch-pruning"),
        })
    write_rows(rows, C.machine().replace(", torch threads 2 for latency", ", torch threads 2"))
    for r in rows:
        C.log(f"{METHOD} -{r['params_removed']:.0%}: ppl {r['metric']:.2f} +- {r['metric_sd']:.2f} "
              f"(x{r['ratio_to_dense']:.2f}), actual {r['params_removed_actual']:.4f}, {r['seconds_to_prune']:.1f} s")
    C.log(f"total {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
