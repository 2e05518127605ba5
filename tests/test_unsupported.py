"""Models with experts, linear-attention (hybrid) layers or cross-layer KV sharing are refused, naming the model
type and what it has, before anything changes (tiny random configs of the installed transformers)."""

import copy

import pytest
import torch
import transformers as tf
from transformers import CONFIG_MAPPING

from hf_prune import compute_importance, get_layout, layer_shapes, prune_model
from hf_prune.architecture.layouts import LAYOUTS
from hf_prune.architecture.unsupported import unsupported_features

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
             intermediate_size=24, vocab_size=61, max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
             pad_token_id=1)

# model_type -> (config factory, model class, what the error must name)
REFUSED = {
    "mixtral": (lambda: tf.MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2),
                tf.MixtralForCausalLM, "mixture-of-experts"),
    "qwen2_moe": (lambda: tf.Qwen2MoeConfig(**SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                            shared_expert_intermediate_size=16),
                  tf.Qwen2MoeForCausalLM, "mixture-of-experts"),
    "olmo_hybrid": (lambda: tf.OlmoHybridConfig(**SMALL, layer_types=["linear_attention", "full_attention"],
                                                linear_num_key_heads=2, linear_num_value_heads=2,
                                                linear_key_head_dim=8, linear_value_head_dim=8),
                    tf.OlmoHybridForCausalLM, "linear-attention / hybrid layers"),
    "qwen3_next": (lambda: tf.Qwen3NextConfig(**SMALL, layer_types=["linear_attention", "full_attention"],
                                              num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                              shared_expert_intermediate_size=16, linear_num_key_heads=2,
                                              linear_num_value_heads=2, linear_key_head_dim=8,
                                              linear_value_head_dim=8),
                   tf.Qwen3NextForCausalLM, "mixture-of-experts.*linear-attention"),
    "gemma3n_text": (lambda: tf.Gemma3nTextConfig(**{**SMALL, "num_hidden_layers": 4}, num_kv_shared_layers=2,
                                                  layer_types=["sliding_attention", "full_attention"] * 2,
                                                  vocab_size_per_layer_input=61, hidden_size_per_layer_input=4,
                                                  laurel_rank=4, activation_sparsity_pattern=[0.0] * 4,
                                                  sliding_window=8),
                     tf.Gemma3nForCausalLM, "cross-layer key/value sharing"),
}


def build(model_type):
    factory, cls, _ = REFUSED[model_type]
    torch.manual_seed(0)
    return cls(factory()).eval()


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_refused_naming_the_model_type_and_feature_and_nothing_changes(model_type):
    model = build(model_type)
    assert model.config.model_type == model_type
    state = copy.deepcopy(model.state_dict())
    config = copy.deepcopy(model.config.to_dict())
    message = rf"'{model_type}'.*{REFUSED[model_type][2]}.*nothing was changed"
    calls = [lambda: get_layout(model), lambda: layer_shapes(model),
             lambda: prune_model(model, heads={0: [0]}, neurons={0: [0]}),
             lambda: compute_importance(model, method="l2")]
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()
    assert model.config.to_dict() == config and not hasattr(model.config, "hf_prune")
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_a_supported_type_with_experts_is_refused_too():
    config = tf.LlamaConfig(**SMALL)
    config.num_local_experts = 8  # e.g. a checkpoint whose config says it routes over experts
    with pytest.raises(ValueError, match=r"'llama'.*mixture-of-experts layers \(num_local_experts=8\)"):
        get_layout(config)


@pytest.mark.parametrize("model_type", sorted(LAYOUTS))
def test_no_supported_type_is_refused_by_default(model_type):
    assert unsupported_features(CONFIG_MAPPING[model_type]()) == []


@pytest.mark.parametrize("model_type", ["jamba", "recurrent_gemma", "zamba2", "falcon_h1", "deepseek_v3", "dbrx"])
def test_other_installed_families_name_what_they_have(model_type):
    features = unsupported_features(CONFIG_MAPPING[model_type]())
    assert features and all(isinstance(f, str) for f in features)
