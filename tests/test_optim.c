/* test_optim.c: AdamW, gradient clipping and learning-rate schedules.
 *
 * The AdamW reference here is written independently in double from the formulas of Loshchilov &
 * Hutter (decoupled decay) and Kingma & Ba (bias correction), with per-entry step counters.
 * tests/t_adamw_torch.sh compares the same kind of run against torch.optim.AdamW: it runs this
 * program with T5G_ADAMW_EXCHANGE=<file>, which writes the inputs and our results there and
 * exits before the test cases (see exchange_mode below). */
#include <omp.h>
#include "tests/check.h"
#include "model/params.h"
#include "model/ops.h"
#include "model/rng.h"
#include "optim/adamw.h"
#include "optim/schedule.h"

/* ---------------------------------------------------------------------------------------- */
/* A small store with every group, sizes that are not multiples of the vector width, and one
 * entry larger than the update chunk so chunk boundaries fall inside an entry. */
typedef struct { const char *name; int ndim; int64_t shape[2]; ParamGroup g; } Spec;
static const Spec specs[] = {
  {"model.encoder.embed_tokens.weight", 2, {7, 5}, PG_EMBED},
  {"model.encoder.layers.0.self_attn.q_proj.weight", 2, {24, 10}, PG_MATRIX},
  {"model.encoder.layers.0.pre_self_attn_layernorm.weight", 1, {10, 0}, PG_NORM},
  {"model.decoder.layers.0.cross_attn.k_proj.weight", 2, {6, 10}, PG_MATRIX},
  {"model.decoder.layers.0.mlp.up_proj.weight", 2, {300, 123}, PG_MATRIX},
  {"model.decoder.norm.weight", 1, {3, 0}, PG_NORM},
};
#define NSPEC ((int)(sizeof specs / sizeof *specs))
#define IDX_CROSS 3

static void make_store(ParamStore *ps, uint64_t seed) {
  params_init(ps);
  for (int i = 0; i < NSPEC; i++) params_add(ps, specs[i].name, specs[i].ndim, specs[i].shape, specs[i].g);
  params_finalize(ps);
  Rng r; rng_seed(&r, seed);
  for (int i = 0; i < ps->n; i++)
    for (int64_t j = 0; j < ps->e[i].t.n; j++) ps->e[i].t.data[j] = (float)rng_normal(&r);
}

/* Gradients for step s: normal, scaled so that some steps are clipped and some are not.
 * Frozen entries get large garbage that must be ignored. */
static void fill_grads(ParamStore *ps, int s, uint64_t seed) {
  Rng r; rng_seed(&r, seed * 1000 + s);
  double scale = (s % 2 == 0) ? 0.05 : 1e-3;  /* ~0.05*sqrt(37k) = 9.6 > 1 clipped; 0.19 < 1 not */
  for (int i = 0; i < ps->n; i++)
    for (int64_t j = 0; j < ps->e[i].t.n; j++)
      ps->e[i].t.grad[j] = ps->e[i].frozen ? 1e3f : (float)(scale * rng_normal(&r));
}

/* Independent double-precision AdamW with per-entry step counts. */
typedef struct { double *p, *m, *v; int64_t t; } RefEntry;

static void ref_step(RefEntry *re, const ParamStore *ps, const AdamWConfig *c, double lr, double max_norm,
                     double *norm_out) {
  double ss = 0;
  for (int i = 0; i < ps->n; i++) {
    if (ps->e[i].frozen) continue;
    for (int64_t j = 0; j < ps->e[i].t.n; j++) ss += (double)ps->e[i].t.grad[j] * ps->e[i].t.grad[j];
  }
  double norm = sqrt(ss);
  double k = (max_norm > 0 && norm > max_norm) ? max_norm / (norm + 1e-6) : 1.0;
  *norm_out = norm;
  for (int i = 0; i < ps->n; i++) {
    if (ps->e[i].frozen) continue;
    RefEntry *e = &re[i];
    e->t++;
    int decayed = ps->e[i].group == PG_MATRIX || (ps->e[i].group == PG_EMBED && c->decay_embed);
    double lam = decayed ? c->weight_decay : 0;
    for (int64_t j = 0; j < ps->e[i].t.n; j++) {
      double g = k * ps->e[i].t.grad[j];
      e->p[j] -= lr * lam * e->p[j];
      e->m[j] = c->beta1 * e->m[j] + (1 - c->beta1) * g;
      e->v[j] = c->beta2 * e->v[j] + (1 - c->beta2) * g * g;
      double mhat = e->m[j] / (1 - pow(c->beta1, (double)e->t));
      double vhat = e->v[j] / (1 - pow(c->beta2, (double)e->t));
      e->p[j] -= lr * mhat / (sqrt(vhat) + c->eps);
    }
  }
}

