/* cmd_model.c: model-file commands.
 *   t5gemma random-checkpoint  a randomly initialised checkpoint in Hugging Face format (streamed)
 *   t5gemma adapt              a T5Gemma encoder-decoder from Gemma 2 checkpoint(s) (streamed, spec 3)
 *   t5gemma export             a training checkpoint (HDF5) -> Hugging Face directory
 *   t5gemma dump               forward + backward on a batch file -> loss, logits, gradients
 *                              (for checking against tests/ref/t5gemma_ref.py or another
 *                              implementation)
 */
#include "model/adapt.h"
#include "model/hf_io.h"
#include "model/memory.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "train/checkpoint.h"
#include "train/commands.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --key value / --key=value option lookup over argv[1..]; flags listed in `known` only. */
typedef struct { int argc; char **argv; int *used; } Opts;

static const char *opt_get(Opts *o, const char *key) {
  size_t kl = strlen(key);
  for (int i = 1; i < o->argc; i++) {
    const char *a = o->argv[i];
    if (strncmp(a, key, kl) == 0 && a[kl] == '=') { o->used[i] = 1; return a + kl + 1; }
    if (strcmp(a, key) == 0) {
      if (i + 1 >= o->argc) t5g_fatal("%s: option %s needs a value", o->argv[0], key);
      o->used[i] = o->used[i + 1] = 1;
      return o->argv[i + 1];
    }
  }
  return NULL;
}
static int opt_flag(Opts *o, const char *key) {
  for (int i = 1; i < o->argc; i++) if (strcmp(o->argv[i], key) == 0) { o->used[i] = 1; return 1; }
  return 0;
}
static void opt_done(Opts *o) {
  for (int i = 1; i < o->argc; i++)
    if (!o->used[i]) t5g_fatal("%s: unknown argument '%s' (see `t5gemma %s --help`)", o->argv[0], o->argv[i], o->argv[0]);
}
/* --shard-size: a positive size with an optional K/M/G/T suffix (decimal), optionally followed by
 * B ("5GB", "500M", "1e9"). */
static int64_t parse_size(const char *s) {
  char *end; double v = strtod(s, &end);
  if (end == s || !isfinite(v)) t5g_fatal("--shard-size: expected a size such as 5GB or 500MB, found '%s'", s);
  if (*end == 'K' || *end == 'k') { v *= 1e3; end++; } else if (*end == 'M') { v *= 1e6; end++; }
  else if (*end == 'G') { v *= 1e9; end++; } else if (*end == 'T') { v *= 1e12; end++; }
  if (*end == 'B') end++;
  if (*end) t5g_fatal("--shard-size: expected a size such as 5GB or 500MB, found '%s'", s);
  if (v < 1 || v > 9e18) t5g_fatal("--shard-size: the size must be positive (at least 1 byte), found '%s'", s);
  return (int64_t)v;
}
/* Seeds are non-negative decimal integers below 2^64: "-5" is refused (strtoull would silently
 * wrap it to 2^64 - 5). */
static uint64_t parse_u64(const char *s, const char *what) {
  char *end; errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (!*s || *end || s[0] == '-' || s[0] == '+' || errno == ERANGE)
    t5g_fatal("%s expects a non-negative integer (0 to 18446744073709551615), found '%s'", what, s);
  return v;
}
/* A standard deviation: a finite number >= 0. NaN or a negative spread would write NaN weights. */
static float parse_std(const char *s, const char *what) {
  char *end; double v = strtod(s, &end);
  if (end == s || *end) t5g_fatal("%s expects a number (a standard deviation >= 0), found '%s'", what, s);
  if (!isfinite(v) || v < 0 || v > 1e30) t5g_fatal("%s expects a finite standard deviation >= 0, found '%s'", what, s);
  return (float)v;
}

