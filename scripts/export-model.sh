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

[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || { log "usage: scripts/export-model.sh OUTDIR [export_model.py flags]"; exit 2; }

eval "$("$MEDEMBED_ROOT/scripts/export-env.sh" --exports)"
src="$MEDEMBED_CACHE/medimageinsights-0.1.1-$(echo "$SDIST_SHA256" | cut -c1-16)"

unpack() {
  [ -f "$src/.complete" ] && return 0
  rm -rf "$src"
  mkdir -p "$src"
  tar -xzf "$SDIST" -C "$src" --no-same-owner --strip-components=1
  touch "$src/.complete"
}

fetch_sdist "$MEDEMBED_EXPORT_PYTHON"
with_lock "medimageinsights-src" unpack
exec "$MEDEMBED_EXPORT_PYTHON" "$MEDEMBED_ROOT/scripts/export_model.py" "$@" --package-dir "$src"
