/* test_shards.c: the token-shard format: XXH64 against libzstd's frame checksums, write/read
 * round trips (sequential, random access, token ranges across frames and shards), shuffling,
 * rank splitting, resume (same and different world size), prefetch determinism, and the
 * verifier / reader on truncated, corrupted, missing and mismatched shards. */
#include "tests/check.h"
#include "data/shards.h"
#include "model/util.h"
#include "model/rng.h"
#include <cjson/cJSON.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <zstd.h>

#define VOCAB 256000

/* ---- fixtures: synthetic documents written once into a temporary dataset */

typedef struct { int n; int32_t **ids; int64_t *len; int64_t tokens; } Docs;
static Docs D;                 /* train split reference */
static Docs V;                 /* val split reference */
static char g_dir[256];

static void make_docs(Docs *d, int n, uint64_t seed) {
  Rng r; rng_seed(&r, seed);
  d->n = n; d->ids = t5g_malloc(n * sizeof *d->ids); d->len = t5g_malloc(n * sizeof *d->len); d->tokens = 0;
  for (int i = 0; i < n; i++) {
    int64_t L = 1 + (int64_t)rng_below(&r, 300);
    if (i % 37 == 5) L = 700 + (int64_t)rng_below(&r, 900);   /* longer than a frame: a frame of its own */
    d->len[i] = L; d->tokens += L;
    d->ids[i] = t5g_malloc(L * 4);
    for (int64_t k = 0; k < L; k++) d->ids[i][k] = (int32_t)rng_below(&r, VOCAB);
    d->ids[i][0] = 65536 + i;                                   /* ids above 16 bits, and unique per doc */
  }
}

static ShardTokenizerInfo test_tok(void) {
  ShardTokenizerInfo t; memset(&t, 0, sizeof t);
  snprintf(t.name, sizeof t.name, "synthetic");
  t.hash = 0x0123456789abcdefULL; t.vocab_size = VOCAB; t.bos_id = 2; t.eos_id = 1; t.pad_id = 0;
  return t;
}

static int write_dataset(const char *dir) {
  const char *splits[] = {"train", "val"};
  ShardTokenizerInfo t = test_tok();
  ShardWriterOpts o = shard_writer_default_opts();
  o.frame_tokens = 500; o.shard_tokens = 6000; o.level = 3;
  DatasetWriter *w = dataset_writer_open(dir, splits, 2, &t, &o);
  if (!w) return -1;
  for (int i = 0; i < D.n; i++) if (dataset_writer_add(w, 0, D.ids[i], D.len[i]) != 0) return -1;
  for (int i = 0; i < V.n; i++) if (dataset_writer_add(w, 1, V.ids[i], V.len[i]) != 0) return -1;
  dataset_writer_set_source(w, "{\"test\": true}");
  return dataset_writer_finish(w);
}

static int same_doc(const int32_t *a, int64_t na, const Docs *d, int64_t i) {
  return na == d->len[i] && memcmp(a, d->ids[i], na * 4) == 0;
}

__attribute__((constructor(200))) static void setup(void) {
  make_docs(&D, 400, 1);
  make_docs(&V, 30, 2);
  snprintf(g_dir, sizeof g_dir, "/tmp/t5g_test_shards_%d", (int)getpid());
  if (write_dataset(g_dir) != 0) { fprintf(stderr, "setup: %s\n", t5g_last_error()); exit(1); }
}
__attribute__((destructor)) static void teardown(void) {
  char cmd[600]; snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'-*", g_dir, g_dir);
  if (system(cmd) != 0) fprintf(stderr, "teardown: rm failed\n");
}

static ShardReader *open_train(uint64_t seed, int shuffle, int64_t window, int rank, int ws, int prefetch) {
  ShardReaderOpts o = shard_reader_default_opts();
  o.seed = seed; o.shuffle = shuffle; o.window_frames = window; o.rank = rank; o.world_size = ws; o.prefetch_docs = prefetch;
  ShardReader *r = shard_reader_open(g_dir, "train", &o);
  if (!r) fprintf(stderr, "open: %s\n", t5g_last_error());
  return r;
}

/* ---- XXH64 */