static RefEntry *ref_init(const ParamStore *ps) {
  RefEntry *re = t5g_calloc(ps->n, sizeof *re);
  for (int i = 0; i < ps->n; i++) {
    int64_t n = ps->e[i].t.n;
    re[i].p = t5g_malloc(n * sizeof(double));
    re[i].m = t5g_calloc(n, sizeof(double));
    re[i].v = t5g_calloc(n, sizeof(double));
    for (int64_t j = 0; j < n; j++) re[i].p[j] = ps->e[i].t.data[j];
  }
  return re;
}
static void ref_free(RefEntry *re, int n) {
  for (int i = 0; i < n; i++) { free(re[i].p); free(re[i].m); free(re[i].v); }
  free(re);
}

/* The frozen schedule used by the reference tests and the torch exchange: the cross-attention
 * entry is frozen for steps 0-2 and trains from step 3; the decoder MLP is frozen at step 4 only. */
static int frozen_at(int entry, int s) {
  if (entry == IDX_CROSS) return s < 3;
  if (entry == 4) return s == 4;
  return 0;
}
#define NSTEPS 7
static double lr_at(int s) { return 1e-2 * (1.0 + 0.1 * s); }

static void run_against_reference(int *t5g_failed, char *t5g_msg, size_t t5g_msglen, int decay_embed) {
  ParamStore ps; make_store(&ps, 11);
  AdamWConfig cfg; adamw_config_default(&cfg);
  cfg.beta2 = 0.99; cfg.weight_decay = 0.3; cfg.decay_embed = decay_embed;
  AdamW opt; CHECK(adamw_init(&opt, &ps, &cfg, 0, ps.n_total) == 0);
  RefEntry *re = ref_init(&ps);
  int n_clipped = 0, n_unclipped = 0;
  for (int s = 0; s < NSTEPS; s++) {
    for (int i = 0; i < ps.n; i++) params_set_frozen(&ps, i, frozen_at(i, s));
    fill_grads(&ps, s, 5);
    /* snapshot frozen entries */
    float *before = t5g_malloc(ps.n_total * 3 * sizeof(float));
    memcpy(before, ps.data, ps.n_total * sizeof(float));
    memcpy(before + ps.n_total, opt.m, ps.n_total * sizeof(float));
    memcpy(before + 2 * ps.n_total, opt.v, ps.n_total * sizeof(float));
    double rnorm;
    ref_step(re, &ps, &cfg, lr_at(s), cfg.max_grad_norm, &rnorm);
    int nonfinite = -1;
    double norm = adamw_clip_grad_norm(&ps, cfg.max_grad_norm, &nonfinite);
    CHECK_EQ_INT(nonfinite, 0);
    CHECK_CLOSE_REL(norm, rnorm, 1e-12, 0);
    if (rnorm > cfg.max_grad_norm) n_clipped++; else n_unclipped++;
    adamw_step(&opt, &ps, lr_at(s));
    CHECK_EQ_INT(opt.step, s + 1);
    for (int i = 0; i < ps.n; i++) {
      const ParamEntry *e = &ps.e[i];
      CHECK_EQ_INT(opt.entry_step[i], re[i].t);
      for (int64_t j = 0; j < e->t.n; j++) {
        int64_t k = e->offset + j;
        if (e->frozen) {
          CHECK_MSG(ps.data[k] == before[k] && opt.m[k] == before[ps.n_total + k] &&
                    opt.v[k] == before[2 * ps.n_total + k],
                    "step %d: frozen %s[%lld] changed", s, e->name, (long long)j);
        } else {
          CHECK_MSG(fabs(ps.data[k] - re[i].p[j]) <= 2e-6 + 1e-5 * fabs(re[i].p[j]),
                    "step %d: %s[%lld] = %.9g, reference %.9g", s, e->name, (long long)j, ps.data[k], re[i].p[j]);
          CHECK_CLOSE_REL(opt.m[k], re[i].m[j], 1e-5, 1e-8);
          CHECK_CLOSE_REL(opt.v[k], re[i].v[j], 1e-5, 1e-14);
        }
      }
    }
    free(before);
  }
  CHECK(n_clipped >= 2 && n_unclipped >= 2);
  /* the entry unfrozen at step 3 has its own count */
  CHECK_EQ_INT(opt.entry_step[IDX_CROSS], NSTEPS - 3);
  CHECK_EQ_INT(opt.entry_step[4], NSTEPS - 1);
  CHECK_EQ_INT(opt.entry_step[0], NSTEPS);
  /* padding between entries is never touched */
  for (int i = 0; i < ps.n; i++) {
    int64_t end = (i + 1 < ps.n) ? ps.e[i + 1].offset : ps.n_total;
    for (int64_t k = ps.e[i].offset + ps.e[i].t.n; k < end; k++) CHECK(ps.data[k] == 0 && opt.m[k] == 0);
  }
  ref_free(re, ps.n);
  adamw_free(&opt);
  params_free(&ps);
}

