/* bench.c: `t5gemma bench`: the performance figures of issue 8 (`make bench` runs train/bench.sh,
 * which calls the cases below, each in its own process so peak memory figures do not mix, then
 * `t5gemma bench --report` for the table).
 *
 * Cases (`t5gemma bench --case NAME`; each writes DIR/NAME.json, DIR = --out, default bench-out):
 *   sgemm      OpenBLAS cblas_sgemm GFLOP/s at the shapes the benchmarked models use: the
 *              projections [B·T, d]·[d, N] (forward layout x·Wᵀ), the MLP, the LM-head chunk of
 *              the loss in its three forms (logits, dh, dE; model/ops_loss.c), and the attention
 *              blocks (one single-threaded sgemm per OpenMP thread, as model/ops_attention.c
 *              runs them). Thread count = `t5gemma --threads` (OpenMP and OpenBLAS).
 *   s-s        training steps of the T5Gemma S-S preset, full 256000 vocabulary, batch 2 x
 *              (512 encoder + 512 decoder tokens);
 *   b-b        the B-B preset's body with a 32000 vocabulary, batch 2 x (512 + 512);
 *   gemma2-s   Gemma 2 decoder-only of S size (configs/models/gemma2-s.json), causal, 1 x 1024.
 *              A training step = forward + loss + backward (model_loss, graph_backward) + global
 *              gradient clipping to 1.0 + AdamW (optim/adamw.h defaults) + zeroing the gradients,
 *              on a random unpadded batch and random weights (model_init_random). Reported:
 *              step time (mean of the timed steps, and the minimum), tokens/s (encoder + decoder
 *              tokens, as tests/ref/t5gemma_ref.py bench counts them), MFU = 3 ·
 *              config_flops_per_example · B / step time / ceiling, where the ceiling is the best
 *              sgemm rate over this model's own matmul shapes measured in the same process just
 *              before the steps; the engine profiler's seconds per OpKind (Graph.profile,
 *              model/tensor.h; "other" = step time not inside any op: tape bookkeeping, gradient
 *              zero-fill of activations); peak RSS (getrusage) and the arena peak; and
 *              memory_train()'s prediction (model/memory.h) for comparison. The model's config
 *              is written to DIR/NAME.config.json so the PyTorch twin runs the same model.
 *   prepare    `t5gemma data prepare` on text files (--text FILES..., --tokenizer PATH): MB of
 *              text per second, tokens per second; the dataset stays in DIR/prepare-data.
 *   reader     the shard reader + PrefixLM objective over DIR/prepare-data: batches of 8 x
 *              (512 + 512) for ~3 s, tokens/s decompressed and batched.
 *   generate   cached greedy generation (eval/generate.h) with the S-S preset (random weights,
 *              no stop token, 16-token prompts, 32 new tokens), batch 1 and batch 8:
 *              generated tokens/s.
 *   report     read the DIR/NAME.json files (ours and the PyTorch twin's DIR/torch-NAME.json), print the
 *              table and write DIR/bench.json.
 * Benchmarks are not tests: nothing here asserts a time.
 */
#define _GNU_SOURCE
#include "data/objectives.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "eval/generate.h"
#include "model/config.h"
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

__attribute__((unused)) static cJSON *read_json(const char *dir, const char *name) {
  char *path = t5g_path_join(dir, name);
  char *text = t5g_file_exists(path) ? t5g_read_file(path, NULL) : NULL;
  cJSON *j = text ? cJSON_Parse(text) : NULL;
  if (text && !j) fprintf(stderr, "bench: %s is not valid JSON; ignored\n", path);
  free(text);
  free(path);
  return j;
}

