/* test_steady_alloc.c: in steady state a training step allocates nothing (model/tensor.h:
 * "in steady state no malloc happens per op"; issue 8: "no allocation in the steady-state step").
 *
 * How allocations are counted: this program alone is linked with
 *   -Wl,--wrap=malloc,--wrap=calloc,... (Makefile: the target-specific LDLIBS of this test)
 * so every call to an allocation function made from the objects linked into it (libt5gemma.a
 * and this file) goes to the __wrap_* counters below, which then call the real function. Calls
 * made inside shared libraries (OpenBLAS, libgomp, libzstd, libc itself) are not redirected by
 * the linker and are not counted: their memory is theirs to manage (OpenBLAS and libgomp keep
 * thread buffers; the shard reader's zstd context is created once at open). The counted entry
 * points are every allocation function our sources call (model/util.c's t5g_malloc family over
 * malloc/calloc/realloc/posix_memalign, model/weights_bf16.c's posix_memalign, vasprintf in
 * train/checkpoint.c, getline in the CLI readers, mmap of checkpoints and SFT files) plus the
 * remaining C allocation functions and C++ operator new (data/spm.cc), so a new call site cannot
 * slip past the count. free is counted too, for the failure messages only.
 *
 * Each case builds its state, runs 2 warm-up steps (buffers reach their steady size: the arena
 * merges into one chunk holding the step's peak, the tape reaches its length), then counts the
 * allocation calls of 3 more steps, which must be 0. The step is train/train.c's train_step on one
 * process: grad_accum micro-batches from the objective over real token shards (written by the test
 * with data/shards.h), params_zero_grad, per micro-batch graph_reset + dropout seed + model_loss +
 * graph_backward, graph_reset, global-norm clipping (adamw_clip_grad_norm), adamw_step with the
 * scheduled learning rate.
 *   t5gemma_prefixlm_step      tiny T5Gemma, PrefixLM (packed), 2 micro-batches, dropout 0.1
 *   t5gemma_recompute_step     the same with per-layer activation recomputation
 *   gemma2_causal_step         tiny Gemma 2, causal LM with packed segments
 *   unequal_cross_warmup_step  tiny T5Gemma with unequal widths, cross-attention-only warm-up
 *                              (model_set_cross_attn_only: frozen entries skipped everywhere)
 *   objective_batches          obj_next_batch of PrefixLM (packed and one-document-per-row) and
 *                              UL2 over the shard reader (with and without its prefetch thread),
 *                              counted per batch over enough batches to cross frames, shuffle
 *                              windows, shard files and an epoch
 *   counter_catches_malloc     the counter itself: a step that allocates is caught (one
 *                              t5g_malloc per step in the counted window gives exactly 3)
 * On failure the message names the callers of the first counted calls (function file:line).
 * Under a second in all. */
#define _GNU_SOURCE
#include "tests/check.h"
#include "data/objectives.h"
#include "data/shards.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "train/dist.h"

#include <dlfcn.h>
#include <execinfo.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------- */
/* Counting wrappers (linker --wrap)                                                           */

static atomic_int g_counting;            /* 1 inside a counted window */
static atomic_long g_allocs, g_frees;
#define N_SITES 4
#define SITE_DEPTH 8
static void *g_site[N_SITES][SITE_DEPTH];
static int g_site_n[N_SITES];
static const char *g_site_fn[N_SITES];
static __thread int g_in_wrapper;        /* backtrace() may allocate inside libc: not ours */

static void count_alloc(const char *fn) {
  if (!atomic_load_explicit(&g_counting, memory_order_relaxed) || g_in_wrapper) return;
  long k = atomic_fetch_add(&g_allocs, 1);
  if (k < N_SITES) {
    g_in_wrapper = 1;
    g_site_n[k] = backtrace(g_site[k], SITE_DEPTH);
    g_site_fn[k] = fn;
    g_in_wrapper = 0;
  }
}

