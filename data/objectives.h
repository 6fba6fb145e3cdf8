/* objectives.h: example builders that turn a stream of documents (data/source.h DocSource) or
 * instruction-tuning conversations (JSONL, data/sft.c) into training batches (model/batch.h).
 *
 * Objectives (spec 4): causal LM (the decoder-only start point), PrefixLM (spec 4.2), the UL2
 * mixture of denoisers built on T5 span corruption (spec 4.3), and instruction tuning in the Gemma
 * turn format (spec 4.6), both encoder-decoder and decoder-only. The layout of every output row
 * follows model/batch.h: right padding with the pad id, masks 1 on real tokens, positions 0..n-1
 * (restarting per segment when segment ids are present), labels -100 where there is no loss;
 * encoder-decoder rows have dec_ids = <bos> + targets[:-1] and labels = targets (HF
 * `_shift_right` with decoder_start_token_id = bos, spec 5).
 *
 * Special tokens never appear as literals here: every builder takes an ObjSpecials filled from the
 * tokenizer by name (obj_specials_from_tokenizer, or by hand in tests). The worked examples below
 * use Gemma's ids for readability (<pad> 0, <eos> 1, <bos> 2, <unused0> 7, <unused1> 8, spec 5)
 * and small made-up ids for text tokens; tests/test_objectives.c checks every one of them.
 *
 * Determinism and resume. A builder is a pure function of (options, specials, seed, the document
 * stream). Its resume state is an ObjState: OBJ_STATE_LEN int64 values holding the builder's Rng
 * state, the source position of the document it is reading (from the source's own tell()), the
 * offset inside that document and a few counters. Design: documents are read one at a time; a
 * document may be split across rows and batches (the packed builders throw nothing away; only
 * unpacked PrefixLM cuts long documents), so the state records
 * "the document that starts at source position P, of which the first K tokens (after BOS/EOS
 * decoration) were consumed". obj_restore() seeks the source back to P, re-reads that document
 * (checking its length against the saved one) and skips K tokens. The source's tell/seek come from
 * a DocSeeker (obj_shard_seeker wraps the shard reader's resume state). A stream builder without
 * one can save only before it read anything or after its source ended (otherwise obj_save fails
 * with a clear error); SFT needs none (its state is the epoch and the index in it).
 * Save after obj_next_batch() returns; restore into a builder created with the same options,
 * specials and seed over the same source. The checkpoint stores the ObjState only: the source
 * position is inside it.
 *
 * The seed drives the builder's Rng (UL2 denoiser choice and noise masks, random PrefixLM splits,
 * SFT epoch permutations). With data parallelism, stream builders of different ranks read
 * different documents (their readers are rank-sharded) and should get different seeds
 * (e.g. seed + rank); SFT builders share one seed and shard by SftOptions.rank.
 *
 * All functions return 0 / 1 on success and -1 after t5g_error() on bad input; none aborts on bad
 * data.
 */
#ifndef T5G_OBJECTIVES_H
#define T5G_OBJECTIVES_H

#include <stddef.h>
#include <stdint.h>
#include "data/source.h"
#include "model/batch.h"
#include "model/rng.h"

/* ------------------------------------------------------------------------------------------ */
/* Special ids                                                                                  */

#define OBJ_MAX_SENTINELS 1024

/* Ids looked up by name in the tokenizer. pad, eos and bos are required by every builder;
 * start_of_turn / end_of_turn by SFT; sentinels by UL2 span denoisers (sentinel i marks noise span
 * i; copied at builder creation). -1 = absent. */
typedef struct ObjSpecials {
  int32_t pad, eos, bos;
  int32_t start_of_turn, end_of_turn;
  const int32_t *sentinels;
  int n_sentinels;
} ObjSpecials;

/* ------------------------------------------------------------------------------------------ */
/* Resume plumbing                                                                              */

#define DOCPOS_LEN 8
/* Optional position interface of a DocSource (its ctx is usually the DocSource's ctx).
 * tell(): the position of the document the next next() call returns, as DOCPOS_LEN integers
 * (unused slots 0). seek(): make the next next() call return the document at that position.
 * Both return 0 or -1 with t5g_error(). */
