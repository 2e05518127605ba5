"""Dynamic int8 quantization for CPU inference, after (structured or unstructured) pruning.

`quantize_dynamic_int8` wraps `torch.ao.quantization.quantize_dynamic`: every nn.Linear gets int8
weights (per-tensor scale) and activations are quantized on the fly, per batch. torch 2.10+ marks
`torch.ao.quantization` deprecated in favour of torchao (not a dependency of hf_prune); the eager
dynamic path still works on torch 2.13, so its DeprecationWarning (and the quantized-tensor creation
UserWarning) are silenced inside this call only. Conv1D projections (GPT-2) are first converted to
equivalent nn.Linear modules so that they are quantized too. The result is for inference: it cannot
be trained, and saves with `torch.save(model.state_dict())`, not safetensors.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def conv1d_to_linear(model: nn.Module) -> nn.Module:
    """Replace every transformers Conv1D (weight (in, out)) by an equivalent nn.Linear, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape  # Conv1D stores (in, out)
                linear = nn.Linear(n_in, n_out, bias=child.bias is not None, dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())  # (out, in)
                    if child.bias is not None:
                        linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
    return model


def quantize_dynamic_int8(model: nn.Module, inplace: bool = False) -> nn.Module:
    """An int8 dynamically quantized copy of `model` (all nn.Linear, Conv1D included) for CPU inference, in eval mode.

    Works on dense, head-pruned and unstructured-pruned models alike (zeros stay zeros in int8 but take
    the same space). `inplace=False` (default) leaves `model` untouched.
    """
    target = model if inplace else copy.deepcopy(model)
    conv1d_to_linear(target)
    target.eval().cpu().float()  # the dynamic int8 kernels run on CPU with float32 activations
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated.*", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(target, {nn.Linear}, dtype=torch.qint8, inplace=True)
