/* adamw.c: AdamW and gradient clipping over the flat parameter buffer (see adamw.h). */
#include "optim/adamw.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

/* Update chunk (floats): small enough to balance threads, large enough that the per-chunk entry
 * search is negligible. */
#define UPDATE_CHUNK ((int64_t)1 << 15)
/* Gradient norm: the slice is cut into at most this many chunks, summed in order. */
#define NORM_CHUNKS 4096

void adamw_config_default(AdamWConfig *c) {
  c->beta1 = 0.9;
  c->beta2 = 0.95;
  c->eps = 1e-8;
  c->weight_decay = 0.1;
  c->decay_embed = 0;
  c->max_grad_norm = 1.0;
}

int adamw_config_check(const AdamWConfig *c, const char *source) {
  const char *src = source ? source : "optimizer config";
  if (!(c->beta1 >= 0 && c->beta1 < 1)) return t5g_error("%s: beta1 must be in [0, 1), found %g", src, c->beta1);
  if (!(c->beta2 >= 0 && c->beta2 < 1)) return t5g_error("%s: beta2 must be in [0, 1), found %g", src, c->beta2);
  if (!(c->eps > 0 && isfinite(c->eps))) return t5g_error("%s: eps must be > 0, found %g", src, c->eps);
  if (!(c->weight_decay >= 0 && isfinite(c->weight_decay)))
    return t5g_error("%s: weight_decay must be >= 0, found %g", src, c->weight_decay);
  if (isnan(c->max_grad_norm)) return t5g_error("%s: max_grad_norm must be a number (<= 0 disables clipping), found nan", src);
  return 0;
}

int adamw_init(AdamW *opt, const ParamStore *ps, const AdamWConfig *cfg, int64_t lo, int64_t hi) {
  memset(opt, 0, sizeof *opt);
  if (!ps->finalized) return t5g_error("adamw_init: the parameter store is not finalized");
  if (!(0 <= lo && lo <= hi && hi <= ps->n_total))
    return t5g_error("adamw_init: slice [%lld, %lld) is not inside the flat buffer [0, %lld)",
                     (long long)lo, (long long)hi, (long long)ps->n_total);
  if (adamw_config_check(cfg, "adamw_init") != 0) return -1;
  for (int i = 1; i < ps->n; i++) T5G_ASSERT(ps->e[i].offset >= ps->e[i - 1].offset + ps->e[i - 1].t.n);
  opt->cfg = *cfg;
  opt->n_entries = ps->n;
  opt->n_total = ps->n_total;
  opt->lo = lo;
  opt->hi = hi;
  size_t bytes = (size_t)(hi - lo) * sizeof(float);
  opt->m = t5g_alloc_aligned(bytes);
  opt->v = t5g_alloc_aligned(bytes);
  memset(opt->m, 0, bytes);
  memset(opt->v, 0, bytes);
  opt->entry_step = t5g_calloc((size_t)(ps->n > 0 ? ps->n : 1), sizeof(int64_t));
  opt->coef = t5g_calloc((size_t)(ps->n > 0 ? ps->n : 1), sizeof(AdamWCoef));
  return 0;
}

void adamw_free(AdamW *opt) {
  free(opt->m); free(opt->v); free(opt->entry_step); free(opt->coef);
  memset(opt, 0, sizeof *opt);
}

int adamw_entry_decays(const AdamWConfig *cfg, const ParamEntry *e) {
  switch (e->group) {
    case PG_MATRIX: return 1;
    case PG_EMBED:  return cfg->decay_embed != 0;
    case PG_NORM:   return 0;
  }
  return 0;
}

/* First entry whose element range ends after position `pos` (entries sorted by offset). */
static int first_entry_ending_after(const ParamStore *ps, int64_t pos) {
  int a = 0, b = ps->n;
  while (a < b) {
    int mid = a + (b - a) / 2;
    if (ps->e[mid].offset + ps->e[mid].t.n <= pos) a = mid + 1; else b = mid;
  }
  return a;
}

/* The AdamW element update on n contiguous elements. All operations are single IEEE float
 * operations in the same order in the vector and scalar paths (the build uses
 * -ffp-contract=off), so both give identical bits. Intrinsics rather than auto-vectorization
 * because sqrtf does not vectorize without -fno-math-errno, which the shared build does not set. */
