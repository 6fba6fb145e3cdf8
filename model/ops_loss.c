/* ops_loss.c: final-logit soft-cap fused with cross-entropy (and distillation), chunked over rows.
 *
 * Contract: model/ops.h (op_softcap_ce, op_softcap_ce_distill, logits_topk, logits_full).
 * Math: spec 1.6 (z = cap·tanh(h Eᵀ / cap), tied LM head, loss on the capped logits), 2.4 (ignore
 * label −100), 4.2 (distillation: cross-entropy against the teacher distribution; the T² factor
 * of Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", arXiv 1503.02531, keeps
 * the soft-target gradient scale independent of T), 6 (soft-cap derivative 1 − tanh²).
 *
 * Chunking (the approach of fused linear + cross-entropy kernels such as Liger-Kernel's
 * FusedLinearCrossEntropy, re-derived here): rows with a label are gathered, CH at a time, into a
 * [CH, d] buffer; one sgemm forms the chunk's logits [CH, V]; the row-wise work (cap, max,
 * log-sum-exp in double, teacher terms) runs OpenMP-parallel over the rows. Only the
 * log-sum-exp per row (and, for distillation, the log-sum-exp at temperature T and the teacher
 * mass) is saved. When the op is recorded, the forward then overwrites each chunk's logits in
 * place with the gradient for dL = 1
 *   dz = [ (1−α)(softmax(z) − onehot(label)) + α·T·(Σp · softmax(z/T) − p) ] · (1 − tanh²) / normalizer
 * and applies dh1 = dz E (saved per gathered row, [rows, d]) and dE1 = Σ_chunks dzᵀ h (saved,
 * [V, d]) with t5g_sgemm (model/gemm.h, outside OpenMP); backward adds dL · dh1 and dL · dE1
 * (the gradients are linear in dL). So the [V, d] logits product runs 3 times per training step
 * (logits, dh, dE) instead of 4 with a recomputation in backward (issue 8: −25% of the loss's
 * matmul work; the LM head of the 256000-token vocabulary dominates small models), for the
 * memory of one [V, d] buffer (the size of E itself; none when E is frozen).
 * Ignored rows cost nothing. At most one [CH, V] logits buffer exists, during the forward.
 *
 * LossStats are overwritten (not accumulated) by each call.
 */
#include "model/ops.h"
#include "model/runtime.h"
#include "model/vmath.h"
#include "model/gemm.h"
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "model/logit_rows.h"

#define IGNORE_INDEX (-100)

typedef struct LossCtx {
  Graph *g;
  Tensor *h, *E, *out;
  const int32_t *labels, *t_ids;
  const float *t_probs;
  int k;
  float cap, T, alpha, normalizer;
  int64_t N, V, d;
  int64_t nrows;       /* rows with a label */
  int32_t *rows;       /* [nrows] their indices */
  float *lse;          /* [nrows] logsumexp(z) */
  float *lseT;         /* [nrows] logsumexp(z / T) (distillation) */
  float *psum;         /* [nrows] Σ teacher probabilities (distillation) */
  int need_h, need_E, distill;
  float *dh1;          /* [nrows, d] dh of the gathered rows for dL = 1, computed by the forward */
  float *dE1;          /* [V, d] dE for dL = 1, computed by the forward */
} LossCtx;

static void gather_rows(const float *h, int64_t d, const int32_t *rows, int64_t n, float *dst) {
  for (int64_t r = 0; r < n; r++) memcpy(dst + r * d, h + (int64_t)rows[r] * d, sizeof(float) * d);
}


/* Overwrite one row of capped logits z (row `row` of h, gathered row index ri) with
 *   dz = [ (1−α)·coef·(softmax(z) − onehot) + α·T·coef·(Σp·softmax(z/T) − p) ] · (1 − c²),
 * c = z/cap = tanh of the uncapped logit (1 without a cap). wk: k floats of scratch (top-k). */
