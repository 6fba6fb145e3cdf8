/* logit_rows.h: the row kernels of the soft-capped cross-entropy over a vocabulary (internal,
 * header-only), shared by the f32 loss (model/ops_loss.c) and the bf16-weight LM head
 * (model/weights_bf16.c) so that both compute every row the same way: the cross-entropy rows, and
 * the top-k teacher probabilities (logits_topk, lm_head_topk). Needs model/vmath.h. */
#ifndef T5G_LOGIT_ROWS_H
#define T5G_LOGIT_ROWS_H

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include "model/vmath.h"

/* Rows per chunk: about 256 MiB of logits (2^26 floats), between 16 and 256 rows (256 rows for
 * V = 256000). Larger chunks make the [V, d] products re-read E and dE less often and give the
 * logits sgemm a larger M: on gemma2-s (1024 rows) going from 131 to 262 rows per chunk made
 * the loss ~3% faster for +40 MB of peak memory. */
static int64_t chunk_rows(int64_t V) {
  int64_t ch = ((int64_t)1 << 26) / (V > 0 ? V : 1);
  if (ch > 256) ch = 256;
  if (ch < 16) ch = 16;
  return ch;
}

/* z = cap·tanh(z/cap) in place. */
static inline void cap_row(float *z, int64_t V, float cap) {
  if (cap <= 0) return;
  const float inv = 1.0f / cap;
  for (int64_t j = 0; j < V; j++) z[j] = cap * t5g_vtanh(z[j] * inv);
}

static inline float row_max(const float *z, int64_t V) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < V; j++) m = z[j] > m ? z[j] : m;
  return m;
}

/* log Σ exp(z_j · s) with m = max_j z_j · s (s > 0). Blocks of 4096 are summed in 16 float
 * lanes (vectorised without reassociating a scalar sum), blocks are added in double. */
static inline double row_lse(const float *z, int64_t V, float s, float m) {
  double total = 0.0;
  int64_t j = 0;
  while (j < V) {
    const int64_t e = V - j > 4096 ? j + 4096 : V;
    float acc[16] = {0};
    for (; j + 16 <= e; j += 16)
      for (int l = 0; l < 16; l++) acc[l] += t5g_vexp(z[j + l] * s - m);
    double blk = 0.0;
    for (; j < e; j++) blk += t5g_vexp(z[j] * s - m);
    for (int l = 0; l < 16; l++) blk += acc[l];
    total += blk;
  }
  return (double)m + log(total);
}

/* Soft-cap a row in place and return its max and log-sum-exp from the same pass. Valid for
 * 0 < cap <= 40: capped logits lie in [−cap, cap], so every exp(z − cap) is in [e^(−2cap), 1], a
 * normal float, and lse = cap + log Σ exp(z − cap) needs no max shift (one pass over the row
 * instead of three: cap, max, exp-sum). Sums as row_lse: 16 float lanes per block of 4096,
 * blocks in double. */
static inline void cap_max_lse(float *z, int64_t V, float cap, float *m_out, double *lse_out) {
  const float inv = 1.0f / cap;
  double total = 0.0;
  float mx = -INFINITY;
  int64_t j = 0;
  while (j < V) {
    const int64_t e = V - j > 4096 ? j + 4096 : V;
    float acc[16] = {0}, ml[16];
    for (int l = 0; l < 16; l++) ml[l] = -INFINITY;
    for (; j + 16 <= e; j += 16)
      for (int l = 0; l < 16; l++) {
        const float v = cap * t5g_vtanh(z[j + l] * inv);
        z[j + l] = v;
        acc[l] += t5g_vexp(v - cap);
        ml[l] = v > ml[l] ? v : ml[l];
      }
    double blk = 0.0;
    for (; j < e; j++) {
      const float v = cap * t5g_vtanh(z[j] * inv);
      z[j] = v;
      blk += t5g_vexp(v - cap);
      mx = v > mx ? v : mx;
    }
    for (int l = 0; l < 16; l++) { blk += acc[l]; mx = ml[l] > mx ? ml[l] : mx; }
    total += blk;
  }
  *m_out = mx;
  *lse_out = (double)cap + log(total);
}