TEST(xxh64_matches_zstd_frame_checksum) {
  /* Known value from the xxHash specification's test vectors: XXH64 of the empty input, seed 0. */
  CHECK(t5g_xxh64("", 0, 0) == 0xEF46DB3751D8E999ULL);
  /* libzstd writes the low 32 bits of XXH64(content, seed 0) at the end of a frame: an
   * independent implementation to compare against, for every tail length and several stripes. */
  uint8_t data[5000];
  Rng r; rng_seed(&r, 7);
  for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)rng_u64(&r);
  ZSTD_CCtx *c = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
  uint8_t out[6000];
  size_t lens[] = {0, 1, 3, 4, 7, 8, 15, 31, 32, 33, 63, 64, 65, 100, 257, 1000, 4096, 4999};
  for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
    size_t n = lens[k];
    size_t z = ZSTD_compress2(c, out, sizeof out, data, n);
    CHECK(!ZSTD_isError(z) && z >= 4);
    uint32_t stored = out[z - 4] | (out[z - 3] << 8) | (out[z - 2] << 16) | ((uint32_t)out[z - 1] << 24);
    uint64_t h = t5g_xxh64(data, n, 0);
    CHECK_MSG((uint32_t)h == stored, "length %zu: xxh64 low half %08x, zstd stored %08x", n, (uint32_t)h, stored);
    /* streaming in uneven pieces gives the same value */
    Xxh64State s; t5g_xxh64_init(&s, 0);
    size_t off = 0, step = 1;
    while (off < n) { size_t t = n - off < step ? n - off : step; t5g_xxh64_update(&s, data + off, t); off += t; step = step * 3 % 41 + 1; }
    CHECK(t5g_xxh64_digest(&s) == h);
  }
  ZSTD_freeCCtx(c);
  CHECK(t5g_xxh64(data, 100, 1) != t5g_xxh64(data, 100, 0));
}

/* ---- round trips */

TEST(index_describes_the_dataset) {
  DatasetIndex *ix = dataset_index_load(g_dir);
  CHECK(ix);
  CHECK_EQ_INT(ix->n_splits, 2);
  const SplitInfo *tr = dataset_index_split(ix, "train"), *va = dataset_index_split(ix, "val");
  CHECK(tr && va);
  CHECK_EQ_INT(tr->documents, D.n); CHECK_EQ_INT(tr->tokens, D.tokens);
  CHECK_EQ_INT(va->documents, V.n); CHECK_EQ_INT(va->tokens, V.tokens);
  CHECK(tr->n_shards >= 4);            /* 6000-token shards */
  CHECK_EQ_INT(tr->raw_bytes, 4 * D.tokens);
  CHECK(tr->compressed_bytes > 0 && tr->compressed_bytes < tr->raw_bytes);
  CHECK_STR(tr->shards[0].file, "train-00000.tks");
  CHECK_STR(ix->tok.name, "synthetic");
  CHECK(ix->tok.hash == 0x0123456789abcdefULL);
  CHECK_EQ_INT(ix->tok.vocab_size, VOCAB);
  CHECK_EQ_INT(ix->tok.bos_id, 2);
  CHECK_EQ_INT(ix->documents, D.n + V.n);
  int64_t frames = 0;
  for (int k = 0; k < tr->n_shards; k++) { frames += tr->shards[k].frames; CHECK(tr->shards[k].tokens >= 6000 || k == tr->n_shards - 1); }
  CHECK(frames > D.tokens / 500);     /* frames of <= ~500 tokens, except single long documents */
  dataset_index_free(ix);
}

TEST(sequential_read_returns_every_document) {
  ShardReader *r = open_train(0, 0, 8, 0, 1, 0);
  CHECK(r);
  CHECK_EQ_INT(shard_reader_num_docs(r), D.n);
  CHECK_EQ_INT(shard_reader_num_tokens(r), D.tokens);
  const int32_t *ids; int64_t n;
  for (int i = 0; i < D.n; i++) {
    CHECK_EQ_INT(shard_reader_next(r, &ids, &n), 1);
    CHECK_MSG(same_doc(ids, n, &D, i), "document %d differs", i);
  }
  CHECK_EQ_INT(shard_reader_next(r, &ids, &n), 0);       /* end of the epoch */
  ShardReaderState st; shard_reader_get_state(r, &st);
  CHECK_EQ_INT(st.epoch, 1); CHECK_EQ_INT(st.position, 0);
  CHECK_EQ_INT(shard_reader_next(r, &ids, &n), 1);       /* next epoch starts again */
  CHECK(same_doc(ids, n, &D, 0));
  shard_reader_close(r);
  /* the val split */
  ShardReaderOpts o = shard_reader_default_opts(); o.shuffle = 0;
  r = shard_reader_open(g_dir, "val", &o);
  CHECK(r);
  for (int i = 0; i < V.n; i++) { CHECK_EQ_INT(shard_reader_next(r, &ids, &n), 1); CHECK(same_doc(ids, n, &V, i)); }
  shard_reader_close(r);
  CHECK(shard_reader_open(g_dir, "test", &o) == NULL);
  CHECK(strstr(t5g_last_error(), "no split \"test\""));
}

