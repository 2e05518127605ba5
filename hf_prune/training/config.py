"""`PruningConfig`: the one description of a pruning run, shared by `HeadPruningCallback`, the command line
(parsed by `HfArgumentParser`, field names are the flag names) and Trainer checkpoints (JSON round-trip).

Every field has help text (shown by `--help`) and one validation, `PruningConfig.validate()`, run on
construction: the callback, the command line and a reloaded checkpoint reject the same inputs with the same
message. Fractions removed (sparsities, FLOPs reduction) are in [0, 1) everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..importance.estimators import GRADIENT_METHODS, METHODS
from ..importance.layers import LAYER_METHODS
from ..planning.budgets import STRUCTURES
from ..serialization.json_file import JsonFile

SCHEDULES = ("cubic", "linear")
SCOPES = ("global", "layer")
GQA_MODES = ("per_group", "groups")
RECONSTRUCT = ("weights", "scales")
RECOVERY_INPUTS = ("dense", "sequential")
COMPACT = ("auto", "always", "never")
LATENCY_MODES = ("auto", "forward", "decode")


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class PruningConfig(JsonFile):
    """What to prune, how to score it, when to cut, and how to recover: the options of a pruning run."""

    # --- targets
    head_sparsity: float = field(default=0.0, metadata=_help(
        "fraction of the dense model's attention heads to remove, in [0, 1)"))
    ffn_sparsity: float = field(default=0.0, metadata=_help(
        "fraction of the dense model's FFN neurons to remove, in [0, 1)"))
    flops_reduction: float | None = field(default=None, metadata=_help(
        "fraction of the dense layers' FLOPs to remove, in [0, 1), heads and neurons chosen jointly; FLOPs are "
        "counted for one sequence of flops_seq_len tokens (default: --max_seq_length on the command line, 128 in "
        "the callback). Give this or head_sparsity/ffn_sparsity, not both"))
    params_reduction: float | None = field(default=None, metadata=_help(
        "fraction of the dense layers' parameters to remove, in [0, 1), heads and neurons chosen jointly (the "
        "LLM-pruning convention: hf_prune.plan_from_params). Give one budget: this, flops_reduction, "
        "latency_reduction or head_sparsity/ffn_sparsity"))
    layer_sparsity: float = field(default=0.0, metadata=_help(
        "fraction of the dense model's transformer layers to remove whole, in [0, 1); rounded to a count, at least "
        "one layer remains. Width targets then apply to the remaining layers"))
    num_layers_to_remove: int = field(default=0, metadata=_help(
        "number of the dense model's transformer layers to remove whole (instead of layer_sparsity)"))
    latency_reduction: float | None = field(default=None, metadata=_help(
        "command line --retrain_free: fraction of the dense model's latency to remove, in [0, 1), measured on this "
        "machine (a latency table of the model at a few widths, --latency_mode) and planned to by predicted latency. "
        "Give this, flops_reduction or head_sparsity/ffn_sparsity"))
    latency_mode: str = field(default="auto", metadata=_help(
        "what latency_reduction times (command line: at --latency_batch_size sequences): decode (one new token per "
        "sequence with a KV cache of flops_seq_len tokens), forward (one pass over flops_seq_len tokens), or auto "
        "(decode for causal LMs, forward otherwise)",
        choices=list(LATENCY_MODES)))
    structure: str = field(default="width", metadata=_help(
        "command line --retrain_free: how a flops_reduction or latency_reduction budget is met: heads and FFN "
        "neurons (width), whole layers (depth, lowest layer_importance first) or both (joint: layers and units "
        "compared on one loss scale, so it needs --importance fisher; layers are scored with fisher)",
        choices=list(STRUCTURES)))
    unstructured_sparsity: float = field(default=0.0, metadata=_help(
        "also zero this fraction of the attention/FFN projection weights by magnitude (unstructured), in [0, 1)"))
    unstructured_scope: str = field(default="global", metadata=_help(
        "unstructured threshold: one over all projections (global) or per matrix (layer)", choices=list(SCOPES)))
    # --- importance
    importance: str = field(default="fisher", metadata=_help(
        "how units are scored: gradient, fisher, taylor (loss gradients), l1, l2 (weight norms), activation, random",
        choices=list(METHODS)))
    layer_importance: str = field(default="block_influence", metadata=_help(
        "how whole layers are scored, on calibration batches: block_influence (1 - cos of a layer's input and "
        "output), angular, loss (calibration loss with the layer skipped), fisher (gradient of a residual gate)",
        choices=list(LAYER_METHODS)))
    label_free: bool = field(default=False, metadata=_help(
        "score with the model's own predictions as targets instead of the labels"))
    calibration_samples: int = field(default=256, metadata=_help(
        "command line: training examples used for scoring and, with --retrain_free, for recovery statistics"))
    calibration_batches: int = field(default=8, metadata=_help(
        "callback: batches of its calibration_dataloader scored at each event (non-training-gradient methods)"))
    # --- schedule (fine-tuning)
    pruning_start_step: int | None = field(default=None, metadata=_help(
        "step of the first pruning event (default: 10%% of the training steps on the command line, 0 in the callback)"))
    pruning_end_step: int | None = field(default=None, metadata=_help(
        "step of the last pruning event (default: 60%% of the training steps on the command line; the callback "
        "needs it when pruning_events > 1)"))
    pruning_events: int | None = field(default=None, metadata=_help(
        "number of pruning events from pruning_start_step to pruning_end_step (default: 4 on the command line when "
        "the schedule spans steps, else 1; 1 in the callback)"))
    pruning_schedule: str = field(default="cubic", metadata=_help(
        "how the removed fraction grows over the events: cubic (fast first) or linear", choices=list(SCHEDULES)))
    compact: str = field(default="auto", metadata=_help(
        "fine-tuning: auto compacts the model physically at each event in single-process training with a torch "
        "optimizer and keeps zero gates otherwise (DDP/FSDP); always / never force one of the two",
        choices=list(COMPACT)))
    # --- where and how much per layer
    pruning_scope: str = field(default="global", metadata=_help(
        "sparsity budgets: rank units across all layers (global) or remove the fraction from every layer (layer)",
        choices=list(SCOPES)))
    min_heads_per_layer: int = field(default=0, metadata=_help("attention heads every layer keeps at least"))
    min_neurons_per_layer: int = field(default=0, metadata=_help("FFN neurons every layer keeps at least"))
    head_multiple: int = field(default=1, metadata=_help("kept heads per layer are a multiple of this"))
    neuron_multiple: int = field(default=1, metadata=_help(
        "kept FFN neurons per layer are a multiple of this (e.g. 64 for tensor-core friendly shapes)"))
    gqa: str = field(default="per_group", metadata=_help(
        "grouped-query attention: remove the same number of query heads from every key/value group (per_group), or "
        "whole key/value groups (groups)", choices=list(GQA_MODES)))
    uniform: bool = field(default=False, metadata=_help(
        "every remaining layer keeps the same number of heads, key/value heads and FFN neurons (its own best ones), "
        "so a plain transformers config, vLLM, TGI or llama.cpp can load the result (BERT-style models: only FFN "
        "widths and layer counts; head counts need hf_prune.load_pruned); budgets are met at the first uniform "
        "width at or past them"))
    flops_seq_len: int | None = field(default=None, metadata=_help(
        "sequence length at which flops_reduction counts FLOPs (default: --max_seq_length on the command line, "
        "128 in the callback)"))
    # --- retrain-free recovery (command line --retrain_free)
    retrain_free: bool = field(default=False, metadata=_help(
        "score, plan and recover by least squares on calibration data, without training"))
    mask_tuning: bool = field(default=True, metadata=_help(
        "with --retrain_free: least-squares recovery of each layer's output (--no_mask_tuning: just cut)"))
    reconstruct: str = field(default="weights", metadata=_help(
        "what recovery re-solves: the kept projection weights and bias (weights), or one scale per kept unit (scales)",
        choices=list(RECONSTRUCT)))
    recovery_inputs: str | None = field(default=None, metadata=_help(
        "with --retrain_free: the hidden states each layer is recovered on, the dense model's (dense: the one-pass "
        "result) or those of the already-pruned earlier layers (sequential, as SparseGPT). Default: sequential in "
        "hf-prune-lm (lower perplexity on SmolLM2 in benchmarks/RESULTS.md), dense in hf-prune-heads",
        choices=list(RECOVERY_INPUTS)))
    reselect: bool = field(default=True, metadata=_help(
        "with --retrain_free weight recovery: keep the plan's per-layer counts but re-choose the units the rest "
        "rebuild best (greedy OBS; --no_reselect keeps the scores' choice)"))

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """One ValueError naming the first bad field and what it accepts."""
        budgets = ("flops_reduction", "latency_reduction", "params_reduction")
        for name in ("head_sparsity", "ffn_sparsity", "unstructured_sparsity", *budgets):
            value = getattr(self, name)
            if value is None and name in budgets:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
        if self.flops_reduction is not None and (self.head_sparsity or self.ffn_sparsity):
            raise ValueError("give flops_reduction or head_sparsity/ffn_sparsity, not both")
        if self.latency_reduction is not None and (self.head_sparsity or self.ffn_sparsity
                                                   or self.flops_reduction is not None):
            raise ValueError("give latency_reduction, flops_reduction or head_sparsity/ffn_sparsity, only one")
        if self.params_reduction is not None and (self.head_sparsity or self.ffn_sparsity or any(
                getattr(self, name) is not None for name in ("flops_reduction", "latency_reduction"))):
            raise ValueError("give params_reduction, latency_reduction, flops_reduction or head_sparsity/ffn_sparsity, "
                             "only one")
        self._validate_layers()
        self._validate_structure()
        if not isinstance(self.uniform, bool):
            raise ValueError(f"uniform must be true or false, got {self.uniform!r}")
        for name, allowed in (("importance", METHODS), ("layer_importance", LAYER_METHODS),
                              ("pruning_schedule", SCHEDULES), ("pruning_scope", SCOPES),
                              ("unstructured_scope", SCOPES), ("gqa", GQA_MODES), ("reconstruct", RECONSTRUCT),
                              ("recovery_inputs", (*RECOVERY_INPUTS, None)),
                              ("compact", COMPACT), ("latency_mode", LATENCY_MODES), ("structure", STRUCTURES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name, low in (("min_heads_per_layer", 0), ("min_neurons_per_layer", 0), ("head_multiple", 1),
                          ("neuron_multiple", 1), ("calibration_samples", 1), ("calibration_batches", 1),
                          ("pruning_start_step", 0), ("pruning_end_step", 0), ("pruning_events", 1),
                          ("flops_seq_len", 1)):
            value = getattr(self, name)
            if value is None and name.startswith(("pruning_", "flops_")):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        start, end = self.pruning_start_step, self.pruning_end_step
        if start is not None and end is not None and end < start:
            raise ValueError(f"pruning_end_step ({end}) must be >= pruning_start_step ({start})")

    def _validate_layers(self) -> None:
        value = self.layer_sparsity
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"layer_sparsity must be a number in [0, 1), got {value!r}")
        count = self.num_layers_to_remove
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"num_layers_to_remove must be an integer >= 0, got {count!r}")
        if value and count:
            raise ValueError("give layer_sparsity or num_layers_to_remove, not both")

    def _validate_structure(self) -> None:
        if self.structure not in STRUCTURES or self.structure == "width":
            return  # an unknown value is reported with the other choices
        budget = self.budget is not None
        if not budget:
            raise ValueError(f"structure={self.structure!r} chooses layers to meet a flops_reduction, "
                             "params_reduction or latency_reduction budget: give one of them")
        if self.removes_layers:
            raise ValueError(f"structure={self.structure!r} chooses the layers itself: drop layer_sparsity / "
                             "num_layers_to_remove, or use structure='width' with them")
        if self.structure == "joint" and self.importance != "fisher":
            raise ValueError("structure='joint' weighs layers against heads and neurons on one loss scale: use "
                             f"importance='fisher' (got {self.importance!r})")

    # ------------------------------------------------------------------ what the run does

    @property
    def plans_layers(self) -> bool:
        """Does the budget's planner choose whole layers (structure depth or joint)?"""
        return self.structure != "width"

    @property
    def layer_method(self) -> str:
        """The layer importance the run uses: fisher for joint plans (the units' scale), else layer_importance."""
        return "fisher" if self.structure == "joint" else self.layer_importance

    @property
    def removes_layers(self) -> bool:
        """Are whole transformer layers removed?"""
        return bool(self.layer_sparsity or self.num_layers_to_remove)

    def layers_to_remove(self, dense_layers: int) -> int:
        """How many of the dense model's `dense_layers` layers the run removes in all (at least one remains)."""
        count = self.num_layers_to_remove or math.floor(self.layer_sparsity * dense_layers + 0.5)
        if count >= dense_layers:
            raise ValueError(f"cannot remove {count} of the model's {dense_layers} layers: at least one must remain "
                             f"(lower layer_sparsity or num_layers_to_remove)")
        return count

    @property
    def structured(self) -> bool:
        """Are heads, FFN neurons or whole layers removed (or only individual weights)?"""
        return self.prunes_widths or self.removes_layers

    @property
    def prunes_widths(self) -> bool:
        """Are heads or FFN neurons removed (or layers chosen by a budget's planner)?"""
        return bool(self.head_sparsity or self.ffn_sparsity or self.budget is not None)

    @property
    def budget(self) -> str | None:
        """Which joint budget is set: "flops_reduction", "params_reduction", "latency_reduction" or None."""
        for name in ("flops_reduction", "params_reduction", "latency_reduction"):
            if getattr(self, name) is not None:
                return name
        return None

    @property
    def from_training_gradients(self) -> bool:
        """Can the callback accumulate the scores from the training steps' own gradients?"""
        return self.importance in GRADIENT_METHODS

    def stack_conflicts(self, as_flags: bool = False) -> list[str]:
        """The options set that are not supported on models with several layer stacks yet, by field name, or by
        the command line's flag name when `as_flags`."""
        return [flag if as_flags else name for name, flag, given in (
            ("uniform=True", "--uniform", self.uniform),
            ("layer removal (layer_sparsity / num_layers_to_remove, scored by layer_importance)",
             "--layer_sparsity / --num_layers_to_remove", self.removes_layers),
            ("latency_reduction", "--latency_reduction", self.latency_reduction is not None),
            (f"structure={self.structure!r}", "--structure depth or joint", self.plans_layers),
            ("unstructured_sparsity", "--unstructured_sparsity", bool(self.unstructured_sparsity)),
        ) if given]

    def plan_constraints(self) -> dict:
        """The keyword arguments the `plan_from_*` planners take for this config's constraints."""
        return {"min_heads": self.min_heads_per_layer, "min_neurons": self.min_neurons_per_layer,
                "head_multiple": self.head_multiple, "neuron_multiple": self.neuron_multiple, "gqa": self.gqa,
                "uniform": self.uniform}

    def replace(self, **changes) -> PruningConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PruningConfig:
        """Build from a dict; unknown keys raise ValueError naming them and the valid ones."""
        if not isinstance(data, dict):
            raise ValueError(f"a pruning config is a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown pruning config keys {unknown}; valid keys: {', '.join(sorted(names))}")
        return cls(**data)


# The callback's keyword names before PruningConfig existed, and the config fields they set.
CALLBACK_ALIASES = {
    "start_step": "pruning_start_step",
    "end_step": "pruning_end_step",
    "num_events": "pruning_events",
    "schedule": "pruning_schedule",
    "scope": "pruning_scope",
    "min_heads": "min_heads_per_layer",
    "min_neurons": "min_neurons_per_layer",
    "seq_len": "flops_seq_len",
}


def config_from_keywords(config: PruningConfig | None = None, **keywords) -> PruningConfig:
    """A config from an optional base and keyword overrides, accepting the callback's historical names.

    `compact=True` / `False` (the old spelling) mean "always" / "never".
    """
    changes = {}
    for key, value in keywords.items():
        name = CALLBACK_ALIASES.get(key, key)
        if name in changes:
            raise ValueError(f"{key!r} and {name!r} set the same option: give one")
        if name == "compact" and isinstance(value, bool):
            value = "always" if value else "never"
        changes[name] = value
    names = {f.name for f in dataclasses.fields(PruningConfig)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise TypeError(f"unknown pruning option(s) {unknown}; see hf_prune.PruningConfig for the valid names")
    base = config if config is not None else PruningConfig()
    return base.replace(**changes) if changes else base
