/* score.c: batched teacher-forced log-likelihoods (contract: eval/score.h). */
#include "eval/score.h"
#include "model/weights_bf16.h"
#include <stdlib.h>
#include <string.h>

typedef struct { int idx, key; } SortKey;

static int cmp_key(const void *a, const void *b) {
  const SortKey *x = a, *y = b;
  if (x->key != y->key) return y->key - x->key;     /* longest first */
  return x->idx - y->idx;                           /* stable */
}

/* Effective context after left truncation: first token + last (keep - 1) tokens. */
typedef struct { const int32_t *ctx; int n; int cut; } Ctx;

static Ctx fit_ctx(const ScoreItem *it, int keep) {
  Ctx c = {it->ctx, it->n_ctx, 0};
  if (c.n > keep) c.cut = c.n - keep, c.n = keep;
  return c;
}
static inline int32_t ctx_tok(const ScoreItem *it, const Ctx *c, int j) {
  return (j == 0 || c->cut == 0) ? it->ctx[j] : it->ctx[j + c->cut];
}

static int check_ids(const int32_t *ids, int n, int V, int item, const char *what) {
  for (int j = 0; j < n; j++)
    if (ids[j] < 0 || ids[j] >= V) return t5g_error("score: item %d: %s token %d has id %d, outside the vocabulary [0, %d)", item, what, j, ids[j], V);
  return 0;
}

