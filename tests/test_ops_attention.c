/* test_ops_attention.c: op_attention against an independent double-precision twin.
 *
 * The twin (twin_attention) is written straight from the math of spec 1.5 / ops.h: the full
 * [Tq, Tk] score matrix per (batch, head) in double, soft-cap, an explicit visibility function
 * (twin_visible) coded from the AttnMask definitions, softmax over the visible keys, and output 0
 * for a row without a visible key. It shares no code with model/ops_attention.c.
 *
 * Gradients: the scalar loss is L = Σ out ⊙ R for a fixed random R. The engine's backward is
 * seeded by writing R into the output gradient (tensor_grad) and replaying the tape in reverse;
 * its dq, dk, dv are compared with central differences of the twin's L (double, eps 1e-5).
 */
#include "tests/check.h"
#include "model/ops.h"
#include "model/tensor.h"
#include <stdint.h>

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static double urand(void) {   /* uniform in [-1, 1) (xorshift64*) */
  rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
  uint64_t x = rng_state * 0x2545F4914F6CDD1DULL;
  return (double)(x >> 11) / (double)(1ULL << 52) - 1.0;
}

typedef struct {
  int B, Tq, Tk, H, K, hd;
  AttnMask m;
  float scale, cap;
} Cfg;

typedef struct {
  float *q, *k, *v, *R;       /* inputs and the loss weights */
  size_t nq, nk, no;
} Data;

static void data_make(const Cfg *c, Data *d, double qamp, double kamp) {
  d->nq = (size_t)c->B * c->Tq * c->H * c->hd;
  d->nk = (size_t)c->B * c->Tk * c->K * c->hd;
  d->no = d->nq;
  d->q = malloc(sizeof(float) * d->nq); d->k = malloc(sizeof(float) * d->nk);
  d->v = malloc(sizeof(float) * d->nk); d->R = malloc(sizeof(float) * d->no);
  for (size_t i = 0; i < d->nq; i++) d->q[i] = (float)(qamp * urand());
  for (size_t i = 0; i < d->nk; i++) d->k[i] = (float)(kamp * urand());
  for (size_t i = 0; i < d->nk; i++) d->v[i] = (float)urand();
  for (size_t i = 0; i < d->no; i++) d->R[i] = (float)urand();
}
static void data_free(Data *d) { free(d->q); free(d->k); free(d->v); free(d->R); }

/* Visibility straight from the AttnMask documentation. */
static int twin_visible(const Cfg *c, int b, int i, int j) {
  const AttnMask *m = &c->m;
  if (m->query_valid && !m->query_valid[b * c->Tq + i]) return 0;
  if (m->key_valid && !m->key_valid[b * c->Tk + j]) return 0;
  if (m->q_seg && m->q_seg[b * c->Tq + i] != m->k_seg[b * c->Tk + j]) return 0;
  long qpos = m->q_pos0 + i, kpos = m->k_pos0 + j;
  if (m->causal && !(kpos <= qpos)) return 0;
  if (m->window > 0) {
    if (m->causal && !(qpos - m->window < kpos)) return 0;
    if (!m->causal && !(labs(qpos - kpos) < m->window)) return 0;
  }
  return 1;
}

/* out [B, Tq, H, hd] in double. */
static void twin_attention(const Cfg *c, const double *q, const double *k, const double *v, double *out) {
  const int G = c->H / c->K, hd = c->hd;
  double *s = malloc(sizeof(double) * c->Tk);
  for (int b = 0; b < c->B; b++)
    for (int n = 0; n < c->H; n++)
      for (int i = 0; i < c->Tq; i++) {
        const double *qi = q + (((size_t)b * c->Tq + i) * c->H + n) * hd;
        double *o = out + (((size_t)b * c->Tq + i) * c->H + n) * hd;
        double mx = -1e300;
        int any = 0;
        for (int j = 0; j < c->Tk; j++) {
          if (!twin_visible(c, b, i, j)) continue;
          const double *kj = k + (((size_t)b * c->Tk + j) * c->K + n / G) * hd;
          double dot = 0;
          for (int e = 0; e < hd; e++) dot += qi[e] * kj[e];
          dot *= c->scale;
          if (c->cap > 0) dot = c->cap * tanh(dot / c->cap);
          s[j] = dot;
          if (dot > mx) mx = dot;
          any = 1;
        }
        for (int e = 0; e < hd; e++) o[e] = 0;
        if (!any) continue;
        double z = 0;
        for (int j = 0; j < c->Tk; j++) if (twin_visible(c, b, i, j)) z += exp(s[j] - mx);
        for (int j = 0; j < c->Tk; j++) {
          if (!twin_visible(c, b, i, j)) continue;
          const double p = exp(s[j] - mx) / z;
          const double *vj = v + (((size_t)b * c->Tk + j) * c->K + n / G) * hd;
          for (int e = 0; e < hd; e++) o[e] += p * vj[e];
        }
      }
  free(s);
}

