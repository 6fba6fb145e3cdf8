#!/usr/bin/env bash
# experiments.sh: the paper's claims at small scale (`make experiments`; results in
# docs/experiments.md, pictures in docs/img/experiments-*.png).
#
#   train/experiments.sh
#
# Same corpus, tokenizer and shards as `make demo` (train/demo_data.sh: State of the Union
# addresses, 4096-piece tokenizer, 300 held-out paragraphs). Runs, all under demo/experiments/:
#   pretrain-small    decoder-only demo-gemma2 (2.0M), causal LM, 600 steps of 16 x 256 tokens
#   pretrain-large    decoder-only demo-gemma2-large (hidden 192, 8 layers), the same 600 steps
#   decoder-continued pretrain-small trained 300 more causal steps with the PrefixLM runs' schedule
#                     (the decoder-only baseline at equal extra compute)
# then PrefixLM (configs/demo-prefixlm.json: 16 x (128 + 128) tokens per step), 300 steps each,
# validation every 25 steps on the same 8 batches:
#   claim 1  adapted           t5gemma adapt --from pretrain-small, lr 1e-3
#            scratch-lr1e-3    t5gemma adapt --preset demo-t5gemma (random, same shapes), lr 1e-3
#            scratch-lr2e-3    the same, lr 2e-3
#            scratch-long      the same, lr 2e-3, 900 steps (= pretraining + adaptation steps)
#   claim 2  causal-encoder    adapt --from pretrain-small --encoder-causal (spec 4.5)
#            ul2-bidirectional, ul2-causal-encoder: both encoders again, trained with UL2
#                              (configs/demo-ul2.json, 300 steps), where the encoder must read
#                              around the sentinels
#   claim 3  unequal-warmup    adapt --encoder pretrain-large --decoder pretrain-small (random
#                              cross-attention), 50 cross-attention-only steps (warmup_cross_steps)
#            unequal-nowarmup  the same pair, warmup_cross_steps=0
#            unequal-warmup-rewarm  50 warm-up steps, then a 20-step lr ramp for the unfrozen
#                              parameters (warmup_cross_rewarm=20)
# and, at 4x the budget (1200 steps): adapted-long, causal-encoder-long (PrefixLM) and
#   decoder-continued-long (pretrain-small + 1200 causal steps)
# Each run's starting point is evaluated on the run's own validation batches (step 0: one step
# with lr 0) and each final model on the whole validation split (t5gemma eval). Every final model, decoder-only or
# encoder-decoder, is also scored on the demo's held-out windows (second 128 tokens given the first
# 128, t5gemma score; heldout.json) and on the same targets given another window's first 128
# tokens (heldout-swapped.json: how much each model uses its context, for T5Gemma its encoder).
# Then train/experiments_report.py draws the curves and writes
# demo/experiments/results.md.
# Finished runs (RUN/hf present) are kept on a re-run; delete demo/experiments/RUN to redo one.
# Environment: T5G_BIN (default ./t5gemma), DEMO_DIR (default demo), PYTHON (default
# /usr/bin/python3), T5G_THREADS (threads; default all cores), EXP_IMG (default docs/img),
# EXP_TRAIN_ARGS (key=value overrides appended to every training run, e.g. "steps=4" for a smoke
# run; then also set EXP_IMG elsewhere so docs/img keeps the real pictures).
set -euo pipefail
cd "$(dirname "$0")/.."

. train/demo_data.sh
IMG=${EXP_IMG:-docs/img}
EXP=$DEMO/experiments
mkdir -p "$EXP"
T0=$(date +%s)
el() { local s=$(($(date +%s) - T0)); printf '%d:%02d:%02d' $((s / 3600)) $((s / 60 % 60)) $((s % 60)); }
hdr() { echo; echo "=== $*   (elapsed $(el))"; }

hdr "corpus and token shards"
demo_corpus
demo_shards

COMMON=(data="$DATA" tokenizer="$TOK/tokenizer.model")
[ -n "${T5G_THREADS:-}" ] && COMMON+=("threads=$T5G_THREADS")
read -r -a EXTRA <<<"${EXP_TRAIN_ARGS:-}"

