/* ops_basic.c: the basic differentiable ops of the engine (contract: model/ops.h, model/tensor.h,
 * design notes: docs/engine.md): linear, matmul, embedding, RMSNorm, add, soft-cap, RoPE, GeGLU
 * and dropout, each with its backward. Attention and the losses live in other files.
 *
 * Conventions shared by every op here:
 *  - out->requires_grad = OR of the inputs' requires_grad. A backward node is recorded only when
 *    tensor_needs_grad() holds for some input; which input gradients are needed is decided at
 *    forward time and stored in the node's context (need_*), so backward computes nothing else.
 *  - Backward returns at once when its output's grad is NULL (nothing flowed back), and
 *    ACCUMULATES (+=) into the needed input gradients (tensor_grad() for activations; parameters
 *    carry their own grad buffer).
 *  - Matrix products go through t5g_sgemm (model/gemm.h: cut into pieces over the OpenMP threads,
 *    one single-threaded cblas_sgemm each), called outside any OpenMP region.
 *    Row-wise and element-wise work is OpenMP-parallel when large enough (PAR_MIN elements) and
 *    written so that gcc -O3 -march=native vectorises the inner loops: row reductions use
 *    LANES independent partial sums (a float reduction is only vectorised when it is written
 *    this way, since -ffast-math is not used), and exp() is an inline polynomial (exp_le0)
 *    instead of a libm call, which would stop vectorisation.
 *  - Forward bodies are timed with OP_PROFILE_BEGIN/END; backward time is attributed by
 *    graph_backward() from the node's OpKind.
 */
#define _GNU_SOURCE   /* sincosf */
#include "model/ops.h"
#include "model/rng.h"
#include "model/runtime.h"
#include "model/gemm.h"
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <string.h>

/* Below this many elements an op runs on one thread (OpenMP start-up would dominate). */
#define PAR_MIN 32768
/* Independent partial sums in a row reduction (two AVX-512 or four AVX2 registers). */
#define LANES 32

/* ---- helpers ------------------------------------------------------------------------------- */

static void shape_mismatch(const char *op, const char *what, const Tensor *a, const Tensor *b) {
  char sa[96], sb[96];
  t5g_fatal("%s: %s: %s is %s, %s is %s", op, what, a->name ? a->name : "input",
            tensor_shape_str(a, sa, sizeof sa), b->name ? b->name : "input",
            tensor_shape_str(b, sb, sizeof sb));
}

static Tensor *new_like(Graph *g, const char *name, const Tensor *x) {
  return tensor_new(g, name, x->ndim, x->shape);
}

static int blas_dim(int64_t v) {
  T5G_ASSERT(v >= 0 && v <= INT_MAX);
  return (int)v;
}

/* Σ x_i y_i in f32 with LANES partial sums combined pairwise: vectorisable, and the rounding
 * error grows like n/LANES instead of n (d = 2304: 72 terms per lane). */
static inline float dot_f32(const float *restrict x, const float *restrict y, int64_t n) {
  float acc[LANES] = {0};
  int64_t j = 0;
  for (; j + LANES <= n; j += LANES)
    for (int k = 0; k < LANES; k++) acc[k] += x[j + k] * y[j + k];
  float tail = 0.0f;
  for (; j < n; j++) tail += x[j] * y[j];
  for (int w = LANES / 2; w >= 1; w /= 2)
    for (int k = 0; k < w; k++) acc[k] += acc[k + w];
  return acc[0] + tail;
}

/* Σ a_i b_i c_i, same scheme. */
static inline float dot3_f32(const float *restrict a, const float *restrict b, const float *restrict c, int64_t n) {
  float acc[LANES] = {0};
  int64_t j = 0;
  for (; j + LANES <= n; j += LANES)
    for (int k = 0; k < LANES; k++) acc[k] += (a[j + k] * b[j + k]) * c[j + k];
  float tail = 0.0f;
  for (; j < n; j++) tail += (a[j] * b[j]) * c[j];
  for (int w = LANES / 2; w >= 1; w /= 2)
    for (int k = 0; k < w; k++) acc[k] += acc[k + w];
  return acc[0] + tail;
}