static int write_config(const ModelConfig *c, const char *dir, StDtype dt) {
  char *path = t5g_path_join(dir, "config.json");
  char *js = config_to_json_dtype(c, dt == ST_BF16 ? "bfloat16" : dt == ST_F16 ? "float16" : "float32");
  T5gOutFile out;
  int rc = t5g_open_out(&out, path);
  if (rc == 0) { fputs(js, out.f); rc = t5g_commit_file(&out); }
  free(js); free(path);
  return rc;
}

/* ---- random-checkpoint ------------------------------------------------------------------- */
typedef struct { Rng r; float std; } RandFill;
static int rand_fill(void *ctx, int64_t off, int64_t n, float *out) {
  RandFill *f = ctx;
  for (int64_t j = 0; j < n; j++) out[j] = f->std == 0 ? 0.0f : (float)(f->std * rng_normal(&f->r));
  return 0;
}

int cmd_random_checkpoint(int argc, char **argv) {
  int used[argc]; memset(used, 0, sizeof used);
  Opts o = {argc, argv, used};
  if (opt_flag(&o, "--help")) {
    printf("usage: t5gemma random-checkpoint --config PRESET|config.json --out DIR [--seed N] [--dtype bf16|f16|f32]\n"
           "                                 [--shard-size 5GB] [--std X]\n"
           "Writes a randomly initialised checkpoint (config.json + safetensors, sharded with\n"
           "model.safetensors.index.json when larger than --shard-size) without holding the model in\n"
           "memory: matrices and embeddings ~ normal(0, initializer_range or --std), norms 0.\n");
    return 0;
  }
  const char *cfgs = opt_get(&o, "--config"), *out = opt_get(&o, "--out"), *seed_s = opt_get(&o, "--seed");
  const char *dt_s = opt_get(&o, "--dtype"), *shard_s = opt_get(&o, "--shard-size"), *std_s = opt_get(&o, "--std");
  opt_done(&o);
  if (!cfgs || !out) t5g_fatal("random-checkpoint: --config and --out are required");
  ModelConfig c;
  if (config_resolve(cfgs, &c) != 0) t5g_die_last();
  StDtype dt = ST_F32;
  if (dt_s && st_dtype_parse(dt_s, &dt) != 0) t5g_die_last();
  uint64_t seed = seed_s ? parse_u64(seed_s, "random-checkpoint: --seed") : 0;
  int64_t shard = shard_s ? parse_size(shard_s) : (int64_t)5000000000LL;
  const float std_v = std_s ? parse_std(std_s, "random-checkpoint: --std") : 0;
  Model m;
  if (model_plan(&m, &c) != 0) t5g_die_last();
  double t0 = t5g_now();
  StWriter *w = st_writer_begin(out, "model", dt, shard);
  if (!w) t5g_die_last();
  for (int i = 0; i < m.ps.n; i++)
    if (st_writer_plan(w, m.ps.e[i].name, m.ps.e[i].t.ndim, m.ps.e[i].t.shape) != 0) { st_writer_abort(w); t5g_die_last(); }
  for (int i = 0; i < m.ps.n; i++) {
    RandFill f;
    f.std = std_s && m.ps.e[i].group != PG_NORM ? std_v : model_init_std(&m, &m.ps.e[i]);
    model_init_rng(&m.ps.e[i], seed, &f.r);
    if (st_writer_write_fn(w, m.ps.e[i].name, rand_fill, &f) != 0) { st_writer_abort(w); t5g_die_last(); }
  }
  int nf = st_writer_n_files(w);
  if (st_writer_finish(w) != 0 || write_config(&c, out, dt) != 0) t5g_die_last();
  char b1[32];
  fprintf(stderr, "random-checkpoint: %s, %lld parameters, %s in %d file(s), %.1f s, peak memory %s\n", out,
          (long long)params_count(&m.ps, NULL), st_dtype_name(dt), nf, t5g_now() - t0, t5g_fmt_bytes((double)t5g_peak_rss(), b1, sizeof b1));
  model_free(&m);
  return 0;
}

