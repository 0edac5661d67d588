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
source "$FAMFLOW_ROOT/scripts/flower_processes.sh"
started="$(mktemp)"  # this run's export must be newer than this file
trap 'stop_started_flower_processes; rm -f "$started"' EXIT
# A run directory holds one run: an earlier demo's run is moved aside (runs/federation.<run id>).
flwr run . --stream --federation-config "num-supernodes=6" --run-config "move-old-run=true" "$@"

# `flwr run --stream` exits 0 even when the ServerApp stopped on an error: check its output.
if [[ ! runs/federation/export/exit-10 -nt "$started" ]]; then
  echo "famflow: the federation did not finish (its error is in the log above)." >&2
  exit 1
fi

famflow report runs/federation >/dev/null
echo "famflow: plots and a summary of the run: runs/federation/report/ (report.md, *.png)"

# The refreshed branches, each on its own: the clients trained them on Shakespeare's plays.
PROMPT=$'ROMEO:\nBut soft, what light through yonder window breaks?\n'
for exit in 10 20 30; do
  echo "famflow: exit $exit of the refreshed family continues the prompt:"
  famflow generate smollm2-135m --exit "$exit" --adapters "runs/federation/export/exit-$exit" \
    --prompt "$PROMPT" --raw --max-new-tokens 24
done

# The refreshed device branch outside famflow: a plain transformers checkpoint (and GGUF for
# llama.cpp), then the three lines of the README in a Python that never imports famflow.
famflow export runs/federation --exit 10 --format hf,gguf
echo "famflow: exit 10 in plain transformers (runs/federation/export/exit-10/hf):"
"$VENV/bin/python" - <<'PY'
from transformers import pipeline
device = pipeline("text-generation", model="runs/federation/export/exit-10/hf")
print(device("ROMEO:\nBut soft, what light", max_new_tokens=24, do_sample=False)[0]["generated_text"])
PY
