#!/usr/bin/env bash
# Fuzzes the parsers of untrusted input with cargo-fuzz (libFuzzer with
# AddressSanitizer and debug assertions, so overflows panic): the file header
# and sealed files, the ciphertext blob, the keystore file and body, key policy
# JSON, the encryption-context parser and the size/offset arithmetic. Targets
# and their properties: fuzz/fuzz_targets and tests/fuzz_support/mod.rs.
#
# Each target runs for FUZZ_SECONDS (default 60) with its inputs capped at
# FUZZ_RSS_MB of memory (default 1024; one allocation at half of it) and
# 10 s per input (a hang is a finding). FUZZ_TARGETS picks targets.
# The corpus grows in fuzz/corpus/TARGET across runs; a crashing input lands in
# fuzz/artifacts/TARGET/ and `cargo +nightly fuzz run TARGET FILE` replays it.
# Prints a table of executions, coverage and findings; exits 1 on a finding.
#
# cargo-fuzz needs a nightly compiler (for -Zsanitizer). Where only a stable
# toolchain exists, the stable compiler is used with RUSTC_BOOTSTRAP=1, which
# unlocks the same flags.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
rss_mb=${FUZZ_RSS_MB:-1024}
targets=${FUZZ_TARGETS:-"header blob keystore policy context offsets"}

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=+nightly
else
  toolchain=+stable
  export RUSTC_BOOTSTRAP=1
  echo "note: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1" >&2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install --locked --quiet cargo-fuzz
fi

# The targets' fixtures make temporary keystores: keep them in one place.
work=$(mktemp -d /tmp/kmsfs-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT

cd fuzz
echo "building the fuzz targets ($toolchain, AddressSanitizer, debug assertions)"
cargo "$toolchain" fuzz build --debug-assertions >"$work/build.log" 2>&1 || {
  cat "$work/build.log" >&2
  exit 1
}

status=0
rows=()
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  dict=()
  [[ -f "dict/$t.dict" ]] && dict=("-dict=dict/$t.dict")
  log="$work/$t.log"
  echo "fuzzing $t for ${seconds}s"
  set +e
  TMPDIR="$work" cargo "$toolchain" fuzz run --debug-assertions "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb="$rss_mb" \
    -malloc_limit_mb=$((rss_mb / 2)) -max_len=8192 -print_final_stats=1 \
    "${dict[@]}" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  corpus=$(find "corpus/$t" -type f | wc -l)
  if ((rc == 0)); then
    verdict=ok
  else
    status=1
    verdict="FINDING (exit $rc): $(grep -m1 -oE 'panicked at [^ ]+|ERROR: [A-Za-z]+: [a-z-]+|(deadly signal|timeout|out-of-memory)[^\n]*' "$log" || true)"
    echo "--- $t: last lines of its log ---"
    tail -40 "$log"
    ls -1 "artifacts/$t" | sed 's/^/  artifact: /'
  fi
  rows+=("$(printf '%-9s %6ss %12s %9s %6s %7s  %s' "$t" "$seconds" "${runs:-?}" "${speed:-?}" "${cov:-?}" "$corpus" "$verdict")")
done

echo
echo "fuzzing on $(date -u +%Y-%m-%d), $(rustc "$toolchain" --version)"
printf '%-9s %7s %12s %9s %6s %7s  %s\n' target time executions exec/s cov corpus verdict
printf '%s\n' "${rows[@]}"
exit "$status"
