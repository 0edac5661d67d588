# Sourced by every famflow script: Flower stays offline, quiet and inside the repo.
FAMFLOW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FAMFLOW_ROOT
export FLWR_HOME="${FLWR_HOME:-$FAMFLOW_ROOT/.flwr}"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
# flwr run starts flower-superlink from PATH: use the project's environment.
export PATH="${FAMFLOW_VENV:-$FAMFLOW_ROOT/.venv}/bin:$PATH"
# Ray (Flower's simulation engine) warns once per run about a future default of its own that
# famflow does not depend on; keep the demo's console to famflow's and Flower's lines.
RAY_FILTER="ignore::FutureWarning:ray._private.worker"
if [[ ",${PYTHONWARNINGS:-}," != *",$RAY_FILTER,"* ]]; then
  export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}$RAY_FILTER"
fi
