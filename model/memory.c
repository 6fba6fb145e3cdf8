/* memory.c: memory predictions (see memory.h). The per-token counts mirror the tensors that
 * model.c's layer code allocates through the ops (one f32 each, rows = tokens). */
#include "model/memory.h"
#include "model/runtime.h"
#include "model/util.h"
#include "model/weights_bf16.h"

/* Rows per loss chunk, as model/ops_loss.c picks them (about 2^26 / V, in [16, 256]). */
static int64_t loss_chunk_rows(int64_t V) {
  int64_t ch = ((int64_t)1 << 26) / (V > 0 ? V : 1);
  return ch > 256 ? 256 : ch < 16 ? 16 : ch;
}

/* Floats per token kept by one layer's forward. */
static int64_t layer_floats(const StackConfig *s, int cross) {
  int64_t d = s->hidden_size, F = s->intermediate_size;
  int64_t qd = (int64_t)s->num_attention_heads * s->head_dim, kd = (int64_t)s->num_key_value_heads * s->head_dim;
  int64_t H = s->num_attention_heads;
  /* self-attention: norm d, q qd, k kd, v kd, rope(q) qd, rope(k) kd, attention out qd + lse H,
   * o-proj d, post-norm d, residual d; two rsqrt per row */
  int64_t n = 5 * d + 3 * qd + 3 * kd + H + 2;
  /* cross-attention (per decoder token): norm d, q qd, out qd + lse H, o d, post-norm d, residual d */
  if (cross) n += 4 * d + 2 * qd + H + 2;
  /* MLP: norm d, gate F, up F, geglu F, down d, post-norm d, residual d */
  n += 4 * d + 3 * F + 2;
  return n;
}

static int64_t stack_act(const StackConfig *s, int64_t tokens, int cross, int64_t enc_tokens, int64_t enc_kd_width, int recompute) {
  int64_t d = s->hidden_size;
  int64_t per_layer = layer_floats(s, cross) * tokens + (cross ? 2 * enc_kd_width * enc_tokens : 0);
  int64_t n = 2 * d * tokens;                           /* embedding + final norm */
  if (recompute) n += (int64_t)s->num_hidden_layers * d * tokens + per_layer;
  else n += (int64_t)s->num_hidden_layers * per_layer;
  return n * 4;
}

int64_t memory_activations(const ModelConfig *c, int B, int Te, int Td, int recompute) {
  int64_t te = (int64_t)B * Te, td = (int64_t)B * Td, n = 0;
  if (c->kind == MODEL_T5GEMMA) {
    n += stack_act(&c->enc, te, 0, 0, 0, recompute);
    n += stack_act(&c->dec, td, 1, te, (int64_t)c->dec.num_key_value_heads * c->dec.head_dim, recompute);
  } else {
    n += stack_act(&c->dec, td, 0, 0, 0, recompute);
  }
  return n;
}

/* The loss's logits chunk: [r, V] logits and [r, d] gathered rows (ops_loss.c), alive during
 * the loss's forward only. */
static int64_t loss_chunk_bytes(const ModelConfig *c, int64_t rows) {
  int64_t V = c->dec.vocab_size, ch = loss_chunk_rows(V), r = rows < ch ? rows : ch;
  return 4 * r * (V + c->dec.hidden_size);
}

/* Inference: two [r, V] buffers with r = min(rows, 256): the f32 loss's logits chunk, or the bf16
 * path's LM-head blocks (model/weights_bf16.c); an upper bound for both. */
static int64_t loss_infer_bytes(const ModelConfig *c, int64_t rows) {
  int64_t r = rows < 256 ? rows : 256;
  return 2 * r * (int64_t)c->dec.vocab_size * 4;
}

/* Training: the loss keeps dE [V, d] and dh [rows, d] from its forward to its backward
 * (ops_loss.c). The chunk's space is reused by the backward's gradients when those are larger,
 * as they are without recomputation (measured: peak RSS = parameter states + arena peak + 20-60
 * MiB on S-S, B-B and Gemma 2 S); with recomputation the released chunk's pages stay resident
 * beside the smaller per-layer working set (measured: + the chunk). */
