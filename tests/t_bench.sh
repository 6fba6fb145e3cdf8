#!/usr/bin/env bash
# t_bench.sh: the `make bench` machinery (train/bench.c, train/bench.sh) on a tiny size, so it
# does not rot between benchmark runs. Benchmarks are not tests: nothing here checks a time.
#   bench_train_json   a training case (Gemma 2 S body, V 512, 1 x 32 tokens, 2 steps) writes its
#                      JSON: tokens/s = tokens / step time, the profile's kinds add up to the step,
#                      a finite loss not above ln V (+0.5) after three steps, peak RSS >= the arena
#                      peak, MFU fields present
#   bench_config       the written config.json loads (`t5gemma info`) with the overridden vocabulary
#   bench_torch_twin   tests/ref/t5gemma_ref.py bench runs the same written config (PyTorch)
#   bench_bandwidth    the bandwidth case (tiny-t5gemma's parameters, 64-row activations, 4 MiB
#                      STREAM arrays) writes every figure: bytes as documented (AdamW 28 per
#                      parameter, STREAM 2 and 3 arrays, the ops' formulas), GB/s = bytes / time,
#                      of_triad = GB/s / triad GB/s, forward + backward = time, all positive, finite
#   bench_report       `bench --case report` prints the rows and writes bench.json
#   bench_errors       unknown case, prepare without a tokenizer: clear message, non-zero exit
# About ten seconds (the bandwidth case times each figure for ~0.5 s).
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh bench

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

if "$BIN" --threads 2 bench --case bandwidth --preset tiny-t5gemma --rows 64 --stream-mib 4 --out "$W/b" >"$W/bw.out" 2>&1; then
  msg=$("$PY" - "$W/b/bandwidth.json" <<'EOF'
import json, math, re, sys
j = json.load(open(sys.argv[1]))
bad = []
f = {e["name"]: e for e in j["figures"]}
if sorted(f) != sorted(["copy", "triad", "adamw", "rmsnorm", "geglu"]): bad.append("figures %r" % sorted(f))
for k, e in f.items():
    for key in ("bytes", "seconds", "gb_per_s", "of_triad"):
        v = e.get(key)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0): bad.append("%s.%s = %r" % (k, key, v))
    if not (math.isfinite(e.get("cores_used", -1)) and e["cores_used"] >= 0): bad.append("%s.cores_used = %r" % (k, e.get("cores_used")))
if bad: print("; ".join(bad)); sys.exit()
n = 4 * 2**20 // 4                                     # floats per STREAM array
N, d, F = 64, 64, 128                                  # rows; tiny-t5gemma hidden and intermediate sizes
# tiny-t5gemma: 2 embeddings [512, 64]; attention: q, o [64, 64], k, v [2 kv heads x 16, 64];
# encoder layer: attention, gate up down, 4 norms; decoder layer: also cross-attention and 2 norms;
# a final norm per stack
A = 2 * d * d + 2 * (2 * 16) * d
P = 2 * 512 * d + 4 * (A + 3 * d * F + 4 * d) + d + 4 * (2 * A + 3 * d * F + 6 * d) + d
if j["params"] != P: bad.append("params %r, expected %d" % (j["params"], P))
want = {"copy": 8 * n, "triad": 12 * n, "adamw": 28 * P}
for k, width, per_layer in (("rmsnorm", d, 4 * (6 * N * d + 2 * N + 4 * d)), ("geglu", F, 4 * 10 * N * F)):
    m = re.search(r"\[(\d+), (\d+)\] x (\d+) layers", f[k]["shape"])
    if m and (int(m.group(1)), int(m.group(2))) == (N, width) and int(m.group(3)) >= 2: want[k] = int(m.group(3)) * per_layer
    else: bad.append("%s shape %r" % (k, f[k]["shape"]))
for k, b in want.items():
    if f[k]["bytes"] != b: bad.append("%s bytes %r, expected %r" % (k, f[k]["bytes"], b))
triad = f["triad"]["gb_per_s"]
if abs(triad - j["triad_gb_per_s"]) > 1e-9 * triad: bad.append("triad_gb_per_s %r != the triad figure %r" % (j["triad_gb_per_s"], triad))
for k, e in f.items():
    if abs(e["gb_per_s"] - e["bytes"] / e["seconds"] / 1e9) > 1e-9 * e["gb_per_s"]: bad.append("%s: GB/s != bytes / time" % k)
    if abs(e["of_triad"] - e["gb_per_s"] / triad) > 1e-9 * e["of_triad"]: bad.append("%s: of_triad != GB/s / triad GB/s" % k)
for k in ("rmsnorm", "geglu"):
    e = f[k]
    if not (e["forward_s"] > 0 and e["backward_s"] > 0 and abs(e["forward_s"] + e["backward_s"] - e["seconds"]) <= 1e-3 * e["seconds"] + 1e-6):
        bad.append("%s: forward %r + backward %r != %r" % (k, e["forward_s"], e["backward_s"], e["seconds"]))
print("; ".join(bad))
EOF
)
  if [ -z "$msg" ]; then pass bench_bandwidth; else fail bench_bandwidth "$msg"; fi
else
  fail bench_bandwidth "the bandwidth case failed: $(tail -n 3 "$W/bw.out")"
fi

if out=$("$BIN" bench --case report --out "$W/b" 2>&1) && echo "$out" | grep -q "^| gemma2-s, V 512, 1 x 32 |" &&
   echo "$out" | grep -q "^| adamw: .*(tiny-t5gemma) |" &&
   "$PY" -c "import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if j['training'][0]['t5gemma']['case']=='gemma2-s' and j['bandwidth']['figures'][2]['name']=='adamw' else 1)" "$W/b/bench.json"; then
  pass bench_report
else fail bench_report "no gemma2-s or adamw row, or bench.json: $(echo "$out" | grep -E 'gemma2|adamw' | head -n 2)"; fi

o1=$("$BIN" bench --case nope 2>&1); r1=$?
o2=$("$BIN" bench --case prepare --out "$W/b" 2>&1); r2=$?
if [ $r1 -eq 2 ] && echo "$o1" | grep -q "unknown case 'nope'" && [ $r2 -ne 0 ] && echo "$o2" | grep -q "needs --tokenizer"; then
  pass bench_errors
else fail bench_errors "exit $r1/$r2: $o1 / $o2"; fi
