#!/usr/bin/python3
"""t5gemma_ref.py: independent PyTorch reference of Gemma 2 (Gemma2ForCausalLM) and T5Gemma
(T5GemmaForConditionalGeneration), eager attention, used to check the C models and as the
PyTorch benchmark twin.  Written from docs/t5gemma-spec.md sections 1, 2, 5 and 6 (Hugging Face
modeling semantics); it shares no code with model/*.c.  Needs torch (Debian python3-torch, run
with /usr/bin/python3) and numpy; no transformers/safetensors packages (tests/ref/safetensors_py.py).

Model semantics (spec section in brackets)
  * embedding x0 = E[ids] * c, c = sqrt(hidden_size) rounded to float32 [1.6]; with config flag
    t5gemma_c.embed_scale_bf16 = 1, c is rounded to bfloat16 (HF bf16 behaviour).  T5Gemma: the
    encoder and the decoder each have their own table and their own c [2.5].
  * sandwich layers [1.2, 2.2, 2.3]: x += post_norm(op(pre_norm(x))) for self-attention, (T5Gemma
    decoder) cross-attention, and the GeGLU MLP W_down(gelu_tanh(W_gate u) * W_up u) [1.4].
  * RMSNorm y = x * rsqrt(mean(x^2) + eps) * (1 + w) [1.3].
  * attention [1.5]: q/k/v projections, GQA (query head n uses KV head n // (H/K)), RoPE
    half-split (rotate_half) with inv_freq_i = theta^(-2i/h) at the given positions on q and k,
    scores q.k * query_pre_attn_scalar^-1/2, soft-cap c*tanh(s/c) (attn_logit_softcapping) BEFORE
    the mask, softmax, P V, o_proj.
  * masks (index-based, like HF's cache positions): a key j is visible from query i iff both are
    real (mask == 1), they have equal segment ids (if enc_seg/dec_seg are given), and
      decoder / Gemma 2 self-attention: j <= i, and on sliding layers i - W < j;
      encoder self-attention: bidirectional, |i - j| < W on sliding layers [2.2]
        (t5gemma_c.encoder_causal = 1: causal, i - W < j <= i on sliding layers);
      cross-attention: no RoPE, no window, soft-capped, keys = encoder positions [2.3].
    A layer is sliding iff layer_types[i] == "sliding_attention" (default: even i).
    Query rows with no visible key -- which includes every padding query row -- output 0
    (Flax convention, spec 6), so pad positions never influence real positions.
  * final RMSNorm, logits = h E^T with the (decoder) embedding, final soft-cap
    c*tanh(z/c) (final_logit_softcapping of the decoder / decoder-only config) [1.6, 2.4].
  * loss = sum over tokens with labels != -100 of -log softmax(capped logits)[label], divided by
    the normaliser: batch tensor "loss_norm" if present, else the number of such tokens.
    Labels are aligned with the logits (labels[b, t] is the target of logits[b, t]); no shift
    happens here, also for Gemma 2 (the data pipeline shifts).  Dropout is never applied.

Files (all safetensors; F32 for floats, I32 for ids/labels/masks/positions/segments; the reader
also accepts BF16/F16/F64 floats and any integer type)
  checkpoint dir:   config.json (model_type "gemma2" or "t5gemma" with nested "encoder" and
                    "decoder"; optional object "t5gemma_c": {"encoder_causal": 0|1,
                    "embed_scale_bf16": 0|1}) + model.safetensors, or shards with
                    model.safetensors.index.json; tensor names exactly as Hugging Face (spec 1.7,
                    2.7); dtypes BF16/F16/F32.  A stored lm_head.weight / lm_head.out_proj.weight
                    is accepted only if it equals the tied embedding, and is otherwise an error.
  batch.safetensors:
    enc_ids  [B, Te] I32   encoder tokens (T5Gemma only; absent for Gemma 2)
    enc_mask [B, Te] I32   1 = real token, 0 = padding (optional: default all 1)
    enc_pos  [B, Te] I32   RoPE positions (optional: default 0..Te-1)
    dec_ids  [B, Td] I32   decoder (or Gemma 2) input tokens
    dec_mask [B, Td] I32   (optional: default all 1)
    dec_pos  [B, Td] I32   (optional: default 0..Td-1)
    labels   [B, Td] I32   target of logits[b, t]; -100 = ignored
    enc_seg, dec_seg [B, T*] I32 (optional) packed-segment ids: attention only within equal ids
    loss_norm [1] F32      (optional) divisor of the summed token loss
  outputs.safetensors:
    loss     [1] F32
    logits   [B, Td, V] F32, after the final soft-cap, every position (pad rows included)
    grad/<HF parameter name>  F32, same shape as the parameter, d loss / d parameter, for every
             parameter (the tied LM head's gradient is part of grad/model.embed_tokens.weight
             or grad/model.decoder.embed_tokens.weight)

Command line (run with /usr/bin/python3)
  t5gemma_ref.py random --config CFG --out DIR [--seed S] [--batch B] [--enc-len Te] [--dec-len Td]
        [--dtype F32|BF16|F16] [--shard-bytes N] [--embed-std 0.5] [--qk-std 0.2] [--w-std 0.1]
        [--norm-std 0.3] [--no-pad]
      tiny random checkpoint DIR/{config.json, model.safetensors} and DIR/batch.safetensors
      (right padding on some rows, some labels -100).  CFG: a config.json path or a preset name
      looked up as configs/models/CFG.json.
  t5gemma_ref.py dump  --ckpt DIR --batch FILE --out FILE [--dtype float64|float32] [--out-dtype F32|F64]
      reference loss, logits and gradients.
  t5gemma_ref.py check --ckpt DIR --batch FILE --outputs C_OUTPUTS [--rtol 1e-4] [--atol-frac 3e-5]
        [--real-logits-only] [--only REGEX] [--quiet]
      recomputes in float64 and compares with C_OUTPUTS; exit 0 iff every tensor passes.
      --real-logits-only compares logits only at dec_mask == 1 rows; --only REGEX compares (and
      requires) only the gradients of parameters whose HF name matches REGEX (e.g. "cross_attn").
  t5gemma_ref.py compare --ref FILE --outputs FILE [--rtol ..] [--atol-frac ..] [--only REGEX]
      the same comparison between two outputs files.
  t5gemma_ref.py bench --config CFG [--batch 8] [--enc-len 256] [--dec-len 256] [--threads 2]
        [--steps 3] [--warmup 1] [--lr 1e-4] [--seed 0]
      float32 eager training steps (forward + backward + torch.optim.AdamW), one JSON line.

Tolerance (check / compare): for each tensor with reference values b and candidate a,
  scale = max|b|, atol = atol_frac * scale, and every element must satisfy
  |a - b| <= atol + rtol * |b|.  The atol term absorbs float32 rounding of elements that are
  small because of cancellation (their absolute error is set by the tensor's scale, not by their
  own size; measured float32-vs-float64 errors of this reference on the tiny configs reach
  ~6e-6 x scale on such elements, so the default atol_frac 3e-5 leaves a 5x margin while a
  1e-3 relative error in any single large element still fails).  Reported per tensor: max abs
  error, max rel error |a-b|/|b| over elements with |b| >= 0.01*scale, and
  "ratio" = max |a-b| / (atol + rtol*|b|) (pass iff <= 1).  A missing or extra tensor fails.

Benchmark (bench): parameters random normal(0, initializer_range), norm weights 0, float32;
  unpadded random batch (B rows of Te encoder + Td decoder tokens, or Td for Gemma 2); each
  step = zero_grad + forward + loss + backward + AdamW(lr, betas (0.9, 0.95), eps 1e-8,
  weight_decay 0.1).  JSON fields: impl, torch, model, kind, params, batch, enc_len, dec_len,
  threads, steps, warmup, dtype, step_s (mean over the timed steps), step_s_min, fwd_bwd_s,
  optimizer_s, tokens_per_s = B*(Te+Td)/step_s (B*Td for Gemma 2), dec_tokens_per_s = B*Td/step_s,
  loss (last step), peak_rss_mb (getrusage ru_maxrss of this process, MiB).
Exit codes: 0 pass, 1 mismatch, 2 bad input (message names the file and field).
"""
import argparse
import json
import math
import os
import re
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_py as st  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


