"""Export a (pruned or dense) model to ONNX, for onnxruntime + tokenizers deployment without hf_prune.

`export_onnx` writes one folder: `model.onnx` (float32, dynamic batch and sequence axes), `config.json`
(with the `hf_prune` entry of a pruned model), the tokenizer files and, with `quantize_int8=True`,
`model_int8.onnx` as well. Every layer keeps its own head count and FFN width in the graph, so
non-uniform pruning (and layers that lost every head or every FFN neuron) export as they run in PyTorch.

Exporter: torch's own. `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript) is tried first:
it is torch's maintained exporter and handles every model family hf_prune supports (checked against
PyTorch's outputs in tests/test_export_onnx.py), including the bias-only forwards of emptied blocks.
If it fails on a model, the TorchScript exporter (`dynamo=False`, `dynamic_axes`) is tried once, with a
warning, as torch's older path; if that fails too, both errors are raised. optimum is not used.

onnx, onnxscript and onnxruntime are optional (`pip install "hf-prune[onnx]"`) and imported here only.
"""

from __future__ import annotations

import copy
import inspect
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..architecture.layouts import get_layout
from ..serialization.atomic import atomic_directory
from ..serialization.loading import load_pruned, resolve_model_class

MIN_OPSET = 18  # the dynamo exporter's own opset (torchlib); older opsets go through a lossy version converter
EXTERNAL_DATA_BYTES = 1536 * 2**20  # larger weights go to model.onnx.data (one protobuf file is capped at 2 GiB)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
HEAD_OUTPUTS = {  # task-class name suffix -> output names
    "ForSequenceClassification": ("logits",),
    "ForTokenClassification": ("logits",),
    "ForQuestionAnswering": ("start_logits", "end_logits"),
    "ForMaskedLM": ("logits",),
    "ForCausalLM": ("logits",),
    "LMHeadModel": ("logits",),
}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json",
    "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "chat_template.jinja", "chat_template.json",
)
INSTALL_HINT = 'pip install "hf-prune[onnx]"'


# ----------------------------------------------------------------------------- argument checks


def _check_folder(folder, overwrite: bool) -> Path:
    """The target folder: refused early (as `atomic_directory` would) when it is a file or non-empty without overwrite."""
    if not isinstance(folder, (str, os.PathLike)):
        raise ValueError(f"folder must be a path, got {type(folder).__name__}")
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder: choose a folder path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty: choose another folder or pass overwrite=True")
    return path


def _check_opset(opset, highest: int | None = None) -> None:
    """opset: None (the exporter's default) or an int from MIN_OPSET to the newest the installed onnx knows."""
    if opset is None:
        return
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise ValueError(f"opset must be an int (>= {MIN_OPSET}) or None, got {opset!r}")
    if opset < MIN_OPSET or (highest is not None and opset > highest):
        top = f"to {highest}" if highest is not None else "or more"
        raise ValueError(f"opset {opset} is not supported: use {MIN_OPSET} {top} (the installed onnx's newest), or None")


def _import_onnx(quantize: bool) -> int:
    """Import the optional ONNX stack (ImportError with the install hint if missing); the newest opset onnx knows."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's dynamo exporter needs it)

        if quantize:
            import onnxruntime  # noqa: F401
            import onnxruntime.quantization  # noqa: F401
    except ImportError as err:
        raise ImportError(f"ONNX export needs onnx, onnxscript and onnxruntime: {INSTALL_HINT} ({err})") from err
    return onnx.defs.onnx_opset_version()


def _output_names(cls: type, config) -> tuple[str, ...]:
    """ONNX output names for a model class: last_hidden_state (base model) or its head's logits; ValueError otherwise."""
    from transformers import AutoModel

    model_type = getattr(config, "model_type", None)
    get_layout(config)  # ValueError naming model_type when hf_prune does not know the architecture
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"export_onnx does not export encoder-decoder models ({model_type!r})")
    if AutoModel._model_mapping.get(type(config), None) is cls:
        return ("last_hidden_state",)
    for suffix, names in HEAD_OUTPUTS.items():
        if cls.__name__.endswith(suffix):
            return names
    raise ValueError(
        f"export_onnx cannot export {cls.__name__} ({model_type!r}): it exports base models and "
        f"{', '.join('*' + s for s in HEAD_OUTPUTS)} models, with inputs of shape (batch, sequence)"
    )


