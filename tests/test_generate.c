/* test_generate.c: cached decoding (eval/generate.c) against recomputing the whole decoder at
 * every step without a cache (model_hidden + logits_full, the engine's op_attention), on tiny
 * random models: T5Gemma (tiny-t5gemma), Gemma 2 (tiny-gemma2) and an unequal pair
 * (tiny-t5gemma-unequal: encoder 96 wide, 6 layers; decoder 64 wide, 4 layers). The tiny
 * configs have sliding_window 8; prompts and generations run past it so that the trimmed
 * (ring) caches of the sliding layers and the chunked prefill are exercised.
 * Weights: model_init_random with initializer_range 0.2 (10x the default) and RMSNorm gains
 * drawn from N(0, 0.3), so attention and next-token distributions are far from uniform.
 * The reference samples with the same sampler (gen_choose) and the same per-row Rng, so tokens
 * must be identical and log-probabilities equal to ~1e-5. */
#include "tests/check.h"
#include "eval/generate.h"
#include "model/model.h"
#include "model/rng.h"
#include <stdlib.h>
#include <string.h>

static int load_model(Model *m, const char *name, uint64_t seed) {
  ModelConfig cfg;
  char path[256];
  snprintf(path, sizeof path, "configs/models/%s.json", name);
  if (config_resolve(path, &cfg) != 0) { fprintf(stderr, "%s\n", t5g_last_error()); return -1; }
  cfg.enc.initializer_range = 0.2f;
  cfg.dec.initializer_range = 0.2f;
  if (model_init(m, &cfg) != 0) { fprintf(stderr, "%s\n", t5g_last_error()); return -1; }
  model_init_random(m, seed);
  Rng r; rng_seed(&r, seed * 7 + 1);
  for (int i = 0; i < m->ps.n; i++)
    if (m->ps.e[i].group == PG_NORM)
      for (int64_t j = 0; j < m->ps.e[i].t.n; j++) m->ps.e[i].t.data[j] = (float)(0.3 * rng_normal(&r));
  return 0;
}

/* Uncached reference for one prompt: recompute the full decoder for every new token. */
static void reference(Model *m, const GenConfig *cfg, const int32_t *prompt, int len, int row,
                      int32_t *ids, float *lps, int *n_out, int *stopped) {
  const int encdec = m->cfg.kind == MODEL_T5GEMMA, V = m->cfg.dec.vocab_size;
  Rng rng; gen_row_rng(&rng, cfg->seed, row);
  void *scratch = malloc(gen_scratch_size(V));
  float *z = malloc(sizeof(float) * V);
  Arena arena; Graph g;
  arena_init(&arena, 16 << 20); graph_init(&g, &arena); g.grad_enabled = 0;
  int n = 0; *stopped = 0;
  for (int t = 0; t < cfg->max_new_tokens; t++) {
    graph_reset(&g);
    Batch b;
    int Td = encdec ? t + 1 : len + t;
    batch_alloc(&b, 1, encdec ? len : 0, Td, 0);
    if (encdec) for (int j = 0; j < len; j++) { b.enc_ids[j] = prompt[j]; b.enc_mask[j] = 1; b.enc_pos[j] = j; }
    for (int j = 0; j < Td; j++) {
      int32_t id;
      if (encdec) id = j == 0 ? cfg->bos_id : ids[j - 1];
      else id = j < len ? prompt[j] : ids[j - len];
      b.dec_ids[j] = id; b.dec_mask[j] = 1; b.dec_pos[j] = j; b.labels[j] = -100;
    }
    Tensor *h = model_hidden(m, &g, &b);
    logits_full(h->data + (size_t)(Td - 1) * h->shape[1], 1, model_lm_head(m), model_final_softcap(m), z);
    int32_t tok = gen_choose(z, V, cfg, &rng, scratch);
    gen_log_softmax(z, V);
    ids[n] = tok; lps[n] = z[tok]; n++;
    batch_free(&b);
    int stop = 0;
    for (int i = 0; i < cfg->n_stop; i++) if (cfg->stop_ids[i] == tok) stop = 1;
    if (stop) { *stopped = 1; break; }
  }
  *n_out = n;
  graph_free(&g); arena_free(&arena);
  free(scratch); free(z);
}

