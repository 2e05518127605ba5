#!/usr/bin/env bash
# Peer pruning tools side by side: set up the pinned venvs, then run every tool and merge its rows into
# benchmarks/peers/results.json. PEERS_RECOVERY=0 skips the 100-step recovery fine-tuning rows; PEERS_LLM=0
# skips the SmolLM2 perplexity run (run_torch_pruning_llm.py, results_perplexity.json).
# Finished runs are cached in benchmarks/peers/.cache/runs-<tool>.json (delete them to rerun from scratch).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # shared machine: see common.latency_ratios
bash "$HERE/setup.sh" || exit 1
REC=()
[[ "${PEERS_RECOVERY:-1}" == 1 ]] && REC=(--recovery)
status=0
start=$SECONDS
# hf_prune itself runs in the project's venv (transformers 5), on the same data, budget and measurements
for tool in hf_prune:run_hf_prune.py transformers4:run_transformers4.py torch-pruning:run_torch_pruning.py \
            textpruner:run_textpruner.py; do
  venv="${tool%%:*}" script="${tool#*:}"
  python="$HERE/.venvs/$venv/bin/python"
  [[ "$venv" == hf_prune ]] && python="$HERE/../../.venv/bin/python"
  t0=$SECONDS
  echo "[run] $venv: $script ${REC[*]}"
  (cd "$HERE" && "$python" "$script" "${REC[@]}") || { echo "[run] $venv FAILED"; status=1; }
  echo "[run] $venv: $((SECONDS - t0)) s"
done
# hf_prune again with the units re-chosen by reconstruction error (same budget; retrain-free row only)
(cd "$HERE" && "$HERE/../../.venv/bin/python" run_hf_prune.py --reselect) || { echo "[run] hf_prune --reselect FAILED"; status=1; }
# SmolLM2-135M perplexity (issue 8, part 2 peer row): Torch-Pruning Taylor, retrain-free, 10/20/30% of layer
# parameters; writes benchmarks/peers/results_perplexity.json. PEERS_LLM=0 skips it.
if [[ "${PEERS_LLM:-1}" == 1 ]]; then
  t0=$SECONDS
  echo "[run] torch-pruning (SmolLM2): run_torch_pruning_llm.py"
  (cd "$HERE" && "$HERE/.venvs/torch-pruning/bin/python" run_torch_pruning_llm.py) || { echo "[run] torch-pruning (SmolLM2) FAILED"; status=1; }
  echo "[run] torch-pruning (SmolLM2): $((SECONDS - t0)) s"
fi
echo "[run] all tools: $((SECONDS - start)) s; results in $HERE/results.json and results_perplexity.json"
exit $status
