#!/usr/bin/env bash
# The GPU check: famflow's tests marked `gpu`, then a one-round federation of the default
# SmolLM2 family on the GPU (6 simulated nodes sharing it, bf16 autocast), within 5 minutes.
# It needs a CUDA build of torch in famflow's environment, e.g. (with a CUDA index configured)
#   FAMFLOW_TORCH_SPEC="torch==2.13.0" bash scripts/setup.sh && bash benchmarks/gpu_check.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$FAMFLOW_ROOT"
VENV="${FAMFLOW_VENV:-$FAMFLOW_ROOT/.venv}"
export PATH="$VENV/bin:$PATH"

python - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"famflow: torch {torch.__version__} sees no CUDA GPU: install a CUDA build of "
             "torch into famflow's environment (FAMFLOW_TORCH_SPEC, scripts/setup.sh).")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY

start=$(date +%s)
python -m pytest -q -m gpu tests/test_gpu.py
python -m pytest -q tests/test_weights.py
echo "famflow: gpu tests took $(( $(date +%s) - start )) s"

famflow prepare smollm2-135m
famflow data prepare shakespeare --quiet
source "$FAMFLOW_ROOT/scripts/flower_processes.sh"
trap stop_started_flower_processes EXIT
start=$(date +%s)
# Ray hides the GPU from simulated nodes that reserve none: each reserves a sixth of it.
timeout 300 flwr run . --stream \
  --federation-config "num-supernodes=6 client-resources-num-gpus=0.16" \
  --run-config "num-server-rounds=1 device='cuda' train-precision='bf16' out-dir='runs/gpu-check' move-old-run=true"
echo "famflow: one-round federation on the GPU took $(( $(date +%s) - start )) s"
famflow report runs/gpu-check | tail -n 20
