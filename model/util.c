#define _GNU_SOURCE
#include "model/util.h"
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static __thread char g_err[2048];

int t5g_error(const char *fmt, ...) {
  va_list ap; va_start(ap, fmt); vsnprintf(g_err, sizeof g_err, fmt, ap); va_end(ap);
  return -1;
}
const char *t5g_last_error(void) { return g_err[0] ? g_err : "unknown error"; }

void t5g_fatal(const char *fmt, ...) {
  va_list ap; va_start(ap, fmt);
  fprintf(stderr, "t5gemma: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}
void t5g_die_last(void) { t5g_fatal("%s", t5g_last_error()); }

void *t5g_malloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) t5g_fatal("out of memory allocating %zu bytes", n);
  return p;
}
void *t5g_calloc(size_t c, size_t s) {
  void *p = calloc(c ? c : 1, s ? s : 1);
  if (!p) t5g_fatal("out of memory allocating %zu x %zu bytes", c, s);
  return p;
}
void *t5g_realloc(void *q, size_t n) {
  void *p = realloc(q, n ? n : 1);
  if (!p) t5g_fatal("out of memory reallocating %zu bytes", n);
  return p;
}
void *t5g_alloc_aligned(size_t n) {
  void *p = NULL;
  size_t r = (n + 63) & ~(size_t)63;
  if (posix_memalign(&p, 64, r ? r : 64) != 0) t5g_fatal("out of memory allocating %zu aligned bytes", n);
  return p;
}
char *t5g_strdup(const char *s) { size_t n = strlen(s) + 1; char *d = t5g_malloc(n); memcpy(d, s, n); return d; }

char *t5g_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) { t5g_error("%s: cannot open: %s", path, strerror(errno)); return NULL; }
  if (fseeko(f, 0, SEEK_END) != 0) { fclose(f); t5g_error("%s: cannot seek", path); return NULL; }
  off_t n = ftello(f);
  fseeko(f, 0, SEEK_SET);
  char *buf = t5g_malloc((size_t)n + 1);
  if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    fclose(f); free(buf); t5g_error("%s: short read", path); return NULL;
  }
  fclose(f);
  buf[n] = 0;
  if (len) *len = (size_t)n;
  return buf;
}

/* ---- Registry of temporaries being written (removed by the signal handler) ---------------------
 * Fixed-size slots so that the handler touches no allocator and no lock: a slot's path is written
 * before its flag is set (release) and the flag is cleared before the slot is reused. A program
 * writes at most a few temporaries at once (one per safetensors shard of a save, one checkpoint,
 * one small JSON); when all slots are busy the file is simply not registered. */
#define TMP_SLOTS 64
#define TMP_PATH_MAX 4096
static char g_tmp_path[TMP_SLOTS][TMP_PATH_MAX];
static volatile sig_atomic_t g_tmp_used[TMP_SLOTS];
static pthread_mutex_t g_tmp_mu = PTHREAD_MUTEX_INITIALIZER;

void t5g_tmp_register(const char *tmp) {
  if (strlen(tmp) >= TMP_PATH_MAX) return;
  pthread_mutex_lock(&g_tmp_mu);
  for (int i = 0; i < TMP_SLOTS; i++)
    if (!g_tmp_used[i]) {
      strcpy(g_tmp_path[i], tmp);
      __atomic_store_n(&g_tmp_used[i], 1, __ATOMIC_RELEASE);
      break;
    }
  pthread_mutex_unlock(&g_tmp_mu);
}

void t5g_tmp_forget(const char *tmp) {
  pthread_mutex_lock(&g_tmp_mu);
  for (int i = TMP_SLOTS - 1; i >= 0; i--)
    if (g_tmp_used[i] && strcmp(g_tmp_path[i], tmp) == 0) { __atomic_store_n(&g_tmp_used[i], 0, __ATOMIC_RELEASE); break; }
  pthread_mutex_unlock(&g_tmp_mu);
}

void t5g_tmp_unlink(const char *tmp) {
  unlink(tmp);
  t5g_tmp_forget(tmp);
}

static void put_err(const char *s) { ssize_t r = write(2, s, strlen(s)); (void)r; }

