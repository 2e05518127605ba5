"""`export_gguf`: write a (pruned) llama-style decoder and its tokenizer as a llama.cpp model file (GGUF).

Which llama.cpp graph runs the file:
- ``llama`` when every layer has the same heads, key/value heads and FFN width (dense and uniformly pruned
  models, fewer layers allowed): llama.cpp's llama graph takes one global count of each.
- ``deci`` otherwise: its graph reads head count, key/value head count and FFN width per layer, skips
  attention in a layer with 0 heads and the FFN in a layer with FFN width 0. Two shapes it cannot run as
  written, found by running them (benchmarks/RESULTS.md), are written in an equivalent form:
  - llama.cpp takes the head size from the first layer's head count, so a first layer without heads gets one
    all-zero head (its output projection is zero, so it adds nothing);
  - a layer with heads and FFN width 0 loses its attention output in that graph (it skips the rest of the
    layer), so it gets one all-zero FFN neuron (zero down projection, so it adds nothing).
  A layer with neither heads nor neurons is the identity and is left out.

Weights are streamed: tensor descriptions are written first, then one tensor at a time is converted and
appended, so memory holds one tensor beyond the model. The file is written to a temporary name and renamed
into place: an error leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..architecture.layouts import base_model, get_layers, get_layout, get_submodule
from ..architecture.shapes import layer_shapes
from ..serialization.atomic import atomic_file

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")
EXPORTABLE_TYPES = ("llama", "mistral", "qwen2")  # what llama.cpp's llama/deci graphs compute: RMSNorm, SwiGLU,
# rotary attention with optional q/k/v biases (Qwen2's rotary layout is transformers' llama layout)

# llama.cpp pre-tokenizer names, told apart by the Hugging Face tokenizer's pre-tokenizer. The regexes are
# the split patterns the original tokenizer.json files carry.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class _Block:
    """One layer as written: the model's layer index and the widths llama.cpp sees."""

    index: int
    heads: int
    kv_heads: int
    ffn: int
    zero_head: bool = False  # one all-zero head added (first layer without heads)
    zero_neuron: bool = False  # one all-zero FFN neuron added (layer with heads and no FFN)


# ---------------------------------------------------------------------------------------------- input checks


def _gguf():
    try:
        import gguf
    except ImportError as error:  # pragma: no cover - gguf is a pinned dependency of the dev install
        raise ImportError('export_gguf needs the gguf package: pip install "hf-prune[gguf]"') from error
    return gguf


def _check_model(model: nn.Module) -> None:
    """ValueError unless llama.cpp's llama/deci graph computes what this model computes."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in EXPORTABLE_TYPES:
        raise ValueError(f"export_gguf writes llama-style decoders ({', '.join(EXPORTABLE_TYPES)}); model_type "
                         f"{model_type!r} cannot be exported to GGUF by hf_prune")
    if not hasattr(model, "lm_head"):
        raise ValueError(f"export_gguf needs a causal language model (e.g. LlamaForCausalLM), got {type(model).__name__}")
    quantized_modules = any("quantized" in type(m).__module__ for m in model.modules())
    if quantized_modules or getattr(model, "hf_quantizer", None) is not None or any(
            not p.dtype.is_floating_point for p in model.parameters()):
        raise ValueError("export_gguf needs floating-point weights, but this model is quantized: load it unquantized "
                         "(dtype=torch.float16/bfloat16/float32) and choose the GGUF dtype with dtype=")
    if any(p.device.type == "meta" for p in model.parameters()):
        raise ValueError("export_gguf: some weights are on the meta device (offloaded); load the model fully first")
    layout = get_layout(model)
    for layer in get_layers(model, layout):
        for path in (layout.o, layout.gate, layout.up, layout.down):
            if getattr(get_submodule(layer, path), "bias", None) is not None:
                raise ValueError(f"export_gguf: {path} has a bias, which llama.cpp's llama graph cannot hold "
                                 "(only q/k/v biases are supported)")
    if getattr(config, "use_sliding_window", False):
        raise ValueError("export_gguf: sliding-window attention (use_sliding_window) is not supported")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"export_gguf: llama.cpp's llama graph uses SiLU, this model uses {config.hidden_act!r}")
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", "linear", "llama3"):
        raise ValueError(f"export_gguf: rope_type {rope.get('rope_type')!r} is not supported "
                         "(supported: default, linear, llama3)")
    shapes = layer_shapes(model)
    head_dim = shapes[0].head_dim if shapes else 0
    if head_dim % 2:
        raise ValueError(f"export_gguf: head size {head_dim} is odd; rotary embeddings need an even head size")


def _rope_parameters(config) -> dict:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return dict(params)


def _check_dtype(dtype: str) -> str:
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    return dtype


# ---------------------------------------------------------------------------------------------- layer plan


def _blocks(model: nn.Module) -> list[_Block]:
    """The layers to write, with the padding llama.cpp's per-layer graph needs (see the module docstring)."""
    blocks = []
    for index, shape in enumerate(layer_shapes(model)):
        if shape.heads == 0 and shape.ffn == 0:
            continue  # the identity
        blocks.append(_Block(index, shape.heads, shape.kv_heads, shape.ffn))
    if not blocks:
        return blocks
    if _is_uniform(blocks):
        return blocks
    first = blocks[0]
    if first.heads == 0:
        blocks[0] = _Block(first.index, 1, 1, first.ffn, zero_head=True)
    return [_Block(b.index, b.heads, b.kv_heads, 1, b.zero_head, True) if b.heads and not b.ffn else b
            for b in blocks]


