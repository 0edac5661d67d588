# Sourced by scripts that run `flwr run`: it starts a local SuperLink that keeps running, so
# they stop, by PID, the Flower processes that were not running before them.
FLOWER_PROCESSES="${FAMFLOW_VENV:-$FAMFLOW_ROOT/.venv}/bin/(flower-superlink|flower-superexec|flwr-simulation|flwr-serverapp)"
running_before="$(pgrep -f "$FLOWER_PROCESSES" || true)"
stop_started_flower_processes() {
  local pid
  for pid in $(pgrep -f "$FLOWER_PROCESSES" || true); do
    if ! grep -qx "$pid" <<<"$running_before"; then
      kill "$pid" 2>/dev/null || true
    fi
  done
}
