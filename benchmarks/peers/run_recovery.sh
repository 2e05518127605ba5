#!/usr/bin/env bash
# Issue 18 part 2: recovery training after pruning, hf_prune against the peers, over 5 calibration slices.
# Writes benchmarks/results/recovery.json (rows as results.json, plus standard errors and the training
# loss at the first and last steps); make_tables.py turns it into RESULTS.md's "recovery training" section.
#   hf_prune (with and without re-selection): the peers' recipe and warmup + decay + distillation (common.RECIPES),
#   with re-selection also the same distillation at lr 3e-5;
#   Torch-Pruning: the peers' recipe and hf_prune's distillation recipe; TextPruner: the peers' recipe;
#   transformers 4.x prune_heads: the peers' recipe.
# Finished runs are cached in .cache/runs-<tool>.json (shared with run.sh: same slices, same results).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MAIN="$HERE/../../.venv/bin/python"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" PEERS_SLICES=5 PEERS_RESULTS="$HERE/../results/recovery.json"
PEERS_LLM=0 bash "$HERE/setup.sh" || exit 1
status=0
step() {  # python, script, flags...
  local t0=$SECONDS
  echo "[recovery] ${*:2}"
  (cd "$HERE" && "$@") || { echo "[recovery] ${*:2} FAILED"; status=1; }
  echo "[recovery] ${*:2}: $((SECONDS - t0)) s"
}
step "$MAIN" run_hf_prune.py --recovery --recipes peers,distill
step "$MAIN" run_hf_prune.py --reselect --recovery --recipes peers,distill,distill-low-lr
step "$HERE/.venvs/torch-pruning/bin/python" run_torch_pruning.py --recovery --recipes peers,distill
step "$HERE/.venvs/textpruner/bin/python" run_textpruner.py --recovery --recipes peers
step "$HERE/.venvs/transformers4/bin/python" run_transformers4.py --recovery --recipes peers
exit $status
