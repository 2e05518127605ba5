"""Per-architecture layout table: the only place in hf_prune that knows architecture names.

A layout says, for one family of models, where the transformer layers are, what the attention and
feed-forward projections are called, which module attributes and config keys carry head counts and
widths, and the family's quirks (fused Conv1D qkv in GPT-2, grouped-query attention in llama-style
decoders). Everything else in the package works on a `Layout`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class Layout:
    """Where one architecture family keeps its prunable pieces (paths are dotted attribute names)."""

    family: str
    layers: str  # from the base model to the nn.ModuleList of layers
    attention: str  # from a layer to the module that owns head counts; gets an empty forward at 0 heads
    attention_includes_output: bool  # does `attention`'s forward apply the output projection itself?
    q: str | None  # from a layer; None when q/k/v are fused
    k: str | None
    v: str | None
    o: str  # output projection: its input columns are grouped by head
    up: str  # FFN up projection: its output rows are the neurons
    down: str  # FFN down projection: its input columns are the neurons
    gate: str | None = None  # SwiGLU gate projection (llama-style)
    qkv: str | None = None  # fused query/key/value projection (GPT-2's c_attn)
    conv1d: bool = False  # GPT-2's Conv1D stores weights as (in, out)
    ffn: str | None = None  # FFN module that needs an empty forward at 0 neurons (Conv1D cannot take width 0)
    head_dim_attr: str = "head_dim"  # attribute of `attention` with the per-head size
    head_count_attrs: tuple[str, ...] = ()  # attributes of `attention` that hold the query head count
    width_attrs: tuple[str, ...] = ()  # attributes of `attention` that hold heads * head_dim
    kv_groups_attr: str | None = None  # attribute of `attention` with query heads per key/value head
    config_heads: str = "num_attention_heads"
    config_kv_heads: str | None = None  # GQA only
    config_ffn: str = "intermediate_size"
    config_head_dim: str | None = None  # when the config carries head_dim, head counts can be written plainly
    config_layers: str = "num_hidden_layers"  # config key with the number of layers
    inverse_index_scaling: str | None = None  # config flag: `attention.scaling` is divided by (layer_idx + 1)

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
    qkv="attn.c_attn",
    o="attn.c_proj",
    up="mlp.c_fc",
    down="mlp.c_proj",
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

# model_type -> layout. Relatives that share their family's module names are one line each.
LAYOUTS: dict[str, Layout] = {
    "bert": BERT,
    "roberta": BERT,
    "xlm-roberta": BERT,
    "camembert": BERT,
    "electra": BERT,
    "data2vec-text": BERT,
    "distilbert": DISTILBERT,
    "gpt2": GPT2,
    "opt": OPT,
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "qwen3": LLAMA,
    "gemma": LLAMA,
}


def supported_model_types() -> list[str]:
    """Model types hf_prune can prune, sorted."""
    return sorted(LAYOUTS)


def get_layout(model_or_config) -> Layout:
    """Return the layout of a model (or config), or raise ValueError naming its model_type."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUTS:
        raise ValueError(
            f"hf_prune does not support model_type {model_type!r}. Supported model types: "
            f"{', '.join(supported_model_types())}. For a relative of one of these whose modules have the same "
            f"names, add a line to hf_prune.layouts.LAYOUTS."
        )
    return LAYOUTS[model_type]


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """`root.get_submodule(path)` that also accepts an empty path."""
    return root.get_submodule(path) if path else root


def base_model(model: nn.Module) -> nn.Module:
    """The transformer body of a task model (ForSequenceClassification, ForCausalLM, ...) or the model itself."""
    base = getattr(model, "base_model", model)
    return base if isinstance(base, nn.Module) else model


def get_layers(model: nn.Module, layout: Layout | None = None) -> nn.ModuleList:
    """The list of transformer layers of a supported model."""
    layout = layout or get_layout(model)
    return get_submodule(base_model(model), layout.layers)
