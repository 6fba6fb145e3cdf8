/* cli_common.c: shared helpers of the evaluation commands (see cli_common.h). */
#define _GNU_SOURCE
#include "eval/cli_common.h"
#include "data/tokenizer.h"
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int cli_is(const char *arg, const char *name) {
  size_t l = strlen(name);
  return strncmp(arg, name, l) == 0 && (arg[l] == 0 || arg[l] == '=');
}

const char *cli_value(int argc, char **argv, int *i) {
  const char *a = argv[*i], *eq = strchr(a, '=');
  if (a[0] == '-' && a[1] == '-' && eq) return eq + 1;
  if (*i + 1 >= argc) { t5g_error("option %s needs a value", a); return NULL; }
  return argv[++*i];
}

int cli_int(const char *opt, const char *s, long lo, long hi, int *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end) return t5g_error("%s: expected an integer, got \"%s\"", opt, s);
  if (v < lo || v > hi) return t5g_error("%s: %ld is out of range [%ld, %ld]", opt, v, lo, hi);
  *out = (int)v;
  return 0;
}

int cli_u64(const char *opt, const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end || s[0] == '-') return t5g_error("%s: expected a non-negative integer, got \"%s\"", opt, s);
  *out = v;
  return 0;
}

int cli_float(const char *opt, const char *s, double lo, double hi, float *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !isfinite(v)) return t5g_error("%s: expected a number, got \"%s\"", opt, s);
  if (v < lo || v > hi) return t5g_error("%s: %g is out of range [%g, %g]", opt, v, lo, hi);
  *out = (float)v;
  return 0;
}

Tokenizer *cli_load_tokenizer(const char *path, const char *model_dir, const Model *m, int required, int *failed) {
  *failed = 0;
  Tokenizer *t = NULL;
  if (path) t = tokenizer_load(path);
  else if (model_dir) {
    char *a = t5g_path_join(model_dir, "tokenizer.json"), *b = t5g_path_join(model_dir, "tokenizer.model");
    int have = t5g_file_exists(a) || t5g_file_exists(b);
    free(a); free(b);
    if (have) t = tokenizer_load(model_dir);
    else if (required) t5g_error("no tokenizer: %s holds no tokenizer.json or tokenizer.model; pass --tokenizer PATH", model_dir);
    else return NULL;
  } else if (!required) return NULL;
  else t5g_error("no tokenizer given (--tokenizer PATH)");
  if (!t) { *failed = 1; return NULL; }
  int V = m->cfg.dec.vocab_size;
  if (m->cfg.kind == MODEL_T5GEMMA && m->cfg.enc.vocab_size < V) V = m->cfg.enc.vocab_size;
  if (tokenizer_vocab_size(t) > V) {
    t5g_error("%s: the tokenizer has %d pieces, more than the model's vocab_size %d", tokenizer_path(t), tokenizer_vocab_size(t), V);
    tokenizer_free(t);
    *failed = 1;
    return NULL;
  }
  return t;
}

/* ---- chat template ------------------------------------------------------------------------ */

typedef struct IdBuf { int32_t *v; int n, cap; } IdBuf;
static void ib_push(IdBuf *b, int32_t x) {
  if (b->n == b->cap) { b->cap = b->cap ? 2 * b->cap : 64; b->v = t5g_realloc(b->v, b->cap * sizeof(int32_t)); }
  b->v[b->n++] = x;
}
static int ib_text(IdBuf *b, const Tokenizer *t, const char *s) {
  int32_t *ids = NULL; int64_t n = 0;
  if (tokenizer_encode(t, s, strlen(s), 0, 0, 0, &ids, &n) != 0) return -1;
  for (int64_t i = 0; i < n; i++) ib_push(b, ids[i]);
  free(ids);
  return 0;
}

static char *trim_dup(const char *s) {
  while (*s && isspace((unsigned char)*s)) s++;
  size_t l = strlen(s);
  while (l > 0 && isspace((unsigned char)s[l - 1])) l--;
  char *r = t5g_malloc(l + 1);
  memcpy(r, s, l); r[l] = 0;
  return r;
}

