/* test_ops_loss.c: op_softcap_ce, op_softcap_ce_distill, logits_topk, logits_full against an
 * independent double-precision twin.
 *
 * The twin (twin_loss) computes, per row in double: z = h·E_v, z ← cap·tanh(z/cap), log-sum-exp,
 * −log p(label), and for distillation −Σ p_j log softmax(z/T)[id_j] with the T² factor, exactly
 * as written in ops.h; it shares no code with model/ops_loss.c. The engine's gradients (seeded by
 * graph_backward with d(loss) = 1) are compared with central differences of the twin (double,
 * eps 1e-5) for every element of h and E.
 */
#include "tests/check.h"
#include "model/ops.h"
#include "model/tensor.h"
#include <stdint.h>

static uint64_t rng_state = 0x1234567887654321ULL;
static double urand(void) {   /* uniform in [-1, 1) (xorshift64*) */
  rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
  uint64_t x = rng_state * 0x2545F4914F6CDD1DULL;
  return (double)(x >> 11) / (double)(1ULL << 52) - 1.0;
}

typedef struct {
  int N, V, d;
  float *h, *E;
  int32_t *labels;
  float cap, normalizer;
  /* distillation (distill = 0: plain cross-entropy) */
  int distill, k;
  int32_t *t_ids;        /* NULL: full teacher */
  float *t_probs, T, alpha;
} Prob;

static void prob_make(Prob *p, int N, int V, int d, double hamp, double eamp, double ignore_frac, float cap) {
  memset(p, 0, sizeof *p);
  p->N = N; p->V = V; p->d = d; p->cap = cap;
  p->h = malloc(sizeof(float) * N * d); p->E = malloc(sizeof(float) * V * d);
  p->labels = malloc(sizeof(int32_t) * N);
  for (int i = 0; i < N * d; i++) p->h[i] = (float)(hamp * urand());
  for (int i = 0; i < V * d; i++) p->E[i] = (float)(eamp * urand());
  int cnt = 0;
  for (int i = 0; i < N; i++) {
    p->labels[i] = (urand() + 1) * 0.5 < ignore_frac ? -100 : (int32_t)((urand() + 1) * 0.5 * V) % V;
    cnt += p->labels[i] != -100;
  }
  p->normalizer = (float)(cnt + 3);   /* deliberately not the row count (all-rank batch) */
}

static void teacher_make(Prob *p, int k, float T, float alpha) {
  p->distill = 1; p->k = k; p->T = T; p->alpha = alpha;
  p->t_probs = malloc(sizeof(float) * p->N * k);
  p->t_ids = k < p->V ? malloc(sizeof(int32_t) * p->N * k) : NULL;
  for (int i = 0; i < p->N; i++) {
    double s = 0;
    for (int j = 0; j < k; j++) { p->t_probs[i * k + j] = (float)(urand() + 1.05); s += p->t_probs[i * k + j]; }
    for (int j = 0; j < k; j++) p->t_probs[i * k + j] = (float)(p->t_probs[i * k + j] / s);
    if (p->t_ids) {    /* k distinct ids */
      for (int j = 0; j < k; j++) {
        int32_t id; int dup;
        do { id = (int32_t)((urand() + 1) * 0.5 * p->V) % p->V; dup = 0; for (int m = 0; m < j; m++) dup |= p->t_ids[i * k + m] == id; } while (dup);
        p->t_ids[i * k + j] = id;
      }
    }
  }
}

static void prob_free(Prob *p) { free(p->h); free(p->E); free(p->labels); free(p->t_ids); free(p->t_probs); }

typedef struct { double sum_nll; long n_tokens, n_correct; } TwinStats;

