/* weights_bf16.c: bf16 weights for inference and the inference loader (see weights_bf16.h). */
#define _GNU_SOURCE
#include "model/logit_rows.h"
#include "model/weights_bf16.h"
#include "model/gemm.h"
#include "model/hf_io.h"
#include "model/memory.h"
#include "model/runtime.h"
#include "model/safetensors.h"
#include "model/vmath.h"
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAR_MIN 65536   /* elements below which a conversion loop stays on one thread */
#define IGNORE_INDEX (-100)

struct WeightsBf16 {
  const ParamEntry *e;      /* the model's entries (heap array of the ParamStore; stable) */
  int n_entries;
  uint16_t *w;              /* [n_total] bf16 values at ParamEntry.offset */
  int64_t n_total;
  float *norms;             /* f32 copies of the 1-D entries (their Tensors point here) */
  float *scratch;           /* one layer's matrices in f32 */
  int64_t scratch_n;
  const LayerParams *cur;   /* the layer the scratch holds, or NULL */
  float *head;              /* [head_threads][head_rows * d_max] LM-head blocks */
  int head_threads;
  int64_t head_rows, d_max;
  int head_forced;          /* wbf16_set_head_rows was called with rows > 0: always blocks */
};

/* ---- conversions ---------------------------------------------------------------------------- */

static inline float bf16f(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f; memcpy(&f, &u, 4);
  return f;
}

/* dst[i] = f32(src[i]); vectorised (the shift is exact), OpenMP for long runs. */
static void bf16_to_f32(const uint16_t *restrict src, float *restrict dst, int64_t n) {
  uint32_t *restrict d32 = (uint32_t *)dst;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN && !omp_in_parallel())
  for (int64_t i = 0; i < n; i++) d32[i] = (uint32_t)src[i] << 16;
}

/* Weight buffers: 2 MiB aligned and advised for transparent huge pages (THP "madvise" mode, the
 * Debian default), so that where the kernel can provide huge pages, filling gigabytes costs
 * thousands of page faults instead of millions. Freed with free(). */
static void *big_alloc(size_t bytes) {
  const size_t huge = (size_t)2 << 20;
  void *p = NULL;
  size_t r = (bytes + huge - 1) / huge * huge;
  if (posix_memalign(&p, huge, r ? r : huge) != 0) t5g_fatal("out of memory allocating %zu bytes of weights", bytes);
  if (r >= huge) madvise(p, r, MADV_HUGEPAGE);   /* advisory */
  return p;
}

static inline const ParamEntry *entry_of(const Tensor *t) {
  return (const ParamEntry *)((const char *)t - offsetof(ParamEntry, t));
}

int weights_mode_parse(const char *s, WeightsMode *out) {
  if (!strcmp(s, "auto")) *out = WEIGHTS_AUTO;
  else if (!strcmp(s, "f32") || !strcmp(s, "fp32") || !strcmp(s, "float32")) *out = WEIGHTS_F32;
  else if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16")) *out = WEIGHTS_BF16;
  else return t5g_error("--weights: expected auto, f32 or bf16, found \"%s\"", s);
  return 0;
}

/* ---- sizes ---------------------------------------------------------------------------------- */

static int64_t al16(int64_t n) { return (n + 15) & ~(int64_t)15; }

/* f32 elements of one layer's matrices (as laid out in the scratch). */
static int64_t layer_matrix_floats(const StackConfig *s, int cross, int enc_width) {
  int64_t d = s->hidden_size, F = s->intermediate_size;
  int64_t qd = (int64_t)s->num_attention_heads * s->head_dim, kd = (int64_t)s->num_key_value_heads * s->head_dim;
  int64_t n = al16(qd * d) + 2 * al16(kd * d) + al16(d * qd) + 2 * al16(F * d) + al16(d * F);
  if (cross) n += al16(qd * d) + 2 * al16(kd * enc_width) + al16(d * qd);
  return n;
}

static int64_t head_rows_for(int64_t d) {
  int64_t r = WBF16_HEAD_BLOCK_BYTES / (4 * (d > 0 ? d : 1));
  r = r / 16 * 16;
  return r < 16 ? 16 : r;
}