/* Compare generate() on a batch of prompts with the per-prompt uncached reference. Returns the
 * largest |logprob difference|, or -1 on a token mismatch (message in err). */
static double compare_batch(Model *m, const GenConfig *cfg, int B, const int *lens, uint64_t seed,
                            char *err, size_t errn, GenOutput *keep) {
  int V = m->cfg.kind == MODEL_T5GEMMA ? m->cfg.enc.vocab_size : m->cfg.dec.vocab_size;
  int32_t **p = malloc(B * sizeof *p);
  Rng r; rng_seed(&r, seed);
  for (int b = 0; b < B; b++) {
    p[b] = malloc(lens[b] * sizeof(int32_t));
    p[b][0] = 2;
    for (int j = 1; j < lens[b]; j++) p[b][j] = 3 + (int32_t)rng_below(&r, V - 3);
  }
  GenOutput *out = calloc(B, sizeof *out);
  if (generate(m, cfg, (const int32_t *const *)p, lens, B, out) != 0) { snprintf(err, errn, "generate: %s", t5g_last_error()); return -1; }
  double worst = 0;
  int32_t *ids = malloc(cfg->max_new_tokens * sizeof(int32_t));
  float *lps = malloc(cfg->max_new_tokens * sizeof(float));
  for (int b = 0; b < B && worst >= 0; b++) {
    int n, stopped;
    reference(m, cfg, p[b], lens[b], b, ids, lps, &n, &stopped);
    if (n != out[b].n || stopped != out[b].stopped) {
      snprintf(err, errn, "row %d: cached %d tokens (stopped %d), uncached %d (stopped %d)", b, out[b].n, out[b].stopped, n, stopped);
      worst = -1; break;
    }
    double sum = 0;
    for (int i = 0; i < n; i++) {
      if (ids[i] != out[b].ids[i]) { snprintf(err, errn, "row %d token %d: cached %d, uncached %d", b, i, out[b].ids[i], ids[i]); worst = -1; break; }
      double dlt = fabs((double)lps[i] - out[b].logprobs[i]);
      if (dlt > worst) worst = dlt;
      sum += out[b].logprobs[i];
    }
    if (worst >= 0 && fabs(sum - out[b].sum_logprob) > 1e-4) { snprintf(err, errn, "row %d: sum_logprob %g vs sum of logprobs %g", b, out[b].sum_logprob, sum); worst = -1; }
  }
  for (int b = 0; b < B; b++) { free(p[b]); if (keep && b == 0) keep[0] = out[b]; else gen_output_free(&out[b]); }
  free(p); free(out); free(ids); free(lps);
  return worst;
}

#define RUN_COMPARE(m, cfg, B, lens, seed) do { char _e[512] = ""; \
    double _w = compare_batch(m, cfg, B, lens, seed, _e, sizeof _e, NULL); \
    CHECK_MSG(_w >= 0, "%s", _e); \
    CHECK_MSG(_w < 2e-5, "largest |logprob diff| %.3g", _w); } while (0)

static void greedy_cfg(GenConfig *c, const Model *m, int max_new) {
  gen_config_default(c, m);
  c->max_new_tokens = max_new;
  c->n_stop = 0;            /* run the full length unless a test asks for stopping */
}

TEST(greedy_t5gemma_past_window) {
  Model m; CHECK(load_model(&m, "tiny-t5gemma", 11) == 0);
  GenConfig c; greedy_cfg(&c, &m, 21);
  int lens[1] = {13};       /* encoder prompt longer than the window too */
  RUN_COMPARE(&m, &c, 1, lens, 5);
  model_free(&m);
}

