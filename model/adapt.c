/* adapt.c: the adaptation plan (see adapt.h; spec 3). */
#include "model/adapt.h"
#include "model/rng.h"
#include "model/util.h"
#include <string.h>

void adapt_options_default(AdaptOptions *o) {
  memset(o, 0, sizeof *o);
  o->cross_init = -1;
  o->cross_std = 0.02f;
  o->seed = 1234;
}

int adapt_make_config(const ModelConfig *a, const ModelConfig *b, const AdaptOptions *o, ModelConfig *out) {
  if (a->kind != MODEL_GEMMA2) return t5g_error("%s: the encoder source must be a Gemma 2 (model_type gemma2) checkpoint", a->name);
  if (b->kind != MODEL_GEMMA2) return t5g_error("%s: the decoder source must be a Gemma 2 (model_type gemma2) checkpoint", b->name);
  if (a->dec.vocab_size != b->dec.vocab_size)
    return t5g_error("%s and %s: vocab_size differs (%d vs %d); encoder and decoder must share the tokenizer",
                     a->name, b->name, a->dec.vocab_size, b->dec.vocab_size);
  memset(out, 0, sizeof *out);
  out->kind = MODEL_T5GEMMA;
  out->enc = a->dec;
  out->enc.cross_attention_hidden_size = 0;
  out->dec = b->dec;
  out->dec.cross_attention_hidden_size = a->dec.hidden_size;
  out->pad_token_id = b->pad_token_id;
  out->eos_token_id = b->eos_token_id;
  out->bos_token_id = b->bos_token_id;
  out->tie_word_embeddings = 1;
  out->encoder_causal = o ? o->encoder_causal : 0;
  out->embed_scale_bf16 = b->embed_scale_bf16;
  if (strcmp(a->name, b->name) == 0) snprintf(out->name, sizeof out->name, "t5gemma(%.50s)", a->name);
  else snprintf(out->name, sizeof out->name, "t5gemma(%.26s+%.26s)", a->name, b->name);
  return 0;
}

static void rule(AdaptRule *r, const char *target, AdaptRuleKind kind, int source, const char *src, int ndim, int64_t d0, int64_t d1) {
  memset(r, 0, sizeof *r);
  snprintf(r->target, sizeof r->target, "%s", target);
  r->kind = kind;
  r->source = source;
  if (src) snprintf(r->src_name, sizeof r->src_name, "%s", src);
  r->ndim = ndim;
  r->shape[0] = d0;
  r->shape[1] = ndim > 1 ? d1 : 0;
}

