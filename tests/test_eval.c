/* test_eval.c: evaluation (eval/tasks.h, eval/score.h).
 *  - SQuAD normalisation, exact match, F1, acc / acc_norm decisions on literal examples;
 *  - task files: malformed lines reported as FILE:LINE, counted and skipped (or stopping);
 *  - prompt rendering and few-shot sampling (never the example itself, seeded);
 *  - score_items (engine, full forward) against the cached decoder's log-probabilities
 *    (eval/generate.c) on random tiny models, batching and shared encoder rows, truncation;
 *  - trained models: a tiny T5Gemma and a tiny Gemma 2 are trained here with AdamW (a few
 *    hundred steps, a few seconds) on a trivial task, "answer with the last letter of the
 *    query"; the multiple-choice form (the choice equal to the query's last letter), the
 *    partial-scoring form (the context option ending with the continuation's letter) and the
 *    generative form must then score near 100% through task_run;
 *  - validation loss on a token-shard dataset written here, against score_items on the same
 *    PrefixLM rows built by hand.
 * The tokenizer is a small tokenizer.json written by the test (letters, "▁"+letter merges,
 * Gemma's special pieces). With T5G_EVAL_SAVE=DIR the trained T5Gemma model, the tokenizer and
 * the task files are saved to DIR (used by tests/t_eval.sh for the command-line checks). */
#define _GNU_SOURCE
#include "tests/check.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "eval/generate.h"
#include "eval/score.h"
#include "eval/tasks.h"
#include "model/hf_io.h"
#include "model/model.h"
#include "model/rng.h"
#include "optim/adamw.h"
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------ */
/* Metrics                                                                                      */

TEST(squad_normalize_em_f1) {
  char *s = squad_normalize("  The Cat,  sat on a MAT!  ");
  CHECK_STR(s, "cat sat on mat");
  free(s);
  s = squad_normalize("An apple's  (the) theory");   /* punctuation goes first: "apples" */
  CHECK_STR(s, "apples theory");
  free(s);
  s = squad_normalize("...");
  CHECK_STR(s, "");
  free(s);
  CHECK_EQ_INT(squad_exact_match("The Eiffel Tower.", "eiffel tower"), 1);
  CHECK_EQ_INT(squad_exact_match("Eiffel", "eiffel tower"), 0);
  /* pred {cat, sat}, gold {cat, sat, down}: p = 1, r = 2/3, F1 = 0.8 */
  CHECK_NEAR(squad_f1("the cat sat", "A cat sat down."), 0.8, 1e-12);
  /* multiset: pred {a1: "x x y"} vs gold "x y y": common = {x:1, y:1} = 2, p = r = 2/3 */
  CHECK_NEAR(squad_f1("x x y", "x y y"), 2.0 / 3.0, 1e-12);
  CHECK_NEAR(squad_f1("nothing", "else"), 0.0, 0);
  CHECK_NEAR(squad_f1("the", "a"), 0.0, 0);             /* both normalise to empty: 0 (v1.1) */
  CHECK_EQ_INT(squad_exact_match("the", "a"), 1);         /* ... while their EM is 1 */
  const char *golds[3] = {"Paris", "the city of Paris", "paris france"};
  CHECK_EQ_INT(squad_max_em("paris.", golds, 3), 1);
  CHECK_NEAR(squad_max_f1("Paris France", golds, 3), 1.0, 1e-12);
  CHECK_NEAR(squad_max_f1("city", golds, 3), 0.5, 1e-12);   /* vs "city of paris": p 1, r 1/3 */
}

TEST(acc_and_acc_norm_decisions) {
  double sum[3] = {-4.0, -5.0, -9.0}, len[3] = {2, 10, 3};
  CHECK_EQ_INT(mc_argmax(sum, NULL, 3), 0);
  CHECK_EQ_INT(mc_argmax(sum, len, 3), 1);            /* -2, -0.5, -3 */
  double tie[2] = {-1.0, -1.0};
  CHECK_EQ_INT(mc_argmax(tie, NULL, 2), 0);            /* ties: the first */
}

/* ------------------------------------------------------------------------------------------ */
/* Files                                                                                        */

