/* shards.h: sharded, zstd-compressed token streams: writer, reader, verifier.
 *
 * A dataset is a directory holding index.json and shard files "<split>-NNNNN.tks". Each shard is
 * a little-endian file: a 128-byte header (magic "T5GTOKS\0", version, dtype uint32, counts,
 * table offsets, tokenizer identity), then independently compressed zstd frames each holding the
 * tokens of a whole number of documents, then a frame table, a document table and a 64-byte
 * footer with XXH64 checksums. The byte-by-byte layout is in docs/data-format.md. Design: the
 * magic/version header of llm.c (dev/data/data_common.py), the separate document index of
 * Megatron-LM (indexed_dataset.py) and the JSON index with sizes and hashes of MosaicML MDS
 * (format/base/writer.py), with 64-bit offsets everywhere (llm.c #828, MDS #659) and one zstd
 * frame per chunk so a reader decompresses only the frames it needs (peer-systems.md section 10).
 *
 * Token ids are stored as uint32 (the Gemma vocabulary of 256000 needs more than 16 bits) and
 * handed out as int32_t (ids are checked against the vocabulary size, which is < 2^31).
 *
 * Reading order (ShardReader): one epoch is a permutation of the split's documents, a pure
 * function of (seed, epoch, the dataset's frame and document counts):
 *   1. the split's frames (all shards, in index order) are permuted by a Fisher-Yates shuffle
 *      seeded from (seed, epoch);
 *   2. consecutive runs of `window_frames` permuted frames form windows; the documents of a
 *      window are permuted by a Fisher-Yates shuffle seeded from (seed, epoch, window).
 * A window's frames are decompressed once and stay in the frame cache while its documents are
 * read, so shuffled reading costs one decompression per frame. Memory: 8 bytes per frame for the
 * frame permutation, 8 bytes per document of one window, plus the document table kept by the
 * reader (8 bytes per document: its first token). Sequential reading allocates nothing after
 * its first document (issue 8): the frame cache's slots are sized at once to the split's largest
 * frame, the window's document buffer to window_frames x the most documents in one frame (at most
 * all documents), and the prefetch queue's slots to the split's longest document.
 * window_frames = 0 makes the whole split one
 * window: a full Fisher-Yates permutation of the document ids (8 bytes per document, fine up to
 * ~100M documents) at the cost of decompressing a frame per document. shuffle = 0 reads the
 * documents in stored order.
 *
 * Ranks: rank r of world_size reads the epoch order at global positions base + r + k*world_size,
 * k = 0, 1, ... (interleaved), so after every rank has read k documents the documents consumed
 * globally are exactly the first base + k*world_size of the epoch order. Every rank reads the
 * same number per epoch, floor((N - base) / world_size); the remainder of the epoch is dropped so
 * ranks stay in lock-step. The resume state is (seed, epoch, base, position, rank, world_size);
 * `position` is k, the documents this rank has read in the epoch since `base`. Resuming with
 * another world size: shard_state_resplit() sets base += position*world_size, position = 0, so
 * the new ranks together continue the same global order where the old ones stopped (base is 0
 * except after such a re-split, and returns to 0 at the next epoch).
 *
 * Prefetch: with prefetch_docs > 0 a thread produces this rank's upcoming documents (decompressing
 * their frames) into a bounded queue of prefetch_docs documents; the consumer pops them in order.
 * The producer follows the same deterministic sequence as the consumer would, so the output does
 * not depend on timing or on whether prefetch is on.
 *
 * Threads: a ShardReader is used by one thread at a time (plus its own prefetch thread). Several
 * readers of the same dataset may coexist.
 */
#ifndef T5G_SHARDS_H
#define T5G_SHARDS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "data/source.h"

#define SHARD_FORMAT_NAME    "t5gemma-tokens"
#define SHARD_FORMAT_VERSION 1
#define SHARD_HEADER_BYTES   128
#define SHARD_FOOTER_BYTES   64
#define SHARD_FRAME_ENTRY_BYTES 48
#define SHARD_DOC_ENTRY_BYTES   16

/* XXH64 (Collet, xxHash specification "xxhash_spec.md", XXH64 section), the checksum of every
 * table, frame and file. One-shot and streaming forms give identical results. */
uint64_t t5g_xxh64(const void *data, size_t n, uint64_t seed);
typedef struct Xxh64State { uint64_t v[4], total; uint8_t buf[32]; uint32_t nbuf; uint64_t seed; } Xxh64State;
void t5g_xxh64_init(Xxh64State *s, uint64_t seed);
void t5g_xxh64_update(Xxh64State *s, const void *data, size_t n);
uint64_t t5g_xxh64_digest(const Xxh64State *s);