void *__real_malloc(size_t n);
void *__real_calloc(size_t c, size_t n);
void *__real_realloc(void *p, size_t n);
void *__real_reallocarray(void *p, size_t c, size_t n);
int   __real_posix_memalign(void **p, size_t a, size_t n);
void *__real_aligned_alloc(size_t a, size_t n);
void *__real_memalign(size_t a, size_t n);
void *__real_valloc(size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
int   __real_vasprintf(char **out, const char *fmt, va_list ap);
ssize_t __real_getline(char **line, size_t *n, FILE *f);
ssize_t __real_getdelim(char **line, size_t *n, int delim, FILE *f);
void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *__real__Znwm(size_t n);
void *__real__Znam(size_t n);
void  __real_free(void *p);

void *__wrap_malloc(size_t n) { count_alloc("malloc"); return __real_malloc(n); }
void *__wrap_calloc(size_t c, size_t n) { count_alloc("calloc"); return __real_calloc(c, n); }
void *__wrap_realloc(void *p, size_t n) { count_alloc("realloc"); return __real_realloc(p, n); }
void *__wrap_reallocarray(void *p, size_t c, size_t n) { count_alloc("reallocarray"); return __real_reallocarray(p, c, n); }
int   __wrap_posix_memalign(void **p, size_t a, size_t n) { count_alloc("posix_memalign"); return __real_posix_memalign(p, a, n); }
void *__wrap_aligned_alloc(size_t a, size_t n) { count_alloc("aligned_alloc"); return __real_aligned_alloc(a, n); }
void *__wrap_memalign(size_t a, size_t n) { count_alloc("memalign"); return __real_memalign(a, n); }
void *__wrap_valloc(size_t n) { count_alloc("valloc"); return __real_valloc(n); }
char *__wrap_strdup(const char *s) { count_alloc("strdup"); return __real_strdup(s); }
char *__wrap_strndup(const char *s, size_t n) { count_alloc("strndup"); return __real_strndup(s, n); }
int   __wrap_vasprintf(char **out, const char *fmt, va_list ap) { count_alloc("vasprintf"); return __real_vasprintf(out, fmt, ap); }
ssize_t __wrap_getline(char **line, size_t *n, FILE *f) { count_alloc("getline"); return __real_getline(line, n, f); }
ssize_t __wrap_getdelim(char **line, size_t *n, int delim, FILE *f) { count_alloc("getdelim"); return __real_getdelim(line, n, delim, f); }
void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) { count_alloc("mmap"); return __real_mmap(addr, len, prot, flags, fd, off); }
void *__wrap__Znwm(size_t n) { count_alloc("operator new"); return __real__Znwm(n); }
void *__wrap__Znam(size_t n) { count_alloc("operator new[]"); return __real__Znam(n); }
void  __wrap_free(void *p) {
  if (p && atomic_load_explicit(&g_counting, memory_order_relaxed) && !g_in_wrapper) atomic_fetch_add(&g_frees, 1);
  __real_free(p);
}

static void count_begin(void) {
  atomic_store(&g_allocs, 0);
  atomic_store(&g_frees, 0);
  memset(g_site_n, 0, sizeof g_site_n);
  atomic_store(&g_counting, 1);
}
static long count_end(void) { atomic_store(&g_counting, 0); return atomic_load(&g_allocs); }

/* One caller frame as "function file:line" (addr2line on this program, which is built with -g),
 * or "object+offset" for frames in shared libraries. Used only after counting stopped. */
