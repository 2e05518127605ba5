"""Parameter and FLOPs counts of any supported model, dense or pruned.

FLOPs are counted analytically for the transformer layers only (what pruning changes), as
2 x multiply-accumulates of one forward pass over `batch_size` sequences of `seq_len` tokens (by default
128, or for a vision transformer its number of patches plus one, `default_seq_len`):

    per layer:  q/k/v/o projections   2*T*H*(h*d + 2*k*d) + 2*T*(h*d)*H
                attention scores      2*T*T*h*d   (Q K^T)   + 2*T*T*h*d (A V)
                FFN                   2*T*H*F * (2, or 3 with a SwiGLU gate)

            relative positions  2*R*h*d*(H*p + T*s)  (DeBERTa: R position rows projected p times, s score types)

with T tokens, hidden size H, h query heads, k key/value heads, head size d, FFN width F. Biases,
norms, softmax and activations are left out (they are < 1% at these sizes). `tests/test_counting.py`
checks the formula against torch's FlopCounterMode on a real forward pass.
"""

from __future__ import annotations

import torch.nn as nn

from .layouts import PositionFlops, get_layers, get_layout, get_stacks
from .shapes import layer_shapes
from .stacks import FlatView, stack_views


def count_parameters(model: nn.Module, layers_only: bool = False) -> int:
    """Number of parameters (shared/tied tensors counted once); `layers_only` counts the transformer layers
    (of every stack, for a model with several)."""
    if not layers_only:
        modules = [model]
    elif get_stacks(model) is not None:
        modules = [get_layers(view) for view in stack_views(model).values()]
    else:
        modules = [get_layers(model)]
    seen, total = set(), 0
    for p in (p for module in modules for p in module.parameters()):
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def layer_flops(hidden: int, heads: int, kv_heads: int, head_dim: int, ffn: int, seq_len: int, gated: bool,
                position: PositionFlops | None = None) -> int:
    """FLOPs of one transformer layer on one sequence of `seq_len` tokens (formula in the module docstring);
    `position`: the per-head relative-position work of DeBERTa-style attention (`position_flops`)."""
    T, H, d = seq_len, hidden, head_dim
    projections = 2 * T * H * (heads * d + 2 * kv_heads * d) + 2 * T * heads * d * H
    attention = 2 * 2 * T * T * heads * d
    feed_forward = 2 * T * H * ffn * (3 if gated else 2)
    relative = 0
    if position is not None:  # projections of the position embeddings (once per forward) and the c2p / p2c scores
        relative = 2 * position.rows * heads * d * (H * position.projections + T * position.scores)
    return projections + attention + feed_forward + relative


def position_flops(model_or_config) -> PositionFlops | None:
    """The per-head relative-position work of the model's layout (DeBERTa-v2), None for the others."""
    config = getattr(model_or_config, "config", model_or_config)
    compute = get_layout(model_or_config).position_flops
    return compute(config) if compute is not None else None


DEFAULT_SEQ_LEN = 128  # tokens of one text sequence when the caller gives none


def _pair(size) -> tuple[int, int]:
    return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))


def default_seq_len(config) -> int:
    """Tokens of one input when the caller gives none: for a vision transformer (config with image_size and
    patch_size) its patches plus the [CLS] token, (image_size // patch_size)^2 + 1; otherwise 128."""
    image, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if not image or not patch:
        return DEFAULT_SEQ_LEN
    (height, width), (patch_height, patch_width) = _pair(image), _pair(patch)
    return (height // patch_height) * (width // patch_width) + 1


def cross_attention_flops(hidden: int, heads: int, head_dim: int, seq_len: int, source_len: int) -> int:
    """FLOPs of one cross-attention block: queries from `seq_len` tokens, keys/values from `source_len` tokens."""
    T, S, H, d = seq_len, source_len, hidden, head_dim
    return 2 * T * H * heads * d + 2 * 2 * S * H * heads * d + 2 * T * heads * d * H + 2 * 2 * T * S * heads * d


def count_flops(model: nn.Module, seq_len: int | dict[str, int] | None = None, batch_size: int = 1) -> int:
    """FLOPs of the transformer layers of one forward pass (see the module docstring); `seq_len` defaults to
    `default_seq_len(model.config)`: 128 tokens, or a vision transformer's patches plus one.

    Models with several layer stacks: `seq_len` is one length for every stack or {stack: length} (encoder and
    decoder lengths; a missing stack takes its default, e.g. CLIP's vision tower its patches plus one); decoder
    layers add their cross-attention over the source stack's tokens.
    """
    if get_stacks(model) is not None:
        return _count_stack_flops(model, seq_len, batch_size)
    if seq_len is None:
        seq_len = default_seq_len(model.config)
    if seq_len <= 0 or batch_size <= 0:
        raise ValueError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
    layout = get_layout(model)
    hidden, position = model.config.hidden_size, position_flops(model)
    total = sum(
        layer_flops(hidden, s.heads, s.kv_heads, s.head_dim, s.ffn, seq_len, layout.gated, position)
        for s in layer_shapes(model)
    )
    return total * batch_size


def stack_lengths(views: dict, seq_len) -> dict[str, int]:
    """{stack: tokens} from one length for every stack or {stack: length}; a missing stack takes its default."""
    given = seq_len if isinstance(seq_len, dict) else {}
    unknown = sorted(set(given) - set(views))
    if unknown:
        raise ValueError(f"seq_len names unknown stacks {unknown}: this model has {', '.join(views)}")
    lengths = {name: given.get(name, seq_len if isinstance(seq_len, int) else default_seq_len(view.config))
               for name, view in views.items()}
    if any(isinstance(n, bool) or not isinstance(n, int) or n <= 0 for n in lengths.values()):
        raise ValueError(f"seq_len must be positive, got {lengths}")
    return lengths


FlopsEntry = tuple[int, int, int, bool, int]  # one FlatView entry: (hidden, tokens, source tokens, cross, head_dim)


def stack_flops_entries(flat, seq_len, shapes: list) -> tuple[FlopsEntry, ...]:
    """What the FLOPs of each entry of a `FlatView` depend on besides its widths: its stack's hidden size and
    tokens, the source stack's tokens for a cross-attention entry, the head size. `shapes`: `layer_shapes(flat)`."""
    lengths = stack_lengths(flat.views, seq_len)
    entries = []
    for (stack, _, cross), shape in zip(flat.keys, shapes):
        view = flat.views[stack]
        tokens = lengths[stack]
        entries.append((view.config.hidden_size, tokens, lengths.get(view.stack.source, tokens), cross, shape.head_dim))
    return tuple(entries)


def entry_flops(entry: FlopsEntry, heads: int, kv_heads: int, ffn: int, gated: bool) -> int:
    """FLOPs of one FlatView entry at these widths: a layer, or a decoder layer's cross-attention (heads only)."""
    hidden, tokens, source, cross, head_dim = entry
    if cross:
        return cross_attention_flops(hidden, heads, head_dim, tokens, source)
    return layer_flops(hidden, heads, kv_heads, head_dim, ffn, tokens, gated)


def _count_stack_flops(model: nn.Module, seq_len, batch_size: int) -> int:
    if batch_size <= 0:
        raise ValueError(f"seq_len and batch_size must be positive, got batch_size {batch_size}")
    flat = FlatView(model)
    shapes = layer_shapes(flat)
    gated = flat.hf_prune_layout.gated
    entries = stack_flops_entries(flat, seq_len, shapes)
    return batch_size * sum(entry_flops(e, s.heads, s.kv_heads, s.ffn, gated) for e, s in zip(entries, shapes))
