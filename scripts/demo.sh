#!/usr/bin/env bash
# Quickstart 1: set up everything, then run the main job on the offline default model.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$FAMFLOW_ROOT/scripts/setup.sh"
FAMFLOW="${FAMFLOW_VENV:-$FAMFLOW_ROOT/.venv}/bin/famflow"
"$FAMFLOW" prepare smollm2-135m
"$FAMFLOW" info smollm2-135m --rank 8
"$FAMFLOW" generate smollm2-135m --prompt "What is the capital of France?" --max-new-tokens 16
"$FAMFLOW" data prepare shakespeare --quiet
# Exit adapters + LoRA make the device branch's exit decodable: watch its perplexity fall.
"$FAMFLOW" train-local smollm2-135m --branch 10 --steps 30 --max-examples 3000 --eval-blocks 32 \
  --out "$FAMFLOW_ROOT/runs/demo-train-local"
"$FAMFLOW" generate smollm2-135m --exit 10 --adapters "$FAMFLOW_ROOT/runs/demo-train-local" \
  --prompt "What is the capital of France?" --max-new-tokens 16
