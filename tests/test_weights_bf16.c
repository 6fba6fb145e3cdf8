/* test_weights_bf16.c: bf16 weights for inference (model/weights_bf16.h, issue 10).
 *
 * The reference is the unchanged f32 model whose weights are rounded to bf16 in place
 * (wbf16_round_params): a bf16-weight model must compute the same thing on the same values.
 *  - the forward (encoder and decoder hidden states of model_hidden, no-grad) is bit-identical:
 *    the layers run the same ops on the same f32 values (materialised one layer at a time);
 *  - the loss, per-row NLL and argmax statistics of the LM head (computed by vocabulary blocks
 *    for bf16) agree to 1e-6; so do the scores of score_items;
 *  - cached generation (greedy and sampled) gives the same tokens, log-probabilities to 1e-5;
 *  - loading: a BF16 checkpoint (single file and sharded) loads into bf16 storage with exactly
 *    its stored values and into f32 exactly; an F32 checkpoint loads into bf16 rounded to
 *    nearest even; the f32 inference load has no gradient buffer;
 *  - a layer's matrices exist only while it is materialised;
 *  - model_load_infer refuses a model too big for the machine before allocating (config only),
 *    and AUTO picks f32 for a model that fits.
 * Models: tiny-t5gemma, tiny-t5gemma-unequal and tiny-gemma2 with initializer_range 0.2 and
 * random norm gains, so that outputs are far from uniform. */
#include "tests/check.h"
#include "eval/generate.h"
#include "eval/score.h"
#include "model/hf_io.h"
#include "model/memory.h"
#include "model/model.h"
#include "model/rng.h"
#include "model/safetensors.h"
#include "model/weights_bf16.h"
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int make_model(Model *m, const char *name, uint64_t seed) {
  ModelConfig cfg;
  char path[256];
  snprintf(path, sizeof path, "configs/models/%s.json", name);
  if (config_resolve(path, &cfg) != 0) return -1;
  cfg.enc.initializer_range = 0.2f;
  cfg.dec.initializer_range = 0.2f;
  if (model_init(m, &cfg) != 0) return -1;
  model_init_random(m, seed);
  Rng r; rng_seed(&r, seed * 7 + 1);
  for (int i = 0; i < m->ps.n; i++)
    if (m->ps.e[i].group == PG_NORM)
      for (int64_t j = 0; j < m->ps.e[i].t.n; j++) m->ps.e[i].t.data[j] = (float)(0.3 * rng_normal(&r));
  wbf16_round_params(&m->ps);
  return 0;
}

/* A right-padded batch of B rows with random ids; every decoder token labelled except padding. */
static void make_batch(const Model *m, Batch *b, int B, int Te, int Td, uint64_t seed) {
  const int encdec = m->cfg.kind == MODEL_T5GEMMA;
  batch_alloc(b, B, encdec ? Te : 0, Td, 0);
  Rng r; rng_seed(&r, seed);
  int V = m->cfg.dec.vocab_size;
  for (int i = 0; i < B; i++) {
    int ne = encdec ? Te - i % 3 : 0, nd = Td - (i * 2) % 5;
    for (int j = 0; j < (encdec ? Te : 0); j++) {
      size_t o = (size_t)i * Te + j;
      b->enc_pos[o] = j;
      b->enc_mask[o] = j < ne;
      b->enc_ids[o] = j < ne ? (j == 0 ? 2 : 3 + (int)(rng_u64(&r) % (uint64_t)(V - 3))) : 0;
    }
    for (int j = 0; j < Td; j++) {
      size_t o = (size_t)i * Td + j;
      b->dec_pos[o] = j;
      b->dec_mask[o] = j < nd;
      b->dec_ids[o] = j < nd ? (j == 0 ? 2 : 3 + (int)(rng_u64(&r) % (uint64_t)(V - 3))) : 0;
      b->labels[o] = j < nd ? 3 + (int)(rng_u64(&r) % (uint64_t)(V - 3)) : -100;
    }
  }
  batch_count_targets(b);
}

