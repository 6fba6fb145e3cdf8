/* tokenizer.h: Gemma tokenizers.
 *
 * Two backends behind one API:
 *  - tokenizer.json (Hugging Face "tokenizers" BPE model with byte fallback, as shipped with every
 *    Gemma 2 checkpoint), implemented here in C;
 *  - tokenizer.model (SentencePiece protobuf), through libsentencepiece (data/spm.cc).
 * Special tokens are found by name (<pad>, <eos>, <bos>, <unk>, <mask>, <start_of_turn>,
 * <end_of_turn>, <unusedN>), never by hard-coded id. All functions are thread-safe after load.
 */
#ifndef T5G_TOKENIZER_H
#define T5G_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct Tokenizer Tokenizer;

/* Load from a tokenizer.json, a tokenizer.model, or a directory holding one of them (json
 * preferred). NULL after t5g_error() naming the file and what is wrong. */
Tokenizer *tokenizer_load(const char *path);
void tokenizer_free(Tokenizer *t);

int tokenizer_vocab_size(const Tokenizer *t);
/* Identity for checking data against models: a 64-bit hash of the ordered vocabulary (pieces and
 * scores/merges), stable across runs and machines. */
uint64_t tokenizer_hash(const Tokenizer *t);
const char *tokenizer_path(const Tokenizer *t);

/* Encode UTF-8 text (len bytes) into *ids (malloc'ed, caller frees), *n tokens. add_bos prepends
 * <bos>, add_eos appends <eos>. Special-token strings inside text are NOT parsed as specials
 * unless parse_special is set (then "<start_of_turn>" etc. become their ids, as HF does).
 * Returns 0 or -1 with t5g_error(). */
int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int add_bos, int add_eos,
                     int parse_special, int32_t **ids, int64_t *n);
/* Decode ids to a malloc'ed NUL-terminated UTF-8 string (byte-fallback tokens are reassembled).
 * skip_special drops control tokens (<bos>, <eos>, <pad>, ...). decode(encode(x)) == x. */
char *tokenizer_decode(const Tokenizer *t, const int32_t *ids, int64_t n, int skip_special);

/* The id of a piece (e.g. "<eos>", "<unused0>", "▁the"), or -1 when absent. */
int tokenizer_piece_to_id(const Tokenizer *t, const char *piece);
/* The piece of an id, or NULL when out of range. */
const char *tokenizer_id_to_piece(const Tokenizer *t, int id);

/* Standard ids looked up by name at load (-1 when the vocabulary lacks them). */
typedef struct TokenizerSpecials { int pad, eos, bos, unk, mask, start_of_turn, end_of_turn, unused0; } TokenizerSpecials;
TokenizerSpecials tokenizer_specials(const Tokenizer *t);

#endif
