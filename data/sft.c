/* sft.c: instruction-tuning data: JSONL conversations (cJSON), validated at open, rendered in the
 * Gemma 2 turn format (spec 4.6; the HF Gemma 2 chat template:
 *   <bos> {<start_of_turn>ROLE\nCONTENT|trim<end_of_turn>\n}* <start_of_turn>model\n ).
 * The builder that turns rendered conversations into rows is obj_sft_new (data/objectives.c). */
#include "data/objectives.h"
#include "model/util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct SftData {
  char *path;
  const char *map;      /* the whole file, read-only mapping */
  size_t size;
  int64_t n;            /* examples (non-blank lines) */
  int64_t *off, *len;   /* byte range of each example's line */
  int64_t *lineno;      /* 1-based line number, for messages */
};

enum { ROLE_USER = 0, ROLE_MODEL = 1 };
typedef struct {
  int role;
  const char *text; size_t len;     /* content, trimmed */
  const char *prefix; size_t plen;  /* system content merged into the first user turn, trimmed */
} Turn;

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

static void trim(const char **s, size_t *n) {
  while (*n > 0 && is_ws((*s)[0])) { (*s)++; (*n)--; }
  while (*n > 0 && is_ws((*s)[*n - 1])) (*n)--;
}

static const char *json_type(const cJSON *j) {
  if (!j) return "nothing";
  if (cJSON_IsString(j)) return "a string";
  if (cJSON_IsNumber(j)) return "a number";
  if (cJSON_IsArray(j)) return "an array";
  if (cJSON_IsObject(j)) return "an object";
  if (cJSON_IsBool(j)) return "a boolean";
  if (cJSON_IsNull(j)) return "null";
  return "an invalid value";
}

/* Parse one line into turns (pointers into *root, which the caller frees with cJSON_Delete).
 * Returns the number of turns or -1 with "path:line: ..." errors. */
static int parse_conv(const char *path, int64_t lineno, const char *text, size_t len, cJSON **root,
                      Turn **turns, int *cap) {
  *root = cJSON_ParseWithLength(text, len);
  if (!*root) {
    const char *at = cJSON_GetErrorPtr();
    long col = at && at >= text && at <= text + len ? (long)(at - text) + 1 : 0;
    return t5g_error("%s:%lld: not valid JSON (error near column %ld)", path, (long long)lineno, col);
  }
  if (!cJSON_IsObject(*root))
    return t5g_error("%s:%lld: expected a JSON object with \"messages\" or \"prompt\"/\"response\"; "
                     "found %s", path, (long long)lineno, json_type(*root));
  const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(*root, "messages");
  int nt = 0;
  if (msgs) {
    if (!cJSON_IsArray(msgs))
      return t5g_error("%s:%lld: \"messages\": expected an array; found %s", path, (long long)lineno,
                       json_type(msgs));
    int nm = cJSON_GetArraySize(msgs), i = 0;
    if (nm + 1 > *cap) { *cap = nm + 1; *turns = t5g_realloc(*turns, sizeof(Turn) * *cap); }
    const char *sys = NULL;
    size_t slen = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
      const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
      const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
      if (!cJSON_IsObject(m))
        return t5g_error("%s:%lld: messages[%d]: expected an object; found %s", path, (long long)lineno,
                         i, json_type(m));
      if (!cJSON_IsString(role))
        return t5g_error("%s:%lld: messages[%d].role: expected a string; found %s", path,
                         (long long)lineno, i, json_type(role));
      if (!cJSON_IsString(content))
        return t5g_error("%s:%lld: messages[%d].content: expected a string; found %s", path,
                         (long long)lineno, i, json_type(content));
      const char *r = role->valuestring;
      const char *c = content->valuestring;
      size_t cl = strlen(c);
      trim(&c, &cl);
      if (!strcmp(r, "system")) {
        if (i != 0)
          return t5g_error("%s:%lld: messages[%d].role: \"system\" is only accepted as the first "
                           "message", path, (long long)lineno, i);
        sys = c; slen = cl;
      } else {
        int want = nt % 2 == 0 ? ROLE_USER : ROLE_MODEL;
        int got;
        if (!strcmp(r, "user")) got = ROLE_USER;
        else if (!strcmp(r, "model") || !strcmp(r, "assistant")) got = ROLE_MODEL;
        else
          return t5g_error("%s:%lld: messages[%d].role: expected \"user\", \"model\" or \"assistant\"; "
                           "found \"%s\"", path, (long long)lineno, i, r);
        if (got != want)
          return t5g_error("%s:%lld: messages[%d].role: roles must alternate user/model starting "
                           "with user; expected %s, found \"%s\"", path, (long long)lineno, i,
                           want == ROLE_USER ? "user" : "model (or assistant)", r);
        Turn t = { got, c, cl, NULL, 0 };
        if (nt == 0 && sys) { t.prefix = sys; t.plen = slen; }
        (*turns)[nt++] = t;
      }
      i++;
    }
    if (nt < 2 || (*turns)[nt - 1].role != ROLE_MODEL)
      return t5g_error("%s:%lld: \"messages\": expected at least one user turn and a final model "
                       "(or assistant) turn; found %d turns%s", path, (long long)lineno, nt,
                       nt > 0 ? " ending with a user turn" : "");
  } else {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(*root, "prompt");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(*root, "response");
    if (!p && !r)
      return t5g_error("%s:%lld: expected \"messages\" (array) or \"prompt\" and \"response\" "
                       "(strings); found neither", path, (long long)lineno);
    if (!cJSON_IsString(p))
      return t5g_error("%s:%lld: \"prompt\": expected a string; found %s", path, (long long)lineno,
                       json_type(p));
    if (!cJSON_IsString(r))
      return t5g_error("%s:%lld: \"response\": expected a string; found %s", path, (long long)lineno,
                       json_type(r));
    if (*cap < 2) { *cap = 2; *turns = t5g_realloc(*turns, sizeof(Turn) * *cap); }
    const char *a = p->valuestring, *b = r->valuestring;
    size_t al = strlen(a), bl = strlen(b);
    trim(&a, &al); trim(&b, &bl);
    (*turns)[0] = (Turn){ ROLE_USER, a, al, NULL, 0 };
    (*turns)[1] = (Turn){ ROLE_MODEL, b, bl, NULL, 0 };
    nt = 2;
  }
  return nt;
}

