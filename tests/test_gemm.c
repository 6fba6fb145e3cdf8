/* test_gemm.c: the engine's parallel matrix product (model/gemm.h) and the loss's gradients
 * computed in the forward (model/ops_loss.c, issue 8) under an upstream gradient dL != 1.
 *
 *  - t5g_sgemm against a naive double-precision product, for the four transpose cases, with
 *    leading dimensions larger than the rows, beta 0 / 1 / 0.5 and alpha != 1, at shapes that take
 *    each path: a cut along M, along N, along K (private partials summed), and a product too small
 *    to cut; with 2 and 3 threads (uneven pieces), and a call from inside an OpenMP region.
 *  - op_softcap_ce followed by a test op y = s·loss (so d(loss) = s): dh and dE against the
 *    analytic gradient of the loss written independently in double (z = cap·tanh(h·E/cap),
 *    softmax, (p − onehot)·(1 − tanh²)·s / normalizer), for s = 1, 2.5, −0.75 and 0, accumulated
 *    into a prefilled gradient of E.
 */
#include "tests/check.h"
#include "model/gemm.h"
#include "model/ops.h"
#include "model/runtime.h"
#include "model/tensor.h"
#include <omp.h>
#include <stdint.h>

static __thread uint64_t rs = 0x9e3779b97f4a7c15ULL;   /* per thread: one test calls from OpenMP threads */
static double urand(void) {   /* uniform in [-1, 1) (xorshift64*) */
  rs ^= rs >> 12; rs ^= rs << 25; rs ^= rs >> 27;
  return (double)((rs * 0x2545F4914F6CDD1DULL) >> 11) / (double)(1ULL << 52) - 1.0;
}

/* C = alpha·op(A)·op(B) + beta·C in double, row-major with leading dimensions. */
static void ref_gemm(int ta, int tb, int M, int N, int K, double alpha, const float *A, int lda, const float *B, int ldb,
                     double beta, const float *C0, double *C, int ldc) {
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      double s = 0;
      for (int k = 0; k < K; k++) {
        double a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
        double b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
        s += a * b;
      }
      C[(size_t)i * ldc + j] = alpha * s + beta * C0[(size_t)i * ldc + j];
    }
}

/* One product checked element-wise: |c − ref| <= 1e-5·(Σ|a||b| scale) (f32 accumulation). */
static int check_gemm(int ta, int tb, int M, int N, int K, float alpha, float beta, int pad, char *msg, size_t ml) {
  int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
  float *A = malloc(na * 4), *B = malloc(nb * 4), *C = malloc(nc * 4), *C0 = malloc(nc * 4);
  double *R = malloc(nc * 8);
  for (size_t i = 0; i < na; i++) A[i] = (float)urand();
  for (size_t i = 0; i < nb; i++) B[i] = (float)urand();
  for (size_t i = 0; i < nc; i++) C0[i] = C[i] = (float)urand();
  if (beta == 0.0f)   /* beta 0 must not read C */
    for (int i = 0; i < M; i++) for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = NAN;
  ref_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C0, R, ldc);
  t5g_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  int ok = 1;
  double tol = 2e-6 * K * fabs(alpha) + 1e-6;
  for (int i = 0; i < M && ok; i++) {
    for (int j = 0; j < N; j++) {
      double d = fabs(C[(size_t)i * ldc + j] - R[(size_t)i * ldc + j]);
      if (!(d <= tol)) {
        snprintf(msg, ml, "ta %d tb %d M %d N %d K %d: C[%d,%d] = %.8g, expected %.8g", ta, tb, M, N, K, i, j,
                 C[(size_t)i * ldc + j], R[(size_t)i * ldc + j]);
        ok = 0;
        break;
      }
    }
    /* padding columns untouched */
    for (int j = N; j < ldc && ok; j++)
      if (!(C[(size_t)i * ldc + j] == C0[(size_t)i * ldc + j])) {
        snprintf(msg, ml, "padding C[%d,%d] was written", i, j);
        ok = 0;
      }
  }
  free(A); free(B); free(C); free(C0); free(R);
  return ok;
}

TEST(sgemm_all_cuts_and_transposes) {
  /* M cut (M large), N cut (N large), K cut (M, N small, K large), too small to cut */
  static const int shapes[][3] = {{700, 40, 100}, {37, 600, 120}, {20, 24, 6000}, {30, 50, 40}, {300, 300, 300}};
  int saved = t5g_threads();
  for (int nt = 2; nt <= 3; nt++) {
    t5g_set_threads(nt);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
          char msg[256];
          float beta = (ta + tb + (int)s) % 3 == 0 ? 0.0f : (ta ? 1.0f : 0.5f);
          int ok = check_gemm(ta, tb, shapes[s][0], shapes[s][1], shapes[s][2], ta == tb ? 1.0f : -0.7f, beta, (int)s % 2 * 3, msg, sizeof msg);
          if (!ok) { t5g_set_threads(saved); FAILF("%d threads: %s", nt, msg); }
        }
  }
  t5g_set_threads(saved);
}

TEST(sgemm_inside_openmp_region) {
  int saved = t5g_threads();
  t5g_set_threads(2);
  int bad = 0;
  char msg[256] = "";
  t5g_blas_single();
#pragma omp parallel num_threads(2) reduction(+ : bad)
  {
    char m[256];
    if (!check_gemm(omp_get_thread_num(), 1, 300, 200, 64, 1.0f, 1.0f, 0, m, sizeof m)) {
      bad++;
#pragma omp critical
      snprintf(msg, sizeof msg, "%s", m);
    }
  }
  t5g_blas_restore();
  t5g_set_threads(saved);
  CHECK_MSG(bad == 0, "%s", msg);
}

