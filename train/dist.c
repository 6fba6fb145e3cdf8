/* dist.c: MPI data parallelism (see dist.h). */
#define _GNU_SOURCE               /* sched_getaffinity, CPU_COUNT */
#include "train/dist.h"
#include "model/util.h"
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef T5G_MPI
#include <mpi.h>
#endif

static int g_rank = 0, g_world = 1;
#ifdef T5G_MPI
static int g_mpi = 0;
#endif
#define BUCKET ((int64_t)1 << 24)   /* floats per collective call (64 MiB); fits MPI's int count */
#define MIN_CHUNK ((int64_t)1 << 14) /* floats per rank per ZeRO-1 call, at least (64 KiB) */

#ifdef T5G_MPI
static MPI_Request *g_reqs;
static int g_nreq, g_capreq;
#endif

void dist_iallreduce_sum_f32(float *buf, int64_t n) {
#ifdef T5G_MPI
  if (g_world <= 1) return;
  for (int64_t o = 0; o < n; o += BUCKET) {
    int c = (int)(n - o < BUCKET ? n - o : BUCKET);
    if (g_nreq == g_capreq) { g_capreq = g_capreq ? 2 * g_capreq : 64; g_reqs = t5g_realloc(g_reqs, sizeof *g_reqs * g_capreq); }
    MPI_Iallreduce(MPI_IN_PLACE, buf + o, c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &g_reqs[g_nreq++]);
  }
#else
  (void)buf; (void)n;
#endif
}

void dist_progress(void) {
#ifdef T5G_MPI
  if (g_nreq > 0) { int flag; MPI_Testall(g_nreq, g_reqs, &flag, MPI_STATUSES_IGNORE); }
#endif
}

void dist_wait_all(void) {
#ifdef T5G_MPI
  if (g_nreq > 0) MPI_Waitall(g_nreq, g_reqs, MPI_STATUSES_IGNORE);
  g_nreq = 0;
#endif
}