static char g_tmp[256];
static void remove_tmpdir(void) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
}
static const char *tmpdir(void) {          /* removed at exit, whichever cases ran */
  if (!g_tmp[0]) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/t5g_test_eval.XXXXXX");
    T5G_ASSERT(mkdtemp(g_tmp) != NULL);
    atexit(remove_tmpdir);
  }
  return g_tmp;
}
static char *tmp_path(const char *name) { return t5g_path_join(tmpdir(), name); }
static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  T5G_ASSERT(f);
  fputs(text, f);
  fclose(f);
}

TEST(malformed_lines_reported_and_counted) {
  char *p = tmp_path("mc_bad.jsonl");
  write_text(p,
    "{\"query\": \"q1\", \"choices\": [\"a\", \"b\"], \"gold\": 1}\n"      /* 1 ok */
    "{\"query\": \"q2\", \"choices\": [\"a\", \"b\"], \"gold\": 2}\n"      /* 2 gold out of range */
    "\n"                                                                  /* 3 blank: ignored */
    "{\"query\": \"q3\", \"choices\": [\"a\", \"b\"]\n"                   /* 4 not JSON */
    "{\"query\": \"q4\", \"choices\": [\"a\", \"b\"], \"gold\": 0}\n"      /* 5 ok */
    "{\"query\": \"q5\", \"choices\": [\"a\", 3], \"gold\": 0}\n"          /* 6 choice not a string */
    "{\"context_options\": [\"x\", \"y\"], \"continuation\": \"z\", \"gold\": 0}\n"  /* 7 other kind */
    "{\"choices\": [\"a\"], \"gold\": 0}\n"                               /* 8 no query */
    "{\"query\": \"q6\", \"choices\": [\"a\", \"b\", \"c\"], \"gold\": 2}\n"); /* 9 ok */
  char *log = NULL; size_t loglen = 0;
  FILE *lf = open_memstream(&log, &loglen);
  TaskData td;
  CHECK(task_load(p, 0, lf, &td) == 0);
  fclose(lf);
  CHECK_EQ_INT(td.kind, TASK_MC);
  CHECK_EQ_INT(td.n, 3);
  CHECK_EQ_INT(td.skipped, 5);
  CHECK_EQ_INT(td.ex[0].line, 1); CHECK_EQ_INT(td.ex[1].line, 5); CHECK_EQ_INT(td.ex[2].line, 9);
  CHECK_EQ_INT(td.ex[2].gold, 2);
  const int bad[5] = {2, 4, 6, 7, 8};
  for (int i = 0; i < 5; i++) {
    char want[300];
    snprintf(want, sizeof want, "%s:%d: ", p, bad[i]);
    CHECK_MSG(strstr(log, want) != NULL, "log lacks \"%s\":\n%s", want, log);
  }
  CHECK(strstr(log, "\"gold\" is 2, expected an index in [0, 2)") != NULL);
  task_free(&td);
  free(log);
  /* --on-error stop: the first malformed line ends the load with its FILE:LINE */
  CHECK(task_load(p, 1, NULL, &td) == -1);
  char want[300];
  snprintf(want, sizeof want, "%s:2: ", p);
  CHECK_MSG(strstr(t5g_last_error(), want) != NULL, "%s", t5g_last_error());
  /* kinds and alternatives */
  char *q = tmp_path("gen.jsonl");
  write_text(q, "{\"question\": \"q\", \"answer\": \"a\"}\n{\"context\": \"c\", \"answers\": [\"x\", \"y\"]}\n{\"query\": \"z\", \"answers\": []}\n");
  CHECK(task_load(q, 0, NULL, &td) == 0);
  CHECK_EQ_INT(td.kind, TASK_GEN);
  CHECK_EQ_INT(td.n, 2); CHECK_EQ_INT(td.skipped, 1);
  CHECK_EQ_INT(td.ex[1].n_answers, 2);
  CHECK_STR(td.ex[1].query, "c");
  task_free(&td);
  CHECK(task_load("/nonexistent/x.jsonl", 0, NULL, &td) == -1);
  free(p); free(q);
}

