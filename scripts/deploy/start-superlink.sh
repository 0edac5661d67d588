#!/usr/bin/env bash
# Step 2, on the SuperLink host: TLS and SuperNode authentication on, one port for SuperNodes
# and `flwr run`; writes the `edge-boxes` connection into $FLWR_HOME/config.toml. Runs in the
# foreground: stop it with Ctrl-C (or kill its PID; it stops its SuperExec).
#   FAMFLOW_SUPERLINK_HOST=0.0.0.0 scripts/deploy/start-superlink.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
HOST="${FAMFLOW_SUPERLINK_HOST:-127.0.0.1}"
PORT="${FAMFLOW_SUPERLINK_PORT:-9093}"
ADDRESS="${FAMFLOW_SUPERLINK_ADDRESS:-127.0.0.1:$PORT}"  # as flwr run on this host reaches it
CERTS="$DEPLOY_DIR/certs"
if [[ ! -f "$CERTS/server.pem" ]]; then
  echo "famflow: no SuperLink certificate in $CERTS: run scripts/deploy/make-certs.sh first." >&2
  exit 1
fi
famflow deploy connection "$CONNECTION" --address "$ADDRESS" --ca "$CERTS/ca.crt"
exec flower-superlink \
  --ssl-ca-certfile "$CERTS/ca.crt" --ssl-certfile "$CERTS/server.pem" \
  --ssl-keyfile "$CERTS/server.key" --enable-supernode-auth \
  --host "$HOST" --port "$PORT" --disable-runtime-dependency-installation
