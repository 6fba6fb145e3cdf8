/* bench.c: `t5gemma bench`: the performance figures of issue 8 (`make bench` runs train/bench.sh,
 * which calls the cases below, each in its own process so peak memory figures do not mix, the
 * PyTorch twin, then `t5gemma bench --case report` for the table).
 *
 * Cases (`t5gemma bench --case NAME`; each writes DIR/NAME.json, DIR = --out, default bench-out):
 *   sgemm      sgemm GFLOP/s at the shapes the benchmarked models use: the projections
 *              [B·T, d]·[d, N] (forward layout x·Wᵀ), the MLP, the LM-head chunk of the loss in
 *              its three forms (logits, dh, dE; model/ops_loss.c), and the attention blocks (one
 *              single-threaded sgemm per OpenMP thread, as model/ops_attention.c runs them).
 *              Each shape runs as one cblas_sgemm on OpenBLAS's threads and through t5g_sgemm
 *              (model/gemm.h, the engine's path); the best wall rate of both is reported, and
 *              the rate per CPU-second (see sgemm_rate). Threads = `t5gemma --threads`.
 *   bandwidth  memory-bound work against the machine's memory bandwidth, all on the same threads:
 *              STREAM copy and triad on three arrays of --stream-mib MiB (default 256, far beyond
 *              the caches); AdamW (optim/adamw.h) over the parameter buffer of --preset (default
 *              S-S, 312.5M parameters; 28 bytes moved per parameter: reads w, g, m, v, writes w,
 *              m, v); RMSNorm forward+backward on [--rows, hidden] and GeGLU forward+backward on
 *              [--rows, intermediate] activations (rows default 2048), the engine's own ops run as
 *              a training step runs them (every layer's forward, then the backwards in reverse,
 *              with as many layers as make the arrays about as large as STREAM's, so the data
 *              streams from memory). Each: bytes (STREAM's counting), best time, GB/s, fraction of
 *              the triad rate measured in the same run, CPU time / wall time (cores kept busy).
 *   s-s        training steps of the T5Gemma S-S preset, full 256000 vocabulary, batch 2 x
 *              (512 encoder + 512 decoder tokens);
 *   b-b        the B-B preset's body with a 32000 vocabulary, batch 2 x (512 + 512);
 *   gemma2-s   Gemma 2 decoder-only of S size (configs/models/gemma2-s.json), causal, 1 x 1024.
 *              A training step = forward + loss + backward (model_loss, graph_backward) + global
 *              gradient clipping to 1.0 + AdamW (optim/adamw.h defaults) + zeroing the gradients,
 *              on a random unpadded batch and random normal(0, 0.02) weights. Reported:
 *              step time (mean of the timed steps, and the minimum), tokens/s (encoder + decoder
 *              tokens, as tests/ref/t5gemma_ref.py bench counts them), MFU = 3 ·
 *              config_flops_per_example · B / step time / ceiling, where the ceiling is the best
 *              sgemm rate over this model's own matmul shapes measured in the same process right
 *              after the steps (after the peak RSS is taken); the same by CPU time (FLOPs per CPU-second of the steps over
 *              sgemm's FLOPs per CPU-second: on a machine whose cores other jobs share, the wall
 *              figures depend on the others' load, this ratio much less); the engine profiler's
 *              seconds per OpKind (Graph.profile, model/tensor.h; "other" = step time not inside
 *              any op); peak RSS (getrusage) and the arena peak; and memory_train()'s prediction
 *              (model/memory.h) for comparison. The model's config is written to
 *              DIR/NAME.config.json so the PyTorch twin runs the same model.
 *   prepare    `t5gemma data prepare` on text files (--text FILES..., --tokenizer PATH): MB of
 *              text per second and tokens per second, not counting the tokenizer's load time
 *              (measured apart and reported); the dataset stays in DIR/prepare-data.
 *   reader     the shard reader + PrefixLM objective over DIR/prepare-data: batches of 8 x
 *              (512 + 512) for ~3 s, tokens/s decompressed and batched.
 *   generate   cached greedy generation (eval/generate.h) with the S-S preset (random weights,
 *              no stop token, 16-token prompts, 32 new tokens), batch 1 and batch 8:
 *              generated tokens/s.
 *   report     read the DIR/NAME.json files (ours and the PyTorch twin's DIR/torch-NAME.json),
 *              print the tables and write DIR/bench.json.
 * Benchmarks are not tests: nothing here asserts a time.
 */
#define _GNU_SOURCE
#include "data/objectives.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "eval/generate.h"
#include "model/config.h"
#include "model/gemm.h"
#include "model/memory.h"
#include "model/model.h"
#include "model/runtime.h"
#include "model/util.h"
#include "optim/adamw.h"
#include "train/commands.h"
#include <cblas.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct BenchOpts {
  const char *out;          /* output directory */
  int steps, warmup;
  int recompute;
  const char *tokenizer;
  char **text;              /* prepare: input files */
  int n_text;
  uint64_t seed;
  int batch, enc_len, dec_len, vocab;   /* overrides of a training case's sizes (0: the case's) */
  int no_ceiling;           /* skip the sgemm ceiling (profiling runs under valgrind) */
  const char *preset;       /* bandwidth: the model whose parameter buffer and widths are used */
  int rows;                 /* bandwidth: activation rows of the element-wise ops */
  int stream_mib;           /* bandwidth: size of each STREAM array */
} BenchOpts;

/* ---- JSON helpers ------------------------------------------------------------------------- */

static int write_json(const BenchOpts *o, const char *name, cJSON *root) {
  if (t5g_mkdir_p(o->out) != 0) return -1;
  char *path = t5g_path_join(o->out, name);
  char *text = cJSON_Print(root);
  T5gOutFile f;
  int rc = t5g_open_out(&f, path);
  if (rc == 0) {
    fputs(text, f.f);
    fputc('\n', f.f);
    rc = t5g_commit_file(&f);
  }
  if (rc == 0) fprintf(stderr, "bench: wrote %s\n", path);
  free(text);
  free(path);
  return rc;
}

static cJSON *read_json(const char *dir, const char *name) {
  char *path = t5g_path_join(dir, name);
  char *text = t5g_file_exists(path) ? t5g_read_file(path, NULL) : NULL;
  cJSON *j = text ? cJSON_Parse(text) : NULL;
  if (text && !j) fprintf(stderr, "bench: %s is not valid JSON; ignored\n", path);
  free(text);
  free(path);
  return j;
}

