/* shards.c: the token-shard format (writer, index, validation, verifier, reader with shuffling,
 * rank splitting, resume and a prefetch thread). Layout: docs/data-format.md; design notes in
 * data/shards.h. */
#include "data/shards.h"
#include "model/util.h"
#include "model/rng.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the shard format stores little-endian uint32 tokens; this file assumes a little-endian host"
#endif

static const char SHARD_MAGIC[8] = {'T', '5', 'G', 'T', 'O', 'K', 'S', 0};
static const char SHARD_END_MAGIC[8] = {'T', '5', 'G', 'T', 'E', 'N', 'D', 0};
#define SHARD_DTYPE_U32 1

/* ------------------------------------------------------------------ little-endian helpers */

static void put_u32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put_u64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get_u32(const uint8_t *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = (v << 8) | p[i]; return v; }
static uint64_t get_u64(const uint8_t *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = (v << 8) | p[i]; return v; }

/* ------------------------------------------------------------------ XXH64 */
/* Implemented from the xxHash specification (doc/xxhash_spec.md, "XXH64 algorithm"): four
 * accumulators over 32-byte stripes, merge, tail of 8/4/1-byte lanes, avalanche. Checked in
 * tests/test_shards.c against the 32-bit content checksums libzstd writes (low half of
 * XXH64(content, 0)). */
#define XP1 0x9E3779B185EBCA87ULL
#define XP2 0xC2B2AE3D27D4EB4FULL
#define XP3 0x165667B19E3779F9ULL
#define XP4 0x85EBCA77C2B2AE63ULL
#define XP5 0x27D4EB2F165667C5ULL
static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t xxh_round(uint64_t acc, uint64_t lane) { acc += lane * XP2; acc = rotl64(acc, 31); return acc * XP1; }
static inline uint64_t xxh_merge(uint64_t acc, uint64_t v) { acc ^= xxh_round(0, v); return acc * XP1 + XP4; }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static uint64_t xxh_finish(uint64_t acc, const uint8_t *p, size_t n) {
  while (n >= 8) { acc ^= xxh_round(0, rd64(p)); acc = rotl64(acc, 27) * XP1 + XP4; p += 8; n -= 8; }
  if (n >= 4) { acc ^= (uint64_t)rd32(p) * XP1; acc = rotl64(acc, 23) * XP2 + XP3; p += 4; n -= 4; }
  while (n > 0) { acc ^= (uint64_t)(*p) * XP5; acc = rotl64(acc, 11) * XP1; p++; n--; }
  acc ^= acc >> 33; acc *= XP2; acc ^= acc >> 29; acc *= XP3; acc ^= acc >> 32;
  return acc;
}
static uint64_t xxh_converge(const uint64_t v[4]) {
  uint64_t acc = rotl64(v[0], 1) + rotl64(v[1], 7) + rotl64(v[2], 12) + rotl64(v[3], 18);
  for (int i = 0; i < 4; i++) acc = xxh_merge(acc, v[i]);
  return acc;
}
void t5g_xxh64_init(Xxh64State *s, uint64_t seed) {
  memset(s, 0, sizeof *s);
  s->seed = seed;
  s->v[0] = seed + XP1 + XP2; s->v[1] = seed + XP2; s->v[2] = seed; s->v[3] = seed - XP1;
}
static inline void xxh_stripe(uint64_t v[4], const uint8_t *p) {
  v[0] = xxh_round(v[0], rd64(p)); v[1] = xxh_round(v[1], rd64(p + 8));
  v[2] = xxh_round(v[2], rd64(p + 16)); v[3] = xxh_round(v[3], rd64(p + 24));
}
void t5g_xxh64_update(Xxh64State *s, const void *data, size_t n) {
  const uint8_t *p = data;
  s->total += n;
  if (s->nbuf) {
    size_t take = 32 - s->nbuf < n ? 32 - s->nbuf : n;
    memcpy(s->buf + s->nbuf, p, take); s->nbuf += (uint32_t)take; p += take; n -= take;
    if (s->nbuf < 32) return;
    xxh_stripe(s->v, s->buf); s->nbuf = 0;
  }
  while (n >= 32) { xxh_stripe(s->v, p); p += 32; n -= 32; }
  if (n) { memcpy(s->buf, p, n); s->nbuf = (uint32_t)n; }
}
uint64_t t5g_xxh64_digest(const Xxh64State *s) {
  uint64_t acc = s->total >= 32 ? xxh_converge(s->v) : s->seed + XP5;
  acc += s->total;
  return xxh_finish(acc, s->buf, s->nbuf);
}
uint64_t t5g_xxh64(const void *data, size_t n, uint64_t seed) {
  Xxh64State s; t5g_xxh64_init(&s, seed);
  const uint8_t *p = data;
  size_t body = n & ~(size_t)31;
  for (size_t i = 0; i < body; i += 32) xxh_stripe(s.v, p + i);
  uint64_t acc = n >= 32 ? xxh_converge(s.v) : seed + XP5;
  acc += n;
  return xxh_finish(acc, p + body, n - body);
}

/* ------------------------------------------------------------------ small helpers */

static int read_full(int fd, void *buf, size_t n, int64_t off, const char *path) {
  uint8_t *p = buf;
  while (n > 0) {
    ssize_t r = pread(fd, p, n, (off_t)off);
    if (r < 0) { if (errno == EINTR) continue; return t5g_error("%s: read of %zu bytes at offset %lld failed: %s", path, n, (long long)off, strerror(errno)); }
    if (r == 0) return t5g_error("%s: unexpected end of file at offset %lld (truncated?)", path, (long long)off);
    p += r; n -= (size_t)r; off += r;
  }
  return 0;
}

/* XXH64 of a whole file, streamed in 1 MiB blocks; *size gets its size. */
static int file_xxh64(const char *path, uint64_t *h, int64_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return t5g_error("%s: cannot open: %s", path, strerror(errno));
  Xxh64State s; t5g_xxh64_init(&s, 0);
  size_t cap = 1 << 20; uint8_t *buf = t5g_malloc(cap);
  int64_t total = 0; size_t k;
  while ((k = fread(buf, 1, cap, f)) > 0) { t5g_xxh64_update(&s, buf, k); total += (int64_t)k; }
  int bad = ferror(f);
  fclose(f); free(buf);
  if (bad) return t5g_error("%s: read error", path);
  *h = t5g_xxh64_digest(&s);
  if (size) *size = total;
  return 0;
}

static uint64_t mix3(uint64_t a, uint64_t b, uint64_t c) { return splitmix64(a ^ splitmix64(b ^ splitmix64(c))); }

static int valid_split_name(const char *s) {
  if (!s || !*s || strlen(s) > 64) return 0;
  for (const char *p = s; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) return 0;
  return 1;
}

/* ------------------------------------------------------------------ writer */

typedef struct FrameEnt { uint64_t off, csize, first_token, ntok, first_doc, xxh; } FrameEnt;

typedef struct ShardOut {
  T5gOutFile out;
  char *path, *file;
  uint64_t off;                 /* bytes written so far */
  FrameEnt *frames; int64_t nframes, capframes;
  uint64_t *doc_first, *doc_len; int64_t ndocs, capdocs;
  uint32_t *pend; int64_t npend, cappend;
  int64_t pend_first_doc;
  uint64_t ntok, comp_bytes;
} ShardOut;

typedef struct WSplit {
  char *name;
  ShardOut *cur;
  ShardInfo *shards; int n_shards, cap_shards;
  int64_t docs, tokens;
} WSplit;

struct DatasetWriter {
  char *dir;
  ShardTokenizerInfo tok;
  ShardWriterOpts o;
  WSplit *splits; int n_splits;
  ZSTD_CCtx *cctx;
  uint8_t *cbuf; size_t ccap;
  char *source_json;
  int failed;
};

ShardWriterOpts shard_writer_default_opts(void) {
  ShardWriterOpts o = {.shard_tokens = 50000000, .frame_tokens = 65536, .level = 3};
  return o;
}

static int sout_write(ShardOut *s, const void *p, size_t n) {
  if (n && fwrite(p, 1, n, s->out.f) != n) return t5g_error("%s: write of %zu bytes failed: %s", s->path, n, strerror(errno));
  s->off += n;
  return 0;
}

static ShardOut *sout_open(DatasetWriter *w, WSplit *sp) {
  ShardOut *s = t5g_calloc(1, sizeof *s);
  char name[128];
  snprintf(name, sizeof name, "%s-%05d.tks", sp->name, sp->n_shards);
  s->file = t5g_strdup(name);
  s->path = t5g_path_join(w->dir, name);
  if (t5g_open_out(&s->out, s->path) != 0) { free(s->file); free(s->path); free(s); return NULL; }
  uint8_t zero[SHARD_HEADER_BYTES] = {0};
  if (sout_write(s, zero, sizeof zero) != 0) { t5g_abort_file(&s->out); free(s->file); free(s->path); free(s); return NULL; }
  return s;
}

static void sout_free(ShardOut *s) {
  if (!s) return;
  if (s->out.f) t5g_abort_file(&s->out);
  free(s->path); free(s->file); free(s->frames); free(s->doc_first); free(s->doc_len); free(s->pend);
  free(s);
}

/* Compress the pending documents into one zstd frame (content size and zstd's own content
 * checksum in the frame header/trailer; our XXH64 of the raw tokens goes to the frame table). */
static int sout_flush_frame(DatasetWriter *w, ShardOut *s) {
  if (s->npend == 0) return 0;
  size_t raw = (size_t)s->npend * 4;
  size_t bound = ZSTD_compressBound(raw);
  if (bound > w->ccap) { w->cbuf = t5g_realloc(w->cbuf, bound); w->ccap = bound; }
  ZSTD_CCtx_setPledgedSrcSize(w->cctx, raw);
  size_t c = ZSTD_compress2(w->cctx, w->cbuf, w->ccap, s->pend, raw);
  if (ZSTD_isError(c)) return t5g_error("%s: zstd compression failed: %s", s->path, ZSTD_getErrorName(c));
  if (s->nframes == s->capframes) { s->capframes = s->capframes ? 2 * s->capframes : 64; s->frames = t5g_realloc(s->frames, s->capframes * sizeof *s->frames); }
  FrameEnt *fe = &s->frames[s->nframes++];
  fe->off = s->off; fe->csize = c;
  fe->first_token = s->ntok - (uint64_t)s->npend;
  fe->ntok = (uint64_t)s->npend;
  fe->first_doc = (uint64_t)s->pend_first_doc;
  fe->xxh = t5g_xxh64(s->pend, raw, 0);
  if (sout_write(s, w->cbuf, c) != 0) return -1;
  s->comp_bytes += c;
  s->npend = 0;
  s->pend_first_doc = s->ndocs;
  return 0;
}

