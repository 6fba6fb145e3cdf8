/* test_ops.c: the basic ops of model/ops_basic.c against double-precision twins.
 *
 * Every op has a twin below written in plain double loops straight from the math (spec 1.3-1.6,
 * ops.h), independent of the f32 code. For each op the tests check
 *  (1) the f32 forward against the twin's forward, and
 *  (2) the engine's gradients against central differences of the TWIN (in double).
 * Gradients come from the real tape: the test builds the scalar loss L = Σ out ⊙ R (R fixed and
 * random) with loss_dot(), a tiny test-local op recorded on the tape whose backward adds
 * R · dL into out's gradient, then calls graph_backward(g, L). So every check also runs the
 * engine's seeding, reverse replay, lazy activation gradients and accumulation.
 * Numeric gradients: dL/dθ_i ≈ (L(θ_i + h_i) − L(θ_i − h_i)) / 2h_i in double with
 * h_i = 1e-5 · max(|θ_i|, floor): truncation and round-off errors are ~1e-10 relative, so the
 * tolerance measures the f32 op alone. Comparisons are element-wise:
 *   |a − b| <= rtol·|b| + atol·max|b|   (max over the block, e.g. a row, containing the element),
 * the atol term covering entries whose exact value is near 0 after cancellation.
 * Large cases (above the ops' OpenMP threshold, so that the threaded code paths run) check
 * numeric gradients on a random sample of entries.
 */
#include "tests/check.h"
#include "model/ops.h"
#include "model/rng.h"
#include "model/tensor.h"

/* ---- fixture helpers ------------------------------------------------------------------------ */

static double urand(Rng *r, double lo, double hi) { return lo + (hi - lo) * rng_uniform_d(r); }

static Tensor *mk(Graph *g, const char *name, int ndim, const int64_t *shape, Rng *r, double lo, double hi, int req) {
  Tensor *t = tensor_new(g, name, ndim, shape);
  for (int64_t i = 0; i < t->n; i++) t->data[i] = (float)urand(r, lo, hi);
  t->requires_grad = req;
  return t;
}

/* A trainable parameter as ParamStore makes them: requires_grad, grad buffer always present. */
static Tensor *mk_param(Graph *g, const char *name, int ndim, const int64_t *shape, Rng *r, double lo, double hi) {
  Tensor *t = mk(g, name, ndim, shape, r, lo, hi, 1);
  t->grad = arena_calloc(g->arena, (size_t)t->n * sizeof(float));
  return t;
}

static float *rand_f(Graph *g, int64_t n, Rng *r, double lo, double hi) {
  float *v = arena_alloc(g->arena, (size_t)n * sizeof(float));
  for (int64_t i = 0; i < n; i++) v[i] = (float)urand(r, lo, hi);
  return v;
}

static double *to_d(Graph *g, const float *x, int64_t n) {
  double *v = arena_alloc(g->arena, (size_t)(n ? n : 1) * sizeof(double));
  for (int64_t i = 0; i < n; i++) v[i] = x[i];
  return v;
}

static double *new_d(Graph *g, int64_t n) { return arena_calloc(g->arena, (size_t)(n ? n : 1) * sizeof(double)); }

/* L = Σ out_i R_i as a node on the tape (test-local op). */
typedef struct { Graph *g; Tensor *out, *loss; const float *R; } DotCtx;
static void dot_backward(void *p) {
  DotCtx *c = p;
  if (!c->loss->grad) return;
  float s = c->loss->grad[0], *d = tensor_grad(c->g, c->out);
  for (int64_t i = 0; i < c->out->n; i++) d[i] += c->R[i] * s;
}
static Tensor *loss_dot(Graph *g, Tensor *out, const float *R) {
  int64_t one = 1;
  Tensor *l = tensor_new(g, "loss", 1, &one);
  double s = 0;
  for (int64_t i = 0; i < out->n; i++) s += (double)out->data[i] * R[i];
  l->data[0] = (float)s;
  l->requires_grad = out->requires_grad;
  if (tensor_needs_grad(g, out)) {
    DotCtx *c = arena_alloc(g->arena, sizeof *c);
    *c = (DotCtx){g, out, l, R};
    graph_record(g, dot_backward, c, OPK_LOSS);
  }
  return l;
}

/* Element-wise comparison of f32 values a with double references b (see the file comment).
 * Returns 1 when every element passes, else 0 with the worst element described in msg. */
static int close_arr(const char *what, const float *a, const double *b, int64_t n, int64_t block,
                     double rtol, double atol, char *msg, size_t len) {
  if (!a) { snprintf(msg, len, "%s: gradient is NULL", what); return 0; }
  if (block <= 0) block = n;
  double worst = 0; int64_t wi = -1; double wscale = 0;
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    int64_t b1 = b0 + block < n ? b0 + block : n;
    double scale = 0;
    for (int64_t i = b0; i < b1; i++) if (fabs(b[i]) > scale) scale = fabs(b[i]);
    for (int64_t i = b0; i < b1; i++) {
      double tol = rtol * fabs(b[i]) + atol * scale;
      double err = fabs((double)a[i] - b[i]);
      double ratio = tol > 0 ? err / tol : (err > 0 ? INFINITY : 0);
      if (!(ratio <= worst) || isnan(a[i])) { worst = isnan(a[i]) ? INFINITY : ratio; wi = i; wscale = scale; }
    }
  }
  if (worst <= 1.0) return 1;
  snprintf(msg, len, "%s[%lld]: got %.9g, expected %.9g (|diff| %.3g, %.2fx the tolerance %.3g|b| + %.3g·%.3g)",
           what, (long long)wi, (double)a[wi], b[wi], fabs((double)a[wi] - b[wi]), worst, rtol, atol, wscale);
  return 0;
}
#define CHECK_ARR(what, a, b, n, block, rtol, atol) do { char _m[512]; \
    if (!close_arr(what, a, b, n, block, rtol, atol, _m, sizeof _m)) FAILF("%s", _m); } while (0)

/* ---- numeric gradients of a double twin ------------------------------------------------------ */

/* A twin computes its output from a state holding double copies of the inputs. */
typedef void (*TwinFn)(const void *st, double *out);
typedef struct { TwinFn f; const void *st; int64_t nout; const float *R; double *scratch; } Objective;

static double objective(const Objective *o) {
  o->f(o->st, o->scratch);
  double s = 0;
  for (int64_t i = 0; i < o->nout; i++) s += o->scratch[i] * (double)o->R[i];
  return s;
}

/* Central differences of the objective w.r.t. in[idx[k]] (all n entries when idx is NULL);
 * entries not sampled are left NaN. */
static void numgrad(const Objective *o, double *in, int64_t n, const int64_t *idx, int64_t nidx,
                    double floor_, double *grad) {
  for (int64_t i = 0; i < n; i++) grad[i] = idx ? NAN : 0;
  int64_t m = idx ? nidx : n;
  for (int64_t k = 0; k < m; k++) {
    int64_t i = idx ? idx[k] : k;
    double x0 = in[i], h = 1e-5 * (fabs(x0) > floor_ ? fabs(x0) : floor_);
    in[i] = x0 + h; double lp = objective(o);
    in[i] = x0 - h; double lm = objective(o);
    in[i] = x0;
    grad[i] = (lp - lm) / (2 * h);
  }
}

/* Sampled comparison: only the entries listed in idx. */
static int close_sampled(const char *what, const float *a, const double *b, const int64_t *idx, int64_t nidx,
                         double rtol, double atol_abs, char *msg, size_t len) {
  if (!a) { snprintf(msg, len, "%s: gradient is NULL", what); return 0; }
  for (int64_t k = 0; k < nidx; k++) {
    int64_t i = idx[k];
    double err = fabs((double)a[i] - b[i]);
    if (!(err <= rtol * fabs(b[i]) + atol_abs)) {
      snprintf(msg, len, "%s[%lld]: got %.9g, expected %.9g (|diff| %.3g)", what, (long long)i, (double)a[i], b[i], err);
      return 0;
    }
  }
  return 1;
}
#define CHECK_SAMPLED(what, a, b, idx, nidx, rtol, atol) do { char _m[512]; \
    if (!close_sampled(what, a, b, idx, nidx, rtol, atol, _m, sizeof _m)) FAILF("%s", _m); } while (0)