static double jnum(const cJSON *o, const char *key) {
  const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
  return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static void add_machine(cJSON *root) {
  cJSON_AddStringToObject(root, "cpu", t5g_cpu_name());
  cJSON_AddStringToObject(root, "openblas_core", t5g_blas_core());
  cJSON_AddNumberToObject(root, "threads", t5g_threads());
  double la[3] = {0, 0, 0};
  if (getloadavg(la, 3) == 3) cJSON_AddNumberToObject(root, "loadavg_1min", la[0]);
}

/* CPU seconds (user + system, all threads) this process has used so far. */
static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + 1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* ---- sgemm rates -------------------------------------------------------------------------- */

static int nt_all(void) { return t5g_threads(); }

typedef struct Shape {
  const char *what;
  int m, n, k;
  int ta, tb;               /* transposes, row-major as in the ops */
  int per_thread;           /* 1: one single-threaded sgemm per OpenMP thread (attention) */
} Shape;

/* Best-of-reps GFLOP/s of C[m,n] = op(A)·op(B) by wall time, and (*cpu_rate) by CPU time: flops
 * per CPU-second of all threads (summed over the timed reps of the engine's path, since the CPU
 * time of threads running elsewhere is only accounted at scheduler ticks), times the thread
 * count. On a machine shared with other jobs the CPU rate moves much less than the wall rate.
 * Inputs are filled with small values; one untimed call first (OpenBLAS buffers, page faults);
 * short shapes repeat for ~0.3 s. */
static double sgemm_rate(const Shape *s, double *cpu_rate) {
  const int nt = s->per_thread ? t5g_threads() : 1;
  size_t na = (size_t)s->m * s->k, nb = (size_t)s->k * s->n, nc = (size_t)s->m * s->n;
  float *a = t5g_alloc_aligned(na * 4 * nt), *b = t5g_alloc_aligned(nb * 4 * nt), *c = t5g_alloc_aligned(nc * 4 * nt);
  for (size_t i = 0; i < na * nt; i++) a[i] = (float)((i * 7919) % 101) / 101.0f - 0.5f;
  for (size_t i = 0; i < nb * nt; i++) b[i] = (float)((i * 104729) % 103) / 103.0f - 0.5f;
  memset(c, 0, nc * 4 * nt);
  const int lda = s->ta ? s->m : s->k, ldb = s->tb ? s->k : s->n;
  const double flops = 2.0 * s->m * s->n * s->k * nt;
  double best = 1e30, sum_cpu = 0, sum_flops = 0;
  /* variant 0: one cblas_sgemm on OpenBLAS's threads; 1: t5g_sgemm (model/gemm.h, the engine's
   * path: pieces on the OpenMP threads). The best of both is the ceiling. */
  for (int variant = 0; variant < (s->per_thread ? 1 : 2); variant++) {
    for (int rep = 0, reps = 3; rep < reps + 1; rep++) {
      double t0 = t5g_now(), c0 = cpu_seconds();
      if (s->per_thread) {
        t5g_blas_single();
#pragma omp parallel num_threads(nt)
        {
          int t = omp_get_thread_num();
          for (int r = 0; r < 8; r++)
            cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans, s->tb ? CblasTrans : CblasNoTrans, s->m, s->n,
                        s->k, 1.0f, a + na * t, lda, b + nb * t, ldb, 0.0f, c + nc * t, s->n);
        }
        t5g_blas_restore();
      } else if (variant == 0) {
        cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans, s->tb ? CblasTrans : CblasNoTrans, s->m, s->n, s->k,
                    1.0f, a, lda, b, ldb, 0.0f, c, s->n);
      } else {
        t5g_sgemm(s->ta, s->tb, s->m, s->n, s->k, 1.0f, a, lda, b, ldb, 0.0f, c, s->n);
      }
      double dt = (t5g_now() - t0) / (s->per_thread ? 8 : 1), dc = (cpu_seconds() - c0) / (s->per_thread ? 8 : 1);
      if (rep > 0 && dt < best) best = dt;
      if (rep > 0 && variant == (s->per_thread ? 0 : 1)) { sum_cpu += dc; sum_flops += flops; }
      if (rep == 0 && dt < 0.05) reps = (int)(0.3 / (dt > 1e-4 ? dt : 1e-4)) + 3;
    }
  }
  free(a); free(b); free(c);
  /* per CPU-second, scaled to the thread count: comparable with the wall rate on an idle machine */
  if (cpu_rate) *cpu_rate = sum_cpu > 0 ? sum_flops / sum_cpu / 1e9 * nt_all() : NAN;
  return flops / best / 1e9;
}

/* Rows per loss chunk as model/ops_loss.c picks them (about 2^26 / V, in [16, 256]). */
static int loss_chunk(int V) {
  int ch = (int)(((int64_t)1 << 26) / V);
  return ch > 256 ? 256 : ch < 16 ? 16 : ch;
}

/* The matmul shapes of a training step of config c with N = B·T token rows (linear forward
 * layout x·Wᵀ; the LM head chunk in its forward and both backward forms). Returns the count. */
static int model_shapes(const ModelConfig *c, int N, const char *tag, Shape *out, char names[][96]) {
  const StackConfig *s = &c->dec;
  int d = s->hidden_size, F = s->intermediate_size, qd = s->num_attention_heads * s->head_dim;
  int V = s->vocab_size, ch = loss_chunk(V), n = 0;
#define SH(M, Nn, K, TA, TB, ...) do { snprintf(names[n], 96, __VA_ARGS__); out[n] = (Shape){names[n], M, Nn, K, TA, TB, 0}; n++; } while (0)
  SH(N, qd, d, 0, 1, "%s q/o proj [%d,%d]x[%d,%d]", tag, N, d, d, qd);
  SH(N, F, d, 0, 1, "%s gate/up [%d,%d]x[%d,%d]", tag, N, d, d, F);
  SH(N, d, F, 0, 1, "%s down [%d,%d]x[%d,%d]", tag, N, F, F, d);
  SH(ch, V, d, 0, 1, "%s LM head logits [%d,%d]x[%d,%d]", tag, ch, d, d, V);
  SH(ch, d, V, 0, 0, "%s LM head dh [%d,%d]x[%d,%d]", tag, ch, V, V, d);
  SH(V, d, ch, 1, 0, "%s LM head dE [%d,%d]x[%d,%d]", tag, V, ch, ch, d);
#undef SH
  return n;
}

static int bench_sgemm(const BenchOpts *o) {
  static const char *presets[] = {"t5gemma-s-s", "t5gemma-b-b"};
  Shape sh[32];
  char names[32][96];
  int n = 0;
  for (int p = 0; p < 2; p++) {
    ModelConfig c;
    if (config_resolve(presets[p], &c) != 0) return -1;
    if (p == 1) c.enc.vocab_size = c.dec.vocab_size = 32000;
    n += model_shapes(&c, 1024, p == 0 ? "S" : "B", sh + n, names + n);
  }
  /* attention blocks of S/B (head_dim 64, G = 1: 64 query rows against 1024 keys), per thread */
  sh[n++] = (Shape){"attention S = Q Kᵀ [64,64]x[64,1024] per thread", 64, 1024, 64, 0, 1, 1};
  sh[n++] = (Shape){"attention O = P V [64,1024]x[1024,64] per thread", 64, 64, 1024, 0, 0, 1};
  sh[n++] = (Shape){"square [1024,1024]x[1024,1024]", 1024, 1024, 1024, 0, 1, 0};
  cJSON *root = cJSON_CreateObject();
  add_machine(root);
  cJSON *arr = cJSON_AddArrayToObject(root, "shapes");
  double best = 0;
  for (int i = 0; i < n; i++) {
    double rc, r = sgemm_rate(&sh[i], &rc);
    if (r > best) best = r;
    printf("  %-58s %8.1f GFLOP/s (%.1f per CPU time)\n", sh[i].what, r, rc);
    fflush(stdout);
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "shape", sh[i].what);
    cJSON_AddNumberToObject(e, "gflops", r);
    cJSON_AddNumberToObject(e, "gflops_cpu", rc);
    cJSON_AddItemToArray(arr, e);
  }
  cJSON_AddNumberToObject(root, "best_gflops", best);
  int rc = write_json(o, "sgemm.json", root);
  cJSON_Delete(root);
  return rc;
}

/* ---- training steps ----------------------------------------------------------------------- */

typedef struct TrainCase {
  const char *name, *preset;
  int vocab;                /* 0: the preset's */
  int B, Te, Td;
} TrainCase;

static const TrainCase train_cases[] = {
  {"s-s", "t5gemma-s-s", 0, 2, 512, 512},
  {"b-b", "t5gemma-b-b", 32000, 2, 512, 512},
  {"gemma2-s", "gemma2-s", 0, 1, 0, 1024},
};
#define N_TRAIN_CASES (int)(sizeof train_cases / sizeof train_cases[0])

/* Random unpadded batch: ids uniform in [3, V) (no specials), positions 0..T-1, labels random. */
static void random_batch(Batch *b, const ModelConfig *c, int B, int Te, int Td, uint64_t seed) {
  batch_alloc(b, B, c->kind == MODEL_T5GEMMA ? Te : 0, Td, 0);
  Rng r;
  rng_seed(&r, seed);
  int Ve = c->enc.vocab_size > 3 ? c->enc.vocab_size : c->dec.vocab_size, Vd = c->dec.vocab_size;
  for (int64_t i = 0; i < (int64_t)B * b->Te; i++) {
    b->enc_ids[i] = 3 + (int32_t)(rng_below(&r, (uint64_t)(Ve - 3)));
    b->enc_mask[i] = 1;
    b->enc_pos[i] = (int32_t)(i % b->Te);
  }
  for (int64_t i = 0; i < (int64_t)B * Td; i++) {
    b->dec_ids[i] = 3 + (int32_t)(rng_below(&r, (uint64_t)(Vd - 3)));
    b->dec_mask[i] = 1;
    b->dec_pos[i] = (int32_t)(i % Td);
    b->labels[i] = 3 + (int32_t)(rng_below(&r, (uint64_t)(Vd - 3)));
  }
  batch_count_targets(b);
}

