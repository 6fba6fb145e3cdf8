/* config.h: Gemma 2 and T5Gemma model configurations (Hugging Face config.json semantics).
 *
 * One StackConfig describes one Gemma 2 stack: the decoder-only model (model_type "gemma2"),
 * or the encoder or decoder module of a T5Gemma model (model_type "t5gemma", whose config.json
 * nests "encoder" and "decoder" module configs, spec 2.8). Field names follow Hugging Face.
 * Layer i is sliding (local) when layer_types[i] == "sliding_attention"; the Gemma 2 default is
 * sliding on even i (spec 1.5).
 */
#ifndef T5G_CONFIG_H
#define T5G_CONFIG_H

#include <stdint.h>

#define T5G_MAX_LAYERS 128

typedef enum { MODEL_GEMMA2 = 1, MODEL_T5GEMMA = 2 } ModelKind;

typedef struct StackConfig {
  int vocab_size;
  int hidden_size;               /* d */
  int intermediate_size;         /* F */
  int num_hidden_layers;         /* L */
  int num_attention_heads;       /* H */
  int num_key_value_heads;       /* K */
  int head_dim;                  /* h */
  float query_pre_attn_scalar;   /* scores scaled by query_pre_attn_scalar^-1/2 */
  int sliding_window;            /* W */
  int max_position_embeddings;
  float rope_theta;
  float rms_norm_eps;
  float attn_logit_softcapping;  /* 0 = none */
  float final_logit_softcapping; /* 0 = none (used from the decoder / decoder-only stack) */
  char hidden_activation[32];    /* only "gelu_pytorch_tanh" is supported */
  unsigned char layer_sliding[T5G_MAX_LAYERS]; /* 1 = sliding_attention, 0 = full_attention */
  int cross_attention_hidden_size; /* T5Gemma decoder: encoder hidden size; else 0 */
  float dropout_rate;
  float attention_dropout;
  float initializer_range;       /* std of random init (0.02) */
} StackConfig;

typedef struct ModelConfig {
  ModelKind kind;
  StackConfig enc;               /* T5Gemma encoder (unused for gemma2) */
  StackConfig dec;               /* T5Gemma decoder, or the Gemma 2 decoder-only stack */
  int pad_token_id, eos_token_id, bos_token_id;
  int tie_word_embeddings;       /* must be 1 (Gemma ties the LM head to the (decoder) embedding) */
  /* t5gemma-specific choices (spec: unverified points; see README "Choices"):            */
  int encoder_causal;            /* 0 (default, paper): bidirectional encoder; 1: causal (ablation, spec 4.5) */
  int embed_scale_bf16;          /* 0 (default): sqrt(d) in f32; 1: rounded to bf16 as HF does in bf16 (spec 1.6) */
  char name[64];                 /* preset or directory name, for messages */
} ModelConfig;

/* Load a Hugging Face config.json (path to the file or to the directory holding it). Fills
 * defaults for absent optional fields exactly as transformers does, then validates. Errors name
 * the file and field, e.g. "configs/x.json: layer_types has 5 entries, num_hidden_layers is 4". */
int config_load(const char *path, ModelConfig *c);
/* Parse from a JSON string; `source` names it in messages. */
int config_parse(const char *json, const char *source, ModelConfig *c);
/* Resolve a model argument: an existing file or directory, else a preset name looked up in
 * configs/models/<name>.json next to the executable or in the current directory's configs/. */
int config_resolve(const char *name_or_path, ModelConfig *c);
/* Check consistency (heads divisible by KV heads, even head_dim, layer count, activation, ...). */
int config_validate(const ModelConfig *c, const char *source);
/* Write as a Hugging Face config.json (gemma2: Gemma2ForCausalLM; t5gemma:
 * T5GemmaForConditionalGeneration with nested encoder/decoder), atomically. */
int config_save(const ModelConfig *c, const char *path);
/* Serialise to a malloc'ed JSON string (same content as config_save). */
char *config_to_json(const ModelConfig *c);
/* (added by h3) The same with "torch_dtype" set to the given name ("float32", "bfloat16",
 * "float16"), for checkpoints whose weights are stored in that dtype (model/hf_io.c).
 * config_to_json writes "float32". */
char *config_to_json_dtype(const ModelConfig *c, const char *torch_dtype);

/* Fill a StackConfig with Gemma 2 defaults (2B sizes), as transformers' Gemma2Config does. */
void stack_config_defaults(StackConfig *s);

/* Parameter counts (in elements) for `t5gemma info` and memory planning. */
typedef struct ParamCounts {
  int64_t enc_embed, enc_body, dec_embed, dec_body, total;
} ParamCounts;
ParamCounts config_param_counts(const ModelConfig *c);
/* Forward FLOPs per token for one decoder (or encoder) token at sequence length T, counting
 * matmuls (2·m·n·k) and attention scores and values (causal or full). */
double config_flops_per_token(const StackConfig *s, int T, int causal, int cross_T);
/* (added by h3) Forward FLOPs of one whole example: Te encoder tokens (ignored for gemma2) and
 * Td decoder tokens, including the LM head of decoder tokens and the cross-attention K/V
 * projections of the encoder output (counted per encoder token). The accounting is written out
 * in model/config.c. */
double config_flops_per_example(const ModelConfig *c, int Te, int Td);
/* The same forward FLOPs in parts, for the work a step actually does: *enc the encoder (with the
 * cross-attention K/V projections of its output), *dec the decoder stack without the LM head,
 * *head the LM head per decoder token (2·V·d), *cross_w the forward FLOPs of the cross-attention
 * projections alone (q/o per decoder token, k/v per encoder token), which equal their weight
 * gradients' FLOPs. per_example = enc + dec + Td·head. Gemma 2: enc = cross_w = 0. */
void config_flops_parts(const ModelConfig *c, int Te, int Td, double *enc, double *dec, double *head, double *cross_w);

#endif
