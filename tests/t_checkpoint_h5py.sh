#!/usr/bin/env bash
# t_checkpoint_h5py.sh: a checkpoint written by our C code (tests/test_checkpoint.c, export mode)
# is readable by h5py: root attributes, every parameter under /params by its Hugging Face name
# with its shape and values, the optimizer moments and per-entry step counters, the /state
# arrays and JSON strings; and every dataset's checksum recomputed here, independently, in
# Python (FNV-1a 64 over 256 KiB blocks, then over the block hashes, see train/checkpoint.h).
set -u
cd "$(dirname "$0")/.."
bin=""
for b in "${BUILD:-}" "$(dirname "${T5G_BIN:-./t5gemma}")" build; do
  [ -n "$b" ] && [ -x "$b/tests/test_checkpoint" ] && { bin="$b/tests/test_checkpoint"; break; }
done
if [ -z "$bin" ]; then echo "FAIL checkpoint_h5py: tests/test_checkpoint not built (looked in \$BUILD, next to \$T5G_BIN, build/)"; exit 1; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
if ! T5G_CKPT_EXPORT="$tmp" "$bin" >"$tmp/log" 2>&1; then
  echo "FAIL checkpoint_h5py: $bin in export mode failed: $(tail -n 3 "$tmp/log")"; exit 1
fi
if command -v h5dump >/dev/null 2>&1; then
  if h5dump -H "$tmp/ckpt-00000042.h5" >"$tmp/dump" 2>&1 && grep -q 'DATASET "model.encoder.embed_tokens.weight"' "$tmp/dump"; then
    echo "PASS checkpoint_h5dump_header"
  else
    echo "FAIL checkpoint_h5dump_header: h5dump -H failed or lacks the embedding dataset: $(head -n 5 "$tmp/dump")"
  fi
fi
/usr/bin/python3 - "$tmp/ckpt-00000042.h5" "$tmp/expect.txt" <<'EOF'
import json, sys
try:
    import h5py, numpy as np
except Exception as e:
    print("FAIL checkpoint_h5py: /usr/bin/python3 cannot import h5py/numpy: %s" % e); sys.exit(1)
path, expect = sys.argv[1], sys.argv[2]
fails = []
def check(cond, msg):
    if not cond: fails.append(msg)

def fnv(data, h=0xcbf29ce484222325):
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h
def checksum(raw):
    blocks = b"".join(fnv(raw[o:o + 262144]).to_bytes(8, "little") for o in range(0, len(raw), 262144))
    return fnv(blocks)

lines = open(expect, encoding="utf-8").read().split("\n")
with h5py.File(path, "r") as f:
    a = f.attrs
    check(a["format"] in (b"t5gemma-checkpoint", "t5gemma-checkpoint"), "format attribute %r" % a.get("format"))
    check(int(a["format_version"]) == 1 and int(a["complete"]) == 1 and int(a["step"]) == 42, "root attributes")
    check(int(a["tokenizer_vocab_size"]) == 256000, "tokenizer_vocab_size")
    n_params = 0
    for ln in lines:
        t = ln.split()
        if not t or t[0] == "state" or ln.startswith("{"):
            continue
        name, nd = t[0], int(t[1])
        shape = tuple(int(x) for x in t[2:2 + nd])
        first, last, astep = float(t[2 + nd]), float(t[3 + nd]), int(t[4 + nd])
        key = "params/" + name
        check(key in f, "missing " + key)
        if key not in f:
            continue
        d = f[key]
        check(d.shape == shape, "%s shape %s, expected %s" % (key, d.shape, shape))
        check(d.dtype == np.float32, "%s dtype %s" % (key, d.dtype))
        x = d[()]
        check(float(x.flat[0]) == np.float32(first) and float(x.flat[-1]) == np.float32(last), "%s values" % key)
        for grp in ("optimizer/m/", "optimizer/v/"):
            check(f[grp + name].shape == shape, grp + name + " shape")
        check(int(f["optimizer/m/" + name].attrs["adam_step"]) == astep, name + " adam_step")
        n_params += 1
    check(n_params == len(f["params"]) and n_params > 0, "params group has %d datasets, expected %d" % (len(f["params"]), n_params))
    st = [l for l in lines if l.startswith("state reader")][0].split()[2:]
    check(list(f["state/reader"][()]) == [int(v) for v in st], "state/reader %s" % list(f["state/reader"][()]))
    tj = f["state/train_config_json"][()]
    tj = tj.decode("utf-8") if isinstance(tj, bytes) else tj
    check(tj == lines[-3], "train config string %r" % tj)
    check(json.loads(tj)["objective"] == "prefixlm", "train config JSON")
    mj = f["state/model_config_json"][()]
    mj = mj.decode("utf-8") if isinstance(mj, bytes) else mj
    check(json.loads(mj)["model_type"] == "t5gemma", "model config JSON")
    check(f["optimizer"].attrs["beta1"] == 0.9 and f["schedule"].attrs["decay"] in (b"cosine", "cosine"), "optimizer/schedule attributes")
    # every dataset's checksum, recomputed from the bytes h5py returns
    n_sum = 0
    def visit(name, obj):
        global n_sum
        if not isinstance(obj, h5py.Dataset):
            return
        v = obj[()]
        if isinstance(v, bytes):
            raw = v.rstrip(b"\0")
        else:
            raw = np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<")).tobytes()
        want = int(obj.attrs["checksum"])
        check(checksum(raw) == want, "checksum of /%s: %016x computed, %016x stored" % (name, checksum(raw), want))
        n_sum += 1
    f.visititems(visit)
if fails:
    for m in fails[:20]:
        print("FAIL checkpoint_h5py: " + m)
    sys.exit(1)
print("PASS checkpoint_h5py (%d parameters, %d checksums recomputed)" % (n_params, n_sum))
EOF
