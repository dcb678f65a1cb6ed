#!/usr/bin/env bash
# Builds the container images from images/*.Dockerfile with buildah (no Docker
# engine, no registry), writes them as OCI archives, prints their digests, and
# starts each once with podman to prove it runs:
#   - operator: --version, crdgen, and `fetch-model` (the init container) pulling
#     the TEST MODEL as a tar.gz from a loopback HTTP server into a volume;
#   - worker (CPU): serves that fetched TEST MODEL (random weights: its
#     embeddings mean nothing); GET /readyz, then the API brief's request, whose
#     answer must equal the same binary's outside the image;
#   - gateway: a static configuration routing to that worker container, with a
#     key; the brief's request through it, and a request without the key (401).
# Every container runs as in the chart: user 65532, read-only root filesystem,
# no capabilities, no privilege escalation, host network (loopback only).
#
#   scripts/build-images.sh                  # operator, gateway, worker: build + run
#   scripts/build-images.sh --gpu            # also worker-gpu (1.6 GB of CUDA wheels)
#   scripts/build-images.sh --no-run         # build only
#   scripts/build-images.sh --refresh-base   # rebuild the base image (Debian updates)
#   scripts/build-images.sh --no-stage-check # skip running the Dockerfiles' pip stages
#
# MEDEMBED_IMAGES_BINARIES=DIR takes medembed-{operator,gateway,worker} from DIR
# instead of running cargo.
# Output: $MEDEMBED_IMAGES_OUT (default $MEDEMBED_CACHE/images/out): one
# <name>-<version>.oci.tar per image and digests.txt ("name:tag@sha256:...").
#
# There is no registry here, so the Dockerfiles' default bases (Docker Hub's
# rust and python images, gcr.io/distroless/cc-debian12) cannot be pulled.
# Instead:
#   - RUNTIME_IMAGE is a base made here: mmdebstrap extracts Debian 12's libc6,
#     libgcc-s1 and libstdc++6 from apt, images/base/finish-rootfs.sh adds the
#     CA bundle, the user 65532 and dpkg metadata (what distroless/cc has); the
#     tarball is cached under $MEDEMBED_CACHE/images, keyed by its inputs;
#   - BINARIES=prebuilt: the release binaries come from cargo on this machine,
#     and ONNX Runtime from the PyPI wheels pinned by hash in images/*-requirements.txt.
# The final stages (what ends up in the images) are the Dockerfiles' own. The
# Dockerfiles' pip stages (ONNX Runtime from PyPI) also run for real, in a
# Debian 12 Python image made here the same way (PYTHON_IMAGE), and must give
# the same files as the prebuilt path; the cargo stages are not run here (a
# second release build in a container).
#
# Needs root (or sudo) for apt, mmdebstrap, buildah and podman. Tools are
# installed from Debian's apt when missing: buildah, podman, runc, skopeo,
# mmdebstrap.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$MEDEMBED_ROOT"

gpu=0 run=1 refresh_base=0 check_stages=1
for a in "$@"; do
  case "$a" in
    --gpu) gpu=1 ;;
    --no-run) run=0 ;;
    --refresh-base) refresh_base=1 ;;
    --no-stage-check) check_stages=0 ;;
    -h|--help) sed -n '2,/^source/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--gpu] [--no-run] [--refresh-base] [--no-stage-check]" >&2; exit 2 ;;
  esac
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
started=$SECONDS
step() { log "[$((SECONDS - started)) s] $*"; }

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || revision="$revision-dirty"
# Image timestamps: the commit's time, so a rebuild of the same inputs gives
# the same digests.
epoch="$(git log -1 --format=%ct 2>/dev/null || echo 0)"
created="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"
out="${MEDEMBED_IMAGES_OUT:-$MEDEMBED_CACHE/images/out}"
work="$MEDEMBED_CACHE/images/work"
mkdir -p "$out" "$work"

# --- tools (idempotent) ---------------------------------------------------
need=()
for t in buildah:buildah podman:podman runc:runc skopeo:skopeo mmdebstrap:mmdebstrap; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]} (Debian)"
  as_root apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

