/* gemm.c: matrix products on the OpenMP pool (see gemm.h). */
#include "model/gemm.h"
#include "model/runtime.h"
#include "model/util.h"
#include <cblas.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MIN_MN 128                 /* smallest M or N piece */
#define MIN_K 512                  /* smallest K piece */
#define PIECES_PER_THREAD 2        /* dynamic schedule: a stalled thread's share is picked up */
#define MAX_SCRATCH ((int64_t)16 << 20)   /* floats of K-cut partials (64 MiB) */

static float *g_scratch;
static int64_t g_scratch_n;

static inline void kernel(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                          const float *B, int ldb, float beta, float *C, int ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
              lda, B, ldb, beta, C, ldc);
}

/* Pieces for a dimension of size n with minimum piece size mn: up to want, at least 1. */
static int pieces_for(int64_t n, int mn, int want) {
  int64_t p = n / mn;
  if (p > want) p = want;
  return p < 1 ? 1 : (int)p;
}

/* Start of piece p of np over [0, n), rounded to multiples of `unit` (except the end). */
static inline int cut(int n, int np, int p, int unit) {
  if (p >= np) return n;
  int64_t x = (int64_t)n * p / np;
  x = x / unit * unit;
  return (int)x;
}

void t5g_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
               float beta, float *C, int ldc) {
  if (M <= 0 || N <= 0) return;
  const int nt = omp_get_max_threads();
  if (K <= 0 || nt <= 1 || omp_in_parallel()) {
    kernel(ta, tb, M, N, K > 0 ? K : 0, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const int want = nt * PIECES_PER_THREAD;
  const int pm = pieces_for(M, MIN_MN, want), pn = pieces_for(N, MIN_MN, want), pk = pieces_for(K, MIN_K, want);
  /* shared volume re-read per piece: cut M -> B [K,N], cut N -> A [M,K], cut K -> C partial [M,N] */
  double vm = pm >= nt ? (double)K * N * pm : 1e300;
  double vn = pn >= nt ? (double)M * K * pn : 1e300;
  double vk = pk >= nt && (int64_t)(pk - 1) * M * N <= MAX_SCRATCH ? 2.0 * M * N * pk : 1e300;
  int mode = -1;
  double best = 1e300;
  if (vm < best) { best = vm; mode = 0; }
  if (vn < best) { best = vn; mode = 1; }
  if (vk < best) { best = vk; mode = 2; }
  if (mode < 0 || 2.0 * M * N * K < 4e6) {
    /* too small to cut for every thread (at most 2·256·256·1024 flops for 2 threads): one
     * single-threaded call, so OpenBLAS's pool is never woken by the engine */
    t5g_blas_single();
    kernel(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    t5g_blas_restore();
    return;
  }
  if (mode == 2) {
    const int np = pk;
    const int64_t need = (int64_t)(np - 1) * M * N;
    if (need > g_scratch_n) {
      free(g_scratch);
      g_scratch = t5g_alloc_aligned((size_t)need * sizeof(float));
      g_scratch_n = need;
    }
    float *scr = g_scratch;
    t5g_blas_single();
#pragma omp parallel for schedule(dynamic, 1)
    for (int p = 0; p < np; p++) {
      const int k0 = cut(K, np, p, 16), k1 = cut(K, np, p + 1, 16);
      const float *Ap = ta ? A + (size_t)k0 * lda : A + k0;
      const float *Bp = tb ? B + k0 : B + (size_t)k0 * ldb;
      if (p == 0) kernel(ta, tb, M, N, k1 - k0, alpha, Ap, lda, Bp, ldb, beta, C, ldc);
      else kernel(ta, tb, M, N, k1 - k0, alpha, Ap, lda, Bp, ldb, 0.0f, scr + (size_t)(p - 1) * M * N, N);
    }
    /* C += partials, in piece order, rows split over the threads */
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
      float *restrict c = C + (size_t)i * ldc;
      for (int p = 1; p < np; p++) {
        const float *restrict s = scr + (size_t)(p - 1) * M * N + (size_t)i * N;
        for (int j = 0; j < N; j++) c[j] += s[j];
      }
    }
    t5g_blas_restore();
    return;
  }
  const int np = mode == 0 ? pm : pn, D = mode == 0 ? M : N;
  t5g_blas_single();
#pragma omp parallel for schedule(dynamic, 1)
  for (int p = 0; p < np; p++) {
    const int a = cut(D, np, p, 16), b = cut(D, np, p + 1, 16);
    if (b <= a) continue;
    if (mode == 0) {
      const float *Ap = ta ? A + a : A + (size_t)a * lda;
      kernel(ta, tb, b - a, N, K, alpha, Ap, lda, B, ldb, beta, C + (size_t)a * ldc, ldc);
    } else {
      const float *Bp = tb ? B + (size_t)a * ldb : B + a;
      kernel(ta, tb, M, b - a, K, alpha, A, lda, Bp, ldb, beta, C + a, ldc);
    }
  }
  t5g_blas_restore();
}
