/* generate.h: cached (incremental) decoding for T5Gemma and Gemma 2, and the samplers.
 *
 * T5Gemma (spec 2.9, 5, 7): the encoder runs once over the right-padded prompts (engine,
 * stack_forward). Each decoder layer's cross-attention K/V are computed once from the encoder
 * output ([rows, Te, K·h], never windowed, masked by the encoder padding). The decoder then runs
 * one token per row and step, starting from the decoder start token <bos> at position 0, with a
 * self-attention KV cache per layer. Gemma 2 (decoder-only): the prompt is prefilled into the
 * same cache (in chunks), then decoding steps follow.
 *
 * KV cache. Per layer and row a ring of R slots [R, K·h] for K and for V; the key at absolute
 * position p lives in slot p mod R.
 *   - global (full_attention) layers: R = max_len (prompt + new tokens), so nothing is evicted;
 *   - sliding layers: R = min(max_len, W + C − 1) with W = sliding_window and C the largest
 *     number of tokens of one row processed in one call (the prefill chunk, 1 when stepping),
 *     i.e. only the last W keys are ever kept: a query at position p sees p−W < kp <= p
 *     (spec 1.5), and a call first writes all of its tokens' keys, then attends; R >= W + C − 1
 *     guarantees no key a query of the call still needs has been overwritten by the call.
 *
 * Per token and layer the step computes the same as the engine's layer (spec 1.2, 2.3): RMSNorm
 * (1+w) in f32, q/k/v projections (one sgemm each over all tokens of the call, rows of all batch
 * rows stacked), RoPE (rotate_half, angles in f32) on q and k, attention, o_proj, post-norm,
 * residual; cross-attention (T5Gemma; no RoPE, not causal, not windowed); GeGLU MLP with
 * tanh-GELU. The attention kernel here is written independently of op_attention (a single-query
 * loop over the visible cache slots): s = (q·k)·query_pre_attn_scalar^(−1/2), tanh soft-cap
 * before masking, GQA query head n -> kv head n/(H/K), max-subtracted softmax in f32; a query
 * with no visible key outputs 0 (spec 6). OpenMP runs over (token, head) pairs; the
 * projections are OpenBLAS sgemm calls outside any OpenMP region (runtime.h thread rules).
 * Final logits: decoder final norm, tied LM head (sgemm), soft-cap final_logit_softcapping
 * (spec 2.4).
 *
 * Sampling (per row, in this order as Hugging Face's logits processors apply them):
 * temperature, top-k, top-p (nucleus: the smallest set of most probable tokens whose
 * probability reaches top_p; the most probable token is always kept), then one draw from the
 * renormalised distribution with the row's own Rng seeded from (seed, first_row + row index),
 * so a row's output does not depend on the other rows of the batch or on the batch size. greedy = argmax (ties: lowest id).
 * Reported log-probabilities are always those of the model itself, log softmax of the capped
 * logits at temperature 1 without any filtering (natural log), i.e. what `t5gemma score` gives
 * for the same tokens.
 *
 * Beam search (Hugging Face BeamSearchScorer semantics with early_stopping=True): num_beams
 * beams; each step the 2·num_beams best (beam, token) candidates by cumulative log-probability
 * are visited in order; a stop token among the first num_beams of them closes a hypothesis
 * (its tokens include the stop token), other candidates fill the next beams; the search ends
 * when num_beams hypotheses are closed or max_new_tokens is reached (then the running beams are
 * closed as well). Hypothesis score = sum_logprob / len^length_penalty with len = number of
 * generated tokens (including the stop token). With num_beams = 1 this is exactly greedy
 * decoding. Sampling options are ignored by beam search.
 *
 * Stopping: a row stops at the first token in stop_ids (by default <eos> and <end_of_turn>,
 * looked up by name in the tokenizer: gen_stop_ids_from_tokenizer) or after max_new_tokens.
 * min_new_tokens (Hugging Face's min_new_tokens, MinNewTokensLengthLogitsProcessor): while a
 * row has generated fewer tokens, the stop ids cannot be chosen (greedy, sampling, beams); the
 * reported logprobs stay the model's own (a stop token's probability mass is not renormalised
 * away), so `score` of the generated text gives the same numbers.
 */
#ifndef T5G_GENERATE_H
#define T5G_GENERATE_H

#include <stdint.h>
#include "model/model.h"
#include "model/rng.h"

#define GEN_MAX_STOP 8

typedef struct GenConfig {
  int max_new_tokens;        /* default 64 */
  int min_new_tokens;        /* default 0: stop ids are not chosen before this many tokens */
  int greedy;                /* 1: argmax (default 1) */
  float temperature;         /* > 0, default 1 (sampling only) */
  int top_k;                 /* 0 = off */
  float top_p;               /* in (0, 1]; 1 = off */
  int num_beams;             /* 1 = no beam search */
  float length_penalty;      /* beam score = sum_logprob / len^length_penalty; default 1 */
  uint64_t seed;             /* sampling seed: row i samples from gen_row_rng(seed, first_row + i) */
  int first_row;             /* global index of prompts[0] (default 0): a list split into batches
                                samples exactly as one batch */
  int32_t stop_ids[GEN_MAX_STOP];
  int n_stop;
  int32_t bos_id;            /* T5Gemma decoder start token (spec 5) */
  int prefill_chunk;         /* decoder-only prefill: tokens of one row per call (default 64) */
} GenConfig;

