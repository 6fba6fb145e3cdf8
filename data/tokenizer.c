/* tokenizer.c: the Gemma tokenizers of data/tokenizer.h.
 *
 * Backend 1, tokenizer.json (Hugging Face `tokenizers` serialisation, as shipped with Gemma 2):
 *   encode = split the raw text on added tokens (leftmost-longest match, as the Rust
 *            AddedVocabulary's Aho-Corasick LeftmostLongest and transformers.js's
 *            DictionarySplitter do), normalise every other segment (Gemma 2: Replace " " -> "▁",
 *            no prepended "▁"), pre-tokenise (Gemma 2: Split on " ", which finds nothing after the
 *            normaliser, so a "word" is a whole segment: a line or more), then BPE each word:
 *            characters -> vocabulary ids (a character missing from the vocabulary becomes its
 *            UTF-8 bytes as <0xNN> pieces: byte_fallback), then repeatedly merge the adjacent pair
 *            with the lowest merge rank, leftmost first among equal ranks (tokenizers
 *            `models/bpe/word.rs` merge_all). A binary heap of (rank, position) keys over a doubly
 *            linked symbol list makes a word of n characters cost O(n log n): a 100 KB line
 *            without spaces takes milliseconds. When the vocabulary allows it (checked at load:
 *            true for Gemma 2), words are also cut before each "▁" that follows another
 *            character, which cannot change the result, and the short parts are cached per call.
 *            Speed: 5-10 MB/s of English per thread on this project's 2-core machine; loading
 *            the 17 MB Gemma 2 file takes about 0.7 s (most of it cJSON).
 *   decode = drop special tokens if asked, then the file's decoder chain (Gemma 2: Replace
 *            "▁" -> " ", ByteFallback (runs of <0xNN> -> UTF-8 bytes, each byte U+FFFD when the
 *            run is not valid UTF-8, as tokenizers `decoders/byte_fallback.rs`), Fuse).
 *   Round trip: the Gemma 2 normaliser prepends nothing and the decoder strips nothing, so a
 *   leading space is kept as "▁" ("Hello" -> [4521], " Hello" -> [25957]) and
 *   decode(encode(x)) == x byte for byte for every valid UTF-8 x without U+2581. The one
 *   exception is Gemma's own: a literal U+2581 "▁" in the text encodes like a space (the same
 *   pieces), so it decodes as " ", in HF too. Invalid UTF-8 input bytes are encoded as byte
 *   pieces and decode as U+FFFD (a run of byte pieces that is not valid UTF-8 decodes as one
 *   U+FFFD per byte, as HF's ByteFallback decoder does). Files with a Prepend normaliser and a
 *   Strip decoder (Llama style) round-trip the same way.
 *   The post_processor (Gemma 2: prepend <bos>) is not applied: BOS/EOS come from the add_bos /
 *   add_eos arguments.
 * Backend 2, tokenizer.model (SentencePiece), through libsentencepiece (data/spm.cc).
 *
 * Special tokens: in tokenizer.json, added tokens with "special": true (Gemma 2: <pad> <eos>
 * <bos> <unk> <start_of_turn> <end_of_turn>); non-special added tokens (<mask>, <unusedN>, "\n",
 * "▁▁", "<table>", ...) are always matched in text, as HF and transformers.js do. When
 * parse_special is 0 a special token found by the matcher is skipped and its text stays plain
 * text (HF `encode_special_tokens`). In tokenizer.model, special = control and unknown pieces,
 * plus <start_of_turn>/<end_of_turn> when present; SentencePiece itself always matches
 * user-defined pieces (so <start_of_turn>, if user-defined, is matched even without
 * parse_special; this is SentencePiece's behaviour and is kept).
 *
 * Thread safety: the Tokenizer is read-only after load; encode/decode allocate their own work
 * buffers per call.
 */
#define _GNU_SOURCE
#include "data/tokenizer.h"
#include "data/spm.h"
#include "model/util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { BACKEND_JSON = 1, BACKEND_SPM = 2 };
enum { TF_SPECIAL = 1, TF_ADDED = 2, TF_NORMALIZED = 4 };

/* ------------------------------------------------------------------------------------------- */
/* Hashing                                                                                      */

static inline uint64_t hash_bytes(const void *p, size_t n) {
  const uint8_t *s = p;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 0x100000001b3ULL; }
  h ^= h >> 29; h *= 0xbf58476d1ce4e5b9ULL; h ^= h >> 32;
  return h;
}
static inline uint64_t mix64(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
  return x;
}

/* ------------------------------------------------------------------------------------------- */
/* Added-token trie over bytes. Root children by direct table; deeper nodes by sibling lists.   */

typedef struct { int32_t child, sibling, token; uint8_t byte; } TrieNode;
typedef struct {
  TrieNode *nodes; int n, cap;
  int32_t root[256];
  int n_tokens;
} Trie;

static void trie_init(Trie *tr) {
  memset(tr, 0, sizeof *tr);
  for (int i = 0; i < 256; i++) tr->root[i] = -1;
}
static int32_t trie_new_node(Trie *tr, uint8_t b) {
  if (tr->n == tr->cap) {
    tr->cap = tr->cap ? 2 * tr->cap : 256;
    tr->nodes = t5g_realloc(tr->nodes, (size_t)tr->cap * sizeof(TrieNode));
  }
  tr->nodes[tr->n] = (TrieNode){-1, -1, -1, b};
  return tr->n++;
}
/* Insert s (n >= 1 bytes) for token id; a later insertion of the same string keeps the first. */
static void trie_insert(Trie *tr, const char *s, size_t n, int32_t id) {
  const uint8_t *u = (const uint8_t *)s;
  if (tr->root[u[0]] < 0) tr->root[u[0]] = trie_new_node(tr, u[0]);
  int32_t cur = tr->root[u[0]];
  for (size_t i = 1; i < n; i++) {
    int32_t c = tr->nodes[cur].child, found = -1;
    for (; c >= 0; c = tr->nodes[c].sibling)
      if (tr->nodes[c].byte == u[i]) { found = c; break; }
    if (found < 0) {
      found = trie_new_node(tr, u[i]);
      tr->nodes[found].sibling = tr->nodes[cur].child;
      tr->nodes[cur].child = found;
    }
    cur = found;
  }
  if (tr->nodes[cur].token < 0) { tr->nodes[cur].token = id; tr->n_tokens++; }
}
/* Longest token starting at s[0..n): its byte length (0 if none) and *id. */
static inline size_t trie_longest(const Trie *tr, const uint8_t *s, size_t n, int32_t *id) {
  int32_t cur = tr->root[s[0]];
  if (cur < 0) return 0;
  size_t best = 0;
  for (size_t i = 0;;) {
    if (tr->nodes[cur].token >= 0) { best = i + 1; *id = tr->nodes[cur].token; }
    if (++i >= n) break;
    int32_t c = tr->nodes[cur].child;
    while (c >= 0 && tr->nodes[c].byte != s[i]) c = tr->nodes[c].sibling;
    if (c < 0) break;
    cur = c;
  }
  return best;
}

/* ------------------------------------------------------------------------------------------- */
/* Normaliser, pre-tokeniser and decoder steps of tokenizer.json that Gemma files use.          */

enum { NORM_REPLACE = 1, NORM_PREPEND };
typedef struct { int type; char *pat; size_t plen; char *rep; size_t rlen; } NormOp;

enum { SPLIT_REMOVED = 1, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS };
typedef struct { int active; char *pat; size_t plen; int behavior; } PreTok;

enum { DEC_REPLACE = 1, DEC_BYTE_FALLBACK, DEC_FUSE, DEC_STRIP };
typedef struct { int type; char *pat; size_t plen; char *rep; size_t rlen; int start, stop; } DecOp;

/* Merge table slot, one 64-bit word: ((a * n_vocab + b) + 1) << rank_bits | rank; 0 = empty.
 * 8 bytes per slot keeps Gemma's 580k merges in an 8 MiB table (cache-friendly); the merged id
 * is merge_new[rank]. */
