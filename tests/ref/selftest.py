#!/usr/bin/python3
"""selftest.py: self-checks of the PyTorch reference (tests/ref/t5gemma_ref.py) and of
safetensors_py.py; run by tests/t_ref_selfcheck.sh. Prints "PASS name" / "FAIL name: why".

The checks are behavioural (invariances that HF/Flax semantics imply, spec 1.5, 2.2, 2.3, 6),
comparisons with independent torch built-ins (tanh GELU, cross-entropy), finite differences
(torch.autograd.gradcheck in float64), and CLI round trips (random -> dump -> check).
Tiny configs come from configs/models/tiny-*.json when present, else equivalent inline copies.
"""
import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import tempfile
import traceback

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import safetensors_py as st  # noqa: E402
import t5gemma_ref as R  # noqa: E402

REF = os.path.join(HERE, "t5gemma_ref.py")
torch.set_num_threads(1)

_MOD = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "query_pre_attn_scalar": 16,
        "sliding_window": 8, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh"}
INLINE = {
    "tiny-gemma2": dict(_MOD, model_type="gemma2"),
    "tiny-t5gemma": {"model_type": "t5gemma", "vocab_size": 512, "encoder": dict(_MOD, is_decoder=False),
                     "decoder": dict(_MOD, is_decoder=True, cross_attention_hidden_size=64)},
    "tiny-t5gemma-unequal": {"model_type": "t5gemma", "vocab_size": 512,
                             "encoder": dict(_MOD, hidden_size=96, num_hidden_layers=6, is_decoder=False),
                             "decoder": dict(_MOD, is_decoder=True, cross_attention_hidden_size=96)},
}
# Very small dims for finite-difference checks.
_MICRO = {"vocab_size": 13, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2,
          "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4, "query_pre_attn_scalar": 4,
          "sliding_window": 3, "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0}


def tiny(name):
    p = os.path.join(R.REPO, "configs", "models", name + ".json")
    if os.path.isfile(p):
        return R.load_config(p)
    return R.ModelCfg(copy.deepcopy(INLINE[name]), "inline " + name)


def cfg_from(d):
    return R.ModelCfg(copy.deepcopy(d), "test config")


def micro(kind, **kw):
    if kind == "gemma2":
        return cfg_from(dict(_MICRO, model_type="gemma2", **kw))
    enc = dict(_MICRO, hidden_size=10, num_key_value_heads=2)   # unequal widths, MHA encoder
    return cfg_from(dict({"model_type": "t5gemma", "encoder": enc,
                          "decoder": dict(_MICRO, cross_attention_hidden_size=10)}, **kw))


def params64(cfg, seed, **kw):
    g = torch.Generator().manual_seed(seed)
    return {n: t.double().requires_grad_(True) for n, t in R.random_params(cfg, g, **kw).items()}


def batch(cfg, seed, B=3, Te=12, Td=11, pad=True):
    g = torch.Generator().manual_seed(seed + 1000)
    return R.make_batch(R.random_batch(cfg, g, B, Te, Td, pad), cfg)


def logits(P, cfg, b):
    with torch.no_grad():
        return R.forward(P, cfg, b)


def close(a, b, tol=1e-10):
    d = (a - b).abs().max().item() if a.numel() else 0.0
    return d <= tol * max(1.0, b.abs().max().item()), d


TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


# ------------------------------------------------------------------------------- safetensors

@test
def safetensors_roundtrip():
    rng = np.random.default_rng(0)
    t = {"f32": rng.standard_normal((3, 5)).astype(np.float32), "f64": rng.standard_normal(7),
         "f16": rng.standard_normal((2, 2)).astype(np.float16), "i32": np.arange(-5, 7, dtype=np.int32).reshape(3, 4),
         "u8": np.arange(9, dtype=np.uint8), "scalar": np.array(3.5, np.float32),
         "bf16": (np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, 3e38, 1e-30], np.float32), "BF16")}
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x.safetensors")
        st.save_file(t, p, {"k": "v"})
        r = st.load_file(p)
        dts = st.load_file_dtypes(p)
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            hdr = json.loads(f.read(n))
        assert n % 8 == 0 and hdr["__metadata__"] == {"k": "v"}, "header padding / metadata"
        for k, v in t.items():
            if k == "bf16":
                continue
            assert r[k].dtype == v.dtype and r[k].shape == v.shape and np.array_equal(r[k], v), k
        assert dts["bf16"] == "BF16" and dts["i32"] == "I32" and dts["u8"] == "U8"
        # round to nearest even: 1+2^-8 is a tie -> 1.0; 1+3*2^-8 is a tie -> 1+2^-6 (even mantissa)
        exp = np.array([1.0, 1.0, 1 + 2 ** -6, -2.5], np.float32)
        assert np.array_equal(r["bf16"][:4], exp), "bf16 rounding %s" % r["bf16"]
        assert abs(r["bf16"][4] - 3e38) / 3e38 < 2 ** -8 and abs(r["bf16"][5] - 1e-30) / 1e-30 < 2 ** -8
        x = (rng.standard_normal(4096) * np.exp(rng.uniform(-20, 20, 4096))).astype(np.float32)
        tb = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        assert np.array_equal(st.f32_to_bf16_bits(x), tb), "bf16 rounding differs from torch's"
        # truncated file and bad dtype give errors naming the file
        raw = open(p, "rb").read()
        open(p, "wb").write(raw[:-3])
        try:
            st.load_file(p)
            raise AssertionError("truncated file accepted")
        except st.SafetensorsError as e:
            assert p in str(e), str(e)


