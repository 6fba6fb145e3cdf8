/* generate.c: cached decoding, sampling and beam search (contract and math: eval/generate.h;
 * spec 1.2-1.6, 2.3, 2.4, 2.9, 5, 6, 7). */
#define _GNU_SOURCE
#include "eval/generate.h"
#include "data/tokenizer.h"
#include "model/runtime.h"
#include "model/weights_bf16.h"
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Configuration                                                                                */

void gen_config_default(GenConfig *c, const Model *m) {
  memset(c, 0, sizeof *c);
  c->max_new_tokens = 64;
  c->greedy = 1;
  c->temperature = 1.0f;
  c->top_k = 0;
  c->top_p = 1.0f;
  c->num_beams = 1;
  c->length_penalty = 1.0f;
  c->seed = 0;
  c->prefill_chunk = 64;
  c->bos_id = m ? m->cfg.bos_token_id : 2;
  c->n_stop = 0;
  if (m && m->cfg.eos_token_id >= 0) c->stop_ids[c->n_stop++] = m->cfg.eos_token_id;
}

int gen_config_check(const GenConfig *c) {
  if (c->max_new_tokens < 1) return t5g_error("generate: --max-new-tokens must be >= 1, got %d", c->max_new_tokens);
  if (!(c->temperature > 0)) return t5g_error("generate: --temperature must be > 0, got %g", c->temperature);
  if (!(c->top_p > 0 && c->top_p <= 1)) return t5g_error("generate: --top-p must be in (0, 1], got %g", c->top_p);
  if (c->min_new_tokens < 0 || c->min_new_tokens > c->max_new_tokens)
    return t5g_error("generate: --min-new-tokens must be in [0, --max-new-tokens = %d], got %d", c->max_new_tokens, c->min_new_tokens);
  if (c->top_k < 0) return t5g_error("generate: --top-k must be >= 0, got %d", c->top_k);
  if (c->num_beams < 1) return t5g_error("generate: --num-beams must be >= 1, got %d", c->num_beams);
  if (c->prefill_chunk < 1) return t5g_error("generate: prefill chunk must be >= 1, got %d", c->prefill_chunk);
  if (c->n_stop < 0 || c->n_stop > GEN_MAX_STOP) return t5g_error("generate: %d stop ids (at most %d)", c->n_stop, GEN_MAX_STOP);
  return 0;
}

void gen_stop_ids_from_tokenizer(GenConfig *c, const Tokenizer *t) {
  TokenizerSpecials sp = tokenizer_specials(t);
  c->n_stop = 0;
  if (sp.eos >= 0) c->stop_ids[c->n_stop++] = sp.eos;
  if (sp.end_of_turn >= 0) c->stop_ids[c->n_stop++] = sp.end_of_turn;
  if (sp.bos >= 0) c->bos_id = sp.bos;
}

void gen_output_free(GenOutput *o) {
  free(o->ids);
  free(o->logprobs);
  memset(o, 0, sizeof *o);
}

char *gen_decode_text(const Tokenizer *t, const int32_t *ids, int n) {
  int V = tokenizer_vocab_size(t), k = 0;
  int32_t *v = t5g_malloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
  for (int i = 0; i < n; i++) if (ids[i] >= 0 && ids[i] < V) v[k++] = ids[i];
  char *s = tokenizer_decode(t, v, k, 1);
  free(v);
  return s ? s : t5g_strdup("");
}