/* e^t for t <= 0, relative error ~2 ulp, exactly 0 below -87 (where e^t < 1.7e-38 would be
 * subnormal). Cody-Waite range reduction t = n·ln2 + r, |r| <= ln2/2, with ln2 split in a part
 * whose products with n are exact (0.693359375 = 355/512) and a correction; e^r by its degree-7
 * Taylor polynomial (remainder |r|^8/8! < 6e-9, below f32 resolution); 2^n built in the exponent
 * bits. Branch-free (selects only) so that loops calling it vectorise. */
static inline float exp_le0(float t) {
  float tc = t < -87.0f ? -87.0f : t;
  /* round to nearest: adding and removing 1.5·2^23 (kept exact: no -ffast-math), vectorisable
   * where floorf is not (gcc inlines floorf only with -fno-trapping-math) */
  float n = (tc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = tc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  union { int32_t i; float f; } two_n = { .i = ((int32_t)n + 127) << 23 };   /* 2^n, n in [-126, 0] */
  float v = p * two_n.f;
  return t < -87.0f ? 0.0f : v;
}

/* ---- op_linear: y = x Wᵀ --------------------------------------------------------------------- */

typedef struct {
  Graph *g;
  Tensor *x, *w, *y;
  int M, K, N;
  int need_dx, need_dw;
} LinearCtx;

static void linear_backward(void *p) {
  LinearCtx *c = p;
  const float *dy = c->y->grad;
  if (!dy || c->M == 0 || c->N == 0 || c->K == 0) return;
  if (c->need_dx) {       /* dx[M,K] += dy[M,N] · W[N,K] */
    float *dx = tensor_grad(c->g, c->x);
    t5g_sgemm(0, 0, c->M, c->K, c->N, 1.0f, dy, c->N,
                c->w->data, c->K, 1.0f, dx, c->K);
  }
  if (c->need_dw) {       /* dW[N,K] += dyᵀ[N,M] · x[M,K] */
    float *dw = tensor_grad(c->g, c->w);
    t5g_sgemm(1, 0, c->N, c->K, c->M, 1.0f, dy, c->N,
                c->x->data, c->K, 1.0f, dw, c->K);
  }
}

Tensor *op_linear(Graph *g, Tensor *x, Tensor *w) {
  OP_PROFILE_BEGIN(g);
  if (w->ndim != 2 || x->shape[x->ndim - 1] != w->shape[1])
    shape_mismatch("op_linear", "expected x [..., K] and weight [N, K]", x, w);
  int64_t K = w->shape[1], N = w->shape[0], M = K ? x->n / K : 0;
  int64_t shape[T5G_MAX_DIMS];
  memcpy(shape, x->shape, sizeof shape);
  shape[x->ndim - 1] = N;
  Tensor *y = tensor_new(g, "linear", x->ndim, shape);
  int m = blas_dim(M), k = blas_dim(K), n = blas_dim(N);
  if (M > 0 && N > 0) {
    if (K == 0) memset(y->data, 0, (size_t)y->n * sizeof(float));
    else t5g_sgemm(0, 1, m, n, k, 1.0f, x->data, k,
                     w->data, k, 0.0f, y->data, n);
  }
  y->requires_grad = x->requires_grad || w->requires_grad;
  if (tensor_needs_grad(g, x) || tensor_needs_grad(g, w)) {
    LinearCtx *c = arena_alloc(g->arena, sizeof *c);
    *c = (LinearCtx){g, x, w, y, m, k, n, tensor_needs_grad(g, x), tensor_needs_grad(g, w)};
    graph_record(g, linear_backward, c, OPK_MATMUL);
  }
  OP_PROFILE_END(g, OPK_MATMUL);
  return y;
}

/* ---- op_matmul: C = op(A) op(B) --------------------------------------------------------------- */

typedef struct {
  Graph *g;
  Tensor *a, *b, *c;
  int ta, tb, M, K, N;
  int need_da, need_db;
} MatmulCtx;

static void matmul_backward(void *p) {
  MatmulCtx *m = p;
  const float *dc = m->c->grad;
  if (!dc || m->M == 0 || m->N == 0 || m->K == 0) return;
  int M = m->M, K = m->K, N = m->N;
  int lda = m->ta ? M : K, ldb = m->tb ? K : N;
  if (m->need_da) {
    float *da = tensor_grad(m->g, m->a);
    if (!m->ta)   /* dA[M,K] += dC[M,N] · op(B)ᵀ[N,K] */
      t5g_sgemm(0, m->tb ? 0 : 1, M, K, N, 1.0f,
                  dc, N, m->b->data, ldb, 1.0f, da, K);
    else          /* A is [K,M]: dA += op(B)[K,N] · dCᵀ[N,M] */
      t5g_sgemm(m->tb ? 1 : 0, 1, K, M, N, 1.0f,
                  m->b->data, ldb, dc, N, 1.0f, da, M);
  }
  if (m->need_db) {
    float *db = tensor_grad(m->g, m->b);
    if (!m->tb)   /* dB[K,N] += op(A)ᵀ[K,M] · dC[M,N] */
      t5g_sgemm(m->ta ? 0 : 1, 0, K, N, M, 1.0f,
                  m->a->data, lda, dc, N, 1.0f, db, N);
    else          /* B is [N,K]: dB += dCᵀ[N,M] · op(A)[M,K] */
      t5g_sgemm(1, m->ta ? 1 : 0, N, K, M, 1.0f,
                  dc, N, m->a->data, lda, 1.0f, db, K);
  }
}

Tensor *op_matmul(Graph *g, Tensor *a, int trans_a, Tensor *b, int trans_b) {
  OP_PROFILE_BEGIN(g);
  if (a->ndim != 2 || b->ndim != 2) shape_mismatch("op_matmul", "expected 2-D operands", a, b);
  int64_t M = trans_a ? a->shape[1] : a->shape[0], K = trans_a ? a->shape[0] : a->shape[1];
  int64_t Kb = trans_b ? b->shape[1] : b->shape[0], N = trans_b ? b->shape[0] : b->shape[1];
  if (K != Kb) shape_mismatch("op_matmul", "inner dimensions of op(a) and op(b) differ", a, b);
  Tensor *c = tensor_new2(g, "matmul", M, N);
  int m = blas_dim(M), k = blas_dim(K), n = blas_dim(N);
  if (M > 0 && N > 0) {
    if (K == 0) memset(c->data, 0, (size_t)c->n * sizeof(float));
    else t5g_sgemm(trans_a ? 1 : 0,
                     trans_b ? 1 : 0, m, n, k, 1.0f, a->data,
                     blas_dim(a->shape[1]), b->data, blas_dim(b->shape[1]), 0.0f, c->data, n);
  }
  c->requires_grad = a->requires_grad || b->requires_grad;
  if (tensor_needs_grad(g, a) || tensor_needs_grad(g, b)) {
    MatmulCtx *x = arena_alloc(g->arena, sizeof *x);
    *x = (MatmulCtx){g, a, b, c, !!trans_a, !!trans_b, m, k, n, tensor_needs_grad(g, a), tensor_needs_grad(g, b)};
    graph_record(g, matmul_backward, x, OPK_MATMUL);
  }
  OP_PROFILE_END(g, OPK_MATMUL);
  return c;
}

/* ---- op_embedding: y = E[ids] · scale ---------------------------------------------------------- */

typedef struct {
  Graph *g;
  const int32_t *ids;
  int64_t n_ids, d;
  Tensor *E, *y;
  float scale;
} EmbedCtx;

/* dE[id_i] += scale · dy_i. Rows of E repeat when ids repeat, so threads split the hidden
 * dimension (each owns a column range of every row) and walk all ids in order: race-free and
 * deterministic (the result does not depend on the thread count). */
static void embedding_backward(void *p) {
  EmbedCtx *c = p;
  const float *dy = c->y->grad;
  if (!dy) return;
  float *dE = tensor_grad(c->g, c->E);
  const int64_t d = c->d, n = c->n_ids;
  const float scale = c->scale;
  #pragma omp parallel if (n * d >= PAR_MIN)
  {
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    int64_t chunk = ((d + nt - 1) / nt + 15) / 16 * 16;
    int64_t j0 = t * chunk, j1 = j0 + chunk < d ? j0 + chunk : d;
    for (int64_t i = 0; i < n && j0 < j1; i++) {
      float *restrict dst = dE + (int64_t)c->ids[i] * d;
      const float *restrict src = dy + i * d;
      for (int64_t j = j0; j < j1; j++) dst[j] += scale * src[j];
    }
  }
}

Tensor *op_embedding(Graph *g, const int32_t *ids, int ndim, const int64_t *shape, Tensor *E, float scale) {
  OP_PROFILE_BEGIN(g);
  if (E->ndim != 2) t5g_fatal("op_embedding: table %s must be 2-D [V, d], has %d dims", E->name ? E->name : "", E->ndim);
  if (ndim < 1 || ndim >= T5G_MAX_DIMS) t5g_fatal("op_embedding: ids must have 1..%d dims, got %d", T5G_MAX_DIMS - 1, ndim);
  int64_t V = E->shape[0], d = E->shape[1], n = 1, oshape[T5G_MAX_DIMS];
  for (int i = 0; i < ndim; i++) { n *= shape[i]; oshape[i] = shape[i]; }
  oshape[ndim] = d;
  for (int64_t i = 0; i < n; i++) T5G_ASSERT(ids[i] >= 0 && ids[i] < V);
  Tensor *y = tensor_new(g, "embedding", ndim + 1, oshape);
  #pragma omp parallel for schedule(static) if (n * d >= PAR_MIN)
  for (int64_t i = 0; i < n; i++) {
    const float *restrict src = E->data + (int64_t)ids[i] * d;
    float *restrict dst = y->data + i * d;
    for (int64_t j = 0; j < d; j++) dst[j] = src[j] * scale;
  }
  y->requires_grad = E->requires_grad;
  if (tensor_needs_grad(g, E)) {
    EmbedCtx *c = arena_alloc(g->arena, sizeof *c);
    *c = (EmbedCtx){g, ids, n, d, E, y, scale};
    graph_record(g, embedding_backward, c, OPK_EMBED);
  }
  OP_PROFILE_END(g, OPK_EMBED);
  return y;
}

/* ---- op_rmsnorm (Gemma: zero-centred weight, spec 1.3) -------------------------------------- */

typedef struct {
  Graph *g;
  Tensor *x, *w, *y;
  float *rstd;            /* [N] rsqrt(mean(x²) + eps) per row */
  int64_t N, d;
  int need_dx, need_dw;
} RmsCtx;

/* With r = rstd, n = x·r, g = 1 + w (spec 1.3):
 *   dw_j += Σ_rows dy_j n_j ;  dx_j += r (g_j dy_j − n_j m),  m = mean_j(g_j dy_j n_j).
 * dw is reduced over rows through per-thread partial sums in double (one row per thread at a
 * time, no races), then added once. */
static void rmsnorm_backward(void *p) {
  RmsCtx *c = p;
  const float *dy = c->y->grad;
  if (!dy) return;
  const int64_t N = c->N, d = c->d;
  const float *x = c->x->data, *w = c->w->data, *rstd = c->rstd;
  float *dx = c->need_dx ? tensor_grad(c->g, c->x) : NULL;
  float *dw = c->need_dw ? tensor_grad(c->g, c->w) : NULL;
  int par = N * d >= PAR_MIN;
  int nt = par ? omp_get_max_threads() : 1;
  double *part = NULL;
  float *gw = arena_alloc(c->g->arena, (size_t)d * sizeof(float));
  for (int64_t j = 0; j < d; j++) gw[j] = 1.0f + w[j];
  if (dw) part = arena_calloc(c->g->arena, (size_t)nt * d * sizeof(double));
  #pragma omp parallel num_threads(nt) if (par)
  {
    double *restrict pw = dw ? part + (int64_t)omp_get_thread_num() * d : NULL;
    #pragma omp for schedule(static)
    for (int64_t i = 0; i < N; i++) {
      const float *restrict xr = x + i * d, *restrict dyr = dy + i * d;
      const float r = rstd[i];
      if (dx) {
        const float m = r * dot3_f32(gw, dyr, xr, d) / (float)d;   /* mean_j(g_j dy_j n_j) */
        float *restrict dxr = dx + i * d;
        for (int64_t j = 0; j < d; j++) dxr[j] += r * (gw[j] * dyr[j] - (xr[j] * r) * m);
      }
      if (pw)
        for (int64_t j = 0; j < d; j++) pw[j] += (double)(dyr[j] * (xr[j] * r));
    }
    if (dw) {
      #pragma omp for schedule(static)
      for (int64_t j = 0; j < d; j++) {
        double s = 0.0;
        for (int t = 0; t < nt; t++) s += part[(int64_t)t * d + j];
        dw[j] += (float)s;
      }
    }
  }
}

Tensor *op_rmsnorm(Graph *g, Tensor *x, Tensor *w, float eps) {
  OP_PROFILE_BEGIN(g);
  int64_t d = x->shape[x->ndim - 1];
  if (w->n != d) shape_mismatch("op_rmsnorm", "weight must have the size of x's last dim", x, w);
  int64_t N = d ? x->n / d : 0;
  Tensor *y = new_like(g, "rmsnorm", x);
  int need = tensor_needs_grad(g, x) || tensor_needs_grad(g, w);
  float *rstd = arena_alloc(g->arena, (size_t)(N ? N : 1) * sizeof(float));
  const float *restrict wd = w->data;
  /* Statistics in f32 as HF does (x.float().pow(2).mean(-1)); dot_f32's LANES partial sums keep
   * the rounding error of the sum of d positive squares at about (d/LANES)·2^-24 relative in the
   * worst case (~4e-6 for d = 2304, typically far less), below what bf16 checkpoints resolve. */
  #pragma omp parallel for schedule(static) if (x->n >= PAR_MIN)
  for (int64_t i = 0; i < N; i++) {
    const float *restrict xr = x->data + i * d;
    float *restrict yr = y->data + i * d;
    const float r = 1.0f / sqrtf(dot_f32(xr, xr, d) / (float)d + eps);
    rstd[i] = r;
    for (int64_t j = 0; j < d; j++) yr[j] = (xr[j] * r) * (1.0f + wd[j]);
  }
  y->requires_grad = x->requires_grad || w->requires_grad;
  if (need) {
    RmsCtx *c = arena_alloc(g->arena, sizeof *c);
    *c = (RmsCtx){g, x, w, y, rstd, N, d, tensor_needs_grad(g, x), tensor_needs_grad(g, w)};
    graph_record(g, rmsnorm_backward, c, OPK_NORM);
  }
  OP_PROFILE_END(g, OPK_NORM);
  return y;
}

/* ---- op_add --------------------------------------------------------------------------------- */

typedef struct { Graph *g; Tensor *a, *b, *y; int need_da, need_db; } AddCtx;

static void acc_into(float *restrict dst, const float *restrict src, int64_t n) {
  #pragma omp parallel for schedule(static) if (n >= PAR_MIN)
  for (int64_t i = 0; i < n; i++) dst[i] += src[i];
}

static void add_backward(void *p) {
  AddCtx *c = p;
  const float *dy = c->y->grad;
  if (!dy) return;
  if (c->need_da) acc_into(tensor_grad(c->g, c->a), dy, c->y->n);
  if (c->need_db) acc_into(tensor_grad(c->g, c->b), dy, c->y->n);   /* a == b: both add */
}

Tensor *op_add(Graph *g, Tensor *a, Tensor *b) {
  OP_PROFILE_BEGIN(g);
  if (!tensor_same_shape(a, b)) shape_mismatch("op_add", "shapes differ", a, b);
  Tensor *y = new_like(g, "add", a);
  const float *restrict pa = a->data, *restrict pb = b->data;
  float *restrict py = y->data;
  const int64_t n = a->n;
  #pragma omp parallel for schedule(static) if (n >= PAR_MIN)
  for (int64_t i = 0; i < n; i++) py[i] = pa[i] + pb[i];
  y->requires_grad = a->requires_grad || b->requires_grad;
  if (tensor_needs_grad(g, a) || tensor_needs_grad(g, b)) {
    AddCtx *c = arena_alloc(g->arena, sizeof *c);
    *c = (AddCtx){g, a, b, y, tensor_needs_grad(g, a), tensor_needs_grad(g, b)};
    graph_record(g, add_backward, c, OPK_ELEMENTWISE);
  }
  OP_PROFILE_END(g, OPK_ELEMENTWISE);
  return y;
}

/* ---- op_softcap: y = cap · tanh(x / cap) (spec 1.5, 1.6) ------------------------------------ */

typedef struct { Graph *g; Tensor *x, *y; float cap; } SoftcapCtx;

/* dx += dy · (1 − tanh²(u)), u = x/cap, evaluated as sech²(u) = 4a/(1+a)², a = e^{−2|u|}: no
 * cancellation, so the tiny derivatives of saturated entries keep full relative precision
 * (1 − t·t would round to 0 once t rounds to 1). */
static void softcap_backward(void *p) {
  SoftcapCtx *c = p;
  const float *restrict dy = c->y->grad;
  if (!dy) return;
  float *restrict dx = tensor_grad(c->g, c->x);
  const float *restrict x = c->x->data;
  const float cap = c->cap;
  const int64_t n = c->x->n;
  #pragma omp parallel for schedule(static) if (n >= PAR_MIN)
  for (int64_t i = 0; i < n; i++) {
    float a = exp_le0(-2.0f * fabsf(x[i] / cap));
    float q = 1.0f + a;
    dx[i] += dy[i] * ((4.0f * a) / (q * q));
  }
}

Tensor *op_softcap(Graph *g, Tensor *x, float cap) {
  if (!(cap > 0.0f)) return x;
  OP_PROFILE_BEGIN(g);
  Tensor *y = new_like(g, "softcap", x);
  const float *restrict px = x->data;
  float *restrict py = y->data;
  const int64_t n = x->n;
  /* As HF: tanh(x / cap) · cap, in f32. */
  #pragma omp parallel for schedule(static) if (n >= PAR_MIN / 8)
  for (int64_t i = 0; i < n; i++) py[i] = tanhf(px[i] / cap) * cap;
  y->requires_grad = x->requires_grad;
  if (tensor_needs_grad(g, x)) {
    SoftcapCtx *c = arena_alloc(g->arena, sizeof *c);
    *c = (SoftcapCtx){g, x, y, cap};
    graph_record(g, softcap_backward, c, OPK_ELEMENTWISE);
  }
  OP_PROFILE_END(g, OPK_ELEMENTWISE);
  return y;
}

/* ---- op_rope (half-split "rotate_half", spec 1.5) ------------------------------------------- */

typedef struct {
  Graph *g;
  Tensor *x, *y;
  const float *cos_t, *sin_t;   /* [rows, h/2] */
  int64_t rows, nh, half;
} RopeCtx;

/* dx is the inverse rotation of dy: dx1 += dy1·c + dy2·s ; dx2 += dy2·c − dy1·s. */
static void rope_backward(void *p) {
  RopeCtx *c = p;
  const float *dy = c->y->grad;
  if (!dy) return;
  float *dx = tensor_grad(c->g, c->x);
  const int64_t rows = c->rows, nh = c->nh, half = c->half, h = 2 * half;
  #pragma omp parallel for schedule(static) if (c->x->n >= PAR_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const float *restrict cs = c->cos_t + r * half, *restrict sn = c->sin_t + r * half;
    for (int64_t hd = 0; hd < nh; hd++) {
      const float *restrict g1 = dy + (r * nh + hd) * h, *restrict g2 = g1 + half;
      float *restrict d1 = dx + (r * nh + hd) * h, *restrict d2 = d1 + half;
      for (int64_t i = 0; i < half; i++) {
        d1[i] += g1[i] * cs[i] + g2[i] * sn[i];
        d2[i] += g2[i] * cs[i] - g1[i] * sn[i];
      }
    }
  }
}