typedef struct DocSeeker {
  void *ctx;
  int (*tell)(void *ctx, int64_t pos[DOCPOS_LEN]);
  int (*seek)(void *ctx, const int64_t pos[DOCPOS_LEN]);
} DocSeeker;

/* Resume state. Layout (int64 slots):
 *   [0] magic 0x7F6A0B1E00 + objective kind   [1] Rng state        [2] rows built so far
 *   [3] have a current document (0/1)          [4] offset inside the current decorated document
 *   [5] length of the current raw document     [6] documents read   [7] source exhausted (0/1)
 *   [8..15] source position of the current document (DocSeeker tell)
 *   SFT instead uses [3] epoch, [4] this rank's index inside the epoch, [5] number of examples,
 *   [6] rank, [7] world size.
 *   [16..23] reserved, 0. */
#define OBJ_STATE_LEN 24
typedef struct ObjState { int64_t v[OBJ_STATE_LEN]; } ObjState;

/* ------------------------------------------------------------------------------------------ */
/* Builders                                                                                     */

typedef enum { OBJ_CAUSAL = 1, OBJ_PREFIXLM = 2, OBJ_UL2 = 3, OBJ_SFT = 4 } ObjKind;
typedef struct Objective Objective;

/* Causal LM, decoder-only (Te = 0). Documents, each optionally preceded by <bos> and always
 * followed by <eos>, are concatenated into one token stream (empty documents are skipped). Row r
 * is the stream window s[rT .. rT+T] (T+1 tokens): dec_ids = window[:-1], labels = window[1:].
 * Consecutive rows overlap by one token (llm.c's B*T+1 reads), so every stream token after the
 * first is a label exactly once.
 *  - segments = 0 (llm.c, plain concatenation): no segment ids, positions 0..T-1, attention across
 *    documents; every label is trained, including the prediction of the next document's first
 *    token from <eos>.
 *  - segments = 1 (packed documents): dec_seg numbers the documents of the row 1, 2, ...;
 *    positions restart at 0 in each segment (a document continued from the previous row starts at
 *    position 0 in this row); attention stays within a segment (model/batch.h), and a label whose
 *    token belongs to another document than its input token is -100.
 * Worked example: T = 4, bos = 1, documents [11 12 13], [21 22], [31 32 33 34]; stream
 *   2 11 12 13 1 2 21 22 1 2 31 32 33 34 1
 *   row 0 (plain):    dec_ids 2 11 12 13   labels 11 12 13 1    dec_pos 0 1 2 3
 *   row 1 (plain):    dec_ids 1 2 21 22    labels 2 21 22 1     dec_pos 0 1 2 3
 *   row 1 (segments): dec_ids 1 2 21 22    labels -100 21 22 1  dec_seg 1 2 2 2  dec_pos 0 0 1 2
 *   row 2 (segments): dec_ids 1 2 31 32    labels -100 31 32 33 dec_seg 1 2 2 2  dec_pos 0 0 1 2
 * At the end of a finite source the last row is right-padded (pad id, mask 0, labels -100). */
typedef struct CausalOptions {
  int T;          /* row length (Td) */
  int bos;        /* 1: <bos> before every document (Gemma 2 pretraining form), 0: none */
  int segments;   /* 0: plain concatenation, 1: segment ids + per-document positions */
} CausalOptions;
CausalOptions obj_causal_defaults(int T);   /* bos 1, segments 0 */
Objective *obj_causal_new(const CausalOptions *opt, const ObjSpecials *sp, DocSource src,
                          const DocSeeker *seeker, uint64_t seed);

