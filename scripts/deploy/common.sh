# Sourced by the deploy scripts: famflow's environment, and where certificates and keys live
# (git-ignored, so that `flwr run` never bundles them into the app).
source "$(dirname "${BASH_SOURCE[0]}")/../env.sh"
DEPLOY_DIR="${FAMFLOW_DEPLOY_DIR:-$FAMFLOW_ROOT/deploy}"
CONNECTION="${FAMFLOW_CONNECTION:-edge-boxes}"
