#!/usr/bin/env bash
# GPU figures for the full-size MedImageInsight architecture on an NVIDIA host
# (prepared for an H200): the worker with the CUDA and the TensorRT providers
# against a bare onnxruntime-gpu session and against the compute limit (FLOPs
# per image x the GPU's peak), images/s at batch 1..64 and GPU memory
# (tests/bench/gpu_bench.py). Writes tests/bench/results/gpu.md and gpu.json.
#
#   scripts/gpu-bench.sh                       # CUDA and TensorRT fp16
#   scripts/gpu-bench.sh --providers cuda,tensorrt-fp32,tensorrt-fp16
#   scripts/gpu-bench.sh --cpu-check           # checks the script itself on a CPU-only machine
#
# Inputs are made once and cached, outside the measured time:
#   - the full-size export (scripts/arch-model.sh --full; BENCH_MODEL=DIR for another),
#   - the release worker (cargo; BENCH_WORKER_BIN=PATH for a prebuilt one),
#   - onnxruntime-gpu, the CUDA 13 libraries and TensorRT (tests/bench/gpu-requirements.txt,
#     a cached venv; GPU_WHEELS=DIR installs them from local wheels on an offline host).
# The measured part is sized to finish in under 10 minutes on an H200 with
# CUDA + TensorRT fp16: TensorRT builds its engines first (a few minutes; cached in
# $MEDEMBED_CACHE/tensorrt, so a second run starts at once).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$MEDEMBED_ROOT"

cpu_check=0
for a in "$@"; do [ "$a" = "--cpu-check" ] && cpu_check=1; done
if [ "$cpu_check" = 0 ] && ! nvidia-smi -L >/dev/null 2>&1; then
  log "no NVIDIA GPU here (nvidia-smi -L failed); --cpu-check runs the script on the CPU provider"
  exit 1
fi

target="${CARGO_TARGET_DIR:-$MEDEMBED_ROOT/target}"
results="$MEDEMBED_ROOT/tests/bench/results"
logs="$target/gpu-bench-logs"
mkdir -p "$logs" "$results"

if [ "$cpu_check" = 1 ]; then
  # The CPU environment and the reduced export: checks the code path, not the GPU.
  eval "$(scripts/python-env.sh --exports)"
  eval "$(scripts/export-env.sh --exports)"
  python="$MEDEMBED_EXPORT_PYTHON"
  lib="$ORT_DYLIB_PATH"
  model="${BENCH_MODEL:-$(scripts/arch-model.sh --reduced)}"
  out_md="$logs/gpu-cpu-check.md" out_json="$logs/gpu-cpu-check.json"
else
  req="$MEDEMBED_ROOT/tests/bench/gpu-requirements.txt"
  venv="$(WHEELS="${GPU_WHEELS:-}" cached_venv gpu-venv "$req" "GPU benchmark's")"
  python="$venv/bin/python"
  lib=$(ls "$venv"/lib/python*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n1)
  # The provider libraries find CUDA, cuDNN and TensorRT through the loader path.
  sp=$(ls -d "$venv"/lib/python*/site-packages)
  LD_LIBRARY_PATH="$(ls -d "$sp"/nvidia/*/lib "$sp"/tensorrt_libs 2>/dev/null | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
  model="${BENCH_MODEL:-$(scripts/arch-model.sh --full)}"
  out_md="$logs/gpu.md" out_json="$results/gpu.json"
fi

worker="${BENCH_WORKER_BIN:-}"
if [ -z "$worker" ]; then
  log "building the release worker"
  cargo build --release -p medembed-worker >&2
  worker="$target/release/medembed-worker"
fi

args=()
for a in "$@"; do [ "$a" = "--cpu-check" ] || args+=("$a"); done
[ "$cpu_check" = 1 ] && args+=(--cpu-check --batches 1,2,4 --bare-s 1 --worker-s 3)
started="$(date -u '+%Y-%m-%d %H:%M UTC')"
PYTHONUNBUFFERED=1 "$python" tests/bench/gpu_bench.py \
  --model-dir "$model" --worker-bin "$worker" --ort-library "$lib" \
  --trt-cache "$MEDEMBED_CACHE/tensorrt" --log-dir "$logs" \
  --out-md "$out_md" --out-json "$out_json" "${args[@]}"

if [ "$cpu_check" = 0 ]; then
  {
    echo "# GPU benchmark: full-size MedImageInsight (random weights)"
    echo
    echo "Written by \`scripts/gpu-bench.sh${*:+ $*}\` on ${started}, commit $(git rev-parse --short HEAD)."
    echo "Host: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -n1); onnxruntime-gpu $(basename "$lib" | sed 's/^libonnxruntime\.so\.//')."
    echo
    cat "$out_md"
  } > "$results/gpu.md"
  log "report written to $results/gpu.md"
fi