TEST(random_access_documents) {
  ShardReader *r = open_train(0, 0, 8, 0, 1, 0);
  CHECK(r);
  Rng g; rng_seed(&g, 3);
  const int32_t *ids; int64_t n;
  for (int t = 0; t < 3 * D.n; t++) {
    int64_t i = t < D.n ? D.n - 1 - t : (int64_t)rng_below(&g, D.n);
    CHECK_EQ_INT(shard_reader_doc(r, i, &ids, &n), 0);
    CHECK_MSG(same_doc(ids, n, &D, i), "document %lld differs", (long long)i);
    CHECK_EQ_INT(shard_reader_doc_len(r, i), D.len[i]);
  }
  CHECK_EQ_INT(shard_reader_doc(r, D.n, &ids, &n), -1);
  CHECK_EQ_INT(shard_reader_doc_len(r, -1), -1);
  shard_reader_close(r);
}

TEST(token_ranges_cross_frames_and_shards) {
  ShardReader *r = open_train(0, 0, 8, 0, 1, 0);
  CHECK(r);
  int32_t *all = t5g_malloc(D.tokens * 4), *got = t5g_malloc(D.tokens * 4);
  int64_t o = 0;
  for (int i = 0; i < D.n; i++) { memcpy(all + o, D.ids[i], D.len[i] * 4); o += D.len[i]; }
  CHECK_EQ_INT(shard_reader_tokens(r, 0, D.tokens, got), 0);
  CHECK(memcmp(got, all, D.tokens * 4) == 0);
  Rng g; rng_seed(&g, 4);
  for (int t = 0; t < 300; t++) {
    int64_t s = (int64_t)rng_below(&g, D.tokens);
    int64_t c = (int64_t)rng_below(&g, t % 3 == 0 ? 8000 : 1200);
    if (s + c > D.tokens) c = D.tokens - s;
    CHECK_EQ_INT(shard_reader_tokens(r, s, c, got), 0);
    CHECK_MSG(memcmp(got, all + s, c * 4) == 0, "range [%lld, %lld) differs", (long long)s, (long long)(s + c));
  }
  CHECK_EQ_INT(shard_reader_tokens(r, D.tokens - 5, 6, got), -1);
  free(all); free(got);
  shard_reader_close(r);
}

/* ---- shuffling */

static int is_permutation(const int64_t *p, int64_t n) {
  char *seen = calloc(n, 1); int ok = 1;
  for (int64_t i = 0; i < n && ok; i++) { if (p[i] < 0 || p[i] >= n || seen[p[i]]) ok = 0; else seen[p[i]] = 1; }
  free(seen);
  return ok;
}

TEST(shuffle_is_a_deterministic_permutation) {
  int64_t windows[] = {8, 1, 0};
  for (int wi = 0; wi < 3; wi++) {
    ShardReader *a = open_train(42, 1, windows[wi], 0, 1, 0), *b = open_train(42, 1, windows[wi], 0, 1, 0), *c = open_train(43, 1, windows[wi], 0, 1, 0);
    CHECK(a && b && c);
    int64_t *p0 = t5g_malloc(D.n * 8), *p1 = t5g_malloc(D.n * 8), *q0 = t5g_malloc(D.n * 8), *s0 = t5g_malloc(D.n * 8);
    int64_t fixed = 0, diff_epoch = 0, diff_seed = 0, adjacent = 0;
    for (int p = 0; p < D.n; p++) {
      p0[p] = shard_reader_order(a, 0, p); p1[p] = shard_reader_order(a, 1, p);
      q0[p] = shard_reader_order(b, 0, p); s0[p] = shard_reader_order(c, 0, p);
      fixed += p0[p] == p; diff_epoch += p0[p] != p1[p]; diff_seed += p0[p] != s0[p];
      if (p && p0[p] == p0[p - 1] + 1) adjacent++;
    }
    CHECK(is_permutation(p0, D.n) && is_permutation(p1, D.n) && is_permutation(s0, D.n));
    CHECK(memcmp(p0, q0, D.n * 8) == 0);                 /* same seed and epoch: same order */
    CHECK_MSG(fixed < D.n / 10, "window %lld: %lld fixed points", (long long)windows[wi], (long long)fixed);
    CHECK(diff_epoch > D.n / 2 && diff_seed > D.n / 2);
    /* windows of one frame keep a frame's documents together (about 3 per frame here) */
    CHECK_MSG(windows[wi] == 1 || adjacent < D.n / 10, "window %lld: %lld stored-order neighbours stay adjacent", (long long)windows[wi], (long long)adjacent);
    /* the documents read in epoch order are the right ones, across two epochs */
    const int32_t *ids; int64_t n;
    for (int e = 0; e < 2; e++) {
      for (int p = 0; p < D.n; p++) {
        CHECK_EQ_INT(shard_reader_next(a, &ids, &n), 1);
        CHECK_MSG(same_doc(ids, n, &D, e ? p1[p] : p0[p]), "epoch %d position %d", e, p);
      }
      CHECK_EQ_INT(shard_reader_next(a, &ids, &n), 0);
    }
    free(p0); free(p1); free(q0); free(s0);
    shard_reader_close(a); shard_reader_close(b); shard_reader_close(c);
  }
}