Tensor *op_rope(Graph *g, Tensor *x, const int32_t *pos, float theta) {
  OP_PROFILE_BEGIN(g);
  if (x->ndim < 2) t5g_fatal("op_rope: x %s must be [B, T, heads, head_dim], has %d dims", x->name ? x->name : "", x->ndim);
  const int64_t h = x->shape[x->ndim - 1], nh = x->shape[x->ndim - 2];
  if (h % 2 != 0) t5g_fatal("op_rope: head_dim must be even, got %lld", (long long)h);
  const int64_t half = h / 2, rows = nh * h > 0 ? x->n / (nh * h) : 0;
  Tensor *y = new_like(g, "rope", x);
  /* Angles exactly as HF computes them in f32 (spec 1.5): inv_freq_i = 1 / theta^(float(2i)/h),
   * angle = float(pos) · inv_freq_i (one f32 product), then cos/sin of the f32 angle. Matching
   * this rounding matters at large positions: at p = 8191 the f32 angle differs from the exact
   * one by up to ~2.4e-4. The table is built once per call and shared by all heads. */
  const size_t ntab = (size_t)(rows * half > 0 ? rows * half : 1);
  float *inv = arena_alloc(g->arena, (size_t)(half > 0 ? half : 1) * sizeof(float));
  for (int64_t i = 0; i < half; i++) inv[i] = 1.0f / powf(theta, (float)(2 * i) / (float)h);
  float *cos_t = arena_alloc(g->arena, ntab * sizeof(float));
  float *sin_t = arena_alloc(g->arena, ntab * sizeof(float));
  #pragma omp parallel for schedule(static) if (rows * half >= PAR_MIN / 16)
  for (int64_t r = 0; r < rows; r++) {
    const float pf = (float)pos[r];
    for (int64_t i = 0; i < half; i++) {
      sincosf(pf * inv[i], &sin_t[r * half + i], &cos_t[r * half + i]);
    }
  }
  #pragma omp parallel for schedule(static) if (x->n >= PAR_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const float *restrict cs = cos_t + r * half, *restrict sn = sin_t + r * half;
    for (int64_t hd = 0; hd < nh; hd++) {
      const float *restrict x1 = x->data + (r * nh + hd) * h, *restrict x2 = x1 + half;
      float *restrict y1 = y->data + (r * nh + hd) * h, *restrict y2 = y1 + half;
      for (int64_t i = 0; i < half; i++) {
        y1[i] = x1[i] * cs[i] - x2[i] * sn[i];
        y2[i] = x2[i] * cs[i] + x1[i] * sn[i];
      }
    }
  }
  y->requires_grad = x->requires_grad;
  if (tensor_needs_grad(g, x)) {
    RopeCtx *c = arena_alloc(g->arena, sizeof *c);
    *c = (RopeCtx){g, x, y, cos_t, sin_t, rows, nh, half};
    graph_record(g, rope_backward, c, OPK_ELEMENTWISE);
  }
  OP_PROFILE_END(g, OPK_ELEMENTWISE);
  return y;
}