TEST(render_and_fewshot) {
  char *p = tmp_path("render.jsonl");
  write_text(p,
    "{\"query\": \"Q0\", \"choices\": [\"no\", \"yes\"], \"gold\": 1}\n"
    "{\"query\": \"Q1\", \"choices\": [\"no\", \"yes\"], \"gold\": 0}\n"
    "{\"query\": \"Q2\", \"choices\": [\"no\", \"yes\"], \"gold\": 1}\n"
    "{\"query\": \"Q3\", \"choices\": [\"no\", \"yes\"], \"gold\": 0}\n");
  TaskData td;
  CHECK(task_load(p, 1, NULL, &td) == 0);
  TaskOptions o; task_options_default(&o);
  TaskRender r;
  task_render(&td, 2, &o, &r);
  CHECK_EQ_INT(r.n, 2);
  CHECK_STR(r.ctx[0], "Q2\nAnswer:");
  CHECK_STR(r.ctx[1], "Q2\nAnswer:");
  CHECK_STR(r.cont[0], " no");
  CHECK_STR(r.cont[1], " yes");
  task_render_free(&r);
  o.num_fewshot = 2;
  for (int i = 0; i < 4; i++) {
    task_render(&td, i, &o, &r);
    char self[16]; snprintf(self, sizeof self, "Q%d\n", i);
    /* "Qa\nAnswer: gold\n\nQb\nAnswer: gold\n\nQi\nAnswer:" */
    const char *c = r.ctx[0];
    CHECK_MSG(strstr(c, self) == c + strlen(c) - strlen(self) - strlen("Answer:"), "example %d renders itself as a shot: %s", i, c);
    int shots = 0;
    for (int j = 0; j < 4; j++) {
      char a[64];
      snprintf(a, sizeof a, "Q%d\nAnswer: %s\n\n", j, j % 2 ? "no" : "yes");
      if (strstr(c, a)) { shots++; CHECK(j != i); }
    }
    CHECK_EQ_INT(shots, 2);
    TaskRender r2;
    task_render(&td, i, &o, &r2);     /* deterministic */
    CHECK_STR(r2.ctx[0], r.ctx[0]);
    task_render_free(&r2);
    task_render_free(&r);
  }
  /* the seed changes the draw for some example */
  int differ = 0;
  TaskOptions o2 = o; o2.seed = 99;
  for (int i = 0; i < 4; i++) {
    TaskRender a, b;
    task_render(&td, i, &o, &a); task_render(&td, i, &o2, &b);
    differ |= strcmp(a.ctx[0], b.ctx[0]) != 0;
    task_render_free(&a); task_render_free(&b);
  }
  CHECK(differ);
  task_free(&td);
  /* partial scoring form */
  write_text(p, "{\"context_options\": [\"A x\", \"A y\"], \"continuation\": \"ends.\", \"gold\": 1}\n");
  CHECK(task_load(p, 1, NULL, &td) == 0);
  o.num_fewshot = 0;
  task_render(&td, 0, &o, &r);
  CHECK_STR(r.ctx[0], "A x"); CHECK_STR(r.ctx[1], "A y");
  CHECK_STR(r.cont[0], " ends."); CHECK_STR(r.cont[1], " ends.");
  task_render_free(&r);
  task_free(&td);
  free(p);
}

/* ------------------------------------------------------------------------------------------ */
/* Models                                                                                       */

static int tiny_model(Model *m, const char *name, int vocab, uint64_t seed, float std) {
  ModelConfig cfg;
  char path[256];
  snprintf(path, sizeof path, "configs/models/%s.json", name);
  if (config_resolve(path, &cfg) != 0) { fprintf(stderr, "%s\n", t5g_last_error()); return -1; }
  if (vocab > 0) cfg.enc.vocab_size = cfg.dec.vocab_size = vocab;
  cfg.enc.initializer_range = cfg.dec.initializer_range = std;
  if (model_init(m, &cfg) != 0) { fprintf(stderr, "%s\n", t5g_last_error()); return -1; }
  model_init_random(m, seed);
  return 0;
}