/* PrefixLM, encoder-decoder (spec 4.2).
 *  - pack = 1 (default; the paper's form): the stream is built as for causal LM (optional <bos>,
 *    <eos> after each document); each row takes the next Te + Td stream tokens (rows do not
 *    overlap); the first Te go to the encoder and the last Td are the decoder targets. With
 *    Te = Td = L this is "a 2L sequence split in equal halves" (T5Gemma: 4096 / 4096). No segment
 *    ids: the row is one span of text as in the paper.
 *  - pack = 0: one document per row: the decorated document is cut to at most Te + Td tokens and
 *    split at e = clamp(floor(m/2), m - Td, Te) (the encoder gets the first half); documents of
 *    fewer than 2 decorated tokens are skipped.
 *  - random_density d in (0, 0.5] instead of 0 (equal split) draws the split point as T5's
 *    random_prefix_noise_mask does (t5/data/preprocessors.py, prefix_lm): for a window of m
 *    tokens the prefix length is uniform in [max(1, round((1-2d)(m-1))), m-1]. When packing, the
 *    window length N is the largest value for which every split of the range fits Te and Td (for
 *    d = 0.5: N = min(Te, Td) + 1, T5's "split_tokens_to_inputs_length" setting), so rows carry
 *    padding on both sides.
 * Worked example (pack = 1, bos = 0, Te = Td = 4): documents [11 12 13], [21 22], [31 32 33 34];
 * stream 11 12 13 1 21 22 1 31 32 33 34 1
 *   row 0: enc_ids 11 12 13 1   dec_ids 2 21 22 1   labels 21 22 1 31   (all masks 1)
 *   row 1: the source ends after 4 more tokens (32 33 34 1), which are split like an unpacked
 *          document (e = 2): enc_ids 32 33 0 0, enc_mask 1 1 0 0, dec_ids 2 34 0 0,
 *          dec_mask 1 1 0 0, labels 34 1 -100 -100.
 * Worked example (pack = 0, bos = 0, Te = Td = 6): document [11 .. 17] (7 tokens) + <eos>, m = 8,
 * e = 4: enc_ids 11 12 13 14 0 0, dec_ids 2 15 16 17 0 0, labels 15 16 17 1 -100 -100. */
typedef struct PrefixLMOptions {
  int Te, Td;
  int bos;                /* <bos> before every document (default 1) */
  int pack;               /* 1 (default): packed 2L windows; 0: one document per row */
  double random_density;  /* 0 (default): fixed split; (0, 0.5]: random split as described */
} PrefixLMOptions;
PrefixLMOptions obj_prefixlm_defaults(int Te, int Td);
Objective *obj_prefixlm_new(const PrefixLMOptions *opt, const ObjSpecials *sp, DocSource src,
                            const DocSeeker *seeker, uint64_t seed);

