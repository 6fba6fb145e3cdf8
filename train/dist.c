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

void dist_reduce_scatter_mean(float *buf, int64_t n) {
#ifdef T5G_MPI
  if (g_world <= 1) return;
  T5G_ASSERT(n % g_world == 0);
  int64_t slice = n / g_world;
  /* bucketed: chunk j of every rank's slice travels together */
  float *tmp = t5g_alloc_aligned((size_t)(slice < BUCKET ? slice : BUCKET) * sizeof(float));
  float *send = t5g_alloc_aligned((size_t)(slice < BUCKET ? slice : BUCKET) * g_world * sizeof(float));
  for (int64_t o = 0; o < slice; o += BUCKET) {
    int c = (int)(slice - o < BUCKET ? slice - o : BUCKET);
    for (int r = 0; r < g_world; r++) memcpy(send + (int64_t)r * c, buf + r * slice + o, c * sizeof(float));
    MPI_Reduce_scatter_block(send, tmp, c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    float inv = 1.0f / g_world;
    float *dst = buf + g_rank * slice + o;
    for (int i = 0; i < c; i++) dst[i] = tmp[i] * inv;
  }
  free(tmp); free(send);
#else
  (void)buf; (void)n;
#endif
}

void dist_allgather(float *buf, int64_t n) {
#ifdef T5G_MPI
  if (g_world <= 1) return;
  T5G_ASSERT(n % g_world == 0);
  int64_t slice = n / g_world;
  if (slice <= BUCKET) {
    MPI_Allgather(MPI_IN_PLACE, (int)slice, MPI_FLOAT, buf, (int)slice, MPI_FLOAT, MPI_COMM_WORLD);
    return;
  }
  float *recv = t5g_alloc_aligned((size_t)BUCKET * g_world * sizeof(float));
  for (int64_t o = 0; o < slice; o += BUCKET) {
    int c = (int)(slice - o < BUCKET ? slice - o : BUCKET);
    MPI_Allgather(buf + g_rank * slice + o, c, MPI_FLOAT, recv, c, MPI_FLOAT, MPI_COMM_WORLD);
    for (int r = 0; r < g_world; r++) memcpy(buf + r * slice + o, recv + (int64_t)r * c, c * sizeof(float));
  }
  free(recv);
#else
  (void)buf; (void)n;
#endif
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
