#!/usr/bin/env bash
# Creates (once) the Python environment of the model export tool
# (scripts/export_model.py) and prints its directory. It holds torch, the
# MedImageInsight model code's imports, onnx, ONNX Runtime and matplotlib.
# It is cached under $MEDEMBED_CACHE keyed by scripts/export-requirements.txt
# and the Python version, so torch is downloaded once per key.
#
#   scripts/export-env.sh              # prints the venv directory
#   eval "$(scripts/export-env.sh --exports)"   # sets MEDEMBED_EXPORT_PYTHON
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

venv="$(cached_venv export-venv "$MEDEMBED_ROOT/scripts/export-requirements.txt" "model-export (torch is large)")"

if [ "${1:-}" = "--exports" ]; then
  echo "export MEDEMBED_EXPORT_PYTHON='$venv/bin/python'"
else
  echo "$venv"
fi
