/* train_config.h: the training configuration: a flat JSON object (files in configs/) whose every
 * key can be overridden on the command line as key=value. Unknown keys are refused (a typo never
 * silently trains with a default). The full list with defaults and meaning is the table
 * train_config_keys in train_config.c, printed by `t5gemma train --help`.
 */
#ifndef T5G_TRAIN_CONFIG_H
#define T5G_TRAIN_CONFIG_H

#include <stdint.h>

typedef struct TrainConfig {
  /* model and initialisation */
  char model[512];          /* preset name or config path (random init) */
  char init[512];           /* HF checkpoint dir to start from ("" = random init of `model`) */
  char run_dir[512];        /* where checkpoints, metrics.jsonl and the log go */
  char resume[512];         /* run dir to resume from ("" = fresh) */
  int overwrite;            /* 1: a fresh run first deletes an earlier run in run_dir (else refused) */
  /* objective and data */
  char objective[32];       /* causal | prefixlm | ul2 | sft */
  char data[512];           /* shard dataset dir (causal, prefixlm, ul2) */
  char train_split[32], val_split[32];
  char sft_data[512], sft_val_data[512]; /* JSONL for sft */
  char tokenizer[512];      /* needed by sft, and to name special tokens */
  int batch_size, grad_accum;
  int seq_len;              /* causal: tokens per row */
  int enc_len, dec_len;     /* encoder-decoder lengths */
  int packed;               /* causal/prefixlm: attention within documents (segment ids) */
  int prefixlm_random_split;
  int prefixlm_pack;        /* 1: packed 2L windows (paper); 0: one document per row */
  char ul2_mixture[32];     /* t5gemma2 | ul2 */
  char sentinel_prefix[32]; /* token-name prefix of sentinels, default <unused */
  /* optimisation */
  double lr, min_lr_ratio, weight_decay, beta1, beta2, eps, clip;
  int warmup_steps, steps;
  char schedule[16];        /* cosine | linear | constant */
  int decay_embeddings;
  int warmup_cross_steps;   /* unequal pairs: cross-attention only for this many steps (-1: auto) */
  int warmup_cross_rewarm;  /* lr ramp of this many steps when the cross-attention warm-up ends (0: none) */
  float dropout;
  /* distillation (prefixlm) */
  char teacher[512];        /* Gemma 2 HF dir; "" = none */
  double distill_alpha, distill_temperature;
  int distill_topk;
  char teacher_dtype[16];   /* the teacher's weights in memory: bf16 (default) | f32 */
  /* bookkeeping */
  int log_every, eval_every, eval_batches, save_every, keep_last, average_last;
  int max_bad_steps;        /* consecutive non-finite steps before stopping */
  uint64_t seed;
  int threads;
  int recompute;            /* activation checkpointing */
  int encoder_causal;       /* ablation: causal encoder */
  int zero1;                /* MPI: shard optimizer state (ZeRO stage 1) */
} TrainConfig;

void train_config_defaults(TrainConfig *c);
/* Apply a JSON object (string), then overrides "key=value" (value parsed as JSON when it is
 * valid JSON, else taken as a string). Errors name the source, the key, expected and found. */
int train_config_load(TrainConfig *c, const char *path);
int train_config_set(TrainConfig *c, const char *key, const char *value, const char *source);
/* Check every numeric key against its range (booleans 0 or 1, counts >= 0 or >= 1, rates finite
 * and in range; the table in train_config.c, printed by --help) and the keys' consistency.
 * Errors: "train config: KEY must be RANGE, found VALUE", or name the keys involved. Checks that
 * need the model (lengths vs max_position_embeddings) or files are the trainer's (train.c). */
int train_config_validate(const TrainConfig *c);
/* Serialise (all keys) as a JSON object string (malloc'ed), for checkpoints and the run dir.
 * overwrite is written as 0: it acts once, in the run that deleted the earlier one, and must not
 * carry over to a run started from a copy of this file. */
char *train_config_to_json(const TrainConfig *c);
int train_config_from_json(TrainConfig *c, const char *json, const char *source);
void train_config_print_help(void);

#endif