TEST(greedy_gemma2_chunked_prefill_past_window) {
  Model m; CHECK(load_model(&m, "tiny-gemma2", 12) == 0);
  GenConfig c; greedy_cfg(&c, &m, 20);
  c.prefill_chunk = 4;      /* prompt 11 > window 8 in chunks of 4: ring of 8 + 4 - 1 slots */
  int lens[1] = {11};
  RUN_COMPARE(&m, &c, 1, lens, 6);
  c.prefill_chunk = 64;     /* one chunk longer than the window */
  RUN_COMPARE(&m, &c, 1, lens, 6);
  model_free(&m);
}

TEST(greedy_unequal_t5gemma) {
  Model m; CHECK(load_model(&m, "tiny-t5gemma-unequal", 13) == 0);
  GenConfig c; greedy_cfg(&c, &m, 18);
  int lens[1] = {9};
  RUN_COMPARE(&m, &c, 1, lens, 7);
  model_free(&m);
}

TEST(sampling_seeded_all_models) {
  const char *names[3] = {"tiny-t5gemma", "tiny-gemma2", "tiny-t5gemma-unequal"};
  for (int k = 0; k < 3; k++) {
    Model m; CHECK(load_model(&m, names[k], 20 + k) == 0);
    GenConfig c; greedy_cfg(&c, &m, 17);
    c.greedy = 0; c.temperature = 0.8f; c.seed = 1234;
    int lens[1] = {7};
    RUN_COMPARE(&m, &c, 1, lens, 8);      /* temperature only */
    c.top_k = 40;
    RUN_COMPARE(&m, &c, 1, lens, 9);      /* + top-k */
    c.top_p = 0.9f;
    RUN_COMPARE(&m, &c, 1, lens, 10);     /* + top-p */
    c.top_k = 0; c.temperature = 1.3f;
    RUN_COMPARE(&m, &c, 1, lens, 11);     /* top-p alone */
    model_free(&m);
  }
}

/* A batch of right-padded prompts of different lengths equals each prompt run alone. */
TEST(batch_of_different_lengths) {
  const char *names[3] = {"tiny-t5gemma", "tiny-gemma2", "tiny-t5gemma-unequal"};
  for (int k = 0; k < 3; k++) {
    Model m; CHECK(load_model(&m, names[k], 30 + k) == 0);
    GenConfig c; greedy_cfg(&c, &m, 14);
    c.prefill_chunk = 5;
    int lens[5] = {3, 12, 1, 6, 9};
    RUN_COMPARE(&m, &c, 5, lens, 40 + k);
    c.greedy = 0; c.temperature = 0.9f; c.top_p = 0.95f; c.seed = 99;
    RUN_COMPARE(&m, &c, 5, lens, 50 + k);
    model_free(&m);
  }
}

/* Stopping: a stop id ends a row at its first occurrence, per row in a batch. */
TEST(stop_on_eos_per_row) {
  Model m; CHECK(load_model(&m, "tiny-t5gemma", 41) == 0);
  GenConfig c; greedy_cfg(&c, &m, 16);
  int lens[3] = {4, 8, 6};
  int32_t *p[3];
  for (int b = 0; b < 3; b++) { p[b] = malloc(lens[b] * sizeof(int32_t)); for (int j = 0; j < lens[b]; j++) p[b][j] = j == 0 ? 2 : 10 + 17 * b + 3 * j; }
  GenOutput full[3], cut[3];
  CHECK(generate(&m, &c, (const int32_t *const *)p, lens, 3, full) == 0);
  /* make the 4th token of row 0 the stop token */
  int32_t stop = full[0].ids[3];
  int first[3];
  for (int b = 0; b < 3; b++) {
    first[b] = -1;
    for (int i = 0; i < full[b].n; i++) if (full[b].ids[i] == stop) { first[b] = i; break; }
  }
  CHECK(first[0] >= 0 && first[0] <= 3);
  c.stop_ids[0] = stop; c.n_stop = 1;
  CHECK(generate(&m, &c, (const int32_t *const *)p, lens, 3, cut) == 0);
  for (int b = 0; b < 3; b++) {
    int expect_n = first[b] >= 0 ? first[b] + 1 : c.max_new_tokens;
    CHECK_EQ_INT(cut[b].n, expect_n);
    CHECK_EQ_INT(cut[b].stopped, first[b] >= 0);
    for (int i = 0; i < cut[b].n; i++) { CHECK_EQ_INT(cut[b].ids[i], full[b].ids[i]); CHECK_NEAR(cut[b].logprobs[i], full[b].logprobs[i], 1e-5); }
  }
  /* the uncached reference agrees with the stop as well */
  char e[512] = "";
  int lens1[1] = {5};
  double w = compare_batch(&m, &c, 1, lens1, 77, e, sizeof e, NULL);
  CHECK_MSG(w >= 0 && w < 2e-5, "%s (%.3g)", e, w);
  for (int b = 0; b < 3; b++) { gen_output_free(&full[b]); gen_output_free(&cut[b]); free(p[b]); }
  model_free(&m);
}