int64_t wbf16_extra_bytes(const ModelConfig *c, int threads) {
  int64_t scratch = layer_matrix_floats(&c->dec, c->kind == MODEL_T5GEMMA, c->dec.cross_attention_hidden_size);
  int64_t norms = (int64_t)(4 * c->dec.num_hidden_layers + 1) * al16(c->dec.hidden_size) + 2 * c->dec.num_hidden_layers * al16(c->dec.hidden_size);
  int64_t d = c->dec.hidden_size;
  if (c->kind == MODEL_T5GEMMA) {
    int64_t e = layer_matrix_floats(&c->enc, 0, 0);
    if (e > scratch) scratch = e;
    norms += (int64_t)(4 * c->enc.num_hidden_layers + 1) * al16(c->enc.hidden_size);
  }
  if (threads < 1) threads = 1;
  int64_t hr = head_rows_for(d);
  if (hr > c->dec.vocab_size) hr = c->dec.vocab_size;   /* a block never exceeds the vocabulary */
  return 4 * (scratch + norms + (int64_t)threads * hr * d);
}

/* ---- construction --------------------------------------------------------------------------- */

static const LayerParams *layer_list_matrices(const LayerParams *L, Tensor **ts) {
  Tensor *a[11] = {L->q, L->k, L->v, L->o, L->xq, L->xk, L->xv, L->xo, L->gate, L->up, L->down};
  memcpy(ts, a, sizeof a);
  return L;
}

/* Storage for a planned model (model_plan + model_resolve done): bf16 buffer, f32 norms,
 * scratch; every entry frozen, matrices and embeddings without data. */
static void attach(Model *m) {
  ParamStore *ps = &m->ps;
  WeightsBf16 *w = t5g_calloc(1, sizeof *w);
  w->e = ps->e;
  w->n_entries = ps->n;
  w->n_total = ps->n_total;
  w->w = big_alloc((size_t)ps->n_total * sizeof(uint16_t));
  int64_t nn = 0;
  for (int i = 0; i < ps->n; i++) if (ps->e[i].t.ndim == 1) nn += al16(ps->e[i].t.n);
  w->norms = t5g_alloc_aligned((size_t)(nn ? nn : 1) * sizeof(float));
  memset(w->norms, 0, (size_t)(nn ? nn : 1) * sizeof(float));
  nn = 0;
  for (int i = 0; i < ps->n; i++) {
    ParamEntry *e = &ps->e[i];
    e->frozen = 1;
    e->t.requires_grad = 0;
    e->t.grad = NULL;
    if (e->t.ndim == 1) { e->t.data = w->norms + nn; nn += al16(e->t.n); }
    else e->t.data = NULL;
  }
  int64_t sc = 0, dmax = 1;
  const StackParams *st[2] = {&m->enc, &m->dec};
  for (int k = 0; k < 2; k++) {
    const StackParams *sp = st[k];
    if (!sp->cfg || !sp->layers) continue;
    if (sp->cfg->hidden_size > dmax) dmax = sp->cfg->hidden_size;
    for (int l = 0; l < sp->cfg->num_hidden_layers; l++) {
      Tensor *ts[11];
      layer_list_matrices(&sp->layers[l], ts);
      int64_t s = 0;
      for (int j = 0; j < 11; j++) if (ts[j]) s += al16(ts[j]->n);
      if (s > sc) sc = s;
    }
  }
  w->scratch_n = sc;
  w->scratch = t5g_alloc_aligned((size_t)(sc ? sc : 1) * sizeof(float));
  w->d_max = dmax;
  w->head_rows = head_rows_for(dmax);
  ps->data = NULL;
  ps->grad = NULL;
  ps->finalized = 1;
  m->dec.bf16 = w;
  if (m->cfg.kind == MODEL_T5GEMMA) m->enc.bf16 = w;
}

void wbf16_free(WeightsBf16 *w) {
  if (!w) return;
  free(w->w); free(w->norms); free(w->scratch); free(w->head);
  free(w);
}