TEST(adamw_matches_double_reference) { run_against_reference(t5g_failed, t5g_msg, t5g_msglen, 0); }
TEST(adamw_matches_double_reference_decay_embed) { run_against_reference(t5g_failed, t5g_msg, t5g_msglen, 1); }

/* Groups: with a zero gradient, Adam's update is 0 and only decay moves p; norms never decay,
 * embeddings only with decay_embed. */
TEST(adamw_weight_decay_groups) {
  for (int de = 0; de <= 1; de++) {
    ParamStore ps; make_store(&ps, 3);
    AdamWConfig cfg; adamw_config_default(&cfg);
    cfg.weight_decay = 0.5; cfg.decay_embed = de;
    AdamW opt; CHECK(adamw_init(&opt, &ps, &cfg, 0, ps.n_total) == 0);
    float *p0 = t5g_malloc(ps.n_total * sizeof(float));
    memcpy(p0, ps.data, ps.n_total * sizeof(float));
    adamw_step(&opt, &ps, 0.1);
    for (int i = 0; i < ps.n; i++) {
      double f = ps.e[i].group == PG_MATRIX ? 0.95 : ps.e[i].group == PG_EMBED && de ? 0.95 : 1.0;
      for (int64_t j = 0; j < ps.e[i].t.n; j++)
        CHECK_CLOSE_REL(ps.e[i].t.data[j], p0[ps.e[i].offset + j] * f, 1e-6, 1e-9);
    }
    free(p0);
    adamw_free(&opt);
    params_free(&ps);
  }
}

/* Slices [0,k) + [k,n) with k inside an entry give exactly the full update; thread count does
 * not change any bit. */
TEST(adamw_slices_and_threads_bit_identical) {
  ParamStore a, b, c; make_store(&a, 7); make_store(&b, 7); make_store(&c, 7);
  AdamWConfig cfg; adamw_config_default(&cfg);
  AdamW full, s1, s2, one;
  int64_t k = a.e[4].offset + 12345;  /* inside the big entry, not a multiple of 16 */
  CHECK(adamw_init(&full, &a, &cfg, 0, a.n_total) == 0);
  CHECK(adamw_init(&s1, &b, &cfg, 0, k) == 0);
  CHECK(adamw_init(&s2, &b, &cfg, k, b.n_total) == 0);
  CHECK(adamw_init(&one, &c, &cfg, 0, c.n_total) == 0);
  int nt = omp_get_max_threads();
  for (int s = 0; s < 4; s++) {
    for (int i = 0; i < a.n; i++) { params_set_frozen(&a, i, frozen_at(i, s)); params_set_frozen(&b, i, frozen_at(i, s)); params_set_frozen(&c, i, frozen_at(i, s)); }
    fill_grads(&a, s, 9); fill_grads(&b, s, 9); fill_grads(&c, s, 9);
    double na = adamw_clip_grad_norm(&a, 1.0, NULL);
    /* ZeRO-style clipping: per-slice sums, added, then scaled per slice */
    double nb = sqrt(adamw_grad_sumsq(&b, 0, k) + adamw_grad_sumsq(&b, k, b.n_total));
    double cf = adamw_clip_coef(nb, 1.0);
    if (cf < 1) { adamw_scale_grad(&b, 0, k, (float)cf); adamw_scale_grad(&b, k, b.n_total, (float)cf); }
    CHECK_CLOSE_REL(na, nb, 1e-13, 0);
    omp_set_num_threads(1);
    double nc = adamw_clip_grad_norm(&c, 1.0, NULL);
    CHECK_MSG(nc == na, "norm with 1 thread %.17g != %.17g with %d", nc, na, nt);
    adamw_step(&one, &c, 1e-2);
    omp_set_num_threads(nt);
    adamw_step(&full, &a, 1e-2);
    adamw_step(&s1, &b, 1e-2);
    adamw_step(&s2, &b, 1e-2);
  }
  CHECK(memcmp(a.data, b.data, a.n_total * sizeof(float)) == 0);
  CHECK(memcmp(a.data, c.data, a.n_total * sizeof(float)) == 0);
  CHECK(memcmp(full.m, s1.m, k * sizeof(float)) == 0);
  CHECK(memcmp(full.m + k, s2.m, (a.n_total - k) * sizeof(float)) == 0);
  CHECK(memcmp(full.v + k, s2.v, (a.n_total - k) * sizeof(float)) == 0);
  CHECK(memcmp(full.entry_step, s1.entry_step, a.n * sizeof(int64_t)) == 0);
  CHECK(memcmp(full.entry_step, s2.entry_step, a.n * sizeof(int64_t)) == 0);
  adamw_free(&full); adamw_free(&s1); adamw_free(&s2); adamw_free(&one);
  params_free(&a); params_free(&b); params_free(&c);
}

