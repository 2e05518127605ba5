"""Shared setup of the peer-tool benchmarks (runs inside each tool's own transformers-4.x venv).

It mirrors benchmarks/bench_accuracy.py exactly: the data exported by export_data.py (seeded 80/20 split of the
movie-review sentences, max_seq_length 64), the dense fine-tuned MiniLM cached at
benchmarks/cache/minilm-movie-dense, calibration slice k = train[k*512:(k+1)*512] in batches of 32 (in order),
evaluation on the full validation split in length-sorted batches of 128 with dynamic padding under
torch.inference_mode. Nothing here imports hf_prune (it is not installed in these venvs).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = HERE / ".cache"
DENSE_DIR = ROOT / "benchmarks" / "cache" / "minilm-movie-dense"
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"
# PEERS_RESULTS / PEERS_SLICES: the recovery study (run_recovery.sh) writes results_recovery.json over 5 slices
RESULTS = HERE / os.environ.get("PEERS_RESULTS", "results.json")
SEQ_LEN = 64
CALIB_SIZE = 512
SLICES = int(os.environ.get("PEERS_SLICES", "3"))
MODEL_NAME = "all-MiniLM-L6-v2"
TASK = "movie-reviews"

sys.path.insert(0, str(ROOT / "benchmarks"))
from batching import batches, collate, eval_batches  # noqa: E402, F401 (torch only; bench_accuracy.py uses it too)

# ----------------------------------------------------------------------------- data (as bench_accuracy.py)


def load_data():
    data = json.loads((CACHE / "data.json").read_text())

    def examples(split):
        return [{"input_ids": ids, "token_type_ids": [0] * len(ids), "attention_mask": [1] * len(ids), "labels": y}
                for ids, y in zip(split["input_ids"], split["labels"])]

    return examples(data["train"]), examples(data["validation"])


def arguments() -> argparse.ArgumentParser:
    """The command line every MiniLM peer script shares (add a script's own flags to it)."""
    p = argparse.ArgumentParser()
    p.add_argument("--recovery", action="store_true", help="also 100 fine-tuning steps after pruning")
    p.add_argument("--recipes", default="peers", help="with --recovery: comma-separated names of RECIPES "
                                                      f"({', '.join(RECIPES)}); default: the peers' recipe only")
    return p


def recovery_modes(args) -> dict[str, dict]:
    """{mode name: recipe} of the --recovery/--recipes flags (mode names as in results.json)."""
    if not args.recovery:
        return {}
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}: choose from {list(RECIPES)}")
    return {RECIPES[n]["mode"]: RECIPES[n] for n in names}


def setup(attn_implementation=None):
    """2 threads, then (train, validation, validation batches, dense fine-tuned model)."""
    torch.set_num_threads(2)
    train, val = load_data()
    return train, val, eval_batches(val), load_dense(attn_implementation)


def calib_batches(train, k):
    return batches(train[k * CALIB_SIZE:(k + 1) * CALIB_SIZE], 32)


def inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


@torch.inference_mode()
def accuracy(model, val_b) -> float:
    model.eval()
    right = total = 0
    for b in val_b:
        logits = model(**inputs(b)).logits
        right += int((logits.argmax(-1) == b["labels"]).sum())
        total += len(b["labels"])
    return right / total


# ----------------------------------------------------------------------------- model


def dense_dir() -> Path:
    """The dense model folder, with a config that transformers 4.x reads (copied and fixed only if needed)."""
    config = json.loads((DENSE_DIR / "config.json").read_text())
    drop = [k for k in ("dtype",) if k in config and not _v4_knows_dtype()]
    if not drop:
        return DENSE_DIR
    fixed = CACHE / "dense-v4"
    if not (fixed / "config.json").exists():
        fixed.mkdir(parents=True, exist_ok=True)
        for f in DENSE_DIR.iterdir():
            shutil.copy(f, fixed / f.name)
        config["torch_dtype"] = config.pop("dtype")
        (fixed / "config.json").write_text(json.dumps(config, indent=2))
    return fixed


def _v4_knows_dtype() -> bool:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return (major, minor) >= (4, 56)