static int is_stop(const GenConfig *c, int32_t id) {
  for (int i = 0; i < c->n_stop; i++) if (c->stop_ids[i] == id) return 1;
  return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The cached decoder                                                                           */

struct DecodeState {
  Model *m;
  const StackParams *sp;
  const StackConfig *c;
  int rows, max_len, chunk, cap_tok;
  int L, d, H, K, G, hd, qd, kd, F, V;
  float scale, softcap, eps;
  int *R;                /* [L] ring size per layer */
  float **kc, **vc;      /* [L] -> [rows][R][kd] */
  float **kc2, **vc2;    /* spare buffers of the same size for decode_reorder (lazily allocated) */
  int *len;              /* [rows] */
  /* cross-attention (T5Gemma) */
  int has_cross, Te, n_src, enc_d;
  float **xk, **xv;      /* [L] -> [n_src][Te][kd] */
  uint8_t *xmask;        /* [n_src][Te] */
  int *src;              /* [rows] */
  /* scratch for cap_tok tokens */
  float *x, *a, *q, *k, *v, *o, *t, *gt, *up;
  int *pos;
  float *inv_freq;       /* [hd/2] */
  int nthr;
  int max_keys;          /* keys one query may visit: max(ring sizes, Te) */
  float *scores;         /* [nthr][max_keys] */
  const float **ptrs;    /* [nthr][2][max_keys]: K and V row pointers of the visited keys */
  int *cnt;              /* [rows] scratch */
};

/* Parallel regions only pay off above this many scalar operations (tiny models and single
 * decode steps would otherwise spend their time in OpenMP barriers). */
#define PAR_MIN 32768

static float *falloc(size_t n) { return t5g_alloc_aligned((n ? n : 1) * sizeof(float)); }

DecodeState *decode_new(Model *m, int rows, int max_len, int chunk) {
  const StackConfig *c = &m->cfg.dec;
  if (rows < 1 || max_len < 1 || chunk < 1) { t5g_error("decode_new: rows %d, max_len %d, chunk %d must be >= 1", rows, max_len, chunk); return NULL; }
  if (max_len > c->max_position_embeddings) {
    t5g_error("generate: %d decoder positions needed (prompt + new tokens), the model's max_position_embeddings is %d",
              max_len, c->max_position_embeddings);
    return NULL;
  }
  DecodeState *s = t5g_calloc(1, sizeof *s);
  s->m = m; s->sp = &m->dec; s->c = c;
  s->rows = rows; s->max_len = max_len; s->chunk = chunk < max_len ? chunk : max_len;
  s->cap_tok = rows * s->chunk;
  s->L = c->num_hidden_layers; s->d = c->hidden_size; s->H = c->num_attention_heads;
  s->K = c->num_key_value_heads; s->G = s->H / s->K; s->hd = c->head_dim;
  s->qd = s->H * s->hd; s->kd = s->K * s->hd; s->F = c->intermediate_size; s->V = c->vocab_size;
  s->scale = 1.0f / sqrtf(c->query_pre_attn_scalar);
  s->softcap = c->attn_logit_softcapping;
  s->eps = c->rms_norm_eps;
  s->R = t5g_calloc(s->L, sizeof(int));
  s->kc = t5g_calloc(s->L, sizeof(float *));
  s->vc = t5g_calloc(s->L, sizeof(float *));
  int maxR = 1;
  for (int l = 0; l < s->L; l++) {
    int R = max_len;
    if (c->layer_sliding[l] && c->sliding_window > 0) {
      int64_t r2 = (int64_t)c->sliding_window + s->chunk - 1;
      if (r2 < R) R = (int)r2;
    }
    s->R[l] = R;
    if (R > maxR) maxR = R;
    s->kc[l] = falloc((size_t)rows * R * s->kd);
    s->vc[l] = falloc((size_t)rows * R * s->kd);
  }
  s->len = t5g_calloc(rows, sizeof(int));
  s->src = t5g_calloc(rows, sizeof(int));
  for (int r = 0; r < rows; r++) s->src[r] = r;
  s->has_cross = m->dec.has_cross;
  size_t T = s->cap_tok;
  int wide = s->qd > s->d ? s->qd : s->d;
  s->x = falloc(T * s->d); s->a = falloc(T * s->d);
  s->q = falloc(T * s->qd); s->k = falloc(T * s->kd); s->v = falloc(T * s->kd);
  s->o = falloc(T * s->qd); s->t = falloc(T * wide);
  s->gt = falloc(T * s->F); s->up = falloc(T * s->F);
  s->pos = t5g_calloc(T, sizeof(int));
  s->inv_freq = falloc(s->hd / 2);
  for (int i = 0; i < s->hd / 2; i++) s->inv_freq[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)s->hd);
  s->nthr = omp_get_max_threads();
  s->max_keys = maxR;
  s->scores = falloc((size_t)s->nthr * s->max_keys);
  s->ptrs = t5g_malloc((size_t)s->nthr * 2 * s->max_keys * sizeof(float *));
  s->cnt = t5g_calloc(rows, sizeof(int));
  return s;
}

void decode_free(DecodeState *s) {
  if (!s) return;
  for (int l = 0; l < s->L; l++) {
    free(s->kc[l]); free(s->vc[l]);
    if (s->kc2) { free(s->kc2[l]); free(s->vc2[l]); }
    if (s->xk) { free(s->xk[l]); free(s->xv[l]); }
  }
  free(s->kc); free(s->vc); free(s->kc2); free(s->vc2); free(s->xk); free(s->xv); free(s->xmask);
  free(s->R); free(s->len); free(s->src);
  free(s->x); free(s->a); free(s->q); free(s->k); free(s->v); free(s->o); free(s->t);
  free(s->gt); free(s->up); free(s->pos); free(s->inv_freq); free(s->scores); free(s->ptrs); free(s->cnt);
  free(s);
}

int decode_len(const DecodeState *s, int r) { return s->len[r]; }
int decode_cache_slots(const DecodeState *s, int layer) { return s->R[layer]; }

/* y[n, out] = x[n, in] · Wᵀ, W [out, in] (PyTorch layout). OpenBLAS threads (outside OpenMP).
 * bf16 weights (model/weights_bf16.h): a materialised layer (W->data set) runs the same sgemm;
 * otherwise the few rows of a decoding step are multiplied straight from the bf16 storage. */
static void linear(const StackParams *sp, const float *x, int n, int in, const Tensor *W, int out, float *y) {
  T5G_ASSERT(W->shape[0] == out && W->shape[1] == in);
  if (sp->bf16 && !W->data) { wbf16_matmul_rows(sp, W, x, n, y, out); return; }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, W->data, in, 0.0f, y, out);
}

/* Gemma RMSNorm (spec 1.3) over rows of width d: y = x·rsqrt(mean(x²)+eps)·(1+w). y may be x. */
static void rmsnorm(const float *x, int n, int d, const float *w, float eps, float *y) {
#pragma omp parallel for schedule(static) if ((size_t)n * d >= PAR_MIN)
  for (int i = 0; i < n; i++) {
    const float *xi = x + (size_t)i * d;
    float *yi = y + (size_t)i * d;
    double ss = 0;
    for (int j = 0; j < d; j++) ss += (double)xi[j] * xi[j];
    float r = 1.0f / sqrtf((float)(ss / d) + eps);
    for (int j = 0; j < d; j++) yi[j] = xi[j] * r * (1.0f + w[j]);
  }
}

/* RoPE, rotate_half convention (spec 1.5), on nh heads of each token row. */
static void rope(float *x, int n, int nh, int hd, const int *pos, const float *inv_freq) {
  int half = hd / 2;
#pragma omp parallel for schedule(static) if ((size_t)n * nh * hd * 8 >= PAR_MIN)
  for (int i = 0; i < n; i++) {
    float pf = (float)pos[i];
    for (int f = 0; f < half; f++) {
      float sn, cs;
      sincosf(pf * inv_freq[f], &sn, &cs);
      for (int hh = 0; hh < nh; hh++) {
        float *xh = x + ((size_t)i * nh + hh) * hd;
        float x1 = xh[f], x2 = xh[f + half];
        xh[f] = x1 * cs - x2 * sn;
        xh[f + half] = x2 * cs + x1 * sn;
      }
    }
  }
}

