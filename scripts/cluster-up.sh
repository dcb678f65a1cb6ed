#!/usr/bin/env bash
# Starts a local Kubernetes control plane on loopback: etcd, kube-apiserver
# (TLS, client-certificate admin, RBAC + Node authorization, service-account
# tokens), kube-controller-manager and kube-scheduler, each on a random free
# port of 127.0.0.1. Writes a kubeconfig, waits until every component is
# healthy and prints the state directory (or, with --exports, shell exports).
# There are no nodes: the tests' node agent (tests/support) registers them.
#
#   dir=$(scripts/cluster-up.sh)                  # state dir; $dir/kubeconfig
#   eval "$(scripts/cluster-up.sh --exports)"     # KUBECONFIG, MEDEMBED_CLUSTER_DIR
#   scripts/cluster-down.sh "$dir"
#
# Options: --dir DIR (state directory; default: a new one under $TMPDIR)
#          --watch-pid PID (stop the cluster when PID exits; tests use this so
#          a crashed test run leaves nothing behind)
# Binaries: $MEDEMBED_CLUSTER_BIN, else whatever scripts/cluster-build.sh prints.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dir="" watch_pid="" exports=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --watch-pid) watch_pid="$2"; shift 2 ;;
    --exports) exports=1; shift ;;
    *) echo "usage: $0 [--dir DIR] [--watch-pid PID] [--exports]" >&2; exit 2 ;;
  esac
done

bin="${MEDEMBED_CLUSTER_BIN:-$("$MEDEMBED_ROOT/scripts/cluster-build.sh")}"
[ -x "$bin/testcluster" ] || { log "no control-plane binary in $bin"; exit 1; }
if [ -z "$dir" ]; then dir="$(mktemp -d "${TMPDIR:-/tmp}/medembed-cluster.XXXXXX")"; fi
mkdir -p "$dir"/{pki,logs,etcd}
dir="$(cd "$dir" && pwd)"
start=$SECONDS

# On any failure, stop what was started and show the logs' tails.
fail() {
  log "control plane failed to start: $*"
  for f in "$dir"/logs/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 25 "$f" >&2; }; done
  "$MEDEMBED_ROOT/scripts/cluster-down.sh" --keep --fast "$dir" >&2 || true
  exit 1
}

# Free TCP ports on 127.0.0.1, chosen by the kernel (bind to port 0).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}
read -r etcd_port peer_port api_port cm_port sched_port <<<"$(free_ports 5)"

