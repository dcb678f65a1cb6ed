# Shared helpers for the repo's scripts. Source it; do not run it.
#
# Everything expensive (Python environments, ONNX Runtime, generated models) is
# cached outside the repository under $MEDEMBED_CACHE, keyed by a hash of its
# inputs, so a fresh clone reuses it and a change of inputs rebuilds it.

set -euo pipefail

MEDEMBED_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MEDEMBED_CACHE="${MEDEMBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/medembed}"
mkdir -p "$MEDEMBED_CACHE"

log() { printf '\033[1m[medembed]\033[0m %s\n' "$*" >&2; }

# hash_of FILE... : short content hash of the given files (their bytes, in order).
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# with_lock NAME CMD... : run CMD under an exclusive lock (parallel test runs
# and scripts may race to build the same cache entry).
with_lock() {
  local name="$1"; shift
  mkdir -p "$MEDEMBED_CACHE/locks"
  (
    flock 9
    "$@"
  ) 9>"$MEDEMBED_CACHE/locks/$name.lock"
}

# python_tag : the running python3's major and minor version, as "py311".
python_tag() { python3 -c 'import sys; print("py%d%d" % sys.version_info[:2])'; }

# cached_venv PREFIX REQUIREMENTS [WHAT] : creates (first run only, under a
# lock) and prints the path of the Python environment
# $MEDEMBED_CACHE/PREFIX-<hash of REQUIREMENTS>-<python version> with exactly
# REQUIREMENTS installed. A half-built environment (no .complete marker) is
# rebuilt. WHAT names it in the log line. With WHEELS=DIR set, the packages
# come from that directory of wheels only (an offline host), not an index.
cached_venv() {
  local prefix="$1" req="$2" what="${3:-$1}" key venv
  key="$(hash_of "$req")-$(python_tag)"
  venv="$MEDEMBED_CACHE/$prefix-$key"
  _build_venv() {
    [ -x "$venv/bin/python" ] && [ -f "$venv/.complete" ] && return 0
    log "creating the $what Python environment $venv (first run only)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    local pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)
    if [ -n "${WHEELS:-}" ]; then
      "${pip[@]}" --no-index --find-links "$WHEELS" -r "$req" >&2
    else
      "${pip[@]}" --upgrade pip >&2
      "${pip[@]}" -r "$req" >&2
    fi
    touch "$venv/.complete"
  }
  with_lock "$prefix-$key" _build_venv
  printf '%s\n' "$venv"
}

# bench_baseline_venv : the benchmarks' baseline environment: the managed
# service's serving stack (azureml-inference-server-http) with
# tests/bench/baseline/requirements.txt. Used by bench-worker.sh and
# bench-full-model.sh.
bench_baseline_venv() {
  cached_venv bench-baseline-venv "$MEDEMBED_ROOT/tests/bench/baseline/requirements.txt" "benchmark baseline"
}

# The medimageinsights 0.1.1 source distribution on PyPI: the model code the
# export uses and the tokenizer files the TEST MODEL ships, pinned by sha256.
SDIST_NAME="medimageinsights-0.1.1.tar.gz"
SDIST_SPEC="medimageinsights==0.1.1"
SDIST_SHA256="0fc65924cb88282db61ade27421a2f43a96a430dd3090c7a0392a30ea4159645"
SDIST="$MEDEMBED_CACHE/pypi/$SDIST_NAME"

# fetch_sdist PYTHON : downloads $SDIST (first run only, under a lock) with
# PYTHON's pip and checks its sha256; fails when either goes wrong.
fetch_sdist() {
  with_lock "pypi-medimageinsights" _fetch_sdist "$1"
}
_sdist_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SDIST_SHA256" ]; }
_fetch_sdist() {
  _sdist_ok "$SDIST" && return 0
  log "downloading the $SDIST_SPEC source distribution (first run only)"
  mkdir -p "$(dirname "$SDIST")"
  local tmp
  tmp="$(mktemp -d "$(dirname "$SDIST")/.download.XXXXXX")"
  if ! "$1" -m pip download --quiet --disable-pip-version-check \
      --no-deps --no-binary :all: "$SDIST_SPEC" -d "$tmp" >&2; then
    rm -rf "$tmp"; log "pip download of $SDIST_SPEC failed"; return 1
  fi
  if ! _sdist_ok "$tmp/$SDIST_NAME"; then
    log "sha256 mismatch for $SDIST_NAME: expected $SDIST_SHA256, got $(sha256sum "$tmp/$SDIST_NAME" 2>/dev/null | cut -d' ' -f1)"
    rm -rf "$tmp"; return 1
  fi
  mv -f "$tmp/$SDIST_NAME" "$SDIST"
  rm -rf "$tmp"
}