static double twin_loss(const Cfg *c, const double *q, const double *k, const double *v, const float *R, size_t no,
                        double *scratch) {
  twin_attention(c, q, k, v, scratch);
  double L = 0;
  for (size_t i = 0; i < no; i++) L += scratch[i] * R[i];
  return L;
}

static double *to_double(const float *x, size_t n) {
  double *d = malloc(sizeof(double) * n);
  for (size_t i = 0; i < n; i++) d[i] = x[i];
  return d;
}

/* Engine run: forward, then backward seeded with R (tape replay). Gradients of tensors that
 * require grad are copied to gq/gk/gv (NULL: that input is frozen). */
typedef struct { float *out, *gq, *gk, *gv; int n_nodes; } EngineOut;

static void engine_run(const Cfg *c, const Data *d, int rq, int rk, int rv, EngineOut *eo) {
  Arena a; arena_init(&a, 0);
  Graph g; graph_init(&g, &a);
  Tensor *q = tensor_new4(&g, "q", c->B, c->Tq, c->H, c->hd);
  Tensor *k = tensor_new4(&g, "k", c->B, c->Tk, c->K, c->hd);
  Tensor *v = tensor_new4(&g, "v", c->B, c->Tk, c->K, c->hd);
  memcpy(q->data, d->q, sizeof(float) * d->nq);
  memcpy(k->data, d->k, sizeof(float) * d->nk);
  memcpy(v->data, d->v, sizeof(float) * d->nk);
  q->requires_grad = rq; k->requires_grad = rk; v->requires_grad = rv;
  Tensor *o = op_attention(&g, q, k, v, &c->m, c->scale, c->cap);
  eo->out = malloc(sizeof(float) * d->no);
  memcpy(eo->out, o->data, sizeof(float) * d->no);
  eo->n_nodes = g.n_nodes;
  eo->gq = eo->gk = eo->gv = NULL;
  if (g.n_nodes) {
    memcpy(tensor_grad(&g, o), d->R, sizeof(float) * d->no);
    for (int i = g.n_nodes - 1; i >= 0; i--) g.nodes[i].backward(g.nodes[i].ctx);
    g.n_nodes = 0;
    if (rq) { eo->gq = malloc(sizeof(float) * d->nq); memcpy(eo->gq, q->grad, sizeof(float) * d->nq); }
    if (rk) { eo->gk = malloc(sizeof(float) * d->nk); memcpy(eo->gk, k->grad, sizeof(float) * d->nk); }
    if (rv) { eo->gv = malloc(sizeof(float) * d->nk); memcpy(eo->gv, v->grad, sizeof(float) * d->nk); }
    if (!rk && k->grad) eo->n_nodes = -1;    /* a frozen input must get no gradient buffer */
    if (!rv && v->grad) eo->n_nodes = -1;
  }
  graph_free(&g); arena_free(&a);
}
static void engine_free(EngineOut *e) { free(e->out); free(e->gq); free(e->gk); free(e->gv); }

/* First index where |a - b| > rtol |b| + atol_rel max|b| (or -1). */
static long compare(const float *a, const double *b, size_t n, double rtol, double atol_rel, double *worst) {
  double mx = 0;
  for (size_t i = 0; i < n; i++) if (fabs(b[i]) > mx) mx = fabs(b[i]);
  long bad = -1;
  *worst = 0;
  for (size_t i = 0; i < n; i++) {
    double err = fabs(a[i] - b[i]), tol = rtol * fabs(b[i]) + atol_rel * mx + 1e-30;
    if (err / tol > *worst) *worst = err / tol;
    if (err > tol && bad < 0) bad = (long)i;
  }
  return bad;
}