/* Identity of the tokenizer that produced the ids; stored in index.json and in every shard
 * header. hash = tokenizer_hash() (0 when the ids came pre-tokenized without a tokenizer);
 * name = basename of the tokenizer path ("" when none); ids are -1 when absent. */
typedef struct ShardTokenizerInfo {
  char name[256];
  uint64_t hash;
  int64_t vocab_size;
  int32_t bos_id, eos_id, pad_id;
} ShardTokenizerInfo;

/* ---------------------------------------------------------------- writer */

typedef struct ShardWriterOpts {
  int64_t shard_tokens;  /* a shard is closed once it holds >= this many tokens (default 50M) */
  int64_t frame_tokens;  /* target tokens per zstd frame (default 65536); a frame holds whole
                            documents, so a longer document gets a frame of its own */
  int level;             /* zstd level (default 3) */
} ShardWriterOpts;
ShardWriterOpts shard_writer_default_opts(void);

typedef struct DatasetWriter DatasetWriter;
/* Create DIR (mkdir -p) and prepare to write the splits named split_names[0..n_splits) (e.g.
 * "train", "val"; [a-z0-9_] only). Shards are written to temporary names and renamed when
 * complete; index.json is written last, atomically, by dataset_writer_finish. NULL after
 * t5g_error() on a bad argument or an unwritable directory. */
DatasetWriter *dataset_writer_open(const char *dir, const char *const *split_names, int n_splits,
                                   const ShardTokenizerInfo *tok, const ShardWriterOpts *opts);
/* Append one document (n >= 1 token ids, each in [0, vocab_size)) to split number `split`.
 * Returns 0, or -1 with t5g_error() (bad id or length, write failure). */
int dataset_writer_add(DatasetWriter *w, int split, const int32_t *ids, int64_t n);
/* Attach extra JSON text (an object, e.g. the prepare command's arguments) stored as
 * index.json's "source" field. */
void dataset_writer_set_source(DatasetWriter *w, const char *json_object);
/* Close the open shards and write index.json. Frees w. 0 or -1 with t5g_error(). */
int dataset_writer_finish(DatasetWriter *w);
/* Remove temporaries and free w; no index.json is written. */
void dataset_writer_abort(DatasetWriter *w);
/* Totals added so far (all splits). compressed_bytes counts only the zstd frames already
 * compressed: the tokens of each split's open frame are compressed at its close (a full frame, a
 * full shard, or dataset_writer_finish), so read index.json after finishing for the final ratio. */
void dataset_writer_totals(const DatasetWriter *w, int64_t *docs, int64_t *tokens, int64_t *compressed_bytes);

/* ---------------------------------------------------------------- index */

typedef struct ShardInfo {
  char *file;            /* file name inside the dataset directory */
  int64_t documents, tokens, frames;
  int64_t raw_bytes;     /* tokens * 4 */
  int64_t compressed_bytes; /* sum of the zstd frames' sizes */
  int64_t bytes;         /* file size */
  uint64_t xxh64;        /* XXH64 of the whole file, seed 0 */
} ShardInfo;
typedef struct SplitInfo {
  char *name;
  int64_t documents, tokens, raw_bytes, compressed_bytes;
  int n_shards;
  ShardInfo *shards;
} SplitInfo;
typedef struct DatasetIndex {
  char *dir;
  int version;
  ShardTokenizerInfo tok;
  int64_t frame_tokens, shard_tokens;
  int level;
  int n_splits;
  SplitInfo *splits;
  int64_t documents, tokens, raw_bytes, compressed_bytes;
} DatasetIndex;
/* Parse DIR/index.json, checking every field's presence and type and that the totals add up.
 * NULL after t5g_error() naming the file and the field. */
DatasetIndex *dataset_index_load(const char *dir);
void dataset_index_free(DatasetIndex *ix);
/* The split named `name`, or NULL. */
const SplitInfo *dataset_index_split(const DatasetIndex *ix, const char *name);

/* ---------------------------------------------------------------- verify */

/* Check every shard listed in DIR/index.json: presence, file size, whole-file XXH64, header and
 * footer against the index, table checksums and consistency, and every frame (decompressed:
 * size, XXH64 of the raw tokens, ids below the vocabulary size). Each problem is printed to
 * `report` (may be NULL) as one line "PATH: what is wrong"; shard files in DIR not listed in the
 * index are reported as warnings (not counted). With progress != NULL, one line per shard verified.
 * Returns the number of problems (0 = the dataset is sound), or -1 when index.json itself
 * cannot be read (t5g_error set, not printed: the caller reports it). */
