"""Healing a pruned causal LM with a few training steps: distillation, fine-tuning, LoRA, or gradual pruning.

- distill: `DistillationTrainer` (hf_prune.training.distillation) with the dense model as teacher. On causal LM
  logits (B, T, V) its loss is (1 - alpha) * LM loss + alpha * T^2 * KL(teacher || student) at every position
  where attention_mask is 1: teacher and student logits at one position both predict the same next token, so
  the KL needs no shift (the LM loss shifts the labels inside the model), and padding is masked out.
- full: plain fine-tuning (`PruningTrainer`, a Trainer).
- lora: peft adapters on every linear layer of the blocks, merged into the weights at the end, so the result
  is a plain (pruned) model again. peft is imported only here.
- gradual: no retrain-free step; `HeadPruningCallback` prunes while fine-tuning (the GLUE command line's schedule
  defaults: events from 10% to 60% of --max_steps).

`PerplexityCallback` records (step, perplexity) on the validation windows at step 0, every `eval_steps` steps and
at the end; `perplexity_png` draws them.
"""

from __future__ import annotations

from transformers import TrainerCallback

from .lm_data import WindowDataset, perplexity


def eval_interval(training_args) -> int:
    """Steps between perplexity evaluations: --eval_steps (a fraction of --max_steps when < 1), default max_steps / 10."""
    steps = training_args.eval_steps
    max_steps = max(1, training_args.max_steps)
    if steps is None:
        return max(1, max_steps // 10)
    if steps < 1:
        return max(1, round(steps * max_steps))
    return int(steps)


class PerplexityCallback(TrainerCallback):
    """Validation perplexity at step 0, every `every` steps and at the last step: `history` = [(step, ppl), ...]."""

    def __init__(self, batches: list[dict], every: int):
        self.batches, self.every, self.history = batches, every, []

    def _record(self, step: int, model) -> None:
        if not self.history or self.history[-1][0] != step:
            self.history.append((step, perplexity(model, self.batches)))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._record(state.global_step, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._record(state.global_step, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._record(state.global_step, model)


def lora_wrap(model, r: int, alpha: int):
    """The model with LoRA adapters on every linear layer of its blocks (peft), only the adapters trainable."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("--healing lora needs the peft package, which is not installed: pip install peft") from None
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear", lora_dropout=0.0,
                                            task_type="CAUSAL_LM"))


def heal(model, dense, mode: str, train_windows, eval_batches, training_args, lm_args, config, calibration,
         seed: int) -> tuple:
    """Train `model` for --max_steps in `mode`; returns (model, perplexity history, gradual schedule or None)."""
    from ..training.distillation import DistillationTrainer
    from ..training.reporting import PruningTrainer
    from .app import fine_tuning_schedule, make_callback

    train_set = WindowDataset(train_windows)
    tracker = PerplexityCallback(eval_batches, eval_interval(training_args))
    callbacks, trainer_class, extra, schedule = [], PruningTrainer, {}, None
    if mode == "gradual":
        config = fine_tuning_schedule(config, training_args, len(train_set))
        config = config.replace(calibration_batches=len(calibration))
        callbacks.append(make_callback(config, calibration, seed))
        schedule = {"start_step": config.pruning_start_step, "end_step": config.pruning_end_step,
                    "num_events": config.pruning_events, "schedule": config.pruning_schedule,
                    "config": config.to_dict()}
    elif mode == "distill":
        trainer_class = DistillationTrainer
        extra = {"teacher": dense, "alpha": lm_args.distill_alpha, "temperature": lm_args.distill_temperature}
    elif mode == "lora":
        model = lora_wrap(model, lm_args.lora_r, lm_args.lora_alpha)
    callbacks.append(tracker)  # after the pruning callback: a step's perplexity is that of the pruned model
    trainer = trainer_class(model=model, args=training_args, train_dataset=train_set, callbacks=callbacks, **extra)
    trainer.train()
    model = trainer.model
    if mode == "lora":
        model = model.merge_and_unload()
    return model.eval(), tracker.history, schedule


def perplexity_png(history: list, dense_perplexity: float, title: str) -> bytes:
    """Validation perplexity over the healing steps, with the dense model's as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import figure_png

    fig, ax = plt.subplots(figsize=(6, 4))
    steps, values = zip(*history)
    ax.plot(steps, values, "-o", ms=3, label="pruned")
    ax.axhline(dense_perplexity, color="k", ls="--", lw=0.8, label=f"dense ({dense_perplexity:.2f})")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation perplexity")
    if max(values) / max(min(values), 1e-9) > 20:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return figure_png(fig)