static void add_into(float *x, const float *y, size_t n) {
#pragma omp parallel for schedule(static) if (n >= 4 * PAR_MIN)
  for (size_t i = 0; i < n; i++) x[i] += y[i];
}

/* One query head against a list of keys: out[hd] = softmax(cap(q·k·scale)) V.
 * keys are given by a callback-free description: nk keys at kbase + key_off(j) (see callers). */
static inline void attend_one(const float *qv, int hd, float scale, float cap, int nk,
                              const float *const *kp, const float *const *vp, float *sc, float *out) {
  if (nk == 0) { memset(out, 0, (size_t)hd * sizeof(float)); return; }
  float mx = -FLT_MAX;
  for (int j = 0; j < nk; j++) {
    const float *kv = kp[j];
    float dot = 0;
#pragma omp simd reduction(+:dot)
    for (int e = 0; e < hd; e++) dot += qv[e] * kv[e];
    float s = dot * scale;
    if (cap > 0) s = cap * tanhf(s / cap);
    sc[j] = s;
    if (s > mx) mx = s;
  }
  float sum = 0;
  for (int j = 0; j < nk; j++) { float e = expf(sc[j] - mx); sc[j] = e; sum += e; }
  float inv = 1.0f / sum;
  memset(out, 0, (size_t)hd * sizeof(float));
  for (int j = 0; j < nk; j++) {
    const float *vv = vp[j];
    float w = sc[j] * inv;
#pragma omp simd
    for (int e = 0; e < hd; e++) out[e] += w * vv[e];
  }
}

/* Self-attention of the call's n tokens against the cache of layer l (keys already written). */
static void self_attention_cached(DecodeState *s, int l, int n, const int *rows) {
  const int R = s->R[l], W = s->c->layer_sliding[l] ? s->c->sliding_window : 0;
  const int H = s->H, G = s->G, hd = s->hd, kd = s->kd;
  const float *kc = s->kc[l], *vc = s->vc[l];
  int nthr = s->nthr, mk = s->max_keys;
  size_t work = 0;
  for (int i = 0; i < n; i++) work += (size_t)(W > 0 && W < s->pos[i] + 1 ? W : s->pos[i] + 1);
  work *= (size_t)H * hd * 3;
#pragma omp parallel for collapse(2) schedule(dynamic, 4) num_threads(nthr) if (work >= PAR_MIN)
  for (int i = 0; i < n; i++) {
    for (int hq = 0; hq < H; hq++) {
      int tid = omp_get_thread_num();
      float *sc = s->scores + (size_t)tid * mk;
      const float **kp = s->ptrs + (size_t)tid * 2 * mk, **vp = kp + mk;
      int r = rows[i], p = s->pos[i], kh = hq / G;
      int lo = W > 0 ? p - W + 1 : 0;
      if (lo < 0) lo = 0;
      int nk = 0;
      for (int kpos = lo; kpos <= p; kpos++) {
        size_t off = ((size_t)r * R + (size_t)(kpos % R)) * kd + (size_t)kh * hd;
        kp[nk] = kc + off; vp[nk] = vc + off; nk++;
      }
      attend_one(s->q + (size_t)i * s->qd + (size_t)hq * hd, hd, s->scale, s->softcap, nk, kp, vp, sc,
                 s->o + (size_t)i * s->qd + (size_t)hq * hd);
    }
  }
}

/* Cross-attention of the call's n tokens against the encoder K/V of their rows' sources. */
static void cross_attention_cached(DecodeState *s, int l, int n, const int *rows) {
  const int H = s->H, G = s->G, hd = s->hd, kd = s->kd, Te = s->Te;
  const float *xk = s->xk[l], *xv = s->xv[l];
  int nthr = s->nthr, mk = s->max_keys;
  size_t work = (size_t)n * H * Te * hd * 3;
#pragma omp parallel for collapse(2) schedule(dynamic, 4) num_threads(nthr) if (work >= PAR_MIN)
  for (int i = 0; i < n; i++) {
    for (int hq = 0; hq < H; hq++) {
      int tid = omp_get_thread_num();
      float *sc = s->scores + (size_t)tid * mk;
      const float **kp = s->ptrs + (size_t)tid * 2 * mk, **vp = kp + mk;
      int src = s->src[rows[i]], kh = hq / G, nk = 0;
      for (int j = 0; j < Te; j++) {
        if (!s->xmask[(size_t)src * Te + j]) continue;
        size_t off = ((size_t)src * Te + j) * kd + (size_t)kh * hd;
        kp[nk] = xk + off; vp[nk] = xv + off; nk++;
      }
      attend_one(s->q + (size_t)i * s->qd + (size_t)hq * hd, hd, s->scale, s->softcap, nk, kp, vp, sc,
                 s->o + (size_t)i * s->qd + (size_t)hq * hd);
    }
  }
}