/* Forward both models on one batch: hidden states must be bit-identical, losses within 1e-6. */
static int compare_forward(Model *f, Model *h16, int B, int Te, int Td, uint64_t seed, char *why, size_t n) {
  Batch b;
  make_batch(f, &b, B, Te, Td, seed);
  Arena a1, a2; Graph g1, g2;
  arena_init(&a1, 1 << 20); arena_init(&a2, 1 << 20);
  graph_init(&g1, &a1); graph_init(&g2, &a2);
  g1.grad_enabled = 0; g2.grad_enabled = 0;
  int64_t N = (int64_t)B * Td;
  float *n1 = calloc(N, sizeof(float)), *n2 = calloc(N, sizeof(float));
  LossStats s1, s2;
  Tensor *h1 = NULL, *h2 = NULL;
  Tensor *l1 = model_loss(f, &g1, &b, (float)b.n_targets, &s1, n1, &h1);
  Tensor *l2 = model_loss(h16, &g2, &b, (float)b.n_targets, &s2, n2, &h2);
  int ok = 1;
  if (h1->n != h2->n || memcmp(h1->data, h2->data, sizeof(float) * h1->n) != 0) {
    double mx = 0;
    for (int64_t i = 0; i < h1->n && i < h2->n; i++) { double d = fabs(h1->data[i] - h2->data[i]); if (d > mx) mx = d; }
    snprintf(why, n, "hidden states differ (max |diff| %.3g)", mx);
    ok = 0;
  } else if (fabs(l1->data[0] - l2->data[0]) > 1e-6 * fabs(l1->data[0]) + 1e-7) {
    snprintf(why, n, "loss %.9g vs %.9g", l1->data[0], l2->data[0]);
    ok = 0;
  } else if (s1.n_tokens != s2.n_tokens || s1.n_correct != s2.n_correct || fabs(s1.sum_nll - s2.sum_nll) > 1e-6 * fabs(s1.sum_nll)) {
    snprintf(why, n, "stats %lld/%lld/%.9g vs %lld/%lld/%.9g", (long long)s1.n_tokens, (long long)s1.n_correct, s1.sum_nll,
             (long long)s2.n_tokens, (long long)s2.n_correct, s2.sum_nll);
    ok = 0;
  } else {
    for (int64_t i = 0; i < N; i++)
      if (fabs(n1[i] - n2[i]) > 1e-6 * fabs(n1[i]) + 1e-6) { snprintf(why, n, "row_nll[%lld] %.9g vs %.9g", (long long)i, n1[i], n2[i]); ok = 0; break; }
  }
  free(n1); free(n2);
  graph_free(&g1); graph_free(&g2); arena_free(&a1); arena_free(&a2);
  batch_free(&b);
  return ok;
}

TEST(forward_and_loss_equal_f32_of_rounded_weights) {
  const char *names[] = {"tiny-t5gemma", "tiny-t5gemma-unequal", "tiny-gemma2"};
  for (int k = 0; k < 3; k++) {
    Model f, h;
    CHECK_MSG(make_model(&f, names[k], 11 + k) == 0, "%s", t5g_last_error());
    model_to_bf16(&h, &f);
    wbf16_set_head_rows(&h, 100);   /* 512 = 5 blocks of 100 + 12 */
    CHECK(model_is_bf16(&h) && !model_is_bf16(&f));
    char why[256] = "";
    CHECK_MSG(compare_forward(&f, &h, 5, 13, 11, 100 + k, why, sizeof why), "%s: %s", names[k], why);
    /* longer than the sliding window (8), a second batch reusing the same bf16 model */
    CHECK_MSG(compare_forward(&f, &h, 3, 21, 19, 200 + k, why, sizeof why), "%s: %s", names[k], why);
    model_free(&h); model_free(&f);
  }
}

