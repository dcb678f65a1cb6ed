#!/usr/bin/env bash
# The demo: starts a worker on the TEST MODEL (random weights: its embeddings
# mean nothing) and sends it the API brief's example request.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$MEDEMBED_ROOT"
eval "$(scripts/python-env.sh --exports)"
eval "$(scripts/test-model.sh --exports)"
cargo build --release -p medembed-worker
port=${MEDEMBED_DEMO_PORT:-18080}
target/release/medembed-worker --model-dir "$MEDEMBED_TEST_MODEL" --listen 127.0.0.1:$port --log-format text &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 1 120); do curl -fs http://127.0.0.1:$port/readyz >/dev/null && break; sleep 0.5; done
body='{"input_data":{"columns":["image","text"],"index":[0],"data":[["iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAAXNSR0IArs4c6QAAAARnQU1BAACx\njwv8YQUAAAAJcEhZcwAAFiUAABYlAUlSJPAAAAAbSURBVBhXY/gUoPS/fhfDfwaGJe///9/J8B8A\nVGwJ5VDvPeYAAAAASUVORK5CYII=\n","x-ray chest anteroposterior Pleural Effusion"]]},"params":{"get_scaling_factor":"true"}}'
curl -fsS -X POST http://127.0.0.1:$port/score -H 'content-type: application/json' -d "$body" \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); print({k: (f"{len(v)} x {len(v[0])}-d vectors" if isinstance(v, list) else v) for k, v in r.items()})'
echo "metrics: curl http://127.0.0.1:$port/metrics  (the worker stops when this script exits)"
