/* ops_attention.c: grouped-query attention with logit soft-cap, flash-attention style.
 *
 * Contract: model/ops.h (op_attention, AttnMask). Math: spec 1.5 (scores, soft-cap before the
 * mask, f32 softmax, GQA mapping n -> n / (H/K)), 2.2 (bidirectional window |i-j| < W),
 * 2.3 (cross-attention: Tq != Tk, never windowed), 6 (rows without a visible key output 0).
 * Algorithm: FlashAttention / FlashAttention-2 (Dao et al. 2022, arXiv 2205.14135; Dao 2023,
 * arXiv 2307.08691): the forward keeps only the log-sum-exp L_i of every query row; the backward
 * recomputes the scores block by block and uses
 *     P = exp(S - L),  D_i = sum_d dO_id O_id,  dS = P * (dO V^T - D),
 * then chains dS through the soft-cap derivative 1 - tanh^2 (spec 6).
 *
 * Blocking. Work is split into (batch b, kv head) pairs; the G = H/K query heads that share a
 * kv head are processed together, so a block holds bq query positions x G heads = R rows
 * (row r = t*G + g). For a block, the visible keys lie in one contiguous range [klo, khi)
 * (causal / window geometry), and the whole score block S [R, khi-klo] is formed with one
 * sgemm (Q_blk K^T), soft-capped, masked, and normalised in one pass (exact two-pass softmax
 * over the row; there is no key-block loop, so no online rescaling is needed). Only one such
 * block per thread exists at a time; per-thread scratch is taken from the arena once per call
 * (sized for the backward as well when the op is recorded, and reused by it; given back to the
 * arena at once in no-grad mode).
 * OpenMP runs over (b, kv head, query block) tasks in the forward, and over (b, kv head, split)
 * units in the backward: a unit owns dK/dV of its (b, kv head) when there are enough pairs for
 * all threads; otherwise the pair's query blocks are split over several units that accumulate
 * into private dK/dV buffers, summed after the parallel region (no atomics anywhere).
 * OpenBLAS runs single-threaded inside the OpenMP regions (runtime.h).
 */
#include "model/ops.h"
#include "model/runtime.h"
#include "model/vmath.h"
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

typedef struct AttnCtx {
  Graph *g;
  Tensor *q, *k, *v, *out;
  AttnMask mask;
  float scale, softcap;
  int B, Tq, Tk, H, K, G, hd, bq, nqb;
  float *lse;          /* [B, H, Tq]; +INFINITY marks a row with no visible key */
  int need_q, need_k, need_v;
  float *scratch;      /* per-thread scratch of the forward, reused by the backward */
  int *iscratch;
  int scratch_threads;
  size_t scratch_per;  /* floats per thread */
} AttnCtx;

/* Floats of per-thread scratch: forward Qp, Op [R, hd] and S [R, Tk]; backward Qp, dOp, dQp
 * [R, hd], S and dP [R, Tk] and D [R]. */
static size_t scratch_floats(const AttnCtx *c, int backward) {
  size_t R = (size_t)c->bq * c->G;
  return backward ? R * c->hd * 3 + R * c->Tk * 2 + R : R * c->hd * 2 + R * c->Tk;
}

/* Rows of a block: R = bq * G. bq shrinks for large groups so the score block stays small. */
static int block_queries(int G, int Tq) {
  int bq = G >= 256 ? 1 : 256 / G;
  if (bq > 64) bq = 64;
  if (bq > Tq) bq = Tq;
  return bq < 1 ? 1 : bq;
}

/* Geometric key range [*kb, *ke) visible from query t of batch row b (before key padding and
 * segment checks). Empty (kb == ke) for a pad query. Positions: qpos = q_pos0 + t,
 * kpos = k_pos0 + j. */
static void key_range(const AttnCtx *c, int b, int t, int *kb, int *ke) {
  const AttnMask *m = &c->mask;
  *kb = *ke = 0;
  if (m->query_valid && !m->query_valid[(int64_t)b * c->Tq + t]) return;
  int64_t qpos = (int64_t)m->q_pos0 + t, lo = 0, hi = c->Tk;
  if (m->causal) {
    int64_t h2 = qpos - m->k_pos0 + 1;                 /* kpos <= qpos */
    if (h2 < hi) hi = h2;
    if (m->window > 0) {
      int64_t l2 = qpos - m->window + 1 - m->k_pos0;   /* qpos - W < kpos */
      if (l2 > lo) lo = l2;
    }
  } else if (m->window > 0) {                           /* |qpos - kpos| < W */
    int64_t l2 = qpos - m->window + 1 - m->k_pos0, h2 = qpos + m->window - m->k_pos0;
    if (l2 > lo) lo = l2;
    if (h2 < hi) hi = h2;
  }
  if (hi < lo) hi = lo;
  *kb = (int)lo; *ke = (int)hi;
}