__attribute__((unused)) static double jnum(const cJSON *o, const char *key) {
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

/* ---- sgemm rates -------------------------------------------------------------------------- */

typedef struct Shape {
  const char *what;
  int m, n, k;
  int ta, tb;               /* transposes, row-major as in the ops */
  int per_thread;           /* 1: one single-threaded sgemm per OpenMP thread (attention) */
} Shape;

/* Best-of-reps GFLOP/s of C[m,n] = op(A)·op(B). Inputs are filled with small values; one
 * untimed call first (OpenBLAS buffers, page faults). reps adapts so a shape takes ~0.3 s. */
static double sgemm_rate(const Shape *s) {
  const int nt = s->per_thread ? t5g_threads() : 1;
  size_t na = (size_t)s->m * s->k, nb = (size_t)s->k * s->n, nc = (size_t)s->m * s->n;
  float *a = t5g_alloc_aligned(na * 4 * nt), *b = t5g_alloc_aligned(nb * 4 * nt), *c = t5g_alloc_aligned(nc * 4 * nt);
  for (size_t i = 0; i < na * nt; i++) a[i] = (float)((i * 7919) % 101) / 101.0f - 0.5f;
  for (size_t i = 0; i < nb * nt; i++) b[i] = (float)((i * 104729) % 103) / 103.0f - 0.5f;
  memset(c, 0, nc * 4 * nt);
  const int lda = s->ta ? s->m : s->k, ldb = s->tb ? s->k : s->n;
  const double flops = 2.0 * s->m * s->n * s->k * nt;
  double best = 1e30;
  for (int rep = 0, reps = 3; rep < reps + 1; rep++) {
    double t0 = t5g_now();
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
    } else {
      cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans, s->tb ? CblasTrans : CblasNoTrans, s->m, s->n, s->k,
                  1.0f, a, lda, b, ldb, 0.0f, c, s->n);
    }
    double dt = (t5g_now() - t0) / (s->per_thread ? 8 : 1);
    if (rep > 0 && dt < best) best = dt;
    if (rep == 0 && dt < 0.02) reps = 10;
  }
  free(a); free(b); free(c);
  return flops / best / 1e9;
}

/* Rows per loss chunk as model/ops_loss.c picks them (about 2^25 / V, in [16, 256]). */
static int loss_chunk(int V) {
  int ch = (int)(((int64_t)1 << 25) / V);
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
    double r = sgemm_rate(&sh[i]);
    if (r > best) best = r;
    printf("  %-58s %8.1f GFLOP/s\n", sh[i].what, r);
    fflush(stdout);
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "shape", sh[i].what);
    cJSON_AddNumberToObject(e, "gflops", r);
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

  /* the ceiling: best sgemm rate over this model's shapes, now, in this process */
  Shape sh[8];
  char names[8][96];
  int nsh = model_shapes(&c, B * (Te > Td ? Te : Td), tc->name, sh, names);
  double ceiling = 0;
  for (int i = 0; i < nsh; i++) { double r = sgemm_rate(&sh[i]); if (r > ceiling) ceiling = r; }

  Model m;
  if (model_init(&m, &c) != 0) return -1;
  model_init_random(&m, o->seed);
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
  double sum_t = 0, min_t = 1e30, prof[OPK_COUNT] = {0}, sum_fb = 0, sum_opt = 0;
  float loss_v = 0;
  printf("%s: %.1f M parameters, %lld tokens per step, %.1f GFLOP per step, ceiling %.1f GFLOP/s\n", tc->name,
         m.ps.n_total / 1e6, (long long)tokens, flops / 1e9, ceiling);
  fflush(stdout);
  for (int it = 0; it < o->warmup + o->steps; it++) {
    memset(g.prof_sec, 0, sizeof g.prof_sec);
    double t0 = t5g_now();
    graph_reset(&g);
    LossStats st;
    Tensor *loss = model_loss(&m, &g, &b, (float)b.n_targets, &st, NULL, NULL);
    loss_v = loss->data[0];
    graph_backward(&g, loss);
    double t1 = t5g_now();
    int nonfinite = 0;
    adamw_clip_grad_norm(&m.ps, ac.max_grad_norm, &nonfinite);
    if (!nonfinite) adamw_step(&opt, &m.ps, 1e-4);
    params_zero_grad(&m.ps);
    double t2 = t5g_now();
    g.prof_sec[OPK_OPTIMIZER] += t2 - t1;
    double dt = t2 - t0;
    printf("  %s step %d%s: %.3f s (forward+backward %.3f s, optimizer %.3f s), loss %.4f\n", tc->name, it + 1,
           it < o->warmup ? " (warm-up)" : "", dt, t1 - t0, t2 - t1, loss_v);
    fflush(stdout);
    if (it < o->warmup) continue;
    sum_t += dt; sum_fb += t1 - t0; sum_opt += t2 - t1;
    if (dt < min_t) min_t = dt;
    for (int k = 0; k < OPK_COUNT; k++) prof[k] += g.prof_sec[k];
  }
  graph_reset(&g);
  const int ns = o->steps;
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
  cJSON_AddNumberToObject(root, "loss", loss_v);
  cJSON_AddNumberToObject(root, "peak_rss_mb", t5g_peak_rss() / 1048576.0);
  cJSON_AddNumberToObject(root, "arena_peak_mb", arena.peak / 1048576.0);
  cJSON_AddNumberToObject(root, "predicted_mb", pred.total / 1048576.0);
  cJSON_AddNumberToObject(root, "predicted_activations_mb", pred.activations / 1048576.0);
  cJSON *pj = cJSON_AddObjectToObject(root, "profile_s");
  double in_ops = 0;
  for (int k = 0; k < OPK_COUNT; k++) { cJSON_AddNumberToObject(pj, op_kind_names[k], prof[k] / ns); in_ops += prof[k] / ns; }
  cJSON_AddNumberToObject(pj, "other", step_s - in_ops);
  printf("%s: %.3f s/step, %.0f tokens/s, %.1f GFLOP/s = MFU %.1f%% of %.1f; peak RSS %.0f MiB (arena %.0f MiB, predicted %.0f MiB)\n",
         tc->name, step_s, tokens / step_s, flops / step_s / 1e9, 100 * flops / step_s / 1e9 / ceiling, ceiling,
         t5g_peak_rss() / 1048576.0, arena.peak / 1048576.0, pred.total / 1048576.0);
  printf("  split:");
  for (int k = 0; k < OPK_COUNT; k++) if (prof[k] > 0) printf(" %s %.3f", op_kind_names[k], prof[k] / ns);
  printf(" other %.3f s\n", step_s - in_ops);
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

