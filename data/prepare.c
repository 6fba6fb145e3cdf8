/* prepare.c: `t5gemma data` (train/commands.h): prepare / inspect / verify token-shard datasets
 * (format: docs/data-format.md, data/shards.h).
 *
 *   t5gemma data prepare --tokenizer PATH --out DIR [options] FILES...
 *     Reads documents from FILES (plain text, JSONL, or lines of token ids), tokenizes them in
 *     parallel (OpenMP, --threads N; the output does not depend on the thread count), splits them
 *     into train/val by a seeded hash of the document index, and writes zstd-compressed shards
 *     plus index.json. Progress on stderr, a summary on stdout.
 *   t5gemma data inspect DIR [--split S] [--doc I] [--tokenizer PATH]
 *   t5gemma data verify DIR
 */
#define _GNU_SOURCE
#include "data/shards.h"
#include "data/tokenizer.h"
#include "model/util.h"
#include "model/rng.h"
#include "model/runtime.h"
#include "train/commands.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { FMT_TEXT, FMT_JSONL, FMT_TOKENS };
enum { SEP_BLANK, SEP_LINE, SEP_FILE };

/* ------------------------------------------------------------------ document input */

typedef struct DocIn {
  int fmt, sep;
  const char *field;
  const char **files; int nfiles, fi;
  FILE *f;
  char *line; size_t lcap;
  int64_t lineno;
  int64_t bytes_before;          /* sizes of the files already finished */
  char *acc; size_t nacc, cacc;  /* text of the document being assembled (blank-line mode) */
  int64_t acc_line;
  int done_file;                 /* SEP_FILE: the current file was returned */
} DocIn;

static const char *in_name(const DocIn *d) { return strcmp(d->files[d->fi], "-") == 0 ? "<stdin>" : d->files[d->fi]; }

static void acc_put(DocIn *d, const char *s, size_t n) {
  if (d->nacc + n + 1 > d->cacc) {
    size_t c = d->cacc ? d->cacc : 4096;
    while (c < d->nacc + n + 1) c *= 2;
    d->acc = t5g_realloc(d->acc, c); d->cacc = c;
  }
  memcpy(d->acc + d->nacc, s, n); d->nacc += n; d->acc[d->nacc] = 0;
}
static int is_blank(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return 0;
  return 1;
}
static int64_t in_pos(const DocIn *d) {
  int64_t p = d->bytes_before;
  if (d->f && d->f != stdin) { off_t o = ftello(d->f); if (o > 0) p += o; }
  return p;
}

/* Next document: *text (malloc'ed, NUL-terminated; for FMT_TOKENS the line of ids) of *len
 * bytes, from file *file at line *line. Empty documents are skipped (*skipped counts them).
 * Returns 1, 0 at the end of the input, -1 with t5g_error() naming file and line. */
static int docin_next(DocIn *d, char **text, size_t *len, int *file, int64_t *line, int64_t *skipped) {
  for (;;) {
    if (!d->f) {
      if (d->fi >= d->nfiles) return 0;
      const char *nm = d->files[d->fi];
      d->f = strcmp(nm, "-") == 0 ? stdin : fopen(nm, "rb");
      if (!d->f) return t5g_error("%s: cannot open: %s", nm, strerror(errno));
      d->lineno = 0; d->nacc = 0; d->done_file = 0;
    }
    if (d->sep == SEP_FILE && d->fmt == FMT_TEXT) {
      /* the whole file is one document */
      char buf[1 << 16]; size_t k;
      while ((k = fread(buf, 1, sizeof buf, d->f)) > 0) acc_put(d, buf, k);
      if (ferror(d->f)) return t5g_error("%s: read error: %s", in_name(d), strerror(errno));
    } else {
      ssize_t got = getline(&d->line, &d->lcap, d->f);
      if (got >= 0) {
        d->lineno++;
        size_t n = (size_t)got;
        if (d->fmt == FMT_TEXT && d->sep == SEP_BLANK) {
          if (is_blank(d->line, n)) {
            if (d->nacc == 0) continue;
            goto emit_acc;
          }
          if (d->nacc == 0) d->acc_line = d->lineno;
          acc_put(d, d->line, n);
          continue;
        }
        if (n && d->line[n - 1] == '\n') d->line[--n] = 0;
        if (d->fmt == FMT_TEXT) {             /* SEP_LINE: every non-empty line */
          if (n == 0) { (*skipped)++; continue; }
          *text = t5g_strdup(d->line); *len = n; *file = d->fi; *line = d->lineno;
          return 1;
        }
        if (is_blank(d->line, n)) continue;   /* blank JSONL / token lines separate nothing */
        if (d->fmt == FMT_TOKENS) {
          *text = t5g_strdup(d->line); *len = n; *file = d->fi; *line = d->lineno;
          return 1;
        }
        cJSON *obj = cJSON_ParseWithLength(d->line, n);
        if (!obj || !cJSON_IsObject(obj)) {
          cJSON_Delete(obj);
          return t5g_error("%s:%lld: malformed JSON line (expected an object with a string field \"%s\")", in_name(d), (long long)d->lineno, d->field);
        }
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, d->field);
        if (!cJSON_IsString(v)) {
          int missing = v == NULL;
          cJSON_Delete(obj);
          return t5g_error("%s:%lld: field \"%s\" %s", in_name(d), (long long)d->lineno, d->field, missing ? "is missing" : "is not a string");
        }
        size_t sl = strlen(v->valuestring);
        if (sl == 0) { cJSON_Delete(obj); (*skipped)++; continue; }
        *text = t5g_strdup(v->valuestring); *len = sl; *file = d->fi; *line = d->lineno;
        cJSON_Delete(obj);
        return 1;
      }
      if (ferror(d->f)) return t5g_error("%s: read error: %s", in_name(d), strerror(errno));
    }
    /* end of this file */
    if ((d->nacc > 0 || (d->sep == SEP_FILE && d->fmt == FMT_TEXT)) && !d->done_file) goto emit_acc;
    if (d->f != stdin) { d->bytes_before += ftello(d->f) > 0 ? ftello(d->f) : 0; fclose(d->f); }
    d->f = NULL; d->fi++;
    continue;
  emit_acc:
    /* blank-line mode: drop the last line's newline; file mode: the file's bytes as they are */
    if (d->sep == SEP_BLANK) { while (d->nacc && (d->acc[d->nacc - 1] == '\n' || d->acc[d->nacc - 1] == '\r')) d->acc[--d->nacc] = 0; }
    else { d->done_file = 1; d->acc_line = 1; }
    if (d->nacc == 0 || (d->sep == SEP_FILE && is_blank(d->acc, d->nacc))) { (*skipped)++; d->nacc = 0; continue; }
    *text = t5g_malloc(d->nacc + 1); memcpy(*text, d->acc, d->nacc + 1);
    *len = d->nacc; *file = d->fi; *line = d->acc_line;
    d->nacc = 0;
    return 1;
  }
}

