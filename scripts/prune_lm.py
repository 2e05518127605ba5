#!/usr/bin/env python
"""Prune a causal language model (heads, FFN neurons, layers), in the style of transformers' run_clm.py.

    python scripts/prune_lm.py --preset smollm2-wikitext          # what `make demo-lm` runs (offline assets)
    python scripts/prune_lm.py --model_name_or_path HuggingFaceTB/SmolLM2-135M \
        --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1 --params_reduction 0.2 \
        --block_size 512 --output_dir out/smollm2-pruned

Every TrainingArguments flag works. See `--help`, hf_prune/cli/lm_arguments.py (flags) and lm.py (the steps).
"""

import sys

from hf_prune.cli.lm import main

if __name__ == "__main__":
    sys.exit(main())
