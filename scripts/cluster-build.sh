#!/usr/bin/env bash
# Builds (once) the local Kubernetes control plane used by the tests and prints
# the directory holding its binaries:
#
#   testcluster               multi-call: etcd, kube-apiserver,
#                             kube-controller-manager, kube-scheduler
#   etcd, kube-apiserver, ... symlinks to testcluster
#   helm                      Helm v3, from its own Go module
#
# Sources: tests/cluster/go.mod (k8s.io/kubernetes + etcd server) and
# tests/cluster/helm/go.mod, fetched through the Go module proxy. The binaries
# are cached outside the repository under
# $MEDEMBED_CACHE/cluster-<hash of go.mod/go.sum/main.go + go version>/bin; a
# cold build takes ~15-25 minutes on 2 cores (see tests/cluster/README.md).
# kube-apiserver carries one patch (tests/cluster/patches/): loopback IPs are
# allowed in Endpoints/EndpointSlices, since our pods live on 127.0.0.0/8.
#
#   scripts/cluster-build.sh          # prints the bin directory
#   NICE=10 scripts/cluster-build.sh  # build at lower CPU priority
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

src="$MEDEMBED_ROOT/tests/cluster"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
gover="$(go env GOVERSION)"
patch="$src/patches/loopback-endpoint-ips.sed"
key="$( { cat "$src/go.mod" "$src/go.sum" "$src/main.go" "$patch" "$src/helm/go.mod" "$src/helm/go.sum"; echo "$gover"; } | sha256sum | cut -c1-16)"
dir="$MEDEMBED_CACHE/cluster-$key"
bin="$dir/bin"

# Versions stamped into the binaries, read from the committed go.mod files.
k8s_version="$(awk '$1=="k8s.io/kubernetes"{print $2; exit}' "$src/go.mod")"
helm_version="$(awk '$1=="helm.sh/helm/v3"{print $2; exit}' "$src/helm/go.mod")"

build() {
  [ -f "$dir/.complete" ] && return 0
  log "building the control plane ($k8s_version) and helm ($helm_version) into $dir (first run only; ~20 min cold)"
  rm -rf "$dir"; mkdir -p "$bin"
  local start=$SECONDS nice=()
  [ -n "${NICE:-}" ] && nice=(nice -n "$NICE")
  local k8s_ld="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version"
  k8s_ld+=" -X k8s.io/component-base/version.gitMajor=1"
  k8s_ld+=" -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$k8s_version")"
  k8s_ld+=" -X k8s.io/component-base/version.gitTreeState=clean"
  k8s_ld+=" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
  # The one source change (see tests/cluster/patches/). Go refuses overlays of
  # files in the module cache, so build from a vendored copy, patched.
  local work="$dir/src" target
  rm -rf "$work"; mkdir -p "$work"
  cp "$src/go.mod" "$src/go.sum" "$src/main.go" "$work/"
  (cd "$work" && GOFLAGS=-mod=mod go mod vendor) >&2
  target="$work/vendor/k8s.io/kubernetes/pkg/apis/core/validation/validation.go"
  chmod u+w "$target"
  sed -f "$patch" "$target" > "$target.new"
  [ "$(diff "$target" "$target.new" | grep -c '^>')" = 1 ] \
    || { log "patch $patch did not apply to $target"; exit 1; }
  mv "$target.new" "$target"
  (cd "$work" && "${nice[@]}" go build -mod=vendor -trimpath -ldflags "$k8s_ld" -o "$bin/testcluster.tmp" .) >&2
  rm -rf "$work"
  mv "$bin/testcluster.tmp" "$bin/testcluster"
  local c
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler; do ln -sf testcluster "$bin/$c"; done
  (cd "$src/helm" && "${nice[@]}" go build -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version" \
      -o "$bin/helm.tmp" helm.sh/helm/v3/cmd/helm) >&2
  mv "$bin/helm.tmp" "$bin/helm"
  echo "$gover $k8s_version helm $helm_version built in $((SECONDS - start))s" > "$dir/.complete"
  log "built in $((SECONDS - start))s: $(cd "$bin" && du -h testcluster helm | tr '\n\t' '  ')"
}
with_lock "cluster-$key" build
echo "$bin"