def load_dense(attn_implementation=None):
    from transformers import AutoModelForSequenceClassification

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForSequenceClassification.from_pretrained(dense_dir(), **kwargs)
    return model.eval()


def bert_shapes(model):
    """(heads, kv_heads, head_dim, ffn) per layer, read from the weight tensors (TextPruner swaps the
    Parameters of nn.Linear without updating in_features/out_features, so those attributes can be stale)."""
    shapes = []
    d = model.config.hidden_size // model.config.num_attention_heads
    for layer in model.bert.encoder.layer:
        att = layer.attention.self
        d = getattr(att, "attention_head_size", d)  # a uniformly pruned config may no longer give hidden / heads
        shapes.append((att.query.weight.shape[0] // d, att.key.weight.shape[0] // d, d,
                       layer.intermediate.dense.weight.shape[0]))
    return shapes


def layer_flops(hidden, heads, kv_heads, head_dim, ffn, seq_len, gated=False):
    """Same formula as hf_prune/counting.py (transformer layers, 2 x MACs, one sequence)."""
    T, H, d = seq_len, hidden, head_dim
    projections = 2 * T * H * (heads * d + 2 * kv_heads * d) + 2 * T * heads * d * H
    attention = 2 * 2 * T * T * heads * d
    feed_forward = 2 * T * H * ffn * (3 if gated else 2)
    return projections + attention + feed_forward


def count_flops(model, seq_len=SEQ_LEN):
    return sum(layer_flops(model.config.hidden_size, *s, seq_len) for s in bert_shapes(model))


# ----------------------------------------------------------------------------- recovery fine-tuning


# Recovery recipes, 100 steps of batch 32 each (AdamW, weight decay 0.01, dropout on, shuffled training split,
# seed 0). "peers" is the recipe of the peer comparison; the others are what hf_prune recommends and its parts.
RECIPES = {
    "peers": {"mode": "recovery-100-steps", "lr": 1e-4, "warmup": 0, "decay": False, "distill": 0.0},
    "distill": {"mode": "recovery-100-steps-distill", "lr": 1e-4, "warmup": 10, "decay": True, "distill": 0.5},
    "distill-low-lr": {"mode": "recovery-100-steps-distill-low-lr", "lr": 3e-5, "warmup": 10, "decay": True,
                       "distill": 0.5},
}
TEMPERATURE = 2.0


def describe(recipe) -> str:
    schedule = (f"{recipe['warmup']} warmup steps then linear decay to 0" if recipe["decay"] else "constant")
    kd = (f", loss (1 - {recipe['distill']}) CE + {recipe['distill']} T^2 KL(dense teacher || student), "
          f"T {TEMPERATURE:g}" if recipe["distill"] else ", labelled loss")
    return (f"100 AdamW steps (lr {recipe['lr']:g} {schedule}, weight decay 0.01, batch 32, dropout on{kd}) on "
            "the shuffled training split, seed 0, after pruning")


def kl_to_teacher(student_logits, teacher_logits, temperature=TEMPERATURE):
    """T^2-scaled KL(teacher || student) over the classes, batch mean (peer venvs have no hf_prune)."""
    t = temperature
    q = torch.log_softmax(teacher_logits.float() / t, -1)
    return (q.exp() * (q - torch.log_softmax(student_logits.float() / t, -1))).sum(-1).mean() * t * t


def recover(model, train, recipe=RECIPES["peers"], teacher=None, kd_loss=kl_to_teacher, steps=100, seed=0):
    """Fine-tune `model` with `recipe` (RECIPES); returns (model, {first_loss, last10_loss}) of the task loss.

    With `recipe["distill"]` > 0 the loss mixes in `kd_loss(student logits, teacher logits)` (teacher: the
    dense model, frozen)."""
    torch.manual_seed(seed)
    data = batches(train, 32, shuffle_seed=seed)[:steps]
    optim = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.01)
    warmup = recipe["warmup"]

    def factor(step):  # step 0 is the first update
        if step < warmup:
            return (step + 1) / warmup
        return (steps - step) / (steps - warmup) if recipe["decay"] else 1.0

    sched = torch.optim.lr_scheduler.LambdaLR(optim, factor)
    alpha = recipe["distill"]
    if alpha and teacher is None:
        raise ValueError("a distillation recipe needs the dense teacher")
    if teacher is not None:
        teacher.eval()
    losses = []
    model.train()
    for b in data:
        out = model(**b)
        loss = out.loss
        losses.append(float(loss.detach()))
        if alpha:
            with torch.no_grad():
                teacher_logits = teacher(**inputs(b)).logits
            loss = (1 - alpha) * loss + alpha * kd_loss(out.logits, teacher_logits)
        loss.backward()
        optim.step()
        sched.step()
        optim.zero_grad()
    model.eval()
    return model, {"first_loss": losses[0], "last10_loss": statistics.mean(losses[-10:])}