int adapt_plan(const ModelConfig *t, const ModelConfig *a, const ModelConfig *b, const AdaptOptions *o,
               AdaptRule **rules_out, int *n_out, int *warmup_cross) {
  if (t->kind != MODEL_T5GEMMA) return t5g_error("%s: adaptation target must be a T5Gemma config", t->name);
  const StackConfig *E = &t->enc, *D = &t->dec;
  if (a->dec.hidden_size != E->hidden_size || a->dec.num_hidden_layers != E->num_hidden_layers ||
      a->dec.intermediate_size != E->intermediate_size || a->dec.num_attention_heads != E->num_attention_heads ||
      a->dec.num_key_value_heads != E->num_key_value_heads || a->dec.head_dim != E->head_dim || a->dec.vocab_size != E->vocab_size)
    return t5g_error("%s: encoder source %s does not have the encoder's dimensions", t->name, a->name);
  if (b->dec.hidden_size != D->hidden_size || b->dec.num_hidden_layers != D->num_hidden_layers ||
      b->dec.intermediate_size != D->intermediate_size || b->dec.num_attention_heads != D->num_attention_heads ||
      b->dec.num_key_value_heads != D->num_key_value_heads || b->dec.head_dim != D->head_dim || b->dec.vocab_size != D->vocab_size)
    return t5g_error("%s: decoder source %s does not have the decoder's dimensions", t->name, b->name);
  int cross_random = o->cross_init == 1 || (o->cross_init == -1 && E->hidden_size != D->hidden_size);
  if (!cross_random && E->hidden_size != D->hidden_size)
    return t5g_error("cross_init=copy needs equal encoder and decoder hidden sizes (found %d and %d); use random cross-attention for unequal pairs",
                     E->hidden_size, D->hidden_size);
  int cap = 8 + 20 * (E->num_hidden_layers + D->num_hidden_layers);
  AdaptRule *R = t5g_calloc(cap, sizeof *R);
  int n = 0;
  char tn[192], sn[192];
  for (int side = 0; side < 2; side++) {
    const StackConfig *S = side ? D : E;
    const char *pre = side ? "model.decoder." : "model.encoder.";
    int d = S->hidden_size, F = S->intermediate_size, qd = S->num_attention_heads * S->head_dim, kd = S->num_key_value_heads * S->head_dim;
    /* registration order of model.c: embed, layers..., norm */
    snprintf(tn, sizeof tn, "%sembed_tokens.weight", pre);
    rule(&R[n++], tn, RULE_COPY, side, "model.embed_tokens.weight", 2, S->vocab_size, d);
    for (int i = 0; i < S->num_hidden_layers; i++) {
#define COPY2(tsuf, ssuf, a0, a1) do { snprintf(tn, sizeof tn, "%slayers.%d.%s", pre, i, tsuf); snprintf(sn, sizeof sn, "model.layers.%d.%s", i, ssuf); rule(&R[n++], tn, RULE_COPY, side, sn, 2, a0, a1); } while (0)
#define COPY1(tsuf, ssuf) do { snprintf(tn, sizeof tn, "%slayers.%d.%s", pre, i, tsuf); snprintf(sn, sizeof sn, "model.layers.%d.%s", i, ssuf); rule(&R[n++], tn, RULE_COPY, side, sn, 1, d, 0); } while (0)
      COPY2("self_attn.q_proj.weight", "self_attn.q_proj.weight", qd, d);
      COPY2("self_attn.k_proj.weight", "self_attn.k_proj.weight", kd, d);
      COPY2("self_attn.v_proj.weight", "self_attn.v_proj.weight", kd, d);
      COPY2("self_attn.o_proj.weight", "self_attn.o_proj.weight", d, qd);
      if (side == 1) {
        int de = E->hidden_size;
        if (cross_random) {
          const char *nm[4] = {"q", "k", "v", "o"};
          int64_t s0[4] = {qd, kd, kd, d}, s1[4] = {d, de, de, qd};
          for (int j = 0; j < 4; j++) {
            snprintf(tn, sizeof tn, "%slayers.%d.cross_attn.%s_proj.weight", pre, i, nm[j]);
            rule(&R[n++], tn, RULE_RANDOM, 1, NULL, 2, s0[j], s1[j]);
          }
        } else {
          COPY2("cross_attn.q_proj.weight", "self_attn.q_proj.weight", qd, d);
          COPY2("cross_attn.k_proj.weight", "self_attn.k_proj.weight", kd, de);
          COPY2("cross_attn.v_proj.weight", "self_attn.v_proj.weight", kd, de);
          COPY2("cross_attn.o_proj.weight", "self_attn.o_proj.weight", d, qd);
        }
      }
      COPY2("mlp.gate_proj.weight", "mlp.gate_proj.weight", F, d);
      COPY2("mlp.up_proj.weight", "mlp.up_proj.weight", F, d);
      COPY2("mlp.down_proj.weight", "mlp.down_proj.weight", d, F);
      COPY1("pre_self_attn_layernorm.weight", "input_layernorm.weight");
      COPY1("post_self_attn_layernorm.weight", "post_attention_layernorm.weight");
      if (side == 1) {
        if (o->cross_norm_zero) {
          snprintf(tn, sizeof tn, "%slayers.%d.pre_cross_attn_layernorm.weight", pre, i);
          rule(&R[n++], tn, RULE_ZERO, 1, NULL, 1, d, 0);
          snprintf(tn, sizeof tn, "%slayers.%d.post_cross_attn_layernorm.weight", pre, i);
          rule(&R[n++], tn, RULE_ZERO, 1, NULL, 1, d, 0);
        } else {
          COPY1("pre_cross_attn_layernorm.weight", "input_layernorm.weight");
          COPY1("post_cross_attn_layernorm.weight", "post_attention_layernorm.weight");
        }
      }
      COPY1("pre_feedforward_layernorm.weight", "pre_feedforward_layernorm.weight");
      COPY1("post_feedforward_layernorm.weight", "post_feedforward_layernorm.weight");
#undef COPY1
#undef COPY2
    }
    snprintf(tn, sizeof tn, "%snorm.weight", pre);
    rule(&R[n++], tn, RULE_COPY, side, "model.norm.weight", 1, d, 0);
  }
  T5G_ASSERT(n <= cap);
  *rules_out = R;
  *n_out = n;
  if (warmup_cross) *warmup_cross = cross_random;
  return 0;
}