/* score_items (full forward, engine attention) == the cached decoder's log-probabilities. */
TEST(score_matches_cached_generation) {
  const char *names[3] = {"tiny-t5gemma", "tiny-gemma2", "tiny-t5gemma-unequal"};
  for (int k = 0; k < 3; k++) {
    Model m; CHECK(tiny_model(&m, names[k], 0, 70 + k, 0.2f) == 0);
    GenConfig c; gen_config_default(&c, &m);
    c.n_stop = 0; c.max_new_tokens = 12; c.greedy = 0; c.temperature = 1.0f; c.seed = 3;
    int lens[4] = {5, 13, 2, 9};
    int32_t *p[4];
    for (int b = 0; b < 4; b++) { p[b] = malloc(lens[b] * sizeof(int32_t)); p[b][0] = 2; for (int j = 1; j < lens[b]; j++) p[b][j] = 5 + (37 * j + 11 * b) % 400; }
    GenOutput out[4];
    CHECK(generate(&m, &c, (const int32_t *const *)p, lens, 4, out) == 0);
    /* items: each prompt with its continuation, plus prompt 1 twice (shared encoder row) */
    ScoreItem it[6];
    for (int b = 0; b < 4; b++) it[b] = (ScoreItem){p[b], lens[b], out[b].ids, out[b].n};
    it[4] = (ScoreItem){p[1], lens[1], out[1].ids, 5};
    it[5] = (ScoreItem){p[1], lens[1], out[0].ids, out[0].n};
    for (int bs = 1; bs <= 6; bs += 5) {
      ScoreResult res[6];
      int trunc;
      CHECK(score_items(&m, it, 6, bs, 1, res, &trunc, NULL, NULL) == 0);
      CHECK_EQ_INT(trunc, 0);
      for (int b = 0; b < 5; b++) {
        const GenOutput *o = &out[b == 4 ? 1 : b];
        CHECK_EQ_INT(res[b].n_tokens, it[b].n_tgt);
        double sum = 0;
        for (int j = 0; j < it[b].n_tgt; j++) { CHECK_NEAR(res[b].token_logprobs[j], o->logprobs[j], 3e-5); sum += o->logprobs[j]; }
        CHECK_NEAR(res[b].sum_logprob, sum, 2e-4);
      }
      for (int b = 0; b < 6; b++) free(res[b].token_logprobs);
    }
    for (int b = 0; b < 4; b++) { gen_output_free(&out[b]); free(p[b]); }
    model_free(&m);
  }
}

TEST(score_truncates_long_contexts_and_rejects_bad_ids) {
  Model m; CHECK(tiny_model(&m, "tiny-gemma2", 0, 5, 0.2f) == 0);
  int maxp = m.cfg.dec.max_position_embeddings;   /* 512 */
  int n = maxp + 40;
  int32_t *ctx = malloc(n * sizeof(int32_t));
  ctx[0] = 2;
  for (int j = 1; j < n; j++) ctx[j] = 3 + (j * 7) % 500;
  int32_t tgt[3] = {10, 20, 30};
  /* the long context keeps <bos> and its last tokens: same as scoring that cut context */
  int keep = maxp + 1 - 3;
  int32_t *cut = malloc(keep * sizeof(int32_t));
  cut[0] = 2;
  memcpy(cut + 1, ctx + n - (keep - 1), (keep - 1) * sizeof(int32_t));
  ScoreItem it[2] = {{ctx, n, tgt, 3}, {cut, keep, tgt, 3}};
  ScoreResult r[2];
  int trunc;
  CHECK(score_items(&m, it, 2, 2, 0, r, &trunc, NULL, NULL) == 0);
  CHECK_EQ_INT(trunc, 1);
  CHECK_NEAR(r[0].sum_logprob, r[1].sum_logprob, 1e-5);
  int32_t badt[1] = {600};
  ScoreItem bad = {ctx, 5, badt, 1};
  CHECK(score_items(&m, &bad, 1, 1, 0, r, NULL, NULL, NULL) == -1);
  CHECK(strstr(t5g_last_error(), "600") != NULL);
  free(ctx); free(cut);
  model_free(&m);
}

/* ------------------------------------------------------------------------------------------ */
/* A tokenizer.json of letters: <pad> <eos> <bos> <unk> <start_of_turn> <end_of_turn>, "▁",
 * a..z, "▁a".."▁z" (merges "▁ x"), ":" and "\n". 61 pieces. */
