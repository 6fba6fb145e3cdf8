/* safetensors.h: Hugging Face safetensors files: reader (mmap, single file or sharded) and
 * streaming writer (single file or shards with model.safetensors.index.json).
 *
 * Format (huggingface/safetensors, docs "safetensors format"):
 *   bytes 0..7        N, unsigned 64-bit little-endian: length of the JSON header
 *   bytes 8..8+N-1    JSON object, UTF-8, may be padded with trailing spaces:
 *                       { "<tensor name>": {"dtype": "BF16", "shape": [d0, d1, ...],
 *                                           "data_offsets": [begin, end]}, ...,
 *                         "__metadata__": {"<key>": "<string>", ...} }   (metadata optional)
 *   bytes 8+N..       data section; a tensor's bytes are [8+N+begin, 8+N+end), row-major,
 *                     little-endian.
 * A sharded checkpoint is several such files plus "<prefix>.safetensors.index.json":
 *   {"metadata": {"total_size": <bytes of all tensors>}, "weight_map": {"<name>": "<file>"}}
 * with files named "<prefix>-00001-of-00003.safetensors" (transformers' naming).
 *
 * Supported element types: BF16, F16, F32. Other safetensors dtypes (F64, I64, I32, I16, I8, U8,
 * BOOL, F8_E4M3, F8_E5M2, ...) are refused by name. Sizes and offsets are 64-bit everywhere.
 *
 * Reader validation (every failure is an error naming the file and, where there is one, the
 * tensor; never a crash): the file holds at least 8 bytes; the header length lies within the
 * file (and is at most 100 MB, the reference implementation's limit); the header is well-formed
 * JSON whose top level is an object; each entry has a known dtype, a shape of non-negative
 * integers (at most ST_MAX_DIMS of them, element count without overflow) and data_offsets
 * [begin, end] with 0 <= begin <= end <= data-section size and end - begin == numel * dtype
 * size; no two tensors overlap; no name repeats (also across shards). Gaps between tensors are
 * accepted (the reference writer never leaves any; our writer never does either). In a sharded
 * checkpoint the index must be well-formed, every file it names must exist and be a plain file
 * name in the same directory, every tensor it maps must be in the file it names, and every
 * tensor of a shard must be listed in the index.
 *
 * Conversions to f32 are exact: bf16 -> f32 is a 16-bit shift; f16 -> f32 covers zeros,
 * subnormals, normals, infinities and NaN (payload kept). Conversions from f32 round to nearest,
 * ties to even: bf16 keeps NaN a (quiet) NaN with its sign and top payload bits; values that
 * round past the largest finite number become infinity, as in PyTorch's .to(torch.bfloat16) and
 * numpy's astype(float16).
 */
#ifndef T5G_SAFETENSORS_H
#define T5G_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

/* ST_I32 is for integer side files (token ids, masks, positions: the batch files that
 * tests/ref/t5gemma_ref.py exchanges with `t5gemma dump`); model tensors are float. */
typedef enum { ST_F32 = 0, ST_F16 = 1, ST_BF16 = 2, ST_I32 = 3 } StDtype;

/* "F32", "F16", "BF16". */
const char *st_dtype_name(StDtype t);
/* Bytes per element: 4 (F32, I32) or 2. */
int st_dtype_size(StDtype t);
/* Parse "F32"/"F16"/"BF16" (also "f32", "fp32", "float32", "bf16", "bfloat16", "f16", "fp16",
 * "float16"): 0 and *t set, or -1 with t5g_error naming the accepted values. */
int st_dtype_parse(const char *s, StDtype *t);

/* Element conversions (exact to f32; round-to-nearest-even from f32; see the file comment). */
float    st_bf16_to_f32(uint16_t h);
uint16_t st_f32_to_bf16(float x);
float    st_f16_to_f32(uint16_t h);
uint16_t st_f32_to_f16(float x);
/* n elements of `dtype` at src (any alignment) -> f32, and back. */
void st_convert_to_f32(StDtype dtype, const void *src, float *dst, int64_t n);
void st_convert_from_f32(StDtype dtype, const float *src, void *dst, int64_t n);

/* ---- Reader ------------------------------------------------------------------------------ */

typedef struct StTensor {
  char *name;
  StDtype dtype;
  int ndim;                     /* 0 for a scalar (numel 1) */
  int64_t shape[ST_MAX_DIMS];
  int64_t numel;
  int64_t nbytes;               /* numel * dtype size */
  const void *data;             /* into the file's read-only mapping; valid until st_close */
  int file;                     /* index into StReader.files */
} StTensor;

typedef struct StFile {
  char *path;
  void *map;                    /* whole file, PROT_READ */
  size_t size;
  int64_t data_start;           /* 8 + header length */
} StFile;

