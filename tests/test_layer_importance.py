"""compute_layer_importance: an inert layer scores ~0 and lowest, the definitions against output_hidden_states,
lengths, label-free targets, save/load, the model left as it was, bad input, and two processes agree with one."""

import math

import pytest
import torch
import torch.nn.functional as F
from gloo_workers import run_two_processes
from test_importance import batches
from tiny_models import assert_untouched, make_model

from hf_prune import get_layout
from hf_prune.architecture.layouts import get_layers, get_submodule
from hf_prune.importance import (
    LAYER_METHODS,
    ImportanceScores,
    LayerScores,
    compute_importance,
    compute_layer_importance,
)


def lively(model_type: str):
    """A float64 tiny model whose layers matter: larger random weights than the default 0.02 init."""
    model = make_model(model_type, dtype=torch.float64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name and "wte" not in name and "wpe" not in name:
                p.normal_(0, 0.3)
    return model


def make_inert(model, index: int) -> None:
    """Make layer `index` the identity: zero the output and down projections (weights and biases).

    Post-LN encoders (BERT) also normalise after each residual sum, which is the identity on hidden states
    only when they are already normalised with no affine part: so the layer's own LayerNorms and the one
    that feeds it (the embeddings' or the previous layer's output LayerNorm) are reset to weight 1, bias 0.
    """
    layout = get_layout(model)
    layers = get_layers(model)
    layer = layers[index]
    with torch.no_grad():
        for path in (layout.o, layout.down):
            module = get_submodule(layer, path)
            module.weight.zero_()
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        if layout.family == "bert":
            feeding = layers[index - 1].output.LayerNorm if index else model.bert.embeddings.LayerNorm
            for norm in (feeding, layer.attention.output.LayerNorm, layer.output.LayerNorm):
                norm.weight.fill_(1.0)
                norm.bias.zero_()


@pytest.mark.parametrize("model_type", ["llama", "bert"])
@pytest.mark.parametrize("method", ["block_influence", "angular", "loss", "fisher"])
def test_inert_layer_scores_zero_and_lowest(model_type, method):
    model = lively(model_type)
    make_inert(model, 1)
    scores = compute_layer_importance(model, batches(model_type), method, progress=False)
    assert len(scores) == 3 and scores.method == method and scores.num_batches == 2
    assert scores.scores[1] == pytest.approx(0.0, abs=1e-6)
    others = [abs(s) for i, s in enumerate(scores.scores) if i != 1]
    assert min(others) > 1e-4  # the loss change of skipping a live layer may be negative on a random model
    assert scores.ranking()[0] == 1 or method == "loss"
    assert min(range(3), key=lambda i: abs(scores.scores[i])) == 1


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return ((values * mask).sum() / mask.sum()).item()


def test_definitions_match_hidden_states():
    """block_influence = masked mean of 1 - cos, angular = masked mean of arccos(cos) / pi, from output_hidden_states."""
    model = lively("bert")
    data = batches("bert")
    with torch.no_grad():
        outs = [model(**{k: v for k, v in b.items() if k != "labels"}, output_hidden_states=True) for b in data]
    mask = torch.cat([b["attention_mask"].double() for b in data])  # (batches * B, T); BERT's hidden_states[i] is

    def cos(first: int, last: int) -> torch.Tensor:  # the input of layer i, hidden_states[i + 1] its output
        return torch.cat([F.cosine_similarity(o.hidden_states[first], o.hidden_states[last + 1], dim=-1)
                          for o in outs]).clamp(-1, 1)

    influence = compute_layer_importance(model, data, "block_influence", progress=False)
    angular = compute_layer_importance(model, data, "angular", progress=False)
    for i in range(3):
        assert influence.scores[i] == pytest.approx(_masked_mean(1 - cos(i, i), mask), rel=1e-9)
        assert angular.scores[i] == pytest.approx(_masked_mean(torch.arccos(cos(i, i)) / math.pi, mask), rel=1e-9)
    assert influence.ranking() == angular.ranking()  # the same order on this data (monotone token by token)
    blocks = compute_layer_importance(model, data, "angular", n=2, progress=False)
    assert len(blocks) == 2 and blocks.n == 2
    for start in range(2):
        expected = _masked_mean(torch.arccos(cos(start, start + 1)) / math.pi, mask)
        assert blocks.scores[start] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "gpt2", "opt", "llama", "gemma"])
def test_every_method_runs_on_every_family(model_type):
    model = make_model(model_type)
    data = batches(model_type)
    for method in LAYER_METHODS:
        scores = compute_layer_importance(model, data, method, progress=False)
        assert len(scores) == 3 and scores.num_batches == 2
        assert all(math.isfinite(s) for s in scores.scores)
        if method != "loss":
            assert all(s >= 0 for s in scores.scores)
    for n in (1, 2, 3):
        assert len(compute_layer_importance(model, data, "angular", n=n, progress=False)) == 3 - n + 1