def recovery_control(train, val_b, recipe=RECIPES["peers"]):
    """Accuracy of the DENSE model after the same recipe (cached per recipe; identical in every venv): it tells
    how much of a recovery row is the recipe itself (a converged model disturbed by a fresh AdamW)."""
    name = "dense_after_recovery_recipe" + ("" if recipe is RECIPES["peers"] else f"|{recipe['mode']}")
    path = CACHE / "recovery-control.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if name not in data:
        dense = load_dense()
        teacher = load_dense() if recipe["distill"] else None
        data[name] = accuracy(recover(dense, train, recipe, teacher)[0], val_b)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    return data[name]


# ----------------------------------------------------------------------------- latency


@torch.inference_mode()
def latency_ratios(dense, pruned, reps=30, warmup=3, threads=2):
    """Median pruned/dense latency, runs alternating in one process, torch threads 2, seq 128.

    The scripts set OMP_WAIT_POLICY=PASSIVE before importing torch: on this shared 2-core machine (another
    process keeps both cores busy) spinning OpenMP threads made a 2-thread forward ~30x slower (b1: ~900 ms
    instead of ~35 ms), which would swamp any pruning effect.
    """
    torch.set_num_threads(threads)
    dense.eval(), pruned.eval()
    out = {}
    gen = torch.Generator().manual_seed(0)
    for batch in (8, 1):
        ids = torch.randint(1000, 30000, (batch, 128), generator=gen)
        kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        times = {"dense": [], "pruned": []}
        for i in range(warmup + reps):
            for name, model in (("dense", dense), ("pruned", pruned)) if i % 2 == 0 else (("pruned", pruned), ("dense", dense)):
                t0 = time.perf_counter()
                model(**kw)
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
        d, p = statistics.median(times["dense"]), statistics.median(times["pruned"])
        out[f"b{batch}"] = {"dense_ms": 1000 * d, "pruned_ms": 1000 * p, "ratio": p / d}
    out["threads"] = threads
    out["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "")
    out["ideal_ratio_seq128"] = count_flops(pruned, 128) / count_flops(dense, 128)
    return out


# ----------------------------------------------------------------------------- reload checks


def check_batch(val):
    return collate(val[:32])


@torch.inference_mode()
def logits_of(model, batch):
    model.eval()
    return model(**inputs(batch)).logits.float()


def reload_v4(folder, reference, batch):
    """transformers 4.x AutoModelForSequenceClassification.from_pretrained(folder): (ok, note)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    records = []
    handler = _ListHandler(records)
    hf_logging.get_logger().addHandler(handler)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        diff = float((logits_of(model, batch) - reference).abs().max())
        warn = [r for r in records if "newly initialized" in r or "not used" in r or "mismatch" in r]
        ok = diff < 1e-4
        return ok, f"v4 loads; max|logit diff| {diff:.2e}" + (f"; warnings: {' | '.join(w[:300] for w in warn)}" if warn else "")
    except Exception as exc:  # noqa: BLE001 - the error text is the result
        return False, f"v4 from_pretrained fails: {type(exc).__name__}: {_short(str(exc))}"
    finally:
        hf_logging.get_logger().removeHandler(handler)


V5_SCRIPT = r"""
import json, sys, logging, io
import torch
import transformers
from transformers.utils import logging as hf_logging
buf = io.StringIO()
hf_logging.get_logger().addHandler(logging.StreamHandler(buf))
folder, spec_file, out_file = sys.argv[1:4]
spec = json.load(open(spec_file))
res = {}
try:
    m = getattr(transformers, spec["auto_class"]).from_pretrained(folder, **spec["load"]).eval()
    with torch.inference_mode():
        lg = m(**{k: torch.tensor(v) for k, v in spec["tensors"].items()}, **spec["call"]).logits.float()
    res["logits"] = lg.tolist()
except Exception as exc:
    res["error"] = f"{type(exc).__name__}: {exc}"
res["log"] = buf.getvalue()
res["transformers"] = transformers.__version__
json.dump(res, open(out_file, "w"))
"""


def reload_v5(folder, reference, batch, auto_class="AutoModelForSequenceClassification", load_kwargs=None,
              call_kwargs=None, tolerance=1e-4, timeout=600):
    """Our venv's transformers 5 `<auto_class>.from_pretrained(folder, **load_kwargs)`, run on the batch's tensors
    (labels dropped) with `call_kwargs`: (logits within `tolerance` of `reference`, note)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec, of = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(json.dumps({"auto_class": auto_class, "load": load_kwargs or {}, "call": call_kwargs or {},
                                    "tensors": {k: v.tolist() for k, v in inputs(batch).items()}}))
        proc = subprocess.run([str(MAIN_PYTHON), "-c", V5_SCRIPT, str(folder), str(spec), str(of)],
                              capture_output=True, text=True, timeout=timeout)
        if not of.exists():
            return False, f"v5 subprocess crashed (rc {proc.returncode}): {_short(proc.stderr[-1500:])}"
        res = json.loads(of.read_text())
    tag = f"v5 ({res.get('transformers')})"
    log = " ".join(line for line in res["log"].splitlines() if line.strip())
    if "error" in res:
        report = f"; load report: {_short(log, 900)}" if log else ""
        return False, f"{tag} from_pretrained fails: {_short(res['error'])}{report}"
    diff = float((torch.tensor(res["logits"]) - reference).abs().max())
    note = f"{tag} loads; max|logit diff| {diff:.2e}"
    if diff >= tolerance and log:
        note += f"; load report: {_short(log, 600)}"
    return diff < tolerance, note


def _short(text, n=900):
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())
    return text if len(text) <= n else text[:n] + " ..."