static int64_t *sample_idx(Graph *g, Rng *r, int64_t n, int64_t k) {
  int64_t *v = arena_alloc(g->arena, (size_t)k * sizeof(int64_t));
  for (int64_t i = 0; i < k; i++) v[i] = (int64_t)rng_below(r, (uint64_t)n);
  return v;
}

static double maxabs_d(const double *v, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) if (isfinite(v[i]) && fabs(v[i]) > m) m = fabs(v[i]);
  return m;
}

/* ---- double twins, from the math ------------------------------------------------------------ */

/* y[m,n] = Σ_k x[m,k] w[n,k] */
static void tw_linear(const double *x, const double *w, int64_t M, int64_t K, int64_t N, double *y) {
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      double s = 0;
      for (int64_t k = 0; k < K; k++) s += x[m * K + k] * w[n * K + k];
      y[m * N + n] = s;
    }
}

/* C[i,j] = Σ_k A(i,k) B(k,j), A(i,k) = a[k][i] when ta, B(k,j) = b[j][k] when tb */
static void tw_matmul(const double *a, int ta, const double *b, int tb, int64_t M, int64_t K, int64_t N, double *c) {
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double s = 0;
      for (int64_t k = 0; k < K; k++)
        s += (ta ? a[k * M + i] : a[i * K + k]) * (tb ? b[j * K + k] : b[k * N + j]);
      c[i * N + j] = s;
    }
}

/* Gemma RMSNorm (spec 1.3): y = x / sqrt(mean(x²) + eps) · (1 + w) */
static void tw_rmsnorm(const double *x, const double *w, int64_t N, int64_t d, double eps, double *y) {
  for (int64_t i = 0; i < N; i++) {
    double ms = 0;
    for (int64_t j = 0; j < d; j++) ms += x[i * d + j] * x[i * d + j];
    ms /= (double)d;
    double inv = 1.0 / sqrt(ms + eps);
    for (int64_t j = 0; j < d; j++) y[i * d + j] = x[i * d + j] * inv * (1.0 + w[j]);
  }
}

/* gelu_pytorch_tanh (spec 1.4) */
static double tw_gelu(double z) {
  return 0.5 * z * (1.0 + tanh(sqrt(2.0 / M_PI) * (z + 0.044715 * z * z * z)));
}

/* RoPE, rotate_half over the whole head (spec 1.5), angle = pos · theta^(−2i/h) in double */
static void tw_rope(const double *x, const int32_t *pos, int64_t rows, int64_t nh, int64_t h, double theta, double *y) {
  int64_t half = h / 2;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t hd = 0; hd < nh; hd++) {
      const double *xv = x + (r * nh + hd) * h;
      double *yv = y + (r * nh + hd) * h;
      for (int64_t i = 0; i < half; i++) {
        double ang = pos[r] * pow(theta, -2.0 * i / (double)h);
        yv[i] = xv[i] * cos(ang) - xv[i + half] * sin(ang);
        yv[i + half] = xv[i + half] * cos(ang) + xv[i] * sin(ang);
      }
    }
}

/* Generic twin state: double inputs and integer/float parameters. */
typedef struct {
  double *in[12];
  int64_t M, K, N, d, F;
  int ta, tb;
  double eps, cap, theta, scale;
  const int32_t *ids;
} St;

static void st_linear(const void *p, double *out) { const St *s = p; tw_linear(s->in[0], s->in[1], s->M, s->K, s->N, out); }
static void st_matmul(const void *p, double *out) { const St *s = p; tw_matmul(s->in[0], s->ta, s->in[1], s->tb, s->M, s->K, s->N, out); }
static void st_rmsnorm(const void *p, double *out) { const St *s = p; tw_rmsnorm(s->in[0], s->in[1], s->M, s->d, s->eps, out); }
static void st_softcap(const void *p, double *out) {
  const St *s = p;
  for (int64_t i = 0; i < s->M; i++) out[i] = s->cap * tanh(s->in[0][i] / s->cap);
}
static void st_add(const void *p, double *out) {
  const St *s = p;
  for (int64_t i = 0; i < s->M; i++) out[i] = s->in[0][i] + s->in[1][i];
}
static void st_geglu(const void *p, double *out) {
  const St *s = p;
  for (int64_t i = 0; i < s->M; i++) out[i] = tw_gelu(s->in[0][i]) * s->in[1][i];
}
static void st_rope(const void *p, double *out) { const St *s = p; tw_rope(s->in[0], s->ids, s->M, s->N, s->d, s->theta, out); }
static void st_embedding(const void *p, double *out) {
  const St *s = p;
  for (int64_t i = 0; i < s->M; i++)
    for (int64_t j = 0; j < s->d; j++) out[i * s->d + j] = s->in[0][(int64_t)s->ids[i] * s->d + j] * s->scale;
}

#define MB (1u << 20)

/* ---- linear -------------------------------------------------------------------------------- */

TEST(linear_forward_backward) {
  Arena a; Graph g; arena_init(&a, 8 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 1);
  const int64_t K = 37, N = 19, xs[4] = {2, 3, 5, K}, ws[2] = {N, K}, M = 30;
  Tensor *x = mk(&g, "x", 4, xs, &r, -1, 1, 1);          /* activation: grad allocated lazily */
  Tensor *w = mk_param(&g, "w", 2, ws, &r, -0.5, 0.5);
  Tensor *y = op_linear(&g, x, w);
  CHECK_EQ_INT(y->ndim, 4); CHECK_EQ_INT(y->shape[3], N); CHECK_EQ_INT(y->shape[0], 2); CHECK_EQ_INT(y->shape[2], 5);
  CHECK(y->requires_grad);
  float *R = rand_f(&g, y->n, &r, -1, 1);
  graph_backward(&g, loss_dot(&g, y, R));
  St s = {.in = {to_d(&g, x->data, x->n), to_d(&g, w->data, w->n)}, .M = M, .K = K, .N = N};
  double *yt = new_d(&g, y->n), *gx = new_d(&g, x->n), *gw = new_d(&g, w->n);
  st_linear(&s, yt);
  CHECK_ARR("y", y->data, yt, y->n, N, 1e-5, 1e-6);
  Objective o = {st_linear, &s, y->n, R, new_d(&g, y->n)};
  numgrad(&o, s.in[0], x->n, NULL, 0, 1e-3, gx);
  numgrad(&o, s.in[1], w->n, NULL, 0, 1e-3, gw);
  CHECK_ARR("dx", x->grad, gx, x->n, 0, 1e-4, 1e-6);
  CHECK_ARR("dW", w->grad, gw, w->n, 0, 1e-4, 1e-6);
  graph_free(&g); arena_free(&a);
}

/* Large enough for multi-threaded BLAS; checks a sample of entries. */
TEST(linear_large_sampled) {
  Arena a; Graph g; arena_init(&a, 16 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 2);
  const int64_t M = 150, K = 203, N = 171, xs[2] = {M, K}, ws[2] = {N, K};
  Tensor *x = mk(&g, "x", 2, xs, &r, -1, 1, 1);
  Tensor *w = mk_param(&g, "w", 2, ws, &r, -0.3, 0.3);
  Tensor *y = op_linear(&g, x, w);
  float *R = rand_f(&g, y->n, &r, -1, 1);
  graph_backward(&g, loss_dot(&g, y, R));
  St s = {.in = {to_d(&g, x->data, x->n), to_d(&g, w->data, w->n)}, .M = M, .K = K, .N = N};
  double *yt = new_d(&g, y->n), *gx = new_d(&g, x->n), *gw = new_d(&g, w->n);
  st_linear(&s, yt);
  CHECK_ARR("y", y->data, yt, y->n, N, 1e-5, 1e-6);
  Objective o = {st_linear, &s, y->n, R, new_d(&g, y->n)};
  int64_t *ix = sample_idx(&g, &r, x->n, 40), *iw = sample_idx(&g, &r, w->n, 40);
  numgrad(&o, s.in[0], x->n, ix, 40, 1e-3, gx);
  numgrad(&o, s.in[1], w->n, iw, 40, 1e-3, gw);
  CHECK_SAMPLED("dx", x->grad, gx, ix, 40, 1e-4, 1e-5);
  CHECK_SAMPLED("dW", w->grad, gw, iw, 40, 1e-4, 1e-5);
  graph_free(&g); arena_free(&a);
}