TEST(layer_matrices_exist_only_while_materialised) {
  Model f, h;
  CHECK(make_model(&f, "tiny-t5gemma", 3) == 0);
  model_to_bf16(&h, &f);
  CHECK(h.ps.data == NULL && h.ps.grad == NULL);
  CHECK(h.dec.embed->data == NULL && h.enc.embed->data == NULL);
  CHECK(h.dec.layers[0].q->data == NULL);
  CHECK(h.dec.layers[0].ln_pre_attn->data != NULL && h.dec.final_norm->data != NULL);
  CHECK(memcmp(h.dec.layers[2].ln_post_ffw->data, f.dec.layers[2].ln_post_ffw->data, sizeof(float) * f.dec.layers[2].ln_post_ffw->n) == 0);
  wbf16_layer(&h.dec, &h.dec.layers[1]);
  const LayerParams *L = &h.dec.layers[1], *R = &f.dec.layers[1];
  const Tensor *a[] = {L->q, L->k, L->v, L->o, L->xq, L->xk, L->xv, L->xo, L->gate, L->up, L->down};
  const Tensor *b[] = {R->q, R->k, R->v, R->o, R->xq, R->xk, R->xv, R->xo, R->gate, R->up, R->down};
  for (int j = 0; j < 11; j++) {
    CHECK(a[j]->data != NULL);
    CHECK_MSG(memcmp(a[j]->data, b[j]->data, sizeof(float) * b[j]->n) == 0, "%s", b[j]->name);
  }
  wbf16_layer(&h.enc, &h.enc.layers[3]);
  CHECK(h.dec.layers[1].q->data == NULL && h.dec.layers[1].down->data == NULL);
  CHECK(h.enc.layers[3].up->data != NULL);
  CHECK(memcmp(h.enc.layers[3].up->data, f.enc.layers[3].up->data, sizeof(float) * f.enc.layers[3].up->n) == 0);
  /* embedding rows and logits */
  /* the fused product of few rows, directly from the bf16 storage (layer 2 is not materialised) */
  {
    float x[3 * 128], y2[3 * 64];
    for (int i = 0; i < 3 * 128; i++) x[i] = 0.01f * (float)((i * 37) % 101) - 0.5f;
    const Tensor *W = h.dec.layers[2].down, *R = f.dec.layers[2].down;   /* [64, 128] */
    CHECK(W->data == NULL);
    wbf16_matmul_rows(&h.dec, W, x, 3, y2, 64);
    for (int r = 0; r < 3; r++)
      for (int j = 0; j < 64; j++) {
        double ref = 0;
        for (int k = 0; k < 128; k++) ref += (double)x[r * 128 + k] * R->data[j * 128 + k];
        CHECK_CLOSE_REL(y2[r * 64 + j], ref, 1e-5, 1e-6);
      }
  }
  int32_t ids[4] = {0, 7, 511, 2};
  float *e = malloc(sizeof(float) * 4 * 64);
  wbf16_embed_rows(&h.dec, ids, 4, e);
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 64; j++) CHECK(e[i * 64 + j] == f.dec.embed->data[ids[i] * 64 + j] * f.dec.embed_scale);
  float *z1 = malloc(sizeof(float) * 4 * 512), *z2 = malloc(sizeof(float) * 4 * 512);
  lm_head_logits(&f, e, 4, z1);
  const int64_t rows[] = {512, 100, 16, 1, 0};   /* 0: the default, fused for 4 rows */
  for (int k = 0; k < 5; k++) {
    wbf16_set_head_rows(&h, rows[k]);
    memset(z2, 0, sizeof(float) * 4 * 512);
    lm_head_logits(&h, e, 4, z2);
    for (int i = 0; i < 4 * 512; i++) CHECK_CLOSE_REL(z2[i], z1[i], 1e-6, 1e-6);
  }
  free(e); free(z1); free(z2);
  model_free(&h); model_free(&f);
}