/* The loss of ops.h in double. hd [N,d], Ed [V,d]. row_nll optional. */
static double twin_loss(const Prob *p, const double *hd, const double *Ed, double *row_nll, TwinStats *st) {
  double *z = malloc(sizeof(double) * p->V), total = 0;
  if (st) memset(st, 0, sizeof *st);
  for (int i = 0; i < p->N; i++) {
    if (row_nll) row_nll[i] = 0;
    if (p->labels[i] == -100) continue;
    double mx = -1e300; int am = 0;
    for (int v = 0; v < p->V; v++) {
      double s = 0;
      for (int e = 0; e < p->d; e++) s += hd[(size_t)i * p->d + e] * Ed[(size_t)v * p->d + e];
      if (p->cap > 0) s = p->cap * tanh(s / p->cap);
      z[v] = s;
      if (s > mx) { mx = s; am = v; }
    }
    double se = 0;
    for (int v = 0; v < p->V; v++) se += exp(z[v] - mx);
    double lse = mx + log(se), nll = lse - z[p->labels[i]], li = nll;
    if (p->distill) {
      double mT = mx / p->T, seT = 0;
      for (int v = 0; v < p->V; v++) seT += exp(z[v] / p->T - mT);
      double lseT = mT + log(seT), soft = 0;
      for (int j = 0; j < p->k; j++) {
        int id = p->t_ids ? p->t_ids[i * p->k + j] : j;
        soft -= p->t_probs[i * p->k + j] * (z[id] / p->T - lseT);
      }
      li = (1 - p->alpha) * nll + p->alpha * p->T * p->T * soft;
    }
    total += li;
    if (row_nll) row_nll[i] = nll;
    if (st) { st->sum_nll += nll; st->n_tokens++; st->n_correct += am == p->labels[i]; }
  }
  free(z);
  return total / p->normalizer;
}

typedef struct { float loss; float *dh, *dE, *row_nll; LossStats st; int n_nodes; int e_grad_untouched; } EngineOut;

/* Engine forward + backward. rh/rE: whether h / E require grad. A frozen E gets a sentinel grad
 * buffer that must stay untouched. */
static void engine_run(const Prob *p, int rh, int rE, EngineOut *eo) {
  Arena a; arena_init(&a, 0); Graph g; graph_init(&g, &a);
  Tensor *h = tensor_new2(&g, "h", p->N, p->d), *E = tensor_new2(&g, "E", p->V, p->d);
  memcpy(h->data, p->h, sizeof(float) * p->N * p->d);
  memcpy(E->data, p->E, sizeof(float) * p->V * p->d);
  h->requires_grad = rh; E->requires_grad = rE;
  float *sentinel = NULL;
  if (!rE) { sentinel = malloc(sizeof(float) * p->V * p->d); for (int i = 0; i < p->V * p->d; i++) sentinel[i] = 7.0f; E->grad = sentinel; }
  memset(eo, 0, sizeof *eo);
  eo->row_nll = malloc(sizeof(float) * p->N);
  for (int i = 0; i < p->N; i++) eo->row_nll[i] = 123.0f;
  memset(&eo->st, 0xff, sizeof eo->st);   /* must be overwritten */
  Tensor *L = p->distill
    ? op_softcap_ce_distill(&g, h, E, p->labels, p->t_ids, p->t_probs, p->k, p->cap, p->T, p->alpha, p->normalizer, &eo->st)
    : op_softcap_ce(&g, h, E, p->labels, p->cap, p->normalizer, eo->row_nll, &eo->st);
  eo->loss = L->data[0];
  eo->n_nodes = g.n_nodes;
  graph_backward(&g, L);
  if (rh && h->grad) { eo->dh = malloc(sizeof(float) * p->N * p->d); memcpy(eo->dh, h->grad, sizeof(float) * p->N * p->d); }
  if (rE && E->grad) { eo->dE = malloc(sizeof(float) * p->V * p->d); memcpy(eo->dE, E->grad, sizeof(float) * p->V * p->d); }
  eo->e_grad_untouched = 1;
  if (sentinel) for (int i = 0; i < p->V * p->d; i++) eo->e_grad_untouched &= sentinel[i] == 7.0f;
  free(sentinel);
  graph_free(&g); arena_free(&a);
}
static void engine_free(EngineOut *e) { free(e->dh); free(e->dE); free(e->row_nll); }