void dist_init(int *argc, char ***argv) {
#ifdef T5G_MPI
  if (!getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMI_SIZE") && !getenv("PMIX_RANK")) return;
  /* FUNNELED: only the main thread calls MPI; OpenMP threads (compute) and the shard reader's
   * prefetch thread never do, and no MPI call is made inside a parallel region. */
  int provided;
  MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_world);
  g_mpi = 1;
  if (provided < MPI_THREAD_FUNNELED) {
    fprintf(stderr, "t5gemma: rank %d: this MPI library provides thread level %d, below MPI_THREAD_FUNNELED (%d) "
            "needed with OpenMP threads\n", g_rank, provided, MPI_THREAD_FUNNELED);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
#else
  (void)argc; (void)argv;
#endif
}

#ifdef T5G_MPI
/* Scratch of the ZeRO-1 collectives: grown on first use, kept (no allocation per step). */
static float *g_scratch;
static int64_t g_scratch_n;
static float *scratch(int64_t n) {
  if (n > g_scratch_n) { free(g_scratch); g_scratch = t5g_alloc_aligned((size_t)n * sizeof(float)); g_scratch_n = n; }
  return g_scratch;
}
#endif

void dist_finalize(void) {
#ifdef T5G_MPI
  if (g_mpi) { MPI_Finalize(); g_mpi = 0; }
  free(g_scratch); g_scratch = NULL; g_scratch_n = 0;
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
/* Floats of each rank's slice moved per ZeRO-1 call: BUCKET in all (so the scratch does not grow
 * with the world size), at least MIN_CHUNK per rank, never more than a slice. */
static int64_t zero_chunk(int64_t n) {
  int64_t c = BUCKET / g_world, per = (n + g_world - 1) / g_world;
  if (c < MIN_CHUNK) c = MIN_CHUNK;
  if (c > per) c = per > 0 ? per : 1;
  return c;
}
/* Sub-chunk j (`chunk` floats) of every rank's slice: counts and offsets into buf. */
static int bucket_counts(int64_t n, int64_t chunk, int64_t j, int *counts, int64_t *starts) {
  int any = 0;
  for (int r = 0; r < g_world; r++) {
    int64_t lo, hi;
    dist_slice(n, r, &lo, &hi);
    int64_t s = lo + j * chunk, e = s + chunk < hi ? s + chunk : hi;
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
  int64_t chunk = zero_chunk(n);
  float *send = scratch(chunk * (g_world + 1)), *recv = send + chunk * g_world;
  for (int64_t j = 0; bucket_counts(n, chunk, j, counts, starts); j++) {
    int64_t o = 0;
    for (int r = 0; r < g_world; r++) { memcpy(send + o, buf + starts[r], (size_t)counts[r] * sizeof(float)); o += counts[r]; }
    MPI_Reduce_scatter(send, recv, counts, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    memcpy(buf + starts[g_rank], recv, (size_t)counts[g_rank] * sizeof(float));
  }
#else
  (void)buf; (void)n;
#endif
}

void dist_allgather(float *buf, int64_t n) {
#ifdef T5G_MPI
  if (g_world <= 1) return;
  int counts[g_world], displs[g_world];
  int64_t starts[g_world];
  int64_t chunk = zero_chunk(n);
  float *recv = scratch(chunk * g_world);
  for (int64_t j = 0; bucket_counts(n, chunk, j, counts, starts); j++) {
    int o = 0;
    for (int r = 0; r < g_world; r++) { displs[r] = o; o += counts[r]; }
    MPI_Allgatherv(buf + starts[g_rank], counts[g_rank], MPI_FLOAT, recv, counts, displs, MPI_FLOAT, MPI_COMM_WORLD);
    for (int r = 0; r < g_world; r++) memcpy(buf + starts[r], recv + displs[r], (size_t)counts[r] * sizeof(float));
  }
#else
  (void)buf; (void)n;
#endif
}

void dist_gather_slices(const float *slice, float *full, int64_t n) {
#ifdef T5G_MPI
  if (g_world > 1) {
    int counts[g_world], displs[g_world];
    int64_t starts[g_world];
    int64_t chunk = zero_chunk(n);
    float *recv = g_rank == 0 ? scratch(chunk * g_world) : NULL;
    int64_t mylo, myhi;
    dist_slice(n, g_rank, &mylo, &myhi);
    for (int64_t j = 0; bucket_counts(n, chunk, j, counts, starts); j++) {
      int o = 0;
      for (int r = 0; r < g_world; r++) { displs[r] = o; o += counts[r]; }
      MPI_Gatherv(slice + (starts[g_rank] - mylo), counts[g_rank], MPI_FLOAT, recv, counts, displs, MPI_FLOAT, 0, MPI_COMM_WORLD);
      if (g_rank == 0) for (int r = 0; r < g_world; r++) memcpy(full + starts[r], recv + displs[r], (size_t)counts[r] * sizeof(float));
    }
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

void dist_check_threads(int threads) {
  if (g_world <= 1) return;
  const char *lr = getenv("OMPI_COMM_WORLD_LOCAL_RANK"), *ls = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (lr && atoi(lr) != 0) return;           /* one note per node */
  int local = ls && atoi(ls) > 0 ? atoi(ls) : 1;
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  int bound = 0;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) bound = CPU_COUNT(&set);
  if (bound > 0 && threads > bound)
    fprintf(stderr, "t5gemma: rank %d: warning: %d threads but this rank is bound to %d CPU(s), so they share them; "
            "set OMP_NUM_THREADS=%d (or threads=%d), or bind each rank to more cores, e.g. mpirun --map-by socket:PE=%d "
            "--bind-to core (docs/distributed.md)\n", g_rank, threads, bound, bound, bound, threads);
  else if (online > 0 && (long)threads * local > online)
    fprintf(stderr, "t5gemma: rank %d: warning: %d ranks on this node x %d threads = %ld threads for %ld CPUs; "
            "set OMP_NUM_THREADS=%ld (or threads=) (docs/distributed.md)\n", g_rank, local, threads,
            (long)threads * local, online, online / local > 0 ? online / local : 1);
}
