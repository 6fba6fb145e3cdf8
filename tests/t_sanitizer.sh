#!/usr/bin/env bash
# The engine and model tests again under AddressSanitizer + UndefinedBehaviorSanitizer
# (`make SAN=1`, objects in build-san/). Each PASS/FAIL line of those programs is reported with
# a "san_" prefix; a sanitizer report makes the program fail.
set -u
cd "$(dirname "$0")/.."
progs="test_ops test_ops_attention test_ops_loss test_model test_adapt test_optim test_safetensors test_shards test_objectives test_weights_bf16 test_teacher_bf16"
targets=""; for p in $progs; do [ -f tests/$p.c ] && targets="$targets build-san/tests/$p"; done
if ! make -s SAN=1 $targets >build-san-make.log 2>&1; then
  echo "FAIL san_build: $(tail -5 build-san-make.log)"; rm -f build-san-make.log; exit 1
fi
rm -f build-san-make.log
export ASAN_OPTIONS=abort_on_error=0:detect_leaks=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for p in $progs; do
  [ -x build-san/tests/$p ] || continue
  out=$(build-san/tests/$p 2>&1); rc=$?
  echo "$out" | grep -E '^(PASS|FAIL) ' | sed 's/^\(PASS\|FAIL\) /\1 san_/'
  if [ $rc -ne 0 ] && ! echo "$out" | grep -q '^FAIL '; then
    echo "FAIL san_$p: exited with status $rc: $(echo "$out" | grep -E 'ERROR|runtime error|SUMMARY' | head -3)"
  fi
done