int decode_encode(DecodeState *s, const int32_t *const *prompts, const int *lens, int n_src,
                  const int *src_of_row) {
  Model *m = s->m;
  if (m->cfg.kind != MODEL_T5GEMMA) return t5g_error("decode_encode: the model is decoder-only (Gemma 2)");
  const StackConfig *ec = &m->cfg.enc;
  int Te = 0;
  for (int b = 0; b < n_src; b++) {
    if (lens[b] < 1) return t5g_error("generate: prompt %d is empty (the encoder needs at least one token, e.g. <bos>)", b);
    if (lens[b] > Te) Te = lens[b];
    for (int j = 0; j < lens[b]; j++)
      if (prompts[b][j] < 0 || prompts[b][j] >= ec->vocab_size)
        return t5g_error("generate: prompt %d token %d has id %d, outside the vocabulary [0, %d)", b, j, prompts[b][j], ec->vocab_size);
  }
  if (Te > ec->max_position_embeddings)
    return t5g_error("generate: prompt of %d tokens exceeds the encoder's max_position_embeddings %d", Te, ec->max_position_embeddings);
  int32_t *ids = t5g_calloc((size_t)n_src * Te, sizeof(int32_t));
  int32_t *pos = t5g_calloc((size_t)n_src * Te, sizeof(int32_t));
  uint8_t *mask = t5g_calloc((size_t)n_src * Te, 1);
  for (int b = 0; b < n_src; b++)
    for (int j = 0; j < Te; j++) {
      size_t o = (size_t)b * Te + j;
      pos[o] = j;
      if (j < lens[b]) { ids[o] = prompts[b][j]; mask[o] = 1; } else ids[o] = m->cfg.pad_token_id;
    }
  Arena arena; Graph g;
  arena_init(&arena, (size_t)64 << 20);
  graph_init(&g, &arena);
  g.grad_enabled = 0;
  Tensor *enc = stack_forward(&g, &m->enc, ids, mask, pos, NULL, n_src, Te, m->cfg.encoder_causal, NULL, NULL, NULL, 0);
  int de = ec->hidden_size;
  s->Te = Te; s->n_src = n_src; s->enc_d = de;
  if (Te > s->max_keys) {
    s->max_keys = Te;
    free(s->scores); free(s->ptrs);
    s->scores = falloc((size_t)s->nthr * s->max_keys);
    s->ptrs = t5g_malloc((size_t)s->nthr * 2 * s->max_keys * sizeof(float *));
  }
  if (!s->xk) { s->xk = t5g_calloc(s->L, sizeof(float *)); s->xv = t5g_calloc(s->L, sizeof(float *)); }
  for (int l = 0; l < s->L; l++) {
    free(s->xk[l]); free(s->xv[l]);
    s->xk[l] = falloc((size_t)n_src * Te * s->kd);
    s->xv[l] = falloc((size_t)n_src * Te * s->kd);
    const LayerParams *LP = &s->sp->layers[l];
    if (s->sp->bf16) wbf16_layer(s->sp, LP);   /* bf16 weights: this layer's matrices in f32 */
    linear(s->sp, enc->data, n_src * Te, de, LP->xk, s->kd, s->xk[l]);
    linear(s->sp, enc->data, n_src * Te, de, LP->xv, s->kd, s->xv[l]);
  }
  free(s->xmask);
  s->xmask = mask;
  for (int r = 0; r < s->rows; r++) {
    s->src[r] = src_of_row ? src_of_row[r] : r;
    T5G_ASSERT(s->src[r] >= 0 && s->src[r] < n_src);
  }
  graph_free(&g);
  arena_free(&arena);
  free(ids); free(pos);
  return 0;
}

void decode_forward(DecodeState *s, int n, const int *rows, const int32_t *ids, const uint8_t *want,
                    float *logits, float *hidden) {
  T5G_ASSERT(n >= 0 && n <= s->cap_tok);
  if (n == 0) return;
  const StackParams *sp = s->sp;
  const int d = s->d, qd = s->qd, kd = s->kd, F = s->F;
  /* positions: each row's tokens continue its cache in order */
  {
    int *cnt = s->cnt;
    memset(cnt, 0, (size_t)s->rows * sizeof(int));
    for (int i = 0; i < n; i++) {
      int r = rows[i];
      T5G_ASSERT(r >= 0 && r < s->rows);
      T5G_ASSERT(ids[i] >= 0 && ids[i] < s->V);
      s->pos[i] = s->len[r] + cnt[r]++;
      T5G_ASSERT(cnt[r] <= s->chunk && s->pos[i] < s->max_len);
    }
  }
  if (s->has_cross) T5G_ASSERT(s->xk != NULL);
  /* embedding · sqrt(d) (spec 1.6, 2.5) */
  if (sp->bf16) wbf16_embed_rows(sp, ids, n, s->x);   /* bf16 weights: only these rows */
  else {
    const float *E = sp->embed->data;
    float esc = sp->embed_scale;
#pragma omp parallel for schedule(static) if ((size_t)n * d >= 4 * PAR_MIN)
    for (int i = 0; i < n; i++)
      for (int j = 0; j < d; j++) s->x[(size_t)i * d + j] = E[(size_t)ids[i] * d + j] * esc;
  }

  for (int l = 0; l < s->L; l++) {
    const LayerParams *LP = &sp->layers[l];
    /* bf16 weights: materialise this layer's matrices in f32 for many rows (prefill); a few rows
     * (decoding steps) are multiplied straight from the bf16 storage (see linear) */
    if (sp->bf16 && n > WBF16_FUSED_MAX_ROWS) wbf16_layer(sp, LP);
    /* self-attention sub-block */
    rmsnorm(s->x, n, d, LP->ln_pre_attn->data, s->eps, s->a);
    linear(sp, s->a, n, d, LP->q, qd, s->q);
    linear(sp, s->a, n, d, LP->k, kd, s->k);
    linear(sp, s->a, n, d, LP->v, kd, s->v);
    rope(s->q, n, s->H, s->hd, s->pos, s->inv_freq);
    rope(s->k, n, s->K, s->hd, s->pos, s->inv_freq);
    const int R = s->R[l];
    for (int i = 0; i < n; i++) {
      size_t off = ((size_t)rows[i] * R + (size_t)(s->pos[i] % R)) * kd;
      memcpy(s->kc[l] + off, s->k + (size_t)i * kd, (size_t)kd * sizeof(float));
      memcpy(s->vc[l] + off, s->v + (size_t)i * kd, (size_t)kd * sizeof(float));
    }
    self_attention_cached(s, l, n, rows);
    linear(sp, s->o, n, qd, LP->o, d, s->t);
    rmsnorm(s->t, n, d, LP->ln_post_attn->data, s->eps, s->t);
    add_into(s->x, s->t, (size_t)n * d);
    /* cross-attention sub-block (T5Gemma decoder, spec 2.3) */
    if (s->has_cross) {
      rmsnorm(s->x, n, d, LP->ln_pre_cross->data, s->eps, s->a);
      linear(sp, s->a, n, d, LP->xq, qd, s->q);
      cross_attention_cached(s, l, n, rows);
      linear(sp, s->o, n, qd, LP->xo, d, s->t);
      rmsnorm(s->t, n, d, LP->ln_post_cross->data, s->eps, s->t);
      add_into(s->x, s->t, (size_t)n * d);
    }
    /* GeGLU MLP (spec 1.4) */
    rmsnorm(s->x, n, d, LP->ln_pre_ffw->data, s->eps, s->a);
    linear(sp, s->a, n, d, LP->gate, F, s->gt);
    linear(sp, s->a, n, d, LP->up, F, s->up);
#pragma omp parallel for schedule(static) if ((size_t)n * F * 8 >= PAR_MIN)
    for (size_t i = 0; i < (size_t)n * F; i++) {
      float z = s->gt[i];
      float u = 0.7978845608028654f * (z + 0.044715f * z * z * z);
      s->gt[i] = 0.5f * z * (1.0f + tanhf(u)) * s->up[i];
    }
    linear(sp, s->gt, n, F, LP->down, d, s->t);
    rmsnorm(s->t, n, d, LP->ln_post_ffw->data, s->eps, s->t);
    add_into(s->x, s->t, (size_t)n * d);
  }
  rmsnorm(s->x, n, d, sp->final_norm->data, s->eps, s->a);
  for (int i = 0; i < n; i++) s->len[rows[i]]++;
  if (hidden) memcpy(hidden, s->a, (size_t)n * d * sizeof(float));
  if (logits) {
    /* gather the wanted rows into s->x (free now), then one sgemm with the tied head */
    int n_out = 0;
    for (int i = 0; i < n; i++) {
      if (want && !want[i]) continue;
      memcpy(s->x + (size_t)n_out * d, s->a + (size_t)i * d, (size_t)d * sizeof(float));
      n_out++;
    }
    if (n_out > 0) {
      const int V = s->V;
      if (sp->bf16) wbf16_logits(sp, s->x, n_out, logits, V);   /* head converted block by block */
      else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n_out, V, d, 1.0f, s->x, d, sp->embed->data, d, 0.0f, logits, V);
      float cap = s->m->cfg.dec.final_logit_softcapping;
      if (cap > 0) {
#pragma omp parallel for schedule(static) if ((size_t)n_out * V * 8 >= PAR_MIN)
        for (size_t i = 0; i < (size_t)n_out * V; i++) logits[i] = cap * tanhf(logits[i] / cap);
      }
    }
  }
}