/* ---- op_geglu: y = gelu_tanh(gate) ⊙ up (spec 1.4) ------------------------------------------ */

/* gelu_tanh(z) = 0.5 z (1 + tanh(u)), u = sqrt(2/π)(z + 0.044715 z³). Since 0.5(1 + tanh u) =
 * σ(2u), with a = e^{−2|u|}: σ(2u) = 1/(1+a) for u >= 0 and a/(1+a) for u < 0, and
 * 0.5(1 − tanh²u) = 2a/(1+a)². Both forms are free of cancellation for any |u| (no 1 − t with
 * t ≈ 1), so the saturated tails (large |gate|) keep full relative precision. */
#define GELU_K 0.7978845608028654f   /* sqrt(2/π) */
#define GELU_C 0.044715f

static inline void gelu_tanh_parts(float z, float *s, float *ds) {
  const float z2 = z * z;
  const float u = GELU_K * (z + GELU_C * (z2 * z));
  const float a = exp_le0(-2.0f * fabsf(u));
  const float q = 1.0f / (1.0f + a);
  *s = u >= 0.0f ? q : a * q;                                       /* σ(2u) */
  /* d/dz [z σ(2u)] = σ(2u) + z · 2σ(1−σ) · du/dz,  σ(1−σ) = a/(1+a)² */
  *ds = *s + z * (2.0f * a * q * q) * (GELU_K * (1.0f + 3.0f * GELU_C * z2));
}

