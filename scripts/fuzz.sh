#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a set time and prints, per
# target, the executions, the coverage reached and whether it crashed.
#
#   bash scripts/fuzz.sh [seconds per target, default 60] [target...]
#
# Not part of CI (scripts/test.sh runs only the regression tests that
# crashes found here became). Uses the fixed stable toolchain with
# RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z flags) and no sanitizer: the
# code under test is safe Rust, so the targets' own assertions (agreement
# with a reference, round-trips) and debug assertions (overflow) are what
# find bugs. A crash leaves its input in fuzz/artifacts/TARGET/; turn it
# into a regression test in the crate's tests, then fix.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"

secs="${1:-60}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(token_parse token_sign query path policy)
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (crates.io)" >&2
  cargo install cargo-fuzz --locked --quiet || exit 1
fi
export RUSTC_BOOTSTRAP=1
flags=(--sanitizer none --debug-assertions)
nice -n 19 cargo fuzz build "${flags[@]}" || exit 1

mkdir -p logs
status=0
printf '%-12s %8s %14s %10s %8s %8s %s\n' target seconds executions exec/s cov corpus result
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  extra=()
  [ -d "seeds/$t" ] && extra+=("seeds/$t")
  opts=(-max_total_time="$secs" -print_final_stats=1)
  [ -f "dicts/$t.dict" ] && opts+=(-dict="dicts/$t.dict")
  log="logs/$t.log"
  nice -n 19 cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "${extra[@]}" -- "${opts[@]}" >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  if [ "$rc" -eq 0 ]; then
    result=ok
  else
    result="CRASH (see fuzz/$log, input in fuzz/artifacts/$t/)"
    status=1
  fi
  corpus=$(find "corpus/$t" -type f | wc -l)
  printf '%-12s %8s %14s %10s %8s %8s %s\n' "$t" "$secs" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$corpus" "$result"
done
exit "$status"