SftData *sft_open(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) { t5g_error("%s: cannot open: %s", path, strerror(errno)); return NULL; }
  struct stat stt;
  if (fstat(fd, &stt) < 0) { t5g_error("%s: cannot stat: %s", path, strerror(errno)); close(fd); return NULL; }
  size_t size = (size_t)stt.st_size;
  if (size == 0) { t5g_error("%s: empty file (expected JSONL conversations)", path); close(fd); return NULL; }
  const char *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) { t5g_error("%s: cannot map: %s", path, strerror(errno)); return NULL; }
  SftData *d = t5g_calloc(1, sizeof *d);
  d->path = t5g_strdup(path);
  d->map = map; d->size = size;
  int64_t cap = 0, lineno = 0;
  Turn *turns = NULL;
  int tcap = 0;
  size_t p = 0;
  while (p < size) {
    const char *nl = memchr(map + p, '\n', size - p);
    size_t e = nl ? (size_t)(nl - map) : size;
    lineno++;
    size_t len = e - p;
    const char *line = map + p;
    p = e + 1;
    int blank = 1;
    for (size_t i = 0; i < len && blank; i++) blank = is_ws(line[i]);
    if (blank) continue;
    cJSON *root = NULL;
    int nt = parse_conv(path, lineno, line, len, &root, &turns, &tcap);
    cJSON_Delete(root);
    if (nt < 0) { free(turns); sft_close(d); return NULL; }
    if (d->n == cap) {
      cap = cap ? 2 * cap : 1024;
      d->off = t5g_realloc(d->off, sizeof(int64_t) * cap);
      d->len = t5g_realloc(d->len, sizeof(int64_t) * cap);
      d->lineno = t5g_realloc(d->lineno, sizeof(int64_t) * cap);
    }
    d->off[d->n] = line - map; d->len[d->n] = (int64_t)len; d->lineno[d->n] = lineno;
    d->n++;
  }
  free(turns);
  if (d->n == 0) { t5g_error("%s: no examples (only blank lines)", path); sft_close(d); return NULL; }
  return d;
}