/* ---- the loss under dL != 1 ------------------------------------------------------------- */

typedef struct { Graph *g; Tensor *x, *y; float s; } ScaleCtx;
static void scale_backward(void *p) {
  ScaleCtx *c = p;
  if (!c->y->grad) return;
  tensor_grad(c->g, c->x)[0] += c->s * c->y->grad[0];
}
/* y = s·x for a scalar x, recorded on the tape. */
static Tensor *scale_op(Graph *g, Tensor *x, float s) {
  const int64_t one = 1;
  Tensor *y = tensor_new(g, "scaled", 1, &one);
  y->data[0] = s * x->data[0];
  y->requires_grad = x->requires_grad;
  ScaleCtx *c = arena_alloc(g->arena, sizeof *c);
  *c = (ScaleCtx){g, x, y, s};
  graph_record(g, scale_backward, c, OPK_ELEMENTWISE);
  return y;
}

/* Analytic gradients of s·loss in double: dh [N,d], dE [V,d]. */
static void twin_grads(int N, int V, int d, const float *h, const float *E, const int32_t *lab, float cap, double norm,
                       double s, double *dh, double *dE) {
  memset(dh, 0, sizeof(double) * N * d);
  memset(dE, 0, sizeof(double) * V * d);
  double *t = malloc(sizeof(double) * V), *z = malloc(sizeof(double) * V);
  for (int i = 0; i < N; i++) {
    if (lab[i] == -100) continue;
    double mx = -1e300, se = 0;
    for (int v = 0; v < V; v++) {
      double a = 0;
      for (int e = 0; e < d; e++) a += (double)h[i * d + e] * E[v * d + e];
      t[v] = tanh(a / cap);
      z[v] = cap * t[v];
      if (z[v] > mx) mx = z[v];
    }
    for (int v = 0; v < V; v++) se += exp(z[v] - mx);
    for (int v = 0; v < V; v++) {
      double dz = (exp(z[v] - mx) / se - (v == lab[i])) * (1 - t[v] * t[v]) * s / norm;
      for (int e = 0; e < d; e++) {
        dh[i * d + e] += dz * E[v * d + e];
        dE[v * d + e] += dz * h[i * d + e];
      }
    }
  }
  free(t); free(z);
}

TEST(loss_gradients_scale_with_upstream_gradient) {
  const int N = 40, V = 300, d = 24;   /* V·d and N·V large enough for the parallel paths */
  const float cap = 3.0f, norm = 37.0f;
  float *h = malloc(sizeof(float) * N * d), *E = malloc(sizeof(float) * V * d), *Eg = malloc(sizeof(float) * V * d);
  int32_t *lab = malloc(sizeof(int32_t) * N);
  for (int i = 0; i < N * d; i++) h[i] = (float)(1.5 * urand());
  for (int i = 0; i < V * d; i++) E[i] = (float)(0.8 * urand());
  for (int i = 0; i < N; i++) lab[i] = i % 7 == 3 ? -100 : (int32_t)((urand() + 1) * 0.5 * V) % V;
  double *rdh = malloc(sizeof(double) * N * d), *rdE = malloc(sizeof(double) * V * d);
  static const float scales[] = {1.0f, 2.5f, -0.75f, 0.0f};
  Arena a; arena_init(&a, 0); Graph g; graph_init(&g, &a);
  for (size_t si = 0; si < sizeof scales / sizeof scales[0]; si++) {
    const float s = scales[si];
    graph_reset(&g);
    int64_t hs[2] = {N, d}, es[2] = {V, d};
    Tensor *th = tensor_wrap(&g, "h", h, 2, hs);
    th->requires_grad = 1;
    Tensor *tE = tensor_wrap(&g, "E", E, 2, es);
    tE->requires_grad = 1;
    for (int i = 0; i < V * d; i++) Eg[i] = 0.25f;   /* prefilled: gradients accumulate */
    tE->grad = Eg;
    Tensor *loss = op_softcap_ce(&g, th, tE, lab, cap, norm, NULL, NULL);
    graph_backward(&g, scale_op(&g, loss, s));
    twin_grads(N, V, d, h, E, lab, cap, norm, s, rdh, rdE);
    double mh = 0, mE = 0;
    for (int i = 0; i < N * d; i++) mh = fmax(mh, fabs(rdh[i]));
    for (int i = 0; i < V * d; i++) mE = fmax(mE, fabs(rdE[i]));
    for (int i = 0; i < N * d; i++) {
      double got = th->grad ? th->grad[i] : 0.0;
      CHECK_MSG(fabs(got - rdh[i]) <= 1e-4 * fabs(rdh[i]) + 2e-6 * mh + 1e-12,
                "s = %g: dh[%d] = %.8g, expected %.8g", s, i, got, rdh[i]);
    }
    for (int i = 0; i < V * d; i++)
      CHECK_MSG(fabs((Eg[i] - 0.25) - rdE[i]) <= 1e-4 * fabs(rdE[i]) + 2e-6 * mE + 1e-7,
                "s = %g: dE[%d] = %.8g, expected %.8g", s, i, Eg[i] - 0.25, rdE[i]);
  }
  graph_free(&g); arena_free(&a);
  free(h); free(E); free(Eg); free(lab); free(rdh); free(rdE);
}

TEST_MAIN()