TEST(linear_frozen_weight_and_no_dx) {
  Arena a; Graph g; arena_init(&a, 8 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 3);
  const int64_t K = 37, N = 11, xs[3] = {3, 4, K}, ws[2] = {N, K}, M = 12;
  /* (a) frozen weight: its grad buffer (a parameter's) must stay exactly untouched. */
  Tensor *x = mk(&g, "x", 3, xs, &r, -1, 1, 1);
  Tensor *w = mk_param(&g, "w", 2, ws, &r, -0.5, 0.5);
  w->requires_grad = 0;
  for (int64_t i = 0; i < w->n; i++) w->grad[i] = 7.25f;
  Tensor *y = op_linear(&g, x, w);
  CHECK(y->requires_grad);
  float *R = rand_f(&g, y->n, &r, -1, 1);
  graph_backward(&g, loss_dot(&g, y, R));
  for (int64_t i = 0; i < w->n; i++) CHECK_MSG(w->grad[i] == 7.25f, "frozen dW[%lld] changed to %g", (long long)i, w->grad[i]);
  St s = {.in = {to_d(&g, x->data, x->n), to_d(&g, w->data, w->n)}, .M = M, .K = K, .N = N};
  double *gx = new_d(&g, x->n), *gw = new_d(&g, w->n);
  Objective o = {st_linear, &s, y->n, R, new_d(&g, y->n)};
  numgrad(&o, s.in[0], x->n, NULL, 0, 1e-3, gx);
  CHECK_ARR("dx (frozen W)", x->grad, gx, x->n, 0, 1e-4, 1e-6);
  /* (b) x does not require grad (e.g. an input): no dx is computed, dW is. */
  Tensor *x2 = mk(&g, "x2", 3, xs, &r, -1, 1, 0);
  Tensor *w2 = mk_param(&g, "w2", 2, ws, &r, -0.5, 0.5);
  Tensor *y2 = op_linear(&g, x2, w2);
  graph_backward(&g, loss_dot(&g, y2, R));
  CHECK(x2->grad == NULL);
  St s2 = {.in = {to_d(&g, x2->data, x2->n), to_d(&g, w2->data, w2->n)}, .M = M, .K = K, .N = N};
  Objective o2 = {st_linear, &s2, y2->n, R, new_d(&g, y2->n)};
  numgrad(&o2, s2.in[1], w2->n, NULL, 0, 1e-3, gw);
  CHECK_ARR("dW (x without grad)", w2->grad, gw, w2->n, 0, 1e-4, 1e-6);
  /* (c) nothing requires grad: no node, output does not require grad. */
  Tensor *y3 = op_linear(&g, x2, w);
  CHECK_EQ_INT(g.n_nodes, 0);
  CHECK(!y3->requires_grad);
  graph_free(&g); arena_free(&a);
}

/* ---- matmul -------------------------------------------------------------------------------- */

TEST(matmul_all_transposes) {
  const int64_t M = 7, K = 13, N = 9;
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      Arena a; Graph g; arena_init(&a, 4 * MB); graph_init(&g, &a);
      Rng r; rng_seed(&r, 10 + 2 * ta + tb);
      int64_t as[2] = {ta ? K : M, ta ? M : K}, bs[2] = {tb ? N : K, tb ? K : N};
      Tensor *A = mk(&g, "a", 2, as, &r, -1, 1, 1);
      Tensor *B = mk_param(&g, "b", 2, bs, &r, -1, 1);
      Tensor *C = op_matmul(&g, A, ta, B, tb);
      CHECK_EQ_INT(C->shape[0], M); CHECK_EQ_INT(C->shape[1], N);
      float *R = rand_f(&g, C->n, &r, -1, 1);
      graph_backward(&g, loss_dot(&g, C, R));
      St s = {.in = {to_d(&g, A->data, A->n), to_d(&g, B->data, B->n)}, .M = M, .K = K, .N = N, .ta = ta, .tb = tb};
      double *ct = new_d(&g, C->n), *ga = new_d(&g, A->n), *gb = new_d(&g, B->n);
      st_matmul(&s, ct);
      char what[64];
      snprintf(what, sizeof what, "C (ta=%d tb=%d)", ta, tb);
      CHECK_ARR(what, C->data, ct, C->n, 0, 1e-5, 1e-6);
      Objective o = {st_matmul, &s, C->n, R, new_d(&g, C->n)};
      numgrad(&o, s.in[0], A->n, NULL, 0, 1e-3, ga);
      numgrad(&o, s.in[1], B->n, NULL, 0, 1e-3, gb);
      snprintf(what, sizeof what, "dA (ta=%d tb=%d)", ta, tb);
      CHECK_ARR(what, A->grad, ga, A->n, 0, 1e-4, 1e-6);
      snprintf(what, sizeof what, "dB (ta=%d tb=%d)", ta, tb);
      CHECK_ARR(what, B->grad, gb, B->n, 0, 1e-4, 1e-6);
      graph_free(&g); arena_free(&a);
    }
}

/* ---- embedding ------------------------------------------------------------------------------ */

TEST(embedding_repeated_ids) {
  Arena a; Graph g; arena_init(&a, 4 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 20);
  const int64_t V = 11, d = 37, es[2] = {V, d}, is[2] = {3, 7}, n = 21;
  int32_t ids[21];
  for (int i = 0; i < n; i++) ids[i] = (int32_t)rng_below(&r, 9);   /* rows 9, 10 never used */
  for (int i = 0; i < 6; i++) ids[3 * i] = 4;                        /* id 4 six times or more */
  Tensor *E = mk_param(&g, "E", 2, es, &r, -1, 1);
  float scale = sqrtf((float)d);
  Tensor *y = op_embedding(&g, ids, 2, is, E, scale);
  CHECK_EQ_INT(y->ndim, 3); CHECK_EQ_INT(y->shape[0], 3); CHECK_EQ_INT(y->shape[1], 7); CHECK_EQ_INT(y->shape[2], d);
  float *R = rand_f(&g, y->n, &r, -1, 1);
  graph_backward(&g, loss_dot(&g, y, R));
  St s = {.in = {to_d(&g, E->data, E->n)}, .M = n, .d = d, .ids = ids, .scale = scale};
  double *yt = new_d(&g, y->n), *gE = new_d(&g, E->n);
  st_embedding(&s, yt);
  CHECK_ARR("y", y->data, yt, y->n, 0, 1e-6, 0);
  Objective o = {st_embedding, &s, y->n, R, new_d(&g, y->n)};
  numgrad(&o, s.in[0], E->n, NULL, 0, 1e-3, gE);
  CHECK_ARR("dE", E->grad, gE, E->n, 0, 1e-5, 1e-6);
  for (int64_t j = 9 * d; j < V * d; j++) CHECK_MSG(E->grad[j] == 0.0f, "unused row got gradient at %lld", (long long)j);
  graph_free(&g); arena_free(&a);
}

/* Above the OpenMP threshold: the column-split scatter-add of the threaded path. The reference
 * is the derivative written directly: dE[v] = scale · Σ_{i: id_i = v} R_i (accumulated in
 * double, so it cannot share a rounding pattern with the f32 sum). */
