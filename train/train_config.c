/* train_config.c: key table, JSON loading, overrides (see train_config.h). */
#include "train/train_config.h"
#include "model/util.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef enum { K_STR, K_INT, K_DBL, K_FLT, K_U64 } KeyType;
typedef struct { const char *key; KeyType type; size_t off; size_t size; const char *def; const char *help; } KeyDef;

#define S(f, d, h) {#f, K_STR, offsetof(TrainConfig, f), sizeof(((TrainConfig *)0)->f), d, h}
#define I(f, d, h) {#f, K_INT, offsetof(TrainConfig, f), 0, d, h}
#define D(f, d, h) {#f, K_DBL, offsetof(TrainConfig, f), 0, d, h}
#define F(f, d, h) {#f, K_FLT, offsetof(TrainConfig, f), 0, d, h}
#define U(f, d, h) {#f, K_U64, offsetof(TrainConfig, f), 0, d, h}
static const KeyDef keys[] = {
  S(model, "", "preset name or config.json for random initialisation (when init is empty)"),
  S(init, "", "Hugging Face checkpoint directory to start from (Gemma 2 or T5Gemma)"),
  S(run_dir, "runs/run", "output directory: checkpoints, metrics.jsonl, train.log, config.json"),
  S(resume, "", "run directory to resume from (newest complete checkpoint)"),
  S(objective, "prefixlm", "causal | prefixlm | ul2 | sft"),
  S(data, "", "token shard dataset directory (t5gemma data prepare)"),
  S(train_split, "train", "split used for training"),
  S(val_split, "val", "split used for validation loss"),
  S(sft_data, "", "sft: JSONL with messages or prompt/response"),
  S(sft_val_data, "", "sft: validation JSONL"),
  S(tokenizer, "", "tokenizer.json / tokenizer.model (special tokens by name; needed by ul2 and sft; "
                  "without it <pad>/<eos>/<bos> come from the dataset's index.json)"),
  I(batch_size, "8", "rows per micro-batch"),
  I(grad_accum, "1", "micro-batches per optimizer step"),
  I(seq_len, "256", "causal: tokens per row"),
  I(enc_len, "128", "encoder tokens per row"),
  I(dec_len, "128", "decoder tokens per row"),
  I(packed, "0", "1: segment ids, attention stays within documents"),
  I(prefixlm_random_split, "0", "prefixlm: random split point instead of equal halves"),
  I(prefixlm_pack, "1", "prefixlm: 1 packed windows of enc_len+dec_len tokens; 0 one document per row"),
  S(ul2_mixture, "t5gemma2", "ul2 denoiser mixture: t5gemma2 | ul2"),
  S(sentinel_prefix, "<unused", "sentinel token names are <prefix>N>"),
  D(lr, "3e-4", "peak learning rate"),
  D(min_lr_ratio, "0.1", "floor of the schedule as a fraction of lr"),
  D(weight_decay, "0.01", "AdamW decoupled weight decay (matrices only)"),
  D(beta1, "0.9", "AdamW beta1"),
  D(beta2, "0.95", "AdamW beta2"),
  D(eps, "1e-8", "AdamW epsilon"),
  D(clip, "1.0", "global gradient-norm clipping (0 = off)"),
  I(warmup_steps, "100", "linear warm-up steps"),
  I(steps, "1000", "optimizer steps"),
  S(schedule, "cosine", "cosine | linear | constant"),
  I(decay_embeddings, "0", "1: weight decay on embeddings too"),
  I(warmup_cross_steps, "-1", "cross-attention-only steps (-1: 1000 for unequal pairs, 0 otherwise)"),
  I(warmup_cross_rewarm, "0", "linear lr ramp of this many steps when the cross-attention warm-up ends (0: none)"),
  F(dropout, "0", "dropout rate"),
  S(teacher, "", "prefixlm distillation: Gemma 2 teacher checkpoint directory"),
  D(distill_alpha, "0.5", "weight of the teacher's soft targets"),
  D(distill_temperature, "1.0", "distillation temperature"),
  I(distill_topk, "0", "teacher top-k (0 = full distribution)"),
  S(teacher_dtype, "bf16", "the teacher's weights in memory: bf16 (2 bytes per parameter; exact for bf16 checkpoints) | f32"),
  I(log_every, "10", "steps between progress lines"),
  I(eval_every, "0", "steps between validation losses (0 = only at the end)"),
  I(eval_batches, "8", "validation batches per evaluation"),
  I(save_every, "0", "steps between checkpoints (0 = only at the end)"),
  I(keep_last, "3", "checkpoints kept"),
  I(average_last, "0", "export the average of the last K checkpoints (0 = off)"),
  I(max_bad_steps, "5", "consecutive non-finite steps before the run stops"),
  U(seed, "1234", "seed of initialisation, data order, objectives and dropout"),
  I(threads, "0", "OpenMP/OpenBLAS threads (0 = --threads / OMP_NUM_THREADS / all cores)"),
  I(recompute, "0", "1: recompute activations in backward (less memory)"),
  I(encoder_causal, "0", "1: causal encoder (ablation; spec 4.5)"),
  I(zero1, "0", "MPI: shard AdamW state across ranks (ZeRO stage 1)"),
};
#undef S
#undef I
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