static void docin_close(DocIn *d) {
  if (d->f && d->f != stdin) fclose(d->f);
  d->f = NULL;
  free(d->line); free(d->acc);
  d->line = d->acc = NULL;
}

/* ------------------------------------------------------------------ train / val split */

/* Key of input document i: a seeded 64-bit hash. A document goes to val when its key is below
 * val_fraction * 2^64 (--val-fraction), or when it is among the N smallest keys (--val-docs N). */
static uint64_t doc_key(uint64_t seed, uint64_t i) { return splitmix64(seed ^ splitmix64(i ^ 0x7f4a7c15d1b54a32ULL)); }

/* Max-heap of the N smallest (key, index) pairs seen. */
typedef struct { uint64_t key; int64_t idx; } KeyIdx;
static void heap_down(KeyIdx *h, int64_t n, int64_t i) {
  for (;;) {
    int64_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < n && h[l].key > h[m].key) m = l;
    if (r < n && h[r].key > h[m].key) m = r;
    if (m == i) return;
    KeyIdx t = h[i]; h[i] = h[m]; h[m] = t; i = m;
  }
}
static void heap_up(KeyIdx *h, int64_t i) {
  while (i > 0) { int64_t p = (i - 1) / 2; if (h[p].key >= h[i].key) return; KeyIdx t = h[i]; h[i] = h[p]; h[p] = t; i = p; }
}
static int cmp_i64(const void *a, const void *b) { int64_t x = *(const int64_t *)a, y = *(const int64_t *)b; return x < y ? -1 : x > y; }

/* ------------------------------------------------------------------ prepare */

typedef struct Item { char *text; size_t len; int file; int64_t line; int32_t *ids; int64_t n; char *err; } Item;

typedef struct PrepCfg {
  const Tokenizer *tok;
  int fmt;
  int bos, eos, parse_special;
  int32_t bos_id, eos_id;
  int64_t vocab;
  const char **files;
} PrepCfg;

static void parse_token_line(const PrepCfg *c, Item *it) {
  int64_t cap = 16, n = 0;
  int32_t *ids = t5g_malloc(cap * 4);
  if (c->bos) ids[n++] = c->bos_id;
  const char *p = it->text, *end = it->text + it->len;
  int64_t k = 0;
  char msg[600];
  while (p < end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == ',')) p++;
    if (p >= end) break;
    const char *s = p;
    int64_t v = 0; int ok = 1;
    while (p < end && *p != ' ' && *p != '\t' && *p != '\r' && *p != ',') {
      if (*p < '0' || *p > '9' || v > INT32_MAX) ok = 0; else v = v * 10 + (*p - '0');
      p++;
    }
    k++;
    if (!ok || v > INT32_MAX) {
      snprintf(msg, sizeof msg, "%s:%lld: token %lld \"%.*s\": expected a non-negative integer id", c->files[it->file], (long long)it->line,
               (long long)k, (int)(p - s > 40 ? 40 : p - s), s);
      it->err = t5g_strdup(msg); free(ids); return;
    }
    if (v >= c->vocab) {
      snprintf(msg, sizeof msg, "%s:%lld: token %lld is id %lld, outside the vocabulary [0, %lld)", c->files[it->file], (long long)it->line,
               (long long)k, (long long)v, (long long)c->vocab);
      it->err = t5g_strdup(msg); free(ids); return;
    }
    if (n + 2 > cap) { cap *= 2; ids = t5g_realloc(ids, cap * 4); }
    ids[n++] = (int32_t)v;
  }
  if (c->eos) ids[n++] = c->eos_id;
  it->ids = ids; it->n = n;
}