TEST(score_items_equal) {
  const char *names[] = {"tiny-t5gemma", "tiny-gemma2"};
  for (int k = 0; k < 2; k++) {
    Model f, h;
    CHECK(make_model(&f, names[k], 21 + k) == 0);
    model_to_bf16(&h, &f);
    wbf16_set_head_rows(&h, 48);
    enum { NI = 7 };
    ScoreItem it[NI];
    int32_t buf[NI][2][24];
    Rng r; rng_seed(&r, 5 + k);
    for (int i = 0; i < NI; i++) {
      it[i].n_ctx = 3 + i * 2; it[i].n_tgt = 2 + (i * 5) % 9;
      for (int j = 0; j < 24; j++) { buf[i][0][j] = 3 + rng_u64(&r) % 500; buf[i][1][j] = 3 + rng_u64(&r) % 500; }
      buf[i][0][0] = 2;
      it[i].ctx = buf[i][0]; it[i].tgt = buf[i][1];
    }
    ScoreResult r1[NI], r2[NI];
    CHECK(score_items(&f, it, NI, 3, 1, r1, NULL, NULL, NULL) == 0);
    CHECK(score_items(&h, it, NI, 3, 1, r2, NULL, NULL, NULL) == 0);
    for (int i = 0; i < NI; i++) {
      CHECK_CLOSE_REL(r2[i].sum_logprob, r1[i].sum_logprob, 1e-6, 1e-6);
      for (int j = 0; j < it[i].n_tgt; j++) CHECK_CLOSE_REL(r2[i].token_logprobs[j], r1[i].token_logprobs[j], 1e-6, 1e-6);
      free(r1[i].token_logprobs); free(r2[i].token_logprobs);
    }
    model_free(&h); model_free(&f);
  }
}

TEST(generation_equal) {
  const char *names[] = {"tiny-t5gemma", "tiny-t5gemma-unequal", "tiny-gemma2"};
  for (int k = 0; k < 3; k++) {
    Model f, h;
    CHECK(make_model(&f, names[k], 31 + k) == 0);
    model_to_bf16(&h, &f);
    if (k != 1) wbf16_set_head_rows(&h, 33 + 31 * k);
    enum { B = 3 };
    int lens[B] = {5, 12, 9};
    int32_t pr[B][12];
    const int32_t *pp[B];
    Rng r; rng_seed(&r, 77 + k);
    for (int b = 0; b < B; b++) { pr[b][0] = 2; for (int j = 1; j < 12; j++) pr[b][j] = 3 + rng_u64(&r) % 500; pp[b] = pr[b]; }
    for (int mode = 0; mode < 2; mode++) {
      GenConfig gc;
      gen_config_default(&gc, &f);
      gc.max_new_tokens = 14;
      gc.n_stop = 0;
      if (mode == 1) { gc.greedy = 0; gc.temperature = 0.9f; gc.top_k = 50; gc.seed = 9; }
      GenOutput o1[B], o2[B];
      CHECK_MSG(generate(&f, &gc, pp, lens, B, o1) == 0, "%s", t5g_last_error());
      CHECK_MSG(generate(&h, &gc, pp, lens, B, o2) == 0, "%s", t5g_last_error());
      for (int b = 0; b < B; b++) {
        CHECK_EQ_INT(o2[b].n, o1[b].n);
        for (int j = 0; j < o1[b].n; j++) {
          CHECK_MSG(o1[b].ids[j] == o2[b].ids[j], "%s mode %d row %d token %d: %d vs %d", names[k], mode, b, j, o1[b].ids[j], o2[b].ids[j]);
          CHECK_CLOSE_REL(o2[b].logprobs[j], o1[b].logprobs[j], 1e-5, 1e-5);
        }
        gen_output_free(&o1[b]); gen_output_free(&o2[b]);
      }
    }
    /* beam search reorders the caches; the bf16 path must follow */
    GenConfig gc;
    gen_config_default(&gc, &f);
    gc.max_new_tokens = 6; gc.num_beams = 3; gc.n_stop = 0;
    GenOutput b1[3], b2[3]; int n1, n2;
    CHECK(generate_beam(&f, &gc, pp[1], lens[1], 3, b1, &n1) == 0);
    CHECK(generate_beam(&h, &gc, pp[1], lens[1], 3, b2, &n2) == 0);
    CHECK_EQ_INT(n1, n2);
    for (int i = 0; i < n1; i++) {
      CHECK_EQ_INT(b1[i].n, b2[i].n);
      CHECK(memcmp(b1[i].ids, b2[i].ids, sizeof(int32_t) * b1[i].n) == 0);
      CHECK_CLOSE_REL(b2[i].score, b1[i].score, 1e-5, 1e-5);
      gen_output_free(&b1[i]); gen_output_free(&b2[i]);
    }
    model_free(&h); model_free(&f);
  }
}