static void row_grad(const LossCtx *c, float *z, int64_t row, int64_t ri, float coef, float *wk) {
  const int64_t V = c->V;
  const int k = c->k, topk = c->distill && c->t_ids;
  const float cap = c->cap, inv_cap = cap > 0 ? 1.0f / cap : 0.0f, invT = 1.0f / c->T;
  const float a1 = (1.0f - c->alpha) * coef, a2 = c->alpha * c->T * coef;
  const int lab = c->labels[row];
  const float L = c->lse[ri];
  /* sparse terms first, from the capped logits: w = coefficient · (1 − c²) */
  const float cl = z[lab] * inv_cap;
  const float wl = a1 * (1.0f - cl * cl);
  const int32_t *id = topk ? c->t_ids + row * (int64_t)k : NULL;
  const float *p = c->distill ? c->t_probs + row * (int64_t)k : NULL;
  if (topk)
    for (int j = 0; j < k; j++) {
      float cj = z[id[j]] * inv_cap;
      wk[j] = a2 * p[j] * (1.0f - cj * cj);
    }
  if (!c->distill) {
    for (int64_t j = 0; j < V; j++) {
      const float cj = z[j] * inv_cap;
      z[j] = a1 * t5g_vexp(z[j] - L) * (1.0f - cj * cj);
    }
  } else {
    const float LT = c->lseT[ri], b2 = a2 * c->psum[ri];
    const int full = !c->t_ids;
    for (int64_t j = 0; j < V; j++) {
      const float zj = z[j], cj = zj * inv_cap;
      float gj = a1 * t5g_vexp(zj - L) + b2 * t5g_vexp(zj * invT - LT);
      if (full) gj -= a2 * p[j];
      z[j] = gj * (1.0f - cj * cj);
    }
  }
  z[lab] -= wl;
  if (topk) for (int j = 0; j < k; j++) z[id[j]] -= wk[j];
}

/* Gradients of one chunk of n gathered rows (from ri0) whose capped logits are in Z [n, V] and
 * hidden rows in hc [n, d]: Z <- dz (row_grad with coef), then dhc = dz E (when dhc != NULL)
 * and dE = dzᵀ hc + beta·dE (when dE != NULL), both with t5g_sgemm. */
static void chunk_grad(const LossCtx *c, float *Z, const float *hc, int64_t ri0, int64_t n, float coef, float *wk,
                       float *dhc, float *dE, float beta) {
  const int64_t V = c->V, d = c->d;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; r++)
    row_grad(c, Z + r * V, c->rows[ri0 + r], ri0 + r, coef, wk ? wk + (size_t)omp_get_thread_num() * c->k : NULL);
  if (dhc)
    t5g_sgemm(0, 0, (int)n, (int)d, (int)V, 1.0f, Z, (int)V, c->E->data, (int)d, 0.0f, dhc, (int)d);
  if (dE)
    t5g_sgemm(1, 0, (int)V, (int)d, (int)n, 1.0f, Z, (int)V, hc, (int)d, beta, dE, (int)d);
}

/* Backward: the forward computed the gradients for dL = 1 (dh of the gathered rows in dh1, dE
 * in dE1); they are linear in dL, so dh += dL · dh1 and dE += dL · dE1. */
static void ce_backward(void *vctx) {
  LossCtx *c = vctx;
  Graph *g = c->g;
  if (!c->out->grad || c->nrows == 0) return;
  const float dL = c->out->grad[0];
  const int64_t d = c->d, nr = c->nrows, nE = c->V * d;
  if (c->need_h) {
    float *dh = tensor_grad(g, c->h);
#pragma omp parallel for schedule(static) if (nr * d >= 32768)
    for (int64_t r = 0; r < nr; r++) {
      float *restrict dst = dh + (int64_t)c->rows[r] * d;
      const float *restrict src = c->dh1 + r * d;
      for (int64_t i = 0; i < d; i++) dst[i] += dL * src[i];
    }
  }
  if (c->need_E) {
    float *restrict dE = tensor_grad(g, c->E);
    const float *restrict src = c->dE1;
#pragma omp parallel for schedule(static) if (nE >= 32768)
    for (int64_t i = 0; i < nE; i++) dE[i] += dL * src[i];
  }
}

/* Forward of the (distillation) loss; returns the scalar loss tensor. When the op is recorded,
 * each chunk's gradients for dL = 1 are computed right away from the chunk's logits (no second
 * logits product in backward): dh of the chunk's rows into c->dh1 and dE into c->dE1. */