#define CHECK_ARR(what, a, b, n, rtol, atol_rel) do { double _w; long _i = compare((a), (b), (n), (rtol), (atol_rel), &_w); \
    if (_i >= 0) FAILF("%s[%ld]: engine %.9g, twin %.9g (worst err/tol %.3g)", (what), _i, (double)(a)[_i], (b)[_i], _w); } while (0)

/* Numeric gradient of the twin loss w.r.t. element idx of x (x is one of qd/kd/vd). */
static double num_grad(const Cfg *c, double *qd, double *kd, double *vd, double *x, size_t idx, const float *R,
                       size_t no, double *scratch) {
  const double eps = 1e-5, x0 = x[idx];
  x[idx] = x0 + eps; double lp = twin_loss(c, qd, kd, vd, R, no, scratch);
  x[idx] = x0 - eps; double lm = twin_loss(c, qd, kd, vd, R, no, scratch);
  x[idx] = x0;
  return (lp - lm) / (2 * eps);
}

/* Full check of one configuration: forward against the twin, and dq/dk/dv against numeric
 * gradients (all elements, or `sample` random elements per tensor when sample > 0).
 * Returns 0 or writes a message. */
static int check_config(const Cfg *c, const Data *d, int sample, char *msg, size_t msglen) {
  EngineOut eo;
  engine_run(c, d, 1, 1, 1, &eo);
  double *qd = to_double(d->q, d->nq), *kd = to_double(d->k, d->nk), *vd = to_double(d->v, d->nk);
  double *ref = malloc(sizeof(double) * d->no), *scratch = malloc(sizeof(double) * d->no);
  twin_attention(c, qd, kd, vd, ref);
  int rc = 0;
  double w;
  long bad = compare(eo.out, ref, d->no, 1e-5, 1e-6, &w);
  if (bad >= 0) { snprintf(msg, msglen, "forward out[%ld] %.9g vs twin %.9g", bad, eo.out[bad], ref[bad]); rc = 1; goto done; }
  if (eo.n_nodes != 1 || !eo.gq || !eo.gk || !eo.gv) { snprintf(msg, msglen, "no backward recorded"); rc = 1; goto done; }
  struct { const char *name; double *x; float *g; size_t n; } ts[3] = {
    {"dq", qd, eo.gq, d->nq}, {"dk", kd, eo.gk, d->nk}, {"dv", vd, eo.gv, d->nk}};
  for (int t = 0; t < 3 && !rc; t++) {
    size_t n = ts[t].n, m = sample > 0 && (size_t)sample < n ? (size_t)sample : n;
    double *num = malloc(sizeof(double) * m);
    float *eng = malloc(sizeof(float) * m);
    size_t *idx = malloc(sizeof(size_t) * m);
    for (size_t i = 0; i < m; i++) {
      idx[i] = m == n ? i : (size_t)((urand() + 1) * 0.5 * n) % n;
      num[i] = num_grad(c, qd, kd, vd, ts[t].x, idx[i], d->R, d->no, scratch);
      eng[i] = ts[t].g[idx[i]];
    }
    bad = compare(eng, num, m, 1e-4, 2e-6, &w);
    if (bad >= 0) {
      snprintf(msg, msglen, "%s[%zu]: engine %.9g, numeric %.9g (worst err/tol %.3g)", ts[t].name, idx[bad], eng[bad], num[bad], w);
      rc = 1;
    }
    free(num); free(eng); free(idx);
  }
done:
  free(qd); free(kd); free(vd); free(ref); free(scratch);
  engine_free(&eo);
  return rc;
}

#define CHECK_CONFIG(cfg, data, sample) do { char _m[512]; if (check_config((cfg), (data), (sample), _m, sizeof _m)) FAILF("%s", _m); } while (0)

static Cfg cfg_make(int B, int Tq, int Tk, int H, int K, int hd, float cap) {
  Cfg c; memset(&c, 0, sizeof c);
  c.B = B; c.Tq = Tq; c.Tk = Tk; c.H = H; c.K = K; c.hd = hd; c.cap = cap;
  c.scale = 1.0f / sqrtf((float)hd);
  return c;
}

/* ---- cases -------------------------------------------------------------------------------- */

