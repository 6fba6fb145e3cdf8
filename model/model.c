/* model.c: Gemma 2 and T5Gemma forward passes on the engine (see model.h; spec 1-2). */
#include "model/model.h"
#include "model/hf_io.h"
#include "model/rng.h"
#include "model/weights_bf16.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static float bf16_round(float x) {
  uint32_t u; memcpy(&u, &x, 4);
  u += 0x7fff + ((u >> 16) & 1);
  u &= 0xffff0000u;
  float y; memcpy(&y, &u, 4);
  return y;
}

static float embed_scale(const StackConfig *s, int bf16) {
  float c = sqrtf((float)s->hidden_size);
  return bf16 ? bf16_round(c) : c;
}

const char *model_stack_prefix(const Model *m, int encoder) {
  if (m->cfg.kind == MODEL_GEMMA2) return "model.";
  return encoder ? "model.encoder." : "model.decoder.";
}

static Tensor *add_param(Model *m, const char *prefix, const char *name, int ndim, int64_t d0, int64_t d1, ParamGroup grp, int cross) {
  char full[256];
  snprintf(full, sizeof full, "%s%s", prefix, name);
  int64_t shape[2] = {d0, d1};
  int i = params_add(&m->ps, full, ndim, shape, grp);
  m->ps.e[i].cross_attn = cross;
  return (Tensor *)(intptr_t)(i + 1); /* index placeholder, resolved after finalize */
}

#define RESOLVE(m, p) ((p) = (p) ? &(m)->ps.e[(intptr_t)(p) - 1].t : NULL)

static void register_stack(Model *m, StackParams *sp, const StackConfig *s, int is_encoder, int has_cross, int enc_width) {
  const char *pre = model_stack_prefix(m, is_encoder);
  int gemma2 = m->cfg.kind == MODEL_GEMMA2;
  int d = s->hidden_size, F = s->intermediate_size, qd = s->num_attention_heads * s->head_dim, kd = s->num_key_value_heads * s->head_dim;
  sp->cfg = s;
  sp->is_encoder = is_encoder;
  sp->has_cross = has_cross;
  sp->embed_scale = embed_scale(s, m->cfg.embed_scale_bf16);
  sp->embed = add_param(m, pre, "embed_tokens.weight", 2, s->vocab_size, d, PG_EMBED, 0);
  sp->layers = t5g_calloc(s->num_hidden_layers, sizeof(LayerParams));
  char n[160];
  for (int i = 0; i < s->num_hidden_layers; i++) {
    LayerParams *L = &sp->layers[i];
#define P2(field, suffix, a, b, grp, cross) do { snprintf(n, sizeof n, "layers.%d.%s", i, suffix); L->field = add_param(m, pre, n, 2, a, b, grp, cross); } while (0)
#define P1(field, suffix, a, cross) do { snprintf(n, sizeof n, "layers.%d.%s", i, suffix); L->field = add_param(m, pre, n, 1, a, 0, PG_NORM, cross); } while (0)
    P2(q, "self_attn.q_proj.weight", qd, d, PG_MATRIX, 0);
    P2(k, "self_attn.k_proj.weight", kd, d, PG_MATRIX, 0);
    P2(v, "self_attn.v_proj.weight", kd, d, PG_MATRIX, 0);
    P2(o, "self_attn.o_proj.weight", d, qd, PG_MATRIX, 0);
    if (has_cross) {
      P2(xq, "cross_attn.q_proj.weight", qd, d, PG_MATRIX, 1);
      P2(xk, "cross_attn.k_proj.weight", kd, enc_width, PG_MATRIX, 1);
      P2(xv, "cross_attn.v_proj.weight", kd, enc_width, PG_MATRIX, 1);
      P2(xo, "cross_attn.o_proj.weight", d, qd, PG_MATRIX, 1);
    }
    P2(gate, "mlp.gate_proj.weight", F, d, PG_MATRIX, 0);
    P2(up, "mlp.up_proj.weight", F, d, PG_MATRIX, 0);
    P2(down, "mlp.down_proj.weight", d, F, PG_MATRIX, 0);
    if (gemma2) {
      P1(ln_pre_attn, "input_layernorm.weight", d, 0);
      P1(ln_post_attn, "post_attention_layernorm.weight", d, 0);
    } else {
      P1(ln_pre_attn, "pre_self_attn_layernorm.weight", d, 0);
      P1(ln_post_attn, "post_self_attn_layernorm.weight", d, 0);
    }
    if (has_cross) {
      P1(ln_pre_cross, "pre_cross_attn_layernorm.weight", d, 1);
      P1(ln_post_cross, "post_cross_attn_layernorm.weight", d, 1);
    }
    P1(ln_pre_ffw, "pre_feedforward_layernorm.weight", d, 0);
    P1(ln_post_ffw, "post_feedforward_layernorm.weight", d, 0);
#undef P1
#undef P2
  }
  sp->final_norm = add_param(m, pre, "norm.weight", 1, d, 0, PG_NORM, 0);
}