static void tokenize_item(const PrepCfg *c, Item *it) {
  if (c->fmt == FMT_TOKENS) { parse_token_line(c, it); return; }
  if (tokenizer_encode(c->tok, it->text, it->len, c->bos, c->eos, c->parse_special, &it->ids, &it->n) != 0) {
    char msg[2300];
    snprintf(msg, sizeof msg, "%s:%lld: %s", c->files[it->file], (long long)it->line, t5g_last_error());
    it->err = t5g_strdup(msg); it->ids = NULL; return;
  }
  for (int64_t i = 0; i < it->n; i++)
    if (it->ids[i] < 0 || it->ids[i] >= c->vocab) {
      char msg[600];
      snprintf(msg, sizeof msg, "%s:%lld: the tokenizer produced id %d, outside its vocabulary [0, %lld)", c->files[it->file], (long long)it->line, it->ids[i], (long long)c->vocab);
      it->err = t5g_strdup(msg); free(it->ids); it->ids = NULL; return;
    }
}

static void prepare_usage(FILE *f) {
  fprintf(f,
    "usage: t5gemma data prepare --tokenizer PATH --out DIR [options] FILES...\n"
    "\n"
    "Tokenize documents into a sharded, zstd-compressed token dataset (docs/data-format.md).\n"
    "  --tokenizer PATH       tokenizer.json / tokenizer.model / directory (its hash, vocabulary\n"
    "                         size and <bos>/<eos>/<pad> ids are recorded in index.json)\n"
    "  --out DIR              output directory (created; refuses a DIR holding index.json unless --force)\n"
    "  --format F             text (default) | jsonl | tokens (lines of space-separated ids)\n"
    "  --doc-sep S            text documents are separated by: blank-line (default) | line | file\n"
    "  --field NAME           jsonl: the string field holding the document (default text)\n"
    "  --bos                  prepend <bos> to every document (default off)\n"
    "  --eos / --no-eos       append <eos> to every document (default off: the training objectives\n"
    "                         add <bos>/<eos> around each document themselves, data/objectives.h)\n"
    "  --parse-special        special-token strings in the text become their ids\n"
    "  --val-fraction F       fraction of documents for the val split (default 0.01)\n"
    "  --val-docs N           exactly N documents for the val split (reads the input twice)\n"
    "  --seed S               seed of the train/val assignment (default 0)\n"
    "  --shard-tokens N       tokens per shard (default 50000000)\n"
    "  --frame-tokens N       tokens per zstd frame, the unit of random access (default 65536)\n"
    "  --level L              zstd level (default 3)\n"
    "  --vocab-size N         --format tokens without --tokenizer: the vocabulary size\n"
    "  --bos-id/--eos-id/--pad-id I  --format tokens without --tokenizer: the special ids\n"
    "  --threads N            tokenizer threads (default: all cores)\n"
    "  --force                overwrite an existing dataset in DIR (its shards are removed)\n"
    "FILES may include \"-\" for standard input (not with --val-docs).\n");
}

static int parse_i64(const char *s, int64_t *v, int64_t lo, int64_t hi, const char *opt) {
  char *e; errno = 0;
  long long x = strtoll(s, &e, 10);
  if (errno || e == s || *e || x < lo || x > hi) return t5g_error("%s: expected an integer in [%lld, %lld], found \"%s\"", opt, (long long)lo, (long long)hi, s);
  *v = x;
  return 0;
}

/* Remove index.json and "<split>-NNNNN.tks" files of an old dataset in dir. */
static int remove_old_dataset(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  struct dirent *de;
  int rc = 0;
  while ((de = readdir(d))) {
    size_t n = strlen(de->d_name);
    int shard = n > 10 && strcmp(de->d_name + n - 4, ".tks") == 0 && de->d_name[n - 10] == '-';
    if (shard || strcmp(de->d_name, "index.json") == 0) {
      char *p = t5g_path_join(dir, de->d_name);
      if (unlink(p) != 0) rc = t5g_error("%s: cannot remove: %s", p, strerror(errno));
      free(p);
    }
  }
  closedir(d);
  return rc;
}

