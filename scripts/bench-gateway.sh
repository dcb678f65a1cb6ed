#!/usr/bin/env bash
# Benchmarks the gateway (auth, quotas, metrics and the audit log all on)
# against nginx (Debian) reverse-proxying the same fast upstream, on the same
# core, with the same load tools, in one run:
#  - throughput: wrk (Debian), closed loop, 64 connections, 10 s, per proxy;
#  - latency added at a fixed rate: the gateway's open-loop load generator
#    (gateway/examples/loadgen.rs) at 1,000 requests/s, against the upstream
#    directly and through each proxy; added = proxy - direct;
#  - the gateway's peak memory (VmHWM).
# The upstream is nginx answering a fixed embedding-shaped JSON body.
# Writes tests/bench/results/gateway.md (or $OUT).
#
# Cores: with N CPUs, the proxy under test gets core 1, the upstream core 0,
# and the load tools cores 2.. (core 0 when N = 2). Both proxies run one
# worker process/thread per core they get.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$MEDEMBED_ROOT"

RATE="${RATE:-1000}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-15}"
OUT="${OUT:-tests/bench/results/gateway.md}"

scripts/host-packages.sh nginx-light wrk
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

log "building the gateway and the load generator (release)"
cargo build --release -q -p medembed-gateway --bin medembed-gateway --example loadgen
TARGET="${CARGO_TARGET_DIR:-$MEDEMBED_ROOT/target}/release"
GATEWAY="$TARGET/medembed-gateway"
LOADGEN="$TARGET/examples/loadgen"

NCPU="$(nproc)"
PROXY_CORE=1
UP_CORE=0
if [ "$NCPU" -ge 4 ]; then LOAD_CORES="2-$((NCPU - 1))"; elif [ "$NCPU" -eq 3 ]; then LOAD_CORES=2; else LOAD_CORES=0; fi

WORK="$(mktemp -d)"; chmod 755 "$WORK"  # nginx workers run as an unprivileged user
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP_PORT="$(free_port)"; NGX_PORT="$(free_port)"; GW_PORT="$(free_port)"

# A response of realistic shape: one 1024-d text embedding (~21 kB).
python3 - "$WORK/response.json" <<'PY'
import json, random, sys
random.seed(1)
v = [round(random.uniform(-0.05, 0.05), 8) for _ in range(1024)]
json.dump({"text_features": [v], "scaling_factor": 4.516357}, open(sys.argv[1], "w"))
PY
printf '%s' '{"input_data":{"columns":["image","text"],"index":[0],"data":[["","x-ray chest anteroposterior Pneumonia"]]},"params":{}}' > "$WORK/body.json"

nginx_conf() { # name port extra-http extra-location
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/$1/body; proxy_temp_path $WORK/$1/proxy;
  fastcgi_temp_path $WORK/$1/f; uwsgi_temp_path $WORK/$1/u; scgi_temp_path $WORK/$1/s;
  keepalive_requests 1000000;
  $3
  server {
    listen 127.0.0.1:$2 reuseport backlog=4096;
    $4
  }
}
NGX
}

# Every path answers the file; a POST is turned into an internal GET (405 ->
# error_page) so nginx's static module serves it.
nginx_conf upstream "$UP_PORT" "" "root $WORK; default_type application/json; location / { try_files /response.json =404; error_page 405 =200 /response.json; }"
nginx_conf proxy "$NGX_PORT" "upstream workers { server 127.0.0.1:$UP_PORT; keepalive 256; }" \
  "location / { proxy_pass http://workers; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }"

taskset -c "$UP_CORE" "$NGINX" -c "$WORK/upstream/nginx.conf" & PIDS+=($!)
taskset -c "$PROXY_CORE" "$NGINX" -c "$WORK/proxy/nginx.conf" & PIDS+=($!)

KEY="bench-key-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
HASH="$(printf %s "$KEY" | sha256sum | cut -c1-64)"
cat > "$WORK/gateway.yaml" <<YAML
endpoints:
  - name: bench
    auth: {mode: Key}
    deployments: {blue: {workers: ["127.0.0.1:$UP_PORT"]}}
clients:
  - name: bench
    endpoints: [bench]
    keys: {primarySha256: "$HASH"}
    quota: {requestsPerMinute: 100000000, imagesPerMinute: 100000000, bytesPerMinute: 100000000000, concurrentRequests: 100000, maxRowsPerRequest: 1024}
YAML
# One core, one runtime thread: the same CPU nginx's single worker gets.
TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CORE" "$GATEWAY" --config-file "$WORK/gateway.yaml" \
  --listen "127.0.0.1:$GW_PORT" --audit-log "$WORK/audit.jsonl" --scrape-interval-ms 0 \
  --log-format text 2>"$WORK/gateway.log" & GW_PID=$!; PIDS+=($GW_PID)

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
wait_port "$UP_PORT"; wait_port "$NGX_PORT"; wait_port "$GW_PORT"