typedef struct { Graph *g; Tensor *gate, *up, *y; int need_dgate, need_dup; } GegluCtx;

static void geglu_backward(void *p) {
  GegluCtx *c = p;
  const float *restrict dy = c->y->grad;
  if (!dy) return;
  const float *restrict gt = c->gate->data, *restrict up = c->up->data;
  float *restrict dg = c->need_dgate ? tensor_grad(c->g, c->gate) : NULL;
  float *restrict du = c->need_dup ? tensor_grad(c->g, c->up) : NULL;
  const int64_t n = c->y->n;
  if (dg && du) {
    #pragma omp parallel for schedule(static) if (n >= PAR_MIN / 4)
    for (int64_t i = 0; i < n; i++) {
      float s, ds;
      gelu_tanh_parts(gt[i], &s, &ds);
      dg[i] += dy[i] * up[i] * ds;
      du[i] += dy[i] * (gt[i] * s);
    }
  } else if (dg) {
    #pragma omp parallel for schedule(static) if (n >= PAR_MIN / 4)
    for (int64_t i = 0; i < n; i++) {
      float s, ds;
      gelu_tanh_parts(gt[i], &s, &ds);
      dg[i] += dy[i] * up[i] * ds;
    }
  } else if (du) {
    #pragma omp parallel for schedule(static) if (n >= PAR_MIN / 4)
    for (int64_t i = 0; i < n; i++) {
      float s, ds;
      gelu_tanh_parts(gt[i], &s, &ds);
      du[i] += dy[i] * (gt[i] * s);
    }
  }
}

