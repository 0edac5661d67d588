#!/usr/bin/env bash
# Step 5, on the SuperLink host: run the famflow app on the connected SuperNodes. Extra
# arguments go to `flwr run` (e.g. --run-config "num-server-rounds=5 min-nodes=3").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$FAMFLOW_ROOT"
OUT="${FAMFLOW_OUT_DIR:-runs/deployment}"
rm -rf "$OUT/export"
flwr run . "$CONNECTION" --stream --run-config "out-dir=\"$OUT\"" "$@"
if [[ ! -d "$OUT/export" ]]; then
  echo "famflow: the federation did not finish (its error is in the log above)." >&2
  exit 1
fi
echo "Refreshed branches: $OUT/export; per-round records: $OUT/metrics.jsonl"