typedef uint64_t MergeSlot;

struct Tokenizer {
  int backend;
  char *path;
  int n_vocab;
  char *arena;            /* every piece, NUL-terminated */
  size_t *off;            /* piece i at arena + off[i] */
  uint32_t *plen;         /* its byte length */
  uint8_t *flags;         /* TF_* */
  int16_t *byte_val;      /* piece "<0xNN>" -> NN, else -1 (decode) */
  int32_t *slots; uint64_t slot_mask;   /* piece -> id open-addressing table */
  /* tokenizer.json BPE model */
  MergeSlot *merges; uint64_t merge_mask; int64_t n_merges;
  int rank_bits; uint64_t rank_mask;
  int32_t *merge_new;     /* rank -> id of the merged piece */
  int32_t *merge_pairs;   /* 2 * n_merges ids in rank order (hash) */
  int byte_fallback, fuse_unk, ignore_merges;
  int32_t unk_id;
  int32_t ascii_id[128], byte_id[256];
  Trie raw_trie, norm_trie;   /* added tokens matched before / after normalisation */
  NormOp *norm; int n_norm;
  PreTok pre;
  /* Word split (an exact speed-up, enabled only when proven safe at load): no vocabulary piece
   * holds the normaliser's space replacement R ("▁") right after another character, so no merge
   * can join a character to a following R, and BPE of a word equals the BPE of its parts cut
   * before every R that follows a non-R character. Parts are short and repeat, so they are
   * cached per call. */
  char *ws; size_t ws_len;
  DecOp *dec; int n_dec; int has_decoder;
  /* tokenizer.model */
  T5gSpm *spm;
  Trie special_trie;
  TokenizerSpecials specials;
  uint64_t hash;
};

/* ------------------------------------------------------------------------------------------- */
/* Vocabulary tables                                                                            */

static int vocab_find(const Tokenizer *t, const char *s, size_t n) {
  uint64_t h = hash_bytes(s, n) & t->slot_mask;
  for (;;) {
    int32_t id = t->slots[h];
    if (id < 0) return -1;
    if (t->plen[id] == n && memcmp(t->arena + t->off[id], s, n) == 0) return id;
    h = (h + 1) & t->slot_mask;
  }
}

/* Build the piece -> id table over ids 0..n_vocab-1 (the lowest id wins for duplicates). */
static void vocab_index(Tokenizer *t) {
  uint64_t cap = 1;
  while (cap < (uint64_t)t->n_vocab * 2 + 16) cap <<= 1;
  t->slot_mask = cap - 1;
  t->slots = t5g_malloc(cap * sizeof(int32_t));
  memset(t->slots, 0xff, cap * sizeof(int32_t));
  for (int id = 0; id < t->n_vocab; id++) {
    const char *s = t->arena + t->off[id];
    uint64_t h = hash_bytes(s, t->plen[id]) & t->slot_mask;
    int dup = 0;
    while (t->slots[h] >= 0) {
      int32_t o = t->slots[h];
      if (t->plen[o] == t->plen[id] && memcmp(t->arena + t->off[o], s, t->plen[id]) == 0) { dup = 1; break; }
      h = (h + 1) & t->slot_mask;
    }
    if (!dup) t->slots[h] = id;
  }
  for (int c = 0; c < 128; c++) { char ch = (char)c; t->ascii_id[c] = vocab_find(t, &ch, 1); }
  for (int b = 0; b < 256; b++) {
    char name[8]; snprintf(name, sizeof name, "<0x%02X>", b);
    t->byte_id[b] = vocab_find(t, name, 6);
  }
  t->byte_val = t5g_malloc((size_t)t->n_vocab * sizeof(int16_t));
  for (int id = 0; id < t->n_vocab; id++) {
    const char *s = t->arena + t->off[id];
    int v = -1;
    if (t->plen[id] == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>') {
      char hex[3] = {s[3], s[4], 0}; char *end;
      long x = strtol(hex, &end, 16);
      if (*end == 0 && end == hex + 2) v = (int)x;
    }
    t->byte_val[id] = (int16_t)v;
  }
}

static inline int merge_get(const Tokenizer *t, int32_t a, int32_t b, int32_t *rank, int32_t *new_id) {
  uint64_t key = (uint64_t)a * (uint64_t)t->n_vocab + (uint64_t)b + 1;
  uint64_t h = mix64(key) & t->merge_mask;
  for (;;) {
    MergeSlot m = t->merges[h];
    if (m == 0) return 0;
    if ((m >> t->rank_bits) == key) {
      *rank = (int32_t)(m & t->rank_mask);
      *new_id = t->merge_new[*rank];
      return 1;
    }
    h = (h + 1) & t->merge_mask;
  }
}
static void merge_put(Tokenizer *t, int32_t a, int32_t b, int32_t rank) {
  uint64_t key = (uint64_t)a * (uint64_t)t->n_vocab + (uint64_t)b + 1;
  uint64_t h = mix64(key) & t->merge_mask;
  while (t->merges[h] != 0 && (t->merges[h] >> t->rank_bits) != key) h = (h + 1) & t->merge_mask;
  /* a repeated pair keeps the later rank, as tokenizers' HashMap collect does */
  t->merges[h] = (key << t->rank_bits) | (uint64_t)rank;
}

/* ------------------------------------------------------------------------------------------- */
/* Growable arrays                                                                              */

typedef struct { int32_t *v; int64_t n, cap; } IdVec;
static inline void ids_push(IdVec *a, int32_t x) {
  if (a->n == a->cap) { a->cap = a->cap ? 2 * a->cap : 256; a->v = t5g_realloc(a->v, (size_t)a->cap * sizeof(int32_t)); }
  a->v[a->n++] = x;
}
typedef struct { char *b; size_t n, cap; } Buf;
static inline void buf_put(Buf *b, const void *p, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t c = b->cap ? b->cap : 256;
    while (c < b->n + n + 1) c *= 2;
    b->b = t5g_realloc(b->b, c); b->cap = c;
  }
  memcpy(b->b + b->n, p, n); b->n += n; b->b[b->n] = 0;
}

/* ------------------------------------------------------------------------------------------- */
/* UTF-8                                                                                        */

/* Byte length of the UTF-8 character at s (n bytes available); 1 for an invalid byte. */
static inline int utf8_len(const uint8_t *s, size_t n) {
  uint8_t c = s[0];
  if (c < 0x80) return 1;
  int L; uint32_t cp;
  if ((c & 0xE0) == 0xC0) { L = 2; cp = c & 0x1F; }
  else if ((c & 0xF0) == 0xE0) { L = 3; cp = c & 0x0F; }
  else if ((c & 0xF8) == 0xF0) { L = 4; cp = c & 0x07; }
  else return 1;
  if ((size_t)L > n) return 1;
  for (int k = 1; k < L; k++) {
    if ((s[k] & 0xC0) != 0x80) return 1;
    cp = (cp << 6) | (s[k] & 0x3F);
  }
  if ((L == 2 && cp < 0x80) || (L == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
      (L == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
    return 1;
  return L;
}
static int utf8_valid(const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n;) {
    int L = utf8_len(s + i, n - i);
    if (L == 1 && s[i] >= 0x80) return 0;
    i += (size_t)L;
  }
  return 1;
}

/* ------------------------------------------------------------------------------------------- */
/* BPE of one word (tokenizers models/bpe/model.rs merge_word + word.rs merge_all)              */

typedef struct { int32_t id, prev, next; } Sym;
/* Per-call cache of short words: key bytes in keys, ids in vals. */
typedef struct { uint64_t h; uint32_t koff, klen, voff, vlen; } CacheEnt;
typedef struct {
  Sym *sym; size_t sym_cap;
  uint64_t *heap; size_t heap_cap, heap_n;
  Buf norm, tmp;
  CacheEnt *cache; uint32_t cache_cap, cache_n;
  Buf keys; IdVec vals;
} Work;
#define CACHE_MAX_WORD 64
#define CACHE_MAX_ENTRIES (1u << 16)

static inline void heap_push(Work *w, uint64_t key) {
  if (w->heap_n == w->heap_cap) {
    w->heap_cap = w->heap_cap ? 2 * w->heap_cap : 1024;
    w->heap = t5g_realloc(w->heap, w->heap_cap * sizeof(uint64_t));
  }
  size_t i = w->heap_n++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (w->heap[p] <= key) break;
    w->heap[i] = w->heap[p]; i = p;
  }
  w->heap[i] = key;
}
static inline void heap_sift_down(uint64_t *h, size_t n, size_t i) {
  uint64_t key = h[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && h[c + 1] < h[c]) c++;
    if (h[c] >= key) break;
    h[i] = h[c]; i = c;
  }
  h[i] = key;
}
static inline uint64_t heap_pop(Work *w) {
  uint64_t top = w->heap[0];
  w->heap[0] = w->heap[--w->heap_n];
  if (w->heap_n > 0) heap_sift_down(w->heap, w->heap_n, 0);
  return top;
}