/* ---- adapt ------------------------------------------------------------------------------- */
int cmd_adapt(int argc, char **argv) {
  int used[argc]; memset(used, 0, sizeof used);
  Opts o = {argc, argv, used};
  if (opt_flag(&o, "--help")) {
    printf("usage: t5gemma adapt --from GEMMA2_DIR --out DIR                     (balanced pair, e.g. 2B-2B)\n"
           "       t5gemma adapt --encoder GEMMA2_A --decoder GEMMA2_B --out DIR (unequal pair, e.g. 9B-2B)\n"
           "       t5gemma adapt --preset T5GEMMA_PRESET --out DIR [--seed N]    (random, from scratch)\n"
           "options:\n"
           "  --cross-init auto|copy|random  cross-attention q/k/v/o: copied from the same layer's self-attention\n"
           "                                 (balanced) or random normal(0, --cross-std) (unequal); auto picks by widths\n"
           "  --cross-norm copy|zero         cross-attention norms: copy the self-attention norms (default) or unit gain\n"
           "  --cross-std X                  std of random cross-attention (default 0.02)\n"
           "  --seed N                       seed of random tensors (default 1234)\n"
           "  --encoder-causal               causal encoder (ablation, spec 4.5; default bidirectional)\n"
           "  --dtype bf16|f16|f32           output dtype (default: the source embedding's dtype)\n"
           "  --shard-size 5GB               maximum safetensors shard size\n"
           "Streams tensor by tensor from the memory-mapped sources to the output shards: memory stays\n"
           "near one 4 MiB chunk plus the mapped pages, whatever the model size. Unequal pairs print the\n"
           "cross-attention-only warm-up that `t5gemma train` applies (warmup_cross_steps, spec 3.1).\n");
    return 0;
  }
  const char *from = opt_get(&o, "--from"), *enc = opt_get(&o, "--encoder"), *dec = opt_get(&o, "--decoder");
  const char *preset = opt_get(&o, "--preset"), *out = opt_get(&o, "--out");
  const char *ci = opt_get(&o, "--cross-init"), *cn = opt_get(&o, "--cross-norm"), *cs = opt_get(&o, "--cross-std");
  const char *seed_s = opt_get(&o, "--seed"), *dt_s = opt_get(&o, "--dtype"), *shard_s = opt_get(&o, "--shard-size");
  int causal = opt_flag(&o, "--encoder-causal");
  opt_done(&o);
  if (!out) t5g_fatal("adapt: --out is required");
  AdaptOptions ao;
  adapt_options_default(&ao);
  if (ci) { if (!strcmp(ci, "auto")) ao.cross_init = -1; else if (!strcmp(ci, "copy")) ao.cross_init = 0; else if (!strcmp(ci, "random")) ao.cross_init = 1; else t5g_fatal("adapt: --cross-init expects auto, copy or random, found '%s'", ci); }
  if (cn) { if (!strcmp(cn, "copy")) ao.cross_norm_zero = 0; else if (!strcmp(cn, "zero")) ao.cross_norm_zero = 1; else t5g_fatal("adapt: --cross-norm expects copy or zero, found '%s'", cn); }
  if (cs) ao.cross_std = parse_std(cs, "adapt: --cross-std");
  if (seed_s) ao.seed = parse_u64(seed_s, "adapt: --seed");
  ao.encoder_causal = causal;
  int64_t shard = shard_s ? parse_size(shard_s) : (int64_t)5000000000LL;
  double t0 = t5g_now();
  if (preset) {
    if (from || enc || dec) t5g_fatal("adapt: --preset cannot be combined with --from/--encoder/--decoder");
    ModelConfig c;
    if (config_resolve(preset, &c) != 0) t5g_die_last();
    if (c.kind != MODEL_T5GEMMA) t5g_fatal("adapt: --preset %s is not a T5Gemma config (model_type t5gemma)", preset);
    c.encoder_causal = causal;
    char *argv2[] = {"random-checkpoint", "--config", (char *)preset, "--out", (char *)out, "--seed", (char *)(seed_s ? seed_s : "1234"),
                     "--dtype", (char *)(dt_s ? dt_s : "f32"), NULL};
    int rc = cmd_random_checkpoint(9, argv2);
    if (rc == 0 && causal && write_config(&c, out, ST_F32) != 0) t5g_die_last();
    return rc;
  }
  if (from && (enc || dec)) t5g_fatal("adapt: give either --from (balanced) or --encoder and --decoder (unequal)");
  if (!from && !(enc && dec)) t5g_fatal("adapt: give --from GEMMA2_DIR, or --encoder A --decoder B, or --preset NAME");
  const char *pa = from ? from : enc, *pb = from ? from : dec;
  ModelConfig ca, cb, ct;
  if (config_load(pa, &ca) != 0 || config_load(pb, &cb) != 0) t5g_die_last();
  snprintf(ca.name, sizeof ca.name, "%.60s", pa);
  snprintf(cb.name, sizeof cb.name, "%.60s", pb);
  if (adapt_make_config(&ca, &cb, &ao, &ct) != 0) t5g_die_last();
  AdaptRule *rules; int nr, warm;
  if (adapt_plan(&ct, &ca, &cb, &ao, &rules, &nr, &warm) != 0) t5g_die_last();
  StReader ra, rb;
  if (st_open(&ra, pa) != 0) t5g_die_last();
  int same = strcmp(pa, pb) == 0;
  if (!same && st_open(&rb, pb) != 0) t5g_die_last();
  const StReader *rbp = same ? &ra : &rb;
  StDtype dt;
  const StTensor *emb = st_find(rbp, "model.embed_tokens.weight");
  dt = emb ? emb->dtype : ST_F32;
  if (dt == ST_I32) dt = ST_F32;
  if (dt_s && st_dtype_parse(dt_s, &dt) != 0) t5g_die_last();
  MemEstimate me = memory_adapt(&ct);
  if (memory_check("adapt", me.total) != 0) t5g_die_last();
  StWriter *w = st_writer_begin(out, "model", dt, shard);
  if (!w) t5g_die_last();
  int nf = 0;
  if (adapt_stream(rules, nr, &ao, &ra, rbp, w) != 0) t5g_die_last();
  (void)nf;
  if (write_config(&ct, out, dt) != 0) t5g_die_last();
  /* the tokenizer files of the decoder source travel with the model */
  const char *tokfiles[] = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"};
  for (size_t i = 0; i < sizeof tokfiles / sizeof tokfiles[0]; i++) {
    char *src = t5g_path_join(pb, tokfiles[i]), *dst = t5g_path_join(out, tokfiles[i]);
    if (t5g_file_exists(src) && t5g_copy_file(src, dst) != 0) t5g_die_last();
    free(src); free(dst);
  }
  ParamCounts pc = config_param_counts(&ct);
  char b1[32], pn[32];
  printf("adapt: wrote %s: T5Gemma encoder from %s, decoder from %s, %s parameters, %s\n", out, pa, pb,
         t5g_fmt_count((double)pc.total, pn, sizeof pn), st_dtype_name(dt));
  printf("adapt: cross-attention %s, cross-attention norms %s%s\n",
         warm ? "random normal(0, cross_std)" : "copied from self-attention",
         ao.cross_norm_zero ? "zero (unit gain)" : "copied from self-attention norms",
         causal ? ", causal encoder" : "");
  if (warm) printf("adapt: %s: `t5gemma train` trains cross-attention alone for the first 1000 steps (warmup_cross_steps)\n",
                   same ? "random cross-attention (--cross-init random)" : "unequal pair (random cross-attention)");
  printf("adapt: %.1f s, peak memory %s\n", t5g_now() - t0, t5g_fmt_bytes((double)t5g_peak_rss(), b1, sizeof b1));
  st_close(&ra);
  if (!same) st_close(&rb);
  free(rules);
  return 0;
}

