"""Refuse, from the config alone, models whose layers hf_prune cannot prune exactly.

hf_prune removes softmax-attention heads and dense FFN neurons. Three kinds of layers are out of scope:
mixture-of-experts FFNs (routed experts), layers without softmax attention (linear attention, state-space /
Mamba, recurrent or convolution blocks of hybrid models) and cross-layer key/value sharing (a layer reusing
another layer's keys and values would lose heads it does not own). `refuse_unsupported` names the model type
and every such feature in one ValueError, before anything is read or changed; `get_layout` calls it first,
so every entry point (prune_model, importance, plans, recovery, loading) refuses the same way.
"""

from __future__ import annotations

# config keys holding the number of routed experts (Mixtral, Qwen2-MoE, DeepSeek, ERNIE-MoE ...)
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
# config keys listing the kind of every layer (Gemma 2, Qwen3-Next, Nemotron-H, RecurrentGemma ...)
LAYER_KIND_KEYS = ("layer_types", "layers_block_type", "block_types")
# layer kinds whose token mixing is softmax attention over heads: the only kinds hf_prune prunes
SOFTMAX_ATTENTION_KINDS = frozenset({"full_attention", "sliding_attention", "chunked_attention", "attention"})
STATE_SPACE_KEY_PREFIX = "mamba_"  # Jamba, Bamba, Falcon-H1: Mamba mixers in (some) layers


def _configs(config) -> list:
    """The config and its sub-configs one level down (text_config, ffn_config, ...)."""
    found = [config]
    for key in getattr(config, "sub_configs", None) or {}:
        sub = getattr(config, key, None)
        if sub is not None and not isinstance(sub, (str, int, float, bool, list)):
            found.append(sub)
    return found


def _get(config, key):
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def _keys(config) -> list[str]:
    return list(config) if isinstance(config, dict) else list(getattr(config, "__dict__", {}))


def _experts(config) -> str | None:
    for key in EXPERT_COUNT_KEYS:
        count = _get(config, key)
        if isinstance(count, int) and not isinstance(count, bool) and count > 1:
            return f"mixture-of-experts layers ({key}={count})"
    return None


def _non_attention_layers(config) -> list[str]:
    problems = []
    kinds = set()
    for key in LAYER_KIND_KEYS:  # several keys may alias one list: report the kinds once
        listed = _get(config, key)
        if isinstance(listed, (list, tuple)):
            kinds |= {str(kind) for kind in listed} - SOFTMAX_ATTENTION_KINDS
    if kinds:
        problems.append(f"linear-attention / hybrid layers (layer kinds {', '.join(map(repr, sorted(kinds)))})")
    if any(key.startswith(STATE_SPACE_KEY_PREFIX) for key in _keys(config)):
        problems.append("state-space (Mamba) layers")
    return problems


def _kv_sharing(config) -> str | None:
    shared = _get(config, "num_kv_shared_layers")
    if isinstance(shared, int) and not isinstance(shared, bool) and shared > 0:
        return f"cross-layer key/value sharing (num_kv_shared_layers={shared})"
    sources = _get(config, "kv_source_layers")
    if isinstance(sources, (list, tuple)) and any(source != i for i, source in enumerate(sources)):
        return "cross-layer key/value sharing (kv_source_layers)"
    return None


def unsupported_features(config) -> list[str]:
    """What in this config hf_prune cannot prune (empty when nothing): experts, non-attention layers, KV sharing."""
    features: list[str] = []
    for part in _configs(config):
        for found in (_experts(part), *_non_attention_layers(part), _kv_sharing(part)):
            if found and found not in features:
                features.append(found)
    return features


def refuse_unsupported(config) -> None:
    """ValueError naming the model type and every unsupported feature of `config`; nothing is changed."""
    features = unsupported_features(config)
    if features:
        model_type = getattr(config, "model_type", None)
        raise ValueError(
            f"hf_prune cannot prune model_type {model_type!r}: it has {'; '.join(features)}, and only dense layers "
            f"with softmax attention can be pruned (hf_prune.supported_model_types()); nothing was changed"
        )