/* Random weights like model_init_random (normal(0, std) matrices, zero norms) but filled in
 * parallel blocks with their own generators (model_init_random is serial: ~10 s for S-S). */
static void init_random_parallel(Model *m, uint64_t seed) {
  for (int i = 0; i < m->ps.n; i++) {
    ParamEntry *e = &m->ps.e[i];
    const float std = model_init_std(m, e);
    float *x = e->t.data;
    const int64_t n = e->t.n, blk = 1 << 16, nb = (n + blk - 1) / blk;
    if (std == 0) { memset(x, 0, (size_t)n * sizeof(float)); continue; }
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
      Rng r;
      rng_seed(&r, seed ^ splitmix64(((uint64_t)i << 40) + (uint64_t)b));
      const int64_t e1 = (b + 1) * blk < n ? (b + 1) * blk : n;
      for (int64_t j = b * blk; j < e1; j++) x[j] = (float)(std * rng_normal(&r));
    }
  }
}

static int bench_train(const BenchOpts *o, const TrainCase *tc) {
  ModelConfig c;
  if (config_resolve(tc->preset, &c) != 0) return -1;
  const int vocab = o->vocab ? o->vocab : tc->vocab;
  if (vocab) c.enc.vocab_size = c.dec.vocab_size = vocab;
  snprintf(c.name, sizeof c.name, "%s", tc->name);
  const int B = o->batch ? o->batch : tc->B, Td = o->dec_len ? o->dec_len : tc->Td;
  const int Te = c.kind == MODEL_T5GEMMA ? (o->enc_len ? o->enc_len : tc->Te) : 0;
  if (t5g_mkdir_p(o->out) != 0) return -1;
  char fn[128];
  snprintf(fn, sizeof fn, "%s.config.json", tc->name);
  char *cfg_path = t5g_path_join(o->out, fn);
  if (config_save(&c, cfg_path) != 0) return -1;

  Model m;
  if (model_init(&m, &c) != 0) return -1;
  init_random_parallel(&m, o->seed);
  m.recompute = o->recompute;
  AdamWConfig ac;
  adamw_config_default(&ac);
  AdamW opt;
  if (adamw_init(&opt, &m.ps, &ac, 0, m.ps.n_total) != 0) return -1;
  Batch b;
  random_batch(&b, &c, B, Te, Td, o->seed + 1);
  Arena arena;
  arena_init(&arena, 0);
  Graph g;
  graph_init(&g, &arena);
  g.profile = 1;

  const double flops = 3.0 * config_flops_per_example(&c, Te, Td) * B;
  const int64_t tokens = (int64_t)B * (Te + Td);
  double sum_t = 0, min_t = 1e30, prof[OPK_COUNT] = {0}, prof_cpu[OPK_COUNT] = {0}, sum_fb = 0, sum_opt = 0, sum_cpu = 0;
  float loss_v = 0;
  printf("%s: %.1f M parameters, %lld tokens per step, %.1f GFLOP per step\n", tc->name, m.ps.n_total / 1e6,
         (long long)tokens, flops / 1e9);
  fflush(stdout);
  for (int it = 0; it < o->warmup + o->steps; it++) {
    memset(g.prof_sec, 0, sizeof g.prof_sec);
    memset(g.prof_cpu, 0, sizeof g.prof_cpu);
    double t0 = t5g_now(), c0 = cpu_seconds();
    graph_reset(&g);
    LossStats st;
    Tensor *loss = model_loss(&m, &g, &b, (float)b.n_targets, &st, NULL, NULL);
    loss_v = loss->data[0];
    graph_backward(&g, loss);
    double t1 = t5g_now(), c1 = t5g_cpu_now();
    int nonfinite = 0;
    adamw_clip_grad_norm(&m.ps, ac.max_grad_norm, &nonfinite);
    if (!nonfinite) adamw_step(&opt, &m.ps, 1e-4);
    params_zero_grad(&m.ps);
    double t2 = t5g_now(), dcpu = cpu_seconds() - c0;
    g.prof_sec[OPK_OPTIMIZER] += t2 - t1;
    g.prof_cpu[OPK_OPTIMIZER] += t5g_cpu_now() - c1;
    double dt = t2 - t0;
    printf("  %s step %d%s: %.3f s (forward+backward %.3f s, optimizer %.3f s), loss %.4f, RSS %.0f MiB (peak %.0f)\n", tc->name,
           it + 1, it < o->warmup ? " (warm-up)" : "", dt, t1 - t0, t2 - t1, loss_v, t5g_current_rss() / 1048576.0,
           t5g_peak_rss() / 1048576.0);
    fflush(stdout);
    if (it < o->warmup) continue;
    sum_t += dt; sum_fb += t1 - t0; sum_opt += t2 - t1; sum_cpu += dcpu;
    if (dt < min_t) min_t = dt;
    for (int k = 0; k < OPK_COUNT; k++) { prof[k] += g.prof_sec[k]; prof_cpu[k] += g.prof_cpu[k]; }
  }
  graph_reset(&g);
  const int ns = o->steps;
  const int64_t peak_rss = t5g_peak_rss();   /* before the ceiling's buffers (and OpenBLAS's) */
  /* the ceiling: best sgemm rate over this model's shapes, right after the steps, in this process */
  Shape sh[8];
  char names[8][96];
  int nsh = model_shapes(&c, B * (Te > Td ? Te : Td), tc->name, sh, names);
  double ceiling = NAN, ceiling_cpu = NAN;
  for (int i = 0; i < nsh && !o->no_ceiling; i++) {
    double rc, r = sgemm_rate(&sh[i], &rc);
    if (!(r <= ceiling)) ceiling = r;
    if (!(rc <= ceiling_cpu)) ceiling_cpu = rc;
  }
  const double step_s = sum_t / ns;
  MemEstimate pred = memory_train(&c, B, Te, Td, o->recompute, 1, 0);

  cJSON *root = cJSON_CreateObject();
  add_machine(root);
  cJSON_AddStringToObject(root, "impl", "t5gemma");
  cJSON_AddStringToObject(root, "case", tc->name);
  cJSON_AddStringToObject(root, "preset", tc->preset);
  cJSON_AddStringToObject(root, "config", cfg_path);
  cJSON_AddStringToObject(root, "kind", c.kind == MODEL_T5GEMMA ? "t5gemma" : "gemma2");
  cJSON_AddNumberToObject(root, "vocab", c.dec.vocab_size);
  cJSON_AddNumberToObject(root, "params", (double)config_param_counts(&c).total);
  cJSON_AddNumberToObject(root, "batch", B);
  cJSON_AddNumberToObject(root, "enc_len", Te);
  cJSON_AddNumberToObject(root, "dec_len", Td);
  cJSON_AddNumberToObject(root, "recompute", o->recompute);
  cJSON_AddNumberToObject(root, "steps", ns);
  cJSON_AddNumberToObject(root, "warmup", o->warmup);
  cJSON_AddNumberToObject(root, "step_s", step_s);
  cJSON_AddNumberToObject(root, "step_s_min", min_t);
  cJSON_AddNumberToObject(root, "fwd_bwd_s", sum_fb / ns);
  cJSON_AddNumberToObject(root, "optimizer_s", sum_opt / ns);
  cJSON_AddNumberToObject(root, "tokens_per_s", tokens / step_s);
  cJSON_AddNumberToObject(root, "flops_per_step", flops);
  cJSON_AddNumberToObject(root, "gflops_per_s", flops / step_s / 1e9);
  cJSON_AddNumberToObject(root, "ceiling_gflops", ceiling);
  cJSON_AddNumberToObject(root, "mfu", flops / step_s / 1e9 / ceiling);
  /* the same by CPU time: flops per CPU-second of the step against sgemm's flops per CPU-second
   * (both scaled to the thread count); robust when other jobs share the cores */
  const double cpu_s = sum_cpu / ns;
  cJSON_AddNumberToObject(root, "cpu_s", cpu_s);
  cJSON_AddNumberToObject(root, "cpu_share", cpu_s / step_s / t5g_threads());
  cJSON_AddNumberToObject(root, "ceiling_gflops_cpu", ceiling_cpu);
  cJSON_AddNumberToObject(root, "mfu_cpu", flops / cpu_s * t5g_threads() / 1e9 / ceiling_cpu);
  cJSON_AddNumberToObject(root, "loss", loss_v);
  cJSON_AddNumberToObject(root, "peak_rss_mb", peak_rss / 1048576.0);
  cJSON_AddNumberToObject(root, "arena_peak_mb", arena.peak / 1048576.0);
  cJSON_AddNumberToObject(root, "predicted_mb", pred.total / 1048576.0);
  cJSON_AddNumberToObject(root, "predicted_activations_mb", pred.activations / 1048576.0);
  cJSON *pj = cJSON_AddObjectToObject(root, "profile_s");
  double in_ops = 0;
  for (int k = 0; k < OPK_COUNT; k++) { cJSON_AddNumberToObject(pj, op_kind_names[k], prof[k] / ns); in_ops += prof[k] / ns; }
  cJSON_AddNumberToObject(pj, "other", step_s - in_ops);
  /* cores busy per kind of work (CPU seconds of all threads / wall seconds): where a core idles */
  cJSON *cj = cJSON_AddObjectToObject(root, "profile_cores");
  double cpu_ops = 0;
  for (int k = 0; k < OPK_COUNT; k++) {
    if (prof[k] > 0) cJSON_AddNumberToObject(cj, op_kind_names[k], prof_cpu[k] / prof[k]);
    cpu_ops += prof_cpu[k] / ns;
  }
  if (step_s - in_ops > 1e-6) cJSON_AddNumberToObject(cj, "other", (cpu_s - cpu_ops) / (step_s - in_ops));
  printf("%s: %.3f s/step, %.0f tokens/s, %.1f GFLOP/s = MFU %.1f%% of %.1f (by CPU time %.1f%% of %.1f; %.0f%% of %d cores); "
         "peak RSS %.0f MiB (arena %.0f MiB, predicted %.0f MiB)\n",
         tc->name, step_s, tokens / step_s, flops / step_s / 1e9, 100 * flops / step_s / 1e9 / ceiling, ceiling,
         100 * flops / cpu_s * t5g_threads() / 1e9 / ceiling_cpu, ceiling_cpu, 100 * cpu_s / step_s / t5g_threads(), t5g_threads(),
         peak_rss / 1048576.0, arena.peak / 1048576.0, pred.total / 1048576.0);
  printf("  split:");
  for (int k = 0; k < OPK_COUNT; k++) if (prof[k] > 0) printf(" %s %.3f", op_kind_names[k], prof[k] / ns);
  printf(" other %.3f s\n", step_s - in_ops);
  printf("  cores busy:");
  for (int k = 0; k < OPK_COUNT; k++) if (prof[k] > 0) printf(" %s %.2f", op_kind_names[k], prof_cpu[k] / prof[k]);
  if (step_s - in_ops > 1e-6) printf(" other %.2f", (cpu_s - cpu_ops) / (step_s - in_ops));
  printf("\n");
  snprintf(fn, sizeof fn, "%s.json", tc->name);
  int rc = write_json(o, fn, root);
  cJSON_Delete(root);
  free(cfg_path);
  batch_free(&b);
  graph_free(&g);
  arena_free(&arena);
  adamw_free(&opt);
  model_free(&m);
  return rc;
}