# --- release binaries -----------------------------------------------------
if [ -n "${MEDEMBED_IMAGES_BINARIES:-}" ]; then
  target="$MEDEMBED_IMAGES_BINARIES"   # binaries built elsewhere (e.g. an earlier CI step)
  step "binaries from $target"
else
  step "cargo build --release (operator, gateway, worker)"
  cargo build --release -p medembed-operator -p medembed-gateway -p medembed-worker
  target="${CARGO_TARGET_DIR:-$MEDEMBED_ROOT/target}/release"
fi

# --- base image: Debian 12's C/C++ runtime, CA bundle, user 65532 ----------
base_pkgs="libc6,libgcc-s1,libstdc++6"
base_suites=("deb http://deb.debian.org/debian bookworm main"
             "deb http://deb.debian.org/debian bookworm-updates main"
             "deb http://deb.debian.org/debian-security bookworm-security main")
base_key="$(printf '%s\n' "$base_pkgs" "${base_suites[@]}" | cat - images/base/finish-rootfs.sh | sha256sum | cut -c1-16)"
base_tar="$MEDEMBED_CACHE/images/base-$base_key.tar"
base_ref="localhost/medembed/base:$base_key"
build_base() {
  [ "$refresh_base" = 0 ] && [ -f "$base_tar" ] && return 0
  step "building the base root filesystem (mmdebstrap: $base_pkgs)"
  local tmp
  tmp="$(mktemp -d "$MEDEMBED_CACHE/images/.base.XXXXXX")"
  as_root env SOURCE_DATE_EPOCH=0 mmdebstrap --quiet --variant=extract --include="$base_pkgs" \
    --mode=root --format=directory --skip=cleanup/apt/cache bookworm "$tmp/rootfs" "${base_suites[@]}"
  as_root sh images/base/finish-rootfs.sh "$tmp/rootfs"
  # What went in, for the record (also the image's dpkg metadata).
  as_root sh -c 'for f in "$1"/var/lib/dpkg/status.d/*; do
      printf "%s %s\n" "$(sed -n "s/^Package: //p" "$f")" "$(sed -n "s/^Version: //p" "$f")"; done' \
    _ "$tmp/rootfs" > "$tmp/packages.txt"
  # Deterministic tarball: sorted, numeric owners, clamped times.
  as_root tar --sort=name --mtime=@0 --clamp-mtime --numeric-owner \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$tmp/rootfs" -cf "$tmp/base.tar" .
  mv -f "$tmp/packages.txt" "${base_tar%.tar}.packages.txt"
  mv -f "$tmp/base.tar" "$base_tar"
  as_root rm -rf "$tmp"
  as_root buildah rmi -f "$base_ref" >/dev/null 2>&1 || true
}
mkdir -p "$MEDEMBED_CACHE/images"
with_lock "images-base-$base_key" build_base
if ! as_root buildah inspect --type image "$base_ref" >/dev/null 2>&1; then
  step "importing the base into buildah's storage as $base_ref"
  ctr="$(as_root buildah from scratch)"
  as_root buildah add --quiet "$ctr" "$base_tar" / >/dev/null
  as_root buildah config --user 65532:65532 --workingdir /home/nonroot \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --label org.opencontainers.image.title=medembed-base \
    --label org.opencontainers.image.description="Debian 12 libc6, libgcc-s1, libstdc++6, CA bundle, user 65532 (the local stand-in for gcr.io/distroless/cc-debian12:nonroot)" \
    "$ctr"
  as_root buildah commit --quiet --timestamp 0 --rm "$ctr" "$base_ref" >/dev/null
fi
step "base: $base_ref ($(tr '\n' ' ' < "${base_tar%.tar}.packages.txt"))"

# --- ONNX Runtime from the pinned PyPI wheels ------------------------------
eval "$(scripts/python-env.sh --exports)"
wheels="$MEDEMBED_CACHE/images/wheels"
fetch_wheels() { # fetch_wheels REQUIREMENTS: the linux/amd64 CPython 3.11 wheels, hash-checked
  mkdir -p "$wheels"
  "$MEDEMBED_PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    --implementation cp --abi cp311 --require-hashes -r "$1" -d "$wheels" >&2
}
unzip_wheel() { # unzip_wheel WHEEL DIR
  "$MEDEMBED_PYTHON" -m zipfile -e "$1" "$2"
}