/* Key range of the block of queries [t0, t0+nt): per-row ranges into kb/ke, union into
 * klo/khi. Returns 0 when no row of the block can see any key. */
static int block_range(const AttnCtx *c, int b, int t0, int nt, int *kb, int *ke, int *klo, int *khi) {
  int lo = c->Tk, hi = 0;
  for (int t = 0; t < nt; t++) {
    key_range(c, b, t0 + t, &kb[t], &ke[t]);
    if (kb[t] < ke[t]) { if (kb[t] < lo) lo = kb[t]; if (ke[t] > hi) hi = ke[t]; }
  }
  *klo = lo; *khi = hi;
  return lo < hi;
}

/* Pack the rows (t, g) of a block of a [B, T, H, hd] tensor (data x) into dst [nt*G, hd]. */
static void pack_rows(const AttnCtx *c, const float *x, int b, int kvh, int t0, int nt, float *dst) {
  size_t span = (size_t)c->G * c->hd;
  for (int t = 0; t < nt; t++)
    memcpy(dst + (size_t)t * span, x + (((size_t)b * c->Tq + t0 + t) * c->H + (size_t)kvh * c->G) * c->hd,
           span * sizeof(float));
}

/* Scores of one block: S [R, nk] = scale * Qp K[klo:khi]^T, soft-capped, then masked with
 * -INFINITY (spec 1.5: cap before mask). */
static void block_scores(const AttnCtx *c, int b, int kvh, int t0, int nt, int klo, int khi,
                         const int *kb, const int *ke, const float *Qp, float *S) {
  const int G = c->G, hd = c->hd, nk = khi - klo, R = nt * G;
  const float *Kb = c->k->data + (((size_t)b * c->Tk + klo) * c->K + kvh) * hd;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, nk, hd, c->scale, Qp, hd, Kb, c->K * hd,
              0.0f, S, nk);
  const float cap = c->softcap, inv_cap = cap > 0 ? 1.0f / cap : 0.0f;
  const AttnMask *m = &c->mask;
  const uint8_t *kv = m->key_valid ? m->key_valid + (size_t)b * c->Tk + klo : NULL;
  const int32_t *ks = (m->q_seg && m->k_seg) ? m->k_seg + (size_t)b * c->Tk + klo : NULL;
  for (int r = 0; r < R; r++) {
    int t = r / G;
    float *s = S + (size_t)r * nk;
    int jb = kb[t] - klo, je = ke[t] - klo;
    if (jb >= je) { for (int j = 0; j < nk; j++) s[j] = -INFINITY; continue; }
    for (int j = 0; j < jb; j++) s[j] = -INFINITY;
    for (int j = je; j < nk; j++) s[j] = -INFINITY;
    if (cap > 0)
      for (int j = jb; j < je; j++) s[j] = cap * t5g_vtanh(s[j] * inv_cap);
    if (kv)
      for (int j = jb; j < je; j++) s[j] = kv[j] ? s[j] : -INFINITY;
    if (ks) {
      int32_t qs = m->q_seg[(size_t)b * c->Tq + t0 + t];
      for (int j = jb; j < je; j++) s[j] = ks[j] == qs ? s[j] : -INFINITY;
    }
  }
}

/* ---- forward ------------------------------------------------------------------------------ */