def _check_model(model: nn.Module) -> None:
    """Refuse models the exporter would mishandle: int8 PyTorch modules, weights on the meta device."""
    if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules()):
        raise ValueError("export_onnx needs the float model, not a torch int8 one: export it and pass quantize_int8=True")
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("the model has weights on the meta device: load it fully (no device_map offloading) before export")


def _source_folder(path) -> tuple[Path, tuple[str, ...]]:
    """A saved model folder and its output names, checked from config.json before loading anything."""
    from transformers import AutoConfig

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is not a saved model folder (no config.json): pass a model or a folder from save_pruned")
    config = AutoConfig.from_pretrained(folder)
    cls = resolve_model_class(config)
    return folder, _output_names(cls, config)


# ----------------------------------------------------------------------------- the traced forward


class OnnxForward(nn.Module):
    """The model's forward with plain tensors in and out: (input_ids, attention_mask[, token_type_ids]) -> outputs."""

    def __init__(self, model: nn.Module, input_names: tuple[str, ...], output_names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output_names = output_names
        self.no_cache = "use_cache" in inspect.signature(model.forward).parameters

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs = dict(zip(self.input_names, inputs))  # each (batch, sequence)
        if self.no_cache:
            kwargs["use_cache"] = False  # decoders: outputs for the whole sequence, no KV cache in or out
        out = self.model(**kwargs)
        return tuple(getattr(out, name) for name in self.output_names)


def _input_names(model: nn.Module) -> tuple[str, ...]:
    """input_ids, attention_mask, and token_type_ids when the model takes them and has more than one segment type."""
    takes_segments = "token_type_ids" in inspect.signature(model.forward).parameters
    return INPUTS if takes_segments and getattr(model.config, "type_vocab_size", 0) > 1 else INPUTS[:2]


def _example_inputs(model: nn.Module, names: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    """Example tensors of shape (2, 8): batch and sequence > 1 and different, so neither is traced as a constant."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, int(model.config.vocab_size), (2, 8), generator=generator)  # (B, T)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -2:] = 0  # a padded row, so masking is traced as data, not skipped
    tensors = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids)}
    return tuple(tensors[name] for name in names)


@contextmanager
def _float_cpu_eval(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode on CPU in float32: itself (modes restored afterwards) or, if it is not, a converted copy."""
    params = list(model.parameters())
    if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params):
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            yield model
        finally:
            for module, training in modes.items():
                module.training = training
    else:
        yield copy.deepcopy(model).float().cpu().eval()


# ----------------------------------------------------------------------------- writing


def _export_graph(wrapper: OnnxForward, path: Path, opset: int | None, large: bool) -> str:
    """Write the ONNX graph to `path`; the exporter that succeeded ('dynamo' or 'torchscript')."""
    args = _example_inputs(wrapper.model, wrapper.input_names)
    try:
        _export_dynamo(wrapper, args, path, opset, large)
        return "dynamo"
    except Exception as dynamo_err:  # any tracing failure: try the older exporter once
        for leftover in path.parent.glob(path.name + "*"):
            leftover.unlink()
        warnings.warn(f"the dynamo ONNX exporter failed ({type(dynamo_err).__name__}: {str(dynamo_err)[:300]}); "
                      "trying the TorchScript exporter", stacklevel=3)
        try:
            _export_torchscript(wrapper, args, path, opset)
        except Exception as ts_err:
            raise RuntimeError(f"both torch ONNX exporters failed on {type(wrapper.model).__name__}: dynamo: "
                               f"{type(dynamo_err).__name__}: {dynamo_err}; TorchScript: {ts_err}") from ts_err
        return "torchscript"


def _export_dynamo(wrapper: OnnxForward, args: tuple, path: Path, opset: int | None, large: bool) -> None:
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.onnx.export(
            wrapper, args, str(path), dynamo=True, opset_version=opset, input_names=list(wrapper.input_names),
            output_names=list(wrapper.output_names), dynamic_shapes=(tuple(axes for _ in args),),  # one spec per *inputs
            external_data=large, verbose=False,
        )


def _export_torchscript(wrapper: OnnxForward, args: tuple, path: Path, opset: int | None) -> None:
    names = [*wrapper.input_names, *wrapper.output_names]
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings and the exporter's deprecation notice
        outputs = wrapper(*args)
        for name, out in zip(wrapper.output_names, outputs):
            if out.dim() < 3:  # e.g. classification logits (batch, labels): no sequence axis
                axes[name] = {0: "batch"}
        torch.onnx.export(wrapper, args, str(path), dynamo=False, opset_version=opset, input_names=list(wrapper.input_names),
                          output_names=list(wrapper.output_names), dynamic_axes=axes)


def _write_config(model: nn.Module, folder: Path) -> None:
    """config.json of the model (with its `hf_prune` entry), naming its class; the model's own config is not touched."""
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    config.save_pretrained(folder)


def _write_tokenizer(folder: Path, tokenizer, source: Path | None) -> None:
    """The tokenizer's files: saved from `tokenizer`, else copied from the source folder when it has them."""
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
        return
    if source is not None:
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, folder / name)


