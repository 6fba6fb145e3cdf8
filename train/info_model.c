/* info_model.c: the model part of `t5gemma info MODEL [--batch B] [--enc-len Te] [--dec-len Td]
 * [--ranks N] [--new-tokens N] [--teacher MODEL --teacher-dtype bf16|f32 --distill-topk K]`
 * (options parsed by train/info.c): a model's config, parameter counts, FLOPs per token and the
 * memory each command needs (model/memory.h), before anything is allocated. With --teacher (a
 * Gemma 2 preset, config.json or checkpoint directory) the training rows include a PrefixLM
 * distillation teacher (memory_train_distill; train config keys teacher, teacher_dtype,
 * distill_topk). */
#include "train/info.h"
#include "model/config.h"
#include "model/memory.h"
#include "model/runtime.h"
#include "model/util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void stack_line(const char *name, const StackConfig *s) {
  int nsl = 0;
  for (int i = 0; i < s->num_hidden_layers; i++) nsl += s->layer_sliding[i];
  printf("  %-8s layers %d (%d sliding, window %d), hidden %d, intermediate %d, heads %d, kv heads %d, head_dim %d, "
         "query_pre_attn_scalar %g, softcaps %g/%g, vocab %d\n",
         name, s->num_hidden_layers, nsl, s->sliding_window, s->hidden_size, s->intermediate_size, s->num_attention_heads,
         s->num_key_value_heads, s->head_dim, s->query_pre_attn_scalar, s->attn_logit_softcapping, s->final_logit_softcapping,
         s->vocab_size);
}

static const char *gb(int64_t b, char *buf) { snprintf(buf, 32, "%.2f GB", b / 1e9); return buf; }

static void mem_row(const char *what, MemEstimate m) {
  char a[32], b[32], c[32], d[32], e[32];
  printf("  %-34s %10s  (weights %s, grads %s, optimizer %s, activations %s)\n", what, gb(m.total, a), gb(m.weights, b),
         gb(m.grads, c), gb(m.optimizer, d), gb(m.activations, e));
}

int info_model_load(InfoOptions *o) {
  if (config_resolve(o->model, &o->cfg) != 0) return -1;
  if (!o->teacher) return 0;
  /* as train checks it (train.c setup_model) */
  if (config_resolve(o->teacher, &o->tcfg) != 0) return -1;
  if (o->cfg.kind != MODEL_T5GEMMA)
    return t5g_error("--teacher: distillation trains a T5Gemma student with objective prefixlm, but %s is a Gemma 2 model", o->model);
  if (o->tcfg.kind != MODEL_GEMMA2) return t5g_error("--teacher %s: the distillation teacher must be a Gemma 2 (decoder-only) model", o->teacher);
  if (o->tcfg.dec.vocab_size != o->cfg.dec.vocab_size)
    return t5g_error("--teacher %s: vocab_size %d differs from the student's %d", o->teacher, o->tcfg.dec.vocab_size, o->cfg.dec.vocab_size);
  return 0;
}