static int sout_add(DatasetWriter *w, ShardOut *s, const int32_t *ids, int64_t n) {
  if (s->npend > 0 && s->npend + n > w->o.frame_tokens && sout_flush_frame(w, s) != 0) return -1;
  if (s->npend + n > s->cappend) {
    int64_t c = s->cappend ? s->cappend : 1024;
    while (c < s->npend + n) c *= 2;
    s->pend = t5g_realloc(s->pend, (size_t)c * 4); s->cappend = c;
  }
  memcpy(s->pend + s->npend, ids, (size_t)n * 4);
  s->npend += n;
  if (s->ndocs == s->capdocs) {
    s->capdocs = s->capdocs ? 2 * s->capdocs : 1024;
    s->doc_first = t5g_realloc(s->doc_first, s->capdocs * 8);
    s->doc_len = t5g_realloc(s->doc_len, s->capdocs * 8);
  }
  s->doc_first[s->ndocs] = s->ntok; s->doc_len[s->ndocs] = (uint64_t)n; s->ndocs++;
  s->ntok += (uint64_t)n;
  if (s->npend >= w->o.frame_tokens) return sout_flush_frame(w, s);
  return 0;
}

/* Write tables, footer and header, hash the file and rename it into place. */
static int sout_close(DatasetWriter *w, WSplit *sp, ShardOut *s) {
  if (sout_flush_frame(w, s) != 0) return -1;
  uint64_t ft_off = s->off;
  size_t ft_bytes = (size_t)s->nframes * SHARD_FRAME_ENTRY_BYTES;
  uint8_t *ft = t5g_malloc(ft_bytes ? ft_bytes : 1);
  Xxh64State content; t5g_xxh64_init(&content, 0);
  for (int64_t f = 0; f < s->nframes; f++) {
    uint8_t *p = ft + f * SHARD_FRAME_ENTRY_BYTES;
    const FrameEnt *e = &s->frames[f];
    put_u64(p, e->off); put_u64(p + 8, e->csize); put_u64(p + 16, e->first_token);
    put_u64(p + 24, e->ntok); put_u64(p + 32, e->first_doc); put_u64(p + 40, e->xxh);
    t5g_xxh64_update(&content, p + 40, 8);
  }
  uint64_t ft_hash = t5g_xxh64(ft, ft_bytes, 0);
  int rc = sout_write(s, ft, ft_bytes);
  free(ft);
  if (rc) return -1;
  uint64_t dt_off = s->off;
  Xxh64State dh; t5g_xxh64_init(&dh, 0);
  uint8_t blk[16 * 4096];
  for (int64_t d = 0; d < s->ndocs; ) {
    int k = 0;
    for (; k < 4096 && d < s->ndocs; k++, d++) { put_u64(blk + 16 * k, s->doc_first[d]); put_u64(blk + 16 * k + 8, s->doc_len[d]); }
    t5g_xxh64_update(&dh, blk, (size_t)16 * k);
    if (sout_write(s, blk, (size_t)16 * k) != 0) return -1;
  }
  uint64_t foot_off = s->off;
  uint8_t foot[SHARD_FOOTER_BYTES] = {0};
  put_u64(foot, ft_hash); put_u64(foot + 8, t5g_xxh64_digest(&dh));
  put_u64(foot + 16, (uint64_t)s->ndocs); put_u64(foot + 24, s->ntok); put_u64(foot + 32, (uint64_t)s->nframes);
  put_u64(foot + 40, t5g_xxh64_digest(&content));
  put_u64(foot + 48, t5g_xxh64(foot, 48, 0));
  memcpy(foot + 56, SHARD_END_MAGIC, 8);
  if (sout_write(s, foot, sizeof foot) != 0) return -1;
  uint64_t file_bytes = s->off;

  uint8_t h[SHARD_HEADER_BYTES] = {0};
  memcpy(h, SHARD_MAGIC, 8);
  put_u32(h + 8, SHARD_FORMAT_VERSION); put_u32(h + 12, SHARD_DTYPE_U32);
  put_u32(h + 16, SHARD_HEADER_BYTES); put_u32(h + 20, 0);
  put_u64(h + 24, (uint64_t)s->ndocs); put_u64(h + 32, s->ntok); put_u64(h + 40, (uint64_t)s->nframes);
  put_u64(h + 48, ft_off); put_u64(h + 56, dt_off); put_u64(h + 64, foot_off);
  put_u64(h + 72, w->tok.hash); put_u64(h + 80, (uint64_t)w->tok.vocab_size);
  put_u64(h + 88, (uint64_t)w->o.frame_tokens); put_u32(h + 96, (uint32_t)sp->n_shards);
  put_u64(h + 120, t5g_xxh64(h, 120, 0));
  if (fseeko(s->out.f, 0, SEEK_SET) != 0 || fwrite(h, 1, sizeof h, s->out.f) != sizeof h || fflush(s->out.f) != 0)
    return t5g_error("%s: writing the header failed: %s", s->path, strerror(errno));
  uint64_t fh; int64_t fsz;
  if (file_xxh64(s->out.tmp, &fh, &fsz) != 0) return -1;
  if ((uint64_t)fsz != file_bytes) return t5g_error("%s: wrote %llu bytes but the file holds %lld", s->out.tmp, (unsigned long long)file_bytes, (long long)fsz);
  if (t5g_commit_file(&s->out) != 0) return -1;

  if (sp->n_shards == sp->cap_shards) { sp->cap_shards = sp->cap_shards ? 2 * sp->cap_shards : 8; sp->shards = t5g_realloc(sp->shards, sp->cap_shards * sizeof *sp->shards); }
  ShardInfo *si = &sp->shards[sp->n_shards++];
  si->file = t5g_strdup(s->file);
  si->documents = s->ndocs; si->tokens = (int64_t)s->ntok; si->frames = s->nframes;
  si->raw_bytes = (int64_t)s->ntok * 4; si->compressed_bytes = (int64_t)s->comp_bytes;
  si->bytes = (int64_t)file_bytes; si->xxh64 = fh;
  return 0;
}

DatasetWriter *dataset_writer_open(const char *dir, const char *const *split_names, int n_splits,
                                   const ShardTokenizerInfo *tok, const ShardWriterOpts *opts) {
  ShardWriterOpts o = opts ? *opts : shard_writer_default_opts();
  if (n_splits < 1) { t5g_error("%s: a dataset needs at least one split", dir); return NULL; }
  if (o.frame_tokens < 1 || o.frame_tokens > (INT64_C(1) << 28)) { t5g_error("%s: frame_tokens must be in [1, 2^28], got %lld", dir, (long long)o.frame_tokens); return NULL; }
  if (o.shard_tokens < 1) { t5g_error("%s: shard_tokens must be >= 1, got %lld", dir, (long long)o.shard_tokens); return NULL; }
  if (o.level < ZSTD_minCLevel() || o.level > ZSTD_maxCLevel()) { t5g_error("%s: zstd level must be in [%d, %d], got %d", dir, ZSTD_minCLevel(), ZSTD_maxCLevel(), o.level); return NULL; }
  if (tok->vocab_size < 1 || tok->vocab_size > INT32_MAX) { t5g_error("%s: tokenizer vocab_size must be in [1, 2^31), got %lld", dir, (long long)tok->vocab_size); return NULL; }
  for (int i = 0; i < n_splits; i++) {
    if (!valid_split_name(split_names[i])) { t5g_error("%s: split name \"%s\": expected 1-64 characters from [a-z0-9_]", dir, split_names[i] ? split_names[i] : "(null)"); return NULL; }
    for (int j = 0; j < i; j++) if (strcmp(split_names[i], split_names[j]) == 0) { t5g_error("%s: split name \"%s\" given twice", dir, split_names[i]); return NULL; }
  }
  if (t5g_mkdir_p(dir) != 0) return NULL;
  DatasetWriter *w = t5g_calloc(1, sizeof *w);
  w->dir = t5g_strdup(dir);
  w->tok = *tok;
  w->tok.name[sizeof w->tok.name - 1] = 0;
  w->o = o;
  w->n_splits = n_splits;
  w->splits = t5g_calloc(n_splits, sizeof *w->splits);
  for (int i = 0; i < n_splits; i++) w->splits[i].name = t5g_strdup(split_names[i]);
  w->cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, o.level);
  ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 1);
  ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_contentSizeFlag, 1);
  return w;
}

int dataset_writer_add(DatasetWriter *w, int split, const int32_t *ids, int64_t n) {
  if (w->failed) return t5g_error("%s: the writer failed earlier", w->dir);
  if (split < 0 || split >= w->n_splits) return t5g_error("%s: split number %d out of range [0, %d)", w->dir, split, w->n_splits);
  if (n < 1) return t5g_error("%s: a document must hold at least one token, got %lld", w->dir, (long long)n);
  for (int64_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= w->tok.vocab_size)
      return t5g_error("%s: token id %d at position %lld of a document is outside the vocabulary [0, %lld)", w->dir, ids[i], (long long)i, (long long)w->tok.vocab_size);
  WSplit *sp = &w->splits[split];
  if (!sp->cur && !(sp->cur = sout_open(w, sp))) { w->failed = 1; return -1; }
  if (sout_add(w, sp->cur, ids, n) != 0) { w->failed = 1; return -1; }
  sp->docs++; sp->tokens += n;
  if ((int64_t)sp->cur->ntok >= w->o.shard_tokens) {
    int rc = sout_close(w, sp, sp->cur);
    sout_free(sp->cur); sp->cur = NULL;
    if (rc) { w->failed = 1; return -1; }
  }
  return 0;
}

void dataset_writer_set_source(DatasetWriter *w, const char *json_object) {
  free(w->source_json);
  w->source_json = json_object ? t5g_strdup(json_object) : NULL;
}

