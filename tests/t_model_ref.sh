#!/usr/bin/env bash
# The C models against the independent PyTorch reference (tests/ref/t5gemma_ref.py, float64):
# loss, logits and every parameter's gradient to 1e-4 relative, for Gemma 2, T5Gemma (balanced
# and unequal widths), models adapted by `t5gemma adapt` (balanced, unequal, causal encoder),
# BF16 storage, packed segments, and activation recomputation.
set -u
BIN=${T5G_BIN:-./t5gemma}
PY=/usr/bin/python3
REF=tests/ref/t5gemma_ref.py
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
check() {  # name ckpt batch [dump options]
  local name=$1 ck=$2 batch=$3; shift 3
  if ! "$BIN" dump --model "$ck" --batch "$batch" --out "$W/$name.out.safetensors" "$@" >"$W/$name.log" 2>&1; then
    echo "FAIL $name: dump failed: $(tail -3 "$W/$name.log")"; return; fi
  if $PY $REF check --ckpt "$ck" --batch "$batch" --outputs "$W/$name.out.safetensors" --quiet >>"$W/$name.log" 2>&1; then
    echo "PASS $name: $(grep -o 'reference loss.*' "$W/$name.log" | head -1)"
  else echo "FAIL $name: $(tail -5 "$W/$name.log")"; fi
}
for c in tiny-gemma2 tiny-t5gemma tiny-t5gemma-unequal; do
  $PY $REF random --config $c --out "$W/$c" --seed 11 --enc-len 13 --dec-len 12 >/dev/null || echo "FAIL random_$c"
  check "ref_$c" "$W/$c" "$W/$c/batch.safetensors"
done
check ref_t5gemma_recompute "$W/tiny-t5gemma" "$W/tiny-t5gemma/batch.safetensors" --recompute
check ref_gemma2_recompute "$W/tiny-gemma2" "$W/tiny-gemma2/batch.safetensors" --recompute
# BF16 on disk: loaded as f32 exactly
$PY $REF random --config tiny-t5gemma --out "$W/bf16" --seed 12 --dtype BF16 >/dev/null
check ref_t5gemma_bf16_storage "$W/bf16" "$W/bf16/batch.safetensors"
# Packed segments: segment ids with per-segment positions (attention stays within a segment)
$PY - "$W/tiny-t5gemma/batch.safetensors" "$W/packed.safetensors" <<'PYEOF'
import sys
sys.path.insert(0, "tests/ref")
import numpy as np, safetensors_py as st
b = st.load_file(sys.argv[1])
B, Te = b["enc_ids"].shape; Td = b["dec_ids"].shape[1]
def segs(T, cut):
    s = np.ones((B, T), np.int32); s[:, cut:] = 2
    p = np.concatenate([np.arange(cut), np.arange(T - cut)]).astype(np.int32)
    return s, np.tile(p, (B, 1))
b["enc_seg"], b["enc_pos"] = segs(Te, 5)
b["dec_seg"], b["dec_pos"] = segs(Td, 4)
for k in ("enc_mask", "dec_mask"): b[k] = np.ones_like(b[k])
b["enc_seg"] *= 1; b["dec_seg"] *= 1
st.save_file(b, sys.argv[2])
PYEOF
check ref_t5gemma_packed_segments "$W/tiny-t5gemma" "$W/packed.safetensors"
# Adaptation: balanced (cross-attention copied from self-attention), then trained as T5Gemma
if "$BIN" adapt --from "$W/tiny-gemma2" --out "$W/adapted" >"$W/adapt.log" 2>&1; then
  check ref_adapted_balanced "$W/adapted" "$W/tiny-t5gemma/batch.safetensors"
else echo "FAIL ref_adapted_balanced: $(tail -3 "$W/adapt.log")"; fi
"$BIN" adapt --from "$W/tiny-gemma2" --out "$W/adapted_causal" --encoder-causal --cross-norm zero >"$W/adapt2.log" 2>&1 \
  && check ref_adapted_causal_encoder "$W/adapted_causal" "$W/tiny-t5gemma/batch.safetensors" \
  || echo "FAIL ref_adapted_causal_encoder: $(tail -3 "$W/adapt2.log")"
# Unequal pair: a wider, deeper Gemma 2 as encoder source, the tiny one as decoder source
$PY - "$W" <<'PYEOF'
import json, sys
c = json.load(open("configs/models/tiny-gemma2.json"))
c.update(hidden_size=96, num_hidden_layers=6, intermediate_size=160)
c.pop("layer_types", None)
json.dump(c, open(sys.argv[1] + "/wide.json", "w"), indent=1)
PYEOF
$PY $REF random --config "$W/wide.json" --out "$W/wide" --seed 13 >/dev/null || echo "FAIL random_wide"
if "$BIN" adapt --encoder "$W/wide" --decoder "$W/tiny-gemma2" --out "$W/adapted_unequal" >"$W/adapt3.log" 2>&1; then
  grep -q "cross-attention random" "$W/adapt3.log" && grep -q "warm-up\|alone" "$W/adapt3.log" \
    && echo "PASS adapt_unequal_random_cross_and_warmup_notice" || echo "FAIL adapt_unequal_random_cross_and_warmup_notice: $(cat "$W/adapt3.log")"
  check ref_adapted_unequal "$W/adapted_unequal" "$W/tiny-t5gemma/batch.safetensors"
else echo "FAIL ref_adapted_unequal: $(tail -3 "$W/adapt3.log")"; fi
