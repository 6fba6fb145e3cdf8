#!/usr/bin/env bash
# The OpenBLAS core fix at start-up (issue 2): a pre-AVX core on an AVX2/AVX-512 CPU is replaced
# by re-executing with OPENBLAS_CORETYPE; a user's OPENBLAS_CORETYPE is respected; --threads
# sets the thread count shown.
BIN=${T5G_BIN:-./t5gemma}
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
if ! grep -qE 'avx2|avx512f' /proc/cpuinfo; then echo "PASS blas_fix_skipped_no_avx2"; exit 0; fi
out=$(env -u OPENBLAS_CORETYPE T5G_BLAS_ASSUME_CORE=Prescott "$BIN" info --no-measure 2>&1)
core=$(echo "$out" | sed -n 's/^openblas core: *\([A-Za-z0-9_]*\).*/\1/p')
if echo "$out" | grep -q "fixed: detected Prescott" && [ -n "$core" ] && [ "$core" != Prescott ]; then
  pass blas_fix_reexec_from_prescott
else fail blas_fix_reexec_from_prescott "core '$core'; output: $out"; fi
out=$(OPENBLAS_CORETYPE=Haswell T5G_BLAS_ASSUME_CORE=Prescott "$BIN" info --no-measure 2>&1)
if echo "$out" | grep -q "^openblas core: *Haswell" && echo "$out" | grep -q "set by the user"; then
  pass blas_user_override_respected
else fail blas_user_override_respected "$out"; fi
out=$(env -u OPENBLAS_CORETYPE T5G_BLAS_ASSUME_CORE=Prescott T5G_BLAS_FIX=0 "$BIN" info --no-measure 2>&1)
if echo "$out" | grep -q "fixed:"; then fail blas_fix_can_be_disabled "$out"; else pass blas_fix_can_be_disabled; fi
out=$("$BIN" --threads 1 info --no-measure 2>&1)
if echo "$out" | grep -q "^threads: *1 "; then pass threads_flag; else fail threads_flag "$out"; fi
out=$(OMP_NUM_THREADS=2 "$BIN" info --no-measure 2>&1)
if echo "$out" | grep -q "^threads: *2 "; then pass threads_env; else fail threads_env "$out"; fi
