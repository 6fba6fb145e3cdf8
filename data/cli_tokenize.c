/* cli_tokenize.c: `t5gemma tokenize` and `t5gemma detokenize` (train/commands.h).
 *
 *   t5gemma tokenize --tokenizer PATH [--bos] [--eos] [--parse-special] [--jsonl FIELD] [--stats] [FILES...]
 *     Text mode: every input line (bytes up to "\n", the "\n" excluded; a "\r" is kept) is one
 *     document; writes one line of space-separated ids per document (an empty line gives an
 *     empty line, or just the BOS/EOS ids).
 *     --jsonl FIELD: every non-blank input line is a JSON object whose string FIELD is the
 *     document (it may hold newlines); writes {"ids":[...]} per document.
 *   t5gemma detokenize --tokenizer PATH [--skip-special] [--jsonl FIELD] [FILES...]
 *     Every input line is a document: space-separated ids, or a JSON object with an "ids" array.
 *     Writes the text followed by "\n" (a text holding "\n" then spans several lines: use
 *     --jsonl FIELD to write {"FIELD": "text"} lines instead).
 * No FILES, or "-", reads standard input. Exit status 0, 1 on bad input (message on stderr),
 * 2 on a usage error.
 */
#define _GNU_SOURCE
#include "data/tokenizer.h"
#include "model/util.h"
#include "train/commands.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { char *b; size_t n, cap; } OutBuf;
static void ob_put(OutBuf *o, const void *p, size_t n) {
  if (o->n + n > o->cap) {
    size_t c = o->cap ? o->cap : 1 << 16;
    while (c < o->n + n) c *= 2;
    o->b = t5g_realloc(o->b, c); o->cap = c;
  }
  memcpy(o->b + o->n, p, n); o->n += n;
}
static void ob_int(OutBuf *o, int32_t v) {
  char tmp[16]; int k = 0; uint32_t u = v < 0 ? (uint32_t)(-(int64_t)v) : (uint32_t)v;
  do { tmp[k++] = (char)('0' + u % 10); u /= 10; } while (u);
  if (v < 0) tmp[k++] = '-';
  char r[16]; for (int i = 0; i < k; i++) r[i] = tmp[k - 1 - i];
  ob_put(o, r, (size_t)k);
}
/* JSON string literal of s[0..n) (UTF-8 passed through; control characters escaped). */
static void ob_json_string(OutBuf *o, const char *s, size_t n) {
  ob_put(o, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"') ob_put(o, "\\\"", 2);
    else if (c == '\\') ob_put(o, "\\\\", 2);
    else if (c == '\n') ob_put(o, "\\n", 2);
    else if (c == '\t') ob_put(o, "\\t", 2);
    else if (c == '\r') ob_put(o, "\\r", 2);
    else if (c < 0x20) { char e[8]; snprintf(e, sizeof e, "\\u%04x", c); ob_put(o, e, 6); }
    else ob_put(o, &s[i], 1);
  }
  ob_put(o, "\"", 1);
}
static int ob_flush(OutBuf *o) {
  if (o->n && fwrite(o->b, 1, o->n, stdout) != o->n) return t5g_error("writing standard output: %s", strerror(errno));
  o->n = 0;
  return 0;
}

/* Prefix the last recorded error with "file:line: " (copied first: t5g_error writes the buffer
 * that t5g_last_error() reads). */
static void error_at(const char *fname, int64_t lineno) {
  char msg[2048];
  snprintf(msg, sizeof msg, "%s", t5g_last_error());
  t5g_error("%s:%lld: %s", fname, (long long)lineno, msg);
}

static FILE *open_input(const char *name) {
  if (strcmp(name, "-") == 0) return stdin;
  FILE *f = fopen(name, "rb");
  if (!f) t5g_error("%s: cannot open: %s", name, strerror(errno));
  return f;
}