# --- contexts: prebuilt/ trees for BINARIES=prebuilt ------------------------
stage() { # stage NAME: a fresh build context directory for image NAME
  local ctx="$work/ctx-$1"
  rm -rf "$ctx"; mkdir -p "$ctx/prebuilt" "$ctx/images"
  echo "$ctx"
}
ctx_op="$(stage operator)"; cp "$target/medembed-operator" "$ctx_op/prebuilt/"
ctx_gw="$(stage gateway)"; cp "$target/medembed-gateway" "$ctx_gw/prebuilt/"
ctx_wk="$(stage worker)"; cp "$target/medembed-worker" "$ctx_wk/prebuilt/"
ort_version="$(sed -n 's/^onnxruntime==\([0-9.]*\).*/\1/p' images/worker-requirements.txt)"
[ "$ort_version" = "$(sed -n 's/^onnxruntime==\([0-9.]*\).*/\1/p' scripts/requirements.txt)" ] \
  || { log "images/worker-requirements.txt and scripts/requirements.txt pin different onnxruntime versions"; exit 1; }
with_lock images-wheels fetch_wheels images/worker-requirements.txt
rm -rf "$work/ort"; unzip_wheel "$wheels/onnxruntime-$ort_version-cp311-cp311-manylinux_2_28_x86_64.whl" "$work/ort"
mkdir -p "$ctx_wk/prebuilt/onnxruntime"
cp "$work/ort/onnxruntime/capi/libonnxruntime.so.$ort_version" "$work/ort/onnxruntime/LICENSE" \
  "$work/ort/onnxruntime/ThirdPartyNotices.txt" "$ctx_wk/prebuilt/onnxruntime/"
rm -rf "$work/ort"
images=(operator gateway worker)
declare -A ctx=([operator]="$ctx_op" [gateway]="$ctx_gw" [worker]="$ctx_wk")