check() { curl -sf -o /dev/null -X POST -H "Authorization: Bearer $KEY" --data-binary @"$WORK/body.json" "$1" || { echo "no 200 from $1" >&2; exit 1; }; }
URL_UP="http://127.0.0.1:$UP_PORT/score"
URL_NGX="http://127.0.0.1:$NGX_PORT/score"
URL_GW="http://127.0.0.1:$GW_PORT/endpoints/bench/score"
check "$URL_UP"; check "$URL_NGX"; check "$URL_GW"

cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = io.open("$WORK/body.json"):read("*a")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
LUA

throughput() { # url -> requests/s
  taskset -c "$LOAD_CORES" wrk -t1 -c64 -d"${SECONDS_PER_RUN}s" -s "$WORK/post.lua" "$1" > "$WORK/wrk.txt"
  grep -q "Non-2xx" "$WORK/wrk.txt" && { cat "$WORK/wrk.txt" >&2; echo "errors during wrk run" >&2; exit 1; }
  awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt"
}
latency() { # url -> JSON
  taskset -c "$LOAD_CORES" "$LOADGEN" "$1" "$RATE" "$SECONDS_PER_RUN" 256 "$WORK/body.json" "Authorization: Bearer $KEY"
}
jq_() { python3 -c "import json,sys; print(round(json.loads(sys.argv[1])[sys.argv[2]], 3))" "$1" "$2"; }

log "warm-up"
taskset -c "$LOAD_CORES" wrk -t1 -c16 -d3s -s "$WORK/post.lua" "$URL_NGX" >/dev/null
taskset -c "$LOAD_CORES" wrk -t1 -c16 -d3s -s "$WORK/post.lua" "$URL_GW" >/dev/null

log "throughput (wrk, 64 connections, ${SECONDS_PER_RUN}s each)"
T_NGX="$(throughput "$URL_NGX")"; T_GW="$(throughput "$URL_GW")"
log "latency at $RATE requests/s (${SECONDS_PER_RUN}s each)"
L_UP="$(latency "$URL_UP")"; L_NGX="$(latency "$URL_NGX")"; L_GW="$(latency "$URL_GW")"
HWM_KB="$(awk '/VmHWM/ {print $2}' /proc/$GW_PID/status)"
RSS_KB="$(awk '/VmRSS/ {print $2}' /proc/$GW_PID/status)"
AUDIT_LINES="$(wc -l < "$WORK/audit.jsonl")"
REJECTED="$(curl -s "http://127.0.0.1:$GW_PORT/metrics" | awk '/^medembed_gateway_rejections_total/ {s+=$2} END {print s+0}')"

read -r UP50 UP99 NG50 NG99 GW50 GW99 <<<"$(jq_ "$L_UP" p50_ms) $(jq_ "$L_UP" p99_ms) $(jq_ "$L_NGX" p50_ms) $(jq_ "$L_NGX" p99_ms) $(jq_ "$L_GW" p50_ms) $(jq_ "$L_GW" p99_ms)"
calc() { python3 -c "print(round($1, 3))"; }
RATIO="$(calc "$T_GW / $T_NGX")"

CPU_MODEL="$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
mkdir -p "$(dirname "$OUT")"
cat > "$OUT" <<MD
# Gateway benchmark

Produced by \`scripts/bench-gateway.sh\` on $(date -u +%Y-%m-%d) (UTC).

Machine: ${CPU_MODEL:-unknown CPU}, $NCPU CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM,
$(uname -sr); load average before the run: ${LOADAVG_BEFORE:-$(cut -d' ' -f1-3 /proc/loadavg)}.
nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'), wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}').

Set-up: a fast upstream (nginx serving a fixed 1024-d embedding JSON, core $UP_CORE); the proxy under test
on core $PROXY_CORE (nginx: 1 worker process, upstream keep-alive; gateway: 1 runtime thread, key auth,
quotas on every dimension (never reached), metrics, JSON audit log to a file, traceparent); load tools on
core(s) $LOAD_CORES. Request: a one-row text scoring request.

| | nginx | gateway | gateway / nginx |
|---|---|---|---|
| Throughput (wrk, 64 connections) | $T_NGX req/s | $T_GW req/s | $RATIO |

Latency at $RATE requests/s, open loop, measured from each request's scheduled time:

| | p50 | p99 | added p50 | added p99 |
|---|---|---|---|---|
| upstream directly | $UP50 ms | $UP99 ms | | |
| through nginx | $NG50 ms | $NG99 ms | $(calc "$NG50 - $UP50") ms | $(calc "$NG99 - $UP99") ms |
| through the gateway | $GW50 ms | $GW99 ms | $(calc "$GW50 - $UP50") ms | $(calc "$GW99 - $UP99") ms |

Gateway memory after the runs: peak RSS $((HWM_KB / 1024)) MiB, current RSS $((RSS_KB / 1024)) MiB.
Audit lines written: $AUDIT_LINES; requests refused by the gateway: $REJECTED.

Targets: throughput at least nginx's (ratio >= 1), added p99 <= 2 ms at 1,000 requests/s, memory <= 64 MB.

Raw: upstream \`$L_UP\`; nginx \`$L_NGX\`; gateway \`$L_GW\`.
MD
cat "$OUT"