void decode_reorder(DecodeState *s, const int *src) {
  int identity = 1;
  for (int r = 0; r < s->rows; r++) identity &= src[r] == r;
  if (identity) return;
  if (!s->kc2) {
    s->kc2 = t5g_calloc(s->L, sizeof(float *));
    s->vc2 = t5g_calloc(s->L, sizeof(float *));
    for (int l = 0; l < s->L; l++) {
      s->kc2[l] = falloc((size_t)s->rows * s->R[l] * s->kd);
      s->vc2[l] = falloc((size_t)s->rows * s->R[l] * s->kd);
    }
  }
  for (int l = 0; l < s->L; l++) {
    /* only the filled slots of each row are copied */
    size_t per = (size_t)s->R[l] * s->kd;
    float *nk = s->kc2[l], *nv = s->vc2[l];
    for (int r = 0; r < s->rows; r++) {
      int used = s->len[src[r]] < s->R[l] ? s->len[src[r]] : s->R[l];
      memcpy(nk + per * r, s->kc[l] + per * src[r], (size_t)used * s->kd * sizeof(float));
      memcpy(nv + per * r, s->vc[l] + per * src[r], (size_t)used * s->kd * sizeof(float));
    }
    s->kc2[l] = s->kc[l]; s->vc2[l] = s->vc[l];
    s->kc[l] = nk; s->vc[l] = nv;
  }
  int *nl = s->cnt, *ns = s->pos;   /* scratch: rows <= cap_tok */
  for (int r = 0; r < s->rows; r++) { nl[r] = s->len[src[r]]; ns[r] = s->src[src[r]]; }
  memcpy(s->len, nl, s->rows * sizeof(int));
  memcpy(s->src, ns, s->rows * sizeof(int));
}

/* ------------------------------------------------------------------------------------------ */
/* Sampling                                                                                     */

void gen_log_softmax(float *z, int V) {
  float mx = -FLT_MAX;
  for (int i = 0; i < V; i++) if (z[i] > mx) mx = z[i];
  double sum = 0;
  for (int i = 0; i < V; i++) sum += exp((double)z[i] - mx);
  float lse = (float)(mx + log(sum));
  for (int i = 0; i < V; i++) z[i] -= lse;
}

void gen_row_rng(Rng *r, uint64_t seed, int row) { rng_seed(r, seed + 0x9E3779B97F4A7C15ULL * (uint64_t)(row + 1)); }

size_t gen_scratch_size(int V) { return (size_t)V * (sizeof(float) + sizeof(int32_t)) + 64; }

/* Sort helpers: descending value, ascending index on ties. */
static __thread const float *t_sort_vals;
static int cmp_desc(const void *a, const void *b) {
  int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
  float x = t_sort_vals[i], y = t_sort_vals[j];
  if (x > y) return -1;
  if (x < y) return 1;
  return (i > j) - (i < j);
}