static int bpe_word(const Tokenizer *t, const uint8_t *s, size_t n, Work *w, IdVec *out) {
  if (n == 0) return 0;
  if (n > (size_t)INT32_MAX / 2) return t5g_error("a text segment of %zu bytes without added-token boundaries is too long to encode (limit %d)", n, INT32_MAX / 2);
  if (t->ignore_merges) {
    int id = vocab_find(t, (const char *)s, n);
    if (id >= 0) { ids_push(out, id); return 0; }
  }
  if (w->sym_cap < n) {
    w->sym_cap = n < 1024 ? 1024 : n;
    w->sym = t5g_realloc(w->sym, w->sym_cap * sizeof(Sym));
  }
  Sym *sym = w->sym;
  int32_t ns = 0;
  size_t unk_len = 0;   /* pending <unk> (fuse_unk) */
#define PUSH_SYM(ID) do { sym[ns] = (Sym){(ID), ns - 1, ns + 1}; ns++; } while (0)
  for (size_t i = 0; i < n;) {
    int L; int32_t id;
    if (s[i] < 0x80) { L = 1; id = t->ascii_id[s[i]]; }
    else { L = utf8_len(s + i, n - i); id = vocab_find(t, (const char *)s + i, (size_t)L); }
    if (id >= 0) {
      if (unk_len) { PUSH_SYM(t->unk_id); unk_len = 0; }
      PUSH_SYM(id);
    } else {
      int done = 0;
      if (t->byte_fallback) {
        int ok = 1;
        for (int k = 0; k < L; k++) if (t->byte_id[s[i + k]] < 0) { ok = 0; break; }
        if (ok) {
          if (unk_len) { PUSH_SYM(t->unk_id); unk_len = 0; }
          for (int k = 0; k < L; k++) PUSH_SYM(t->byte_id[s[i + k]]);
          done = 1;
        }
      }
      if (!done) {
        if (t->unk_id < 0)
          return t5g_error("%s: the character at byte %zu of a text segment is not in the vocabulary, has no byte-fallback pieces, and the model has no unk_token",
                           t->path, i);
        if (unk_len && !t->fuse_unk) PUSH_SYM(t->unk_id);
        unk_len = t->fuse_unk ? unk_len + (size_t)L : (size_t)L;
      }
    }
    i += (size_t)L;
  }
  if (unk_len) PUSH_SYM(t->unk_id);
#undef PUSH_SYM
  if (ns == 0) return 0;
  sym[ns - 1].next = -1;

  /* heap of (rank << 32 | position of the left symbol): lowest rank first, then leftmost */
  w->heap_n = 0;
  for (int32_t k = 0; k + 1 < ns; k++) {
    int32_t r, nid;
    if (merge_get(t, sym[k].id, sym[k + 1].id, &r, &nid)) {
      if (w->heap_n == w->heap_cap) {
        w->heap_cap = w->heap_cap ? 2 * w->heap_cap : 1024;
        w->heap = t5g_realloc(w->heap, w->heap_cap * sizeof(uint64_t));
      }
      w->heap[w->heap_n++] = ((uint64_t)(uint32_t)r << 32) | (uint32_t)k;
    }
  }
  for (size_t i = w->heap_n / 2; i-- > 0;) heap_sift_down(w->heap, w->heap_n, i);
  while (w->heap_n > 0) {
    uint64_t top = heap_pop(w);
    int32_t rank = (int32_t)(top >> 32), p = (int32_t)(uint32_t)top;
    if (sym[p].id < 0) continue;            /* absorbed by its left neighbour */
    int32_t q = sym[p].next;
    if (q < 0) continue;
    int32_t r, nid;
    /* stale entry: the pair at p changed since it was queued */
    if (!merge_get(t, sym[p].id, sym[q].id, &r, &nid) || r != rank) continue;
    sym[p].id = nid;
    sym[q].id = -1;
    sym[p].next = sym[q].next;
    if (sym[q].next >= 0) sym[sym[q].next].prev = p;
    if (sym[p].prev >= 0 && merge_get(t, sym[sym[p].prev].id, nid, &r, &nid))
      heap_push(w, ((uint64_t)(uint32_t)r << 32) | (uint32_t)sym[p].prev);
    nid = sym[p].id;
    if (sym[p].next >= 0 && merge_get(t, nid, sym[sym[p].next].id, &r, &nid))
      heap_push(w, ((uint64_t)(uint32_t)r << 32) | (uint32_t)p);
  }
  for (int32_t k = 0; k >= 0; k = sym[k].next) ids_push(out, sym[k].id);
  return 0;
}

static int bpe_cached(const Tokenizer *t, const uint8_t *s, size_t n, Work *w, IdVec *out) {
  if (n > CACHE_MAX_WORD) return bpe_word(t, s, n, w, out);
  uint64_t h = hash_bytes(s, n);
  if (w->cache) {
    for (uint32_t i = (uint32_t)h & (w->cache_cap - 1);; i = (i + 1) & (w->cache_cap - 1)) {
      const CacheEnt *e = &w->cache[i];
      if (e->klen == 0) break;
      if (e->h == h && e->klen == n && memcmp(w->keys.b + e->koff, s, n) == 0) {
        for (uint32_t k = 0; k < e->vlen; k++) ids_push(out, w->vals.v[e->voff + k]);
        return 0;
      }
    }
  }
  int64_t start = out->n;
  if (bpe_word(t, s, n, w, out)) return -1;
  if (w->cache_n >= CACHE_MAX_ENTRIES) return 0;
  if (!w->cache || 2 * (w->cache_n + 1) > w->cache_cap) {   /* grow (and rehash) */
    uint32_t cap = w->cache ? 2 * w->cache_cap : 256;
    CacheEnt *c = t5g_calloc(cap, sizeof(CacheEnt));
    for (uint32_t i = 0; w->cache && i < w->cache_cap; i++) {
      if (w->cache[i].klen == 0) continue;
      uint32_t j = (uint32_t)w->cache[i].h & (cap - 1);
      while (c[j].klen) j = (j + 1) & (cap - 1);
      c[j] = w->cache[i];
    }
    free(w->cache); w->cache = c; w->cache_cap = cap;
  }
  uint32_t j = (uint32_t)h & (w->cache_cap - 1);
  while (w->cache[j].klen) j = (j + 1) & (w->cache_cap - 1);
  w->cache[j] = (CacheEnt){h, (uint32_t)w->keys.n, (uint32_t)n, (uint32_t)w->vals.n, (uint32_t)(out->n - start)};
  buf_put(&w->keys, s, n);
  for (int64_t k = start; k < out->n; k++) ids_push(&w->vals, out->v[k]);
  w->cache_n++;
  return 0;
}