void dataset_writer_totals(const DatasetWriter *w, int64_t *docs, int64_t *tokens, int64_t *cbytes) {
  int64_t d = 0, t = 0, c = 0;
  for (int i = 0; i < w->n_splits; i++) {
    const WSplit *sp = &w->splits[i];
    d += sp->docs; t += sp->tokens;
    for (int k = 0; k < sp->n_shards; k++) c += sp->shards[k].compressed_bytes;
    if (sp->cur) c += (int64_t)sp->cur->comp_bytes;
  }
  if (docs) *docs = d;
  if (tokens) *tokens = t;
  if (cbytes) *cbytes = c;
}

static void hex64(char *buf, uint64_t v) { snprintf(buf, 17, "%016llx", (unsigned long long)v); }

static void writer_free(DatasetWriter *w) {
  for (int i = 0; i < w->n_splits; i++) {
    sout_free(w->splits[i].cur);
    for (int k = 0; k < w->splits[i].n_shards; k++) free(w->splits[i].shards[k].file);
    free(w->splits[i].shards); free(w->splits[i].name);
  }
  free(w->splits); free(w->dir); free(w->cbuf); free(w->source_json);
  ZSTD_freeCCtx(w->cctx);
  free(w);
}

void dataset_writer_abort(DatasetWriter *w) { if (w) writer_free(w); }

int dataset_writer_finish(DatasetWriter *w) {
  if (w->failed) { int r = t5g_error("%s: the writer failed earlier; no index.json written", w->dir); writer_free(w); return r; }
  for (int i = 0; i < w->n_splits; i++) {
    WSplit *sp = &w->splits[i];
    if (sp->cur) {
      int rc = sout_close(w, sp, sp->cur);
      sout_free(sp->cur); sp->cur = NULL;
      if (rc) { writer_free(w); return -1; }
    }
  }
  cJSON *root = cJSON_CreateObject();
  char hx[17];
  cJSON_AddStringToObject(root, "format", SHARD_FORMAT_NAME);
  cJSON_AddNumberToObject(root, "version", SHARD_FORMAT_VERSION);
  cJSON_AddStringToObject(root, "dtype", "uint32");
  cJSON_AddStringToObject(root, "compression", "zstd");
  cJSON_AddNumberToObject(root, "zstd_level", w->o.level);
  cJSON_AddStringToObject(root, "checksum", "xxh64");
  cJSON_AddNumberToObject(root, "frame_tokens", (double)w->o.frame_tokens);
  cJSON_AddNumberToObject(root, "shard_tokens", (double)w->o.shard_tokens);
  cJSON *tk = cJSON_AddObjectToObject(root, "tokenizer");
  cJSON_AddStringToObject(tk, "name", w->tok.name);
  hex64(hx, w->tok.hash); cJSON_AddStringToObject(tk, "hash", hx);
  cJSON_AddNumberToObject(tk, "vocab_size", (double)w->tok.vocab_size);
  cJSON_AddNumberToObject(tk, "bos_id", w->tok.bos_id);
  cJSON_AddNumberToObject(tk, "eos_id", w->tok.eos_id);
  cJSON_AddNumberToObject(tk, "pad_id", w->tok.pad_id);
  cJSON *splits = cJSON_AddArrayToObject(root, "splits");
  int64_t T[5] = {0};
  for (int i = 0; i < w->n_splits; i++) {
    WSplit *sp = &w->splits[i];
    cJSON *so = cJSON_CreateObject();
    cJSON_AddStringToObject(so, "name", sp->name);
    int64_t raw = 0, comp = 0, bytes = 0;
    cJSON *arr = cJSON_CreateArray();
    for (int k = 0; k < sp->n_shards; k++) {
      ShardInfo *si = &sp->shards[k];
      cJSON *o = cJSON_CreateObject();
      cJSON_AddStringToObject(o, "file", si->file);
      cJSON_AddNumberToObject(o, "documents", (double)si->documents);
      cJSON_AddNumberToObject(o, "tokens", (double)si->tokens);
      cJSON_AddNumberToObject(o, "frames", (double)si->frames);
      cJSON_AddNumberToObject(o, "raw_bytes", (double)si->raw_bytes);
      cJSON_AddNumberToObject(o, "compressed_bytes", (double)si->compressed_bytes);
      cJSON_AddNumberToObject(o, "bytes", (double)si->bytes);
      hex64(hx, si->xxh64); cJSON_AddStringToObject(o, "xxh64", hx);
      cJSON_AddItemToArray(arr, o);
      raw += si->raw_bytes; comp += si->compressed_bytes; bytes += si->bytes;
    }
    cJSON_AddNumberToObject(so, "documents", (double)sp->docs);
    cJSON_AddNumberToObject(so, "tokens", (double)sp->tokens);
    cJSON_AddNumberToObject(so, "raw_bytes", (double)raw);
    cJSON_AddNumberToObject(so, "compressed_bytes", (double)comp);
    cJSON_AddNumberToObject(so, "bytes", (double)bytes);
    cJSON_AddItemToObject(so, "shards", arr);
    cJSON_AddItemToArray(splits, so);
    T[0] += sp->docs; T[1] += sp->tokens; T[2] += raw; T[3] += comp; T[4] += bytes;
  }
  cJSON *tot = cJSON_AddObjectToObject(root, "totals");
  cJSON_AddNumberToObject(tot, "documents", (double)T[0]);
  cJSON_AddNumberToObject(tot, "tokens", (double)T[1]);
  cJSON_AddNumberToObject(tot, "raw_bytes", (double)T[2]);
  cJSON_AddNumberToObject(tot, "compressed_bytes", (double)T[3]);
  cJSON_AddNumberToObject(tot, "bytes", (double)T[4]);
  if (w->source_json) {
    cJSON *src = cJSON_Parse(w->source_json);
    if (src) cJSON_AddItemToObject(root, "source", src);
  }
  char *text = cJSON_Print(root);
  cJSON_Delete(root);
  char *path = t5g_path_join(w->dir, "index.json");
  T5gOutFile out;
  int rc = t5g_open_out(&out, path);
  if (rc == 0) {
    fputs(text, out.f); fputc('\n', out.f);
    rc = t5g_commit_file(&out);
  }
  free(text); free(path);
  writer_free(w);
  return rc;
}

/* ------------------------------------------------------------------ index.json */

static int js_int(const cJSON *o, const char *key, int64_t *v, const char *path, const char *where) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!x) return t5g_error("%s: %s: field \"%s\" is missing", path, where, key);
  if (!cJSON_IsNumber(x)) return t5g_error("%s: %s: field \"%s\": expected an integer, found a non-number", path, where, key);
  double d = x->valuedouble;
  if (d != (double)(int64_t)d || d < -2147483648.0 || d > 9007199254740992.0)
    return t5g_error("%s: %s: field \"%s\": expected an integer, found %g", path, where, key, d);
  *v = (int64_t)d;
  return 0;
}
static int js_count(const cJSON *o, const char *key, int64_t *v, const char *path, const char *where) {
  if (js_int(o, key, v, path, where) != 0) return -1;
  if (*v < 0) return t5g_error("%s: %s: field \"%s\": expected a count >= 0, found %lld", path, where, key, (long long)*v);
  return 0;
}
static const char *js_str(const cJSON *o, const char *key, const char *path, const char *where) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!x) { t5g_error("%s: %s: field \"%s\" is missing", path, where, key); return NULL; }
  if (!cJSON_IsString(x)) { t5g_error("%s: %s: field \"%s\": expected a string", path, where, key); return NULL; }
  return x->valuestring;
}
static int parse_hex64(const char *s, uint64_t *v) {
  if (!s || strlen(s) != 16) return -1;
  uint64_t r = 0;
  for (int i = 0; i < 16; i++) {
    char c = s[i]; int d;
    if (c >= '0' && c <= '9') d = c - '0'; else if (c >= 'a' && c <= 'f') d = c - 'a' + 10; else if (c >= 'A' && c <= 'F') d = c - 'A' + 10; else return -1;
    r = (r << 4) | (uint64_t)d;
  }
  *v = r;
  return 0;
}

void dataset_index_free(DatasetIndex *ix) {
  if (!ix) return;
  for (int i = 0; i < ix->n_splits; i++) {
    for (int k = 0; k < ix->splits[i].n_shards; k++) free(ix->splits[i].shards[k].file);
    free(ix->splits[i].shards); free(ix->splits[i].name);
  }
  free(ix->splits); free(ix->dir); free(ix);
}