class RefError(Exception):
    """Bad input: message names the file and field."""


# ----------------------------------------------------------------------------------------------
# Configuration (Hugging Face config.json semantics, spec 1.7 / 2.8)
# ----------------------------------------------------------------------------------------------

class StackCfg:
    """One Gemma 2 stack (decoder-only model, or T5Gemma encoder/decoder module)."""

    def __init__(self, d, source, vocab_default=256000):
        def get(k, default):            # absent or null -> the transformers default
            v = d.get(k)
            return default if v is None else v
        self.vocab_size = int(get("vocab_size", vocab_default))
        self.hidden_size = int(get("hidden_size", 2304))
        self.intermediate_size = int(get("intermediate_size", 9216))
        self.num_hidden_layers = int(get("num_hidden_layers", 26))
        self.num_attention_heads = int(get("num_attention_heads", 8))
        self.num_key_value_heads = int(get("num_key_value_heads", 4))
        self.head_dim = int(get("head_dim", 256))
        self.query_pre_attn_scalar = float(get("query_pre_attn_scalar", 256))
        sw = d["sliding_window"] if "sliding_window" in d else d.get("sliding_window_size", 4096)
        self.sliding_window = None if sw is None else int(sw)
        rp = d.get("rope_parameters") or d.get("rope_scaling")
        theta = d.get("rope_theta", None)
        if isinstance(rp, dict):
            if rp.get("rope_type", rp.get("type", "default")) != "default":
                raise RefError("%s: rope type %r not supported (expected \"default\")"
                               % (source, rp.get("rope_type", rp.get("type"))))
            theta = rp.get("rope_theta", theta)
        self.rope_theta = float(10000.0 if theta is None else theta)
        self.rms_norm_eps = float(get("rms_norm_eps", 1e-6))
        a = d.get("attn_logit_softcapping", 50.0)
        f = d.get("final_logit_softcapping", 30.0)
        self.attn_logit_softcapping = None if a is None else float(a)
        self.final_logit_softcapping = None if f is None else float(f)
        act = d.get("hidden_activation", d.get("hidden_act", "gelu_pytorch_tanh"))
        if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise RefError("%s: hidden_activation %r not supported (expected \"gelu_pytorch_tanh\")" % (source, act))
        if d.get("attention_bias", False):
            raise RefError("%s: attention_bias true not supported (Gemma 2 has no biases)" % source)
        L = self.num_hidden_layers
        lt = d.get("layer_types")
        if lt is None:
            lt = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(L)]
        if not isinstance(lt, list) or len(lt) != L:
            raise RefError("%s: layer_types has %s entries, num_hidden_layers is %d"
                           % (source, len(lt) if isinstance(lt, list) else "no list of", L))
        for i, t in enumerate(lt):
            if t not in ("sliding_attention", "full_attention"):
                raise RefError("%s: layer_types[%d] is %r (expected sliding_attention or full_attention)" % (source, i, t))
        self.layer_sliding = [t == "sliding_attention" for t in lt]
        if any(self.layer_sliding) and (self.sliding_window is None or self.sliding_window < 1):
            raise RefError("%s: sliding layers present but sliding_window is %r" % (source, self.sliding_window))
        self.cross_attention_hidden_size = d.get("cross_attention_hidden_size")
        self.initializer_range = float(get("initializer_range", 0.02))
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "head_dim"):
            if getattr(self, k) < 1:
                raise RefError("%s: %s must be >= 1, found %d" % (source, k, getattr(self, k)))
        if self.num_attention_heads % self.num_key_value_heads:
            raise RefError("%s: num_attention_heads %d not divisible by num_key_value_heads %d"
                           % (source, self.num_attention_heads, self.num_key_value_heads))
        if self.head_dim % 2:
            raise RefError("%s: head_dim %d must be even (RoPE)" % (source, self.head_dim))


