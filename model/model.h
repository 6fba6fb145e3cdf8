/* model.h: Gemma 2 (decoder-only) and T5Gemma (encoder-decoder) on the engine.
 *
 * Architecture: spec sections 1 and 2. A Model owns a ParamStore whose entries carry the exact
 * Hugging Face names (spec 1.7, 2.7), so checkpoints load and export by name:
 *   Gemma 2:  model.embed_tokens.weight, model.layers.{i}.self_attn.{q,k,v,o}_proj.weight,
 *             model.layers.{i}.mlp.{gate,up,down}_proj.weight,
 *             model.layers.{i}.{input_layernorm,post_attention_layernorm,
 *                               pre_feedforward_layernorm,post_feedforward_layernorm}.weight,
 *             model.norm.weight                   (lm_head tied to model.embed_tokens)
 *   T5Gemma:  model.{encoder,decoder}.embed_tokens.weight, model.{encoder,decoder}.norm.weight,
 *             model.{encoder,decoder}.layers.{i}.self_attn.*, .mlp.*,
 *             .{pre,post}_self_attn_layernorm, .{pre,post}_feedforward_layernorm,
 *             decoder only: .cross_attn.{q,k,v,o}_proj, .{pre,post}_cross_attn_layernorm
 *             (lm_head.out_proj tied to model.decoder.embed_tokens)
 * Shapes are PyTorch [out, in]; cross_attn k/v take the encoder width
 * (cross_attention_hidden_size).
 */
#ifndef T5G_MODEL_H
#define T5G_MODEL_H

#include "model/batch.h"
#include "model/config.h"
#include "model/ops.h"
#include "model/params.h"
#include "model/rng.h"

typedef struct LayerParams {
  Tensor *q, *k, *v, *o;                 /* self-attention */
  Tensor *xq, *xk, *xv, *xo;             /* cross-attention (T5Gemma decoder), else NULL */
  Tensor *gate, *up, *down;              /* GeGLU MLP */
  Tensor *ln_pre_attn, *ln_post_attn;    /* input_layernorm / pre_self_attn_layernorm, ... */
  Tensor *ln_pre_cross, *ln_post_cross;
  Tensor *ln_pre_ffw, *ln_post_ffw;
} LayerParams;

typedef struct StackParams {
  const StackConfig *cfg;
  Tensor *embed;                         /* [V, d] */
  Tensor *final_norm;                    /* [d] */
  LayerParams *layers;                   /* [L] */
  int is_encoder, has_cross;
  float embed_scale;                     /* sqrt(d) (f32, or bf16-rounded: ModelConfig) */
  struct WeightsBf16 *bf16;              /* (h14) non-NULL: weights stored as bf16, inference
                                            only (model/weights_bf16.h) */
  int64_t *layer_lo, *layer_hi;          /* [L]: each layer's parameters span [lo, hi) of the flat buffer */
} StackParams;

typedef struct Model {
  ModelConfig cfg;
  ParamStore ps;
  StackParams enc;                       /* T5Gemma only */
  StackParams dec;                       /* T5Gemma decoder, or the Gemma 2 stack */
  int recompute;                         /* activation checkpointing (see model_loss) */
} Model;

/* Register every parameter (HF names) and allocate the flat buffers (zeroed).
 * Returns 0, or -1 with t5g_error() when the config is invalid. */
int  model_init(Model *m, const ModelConfig *cfg);
/* Register the parameters (names, shapes, offsets) without allocating them: for tools that
 * stream tensors (random checkpoints, adaptation). model_free releases it. */
int  model_plan(Model *m, const ModelConfig *cfg);
/* (h14) After model_plan, when the caller provides the parameter storage itself (bf16 weights,
 * inference without gradient buffers): point the StackParams' Tensors at the store's entries. */
void model_resolve(Model *m);
void model_free(Model *m);

/* Random initialisation, seeded: matrices and embeddings ~ normal(0, initializer_range), norm
 * weights 0 (unit gain, spec 7 "RMSNorm initialisation"). */
void model_init_random(Model *m, uint64_t seed);
/* The pieces of model_init_random, for streaming writers: an entry's std (0 for norms) and its
 * generator (values are std * rng_normal() in element order). */
float model_init_std(const Model *m, const ParamEntry *e);
void  model_init_rng(const ParamEntry *e, uint64_t seed, Rng *r);

/* The T5Gemma cross-attention parameters (q/k/v/o and their norms) are flagged
 * ParamEntry.cross_attn; this freezes everything else (warm-up of unequal pairs, spec 3.1) or
 * unfreezes all (on = 0). */
void model_set_cross_attn_only(Model *m, int on);

/* Forward pass of one stack over a batch: embedding -> layers -> final norm.
 * ids/mask/pos/seg are [B, T]; enc_out [B, Te, d_enc] and enc_mask/enc_seg for the decoder's
 * cross-attention (NULL otherwise). causal selects the self-attention mask (decoder: 1;
 * encoder: 0 unless ModelConfig.encoder_causal). Returns the final-normed hidden [B, T, d]. */
Tensor *stack_forward(Graph *g, const StackParams *sp, const int32_t *ids, const uint8_t *mask,
                      const int32_t *pos, const int32_t *seg, int B, int T, int causal,
                      Tensor *enc_out, const uint8_t *enc_mask, const int32_t *enc_seg, int Te);

/* The same with activation recomputation per layer when recompute != 0 (model->recompute). */
Tensor *stack_forward_ex(Graph *g, const StackParams *sp, const int32_t *ids, const uint8_t *mask,
                         const int32_t *pos, const int32_t *seg, int B, int T, int causal,
                         Tensor *enc_out, const uint8_t *enc_mask, const int32_t *enc_seg, int Te, int recompute);

/* Forward (recording the tape when g->grad_enabled) and loss for a batch:
 * Gemma 2: causal LM over dec_* with labels; T5Gemma: encoder over enc_*, decoder over dec_*.
 * loss = Σ CE(capped logits, labels) / normalizer (normalizer = target tokens of the whole
 * accumulated batch; pass b->n_targets for a single micro-batch). row_nll [B*Td] optional.
 * *dec_hidden (optional) receives the decoder's final hidden [B*Td, d] (for distillation and
 * scoring). */
Tensor *model_loss(Model *m, Graph *g, const Batch *b, float normalizer, LossStats *st,
                   float *row_nll, Tensor **dec_hidden);

/* Hidden states only (no loss): the decoder's final-normed hidden [B*Td, d]. */
Tensor *model_hidden(Model *m, Graph *g, const Batch *b);

/* The LM head (tied embedding) and final soft-cap of the output stack. */
static inline Tensor *model_lm_head(Model *m) { return m->dec.embed; }
static inline float model_final_softcap(const Model *m) { return m->cfg.dec.final_logit_softcapping; }

/* The HF name prefix of a stack: "model." (Gemma 2), "model.encoder." or "model.decoder.". */
const char *model_stack_prefix(const Model *m, int encoder);



/* Load a Hugging Face checkpoint directory (config.json + safetensors, Gemma 2 or T5Gemma):
 * config_load, model_init, hf_load_params. -1 with t5g_error naming the file/tensor. */
int model_load_dir(Model *m, const char *dir);
#endif