def _empty_weight_nodes(path: Path) -> list[str]:
    """Names of MatMul/Gemm nodes whose weight has no element (blocks pruned to width 0): the quantizer mishandles them."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    empty = {init.name for init in graph.initializer if 0 in init.dims}
    return [node.name for node in graph.node if node.op_type in ("MatMul", "Gemm") and empty.intersection(node.input)]


def _quantize_int8(source: Path, target: Path, large: bool) -> None:
    """onnxruntime dynamic int8 quantization: int8 weights (QInt8, one scale per output column), activations per call.

    Only MatMul/Gemm with a constant weight are quantized (ORT's dynamic default), as torch's dynamic int8
    quantizes nn.Linear. Zero-size weights of emptied blocks stay float: the quantizer mishandles them (they
    hold no data anyway). Per-channel scales with 7-bit weights (reduce_range, which keeps uint8 x int8 kernels
    from saturating on CPUs without VNNI) kept MiniLM's validation predictions closest to float32 (31 of 2014
    flipped, against 63 per-tensor 8-bit and 139 per-tensor 7-bit; benchmarks/bench_onnx.py).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                     use_external_data_format=large, nodes_to_exclude=_empty_weight_nodes(source))


def export_onnx(model_or_path, folder, opset: int | None = None, quantize_int8: bool = False, tokenizer=None,
                overwrite: bool = False) -> Path:
    """Export a model (or a folder saved by `save_pruned` / `save_pretrained`) to `folder/model.onnx`; return `folder`.

    Inputs `input_ids`, `attention_mask` (and `token_type_ids` when the model has several segment types), all
    int64 (batch, sequence) with both axes dynamic. Output `logits` for task models (`start_logits`, `end_logits`
    for question answering), `last_hidden_state` for base models; decoders give logits for every position,
    without KV cache. Encoders and decoders of every model type hf_prune supports; others raise ValueError.
    The folder also gets config.json and the tokenizer (`tokenizer=`, else copied from the source folder).
    quantize_int8: also write `model_int8.onnx` (onnxruntime dynamic quantization, int8 weights); model.onnx
    stays the float32 reference, so both are kept. Weights over 1.5 GiB go to `model.onnx.data` next to it.
    Everything is written atomically; bad arguments raise before anything is written. A model passed in is
    left as it was (mode, device, dtype, weights); one not in float32 on CPU is exported from a converted copy.
    """
    target = _check_folder(folder, overwrite)
    _check_opset(opset)
    source = None
    if isinstance(model_or_path, (str, os.PathLike)):
        source, output_names = _source_folder(model_or_path)
    elif isinstance(model_or_path, nn.Module) and hasattr(model_or_path, "config"):
        output_names = _output_names(type(model_or_path), model_or_path.config)
        _check_model(model_or_path)
    else:
        raise ValueError(f"model_or_path must be a transformers model or a saved model folder, got "
                         f"{type(model_or_path).__name__}")
    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
        raise ValueError(f"tokenizer must have save_pretrained (a transformers tokenizer), got {type(tokenizer).__name__}")
    _check_opset(opset, highest=_import_onnx(quantize_int8))
    model = load_pruned(source) if source is not None else model_or_path
    large = sum(p.numel() * 4 for p in model.parameters()) > EXTERNAL_DATA_BYTES  # float32 bytes
    with atomic_directory(target, overwrite=overwrite) as tmp:
        with _float_cpu_eval(model) as ready:
            wrapper = OnnxForward(ready, _input_names(ready), output_names).eval()
            _export_graph(wrapper, tmp / "model.onnx", opset, large)
        _write_config(model, tmp)
        _write_tokenizer(tmp, tokenizer, source)
        if quantize_int8:
            _quantize_int8(tmp / "model.onnx", tmp / "model_int8.onnx", large)
    return target