static void resolve_stack(Model *m, StackParams *sp) {
  RESOLVE(m, sp->embed);
  RESOLVE(m, sp->final_norm);
  for (int i = 0; i < sp->cfg->num_hidden_layers; i++) {
    LayerParams *L = &sp->layers[i];
    RESOLVE(m, L->q); RESOLVE(m, L->k); RESOLVE(m, L->v); RESOLVE(m, L->o);
    RESOLVE(m, L->xq); RESOLVE(m, L->xk); RESOLVE(m, L->xv); RESOLVE(m, L->xo);
    RESOLVE(m, L->gate); RESOLVE(m, L->up); RESOLVE(m, L->down);
    RESOLVE(m, L->ln_pre_attn); RESOLVE(m, L->ln_post_attn);
    RESOLVE(m, L->ln_pre_cross); RESOLVE(m, L->ln_post_cross);
    RESOLVE(m, L->ln_pre_ffw); RESOLVE(m, L->ln_post_ffw);
  }
  /* layer spans in the flat buffer (registration keeps each layer contiguous) */
  sp->layer_lo = t5g_calloc(sp->cfg->num_hidden_layers, sizeof(int64_t));
  sp->layer_hi = t5g_calloc(sp->cfg->num_hidden_layers, sizeof(int64_t));
  for (int i = 0; i < sp->cfg->num_hidden_layers; i++) {
    LayerParams *L = &sp->layers[i];
    Tensor *ts[] = {L->q, L->k, L->v, L->o, L->xq, L->xk, L->xv, L->xo, L->gate, L->up, L->down,
                    L->ln_pre_attn, L->ln_post_attn, L->ln_pre_cross, L->ln_post_cross, L->ln_pre_ffw, L->ln_post_ffw};
    int64_t lo = INT64_MAX, hi = 0;
    for (size_t j = 0; j < sizeof ts / sizeof ts[0]; j++) {
      if (!ts[j] || !ts[j]->data) continue;
      int64_t o = ts[j]->data - m->ps.data;
      if (o < lo) lo = o;
      if (o + ts[j]->n > hi) hi = o + ts[j]->n;
    }
    sp->layer_lo[i] = lo; sp->layer_hi[i] = hi;
  }
}

int model_plan(Model *m, const ModelConfig *cfg) {
  memset(m, 0, sizeof *m);
  if (config_validate(cfg, cfg->name[0] ? cfg->name : "model config") != 0) return -1;
  m->cfg = *cfg;
  params_init(&m->ps);
  if (cfg->kind == MODEL_T5GEMMA) {
    register_stack(m, &m->enc, &m->cfg.enc, 1, 0, 0);
    register_stack(m, &m->dec, &m->cfg.dec, 0, 1, m->cfg.enc.hidden_size);
  } else {
    register_stack(m, &m->dec, &m->cfg.dec, 0, 0, 0);
  }
  return 0;
}

void model_resolve(Model *m) {
  if (m->cfg.kind == MODEL_T5GEMMA) resolve_stack(m, &m->enc);
  resolve_stack(m, &m->dec);
}

int model_init(Model *m, const ModelConfig *cfg) {
  if (model_plan(m, cfg) != 0) return -1;
  params_finalize(&m->ps);
  model_resolve(m);
  return 0;
}

void model_free(Model *m) {
  wbf16_free(m->dec.bf16);
  free(m->enc.layers); free(m->enc.layer_lo); free(m->enc.layer_hi);
  free(m->dec.layers); free(m->dec.layer_lo); free(m->dec.layer_hi);
  params_free(&m->ps);
  memset(m, 0, sizeof *m);
}

float model_init_std(const Model *m, const ParamEntry *e) {
  if (e->group == PG_NORM) return 0.0f;
  const StackConfig *s = strstr(e->name, "encoder.") ? &m->cfg.enc : &m->cfg.dec;
  return s->initializer_range > 0 ? s->initializer_range : 0.02f;
}