void wbf16_set_head_rows(Model *m, int64_t rows) {
  WeightsBf16 *w = m->dec.bf16;
  T5G_ASSERT(w && rows >= 0);
  w->head_rows = rows > 0 ? rows : head_rows_for(w->d_max);
  w->head_forced = rows > 0;
  free(w->head);
  w->head = NULL;
  w->head_threads = 0;
}

/* After the bf16 buffer is filled: decode the norms. */
static void decode_norms(Model *m) {
  WeightsBf16 *w = m->dec.bf16;
  for (int i = 0; i < m->ps.n; i++) {
    ParamEntry *e = &m->ps.e[i];
    if (e->t.ndim == 1) bf16_to_f32(w->w + e->offset, e->t.data, e->t.n);
  }
}

void wbf16_round_params(ParamStore *ps) {
  for (int i = 0; i < ps->n; i++) {
    float *x = ps->e[i].t.data;
    for (int64_t j = 0; j < ps->e[i].t.n; j++) x[j] = bf16f(st_f32_to_bf16(x[j]));
  }
}

void model_to_bf16(Model *dst, const Model *src) {
  if (model_plan(dst, &src->cfg) != 0) t5g_die_last();
  model_resolve(dst);
  attach(dst);
  WeightsBf16 *w = dst->dec.bf16;
  for (int i = 0; i < src->ps.n; i++) {
    const ParamEntry *e = &src->ps.e[i];
    T5G_ASSERT(!strcmp(e->name, dst->ps.e[i].name) && e->offset == dst->ps.e[i].offset);
    for (int64_t j = 0; j < e->t.n; j++) w->w[e->offset + j] = st_f32_to_bf16(e->t.data[j]);
  }
  decode_norms(dst);
}

/* ---- loading -------------------------------------------------------------------------------- */

typedef struct LoadCtx { Model *m; int bf16; } LoadCtx;

/* One stored tensor into the model (f32 data or bf16 buffer), then its mapped pages released. */
static int load_one(void *vctx, int i, const StReader *r, const StTensor *t) {
  LoadCtx *c = vctx;
  const ParamEntry *e = &c->m->ps.e[i];
  const int64_t CH = 1 << 20;
  if (!c->bf16) {
    for (int64_t o = 0; o < t->numel; o += CH) {
      int64_t n = t->numel - o < CH ? t->numel - o : CH;
      st_convert_to_f32(t->dtype, (const char *)t->data + o * st_dtype_size(t->dtype), e->t.data + o, n);
      st_release(r, t, o * st_dtype_size(t->dtype), n * st_dtype_size(t->dtype));
    }
    return 0;
  }
  uint16_t *dst = c->m->dec.bf16->w + e->offset;
  float *tmp = t->dtype == ST_BF16 ? NULL : t5g_malloc(sizeof(float) * CH);
  for (int64_t o = 0; o < t->numel; o += CH) {
    int64_t n = t->numel - o < CH ? t->numel - o : CH;
    int es = st_dtype_size(t->dtype);
    const char *src = (const char *)t->data + o * es;
    if (t->dtype == ST_BF16) memcpy(dst + o, src, (size_t)n * 2);
    else {
      st_convert_to_f32(t->dtype, src, tmp, n);
      for (int64_t j = 0; j < n; j++) dst[o + j] = st_f32_to_bf16(tmp[j]);
    }
    st_release(r, t, o * es, n * es);
  }
  free(tmp);
  return 0;
}

