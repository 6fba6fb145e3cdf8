/* cli_eval.c: `t5gemma eval` (issue 6; tasks and metrics: eval/tasks.h). */
#define _GNU_SOURCE
#include "data/tokenizer.h"
#include "eval/cli_common.h"
#include "eval/tasks.h"
#include "model/runtime.h"
#include "model/weights_bf16.h"
#include "train/commands.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *USAGE =
  "usage: t5gemma eval --model DIR [--tokenizer PATH] [TASK.jsonl ...] [--data DIR ...] [options]\n"
  "\n"
  "Task files (positional arguments or --task FILE, repeatable), JSONL in llm-foundry's layout:\n"
  "  multiple choice  {\"query\", \"choices\": [...], \"gold\"}            BoolQ, PIQA, ARC\n"
  "  partial scoring  {\"context_options\": [...], \"continuation\", \"gold\"}  WinoGrande\n"
  "  generative       {\"question\" | \"context\" | \"query\", \"answer\" | \"answers\": [...]}\n"
  "Multiple choice is scored by log-likelihood as lm-evaluation-harness does: context = few-shot\n"
  "examples + query + ANSWER_PREFIX, continuation = \" \" + choice; acc picks the choice with the\n"
  "highest summed log-probability, acc_norm divides each sum by the choice's length in UTF-8 bytes\n"
  "(lm-eval: characters). Partial scoring scores the shared \" \" + continuation after each context\n"
  "option (acc only). For an ENCODER-DECODER (T5Gemma) the context goes to the ENCODER (with <bos>)\n"
  "and each continuation is scored as the DECODER target from the start token <bos>; for a\n"
  "decoder-only Gemma 2 the continuation's tokens are scored after the context's (<bos> + context).\n"
  "Generative tasks: greedy decoding of few-shot + question + ANSWER_PREFIX, cut at the first\n"
  "newline or stop token; exact match and F1 after SQuAD normalisation (lower case, no punctuation,\n"
  "no articles a/an/the, single spaces), maximum over the answers.\n"
  "Few-shot: N examples drawn from the same file with --seed (never the example itself), each as\n"
  "its context + \" \" + its gold answer, joined by \"\\n\\n\" before the example's context.\n"
  "\n"
  "Options:\n"
  "  --model DIR              Hugging Face checkpoint directory\n"
  "  --tokenizer PATH         tokenizer (default: the one in DIR)\n"
  "  --weights auto|f32|bf16  dtype of the weights in memory (default auto: f32 when the model fits\n"
  "                           in the available memory, else bf16; the log says which)\n"
  "  --num-fewshot N          default 0\n"
  "  --seed S                 few-shot sampling seed (default 1234)\n"
  "  --limit N                evaluate the first N examples of each task (few-shot examples are\n"
  "                           still drawn from the whole file)\n"
  "  --batch-size N           sequences per forward pass / prompts per generation batch (default 16)\n"
  "  --answer-prefix STR      text after the query (default \"\\nAnswer:\"; escapes \\n \\t allowed)\n"
  "  --max-new-tokens N       generative tasks (default 32)\n"
  "  --on-error skip|stop     a malformed line is reported as FILE:LINE; skip it and count it\n"
  "                           (default) or stop\n"
  "  --json-out FILE          write the results as JSON (atomically)\n"
  "Validation loss on token shards (t5gemma data prepare):\n"
  "  --data DIR               dataset directory\n"
  "  --split NAME             default val\n"
  "  --objective NAME         prefixlm | ul2 | causal (default: prefixlm for T5Gemma, causal for Gemma 2)\n"
  "  --ul2-mixture SPEC       UL2 denoisers (preset or spec, default t5gemma2)\n"
  "  --enc-len N --dec-len N  lengths (default 512 / 512)\n"
  "  --batches N              batches to evaluate (default 0: the whole split, once)\n"
  "Progress goes to stderr; the results table to stdout.\n";