static void attn_forward_block(const AttnCtx *c, int b, int kvh, int qb, float *Qp, float *S,
                               float *Op, int *kb, int *ke) {
  const int G = c->G, hd = c->hd, H = c->H;
  const int t0 = qb * c->bq, nt = (t0 + c->bq <= c->Tq) ? c->bq : c->Tq - t0, R = nt * G;
  float *out = c->out->data;
  int klo, khi;
  if (!block_range(c, b, t0, nt, kb, ke, &klo, &khi)) {
    for (int t = 0; t < nt; t++) {
      memset(out + (((size_t)b * c->Tq + t0 + t) * H + (size_t)kvh * G) * hd, 0, sizeof(float) * G * hd);
      for (int g = 0; g < G; g++) c->lse[((size_t)b * H + kvh * G + g) * c->Tq + t0 + t] = INFINITY;
    }
    return;
  }
  const int nk = khi - klo;
  pack_rows(c, c->q->data, b, kvh, t0, nt, Qp);
  block_scores(c, b, kvh, t0, nt, klo, khi, kb, ke, Qp, S);
  for (int r = 0; r < R; r++) {
    float *s = S + (size_t)r * nk;
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < nk; j++) mx = s[j] > mx ? s[j] : mx;
    int t = r / G, g = r % G;
    float *lse = &c->lse[((size_t)b * H + kvh * G + g) * c->Tq + t0 + t];
    if (mx == -INFINITY) {            /* no visible key: P row 0, output row 0 (spec 6) */
      memset(s, 0, sizeof(float) * nk);
      *lse = INFINITY;
      continue;
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < nk; j++) { float p = t5g_vexp(s[j] - mx); s[j] = p; sum += p; }
    float inv = 1.0f / sum;
    for (int j = 0; j < nk; j++) s[j] *= inv;
    *lse = mx + logf(sum);
  }
  const float *Vb = c->v->data + (((size_t)b * c->Tk + klo) * c->K + kvh) * hd;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, hd, nk, 1.0f, S, nk, Vb, c->K * hd, 0.0f, Op, hd);
  size_t span = (size_t)G * hd;
  for (int t = 0; t < nt; t++)
    memcpy(out + (((size_t)b * c->Tq + t0 + t) * H + (size_t)kvh * G) * hd, Op + t * span, span * sizeof(float));
}

/* ---- backward ----------------------------------------------------------------------------- */

/* One query block of one (b, kv head). dK/dV go to dKb/dVb (rows of key j at j*ldkv, already
 * offset to this kv head), dQ is added into the q gradient. */
static void attn_backward_block(const AttnCtx *c, int b, int kvh, int qb, float *dKb, float *dVb, int ldkv,
                                float *Qp, float *dOp, float *dQp, float *S, float *dP, float *Dr,
                                int *kb, int *ke) {
  const int G = c->G, hd = c->hd, H = c->H;
  const int t0 = qb * c->bq, nt = (t0 + c->bq <= c->Tq) ? c->bq : c->Tq - t0, R = nt * G;
  int klo, khi;
  if (!block_range(c, b, t0, nt, kb, ke, &klo, &khi)) return;
  const int nk = khi - klo;
  const int need_s = c->need_q || c->need_k;
  const float *dout = c->out->grad, *out = c->out->data;
  pack_rows(c, c->q->data, b, kvh, t0, nt, Qp);
  pack_rows(c, dout, b, kvh, t0, nt, dOp);
  block_scores(c, b, kvh, t0, nt, klo, khi, kb, ke, Qp, S);
  const float *Kb = c->k->data + (((size_t)b * c->Tk + klo) * c->K + kvh) * hd;
  const float *Vb = c->v->data + (((size_t)b * c->Tk + klo) * c->K + kvh) * hd;
  if (need_s) {
    /* dP = dO V^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, nk, hd, 1.0f, dOp, hd, Vb, c->K * hd, 0.0f, dP, nk);
    for (int r = 0; r < R; r++) {   /* D_r = dO_r . O_r */
      const float *o = out + (((size_t)b * c->Tq + t0 + r / G) * H + (size_t)kvh * G + r % G) * hd;
      const float *d = dOp + (size_t)r * hd;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int i = 0; i < hd; i++) acc += d[i] * o[i];
      Dr[r] = acc;
    }
  }
  const float cap = c->softcap, inv_cap = cap > 0 ? 1.0f / cap : 0.0f;
  for (int r = 0; r < R; r++) {
    int t = r / G, g = r % G;
    const float L = c->lse[((size_t)b * H + kvh * G + g) * c->Tq + t0 + t];
    float *s = S + (size_t)r * nk;
    if (!need_s) {
      for (int j = 0; j < nk; j++) s[j] = t5g_vexp(s[j] - L);
      continue;
    }
    float *dp = dP + (size_t)r * nk;
    const float D = Dr[r];
    if (cap > 0) {
      for (int j = 0; j < nk; j++) {
        float sj = s[j], p = t5g_vexp(sj - L), cj = sj * inv_cap;
        float ds = p * (dp[j] - D) * (1.0f - cj * cj);
        s[j] = p;
        dp[j] = p == 0.0f ? 0.0f : ds;    /* masked: s = -inf, keep the product finite */
      }
    } else {
      for (int j = 0; j < nk; j++) {
        float p = t5g_vexp(s[j] - L);
        s[j] = p;
        dp[j] = p * (dp[j] - D);
      }
    }
  }
  /* now S = P, dP = dS (pre-cap scores, without the scale factor) */
  if (c->need_v)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hd, R, 1.0f, S, nk, dOp, hd, 1.0f,
                dVb + (size_t)klo * ldkv, ldkv);
  if (c->need_k)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hd, R, c->scale, dP, nk, Qp, hd, 1.0f,
                dKb + (size_t)klo * ldkv, ldkv);
  if (c->need_q) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, hd, nk, c->scale, dP, nk, Kb, c->K * hd, 0.0f, dQp, hd);
    float *dq = c->q->grad;
    size_t span = (size_t)G * hd;
    for (int t = 0; t < nt; t++) {
      float *dst = dq + (((size_t)b * c->Tq + t0 + t) * H + (size_t)kvh * G) * hd;
      const float *src = dQp + t * span;
      for (size_t i = 0; i < span; i++) dst[i] += src[i];
    }
  }
}

