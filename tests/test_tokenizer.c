/* test_tokenizer.c: data/tokenizer.c on small hand-made tokenizer.json files, with expected ids
 * worked out by hand from the BPE definition (tokenizers models/bpe: merge the adjacent pair of
 * lowest rank, leftmost first; byte fallback; unk fusing; added tokens matched leftmost-longest).
 * The real Gemma 2 file is tested against an independent encoder in tests/t_tokenizer.sh. */
#define _GNU_SOURCE
#include "data/tokenizer.h"
#include "model/util.h"
#include "tests/check.h"

#include <omp.h>
#include <stdint.h>
#include <unistd.h>

/* ids: 0 <pad> 1 <eos> 2 <bos> 3 <unk> 4 a 5 b 6 c 7 ab 8 bc 9 abc 10 ▁ 11 ▁a 12 aa
 *      13 <0xE2> 14 <0x82> 15 <0xAC> 16 <0xC3> 17 <sot> (special) 18 <m> (added, not special)
 *      19 " " 20 " a"
 * merges by rank: 0 a+b, 1 b+c, 2 ab+c, 3 ▁+a, 4 a+a, 5 " "+"a" */
#define VOCAB \
  "\"vocab\": {\"<pad>\": 0, \"<eos>\": 1, \"<bos>\": 2, \"<unk>\": 3, \"a\": 4, \"b\": 5, \"c\": 6, \"ab\": 7," \
  " \"bc\": 8, \"abc\": 9, \"\\u2581\": 10, \"\\u2581a\": 11, \"aa\": 12, \"<0xE2>\": 13, \"<0x82>\": 14," \
  " \"<0xAC>\": 15, \"<0xC3>\": 16, \"<sot>\": 17, \"<m>\": 18, \" \": 19, \" a\": 20}," \
  " \"merges\": [\"a b\", \"b c\", \"ab c\", \"\\u2581 a\", \"a a\", [\" \", \"a\"]]"
#define ADDED \
  "\"added_tokens\": [" \
  "{\"id\": 0, \"content\": \"<pad>\", \"special\": true, \"normalized\": false}," \
  "{\"id\": 1, \"content\": \"<eos>\", \"special\": true, \"normalized\": false}," \
  "{\"id\": 2, \"content\": \"<bos>\", \"special\": true, \"normalized\": false}," \
  "{\"id\": 3, \"content\": \"<unk>\", \"special\": true, \"normalized\": false}," \
  "{\"id\": 17, \"content\": \"<sot>\", \"special\": true, \"normalized\": false}," \
  "{\"id\": 18, \"content\": \"<m>\", \"special\": false, \"normalized\": false}]"

/* Gemma 2 style: Replace " " -> "▁", no prefix, decoder Replace/ByteFallback/Fuse. */
static const char *k_gemma_style =
  "{\"version\": \"1.0\", " ADDED ", "
  "\"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"},"
  "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"String\": \" \"}, \"behavior\": \"MergedWithPrevious\", \"invert\": false},"
  "\"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": \"\\u2581\"}, \"content\": \" \"},"
  "  {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}]},"
  "\"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": \"<unk>\", \"fuse_unk\": %s, \"byte_fallback\": true, " VOCAB "}}";

/* Llama style: Prepend "▁" + Replace, decoder ends with Strip one leading space. */
static const char *k_prepend_style =
  "{\"version\": \"1.0\", " ADDED ", "
  "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": \"\\u2581\"},"
  "  {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}]},"
  "\"pre_tokenizer\": null,"
  "\"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": \"\\u2581\"}, \"content\": \" \"},"
  "  {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}, {\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]},"
  "\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true, \"byte_fallback\": true, " VOCAB "}}";

/* No normaliser; a Split pre-tokeniser on " " with a given behaviour. */
static const char *k_split_style =
  "{\"version\": \"1.0\", " ADDED ", \"normalizer\": null,"
  "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"String\": \" \"}, \"behavior\": \"%s\", \"invert\": false},"
  "\"decoder\": {\"type\": \"Fuse\"},"
  "\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true, \"byte_fallback\": true, " VOCAB "}}";