DatasetIndex *dataset_index_load(const char *dir) {
  char *path = t5g_path_join(dir, "index.json");
  size_t len;
  char *text = t5g_read_file(path, &len);
  if (!text) {
    char why[1024]; snprintf(why, sizeof why, "%s", t5g_last_error());
    t5g_error("%s (is %s a dataset made by `t5gemma data prepare`?)", why, dir);
    free(path); return NULL;
  }
  cJSON *root = cJSON_ParseWithLength(text, len);
  long err_at = -1;
  if (!root) { const char *ep = cJSON_GetErrorPtr(); err_at = ep && ep >= text && ep <= text + len ? (long)(ep - text) : -1; }
  free(text);
  DatasetIndex *ix = t5g_calloc(1, sizeof *ix);
  ix->dir = t5g_strdup(dir);
  char where[160];
  int64_t v;
  if (!root) { t5g_error("%s: invalid JSON (parse error near byte %ld)", path, err_at); goto fail; }
  if (!cJSON_IsObject(root)) { t5g_error("%s: expected a JSON object at the top level", path); goto fail; }
  const char *fmt = js_str(root, "format", path, "top level");
  if (!fmt) goto fail;
  if (strcmp(fmt, SHARD_FORMAT_NAME) != 0) { t5g_error("%s: field \"format\": expected \"%s\", found \"%s\"", path, SHARD_FORMAT_NAME, fmt); goto fail; }
  if (js_int(root, "version", &v, path, "top level")) goto fail;
  if (v != SHARD_FORMAT_VERSION) { t5g_error("%s: field \"version\": this program reads version %d, found %lld", path, SHARD_FORMAT_VERSION, (long long)v); goto fail; }
  ix->version = (int)v;
  const char *dt = js_str(root, "dtype", path, "top level");
  if (!dt) goto fail;
  if (strcmp(dt, "uint32") != 0) { t5g_error("%s: field \"dtype\": expected \"uint32\", found \"%s\"", path, dt); goto fail; }
  if (js_count(root, "frame_tokens", &ix->frame_tokens, path, "top level") || js_count(root, "shard_tokens", &ix->shard_tokens, path, "top level") ||
      js_int(root, "zstd_level", &v, path, "top level")) goto fail;
  ix->level = (int)v;
  const cJSON *tk = cJSON_GetObjectItemCaseSensitive(root, "tokenizer");
  if (!cJSON_IsObject(tk)) { t5g_error("%s: field \"tokenizer\": expected an object", path); goto fail; }
  const char *tn = js_str(tk, "name", path, "tokenizer");
  const char *th = tn ? js_str(tk, "hash", path, "tokenizer") : NULL;
  if (!th) goto fail;
  snprintf(ix->tok.name, sizeof ix->tok.name, "%s", tn);
  if (parse_hex64(th, &ix->tok.hash) != 0) { t5g_error("%s: tokenizer: field \"hash\": expected 16 hex digits, found \"%s\"", path, th); goto fail; }
  if (js_count(tk, "vocab_size", &ix->tok.vocab_size, path, "tokenizer")) goto fail;
  if (ix->tok.vocab_size < 1 || ix->tok.vocab_size > INT32_MAX) { t5g_error("%s: tokenizer: field \"vocab_size\": expected [1, 2^31), found %lld", path, (long long)ix->tok.vocab_size); goto fail; }
  if (js_int(tk, "bos_id", &v, path, "tokenizer")) goto fail;
  ix->tok.bos_id = (int32_t)v;
  if (js_int(tk, "eos_id", &v, path, "tokenizer")) goto fail;
  ix->tok.eos_id = (int32_t)v;
  if (js_int(tk, "pad_id", &v, path, "tokenizer")) goto fail;
  ix->tok.pad_id = (int32_t)v;
  const cJSON *splits = cJSON_GetObjectItemCaseSensitive(root, "splits");
  if (!cJSON_IsArray(splits) || cJSON_GetArraySize(splits) < 1) { t5g_error("%s: field \"splits\": expected a non-empty array", path); goto fail; }
  ix->n_splits = cJSON_GetArraySize(splits);
  ix->splits = t5g_calloc(ix->n_splits, sizeof *ix->splits);
  for (int i = 0; i < ix->n_splits; i++) {
    const cJSON *so = cJSON_GetArrayItem(splits, i);
    SplitInfo *sp = &ix->splits[i];
    snprintf(where, sizeof where, "splits[%d]", i);
    if (!cJSON_IsObject(so)) { t5g_error("%s: %s: expected an object", path, where); goto fail; }
    const char *nm = js_str(so, "name", path, where);
    if (!nm) goto fail;
    if (!valid_split_name(nm)) { t5g_error("%s: %s: field \"name\": expected [a-z0-9_]+, found \"%s\"", path, where, nm); goto fail; }
    for (int j = 0; j < i; j++) if (strcmp(ix->splits[j].name, nm) == 0) { t5g_error("%s: split \"%s\" listed twice", path, nm); goto fail; }
    sp->name = t5g_strdup(nm);
    snprintf(where, sizeof where, "split \"%s\"", nm);
    if (js_count(so, "documents", &sp->documents, path, where) || js_count(so, "tokens", &sp->tokens, path, where) ||
        js_count(so, "raw_bytes", &sp->raw_bytes, path, where) || js_count(so, "compressed_bytes", &sp->compressed_bytes, path, where)) goto fail;
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(so, "shards");
    if (!cJSON_IsArray(arr)) { t5g_error("%s: %s: field \"shards\": expected an array", path, where); goto fail; }
    sp->n_shards = cJSON_GetArraySize(arr);
    sp->shards = t5g_calloc(sp->n_shards ? sp->n_shards : 1, sizeof *sp->shards);
    int64_t sd = 0, st = 0, sr = 0, sc = 0;
    for (int k = 0; k < sp->n_shards; k++) {
      const cJSON *o = cJSON_GetArrayItem(arr, k);
      ShardInfo *si = &sp->shards[k];
      char w2[200];
      snprintf(w2, sizeof w2, "split \"%s\" shards[%d]", nm, k);
      if (!cJSON_IsObject(o)) { t5g_error("%s: %s: expected an object", path, w2); goto fail; }
      const char *fl = js_str(o, "file", path, w2);
      if (!fl) goto fail;
      size_t fln = strlen(fl);
      if (fln < 5 || strchr(fl, '/') || fl[0] == '.' || strcmp(fl + fln - 4, ".tks") != 0) { t5g_error("%s: %s: field \"file\": expected a file name ending in .tks inside the dataset directory, found \"%s\"", path, w2, fl); goto fail; }
      si->file = t5g_strdup(fl);
      snprintf(w2, sizeof w2, "shard \"%s\"", fl);
      if (js_count(o, "documents", &si->documents, path, w2) || js_count(o, "tokens", &si->tokens, path, w2) ||
          js_count(o, "frames", &si->frames, path, w2) || js_count(o, "raw_bytes", &si->raw_bytes, path, w2) ||
          js_count(o, "compressed_bytes", &si->compressed_bytes, path, w2) || js_count(o, "bytes", &si->bytes, path, w2)) goto fail;
      const char *xh = js_str(o, "xxh64", path, w2);
      if (!xh) goto fail;
      if (parse_hex64(xh, &si->xxh64) != 0) { t5g_error("%s: %s: field \"xxh64\": expected 16 hex digits, found \"%s\"", path, w2, xh); goto fail; }
      if (si->raw_bytes != 4 * si->tokens) { t5g_error("%s: %s: raw_bytes %lld != 4 * tokens (%lld)", path, w2, (long long)si->raw_bytes, (long long)si->tokens); goto fail; }
      if (si->documents < 1 || si->tokens < si->documents || si->frames < 1 || si->frames > si->documents) { t5g_error("%s: %s: inconsistent counts: documents %lld, tokens %lld, frames %lld", path, w2, (long long)si->documents, (long long)si->tokens, (long long)si->frames); goto fail; }
      for (int a = 0; a <= i; a++)
        for (int b = 0; b < (a == i ? k : ix->splits[a].n_shards); b++)
          if (strcmp(ix->splits[a].shards[b].file, fl) == 0) { t5g_error("%s: shard file \"%s\" listed twice", path, fl); goto fail; }
      sd += si->documents; st += si->tokens; sr += si->raw_bytes; sc += si->compressed_bytes;
    }
    if (sd != sp->documents || st != sp->tokens || sr != sp->raw_bytes || sc != sp->compressed_bytes) {
      t5g_error("%s: %s: totals (documents %lld, tokens %lld, raw_bytes %lld, compressed_bytes %lld) differ from the sums over its shards (%lld, %lld, %lld, %lld)",
                path, where, (long long)sp->documents, (long long)sp->tokens, (long long)sp->raw_bytes, (long long)sp->compressed_bytes,
                (long long)sd, (long long)st, (long long)sr, (long long)sc);
      goto fail;
    }
    ix->documents += sd; ix->tokens += st; ix->raw_bytes += sr; ix->compressed_bytes += sc;
  }
  const cJSON *tot = cJSON_GetObjectItemCaseSensitive(root, "totals");
  if (!cJSON_IsObject(tot)) { t5g_error("%s: field \"totals\": expected an object", path); goto fail; }
  int64_t td, tt;
  if (js_count(tot, "documents", &td, path, "totals") || js_count(tot, "tokens", &tt, path, "totals")) goto fail;
  if (td != ix->documents || tt != ix->tokens) { t5g_error("%s: totals: documents %lld, tokens %lld differ from the sums over the splits (%lld, %lld)", path, (long long)td, (long long)tt, (long long)ix->documents, (long long)ix->tokens); goto fail; }
  cJSON_Delete(root);
  free(path);
  return ix;
fail:
  cJSON_Delete(root);
  free(path);
  dataset_index_free(ix);
  return NULL;
}

const SplitInfo *dataset_index_split(const DatasetIndex *ix, const char *name) {
  for (int i = 0; i < ix->n_splits; i++) if (strcmp(ix->splits[i].name, name) == 0) return &ix->splits[i];
  return NULL;
}

/* ------------------------------------------------------------------ shard validation */

typedef struct ShardFile {
  char *path;
  int fd;
  int64_t ndocs, ntok, nframes;
  FrameEnt *frames;       /* nframes */
  uint64_t *doc_first;    /* ndocs + 1: first token of each document, then ntok */
  int64_t doc0, tok0, frame0; /* offsets of this shard in the split */
} ShardFile;

static void shard_file_free(ShardFile *s) {
  if (s->fd >= 0) close(s->fd);
  free(s->path); free(s->frames); free(s->doc_first);
  memset(s, 0, sizeof *s);
  s->fd = -1;
}

/* Open one shard and check everything except the frames' contents: size, header, footer, both
 * tables (XXH64 and consistency) against the index entry and the tokenizer identity. On
 * failure the error names the file. */