/* ---- data: prepare and reader ------------------------------------------------------------ */

static int bench_prepare(const BenchOpts *o) {
  if (!o->tokenizer || o->n_text < 1) return t5g_error("bench prepare: needs --tokenizer PATH and --text FILES...");
  int64_t bytes = 0;
  for (int i = 0; i < o->n_text; i++) {
    struct stat st;
    if (stat(o->text[i], &st) != 0) return t5g_error("bench prepare: cannot read %s", o->text[i]);
    bytes += st.st_size;
  }
  char *dir = t5g_path_join(o->out, "prepare-data");
  int na = 0;
  char **av = t5g_calloc((size_t)o->n_text + 16, sizeof(char *));
  av[na++] = "data"; av[na++] = "prepare"; av[na++] = "--tokenizer"; av[na++] = (char *)o->tokenizer;
  av[na++] = "--out"; av[na++] = dir; av[na++] = "--force";
  for (int i = 0; i < o->n_text; i++) av[na++] = o->text[i];
  if (!cmd_data) return t5g_error("bench prepare: `t5gemma data` is not built into this binary");
  /* the tokenizer's load time, a fixed cost per run, reported apart: the faster of two loads (the
   * first also pays one-time costs, page faults of new heap and library start-up, that the load
   * inside prepare, which comes after, does not; with the first load subtracted the text rate came
   * out 10x too high) */
  double load_s = 0;
  for (int rep = 0; rep < 2; rep++) {
    double tl = t5g_now();
    Tokenizer *tok = tokenizer_load(o->tokenizer);
    if (!tok) { free(av); free(dir); return -1; }
    tokenizer_free(tok);
    double l = t5g_now() - tl;
    if (rep == 0 || l < load_s) load_s = l;
  }
  double t0 = t5g_now();
  int rc = cmd_data(na, av);
  double dt = t5g_now() - t0;
  free(av);
  if (rc != 0) { free(dir); return t5g_error("bench prepare: `t5gemma data prepare` failed (exit %d)", rc); }
  DatasetIndex *ix = dataset_index_load(dir);
  if (!ix) { free(dir); return -1; }
  cJSON *root = cJSON_CreateObject();
  add_machine(root);
  cJSON_AddStringToObject(root, "tokenizer", o->tokenizer);
  cJSON_AddNumberToObject(root, "files", o->n_text);
  cJSON_AddNumberToObject(root, "text_mb", bytes / 1e6);
  cJSON_AddNumberToObject(root, "documents", (double)ix->documents);
  cJSON_AddNumberToObject(root, "tokens", (double)ix->tokens);
  cJSON_AddNumberToObject(root, "compressed_mb", ix->compressed_bytes / 1e6);
  cJSON_AddNumberToObject(root, "seconds", dt);
  cJSON_AddNumberToObject(root, "tokenizer_load_s", load_s);
  const double work = dt - load_s > 1e-3 ? dt - load_s : dt;
  cJSON_AddNumberToObject(root, "mb_per_s", bytes / 1e6 / work);
  cJSON_AddNumberToObject(root, "tokens_per_s", ix->tokens / work);
  cJSON_AddNumberToObject(root, "mb_per_s_with_load", bytes / 1e6 / dt);
  printf("prepare: %.1f MB of text -> %lld tokens (%lld documents) in %.2f s, of which %.2f s loading the tokenizer: "
         "%.2f MB/s, %.0f tokens/s (%.2f MB/s with the load)\n", bytes / 1e6, (long long)ix->tokens, (long long)ix->documents,
         dt, load_s, bytes / 1e6 / work, ix->tokens / work, bytes / 1e6 / dt);
  dataset_index_free(ix);
  free(dir);
  rc = write_json(o, "prepare.json", root);
  cJSON_Delete(root);
  return rc;
}

/* Batches of 8 x (512 + 512) from the PrefixLM objective over the prepared dataset (shuffled
 * reading, no prefetch thread: the cost of decompressing and batching itself) for ~3 s. */