/* Sliding layers keep only W + chunk - 1 slots; global layers the whole length. */
TEST(sliding_cache_is_trimmed) {
  Model m; CHECK(load_model(&m, "tiny-gemma2", 3) == 0);
  DecodeState *s = decode_new(&m, 2, 100, 4);
  CHECK(s != NULL);
  for (int l = 0; l < m.cfg.dec.num_hidden_layers; l++)
    CHECK_EQ_INT(decode_cache_slots(s, l), m.cfg.dec.layer_sliding[l] ? 8 + 4 - 1 : 100);
  decode_free(s);
  CHECK(decode_new(&m, 1, 513, 1) == NULL);   /* beyond max_position_embeddings 512 */
  CHECK(strstr(t5g_last_error(), "max_position_embeddings") != NULL);
  model_free(&m);
}

/* Teacher-forced uncached log-probabilities of a generated continuation. */
static void score_uncached(Model *m, const int32_t *prompt, int len, const int32_t *ids, int n, float *lps) {
  const int encdec = m->cfg.kind == MODEL_T5GEMMA, V = m->cfg.dec.vocab_size;
  Arena arena; Graph g;
  arena_init(&arena, 16 << 20); graph_init(&g, &arena); g.grad_enabled = 0;
  Batch b;
  int Td = encdec ? n : len + n - 1;
  batch_alloc(&b, 1, encdec ? len : 0, Td, 0);
  if (encdec) for (int j = 0; j < len; j++) { b.enc_ids[j] = prompt[j]; b.enc_mask[j] = 1; b.enc_pos[j] = j; }
  for (int j = 0; j < Td; j++) {
    b.dec_ids[j] = encdec ? (j == 0 ? m->cfg.bos_token_id : ids[j - 1]) : (j < len ? prompt[j] : ids[j - len]);
    b.dec_mask[j] = 1; b.dec_pos[j] = j;
  }
  Tensor *h = model_hidden(m, &g, &b);
  float *z = malloc(sizeof(float) * V);
  int d = (int)h->shape[1];
  for (int i = 0; i < n; i++) {
    int row = encdec ? i : len - 1 + i;
    logits_full(h->data + (size_t)row * d, 1, model_lm_head(m), model_final_softcap(m), z);
    gen_log_softmax(z, V);
    lps[i] = z[ids[i]];
  }
  free(z); batch_free(&b); graph_free(&g); arena_free(&arena);
}