static void write_letter_tokenizer(const char *path) {
  FILE *f = fopen(path, "w");
  T5G_ASSERT(f);
  const char *sp[6] = {"<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"};
  fprintf(f, "{\"version\": \"1.0\", \"added_tokens\": [");
  for (int i = 0; i < 6; i++) fprintf(f, "%s{\"id\": %d, \"content\": \"%s\", \"special\": true, \"normalized\": false}", i ? ", " : "", i, sp[i]);
  fprintf(f, "], \"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\xe2\x96\x81\"},");
  fprintf(f, " \"pre_tokenizer\": null, \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": \"\xe2\x96\x81\"}, \"content\": \" \"}, {\"type\": \"Fuse\"}]},");
  fprintf(f, " \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"byte_fallback\": false, \"vocab\": {");
  for (int i = 0; i < 6; i++) fprintf(f, "\"%s\": %d, ", sp[i], i);
  fprintf(f, "\"\xe2\x96\x81\": 6");
  for (int c = 0; c < 26; c++) fprintf(f, ", \"%c\": %d", 'a' + c, 7 + c);
  for (int c = 0; c < 26; c++) fprintf(f, ", \"\xe2\x96\x81%c\": %d", 'a' + c, 33 + c);
  fprintf(f, ", \":\": 59, \"\\n\": 60}, \"merges\": [");
  for (int c = 0; c < 26; c++) fprintf(f, "%s\"\xe2\x96\x81 %c\"", c ? ", " : "", 'a' + c);
  fprintf(f, "]}}\n");
  fclose(f);
}

/* The trivial task: a query of 3-5 random letters "k f w:"; the answer " w" is its last letter.
 * (The ":" tells a decoder-only model where the query ends: "k f f" followed by " f" would be
 * ambiguous otherwise.) */
#define LETTERS "bcdefghijklm"   /* 12 letters; not "a", which SQuAD normalisation drops */
static const int NL = 12;
static void make_query(Rng *r, char *q, char *last) {
  int n = 3 + (int)rng_below(r, 3);
  int o = 0;
  for (int i = 0; i < n; i++) {
    if (i) q[o++] = ' ';
    q[o++] = LETTERS[rng_below(r, NL)];
  }
  q[o] = 0;
  *last = q[o - 1];
}

/* Train with AdamW: T5Gemma: encoder <bos> + query + ":", target " x" <eos>; Gemma 2: <bos>
 * query ":" " x" <eos> with the loss on " x" and <eos> only. Returns the final training loss. */