static int bench_reader(const BenchOpts *o) {
  if (!o->tokenizer) return t5g_error("bench reader: needs --tokenizer PATH (the one the dataset was prepared with)");
  char *dir = t5g_path_join(o->out, "prepare-data");
  Tokenizer *tok = tokenizer_load(o->tokenizer);
  if (!tok) { free(dir); return -1; }
  ObjSpecials sp;
  int32_t sent[OBJ_MAX_SENTINELS];
  if (obj_specials_from_tokenizer(tok, NULL, sent, 0, &sp) < 0) { tokenizer_free(tok); free(dir); return -1; }
  ShardReaderOpts ro = shard_reader_default_opts();
  ro.seed = o->seed;
  ShardReader *r = shard_reader_open(dir, "train", &ro);
  if (!r) { tokenizer_free(tok); free(dir); return -1; }
  const int B = 8, Te = 512, Td = 512;
  PrefixLMOptions po = obj_prefixlm_defaults(Te, Td);
  DocSeeker sk = obj_shard_seeker(r);
  Objective *ob = obj_prefixlm_new(&po, &sp, shard_reader_source(r), &sk, o->seed);
  if (!ob) { shard_reader_close(r); tokenizer_free(tok); free(dir); return -1; }
  Batch b;
  obj_batch_alloc(ob, &b, B);
  int64_t tokens = 0, batches = 0;
  double t0 = t5g_now(), dt = 0;
  int rc = 0;
  while (dt < 3.0) {
    int k = obj_next_batch(ob, &b);
    if (k < 0) { rc = -1; break; }
    if (k == 0) { rc = t5g_error("bench reader: the dataset ended"); break; }
    tokens += batch_input_tokens(&b);
    batches++;
    dt = t5g_now() - t0;
  }
  if (rc == 0) {
    cJSON *root = cJSON_CreateObject();
    add_machine(root);
    cJSON_AddStringToObject(root, "objective", "prefixlm");
    cJSON_AddNumberToObject(root, "batch", B);
    cJSON_AddNumberToObject(root, "enc_len", Te);
    cJSON_AddNumberToObject(root, "dec_len", Td);
    cJSON_AddNumberToObject(root, "batches", (double)batches);
    cJSON_AddNumberToObject(root, "tokens", (double)tokens);
    cJSON_AddNumberToObject(root, "seconds", dt);
    cJSON_AddNumberToObject(root, "tokens_per_s", tokens / dt);
    printf("reader: %lld batches of %d x (%d + %d), %lld real tokens in %.2f s: %.0f tokens/s\n", (long long)batches, B, Te,
           Td, (long long)tokens, dt, tokens / dt);
    rc = write_json(o, "reader.json", root);
    cJSON_Delete(root);
  }
  batch_free(&b);
  obj_free(ob);
  shard_reader_close(r);
  tokenizer_free(tok);
  free(dir);
  return rc;
}

/* ---- generation ---------------------------------------------------------------------------- */

/* Greedy cached generation, S-S preset with random weights, no stop token: 16-token prompts,
 * 32 new tokens per row; generated tokens per second for batch 1 and batch 8. */
static int bench_generate(const BenchOpts *o) {
  ModelConfig c;
  if (config_resolve("t5gemma-s-s", &c) != 0) return -1;
  Model m;
  if (model_init(&m, &c) != 0) return -1;
  init_random_parallel(&m, o->seed);
  GenConfig gc;
  gen_config_default(&gc, &m);
  gc.n_stop = 0;
  gc.max_new_tokens = 32;
  const int P = 16, batches[2] = {1, 8};
  int32_t *ids = t5g_malloc(sizeof(int32_t) * 8 * P);
  const int32_t *prompts[8];
  int lens[8];
  Rng r;
  rng_seed(&r, o->seed + 7);
  for (int i = 0; i < 8 * P; i++) ids[i] = 3 + (int32_t)rng_below(&r, (uint64_t)c.enc.vocab_size - 3);
  for (int b = 0; b < 8; b++) { prompts[b] = ids + b * P; lens[b] = P; }
  GenOutput out[8];
  cJSON *root = cJSON_CreateObject();
  add_machine(root);
  cJSON_AddStringToObject(root, "model", "t5gemma-s-s");
  cJSON_AddNumberToObject(root, "prompt_len", P);
  cJSON_AddNumberToObject(root, "new_tokens", gc.max_new_tokens);
  int rc = 0;
  {   /* warm-up: page in the weights */
    GenConfig w = gc;
    w.max_new_tokens = 2;
    if (generate(&m, &w, prompts, lens, 1, out) != 0) rc = -1;
    else gen_output_free(&out[0]);
  }
  for (int k = 0; k < 2 && rc == 0; k++) {
    const int B = batches[k];
    double t0 = t5g_now();
    if (generate(&m, &gc, prompts, lens, B, out) != 0) { rc = -1; break; }
    double dt = t5g_now() - t0;
    int64_t n = 0;
    for (int b = 0; b < B; b++) { n += out[b].n; gen_output_free(&out[b]); }
    char key[32];
    snprintf(key, sizeof key, "batch%d_tokens_per_s", B);
    cJSON_AddNumberToObject(root, key, n / dt);
    snprintf(key, sizeof key, "batch%d_seconds", B);
    cJSON_AddNumberToObject(root, key, dt);
    printf("generate: batch %d, %lld tokens in %.2f s: %.1f tokens/s (encoder and prefill included)\n", B, (long long)n, dt, n / dt);
  }
  if (rc == 0) rc = write_json(o, "generate.json", root);
  cJSON_Delete(root);
  free(ids);
  model_free(&m);
  return rc;
}

/* ---- memory bandwidth: STREAM, AdamW, element-wise ops ------------------------------------ */

/* Bytes are counted STREAM's way: each array a pass must read or write is counted once per read
 * and once per write; the write-allocate traffic of a store to a line not read first is not
 * counted (copy and triad store to arrays they do not read, so the memory system moves one more
 * array than counted there; AdamW's and the ops' stores go to arrays they also read, except the
 * ops' outputs). Every figure runs on the same OpenMP threads (t5gemma --threads). */

/* STREAM kernels (McCalpin, "Memory Bandwidth and Machine Balance in Current High Performance
 * Computers", 1995): copy c = a, triad a = b + s c. Kept as loops (not memcpy) so both run the
 * code gcc generates for our own element-wise loops. */
__attribute__((optimize("no-tree-loop-distribute-patterns")))
static void stream_copy(float *restrict c, const float *restrict a, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) c[i] = a[i];
}
static void stream_triad(float *restrict a, const float *restrict b, const float *restrict c, float s, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) a[i] = b[i] + s * c[i];
}

/* Best wall time of fn(ctx) over repeated calls after one untimed call (page faults, caches):
 * at least 3 timed calls, more until they add up to 0.5 s (at most 1000); *cores = CPU time /
 * wall time of the timed calls (how many cores the work kept busy). */
typedef void (*BwFn)(void *ctx);
static double best_time(BwFn fn, void *ctx, double *cores) {
  fn(ctx);
  double best = 1e30, wall = 0, c0 = cpu_seconds();
  for (int r = 0; r < 3 || (wall < 0.5 && r < 1000); r++) {
    double t0 = t5g_now();
    fn(ctx);
    double dt = t5g_now() - t0;
    wall += dt;
    if (dt < best) best = dt;
  }
  *cores = wall > 0 ? (cpu_seconds() - c0) / wall : NAN;
  return best;
}

typedef struct StreamCtx { float *a, *b, *c; int64_t n; } StreamCtx;
static void run_copy(void *p) { StreamCtx *s = p; stream_copy(s->c, s->a, s->n); }
static void run_triad(void *p) { StreamCtx *s = p; stream_triad(s->a, s->b, s->c, 3.0f, s->n); }

typedef struct AdamCtx { AdamW *opt; ParamStore *ps; } AdamCtx;
static void run_adamw(void *p) { AdamCtx *a = p; adamw_step(a->opt, a->ps, 1e-4); }

/* K "layers" of one element-wise op on [N, width] activations: the forward of every layer, then
 * every layer's backward in reverse order, as a training step runs them; K is chosen so the
 * layers' arrays together are about as large as STREAM's three, so every pass streams from
 * memory (in training, an op's activations are long evicted between its forward and its
 * backward). The backward nodes are the engine's own (the op's tape node, run with the output's
 * gradient set to dy). */
typedef struct OpsCtx {
  int geglu;                 /* 0: op_rmsnorm(x, w); 1: op_geglu(gate, up) */
  int K;
  Tensor *in0, *in1;         /* [K]: x / gate, and w / up (with their gradient buffers) */
  float *dy;                 /* [K][N*width] */
  Graph g;
  Arena arena;
  double best_s, fwd_s, bwd_s;  /* the fastest call so far, and its forward/backward split */
} OpsCtx;