class ModelCfg:
    def __init__(self, d, source):
        if not isinstance(d, dict):
            raise RefError("%s: expected a JSON object" % source)
        mt = d.get("model_type")
        ext = d.get("t5gemma_c") or {}
        if not isinstance(ext, dict):
            raise RefError("%s: t5gemma_c must be an object, found %r" % (source, ext))
        for k, v in ext.items():
            if k not in ("encoder_causal", "embed_scale_bf16"):
                raise RefError("%s: unknown key t5gemma_c.%s (expected encoder_causal, embed_scale_bf16)" % (source, k))
            if v not in (0, 1):                  # also true/false
                raise RefError("%s: t5gemma_c.%s must be 0 or 1, found %r" % (source, k, v))
        self.encoder_causal = int(ext.get("encoder_causal", 0))
        self.embed_scale_bf16 = int(ext.get("embed_scale_bf16", 0))
        self.pad_token_id = d.get("pad_token_id", 0)
        self.bos_token_id = d.get("bos_token_id", 2)
        self.eos_token_id = d.get("eos_token_id", 1)
        if d.get("tie_word_embeddings", True) is False:
            raise RefError("%s: tie_word_embeddings false not supported (Gemma ties the LM head)" % source)
        if mt == "gemma2":
            self.kind = "gemma2"
            self.enc = None
            self.dec = StackCfg(d, source)
        elif mt == "t5gemma":
            self.kind = "t5gemma"
            if not isinstance(d.get("encoder"), dict):
                raise RefError("%s: model_type t5gemma needs an \"encoder\" object" % source)
            vtop = d.get("vocab_size")
            ed = d["encoder"]
            dd = d.get("decoder") if isinstance(d.get("decoder"), dict) else ed
            self.enc = StackCfg(ed, source + ": encoder", 256000 if vtop is None else vtop)
            self.dec = StackCfg(dd, source + ": decoder", 256000 if vtop is None else vtop)
            if self.dec.cross_attention_hidden_size is None:
                self.dec.cross_attention_hidden_size = self.enc.hidden_size
            if int(self.dec.cross_attention_hidden_size) != self.enc.hidden_size:
                raise RefError("%s: decoder.cross_attention_hidden_size %s != encoder.hidden_size %d"
                               % (source, self.dec.cross_attention_hidden_size, self.enc.hidden_size))
            self.dec.cross_attention_hidden_size = int(self.dec.cross_attention_hidden_size)
        else:
            raise RefError("%s: model_type %r not supported (expected \"gemma2\" or \"t5gemma\")" % (source, mt))
        self.raw = d
        self.source = source


def resolve_config_path(name):
    if os.path.isdir(name):
        name = os.path.join(name, "config.json")
    if os.path.isfile(name):
        return name
    for base in (os.path.join(REPO, "configs", "models"), os.path.join("configs", "models")):
        p = os.path.join(base, name + ".json")
        if os.path.isfile(p):
            return p
    raise RefError("%s: no such config file, directory, or preset configs/models/%s.json" % (name, name))


def load_config(name):
    path = resolve_config_path(name)
    try:
        with open(path) as f:
            d = json.load(f)
    except ValueError as e:
        raise RefError("%s: invalid JSON: %s" % (path, e))
    return ModelCfg(d, path)


# ----------------------------------------------------------------------------------------------
# Parameters: names and shapes (spec 1.7, 2.7)
# ----------------------------------------------------------------------------------------------

def _attn_shapes(prefix, s, d_in_kv):
    H, K, h, d = s.num_attention_heads, s.num_key_value_heads, s.head_dim, s.hidden_size
    return [(prefix + ".q_proj.weight", (H * h, d)), (prefix + ".k_proj.weight", (K * h, d_in_kv)),
            (prefix + ".v_proj.weight", (K * h, d_in_kv)), (prefix + ".o_proj.weight", (d, H * h))]


def _mlp_shapes(prefix, s):
    d, F = s.hidden_size, s.intermediate_size
    return [(prefix + ".gate_proj.weight", (F, d)), (prefix + ".up_proj.weight", (F, d)),
            (prefix + ".down_proj.weight", (d, F))]


def param_shapes(cfg):
    """List of (HF name, shape) for every parameter, in a fixed order."""
    out = []
    if cfg.kind == "gemma2":
        s = cfg.dec
        d = s.hidden_size
        out.append(("model.embed_tokens.weight", (s.vocab_size, d)))
        for i in range(s.num_hidden_layers):
            p = "model.layers.%d" % i
            out += _attn_shapes(p + ".self_attn", s, d)
            out += _mlp_shapes(p + ".mlp", s)
            for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                      "post_feedforward_layernorm"):
                out.append(("%s.%s.weight" % (p, n), (d,)))
        out.append(("model.norm.weight", (d,)))
        return out
    for side, s in (("encoder", cfg.enc), ("decoder", cfg.dec)):
        d = s.hidden_size
        out.append(("model.%s.embed_tokens.weight" % side, (s.vocab_size, d)))
        for i in range(s.num_hidden_layers):
            p = "model.%s.layers.%d" % (side, i)
            out += _attn_shapes(p + ".self_attn", s, d)
            if side == "decoder":
                out += _attn_shapes(p + ".cross_attn", s, s.cross_attention_hidden_size)
            out += _mlp_shapes(p + ".mlp", s)
            norms = ["pre_self_attn_layernorm", "post_self_attn_layernorm"]
            if side == "decoder":
                norms += ["pre_cross_attn_layernorm", "post_cross_attn_layernorm"]
            norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
            for n in norms:
                out.append(("%s.%s.weight" % (p, n), (d,)))
        out.append(("model.%s.norm.weight" % side, (d,)))
    return out