int t5g_tmp_remove_all(int sig) {
  int removed = 0;
  /* newest first, so that a file inside a registered temporary directory goes before the directory */
  for (int i = TMP_SLOTS - 1; i >= 0; i--) {
    if (!__atomic_load_n(&g_tmp_used[i], __ATOMIC_ACQUIRE)) continue;
    const char *p = g_tmp_path[i];
    int ok = unlink(p) == 0 || (errno == EISDIR && rmdir(p) == 0);
    g_tmp_used[i] = 0;
    if (!ok) continue;
    if (!removed) {
      put_err("t5gemma: ");
      if (sig) put_err(sig == SIGINT ? "interrupted (SIGINT)" : sig == SIGTERM ? "terminated (SIGTERM)" : "stopped by a signal");
      else put_err("stopped");
      put_err(": removed the unfinished file(s)");
    }
    put_err(" ");
    put_err(p);
    removed++;
  }
  if (removed) put_err("; the earlier outputs are untouched\n");
  return removed;
}

static void on_fatal_signal(int sig) {
  t5g_tmp_remove_all(sig);
  /* die of the signal, as the default action would (the shell's status is 128 + signal) */
  signal(sig, SIG_DFL);
  raise(sig);
  _exit(128 + sig);
}

void t5g_tmp_cleanup_on_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_fatal_signal;
  sigemptyset(&sa.sa_mask);
  sigaddset(&sa.sa_mask, SIGINT);
  sigaddset(&sa.sa_mask, SIGTERM);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

char *t5g_tmp_name(const char *path) {
  size_t n = strlen(path) + 32;
  char *t = t5g_malloc(n);
  snprintf(t, n, "%s.tmp.%d", path, (int)getpid());
  t5g_tmp_register(t);
  return t;
}

int t5g_remove_dead_tmps(const char *dir, int (*match)(const char *name, size_t len, const void *ud), const void *ud,
                         int say) {
  int n = 0;
  DIR *d = opendir(dir[0] ? dir : "/");
  if (!d) return 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    const char *t = strstr(de->d_name, ".tmp.");
    if (!t || !match(de->d_name, (size_t)(t - de->d_name), ud)) continue;
    char *end;
    long pid = strtol(t + 5, &end, 10);
    if (*end || end == t + 5 || pid <= 0 || pid == (long)getpid()) continue;
    if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;   /* its writer may still be running */
    char *p = t5g_path_join(dir, de->d_name);
    if (unlink(p) == 0) {
      if (say) fprintf(stderr, "removed %s, left by an interrupted earlier run (process %ld)\n", p, pid);
      n++;
    }
    free(p);
  }
  closedir(d);
  return n;
}

static int same_name(const char *name, size_t len, const void *base) {
  return len == strlen(base) && memcmp(name, base, len) == 0;
}

int t5g_remove_stale_tmps(const char *path) {
  char *dir = t5g_strdup(path);
  char *slash = strrchr(dir, '/');
  const char *base = slash ? slash + 1 : path;
  if (slash) *slash = 0; else strcpy(dir, ".");
  int n = t5g_remove_dead_tmps(dir, same_name, base, 1);
  free(dir);
  return n;
}

int t5g_rename_durable(const char *tmp, const char *final) {
  int fd = open(tmp, O_RDONLY);
  if (fd >= 0) { fsync(fd); close(fd); }
  if (rename(tmp, final) != 0) return t5g_error("%s: cannot rename from %s: %s", final, tmp, strerror(errno));
  t5g_tmp_forget(tmp);
  /* fsync the directory so the rename itself is durable */
  char *dir = t5g_strdup(final);
  char *slash = strrchr(dir, '/');
  if (slash) { *slash = 0; } else { strcpy(dir, "."); }
  int dfd = open(dir, O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) { fsync(dfd); close(dfd); }
  free(dir);
  return 0;
}

int t5g_open_out(T5gOutFile *o, const char *path) {
  o->path = t5g_strdup(path);
  o->tmp = t5g_tmp_name(path);
  o->f = fopen(o->tmp, "wb");
  if (!o->f) {
    int r = t5g_error("%s: cannot create %s: %s", path, o->tmp, strerror(errno));
    t5g_tmp_forget(o->tmp);
    free(o->path); free(o->tmp); o->path = o->tmp = NULL;
    return r;
  }
  return 0;
}
int t5g_commit_file(T5gOutFile *o) {
  int bad = fflush(o->f) != 0 || ferror(o->f);
  if (fclose(o->f) != 0) bad = 1;
  o->f = NULL;
  int r = 0;
  if (bad) { r = t5g_error("%s: write failed (disk full?)", o->path); t5g_tmp_unlink(o->tmp); }
  else r = t5g_rename_durable(o->tmp, o->path);
  free(o->path); free(o->tmp); o->path = o->tmp = NULL;
  return r;
}
void t5g_abort_file(T5gOutFile *o) {
  if (o->f) fclose(o->f);
  if (o->tmp) t5g_tmp_unlink(o->tmp);
  free(o->path); free(o->tmp);
  o->f = NULL; o->path = o->tmp = NULL;
}

