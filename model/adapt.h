/* adapt.h: making a T5Gemma encoder-decoder from decoder-only Gemma 2 weights (spec 3).
 *
 * Rules (spec 3.1, 3.2; paper P1 §3.2):
 *  - encoder: every tensor copied from the encoder source (A); only the mask changes to
 *    bidirectional. Names: input_layernorm -> pre_self_attn_layernorm, post_attention_layernorm
 *    -> post_self_attn_layernorm, model.norm -> model.encoder.norm, model.embed_tokens ->
 *    model.encoder.embed_tokens, the rest keeps its name under model.encoder.
 *  - decoder: self-attention, MLP, norms and embedding copied from the decoder source (B).
 *  - cross-attention q/k/v/o:
 *      balanced (one source, or two with equal widths and cross_init=copy): copied from the
 *      same layer's self-attention of the decoder source;
 *      unequal (A and B differ in hidden size): random normal(0, cross_std) (default 0.02 =
 *      initializer_range), seeded per tensor name, and marked for the cross-attention-only
 *      warm-up (default 1000 steps, spec 3.1) that training honours.
 *  - cross-attention norms (unverified in the sources, spec 3.2 [U]): by default copied from the
 *    same decoder layer's self-attention norms (pre_cross <- input_layernorm, post_cross <-
 *    post_attention_layernorm), the "most similar weight" rule; option cross_norm_init=zero
 *    gives unit gain.
 *  - from a preset with no weights: everything random (model_init_random), the from-scratch
 *    baseline.
 * The plan is a list of rules (target name <- source tensor / random / zero), executed either in
 * memory (adapt_run_params) or streamed tensor by tensor from memory-mapped shards to the
 * output shards (adapt_stream, model/adapt_stream.c), with identical results.
 */
#ifndef T5G_ADAPT_H
#define T5G_ADAPT_H

#include "model/config.h"
#include "model/params.h"

typedef enum { RULE_COPY = 0, RULE_RANDOM = 1, RULE_ZERO = 2 } AdaptRuleKind;

typedef struct AdaptRule {
  char target[192];          /* T5Gemma HF name */
  AdaptRuleKind kind;
  int source;                /* RULE_COPY: 0 = encoder source A, 1 = decoder source B */
  char src_name[192];        /* RULE_COPY: Gemma 2 HF name in that source */
  int64_t shape[2];          /* target shape ([n] for 1-D: shape[1] = 0) */
  int ndim;
} AdaptRule;

typedef struct AdaptOptions {
  int cross_init;            /* -1 auto (copy when balanced, random otherwise), 0 copy, 1 random */
  int cross_norm_zero;       /* 0 copy self-attention norms (default), 1 zeros (unit gain) */
  float cross_std;           /* std of random cross-attention (default 0.02) */
  uint64_t seed;             /* for random tensors */
  int encoder_causal;        /* written into the target config (ablation, spec 4.5) */
} AdaptOptions;

void adapt_options_default(AdaptOptions *o);

/* The T5Gemma config for encoder source A and decoder source B (both gemma2 configs):
 * encoder = A's stack, decoder = B's stack with cross_attention_hidden_size = A.hidden_size.
 * Refuses (t5g_error) different vocabularies or non-gemma2 sources. */
int adapt_make_config(const ModelConfig *a, const ModelConfig *b, const AdaptOptions *o, ModelConfig *out);

/* Build the rule list for target config t from sources a and b. *warmup_cross is set to 1 when
 * cross-attention is random (the warm-up applies). Rules are in the target model's parameter
 * order. Caller frees *rules. */
int adapt_plan(const ModelConfig *t, const ModelConfig *a, const ModelConfig *b, const AdaptOptions *o,
               AdaptRule **rules, int *n_rules, int *warmup_cross);

/* Fill one target tensor (f32, rule->shape elements) for a RULE_RANDOM or RULE_ZERO rule. Random
 * values depend only on (seed, target name): normal(0, std). */
void adapt_fill_generated(const AdaptRule *r, const AdaptOptions *o, float *dst);

/* Execute a plan in memory: sources as ParamStores of Gemma 2 models (b may equal a), target a
 * finalised ParamStore of the T5Gemma model. Returns 0 or -1 (missing source tensor, shape
 * mismatch: message names the tensor). */
int adapt_run_params(const AdaptRule *rules, int n, const AdaptOptions *o, ParamStore *a, ParamStore *b, ParamStore *target);



/* Streamed execution (issue 10): each target tensor is produced chunk by chunk (1M elements)
 * from the memory-mapped source tensors and written through the streaming safetensors writer,
 * so memory stays at a chunk plus mapped pages whatever the model size. Sources are open
 * readers (b may equal a); w must be a writer begun but not yet planned: adapt_stream plans
 * every rule's tensor, writes them and finishes the writer (aborts it on error).
 * Gives exactly the tensors of adapt_run_params (test: tests/t_adapt.sh). */
#include "model/safetensors.h"
int adapt_stream(const AdaptRule *rules, int n, const AdaptOptions *o, const StReader *a, const StReader *b, StWriter *w);
#endif
