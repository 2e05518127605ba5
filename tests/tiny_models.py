"""Tiny random models of every supported family, built locally (no Hub)."""

from __future__ import annotations

import torch
import transformers as tf

VOCAB = 97


def llama_sized(config_class, **extra):
    """Config factory for a llama-named relative: 48 wide, 6 query heads over 2 key/value heads of 8, FFN 37."""
    return lambda: config_class(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                                head_dim=8, intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64,
                                bos_token_id=0, eos_token_id=0, pad_token_id=1, **extra)


# model_type -> (config factory, task model class). Head size 8 everywhere; FFN width deliberately odd.
TINY = {
    "bert": (lambda: tf.BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                                   vocab_size=VOCAB, max_position_embeddings=64), tf.BertForSequenceClassification),
    "roberta": (lambda: tf.RobertaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                         intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=70),
                tf.RobertaForSequenceClassification),
    "xlm-roberta": (lambda: tf.XLMRobertaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=70),
                    tf.XLMRobertaForSequenceClassification),
    "camembert": (lambda: tf.CamembertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                             intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=70),
                  tf.CamembertForSequenceClassification),
    "electra": (lambda: tf.ElectraConfig(hidden_size=32, embedding_size=16, num_hidden_layers=3, num_attention_heads=4,
                                         intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64),
                tf.ElectraForSequenceClassification),
    "data2vec-text": (lambda: tf.Data2VecTextConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                    intermediate_size=37, vocab_size=VOCAB,
                                                    max_position_embeddings=70),
                      tf.Data2VecTextForSequenceClassification),
    "distilbert": (lambda: tf.DistilBertConfig(dim=32, n_layers=3, n_heads=4, hidden_dim=37, vocab_size=VOCAB,
                                               max_position_embeddings=64), tf.DistilBertForSequenceClassification),
    "gpt2": (lambda: tf.GPT2Config(n_embd=32, n_layer=3, n_head=4, n_inner=37, vocab_size=VOCAB, n_positions=64,
                                   bos_token_id=0, eos_token_id=0), tf.GPT2LMHeadModel),
    "opt": (lambda: tf.OPTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, ffn_dim=37,
                                 word_embed_proj_dim=32, vocab_size=VOCAB, max_position_embeddings=64,
                                 bos_token_id=0, eos_token_id=0, pad_token_id=1), tf.OPTForCausalLM),
    "llama": (lambda: tf.LlamaConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                                     intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64,
                                     bos_token_id=0, eos_token_id=0), tf.LlamaForCausalLM),
    "mistral": (lambda: tf.MistralConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                                         num_key_value_heads=2, intermediate_size=37, vocab_size=VOCAB,
                                         max_position_embeddings=64, bos_token_id=0, eos_token_id=0),
                tf.MistralForCausalLM),
    "qwen2": (lambda: tf.Qwen2Config(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                                     intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64,
                                     bos_token_id=0, eos_token_id=0), tf.Qwen2ForCausalLM),
    "qwen3": (lambda: tf.Qwen3Config(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                                     head_dim=8, intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64,
                                     bos_token_id=0, eos_token_id=0), tf.Qwen3ForCausalLM),
    "gemma": (lambda: tf.GemmaConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                                     head_dim=8, intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64,
                                     bos_token_id=0, eos_token_id=0, pad_token_id=1), tf.GemmaForCausalLM),
    # soft-capped attention and logits, alternating sliding/full layers (window 4 < the 9 test tokens)
    "gemma2": (lambda: tf.Gemma2Config(hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                                       num_key_value_heads=2, head_dim=8, intermediate_size=37, vocab_size=VOCAB,
                                       max_position_embeddings=64, sliding_window=4, query_pre_attn_scalar=8,
                                       bos_token_id=0, eos_token_id=0, pad_token_id=1), tf.Gemma2ForCausalLM),
    # per-head q/k norms, a full-attention layer between sliding ones
    "gemma3_text": (lambda: tf.Gemma3TextConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                                                num_key_value_heads=2, head_dim=8, intermediate_size=37,
                                                vocab_size=VOCAB, max_position_embeddings=64, sliding_window=4,
                                                query_pre_attn_scalar=8, bos_token_id=0, eos_token_id=0,
                                                pad_token_id=1,
                                                layer_types=["sliding_attention", "full_attention",
                                                             "sliding_attention"]), tf.Gemma3ForCausalLM),
    # every second layer without rotary embeddings (NoPE)
    "smollm3": (lambda: tf.SmolLM3Config(hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                                         num_key_value_heads=2, intermediate_size=37, vocab_size=VOCAB,
                                         max_position_embeddings=64, no_rope_layer_interval=2, bos_token_id=0,
                                         eos_token_id=0, pad_token_id=1), tf.SmolLM3ForCausalLM),
    # llama-named relatives (one LAYOUTS line each): scaled residuals/logits, clipped qkv, parallel blocks, ...
    "granite": (llama_sized(tf.GraniteConfig, attention_multiplier=0.2, residual_multiplier=0.5,
                            embedding_multiplier=2.0, logits_scaling=4.0), tf.GraniteForCausalLM),
    "olmo": (llama_sized(tf.OlmoConfig, clip_qkv=2.0), tf.OlmoForCausalLM),
    "ministral": (llama_sized(tf.MinistralConfig, sliding_window=4), tf.MinistralForCausalLM),
    "cohere2": (llama_sized(tf.Cohere2Config, sliding_window=4, layer_types=["sliding_attention", "full_attention",
                                                                               "sliding_attention"]),
                tf.Cohere2ForCausalLM),
    "ernie4_5": (llama_sized(tf.Ernie4_5Config, use_bias=True), tf.Ernie4_5ForCausalLM),
    "vaultgemma": (llama_sized(tf.VaultGemmaConfig, sliding_window=4, query_pre_attn_scalar=8), tf.VaultGemmaForCausalLM),
}