static double train_letter_task(Model *m, const Tokenizer *tok, int steps, uint64_t seed) {
  const int encdec = m->cfg.kind == MODEL_T5GEMMA, B = 32;
  AdamWConfig ac; adamw_config_default(&ac);
  ac.weight_decay = 0; ac.beta2 = 0.99;
  AdamW opt;
  T5G_ASSERT(adamw_init(&opt, &m->ps, &ac, 0, m->ps.n_total) == 0);
  Arena arena; Graph g;
  arena_init(&arena, 16 << 20); graph_init(&g, &arena);
  Rng r; rng_seed(&r, seed);
  TokenizerSpecials sp = tokenizer_specials(tok);
  double last = 0;
  for (int s = 0; s < steps; s++) {
    int32_t *q[32], *a[32]; int nq[32], na[32];
    int Te = 0, Td = 0;
    for (int b = 0; b < B; b++) {
      char text[40], l, ans[4];
      make_query(&r, text, &l);
      strcat(text, ":");
      snprintf(ans, sizeof ans, " %c", l);
      int64_t n1, n2;
      T5G_ASSERT(tokenizer_encode(tok, text, strlen(text), 1, 0, 0, &q[b], &n1) == 0);
      T5G_ASSERT(tokenizer_encode(tok, ans, strlen(ans), 0, 1, 0, &a[b], &n2) == 0);
      nq[b] = (int)n1; na[b] = (int)n2;
      if (encdec) { if (nq[b] > Te) Te = nq[b]; if (na[b] > Td) Td = na[b]; }
      else if (nq[b] + na[b] - 1 > Td) Td = nq[b] + na[b] - 1;
    }
    Batch bt;
    batch_alloc(&bt, B, encdec ? Te : 0, Td, 0);
    for (int b = 0; b < B; b++) {
      if (encdec) {
        for (int j = 0; j < Te; j++) { int i = b * Te + j; bt.enc_pos[i] = j; bt.enc_ids[i] = j < nq[b] ? q[b][j] : sp.pad; bt.enc_mask[i] = j < nq[b]; }
        for (int j = 0; j < Td; j++) {
          int i = b * Td + j;
          bt.dec_pos[i] = j; bt.dec_mask[i] = j < na[b];
          bt.dec_ids[i] = j < na[b] ? (j == 0 ? sp.bos : a[b][j - 1]) : sp.pad;
          bt.labels[i] = j < na[b] ? a[b][j] : -100;
        }
      } else {
        int L = nq[b] + na[b];
        for (int j = 0; j < Td; j++) {
          int i = b * Td + j;
          int32_t tokj = j < nq[b] ? q[b][j] : (j < L ? a[b][j - nq[b]] : sp.pad);
          bt.dec_pos[i] = j; bt.dec_mask[i] = j < L - 1; bt.dec_ids[i] = j < L - 1 ? tokj : sp.pad;
          bt.labels[i] = (j >= nq[b] - 1 && j < L - 1) ? a[b][j - (nq[b] - 1)] : -100;
        }
      }
      free(q[b]); free(a[b]);
    }
    batch_count_targets(&bt);
    graph_reset(&g);
    g.grad_enabled = 1;
    LossStats st;
    Tensor *loss = model_loss(m, &g, &bt, (float)bt.n_targets, &st, NULL, NULL);
    last = loss->data[0];
    graph_backward(&g, loss);
    adamw_clip_grad_norm(&m->ps, 1.0, NULL);
    double lr = 3e-3 * (s < 30 ? (s + 1) / 30.0 : 1.0);
    adamw_step(&opt, &m->ps, lr);
    params_zero_grad(&m->ps);
    batch_free(&bt);
  }
  graph_free(&g); arena_free(&arena);
  adamw_free(&opt);
  return last;
}

/* Task files for the letter task: MC (4 choices), partial, generative. */
static void write_letter_tasks(const char *dir, int n, uint64_t seed) {
  Rng r; rng_seed(&r, seed);
  char *pm = t5g_path_join(dir, "letters_mc.jsonl"), *pp = t5g_path_join(dir, "letters_partial.jsonl"), *pg = t5g_path_join(dir, "letters_gen.jsonl");
  FILE *fm = fopen(pm, "w"), *fp = fopen(pp, "w"), *fg = fopen(pg, "w");
  T5G_ASSERT(fm && fp && fg);
  for (int i = 0; i < n; i++) {
    char q[32], l;
    make_query(&r, q, &l);
    int gold = (int)rng_below(&r, 4);
    char ch[4];
    for (int c = 0; c < 4; c++) {
      if (c == gold) { ch[c] = l; continue; }
      char x;
      int dup;
      do {
        x = LETTERS[rng_below(&r, NL)];
        dup = x == l;
        for (int k = 0; k < c; k++) dup |= ch[k] == x;
      } while (dup);
      ch[c] = x;
    }
    fprintf(fm, "{\"query\": \"%s\", \"choices\": [\"%c\", \"%c\", \"%c\", \"%c\"], \"gold\": %d}\n", q, ch[0], ch[1], ch[2], ch[3], gold);
    /* partial: two contexts differing in the last letter; the continuation is the letter */
    char other;
    do other = LETTERS[rng_below(&r, NL)]; while (other == l);
    char q2[32];
    snprintf(q2, sizeof q2, "%s", q);
    q2[strlen(q2) - 1] = other;
    int g2 = (int)rng_below(&r, 2);
    fprintf(fp, "{\"context_options\": [\"%s:\", \"%s:\"], \"continuation\": \"%c\", \"gold\": %d}\n", g2 ? q2 : q, g2 ? q : q2, l, g2);
    fprintf(fg, "{\"question\": \"%s\", \"answers\": [\"%c\"]}\n", q, l);
    if (i == 3) fprintf(fm, "{\"query\": \"broken\", \"choices\": \"a\", \"gold\": 0}\n");   /* malformed */
  }
  fclose(fm); fclose(fp); fclose(fg);
  free(pm); free(pp); free(pg);
}

