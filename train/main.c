/* main.c: the `t5gemma` command: git-style subcommands. */
#include "model/runtime.h"
#include "model/util.h"
#include "train/commands.h"
#include <stdio.h>
#include <string.h>

typedef struct { const char *name; int (*fn)(int, char **); const char *help; } Command;

static const Command commands[] = {
  {"info",       cmd_info,       "show the machine, OpenBLAS core and threads; or a model's config, sizes, FLOPs and memory"},
  {"train",      cmd_train,      "train a model: t5gemma train CONFIG.json [key=value ...]"},
  {"adapt",      cmd_adapt,      "make a T5Gemma encoder-decoder from Gemma 2 checkpoint(s) or a preset"},
  {"export",     cmd_export,     "write a model or a training checkpoint in Hugging Face format"},
  {"generate",   cmd_generate,   "generate text with KV caches (greedy, sampling, beam search)"},
  {"score",      cmd_score,      "log-likelihood of targets, one JSON line per example"},
  {"eval",       cmd_eval,       "validation loss, multiple-choice and generative tasks"},
  {"tokenize",   cmd_tokenize,   "text -> token ids with a Gemma tokenizer"},
  {"detokenize", cmd_detokenize, "token ids -> text"},
  {"data",       cmd_data,       "token shards: prepare, inspect, verify"},
  {"random-checkpoint", cmd_random_checkpoint, "write a randomly initialised checkpoint in Hugging Face format"},
  {"dump",       cmd_dump,       "forward + backward on a batch file: loss, logits, gradients (checking)"},
  {"bench",      cmd_bench,      "performance measurements (see make bench)"},
};
#define N_COMMANDS (int)(sizeof commands / sizeof commands[0])

static void usage(FILE *f) {
  fprintf(f, "usage: t5gemma [--threads N] COMMAND [ARGS...]\n\ncommands:\n");
  for (int i = 0; i < N_COMMANDS; i++)
    if (commands[i].fn) fprintf(f, "  %-18s %s\n", commands[i].name, commands[i].help);
  fprintf(f, "\n`t5gemma COMMAND --help` shows a command's options.\n");
}

int main(int argc, char **argv) {
  t5g_runtime_init(&argc, &argv);
  /* Ctrl-C / SIGTERM remove the temporaries being written (model/util.h); train installs its own
   * handlers (train/signals.h), whose second signal does the same */
  t5g_tmp_cleanup_on_signals();
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (int i = 0; i < N_COMMANDS; i++) {
    if (strcmp(argv[1], commands[i].name) == 0) {
      if (!commands[i].fn) t5g_fatal("command '%s' is not built into this binary", argv[1]);
      return commands[i].fn(argc - 1, argv + 1);
    }
  }
  fprintf(stderr, "t5gemma: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