/* ---- export ------------------------------------------------------------------------------ */
static const char *const tok_files[] = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"};

/* 1 when dir holds tokenizer.json or tokenizer.model. */
static int dir_has_tokenizer(const char *dir) {
  for (int i = 0; i < 2; i++) {
    char *p = t5g_path_join(dir, tok_files[i]);
    int ok = t5g_file_exists(p);
    free(p);
    if (ok) return 1;
  }
  return 0;
}

/* A path from RUN/train_config.json: as given when it exists (relative to the current directory),
 * else relative to the directory train ran in (RUN's path minus the config's run_dir). malloc'ed,
 * or NULL. */
static char *run_path(const char *run, const char *run_dir, const char *p) {
  if (!p || !p[0]) return NULL;
  if (t5g_file_exists(p)) return t5g_strdup(p);
  if (p[0] == '/' || !run_dir || !run_dir[0]) return NULL;
  size_t rl = strlen(run), dl = strlen(run_dir);
  while (rl > 1 && run[rl - 1] == '/') rl--;
  if (dl > rl || strncmp(run + rl - dl, run_dir, dl) != 0 || (rl > dl && run[rl - dl - 1] != '/')) return NULL;
  char *base = t5g_malloc(rl - dl + 2);
  if (rl == dl) strcpy(base, "."); else { memcpy(base, run, rl - dl); base[rl - dl] = 0; }
  char *q = t5g_path_join(base, p);
  free(base);
  if (t5g_file_exists(q)) return q;
  free(q);
  return NULL;
}

