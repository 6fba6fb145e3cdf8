/* ops.h: the differentiable operations of Gemma 2 and T5Gemma, each with forward and backward.
 *
 * Every op:
 *  - takes its inputs as Tensors (f32, contiguous, row-major) and returns a new arena tensor;
 *  - records a backward node on g's tape iff g->grad_enabled and some input requires grad;
 *  - in backward ACCUMULATES into the gradients of the inputs that require grad, and computes
 *    nothing for the others (frozen weights get no dW, token ids get nothing);
 *  - is OpenMP-parallel over rows/heads and calls OpenBLAS only with the thread rules of
 *    runtime.h (no OpenBLAS threads inside an OpenMP region);
 *  - is checked against a double-precision twin with numeric gradients in tests/test_ops*.c.
 * Shapes below: B batch, T/Tq/Tk sequence lengths, d hidden size, H query heads, K key-value
 * heads (H % K == 0), h head_dim, F intermediate size, V vocabulary, N rows (= B*T).
 * Arrays passed by pointer (ids, labels, masks, positions) must stay valid until backward ends.
 */
#ifndef T5G_OPS_H
#define T5G_OPS_H

#include "model/tensor.h"

/* ---- Linear algebra ------------------------------------------------------------------------ */

/* Linear layer without bias, PyTorch/HF weight layout: y = x · Wᵀ.
 * x [..., K] (any leading dims, flattened to M rows), w [N, K] -> y [..., N].
 * Backward: dx += dy · W ; dW += dyᵀ · x  (sgemm). Source: standard; spec 1.7 for layouts. */
Tensor *op_linear(Graph *g, Tensor *x, Tensor *w);

/* General 2-D matrix product C = op(A) · op(B), op(X) = X or Xᵀ.
 * a [M,K] (or [K,M] if trans_a), b [K,N] (or [N,K] if trans_b) -> c [M,N]. */
Tensor *op_matmul(Graph *g, Tensor *a, int trans_a, Tensor *b, int trans_b);

/* ---- Embedding, normalisation, element-wise ------------------------------------------------ */

/* x0 = E[ids] · scale.  ids: int32 [ndim/shape], E [V, d] -> out [shape..., d].
 * scale = sqrt(hidden_size) for Gemma (spec 1.6, 2.5). Backward: scatter-add dE[id] += scale·dy.
 * Ids must be in [0, V) (checked by the data layer; asserted here). */
Tensor *op_embedding(Graph *g, const int32_t *ids, int ndim, const int64_t *shape, Tensor *E, float scale);

/* Gemma RMSNorm over the last dim d: y = x · rsqrt(mean(x²) + eps) · (1 + w), w [d] stored
 * zero-centred, statistics in f32 (spec 1.3). Saves rsqrt per row for backward:
 *   dw_j += Σ_rows dy_j · n_j ;  dx = r · (g ⊙ dy − n · mean_j(g_j dy_j n_j)),  n = x·r, g = 1+w. */
Tensor *op_rmsnorm(Graph *g, Tensor *x, Tensor *w, float eps);

/* y = a + b, same shape (residual add). */
Tensor *op_add(Graph *g, Tensor *a, Tensor *b);

/* y = cap · tanh(x / cap). dy/dx = 1 − tanh²(x/cap) (spec 1.5, 1.6). cap <= 0 returns x. */
Tensor *op_softcap(Graph *g, Tensor *x, float cap);

/* Rotary position embedding, half-split ("rotate_half") convention over the whole head_dim
 * (spec 1.5): for i < h/2, angle = pos · theta^(−2i/h) computed in f32,
 *   out[i] = x[i]·cos − x[i+h/2]·sin ;  out[i+h/2] = x[i+h/2]·cos + x[i]·sin.
 * x [B, T, nh, h] (h even), pos int32 [B*T] -> same shape. Backward is the inverse rotation. */
Tensor *op_rope(Graph *g, Tensor *x, const int32_t *pos, float theta);

/* GeGLU with tanh-approximated GELU (spec 1.4): y = gelu_tanh(gate) ⊙ up,
 * gelu_tanh(z) = 0.5 z (1 + tanh(sqrt(2/π)(z + 0.044715 z³))). gate, up [..., F] -> y [..., F]. */
Tensor *op_geglu(Graph *g, Tensor *gate, Tensor *up);

/* Inverted dropout with probability p: y = x · mask / (1 − p). The mask is a pure function of
 * (g->dropout_seed, call counter, element index) so a step is reproducible and backward needs
 * no saved mask. p == 0 or no-grad mode returns x itself. */
Tensor *op_dropout(Graph *g, Tensor *x, float p);

/* ---- Attention ------------------------------------------------------------------------------ */

