#!/usr/bin/env bash
# Step 1, on the SuperLink host: a CA and a SuperLink certificate for every name or address
# the SuperNodes and `flwr run` use, then one SuperNode key pair per box.
#   scripts/deploy/make-certs.sh --host 192.168.1.10 --host link.lan --node device-1 --node edge-1
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
hosts=() nodes=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --host) hosts+=(--host "$2"); shift 2 ;;
    --node) nodes+=("$2"); shift 2 ;;
    *) echo "famflow: unknown argument $1: use --host ADDRESS and --node NAME" >&2; exit 2 ;;
  esac
done
[[ ${#hosts[@]} -gt 0 ]] || hosts=(--host 127.0.0.1 --host localhost)
famflow deploy certs "${hosts[@]}" --out "$DEPLOY_DIR/certs"
if [[ ${#nodes[@]} -gt 0 ]]; then
  famflow deploy node-key "${nodes[@]}" --out "$DEPLOY_DIR/keys"
fi
echo "Copy $DEPLOY_DIR/certs/ca.crt and each box's key pair (deploy/keys/NAME, NAME.pub) to that box."