static int shard_file_open(ShardFile *s, const char *dir, const ShardInfo *si, const ShardTokenizerInfo *tok) {
  memset(s, 0, sizeof *s);
  s->fd = -1;
  s->path = t5g_path_join(dir, si->file);
  const char *P = s->path;
  s->fd = open(P, O_RDONLY);
  if (s->fd < 0) return t5g_error("%s: cannot open shard listed in index.json: %s", P, strerror(errno));
  struct stat st;
  if (fstat(s->fd, &st) != 0) return t5g_error("%s: cannot stat: %s", P, strerror(errno));
  if ((int64_t)st.st_size != si->bytes)
    return t5g_error("%s: file size is %lld bytes, index.json says %lld (truncated or replaced shard)", P, (long long)st.st_size, (long long)si->bytes);
  if (st.st_size < SHARD_HEADER_BYTES + SHARD_FOOTER_BYTES) return t5g_error("%s: file of %lld bytes is too small for a shard", P, (long long)st.st_size);
  uint8_t h[SHARD_HEADER_BYTES];
  if (read_full(s->fd, h, sizeof h, 0, P)) return -1;
  if (memcmp(h, SHARD_MAGIC, 8) != 0) return t5g_error("%s: header: bad magic (not a t5gemma token shard)", P);
  if (get_u64(h + 120) != t5g_xxh64(h, 120, 0)) return t5g_error("%s: header: checksum mismatch (corrupted header)", P);
  if (get_u32(h + 8) != SHARD_FORMAT_VERSION) return t5g_error("%s: header: format version %u, this program reads %d", P, get_u32(h + 8), SHARD_FORMAT_VERSION);
  if (get_u32(h + 12) != SHARD_DTYPE_U32) return t5g_error("%s: header: dtype code %u, expected %d (uint32)", P, get_u32(h + 12), SHARD_DTYPE_U32);
  if (get_u32(h + 16) != SHARD_HEADER_BYTES) return t5g_error("%s: header: header size %u, expected %d", P, get_u32(h + 16), SHARD_HEADER_BYTES);
  uint64_t nd = get_u64(h + 24), nt = get_u64(h + 32), nf = get_u64(h + 40);
  uint64_t ft_off = get_u64(h + 48), dt_off = get_u64(h + 56), foot_off = get_u64(h + 64);
  if ((int64_t)nd != si->documents || (int64_t)nt != si->tokens || (int64_t)nf != si->frames)
    return t5g_error("%s: header holds %llu documents, %llu tokens, %llu frames; index.json says %lld, %lld, %lld",
                     P, (unsigned long long)nd, (unsigned long long)nt, (unsigned long long)nf,
                     (long long)si->documents, (long long)si->tokens, (long long)si->frames);
  if (get_u64(h + 72) != tok->hash || (int64_t)get_u64(h + 80) != tok->vocab_size)
    return t5g_error("%s: header: tokenizer hash %016llx, vocab %llu; index.json says %016llx, vocab %lld", P,
                     (unsigned long long)get_u64(h + 72), (unsigned long long)get_u64(h + 80), (unsigned long long)tok->hash, (long long)tok->vocab_size);
  if (dt_off != ft_off + nf * SHARD_FRAME_ENTRY_BYTES || foot_off != dt_off + nd * SHARD_DOC_ENTRY_BYTES ||
      foot_off + SHARD_FOOTER_BYTES != (uint64_t)st.st_size || ft_off < SHARD_HEADER_BYTES)
    return t5g_error("%s: header: table offsets (frames %llu, documents %llu, footer %llu) do not fit the counts and the file size %lld",
                     P, (unsigned long long)ft_off, (unsigned long long)dt_off, (unsigned long long)foot_off, (long long)st.st_size);
  uint8_t foot[SHARD_FOOTER_BYTES];
  if (read_full(s->fd, foot, sizeof foot, (int64_t)foot_off, P)) return -1;
  if (memcmp(foot + 56, SHARD_END_MAGIC, 8) != 0) return t5g_error("%s: footer: bad end magic (truncated or corrupted shard)", P);
  if (get_u64(foot + 48) != t5g_xxh64(foot, 48, 0)) return t5g_error("%s: footer: checksum mismatch (corrupted footer)", P);
  if (get_u64(foot + 16) != nd || get_u64(foot + 24) != nt || get_u64(foot + 32) != nf) return t5g_error("%s: footer counts differ from the header's", P);
  s->ndocs = (int64_t)nd; s->ntok = (int64_t)nt; s->nframes = (int64_t)nf;

  /* frame table */
  size_t ftb = (size_t)nf * SHARD_FRAME_ENTRY_BYTES;
  uint8_t *ft = t5g_malloc(ftb);
  if (read_full(s->fd, ft, ftb, (int64_t)ft_off, P)) { free(ft); return -1; }
  if (t5g_xxh64(ft, ftb, 0) != get_u64(foot)) { free(ft); return t5g_error("%s: frame table: checksum mismatch (corrupted frame table)", P); }
  s->frames = t5g_malloc(nf * sizeof *s->frames);
  Xxh64State content; t5g_xxh64_init(&content, 0);
  uint64_t comp = 0;
  for (uint64_t f = 0; f < nf; f++) {
    const uint8_t *p = ft + f * SHARD_FRAME_ENTRY_BYTES;
    FrameEnt *e = &s->frames[f];
    e->off = get_u64(p); e->csize = get_u64(p + 8); e->first_token = get_u64(p + 16);
    e->ntok = get_u64(p + 24); e->first_doc = get_u64(p + 32); e->xxh = get_u64(p + 40);
    t5g_xxh64_update(&content, p + 40, 8);
    uint64_t want_off = f ? s->frames[f - 1].off + s->frames[f - 1].csize : SHARD_HEADER_BYTES;
    uint64_t want_tok = f ? s->frames[f - 1].first_token + s->frames[f - 1].ntok : 0;
    if (e->off != want_off || e->csize == 0 || e->first_token != want_tok || e->ntok == 0 ||
        (f == 0 ? e->first_doc != 0 : e->first_doc <= s->frames[f - 1].first_doc) || e->first_doc >= nd) {
      free(ft); return t5g_error("%s: frame table: entry %llu is inconsistent (offset %llu, size %llu, first token %llu, tokens %llu, first document %llu)", P,
                                 (unsigned long long)f, (unsigned long long)e->off, (unsigned long long)e->csize, (unsigned long long)e->first_token,
                                 (unsigned long long)e->ntok, (unsigned long long)e->first_doc);
    }
    comp += e->csize;
  }
  free(ft);
  if (t5g_xxh64_digest(&content) != get_u64(foot + 40)) return t5g_error("%s: footer: content checksum differs from the frame table's", P);
  if (nf && (s->frames[nf - 1].off + s->frames[nf - 1].csize != ft_off || s->frames[nf - 1].first_token + s->frames[nf - 1].ntok != nt))
    return t5g_error("%s: frame table: frames do not end at the frame table or do not add up to %llu tokens", P, (unsigned long long)nt);
  if ((int64_t)comp != si->compressed_bytes) return t5g_error("%s: frames hold %llu compressed bytes, index.json says %lld", P, (unsigned long long)comp, (long long)si->compressed_bytes);

  /* document table, streamed in blocks */
  s->doc_first = t5g_malloc((nd + 1) * sizeof *s->doc_first);
  Xxh64State dh; t5g_xxh64_init(&dh, 0);
  size_t blkn = 1 << 16;
  uint8_t *blk = t5g_malloc(blkn * SHARD_DOC_ENTRY_BYTES);
  uint64_t next = 0;
  for (uint64_t d = 0; d < nd; ) {
    size_t k = nd - d < blkn ? (size_t)(nd - d) : blkn;
    if (read_full(s->fd, blk, k * SHARD_DOC_ENTRY_BYTES, (int64_t)(dt_off + d * SHARD_DOC_ENTRY_BYTES), P)) { free(blk); return -1; }
    t5g_xxh64_update(&dh, blk, k * SHARD_DOC_ENTRY_BYTES);
    for (size_t j = 0; j < k; j++, d++) {
      uint64_t first = get_u64(blk + j * 16), len = get_u64(blk + j * 16 + 8);
      if (first != next || len == 0 || len > nt - first) {
        free(blk);
        return t5g_error("%s: document table: entry %llu is inconsistent (first token %llu, expected %llu; length %llu)", P,
                         (unsigned long long)d, (unsigned long long)first, (unsigned long long)next, (unsigned long long)len);
      }
      s->doc_first[d] = first;
      next = first + len;
    }
  }
  free(blk);
  if (t5g_xxh64_digest(&dh) != get_u64(foot + 8)) return t5g_error("%s: document table: checksum mismatch (corrupted document table)", P);
  if (next != nt) return t5g_error("%s: document table: documents hold %llu tokens, header says %llu", P, (unsigned long long)next, (unsigned long long)nt);
  s->doc_first[nd] = nt;
  for (uint64_t f = 0; f < nf; f++) {
    const FrameEnt *e = &s->frames[f];
    uint64_t end_doc = f + 1 < nf ? s->frames[f + 1].first_doc : nd;
    if (s->doc_first[e->first_doc] != e->first_token || s->doc_first[end_doc] != e->first_token + e->ntok)
      return t5g_error("%s: frame %llu does not hold whole documents (tokens %llu..%llu, documents %llu..%llu)", P, (unsigned long long)f,
                       (unsigned long long)e->first_token, (unsigned long long)(e->first_token + e->ntok), (unsigned long long)e->first_doc, (unsigned long long)end_doc);
  }
  return 0;
}

/* Decompress frame f of s into *out (grown as needed) and check it: single zstd frame of the
 * recorded size, content size, XXH64 of the raw tokens, ids below vocab. */
static int shard_frame_load(const ShardFile *s, int64_t f, ZSTD_DCtx *dctx, uint8_t **cbuf, size_t *ccap,
                            uint32_t **out, size_t *ocap, int64_t vocab) {
  const FrameEnt *e = &s->frames[f];
  if (e->csize > *ccap) { *cbuf = t5g_realloc(*cbuf, e->csize); *ccap = e->csize; }
  if (read_full(s->fd, *cbuf, e->csize, (int64_t)e->off, s->path)) return -1;
  size_t raw = e->ntok * 4;
  /* the frame's own header must agree with the table before the output buffer is sized */
  unsigned long long cs = ZSTD_getFrameContentSize(*cbuf, e->csize);
  if (cs == ZSTD_CONTENTSIZE_ERROR || cs != raw || ZSTD_findFrameCompressedSize(*cbuf, e->csize) != e->csize)
    return t5g_error("%s: frame %lld (bytes %llu..%llu): not a zstd frame holding %llu tokens (corrupted frame)", s->path, (long long)f,
                     (unsigned long long)e->off, (unsigned long long)(e->off + e->csize), (unsigned long long)e->ntok);
  if (e->ntok > *ocap) { *out = t5g_realloc(*out, e->ntok * 4); *ocap = e->ntok; }
  size_t r = ZSTD_decompressDCtx(dctx, *out, raw, *cbuf, e->csize);
  if (ZSTD_isError(r)) return t5g_error("%s: frame %lld (bytes %llu..%llu): zstd: %s (corrupted frame)", s->path, (long long)f,
                                        (unsigned long long)e->off, (unsigned long long)(e->off + e->csize), ZSTD_getErrorName(r));
  if (r != raw) return t5g_error("%s: frame %lld: decompressed to %zu bytes, expected %zu", s->path, (long long)f, r, raw);
  uint64_t h = t5g_xxh64(*out, raw, 0);
  if (h != e->xxh) return t5g_error("%s: frame %lld: XXH64 of the tokens is %016llx, the frame table says %016llx (corrupted frame)", s->path, (long long)f,
                                    (unsigned long long)h, (unsigned long long)e->xxh);
  const uint32_t *t = *out;
  uint32_t mx = 0;
  for (uint64_t i = 0; i < e->ntok; i++) mx = t[i] > mx ? t[i] : mx;
  if ((int64_t)mx >= vocab) {
    for (uint64_t i = 0; i < e->ntok; i++)
      if ((int64_t)t[i] >= vocab) return t5g_error("%s: frame %lld: token %llu is id %u, outside the vocabulary [0, %lld)", s->path, (long long)f,
                                                   (unsigned long long)(e->first_token + i), t[i], (long long)vocab);
  }
  return 0;
}