/* UL2 mixture of denoisers (spec 4.3), encoder-decoder, one example per row.
 * For each row a denoiser k is drawn with probability weight_k / sum(weights); the row then takes
 * the next n_k tokens of the stream (documents concatenated, <eos> after each document unless
 * doc_eos = 0 -- T5's reduce_concat_tokens used no separator; optional <bos>), where n_k =
 * ul2_raw_length(k, Te, Td) is the largest raw length whose inputs and targets fit Te and Td for
 * every length up to n_k (T5's random_spans_helper solved for inputs only; with Td large this
 * gives the same numbers, e.g. Te = 512, (3, 0.15): 568 raw tokens, targets 114).
 *  - span denoiser (mu, r): the noise mask is T5's random_spans_noise_mask on the n tokens:
 *    num_noise = round(n r) clipped to [1, n-1], num_spans = max(1, round(num_noise / mu))
 *    (float32 arithmetic, round half to even, as TF computes it), noise and non-noise counts each
 *    split uniformly at random into num_spans positive parts, interleaved starting with
 *    non-noise (so the sequence ends with noise). We also cap num_spans at the number of
 *    non-noise tokens (T5 leaves n r > n/2 with tiny mu undefined).
 *    inputs  = [mode] x_0 S_0 x_1 S_1 ... x_{k-1} S_{k-1} <eos>  (noise span i -> sentinel S_i)
 *    targets = S_0 n_0 S_1 n_1 ... S_{k-1} n_{k-1} <eos>         (T5 noise_span_to_unique_sentinel
 *              / nonnoise_span_to_unique_sentinel)
 *    Sentinels: specials.sentinels[i] for span i. Gemma has no <extra_id_*>; the default names are
 *    <unused0>, <unused1>, ... (spec 4.3: the T5Gemma choice is unknown). When a row has more spans
 *    than sentinels (Gemma 2 has 100 <unusedN>; (3, 0.15) at 8192 tokens makes ~450 spans) the
 *    sentinels repeat cyclically: span i uses sentinels[i mod n_sentinels]. The pairing stays
 *    unambiguous by order, and the denoiser's span statistics stay exactly as configured.
 *  - suffix denoiser (S-denoiser, r): the noise is the single span of the last
 *    s = round(n r) clipped to [1, n-1] tokens (spec 4.3 "(3L/4, 0.75, 1)"; UL2 "(L/4, 0.25, 1)").
 *    Prefix-LM form (default): inputs = [mode] prefix <eos>, targets = suffix <eos> (T5 prefix_lm's
 *    drop_nonnoise/drop_noise); with suffix_sentinel = 1 the span-corruption form
 *    inputs = [mode] prefix S_0 <eos>, targets = S_0 suffix <eos>.
 *  - mode: an optional paradigm token id ([R]/[S]/[X] in UL2; none by default) prepended to inputs.
 *  At the end of a finite source the remaining m >= 2 tokens make one shorter row (m < 2: dropped).
 * Worked example (span corruption of a given mask, ul2_corrupt): tokens 10..19 (n = 10), r = 0.4,
 * mu = 2: num_noise = 4, num_spans = 2; mask 0 0 1 0 0 0 0 1 1 1; sentinels 7 8; no mode:
 *   inputs  10 11 7 13 14 15 16 8 1     targets 7 12 8 17 18 19 1
 *   row (Te = 10, Td = 8): enc_ids 10 11 7 13 14 15 16 8 1 0    enc_mask 1 x9, 0
 *                          dec_ids 2 7 12 8 17 18 19 0          labels 7 12 8 17 18 19 1 -100
 * Suffix example: tokens 10..17, r = 0.25 (s = 2), mode id 5: inputs 5 10 11 12 13 14 15 1,
 * targets 16 17 1; with suffix_sentinel: inputs 5 10 11 12 13 14 15 7 1, targets 7 16 17 1. */
typedef enum { UL2_SPAN = 0, UL2_SUFFIX = 1 } Ul2Kind;
typedef struct Ul2Denoiser {
  Ul2Kind kind;
  double mean_span;       /* mu (UL2_SPAN), >= 1 */
  double noise_density;   /* r in (0, 1) */
  double weight;          /* mixing weight, > 0 */
  int suffix_sentinel;    /* UL2_SUFFIX: 1 = span-corruption form with S_0, 0 = prefix-LM form */
  char mode_name[32];     /* optional mode-token name ("" = none), for obj_resolve_modes */
  int32_t mode_token;     /* resolved id, -1 = none */
} Ul2Denoiser;

/* Presets (weights as documented; spec 4.3):
 *  "t5gemma2": (3, 0.15), (12, 0.5), (32, 0.15), (32, 0.5), suffix 0.75; weights 1:1:1:1:4
 *              (T5Gemma 2, P2 sec 3.1; our best proxy for T5Gemma v1, spec 4.3 [I]).
 *  "ul2":      R (3, 0.15), (8, 0.15); S suffix 0.25; X (3, 0.5), (8, 0.5), (64, 0.15), (64, 0.5);
 *              equal weights (the UL2 per-denoiser sampling rates are unverified, spec 4.3 [U]).
 *  "t5":       (3, 0.15) alone (T5 span corruption).
 * No preset sets mode tokens. Returns the number of denoisers written (<= max) or -1. */
int ul2_preset(const char *name, Ul2Denoiser *out, int max);
/* Parse a mixture: a preset name, or comma-separated items "span:MU:R[:W[:MODE]]" and
 * "suffix:R[:W[:MODE]]" (suffix items may use "ssuffix" for the sentinel form), e.g.
 * "span:3:0.15:1:[R],suffix:0.25:2:[S]". MODE is a token name resolved later. Returns the count
 * or -1 with t5g_error() naming the item. */
