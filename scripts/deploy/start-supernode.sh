#!/usr/bin/env bash
# Step 4, on each edge box (with famflow set up by scripts/setup.sh): connect to the SuperLink
# with the box's key; the node config says what the box is and holds. Runs in the foreground.
#   scripts/deploy/start-supernode.sh --superlink 192.168.1.10:9093 --key deploy/keys/edge-1 \
#     --ca deploy/certs/ca.crt --node-config 'tier="edge" partition-id=2 cache-dir="/data/famflow"'
# Node config keys: tier (device/edge/cloud) or memory-gb (+ rank), device (cpu/cuda/auto),
# partition-id [num-partitions] of the run's dataset or data="/path/to/own/corpus.txt",
# cache-dir (the model's safetensors cache), dp-accountant-file (DP epsilon across restarts).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
superlink="" key="" ca="$DEPLOY_DIR/certs/ca.crt" node_config="" port="${FAMFLOW_SUPERNODE_PORT:-9094}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --superlink) superlink="$2"; shift 2 ;;
    --key) key="$2"; shift 2 ;;
    --ca) ca="$2"; shift 2 ;;
    --node-config) node_config="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    *) echo "famflow: unknown argument $1 (see the usage at the top of this script)" >&2; exit 2 ;;
  esac
done
for needed in superlink key node_config; do
  if [[ -z "${!needed}" ]]; then
    echo "famflow: give --${needed//_/-} (see the usage at the top of this script)" >&2
    exit 2
  fi
done
exec flower-supernode --root-certificates "$ca" --superlink "$superlink" --port "$port" \
  --auth-supernode-private-key "$key" --node-config "$node_config"