static void frame_name(void *addr, char *out, size_t cap) {
  Dl_info di;
  if (!dladdr(addr, &di) || !di.dli_fname) { snprintf(out, cap, "%p", addr); return; }
  unsigned long off = (unsigned long)((char *)addr - (char *)di.dli_fbase) - 1;   /* inside the call */
  const char *base = strrchr(di.dli_fname, '/');
  snprintf(out, cap, "%s+%#lx", base ? base + 1 : di.dli_fname, off);
  char self[512];
  ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
  if (k <= 0) return;
  self[k] = 0;
  Dl_info dm;
  if (!dladdr((void *)frame_name, &dm) || dm.dli_fbase != di.dli_fbase) return;   /* not this program */
  char cmd[700], fn[256] = "", loc[512] = "";
  snprintf(cmd, sizeof cmd, "addr2line -f -s -e '%s' %#lx 2>/dev/null", self, off);
  FILE *p = popen(cmd, "r");
  if (!p) return;
  if (fgets(fn, sizeof fn, p) && fgets(loc, sizeof loc, p)) {
    fn[strcspn(fn, "\n")] = 0; loc[strcspn(loc, "\n")] = 0;
    char *disc = strstr(loc, " (discriminator");
    if (disc) *disc = 0;
    if (fn[0] && fn[0] != '?') snprintf(out, cap, "%s %s", fn, loc);
  }
  pclose(p);
}

/* "N allocation call(s), M free(s); #1 malloc from f file:line < g file:line < ..." into buf */
static const char *count_report(char *buf, size_t cap) {
  long n = atomic_load(&g_allocs);
  int o = snprintf(buf, cap, "%ld allocation call(s), %ld free(s)", n, atomic_load(&g_frees));
  for (int k = 0; k < N_SITES && k < n && o < (int)cap; k++) {
    o += snprintf(buf + o, cap - o, "; #%d %s from", k + 1, g_site_fn[k] ? g_site_fn[k] : "?");
    for (int d = 1; d < g_site_n[k] && d < 6 && o < (int)cap; d++) {   /* frame 0 is count_alloc */
      char f[600];
      frame_name(g_site[k][d], f, sizeof f);
      o += snprintf(buf + o, cap - o, "%s %s", d > 1 ? " <" : "", f);
    }
  }
  return buf;
}

/* ---------------------------------------------------------------------------------------- */
/* Token shards written by the test                                                            */

#define VOCAB 512
static char g_dir[256];

static void remove_dir(void) {
  if (g_dir[0]) { char cmd[512]; snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir); if (system(cmd)) {} }
}

/* 600 documents of 1..200 random ids in [20, VOCAB), small frames (256 tokens) and shards (8000
 * tokens): a few dozen steps cross frames, shuffle windows and shard files. Written once. */
static const char *shard_dir(void) {
  if (g_dir[0]) return g_dir;
  snprintf(g_dir, sizeof g_dir, "/tmp/t5g_test_steady_alloc_%d", (int)getpid());
  atexit(remove_dir);
  const char *splits[] = {"train"};
  ShardTokenizerInfo ti;
  memset(&ti, 0, sizeof ti);
  ti.vocab_size = VOCAB; ti.bos_id = 2; ti.eos_id = 1; ti.pad_id = 0;
  ShardWriterOpts wo = shard_writer_default_opts();
  wo.frame_tokens = 256; wo.shard_tokens = 8000;
  DatasetWriter *w = dataset_writer_open(g_dir, splits, 1, &ti, &wo);
  if (!w) return NULL;
  Rng r;
  rng_seed(&r, 77);
  int32_t doc[200];
  for (int d = 0; d < 600; d++) {
    int64_t n = 1 + (int64_t)rng_below(&r, 200);
    for (int64_t i = 0; i < n; i++) doc[i] = 20 + (int32_t)rng_below(&r, VOCAB - 20);
    if (dataset_writer_add(w, 0, doc, n) != 0) { dataset_writer_abort(w); return NULL; }
  }
  if (dataset_writer_finish(w) != 0) return NULL;
  return g_dir;
}

