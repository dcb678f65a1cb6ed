#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer, through the libfuzzer-sys crate) of
# every parser and decoder that reads what clients or the cluster send:
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# builds tests/fuzz with coverage instrumentation (stable Rust: rustc's
# sancov pass and LLVM options, which is what cargo-fuzz does without a
# sanitizer; no nightly, no download) and runs each target for SECONDS
# (default 20) from its committed seed corpus, in a scratch copy so the
# repository is not touched. A crash, a timeout (10 s for one input) or an
# out-of-memory (2 GiB) fails the run; its input is kept under
# target/fuzz/artifacts/TARGET/ (add it to tests/fuzz/corpus/TARGET/ and
# fix the bug). Prints executions, coverage and corpus size per target.
# FUZZ_KEEP=DIR keeps the grown corpora in DIR/TARGET. FUZZ_SEED=N fixes
# libFuzzer's random seed (the test suite's smoke run uses 1, so that it
# explores the same way on every machine; long runs leave it random).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$MEDEMBED_ROOT"

seconds="${1:-20}"
shift || true
all=(request base64 decode_png decode_jpeg decode_dicom window tokenize route token config_file redis_reply)
targets=("${@:-${all[@]}}")

# The tokenizer target reads the test model's tokenizer.
if [ -z "${MEDEMBED_TEST_MODEL:-}" ]; then
  eval "$(scripts/python-env.sh --exports)"
  eval "$(scripts/test-model.sh --exports)"
fi

host="$(rustc -vV | sed -n 's/^host: //p')"
out="$MEDEMBED_ROOT/target/fuzz"
# --target keeps the instrumentation off build scripts and proc macros.
# The fuzz crate is its own workspace; its lock file starts as a copy of the
# main one, so that every crate shared with the programs is built at the
# version they ship with (cargo adds only libFuzzer's own crates).
cp Cargo.lock tests/fuzz/Cargo.lock
log "building the fuzz targets (instrumented, release)"
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing" \
  cargo build --release --manifest-path tests/fuzz/Cargo.toml \
  --target "$host" --target-dir "$out/build" --bins

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
printf '%-14s %8s %12s %10s %8s %8s  %s\n' target seconds executions exec/s cov corpus result
for t in "${targets[@]}"; do
  bin="$out/build/$host/release/$t"
  [ -x "$bin" ] || { log "no fuzz target $t (known: ${all[*]})"; exit 2; }
  corpus="$scratch/$t"
  mkdir -p "$corpus" "$out/artifacts/$t"
  cp tests/fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  rc=0
  "$bin" "$corpus" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    ${FUZZ_SEED:+-seed="$FUZZ_SEED"} \
    -artifact_prefix="$out/artifacts/$t/" -print_final_stats=1 >"$scratch/$t.log" 2>&1 || rc=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log" | tail -1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$scratch/$t.log" | tail -1)"
  cov="$({ grep -o 'cov: [0-9]*' "$scratch/$t.log" || true; } | tail -1 | cut -d' ' -f2)"
  size="$(find "$corpus" -type f | wc -l)"
  if [ "$rc" = 0 ]; then result=ok; else result="FAILED (rc $rc)"; failed+=("$t"); fi
  printf '%-14s %8s %12s %10s %8s %8s  %s\n' "$t" "$seconds" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$size" "$result"
  if [ "$rc" != 0 ]; then
    grep -E 'ERROR|panicked|SUMMARY|Test unit written|timeout|out-of-memory' "$scratch/$t.log" | head -20 >&2
  fi
  if [ -n "${FUZZ_KEEP:-}" ]; then mkdir -p "$FUZZ_KEEP/$t" && cp "$corpus"/* "$FUZZ_KEEP/$t"/; fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  log "fuzzing found problems in: ${failed[*]} (inputs under $out/artifacts/)"
  exit 1
fi