int train_config_validate(const TrainConfig *c) {
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
  if (c->batch_size < 1) return t5g_error("train config: batch_size must be >= 1, found %d", c->batch_size);
  if (c->grad_accum < 1) return t5g_error("train config: grad_accum must be >= 1, found %d", c->grad_accum);
  if (c->steps < 0) return t5g_error("train config: steps must be >= 0, found %d", c->steps);
  if (c->log_every < 1) return t5g_error("train config: log_every must be >= 1, found %d", c->log_every);
  if (c->eval_every < 0 || c->eval_batches < 0 || c->save_every < 0 || c->keep_last < 0 || c->average_last < 0)
    return t5g_error("train config: eval_every, eval_batches, save_every, keep_last and average_last must be >= 0");
  if (c->max_bad_steps < 1) return t5g_error("train config: max_bad_steps must be >= 1, found %d", c->max_bad_steps);
  if (c->warmup_cross_rewarm < 0) return t5g_error("train config: warmup_cross_rewarm must be >= 0, found %d", c->warmup_cross_rewarm);
  if (c->warmup_cross_steps < -1) return t5g_error("train config: warmup_cross_steps must be >= 0 (or -1: automatic), found %d", c->warmup_cross_steps);
  if (c->distill_topk < 0) return t5g_error("train config: distill_topk must be >= 0, found %d", c->distill_topk);
  if (c->seq_len < 2 || c->enc_len < 1 || c->dec_len < 1) return t5g_error("train config: seq_len >= 2, enc_len >= 1 and dec_len >= 1 required");
  if (!(c->lr >= 0)) return t5g_error("train config: lr must be >= 0, found %g", c->lr);
  if (!(c->beta1 >= 0 && c->beta1 < 1 && c->beta2 >= 0 && c->beta2 < 1)) return t5g_error("train config: beta1 and beta2 must be in [0, 1)");
  if (!(c->dropout >= 0 && c->dropout < 1)) return t5g_error("train config: dropout must be in [0, 1), found %g", c->dropout);
  if (strcmp(c->schedule, "cosine") && strcmp(c->schedule, "linear") && strcmp(c->schedule, "constant"))
    return t5g_error("train config: schedule must be cosine, linear or constant, found \"%s\"", c->schedule);
  if (c->teacher[0] && strcmp(c->objective, "prefixlm") != 0) return t5g_error("train config: teacher (distillation) is supported with objective prefixlm only");
  if (!(c->distill_alpha >= 0 && c->distill_alpha <= 1)) return t5g_error("train config: distill_alpha must be in [0, 1], found %g", c->distill_alpha);
  if (!(c->distill_temperature > 0)) return t5g_error("train config: distill_temperature must be > 0");
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
      case K_INT: cJSON_AddNumberToObject(o, kd->key, *(const int *)p); break;
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
  for (int i = 0; i < N_KEYS; i++)
    printf("  %-22s (%s) %s\n", keys[i].key, keys[i].def[0] ? keys[i].def : "\"\"", keys[i].help);
}