class _ListHandler(logging.Handler):
    def __init__(self, records):
        super().__init__()
        self.records = records

    def emit(self, record):
        self.records.append(record.getMessage())


# ----------------------------------------------------------------------------- results


def versions(tool_name=None, tool_module=None):
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}
    if tool_name:
        from importlib.metadata import version

        out["tool"] = f"{tool_name}=={version(tool_name)}"
    return out


def machine():
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} shared CPU cores "
            f"(another process running experiments at the same time), torch threads 2 for latency")


def summarize(method, mode, runs, dense_acc, extra, recipes):
    accs = [r["accuracy"] for r in runs]
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    row = {
        "model": MODEL_NAME, "task": TASK, "method": method, "mode": mode,
        "flops_reduction": statistics.mean(r["flops_reduction"] for r in runs),
        "metric_name": "accuracy", "metric": statistics.mean(accs),
        "metric_sd": sd, "metric_se": sd / len(accs) ** 0.5, "runs": len(accs), "metric_runs": accs,
        "dense_metric": dense_acc,
        "seconds_to_prune": statistics.median(r["seconds_to_prune"] for r in runs),
        "seconds_to_prune_runs": [r["seconds_to_prune"] for r in runs],
        "calibration": f"{SLICES} disjoint slices train[k*{CALIB_SIZE}:(k+1)*{CALIB_SIZE}], batch 32",
    }
    row.update(extra)
    if mode in recipes:
        row["recovery"] = describe(recipes[mode])
        row["recipe"] = recipes[mode]
        for key in ("first_loss", "last10_loss"):
            row[f"train_{key}_runs"] = [r.get(key) for r in runs]
    return row