static void tokenize_usage(FILE *f) {
  fprintf(f,
    "usage: t5gemma tokenize --tokenizer PATH [--bos] [--eos] [--parse-special] [--jsonl FIELD] [--stats] [FILES...]\n"
    "\n"
    "Text -> token ids with a Gemma tokenizer (tokenizer.json, tokenizer.model, or a directory\n"
    "holding one). Reads FILES (or standard input, also as \"-\").\n"
    "  --tokenizer PATH   the tokenizer (required)\n"
    "  --bos, --eos       prepend <bos> / append <eos> to every document\n"
    "  --parse-special    turn special-token strings in the text (<bos>, <start_of_turn>, ...) into\n"
    "                     their ids (default: they are encoded as plain text)\n"
    "  --jsonl FIELD      input lines are JSON objects holding the document in string FIELD;\n"
    "                     output lines are {\"ids\":[...]}. Without it, every input line is one\n"
    "                     document and every output line is its space-separated ids.\n"
    "  --stats            print documents, bytes, tokens and encoding speed (MB/s) on stderr\n"
    "  --info             print the tokenizer's vocabulary size, hash and special-token ids as\n"
    "                     one JSON line, then exit\n");
}

int cmd_tokenize(int argc, char **argv) {
  const char *tok_path = NULL, *field = NULL;
  int bos = 0, eos = 0, parse_special = 0, stats = 0, info = 0;
  const char **files = t5g_calloc((size_t)argc + 1, sizeof(char *));
  int nfiles = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) { tokenize_usage(stdout); free(files); return 0; }
    else if (strcmp(a, "--tokenizer") == 0 && i + 1 < argc) tok_path = argv[++i];
    else if (strcmp(a, "--jsonl") == 0 && i + 1 < argc) field = argv[++i];
    else if (strcmp(a, "--bos") == 0) bos = 1;
    else if (strcmp(a, "--eos") == 0) eos = 1;
    else if (strcmp(a, "--parse-special") == 0) parse_special = 1;
    else if (strcmp(a, "--stats") == 0) stats = 1;
    else if (strcmp(a, "--info") == 0) info = 1;
    else if (a[0] == '-' && a[1] != 0) {
      fprintf(stderr, "t5gemma tokenize: unknown or incomplete option '%s'\n\n", a);
      tokenize_usage(stderr); free(files); return 2;
    } else files[nfiles++] = a;
  }
  if (!tok_path) { fprintf(stderr, "t5gemma tokenize: --tokenizer PATH is required\n\n"); tokenize_usage(stderr); free(files); return 2; }
  if (nfiles == 0) files[nfiles++] = "-";
  Tokenizer *t = tokenizer_load(tok_path);
  if (!t) { fprintf(stderr, "t5gemma tokenize: %s\n", t5g_last_error()); free(files); return 1; }
  if (info) {
    TokenizerSpecials sp = tokenizer_specials(t);
    OutBuf ib = {0};
    ob_put(&ib, "{\"path\":", 8);
    ob_json_string(&ib, tokenizer_path(t), strlen(tokenizer_path(t)));
    char tmp[512];
    snprintf(tmp, sizeof tmp, ",\"vocab_size\":%d,\"hash\":\"%016llx\",\"pad\":%d,\"eos\":%d,\"bos\":%d,\"unk\":%d,"
             "\"mask\":%d,\"start_of_turn\":%d,\"end_of_turn\":%d,\"unused0\":%d}\n",
             tokenizer_vocab_size(t), (unsigned long long)tokenizer_hash(t), sp.pad, sp.eos, sp.bos, sp.unk, sp.mask,
             sp.start_of_turn, sp.end_of_turn, sp.unused0);
    ob_put(&ib, tmp, strlen(tmp));
    int rc = ob_flush(&ib) ? 1 : 0;
    free(ib.b); free(files); tokenizer_free(t);
    return rc;
  }

  OutBuf ob = {0};
  char *line = NULL; size_t lcap = 0;
  int64_t ndocs = 0, nbytes = 0, ntokens = 0;
  double t_enc = 0;
  int rc = 0;
  for (int fi = 0; fi < nfiles && !rc; fi++) {
    FILE *f = open_input(files[fi]);
    if (!f) { rc = 1; break; }
    const char *fname = strcmp(files[fi], "-") == 0 ? "<stdin>" : files[fi];
    ssize_t got;
    int64_t lineno = 0;
    while ((got = getline(&line, &lcap, f)) >= 0) {
      lineno++;
      size_t n = (size_t)got;
      if (n && line[n - 1] == '\n') line[--n] = 0;
      const char *doc = line; size_t dlen = n;
      cJSON *obj = NULL;
      if (field) {
        size_t k = 0;
        while (k < n && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r')) k++;
        if (k == n) continue;   /* blank JSONL line */
        obj = cJSON_ParseWithLength(line, n);
        if (!obj || !cJSON_IsObject(obj)) {
          t5g_error("%s:%lld: malformed JSON line (expected an object with string field \"%s\")", fname, (long long)lineno, field);
          cJSON_Delete(obj); rc = 1; break;
        }
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, field);
        if (!cJSON_IsString(v)) {
          t5g_error("%s:%lld: field \"%s\" %s", fname, (long long)lineno, field, v ? "is not a string" : "is missing");
          cJSON_Delete(obj); rc = 1; break;
        }
        doc = v->valuestring; dlen = strlen(doc);
      }
      int32_t *ids; int64_t nids;
      double t0 = t5g_now();
      int e = tokenizer_encode(t, doc, dlen, bos, eos, parse_special, &ids, &nids);
      t_enc += t5g_now() - t0;
      cJSON_Delete(obj);
      if (e) { error_at(fname, lineno); rc = 1; break; }
      ndocs++; nbytes += (int64_t)dlen; ntokens += nids;
      if (field) ob_put(&ob, "{\"ids\":[", 8);
      for (int64_t i = 0; i < nids; i++) {
        if (i) ob_put(&ob, field ? "," : " ", 1);
        ob_int(&ob, ids[i]);
      }
      if (field) ob_put(&ob, "]}", 2);
      ob_put(&ob, "\n", 1);
      free(ids);
      if (ob.n > (1 << 20) && ob_flush(&ob)) { rc = 1; break; }
    }
    if (!rc && ferror(f)) { t5g_error("%s: read error: %s", fname, strerror(errno)); rc = 1; }
    if (f != stdin) fclose(f);
  }
  if (!rc && (ob_flush(&ob) || fflush(stdout) != 0)) rc = 1;
  if (rc) fprintf(stderr, "t5gemma tokenize: %s\n", t5g_last_error());
  else if (stats)
    fprintf(stderr, "tokenize: %lld documents, %lld bytes, %lld tokens (%.3f bytes/token), encoding %.3f s = %.2f MB/s\n",
            (long long)ndocs, (long long)nbytes, (long long)ntokens, ntokens ? (double)nbytes / (double)ntokens : 0.0,
            t_enc, t_enc > 0 ? (double)nbytes / 1e6 / t_enc : 0.0);
  free(line); free(ob.b); free(files);
  tokenizer_free(t);
  return rc;
}

