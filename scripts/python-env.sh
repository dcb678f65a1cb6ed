#!/usr/bin/env bash
# Creates (once) the Python environment the build and tests use, and prints its
# directory. It holds ONNX Runtime's shared library (from the PyPI wheel), the
# test-model generator's packages and the independent references.
#
#   scripts/python-env.sh            # prints the venv directory
#   eval "$(scripts/python-env.sh --exports)"   # sets ORT_DYLIB_PATH, MEDEMBED_PYTHON
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

req="$MEDEMBED_ROOT/scripts/requirements.txt"
key="$(hash_of "$req")-py$(python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')"
venv="$MEDEMBED_CACHE/venv-$key"

build() {
  [ -x "$venv/bin/python" ] && [ -f "$venv/.complete" ] && return 0
  log "creating Python environment $venv (first run only)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  touch "$venv/.complete"
}
with_lock "venv-$key" build

if [ "${1:-}" = "--exports" ]; then
  lib=$(ls "$venv"/lib/python*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n1)
  echo "export ORT_DYLIB_PATH='$lib'"
  echo "export MEDEMBED_PYTHON='$venv/bin/python'"
else
  echo "$venv"
fi
