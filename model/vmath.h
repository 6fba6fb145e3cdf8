/* vmath.h: vectorisable float exp and tanh for the attention and loss kernels (internal header).
 *
 * glibc's expf/tanhf are scalar calls, so a loop over a row of scores runs one element at a time
 * (the build uses no -ffast-math, so libmvec is not used). These inline versions are branch-free
 * and gcc -O3 -march=native turns loops over them into AVX2/AVX-512 code.
 * Method (Cephes single precision, S. L. Moshier, "Methods and Programs for Mathematical
 * Functions", 1989; re-derived here, not copied):
 *   exp(x): n = round(x / ln 2), r = x − n ln 2 (ln 2 split in two parts so r is exact),
 *           exp(r) ≈ 1 + r + r² P(r) with a degree-5 minimax P on |r| <= ln2/2, times 2^n built
 *           from the exponent bits. Max relative error about 2 ulp for x in [−87, 88].
 *           x < −87 returns exactly 0 (also for −INFINITY), which is what masked scores need.
 *   tanh(x): |x| < 0.625: x + x³ Q(x²) (degree-4 minimax Q); otherwise sign(x)(1 − 2/(exp(2|x|)+1)).
 *           Max relative error about 3 ulp; saturates to exactly ±1 for |x| > 9.
 * Valid for finite x and −INFINITY (exp). NaN inputs give unspecified finite or NaN results.
 */
#ifndef T5G_VMATH_H
#define T5G_VMATH_H

#include <stdint.h>
#include <string.h>

static inline float t5g_vexp(float x) {
  float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  /* round to nearest via the 1.5·2^23 trick (exact without FP contraction) */
  float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r2 + r + 1.0f;
  int32_t e = ((int32_t)n + 127) << 23;
  float s;
  memcpy(&s, &e, sizeof s);
  y = y * s;
  return x < -87.0f ? 0.0f : y;
}

static inline float t5g_vtanh(float x) {
  float ax = x < 0 ? -x : x;
  /* small |x|: odd polynomial */
  float z = x * x;
  float q = -5.70498872745e-3f;
  q = q * z + 2.06390887954e-2f;
  q = q * z - 5.37397155531e-2f;
  q = q * z + 1.33314422036e-1f;
  q = q * z - 3.33332819422e-1f;
  float small = q * z * x + x;
  /* large |x| */
  float e = t5g_vexp(2.0f * (ax > 44.0f ? 44.0f : ax));
  float big = 1.0f - 2.0f / (e + 1.0f);
  big = x < 0 ? -big : big;
  return ax < 0.625f ? small : big;
}

#endif