static void detokenize_usage(FILE *f) {
  fprintf(f,
    "usage: t5gemma detokenize --tokenizer PATH [--skip-special] [--jsonl FIELD] [FILES...]\n"
    "\n"
    "Token ids -> text. Every input line is one document: space-separated ids, or a JSON object\n"
    "with an \"ids\" array (as written by `t5gemma tokenize --jsonl`). Reads FILES or stdin.\n"
    "  --tokenizer PATH   the tokenizer (required)\n"
    "  --skip-special     drop special tokens (<bos>, <eos>, <pad>, <start_of_turn>, ...)\n"
    "  --jsonl FIELD      write {\"FIELD\": \"text\"} lines (texts may contain newlines); without\n"
    "                     it the text itself is written, followed by a newline\n");
}

int cmd_detokenize(int argc, char **argv) {
  const char *tok_path = NULL, *field = NULL;
  int skip = 0;
  const char **files = t5g_calloc((size_t)argc + 1, sizeof(char *));
  int nfiles = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) { detokenize_usage(stdout); free(files); return 0; }
    else if (strcmp(a, "--tokenizer") == 0 && i + 1 < argc) tok_path = argv[++i];
    else if (strcmp(a, "--jsonl") == 0 && i + 1 < argc) field = argv[++i];
    else if (strcmp(a, "--skip-special") == 0) skip = 1;
    else if (a[0] == '-' && a[1] != 0) {
      fprintf(stderr, "t5gemma detokenize: unknown or incomplete option '%s'\n\n", a);
      detokenize_usage(stderr); free(files); return 2;
    } else files[nfiles++] = a;
  }
  if (!tok_path) { fprintf(stderr, "t5gemma detokenize: --tokenizer PATH is required\n\n"); detokenize_usage(stderr); free(files); return 2; }
  if (nfiles == 0) files[nfiles++] = "-";
  Tokenizer *t = tokenizer_load(tok_path);
  if (!t) { fprintf(stderr, "t5gemma detokenize: %s\n", t5g_last_error()); free(files); return 1; }

  OutBuf ob = {0};
  char *line = NULL; size_t lcap = 0;
  int32_t *ids = NULL; int64_t idcap = 0;
  int rc = 0;
  for (int fi = 0; fi < nfiles && !rc; fi++) {
    FILE *f = open_input(files[fi]);
    if (!f) { rc = 1; break; }
    const char *fname = strcmp(files[fi], "-") == 0 ? "<stdin>" : files[fi];
    ssize_t got;
    int64_t lineno = 0;
    while ((got = getline(&line, &lcap, f)) >= 0) {
      lineno++;
      size_t n = (size_t)got;
      if (n && line[n - 1] == '\n') line[--n] = 0;
      if (n && line[n - 1] == '\r') line[--n] = 0;
      int64_t nids = 0;
      size_t k = 0;
      while (k < n && (line[k] == ' ' || line[k] == '\t')) k++;
      if (k < n && line[k] == '{') {
        cJSON *obj = cJSON_ParseWithLength(line, n);
        const cJSON *arr = obj ? cJSON_GetObjectItemCaseSensitive(obj, "ids") : NULL, *x;
        if (!cJSON_IsArray(arr)) {
          t5g_error("%s:%lld: %s", fname, (long long)lineno, obj ? "JSON line has no \"ids\" array" : "malformed JSON line");
          cJSON_Delete(obj); rc = 1; break;
        }
        cJSON_ArrayForEach(x, arr) {
          if (!cJSON_IsNumber(x) || x->valuedouble != (double)x->valueint) {
            t5g_error("%s:%lld: \"ids\" holds a value that is not an integer id", fname, (long long)lineno);
            rc = 1; break;
          }
          if (nids == idcap) { idcap = idcap ? 2 * idcap : 1024; ids = t5g_realloc(ids, (size_t)idcap * sizeof(int32_t)); }
          ids[nids++] = x->valueint;
        }
        cJSON_Delete(obj);
        if (rc) break;
      } else {
        char *p = line + k, *end = line + n;
        while (p < end) {
          while (p < end && (*p == ' ' || *p == '\t' || *p == ',')) p++;
          if (p >= end) break;
          char *q;
          errno = 0;
          long v = strtol(p, &q, 10);
          if (q == p || errno || v < INT32_MIN || v > INT32_MAX || (q < end && *q != ' ' && *q != '\t' && *q != ',')) {
            char *w = p; while (w < end && *w != ' ' && *w != '\t' && *w != ',') w++;
            t5g_error("%s:%lld: '%.*s' is not an integer token id", fname, (long long)lineno, (int)(w - p), p);
            rc = 1; break;
          }
          if (nids == idcap) { idcap = idcap ? 2 * idcap : 1024; ids = t5g_realloc(ids, (size_t)idcap * sizeof(int32_t)); }
          ids[nids++] = (int32_t)v;
          p = q;
        }
        if (rc) break;
      }
      char *text = tokenizer_decode(t, ids, nids, skip);
      if (!text) { error_at(fname, lineno); rc = 1; break; }
      if (field) {
        ob_put(&ob, "{", 1); ob_json_string(&ob, field, strlen(field)); ob_put(&ob, ":", 1);
        ob_json_string(&ob, text, strlen(text)); ob_put(&ob, "}", 1);
      } else {
        ob_put(&ob, text, strlen(text));
      }
      ob_put(&ob, "\n", 1);
      free(text);
      if (ob.n > (1 << 20) && ob_flush(&ob)) { rc = 1; break; }
    }
    if (!rc && ferror(f)) { t5g_error("%s: read error: %s", fname, strerror(errno)); rc = 1; }
    if (f != stdin) fclose(f);
  }
  if (!rc && (ob_flush(&ob) || fflush(stdout) != 0)) rc = 1;
  if (rc) fprintf(stderr, "t5gemma detokenize: %s\n", t5g_last_error());
  free(line); free(ob.b); free(ids); free(files);
  tokenizer_free(t);
  return rc;
}
