/* spm.h: a C view of libsentencepiece (data/spm.cc), used by data/tokenizer.c for the
 * tokenizer.model backend. Private to the data/ folder: other code uses data/tokenizer.h.
 *
 * All functions are thread-safe after t5g_spm_load (SentencePieceProcessor's Encode/Decode and
 * vocabulary queries are const). Errors are reported with t5g_error() (model/util.h).
 */
#ifndef T5G_SPM_H
#define T5G_SPM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct T5gSpm T5gSpm;

/* Kinds of pieces (SentencePiece ModelProto.SentencePiece.Type, as far as the public API
 * reveals them: user-defined pieces report as NORMAL). */
enum { T5G_SPM_NORMAL = 0, T5G_SPM_UNKNOWN = 1, T5G_SPM_CONTROL = 2, T5G_SPM_BYTE = 3, T5G_SPM_UNUSED = 4 };

/* Load a serialized SentencePiece ModelProto (tokenizer.model). NULL after t5g_error() naming
 * the file and SentencePiece's message. */
T5gSpm *t5g_spm_load(const char *path);
void t5g_spm_free(T5gSpm *s);

int t5g_spm_vocab_size(const T5gSpm *s);
/* The piece of id in [0, vocab): pointer valid while s is loaded; *len gets its byte length. */
const char *t5g_spm_piece(const T5gSpm *s, int id, size_t *len);
float t5g_spm_score(const T5gSpm *s, int id);
int t5g_spm_kind(const T5gSpm *s, int id);
/* Reserved ids as SentencePiece records them (-1 when the model disables one). */
int t5g_spm_unk_id(const T5gSpm *s);
int t5g_spm_bos_id(const T5gSpm *s);
int t5g_spm_eos_id(const T5gSpm *s);
int t5g_spm_pad_id(const T5gSpm *s);

/* Encode text[0..len) (no BOS/EOS: those are the caller's) and append the ids to the growable
 * array *ids (capacity *cap, count *n; realloc'ed as needed). 0, or -1 with t5g_error(). */
int t5g_spm_encode(const T5gSpm *s, const char *text, size_t len, int32_t **ids, int64_t *n,
                   int64_t *cap);
/* Decode ids[0..n) with SentencePiece's DecodeIds (byte pieces reassembled, control pieces
 * dropped, "▁" -> " ") and append the text to the growable buffer *out (length *len, capacity
 * *cap, kept NUL-terminated). 0, or -1 with t5g_error(). */
int t5g_spm_decode(const T5gSpm *s, const int32_t *ids, int64_t n, char **out, size_t *len,
                   size_t *cap);

#ifdef __cplusplus
}
#endif

#endif