/* Move the k best indices (desc value, asc index) of idx[0..n) to the front, sorted. */
static void top_k_sorted(int32_t *idx, int n, int k, const float *vals) {
  t_sort_vals = vals;
  if (k >= n) { qsort(idx, n, sizeof(int32_t), cmp_desc); return; }
  /* quickselect on the comparator, then sort the front */
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    int32_t pivot = idx[lo + (hi - lo) / 2];
    int i = lo, j = hi;
    while (i <= j) {
      while (cmp_desc(&idx[i], &pivot) < 0) i++;
      while (cmp_desc(&idx[j], &pivot) > 0) j--;
      if (i <= j) { int32_t t = idx[i]; idx[i] = idx[j]; idx[j] = t; i++; j--; }
    }
    if (k - 1 <= j) hi = j;
    else if (k - 1 >= i) lo = i;
    else break;
  }
  qsort(idx, k, sizeof(int32_t), cmp_desc);
}

int32_t gen_choose(const float *z, int V, const GenConfig *cfg, Rng *rng, void *scratch) {
  if (cfg->greedy) {
    int best = 0;
    for (int i = 1; i < V; i++) if (z[i] > z[best]) best = i;
    return best;
  }
  float *p = scratch;
  int32_t *idx = (int32_t *)(p + V);
  float invT = 1.0f / cfg->temperature;
  for (int i = 0; i < V; i++) p[i] = z[i] * invT;
  int n = V;
  for (int i = 0; i < V; i++) idx[i] = i;
  int need_sort = cfg->top_p < 1.0f;
  if (cfg->top_k > 0 && cfg->top_k < V) { top_k_sorted(idx, V, cfg->top_k, p); n = cfg->top_k; }
  else if (need_sort) top_k_sorted(idx, V, V, p);
  /* softmax over the candidates (the first candidate is the maximum when sorted) */
  float mx = -FLT_MAX;
  for (int i = 0; i < n; i++) if (p[idx[i]] > mx) mx = p[idx[i]];
  double total = 0;
  for (int i = 0; i < n; i++) total += exp((double)p[idx[i]] - mx);
  if (need_sort) {
    /* nucleus: keep candidate i while the mass before it is < top_p */
    double cum = 0;
    int keep = 0;
    for (int i = 0; i < n; i++) {
      if (i > 0 && cum >= cfg->top_p) break;
      cum += exp((double)p[idx[i]] - mx) / total;
      keep = i + 1;
    }
    n = keep;
    total = 0;
    for (int i = 0; i < n; i++) total += exp((double)p[idx[i]] - mx);
  }
  double u = rng_uniform_d(rng) * total, acc = 0;
  for (int i = 0; i < n; i++) {
    acc += exp((double)p[idx[i]] - mx);
    if (u < acc) return idx[i];
  }
  return idx[n - 1];
}

/* ------------------------------------------------------------------------------------------ */
/* generate: greedy / sampling over a batch                                                     */

static int check_prompts(const Model *m, const int32_t *const *prompts, const int *lens, int B) {
  int V = m->cfg.kind == MODEL_T5GEMMA ? m->cfg.enc.vocab_size : m->cfg.dec.vocab_size;
  for (int b = 0; b < B; b++) {
    if (lens[b] < 1) return t5g_error("generate: prompt %d is empty (it needs at least <bos>)", b);
    for (int j = 0; j < lens[b]; j++)
      if (prompts[b][j] < 0 || prompts[b][j] >= V)
        return t5g_error("generate: prompt %d token %d has id %d, outside the vocabulary [0, %d)", b, j, prompts[b][j], V);
  }
  return 0;
}

/* Prefill the decoder-only prompts of rows rows_of[b] = b (b < B) in chunks; logits of each
 * row's last prompt token go to rowlogits[b * V]. */
static void prefill(DecodeState *s, const int32_t *const *prompts, const int *lens, int B, const int *row_of,
                    float *rowlogits, float *tmp_logits) {
  int V = s->V, chunk = s->chunk;
  int *done = t5g_calloc(B, sizeof(int));
  int *rows = t5g_malloc((size_t)s->cap_tok * sizeof(int));
  int32_t *ids = t5g_malloc((size_t)s->cap_tok * sizeof(int32_t));
  uint8_t *want = t5g_malloc((size_t)s->cap_tok);
  int *want_row = t5g_malloc((size_t)s->cap_tok * sizeof(int));
  for (;;) {
    int n = 0, n_out = 0;
    for (int b = 0; b < B; b++) {
      int take = lens[b] - done[b];
      if (take > chunk) take = chunk;
      for (int j = 0; j < take; j++) {
        rows[n] = row_of ? row_of[b] : b;
        ids[n] = prompts[b][done[b] + j];
        want[n] = done[b] + j == lens[b] - 1;
        if (want[n]) want_row[n_out++] = b;
        n++;
      }
      done[b] += take;
    }
    if (n == 0) break;
    decode_forward(s, n, rows, ids, want, tmp_logits, NULL);
    for (int i = 0; i < n_out; i++) memcpy(rowlogits + (size_t)want_row[i] * V, tmp_logits + (size_t)i * V, (size_t)V * sizeof(float));
  }
  free(done); free(rows); free(ids); free(want); free(want_row);
}