int model_load_weights(Model *m, const char *dir, WeightsMode mode) {
  T5G_ASSERT(mode == WEIGHTS_F32 || mode == WEIGHTS_BF16);
  ModelConfig cfg;
  if (config_load(dir, &cfg) != 0) return -1;
  if (model_plan(m, &cfg) != 0) return -1;
  if (mode == WEIGHTS_BF16) { model_resolve(m); attach(m); }
  else {
    ParamStore *ps = &m->ps;
    ps->data = big_alloc((size_t)ps->n_total * sizeof(float));
    for (int i = 0; i < ps->n; i++) {   /* zero the alignment padding only: the load writes the rest */
      const ParamEntry *e = &ps->e[i];
      int64_t end = i + 1 < ps->n ? ps->e[i + 1].offset : ps->n_total;
      memset(ps->data + e->offset + e->t.n, 0, (size_t)(end - e->offset - e->t.n) * sizeof(float));
    }
    ps->grad = NULL;
    ps->finalized = 1;
    for (int i = 0; i < ps->n; i++) {
      ps->e[i].t.data = ps->data + ps->e[i].offset;
      ps->e[i].t.grad = NULL;
      ps->e[i].frozen = 1;
      ps->e[i].t.requires_grad = 0;
    }
    model_resolve(m);   /* after the storage exists, like model_init */
  }
  LoadCtx c = {m, mode == WEIGHTS_BF16};
  if (hf_load_params_with(&m->ps, dir, load_one, &c) != 0) { model_free(m); return -1; }
  if (mode == WEIGHTS_BF16) decode_norms(m);
  return 0;
}

static MemEstimate plan_need(const ModelConfig *c, const InferPlan *p, int bf16) {
  MemEstimate a = memory_infer(c, p->rows, c->kind == MODEL_T5GEMMA ? p->enc_len : 0, p->dec_len, bf16);
  if (p->new_tokens > 0) {
    MemEstimate g = memory_generate(c, p->rows, p->enc_len, p->new_tokens, bf16);
    if (g.total > a.total) a = g;
  }
  return a;
}

int model_load_infer(Model *m, const char *dir, WeightsMode mode, const InferPlan *plan, WeightsMode *chosen) {
  ModelConfig cfg;
  if (config_load(dir, &cfg) != 0) return -1;
  InferPlan p = plan ? *plan : (InferPlan){"inference", 1, 512, 512, 0};
  if (p.rows < 1) p.rows = 1;
  if (p.enc_len < 1) p.enc_len = 1;
  if (p.dec_len < 1) p.dec_len = 1;
  MemEstimate f = plan_need(&cfg, &p, 0), b = plan_need(&cfg, &p, 1);
  int64_t avail = t5g_mem_available();
  const char *why = "";
  WeightsMode use = mode;
  if (mode == WEIGHTS_AUTO) {   /* f32 only with a 10% margin: the estimate is approximate */
    use = (avail <= 0 || f.total <= avail - avail / 10) ? WEIGHTS_F32 : WEIGHTS_BF16;
    why = use == WEIGHTS_F32 ? " (auto: the f32 model fits)" : " (auto: the f32 model would not fit)";
  }
  MemEstimate need = use == WEIGHTS_BF16 ? b : f;
  char what[160], b1[32], b2[32], b3[32], b4[32], pn[32];
  if (avail > 0 && need.total > avail) {   /* refuse before allocating anything */
    char hint[200] = "";
    if (use == WEIGHTS_F32 && b.total <= avail)
      snprintf(hint, sizeof hint, "; --weights bf16 would need about %s", t5g_fmt_bytes((double)b.total, b4, sizeof b4));
    return t5g_error("%s: %s with %s weights (%s parameters) needs about %s of memory (weights %s, working memory %s) "
                     "but only %s is available%s; see `t5gemma info %s` for the needs of each command",
                     dir, p.command ? p.command : "inference", use == WEIGHTS_BF16 ? "bf16" : "f32", t5g_fmt_count((double)config_param_counts(&cfg).total, pn, sizeof pn),
                     t5g_fmt_bytes((double)need.total, b1, sizeof b1), t5g_fmt_bytes((double)need.weights, b2, sizeof b2),
                     t5g_fmt_bytes((double)(need.activations + need.overhead), b3, sizeof b3), t5g_fmt_bytes((double)avail, what, sizeof what),
                     hint, dir);
  }
  double t0 = t5g_now();
  if (model_load_weights(m, dir, use) != 0) return -1;
  fprintf(stderr, "loaded %s (%s, %s parameters) with %s weights%s in %.1f s; predicted memory %s (f32 %s, bf16 %s), available %s\n",
          dir, m->cfg.kind == MODEL_T5GEMMA ? "T5Gemma encoder-decoder" : "Gemma 2 decoder-only", t5g_fmt_count((double)params_count(&m->ps, NULL), pn, sizeof pn),
          use == WEIGHTS_BF16 ? "bf16" : "f32", why, t5g_now() - t0, t5g_fmt_bytes((double)need.total, b1, sizeof b1),
          t5g_fmt_bytes((double)f.total, b2, sizeof b2), t5g_fmt_bytes((double)b.total, b3, sizeof b3),
          avail > 0 ? t5g_fmt_bytes((double)avail, what, sizeof what) : "unknown");
  if (chosen) *chosen = use;
  return 0;
}