# --- PKI: one CA for serving and client certificates, a service-account key.
pki="$dir/pki"
ossl() { openssl "$@" 2>/dev/null; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3 \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" -subj "/CN=medembed-test-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
leaf() { # leaf NAME SUBJECT EXTKEYUSAGE [SAN]
  local ext="$pki/$1.ext"
  { echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$3"
    [ -n "${4:-}" ] && echo "subjectAltName=$4"; } > "$ext"
  ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$pki/$1.key" \
    -out "$pki/$1.csr" -subj "$2"
  ossl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3 -extfile "$ext" -out "$pki/$1.crt"
}
leaf apiserver "/CN=kube-apiserver" serverAuth \
  "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1"
leaf admin "/O=system:masters/CN=medembed-admin" clientAuth
ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key"
ossl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
[ -s "$pki/admin.crt" ] && [ -s "$pki/sa.pub" ] || fail "openssl could not create the certificates"

server="https://127.0.0.1:$api_port"
cat > "$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: medembed-test
  cluster:
    server: $server
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: medembed-test
  context: {cluster: medembed-test, user: admin, namespace: default}
current-context: medembed-test
KC

# --- processes: each in its own session, logs under $dir/logs, pids in $dir/pids.
: > "$dir/pids"
launch() { # launch NAME ARGS...
  local name="$1"; shift
  setsid "$bin/testcluster" "$name" "$@" > "$dir/logs/$name.log" 2>&1 < /dev/null &
  echo "$name $!" >> "$dir/pids"
}
alive() { # alive NAME: running and not a zombie
  local pid; pid="$(awk -v n="$1" '$1==n{print $2}' "$dir/pids")"
  [ -r "/proc/$pid/stat" ] && [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]
}
wait_for() { # wait_for NAME SECONDS CMD...: until CMD succeeds, NAME alive
  local name="$1" limit=$(( SECONDS + $2 )); shift 2
  until "$@" >/dev/null 2>&1; do
    alive "$name" || fail "$name exited"
    [ $SECONDS -lt $limit ] || fail "$name not healthy after $(( $limit - start ))s"
    sleep 0.2
  done
}

launch etcd --name=default --data-dir="$dir/etcd" --unsafe-no-fsync \
  --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
  --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
  --initial-cluster="default=http://127.0.0.1:$peer_port" --log-level=warn
wait_for etcd 20 curl -fsS "http://127.0.0.1:$etcd_port/health"

launch kube-apiserver --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
  --etcd-servers="http://127.0.0.1:$etcd_port" --cert-dir="$dir/pki" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" --authorization-mode=Node,RBAC \
  --service-account-issuer="$server" --service-account-key-file="$pki/sa.pub" \
  --service-account-signing-key-file="$pki/sa.key" --api-audiences="$server" \
  --service-cluster-ip-range=10.96.0.0/16 --allow-privileged=true --profiling=false \
  --enable-priority-and-fairness=false --v=1
curl_api() { curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$server$1"; }
wait_for kube-apiserver 60 curl_api /readyz

controllers=deployment-controller,replicaset-controller,endpointslice-controller,endpoints-controller
controllers+=,garbage-collector-controller,namespace-controller,serviceaccount-controller
controllers+=,root-ca-certificate-publisher-controller,job-controller,statefulset-controller
controllers+=,daemonset-controller,disruption-controller,pod-garbage-collector-controller
launch kube-controller-manager --kubeconfig="$dir/kubeconfig" --leader-elect=false \
  --bind-address=127.0.0.1 --secure-port="$cm_port" --cert-dir="$dir/pki/cm" \
  --authentication-kubeconfig="$dir/kubeconfig" --authorization-kubeconfig="$dir/kubeconfig" \
  --controllers="$controllers" --root-ca-file="$pki/ca.crt" \
  --service-account-private-key-file="$pki/sa.key" --v=1
launch kube-scheduler --kubeconfig="$dir/kubeconfig" --leader-elect=false \
  --bind-address=127.0.0.1 --secure-port="$sched_port" --cert-dir="$dir/pki/sched" \
  --authentication-kubeconfig="$dir/kubeconfig" --authorization-kubeconfig="$dir/kubeconfig" --v=1
wait_for kube-controller-manager 30 curl -kfsS "https://127.0.0.1:$cm_port/healthz"
wait_for kube-scheduler 30 curl -kfsS "https://127.0.0.1:$sched_port/healthz"
# Pods need their namespace's "default" service account (admission checks it).
wait_for kube-controller-manager 30 curl_api /api/v1/namespaces/default/serviceaccounts/default

if [ -n "$watch_pid" ]; then
  # A watchdog in its own session: stops the cluster once $watch_pid is gone.
  setsid bash -c 'while kill -0 "$1" 2>/dev/null && [ -f "$2/pids" ]; do sleep 1; done
                  [ -f "$2/pids" ] && exec "$3" "$2"' watchdog "$watch_pid" "$dir" \
    "$MEDEMBED_ROOT/scripts/cluster-down.sh" > "$dir/logs/watchdog.log" 2>&1 < /dev/null &
  echo "watchdog $!" >> "$dir/pids"
fi

cat > "$dir/env" <<ENV
export KUBECONFIG='$dir/kubeconfig'
export MEDEMBED_CLUSTER_DIR='$dir'
export MEDEMBED_CLUSTER_BIN='$bin'
ENV
log "control plane up in $((SECONDS - start))s at $server (state: $dir)"
if [ "$exports" = 1 ]; then cat "$dir/env"; else echo "$dir"; fi