static int chat_render(const Tokenizer *tok, const char *const *roles, char *const *contents, int n, int32_t **ids, int *nout) {
  TokenizerSpecials sp = tokenizer_specials(tok);
  if (sp.bos < 0 || sp.start_of_turn < 0 || sp.end_of_turn < 0)
    return t5g_error("%s: the chat template needs <bos>, <start_of_turn> and <end_of_turn> in the vocabulary", tokenizer_path(tok));
  IdBuf b = {0};
  ib_push(&b, sp.bos);
  for (int i = 0; i < n; i++) {
    ib_push(&b, sp.start_of_turn);
    size_t l = strlen(roles[i]) + strlen(contents[i]) + 2;
    char *s = t5g_malloc(l);
    snprintf(s, l, "%s\n%s", roles[i], contents[i]);
    int rc = ib_text(&b, tok, s);
    free(s);
    if (rc) { free(b.v); return -1; }
    ib_push(&b, sp.end_of_turn);
    if (ib_text(&b, tok, "\n")) { free(b.v); return -1; }
  }
  ib_push(&b, sp.start_of_turn);
  if (ib_text(&b, tok, "model\n")) { free(b.v); return -1; }
  *ids = b.v; *nout = b.n;
  return 0;
}

int cli_chat_encode_text(const Tokenizer *tok, const char *text, int32_t **ids, int *n) {
  const char *role = "user";
  char *c = trim_dup(text);
  int rc = chat_render(tok, &role, &c, 1, ids, n);
  free(c);
  return rc;
}

int cli_chat_encode(const Tokenizer *tok, const cJSON *messages, int32_t **ids, int *n) {
  if (!cJSON_IsArray(messages)) return t5g_error("\"messages\" must be a list of {\"role\", \"content\"} objects");
  int k = cJSON_GetArraySize(messages);
  if (k < 1) return t5g_error("\"messages\" is empty");
  const char **roles = t5g_calloc(k, sizeof(char *));
  char **contents = t5g_calloc(k, sizeof(char *));
  int nt = 0, rc = -1;
  char *system = NULL;
  for (int i = 0; i < k; i++) {
    const cJSON *msg = cJSON_GetArrayItem(messages, i);
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(msg, "role"), *c = cJSON_GetObjectItemCaseSensitive(msg, "content");
    if (!cJSON_IsString(r) || !cJSON_IsString(c)) { t5g_error("messages[%d] needs string fields \"role\" and \"content\"", i); goto out; }
    const char *role = r->valuestring;
    if (!strcmp(role, "system")) {
      if (i != 0) { t5g_error("messages[%d]: a \"system\" message may only come first", i); goto out; }
      system = trim_dup(c->valuestring);
      continue;
    }
    if (!strcmp(role, "assistant")) role = "model";
    if (strcmp(role, "user") && strcmp(role, "model")) { t5g_error("messages[%d]: role \"%s\" (expected user, model/assistant or system)", i, r->valuestring); goto out; }
    const char *expect = nt % 2 == 0 ? "user" : "model";
    if (strcmp(role, expect)) { t5g_error("messages[%d]: role \"%s\", expected \"%s\" (roles alternate user/model starting with user)", i, role, expect); goto out; }
    char *content = trim_dup(c->valuestring);
    if (system && nt == 0) {
      size_t l = strlen(system) + strlen(content) + 3;
      char *m2 = t5g_malloc(l);
      snprintf(m2, l, "%s\n\n%s", system, content);
      free(content);
      content = m2;
    }
    roles[nt] = role;
    contents[nt++] = content;
  }
  if (nt == 0) { t5g_error("\"messages\" holds no user turn"); goto out; }
  if (strcmp(roles[nt - 1], "user")) { t5g_error("the last message must be a user turn (the model answers it)"); goto out; }
  rc = chat_render(tok, roles, contents, nt, ids, n);
out:
  for (int i = 0; i < nt; i++) free(contents[i]);
  free(contents); free(roles); free(system);
  return rc;
}

int cli_json_ids(const cJSON *a, const char *field, int32_t **ids, int *n, char *err, size_t errn) {
  if (!cJSON_IsArray(a)) { snprintf(err, errn, "\"%s\" must be a list of token ids", field); return -1; }
  int k = cJSON_GetArraySize(a);
  int32_t *v = t5g_malloc((k ? k : 1) * sizeof(int32_t));
  for (int i = 0; i < k; i++) {
    const cJSON *x = cJSON_GetArrayItem(a, i);
    if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble < 0 || x->valuedouble > 2147483647.0) {
      snprintf(err, errn, "\"%s\"[%d] must be a non-negative integer token id", field, i);
      free(v);
      return -1;
    }
    v[i] = (int32_t)x->valuedouble;
  }
  *ids = v; *n = k;
  return 0;
}

void cli_json_string(FILE *f, const char *s) {
  cJSON *x = cJSON_CreateString(s ? s : "");
  char *p = cJSON_PrintUnformatted(x);
  fputs(p, f);
  free(p);
  cJSON_Delete(x);
}

void cli_json_num(FILE *f, int prec, double v, int64_t *nonfinite) {
  if (isfinite(v)) { fprintf(f, "%.*g", prec, v); return; }
  fputs("null", f);
  if (nonfinite) (*nonfinite)++;
}