int ul2_parse(const char *spec, Ul2Denoiser *out, int max);

typedef struct Ul2Options {
  int Te, Td;
  int bos;        /* <bos> before every document (default 0: T5 span corruption has none) */
  int doc_eos;    /* <eos> after every document (default 1) */
  const Ul2Denoiser *denoisers;  /* copied at creation */
  int n_denoisers;
} Ul2Options;
Ul2Options obj_ul2_defaults(int Te, int Td, const Ul2Denoiser *d, int n);
Objective *obj_ul2_new(const Ul2Options *opt, const ObjSpecials *sp, DocSource src,
                       const DocSeeker *seeker, uint64_t seed);

/* The T5 counts for a span denoiser on n >= 2 raw tokens (float32 arithmetic, round half to
 * even, clipping as in random_spans_noise_mask, plus the num_spans <= non-noise cap). */
void ul2_span_counts(int64_t n, double noise_density, double mean_span, int64_t *num_noise,
                     int64_t *num_spans);
/* Suffix noise length s = round(n r) clipped to [1, n-1]. */
int64_t ul2_suffix_len(int64_t n, double noise_density);
/* Encoded lengths (inputs incl. mode and <eos>, targets incl. <eos>) of denoiser d on n raw
 * tokens. */
void ul2_lengths(const Ul2Denoiser *d, int64_t n, int64_t *inputs_len, int64_t *targets_len);
/* Largest raw length n such that every m in [2, n] fits Te / Td; -1 with t5g_error() if none. */
int64_t ul2_raw_length(const Ul2Denoiser *d, int Te, int Td);
/* T5 random_spans_noise_mask: fills mask[0..n) (1 = noise) from rng; returns num_spans. n >= 2. */
int64_t ul2_noise_mask(int64_t n, double noise_density, double mean_span, Rng *rng, uint8_t *mask);
/* Build inputs and targets from tokens and a mask whose spans start with non-noise. Noise span i
 * becomes sentinels[i mod n_sentinels]; n_sentinels = 0 drops the markers (prefix-LM form).
 * mode < 0: none. inputs needs room for n + 2 values and targets for n + 1. */
void ul2_corrupt(const int32_t *tokens, const uint8_t *mask, int64_t n, const int32_t *sentinels,
                 int n_sentinels, int32_t eos, int32_t mode, int32_t *inputs, int64_t *n_inputs,
                 int32_t *targets, int64_t *n_targets);

/* ------------------------------------------------------------------------------------------ */
/* Instruction tuning (spec 4.6; data/sft.c)                                                    */

/* Text encoder used by SFT: encode UTF-8 text as plain text (no special-token parsing, no BOS/EOS)
 * into *ids (malloc'ed) / *n. Returns 0 or -1 with t5g_error(). sft_encoder_tokenizer() wraps
 * data/tokenizer.h (tokenizer_encode with add_bos = add_eos = parse_special = 0). */
typedef struct SftEncoder {
  void *ctx;
  int (*encode)(void *ctx, const char *text, size_t len, int32_t **ids, int64_t *n);
} SftEncoder;

/* A JSONL file of conversations, validated at open (each malformed line reported as
 * "path:LINE: ..."). Accepted lines (blank lines are skipped):
 *   {"messages": [{"role": "user", "content": "..."}, {"role": "model"|"assistant", ...}, ...]}
 *   {"prompt": "...", "response": "..."}   (= one user turn and one model turn)
 * Roles alternate user/model starting with user and end with a model turn (the target), as the
 * Gemma chat template requires. An optional first "system" message is merged into the first user
 * turn as "<system>\n\n<user>" (Gemma 2's template rejects system; Gemma 3 merges it this way).
 * Contents are trimmed of leading/trailing whitespace (the template's `| trim`). */
