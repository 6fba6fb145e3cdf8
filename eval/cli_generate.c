/* cli_generate.c: `t5gemma generate` (issue 6; decoding: eval/generate.h). */
#define _GNU_SOURCE
#include "data/tokenizer.h"
#include "eval/cli_common.h"
#include "eval/generate.h"
#include "model/weights_bf16.h"
#include "train/commands.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *USAGE =
  "usage: t5gemma generate --model DIR [options]\n"
  "\n"
  "Generate text with KV caches. T5Gemma: the whole prompt (with <bos>, as HF's tokenizer adds it)\n"
  "goes to the encoder, which runs once; the decoder starts from <bos> (spec 4.6, 5). Gemma 2: the\n"
  "prompt (with <bos>) is prefilled and continued.\n"
  "\n"
  "Input (one of; default: one prompt per line of stdin):\n"
  "  --prompt TEXT          a prompt (repeatable)\n"
  "  --jsonl FILE           one JSON object per line: {\"prompt\": \"...\"} or {\"messages\": [{\"role\":\n"
  "                         \"user\", \"content\": \"...\"}, ...]} (rendered with Gemma's chat template:\n"
  "                         <bos><start_of_turn>user\\n{content}<end_of_turn>\\n<start_of_turn>model\\n)\n"
  "  --chat                 wrap plain prompts (--prompt, stdin, \"prompt\" fields) in the chat template\n"
  "                         as one user turn\n"
  "Model:\n"
  "  --model DIR            Hugging Face checkpoint directory (config.json + safetensors)\n"
  "  --tokenizer PATH       tokenizer.json / tokenizer.model (default: the one in DIR)\n"
  "  --weights auto|f32|bf16  dtype of the weights in memory (default auto: f32 when the model fits\n"
  "                         in the available memory, else bf16; the log says which)\n"
  "Decoding (default: greedy):\n"
  "  --max-new-tokens N     default 64\n"
  "  --min-new-tokens N     the stop tokens (<eos>, <end_of_turn>) cannot end a row before N\n"
  "                         generated tokens (default 0; Hugging Face's min_new_tokens)\n"
  "  --greedy               argmax decoding (overrides the sampling options)\n"
  "  --temperature T        sample at temperature T (> 0)\n"
  "  --top-k K              sample among the K most probable tokens\n"
  "  --top-p P              nucleus sampling: the smallest set of most probable tokens with mass >= P\n"
  "                         (any of these three turns sampling on; order: temperature, top-k, top-p)\n"
  "  --seed S               sampling seed (default 0); row i of a batch has its own stream, so\n"
  "                         results do not depend on the batch size\n"
  "  --num-beams N          beam search (Hugging Face semantics, early stopping); sampling options\n"
  "                         are ignored\n"
  "  --length-penalty A     beam score = sum logprob / length^A (default 1)\n"
  "  --num-return N         with beams: return the N best sequences (default 1)\n"
  "  Generation stops at <eos> or <end_of_turn> (looked up by name) or after --max-new-tokens.\n"
  "Batching and output:\n"
  "  --batch-size N         prompts decoded together (default 8; right padding, per-row stopping)\n"
  "  --json                 one JSON line per prompt: index, text, ids, logprobs (natural log of the\n"
  "                         model's own probability of each generated token), sum_logprob, n_tokens,\n"
  "                         finish (\"stop\" | \"length\"); with --num-return > 1 also \"sequences\"\n"
  "                         (the ids include the stop token; the text does not)\n"
  "  --on-error skip|stop   a malformed --jsonl line is reported as FILE:LINE and skipped (default)\n"
  "                         or stops the run\n"
  "Without --json each generated text is printed followed by a newline (beams: one per line).\n";

typedef struct Prompt { int32_t *ids; int n; int line; } Prompt;

static int64_t g_nonfinite;   /* NaN / infinite log-probabilities (written as null in JSON) */

static void print_seq_json(FILE *f, const Tokenizer *tok, const GenOutput *o, const GenConfig *gc) {
  int nt = o->n - (o->stopped ? 1 : 0);
  char *text = gen_decode_text(tok, o->ids, nt);
  fprintf(f, "\"text\": ");
  cli_json_string(f, text);
  free(text);
  fprintf(f, ", \"ids\": [");
  for (int i = 0; i < o->n; i++) fprintf(f, "%s%d", i ? ", " : "", o->ids[i]);
  fprintf(f, "], \"logprobs\": [");
  for (int i = 0; i < o->n; i++) { if (i) fputs(", ", f); cli_json_num(f, 6, o->logprobs[i], NULL); }
  fprintf(f, "], \"sum_logprob\": ");
  cli_json_num(f, 8, o->sum_logprob, NULL);
  fprintf(f, ", \"n_tokens\": %d, \"finish\": \"%s\"", o->n, o->stopped ? "stop" : "length");
  if (gc->num_beams > 1) { fprintf(f, ", \"score\": "); cli_json_num(f, 8, o->score, NULL); }
}

