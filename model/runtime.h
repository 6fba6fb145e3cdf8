/* runtime.h: process start-up (OpenBLAS core fix), thread control, and machine facts.
 *
 * OpenBLAS on this CPU (issue 2): Debian's OpenBLAS 0.3.21 can misdetect newer x86 CPUs as an
 * old core ("Prescott") and run generic kernels at a fraction of the speed. OpenBLAS picks its
 * kernels when the library is loaded, so the fix must happen before the process starts:
 * t5g_runtime_init() checks the CPU (cpuid: AVX-512 F/BW/DQ/VL, AVX2+FMA) against
 * openblas_get_corename(); when the core is a pre-AVX one it re-executes the program once with
 * OPENBLAS_CORETYPE set (SKYLAKEX / COOPERLAKE for AVX-512, HASWELL / ZEN for AVX2), unless the
 * user set OPENBLAS_CORETYPE (respected as given) or T5G_BLAS_FIX=0. T5G_BLAS_ASSUME_CORE=NAME makes
 * start-up act as if OpenBLAS had detected NAME (to test the fix where detection is right).
 *
 * Threads: one knob. T5G threads = --threads N, else OMP_NUM_THREADS, else all cores. It sets
 * both OpenMP and OpenBLAS. The count must be an integer from 1 to t5g_threads_max() = 4 x the
 * online cores, at most T5G_THREADS_CAP (1024): anything else (a non-number, 0, -1, 100000) is a
 * usage error (exit 2) naming the source. Oversubscribing more than 4x only slows every kernel
 * down, and libgomp crashes (SIGSEGV in GOMP_parallel) when a team of ~100000 threads cannot be
 * created. An op that calls BLAS inside its own OpenMP parallel region brackets
 * the region with t5g_blas_single() / t5g_blas_restore(), so there are never OpenBLAS threads
 * inside OpenMP threads (no oversubscription).
 */
#ifndef T5G_RUNTIME_H
#define T5G_RUNTIME_H

/* Call first in main(), before any BLAS call. May re-exec the process (does not return then).
 * Consumes a "--threads N" / "--threads=N" argument anywhere in argv (removing it). */
void t5g_runtime_init(int *argc, char ***argv);

int  t5g_threads(void);
/* Set the thread count; n < 1 means 1, n > t5g_threads_max() is lowered to it with a warning. */
void t5g_set_threads(int n);
#define T5G_THREADS_CAP 1024
/* Largest accepted thread count: min(4 x online cores, T5G_THREADS_CAP). */
int  t5g_threads_max(void);
void t5g_blas_single(void);
void t5g_blas_restore(void);

/* OpenBLAS facts, for `t5gemma info` and the logs. */
const char *t5g_blas_core(void);        /* openblas_get_corename() */
const char *t5g_blas_config(void);      /* openblas_get_config() */
const char *t5g_blas_fix_note(void);    /* what start-up did: "detected", "fixed from Prescott", "set by user" */
const char *t5g_cpu_name(void);         /* model name from /proc/cpuinfo */
int  t5g_cpu_has_avx512(void);
int  t5g_cpu_has_avx2(void);

/* Measured single-precision GEMM rate of this machine at the current thread count, GFLOP/s
 * (M=N=K=1024 by default, best of a few runs; cached after the first call). Used for MFU. */
double t5g_sgemm_gflops(int m, int n, int k);
/* One thread's rate for the same product (single-threaded OpenBLAS, as model/gemm.c runs it on
 * each thread of the pool) per CPU-second of that thread, times the thread count: what the
 * threads reach with their cores to themselves. Unlike the wall-clock rate it hardly changes when
 * other jobs share the cores while it is measured, so a training log's MFU against it does not
 * pass 100% when the load drops later. Cached like t5g_sgemm_gflops. */
double t5g_sgemm_gflops_cpu(int m, int n, int k);

#endif