TEST(beam_search) {
  const char *names[2] = {"tiny-t5gemma", "tiny-gemma2"};
  for (int k = 0; k < 2; k++) {
    Model m; CHECK(load_model(&m, names[k], 60 + k) == 0);
    GenConfig c; greedy_cfg(&c, &m, 12);
    c.prefill_chunk = 3;
    int32_t prompt[10] = {2, 50, 61, 72, 83, 94, 105, 116, 127, 138};
    int len = 10;
    const int32_t *pp = prompt;
    GenOutput g1;
    CHECK(generate(&m, &c, &pp, &len, 1, &g1) == 0);
    /* num_beams = 1 is greedy */
    c.num_beams = 1;
    GenOutput b1[1]; int nb1;
    CHECK(generate_beam(&m, &c, prompt, len, 1, b1, &nb1) == 0);
    CHECK_EQ_INT(nb1, 1);
    CHECK_EQ_INT(b1[0].n, g1.n);
    for (int i = 0; i < g1.n; i++) { CHECK_EQ_INT(b1[0].ids[i], g1.ids[i]); CHECK_NEAR(b1[0].logprobs[i], g1.logprobs[i], 1e-5); }
    /* 4 beams, with and without a stop token, two length penalties */
    for (int variant = 0; variant < 3; variant++) {
      c.num_beams = 4;
      c.length_penalty = variant == 2 ? 0.6f : 1.0f;
      c.n_stop = 0;
      if (variant >= 1) { c.stop_ids[0] = g1.ids[5]; c.n_stop = 1; }   /* a token greedy emits */
      GenOutput gs; const int32_t *pq = prompt;
      c.num_beams = 1;
      CHECK(generate(&m, &c, &pq, &len, 1, &gs) == 0);
      c.num_beams = 4;
      double greedy_score = gs.sum_logprob / pow((double)gs.n, c.length_penalty);
      GenOutput bo[4]; int nbo;
      CHECK(generate_beam(&m, &c, prompt, len, 4, bo, &nbo) == 0);
      CHECK(nbo >= 1);
      CHECK_MSG(bo[0].score >= greedy_score - 1e-6, "variant %d: best beam score %g < greedy %g", variant, bo[0].score, greedy_score);
      for (int i = 0; i < nbo; i++) {
        if (i > 0) CHECK_MSG(bo[i].score <= bo[i - 1].score, "beam results not sorted: %g then %g", bo[i - 1].score, bo[i].score);
        double sum = 0;
        float *ref = malloc(sizeof(float) * bo[i].n);
        score_uncached(&m, prompt, len, bo[i].ids, bo[i].n, ref);
        for (int j = 0; j < bo[i].n; j++) { CHECK_NEAR(bo[i].logprobs[j], ref[j], 2e-5); sum += ref[j]; }
        free(ref);
        CHECK_NEAR(bo[i].sum_logprob, sum, 1e-4);
        CHECK_NEAR(bo[i].score, bo[i].sum_logprob / pow((double)bo[i].n, c.length_penalty), 1e-9);
        if (bo[i].stopped) CHECK(bo[i].ids[bo[i].n - 1] == c.stop_ids[0]);
        else CHECK_EQ_INT(bo[i].n, c.max_new_tokens);
        for (int j = 0; j + 1 < bo[i].n; j++) CHECK(c.n_stop == 0 || bo[i].ids[j] != c.stop_ids[0]);
        gen_output_free(&bo[i]);
      }
      gen_output_free(&gs);
    }
    gen_output_free(&g1); gen_output_free(&b1[0]);
    model_free(&m);
  }
}

/* min_new_tokens: the stop token cannot be chosen before N tokens (greedy, sampling, beams); the
 * logprobs stay the model's own (teacher-forced uncached scores of the same tokens). */
