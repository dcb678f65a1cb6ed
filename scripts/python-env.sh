#!/usr/bin/env bash
# Creates (once) the Python environment the build and tests use, and prints its
# directory. It holds ONNX Runtime's shared library (from the PyPI wheel), the
# test-model generator's packages and the independent references.
#
#   scripts/python-env.sh            # prints the venv directory
#   eval "$(scripts/python-env.sh --exports)"   # sets ORT_DYLIB_PATH, MEDEMBED_PYTHON
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

venv="$(cached_venv venv "$MEDEMBED_ROOT/scripts/requirements.txt" "test and build")"

if [ "${1:-}" = "--exports" ]; then
  lib=$(ls "$venv"/lib/python*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n1)
  echo "export ORT_DYLIB_PATH='$lib'"
  echo "export MEDEMBED_PYTHON='$venv/bin/python'"
else
  echo "$venv"
fi