/* ------------------------------------------------------------------ verify */

static void report_problem(FILE *report, int *n, const char *msg) {
  (*n)++;
  if (report) { fprintf(report, "%s\n", msg); fflush(report); }
}

int dataset_verify(const char *dir, FILE *report, FILE *progress) {
  DatasetIndex *ix = dataset_index_load(dir);
  if (!ix) return -1;   /* t5g_error set; the caller prints it (printing here too showed it twice) */
  int problems = 0;
  char msg[1400];
  ZSTD_DCtx *dctx = ZSTD_createDCtx();
  uint8_t *cbuf = NULL; size_t ccap = 0; uint32_t *tok = NULL; size_t tcap = 0;
  for (int i = 0; i < ix->n_splits; i++) {
    for (int k = 0; k < ix->splits[i].n_shards; k++) {
      const ShardInfo *si = &ix->splits[i].shards[k];
      char *path = t5g_path_join(dir, si->file);
      if (!t5g_file_exists(path)) {
        snprintf(msg, sizeof msg, "%s: missing (listed in index.json, split \"%s\")", path, ix->splits[i].name);
        report_problem(report, &problems, msg); free(path); continue;
      }
      int before = problems;
      uint64_t h; int64_t size;
      if (file_xxh64(path, &h, &size) != 0) report_problem(report, &problems, t5g_last_error());
      else {
        if (size != si->bytes) {
          snprintf(msg, sizeof msg, "%s: file size is %lld bytes, index.json says %lld (truncated or replaced shard)", path, (long long)size, (long long)si->bytes);
          report_problem(report, &problems, msg);
        }
        if (h != si->xxh64) {
          snprintf(msg, sizeof msg, "%s: XXH64 of the file is %016llx, index.json says %016llx (corrupted or replaced shard)", path, (unsigned long long)h, (unsigned long long)si->xxh64);
          report_problem(report, &problems, msg);
        }
      }
      ShardFile sf;
      if (shard_file_open(&sf, dir, si, &ix->tok) != 0) {
        /* the size problem was already reported above; report what else is wrong */
        if (size == si->bytes || problems == before) report_problem(report, &problems, t5g_last_error());
      } else {
        int bad_frames = 0;
        for (int64_t f = 0; f < sf.nframes; f++) {
          if (shard_frame_load(&sf, f, dctx, &cbuf, &ccap, &tok, &tcap, ix->tok.vocab_size) != 0) {
            if (++bad_frames <= 10) report_problem(report, &problems, t5g_last_error());
            else problems++;
          }
        }
        if (bad_frames > 10 && report) fprintf(report, "%s: ... %d corrupted frames in all\n", path, bad_frames);
      }
      shard_file_free(&sf);
      if (progress) fprintf(progress, "%s: %s (%lld documents, %lld tokens, %lld frames)\n", path, problems == before ? "ok" : "BAD",
                            (long long)si->documents, (long long)si->tokens, (long long)si->frames);
      free(path);
    }
  }
  /* shard files present but not listed: a warning, not a problem */
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *de;
    while ((de = readdir(d))) {
      size_t n = strlen(de->d_name);
      if (n < 5 || strcmp(de->d_name + n - 4, ".tks") != 0) continue;
      int listed = 0;
      for (int i = 0; i < ix->n_splits && !listed; i++)
        for (int k = 0; k < ix->splits[i].n_shards && !listed; k++) listed = strcmp(ix->splits[i].shards[k].file, de->d_name) == 0;
      if (!listed && report) fprintf(report, "warning: %s/%s: shard file not listed in index.json (ignored)\n", dir, de->d_name);
    }
    closedir(d);
  }
  ZSTD_freeDCtx(dctx);
  free(cbuf); free(tok);
  dataset_index_free(ix);
  return problems;
}

/* ------------------------------------------------------------------ reader */

typedef struct CacheSlot { int64_t g; uint32_t *tok; size_t cap; uint64_t used; } CacheSlot;
typedef struct FrameCache {
  int n;
  CacheSlot *s;
  uint64_t tick;
  ZSTD_DCtx *dctx;
  uint8_t *cbuf; size_t ccap;
  int64_t loads;          /* decompressions done (statistics, tests) */
} FrameCache;

typedef struct EpochOrder {
  int64_t epoch;          /* -1: not built */
  uint64_t seed;
  int64_t *frame_perm;    /* n_frames */
  int64_t *win_start;     /* n_win + 1 document offsets */
  int64_t n_win;
  int64_t cur_win;
  int64_t *win_docs; size_t win_cap;
} EpochOrder;

typedef struct IterCtx { ShardReaderState st; EpochOrder eo; FrameCache fc; } IterCtx;

enum { SLOT_DOC = 1, SLOT_EPOCH_END = 2, SLOT_ERROR = 3 };
typedef struct QSlot { int kind; int32_t *ids; size_t cap; int64_t n; ShardReaderState after; char err[1024]; } QSlot;

struct ShardReader {
  DatasetIndex *ix;
  const SplitInfo *split;
  ShardReaderOpts o;
  int nsh;
  ShardFile *sh;
  int64_t *sh_doc0, *sh_tok0, *sh_frame0;   /* nsh + 1 prefix sums */
  int64_t ndocs, ntok, nframes;
  int64_t win;                              /* frames per window (resolved) */
  /* the split's largest frame (tokens, compressed bytes, documents) and document: the sequential
   * readers' buffers are sized to these once, so reading allocates nothing (issue 8) */
  int64_t max_frame_tok, max_frame_docs, max_doc_tok;
  size_t max_frame_csize;
  FrameCache rc;                            /* random access */
  EpochOrder oq;                            /* shard_reader_order queries */
  IterCtx it;                               /* sequential reading without prefetch */
  ShardReaderState st;                      /* consumer state */
  /* prefetch */
  IterCtx pit;
  QSlot *q; int qn, qhead, qcount, held;
  pthread_t thr; int running, stop, finished;
  pthread_mutex_t mu; pthread_cond_t not_empty, not_full;
};

ShardReaderOpts shard_reader_default_opts(void) {
  ShardReaderOpts o = {.seed = 0, .shuffle = 1, .window_frames = 8, .rank = 0, .world_size = 1, .prefetch_docs = 0, .cache_frames = 0};
  return o;
}

/* n slots; tok_cap / cbuf_cap > 0 size every slot and the compressed buffer up front (the
 * sequential readers: no allocation while reading), 0 grows them on demand (random access). */
static void cache_init(FrameCache *c, int n, int64_t tok_cap, size_t cbuf_cap) {
  memset(c, 0, sizeof *c);
  c->n = n;
  c->s = t5g_calloc(n, sizeof *c->s);
  for (int i = 0; i < n; i++) {
    c->s[i].g = -1;
    if (tok_cap > 0) { c->s[i].tok = t5g_malloc((size_t)tok_cap * 4); c->s[i].cap = (size_t)tok_cap; }
  }
  if (cbuf_cap > 0) { c->cbuf = t5g_malloc(cbuf_cap); c->ccap = cbuf_cap; }
  c->dctx = ZSTD_createDCtx();
}
static void cache_free(FrameCache *c) {
  if (!c->s) return;
  for (int i = 0; i < c->n; i++) free(c->s[i].tok);
  free(c->s); free(c->cbuf);
  ZSTD_freeDCtx(c->dctx);
  memset(c, 0, sizeof *c);
}
static void order_init(EpochOrder *e) { memset(e, 0, sizeof *e); e->epoch = -1; e->cur_win = -1; }
static void order_free(EpochOrder *e) { free(e->frame_perm); free(e->win_start); free(e->win_docs); order_init(e); }

static int find_le(const int64_t *pre, int n, int64_t x) { /* largest i in [0,n) with pre[i] <= x */
  int lo = 0, hi = n - 1;
  while (lo < hi) { int mid = (lo + hi + 1) / 2; if (pre[mid] <= x) lo = mid; else hi = mid - 1; }
  return lo;
}
static int64_t frame_of_doc(const ShardFile *s, int64_t d) {
  int64_t lo = 0, hi = s->nframes - 1;
  while (lo < hi) { int64_t mid = (lo + hi + 1) / 2; if ((int64_t)s->frames[mid].first_doc <= d) lo = mid; else hi = mid - 1; }
  return lo;
}
static int64_t frame_of_token(const ShardFile *s, int64_t t) {
  int64_t lo = 0, hi = s->nframes - 1;
  while (lo < hi) { int64_t mid = (lo + hi + 1) / 2; if ((int64_t)s->frames[mid].first_token <= t) lo = mid; else hi = mid - 1; }
  return lo;
}

/* Tokens of global frame g (decompressing through cache c when not cached). */
static const uint32_t *cache_get(ShardReader *r, FrameCache *c, int64_t g) {
  c->tick++;
  int pick = -1;
  for (int i = 0; i < c->n; i++) {
    if (c->s[i].g == g) { c->s[i].used = c->tick; return c->s[i].tok; }
    if (pick < 0) { pick = i; continue; }
    int ei = c->s[i].g < 0, ep = c->s[pick].g < 0;     /* empty slots first, then least recently used */
    if (ei > ep || (ei == ep && c->s[i].used < c->s[pick].used)) pick = i;
  }
  int lru = pick;
  CacheSlot *sl = &c->s[lru];
  sl->g = -1;
  int sh = find_le(r->sh_frame0, r->nsh, g);
  const ShardFile *s = &r->sh[sh];
  if (shard_frame_load(s, g - r->sh_frame0[sh], c->dctx, &c->cbuf, &c->ccap, &sl->tok, &sl->cap, r->ix->tok.vocab_size) != 0) return NULL;
  c->loads++;
  sl->g = g; sl->used = c->tick;
  return sl->tok;
}

