#!/usr/bin/env bash
# Quickstart 1: set up everything, then run the main job: the federated simulation of the
# SmolLM2 family (6 clients: device/edge/cloud) on Shakespeare, offline. Extra arguments go to
# `flwr run` (e.g. --run-config "num-server-rounds=1").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$FAMFLOW_ROOT/scripts/setup.sh"
VENV="${FAMFLOW_VENV:-$FAMFLOW_ROOT/.venv}"
cd "$FAMFLOW_ROOT"

# Model cache and corpus first, so that no client converts or downloads them concurrently.
famflow prepare smollm2-135m
famflow data prepare shakespeare --quiet
famflow info smollm2-135m --rank 8

# `flwr run` starts a local SuperLink that keeps running: stop what it started, by PID.
FLOWER_PROCESSES="$VENV/bin/(flower-superlink|flower-superexec|flwr-simulation|flwr-serverapp)"
running_before="$(pgrep -f "$FLOWER_PROCESSES" || true)"
stop_started_flower_processes() {
  local pid
  for pid in $(pgrep -f "$FLOWER_PROCESSES" || true); do
    if ! grep -qx "$pid" <<<"$running_before"; then
      kill "$pid" 2>/dev/null || true
    fi
  done
}
trap stop_started_flower_processes EXIT
rm -rf runs/federation/export  # the previous run's, so that the check below sees this run's
flwr run . --stream --federation-config "num-supernodes=6" "$@"

# `flwr run --stream` exits 0 even when the ServerApp stopped on an error: check its output.
if [[ ! -d runs/federation/export/exit-10 ]]; then
  echo "famflow: the federation did not finish (its error is in the log above)." >&2
  exit 1
fi

famflow generate smollm2-135m --exit 10 --adapters runs/federation/export/exit-10 \
  --prompt "What is the capital of France?" --max-new-tokens 16