TEST(min_new_tokens) {
  Model m; CHECK(load_model(&m, "tiny-t5gemma", 43) == 0);
  GenConfig c; greedy_cfg(&c, &m, 12);
  int32_t prompt[6] = {2, 31, 47, 59, 73, 88};
  int len = 6;
  const int32_t *pp = prompt;
  GenOutput full;
  CHECK(generate(&m, &c, &pp, &len, 1, &full) == 0);
  c.stop_ids[0] = full.ids[0]; c.n_stop = 1;     /* greedy's first choice becomes the stop token */
  for (int sampling = 0; sampling < 2; sampling++) {
    c.greedy = !sampling; c.temperature = sampling ? 0.8f : 1.0f; c.seed = 5;
    GenOutput g0, g4;
    c.min_new_tokens = 0;
    CHECK(generate(&m, &c, &pp, &len, 1, &g0) == 0);
    if (!sampling) { CHECK_EQ_INT(g0.n, 1); CHECK_EQ_INT(g0.stopped, 1); }
    c.min_new_tokens = 4;
    CHECK(generate(&m, &c, &pp, &len, 1, &g4) == 0);
    CHECK(g4.n >= 4);
    for (int i = 0; i < 4; i++) CHECK_MSG(g4.ids[i] != c.stop_ids[0], "stop token at %d < min_new_tokens", i);
    if (!sampling) CHECK_MSG(g4.logprobs[0] < full.logprobs[0], "first token %d (%g) should be below the masked argmax (%g)", g4.ids[0], g4.logprobs[0], full.logprobs[0]);
    float *ref = malloc(sizeof(float) * g4.n);
    score_uncached(&m, prompt, len, g4.ids, g4.n, ref);
    for (int i = 0; i < g4.n; i++) CHECK_NEAR(g4.logprobs[i], ref[i], 2e-5);
    free(ref);
    gen_output_free(&g0); gen_output_free(&g4);
  }
  c.greedy = 1; c.num_beams = 3; c.min_new_tokens = 5;
  GenOutput bo[3]; int nbo;
  CHECK(generate_beam(&m, &c, prompt, len, 3, bo, &nbo) == 0);
  CHECK(nbo >= 1);
  for (int i = 0; i < nbo; i++) {
    CHECK(bo[i].n >= 5);
    for (int j = 0; j < 5; j++) CHECK(bo[i].ids[j] != c.stop_ids[0]);
    gen_output_free(&bo[i]);
  }
  c.num_beams = 1; c.min_new_tokens = 13;   /* > max_new_tokens 12 */
  GenOutput bad;
  CHECK(generate(&m, &c, &pp, &len, 1, &bad) == -1);
  CHECK(strstr(t5g_last_error(), "--min-new-tokens") != NULL);
  gen_output_free(&full);
  model_free(&m);
}

TEST(sampler_filters) {
  /* top-k = 1 and a tiny top-p both reduce sampling to argmax; temperature spreads draws */
  int V = 50;
  float z[50];
  for (int i = 0; i < V; i++) z[i] = (float)((i * 37) % 50) / 10.0f;   /* max at i = 27 (4.9) */
  GenConfig c; gen_config_default(&c, NULL);
  void *scr = malloc(gen_scratch_size(V));
  Rng r; rng_seed(&r, 5);
  c.greedy = 1; CHECK_EQ_INT(gen_choose(z, V, &c, &r, scr), 27);
  c.greedy = 0; c.top_k = 1;
  for (int i = 0; i < 50; i++) CHECK_EQ_INT(gen_choose(z, V, &c, &r, scr), 27);
  c.top_k = 0; c.top_p = 1e-3f;
  for (int i = 0; i < 50; i++) CHECK_EQ_INT(gen_choose(z, V, &c, &r, scr), 27);
  /* top-k = 3: only the three largest (27: 4.9, 4: 4.8, 31: 4.7) appear, in ratio e^0.1 */
  c.top_p = 1; c.top_k = 3;
  int cnt[50] = {0};
  for (int i = 0; i < 30000; i++) cnt[gen_choose(z, V, &c, &r, scr)]++;
  CHECK_EQ_INT(cnt[27] + cnt[4] + cnt[31], 30000);
  double p27 = 1.0 / (1 + exp(-0.1) + exp(-0.2));
  CHECK_NEAR(cnt[27] / 30000.0, p27, 0.015);
  /* top-p = 0.5 over the top-3 renormalised: keeps 27 (0.367) and 4 (0.332) only */
  c.top_p = 0.5f;
  memset(cnt, 0, sizeof cnt);
  for (int i = 0; i < 20000; i++) cnt[gen_choose(z, V, &c, &r, scr)]++;
  CHECK_EQ_INT(cnt[27] + cnt[4], 20000);
  CHECK_NEAR(cnt[27] / 20000.0, 1.0 / (1 + exp(-0.1)), 0.015);
  free(scr);
}

TEST_MAIN()