static void print_result(const Tokenizer *tok, int index, int line, GenOutput *o, int n, int json, const GenConfig *gc) {
  for (int k = 0; k < n; k++) {
    for (int i = 0; i < o[k].n; i++) g_nonfinite += !isfinite(o[k].logprobs[i]);
    g_nonfinite += !isfinite(o[k].sum_logprob);
  }
  if (!json) {
    for (int k = 0; k < n; k++) {
      int nt = o[k].n - (o[k].stopped ? 1 : 0);
      char *text = gen_decode_text(tok, o[k].ids, nt);
      printf("%s\n", text);
      free(text);
    }
  } else {
    printf("{\"index\": %d, ", index);
    if (line > 0) printf("\"line\": %d, ", line);
    print_seq_json(stdout, tok, &o[0], gc);
    if (n > 1) {
      printf(", \"sequences\": [");
      for (int k = 0; k < n; k++) { printf("%s{", k ? ", " : ""); print_seq_json(stdout, tok, &o[k], gc); printf("}"); }
      printf("]");
    }
    printf("}\n");
  }
  fflush(stdout);
}

static int encode_plain(const Tokenizer *tok, const char *text, int chat, int32_t **ids, int *n) {
  if (chat) return cli_chat_encode_text(tok, text, ids, n);
  int64_t n64;
  if (tokenizer_encode(tok, text, strlen(text), 1, 0, 0, ids, &n64) != 0) return -1;
  *n = (int)n64;
  return 0;
}

int cmd_generate(int argc, char **argv) {
  const char *model_dir = NULL, *tok_path = NULL, *jsonl = NULL;
  const char **prompts = t5g_calloc(argc, sizeof(char *));
  int n_prompts = 0, chat = 0, json = 0, batch = 8, greedy_flag = 0, sampling = 0, num_return = 1, stop_on_error = 0;
  WeightsMode wm = WEIGHTS_AUTO;
  GenConfig gc;
  gen_config_default(&gc, NULL);
  float f;
  int rc = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v;
#define VAL() do { if (!(v = cli_value(argc, argv, &i))) goto bad; } while (0)
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(USAGE, stdout); free(prompts); return 0; }
    else if (cli_is(a, "--model")) { VAL(); model_dir = v; }
    else if (cli_is(a, "--tokenizer")) { VAL(); tok_path = v; }
    else if (cli_is(a, "--weights")) { VAL(); if (weights_mode_parse(v, &wm)) goto bad; }
    else if (cli_is(a, "--prompt")) { VAL(); prompts[n_prompts++] = v; }
    else if (cli_is(a, "--jsonl")) { VAL(); jsonl = v; }
    else if (!strcmp(a, "--chat")) chat = 1;
    else if (!strcmp(a, "--json")) json = 1;
    else if (!strcmp(a, "--greedy")) greedy_flag = 1;
    else if (cli_is(a, "--max-new-tokens")) { VAL(); if (cli_int("--max-new-tokens", v, 1, 1 << 20, &gc.max_new_tokens)) goto bad; }
    else if (cli_is(a, "--min-new-tokens")) { VAL(); if (cli_int("--min-new-tokens", v, 0, 1 << 20, &gc.min_new_tokens)) goto bad; }
    else if (cli_is(a, "--temperature")) { VAL(); if (cli_float("--temperature", v, 1e-6, 1e6, &gc.temperature)) goto bad; sampling = 1; }
    else if (cli_is(a, "--top-k")) { VAL(); if (cli_int("--top-k", v, 0, 1 << 30, &gc.top_k)) goto bad; sampling = 1; }
    else if (cli_is(a, "--top-p")) { VAL(); if (cli_float("--top-p", v, 1e-9, 1.0, &f)) goto bad; gc.top_p = f; sampling = 1; }
    else if (cli_is(a, "--seed")) { VAL(); if (cli_u64("--seed", v, &gc.seed)) goto bad; }
    else if (cli_is(a, "--num-beams")) { VAL(); if (cli_int("--num-beams", v, 1, 256, &gc.num_beams)) goto bad; }
    else if (cli_is(a, "--length-penalty")) { VAL(); if (cli_float("--length-penalty", v, -100, 100, &gc.length_penalty)) goto bad; }
    else if (cli_is(a, "--num-return")) { VAL(); if (cli_int("--num-return", v, 1, 256, &num_return)) goto bad; }
    else if (cli_is(a, "--batch-size")) { VAL(); if (cli_int("--batch-size", v, 1, 4096, &batch)) goto bad; }
    else if (cli_is(a, "--on-error")) {
      VAL();
      if (!strcmp(v, "skip")) stop_on_error = 0;
      else if (!strcmp(v, "stop")) stop_on_error = 1;
      else { t5g_error("--on-error: expected skip or stop, got \"%s\"", v); goto bad; }
    }
    else { t5g_error("generate: unknown option '%s' (see t5gemma generate --help)", a); goto bad; }
