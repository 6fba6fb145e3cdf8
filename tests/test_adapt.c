/* Adaptation (spec 3): the plan's mapping, and streamed adaptation (model/adapt.c adapt_stream,
 * used by `t5gemma adapt`) gives exactly the tensors of the in-memory one (adapt_run_params). */
#include "tests/check.h"
#include "model/adapt.h"
#include "model/hf_io.h"
#include "model/model.h"
#include "model/weights_bf16.h"
#include <unistd.h>

static int make_src(const char *preset, int hidden, int layers, uint64_t seed, Model *m) {
  ModelConfig c;
  if (config_resolve(preset, &c) != 0) return -1;
  if (hidden) { c.dec.hidden_size = hidden; c.dec.num_hidden_layers = layers; }
  if (model_init(m, &c) != 0) return -1;
  model_init_random(m, seed);
  for (int i = 0; i < m->ps.n; i++)    /* norms away from zero so copies are visible */
    if (m->ps.e[i].group == PG_NORM) for (int64_t j = 0; j < m->ps.e[i].t.n; j++) m->ps.e[i].t.data[j] = 0.01f * (float)(j % 7) + 0.001f * i;
  return 0;
}

/* Sources written in dtype `dt`, output streamed in dtype `dt` into shards of at most `shard`
 * bytes (0: one file); the in-memory reference is computed from the sources' stored values and
 * rounded to `dt` like the writer rounds. *n_files (optional) gets the output's file count. */
static int run_both_dt(Model *a, Model *b, const AdaptOptions *ao, const char *dir, int *n_diff, int *warm, Model *t,
                       StDtype dt, int64_t shard, int *n_files) {
  ModelConfig ct;
  if (adapt_make_config(&a->cfg, &b->cfg, ao, &ct) != 0) return -1;
  AdaptRule *rules; int nr;
  if (adapt_plan(&ct, &a->cfg, &b->cfg, ao, &rules, &nr, warm) != 0) return -1;
  if (model_init(t, &ct) != 0) return -1;
  if (dt == ST_BF16) { wbf16_round_params(&a->ps); wbf16_round_params(&b->ps); }   /* what the BF16 files hold */
  if (adapt_run_params(rules, nr, ao, &a->ps, &b->ps, &t->ps) != 0) return -1;
  if (dt == ST_BF16) wbf16_round_params(&t->ps);   /* the writer rounds the random tensors */
  /* streamed: sources written to disk, adapted from the mapped files */
  char da[256], db[256];
  snprintf(da, sizeof da, "%s/a", dir); snprintf(db, sizeof db, "%s/b", dir);
  HfSaveOptions so = {dt, 0, 0};
  if (hf_save(&a->ps, &a->cfg, da, &so) || hf_save(&b->ps, &b->cfg, db, &so)) return -1;
  StReader ra, rb;
  if (st_open(&ra, da) || st_open(&rb, db)) return -1;
  char dout[256]; snprintf(dout, sizeof dout, "%s/out", dir);
  StWriter *w = st_writer_begin(dout, "model", dt, shard);
  if (!w || adapt_stream(rules, nr, ao, &ra, &rb, w) != 0) return -1;
  if (n_files) {
    StReader ro;
    if (st_open(&ro, dout) != 0) return -1;
    *n_files = ro.n_files;
    for (int i = 0; i < ro.n; i++) if (ro.t[i].dtype != dt) return t5g_error("%s: stored as %s", ro.t[i].name, st_dtype_name(ro.t[i].dtype));
    st_close(&ro);
  }
  st_close(&ra); st_close(&rb);
  Model s;
  if (model_init(&s, &ct) != 0 || hf_load_params(&s.ps, dout) != 0) return -1;
  *n_diff = 0;
  for (int i = 0; i < t->ps.n; i++)
    if (memcmp(t->ps.e[i].t.data, s.ps.e[i].t.data, t->ps.e[i].t.n * sizeof(float)) != 0) (*n_diff)++;
  model_free(&s);
  free(rules);
  return 0;
}

static int run_both(Model *a, Model *b, const AdaptOptions *ao, const char *dir, int *n_diff, int *warm, Model *t) {
  return run_both_dt(a, b, ao, dir, n_diff, warm, t, ST_F32, 0, NULL);
}

static float *P(Model *m, const char *name) { Tensor *t = params_get(&m->ps, name); return t ? t->data : NULL; }
static int64_t N(Model *m, const char *name) { Tensor *t = params_get(&m->ps, name); return t ? t->n : -1; }