TEST(clip_norm_nonfinite_and_frozen_excluded) {
  ParamStore ps; make_store(&ps, 1);
  params_set_frozen(&ps, 2, 1);
  for (int i = 0; i < ps.n; i++)
    for (int64_t j = 0; j < ps.e[i].t.n; j++) ps.e[i].t.grad[j] = (i == 2) ? 1e6f : 0.5f;
  int64_t cnt = params_count_trainable(&ps);
  int nf;
  double norm = adamw_clip_grad_norm(&ps, 0, &nf);  /* max_norm 0: no clipping */
  CHECK_EQ_INT(nf, 0);
  CHECK_CLOSE_REL(norm, 0.5 * sqrt((double)cnt), 1e-14, 0);
  CHECK(ps.e[0].t.grad[0] == 0.5f);
  norm = adamw_clip_grad_norm(&ps, 2.0, &nf);
  double want = 0.5 * 2.0 / (0.5 * sqrt((double)cnt) + 1e-6);
  CHECK_CLOSE_REL(ps.e[1].t.grad[7], want, 1e-6, 0);
  CHECK(ps.e[2].t.grad[0] == 1e6f);  /* frozen: untouched */
  /* the clipped gradient has norm max_norm */
  CHECK_CLOSE_REL(sqrt(adamw_grad_sumsq(&ps, 0, ps.n_total)), 2.0, 1e-6, 0);
  /* non-finite: reported, nothing scaled */
  ps.e[4].t.grad[1000] = NAN;
  float g7 = ps.e[1].t.grad[7];
  norm = adamw_clip_grad_norm(&ps, 1e-3, &nf);
  CHECK_EQ_INT(nf, 1);
  CHECK(isnan(norm));
  CHECK(ps.e[1].t.grad[7] == g7);
  ps.e[4].t.grad[1000] = INFINITY;
  norm = adamw_clip_grad_norm(&ps, 1e-3, &nf);
  CHECK_EQ_INT(nf, 1);
  CHECK(isinf(norm));
  /* a NaN in a frozen entry does not count */
  ps.e[4].t.grad[1000] = 0;
  ps.e[2].t.grad[0] = NAN;
  adamw_clip_grad_norm(&ps, 1e-3, &nf);
  CHECK_EQ_INT(nf, 0);
  params_free(&ps);
}

/* ---- Gradient accumulation: least squares y = W x + b, loss = sum_j 0.5 |W x_j + b - y_j|^2 / N
 * over N target tokens. Micro-batches of unequal sizes, each normalised by the TOTAL N and
 * accumulated, must give the same step as the single big batch. */
#define LS_IN 6
#define LS_OUT 4
#define LS_N 12
static void ls_grad_accumulate(ParamStore *ps, const float *x, const float *y, int j0, int j1, double norm) {
  float *W = ps->e[0].t.data, *b = ps->e[1].t.data, *gW = ps->e[0].t.grad, *gb = ps->e[1].t.grad;
  for (int j = j0; j < j1; j++) {
    for (int o = 0; o < LS_OUT; o++) {
      float r = b[o] - y[j * LS_OUT + o];
      for (int i = 0; i < LS_IN; i++) r += W[o * LS_IN + i] * x[j * LS_IN + i];
      float rs = (float)(r / norm);
      gb[o] += rs;
      for (int i = 0; i < LS_IN; i++) gW[o * LS_IN + i] += rs * x[j * LS_IN + i];
    }
  }
}
static void ls_store(ParamStore *ps) {
  params_init(ps);
  params_add(ps, "proj.weight", 2, (int64_t[]){LS_OUT, LS_IN}, PG_MATRIX);
  params_add(ps, "proj.bias", 1, (int64_t[]){LS_OUT}, PG_NORM);
  params_finalize(ps);
  Rng r; rng_seed(&r, 99);
  for (int64_t k = 0; k < ps->n_total; k++) ps->data[k] = (float)(0.3 * rng_normal(&r));
}