static int data_prepare(int argc, char **argv) {
  const char *tok_path = NULL, *out = NULL, *field = "text";
  int fmt = FMT_TEXT, sep = SEP_BLANK, bos = 0, eos = 0, parse_special = 0, force = 0;
  double val_fraction = 0.01; int64_t val_docs = -1;
  int64_t seed = 0, vocab_opt = -1, bos_id = -1, eos_id = -1, pad_id = -1;
  ShardWriterOpts wo = shard_writer_default_opts();
  const char **files = t5g_calloc((size_t)argc + 1, sizeof(char *));
  int nfiles = 0, rc = 1;
  int64_t tmp;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEEDV() do { if (!v) { fprintf(stderr, "t5gemma data prepare: option %s needs a value\n\n", a); prepare_usage(stderr); free(files); return 2; } i++; } while (0)
#define NUM(var, lo, hi) do { NEEDV(); if (parse_i64(v, &tmp, lo, hi, a)) goto usage_err; var = tmp; } while (0)
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) { prepare_usage(stdout); free(files); return 0; }
    else if (!strcmp(a, "--tokenizer")) { NEEDV(); tok_path = v; }
    else if (!strcmp(a, "--out")) { NEEDV(); out = v; }
    else if (!strcmp(a, "--field")) { NEEDV(); field = v; }
    else if (!strcmp(a, "--format")) {
      NEEDV();
      if (!strcmp(v, "text")) fmt = FMT_TEXT; else if (!strcmp(v, "jsonl")) fmt = FMT_JSONL; else if (!strcmp(v, "tokens")) fmt = FMT_TOKENS;
      else { t5g_error("--format: expected text, jsonl or tokens, found \"%s\"", v); goto usage_err; }
    } else if (!strcmp(a, "--doc-sep")) {
      NEEDV();
      if (!strcmp(v, "blank-line")) sep = SEP_BLANK; else if (!strcmp(v, "line")) sep = SEP_LINE; else if (!strcmp(v, "file")) sep = SEP_FILE;
      else { t5g_error("--doc-sep: expected blank-line, line or file, found \"%s\"", v); goto usage_err; }
    }
    else if (!strcmp(a, "--bos")) bos = 1;
    else if (!strcmp(a, "--eos")) eos = 1;
    else if (!strcmp(a, "--no-eos")) eos = 0;
    else if (!strcmp(a, "--parse-special")) parse_special = 1;
    else if (!strcmp(a, "--force")) force = 1;
    else if (!strcmp(a, "--val-fraction")) {
      NEEDV(); char *e; val_fraction = strtod(v, &e);
      if (e == v || *e || !(val_fraction >= 0 && val_fraction < 1)) { t5g_error("--val-fraction: expected a number in [0, 1), found \"%s\"", v); goto usage_err; }
    }
    else if (!strcmp(a, "--val-docs")) NUM(val_docs, 0, INT64_MAX);
    else if (!strcmp(a, "--seed")) NUM(seed, 0, INT64_MAX);
    else if (!strcmp(a, "--shard-tokens")) NUM(wo.shard_tokens, 1, INT64_MAX);
    else if (!strcmp(a, "--frame-tokens")) NUM(wo.frame_tokens, 1, 1 << 28);
    else if (!strcmp(a, "--level")) NUM(wo.level, -7, 22);
    else if (!strcmp(a, "--vocab-size")) NUM(vocab_opt, 1, INT32_MAX);
    else if (!strcmp(a, "--bos-id")) NUM(bos_id, 0, INT32_MAX - 1);
    else if (!strcmp(a, "--eos-id")) NUM(eos_id, 0, INT32_MAX - 1);
    else if (!strcmp(a, "--pad-id")) NUM(pad_id, 0, INT32_MAX - 1);
    else if (a[0] == '-' && a[1]) { t5g_error("unknown option '%s'", a); goto usage_err; }
    else files[nfiles++] = a;