/* The tokenizer of a training run (run: the directory holding the checkpoints): RUN/hf/ (written
 * at the end of a run), else train_config.json's tokenizer, else the tokenizer next to its init
 * model. Returns a malloc'ed file path (a tokenizer.json / .model file) or directory (copy its
 * tokenizer files), and sets *is_dir; NULL when none is found. */
static char *find_run_tokenizer(const char *run, int *is_dir) {
  char *hf = t5g_path_join(run, "hf");
  if (dir_has_tokenizer(hf)) { *is_dir = 1; return hf; }
  free(hf);
  char *cp = t5g_path_join(run, "train_config.json");
  char *js = t5g_file_exists(cp) ? t5g_read_file(cp, NULL) : NULL;
  free(cp);
  cJSON *j = js ? cJSON_Parse(js) : NULL;
  free(js);
  char *found = NULL;
  if (j) {
    const char *rd = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "run_dir"));
    found = run_path(run, rd, cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "tokenizer")));
    *is_dir = 0;
    if (!found) {
      char *init = run_path(run, rd, cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "init")));
      if (init && dir_has_tokenizer(init)) { found = init; *is_dir = 1; } else free(init);
    }
    cJSON_Delete(j);
  }
  return found;
}

int cmd_export(int argc, char **argv) {
  int used[argc]; memset(used, 0, sizeof used);
  Opts o = {argc, argv, used};
  if (opt_flag(&o, "--help")) {
    printf("usage: t5gemma export (RUN_DIR | CHECKPOINT.h5) --out DIR [--dtype bf16|f16|f32] [--average K]\n"
           "                      [--shard-size 5GB] [--write-lm-head]\n"
           "Writes the model of a training checkpoint (the newest complete one in RUN_DIR) as a Hugging Face\n"
           "directory: config.json + safetensors (Gemma2ForCausalLM or T5GemmaForConditionalGeneration).\n"
           "--average K exports the mean of the last K checkpoints' weights (spec 4.4); with fewer than K\n"
           "complete checkpoints it averages those there are and prints a warning.\n"
           "The run's tokenizer is copied into DIR (from RUN/hf/, else train_config.json's tokenizer, else\n"
           "the tokenizer of its init model); a warning says when none is found.\n");
    return 0;
  }
  const char *out = opt_get(&o, "--out"), *dt_s = opt_get(&o, "--dtype"), *avg_s = opt_get(&o, "--average");
  const char *shard_s = opt_get(&o, "--shard-size");
  int head = opt_flag(&o, "--write-lm-head");
  const char *src = NULL;
  for (int i = 1; i < argc; i++) if (!used[i] && argv[i][0] != '-') { src = argv[i]; used[i] = 1; break; }
  opt_done(&o);
  if (!src || !out) t5g_fatal("export: give a run directory or checkpoint file, and --out DIR");
  char *path = NULL;
  int64_t step = 0;
  if (t5g_file_exists(src) && strstr(src, ".h5")) path = t5g_strdup(src);
  else if (!(path = ckpt_find_latest(src, &step))) t5g_fatal("export: %s holds no complete checkpoint (ckpt-*.h5)", src);
  Ckpt *ck = ckpt_open(path);
  if (!ck) t5g_die_last();
  char *mjs = ckpt_get_str(ck, CKPT_MODEL_CONFIG);
  if (!mjs) t5g_die_last();
  ModelConfig c;
  if (config_parse(mjs, path, &c) != 0) t5g_die_last();
  Model m;
  if (model_init(&m, &c) != 0) t5g_die_last();
  if (ckpt_get_params(ck, &m.ps) != 0) t5g_die_last();
  step = ckpt_step(ck);
  ckpt_close(ck);
  if (avg_s) {
    char *e; long kl = strtol(avg_s, &e, 10);
    if (!avg_s[0] || *e || kl < 1 || kl > 100000) t5g_fatal("export: --average expects a positive number of checkpoints, found '%s'", avg_s);
    int k = (int)kl, used_k = 0;
    char *dir = t5g_strdup(path);
    char *sl = strrchr(dir, '/');
    if (sl) *sl = 0; else strcpy(dir, ".");
    if (ckpt_average_last(dir, k, &m.ps, &used_k) != 0) t5g_die_last();
    if (used_k < k)
      fprintf(stderr, "export: warning: --average %d, but %s holds only %d complete checkpoint(s): averaged those %d\n", k, dir, used_k, used_k);
    else fprintf(stderr, "export: averaged the last %d checkpoint(s) of %s\n", used_k, dir);
    free(dir);
  }
  HfSaveOptions so = {ST_F32, shard_s ? parse_size(shard_s) : (int64_t)5000000000LL, head};
  if (dt_s && st_dtype_parse(dt_s, &so.dtype) != 0) t5g_die_last();
  if (hf_save(&m.ps, &c, out, &so) != 0) t5g_die_last();
  /* the tokenizer travels with the model, as adapt and train's hf/ do */
  {
    char *run = t5g_strdup(path);
    char *sl = strrchr(run, '/');
    if (sl) *sl = 0; else strcpy(run, ".");
    int is_dir = 0;
    char *tk = find_run_tokenizer(run, &is_dir);
    if (!tk) {
      fprintf(stderr, "export: warning: no tokenizer found for %s (neither %s/hf/tokenizer.json nor train_config.json's "
              "tokenizer or init model has one): copy tokenizer.json into %s before `t5gemma generate --model %s`\n", run, run, out, out);
    } else if (is_dir) {
      for (size_t i = 0; i < sizeof tok_files / sizeof tok_files[0]; i++) {
        char *src = t5g_path_join(tk, tok_files[i]), *dst = t5g_path_join(out, tok_files[i]);
        if (t5g_file_exists(src)) {
          if (t5g_copy_file(src, dst) != 0) t5g_die_last();
          fprintf(stderr, "export: copied the tokenizer %s to %s\n", src, dst);
        }
        free(src); free(dst);
      }
    } else {
      const char *base = strrchr(tk, '/');
      char *dst = t5g_path_join(out, base ? base + 1 : tk);
      if (t5g_copy_file(tk, dst) != 0) t5g_die_last();
      fprintf(stderr, "export: copied the tokenizer %s to %s\n", tk, dst);
      free(dst);
    }
    free(tk); free(run);
  }
  printf("export: %s (step %lld) -> %s (%s)\n", path, (long long)step, out, st_dtype_name(so.dtype));
  free(path); free(mjs);
  model_free(&m);
  return 0;
}