/* BPE of one pre-tokenised word, cut at the safe boundaries when the word split is enabled. */
static int bpe_split(const Tokenizer *t, const uint8_t *s, size_t n, Work *w, IdVec *out) {
  if (!t->ws_len || n <= t->ws_len) return bpe_word(t, s, n, w, out);
  const size_t L = t->ws_len;
  size_t start = 0, i = 1;
  while (i + L <= n) {
    const uint8_t *m = memmem(s + i, n - i, t->ws, L);
    if (!m) break;
    size_t k = (size_t)(m - s);
    /* a boundary before R unless R follows another R */
    if (!(k >= L && memcmp(s + k - L, t->ws, L) == 0) && k > start) {
      if (bpe_cached(t, s + start, k - start, w, out)) return -1;
      start = k;
    }
    i = k + L;
  }
  return bpe_cached(t, s + start, n - start, w, out);
}

/* Pre-tokenise a normalised segment into words (tokenizers pre_tokenizers/split.rs with a
 * String pattern and SplitDelimiterBehavior), BPE each. */
static int pretok_and_bpe(const Tokenizer *t, const uint8_t *s, size_t n, Work *w, IdVec *out) {
  if (!t->pre.active) return bpe_split(t, s, n, w, out);
  const PreTok *pt = &t->pre;
  size_t start = 0, i = 0;       /* start of the pending word */
  while (i < n) {
    const uint8_t *m = memmem(s + i, n - i, pt->pat, pt->plen);
    if (!m) break;
    size_t ms = (size_t)(m - s), me = ms + pt->plen;
    switch (pt->behavior) {
    case SPLIT_REMOVED:
      if (bpe_split(t, s + start, ms - start, w, out)) return -1;
      start = me; break;
    case SPLIT_ISOLATED:
      if (bpe_split(t, s + start, ms - start, w, out)) return -1;
      if (bpe_split(t, s + ms, pt->plen, w, out)) return -1;
      start = me; break;
    case SPLIT_MERGED_PREV:
      if (bpe_split(t, s + start, me - start, w, out)) return -1;
      start = me; break;
    case SPLIT_MERGED_NEXT:
      if (bpe_split(t, s + start, ms - start, w, out)) return -1;
      start = ms; break;
    case SPLIT_CONTIGUOUS: {  /* a run of adjacent matches is one word */
      if (bpe_split(t, s + start, ms - start, w, out)) return -1;
      size_t e = me;
      while (n - e >= pt->plen && memcmp(s + e, pt->pat, pt->plen) == 0) e += pt->plen;
      if (bpe_split(t, s + ms, e - ms, w, out)) return -1;
      start = e; i = e;
      continue;
    }
    }
    i = me;
  }
  return bpe_split(t, s + start, n - start, w, out);
}

/* Normalise one segment between raw added tokens into w->norm. */
static void normalize(const Tokenizer *t, const uint8_t *s, size_t n, Work *w) {
  w->norm.n = 0;
  buf_put(&w->norm, s, n);
  for (int k = 0; k < t->n_norm; k++) {
    const NormOp *op = &t->norm[k];
    if (op->type == NORM_PREPEND) {
      if (w->norm.n == 0) continue;
      w->tmp.n = 0;
      buf_put(&w->tmp, op->rep, op->rlen);
      buf_put(&w->tmp, w->norm.b, w->norm.n);
    } else {
      w->tmp.n = 0;
      size_t i = 0;
      while (i < w->norm.n) {
        const char *m = memmem(w->norm.b + i, w->norm.n - i, op->pat, op->plen);
        if (!m) break;
        buf_put(&w->tmp, w->norm.b + i, (size_t)(m - (w->norm.b + i)));
        buf_put(&w->tmp, op->rep, op->rlen);
        i = (size_t)(m - w->norm.b) + op->plen;
      }
      buf_put(&w->tmp, w->norm.b + i, w->norm.n - i);
    }
    Buf x = w->norm; w->norm = w->tmp; w->tmp = x;
  }
}

/* Split s on the added tokens of tr (leftmost-longest; special ones only when parse_special,
 * otherwise their text stays in the surrounding segment and the scan resumes after it, as in
 * tokenizers' AddedVocabulary::find_matches). Calls seg() on text parts, pushes token ids. */
typedef int (*SegFn)(const Tokenizer *t, const uint8_t *s, size_t n, Work *w, IdVec *out, int parse_special);
static int split_added(const Tokenizer *t, const Trie *tr, const uint8_t *s, size_t n, int parse_special,
                       SegFn seg, Work *w, IdVec *out) {
  if (tr->n_tokens == 0) return seg(t, s, n, w, out, parse_special);
  size_t start = 0, i = 0;
  while (i < n) {
    if (tr->root[s[i]] < 0) { i++; continue; }
    int32_t id = -1;
    size_t m = trie_longest(tr, s + i, n - i, &id);
    if (m == 0) { i++; continue; }
    if ((t->flags[id] & TF_SPECIAL) && !parse_special) { i += m; continue; }
    if (i > start && seg(t, s + start, i - start, w, out, parse_special)) return -1;
    ids_push(out, id);
    i += m; start = i;
  }
  if (n > start) return seg(t, s + start, n - start, w, out, parse_special);
  return 0;
}

static int seg_model(const Tokenizer *t, const uint8_t *s, size_t n, Work *w, IdVec *out, int ps) {
  (void)ps;
  return pretok_and_bpe(t, s, n, w, out);
}
static int seg_raw(const Tokenizer *t, const uint8_t *s, size_t n, Work *w, IdVec *out, int ps) {
  if (t->n_norm == 0) return split_added(t, &t->norm_trie, s, n, ps, seg_model, w, out);
  normalize(t, s, n, w);
  /* the normalised text is moved out of w->norm: nested calls reuse the work buffers */
  Buf nb = w->norm; w->norm = (Buf){0};
  int rc = split_added(t, &t->norm_trie, (const uint8_t *)nb.b, nb.n, ps, seg_model, w, out);
  free(w->norm.b); w->norm = nb;
  return rc;
}
static int seg_spm(const Tokenizer *t, const uint8_t *s, size_t n, Work *w, IdVec *out, int ps) {
  (void)w; (void)ps;
  return t5g_spm_encode(t->spm, (const char *)s, n, &out->v, &out->n, &out->cap);
}

int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int add_bos, int add_eos,
                     int parse_special, int32_t **ids, int64_t *n) {
  *ids = NULL; *n = 0;
  if (add_bos && t->specials.bos < 0) return t5g_error("%s: add_bos requested but the vocabulary has no <bos>", t->path);
  if (add_eos && t->specials.eos < 0) return t5g_error("%s: add_eos requested but the vocabulary has no <eos>", t->path);
  IdVec out = {0};
  Work w = {0};
  if (add_bos) ids_push(&out, t->specials.bos);
  int rc;
  if (t->backend == BACKEND_JSON)
    rc = split_added(t, &t->raw_trie, (const uint8_t *)text, len, parse_special, seg_raw, &w, &out);
  else if (parse_special)
    rc = split_added(t, &t->special_trie, (const uint8_t *)text, len, 1, seg_spm, &w, &out);
  else
    rc = len ? seg_spm(t, (const uint8_t *)text, len, &w, &out, 0) : 0;
  free(w.sym); free(w.heap); free(w.norm.b); free(w.tmp.b); free(w.cache); free(w.keys.b); free(w.vals.v);
  if (rc) { free(out.v); return -1; }
  if (add_eos) ids_push(&out, t->specials.eos);
  if (!out.v) out.v = t5g_malloc(sizeof(int32_t));
  *ids = out.v; *n = out.n;
  return 0;
}

/* ------------------------------------------------------------------------------------------- */
/* Decoding                                                                                     */

/* A list of strings in one buffer: string i is b[off[i] .. off[i+1]). */
typedef struct { Buf buf; size_t *off; size_t n, cap; } StrList;
static void sl_reset(StrList *l) { l->buf.n = 0; l->n = 0; if (!l->off) { l->cap = 64; l->off = t5g_malloc(l->cap * sizeof(size_t)); } l->off[0] = 0; }
static void sl_end(StrList *l) {  /* close the string being appended */
  if (l->n + 2 > l->cap) { l->cap *= 2; l->off = t5g_realloc(l->off, l->cap * sizeof(size_t)); }
  l->off[++l->n] = l->buf.n;
}
#define SL_STR(l, i) ((l)->buf.b + (l)->off[i])
#define SL_LEN(l, i) ((l)->off[(i) + 1] - (l)->off[i])