def tied_head_names(cfg):
    if cfg.kind == "gemma2":
        return {"lm_head.weight": "model.embed_tokens.weight"}
    return {"lm_head.out_proj.weight": "model.decoder.embed_tokens.weight",
            "lm_head.weight": "model.decoder.embed_tokens.weight"}


def load_checkpoint(ckpt_dir, dtype=torch.float64, requires_grad=True):
    """(cfg, params) from a checkpoint directory; params: HF name -> torch tensor (leaf)."""
    cfg = load_config(ckpt_dir)
    try:
        raw = st.load_dir(ckpt_dir)
    except st.SafetensorsError as e:
        raise RefError(str(e))
    params = {}
    for name, shape in param_shapes(cfg):
        if name not in raw:
            raise RefError("%s: tensor %s missing (expected shape %s)" % (ckpt_dir, name, list(shape)))
        a = raw.pop(name)
        if tuple(a.shape) != tuple(shape):
            raise RefError("%s: tensor %s has shape %s, expected %s" % (ckpt_dir, name, list(a.shape), list(shape)))
        if a.dtype.kind != "f":
            raise RefError("%s: tensor %s has integer dtype %s, expected BF16/F16/F32" % (ckpt_dir, name, a.dtype))
        params[name] = torch.tensor(a.astype(np.float64), dtype=dtype).requires_grad_(requires_grad)
    for head, emb in tied_head_names(cfg).items():
        if head in raw:
            a = raw.pop(head)
            if a.shape != tuple(params[emb].shape) or not np.array_equal(a.astype(np.float64), params[emb].detach().cpu().double().numpy()):
                raise RefError("%s: %s is stored but differs from %s (the LM head must be tied)" % (ckpt_dir, head, emb))
    if raw:
        raise RefError("%s: %d unexpected tensors, e.g. %s" % (ckpt_dir, len(raw), sorted(raw)[0]))
    return cfg, params


# ----------------------------------------------------------------------------------------------
# Batch
# ----------------------------------------------------------------------------------------------

BATCH_KEYS = ("enc_ids", "enc_mask", "enc_pos", "enc_seg", "dec_ids", "dec_mask", "dec_pos", "dec_seg", "labels")


def load_batch(path, cfg):
    """Read batch.safetensors and validate it against cfg; returns dict of torch int64 tensors
    (masks as bool) plus optional float 'loss_norm'."""
    try:
        raw = st.load_file(path)
    except (OSError, st.SafetensorsError) as e:
        raise RefError("%s: %s" % (path, e))
    return make_batch(raw, cfg, path)


def make_batch(raw, cfg, source="batch"):
    b = {}
    for k in list(raw):
        if k not in BATCH_KEYS and k != "loss_norm":
            raise RefError("%s: unexpected tensor %r (expected %s, loss_norm)" % (source, k, ", ".join(BATCH_KEYS)))
    for side in ("enc", "dec"):
        if side == "enc" and cfg.kind == "gemma2":
            if any(k.startswith("enc_") for k in raw):
                raise RefError("%s: enc_* tensors given for a decoder-only gemma2 model" % source)
            continue
        ids_k = side + "_ids"
        if ids_k not in raw:
            raise RefError("%s: tensor %s missing" % (source, ids_k))
        ids = np.asarray(raw[ids_k])
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise RefError("%s: %s must be a 2-D integer tensor [B, T], found %s %s" % (source, ids_k, ids.dtype, list(ids.shape)))
        B, T = ids.shape
        V = (cfg.enc if side == "enc" else cfg.dec).vocab_size
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            raise RefError("%s: %s has values in [%d, %d], expected [0, %d)" % (source, ids_k, ids.min(), ids.max(), V))
        b[ids_k] = torch.tensor(ids.astype(np.int64))
        for k, default in ((side + "_mask", np.ones((B, T), np.int64)),
                           (side + "_pos", np.broadcast_to(np.arange(T), (B, T))),
                           (side + "_seg", None)):
            if k not in raw:
                if default is not None:
                    b[k] = torch.tensor(np.array(default, dtype=np.int64))
                continue
            a = np.asarray(raw[k])
            if a.shape != (B, T) or a.dtype.kind not in "iu":
                raise RefError("%s: %s must be an integer tensor of shape %s like %s, found %s %s"
                               % (source, k, [B, T], ids_k, a.dtype, list(a.shape)))
            if k.endswith("_mask") and not np.isin(a, (0, 1)).all():
                raise RefError("%s: %s must hold only 0 and 1" % (source, k))
            if k.endswith("_pos") and a.size and a.min() < 0:
                raise RefError("%s: %s has negative positions" % (source, k))
            b[k] = torch.tensor(a.astype(np.int64))
        b[side + "_mask"] = b[side + "_mask"].bool()
    if "labels" not in raw:
        raise RefError("%s: tensor labels missing" % source)
    lab = np.asarray(raw["labels"])
    if lab.shape != tuple(b["dec_ids"].shape) or lab.dtype.kind not in "iu":
        raise RefError("%s: labels must be an integer tensor of shape %s like dec_ids, found %s %s"
                       % (source, list(b["dec_ids"].shape), lab.dtype, list(lab.shape)))
    bad = (lab != -100) & ((lab < 0) | (lab >= cfg.dec.vocab_size))
    if bad.any():
        raise RefError("%s: labels hold %d values outside [0, %d) other than -100, e.g. %d"
                       % (source, int(bad.sum()), cfg.dec.vocab_size, int(lab[bad][0])))
    b["labels"] = torch.tensor(lab.astype(np.int64))
    if "loss_norm" in raw:
        ln = np.asarray(raw["loss_norm"], dtype=np.float64).reshape(-1)
        if ln.size != 1 or not ln[0] > 0:
            raise RefError("%s: loss_norm must be one positive number, found %s" % (source, ln.tolist()))
        b["loss_norm"] = float(ln[0])
    if cfg.kind == "t5gemma" and b["enc_ids"].shape[0] != b["dec_ids"].shape[0]:
        raise RefError("%s: enc_ids has batch %d, dec_ids has %d" % (source, b["enc_ids"].shape[0], b["dec_ids"].shape[0]))
    return b