static void run_letter_tasks(Model *m, const Tokenizer *tok, const char *dir, TaskResult *res, int fewshot) {
  const char *files[3] = {"letters_mc.jsonl", "letters_partial.jsonl", "letters_gen.jsonl"};
  TaskOptions o; task_options_default(&o);
  o.answer_prefix = ":";
  o.batch_size = 8;
  o.max_new_tokens = 4;
  o.num_fewshot = fewshot;
  for (int k = 0; k < 3; k++) {
    char *p = t5g_path_join(dir, files[k]);
    TaskData td;
    T5G_ASSERT(task_load(p, 0, NULL, &td) == 0);
    if (task_run(m, tok, &td, &o, &res[k]) != 0) { fprintf(stderr, "%s\n", t5g_last_error()); res[k].n = -1; }
    task_free(&td);
    free(p);
  }
}

TEST(trained_models_score_near_100) {
  char *tokp = tmp_path("tokenizer.json");
  write_letter_tokenizer(tokp);
  Tokenizer *tok = tokenizer_load(tokp);
  CHECK_MSG(tok != NULL, "%s", t5g_last_error());
  CHECK_EQ_INT(tokenizer_vocab_size(tok), 61);
  int32_t *ids; int64_t n;
  CHECK(tokenizer_encode(tok, "k f w", 5, 1, 0, 0, &ids, &n) == 0);
  CHECK_EQ_INT(n, 4); CHECK_EQ_INT(ids[0], 2); CHECK_EQ_INT(ids[1], 7 + 10); CHECK_EQ_INT(ids[3], 33 + 22);
  free(ids);
  write_letter_tasks(tmpdir(), 60, 4242);
  const char *names[2] = {"tiny-t5gemma", "tiny-gemma2"};
  const char *save = getenv("T5G_EVAL_SAVE");
  for (int k = 0; k < (save ? 1 : 2); k++) {       /* t_eval.sh needs only the T5Gemma model */
    Model m; CHECK(tiny_model(&m, names[k], 64, 9 + k, 0.02f) == 0);
    /* untrained: about chance */
    TaskResult r0[3];
    run_letter_tasks(&m, tok, tmpdir(), r0, 0);
    /* Training runs on one thread: this model is far too small to gain from two, and OpenMP's
     * spinning barriers make many tiny parallel regions very slow on a loaded machine. */
    double t0 = t5g_now();
    int steps = k == 0 ? 300 : 200, threads = t5g_threads();
    t5g_set_threads(1);
    double loss = train_letter_task(&m, tok, steps, 100 + k);
    t5g_set_threads(threads);
    double dt = t5g_now() - t0;
    fprintf(stderr, "%s: trained %d steps in %.1f s, final loss %.4f; untrained acc %.2f\n", names[k], steps, dt, loss, r0[0].acc);
    CHECK_MSG(loss < 0.05, "%s: training loss %.4f after %d steps", names[k], loss, steps);
    TaskResult r[3];
    run_letter_tasks(&m, tok, tmpdir(), r, 0);
    CHECK(r[0].n == 60 && r[1].n == 60 && r[2].n == 60);
    CHECK_EQ_INT(r[0].skipped, 1);
    CHECK_MSG(r[0].acc >= 0.95 && r[0].acc_norm >= 0.95, "%s MC acc %.3f acc_norm %.3f", names[k], r[0].acc, r[0].acc_norm);
    CHECK_MSG(r[1].acc >= 0.95, "%s partial acc %.3f", names[k], r[1].acc);
    CHECK(isnan(r[1].acc_norm));
    CHECK_MSG(r[2].em >= 0.95 && r[2].f1 >= 0.95, "%s generative em %.3f f1 %.3f", names[k], r[2].em, r[2].f1);
    CHECK_MSG(r0[0].acc < 0.6, "%s: the untrained model already scores %.2f", names[k], r0[0].acc);
    /* few-shot prompts (other examples before the query) keep it answering the last letter */
    TaskResult r3[3];
    run_letter_tasks(&m, tok, tmpdir(), r3, 1);
    fprintf(stderr, "%s: mc %.3f/%.3f partial %.3f gen em %.3f; 1-shot mc %.3f\n", names[k], r[0].acc, r[0].acc_norm, r[1].acc, r[2].em, r3[0].acc);
    if (save && k == 0) {
      t5g_mkdir_p(save);
      char *mdir = t5g_path_join(save, "model");
      CHECK_MSG(hf_save(&m.ps, &m.cfg, mdir, NULL) == 0, "%s", t5g_last_error());
      char *tk2 = t5g_path_join(mdir, "tokenizer.json");
      write_letter_tokenizer(tk2);
      write_letter_tasks(save, 60, 4242);
      free(mdir); free(tk2);
    }
    model_free(&m);
  }
  tokenizer_free(tok);
  free(tokp);
}

