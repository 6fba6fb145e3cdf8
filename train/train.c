/* train.c: `t5gemma train CONFIG.json [key=value ...]`, the training loop (issue 5).
 *
 * One optimizer step:
 *   1. the objective builds grad_accum micro-batches (data/objectives.h) from this rank's part of
 *      the shards (data/shards.h) or from the SFT JSONL;
 *   2. the normaliser = target tokens of all micro-batches on all ranks (the loss is a mean over
 *      target tokens, not over sequences: adamw.h "contract with the loss");
 *   3. forward + backward per micro-batch, gradients accumulate in the flat buffer;
 *      with a teacher (distillation, spec 4.2) the teacher runs in no-grad mode on prefix+target;
 *      its frozen weights stay in bf16 (teacher_dtype, model/weights_bf16.h: 2 bytes per
 *      parameter, exact for the bf16 Gemma 2 releases) or f32, without a gradient buffer;
 *   4. gradients are summed over ranks (MPI allreduce, or reduce-scatter with ZeRO-1);
 *   5. global-norm clipping; a non-finite loss or norm skips the step (counted; after
 *      max_bad_steps in a row the run stops, keeping the last good checkpoint);
 *   6. AdamW with the scheduled learning rate (ZeRO-1: on this rank's slice, then all-gather).
 * The unequal-pair warm-up trains only cross-attention for the first warmup_cross_steps steps
 * (spec 3.1). Every save_every steps (and at the end, and on SIGINT/SIGTERM) rank 0 writes an
 * HDF5 checkpoint (train/checkpoint.h) with everything needed for an exact resume: weights,
 * AdamW state, step, every rank's objective/reader state, counters.
 * Determinism: batches are a pure function of (seed, rank, data); dropout masks of
 * (seed, step, micro-batch, rank); so a resumed run repeats an uninterrupted one bit for bit on
 * the same machine and thread count.
 */
#define _GNU_SOURCE   /* nftw (remove_earlier_run) */
#include "data/objectives.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "model/hf_io.h"
#include "model/memory.h"
#include "model/model.h"
#include "model/runtime.h"
#include "model/weights_bf16.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "train/checkpoint.h"
#include "train/commands.h"
#include "train/dist.h"
#include "train/signals.h"
#include "train/train_config.h"
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_DENOISERS 16

typedef struct Trainer {
  TrainConfig tc;
  Model m;
  Model teacher;
  ModelConfig teacher_cfg;      /* read before the memory check; the weights load after it */
  int has_teacher;
  Tokenizer *tok;                /* NULL for pre-tokenized data without tokenizer= */
  uint64_t tok_hash;
  int64_t tok_vocab;
  ObjSpecials sp;
  int32_t sentinels[OBJ_MAX_SENTINELS];
  Ul2Denoiser den[MAX_DENOISERS];
  int n_den;
  ShardReader *reader;
  SftData *sft, *sft_val;
  Objective *obj;
  AdamW opt;
  LrSchedule sched;
  int64_t lo, hi;               /* this rank's optimizer slice */
  Batch *mb;                    /* grad_accum micro-batches */
  Arena arena;
  Graph g;
  int64_t step;
  int64_t bad_in_row, bad_total;
  int warmup_cross;
  int rank, world;
  FILE *metrics, *log;
  double gemm_gflops;
  int Te, Td;   /* encoder / decoder length of every batch (for step_flops) */
  double t_start;
  int64_t tokens_since_log;
  double time_since_log;
  double last_val_loss;
  int64_t (*reduced)[2];        /* ranges already summed across ranks during backward */
  int n_reduced, cap_reduced;
  char no_val[1024];            /* why there is no validation (eval_every=0), for the log; "" = there is */
  int cleanup;                  /* rank 0, fresh run, before the first step: fail() removes what the run created */
  int made_dir;                 /* run_dir was created by this run */
} Trainer;