typedef struct SftData SftData;
SftData *sft_open(const char *path);
void sft_close(SftData *d);
int64_t sft_count(const SftData *d);
const char *sft_path(const SftData *d);

/* One conversation rendered in the Gemma 2 turn format (spec 4.6, HF chat template):
 *   <bos> for each turn: <start_of_turn> "ROLE\nCONTENT" <end_of_turn> "\n"
 *   then the generation prompt <start_of_turn> "model\n", then the final answer
 *   "CONTENT" <end_of_turn> [<eos>].
 * Special tokens are inserted by id; text pieces go through the encoder with special-token parsing
 * off, so user text can never inject control tokens. Text between two special tokens is encoded
 * as one piece ("user\nCONTENT"), as HF does, except model turns whose "model\n" header and
 * CONTENT are encoded separately so that a trained span starts on a token boundary.
 * ids[0..n): the tokens; train[i] = 0 prompt, 1 an earlier model turn's CONTENT and <end_of_turn>,
 * 2 the final answer (CONTENT, <end_of_turn>, optional <eos>); prompt_len = index of the first
 * final-answer token. Example with an encoder mapping byte b to 1000 + b and Gemma ids
 * (<bos> 2, <eos> 1, <start_of_turn> 106, <end_of_turn> 107), {"prompt":"Hi","response":"Yo"},
 * eos_after_eot = 1:
 *   ids   2 106 1117 1115 1101 1114 1010 1072 1105 107 1010 106 1109 1111 1100 1101 1108 1010
 *         1089 1111 107 1
 *   (<bos> <sot> "user\nHi" <eot> "\n" <sot> "model\n" | "Yo" <eot> <eos>), prompt_len 18,
 *   train 0 x18, 2 2 2 2. */
typedef struct SftConv {
  int32_t *ids;
  uint8_t *train;
  int64_t n, cap, prompt_len;
  char *text;            /* scratch for text pieces (internal) */
  size_t text_cap;
} SftConv;             /* zero-initialise before the first sft_render */
int sft_render(const SftData *d, int64_t index, SftEncoder enc, const ObjSpecials *sp,
               int eos_after_eot, SftConv *out);
void sft_conv_free(SftConv *c);

/* SFT builder: one conversation per row, examples in file order or shuffled per epoch (a fresh
 * permutation per epoch from (seed, epoch)); epochs = 0 cycles forever, else stops after that
 * many passes (then obj_next_batch returns 0). With data parallelism every rank passes the same
 * seed and its own rank (SftOptions.rank / world_size).
 *  - encdec = 1 (T5Gemma, spec 4.6): enc_ids = the prompt (everything before the final answer,
 *    including <bos> and the generation prompt <start_of_turn>model\n), dec_ids = <bos> +
 *    answer[:-1], labels = answer (the final answer only). Too long: the encoder keeps <bos> and
 *    the END of the prompt (the most recent turns); the answer is cut at its end.
 *  - encdec = 0 (Gemma 2 decoder-only SFT): the whole conversation s (at most Td + 1 tokens):
 *    dec_ids = s[:-1], labels[t] = s[t+1] where s[t+1] is a model-turn token (all model turns
 *    are trained; prompt tokens -100). Too long (cap = Td + 1): the prompt keeps
 *    max(cap - answer, min(prompt, cap / 2)) tokens (<bos> plus its end), the answer is cut at its
 *    end to fill the rest.
 *  - skip_long = 1 skips examples that would need cutting instead (an epoch in which every
 *    example is skipped is an error).
 *  - eos_after_eot: 1 (default) ends the answer with <end_of_turn> <eos> (spec 4.6: "Gemma 2 also
 *    generates <eos> after it"); 0 ends it with <end_of_turn> (both are stop tokens, spec 5).
 * Worked example (encdec, Te = 20, Td = 5, the conversation above):
 *   enc_ids 2 106 1117 1115 1101 1114 1010 1072 1105 107 1010 106 1109 1111 1100 1101 1108 1010 0 0
 *   dec_ids 2 1089 1111 107 0    labels 1089 1111 107 1 -100 */