static const char k_replacement_char[] = "\xEF\xBF\xBD";

static void dec_apply(const DecOp *op, const StrList *in, StrList *out) {
  sl_reset(out);
  if (op->type == DEC_FUSE) {
    buf_put(&out->buf, "", 0);
    for (size_t i = 0; i < in->n; i++) buf_put(&out->buf, SL_STR(in, i), SL_LEN(in, i));
    sl_end(out);
    return;
  }
  uint8_t bytes_run[4096]; size_t nrun = 0;
  for (size_t i = 0; i <= in->n; i++) {
    const char *s = i < in->n ? SL_STR(in, i) : NULL;
    size_t n = i < in->n ? SL_LEN(in, i) : 0;
    if (op->type == DEC_BYTE_FALLBACK) {
      int byte = -1;
      if (s && n == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>') {
        char hex[3] = {s[3], s[4], 0}; char *end;
        long v = strtol(hex, &end, 16);
        if (end == hex + 2) byte = (int)v;
      }
      if (byte >= 0 && nrun < sizeof bytes_run) { bytes_run[nrun++] = (uint8_t)byte; continue; }
      if (nrun) {
        if (utf8_valid(bytes_run, nrun)) { buf_put(&out->buf, bytes_run, nrun); sl_end(out); }
        else for (size_t k = 0; k < nrun; k++) { buf_put(&out->buf, k_replacement_char, 3); sl_end(out); }
        nrun = 0;
      }
      if (byte >= 0) { bytes_run[nrun++] = (uint8_t)byte; continue; }
      if (s) { buf_put(&out->buf, s, n); sl_end(out); }
    } else if (op->type == DEC_REPLACE) {
      if (!s) break;
      buf_put(&out->buf, "", 0);
      size_t j = 0;
      while (j < n) {
        const char *m = op->plen ? memmem(s + j, n - j, op->pat, op->plen) : NULL;
        if (!m) break;
        buf_put(&out->buf, s + j, (size_t)(m - (s + j)));
        buf_put(&out->buf, op->rep, op->rlen);
        j = (size_t)(m - s) + op->plen;
      }
      buf_put(&out->buf, s + j, n - j);
      sl_end(out);
    } else { /* DEC_STRIP: up to start leading / stop trailing copies of the content char */
      if (!s) break;
      size_t a = 0, b = n;
      for (int k = 0; k < op->start && b - a >= op->plen && memcmp(s + a, op->pat, op->plen) == 0; k++) a += op->plen;
      for (int k = 0; k < op->stop && b - a >= op->plen && memcmp(s + b - op->plen, op->pat, op->plen) == 0; k++) b -= op->plen;
      buf_put(&out->buf, s + a, b - a);
      sl_end(out);
    }
  }
}

char *tokenizer_decode(const Tokenizer *t, const int32_t *ids, int64_t n, int skip_special) {
  for (int64_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= t->n_vocab) {
      t5g_error("%s: token id %d (position %lld) is out of range [0, %d)", t->path, (int)ids[i], (long long)i, t->n_vocab);
      return NULL;
    }
  if (t->backend == BACKEND_SPM) {
    Buf out = {0};
    buf_put(&out, "", 0);
    int64_t run = 0;
    for (int64_t i = 0; i <= n; i++) {
      int special = i < n && (t->flags[ids[i]] & TF_SPECIAL);
      if (i < n && !special) continue;
      if (i > run && t5g_spm_decode(t->spm, ids + run, i - run, &out.b, &out.n, &out.cap)) { free(out.b); return NULL; }
      if (i < n && !skip_special) buf_put(&out, t->arena + t->off[ids[i]], t->plen[ids[i]]);
      run = i + 1;
    }
    return out.b;
  }
  StrList a = {0}, b = {0};
  sl_reset(&a);
  for (int64_t i = 0; i < n; i++) {
    int id = ids[i];
    if (skip_special && (t->flags[id] & TF_SPECIAL)) continue;
    buf_put(&a.buf, t->arena + t->off[id], t->plen[id]);
    sl_end(&a);
  }
  char *res;
  if (!t->has_decoder) {   /* tokenizers joins with " " when there is no decoder */
    Buf out = {0};
    buf_put(&out, "", 0);
    for (size_t i = 0; i < a.n; i++) { if (i) buf_put(&out, " ", 1); buf_put(&out, SL_STR(&a, i), SL_LEN(&a, i)); }
    res = out.b;
  } else {
    StrList *cur = &a, *nxt = &b;
    for (int k = 0; k < t->n_dec; k++) { dec_apply(&t->dec[k], cur, nxt); StrList *x = cur; cur = nxt; nxt = x; }
    Buf out = {0};
    buf_put(&out, "", 0);
    for (size_t i = 0; i < cur->n; i++) buf_put(&out, SL_STR(cur, i), SL_LEN(cur, i));
    res = out.b;
  }
  free(a.buf.b); free(a.off); free(b.buf.b); free(b.off);
  return res;
}

/* ------------------------------------------------------------------------------------------- */
/* Queries                                                                                      */

int tokenizer_vocab_size(const Tokenizer *t) { return t->n_vocab; }
uint64_t tokenizer_hash(const Tokenizer *t) { return t->hash; }
const char *tokenizer_path(const Tokenizer *t) { return t->path; }
TokenizerSpecials tokenizer_specials(const Tokenizer *t) { return t->specials; }
int tokenizer_piece_to_id(const Tokenizer *t, const char *piece) { return vocab_find(t, piece, strlen(piece)); }
const char *tokenizer_id_to_piece(const Tokenizer *t, int id) {
  return id >= 0 && id < t->n_vocab ? t->arena + t->off[id] : NULL;
}

void tokenizer_free(Tokenizer *t) {
  if (!t) return;
  free(t->path); free(t->arena); free(t->off); free(t->plen); free(t->flags); free(t->byte_val);
  free(t->slots); free(t->merges); free(t->merge_new); free(t->merge_pairs);
  free(t->raw_trie.nodes); free(t->norm_trie.nodes); free(t->special_trie.nodes);
  for (int k = 0; k < t->n_norm; k++) { free(t->norm[k].pat); free(t->norm[k].rep); }
  free(t->norm);
  free(t->pre.pat); free(t->ws);
  for (int k = 0; k < t->n_dec; k++) { free(t->dec[k].pat); free(t->dec[k].rep); }
  free(t->dec);
  if (t->spm) t5g_spm_free(t->spm);
  free(t);
}

/* ------------------------------------------------------------------------------------------- */
/* Loading                                                                                      */

static void find_specials(Tokenizer *t) {
  TokenizerSpecials *s = &t->specials;
  s->pad = tokenizer_piece_to_id(t, "<pad>");
  s->eos = tokenizer_piece_to_id(t, "<eos>");
  s->bos = tokenizer_piece_to_id(t, "<bos>");
  s->unk = tokenizer_piece_to_id(t, "<unk>");
  s->mask = tokenizer_piece_to_id(t, "<mask>");
  s->start_of_turn = tokenizer_piece_to_id(t, "<start_of_turn>");
  s->end_of_turn = tokenizer_piece_to_id(t, "<end_of_turn>");
  s->unused0 = tokenizer_piece_to_id(t, "<unused0>");
  if (t->backend == BACKEND_SPM) {  /* SentencePiece's reserved ids when named otherwise (</s>, <s>) */
    if (s->pad < 0) s->pad = t5g_spm_pad_id(t->spm);
    if (s->eos < 0) s->eos = t5g_spm_eos_id(t->spm);
    if (s->bos < 0) s->bos = t5g_spm_bos_id(t->spm);
    if (s->unk < 0) s->unk = t5g_spm_unk_id(t->spm);
  }
}