@test
def sharded_bf16_checkpoint_loads():
    cfg = tiny("tiny-t5gemma")
    with tempfile.TemporaryDirectory() as d:
        a, b = os.path.join(d, "a"), os.path.join(d, "b")
        for out, extra in ((a, []), (b, ["--dtype", "BF16", "--shard-bytes", "60000"])):
            rc = _run(["random", "--config", _cfg_arg(d, "tiny-t5gemma"), "--out", out, "--seed", "5"] + extra)
            assert rc.returncode == 0, rc.stderr
        assert os.path.isfile(os.path.join(b, "model.safetensors.index.json"))
        nshards = len([f for f in os.listdir(b) if f.endswith(".safetensors") and f.startswith("model-")])
        assert nshards > 1, "expected several shards, found %d" % nshards
        _, Pa = R.load_checkpoint(a, torch.float64, False)
        _, Pb = R.load_checkpoint(b, torch.float64, False)
        for n in Pa:
            ra = st.bf16_bits_to_f32(st.f32_to_bf16_bits(Pa[n].numpy().astype(np.float32)))
            assert np.array_equal(ra.astype(np.float64), Pb[n].numpy()), n
        assert set(Pa) == set(n for n, _ in R.param_shapes(cfg))


def _write_cfg(d, name):
    p = os.path.join(d, name + ".json")
    with open(p, "w") as f:
        json.dump(INLINE[name], f)
    return p


# ------------------------------------------------------------------------------- elementary math

@test
def gelu_and_loss_match_torch_builtins():
    z = torch.linspace(-6, 6, 101, dtype=torch.float64)
    ok, d = close(R.gelu_tanh(z), torch.nn.functional.gelu(z, approximate="tanh"), 1e-14)
    assert ok, "gelu_tanh differs from torch gelu(approximate='tanh') by %g" % d
    ok_erf, _ = close(R.gelu_tanh(z), torch.nn.functional.gelu(z), 1e-6)
    assert not ok_erf, "tanh GELU should differ from erf GELU"
    g = torch.Generator().manual_seed(0)
    lg = torch.randn(2, 5, 7, generator=g, dtype=torch.float64) * 3
    lab = torch.randint(0, 7, (2, 5), generator=g)
    lab[0, 1] = -100
    lab[1, 4] = -100
    ref = torch.nn.functional.cross_entropy(lg.reshape(-1, 7), lab.reshape(-1), ignore_index=-100, reduction="mean")
    got = R.loss_fn(lg, {"labels": lab})
    assert abs(got.item() - ref.item()) < 1e-12, (got.item(), ref.item())
    got2 = R.loss_fn(lg, {"labels": lab, "loss_norm": 3.0})
    assert abs(got2.item() - ref.item() * 8 / 3.0) < 1e-12


