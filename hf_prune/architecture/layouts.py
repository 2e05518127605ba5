"""Per-architecture layout table: the only place in hf_prune that knows architecture names.

A layout says, for one family of models, where the transformer layers are, what the attention and
feed-forward projections are called, which module attributes and config keys carry head counts and
widths, and the family's quirks (fused projections such as GPT-2's Conv1D c_attn or Phi-3's qkv_proj and
gate_up_proj, grouped-query attention in llama-style decoders, extra per-head projections such as DeBERTa-v2's
relative-position pos_key_proj / pos_query_proj). Everything else in the package works on a
`Layout`; fused projections are described by `hf_prune.architecture.fused.Fused` entries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from .fused import ATTENTION_PARTS, FFN_PARTS, Fused
from .unsupported import refuse_unsupported


@dataclass(frozen=True)
class SharedBias:
    """A per-head additive attention bias computed once and handed from layer to layer (T5's position bias).

    Layer 0 builds it with its own head count and every later layer adds it to its scores, so once heads are
    removed layer by layer the shapes and the columns no longer match. Surgery then gives every layer its own
    bias: it copies layer 0's table (`Layout.head_bias`) into each layer, sets `flag` on each attention module
    (T5's `has_relative_attention_bias`) and drops the `argument` each attention receives from the previous
    layer, so each computes the bias of its own remaining heads (`hf_prune.surgery.width.own_head_bias`).
    flag None: the bias has no table (T5's cross-attention hands on zeros); only the argument is dropped.
    """

    argument: str
    flag: str | None = None


@dataclass(frozen=True)
class PositionFlops:
    """Per-head work of relative-position attention (DeBERTa's disentangled attention), for FLOPs counts.

    Each layer projects `rows` relative-position embeddings into every head `projections` times (once per forward,
    whatever the batch) and scores every token against them `scores` times (c2p, p2c), so one head costs
    2 * rows * hidden * head_dim * projections + 2 * tokens * rows * head_dim * scores more.
    """

    projections: int = 0
    scores: int = 0
    rows: int = 0


@dataclass(frozen=True)
class Layout:
    """Where one architecture family keeps its prunable pieces (paths are dotted attribute names)."""

    family: str
    layers: str  # from the base model to the nn.ModuleList of layers
    attention: str  # from a layer to the module that owns head counts; gets an empty forward at 0 heads
    attention_includes_output: bool  # does `attention`'s forward apply the output projection itself?
    q: str | None  # from a layer; separate q/k/v projections, None when a `fused` entry holds them (see `qkv`)
    k: str | None
    v: str | None
    o: str  # output projection: its input columns are grouped by head
    up: str | None  # module holding the FFN up projection (its rows are the neurons); filled in from `fused`
    down: str  # FFN down projection: its input columns are the neurons
    gate: str | None = None  # separate GLU gate projection (llama-style SwiGLU); `gated` covers fused gates too
    fused: tuple[Fused, ...] = ()  # modules holding several of q/k/v or gate/up, and their row layout
    conv1d: bool = False  # GPT-2's Conv1D stores weights as (in, out)
    ffn: str | None = None  # FFN module that needs an empty forward at 0 neurons (Conv1D cannot take width 0)
    head_dim_attr: str = "head_dim"  # attribute of `attention` with the per-head size
    head_count_attrs: tuple[str, ...] = ()  # attributes of `attention` that hold the query head count
    kv_head_count_attrs: tuple[str, ...] = ()  # attributes of `attention` that hold the key/value head count
    width_attrs: tuple[str, ...] = ()  # attributes of `attention` that hold heads * head_dim
    kv_groups_attr: str | None = None  # attribute of `attention` with query heads per key/value head
    attention_config_heads: str | None = None  # config key `attention` reads for its query head count at forward
    # time (Phi-3 splits qkv_proj at config.num_attention_heads * head_dim): a pruned layer gets its own view
    config_heads: str = "num_attention_heads"
    config_kv_heads: str | None = None  # GQA only
    config_ffn: str = "intermediate_size"
    config_head_dim: str | None = None  # when the config carries head_dim, head counts can be written plainly
    config_layers: str = "num_hidden_layers"  # config key with the number of layers
    inverse_index_scaling: str | None = None  # config flag: `attention.scaling` is divided by (layer_idx + 1)
    first_layer_differs: str | None = None  # module that layer 0 builds differently (ModernBERT: attn_norm is an
    # Identity there): removing layer 0 is refused, as a model built from the config would not rebuild its successor
    attention_outputs: int = 2  # values `attention`'s forward returns (T5: output, position bias, weights)
    head_bias: str | None = None  # from a layer: an embedding with one column per query head (T5's relative
    # position bias table), sliced with the heads where the layer has one
    shared_bias: SharedBias | None = None  # a per-head bias that one layer computes and the next layers reuse
    position_flops: Callable[[object], PositionFlops] | None = None  # config -> per-head relative-position work
    head_rows: tuple[str, ...] = ()  # from a layer: more projections whose output rows are grouped by query head like
    # q's (DeBERTa-v2's pos_key_proj); sliced with the kept heads where the layer has them (the config may not build them)

    def __post_init__(self):
        """Fill `up` from a fused gate/up entry, and refuse a table line that contradicts itself."""
        for fused in self.fused:
            for part in fused.parts:
                separate = getattr(self, part)
                if part == "up" and separate in (None, fused.path):
                    object.__setattr__(self, "up", fused.path)  # frozen dataclass: filled once, at construction
                elif separate is not None:
                    raise ValueError(f"layout {self.family!r}: {part} is both {separate!r} and in {fused}")
            if fused.interleaved and self.grouped and set(fused.parts) & {"k", "v"}:
                raise ValueError(f"layout {self.family!r}: interleaved {fused.path} cannot hold grouped key/value heads")
        missing = [part for part in (*ATTENTION_PARTS, "up") if self.path_of(part) is None]
        if missing:
            raise ValueError(f"layout {self.family!r}: no module holds {', '.join(missing)}")

    def holder(self, part: str) -> Fused | None:
        """The fused entry holding logical projection `part` ("q", "k", "v", "gate", "up"), or None when separate."""
        return next((fused for fused in self.fused if part in fused.parts), None)

    def path_of(self, part: str) -> str | None:
        """Path of the module holding logical projection `part`, fused or separate (None: the layout has none)."""
        fused = self.holder(part)
        return fused.path if fused else getattr(self, part)

    def head_rows_in(self, layer: nn.Module) -> list[str]:
        """The `head_rows` projections this layer actually has (a config may leave some out)."""
        return [path for path in self.head_rows if find_submodule(layer, path) is not None]

    @property
    def qkv(self) -> str | None:
        """Path of the fused module holding the query projection (GPT-2's c_attn), None when q is separate."""
        fused = self.holder("q")
        return fused.path if fused else None

    @property
    def gated(self) -> bool:
        """True for a GLU feed-forward block (a gate projection, separate or fused with up)."""
        return self.path_of("gate") is not None

    @property
    def grouped(self) -> bool:
        """True for grouped-query attention layouts (heads are removed per key/value group)."""
        return self.config_kv_heads is not None


BERT = Layout(
    family="bert",
    layers="encoder.layer",
    attention="attention.self",
    attention_includes_output=False,
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    o="attention.output.dense",
    up="intermediate.dense",
    down="output.dense",
    head_dim_attr="attention_head_size",
    head_count_attrs=("num_attention_heads",),
    width_attrs=("all_head_size",),
)

DISTILBERT = Layout(
    family="distilbert",
    layers="transformer.layer",
    attention="attention",
    attention_includes_output=True,
    q="attention.q_lin",
    k="attention.k_lin",
    v="attention.v_lin",
    o="attention.out_lin",
    up="ffn.lin1",
    down="ffn.lin2",
    head_dim_attr="attention_head_size",
    head_count_attrs=("n_heads",),
    config_heads="n_heads",
    config_ffn="hidden_dim",
    config_layers="n_layers",
)

GPT2 = Layout(
    family="gpt2",
    layers="h",
    attention="attn",
    attention_includes_output=True,
    q=None,
    k=None,
    v=None,
    o="attn.c_proj",
    up="mlp.c_fc",
    down="mlp.c_proj",
    fused=(Fused("attn.c_attn", ATTENTION_PARTS),),  # c_attn's output features: [q | k | v]
    conv1d=True,
    ffn="mlp",
    head_dim_attr="head_dim",
    head_count_attrs=("num_heads",),
    width_attrs=("split_size",),
    config_heads="n_head",
    config_ffn="n_inner",
    config_layers="n_layer",
    inverse_index_scaling="scale_attn_by_inverse_layer_idx",
)

OPT = Layout(
    family="opt",
    layers="decoder.layers",
    attention="self_attn",
    attention_includes_output=True,
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.out_proj",
    up="fc1",
    down="fc2",
    head_count_attrs=("num_heads",),
    config_ffn="ffn_dim",
)

LLAMA = Layout(
    family="llama",
    layers="layers",
    attention="self_attn",
    attention_includes_output=True,
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    up="mlp.up_proj",
    gate="mlp.gate_proj",
    down="mlp.down_proj",
    kv_groups_attr="num_key_value_groups",
    config_kv_heads="num_key_value_heads",
    config_head_dim="head_dim",
)

PHI3 = Layout(
    family="phi3",
    layers="layers",
    attention="self_attn",
    attention_includes_output=True,
    q=None,
    k=None,
    v=None,
    o="self_attn.o_proj",
    up=None,
    down="mlp.down_proj",
    fused=(
        Fused("self_attn.qkv_proj", ATTENTION_PARTS),  # [q (heads * d) | k (kv_heads * d) | v (kv_heads * d)]
        Fused("mlp.gate_up_proj", FFN_PARTS),  # [gate (F) | up (F)]: down(up * act(gate))
    ),
    kv_head_count_attrs=("num_key_value_heads",),
    kv_groups_attr="num_key_value_groups",
    attention_config_heads="num_attention_heads",
    config_kv_heads="num_key_value_heads",
    config_head_dim="head_dim",
)

GPT_NEOX = Layout(
    family="gpt_neox",
    layers="layers",
    attention="attention",
    attention_includes_output=True,
    q=None,
    k=None,
    v=None,
    o="attention.dense",
    up="mlp.dense_h_to_4h",
    down="mlp.dense_4h_to_h",
    fused=(Fused("attention.query_key_value", ATTENTION_PARTS, interleaved=True),),  # per head: [q_h | k_h | v_h]
    head_dim_attr="head_size",
)

MODERNBERT = Layout(
    family="modernbert",
    layers="layers",
    attention="attn",
    attention_includes_output=True,
    q=None,
    k=None,
    v=None,
    o="attn.Wo",
    up=None,
    down="mlp.Wo",
    fused=(
        Fused("attn.Wqkv", ATTENTION_PARTS),  # [q | k | v], each heads * d
        Fused("mlp.Wi", FFN_PARTS),  # [input (F) | gate (F)]: Wo(act(input) * gate), the activated half first
    ),
    first_layer_differs="attn_norm",
)

VIT = Layout(  # vision transformer encoder (image classification): pre-norm layers over patch tokens
    family="vit",
    layers="layers",
    attention="attention",
    attention_includes_output=True,
    q="attention.q_proj",
    k="attention.k_proj",
    v="attention.v_proj",
    o="attention.o_proj",
    up="mlp.fc1",
    down="mlp.fc2",
    head_count_attrs=("num_attention_heads",),
)

GLM = Layout(
    family="glm",
    layers="layers",
    attention="self_attn",
    attention_includes_output=True,
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    up=None,
    down="mlp.down_proj",
    fused=(Fused("mlp.gate_up_proj", FFN_PARTS),),  # llama-style attention, Phi-3's MLP: [gate (F) | up (F)]
    kv_groups_attr="num_key_value_groups",
    config_kv_heads="num_key_value_heads",
    config_head_dim="head_dim",
)

def _deberta_position_flops(config) -> PositionFlops:
    """DeBERTa-v2's relative-position work per head: 2 * span embedding rows; with share_att_key both query_proj
    and key_proj project them, else pos_key_proj ("c2p") and/or pos_query_proj ("p2c"); one score per type."""
    if not getattr(config, "relative_attention", False):
        return PositionFlops()
    types = [t for t in (getattr(config, "pos_att_type", None) or []) if t in ("c2p", "p2c")]
    span = getattr(config, "position_buckets", -1)
    if span is None or span <= 0:
        span = getattr(config, "max_relative_positions", -1)
        if span is None or span < 1:
            span = config.max_position_embeddings
    projections = 2 if getattr(config, "share_att_key", False) and types else len(types)
    return PositionFlops(projections=projections, scores=len(types), rows=2 * span)


DEBERTA_V2 = Layout(  # DeBERTa-v2 and -v3: BERT's block around disentangled (relative-position) attention
    family="deberta-v2",
    layers="encoder.layer",
    attention="attention.self",
    attention_includes_output=False,
    q="attention.self.query_proj",
    k="attention.self.key_proj",
    v="attention.self.value_proj",
    o="attention.output.dense",
    up="intermediate.dense",
    down="output.dense",
    head_dim_attr="attention_head_size",
    head_count_attrs=("num_attention_heads",),
    width_attrs=("all_head_size",),
    # share_att_key=False builds these for "c2p" / "p2c" in pos_att_type; with share_att_key=True (v3) the relative
    # embeddings go through query_proj / key_proj instead. config_head_dim stays None: the attention refuses
    # hidden_size % num_attention_heads != 0, so pruned head counts can never be written as plain config keys
    head_rows=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
    position_flops=_deberta_position_flops,
)

MODERNBERT_DECODER = Layout(
    family="modernbert-decoder",
    layers="layers",
    attention="attn",
    attention_includes_output=True,
    q="attn.q_proj",
    k="attn.k_proj",
    v="attn.v_proj",
    o="attn.Wo",
    up=None,
    down="mlp.Wo",
    fused=(Fused("mlp.Wi", FFN_PARTS),),  # ModernBERT's MLP: [input (F) | gate (F)], the activated half first
    head_count_attrs=("num_heads",),
    width_attrs=("all_head_size",),
    first_layer_differs="attn_norm",
)

# model_type -> layout. Relatives that share their family's module names are one line each.
LAYOUTS: dict[str, Layout] = {
    "bert": BERT,
    "roberta": BERT,
    "xlm-roberta": BERT,
    "camembert": BERT,
    "electra": BERT,
    "data2vec-text": BERT,
    "distilbert": DISTILBERT,
    "deberta-v2": DEBERTA_V2,  # "deberta" (v1) is no relative: one fused in_proj and pos_proj / pos_q_proj
    "gpt2": GPT2,
    "opt": OPT,
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "qwen3": LLAMA,
    "gemma": LLAMA,
    "phi3": PHI3,
    "gpt_neox": GPT_NEOX,
    "modernbert": MODERNBERT,
    "modernbert-decoder": MODERNBERT_DECODER,
    "glm": GLM,
    "glm4": GLM,
    "gemma2": LLAMA,
    "gemma3_text": LLAMA,
    "smollm3": LLAMA,
    "vit": VIT,
    "vit_msn": VIT,
    "granite": LLAMA,
    "olmo": LLAMA,
    "ministral": LLAMA,
    "cohere2": LLAMA,
    "ernie4_5": LLAMA,
    "vaultgemma": LLAMA,
}


# ----------------------------------------------------------------------------- several layer stacks

@dataclass(frozen=True)
class Stack:
    """One layer stack of a multi-stack model type.

    name: its key prefix ("encoder", "decoder", "text", "vision").
    layout: where its layers and projections are (`layout.layers` from the model's base) and its config keys.
    cross: the layout of each layer's cross-attention (attention fields name it; FFN fields are the stack's),
        for decoder stacks of encoder-decoders; None otherwise.
    config: attribute of the model config holding this stack's own config (CLIP's "text_config"), or None when
        the stack reads the model config itself (T5, BART).
    source: the stack whose outputs the cross-attention reads (its token count sets the cross-attention cost).
    mask: the batch key holding this stack's padding mask (a decoder's "decoder_attention_mask"), None when
        every token is real (image patches).
    """

    name: str
    layout: Layout
    cross: Layout | None = None
    config: str | None = None
    source: str | None = None
    mask: str | None = "attention_mask"


def cross_layout(layout: Layout, block: str, q: str, k: str, v: str, o: str, **changes) -> Layout:
    """The layout of a decoder layer's cross-attention: `layout` with its attention fields moved to `block`."""
    return dataclasses.replace(
        layout, attention=block, q=f"{block}.{q}", k=f"{block}.{k}", v=f"{block}.{v}", o=f"{block}.{o}", **changes
    )


def _t5_layout(decoder: bool, gated: bool, shared_bias: bool) -> Layout:
    """One stack of T5 (mT5, UMT5): the FFN sublayer is layer.1 in the encoder, layer.2 in the decoder (after
    cross-attention); a gated FFN (T5 v1.1, Flan-T5) is wo(act(wi_0 x) * wi_1 x)."""
    attention = "layer.0.SelfAttention"
    ffn = f"layer.{2 if decoder else 1}.DenseReluDense"
    return Layout(
        family="t5",
        layers=f"{'decoder' if decoder else 'encoder'}.block",
        attention=attention,
        attention_includes_output=True,
        q=f"{attention}.q",
        k=f"{attention}.k",
        v=f"{attention}.v",
        o=f"{attention}.o",
        up=f"{ffn}.wi_1" if gated else f"{ffn}.wi",
        gate=f"{ffn}.wi_0" if gated else None,
        down=f"{ffn}.wo",
        head_dim_attr="key_value_proj_dim",
        head_count_attrs=("n_heads",),
        width_attrs=("inner_dim",),
        config_heads="num_heads",
        config_ffn="d_ff",
        config_layers="num_decoder_layers" if decoder else "num_layers",
        attention_outputs=3 if shared_bias else 2,  # T5's attention also returns the bias it hands on
        head_bias=f"{attention}.relative_attention_bias",
        # T5: layer 0 owns the table and hands its bias on; UMT5: every layer has its own table
        shared_bias=SharedBias("position_bias", "has_relative_attention_bias") if shared_bias else None,
        first_layer_differs=f"{attention}.relative_attention_bias" if shared_bias else None,
    )


def _t5_stacks(config, shared_bias: bool = True) -> tuple[Stack, ...]:
    gated = bool(getattr(config, "is_gated_act", False))
    decoder = _t5_layout(True, gated, shared_bias)
    cross = cross_layout(
        decoder, "layer.1.EncDecAttention", "q", "k", "v", "o", head_bias=None, first_layer_differs=None,
        shared_bias=SharedBias("position_bias") if shared_bias else None,  # T5 hands on layer 0's zeros
    )
    return (
        Stack("encoder", _t5_layout(False, gated, shared_bias)),
        Stack("decoder", decoder, cross=cross, source="encoder", mask="decoder_attention_mask"),
    )


def _bart_layout(stack: str) -> Layout:
    """One stack of BART and its relatives: config keys are `encoder_*` / `decoder_*`."""
    return Layout(
        family="bart",
        layers=f"{stack}.layers",
        attention="self_attn",
        attention_includes_output=True,
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        o="self_attn.out_proj",
        up="fc1",
        down="fc2",
        head_count_attrs=("num_heads",),
        config_heads=f"{stack}_attention_heads",
        config_ffn=f"{stack}_ffn_dim",
        config_layers=f"{stack}_layers",
    )


BART_STACKS = (
    Stack("encoder", _bart_layout("encoder")),
    Stack(
        "decoder", _bart_layout("decoder"), source="encoder", mask="decoder_attention_mask",
        cross=cross_layout(_bart_layout("decoder"), "encoder_attn", "q_proj", "k_proj", "v_proj", "out_proj"),
    ),
)


def _tower_layout(family: str, tower: str | None) -> Layout:
    """One tower of CLIP / SigLIP: pre-norm layers with q/k/v/out_proj and mlp.fc1/fc2. tower: "text" or "vision"
    inside a two-tower model; None for a single-tower model (CLIPVisionModel), whose base holds the encoder."""
    return Layout(
        family=family,
        layers=f"{tower}_model.encoder.layers" if tower else "encoder.layers",
        attention="self_attn",
        attention_includes_output=True,
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        o="self_attn.out_proj",
        up="mlp.fc1",
        down="mlp.fc2",
        head_count_attrs=("num_heads",),
    )


def _towers(family: str) -> tuple[Stack, ...]:
    return (
        Stack("text", _tower_layout(family, "text"), config="text_config"),
        Stack("vision", _tower_layout(family, "vision"), config="vision_config", mask=None),
    )


# model_type -> its stacks (or a function of the config giving them). Models with one stack are in LAYOUTS.
STACKS: dict[str, tuple[Stack, ...] | Callable[[object], tuple[Stack, ...]]] = {
    "t5": _t5_stacks,
    "mt5": _t5_stacks,
    "umt5": lambda config: _t5_stacks(config, shared_bias=False),
    "bart": BART_STACKS,
    "mbart": BART_STACKS,
    "plbart": BART_STACKS,
    "marian": BART_STACKS,
    "pegasus": BART_STACKS,
    "blenderbot": BART_STACKS,
    "blenderbot-small": BART_STACKS,
    "m2m_100": BART_STACKS,
    "clip": _towers("clip"),
    "siglip": _towers("siglip"),
}

# single towers of the two-tower models load as single-stack models
LAYOUTS.update({
    "clip_text_model": _tower_layout("clip", None),
    "clip_vision_model": _tower_layout("clip", None),
    "siglip_text_model": _tower_layout("siglip", None),
    "siglip_vision_model": _tower_layout("siglip", None),
})


def get_stacks(model_or_config) -> tuple[Stack, ...] | None:
    """The layer stacks a multi-stack model type can have, in order; None for a single-stack model (or a view)."""
    if isinstance(getattr(model_or_config, "hf_prune_layout", None), Layout):
        return None  # a StackView is one stack
    config = getattr(model_or_config, "config", model_or_config)
    spec = STACKS.get(getattr(config, "model_type", None))
    if spec is None:
        return None
    refuse_unsupported(config)
    return spec(config) if callable(spec) else spec


def supported_model_types() -> list[str]:
    """Model types hf_prune can prune, sorted (single- and multi-stack)."""
    return sorted({*LAYOUTS, *STACKS})


def get_layout(model_or_config) -> Layout:
    """Return the layout of a model (or config), or raise ValueError naming its model_type (and, for a model
    with experts, non-attention layers or shared key/values, what it has that hf_prune cannot prune)."""
    view_layout = getattr(model_or_config, "hf_prune_layout", None)
    if isinstance(view_layout, Layout):
        return view_layout  # one stack of a multi-stack model (`hf_prune.architecture.stacks.StackView`)
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    refuse_unsupported(config)  # experts, linear-attention / hybrid layers, cross-layer KV sharing
    stacks = get_stacks(config)
    if stacks is not None:
        names = ", ".join(stack.name for stack in stacks)
        raise ValueError(
            f"model_type {model_type!r} has several layer stacks ({names}). layer_shapes, prune_model, drop_layers, "
            f"count_flops, count_parameters, compute_importance, plan_from_sparsity/flops/params, tune_masks, "
            f"calibration_moments, reselect_units, apply_mask_tuning, prune_retrain_free, save_pruned and "
            f"load_pruned address its layers as "
            f"\"<stack>.<layer>\" (hf_prune.layer_stacks(model) lists the stacks); "
            f"this function supports single-stack models only"
        )
    if model_type not in LAYOUTS:
        raise ValueError(
            f"hf_prune does not support model_type {model_type!r}. Supported model types: "
            f"{', '.join(supported_model_types())}. For a relative of one of these whose modules have the same "
            f"names, add a line to hf_prune.layouts.LAYOUTS."
        )
    return LAYOUTS[model_type]


def find_submodule(root: nn.Module, path: str | None) -> nn.Module | None:
    """The submodule at `path`, or None when `path` is None or `root` has no such module (a config may leave one
    out: DeBERTa's pos_key_proj, T5's position-bias table outside layer 0)."""
    if path is None:
        return None
    try:
        return get_submodule(root, path)
    except AttributeError:
        return None


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """`root.get_submodule(path)` that also accepts an empty path."""
    return root.get_submodule(path) if path else root


def base_model(model: nn.Module) -> nn.Module:
    """The transformer body of a task model (ForSequenceClassification, ForCausalLM, ...) or the model itself."""
    base = getattr(model, "base_model", model)
    return base if isinstance(base, nn.Module) else model


def find_layers(model: nn.Module, layout: Layout) -> nn.ModuleList | None:
    """The layer list at `layout.layers`, from the model's base model or else from the model itself (a tower class
    whose base is its tower, CLIPTextModelWithProjection, keeps the tower's prefix); None when it has none."""
    whole = model.model if isinstance(getattr(model, "hf_prune_layout", None), Layout) else model  # a StackView's model
    for root in (base_model(model), whole):
        try:
            found = get_submodule(root, layout.layers)
        except AttributeError:
            continue
        if isinstance(found, nn.ModuleList):
            return found
    return None


def get_layers(model: nn.Module, layout: Layout | None = None) -> nn.ModuleList:
    """The list of transformer layers of a supported model (or of one stack, given a StackView)."""
    layout = layout or get_layout(model)
    layers = find_layers(model, layout)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no layer list at {layout.layers!r} ({layout.family} layout)")
    return layers