int score_items(Model *m, const ScoreItem *items, int n, int batch_size, int per_token,
                ScoreResult *res, int *n_truncated,
                void (*progress)(void *ctx, int done, int total), void *progress_ctx) {
  const int encdec = m->cfg.kind == MODEL_T5GEMMA;
  const StackConfig *dc = &m->cfg.dec, *ec = encdec ? &m->cfg.enc : NULL;
  const int Vd = dc->vocab_size, Ve = encdec ? ec->vocab_size : Vd;
  const int max_dec = dc->max_position_embeddings, max_enc = encdec ? ec->max_position_embeddings : 0;
  if (batch_size < 1) return t5g_error("score: batch size must be >= 1, got %d", batch_size);
  if (n_truncated) *n_truncated = 0;
  for (int i = 0; i < n; i++) {
    const ScoreItem *it = &items[i];
    if (it->n_tgt < 1) return t5g_error("score: item %d has an empty target", i);
    if (it->n_ctx < 1) return t5g_error("score: item %d has an empty context (it needs at least <bos>)", i);
    if (check_ids(it->ctx, it->n_ctx, encdec ? Ve : Vd, i, encdec ? "input" : "context") != 0) return -1;
    if (check_ids(it->tgt, it->n_tgt, Vd, i, "target") != 0) return -1;
    int limit = encdec ? max_dec : max_dec - 1;   /* decoder-only needs room for >= 1 context token */
    if (it->n_tgt > limit)
      return t5g_error("score: item %d: target of %d tokens does not fit the decoder's max_position_embeddings %d", i, it->n_tgt, max_dec);
  }
  SortKey *ord = t5g_malloc((size_t)(n ? n : 1) * sizeof *ord);
  for (int i = 0; i < n; i++) {
    ord[i].idx = i;
    ord[i].key = encdec ? items[i].n_ctx : items[i].n_ctx + items[i].n_tgt;
  }
  qsort(ord, n, sizeof *ord, cmp_key);
  for (int i = 0; i < n; i++) { res[i].sum_logprob = 0; res[i].n_tokens = items[i].n_tgt; res[i].token_logprobs = NULL; }

  Arena arena; Graph g;
  arena_init(&arena, (size_t)64 << 20);
  graph_init(&g, &arena);
  g.grad_enabled = 0;
  for (int b0 = 0; b0 < n; b0 += batch_size) {
    int B = n - b0 < batch_size ? n - b0 : batch_size;
    graph_reset(&g);
    const ScoreItem **rows = arena_alloc(&arena, B * sizeof *rows);
    Ctx *cx = arena_alloc(&arena, B * sizeof *cx);
    for (int r = 0; r < B; r++) rows[r] = &items[ord[b0 + r].idx];
    int Td = 0;
    Tensor *h;
    int32_t *labels;
    if (encdec) {
      /* distinct contexts of the batch (consecutive equal ones share an encoder row) */
      int *src = arena_alloc(&arena, B * sizeof(int));
      int nu = 0, Te = 0;
      for (int r = 0; r < B; r++) {
        cx[r] = fit_ctx(rows[r], max_enc);
        if (cx[r].cut && n_truncated) (*n_truncated)++;
        if (r > 0 && rows[r]->ctx == rows[r - 1]->ctx && rows[r]->n_ctx == rows[r - 1]->n_ctx) src[r] = src[r - 1];
        else src[r] = nu++;
        if (cx[r].n > Te) Te = cx[r].n;
        if (rows[r]->n_tgt > Td) Td = rows[r]->n_tgt;
      }
      int32_t *eids = arena_calloc(&arena, (size_t)nu * Te * sizeof(int32_t));
      int32_t *epos = arena_calloc(&arena, (size_t)nu * Te * sizeof(int32_t));
      uint8_t *emask = arena_calloc(&arena, (size_t)nu * Te);
      for (int r = 0; r < B; r++) {
        if (r > 0 && src[r] == src[r - 1]) continue;
        int u = src[r];
        for (int j = 0; j < Te; j++) {
          size_t o = (size_t)u * Te + j;
          epos[o] = j;
          if (j < cx[r].n) { eids[o] = ctx_tok(rows[r], &cx[r], j); emask[o] = 1; }
          else eids[o] = m->cfg.pad_token_id;
        }
      }
      Tensor *enc = stack_forward(&g, &m->enc, eids, emask, epos, NULL, nu, Te, m->cfg.encoder_causal, NULL, NULL, NULL, 0);
      Tensor *enc_rep = enc;
      uint8_t *emask_rep = emask;
      if (nu != B) {
        int de = ec->hidden_size;
        enc_rep = tensor_new3(&g, "enc_rep", B, Te, de);
        emask_rep = arena_alloc(&arena, (size_t)B * Te);
        for (int r = 0; r < B; r++) {
          memcpy(enc_rep->data + (size_t)r * Te * de, enc->data + (size_t)src[r] * Te * de, (size_t)Te * de * sizeof(float));
          memcpy(emask_rep + (size_t)r * Te, emask + (size_t)src[r] * Te, Te);
        }
      }
      int32_t *dids = arena_calloc(&arena, (size_t)B * Td * sizeof(int32_t));
      int32_t *dpos = arena_calloc(&arena, (size_t)B * Td * sizeof(int32_t));
      uint8_t *dmask = arena_calloc(&arena, (size_t)B * Td);
      labels = arena_alloc(&arena, (size_t)B * Td * sizeof(int32_t));
      for (int r = 0; r < B; r++)
        for (int j = 0; j < Td; j++) {
          size_t o = (size_t)r * Td + j;
          dpos[o] = j;
          labels[o] = -100;
          dids[o] = m->cfg.pad_token_id;
          if (j < rows[r]->n_tgt) {
            dids[o] = j == 0 ? m->cfg.bos_token_id : rows[r]->tgt[j - 1];
            dmask[o] = 1;
            labels[o] = rows[r]->tgt[j];
          }
        }
      h = stack_forward(&g, &m->dec, dids, dmask, dpos, NULL, B, Td, 1, enc_rep, emask_rep, NULL, Te);
    } else {
      for (int r = 0; r < B; r++) {
        cx[r] = fit_ctx(rows[r], max_dec + 1 - rows[r]->n_tgt);
        if (cx[r].cut && n_truncated) (*n_truncated)++;
        int len = cx[r].n + rows[r]->n_tgt - 1;
        if (len > Td) Td = len;
      }
      int32_t *dids = arena_calloc(&arena, (size_t)B * Td * sizeof(int32_t));
      int32_t *dpos = arena_calloc(&arena, (size_t)B * Td * sizeof(int32_t));
      uint8_t *dmask = arena_calloc(&arena, (size_t)B * Td);
      labels = arena_alloc(&arena, (size_t)B * Td * sizeof(int32_t));
      for (int r = 0; r < B; r++) {
        int nc = cx[r].n, len = nc + rows[r]->n_tgt - 1;
        for (int j = 0; j < Td; j++) {
          size_t o = (size_t)r * Td + j;
          dpos[o] = j;
          labels[o] = -100;
          dids[o] = m->cfg.pad_token_id;
          if (j < len) {
            dids[o] = j < nc ? ctx_tok(rows[r], &cx[r], j) : rows[r]->tgt[j - nc];
            dmask[o] = 1;
            if (j >= nc - 1) labels[o] = rows[r]->tgt[j - (nc - 1)];
          }
        }
      }
      h = stack_forward(&g, &m->dec, dids, dmask, dpos, NULL, B, Td, 1, NULL, NULL, NULL, 0);
    }
    int64_t s2[2] = {(int64_t)B * Td, dc->hidden_size};
    h = tensor_view(&g, h, 2, s2);
    float *nll = arena_calloc(&arena, (size_t)B * Td * sizeof(float));
    lm_head_ce(m, &g, h, labels, 1.0f, nll, NULL);   /* op_softcap_ce, or its bf16-weights twin */
    for (int r = 0; r < B; r++) {
      ScoreResult *rs = &res[ord[b0 + r].idx];
      int nt = rows[r]->n_tgt, first = encdec ? 0 : cx[r].n - 1;
      if (per_token) rs->token_logprobs = t5g_malloc((size_t)nt * sizeof(float));
      double sum = 0;
      for (int j = 0; j < nt; j++) {
        float lp = -nll[(size_t)r * Td + first + j];
        sum += lp;
        if (per_token) rs->token_logprobs[j] = lp;
      }
      rs->sum_logprob = sum;
    }
    if (progress) progress(progress_ctx, b0 + B, n);
  }
  graph_free(&g);
  arena_free(&arena);
  free(ord);
  return 0;
}
