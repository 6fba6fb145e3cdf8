#!/usr/bin/env bash
# t_teacher_bf16.sh: a PrefixLM distillation teacher kept in bf16 (train config teacher_dtype,
# issue 8; spec 4.2). Tiny T5Gemma student (vocabulary 512) and Gemma 2 teachers written by
# `t5gemma random-checkpoint` (std 0.2, so the teacher's distribution is far from uniform).
#   same_losses_topk8 / same_losses_full  3 training steps: teacher_dtype=bf16 on a BF16 checkpoint,
#                 teacher_dtype=bf16 on the F32 checkpoint of the same weights (rounded to nearest
#                 even when loaded) and teacher_dtype=f32 on the BF16 checkpoint (the f32 teacher
#                 with bf16-rounded weights) log the same losses to 1e-5
#   teacher_log   a larger teacher (32M parameters): the start lines name its dtype and weight
#                 bytes (bf16 < f32), and the predicted memory per rank falls by their difference
#   peak_rss      the same runs: the measured peak RSS falls with bf16 by the predicted difference
#                 of the teacher's weights (within 25%)
#   bad_dtype     teacher_dtype=fp8: clear error, non-zero exit
#   info_teacher  `t5gemma info STUDENT --teacher DIR --teacher-dtype bf16|f32` counts the teacher
# Single-threaded (threads=1). About 15 s.
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh teacher_bf16
export OMP_NUM_THREADS=1

$PY - "$W" <<'EOF' || die "cannot write configs and data"
import json, random, sys
w = sys.argv[1]
g2 = json.load(open("configs/models/tiny-gemma2.json"))
big = dict(g2, hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
           query_pre_attn_scalar=64, num_hidden_layers=8, layer_types=["sliding_attention", "full_attention"] * 4)
json.dump(big, open(w + "/g2-big.json", "w"), indent=1)
random.seed(3)
with open(w + "/docs.txt", "w") as f:
    for i in range(400):
        f.write(" ".join(str(random.randrange(3, 512)) for _ in range(random.randint(12, 40))) + "\n")
EOF
rc() { "$BIN" random-checkpoint "$@" >>"$W/setup.out" 2>&1 || die "random-checkpoint $*: $(tail -n 2 "$W/setup.out")"; }
rc --config configs/models/tiny-gemma2.json --out "$W/teacher16" --dtype bf16 --std 0.2 --seed 7
rc --config configs/models/tiny-gemma2.json --out "$W/teacher32" --dtype f32 --std 0.2 --seed 7
rc --config "$W/g2-big.json" --out "$W/bigteacher" --dtype bf16 --std 0.2 --seed 8
rc --config configs/models/tiny-t5gemma.json --out "$W/student" --dtype f32 --seed 5
"$BIN" data prepare --format tokens --vocab-size 512 --bos-id 2 --eos-id 1 --pad-id 0 --doc-sep line \
  --val-docs 16 --out "$W/docs" "$W/docs.txt" >"$W/prep.out" 2>&1 || die "data prepare: $(tail -n 2 "$W/prep.out")"
cat >"$W/d.json" <<'EOF'
{"init": "student", "objective": "prefixlm", "data": "docs", "enc_len": 16, "dec_len": 16, "batch_size": 4,
 "lr": 1e-3, "warmup_steps": 1, "steps": 3, "log_every": 1, "eval_batches": 1, "threads": 1,
 "distill_alpha": 0.7, "distill_temperature": 2}
EOF
train() { local n=$1; shift; (cd "$W" && "$BIN" train d.json run_dir="$n" "$@" >"$W/$n.out" 2>&1); }
losses() { grep -o '"step": [0-9]*, "loss": [^,]*' "$W/$1/metrics.jsonl" | sed 's/.*"loss": //' | tr '\n' ' '; }
# same A B: every logged loss of runs A and B within 1e-5
same() { awk -v a="$(losses "$1")" -v b="$(losses "$2")" 'BEGIN { n = split(a, x, " "); m = split(b, y, " ");
  if (n != 3 || m != 3) exit 1; for (i = 1; i <= n; i++) { d = x[i] - y[i]; if (d < 0) d = -d; if (d > 1e-5) exit 1 } }'; }

for k in 8 0; do
  name=$([ $k = 0 ] && echo full || echo topk$k)
  ok=1
  for r in "b16_16 teacher=teacher16 teacher_dtype=bf16" "b16_32 teacher=teacher32 teacher_dtype=bf16" "f32_16 teacher=teacher16 teacher_dtype=f32"; do
    set -- $r
    n="$1$k"; shift
    train "$n" distill_topk=$k "$@" || { fail "same_losses_$name" "train $n failed: $(tail -n 2 "$W/$n.out" | tr '\n' ' ')"; ok=0; }
  done
  [ $ok = 1 ] || continue
  if same "b16_16$k" "f32_16$k" && same "b16_32$k" "f32_16$k"; then pass "same_losses_$name"
  else fail "same_losses_$name" "losses bf16 [$(losses "b16_16$k")], bf16 from F32 [$(losses "b16_32$k")], f32 [$(losses "f32_16$k")]"; fi