static Tensor *ce_forward(Graph *g, Tensor *h, Tensor *E, const int32_t *labels, const int32_t *t_ids,
                          const float *t_probs, int k, float cap, float T, float alpha, float normalizer,
                          float *row_nll, LossStats *stats, int distill) {
  OP_PROFILE_BEGIN(g);
  T5G_ASSERT(h->ndim == 2 && E->ndim == 2 && h->shape[1] == E->shape[1]);
  const int64_t N = h->shape[0], V = E->shape[0], d = h->shape[1];
  if (distill) {
    T5G_ASSERT(T > 0 && k >= 1 && k <= V && t_probs && (t_ids || k == V));
  }
  const int record = tensor_needs_grad(g, h) || tensor_needs_grad(g, E);
  const int64_t one = 1;
  Tensor *out = tensor_new(g, "loss", 1, &one);
  ArenaMark mk = arena_mark(g->arena);    /* context: kept for the backward, else given back */
  LossCtx *c = arena_calloc(g->arena, sizeof *c);
  c->g = g; c->h = h; c->E = E; c->labels = labels; c->t_ids = t_ids; c->t_probs = t_probs; c->k = k;
  c->cap = cap; c->T = distill ? T : 1.0f; c->alpha = distill ? alpha : 0.0f; c->normalizer = normalizer;
  c->N = N; c->V = V; c->d = d; c->distill = distill && alpha != 0.0f;
  c->rows = arena_alloc(g->arena, sizeof(int32_t) * (N ? N : 1));
  int64_t nr = 0;
  for (int64_t i = 0; i < N; i++) {
    if (labels[i] == IGNORE_INDEX) continue;
    if (labels[i] < 0 || labels[i] >= V)
      t5g_fatal("op_softcap_ce: label %d of row %lld is outside [0, %lld) and is not -100",
                (int)labels[i], (long long)i, (long long)V);
    c->rows[nr++] = (int32_t)i;
  }
  c->nrows = nr;
  c->lse = arena_alloc(g->arena, sizeof(float) * (nr ? nr : 1));
  if (c->distill) {
    c->lseT = arena_alloc(g->arena, sizeof(float) * (nr ? nr : 1));
    c->psum = arena_alloc(g->arena, sizeof(float) * (nr ? nr : 1));
  }
  if (row_nll) memset(row_nll, 0, sizeof(float) * N);
  T5G_ASSERT(nr == 0 || normalizer > 0);
  const int need_h = record && tensor_needs_grad(g, h), need_E = record && tensor_needs_grad(g, E);
  if (need_h) c->dh1 = arena_alloc(g->arena, sizeof(float) * (nr ? nr : 1) * d);
  if (need_E && nr) c->dE1 = arena_alloc(g->arena, sizeof(float) * V * d);   /* the first chunk overwrites */

  ArenaMark mk_chunk = arena_mark(g->arena);   /* chunk buffers: given back at the end */
  const int64_t CH = chunk_rows(V);
  const int64_t CHn = nr < CH ? nr : CH;   /* no larger than needed */
  float *hc = nr ? arena_alloc(g->arena, sizeof(float) * CHn * d) : NULL;
  float *Z = nr ? arena_alloc(g->arena, sizeof(float) * CHn * V) : NULL;
  float *wk = record && c->distill && t_ids ? arena_alloc(g->arena, sizeof(float) * k * omp_get_max_threads()) : NULL;
  double *rl = arena_alloc(g->arena, sizeof(double) * CH);
  double *rn = arena_alloc(g->arena, sizeof(double) * CH);
  int8_t *rc = arena_alloc(g->arena, CH);
  double loss = 0.0, sum_nll = 0.0;
  int64_t n_correct = 0;
  const float invT = 1.0f / c->T, a = c->alpha, T2 = c->T * c->T;
  for (int64_t c0 = 0; c0 < nr; c0 += CH) {
    const int64_t n = nr - c0 < CH ? nr - c0 : CH;
    gather_rows(h->data, d, c->rows + c0, n, hc);
    t5g_sgemm(0, 1, (int)n, (int)V, (int)d, 1.0f, hc, (int)d, E->data, (int)d, 0.0f, Z, (int)V);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; r++) {
      float *z = Z + r * V;
      const int64_t row = c->rows[c0 + r];
      const int lab = labels[row];
      float m;
      double lse;
      if (cap > 0.0f && cap <= 40.0f) {
        cap_max_lse(z, V, cap, &m, &lse);
      } else {
        cap_row(z, V, cap);
        m = row_max(z, V);
        lse = row_lse(z, V, 1.0f, m);
      }
      const int64_t am = first_index_of(z, V, m);
      const double nll = lse - (double)z[lab];
      c->lse[c0 + r] = (float)lse;
      rn[r] = nll;
      rc[r] = am == lab;
      double l = nll;
      if (c->distill) {
        const double lseT = c->T == 1.0f ? lse : row_lse(z, V, invT, m * invT);
        const float *p = t_probs + row * (int64_t)k;
        double ps = 0.0, pz = 0.0;
        if (t_ids) {
          const int32_t *id = t_ids + row * (int64_t)k;
          for (int j = 0; j < k; j++) {
            T5G_ASSERT(id[j] >= 0 && id[j] < V);
            ps += p[j]; pz += (double)p[j] * z[id[j]];
          }
        } else {
#pragma omp simd reduction(+ : ps, pz)
          for (int64_t j = 0; j < V; j++) { ps += p[j]; pz += (double)p[j] * z[j]; }
        }
        const double soft = lseT * ps - pz * invT;      /* −Σ p_j log softmax(z/T)_j */
        c->lseT[c0 + r] = (float)lseT;
        c->psum[c0 + r] = (float)ps;
        l = (1.0 - a) * nll + (double)a * T2 * soft;
      }
      rl[r] = l;
    }
    for (int64_t r = 0; r < n; r++) {   /* in row order: the result does not depend on threads */
      loss += rl[r];
      sum_nll += rn[r];
      n_correct += rc[r];
      if (row_nll) row_nll[c->rows[c0 + r]] = (float)rn[r];
    }
    if (need_h || need_E)
      chunk_grad(c, Z, hc, c0, n, 1.0f / normalizer, wk, need_h ? c->dh1 + c0 * d : NULL, c->dE1, c0 == 0 ? 0.0f : 1.0f);
  }
  arena_release(g->arena, mk_chunk);
  if (stats) { stats->sum_nll = sum_nll; stats->n_tokens = nr; stats->n_correct = n_correct; }
  out->data[0] = nr ? (float)(loss / normalizer) : 0.0f;
  out->requires_grad = h->requires_grad || E->requires_grad;
  if (record) {
    c->out = out;
    c->need_h = need_h;
    c->need_E = need_E && nr;
    graph_record(g, ce_backward, c, OPK_LOSS);
  } else {
    arena_release(g->arena, mk);          /* c is not used any more */
  }
  OP_PROFILE_END(g, OPK_LOSS);
  return out;
}

