#!/usr/bin/env bash
# The worker's benchmark: images/s and p50/p99 latency at 1, 8 and 64 concurrent
# clients, side by side with the managed service's own serving stack (PyPI
# azureml-inference-server-http running tests/bench/baseline/score.py with PIL and
# onnxruntime) and a bare ONNX Runtime session fed preprocessed tensors, plus the
# worker's memory. Prints the report and writes it, with the machine it ran on, to
# tests/bench/results/worker.md.
#
#   scripts/bench-worker.sh                       # the full run (about 8 minutes)
#   scripts/bench-worker.sh --duration-s 5 --concurrency 1,8   # any bench-worker flag
#   BENCH_OUT=/tmp/x.md scripts/bench-worker.sh   # write the report elsewhere
#
# It runs on the TEST MODEL (random weights): its inference is tiny, so the figures
# measure serving (HTTP, JSON, base64, decoding, preprocessing, batching), not the
# real model's compute. The baseline's Python environment is separate from
# scripts/python-env.sh's and cached under $MEDEMBED_CACHE, keyed by a hash of its
# pinned requirements (tests/bench/baseline/requirements.txt).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cd "$MEDEMBED_ROOT"
venv="$(bench_baseline_venv)"
req="$MEDEMBED_ROOT/tests/bench/baseline/requirements.txt"

eval "$(scripts/python-env.sh --exports)"
eval "$(scripts/test-model.sh --exports)"

log "building the release worker and the benchmark"
cargo build --release -p medembed-worker -p medembed-bench >&2
target="${CARGO_TARGET_DIR:-$MEDEMBED_ROOT/target}"
out="${BENCH_OUT:-$MEDEMBED_ROOT/tests/bench/results/worker.md}"
logs="$target/bench-worker-logs"
mkdir -p "$logs" "$(dirname "$out")"

cmd=("$target/release/bench-worker"
  --worker-bin "$target/release/medembed-worker"
  --model-dir "$MEDEMBED_TEST_MODEL"
  --ort-library "$ORT_DYLIB_PATH"
  --azmlinfsrv "$venv/bin/azmlinfsrv"
  --baseline-script tests/bench/baseline/score.py
  --log-dir "$logs"
  --markdown "$logs/report.md"
  "$@")
log "running: scripts/bench-worker.sh $*"
started="$(date -u '+%Y-%m-%d %H:%M UTC')"
"${cmd[@]}"

mem_gib="$(awk '/MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)"
{
  echo "# Worker benchmark"
  echo
  echo "Written by \`scripts/bench-worker.sh${*:+ $*}\`; rerun that command to reproduce."
  echo "The model is the **TEST MODEL** (MedImageInsight's exact inputs and outputs,"
  echo "random weights, under a million parameters): inference is a small fraction of"
  echo "each request, so these figures measure the serving path (HTTP, JSON, base64,"
  echo "PNG decoding, resizing, normalising, batching), not the real model's compute."
  echo
  echo "## Machine"
  echo
  echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) CPUs available"
  echo "- Memory: ${mem_gib} GiB; kernel $(uname -r)"
  echo "- Date: ${started}; commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- worker api tests/bench scripts/bench-worker.sh || echo ' (with uncommitted changes)')"
  echo "- ONNX Runtime $(basename "$ORT_DYLIB_PATH" | sed 's/^libonnxruntime\.so\.//'), the same library for every measurement;"
  echo "  azureml-inference-server-http $(sed -n 's/^azureml-inference-server-http==//p' "$req")"
  echo "- The machine is shared with other people's builds and tests: the \"other cores\""
  echo "  column shows how much CPU they took during each run. Throughput and latency are"
  echo "  noisy; CPU ms per image is not affected by the sharing. Runs alternate worker,"
  echo "  baseline, worker, ..., so slow spells hit both."
  echo
  cat "$logs/report.md"
} > "$out"
log "report written to $out"