static long compare(const float *a, const double *b, size_t n, double rtol, double atol_rel, double *worst) {
  double mx = 0;
  for (size_t i = 0; i < n; i++) if (fabs(b[i]) > mx) mx = fabs(b[i]);
  long bad = -1; *worst = 0;
  for (size_t i = 0; i < n; i++) {
    double err = fabs(a[i] - b[i]), tol = rtol * fabs(b[i]) + atol_rel * mx + 1e-30;
    if (err / tol > *worst) *worst = err / tol;
    if (err > tol && bad < 0) bad = (long)i;
  }
  return bad;
}

static double *to_double(const float *x, size_t n) {
  double *d = malloc(sizeof(double) * n);
  for (size_t i = 0; i < n; i++) d[i] = x[i];
  return d;
}

/* Forward value, per-row NLL, stats and all gradients against the twin. */
static int check_prob(const Prob *p, int check_stats, char *msg, size_t ml) {
  EngineOut eo; engine_run(p, 1, 1, &eo);
  double *hd = to_double(p->h, (size_t)p->N * p->d), *Ed = to_double(p->E, (size_t)p->V * p->d);
  double *rn = malloc(sizeof(double) * p->N);
  TwinStats ts;
  double ref = twin_loss(p, hd, Ed, rn, &ts), w;
  int rc = 0;
  if (!(fabs(eo.loss - ref) <= 1e-5 * fabs(ref) + 1e-7)) { snprintf(msg, ml, "loss %.9g vs twin %.9g", eo.loss, ref); rc = 1; goto done; }
  if (eo.n_nodes != 1) { snprintf(msg, ml, "%d tape nodes", eo.n_nodes); rc = 1; goto done; }
  if (eo.st.n_tokens != ts.n_tokens || fabs(eo.st.sum_nll - ts.sum_nll) > 1e-5 * fabs(ts.sum_nll) + 1e-6 ||
      (check_stats && eo.st.n_correct != ts.n_correct)) {
    snprintf(msg, ml, "stats: tokens %lld/%ld sum_nll %.9g/%.9g correct %lld/%ld", (long long)eo.st.n_tokens, ts.n_tokens,
             eo.st.sum_nll, ts.sum_nll, (long long)eo.st.n_correct, ts.n_correct);
    rc = 1; goto done;
  }
  if (!p->distill) {
    long b = compare(eo.row_nll, rn, p->N, 1e-5, 1e-7, &w);
    if (b >= 0) { snprintf(msg, ml, "row_nll[%ld] %.9g vs %.9g", b, eo.row_nll[b], rn[b]); rc = 1; goto done; }
  }
  struct { const char *name; double *x; float *g; size_t n; } t[2] = {
    {"dh", hd, eo.dh, (size_t)p->N * p->d}, {"dE", Ed, eo.dE, (size_t)p->V * p->d}};
  for (int ti = 0; ti < 2 && !rc; ti++) {
    if (!t[ti].g) { snprintf(msg, ml, "%s missing", t[ti].name); rc = 1; break; }
    double *num = malloc(sizeof(double) * t[ti].n);
    for (size_t i = 0; i < t[ti].n; i++) {
      double x0 = t[ti].x[i], eps = 1e-5;
      t[ti].x[i] = x0 + eps; double lp = twin_loss(p, hd, Ed, NULL, NULL);
      t[ti].x[i] = x0 - eps; double lm = twin_loss(p, hd, Ed, NULL, NULL);
      t[ti].x[i] = x0;
      num[i] = (lp - lm) / (2 * eps);
    }
    long b = compare(t[ti].g, num, t[ti].n, 1e-4, 1e-6, &w);
    if (b >= 0) { snprintf(msg, ml, "%s[%ld]: engine %.9g numeric %.9g (worst err/tol %.3g)", t[ti].name, b, t[ti].g[b], num[b], w); rc = 1; }
    free(num);
  }
done:
  free(hd); free(Ed); free(rn); engine_free(&eo);
  return rc;
}

#define CHECK_PROB(p, st) do { char _m[512]; if (check_prob((p), (st), _m, sizeof _m)) FAILF("%s", _m); } while (0)

/* ---- cross-entropy ------------------------------------------------------------------------ */

TEST(ce_chunks_ignore_v_odd) {
  /* 300 rows (> one chunk of 256), V = 37, 15% ignored rows, cap 30 with logits up to ~±40 */
  Prob p; prob_make(&p, 300, 37, 8, 2.0, 2.0, 0.15, 30.0f);
  CHECK_PROB(&p, 1);
  prob_free(&p);
}