/* ---- dump -------------------------------------------------------------------------------- */
static int32_t *read_i32(const StReader *r, const char *name, int64_t want, int required, const char *path) {
  const StTensor *t = st_find(r, name);
  if (!t) { if (required) t5g_fatal("%s: tensor %s is missing", path, name); return NULL; }
  if (t->numel != want) t5g_fatal("%s: tensor %s has %lld elements, expected %lld", path, name, (long long)t->numel, (long long)want);
  float *f = t5g_malloc(want * sizeof(float));
  st_read_f32(t, f);
  int32_t *v = t5g_malloc(want * sizeof(int32_t));
  for (int64_t i = 0; i < want; i++) v[i] = (int32_t)f[i];
  free(f);
  return v;
}

int cmd_dump(int argc, char **argv) {
  int used[argc]; memset(used, 0, sizeof used);
  Opts o = {argc, argv, used};
  if (opt_flag(&o, "--help")) {
    printf("usage: t5gemma dump --model DIR --batch BATCH.safetensors --out OUT.safetensors [--recompute]\n"
           "Runs one forward and backward pass and writes loss [1], logits [B,Td,V] (soft-capped) and\n"
           "grad/<name> for every parameter (F32). The batch holds I32 tensors:\n"
           "  required: dec_ids [B,Td], labels [B,Td] (-100 = no loss), and enc_ids [B,Te] for T5Gemma;\n"
           "  optional: enc_mask / dec_mask (default all 1), enc_pos / dec_pos (default 0..Te-1 / 0..Td-1\n"
           "  in every row), dec_seg (packed segments; with it, enc_seg is required for T5Gemma),\n"
           "  and an F32 loss_norm [1] (default: the number of labels != -100).\n"
           "This is the batch format of tests/ref/t5gemma_ref.py (check/dump), with the same defaults, for\n"
           "comparing with an independent implementation.\n");
    return 0;
  }
  const char *mdir = opt_get(&o, "--model"), *bpath = opt_get(&o, "--batch"), *out = opt_get(&o, "--out");
  int recompute = opt_flag(&o, "--recompute");
  opt_done(&o);
  if (!mdir || !bpath || !out) t5g_fatal("dump: --model, --batch and --out are required");
  Model m;
  if (model_load_dir(&m, mdir) != 0) t5g_die_last();
  m.recompute = recompute;
  StReader br;
  if (st_open(&br, bpath) != 0) t5g_die_last();
  const StTensor *di = st_find(&br, "dec_ids");
  if (!di || di->ndim != 2) t5g_fatal("%s: dec_ids [B, Td] is missing", bpath);
  int B = (int)di->shape[0], Td = (int)di->shape[1], Te = 0;
  const StTensor *ei = st_find(&br, "enc_ids");
  if (m.cfg.kind == MODEL_T5GEMMA) {
    if (!ei || ei->ndim != 2 || ei->shape[0] != B) t5g_fatal("%s: enc_ids [B, Te] is missing or has another batch size", bpath);
    Te = (int)ei->shape[1];
  }
  int packed = st_find(&br, "dec_seg") != NULL;
  Batch b;
  batch_alloc(&b, B, Te, Td, packed);
  int64_t ne = (int64_t)B * Te, nd = (int64_t)B * Td;
#define LOAD(dst, name, n, req, def) do { int32_t *v = read_i32(&br, name, n, req, bpath); \
    for (int64_t i = 0; i < (n); i++) { dst[i] = v ? v[i] : (def); } \
    free(v); } while (0)
  if (Te) {
    LOAD(b.enc_ids, "enc_ids", ne, 1, 0);
    LOAD(b.enc_mask, "enc_mask", ne, 0, 1);
    LOAD(b.enc_pos, "enc_pos", ne, 0, (int32_t)(i % Te));
    if (packed) LOAD(b.enc_seg, "enc_seg", ne, 1, 0);
  }
  LOAD(b.dec_ids, "dec_ids", nd, 1, 0);
  LOAD(b.dec_mask, "dec_mask", nd, 0, 1);
  LOAD(b.dec_pos, "dec_pos", nd, 0, (int32_t)(i % Td));
  LOAD(b.labels, "labels", nd, 1, 0);
  if (packed) LOAD(b.dec_seg, "dec_seg", nd, 1, 0);
