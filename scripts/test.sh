#!/usr/bin/env bash
# Runs every test: formatting, the Rust workspace's unit and integration tests
# (the worker against the TEST MODEL under real ONNX Runtime, the test-support
# crate against a real Kubernetes control plane built from the Go module proxy).
# First run on a fresh machine builds and caches the Python environment, the
# test model and the control plane outside the repo ($MEDEMBED_CACHE).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$MEDEMBED_ROOT"

eval "$(scripts/python-env.sh --exports)"
eval "$(scripts/test-model.sh --exports)"
log "building the control plane (cached)"
export MEDEMBED_CLUSTER_BIN="$(NICE=${NICE:-0} scripts/cluster-build.sh)"

# --- gateway: Debian's redis-server for the shared-quota tests (idempotent) ---
if ! command -v redis-server >/dev/null 2>&1; then
  log "installing redis-server (Debian) for the gateway's shared-quota tests"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q redis-server >/dev/null
fi
# --- end gateway ---

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings
log "cargo test"
cargo test --workspace 2>&1