void adapt_fill_generated(const AdaptRule *r, const AdaptOptions *o, float *dst) {
  int64_t n = r->shape[0] * (r->ndim > 1 ? r->shape[1] : 1);
  if (r->kind == RULE_ZERO) { memset(dst, 0, n * sizeof(float)); return; }
  Rng g; rng_seed(&g, o->seed ^ t5g_fnv1a64(r->target, strlen(r->target), T5G_FNV_SEED));
  for (int64_t j = 0; j < n; j++) dst[j] = (float)(o->cross_std * rng_normal(&g));
}

int adapt_run_params(const AdaptRule *rules, int n, const AdaptOptions *o, ParamStore *a, ParamStore *b, ParamStore *target) {
  for (int i = 0; i < n; i++) {
    const AdaptRule *r = &rules[i];
    Tensor *dst = params_get(target, r->target);
    if (!dst) return t5g_error("adapt: target model has no tensor %s", r->target);
    int64_t want = r->shape[0] * (r->ndim > 1 ? r->shape[1] : 1);
    if (dst->n != want) return t5g_error("adapt: %s has %lld elements, the plan expects %lld", r->target, (long long)dst->n, (long long)want);
    if (r->kind != RULE_COPY) { adapt_fill_generated(r, o, dst->data); continue; }
    ParamStore *src = r->source ? b : a;
    Tensor *s = params_get(src, r->src_name);
    if (!s) return t5g_error("adapt: source checkpoint has no tensor %s (needed for %s)", r->src_name, r->target);
    if (s->n != dst->n) return t5g_error("adapt: %s has %lld elements, %s needs %lld", r->src_name, (long long)s->n, r->target, (long long)dst->n);
    memcpy(dst->data, s->data, dst->n * sizeof(float));
  }
  return 0;
}

typedef struct StreamFill {
  const AdaptRule *r;
  const AdaptOptions *o;
  const StTensor *src;   /* RULE_COPY */
  const StReader *rd;    /* its reader */
  Rng rng;               /* RULE_RANDOM: advanced in element order */
  int64_t next;          /* next expected offset (random streams are sequential) */
} StreamFill;

static int stream_fill(void *ctx, int64_t off, int64_t n, float *out) {
  StreamFill *f = ctx;
  if (f->r->kind == RULE_COPY) {
    int es = st_dtype_size(f->src->dtype);
    st_convert_to_f32(f->src->dtype, (const char *)f->src->data + off * es, out, n);
    st_release(f->rd, f->src, off * es, n * es);   /* read once: keep resident memory at a chunk */
    return 0;
  }
  if (f->r->kind == RULE_ZERO) { memset(out, 0, (size_t)n * sizeof(float)); return 0; }
  T5G_ASSERT(off == f->next);
  for (int64_t j = 0; j < n; j++) out[j] = (float)(f->o->cross_std * rng_normal(&f->rng));
  f->next += n;
  return 0;
}

int adapt_stream(const AdaptRule *rules, int n, const AdaptOptions *o, const StReader *a, const StReader *b, StWriter *w) {
  for (int i = 0; i < n; i++) {
    const AdaptRule *r = &rules[i];
    if (r->kind == RULE_COPY) {
      const StReader *src = r->source ? b : a;
      const StTensor *t = st_find(src, r->src_name);
      if (!t) { st_writer_abort(w); return t5g_error("%s: no tensor %s (needed for %s)", src->source, r->src_name, r->target); }
      int64_t want = r->shape[0] * (r->ndim > 1 ? r->shape[1] : 1);
      if (t->numel != want || t->dtype == ST_I32) {
        char sb[64];
        st_writer_abort(w);
        return t5g_error("%s: tensor %s has shape %s (%s), %s needs %lld float elements", st_tensor_file(src, t), r->src_name,
                         st_shape_str(t->ndim, t->shape, sb, sizeof sb), st_dtype_name(t->dtype), r->target, (long long)want);
      }
    }
    if (st_writer_plan(w, r->target, r->ndim, r->shape) != 0) { st_writer_abort(w); return -1; }
  }
  for (int i = 0; i < n; i++) {
    const AdaptRule *r = &rules[i];
    StreamFill f = {r, o, NULL, NULL, {0}, 0};
    if (r->kind == RULE_COPY) { f.rd = r->source ? b : a; f.src = st_find(f.rd, r->src_name); }
    if (r->kind == RULE_RANDOM) rng_seed(&f.rng, o->seed ^ t5g_fnv1a64(r->target, strlen(r->target), T5G_FNV_SEED));
    if (st_writer_write_fn(w, r->target, stream_fill, &f) != 0) { st_writer_abort(w); return -1; }
  }
  return st_writer_finish(w);
}