TEST(accumulation_equals_big_batch) {
  ParamStore big, acc, wrong; ls_store(&big); ls_store(&acc); ls_store(&wrong);
  AdamWConfig cfg; adamw_config_default(&cfg);
  cfg.max_grad_norm = 0.5;
  AdamW ob, oa, ow;
  CHECK(adamw_init(&ob, &big, &cfg, 0, big.n_total) == 0);
  CHECK(adamw_init(&oa, &acc, &cfg, 0, acc.n_total) == 0);
  CHECK(adamw_init(&ow, &wrong, &cfg, 0, wrong.n_total) == 0);
  const int cuts[] = {0, 5, 9, 12};  /* micro-batches of 5, 4 and 3 tokens */
  Rng r; rng_seed(&r, 4);
  for (int s = 0; s < 5; s++) {
    float x[LS_N * LS_IN], y[LS_N * LS_OUT];
    for (int k = 0; k < LS_N * LS_IN; k++) x[k] = (float)rng_normal(&r);
    for (int k = 0; k < LS_N * LS_OUT; k++) y[k] = (float)rng_normal(&r);
    params_zero_grad(&big); params_zero_grad(&acc); params_zero_grad(&wrong);
    ls_grad_accumulate(&big, x, y, 0, LS_N, LS_N);
    for (int mb = 0; mb < 3; mb++) {
      ls_grad_accumulate(&acc, x, y, cuts[mb], cuts[mb + 1], LS_N);
      /* the classic mistake: per-micro-batch mean, averaged over micro-batches */
      ls_grad_accumulate(&wrong, x, y, cuts[mb], cuts[mb + 1], 3.0 * (cuts[mb + 1] - cuts[mb]));
    }
    for (int64_t k = 0; k < big.n_total; k++) CHECK_CLOSE_REL(acc.grad[k], big.grad[k], 1e-5, 1e-7);
    double nb = adamw_clip_grad_norm(&big, cfg.max_grad_norm, NULL);
    double na = adamw_clip_grad_norm(&acc, cfg.max_grad_norm, NULL);
    adamw_clip_grad_norm(&wrong, cfg.max_grad_norm, NULL);
    CHECK_CLOSE_REL(na, nb, 1e-5, 0);
    adamw_step(&ob, &big, 3e-2); adamw_step(&oa, &acc, 3e-2); adamw_step(&ow, &wrong, 3e-2);
  }
  double maxd = 0, maxw = 0;
  for (int64_t k = 0; k < big.n_total; k++) {
    maxd = fmax(maxd, fabs(acc.data[k] - big.data[k]));
    maxw = fmax(maxw, fabs(wrong.data[k] - big.data[k]));
  }
  CHECK_MSG(maxd < 2e-5, "accumulated vs big batch: max |diff| %.3g", maxd);
  CHECK_MSG(maxw > 1e-3, "the wrongly normalised run should differ (max |diff| %.3g): test not sensitive", maxw);
  adamw_free(&ob); adamw_free(&oa); adamw_free(&ow);
  params_free(&big); params_free(&acc); params_free(&wrong);
}

/* The same contract through the engine: a tiny LM, h = x W^T, loss = softcap CE against the tied
 * matrix E (op_linear, op_softcap_ce), with ignored (-100) labels so the micro-batches have
 * unequal token counts. Each micro-batch loss uses normalizer = target tokens of the whole
 * batch; graph_backward accumulates into ps->grad. Must equal the single big batch. */
#define EN_IN 8
#define EN_D 6
#define EN_V 11
#define EN_N 14
static void engine_lm_grad(ParamStore *ps, Graph *g, const float *x, const int32_t *labels, int r0, int r1,
                           float normalizer) {
  graph_reset(g);
  Tensor *xt = tensor_wrap(g, "x", (float *)x + r0 * EN_IN, 2, (int64_t[]){r1 - r0, EN_IN});
  Tensor *h = op_linear(g, xt, &ps->e[0].t);
  Tensor *loss = op_softcap_ce(g, h, &ps->e[1].t, labels + r0, 30.0f, normalizer, NULL, NULL);
  graph_backward(g, loss);
}

