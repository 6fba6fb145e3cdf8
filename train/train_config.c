/* train_config.c: key table, JSON loading, overrides (see train_config.h). */
#include "train/train_config.h"
#include "model/runtime.h"
#include "model/util.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum { K_STR, K_INT, K_DBL, K_FLT, K_U64 } KeyType;
/* A numeric key's valid range [lo, hi] (lo_open / hi_open: that end excluded; hi = INFINITY: no
 * upper bound; doubles must also be finite). is_bool: 0 or 1 only. train_config_validate checks
 * every numeric key against it, and --help prints it. */
typedef struct {
  const char *key; KeyType type; size_t off; size_t size; const char *def; const char *help;
  double lo, hi; unsigned char lo_open, hi_open, is_bool;
} KeyDef;

#define NONE INFINITY
#define S(f, d, h) {#f, K_STR, offsetof(TrainConfig, f), sizeof(((TrainConfig *)0)->f), d, h, 0, 0, 0, 0, 0}
#define I(f, d, lo, h) {#f, K_INT, offsetof(TrainConfig, f), 0, d, h, lo, INT_MAX, 0, 0, 0}
#define B(f, d, h) {#f, K_INT, offsetof(TrainConfig, f), 0, d, h, 0, 1, 0, 0, 1}
#define D(f, d, lo, hi, lo_open, hi_open, h) {#f, K_DBL, offsetof(TrainConfig, f), 0, d, h, lo, hi, lo_open, hi_open, 0}
#define F(f, d, lo, hi, lo_open, hi_open, h) {#f, K_FLT, offsetof(TrainConfig, f), 0, d, h, lo, hi, lo_open, hi_open, 0}
#define U(f, d, h) {#f, K_U64, offsetof(TrainConfig, f), 0, d, h, 0, NONE, 0, 0, 0}
static const KeyDef keys[] = {
  S(model, "", "preset name or config.json for random initialisation (when init is empty)"),
  S(init, "", "Hugging Face checkpoint directory to start from (Gemma 2 or T5Gemma)"),
  S(run_dir, "runs/run", "output directory: checkpoints, metrics.jsonl, train.log, train_config.json, hf/; "
                         "a fresh run refuses a directory holding another run's checkpoints (see overwrite)"),
  S(resume, "", "run directory to resume from (newest complete checkpoint)"),
  B(overwrite, "0", "1: a fresh run in a run_dir holding an earlier run first deletes that run's checkpoints, "
                    "hf/, train.log, metrics.jsonl and train_config.json"),
  S(objective, "prefixlm", "causal | prefixlm | ul2 | sft"),
  S(data, "", "token shard dataset directory (t5gemma data prepare)"),
  S(train_split, "train", "split used for training"),
  S(val_split, "val", "split used for validation loss (must exist and hold documents when eval_every > 0)"),
  S(sft_data, "", "sft: JSONL with messages or prompt/response"),
  S(sft_val_data, "", "sft: validation JSONL (needed when eval_every > 0)"),
  S(tokenizer, "", "tokenizer.json / tokenizer.model (special tokens by name; needed by ul2 and sft; "
                  "without it <pad>/<eos>/<bos> come from the dataset's index.json)"),
  I(batch_size, "8", 1, "rows per micro-batch"),
  I(grad_accum, "1", 1, "micro-batches per optimizer step"),
  I(seq_len, "256", 2, "causal: tokens per row (<= the model's max_position_embeddings)"),
  I(enc_len, "128", 1, "encoder tokens per row (<= the encoder's max_position_embeddings)"),
  I(dec_len, "128", 1, "decoder tokens per row (<= the decoder's max_position_embeddings)"),
  B(packed, "0", "1: segment ids, attention stays within documents"),
  B(prefixlm_random_split, "0", "prefixlm: random split point instead of equal halves"),
  B(prefixlm_pack, "1", "prefixlm: 1 packed windows of enc_len+dec_len tokens; 0 one document per row"),
  S(ul2_mixture, "t5gemma2", "ul2 denoiser mixture: a preset t5gemma2 | ul2 | t5, or comma-separated items "
                             "span:MU:R[:W[:MODE]] (mean span MU, noise density R, weight W, mode token MODE) and "
                             "suffix:R[:W[:MODE]] / ssuffix:R[:W[:MODE]] (suffix denoiser; ssuffix: sentinel form), "
                             "e.g. span:3:0.15:1,suffix:0.25:2"),
  S(sentinel_prefix, "<unused", "sentinel token names are <prefix>N>"),
  D(lr, "3e-4", 0, NONE, 0, 0, "peak learning rate"),
  D(min_lr_ratio, "0.1", 0, 1, 0, 0, "floor of the schedule as a fraction of lr"),
  D(weight_decay, "0.01", 0, NONE, 0, 0, "AdamW decoupled weight decay (matrices only)"),
  D(beta1, "0.9", 0, 1, 0, 1, "AdamW beta1"),
  D(beta2, "0.95", 0, 1, 0, 1, "AdamW beta2"),
  D(eps, "1e-8", 0, NONE, 1, 0, "AdamW epsilon"),
  D(clip, "1.0", 0, NONE, 0, 0, "global gradient-norm clipping (0 = off)"),
  I(warmup_steps, "100", 0, "linear warm-up steps"),
  I(steps, "1000", 1, "optimizer steps (the run's total; a resumed run continues to it)"),
  S(schedule, "cosine", "cosine | linear | constant"),
  B(decay_embeddings, "0", "1: weight decay on embeddings too"),
  I(warmup_cross_steps, "-1", -1, "cross-attention-only steps (-1: 1000 for unequal pairs, 0 otherwise)"),
  I(warmup_cross_rewarm, "0", 0, "linear lr ramp of this many steps when the cross-attention warm-up ends (0: none)"),
  F(dropout, "0", 0, 1, 0, 1, "dropout rate"),
  S(teacher, "", "prefixlm distillation: Gemma 2 teacher checkpoint directory"),
  D(distill_alpha, "0.5", 0, 1, 0, 0, "weight of the teacher's soft targets"),
  D(distill_temperature, "1.0", 0, NONE, 1, 0, "distillation temperature"),
  I(distill_topk, "0", 0, "teacher top-k (0 = full distribution)"),
  S(teacher_dtype, "bf16", "the teacher's weights in memory: bf16 (2 bytes per parameter; exact for bf16 checkpoints) | f32"),
  I(log_every, "10", 1, "steps between progress lines"),
  I(eval_every, "0", 0, "steps between validation losses (0 = only at the end, when a validation split exists)"),
  I(eval_batches, "8", 0, "validation batches per evaluation (>= 1 when eval_every > 0)"),
  I(save_every, "0", 0, "steps between checkpoints (0 = only at the end)"),
  I(keep_last, "3", 0, "newest checkpoints kept, older ones deleted (0 = keep all)"),
  I(average_last, "0", 0, "export the average of the last K checkpoints (0 = off; needs keep_last 0 or >= K)"),
  I(max_bad_steps, "5", 1, "consecutive non-finite steps before the run stops"),
  U(seed, "1234", "seed of initialisation, data order, objectives and dropout"),
  I(threads, "0", 0, "OpenMP/OpenBLAS threads (0 = --threads / OMP_NUM_THREADS / all cores)"),
  B(recompute, "0", "1: recompute activations in backward (less memory)"),
  B(encoder_causal, "0", "1: causal encoder (ablation; spec 4.5)"),
  B(zero1, "0", "MPI: shard AdamW state across ranks (ZeRO stage 1)"),
};
#undef S
#undef I
#undef B
#undef NONE
#undef D
#undef F
#undef U
#define N_KEYS (int)(sizeof keys / sizeof keys[0])