static int64_t loss_train_bytes(const ModelConfig *c, int64_t rows, int64_t acts, int recompute) {
  int64_t V = c->dec.vocab_size, d = c->dec.hidden_size, chunk = loss_chunk_bytes(c, rows);
  int64_t keep = 4 * V * d + 4 * rows * d;
  return keep + (recompute ? chunk : (chunk > acts ? chunk - acts : 0));
}

static void total(MemEstimate *m) {
  m->overhead = (int64_t)200 << 20;
  m->total = m->weights + m->grads + m->optimizer + m->activations + m->overhead;
}

/* Training's fixed allowance: libraries, thread stacks, OpenBLAS buffers and t5g_sgemm's scratch
 * measured 19-56 MiB beyond the parameter states and the arena peak (bench, 2 threads). */
#define TRAIN_OVERHEAD ((int64_t)64 << 20)

MemEstimate memory_train(const ModelConfig *c, int B, int Te, int Td, int recompute, int ranks, int zero1) {
  MemEstimate m = {0};
  int64_t P = config_param_counts(c).total;
  if (ranks < 1) ranks = 1;
  m.weights = 4 * P;
  m.grads = 4 * P;
  m.optimizer = zero1 ? (8 * P + ranks - 1) / ranks : 8 * P;
  /* forward tensors and, in backward, their gradients (lazily allocated, same sizes) */
  const int64_t acts = 2 * memory_activations(c, B, Te, Td, recompute);
  m.activations = acts + loss_train_bytes(c, (int64_t)B * Td, acts, recompute);
  m.overhead = TRAIN_OVERHEAD;
  m.total = m.weights + m.grads + m.optimizer + m.activations + m.overhead;
  return m;
}

/* No-grad forward (model.c stack_forward_ex): one layer's tensors at a time, two ping-pong
 * [B, T, d] buffers per stack, the embedding output, the encoder output kept for the decoder. */
static int64_t nograd_stack(const StackConfig *s, int64_t tokens, int cross, int64_t enc_tokens, int64_t kd) {
  int64_t d = s->hidden_size;
  return 4 * (layer_floats(s, cross) * tokens + (cross ? 2 * kd * enc_tokens : 0) + 4 * d * tokens);
}

int64_t memory_teacher_weights(const ModelConfig *t, int bf16) {
  int64_t P = config_param_counts(t).total;
  return bf16 ? 2 * P + wbf16_extra_bytes(t, t5g_threads()) : 4 * P;
}

/* train.c teacher_targets, all in the step's arena: the soft targets [N, k] (ids and probs) stay
 * through the student's forward and backward; below them, released before the student's forward,
 * the teacher's no-grad forward over B rows of Te + Td tokens and then, beside its four [B·(Te+Td),
 * d_T] buffers, the gathered rows [N, d_T] and one [min(N, chunk), V] logits chunk (lm_head_topk);
 * N = B·Td. The student's step reuses that space: only the excess over its activations counts. */
MemEstimate memory_train_distill(const ModelConfig *c, int B, int Te, int Td, int recompute, int ranks, int zero1,
                                 const ModelConfig *t, int teacher_bf16, int topk) {
  MemEstimate m = memory_train(c, B, Te, Td, recompute, ranks, zero1);
  if (!t) return m;
  const int64_t N = (int64_t)B * Td, BL = (int64_t)B * (Te + Td), V = t->dec.vocab_size, dT = t->dec.hidden_size;
  const int64_t ch = loss_chunk_rows(V), k = topk > 0 && topk < V ? topk : V;
  const int64_t targets = k < V ? 8 * N * k : 4 * N * V;
  const int64_t fwd = nograd_stack(&t->dec, BL, 0, 0, 0);
  const int64_t top = 4 * (4 * BL * dT + N * dT + (N < ch ? N : ch) * V);
  const int64_t peak = fwd > top ? fwd : top;
  m.weights += memory_teacher_weights(t, teacher_bf16);
  m.activations += targets + (peak > m.activations ? peak - m.activations : 0);
  m.total = m.weights + m.grads + m.optimizer + m.activations + m.overhead;
  return m;
}

