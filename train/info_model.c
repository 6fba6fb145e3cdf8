/* info_model.c: `t5gemma info MODEL [--batch B] [--enc-len Te] [--dec-len Td] [--ranks N]
 * [--teacher MODEL --teacher-dtype bf16|f32 --distill-topk K]`:
 * a model's config, parameter counts, FLOPs per token and the memory each command needs
 * (model/memory.h), before anything is allocated. With --teacher (a Gemma 2 preset, config.json
 * or checkpoint directory) the training rows include a PrefixLM distillation teacher
 * (memory_train_distill; train config keys teacher, teacher_dtype, distill_topk). */
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

int info_model(const char *model, int argc, char **argv) {
  int B = 8, Te = 512, Td = 512, ranks = 0, new_tokens = 128, topk = 0, teacher_bf16 = 1;
  const char *teacher = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (i + 1 < argc && !strcmp(a, "--batch")) B = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(a, "--enc-len")) Te = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(a, "--dec-len")) Td = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(a, "--ranks")) ranks = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(a, "--new-tokens")) new_tokens = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(a, "--teacher")) teacher = argv[++i];
    else if (i + 1 < argc && !strcmp(a, "--distill-topk")) topk = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(a, "--teacher-dtype")) {
      const char *v = argv[++i];
      if (strcmp(v, "bf16") && strcmp(v, "f32")) t5g_fatal("info: --teacher-dtype expects bf16 or f32, found \"%s\"", v);
      teacher_bf16 = !strcmp(v, "bf16");
    }
    else t5g_fatal("info: unknown argument '%s' (options: --batch B --enc-len Te --dec-len Td --ranks N --new-tokens N "
                   "--teacher MODEL --teacher-dtype bf16|f32 --distill-topk K)", a);
  }
  if (B < 1 || Te < 1 || Td < 1 || new_tokens < 1) t5g_fatal("info: --batch, --enc-len, --dec-len and --new-tokens must be positive");
  if (topk < 0) t5g_fatal("info: --distill-topk must be >= 0 (0: the full distribution), found %d", topk);
  ModelConfig c;
  if (config_resolve(model, &c) != 0) t5g_die_last();
  int encdec = c.kind == MODEL_T5GEMMA;
  if (!encdec) Te = 0;
  ModelConfig tcfg;
  if (teacher) {   /* as train checks it (train.c setup_model) */
    if (config_resolve(teacher, &tcfg) != 0) t5g_die_last();
    if (!encdec) t5g_fatal("info: --teacher: distillation trains a T5Gemma student with objective prefixlm, but %s is a Gemma 2 model", model);
    if (tcfg.kind != MODEL_GEMMA2) t5g_fatal("info: --teacher %s: the distillation teacher must be a Gemma 2 (decoder-only) model", teacher);
    if (tcfg.dec.vocab_size != c.dec.vocab_size)
      t5g_fatal("info: --teacher %s: vocab_size %d differs from the student's %d", teacher, tcfg.dec.vocab_size, c.dec.vocab_size);
  }
  const ModelConfig *tp = teacher ? &tcfg : NULL;
  printf("\nmodel:          %s (%s)\n", model, encdec ? "T5Gemma encoder-decoder, T5GemmaForConditionalGeneration" : "Gemma 2 decoder-only, Gemma2ForCausalLM");
  if (encdec) { stack_line("encoder", &c.enc); stack_line("decoder", &c.dec); printf("  cross-attention k/v width %d, encoder %s\n", c.dec.cross_attention_hidden_size, c.encoder_causal ? "causal (ablation)" : "bidirectional"); }
  else stack_line("decoder", &c.dec);
  ParamCounts pc = config_param_counts(&c);
  printf("parameters:     %.4fB total", pc.total / 1e9);
  if (encdec) printf(" = encoder %.4fB (embedding %.4fB) + decoder %.4fB (embedding %.4fB, tied LM head)\n",
                     (pc.enc_body + pc.enc_embed) / 1e9, pc.enc_embed / 1e9, (pc.dec_body + pc.dec_embed) / 1e9, pc.dec_embed / 1e9);
  else printf(" (embedding %.4fB, tied LM head; non-embedding %.4fB)\n", pc.dec_embed / 1e9, pc.dec_body / 1e9);
  double fe = config_flops_per_example(&c, Te, Td);
  printf("forward FLOPs:  %.3f GFLOP per example of %d%s tokens = %.2f MFLOP per token (training: x3)\n",
         fe / 1e9, Te + Td, encdec ? " (encoder + decoder)" : "", fe / (Te + Td) / 1e6);
  char lens[64];
  if (encdec) snprintf(lens, sizeof lens, "batch %d x (%d + %d tokens)", B, Te, Td);
  else snprintf(lens, sizeof lens, "batch %d x %d tokens", B, Td);
  printf("memory (predicted; %s; this machine has %.1f GB available):\n", lens, t5g_mem_available() / 1e9);
  if (encdec) mem_row("adapt (streamed)", memory_adapt(&c));
  mem_row("score / eval, f32 weights", memory_infer(&c, B, Te, Td, 0));
  mem_row("score / eval, bf16 weights", memory_infer(&c, B, Te, Td, 1));
  /* (h14) cached generation: B prompts of Te (T5Gemma encoder input) or Td (Gemma 2) tokens */
  char gw[64];
  snprintf(gw, sizeof gw, "generate (%d new tokens), f32", new_tokens);
  mem_row(gw, memory_generate(&c, B, encdec ? Te : Td, new_tokens, 0));
  snprintf(gw, sizeof gw, "generate (%d new tokens), bf16", new_tokens);
  mem_row(gw, memory_generate(&c, B, encdec ? Te : Td, new_tokens, 1));
  if (teacher) {
    char b1[32], b2[32];
    printf("  teacher %s: %.4fB parameters, weights %s in bf16 (teacher_dtype=bf16) or %s in f32; the train rows below\n"
           "  include it with %s weights, %s soft targets\n", teacher, config_param_counts(&tcfg).total / 1e9,
           gb(memory_teacher_weights(&tcfg, 1), b1), gb(memory_teacher_weights(&tcfg, 0), b2), teacher_bf16 ? "bf16" : "f32",
           topk > 0 ? "top-k" : "full-distribution");
  }
  mem_row("train", memory_train_distill(&c, B, Te, Td, 0, 1, 0, tp, teacher_bf16, topk));
  mem_row("train, recompute=1", memory_train_distill(&c, B, Te, Td, 1, 1, 0, tp, teacher_bf16, topk));
  int rlist[4] = {2, 4, 8, 16};
  for (int k = 0; k < 4; k++) {
    int r = ranks > 0 ? ranks : rlist[k];
    char what[64];
    snprintf(what, sizeof what, "train per rank, %d ranks, zero1", r);
    mem_row(what, memory_train_distill(&c, B, Te, Td, 1, r, 1, tp, teacher_bf16, topk));
    if (ranks > 0) break;
  }
  printf("score, eval and generate refuse to start when their need exceeds the available memory; their\n"
         "--weights auto keeps f32 weights when they fit, else bf16 (the halved weights above).\n");
  return 0;
}
