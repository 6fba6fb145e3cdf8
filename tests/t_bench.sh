#!/usr/bin/env bash
# t_bench.sh: the `make bench` machinery (train/bench.c, train/bench.sh) on a tiny size, so it
# does not rot between benchmark runs. Benchmarks are not tests: nothing here checks a time.
#   bench_train_json   a training case (Gemma 2 S body, V 512, 1 x 32 tokens, 2 steps) writes its
#                      JSON: tokens/s = tokens / step time, the profile's kinds add up to the step,
#                      a finite loss not above ln V (+0.5) after three steps, peak RSS >= the arena
#                      peak, MFU fields present
#   bench_config       the written config.json loads (`t5gemma info`) with the overridden vocabulary
#   bench_torch_twin   tests/ref/t5gemma_ref.py bench runs the same written config (PyTorch)
#   bench_report       `bench --case report` prints the row and writes bench.json
#   bench_errors       unknown case, prepare without a tokenizer: clear message, non-zero exit
# A few seconds.
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
BIN=${T5G_BIN:-./t5gemma}
case "$BIN" in /*) ;; *) BIN="$REPO/$BIN" ;; esac
PY=/usr/bin/python3
W=$(mktemp -d /tmp/t_bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
[ -x "$BIN" ] || { echo "FAIL bench_setup: $BIN is not executable (set T5G_BIN)"; exit 1; }

if "$BIN" --threads 1 bench --case gemma2-s --vocab 512 --batch 1 --dec-len 32 --steps 2 --warmup 1 --out "$W/b" \
     >"$W/train.out" 2>&1; then
  msg=$("$PY" - "$W/b/gemma2-s.json" <<'EOF'
import json, math, sys
j = json.load(open(sys.argv[1]))
bad = []
tok = j["batch"] * (j["enc_len"] + j["dec_len"])
if tok != 32: bad.append("tokens per step %r, expected 32" % tok)
if not abs(j["tokens_per_s"] - tok / j["step_s"]) <= 1e-6 * j["tokens_per_s"]: bad.append("tokens_per_s != tokens / step_s")
if not j["step_s_min"] <= j["step_s"]: bad.append("step_s_min > step_s")
p = j["profile_s"]
tot = sum(v for v in p.values())
if not abs(tot - j["step_s"]) <= 1e-6 * j["step_s"] + 1e-9: bad.append("profile kinds add to %g, step %g" % (tot, j["step_s"]))
if not (p["matmul"] > 0 and p["loss"] > 0 and p["optimizer"] > 0): bad.append("empty profile kinds %r" % p)
if not (math.isfinite(j["loss"]) and 0 < j["loss"] < math.log(512) + 0.5): bad.append("loss %r, expected in (0, ln 512 + 0.5)" % j["loss"])
if not j["peak_rss_mb"] >= j["arena_peak_mb"] > 0: bad.append("peak RSS %r below the arena peak %r" % (j["peak_rss_mb"], j["arena_peak_mb"]))
for k in ("mfu", "mfu_cpu", "ceiling_gflops", "predicted_mb", "cpu_s"):
    if not (isinstance(j.get(k), (int, float)) and j[k] > 0): bad.append("%s = %r" % (k, j.get(k)))
if j["vocab"] != 512 or j["kind"] != "gemma2": bad.append("vocab/kind %r %r" % (j["vocab"], j["kind"]))
print("; ".join(bad))
EOF
)
  if [ -z "$msg" ]; then pass bench_train_json; else fail bench_train_json "$msg"; fi
else
  fail bench_train_json "the training case failed: $(tail -n 3 "$W/train.out")"
fi

if out=$("$BIN" info "$W/b/gemma2-s.config.json" 2>&1) && echo "$out" | grep -q "vocab 512"; then pass bench_config
else fail bench_config "the written config does not load with vocab 512: $(echo "$out" | tail -n 2)"; fi

if "$PY" -c "import torch" 2>/dev/null; then
  if out=$("$PY" tests/ref/t5gemma_ref.py bench --config "$W/b/gemma2-s.config.json" --batch 1 --enc-len 0 --dec-len 32 \
             --threads 1 --steps 1 --warmup 0 2>&1) &&
     echo "$out" | "$PY" -c "import json,sys; j=json.loads(sys.stdin.read()); sys.exit(0 if j['kind']=='gemma2' and j['tokens_per_s']>0 else 1)"; then
    pass bench_torch_twin
  else fail bench_torch_twin "$(echo "$out" | tail -n 2)"; fi
else
  echo "PASS bench_torch_twin (skipped: no torch for $PY)"
fi

if out=$("$BIN" bench --case report --out "$W/b" 2>&1) && echo "$out" | grep -q "^| gemma2-s, V 512, 1 x 32 |" &&
   "$PY" -c "import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if j['training'][0]['t5gemma']['case']=='gemma2-s' else 1)" "$W/b/bench.json"; then
  pass bench_report
else fail bench_report "no gemma2-s row or bench.json: $(echo "$out" | grep gemma2 | head -n 2)"; fi

o1=$("$BIN" bench --case nope 2>&1); r1=$?
o2=$("$BIN" bench --case prepare --out "$W/b" 2>&1); r2=$?
if [ $r1 -eq 2 ] && echo "$o1" | grep -q "unknown case 'nope'" && [ $r2 -ne 0 ] && echo "$o2" | grep -q "needs --tokenizer"; then
  pass bench_errors
else fail bench_errors "exit $r1/$r2: $o1 / $o2"; fi
