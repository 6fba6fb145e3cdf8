/* cli_score.c: `t5gemma score` (issue 6; the scoring itself: eval/score.h). */
#define _GNU_SOURCE
#include "data/tokenizer.h"
#include "eval/cli_common.h"
#include "eval/score.h"
#include "model/weights_bf16.h"
#include "train/commands.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static const char *USAGE =
  "usage: t5gemma score --model DIR [--input FILE] [options]\n"
  "\n"
  "Log-likelihood of targets under the model, one JSON line in -> one JSON line out (teacher\n"
  "forcing, batched, padded; all cores). Input lines (JSONL; blank lines are ignored):\n"
  "  T5Gemma (encoder-decoder):\n"
  "    {\"input\": TEXT, \"target\": TEXT}            the input is encoded with <bos> prepended (as\n"
  "                                                 HF's tokenizer does) and goes to the encoder;\n"
  "                                                 the target (no specials) is the decoder's\n"
  "    {\"input_ids\": [..], \"target_ids\": [..]}    token ids used exactly as given\n"
  "    The decoder input is <bos> + target[:-1] (decoder start token = <bos>, spec 5) and every\n"
  "    target token is scored.\n"
  "  Gemma 2 (decoder-only):\n"
  "    {\"text\": TEXT}            encoded with <bos> prepended; every token after <bos> is scored\n"
  "    {\"ids\": [..]}             every token after the first is scored (give <bos> first yourself)\n"
  "    {\"input\": TEXT, \"target\": TEXT}  (or input_ids/target_ids) the target's tokens are scored\n"
  "                                after the input (<bos> + input for text)\n"
  "  Other fields are ignored; an \"id\" field is copied to the output.\n"
  "Output per line: {\"index\": i, \"line\": L, [\"id\": ...,] \"sum_logprob\": S, \"n_tokens\": N}\n"
  "  S = sum of natural-log probabilities of the scored tokens (soft-capped logits, spec 1.6);\n"
  "  with --per-token also \"token_logprobs\", \"token_ids\" and \"tokens\" (pieces, when a\n"
  "  tokenizer is loaded). A malformed line gives {\"index\": i, \"line\": L, \"error\": \"...\"}\n"
  "  (and a FILE:LINE message on stderr) so the output stays aligned with the input, unless\n"
  "  --on-error stop.\n"
  "Options:\n"
  "  --model DIR            Hugging Face checkpoint directory\n"
  "  --tokenizer PATH       tokenizer (default: the one in DIR; needed for text fields only)\n"
  "  --input FILE           JSONL input (default stdin)\n"
  "  --output FILE          output (default stdout; written atomically when a file)\n"
  "  --batch-size N         rows per forward pass (default 16)\n"
  "  --per-token            per-token log-probabilities\n"
  "  --target-eos           append <eos> to every target (text or ids; decoder-only \"text\"/\"ids\"\n"
  "                         too), i.e. also score the end of the sequence\n"
  "  --no-bos               do not prepend <bos> to text inputs (JAX T5Gemma's sampler encodes the\n"
  "                         prompt without it, spec 5)\n"
  "  --on-error skip|stop   default skip\n"
  "  --weights auto|f32|bf16  dtype of the weights in memory (default auto: f32 when the model fits\n"
  "                         in the available memory, else bf16; the log says which; see\n"
  "                         `t5gemma info MODEL`); bf16 halves the weights' memory, results equal\n"
  "                         the f32 model of the bf16-rounded weights\n";

typedef struct Ex {
  int line;
  int32_t *ctx, *tgt;
  int n_ctx, n_tgt;
  char *id_json;       /* the "id" field, printed as JSON */
  char *error;         /* malformed: the message */
} Ex;

static int enc_text(const Tokenizer *tok, const char *s, int bos, int32_t **ids, int *n) {
  int64_t n64;
  if (!tok) return t5g_error("a text field needs a tokenizer (--tokenizer PATH)");
  if (tokenizer_encode(tok, s, strlen(s), bos, 0, 0, ids, &n64) != 0) return -1;
  *n = (int)n64;
  return 0;
}

static void append_tok(int32_t **ids, int *n, int32_t t) {
  *ids = t5g_realloc(*ids, (*n + 1) * sizeof(int32_t));
  (*ids)[(*n)++] = t;
}