static void tlog(Trainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tlog(Trainer *t, const char *fmt, ...) {
  if (t->rank != 0) return;
  va_list ap;
  va_start(ap, fmt); vfprintf(stdout, fmt, ap); va_end(ap);
  fflush(stdout);
  if (t->log) { va_start(ap, fmt); vfprintf(t->log, fmt, ap); va_end(ap); fflush(t->log); }
}

/* A fresh run that fails before its first step leaves nothing behind: its train.log,
 * metrics.jsonl, train_config.json and, when it created it, the run directory. */
static void remove_created(Trainer *t) {
  if (!t->cleanup) return;
  t->cleanup = 0;
  if (t->log) { fclose(t->log); t->log = NULL; }
  if (t->metrics) { fclose(t->metrics); t->metrics = NULL; }
  const char *names[] = {"train.log", "metrics.jsonl", "train_config.json"};
  for (int i = 0; i < 3; i++) {
    char *p = t5g_path_join(t->tc.run_dir, names[i]);
    unlink(p);
    free(p);
  }
  if (t->made_dir) rmdir(t->tc.run_dir);   /* only when empty */
}

static void fail(Trainer *t) {
  remove_created(t);
  if (dist_active()) dist_abort(t5g_last_error());
  t5g_die_last();
}

static int is_encdec_objective(const TrainConfig *tc, const Model *m) {
  if (!strcmp(tc->objective, "causal")) return 0;
  if (!strcmp(tc->objective, "sft")) return m->cfg.kind == MODEL_T5GEMMA;
  return 1;
}

/* ---- model, tokenizer, data --------------------------------------------------------------- */

/* The configured input paths exist (checked before anything is loaded or created, so the error
 * names the key): init, data, tokenizer, teacher, sft_data, sft_val_data. */
static int check_paths(const TrainConfig *tc) {
  const struct { const char *key, *path; } p[] = {
    {"init", tc->init}, {"data", tc->data}, {"tokenizer", tc->tokenizer}, {"teacher", tc->teacher},
    {"sft_data", tc->sft_data}, {"sft_val_data", tc->sft_val_data}};
  for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
    if (p[i].path[0] && !t5g_file_exists(p[i].path))
      return t5g_error("train config: %s=%s: no such file or directory", p[i].key, p[i].path);
  return 0;
}

static void setup_model(Trainer *t) {
  TrainConfig *tc = &t->tc;
  if (tc->init[0]) {
    if (model_load_dir(&t->m, tc->init) != 0) fail(t);
  } else {
    ModelConfig c;
    if (config_resolve(tc->model, &c) != 0) fail(t);
    if (model_init(&t->m, &c) != 0) fail(t);
    model_init_random(&t->m, tc->seed);
  }
  if (tc->encoder_causal) t->m.cfg.encoder_causal = 1;
  if (tc->dropout > 0) { t->m.cfg.enc.dropout_rate = tc->dropout; t->m.cfg.dec.dropout_rate = tc->dropout; }
  t->m.recompute = tc->recompute;
  int kind = t->m.cfg.kind;
  if (!strcmp(tc->objective, "causal") && kind != MODEL_GEMMA2)
    { t5g_error("train: objective causal trains a decoder-only Gemma 2 model, but %s is a T5Gemma model", tc->init[0] ? tc->init : tc->model); fail(t); }
  if ((!strcmp(tc->objective, "prefixlm") || !strcmp(tc->objective, "ul2")) && kind != MODEL_T5GEMMA)
    { t5g_error("train: objective %s trains a T5Gemma encoder-decoder, but %s is a Gemma 2 model (make one with `t5gemma adapt`)",
                tc->objective, tc->init[0] ? tc->init : tc->model); fail(t); }
  t->warmup_cross = tc->warmup_cross_steps;
  if (t->warmup_cross < 0)
    t->warmup_cross = kind == MODEL_T5GEMMA && t->m.cfg.enc.hidden_size != t->m.cfg.dec.hidden_size ? 1000 : 0;
  if (tc->teacher[0]) {   /* its config now; its weights after the memory check (load_teacher) */
    if (config_load(tc->teacher, &t->teacher_cfg) != 0) fail(t);
    if (t->teacher_cfg.kind != MODEL_GEMMA2) { t5g_error("%s: the distillation teacher must be a Gemma 2 (decoder-only) checkpoint", tc->teacher); fail(t); }
    if (t->teacher_cfg.dec.vocab_size != t->m.cfg.dec.vocab_size)
      { t5g_error("%s: teacher vocab_size %d differs from the student's %d", tc->teacher, t->teacher_cfg.dec.vocab_size, t->m.cfg.dec.vocab_size); fail(t); }
    t->has_teacher = 1;
  }
}

/* The distillation teacher's weights (spec 4.2): frozen, for no-grad use, with no gradient
 * buffer; teacher_dtype bf16 keeps them as bf16 (copied from BF16 checkpoints, rounded to nearest
 * even from F32 ones; model/weights_bf16.h), f32 as f32. */
static void load_teacher(Trainer *t) {
  if (!t->has_teacher) return;
  double t0 = t5g_now();
  int bf16 = !strcmp(t->tc.teacher_dtype, "bf16");
  if (model_load_weights(&t->teacher, t->tc.teacher, bf16 ? WEIGHTS_BF16 : WEIGHTS_F32) != 0) fail(t);
  char b1[32];
  tlog(t, "teacher: %s (Gemma 2, %.1fM parameters), %s weights (%s) loaded in %.1f s\n", t->tc.teacher,
       params_count(&t->teacher.ps, NULL) / 1e6, bf16 ? "bf16" : "f32",
       t5g_fmt_bytes((double)memory_teacher_weights(&t->teacher.cfg, bf16), b1, sizeof b1), t5g_now() - t0);
}

static void setup_tokenizer(Trainer *t) {
  TrainConfig *tc = &t->tc;
  int need = !strcmp(tc->objective, "ul2") || !strcmp(tc->objective, "sft");
  if (!tc->tokenizer[0]) {
    /* Pre-tokenized data (`data prepare --format tokens`): <pad>/<eos>/<bos> ids come from the
     * dataset's index.json. Sentinels (UL2) and the chat template (SFT) need the tokenizer. */
    if (need) { t5g_error("train: objective %s needs tokenizer (special tokens are looked up by name)", tc->objective); fail(t); }
    DatasetIndex *ix = dataset_index_load(tc->data);
    if (!ix) fail(t);
    const ShardTokenizerInfo *ti = &ix->tok;
    if (ti->bos_id < 0 || ti->eos_id < 0 || ti->pad_id < 0) {
      t5g_error("%s: index.json records no <bos>/<eos>/<pad> ids; set tokenizer=PATH (or prepare with --bos-id/--eos-id/--pad-id)", tc->data);
      fail(t);
    }
    memset(&t->sp, 0, sizeof t->sp);
    t->sp.pad = ti->pad_id; t->sp.eos = ti->eos_id; t->sp.bos = ti->bos_id;
    t->sp.start_of_turn = t->sp.end_of_turn = -1;
    t->tok_hash = ti->hash;
    t->tok_vocab = ti->vocab_size;
    dataset_index_free(ix);
  } else {
    t->tok = tokenizer_load(tc->tokenizer);
    if (!t->tok) fail(t);
    t->tok_hash = tokenizer_hash(t->tok);
    t->tok_vocab = tokenizer_vocab_size(t->tok);
    char fmt[64];
    snprintf(fmt, sizeof fmt, "%s%%d>", tc->sentinel_prefix);
    int want = !strcmp(tc->objective, "ul2") ? OBJ_MAX_SENTINELS : 0;
    if (obj_specials_from_tokenizer(t->tok, fmt, t->sentinels, want, &t->sp) < 0) fail(t);
    if (!strcmp(tc->objective, "ul2") && t->sp.n_sentinels == 0) { t5g_error("train: objective ul2 needs sentinel tokens %s (none in %s)", fmt, tc->tokenizer); fail(t); }
  }
  if (t->tok_vocab > t->m.cfg.dec.vocab_size) {
    t5g_error("train: the tokenizer has %lld pieces but the model's vocab_size is %d", (long long)t->tok_vocab, t->m.cfg.dec.vocab_size);
    fail(t);
  }
}

static ShardReader *open_reader(Trainer *t, const char *split, int rank, int world, uint64_t seed, int prefetch) {
  ShardReaderOpts o = shard_reader_default_opts();
  o.seed = seed;
  o.rank = rank;
  o.world_size = world;
  o.prefetch_docs = prefetch;
  ShardReader *r = shard_reader_open(t->tc.data, split, &o);
  if (!r) return NULL;
  if (shard_reader_check_tokenizer(r, t->tok_hash, t->tok_vocab) != 0) { shard_reader_close(r); return NULL; }
  return r;
}

/* A builder of the configured objective over `src` (stream objectives) or `sft` data. */
static Objective *make_objective(Trainer *t, DocSource src, const DocSeeker *seeker, SftData *sft, uint64_t seed, int rank, int world, int epochs) {
  TrainConfig *tc = &t->tc;
  if (!strcmp(tc->objective, "causal")) {
    CausalOptions o = obj_causal_defaults(tc->seq_len);
    o.segments = tc->packed;
    return obj_causal_new(&o, &t->sp, src, seeker, seed);
  }
  if (!strcmp(tc->objective, "prefixlm")) {
    PrefixLMOptions o = obj_prefixlm_defaults(tc->enc_len, tc->dec_len);
    if (tc->prefixlm_random_split) o.random_density = 0.5;
    o.pack = tc->prefixlm_pack;
    return obj_prefixlm_new(&o, &t->sp, src, seeker, seed);
  }
  if (!strcmp(tc->objective, "ul2")) {
    Ul2Options o = obj_ul2_defaults(tc->enc_len, tc->dec_len, t->den, t->n_den);
    return obj_ul2_new(&o, &t->sp, src, seeker, seed);
  }
  SftOptions o = obj_sft_defaults(t->m.cfg.kind == MODEL_T5GEMMA ? tc->enc_len : 0, t->m.cfg.kind == MODEL_T5GEMMA ? tc->dec_len : tc->seq_len);
  o.encdec = t->m.cfg.kind == MODEL_T5GEMMA;
  o.rank = rank;
  o.world_size = world;
  o.epochs = epochs;
  if (epochs) o.shuffle = 0;
  return obj_sft_new(&o, sft, sft_encoder_tokenizer(t->tok), &t->sp, seed);
}

static uint64_t rank_seed(uint64_t seed, int rank) { return seed + 0x9e3779b97f4a7c15ULL * (uint64_t)rank; }

static void setup_data(Trainer *t) {
  TrainConfig *tc = &t->tc;
  if (!strcmp(tc->objective, "ul2")) {
    t->n_den = ul2_parse(tc->ul2_mixture, t->den, MAX_DENOISERS);
    if (t->n_den < 0 || obj_resolve_modes(t->den, t->n_den, t->tok) != 0) fail(t);
  }
  if (!strcmp(tc->objective, "sft")) {
    t->sft = sft_open(tc->sft_data);
    if (!t->sft) fail(t);
    if (tc->sft_val_data[0] && !(t->sft_val = sft_open(tc->sft_val_data))) fail(t);
    t->obj = make_objective(t, (DocSource){0}, NULL, t->sft, tc->seed, t->rank, t->world, 0);
  } else {
    t->reader = open_reader(t, tc->train_split, t->rank, t->world, tc->seed, 64);
    if (!t->reader) fail(t);
    DocSeeker sk = obj_shard_seeker(t->reader);
    t->obj = make_objective(t, shard_reader_source(t->reader), &sk, NULL, rank_seed(tc->seed, t->rank), t->rank, t->world, 0);
  }
  if (!t->obj) fail(t);
  t->mb = t5g_calloc(tc->grad_accum, sizeof(Batch));
  for (int k = 0; k < tc->grad_accum; k++) obj_batch_alloc(t->obj, &t->mb[k], tc->batch_size);
}

/* The configured lengths must fit the model's position range (max_position_embeddings of the
 * stack that reads them): RoPE itself has no limit, but a model is only trained and released for
 * positions below it. Errors name the key, its value and the model's limit. */
static int check_lengths(const Trainer *t) {
  const TrainConfig *tc = &t->tc;
  const ModelConfig *mc = &t->m.cfg;
  const char *name = tc->init[0] ? tc->init : tc->model;
  if (is_encdec_objective(tc, &t->m)) {
    if (tc->enc_len > mc->enc.max_position_embeddings)
      return t5g_error("train config: enc_len=%d is larger than the encoder's max_position_embeddings %d (%s)", tc->enc_len, mc->enc.max_position_embeddings, name);
    if (tc->dec_len > mc->dec.max_position_embeddings)
      return t5g_error("train config: dec_len=%d is larger than the decoder's max_position_embeddings %d (%s)", tc->dec_len, mc->dec.max_position_embeddings, name);
  } else if (tc->seq_len > mc->dec.max_position_embeddings) {
    return t5g_error("train config: seq_len=%d is larger than the model's max_position_embeddings %d (%s)", tc->seq_len, mc->dec.max_position_embeddings, name);
  }
  return 0;
}

static Objective *make_objective(Trainer *t, DocSource src, const DocSeeker *seeker, SftData *sft, uint64_t seed, int rank, int world, int epochs);

/* Is there validation data? Checked at start, before the run directory is touched: the
 * validation split must exist in the dataset, open, and give at least one batch with target
 * tokens (on some rank) for the objective; for sft, sft_val_data must give one. Returns 1 when
 * it does, 0 with the reason in why[] when it does not (missing or misnamed split, missing shard,
 * empty split, no batch); a corrupted frame is an error (fail). Collective under MPI. */
static int validation_available(Trainer *t, char *why, size_t n) {
  TrainConfig *tc = &t->tc;
  why[0] = 0;
  ShardReader *r = NULL;
  Objective *o = NULL;
  if (!strcmp(tc->objective, "sft")) {
    if (!t->sft_val) { snprintf(why, n, "sft_val_data is empty (no validation JSONL)"); return 0; }
    o = make_objective(t, (DocSource){0}, NULL, t->sft_val, tc->seed, t->rank, t->world, 1);
  } else {
    DatasetIndex *ix = dataset_index_load(tc->data);
    if (!ix) fail(t);
    const SplitInfo *sp = dataset_index_split(ix, tc->val_split);
    if (!sp || sp->documents == 0) {
      size_t k = 0;
      k += snprintf(why + k, n - k, sp ? "split \"%s\" of dataset %s is empty (0 documents; splits: " : "dataset %s has no split \"%s\" (splits: ",
                    sp ? tc->val_split : tc->data, sp ? tc->data : tc->val_split);
      for (int i = 0; i < ix->n_splits && k < n; i++)
        k += snprintf(why + k, n - k, "%s%s with %lld documents", i ? ", " : "", ix->splits[i].name, (long long)ix->splits[i].documents);
      if (k < n) snprintf(why + k, n - k, "%s)", ix->n_splits ? "" : "none");
      dataset_index_free(ix);
      return 0;
    }
    int64_t docs = sp->documents;
    dataset_index_free(ix);
    r = open_reader(t, tc->val_split, t->rank, t->world, tc->seed, 0);
    int64_t bad = r ? 0 : 1;
    dist_allreduce_sum_i64(&bad, 1);
    if (bad) {
      snprintf(why, n, "split \"%s\" of dataset %s (%lld documents in index.json) cannot be read: %s", tc->val_split, tc->data,
               (long long)docs, r ? "on another rank" : t5g_last_error());
      if (r) shard_reader_close(r);
      return 0;
    }
    o = make_objective(t, shard_reader_source_epoch(r), NULL, NULL, rank_seed(tc->seed ^ 0x7a1, t->rank), t->rank, t->world, 1);
  }
  if (!o) fail(t);
  Batch b;
  obj_batch_alloc(o, &b, tc->batch_size);
  int rc = obj_next_batch(o, &b);
  if (rc < 0) fail(t);   /* a corrupted frame: an error, not a missing split */
  int64_t got = rc > 0 && b.n_targets > 0;
  batch_free(&b);
  obj_free(o);
  if (r) shard_reader_close(r);
  dist_allreduce_sum_i64(&got, 1);
  if (!got) {
    if (!strcmp(tc->objective, "sft")) snprintf(why, n, "%s gives no validation example for objective sft", tc->sft_val_data);
    else snprintf(why, n, "split \"%s\" of dataset %s gives no validation batch for objective %s (documents too short?)",
                  tc->val_split, tc->data, tc->objective);
  }
  return got > 0;
}

/* 1 when a and b name the same existing directory. */
static int same_dir(const char *a, const char *b) {
  char ra[PATH_MAX], rb[PATH_MAX];
  if (!realpath(a, ra) || !realpath(b, rb)) return strcmp(a, b) == 0;
  return strcmp(ra, rb) == 0;
}

/* A fresh run (or a resumed one writing into another directory) must not mix its checkpoints with
 * an earlier run's: export and average_last would take the newest files, whichever run wrote
 * them. Refused (touching nothing) unless overwrite=1. */
static int check_run_dir(const TrainConfig *tc) {
  if (tc->resume[0] && same_dir(tc->resume, tc->run_dir)) return 0;
  CkptFile *f = NULL;
  int n = 0;
  if (ckpt_list(tc->run_dir, &f, &n) != 0) return -1;
  int r = 0;
  if (n > 0 && !tc->overwrite)
    r = t5g_error("train: run_dir %s already holds %d checkpoint(s) of an earlier run (newest %s, step %lld); a new run there would "
                  "mix its checkpoints with them (export and average_last take the newest files). Resume that run (resume=%s), "
                  "choose another run_dir, or pass overwrite=1 to delete the earlier run's checkpoints, hf/, train.log, "
                  "metrics.jsonl and train_config.json first", tc->run_dir, n, f[n - 1].path, (long long)f[n - 1].step, tc->run_dir);
  ckpt_list_free(f, n);
  return r;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st; (void)ftw;
  return (flag == FTW_DP ? rmdir(path) : unlink(path)) != 0 ? -1 : 0;
}

/* overwrite=1: delete the earlier run in dir: checkpoints (ckpt-*.h5 and their temporaries
 * ckpt-*.h5.tmp*), hf/, train.log, metrics.jsonl, train_config.json. Other files stay.
 * Returns the number of checkpoint files deleted, or -1 with an error naming the file. */
static int remove_earlier_run(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 0;   /* no directory: nothing to delete */
  int n = 0, rc = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    const char *nm = e->d_name;
    size_t L = strlen(nm);
    int ck = !strncmp(nm, "ckpt-", 5) && ((L > 8 && !strcmp(nm + L - 3, ".h5")) || strstr(nm, ".h5.tmp"));
    if (!ck) continue;
    char *p = t5g_path_join(dir, nm);
    if (unlink(p) != 0) rc = t5g_error("%s: cannot delete (overwrite=1): %s", p, strerror(errno));
    else n++;
    free(p);
  }
  closedir(d);
  const char *files[] = {"train.log", "metrics.jsonl", "train_config.json"};
  for (int i = 0; i < 3 && rc == 0; i++) {
    char *p = t5g_path_join(dir, files[i]);
    if (unlink(p) != 0 && errno != ENOENT) rc = t5g_error("%s: cannot delete (overwrite=1): %s", p, strerror(errno));
    free(p);
  }
  char *hf = t5g_path_join(dir, "hf");
  if (rc == 0 && t5g_file_exists(hf) && nftw(hf, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
    rc = t5g_error("%s: cannot delete (overwrite=1): %s", hf, strerror(errno));
  free(hf);
  return rc ? -1 : n;
}

/* ---- losses ------------------------------------------------------------------------------- */

/* Teacher targets for distillation (spec 4.2): the decoder-only teacher reads each row's prefix
 * (the encoder's real tokens) followed by its target tokens, in no-grad mode; its distribution at
 * the position before target t is the soft target of the student's row t. Returns k.
 * Memory, all in the step's arena (model/memory.h "teacher"; nothing is malloc'ed): the targets
 * ids and probs [B·Td, k] stay until the step's graph_reset (the student's loss reads them
 * in forward and backward); the teacher's batch, its forward (one layer at a time), the gathered
 * rows [B·Td, d_T] and lm_head_topk's logits chunk are released before the student's forward. */
static int teacher_targets(Trainer *t, const Batch *b, int32_t **ids_out, float **probs_out) {
  TrainConfig *tc = &t->tc;
  Arena *ar = t->g.arena;
  int B = b->B, Te = b->Te, Td = b->Td, L = Te + Td;
  int64_t V = t->m.cfg.dec.vocab_size, d = t->teacher.cfg.dec.hidden_size, N = (int64_t)B * Td, BL = (int64_t)B * L;
  int k = tc->distill_topk > 0 && tc->distill_topk < V ? tc->distill_topk : (int)V;
  *ids_out = k < V ? arena_alloc(ar, N * (int64_t)k * sizeof(int32_t)) : NULL;
  *probs_out = arena_alloc(ar, N * (int64_t)k * sizeof(float));
  ArenaMark mk = arena_mark(ar);
  Batch tb = {.B = B, .Te = 0, .Td = L};
  tb.dec_ids = arena_calloc(ar, BL * sizeof(int32_t));
  tb.dec_mask = arena_calloc(ar, BL);
  tb.dec_pos = arena_calloc(ar, BL * sizeof(int32_t));
  tb.labels = arena_calloc(ar, BL * sizeof(int32_t));
  int *plen = arena_calloc(ar, B * sizeof(int));
  for (int r = 0; r < B; r++) {
    int p = 0, n = 0;
    for (int i = 0; i < Te; i++) if (b->enc_mask[(int64_t)r * Te + i]) tb.dec_ids[(int64_t)r * L + p++] = b->enc_ids[(int64_t)r * Te + i];
    plen[r] = p;
    for (int i = 0; i < Td; i++) if (b->labels[(int64_t)r * Td + i] != -100) tb.dec_ids[(int64_t)r * L + p + n++] = b->labels[(int64_t)r * Td + i];
    for (int i = 0; i < L; i++) { tb.dec_mask[(int64_t)r * L + i] = i < p + n; tb.dec_pos[(int64_t)r * L + i] = i; tb.labels[(int64_t)r * L + i] = -100; }
  }
  int saved = t->g.grad_enabled;
  t->g.grad_enabled = 0;
  Tensor *h = model_hidden(&t->teacher, &t->g, &tb);
  float *rows = arena_alloc(ar, N * d * sizeof(float));
  for (int r = 0; r < B; r++)
    for (int i = 0; i < Td; i++) {
      int pos = plen[r] - 1 + i;
      float *dst = rows + ((int64_t)r * Td + i) * d;
      if (b->labels[(int64_t)r * Td + i] == -100 || pos < 0) memset(dst, 0, d * sizeof(float));
      else memcpy(dst, h->data + ((int64_t)r * L + pos) * d, d * sizeof(float));
    }
  lm_head_topk(&t->teacher, rows, N, (float)tc->distill_temperature, k, *ids_out, *probs_out, ar);   /* f32 or bf16 head */
  arena_release(ar, mk);
  t->g.grad_enabled = saved;
  return k;
}

/* Forward and loss of one micro-batch (records the tape). */
static Tensor *micro_loss(Trainer *t, const Batch *b, float norm, LossStats *st, int32_t **tids, float **tprobs) {
  if (!t->has_teacher) return model_loss(&t->m, &t->g, b, norm, st, NULL, NULL);
  int k = teacher_targets(t, b, tids, tprobs);
  Tensor *h = model_hidden(&t->m, &t->g, b);
  return op_softcap_ce_distill(&t->g, h, t->m.dec.embed, b->labels, *tids, *tprobs, k, t->m.cfg.dec.final_logit_softcapping,
                               (float)t->tc.distill_temperature, (float)t->tc.distill_alpha, norm, st);
}

/* Validation: the mean target-token loss over eval_batches batches of the validation split,
 * the same batches every time (a fresh builder with a fixed seed over one epoch). */
static double validate(Trainer *t, int64_t *n_tokens) {
  TrainConfig *tc = &t->tc;
  Objective *o = NULL;
  ShardReader *r = NULL;
  if (!strcmp(tc->objective, "sft")) {
    if (!t->sft_val) { *n_tokens = 0; return NAN; }
    o = make_objective(t, (DocSource){0}, NULL, t->sft_val, tc->seed, t->rank, t->world, 1);
  } else {
    r = open_reader(t, tc->val_split, t->rank, t->world, tc->seed, 0);
    if (!r) { *n_tokens = 0; return NAN; }    /* no validation split */
    o = make_objective(t, shard_reader_source_epoch(r), NULL, NULL, rank_seed(tc->seed ^ 0x7a1, t->rank), t->rank, t->world, 1);
  }
  if (!o) fail(t);
  Batch b;
  obj_batch_alloc(o, &b, tc->batch_size);
  double sums[2] = {0, 0};
  int saved = t->g.grad_enabled;
  t->g.grad_enabled = 0;
  for (int i = 0; i < tc->eval_batches; i++) {
    int rc = obj_next_batch(o, &b);
    if (rc < 0) fail(t);
    if (rc == 0) break;
    LossStats st;
    graph_reset(&t->g);
    model_loss(&t->m, &t->g, &b, 1.0f, &st, NULL, NULL);
    sums[0] += st.sum_nll;
    sums[1] += (double)st.n_tokens;
  }
  graph_reset(&t->g);
  t->g.grad_enabled = saved;
  dist_allreduce_sum_f64(sums, 2);
  batch_free(&b);
  obj_free(o);
  if (r) shard_reader_close(r);
  *n_tokens = (int64_t)sums[1];
  return sums[1] > 0 ? sums[0] / sums[1] : NAN;
}

/* ---- checkpoints -------------------------------------------------------------------------- */

static uint64_t weights_checksum(const ParamStore *ps) { return ckpt_checksum(ps->data, (size_t)ps->n_total * sizeof(float)); }

static int save_checkpoint(Trainer *t) {
  TrainConfig *tc = &t->tc;
  /* every rank's objective state (it holds the reader position) goes into the file */
  ObjState st;
  if (obj_save(t->obj, &st) != 0) return -1;
  int64_t *all = t5g_calloc((size_t)t->world * OBJ_STATE_LEN, sizeof(int64_t));
  memcpy(all + (int64_t)t->rank * OBJ_STATE_LEN, st.v, sizeof st.v);
  dist_allreduce_sum_i64(all, t->world * OBJ_STATE_LEN);
  /* optimizer moments: under ZeRO-1 each rank holds a slice; they are gathered to rank 0 one
   * moment at a time into the gradient buffer (free between steps: train_step zeroes it before
   * use) and written from there, so saving needs no memory beyond the training state. Every rank
   * takes part in both gathers whatever happens on rank 0 (they are collective). */
  int zero = tc->zero1 && t->world > 1;
  int rc = 0;
  Ckpt *c = NULL;
  char *path = NULL;
  if (t->rank == 0) {
    path = ckpt_path_for_step(tc->run_dir, t->step);
    c = ckpt_create(path, t->step);
    rc = !c || ckpt_put_params(c, &t->m.ps);
  }
  if (zero) {
    for (int which = 0; which < 2; which++) {
      dist_gather_slices(which == 0 ? t->opt.m : t->opt.v, t->rank == 0 ? t->m.ps.grad : NULL, t->m.ps.n_total);
      if (t->rank == 0 && !rc)
        rc = ckpt_put_moment(c, &t->m.ps, which, t->m.ps.grad, t->opt.entry_step, t->opt.step, &t->opt.cfg) != 0;
    }
  }
  if (t->rank == 0) {
    char *tjs = train_config_to_json(tc), *mjs = config_to_json(&t->m.cfg);
    int64_t counters[4] = {t->bad_in_row, t->bad_total, t->world, zero};
    rc = rc || (!zero && ckpt_put_adamw(c, &t->m.ps, &t->opt)) ||
         ckpt_put_schedule(c, &t->sched) || ckpt_put_i64s(c, "objective_states", all, (int64_t)t->world * OBJ_STATE_LEN) ||
         ckpt_put_i64s(c, "counters", counters, 4) || ckpt_put_str(c, CKPT_TRAIN_CONFIG, tjs) ||
         ckpt_put_str(c, CKPT_MODEL_CONFIG, mjs) || ckpt_put_tokenizer_id(c, t->tok_hash, t->tok_vocab);
    if (rc) { if (c) ckpt_abandon(c); }
    else rc = ckpt_commit(c);
    if (rc == 0 && tc->keep_last > 0) rc = ckpt_prune(tc->run_dir, tc->keep_last) < 0;   /* returns the files deleted */
    if (rc == 0) tlog(t, "checkpoint: %s\n", path);
    free(tjs); free(mjs);
  }
  free(path);
  int64_t r64 = rc ? 1 : 0;
  dist_allreduce_sum_i64(&r64, 1);
  free(all);
  if (r64 && t->rank != 0) t5g_error("checkpoint failed on rank 0");
  return r64 ? -1 : 0;
}

typedef struct LoadCtx { Trainer *t; } LoadCtx;

/* Resume on another world size (stream objectives over the shard reader): the objective state
 * for this rank, from the states all[old_world][OBJ_STATE_LEN] of the old ranks.
 * Old rank r read the epoch order at positions base + r + k*W (data/shards.h), k < next_r, where
 * next_r counts the document it holds as read (v[3]: a document a packing builder had partly used
 * is dropped; unpacked PrefixLM rows use whole documents). The new ranks start a fresh split at
 * base = the position after the last document any old rank read (the latest (epoch, position)
 * over ranks): nothing is read twice; ranks of packing objectives read different numbers of
 * documents, so the few unread documents of lagging ranks before that point are skipped
 * (*skipped counts them). With unpacked rows in lock-step nothing is skipped and the run
 * continues exactly as if it had run on the new world size from the start.
 * The builder's Rng continues old rank r's stream for new rank r < old_world; higher ranks get a
 * fresh stream from (seed, rank, step). Documents read counters restart from the old rank 0's. */
static int resplit_state(Trainer *t, const int64_t *all, int64_t old_world, int64_t step, ObjState *out, int64_t *skipped) {
  int64_t N = shard_reader_num_docs(t->reader), W = old_world;
  if (W < 1 || W > (1 << 24)) return t5g_error("checkpoint: counters give a world size of %lld (expected 1 to 16777216)", (long long)W);
  uint64_t best_epoch = 0, best_after = 0;
  uint64_t *ep = t5g_malloc((size_t)W * 5 * sizeof(uint64_t)), *after = ep + W, *base = ep + 2 * W, *next = ep + 3 * W, *share = ep + 4 * W;
  for (int64_t r = 0; r < W; r++) {
    const int64_t *v = all + r * OBJ_STATE_LEN;
    if (v[0] != all[0] || v[12] != r || v[13] != W)
      return free(ep), t5g_error("checkpoint: objective state of rank %lld of %lld is inconsistent (kind %lld, rank %lld, world size %lld)",
                       (long long)r, (long long)W, (long long)v[0], (long long)v[12], (long long)v[13]);
    uint64_t e = (uint64_t)v[9], b = (uint64_t)v[10], p = (uint64_t)v[11];
    uint64_t n = p + (v[3] ? 1 : 0);
    uint64_t per = b < (uint64_t)N ? ((uint64_t)N - b) / (uint64_t)W : 0;
    /* a position at the end of the rank's share means its next document opened the next epoch */
    if (p >= per) { e++; b = 0; n = v[3] ? 1 : 0; }
    ep[r] = e; base[r] = b; next[r] = n; share[r] = per;
    after[r] = n > 0 ? b + (uint64_t)r + (n - 1) * (uint64_t)W + 1 : b;
    if (r == 0 || e > best_epoch || (e == best_epoch && after[r] > best_after)) { best_epoch = e; best_after = after[r]; }
  }
  *skipped = 0;
  for (int64_t r = 0; r < W; r++) {
    uint64_t k = next[r], b = base[r];
    if (ep[r] != best_epoch) {            /* still in the previous epoch: the rest of its share, then the new epoch's */
      *skipped += (int64_t)(share[r] > k ? share[r] - k : 0);
      k = 0; b = 0;
    }
    for (; b + (uint64_t)r + k * (uint64_t)W < best_after; k++) (*skipped)++;
  }
  free(ep);
  memset(out, 0, sizeof *out);
  const int64_t *own = all + (t->rank < W ? t->rank : 0) * OBJ_STATE_LEN;
  out->v[0] = all[0];
  if (t->rank < W) out->v[1] = own[1];
  else { Rng g; rng_seed(&g, rank_seed(t->tc.seed, t->rank) ^ splitmix64((uint64_t)step)); out->v[1] = (int64_t)g.s; }
  out->v[2] = own[2];
  out->v[6] = all[6];
  out->v[8] = all[8];                                           /* reader seed */
  out->v[9] = (int64_t)best_epoch; out->v[10] = (int64_t)best_after; out->v[11] = 0;
  out->v[12] = t->rank; out->v[13] = t->world;
  return 0;
}

static int load_checkpoint(Ckpt *c, void *ud) {
  Trainer *t = ((LoadCtx *)ud)->t;
  uint64_t h; int64_t vs;
  if (ckpt_get_tokenizer_id(c, &h, &vs) != 0) return -1;
  if (h != t->tok_hash) return t5g_error("%s: written with another tokenizer (hash %016llx, this run's has %016llx)",
                                         ckpt_path(c), (unsigned long long)h, (unsigned long long)t->tok_hash);
  if (ckpt_get_params(c, &t->m.ps) != 0) return -1;
  int64_t counters[4];
  if (ckpt_get_i64s(c, "counters", counters, 4) != 0) return -1;
  int64_t old_world = counters[2];
  /* AdamW moments of this rank's slice (the whole buffer without ZeRO-1): a checkpoint of any
   * world size resumes on any other */
  if (ckpt_get_adamw(c, &t->m.ps, &t->opt) != 0) return -1;
  int64_t n = ckpt_len_i64s(c, "objective_states");
  if (n != old_world * OBJ_STATE_LEN) return t5g_error("%s: objective_states has %lld values, expected %lld", ckpt_path(c), (long long)n, (long long)(old_world * OBJ_STATE_LEN));
  int64_t *all = t5g_malloc(n * sizeof(int64_t));
  if (ckpt_get_i64s(c, "objective_states", all, n) != 0) { free(all); return -1; }
  ObjState st;
  if (old_world == t->world) {
    memcpy(st.v, all + (int64_t)t->rank * OBJ_STATE_LEN, sizeof st.v);
    if (obj_restore(t->obj, &st) != 0) { free(all); return -1; }
  } else if (t->reader) {
    /* another world size: re-split the global document order (resplit_state) */
    int64_t skipped = 0;
    if (resplit_state(t, all, old_world, ckpt_step(c), &st, &skipped) != 0 || obj_restore(t->obj, &st) != 0) { free(all); return -1; }
    tlog(t, "resume: data re-split from %lld to %d ranks at epoch %lld, document %lld of the epoch order "
         "(%lld document(s) of lagging ranks skipped; partly used documents dropped)\n", (long long)old_world, t->world,
         (long long)st.v[9], (long long)st.v[10], (long long)skipped);
  } else {
    free(all);
    return t5g_error("%s: written by %lld ranks; sft runs resume on the same number of ranks", ckpt_path(c), (long long)old_world);
  }
  free(all);
  t->step = ckpt_step(c);
  t->bad_in_row = counters[0];
  t->bad_total = counters[1];
  return 0;
}

/* The first architectural difference between two model configs (the fields that decide the
 * parameters' names, shapes and meaning; dropout, initializer_range and encoder_causal are
 * training choices and may change on resume): writes "FIELD is A here, B in the run" to out and
 * returns 1, or returns 0 when they match. */
static int model_config_diff(const ModelConfig *a, const ModelConfig *b, char *out, size_t n) {
  if (a->kind != b->kind) {
    snprintf(out, n, "the model is a %s here, a %s in the run", a->kind == MODEL_T5GEMMA ? "T5Gemma" : "Gemma 2", b->kind == MODEL_T5GEMMA ? "T5Gemma" : "Gemma 2");
    return 1;
  }
#define CMP_I(pre, f, x, y) if ((x).f != (y).f) { snprintf(out, n, "%s" #f " is %d here, %d in the run", pre, (int)(x).f, (int)(y).f); return 1; }
#define CMP_F(pre, f, x, y) if ((x).f != (y).f) { snprintf(out, n, "%s" #f " is %g here, %g in the run", pre, (double)(x).f, (double)(y).f); return 1; }
  for (int k = a->kind == MODEL_T5GEMMA ? 0 : 1; k < 2; k++) {
    const StackConfig *x = k ? &a->dec : &a->enc, *y = k ? &b->dec : &b->enc;
    const char *pre = a->kind != MODEL_T5GEMMA ? "" : k ? "decoder." : "encoder.";
    CMP_I(pre, vocab_size, *x, *y) CMP_I(pre, hidden_size, *x, *y) CMP_I(pre, intermediate_size, *x, *y)
    CMP_I(pre, num_hidden_layers, *x, *y) CMP_I(pre, num_attention_heads, *x, *y) CMP_I(pre, num_key_value_heads, *x, *y)
    CMP_I(pre, head_dim, *x, *y) CMP_I(pre, cross_attention_hidden_size, *x, *y) CMP_I(pre, sliding_window, *x, *y)
    CMP_I(pre, max_position_embeddings, *x, *y) CMP_F(pre, query_pre_attn_scalar, *x, *y) CMP_F(pre, rope_theta, *x, *y)
    CMP_F(pre, rms_norm_eps, *x, *y) CMP_F(pre, attn_logit_softcapping, *x, *y) CMP_F(pre, final_logit_softcapping, *x, *y)
    if (strcmp(x->hidden_activation, y->hidden_activation))
      { snprintf(out, n, "%shidden_activation is %s here, %s in the run", pre, x->hidden_activation, y->hidden_activation); return 1; }
    for (int i = 0; i < x->num_hidden_layers; i++)
      if (x->layer_sliding[i] != y->layer_sliding[i]) {
        snprintf(out, n, "%slayer_types[%d] is %s here, %s in the run", pre, i, x->layer_sliding[i] ? "sliding_attention" : "full_attention",
                 y->layer_sliding[i] ? "sliding_attention" : "full_attention");
        return 1;
      }
  }
  CMP_I("", tie_word_embeddings, *a, *b) CMP_I("", embed_scale_bf16, *a, *b)
#undef CMP_I
#undef CMP_F
  return 0;
}

/* Resume with another model (init= or model= on the command line): the newest checkpoint that
 * opens stores the run's model config; a configured model that differs is an error naming the
 * first differing field (the checkpoints are fine; they belong to another model). A checkpoint
 * whose config cannot be read is left to ckpt_load_latest (damage is reported there). */
static int check_resume_model(Trainer *t) {
  const TrainConfig *tc = &t->tc;
  int64_t step = 0;
  char *path = ckpt_find_latest(tc->resume, &step);
  if (!path) return 0;
  Ckpt *c = ckpt_open(path);
  char *js = c && ckpt_has(c, CKPT_MODEL_CONFIG) ? ckpt_get_str(c, CKPT_MODEL_CONFIG) : NULL;
  if (c) ckpt_close(c);
  ModelConfig run;
  char diff[256];
  int r = 0;
  if (js && config_parse(js, path, &run) == 0 && model_config_diff(&t->m.cfg, &run, diff, sizeof diff))
    r = t5g_error("train: the configured model (%s%s) does not match the model of the run in %s (as stored in %s): %s. "
                  "The checkpoints are intact; resume with the run's own model (drop init=/model= from the command line), "
                  "or start a new run in another run_dir", tc->init[0] ? "init=" : "model=", tc->init[0] ? tc->init : tc->model,
                  tc->resume, path, diff);
  free(js);
  free(path);
  return r;
}

/* ---- the loop ----------------------------------------------------------------------------- */

/* After a resume, drop metrics.jsonl lines of steps past the checkpoint (written by the run that
 * crashed after it), so the file reads as one uninterrupted run. */
static void trim_metrics(Trainer *t) {
  char *mp = t5g_path_join(t->tc.run_dir, "metrics.jsonl");
  fclose(t->metrics);
  size_t n = 0;
  char *txt = t5g_file_exists(mp) ? t5g_read_file(mp, &n) : NULL;
  if (txt) {
    T5gOutFile o;
    if (t5g_open_out(&o, mp) == 0) {
      for (char *line = txt, *nl; *line; line = nl ? nl + 1 : line + strlen(line)) {
        nl = strchr(line, '\n');
        const char *k = strstr(line, "\"step\": ");
        long long st = k ? atoll(k + 8) : 0;
        if (st <= t->step) fwrite(line, 1, nl ? (size_t)(nl - line + 1) : strlen(line), o.f);
        if (!nl) break;
      }
      t5g_commit_file(&o);
    }
    free(txt);
  }
  t->metrics = fopen(mp, "a");
  if (!t->metrics) { t5g_error("%s: cannot reopen", mp); fail(t); }
  free(mp);
}

static void set_warmup(Trainer *t) {
  int on = t->step < t->warmup_cross;
  static int state = -1;
  if (on != state) {
    model_set_cross_attn_only(&t->m, on);
    if (on) tlog(t, "warm-up: training cross-attention only (%.2fM of %.1fM parameters) until step %d (spec 3.1)\n",
                 params_count_trainable(&t->m.ps) / 1e6, params_count(&t->m.ps, NULL) / 1e6, t->warmup_cross);
    else if (state == 1) tlog(t, "warm-up over at step %lld: training all parameters (%.1fM trainable)\n", (long long)t->step,
                              params_count_trainable(&t->m.ps) / 1e6);
    state = on;
  }
}

/* Model FLOPs of `rows` examples with `targets` labelled tokens, forward + backward (2x forward),
 * model/config.c's accounting: the LM head runs on labelled rows only (op_softcap_ce gathers
 * them), so its 2·V·d per token is counted per target. During the cross-attention-only warm-up
 * the step does less: the forward, the decoder's activation gradients (1x its forward; the frozen
 * encoder gets none) and the cross-attention projections' weight gradients, and for the LM head
 * the forward and dh but no dE. */
static double step_flops(Trainer *t, int64_t rows, int64_t targets, int warmup) {
  double enc, dec, head, cross_w;
  config_flops_parts(&t->m.cfg, t->Te, t->Td, &enc, &dec, &head, &cross_w);
  if (warmup) return (enc + 2.0 * dec + cross_w) * (double)rows + 2.0 * head * (double)targets;
  return 3.0 * ((enc + dec) * (double)rows + head * (double)targets);
}

/* Backward hook: [lo, hi) of the flat gradient is final on this rank; start its allreduce. */
static void reduce_ready(void *ud, int64_t lo, int64_t hi) {
  Trainer *t = ud;
  if (hi <= lo) return;
  dist_iallreduce_sum_f32(t->m.ps.grad + lo, hi - lo);
  if (t->n_reduced == t->cap_reduced) {
    t->cap_reduced = t->cap_reduced ? 2 * t->cap_reduced : 64;
    t->reduced = t5g_realloc(t->reduced, sizeof *t->reduced * t->cap_reduced);
  }
  t->reduced[t->n_reduced][0] = lo;
  t->reduced[t->n_reduced][1] = hi;
  t->n_reduced++;
  dist_progress();
}

static int cmp_range(const void *a, const void *b) {
  int64_t x = ((const int64_t *)a)[0], y = ((const int64_t *)b)[0];
  return x < y ? -1 : x > y;
}

/* Finish the overlapped reductions and reduce every range no hook covered (blocking). */
static void reduce_rest(Trainer *t) {
  dist_wait_all();
  qsort(t->reduced, t->n_reduced, sizeof *t->reduced, cmp_range);
  int64_t pos = 0, n = t->m.ps.n_total;
  for (int i = 0; i <= t->n_reduced; i++) {
    int64_t lo = i < t->n_reduced ? t->reduced[i][0] : n;
    if (lo > pos) dist_allreduce_sum_f32(t->m.ps.grad + pos, lo - pos);
    if (i < t->n_reduced && t->reduced[i][1] > pos) pos = t->reduced[i][1];
  }
  t->n_reduced = 0;
}

static int train_step(Trainer *t, double *loss_out, double *gnorm_out, int64_t *tokens_out, int64_t *targets_out) {
  TrainConfig *tc = &t->tc;
  set_warmup(t);
  int64_t counts[2] = {0, 0};      /* target tokens, input tokens */
  for (int k = 0; k < tc->grad_accum; k++) {
    int rc = obj_next_batch(t->obj, &t->mb[k]);
    if (rc < 0) fail(t);
    if (rc == 0) { t5g_error("train: the training data ended (objective %s)", tc->objective); fail(t); }
    counts[0] += t->mb[k].n_targets;
    counts[1] += batch_input_tokens(&t->mb[k]);
  }
  dist_allreduce_sum_i64(counts, 2);
  float norm = counts[0] > 0 ? (float)counts[0] : 1.0f;
  params_zero_grad(&t->m.ps);
  double loss_sum = 0;
  /* plain data parallelism: during the last micro-batch's backward, each layer's gradients are
   * summed across ranks (non-blocking) as soon as they are final, overlapping the rest of
   * backward; the parameters outside the layers (embeddings, final norms) follow at the end */
  int overlap = t->world > 1 && !(tc->zero1 && t->world > 1);
  t->n_reduced = 0;
  for (int k = 0; k < tc->grad_accum; k++) {
    graph_reset(&t->g);
    t->g.bwd_hook = overlap && k == tc->grad_accum - 1 ? reduce_ready : NULL;
    t->g.bwd_hook_ud = t;
    t->g.dropout_seed = splitmix64(tc->seed ^ splitmix64((uint64_t)t->step * 1000003ULL + (uint64_t)k * 7919ULL + (uint64_t)t->rank));
    t->g.dropout_calls = 0;
    LossStats st;
    int32_t *tids = NULL; float *tprobs = NULL;
    Tensor *loss = micro_loss(t, &t->mb[k], norm, &st, &tids, &tprobs);   /* teacher targets: in the arena */
    loss_sum += loss->data[0];
    graph_backward(&t->g, loss);
  }
  graph_reset(&t->g);
  dist_allreduce_sum_f64(&loss_sum, 1);
  ParamStore *ps = &t->m.ps;
  int zero = tc->zero1 && t->world > 1;
  double gnorm;
  int nonfinite;
  double t0 = t->g.profile ? t5g_now() : 0;
  if (zero) {
    dist_reduce_scatter_sum(ps->grad, ps->n_total);
    double ss = adamw_grad_sumsq(ps, t->lo, t->hi);
    dist_allreduce_sum_f64(&ss, 1);
    gnorm = sqrt(ss);
    nonfinite = !isfinite(gnorm);
    double coef = adamw_clip_coef(gnorm, tc->clip);
    if (!nonfinite && coef < 1) adamw_scale_grad(ps, t->lo, t->hi, (float)coef);
  } else {
    if (overlap) reduce_rest(t);
    gnorm = adamw_clip_grad_norm(ps, tc->clip, &nonfinite);
  }
  if (t->g.profile) t->g.prof_sec[OPK_COMM] += t5g_now() - t0;
  *loss_out = loss_sum;
  *gnorm_out = gnorm;
  *tokens_out = counts[1];
  *targets_out = counts[0];
  if (nonfinite || !isfinite(loss_sum)) return 0;
  t0 = t->g.profile ? t5g_now() : 0;
  adamw_step(&t->opt, ps, lr_schedule_lr(&t->sched, t->step));
  if (zero) dist_allgather(ps->data, ps->n_total);
  if (t->g.profile) t->g.prof_sec[OPK_OPTIMIZER] += t5g_now() - t0;
  return 1;
}

/* Test hook (tests/t_mpi.sh, never set in real runs): with T5G_TEST_PERTURB_RANK=r and
 * T5G_TEST_PERTURB_STEP=k in the environment, rank r adds 1e-3 to its first weight after step k,
 * so the cross-rank weight check must stop the run with an error at that step. */
static void test_perturb_weights(Trainer *t) {
  const char *r = getenv("T5G_TEST_PERTURB_RANK"), *k = getenv("T5G_TEST_PERTURB_STEP");
  if (r && k && atoi(r) == t->rank && atoll(k) == t->step && t->m.ps.n_total > 0) t->m.ps.data[0] += 1e-3f;
}

/* The signal that asked this job to stop (SIGINT, SIGTERM or SIGUSR1), agreed by all ranks (a
 * signal may reach only some of them), or 0. With several kinds, SIGINT wins, then SIGTERM. */
static int stop_signal(void) {
  int s = t5g_stop_requested();
  int64_t v[3] = {s == SIGINT, s == SIGTERM, s == SIGUSR1};
  dist_allreduce_sum_i64(v, 3);
  return v[0] ? SIGINT : v[1] ? SIGTERM : v[2] ? SIGUSR1 : 0;
}

static const char *signal_name(int s) { return s == SIGINT ? "SIGINT" : s == SIGTERM ? "SIGTERM" : s == SIGUSR1 ? "SIGUSR1" : "a signal"; }

static void usage_error(const char *msg) {
  fprintf(stderr, "t5gemma train: %s\n", msg);
  train_config_print_help();
  exit(2);
}

int cmd_train(int argc, char **argv) {
  if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) { train_config_print_help(); return 0; }
  dist_init(&argc, &argv);
  Trainer *t = t5g_calloc(1, sizeof *t);
  t->rank = dist_rank();
  t->world = dist_world();
  TrainConfig *tc = &t->tc;
  train_config_defaults(tc);
  int i0 = 1;
  if (argc >= 2 && !strchr(argv[1], '=')) {
    if (train_config_load(tc, argv[1]) != 0) fail(t);
    i0 = 2;
  } else {
    /* `t5gemma train resume=RUN [key=value ...]`: the run's own configuration is the base */
    for (int i = 1; i < argc; i++) {
      if (strncmp(argv[i], "resume=", 7) != 0) continue;
      char *cp = t5g_path_join(argv[i] + 7, "train_config.json");
      if (t5g_file_exists(cp) && train_config_load(tc, cp) != 0) fail(t);
      free(cp);
    }
  }
  for (int i = i0; i < argc; i++) {
    char *eq = strchr(argv[i], '=');
    if (!eq) usage_error("arguments after the config file must be key=value");
    *eq = 0;
    if (train_config_set(tc, argv[i], eq + 1, "command line") != 0) fail(t);
    *eq = '=';
  }
  if (tc->resume[0]) {
    if (!t5g_file_exists(tc->resume)) { t5g_error("train: resume=%s: no such run directory", tc->resume); fail(t); }
    if (strcmp(tc->run_dir, "runs/run") == 0 || !tc->run_dir[0]) snprintf(tc->run_dir, sizeof tc->run_dir, "%s", tc->resume);
  }
  if (train_config_validate(tc) != 0) fail(t);
  /* A run that fails here leaves nothing behind: everything that can be checked (the run
   * directory, the model, tokenizer, data, validation split, lengths, memory, optimizer and
   * schedule settings, a resume's model) is checked before the run directory is touched. */
  if (check_run_dir(tc) != 0 || check_paths(tc) != 0) fail(t);
  if (tc->threads > 0) t5g_set_threads(tc->threads);
  dist_check_threads(t5g_threads());
  setup_model(t);
  if (check_lengths(t) != 0) fail(t);
  setup_tokenizer(t);
  setup_data(t);
  if (!validation_available(t, t->no_val, sizeof t->no_val)) {
    if (tc->eval_every > 0) {
      t5g_error("train: eval_every=%d asks for a validation loss, but %s; set val_split (or sft_val_data) to validation data, "
                "or eval_every=0 to train without validation", tc->eval_every, t->no_val);
      fail(t);
    }
  }
  int encdec = is_encdec_objective(tc, &t->m);
  int Te = encdec ? obj_enc_len(t->obj) : 0, Td = obj_dec_len(t->obj);
  /* memory: refuse before allocating activations (and before loading a teacher) */
  MemEstimate me = memory_train_distill(&t->m.cfg, tc->batch_size, Te, Td, tc->recompute, t->world, tc->zero1,
                                        t->has_teacher ? &t->teacher_cfg : NULL, !strcmp(tc->teacher_dtype, "bf16"), tc->distill_topk);
  if (memory_check("train", me.total) != 0) fail(t);
  /* optimizer */
  AdamWConfig ac;
  adamw_config_default(&ac);
  ac.beta1 = tc->beta1; ac.beta2 = tc->beta2; ac.eps = tc->eps; ac.weight_decay = tc->weight_decay;
  ac.decay_embed = tc->decay_embeddings; ac.max_grad_norm = tc->clip;
  if (adamw_config_check(&ac, "train config") != 0) fail(t);
  lr_schedule_default(&t->sched);
  if (lr_decay_parse(tc->schedule, &t->sched.decay) != 0) fail(t);
  t->sched.peak_lr = tc->lr;
  t->sched.warmup_steps = tc->warmup_steps;
  t->sched.total_steps = tc->steps > tc->warmup_steps ? tc->steps : tc->warmup_steps + 1;
  t->sched.min_lr_ratio = tc->min_lr_ratio;
  if (t->warmup_cross > 0 && tc->warmup_cross_rewarm > 0) {   /* fresh moments for the unfrozen parameters */
    t->sched.rewarm_at = t->warmup_cross;
    t->sched.rewarm_steps = tc->warmup_cross_rewarm;
  }
  if (tc->lr > 0 && lr_schedule_check(&t->sched, "train config") != 0) fail(t);
  if (tc->resume[0] && check_resume_model(t) != 0) fail(t);
  /* the run directory: created (or, with overwrite=1, cleared of the earlier run) only now */
  int fresh = !tc->resume[0] || !same_dir(tc->resume, tc->run_dir);
  if (t->rank == 0) {
    int removed = 0;
    if (fresh && tc->overwrite && (removed = remove_earlier_run(tc->run_dir)) < 0) fail(t);
    t->made_dir = !t5g_file_exists(tc->run_dir);
    if (t5g_mkdir_p(tc->run_dir) != 0) fail(t);
    t->cleanup = fresh;
    char *lp = t5g_path_join(tc->run_dir, "train.log"), *mp = t5g_path_join(tc->run_dir, "metrics.jsonl");
    t->log = fopen(lp, fresh ? "w" : "a");
    t->metrics = fopen(mp, fresh ? "w" : "a");
    if (!t->log || !t->metrics) { t5g_error("%s: cannot write train.log / metrics.jsonl", tc->run_dir); fail(t); }
    free(lp); free(mp);
    if (fresh && tc->overwrite && removed > 0) tlog(t, "overwrite: deleted the earlier run in %s (%d checkpoint file(s), hf/, logs)\n", tc->run_dir, removed);
  }
  dist_barrier();
  if (t->no_val[0]) tlog(t, "train: no validation loss: %s (eval_every=0: training goes on without it)\n", t->no_val);
  load_teacher(t);
  t->lo = 0; t->hi = t->m.ps.n_total;
  if (tc->zero1 && t->world > 1) dist_slice(t->m.ps.n_total, t->rank, &t->lo, &t->hi);
  if (adamw_init(&t->opt, &t->m.ps, &ac, t->lo, t->hi) != 0) fail(t);
  arena_init(&t->arena, 0);
  graph_init(&t->g, &t->arena);
  t->g.profile = 1;
  /* resume */
  if (tc->resume[0]) {
    LoadCtx lc = {t};
    char *loaded = NULL;
    int rc = ckpt_load_latest(tc->resume, load_checkpoint, &lc, &loaded);
    if (rc < 0) fail(t);
    if (rc == 0) tlog(t, "resume: no checkpoint in %s, starting from step 0\n", tc->resume);
    else tlog(t, "resume: %s (step %lld)\n", loaded, (long long)t->step);
    free(loaded);
    if (t->rank == 0 && !fresh) trim_metrics(t);
    if (t->step >= tc->steps) {
      /* nothing to train: say so rather than exit silently. At exactly `steps` with no hf/ yet
       * (stopped between the last checkpoint and the export) the export below still runs. */
      char *hfm = t5g_path_join(tc->run_dir, "hf/model.safetensors");
      int export_missing = t->step == tc->steps && !t5g_file_exists(hfm);
      free(hfm);
      tlog(t, "the run is already at step %lld of %d: nothing to train; raise steps= to continue%s\n", (long long)t->step, tc->steps,
           export_missing ? " (writing its final model, missing from hf/)" : "");
      if (!export_missing) {
        remove_created(t);   /* a resume into another run_dir leaves nothing behind */
        if (t->log) fclose(t->log);
        if (t->metrics) fclose(t->metrics);
        dist_barrier();
        dist_finalize();
        return 0;
      }
    }
  }
  /* everything identical on every rank from here */
  if (!dist_same_u64(weights_checksum(&t->m.ps))) { t5g_error("train: weights differ across ranks at start"); fail(t); }
  t->gemm_gflops = t5g_sgemm_gflops_cpu(1024, 1024, 1024);   /* MFU's denominator: robust to a loaded start */
  t->Te = Te;
  t->Td = Td;
  ParamCounts pc = config_param_counts(&t->m.cfg);
  char b1[32], b2[32];
  set_warmup(t);   /* freezes all but cross-attention during the unequal pair's warm-up: counted below */
  tlog(t, "train: %s, %s, %.1fM parameters (%.*fM trainable%s), objective %s, %d rank(s) x %d thread(s), OpenBLAS %s\n",
       tc->init[0] ? tc->init : tc->model, t->m.cfg.kind == MODEL_T5GEMMA ? "T5Gemma" : "Gemma 2", pc.total / 1e6,
       t->step < t->warmup_cross ? 2 : 1, params_count_trainable(&t->m.ps) / 1e6,
       t->step < t->warmup_cross ? " during the cross-attention warm-up" : "", tc->objective, t->world, t5g_threads(), t5g_blas_core());
  tlog(t, "train: batch %d x %d micro-batch(es) x %d rank(s), lengths enc %d dec %d, %d steps, lr %g (%s, warm-up %d), predicted memory %s per rank, sgemm peak %.0f GFLOP/s (MFU = model FLOPs / time / this)\n",
       tc->batch_size, tc->grad_accum, t->world, Te, Td, tc->steps, tc->lr, tc->schedule, tc->warmup_steps,
       t5g_fmt_bytes((double)me.total, b1, sizeof b1), t->gemm_gflops);
  if (t->rank == 0) {
    char *cp = t5g_path_join(tc->run_dir, "train_config.json"), *js = train_config_to_json(tc);
    T5gOutFile of;
    if (t5g_open_out(&of, cp) == 0) { fputs(js, of.f); t5g_commit_file(&of); }
    free(cp); free(js);
  }
  t5g_signals_install();
  t->t_start = t5g_now();
  double t_last = t5g_now();   /* start of the logging interval; validation and saving are excluded */
  int64_t rows_since = 0, steps_since = 0, targets_since = 0, rows_warm = 0, targets_warm = 0;   /* warm: in the warm-up */
  int stop = 0, stop_sig = 0;   /* stop_sig: the signal that stopped the run (exit status 128 + it) */
  t->cleanup = 0;               /* the run has started: its files stay, whatever happens */
  while (t->step < tc->steps && !stop) {
    double loss, gnorm;
    int64_t toks, targets;
    int ok = train_step(t, &loss, &gnorm, &toks, &targets);
    double lr = lr_schedule_lr(&t->sched, t->step);
    if (!ok) {
      t->bad_in_row++;
      t->bad_total++;
      tlog(t, "step %lld: non-finite %s (loss %g, grad norm %g): step skipped (%lld in a row, %lld in all)\n", (long long)t->step + 1,
           isfinite(loss) ? "gradient" : "loss", loss, gnorm, (long long)t->bad_in_row, (long long)t->bad_total);
      if (t->bad_in_row >= tc->max_bad_steps) {
        int64_t ks = 0;
        char *kp = ckpt_find_latest(tc->run_dir, &ks), where[1024];
        if (kp) snprintf(where, sizeof where, "The newest checkpoint is %s (step %lld; resume=%s continues from it)", kp, (long long)ks, tc->run_dir);
        else snprintf(where, sizeof where, "No checkpoint was written yet (%s), so there is nothing to resume from",
                      tc->save_every > 0 ? "the first is due at a multiple of save_every" : "save_every=0: only at the end");
        free(kp);
        t5g_error("train: %lld non-finite steps in a row; stopping. %s; lower lr, check the data, or raise max_bad_steps",
                  (long long)t->bad_in_row, where);
        fail(t);
      }
      if ((stop_sig = stop_signal())) {
        tlog(t, "signal received (%s): stopping without a new checkpoint (this step was skipped); exit status %d\n",
             signal_name(stop_sig), 128 + stop_sig);
        stop = 1;
      }
      continue;
    }
    t->bad_in_row = 0;
    t->step++;
    t->tokens_since_log += toks;
    rows_since += (int64_t)tc->batch_size * tc->grad_accum * t->world;
    steps_since++;
    targets_since += targets;
    if (t->step <= t->warmup_cross) {   /* this step trained cross-attention alone */
      rows_warm += (int64_t)tc->batch_size * tc->grad_accum * t->world;
      targets_warm += targets;
    }
    int last = t->step == tc->steps;
    if (t->step % tc->log_every == 0 || last || t->step == 1) {
      double now = t5g_now(), dt = now - t_last;
      double tps = t->tokens_since_log / dt;
      double mfu = (step_flops(t, rows_since - rows_warm, targets_since - targets_warm, 0) +
                    step_flops(t, rows_warm, targets_warm, 1)) / dt / (t->gemm_gflops * 1e9 * t->world);
      double eta = (now - t->t_start) / (double)t->step * (double)(tc->steps - t->step);
      tlog(t, "step %6lld/%d  loss %.4f  lr %.3g  gnorm %.3g  %.0f tok/s  MFU %.1f%%  %.1fs/step  left %s\n",
           (long long)t->step, tc->steps, loss, lr, gnorm, tps, 100 * mfu, dt / (double)steps_since,
           eta > 3600 ? (snprintf(b2, sizeof b2, "%.1fh", eta / 3600), b2) : (snprintf(b2, sizeof b2, "%.0fs", eta), b2));
      if (t->metrics) {
        fprintf(t->metrics, "{\"step\": %lld, \"loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6g, \"tokens_per_s\": %.1f, \"mfu\": %.4f, "
                "\"target_tokens\": %lld, \"elapsed_s\": %.2f, \"skipped_steps\": %lld",
                (long long)t->step, loss, lr, gnorm, tps, mfu, (long long)targets, now - t->t_start, (long long)t->bad_total);
        for (int k = 0; k < OPK_COUNT; k++) fprintf(t->metrics, ", \"time_%s_s\": %.3f", op_kind_names[k], t->g.prof_sec[k]);
        fprintf(t->metrics, "}\n");
        fflush(t->metrics);
      }
      t_last = now;
      t->tokens_since_log = 0;
      rows_since = 0;
      steps_since = 0;
      targets_since = 0;
      rows_warm = targets_warm = 0;
    }
    if ((tc->eval_every > 0 && t->step % tc->eval_every == 0) || last) {
      int64_t nt;
      double tv = t5g_now();
      double vl = validate(t, &nt);
      if (nt > 0) {
        t->last_val_loss = vl;
        tlog(t, "step %6lld  validation loss %.4f  perplexity %.2f  (%lld target tokens)\n", (long long)t->step, vl, exp(vl), (long long)nt);
        if (t->metrics) { fprintf(t->metrics, "{\"step\": %lld, \"val_loss\": %.6f, \"val_tokens\": %lld}\n", (long long)t->step, vl, (long long)nt); fflush(t->metrics); }
      }
      t_last += t5g_now() - tv;   /* the interval's rate counts training steps only */
    }
    if ((stop_sig = stop_signal())) {
      if (last) { tlog(t, "signal received (%s) at the last step: finishing the run\n", signal_name(stop_sig)); stop_sig = 0; }
      else tlog(t, "signal received: saving a checkpoint at step %lld and stopping (%s)\n", (long long)t->step, signal_name(stop_sig));
      stop = 1;
    }
    int save_now = (tc->save_every > 0 && t->step % tc->save_every == 0) || last || stop;
    test_perturb_weights(t);
    /* the weights must be identical on every rank (rank 0 alone writes them): checked at every
     * progress line and before every checkpoint, so a bad state is never saved */
    if (t->world > 1 && (save_now || t->step % tc->log_every == 0) && !dist_same_u64(weights_checksum(&t->m.ps))) {
      t5g_error("train: the weights differ across ranks after step %lld (checksums of the %lld weights disagree): the gradient "
                "reduction or the update was not identical on every rank; stopping without writing a checkpoint of this step "
                "(earlier checkpoints in %s are good)", (long long)t->step, (long long)t->m.ps.n_total, tc->run_dir);
      fail(t);
    }
    if (save_now) {
      double ts = t5g_now();
      if (save_checkpoint(t) != 0) fail(t);
      t_last += t5g_now() - ts;
    }
    if (stop_sig)
      tlog(t, "stopped by %s after step %lld of %d (checkpoint saved; resume=%s continues); exit status %d\n",
           signal_name(stop_sig), (long long)t->step, tc->steps, tc->run_dir, 128 + stop_sig);
  }
  if (t->step == tc->steps && t->rank == 0) {
    /* the final model in Hugging Face format (optionally the average of the last checkpoints) */
    char *hf = t5g_path_join(tc->run_dir, "hf");
    if (tc->average_last > 1) {
      int used = 0;
      if (ckpt_average_last(tc->run_dir, tc->average_last, &t->m.ps, &used) != 0) fail(t);
      tlog(t, "averaged the weights of the last %d checkpoints (spec 4.4)\n", used);
    }
    if (hf_save(&t->m.ps, &t->m.cfg, hf, NULL) != 0) fail(t);
    if (tc->tokenizer[0]) {   /* a Hugging Face directory carries its tokenizer */
      const char *base = strrchr(tc->tokenizer, '/');
      char *dst = t5g_path_join(hf, base ? base + 1 : tc->tokenizer);
      if (t5g_copy_file(tc->tokenizer, dst) != 0) fail(t);
      free(dst);
    }
    tlog(t, "done: %lld steps in %.1f s; model in %s (Hugging Face format), checkpoints in %s\n",
         (long long)t->step, t5g_now() - t->t_start, hf, tc->run_dir);
    double tot = 0;
    for (int k = 0; k < OPK_COUNT; k++) tot += t->g.prof_sec[k];
    tlog(t, "time by kind of work:");
    for (int k = 0; k < OPK_COUNT; k++) if (t->g.prof_sec[k] > 0) tlog(t, " %s %.0f%%", op_kind_names[k], 100 * t->g.prof_sec[k] / (tot > 0 ? tot : 1));
    tlog(t, "\n");
    free(hf);
  }
  if (t->log) fclose(t->log);
  if (t->metrics) fclose(t->metrics);
  dist_barrier();
  dist_finalize();
  return stop_sig ? 128 + stop_sig : 0;   /* the shell convention for a process ended by a signal */
}