static const KeyDef *find_key(const char *k) {
  for (int i = 0; i < N_KEYS; i++) if (strcmp(keys[i].key, k) == 0) return &keys[i];
  return NULL;
}

static int set_raw(TrainConfig *c, const KeyDef *kd, const char *v, const char *source) {
  char *end = NULL;
  void *p = (char *)c + kd->off;
  errno = 0;
  switch (kd->type) {
    case K_STR:
      if (strlen(v) >= kd->size) return t5g_error("%s: %s is too long (%zu bytes, at most %zu)", source, kd->key, strlen(v), kd->size - 1);
      strcpy((char *)p, v);
      return 0;
    case K_INT: { long x = strtol(v, &end, 10); if (!*v || *end || errno || x < INT_MIN || x > INT_MAX) goto bad; *(int *)p = (int)x; return 0; }
    case K_U64: { unsigned long long x = strtoull(v, &end, 10); if (!*v || *end || errno || strchr(v, '-')) goto bad; *(uint64_t *)p = x; return 0; }
    case K_DBL: { double x = strtod(v, &end); if (!*v || *end || errno) goto bad; *(double *)p = x; return 0; }
    case K_FLT: { double x = strtod(v, &end); if (!*v || *end || errno) goto bad; *(float *)p = (float)x; return 0; }
  }
bad:
  return t5g_error("%s: %s expects %s, found \"%s\"", source, kd->key,
                   kd->type == K_INT ? "an integer (32-bit)" : kd->type == K_U64 ? "a non-negative integer" : "a number", v);
}

void train_config_defaults(TrainConfig *c) {
  memset(c, 0, sizeof *c);
  for (int i = 0; i < N_KEYS; i++) if (set_raw(c, &keys[i], keys[i].def, "defaults") != 0) t5g_die_last();
}