TEST(gqa_causal_h4_k2_hd12) {
  Cfg c = cfg_make(2, 9, 9, 4, 2, 12, 50.0f);
  c.m.causal = 1;
  Data d; data_make(&c, &d, 1.5, 1.5);
  CHECK_CONFIG(&c, &d, 0);
  data_free(&d);
}

TEST(mha_bidirectional_key_padding) {
  Cfg c = cfg_make(2, 8, 8, 3, 3, 8, 50.0f);
  uint8_t kv[16] = {1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1};
  c.m.key_valid = kv;
  Data d; data_make(&c, &d, 1.5, 1.5);
  CHECK_CONFIG(&c, &d, 0);
  data_free(&d);
}

TEST(mqa_causal_window3_t9) {
  Cfg c = cfg_make(2, 9, 9, 4, 1, 12, 50.0f);
  c.m.causal = 1; c.m.window = 3;
  Data d; data_make(&c, &d, 1.5, 1.5);
  CHECK_CONFIG(&c, &d, 0);
  data_free(&d);
}

TEST(bidirectional_window3_t9) {
  Cfg c = cfg_make(1, 9, 9, 2, 1, 12, 50.0f);
  c.m.window = 3;
  Data d; data_make(&c, &d, 1.5, 1.5);
  CHECK_CONFIG(&c, &d, 0);
  data_free(&d);
}

/* Probe: q = 0 gives uniform attention over the visible keys; v_j = e_j (one-hot) makes
 * out[i][j] = 1/|visible(i)| exactly when key j is visible. The expected sets are written out
 * by hand for T = 9, W = 3. */
static int probe(int causal, int window, int T, char *msg, size_t ml) {
  Cfg c = cfg_make(1, T, T, 1, 1, 12, 50.0f);
  c.m.causal = causal; c.m.window = window;
  Arena a; arena_init(&a, 0); Graph g; graph_init(&g, &a);
  g.grad_enabled = 0;
  Tensor *q = tensor_zeros(&g, "q", 4, (int64_t[]){1, T, 1, 12});
  Tensor *k = tensor_new4(&g, "k", 1, T, 1, 12);
  Tensor *v = tensor_zeros(&g, "v", 4, (int64_t[]){1, T, 1, 12});
  for (int i = 0; i < k->n; i++) k->data[i] = (float)urand();
  for (int j = 0; j < T; j++) v->data[j * 12 + j] = 1.0f;
  Tensor *o = op_attention(&g, q, k, v, &c.m, c.scale, c.cap);
  int rc = 0;
  for (int i = 0; i < T && !rc; i++) {
    int lo, hi;    /* hand-derived visible range */
    if (causal) { lo = window ? i - window + 1 : 0; hi = i; }
    else { lo = window ? i - window + 1 : 0; hi = window ? i + window - 1 : T - 1; }
    if (lo < 0) lo = 0;
    if (hi > T - 1) hi = T - 1;
    int cnt = hi - lo + 1;
    for (int j = 0; j < T; j++) {
      float want = (j >= lo && j <= hi) ? 1.0f / cnt : 0.0f, got = o->data[i * 12 + j];
      if (fabsf(got - want) > 1e-6f) { snprintf(msg, ml, "query %d key %d: weight %.7g, want %.7g", i, j, got, want); rc = 1; break; }
    }
  }
  graph_free(&g); arena_free(&a);
  return rc;
}

TEST(window_probe_exact_keys) {
  char m[256];
  /* causal W=3: query 4 sees keys 2,3,4 (qpos-W < kpos <= qpos); bidirectional W=3: keys 2..6 */
  CHECK_MSG(!probe(1, 3, 9, m, sizeof m), "causal window: %s", m);
  CHECK_MSG(!probe(0, 3, 9, m, sizeof m), "bidirectional window: %s", m);
  CHECK_MSG(!probe(1, 0, 9, m, sizeof m), "causal: %s", m);
  CHECK_MSG(!probe(0, 0, 9, m, sizeof m), "bidirectional: %s", m);
  CHECK_MSG(!probe(1, 1, 9, m, sizeof m), "causal window 1 (self only): %s", m);
}