int t5g_mkdir_p(const char *dir) {
  char *d = t5g_strdup(dir);
  for (char *p = d + 1; *p; p++) {
    if (*p == '/') { *p = 0; if (mkdir(d, 0777) != 0 && errno != EEXIST) { int r = t5g_error("%s: cannot create directory: %s", d, strerror(errno)); free(d); return r; } *p = '/'; }
  }
  if (mkdir(d, 0777) != 0 && errno != EEXIST) { int r = t5g_error("%s: cannot create directory: %s", d, strerror(errno)); free(d); return r; }
  free(d);
  return 0;
}
int t5g_copy_file(const char *src, const char *dst) {
  FILE *in = fopen(src, "rb");
  if (!in) return t5g_error("%s: cannot open: %s", src, strerror(errno));
  T5gOutFile o;
  if (t5g_open_out(&o, dst) != 0) { fclose(in); return -1; }
  char buf[1 << 16];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, k, o.f);
  int bad = ferror(in);
  fclose(in);
  if (bad) { t5g_abort_file(&o); return t5g_error("%s: read error", src); }
  return t5g_commit_file(&o);
}

int t5g_file_exists(const char *path) { struct stat st; return stat(path, &st) == 0; }
char *t5g_path_join(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *p = t5g_malloc(n);
  if (a[0] && a[strlen(a) - 1] == '/') snprintf(p, n, "%s%s", a, b); else snprintf(p, n, "%s/%s", a, b);
  return p;
}

double t5g_now(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec + ts.tv_nsec * 1e-9; }
double t5g_cpu_now(void) { struct timespec ts; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); return ts.tv_sec + ts.tv_nsec * 1e-9; }
int64_t t5g_peak_rss(void) { struct rusage ru; getrusage(RUSAGE_SELF, &ru); return (int64_t)ru.ru_maxrss * 1024; }
int64_t t5g_current_rss(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long pages = 0, rss = 0;
  if (f) { if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0; fclose(f); }
  return (int64_t)rss * sysconf(_SC_PAGESIZE);
}
int64_t t5g_mem_available(void) {
  FILE *f = fopen("/proc/meminfo", "r");
  char line[256]; long long kb = -1;
  if (!f) return -1;
  while (fgets(line, sizeof line, f)) if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1) break;
  fclose(f);
  return kb < 0 ? -1 : (int64_t)kb * 1024;
}

uint64_t t5g_fnv1a64(const void *data, size_t n, uint64_t h) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ULL; }
  return h;
}

/* path: the path of node so far (NUL-terminated within buf[0..n)) */
static int json_dup_walk(const cJSON *node, char *buf, size_t n) {
  size_t len = strlen(buf);
  if (cJSON_IsObject(node)) {
    for (const cJSON *a = node->child; a; a = a->next)
      for (const cJSON *b = node->child; b != a; b = b->next)
        if (a->string && b->string && strcmp(a->string, b->string) == 0) {
          snprintf(buf + len, n - len, "%s%s", len ? "." : "", a->string);
          return 1;
        }
    for (const cJSON *a = node->child; a; a = a->next) {
      snprintf(buf + len, n - len, "%s%s", len ? "." : "", a->string ? a->string : "");
      if (json_dup_walk(a, buf, n)) return 1;
      buf[len] = 0;
    }
  } else if (cJSON_IsArray(node)) {
    int i = 0;
    for (const cJSON *a = node->child; a; a = a->next, i++) {
      snprintf(buf + len, n - len, "[%d]", i);
      if (json_dup_walk(a, buf, n)) return 1;
      buf[len] = 0;
    }
  }
  return 0;
}

int t5g_json_duplicate_key(const struct cJSON *root, char *buf, size_t n) {
  if (n == 0) return 0;
  buf[0] = 0;
  return root ? json_dup_walk(root, buf, n) : 0;
}

const char *t5g_fmt_count(double c, char *buf, size_t n) {
  const char *u[] = {"", "K", "M", "B", "T"};
  int i = 0;
  double a = fabs(c);
  /* move up a unit when the value would round to 1000 at three significant digits */
  while (a >= 999.5 && i < 4) { a /= 1000; c /= 1000; i++; }
  if (i == 0) snprintf(buf, n, "%.0f", c);
  else snprintf(buf, n, a >= 99.95 ? "%.0f%s" : a >= 9.995 ? "%.1f%s" : "%.2f%s", c, u[i]);
  return buf;
}

const char *t5g_fmt_bytes(double b, char *buf, size_t n) {
  const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024 && i < 4) { b /= 1024; i++; }
  snprintf(buf, n, i ? "%.2f %s" : "%.0f %s", b, u[i]);
  return buf;
}