def prune_over_slices(tool, method, dense, train, val_b, prune, details, recipes, kd_loss=kl_to_teacher):
    """Prune a fresh copy on each calibration slice, evaluate it (and after each recovery recipe).

    prune(calib_batches, k) -> (model, seconds to prune, handle); details(model, handle) -> extra fields kept
    with each run; recipes: {mode: recipe} (`recovery_modes`). Finished runs are cached per tool, so an
    interrupted script resumes. Returns the dense accuracy, the modes, the runs per mode and (model, handle)
    of slice 0 (for latency and reload checks).
    """
    cache = RunCache(tool)
    dense_acc = cache.get("dense") or accuracy(dense, val_b)
    cache.put("dense", dense_acc)
    log(f"dense accuracy {dense_acc:.4f}")
    dense_flops = count_flops(dense)
    modes = ["retrain-free", *recipes]
    runs = {m: [] for m in modes}
    kept = None
    for k in range(SLICES):
        need = [m for m in modes if cache.get(f"{m}|{k}") is None]
        if need or kept is None:
            model, secs, handle = prune(calib_batches(train, k), k)
            common = {"seconds_to_prune": secs, "flops_reduction": 1 - count_flops(model) / dense_flops,
                      **details(model, handle)}
            kept = (model, handle) if k == 0 else kept
            if "retrain-free" in need:
                cache.put(f"retrain-free|{k}", {"accuracy": accuracy(model, val_b), **common})
            for mode in (m for m in need if m in recipes):
                t0 = time.time()
                teacher = dense if recipes[mode]["distill"] else None
                rec, losses = recover(copy.deepcopy(model), train, recipes[mode], teacher, kd_loss)
                cache.put(f"{mode}|{k}", {"accuracy": accuracy(rec, val_b), "seconds_training": time.time() - t0,
                                          **losses, **common})
                log(f"{method} {mode} slice {k}: acc {cache.get(f'{mode}|{k}')['accuracy']:.4f} "
                    f"({time.time() - t0:.0f} s)")
        for m in modes:
            r = cache.get(f"{m}|{k}")
            runs[m].append(r)
            log(f"{method} {m} slice {k}: acc {r['accuracy']:.4f} prune {r['seconds_to_prune']:.1f}s "
                f"FLOPs -{r['flops_reduction']:.3f}" + (f" shapes {r['shapes'][0]}" if "shapes" in r else ""))
    return dense_acc, modes, runs, kept


def latency_fields(lat, note):
    """The row fields of a `latency_ratios` result."""
    return {"latency_ratio_b8": lat["b8"]["ratio"], "latency_ratio_b1": lat["b1"]["ratio"],
            "latency_ideal_ratio_seq128": lat["ideal_ratio_seq128"], "latency_ms": {k: lat[k] for k in ("b8", "b1")},
            "latency_note": note}


def finish(method, modes, runs, dense_acc, extra, train, val_b, recipes):
    """Summarise the runs into rows (recovery rows with the dense model's score after the same recipe), merge
    them into the results file and print them."""
    rows = [summarize(method, m, runs[m], dense_acc, extra, recipes) for m in modes]
    for r in rows:
        if r["mode"] in recipes:
            r["dense_metric_after_same_recovery"] = recovery_control(train, val_b, recipes[r["mode"]])
    write_rows(rows)
    for r in rows:
        log(f"{r['method']} {r['mode']}: {r['metric']:.4f} +- {r['metric_se']:.4f} (se)")


def write_rows(rows):
    """Merge rows into results.json (key: method, mode), atomically."""
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": []}
    keys = {(r["method"], r["mode"]) for r in rows}
    data["rows"] = [r for r in data["rows"] if (r["method"], r["mode"]) not in keys] + rows
    data["rows"].sort(key=lambda r: (r["method"], r["mode"]))
    data["machine"] = machine()
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, RESULTS)


class RunCache:
    """Per-tool cache of finished runs (accuracy per slice), so an interrupted script resumes."""

    def __init__(self, name):
        self.path = CACHE / f"runs-{name}.json"
        self.runs = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key):
        return self.runs.get(key)

    def put(self, key, value):
        self.runs[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.runs, indent=2))
        os.replace(tmp, self.path)


def guarded(fn, *args):
    """Run fn, returning (result, None) or (None, traceback text)."""
    try:
        return fn(*args), None
    except Exception:  # noqa: BLE001
        return None, traceback.format_exc()


def log(msg):
    print(msg, flush=True)
    sys.stdout.flush()