/* Which keys a query may see. Positions are absolute: query i is at q_pos0 + i, key j at
 * k_pos0 + j (both 0 for training; for cached decoding q_pos0 = number of tokens already in the
 * cache, and a trimmed sliding-window cache has k_pos0 > 0).
 *   causal = 1: key visible iff kpos <= qpos.            causal = 0: bidirectional.
 *   window > 0: causal: qpos − W < kpos ;  bidirectional: |qpos − kpos| < W  (spec 1.5, 2.2).
 *   key_valid [B, Tk] (optional): 0 marks a pad key, never visible.
 *   query_valid [B, Tq] (optional): 0 marks a pad query; its output row is 0.
 *   q_seg [B, Tq], k_seg [B, Tk] (optional, together): packed sequences; a key is visible only
 *   when its segment id equals the query's.
 * A query row with no visible key outputs 0 (Flax convention, spec 6). Cross-attention uses
 * causal = 0, window = 0 (never windowed, spec 2.3, 7). */
typedef struct AttnMask {
  int causal;
  int window;
  int q_pos0, k_pos0;
  const uint8_t *key_valid;
  const uint8_t *query_valid;
  const int32_t *q_seg, *k_seg;
} AttnMask;

/* Grouped-query scaled dot-product attention with logit soft-cap (spec 1.5):
 *   s_ij = (q_i · k_j) · scale ;  s ← softcap·tanh(s/softcap) (if softcap > 0) ; mask ; softmax
 *   (f32) ; o = P V.  Query head n uses KV head n / (H/K).
 * q [B, Tq, H, h], k and v [B, Tk, K, h] -> out [B, Tq, H·h] (heads concatenated).
 * scale = query_pre_attn_scalar^(−1/2).
 * Computed block by block (flash-attention style): only the log-sum-exp per (b, head, query) is
 * saved; backward recomputes the scores one block at a time, so no [Tq, Tk] matrix per head is
 * kept. dK and dV are reduced over the H/K query heads of each group. */
Tensor *op_attention(Graph *g, Tensor *q, Tensor *k, Tensor *v, const AttnMask *mask,
                     float scale, float softcap);

/* ---- Losses (all return a scalar tensor [1]) ----------------------------------------------- */

/* Statistics filled by the loss ops (optional, may be NULL). */
typedef struct LossStats {
  double sum_nll;       /* Σ over counted rows of −log p(label), nats (hard labels) */
  int64_t n_tokens;     /* rows with label != -100 */
  int64_t n_correct;    /* rows whose argmax equals the label */
} LossStats;

/* Final-logit soft-cap fused with cross-entropy, chunked over rows so that the [N, V] logits
 * matrix never exists whole (spec 1.6; V = 256000 for Gemma).
 *   z = cap · tanh((h · Eᵀ)/cap)  (cap <= 0: z = h Eᵀ),  loss = Σ_{i: label_i != −100}
 *   (logsumexp(z_i) − z_i[label_i]) / normalizer.
 * h [N, d], E [V, d] (the tied LM head), labels int32 [N] with −100 = ignore.
 * normalizer: the number of target tokens of the whole (accumulated, all-rank) batch, so that
 * micro-batches and ranks add up to the mean over target tokens (issue 5).
 * row_nll (optional, [N]): per-row −log p(label) (0 for ignored rows), for scoring.
 * Gradients: dz = (softmax − onehot)·(1 − tanh²)·dL/normalizer ; dh += dz E ; dE += dzᵀ h.
 * When recorded, the forward computes them for dL = 1 from each chunk's logits (no second
 * logits product in backward) and keeps them (dh [rows, d], dE [V, d] in the arena); backward
 * adds dL times them. */
Tensor *op_softcap_ce(Graph *g, Tensor *h, Tensor *E, const int32_t *labels, float cap,
                      float normalizer, float *row_nll, LossStats *stats);

/* Distillation loss against a teacher distribution given as top-k (ids, probs) per row
 * (k = V and t_ids = NULL means the full distribution in vocabulary order), mixed with the hard
 * label loss (spec 4.2, G2R):
 *   loss_i = (1 − alpha) · CE(z_i, label_i) + alpha · T² · ( − Σ_j p_ij · log softmax(z_i / T)[t_ids_ij] )
 * over rows with label != −100, divided by normalizer. z is soft-capped as in op_softcap_ce.
 * t_probs rows sum to 1 (already at temperature T). h [N,d], E [V,d], t_ids/t_probs [N, k]. */
Tensor *op_softcap_ce_distill(Graph *g, Tensor *h, Tensor *E, const int32_t *labels,
                              const int32_t *t_ids, const float *t_probs, int k, float cap,
                              float temperature, float alpha, float normalizer, LossStats *stats);

/* No-grad helper for a distillation teacher and for generation: for each row of h [N, d], the
 * soft-capped logits z (as above) at temperature T -> the k most probable tokens, their ids
 * (descending probability) and probabilities renormalised over the k (k = V: full softmax).
 * Chunked over rows; uses no tape. */
void logits_topk(const float *h, int64_t N, const Tensor *E, float cap, float temperature, int k,
                 int32_t *ids_out, float *probs_out);

/* No-grad: full soft-capped logits for rows of h: out [N, V] (caller-owned). */
void logits_full(const float *h, int64_t N, const Tensor *E, float cap, float *out);

#endif
