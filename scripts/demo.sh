#!/usr/bin/env bash
# Quickstart 1: set up everything, then run the main job on the offline default model.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$FAMFLOW_ROOT/scripts/setup.sh"
FAMFLOW="${FAMFLOW_VENV:-$FAMFLOW_ROOT/.venv}/bin/famflow"
"$FAMFLOW" prepare smollm2-135m
"$FAMFLOW" info smollm2-135m --rank 8
"$FAMFLOW" generate smollm2-135m --prompt "What is the capital of France?" --max-new-tokens 16
