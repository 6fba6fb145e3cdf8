#!/usr/bin/env bash
# t_safetensors_py.sh: our safetensors files against an independent reader written here in
# Python (json + numpy; torch for the bf16 reference rounding), and the other way round.
#  1. tests/test_safetensors in export mode writes F32, BF16, F16 and sharded BF16 checkpoints
#     and two config.json files (see the exchange-mode comment in tests/test_safetensors.c).
#  2. Python parses the format itself (8-byte little-endian header length, JSON header, data
#     section), checks the header rules the reference implementation enforces (8-byte aligned
#     data, contiguous offsets without holes, metadata format "pt", index naming and total_size)
#     and compares the values with its own rounding: torch .to(torch.bfloat16) and numpy
#     .astype(float16), both round-to-nearest-even.
#  3. Python checks the config.json files have the types transformers' strict configs need.
#  4. Python writes a file of its own (BF16, F16, F32, a scalar, an empty tensor, tensors stored
#     out of name order, header padded with spaces) and the export program's import mode reads it.
set -u
cd "$(dirname "$0")/.."
bin=""
for b in "${BUILD:-}" "$(dirname "${T5G_BIN:-./t5gemma}")" build; do
  [ -n "$b" ] && [ -x "$b/tests/test_safetensors" ] && { bin="$b/tests/test_safetensors"; break; }
done
if [ -z "$bin" ]; then echo "FAIL st_py: tests/test_safetensors not built (looked in \$BUILD, next to \$T5G_BIN, build/)"; exit 1; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
if ! T5G_ST_PY_EXPORT="$tmp/out" "$bin" >"$tmp/log" 2>&1; then
  echo "FAIL st_py_export: export mode failed: $(tail -n 3 "$tmp/log")"; exit 1
fi
/usr/bin/python3 - "$tmp/out" "$tmp/in" <<'EOF'
import json, os, struct, sys
try:
    import numpy as np
    import torch
except Exception as e:
    print("FAIL st_py: /usr/bin/python3 cannot import numpy/torch: %s" % e); sys.exit(1)
out, inn = sys.argv[1], sys.argv[2]
fails = 0
def report(name, ok, why=""):
    global fails
    print(("PASS %s" % name) if ok else ("FAIL %s: %s" % (name, why)))
    fails += 0 if ok else 1