TEST(embedding_scatter_threaded) {
  Arena a; Graph g; arena_init(&a, 8 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 21);
  const int64_t V = 50, d = 67, es[2] = {V, d}, is[2] = {64, 9}, n = 576;
  int32_t *ids = arena_alloc(g.arena, n * sizeof(int32_t));
  for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)(rng_below(&r, 10) == 0 ? 7 : rng_below(&r, V));
  Tensor *E = mk_param(&g, "E", 2, es, &r, -1, 1);
  Tensor *y = op_embedding(&g, ids, 2, is, E, 2.5f);
  float *R = rand_f(&g, y->n, &r, -1, 1);
  graph_backward(&g, loss_dot(&g, y, R));
  double *ref = new_d(&g, E->n);
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < d; j++) ref[(int64_t)ids[i] * d + j] += 2.5 * R[i * d + j];
  CHECK_ARR("dE", E->grad, ref, E->n, 0, 1e-5, 1e-6);
  graph_free(&g); arena_free(&a);
}

/* ---- rmsnorm ------------------------------------------------------------------------------- */

TEST(rmsnorm_scales_and_weights) {
  Arena a; Graph g; arena_init(&a, 4 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 30);
  const int64_t d = 37, xs[3] = {3, 4, d}, N = 12;
  const double row_scale[4] = {1e-3, 1.0, 30.0, 1e3};   /* 1e-3: mean(x²) ~ eps */
  Tensor *x = mk(&g, "x", 3, xs, &r, -1, 1, 1);
  for (int64_t i = 0; i < N; i++)
    for (int64_t j = 0; j < d; j++) x->data[i * d + j] = (float)(x->data[i * d + j] * row_scale[i % 4]);
  int64_t ws = d;
  Tensor *w = mk_param(&g, "w", 1, &ws, &r, -0.9, 1.5);   /* gains 1 + w in (0.1, 2.5) */
  const float eps = 1e-6f;
  Tensor *y = op_rmsnorm(&g, x, w, eps);
  float *R = rand_f(&g, y->n, &r, -1, 1);
  graph_backward(&g, loss_dot(&g, y, R));
  St s = {.in = {to_d(&g, x->data, x->n), to_d(&g, w->data, w->n)}, .M = N, .d = d, .eps = eps};
  double *yt = new_d(&g, y->n), *gx = new_d(&g, x->n), *gw = new_d(&g, w->n);
  st_rmsnorm(&s, yt);
  CHECK_ARR("y", y->data, yt, y->n, d, 1e-5, 1e-6);
  Objective o = {st_rmsnorm, &s, y->n, R, new_d(&g, y->n)};
  numgrad(&o, s.in[0], x->n, NULL, 0, 1e-6, gx);
  numgrad(&o, s.in[1], w->n, NULL, 0, 1e-3, gw);
  CHECK_ARR("dx", x->grad, gx, x->n, d, 1e-4, 1e-6);    /* per-row scale: dx ∝ 1/row scale */
  CHECK_ARR("dw", w->grad, gw, w->n, 0, 1e-4, 1e-6);
  graph_free(&g); arena_free(&a);
}

TEST(rmsnorm_threaded_sampled) {
  Arena a; Graph g; arena_init(&a, 8 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 31);
  const int64_t d = 403, N = 96, xs[2] = {N, d};
  Tensor *x = mk(&g, "x", 2, xs, &r, -2, 2, 1);
  for (int64_t i = 0; i < N; i++)
    for (int64_t j = 0; j < d; j++) x->data[i * d + j] *= (float)pow(10.0, (double)(i % 5) - 2);
  int64_t ws = d;
  Tensor *w = mk_param(&g, "w", 1, &ws, &r, -0.5, 0.8);
  Tensor *y = op_rmsnorm(&g, x, w, 1e-6f);
  float *R = rand_f(&g, y->n, &r, -1, 1);
  graph_backward(&g, loss_dot(&g, y, R));
  St s = {.in = {to_d(&g, x->data, x->n), to_d(&g, w->data, w->n)}, .M = N, .d = d, .eps = 1e-6};
  double *yt = new_d(&g, y->n), *gx = new_d(&g, x->n), *gw = new_d(&g, w->n);
  st_rmsnorm(&s, yt);
  CHECK_ARR("y", y->data, yt, y->n, d, 1e-5, 1e-6);
  Objective o = {st_rmsnorm, &s, y->n, R, new_d(&g, y->n)};
  int64_t *ix = sample_idx(&g, &r, x->n, 60);
  numgrad(&o, s.in[0], x->n, ix, 60, 1e-6, gx);
  numgrad(&o, s.in[1], w->n, NULL, 0, 1e-3, gw);
  /* dx sampled: tolerance relative to each entry's row scale (1/x scale), so use per-entry rtol
   * plus an absolute floor tied to that row's size. */
  for (int k = 0; k < 60; k++) {
    int64_t i = ix[k], row = i / d;
    double rowmag = 1.0 / pow(10.0, (double)(row % 5) - 2);
    CHECK_MSG(fabs(x->grad[i] - gx[i]) <= 1e-4 * fabs(gx[i]) + 1e-6 * rowmag,
              "dx[%lld]: got %.9g expected %.9g", (long long)i, x->grad[i], gx[i]);
  }
  CHECK_ARR("dw (threaded row reduction)", w->grad, gw, w->n, 0, 1e-4, 1e-6);
  graph_free(&g); arena_free(&a);
}

/* ---- add ----------------------------------------------------------------------------------- */

TEST(add_and_self_add) {
  Arena a; Graph g; arena_init(&a, 4 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 40);
  const int64_t xs[3] = {2, 3, 37}, n = 222;
  Tensor *A = mk(&g, "a", 3, xs, &r, -1, 1, 1);
  Tensor *B = mk_param(&g, "b", 3, xs, &r, -1, 1);
  Tensor *y = op_add(&g, A, B);
  float *R = rand_f(&g, n, &r, -1, 1);
  graph_backward(&g, loss_dot(&g, y, R));
  St s = {.in = {to_d(&g, A->data, n), to_d(&g, B->data, n)}, .M = n};
  double *yt = new_d(&g, n), *ga = new_d(&g, n), *gb = new_d(&g, n);
  st_add(&s, yt);
  CHECK_ARR("y", y->data, yt, n, 0, 1e-7, 0);
  Objective o = {st_add, &s, n, R, new_d(&g, n)};
  numgrad(&o, s.in[0], n, NULL, 0, 1e-3, ga);
  numgrad(&o, s.in[1], n, NULL, 0, 1e-3, gb);
  CHECK_ARR("da", A->grad, ga, n, 0, 1e-6, 1e-7);
  CHECK_ARR("db", B->grad, gb, n, 0, 1e-6, 1e-7);
  /* y = c + c: both operands are the same tensor, its gradient is 2R */
  Tensor *c = mk(&g, "c", 3, xs, &r, -1, 1, 1);
  Tensor *y2 = op_add(&g, c, c);
  graph_backward(&g, loss_dot(&g, y2, R));
  for (int64_t i = 0; i < n; i++) CHECK_NEAR(c->grad[i], 2.0 * R[i], 1e-6);
  graph_free(&g); arena_free(&a);
}

/* ---- softcap ------------------------------------------------------------------------------- */

