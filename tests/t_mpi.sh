#!/usr/bin/env bash
# t_mpi.sh: data-parallel training over MPI (issue 9) with `mpirun --oversubscribe`, one OpenMP
# thread per rank, on the tiny T5Gemma preset.
#
# Data: 256 pre-tokenized documents of exactly 30 ids; PrefixLM with one document per row
# (prefixlm_pack=0, <bos> + 30 + <eos> = 32 tokens split 16 / 16), so every row has 16 target
# tokens and no row depends on another. The reader gives rank r of W the epoch positions
# r, r+W, r+2W, ... (data/shards.h), so at step s (batch_size B) the 2 ranks together read
# positions [2Bs, 2B(s+1)); one rank with grad_accum=2 reads the same positions as two
# consecutive micro-batches. The global batch is the same set of rows, and the loss is a sum over
# rows divided by the global target-token count, so both must agree up to float summation order.
#
# Checks:
#   dp2_matches_accum2_*        2 ranks == 1 rank x grad_accum 2 (losses, weights, AdamW moments)
#   zero1_matches_dp2_bitexact  ZeRO-1 == plain allreduce with 2 ranks, bit for bit (a+b is
#                               commutative, the clip coefficient agrees)
#   zero1_3ranks_uneven         3 ranks (412288 weights: uneven ZeRO-1 slices) vs plain 3 ranks,
#                               to float tolerance (3-term sums are ordered differently by
#                               MPI_Allreduce and MPI_Reduce_scatter); gathered moments included
#   resume_2rank_bitexact(_zero1)  a 2-rank run resumed at step 3 == the uninterrupted run
#   resume_2to1_continues_exactly  a 2-rank ZeRO-1 checkpoint resumed on 1 rank x grad_accum 2
#                               continues like the 1-rank run (data order re-split exactly)
#   resume_1to2_continues_exactly  a 1-rank checkpoint resumed on 2 ranks with ZeRO-1
#   rank_death_stops_job        kill -9 of rank 1 mid-run: mpirun returns non-zero well within 60 s
#   weight_mismatch_reported    a perturbed weight on rank 1 (T5G_TEST_PERTURB_RANK/STEP hook in
#                               train.c) stops the run with the cross-rank checksum error
set -u
cd "$(dirname "$0")/.."
BIN=${T5G_BIN:-./t5gemma}
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
if ! command -v mpirun >/dev/null 2>&1; then pass mpi_skipped_no_mpirun; exit 0; fi
PY=/usr/bin/python3
T=$(mktemp -d /tmp/t5g_t_mpi.XXXXXX)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=1
# CMA single-copy needs ptrace rights that containers often lack; plain shared memory is enough
export OMPI_MCA_btl_vader_single_copy_mechanism=none
MPI="mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 -x OMPI_MCA_btl_vader_single_copy_mechanism"

$PY - "$T/ids.txt" <<'EOF'
import random, sys
random.seed(7)
with open(sys.argv[1], "w") as f:
    for i in range(256):
        f.write(" ".join(str(random.randrange(3, 512)) for _ in range(30)) + "\n")
EOF
if ! "$BIN" data prepare --format tokens --vocab-size 512 --bos-id 2 --eos-id 1 --pad-id 0 --val-fraction 0 \
     --shard-tokens 2000 --frame-tokens 300 --out "$T/ds" "$T/ids.txt" >"$T/prep.out" 2>&1; then
  fail mpi_dataset "$(tail -3 "$T/prep.out")"; exit 0
fi

C=(model=tiny-t5gemma objective=prefixlm prefixlm_pack=0 enc_len=16 dec_len=16 data="$T/ds" steps=6 save_every=1
   lr=1e-3 warmup_steps=2 log_every=1 threads=1 seed=5 batch_size=2 keep_last=4)
run1() { local out=$1; shift; "$BIN" train "${C[@]}" "$@" >"$out" 2>&1; }
runN() { local np=$1 out=$2; shift 2; timeout 120 $MPI -np "$np" "$BIN" train "${C[@]}" "$@" >"$out" 2>&1; }
ck() { printf '%s/ckpt-%08d.h5' "$1" "$2"; }

