/* rng.h: the project's random generator (header-only): PCG-style 64-bit state, splitmix64
 * output mixing. Small state (one uint64) so that checkpoints store it exactly and resume is
 * bit-identical. Not cryptographic.
 *   Rng r; rng_seed(&r, 42); uint64_t x = rng_u64(&r); float u = rng_uniform(&r); */
#ifndef T5G_RNG_H
#define T5G_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct Rng { uint64_t s; } Rng;

static inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
static inline void rng_seed(Rng *r, uint64_t seed) { r->s = splitmix64(seed ^ 0x5851f42d4c957f2dULL); }
static inline uint64_t rng_u64(Rng *r) { r->s += 0x9e3779b97f4a7c15ULL; return splitmix64(r->s); }
/* Uniform in [0, 1) with 24 random bits (float) or 53 (double). */
static inline float rng_uniform(Rng *r) { return (float)(rng_u64(r) >> 40) * (1.0f / 16777216.0f); }
static inline double rng_uniform_d(Rng *r) { return (double)(rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }
/* Uniform integer in [0, n), n > 0 (Lemire's multiply-shift, negligible bias for n << 2^32). */
static inline uint64_t rng_below(Rng *r, uint64_t n) { return (uint64_t)(((__uint128_t)rng_u64(r) * n) >> 64); }
/* Standard normal (Box-Muller, one value per call). */
static inline double rng_normal(Rng *r) {
  double u1 = rng_uniform_d(r), u2 = rng_uniform_d(r);
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
/* Stateless: a uniform float in [0,1) from (seed, index), for dropout masks. */
static inline float rng_hash_uniform(uint64_t seed, uint64_t index) {
  return (float)(splitmix64(seed ^ splitmix64(index)) >> 40) * (1.0f / 16777216.0f);
}

#endif