int dataset_verify(const char *dir, FILE *report, FILE *progress);

/* ---------------------------------------------------------------- reader */

typedef struct ShardReaderOpts {
  uint64_t seed;         /* shuffle seed */
  int shuffle;           /* 1 (default): windowed shuffle as described above; 0: stored order */
  int64_t window_frames; /* frames per shuffle window (default 8); 0: the whole split */
  int rank, world_size;  /* default 0, 1 */
  int prefetch_docs;     /* queue depth of the prefetch thread; 0 (default): no thread */
  int cache_frames;      /* decompressed frames kept (LRU) per cache; default window_frames + 2,
                            at least 2 */
} ShardReaderOpts;
ShardReaderOpts shard_reader_default_opts(void);

typedef struct ShardReaderState {
  uint64_t seed, epoch, base, position;
  uint32_t rank, world_size;
} ShardReaderState;

typedef struct ShardReader ShardReader;
/* Open split `split` ("train", "val", ...) of dataset DIR: loads index.json, opens each shard,
 * checks its size, header, footer and both tables (checksums and consistency) against the index.
 * Frames are checked (XXH64 of the raw tokens, ids < vocab) each time one is decompressed.
 * NULL after t5g_error() naming the file and what is wrong. */
ShardReader *shard_reader_open(const char *dir, const char *split, const ShardReaderOpts *opts);
void shard_reader_close(ShardReader *r);

/* 0 when the dataset was made by the tokenizer with this hash and vocabulary size; -1 with
 * t5g_error() naming both identities otherwise. */
int shard_reader_check_tokenizer(const ShardReader *r, uint64_t tokenizer_hash, int64_t vocab_size);
const ShardTokenizerInfo *shard_reader_tokenizer(const ShardReader *r);
const DatasetIndex *shard_reader_index(const ShardReader *r);
int64_t shard_reader_num_docs(const ShardReader *r);
int64_t shard_reader_num_tokens(const ShardReader *r);
/* Length in tokens of document i (split order), without decompressing. -1 when out of range. */
int64_t shard_reader_doc_len(const ShardReader *r, int64_t i);

/* Random access. Document i of the split (stored order, 0 <= i < num_docs): *ids points to *n
 * tokens, valid until the next random-access call. Decompresses only the frame holding it (a
 * small LRU cache keeps recent frames). 0, or -1 with t5g_error() naming the shard. */
int shard_reader_doc(ShardReader *r, int64_t i, const int32_t **ids, int64_t *n);
/* Tokens [start, start+count) of the split's token stream (shards and documents concatenated in
 * stored order) into out[count]; the range may cross frames and shards. 0 or -1. */
int shard_reader_tokens(ShardReader *r, int64_t start, int64_t count, int32_t *out);

/* Sequential reading in this rank's epoch order. Returns 1 with the next document (*ids valid
 * until the next call), 0 at the end of this rank's share of the epoch (the state then points
 * at the start of the next epoch, so the following call continues there), -1 on error. */
int shard_reader_next(ShardReader *r, const int32_t **ids, int64_t *n);
/* The state after the last document returned by shard_reader_next (prefetched documents not yet
 * returned are not counted). */
void shard_reader_get_state(const ShardReader *r, ShardReaderState *st);
/* Continue from a saved state (seed, rank and world size are taken from it). -1 with
 * t5g_error() when rank >= world_size or base/position lie beyond the epoch. */
int shard_reader_set_state(ShardReader *r, const ShardReaderState *st);
/* Rewrite a state saved by every rank of an old world size (all ranks hold the same epoch, base
 * and position) for rank new_rank of new_world_size: base += position*world_size, position = 0. */
ShardReaderState shard_state_resplit(const ShardReaderState *st, int new_rank, int new_world_size);
/* The global document id at position p of epoch `epoch`'s order for this reader's seed and
 * shuffle settings (-1 when p is out of range). Independent of rank and prefetch. */
int64_t shard_reader_order(ShardReader *r, uint64_t epoch, int64_t p);
/* Text form of a state, "seed=S epoch=E base=B position=P rank=R world_size=W", and its parser
 * (0 or -1 with t5g_error()). */
void shard_state_format(const ShardReaderState *st, char *buf, size_t n);
int shard_state_parse(const char *text, ShardReaderState *st);

/* DocSource over shard_reader_next: yields documents forever, wrapping to the next epoch with a
 * new shuffle (errors when this rank's share of an epoch is empty). */
DocSource shard_reader_source(ShardReader *r);
/* DocSource that ends (returns 0) at the end of the current epoch: for evaluation passes. */
DocSource shard_reader_source_epoch(ShardReader *r);

#endif