static char g_dir[] = "/tmp/t5g_test_tokenizer.XXXXXX";

static Tokenizer *load_text(const char *name, const char *json) {
  if (g_dir[sizeof g_dir - 2] == 'X' && !mkdtemp(g_dir)) return NULL;
  char *p = t5g_path_join(g_dir, name);
  FILE *f = fopen(p, "wb");
  if (!f) { free(p); return NULL; }
  fputs(json, f); fclose(f);
  Tokenizer *t = tokenizer_load(p);
  unlink(p); free(p);
  return t;
}
static Tokenizer *load_fmt(const char *name, const char *fmt, const char *arg) {
  char buf[8192]; snprintf(buf, sizeof buf, fmt, arg);
  return load_text(name, buf);
}

/* encode s and compare with the expected ids (terminated by -1) */
static int enc_eq(const Tokenizer *t, const char *s, int bos, int eos, int ps, const int *want, char *why, size_t whylen) {
  int32_t *ids; int64_t n;
  if (tokenizer_encode(t, s, strlen(s), bos, eos, ps, &ids, &n)) { snprintf(why, whylen, "encode failed: %s", t5g_last_error()); return 0; }
  int64_t m = 0; while (want[m] >= 0) m++;
  int ok = n == m;
  for (int64_t i = 0; ok && i < n; i++) ok = ids[i] == want[i];
  if (!ok) {
    int o = snprintf(why, whylen, "\"%s\" -> [", s);
    for (int64_t i = 0; i < n && o < (int)whylen - 16; i++) o += snprintf(why + o, whylen - o, " %d", ids[i]);
    snprintf(why + o, whylen - o, " ]");
  }
  free(ids);
  return ok;
}
#define ENC(t, s, bos, eos, ps, ...) do { const int _w[] = {__VA_ARGS__, -1}; char _why[512]; \
    if (!enc_eq((t), (s), (bos), (eos), (ps), _w, _why, sizeof _why)) FAILF("%s, expected [%s]", _why, #__VA_ARGS__); } while (0)
#define ENC_EMPTY(t, s) do { int32_t *_i; int64_t _n; CHECK(tokenizer_encode((t), (s), strlen(s), 0, 0, 0, &_i, &_n) == 0); \
    CHECK_EQ_INT(_n, 0); free(_i); } while (0)

TEST(bpe_merge_order) {
  Tokenizer *t = load_fmt("g.json", k_gemma_style, "true");
  CHECK(t);
  ENC(t, "abc", 0, 0, 0, 9);            /* a+b (rank 0) first, then ab+c (rank 2) */
  ENC(t, "bcab", 0, 0, 0, 8, 7);        /* a+b at position 2 (rank 0) before b+c at 0 (rank 1) */
  ENC(t, "aaa", 0, 0, 0, 12, 4);        /* equal ranks: leftmost first */
  ENC(t, "aaaa", 0, 0, 0, 12, 12);
  ENC(t, "abab", 0, 0, 0, 7, 7);
  ENC(t, " a a", 0, 0, 0, 11, 11);      /* " " -> "▁" then ▁+a */
  ENC(t, "a", 1, 1, 0, 2, 4, 1);        /* bos / eos */
  ENC_EMPTY(t, "");
  tokenizer_free(t);
}

TEST(byte_fallback_and_unk) {
  Tokenizer *t = load_fmt("g.json", k_gemma_style, "true");
  CHECK(t);
  ENC(t, "\xE2\x82\xAC", 0, 0, 0, 13, 14, 15);                  /* € = E2 82 AC: all byte pieces exist */
  ENC(t, "\xC3\xA9\xE2\x82\xAC\xC3\xA9", 0, 0, 0, 3, 13, 14, 15, 3); /* é lacks <0xA9>: <unk> */
  ENC(t, "\xC3\xA9\xC3\xA9" "a", 0, 0, 0, 3, 4);                   /* fuse_unk: one <unk> */
  tokenizer_free(t);
  t = load_fmt("g2.json", k_gemma_style, "false");
  CHECK(t);
  ENC(t, "\xC3\xA9\xC3\xA9" "a", 0, 0, 0, 3, 3, 4);                /* no fusing */
  tokenizer_free(t);
}