#undef LOAD
  batch_count_targets(&b);
  for (int64_t i = 0; i < ne; i++) if (b.enc_ids[i] < 0 || b.enc_ids[i] >= m.cfg.enc.vocab_size) t5g_fatal("%s: enc_ids[%lld] = %d out of range", bpath, (long long)i, b.enc_ids[i]);
  for (int64_t i = 0; i < nd; i++) if (b.dec_ids[i] < 0 || b.dec_ids[i] >= m.cfg.dec.vocab_size) t5g_fatal("%s: dec_ids[%lld] = %d out of range", bpath, (long long)i, b.dec_ids[i]);
  float norm = (float)b.n_targets;
  const StTensor *ln = st_find(&br, "loss_norm");
  if (ln) st_read_f32(ln, &norm);
  Arena arena; arena_init(&arena, 0);
  Graph g; graph_init(&g, &arena);
  Tensor *h = NULL;
  Tensor *loss = model_loss(&m, &g, &b, norm, NULL, NULL, &h);
  int64_t V = m.cfg.dec.vocab_size;
  float *logits = t5g_malloc((size_t)nd * V * sizeof(float));
  logits_full(h->data, nd, m.dec.embed, m.cfg.dec.final_logit_softcapping, logits);
  float lossv = loss->data[0];
  params_zero_grad(&m.ps);
  graph_backward(&g, loss);
  int n_items = 2 + m.ps.n;
  StSaveItem *items = t5g_calloc(n_items, sizeof *items);
  char **names = t5g_calloc(n_items, sizeof *names);
  int64_t one = 1, lshape[3] = {B, Td, V};
  items[0] = (StSaveItem){"loss", 1, &one, &lossv};
  items[1] = (StSaveItem){"logits", 3, lshape, logits};
  for (int i = 0; i < m.ps.n; i++) {
    names[i] = t5g_malloc(strlen(m.ps.e[i].name) + 6);
    sprintf(names[i], "grad/%s", m.ps.e[i].name);
    items[2 + i] = (StSaveItem){names[i], m.ps.e[i].t.ndim, m.ps.e[i].t.shape, m.ps.e[i].t.grad};
  }
  /* a file, not a directory: write into a temporary directory and move model.safetensors */
  char *tmpdir = t5g_tmp_name(out);
  if (st_save(tmpdir, "model", ST_F32, 0, n_items, items) != 0) t5g_die_last();
  char *tmpfile = t5g_path_join(tmpdir, "model.safetensors");
  if (t5g_rename_durable(tmpfile, out) != 0) t5g_die_last();
  rmdir(tmpdir);
  t5g_tmp_forget(tmpdir);
  printf("dump: loss %.9g over %lld target tokens (normalizer %g) -> %s\n", lossv, (long long)b.n_targets, norm, out);
  for (int i = 0; i < m.ps.n; i++) free(names[i]);
  free(names); free(items); free(logits); free(tmpdir); free(tmpfile);
  graph_free(&g); arena_free(&arena);
  st_close(&br);
  batch_free(&b);
  model_free(&m);
  return 0;
}
