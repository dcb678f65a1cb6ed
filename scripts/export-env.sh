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

req="$MEDEMBED_ROOT/scripts/export-requirements.txt"
key="$(hash_of "$req")-py$(python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')"
venv="$MEDEMBED_CACHE/export-venv-$key"

build() {
  [ -x "$venv/bin/python" ] && [ -f "$venv/.complete" ] && return 0
  log "creating the model-export Python environment $venv (first run only; torch is large)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  touch "$venv/.complete"
}
with_lock "export-venv-$key" build

if [ "${1:-}" = "--exports" ]; then
  echo "export MEDEMBED_EXPORT_PYTHON='$venv/bin/python'"
else
  echo "$venv"
fi