/* Pieces given as (id -> string) with known total size: allocate the piece tables. */
static void alloc_pieces(Tokenizer *t, int n, size_t arena_bytes) {
  t->n_vocab = n;
  t->arena = t5g_malloc(arena_bytes);
  t->off = t5g_calloc((size_t)n, sizeof(size_t));
  t->plen = t5g_calloc((size_t)n, sizeof(uint32_t));
  t->flags = t5g_calloc((size_t)n, 1);
}

static const char *json_type_name(const cJSON *x) {
  if (!x) return "nothing";
  if (cJSON_IsString(x)) return "a string";
  if (cJSON_IsNumber(x)) return "a number";
  if (cJSON_IsBool(x)) return "a boolean";
  if (cJSON_IsNull(x)) return "null";
  if (cJSON_IsArray(x)) return "an array";
  if (cJSON_IsObject(x)) return "an object";
  return "an invalid value";
}
static int json_bool(const cJSON *o, const char *key, int dflt) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!x || cJSON_IsNull(x)) return dflt;
  if (cJSON_IsBool(x)) return cJSON_IsTrue(x);
  return dflt;
}
/* {"String": s} pattern of Replace/Split; NULL when it is a Regex or malformed. */
static const char *json_string_pattern(const cJSON *o) {
  const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
  const cJSON *s = p ? cJSON_GetObjectItemCaseSensitive(p, "String") : NULL;
  return cJSON_IsString(s) ? s->valuestring : NULL;
}

static int parse_normalizer(Tokenizer *t, const cJSON *o, const char *where) {
  if (!o || cJSON_IsNull(o)) return 0;
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
  if (!cJSON_IsString(type)) return t5g_error("%s: %s has no \"type\" string", t->path, where);
  const char *ty = type->valuestring;
  if (strcmp(ty, "Sequence") == 0) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "normalizers"), *x;
    if (!cJSON_IsArray(list)) return t5g_error("%s: %s.normalizers: expected an array, found %s", t->path, where, json_type_name(list));
    cJSON_ArrayForEach(x, list) if (parse_normalizer(t, x, where)) return -1;
    return 0;
  }
  NormOp op = {0};
  if (strcmp(ty, "Replace") == 0) {
    const char *pat = json_string_pattern(o);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "content");
    if (!pat || !*pat) return t5g_error("%s: %s Replace: only a non-empty {\"String\": ...} pattern is supported (Regex patterns are not)", t->path, where);
    if (!cJSON_IsString(c)) return t5g_error("%s: %s Replace: \"content\" must be a string, found %s", t->path, where, json_type_name(c));
    op = (NormOp){NORM_REPLACE, t5g_strdup(pat), strlen(pat), t5g_strdup(c->valuestring), strlen(c->valuestring)};
  } else if (strcmp(ty, "Prepend") == 0) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "prepend");
    if (!cJSON_IsString(c)) return t5g_error("%s: %s Prepend: \"prepend\" must be a string, found %s", t->path, where, json_type_name(c));
    op = (NormOp){NORM_PREPEND, NULL, 0, t5g_strdup(c->valuestring), strlen(c->valuestring)};
  } else {
    return t5g_error("%s: %s type \"%s\" is not supported (Gemma tokenizer.json files use Replace, Prepend and Sequence)", t->path, where, ty);
  }
  t->norm = t5g_realloc(t->norm, (size_t)(t->n_norm + 1) * sizeof(NormOp));
  t->norm[t->n_norm++] = op;
  return 0;
}

static int parse_pre_tokenizer(Tokenizer *t, const cJSON *o) {
  if (!o || cJSON_IsNull(o)) return 0;
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
  if (!cJSON_IsString(type)) return t5g_error("%s: pre_tokenizer has no \"type\" string", t->path);
  if (strcmp(type->valuestring, "Sequence") == 0) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "pretokenizers");
    if (cJSON_IsArray(list) && cJSON_GetArraySize(list) == 0) return 0;
    if (cJSON_IsArray(list) && cJSON_GetArraySize(list) == 1) return parse_pre_tokenizer(t, list->child);
    return t5g_error("%s: pre_tokenizer Sequence with %d members is not supported (one Split is)", t->path,
                     cJSON_IsArray(list) ? cJSON_GetArraySize(list) : -1);
  }
  if (strcmp(type->valuestring, "Split") != 0)
    return t5g_error("%s: pre_tokenizer type \"%s\" is not supported (Gemma tokenizer.json files use Split on a string or none)", t->path, type->valuestring);
  const char *pat = json_string_pattern(o);
  if (!pat || !*pat) return t5g_error("%s: pre_tokenizer Split: only a non-empty {\"String\": ...} pattern is supported", t->path);
  if (json_bool(o, "invert", 0)) return t5g_error("%s: pre_tokenizer Split with \"invert\": true is not supported", t->path);
  const cJSON *b = cJSON_GetObjectItemCaseSensitive(o, "behavior");
  if (!cJSON_IsString(b)) return t5g_error("%s: pre_tokenizer Split: \"behavior\" must be a string, found %s", t->path, json_type_name(b));
  static const struct { const char *name; int v; } beh[] = {
    {"Removed", SPLIT_REMOVED}, {"Isolated", SPLIT_ISOLATED}, {"MergedWithPrevious", SPLIT_MERGED_PREV},
    {"MergedWithNext", SPLIT_MERGED_NEXT}, {"Contiguous", SPLIT_CONTIGUOUS}};
  int v = 0;
  for (size_t k = 0; k < sizeof beh / sizeof beh[0]; k++) if (strcmp(b->valuestring, beh[k].name) == 0) v = beh[k].v;
  if (!v) return t5g_error("%s: pre_tokenizer Split: unknown behavior \"%s\"", t->path, b->valuestring);
  t->pre = (PreTok){1, t5g_strdup(pat), strlen(pat), v};
  return 0;
}

static int parse_decoder(Tokenizer *t, const cJSON *o) {
  if (!o || cJSON_IsNull(o)) return 0;
  t->has_decoder = 1;
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
  if (!cJSON_IsString(type)) return t5g_error("%s: decoder has no \"type\" string", t->path);
  const char *ty = type->valuestring;
  if (strcmp(ty, "Sequence") == 0) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "decoders"), *x;
    if (!cJSON_IsArray(list)) return t5g_error("%s: decoder.decoders: expected an array, found %s", t->path, json_type_name(list));
    cJSON_ArrayForEach(x, list) if (parse_decoder(t, x)) return -1;
    return 0;
  }
  DecOp op = {0};
  if (strcmp(ty, "Replace") == 0) {
    const char *pat = json_string_pattern(o);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "content");
    if (!pat || !*pat || !cJSON_IsString(c)) return t5g_error("%s: decoder Replace: expected a {\"String\": ...} pattern and a string content", t->path);
    op = (DecOp){DEC_REPLACE, t5g_strdup(pat), strlen(pat), t5g_strdup(c->valuestring), strlen(c->valuestring), 0, 0};
  } else if (strcmp(ty, "ByteFallback") == 0) {
    op.type = DEC_BYTE_FALLBACK;
  } else if (strcmp(ty, "Fuse") == 0) {
    op.type = DEC_FUSE;
  } else if (strcmp(ty, "Strip") == 0) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "content");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "start"), *b = cJSON_GetObjectItemCaseSensitive(o, "stop");
    if (!cJSON_IsString(c) || !cJSON_IsNumber(a) || !cJSON_IsNumber(b)) return t5g_error("%s: decoder Strip: expected string content and numeric start/stop", t->path);
    op = (DecOp){DEC_STRIP, t5g_strdup(c->valuestring), strlen(c->valuestring), NULL, 0, a->valueint, b->valueint};
  } else {
    return t5g_error("%s: decoder type \"%s\" is not supported (Gemma tokenizer.json files use Replace, ByteFallback, Fuse, Strip)", t->path, ty);
  }
  t->dec = t5g_realloc(t->dec, (size_t)(t->n_dec + 1) * sizeof(DecOp));
  t->dec[t->n_dec++] = op;
  return 0;
}

