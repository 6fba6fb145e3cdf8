/* tasks.h: evaluation tasks for `t5gemma eval`: validation loss on token shards, multiple-choice
 * tasks by log-likelihood, generative question answering; and their metrics.
 *
 * ---- Task files (JSONL, one example per line; blank lines are ignored) ----------------------
 *  multiple choice  {"query": str, "choices": [str, ...], "gold": int}      (BoolQ, PIQA, ARC)
 *  partial scoring  {"context_options": [str, ...], "continuation": str, "gold": int}
 *                                                                          (WinoGrande)
 *  generative       {"question" | "context" | "query": str, "answer": str | "answers": [str, ...]}
 * (llm-foundry's local evaluation layout, scripts/eval/local_data/.) The kind of a file is the
 * kind of its first well-formed line. A malformed line (not JSON, a missing or mistyped field,
 * gold out of range, no choices, another kind than the file's) is reported as
 * "FILE:LINE: what is wrong"; with on_error = skip (default) the line is skipped and counted in
 * the result's `skipped`, with on_error = stop the task fails with that message.
 *
 * ---- How examples become model inputs (lm-evaluation-harness / llm-foundry conventions) ------
 *  Multiple choice: context = FEWSHOT + query + answer_prefix (default "\nAnswer:"),
 *                   continuation_i = target_delimiter (default " ") + choices[i].
 *  Partial scoring: context_i = FEWSHOT + context_options[i], continuation = " " + continuation;
 *                   the same continuation is scored after each context (WinoGrande).
 *  Generative:      prompt = FEWSHOT + question + answer_prefix; greedy decoding.
 *  FEWSHOT: num_fewshot examples drawn at random (Rng seeded from (seed, example index)) from
 *  the same file, never the example itself, each rendered as its context followed by its gold
 *  continuation (" " + choices[gold], or " " + the first answer), joined and terminated by
 *  fewshot_delimiter (default "\n\n").
 *  Tokenization: the context is encoded with <bos> prepended (HF's Gemma tokenizer does so,
 *  spec 5) and the continuation separately without specials, so the scored tokens are exactly
 *  the continuation's own tokens (llm-foundry encodes them separately too; lm-eval encodes the
 *  concatenation and splits it, which differs only when a token would straddle the boundary).
 *  Encoder-decoder (T5Gemma): the context goes to the encoder and the continuation is the
 *  decoder target, scored from the decoder start token <bos> (spec 4.6, 5: the prompt is the
 *  encoder's, the decoder produces the answer). Decoder-only (Gemma 2): the continuation's
 *  tokens are scored after the context's.
 *
 * ---- Metrics ---------------------------------------------------------------------------------
 *  acc       fraction of examples whose gold choice has the highest summed log-likelihood
 *            (ties: the first choice), as lm-eval's `acc`.
 *  acc_norm  the same with each sum divided by the UTF-8 byte length of the choice text
 *            (without the delimiter), as lm-eval's `acc_norm` (which divides by len(choice) in
 *            characters: identical for ASCII). Partial-scoring tasks score one shared
 *            continuation, so acc_norm is not defined for them (reported as null).
 *  *_stderr  sqrt(p (1 - p) / (n - 1)), lm-eval's sample standard error of a mean of 0/1 values.
 *  em, f1    SQuAD v1.1 evaluation (official evaluate-v1.1.py): both strings normalised by
 *            lower-casing, removing ASCII punctuation, removing the articles a/an/the as words,
 *            and collapsing whitespace; em = normalised strings equal; f1 = token-overlap F1 of
 *            the whitespace tokens (bag of words with multiplicity); the maximum over the gold
 *            answers; averaged over examples. The generation is cut at its first newline
 *            (lm-eval's default `until: ["\n"]`) and at a stop token.
 *  Validation loss: mean token cross-entropy (nats) of the objective's labels over the batches,
 *            perplexity = exp(loss), token accuracy = argmax hits / tokens.
 */
#ifndef T5G_TASKS_H
#define T5G_TASKS_H

#include <stdint.h>
#include <stdio.h>
#include "model/model.h"

typedef struct Tokenizer Tokenizer;

/* ---- SQuAD answer metrics (strings are UTF-8; non-ASCII bytes are kept as they are) -------- */
char  *squad_normalize(const char *s);                      /* malloc'ed */
int    squad_exact_match(const char *pred, const char *gold);
double squad_f1(const char *pred, const char *gold);
/* Max over golds[n]. */
int    squad_max_em(const char *pred, const char *const *golds, int n);
double squad_max_f1(const char *pred, const char *const *golds, int n);