TEST(balanced_mapping_and_stream_equals_memory) {
  Model a, t; int nd, warm;
  CHECK(make_src("tiny-gemma2", 0, 0, 5, &a) == 0);
  char dir[] = "/tmp/t5g_adapt_XXXXXX"; CHECK(mkdtemp(dir) != NULL);
  AdaptOptions ao; adapt_options_default(&ao);
  CHECK_MSG(run_both(&a, &a, &ao, dir, &nd, &warm, &t) == 0, "%s", t5g_last_error());
  CHECK_EQ_INT(nd, 0);
  CHECK_EQ_INT(warm, 0);
  const char *pairs[][2] = {
    {"model.encoder.embed_tokens.weight", "model.embed_tokens.weight"},
    {"model.decoder.embed_tokens.weight", "model.embed_tokens.weight"},
    {"model.encoder.layers.2.self_attn.q_proj.weight", "model.layers.2.self_attn.q_proj.weight"},
    {"model.encoder.layers.1.pre_self_attn_layernorm.weight", "model.layers.1.input_layernorm.weight"},
    {"model.encoder.layers.1.post_self_attn_layernorm.weight", "model.layers.1.post_attention_layernorm.weight"},
    {"model.decoder.layers.3.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight"},
    {"model.decoder.layers.3.cross_attn.k_proj.weight", "model.layers.3.self_attn.k_proj.weight"},
    {"model.decoder.layers.0.cross_attn.o_proj.weight", "model.layers.0.self_attn.o_proj.weight"},
    {"model.decoder.layers.2.pre_cross_attn_layernorm.weight", "model.layers.2.input_layernorm.weight"},
    {"model.decoder.layers.2.post_cross_attn_layernorm.weight", "model.layers.2.post_attention_layernorm.weight"},
    {"model.encoder.norm.weight", "model.norm.weight"},
    {"model.decoder.norm.weight", "model.norm.weight"},
  };
  for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
    CHECK_MSG(P(&t, pairs[i][0]) && P(&a, pairs[i][1]), "missing %s or %s", pairs[i][0], pairs[i][1]);
    CHECK_EQ_INT(N(&t, pairs[i][0]), N(&a, pairs[i][1]));
    CHECK_MSG(memcmp(P(&t, pairs[i][0]), P(&a, pairs[i][1]), N(&a, pairs[i][1]) * 4) == 0, "%s != %s", pairs[i][0], pairs[i][1]);
  }
  char cmd[300]; snprintf(cmd, sizeof cmd, "rm -rf %s", dir); CHECK(system(cmd) == 0);
  model_free(&t); model_free(&a);
}

TEST(unequal_random_cross_zero_norms_and_stream_equals_memory) {
  Model a, b, t; int nd, warm;
  CHECK(make_src("tiny-gemma2", 96, 6, 7, &a) == 0);
  CHECK(make_src("tiny-gemma2", 0, 0, 8, &b) == 0);
  char dir[] = "/tmp/t5g_adapt_XXXXXX"; CHECK(mkdtemp(dir) != NULL);
  AdaptOptions ao; adapt_options_default(&ao); ao.cross_norm_zero = 1; ao.cross_std = 0.05f;
  CHECK_MSG(run_both(&a, &b, &ao, dir, &nd, &warm, &t) == 0, "%s", t5g_last_error());
  CHECK_EQ_INT(nd, 0);
  CHECK_EQ_INT(warm, 1);
  CHECK_EQ_INT(t.cfg.dec.cross_attention_hidden_size, 96);
  Tensor *xk = params_get(&t.ps, "model.decoder.layers.1.cross_attn.k_proj.weight");
  CHECK(xk && xk->shape[1] == 96 && xk->shape[0] == (int64_t)t.cfg.dec.num_key_value_heads * t.cfg.dec.head_dim);
  double s = 0, s2 = 0;
  for (int64_t j = 0; j < xk->n; j++) { s += xk->data[j]; s2 += (double)xk->data[j] * xk->data[j]; }
  double mean = s / xk->n, sd = sqrt(s2 / xk->n - mean * mean);
  CHECK_NEAR(sd, 0.05, 0.005);
  CHECK_NEAR(mean, 0.0, 0.005);
  float *pn = P(&t, "model.decoder.layers.1.pre_cross_attn_layernorm.weight");
  for (int j = 0; j < t.cfg.dec.hidden_size; j++) CHECK(pn[j] == 0.0f);
  /* encoder from A, decoder from B */
  CHECK(memcmp(P(&t, "model.encoder.layers.5.mlp.up_proj.weight"), P(&a, "model.layers.5.mlp.up_proj.weight"), N(&a, "model.layers.5.mlp.up_proj.weight") * 4) == 0);
  CHECK(memcmp(P(&t, "model.decoder.layers.1.self_attn.v_proj.weight"), P(&b, "model.layers.1.self_attn.v_proj.weight"), N(&b, "model.layers.1.self_attn.v_proj.weight") * 4) == 0);
  /* the warm-up freezes everything except cross-attention */
  model_set_cross_attn_only(&t, 1);
  for (int i = 0; i < t.ps.n; i++) CHECK_EQ_INT(t.ps.e[i].frozen, strstr(t.ps.e[i].name, "cross_attn") == NULL);
  model_set_cross_attn_only(&t, 0);
  for (int i = 0; i < t.ps.n; i++) CHECK_EQ_INT(t.ps.e[i].frozen, 0);
  char cmd[300]; snprintf(cmd, sizeof cmd, "rm -rf %s", dir); CHECK(system(cmd) == 0);
  model_free(&t); model_free(&a); model_free(&b);
}

