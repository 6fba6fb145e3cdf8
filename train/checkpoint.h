/* checkpoint.h: training checkpoints, one HDF5 file each (libhdf5 C API), with integrity checks,
 * and the run-directory helpers (list, newest usable, keep last K, average last K).
 *
 * File layout (readable with h5dump / h5ls -r / h5py; superblock v2 and v2 object headers, so
 * HDF5 itself checksums all metadata):
 *   /                      attributes: format = "t5gemma-checkpoint", format_version = 1,
 *                          step (int64, training steps done), checksum = "fnv1a64-256KiB",
 *                          created_unix (int64), tokenizer_hash (uint64) and
 *                          tokenizer_vocab_size (int64) when set, and complete = 1 (written last)
 *   /params/<HF name>      float32, the parameter's shape (PyTorch [out, in]), e.g.
 *                          /params/model.decoder.layers.0.cross_attn.k_proj.weight
 *   /optimizer             attributes: step (AdamW.step), beta1, beta2, eps, weight_decay,
 *                          decay_embed, max_grad_norm
 *   /optimizer/m/<HF name> float32, same shape: AdamW first moment; attribute adam_step (int64):
 *                          updates this entry has received (AdamW.entry_step)
 *   /optimizer/v/<HF name> float32, same shape: AdamW second moment
 *   /schedule              attributes: decay ("cosine", ...), peak_lr, warmup_steps, total_steps,
 *                          min_lr, min_lr_ratio, wsd_decay_frac
 *   /state/<name>          named int64 arrays (data-reader position, RNG states, ...) and strings
 *                          (fixed-length, UTF-8: the training and model config JSON, ...)
 * Every dataset carries an attribute `checksum` (uint64) over its raw little-endian bytes:
 * the bytes are cut into 262144-byte blocks (the last may be shorter), each block is hashed with
 * 64-bit FNV-1a (offset basis 0xcbf29ce484222325, t5g_fnv1a64), and the checksum is the FNV-1a of
 * the concatenated block hashes (8 little-endian bytes each); no bytes -> the offset basis.
 * Blocks make it parallel (OpenMP); ckpt_checksum() computes it.
 *
 * Integrity: a file is written under t5g_tmp_name(path), `complete` is set last, then it is
 * closed and renamed with t5g_rename_durable, so a crash never leaves a half-written file under
 * a checkpoint name. On load every dataset read is checked against its checksum (and its type and
 * shape against the model); ckpt_open refuses files that HDF5 cannot open (truncated: HDF5 checks
 * the stored end-of-file address; corrupt metadata: HDF5's metadata checksums), of another
 * format or a newer version, or without `complete`. Errors name the file and the dataset.
 * The module turns off HDF5's automatic error-stack printing (H5Eset_auto2) for the process on
 * first use; HDF5's innermost message is included in our errors instead.
 *
 * Sharded optimizer state (ZeRO-1, multi-rank): the writer takes FULL-size m and v buffers
 * (n_total floats, indexed by flat offset like ps->data); ranks gather their slices to rank 0,
 * which writes the one file (serial HDF5: a single writer). Loading takes any slice [lo, hi), so
 * each rank reads only the entries its slice touches (an entry cut by the slice is read whole
 * and verified, then the slice's part is copied). The per-entry step counters and the optimizer
 * step are the same on every rank and are stored once.
 *
 * Memory: writing and loading params/moments go straight between the flat buffers and the file
 * (no copy), except a partially covered entry on slice loads (one entry-sized scratch buffer).
 * Averaging needs one entry-sized scratch buffer.
 *
 * Errors: functions returning int return 0 on success and -1 after t5g_error(); functions
 * returning pointers return NULL after t5g_error().
 */
#ifndef T5G_CHECKPOINT_H
#define T5G_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>
#include "model/params.h"
#include "optim/adamw.h"
#include "optim/schedule.h"