TEST(accumulation_through_engine_loss) {
  ParamStore big, acc;
  for (int k = 0; k < 2; k++) {
    ParamStore *ps = k ? &acc : &big;
    params_init(ps);
    params_add(ps, "model.layers.0.mlp.up_proj.weight", 2, (int64_t[]){EN_D, EN_IN}, PG_MATRIX);
    params_add(ps, "model.embed_tokens.weight", 2, (int64_t[]){EN_V, EN_D}, PG_EMBED);
    params_finalize(ps);
    Rng r; rng_seed(&r, 12);
    for (int64_t q = 0; q < ps->n_total; q++) ps->data[q] = (float)(0.5 * rng_normal(&r));
  }
  Arena arena; arena_init(&arena, 1 << 20);
  Graph g; graph_init(&g, &arena);
  AdamWConfig cfg; adamw_config_default(&cfg);
  cfg.decay_embed = 1;
  AdamW ob, oa;
  CHECK(adamw_init(&ob, &big, &cfg, 0, big.n_total) == 0);
  CHECK(adamw_init(&oa, &acc, &cfg, 0, acc.n_total) == 0);
  const int cuts[] = {0, 4, 10, 14};
  Rng r; rng_seed(&r, 13);
  for (int s = 0; s < 4; s++) {
    float x[EN_N * EN_IN];
    int32_t labels[EN_N];
    int ntok = 0;
    for (int k = 0; k < EN_N * EN_IN; k++) x[k] = (float)rng_normal(&r);
    for (int k = 0; k < EN_N; k++) {
      labels[k] = (k % 3 == 1 || k < 2) ? -100 : (int32_t)rng_below(&r, EN_V);  /* micro-batches: 2, 4, 3 tokens */
      ntok += labels[k] != -100;
    }
    params_zero_grad(&big); params_zero_grad(&acc);
    engine_lm_grad(&big, &g, x, labels, 0, EN_N, (float)ntok);
    for (int mb = 0; mb < 3; mb++) engine_lm_grad(&acc, &g, x, labels, cuts[mb], cuts[mb + 1], (float)ntok);
    double gmax = 0;
    for (int64_t k = 0; k < big.n_total; k++) {
      CHECK_CLOSE_REL(acc.grad[k], big.grad[k], 1e-5, 1e-7);
      gmax = fmax(gmax, fabs(big.grad[k]));
    }
    CHECK(gmax > 1e-3);  /* the gradient is not trivially zero */
    adamw_clip_grad_norm(&big, cfg.max_grad_norm, NULL);
    adamw_clip_grad_norm(&acc, cfg.max_grad_norm, NULL);
    adamw_step(&ob, &big, 1e-2);
    adamw_step(&oa, &acc, 1e-2);
  }
  for (int64_t k = 0; k < big.n_total; k++) CHECK_CLOSE_REL(acc.data[k], big.data[k], 1e-5, 1e-6);
  graph_free(&g); arena_free(&arena);
  adamw_free(&ob); adamw_free(&oa);
  params_free(&big); params_free(&acc);
}

TEST(adamw_config_checks) {
  AdamWConfig c; adamw_config_default(&c);
  CHECK(adamw_config_check(&c, "x") == 0);
  c.beta2 = 1.0;
  CHECK(adamw_config_check(&c, "cfg.json") == -1);
  CHECK(strstr(t5g_last_error(), "cfg.json") && strstr(t5g_last_error(), "beta2"));
  adamw_config_default(&c); c.eps = 0;
  CHECK(adamw_config_check(&c, "x") == -1);
  ParamStore ps; make_store(&ps, 1);
  AdamW opt;
  adamw_config_default(&c);
  CHECK(adamw_init(&opt, &ps, &c, 10, ps.n_total + 1) == -1);
  CHECK(strstr(t5g_last_error(), "slice") != NULL);
  params_free(&ps);
}