def test_label_free_matches_own_targets():
    model = lively("llama")
    data = [{"input_ids": torch.randint(2, 90, (2, 7), generator=torch.Generator().manual_seed(i))} for i in range(2)]
    labelled = [dict(b, labels=b["input_ids"]) for b in data]
    for method in ("loss", "fisher"):
        free = compute_layer_importance(model, data, method, label_free=True, progress=False)
        own = compute_layer_importance(model, labelled, method, progress=False)
        assert free.scores == pytest.approx(own.scores, rel=1e-6, abs=1e-12)


def test_fisher_is_on_the_head_fisher_scale():
    """A whole layer's gate is the sum of its residual branches; at least its scores are comparable numbers."""
    model = lively("llama")
    data = batches("llama")
    layers = compute_layer_importance(model, data, "fisher", progress=False)
    heads = compute_importance(model, data, "fisher")
    assert all(s > 0 for s in layers.scores) and all(h.sum() > 0 for h in heads.heads)
    assert layers.num_batches == heads.num_batches


def test_scoring_leaves_model_unchanged():
    model = make_model("llama").train()
    model.model.embed_tokens.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = model.eval()(**batches("llama")[0]).logits
    model.train()
    for method in LAYER_METHODS:
        compute_layer_importance(model, batches("llama"), method, progress=False)
    assert_untouched(model, before, flags)
    with torch.no_grad():
        assert torch.equal(model.eval()(**batches("llama")[0]).logits, logits)


def test_max_batches_and_one_shot_iterators():
    model = make_model("gpt2")
    data = batches("gpt2", n=3)
    assert compute_layer_importance(model, iter(data), "fisher", max_batches=2, progress=False).num_batches == 2
    assert compute_layer_importance(model, data, "loss", max_batches=2, progress=False).num_batches == 2
    with pytest.raises(ValueError, match="pass a list or a torch DataLoader"):
        compute_layer_importance(model, iter(data), "loss", progress=False)


def test_save_and_load(tmp_path):
    model = make_model("llama")
    scores = compute_layer_importance(model, batches("llama"), "angular", n=2, progress=False)
    scores.save(tmp_path / "layers.json")
    assert LayerScores.load(tmp_path / "layers.json") == scores
    assert LayerScores.from_dict(scores.to_dict()) == scores

    units = compute_importance(model, batches("llama"), "fisher")
    units.save(tmp_path / "old.safetensors")  # without layer scores, as files written before them
    assert ImportanceScores.load(tmp_path / "old.safetensors").layers is None
    fisher = compute_layer_importance(model, batches("llama"), "fisher", progress=False)
    for layers in (fisher.scores, torch.tensor(fisher.scores, dtype=torch.float64)):
        units.layers = layers
        units.save(tmp_path / "with_layers.safetensors")
        loaded = ImportanceScores.load(tmp_path / "with_layers.safetensors")
        assert loaded.layers == fisher.scores
        for a, b in zip(units.heads + units.neurons, loaded.heads + loaded.neurons):
            assert torch.equal(a, b)


def test_bad_input_raises_value_error():
    model = make_model("bert")
    data = batches("bert")
    with pytest.raises(ValueError, match="unknown layer importance method"):
        compute_layer_importance(model, data, "magic")
    with pytest.raises(ValueError, match="needs a dataloader"):
        compute_layer_importance(model, None)
    for method in LAYER_METHODS:
        with pytest.raises(ValueError, match="empty"):
            compute_layer_importance(model, [], method, progress=False)
    for n in (0, 4, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must be an integer from 1 to the number of layers"):
            compute_layer_importance(model, data, "angular", n=n)
    with pytest.raises(ValueError, match="only for 'angular'"):
        compute_layer_importance(model, data, "block_influence", n=2)
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in data]
    for method in ("loss", "fisher"):
        with pytest.raises(ValueError, match="label_free=True"):
            compute_layer_importance(model, unlabelled, method, progress=False)
    compute_layer_importance(model, unlabelled, "block_influence", progress=False)  # needs no labels
    assert not any(m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


WORKER = """
from gloo_workers import run_two_processes
from test_importance import batches
from tiny_models import make_model
from hf_prune.importance import compute_layer_importance

model = make_model("llama")
shard = batches("llama", n=4)[rank::world]
for method in ("block_influence", "loss", "fisher"):
    compute_layer_importance(model, shard, method, progress=False).save(f"{out}/{{method}}.{{rank}}.json")
"""


def test_two_processes_match_one(tmp_path):
    run_two_processes(WORKER, tmp_path)
    model = make_model("llama")
    for method in ("block_influence", "loss", "fisher"):
        single = compute_layer_importance(model, batches("llama", n=4), method, progress=False)
        ranks = [LayerScores.load(tmp_path / f"{method}.{r}.json") for r in range(2)]
        assert ranks[0] == ranks[1]  # identical on every process
        assert ranks[0].num_batches == 4
        assert ranks[0].scores == pytest.approx(single.scores, rel=1e-4, abs=1e-10)