static char *unescape(const char *s) {
  char *r = t5g_malloc(strlen(s) + 1), *o = r;
  for (; *s; s++) {
    if (*s == '\\' && s[1]) {
      s++;
      if (*s == 'n') *o++ = '\n';
      else if (*s == 't') *o++ = '\t';
      else if (*s == '\\') *o++ = '\\';
      else { *o++ = '\\'; *o++ = *s; }
    } else *o++ = *s;
  }
  *o = 0;
  return r;
}

static cJSON *num_or_null(double v) { return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull(); }

static void print_metric(double v) {
  if (isfinite(v)) printf(" %8.4f", v); else printf(" %8s", "-");
}

int cmd_eval(int argc, char **argv) {
  const char *model_dir = NULL, *tok_path = NULL, *json_out = NULL, *data_dir = NULL;
  const char **tasks = t5g_calloc(argc, sizeof(char *));
  int n_tasks = 0, stop_on_error = 0, objective_set = 0;
  WeightsMode wm = WEIGHTS_AUTO;
  char *prefix = NULL;
  TaskOptions to;
  task_options_default(&to);
  ValOptions vo;
  val_options_default(&vo);
  int rc = 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v;
#define VAL() do { if (!(v = cli_value(argc, argv, &i))) goto bad; } while (0)
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(USAGE, stdout); free(tasks); return 0; }
    else if (cli_is(a, "--model")) { VAL(); model_dir = v; }
    else if (cli_is(a, "--tokenizer")) { VAL(); tok_path = v; }
    else if (cli_is(a, "--weights")) { VAL(); if (weights_mode_parse(v, &wm)) goto bad; }
    else if (cli_is(a, "--task")) { VAL(); tasks[n_tasks++] = v; }
    else if (cli_is(a, "--num-fewshot")) { VAL(); if (cli_int("--num-fewshot", v, 0, 1000, &to.num_fewshot)) goto bad; }
    else if (cli_is(a, "--seed")) { VAL(); if (cli_u64("--seed", v, &to.seed)) goto bad; vo.seed = to.seed; }
    else if (cli_is(a, "--limit")) { VAL(); if (cli_int("--limit", v, 0, 1 << 30, &to.limit)) goto bad; }
    else if (cli_is(a, "--batch-size")) { VAL(); if (cli_int("--batch-size", v, 1, 1 << 16, &to.batch_size)) goto bad; vo.batch_size = to.batch_size; }
    else if (cli_is(a, "--answer-prefix")) { VAL(); free(prefix); prefix = unescape(v); to.answer_prefix = prefix; }
    else if (cli_is(a, "--max-new-tokens")) { VAL(); if (cli_int("--max-new-tokens", v, 1, 1 << 20, &to.max_new_tokens)) goto bad; }
    else if (cli_is(a, "--json-out")) { VAL(); json_out = v; }
    else if (cli_is(a, "--on-error")) {
      VAL();
      if (!strcmp(v, "skip")) stop_on_error = 0;
      else if (!strcmp(v, "stop")) stop_on_error = 1;
      else { t5g_error("--on-error: expected skip or stop, got \"%s\"", v); goto bad; }
    }
    else if (cli_is(a, "--data")) { VAL(); data_dir = v; }
    else if (cli_is(a, "--split")) { VAL(); vo.split = v; }
    else if (cli_is(a, "--objective")) { VAL(); vo.objective = v; objective_set = 1; }
    else if (cli_is(a, "--ul2-mixture")) { VAL(); vo.ul2_mixture = v; }
    else if (cli_is(a, "--enc-len")) { VAL(); if (cli_int("--enc-len", v, 1, 1 << 20, &vo.enc_len)) goto bad; }
    else if (cli_is(a, "--dec-len")) { VAL(); if (cli_int("--dec-len", v, 1, 1 << 20, &vo.dec_len)) goto bad; }
    else if (cli_is(a, "--batches")) { VAL(); if (cli_int("--batches", v, 0, 1 << 30, &vo.batches)) goto bad; }
    else if (a[0] == '-' && a[1]) { t5g_error("eval: unknown option '%s' (see t5gemma eval --help)", a); goto bad; }
    else tasks[n_tasks++] = a;
