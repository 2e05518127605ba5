#!/usr/bin/env python
"""Export a saved (pruned) model for llama.cpp (GGUF) or ONNX Runtime; also installed as `hf-prune-export`.

    python scripts/export_model.py gguf out/smollm2-pruned smollm2-pruned.gguf --dtype q8_0
    python scripts/export_model.py onnx out/minilm-pruned onnx/minilm-pruned --quantize_int8
"""

import sys

from hf_prune.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