Tensor *op_geglu(Graph *g, Tensor *gate, Tensor *up) {
  OP_PROFILE_BEGIN(g);
  if (!tensor_same_shape(gate, up)) shape_mismatch("op_geglu", "gate and up shapes differ", gate, up);
  Tensor *y = new_like(g, "geglu", gate);
  const float *restrict gt = gate->data, *restrict pu = up->data;
  float *restrict py = y->data;
  const int64_t n = y->n;
  #pragma omp parallel for schedule(static) if (n >= PAR_MIN / 4)
  for (int64_t i = 0; i < n; i++) {
    float s, ds;
    gelu_tanh_parts(gt[i], &s, &ds);
    py[i] = (gt[i] * s) * pu[i];
  }
  y->requires_grad = gate->requires_grad || up->requires_grad;
  if (tensor_needs_grad(g, gate) || tensor_needs_grad(g, up)) {
    GegluCtx *c = arena_alloc(g->arena, sizeof *c);
    *c = (GegluCtx){g, gate, up, y, tensor_needs_grad(g, gate), tensor_needs_grad(g, up)};
    graph_record(g, geglu_backward, c, OPK_ELEMENTWISE);
  }
  OP_PROFILE_END(g, OPK_ELEMENTWISE);
  return y;
}

/* ---- op_dropout (inverted dropout with a stateless mask) ----------------------------------- */

