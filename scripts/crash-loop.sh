#!/usr/bin/env bash
# The long crash loop (RELIABILITY.md has its figures): the release
# binaries, uploads of 0-64 MiB in chunks of up to 4 MiB, SIGKILL at a
# random moment of every round; on S3 + PostgreSQL, Garage kills and cut
# database connections as well. Each run prints a summary and appends its
# JSON report to $OUT (default: crash-loop.jsonl in the cargo target
# directory). Then the model test with MODEL_CASES cases and FAULT_RUNS
# runs of the random storage-fault test (0 skips either). Exit 1 when
# anything failed (a crash loop's work directory is then kept).
#
#   scripts/crash-loop.sh                 # 50 rounds embedded, 50 on S3 + PostgreSQL, 1000 model cases, 20 fault runs
#   ROUNDS=200 BACKENDS=embedded MODEL_CASES=0 FAULT_RUNS=0 scripts/crash-loop.sh
#   SEED=42 scripts/crash-loop.sh         # the same choices again
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-50}"
BACKENDS="${BACKENDS:-embedded s3-pg}"
CONCURRENCY="${CONCURRENCY:-8}"
MODEL_CASES="${MODEL_CASES:-1000}"
FAULT_RUNS="${FAULT_RUNS:-20}"
TARGET="${CARGO_TARGET_DIR:-target}"
OUT="${OUT:-$TARGET/crash-loop.jsonl}"
source scripts/services.sh
case "$BACKENDS" in *s3-pg*) ensure_postgres; ensure_garage ;; esac

cargo build --release --locked -p upline -p upline-torture
bin="$TARGET/release"
mkdir -p "$(dirname "$OUT")"
status=0
for backend in $BACKENDS; do
  echo "crash-loop: $backend, $ROUNDS rounds" >&2
  args=(--backend "$backend" --rounds "$ROUNDS" --concurrency "$CONCURRENCY"
        --max-size $((64 << 20)) --max-chunk $((4 << 20)) --min-round-ms 300 --max-round-ms 5000 --json)
  if [ -n "${SEED:-}" ]; then args+=(--seed "$SEED"); fi
  report="$TARGET/crash-loop-$backend.out"
  if ! "$bin/upline-torture" --upline "$bin/upline" "${args[@]}" > "$report"; then
    status=1
  fi
  head -n1 "$report"
  grep '^{' "$report" >> "$OUT" || true
  grep -v '^{' "$report" | tail -n +2 || true
done

if [ "$MODEL_CASES" -gt 0 ]; then
  echo "crash-loop: the model test, $MODEL_CASES cases" >&2
  start=$(date +%s)
  log="$TARGET/model-test.log"
  if ! PROPTEST_CASES="$MODEL_CASES" cargo test --release --locked -p upline-torture --test model -- --nocapture > "$log" 2>&1; then
    status=1
    grep -A40 'Test failed' "$log" || tail -n 40 "$log"
  fi
  grep -E '^model test|^test result' "$log" || true
  echo "model test: $(( $(date +%s) - start )) s"
fi
if [ "$FAULT_RUNS" -gt 0 ]; then
  echo "crash-loop: the random storage-fault test, $FAULT_RUNS runs" >&2
  log="$TARGET/faults-test.log"
  for _ in $(seq "$FAULT_RUNS"); do
    if ! cargo test --release --locked -p upline-core --test faults random -- --nocapture > "$log" 2>&1; then
      status=1
      grep -B2 -A10 'panicked' "$log" || tail -n 40 "$log"
    fi
    grep -E '^faults:' "$log" || true
  done
fi
exit "$status"