/* Parse one line into ex; returns 0 or -1 with ex->error set. */
static int parse_line(const char *line, const Model *m, const Tokenizer *tok, int bos, int target_eos, Ex *ex) {
  char err[512] = "";
  cJSON *o = cJSON_Parse(line);
  const int encdec = m->cfg.kind == MODEL_T5GEMMA;
  int ok = 0;
  if (!o || !cJSON_IsObject(o)) { snprintf(err, sizeof err, "not a JSON object"); goto done; }
  const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
  if (id) ex->id_json = cJSON_PrintUnformatted(id);
  const cJSON *in = cJSON_GetObjectItemCaseSensitive(o, "input"), *tg = cJSON_GetObjectItemCaseSensitive(o, "target");
  const cJSON *ini = cJSON_GetObjectItemCaseSensitive(o, "input_ids"), *tgi = cJSON_GetObjectItemCaseSensitive(o, "target_ids");
  const cJSON *tx = cJSON_GetObjectItemCaseSensitive(o, "text"), *ids = cJSON_GetObjectItemCaseSensitive(o, "ids");
  if (in || tg) {
    if (!in || !tg) { snprintf(err, sizeof err, "missing \"%s\" (\"input\" and \"target\" go together)", in ? "target" : "input"); goto done; }
    if (!cJSON_IsString(in) || !cJSON_IsString(tg)) { snprintf(err, sizeof err, "\"input\" and \"target\" must both be strings"); goto done; }
    if (enc_text(tok, in->valuestring, bos, &ex->ctx, &ex->n_ctx) || enc_text(tok, tg->valuestring, 0, &ex->tgt, &ex->n_tgt)) {
      snprintf(err, sizeof err, "%s", t5g_last_error()); goto done;
    }
  } else if (ini || tgi) {
    if (!ini || !tgi) { snprintf(err, sizeof err, "missing \"%s\" (\"input_ids\" and \"target_ids\" go together)", ini ? "target_ids" : "input_ids"); goto done; }
    if (cli_json_ids(ini, "input_ids", &ex->ctx, &ex->n_ctx, err, sizeof err) || cli_json_ids(tgi, "target_ids", &ex->tgt, &ex->n_tgt, err, sizeof err)) goto done;
  } else if (!encdec && (tx || ids)) {
    int32_t *all = NULL; int n = 0;
    if (tx) {
      if (!cJSON_IsString(tx)) { snprintf(err, sizeof err, "\"text\" must be a string"); goto done; }
      if (enc_text(tok, tx->valuestring, bos, &all, &n)) { snprintf(err, sizeof err, "%s", t5g_last_error()); goto done; }
    } else if (cli_json_ids(ids, "ids", &all, &n, err, sizeof err)) goto done;
    if (n < 1 + (target_eos ? 0 : 1)) { free(all); snprintf(err, sizeof err, "needs at least two tokens (the first is the context)"); goto done; }
    ex->ctx = t5g_malloc(sizeof(int32_t));
    ex->ctx[0] = all[0]; ex->n_ctx = 1;
    ex->n_tgt = n - 1;
    ex->tgt = t5g_malloc((n > 1 ? n - 1 : 1) * sizeof(int32_t));
    memcpy(ex->tgt, all + 1, (size_t)(n - 1) * sizeof(int32_t));
    free(all);
  } else {
    snprintf(err, sizeof err, encdec ? "expected \"input\" and \"target\" (text) or \"input_ids\" and \"target_ids\" (T5Gemma model)"
                                     : "expected \"text\", \"ids\", or \"input\"/\"target\" (Gemma 2 model)");
    goto done;
  }
  if (target_eos) append_tok(&ex->tgt, &ex->n_tgt, m->cfg.eos_token_id);
  if (ex->n_ctx < 1) { snprintf(err, sizeof err, encdec ? "the encoder input is empty" : "the context is empty (it needs at least <bos>)"); goto done; }
  if (ex->n_tgt < 1) { snprintf(err, sizeof err, "the target is empty"); goto done; }
  {
    int Vc = encdec ? m->cfg.enc.vocab_size : m->cfg.dec.vocab_size, Vt = m->cfg.dec.vocab_size;
    for (int i = 0; i < ex->n_ctx; i++) if (ex->ctx[i] >= Vc) { snprintf(err, sizeof err, "input token %d has id %d >= vocab_size %d", i, ex->ctx[i], Vc); goto done; }
    for (int i = 0; i < ex->n_tgt; i++) if (ex->tgt[i] >= Vt) { snprintf(err, sizeof err, "target token %d has id %d >= vocab_size %d", i, ex->tgt[i], Vt); goto done; }
    int lim = m->cfg.dec.max_position_embeddings - (encdec ? 0 : 1);
    if (ex->n_tgt > lim) { snprintf(err, sizeof err, "target of %d tokens exceeds the decoder's max_position_embeddings %d", ex->n_tgt, m->cfg.dec.max_position_embeddings); goto done; }
    /* longer inputs are refused, not cut (Hugging Face does not truncate by default either) */
    if (encdec && ex->n_ctx > m->cfg.enc.max_position_embeddings) {
      snprintf(err, sizeof err, "input of %d tokens exceeds the encoder's max_position_embeddings %d", ex->n_ctx, m->cfg.enc.max_position_embeddings);
      goto done;
    }
    if (!encdec && ex->n_ctx + ex->n_tgt > m->cfg.dec.max_position_embeddings) {
      snprintf(err, sizeof err, "input of %d tokens + target of %d tokens = %d positions exceeds the model's max_position_embeddings %d",
               ex->n_ctx, ex->n_tgt, ex->n_ctx + ex->n_tgt, m->cfg.dec.max_position_embeddings);
      goto done;
    }
  }
  ok = 1;
done:
  cJSON_Delete(o);
  if (!ok) { ex->error = t5g_strdup(err); return -1; }
  return 0;
}