TEST(query_padding_rows_zero) {
  Cfg c = cfg_make(2, 7, 7, 2, 1, 12, 50.0f);
  c.m.causal = 1;
  uint8_t qv[14] = {1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0};
  c.m.query_valid = qv; c.m.key_valid = qv;
  Data d; data_make(&c, &d, 1.5, 1.5);
  CHECK_CONFIG(&c, &d, 0);
  EngineOut eo; engine_run(&c, &d, 1, 1, 1, &eo);
  for (int b = 0; b < 2; b++)
    for (int t = 0; t < 7; t++) {
      if (qv[b * 7 + t]) continue;
      for (int e = 0; e < 2 * 12; e++) {
        size_t i = ((size_t)b * 7 + t) * 24 + e;
        CHECK_MSG(eo.out[i] == 0.0f && eo.gq[i] == 0.0f, "pad row b=%d t=%d: out %g dq %g", b, t, eo.out[i], eo.gq[i]);
      }
    }
  engine_free(&eo); data_free(&d);
}

TEST(row_without_visible_key) {
  /* segment 9 of query 3 has no key; query 0 of batch 1 sees only pad keys. */
  Cfg c = cfg_make(2, 6, 6, 2, 2, 12, 50.0f);
  int32_t qs[12] = {0, 0, 1, 9, 1, 1, 0, 0, 0, 0, 0, 0}, ks[12] = {0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0};
  uint8_t kv[12] = {1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1};
  c.m.causal = 1; c.m.q_seg = qs; c.m.k_seg = ks; c.m.key_valid = kv;
  Data d; data_make(&c, &d, 1.5, 1.5);
  CHECK_CONFIG(&c, &d, 0);
  EngineOut eo; engine_run(&c, &d, 1, 1, 1, &eo);
  int rows[2][2] = {{0, 3}, {1, 0}};
  for (int r = 0; r < 2; r++)
    for (int e = 0; e < 24; e++) {
      size_t i = ((size_t)rows[r][0] * 6 + rows[r][1]) * 24 + e;
      CHECK_MSG(eo.out[i] == 0.0f && eo.gq[i] == 0.0f && !isnan(eo.out[i]), "empty row %d: out %g dq %g", r, eo.out[i], eo.gq[i]);
    }
  engine_free(&eo); data_free(&d);
}

TEST(packed_segments) {
  Cfg c = cfg_make(1, 10, 10, 4, 2, 12, 50.0f);
  int32_t seg[10] = {0, 0, 0, 1, 1, 1, 1, 2, 2, 2};
  c.m.causal = 1; c.m.q_seg = seg; c.m.k_seg = seg;
  Data d; data_make(&c, &d, 1.5, 1.5);
  CHECK_CONFIG(&c, &d, 0);
  c.m.causal = 0;
  CHECK_CONFIG(&c, &d, 0);
  data_free(&d);
}

/* Decoding with a cache: query at position t (q_pos0 = t) against the cached keys equals row t
 * of the full attention; also for a trimmed sliding-window cache (k_pos0 > 0). */
TEST(decode_offsets_match_full) {
  const int T = 11, H = 4, K = 2, hd = 12, W = 4;
  for (int win = 0; win <= 1; win++) {
    Cfg full = cfg_make(1, T, T, H, K, hd, 50.0f);
    full.m.causal = 1; full.m.window = win ? W : 0;
    Data d; data_make(&full, &d, 1.5, 1.5);
    EngineOut ef; engine_run(&full, &d, 0, 0, 0, &ef);
    for (int t = 0; t < T; t++) {
      int kstart = win ? (t - W + 1 > 0 ? t - W + 1 : 0) : 0;  /* trimmed cache for the window */
      Cfg c1 = cfg_make(1, 1, t + 1 - kstart, H, K, hd, 50.0f);
      c1.m.causal = 1; c1.m.window = full.m.window; c1.m.q_pos0 = t; c1.m.k_pos0 = kstart;
      Arena a; arena_init(&a, 0); Graph g; graph_init(&g, &a); g.grad_enabled = 0;
      Tensor *q = tensor_wrap(&g, "q", d.q + (size_t)t * H * hd, 4, (int64_t[]){1, 1, H, hd});
      Tensor *k = tensor_wrap(&g, "k", d.k + (size_t)kstart * K * hd, 4, (int64_t[]){1, c1.Tk, K, hd});
      Tensor *v = tensor_wrap(&g, "v", d.v + (size_t)kstart * K * hd, 4, (int64_t[]){1, c1.Tk, K, hd});
      Tensor *o = op_attention(&g, q, k, v, &c1.m, c1.scale, c1.cap);
      for (int e = 0; e < H * hd; e++) {
        float a1 = o->data[e], b1 = ef.out[(size_t)t * H * hd + e];
        if (!(fabsf(a1 - b1) <= 1e-6f + 1e-5f * fabsf(b1))) {
          graph_free(&g); arena_free(&a);
          FAILF("window %d step %d elem %d: decode %.9g vs full %.9g", win, t, e, a1, b1);
        }
      }
      graph_free(&g); arena_free(&a);
    }
    /* an offset cache where the query precedes some keys: those keys are invisible */
    Cfg c2 = cfg_make(1, 3, 8, H, K, hd, 50.0f);
    c2.m.causal = 1; c2.m.q_pos0 = 4; c2.m.k_pos0 = 1; c2.m.window = full.m.window;
    Data d2; data_make(&c2, &d2, 1.5, 1.5);
    CHECK_CONFIG(&c2, &d2, 0);
    data_free(&d2);
    engine_free(&ef); data_free(&d);
  }
}