/* ---- forward pieces ------------------------------------------------------------------------- */

void wbf16_layer(const StackParams *sp, const LayerParams *L) {
  WeightsBf16 *w = sp->bf16;
  T5G_ASSERT(w);
  if (w->cur == L) return;
  Tensor *ts[11];
  if (w->cur) {
    layer_list_matrices(w->cur, ts);
    for (int j = 0; j < 11; j++) if (ts[j]) ts[j]->data = NULL;
    w->cur = NULL;
  }
  layer_list_matrices(L, ts);
  int64_t off = 0;
  for (int j = 0; j < 11; j++) {
    if (!ts[j]) continue;
    const ParamEntry *e = entry_of(ts[j]);
    T5G_ASSERT(off + ts[j]->n <= w->scratch_n);
    bf16_to_f32(w->w + e->offset, w->scratch + off, ts[j]->n);
    ts[j]->data = w->scratch + off;
    off += al16(ts[j]->n);
  }
  w->cur = L;
}

void wbf16_embed_rows(const StackParams *sp, const int32_t *ids, int64_t n, float *out) {
  const WeightsBf16 *w = sp->bf16;
  T5G_ASSERT(w && sp->embed->ndim == 2);
  const int64_t V = sp->embed->shape[0], d = sp->embed->shape[1];
  const uint16_t *E = w->w + entry_of(sp->embed)->offset;
  const float scale = sp->embed_scale;
  for (int64_t i = 0; i < n; i++) T5G_ASSERT(ids[i] >= 0 && ids[i] < V);
#pragma omp parallel for schedule(static) if (n * d >= PAR_MIN)
  for (int64_t i = 0; i < n; i++) {
    const uint16_t *src = E + (int64_t)ids[i] * d;
    float *dst = out + i * d;
    for (int64_t j = 0; j < d; j++) dst[j] = bf16f(src[j]) * scale;
  }
}

Tensor *wbf16_embedding(Graph *g, const StackParams *sp, const int32_t *ids, int ndim, const int64_t *shape) {
  if (g->grad_enabled) t5g_fatal("bf16 weights are for inference only (no gradients); load the model with f32 weights to train");
  T5G_ASSERT(ndim >= 1 && ndim < T5G_MAX_DIMS);
  int64_t n = 1, oshape[T5G_MAX_DIMS];
  for (int i = 0; i < ndim; i++) { n *= shape[i]; oshape[i] = shape[i]; }
  oshape[ndim] = sp->embed->shape[1];
  Tensor *y = tensor_new(g, "embedding", ndim + 1, oshape);
  wbf16_embed_rows(sp, ids, n, y->data);
  return y;
}

/* y[r * ldy + j] = Σ_k x[r * in + k] · f32(W[j * in + k]) for r < n, j < out: the bf16 rows are
 * read once and converted in registers (OpenMP over output rows; the reduction over k runs in
 * SIMD lanes). */
static void fused_rows(const uint16_t *W, int64_t out, int64_t in, const float *x, int64_t n, float *y, int64_t ldy) {
#pragma omp parallel for schedule(static) if (out * in >= PAR_MIN)
  for (int64_t j = 0; j < out; j++) {
    const uint16_t *restrict w = W + j * in;
    for (int64_t r = 0; r < n; r++) {
      const float *restrict xr = x + r * in;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < in; k++) acc += xr[k] * bf16f(w[k]);
      y[r * ldy + j] = acc;
    }
  }
}

