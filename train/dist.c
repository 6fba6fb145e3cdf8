/* dist.c: MPI data parallelism (see dist.h). */
#include "train/dist.h"
#include "model/util.h"
#include <stdlib.h>
#include <string.h>
#ifdef T5G_MPI
#include <mpi.h>
#endif

static int g_rank = 0, g_world = 1;
#ifdef T5G_MPI
static int g_mpi = 0;
#endif
#define BUCKET ((int64_t)1 << 24)   /* floats per collective call (64 MiB); fits MPI's int count */

void dist_init(int *argc, char ***argv) {
#ifdef T5G_MPI
  if (!getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMI_SIZE") && !getenv("PMIX_RANK")) return;
  int provided;
  MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_world);
  g_mpi = 1;
#else
  (void)argc; (void)argv;
#endif
}

void dist_finalize(void) {
#ifdef T5G_MPI
  if (g_mpi) { MPI_Finalize(); g_mpi = 0; }
#endif
}

int dist_rank(void) { return g_rank; }
int dist_world(void) { return g_world; }
int dist_active(void) { return g_world > 1; }

void dist_allreduce_mean(float *buf, int64_t n) {
#ifdef T5G_MPI
  if (g_world <= 1) return;
  for (int64_t o = 0; o < n; o += BUCKET) {
    int c = (int)(n - o < BUCKET ? n - o : BUCKET);
    MPI_Allreduce(MPI_IN_PLACE, buf + o, c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  }
  float inv = 1.0f / g_world;
  #pragma omp parallel for
  for (int64_t i = 0; i < n; i++) buf[i] *= inv;
#else
  (void)buf; (void)n;
#endif
}

void dist_allreduce_sum_f64(double *buf, int n) {
#ifdef T5G_MPI
  if (g_world > 1) MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
#else
  (void)buf; (void)n;
#endif
}
void dist_allreduce_sum_i64(int64_t *buf, int n) {
#ifdef T5G_MPI
  if (g_world > 1) MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
#else
  (void)buf; (void)n;
#endif
}
void dist_allreduce_max_f64(double *buf, int n) {
#ifdef T5G_MPI
  if (g_world > 1) MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
#else
  (void)buf; (void)n;
#endif
}

void dist_slice(int64_t n, int rank, int64_t *lo, int64_t *hi) {
  int64_t per = (n + g_world - 1) / g_world;
  *lo = (int64_t)rank * per < n ? (int64_t)rank * per : n;
  *hi = *lo + per < n ? *lo + per : n;
}

void dist_allreduce_sum_f32(float *buf, int64_t n) {
#ifdef T5G_MPI
  if (g_world <= 1) return;
  for (int64_t o = 0; o < n; o += BUCKET) {
    int c = (int)(n - o < BUCKET ? n - o : BUCKET);
    MPI_Allreduce(MPI_IN_PLACE, buf + o, c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  }
#else
  (void)buf; (void)n;
#endif
}

#ifdef T5G_MPI
/* Sub-chunk j (BUCKET floats) of every rank's slice: counts and offsets into buf. */
static int bucket_counts(int64_t n, int64_t j, int *counts, int64_t *starts) {
  int any = 0;
  for (int r = 0; r < g_world; r++) {
    int64_t lo, hi;
    dist_slice(n, r, &lo, &hi);
    int64_t s = lo + j * BUCKET, e = s + BUCKET < hi ? s + BUCKET : hi;
    counts[r] = e > s ? (int)(e - s) : 0;
    starts[r] = s;
    any |= counts[r] > 0;
  }
  return any;
}
#endif

void dist_reduce_scatter_sum(float *buf, int64_t n) {
#ifdef T5G_MPI
  if (g_world <= 1) return;
  int counts[g_world];
  int64_t starts[g_world];
  float *send = t5g_alloc_aligned((size_t)BUCKET * g_world * sizeof(float));
  float *recv = t5g_alloc_aligned((size_t)BUCKET * sizeof(float));
  for (int64_t j = 0; bucket_counts(n, j, counts, starts); j++) {
    int64_t o = 0;
    for (int r = 0; r < g_world; r++) { memcpy(send + o, buf + starts[r], (size_t)counts[r] * sizeof(float)); o += counts[r]; }
    MPI_Reduce_scatter(send, recv, counts, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    memcpy(buf + starts[g_rank], recv, (size_t)counts[g_rank] * sizeof(float));
  }
  free(send); free(recv);
#else
  (void)buf; (void)n;
#endif
}

void dist_allgather(float *buf, int64_t n) {
#ifdef T5G_MPI
  if (g_world <= 1) return;
  int counts[g_world], displs[g_world];
  int64_t starts[g_world];
  float *recv = t5g_alloc_aligned((size_t)BUCKET * g_world * sizeof(float));
  for (int64_t j = 0; bucket_counts(n, j, counts, starts); j++) {
    int o = 0;
    for (int r = 0; r < g_world; r++) { displs[r] = o; o += counts[r]; }
    MPI_Allgatherv(buf + starts[g_rank], counts[g_rank], MPI_FLOAT, recv, counts, displs, MPI_FLOAT, MPI_COMM_WORLD);
    for (int r = 0; r < g_world; r++) memcpy(buf + starts[r], recv + displs[r], (size_t)counts[r] * sizeof(float));
  }
  free(recv);
#else
  (void)buf; (void)n;
#endif
}

void dist_gather_slices(const float *slice, float *full, int64_t n) {
#ifdef T5G_MPI
  if (g_world > 1) {
    int counts[g_world], displs[g_world];
    int64_t starts[g_world];
    float *recv = g_rank == 0 ? t5g_alloc_aligned((size_t)BUCKET * g_world * sizeof(float)) : NULL;
    int64_t mylo, myhi;
    dist_slice(n, g_rank, &mylo, &myhi);
    for (int64_t j = 0; bucket_counts(n, j, counts, starts); j++) {
      int o = 0;
      for (int r = 0; r < g_world; r++) { displs[r] = o; o += counts[r]; }
      MPI_Gatherv(slice + (starts[g_rank] - mylo), counts[g_rank], MPI_FLOAT, recv, counts, displs, MPI_FLOAT, 0, MPI_COMM_WORLD);
      if (g_rank == 0) for (int r = 0; r < g_world; r++) memcpy(full + starts[r], recv + displs[r], (size_t)counts[r] * sizeof(float));
    }
    free(recv);
    return;
  }
#endif
  memcpy(full, slice, (size_t)n * sizeof(float));
}

void dist_bcast(void *buf, int64_t bytes, int root) {
#ifdef T5G_MPI
  if (g_world <= 1) return;
  for (int64_t o = 0; o < bytes; o += (int64_t)1 << 30) {
    int c = (int)(bytes - o < ((int64_t)1 << 30) ? bytes - o : ((int64_t)1 << 30));
    MPI_Bcast((char *)buf + o, c, MPI_BYTE, root, MPI_COMM_WORLD);
  }
#else
  (void)buf; (void)bytes; (void)root;
#endif
}

void dist_barrier(void) {
#ifdef T5G_MPI
  if (g_world > 1) MPI_Barrier(MPI_COMM_WORLD);
#endif
}

void dist_abort(const char *msg) {
  fprintf(stderr, "t5gemma: rank %d: %s\n", g_rank, msg);
  fflush(stderr);
#ifdef T5G_MPI
  if (g_mpi) MPI_Abort(MPI_COMM_WORLD, 1);
#endif
  exit(1);
}

int dist_same_u64(uint64_t v) {
#ifdef T5G_MPI
  if (g_world <= 1) return 1;
  uint64_t mn = v, mx = v;
  MPI_Allreduce(MPI_IN_PLACE, &mn, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &mx, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  return mn == mx;
#else
  (void)v;
  return 1;
#endif
}