# cpu_children VAR: VAR = CPU seconds (user + system) used so far by this shell's finished child
# processes (bash `times`, run in this shell: a command substitution would be a new process)
cpu_children() {
  times >"$EXP/.times"
  printf -v "$1" '%s' "$(tail -n 1 "$EXP/.times" | "$PY" -c 'import re,sys; print("%.1f" % sum(int(m)*60+float(s) for m,s in re.findall(r"(\d+)m([\d.]+)s", sys.stdin.read())))')"
}

# train RUN CONFIG key=value...: a training run into $EXP/RUN (skipped when RUN/hf exists)
train() {
  local run=$1 cfg=$2; shift 2
  if [ -f "$EXP/$run/hf/config.json" ]; then echo "$run: done earlier, kept"; return; fi
  hdr "train $run"
  rm -rf "${EXP:?}/$run"
  local w0 c0 c1
  w0=$(date +%s); cpu_children c0
  t5g train "$cfg" run_dir="$EXP/$run" "${COMMON[@]}" "$@" "${EXTRA[@]}"
  cpu_children c1
  echo "{\"wall_s\": $(($(date +%s) - w0)), \"cpu_s\": $("$PY" -c "print(round($c1 - $c0, 1))"), \"threads\": \"${T5G_THREADS:-all}\"}" >"$EXP/$run/time.json"
  cp "$TOK/tokenizer.model" "$EXP/$run/hf/"
}
# step0 RUN CONFIG key=value...: the validation loss of a run's starting point on exactly the run's
# validation batches: the same configuration trained for one step with lr 0 (AdamW then changes
# nothing, weight decay included), validated after it -> RUN/step0.json
step0() {
  local run=$1 cfg=$2; shift 2
  [ -s "$EXP/$run/step0.json" ] && return
  rm -rf "${EXP:?}/$run/.step0"
  t5g train "$cfg" run_dir="$EXP/$run/.step0" "${COMMON[@]}" "$@" steps=1 lr=0 warmup_steps=0 \
    warmup_cross_steps=0 eval_every=1 log_every=1 >/dev/null
  grep '"val_loss"' "$EXP/$run/.step0/metrics.jsonl" | tail -n 1 >"$EXP/$run/step0.json"
  rm -rf "${EXP:?}/$run/.step0"
}
# encdec RUN CONFIG OBJECTIVE INIT key=value...: a T5Gemma run from INIT (300 steps, validation every
# 25 on 8 batches), its starting point's validation loss (step0) and the final model's loss on the
# whole validation split (t5gemma eval)
encdec() {
  local run=$1 cfg=$2 obj=$3 init=$4; shift 4
  train "$run" "$cfg" init="$init" steps=300 eval_every=25 eval_batches=8 "$@"
  step0 "$run" "$cfg" init="$init" eval_batches=8 "$@"
  [ -s "$EXP/$run/final.txt" ] || t5g eval --model "$EXP/$run/hf" --data "$DATA" --objective "$obj" --enc-len 128 \
    --dec-len 128 >"$EXP/$run/final.txt"
  echo "$run: start $(grep -o '"val_loss": [0-9.]*' "$EXP/$run/step0.json" | cut -d' ' -f2) (validation batches)," \
       "end $(grep -o 'loss [0-9.]*' "$EXP/$run/final.txt") (whole validation split)"
}
prefixlm() { local run=$1 init=$2; shift 2; encdec "$run" configs/demo-prefixlm.json prefixlm "$init" "$@"; }
ul2() { local run=$1 init=$2; shift 2; encdec "$run" configs/demo-ul2.json ul2 "$init" "$@"; }
# adapt DIR ARGS...: an adapted or random T5Gemma starting point (kept when present)
adapt() {
  local out=$1; shift
  [ -f "$out/config.json" ] && return
  t5g adapt "$@" --out "$out"
}

hdr "decoder-only pretraining"
train pretrain-small configs/demo-pretrain.json steps=600 eval_every=50
train pretrain-large configs/demo-pretrain.json model=demo-gemma2-large steps=600 eval_every=50
train decoder-continued configs/demo-pretrain.json init="$EXP/pretrain-small/hf" steps=300 lr=0.001 warmup_steps=20 eval_every=25

hdr "starting points"
adapt "$EXP/init-adapted" --from "$EXP/pretrain-small/hf"
adapt "$EXP/init-causal-encoder" --from "$EXP/pretrain-small/hf" --encoder-causal
adapt "$EXP/init-scratch" --preset demo-t5gemma --seed 1234
adapt "$EXP/init-unequal" --encoder "$EXP/pretrain-large/hf" --decoder "$EXP/pretrain-small/hf"