# fused projections (hf_prune.architecture.fused): q/k/v in one weight, and gate/up in one weight
TINY.update({
    # qkv_proj [q | k | v] with 6 query heads over 2 key/value heads, gate_up_proj [gate | up]; no head_dim key
    "phi3": (lambda: tf.Phi3Config(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                                   intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=1), tf.Phi3ForCausalLM),
    # query_key_value per head [q_h k_h v_h], rotary on half of each head, parallel residual
    "gpt_neox": (lambda: tf.GPTNeoXConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                          intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64,
                                          rotary_pct=0.5, use_parallel_residual=True, bos_token_id=0,
                                          eos_token_id=0), tf.GPTNeoXForCausalLM),
    # Wqkv [q | k | v], GLU Wi [input | gate], global / local (window 2) / global attention, biases everywhere
    "modernbert": (lambda: tf.ModernBertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                               intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64,
                                               local_attention=4, global_attn_every_n_layers=2, attention_bias=True,
                                               mlp_bias=True, pad_token_id=1, bos_token_id=0, eos_token_id=0,
                                               cls_token_id=0, sep_token_id=0), tf.ModernBertForSequenceClassification),
    # ModernBERT's fused GLU Wi with separate q/k/v, causal, global / local attention
    "modernbert-decoder": (lambda: tf.ModernBertDecoderConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                              intermediate_size=37, vocab_size=VOCAB,
                                                              max_position_embeddings=64, local_attention=4,
                                                              global_attn_every_n_layers=2, attention_bias=True,
                                                              mlp_bias=True, pad_token_id=1, bos_token_id=0,
                                                              eos_token_id=0, cls_token_id=0, sep_token_id=0),
                           tf.ModernBertDecoderForCausalLM),
    # llama-style attention (q/k/v biases, rotary on half of each head) with Phi-3's fused gate_up_proj
    "glm": (llama_sized(tf.GlmConfig), tf.GlmForCausalLM),
    "glm4": (llama_sized(tf.Glm4Config), tf.Glm4ForCausalLM),
})
FUSED = {"phi3", "gpt_neox", "modernbert", "modernbert-decoder", "glm", "glm4"}
FUSED_DECODERS = FUSED - {"modernbert"}

