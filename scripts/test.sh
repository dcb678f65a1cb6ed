#!/usr/bin/env bash
# Runs every test: formatting, clippy, and the Rust workspace's unit and
# integration tests (the worker against the TEST MODEL under real ONNX
# Runtime, the operator and the gateway against a real Kubernetes control
# plane built from the Go module proxy, Redis-backed quotas against a real
# redis-server, the chart end to end, the managed endpoint's client patterns
# in Python), then a short smoke run of every fuzz target (coverage-guided,
# libFuzzer, from the committed seed corpora).
#
# Set-up first: the host's Debian packages, then what is cached outside the
# repo ($MEDEMBED_CACHE): the Python environment, the test model, the control
# plane. Then one cargo build of the whole workspace, shared with the demo
# and with the binaries the tests start (the same package set and targets as
# `cargo test --workspace`, so nothing is built twice).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$MEDEMBED_ROOT"

log "set-up: host packages, Python environment, test model, control plane (cached)"
scripts/host-packages.sh
eval "$(scripts/python-env.sh --exports)"
eval "$(scripts/test-model.sh --exports)"
export MEDEMBED_CLUSTER_BIN="$(NICE=${NICE:-0} scripts/cluster-build.sh)"

log "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path tests/fuzz/Cargo.toml -- --check
log "cargo build (the whole workspace, every target)"
cargo build --workspace --all-targets
log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings
log "cargo test"
cargo test --workspace 2>&1
log "fuzz smoke: every target for 15 s (scripts/fuzz.sh SECONDS for longer runs)"
FUZZ_SEED=1 scripts/fuzz.sh 15