TEST(cross_attention_tq_ne_tk) {
  Cfg c = cfg_make(2, 5, 11, 4, 2, 12, 50.0f);
  uint8_t kv[22] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  uint8_t qv[10] = {1, 1, 1, 1, 0, 1, 1, 1, 1, 1};
  c.m.key_valid = kv; c.m.query_valid = qv;
  Data d; data_make(&c, &d, 1.5, 1.5);
  CHECK_CONFIG(&c, &d, 0);
  data_free(&d);
}

TEST(saturated_softcap) {
  /* scores of order ±60 against cap 2: tanh saturates; gradients through it nearly vanish */
  Cfg c = cfg_make(1, 8, 8, 2, 1, 12, 2.0f);
  c.m.causal = 1;
  Data d; data_make(&c, &d, 8.0, 8.0);
  CHECK_CONFIG(&c, &d, 0);
  /* moderate cap 5 with scores of order ±20: partially saturated, large gradients */
  c.cap = 5.0f;
  data_free(&d); data_make(&c, &d, 4.0, 4.0);
  CHECK_CONFIG(&c, &d, 0);
  data_free(&d);
}

TEST(softcap_zero) {
  Cfg c = cfg_make(2, 6, 6, 2, 2, 12, 0.0f);
  c.m.causal = 1;
  Data d; data_make(&c, &d, 1.5, 1.5);
  CHECK_CONFIG(&c, &d, 0);
  data_free(&d);
}

/* Several query blocks, a split (b, kv head) pair (B*K = 1 or 3 with 2 threads uses private
 * dK/dV buffers), long windows; gradients checked on random elements. */
TEST(multi_block_long_sequences) {
  {
    Cfg c = cfg_make(1, 150, 150, 2, 1, 12, 50.0f);
    c.m.causal = 1;
    Data d; data_make(&c, &d, 1.5, 1.5);
    CHECK_CONFIG(&c, &d, 60);
    c.m.window = 40;
    CHECK_CONFIG(&c, &d, 60);
    data_free(&d);
  }
  {
    Cfg c = cfg_make(3, 70, 70, 1, 1, 12, 50.0f);
    c.m.window = 20;
    uint8_t kv[210];
    for (int i = 0; i < 210; i++) kv[i] = (i % 70) < 60 + (i / 70) * 5;
    c.m.key_valid = kv;
    Data d; data_make(&c, &d, 1.5, 1.5);
    CHECK_CONFIG(&c, &d, 60);
    data_free(&d);
  }
  {
    Cfg c = cfg_make(2, 100, 37, 8, 2, 20, 50.0f);   /* cross-attention, 4 heads per group */
    Data d; data_make(&c, &d, 1.5, 1.5);
    CHECK_CONFIG(&c, &d, 60);
    data_free(&d);
  }
}

/* Frozen inputs: k, v from a frozen encoder get no gradient buffer; q's gradient is still right.
 * And only v trainable (the path without dS). */