void model_init_rng(const ParamEntry *e, uint64_t seed, Rng *r) {
  /* one stream per tensor, seeded by (seed, name): independent of registration order */
  rng_seed(r, seed ^ t5g_fnv1a64(e->name, strlen(e->name), T5G_FNV_SEED));
}

void model_init_random(Model *m, uint64_t seed) {
  for (int i = 0; i < m->ps.n; i++) {
    ParamEntry *e = &m->ps.e[i];
    float std = model_init_std(m, e);
    if (std == 0) { memset(e->t.data, 0, e->t.n * sizeof(float)); continue; }
    Rng r; model_init_rng(e, seed, &r);
    for (int64_t j = 0; j < e->t.n; j++) e->t.data[j] = (float)(std * rng_normal(&r));
  }
}

void model_set_cross_attn_only(Model *m, int on) {
  for (int i = 0; i < m->ps.n; i++) params_set_frozen(&m->ps, i, on ? !m->ps.e[i].cross_attn : 0);
}

/* x [B,T,d] -> attention sub-block output [B,T,d] (before the post-norm). */
static Tensor *self_attention(Graph *g, const StackParams *sp, const LayerParams *L, int layer, Tensor *a,
                              const uint8_t *mask, const int32_t *pos, const int32_t *seg, int B, int T, int causal) {
  const StackConfig *s = sp->cfg;
  int H = s->num_attention_heads, K = s->num_key_value_heads, h = s->head_dim;
  Tensor *q = op_linear(g, a, L->q), *k = op_linear(g, a, L->k), *v = op_linear(g, a, L->v);
  int64_t qs[4] = {B, T, H, h}, ks[4] = {B, T, K, h};
  q = op_rope(g, tensor_view(g, q, 4, qs), pos, s->rope_theta);
  k = op_rope(g, tensor_view(g, k, 4, ks), pos, s->rope_theta);
  v = tensor_view(g, v, 4, ks);
  AttnMask am = {0};
  am.causal = causal;
  am.window = s->layer_sliding[layer] ? s->sliding_window : 0;
  am.key_valid = mask;
  am.query_valid = mask;
  am.q_seg = seg; am.k_seg = seg;
  Tensor *o = op_attention(g, q, k, v, &am, 1.0f / sqrtf(s->query_pre_attn_scalar), s->attn_logit_softcapping);
  return op_linear(g, o, L->o);
}

static Tensor *cross_attention(Graph *g, const StackParams *sp, const LayerParams *L, Tensor *a, const uint8_t *mask,
                               const int32_t *seg, int B, int T, Tensor *enc_out, const uint8_t *enc_mask,
                               const int32_t *enc_seg, int Te) {
  const StackConfig *s = sp->cfg;
  int H = s->num_attention_heads, K = s->num_key_value_heads, h = s->head_dim;
  Tensor *q = op_linear(g, a, L->xq), *k = op_linear(g, enc_out, L->xk), *v = op_linear(g, enc_out, L->xv);
  int64_t qs[4] = {B, T, H, h}, ks[4] = {B, Te, K, h};
  q = tensor_view(g, q, 4, qs);
  k = tensor_view(g, k, 4, ks);
  v = tensor_view(g, v, 4, ks);
  AttnMask am = {0};             /* no RoPE, no window, not causal: spec 2.3 */
  am.key_valid = enc_mask;
  am.query_valid = mask;
  if (seg && enc_seg) { am.q_seg = seg; am.k_seg = enc_seg; }
  Tensor *o = op_attention(g, q, k, v, &am, 1.0f / sqrtf(s->query_pre_attn_scalar), s->attn_logit_softcapping);
  return op_linear(g, o, L->xo);
}

/* Everything one layer needs besides its input. */
typedef struct LayerArgs {
  const StackParams *sp;
  int layer;
  const uint8_t *mask;
  const int32_t *pos, *seg;
  int B, T, causal;
  Tensor *enc_out;
  const uint8_t *enc_mask;
  const int32_t *enc_seg;
  int Te;
} LayerArgs;

/* One Gemma 2 / T5Gemma layer (spec 1.2, 2.2, 2.3): sandwich-normed self-attention,
 * cross-attention (decoder), GeGLU MLP, each added to the residual stream. */