static void attn_backward(void *vctx) {
  AttnCtx *c = vctx;
  Graph *g = c->g;
  if (!c->out->grad || c->Tq == 0 || c->Tk == 0) return;
  if (c->need_q) tensor_grad(g, c->q);
  float *dk = c->need_k ? tensor_grad(g, c->k) : NULL;
  float *dv = c->need_v ? tensor_grad(g, c->v) : NULL;
  const int B = c->B, K = c->K, hd = c->hd, Tk = c->Tk, nqb = c->nqb, R = c->bq * c->G;
  const int pairs = B * K;
  int nth = omp_get_max_threads();
  int nsplit = 1;
  if (nth > 1 && pairs % nth != 0) {
    nsplit = (2 * nth + pairs - 1) / pairs;
    if (nsplit > nqb) nsplit = nqb;
    if (nsplit < 1) nsplit = 1;
  }
  const int units = pairs * nsplit;
  if (nth > units) nth = units;
  if (nth > c->scratch_threads) nth = c->scratch_threads;
  /* private dK/dV [units, Tk, hd] when a pair is split over several units; given back below */
  ArenaMark mk = arena_mark(g->arena);
  float *pk = NULL, *pv = NULL;
  if (nsplit > 1) {
    if (dk) pk = arena_calloc(g->arena, sizeof(float) * units * (size_t)Tk * hd);
    if (dv) pv = arena_calloc(g->arena, sizeof(float) * units * (size_t)Tk * hd);
  }
  const size_t per = c->scratch_per;
  float *scratch = c->scratch;
  int *iscratch = c->iscratch;
  t5g_blas_single();
#pragma omp parallel num_threads(nth)
  {
    int tid = omp_get_thread_num();
    float *Qp = scratch + per * tid, *dOp = Qp + (size_t)R * hd, *dQp = dOp + (size_t)R * hd;
    float *S = dQp + (size_t)R * hd, *dP = S + (size_t)R * Tk, *Dr = dP + (size_t)R * Tk;
    int *kb = iscratch + 2 * (size_t)c->bq * tid, *ke = kb + c->bq;
#pragma omp for schedule(dynamic, 1)
    for (int u = 0; u < units; u++) {
      int pair = u / nsplit, sp = u % nsplit, b = pair / K, kvh = pair % K;
      float *dKb, *dVb;
      int ld;
      if (nsplit > 1) {
        dKb = pk ? pk + (size_t)u * Tk * hd : NULL;
        dVb = pv ? pv + (size_t)u * Tk * hd : NULL;
        ld = hd;
      } else {
        dKb = dk ? dk + ((size_t)b * Tk * K + kvh) * hd : NULL;
        dVb = dv ? dv + ((size_t)b * Tk * K + kvh) * hd : NULL;
        ld = K * hd;
      }
      for (int qb = sp; qb < nqb; qb += nsplit)
        attn_backward_block(c, b, kvh, qb, dKb, dVb, ld, Qp, dOp, dQp, S, dP, Dr, kb, ke);
    }
    if (nsplit > 1) {   /* reduce the private buffers: rows (b, j, kvh) are independent */
#pragma omp for schedule(static)
      for (int64_t row = 0; row < (int64_t)B * Tk * K; row++) {
        int kvh = (int)(row % K), b = (int)(row / ((int64_t)Tk * K));
        int64_t j = (row / K) % Tk;
        int pair = b * K + kvh;
        for (int sp = 0; sp < nsplit; sp++) {
          size_t src = ((size_t)(pair * nsplit + sp) * Tk + j) * hd;
          if (dk) { float *d = dk + row * hd; const float *s = pk + src; for (int i = 0; i < hd; i++) d[i] += s[i]; }
          if (dv) { float *d = dv + row * hd; const float *s = pv + src; for (int i = 0; i < hd; i++) d[i] += s[i]; }
        }
      }
    }
  }
  t5g_blas_restore();
  arena_release(g->arena, mk);
}