static void run_ops(void *p) {
  OpsCtx *o = p;
  graph_reset(&o->g);
  double t0 = t5g_now();
  Tensor *y[1024];
  for (int k = 0; k < o->K; k++)
    y[k] = o->geglu ? op_geglu(&o->g, &o->in0[k], &o->in1[k]) : op_rmsnorm(&o->g, &o->in0[k], &o->in1[k], 1e-6f);
  double t1 = t5g_now();
  for (int k = 0; k < o->K; k++) y[k]->grad = o->dy + (int64_t)k * y[k]->n;
  for (int i = o->g.n_nodes - 1; i >= 0; i--) o->g.nodes[i].backward(o->g.nodes[i].ctx);
  o->g.n_nodes = 0;
  double t2 = t5g_now();
  if (t2 - t0 < o->best_s) { o->best_s = t2 - t0; o->fwd_s = t1 - t0; o->bwd_s = t2 - t1; }
}

/* Parallel first touch of n floats with small values (pattern by index and salt). */
static void fill_small(float *x, int64_t n, uint32_t salt) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) x[i] = (float)((((uint64_t)i * 2654435761u) ^ salt) % 1999) * 1e-3f - 1.0f;
}

static void set_tensor(Tensor *t, float *data, float *grad, int ndim, const int64_t *shape, const char *name) {
  memset(t, 0, sizeof *t);
  tensor_set_shape(t, ndim, shape);
  t->data = data;
  t->grad = grad;
  t->requires_grad = 1;
  t->name = name;
}

/* One figure: JSON object in arr, and a printed line. */
static void bw_figure(cJSON *arr, const char *name, const char *shape, double bytes, double sec, double cores, double triad,
                      double fwd_s, double bwd_s) {
  const double gbs = bytes / sec / 1e9;
  cJSON *e = cJSON_CreateObject();
  cJSON_AddStringToObject(e, "name", name);
  cJSON_AddStringToObject(e, "shape", shape);
  cJSON_AddNumberToObject(e, "bytes", bytes);
  cJSON_AddNumberToObject(e, "seconds", sec);
  cJSON_AddNumberToObject(e, "gb_per_s", gbs);
  cJSON_AddNumberToObject(e, "of_triad", gbs / triad);
  cJSON_AddNumberToObject(e, "cores_used", cores);
  if (!isnan(fwd_s)) { cJSON_AddNumberToObject(e, "forward_s", fwd_s); cJSON_AddNumberToObject(e, "backward_s", bwd_s); }
  cJSON_AddItemToArray(arr, e);
  printf("  %-10s %-44s %9.1f MB in %8.2f ms: %6.1f GB/s = %5.1f%% of triad, %.2f cores busy\n", name, shape, bytes / 1e6, sec * 1e3,
         gbs, 100 * gbs / triad, cores);
  fflush(stdout);
}

/* The element-wise figure of one op (0 RMSNorm on [rows, hidden], 1 GeGLU on [rows, intermediate]). */
static int bench_ops_bw(const BenchOpts *o, const ModelConfig *c, int geglu, double stream_bytes, double triad, cJSON *arr) {
  const int64_t N = o->rows, W = geglu ? c->dec.intermediate_size : c->dec.hidden_size, n = N * W;
  /* per layer: the arrays the forward and backward touch */
  const double per_layer_floats = geglu ? 6.0 * n : 4.0 * n;
  int K = (int)ceil(3.0 * stream_bytes / (per_layer_floats * 4));
  K = K < 2 ? 2 : K > 1024 ? 1024 : K;
  OpsCtx ctx;
  memset(&ctx, 0, sizeof ctx);
  ctx.geglu = geglu;
  ctx.K = K;
  ctx.best_s = 1e30;
  ctx.in0 = t5g_calloc(K, sizeof(Tensor));
  ctx.in1 = t5g_calloc(K, sizeof(Tensor));
  const int64_t n1 = geglu ? n : W;      /* second input: up [N, F], or the RMSNorm weight [d] */
  float *buf0 = t5g_alloc_aligned((size_t)K * n * 2 * sizeof(float)), *buf1 = t5g_alloc_aligned((size_t)K * n1 * 2 * sizeof(float));
  ctx.dy = t5g_alloc_aligned((size_t)K * n * sizeof(float));
  fill_small(buf0, (int64_t)K * n, 1);
  memset(buf0 + (int64_t)K * n, 0, (size_t)K * n * sizeof(float));      /* gradients start at 0 */
  fill_small(buf1, (int64_t)K * n1, 2);
  memset(buf1 + (int64_t)K * n1, 0, (size_t)K * n1 * sizeof(float));
  fill_small(ctx.dy, (int64_t)K * n, 3);
  if (!geglu) for (int64_t i = 0; i < (int64_t)K * n1; i++) buf1[i] *= 0.1f;   /* RMSNorm gains near 1 */
  const int64_t s2[2] = {N, W}, s1[1] = {W};
  for (int k = 0; k < K; k++) {
    set_tensor(&ctx.in0[k], buf0 + (int64_t)k * n, buf0 + (int64_t)(K + k) * n, 2, s2, geglu ? "gate" : "x");
    set_tensor(&ctx.in1[k], buf1 + (int64_t)k * n1, buf1 + (int64_t)(K + k) * n1, geglu ? 2 : 1, geglu ? s2 : s1, geglu ? "up" : "w");
  }
  arena_init(&ctx.arena, 0);
  graph_init(&ctx.g, &ctx.arena);
  double cores, sec = best_time(run_ops, &ctx, &cores);
  sec = ctx.best_s;   /* the fastest call timed inside run_ops, so that forward + backward = seconds
                       * (best_time's outer clock also holds graph_reset and may pick another call) */
  /* bytes per layer, fp32: RMSNorm forward reads x, writes y and rstd (N), reads w (d); backward
   * reads dy, x, rstd, w and reads+writes dx, reads+writes dw. GeGLU forward reads gate, up,
   * writes y; backward reads dy, gate, up, reads+writes dgate and dup. */
  const double per_layer = geglu ? 4.0 * (3.0 * n + 7.0 * n) : 4.0 * ((2.0 * n + N + W) + (4.0 * n + N + 3.0 * W));
  char name[32], shape[96];
  snprintf(name, sizeof name, "%s", geglu ? "geglu" : "rmsnorm");
  snprintf(shape, sizeof shape, "fwd+bwd [%lld, %lld] x %d layers", (long long)N, (long long)W, K);
  bw_figure(arr, name, shape, per_layer * K, sec, cores, triad, ctx.fwd_s, ctx.bwd_s);
  graph_free(&ctx.g);
  arena_free(&ctx.arena);
  free(buf0); free(buf1); free(ctx.dy); free(ctx.in0); free(ctx.in1);
  return 0;
}

