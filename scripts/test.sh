#!/usr/bin/env bash
# Quickstart 2: set up everything, then run the whole test suite (slow tests included).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$FAMFLOW_ROOT/scripts/setup.sh"
cd "$FAMFLOW_ROOT"
VENV="${FAMFLOW_VENV:-$FAMFLOW_ROOT/.venv}"
"$VENV/bin/ruff" check .
"$VENV/bin/python" -m pytest "$@"