TEST(added_and_special_tokens) {
  Tokenizer *t = load_fmt("g.json", k_gemma_style, "true");
  CHECK(t);
  ENC(t, "a<sot>b<m>c", 0, 0, 1, 4, 17, 5, 18, 6);      /* parse_special: both */
  ENC(t, "a<sot>b<m>c", 0, 0, 0, 4, 3, 5, 18, 6);       /* special as text (<, s, o, t, > -> one fused <unk>) */
  ENC(t, "<eos><bos>", 0, 0, 1, 1, 2);
  TokenizerSpecials sp = tokenizer_specials(t);
  CHECK_EQ_INT(sp.pad, 0); CHECK_EQ_INT(sp.eos, 1); CHECK_EQ_INT(sp.bos, 2); CHECK_EQ_INT(sp.unk, 3);
  CHECK_EQ_INT(sp.mask, -1); CHECK_EQ_INT(sp.start_of_turn, -1);
  CHECK_EQ_INT(tokenizer_piece_to_id(t, "\xE2\x96\x81" "a"), 11);
  CHECK_EQ_INT(tokenizer_piece_to_id(t, "zz"), -1);
  CHECK_STR(tokenizer_id_to_piece(t, 9), "abc");
  CHECK(tokenizer_id_to_piece(t, 21) == NULL && tokenizer_id_to_piece(t, -1) == NULL);
  CHECK_EQ_INT(tokenizer_vocab_size(t), 21);
  tokenizer_free(t);
}

TEST(decode) {
  Tokenizer *t = load_fmt("g.json", k_gemma_style, "true");
  CHECK(t);
  const int32_t ids[] = {2, 4, 17, 11, 13, 14, 15, 18, 16, 1};
  char *a = tokenizer_decode(t, ids, 10, 0), *b = tokenizer_decode(t, ids, 10, 1);
  CHECK_STR(a, "<bos>a<sot> a\xE2\x82\xAC<m>\xEF\xBF\xBD<eos>");   /* lone <0xC3> -> U+FFFD */
  CHECK_STR(b, "a a\xE2\x82\xAC<m>\xEF\xBF\xBD");
  free(a); free(b);
  /* a run of byte pieces that is not valid UTF-8 as a whole: every byte becomes U+FFFD (HF) */
  const int32_t run[] = {13, 14, 15, 16};
  a = tokenizer_decode(t, run, 4, 0);
  CHECK_STR(a, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  free(a);
  const int32_t bad[] = {4, 21};
  CHECK(tokenizer_decode(t, bad, 2, 0) == NULL);
  CHECK(strstr(t5g_last_error(), "token id 21 (position 1) is out of range [0, 21)"));
  /* round trip on text made of vocabulary characters, spaces and byte-fallback characters */
  const char *texts[] = {" a  abc bca\xE2\x82\xAC ", "cab", "", "  ", "a<m>b"};
  for (int i = 0; i < 5; i++) {
    int32_t *e; int64_t n;
    CHECK(tokenizer_encode(t, texts[i], strlen(texts[i]), 0, 0, 0, &e, &n) == 0);
    char *d = tokenizer_decode(t, e, n, 0);
    CHECK_STR(d, texts[i]);
    free(d); free(e);
  }
  tokenizer_free(t);
}

/* The word split speed-up (cut before "▁" after another character) must switch itself off
 * when a piece joins a character to a following "▁" ("a▁" here). */
TEST(word_split_only_when_safe) {
  Tokenizer *t = load_fmt("g.json", k_gemma_style, "true");
  CHECK(t);
  ENC(t, "a  a", 0, 0, 0, 4, 10, 11);   /* "a▁▁a": ▁+a at position 2 */
  ENC(t, "ab  abc a", 0, 0, 0, 7, 10, 10, 9, 11);   /* ab ▁ ▁ abc ▁a */
  tokenizer_free(t);
  t = load_text("u.json",
    "{\"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"},"
    " \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"vocab\": {\"<unk>\": 0, \"a\": 1, \"b\": 2,"
    " \"\\u2581\": 3, \"a\\u2581\": 4, \"\\u2581b\": 5}, \"merges\": [\"a \\u2581\", \"\\u2581 b\"]}}");
  CHECK(t);
  ENC(t, "a b", 0, 0, 0, 4, 2);         /* a+▁ (rank 0) before ▁+b (rank 1) */
  ENC(t, "b a b", 0, 0, 0, 2, 3, 4, 2);
  tokenizer_free(t);
}

