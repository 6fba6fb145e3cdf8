/* hf_io.h: load and save a ParamStore (model/params.h) as a Hugging Face checkpoint directory
 * (config.json + model.safetensors, or shards + model.safetensors.index.json).
 *
 * Tensor names are the HF names the ParamStore already uses (spec 1.7 for Gemma2ForCausalLM,
 * 2.7 for T5GemmaForConditionalGeneration), shapes PyTorch [out, in].
 *
 * Tied LM head. Gemma 2 ties lm_head.weight to model.embed_tokens.weight, T5Gemma ties
 * lm_head.out_proj.weight to model.decoder.embed_tokens.weight (spec 1.6, 2.4, 2.7;
 * transformers' _tied_weights_keys). transformers' save_pretrained drops tied duplicates and
 * re-ties them on load, so a checkpoint need not contain the head:
 *  - loading: a stored head is accepted and skipped when the store does not have it as an
 *    entry, after checking that it has the embedding's shape and the same values (an untied head
 *    would be a different model and is refused, naming the tensor);
 *  - saving: the head is not written (default), or written as a copy of the embedding when
 *    HfSaveOptions.write_lm_head is set (for readers that do not tie weights themselves).
 */
#ifndef T5G_HF_IO_H
#define T5G_HF_IO_H

#include "model/config.h"
#include "model/params.h"
#include "model/safetensors.h"

/* Fill every entry of ps (finalized) from the checkpoint at `path` (a directory, a
 * .safetensors file or an index.json; see st_open). Every entry must be present with exactly
 * its shape; stored BF16/F16/F32 are converted to f32. Errors (t5g_error, -1), each naming the
 * tensor and the file: a missing tensor; a shape mismatch (expected and found shapes); tensors in
 * the checkpoint that the store does not have (all listed, up to a limit), except the tied LM
 * head described above. Nothing is partially reported as success: on error the store's values
 * are unspecified. */
int hf_load_params(ParamStore *ps, const char *path);
/* (added by h14, issue 10) The same checks, then load(ctx, i, r, t) for every entry i in store
 * order with its stored tensor t (memory-mapped, valid during the call) instead of converting t
 * to f32 into ps->e[i].t.data: the caller decides where the values go (bf16 weights,
 * model/weights_bf16.h). ps need not be finalized. load returns 0, or -1 with t5g_error() to
 * stop (hf_load_params_with then returns -1). */
typedef int (*HfLoadFn)(void *ctx, int entry, const StReader *r, const StTensor *t);
int hf_load_params_with(ParamStore *ps, const char *path, HfLoadFn load, void *ctx);

typedef struct HfSaveOptions {
  StDtype dtype;              /* ST_F32 (default when opt is NULL), ST_BF16 or ST_F16 */
  int64_t max_shard_bytes;    /* <= 0: one model.safetensors; else shards of at most this much */
  int write_lm_head;          /* 1: also store the tied head as a copy of the (decoder) embedding */
} HfSaveOptions;

/* Write `dir`/config.json (config_to_json_dtype with torch_dtype naming opt->dtype) and the
 * safetensors file(s) holding every entry of ps, in store order, through the streaming writer
 * (no copy of the model is made). The config must validate, and the store's tied embedding (when
 * it has one) must have the config's [vocab_size, hidden_size]; each file is written to a
 * temporary name and renamed, config.json last. opt NULL = {ST_F32, 0, 0}. */
int hf_save(const ParamStore *ps, const ModelConfig *c, const char *dir, const HfSaveOptions *opt);

/* The tied LM-head tensor name and the embedding it copies, for a model kind
 * ("lm_head.weight" / "model.embed_tokens.weight" for gemma2, "lm_head.out_proj.weight" /
 * "model.decoder.embed_tokens.weight" for t5gemma). */
const char *hf_lm_head_name(ModelKind kind);
const char *hf_tied_embedding_name(ModelKind kind);

#endif
