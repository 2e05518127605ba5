"""`hf-prune-export` (`scripts/export_model.py`): write a saved (pruned) model for llama.cpp or ONNX Runtime.

    hf-prune-export gguf out/smollm2-pruned smollm2-pruned.gguf --dtype q8_0
    hf-prune-export onnx out/minilm-pruned onnx/minilm-pruned --quantize_int8

MODEL is a folder written by `save_pruned` or `save_pretrained` (its tokenizer is exported with it).
Bad input prints one `hf-prune-export: error: ...` line, exits with status 2 and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..deploy.gguf_export import GGUF_DTYPES, export_gguf

PROG = "hf-prune-export"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Export a saved (pruned) model for a serving runtime.")
    formats = parser.add_subparsers(dest="format", required=True, metavar="{gguf,onnx}")

    gguf = formats.add_parser("gguf", help="llama.cpp model file (llama-style decoders)")
    gguf.add_argument("model", help="folder saved by save_pruned / save_pretrained")
    gguf.add_argument("output", help="the .gguf file to write")
    gguf.add_argument("--dtype", default="f16", choices=GGUF_DTYPES, help="type of the 2-D weights (default f16)")
    gguf.add_argument("--pre_tokenizer", default=None,
                      help="llama.cpp's pre-tokenizer name, when it cannot be told from the tokenizer")
    gguf.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    onnx = formats.add_parser("onnx", help="ONNX Runtime folder (model.onnx, config, tokenizer)")
    onnx.add_argument("model", help="folder saved by save_pruned / save_pretrained")
    onnx.add_argument("output", help="the folder to write")
    onnx.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    onnx.add_argument("--quantize_int8", action="store_true", help="also write ONNX Runtime dynamic int8 weights")
    onnx.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser


def run(args: argparse.Namespace) -> str:
    """Do the export described by parsed arguments; return the path written."""
    if not os.path.isdir(args.model):
        raise ValueError(f"MODEL must be a saved model folder; {args.model!r} is not a folder")
    if args.format == "gguf":
        path = export_gguf(args.model, args.output, dtype=args.dtype, pre_tokenizer=args.pre_tokenizer,
                           overwrite=args.overwrite)
    else:
        from ..deploy.onnx_export import export_onnx

        path = export_onnx(args.model, args.output, opset=args.opset, quantize_int8=args.quantize_int8,
                           overwrite=args.overwrite)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one clear error line and exit status 2 on bad input (HF_PRUNE_DEBUG=1: traceback)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)  # argparse itself exits with status 2 on unknown flags
    try:
        print(f"wrote {run(args)}")
    except (ValueError, OSError, ImportError) as err:
        if os.environ.get("HF_PRUNE_DEBUG"):
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