static Tensor *layer_forward(Graph *g, const LayerArgs *la, Tensor *x, Tensor *enc_out) {
  const StackParams *sp = la->sp;
  const StackConfig *s = sp->cfg;
  const LayerParams *L = &sp->layers[la->layer];
  float eps = s->rms_norm_eps, p = s->dropout_rate;
  Tensor *a = op_rmsnorm(g, x, L->ln_pre_attn, eps);
  a = self_attention(g, sp, L, la->layer, a, la->mask, la->pos, la->seg, la->B, la->T, la->causal);
  a = op_dropout(g, op_rmsnorm(g, a, L->ln_post_attn, eps), p);
  x = op_add(g, x, a);
  if (sp->has_cross) {
    Tensor *c = op_rmsnorm(g, x, L->ln_pre_cross, eps);
    c = cross_attention(g, sp, L, c, la->mask, la->seg, la->B, la->T, enc_out, la->enc_mask, la->enc_seg, la->Te);
    c = op_dropout(g, op_rmsnorm(g, c, L->ln_post_cross, eps), p);
    x = op_add(g, x, c);
  }
  Tensor *f = op_rmsnorm(g, x, L->ln_pre_ffw, eps);
  f = op_geglu(g, op_linear(g, f, L->gate), op_linear(g, f, L->up));
  f = op_linear(g, f, L->down);
  f = op_dropout(g, op_rmsnorm(g, f, L->ln_post_ffw, eps), p);
  return op_add(g, x, f);
}

/* ---- Activation recomputation (checkpointing) ---------------------------------------------
 * Forward runs the layer without recording and keeps only its output; one tape node stands for
 * the layer. Its backward re-runs the layer with recording on (same dropout masks: the dropout
 * counter is restored), back-propagates the layer alone (its gradients land in the inputs' own
 * buffers, so results are bit-identical to running without recomputation), and gives the
 * layer's activations back to the arena. */
typedef struct RecomputeCtx {
  Graph *g;
  LayerArgs la;
  Tensor *x_in, *x_out, *enc_out;
  uint64_t dropout_calls;
} RecomputeCtx;

static int layer_has_trainable(const LayerParams *L) {
  Tensor *ts[] = {L->q, L->k, L->v, L->o, L->xq, L->xk, L->xv, L->xo, L->gate, L->up, L->down,
                  L->ln_pre_attn, L->ln_post_attn, L->ln_pre_cross, L->ln_post_cross, L->ln_pre_ffw, L->ln_post_ffw};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) if (ts[i] && ts[i]->requires_grad) return 1;
  return 0;
}

static void recompute_backward(void *p) {
  RecomputeCtx *c = p;
  Graph *g = c->g;
  if (!c->x_out->grad) return;
  /* the inputs' gradient buffers must exist below the mark: the recomputed layer's backward
   * accumulates into them directly, in the same order as without recomputation */
  if (c->x_in->requires_grad) tensor_grad(g, c->x_in);
  if (c->enc_out && c->enc_out->requires_grad) tensor_grad(g, c->enc_out);
  ArenaMark mk = arena_mark(g->arena);
  int saved_nodes = g->n_nodes;
  uint64_t saved_calls = g->dropout_calls;
  g->dropout_calls = c->dropout_calls;
  Tensor *y = layer_forward(g, &c->la, c->x_in, c->enc_out);
  g->dropout_calls = saved_calls;
  if (y->requires_grad) {
    float *dy = tensor_grad(g, y);
    memcpy(dy, c->x_out->grad, (size_t)y->n * sizeof(float));
    for (int i = g->n_nodes - 1; i >= saved_nodes; i--) {
      double t0 = g->profile ? t5g_now() : 0;
      g->nodes[i].backward(g->nodes[i].ctx);
      if (g->profile) g->prof_sec[g->nodes[i].kind] += t5g_now() - t0;
    }
  }
  g->n_nodes = saved_nodes;
  arena_release(g->arena, mk);
}

static Tensor *layer_forward_recompute(Graph *g, const LayerArgs *la, Tensor *x, Tensor *enc_out) {
  int needs = tensor_needs_grad(g, x) || tensor_needs_grad(g, enc_out) || (g->grad_enabled && layer_has_trainable(&la->sp->layers[la->layer]));
  if (!needs) return layer_forward(g, la, x, enc_out);
  Tensor *out = tensor_new(g, "layer_out", x->ndim, x->shape);
  uint64_t calls = g->dropout_calls;
  ArenaMark mk = arena_mark(g->arena);
  g->grad_enabled = 0;
  Tensor *y = layer_forward(g, la, x, enc_out);
  g->grad_enabled = 1;
  memcpy(out->data, y->data, (size_t)out->n * sizeof(float));
  arena_release(g->arena, mk);
  out->requires_grad = 1;
  RecomputeCtx *c = arena_alloc(g->arena, sizeof *c);
  c->g = g; c->la = *la; c->x_in = x; c->x_out = out; c->enc_out = enc_out; c->dropout_calls = calls;
  graph_record(g, recompute_backward, c, OPK_MATMUL);
  return out;
}