# ----------------------------------------------------------------------------------------------
# Model (spec 1.2-1.6, 2.2-2.5, 6)
# ----------------------------------------------------------------------------------------------

def embed_scale(d, bf16):
    """sqrt(d) as a float32 value (default) or rounded to bfloat16 (spec 1.6)."""
    c32 = np.float32(math.sqrt(d))
    if bf16:
        return float(st.bf16_bits_to_f32(st.f32_to_bf16_bits(np.array([c32])))[0])
    return float(c32)


def rms_norm(x, w, eps):
    """Gemma RMSNorm with zero-centred gain (spec 1.3)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w)


def gelu_tanh(z):
    """0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) (spec 1.4)."""
    return 0.5 * z * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z * z * z)))


def softcap(x, c):
    return x if c is None or c <= 0 else c * torch.tanh(x / c)


def rope(x, pos, theta):
    """Half-split RoPE (spec 1.5). x [B, n, T, h], pos [B, T] integer positions."""
    h = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, h, 2, dtype=x.dtype) / h))         # [h/2]
    ang = pos.to(x.dtype)[:, None, :, None] * inv                             # [B,1,T,h/2]
    cos, sin = torch.cos(ang), torch.sin(ang)
    x1, x2 = x[..., : h // 2], x[..., h // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def visibility(qmask, kmask, causal=False, window=None, qseg=None, kseg=None):
    """Bool [B, Tq, Tk]: key j visible from query i (index-based; see module docstring)."""
    Tq, Tk = qmask.shape[1], kmask.shape[1]
    i = torch.arange(Tq)[:, None]
    j = torch.arange(Tk)[None, :]
    v = qmask[:, :, None] & kmask[:, None, :]
    if causal:
        v = v & (j <= i)
        if window is not None:
            v = v & (j > i - window)
    elif window is not None:
        v = v & ((i - j).abs() < window)
    if qseg is not None and kseg is not None:
        v = v & (qseg[:, :, None] == kseg[:, None, :])
    return v


def attention(P, prefix, s, xq, xkv, vis, pos_q=None, pos_k=None):
    """Eager GQA attention (spec 1.5; cross-attention when pos_q is None: no RoPE, spec 2.3).
    xq [B, Tq, d], xkv [B, Tk, d_kv], vis [B, Tq, Tk] bool -> [B, Tq, d]."""
    B, Tq, _ = xq.shape
    Tk = xkv.shape[1]
    H, K, h = s.num_attention_heads, s.num_key_value_heads, s.head_dim
    q = (xq @ P[prefix + ".q_proj.weight"].t()).view(B, Tq, H, h).transpose(1, 2)
    k = (xkv @ P[prefix + ".k_proj.weight"].t()).view(B, Tk, K, h).transpose(1, 2)
    v = (xkv @ P[prefix + ".v_proj.weight"].t()).view(B, Tk, K, h).transpose(1, 2)
    if pos_q is not None:
        q = rope(q, pos_q, s.rope_theta)
        k = rope(k, pos_k, s.rope_theta)
    G = H // K
    if G > 1:                                     # query head n uses KV head n // G
        k = k.repeat_interleave(G, dim=1)
        v = v.repeat_interleave(G, dim=1)
    sc = (q @ k.transpose(-1, -2)) * (s.query_pre_attn_scalar ** -0.5)
    sc = softcap(sc, s.attn_logit_softcapping)    # cap before the mask
    vis4 = vis[:, None, :, :]
    anyv = vis4.any(-1, keepdim=True)
    sc = sc.masked_fill(~vis4, float("-inf")).masked_fill(~anyv, 0.0)
    p = torch.softmax(sc, dim=-1) * anyv.to(sc.dtype)   # rows without visible key output 0
    o = (p @ v).transpose(1, 2).reshape(B, Tq, H * h)
    return o @ P[prefix + ".o_proj.weight"].t()


def mlp(P, prefix, u):
    g = u @ P[prefix + ".gate_proj.weight"].t()
    up = u @ P[prefix + ".up_proj.weight"].t()
    return (gelu_tanh(g) * up) @ P[prefix + ".down_proj.weight"].t()


def _stack(P, cfg, s, pre, x, pos, self_vis_full, self_vis_slide, enc_out=None, cross_vis=None,
           gemma2=False):
    eps = s.rms_norm_eps
    for i in range(s.num_hidden_layers):
        p = "%s.layers.%d" % (pre, i)
        vis = self_vis_slide if s.layer_sliding[i] else self_vis_full
        n_in, n_post = (("input_layernorm", "post_attention_layernorm") if gemma2
                        else ("pre_self_attn_layernorm", "post_self_attn_layernorm"))
        u = rms_norm(x, P["%s.%s.weight" % (p, n_in)], eps)
        a = attention(P, p + ".self_attn", s, u, u, vis, pos, pos)
        x = x + rms_norm(a, P["%s.%s.weight" % (p, n_post)], eps)
        if enc_out is not None:
            u = rms_norm(x, P[p + ".pre_cross_attn_layernorm.weight"], eps)
            a = attention(P, p + ".cross_attn", s, u, enc_out, cross_vis)
            x = x + rms_norm(a, P[p + ".post_cross_attn_layernorm.weight"], eps)
        u = rms_norm(x, P[p + ".pre_feedforward_layernorm.weight"], eps)
        x = x + rms_norm(mlp(P, p + ".mlp", u), P[p + ".post_feedforward_layernorm.weight"], eps)
    return x


def encode(P, cfg, b):
    """T5Gemma encoder output (after encoder.norm), [B, Te, d_enc] (spec 2.2)."""
    s = cfg.enc
    m, seg = b["enc_mask"], b.get("enc_seg")
    causal = bool(cfg.encoder_causal)
    vf = visibility(m, m, causal, None, seg, seg)
    vs = visibility(m, m, causal, s.sliding_window, seg, seg)
    E = P["model.encoder.embed_tokens.weight"]
    x = E[b["enc_ids"]] * embed_scale(s.hidden_size, cfg.embed_scale_bf16)
    x = _stack(P, cfg, s, "model.encoder", x, b["enc_pos"], vf, vs)
    return rms_norm(x, P["model.encoder.norm.weight"], s.rms_norm_eps)


def forward(P, cfg, b):
    """Capped logits [B, Td, V] (spec 1.6 / 2.4)."""
    s = cfg.dec
    m, seg = b["dec_mask"], b.get("dec_seg")
    vf = visibility(m, m, True, None, seg, seg)
    vs = visibility(m, m, True, s.sliding_window, seg, seg)
    if cfg.kind == "gemma2":
        E = P["model.embed_tokens.weight"]
        x = E[b["dec_ids"]] * embed_scale(s.hidden_size, cfg.embed_scale_bf16)
        x = _stack(P, cfg, s, "model", x, b["dec_pos"], vf, vs, gemma2=True)
        x = rms_norm(x, P["model.norm.weight"], s.rms_norm_eps)
    else:
        enc_out = encode(P, cfg, b)
        cv = visibility(m, b["enc_mask"], False, None, seg, b.get("enc_seg"))
        E = P["model.decoder.embed_tokens.weight"]
        x = E[b["dec_ids"]] * embed_scale(s.hidden_size, cfg.embed_scale_bf16)
        x = _stack(P, cfg, s, "model.decoder", x, b["dec_pos"], vf, vs, enc_out, cv)
        x = rms_norm(x, P["model.decoder.norm.weight"], s.rms_norm_eps)
    return softcap(x @ E.t(), s.final_logit_softcapping)


def loss_fn(logits, b):
    """Summed token cross-entropy over labels != -100, divided by loss_norm or the token count."""
    lab = b["labels"]
    keep = lab != -100
    lse = torch.logsumexp(logits, dim=-1)
    tgt = logits.gather(-1, lab.clamp(min=0)[..., None])[..., 0]
    tot = ((lse - tgt) * keep.to(logits.dtype)).sum()
    if "loss_norm" in b:
        return tot / b["loss_norm"]
    return tot / max(float(keep.sum().item()), 1.0)   # no target token: loss 0


def run(P, cfg, b, grads=True):
    """loss, logits and (if grads) {name: grad} for leaf tensors P."""
    for t in P.values():
        t.grad = None
    logits = forward(P, cfg, b)
    loss = loss_fn(logits, b)
    g = None
    if grads:
        loss.backward()
        g = {n: (t.grad if t.grad is not None else torch.zeros_like(t)) for n, t in P.items()}
    return loss.detach(), logits.detach(), g


# ----------------------------------------------------------------------------------------------
# Random checkpoints and batches
# ----------------------------------------------------------------------------------------------

def random_params(cfg, gen, embed_std=0.5, qk_std=0.2, w_std=0.1, norm_std=0.3, dtype=torch.float32):
    """Random weights giving O(1) activations with attention scores of a few units (so the 50
    soft-cap changes them by ~1e-3 relative) and logits of several units (the 30 cap matters)."""
    P = {}
    for name, shape in param_shapes(cfg):
        if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
            std = norm_std
        elif "embed_tokens" in name:
            std = embed_std
        elif name.endswith("q_proj.weight") or name.endswith("k_proj.weight"):
            std = qk_std
        else:
            std = w_std
        P[name] = (torch.randn(shape, generator=gen, dtype=torch.float64) * std).to(dtype)
    return P


def random_batch(cfg, gen, B, Te, Td, pad=True):
    """Right-padded random batch: row 0 full length, other rows padded to random lengths
    (at least 1 real token); labels -100 on pads and on one real position of row 0."""
    out = {}
    def lengths(T):
        n = [T] + [int(torch.randint(max(1, T // 2), T + 1, (1,), generator=gen)) for _ in range(B - 1)]
        if pad and B > 1 and T > 1 and all(x == T for x in n):
            n[-1] = T - 1
        return n if pad else [T] * B
    def side(prefix, T, V):
        n = lengths(T)
        ids = torch.randint(3, V, (B, T), generator=gen) if V > 3 else torch.randint(0, V, (B, T), generator=gen)
        mask = torch.zeros(B, T, dtype=torch.int32)
        for r in range(B):
            mask[r, : n[r]] = 1
        ids = ids * mask  # pad id 0
        out[prefix + "_ids"] = ids.int().numpy()
        out[prefix + "_mask"] = mask.numpy()
        out[prefix + "_pos"] = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy()
        return mask
    if cfg.kind == "t5gemma":
        side("enc", Te, cfg.enc.vocab_size)
    m = side("dec", Td, cfg.dec.vocab_size)
    lab = torch.randint(0, cfg.dec.vocab_size, (B, Td), generator=gen)
    lab[m == 0] = -100
    lab[0, int(torch.randint(0, Td, (1,), generator=gen))] = -100
    out["labels"] = lab.int().numpy()
    return out


# ----------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------

def compare_tensor(a, b, rtol, atol_frac):
    """(ok, max_abs, max_rel, ratio, scale) comparing candidate a with reference b (float64 arrays)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    scale = float(np.abs(b).max()) if b.size else 0.0
    atol = atol_frac * scale if scale > 0 else 1e-30
    diff = np.abs(a - b)
    if not np.isfinite(a).all():
        return False, float("inf"), float("inf"), float("inf"), scale
    bound = atol + rtol * np.abs(b)
    ratio = float((diff / bound).max()) if b.size else 0.0
    big = np.abs(b) >= 0.01 * scale
    max_rel = float((diff[big] / np.abs(b[big])).max()) if big.any() and scale > 0 else 0.0
    return ratio <= 1.0, float(diff.max()) if b.size else 0.0, max_rel, ratio, scale


