#define _GNU_SOURCE
#include "model/runtime.h"
#include "model/util.h"
#include <cblas.h>
#include <cpuid.h>
#include <time.h>
#include <errno.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char *openblas_get_corename(void);
extern char *openblas_get_config(void);
extern void openblas_set_num_threads(int);

static int g_threads = 0;
static char g_fix_note[160] = "not initialised";
static char g_cpu_name[160];

static int xgetbv_ok(unsigned mask) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  if (!(c & (1u << 27))) return 0;               /* OSXSAVE */
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & mask) == mask;
}

int t5g_cpu_has_avx2(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 12))) return 0;   /* FMA */
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  return (b & (1u << 5)) && xgetbv_ok(0x6);
}

int t5g_cpu_has_avx512(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  unsigned need = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);    /* F, DQ, BW, VL */
  return (b & need) == need && xgetbv_ok(0xe6);
}

static int cpu_has_avx512_bf16(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
  return (a >> 5) & 1;
}

static int cpu_is_amd(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return 0;
  return b == 0x68747541; /* "Auth" */
}

const char *t5g_cpu_name(void) {
  if (g_cpu_name[0]) return g_cpu_name;
  FILE *f = fopen("/proc/cpuinfo", "r");
  char line[512];
  snprintf(g_cpu_name, sizeof g_cpu_name, "unknown");
  if (f) {
    while (fgets(line, sizeof line, f)) {
      if (strncmp(line, "model name", 10) == 0) {
        char *p = strchr(line, ':');
        if (p) { p++; while (*p == ' ') p++; p[strcspn(p, "\n")] = 0; snprintf(g_cpu_name, sizeof g_cpu_name, "%s", p); }
        break;
      }
    }
    fclose(f);
  }
  return g_cpu_name;
}

/* OpenBLAS core names of cores without AVX (dynamic-arch builds). */
static int core_is_pre_avx(const char *core) {
  static const char *old[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom",
                              "Katmai", "Coppermine", "Northwood", "Banias", "Athlon", "Opteron",
                              "Opteron_SSE3", "Barcelona", "Bobcat", "Nano", "Generic", "Unknown", NULL};
  for (int i = 0; old[i]; i++) if (strcasecmp(core, old[i]) == 0) return 1;
  return 0;
}

int t5g_threads_max(void) {
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  if (cores < 1) cores = 1;
  return cores * 4 < T5G_THREADS_CAP ? (int)(cores * 4) : T5G_THREADS_CAP;
}

/* Parse a thread count given by `what` ("--threads" or "OMP_NUM_THREADS"): a positive decimal
 * integer no larger than t5g_threads_max(). OMP_NUM_THREADS may be a nesting list ("8,2"): its
 * first entry is the count. Prints the error and exits 2 on anything else. */
static int parse_thread_count(const char *what, const char *s, int env) {
  char buf[64];
  snprintf(buf, sizeof buf, "%s", s);
  if (env) buf[strcspn(buf, ",")] = 0;
  char *end = NULL;
  errno = 0;
  long v = strtol(buf, &end, 10);
  const int max = t5g_threads_max();
  if (!buf[0] || end == buf || *end || errno == ERANGE) {
    fprintf(stderr, "t5gemma: %s: expected a positive integer number of threads (1 to %d), found '%s'\n", what, max, s);
    exit(2);
  }
  if (v < 1 || v > max) {
    fprintf(stderr, "t5gemma: %s: %s threads is out of range: 1 to %d on this machine (4 x %ld cores, at most %d)\n",
            what, s, max, sysconf(_SC_NPROCESSORS_ONLN), T5G_THREADS_CAP);
    exit(2);
  }
  return (int)v;
}

static void parse_threads_arg(int *argc, char ***argv) {
  char **av = *argv;
  int w = 1;
  for (int r = 1; r < *argc; r++) {
    const char *a = av[r];
    if (strcmp(a, "--threads") == 0) {
      if (r + 1 >= *argc) { fprintf(stderr, "t5gemma: --threads needs a value (1 to %d)\n", t5g_threads_max()); exit(2); }
      g_threads = parse_thread_count("--threads", av[++r], 0);
      continue;
    }
    if (strncmp(a, "--threads=", 10) == 0) { g_threads = parse_thread_count("--threads", a + 10, 0); continue; }
    if (strcmp(a, "--") == 0) { while (r < *argc) av[w++] = av[r++]; break; }
    av[w++] = av[r];
  }
  *argc = w;
  av[w] = NULL;
}