static void ex_free(Ex *e) { free(e->ctx); free(e->tgt); free(e->id_json); free(e->error); memset(e, 0, sizeof *e); }

int cmd_score(int argc, char **argv) {
  const char *model_dir = NULL, *tok_path = NULL, *in_path = NULL, *out_path = NULL;
  int batch = 16, per_token = 0, target_eos = 0, bos = 1, stop_on_error = 0;
  WeightsMode wm = WEIGHTS_AUTO;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v;
#define VAL() do { if (!(v = cli_value(argc, argv, &i))) goto bad; } while (0)
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(USAGE, stdout); return 0; }
    else if (cli_is(a, "--model")) { VAL(); model_dir = v; }
    else if (cli_is(a, "--tokenizer")) { VAL(); tok_path = v; }
    else if (cli_is(a, "--input")) { VAL(); in_path = v; }
    else if (cli_is(a, "--output")) { VAL(); out_path = v; }
    else if (cli_is(a, "--batch-size")) { VAL(); if (cli_int("--batch-size", v, 1, 1 << 16, &batch)) goto bad; }
    else if (!strcmp(a, "--per-token")) per_token = 1;
    else if (!strcmp(a, "--target-eos")) target_eos = 1;
    else if (!strcmp(a, "--no-bos")) bos = 0;
    else if (cli_is(a, "--weights")) { VAL(); if (weights_mode_parse(v, &wm)) goto bad; }
    else if (cli_is(a, "--on-error")) {
      VAL();
      if (!strcmp(v, "skip")) stop_on_error = 0;
      else if (!strcmp(v, "stop")) stop_on_error = 1;
      else { t5g_error("--on-error: expected skip or stop, got \"%s\"", v); goto bad; }
    }
    else { t5g_error("score: unknown option '%s' (see t5gemma score --help)", a); goto bad; }