LLAMA_RELATIVES = {"gemma2", "gemma3_text", "smollm3", "granite", "olmo", "ministral", "cohere2",
                   "ernie4_5", "vaultgemma"}
DECODERS = {"gpt2", "opt", "llama", "mistral", "qwen2", "qwen3", "gemma"} | LLAMA_RELATIVES | FUSED_DECODERS
GROUPED = {"llama", "mistral", "qwen2", "qwen3", "gemma"} | LLAMA_RELATIVES | {"phi3", "glm", "glm4"}  # GQA among FUSED


def deberta_v2_config(share_att_key: bool = False, position_buckets: int = 8, conv_kernel_size: int = 3,
                      pos_att_type: tuple[str, ...] = ("p2c", "c2p")):
    """DeBERTa-v2 with relative attention (c2p: content to position, p2c: position to content). share_att_key=False
    builds pos_key_proj (c2p) and pos_query_proj (p2c), rows grouped by head (`Layout.head_rows`); True (DeBERTa-v3)
    reuses key_proj / query_proj. position_buckets -1: no log buckets; conv_kernel_size > 0: v2-xlarge's ConvLayer."""
    return tf.DebertaV2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                              vocab_size=VOCAB, max_position_embeddings=64, relative_attention=True,
                              pos_att_type=list(pos_att_type), position_biased_input=False, norm_rel_ebd="layer_norm",
                              share_att_key=share_att_key, position_buckets=position_buckets, max_relative_positions=16,
                              conv_kernel_size=conv_kernel_size, conv_act="gelu")


# the harder DeBERTa-v2 variant (separate relative-position projections, log buckets, ConvLayer); tests/test_deberta.py
# covers the others
TINY["deberta-v2"] = (deberta_v2_config, tf.DebertaV2ForSequenceClassification)

# vision: image classification over (image_size / patch_size)^2 + 1 = 5 tokens (the patches and [CLS])
TINY["vit"] = (lambda: tf.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                                    image_size=8, patch_size=4, num_channels=3), tf.ViTForImageClassification)
TINY["vit_msn"] = (lambda: tf.ViTMSNConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                           intermediate_size=37, image_size=8, patch_size=4, num_channels=3),
                   tf.ViTMSNForImageClassification)
VISION = {"vit", "vit_msn"}


def make_model(model_type: str, seed: int = 0, dtype=torch.float32):
    """A tiny random task model of the given family, in eval mode, with non-zero biases."""
    config_factory, cls = TINY[model_type]
    torch.manual_seed(seed)
    config = config_factory()
    if model_type not in DECODERS:
        config.num_labels = 3
    model = cls(config).eval()
    with torch.no_grad():  # random biases, so "contributes only its bias" is actually tested
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    return model.to(dtype)


def make_inputs(batch: int = 2, seq: int = 9, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask}


def make_inputs_for(model_type: str, batch: int = 2, seq: int = 9, seed: int = 1) -> dict:
    """Inputs of the family's task model: random images for vision models, else `make_inputs`' token ids."""
    if model_type not in VISION:
        return make_inputs(batch, seq, seed)
    config = TINY[model_type][0]()
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, config.num_channels, config.image_size, config.image_size, generator=g)}


def assert_untouched(model, state_before: dict, requires_grad_before: dict) -> None:
    """Scoring left the model as it was: same tensors, no hooks, training mode kept, no grads, same requires_grad."""
    after = model.state_dict()
    assert state_before.keys() == after.keys()
    for k in state_before:
        assert torch.equal(state_before[k], after[k]), k
    for name, module in model.named_modules():
        assert not module._forward_pre_hooks and not module._forward_hooks, name
        assert module.training, name
    for n, p in model.named_parameters():
        assert p.grad is None, n
        assert p.requires_grad == requires_grad_before[n], n