/* ---- ranks */

TEST(rank_split_is_disjoint_and_covering) {
  const int ws = 3;
  ShardReader *ref = open_train(9, 1, 8, 0, 1, 0);
  CHECK(ref);
  int per = D.n / ws;
  char *seen = calloc(D.n, 1);
  for (int r = 0; r < ws; r++) {
    ShardReader *rd = open_train(9, 1, 8, r, ws, 0);
    CHECK(rd);
    const int32_t *ids; int64_t n;
    for (int k = 0; k < per; k++) {
      CHECK_EQ_INT(shard_reader_next(rd, &ids, &n), 1);
      int64_t d = shard_reader_order(ref, 0, r + (int64_t)k * ws);
      CHECK_MSG(same_doc(ids, n, &D, d), "rank %d doc %d", r, k);
      CHECK_MSG(!seen[d], "document %lld read twice", (long long)d);
      seen[d] = 1;
    }
    CHECK_EQ_INT(shard_reader_next(rd, &ids, &n), 0);      /* all ranks: same count, remainder dropped */
    shard_reader_close(rd);
  }
  int covered = 0; for (int i = 0; i < D.n; i++) covered += seen[i];
  CHECK_EQ_INT(covered, per * ws);
  /* the dropped remainder is the tail of the epoch order */
  for (int p = per * ws; p < D.n; p++) CHECK(!seen[shard_reader_order(ref, 0, p)]);
  free(seen);
  shard_reader_close(ref);
}

/* ---- resume */

TEST(resume_continues_exactly) {
  ShardReader *a = open_train(5, 1, 4, 1, 2, 0);
  CHECK(a);
  const int32_t *ids; int64_t n;
  int k = 150;                                   /* per rank 200 per epoch: resume inside epoch 0 */
  for (int i = 0; i < k; i++) CHECK_EQ_INT(shard_reader_next(a, &ids, &n), 1);
  ShardReaderState st; shard_reader_get_state(a, &st);
  CHECK_EQ_INT(st.position, k); CHECK_EQ_INT(st.rank, 1); CHECK_EQ_INT(st.world_size, 2); CHECK_EQ_INT(st.seed, 5);
  char text[256]; shard_state_format(&st, text, sizeof text);
  ShardReaderState st2; CHECK_EQ_INT(shard_state_parse(text, &st2), 0);
  CHECK(memcmp(&st, &st2, sizeof st) == 0);
  CHECK_EQ_INT(shard_state_parse("seed=1 epoch=2", &st2), -1);
  ShardReader *b = open_train(999, 1, 4, 0, 1, 0);   /* seed, rank and world size come from the state */
  CHECK(b);
  CHECK_EQ_INT(shard_reader_set_state(b, &st), 0);
  int ends_a = 0, ends_b = 0;
  for (int i = 0; i < 250; i++) {                /* 50 left in epoch 0, its end, 199 of epoch 1 */
    const int32_t *ia, *ib; int64_t na, nb;
    int ra = shard_reader_next(a, &ia, &na), rb = shard_reader_next(b, &ib, &nb);
    CHECK_EQ_INT(ra, rb);
    if (ra == 0) { ends_a++; ends_b++; continue; }
    CHECK(ra == 1 && na == nb && memcmp(ia, ib, na * 4) == 0);
  }
  CHECK_EQ_INT(ends_a, 1);
  ShardReaderState sa, sb; shard_reader_get_state(a, &sa); shard_reader_get_state(b, &sb);
  CHECK(memcmp(&sa, &sb, sizeof sa) == 0);
  CHECK_EQ_INT(sa.epoch, 1);
  /* a state beyond the epoch is refused */
  ShardReaderState bad = st; bad.position = 1000;
  CHECK_EQ_INT(shard_reader_set_state(b, &bad), -1);
  bad = st; bad.rank = 2;
  CHECK_EQ_INT(shard_reader_set_state(b, &bad), -1);
  shard_reader_close(a); shard_reader_close(b);
}

