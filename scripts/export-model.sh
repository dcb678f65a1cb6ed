#!/usr/bin/env bash
# Exports MedImageInsight's real architecture to a model directory the worker
# serves (scripts/export_model.py does the work; see its docstring).
#
#   scripts/export-model.sh OUTDIR                       # full size, random weights, fp32
#   scripts/export-model.sh OUTDIR --dtype fp16          # fp16 compute, f32 inputs/outputs
#   scripts/export-model.sh OUTDIR --checkpoint medimageinsight-v1.0.0.pt   # real weights
#   scripts/export-model.sh OUTDIR --reduced             # small depth/width (CI)
#
# Random weights (the default) make a model that costs exactly what the real one
# costs and whose embeddings mean nothing: for speed and memory figures only.
# The model code is the medimageinsights 0.1.1 source distribution from PyPI
# (downloaded once into $MEDEMBED_CACHE/pypi/, checked against a pinned sha256,
# unpacked once); torch and the rest come from scripts/export-env.sh's cached venv.
# Full size takes a few minutes and about 8 GiB of memory on a 2-core machine.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SDIST_NAME="medimageinsights-0.1.1.tar.gz"
SDIST_SPEC="medimageinsights==0.1.1"
SDIST_SHA256="0fc65924cb88282db61ade27421a2f43a96a430dd3090c7a0392a30ea4159645"

[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || { log "usage: scripts/export-model.sh OUTDIR [export_model.py flags]"; exit 2; }

eval "$("$MEDEMBED_ROOT/scripts/export-env.sh" --exports)"
pypi="$MEDEMBED_CACHE/pypi"
sdist="$pypi/$SDIST_NAME"
src="$MEDEMBED_CACHE/medimageinsights-0.1.1-$(echo "$SDIST_SHA256" | cut -c1-16)"

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SDIST_SHA256" ]; }

fetch_sdist() {
  sha_ok "$sdist" && return 0
  log "downloading the $SDIST_SPEC source distribution (first run only)"
  mkdir -p "$pypi"
  local tmp
  tmp="$(mktemp -d "$pypi/.download.XXXXXX")"
  if ! "$MEDEMBED_EXPORT_PYTHON" -m pip download --quiet --disable-pip-version-check \
      --no-deps --no-binary :all: "$SDIST_SPEC" -d "$tmp" >&2 || ! sha_ok "$tmp/$SDIST_NAME"; then
    rm -rf "$tmp"; log "could not download $SDIST_SPEC with sha256 $SDIST_SHA256"; return 1
  fi
  mv -f "$tmp/$SDIST_NAME" "$sdist"
  rm -rf "$tmp"
}

unpack() {
  [ -f "$src/.complete" ] && return 0
  rm -rf "$src"
  mkdir -p "$src"
  tar -xzf "$sdist" -C "$src" --no-same-owner --strip-components=1
  touch "$src/.complete"
}

with_lock "pypi-medimageinsights" fetch_sdist
with_lock "medimageinsights-src" unpack
exec "$MEDEMBED_EXPORT_PYTHON" "$MEDEMBED_ROOT/scripts/export_model.py" "$@" --package-dir "$src"