int generate(Model *m, const GenConfig *cfg, const int32_t *const *prompts, const int *lens, int B,
             GenOutput *out) {
  if (gen_config_check(cfg) != 0) return -1;
  if (cfg->num_beams != 1) return t5g_error("generate: num_beams %d > 1 needs generate_beam", cfg->num_beams);
  if (B < 1) return 0;
  if (check_prompts(m, prompts, lens, B) != 0) return -1;
  const int encdec = m->cfg.kind == MODEL_T5GEMMA;
  const int V = m->cfg.dec.vocab_size, maxnew = cfg->max_new_tokens;
  int maxlen = 0;
  for (int b = 0; b < B; b++) if (lens[b] > maxlen) maxlen = lens[b];
  int dec_len = encdec ? maxnew : maxlen + maxnew;
  DecodeState *s = decode_new(m, B, dec_len, encdec ? 1 : cfg->prefill_chunk);
  if (!s) return -1;
  if (encdec && decode_encode(s, prompts, lens, B, NULL) != 0) { decode_free(s); return -1; }
  float *rowlogits = falloc((size_t)B * V);
  float *tmp = falloc((size_t)B * V);   /* at most one wanted token per row and call */
  int nthr = omp_get_max_threads();
  char *scratch = t5g_malloc(gen_scratch_size(V) * nthr);
  Rng *rng = t5g_malloc(B * sizeof(Rng));
  int *active = t5g_malloc(B * sizeof(int));
  int *rows = t5g_malloc(B * sizeof(int));
  int32_t *feed = t5g_malloc(B * sizeof(int32_t));
  for (int b = 0; b < B; b++) {
    memset(&out[b], 0, sizeof out[b]);
    out[b].ids = t5g_malloc(maxnew * sizeof(int32_t));
    out[b].logprobs = t5g_malloc(maxnew * sizeof(float));
    gen_row_rng(&rng[b], cfg->seed, cfg->first_row + b);
    active[b] = 1;
  }
  if (!encdec) prefill(s, prompts, lens, B, NULL, rowlogits, tmp);
  else {
    /* first decoder input: the start token <bos> at position 0 (spec 5) */
    for (int b = 0; b < B; b++) { rows[b] = b; feed[b] = cfg->bos_id; }
    decode_forward(s, B, rows, feed, NULL, rowlogits, NULL);
  }
  for (;;) {
    /* choose the next token of every active row (rows in parallel) */
    int n_act = 0;
    for (int b = 0; b < B; b++) n_act += active[b];
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthr) if ((size_t)n_act * V * 8 >= PAR_MIN && n_act > 1)
    for (int b = 0; b < B; b++) {
      if (!active[b]) continue;
      float *z = rowlogits + (size_t)b * V;
      void *scr = scratch + gen_scratch_size(V) * omp_get_thread_num();
      GenOutput *o = &out[b];
      /* min_new_tokens: the stop ids are not candidates yet; their logits come back for the
       * logprobs (the model's own distribution) */
      float saved[GEN_MAX_STOP];
      int hold = o->n < cfg->min_new_tokens;
      if (hold) for (int i = 0; i < cfg->n_stop; i++) { saved[i] = z[cfg->stop_ids[i]]; z[cfg->stop_ids[i]] = -INFINITY; }
      int32_t tok = gen_choose(z, V, cfg, &rng[b], scr);
      if (hold) for (int i = cfg->n_stop - 1; i >= 0; i--) z[cfg->stop_ids[i]] = saved[i];
      gen_log_softmax(z, V);
      o->ids[o->n] = tok;
      o->logprobs[o->n] = z[tok];
      o->sum_logprob += z[tok];
      o->n++;
      if (is_stop(cfg, tok)) { o->stopped = 1; active[b] = 0; }
      else if (o->n >= maxnew) active[b] = 0;
    }
    int n = 0;
    for (int b = 0; b < B; b++) if (active[b]) { rows[n] = b; feed[n] = out[b].ids[out[b].n - 1]; n++; }
    if (n == 0) break;
    decode_forward(s, n, rows, feed, NULL, tmp, NULL);
    for (int i = 0; i < n; i++) memcpy(rowlogits + (size_t)rows[i] * V, tmp + (size_t)i * V, (size_t)V * sizeof(float));
  }
  for (int b = 0; b < B; b++) out[b].score = out[b].sum_logprob;
  free(rowlogits); free(tmp); free(scratch); free(rng); free(active); free(rows); free(feed);
  decode_free(s);
  return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Beam search                                                                                  */

typedef struct Cand { double score; int beam; int32_t tok; } Cand;

static int cmp_cand(const void *a, const void *b) {
  const Cand *x = a, *y = b;
  if (x->score > y->score) return -1;
  if (x->score < y->score) return 1;
  if (x->beam != y->beam) return x->beam - y->beam;
  return (x->tok > y->tok) - (x->tok < y->tok);
}

typedef struct Hyp { int32_t *ids; float *lps; int n, stopped; double sum, score; } Hyp;

static void hyp_add(Hyp *h, int *nh, int cap, const int32_t *ids, const float *lps, int n, int stopped,
                    double sum, float lp_pen) {
  double score = sum / pow((double)n, lp_pen);
  int slot = -1;
  if (*nh < cap) slot = (*nh)++;
  else {
    int worst = 0;
    for (int i = 1; i < *nh; i++) if (h[i].score < h[worst].score) worst = i;
    if (score <= h[worst].score) return;
    slot = worst;
  }
  Hyp *x = &h[slot];
  memcpy(x->ids, ids, n * sizeof(int32_t));
  memcpy(x->lps, lps, n * sizeof(float));
  x->n = n; x->stopped = stopped; x->sum = sum; x->score = score;
}

static int cmp_hyp(const void *a, const void *b) {
  const Hyp *x = a, *y = b;
  return (x->score < y->score) - (x->score > y->score);
}