static int rm_rf(const char *dir) { char cmd[512]; snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir); return system(cmd); }

TEST(load_bf16_and_f32_checkpoints) {
  Model f;
  CHECK(make_model(&f, "tiny-t5gemma", 41) == 0);
  char dir[] = "/tmp/t5g_wbf16_XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  char d1[300], d2[300], d3[300];
  snprintf(d1, sizeof d1, "%s/bf16", dir); snprintf(d2, sizeof d2, "%s/bf16_sharded", dir); snprintf(d3, sizeof d3, "%s/f32", dir);
  HfSaveOptions o1 = {ST_BF16, 0, 0}, o2 = {ST_BF16, 60000, 0}, o3 = {ST_F32, 0, 0};
  CHECK(hf_save(&f.ps, &f.cfg, d1, &o1) == 0);
  CHECK(hf_save(&f.ps, &f.cfg, d2, &o2) == 0);
  char idx[400]; snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", d2);
  CHECK(t5g_file_exists(idx));
  /* the f32 checkpoint holds unrounded values: the bf16 load rounds them */
  Model u;
  CHECK(make_model(&u, "tiny-t5gemma", 41) == 0);
  Rng r; rng_seed(&r, 3);
  for (int64_t j = 0; j < u.ps.n_total; j++) u.ps.data[j] += 1e-4f * (float)rng_normal(&r);
  CHECK(hf_save(&u.ps, &u.cfg, d3, &o3) == 0);
  const char *dirs[3] = {d1, d2, d3};
  for (int k = 0; k < 3; k++) {
    Model h, g;
    CHECK_MSG(model_load_weights(&h, dirs[k], WEIGHTS_BF16) == 0, "%s", t5g_last_error());
    CHECK_MSG(model_load_weights(&g, dirs[k], WEIGHTS_F32) == 0, "%s", t5g_last_error());
    CHECK(model_is_bf16(&h) && !model_is_bf16(&g));
    CHECK(g.ps.grad == NULL && g.ps.data != NULL);
    const Model *ref = k < 2 ? &f : &u;
    for (int i = 0; i < g.ps.n; i++) {
      const ParamEntry *e = &g.ps.e[i];
      CHECK(e->frozen && !e->t.requires_grad);
      CHECK_MSG(memcmp(e->t.data, ref->ps.e[i].t.data, sizeof(float) * e->t.n) == 0, "%s: f32 load differs", e->name);
    }
    /* bf16 storage holds the rounded values: compare through a bf16 model made in memory */
    Model want;
    model_to_bf16(&want, ref);
    char why[256] = "";
    CHECK_MSG(compare_forward(&want, &h, 2, 9, 7, 5, why, sizeof why), "%s", why);
    for (int l = 0; l < h.cfg.dec.num_hidden_layers; l++) {
      wbf16_layer(&h.dec, &h.dec.layers[l]);
      wbf16_layer(&want.dec, &want.dec.layers[l]);
      CHECK(memcmp(h.dec.layers[l].gate->data, want.dec.layers[l].gate->data, sizeof(float) * want.dec.layers[l].gate->n) == 0);
      CHECK(memcmp(h.dec.layers[l].xk->data, want.dec.layers[l].xk->data, sizeof(float) * want.dec.layers[l].xk->n) == 0);
      CHECK(memcmp(h.dec.layers[l].ln_pre_cross->data, want.dec.layers[l].ln_pre_cross->data, sizeof(float) * h.cfg.dec.hidden_size) == 0);
    }
    int32_t ids[3] = {1, 300, 511};
    float e1[3 * 64], e2[3 * 64];
    wbf16_embed_rows(&h.enc, ids, 3, e1);
    wbf16_embed_rows(&want.enc, ids, 3, e2);
    CHECK(memcmp(e1, e2, sizeof e1) == 0);
    if (k < 2) for (int i = 0; i < 3 * 64; i++) CHECK(e1[i] == f.enc.embed->data[ids[i / 64] * 64 + i % 64] * f.enc.embed_scale);
    model_free(&want); model_free(&h); model_free(&g);
  }
  CHECK(rm_rf(dir) == 0);
  model_free(&u); model_free(&f);
}