/* Validation loss (PrefixLM over shards) == score_items on the same rows built by hand. */
TEST(validation_loss_matches_scoring) {
  char *tokp = tmp_path("tokenizer_val.json");
  write_letter_tokenizer(tokp);
  Tokenizer *tok = tokenizer_load(tokp);
  CHECK(tok != NULL);
  Model m; CHECK(tiny_model(&m, "tiny-t5gemma", 64, 31, 0.2f) == 0);
  char *dir = tmp_path("shards");
  ShardTokenizerInfo ti = {0};
  snprintf(ti.name, sizeof ti.name, "tokenizer_val.json");
  ti.hash = tokenizer_hash(tok); ti.vocab_size = tokenizer_vocab_size(tok);
  ti.bos_id = 2; ti.eos_id = 1; ti.pad_id = 0;
  const char *splits[2] = {"train", "val"};
  ShardWriterOpts wo = shard_writer_default_opts();
  DatasetWriter *w = dataset_writer_open(dir, splits, 2, &ti, &wo);
  CHECK_MSG(w != NULL, "%s", t5g_last_error());
  /* 10 documents of 10 tokens: with <bos> and <eos> each is exactly one 6 + 6 PrefixLM row */
  int32_t docs[10][10];
  Rng r; rng_seed(&r, 8);
  for (int d = 0; d < 10; d++) {
    for (int j = 0; j < 10; j++) docs[d][j] = 7 + (int32_t)rng_below(&r, 52);
    CHECK(dataset_writer_add(w, 1, docs[d], 10) == 0);
    CHECK(dataset_writer_add(w, 0, docs[d], 10) == 0);
  }
  CHECK(dataset_writer_finish(w) == 0);
  ValOptions vo; val_options_default(&vo);
  vo.data_dir = dir; vo.objective = "prefixlm"; vo.enc_len = 6; vo.dec_len = 6; vo.batch_size = 4;
  ValResult vr;
  CHECK_MSG(val_loss_run(&m, tok, &vo, &vr) == 0, "%s", t5g_last_error());
  CHECK_EQ_INT(vr.tokens, 60);
  CHECK_EQ_INT(vr.batches, 3);
  int32_t rows[10][12];
  ScoreItem it[10];
  for (int d = 0; d < 10; d++) {
    rows[d][0] = 2; memcpy(rows[d] + 1, docs[d], 10 * sizeof(int32_t)); rows[d][11] = 1;
    it[d] = (ScoreItem){rows[d], 6, rows[d] + 6, 6};
  }
  ScoreResult sr[10];
  CHECK(score_items(&m, it, 10, 3, 0, sr, NULL, NULL, NULL) == 0);
  double sum = 0;
  for (int d = 0; d < 10; d++) sum += sr[d].sum_logprob;
  CHECK_NEAR(vr.loss, -sum / 60, 1e-5);
  CHECK_NEAR(vr.ppl, exp(-sum / 60), 1e-4 * vr.ppl);
  /* --batches limits the pass; causal needs a decoder-only model */
  vo.batches = 1;
  CHECK(val_loss_run(&m, tok, &vo, &vr) == 0);
  CHECK_EQ_INT(vr.tokens, 24);
  vo.objective = "causal";
  CHECK(val_loss_run(&m, tok, &vo, &vr) == -1);
  CHECK(strstr(t5g_last_error(), "decoder-only") != NULL);
  model_free(&m);
  tokenizer_free(tok);
  free(dir); free(tokp);
}

TEST_MAIN()