#undef VAL
  }
  if (!model_dir) { t5g_error("score: --model DIR is required (see --help)"); goto bad; }
  Model m;
  InferPlan ip = {"score", batch, 512, 512, 0};   /* memory estimate for rows of up to 512 tokens */
  if (model_load_infer(&m, model_dir, wm, &ip, NULL) != 0) goto fail0;
  int tfail;
  Tokenizer *tok = cli_load_tokenizer(tok_path, model_dir, &m, tok_path != NULL, &tfail);
  if (tfail) { model_free(&m); goto fail0; }
  FILE *in = in_path ? fopen(in_path, "r") : stdin;
  if (!in) { t5g_error("%s: cannot open the input", in_path); tokenizer_free(tok); model_free(&m); goto fail0; }
  T5gOutFile of = {0};
  FILE *out = stdout;
  if (out_path) {
    if (t5g_open_out(&of, out_path) != 0) { if (in != stdin) fclose(in); tokenizer_free(tok); model_free(&m); goto fail0; }
    out = of.f;
  }
  const char *src_name = in_path ? in_path : "<stdin>";
  int failed = 0, index = 0, skipped = 0, lineno = 0, eof = 0;
  int64_t total_tok = 0, nonfinite = 0;
  double t0 = t5g_now();
  const int CH = 4096;                      /* examples read and scored per chunk */
  Ex *ex = t5g_calloc(CH, sizeof *ex);
  char *line = NULL; size_t cap = 0;
  while (!eof && !failed) {
    int n = 0;
    ssize_t len;
    while (n < CH && (len = getline(&line, &cap, in)) >= 0) {
      lineno++;
      while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
      int blank = 1;
      for (ssize_t k = 0; k < len; k++) if (line[k] != ' ' && line[k] != '\t') blank = 0;
      if (blank) continue;
      ex[n].line = lineno;
      if (parse_line(line, &m, tok, bos, target_eos, &ex[n]) != 0) {
        fprintf(stderr, "%s:%d: %s%s\n", src_name, lineno, ex[n].error, stop_on_error ? "" : " (line skipped)");
        if (stop_on_error) { t5g_error("%s:%d: %s", src_name, lineno, ex[n].error); failed = 1; ex_free(&ex[n]); break; }
        skipped++;
      }
      n++;
    }
    if (n < CH) eof = 1;
    if (failed) { for (int k = 0; k < n; k++) ex_free(&ex[k]); break; }
    /* score the well-formed examples of the chunk */
    int ni = 0;
    ScoreItem *items = t5g_calloc(n ? n : 1, sizeof *items);
    int *map = t5g_calloc(n ? n : 1, sizeof(int));
    for (int k = 0; k < n; k++) if (!ex[k].error) { items[ni] = (ScoreItem){ex[k].ctx, ex[k].n_ctx, ex[k].tgt, ex[k].n_tgt}; map[ni++] = k; }
    ScoreResult *res = t5g_calloc(ni ? ni : 1, sizeof *res);
    int trunc = 0;
    if (score_items(&m, items, ni, batch, per_token, res, &trunc, NULL, NULL) != 0) failed = 1;
    if (trunc) fprintf(stderr, "score: %d input(s) longer than max_position_embeddings were cut on the left (keeping <bos>)\n", trunc);
    for (int j = 0, k = 0; k < n && !failed; k++) {
      Ex *e = &ex[k];
      fprintf(out, "{\"index\": %d, \"line\": %d", index++, e->line);
      if (e->id_json) fprintf(out, ", \"id\": %s", e->id_json);
      if (e->error) { fprintf(out, ", \"error\": "); cli_json_string(out, e->error); fprintf(out, "}\n"); continue; }
      ScoreResult *r = &res[j];
      T5G_ASSERT(map[j] == k);
      j++;
      total_tok += r->n_tokens;
      fprintf(out, ", \"sum_logprob\": ");
      cli_json_num(out, 9, r->sum_logprob, &nonfinite);
      fprintf(out, ", \"n_tokens\": %d", r->n_tokens);
      if (per_token) {
        fprintf(out, ", \"token_logprobs\": [");
        for (int t = 0; t < r->n_tokens; t++) { if (t) fputs(", ", out); cli_json_num(out, 7, r->token_logprobs[t], &nonfinite); }
        fprintf(out, "], \"token_ids\": [");
        for (int t = 0; t < e->n_tgt; t++) fprintf(out, "%s%d", t ? ", " : "", e->tgt[t]);
        fprintf(out, "]");
        if (tok) {
          fprintf(out, ", \"tokens\": [");
          for (int t = 0; t < e->n_tgt; t++) {
            const char *pc = tokenizer_id_to_piece(tok, e->tgt[t]);
            if (t) fprintf(out, ", ");
            cli_json_string(out, pc ? pc : "");
          }
          fprintf(out, "]");
        }
      }
      fprintf(out, "}\n");
    }
    for (int j = 0; j < ni; j++) free(res[j].token_logprobs);
    free(res); free(items); free(map);
    for (int k = 0; k < n; k++) ex_free(&ex[k]);
    fflush(out);
  }
  free(line); free(ex);
  if (in != stdin) fclose(in);
  if (!failed && out_path && t5g_commit_file(&of) != 0) failed = 1;
  if (failed && out_path && of.f) t5g_abort_file(&of);
  if (!failed) {
    double dt = t5g_now() - t0;
    fprintf(stderr, "scored %d example(s), %lld target tokens in %.2f s%s", index - skipped, (long long)total_tok, dt, skipped ? "" : "\n");
    if (skipped) fprintf(stderr, "; %d malformed line(s) skipped\n", skipped);
    if (nonfinite)
      fprintf(stderr, "score: warning: %lld log-probabilit%s NaN or infinite (the model's logits are not finite: broken "
              "weights?); written as null\n", (long long)nonfinite, nonfinite == 1 ? "y is" : "ies are");
  }
  tokenizer_free(tok);
  model_free(&m);
  if (failed) goto fail0;
  return 0;
bad:
  fprintf(stderr, "t5gemma score: %s\n", t5g_last_error());
  return 2;
fail0:
  fprintf(stderr, "t5gemma score: %s\n", t5g_last_error());
  return 1;
}
