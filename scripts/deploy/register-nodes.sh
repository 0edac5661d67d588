#!/usr/bin/env bash
# Step 3, next to the running SuperLink: register each box's public key; only registered keys
# may connect. Prints each node ID.
#   scripts/deploy/register-nodes.sh deploy/keys/device-1.pub deploy/keys/edge-1.pub
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ $# -eq 0 ]]; then
  echo "famflow: name the public keys to register, e.g. deploy/keys/edge-1.pub" >&2
  exit 2
fi
for key in "$@"; do
  flwr supernode register "$key" "$CONNECTION"
done