static void hash_pieces(Tokenizer *t) {
  uint64_t h = T5G_FNV_SEED;
  for (int id = 0; id < t->n_vocab; id++) {
    uint32_t hdr[2] = {t->plen[id], t->flags[id] & TF_SPECIAL};
    h = t5g_fnv1a64(hdr, sizeof hdr, h);
    h = t5g_fnv1a64(t->arena + t->off[id], t->plen[id], h);
  }
  t->hash = h;
}

/* Enable the word split of bpe_split() when it cannot change the result (see struct Tokenizer):
 * R = the content of the normaliser's Replace of " ", a vocabulary piece, no BPE ignore_merges,
 * and no piece holding R at a byte offset k > 0 unless the L bytes before k are R again. */
static void enable_word_split(Tokenizer *t) {
  const NormOp *rep = NULL;
  for (int k = 0; k < t->n_norm; k++)
    if (t->norm[k].type == NORM_REPLACE && t->norm[k].plen == 1 && t->norm[k].pat[0] == ' ') rep = &t->norm[k];
  if (!rep || rep->rlen == 0 || t->ignore_merges || vocab_find(t, rep->rep, rep->rlen) < 0) return;
  const char *R = rep->rep; size_t L = rep->rlen;
  for (int id = 0; id < t->n_vocab; id++) {
    const char *p = t->arena + t->off[id]; size_t n = t->plen[id];
    for (size_t i = 1; i + L <= n; i++) {
      const char *m = memmem(p + i, n - i, R, L);
      if (!m) break;
      size_t k = (size_t)(m - p);
      if (k < L || memcmp(p + k - L, R, L) != 0) return;   /* "xR" inside a piece: not safe */
      i = k;
    }
  }
  t->ws = t5g_malloc(L); memcpy(t->ws, R, L); t->ws_len = L;
}