#undef VAL
  }
  if (!model_dir) { t5g_error("generate: --model DIR is required (see --help)"); goto bad; }
  if (jsonl && n_prompts) { t5g_error("generate: give prompts with --prompt or --jsonl, not both"); goto bad; }
  if (num_return > gc.num_beams) { t5g_error("generate: --num-return %d needs --num-beams >= %d", num_return, num_return); goto bad; }
  gc.greedy = greedy_flag || !sampling;
  rc = 0;                       /* from here on errors are run-time errors (exit 1), not usage (2) */

  Model m;
  /* memory estimate for prompts of up to 512 tokens; beam search double-buffers its caches */
  InferPlan ip = {"generate", gc.num_beams > 1 ? 2 * gc.num_beams : batch, 512, 0, gc.max_new_tokens};
  if (model_load_infer(&m, model_dir, wm, &ip, NULL) != 0) goto bad;
  int tfail;
  Tokenizer *tok = cli_load_tokenizer(tok_path, model_dir, &m, 1, &tfail);
  if (!tok) { model_free(&m); goto bad; }
  {
    GenConfig d;
    gen_config_default(&d, &m);
    gc.bos_id = d.bos_id;
    gc.n_stop = d.n_stop;
    memcpy(gc.stop_ids, d.stop_ids, sizeof d.stop_ids);
    gen_stop_ids_from_tokenizer(&gc, tok);
    if (gen_config_check(&gc) != 0) { tokenizer_free(tok); model_free(&m); goto bad; }
  }
  /* collect the prompts */
  Prompt *P = NULL;
  int nP = 0, capP = 0, skipped = 0, failed = 0;
#define PUSH(ids_, n_, line_) do { if (nP == capP) { capP = capP ? 2 * capP : 64; P = t5g_realloc(P, capP * sizeof *P); } \
    P[nP].ids = (ids_); P[nP].n = (n_); P[nP].line = (line_); nP++; } while (0)
  if (n_prompts) {
    for (int k = 0; k < n_prompts; k++) {
      int32_t *ids; int n;
      if (encode_plain(tok, prompts[k], chat, &ids, &n)) { failed = 1; break; }
      PUSH(ids, n, 0);
    }
  } else {
    FILE *in = jsonl ? fopen(jsonl, "r") : stdin;
    if (!in) { t5g_error("%s: cannot open", jsonl); failed = 1; }
    char *line = NULL; size_t cap = 0; ssize_t len; int lineno = 0;
    while (!failed && (len = getline(&line, &cap, in)) >= 0) {
      lineno++;
      while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
      if (!jsonl) {
        int32_t *ids; int n;
        if (encode_plain(tok, line, chat, &ids, &n)) { failed = 1; break; }
        PUSH(ids, n, lineno);
        continue;
      }
      int blank = 1;
      for (ssize_t k = 0; k < len; k++) if (line[k] != ' ' && line[k] != '\t') blank = 0;
      if (blank) continue;
      cJSON *o = cJSON_Parse(line);
      const cJSON *pr = o ? cJSON_GetObjectItemCaseSensitive(o, "prompt") : NULL;
      const cJSON *ms = o ? cJSON_GetObjectItemCaseSensitive(o, "messages") : NULL;
      int32_t *ids = NULL; int n = 0, bad = 0;
      if (!o) { t5g_error("not valid JSON"); bad = 1; }
      else if (cJSON_IsString(pr)) bad = encode_plain(tok, pr->valuestring, chat, &ids, &n) != 0;
      else if (ms) bad = cli_chat_encode(tok, ms, &ids, &n) != 0;
      else { t5g_error("expected a string field \"prompt\" or a list \"messages\""); bad = 1; }
      cJSON_Delete(o);
      if (bad) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s:%d: %s", jsonl, lineno, t5g_last_error());
        if (stop_on_error) { t5g_error("%s", msg); failed = 1; break; }
        fprintf(stderr, "%s (line skipped)\n", msg);
        skipped++;
        continue;
      }
      PUSH(ids, n, lineno);
    }
    free(line);
    if (in && in != stdin) fclose(in);
  }