/* ---- command line ------------------------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
          "usage: t5gemma [--threads N] bench --case NAME [options]\n"
          "  Performance figures; `make bench` (train/bench.sh) runs every case and the PyTorch twin.\n"
          "  --case NAME     sgemm | s-s | b-b | gemma2-s | prepare | reader | generate | report\n"
          "  --out DIR       where NAME.json files go (default bench-out)\n"
          "  --steps N       timed training steps (default 2); --warmup N untimed first steps (default 1)\n"
          "  --recompute     training cases: activation recomputation per layer\n"
          "  --batch B, --enc-len Te, --dec-len Td, --vocab V   training cases: other sizes than the case's\n"
          "  --tokenizer P   prepare/reader: tokenizer.json (the Gemma 2 tokenizer)\n"
          "  --text FILES... prepare: the text files (the rest of the arguments)\n"
          "  --seed S        random weights and batch (default 1)\n");
}

int cmd_bench(int argc, char **argv) {
  BenchOpts o = {"bench-out", 2, 1, 0, NULL, NULL, 0, 1, 0, 0, 0, 0};
  const char *cs = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
    else if (!strcmp(a, "--case") && i + 1 < argc) cs = argv[++i];
    else if (!strcmp(a, "--out") && i + 1 < argc) o.out = argv[++i];
    else if (!strcmp(a, "--steps") && i + 1 < argc) o.steps = atoi(argv[++i]);
    else if (!strcmp(a, "--warmup") && i + 1 < argc) o.warmup = atoi(argv[++i]);
    else if (!strcmp(a, "--recompute")) o.recompute = 1;
    else if (!strcmp(a, "--tokenizer") && i + 1 < argc) o.tokenizer = argv[++i];
    else if (!strcmp(a, "--seed") && i + 1 < argc) o.seed = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(a, "--batch") && i + 1 < argc) o.batch = atoi(argv[++i]);
    else if (!strcmp(a, "--enc-len") && i + 1 < argc) o.enc_len = atoi(argv[++i]);
    else if (!strcmp(a, "--dec-len") && i + 1 < argc) o.dec_len = atoi(argv[++i]);
    else if (!strcmp(a, "--vocab") && i + 1 < argc) o.vocab = atoi(argv[++i]);
    else if (!strcmp(a, "--text")) { o.text = argv + i + 1; o.n_text = argc - i - 1; break; }
    else { fprintf(stderr, "t5gemma bench: unknown or incomplete argument '%s'\n", a); usage(stderr); return 2; }
  }
  if (!cs) { usage(stderr); return 2; }
  if (o.steps < 1 || o.warmup < 0) { fprintf(stderr, "t5gemma bench: --steps must be >= 1 and --warmup >= 0\n"); return 2; }
  int rc;
  if (!strcmp(cs, "sgemm")) rc = bench_sgemm(&o);
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