TEST(softcap_saturated) {
  Arena a; Graph g; arena_init(&a, 4 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 50);
  const float cap = 5.0f;
  const int64_t xs[2] = {6, 37}, n = 222;
  Tensor *x = mk(&g, "x", 2, xs, &r, -15, 15, 1);
  for (int64_t i = 0; i < n; i += 4) x->data[i] = (float)(urand(&r, 20, 120) * (i % 8 ? 1 : -1));  /* |x| >> cap */
  Tensor *y = op_softcap(&g, x, cap);
  CHECK(y != x);
  float *R = rand_f(&g, n, &r, -1, 1);
  graph_backward(&g, loss_dot(&g, y, R));
  St s = {.in = {to_d(&g, x->data, n)}, .M = n, .cap = cap};
  double *yt = new_d(&g, n), *gx = new_d(&g, n);
  st_softcap(&s, yt);
  CHECK_ARR("y", y->data, yt, n, 0, 1e-6, 1e-7);
  Objective o = {st_softcap, &s, n, R, new_d(&g, n)};
  numgrad(&o, s.in[0], n, NULL, 0, 1e-3, gx);
  CHECK_ARR("dx", x->grad, gx, n, 0, 1e-4, 1e-6);
  /* Saturated entries: the derivative 1 − tanh²(x/cap) is tiny (down to ~1e-20); it must keep
   * its relative precision (central differences cannot resolve it, so compare with the closed
   * form 1/cosh² in double). */
  for (int64_t i = 0; i < n; i += 4) {
    double c = cosh((double)x->data[i] / cap), ref = R[i] / (c * c);
    CHECK_MSG(fabs(x->grad[i] - ref) <= 1e-5 * fabs(ref), "saturated dx[%lld] = %.9g, expected %.9g", (long long)i, x->grad[i], ref);
  }
  /* cap <= 0: identity, the same tensor */
  CHECK(op_softcap(&g, x, 0.0f) == x);
  CHECK(op_softcap(&g, x, -1.0f) == x);
  graph_free(&g); arena_free(&a);
}

/* ---- rope ---------------------------------------------------------------------------------- */

TEST(rope_odd_positions_h10) {
  Arena a; Graph g; arena_init(&a, 4 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 60);
  const int64_t B = 2, T = 3, nh = 4, h = 10, xs[4] = {B, T, nh, h};
  const int32_t pos[6] = {1, 7, 13, 29, 41, 3};
  Tensor *x = mk(&g, "x", 4, xs, &r, -1, 1, 1);
  Tensor *y = op_rope(&g, x, pos, 10000.0f);
  float *R = rand_f(&g, y->n, &r, -1, 1);
  graph_backward(&g, loss_dot(&g, y, R));
  St s = {.in = {to_d(&g, x->data, x->n)}, .M = B * T, .N = nh, .d = h, .theta = 10000.0, .ids = pos};
  double *yt = new_d(&g, y->n), *gx = new_d(&g, x->n);
  st_rope(&s, yt);
  /* f32 angles (as HF) vs exact ones: |Δangle| <= pos · 2^-24 ~ 2.4e-6 at pos 41 */
  CHECK_ARR("y", y->data, yt, y->n, 0, 1e-5, 5e-6);
  Objective o = {st_rope, &s, y->n, R, new_d(&g, y->n)};
  numgrad(&o, s.in[0], x->n, NULL, 0, 1e-3, gx);
  CHECK_ARR("dx", x->grad, gx, x->n, 0, 1e-4, 5e-6);
  graph_free(&g); arena_free(&a);
}

/* Angles as HF computes them in f32 (Gemma2RotaryEmbedding: inv_freq = 1/(theta^(arange(0,h,2)
 * .float()/h)), freqs = inv_freq @ position.float(), emb.cos()/emb.sin()), for h = 256,
 * theta = 10000. Reference values printed by /usr/bin/python3 with torch 1.13 (f32):
 * x = [1]*128 + [0]*128 makes out[i] = cos and out[i+128] = sin. */
TEST(rope_matches_hf_f32_angles) {
  Arena a; Graph g; arena_init(&a, 4 * MB); graph_init(&g, &a);
  static const int32_t pos[4] = {8191, 4097, 1234, 77};
  static const int ii[9] = {0, 1, 2, 5, 17, 40, 64, 100, 127};
  static const double ref[4][9][2] = {
    {{-0.6463904976844788, -0.7630068063735962}, {0.6883009076118469, 0.7254253029823303}, {0.8242307305335999, -0.5662540793418884},
     {-0.19637291133403778, -0.9805293083190918}, {-0.7064163088798523, -0.707796573638916}, {-0.36200255155563354, 0.9321771264076233},
     {0.9739875197410583, 0.22660154104232788}, {0.9901037216186523, -0.14033742249011993}, {0.6369883418083191, 0.7708734273910522}},
    {{0.9347719550132751, 0.3552483320236206}, {0.22897619009017944, -0.9734320044517517}, {-0.5421092510223389, -0.8403080105781555},
     {0.9868414402008057, 0.16169102489948273}, {0.7410234808921814, -0.6714791059494019}, {-0.49326568841934204, -0.8698787093162537},
     {-0.991653323173523, -0.12893298268318176}, {-0.997601330280304, 0.06922084838151932}, {0.9046379923820496, 0.4261808693408966}},
    {{-0.7985506057739258, 0.601927638053894}, {0.07374583929777145, -0.9972770810127258}, {0.8967291712760925, 0.4425796568393707},
     {0.9471586346626282, 0.3207656443119049}, {0.2749967873096466, -0.961445152759552}, {0.9616404175758362, 0.27431321144104004},
     {0.9744874238967896, -0.22444206476211548}, {0.6015394926071167, 0.7988430261611938}, {0.9912205934524536, 0.13221830129623413}},
    {{-0.030975032597780228, 0.9995201230049133}, {-0.8238727450370789, 0.566774845123291}, {-0.7610884308815002, -0.6486481428146362},
     {-0.9473703503608704, -0.3201397657394409}, {-0.785153865814209, -0.6193007826805115}, {-0.37311193346977234, -0.9277863502502441},
     {0.7179107069969177, 0.6961352229118347}, {0.9983333945274353, 0.057709768414497375}, {0.9999657869338989, 0.008274385705590248}}};
  const int64_t h = 256, xs[4] = {1, 4, 1, h};
  Tensor *x = tensor_zeros(&g, "x", 4, xs);
  for (int t = 0; t < 4; t++) for (int i = 0; i < 128; i++) x->data[t * h + i] = 1.0f;
  Tensor *y = op_rope(&g, x, pos, 10000.0f);
  double max_exact_dev = 0;
  for (int t = 0; t < 4; t++)
    for (int k = 0; k < 9; k++) {
      int i = ii[k];
      /* 2 ulp: torch's vectorised cos/sin and glibc's may differ in the last bit */
      CHECK_MSG(fabs(y->data[t * h + i] - ref[t][k][0]) <= 2.4e-7, "cos(pos %d, i %d) = %.9g, HF %.9g", pos[t], i, y->data[t * h + i], ref[t][k][0]);
      CHECK_MSG(fabs(y->data[t * h + 128 + i] - ref[t][k][1]) <= 2.4e-7, "sin(pos %d, i %d) = %.9g, HF %.9g", pos[t], i, y->data[t * h + 128 + i], ref[t][k][1]);
      double ang = pos[t] * pow(10000.0, -2.0 * i / 256.0);
      if (fabs(cos(ang) - ref[t][k][0]) > max_exact_dev) max_exact_dev = fabs(cos(ang) - ref[t][k][0]);
    }
  /* The check above can tell f32 angles from exact ones: HF's f32 rounding moves these values
   * by far more than the 2.4e-7 tolerance. */
  CHECK_MSG(max_exact_dev > 1e-5, "reference values do not discriminate f32 from exact angles (%.3g)", max_exact_dev);
  graph_free(&g); arena_free(&a);
}

TEST(rope_threaded_sampled) {
  Arena a; Graph g; arena_init(&a, 8 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 61);
  const int64_t B = 2, T = 64, nh = 4, h = 70, xs[4] = {B, T, nh, h};
  int32_t pos[128];
  for (int i = 0; i < 128; i++) pos[i] = (i % 64) * 3 + 1;
  Tensor *x = mk(&g, "x", 4, xs, &r, -1, 1, 1);
  Tensor *y = op_rope(&g, x, pos, 10000.0f);
  float *R = rand_f(&g, y->n, &r, -1, 1);
  graph_backward(&g, loss_dot(&g, y, R));
  St s = {.in = {to_d(&g, x->data, x->n)}, .M = B * T, .N = nh, .d = h, .theta = 10000.0, .ids = pos};
  double *yt = new_d(&g, y->n), *gx = new_d(&g, x->n);
  st_rope(&s, yt);
  /* positions up to 190: f32 angle error up to ~190 · 2^-24 ~ 1.1e-5 */
  CHECK_ARR("y", y->data, yt, y->n, 0, 1e-5, 2e-5);
  Objective o = {st_rope, &s, y->n, R, new_d(&g, y->n)};
  int64_t *ix = sample_idx(&g, &r, x->n, 50);
  numgrad(&o, s.in[0], x->n, ix, 50, 1e-3, gx);
  CHECK_SAMPLED("dx", x->grad, gx, ix, 50, 1e-4, 3e-5);
  graph_free(&g); arena_free(&a);
}