MemEstimate memory_infer(const ModelConfig *c, int B, int Te, int Td, int bf16_weights) {
  MemEstimate m = {0};
  int64_t P = config_param_counts(c).total;
  /* bf16: 2 bytes per parameter plus one layer's matrices, the norms and the LM-head blocks
   * in f32 (model/weights_bf16.h) */
  m.weights = bf16_weights ? 2 * P + wbf16_extra_bytes(c, t5g_threads()) : 4 * P;
  int64_t te = (int64_t)B * Te, td = (int64_t)B * Td;
  if (c->kind == MODEL_T5GEMMA)
    m.activations = nograd_stack(&c->enc, te, 0, 0, 0) +
                    nograd_stack(&c->dec, td, 1, te, (int64_t)c->dec.num_key_value_heads * c->dec.head_dim);
  else
    m.activations = nograd_stack(&c->dec, td, 0, 0, 0);
  m.activations += loss_infer_bytes(c, td);
  total(&m);
  return m;
}

MemEstimate memory_generate(const ModelConfig *c, int rows, int prompt_len, int new_tokens, int bf16_weights) {
  MemEstimate m = {0};
  int64_t P = config_param_counts(c).total;
  m.weights = bf16_weights ? 2 * P + wbf16_extra_bytes(c, t5g_threads()) : 4 * P;
  const StackConfig *s = &c->dec;
  const int encdec = c->kind == MODEL_T5GEMMA;
  const int64_t R = rows < 1 ? 1 : rows, chunk = encdec ? 1 : 64;   /* generate.c prefill_chunk */
  const int64_t max_len = encdec ? new_tokens : (int64_t)prompt_len + new_tokens;
  const int64_t kd = (int64_t)s->num_key_value_heads * s->head_dim, qd = (int64_t)s->num_attention_heads * s->head_dim;
  const int64_t d = s->hidden_size, F = s->intermediate_size, V = s->vocab_size;
  int64_t cache = 0, slots_max = 1;
  for (int l = 0; l < s->num_hidden_layers; l++) {
    int64_t slots = max_len;
    if (s->layer_sliding[l] && s->sliding_window > 0 && s->sliding_window + chunk - 1 < slots) slots = s->sliding_window + chunk - 1;
    if (slots > slots_max) slots_max = slots;
    cache += 2 * R * slots * kd;
  }
  const int64_t T = R * (chunk < max_len ? chunk : max_len);           /* tokens of one call */
  int64_t scratch = T * (2 * d + 2 * qd + 2 * kd + (qd > d ? qd : d) + 2 * F);
  int64_t act = 4 * (cache + scratch) + 2 * R * V * 4 + (int64_t)t5g_threads() * (V * 8 + slots_max * 20);
  if (encdec) {
    const int64_t te = R * prompt_len;
    act += 4 * 2 * te * kd * s->num_hidden_layers;                      /* cross-attention K/V */
    act += nograd_stack(&c->enc, te, 0, 0, 0);                          /* the encoder pass */
  }
  m.activations = act;
  total(&m);
  return m;
}

MemEstimate memory_adapt(const ModelConfig *t) {
  MemEstimate m = {0};
  int64_t big = (int64_t)t->dec.vocab_size * t->dec.hidden_size;
  int64_t e = (int64_t)t->enc.vocab_size * t->enc.hidden_size;
  if (e > big) big = e;
  int64_t F = (int64_t)t->dec.intermediate_size * t->dec.hidden_size;
  m.activations = 4 * (F > big / 64 ? F : big / 64);   /* converted in blocks; one block at a time */
  total(&m);
  return m;
}

int memory_check(const char *what, int64_t need) {
  int64_t avail = t5g_mem_available();
  if (avail <= 0) return 0;
  int64_t held = t5g_current_rss();
  if (held > 0) avail += held;
  if (need <= avail) return 0;
  char a[32], b[32], c[32];
  return t5g_error("%s needs about %s of memory but only %s is available (free memory plus the %s this process "
                   "already holds); use a smaller batch or length, recompute=1, bf16 weights, or more ranks (see "
                   "`t5gemma info MODEL`)",
                   what, t5g_fmt_bytes((double)need, a, sizeof a), t5g_fmt_bytes((double)avail, b, sizeof b),
                   t5g_fmt_bytes((double)(held > 0 ? held : 0), c, sizeof c));
}
