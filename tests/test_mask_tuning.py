"""Mask tuning: least-squares rescaling recovers removed units that duplicate kept ones, never worsens the
per-layer reconstruction, and leaves no hooks behind."""

import pytest
import torch
from tiny_models import make_inputs, make_model

from hf_prune import get_layout, layer_shapes
from hf_prune.architecture.layouts import get_layers, get_submodule
from hf_prune.planning import PruningPlan
from hf_prune.recovery.least_squares import least_squares_scales, unit_gram
from hf_prune.recovery.mask_tuning import tune_masks
from hf_prune.surgery.width import head_columns


def calibration(n: int = 3) -> list[dict]:
    return [make_inputs(4, 10, seed=20 + i) for i in range(n)]


def rows(weight, conv1d):  # output rows of a Linear (out, in) / Conv1D (in, out), as a writable view
    return weight.t() if conv1d else weight


def duplicate_head(model, layer: int, src: int, dst: int) -> None:
    """Make head `dst` compute exactly what head `src` computes (its q/k/v rows and o columns)."""
    layout = get_layout(model)
    target = get_layers(model)[layer]
    d = layer_shapes(model)[layer].head_dim
    s, t = head_columns([src], d), head_columns([dst], d)
    with torch.no_grad():
        for path in (layout.q, layout.k, layout.v):
            mod = get_submodule(target, path)
            rows(mod.weight, False)[t] = mod.weight[s]
            mod.bias[t] = mod.bias[s]
        o = get_submodule(target, layout.o).weight
        o[:, t] = o[:, s]


def duplicate_neuron(model, layer: int, src: int, dst: int) -> None:
    """Make neuron `dst` a copy of neuron `src` (up rows, gate rows with SwiGLU, down columns)."""
    layout = get_layout(model)
    target = get_layers(model)[layer]
    with torch.no_grad():
        if layout.gate is not None:
            gate = get_submodule(target, layout.gate).weight  # (ffn, hidden)
            gate[dst] = gate[src]
        up = get_submodule(target, layout.up)
        w = rows(up.weight, layout.conv1d)  # (ffn, hidden)
        w[dst] = w[src]
        if up.bias is not None:
            up.bias[dst] = up.bias[src]
        down = rows(get_submodule(target, layout.down).weight, not layout.conv1d)  # (ffn, hidden): input columns as rows
        down[dst] = down[src]


def logits(model, data):
    """Logits and last hidden states of every batch, flattened (tiny random logits alone barely move)."""
    with torch.no_grad():
        outs = [model(**b, output_hidden_states=True) for b in data]
    return torch.cat([o.logits.flatten() for o in outs] + [o.hidden_states[-1].flatten() for o in outs])


def test_duplicated_head_is_recovered_exactly():
    model = make_model("bert")
    duplicate_head(model, layer=1, src=0, dst=2)
    data = calibration()
    dense = logits(model, data)
    plan = PruningPlan(heads={1: [2]})
    untuned = make_model("bert")
    duplicate_head(untuned, 1, 0, 2)
    plan.apply(untuned)
    untuned_error = (logits(untuned, data) - dense).abs().max()
    scales = tune_masks(model, plan, data)
    torch.testing.assert_close(scales["heads"][1], torch.tensor([2.0, 1.0, 1.0]), rtol=1e-3, atol=1e-3)
    assert layer_shapes(model)[1].heads == 3
    tuned_error = (logits(model, data) - dense).abs().max()
    assert tuned_error < 1e-4 and untuned_error > 100 * tuned_error


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_duplicated_neuron_is_recovered_exactly(model_type):
    model = make_model(model_type)
    duplicate_neuron(model, layer=0, src=3, dst=7)
    data = calibration()
    dense = logits(model, data)
    scales = tune_masks(model, PruningPlan(neurons={0: [7]}), data)
    assert scales["neurons"][0][3].item() == pytest.approx(2.0, rel=1e-3)
    assert (logits(model, data) - dense).abs().max() < 1e-4


def test_scales_never_worsen_the_layer_reconstruction():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6 * 8, generator=g, dtype=torch.float64)  # (tokens, heads * d)
    w = torch.randn(16, 6 * 8, generator=g, dtype=torch.float64)  # (out, heads * d)
    gram = unit_gram(x.t() @ x, w, units=6, conv1d=False)
    contributions = torch.stack([x[:, h * 8:(h + 1) * 8] @ w[:, h * 8:(h + 1) * 8].t() for h in range(6)])  # (6, N, out)
    torch.testing.assert_close(gram, torch.einsum("inc,jnc->ij", contributions, contributions))
    keep = [0, 2, 3, 5]
    full = contributions.sum(0)
    scales = least_squares_scales(gram, keep, ridge=0.0)
    tuned = torch.einsum("k,knc->nc", scales, contributions[keep])
    plain = contributions[keep].sum(0)
    assert (tuned - full).norm() <= (plain - full).norm()
    best = torch.linalg.lstsq(contributions[keep].reshape(4, -1).t(), full.reshape(-1, 1)).solution.flatten()
    torch.testing.assert_close(scales, best)


def test_tuning_leaves_no_hooks_and_restores_mode():
    model = make_model("llama").train()
    scales = tune_masks(model, PruningPlan(heads={0: [0, 3]}, neurons={2: list(range(10))}), calibration(2))
    assert set(scales["heads"]) == {0} and scales["heads"][0].shape == (4,)
    assert scales["neurons"][2].shape == (27,)
    assert all(m.training for m in model.modules())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="empty"):
        tune_masks(make_model("llama"), PruningPlan(heads={0: [0, 3]}), [])