/* ---- Schedules: values at key steps, computed by hand. ------------------------------------ */
TEST(schedule_key_values) {
  LrSchedule s; lr_schedule_default(&s);
  s.peak_lr = 1e-3; s.warmup_steps = 10; s.total_steps = 110; s.min_lr_ratio = 0.1;
  CHECK(lr_schedule_check(&s, "t") == 0);
  CHECK_NEAR(lr_schedule_lr(&s, 0), 1e-4, 1e-15);    /* (0+1)/10 */
  CHECK_NEAR(lr_schedule_lr(&s, 4), 5e-4, 1e-15);
  CHECK_NEAR(lr_schedule_lr(&s, 9), 1e-3, 1e-15);    /* peak at the end of warm-up */
  CHECK_NEAR(lr_schedule_lr(&s, 10), 1e-3, 1e-15);
  CHECK_NEAR(lr_schedule_lr(&s, 60), 5.5e-4, 1e-15);  /* cosine midpoint: (peak + floor) / 2 */
  CHECK_NEAR(lr_schedule_lr(&s, 35), 1e-4 + 0.45e-3 * (1 + sqrt(0.5)), 1e-15);
  CHECK_NEAR(lr_schedule_lr(&s, 110), 1e-4, 1e-15);   /* floor */
  CHECK_NEAR(lr_schedule_lr(&s, 5000), 1e-4, 1e-15);
  /* monotone after warm-up */
  for (int64_t t = 10; t < 120; t++) CHECK(lr_schedule_lr(&s, t + 1) <= lr_schedule_lr(&s, t));
  s.decay = LR_LINEAR;
  CHECK_NEAR(lr_schedule_lr(&s, 35), 1e-3 - 0.9e-3 * 0.25, 1e-15);
  CHECK_NEAR(lr_schedule_lr(&s, 60), 5.5e-4, 1e-15);
  CHECK_NEAR(lr_schedule_lr(&s, 110), 1e-4, 1e-15);
  s.min_lr_ratio = 0; s.min_lr = 2e-5;                 /* absolute floor */
  CHECK_NEAR(lr_schedule_lr(&s, 200), 2e-5, 1e-15);
  s.decay = LR_CONSTANT;
  CHECK_NEAR(lr_schedule_lr(&s, 3), 4e-4, 1e-15);
  CHECK_NEAR(lr_schedule_lr(&s, 100000), 1e-3, 1e-15);
  s.decay = LR_WSD; s.total_steps = 100; s.wsd_decay_frac = 0.2; s.min_lr_ratio = 0.1;
  CHECK(lr_schedule_check(&s, "t") == 0);
  CHECK_NEAR(lr_schedule_lr(&s, 50), 1e-3, 1e-15);
  CHECK_NEAR(lr_schedule_lr(&s, 79), 1e-3, 1e-15);
  CHECK_NEAR(lr_schedule_lr(&s, 80), 1e-3, 1e-15);
  CHECK_NEAR(lr_schedule_lr(&s, 90), 5.5e-4, 1e-15);
  CHECK_NEAR(lr_schedule_lr(&s, 100), 1e-4, 1e-15);
  s.warmup_steps = 0; s.decay = LR_COSINE; s.total_steps = 10;
  CHECK_NEAR(lr_schedule_lr(&s, 0), 1e-3, 1e-15);     /* no warm-up: starts at peak */
}

/* The second ramp (after the unequal pair's cross-attention warm-up): the cosine value times
 * (step - at + 1) / steps inside [at, at + steps), untouched elsewhere. */
TEST(schedule_rewarm) {
  LrSchedule s; lr_schedule_default(&s);
  s.peak_lr = 1e-3; s.warmup_steps = 10; s.total_steps = 110; s.min_lr_ratio = 0.1;
  LrSchedule r = s;
  r.rewarm_at = 35; r.rewarm_steps = 4;
  CHECK(lr_schedule_check(&r, "t") == 0);
  const double c35 = 1e-4 + 0.45e-3 * (1 + sqrt(0.5));    /* cosine at step 35 (schedule_key_values) */
  CHECK_NEAR(lr_schedule_lr(&r, 35), c35 * 0.25, 1e-15);
  CHECK_NEAR(lr_schedule_lr(&r, 36), lr_schedule_lr(&s, 36) * 0.5, 1e-15);
  CHECK_NEAR(lr_schedule_lr(&r, 38), lr_schedule_lr(&s, 38), 1e-15);   /* last ramp step: factor 1 */
  for (int64_t t = 0; t < 200; t++)
    if (t < 35 || t >= 39) CHECK_NEAR(lr_schedule_lr(&r, t), lr_schedule_lr(&s, t), 0);
  r.rewarm_at = 0; r.rewarm_steps = 0;                   /* off */
  for (int64_t t = 0; t < 50; t++) CHECK_NEAR(lr_schedule_lr(&r, t), lr_schedule_lr(&s, t), 0);
  r.rewarm_steps = -1;
  CHECK(lr_schedule_check(&r, "train.json") == -1);
  CHECK(strstr(t5g_last_error(), "train.json") && strstr(t5g_last_error(), "second warm-up"));
}