/* ---- geglu --------------------------------------------------------------------------------- */

TEST(geglu_large_gate) {
  Arena a; Graph g; arena_init(&a, 4 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 70);
  const int64_t xs[3] = {2, 3, 37}, n = 222;
  Tensor *gate = mk(&g, "gate", 3, xs, &r, -4, 4, 1);
  for (int64_t i = 0; i < n; i += 5) gate->data[i] = (float)(urand(&r, 6, 40) * (i % 10 ? 1 : -1));  /* tanh saturated */
  gate->data[1] = 0.0f; gate->data[2] = -1e-4f;
  Tensor *up = mk_param(&g, "up", 3, xs, &r, -2, 2);
  Tensor *y = op_geglu(&g, gate, up);
  float *R = rand_f(&g, n, &r, -1, 1);
  graph_backward(&g, loss_dot(&g, y, R));
  St s = {.in = {to_d(&g, gate->data, n), to_d(&g, up->data, n)}, .M = n};
  double *yt = new_d(&g, n), *gg = new_d(&g, n), *gu = new_d(&g, n);
  st_geglu(&s, yt);
  CHECK_ARR("y", y->data, yt, n, 0, 1e-6, 1e-7);
  Objective o = {st_geglu, &s, n, R, new_d(&g, n)};
  numgrad(&o, s.in[0], n, NULL, 0, 1e-3, gg);
  numgrad(&o, s.in[1], n, NULL, 0, 1e-3, gu);
  CHECK_ARR("dgate", gate->grad, gg, n, 0, 1e-4, 1e-6);
  CHECK_ARR("dup", up->grad, gu, n, 0, 1e-4, 1e-6);
  /* Only up requires grad: gate gets no gradient buffer at all. */
  Tensor *g2 = mk(&g, "gate2", 3, xs, &r, -3, 3, 0);
  Tensor *y2 = op_geglu(&g, g2, up);
  graph_backward(&g, loss_dot(&g, y2, R));
  CHECK(g2->grad == NULL);
  graph_free(&g); arena_free(&a);
}

TEST(geglu_threaded_sampled) {
  Arena a; Graph g; arena_init(&a, 8 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 71);
  const int64_t xs[2] = {40, 1001}, n = 40040;
  Tensor *gate = mk(&g, "gate", 2, xs, &r, -12, 12, 1);
  Tensor *up = mk(&g, "up", 2, xs, &r, -2, 2, 1);
  Tensor *y = op_geglu(&g, gate, up);
  float *R = rand_f(&g, n, &r, -1, 1);
  graph_backward(&g, loss_dot(&g, y, R));
  St s = {.in = {to_d(&g, gate->data, n), to_d(&g, up->data, n)}, .M = n};
  double *yt = new_d(&g, n), *gg = new_d(&g, n), *gu = new_d(&g, n);
  st_geglu(&s, yt);
  CHECK_ARR("y", y->data, yt, n, 0, 1e-6, 1e-7);
  Objective o = {st_geglu, &s, n, R, new_d(&g, n)};
  int64_t *ix = sample_idx(&g, &r, n, 60);
  numgrad(&o, s.in[0], n, ix, 60, 1e-3, gg);
  numgrad(&o, s.in[1], n, ix, 60, 1e-3, gu);
  CHECK_SAMPLED("dgate", gate->grad, gg, ix, 60, 1e-4, 1e-6);
  CHECK_SAMPLED("dup", up->grad, gu, ix, 60, 1e-4, 1e-6);
  graph_free(&g); arena_free(&a);
}

/* ---- dropout ------------------------------------------------------------------------------- */

TEST(dropout_mask_semantics) {
  Arena a; Graph g; arena_init(&a, 8 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 80);
  const int64_t xs[2] = {100, 207}, n = 20700;
  Tensor *x = mk(&g, "x", 2, xs, &r, 0.5, 1.5, 1);        /* no zeros: zero means dropped */
  CHECK(op_dropout(&g, x, 0.0f) == x);                     /* p = 0: identity, same tensor */
  CHECK_EQ_INT(g.n_nodes, 0);
  g.dropout_seed = 1234;
  g.dropout_calls = 0;
  Tensor *y = op_dropout(&g, x, 0.5f);
  CHECK_EQ_INT(g.dropout_calls, 1);
  int64_t kept = 0;
  for (int64_t i = 0; i < n; i++) {
    if (y->data[i] != 0.0f) { kept++; CHECK_MSG(y->data[i] == 2.0f * x->data[i], "kept y[%lld] = %g, x = %g", (long long)i, y->data[i], x->data[i]); }
  }
  double frac = (double)kept / n;   /* binomial sd = 0.0035: 0.02 is > 5 sd */
  CHECK_MSG(fabs(frac - 0.5) < 0.02, "kept fraction %.4f", frac);
  float *R = rand_f(&g, n, &r, -1, 1);
  graph_backward(&g, loss_dot(&g, y, R));
  for (int64_t i = 0; i < n; i++) {
    float want = y->data[i] != 0.0f ? 2.0f * R[i] : 0.0f;   /* the forward's mask */
    CHECK_MSG(x->grad[i] == want, "dx[%lld] = %g, expected %g", (long long)i, x->grad[i], want);
  }
  /* same seed and counter: same mask; next call: another mask */
  g.dropout_calls = 0;
  Tensor *y2 = op_dropout(&g, x, 0.5f);
  CHECK(memcmp(y2->data, y->data, n * sizeof(float)) == 0);
  Tensor *y3 = op_dropout(&g, x, 0.5f);
  int64_t differ = 0;
  for (int64_t i = 0; i < n; i++) differ += (y3->data[i] != 0.0f) != (y->data[i] != 0.0f);
  CHECK_MSG(differ > n / 4, "second call's mask matches the first on %lld of %lld", (long long)(n - differ), (long long)n);
  /* another seed: another mask */
  g.dropout_seed = 99; g.dropout_calls = 0;
  Tensor *y4 = op_dropout(&g, x, 0.5f);
  differ = 0;
  for (int64_t i = 0; i < n; i++) differ += (y4->data[i] != 0.0f) != (y->data[i] != 0.0f);
  CHECK(differ > n / 4);
  /* p = 0.1: kept values scaled by 1/0.9 */
  Tensor *y5 = op_dropout(&g, x, 0.1f);
  kept = 0;
  for (int64_t i = 0; i < n; i++)
    if (y5->data[i] != 0.0f) { kept++; CHECK_NEAR(y5->data[i], x->data[i] / 0.9, 2e-7 * 2); }
  CHECK_MSG(fabs((double)kept / n - 0.9) < 0.015, "kept fraction %.4f at p = 0.1", (double)kept / n);
  /* no-grad mode: identity */
  g.grad_enabled = 0;
  CHECK(op_dropout(&g, x, 0.5f) == x);
  graph_free(&g); arena_free(&a);
}

/* ---- engine semantics ---------------------------------------------------------------------- */

