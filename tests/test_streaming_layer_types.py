"""Layer-by-layer recovery on models that mix layer types (sliding-window and full attention): every layer is
called with the attention mask and rotary tables of its own type, so dense streaming equals the one-pass path."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf
from test_streaming import _assert_states_close, _outputs

from hf_prune import PruningPlan, apply_mask_tuning, calibration_moments, stream_recover
from hf_prune.recovery.streaming import capture_layer_inputs, mixed_layer_types

SMALL = dict(hidden_size=48, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2, head_dim=8,
             intermediate_size=37, vocab_size=97, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
             pad_token_id=1)
MODELS = {  # a sliding window of 4 tokens on 12-token batches, so a sliding layer's mask differs from a full one
    "gemma2": lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(**SMALL, sliding_window=4)),
    "gemma3_text": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**SMALL, sliding_window=4,
                                                                    layer_types=["sliding_attention", "sliding_attention",
                                                                                 "full_attention", "sliding_attention"])),
}


def _model(name):
    torch.manual_seed(0)
    return MODELS[name]().eval()


def _batches():
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(3):
        ids = torch.randint(2, 97, (2, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[0, :3] = 0  # a left-padded row
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


PLAN = PruningPlan(heads={0: [0, 3], 2: [1, 4], 3: [2, 5]}, neurons={i: list(range(5 + i)) for i in range(4)})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_layer_type_gets_its_own_mask_and_dense_streaming_equals_one_pass(name):
    model = _model(name)
    types = mixed_layer_types(model, 4)
    assert types is not None and len(set(types)) == 2
    captured = capture_layer_inputs(model, _batches())
    try:
        for i, kind in enumerate(types):  # the first layer of another type has its own (different) mask
            mask = captured.call_inputs(i, 0)[1]["attention_mask"]
            same = torch.equal(mask, captured.kwargs[0]["attention_mask"])
            assert same == (kind == types[0]), (i, kind)
    finally:
        captured.hidden.close()
    one_pass, streamed = copy.deepcopy(model), copy.deepcopy(model)
    apply_mask_tuning(one_pass, PLAN, calibration_moments(one_pass, _batches()), reconstruct="weights")
    stream_recover(streamed, PLAN, _batches(), mode="dense")
    _assert_states_close(streamed, one_pass)
    assert torch.allclose(_outputs(streamed, _batches()), _outputs(one_pass, _batches()), atol=1e-5)


def test_sequential_mode_runs_on_mixed_layer_types():
    model = _model("gemma2")
    stream_recover(model, PLAN, _batches(), mode="sequential")
    assert torch.isfinite(_outputs(model, _batches())).all()


def test_layer_types_that_do_not_describe_the_layers_are_refused():
    model = _model("gemma2")
    model.config.layer_types = model.config.layer_types[:3]
    with pytest.raises(ValueError, match="layer_types has 3 entries for 4 layers"):
        mixed_layer_types(model, 4)