hdr "claim 1: adaptation vs from scratch"
prefixlm adapted "$EXP/init-adapted"
prefixlm scratch-lr1e-3 "$EXP/init-scratch"
prefixlm scratch-lr2e-3 "$EXP/init-scratch" lr=0.002
prefixlm scratch-long "$EXP/init-scratch" lr=0.002 steps=900 eval_every=50
hdr "claim 2: bidirectional vs causal encoder"
prefixlm causal-encoder "$EXP/init-causal-encoder"
ul2 ul2-bidirectional "$EXP/init-adapted" warmup_steps=20
ul2 ul2-causal-encoder "$EXP/init-causal-encoder" warmup_steps=20
hdr "claim 2 at 4x the budget, and the decoder-only baseline with the same extra steps"
prefixlm adapted-long "$EXP/init-adapted" steps=1200 eval_every=100
prefixlm causal-encoder-long "$EXP/init-causal-encoder" steps=1200 eval_every=100
train decoder-continued-long configs/demo-pretrain.json init="$EXP/pretrain-small/hf" steps=1200 lr=0.001 warmup_steps=20 eval_every=100
hdr "claim 3: unequal pair, cross-attention warm-up"
prefixlm unequal-warmup "$EXP/init-unequal" warmup_cross_steps=50
prefixlm unequal-nowarmup "$EXP/init-unequal" warmup_cross_steps=0
prefixlm unequal-warmup-rewarm "$EXP/init-unequal" warmup_cross_steps=50 warmup_cross_rewarm=20

hdr "held-out windows: the second 128 tokens given the first 128, every final model"
NVAL=$("$PY" -c 'import json,sys; print([s["documents"] for s in json.load(open(sys.argv[1]))["splits"] if s["name"] == "val"][0])' "$DATA/index.json")
docs=(); for ((i = 0; i < NVAL; i++)); do docs+=(--doc "$i"); done
t5g data inspect "$DATA" --split val "${docs[@]}" \
  | $TOOLS windows --dataset "$DATA" --enc-len 128 --dec-len 128 >"$EXP/heldout-windows.jsonl"
$TOOLS swapctx <"$EXP/heldout-windows.jsonl" >"$EXP/heldout-swapped.jsonl"
echo "{" >"$EXP/heldout.json.tmp"
echo "{" >"$EXP/heldout-swapped.json.tmp"
sep=""
for run in pretrain-small pretrain-large decoder-continued adapted scratch-lr1e-3 scratch-lr2e-3 scratch-long \
           causal-encoder unequal-warmup unequal-nowarmup unequal-warmup-rewarm adapted-long causal-encoder-long \
           decoder-continued-long; do
  t5g score --model "$EXP/$run/hf" --input "$EXP/heldout-windows.jsonl" --output "$EXP/$run/heldout-score.jsonl" 2>/dev/null
  loss=$($TOOLS nll "$EXP/$run/heldout-score.jsonl" | cut -d' ' -f1)
  t5g score --model "$EXP/$run/hf" --input "$EXP/heldout-swapped.jsonl" --output "$EXP/$run/heldout-swapped-score.jsonl" 2>/dev/null
  swapped=$($TOOLS nll "$EXP/$run/heldout-swapped-score.jsonl" | cut -d' ' -f1)
  echo "$run: $loss (another window's context: $swapped)"
  printf '%s  "%s": %s' "$sep" "$run" "$loss" >>"$EXP/heldout.json.tmp"
  printf '%s  "%s": %s' "$sep" "$run" "$swapped" >>"$EXP/heldout-swapped.json.tmp"; sep=$',\n'
done
printf '\n}\n' >>"$EXP/heldout.json.tmp"
printf '\n}\n' >>"$EXP/heldout-swapped.json.tmp"
mv "$EXP/heldout.json.tmp" "$EXP/heldout.json"
mv "$EXP/heldout-swapped.json.tmp" "$EXP/heldout-swapped.json"

hdr "report"
"$PY" train/experiments_report.py "$EXP" "$IMG"
echo
echo "pictures: $IMG/experiments-*.png   tables: $EXP/results.md   total $(el)"