done

# peak RSS (GNU time, KiB) with the 33M-parameter teacher, f32 vs bf16
ok=1
for dt in f32 bf16; do
  (cd "$W" && /usr/bin/time -f "maxrss %M" -o "$W/rss_$dt" "$BIN" train d.json run_dir="big_$dt" teacher=bigteacher teacher_dtype=$dt \
     distill_topk=8 steps=2 >"$W/big_$dt.out" 2>&1) || { fail "peak_rss" "train big_$dt failed: $(tail -n 2 "$W/big_$dt.out" | tr '\n' ' ')"; ok=0; }
done
# start lines: "teacher: DIR (Gemma 2, ...), bf16 weights (X MiB) loaded" and "predicted memory X per rank"
tbytes() { sed -n 's/^teacher: .*, \(bf16\|f32\) weights (\([0-9.]*\) MiB).*/\2/p' "$W/$1.out"; }
pred() { sed -n 's/.*predicted memory \([0-9.]*\) \(MiB\|GiB\) per rank.*/\1 \2/p' "$W/$1.out" | awk '{ print $2 == "GiB" ? $1 * 1024 : $1 }'; }
if [ $ok = 1 ]; then
  w16=$(tbytes big_bf16); w32=$(tbytes big_f32); p16=$(pred big_bf16); p32=$(pred big_f32)
  if [ -n "$w16" ] && [ -n "$w32" ] && [ -n "$p16" ] && [ -n "$p32" ] &&
     awk -v a="$w16" -v b="$w32" -v c="$p16" -v d="$p32" 'BEGIN { exit !(a < b && c < d && (d - c) - (b - a) < 0.02 && (c - d) - (a - b) < 0.02) }'
  then pass "teacher_log"
  else fail "teacher_log" "teacher weights bf16 [$w16] f32 [$w32] MiB, predicted memory bf16 [$p16] f32 [$p32] MiB"; fi
  r32=$(sed -n 's/^maxrss //p' "$W/rss_f32"); r16=$(sed -n 's/^maxrss //p' "$W/rss_bf16")
  if awk -v r32="$r32" -v r16="$r16" -v w32="$w32" -v w16="$w16" 'BEGIN { m = (r32 - r16) / 1024; p = w32 - w16;
       exit !(p > 30 && m >= 0.75 * p && m <= 1.25 * p) }'; then pass "peak_rss"
  else fail "peak_rss" "peak RSS f32 $r32 KiB, bf16 $r16 KiB; predicted teacher weights f32 $w32 MiB, bf16 $w16 MiB"; fi
fi

if train bad distill_topk=8 teacher=teacher16 teacher_dtype=fp8; then fail "bad_dtype" "train accepted teacher_dtype=fp8"
elif grep -q 'teacher_dtype must be bf16 or f32, found "fp8"' "$W/bad.out"; then pass "bad_dtype"
else fail "bad_dtype" "message: $(tail -n 2 "$W/bad.out" | tr '\n' ' ')"; fi

info() { "$BIN" info --no-measure configs/models/tiny-t5gemma.json --batch 4 --enc-len 16 --dec-len 16 "$@" 2>&1; }
row() { echo "$1" | sed -n 's/^  train  *\([0-9.]*\) GB.*/\1/p'; }
i0=$(info); i16=$(info --teacher "$W/bigteacher" --distill-topk 8); i32=$(info --teacher "$W/bigteacher" --teacher-dtype f32 --distill-topk 8)
ibad=$(info --teacher "$W/bigteacher" --teacher-dtype fp8); badrc=$?
if ! echo "$i16" | grep -q "include it with bf16 weights, top-k soft targets"; then fail "info_teacher" "no teacher line: $(echo "$i16" | tail -n 12)"
elif ! awk -v a="$(row "$i0")" -v b="$(row "$i16")" -v c="$(row "$i32")" 'BEGIN { exit !(a != "" && a + 0 < b + 0 && b + 0 < c + 0) }'; then
  fail "info_teacher" "train rows: no teacher $(row "$i0") GB, bf16 teacher $(row "$i16") GB, f32 teacher $(row "$i32") GB"
elif [ $badrc = 0 ] || ! echo "$ibad" | grep -q 'teacher-dtype expects bf16 or f32, found "fp8"'; then fail "info_teacher" "--teacher-dtype fp8: exit $badrc, $ibad"
else pass "info_teacher"; fi