# cmp.py A.h5 B.h5 TOL [FROM_STEP METRICS_A METRICS_B]: weights and AdamW moments of two
# checkpoints (TOL = 0: bit-identical; else max |a-b| <= TOL for weights, TOL/10 for m and
# TOL/1000 for v), and the losses/grad norms of metrics lines from FROM_STEP on (printed with 6
# digits: equal, or within 2e-5 when TOL > 0).
cat >"$T/cmp.py" <<'EOF'
import h5py, json, numpy as np, sys
a, b, tol = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r"), float(sys.argv[3])
bad = []
for g, t in (("params", tol), ("optimizer/m", tol / 10), ("optimizer/v", tol / 1000)):
    ka, kb = sorted(a[g]), sorted(b[g])
    if ka != kb: bad.append("%s: different tensors" % g); continue
    worst = max(float(np.abs(a[g][k][()].astype(np.float64) - b[g][k][()]).max()) for k in ka)
    same = all(np.array_equal(a[g][k][()], b[g][k][()]) for k in ka)
    if (tol == 0 and not same) or worst > t: bad.append("%s max |diff| %.3g (allowed %s)" % (g, worst, "0" if tol == 0 else "%.3g" % t))
if a.attrs["step"] != b.attrs["step"]: bad.append("steps %s vs %s" % (a.attrs["step"], b.attrs["step"]))
if len(sys.argv) > 4:
    frm = int(sys.argv[4])
    def rows(p): return {r["step"]: r for r in map(json.loads, open(p)) if "loss" in r and r["step"] >= frm}
    ra, rb = rows(sys.argv[5]), rows(sys.argv[6])
    if sorted(ra) != sorted(rb) or not ra: bad.append("metrics steps %s vs %s" % (sorted(ra), sorted(rb)))
    for s in sorted(set(ra) & set(rb)):
        for f in ("loss", "grad_norm", "target_tokens"):
            d = abs(ra[s][f] - rb[s][f])
            if (tol == 0 and d != 0) or d > 2e-5 * max(1, abs(ra[s][f])):
                bad.append("step %d %s %s vs %s" % (s, f, ra[s][f], rb[s][f]))
print("ok" if not bad else "; ".join(bad))
EOF
check() {  # name A B TOL [FROM MA MB]
  local name=$1; shift
  local r; r=$($PY "$T/cmp.py" "$@" 2>&1 | tail -1)
  if [ "$r" = ok ]; then pass "$name"; else fail "$name" "$r"; fi
}

# ---- reference runs: 1 rank x grad_accum 2; 2 ranks; 2 ranks ZeRO-1
run1 "$T/r1.out" grad_accum=2 run_dir="$T/r1"
runN 2 "$T/r2.out" run_dir="$T/r2"
runN 2 "$T/z2.out" run_dir="$T/z2" zero1=1
for r in r1 r2 z2; do
  if [ ! -f "$(ck "$T/$r" 6)" ]; then fail "mpi_run_$r" "no step-6 checkpoint: $(grep -v '^step' "$T/$r.out" | tail -5)"; exit 0; fi
done
if grep -q "x 2 rank(s)" "$T/r2.out"; then pass dp2_runs_as_two_ranks
else fail dp2_runs_as_two_ranks "the log does not say 2 ranks (binary built without MPI? make MPI=1): $(head -2 "$T/r2.out")"; exit 0; fi

check dp2_matches_accum2_losses_and_weights "$(ck "$T/r1" 6)" "$(ck "$T/r2" 6)" 1e-5 1 "$T/r1/metrics.jsonl" "$T/r2/metrics.jsonl"
check zero1_matches_dp2_bitexact "$(ck "$T/r2" 6)" "$(ck "$T/z2" 6)" 0 1 "$T/r2/metrics.jsonl" "$T/z2/metrics.jsonl"

# ---- 3 ranks, uneven ZeRO-1 slices
runN 3 "$T/r3.out" run_dir="$T/r3" steps=3
runN 3 "$T/z3.out" run_dir="$T/z3" steps=3 zero1=1
if [ -f "$(ck "$T/r3" 3)" ] && [ -f "$(ck "$T/z3" 3)" ]; then
  check zero1_3ranks_uneven_matches_dp3 "$(ck "$T/r3" 3)" "$(ck "$T/z3" 3)" 2e-5 1 "$T/r3/metrics.jsonl" "$T/z3/metrics.jsonl"