#undef PUSH
  /* prompt length limits: keep <bos> and the end of the prompt */
  if (!failed) {
    int enc = m.cfg.kind == MODEL_T5GEMMA;
    int maxp = enc ? m.cfg.enc.max_position_embeddings : m.cfg.dec.max_position_embeddings - gc.max_new_tokens;
    if (enc && gc.max_new_tokens > m.cfg.dec.max_position_embeddings) {
      t5g_error("generate: --max-new-tokens %d exceeds the decoder's max_position_embeddings %d", gc.max_new_tokens, m.cfg.dec.max_position_embeddings);
      failed = 1;
    } else if (maxp < 2) {
      t5g_error("generate: --max-new-tokens %d leaves no room for a prompt (max_position_embeddings %d)", gc.max_new_tokens, m.cfg.dec.max_position_embeddings);
      failed = 1;
    }
    /* a longer prompt is refused, not cut: Hugging Face does not truncate prompts by default */
    for (int k = 0; k < nP && !failed; k++)
      if (P[k].n > maxp) {
        char where[48] = "";
        if (P[k].line > 0) snprintf(where, sizeof where, " (line %d)", P[k].line);
        if (enc)
          t5g_error("prompt %d%s has %d tokens, more than the encoder's max_position_embeddings %d",
                    k, where, P[k].n, m.cfg.enc.max_position_embeddings);
        else
          t5g_error("prompt %d%s has %d tokens and --max-new-tokens is %d: %d positions, more than the model's "
                    "max_position_embeddings %d (shorten the prompt or lower --max-new-tokens)",
                    k, where, P[k].n, gc.max_new_tokens, P[k].n + gc.max_new_tokens, m.cfg.dec.max_position_embeddings);
        failed = 1;
      }
  }
  if (!failed) {
    double t0 = t5g_now();
    int64_t ntok = 0;
    if (gc.num_beams > 1) {
      GenOutput *out = t5g_calloc(num_return, sizeof *out);
      for (int k = 0; k < nP && !failed; k++) {
        int nout;
        if (generate_beam(&m, &gc, P[k].ids, P[k].n, num_return, out, &nout) != 0) { failed = 1; break; }
        print_result(tok, k, P[k].line, out, nout, json, &gc);
        for (int r = 0; r < nout; r++) { ntok += out[r].n; gen_output_free(&out[r]); }
      }
      free(out);
    } else {
      GenOutput *out = t5g_calloc(batch, sizeof *out);
      const int32_t **ids = t5g_calloc(batch, sizeof *ids);
      int *lens = t5g_calloc(batch, sizeof(int));
      for (int k0 = 0; k0 < nP && !failed; k0 += batch) {
        int B = nP - k0 < batch ? nP - k0 : batch;
        for (int r = 0; r < B; r++) { ids[r] = P[k0 + r].ids; lens[r] = P[k0 + r].n; }
        gc.first_row = k0;
        if (generate(&m, &gc, ids, lens, B, out) != 0) { failed = 1; break; }
        for (int r = 0; r < B; r++) { print_result(tok, k0 + r, P[k0 + r].line, &out[r], 1, json, &gc); ntok += out[r].n; gen_output_free(&out[r]); }
      }
      free(out); free(ids); free(lens);
    }
    double dt = t5g_now() - t0;
    if (!failed) fprintf(stderr, "generated %lld tokens for %d prompt(s) in %.2f s (%.1f tokens/s)\n", (long long)ntok, nP,
                         dt, dt > 0 ? ntok / dt : 0);
    if (skipped) fprintf(stderr, "%d malformed line(s) skipped\n", skipped);
    if (g_nonfinite)
      fprintf(stderr, "generate: warning: %lld log-probabilit%s NaN or infinite (the model's logits are not finite: "
              "broken weights?)%s\n", (long long)g_nonfinite, g_nonfinite == 1 ? "y is" : "ies are", json ? "; written as null" : "");
  }
  for (int k = 0; k < nP; k++) free(P[k].ids);
  free(P);
  tokenizer_free(tok);
  model_free(&m);
  free(prompts);
  if (failed) { fprintf(stderr, "t5gemma generate: %s\n", t5g_last_error()); return 1; }
  return 0;
bad:
  fprintf(stderr, "t5gemma generate: %s\n", t5g_last_error());
  free(prompts);
  return rc ? 2 : 1;
}
