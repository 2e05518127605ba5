"""Tiny random models with several layer stacks (encoder-decoders, two-tower models), built locally."""

from __future__ import annotations

import torch
import transformers as tf

VOCAB = 97


def t5_config(config_class=tf.T5Config, gated: bool = False):
    return config_class(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=3, num_decoder_layers=2, num_heads=4,
                        feed_forward_proj="gated-gelu" if gated else "relu", decoder_start_token_id=0, pad_token_id=0,
                        eos_token_id=1, relative_attention_num_buckets=8, relative_attention_max_distance=16)


def bart_config(config_class=tf.BartConfig):
    return config_class(vocab_size=VOCAB, d_model=32, encoder_layers=3, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=29, max_position_embeddings=64,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)


def towers_config(config_class=tf.CLIPConfig, same_width: bool = False):
    """Text tower: 4 heads of 8, FFN 37, 2 layers; vision tower: 6 heads of 8, FFN 53, 3 layers, 16 patches
    (SigLIP needs both towers as wide: then 4 heads each)."""
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    heads = 4 if same_width else 6
    vision = dict(hidden_size=8 * heads, intermediate_size=53, num_hidden_layers=3, num_attention_heads=heads,
                  image_size=16, patch_size=4, num_channels=3)
    extra = {} if same_width else {"projection_dim": 16}
    return config_class(text_config=text, vision_config=vision, **extra)


# name -> (config factory, model class, kind); kind picks the inputs
STACKED = {
    "t5": (t5_config, tf.T5ForConditionalGeneration, "seq2seq"),
    "t5-gated": (lambda: t5_config(gated=True), tf.T5ForConditionalGeneration, "seq2seq"),
    "mt5": (lambda: t5_config(tf.MT5Config, gated=True), tf.MT5ForConditionalGeneration, "seq2seq"),
    "umt5": (lambda: t5_config(tf.UMT5Config), tf.UMT5ForConditionalGeneration, "seq2seq"),
    "bart": (bart_config, tf.BartForConditionalGeneration, "seq2seq"),
    "mbart": (lambda: bart_config(tf.MBartConfig), tf.MBartForConditionalGeneration, "seq2seq"),
    "marian": (lambda: bart_config(tf.MarianConfig), tf.MarianMTModel, "seq2seq"),
    "pegasus": (lambda: bart_config(tf.PegasusConfig), tf.PegasusForConditionalGeneration, "seq2seq"),
    "blenderbot": (lambda: bart_config(tf.BlenderbotConfig), tf.BlenderbotForConditionalGeneration, "seq2seq"),
    "blenderbot-small": (lambda: bart_config(tf.BlenderbotSmallConfig), tf.BlenderbotSmallForConditionalGeneration,
                         "seq2seq"),
    "plbart": (lambda: bart_config(tf.PLBartConfig), tf.PLBartForConditionalGeneration, "seq2seq"),
    "m2m_100": (lambda: bart_config(tf.M2M100Config), tf.M2M100ForConditionalGeneration, "seq2seq"),
    "clip": (towers_config, tf.CLIPModel, "towers"),
    "siglip": (lambda: towers_config(tf.SiglipConfig, same_width=True), tf.SiglipModel, "towers"),
}


def make_stacked(name: str, seed: int = 0):
    factory, model_class, _ = STACKED[name]
    torch.manual_seed(seed)
    return model_class(factory()).eval()


def stacked_inputs(name: str, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    if STACKED[name][2] == "towers":
        return {"input_ids": torch.randint(3, VOCAB, (2, 7), generator=generator),
                "pixel_values": torch.randn(2, 3, 16, 16, generator=generator)}
    return {"input_ids": torch.randint(3, VOCAB, (2, 9), generator=generator),
            "decoder_input_ids": torch.randint(3, VOCAB, (2, 5), generator=generator)}


def stacked_output(model, inputs: dict) -> torch.Tensor:
    """The output to compare: seq2seq logits, or the image-text similarity logits of a two-tower model."""
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.logits_per_image


# single towers load as single-stack models: model_type -> (config factory, model class)
SINGLE_TOWERS = {
    "clip_text_model": (lambda: towers_config().text_config, tf.CLIPTextModel),
    "clip_vision_model": (lambda: towers_config().vision_config, tf.CLIPVisionModel),
    "siglip_text_model": (lambda: towers_config(tf.SiglipConfig, same_width=True).text_config, tf.SiglipTextModel),
    "siglip_vision_model": (lambda: towers_config(tf.SiglipConfig, same_width=True).vision_config,
                            tf.SiglipVisionModel),
}


def make_tower(model_type: str, seed: int = 0):
    factory, model_class = SINGLE_TOWERS[model_type]
    torch.manual_seed(seed)
    return model_class(factory()).eval()


def tower_inputs(model_type: str, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    if "vision" in model_type:
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=generator)}
    return {"input_ids": torch.randint(3, VOCAB, (2, 7), generator=generator)}