void sft_close(SftData *d) {
  if (!d) return;
  if (d->map) munmap((void *)d->map, d->size);
  free(d->path); free(d->off); free(d->len); free(d->lineno);
  free(d);
}

int64_t sft_count(const SftData *d) { return d->n; }
const char *sft_path(const SftData *d) { return d->path; }

void sft_conv_free(SftConv *c) {
  free(c->ids); free(c->train); free(c->text);
  memset(c, 0, sizeof *c);
}

static void conv_push(SftConv *c, int32_t id, uint8_t train) {
  if (c->n == c->cap) {
    c->cap = c->cap ? 2 * c->cap : 256;
    c->ids = t5g_realloc(c->ids, sizeof(int32_t) * c->cap);
    c->train = t5g_realloc(c->train, c->cap);
  }
  c->ids[c->n] = id; c->train[c->n] = train; c->n++;
}

/* Encode the concatenation of np text parts as one piece of text. */
typedef struct { const char *s; size_t n; } Part;
static int conv_text(SftConv *c, SftEncoder enc, uint8_t train, const Part *parts, int np) {
  size_t n = 0;
  for (int i = 0; i < np; i++) n += parts[i].n;
  if (n == 0) return 0;
  if (n + 1 > c->text_cap) {
    c->text_cap = n + 1 > 2 * c->text_cap ? n + 1 : 2 * c->text_cap;
    c->text = t5g_realloc(c->text, c->text_cap);
  }
  size_t o = 0;
  for (int i = 0; i < np; i++) { if (parts[i].n) memcpy(c->text + o, parts[i].s, parts[i].n); o += parts[i].n; }
  c->text[n] = 0;
  int32_t *ids = NULL;
  int64_t m = 0;
  if (enc.encode(enc.ctx, c->text, n, &ids, &m) < 0) return -1;
  for (int64_t i = 0; i < m; i++) conv_push(c, ids[i], train);
  free(ids);
  return 0;
}

int sft_render(const SftData *d, int64_t index, SftEncoder enc, const ObjSpecials *sp,
               int eos_after_eot, SftConv *out) {
  if (index < 0 || index >= d->n)
    return t5g_error("SFT: %s: example %lld out of range [0, %lld)", d->path, (long long)index,
                     (long long)d->n);
  cJSON *root = NULL;
  Turn *turns = NULL;
  int tcap = 0;
  int nt = parse_conv(d->path, d->lineno[index], d->map + d->off[index], (size_t)d->len[index],
                      &root, &turns, &tcap);
  int rc = nt < 0 ? -1 : 0;
  out->n = 0; out->prompt_len = 0;
  if (rc == 0) conv_push(out, sp->bos, 0);
  for (int i = 0; i < nt && rc == 0; i++) {
    const Turn *t = &turns[i];
    int last = i == nt - 1;
    conv_push(out, sp->start_of_turn, 0);
    if (t->role == ROLE_USER) {
      /* "user\n" [system "\n\n"] content: one piece of text between two special tokens */
      Part parts[4] = { { "user\n", 5 }, { t->prefix, t->prefix ? t->plen : 0 },
                        { "\n\n", t->prefix ? 2 : 0 }, { t->text, t->len } };
      rc = conv_text(out, enc, 0, parts, 4);
      if (rc == 0) conv_push(out, sp->end_of_turn, 0);
      if (rc == 0) rc = conv_text(out, enc, 0, &(Part){ "\n", 1 }, 1);
    } else {
      uint8_t tr = last ? 2 : 1;
      rc = conv_text(out, enc, 0, &(Part){ "model\n", 6 }, 1);
      if (last) out->prompt_len = out->n;
      if (rc == 0) rc = conv_text(out, enc, tr, &(Part){ t->text, t->len }, 1);
      if (rc == 0) conv_push(out, sp->end_of_turn, tr);
      if (rc == 0 && last && eos_after_eot) conv_push(out, sp->eos, 2);
      if (rc == 0 && !last) rc = conv_text(out, enc, 0, &(Part){ "\n", 1 }, 1);
    }
  }
  cJSON_Delete(root);
  free(turns);
  return rc;
}