int generate_beam(Model *m, const GenConfig *cfg, const int32_t *prompt, int len, int n_return,
                  GenOutput *out, int *n_out) {
  *n_out = 0;
  if (gen_config_check(cfg) != 0) return -1;
  const int nb = cfg->num_beams, maxnew = cfg->max_new_tokens;
  if (n_return < 1 || n_return > nb) return t5g_error("generate: %d return sequences requested, must be in [1, num_beams = %d]", n_return, nb);
  if (check_prompts(m, &prompt, &len, 1) != 0) return -1;
  const int encdec = m->cfg.kind == MODEL_T5GEMMA;
  const int V = m->cfg.dec.vocab_size;
  DecodeState *s = decode_new(m, nb, encdec ? maxnew : len + maxnew, encdec ? 1 : cfg->prefill_chunk);
  if (!s) return -1;
  int *src0 = t5g_calloc(nb, sizeof(int));
  if (encdec && decode_encode(s, &prompt, &len, 1, src0) != 0) { free(src0); decode_free(s); return -1; }
  float *logits = falloc((size_t)nb * V);
  float *tmp = falloc((size_t)nb * V);
  int32_t *tok_hist = t5g_malloc((size_t)nb * maxnew * sizeof(int32_t)), *tok_new = t5g_malloc((size_t)nb * maxnew * sizeof(int32_t));
  float *lp_hist = t5g_malloc((size_t)nb * maxnew * sizeof(float)), *lp_new = t5g_malloc((size_t)nb * maxnew * sizeof(float));
  double *beam_sum = t5g_calloc(nb, sizeof(double)), *beam_sum_new = t5g_calloc(nb, sizeof(double));
  int per = nb + cfg->n_stop;
  if (per > V) per = V;
  Cand *cand = t5g_malloc((size_t)nb * per * sizeof(Cand));
  int32_t *idx = t5g_malloc((size_t)V * sizeof(int32_t));
  Hyp *hyps = t5g_calloc(nb, sizeof(Hyp));
  for (int i = 0; i < nb; i++) { hyps[i].ids = t5g_malloc(maxnew * sizeof(int32_t)); hyps[i].lps = t5g_malloc(maxnew * sizeof(float)); }
  int nh = 0;
  int *rows = t5g_malloc(nb * sizeof(int)), *src = t5g_malloc(nb * sizeof(int));
  int32_t *feed = t5g_malloc(nb * sizeof(int32_t));
  if (encdec) {
    rows[0] = 0; feed[0] = cfg->bos_id;
    decode_forward(s, 1, rows, feed, NULL, logits, NULL);
  } else {
    int zero = 0;
    prefill(s, &prompt, &len, 1, &zero, logits, tmp);
  }
  int running = 1;
  for (int t = 0; t < maxnew; t++) {
    int nc = 0;
    for (int b = 0; b < running; b++) {
      float *z = logits + (size_t)b * V;
      gen_log_softmax(z, V);
      for (int i = 0; i < V; i++) idx[i] = i;
      top_k_sorted(idx, V, per, z);
      for (int i = 0; i < per; i++) cand[nc++] = (Cand){beam_sum[b] + z[idx[i]], b, idx[i]};
    }
    qsort(cand, nc, sizeof(Cand), cmp_cand);
    int chosen = 0;
    for (int rank = 0; rank < nc && chosen < nb; rank++) {
      Cand *c = &cand[rank];
      float lp = (float)(c->score - beam_sum[c->beam]);
      if (is_stop(cfg, c->tok)) {
        if (rank >= nb || t < cfg->min_new_tokens) continue;
        int32_t *hi = tok_new + (size_t)chosen * maxnew; /* scratch row (overwritten below if chosen) */
        float *hl = lp_new + (size_t)chosen * maxnew;
        memcpy(hi, tok_hist + (size_t)c->beam * maxnew, t * sizeof(int32_t));
        memcpy(hl, lp_hist + (size_t)c->beam * maxnew, t * sizeof(float));
        hi[t] = c->tok; hl[t] = lp;
        hyp_add(hyps, &nh, nb, hi, hl, t + 1, 1, c->score, cfg->length_penalty);
        continue;
      }
      memcpy(tok_new + (size_t)chosen * maxnew, tok_hist + (size_t)c->beam * maxnew, t * sizeof(int32_t));
      memcpy(lp_new + (size_t)chosen * maxnew, lp_hist + (size_t)c->beam * maxnew, t * sizeof(float));
      tok_new[(size_t)chosen * maxnew + t] = c->tok;
      lp_new[(size_t)chosen * maxnew + t] = lp;
      beam_sum_new[chosen] = c->score;
      src[chosen] = c->beam;
      chosen++;
    }
    T5G_ASSERT(chosen == nb || nc < nb);
    { int32_t *a = tok_hist; tok_hist = tok_new; tok_new = a; }
    { float *a = lp_hist; lp_hist = lp_new; lp_new = a; }
    { double *a = beam_sum; beam_sum = beam_sum_new; beam_sum_new = a; }
    running = chosen;
    if (nh >= nb) break;                       /* early_stopping = True */
    if (t + 1 == maxnew) {
      for (int b = 0; b < running; b++)
        hyp_add(hyps, &nh, nb, tok_hist + (size_t)b * maxnew, lp_hist + (size_t)b * maxnew, t + 1, 0, beam_sum[b], cfg->length_penalty);
      break;
    }
    for (int b = running; b < nb; b++) src[b] = src[0];
    decode_reorder(s, src);
    for (int b = 0; b < running; b++) { rows[b] = b; feed[b] = tok_hist[(size_t)b * maxnew + t]; }
    decode_forward(s, running, rows, feed, NULL, logits, NULL);
  }
  qsort(hyps, nh, sizeof(Hyp), cmp_hyp);
  int nr = n_return < nh ? n_return : nh;
  for (int i = 0; i < nr; i++) {
    GenOutput *o = &out[i];
    memset(o, 0, sizeof *o);
    o->n = hyps[i].n;
    o->ids = t5g_malloc((o->n ? o->n : 1) * sizeof(int32_t));
    o->logprobs = t5g_malloc((o->n ? o->n : 1) * sizeof(float));
    memcpy(o->ids, hyps[i].ids, o->n * sizeof(int32_t));
    memcpy(o->logprobs, hyps[i].lps, o->n * sizeof(float));
    o->stopped = hyps[i].stopped;
    o->sum_logprob = hyps[i].sum;
    o->score = hyps[i].score;
  }
  *n_out = nr;
  for (int i = 0; i < nb; i++) { free(hyps[i].ids); free(hyps[i].lps); }
  free(hyps); free(src0); free(logits); free(tmp); free(tok_hist); free(tok_new); free(lp_hist); free(lp_new);
  free(beam_sum); free(beam_sum_new); free(cand); free(idx); free(rows); free(src); free(feed);
  decode_free(s);
  return 0;
}
