#!/usr/bin/env bash
# The demo: the whole system on this machine. A real Kubernetes control plane
# (built from source, cached), the Helm chart installed on it (operator x2,
# gateway), the sample specs applied (an endpoint in key mode, a deployment of
# two workers, a client), and the API brief's example request answered through
# the gateway with the endpoint's key. The model is the TEST MODEL (random
# weights: its embeddings mean nothing). Everything stays up until Ctrl-C;
# `scripts/demo.sh --exit` stops as soon as the answer is printed.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$MEDEMBED_ROOT"
eval "$(scripts/python-env.sh --exports)"
eval "$(scripts/test-model.sh --exports)"
log "building the control plane (cached)"
export MEDEMBED_CLUSTER_BIN="$(scripts/cluster-build.sh)"
log "building the workspace (one cargo build, shared with scripts/test.sh)"
# The package set and targets of `cargo test --workspace`: the demo's own
# lookup of the binaries is then a no-op, and so is the tests' build.
cargo build --workspace --all-targets
exec "${CARGO_TARGET_DIR:-target}/debug/medembed-demo" "$@"