if [ "$gpu" = 1 ]; then
  step "fetching onnxruntime-gpu and the CUDA wheels (images/worker-gpu-requirements.txt)"
  ctx_gpu="$(stage worker-gpu)"; cp "$target/medembed-worker" "$ctx_gpu/prebuilt/"
  with_lock images-wheels fetch_wheels images/worker-gpu-requirements.txt
  site="$work/gpu-site"; rm -rf "$site"; mkdir -p "$site"
  # Exactly the files the requirements name (their versions), not whatever else is cached.
  while read -r spec; do
    name="${spec%%==*}" ver="${spec#*==}"
    whl="$(ls "$wheels"/"${name//-/_}"-"$ver"-*x86_64*.whl | head -n1)"
    unzip_wheel "$whl" "$site"
  done < <(sed -n 's/^\([a-z0-9-]*==[0-9.]*\).*/\1/p' images/worker-gpu-requirements.txt)
  gort="$(sed -n 's/^onnxruntime-gpu==\([0-9.]*\).*/\1/p' images/worker-gpu-requirements.txt)"
  mkdir -p "$ctx_gpu/prebuilt/onnxruntime" "$ctx_gpu/prebuilt/nvidia/lib" "$ctx_gpu/prebuilt/nvidia/licenses"
  cp "$site/onnxruntime/capi/libonnxruntime.so.$gort" "$site"/onnxruntime/capi/libonnxruntime_providers_*.so \
    "$site/onnxruntime/LICENSE" "$site/onnxruntime/ThirdPartyNotices.txt" "$ctx_gpu/prebuilt/onnxruntime/"
  find "$site/nvidia" -name 'lib*.so*' -type f -exec cp {} "$ctx_gpu/prebuilt/nvidia/lib/" \;
  for d in "$site"/nvidia_*.dist-info; do
    for f in "$d"/licenses/*; do
      [ -f "$f" ] && cp "$f" "$ctx_gpu/prebuilt/nvidia/licenses/$(basename "$d" .dist-info)-$(basename "$f")"
    done
  done
  # cuDNN needs zlib, which the base has not: Debian's, as the Dockerfile takes it.
  cp -L /lib/x86_64-linux-gnu/libz.so.1 "$ctx_gpu/prebuilt/nvidia/lib/"
  cp /usr/share/doc/zlib1g/copyright "$ctx_gpu/prebuilt/nvidia/licenses/zlib1g-copyright"
  rm -rf "$site"
  # Every library resolves its dependencies (DT_NEEDED) inside the image, but
  # for the driver's libcuda.so.1 (mounted from the node) and TensorRT's, not in
  # the image by default. cuDNN's are loaded lazily, at the first convolution,
  # so starting the worker would not show a missing one.
  tar -tf "$base_tar" | sed -n 's|.*/\(lib[^/]*\.so[^/]*\)$|\1|p' > "$work/base-libs.txt"
  python3 - "$work/base-libs.txt" "$ctx_gpu"/prebuilt/onnxruntime/*.so* "$ctx_gpu"/prebuilt/nvidia/lib/*.so* <<'PY'
import os, re, subprocess, sys
have = set(open(sys.argv[1]).read().split()) | {"ld-linux-x86-64.so.2"}
libs = sys.argv[2:]
have |= {os.path.basename(p) for p in libs}
allowed = {"libcuda.so.1", "libnvinfer.so.10", "libnvonnxparser.so.10"}
bad = {}
for p in libs:
    out = subprocess.run(["readelf", "-d", p], capture_output=True, text=True, check=True).stdout
    need = re.findall(r"Shared library: \[(.*?)\]", out)
    miss = [n for n in need if n not in have and n not in allowed]
    if miss:
        bad[os.path.basename(p)] = miss
assert not bad, f"unresolved in the image: {bad}"
print(f"worker-gpu: {len(libs)} shared libraries; every DT_NEEDED resolves in the image except {sorted(allowed)}")
PY
  images+=(worker-gpu)
  ctx[worker-gpu]="$ctx_gpu"
fi

# --- the Dockerfiles' pip stages, run for real --------------------------------
# PYTHON_IMAGE's stand-in: Debian 12's python3 and pip (3.11, as python:3.11-slim).
py_pkgs="python3-pip,python-is-python3,ca-certificates"
py_key="$(printf '%s\n' "$py_pkgs" "${base_suites[@]}" | sha256sum | cut -c1-16)"
py_tar="$MEDEMBED_CACHE/images/python-$py_key.tar"
py_ref="localhost/medembed/python-builder:$py_key"
build_python() {
  [ "$refresh_base" = 0 ] && [ -f "$py_tar" ] && return 0
  step "building the Python builder root filesystem (mmdebstrap: $py_pkgs)"
  # Debian marks its Python as externally managed; the python images are not.
  as_root env SOURCE_DATE_EPOCH=0 mmdebstrap --quiet --variant=minbase --include="$py_pkgs" \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --format=tar bookworm "$py_tar.tmp" "${base_suites[@]}"
  mv -f "$py_tar.tmp" "$py_tar"
  as_root buildah rmi -f "$py_ref" >/dev/null 2>&1 || true
}
# crun (buildah's default runtime for RUN) refuses a hybrid cgroup v1/v2 host.
bud_runtime=()
mountpoint -q /sys/fs/cgroup/unified 2>/dev/null && bud_runtime=(--runtime runc)
# The build host's CA bundle, for pip's HTTPS in RUN steps (a network that
# inspects TLS with its own CA, as this one does, is trusted there too).
host_ca=()
[ -f /etc/ssl/certs/ca-certificates.crt ] && host_ca=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
check_stage() { # check_stage IMAGE STAGE SUBDIR...: run STAGE of IMAGE's Dockerfile, compare /out/SUBDIR with prebuilt/SUBDIR
  local name="$1" stage="$2" c="${ctx[$1]}" ctr mnt sub; shift 2
  step "running the $stage stage of images/$name.Dockerfile (pip, PyPI)"
  cp images/*-requirements.txt "$c/images/"
  as_root buildah bud "${bud_runtime[@]}" --quiet --network host --layers=false --target "$stage" \
    --ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit nproc=4096:4096 "${host_ca[@]}" \
    --build-arg PYTHON_IMAGE="$py_ref" -f "images/$name.Dockerfile" \
    -t "localhost/medembed/stage-$name:$version" "$c" >/dev/null
  ctr="$(as_root buildah from "localhost/medembed/stage-$name:$version")"
  mnt="$(as_root buildah mount "$ctr")"
  for sub in "$@"; do
    # zlib comes from each side's own Debian 12 (its point release may differ).
    as_root diff -r -x libz.so.1 -x zlib1g-copyright "$mnt/out/$sub" "$c/prebuilt/$sub" \
      || { log "the $stage stage and the prebuilt path differ in $sub"; exit 1; }
  done
  echo "$stage stage of images/$name.Dockerfile: $(as_root find "$mnt/out" -type f | wc -l) files, identical to the prebuilt ones ($*)"
  as_root buildah umount "$ctr" >/dev/null
  as_root buildah rm "$ctr" >/dev/null
  as_root buildah rmi "localhost/medembed/stage-$name:$version" >/dev/null
}
if [ "$check_stages" = 1 ]; then
  with_lock "images-python-$py_key" build_python
  if ! as_root buildah inspect --type image "$py_ref" >/dev/null 2>&1; then
    ctr="$(as_root buildah from scratch)"
    as_root buildah add --quiet "$ctr" "$py_tar" / >/dev/null
    as_root buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    as_root buildah commit --quiet --timestamp 0 --rm "$ctr" "$py_ref" >/dev/null
  fi
  check_stage worker onnxruntime onnxruntime
  if [ "$gpu" = 1 ]; then check_stage worker-gpu libraries onnxruntime nvidia; fi
fi

# --- build, export, digest --------------------------------------------------
: > "$out/digests.txt"
# buildah 1.28 leaves a working container behind for the `FROM ${BINARIES}`
# stage: the ones that appear during the builds are removed afterwards.
before="$(as_root buildah containers -q | sort)"
for name in "${images[@]}"; do
  ref="localhost/medembed/$name:$version"
  step "buildah bud images/$name.Dockerfile -> $ref"
  as_root buildah bud --quiet --timestamp "$epoch" --layers=false \
    --build-arg RUNTIME_IMAGE="$base_ref" --build-arg BINARIES=prebuilt \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" --build-arg CREATED="$created" \
    -f "images/$name.Dockerfile" -t "$ref" "${ctx[$name]}" >/dev/null
  archive="$out/$name-$version.oci.tar"
  rm -f "$archive"
  as_root buildah push --quiet --digestfile "$work/$name.digest" "$ref" \
    "oci-archive:$archive:medembed/$name:$version" >/dev/null
  digest="$(cat "$work/$name.digest")"
  # The archive as a registry would serve it: user, entrypoint, labels.
  as_root skopeo inspect --config "oci-archive:$archive" | python3 -c '
import json, sys
c, name, version = json.load(sys.stdin)["config"], sys.argv[1], sys.argv[2]
binary = "/usr/local/bin/medembed-" + name.replace("-gpu", "")
assert c["User"] == "65532:65532", c["User"]
assert c["Entrypoint"] == [binary], c["Entrypoint"]
assert c["Labels"]["org.opencontainers.image.version"] == version, c["Labels"]
env = dict(e.split("=", 1) for e in c.get("Env", []))
user, ports, ort = c["User"], sorted(c.get("ExposedPorts", {})), env.get("ORT_DYLIB_PATH", "-")
print(f"  config: user {user}, entrypoint {binary}, ports {ports}, ORT_DYLIB_PATH={ort}")
' "$name" "$version"
  echo "medembed/$name:$version@$digest" >> "$out/digests.txt"
  step "medembed/$name:$version@$digest ($(du -h "$archive" | cut -f1) archive, $(as_root podman image inspect --format '{{.Size}}' "$ref" | numfmt --to=iec) unpacked)"
done
rm -rf "$work"/ctx-*
comm -13 <(echo "$before") <(as_root buildah containers -q | sort) | while read -r c; do
  [ -n "$c" ] && as_root buildah rm "$c" >/dev/null
done
# Throw away the intermediate stages' images (dangling, untagged).
as_root buildah rmi --prune >/dev/null 2>&1 || true
log "images in $out:"
cat "$out/digests.txt"
[ "$run" = 1 ] || exit 0

# --- start each image once ----------------------------------------------------
# podman's defaults do not start here, for two reasons of this machine, not
# of the images: (1) crun refuses a hybrid cgroup v1/v2 host ("cgroups in
# hybrid mode not supported, drop all controllers from cgroupv2"): runc is used
# where /sys/fs/cgroup/unified is mounted; (2) without CAP_SYS_RESOURCE podman's
# default rlimits (nofile 1048576) cannot be set: the current limits are passed.
podman_args=(--rm --network host --read-only --read-only-tmpfs=false --user 65532:65532 --cap-drop all
  --security-opt no-new-privileges --ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
runtime=()
mountpoint -q /sys/fs/cgroup/unified 2>/dev/null && runtime=(--runtime runc)
prun() { as_root podman "${runtime[@]}" run "${podman_args[@]}" "$@"; }
ref_of() { echo "localhost/medembed/$1:$version"; }
eval "$(scripts/test-model.sh --exports)"
smoke="$(mktemp -d "${TMPDIR:-/tmp}/medembed-images.XXXXXX")"
pids=() names=()
cleanup() {
  local n
  for n in "${names[@]}"; do as_root podman "${runtime[@]}" rm -f -t 2 "$n" >/dev/null 2>&1 || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  as_root rm -rf "$smoke"
}
trap cleanup EXIT
free_ports() {
  python3 -c 'import socket; s=[socket.socket() for _ in range(int(__import__("sys").argv[1]))]; [x.bind(("127.0.0.1",0)) for x in s]; print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"
}
read -r p_http p_worker p_gateway p_host p_gpu <<<"$(free_ports 5)"
wait_ready() { # wait_ready URL NAME: up to 60 s
  local i
  for i in $(seq 1 120); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.5; done
  log "$2 did not become ready at $1"; as_root podman logs "$2" 2>&1 | tail -n 30 >&2; return 1
}

step "operator: --version, crdgen"
prun "$(ref_of operator)" --version
ncrd="$(prun "$(ref_of operator)" crdgen | grep -c '^kind: CustomResourceDefinition')"
[ "$ncrd" = 3 ] || { log "crdgen printed $ncrd CRDs, expected 3"; exit 1; }
echo "crdgen: $ncrd CustomResourceDefinitions"

step "operator: fetch-model (init container) from http://127.0.0.1:$p_http into a volume"
mkdir -p "$smoke/www" "$smoke/model"
tar -czf "$smoke/www/model.tar.gz" -C "$MEDEMBED_TEST_MODEL" .
sha="$(sha256sum "$smoke/www/model.tar.gz" | cut -d' ' -f1)"
python3 -m http.server "$p_http" --bind 127.0.0.1 --directory "$smoke/www" >/dev/null 2>&1 &
pids+=($!)
as_root chown 65532:65532 "$smoke/model"
for _ in $(seq 1 40); do curl -fs -o /dev/null "http://127.0.0.1:$p_http/model.tar.gz" && break; sleep 0.25; done
prun -v "$smoke/model:/var/lib/medembed/model" "$(ref_of operator)" \
  fetch-model --url "http://127.0.0.1:$p_http/model.tar.gz" --sha256 "$sha" --dest /var/lib/medembed/model
cmp "$smoke/model/image.onnx" "$MEDEMBED_TEST_MODEL/image.onnx"
cmp "$smoke/model/medembed-model.json" "$MEDEMBED_TEST_MODEL/medembed-model.json"
echo "fetch-model: unpacked $(ls "$smoke/model" | wc -l) entries, identical to the TEST MODEL"

body='{"input_data":{"columns":["image","text"],"index":[0],"data":[["iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAAXNSR0IArs4c6QAAAARnQU1BAACx\njwv8YQUAAAAJcEhZcwAAFiUAABYlAUlSJPAAAAAbSURBVBhXY/gUoPS/fhfDfwaGJe///9/J8B8A\nVGwJ5VDvPeYAAAAASUVORK5CYII=\n","x-ray chest anteroposterior Pleural Effusion"]]},"params":{"get_scaling_factor":"true"}}'
echo "$body" > "$smoke/body.json"

step "worker: serving the fetched TEST MODEL on 127.0.0.1:$p_worker"
prun -d --name medembed-smoke-worker -v "$smoke/model:/var/lib/medembed/model:ro" \
  -e MEDEMBED_LISTEN="127.0.0.1:$p_worker" -e MEDEMBED_LOG_FORMAT=text "$(ref_of worker)" >/dev/null
names+=(medembed-smoke-worker)
wait_ready "http://127.0.0.1:$p_worker/readyz" medembed-smoke-worker
echo "GET /readyz: $(curl -fsS "http://127.0.0.1:$p_worker/readyz")"
curl -fsS -X POST "http://127.0.0.1:$p_worker/score" -H 'content-type: application/json' \
  --data-binary @"$smoke/body.json" -o "$smoke/image.json"
# The same binary outside the image, on the same model, with the venv's ONNX Runtime.
"$target/medembed-worker" --model-dir "$MEDEMBED_TEST_MODEL" --listen "127.0.0.1:$p_host" \
  --log-format text 2>"$smoke/host-worker.log" &
pids+=($!)
wait_ready "http://127.0.0.1:$p_host/readyz" host-worker
curl -fsS -X POST "http://127.0.0.1:$p_host/score" -H 'content-type: application/json' \
  --data-binary @"$smoke/body.json" -o "$smoke/host.json"
check_answer() { # check_answer GOT REFERENCE LABEL
  python3 - "$@" "$MEDEMBED_TEST_MODEL/medembed-model.json" <<'PY'
import json, math, sys
got, ref, label, cfg = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3], json.load(open(sys.argv[4]))
# The live shape: a list with one object per row (one row here).
got, ref = (a[0] if isinstance(a, list) else a for a in (got, ref))
for k in ("image_features", "text_features"):
    v = got[k]
    assert len(v) == 1 and len(v[0]) == cfg["embedding_dim"], (k, len(v), len(v[0]))
    norm = math.sqrt(sum(x * x for x in v[0]))
    assert abs(norm - 1) < 1e-4, (k, norm)
    diff = max(abs(a - b) for a, b in zip(v[0], ref[k][0]))
    assert diff <= 1e-5, (k, diff)
    print(f"{label}: {k} 1 x {len(v[0])}, norm {norm:.6f}, max |diff| vs the host binary {diff:.1e}")
assert abs(got["scaling_factor"] - cfg["logit_scale"]) < 1e-6, got["scaling_factor"]
print(f"{label}: scaling_factor {got['scaling_factor']} (the model's logit_scale)")
PY
}
check_answer "$smoke/image.json" "$smoke/host.json" "worker image"

step "gateway: static configuration -> the worker container, key auth, on 127.0.0.1:$p_gateway"
key="$(head -c 32 /dev/urandom | base64 | tr -d '=+/' | cut -c1-43)"
mkdir -p "$smoke/gw"
cat > "$smoke/gw/gateway.yaml" <<EOF
endpoints:
  - name: chest
    pathPrefix: /endpoints/chest
    auth: {mode: Key}
    deployments:
      blue: {workers: ["127.0.0.1:$p_worker"]}
clients:
  - name: smoke
    endpoints: [chest]
    keys: {primarySha256: "$(printf %s "$key" | sha256sum | cut -d' ' -f1)"}
EOF
chmod -R a+rX "$smoke/gw"
prun -d --name medembed-smoke-gateway -v "$smoke/gw:/etc/medembed:ro" \
  -e MEDEMBED_GATEWAY_LISTEN="127.0.0.1:$p_gateway" -e MEDEMBED_GATEWAY_CONFIG=/etc/medembed/gateway.yaml \
  -e MEDEMBED_LOG_FORMAT=text -e MEDEMBED_GATEWAY_AUDIT_LOG=off "$(ref_of gateway)" >/dev/null
names+=(medembed-smoke-gateway)
prun "$(ref_of gateway)" --version
wait_ready "http://127.0.0.1:$p_gateway/readyz" medembed-smoke-gateway
code="$(curl -sS -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$p_gateway/endpoints/chest/score" \
  -H 'content-type: application/json' --data-binary @"$smoke/body.json")"
[ "$code" = 401 ] || { log "gateway without a key answered $code, expected 401"; exit 1; }
echo "gateway without a key: $code"
for _ in $(seq 1 40); do
  code="$(curl -sS -o "$smoke/gw.json" -w '%{http_code}' -X POST "http://127.0.0.1:$p_gateway/endpoints/chest/score" \
    -H "authorization: Bearer $key" -H 'content-type: application/json' --data-binary @"$smoke/body.json")"
  [ "$code" = 200 ] && break; sleep 0.25   # until its first look at the worker
done
[ "$code" = 200 ] || { log "gateway with the key answered $code: $(head -c 300 "$smoke/gw.json")"; exit 1; }
check_answer "$smoke/gw.json" "$smoke/host.json" "gateway image -> worker image"

if [ "$gpu" = 1 ]; then
  step "worker-gpu: the CPU provider serves the TEST MODEL; the CUDA provider must fail loudly without a GPU"
  as_root podman "${runtime[@]}" rm -f -t 2 medembed-smoke-worker >/dev/null 2>&1 || true
  prun -d --name medembed-smoke-worker-gpu -v "$smoke/model:/var/lib/medembed/model:ro" \
    -e MEDEMBED_LISTEN="127.0.0.1:$p_worker" -e MEDEMBED_LOG_FORMAT=text -e MEDEMBED_EXECUTION_PROVIDER=cpu \
    "$(ref_of worker-gpu)" >/dev/null
  names+=(medembed-smoke-worker-gpu)
  wait_ready "http://127.0.0.1:$p_worker/readyz" medembed-smoke-worker-gpu
  curl -fsS -X POST "http://127.0.0.1:$p_worker/score" -H 'content-type: application/json' \
    --data-binary @"$smoke/body.json" -o "$smoke/gpu-cpu.json"
  python3 - "$smoke/gpu-cpu.json" "$smoke/host.json" <<'PY'
import json, sys
got, ref = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
got, ref = (a[0] if isinstance(a, list) else a for a in (got, ref))
for k in ("image_features", "text_features"):
    d = max(abs(a - b) for a, b in zip(got[k][0], ref[k][0]))
    assert d <= 1e-4, (k, d)
    print(f"worker-gpu image, CPU provider (onnxruntime-gpu): {k} max |diff| vs the host binary {d:.1e}")
PY
  # Without a GPU the CUDA provider must refuse to start, and the only library
  # it may miss is the driver's libcuda.so.1 (mounted from the node on a GPU
  # host): everything else it links against resolved inside the image.
  set +e
  msg="$(prun -v "$smoke/model:/var/lib/medembed/model:ro" -e MEDEMBED_LISTEN="127.0.0.1:$p_gpu" \
    -e MEDEMBED_LOG_FORMAT=text -e MEDEMBED_EXECUTION_PROVIDER=cuda "$(ref_of worker-gpu)" 2>&1)"
  rc=$?
  set -e
  echo "worker-gpu image, CUDA provider without a GPU: exit $rc"
  echo "$msg" | grep -o 'cuda execution provider could not be registered.*' | sed 's/\(.\{60\}\).*\(Failed to load library.*\)/\1 ... \2/' | head -n1
  [ "$rc" = 3 ] && echo "$msg" | grep -q 'libonnxruntime_providers_cuda.so with error: libcuda.so.1: cannot open' \
    || { log "unexpected outcome of the CUDA provider without a GPU: $msg"; exit 1; }
fi
step "all images built and started"