def compare_outputs(ref, cand, rtol, atol_frac, logit_rows=None, quiet=False, out=None, only=None):
    """ref, cand: dicts name -> array (outputs.safetensors contents). logit_rows: optional bool
    [B, Td] restricting the logits comparison. only: optional regular expression; gradients of
    other parameters are neither required nor compared. Prints one line per tensor (only
    failures when quiet) to out (default stdout). Returns the number of failures."""
    out = sys.stdout if out is None else out
    fails = 0
    if only:
        rx = re.compile(only)
        keep = lambda n: not n.startswith("grad/") or rx.search(n[5:]) is not None  # noqa: E731
        ref = {n: v for n, v in ref.items() if keep(n)}
        cand = {n: v for n, v in cand.items() if keep(n)}
    names = ["loss", "logits"] + sorted(n for n in ref if n.startswith("grad/"))
    for n in sorted(cand):
        if n not in ref:
            print("FAIL %s: unexpected tensor in the candidate outputs" % n, file=out)
            fails += 1
    if not quiet:
        print("%-64s %11s %11s %9s %11s  %s" % ("tensor", "max_abs", "max_rel", "ratio", "scale", "result"), file=out)
    for n in names:
        if n not in ref:
            continue
        if n not in cand:
            print("%-64s missing from the candidate outputs  FAIL" % n, file=out)
            fails += 1
            continue
        a, b = np.asarray(cand[n], np.float64), np.asarray(ref[n], np.float64)
        if a.size == b.size == 1:
            a, b = a.reshape(1), b.reshape(1)
        if a.shape != b.shape:
            print("%-64s shape %s, expected %s  FAIL" % (n, list(a.shape), list(b.shape)), file=out)
            fails += 1
            continue
        if n == "logits" and logit_rows is not None:
            a, b = a[logit_rows], b[logit_rows]
        ok, mab, mre, ratio, scale = compare_tensor(a, b, rtol, atol_frac)
        fails += 0 if ok else 1
        if not quiet or not ok:
            print("%-64s %11.3e %11.3e %9.3g %11.3e  %s" % (n, mab, mre, ratio, scale, "ok" if ok else "FAIL"), file=out)
    return fails


