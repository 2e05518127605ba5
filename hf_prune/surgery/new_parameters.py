"""Parameters a cut creates (T5's per-layer copies of its position-bias table) join the optimizer that trains
the model, next to their counterparts in the other layers."""

from __future__ import annotations

import re

from torch import nn


def _same_in_every_layer(name: str) -> str:
    """A parameter's name with its layer indices blanked: "encoder.block.#.layer.#.SelfAttention.q.weight"."""
    return re.sub(r"\.\d+\.", ".#.", name)


def adopt_new_parameters(optimizer, model: nn.Module, known: set[int]) -> None:
    """Add the model's trainable parameters whose id is not in `known` to `optimizer` (a cut can create some: T5's
    per-layer copies of its position-bias table). Each joins the group of the parameter of the same name in another
    layer, and a group that grows keeps the model's parameter order, as the Trainer builds its groups, so a resumed
    run loads the optimizer's state onto the same parameters. One with no such counterpart is left out."""
    named = list(model.named_parameters())
    new = [(name, p) for name, p in named if id(p) not in known and p.requires_grad]
    if not new:
        return
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    groups = {_same_in_every_layer(name): group_of[id(p)] for name, p in named if id(p) in group_of}
    order = {id(p): i for i, (_, p) in enumerate(named)}
    grown = {}
    for name, p in new:
        group = groups.get(_same_in_every_layer(name))
        if group is not None:
            group["params"].append(p)
            grown[id(group)] = group
    for group in grown.values():
        group["params"].sort(key=lambda q: order.get(id(q), len(order)))
