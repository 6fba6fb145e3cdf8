/* logit_rows.h: the row kernels of the soft-capped cross-entropy over a vocabulary (internal,
 * header-only), shared by the f32 loss (model/ops_loss.c) and the bf16-weight LM head
 * (model/weights_bf16.c) so that both compute every row the same way. Needs model/vmath.h. */
#ifndef T5G_LOGIT_ROWS_H
#define T5G_LOGIT_ROWS_H

#include <math.h>
#include <stdint.h>
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

#endif