#define CKPT_FORMAT "t5gemma-checkpoint"
#define CKPT_FORMAT_VERSION 1
#define CKPT_CHECKSUM_NAME "fnv1a64-256KiB"
#define CKPT_CHECKSUM_BLOCK 262144
/* Conventional /state names for the strings the trainer stores. */
#define CKPT_TRAIN_CONFIG "train_config_json"
#define CKPT_MODEL_CONFIG "model_config_json"

typedef struct Ckpt Ckpt;   /* an open checkpoint, for writing (ckpt_create) or reading (ckpt_open) */

/* The checksum defined above, over n bytes. */
uint64_t ckpt_checksum(const void *data, size_t n);

/* ---- Writing ----------------------------------------------------------------------------- */
/* Start a checkpoint for training step `step` at `path` (written to a temporary name). */
Ckpt *ckpt_create(const char *path, int64_t step);
/* /params: every entry of ps (name, shape, values). */
int ckpt_put_params(Ckpt *c, const ParamStore *ps);
/* /optimizer from full-size buffers: m, v have ps->n_total floats (flat offsets, padding
 * ignored); entry_step has ps->n counts; opt_step is AdamW.step; cfg the AdamW settings. */
int ckpt_put_moments(Ckpt *c, const ParamStore *ps, const float *m, const float *v,
                     const int64_t *entry_step, int64_t opt_step, const AdamWConfig *cfg);
/* One of the two: which = 0 writes /optimizer/m (with the per-entry steps) and the AdamW settings,
 * which = 1 writes /optimizer/v; buf has ps->n_total floats. Lets a ZeRO-1 rank 0 gather and write
 * one moment at a time through a single full-size buffer. */
int ckpt_put_moment(Ckpt *c, const ParamStore *ps, int which, const float *buf, const int64_t *entry_step,
                    int64_t opt_step, const AdamWConfig *cfg);
/* /optimizer from a state covering the whole buffer (single process). A sliced state is refused:
 * gather the slices into full-size buffers and call ckpt_put_moments. */
int ckpt_put_adamw(Ckpt *c, const ParamStore *ps, const AdamW *opt);
int ckpt_put_schedule(Ckpt *c, const LrSchedule *s);
/* /state/<name>: an int64 array (n >= 0) or a string. Names must be non-empty, without '/',
 * and unique within /state. */
int ckpt_put_i64s(Ckpt *c, const char *name, const int64_t *a, int64_t n);
int ckpt_put_str(Ckpt *c, const char *name, const char *s);
/* Tokenizer identity (tokenizer_hash(), tokenizer_vocab_size()). */
int ckpt_put_tokenizer_id(Ckpt *c, uint64_t hash, int64_t vocab_size);
/* Mark complete, close, rename onto the final path (durably). Frees c in every case; on failure
 * the temporary file is removed. */
int ckpt_commit(Ckpt *c);
/* Give up a checkpoint being written: close, remove the temporary file, free c. */
void ckpt_abandon(Ckpt *c);

/* ---- Reading ----------------------------------------------------------------------------- */
/* Open for reading; refuses (NULL + error naming the file) unreadable, foreign, newer-version
 * or incomplete files. */
Ckpt *ckpt_open(const char *path);
void  ckpt_close(Ckpt *c);
const char *ckpt_path(const Ckpt *c);
int64_t ckpt_step(const Ckpt *c);
/* Load every parameter of ps from /params. The file must hold exactly ps's entries (by name)
 * with the same shapes; checksums verified. On failure ps->data is partly overwritten. */
int ckpt_get_params(Ckpt *c, ParamStore *ps);
/* Load the slice [lo, hi) of m and v (hi - lo floats each, element i of the flat buffer at
 * m[i - lo]; padding set to 0), all ps->n entry step counters (entry_step, may be NULL) and the
 * optimizer step (opt_step, may be NULL). Checksums verified. */
int ckpt_get_moments(Ckpt *c, const ParamStore *ps, int64_t lo, int64_t hi, float *m, float *v,
                     int64_t *entry_step, int64_t *opt_step);