typedef struct { Graph *g; Tensor *x, *y; uint64_t seed; float p, scale; } DropoutCtx;

/* Element i of call seed s is kept iff rng_hash_uniform(s, i) >= p. */
static void dropout_backward(void *p) {
  DropoutCtx *c = p;
  const float *restrict dy = c->y->grad;
  if (!dy) return;
  float *restrict dx = tensor_grad(c->g, c->x);
  const int64_t n = c->x->n;
  const uint64_t seed = c->seed;
  const float pr = c->p, scale = c->scale;
  #pragma omp parallel for schedule(static) if (n >= PAR_MIN / 4)
  for (int64_t i = 0; i < n; i++)
    dx[i] += rng_hash_uniform(seed, (uint64_t)i) >= pr ? dy[i] * scale : 0.0f;
}

Tensor *op_dropout(Graph *g, Tensor *x, float p) {
  if (!(p >= 0.0f && p < 1.0f)) t5g_fatal("op_dropout: probability p = %g, expected 0 <= p < 1", (double)p);
  if (p == 0.0f || !g->grad_enabled) return x;
  OP_PROFILE_BEGIN(g);
  /* One seed per call: the base seed mixed with the call counter, so every dropout site of a
   * step gets an independent mask and a re-run with the same (seed, counter) repeats it. */
  const uint64_t seed = splitmix64(g->dropout_seed ^ splitmix64(0x6a09e667f3bcc909ULL + g->dropout_calls));
  g->dropout_calls++;
  const float scale = 1.0f / (1.0f - p);
  Tensor *y = new_like(g, "dropout", x);
  const float *restrict px = x->data;
  float *restrict py = y->data;
  const int64_t n = x->n;
  #pragma omp parallel for schedule(static) if (n >= PAR_MIN / 4)
  for (int64_t i = 0; i < n; i++)
    py[i] = rng_hash_uniform(seed, (uint64_t)i) >= p ? px[i] * scale : 0.0f;
  y->requires_grad = x->requires_grad;
  if (tensor_needs_grad(g, x)) {
    DropoutCtx *c = arena_alloc(g->arena, sizeof *c);
    *c = (DropoutCtx){g, x, y, seed, p, scale};
    graph_record(g, dropout_backward, c, OPK_ELEMENTWISE);
  }
  OP_PROFILE_END(g, OPK_ELEMENTWISE);
  return y;
}
