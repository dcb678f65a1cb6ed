#!/usr/bin/env bash
# Creates (once) a random-weights export of MedImageInsight's REAL ARCHITECTURE
# (scripts/export-model.sh) in the cache and prints its directory. Its embeddings
# mean nothing; its cost is the real model's.
#
#   scripts/arch-model.sh --reduced               # small depth/width: CI's end-to-end test
#   scripts/arch-model.sh --full [--dtype fp16]   # full size: the benchmarks (a few minutes)
#   eval "$(scripts/arch-model.sh --reduced --exports)"   # sets MEDEMBED_REDUCED_MODEL
#   eval "$(scripts/arch-model.sh --full --exports)"      # sets MEDEMBED_FULL_MODEL
#
# The directory is $MEDEMBED_CACHE/arch-model-<variant>-<dtype>-<key>, key = hash of
# the export code, its requirements and the tokenizer builder; it is built in a
# temporary directory and renamed into place, under a lock.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

variant="" dtype="fp32" exports=0
while [ $# -gt 0 ]; do
  case "$1" in
    --reduced) variant=reduced ;;
    --full) variant=full ;;
    --dtype) dtype="$2"; shift ;;
    --exports) exports=1 ;;
    *) log "unknown argument $1"; exit 2 ;;
  esac
  shift
done
[ -n "$variant" ] || { log "usage: scripts/arch-model.sh --reduced|--full [--dtype fp32|fp16] [--exports]"; exit 2; }

s="$MEDEMBED_ROOT/scripts"
key="$(hash_of "$s/export_model.py" "$s/export-model.sh" "$s/export-requirements.txt" "$s/make_test_model.py")"
model="$MEDEMBED_CACHE/arch-model-$variant-$dtype-$key"

build() {
  [ -f "$model/medembed-model.json" ] && return 0
  log "exporting MedImageInsight's architecture ($variant, $dtype, random weights) to $model (first run only)"
  build_tmp="$(mktemp -d "$MEDEMBED_CACHE/.arch-model-$variant.XXXXXX")"
  trap 'rm -rf "$build_tmp"' EXIT
  local flags=(--dtype "$dtype")
  [ "$variant" = reduced ] && flags+=(--reduced)
  "$s/export-model.sh" "$build_tmp" "${flags[@]}" >&2
  chmod 755 "$build_tmp"
  rm -rf "$model"
  mv -T "$build_tmp" "$model"
}
with_lock "arch-model-$variant-$dtype-$key" build

if [ "$exports" = 1 ]; then
  var=MEDEMBED_REDUCED_MODEL
  [ "$variant" = full ] && var=MEDEMBED_FULL_MODEL
  [ "$dtype" = fp16 ] && var="${var}_FP16"
  echo "export $var='$model'"
else
  echo "$model"
fi