/* First index j with z[j] == m (torch.argmax semantics), V if none. */
static inline int64_t first_index_of(const float *z, int64_t V, float m) {
  int64_t j = 0;
  for (; j + 16 <= V; j += 16) {
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int l = 0; l < 16; l++) hit |= z[j + l] == m;
    if (hit) break;
  }
  while (j < V && z[j] != m) j++;      /* j == V only for an all-NaN row */
  return j;
}

/* ---- top-k teacher probabilities (logits_topk, lm_head_topk) -------------------------------- */

/* Heap entry; a is "better" than b when its value is larger, ties to the lower id. */
typedef struct { float v; int32_t id; } TopEnt;
static inline int top_better(TopEnt a, TopEnt b) { return a.v > b.v || (a.v == b.v && a.id < b.id); }

/* Min-heap (root = worst kept entry) sift-down. */
static inline void top_heap_down(TopEnt *hp, int n, int i) {
  for (;;) {
    int l = 2 * i + 1, r = l + 1, w = i;
    if (l < n && top_better(hp[w], hp[l])) w = l;
    if (r < n && top_better(hp[w], hp[r])) w = r;
    if (w == i) return;
    TopEnt t = hp[i]; hp[i] = hp[w]; hp[w] = t;
    i = w;
  }
}

static inline int top_cmp_desc(const void *pa, const void *pb) {
  TopEnt a = *(const TopEnt *)pa, b = *(const TopEnt *)pb;
  return top_better(a, b) ? -1 : top_better(b, a) ? 1 : 0;
}

/* The k best of z[0..V) into hp[0..k), sorted best first. */
static inline void select_topk(const float *z, int64_t V, int k, TopEnt *hp) {
  int n = 0;
  for (int64_t j = 0; j < V; j++) {
    TopEnt e = {z[j], (int32_t)j};
    if (n < k) {
      hp[n++] = e;
      if (n == k) for (int i = k / 2 - 1; i >= 0; i--) top_heap_down(hp, k, i);
    } else if (top_better(e, hp[0])) {
      hp[0] = e;
      top_heap_down(hp, k, 0);
    }
  }
  qsort(hp, (size_t)n, sizeof *hp, top_cmp_desc);
}

/* One row of uncapped logits z[V] (overwritten: capped, divided by T) -> the teacher's
 * probabilities at temperature T (spec 4.2): io == NULL (k == V): po[V] = softmax(z/T) in
 * vocabulary order; else io/po[k] = the k most probable ids (descending probability, ties to the
 * lower id) and their probabilities renormalised over the k. hp: k entries of scratch. */
static inline void topk_row(float *z, int64_t V, float cap, float invT, int k, TopEnt *hp, int32_t *io, float *po) {
  cap_row(z, V, cap);
  for (int64_t j = 0; j < V; j++) z[j] *= invT;
  const float m = row_max(z, V);
  if (!io) {
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < V; j++) s += (double)t5g_vexp(z[j] - m);
    const double inv = 1.0 / s;
    for (int64_t j = 0; j < V; j++) po[j] = (float)(t5g_vexp(z[j] - m) * inv);
    return;
  }
  select_topk(z, V, k, hp);
  double s = 0.0;
  for (int j = 0; j < k; j++) s += (double)t5g_vexp(hp[j].v - m);
  const double inv = 1.0 / s;
  for (int j = 0; j < k; j++) { io[j] = hp[j].id; po[j] = (float)(t5g_vexp(hp[j].v - m) * inv); }
}

/* topk_row over the rows of a chunk Z[n, V] (OpenMP over rows); row r's outputs go to
 * io + r·k, po + r·k. heaps: k entries per OpenMP thread (NULL when io is NULL). */
static inline void topk_rows(float *Z, int64_t n, int64_t V, float cap, float temperature, int k, TopEnt *heaps,
                             int32_t *io, float *po) {
  const float invT = 1.0f / temperature;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; r++)
    topk_row(Z + r * V, V, cap, invT, k, io ? heaps + (size_t)omp_get_thread_num() * k : NULL,
             io ? io + r * (int64_t)k : NULL, po + r * (int64_t)k);
}

#endif
