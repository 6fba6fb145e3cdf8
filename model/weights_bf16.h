/* weights_bf16.h: model weights kept in memory as bf16 for inference (issue 10), and loading a
 * model for an inference command (score, eval, generate) with the weights' dtype chosen from
 * the memory the machine has.
 *
 * Why: a 2B-2B T5Gemma has 5.6 billion parameters: 22.4 GB as f32, more than this 24 GB machine
 * can hold next to anything else; as bf16 (the dtype the released checkpoints are stored in) it
 * is 11.2 GB.
 *
 * Design. A bf16 Model is planned like any Model (model_plan: names, shapes, offsets), but its
 * ParamStore holds no f32 buffer and no gradient buffer. Instead:
 *  - every entry's values live as bf16 (uint16, the upper half of the f32 bit pattern) in one
 *    flat buffer, at the entry's ParamStore offset;
 *  - the norm weights (1-D entries, a few thousand floats per layer) are also decoded once into
 *    a small permanent f32 buffer, and their Tensors point there;
 *  - the matrices of a layer (self- and cross-attention q/k/v/o, MLP gate/up/down) are
 *    materialised in f32 one layer at a time, just before the layer runs, into one scratch
 *    buffer sized for the largest layer (wbf16_layer); their Tensors point into the scratch while
 *    the layer is materialised and are NULL otherwise (a use outside a materialised layer
 *    crashes instead of silently reading another layer's weights). The ops then run unchanged,
 *    on exactly the f32 values of the bf16 weights;
 *  - the embeddings (256000 x d) are never materialised: the input embedding converts only the
 *    looked-up rows (wbf16_embedding, wbf16_embed_rows), and the tied LM head converts the
 *    embedding block by block of vocabulary rows inside the logits products (wbf16_logits, and
 *    the chunked no-grad cross-entropy of lm_head_ce), so the f32 head never exists whole.
 * Results therefore equal the f32 model's on the same bf16-rounded weights: the layers run the
 * same ops on the same f32 values (bit-identical); the logits are the same dot products, formed
 * by vocabulary blocks instead of one product (equal up to the BLAS kernel's blocking, ~1e-7
 * relative). Tests: tests/test_weights_bf16.c.
 * bf16 models are for no-grad use only (g->grad_enabled = 0): the forward refuses to record a
 * tape through bf16 weights.
 *
 * Cost. Each materialisation converts one layer (2B: 87M values for a decoder layer, 350 MB of
 * f32 scratch), once per forward pass; for a teacher-forced batch that is a small part of the
 * layer's matrix products. The decoding steps of cached generation (a few rows per call) do not
 * materialise: they multiply straight from the bf16 storage (wbf16_matmul_rows, fused
 * conversion), reading 2 bytes per weight, which makes them faster than with f32 weights; the
 * prefill of long prompts materialises. Measured with `make check-realsize` on this 2-core
 * machine, 2B-2B (5.6B parameters): 11.7 GB peak for score and generate; a decoding step (2
 * rows; 2.9 billion bf16 weights read: decoder layers and LM head) takes 1.6 s.
 *
 * Memory (model/memory.c uses wbf16_extra_bytes): 2 bytes per parameter, plus the layer scratch
 * (largest layer's matrices in f32), the norms in f32, and per thread one block of LM-head rows
 * in f32 (WBF16_HEAD_BLOCK_BYTES, or the whole head when that is smaller).
 */
#ifndef T5G_WEIGHTS_BF16_H
#define T5G_WEIGHTS_BF16_H

#include <stdint.h>
#include "model/model.h"

/* Bytes of f32 LM-head rows one thread converts at a time. */
#define WBF16_HEAD_BLOCK_BYTES ((int64_t)8 << 20)

typedef struct WeightsBf16 WeightsBf16;

/* Which dtype an inference command keeps the weights in. AUTO: f32 when the f32 model (with the
 * command's working memory) fits in the available memory with a 10% margin, else bf16. */
typedef enum { WEIGHTS_AUTO = 0, WEIGHTS_F32 = 1, WEIGHTS_BF16 = 2 } WeightsMode;
/* "auto", "f32" (also "fp32", "float32"), "bf16" (also "bfloat16"): 0, or -1 with t5g_error. */
int weights_mode_parse(const char *s, WeightsMode *out);