def test_moments_computed_once_give_the_same_result_as_tune_masks():
    import copy

    from tiny_models import make_inputs, make_model

    from hf_prune import apply_mask_tuning, calibration_moments, compute_importance, plan_from_sparsity, tune_masks

    model = make_model("llama")
    batches = [make_inputs(seed=s) for s in range(3)]
    plan = plan_from_sparsity(compute_importance(model, None, "l2"), head_sparsity=0.34, ffn_sparsity=0.3)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    tune_masks(a, plan, batches)
    apply_mask_tuning(b, plan, calibration_moments(model, batches))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "bert"])
def test_weight_reconstruction_recovers_a_duplicated_neuron_exactly(model_type):
    model = make_model(model_type)
    duplicate_neuron(model, layer=0, src=3, dst=7)
    data = calibration()
    dense = logits(model, data)
    solved = tune_masks(model, PruningPlan(neurons={0: [7]}), data, reconstruct="weights", ridge=1e-12)
    assert solved == {"heads": {}, "neurons": {}}
    assert layer_shapes(model)[0].ffn == layer_shapes(make_model(model_type))[0].ffn - 1
    assert (logits(model, data) - dense).abs().max() < 1e-4


def test_weight_reconstruction_fits_at_least_as_well_as_scales_and_matches_lstsq():
    from hf_prune.recovery.least_squares import reconstruct_weights

    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 6 * 4, generator=g, dtype=torch.float64) + 0.5  # (tokens, units * width), non-zero mean
    w = torch.randn(10, 6 * 4, generator=g, dtype=torch.float64)  # (out, units * width)
    bias = torch.randn(10, generator=g, dtype=torch.float64)
    xa = torch.cat([x, torch.ones(300, 1, dtype=torch.float64)], 1)
    moment = xa.t() @ xa  # (F + 1, F + 1)
    target = x @ w.t() + bias  # (tokens, out)
    keep_units = [0, 2, 5]
    columns = [u * 4 + j for u in keep_units for j in range(4)]
    new_w, new_b = reconstruct_weights(moment, w, bias, columns, conv1d=False, ridge=0.0)
    fitted = x[:, columns] @ new_w.t() + new_b
    best = torch.linalg.lstsq(xa[:, columns + [24]], target).solution  # (K + 1, out)
    torch.testing.assert_close(fitted, xa[:, columns + [24]] @ best)
    scales = least_squares_scales(unit_gram(x.t() @ x, w, units=6, conv1d=False), keep_units, ridge=0.0)
    scaled = sum(s * x[:, u * 4:(u + 1) * 4] @ w[:, u * 4:(u + 1) * 4].t() for s, u in zip(scales, keep_units)) + bias
    assert (fitted - target).norm() < (scaled - target).norm()
    # Conv1D stores (in, out): the same solution, no bias -> None
    conv_w, conv_b = reconstruct_weights(moment, w.t(), None, columns, conv1d=True, ridge=0.0)
    assert conv_b is None
    torch.testing.assert_close(conv_w, torch.linalg.lstsq(x[:, columns], x @ w.t()).solution.t())


def test_weight_reconstruction_moves_the_mean_of_a_removed_block_into_the_bias():
    model = make_model("bert")
    data = calibration()
    layout = get_layout(model)
    ffn = layer_shapes(model)[1].ffn
    outputs = []
    hook = lambda module, args, out: outputs.append(out.detach().reshape(-1, out.shape[-1]))  # noqa: E731
    down = get_submodule(get_layers(model)[1], layout.down)
    handle = down.register_forward_hook(hook)
    logits(model, data)
    handle.remove()
    real = torch.cat([b["attention_mask"].reshape(-1) for b in data]).bool()  # calibration skips padding
    dense_mean = torch.cat(outputs)[real].mean(0)
    tune_masks(model, PruningPlan(neurons={1: list(range(ffn))}), data, reconstruct="weights", ridge=0.0)
    assert layer_shapes(model)[1].ffn == 0
    torch.testing.assert_close(get_submodule(get_layers(model)[1], layout.down).bias, dense_mean, rtol=1e-4, atol=1e-5)


def test_bad_reconstruct_or_ridge_raises_and_leaves_the_model_untouched():
    model = make_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="reconstruct='bias'.*scales.*weights"):
        tune_masks(model, PruningPlan(neurons={0: [1]}), calibration(1), reconstruct="bias")
    with pytest.raises(ValueError, match="ridge must be a number >= 0"):
        tune_masks(model, PruningPlan(neurons={0: [1]}), calibration(1), reconstruct="weights", ridge=-1.0)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("reconstruct", ["scales", "weights"])
def test_moments_that_do_not_fit_the_model_raise_and_leave_it_untouched(reconstruct):
    import copy

    from hf_prune import apply_mask_tuning, calibration_moments

    model = make_model("llama")
    moments = calibration_moments(model, calibration(1))
    smaller = PruningPlan(neurons={1: [0, 1]}, heads={2: [0, 3]}).apply(copy.deepcopy(model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = PruningPlan(neurons={0: [1]})
    for bad, match in ((calibration_moments(smaller, calibration(1)), "moments do not match the model's widths"),
                       ((moments[0][:1], moments[1][:1]), "moments do not match the model's layers"),
                       (moments[0], "moments do not match the model's layers"),
                       ((moments[0], [m.float()[:-1] for m in moments[1]]), "moments do not match the model's widths")):
        with pytest.raises(ValueError, match=match):
            apply_mask_tuning(model, plan, bad, reconstruct=reconstruct)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert layer_shapes(model) == layer_shapes(make_model("llama"))