Tensor *stack_forward_ex(Graph *g, const StackParams *sp, const int32_t *ids, const uint8_t *mask,
                         const int32_t *pos, const int32_t *seg, int B, int T, int causal,
                         Tensor *enc_out, const uint8_t *enc_mask, const int32_t *enc_seg, int Te, int recompute) {
  const StackConfig *s = sp->cfg;
  int64_t shape[2] = {B, T};
  Tensor *x = sp->bf16 ? wbf16_embedding(g, sp, ids, 2, shape) : op_embedding(g, ids, 2, shape, sp->embed, sp->embed_scale);
  x = op_dropout(g, x, s->dropout_rate);
  LayerArgs la = {sp, 0, mask, pos, seg, B, T, causal, enc_out, enc_mask, enc_seg, Te};
  if (!g->grad_enabled) {
    /* No-grad (evaluation, scoring, a teacher): nothing is kept for backward, so each layer's
     * tensors go back to the arena as soon as its output is copied into one of two ping-pong
     * buffers; memory is one layer's activations plus two [B, T, d] buffers. */
    Tensor *buf[2] = {tensor_new(g, "layer_out", x->ndim, x->shape), tensor_new(g, "layer_out", x->ndim, x->shape)};
    for (int i = 0; i < s->num_hidden_layers; i++) {
      la.layer = i;
      if (sp->bf16) wbf16_layer(sp, &sp->layers[i]);   /* this layer's matrices in f32 */
      ArenaMark mk = arena_mark(g->arena);
      Tensor *y = layer_forward(g, &la, x, enc_out);
      Tensor *dst = buf[i & 1];
      memcpy(dst->data, y->data, (size_t)dst->n * sizeof(float));
      arena_release(g->arena, mk);
      x = dst;
    }
  } else {
    for (int i = 0; i < s->num_hidden_layers; i++) {
      la.layer = i;
      if (sp->layer_lo) graph_mark_params(g, sp->layer_lo[i], sp->layer_hi[i]);
      x = recompute ? layer_forward_recompute(g, &la, x, enc_out) : layer_forward(g, &la, x, enc_out);
    }
  }
  x = op_rmsnorm(g, x, sp->final_norm, s->rms_norm_eps);
  return op_dropout(g, x, s->dropout_rate);
}

Tensor *stack_forward(Graph *g, const StackParams *sp, const int32_t *ids, const uint8_t *mask,
                      const int32_t *pos, const int32_t *seg, int B, int T, int causal,
                      Tensor *enc_out, const uint8_t *enc_mask, const int32_t *enc_seg, int Te) {
  return stack_forward_ex(g, sp, ids, mask, pos, seg, B, T, causal, enc_out, enc_mask, enc_seg, Te, 0);
}

Tensor *model_hidden(Model *m, Graph *g, const Batch *b) {
  Tensor *enc_out = NULL;
  if (m->cfg.kind == MODEL_T5GEMMA) {
    T5G_ASSERT(b->Te > 0 && b->enc_ids);
    enc_out = stack_forward_ex(g, &m->enc, b->enc_ids, b->enc_mask, b->enc_pos, b->enc_seg, b->B, b->Te,
                               m->cfg.encoder_causal, NULL, NULL, NULL, 0, m->recompute);
  }
  Tensor *h = stack_forward_ex(g, &m->dec, b->dec_ids, b->dec_mask, b->dec_pos, b->dec_seg, b->B, b->Td, 1,
                               enc_out, b->enc_mask, b->enc_seg, b->Te, m->recompute);
  int64_t s2[2] = {(int64_t)b->B * b->Td, m->cfg.dec.hidden_size};
  return tensor_view(g, h, 2, s2);
}

Tensor *model_loss(Model *m, Graph *g, const Batch *b, float normalizer, LossStats *st,
                   float *row_nll, Tensor **dec_hidden) {
  Tensor *h = model_hidden(m, g, b);
  if (dec_hidden) *dec_hidden = h;
  return lm_head_ce(m, g, h, b->labels, normalizer > 0 ? normalizer : 1.0f, row_nll, st);
}

int model_load_dir(Model *m, const char *dir) {
  ModelConfig cfg;
  if (config_load(dir, &cfg) != 0) return -1;
  if (model_init(m, &cfg) != 0) return -1;
  if (hf_load_params(&m->ps, dir) != 0) { model_free(m); return -1; }
  return 0;
}