typedef struct StReader {
  char *source;                 /* the path given to st_open, for messages */
  StFile *files;
  int n_files;
  StTensor *t;                  /* sorted by name */
  int n;
} StReader;

/* Open a checkpoint. `path` is a .safetensors file, a *.safetensors.index.json, or a directory
 * holding model.safetensors or model.safetensors.index.json (checked in that order, as
 * transformers does). Maps every file read-only and validates every header (see above).
 * Returns 0, or -1 with t5g_error (r is then empty; st_close is harmless). */
int  st_open(StReader *r, const char *path);
void st_close(StReader *r);
/* Tensor by exact name, or NULL. O(log n). */
const StTensor *st_find(const StReader *r, const char *name);
/* "[2304, 256000]" style shape string into buf. */
const char *st_shape_str(int ndim, const int64_t *shape, char *buf, size_t n);
/* Convert a tensor's numel elements to f32 into out (caller buffer of t->numel floats). */
void st_read_f32(const StTensor *t, float *out);
/* The tensor's file path, for messages. */
const char *st_tensor_file(const StReader *r, const StTensor *t);
/* (added by h14, issue 10) Drop the mapped pages holding bytes [byte_off, byte_off + nbytes) of
 * t's data from this process's resident set (madvise MADV_DONTNEED; whole pages, rounded
 * outward within the file's mapping). The page cache keeps the file's pages, and reading them
 * again maps them back, so t's data stays valid: this only keeps streaming readers of
 * checkpoints larger than memory (adapt, the inference loader) from accumulating the whole
 * file in their resident memory. */
void st_release(const StReader *r, const StTensor *t, int64_t byte_off, int64_t nbytes);

/* ---- Writer (streaming) ------------------------------------------------------------------ */
/* Usage: w = st_writer_begin(dir, NULL, ST_BF16, 2LL << 30);
 *        for each tensor: st_writer_plan(w, name, ndim, shape);      (all, before any write)
 *        for each tensor: st_writer_write(w, name, f32 data);        (any order, each once)
 *        st_writer_finish(w);                                        (or st_writer_abort(w))
 * The layout (shard of each tensor, offsets) is fixed at the first write, when every file's
 * header is written; data is converted from f32 in chunks and written at its offset, so no
 * second copy of a model is ever held. Tensors are stored in plan order, contiguously. Shards:
 * with max_shard_bytes > 0, tensors are packed greedily in plan order into files of at most
 * max_shard_bytes of tensor data (a tensor bigger than that gets a file of its own), as
 * transformers' save_pretrained does; when everything fits in one file (or max_shard_bytes <=
 * 0) a single "<prefix>.safetensors" is written without an index. Every file is written under a
 * temporary name and renamed by st_writer_finish once complete; the index is written last.
 * finish also removes a stale "<prefix>.safetensors.index.json" (single-file write) or stale
 * "<prefix>.safetensors" (sharded write) left in dir by an earlier save, so that the directory
 * names exactly one checkpoint. Metadata {"format": "pt"} is written (transformers refuses
 * safetensors files without it). Errors name the file and the tensor. */
typedef struct StWriter StWriter;

/* dir is created if missing; prefix NULL means "model". NULL on error (t5g_error set). */
StWriter *st_writer_begin(const char *dir, const char *prefix, StDtype dtype, int64_t max_shard_bytes);
int  st_writer_plan(StWriter *w, const char *name, int ndim, const int64_t *shape);
int  st_writer_write(StWriter *w, const char *name, const float *data);
/* Streaming variant: the writer asks fill(ctx, offset, n, out) for the tensor's elements
 * [offset, offset + n) as f32, chunk by chunk (n <= 1M elements), so a tensor is never held
 * whole in memory (streamed adaptation of 256000-row embeddings). fill returns 0, or -1 with
 * t5g_error() to abort the write. */
typedef int (*StFillFn)(void *ctx, int64_t offset, int64_t n, float *out);
int  st_writer_write_fn(StWriter *w, const char *name, StFillFn fill, void *ctx);
/* Checks that every planned tensor was written, commits the files and the index, frees w
 * (also on failure). */
int  st_writer_finish(StWriter *w);
/* Removes the temporary files and frees w. */
void st_writer_abort(StWriter *w);
/* Number of files the layout uses (valid after the first write; 1 = single file). */
int  st_writer_n_files(const StWriter *w);

/* Whole-list convenience over the streaming writer. */
typedef struct StSaveItem {
  const char *name;
  int ndim;
  const int64_t *shape;
  const float *data;
} StSaveItem;
int st_save(const char *dir, const char *prefix, StDtype dtype, int64_t max_shard_bytes,
            int n, const StSaveItem *items);

#endif