else
  fail zero1_3ranks_uneven_matches_dp3 "$(grep -v '^step' "$T/z3.out" | tail -5)"
fi

# ---- resume: a directory holding only the step-3 checkpoint of a run
resume_dir() { mkdir -p "$T/$2"; cp "$(ck "$T/$1" 3)" "$T/$2/"; }
resume_dir r2 c_r2; resume_dir z2 c_z2; resume_dir r1 c_r1
runN 2 "$T/e2.out" resume="$T/c_r2" run_dir="$T/e2"
check resume_2rank_bitexact "$(ck "$T/r2" 6)" "$(ck "$T/e2" 6)" 0 4 "$T/r2/metrics.jsonl" "$T/e2/metrics.jsonl"
runN 2 "$T/ez2.out" resume="$T/c_z2" run_dir="$T/ez2" zero1=1
check resume_2rank_bitexact_zero1 "$(ck "$T/z2" 6)" "$(ck "$T/ez2" 6)" 0 4 "$T/z2/metrics.jsonl" "$T/ez2/metrics.jsonl"
run1 "$T/e21.out" resume="$T/c_z2" run_dir="$T/e21" grad_accum=2
if grep -q "re-split from 2 to 1 ranks.*0 document(s) of lagging ranks skipped" "$T/e21.out"; then
  check resume_2to1_continues_exactly "$(ck "$T/r1" 6)" "$(ck "$T/e21" 6)" 1e-5 4 "$T/r1/metrics.jsonl" "$T/e21/metrics.jsonl"
else fail resume_2to1_continues_exactly "no re-split message: $(grep -v '^step' "$T/e21.out" | tail -5)"; fi
runN 2 "$T/e12.out" resume="$T/c_r1" run_dir="$T/e12" zero1=1
if grep -q "re-split from 1 to 2 ranks.*0 document(s) of lagging ranks skipped" "$T/e12.out"; then
  check resume_1to2_continues_exactly "$(ck "$T/z2" 6)" "$(ck "$T/e12" 6)" 1e-5 4 "$T/z2/metrics.jsonl" "$T/e12/metrics.jsonl"
else fail resume_1to2_continues_exactly "no re-split message: $(grep -v '^step' "$T/e12.out" | tail -5)"; fi

# ---- a rank that dies: kill -9 rank 1 once training is under way; the job must end non-zero
t0=$(date +%s)
timeout 60 $MPI -np 2 "$BIN" train "${C[@]}" steps=1000000 save_every=0 log_every=1 run_dir="$T/k" >"$T/k.out" 2>&1 &
mp=$!
victim=""
for _ in $(seq 1 300); do
  if [ -s "$T/k/metrics.jsonl" ] && [ "$(wc -l <"$T/k/metrics.jsonl")" -ge 3 ]; then
    for d in /proc/[0-9]*; do    # the rank-1 process of this job (no procps needed)
      tr '\0' '\n' <"$d/cmdline" 2>/dev/null | grep -qxF "run_dir=$T/k" || continue
      if tr '\0' '\n' <"$d/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1'; then victim=${d#/proc/}; fi
    done
    break
  fi
  sleep 0.1
done
if [ -n "$victim" ]; then kill -9 "$victim"; fi
wait "$mp"; rc=$?
dt=$(( $(date +%s) - t0 ))
if [ -z "$victim" ]; then fail rank_death_stops_job "could not find rank 1's process (mpirun rc $rc): $(tail -3 "$T/k.out")"
elif [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$dt" -lt 60 ]; then pass rank_death_stops_job
else fail rank_death_stops_job "mpirun rc $rc after ${dt}s (124 = timed out, i.e. the other rank hung)"; fi

# ---- a weight that differs on one rank is reported (test hook in train.c)
timeout 60 $MPI -np 2 -x T5G_TEST_PERTURB_RANK=1 -x T5G_TEST_PERTURB_STEP=2 "$BIN" train "${C[@]}" save_every=1 \
  run_dir="$T/p" >"$T/p.out" 2>&1; rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && grep -q "weights differ across ranks after step 2" "$T/p.out" &&
   [ -f "$(ck "$T/p" 1)" ] && [ ! -f "$(ck "$T/p" 2)" ]; then pass weight_mismatch_reported
else fail weight_mismatch_reported "rc $rc: $(grep -v '^step' "$T/p.out" | tail -4)"; fi