static int bench_bandwidth(const BenchOpts *o) {
  const char *preset = o->preset ? o->preset : "t5gemma-s-s";
  ModelConfig c;
  if (config_resolve(preset, &c) != 0) return -1;
  if (o->rows < 1 || o->stream_mib < 1) return t5g_error("bench bandwidth: --rows and --stream-mib must be >= 1");
  cJSON *root = cJSON_CreateObject();
  add_machine(root);
  cJSON_AddStringToObject(root, "preset", preset);
  cJSON_AddNumberToObject(root, "stream_mib", o->stream_mib);
  cJSON *arr = cJSON_AddArrayToObject(root, "figures");
  printf("bandwidth: %d threads, STREAM arrays of %d MiB, %s\n", t5g_threads(), o->stream_mib, preset);
  fflush(stdout);

  /* 1. STREAM copy and triad */
  StreamCtx s;
  s.n = (int64_t)o->stream_mib << 18;                 /* MiB of floats */
  const double stream_bytes = (double)s.n * 4;
  s.a = t5g_alloc_aligned((size_t)s.n * 4); s.b = t5g_alloc_aligned((size_t)s.n * 4); s.c = t5g_alloc_aligned((size_t)s.n * 4);
  fill_small(s.a, s.n, 4); fill_small(s.b, s.n, 5); fill_small(s.c, s.n, 6);
  double cc, tc, tcopy = best_time(run_copy, &s, &cc), ttriad = best_time(run_triad, &s, &tc);
  const double triad = 3 * stream_bytes / ttriad / 1e9;
  char shape[96];
  snprintf(shape, sizeof shape, "c = a, %d MiB arrays", o->stream_mib);
  bw_figure(arr, "copy", shape, 2 * stream_bytes, tcopy, cc, triad, NAN, NAN);
  snprintf(shape, sizeof shape, "a = b + s c, %d MiB arrays", o->stream_mib);
  bw_figure(arr, "triad", shape, 3 * stream_bytes, ttriad, tc, triad, NAN, NAN);
  cJSON_AddNumberToObject(root, "triad_gb_per_s", triad);
  free(s.a); free(s.b); free(s.c);

  /* 2. AdamW over the preset's parameter buffer (optim/adamw.h; 28 bytes per parameter: reads
   * w, g, m, v, writes w, m, v) */
  Model m;
  if (model_init(&m, &c) != 0) { cJSON_Delete(root); return -1; }
  fill_small(m.ps.data, m.ps.n_total, 7);
  fill_small(m.ps.grad, m.ps.n_total, 8);
  AdamWConfig ac;
  adamw_config_default(&ac);
  AdamW opt;
  if (adamw_init(&opt, &m.ps, &ac, 0, m.ps.n_total) != 0) { model_free(&m); cJSON_Delete(root); return -1; }
  int64_t np = 0;
  for (int i = 0; i < m.ps.n; i++) np += m.ps.e[i].t.n;
  AdamCtx ad = {&opt, &m.ps};
  double ca, ta = best_time(run_adamw, &ad, &ca);
  snprintf(shape, sizeof shape, "%.1fM parameters (%s)", np / 1e6, preset);
  bw_figure(arr, "adamw", shape, 28.0 * (double)np, ta, ca, triad, NAN, NAN);
  cJSON_AddNumberToObject(root, "params", (double)np);
  adamw_free(&opt);
  model_free(&m);

  /* 3. element-wise ops of the engine at a training shape of the preset */
  cJSON_AddNumberToObject(root, "rows", o->rows);
  if (bench_ops_bw(o, &c, 0, stream_bytes, triad, arr) != 0 || bench_ops_bw(o, &c, 1, stream_bytes, triad, arr) != 0) {
    cJSON_Delete(root);
    return -1;
  }
  int rc = write_json(o, "bandwidth.json", root);
  cJSON_Delete(root);
  return rc;
}

/* ---- report ------------------------------------------------------------------------------- */

static const char *fmt_num(double v, const char *f, char *buf, size_t n) {
  if (isnan(v)) snprintf(buf, n, "-");
  else snprintf(buf, n, f, v);
  return buf;
}

static int bench_report(const BenchOpts *o) {
  cJSON *all = cJSON_CreateObject();
  cJSON *sg = read_json(o->out, "sgemm.json");
  const cJSON *first = NULL;
  printf("\n## t5gemma bench (%s)\n\n", o->out);
  if (sg) {
    first = sg;
    printf("machine: %s, OpenBLAS core %s, %g threads (OpenMP and OpenBLAS), load average %.1f at the sgemm run\n\n",
           cJSON_GetStringValue(cJSON_GetObjectItem(sg, "cpu")), cJSON_GetStringValue(cJSON_GetObjectItem(sg, "openblas_core")),
           jnum(sg, "threads"), jnum(sg, "loadavg_1min"));
    printf("| sgemm shape (row-major, as the ops call it) | GFLOP/s | per CPU time |\n|---|---:|---:|\n");
    const cJSON *arr = cJSON_GetObjectItem(sg, "shapes"), *e;
    cJSON_ArrayForEach(e, arr)
      printf("| %s | %.1f | %.1f |\n", cJSON_GetStringValue(cJSON_GetObjectItem(e, "shape")), jnum(e, "gflops"), jnum(e, "gflops_cpu"));
    printf("\n");
    cJSON_AddItemToObject(all, "sgemm", sg);
  }
  cJSON *bw = read_json(o->out, "bandwidth.json");
  if (bw) {
    if (!first) first = bw;
    printf("| memory-bound work (%g threads, %s) | bytes | best time (ms) | GB/s | of triad | cores busy |\n|---|---:|---:|---:|---:|---:|\n",
           jnum(bw, "threads"), cJSON_GetStringValue(cJSON_GetObjectItem(bw, "preset")));
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(bw, "figures"))
      printf("| %s: %s | %.1f MB | %.2f | %.1f | %.0f%% | %.2f |\n", cJSON_GetStringValue(cJSON_GetObjectItem(e, "name")),
             cJSON_GetStringValue(cJSON_GetObjectItem(e, "shape")), jnum(e, "bytes") / 1e6, 1e3 * jnum(e, "seconds"),
             jnum(e, "gb_per_s"), 100 * jnum(e, "of_triad"), jnum(e, "cores_used"));
    printf("\nBytes as STREAM counts them: each array a pass reads or writes, once per read and once per write (AdamW: 28\n"
           "bytes per parameter). 'of triad' = GB/s over the triad rate of the same run. Copy and triad store to lines they\n"
           "did not read, which costs the memory system an uncounted write-allocate read (a third more traffic for triad);\n"
           "AdamW's stores go to lines it has just read, so it can pass 100%%. 'cores busy' = CPU time / wall time.\n\n");
    cJSON_AddItemToObject(all, "bandwidth", bw);
  }
  printf("| training step | tokens/step | step (s) | tokens/s | GFLOP/s | sgemm ceiling | MFU | MFU by CPU time | cores used | peak RSS (MiB) | predicted (MiB) | PyTorch tokens/s | PyTorch peak (MiB) | speed ours/PyTorch | memory ours/PyTorch |\n");
  printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  cJSON *tr = cJSON_AddArrayToObject(all, "training");
  for (int i = 0; i < N_TRAIN_CASES; i++) {
    char fn[64], a[9][32];
    snprintf(fn, sizeof fn, "%s.json", train_cases[i].name);
    cJSON *j = read_json(o->out, fn);
    if (!j) continue;
    if (!first) first = j;
    snprintf(fn, sizeof fn, "torch-%s.json", train_cases[i].name);
    cJSON *t = read_json(o->out, fn);
    double tps = jnum(j, "tokens_per_s"), ttps = jnum(t, "tokens_per_s");
    double rss = jnum(j, "peak_rss_mb"), trss = jnum(t, "peak_rss_mb");
    int64_t tok = (int64_t)(jnum(j, "batch") * (jnum(j, "enc_len") + jnum(j, "dec_len")));
    char shape[64];
    if (jnum(j, "enc_len") > 0) snprintf(shape, sizeof shape, "%g x (%g + %g)", jnum(j, "batch"), jnum(j, "enc_len"), jnum(j, "dec_len"));
    else snprintf(shape, sizeof shape, "%g x %g", jnum(j, "batch"), jnum(j, "dec_len"));
    printf("| %s, V %g, %s | %lld | %.2f | %.0f | %.1f | %.1f | %.1f%% | %.1f%% | %.2f | %.0f | %.0f | %s | %s | %s | %s |\n",
           train_cases[i].name, jnum(j, "vocab"), shape, (long long)tok, jnum(j, "step_s"), tps, jnum(j, "gflops_per_s"),
           jnum(j, "ceiling_gflops"), 100 * jnum(j, "mfu"), 100 * jnum(j, "mfu_cpu"), jnum(j, "cpu_share") * jnum(j, "threads"), rss,
           jnum(j, "predicted_mb"), fmt_num(ttps, "%.0f", a[0], 32), fmt_num(trss, "%.0f", a[1], 32),
           fmt_num(tps / ttps, "%.2fx", a[2], 32), fmt_num(rss / trss, "%.2fx", a[3], 32));
    cJSON *e = cJSON_CreateObject();
    cJSON_AddItemToObject(e, "t5gemma", j);
    if (t) cJSON_AddItemToObject(e, "pytorch", t);
    cJSON_AddNumberToObject(e, "speed_ratio", tps / ttps);
    cJSON_AddNumberToObject(e, "memory_ratio", rss / trss);
    cJSON_AddItemToArray(tr, e);
  }
  printf("\nMFU = 3 x forward FLOPs (config_flops_per_example, attention included) / step time / the best sgemm rate at the\n"
         "model's own shapes measured in the same process right after the steps. 'MFU by CPU time' divides FLOPs per\n"
         "CPU-second of the step by sgemm's FLOPs per CPU-second: the same ratio with the other jobs' share of the cores\n"
         "taken out ('cores used' = CPU time / step time). PyTorch: tests/ref/t5gemma_ref.py bench, eager, same model,\n"
         "batch, threads and OpenBLAS core.\n");
  printf("\nTime split of a training step (s, engine profiler; 'other' = outside any op):\n\n| case |");
  for (int k = 0; k < OPK_COUNT; k++) if (k != OPK_COMM) printf(" %s |", op_kind_names[k]);
  printf(" other |\n|---|");
  for (int k = 0; k < OPK_COUNT; k++) if (k != OPK_COMM) printf("---:|");
  printf("---:|\n");
  const cJSON *e;
  cJSON_ArrayForEach(e, tr) {
    const cJSON *j = cJSON_GetObjectItem(e, "t5gemma"), *p = cJSON_GetObjectItem(j, "profile_s");
    printf("| %s |", cJSON_GetStringValue(cJSON_GetObjectItem(j, "case")));
    for (int k = 0; k < OPK_COUNT; k++) if (k != OPK_COMM) printf(" %.2f |", jnum(p, op_kind_names[k]));
    printf(" %.2f |\n", jnum(p, "other"));
  }
  cJSON *pr = read_json(o->out, "prepare.json"), *rd = read_json(o->out, "reader.json"), *gn = read_json(o->out, "generate.json");
  printf("\n| data / generation | figure |\n|---|---:|\n");
  if (pr) {
    printf("| prepare (Gemma 2 tokenizer, %.1f MB of text, %g threads; tokenizer load %.1f s not included) | %.2f MB/s (%.0f tokens/s) |\n",
           jnum(pr, "text_mb"), jnum(pr, "threads"), jnum(pr, "tokenizer_load_s"), jnum(pr, "mb_per_s"), jnum(pr, "tokens_per_s"));
    cJSON_AddItemToObject(all, "prepare", pr);
  }
  if (rd) {
    printf("| reader (PrefixLM batches %g x (%g + %g), decompressed and batched) | %.0f tokens/s |\n", jnum(rd, "batch"),
           jnum(rd, "enc_len"), jnum(rd, "dec_len"), jnum(rd, "tokens_per_s"));
    cJSON_AddItemToObject(all, "reader", rd);
  }
  if (gn) {
    printf("| generation, S-S, greedy with caches, batch 1 | %.1f tokens/s |\n", jnum(gn, "batch1_tokens_per_s"));
    printf("| generation, S-S, greedy with caches, batch 8 | %.1f tokens/s |\n", jnum(gn, "batch8_tokens_per_s"));
    cJSON_AddItemToObject(all, "generate", gn);
  }
  if (first) {
    cJSON_AddStringToObject(all, "cpu", cJSON_GetStringValue(cJSON_GetObjectItem(first, "cpu")));
    cJSON_AddNumberToObject(all, "threads", jnum(first, "threads"));
  }
  int rc = write_json(o, "bench.json", all);
  cJSON_Delete(all);
  return rc;
}