def outputs_dict(loss, logits, grads, out_dtype="F32"):
    npd = np.float32 if out_dtype == "F32" else np.float64
    d = {"loss": loss.reshape(1).double().numpy().astype(npd),
         "logits": logits.double().numpy().astype(npd)}
    for n, g in grads.items():
        d["grad/" + n] = g.double().numpy().astype(npd)
    return d


# ----------------------------------------------------------------------------------------------
# Benchmark twin
# ----------------------------------------------------------------------------------------------

def bench(cfg, B, Te, Td, threads, steps, warmup, lr, seed, name):
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    P = {}
    for n, shape in param_shapes(cfg):
        if n.endswith("norm.weight"):
            t = torch.zeros(shape, dtype=torch.float32)
        else:
            t = torch.randn(shape, generator=gen, dtype=torch.float32) * cfg.dec.initializer_range
        P[n] = t.requires_grad_(True)
    nparams = sum(t.numel() for t in P.values())
    opt = torch.optim.AdamW(list(P.values()), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    raw = random_batch(cfg, gen, B, Te, Td, pad=False)
    b = make_batch(raw, cfg, "bench batch")
    times, fb = [], []
    for it in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(forward(P, cfg, b), b)
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        dt = time.perf_counter() - t0
        if it >= warmup:
            times.append(dt)
            fb.append(t1 - t0)
    step_s = float(np.mean(times))
    enc_tok = B * Te if cfg.kind == "t5gemma" else 0
    dec_tok = B * Td
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"impl": "pytorch-eager", "torch": torch.__version__, "model": name, "kind": cfg.kind,
            "params": nparams, "batch": B, "enc_len": Te if cfg.kind == "t5gemma" else 0, "dec_len": Td,
            "threads": threads, "steps": steps, "warmup": warmup, "dtype": "float32",
            "step_s": step_s, "step_s_min": float(np.min(times)), "fwd_bwd_s": float(np.mean(fb)),
            "optimizer_s": step_s - float(np.mean(fb)),
            "tokens_per_s": (enc_tok + dec_tok) / step_s, "dec_tokens_per_s": dec_tok / step_s,
            "loss": float(loss.item()), "peak_rss_mb": rss}


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _dtype(s):
    return {"float64": torch.float64, "float32": torch.float32}[s]