TEST(prepend_normalizer_and_strip_decoder) {
  Tokenizer *t = load_text("p.json", k_prepend_style);
  CHECK(t);
  ENC(t, "a a", 0, 0, 0, 11, 11);       /* "▁a▁a" */
  ENC(t, "a<m>a", 0, 0, 0, 11, 18, 11); /* every segment between added tokens gets the prefix */
  const int32_t ids[] = {11, 11};
  char *d = tokenizer_decode(t, ids, 2, 0);
  CHECK_STR(d, "a a");
  free(d);
  tokenizer_free(t);
}

TEST(split_pre_tokenizer_behaviours) {
  Tokenizer *t = load_fmt("s.json", k_split_style, "Removed");
  CHECK(t);
  ENC(t, "ab ab", 0, 0, 0, 7, 7);
  tokenizer_free(t);
  t = load_fmt("s.json", k_split_style, "Isolated");
  CHECK(t);
  ENC(t, "ab ab", 0, 0, 0, 7, 19, 7);
  ENC(t, "b a", 0, 0, 0, 5, 19, 4);
  tokenizer_free(t);
  t = load_fmt("s.json", k_split_style, "MergedWithNext");
  CHECK(t);
  ENC(t, "b a", 0, 0, 0, 5, 20);        /* "b", " a" and the [" ", "a"] merge */
  tokenizer_free(t);
  t = load_fmt("s.json", k_split_style, "MergedWithPrevious");
  CHECK(t);
  ENC(t, "b a", 0, 0, 0, 5, 19, 4);     /* "b ", "a" */
  tokenizer_free(t);
  t = load_fmt("s.json", k_split_style, "Contiguous");
  CHECK(t);
  ENC(t, "b  a", 0, 0, 0, 5, 19, 19, 4); /* "b", "  ", "a" (no "  " piece: two " ") */
  tokenizer_free(t);
}

/* A long word (no added tokens, no split): 1 MB of random a/b/c must encode in well under a
 * second (a quadratic BPE would take hours), and equal the encoding of its pieces cut at
 * positions where no merge can cross: between "c" and "c" there is no merge (cc is no piece). */
