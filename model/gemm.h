/* gemm.h: the engine's matrix product, parallelised over OpenMP threads (issue 8).
 *
 * Why: OpenBLAS (Debian's pthread build) keeps its own pool of worker threads, and the engine's
 * element-wise ops run on the OpenMP pool. Each pool spin-waits for a while after its work
 * (libgomp ~300k spins, OpenBLAS up to 2^28 cycles), so alternating between a BLAS call and an
 * OpenMP op put a spinning thread of one pool on the core the other pool needed: measured on the
 * S-S preset (2 cores), 2x the CPU time of OMP_WAIT_POLICY=passive + OPENBLAS_THREAD_TIMEOUT=4.
 * Here every product of the ops runs on the OpenMP pool instead: the product is cut into pieces
 * along M, N or K, OpenMP threads take pieces (dynamic schedule, so a thread that the OS
 * descheduled does not hold the others up), and each piece is one single-threaded cblas_sgemm.
 * OpenBLAS's own threads then stay asleep.
 *
 * Which dimension is cut: each piece re-packs the operand it shares with the other pieces
 * (cutting M re-reads B [K,N] per piece, cutting N re-reads A [M,K], cutting K needs a private
 * [M,N] partial result per piece, summed at the end in piece order), so the cut with the
 * smallest shared volume wins among those giving pieces large enough for the BLAS kernels
 * (>= 128 rows/columns, >= 512 for K). Examples: the LM head's logits [131, 256000] cut N,
 * its dh [131, 512] = Z E (K = 256000) cut K, its dE [256000, 512] cut M, the projections
 * [B·T, d] x [d, N] cut M. A product too small to cut runs as one single-threaded cblas_sgemm
 * (so the engine never wakes OpenBLAS's pool).
 *
 * Results: bit-identical to one cblas_sgemm for M and N cuts (each C element is computed by one
 * kernel call over the whole K). K cuts add the pieces' partial sums in a fixed order, so results
 * depend on the thread count only through the number of pieces (a function of the thread count
 * and the shape, never of timing).
 */
#ifndef T5G_GEMM_H
#define T5G_GEMM_H

/* Row-major C[M,N] = alpha · op(A) · op(B) + beta · C, op(X) = X or Xᵀ, exactly as
 * cblas_sgemm(CblasRowMajor, ...). A is [M,K] (lda >= K) or, transposed, [K,M] (lda >= M);
 * B is [K,N] (ldb >= N) or [N,K] (ldb >= K); ldc >= N. Called outside any OpenMP region (inside
 * one it runs as a single cblas_sgemm on the calling thread, which the caller must have set to
 * one OpenBLAS thread, runtime.h). Not reentrant across threads: it keeps one scratch buffer for
 * K cuts (grown once, reused: no allocation in steady state). */
void t5g_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc);

#endif
