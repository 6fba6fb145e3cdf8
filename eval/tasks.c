/* tasks.c: evaluation tasks and metrics (contract and conventions: eval/tasks.h). */
#define _GNU_SOURCE
#include "eval/tasks.h"
#include "data/objectives.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "eval/generate.h"
#include "eval/score.h"
#include "model/rng.h"
#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* SQuAD metrics (evaluate-v1.1.py: lower, remove punctuation, remove articles, fix whitespace) */

static int is_ascii_punct(unsigned char c) {
  /* Python's string.punctuation: !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~ */
  return c < 128 && ispunct(c);
}

char *squad_normalize(const char *s) {
  size_t n = strlen(s);
  char *t = t5g_malloc(n + 1);
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (is_ascii_punct(c)) continue;
    t[k++] = (char)(c < 128 ? tolower(c) : c);
  }
  t[k] = 0;
  /* split on whitespace, drop the articles, join with single spaces */
  char *out = t5g_malloc(k + 1);
  size_t o = 0;
  char *save = NULL;
  for (char *w = strtok_r(t, " \t\n\r\f\v", &save); w; w = strtok_r(NULL, " \t\n\r\f\v", &save)) {
    if (!strcmp(w, "a") || !strcmp(w, "an") || !strcmp(w, "the")) continue;
    size_t wl = strlen(w);
    if (o) out[o++] = ' ';
    memcpy(out + o, w, wl);
    o += wl;
  }
  out[o] = 0;
  free(t);
  return out;
}

int squad_exact_match(const char *pred, const char *gold) {
  char *a = squad_normalize(pred), *b = squad_normalize(gold);
  int r = strcmp(a, b) == 0;
  free(a); free(b);
  return r;
}