int train_config_set(TrainConfig *c, const char *key, const char *value, const char *source) {
  const KeyDef *kd = find_key(key);
  if (!kd) return t5g_error("%s: unknown key \"%s\" (see `t5gemma train --help`)", source, key);
  return set_raw(c, kd, value, source);
}

static int apply_json(TrainConfig *c, cJSON *root, const char *source) {
  if (!cJSON_IsObject(root)) return t5g_error("%s: expected a JSON object at the top level", source);
  for (cJSON *it = root->child; it; it = it->next) {
    if (it->string[0] == '_') continue;   /* "_comment" keys are allowed */
    const KeyDef *kd = find_key(it->string);
    if (!kd) return t5g_error("%s: unknown key \"%s\" (see `t5gemma train --help`)", source, it->string);
    char buf[64];
    const char *v;
    if (cJSON_IsString(it)) v = it->valuestring;
    else if (cJSON_IsBool(it)) {
      if (kd->type == K_STR) return t5g_error("%s: %s expects a string, found %s", source, kd->key, cJSON_IsTrue(it) ? "true" : "false");
      v = cJSON_IsTrue(it) ? "1" : "0";
    }
    else if (cJSON_IsNumber(it)) {
      if (kd->type == K_STR) return t5g_error("%s: %s expects a string, found a number", source, kd->key);
      if ((kd->type == K_INT || kd->type == K_U64) && it->valuedouble != floor(it->valuedouble))
        return t5g_error("%s: %s expects an integer, found %.17g", source, kd->key, it->valuedouble);
      if (kd->type == K_INT || kd->type == K_U64) snprintf(buf, sizeof buf, "%.0f", it->valuedouble);
      else snprintf(buf, sizeof buf, "%.17g", it->valuedouble);
      v = buf;
    } else return t5g_error("%s: %s expects a %s, found another JSON type", source, kd->key, kd->type == K_STR ? "string" : "number");
    if (set_raw(c, kd, v, source) != 0) return -1;
  }
  return 0;
}

int train_config_from_json(TrainConfig *c, const char *json, const char *source) {
  cJSON *root = cJSON_Parse(json);
  if (!root) return t5g_error("%s: not valid JSON (near \"%.30s\")", source, cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() : "?");
  char dup[256];
  if (t5g_json_duplicate_key(root, dup, sizeof dup)) {   /* which value was meant is ambiguous: refused, as in model configs */
    cJSON_Delete(root);
    return t5g_error("%s: key \"%s\" appears more than once; give each key once", source, dup);
  }
  int r = apply_json(c, root, source);
  cJSON_Delete(root);
  return r;
}

int train_config_load(TrainConfig *c, const char *path) {
  char *txt = t5g_read_file(path, NULL);
  if (!txt) return -1;
  int r = train_config_from_json(c, txt, path);
  free(txt);
  return r;
}

/* The range of a numeric key as text: "0 or 1", ">= 1", "in [0, 1)", "finite and > 0". */
static void range_text(const KeyDef *kd, char *buf, size_t n) {
  if (kd->is_bool) { snprintf(buf, n, "0 or 1"); return; }
  if (isinf(kd->hi)) {
    snprintf(buf, n, "%s%s %.17g", kd->type == K_DBL || kd->type == K_FLT ? "finite and " : "", kd->lo_open ? ">" : ">=", kd->lo);
    return;
  }
  if (kd->type == K_INT && kd->hi == INT_MAX) { snprintf(buf, n, ">= %.17g", kd->lo); return; }
  snprintf(buf, n, "in %c%.17g, %.17g%c", kd->lo_open ? '(' : '[', kd->lo, kd->hi, kd->hi_open ? ')' : ']');
}

/* Check one numeric key's value against its range; error "train config: KEY must be RANGE, found V". */
static int check_range(const TrainConfig *c, const KeyDef *kd) {
  const void *p = (const char *)c + kd->off;
  double x;
  char found[64];
  switch (kd->type) {
    case K_INT: x = *(const int *)p; snprintf(found, sizeof found, "%d", *(const int *)p); break;
    case K_DBL: x = *(const double *)p; snprintf(found, sizeof found, "%g", x); break;
    case K_FLT: x = *(const float *)p; snprintf(found, sizeof found, "%g", x); break;
    default: return 0;   /* strings: checked by name below; seed: any 64-bit value */
  }
  int ok = isfinite(x) && (kd->lo_open ? x > kd->lo : x >= kd->lo) && (isinf(kd->hi) || (kd->hi_open ? x < kd->hi : x <= kd->hi));
  if (ok) return 0;
  char range[96];
  range_text(kd, range, sizeof range);
  return t5g_error("train config: %s must be %s, found %s", kd->key, range, found);
}