def _is_uniform(blocks: list[_Block]) -> bool:
    widths = {(b.heads, b.kv_heads, b.ffn) for b in blocks}
    return len(widths) == 1 and all(w > 0 for w in next(iter(widths)))


# ---------------------------------------------------------------------------------------------- tensors


def _rotary_rows(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Reorder q/k projection rows from transformers' rotary layout (pairs i, i + d/2) to llama.cpp's (2i, 2i + 1)."""
    out_features, in_features = weight.shape
    # (heads * head_dim, in) -> (heads, 2, head_dim / 2, in) -> (heads, head_dim / 2, 2, in) -> back
    halves = weight.reshape(out_features // head_dim, 2, head_dim // 2, in_features)
    return halves.transpose(1, 2).reshape(out_features, in_features)


def _weight(layer: nn.Module, path: str, head_dim: int | None = None) -> torch.Tensor:
    """A projection weight of `layer`; with head_dim, its rows reordered for llama.cpp's rotary layout."""
    weight = get_submodule(layer, path).weight.detach()
    return weight if head_dim is None else _rotary_rows(weight, head_dim)


def _bias(layer: nn.Module, path: str, head_dim: int | None = None) -> torch.Tensor:
    """A projection bias of `layer`; with head_dim, reordered for llama.cpp's rotary layout like the rows."""
    bias = get_submodule(layer, path).bias.detach()
    return bias if head_dim is None else _rotary_rows(bias[:, None], head_dim)[:, 0]


def _tensors(model: nn.Module, blocks: list[_Block], head_dim: int) -> list[tuple[str, Callable[[], torch.Tensor]]]:
    """(GGUF name, function returning the tensor) for every tensor, in file order."""
    layout = get_layout(model)
    base = base_model(model)
    layers = get_layers(model, layout)
    hidden = model.config.hidden_size
    entries = [("token_embd.weight", partial(_weight, base, "embed_tokens"))]
    rope = _rope_freqs(model.config, head_dim)
    if rope is not None:
        entries.append(("rope_freqs.weight", partial(torch.clone, rope)))
    for out, block in enumerate(blocks):
        layer = layers[block.index]
        name = f"blk.{out}."
        if block.heads:
            entries.append((name + "attn_norm.weight", partial(_weight, layer, "input_layernorm")))
        if block.zero_head:
            entries += [(name + f"attn_{part}.weight", partial(torch.zeros, head_dim, hidden)) for part in "qkv"]
            entries.append((name + "attn_output.weight", partial(torch.zeros, hidden, head_dim)))
        elif block.heads:
            entries += [(name + "attn_q.weight", partial(_weight, layer, layout.q, head_dim)),
                        (name + "attn_k.weight", partial(_weight, layer, layout.k, head_dim)),
                        (name + "attn_v.weight", partial(_weight, layer, layout.v)),
                        (name + "attn_output.weight", partial(_weight, layer, layout.o))]
            if get_submodule(layer, layout.q).bias is not None:  # Qwen2
                entries += [(name + "attn_q.bias", partial(_bias, layer, layout.q, head_dim)),
                            (name + "attn_k.bias", partial(_bias, layer, layout.k, head_dim)),
                            (name + "attn_v.bias", partial(_bias, layer, layout.v))]
        if block.ffn:
            entries.append((name + "ffn_norm.weight", partial(_weight, layer, "post_attention_layernorm")))
        if block.zero_neuron:
            entries += [(name + "ffn_gate.weight", partial(torch.zeros, 1, hidden)),
                        (name + "ffn_up.weight", partial(torch.zeros, 1, hidden)),
                        (name + "ffn_down.weight", partial(torch.zeros, hidden, 1))]
        elif block.ffn:
            entries += [(name + "ffn_gate.weight", partial(_weight, layer, layout.gate)),
                        (name + "ffn_up.weight", partial(_weight, layer, layout.up)),
                        (name + "ffn_down.weight", partial(_weight, layer, layout.down))]
    entries.append(("output_norm.weight", partial(_weight, base, "norm")))
    if not getattr(model.config, "tie_word_embeddings", False):
        entries.append(("output.weight", partial(_weight, model, "lm_head")))
    return entries


def _rope_freqs(config, head_dim: int) -> torch.Tensor | None:
    """llama3-style rope scaling as llama.cpp takes it: per-frequency divisors (head_dim / 2,) of the base."""
    rope = _rope_parameters(config)
    if rope.get("rope_type") != "llama3":
        return None
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    base = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    plain = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    return (plain / scaled.double()).float()


def _encode(gguf, tensor: torch.Tensor, kind) -> np.ndarray:
    """The raw array of one tensor in the GGML type `_encode_kind` chose for it."""
    types = gguf.GGMLQuantizationType
    array = tensor.to(torch.float32).cpu().numpy()
    if kind == types.F32:
        return np.ascontiguousarray(array)
    if kind == types.F16:
        return array.astype(np.float16)
    return gguf.quants.quantize(array, kind)  # Q8_0, BF16


# ---------------------------------------------------------------------------------------------- tokenizer


def _backend(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"export_gguf needs a fast (tokenizers-backed) tokenizer, got {type(tokenizer).__name__}")
    return json.loads(backend.to_str())


def _is_byte_level(spec: dict) -> bool:
    text = json.dumps({key: spec.get(key) for key in ("pre_tokenizer", "decoder")})
    return spec.get("model", {}).get("type") == "BPE" and '"ByteLevel"' in text


def _pre_from_gguf_source(tokenizer) -> str | None:
    """The pre-tokenizer name recorded in the GGUF file the tokenizer was loaded from, if it was."""
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    if not folder.is_dir():
        return None
    gguf = _gguf()
    for file in sorted(folder.glob("*.gguf")):
        try:
            reader = gguf.GGUFReader(file)
        except Exception:  # not a readable GGUF: not the source
            continue
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        pre = reader.fields.get("tokenizer.ggml.pre")
        if tokens is not None and pre is not None and len(tokens.data) == len(tokenizer):
            return str(pre.contents())
    return None


def _pre_from_spec(spec: dict) -> str | None:
    """llama.cpp's pre-tokenizer name for the tokenizer.json pre-tokenizers it is known to match."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [part.get("type") for part in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        pattern = (parts[0].get("pattern") or {}).get("Regex")
        return {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}.get(pattern)
    return None


def _pre_tokenizer(tokenizer, spec: dict, pre_tokenizer: str | None) -> str:
    name = pre_tokenizer or _pre_from_gguf_source(tokenizer) or _pre_from_spec(spec)
    if name is None:
        raise ValueError("export_gguf cannot tell which llama.cpp pre-tokenizer matches this tokenizer: pass "
                         "pre_tokenizer=NAME (a name llama.cpp's llama-vocab.cpp knows, e.g. 'llama-bpe', 'qwen2')")
    return name


def _token_types(gguf, tokenizer) -> tuple[list[str], list[int]]:
    """Token strings in id order and their GGUF types (control for special added tokens)."""
    kinds = gguf.TokenType
    added = {i: token for i, token in tokenizer.added_tokens_decoder.items()}
    tokens = list(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
    types = []
    for i, token in enumerate(tokens):
        if token is None:
            raise ValueError(f"export_gguf: the tokenizer has no token for id {i}; its ids must be contiguous")
        if i in added:
            types.append(int(kinds.CONTROL if added[i].special else kinds.USER_DEFINED))
        else:
            types.append(int(kinds.NORMAL))
    return tokens, types


def _adds_bos(tokenizer) -> bool:
    flag = getattr(tokenizer, "add_bos_token", None)
    if isinstance(flag, bool):
        return flag
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def _check_tokenizer(tokenizer, vocab_size: int) -> dict:
    if tokenizer is None:
        raise ValueError("export_gguf needs the model's tokenizer: pass tokenizer=, or a model loaded from a folder "
                         "that holds one")
    spec = _backend(tokenizer)
    if not _is_byte_level(spec):
        raise ValueError("export_gguf writes byte-level BPE tokenizers (Llama 3, SmolLM, Qwen2, Mistral Nemo ...); "
                         "this tokenizer is not one (SentencePiece tokenizers are not supported yet)")
    if len(tokenizer) > vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's embedding only {vocab_size}: "
                         "is it the model's tokenizer?")
    return spec


def _write_tokenizer(writer, gguf, tokenizer, spec: dict, pre: str, vocab_size: int) -> None:
    tokens, types = _token_types(gguf, tokenizer)
    for i in range(len(tokens), vocab_size):  # embedding rows beyond the tokenizer (padding)
        tokens.append(f"[PAD{i}]")
        types.append(int(gguf.TokenType.UNUSED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token_id, add in ((tokenizer.bos_token_id, writer.add_bos_token_id),
                          (tokenizer.eos_token_id, writer.add_eos_token_id),
                          (tokenizer.unk_token_id, writer.add_unk_token_id),
                          (tokenizer.pad_token_id, writer.add_pad_token_id)):
        if token_id is not None:
            add(int(token_id))
    writer.add_add_bos_token(_adds_bos(tokenizer))
    pre_spec = spec.get("pre_tokenizer") or {}
    writer.add_add_space_prefix(bool(pre_spec.get("add_prefix_space", False)))
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


# ---------------------------------------------------------------------------------------------- metadata


def _write_metadata(writer, gguf, model: nn.Module, blocks: list[_Block], head_dim: int, arch: str, dtype: str):
    config = model.config
    per_layer = arch != "llama"
    name = getattr(config, "_model_name_or_path", None) or Path(str(config._name_or_path or "model")).name
    writer.add_name(str(name))
    writer.add_block_count(len(blocks))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    heads = [b.heads for b in blocks]
    kv = [b.kv_heads for b in blocks]
    ffn = [b.ffn for b in blocks]
    writer.add_feed_forward_length(ffn if per_layer else ffn[0])
    writer.add_head_count(heads if per_layer else heads[0])
    writer.add_head_count_kv(kv if per_layer else kv[0])
    rope = _rope_parameters(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(int(file_types[dtype]))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)  # else llama.cpp takes hidden / (layer 0's heads), wrong once heads are pruned
    writer.add_value_length(head_dim)
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


# ---------------------------------------------------------------------------------------------- entry point


def _load(model_or_path, tokenizer):
    """(model, tokenizer) from a model object or a folder saved by save_pruned / save_pretrained."""
    if isinstance(model_or_path, (str, os.PathLike)):
        folder = Path(model_or_path)
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder} is not a saved model folder (no config.json)")
        from ..serialization.loading import load_pruned

        model = load_pruned(folder, dtype=torch.float32)
        if tokenizer is None:
            tokenizer = _tokenizer_from(folder)
        return model, tokenizer
    if not isinstance(model_or_path, nn.Module) or not hasattr(model_or_path, "config"):
        raise ValueError(f"export_gguf takes a transformers model or a folder path, got {type(model_or_path).__name__}")
    if tokenizer is None:
        source = Path(str(getattr(model_or_path.config, "_name_or_path", "") or ""))
        tokenizer = _tokenizer_from(source) if source.is_dir() else None
    return model_or_path, tokenizer


def _tokenizer_from(folder: Path):
    """The tokenizer saved in `folder` (tokenizer.json, or a GGUF file's), or None when there is none."""
    from transformers import AutoTokenizer

    if any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return AutoTokenizer.from_pretrained(folder)
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return AutoTokenizer.from_pretrained(folder, gguf_file=ggufs[0].name)
    return None


def export_gguf(model_or_path, path: str | os.PathLike, dtype: str = "f16", tokenizer=None,
                pre_tokenizer: str | None = None, overwrite: bool = False) -> Path:
    """Write a llama-style decoder (dense or pruned: uniform, non-uniform, fewer layers) as a llama.cpp GGUF file.

    model_or_path: a LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM, or a folder saved by
    `save_pruned`/`save_pretrained`.
    dtype: "f32", "f16", "bf16" or "q8_0" for the 2-D weights (norms stay float32); a q8_0 tensor whose rows
    are not a multiple of 32 long is written as f16, with a warning naming it.
    tokenizer: by default the one saved where the model was loaded from. pre_tokenizer: llama.cpp's name for
    the tokenizer's pre-tokenizer, when it cannot be told from the tokenizer (ValueError says so).
    Every check runs before anything is written; the file appears complete or not at all. Returns the path.
    """
    gguf = _gguf()
    dtype = _check_dtype(dtype)
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: choose another file name or pass overwrite=True")
    model, tokenizer = _load(model_or_path, tokenizer)
    _check_model(model)
    spec = _check_tokenizer(tokenizer, int(model.config.vocab_size))
    pre = _pre_tokenizer(tokenizer, spec, pre_tokenizer)
    shapes = layer_shapes(model)
    head_dim = shapes[0].head_dim
    blocks = _blocks(model)
    if not blocks:
        raise ValueError("every layer of this model lost all its heads and neurons: there is nothing to export")
    arch = "llama" if _is_uniform(blocks) else "deci"
    entries = _tensors(model, blocks, head_dim)

    fallbacks: list[str] = []
    with torch.no_grad(), atomic_file(path, overwrite=overwrite) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        _write_metadata(writer, gguf, model, blocks, head_dim, arch, dtype)
        _write_tokenizer(writer, gguf, tokenizer, spec, pre, int(model.config.vocab_size))
        kinds = []
        for name, get in entries:  # descriptions first: sizes follow from shapes and types alone
            shape = tuple(get().shape)
            kinds.append(_encode_kind(gguf, shape, dtype))
            if dtype == "q8_0" and len(shape) == 2 and kinds[-1] != gguf.GGMLQuantizationType.Q8_0:
                fallbacks.append(name)
            nbytes = _nbytes(gguf, shape, kinds[-1])
            writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=kinds[-1])  # element shape
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for (_, get), kind in zip(_progress(entries), kinds):
            writer.write_tensor_data(_encode(gguf, get(), kind))
        writer.close()
    if fallbacks:
        warnings.warn(f"export_gguf: {len(fallbacks)} tensor(s) have rows whose length is not a multiple of 32 and "
                      f"were written as f16 instead of q8_0: {', '.join(fallbacks[:6])}"
                      f"{' ...' if len(fallbacks) > 6 else ''}", stacklevel=2)
    return path


def _encode_kind(gguf, shape: tuple[int, ...], dtype: str):
    """The GGML type of a tensor of this shape: 1-D tensors stay float32 (as llama.cpp's converters keep them), a
    q8_0 tensor whose rows are not a multiple of the block (32) becomes f16."""
    types = gguf.GGMLQuantizationType
    if len(shape) == 1 or dtype == "f32":
        return types.F32
    if dtype == "q8_0":
        return types.Q8_0 if shape[-1] % gguf.GGML_QUANT_SIZES[types.Q8_0][0] == 0 else types.F16
    return types.BF16 if dtype == "bf16" else types.F16


def _nbytes(gguf, shape: tuple[int, ...], kind) -> int:
    block, size = gguf.GGML_QUANT_SIZES[kind]
    elements = int(np.prod(shape))
    return elements // block * size


def _progress(entries):
    from tqdm.auto import tqdm

    return tqdm(entries, desc="Writing GGUF", unit="tensor", leave=False)
