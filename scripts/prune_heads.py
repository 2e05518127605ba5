#!/usr/bin/env python
"""Prune attention heads and FFN neurons on a GLUE-style task, in the style of transformers' run_glue.py.

    python scripts/prune_heads.py --preset demo
    python scripts/prune_heads.py --model_name_or_path bert-base-uncased --task_name sst2 \
        --head_sparsity 0.5 --ffn_sparsity 0.5 --output_dir out/sst2-pruned --num_train_epochs 1

Every TrainingArguments flag works. See `--help`, hf_prune/cli/arguments.py (flags) and app.py (the steps);
presets are JSON files in hf_prune/cli/presets/.
"""

import sys

from hf_prune.cli import main

if __name__ == "__main__":
    sys.exit(main())
