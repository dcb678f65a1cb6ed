#!/usr/bin/env bash
# Throughput of the FULL-SIZE MedImageInsight architecture (random weights: the
# real model's cost, meaningless embeddings) on this machine's CPUs: the worker
# against the managed service's serving stack (azmlinfsrv + the benchmark's
# tests/bench/baseline/score.py) and a bare ONNX Runtime session, images/s and
# texts/s at 1, 8 and 64 clients (tests/bench/full_model.py).
# Writes tests/bench/results/full-model.md (with the machine), .json and .png.
#
#   scripts/bench-full-model.sh                      # about 15 minutes on 2 cores
#   scripts/bench-full-model.sh --image-window-s 30  # any full_model.py flag
#   BENCH_MODEL=/path/to/export scripts/bench-full-model.sh   # another export
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$MEDEMBED_ROOT"

# The baseline's environment (scripts/lib.sh builds and caches it).
venv="$(bench_baseline_venv)"

eval "$(scripts/python-env.sh --exports)"
eval "$(scripts/export-env.sh --exports)"
model="${BENCH_MODEL:-$(scripts/arch-model.sh --full)}"

log "building the release worker"
cargo build --release -p medembed-worker >&2
target="${CARGO_TARGET_DIR:-$MEDEMBED_ROOT/target}"
results="$MEDEMBED_ROOT/tests/bench/results"
logs="$target/bench-full-model-logs"
mkdir -p "$logs" "$results"

started="$(date -u '+%Y-%m-%d %H:%M UTC')"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
"$MEDEMBED_EXPORT_PYTHON" tests/bench/full_model.py \
  --worker-bin "$target/release/medembed-worker" \
  --model-dir "$model" \
  --ort-library "$ORT_DYLIB_PATH" \
  --azmlinfsrv "$venv/bin/azmlinfsrv" \
  --baseline-script tests/bench/baseline/score.py \
  --log-dir "$logs" \
  --out-md "$logs/report.md" --out-json "$results/full-model.json" --out-png "$results/full-model.png" \
  "$@"
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

out="$results/full-model.md"
mem_gib="$(awk '/MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)"
"$MEDEMBED_EXPORT_PYTHON" - "$model/export-report.json" > "$logs/model.md" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["check"]
print(f"- Model: {r['architecture']}; {'REDUCED' if r['reduced'] else 'full size'}, weights {r['weights']}, {r['dtype']}")
print(f"  - parameters: image tower {r['parameters']['image'] / 1e6:.1f} M, text tower {r['parameters']['text'] / 1e6:.1f} M")
print(f"  - compute: {r['gflops_per_image']:.0f} GFLOPs per image (480x480), {r['gflops_per_text']:.1f} GFLOPs per text (77 tokens) ({r['flops_note']})")
print(f"  - export check, torch fp32 vs ONNX Runtime: cosine image {c['image_min_cosine']:.9f}, text {c['text_min_cosine']:.9f}")
PY
{
  echo "# Full-size MedImageInsight on CPU: worker, baseline, bare session"
  echo
  echo "Written by \`scripts/bench-full-model.sh${*:+ $*}\`; rerun that command to reproduce."
  echo "The model is the **real architecture with RANDOM WEIGHTS** (scripts/export-model.sh,"
  echo "from the medimageinsights 0.1.1 model code): it costs what the real model costs, its"
  echo "embeddings mean nothing. Each request carries one image (a 1024x1024 8-bit PNG) or"
  echo "one text. How the figures are taken is in tests/bench/full_model.py's docstring."
  echo
  echo "## Machine"
  echo
  echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) CPUs available"
  echo "- Memory: ${mem_gib} GiB; kernel $(uname -r)"
  echo "- Date: ${started}; commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- worker/src worker/Cargo.toml tests/bench scripts || echo ' (with uncommitted changes)')"
  echo "- Load average (1/5/15 min) before: ${load_before}; after: ${load_after}. The machine is shared"
  echo "  with other people's builds and tests: the \"other cores\" column shows what they took."
  echo "- ONNX Runtime $(basename "$ORT_DYLIB_PATH" | sed 's/^libonnxruntime\.so\.//') (worker, bare session and baseline alike)"
  cat "$logs/model.md"
  echo "- GPU: none on this machine; scripts/gpu-bench.sh is the prepared GPU run. No GPU figures here."
  echo
  echo "![throughput against concurrency](full-model.png)"
  echo
  cat "$logs/report.md"
  echo
  echo "## Reading these figures"
  echo
  echo "- items/s is measured between answers (whole batches); \"answers in window\" says how many"
  echo "  it rests on: with seconds per image, a few batches. Treat differences under ~15% as noise."
  echo "- Latency at 8 and 64 clients: the window opens at the first answer and is short, so p50/p99"
  echo "  are those of the first answers (queue filling), not steady state, which in a closed loop is"
  echo "  about clients / throughput (64 / 0.25 images/s = about 4 minutes per image request)."
  echo "- \"restarted after\": the server was still working on abandoned requests after the window"
  echo "  and was restarted before the next run (no run pays for the previous one's backlog)."
} > "$out"
log "report written to $out"