static Tokenizer *load_json(const char *path) {
  size_t len;
  char *text = t5g_read_file(path, &len);
  if (!text) return NULL;
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
  if (!root) {
    size_t pos = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
    int line = 1, col = 1;
    for (size_t i = 0; i < pos; i++) { if (text[i] == '\n') { line++; col = 1; } else col++; }
    t5g_error("%s: malformed JSON at line %d, column %d (byte %zu): expected a Hugging Face tokenizer.json", path, line, col, pos);
    free(text);
    return NULL;
  }
  free(text);
  Tokenizer *t = t5g_calloc(1, sizeof *t);
  t->backend = BACKEND_JSON;
  t->path = t5g_strdup(path);
  t->unk_id = -1;
  trie_init(&t->raw_trie); trie_init(&t->norm_trie); trie_init(&t->special_trie);
  char *tmp = NULL;
#define FAIL(...) do { t5g_error(__VA_ARGS__); goto fail; } while (0)
  if (!cJSON_IsObject(root)) FAIL("%s: expected a JSON object (Hugging Face tokenizer.json), found %s", path, json_type_name(root));
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
  if (!cJSON_IsObject(model)) FAIL("%s: field \"model\": expected an object, found %s", path, json_type_name(model));
  const cJSON *mtype = cJSON_GetObjectItemCaseSensitive(model, "type");
  if (!cJSON_IsString(mtype)) FAIL("%s: field \"model.type\": expected a string (\"BPE\"), found %s", path, json_type_name(mtype));
  if (strcmp(mtype->valuestring, "BPE") != 0)
    FAIL("%s: field \"model.type\" is \"%s\"; only \"BPE\" (the Gemma tokenizer.json model) is supported", path, mtype->valuestring);
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
  if (!cJSON_IsObject(vocab)) FAIL("%s: field \"model.vocab\": expected an object {piece: id}, found %s", path, json_type_name(vocab));
  const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
  if (!cJSON_IsArray(merges)) FAIL("%s: field \"model.merges\": expected an array, found %s", path, json_type_name(merges));
  const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
  if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added))
    FAIL("%s: field \"added_tokens\": expected an array, found %s", path, json_type_name(added));

  const cJSON *x;
  /* dropout / affixes would change the encoding; refuse them rather than ignore them */
  x = cJSON_GetObjectItemCaseSensitive(model, "dropout");
  if (x && cJSON_IsNumber(x) && x->valuedouble > 0 && x->valuedouble < 1)
    FAIL("%s: field \"model.dropout\" is %g; BPE dropout is not supported (set it to null)", path, x->valuedouble);
  const char *affix[] = {"continuing_subword_prefix", "end_of_word_suffix"};
  for (int k = 0; k < 2; k++) {
    x = cJSON_GetObjectItemCaseSensitive(model, affix[k]);
    if (x && cJSON_IsString(x) && x->valuestring[0]) FAIL("%s: field \"model.%s\" is \"%s\"; not supported by the Gemma loader", path, affix[k], x->valuestring);
  }
  t->byte_fallback = json_bool(model, "byte_fallback", 0);
  t->fuse_unk = json_bool(model, "fuse_unk", 0);
  t->ignore_merges = json_bool(model, "ignore_merges", 0);

  /* vocabulary: ids must cover 0..n-1 (added tokens may extend it) */
  int n = 0; size_t arena = 0;
  cJSON_ArrayForEach(x, vocab) {
    if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble > 1e8 || x->valuedouble != (double)x->valueint)
      FAIL("%s: field \"model.vocab\": the id of piece \"%s\" must be a non-negative integer, found %s", path, x->string, json_type_name(x));
    if (x->valueint + 1 > n) n = x->valueint + 1;
    arena += strlen(x->string) + 1;
  }
  if (added && cJSON_IsArray(added)) cJSON_ArrayForEach(x, added) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(x, "id"), *c = cJSON_GetObjectItemCaseSensitive(x, "content");
    if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > 1e8 || !cJSON_IsString(c) || !c->valuestring[0])
      FAIL("%s: field \"added_tokens\": each entry needs a non-negative integer \"id\" and a non-empty string \"content\"", path);
    if (id->valueint + 1 > n) n = id->valueint + 1;
    arena += strlen(c->valuestring) + 1;
  }
  if (n == 0) FAIL("%s: field \"model.vocab\" is empty", path);
  alloc_pieces(t, n, arena);
  {
    size_t pos = 0;
    for (int i = 0; i < n; i++) t->off[i] = SIZE_MAX;
    cJSON_ArrayForEach(x, vocab) {
      int id = x->valueint;
      if (t->off[id] != SIZE_MAX)
        FAIL("%s: field \"model.vocab\": id %d is given to both \"%s\" and \"%s\"", path, id, t->arena + t->off[id], x->string);
      size_t l = strlen(x->string);
      memcpy(t->arena + pos, x->string, l + 1);
      t->off[id] = pos; t->plen[id] = (uint32_t)l; pos += l + 1;
    }
    if (added && cJSON_IsArray(added)) cJSON_ArrayForEach(x, added) {
      int id = cJSON_GetObjectItemCaseSensitive(x, "id")->valueint;
      const char *c = cJSON_GetObjectItemCaseSensitive(x, "content")->valuestring;
      if (t->off[id] != SIZE_MAX) {
        if (strcmp(t->arena + t->off[id], c) != 0)
          FAIL("%s: added token \"%s\" has id %d, which the vocabulary gives to \"%s\"", path, c, id, t->arena + t->off[id]);
      } else {
        size_t l = strlen(c);
        memcpy(t->arena + pos, c, l + 1);
        t->off[id] = pos; t->plen[id] = (uint32_t)l; pos += l + 1;
      }
      if (json_bool(x, "single_word", 0) || json_bool(x, "lstrip", 0) || json_bool(x, "rstrip", 0))
        FAIL("%s: added token \"%s\" (id %d) uses single_word/lstrip/rstrip, which this loader does not support", path, c, id);
      t->flags[id] |= TF_ADDED;
      if (json_bool(x, "special", 0)) t->flags[id] |= TF_SPECIAL;
      if (json_bool(x, "normalized", 0)) t->flags[id] |= TF_NORMALIZED;
      trie_insert(json_bool(x, "normalized", 0) ? &t->norm_trie : &t->raw_trie, c, strlen(c), id);
    }
    for (int i = 0; i < n; i++)
      if (t->off[i] == SIZE_MAX) FAIL("%s: field \"model.vocab\": no piece has id %d (ids must run from 0 to %d)", path, i, n - 1);
  }
  vocab_index(t);

  x = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
  if (cJSON_IsString(x)) {
    t->unk_id = vocab_find(t, x->valuestring, strlen(x->valuestring));
    if (t->unk_id < 0) FAIL("%s: field \"model.unk_token\" is \"%s\", which is not in the vocabulary", path, x->valuestring);
  }

  /* merges: "a b" strings (tokenizers < 0.20) or ["a", "b"] pairs */
  {
    int64_t nm = cJSON_GetArraySize(merges);
    t->n_merges = nm;
    uint64_t cap = 1;
    while (cap < (uint64_t)nm + (uint64_t)nm * 3 / 4 + 16) cap <<= 1;   /* load <= 4/7 */
    t->merge_mask = cap - 1;
    t->merges = t5g_calloc(cap, sizeof(MergeSlot));
    t->rank_bits = 1;
    while (((int64_t)1 << t->rank_bits) < nm) t->rank_bits++;
    t->rank_mask = ((uint64_t)1 << t->rank_bits) - 1;
    int key_bits = 1;
    while (key_bits < 64 && ((uint64_t)1 << key_bits) <= (uint64_t)n * (uint64_t)n) key_bits++;
    if (key_bits + t->rank_bits > 64)
      FAIL("%s: %d pieces and %lld merges are too many for the merge table", path, n, (long long)nm);
    t->merge_new = t5g_malloc((size_t)(nm + 1) * sizeof(int32_t));
    t->merge_pairs = t5g_malloc((size_t)(2 * nm + 1) * sizeof(int32_t));
    size_t tmpcap = 256; tmp = t5g_malloc(tmpcap);
    int64_t rank = 0;
    cJSON_ArrayForEach(x, merges) {
      const char *a, *b; size_t la, lb;
      if (cJSON_IsString(x)) {
        const char *sp = strchr(x->valuestring, ' ');
        if (!sp || strchr(sp + 1, ' '))
          FAIL("%s: field \"model.merges\"[%lld] is \"%s\"; expected two pieces separated by one space", path, (long long)rank, x->valuestring);
        a = x->valuestring; la = (size_t)(sp - a); b = sp + 1; lb = strlen(b);
      } else if (cJSON_IsArray(x) && cJSON_GetArraySize(x) == 2 && cJSON_IsString(x->child) && cJSON_IsString(x->child->next)) {
        a = x->child->valuestring; la = strlen(a); b = x->child->next->valuestring; lb = strlen(b);
      } else {
        FAIL("%s: field \"model.merges\"[%lld]: expected \"a b\" or [\"a\", \"b\"], found %s", path, (long long)rank, json_type_name(x));
      }
      int ia = vocab_find(t, a, la), ib = vocab_find(t, b, lb);
      if (la + lb + 1 > tmpcap) { tmpcap = 2 * (la + lb + 1); tmp = t5g_realloc(tmp, tmpcap); }
      memcpy(tmp, a, la); memcpy(tmp + la, b, lb);
      int inew = vocab_find(t, tmp, la + lb);
      if (ia < 0 || ib < 0 || inew < 0) {
        tmp[la + lb] = 0;
        FAIL("%s: field \"model.merges\"[%lld]: piece \"%s\" is not in the vocabulary", path, (long long)rank,
             ia < 0 ? a : ib < 0 ? b : tmp);
      }
      merge_put(t, ia, ib, (int32_t)rank);
      t->merge_new[rank] = inew;
      t->merge_pairs[2 * rank] = ia; t->merge_pairs[2 * rank + 1] = ib;
      rank++;
    }
  }
  if (parse_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), "normalizer")) goto fail;
  if (parse_pre_tokenizer(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"))) goto fail;
  if (parse_decoder(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"))) goto fail;
#undef FAIL
  enable_word_split(t);
  free(tmp);
  cJSON_Delete(root);
  find_specials(t);
  hash_pieces(t);
  t->hash = t5g_fnv1a64(t->merge_pairs, (size_t)(2 * t->n_merges) * sizeof(int32_t), t->hash);
  return t;
fail:
  free(tmp);
  cJSON_Delete(root);
  tokenizer_free(t);
  return NULL;
}

static Tokenizer *load_spm(const char *path) {
  T5gSpm *spm = t5g_spm_load(path);
  if (!spm) return NULL;
  Tokenizer *t = t5g_calloc(1, sizeof *t);
  t->backend = BACKEND_SPM;
  t->path = t5g_strdup(path);
  t->spm = spm;
  t->unk_id = t5g_spm_unk_id(spm);
  trie_init(&t->raw_trie); trie_init(&t->norm_trie); trie_init(&t->special_trie);
  int n = t5g_spm_vocab_size(spm);
  size_t arena = 0;
  for (int id = 0; id < n; id++) { size_t l; t5g_spm_piece(spm, id, &l); arena += l + 1; }
  alloc_pieces(t, n, arena);
  size_t pos = 0;
  uint64_t h = T5G_FNV_SEED;
  for (int id = 0; id < n; id++) {
    size_t l; const char *p = t5g_spm_piece(spm, id, &l);
    memcpy(t->arena + pos, p, l); t->arena[pos + l] = 0;
    t->off[id] = pos; t->plen[id] = (uint32_t)l; pos += l + 1;
    int kind = t5g_spm_kind(spm, id);
    if (kind == T5G_SPM_CONTROL || kind == T5G_SPM_UNKNOWN ||
        strcmp(p, "<start_of_turn>") == 0 || strcmp(p, "<end_of_turn>") == 0)
      t->flags[id] |= TF_SPECIAL;
    float score = t5g_spm_score(spm, id);
    int32_t rec[2]; memcpy(&rec[0], &score, 4); rec[1] = kind;
    h = t5g_fnv1a64(rec, sizeof rec, h);
  }
  vocab_index(t);
  for (int id = 0; id < n; id++)
    if ((t->flags[id] & TF_SPECIAL) && t->plen[id] > 0) trie_insert(&t->special_trie, t->arena + t->off[id], t->plen[id], id);
  find_specials(t);
  hash_pieces(t);
  t->hash = t5g_fnv1a64(&h, sizeof h, t->hash);
  return t;
}

Tokenizer *tokenizer_load(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) { t5g_error("%s: cannot open tokenizer: %s", path, strerror(errno)); return NULL; }
  if (S_ISDIR(st.st_mode)) {
    char *j = t5g_path_join(path, "tokenizer.json");
    if (t5g_file_exists(j)) { Tokenizer *t = load_json(j); free(j); return t; }
    free(j);
    char *m = t5g_path_join(path, "tokenizer.model");
    if (t5g_file_exists(m)) { Tokenizer *t = load_spm(m); free(m); return t; }
    free(m);
    t5g_error("%s: directory holds neither tokenizer.json nor tokenizer.model", path);
    return NULL;
  }
  /* sniff: a JSON document starts with '{' (after whitespace); anything else is tried as a
   * SentencePiece protobuf */
  FILE *f = fopen(path, "rb");
  if (!f) { t5g_error("%s: cannot open tokenizer: %s", path, strerror(errno)); return NULL; }
  int c;
  do c = fgetc(f); while (c == ' ' || c == '\t' || c == '\n' || c == '\r');
  fclose(f);
  if (c == EOF) { t5g_error("%s: tokenizer file is empty", path); return NULL; }
  size_t pl = strlen(path);
  if (c == '{' || c == '[' || (pl >= 5 && strcmp(path + pl - 5, ".json") == 0)) return load_json(path);
  return load_spm(path);
}