#undef NUM
#undef NEEDV
  }
  if (!out) { t5g_error("--out DIR is required"); goto usage_err; }
  if (nfiles == 0) { t5g_error("no input FILES given"); goto usage_err; }
  if (!tok_path && !(fmt == FMT_TOKENS && vocab_opt > 0)) { t5g_error("--tokenizer PATH is required (or --format tokens with --vocab-size N)"); goto usage_err; }
  if (val_docs >= 0) for (int i = 0; i < nfiles; i++) if (!strcmp(files[i], "-")) { t5g_error("--val-docs reads the input twice: standard input (\"-\") cannot be used"); goto usage_err; }
  for (int i = 0; i < nfiles; i++)
    if (strcmp(files[i], "-") && access(files[i], R_OK) != 0) { fprintf(stderr, "t5gemma data prepare: %s: cannot read: %s\n", files[i], strerror(errno)); free(files); return 1; }

  Tokenizer *tok = NULL;
  ShardTokenizerInfo ti; memset(&ti, 0, sizeof ti);
  ti.bos_id = ti.eos_id = ti.pad_id = -1;
  if (tok_path) {
    tok = tokenizer_load(tok_path);
    if (!tok) { fprintf(stderr, "t5gemma data prepare: %s\n", t5g_last_error()); free(files); return 1; }
    const char *tp = tokenizer_path(tok) ? tokenizer_path(tok) : tok_path;
    const char *base = strrchr(tp, '/');
    snprintf(ti.name, sizeof ti.name, "%s", base && base[1] ? base + 1 : tp);
    ti.hash = tokenizer_hash(tok);
    ti.vocab_size = tokenizer_vocab_size(tok);
    TokenizerSpecials sp = tokenizer_specials(tok);
    ti.bos_id = sp.bos; ti.eos_id = sp.eos; ti.pad_id = sp.pad;
    if (vocab_opt > 0 && vocab_opt != ti.vocab_size) { fprintf(stderr, "t5gemma data prepare: --vocab-size %lld differs from the tokenizer's %lld\n", (long long)vocab_opt, (long long)ti.vocab_size); goto done; }
  } else {
    snprintf(ti.name, sizeof ti.name, "%s", "");
    ti.hash = 0; ti.vocab_size = vocab_opt;
    ti.bos_id = (int32_t)bos_id; ti.eos_id = (int32_t)eos_id; ti.pad_id = (int32_t)pad_id;
  }
  if (fmt == FMT_TOKENS && ((bos && ti.bos_id < 0) || (eos && ti.eos_id < 0))) {
    fprintf(stderr, "t5gemma data prepare: --%s needs the %s id: give --tokenizer, --%s-id, or %s\n", eos && ti.eos_id < 0 ? "eos" : "bos",
            eos && ti.eos_id < 0 ? "<eos>" : "<bos>", eos && ti.eos_id < 0 ? "eos" : "bos", eos && ti.eos_id < 0 ? "--no-eos" : "drop --bos");
    goto done;
  }
  if ((ti.bos_id >= ti.vocab_size) || (ti.eos_id >= ti.vocab_size) || (ti.pad_id >= ti.vocab_size)) {
    fprintf(stderr, "t5gemma data prepare: special ids (bos %d, eos %d, pad %d) must be below the vocabulary size %lld\n", ti.bos_id, ti.eos_id, ti.pad_id, (long long)ti.vocab_size);
    goto done;
  }

  char *ixp = t5g_path_join(out, "index.json");
  int exists = t5g_file_exists(ixp);
  free(ixp);
  if (exists && !force) { fprintf(stderr, "t5gemma data prepare: %s already holds a dataset (index.json); use --force to replace it\n", out); goto done; }
  if (exists && remove_old_dataset(out) != 0) { fprintf(stderr, "t5gemma data prepare: %s\n", t5g_last_error()); goto done; }

  /* total input size for progress */
  int64_t total_bytes = 0;
  for (int i = 0; i < nfiles; i++) { struct stat st; if (strcmp(files[i], "-") && stat(files[i], &st) == 0) total_bytes += st.st_size; }

  /* --val-docs: first pass counts the documents and picks the N with the smallest keys */
  int64_t *val_set = NULL, n_val_set = 0;
  if (val_docs >= 0) {
    DocIn d = {.fmt = fmt, .sep = sep, .field = field, .files = files, .nfiles = nfiles};
    KeyIdx *heap = t5g_malloc((size_t)(val_docs > 0 ? val_docs : 1) * sizeof *heap);
    int64_t nh = 0, count = 0, skipped = 0;
    char *text; size_t len; int fi; int64_t ln; int r;
    while ((r = docin_next(&d, &text, &len, &fi, &ln, &skipped)) == 1) {
      free(text);
      KeyIdx k = {doc_key((uint64_t)seed, (uint64_t)count), count};
      count++;
      if (val_docs == 0) continue;
      if (nh < val_docs) { heap[nh] = k; heap_up(heap, nh); nh++; }
      else if (k.key < heap[0].key) { heap[0] = k; heap_down(heap, nh, 0); }
    }
    docin_close(&d);
    if (r < 0) { fprintf(stderr, "t5gemma data prepare: %s\n", t5g_last_error()); free(heap); goto done; }
    if (val_docs >= count && count > 0) { fprintf(stderr, "t5gemma data prepare: --val-docs %lld leaves no training documents (the input holds %lld)\n", (long long)val_docs, (long long)count); free(heap); goto done; }
    val_set = t5g_malloc((size_t)(nh ? nh : 1) * sizeof *val_set);
    for (int64_t i = 0; i < nh; i++) val_set[i] = heap[i].idx;
    qsort(val_set, (size_t)nh, sizeof *val_set, cmp_i64);
    n_val_set = nh;
    free(heap);
  }
  uint64_t val_threshold = (uint64_t)(val_fraction * 18446744073709551616.0);
  if (val_fraction <= 0) val_threshold = 0;

  const char *splits[] = {"train", "val"};
  DatasetWriter *w = dataset_writer_open(out, splits, 2, &ti, &wo);
  if (!w) { fprintf(stderr, "t5gemma data prepare: %s\n", t5g_last_error()); free(val_set); goto done; }

  PrepCfg cfg = {.tok = tok, .fmt = fmt, .bos = bos, .eos = eos, .parse_special = parse_special,
                 .bos_id = ti.bos_id, .eos_id = ti.eos_id, .vocab = ti.vocab_size, .files = files};
  DocIn d = {.fmt = fmt, .sep = sep, .field = field, .files = files, .nfiles = nfiles};
  const int max_items = 4096; const size_t max_batch_bytes = 16u << 20;
  Item *items = t5g_calloc(max_items, sizeof *items);
  int64_t ndocs = 0, skipped = 0, split_docs[2] = {0, 0}, split_tokens[2] = {0, 0}, in_bytes = 0;
  int threads = t5g_threads();
  double t0 = t5g_now(), last = t0;
  int is_tty = isatty(2);
  int failed = 0, end = 0;
  while (!end && !failed) {
    int nb = 0; size_t bb = 0;
    while (nb < max_items && bb < max_batch_bytes) {
      int r = docin_next(&d, &items[nb].text, &items[nb].len, &items[nb].file, &items[nb].line, &skipped);
      if (r < 0) { fprintf(stderr, "\nt5gemma data prepare: %s\n", t5g_last_error()); failed = 1; break; }
      if (r == 0) { end = 1; break; }
      bb += items[nb].len; nb++;
    }
    if (failed) { for (int i = 0; i < nb; i++) free(items[i].text); break; }
    /* tokenize in parallel; the results are consumed below in input order */
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int i = 0; i < nb; i++) tokenize_item(&cfg, &items[i]);
    for (int i = 0; i < nb; i++) {
      Item *it = &items[i];
      if (!failed) {
        if (it->err) { fprintf(stderr, "\nt5gemma data prepare: %s\n", it->err); failed = 1; }
        else if (it->n == 0) skipped++;
        else {
          int64_t idx = ndocs++;
          int split = val_set ? bsearch(&idx, val_set, (size_t)n_val_set, sizeof *val_set, cmp_i64) != NULL
                              : doc_key((uint64_t)seed, (uint64_t)idx) < val_threshold;
          if (dataset_writer_add(w, split, it->ids, it->n) != 0) { fprintf(stderr, "\nt5gemma data prepare: %s\n", t5g_last_error()); failed = 1; }
          split_docs[split]++; split_tokens[split] += it->n;
          in_bytes += (int64_t)it->len;
        }
      }
      free(it->text); free(it->ids); free(it->err);
      memset(it, 0, sizeof *it);
    }
    double now = t5g_now();
    if (!failed && (now - last >= (is_tty ? 0.5 : 5.0) || end)) {
      last = now;
      char b1[32], b2[32];
      int64_t pos = in_pos(&d);
      if (end) pos = total_bytes;
      fprintf(stderr, "%sprepare: %s of %s read, %lld documents, %lld tokens, %.0f tokens/s%s", is_tty ? "\r" : "",
              t5g_fmt_bytes((double)pos, b1, sizeof b1), t5g_fmt_bytes((double)total_bytes, b2, sizeof b2), (long long)ndocs,
              (long long)(split_tokens[0] + split_tokens[1]), (split_tokens[0] + split_tokens[1]) / (now - t0 + 1e-9), is_tty ? (end ? "\n" : "") : "\n");
    }
  }
  docin_close(&d);
  free(items);
  if (failed) { dataset_writer_abort(w); free(val_set); goto done; }

  /* index.json "source": how the dataset was made */
  cJSON *src = cJSON_CreateObject();
  cJSON_AddStringToObject(src, "command", "t5gemma data prepare");
  cJSON_AddStringToObject(src, "format", fmt == FMT_TEXT ? "text" : fmt == FMT_JSONL ? "jsonl" : "tokens");
  if (fmt == FMT_TEXT) cJSON_AddStringToObject(src, "doc_sep", sep == SEP_BLANK ? "blank-line" : sep == SEP_LINE ? "line" : "file");
  if (fmt == FMT_JSONL) cJSON_AddStringToObject(src, "field", field);
  cJSON *fa = cJSON_AddArrayToObject(src, "files");
  for (int i = 0; i < nfiles; i++) cJSON_AddItemToArray(fa, cJSON_CreateString(files[i]));
  cJSON_AddBoolToObject(src, "bos", bos);
  cJSON_AddBoolToObject(src, "eos", eos);
  cJSON_AddBoolToObject(src, "parse_special", parse_special);
  cJSON_AddNumberToObject(src, "seed", (double)seed);
  if (val_set) cJSON_AddNumberToObject(src, "val_docs", (double)val_docs); else cJSON_AddNumberToObject(src, "val_fraction", val_fraction);
  cJSON_AddNumberToObject(src, "input_bytes", (double)in_bytes);
  cJSON_AddNumberToObject(src, "skipped_empty_documents", (double)skipped);
  char *sj = cJSON_PrintUnformatted(src);
  cJSON_Delete(src);
  dataset_writer_set_source(w, sj);
  free(sj);
  free(val_set);
  if (dataset_writer_finish(w) != 0) { fprintf(stderr, "t5gemma data prepare: %s\n", t5g_last_error()); goto done; }
  double dt = t5g_now() - t0;
  int64_t tt = split_tokens[0] + split_tokens[1];
  /* The compression ratio is read back from the index.json just written (raw uint32 bytes over
   * zstd frame bytes, the figure `data inspect` prints): the writer's running totals miss the
   * frames still open before dataset_writer_finish, which for a dataset smaller than one frame
   * is all of it. */
  DatasetIndex *fix = dataset_index_load(out);
  if (!fix) { fprintf(stderr, "t5gemma data prepare: reading back the index just written: %s\n", t5g_last_error()); goto done; }
  double ratio = fix->compressed_bytes ? (double)fix->raw_bytes / (double)fix->compressed_bytes : 0.0;
  dataset_index_free(fix);
  printf("prepared %s: train %lld documents / %lld tokens, val %lld documents / %lld tokens; %lld empty skipped; compression %.2fx; %.1f s (%.0f tokens/s, %d threads)\n",
         out, (long long)split_docs[0], (long long)split_tokens[0], (long long)split_docs[1], (long long)split_tokens[1], (long long)skipped,
         ratio, dt, tt / (dt + 1e-9), threads);
  if (split_docs[1] == 0) fprintf(stderr, "t5gemma data prepare: note: the val split is empty (use --val-docs N or a larger --val-fraction)\n");
  rc = 0;