static int split_words(char *s, char ***w) {
  int n = 0, cap = 8;
  *w = t5g_malloc(cap * sizeof(char *));
  char *save = NULL;
  for (char *t = strtok_r(s, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
    if (n == cap) { cap *= 2; *w = t5g_realloc(*w, cap * sizeof(char *)); }
    (*w)[n++] = t;
  }
  return n;
}

double squad_f1(const char *pred, const char *gold) {
  char *a = squad_normalize(pred), *b = squad_normalize(gold);
  char **pw, **gw;
  int np = split_words(a, &pw), ng = split_words(b, &gw);
  /* multiset intersection: each gold word matches at most one prediction word */
  int same = 0;
  uint8_t *used = t5g_calloc(ng ? ng : 1, 1);
  for (int i = 0; i < np; i++)
    for (int j = 0; j < ng; j++)
      if (!used[j] && !strcmp(pw[i], gw[j])) { used[j] = 1; same++; break; }
  double f1 = 0;
  if (same > 0) {
    double p = (double)same / np, r = (double)same / ng;
    f1 = 2 * p * r / (p + r);
  }
  free(used); free(pw); free(gw); free(a); free(b);
  return f1;
}

int squad_max_em(const char *pred, const char *const *golds, int n) {
  int best = 0;
  for (int i = 0; i < n; i++) if (squad_exact_match(pred, golds[i])) best = 1;
  return best;
}

double squad_max_f1(const char *pred, const char *const *golds, int n) {
  double best = 0;
  for (int i = 0; i < n; i++) { double f = squad_f1(pred, golds[i]); if (f > best) best = f; }
  return best;
}

int mc_argmax(const double *sum, const double *norm_len, int n) {
  int best = 0;
  double bv = -INFINITY;
  for (int i = 0; i < n; i++) {
    double v = norm_len ? sum[i] / (norm_len[i] > 0 ? norm_len[i] : 1) : sum[i];
    if (v > bv) { bv = v; best = i; }
  }
  return best;
}

/* ------------------------------------------------------------------------------------------ */
/* Task files                                                                                   */

const char *task_kind_name(TaskKind k) {
  switch (k) {
    case TASK_MC: return "multiple_choice";
    case TASK_PARTIAL: return "partial";
    case TASK_GEN: return "generative";
  }
  return "?";
}

static void example_free(TaskExample *e) {
  free(e->query); free(e->continuation);
  for (int i = 0; i < e->n_choices; i++) free(e->choices[i]);
  for (int i = 0; i < e->n_answers; i++) free(e->answers[i]);
  free(e->choices); free(e->answers);
  memset(e, 0, sizeof *e);
}

void task_free(TaskData *td) {
  for (int i = 0; i < td->n; i++) example_free(&td->ex[i]);
  free(td->ex); free(td->path);
  memset(td, 0, sizeof *td);
}

/* Array of strings -> malloc'ed copies; NULL with a message in err when not such an array. */
static char **string_array(const cJSON *a, const char *field, int *n, char *err, size_t errn) {
  if (!cJSON_IsArray(a)) { snprintf(err, errn, "\"%s\" must be a list of strings", field); return NULL; }
  int k = cJSON_GetArraySize(a);
  if (k < 1) { snprintf(err, errn, "\"%s\" is an empty list", field); return NULL; }
  char **s = t5g_calloc(k, sizeof(char *));
  for (int i = 0; i < k; i++) {
    const cJSON *x = cJSON_GetArrayItem(a, i);
    if (!cJSON_IsString(x)) {
      snprintf(err, errn, "\"%s\"[%d] must be a string", field, i);
      for (int j = 0; j < i; j++) free(s[j]);
      free(s);
      return NULL;
    }
    s[i] = t5g_strdup(x->valuestring);
  }
  *n = k;
  return s;
}

static int get_gold(const cJSON *o, int n_choices, int *gold, char *err, size_t errn) {
  const cJSON *g = cJSON_GetObjectItemCaseSensitive(o, "gold");
  if (!g) { snprintf(err, errn, "missing field \"gold\""); return -1; }
  if (!cJSON_IsNumber(g) || g->valuedouble != floor(g->valuedouble)) { snprintf(err, errn, "\"gold\" must be an integer"); return -1; }
  if (g->valuedouble < 0 || g->valuedouble >= n_choices) {
    snprintf(err, errn, "\"gold\" is %g, expected an index in [0, %d)", g->valuedouble, n_choices);
    return -1;
  }
  *gold = (int)g->valuedouble;
  return 0;
}

/* Parse one line. Returns the kind (> 0) or -1 with err. */
static int parse_example(const char *line, TaskKind want, TaskExample *e, char *err, size_t errn) {
  memset(e, 0, sizeof *e);
  cJSON *o = cJSON_Parse(line);
  if (!o) { snprintf(err, errn, "not valid JSON"); return -1; }
  int kind = -1;
  if (!cJSON_IsObject(o)) { snprintf(err, errn, "expected a JSON object"); goto done; }
  const cJSON *q = cJSON_GetObjectItemCaseSensitive(o, "query");
  const cJSON *ch = cJSON_GetObjectItemCaseSensitive(o, "choices");
  const cJSON *co = cJSON_GetObjectItemCaseSensitive(o, "context_options");
  const cJSON *cont = cJSON_GetObjectItemCaseSensitive(o, "continuation");
  const cJSON *qu = cJSON_GetObjectItemCaseSensitive(o, "question");
  const cJSON *cx = cJSON_GetObjectItemCaseSensitive(o, "context");
  const cJSON *an = cJSON_GetObjectItemCaseSensitive(o, "answer");
  const cJSON *ans = cJSON_GetObjectItemCaseSensitive(o, "answers");
  TaskKind k;
  if (co || cont) k = TASK_PARTIAL;
  else if (ch) k = TASK_MC;
  else if (an || ans) k = TASK_GEN;
  else if (want) k = want;
  else {
    snprintf(err, errn, "no task fields: expected \"query\"/\"choices\"/\"gold\", \"context_options\"/\"continuation\"/\"gold\", or \"question\"/\"answer(s)\"");
    goto done;
  }
  if (want && k != want) {
    snprintf(err, errn, "a %s line in a %s file (the kind is set by the first well-formed line)", task_kind_name(k), task_kind_name(want));
    goto done;
  }
  if (k == TASK_MC) {
    if (!cJSON_IsString(q)) { snprintf(err, errn, q ? "\"query\" must be a string" : "missing field \"query\""); goto done; }
    if (!ch) { snprintf(err, errn, "missing field \"choices\""); goto done; }
    if (!(e->choices = string_array(ch, "choices", &e->n_choices, err, errn))) goto done;
    if (get_gold(o, e->n_choices, &e->gold, err, errn) != 0) goto done;
    e->query = t5g_strdup(q->valuestring);
  } else if (k == TASK_PARTIAL) {
    if (!co) { snprintf(err, errn, "missing field \"context_options\""); goto done; }
    if (!cJSON_IsString(cont)) { snprintf(err, errn, cont ? "\"continuation\" must be a string" : "missing field \"continuation\""); goto done; }
    if (!(e->choices = string_array(co, "context_options", &e->n_choices, err, errn))) goto done;
    if (get_gold(o, e->n_choices, &e->gold, err, errn) != 0) goto done;
    e->continuation = t5g_strdup(cont->valuestring);
  } else {
    const cJSON *qq = qu ? qu : cx ? cx : q;
    const char *qn = qu ? "question" : cx ? "context" : "query";
    if (!qq) { snprintf(err, errn, "missing field \"question\" (or \"context\" / \"query\")"); goto done; }
    if (!cJSON_IsString(qq)) { snprintf(err, errn, "\"%s\" must be a string", qn); goto done; }
    if (ans) {
      if (!(e->answers = string_array(ans, "answers", &e->n_answers, err, errn))) goto done;
    } else if (cJSON_IsString(an)) {
      e->answers = t5g_malloc(sizeof(char *));
      e->answers[0] = t5g_strdup(an->valuestring);
      e->n_answers = 1;
    } else { snprintf(err, errn, an ? "\"answer\" must be a string" : "missing field \"answer\" or \"answers\""); goto done; }
    e->query = t5g_strdup(qq->valuestring);
  }
  kind = k;
done:
  cJSON_Delete(o);
  if (kind < 0) example_free(e);
  return kind;
}

int task_load(const char *path, int on_error_stop, FILE *log, TaskData *td) {
  memset(td, 0, sizeof *td);
  FILE *f = fopen(path, "r");
  if (!f) return t5g_error("%s: cannot open the task file", path);
  td->path = t5g_strdup(path);
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  snprintf(td->name, sizeof td->name, "%s", base);
  char *dot = strstr(td->name, ".jsonl");
  if (dot) *dot = 0;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  int lineno = 0, ncap = 0;
  while ((len = getline(&line, &cap, f)) >= 0) {
    lineno++;
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
    int blank = 1;
    for (ssize_t i = 0; i < len; i++) if (!isspace((unsigned char)line[i])) { blank = 0; break; }
    if (blank) continue;
    TaskExample e;
    char err[512];
    int k = parse_example(line, td->kind, &e, err, sizeof err);
    if (k < 0) {
      if (on_error_stop) {
        t5g_error("%s:%d: %s", path, lineno, err);
        free(line); fclose(f); task_free(td);
        return -1;
      }
      td->skipped++;
      if (log) fprintf(log, "%s:%d: %s (line skipped)\n", path, lineno, err);
      continue;
    }
    td->kind = k;
    e.line = lineno;
    if (td->n == ncap) { ncap = ncap ? 2 * ncap : 256; td->ex = t5g_realloc(td->ex, ncap * sizeof *td->ex); }
    td->ex[td->n++] = e;
  }
  free(line);
  int rerr = ferror(f);
  fclose(f);
  if (rerr) { t5g_error("%s: read error", path); task_free(td); return -1; }
  if (td->n == 0) {
    t5g_error("%s: no well-formed example (%d lines skipped)", path, td->skipped);
    task_free(td);
    return -1;
  }
  return 0;
}

void task_options_default(TaskOptions *o) {
  memset(o, 0, sizeof *o);
  o->num_fewshot = 0;
  o->seed = 1234;
  o->limit = 0;
  o->batch_size = 16;
  o->answer_prefix = "\nAnswer:";
  o->target_delimiter = " ";
  o->fewshot_delimiter = "\n\n";
  o->max_new_tokens = 32;
  o->progress = NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Rendering                                                                                    */

typedef struct Buf { char *s; size_t n, cap; } Buf;
static void buf_add(Buf *b, const char *t) {
  size_t l = strlen(t);
  if (b->n + l + 1 > b->cap) { b->cap = (b->n + l + 1) * 2; b->s = t5g_realloc(b->s, b->cap); }
  memcpy(b->s + b->n, t, l);
  b->n += l;
  b->s[b->n] = 0;
}
static char *cat3(const char *a, const char *b, const char *c) {
  Buf x = {0};
  buf_add(&x, a); buf_add(&x, b); buf_add(&x, c);
  return x.s;
}

/* The context text of example e for choice c (MC: c ignored; GEN: prompt). */
static void render_context(const TaskExample *e, TaskKind k, int c, const TaskOptions *o, Buf *b) {
  if (k == TASK_PARTIAL) buf_add(b, e->choices[c]);
  else { buf_add(b, e->query); buf_add(b, o->answer_prefix); }
}

/* The few-shot prefix of example i: num_fewshot other examples with their gold answers. */
static void render_fewshot(const TaskData *td, int i, const TaskOptions *o, Buf *b) {
  int k = o->num_fewshot;
  if (k <= 0 || td->n < 2) return;
  if (k > td->n - 1) k = td->n - 1;
  Rng r;
  rng_seed(&r, o->seed ^ (0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1)));
  int *pick = t5g_malloc(k * sizeof(int));
  int have = 0;
  if (k * 2 <= td->n) {
    while (have < k) {       /* rejection: distinct indices, never i */
      int j = (int)rng_below(&r, td->n);
      if (j == i) continue;
      int dup = 0;
      for (int t = 0; t < have; t++) if (pick[t] == j) dup = 1;
      if (!dup) pick[have++] = j;
    }
  } else {                   /* partial Fisher-Yates over the pool without i */
    int *pool = t5g_malloc((td->n - 1) * sizeof(int));
    for (int j = 0, t = 0; j < td->n; j++) if (j != i) pool[t++] = j;
    for (int t = 0; t < k; t++) {
      int u = t + (int)rng_below(&r, td->n - 1 - t);
      int x = pool[t]; pool[t] = pool[u]; pool[u] = x;
      pick[have++] = pool[t];
    }
    free(pool);
  }
  for (int t = 0; t < k; t++) {
    const TaskExample *e = &td->ex[pick[t]];
    if (td->kind == TASK_PARTIAL) {
      buf_add(b, e->choices[e->gold]); buf_add(b, o->target_delimiter); buf_add(b, e->continuation);
    } else if (td->kind == TASK_MC) {
      buf_add(b, e->query); buf_add(b, o->answer_prefix); buf_add(b, o->target_delimiter); buf_add(b, e->choices[e->gold]);
    } else {
      buf_add(b, e->query); buf_add(b, o->answer_prefix); buf_add(b, o->target_delimiter); buf_add(b, e->answers[0]);
    }
    buf_add(b, o->fewshot_delimiter);
  }
  free(pick);
}

void task_render(const TaskData *td, int i, const TaskOptions *o, TaskRender *r) {
  const TaskExample *e = &td->ex[i];
  Buf fs = {0};
  buf_add(&fs, "");
  render_fewshot(td, i, o, &fs);
  int n = td->kind == TASK_GEN ? 1 : e->n_choices;
  r->n = n;
  r->ctx = t5g_calloc(n, sizeof(char *));
  r->cont = t5g_calloc(n, sizeof(char *));
  for (int c = 0; c < n; c++) {
    Buf b = {0};
    buf_add(&b, fs.s);
    render_context(e, td->kind, c, o, &b);
    r->ctx[c] = b.s;
    if (td->kind == TASK_MC) r->cont[c] = cat3(o->target_delimiter, e->choices[c], "");
    else if (td->kind == TASK_PARTIAL) r->cont[c] = cat3(o->target_delimiter, e->continuation, "");
  }
  free(fs.s);
}

void task_render_free(TaskRender *r) {
  for (int c = 0; c < r->n; c++) { free(r->ctx[c]); free(r->cont[c]); }
  free(r->ctx); free(r->cont);
  memset(r, 0, sizeof *r);
}

/* ------------------------------------------------------------------------------------------ */
/* Running tasks                                                                                */

typedef struct Progress { FILE *f; const char *name; const char *what; double t0, last; } Progress;

static void progress_cb(void *ctx, int done, int total) {
  Progress *p = ctx;
  if (!p->f) return;
  double now = t5g_now();
  if (done < total && now - p->last < 2.0) return;
  p->last = now;
  double el = now - p->t0;
  double eta = done > 0 ? el * (total - done) / done : 0;
  fprintf(p->f, "[%s] %d/%d %s (%.0f%%), %.0f s elapsed, ~%.0f s left\n", p->name, done, total, p->what,
          100.0 * done / (total ? total : 1), el, eta);
  fflush(p->f);
}

static int encode(const Tokenizer *tok, const char *s, int bos, int32_t **ids, int *n) {
  int64_t n64 = 0;
  if (tokenizer_encode(tok, s, strlen(s), bos, 0, 0, ids, &n64) != 0) return -1;
  *n = (int)n64;
  return 0;
}

static double stderr01(double p, int n) { return n > 1 ? sqrt(p * (1 - p) / (n - 1)) : 0; }

static int run_mc(Model *m, const Tokenizer *tok, const TaskData *td, const TaskOptions *o, int n_eval, TaskResult *res) {
  /* tokenize all contexts and continuations (in parallel; the tokenizer is thread-safe) */
  int *first = t5g_malloc((n_eval + 1) * sizeof(int));
  first[0] = 0;
  for (int i = 0; i < n_eval; i++) first[i + 1] = first[i] + td->ex[i].n_choices;
  int n_items = first[n_eval];
  ScoreItem *items = t5g_calloc(n_items ? n_items : 1, sizeof *items);
  int32_t **own = t5g_calloc(2 * (size_t)n_items + 1, sizeof(int32_t *));
  double *blen = t5g_malloc((n_items ? n_items : 1) * sizeof(double));
  int fail = 0;
  char failmsg[512] = "";
#pragma omp parallel for schedule(dynamic, 8)
  for (int i = 0; i < n_eval; i++) {
    if (fail) continue;
    TaskRender r;
    task_render(td, i, o, &r);
    const TaskExample *e = &td->ex[i];
    int32_t *ctx_shared = NULL, *cont_shared = NULL;
    int n_ctx_shared = 0, n_cont_shared = 0;
    for (int c = 0; c < r.n; c++) {
      ScoreItem *it = &items[first[i] + c];
      int bad = 0;
      if (td->kind == TASK_MC) {
        if (c == 0) bad |= encode(tok, r.ctx[0], 1, &ctx_shared, &n_ctx_shared);
        it->ctx = ctx_shared; it->n_ctx = n_ctx_shared;
        int32_t *t = NULL; int nt = 0;
        bad |= encode(tok, r.cont[c], 0, &t, &nt);
        it->tgt = t; it->n_tgt = nt;
        own[2 * (first[i] + c) + 1] = t;
        blen[first[i] + c] = (double)strlen(e->choices[c]);
      } else {
        int32_t *cx = NULL; int ncx = 0;
        bad |= encode(tok, r.ctx[c], 1, &cx, &ncx);
        own[2 * (first[i] + c)] = cx;
        it->ctx = cx; it->n_ctx = ncx;
        if (c == 0) bad |= encode(tok, r.cont[0], 0, &cont_shared, &n_cont_shared);
        it->tgt = cont_shared; it->n_tgt = n_cont_shared;
        blen[first[i] + c] = (double)strlen(e->continuation);
      }
      if (!bad && it->n_tgt < 1) {
#pragma omp critical
        { if (!fail) snprintf(failmsg, sizeof failmsg, "%s:%d: choice %d encodes to no tokens", td->path, e->line, c); fail = 1; }
      }
      if (bad) {
#pragma omp critical
        { if (!fail) snprintf(failmsg, sizeof failmsg, "%s:%d: %s", td->path, e->line, t5g_last_error()); fail = 1; }
      }
    }
    if (td->kind == TASK_MC) own[2 * first[i]] = ctx_shared;
    else own[2 * first[i] + 1] = cont_shared;
    task_render_free(&r);
  }
  int rc = 0;
  if (fail) { rc = t5g_error("%s", failmsg); goto out; }
  {
    ScoreResult *sr = t5g_calloc(n_items ? n_items : 1, sizeof *sr);
    Progress pg = {o->progress, td->name, "continuations scored", t5g_now(), t5g_now()};
    int trunc = 0;
    if (score_items(m, items, n_items, o->batch_size, 0, sr, &trunc, progress_cb, &pg) != 0) { free(sr); rc = -1; goto out; }
    res->truncated = trunc;
    int hit = 0, hit_norm = 0;
    double *sum = t5g_malloc((n_items ? n_items : 1) * sizeof(double));
    for (int k = 0; k < n_items; k++) sum[k] = sr[k].sum_logprob;
    for (int i = 0; i < n_eval; i++) {
      const TaskExample *e = &td->ex[i];
      int f = first[i], nc = e->n_choices;
      hit += mc_argmax(sum + f, NULL, nc) == e->gold;
      if (td->kind == TASK_MC) hit_norm += mc_argmax(sum + f, blen + f, nc) == e->gold;
    }
    res->acc = n_eval ? (double)hit / n_eval : 0;
    res->acc_stderr = stderr01(res->acc, n_eval);
    if (td->kind == TASK_MC) {
      res->acc_norm = n_eval ? (double)hit_norm / n_eval : 0;
      res->acc_norm_stderr = stderr01(res->acc_norm, n_eval);
    } else res->acc_norm = res->acc_norm_stderr = NAN;
    free(sum); free(sr);
  }
out:
  for (size_t k = 0; k < 2 * (size_t)n_items; k++) free(own[k]);
  free(own); free(items); free(first); free(blen);
  return rc;
}

/* Cut a prompt to `keep` tokens: its first token (<bos>) and its last keep - 1. */
static void left_truncate(int32_t *ids, int *n, int keep) {
  if (*n <= keep) return;
  int cut = *n - keep;
  memmove(ids + 1, ids + 1 + cut, (size_t)(keep - 1) * sizeof(int32_t));
  *n = keep;
}

static int run_gen(Model *m, const Tokenizer *tok, const TaskData *td, const TaskOptions *o, int n_eval, TaskResult *res) {
  GenConfig gc;
  gen_config_default(&gc, m);
  gen_stop_ids_from_tokenizer(&gc, tok);
  gc.greedy = 1;
  gc.max_new_tokens = o->max_new_tokens;
  const int encdec = m->cfg.kind == MODEL_T5GEMMA;
  int maxpos = encdec ? m->cfg.enc.max_position_embeddings : m->cfg.dec.max_position_embeddings - gc.max_new_tokens;
  if (encdec && gc.max_new_tokens > m->cfg.dec.max_position_embeddings) gc.max_new_tokens = m->cfg.dec.max_position_embeddings;
  if (maxpos < 2) return t5g_error("%s: max_new_tokens %d leaves no room for a prompt (max_position_embeddings %d)", td->name, o->max_new_tokens, m->cfg.dec.max_position_embeddings);
  double em = 0, f1 = 0;
  Progress pg = {o->progress, td->name, "questions answered", t5g_now(), t5g_now()};
  int bs = o->batch_size;
  int32_t **ids = t5g_calloc(bs, sizeof(int32_t *));
  int *lens = t5g_calloc(bs, sizeof(int));
  GenOutput *out = t5g_calloc(bs, sizeof *out);
  int rc = 0;
  for (int b0 = 0; b0 < n_eval && rc == 0; b0 += bs) {
    int B = n_eval - b0 < bs ? n_eval - b0 : bs;
    for (int r = 0; r < B; r++) {
      TaskRender rd;
      task_render(td, b0 + r, o, &rd);
      if (encode(tok, rd.ctx[0], 1, &ids[r], &lens[r]) != 0) rc = -1;
      task_render_free(&rd);
      if (rc) break;
      if (lens[r] > maxpos) { left_truncate(ids[r], &lens[r], maxpos); res->truncated++; }
    }
    if (rc == 0 && generate(m, &gc, (const int32_t *const *)ids, lens, B, out) != 0) rc = -1;
    if (rc == 0) {
      for (int r = 0; r < B; r++) {
        const TaskExample *e = &td->ex[b0 + r];
        int n = out[r].n;
        if (out[r].stopped) n--;
        char *text = gen_decode_text(tok, out[r].ids, n);
        char *nl = strchr(text, '\n');
        if (nl) *nl = 0;
        em += squad_max_em(text, (const char *const *)e->answers, e->n_answers);
        f1 += squad_max_f1(text, (const char *const *)e->answers, e->n_answers);
        free(text);
        gen_output_free(&out[r]);
      }
    }
    for (int r = 0; r < B; r++) { free(ids[r]); ids[r] = NULL; }
    progress_cb(&pg, b0 + B, n_eval);
  }
  free(ids); free(lens); free(out);
  if (rc) return -1;
  res->em = n_eval ? em / n_eval : 0;
  res->f1 = n_eval ? f1 / n_eval : 0;
  res->acc = res->acc_norm = res->acc_stderr = res->acc_norm_stderr = NAN;
  return 0;
}

int task_run(Model *m, const Tokenizer *tok, const TaskData *td, const TaskOptions *o, TaskResult *res) {
  memset(res, 0, sizeof *res);
  snprintf(res->name, sizeof res->name, "%s", td->name);
  res->kind = td->kind;
  res->skipped = td->skipped;
  res->em = res->f1 = NAN;
  if (o->batch_size < 1) return t5g_error("eval: --batch-size must be >= 1, got %d", o->batch_size);
  if (o->num_fewshot < 0) return t5g_error("eval: --num-fewshot must be >= 0, got %d", o->num_fewshot);
  if (o->num_fewshot > td->n - 1)
    return t5g_error("%s: %d few-shot examples requested, the file has only %d other examples", td->path, o->num_fewshot, td->n - 1);
  int n_eval = o->limit > 0 && o->limit < td->n ? o->limit : td->n;
  res->n = n_eval;
  double t0 = t5g_now();
  int rc = td->kind == TASK_GEN ? run_gen(m, tok, td, o, n_eval, res) : run_mc(m, tok, td, o, n_eval, res);
  res->seconds = t5g_now() - t0;
  return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Validation loss                                                                              */

void val_options_default(ValOptions *o) {
  memset(o, 0, sizeof *o);
  o->split = "val";
  o->objective = "prefixlm";
  o->ul2_mixture = "t5gemma2";
  o->enc_len = 512;
  o->dec_len = 512;
  o->batches = 0;
  o->batch_size = 8;
  o->seed = 1234;
}

int val_loss_run(Model *m, const Tokenizer *tok, const ValOptions *o, ValResult *res) {
  memset(res, 0, sizeof *res);
  snprintf(res->objective, sizeof res->objective, "%s", o->objective);
  const int encdec = m->cfg.kind == MODEL_T5GEMMA;
  int is_causal = !strcmp(o->objective, "causal"), is_prefix = !strcmp(o->objective, "prefixlm"), is_ul2 = !strcmp(o->objective, "ul2");
  if (!is_causal && !is_prefix && !is_ul2)
    return t5g_error("eval: --objective must be prefixlm, ul2 or causal, got \"%s\"", o->objective);
  if (is_causal && encdec) return t5g_error("eval: --objective causal needs a decoder-only (Gemma 2) model; this one is T5Gemma (use prefixlm or ul2)");
  if (!is_causal && !encdec) return t5g_error("eval: --objective %s needs an encoder-decoder (T5Gemma) model; this one is Gemma 2 (use causal)", o->objective);
  if (o->batch_size < 1) return t5g_error("eval: --batch-size must be >= 1, got %d", o->batch_size);
  if (o->dec_len < 1 || (!is_causal && o->enc_len < 1)) return t5g_error("eval: --enc-len / --dec-len must be >= 1");
  if (o->dec_len > m->cfg.dec.max_position_embeddings || (encdec && o->enc_len > m->cfg.enc.max_position_embeddings))
    return t5g_error("eval: --enc-len %d / --dec-len %d exceed the model's max_position_embeddings", o->enc_len, o->dec_len);
  ShardReaderOpts ro = shard_reader_default_opts();
  ro.shuffle = 0;
  ro.seed = o->seed;
  ShardReader *rd = shard_reader_open(o->data_dir, o->split, &ro);
  if (!rd) return -1;
  int rc = -1;
  Objective *obj = NULL;
  int32_t sent[OBJ_MAX_SENTINELS];
  ObjSpecials sp;
  Batch b;
  int have_batch = 0;
  Arena arena; Graph g;
  arena_init(&arena, (size_t)64 << 20);
  graph_init(&g, &arena);
  g.grad_enabled = 0;
  if (tok) {
    if (shard_reader_check_tokenizer(rd, tokenizer_hash(tok), tokenizer_vocab_size(tok)) != 0) goto out;
    if (obj_specials_from_tokenizer(tok, NULL, sent, is_ul2 ? OBJ_MAX_SENTINELS : 0, &sp) < 0) goto out;
  } else {
    if (is_ul2) { t5g_error("eval: --objective ul2 needs --tokenizer (its sentinels are looked up by name)"); goto out; }
    memset(&sp, 0, sizeof sp);
    sp.pad = m->cfg.pad_token_id; sp.eos = m->cfg.eos_token_id; sp.bos = m->cfg.bos_token_id;
    sp.start_of_turn = sp.end_of_turn = -1;
  }
  {
    const ShardTokenizerInfo *ti = shard_reader_tokenizer(rd);
    int Vm = m->cfg.dec.vocab_size;
    if (ti->vocab_size > Vm) {
      t5g_error("%s: the dataset's vocabulary (%lld) is larger than the model's vocab_size %d", o->data_dir, (long long)ti->vocab_size, Vm);
      goto out;
    }
  }
  DocSource src = shard_reader_source_epoch(rd);
  if (is_causal) {
    CausalOptions co = obj_causal_defaults(o->dec_len);
    obj = obj_causal_new(&co, &sp, src, NULL, o->seed);
  } else if (is_prefix) {
    PrefixLMOptions po = obj_prefixlm_defaults(o->enc_len, o->dec_len);
    obj = obj_prefixlm_new(&po, &sp, src, NULL, o->seed);
  } else {
    Ul2Denoiser dn[32];
    int nd = ul2_parse(o->ul2_mixture, dn, 32);
    if (nd < 0) goto out;
    if (obj_resolve_modes(dn, nd, tok) != 0) goto out;
    Ul2Options uo = obj_ul2_defaults(o->enc_len, o->dec_len, dn, nd);
    obj = obj_ul2_new(&uo, &sp, src, NULL, o->seed);
  }
  if (!obj) goto out;
  obj_batch_alloc(obj, &b, o->batch_size);
  have_batch = 1;
  double sum = 0, t0 = t5g_now(), last = t0;
  int64_t ntok = 0, ncor = 0;
  int nb = 0;
  for (;;) {
    if (o->batches > 0 && nb >= o->batches) break;
    int got = obj_next_batch(obj, &b);
    if (got < 0) goto out;
    if (got == 0) break;
    graph_reset(&g);
    LossStats st = {0};
    model_loss(m, &g, &b, 1.0f, &st, NULL, NULL);
    sum += st.sum_nll; ntok += st.n_tokens; ncor += st.n_correct;
    nb++;
    double now = t5g_now();
    if (o->progress && (now - last >= 2.0)) {
      last = now;
      fprintf(o->progress, "[val %s] %d batches, %lld tokens, loss %.4f, %.0f s\n", o->objective, nb, (long long)ntok, ntok ? sum / ntok : 0, now - t0);
      fflush(o->progress);
    }
  }
  if (ntok == 0) { t5g_error("%s: split \"%s\" gave no target tokens", o->data_dir, o->split); goto out; }
  res->batches = nb;
  res->tokens = ntok;
  res->loss = sum / ntok;
  res->ppl = exp(res->loss);
  res->token_acc = (double)ncor / ntok;
  res->seconds = t5g_now() - t0;
  rc = 0;
out:
  if (have_batch) batch_free(&b);
  if (obj) obj_free(obj);
  graph_free(&g);
  arena_free(&arena);
  shard_reader_close(rd);
  return rc;
}