/* BF16 sources (as released checkpoints are) and BF16 output in several shards with an index:
 * the streamed tensors are exactly the in-memory adaptation of the stored values, rounded to
 * bf16 by the writer (copies are exact; the random cross-attention is rounded). */
TEST(bf16_sharded_stream_equals_memory) {
  for (int unequal = 0; unequal < 2; unequal++) {
    Model a, b, t; int nd, warm, nf = 0;
    CHECK(make_src("tiny-gemma2", unequal ? 96 : 0, unequal ? 6 : 0, 21, &a) == 0);
    CHECK(make_src("tiny-gemma2", 0, 0, 22, &b) == 0);
    char dir[] = "/tmp/t5g_adapt_XXXXXX"; CHECK(mkdtemp(dir) != NULL);
    AdaptOptions ao; adapt_options_default(&ao);
    CHECK_MSG(run_both_dt(&a, unequal ? &b : &a, &ao, dir, &nd, &warm, &t, ST_BF16, 40000, &nf) == 0, "%s", t5g_last_error());
    CHECK_EQ_INT(nd, 0);
    CHECK_EQ_INT(warm, unequal);
    CHECK_MSG(nf >= 4, "%d output files", nf);   /* ~0.5 MB of BF16 tensors in shards of 40 kB */
    char idx[300]; snprintf(idx, sizeof idx, "%s/out/model.safetensors.index.json", dir);
    CHECK(t5g_file_exists(idx));
    /* a copied tensor holds the source's bf16 values exactly */
    CHECK(memcmp(P(&t, "model.decoder.layers.1.mlp.up_proj.weight"), P(unequal ? &b : &a, "model.layers.1.mlp.up_proj.weight"),
                 N(&t, "model.decoder.layers.1.mlp.up_proj.weight") * 4) == 0);
    char cmd[300]; snprintf(cmd, sizeof cmd, "rm -rf %s", dir); CHECK(system(cmd) == 0);
    model_free(&t); model_free(&a); model_free(&b);
  }
}

TEST(refuses_mismatched_sources) {
  Model a, b;
  CHECK(make_src("tiny-gemma2", 0, 0, 1, &a) == 0);
  CHECK(make_src("tiny-gemma2", 0, 0, 2, &b) == 0);
  b.cfg.dec.vocab_size = 600;
  ModelConfig ct; AdaptOptions ao; adapt_options_default(&ao);
  CHECK(adapt_make_config(&a.cfg, &b.cfg, &ao, &ct) == -1);
  CHECK(strstr(t5g_last_error(), "vocab_size") != NULL);
  b.cfg.dec.vocab_size = a.cfg.dec.vocab_size;
  b.cfg.dec.hidden_size = 96;
  CHECK(adapt_make_config(&a.cfg, &b.cfg, &ao, &ct) == 0);
  ao.cross_init = 0;   /* copy is impossible with different widths */
  AdaptRule *r; int n, w;
  CHECK(adapt_plan(&ct, &a.cfg, &b.cfg, &ao, &r, &n, &w) == -1);
  CHECK(strstr(t5g_last_error(), "cross_init=copy") != NULL);
  model_free(&a); model_free(&b);
}

TEST_MAIN()