static void adamw_kernel(float *restrict p, const float *restrict g, float *restrict m,
                         float *restrict v, int64_t n, float b1, float b2, const AdamWCoef *c,
                         float eps) {
  const float a1 = 1.0f - b1, a2 = 1.0f - b2;
  const float step = c->step_size, rbc2 = c->rbc2, decay = c->decay;
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 vb1 = _mm512_set1_ps(b1), vb2 = _mm512_set1_ps(b2), va1 = _mm512_set1_ps(a1),
               va2 = _mm512_set1_ps(a2), vstep = _mm512_set1_ps(step), vr = _mm512_set1_ps(rbc2),
               veps = _mm512_set1_ps(eps), vdec = _mm512_set1_ps(decay);
  for (; i + 16 <= n; i += 16) {
    __m512 gi = _mm512_loadu_ps(g + i);
    __m512 mi = _mm512_add_ps(_mm512_mul_ps(vb1, _mm512_loadu_ps(m + i)), _mm512_mul_ps(va1, gi));
    __m512 vi = _mm512_add_ps(_mm512_mul_ps(vb2, _mm512_loadu_ps(v + i)),
                              _mm512_mul_ps(va2, _mm512_mul_ps(gi, gi)));
    _mm512_storeu_ps(m + i, mi);
    _mm512_storeu_ps(v + i, vi);
    __m512 den = _mm512_add_ps(_mm512_mul_ps(_mm512_sqrt_ps(vi), vr), veps);
    __m512 upd = _mm512_mul_ps(vstep, _mm512_div_ps(mi, den));
    _mm512_storeu_ps(p + i, _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(p + i), vdec), upd));
  }
#elif defined(__AVX__)
  const __m256 vb1 = _mm256_set1_ps(b1), vb2 = _mm256_set1_ps(b2), va1 = _mm256_set1_ps(a1),
               va2 = _mm256_set1_ps(a2), vstep = _mm256_set1_ps(step), vr = _mm256_set1_ps(rbc2),
               veps = _mm256_set1_ps(eps), vdec = _mm256_set1_ps(decay);
  for (; i + 8 <= n; i += 8) {
    __m256 gi = _mm256_loadu_ps(g + i);
    __m256 mi = _mm256_add_ps(_mm256_mul_ps(vb1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(va1, gi));
    __m256 vi = _mm256_add_ps(_mm256_mul_ps(vb2, _mm256_loadu_ps(v + i)),
                              _mm256_mul_ps(va2, _mm256_mul_ps(gi, gi)));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    __m256 den = _mm256_add_ps(_mm256_mul_ps(_mm256_sqrt_ps(vi), vr), veps);
    __m256 upd = _mm256_mul_ps(vstep, _mm256_div_ps(mi, den));
    _mm256_storeu_ps(p + i, _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(p + i), vdec), upd));
  }
#endif
  for (; i < n; i++) {
    float gi = g[i];
    float mi = b1 * m[i] + a1 * gi;
    float vi = b2 * v[i] + a2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    float den = sqrtf(vi) * rbc2 + eps;
    float upd = step * (mi / den);
    p[i] = p[i] * decay - upd;
  }
}

void adamw_step(AdamW *opt, ParamStore *ps, double lr) {
  T5G_ASSERT(ps->n == opt->n_entries && ps->n_total == opt->n_total);
  const AdamWConfig *cfg = &opt->cfg;
  opt->step++;
  for (int e = 0; e < ps->n; e++) {
    AdamWCoef *c = &opt->coef[e];
    if (ps->e[e].frozen) { c->skip = 1; continue; }
    int64_t t = ++opt->entry_step[e];
    double bc1 = 1.0 - pow(cfg->beta1, (double)t);
    double bc2 = 1.0 - pow(cfg->beta2, (double)t);
    double wd = adamw_entry_decays(cfg, &ps->e[e]) ? cfg->weight_decay : 0.0;
    c->skip = 0;
    c->step_size = (float)(lr / bc1);
    c->rbc2 = (float)(1.0 / sqrt(bc2));
    c->decay = (float)(1.0 - lr * wd);
  }
  const int64_t lo = opt->lo, hi = opt->hi;
  const int64_t nchunks = (hi - lo + UPDATE_CHUNK - 1) / UPDATE_CHUNK;
  const float b1 = (float)cfg->beta1, b2 = (float)cfg->beta2, eps = (float)cfg->eps;
  float *data = ps->data, *grad = ps->grad, *mm = opt->m, *vv = opt->v;
  const AdamWCoef *coef = opt->coef;
  #pragma omp parallel for schedule(static)
  for (int64_t ch = 0; ch < nchunks; ch++) {
    int64_t c0 = lo + ch * UPDATE_CHUNK, c1 = c0 + UPDATE_CHUNK < hi ? c0 + UPDATE_CHUNK : hi;
    for (int e = first_entry_ending_after(ps, c0); e < ps->n && ps->e[e].offset < c1; e++) {
      if (coef[e].skip) continue;
      int64_t a = ps->e[e].offset > c0 ? ps->e[e].offset : c0;
      int64_t b = ps->e[e].offset + ps->e[e].t.n < c1 ? ps->e[e].offset + ps->e[e].t.n : c1;
      if (a >= b) continue;
      adamw_kernel(data + a, grad + a, mm + (a - lo), vv + (a - lo), b - a, b1, b2, &coef[e], eps);
    }
  }
}