/* The working shape of an inference command, for its memory estimate (model/memory.h):
 *  score / eval: batches of `rows` rows of enc_len encoder and dec_len decoder tokens;
 *  generate (new_tokens > 0): `rows` prompts of enc_len tokens (T5Gemma: the encoder input;
 *  Gemma 2: the prefilled prompt) and new_tokens generated tokens each, with KV caches.
 * eval sets both (the larger estimate counts). */
typedef struct InferPlan {
  const char *command;     /* "score", "eval", "generate": names the command in messages */
  int rows, enc_len, dec_len;
  int new_tokens;          /* > 0: also the generation estimate */
} InferPlan;

/* Load a Hugging Face checkpoint directory for inference (no gradient buffers):
 *  1. reads config.json and predicts the memory of the plan with f32 and with bf16 weights
 *     (memory_infer / memory_generate);
 *  2. mode AUTO picks f32 when that fits in 90% of the available memory (MemAvailable; the
 *     estimate is approximate and the machine may be shared), else bf16;
 *  3. refuses, before allocating anything, when the chosen mode does not fit: -1 with a message
 *     naming the directory, the command and dtype, the need (weights and working memory), what
 *     is available, whether bf16 would fit, and `t5gemma info`;
 *  4. loads the weights: f32 (converted from the stored dtype, exact for BF16/F16) or bf16
 *     (copied from BF16 shards, rounded to nearest even from F32, via f32 from F16), straight
 *     from the memory-mapped safetensors, tensor by tensor, releasing each tensor's mapped pages
 *     once read (so the process's resident memory is the weights, not the weights plus the
 *     file). Prints the choice, the estimate and the load time to stderr.
 * The model is for no-grad use (every entry frozen, requires_grad 0). -1 with t5g_error (config,
 * memory, checkpoint errors as hf_load_params reports them). *chosen (optional) gets the mode
 * used (WEIGHTS_F32 or WEIGHTS_BF16). */
int model_load_infer(Model *m, const char *dir, WeightsMode mode, const InferPlan *plan, WeightsMode *chosen);

/* The same without any memory estimate or check or message: f32 (no gradient buffer) or bf16
 * weights (mode must be WEIGHTS_F32 or WEIGHTS_BF16). For tests and tools. */
int model_load_weights(Model *m, const char *dir, WeightsMode mode);

/* Convert a Model holding f32 weights (model_init'ed and filled) into a bf16 Model `dst` with
 * the same config and the weights rounded to bf16 (round to nearest even, st_f32_to_bf16).
 * src is unchanged. For tests (the reference is src with its weights rounded in place:
 * wbf16_round_params). */
void model_to_bf16(Model *dst, const Model *src);
/* Round every weight of an f32 store to its bf16 value (kept as f32). */
void wbf16_round_params(ParamStore *ps);

/* Is this model's storage bf16? */
static inline int model_is_bf16(const Model *m) { return m->dec.bf16 != NULL; }

void wbf16_free(WeightsBf16 *w);

/* Vocabulary rows per LM-head block. rows = 0: the default (WBF16_HEAD_BLOCK_BYTES / (4 d)) and
 * the fused kernel for few rows; rows >= 1: always blocks of that many rows. Tests use a few
 * rows so that tiny vocabularies span several blocks. */
void wbf16_set_head_rows(Model *m, int64_t rows);

/* Extra bytes of a bf16 model beyond 2 per parameter (layer scratch, f32 norms, LM-head blocks
 * for `threads` threads), from the config alone. */
int64_t wbf16_extra_bytes(const ModelConfig *c, int threads);

/* ---- forward pieces (model.c, eval/generate.c) -------------------------------------------- */

/* Materialise the matrices of layer L (an element of sp->layers of a bf16 model) in f32 and
 * point its Tensors at them; the previously materialised layer's matrix Tensors become NULL.
 * A no-op when L is already materialised. */
void wbf16_layer(const StackParams *sp, const LayerParams *L);

