#!/usr/bin/env bash
# Create one pinned virtual environment per peer pruning tool under benchmarks/peers/.venvs/<tool>.
# Idempotent: a venv whose .stamp file exists is skipped (delete the folder to rebuild it).
# torch==2.13.0 is installed FIRST in each venv (the CPU build, as in the main venv); every other package is
# pinned with == through constraints.txt (the resolved set for transformers 4.57.6).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PEERS_PYTHON:-python3.11}"
VENVS="$HERE/.venvs"
C="$HERE/constraints.txt"
TORCH="torch==2.13.0"
TRANSFORMERS="transformers==4.57.6"
mkdir -p "$VENVS"

make_venv() {  # name, then a function that installs the tool-specific packages
  local name="$1" install="$2" dir="$VENVS/$1"
  if [[ -f "$dir/.stamp" ]]; then echo "[setup] $name: ready ($dir)"; return; fi
  echo "[setup] $name: creating $dir"
  rm -rf "$dir"
  "$PY" -m venv "$dir"
  "$dir/bin/python" -m pip install -q "$TORCH"
  "$install" "$dir"
  "$dir/bin/python" -m pip freeze > "$dir/freeze.txt"
  touch "$dir/.stamp"
}

install_transformers4() {
  "$1/bin/python" -m pip install -q -c "$C" "$TRANSFORMERS" safetensors numpy tqdm
}

install_torch_pruning() {
  "$1/bin/python" -m pip install -q -c "$C" "$TRANSFORMERS" safetensors numpy tqdm "torch-pruning==1.6.1"
}

install_textpruner() {
  # textpruner's setup.py compares version strings ("3.11" < "3.8" is True as text), so on Python 3.11 it
  # asks for numpy < 1.22, which does not build there: install it without dependencies and add what it
  # really uses (torch, transformers, tqdm; sentencepiece/protobuf only for vocabulary pruning) by hand.
  "$1/bin/python" -m pip install -q -c "$C" "$TRANSFORMERS" safetensors numpy tqdm \
    "sentencepiece==0.2.3" "protobuf==7.36.2"
  "$1/bin/python" -m pip install -q --no-deps "textpruner==1.1.post2"
}

make_venv transformers4 install_transformers4
make_venv torch-pruning install_torch_pruning
make_venv textpruner install_textpruner

# the tokenised data, exported once with the main venv (which has hf_prune and its offline assets)
"$ROOT/.venv/bin/python" "$HERE/export_data.py"
# SmolLM2-135M (save_pretrained copy + a transformers-4.x config) and the WikiText-2 windows of
# benchmarks/bench_perplexity.py, for run_torch_pruning_llm.py (skipped when already exported)
if [[ "${PEERS_LLM:-1}" == 1 ]]; then
  "$ROOT/.venv/bin/python" "$HERE/export_smollm2.py"
fi
