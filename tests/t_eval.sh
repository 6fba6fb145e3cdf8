#!/usr/bin/env bash
# t_eval.sh: the evaluation commands end to end (`t5gemma eval`, `score`, `generate`, issue 6).
# A tiny T5Gemma trained by tests/test_eval (T5G_EVAL_SAVE: "answer with the last letter of the
# query", a few seconds of AdamW) is saved with its letter tokenizer and task files; then:
#   eval_tasks        multiple-choice, partial-scoring and generative files: accuracies / EM near
#                     1.0 in the table and in --json-out; the malformed line is reported as
#                     FILE:LINE on stderr and counted (skipped = 1)
#   eval_on_error     --on-error stop: non-zero exit naming FILE:LINE, no JSON written
#   eval_validation   --data (shards made by `t5gemma data prepare`): finite loss, perplexity =
#                     exp(loss), token counts in the JSON
#   eval_errors       no model, unknown option, missing file: clear messages, non-zero exit
#   score_*           text and id forms give the same numbers; per-token values sum to the total;
#                     --target-eos adds one token; a malformed line keeps the output aligned and
#                     is reported; the trained answer is far more likely than a wrong one
#   generate_*        --prompt (greedy answers the trained task), --jsonl with "prompt" and
#                     "messages" (chat template), stdin lines, sampling with a seed is
#                     reproducible, beams return sorted sequences, batch size does not change
#                     the output
set -u
cd "$(dirname "$0")/.."
BIN=${T5G_BIN:-./t5gemma}
TESTBIN=$(dirname "$BIN")/tests/test_eval
[ -x "$TESTBIN" ] || TESTBIN=build/tests/test_eval
PY=/usr/bin/python3
T=$(mktemp -d /tmp/t5g_t_eval.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

if ! T5G_EVAL_SAVE=$T "$TESTBIN" trained_models >"$T/train.log" 2>&1 || [ ! -f "$T/model/config.json" ]; then
  fail setup "could not train/save the tiny model with $TESTBIN: $(tail -n 3 "$T/train.log")"
  exit 0
fi
M=$T/model

# ---- eval: tasks ---------------------------------------------------------------------------
if "$BIN" eval --model "$M" "$T/letters_mc.jsonl" "$T/letters_partial.jsonl" --task "$T/letters_gen.jsonl" \
     --answer-prefix ":" --batch-size 8 --max-new-tokens 4 --json-out "$T/r.json" >"$T/eval.out" 2>"$T/eval.err"; then
  msg=$($PY - "$T/r.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["tasks"]
bad = []
mc, pa, ge = t["letters_mc"], t["letters_partial"], t["letters_gen"]
if mc["kind"] != "multiple_choice" or mc["n"] != 60 or mc["skipped"] != 1: bad.append("mc header %s" % mc)
if mc["acc"] < 0.95 or mc["acc_norm"] < 0.95: bad.append("mc acc %s" % mc)
if pa["kind"] != "partial" or pa["acc"] < 0.95 or pa["acc_norm"] is not None: bad.append("partial %s" % pa)
if ge["kind"] != "generative" or ge["em"] < 0.95 or ge["f1"] < 0.95: bad.append("gen %s" % ge)
if r["skipped_lines"] != 1: bad.append("skipped_lines %s" % r["skipped_lines"])
print("; ".join(bad))
EOF
)
  if [ -n "$msg" ]; then fail eval_tasks "$msg"
  elif ! grep -q "letters_mc.jsonl:5: .*(line skipped)" "$T/eval.err"; then fail eval_tasks "malformed line 5 not reported: $(grep -i skip "$T/eval.err" | head -3)"
  elif ! grep -Eq "^letters_mc +multiple_choice +60 +1 +1\.0000 +1\.0000" "$T/eval.out"; then fail eval_tasks "table row: $(grep letters_mc "$T/eval.out")"
  elif ! grep -q "1 malformed line(s) skipped in total" "$T/eval.out"; then fail eval_tasks "no skipped total in the table"
  elif ! grep -q "continuations scored" "$T/eval.err"; then fail eval_tasks "no progress lines on stderr"
  else pass eval_tasks; fi
else fail eval_tasks "exit $?: $(tail -n 3 "$T/eval.err")"; fi

if "$BIN" eval --model "$M" "$T/letters_mc.jsonl" --on-error stop --json-out "$T/r2.json" >"$T/e2.out" 2>"$T/e2.err"; then
  fail eval_on_error "exit 0 with --on-error stop on a malformed line"
elif ! grep -q "letters_mc.jsonl:5: \"choices\" must be a list of strings" "$T/e2.err"; then fail eval_on_error "message: $(cat "$T/e2.err")"
elif [ -e "$T/r2.json" ]; then fail eval_on_error "JSON written although the run stopped"
else pass eval_on_error; fi

# ---- eval: validation loss on shards ----------------------------------------------------------
$PY - "$T/docs.txt" <<'EOF'
import random, sys
random.seed(5)
with open(sys.argv[1], "w") as f:
    for i in range(200):
        f.write(" ".join(random.choice("bcdefghijklm") for _ in range(random.randint(5, 20))) + "\n")
EOF
if "$BIN" data prepare --tokenizer "$M/tokenizer.json" --out "$T/data" --doc-sep line --val-docs 40 "$T/docs.txt" >"$T/prep.log" 2>&1; then
  if "$BIN" eval --model "$M" --data "$T/data" --enc-len 16 --dec-len 16 --batch-size 4 --batches 3 --json-out "$T/v.json" >"$T/v.out" 2>"$T/v.err"; then
    msg=$($PY - "$T/v.json" <<'EOF'
import json, math, sys
v = json.load(open(sys.argv[1]))["validation"]
bad = []
if v["objective"] != "prefixlm" or v["batches"] != 3 or not (0 < v["tokens"] <= 3 * 4 * 16): bad.append(str(v))
if not (math.isfinite(v["loss"]) and v["loss"] > 0): bad.append("loss %s" % v["loss"])
elif abs(v["perplexity"] - math.exp(v["loss"])) > 1e-6 * v["perplexity"]: bad.append("ppl %s vs exp(loss)" % v["perplexity"])
print("; ".join(bad))
EOF
)
    if [ -n "$msg" ]; then fail eval_validation "$msg"
    elif ! grep -q "^validation (.*objective prefixlm): loss" "$T/v.out"; then fail eval_validation "table: $(cat "$T/v.out")"
    else pass eval_validation; fi
  else fail eval_validation "exit $?: $(tail -n 3 "$T/v.err")"; fi
else fail eval_validation "data prepare failed: $(tail -n 3 "$T/prep.log")"; fi

# ---- eval: errors ---------------------------------------------------------------------------
ok=1; why=""
"$BIN" eval "$T/letters_mc.jsonl" >/dev/null 2>"$T/x.err" && { ok=0; why="no --model accepted"; }
grep -q -- "--model DIR is required" "$T/x.err" || { ok=0; why="$why; no-model message: $(cat "$T/x.err")"; }
"$BIN" eval --model "$M" --bogus >/dev/null 2>"$T/x.err" && { ok=0; why="$why; unknown option accepted"; }
grep -q "unknown option '--bogus'" "$T/x.err" || { ok=0; why="$why; unknown-option message"; }
"$BIN" eval --model "$M" "$T/nope.jsonl" >/dev/null 2>"$T/x.err" && { ok=0; why="$why; missing file accepted"; }
grep -q "nope.jsonl: cannot open the task file" "$T/x.err" || { ok=0; why="$why; missing-file message: $(cat "$T/x.err")"; }
"$BIN" eval --model "$M" --data "$T/data" --objective causal >/dev/null 2>"$T/x.err" && { ok=0; why="$why; causal on t5gemma accepted"; }
grep -q "needs a decoder-only" "$T/x.err" || { ok=0; why="$why; objective message: $(cat "$T/x.err")"; }
[ $ok = 1 ] && pass eval_errors || fail eval_errors "$why"

# ---- score ----------------------------------------------------------------------------------
cat >"$T/score.jsonl" <<'EOF'
{"id": "a", "input": "b c d:", "target": " d"}
{"id": "b", "input": "b c d:", "target": " k"}
{"id": "c", "input_ids": [2, 8, 35, 36, 59], "target_ids": [36]}
{"broken": true}
{"id": "e", "input": "k e f g:", "target": " g"}
EOF
if "$BIN" score --model "$M" --input "$T/score.jsonl" --per-token --output "$T/s.jsonl" 2>"$T/s.err" >/dev/null &&
   "$BIN" score --model "$M" --input "$T/score.jsonl" --target-eos --batch-size 1 >"$T/s2.jsonl" 2>/dev/null; then
  msg=$($PY - "$T/s.jsonl" "$T/s2.jsonl" <<'EOF'
import json, math, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
bad = []
if len(a) != 5 or [x.get("line") for x in a] != [1, 2, 3, 4, 5]: bad.append("alignment %s" % [x.get("line") for x in a])
else:
    if "error" not in a[3] or "sum_logprob" in a[3]: bad.append("malformed line 4: %s" % a[3])
    if abs(a[0]["sum_logprob"] - a[2]["sum_logprob"]) > 1e-5: bad.append("text vs ids: %s %s" % (a[0]["sum_logprob"], a[2]["sum_logprob"]))
    if a[0]["tokens"] != ["\u2581d"] or a[0]["token_ids"] != [36]: bad.append("tokens %s %s" % (a[0]["tokens"], a[0]["token_ids"]))
    if abs(sum(a[4]["token_logprobs"]) - a[4]["sum_logprob"]) > 1e-5: bad.append("per-token sum")
    if not (a[0]["sum_logprob"] > -0.1 and a[1]["sum_logprob"] < -3): bad.append("trained answer %s vs wrong %s" % (a[0]["sum_logprob"], a[1]["sum_logprob"]))
    if a[0]["id"] != "a" or a[4]["id"] != "e": bad.append("ids not copied")
    if b[0]["n_tokens"] != 2 or b[0]["sum_logprob"] > a[0]["sum_logprob"] + 1e-6: bad.append("--target-eos %s" % b[0])
    if abs(b[0]["sum_logprob"] - a[0]["sum_logprob"]) > 0.1: bad.append("eos after the answer should be likely: %s" % b[0])
print("; ".join(bad))
EOF
)
  if [ -n "$msg" ]; then fail score_forms "$msg"
  elif ! grep -q "score.jsonl:4: expected \"input\" and \"target\"" "$T/s.err"; then fail score_forms "stderr: $(cat "$T/s.err")"
  else pass score_forms; fi
else fail score_forms "exit status $?: $(tail -n 3 "$T/s.err")"; fi
if "$BIN" score --model "$M" --input "$T/score.jsonl" --on-error stop >/dev/null 2>"$T/s3.err"; then fail score_on_error "exit 0"
elif ! grep -q "score.jsonl:4:" "$T/s3.err"; then fail score_on_error "$(cat "$T/s3.err")"
else pass score_on_error; fi

# ---- generate -------------------------------------------------------------------------------
out=$("$BIN" generate --model "$M" --prompt "b c d:" --prompt "k e f g h:" --max-new-tokens 5 2>"$T/g.err")
if [ "$out" = "$(printf ' d\n h')" ]; then pass generate_greedy; else fail generate_greedy "got [$out]: $(tail -n 2 "$T/g.err")"; fi

cat >"$T/prompts.jsonl" <<'EOF'
{"prompt": "m l k:"}
{"messages": [{"role": "user", "content": "b c"}]}
{"messages": [{"role": "model", "content": "b c"}]}
{"prompt": "f f e:"}
EOF
"$BIN" generate --model "$M" --jsonl "$T/prompts.jsonl" --json --max-new-tokens 6 >"$T/g.jsonl" 2>"$T/g2.err"
rc=$?
msg=$($PY - "$T/g.jsonl" <<'EOF'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
bad = []
if [x["line"] for x in r] != [1, 2, 4]: bad.append("lines %s" % [x.get("line") for x in r])
else:
    if r[0]["text"] != " k" or r[0]["finish"] != "stop" or r[0]["ids"][-1] != 1: bad.append("prompt 1: %s" % r[0])
    if r[2]["text"] != " e": bad.append("prompt 4: %s" % r[2])
    for x in r:
        if len(x["ids"]) != len(x["logprobs"]) or x["n_tokens"] != len(x["ids"]) or abs(sum(x["logprobs"]) - x["sum_logprob"]) > 1e-4:
            bad.append("fields %s" % x)
print("; ".join(bad))
EOF
)
if [ $rc -ne 0 ]; then fail generate_jsonl "exit $rc: $(tail -n 2 "$T/g2.err")"
elif [ -n "$msg" ]; then fail generate_jsonl "$msg"
elif ! grep -q "prompts.jsonl:3: messages\[0\]: role \"model\", expected \"user\"" "$T/g2.err"; then fail generate_jsonl "stderr: $(cat "$T/g2.err")"
else pass generate_jsonl; fi

a=$(printf 'b c d:\nk e f g h:\nm l k:\n' | "$BIN" generate --model "$M" --temperature 1.5 --top-k 20 --top-p 0.95 --seed 7 --json --max-new-tokens 6 --batch-size 3 2>/dev/null)
b=$(printf 'b c d:\nk e f g h:\nm l k:\n' | "$BIN" generate --model "$M" --temperature 1.5 --top-k 20 --top-p 0.95 --seed 7 --json --max-new-tokens 6 --batch-size 1 2>/dev/null)

n=$(printf '%s\n' "$a" | grep -c '"text"')
if [ "$n" -ne 3 ]; then fail generate_sampling "expected 3 JSON lines, got $n"
elif [ "$a" != "$b" ]; then fail generate_sampling "batch size changed the samples"
else pass generate_sampling; fi

"$BIN" generate --model "$M" --prompt "b c d:" --num-beams 4 --num-return 3 --json --max-new-tokens 5 >"$T/beam.jsonl" 2>"$T/b.err"
msg=$($PY - "$T/beam.jsonl" <<'EOF'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
bad = []
if len(r) != 1 or len(r[0].get("sequences", [])) != 3: bad.append("shape %s" % r)
else:
    s = [x["score"] for x in r[0]["sequences"]]
    if s != sorted(s, reverse=True): bad.append("not sorted %s" % s)
    if r[0]["text"] != " d" or r[0]["sequences"][0]["text"] != " d": bad.append("best %s" % r[0]["text"])
print("; ".join(bad))
EOF
)
[ -z "$msg" ] && pass generate_beams || fail generate_beams "$msg $(tail -n 2 "$T/b.err")"

"$BIN" generate --model "$M" --prompt x --num-return 2 >/dev/null 2>"$T/x.err" && fail generate_errors "--num-return without beams accepted" ||
  { grep -q "needs --num-beams" "$T/x.err" && pass generate_errors || fail generate_errors "$(cat "$T/x.err")"; }
