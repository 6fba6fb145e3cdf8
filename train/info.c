/* info.c: `t5gemma info [MODEL]`: the machine (CPU, OpenBLAS core, threads, measured sgemm),
 * and for a model (preset name, config.json or checkpoint directory) its config, parameter
 * counts, FLOPs per token and memory needs (see model/memory.h). */
#include "model/runtime.h"
#include "model/util.h"
#include "train/commands.h"
#include <stdio.h>
#include <string.h>

int info_model(const char *model, int argc, char **argv) __attribute__((weak));

int cmd_info(int argc, char **argv) {
  int measure = 1;
  const char *model = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0) {
      printf("usage: t5gemma info [--no-measure] [MODEL [options]]\n"
             "  MODEL: a preset name (configs/models/*.json), a config.json, or a checkpoint directory\n");
      return 0;
    } else if (strcmp(argv[i], "--no-measure") == 0) measure = 0;
    else if (!model) { model = argv[i]; break; }
  }
  char buf[64];
  printf("cpu:            %s (%s%s)\n", t5g_cpu_name(), t5g_cpu_has_avx512() ? "AVX-512" : t5g_cpu_has_avx2() ? "AVX2" : "no AVX2",
         "");
  printf("openblas core:  %s (%s)\n", t5g_blas_core(), t5g_blas_fix_note());
  printf("openblas:       %s\n", t5g_blas_config());
  printf("threads:        %d (OpenMP and OpenBLAS)\n", t5g_threads());
  printf("memory:         %s available\n", t5g_fmt_bytes((double)t5g_mem_available(), buf, sizeof buf));
  if (measure && !model) printf("sgemm:          %.1f GFLOP/s (1024x1024x1024, %d threads)\n", t5g_sgemm_gflops(1024, 1024, 1024), t5g_threads());
  if (model) {
    if (!info_model) t5g_fatal("model information is not built into this binary");
    int i0 = 0;
    for (int i = 1; i < argc; i++) if (argv[i] == model) i0 = i;
    return info_model(model, argc - i0, argv + i0);
  }
  return 0;
}