TEST(resume_with_a_different_world_size) {
  /* 2 ranks read k documents each, then the job resumes on 3 ranks: the union of what the new
   * ranks read continues the global epoch order at position 2k, interleaved by rank. */
  const int k = 77, m = 30;
  ShardReader *ref = open_train(11, 1, 8, 0, 1, 0);
  CHECK(ref);
  ShardReaderState saved[2];
  for (int r = 0; r < 2; r++) {
    ShardReader *rd = open_train(11, 1, 8, r, 2, r);   /* one with prefetch, one without */
    const int32_t *ids; int64_t n;
    for (int i = 0; i < k; i++) {
      CHECK_EQ_INT(shard_reader_next(rd, &ids, &n), 1);
      CHECK(same_doc(ids, n, &D, shard_reader_order(ref, 0, r + 2 * i)));
    }
    shard_reader_get_state(rd, &saved[r]);
    shard_reader_close(rd);
  }
  CHECK(saved[0].position == saved[1].position && saved[0].base == saved[1].base);
  char *seen = calloc(D.n, 1);
  for (int r = 0; r < 2 * k; r++) seen[shard_reader_order(ref, 0, r)] = 1;
  int64_t base = 2 * k, per_new = (D.n - base) / 3;
  for (int r = 0; r < 3; r++) {
    ShardReaderState st = shard_state_resplit(&saved[0], r, 3);
    CHECK_EQ_INT(st.base, base); CHECK_EQ_INT(st.position, 0);
    ShardReader *rd = open_train(0, 1, 8, 0, 1, 0);
    CHECK_EQ_INT(shard_reader_set_state(rd, &st), 0);
    const int32_t *ids; int64_t n;
    for (int j = 0; j < per_new; j++) {
      CHECK_EQ_INT(shard_reader_next(rd, &ids, &n), 1);
      int64_t d = shard_reader_order(ref, 0, base + r + 3 * j);
      CHECK_MSG(same_doc(ids, n, &D, d), "new rank %d, document %d", r, j);
      CHECK(!seen[d]); seen[d] = 1;
    }
    CHECK_EQ_INT(shard_reader_next(rd, &ids, &n), 0);
    /* the next epoch starts from the beginning of epoch 1's order, with base 0 */
    ShardReaderState s2; shard_reader_get_state(rd, &s2);
    CHECK_EQ_INT(s2.epoch, 1); CHECK_EQ_INT(s2.base, 0);
    for (int j = 0; j < m; j++) {
      CHECK_EQ_INT(shard_reader_next(rd, &ids, &n), 1);
      CHECK(same_doc(ids, n, &D, shard_reader_order(ref, 1, r + 3 * j)));
    }
    shard_reader_close(rd);
  }
  int covered = 0; for (int i = 0; i < D.n; i++) covered += seen[i];
  CHECK_EQ_INT(covered, 2 * k + 3 * per_new);
  free(seen);
  shard_reader_close(ref);
}

/* ---- prefetch */

TEST(prefetch_gives_the_same_sequence) {
  ShardReader *a = open_train(21, 1, 4, 1, 2, 0), *b = open_train(21, 1, 4, 1, 2, 6);
  CHECK(a && b);
  ShardReaderState mid;
  for (int i = 0; i < 520; i++) {                /* 2.5 epochs of 200 per rank, epoch ends included */
    const int32_t *ia, *ib; int64_t na, nb;
    int ra = shard_reader_next(a, &ia, &na), rb = shard_reader_next(b, &ib, &nb);
    CHECK_EQ_INT(ra, rb);
    if (ra == 1) CHECK(na == nb && memcmp(ia, ib, na * 4) == 0);
    ShardReaderState sa, sb; shard_reader_get_state(a, &sa); shard_reader_get_state(b, &sb);
    CHECK_MSG(memcmp(&sa, &sb, sizeof sa) == 0, "state differs after call %d", i);
    if (i == 250) mid = sa;
  }
  /* set_state while the prefetch thread runs ahead: restarts at the state */
  CHECK_EQ_INT(shard_reader_set_state(b, &mid), 0);
  ShardReader *c = open_train(21, 1, 4, 1, 2, 0);
  CHECK_EQ_INT(shard_reader_set_state(c, &mid), 0);
  for (int i = 0; i < 100; i++) {
    const int32_t *ib, *ic; int64_t nb, nc;
    int rb = shard_reader_next(b, &ib, &nb), rc = shard_reader_next(c, &ic, &nc);
    CHECK_EQ_INT(rb, rc);
    if (rb == 1) CHECK(nb == nc && memcmp(ib, ic, nb * 4) == 0);
  }
  shard_reader_close(a); shard_reader_close(b); shard_reader_close(c);
}