/* Two forward+backward passes without zeroing: parameter gradients double. */
TEST(accumulation_doubles_param_grads) {
  Arena a; Graph g; arena_init(&a, 8 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 90);
  const int64_t V = 13, d = 37, F = 23, es[2] = {V, d}, ws[2] = {F, d}, ids_shape[2] = {2, 5};
  const int32_t ids[10] = {1, 4, 4, 0, 12, 7, 4, 1, 3, 9};
  Tensor *E = mk_param(&g, "E", 2, es, &r, -1, 1);
  int64_t ds = d;
  Tensor *ln = mk_param(&g, "ln", 1, &ds, &r, -0.5, 0.5);
  Tensor *W = mk_param(&g, "W", 2, ws, &r, -0.3, 0.3);
  float *R = rand_f(&g, 10 * F, &r, -1, 1);
  float *first[3];
  Tensor *P[3] = {E, ln, W};
  for (int pass = 0; pass < 2; pass++) {
    Tensor *x = op_embedding(&g, ids, 2, ids_shape, E, 6.0f);
    Tensor *h = op_rmsnorm(&g, x, ln, 1e-6f);
    Tensor *y = op_linear(&g, h, W);
    graph_backward(&g, loss_dot(&g, y, R));
    CHECK_EQ_INT(g.n_nodes, 0);               /* the tape is cleared by backward */
    if (pass == 0)
      for (int k = 0; k < 3; k++) {
        first[k] = arena_alloc(g.arena, P[k]->n * sizeof(float));
        memcpy(first[k], P[k]->grad, P[k]->n * sizeof(float));
      }
  }
  for (int k = 0; k < 3; k++) {
    double nz = 0;
    for (int64_t i = 0; i < P[k]->n; i++) {
      nz += fabs(first[k][i]);
      /* not bit-exact: the second pass adds its terms one by one onto a non-zero buffer */
      CHECK_MSG(fabs(P[k]->grad[i] - 2.0f * first[k][i]) <= 1e-5 * fabs(first[k][i]) + 1e-9,
                "%s grad[%lld] = %.9g after two passes, first pass %.9g", P[k]->name, (long long)i, P[k]->grad[i], first[k][i]);
    }
    CHECK_MSG(nz > 0, "%s got no gradient", P[k]->name);
  }
  graph_free(&g); arena_free(&a);
}

/* Every backward ADDS into gradients that already hold values: run each op once on zeroed input
 * gradients (g1), then again with the input gradients pre-filled with P; the result must be
 * P + g1 (to f32 rounding of that sum). The values of g1 are checked against the twins above;
 * this checks the += contract of every backward path, including activation gradients that a
 * second consumer has already written (as in a residual stream). */
typedef Tensor *(*BuildFn)(Graph *g, Tensor **in);
static const int32_t acc_ids[6] = {2, 0, 2, 4, 2, 1};
static const int32_t acc_pos[6] = {0, 5, 9, 1, 3, 11};
static int acc_ta, acc_tb;
static Tensor *b_linear(Graph *g, Tensor **in) { return op_linear(g, in[0], in[1]); }
static Tensor *b_matmul(Graph *g, Tensor **in) { return op_matmul(g, in[0], acc_ta, in[1], acc_tb); }
static Tensor *b_embed(Graph *g, Tensor **in) { int64_t s = 6; return op_embedding(g, acc_ids, 1, &s, in[0], 1.7f); }
static Tensor *b_rmsnorm(Graph *g, Tensor **in) { return op_rmsnorm(g, in[0], in[1], 1e-6f); }
static Tensor *b_add(Graph *g, Tensor **in) { return op_add(g, in[0], in[1]); }
static Tensor *b_softcap(Graph *g, Tensor **in) { return op_softcap(g, in[0], 1.5f); }
static Tensor *b_rope(Graph *g, Tensor **in) { return op_rope(g, in[0], acc_pos, 100.0f); }
static Tensor *b_geglu(Graph *g, Tensor **in) { return op_geglu(g, in[0], in[1]); }
static Tensor *b_dropout(Graph *g, Tensor **in) { g->dropout_calls = 0; return op_dropout(g, in[0], 0.3f); }

static int accumulates(const char *what, Graph *g, Rng *r, BuildFn f, Tensor **in, int nin, char *msg, size_t len) {
  float *g1[4] = {NULL, NULL, NULL, NULL};
  float *R = NULL;
  for (int pass = 0; pass < 2; pass++) {
    float *P[4];
    for (int k = 0; k < nin; k++) {
      in[k]->grad = arena_calloc(g->arena, in[k]->n * sizeof(float));
      P[k] = in[k]->grad;
      if (pass == 1) for (int64_t i = 0; i < in[k]->n; i++) P[k][i] = (float)urand(r, -2, 2);
      if (pass == 1) { float *c = arena_alloc(g->arena, in[k]->n * sizeof(float)); memcpy(c, P[k], in[k]->n * sizeof(float)); P[k] = c; }
    }
    Tensor *y = f(g, in);
    if (!R) R = rand_f(g, y->n, r, -1, 1);
    graph_backward(g, loss_dot(g, y, R));
    for (int k = 0; k < nin; k++) {
      if (pass == 0) { g1[k] = arena_alloc(g->arena, in[k]->n * sizeof(float)); memcpy(g1[k], in[k]->grad, in[k]->n * sizeof(float)); continue; }
      for (int64_t i = 0; i < in[k]->n; i++) {
        double want = (double)P[k][i] + g1[k][i];
        if (!(fabs(in[k]->grad[i] - want) <= 2.4e-7 * (fabs(P[k][i]) + fabs(g1[k][i])))) {
          snprintf(msg, len, "%s: input %d grad[%lld] = %.9g, expected prefill %.9g + %.9g", what, k, (long long)i,
                   in[k]->grad[i], P[k][i], g1[k][i]);
          return 0;
        }
      }
    }
  }
  return 1;
}
#define CHECK_ACC(what, f, ...) do { Tensor *_in[] = {__VA_ARGS__}; char _m[512]; \
    if (!accumulates(what, &g, &r, f, _in, (int)(sizeof _in / sizeof *_in), _m, sizeof _m)) FAILF("%s", _m); } while (0)

TEST(backward_accumulates_into_existing_grads) {
  Arena a; Graph g; arena_init(&a, 8 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 92);
  const int64_t d = 12, s2[2] = {6, d}, s4[4] = {1, 6, 2, 6}, ws[2] = {5, d}, es[2] = {5, d};
  int64_t ds = d;
  CHECK_ACC("linear", b_linear, mk(&g, "x", 2, s2, &r, -1, 1, 1), mk(&g, "w", 2, ws, &r, -1, 1, 1));
  for (acc_ta = 0; acc_ta < 2; acc_ta++)
    for (acc_tb = 0; acc_tb < 2; acc_tb++) {
      int64_t as[2] = {acc_ta ? 7 : 6, acc_ta ? 6 : 7}, bs[2] = {acc_tb ? 5 : 7, acc_tb ? 7 : 5};
      CHECK_ACC("matmul", b_matmul, mk(&g, "a", 2, as, &r, -1, 1, 1), mk(&g, "b", 2, bs, &r, -1, 1, 1));
    }
  CHECK_ACC("embedding", b_embed, mk(&g, "E", 2, es, &r, -1, 1, 1));
  CHECK_ACC("rmsnorm", b_rmsnorm, mk(&g, "x", 2, s2, &r, -1, 1, 1), mk(&g, "w", 1, &ds, &r, -1, 1, 1));
  CHECK_ACC("add", b_add, mk(&g, "a", 2, s2, &r, -1, 1, 1), mk(&g, "b", 2, s2, &r, -1, 1, 1));
  CHECK_ACC("softcap", b_softcap, mk(&g, "x", 2, s2, &r, -3, 3, 1));
  CHECK_ACC("rope", b_rope, mk(&g, "x", 4, s4, &r, -1, 1, 1));
  CHECK_ACC("geglu", b_geglu, mk(&g, "gate", 2, s2, &r, -3, 3, 1), mk(&g, "up", 2, s2, &r, -1, 1, 1));
  CHECK_ACC("dropout", b_dropout, mk(&g, "x", 2, s2, &r, 0.5, 1, 1));
  graph_free(&g); arena_free(&a);
}

/* An op whose output never reaches the loss gets no gradient (its backward sees a NULL output
 * gradient and returns): its weight's gradient stays zero, and the shared input's gradient is
 * exactly what the used branch gives. */
