/* info.h: the options of `t5gemma info [MODEL]` (train/info.c parses them, train/info_model.c
 * prints a model's config, sizes, FLOPs and memory rows with them; model/memory.h). */
#ifndef T5G_TRAIN_INFO_H
#define T5G_TRAIN_INFO_H
#include "model/config.h"

typedef struct {
  const char *model;          /* preset name, config.json or checkpoint directory; NULL: machine only */
  int batch, enc_len, dec_len;/* sequences per batch and tokens per encoder / decoder sequence */
  int ranks;                  /* 0: rows for 2, 4, 8 and 16 ranks; N: one row for N ranks */
  int new_tokens;             /* generate row: tokens generated per prompt */
  const char *teacher;        /* PrefixLM distillation teacher (Gemma 2) or NULL */
  int teacher_bf16;           /* teacher weights in bf16 (1) or f32 (0) */
  int distill_topk;           /* 0: full-distribution soft targets; K: top-K */
  /* filled by info_model_load */
  ModelConfig cfg, tcfg;
} InfoOptions;

/* Resolve o->model (and o->teacher) and check them against each other as train does (the teacher
 * must be a Gemma 2 with the student's vocabulary; the student a T5Gemma). Returns 0, or -1 with
 * t5g_error naming the model and what is wrong. Called before anything is printed. */
int info_model_load(InfoOptions *o);
/* Print the model's config, parameter counts, FLOPs per token and predicted memory rows. */
void info_model_print(const InfoOptions *o);

#endif
