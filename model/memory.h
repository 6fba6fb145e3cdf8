/* memory.h: predicted memory of each command for a model config (issue 8, 10), used by
 * `t5gemma info` and by the commands to refuse, before allocating, a job the machine cannot hold.
 *
 * Accounting (bytes), f32 everywhere unless stated:
 *   weights      4·P (2·P when kept in bf16 for inference, model/weights_bf16)
 *   gradients    4·P (the flat twin buffer; frozen entries included)
 *   AdamW m, v   8·P, divided by the ranks with ZeRO-1
 *   activations  the tensors the ops allocate per token, counted from model.c's layer code
 *                (see memory.c), times 2 for their gradients in backward, plus the loss chunk;
 *                with recomputation only each layer's output is kept, plus one layer's full set
 *   overhead     a fixed allowance for the program, libraries and thread stacks
 *   teacher      (hbf; memory_train_distill, spec 4.2) a distillation teacher adds
 *                - to weights: 4·P_T (f32, no gradient buffer) or 2·P_T + wbf16_extra_bytes (bf16:
 *                  one layer's matrices, the norms, per thread one LM-head block, all f32);
 *                - to activations (all in the step's arena, train.c teacher_targets): the soft
 *                  targets, ids and probs [B·Td, k] (probs [B·Td, V] for the full distribution,
 *                  topk = 0), which live through the student's forward and backward; and, released
 *                  before the student's forward so that only what exceeds the student's
 *                  activations counts, the larger of its no-grad forward over the micro-batch's B
 *                  rows of Te + Td (prefix + target) tokens, one layer at a time (as memory_infer),
 *                  and the top-k phase: that forward's four [B·(Te+Td), d_T] buffers, the gathered
 *                  hidden rows [B·Td, d_T] and one logits chunk [min(B·Td, chunk), V] (chunk = the
 *                  loss's ~2^26 floats / V rows)
 */
#ifndef T5G_MEMORY_H
#define T5G_MEMORY_H

#include <stdint.h>
#include "model/config.h"

typedef struct MemEstimate {
  int64_t weights, grads, optimizer, activations, overhead, total;
} MemEstimate;

/* Training step: B rows of Te encoder / Td decoder tokens (Gemma 2: Te = 0). ranks >= 1;
 * zero1: optimizer state sharded over ranks. */
MemEstimate memory_train(const ModelConfig *c, int B, int Te, int Td, int recompute, int ranks, int zero1);
/* (hbf) A distillation teacher's weights: 4·P_T (f32) or 2·P_T + wbf16_extra_bytes (bf16). */
int64_t memory_teacher_weights(const ModelConfig *teacher, int bf16);
/* (hbf) memory_train plus a Gemma 2 distillation teacher (see "teacher" above; teacher NULL:
 * memory_train). teacher_bf16: its weights in bf16; topk: distill_topk (0 = full distribution). */
MemEstimate memory_train_distill(const ModelConfig *c, int B, int Te, int Td, int recompute, int ranks, int zero1,
                                 const ModelConfig *teacher, int teacher_bf16, int topk);
/* Inference (score / eval): weights (f32 or bf16) and a no-grad forward pass, which keeps one
 * layer's tensors at a time (model.c stack_forward_ex). */
MemEstimate memory_infer(const ModelConfig *c, int B, int Te, int Td, int bf16_weights);
/* (h14) Cached generation (eval/generate.c): weights, the encoder's no-grad forward over the
 * prompts (T5Gemma) or the prefill chunk (Gemma 2), every layer's self-attention KV cache
 * (rows x slots x K·h, slots = prompt + new tokens for global layers (T5Gemma decoder: new
 * tokens), min(that, sliding_window + chunk - 1) for sliding ones), the cross-attention K/V of
 * the encoder output, the per-token scratch, and two [rows, V] logits buffers. rows = batch
 * size, or 2 x num_beams for beam search (its caches are double-buffered). */
MemEstimate memory_generate(const ModelConfig *c, int rows, int prompt_len, int new_tokens, int bf16_weights);
/* Streaming adaptation: one tensor at a time (the largest, in f32), plus mapped pages. */
MemEstimate memory_adapt(const ModelConfig *target);
/* Activation bytes per training step (forward tensors only, no gradients). */
int64_t memory_activations(const ModelConfig *c, int B, int Te, int Td, int recompute);
/* Refuse when need > available memory: MemAvailable (/proc/meminfo) plus what this process
 * already holds resident (a trainer checks after loading its model: the loaded weights are part of
 * `need` and no longer part of MemAvailable). -1 with a message naming the command, the need and
 * what is available. */
int memory_check(const char *what, int64_t need);

#endif