void info_model_print(const InfoOptions *o) {
  const ModelConfig *c = &o->cfg;
  const char *model = o->model;
  int B = o->batch, Te = o->enc_len, Td = o->dec_len, topk = o->distill_topk, teacher_bf16 = o->teacher_bf16;
  int encdec = c->kind == MODEL_T5GEMMA;
  if (!encdec) Te = 0;
  const ModelConfig *tp = o->teacher ? &o->tcfg : NULL;
  printf("\nmodel:          %s (%s)\n", model, encdec ? "T5Gemma encoder-decoder, T5GemmaForConditionalGeneration" : "Gemma 2 decoder-only, Gemma2ForCausalLM");
  if (encdec) { stack_line("encoder", &c->enc); stack_line("decoder", &c->dec); printf("  cross-attention k/v width %d, encoder %s\n", c->dec.cross_attention_hidden_size, c->encoder_causal ? "causal (ablation)" : "bidirectional"); }
  else stack_line("decoder", &c->dec);
  ParamCounts pc = config_param_counts(c);
  char n1[32], n2[32], n3[32], n4[32];
  printf("parameters:     %s total (%lld)", t5g_fmt_count((double)pc.total, n1, sizeof n1), (long long)pc.total);
  if (encdec) printf(" = encoder %s (embedding %s) + decoder %s (embedding %s, tied LM head)\n",
                     t5g_fmt_count((double)(pc.enc_body + pc.enc_embed), n1, sizeof n1), t5g_fmt_count((double)pc.enc_embed, n2, sizeof n2),
                     t5g_fmt_count((double)(pc.dec_body + pc.dec_embed), n3, sizeof n3), t5g_fmt_count((double)pc.dec_embed, n4, sizeof n4));
  else printf(" (embedding %s, tied LM head; non-embedding %s)\n", t5g_fmt_count((double)pc.dec_embed, n2, sizeof n2),
              t5g_fmt_count((double)pc.dec_body, n3, sizeof n3));
  double fe = config_flops_per_example(c, Te, Td);
  printf("forward FLOPs:  %.3f GFLOP per example of %d%s tokens = %.2f MFLOP per token (training: x3)\n",
         fe / 1e9, Te + Td, encdec ? " (encoder + decoder)" : "", fe / (Te + Td) / 1e6);
  char lens[64];
  if (encdec) snprintf(lens, sizeof lens, "batch %d x (%d + %d tokens)", B, Te, Td);
  else snprintf(lens, sizeof lens, "batch %d x %d tokens", B, Td);
  printf("memory (predicted; %s; this machine has %.1f GB available):\n", lens, t5g_mem_available() / 1e9);
  if (encdec) mem_row("adapt (streamed)", memory_adapt(c));
  mem_row("score / eval, f32 weights", memory_infer(c, B, Te, Td, 0));
  mem_row("score / eval, bf16 weights", memory_infer(c, B, Te, Td, 1));
  /* (h14) cached generation: B prompts of Te (T5Gemma encoder input) or Td (Gemma 2) tokens */
  char gw[64];
  snprintf(gw, sizeof gw, "generate (%d new tokens), f32", o->new_tokens);
  mem_row(gw, memory_generate(c, B, encdec ? Te : Td, o->new_tokens, 0));
  snprintf(gw, sizeof gw, "generate (%d new tokens), bf16", o->new_tokens);
  mem_row(gw, memory_generate(c, B, encdec ? Te : Td, o->new_tokens, 1));
  if (tp) {
    char b1[32], b2[32];
    printf("  teacher %s: %s parameters, weights %s in bf16 (teacher_dtype=bf16) or %s in f32; the train rows below\n"
           "  include it with %s weights, %s soft targets\n", o->teacher, t5g_fmt_count((double)config_param_counts(tp).total, n1, sizeof n1),
           gb(memory_teacher_weights(tp, 1), b1), gb(memory_teacher_weights(tp, 0), b2), teacher_bf16 ? "bf16" : "f32",
           topk > 0 ? "top-k" : "full-distribution");
  }
  mem_row("train", memory_train_distill(c, B, Te, Td, 0, 1, 0, tp, teacher_bf16, topk));
  mem_row("train, recompute=1", memory_train_distill(c, B, Te, Td, 1, 1, 0, tp, teacher_bf16, topk));
  int rlist[4] = {2, 4, 8, 16};
  for (int k = 0; k < 4; k++) {
    int r = o->ranks > 0 ? o->ranks : rlist[k];
    char what[64];
    snprintf(what, sizeof what, "train per rank, %d ranks, zero1", r);
    mem_row(what, memory_train_distill(c, B, Te, Td, 1, r, 1, tp, teacher_bf16, topk));
    if (o->ranks > 0) break;
  }
  printf("score, eval and generate refuse to start when their need exceeds the available memory; their\n"
         "--weights auto keeps f32 weights when they fit, else bf16 (the halved weights above).\n");
}