/* Load an AdamW state (its own slice [opt->lo, opt->hi)), counters and step. opt->cfg is left
 * as the caller set it (hyperparameters may change on resume); read the stored ones with
 * ckpt_get_adamw_config. */
int ckpt_get_adamw(Ckpt *c, const ParamStore *ps, AdamW *opt);
int ckpt_get_adamw_config(Ckpt *c, AdamWConfig *cfg);
int ckpt_get_schedule(Ckpt *c, LrSchedule *s);
/* 1 when /state/<name> exists, else 0. */
int ckpt_has(Ckpt *c, const char *name);
/* Length of the int64 array /state/<name>, or -1 (error) when absent or not an int64 array. */
int64_t ckpt_len_i64s(Ckpt *c, const char *name);
/* Read /state/<name> into a (exactly n elements expected; a different stored length is an
 * error naming both). */
int ckpt_get_i64s(Ckpt *c, const char *name, int64_t *a, int64_t n);
/* The string /state/<name>, malloc'ed. */
char *ckpt_get_str(Ckpt *c, const char *name);
/* Tokenizer identity; -1 with an error when the checkpoint has none. */
int ckpt_get_tokenizer_id(Ckpt *c, uint64_t *hash, int64_t *vocab_size);
/* Read every dataset in the file and check its checksum (no model needed). */
int ckpt_verify(Ckpt *c);

/* ---- Run directory ----------------------------------------------------------------------- */
/* "<dir>/ckpt-%08lld.h5" (malloc'ed). */
char *ckpt_path_for_step(const char *dir, int64_t step);
typedef struct CkptFile { char *path; int64_t step; } CkptFile;
/* Files named ckpt-<digits>.h5 in dir, ascending by step (*files malloc'ed; free with
 * ckpt_list_free). A missing directory gives 0 files. -1 only when dir cannot be read. */
int  ckpt_list(const char *dir, CkptFile **files, int *n);
void ckpt_list_free(CkptFile *files, int n);
/* Path of the newest checkpoint that ckpt_open accepts (format, version, complete; datasets are
 * not verified), malloc'ed, and its step; NULL (and no error) when there is none. */
char *ckpt_find_latest(const char *dir, int64_t *step);
/* Resume: try the checkpoints of dir from newest to oldest; for each one that opens, call
 * load(c, ud) (which reads what the trainer needs, every read being verified). The first one
 * whose load returns 0 wins: returns 1 and sets *loaded (malloc'ed path; may be NULL). Each
 * refused checkpoint is reported on stderr ("t5gemma: warning: <path>: <why>; falling back to
 * the previous checkpoint"). Returns 0 when dir has no checkpoint, -1 (error listing
 * each file and why) when none is usable. The load callback must (re)write everything it
 * restores, since a failed attempt may have partly overwritten it. */
typedef int (*CkptLoadFn)(Ckpt *c, void *ud);
int  ckpt_load_latest(const char *dir, CkptLoadFn load, void *ud, char **loaded);
/* Keep the newest `keep` (>= 1) checkpoints that open as complete; delete every checkpoint file
 * older than the oldest kept one (complete or not), and temporary files left by dead writers
 * (ckpt-*.h5.tmp.<pid> whose process no longer exists). Returns the number of files deleted. */
int  ckpt_prune(const char *dir, int keep);
/* ps->data := element-wise mean of the /params of the k files (spec 4.4: the final checkpoint is
 * the average of the last 5). Every file must match ps exactly; checksums verified. Summed in
 * f32 in file order, then scaled by 1/k. */
int  ckpt_average(const char *const *paths, int k, ParamStore *ps);
/* The same over the newest min(k, available) checkpoints of dir that open as complete;
 * *n_used (may be NULL) gets how many were averaged. -1 when there is none. */
int  ckpt_average_last(const char *dir, int k, ParamStore *ps, int *n_used);

#endif
