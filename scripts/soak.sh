#!/usr/bin/env bash
# The soak benchmark: MINUTES (default 30) of steady, closed-loop load through
# the gateway to two workers, every process sampled every 10 s (RSS, open file
# descriptors, threads) with the p50/p99 latency of each 10 s window. Writes
# tests/bench/results/soak.md (the report: RSS slope per hour after a 5-minute
# warm-up, p99 drift, requests and errors by kind, verdicts), soak.json (the
# raw samples) and soak.png (RSS per process and latency over time).
#
#   scripts/soak.sh               # the full run (30 minutes)
#   scripts/soak.sh 3             # a short run (the slope and drift read n/a)
#   SOAK_OUT=/tmp/soak scripts/soak.sh 10   # write the results elsewhere
#   SOAK_CONCURRENCY=4 SOAK_WARMUP_MINUTES=5  # the defaults
#
# Every process is a separate release binary on 127.0.0.1 (random ports): two
# workers serving the TEST MODEL (random weights, so the figures measure the
# serving path) and the gateway in static config file mode with key auth, a
# client quota far above the load, metrics, and the audit log to a file. The
# requests are synthetic X-ray-like images and fixed prompts, never patient
# data. Run it on a quiet machine: other work moves the latency.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$MEDEMBED_ROOT"

MINUTES="${1:-${SOAK_MINUTES:-30}}"
WARMUP="${SOAK_WARMUP_MINUTES:-5}"
CONCURRENCY="${SOAK_CONCURRENCY:-4}"
OUT="${SOAK_OUT:-$MEDEMBED_ROOT/tests/bench/results}"
MAX_BODY=$((8 * 1024 * 1024))

eval "$(scripts/python-env.sh --exports)"
eval "$(scripts/test-model.sh --exports)"

log "building the release gateway, worker and soak benchmark"
cargo build --release -p medembed-worker -p medembed-gateway -p medembed-bench >&2
TARGET="${CARGO_TARGET_DIR:-$MEDEMBED_ROOT/target}/release"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${KEEP_LOGS:-}" ]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { # url pid name
  for _ in $(seq 600); do
    kill -0 "$2" 2>/dev/null || { echo "the $3 exited; its log:" >&2; tail -n 20 "$WORK/$3.log" >&2; exit 1; }
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ] && return 0
    sleep 0.2
  done
  echo "the $3 was not ready after 120 s" >&2; exit 1
}

W1_PORT="$(free_port)"; W2_PORT="$(free_port)"; GW_PORT="$(free_port)"
WPIDS=()
for n in 1 2; do
  port="W${n}_PORT"
  ORT_DYLIB_PATH="$ORT_DYLIB_PATH" MEDEMBED_TERMINATION_LOG="$WORK/worker-$n.termination" \
    "$TARGET/medembed-worker" --model-dir "$MEDEMBED_TEST_MODEL" --listen "127.0.0.1:${!port}" \
    --execution-provider cpu --log-format text >"$WORK/worker-$n.log" 2>&1 &
  PIDS+=($!); WPIDS+=($!)
done

KEY="soak-key-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
HASH="$(printf %s "$KEY" | sha256sum | cut -c1-64)"
cat > "$WORK/gateway.yaml" <<YAML
endpoints:
  - name: soak
    auth: {mode: Key}
    requestSettings: {requestTimeoutMs: 60000, maxBodyBytes: $MAX_BODY}
    deployments: {blue: {workers: ["127.0.0.1:$W1_PORT", "127.0.0.1:$W2_PORT"]}}
clients:
  - name: soak
    endpoints: [soak]
    keys: {primarySha256: "$HASH"}
    quota: {requestsPerMinute: 100000000, imagesPerMinute: 100000000, bytesPerMinute: 100000000000, concurrentRequests: 100000, maxRowsPerRequest: 1024}
YAML
"$TARGET/medembed-gateway" --config-file "$WORK/gateway.yaml" --listen "127.0.0.1:$GW_PORT" \
  --audit-log "$WORK/audit.jsonl" --log-format text >"$WORK/gateway.log" 2>&1 &
GW_PID=$!; PIDS+=($GW_PID)

wait_ready "http://127.0.0.1:$W1_PORT/readyz" "${WPIDS[0]}" worker-1
wait_ready "http://127.0.0.1:$W2_PORT/readyz" "${WPIDS[1]}" worker-2
wait_ready "http://127.0.0.1:$GW_PORT/readyz" "$GW_PID" gateway
URL="http://127.0.0.1:$GW_PORT/endpoints/soak/score"
body='{"input_data":{"columns":["image","text"],"index":[0],"data":[["","x-ray chest anteroposterior Pneumonia"]]},"params":{}}'
for _ in $(seq 50); do
  code="$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' --data-binary "$body" "$URL")"
  [ "$code" = 200 ] && break
  sleep 0.2
done
[ "$code" = 200 ] || { echo "the gateway answered $code to a good request; its log:" >&2; tail -n 20 "$WORK/gateway.log" >&2; exit 1; }
metrics="$(curl -sf "http://127.0.0.1:$GW_PORT/metrics" || true)"
grep -q '^medembed_gateway' <<<"$metrics" || { echo "no gateway metrics" >&2; exit 1; }

mkdir -p "$OUT"
dirty="$(git diff --quiet HEAD -- gateway worker api tests/bench scripts/soak.sh || echo ' (with uncommitted changes)')"
log "soaking for $MINUTES minutes ($CONCURRENCY clients); results in $OUT"
SOAK_KEY="$KEY" "$TARGET/soak" --url "$URL" \
  --process "gateway=$GW_PID" --process "worker-1=${WPIDS[0]}" --process "worker-2=${WPIDS[1]}" \
  --minutes "$MINUTES" --warmup-minutes "$WARMUP" --concurrency "$CONCURRENCY" --max-body-bytes "$MAX_BODY" \
  --json "$OUT/soak.json" --markdown "$OUT/soak.md" \
  --setup "Written by \`scripts/soak.sh $MINUTES\` on $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD)$dirty" \
  --setup "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r); load average before the run $(cut -d' ' -f1-3 /proc/loadavg)" \
  --setup "Model: the TEST MODEL (MedImageInsight's inputs and outputs, random weights); ONNX Runtime $(basename "$ORT_DYLIB_PATH" | sed 's/^libonnxruntime\.so\.//'), CPU" \
  --setup "Processes (release builds, 127.0.0.1): two workers (default settings) behind one gateway in static config file mode: key auth, a client quota far above the load, request timeout 60 s, body limit $MAX_BODY bytes, metrics on (workers scraped every second), JSON audit log to a file" \
  >/dev/null

for p in "$GW_PID" "${WPIDS[@]}"; do kill -0 "$p" 2>/dev/null || { echo "a server process (pid $p) exited during the soak; logs in $WORK" >&2; KEEP_LOGS=1; }; done
{
  echo
  echo "After the run: the gateway's audit log held $(wc -l < "$WORK/audit.jsonl") lines (one per"
  echo "request); the processes' logs mention $(cat "$WORK"/*.log | grep -ci 'panic' || true) panics."
} >> "$OUT/soak.md"

log "plotting"
if eval "$(scripts/export-env.sh --exports)" && "$MEDEMBED_EXPORT_PYTHON" tests/bench/soak_plot.py "$OUT/soak.json" "$OUT/soak.png"; then
  log "plot written to $OUT/soak.png"
else
  log "no plot: the export environment (matplotlib) is not available"
fi
cat "$OUT/soak.md"
