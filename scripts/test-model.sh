#!/usr/bin/env bash
# Creates (once) the TEST MODEL directory and prints its path. The test model has
# MedImageInsight's exact I/O and RANDOM WEIGHTS: its embeddings mean nothing. It
# exists so the worker's real loading, preprocessing, tokenising, batching and
# serving code can be tested without the real weights (which we cannot reach).
#
#   scripts/test-model.sh                          # prints the model directory
#   eval "$(scripts/test-model.sh --exports)"      # sets MEDEMBED_TEST_MODEL
#
# The model's real tokenizer files come from the PyPI source distribution
# medimageinsights==0.1.1 (downloaded once into $MEDEMBED_CACHE/pypi/, checked
# against a pinned sha256). The directory is $MEDEMBED_CACHE/test-model-<key>, key =
# hash of make_test_model.py + requirements.txt + the sdist's sha256; it is built in
# a temporary directory and renamed into place, under a lock.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SDIST_TOKENIZER="medimageinsights-0.1.1/MedImageInsights/v20240927/language_model/clip_tokenizer_v4162"
TOKENIZER_FILES=(vocab.json merges.txt tokenizer_config.json special_tokens_map.json)

eval "$("$MEDEMBED_ROOT/scripts/python-env.sh" --exports)"

gen="$MEDEMBED_ROOT/scripts/make_test_model.py"
key="$(printf '%s %s' "$(hash_of "$gen" "$MEDEMBED_ROOT/scripts/requirements.txt")" "$SDIST_SHA256" | sha256sum | cut -c1-16)"
model="$MEDEMBED_CACHE/test-model-$key"

build_model() {
  [ -f "$model/medembed-model.json" ] && return 0
  fetch_sdist "$MEDEMBED_PYTHON"
  log "building the TEST MODEL (random weights) in $model (first run only)"
  # not local: the EXIT trap (this runs in with_lock's subshell) must still see it
  build_tmp="$(mktemp -d "$MEDEMBED_CACHE/.test-model-$key.XXXXXX")"
  trap 'rm -rf "$build_tmp"' EXIT
  local tmp="$build_tmp"
  mkdir -p "$tmp/clip_tokenizer"
  local members=() f
  for f in "${TOKENIZER_FILES[@]}"; do members+=("$SDIST_TOKENIZER/$f"); done
  tar -xzf "$SDIST" -C "$tmp/clip_tokenizer" --no-same-owner --no-same-permissions --strip-components=5 "${members[@]}"
  chmod 644 "$tmp"/clip_tokenizer/*
  for f in "${TOKENIZER_FILES[@]}"; do
    [ -s "$tmp/clip_tokenizer/$f" ] || { log "missing $f in $SDIST_NAME"; return 1; }
  done
  "$MEDEMBED_PYTHON" "$gen" "$tmp" --tokenizer-dir "$tmp/clip_tokenizer" >&2
  chmod 755 "$tmp"
  rm -rf "$model"   # only an incomplete leftover can be here (no medembed-model.json)
  mv -T "$tmp" "$model"
}
with_lock "test-model-$key" build_model

if [ "${1:-}" = "--exports" ]; then
  echo "export MEDEMBED_TEST_MODEL='$model'"
else
  echo "$model"
fi