done:
  tokenizer_free(tok);
  free(files);
  return rc;
usage_err:
  fprintf(stderr, "t5gemma data prepare: %s\n\n", t5g_last_error());
  prepare_usage(stderr);
  free(files);
  return 2;
}

/* ------------------------------------------------------------------ inspect */

static void inspect_usage(FILE *f) {
  fprintf(f,
    "usage: t5gemma data inspect DIR [--split S] [--doc I]... [--tokenizer PATH]\n"
    "\n"
    "Summary of a token dataset (splits, shards, documents, tokens, compression, tokenizer);\n"
    "with --doc I (may be repeated), document I of split S (default train, stored order) as ids\n"
    "and, with --tokenizer, as text (the tokenizer must be the one the dataset was made with).\n");
}

static int data_inspect(int argc, char **argv) {
  const char *dir = NULL, *split = "train", *tok_path = NULL;
  int64_t *docs = t5g_malloc(((size_t)argc + 1) * sizeof *docs);
  int ndoc = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) { inspect_usage(stdout); free(docs); return 0; }
    else if (!strcmp(a, "--split") && i + 1 < argc) split = argv[++i];
    else if (!strcmp(a, "--tokenizer") && i + 1 < argc) tok_path = argv[++i];
    else if (!strcmp(a, "--doc") && i + 1 < argc) {
      if (parse_i64(argv[++i], &docs[ndoc++], 0, INT64_MAX, "--doc")) { fprintf(stderr, "t5gemma data inspect: %s\n", t5g_last_error()); free(docs); return 2; }
    } else if (a[0] == '-' && a[1]) { fprintf(stderr, "t5gemma data inspect: unknown or incomplete option '%s'\n\n", a); inspect_usage(stderr); free(docs); return 2; }
    else if (!dir) dir = a;
    else { fprintf(stderr, "t5gemma data inspect: more than one DIR given\n\n"); inspect_usage(stderr); free(docs); return 2; }
  }
  if (!dir) { inspect_usage(stderr); free(docs); return 2; }
  DatasetIndex *ix = dataset_index_load(dir);
  if (!ix) { fprintf(stderr, "t5gemma data inspect: %s\n", t5g_last_error()); free(docs); return 1; }
  int split_found = 0;
  for (int i = 0; i < ix->n_splits; i++) split_found |= strcmp(ix->splits[i].name, split) == 0;
  if (!split_found) {   /* checked with or without --doc: a misspelt --split must not pass silently */
    fprintf(stderr, "t5gemma data inspect: %s/index.json: no split \"%s\" (the dataset has ", dir, split);
    for (int i = 0; i < ix->n_splits; i++) fprintf(stderr, "%s\"%s\"", i ? ", " : "", ix->splits[i].name);
    fprintf(stderr, ")\n");
    dataset_index_free(ix); free(docs); return 1;
  }
  char b1[32], b2[32];
  printf("dataset %s: format %s version %d, uint32 token ids, zstd level %d, frames of %lld tokens, shards of %lld tokens\n",
         dir, SHARD_FORMAT_NAME, ix->version, ix->level, (long long)ix->frame_tokens, (long long)ix->shard_tokens);
  printf("tokenizer: %s, hash %016llx, vocab %lld, bos %d, eos %d, pad %d\n", ix->tok.name[0] ? ix->tok.name : "(none: pre-tokenized ids)",
         (unsigned long long)ix->tok.hash, (long long)ix->tok.vocab_size, ix->tok.bos_id, ix->tok.eos_id, ix->tok.pad_id);
  for (int i = 0; i < ix->n_splits; i++) {
    const SplitInfo *sp = &ix->splits[i];
    int64_t frames = 0, bytes = 0;
    for (int k = 0; k < sp->n_shards; k++) { frames += sp->shards[k].frames; bytes += sp->shards[k].bytes; }
    printf("split %s: %d shards, %lld documents, %lld tokens (%.1f per document), %lld frames, raw %s, compressed %s (ratio %.2f), files %lld bytes\n",
           sp->name, sp->n_shards, (long long)sp->documents, (long long)sp->tokens, sp->documents ? (double)sp->tokens / (double)sp->documents : 0.0,
           (long long)frames, t5g_fmt_bytes((double)sp->raw_bytes, b1, sizeof b1), t5g_fmt_bytes((double)sp->compressed_bytes, b2, sizeof b2),
           sp->compressed_bytes ? (double)sp->raw_bytes / (double)sp->compressed_bytes : 0.0, (long long)bytes);
    for (int k = 0; k < sp->n_shards; k++) {
      const ShardInfo *s = &sp->shards[k];
      printf("  %-24s %10lld documents %12lld tokens %8lld frames %12lld bytes  xxh64 %016llx\n", s->file, (long long)s->documents,
             (long long)s->tokens, (long long)s->frames, (long long)s->bytes, (unsigned long long)s->xxh64);
    }
  }
  printf("total: %lld documents, %lld tokens, raw %s, compressed %s (ratio %.2f)\n", (long long)ix->documents, (long long)ix->tokens,
         t5g_fmt_bytes((double)ix->raw_bytes, b1, sizeof b1), t5g_fmt_bytes((double)ix->compressed_bytes, b2, sizeof b2),
         ix->compressed_bytes ? (double)ix->raw_bytes / (double)ix->compressed_bytes : 0.0);
  int rc = 0;
  if (ndoc > 0) {
    ShardReaderOpts o = shard_reader_default_opts(); o.shuffle = 0;
    ShardReader *r = shard_reader_open(dir, split, &o);
    Tokenizer *tok = NULL;
    if (!r) { fprintf(stderr, "t5gemma data inspect: %s\n", t5g_last_error()); rc = 1; }
    else if (tok_path && !(tok = tokenizer_load(tok_path))) { fprintf(stderr, "t5gemma data inspect: %s\n", t5g_last_error()); rc = 1; }
    else if (tok && shard_reader_check_tokenizer(r, tokenizer_hash(tok), tokenizer_vocab_size(tok)) != 0) { fprintf(stderr, "t5gemma data inspect: %s\n", t5g_last_error()); rc = 1; }
    for (int k = 0; k < ndoc && rc == 0; k++) {
      const int32_t *ids; int64_t n;
      if (shard_reader_doc(r, docs[k], &ids, &n) != 0) { fprintf(stderr, "t5gemma data inspect: %s\n", t5g_last_error()); rc = 1; break; }
      printf("document %lld of split %s: %lld tokens\nids:", (long long)docs[k], split, (long long)n);
      for (int64_t j = 0; j < n; j++) printf(" %d", ids[j]);
      printf("\n");
      if (tok) {
        char *text = tokenizer_decode(tok, ids, n, 0);
        printf("text:\n%s\n", text ? text : "(decode failed)");
        free(text);
      }
    }
    tokenizer_free(tok);
    shard_reader_close(r);
  }
  free(docs);
  dataset_index_free(ix);
  return rc;
}

