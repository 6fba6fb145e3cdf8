/* info.c: `t5gemma info [MODEL] [options]`: the machine (CPU, OpenBLAS core, threads, measured
 * sgemm), and for a model (preset name, config.json or checkpoint directory) its config, parameter
 * counts, FLOPs per token and memory needs (train/info_model.c, model/memory.h). Options and MODEL
 * may come in any order; every argument is checked before anything is printed. */
#include "model/runtime.h"
#include "model/util.h"
#include "train/commands.h"
#include "train/info.h"
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void info_usage(FILE *f) {
  fprintf(f,
    "usage: t5gemma info [MODEL] [options]\n"
    "\n"
    "The machine (CPU, OpenBLAS core, threads, memory, measured sgemm speed); with MODEL (a preset\n"
    "name from configs/models/, a config.json, or a checkpoint directory) also its config, parameter\n"
    "counts, FLOPs per token and the memory each command needs, predicted before allocating.\n"
    "Options may come before or after MODEL.\n"
    "  --no-measure           skip the sgemm measurement (about a second; made only without MODEL)\n"
    "  --batch B              sequences per batch in the memory rows (default 8)\n"
    "  --enc-len Te           encoder tokens per sequence, T5Gemma (default 512)\n"
    "  --dec-len Td           decoder tokens per sequence (default 512)\n"
    "  --ranks N              one training row for N data-parallel ranks (default: rows for 2, 4, 8, 16)\n"
    "  --new-tokens N         tokens generated per prompt in the generate rows (default 128)\n"
    "  --teacher MODEL        include a Gemma 2 PrefixLM distillation teacher in the training rows\n"
    "  --teacher-dtype bf16|f32  the teacher's weight type (default bf16; train key teacher_dtype)\n"
    "  --distill-topk K       soft targets from the teacher's top K logits (default 0: full\n"
    "                         distribution; train key distill_topk)\n"
    "  -h, --help             this help\n"
    "The options other than --no-measure need MODEL.\n");
}

static int int_opt(const char *opt, const char *v, int lo, int *out) {
  char *e; errno = 0;
  long x = strtol(v, &e, 10);
  if (errno || e == v || *e || x < lo || x > INT_MAX)
    return t5g_error("%s: expected an integer >= %d, found '%s'", opt, lo, v);
  *out = (int)x;
  return 0;
}

int cmd_info(int argc, char **argv) {
  int measure = 1;
  InfoOptions o = {.batch = 8, .enc_len = 512, .dec_len = 512, .new_tokens = 128, .teacher_bf16 = 1};
  const char *model_opt = NULL;   /* the first option that needs MODEL */
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int *iv = NULL, lo = 1;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) { info_usage(stdout); return 0; }
    if (!strcmp(a, "--no-measure")) { measure = 0; continue; }
    if (a[0] != '-' || !a[1]) {
      if (o.model) { fprintf(stderr, "t5gemma info: more than one MODEL given ('%s' and '%s')\n\n", o.model, a); info_usage(stderr); return 2; }
      o.model = a;
      continue;
    }
    if (!strcmp(a, "--batch")) iv = &o.batch;
    else if (!strcmp(a, "--enc-len")) iv = &o.enc_len;
    else if (!strcmp(a, "--dec-len")) iv = &o.dec_len;
    else if (!strcmp(a, "--ranks")) iv = &o.ranks;
    else if (!strcmp(a, "--new-tokens")) iv = &o.new_tokens;
    else if (!strcmp(a, "--distill-topk")) { iv = &o.distill_topk; lo = 0; }
    else if (strcmp(a, "--teacher") && strcmp(a, "--teacher-dtype")) {
      fprintf(stderr, "t5gemma info: unknown option '%s'\n\n", a); info_usage(stderr); return 2;
    }
    if (!v) { fprintf(stderr, "t5gemma info: option %s needs a value\n\n", a); info_usage(stderr); return 2; }
    i++;
    if (!model_opt) model_opt = a;
    if (iv) { if (int_opt(a, v, lo, iv) != 0) { fprintf(stderr, "t5gemma info: %s\n", t5g_last_error()); return 2; } }
    else if (!strcmp(a, "--teacher")) o.teacher = v;
    else if (!strcmp(v, "bf16") || !strcmp(v, "f32")) o.teacher_bf16 = !strcmp(v, "bf16");
    else { fprintf(stderr, "t5gemma info: --teacher-dtype expects bf16 or f32, found \"%s\"\n", v); return 2; }
  }
  if (model_opt && !o.model) { fprintf(stderr, "t5gemma info: %s describes a model's memory rows: give MODEL\n\n", model_opt); info_usage(stderr); return 2; }
  if (o.model && info_model_load(&o) != 0) { fprintf(stderr, "t5gemma info: %s\n", t5g_last_error()); return 1; }
  char buf[64];
  printf("cpu:            %s (%s)\n", t5g_cpu_name(), t5g_cpu_has_avx512() ? "AVX-512" : t5g_cpu_has_avx2() ? "AVX2" : "no AVX2");
  printf("openblas core:  %s (%s)\n", t5g_blas_core(), t5g_blas_fix_note());
  printf("openblas:       %s\n", t5g_blas_config());
  printf("threads:        %d (OpenMP and OpenBLAS)\n", t5g_threads());
  printf("memory:         %s available\n", t5g_fmt_bytes((double)t5g_mem_available(), buf, sizeof buf));
  if (measure && !o.model) printf("sgemm:          %.1f GFLOP/s (1024x1024x1024, %d threads)\n", t5g_sgemm_gflops(1024, 1024, 1024), t5g_threads());
  if (o.model) info_model_print(&o);
  return 0;
}