/* Document d (global, stored order) through cache c: pointer into the cached frame. */
static int doc_get(ShardReader *r, FrameCache *c, int64_t d, const int32_t **ids, int64_t *n) {
  int sh = find_le(r->sh_doc0, r->nsh, d);
  const ShardFile *s = &r->sh[sh];
  int64_t ld = d - r->sh_doc0[sh];
  int64_t f = frame_of_doc(s, ld);
  const uint32_t *t = cache_get(r, c, r->sh_frame0[sh] + f);
  if (!t) return -1;
  *ids = (const int32_t *)(t + (s->doc_first[ld] - s->frames[f].first_token));
  *n = (int64_t)(s->doc_first[ld + 1] - s->doc_first[ld]);
  return 0;
}

static void shuffle_i64(int64_t *a, int64_t n, uint64_t seed) {
  Rng g; rng_seed(&g, seed);
  for (int64_t i = n - 1; i > 0; i--) { int64_t j = (int64_t)rng_below(&g, (uint64_t)i + 1); int64_t t = a[i]; a[i] = a[j]; a[j] = t; }
}

/* Global document id at position p of epoch `epoch` (0 <= p < ndocs). */
static int64_t order_get(ShardReader *r, EpochOrder *e, uint64_t seed, int64_t epoch, int64_t p) {
  if (!r->o.shuffle) return p;
  int64_t F = r->nframes, W = r->win;
  if (e->epoch != epoch || e->seed != seed || !e->frame_perm) {
    if (!e->frame_perm) {
      e->frame_perm = t5g_malloc(F * sizeof *e->frame_perm);
      e->win_start = t5g_malloc(((F + W - 1) / W + 1) * sizeof *e->win_start);
      /* no window holds more than W of the largest frames' documents */
      int64_t cap = W * r->max_frame_docs < r->ndocs ? W * r->max_frame_docs : r->ndocs;
      e->win_docs = t5g_malloc((size_t)cap * sizeof *e->win_docs);
      e->win_cap = (size_t)cap;
    }
    for (int64_t i = 0; i < F; i++) e->frame_perm[i] = i;
    shuffle_i64(e->frame_perm, F, mix3(seed, (uint64_t)epoch, 0));
    e->n_win = (F + W - 1) / W;
    e->win_start[0] = 0;
    for (int64_t w = 0; w < e->n_win; w++) {
      int64_t cnt = 0;
      for (int64_t i = w * W; i < (w + 1) * W && i < F; i++) {
        int64_t g = e->frame_perm[i];
        int sh = find_le(r->sh_frame0, r->nsh, g);
        const ShardFile *s = &r->sh[sh];
        int64_t lf = g - r->sh_frame0[sh];
        cnt += (lf + 1 < s->nframes ? (int64_t)s->frames[lf + 1].first_doc : s->ndocs) - (int64_t)s->frames[lf].first_doc;
      }
      e->win_start[w + 1] = e->win_start[w] + cnt;
    }
    e->epoch = epoch; e->seed = seed; e->cur_win = -1;
  }
  int64_t lo = 0, hi = e->n_win - 1;
  while (lo < hi) { int64_t mid = (lo + hi + 1) / 2; if (e->win_start[mid] <= p) lo = mid; else hi = mid - 1; }
  int64_t w = lo;
  if (e->cur_win != w) {
    size_t need = (size_t)(e->win_start[w + 1] - e->win_start[w]);
    if (need > e->win_cap) { e->win_docs = t5g_realloc(e->win_docs, need * sizeof *e->win_docs); e->win_cap = need; }
    size_t k = 0;
    for (int64_t i = w * W; i < (w + 1) * W && i < F; i++) {
      int64_t g = e->frame_perm[i];
      int sh = find_le(r->sh_frame0, r->nsh, g);
      const ShardFile *s = &r->sh[sh];
      int64_t lf = g - r->sh_frame0[sh];
      int64_t d0 = (int64_t)s->frames[lf].first_doc, d1 = lf + 1 < s->nframes ? (int64_t)s->frames[lf + 1].first_doc : s->ndocs;
      for (int64_t d = d0; d < d1; d++) e->win_docs[k++] = r->sh_doc0[sh] + d;
    }
    T5G_ASSERT(k == need);
    shuffle_i64(e->win_docs, (int64_t)need, mix3(seed, (uint64_t)epoch, (uint64_t)w + 1));
    e->cur_win = w;
  }
  return e->win_docs[p - e->win_start[w]];
}

static int64_t per_rank(const ShardReader *r, const ShardReaderState *st) {
  if (st->base >= (uint64_t)r->ndocs) return 0;
  return (int64_t)(((uint64_t)r->ndocs - st->base) / st->world_size);
}

/* One step of this rank's sequence: 1 document (pointer into ic's cache), 0 end of epoch (state
 * moved to the next epoch), -1 error (state unchanged). */
static int iter_step(ShardReader *r, IterCtx *ic, const int32_t **ids, int64_t *n) {
  ShardReaderState *st = &ic->st;
  if ((int64_t)st->position >= per_rank(r, st)) { st->epoch++; st->base = 0; st->position = 0; return 0; }
  int64_t gpos = (int64_t)(st->base + st->rank + st->position * st->world_size);
  int64_t d = order_get(r, &ic->eo, st->seed, (int64_t)st->epoch, gpos);
  if (!ic->fc.s) cache_init(&ic->fc, r->o.cache_frames, r->max_frame_tok, r->max_frame_csize);
  if (doc_get(r, &ic->fc, d, ids, n) != 0) return -1;
  st->position++;
  return 1;
}

ShardReader *shard_reader_open(const char *dir, const char *split, const ShardReaderOpts *opts) {
  ShardReaderOpts o = opts ? *opts : shard_reader_default_opts();
  if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size) { t5g_error("%s: rank %d of world size %d: expected 0 <= rank < world_size", dir, o.rank, o.world_size); return NULL; }
  if (o.window_frames < 0) { t5g_error("%s: window_frames must be >= 0, got %lld", dir, (long long)o.window_frames); return NULL; }
  if (o.prefetch_docs < 0 || o.prefetch_docs > 1 << 20) { t5g_error("%s: prefetch_docs must be in [0, 2^20], got %d", dir, o.prefetch_docs); return NULL; }
  DatasetIndex *ix = dataset_index_load(dir);
  if (!ix) return NULL;
  const SplitInfo *sp = dataset_index_split(ix, split);
  if (!sp) {
    char names[512] = ""; size_t off = 0;
    for (int i = 0; i < ix->n_splits && off < sizeof names - 70; i++) off += snprintf(names + off, sizeof names - off, "%s\"%s\"", i ? ", " : "", ix->splits[i].name);
    t5g_error("%s/index.json: no split \"%s\" (the dataset has %s)", dir, split, names);
    dataset_index_free(ix); return NULL;
  }
  if (sp->documents == 0) { t5g_error("%s/index.json: split \"%s\" holds no documents", dir, split); dataset_index_free(ix); return NULL; }
  ShardReader *r = t5g_calloc(1, sizeof *r);
  r->ix = ix; r->split = sp; r->o = o;
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->not_empty, NULL);
  pthread_cond_init(&r->not_full, NULL);
  order_init(&r->oq); order_init(&r->it.eo); order_init(&r->pit.eo);
  r->nsh = sp->n_shards;
  r->sh = t5g_calloc(r->nsh, sizeof *r->sh);
  for (int i = 0; i < r->nsh; i++) r->sh[i].fd = -1;
  r->sh_doc0 = t5g_malloc((r->nsh + 1) * sizeof(int64_t));
  r->sh_tok0 = t5g_malloc((r->nsh + 1) * sizeof(int64_t));
  r->sh_frame0 = t5g_malloc((r->nsh + 1) * sizeof(int64_t));
  r->sh_doc0[0] = r->sh_tok0[0] = r->sh_frame0[0] = 0;
  for (int i = 0; i < r->nsh; i++) {
    if (shard_file_open(&r->sh[i], dir, &sp->shards[i], &ix->tok) != 0) { shard_reader_close(r); return NULL; }
    r->sh_doc0[i + 1] = r->sh_doc0[i] + r->sh[i].ndocs;
    r->sh_tok0[i + 1] = r->sh_tok0[i] + r->sh[i].ntok;
    r->sh_frame0[i + 1] = r->sh_frame0[i] + r->sh[i].nframes;
  }
  r->ndocs = r->sh_doc0[r->nsh]; r->ntok = r->sh_tok0[r->nsh]; r->nframes = r->sh_frame0[r->nsh];
  r->win = o.window_frames == 0 || o.window_frames > r->nframes ? r->nframes : o.window_frames;
  for (int i = 0; i < r->nsh; i++) {
    const ShardFile *s = &r->sh[i];
    for (int64_t f = 0; f < s->nframes; f++) {
      const FrameEnt *e = &s->frames[f];
      int64_t nd = (f + 1 < s->nframes ? (int64_t)s->frames[f + 1].first_doc : s->ndocs) - (int64_t)e->first_doc;
      if ((int64_t)e->ntok > r->max_frame_tok) r->max_frame_tok = (int64_t)e->ntok;
      if (e->csize > r->max_frame_csize) r->max_frame_csize = e->csize;
      if (nd > r->max_frame_docs) r->max_frame_docs = nd;
    }
    for (int64_t d = 0; d < s->ndocs; d++)
      if ((int64_t)(s->doc_first[d + 1] - s->doc_first[d]) > r->max_doc_tok) r->max_doc_tok = (int64_t)(s->doc_first[d + 1] - s->doc_first[d]);
  }
  if (r->o.cache_frames <= 0) r->o.cache_frames = (int)((o.shuffle ? (r->win < 64 ? r->win : 64) : 1) + 2);
  if (r->o.cache_frames < 2) r->o.cache_frames = 2;
  cache_init(&r->rc, r->o.cache_frames < 4 ? r->o.cache_frames : 4, 0, 0);
  r->st = (ShardReaderState){.seed = o.seed, .epoch = 0, .base = 0, .position = 0, .rank = (uint32_t)o.rank, .world_size = (uint32_t)o.world_size};
  return r;
}

static void prefetch_stop(ShardReader *r);