TEST(unused_output_gets_no_gradient) {
  Arena a; Graph g; arena_init(&a, 4 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 93);
  const int64_t xs[2] = {4, 9};
  int64_t ds = 9;
  Tensor *x = mk(&g, "x", 2, xs, &r, -1, 1, 1);
  Tensor *w = mk_param(&g, "w", 1, &ds, &r, -0.5, 0.5);
  float *R = rand_f(&g, x->n, &r, -1, 1);
  Tensor *unused = op_rmsnorm(&g, x, w, 1e-6f);
  (void)unused;
  Tensor *y = op_softcap(&g, x, 2.0f);
  graph_backward(&g, loss_dot(&g, y, R));
  for (int64_t i = 0; i < w->n; i++) CHECK(w->grad[i] == 0.0f);
  float *gx = arena_alloc(g.arena, x->n * sizeof(float));
  memcpy(gx, x->grad, x->n * sizeof(float));
  x->grad = NULL;
  Tensor *y2 = op_softcap(&g, x, 2.0f);
  graph_backward(&g, loss_dot(&g, y2, R));
  CHECK(memcmp(gx, x->grad, x->n * sizeof(float)) == 0);
  graph_free(&g); arena_free(&a);
}

/* No-grad mode records nothing and computes the same values. */
TEST(no_grad_mode_records_nothing) {
  Arena a; Graph g; arena_init(&a, 8 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 91);
  const int64_t V = 7, d = 10, es[2] = {V, d}, ws[2] = {d, d}, ids_shape[1] = {6}, hs[4] = {1, 6, 1, d};
  const int32_t ids[6] = {0, 3, 3, 6, 2, 1}, pos[6] = {0, 1, 2, 3, 4, 5};
  Tensor *E = mk_param(&g, "E", 2, es, &r, -1, 1);
  Tensor *W = mk_param(&g, "W", 2, ws, &r, -1, 1);
  int64_t ds = d;
  Tensor *ln = mk_param(&g, "ln", 1, &ds, &r, -0.5, 0.5);
  Tensor *out[2];
  for (int mode = 1; mode >= 0; mode--) {
    g.grad_enabled = mode;
    Tensor *x = op_embedding(&g, ids, 1, ids_shape, E, 3.0f);
    Tensor *h = op_rmsnorm(&g, x, ln, 1e-6f);
    Tensor *q = op_linear(&g, h, W);
    Tensor *m = op_matmul(&g, q, 0, W, 1);
    Tensor *rq = op_rope(&g, tensor_view(&g, m, 4, hs), pos, 10000.0f);
    Tensor *rv = tensor_view(&g, rq, 2, m->shape);
    Tensor *s = op_softcap(&g, rv, 3.0f);
    Tensor *gl = op_geglu(&g, s, h);
    Tensor *dr = op_dropout(&g, gl, mode ? 0.0f : 0.3f);   /* no-grad: identity whatever p */
    out[mode] = op_add(&g, dr, x);
    if (mode) { CHECK(g.n_nodes >= 8); g.n_nodes = 0; }
    else CHECK_EQ_INT(g.n_nodes, 0);
  }
  CHECK(memcmp(out[0]->data, out[1]->data, out[0]->n * sizeof(float)) == 0);
  graph_free(&g); arena_free(&a);
}

/* ---- composite: embedding + two Gemma-2-like residual MLP blocks --------------------------- */

/* Block b (spec 1.2, MLP half): h = rmsnorm(x, ln1); m = geglu(h Wgᵀ, h Wuᵀ); o = rmsnorm(m Wdᵀ, ln2);
 * x = x + o. Inputs in[]: 0 = E, then per block 1+5b.. = ln1, Wg, Wu, Wd, ln2. */
#define C_B 2
#define C_T 3
#define C_V 9
#define C_D 13
#define C_F 21
static const int32_t c_ids[C_B * C_T] = {3, 0, 8, 3, 5, 3};

static void st_composite(const void *p, double *out) {
  const St *s = p;
  const int64_t n = C_B * C_T, d = C_D, F = C_F;
  double x[C_B * C_T * C_D], h[C_B * C_T * C_D], gt[C_B * C_T * C_F], up[C_B * C_T * C_F], o[C_B * C_T * C_D], on[C_B * C_T * C_D];
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < d; j++) x[i * d + j] = s->in[0][c_ids[i] * d + j] * s->scale;
  for (int b = 0; b < 2; b++) {
    const double *ln1 = s->in[1 + 5 * b], *Wg = s->in[2 + 5 * b], *Wu = s->in[3 + 5 * b], *Wd = s->in[4 + 5 * b], *ln2 = s->in[5 + 5 * b];
    tw_rmsnorm(x, ln1, n, d, s->eps, h);
    tw_linear(h, Wg, n, d, F, gt);
    tw_linear(h, Wu, n, d, F, up);
    for (int64_t i = 0; i < n * F; i++) gt[i] = tw_gelu(gt[i]) * up[i];
    tw_linear(gt, Wd, n, F, d, o);
    tw_rmsnorm(o, ln2, n, d, s->eps, on);
    for (int64_t i = 0; i < n * d; i++) x[i] += on[i];
  }
  memcpy(out, x, sizeof x);
}

TEST(composite_two_residual_blocks) {
  Arena a; Graph g; arena_init(&a, 8 * MB); graph_init(&g, &a);
  Rng r; rng_seed(&r, 100);
  const int64_t es[2] = {C_V, C_D}, ds = C_D, gs[2] = {C_F, C_D}, dns[2] = {C_D, C_F}, is[2] = {C_B, C_T};
  Tensor *P[11];
  P[0] = mk_param(&g, "E", 2, es, &r, -0.3, 0.3);
  for (int b = 0; b < 2; b++) {
    P[1 + 5 * b] = mk_param(&g, "ln1", 1, &ds, &r, -0.6, 0.6);
    P[2 + 5 * b] = mk_param(&g, "Wg", 2, gs, &r, -0.5, 0.5);
    P[3 + 5 * b] = mk_param(&g, "Wu", 2, gs, &r, -0.5, 0.5);
    P[4 + 5 * b] = mk_param(&g, "Wd", 2, dns, &r, -0.4, 0.4);
    P[5 + 5 * b] = mk_param(&g, "ln2", 1, &ds, &r, -0.6, 0.6);
  }
  const float scale = sqrtf((float)C_D), eps = 1e-6f;
  Tensor *x = op_embedding(&g, c_ids, 2, is, P[0], scale);
  for (int b = 0; b < 2; b++) {
    Tensor *h = op_rmsnorm(&g, x, P[1 + 5 * b], eps);
    Tensor *m = op_geglu(&g, op_linear(&g, h, P[2 + 5 * b]), op_linear(&g, h, P[3 + 5 * b]));
    Tensor *o = op_rmsnorm(&g, op_linear(&g, m, P[4 + 5 * b]), P[5 + 5 * b], eps);
    x = op_add(&g, x, o);
  }
  CHECK_EQ_INT(g.n_nodes, 1 + 2 * 7);
  float *R = rand_f(&g, x->n, &r, -1, 1);
  graph_backward(&g, loss_dot(&g, x, R));
  St s = {.scale = scale, .eps = eps};
  for (int k = 0; k < 11; k++) s.in[k] = to_d(&g, P[k]->data, P[k]->n);
  double *yt = new_d(&g, x->n);
  st_composite(&s, yt);
  CHECK_ARR("output", x->data, yt, x->n, 0, 1e-5, 1e-6);
  Objective o = {st_composite, &s, x->n, R, new_d(&g, x->n)};
  for (int k = 0; k < 11; k++) {
    double *gn = new_d(&g, P[k]->n);
    numgrad(&o, s.in[k], P[k]->n, NULL, 0, 1e-3, gn);
    CHECK_MSG(maxabs_d(gn, P[k]->n) > 0, "%s: zero numeric gradient", P[k]->name);
    char what[32];
    snprintf(what, sizeof what, "d%s (block %d)", P[k]->name, k ? (k - 1) / 5 : -1);
    CHECK_ARR(what, P[k]->grad, gn, P[k]->n, 0, 1e-4, 1e-5);
  }
  graph_free(&g); arena_free(&a);
}

TEST_MAIN()