/* ------------------------------------------------------------------ verify / dispatch */

static int data_verify(int argc, char **argv) {
  if (argc != 2 || argv[1][0] == '-') {
    FILE *f = argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) ? stdout : stderr;
    fprintf(f, "usage: t5gemma data verify DIR\n\nChecks every shard against index.json: presence, sizes, file checksums, headers,\n"
               "tables, and every frame decompressed (size, XXH64, ids below the vocabulary size).\n"
               "Prints one line per problem naming the file; exit status 1 when there is any.\n");
    return f == stdout ? 0 : 2;
  }
  const char *dir = argv[1];
  int n = dataset_verify(dir, stdout, stderr);
  if (n < 0) { fprintf(stderr, "t5gemma data verify: %s\n", t5g_last_error()); return 1; }
  if (n > 0) { printf("%s: %d problem%s\n", dir, n, n == 1 ? "" : "s"); return 1; }
  DatasetIndex *ix = dataset_index_load(dir);
  int shards = 0;
  for (int i = 0; ix && i < ix->n_splits; i++) shards += ix->splits[i].n_shards;
  printf("%s: ok (%d shards, %lld documents, %lld tokens verified)\n", dir, shards, ix ? (long long)ix->documents : 0LL, ix ? (long long)ix->tokens : 0LL);
  dataset_index_free(ix);
  return 0;
}

static void data_usage(FILE *f) {
  fprintf(f,
    "usage: t5gemma data SUBCOMMAND ...\n"
    "\n"
    "  prepare   text / JSONL / token-id files -> sharded zstd token dataset (train + val)\n"
    "  inspect   summary of a dataset; decode one document\n"
    "  verify    check every shard against index.json (sizes, checksums, every frame)\n"
    "\n`t5gemma data SUBCOMMAND --help` shows its options. Format: docs/data-format.md.\n");
}

int cmd_data(int argc, char **argv) {
  if (argc < 2) { data_usage(stderr); return 2; }
  const char *sub = argv[1];
  if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) { data_usage(stdout); return 0; }
  if (!strcmp(sub, "prepare")) return data_prepare(argc - 1, argv + 1);
  if (!strcmp(sub, "inspect")) return data_inspect(argc - 1, argv + 1);
  if (!strcmp(sub, "verify")) return data_verify(argc - 1, argv + 1);
  fprintf(stderr, "t5gemma data: unknown subcommand '%s'\n\n", sub);
  data_usage(stderr);
  return 2;
}