void t5g_runtime_init(int *argc, char ***argv) {
  const char *user = getenv("OPENBLAS_CORETYPE");
  const char *reexec = getenv("T5G_BLAS_REEXEC");
  const char *fix = getenv("T5G_BLAS_FIX");
  const char *core = openblas_get_corename();
  /* T5G_BLAS_ASSUME_CORE: treat OpenBLAS's detection as this core name (tests of the fix on
   * machines whose OpenBLAS detects the CPU correctly). */
  if (getenv("T5G_BLAS_ASSUME_CORE") && !reexec) core = getenv("T5G_BLAS_ASSUME_CORE");
  if (user && !reexec) {
    snprintf(g_fix_note, sizeof g_fix_note, "OPENBLAS_CORETYPE=%s set by the user", user);
  } else if (reexec) {
    snprintf(g_fix_note, sizeof g_fix_note, "fixed: detected %s, re-executed with OPENBLAS_CORETYPE=%s", reexec, user ? user : "?");
  } else if (core_is_pre_avx(core) && (t5g_cpu_has_avx512() || t5g_cpu_has_avx2()) && !(fix && strcmp(fix, "0") == 0)) {
    const char *want;
    if (t5g_cpu_has_avx512()) want = cpu_has_avx512_bf16() ? "COOPERLAKE" : "SKYLAKEX";
    else want = cpu_is_amd() ? "ZEN" : "HASWELL";
    setenv("OPENBLAS_CORETYPE", want, 1);
    setenv("T5G_BLAS_REEXEC", core, 1);
    if (!getenv("OMP_WAIT_POLICY")) setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    fflush(NULL);
    execv("/proc/self/exe", *argv);
    /* exec failed: carry on with the slow kernels, but say so */
    snprintf(g_fix_note, sizeof g_fix_note, "WARNING: OpenBLAS core %s is too old for this CPU and the re-exec failed; set OPENBLAS_CORETYPE=%s", core, want);
  } else {
    snprintf(g_fix_note, sizeof g_fix_note, "detected by OpenBLAS (matches the CPU)");
  }
  /* OpenMP threads must not spin while OpenBLAS's own threads (and, on a shared machine, other
   * processes) need the cores: the spinning of idle OpenMP threads made small models 10-20x
   * slower here. libgomp reads OMP_WAIT_POLICY when it is loaded, so set it and re-execute once
   * (the user's setting is respected). */
  if (!getenv("OMP_WAIT_POLICY") && !getenv("T5G_OMP_REEXEC")) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    setenv("T5G_OMP_REEXEC", "1", 1);
    fflush(NULL);
    execv("/proc/self/exe", *argv);
  }
  parse_threads_arg(argc, argv);
  if (g_threads <= 0) {
    const char *e = getenv("OMP_NUM_THREADS");
    g_threads = e && e[0] ? parse_thread_count("OMP_NUM_THREADS", e, 1) : 0;
  }
  if (g_threads <= 0) g_threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (g_threads <= 0) g_threads = 1;
  t5g_set_threads(g_threads);
}

int t5g_threads(void) { return g_threads > 0 ? g_threads : 1; }

void t5g_set_threads(int n) {
  if (n < 1) n = 1;
  if (n > t5g_threads_max()) {   /* libgomp cannot start (and crashes on) absurd team sizes */
    fprintf(stderr, "t5gemma: warning: %d threads is more than this machine allows (%d); using %d\n", n, t5g_threads_max(), t5g_threads_max());
    n = t5g_threads_max();
  }
  g_threads = n;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

void t5g_blas_single(void) { openblas_set_num_threads(1); }
void t5g_blas_restore(void) { openblas_set_num_threads(t5g_threads()); }

const char *t5g_blas_core(void) { return openblas_get_corename(); }
const char *t5g_blas_config(void) { return openblas_get_config(); }
const char *t5g_blas_fix_note(void) { return g_fix_note; }

static double sgemm_wall(int m, int n, int k);
static double sgemm_cpu(int m, int n, int k);

double t5g_sgemm_gflops(int m, int n, int k) {
  static double cached = 0; static int cm, cn, ck, ct;
  if (!(cached > 0 && cm == m && cn == n && ck == k && ct == t5g_threads())) {
    cached = sgemm_wall(m, n, k); cm = m; cn = n; ck = k; ct = t5g_threads();
  }
  return cached;
}

double t5g_sgemm_gflops_cpu(int m, int n, int k) {
  static double cached = 0; static int cm, cn, ck, ct;
  if (!(cached > 0 && cm == m && cn == n && ck == k && ct == t5g_threads())) {
    cached = sgemm_cpu(m, n, k); cm = m; cn = n; ck = k; ct = t5g_threads();
  }
  return cached;
}

static void fill_ab(float *a, float *b, int m, int n, int k) {
  for (size_t i = 0; i < (size_t)m * k; i++) a[i] = (float)((i * 7919) % 101) / 101.0f - 0.5f;
  for (size_t i = 0; i < (size_t)k * n; i++) b[i] = (float)((i * 104729) % 103) / 103.0f - 0.5f;
}

/* The product on OpenBLAS's threads, best wall time of 5. */
static double sgemm_wall(int m, int n, int k) {
  float *a = t5g_alloc_aligned((size_t)m * k * 4), *b = t5g_alloc_aligned((size_t)k * n * 4), *c = t5g_alloc_aligned((size_t)m * n * 4);
  fill_ab(a, b, m, n, k);
  double best = 1e30;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n); /* warm-up */
  for (int rep = 0; rep < 5; rep++) {
    double t0 = t5g_now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n);
    double dt = t5g_now() - t0;
    if (dt < best) best = dt;
  }
  free(a); free(b); free(c);
  return 2.0 * m * n * k / best / 1e9;
}

/* One thread's rate (single-threaded OpenBLAS, as model/gemm.c runs it on each thread of the
 * pool), best of 5 by this thread's CPU time, times the thread count. CPU time leaves out the
 * time another job held the core and, with one thread, there is no OpenBLAS thread spinning at a
 * barrier to add to it, so a loaded machine hardly changes the figure. */
static double sgemm_cpu(int m, int n, int k) {
  float *a = t5g_alloc_aligned((size_t)m * k * 4), *b = t5g_alloc_aligned((size_t)k * n * 4), *c = t5g_alloc_aligned((size_t)m * n * 4);
  fill_ab(a, b, m, n, k);
  t5g_blas_single();
  double best = 1e30;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n); /* warm-up */
  for (int rep = 0; rep < 5; rep++) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
    double dt = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
    if (dt > 0 && dt < best) best = dt;
  }
  t5g_blas_restore();
  free(a); free(b); free(c);
  return 2.0 * m * n * k / best / 1e9 * t5g_threads();
}
