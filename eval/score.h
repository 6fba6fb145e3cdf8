/* score.h: batched log-likelihood of target tokens (teacher forcing, no cache), the core of
 * `t5gemma score` and of the multiple-choice tasks of `t5gemma eval`.
 *
 * An item is a context and a target, as token ids:
 *  - T5Gemma: the context is the encoder input (callers include <bos>, as HF's tokenizer does,
 *    spec 5); the decoder input is <bos> + target[:-1] (HF _shift_right, decoder start token =
 *    <bos>) and every target token is scored: log p(target[i] | context, target[<i]).
 *  - Gemma 2 (decoder-only): the sequence is context + target (the context holds at least one
 *    token, normally <bos>); each target token is scored given everything before it.
 * log p is the log-softmax of the soft-capped final logits (spec 1.6, 2.4), natural log; the
 * engine computes it (stack_forward + op_softcap_ce's per-row NLL) in no-grad mode.
 *
 * Batching: items are sorted by length (longest first, stable) and cut into batches of
 * batch_size rows, right-padded (masks, positions 0..n-1, labels -100 on padding); results are
 * written back in the caller's order. For T5Gemma, consecutive items with the same context
 * (the same ctx pointer and length, e.g. the choices of one multiple-choice question) share one
 * encoder row: the encoder runs once per distinct context of a batch and its output is copied
 * to the rows that use it. All ops are OpenMP/OpenBLAS parallel.
 *
 * Length limits (max_position_embeddings of the stack): a context that does not fit (with the
 * target, for decoder-only) is cut from the left, keeping its first token (<bos>) and its last
 * tokens (lm-evaluation-harness also truncates contexts on the left); *n_truncated counts such
 * items. A target that alone does not fit is an error.
 */
#ifndef T5G_SCORE_H
#define T5G_SCORE_H

#include <stdint.h>
#include "model/model.h"

typedef struct ScoreItem {
  const int32_t *ctx; int n_ctx;   /* encoder input (T5Gemma) or prefix (Gemma 2, >= 1 token) */
  const int32_t *tgt; int n_tgt;   /* scored tokens, >= 1 */
} ScoreItem;

typedef struct ScoreResult {
  double sum_logprob;              /* Σ log p(target tokens), nats */
  int n_tokens;                    /* = n_tgt */
  float *token_logprobs;           /* [n_tgt] when per_token was requested (malloc), else NULL */
} ScoreResult;

/* Score n items with batches of batch_size rows. res[n] is filled (free token_logprobs with
 * free()). progress (optional) is called after each batch with the items done so far.
 * 0, or -1 with t5g_error (ids outside the vocabulary, empty target, target too long). */
int score_items(Model *m, const ScoreItem *items, int n, int batch_size, int per_token,
                ScoreResult *res, int *n_truncated,
                void (*progress)(void *ctx, int done, int total), void *progress_ctx);

#endif