@test
def rope_half_split_and_relative():
    h = 8
    theta = 10000.0
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 1, h, generator=g, dtype=torch.float64)
    p = 3
    out = R.rope(x, torch.tensor([[p]]), theta)[0, 0, 0]
    xx = x[0, 0, 0]
    for i in range(h // 2):          # pair (i, i + h/2) rotated by angle p * theta^(-2i/h)
        a = p * theta ** (-2.0 * i / h)
        e0 = xx[i] * np.cos(a) - xx[i + h // 2] * np.sin(a)
        e1 = xx[i + h // 2] * np.cos(a) + xx[i] * np.sin(a)
        assert abs(out[i] - e0) < 1e-12 and abs(out[i + h // 2] - e1) < 1e-12, "pair %d" % i
    q = torch.randn(1, 1, 1, h, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, 1, h, generator=g, dtype=torch.float64)
    d1 = (R.rope(q, torch.tensor([[7]]), theta) * R.rope(k, torch.tensor([[2]]), theta)).sum()
    d2 = (R.rope(q, torch.tensor([[15]]), theta) * R.rope(k, torch.tensor([[10]]), theta)).sum()
    assert abs(d1 - d2) < 1e-11, "scores must depend on relative position only"


@test
def embed_scale_values():
    # spec 1.6 table: bf16 values of sqrt(d)
    for d, bf in ((512, 22.625), (768, 27.75), (1152, 34.0), (2304, 48.0), (3584, 59.75), (4608, 68.0)):
        assert R.embed_scale(d, True) == bf, (d, R.embed_scale(d, True))
    assert R.embed_scale(768, False) == float(np.float32(np.sqrt(768.0)))
    d = copy.deepcopy(INLINE["tiny-gemma2"])
    d["hidden_size"] = 48                       # sqrt(48) = 6.928..., bf16 6.9375
    d["t5gemma_c"] = {"embed_scale_bf16": 1}
    c1, c0 = cfg_from(d), cfg_from(dict(d, t5gemma_c={}))
    P = params64(c0, 3)
    b = batch(c0, 3)
    assert not close(logits(P, c1, b), logits(P, c0, b), 1e-6)[0], "embed_scale_bf16 flag has no effect"


# ------------------------------------------------------------------------------- gradients

def _gradcheck(cfg, seed, names_filter, B=2, Te=6, Td=5, segs=False):
    """Autograd gradients of the float64 model vs central differences: full Jacobian
    (torch.autograd.gradcheck) for the tensors selected by names_filter, and gradcheck's
    fast mode (random directional derivative per tensor) for every parameter."""
    P = params64(cfg, seed, embed_std=0.7, qk_std=0.6, w_std=0.4, norm_std=0.3)
    b = batch(cfg, seed, B, Te, Td)
    if segs:
        for side, T in (("enc", Te), ("dec", Td)):
            if side + "_ids" in b:
                s = torch.ones(B, T, dtype=torch.long)
                s[:, T // 2:] = 2
                b[side + "_seg"] = s
    for names, fast in (([n for n in P if names_filter(n)], False), (list(P), True)):
        assert names, "no parameters selected"
        def f(*ts):
            Q = dict(P)
            Q.update(zip(names, ts))
            return R.loss_fn(R.forward(Q, cfg, b), b)
        inputs = tuple(P[n].detach().clone().requires_grad_(True) for n in names)
        torch.manual_seed(seed)
        ok = torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, raise_exception=False,
                                      fast_mode=fast)
        assert ok, "gradcheck (fast_mode=%s) failed for %s" % (fast, names)
    # run() (used by dump/check) returns the same gradients as a central difference on the
    # largest-gradient element of every tensor
    _, _, g = R.run(P, cfg, b)
    for n in P:
        eps = 1e-6
        i = int(torch.argmax(g[n].abs()))
        vals = []
        for sgn in (1, -1):
            Q = dict(P)
            t = P[n].detach().clone()
            t.view(-1)[i] += sgn * eps
            Q[n] = t
            with torch.no_grad():
                vals.append(R.loss_fn(R.forward(Q, cfg, b), b).item())
        num = (vals[0] - vals[1]) / (2 * eps)
        got = g[n].view(-1)[i].item()
        assert abs(num - got) <= 1e-6 * max(1.0, abs(num)), (n, num, got)


def _pick(n):
    """Tensors for the full-Jacobian check: one of each projection kind and shape, every norm
    of the last layer, final norms."""
    keys = ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "encoder.layers.1.self_attn.k_proj",
            "layers.1.mlp.down_proj", "layers.1.cross_attn.k_proj", "model.norm", "coder.norm")
    return (any(k in n for k in keys) and "encoder.layers.1.mlp" not in n) or ("layers.1." in n and "layernorm" in n)


@test
def gradcheck_gemma2_micro():
    _gradcheck(micro("gemma2"), 11, _pick, Td=6)


@test
def gradcheck_t5gemma_micro_unequal_widths():
    _gradcheck(micro("t5gemma"), 12, _pick, Te=7, Td=5)


@test
def gradcheck_t5gemma_micro_segments_causal_encoder():
    _gradcheck(micro("t5gemma", t5gemma_c={"encoder_causal": 1}), 13,
               lambda n: "layers.1.p" in n or "layers.0.cross_attn.v_proj" in n, Te=6, Td=6, segs=True)


# ------------------------------------------------------------------------------- invariances

@test
def encoder_padded_row_equals_unpadded():
    for name in ("tiny-t5gemma", "tiny-t5gemma-unequal"):
        cfg = tiny(name)
        P = params64(cfg, 21)
        b = batch(cfg, 21, B=3, Te=12, Td=11)
        with torch.no_grad():
            enc = R.encode(P, cfg, b)
            full = R.forward(P, cfg, b)
        for r in range(3):
            n, m = int(b["enc_mask"][r].sum()), int(b["dec_mask"][r].sum())
            one = {"enc_ids": b["enc_ids"][r:r + 1, :n], "enc_mask": b["enc_mask"][r:r + 1, :n],
                   "enc_pos": b["enc_pos"][r:r + 1, :n], "dec_ids": b["dec_ids"][r:r + 1, :m],
                   "dec_mask": b["dec_mask"][r:r + 1, :m], "dec_pos": b["dec_pos"][r:r + 1, :m],
                   "labels": b["labels"][r:r + 1, :m]}
            with torch.no_grad():
                e1 = R.encode(P, cfg, one)
                z1 = R.forward(P, cfg, one)
            ok, d = close(enc[r, :n], e1[0], 1e-11)
            assert ok, "%s row %d (len %d of 12): encoder output differs by %g" % (name, r, n, d)
            ok, d = close(full[r, :m], z1[0], 1e-11)
            assert ok, "%s row %d: decoder logits differ by %g" % (name, r, d)
        assert any(int(b["enc_mask"][r].sum()) < 12 for r in range(3)), "batch has no padded row"


@test
def wide_window_equals_full_layers():
    for name in ("tiny-gemma2", "tiny-t5gemma"):
        cfg = tiny(name)
        P = params64(cfg, 22)
        b = batch(cfg, 22, Te=12, Td=11)
        wide, full = copy.deepcopy(cfg), copy.deepcopy(cfg)
        for s in (x for x in (wide.enc, wide.dec) if x):
            s.sliding_window = 12
        for s in (x for x in (full.enc, full.dec) if x):
            s.layer_sliding = [False] * s.num_hidden_layers
        ok, d = close(logits(P, wide, b), logits(P, full, b), 1e-12)
        assert ok, "%s: window 12 >= T differs from full attention by %g" % (name, d)
        ok, d = close(logits(P, cfg, b), logits(P, full, b), 1e-6)
        assert not ok, "%s: window 8 < T should change the logits (test not discriminative)" % name


@test
def gemma2_short_sequence_sliding_equals_full():
    cfg = tiny("tiny-gemma2")
    W = cfg.dec.sliding_window
    P = params64(cfg, 23)
    b = batch(cfg, 23, Td=W)
    full = copy.deepcopy(cfg)
    full.dec.layer_sliding = [False] * cfg.dec.num_hidden_layers
    alls = copy.deepcopy(cfg)
    alls.dec.layer_sliding = [True] * cfg.dec.num_hidden_layers
    z = logits(P, cfg, b)
    for other, what in ((full, "all full"), (alls, "all sliding")):
        ok, d = close(z, logits(P, other, b), 1e-12)
        assert ok, "T = W = %d: default layer types vs %s differ by %g" % (W, what, d)


@test
def window_reach_is_exact():
    """One-layer models: perturbing input token j changes output i iff j is visible from i:
    decoder i-W < j <= i, bidirectional encoder |i-j| < W (spec 1.5, 2.2)."""
    W, T = 3, 9
    for kind in ("gemma2", "encoder", "encoder_causal"):
        d = dict(_MICRO, num_hidden_layers=1, layer_types=["sliding_attention"], sliding_window=W)
        if kind == "gemma2":
            cfg = cfg_from(dict(d, model_type="gemma2"))
        else:
            cfg = cfg_from({"model_type": "t5gemma", "encoder": d, "decoder": dict(d),
                            "t5gemma_c": {"encoder_causal": int(kind == "encoder_causal")}})
        P = params64(cfg, 24)
        b = batch(cfg, 24, B=1, Te=T, Td=T, pad=False)
        side = "dec" if kind == "gemma2" else "enc"
        f = (lambda bb: logits(P, cfg, bb)[0]) if kind == "gemma2" else (lambda bb: R.encode(P, cfg, bb).detach()[0])
        base = f(b)
        for j in range(T):
            b2 = dict(b)
            ids = b[side + "_ids"].clone()
            ids[0, j] = (ids[0, j] + 5) % 13
            b2[side + "_ids"] = ids
            out = f(b2)
            for i in range(T):
                changed = (out[i] - base[i]).abs().max().item() > 1e-12
                if kind == "encoder":
                    vis = abs(i - j) < W
                else:
                    vis = i - W < j <= i
                assert changed == (i == j or vis), "%s: token %d -> output %d changed=%s, expected %s" % (
                    kind, j, i, changed, vis)


@test
def decoder_is_causal():
    for name in ("tiny-t5gemma", "tiny-gemma2"):
        cfg = tiny(name)
        P = params64(cfg, 25)
        b = batch(cfg, 25, Te=12, Td=11, pad=False)
        z = logits(P, cfg, b)
        for t in (0, 4, 9):
            b2 = dict(b)
            ids = b["dec_ids"].clone()
            ids[:, t + 1:] = torch.randint(3, 512, ids[:, t + 1:].shape, generator=torch.Generator().manual_seed(t))
            b2["dec_ids"] = ids
            z2 = logits(P, cfg, b2)
            ok, d = close(z[:, :t + 1], z2[:, :t + 1], 1e-12)
            assert ok, "%s: logits at <= %d changed by %g when later inputs changed" % (name, t, d)
            assert not close(z[:, t + 1:], z2[:, t + 1:], 1e-6)[0], "%s: later logits unchanged (not discriminative)" % name


@test
def encoder_pad_positions_ignored():
    for name in ("tiny-t5gemma", "tiny-t5gemma-unequal"):
        cfg = tiny(name)
        P = params64(cfg, 26)
        b = batch(cfg, 26, B=3, Te=12, Td=11)
        z = logits(P, cfg, b)
        pad = ~b["enc_mask"]
        assert pad.any()
        b2 = dict(b)
        ids = b["enc_ids"].clone()
        ids[pad] = torch.randint(3, 512, (int(pad.sum()),), generator=torch.Generator().manual_seed(1))
        b2["enc_ids"] = ids
        ok, d = close(z, logits(P, cfg, b2), 1e-12)
        assert ok, "%s: changing encoder pad tokens changed logits by %g" % (name, d)
        P2 = dict(P)
        E = P["model.encoder.embed_tokens.weight"].detach().clone()
        E[0] += 3.0                              # pad id 0 is used only on pad positions
        P2["model.encoder.embed_tokens.weight"] = E
        ok, d = close(z, logits(P2, cfg, b), 1e-12)
        assert ok, "%s: changing the pad embedding changed logits by %g" % (name, d)
        b3 = dict(b)
        ids = b["enc_ids"].clone()
        ids[0, 0] = (ids[0, 0] + 1) % 512
        b3["enc_ids"] = ids
        assert not close(z[0], logits(P, cfg, b3)[0], 1e-6)[0], "real encoder token has no effect"


@test
def encoder_bidirectional_unless_causal_flag():
    cfg = tiny("tiny-t5gemma")
    P = params64(cfg, 27)
    b = batch(cfg, 27, pad=False)
    b2 = dict(b)
    ids = b["enc_ids"].clone()
    ids[:, -1] = (ids[:, -1] + 7) % 512
    b2["enc_ids"] = ids
    with torch.no_grad():
        d = (R.encode(P, cfg, b)[:, :-1] - R.encode(P, cfg, b2)[:, :-1]).abs().max().item()
        assert d > 1e-6, "bidirectional encoder: last token does not influence earlier outputs"
        c = copy.deepcopy(cfg)
        c.encoder_causal = 1
        d = (R.encode(P, c, b)[:, :-1] - R.encode(P, c, b2)[:, :-1]).abs().max().item()
        assert d < 1e-13, "causal encoder: last token influences earlier outputs (%g)" % d


@test
def packed_segments_equal_separate_sequences():
    cfg = tiny("tiny-t5gemma")
    P = params64(cfg, 28)
    a = batch(cfg, 28, B=2, Te=5, Td=4, pad=False)
    # pack the two examples of `a` into one row, positions restart, plus a padded tail
    pk = {}
    for side, T in (("enc", 5), ("dec", 4)):
        ids = torch.cat([a[side + "_ids"][0], a[side + "_ids"][1], torch.zeros(2, dtype=torch.long)])[None]
        pk[side + "_ids"] = ids
        pk[side + "_mask"] = torch.cat([torch.ones(2 * T, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)])[None]
        pk[side + "_pos"] = torch.cat([torch.arange(T), torch.arange(T), torch.arange(2)])[None]
        pk[side + "_seg"] = torch.tensor([[1] * T + [2] * T + [0, 0]])
    pk["labels"] = torch.cat([a["labels"][0], a["labels"][1], torch.tensor([-100, -100])])[None]
    z = logits(P, cfg, a)
    zp = logits(P, cfg, pk)[0]
    ok, d = close(torch.cat([z[0], z[1]]), zp[:8], 1e-11)
    assert ok, "packed segments differ from separate rows by %g" % d


@test
def gqa_head_grouping():
    """Query head n uses KV head n // (H/K): an MHA copy whose KV rows are repeated gives the
    same logits as the GQA model (spec 1.5)."""
    cfg = tiny("tiny-gemma2")
    P = params64(cfg, 29)
    b = batch(cfg, 29)
    H, K, h = cfg.dec.num_attention_heads, cfg.dec.num_key_value_heads, cfg.dec.head_dim
    mha = copy.deepcopy(cfg)
    mha.dec.num_key_value_heads = H
    Q = dict(P)
    for n in P:
        if n.endswith("k_proj.weight") or n.endswith("v_proj.weight"):
            w = P[n].detach().view(K, h, -1)
            Q[n] = w.repeat_interleave(H // K, dim=0).reshape(H * h, -1)
    ok, d = close(logits(P, cfg, b), logits(Q, mha, b), 1e-12)
    assert ok, "GQA vs repeated-KV MHA differ by %g" % d


@test
def softcaps_and_windows_matter_in_random_checkpoints():
    """The random checkpoints used to test the C side must make the caps visible far above the
    check tolerance (1e-4 relative)."""
    for name in ("tiny-gemma2", "tiny-t5gemma"):
        cfg = tiny(name)
        P = params64(cfg, 30)
        b = batch(cfg, 30)
        z = logits(P, cfg, b)
        scale = z.abs().max().item()
        for what in ("attn", "final"):
            c = copy.deepcopy(cfg)
            for s in (x for x in (c.enc, c.dec) if x):
                setattr(s, "attn_logit_softcapping" if what == "attn" else "final_logit_softcapping", None)
            d = (logits(P, c, b) - z).abs().max().item() / scale
            assert d > 5e-4, "%s: removing the %s soft-cap changes logits by only %g relative" % (name, what, d)


# ------------------------------------------------------------------------------- CLI

class _Result:
    def __init__(self, rc, out, err):
        self.returncode, self.stdout, self.stderr = rc, out, err


def _run(args):
    """Run the CLI in-process (t5gemma_ref.main), capturing its output (saves the torch import
    of a subprocess; cli_bench_smoke runs the real script as a subprocess)."""
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = R.main(args)
    return _Result(rc, o.getvalue(), e.getvalue())


def _cfg_arg(d, name):
    return name if os.path.isfile(os.path.join(R.REPO, "configs", "models", name + ".json")) else _write_cfg(d, name)


@test
def cli_random_dump_check_roundtrip():
    with tempfile.TemporaryDirectory() as d:
        ck = os.path.join(d, "ck")
        r = _run(["random", "--config", _cfg_arg(d, "tiny-t5gemma"), "--out", ck, "--seed", "4"])
        assert r.returncode == 0, r.stderr
        bf = os.path.join(ck, "batch.safetensors")
        bt = st.load_file(bf)
        assert all(bt[k].dtype == np.int32 for k in bt), "batch tensors must be I32"
        assert (bt["labels"] == -100).any() and (bt["enc_mask"] == 0).any() and (bt["dec_mask"] == 0).any()
        o32, o64 = os.path.join(d, "o32.safetensors"), os.path.join(d, "o64.safetensors")
        r = _run(["dump", "--ckpt", ck, "--batch", bf, "--out", o32, "--dtype", "float32"])
        assert r.returncode == 0, r.stderr
        o = st.load_file(o32)
        cfg = R.load_config(ck)
        assert o["loss"].shape == (1,) and o["logits"].shape == (3, 11, 512) and o["logits"].dtype == np.float32
        assert set(k[5:] for k in o if k.startswith("grad/")) == set(n for n, _ in R.param_shapes(cfg))
        # a float32 computation passes the float64 check ...
        r = _run(["check", "--ckpt", ck, "--batch", bf, "--outputs", o32, "--quiet"])
        assert r.returncode == 0, "float32 reference fails the check:\n" + r.stdout + r.stderr
        # ... and a 1e-3 relative error in one gradient element, or a missing gradient, fails it
        bad = dict(o)
        g = bad["grad/model.decoder.layers.1.cross_attn.v_proj.weight"].copy()
        i = np.unravel_index(np.argmax(np.abs(g)), g.shape)
        g[i] *= 1.001
        bad["grad/model.decoder.layers.1.cross_attn.v_proj.weight"] = g
        bp = os.path.join(d, "bad.safetensors")
        st.save_file(bad, bp)
        r = _run(["check", "--ckpt", ck, "--batch", bf, "--outputs", bp, "--quiet"])
        assert r.returncode == 1 and "cross_attn.v_proj" in r.stdout, "perturbed gradient passed:\n" + r.stdout
        del bad["grad/model.encoder.norm.weight"]
        bad["grad/model.decoder.layers.1.cross_attn.v_proj.weight"] = o["grad/model.decoder.layers.1.cross_attn.v_proj.weight"]
        st.save_file(bad, bp)
        r = _run(["check", "--ckpt", ck, "--batch", bf, "--outputs", bp, "--quiet"])
        assert r.returncode == 1 and "encoder.norm" in r.stdout, "missing gradient passed"
        r = _run(["check", "--ckpt", ck, "--batch", bf, "--outputs", bp, "--quiet", "--only", "cross_attn"])
        assert r.returncode == 0, "--only cross_attn should ignore the missing encoder.norm gradient:\n" + r.stdout
        # compare mode between the float64 and float32 dumps
        r = _run(["dump", "--ckpt", ck, "--batch", bf, "--out", o64, "--out-dtype", "F64"])
        assert r.returncode == 0, r.stderr
        r = _run(["compare", "--ref", o64, "--outputs", o32, "--quiet"])
        assert r.returncode == 0, r.stdout
        # bad input: ids out of range -> exit 2 naming the file and tensor
        bt["dec_ids"][0, 0] = 512
        st.save_file(bt, bf)
        r = _run(["dump", "--ckpt", ck, "--batch", bf, "--out", o32])
        assert r.returncode == 2 and "dec_ids" in r.stderr and bf in r.stderr, r.stderr


@test
def cli_gemma2_check_and_bad_checkpoint():
    with tempfile.TemporaryDirectory() as d:
        ck = os.path.join(d, "ck")
        r = _run(["random", "--config", _cfg_arg(d, "tiny-gemma2"), "--out", ck, "--seed", "6", "--dec-len", "13"])
        assert r.returncode == 0, r.stderr
        bf, o = os.path.join(ck, "batch.safetensors"), os.path.join(d, "o.safetensors")
        assert "enc_ids" not in st.load_file(bf)
        r = _run(["dump", "--ckpt", ck, "--batch", bf, "--out", o, "--dtype", "float32"])
        assert r.returncode == 0, r.stderr
        r = _run(["check", "--ckpt", ck, "--batch", bf, "--outputs", o, "--real-logits-only", "--quiet"])
        assert r.returncode == 0, r.stdout + r.stderr
        w = st.load_file(os.path.join(ck, "model.safetensors"))
        w["model.layers.1.mlp.up_proj.weight"] = w["model.layers.1.mlp.up_proj.weight"][:, :-1]
        st.save_file(w, os.path.join(ck, "model.safetensors"))
        r = _run(["dump", "--ckpt", ck, "--batch", bf, "--out", o])
        assert r.returncode == 2 and "model.layers.1.mlp.up_proj.weight" in r.stderr and "shape" in r.stderr, r.stderr


@test
def cli_bench_smoke():
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(["/usr/bin/python3", REF, "bench", "--config", _cfg_arg(d, "tiny-t5gemma"), "--batch", "2",
                            "--enc-len", "16", "--dec-len", "8", "--threads", "1", "--steps", "2", "--warmup", "1"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        j = json.loads(r.stdout.strip().splitlines()[-1])
        assert j["tokens_per_s"] > 0 and j["peak_rss_mb"] > 10 and j["params"] > 0 and np.isfinite(j["loss"]), j
        assert abs(j["tokens_per_s"] - 2 * 24 / j["step_s"]) < 1e-6 * j["tokens_per_s"]


def main():
    only = sys.argv[1:]
    fails = 0
    for fn in TESTS:
        if only and fn.__name__ not in only:
            continue
        try:
            fn()
            print("PASS ref_%s" % fn.__name__, flush=True)
        except Exception as e:  # report and continue with the next test
            fails += 1
            msg = str(e).strip().replace("\n", " | ") or type(e).__name__
            print("FAIL ref_%s: %s" % (fn.__name__, msg[:600]), flush=True)
            traceback.print_exc(file=sys.stderr)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