TEST(frozen_inputs) {
  Cfg c = cfg_make(2, 6, 9, 4, 2, 12, 50.0f);
  uint8_t kv[18] = {1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  c.m.key_valid = kv;
  Data d; data_make(&c, &d, 1.5, 1.5);
  EngineOut all, qonly, vonly, none;
  engine_run(&c, &d, 1, 1, 1, &all);
  engine_run(&c, &d, 1, 0, 0, &qonly);
  engine_run(&c, &d, 0, 0, 1, &vonly);
  engine_run(&c, &d, 0, 0, 0, &none);
  CHECK_MSG(qonly.n_nodes == 1 && qonly.gq && !qonly.gk && !qonly.gv, "q-only run: nodes %d", qonly.n_nodes);
  CHECK_MSG(vonly.n_nodes == 1 && vonly.gv && !vonly.gq, "v-only run: nodes %d", vonly.n_nodes);
  CHECK_MSG(none.n_nodes == 0, "nothing trainable: %d nodes recorded", none.n_nodes);
  for (size_t i = 0; i < d.nq; i++) CHECK_NEAR(qonly.gq[i], all.gq[i], 1e-6 + 1e-6 * fabs(all.gq[i]));
  for (size_t i = 0; i < d.nk; i++) CHECK_NEAR(vonly.gv[i], all.gv[i], 1e-6 + 1e-6 * fabs(all.gv[i]));
  engine_free(&all); engine_free(&qonly); engine_free(&vonly); engine_free(&none);
  data_free(&d);
}

/* Backward accumulates: running it twice doubles the gradients. */
TEST(backward_accumulates) {
  Cfg c = cfg_make(1, 5, 5, 2, 1, 12, 50.0f);
  c.m.causal = 1;
  Data d; data_make(&c, &d, 1.5, 1.5);
  Arena a; arena_init(&a, 0); Graph g; graph_init(&g, &a);
  Tensor *q = tensor_wrap(&g, "q", d.q, 4, (int64_t[]){1, 5, 2, 12});
  Tensor *k = tensor_wrap(&g, "k", d.k, 4, (int64_t[]){1, 5, 1, 12});
  Tensor *v = tensor_wrap(&g, "v", d.v, 4, (int64_t[]){1, 5, 1, 12});
  q->requires_grad = k->requires_grad = v->requires_grad = 1;
  Tensor *o = op_attention(&g, q, k, v, &c.m, c.scale, c.cap);
  memcpy(tensor_grad(&g, o), d.R, sizeof(float) * d.no);
  CHECK_EQ_INT(g.n_nodes, 1);
  g.nodes[0].backward(g.nodes[0].ctx);
  float k1 = k->grad[7], q1 = q->grad[13], v1 = v->grad[21];
  g.nodes[0].backward(g.nodes[0].ctx);
  CHECK_NEAR(k->grad[7], 2 * k1, 1e-6);
  CHECK_NEAR(q->grad[13], 2 * q1, 1e-6);
  CHECK_NEAR(v->grad[21], 2 * v1, 1e-6);
  graph_free(&g); arena_free(&a); data_free(&d);
}

/* No-grad mode: same output, nothing recorded, and the per-call scratch is given back to the
 * arena (growth = output + context + log-sum-exp only). */
TEST(no_grad_mode) {
  Cfg c = cfg_make(1, 300, 300, 2, 1, 12, 50.0f);
  c.m.causal = 1; c.m.window = 100;
  Data d; data_make(&c, &d, 1.5, 1.5);
  EngineOut eo; engine_run(&c, &d, 1, 1, 1, &eo);
  Arena a; arena_init(&a, 0); Graph g; graph_init(&g, &a);
  Tensor *q = tensor_wrap(&g, "q", d.q, 4, (int64_t[]){1, 300, 2, 12});
  Tensor *k = tensor_wrap(&g, "k", d.k, 4, (int64_t[]){1, 300, 1, 12});
  Tensor *v = tensor_wrap(&g, "v", d.v, 4, (int64_t[]){1, 300, 1, 12});
  q->requires_grad = k->requires_grad = v->requires_grad = 1;
  g.grad_enabled = 0;
  size_t before = a.used;
  Tensor *o = op_attention(&g, q, k, v, &c.m, c.scale, c.cap);
  size_t grown = a.used - before, outb = sizeof(float) * d.no;
  CHECK_EQ_INT(g.n_nodes, 0);
  CHECK_MSG(grown < outb + 16384, "arena grew by %zu bytes for a %zu-byte output", grown, outb);
  CHECK(memcmp(o->data, eo.out, outb) == 0);
  graph_free(&g); arena_free(&a); engine_free(&eo); data_free(&d);
}

TEST_MAIN()