void wbf16_matmul_rows(const StackParams *sp, const Tensor *W, const float *x, int64_t n, float *y, int64_t ldy) {
  const WeightsBf16 *w = sp->bf16;
  T5G_ASSERT(w && W->ndim == 2 && ldy >= W->shape[0]);
  const ParamEntry *e = entry_of(W);
  T5G_ASSERT(e >= w->e && e < w->e + w->n_entries);
  if (n > 0) fused_rows(w->w + e->offset, W->shape[0], W->shape[1], x, n, y, ldy);
}

void wbf16_logits(const StackParams *sp, const float *h, int64_t N, float *out, int64_t ldo) {
  WeightsBf16 *w = sp->bf16;
  T5G_ASSERT(w && sp->embed->ndim == 2);
  const int64_t V = sp->embed->shape[0], d = sp->embed->shape[1];
  T5G_ASSERT(ldo >= V && d <= w->d_max);
  if (N <= 0) return;
  const uint16_t *E = w->w + entry_of(sp->embed)->offset;
  if (N <= WBF16_FUSED_MAX_ROWS && !w->head_forced) {   /* decoding steps */
    fused_rows(E, V, d, h, N, out, ldo);
    return;
  }
  const int64_t VB = w->head_rows < V ? w->head_rows : V, nb = (V + VB - 1) / VB;
  int nth = omp_get_max_threads();
  if (!w->head || w->head_threads < nth) {
    free(w->head);
    w->head = t5g_alloc_aligned((size_t)nth * VB * w->d_max * sizeof(float));
    w->head_threads = nth;
  }
  t5g_blas_single();
#pragma omp parallel for schedule(dynamic, 1) num_threads(nth)
  for (int64_t b = 0; b < nb; b++) {
    const int64_t v0 = b * VB, vb = V - v0 < VB ? V - v0 : VB;
    float *Eb = w->head + (size_t)omp_get_thread_num() * VB * w->d_max;
    bf16_to_f32(E + v0 * d, Eb, vb * d);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)vb, (int)d, 1.0f, h, (int)d, Eb, (int)d, 0.0f,
                out + v0, (int)ldo);
  }
  t5g_blas_restore();
}

/* ---- the LM head ------------------------------------------------------------------------------ */
/* Row arithmetic of model/ops_loss.c's op_softcap_ce (as of its one-pass soft-cap / max /
 * log-sum-exp): the same operations in the same order, so that equal logits give equal losses.
 * The tests hold the two to 1e-6 (tests/test_weights_bf16.c), which also catches a drift. */