/* acc / acc_norm decision for one example: index of the best choice by sum, and by sum divided
 * by norm_len[i] (norm_len NULL: by sum only). Ties go to the lower index. */
int mc_argmax(const double *sum, const double *norm_len, int n);

/* ---- Task files ---------------------------------------------------------------------------- */
typedef enum { TASK_MC = 1, TASK_PARTIAL = 2, TASK_GEN = 3 } TaskKind;

typedef struct TaskExample {
  int line;            /* 1-based line number in the file */
  char *query;         /* MC: query; GEN: question/context/query; PARTIAL: NULL */
  char **choices;      /* MC: choices; PARTIAL: context_options */
  int n_choices;
  char *continuation;  /* PARTIAL */
  int gold;            /* MC, PARTIAL */
  char **answers;      /* GEN */
  int n_answers;
} TaskExample;

typedef struct TaskData {
  char *path;
  char name[128];      /* file name without directory and .jsonl */
  TaskKind kind;
  TaskExample *ex;
  int n;
  int skipped;         /* malformed lines */
} TaskData;

/* Load a task file. on_error_stop: 0 = skip malformed lines (each reported on `log`, may be
 * NULL), 1 = fail on the first with its FILE:LINE message. -1 with t5g_error when the file
 * cannot be read, has no well-formed line, or on_error_stop and a line is malformed. */
int  task_load(const char *path, int on_error_stop, FILE *log, TaskData *td);
void task_free(TaskData *td);
const char *task_kind_name(TaskKind k);   /* "multiple_choice", "partial", "generative" */

typedef struct TaskOptions {
  int num_fewshot;             /* default 0 */
  uint64_t seed;               /* few-shot sampling seed, default 1234 (lm-eval's default) */
  int limit;                   /* evaluate only the first `limit` examples (0 = all) */
  int batch_size;              /* rows per scoring batch / prompts per generation batch (16) */
  const char *answer_prefix;   /* "\nAnswer:" */
  const char *target_delimiter;/* " " */
  const char *fewshot_delimiter;/* "\n\n" */
  int max_new_tokens;          /* generative tasks, default 32 */
  FILE *progress;              /* progress lines (stderr), or NULL */
} TaskOptions;
void task_options_default(TaskOptions *o);

typedef struct TaskResult {
  char name[128];
  TaskKind kind;
  int n;                       /* examples evaluated */
  int skipped;                 /* malformed lines skipped */
  int truncated;               /* contexts cut to fit the model (score.h) */
  double acc, acc_stderr, acc_norm, acc_norm_stderr;   /* MC, PARTIAL (acc_norm: MC only) */
  double em, f1;               /* GEN */
  double seconds;
} TaskResult;

/* Render the model inputs of example i (tests and --dry-run): context(s) and continuation(s) as
 * text, per the rules above. For MC: n_choices contexts (all equal) and continuations; PARTIAL:
 * n_choices contexts and the same continuation; GEN: one context, continuation NULL.
 * Strings are malloc'ed; free with task_render_free. */
typedef struct TaskRender { char **ctx; char **cont; int n; } TaskRender;
void task_render(const TaskData *td, int i, const TaskOptions *o, TaskRender *r);
void task_render_free(TaskRender *r);

/* Run a multiple-choice, partial-scoring or generative task. 0, or -1 with t5g_error. */
int task_run(Model *m, const Tokenizer *tok, const TaskData *td, const TaskOptions *o, TaskResult *res);

/* ---- Validation loss on token shards --------------------------------------------------------- */
typedef struct ValOptions {
  const char *data_dir;
  const char *split;           /* "val" */
  const char *objective;       /* "prefixlm" | "ul2" | "causal" */
  const char *ul2_mixture;     /* for ul2: a preset or spec (objectives.h ul2_parse), "t5gemma2" */
  int enc_len, dec_len;        /* Te, Td (causal: Td only) */
  int batches;                 /* number of batches (0 = until the split is exhausted) */
  int batch_size;
  uint64_t seed;               /* objective and reader seed (the order is fixed: no shuffle) */
  FILE *progress;
} ValOptions;
void val_options_default(ValOptions *o);

typedef struct ValResult {
  char objective[32];
  int batches;
  int64_t tokens;
  double loss, ppl, token_acc;
  double seconds;
} ValResult;

/* tok may be NULL (specials then come from the model config; ul2 needs a tokenizer for the
 * sentinels <unused0..>). The dataset's tokenizer identity is checked against tok when given. */
int val_loss_run(Model *m, const Tokenizer *tok, const ValOptions *o, ValResult *res);

#endif
