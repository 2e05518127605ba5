"""Tiny random models of every supported family, built locally (no Hub)."""

from __future__ import annotations

import torch
import transformers as tf

VOCAB = 97

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
}

DECODERS = {"gpt2", "opt", "llama", "mistral", "qwen2", "qwen3", "gemma"}
GROUPED = {"llama", "mistral", "qwen2", "qwen3", "gemma"}


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