TEST(ce_cap_saturation) {
  /* logits of order ±100 against cap 3: most entries saturate to ±3 */
  Prob p; prob_make(&p, 40, 21, 6, 6.0, 6.0, 0.1, 3.0f);
  CHECK_PROB(&p, 0);   /* argmax ties among saturated logits make n_correct ill-posed */
  prob_free(&p);
}

TEST(ce_no_cap) {
  Prob p; prob_make(&p, 50, 19, 5, 1.0, 1.0, 0.2, 0.0f);
  CHECK_PROB(&p, 1);
  prob_free(&p);
}

TEST(ce_row_nll_and_stats_values) {
  /* one hand-checkable row: d = 1, h = 0 -> all logits 0 -> nll = log V; argmax = index 0 */
  Prob p; prob_make(&p, 3, 5, 1, 1.0, 1.0, 0.0, 30.0f);
  p.h[0] = 0; p.labels[0] = 0; p.labels[1] = -100; p.labels[2] = 3; p.normalizer = 2;
  EngineOut eo; engine_run(&p, 1, 1, &eo);
  CHECK_NEAR(eo.row_nll[0], log(5.0), 1e-6);
  CHECK(eo.row_nll[1] == 0.0f);
  CHECK_EQ_INT(eo.st.n_tokens, 2);
  CHECK_NEAR(eo.st.sum_nll, eo.row_nll[0] + eo.row_nll[2], 1e-6);
  CHECK_NEAR(eo.loss, (eo.row_nll[0] + eo.row_nll[2]) / 2.0, 1e-6);
  for (int e = 0; e < 1; e++) CHECK(eo.dh[1 * 1 + e] == 0.0f);   /* ignored row: no gradient */
  engine_free(&eo); prob_free(&p);
}

TEST(ce_frozen_E) {
  Prob p; prob_make(&p, 30, 23, 6, 1.5, 1.5, 0.1, 30.0f);
  EngineOut fz, all;
  engine_run(&p, 1, 0, &fz);
  engine_run(&p, 1, 1, &all);
  CHECK_MSG(fz.e_grad_untouched, "frozen E's gradient buffer was written");
  CHECK(fz.dE == NULL && fz.dh != NULL);
  double *hd = to_double(p.h, 30 * 6), *Ed = to_double(p.E, 23 * 6);
  for (int i = 0; i < 30 * 6; i++) {
    double x0 = hd[i];
    hd[i] = x0 + 1e-5; double lp = twin_loss(&p, hd, Ed, NULL, NULL);
    hd[i] = x0 - 1e-5; double lm = twin_loss(&p, hd, Ed, NULL, NULL);
    hd[i] = x0;
    double num = (lp - lm) / 2e-5;
    CHECK_CLOSE_REL(fz.dh[i], num, 1e-4, 1e-7);
    CHECK(fz.dh[i] == all.dh[i]);
  }
  free(hd); free(Ed); engine_free(&fz); engine_free(&all); prob_free(&p);
}

TEST(ce_all_ignored) {
  Prob p; prob_make(&p, 10, 7, 4, 1.0, 1.0, 1.1, 30.0f);
  EngineOut eo; engine_run(&p, 1, 1, &eo);
  CHECK(eo.loss == 0.0f);
  CHECK_EQ_INT(eo.st.n_tokens, 0);
  CHECK(eo.st.sum_nll == 0.0);
  for (int i = 0; i < 10 * 4; i++) CHECK(!eo.dh || eo.dh[i] == 0.0f);
  engine_free(&eo); prob_free(&p);
}

/* ---- distillation ------------------------------------------------------------------------- */

TEST(distill_topk_alphas) {
  float alphas[3] = {0.0f, 0.5f, 1.0f};
  for (int ai = 0; ai < 3; ai++) {
    Prob p; prob_make(&p, 60, 29, 6, 1.5, 1.5, 0.15, 30.0f);
    teacher_make(&p, 5, 2.0f, alphas[ai]);
    char m[512];
    CHECK_MSG(!check_prob(&p, 1, m, sizeof m), "alpha %.1f: %s", alphas[ai], m);
    prob_free(&p);
  }
}