Tensor *op_softcap_ce(Graph *g, Tensor *h, Tensor *E, const int32_t *labels, float cap, float normalizer,
                      float *row_nll, LossStats *stats) {
  return ce_forward(g, h, E, labels, NULL, NULL, 0, cap, 1.0f, 0.0f, normalizer, row_nll, stats, 0);
}

Tensor *op_softcap_ce_distill(Graph *g, Tensor *h, Tensor *E, const int32_t *labels, const int32_t *t_ids,
                              const float *t_probs, int k, float cap, float temperature, float alpha,
                              float normalizer, LossStats *stats) {
  return ce_forward(g, h, E, labels, t_ids, t_probs, k, cap, temperature, alpha, normalizer, NULL, stats, 1);
}

/* ---- no-grad helpers ---------------------------------------------------------------------- */

/* Rows of h [N, d] -> probabilities. ids_out may be NULL only when k == V: probs_out is then
 * the full softmax(z/T) in vocabulary order (the layout op_softcap_ce_distill takes with
 * t_ids = NULL). Otherwise ids_out/probs_out [N, k] hold the k most probable tokens in
 * descending probability (ties: lower id first), probabilities renormalised over the k.
 * The row work is logit_rows.h's topk_rows, shared with the bf16 LM head (lm_head_topk). */
void logits_topk(const float *h, int64_t N, const Tensor *E, float cap, float temperature, int k,
                 int32_t *ids_out, float *probs_out) {
  const int64_t V = E->shape[0], d = E->shape[1];
  T5G_ASSERT(temperature > 0 && k >= 1 && k <= V && (ids_out || k == V));
  const int64_t CH = chunk_rows(V);
  const int64_t nch = N < CH ? N : CH;
  if (nch == 0) return;
  float *Z = t5g_alloc_aligned(sizeof(float) * nch * V);
  int nth = omp_get_max_threads();
  TopEnt *heaps = ids_out ? t5g_alloc_aligned(sizeof(TopEnt) * (size_t)k * nth) : NULL;
  for (int64_t c0 = 0; c0 < N; c0 += CH) {
    const int64_t n = N - c0 < CH ? N - c0 : CH;
    t5g_sgemm(0, 1, (int)n, (int)V, (int)d, 1.0f, h + c0 * d, (int)d,
                E->data, (int)d, 0.0f, Z, (int)V);
    topk_rows(Z, n, V, cap, temperature, k, heaps, ids_out ? ids_out + c0 * (int64_t)k : NULL, probs_out + c0 * (int64_t)k);
  }
  free(heaps);
  free(Z);
}

void logits_full(const float *h, int64_t N, const Tensor *E, float cap, float *out) {
  const int64_t V = E->shape[0], d = E->shape[1];
  if (N == 0) return;
  t5g_sgemm(0, 1, (int)N, (int)V, (int)d, 1.0f, h, (int)d, E->data, (int)d,
              0.0f, out, (int)V);
  if (cap > 0) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < N; r++) cap_row(out + r * V, V, cap);
  }
}