/* Defaults above; stop ids = the model config's eos_token_id, bos = its bos_token_id. */
void gen_config_default(GenConfig *c, const Model *m);
/* Check ranges (max_new_tokens >= 1, temperature > 0, 0 < top_p <= 1, top_k >= 0,
 * num_beams >= 1, 0 <= min_new_tokens <= max_new_tokens). -1 with t5g_error naming the option. */
int  gen_config_check(const GenConfig *c);
/* Replace the stop ids by <eos> and <end_of_turn> of the tokenizer (looked up by name; absent
 * ones are skipped). */
typedef struct Tokenizer Tokenizer;
void gen_stop_ids_from_tokenizer(GenConfig *c, const Tokenizer *t);

typedef struct GenOutput {
  int32_t *ids;      /* generated tokens, including the stop token that ended the row (malloc) */
  float *logprobs;   /* log p_model(ids[i] | prompt, ids[<i]), nats (malloc) */
  int n;             /* number of generated tokens */
  int stopped;       /* 1: ended by a stop token; 0: reached max_new_tokens */
  double sum_logprob;
  double score;      /* sum_logprob, or the beam hypothesis score (length-normalised) */
} GenOutput;
void gen_output_free(GenOutput *o);

/* Generate for B prompts (ids, lens[b] >= 1 tokens each; the caller includes <bos> as HF does).
 * T5Gemma: prompts go to the encoder (right-padded, mask, positions 0..n-1), the decoder starts
 * at cfg->bos_id. Gemma 2: prompts are prefilled, generation continues after them.
 * Greedy or sampling per cfg (cfg->num_beams must be 1). Rows stop independently.
 * out[B] is filled (free each with gen_output_free). 0, or -1 with t5g_error (bad ids, prompt
 * longer than the model's max_position_embeddings allows, bad config). */
int generate(Model *m, const GenConfig *cfg, const int32_t *const *prompts, const int *lens, int B,
             GenOutput *out);

/* Beam search for one prompt: up to n_return (<= num_beams) hypotheses, best first (descending
 * score) into out[0..*n_out). 0 or -1 with t5g_error. */
int generate_beam(Model *m, const GenConfig *cfg, const int32_t *prompt, int len, int n_return,
                  GenOutput *out, int *n_out);

/* Decode generated ids to text (malloc'ed, never NULL): special tokens are dropped, and so are
 * ids the tokenizer does not have (a model's vocabulary may be padded beyond its tokenizer's,
 * spec 1.1). */
char *gen_decode_text(const Tokenizer *t, const int32_t *ids, int n);

/* ---- Lower level: the cached decoder (used by generate and by the tests) ------------------ */

typedef struct DecodeState DecodeState;

/* A decoder cache for `rows` rows of at most max_len positions each (T5Gemma: decoder
 * positions; Gemma 2: prompt + new tokens), processing at most `chunk` tokens of one row per
 * decode_forward call. NULL with t5g_error when max_len exceeds max_position_embeddings. */
DecodeState *decode_new(Model *m, int rows, int max_len, int chunk);
void decode_free(DecodeState *s);

/* T5Gemma: run the encoder on n_src right-padded prompts (ids [n_src, Te], lens) and compute
 * every layer's cross-attention K/V. Cache row r then attends to source src_of_row[r]
 * (NULL: row r uses source r; beams of one prompt share one source). 0 or -1 with t5g_error. */
int decode_encode(DecodeState *s, const int32_t *const *prompts, const int *lens, int n_src,
                  const int *src_of_row);

/* Process n tokens: token i (ids[i]) belongs to row rows[i] and takes that row's next position
 * (a row's tokens must appear in order; at most `chunk` per row). All tokens of the call are
 * written to the caches, then each attends causally. When logits != NULL, the soft-capped
 * logits [n_out, V] of the tokens whose want[i] != 0 are written in token order (n_out = the
 * number of such tokens); want == NULL means every token. hidden (optional, [n, d]) receives
 * the final-normed decoder hidden state of every token. */
void decode_forward(DecodeState *s, int n, const int *rows, const int32_t *ids, const uint8_t *want,
                    float *logits, float *hidden);

/* Slots of layer l's self-attention cache per row (sliding layers: min(max_len, W + chunk - 1);
 * global layers: max_len). */
int  decode_cache_slots(const DecodeState *s, int layer);
/* Number of positions already in row r. */
int  decode_len(const DecodeState *s, int r);
/* Beam reordering: row r becomes a copy of row src[r] (its caches, length and source). */
void decode_reorder(DecodeState *s, const int *src);

/* ---- Sampling helpers ------------------------------------------------------------------- */

/* In-place log-softmax of a row of V logits (max-subtracted, sum in double). */
void gen_log_softmax(float *z, int V);
/* Choose the next token from capped logits z[V] (not modified) per cfg (greedy, or
 * temperature/top-k/top-p sampling with rng). scratch: V floats + V ints (gen_scratch_size). */
int32_t gen_choose(const float *z, int V, const GenConfig *cfg, Rng *rng, void *scratch);
size_t gen_scratch_size(int V);
/* The Rng of row i for seed s. */
void gen_row_rng(Rng *r, uint64_t seed, int row);

#endif