TEST(long_word_linearithmic_and_threads) {
  Tokenizer *t = load_fmt("g.json", k_gemma_style, "true");
  CHECK(t);
  size_t n = 1000000;
  char *s = t5g_malloc(n + 1);
  uint64_t x = 12345;
  for (size_t i = 0; i < n; i++) { x = x * 6364136223846793005ULL + 1442695040888963407ULL; s[i] = "abc"[(x >> 33) % 3]; }
  s[n] = 0;
  double t0 = t5g_now();
  int32_t *ids; int64_t m;
  CHECK(tokenizer_encode(t, s, n, 0, 0, 0, &ids, &m) == 0);
  double dt = t5g_now() - t0;
  printf("# 1 MB word: %lld tokens in %.3f s (%.1f MB/s)\n", (long long)m, dt, 1.0 / dt);
  CHECK_MSG(dt < 5.0, "1 MB word took %.2f s", dt);
  /* reference by pieces: cut after every "c" that is followed by "c" */
  int64_t k = 0; size_t start = 0; int ok = 1;
  for (size_t i = 0; i <= n && ok; i++) {
    if (i == n || (i > 0 && s[i - 1] == 'c' && s[i] == 'c')) {
      int32_t *p; int64_t pn;
      CHECK(tokenizer_encode(t, s + start, i - start, 0, 0, 0, &p, &pn) == 0);
      for (int64_t j = 0; j < pn && ok; j++) ok = k + j < m && ids[k + j] == p[j];
      k += pn; start = i; free(p);
    }
  }
  CHECK_MSG(ok && k == m, "the long word differs from its pieces at token %lld", (long long)k);
  char *d = tokenizer_decode(t, ids, m, 0);
  CHECK(d && strlen(d) == n && memcmp(d, s, n) == 0);
  free(d);
  /* thread safety: both threads encode two quarter-length texts repeatedly and must get the
   * ids of a serial encoding */
  int32_t *r1, *r2; int64_t n1, n2;
  CHECK(tokenizer_encode(t, s, n / 4, 0, 0, 0, &r1, &n1) == 0);
  CHECK(tokenizer_encode(t, s + n / 2, n / 4, 0, 0, 0, &r2, &n2) == 0);
  int mismatches = 0;
  #pragma omp parallel for num_threads(2) reduction(+:mismatches) schedule(static, 1)
  for (int r = 0; r < 8; r++) {
    const char *src = r % 2 ? s + n / 2 : s;
    const int32_t *ref = r % 2 ? r2 : r1;
    int64_t rn = r % 2 ? n2 : n1;
    int32_t *q; int64_t qn;
    if (tokenizer_encode(t, src, n / 4, 0, 0, 0, &q, &qn) != 0) { mismatches++; continue; }
    if (qn != rn || memcmp(q, ref, (size_t)qn * sizeof(int32_t)) != 0) mismatches++;
    free(q);
  }
  free(r1); free(r2);
  CHECK_EQ_INT(mismatches, 0);
  free(ids); free(s);
  tokenizer_free(t);
}

TEST(hash_identity) {
  Tokenizer *a = load_fmt("g.json", k_gemma_style, "true"), *b = load_fmt("g.json", k_gemma_style, "false");
  Tokenizer *c = load_text("p.json", k_prepend_style);
  CHECK(a && b && c);
  CHECK(tokenizer_hash(a) == tokenizer_hash(b));   /* same pieces, flags and merges */
  char buf[8192]; snprintf(buf, sizeof buf, k_gemma_style, "true");
  char *swap = strstr(buf, "\"a b\", \"b c\"");     /* same merges in another order: another identity */
  CHECK(swap);
  memcpy(swap, "\"b c\", \"a b\"", 12);
  Tokenizer *d = load_text("d.json", buf);
  CHECK(d);
  CHECK(tokenizer_hash(d) != tokenizer_hash(a));
  ENC(d, "abc", 0, 0, 0, 4, 8);                    /* b+c now ranks first */
  tokenizer_free(a); tokenizer_free(b); tokenizer_free(c); tokenizer_free(d);
}

TEST(load_errors) {
  CHECK(load_text("e1.json", "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}") == NULL);
  CHECK(strstr(t5g_last_error(), "field \"model.type\" is \"Unigram\""));
  CHECK(load_text("e2.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 2}, \"merges\": []}}") == NULL);
  CHECK(strstr(t5g_last_error(), "no piece has id 1"));
  CHECK(load_text("e3.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}}") == NULL);
  CHECK(strstr(t5g_last_error(), "id 0 is given to both"));
  CHECK(load_text("e4.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"ab\"]}}") == NULL);
  CHECK(strstr(t5g_last_error(), "expected two pieces separated by one space"));
  CHECK(load_text("e5.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"normalizer\": {\"type\": \"NFKC\"}}") == NULL);
  CHECK(strstr(t5g_last_error(), "normalizer type \"NFKC\" is not supported"));
  CHECK(load_text("e6.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []") == NULL);
  CHECK(strstr(t5g_last_error(), "malformed JSON"));
  CHECK(load_text("e7.json", "") == NULL);
  CHECK(strstr(t5g_last_error(), "empty"));
  CHECK(tokenizer_load("/nonexistent/tokenizer.json") == NULL);
  CHECK(strstr(t5g_last_error(), "/nonexistent/tokenizer.json: cannot open tokenizer"));
  rmdir(g_dir);
}

TEST_MAIN()