#undef VAL
  }
  if (!model_dir) { t5g_error("eval: --model DIR is required (see --help)"); goto bad; }
  if (!n_tasks && !data_dir) { t5g_error("eval: nothing to evaluate: give task files and/or --data DIR (see --help)"); goto bad; }
  rc = 1;
  Model m;
  InferPlan ip = {"eval", to.batch_size, vo.enc_len, vo.dec_len, n_tasks ? to.max_new_tokens : 0};
  if (model_load_infer(&m, model_dir, wm, &ip, NULL) != 0) goto bad;
  if (!objective_set) vo.objective = m.cfg.kind == MODEL_T5GEMMA ? "prefixlm" : "causal";
  int tfail;
  Tokenizer *tok = cli_load_tokenizer(tok_path, model_dir, &m, n_tasks > 0, &tfail);
  if (tfail) { model_free(&m); goto bad; }
  to.progress = stderr;
  vo.progress = stderr;
  vo.data_dir = data_dir;

  TaskResult *res = t5g_calloc(n_tasks ? n_tasks : 1, sizeof *res);
  int n_done = 0, failed = 0, total_skipped = 0;
  ValResult vr;
  int have_val = 0;
  double t0 = t5g_now();
  fprintf(stderr, "eval: %d thread(s), batch size %d, %d-shot\n", t5g_threads(), to.batch_size, to.num_fewshot);
  if (data_dir) {
    fprintf(stderr, "[val] %s split %s, objective %s\n", data_dir, vo.split, vo.objective);
    if (val_loss_run(&m, tok, &vo, &vr) != 0) failed = 1;
    else have_val = 1;
  }
  for (int k = 0; k < n_tasks && !failed; k++) {
    TaskData td;
    if (task_load(tasks[k], stop_on_error, stderr, &td) != 0) { failed = 1; break; }
    fprintf(stderr, "[%s] %s: %d examples (%s)%s", td.name, tasks[k], td.n, task_kind_name(td.kind), td.skipped ? "" : "\n");
    if (td.skipped) fprintf(stderr, ", %d malformed line(s) skipped\n", td.skipped);
    if (task_run(&m, tok, &td, &to, &res[n_done]) != 0) { task_free(&td); failed = 1; break; }
    total_skipped += res[n_done].skipped;
    fprintf(stderr, "[%s] done in %.1f s\n", td.name, res[n_done].seconds);
    n_done++;
    task_free(&td);
  }
  if (failed) {
    fprintf(stderr, "t5gemma eval: %s\n", t5g_last_error());
  }
  /* results table (what finished) */
  if (have_val) {
    printf("validation (%s, split %s, objective %s): loss %.4f  ppl %.3f  token_acc %.4f  (%lld tokens, %d batches)\n",
           data_dir, vo.split, vr.objective, vr.loss, vr.ppl, vr.token_acc, (long long)vr.tokens, vr.batches);
  }
  if (n_done) {
    printf("%-20s %-16s %6s %7s %8s %8s %8s %8s %8s\n", "task", "kind", "n", "skipped", "acc", "acc_norm", "em", "f1", "stderr");
    for (int k = 0; k < n_done; k++) {
      TaskResult *r = &res[k];
      printf("%-20s %-16s %6d %7d", r->name, task_kind_name(r->kind), r->n, r->skipped);
      print_metric(r->acc); print_metric(r->acc_norm); print_metric(r->em); print_metric(r->f1);
      print_metric(r->kind == TASK_GEN ? NAN : r->acc_stderr);
      printf("\n");
    }
    if (total_skipped) printf("%d malformed line(s) skipped in total\n", total_skipped);
  }
  fflush(stdout);
  if (json_out && !failed) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "model", model_dir);
    cJSON_AddStringToObject(root, "model_type", m.cfg.kind == MODEL_T5GEMMA ? "t5gemma" : "gemma2");
    if (tok) cJSON_AddStringToObject(root, "tokenizer", tokenizer_path(tok));
    cJSON *st = cJSON_AddObjectToObject(root, "settings");
    cJSON_AddNumberToObject(st, "num_fewshot", to.num_fewshot);
    cJSON_AddNumberToObject(st, "seed", (double)to.seed);
    cJSON_AddNumberToObject(st, "limit", to.limit);
    cJSON_AddNumberToObject(st, "batch_size", to.batch_size);
    cJSON_AddStringToObject(st, "answer_prefix", to.answer_prefix);
    cJSON_AddNumberToObject(st, "max_new_tokens", to.max_new_tokens);
    cJSON_AddStringToObject(st, "on_error", stop_on_error ? "stop" : "skip");
    cJSON_AddNumberToObject(st, "threads", t5g_threads());
    cJSON *tj = cJSON_AddObjectToObject(root, "tasks");
    for (int k = 0; k < n_done; k++) {
      TaskResult *r = &res[k];
      cJSON *o = cJSON_AddObjectToObject(tj, r->name);
      cJSON_AddStringToObject(o, "file", tasks[k]);
      cJSON_AddStringToObject(o, "kind", task_kind_name(r->kind));
      cJSON_AddNumberToObject(o, "n", r->n);
      cJSON_AddNumberToObject(o, "skipped", r->skipped);
      cJSON_AddNumberToObject(o, "truncated", r->truncated);
      if (r->kind == TASK_GEN) {
        cJSON_AddItemToObject(o, "em", num_or_null(r->em));
        cJSON_AddItemToObject(o, "f1", num_or_null(r->f1));
      } else {
        cJSON_AddItemToObject(o, "acc", num_or_null(r->acc));
        cJSON_AddItemToObject(o, "acc_stderr", num_or_null(r->acc_stderr));
        cJSON_AddItemToObject(o, "acc_norm", num_or_null(r->acc_norm));
        cJSON_AddItemToObject(o, "acc_norm_stderr", num_or_null(r->acc_norm_stderr));
      }
      cJSON_AddNumberToObject(o, "seconds", r->seconds);
    }
    if (have_val) {
      cJSON *o = cJSON_AddObjectToObject(root, "validation");
      cJSON_AddStringToObject(o, "data", data_dir);
      cJSON_AddStringToObject(o, "split", vo.split);
      cJSON_AddStringToObject(o, "objective", vr.objective);
      cJSON_AddNumberToObject(o, "enc_len", vo.enc_len);
      cJSON_AddNumberToObject(o, "dec_len", vo.dec_len);
      cJSON_AddNumberToObject(o, "batches", vr.batches);
      cJSON_AddNumberToObject(o, "tokens", (double)vr.tokens);
      cJSON_AddItemToObject(o, "loss", num_or_null(vr.loss));
      cJSON_AddItemToObject(o, "perplexity", num_or_null(vr.ppl));
      cJSON_AddItemToObject(o, "token_accuracy", num_or_null(vr.token_acc));
      cJSON_AddNumberToObject(o, "seconds", vr.seconds);
    }
    cJSON_AddNumberToObject(root, "skipped_lines", total_skipped);
    cJSON_AddNumberToObject(root, "seconds", t5g_now() - t0);
    char *txt = cJSON_Print(root);
    T5gOutFile of;
    if (t5g_open_out(&of, json_out) != 0) failed = 1;
    else {
      fputs(txt, of.f); fputc('\n', of.f);
      if (t5g_commit_file(&of) != 0) failed = 1;
    }
    if (failed) fprintf(stderr, "t5gemma eval: %s\n", t5g_last_error());
    free(txt);
    cJSON_Delete(root);
  }
  free(res);
  tokenizer_free(tok);
  model_free(&m);
  free(tasks); free(prefix);
  return failed ? 1 : 0;
bad:
  fprintf(stderr, "t5gemma eval: %s\n", t5g_last_error());
  free(tasks); free(prefix);
  return rc;
}