def cmd_random(a):
    cfg = load_config(a.config)
    gen = torch.Generator().manual_seed(a.seed)
    P = random_params(cfg, gen, a.embed_std, a.qk_std, a.w_std, a.norm_std)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json.tmp"), "w") as f:
        json.dump(cfg.raw, f, indent=2)
    os.replace(os.path.join(a.out, "config.json.tmp"), os.path.join(a.out, "config.json"))
    tensors = {n: (t.numpy(), a.dtype) for n, t in P.items()}
    for f in os.listdir(a.out):
        if f.startswith("model") and (f.endswith(".safetensors") or f.endswith(".index.json")):
            os.remove(os.path.join(a.out, f))
    st.save_dir(tensors, a.out, a.shard_bytes, metadata={"format": "pt"})
    Te = a.enc_len if a.enc_len else a.dec_len
    batch = random_batch(cfg, gen, a.batch, Te, a.dec_len, pad=not a.no_pad)
    st.save_file(batch, os.path.join(a.out, "batch.safetensors"))
    print("wrote %s/config.json, model weights (%s), batch.safetensors (B=%d%s, Td=%d)"
          % (a.out, a.dtype, a.batch, (", Te=%d" % Te) if cfg.kind == "t5gemma" else "", a.dec_len))
    return 0


def _reference(a, dtype):
    cfg, P = load_checkpoint(a.ckpt, dtype)
    b = load_batch(a.batch, cfg)
    loss, logits, g = run(P, cfg, b)
    return cfg, b, loss, logits, g


def cmd_dump(a):
    _, _, loss, logits, g = _reference(a, _dtype(a.dtype))
    st.save_file(outputs_dict(loss, logits, g, a.out_dtype), a.out)
    print("loss %.10g; wrote %s (%d gradients)" % (loss.item(), a.out, len(g)))
    return 0


def cmd_check(a):
    cfg, b, loss, logits, g = _reference(a, torch.float64)
    ref = outputs_dict(loss, logits, g, "F64")
    try:
        cand = st.load_file(a.outputs)
    except (OSError, st.SafetensorsError) as e:
        raise RefError("%s: %s" % (a.outputs, e))
    rows = b["dec_mask"].numpy() if a.real_logits_only else None
    fails = compare_outputs(ref, cand, a.rtol, a.atol_frac, rows, a.quiet, only=a.only)
    print("check %s: reference loss %.10g, candidate %s; %d tensors failed (rtol %g, atol %g x scale)"
          % ("PASSED" if fails == 0 else "FAILED", loss.item(),
             ("%.10g" % float(np.asarray(cand["loss"]).reshape(-1)[0])) if "loss" in cand else "missing",
             fails, a.rtol, a.atol_frac))
    return 0 if fails == 0 else 1


def cmd_compare(a):
    try:
        ref, cand = st.load_file(a.ref), st.load_file(a.outputs)
    except (OSError, st.SafetensorsError) as e:
        raise RefError(str(e))
    fails = compare_outputs(ref, cand, a.rtol, a.atol_frac, None, a.quiet, only=a.only)
    print("compare %s: %d tensors failed" % ("PASSED" if fails == 0 else "FAILED", fails))
    return 0 if fails == 0 else 1


def cmd_bench(a):
    cfg = load_config(a.config)
    r = bench(cfg, a.batch, a.enc_len, a.dec_len, a.threads, a.steps, a.warmup, a.lr, a.seed,
              os.path.splitext(os.path.basename(resolve_config_path(a.config)))[0]
              if not os.path.isdir(a.config) else os.path.basename(os.path.normpath(a.config)))
    print(json.dumps(r))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("random", help="tiny random checkpoint + batch")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--enc-len", type=int, default=12)
    p.add_argument("--dec-len", type=int, default=11)
    p.add_argument("--dtype", choices=["F32", "BF16", "F16"], default="F32")
    p.add_argument("--shard-bytes", type=int, default=None)
    p.add_argument("--embed-std", type=float, default=0.5)
    p.add_argument("--qk-std", type=float, default=0.2)
    p.add_argument("--w-std", type=float, default=0.1)
    p.add_argument("--norm-std", type=float, default=0.3)
    p.add_argument("--no-pad", action="store_true")
    p.set_defaults(fn=cmd_random)
    for nm, fn in (("dump", cmd_dump), ("check", cmd_check)):
        p = sub.add_parser(nm)
        p.add_argument("--ckpt", required=True)
        p.add_argument("--batch", required=True)
        if nm == "dump":
            p.add_argument("--out", required=True)
            p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
            p.add_argument("--out-dtype", choices=["F32", "F64"], default="F32")
        else:
            p.add_argument("--outputs", required=True)
            p.add_argument("--rtol", type=float, default=1e-4)
            p.add_argument("--atol-frac", type=float, default=3e-5)
            p.add_argument("--real-logits-only", action="store_true")
            p.add_argument("--only", default=None, help="regex: compare only these parameters' gradients")
            p.add_argument("--quiet", action="store_true")
        p.set_defaults(fn=fn)
    p = sub.add_parser("compare")
    p.add_argument("--ref", required=True)
    p.add_argument("--outputs", required=True)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol-frac", type=float, default=3e-5)
    p.add_argument("--only", default=None, help="regex: compare only these parameters' gradients")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("bench")
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--enc-len", type=int, default=256)
    p.add_argument("--dec-len", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_bench)
    a = ap.parse_args(argv)
    try:
        return a.fn(a)
    except RefError as e:
        print("t5gemma_ref: error: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