/* ---- command line ------------------------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
          "usage: t5gemma [--threads N] bench --case NAME [options]\n"
          "  Performance figures; `make bench` (train/bench.sh) runs every case and the PyTorch twin.\n"
          "  --case NAME     sgemm | bandwidth | s-s | b-b | gemma2-s | prepare | reader | generate | report\n"
          "  --out DIR       where NAME.json files go (default bench-out)\n"
          "  --steps N       timed training steps (default 2); --warmup N untimed first steps (default 1)\n"
          "  --recompute     training cases: activation recomputation per layer\n"
          "  --batch B, --enc-len Te, --dec-len Td, --vocab V   training cases: other sizes than the case's\n"
          "  --no-ceiling    training cases: do not measure the sgemm ceiling (no MFU; for profilers)\n"
          "  --preset NAME   bandwidth: the model whose parameters AdamW updates (default t5gemma-s-s)\n"
          "  --rows N        bandwidth: activation rows of the element-wise ops (default 2048)\n"
          "  --stream-mib M  bandwidth: MiB per STREAM array (default 256)\n"
          "  --tokenizer P   prepare/reader: tokenizer.json (the Gemma 2 tokenizer)\n"
          "  --text FILES... prepare: the text files (the rest of the arguments)\n"
          "  --seed S        random weights and batch (default 1)\n");
}

int cmd_bench(int argc, char **argv) {
  BenchOpts o = {"bench-out", 2, 1, 0, NULL, NULL, 0, 1, 0, 0, 0, 0, 0, NULL, 2048, 256};
  const char *cs = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
    else if (!strcmp(a, "--case") && i + 1 < argc) cs = argv[++i];
    else if (!strcmp(a, "--out") && i + 1 < argc) o.out = argv[++i];
    else if (!strcmp(a, "--steps") && i + 1 < argc) o.steps = atoi(argv[++i]);
    else if (!strcmp(a, "--warmup") && i + 1 < argc) o.warmup = atoi(argv[++i]);
    else if (!strcmp(a, "--recompute")) o.recompute = 1;
    else if (!strcmp(a, "--no-ceiling")) o.no_ceiling = 1;
    else if (!strcmp(a, "--tokenizer") && i + 1 < argc) o.tokenizer = argv[++i];
    else if (!strcmp(a, "--seed") && i + 1 < argc) o.seed = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(a, "--batch") && i + 1 < argc) o.batch = atoi(argv[++i]);
    else if (!strcmp(a, "--enc-len") && i + 1 < argc) o.enc_len = atoi(argv[++i]);
    else if (!strcmp(a, "--dec-len") && i + 1 < argc) o.dec_len = atoi(argv[++i]);
    else if (!strcmp(a, "--vocab") && i + 1 < argc) o.vocab = atoi(argv[++i]);
    else if (!strcmp(a, "--preset") && i + 1 < argc) o.preset = argv[++i];
    else if (!strcmp(a, "--rows") && i + 1 < argc) o.rows = atoi(argv[++i]);
    else if (!strcmp(a, "--stream-mib") && i + 1 < argc) o.stream_mib = atoi(argv[++i]);
    else if (!strcmp(a, "--text")) { o.text = argv + i + 1; o.n_text = argc - i - 1; break; }
    else { fprintf(stderr, "t5gemma bench: unknown or incomplete argument '%s'\n", a); usage(stderr); return 2; }
  }
  if (!cs) { usage(stderr); return 2; }
  if (o.steps < 1 || o.warmup < 0) { fprintf(stderr, "t5gemma bench: --steps must be >= 1 and --warmup >= 0\n"); return 2; }
  int rc;
  if (!strcmp(cs, "sgemm")) rc = bench_sgemm(&o);
  else if (!strcmp(cs, "bandwidth")) rc = bench_bandwidth(&o);
  else if (!strcmp(cs, "prepare")) rc = bench_prepare(&o);
  else if (!strcmp(cs, "reader")) rc = bench_reader(&o);
  else if (!strcmp(cs, "generate")) rc = bench_generate(&o);
  else if (!strcmp(cs, "report")) rc = bench_report(&o);
  else {
    rc = 1;
    int found = 0;
    for (int i = 0; i < N_TRAIN_CASES; i++)
      if (!strcmp(cs, train_cases[i].name)) { found = 1; rc = bench_train(&o, &train_cases[i]); }
    if (!found) { fprintf(stderr, "t5gemma bench: unknown case '%s'\n", cs); usage(stderr); return 2; }
  }
  if (rc != 0) { fprintf(stderr, "t5gemma bench: %s\n", t5g_last_error()); return 1; }
  return 0;
}