DT = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2)}
def read_st(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n].decode("utf-8"))
    start = 8 + n
    meta = hdr.pop("__metadata__", None)
    tens, spans = {}, []
    for name, e in hdr.items():
        b, en = e["data_offsets"]
        dt, es = DT[e["dtype"]]
        cnt = int(np.prod(e["shape"])) if e["shape"] else 1
        assert en - b == cnt * es, "%s: size" % name
        a = np.frombuffer(raw[start + b:start + en], dtype=dt).copy()
        if e["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        tens[name] = (e["dtype"], e["shape"], a.astype(np.float32))
        spans.append((b, en))
    spans.sort()
    pos = 0
    for b, en in spans:                 # the reference implementation refuses holes and overlaps
        assert b == pos, "hole or overlap at %d (expected %d)" % (b, pos)
        pos = en
    assert start + pos == len(raw), "data section has %d bytes, tensors cover %d" % (len(raw) - start, pos)
    return n, meta, tens

def expected():
    i = np.arange(4096, dtype=np.uint64)
    u = ((i * 2654435761 + 12345) % (1 << 32)).astype(np.uint32)
    u = np.where(i % 4 == 1, u & np.uint32(0x8fffffff), u)
    bits = u.view(np.float32)
    k = np.arange(128)
    mid = np.concatenate([
        (((1000 + k).astype(np.uint32) << 16) | 0x8000).astype(np.uint32).view(np.float32),
        (1.0 + (2 * k + 1) * 2.0 ** -11).astype(np.float32),
        ((2 * k + 1) * 2.0 ** -25).astype(np.float32)]).reshape(3, 128)
    return {"bits": bits, "mid": mid.astype(np.float32), "scal": np.array([3.5], dtype=np.float32)}

def rounded(x, dtype):
    if dtype == "F32": return x
    if dtype == "F16":
        with np.errstate(over="ignore"):   # values beyond 65504 become inf, as intended
            return x.astype(np.float16).astype(np.float32)
    return torch.from_numpy(x.copy()).to(torch.bfloat16).to(torch.float32).numpy()

def same(a, b):
    a, b = a.ravel(), b.ravel()
    na, nb = np.isnan(a), np.isnan(b)
    if not np.array_equal(na, nb): return False
    return np.array_equal(a[~na].view(np.uint32), b[~nb].view(np.uint32))

exp = expected()
shapes = {"bits": [4096], "mid": [3, 128], "scal": []}
for sub, dtype in [("f32", "F32"), ("bf16", "BF16"), ("f16", "F16")]:
    name = "st_py_read_%s" % sub
    try:
        n, meta, tens = read_st(os.path.join(out, sub, "model.safetensors"))
        ok = (8 + n) % 8 == 0 and meta == {"format": "pt"} and set(tens) == set(exp)
        why = "" if ok else "alignment/metadata/names: %d %s %s" % (n, meta, sorted(tens))
        for t, v in exp.items():
            if not ok: break
            dt, shape, a = tens[t]
            if dt != dtype or shape != shapes[t]:
                ok, why = False, "%s: dtype %s shape %s" % (t, dt, shape)
            elif not same(a, rounded(v.ravel(), dtype)):
                bad = np.nonzero(~((a == rounded(v.ravel(), dtype)) | (np.isnan(a) & np.isnan(rounded(v.ravel(), dtype)))))[0][:5]
                ok, why = False, "%s differs at %s" % (t, bad)
        report(name, ok, why)
    except Exception as e:
        report(name, False, repr(e))

try:
    d = os.path.join(out, "sharded")
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    files = sorted(set(idx["weight_map"].values()))
    nf = len(files)
    ok = nf > 1 and files == ["model-%05d-of-%05d.safetensors" % (i + 1, nf) for i in range(nf)]
    why = "" if ok else "shard names %s" % files
    total = 0
    for f in files:
        _, meta, tens = read_st(os.path.join(d, f))
        for t, (dt, shape, a) in tens.items():
            total += a.size * 2
            if idx["weight_map"].get(t) != f: ok, why = False, "%s not mapped to %s" % (t, f)
            if not same(a, rounded(exp[t].ravel(), "BF16")): ok, why = False, "%s values" % t
    if idx["metadata"]["total_size"] != total: ok, why = False, "total_size %s != %d" % (idx["metadata"]["total_size"], total)
    if set(idx["weight_map"]) != set(exp): ok, why = False, "weight_map names"
    report("st_py_read_sharded", ok, why)
except Exception as e:
    report("st_py_read_sharded", False, repr(e))

# config.json: types as transformers' configs declare them (float fields as JSON floats)
try:
    g = json.load(open(os.path.join(out, "config_gemma2.json")))
    t = json.load(open(os.path.join(out, "config_t5gemma.json")))
    probs = []
    def types(c, where):
        for k in ["attn_logit_softcapping", "final_logit_softcapping", "rms_norm_eps", "initializer_range", "rope_theta", "attention_dropout"]:
            if not isinstance(c.get(k), float): probs.append("%s%s is %r" % (where, k, c.get(k)))
        for k in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "head_dim", "sliding_window", "max_position_embeddings", "query_pre_attn_scalar", "vocab_size"]:
            if type(c.get(k)) is not int: probs.append("%s%s is %r" % (where, k, c.get(k)))
        if len(c["layer_types"]) != c["num_hidden_layers"]: probs.append(where + "layer_types length")
        if c.get("rope_parameters", {}).get("rope_theta") != c["rope_theta"]: probs.append(where + "rope_parameters")
    types(g, "")
    if g["model_type"] != "gemma2" or g["architectures"] != ["Gemma2ForCausalLM"] or g.get("cache_implementation") != "hybrid":
        probs.append("gemma2 identity fields")
    for m in ["encoder", "decoder"]:
        types(t[m], m + ".")
        if t[m]["model_type"] != "t5_gemma_module": probs.append(m + ".model_type")
    if t["model_type"] != "t5gemma" or t["architectures"] != ["T5GemmaForConditionalGeneration"] or t["is_encoder_decoder"] is not True:
        probs.append("t5gemma identity fields")
    if t["decoder"].get("cross_attention_hidden_size") != t["encoder"]["hidden_size"] or t["decoder"]["is_decoder"] is not True \
       or t["encoder"]["is_decoder"] is not False:
        probs.append("decoder cross_attention_hidden_size / is_decoder")
    if not isinstance(t["dropout_rate"], float) or type(t["vocab_size"]) is not int: probs.append("t5gemma top-level types")
    report("st_py_config_types", not probs, "; ".join(probs))
except Exception as e:
    report("st_py_config_types", False, repr(e))

# a file written here, read by our reader (import mode)
os.makedirs(inn, exist_ok=True)
rng = np.random.default_rng(5)
x = (rng.standard_normal(300) * 100).astype(np.float32)
x[:6] = [np.nan, np.inf, -np.inf, -0.0, 1e-30, 3e38]
y = (rng.standard_normal((4, 5, 6)) * 0.01).astype(np.float32)
z = rng.standard_normal(17).astype(np.float32)
bf = torch.from_numpy(x.copy()).to(torch.bfloat16)
entries = [  # name, dtype, shape, bytes, expected f32 values
    ("zz.bf16", "BF16", [300], bf.view(torch.int16).numpy().tobytes(), bf.to(torch.float32).numpy()),
    ("aa.f16", "F16", [4, 5, 6], y.astype(np.float16).tobytes(), y.astype(np.float16).astype(np.float32)),
    ("mm.f32", "F32", [17], z.tobytes(), z),
    ("scalar", "F32", [], np.array([2.25], np.float32).tobytes(), np.array([2.25], np.float32)),
    ("empty", "BF16", [0, 3], b"", np.zeros(0, np.float32)),
]
hdr, data = {"__metadata__": {"format": "pt", "note": "written by t_safetensors_py.sh"}}, b""
for name, dt, shape, by, _ in entries:
    hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(by)]}
    data += by
h = json.dumps(hdr).encode()
h += b" " * ((8 - len(h) % 8) % 8 + 8)
with open(os.path.join(inn, "py.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h))); f.write(h); f.write(data)
with open(os.path.join(inn, "expect.txt"), "w") as f, open(os.path.join(inn, "expect.bin"), "wb") as g:
    for name, _, _, _, v in entries:
        f.write("%s %d\n" % (name, v.size)); g.write(v.astype("<f4").tobytes())
sys.exit(1 if fails else 0)
EOF
rc=$?
[ -f "$tmp/in/py.safetensors" ] || exit 1
T5G_ST_PY_IMPORT="$tmp/in" "$bin" || rc=1
exit $rc
