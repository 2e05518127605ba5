"""Export SmolLM2-135M and the WikiText-2 windows of benchmarks/bench_perplexity.py for the peer venvs.

Run with the project's venv (it has hf_prune, its offline assets and transformers 5):

    .venv/bin/python benchmarks/peers/export_smollm2.py

Writes (idempotent: skipped when both outputs exist; --force rewrites them):
  .cache/smollm2/             the model (`hf_prune_assets.load_smollm2()`, a plain float32 LlamaForCausalLM)
                              saved with save_pretrained (safetensors) + the tokenizer, by transformers 5
  .cache/smollm2-v4/          the same files (symlinks) with config.json rewritten for transformers 4.x where a key differs
                              (transformers 5 writes `rope_parameters`; 4.57 reads `rope_theta`/`rope_scaling`)
  .cache/smollm2_windows.json the token windows exactly as bench_perplexity.py builds them
                              (`windows(wikitext2("test"), tok, 8)` and `windows(wikitext2("train"), tok, 12)`,
                              calibration slice k = train windows [4k, 4k+4)), and the dense perplexity on the
                              8 test windows computed here (bench_perplexity.perplexity, batch 2)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = HERE / ".cache"
MODEL_DIR = CACHE / "smollm2"
MODEL_V4_DIR = CACHE / "smollm2-v4"
WINDOWS = CACHE / "smollm2_windows.json"
EVAL_WINDOWS, CALIB_WINDOWS, SLICES = 8, 4, 3

sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))


def v4_config(config: dict) -> dict:
    """A copy of a transformers-5 LlamaConfig dict that transformers 4.57 reads with the same meaning."""
    out = dict(config)
    rope = out.pop("rope_parameters", None)
    if rope is not None:
        rope = dict(rope)
        theta = rope.pop("rope_theta", None)
        if theta is not None:
            out["rope_theta"] = theta
        if rope.get("rope_type", "default") != "default" or len(rope) > 1:
            out["rope_scaling"] = rope  # non-default RoPE: 4.x keeps the type and its factors here
        else:
            out.setdefault("rope_scaling", None)
    return out


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    if not args.force and (MODEL_V4_DIR / "config.json").exists() and WINDOWS.exists():
        print(f"[export_smollm2] ready ({MODEL_DIR}, {WINDOWS})")
        return
    torch.set_num_threads(2)
    import transformers
    from bench_perplexity import as_batches, perplexity, windows

    from hf_prune_assets import load_smollm2, wikitext2

    t0 = time.time()
    model, tokenizer = load_smollm2()  # already a fresh LlamaForCausalLM without quantization_config
    tmp = MODEL_DIR.with_name(MODEL_DIR.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(MODEL_DIR, ignore_errors=True)
    os.replace(tmp, MODEL_DIR)
    config = json.loads((MODEL_DIR / "config.json").read_text())
    fixed = v4_config(config)
    tmp4 = MODEL_V4_DIR.with_name(MODEL_V4_DIR.name + ".tmp")
    shutil.rmtree(tmp4, ignore_errors=True)
    tmp4.mkdir(parents=True)
    for f in MODEL_DIR.iterdir():  # the weights and tokenizer are shared (relative symlinks), only config differs
        if f.name != "config.json":
            (tmp4 / f.name).symlink_to(Path("..") / MODEL_DIR.name / f.name)
    (tmp4 / "config.json").write_text(json.dumps(fixed, indent=2) + "\n")
    shutil.rmtree(MODEL_V4_DIR, ignore_errors=True)
    os.replace(tmp4, MODEL_V4_DIR)
    print(f"[export_smollm2] saved {MODEL_DIR} and {MODEL_V4_DIR} ({time.time() - t0:.0f} s); "
          f"v4 config changes: {_diff(config, fixed)}")

    test = windows(wikitext2("test"), tokenizer, EVAL_WINDOWS)
    train = windows(wikitext2("train"), tokenizer, SLICES * CALIB_WINDOWS)
    t0 = time.time()
    dense_ppl = perplexity(model, as_batches(test, 2))
    print(f"[export_smollm2] dense perplexity {dense_ppl:.4f} on {EVAL_WINDOWS} test windows ({time.time() - t0:.0f} s)")
    data = {
        "eval": [w.tolist() for w in test], "calib": [w.tolist() for w in train],
        "window": len(test[0]), "calib_windows_per_slice": CALIB_WINDOWS, "slices": SLICES,
        "dense_perplexity": dense_ppl,
        "dense_perplexity_by": f"bench_perplexity.perplexity, batch 2, transformers {transformers.__version__}, "
                               f"torch {torch.__version__}, float32, default attention",
        "source": "bench_perplexity.windows(wikitext2('test'), tok, 8) / windows(wikitext2('train'), tok, 12)",
    }
    tmpw = WINDOWS.with_suffix(".tmp")
    tmpw.write_text(json.dumps(data))
    os.replace(tmpw, WINDOWS)
    print(f"[export_smollm2] wrote {WINDOWS}")


def _diff(a: dict, b: dict) -> dict:
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


if __name__ == "__main__":
    main()