void shard_reader_close(ShardReader *r) {
  if (!r) return;
  if (r->running || r->q) prefetch_stop(r);
  if (r->q) { for (int i = 0; i < r->qn; i++) free(r->q[i].ids); free(r->q); }
  for (int i = 0; i < r->nsh; i++) shard_file_free(&r->sh[i]);
  free(r->sh); free(r->sh_doc0); free(r->sh_tok0); free(r->sh_frame0);
  cache_free(&r->rc); cache_free(&r->it.fc); cache_free(&r->pit.fc);
  order_free(&r->oq); order_free(&r->it.eo); order_free(&r->pit.eo);
  pthread_mutex_destroy(&r->mu); pthread_cond_destroy(&r->not_empty); pthread_cond_destroy(&r->not_full);
  dataset_index_free(r->ix);
  free(r);
}

int shard_reader_check_tokenizer(const ShardReader *r, uint64_t hash, int64_t vocab) {
  const ShardTokenizerInfo *t = &r->ix->tok;
  if (t->hash != hash || t->vocab_size != vocab)
    return t5g_error("%s/index.json: the dataset was tokenized with %s%s%s (hash %016llx, vocab %lld), but the expected tokenizer has hash %016llx, vocab %lld; re-run `t5gemma data prepare` with that tokenizer",
                     r->ix->dir, t->name[0] ? "\"" : "", t->name[0] ? t->name : "no tokenizer (pre-tokenized ids)", t->name[0] ? "\"" : "", (unsigned long long)t->hash, (long long)t->vocab_size, (unsigned long long)hash, (long long)vocab);
  return 0;
}
const ShardTokenizerInfo *shard_reader_tokenizer(const ShardReader *r) { return &r->ix->tok; }
const DatasetIndex *shard_reader_index(const ShardReader *r) { return r->ix; }
int64_t shard_reader_num_docs(const ShardReader *r) { return r->ndocs; }
int64_t shard_reader_num_tokens(const ShardReader *r) { return r->ntok; }
int64_t shard_reader_doc_len(const ShardReader *r, int64_t d) {
  if (d < 0 || d >= r->ndocs) return -1;
  int sh = find_le(r->sh_doc0, r->nsh, d);
  int64_t ld = d - r->sh_doc0[sh];
  return (int64_t)(r->sh[sh].doc_first[ld + 1] - r->sh[sh].doc_first[ld]);
}

int shard_reader_doc(ShardReader *r, int64_t i, const int32_t **ids, int64_t *n) {
  if (i < 0 || i >= r->ndocs) return t5g_error("%s: split \"%s\": document %lld out of range [0, %lld)", r->ix->dir, r->split->name, (long long)i, (long long)r->ndocs);
  return doc_get(r, &r->rc, i, ids, n);
}

int shard_reader_tokens(ShardReader *r, int64_t start, int64_t count, int32_t *out) {
  if (start < 0 || count < 0 || start > r->ntok || count > r->ntok - start)
    return t5g_error("%s: split \"%s\": token range [%lld, %lld) outside [0, %lld)", r->ix->dir, r->split->name, (long long)start, (long long)(start + count), (long long)r->ntok);
  while (count > 0) {
    int sh = find_le(r->sh_tok0, r->nsh, start);
    const ShardFile *s = &r->sh[sh];
    int64_t lt = start - r->sh_tok0[sh];
    int64_t f = frame_of_token(s, lt);
    const uint32_t *t = cache_get(r, &r->rc, r->sh_frame0[sh] + f);
    if (!t) return -1;
    int64_t off = lt - (int64_t)s->frames[f].first_token;
    int64_t k = (int64_t)s->frames[f].ntok - off;
    if (k > count) k = count;
    memcpy(out, t + off, (size_t)k * 4);
    out += k; start += k; count -= k;
  }
  return 0;
}

int64_t shard_reader_order(ShardReader *r, uint64_t epoch, int64_t p) {
  if (p < 0 || p >= r->ndocs) return -1;
  return order_get(r, &r->oq, r->st.seed, (int64_t)epoch, p);
}

/* ---- prefetch thread */

static void *prefetch_main(void *arg) {
  ShardReader *r = arg;
  for (;;) {
    pthread_mutex_lock(&r->mu);
    while (r->qcount == r->qn && !r->stop) pthread_cond_wait(&r->not_full, &r->mu);
    if (r->stop) { pthread_mutex_unlock(&r->mu); break; }
    QSlot *q = &r->q[(r->qhead + r->qcount) % r->qn];
    pthread_mutex_unlock(&r->mu);
    const int32_t *ids; int64_t n;
    int rc = iter_step(r, &r->pit, &ids, &n);
    if (rc == 1) {
      if ((size_t)n > q->cap) { q->ids = t5g_realloc(q->ids, (size_t)n * 4); q->cap = (size_t)n; }
      memcpy(q->ids, ids, (size_t)n * 4);
      q->n = n; q->kind = SLOT_DOC;
    } else if (rc == 0) q->kind = SLOT_EPOCH_END;
    else { q->kind = SLOT_ERROR; snprintf(q->err, sizeof q->err, "%s", t5g_last_error()); }
    q->after = r->pit.st;
    pthread_mutex_lock(&r->mu);
    r->qcount++;
    if (rc < 0) r->finished = 1;
    pthread_cond_signal(&r->not_empty);
    pthread_mutex_unlock(&r->mu);
    if (rc < 0) break;
  }
  return NULL;
}

static void prefetch_stop(ShardReader *r) {
  if (r->running) {
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_broadcast(&r->not_full);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thr, NULL);
    r->running = 0;
  }
  r->stop = 0; r->finished = 0; r->qhead = 0; r->qcount = 0; r->held = 0;
}

static int prefetch_start(ShardReader *r) {
  if (!r->q) {
    r->qn = r->o.prefetch_docs + 1;   /* one slot is held by the consumer */
    r->q = t5g_calloc(r->qn, sizeof *r->q);
    for (int i = 0; i < r->qn; i++) { r->q[i].ids = t5g_malloc((size_t)r->max_doc_tok * 4); r->q[i].cap = (size_t)r->max_doc_tok; }
  }
  r->qhead = r->qcount = 0; r->held = 0; r->stop = 0; r->finished = 0;
  r->pit.st = r->st;
  if (pthread_create(&r->thr, NULL, prefetch_main, r) != 0) return t5g_error("%s: cannot start the prefetch thread", r->ix->dir);
  r->running = 1;
  return 0;
}

int shard_reader_next(ShardReader *r, const int32_t **ids, int64_t *n) {
  if (r->o.prefetch_docs <= 0) {
    r->it.st = r->st;
    int rc = iter_step(r, &r->it, ids, n);
    if (rc >= 0) r->st = r->it.st;
    return rc;
  }
  if (!r->running && prefetch_start(r) != 0) return -1;
  pthread_mutex_lock(&r->mu);
  if (r->held) { r->qhead = (r->qhead + 1) % r->qn; r->qcount--; r->held = 0; pthread_cond_signal(&r->not_full); }
  while (r->qcount == 0) pthread_cond_wait(&r->not_empty, &r->mu);
  QSlot *q = &r->q[r->qhead];
  r->held = 1;
  pthread_mutex_unlock(&r->mu);
  if (q->kind == SLOT_ERROR) {
    t5g_error("%s", q->err);
    prefetch_stop(r);       /* the next call restarts from the consumer state */
    return -1;
  }
  r->st = q->after;
  if (q->kind == SLOT_EPOCH_END) return 0;
  *ids = q->ids; *n = q->n;
  return 1;
}

void shard_reader_get_state(const ShardReader *r, ShardReaderState *st) { *st = r->st; }

int shard_reader_set_state(ShardReader *r, const ShardReaderState *st) {
  if (st->world_size < 1 || st->rank >= st->world_size)
    return t5g_error("%s: resume state: rank %u of world size %u: expected 0 <= rank < world_size", r->ix->dir, st->rank, st->world_size);
  if (st->base > (uint64_t)r->ndocs || (int64_t)st->position > per_rank(r, st))
    return t5g_error("%s: resume state: base %llu, position %llu lie beyond an epoch of split \"%s\" (%lld documents over %u ranks); was it saved for another dataset?",
                     r->ix->dir, (unsigned long long)st->base, (unsigned long long)st->position, r->split->name, (long long)r->ndocs, st->world_size);
  prefetch_stop(r);
  r->st = *st;
  return 0;
}

ShardReaderState shard_state_resplit(const ShardReaderState *st, int new_rank, int new_world_size) {
  ShardReaderState s = *st;
  s.base = st->base + st->position * st->world_size;
  s.position = 0;
  s.rank = (uint32_t)new_rank; s.world_size = (uint32_t)new_world_size;
  return s;
}

void shard_state_format(const ShardReaderState *st, char *buf, size_t n) {
  snprintf(buf, n, "seed=%llu epoch=%llu base=%llu position=%llu rank=%u world_size=%u", (unsigned long long)st->seed,
           (unsigned long long)st->epoch, (unsigned long long)st->base, (unsigned long long)st->position, st->rank, st->world_size);
}

int shard_state_parse(const char *text, ShardReaderState *st) {
  unsigned long long s, e, b, p; unsigned rk, ws; int used = 0;
  if (!text || sscanf(text, " seed=%llu epoch=%llu base=%llu position=%llu rank=%u world_size=%u %n", &s, &e, &b, &p, &rk, &ws, &used) != 6 || text[used] != 0)
    return t5g_error("data reader state: expected \"seed=S epoch=E base=B position=P rank=R world_size=W\", found \"%s\"", text ? text : "(null)");
  *st = (ShardReaderState){.seed = s, .epoch = e, .base = b, .position = p, .rank = rk, .world_size = ws};
  return 0;
}

static int source_forever(void *ctx, const int32_t **ids, int64_t *n) {
  ShardReader *r = ctx;
  for (int tries = 0; tries < 2; tries++) {
    int rc = shard_reader_next(r, ids, n);
    if (rc != 0) return rc;
  }
  return t5g_error("%s: split \"%s\" has %lld documents, too few for %u ranks (each rank needs at least one per epoch)",
                   r->ix->dir, r->split->name, (long long)r->ndocs, r->st.world_size);
}
static int source_epoch(void *ctx, const int32_t **ids, int64_t *n) { return shard_reader_next((ShardReader *)ctx, ids, n); }

DocSource shard_reader_source(ShardReader *r) { return (DocSource){.ctx = r, .next = source_forever}; }
DocSource shard_reader_source_epoch(ShardReader *r) { return (DocSource){.ctx = r, .next = source_epoch}; }