Tensor *op_attention(Graph *g, Tensor *q, Tensor *k, Tensor *v, const AttnMask *mask, float scale, float softcap) {
  OP_PROFILE_BEGIN(g);
  T5G_ASSERT(q->ndim == 4 && k->ndim == 4 && v->ndim == 4 && tensor_same_shape(k, v));
  T5G_ASSERT(q->shape[0] == k->shape[0] && q->shape[3] == k->shape[3]);
  T5G_ASSERT(k->shape[2] > 0 && q->shape[2] % k->shape[2] == 0);
  AttnCtx *c = arena_calloc(g->arena, sizeof *c);
  c->g = g; c->q = q; c->k = k; c->v = v;
  if (mask) c->mask = *mask;
  T5G_ASSERT(!c->mask.q_seg == !c->mask.k_seg);
  c->scale = scale; c->softcap = softcap;
  c->B = (int)q->shape[0]; c->Tq = (int)q->shape[1]; c->H = (int)q->shape[2]; c->hd = (int)q->shape[3];
  c->Tk = (int)k->shape[1]; c->K = (int)k->shape[2]; c->G = c->H / c->K;
  c->bq = block_queries(c->G, c->Tq);
  c->nqb = (c->Tq + c->bq - 1) / c->bq;
  Tensor *out = tensor_new3(g, "attn_out", c->B, c->Tq, (int64_t)c->H * c->hd);
  c->out = out;
  c->lse = arena_alloc(g->arena, sizeof(float) * (size_t)c->B * c->H * (c->Tq ? c->Tq : 1));
  out->requires_grad = q->requires_grad || k->requires_grad || v->requires_grad;
  if (c->Tk == 0) memset(out->data, 0, sizeof(float) * out->n);
  if (c->Tq > 0 && c->Tk > 0) {
    const int R = c->bq * c->G, tasks = c->B * c->K * c->nqb;
    /* one allocation per call, sized for the backward too when it will run */
    const int record = tensor_needs_grad(g, q) || tensor_needs_grad(g, k) || tensor_needs_grad(g, v);
    ArenaMark mk = arena_mark(g->arena);   /* scratch is given back unless the backward needs it */
    int nth = omp_get_max_threads();
    c->scratch_threads = nth;
    if (!record && nth > tasks) nth = tasks;
    const size_t per = scratch_floats(c, record);
    float *scratch = arena_alloc(g->arena, sizeof(float) * per * nth);
    int *iscratch = arena_alloc(g->arena, sizeof(int) * 2 * (size_t)c->bq * nth);
    c->scratch = scratch; c->iscratch = iscratch; c->scratch_per = per;
    if (nth > tasks) nth = tasks;
    t5g_blas_single();
#pragma omp parallel num_threads(nth)
    {
      int tid = omp_get_thread_num();
      float *Qp = scratch + per * tid, *Op = Qp + (size_t)R * c->hd, *S = Op + (size_t)R * c->hd;
      int *kb = iscratch + 2 * (size_t)c->bq * tid, *ke = kb + c->bq;
#pragma omp for schedule(dynamic, 1)
      for (int task = 0; task < tasks; task++) {
        int qb = task % c->nqb, pair = task / c->nqb;
        attn_forward_block(c, pair / c->K, pair % c->K, qb, Qp, S, Op, kb, ke);
      }
    }
    t5g_blas_restore();
    if (!record) arena_release(g->arena, mk);
  }
  c->need_q = tensor_needs_grad(g, q);
  c->need_k = tensor_needs_grad(g, k);
  c->need_v = tensor_needs_grad(g, v);
  if (c->need_q || c->need_k || c->need_v) graph_record(g, attn_backward, c, OPK_ATTENTION);
  OP_PROFILE_END(g, OPK_ATTENTION);
  return out;
}