TEST(doc_source_wraps_epochs) {
  ShardReader *r = open_train(3, 1, 8, 0, 1, 2);
  DocSource src = shard_reader_source(r);
  const int32_t *ids; int64_t n;
  int64_t count0[400] = {0};
  for (int i = 0; i < 2 * D.n; i++) {
    CHECK_EQ_INT(src.next(src.ctx, &ids, &n), 1);
    CHECK(n >= 1);
    count0[ids[0] - 65536]++;                  /* first id identifies the document */
  }
  for (int i = 0; i < D.n; i++) CHECK_EQ_INT(count0[i], 2);
  ShardReaderState st; shard_reader_get_state(r, &st);
  CHECK_EQ_INT(st.epoch, 1); CHECK_EQ_INT(st.position, D.n);
  shard_reader_close(r);
  /* one-epoch source ends */
  ShardReaderOpts o = shard_reader_default_opts();
  r = shard_reader_open(g_dir, "val", &o);
  src = shard_reader_source_epoch(r);
  int k = 0, rc;
  while ((rc = src.next(src.ctx, &ids, &n)) == 1) k++;
  CHECK_EQ_INT(rc, 0); CHECK_EQ_INT(k, V.n);
  shard_reader_close(r);
  /* more ranks than documents: the forever source reports it instead of looping */
  o.world_size = 40; o.rank = 39;
  r = shard_reader_open(g_dir, "val", &o);
  src = shard_reader_source(r);
  CHECK_EQ_INT(src.next(src.ctx, &ids, &n), -1);
  CHECK(strstr(t5g_last_error(), "too few"));
  shard_reader_close(r);
}

TEST(tokenizer_identity_check) {
  ShardReader *r = open_train(0, 0, 8, 0, 1, 0);
  CHECK_EQ_INT(shard_reader_check_tokenizer(r, 0x0123456789abcdefULL, VOCAB), 0);
  CHECK_EQ_INT(shard_reader_check_tokenizer(r, 0x0123456789abcdeeULL, VOCAB), -1);
  CHECK(strstr(t5g_last_error(), "synthetic"));
  CHECK_EQ_INT(shard_reader_check_tokenizer(r, 0x0123456789abcdefULL, 256128), -1);
  CHECK_STR(shard_reader_tokenizer(r)->name, "synthetic");
  shard_reader_close(r);
}

TEST(writer_rejects_bad_documents) {
  char dir[300]; snprintf(dir, sizeof dir, "%s-w", g_dir);
  const char *splits[] = {"train"};
  ShardTokenizerInfo t = test_tok();
  DatasetWriter *w = dataset_writer_open(dir, splits, 1, &t, NULL);
  CHECK(w);
  int32_t bad[3] = {5, VOCAB, 7};
  CHECK_EQ_INT(dataset_writer_add(w, 0, bad, 3), -1);
  CHECK(strstr(t5g_last_error(), "outside the vocabulary"));
  int32_t neg[1] = {-1};
  CHECK_EQ_INT(dataset_writer_add(w, 0, neg, 1), -1);
  CHECK_EQ_INT(dataset_writer_add(w, 0, bad, 0), -1);
  CHECK_EQ_INT(dataset_writer_add(w, 1, bad, 1), -1);
  int32_t ok[2] = {1, 2};
  CHECK_EQ_INT(dataset_writer_add(w, 0, ok, 2), 0);
  CHECK_EQ_INT(dataset_writer_finish(w), 0);
  CHECK_EQ_INT(dataset_verify(dir, NULL, NULL), 0);
  const char *badsplit[] = {"Train/x"};
  CHECK(dataset_writer_open(dir, badsplit, 1, &t, NULL) == NULL);
}

/* ---- corruption: each problem is reported by file name and never read as data */

static void copy_dataset(const char *dst) {
  char cmd[1024]; snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", dst, g_dir, dst);
  if (system(cmd) != 0) fprintf(stderr, "copy failed\n");
}
static int verify_report(const char *dir, char **text) {
  size_t len; FILE *f = open_memstream(text, &len);
  int n = dataset_verify(dir, f, NULL);
  fclose(f);
  return n;
}
static void flip_byte(const char *path, int64_t off) {
  FILE *f = fopen(path, "r+b");
  fseeko(f, off, SEEK_SET); int c = fgetc(f);
  fseeko(f, off, SEEK_SET); fputc(c ^ 0x10, f);
  fclose(f);
}
static uint64_t header_u64(const char *path, int off) {
  uint8_t b[8] = {0}; FILE *f = fopen(path, "rb");
  fseeko(f, off, SEEK_SET); if (fread(b, 1, 8, f) != 8) b[0] = 0;
  fclose(f);
  uint64_t v = 0; for (int i = 7; i >= 0; i--) v = (v << 8) | b[i];
  return v;
}