/* A config far beyond any machine: refused from config.json alone, before allocating. */
TEST(load_infer_refuses_too_big_and_auto_picks_f32) {
  char dir[] = "/tmp/t5g_wbf16_XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  ModelConfig c;
  CHECK(config_resolve("configs/models/gemma-2-27b.json", &c) == 0);
  c.dec.num_hidden_layers = 120;
  for (int i = 0; i < 120; i++) c.dec.layer_sliding[i] = i % 2 == 0;
  c.dec.intermediate_size = 36864 * 8;
  char cp[400]; snprintf(cp, sizeof cp, "%s/config.json", dir);
  CHECK(config_save(&c, cp) == 0);
  int64_t rss0 = t5g_current_rss();
  double t0 = t5g_now();
  const char *modes[] = {"auto", "bf16", "f32"};
  for (int k = 0; k < 3; k++) {
    Model m;
    WeightsMode wm;
    CHECK(weights_mode_parse(modes[k], &wm) == 0);
    InferPlan p = {"score", 4, 64, 64, 0};
    CHECK(model_load_infer(&m, dir, wm, &p, NULL) == -1);
    const char *e = t5g_last_error();
    CHECK_MSG(strstr(e, "score with") && strstr(e, "needs about") && strstr(e, "available") && strstr(e, "t5gemma info"), "%s", e);
    CHECK_MSG(strstr(e, k == 2 ? "f32 weights" : "bf16 weights"), "%s", e);
  }
  CHECK(t5g_now() - t0 < 2.0);
  CHECK(t5g_current_rss() - rss0 < ((int64_t)64 << 20));
  WeightsMode bad;
  CHECK(weights_mode_parse("fp8", &bad) == -1 && strstr(t5g_last_error(), "auto, f32 or bf16"));
  /* a tiny model fits: auto loads it with f32 weights (and its memory estimate is small) */
  Model f, m;
  CHECK(make_model(&f, "tiny-gemma2", 5) == 0);
  char d2[300]; snprintf(d2, sizeof d2, "%s/tiny", dir);
  HfSaveOptions so = {ST_BF16, 0, 0};
  CHECK(hf_save(&f.ps, &f.cfg, d2, &so) == 0);
  InferPlan p = {"generate", 2, 16, 0, 8};
  WeightsMode got = WEIGHTS_AUTO;
  CHECK_MSG(model_load_infer(&m, d2, WEIGHTS_AUTO, &p, &got) == 0, "%s", t5g_last_error());
  CHECK(got == WEIGHTS_F32 && !model_is_bf16(&m));
  model_free(&m);
  CHECK(model_load_infer(&m, d2, WEIGHTS_BF16, &p, &got) == 0);
  CHECK(got == WEIGHTS_BF16 && model_is_bf16(&m));
  model_free(&m); model_free(&f);
  CHECK(rm_rf(dir) == 0);
}

/* Memory estimates: bf16 halves the weights; the generation estimate grows with the caches. */
TEST(memory_estimates) {
  ModelConfig c;
  CHECK(config_resolve("configs/models/t5gemma-2b-2b.json", &c) == 0);
  int64_t P = config_param_counts(&c).total;
  MemEstimate f = memory_infer(&c, 4, 256, 256, 0), b = memory_infer(&c, 4, 256, 256, 1);
  CHECK_EQ_INT(f.weights, 4 * P);
  CHECK(b.weights > 2 * P && b.weights < 2 * P + ((int64_t)1 << 30));
  CHECK(b.activations == f.activations);
  MemEstimate g1 = memory_generate(&c, 1, 128, 16, 1), g2 = memory_generate(&c, 8, 512, 256, 1);
  CHECK(g1.weights == b.weights && g2.activations > g1.activations);
  /* 2B decoder: 26 layers x 2 (K, V) x 8 rows x 256 slots x 1024 (K·h) floats of self-attention cache */
  CHECK(g2.activations >= (int64_t)26 * 2 * 8 * 256 * 1024 * 4);
  CHECK(b.total < ((int64_t)14 << 30) && f.total > ((int64_t)22 << 30));
}

TEST_MAIN()