Tensor *lm_head_ce(Model *m, Graph *g, Tensor *h, const int32_t *labels, float normalizer,
                   float *row_nll, LossStats *stats) {
  const float cap = m->cfg.dec.final_logit_softcapping;
  if (!m->dec.bf16) return op_softcap_ce(g, h, m->dec.embed, labels, cap, normalizer, row_nll, stats);
  if (g->grad_enabled) t5g_fatal("bf16 weights are for inference only (no gradients); load the model with f32 weights to train");
  const StackParams *sp = &m->dec;
  T5G_ASSERT(h->ndim == 2 && h->shape[1] == sp->embed->shape[1]);
  const int64_t N = h->shape[0], V = sp->embed->shape[0], d = h->shape[1];
  const int64_t one = 1;
  Tensor *out = tensor_new(g, "loss", 1, &one);
  ArenaMark mk = arena_mark(g->arena);
  int32_t *rows = arena_alloc(g->arena, sizeof(int32_t) * (N ? N : 1));
  int64_t nr = 0;
  for (int64_t i = 0; i < N; i++) {
    if (labels[i] == IGNORE_INDEX) continue;
    if (labels[i] < 0 || labels[i] >= V)
      t5g_fatal("lm_head_ce: label %d of row %lld is outside [0, %lld) and is not -100", (int)labels[i], (long long)i, (long long)V);
    rows[nr++] = (int32_t)i;
  }
  if (row_nll) memset(row_nll, 0, sizeof(float) * N);
  T5G_ASSERT(nr == 0 || normalizer > 0);
  const int64_t CH = chunk_rows(V), CHn = nr < CH ? nr : CH;
  float *hc = nr ? arena_alloc(g->arena, sizeof(float) * CHn * d) : NULL;
  float *Z = nr ? arena_alloc(g->arena, sizeof(float) * CHn * V) : NULL;
  double *rn = arena_alloc(g->arena, sizeof(double) * CH);
  int8_t *rc = arena_alloc(g->arena, CH);
  double loss = 0.0;
  int64_t n_correct = 0;
  for (int64_t c0 = 0; c0 < nr; c0 += CH) {
    const int64_t n = nr - c0 < CH ? nr - c0 : CH;
    for (int64_t r = 0; r < n; r++) memcpy(hc + r * d, h->data + (int64_t)rows[c0 + r] * d, sizeof(float) * d);
    wbf16_logits(sp, hc, n, Z, V);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; r++) {
      float *z = Z + r * V;
      const int lab = labels[rows[c0 + r]];
      float mx;
      double lse;
      if (cap > 0.0f && cap <= 40.0f) cap_max_lse(z, V, cap, &mx, &lse);
      else {
        cap_row(z, V, cap);
        mx = row_max(z, V);
        lse = row_lse(z, V, 1.0f, mx);
      }
      const int64_t am = first_index_of(z, V, mx);
      rn[r] = lse - (double)z[lab];
      rc[r] = am == lab;
    }
    for (int64_t r = 0; r < n; r++) {
      loss += rn[r];
      n_correct += rc[r];
      if (row_nll) row_nll[rows[c0 + r]] = (float)rn[r];
    }
  }
  if (stats) { stats->sum_nll = loss; stats->n_tokens = nr; stats->n_correct = n_correct; }
  out->data[0] = nr ? (float)(loss / normalizer) : 0.0f;
  out->requires_grad = 0;
  arena_release(g->arena, mk);
  return out;
}

void lm_head_logits(Model *m, const float *h, int64_t N, float *out) {
  const float cap = m->cfg.dec.final_logit_softcapping;
  if (!m->dec.bf16) { logits_full(h, N, m->dec.embed, cap, out); return; }
  const int64_t V = m->dec.embed->shape[0];
  wbf16_logits(&m->dec, h, N, out, V);
  if (cap > 0) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < N; r++) cap_row(out + r * V, V, cap);
  }
}

void lm_head_topk(Model *m, const float *h, int64_t N, float temperature, int k, int32_t *ids_out, float *probs_out,
                  Arena *scratch) {
  const float cap = m->cfg.dec.final_logit_softcapping;
  const Tensor *E = m->dec.embed;
  const int64_t V = E->shape[0], d = E->shape[1];
  T5G_ASSERT(temperature > 0 && k >= 1 && k <= V && (ids_out || k == V));
  const int64_t CH = chunk_rows(V), nch = N < CH ? N : CH;
  if (nch <= 0) return;
  const size_t zb = sizeof(float) * nch * V, hb = ids_out ? sizeof(TopEnt) * (size_t)k * omp_get_max_threads() : 0;
  ArenaMark mk = {0};
  if (scratch) mk = arena_mark(scratch);
  float *Z = scratch ? arena_alloc(scratch, zb) : t5g_alloc_aligned(zb);
  TopEnt *heaps = !hb ? NULL : scratch ? arena_alloc(scratch, hb) : t5g_alloc_aligned(hb);
  for (int64_t c0 = 0; c0 < N; c0 += CH) {
    const int64_t n = N - c0 < CH ? N - c0 : CH;
    if (m->dec.bf16) wbf16_logits(&m->dec, h + c0 * d, n, Z, V);   /* by blocks of vocabulary rows */
    else t5g_sgemm(0, 1, (int)n, (int)V, (int)d, 1.0f, h + c0 * d, (int)d, E->data, (int)d, 0.0f, Z, (int)V);   /* as logits_topk */
    topk_rows(Z, n, V, cap, temperature, k, heaps, ids_out ? ids_out + c0 * (int64_t)k : NULL, probs_out + c0 * (int64_t)k);
  }
  if (scratch) arena_release(scratch, mk);
  else { free(heaps); free(Z); }
}