TEST(verify_accepts_a_sound_dataset) {
  char *rep = NULL;
  CHECK_EQ_INT(verify_report(g_dir, &rep), 0);
  CHECK_MSG(rep && rep[0] == 0, "report: %s", rep ? rep : "");
  free(rep);
}

TEST(verify_catches_a_truncated_shard) {
  char dir[300], path[400]; snprintf(dir, sizeof dir, "%s-trunc", g_dir);
  copy_dataset(dir);
  snprintf(path, sizeof path, "%s/train-00001.tks", dir);
  struct stat st; stat(path, &st);
  CHECK(truncate(path, st.st_size - 100) == 0);
  char *rep = NULL;
  CHECK(verify_report(dir, &rep) >= 1);
  CHECK_MSG(strstr(rep, path) && strstr(rep, "truncated"), "report: %s", rep);
  CHECK(!strstr(rep, "train-00000.tks"));
  free(rep);
  CHECK(shard_reader_open(dir, "train", NULL) == NULL);
  CHECK_MSG(strstr(t5g_last_error(), path), "error: %s", t5g_last_error());
  ShardReader *v = shard_reader_open(dir, "val", NULL);   /* the other split still opens */
  CHECK(v);
  shard_reader_close(v);
}

TEST(verify_catches_a_flipped_byte_in_a_frame) {
  char dir[300], path[400]; snprintf(dir, sizeof dir, "%s-frame", g_dir);
  copy_dataset(dir);
  snprintf(path, sizeof path, "%s/train-00002.tks", dir);
  /* the second frame of the shard: its offset is in the frame table */
  uint64_t ft = header_u64(path, 48);
  uint64_t off1 = header_u64(path, (int)ft + 48), size1 = header_u64(path, (int)ft + 56);
  flip_byte(path, (int64_t)(off1 + size1 / 2));
  char *rep = NULL;
  CHECK(verify_report(dir, &rep) >= 1);
  CHECK_MSG(strstr(rep, path) && strstr(rep, "frame 1"), "report: %s", rep);
  free(rep);
  /* the reader opens (frames are checked when read), refuses that frame's documents by name and
   * returns every other document intact */
  ShardReaderOpts o = shard_reader_default_opts(); o.shuffle = 0;
  ShardReader *r = shard_reader_open(dir, "train", &o);
  CHECK(r);
  const int32_t *ids; int64_t n; int bad = 0, good = 0;
  for (int i = 0; i < D.n; i++) {
    int rc = shard_reader_doc(r, i, &ids, &n);
    if (rc != 0) { bad++; CHECK_MSG(strstr(t5g_last_error(), path), "error: %s", t5g_last_error()); }
    else { good++; CHECK_MSG(same_doc(ids, n, &D, i), "document %d returned with wrong content", i); }
  }
  CHECK(bad >= 1 && good >= D.n - 20);
  /* sequential reading stops with the error, with and without prefetch */
  for (int pf = 0; pf < 2; pf++) {
    ShardReaderOpts o2 = o; o2.prefetch_docs = pf ? 3 : 0;
    ShardReader *s = shard_reader_open(dir, "train", &o2);
    int rc, k = 0;
    while ((rc = shard_reader_next(s, &ids, &n)) == 1) { CHECK(same_doc(ids, n, &D, k)); k++; }
    CHECK_EQ_INT(rc, -1);
    CHECK(strstr(t5g_last_error(), path));
    CHECK(k < D.n);
    ShardReaderState st; shard_reader_get_state(s, &st);
    CHECK_EQ_INT(st.position, k);
    CHECK_EQ_INT(shard_reader_next(s, &ids, &n), -1);          /* still refused, not skipped */
    shard_reader_close(s);
  }
  shard_reader_close(r);
}

