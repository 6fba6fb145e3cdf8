/* Model-level invariants of the engine (the math itself is checked against the PyTorch
 * reference in tests/t_model_ref.sh): the no-grad forward (layer by layer, memory released)
 * equals the recorded one; recomputation gives the same loss and gradients; the arena holds no
 * more than the memory model predicts; frozen parameters get no gradient. */
#include "tests/check.h"
#include "model/memory.h"
#include "model/model.h"

static void fill_batch(Batch *b, const ModelConfig *c, int B, int Te, int Td, uint64_t seed) {
  batch_alloc(b, B, Te, Td, 0);
  Rng r; rng_seed(&r, seed);
  for (int i = 0; i < B; i++) {
    int le = Te - (i % 3), ld = Td - (i % 2) * 3;
    for (int t = 0; t < Te; t++) { int64_t k = (int64_t)i * Te + t; b->enc_ids[k] = t < le ? 3 + (int)rng_below(&r, c->enc.vocab_size - 3) : 0; b->enc_mask[k] = t < le; b->enc_pos[k] = t; }
    for (int t = 0; t < Td; t++) { int64_t k = (int64_t)i * Td + t; b->dec_ids[k] = t < ld ? 3 + (int)rng_below(&r, c->dec.vocab_size - 3) : 0; b->dec_mask[k] = t < ld; b->dec_pos[k] = t;
                                   b->labels[k] = t < ld ? (int)rng_below(&r, c->dec.vocab_size) : -100; }
  }
  batch_count_targets(b);
}

static int setup(const char *preset, Model *m, Batch *b, int Te, int Td) {
  ModelConfig c;
  if (config_resolve(preset, &c) != 0 || model_init(m, &c) != 0) return -1;
  model_init_random(m, 9);
  for (int i = 0; i < m->ps.n; i++) {   /* larger weights so that every path matters */
    ParamEntry *e = &m->ps.e[i];
    for (int64_t j = 0; j < e->t.n; j++) e->t.data[j] = e->group == PG_NORM ? 0.1f * (float)((j * 7 + i) % 5) - 0.2f : e->t.data[j] * 5.0f;
  }
  fill_batch(b, &m->cfg, 3, c.kind == MODEL_T5GEMMA ? Te : 0, Td, 4);
  return 0;
}

TEST(nograd_forward_equals_recorded_forward) {
  const char *presets[] = {"tiny-t5gemma", "tiny-gemma2", "tiny-t5gemma-unequal"};
  for (int p = 0; p < 3; p++) {
    Model m; Batch b;
    CHECK_MSG(setup(presets[p], &m, &b, 13, 12) == 0, "%s", t5g_last_error());
    Arena a; arena_init(&a, 0); Graph g; graph_init(&g, &a);
    Tensor *h1 = model_hidden(&m, &g, &b);
    float *ref = t5g_malloc(h1->n * sizeof(float)); memcpy(ref, h1->data, h1->n * sizeof(float));
    size_t peak_grad_mode = a.peak;
    graph_reset(&g);
    a.peak = 0;
    g.grad_enabled = 0;
    Tensor *h2 = model_hidden(&m, &g, &b);
    CHECK_EQ_INT(h2->n, h1->n);
    CHECK_MSG(memcmp(ref, h2->data, h2->n * sizeof(float)) == 0, "%s: no-grad hidden differs", presets[p]);
    CHECK_EQ_INT(g.n_nodes, 0);
    CHECK_MSG(a.peak < peak_grad_mode / 2, "%s: no-grad arena peak %zu vs recorded %zu", presets[p], a.peak, peak_grad_mode);
    free(ref); graph_free(&g); arena_free(&a); batch_free(&b); model_free(&m);
  }
}

TEST(recompute_gives_identical_loss_and_gradients) {
  Model m; Batch b;
  CHECK_MSG(setup("tiny-t5gemma", &m, &b, 13, 12) == 0, "%s", t5g_last_error());
  Arena a; arena_init(&a, 0); Graph g; graph_init(&g, &a);
  Tensor *l1 = model_loss(&m, &g, &b, (float)b.n_targets, NULL, NULL, NULL);
  float v1 = l1->data[0];
  graph_backward(&g, l1);
  size_t peak_plain = a.peak;
  float *g1 = t5g_malloc(m.ps.n_total * sizeof(float)); memcpy(g1, m.ps.grad, m.ps.n_total * sizeof(float));
  params_zero_grad(&m.ps);
  graph_reset(&g); a.peak = 0;
  m.recompute = 1;
  Tensor *l2 = model_loss(&m, &g, &b, (float)b.n_targets, NULL, NULL, NULL);
  CHECK(l2->data[0] == v1);
  graph_backward(&g, l2);
  CHECK_MSG(memcmp(g1, m.ps.grad, m.ps.n_total * sizeof(float)) == 0, "recomputed gradients differ");
  CHECK_MSG(a.peak < peak_plain, "recompute arena peak %zu not below %zu", a.peak, peak_plain);
  free(g1); graph_free(&g); arena_free(&a); batch_free(&b); model_free(&m);
}

TEST(frozen_parameters_get_no_gradient) {
  Model m; Batch b;
  CHECK_MSG(setup("tiny-t5gemma", &m, &b, 13, 12) == 0, "%s", t5g_last_error());
  model_set_cross_attn_only(&m, 1);
  for (int64_t i = 0; i < m.ps.n_total; i++) m.ps.grad[i] = 7.0f;   /* sentinel: must stay */
  for (int i = 0; i < m.ps.n; i++) if (m.ps.e[i].cross_attn) memset(m.ps.e[i].t.grad, 0, m.ps.e[i].t.n * sizeof(float));
  Arena a; arena_init(&a, 0); Graph g; graph_init(&g, &a);
  Tensor *l = model_loss(&m, &g, &b, (float)b.n_targets, NULL, NULL, NULL);
  graph_backward(&g, l);
  for (int i = 0; i < m.ps.n; i++) {
    ParamEntry *e = &m.ps.e[i];
    double s = 0; int untouched = 1;
    for (int64_t j = 0; j < e->t.n; j++) { s += fabs(e->t.grad[j]); untouched &= e->t.grad[j] == 7.0f; }
    if (e->cross_attn) CHECK_MSG(s > 0, "%s got no gradient", e->name);
    else CHECK_MSG(untouched, "frozen %s was written", e->name);
  }
  graph_free(&g); arena_free(&a); batch_free(&b); model_free(&m);
}

TEST(arena_peak_within_memory_prediction) {
  Model m; Batch b;
  CHECK_MSG(setup("tiny-t5gemma", &m, &b, 13, 12) == 0, "%s", t5g_last_error());
  Arena a; arena_init(&a, 0); Graph g; graph_init(&g, &a);
  Tensor *l = model_loss(&m, &g, &b, (float)b.n_targets, NULL, NULL, NULL);
  graph_backward(&g, l);
  MemEstimate me = memory_train(&m.cfg, b.B, b.Te, b.Td, 0, 1, 0);
  double ratio = (double)a.peak / (double)me.activations;
  CHECK_MSG(ratio > 0.5 && ratio < 1.1, "arena peak %zu vs predicted activations %lld (ratio %.2f)", a.peak, (long long)me.activations, ratio);
  graph_free(&g); arena_free(&a); batch_free(&b); model_free(&m);
}

TEST_MAIN()