TEST(distill_full_teacher) {
  float Ts[2] = {1.0f, 1.5f};
  for (int ti = 0; ti < 2; ti++) {
    Prob p; prob_make(&p, 40, 17, 5, 1.5, 1.5, 0.1, 30.0f);
    teacher_make(&p, 17, Ts[ti], 0.5f);
    char m[512];
    CHECK_MSG(!check_prob(&p, 1, m, sizeof m), "T %.1f: %s", Ts[ti], m);
    prob_free(&p);
  }
}

TEST(distill_alpha0_equals_ce_exactly) {
  Prob p; prob_make(&p, 280, 33, 6, 1.5, 1.5, 0.2, 30.0f);
  EngineOut ce; engine_run(&p, 1, 1, &ce);
  teacher_make(&p, 4, 2.0f, 0.0f);
  EngineOut ds; engine_run(&p, 1, 1, &ds);
  CHECK(ce.loss == ds.loss);
  CHECK(ce.st.sum_nll == ds.st.sum_nll && ce.st.n_correct == ds.st.n_correct && ce.st.n_tokens == ds.st.n_tokens);
  CHECK(memcmp(ce.dh, ds.dh, sizeof(float) * 280 * 6) == 0);
  CHECK(memcmp(ce.dE, ds.dE, sizeof(float) * 33 * 6) == 0);
  engine_free(&ce); engine_free(&ds); prob_free(&p);
}

/* ---- no-grad helpers ---------------------------------------------------------------------- */

static void twin_logits(const Prob *p, double *z) {
  for (int i = 0; i < p->N; i++)
    for (int v = 0; v < p->V; v++) {
      double s = 0;
      for (int e = 0; e < p->d; e++) s += (double)p->h[i * p->d + e] * p->E[v * p->d + e];
      z[i * p->V + v] = p->cap > 0 ? p->cap * tanh(s / p->cap) : s;
    }
}

TEST(logits_full_matches_twin) {
  Prob p; prob_make(&p, 20, 37, 7, 2.0, 2.0, 0.0, 30.0f);
  double *z = malloc(sizeof(double) * 20 * 37); twin_logits(&p, z);
  float *out = malloc(sizeof(float) * 20 * 37);
  Tensor E = {0}; int64_t s[2] = {37, 7}; tensor_set_shape(&E, 2, s); E.data = p.E;
  logits_full(p.h, 20, &E, 30.0f, out);
  double w; long b = compare(out, z, 20 * 37, 1e-5, 1e-7, &w);
  CHECK_MSG(b < 0, "logit %ld: %.9g vs %.9g", b, b >= 0 ? out[b] : 0, b >= 0 ? z[b] : 0);
  free(z); free(out); prob_free(&p);
}

