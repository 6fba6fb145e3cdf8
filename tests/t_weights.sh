#!/usr/bin/env bash
# t_weights.sh: weights kept as bf16 by the inference commands, and their memory refusals
# (issue 10; model/weights_bf16.h, model/memory.h).
# A tiny T5Gemma trained by tests/test_eval (T5G_EVAL_SAVE) is stored as BF16 (numpy rounding to
# nearest even), then:
#   weights_score      score --weights f32 and --weights bf16 give the same log-probabilities
#                      (1e-5), and the log names the dtype; auto keeps f32 for a model that fits
#   weights_generate   greedy generate: the same tokens and log-probabilities with both
#   weights_eval       eval tasks: the same accuracies with both
#   weights_bad_option --weights fp8: usage error (exit 2) naming the accepted values
#   refuse_*           a config far beyond this machine (only config.json, no weights): score,
#                      generate and eval exit 1 within a second with "needs about ... available"
#                      (both dtypes), i.e. before allocating or opening any weights
#   info_rows          `t5gemma info` shows the bf16 and generation rows for a real-size config
set -u
cd "$(dirname "$0")/.."
BIN=${T5G_BIN:-./t5gemma}
TESTBIN=$(dirname "$BIN")/tests/test_eval
[ -x "$TESTBIN" ] || TESTBIN=build/tests/test_eval
PY=/usr/bin/python3
T=$(mktemp -d /tmp/t5g_t_weights.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

if ! T5G_EVAL_SAVE=$T "$TESTBIN" trained_models >"$T/train.log" 2>&1 || [ ! -f "$T/model/config.json" ]; then
  fail setup "could not train/save the tiny model with $TESTBIN: $(tail -n 3 "$T/train.log")"
  exit 0
fi
M=$T/bf16
mkdir -p "$M"
cp "$T/model/config.json" "$T/model/tokenizer.json" "$M/"
if ! $PY - "$T/model/model.safetensors" "$M/model.safetensors" <<'EOF'
import json, struct, sys
import numpy as np
src, dst = sys.argv[1], sys.argv[2]
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
data = raw[8 + n:]
out_hdr, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
for name, t in hdr.items():
    if name == "__metadata__": continue
    assert t["dtype"] == "F32"
    a = np.frombuffer(data[t["data_offsets"][0]:t["data_offsets"][1]], dtype="<u4")
    b = ((a + 0x7FFF + ((a >> 16) & 1)) >> 16).astype("<u2").tobytes()   # round to nearest even
    out_hdr[name] = {"dtype": "BF16", "shape": t["shape"], "data_offsets": [off, off + len(b)]}
    blobs.append(b); off += len(b)
h = json.dumps(out_hdr).encode()
h += b" " * (-len(h) % 8)
open(dst, "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
EOF
then fail setup "BF16 conversion failed"; exit 0; fi

# ---- score -------------------------------------------------------------------------------------
$PY - >"$T/score.jsonl" <<'EOF'
import random
random.seed(3)
for i in range(12):
    print('{"input_ids": %s, "target_ids": %s}' % ([2] + [random.randrange(3, 30) for _ in range(3 + i % 5)],
                                                   [random.randrange(3, 30) for _ in range(1 + i % 4)]))
EOF
ok=1
for w in f32 bf16 auto; do
  if ! "$BIN" score --model "$M" --input "$T/score.jsonl" --per-token --batch-size 5 --weights $w >"$T/s_$w.jsonl" 2>"$T/s_$w.err"; then
    fail weights_score "--weights $w: exit $?: $(tail -n 2 "$T/s_$w.err")"; ok=0
  fi
done
if [ $ok = 1 ]; then
  msg=$($PY - "$T/s_f32.jsonl" "$T/s_bf16.jsonl" <<'EOF'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
bad = []
if len(a) != 12 or len(b) != 12: bad.append("%d / %d lines" % (len(a), len(b)))
for x, y in zip(a, b):
    if abs(x["sum_logprob"] - y["sum_logprob"]) > 1e-5 * max(1, abs(x["sum_logprob"])): bad.append("line %d: %g vs %g" % (x["index"], x["sum_logprob"], y["sum_logprob"]))
    for p, q in zip(x["token_logprobs"], y["token_logprobs"]):
        if abs(p - q) > 1e-5 * max(1, abs(p)): bad.append("line %d token: %g vs %g" % (x["index"], p, q)); break
print("; ".join(bad[:3]))
EOF
)
  if [ -n "$msg" ]; then fail weights_score "$msg"
  elif ! grep -q "with bf16 weights in" "$T/s_bf16.err"; then fail weights_score "the bf16 log does not say bf16: $(grep loaded "$T/s_bf16.err")"
  elif ! grep -q "with f32 weights in" "$T/s_f32.err"; then fail weights_score "the f32 log does not say f32: $(grep loaded "$T/s_f32.err")"
  elif ! grep -q "with f32 weights (auto: the f32 model fits)" "$T/s_auto.err"; then fail weights_score "auto did not keep f32: $(grep loaded "$T/s_auto.err")"
  elif ! cmp -s "$T/s_f32.jsonl" "$T/s_auto.jsonl"; then fail weights_score "auto (f32) output differs from --weights f32"
  else pass weights_score; fi
fi

# ---- generate ----------------------------------------------------------------------------------
ok=1
for w in f32 bf16; do
  if ! "$BIN" generate --model "$M" --prompt "c b f h" --prompt "k l d" --prompt "m d c l k" --max-new-tokens 6 --json \
       --weights $w >"$T/g_$w.jsonl" 2>"$T/g_$w.err"; then
    fail weights_generate "--weights $w: exit $?: $(tail -n 2 "$T/g_$w.err")"; ok=0
  fi
done
if [ $ok = 1 ]; then
  msg=$($PY - "$T/g_f32.jsonl" "$T/g_bf16.jsonl" <<'EOF'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
bad = []
if len(a) != 3 or len(b) != 3: bad.append("%d / %d lines" % (len(a), len(b)))
for x, y in zip(a, b):
    if x["ids"] != y["ids"]: bad.append("prompt %d: ids %s vs %s" % (x["index"], x["ids"], y["ids"]))
    elif any(abs(p - q) > 1e-5 * max(1, abs(p)) for p, q in zip(x["logprobs"], y["logprobs"])): bad.append("prompt %d: logprobs %s vs %s" % (x["index"], x["logprobs"], y["logprobs"]))
print("; ".join(bad[:3]))
EOF
)
  if [ -n "$msg" ]; then fail weights_generate "$msg"
  elif ! grep -q "with bf16 weights" "$T/g_bf16.err"; then fail weights_generate "the log does not say bf16"
  else pass weights_generate; fi
fi

# ---- eval --------------------------------------------------------------------------------------
ok=1
for w in f32 bf16; do
  if ! "$BIN" eval --model "$M" "$T/letters_mc.jsonl" --task "$T/letters_gen.jsonl" --answer-prefix ":" --max-new-tokens 4 \
       --weights $w --json-out "$T/e_$w.json" >"$T/e_$w.out" 2>"$T/e_$w.err"; then
    fail weights_eval "--weights $w: exit $?: $(tail -n 2 "$T/e_$w.err")"; ok=0
  fi
done
if [ $ok = 1 ]; then
  msg=$($PY - "$T/e_f32.json" "$T/e_bf16.json" <<'EOF'
import json, sys
a, b = json.load(open(sys.argv[1]))["tasks"], json.load(open(sys.argv[2]))["tasks"]
bad = []
for t in ("letters_mc", "letters_gen"):
    for k in ("acc", "acc_norm", "em", "f1", "n"):
        if a[t].get(k) != b[t].get(k): bad.append("%s %s: %s vs %s" % (t, k, a[t].get(k), b[t].get(k)))
if a["letters_mc"]["acc"] < 0.9: bad.append("mc acc %s" % a["letters_mc"]["acc"])
print("; ".join(bad[:3]))
EOF
)
  if [ -n "$msg" ]; then fail weights_eval "$msg"; else pass weights_eval; fi
fi

"$BIN" score --model "$M" --weights fp8 </dev/null >/dev/null 2>"$T/bad.err"
rc=$?
if [ $rc = 2 ] && grep -q "auto, f32 or bf16" "$T/bad.err"; then pass weights_bad_option
else fail weights_bad_option "exit $rc: $(cat "$T/bad.err")"; fi

# ---- refusals: a config far beyond any machine (27B widths, 120 layers, 8x the MLP) -------------
BIG=$T/big
mkdir -p "$BIG"
$PY - configs/models/gemma-2-27b.json "$BIG/config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["num_hidden_layers"] = 120
c["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(120)]
c["intermediate_size"] *= 8
json.dump(c, open(sys.argv[2], "w"))
EOF
echo "hello" >"$T/prompt.txt"
echo '{"ids": [2, 5, 6]}' >"$T/one.jsonl"
refuse() {   # name, then the command
  local name=$1; shift
  local t0=$(date +%s%N)
  "$@" >"$T/$name.out" 2>"$T/$name.err" </dev/null
  local rc=$? ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  if [ $rc != 1 ]; then fail "$name" "exit $rc (expected 1): $(tail -n 2 "$T/$name.err")"
  elif ! grep -q "needs about .* of memory (weights .*) but only .* is available" "$T/$name.err"; then fail "$name" "no memory message: $(tail -n 2 "$T/$name.err")"
  elif [ $ms -gt 3000 ]; then fail "$name" "took ${ms} ms (it must refuse before allocating)"
  else pass "$name"; fi
}
refuse refuse_score_auto "$BIN" score --model "$BIG" --input "$T/one.jsonl"
refuse refuse_score_f32 "$BIN" score --model "$BIG" --input "$T/one.jsonl" --weights f32
refuse refuse_generate_bf16 "$BIN" generate --model "$BIG" --prompt hello --weights bf16
refuse refuse_eval "$BIN" eval --model "$BIG" "$T/letters_mc.jsonl"
if grep -q "score with bf16 weights" "$T/refuse_score_auto.err" && grep -q "generate with bf16 weights" "$T/refuse_generate_bf16.err"; then
  pass refuse_names_command_and_dtype
else fail refuse_names_command_and_dtype "$(cat "$T/refuse_score_auto.err" "$T/refuse_generate_bf16.err")"; fi

# ---- info ----------------------------------------------------------------------------------------
if "$BIN" info --no-measure t5gemma-2b-2b --batch 1 --new-tokens 32 >"$T/info.out" 2>&1 &&
   grep -Eq "score / eval, bf16 weights +1[0-9]\.[0-9]+ GB" "$T/info.out" &&
   grep -Eq "score / eval, f32 weights +2[2-9]\.[0-9]+ GB" "$T/info.out" &&
   grep -q "generate (32 new tokens), bf16" "$T/info.out" && grep -q "adapt (streamed)" "$T/info.out"; then
  pass info_rows
else fail info_rows "$(grep -E 'score|generate|adapt' "$T/info.out")"; fi