typedef struct SftOptions {
  int Te, Td;          /* Te = 0 and encdec = 0 for decoder-only */
  int encdec;          /* 1 (default) encoder-decoder, 0 decoder-only */
  int eos_after_eot;   /* default 1 */
  int shuffle;         /* default 1 */
  int epochs;          /* default 0 = forever */
  int skip_long;       /* default 0 = truncate */
  int rank, world_size;  /* data parallelism (default 0, 1): rank r takes the examples at epoch
                            positions r, r + W, r + 2W, ... (all ranks share the seed, hence the
                            permutation); each rank takes floor(n / W) per epoch, the rest of the
                            epoch is dropped so that ranks stay in lock-step */
} SftOptions;
SftOptions obj_sft_defaults(int Te, int Td);
/* data and enc must outlive the builder. */
Objective *obj_sft_new(const SftOptions *opt, const SftData *data, SftEncoder enc,
                       const ObjSpecials *sp, uint64_t seed);

/* ------------------------------------------------------------------------------------------ */
/* Glue to the tokenizer and the shard reader (data/obj_glue.c)                                  */

typedef struct Tokenizer Tokenizer;
typedef struct ShardReader ShardReader;

/* Fill *sp from the tokenizer by name: <pad>, <eos>, <bos> (required), <start_of_turn>,
 * <end_of_turn> (-1 when absent), and sentinels: the ids of sentinel_fmt % 0, 1, 2, ... (a printf
 * format with one %d; NULL = "<unused%d>", T5 vocabularies use "<extra_id_%d>") while they exist,
 * at most max_sentinels, into sentinel_ids[] (caller-owned; sp->sentinels points to it). Returns the
 * number of sentinels found (0 when max_sentinels = 0) or -1 with t5g_error() naming the missing
 * piece and the tokenizer file. */
int obj_specials_from_tokenizer(const Tokenizer *t, const char *sentinel_fmt, int32_t *sentinel_ids,
                                int max_sentinels, ObjSpecials *sp);
/* Resolve the mode_name of each denoiser to mode_token. -1 with t5g_error() when a name is not a
 * piece of the vocabulary (Gemma has no [R]/[S]/[X]; an <unusedN> piece can serve). */
int obj_resolve_modes(Ul2Denoiser *d, int n, const Tokenizer *t);
/* SftEncoder over tokenizer_encode(t, text, len, add_bos 0, add_eos 0, parse_special 0). */
SftEncoder sft_encoder_tokenizer(const Tokenizer *t);
/* DocSeeker over the shard reader's resume state: tell = shard_reader_get_state (the state after
 * the last document returned, i.e. the position of the next one), seek = shard_reader_set_state.
 * pos[0..5] = seed, epoch, base, position, rank, world_size. A builder state saved at one world
 * size holds that rank's reader state (ObjState v[8..13]); resuming at another world size needs
 * shard_state_resplit, which only continues at document boundaries (the partly used document of
 * the state is then dropped). */
DocSeeker obj_shard_seeker(ShardReader *r);

/* ------------------------------------------------------------------------------------------ */
/* Batch assembly, state                                                                        */

ObjKind obj_kind(const Objective *o);
int obj_enc_len(const Objective *o);   /* Te (0 for decoder-only) */
int obj_dec_len(const Objective *o);   /* Td */
int obj_packed(const Objective *o);    /* 1 when rows carry segment ids */
/* Allocate a batch of B rows with the objective's lengths (segment arrays when packed). */
void obj_batch_alloc(const Objective *o, Batch *b, int B);
/* Fill all B rows of b (allocated by obj_batch_alloc or with the same Te/Td): right padding,
 * masks, positions (restarting per segment), labels -100 on padding, n_targets. Returns 1 when
 * at least one row has data, 0 when the source is exhausted (all rows padding), -1 on error
 * (bad batch shape, source error, resume mismatch). */
int obj_next_batch(Objective *o, Batch *b);
int obj_save(const Objective *o, ObjState *st);
int obj_restore(Objective *o, const ObjState *st);
void obj_free(Objective *o);

#endif