static const int32_t SENTINELS[10] = {7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
static ObjSpecials specials(void) {
  ObjSpecials sp;
  memset(&sp, 0, sizeof sp);
  sp.pad = 0; sp.eos = 1; sp.bos = 2; sp.start_of_turn = sp.end_of_turn = -1;
  sp.sentinels = SENTINELS; sp.n_sentinels = 10;
  return sp;
}

/* ---------------------------------------------------------------------------------------- */
/* A trainer reduced to train/train.c's train_step on one process                              */

typedef struct Rig {
  Model m;
  ShardReader *reader;
  Objective *obj;
  Batch mb[2];
  int grad_accum;
  AdamW opt;
  LrSchedule sched;
  Arena arena;
  Graph g;
  int64_t step;
  double last_loss, last_gnorm;
  int extra_malloc;          /* counter_catches_malloc: one t5g_malloc per step */
} Rig;

typedef enum { OBJ_USE_PREFIXLM, OBJ_USE_CAUSAL } RigObjective;

static int rig_init(Rig *t, const char *preset, RigObjective ob, int recompute, float dropout) {
  memset(t, 0, sizeof *t);
  ModelConfig c;
  if (config_resolve(preset, &c) != 0 || model_init(&t->m, &c) != 0) return -1;
  model_init_random(&t->m, 5);
  t->m.cfg.enc.dropout_rate = t->m.cfg.dec.dropout_rate = dropout;
  t->m.recompute = recompute;
  const char *dir = shard_dir();
  if (!dir) return -1;
  ShardReaderOpts ro = shard_reader_default_opts();
  ro.seed = 3;
  t->reader = shard_reader_open(dir, "train", &ro);
  if (!t->reader) return -1;
  ObjSpecials sp = specials();
  DocSeeker sk = obj_shard_seeker(t->reader);
  if (ob == OBJ_USE_CAUSAL) {
    CausalOptions o = obj_causal_defaults(48);
    o.segments = 1;
    t->obj = obj_causal_new(&o, &sp, shard_reader_source(t->reader), &sk, 11);
  } else {
    PrefixLMOptions o = obj_prefixlm_defaults(24, 24);
    t->obj = obj_prefixlm_new(&o, &sp, shard_reader_source(t->reader), &sk, 11);
  }
  if (!t->obj) return -1;
  t->grad_accum = 2;
  for (int k = 0; k < t->grad_accum; k++) obj_batch_alloc(t->obj, &t->mb[k], 2);
  AdamWConfig ac;
  adamw_config_default(&ac);
  if (adamw_init(&t->opt, &t->m.ps, &ac, 0, t->m.ps.n_total) != 0) return -1;
  lr_schedule_default(&t->sched);
  t->sched.decay = LR_COSINE;
  t->sched.peak_lr = 1e-3;
  t->sched.warmup_steps = 2;
  t->sched.total_steps = 100;
  arena_init(&t->arena, 0);
  graph_init(&t->g, &t->arena);
  t->g.profile = 1;
  return 0;
}

static void rig_free(Rig *t) {
  graph_free(&t->g);
  arena_free(&t->arena);
  adamw_free(&t->opt);
  for (int k = 0; k < t->grad_accum; k++) batch_free(&t->mb[k]);
  obj_free(t->obj);
  shard_reader_close(t->reader);
  model_free(&t->m);
}

/* train/train.c train_step, single process (the dist_* calls are the same no-ops there). */
static int rig_step(Rig *t) {
  int64_t counts[2] = {0, 0};
  for (int k = 0; k < t->grad_accum; k++) {
    if (obj_next_batch(t->obj, &t->mb[k]) != 1) return -1;
    counts[0] += t->mb[k].n_targets;
    counts[1] += batch_input_tokens(&t->mb[k]);
  }
  dist_allreduce_sum_i64(counts, 2);
  float norm = counts[0] > 0 ? (float)counts[0] : 1.0f;
  params_zero_grad(&t->m.ps);
  double loss_sum = 0;
  for (int k = 0; k < t->grad_accum; k++) {
    graph_reset(&t->g);
    t->g.dropout_seed = splitmix64(99 ^ splitmix64((uint64_t)t->step * 1000003ULL + (uint64_t)k * 7919ULL));
    t->g.dropout_calls = 0;
    LossStats st;
    Tensor *loss = model_loss(&t->m, &t->g, &t->mb[k], norm, &st, NULL, NULL);
    loss_sum += loss->data[0];
    graph_backward(&t->g, loss);
  }
  graph_reset(&t->g);
  dist_allreduce_sum_f64(&loss_sum, 1);
  int nonfinite = 0;
  double gnorm = adamw_clip_grad_norm(&t->m.ps, 1.0, &nonfinite);
  if (nonfinite || !isfinite(loss_sum)) return -1;
  adamw_step(&t->opt, &t->m.ps, lr_schedule_lr(&t->sched, t->step));
  if (t->extra_malloc) { volatile char *p = t5g_malloc(64); p[0] = 1; free((void *)p); }
  t->step++;
  t->last_loss = loss_sum;
  t->last_gnorm = gnorm;
  return 0;
}

/* 2 warm-up steps, then the allocation calls of 3 counted steps (-1 when a step fails). */
static long steady_allocs(Rig *t) {
  for (int i = 0; i < 2; i++) if (rig_step(t) != 0) return -1;
  count_begin();
  for (int i = 0; i < 3; i++) if (rig_step(t) != 0) { count_end(); return -1; }
  return count_end();
}

/* Every case also checks that the steps did train: finite loss near ln V at the start, a
 * non-zero gradient norm, and (for all entries the step updates) the weights moved. */
#define STEADY_CASE(preset, ob, recompute, dropout, cross_only)                                       \
  Rig t;                                                                                             \
  CHECK_MSG(rig_init(&t, preset, ob, recompute, dropout) == 0, "%s", t5g_last_error());            \
  if (cross_only) model_set_cross_attn_only(&t.m, 1);                                                \
  float *w0 = t5g_malloc(t.m.ps.n_total * sizeof(float));                                            \
  memcpy(w0, t.m.ps.data, t.m.ps.n_total * sizeof(float));                                           \
  long n = steady_allocs(&t);                                                                        \
  CHECK_MSG(n >= 0, "a step failed: %s", t5g_last_error());                                         \
  char rep[2048];                                                                                    \
  CHECK_MSG(n == 0, "%s: %s", preset, count_report(rep, sizeof rep));                               \
  CHECK_MSG(isfinite(t.last_loss) && t.last_loss > 0.5 * log(VOCAB) && t.last_loss < 1.5 * log(VOCAB), \
            "loss %g, expected near ln %d = %.2f", t.last_loss, VOCAB, log(VOCAB));                  \
  CHECK_MSG(t.last_gnorm > 0 && isfinite(t.last_gnorm), "gradient norm %g", t.last_gnorm);          \
  CHECK_EQ_INT(t.opt.step, 5);                                                                       \
  int moved = 0, frozen_moved = 0;                                                                   \
  for (int i = 0; i < t.m.ps.n; i++) {                                                               \
    const ParamEntry *e = &t.m.ps.e[i];                                                              \
    int d = memcmp(w0 + (e->t.data - t.m.ps.data), e->t.data, e->t.n * sizeof(float)) != 0;         \
    if (e->frozen) frozen_moved += d; else moved += d;                                               \
  }                                                                                                  \
  CHECK_EQ_INT(frozen_moved, 0);                                                                     \
  CHECK_EQ_INT(moved, params_count_trainable_entries(&t.m.ps));                                      \
  free(w0);                                                                                          \
  rig_free(&t)

static int params_count_trainable_entries(const ParamStore *ps) {
  int k = 0;
  for (int i = 0; i < ps->n; i++) k += !ps->e[i].frozen;
  return k;
}

TEST(t5gemma_prefixlm_step) { STEADY_CASE("tiny-t5gemma", OBJ_USE_PREFIXLM, 0, 0.1f, 0); }
TEST(t5gemma_recompute_step) { STEADY_CASE("tiny-t5gemma", OBJ_USE_PREFIXLM, 1, 0.1f, 0); }
TEST(gemma2_causal_step) { STEADY_CASE("tiny-gemma2", OBJ_USE_CAUSAL, 0, 0.0f, 0); }
TEST(unequal_cross_warmup_step) { STEADY_CASE("tiny-t5gemma-unequal", OBJ_USE_PREFIXLM, 0, 0.0f, 1); }

/* The counter itself: one t5g_malloc (+ free) per counted step must give exactly 3 calls, and
 * the first one must be reported from this file's rig_step. */
TEST(counter_catches_malloc) {
  Rig t;
  CHECK_MSG(rig_init(&t, "tiny-gemma2", OBJ_USE_CAUSAL, 0, 0.0f) == 0, "%s", t5g_last_error());
  t.extra_malloc = 1;
  long n = steady_allocs(&t);
  char rep[2048];
  count_report(rep, sizeof rep);
  CHECK_MSG(n == 3, "counted %s, expected exactly 3", rep);
  CHECK_EQ_INT(atomic_load(&g_frees), 3);
  CHECK_MSG(strstr(rep, "t5g_malloc") || strstr(rep, "test_steady_alloc"), "the report does not name the caller: %s", rep);
  rig_free(&t);
}

/* ---------------------------------------------------------------------------------------- */
/* The objectives' batch production alone                                                     */

TEST(objective_batches) {
  const char *dir = shard_dir();
  CHECK_MSG(dir, "%s", t5g_last_error());
  Ul2Denoiser den[8];
  CHECK_EQ_INT(ul2_preset("t5gemma2", den, 8), 5);
  ObjSpecials sp = specials();
  const char *names[] = {"prefixlm packed", "prefixlm one document per row", "ul2 t5gemma2"};
  for (int prefetch = 0; prefetch < 2; prefetch++)
    for (int kind = 0; kind < 3; kind++) {
      ShardReaderOpts ro = shard_reader_default_opts();
      ro.seed = 9;
      ro.prefetch_docs = prefetch ? 16 : 0;
      ShardReader *r = shard_reader_open(dir, "train", &ro);
      CHECK_MSG(r, "%s", t5g_last_error());
      DocSeeker sk = obj_shard_seeker(r);
      Objective *o;
      if (kind < 2) {
        PrefixLMOptions po = obj_prefixlm_defaults(64, 64);
        po.pack = kind == 0;
        o = obj_prefixlm_new(&po, &sp, shard_reader_source(r), &sk, 4);
      } else {
        Ul2Options uo = obj_ul2_defaults(96, 64, den, 5);
        o = obj_ul2_new(&uo, &sp, shard_reader_source(r), &sk, 4);
      }
      CHECK_MSG(o, "%s", t5g_last_error());
      Batch b;
      obj_batch_alloc(o, &b, 4);
      for (int i = 0; i < 2; i++) CHECK_EQ_INT(obj_next_batch(o, &b), 1);
      ShardReaderState s0, s1;
      shard_reader_get_state(r, &s0);
      /* enough batches to pass an epoch of the 600 documents */
      const int nb = kind == 1 ? 200 : 400;
      int64_t tokens = 0;
      long allocs = 0;
      char rep[2048] = "";
      for (int i = 0; i < nb; i++) {
        count_begin();
        int rc = obj_next_batch(o, &b);
        long n = count_end();
        CHECK_MSG(rc == 1, "%s: batch %d: %d (%s)", names[kind], i, rc, t5g_last_error());
        if (n && !allocs) { count_report(rep, sizeof rep); snprintf(rep + strlen(rep), sizeof rep - strlen(rep), " (batch %d)", i); }
        allocs += n;
        for (int64_t k = 0; k < (int64_t)b.B * b.Td; k++) tokens += b.labels[k] != -100;
      }
      shard_reader_get_state(r, &s1);
      CHECK_MSG(s1.epoch > s0.epoch, "%s: %d batches did not reach the next epoch (epoch %llu -> %llu)", names[kind], nb,
                (unsigned long long)s0.epoch, (unsigned long long)s1.epoch);
      CHECK_MSG(tokens > (int64_t)nb * b.B * 8, "%s: only %lld target tokens in %d batches", names[kind], (long long)tokens, nb);
      CHECK_MSG(allocs == 0, "%s%s: %ld allocation calls over %d batches; first %s", names[kind],
                prefetch ? " (prefetch thread)" : "", allocs, nb, rep);
      batch_free(&b);
      obj_free(o);
      shard_reader_close(r);
    }
}

TEST_MAIN()