TEST(schedule_parse_and_check) {
  LrDecay d;
  CHECK(lr_decay_parse("Cosine", &d) == 0 && d == LR_COSINE);
  CHECK(lr_decay_parse("wsd", &d) == 0 && d == LR_WSD);
  CHECK(lr_decay_parse("linear", &d) == 0 && d == LR_LINEAR);
  CHECK(lr_decay_parse("constant", &d) == 0 && d == LR_CONSTANT);
  CHECK(lr_decay_parse("cosin", &d) == -1);
  CHECK(strstr(t5g_last_error(), "\"cosin\"") && strstr(t5g_last_error(), "cosine"));
  CHECK_STR(lr_decay_name(LR_WSD), "wsd");
  LrSchedule s; lr_schedule_default(&s);
  s.total_steps = 50; s.warmup_steps = 100;
  CHECK(lr_schedule_check(&s, "train.json") == -1);
  CHECK(strstr(t5g_last_error(), "train.json") && strstr(t5g_last_error(), "warmup_steps"));
  lr_schedule_default(&s); s.peak_lr = -1;
  CHECK(lr_schedule_check(&s, "x") == -1);
}

/* ---- Exchange mode for tests/t_adamw_torch.sh -------------------------------------------- */
/* Writes whitespace-separated tokens:
 *   beta1 beta2 eps weight_decay max_norm decay_embed nsteps n_entries
 *   per entry: name group n  then n initial values
 *   per step: lr, then per entry: frozen flag and n raw (unclipped) gradients,
 *             then our norm, then per entry n parameter values after the step.
 * Floats are printed with 9 significant digits (exact for f32). */
static void exchange_mode(const char *path) {
  FILE *f = fopen(path, "w");
  if (!f) { fprintf(stderr, "cannot write %s\n", path); exit(2); }
  ParamStore ps; make_store(&ps, 21);
  AdamWConfig cfg; adamw_config_default(&cfg);
  cfg.beta2 = 0.999; cfg.weight_decay = 0.2; cfg.decay_embed = 1; cfg.max_grad_norm = 1.0;
  AdamW opt;
  if (adamw_init(&opt, &ps, &cfg, 0, ps.n_total) != 0) { fprintf(stderr, "%s\n", t5g_last_error()); exit(2); }
  fprintf(f, "%.17g %.17g %.17g %.17g %.17g %d %d %d\n", cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay,
          cfg.max_grad_norm, cfg.decay_embed, NSTEPS, ps.n);
  for (int i = 0; i < ps.n; i++) {
    fprintf(f, "%s %d %lld\n", ps.e[i].name, (int)ps.e[i].group, (long long)ps.e[i].t.n);
    for (int64_t j = 0; j < ps.e[i].t.n; j++) fprintf(f, "%.9g ", ps.e[i].t.data[j]);
    fprintf(f, "\n");
  }
  for (int s = 0; s < NSTEPS; s++) {
    for (int i = 0; i < ps.n; i++) params_set_frozen(&ps, i, frozen_at(i, s));
    fill_grads(&ps, s, 17);
    fprintf(f, "%.17g\n", lr_at(s));
    for (int i = 0; i < ps.n; i++) {
      fprintf(f, "%d ", ps.e[i].frozen);
      for (int64_t j = 0; j < ps.e[i].t.n; j++) fprintf(f, "%.9g ", ps.e[i].t.grad[j]);
      fprintf(f, "\n");
    }
    double norm = adamw_clip_grad_norm(&ps, cfg.max_grad_norm, NULL);
    adamw_step(&opt, &ps, lr_at(s));
    fprintf(f, "%.17g\n", norm);
    for (int i = 0; i < ps.n; i++) {
      for (int64_t j = 0; j < ps.e[i].t.n; j++) fprintf(f, "%.9g ", ps.e[i].t.data[j]);
      fprintf(f, "\n");
    }
  }
  int bad = fclose(f) != 0;
  adamw_free(&opt);
  params_free(&ps);
  exit(bad ? 2 : 0);
}

__attribute__((constructor(200))) static void maybe_exchange(void) {
  const char *p = getenv("T5G_ADAMW_EXCHANGE");
  if (p && *p) exchange_mode(p);
}

TEST_MAIN()