/* op_embedding for a bf16 stack (no-grad): out[ids..., d] = f32(E16[id]) · sp->embed_scale,
 * ids in [0, V) (asserted). Returns an arena tensor of shape [shape..., d]. */
Tensor *wbf16_embedding(Graph *g, const StackParams *sp, const int32_t *ids, int ndim, const int64_t *shape);
/* The same into a caller buffer out[n, d] (cached decoding). */
void wbf16_embed_rows(const StackParams *sp, const int32_t *ids, int64_t n, float *out);

/* Products with few rows (cached decoding: one token per row and step) are bound by reading the
 * weights; for them the bf16 values are read directly and converted in registers, 2 bytes per
 * weight instead of 4 (f32 weights) or 10 (materialise, then sgemm). Measured on this machine
 * (2 cores), a 9216 x 2304 matrix times 1 row: 12 ms fused, 22 ms f32 sgemm, 43 ms
 * materialise + sgemm. The sums run in another order than sgemm's: results agree to ~1e-7
 * relative, not bitwise. */
#define WBF16_FUSED_MAX_ROWS 8

/* y[n, out] (row stride ldy >= out) = x[n, in] · Wᵀ for a matrix W [out, in] of a bf16 stack,
 * read from the bf16 storage (W need not be materialised). OpenMP inside: call outside OpenMP
 * regions. */
void wbf16_matmul_rows(const StackParams *sp, const Tensor *W, const float *x, int64_t n, float *y, int64_t ldy);

/* Uncapped logits out[N, V] = h[N, d] · E16ᵀ of a bf16 stack's tied embedding: for N <=
 * WBF16_FUSED_MAX_ROWS (and the default block size) by wbf16_matmul_rows' fused kernel, else by
 * blocks of vocabulary rows (each converted to f32 by the thread that uses it, then one
 * single-threaded sgemm per block; OpenMP over blocks). Call outside OpenMP regions. ldo >= V is
 * the row stride of out. */
void wbf16_logits(const StackParams *sp, const float *h, int64_t N, float *out, int64_t ldo);

/* ---- the tied LM head, for f32 and bf16 models ---------------------------------------------- */

/* Soft-capped cross-entropy of the model's LM head (spec 1.6): f32 weights call op_softcap_ce
 * (m->dec.embed) unchanged; bf16 weights (no-grad only) compute the same loss, row_nll and
 * stats with the head converted by vocabulary blocks (chunks of rows as op_softcap_ce; the
 * per-row cap / max / log-sum-exp arithmetic is the same). Returns the scalar loss tensor. */
Tensor *lm_head_ce(Model *m, Graph *g, Tensor *h, const int32_t *labels, float normalizer,
                   float *row_nll, LossStats *stats);

/* Soft-capped logits out[N, V] of the model's LM head (logits_full for f32 weights). */
void lm_head_logits(Model *m, const float *h, int64_t N, float *out);

/* (hbf) Top-k probabilities of the model's LM head at temperature T, with logits_topk's contract
 * (spec 4.2, a distillation teacher's soft targets; model/ops.h): h [N, d] -> ids_out/probs_out
 * [N, k] (ids_out NULL only with k = V: probs_out [N, V] = the full softmax). The logits of
 * chunks of chunk_rows(V) rows (the loss's ~2^26-float chunks, 16 to 256 rows) come from one
 * sgemm with the f32 head (exactly logits_topk's) or, with bf16 weights, from wbf16_logits by
 * blocks of vocabulary rows, so the [V, d] f32 head never exists; the row work is
 * logits_topk's (model/logit_rows.h topk_rows). bf16 results equal the f32 model's on the same
 * bf16-rounded weights up to the logits' blocking (~1e-7 relative).
 * Memory: one [min(N, chunk), V] f32 chunk and k heap entries per thread, from `scratch` (an
 * arena: marked and released, so steady-state calls allocate nothing) or, when NULL, malloc'ed
 * and freed; plus the bf16 LM-head blocks (wbf16_extra_bytes). Call outside OpenMP regions. */
void lm_head_topk(Model *m, const float *h, int64_t N, float temperature, int k, int32_t *ids_out, float *probs_out,
                  Arena *scratch);

#endif