static double sumsq_range(const float *restrict g, int64_t n) {
  double s = 0;
  #pragma omp simd reduction(+:s)
  for (int64_t i = 0; i < n; i++) { double x = g[i]; s += x * x; }
  return s;
}

double adamw_grad_sumsq(const ParamStore *ps, int64_t lo, int64_t hi) {
  T5G_ASSERT(0 <= lo && lo <= hi && hi <= ps->n_total);
  if (hi == lo) return 0.0;
  double part[NORM_CHUNKS];
  int64_t len = (hi - lo + NORM_CHUNKS - 1) / NORM_CHUNKS;
  len = (len + 15) & ~(int64_t)15;
  int nch = (int)((hi - lo + len - 1) / len);
  const float *grad = ps->grad;
  #pragma omp parallel for schedule(static)
  for (int ch = 0; ch < nch; ch++) {
    int64_t c0 = lo + ch * len, c1 = c0 + len < hi ? c0 + len : hi;
    double s = 0;
    for (int e = first_entry_ending_after(ps, c0); e < ps->n && ps->e[e].offset < c1; e++) {
      if (ps->e[e].frozen) continue;
      int64_t a = ps->e[e].offset > c0 ? ps->e[e].offset : c0;
      int64_t b = ps->e[e].offset + ps->e[e].t.n < c1 ? ps->e[e].offset + ps->e[e].t.n : c1;
      if (a < b) s += sumsq_range(grad + a, b - a);
    }
    part[ch] = s;
  }
  double s = 0;
  for (int ch = 0; ch < nch; ch++) s += part[ch];
  return s;
}

void adamw_scale_grad(ParamStore *ps, int64_t lo, int64_t hi, float s) {
  T5G_ASSERT(0 <= lo && lo <= hi && hi <= ps->n_total);
  const int64_t nchunks = (hi - lo + UPDATE_CHUNK - 1) / UPDATE_CHUNK;
  float *grad = ps->grad;
  #pragma omp parallel for schedule(static)
  for (int64_t ch = 0; ch < nchunks; ch++) {
    int64_t c0 = lo + ch * UPDATE_CHUNK, c1 = c0 + UPDATE_CHUNK < hi ? c0 + UPDATE_CHUNK : hi;
    for (int e = first_entry_ending_after(ps, c0); e < ps->n && ps->e[e].offset < c1; e++) {
      if (ps->e[e].frozen) continue;
      int64_t a = ps->e[e].offset > c0 ? ps->e[e].offset : c0;
      int64_t b = ps->e[e].offset + ps->e[e].t.n < c1 ? ps->e[e].offset + ps->e[e].t.n : c1;
      float *restrict g = grad + a;
      for (int64_t i = 0; i < b - a; i++) g[i] *= s;
    }
  }
}

double adamw_clip_coef(double norm, double max_norm) {
  if (!(max_norm > 0) || !isfinite(norm)) return 1.0;
  double c = max_norm / (norm + 1e-6);
  return c < 1.0 ? c : 1.0;
}

double adamw_clip_grad_norm(ParamStore *ps, double max_norm, int *nonfinite) {
  double norm = sqrt(adamw_grad_sumsq(ps, 0, ps->n_total));
  int bad = !isfinite(norm);
  if (nonfinite) *nonfinite = bad;
  double c = adamw_clip_coef(norm, max_norm);
  if (!bad && c < 1.0) adamw_scale_grad(ps, 0, ps->n_total, (float)c);
  return norm;
}
