/* dist.h: data-parallel communication over MPI (OpenMPI), issue 9.
 *
 * Built with -DT5G_MPI when OpenMPI is installed (the Makefile turns it on by itself); without
 * it, or when the program was not started by mpirun (no OMPI_COMM_WORLD_SIZE / PMI_SIZE in the
 * environment), the world is one rank and every call is the identity: the single-process build
 * and run need no MPI.
 * Gradients travel as f32 (MPI has no bf16 type) in buckets of `bucket_floats` floats.
 * Errors: MPI's default handler (MPI_ERRORS_ARE_FATAL) aborts every rank when a collective fails;
 * mpirun stops the job when one rank dies, so no rank hangs forever.
 */
#ifndef T5G_DIST_H
#define T5G_DIST_H

#include <stdint.h>

void dist_init(int *argc, char ***argv);
void dist_finalize(void);
int  dist_rank(void);
int  dist_world(void);
int  dist_active(void);                       /* 1 when running with more than one rank */

/* Sum then divide by the world size, in place, over n floats (bucketed). */
void dist_allreduce_mean(float *buf, int64_t n);
/* In-place sums. */
void dist_allreduce_sum_f64(double *buf, int n);
void dist_allreduce_sum_i64(int64_t *buf, int n);
void dist_allreduce_max_f64(double *buf, int n);
/* In-place sum over ranks (gradients whose loss was already divided by the global token count). */
void dist_allreduce_sum_f32(float *buf, int64_t n);
/* Non-blocking in-place sum over ranks of buf[0..n) (bucketed), for overlapping the gradient
 * exchange with the rest of backward; dist_progress() lets MPI advance outstanding requests
 * (OpenMPI progresses them only inside MPI calls); dist_wait_all() completes them all. */
void dist_iallreduce_sum_f32(float *buf, int64_t n);
void dist_progress(void);
void dist_wait_all(void);
/* ZeRO-1 partition of n elements: rank r owns [lo, hi) = [r*ceil(n/W), min((r+1)*ceil(n/W), n));
 * n need not divide evenly (the last slices are shorter, possibly empty). */
void dist_slice(int64_t n, int rank, int64_t *lo, int64_t *hi);
/* ZeRO-1: every rank ends with the sum over ranks of buf on its own slice (other slices are
 * left as they were). Bucketed; counts per rank may differ. */
void dist_reduce_scatter_sum(float *buf, int64_t n);
/* ZeRO-1: every rank contributes its slice of buf; all ranks end with the whole buffer. */
void dist_allgather(float *buf, int64_t n);
/* Rank 0 receives every rank's slice (slice = this rank's [lo, hi) values) into full [n];
 * other ranks' `full` is untouched (may be NULL). One rank: copies. */
void dist_gather_slices(const float *slice, float *full, int64_t n);
void dist_bcast(void *buf, int64_t bytes, int root);
void dist_barrier(void);
/* With several ranks: warn (once per node, on stderr) when `threads` OpenMP threads per rank
 * exceed the CPUs this rank is bound to, or ranks-per-node x threads exceed the node's CPUs.
 * No effect with one rank. */
void dist_check_threads(int threads);
/* Abort every rank with a message (non-zero exit). */
void dist_abort(const char *msg) __attribute__((noreturn));
/* Check that a 64-bit value (e.g. a checksum of the weights) is the same on every rank;
 * returns 1 when it is. */
int dist_same_u64(uint64_t v);

#endif