TEST(logits_topk_order_and_renorm) {
  const int N = 300, V = 41, d = 6;   /* > one chunk of rows */
  Prob p; prob_make(&p, N, V, d, 1.5, 1.5, 0.0, 30.0f);
  double *z = malloc(sizeof(double) * N * V); twin_logits(&p, z);
  Tensor E = {0}; int64_t s[2] = {V, d}; tensor_set_shape(&E, 2, s); E.data = p.E;
  const float T = 1.7f;
  int ks[3] = {1, 6, V};
  for (int ki = 0; ki < 3; ki++) {
    int k = ks[ki];
    int32_t *ids = malloc(sizeof(int32_t) * N * k); float *pr = malloc(sizeof(float) * N * k);
    logits_topk(p.h, N, &E, 30.0f, T, k, ids, pr);
    for (int i = 0; i < N; i++) {
      /* twin: sort the ids by z descending (selection), renormalise over the k */
      const double *zi = z + (size_t)i * V;
      int used[64] = {0}, ord[64];
      for (int j = 0; j < k; j++) {
        int best = -1;
        for (int v = 0; v < V; v++) if (!used[v] && (best < 0 || zi[v] > zi[best])) best = v;
        used[best] = 1; ord[j] = best;
      }
      double mx = zi[ord[0]] / T, sum = 0, psum = 0;
      for (int j = 0; j < k; j++) sum += exp(zi[ord[j]] / T - mx);
      for (int j = 0; j < k; j++) {
        CHECK_MSG(ids[i * k + j] == ord[j], "k=%d row %d rank %d: id %d, twin %d", k, i, j, ids[i * k + j], ord[j]);
        double want = exp(zi[ord[j]] / T - mx) / sum;
        CHECK_CLOSE_REL(pr[i * k + j], want, 1e-5, 1e-8);
        if (j) CHECK(pr[i * k + j] <= pr[i * k + j - 1]);
        psum += pr[i * k + j];
      }
      CHECK_NEAR(psum, 1.0, 1e-5);
    }
    free(ids); free(pr);
  }
  /* k = V without ids: the full softmax in vocabulary order */
  float *full = malloc(sizeof(float) * N * V);
  logits_topk(p.h, N, &E, 30.0f, T, V, NULL, full);
  for (int i = 0; i < N; i++) {
    const double *zi = z + (size_t)i * V;
    double mx = -1e300, sum = 0;
    for (int v = 0; v < V; v++) if (zi[v] / T > mx) mx = zi[v] / T;
    for (int v = 0; v < V; v++) sum += exp(zi[v] / T - mx);
    for (int v = 0; v < V; v++) CHECK_CLOSE_REL(full[i * V + v], exp(zi[v] / T - mx) / sum, 1e-5, 1e-8);
  }
  free(full); free(z); prob_free(&p);
}

TEST(logits_topk_ties_lower_id_first) {
  /* E rows 2, 5 and 7 identical: equal logits; ranks must list them by id */
  const int V = 9, d = 3;
  float E_[27], h_[3] = {0.3f, -0.2f, 0.5f};
  for (int i = 0; i < 27; i++) E_[i] = (float)(0.1 * urand());
  for (int e = 0; e < 3; e++) { E_[2 * 3 + e] = E_[5 * 3 + e] = E_[7 * 3 + e] = 2.0f; }
  Tensor E = {0}; int64_t s[2] = {V, d}; tensor_set_shape(&E, 2, s); E.data = E_;
  int32_t ids[4]; float pr[4];
  logits_topk(h_, 1, &E, 30.0f, 1.0f, 4, ids, pr);
  CHECK_EQ_INT(ids[0], 2); CHECK_EQ_INT(ids[1], 5); CHECK_EQ_INT(ids[2], 7);
  CHECK(pr[0] == pr[1] && pr[1] == pr[2] && pr[3] < pr[2]);
}

/* No-grad mode (evaluation): same loss, row NLL and stats, nothing recorded, and the chunk
 * buffers are given back to the arena. */
TEST(ce_no_grad_mode) {
  Prob p; prob_make(&p, 100, 300, 8, 1.5, 1.5, 0.1, 30.0f);
  EngineOut eo; engine_run(&p, 1, 1, &eo);
  Arena a; arena_init(&a, 0); Graph g; graph_init(&g, &a);
  Tensor *h = tensor_wrap(&g, "h", p.h, 2, (int64_t[]){100, 8});
  Tensor *E = tensor_wrap(&g, "E", p.E, 2, (int64_t[]){300, 8});
  h->requires_grad = E->requires_grad = 1;
  g.grad_enabled = 0;
  float rn[100]; LossStats st;
  size_t before = a.used;
  Tensor *L = op_softcap_ce(&g, h, E, p.labels, p.cap, p.normalizer, rn, &st);
  CHECK_EQ_INT(g.n_nodes, 0);
  CHECK_MSG(a.used - before < 4096, "arena grew by %zu bytes", a.used - before);
  CHECK(L->data[0] == eo.loss);
  CHECK(memcmp(rn, eo.row_nll, sizeof rn) == 0);
  CHECK(st.sum_nll == eo.st.sum_nll && st.n_tokens == eo.st.n_tokens && st.n_correct == eo.st.n_correct);
  graph_free(&g); arena_free(&a); engine_free(&eo); prob_free(&p);
}

TEST_MAIN()