TEST(verify_catches_a_flipped_byte_in_the_document_table) {
  char dir[300], path[400]; snprintf(dir, sizeof dir, "%s-doctab", g_dir);
  copy_dataset(dir);
  snprintf(path, sizeof path, "%s/train-00000.tks", dir);
  uint64_t dt = header_u64(path, 56);
  flip_byte(path, (int64_t)dt + 16 * 3 + 8);           /* length of document 3 */
  char *rep = NULL;
  CHECK(verify_report(dir, &rep) >= 1);
  CHECK_MSG(strstr(rep, path) && strstr(rep, "document table"), "report: %s", rep);
  free(rep);
  CHECK(shard_reader_open(dir, "train", NULL) == NULL);
  CHECK_MSG(strstr(t5g_last_error(), path) && strstr(t5g_last_error(), "document table"), "error: %s", t5g_last_error());
}

TEST(verify_catches_a_missing_shard) {
  char dir[300], path[400]; snprintf(dir, sizeof dir, "%s-missing", g_dir);
  copy_dataset(dir);
  snprintf(path, sizeof path, "%s/val-00000.tks", dir);
  CHECK(unlink(path) == 0);
  char *rep = NULL;
  CHECK_EQ_INT(verify_report(dir, &rep), 1);
  CHECK_MSG(strstr(rep, path) && strstr(rep, "missing"), "report: %s", rep);
  free(rep);
  CHECK(shard_reader_open(dir, "val", NULL) == NULL);
  CHECK(strstr(t5g_last_error(), path));
  ShardReader *r = shard_reader_open(dir, "train", NULL);
  CHECK(r); shard_reader_close(r);
}

static void rewrite_index(const char *dir, int64_t delta_docs, int coherent) {
  char path[400]; snprintf(path, sizeof path, "%s/index.json", dir);
  char *text = t5g_read_file(path, NULL);
  cJSON *root = cJSON_Parse(text); free(text);
  cJSON *sp = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "splits"), 0);
  cJSON *sh = cJSON_GetArrayItem(cJSON_GetObjectItem(sp, "shards"), 1);
  cJSON *d = cJSON_GetObjectItem(sh, "documents");
  cJSON_SetNumberValue(d, d->valuedouble + delta_docs);
  if (coherent) {
    cJSON *d2 = cJSON_GetObjectItem(sp, "documents"); cJSON_SetNumberValue(d2, d2->valuedouble + delta_docs);
    cJSON *d3 = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "totals"), "documents"); cJSON_SetNumberValue(d3, d3->valuedouble + delta_docs);
  }
  char *out = cJSON_Print(root); cJSON_Delete(root);
  FILE *f = fopen(path, "w"); fputs(out, f); fclose(f); free(out);
}

TEST(verify_catches_index_counts_mismatch) {
  char dir[300], path[400]; snprintf(dir, sizeof dir, "%s-index", g_dir);
  /* the shard's count edited alone: index.json contradicts itself */
  copy_dataset(dir);
  rewrite_index(dir, 1, 0);
  char *rep = NULL;
  CHECK_EQ_INT(verify_report(dir, &rep), -1);
  snprintf(path, sizeof path, "%s/index.json", dir);
  /* an unreadable index is returned as t5g_error for the caller to print, not reported too */
  const char *err = t5g_last_error();
  CHECK_MSG(strstr(err, path) && strstr(err, "differ"), "error: %s", err);
  CHECK_MSG(rep[0] == 0, "report: %s", rep);
  free(rep);
  CHECK(shard_reader_open(dir, "train", NULL) == NULL);
  /* edited coherently: the shard itself disagrees with the index */
  copy_dataset(dir);
  rewrite_index(dir, -1, 1);
  snprintf(path, sizeof path, "%s/train-00001.tks", dir);
  CHECK(verify_report(dir, &rep) >= 1);
  CHECK_MSG(strstr(rep, path) && strstr(rep, "index.json says"), "report: %s", rep);
  CHECK(!strstr(rep, "train-00000.tks"));
  free(rep);
  CHECK(shard_reader_open(dir, "train", NULL) == NULL);
  CHECK(strstr(t5g_last_error(), path));
  /* a header byte flipped */
  copy_dataset(dir);
  snprintf(path, sizeof path, "%s/train-00003.tks", dir);
  flip_byte(path, 30);
  CHECK(verify_report(dir, &rep) >= 1);
  CHECK_MSG(strstr(rep, path) && strstr(rep, "header"), "report: %s", rep);
  free(rep);
  /* an unlisted shard file is a warning only */
  copy_dataset(dir);
  char extra[700]; snprintf(extra, sizeof extra, "cp '%s/train-00000.tks' '%s/train-00099.tks'", dir, dir);
  CHECK(system(extra) == 0);
  CHECK_EQ_INT(verify_report(dir, &rep), 0);
  CHECK(strstr(rep, "warning") && strstr(rep, "train-00099.tks"));
  free(rep);
}

TEST_MAIN()