int train_config_validate(const TrainConfig *c) {
  for (int i = 0; i < N_KEYS; i++) if (check_range(c, &keys[i]) != 0) return -1;
  /* the bound of --threads / OMP_NUM_THREADS (model/runtime.h): refused, not lowered by t5g_set_threads */
  if (c->threads > t5g_threads_max())
    return t5g_error("train config: threads=%d is out of range: 0 (the default: --threads / OMP_NUM_THREADS / all cores) or 1 to %d "
                     "on this machine (4 x %ld cores, at most %d)", c->threads, t5g_threads_max(), sysconf(_SC_NPROCESSORS_ONLN), T5G_THREADS_CAP);
  const char *objs[] = {"causal", "prefixlm", "ul2", "sft"};
  int ok = 0;
  for (int i = 0; i < 4; i++) ok |= strcmp(c->objective, objs[i]) == 0;
  if (!ok) return t5g_error("train config: objective must be causal, prefixlm, ul2 or sft, found \"%s\"", c->objective);
  if (!c->model[0] && !c->init[0] && !c->resume[0]) return t5g_error("train config: set model (a preset or config.json) or init (a checkpoint directory)");
  if (strcmp(c->objective, "sft") == 0) {
    if (!c->sft_data[0]) return t5g_error("train config: objective sft needs sft_data (a JSONL file)");
    if (!c->tokenizer[0]) return t5g_error("train config: objective sft needs tokenizer");
  } else if (strcmp(c->objective, "ul2") == 0 && !c->tokenizer[0]) {
    return t5g_error("train config: objective ul2 needs tokenizer (sentinel tokens are looked up by name)");
  }
  if (strcmp(c->objective, "sft") != 0 && !c->data[0]) return t5g_error("train config: objective %s needs data (a shard directory from `t5gemma data prepare`)", c->objective);
  if (c->eval_every > 0 && c->eval_batches < 1)
    return t5g_error("train config: eval_every=%d asks for validation but eval_batches=0 (set eval_batches >= 1, or eval_every=0)", c->eval_every);
  if (c->eval_every > 0 && !strcmp(c->objective, "sft") && !c->sft_val_data[0])
    return t5g_error("train config: eval_every=%d asks for validation but sft_val_data is empty (set sft_val_data=FILE.jsonl, or eval_every=0)", c->eval_every);
  if (c->average_last > 1 && c->keep_last > 0 && c->keep_last < c->average_last)
    return t5g_error("train config: average_last=%d averages more checkpoints than keep_last=%d keeps (set keep_last=0 or >= %d)",
                     c->average_last, c->keep_last, c->average_last);
  if (strcmp(c->schedule, "cosine") && strcmp(c->schedule, "linear") && strcmp(c->schedule, "constant"))
    return t5g_error("train config: schedule must be cosine, linear or constant, found \"%s\"", c->schedule);
  if (c->teacher[0] && strcmp(c->objective, "prefixlm") != 0) return t5g_error("train config: teacher (distillation) is supported with objective prefixlm only");
  if (strcmp(c->teacher_dtype, "bf16") && strcmp(c->teacher_dtype, "f32"))
    return t5g_error("train config: teacher_dtype must be bf16 or f32, found \"%s\"", c->teacher_dtype);
  return 0;
}

char *train_config_to_json(const TrainConfig *c) {
  cJSON *o = cJSON_CreateObject();
  for (int i = 0; i < N_KEYS; i++) {
    const KeyDef *kd = &keys[i];
    const void *p = (const char *)c + kd->off;
    switch (kd->type) {
      case K_STR: cJSON_AddStringToObject(o, kd->key, (const char *)p); break;
      case K_INT: cJSON_AddNumberToObject(o, kd->key, p == (const void *)&c->overwrite ? 0 : *(const int *)p); break;
      case K_U64: cJSON_AddNumberToObject(o, kd->key, (double)*(const uint64_t *)p); break;
      case K_DBL: cJSON_AddNumberToObject(o, kd->key, *(const double *)p); break;
      case K_FLT: cJSON_AddNumberToObject(o, kd->key, *(const float *)p); break;
    }
  }
  char *s = cJSON_Print(o);
  cJSON_Delete(o);
  return s;
}

void train_config_print_help(void) {
  printf("usage: t5gemma train CONFIG.json [key=value ...]\n"
         "       t5gemma train key=value ...            (no file: defaults + overrides)\n\n"
         "keys (default) meaning:\n");
  for (int i = 0; i < N_KEYS; i++) {
    char range[96] = "";
    if (keys[i].type == K_INT || keys[i].type == K_DBL || keys[i].type == K_FLT) {
      char r[88];
      range_text(&keys[i], r, sizeof r);
      snprintf(range, sizeof range, " [%s]", r);
    }
    printf("  %-22s (%s) %s%s\n", keys[i].key, keys[i].def[0] ? keys[i].def : "\"\"", keys[i].help, range);
  }
}
