/* test_teacher_bf16.c: a distillation teacher kept in bf16 (issue 8, spec 4.2; train.c
 * teacher_dtype, model/weights_bf16.h lm_head_topk, model/memory.h memory_train_distill).
 *
 *  - topk_*: the teacher's soft targets (top-k ids and probabilities at temperature T, and the
 *    full distribution) from a bf16 teacher equal those of the f32 teacher whose weights were
 *    rounded to bf16 (wbf16_round_params): ids exactly, probabilities to 1e-6. The bf16 head is
 *    formed by LM-head blocks of 48 vocabulary rows (11 blocks for V = 512, the last partial), and
 *    320 rows of hidden states are split into logit chunks (256 + 64 rows); a few rows use the
 *    fused decoding kernel. Both are also checked against an independent double-precision
 *    reference (cap·tanh(h·E/cap), softmax at T, sort) to 1e-5.
 *  - teacher_memory_measured: loading a teacher checkpoint (V 65536, d 256: 21M parameters, an
 *    84 MB f32 model) the way train does: the resident memory grows by 4 bytes per parameter
 *    with f32 weights, by 2 bytes per parameter plus at most wbf16_extra_bytes with bf16 (below
 *    0.6 x the f32 figure); after a teacher forward and top-k, still within the prediction.
 *  - memory_train_distill_*: the training prediction grows by the teacher's weights exactly
 *    (4·P_T or 2·P_T + wbf16_extra_bytes), gradients and optimizer do not; the soft targets add
 *    8·N·k bytes (4·N·V for the full distribution); with a tiny student the teacher's top-k phase
 *    (hidden rows, logits chunk) counts beyond the student's activations; no teacher =
 *    memory_train.
 *  lm_head_topk of the f32 teacher is logits_topk's bit for bit; with an arena for its scratch it
 *  leaves the arena as it found it.
 * Models: tiny-gemma2 with initializer_range 0.2 and random norm gains (outputs far from
 * uniform). About 2 s. */
#include "tests/check.h"
#include "model/hf_io.h"
#include "model/memory.h"
#include "model/model.h"
#include "model/rng.h"
#include "model/safetensors.h"
#include "model/weights_bf16.h"
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int make_teacher(Model *m, ModelConfig *cfg, uint64_t seed) {
  cfg->dec.initializer_range = 0.2f;
  if (model_init(m, cfg) != 0) return -1;
  model_init_random(m, seed);
  Rng r; rng_seed(&r, seed * 7 + 1);
  for (int i = 0; i < m->ps.n; i++)
    if (m->ps.e[i].group == PG_NORM)
      for (int64_t j = 0; j < m->ps.e[i].t.n; j++) m->ps.e[i].t.data[j] = (float)(0.3 * rng_normal(&r));
  wbf16_round_params(&m->ps);   /* the reference: f32 weights holding bf16 values */
  return 0;
}

/* Decoder-only rows as train.c's teacher_targets builds them: prefix + targets, right padded. */
static void make_batch(Batch *b, int B, int T, int V, uint64_t seed) {
  batch_alloc(b, B, 0, T, 0);
  Rng r; rng_seed(&r, seed);
  for (int i = 0; i < B; i++) {
    int n = T - (i * 7) % 13;
    for (int j = 0; j < T; j++) {
      size_t o = (size_t)i * T + j;
      b->dec_pos[o] = j;
      b->dec_mask[o] = j < n;
      b->dec_ids[o] = j < n ? (j == 0 ? 2 : 3 + (int)(rng_u64(&r) % (uint64_t)(V - 3))) : 0;
      b->labels[o] = -100;
    }
  }
  batch_count_targets(b);
}

/* Hidden states [B·T, d] of a no-grad forward, copied out. */
static float *hidden(Model *m, const Batch *b) {
  Arena a; Graph g;
  arena_init(&a, 1 << 20);
  graph_init(&g, &a);
  g.grad_enabled = 0;
  Tensor *h = model_hidden(m, &g, b);
  float *out = t5g_malloc(sizeof(float) * h->n);
  memcpy(out, h->data, sizeof(float) * h->n);
  graph_free(&g);
  arena_free(&a);
  return out;
}

/* Independent reference for row r: p = softmax(cap·tanh(h·E/cap)/T) in double, from the f32
 * embedding E [V, d]; top-k by sorting (ties: lower id), renormalised. */
typedef struct { double p; int id; } RefEnt;
static int ref_cmp(const void *a, const void *b) {
  const RefEnt *x = a, *y = b;
  return x->p > y->p ? -1 : x->p < y->p ? 1 : x->id - y->id;
}
static void ref_topk(const float *h, const float *E, int64_t V, int64_t d, double cap, double T, int k, RefEnt *out) {
  double mx = -1e300;
  for (int64_t j = 0; j < V; j++) {
    double s = 0;
    for (int64_t i = 0; i < d; i++) s += (double)h[i] * E[j * d + i];
    double z = cap > 0 ? cap * tanh(s / cap) : s;
    out[j].p = z / T; out[j].id = (int)j;
    if (out[j].p > mx) mx = out[j].p;
  }
  double sum = 0;
  for (int64_t j = 0; j < V; j++) { out[j].p = exp(out[j].p - mx); sum += out[j].p; }
  for (int64_t j = 0; j < V; j++) out[j].p /= sum;
  if (k < V) {
    qsort(out, V, sizeof *out, ref_cmp);
    double s = 0;
    for (int j = 0; j < k; j++) s += out[j].p;
    for (int j = 0; j < k; j++) out[j].p /= s;
  }
}

/* Compare the bf16 teacher's lm_head_topk with the rounded f32 teacher's and with ref_topk. */
static int compare_topk(Model *f, Model *b16, const float *h, int64_t N, float T, int k, char *why, size_t wn) {
  const int64_t V = f->cfg.dec.vocab_size, d = f->cfg.dec.hidden_size;
  int32_t *i1 = k < V ? t5g_malloc(sizeof(int32_t) * N * k) : NULL, *i2 = k < V ? t5g_malloc(sizeof(int32_t) * N * k) : NULL;
  float *p1 = t5g_malloc(sizeof(float) * N * k), *p2 = t5g_malloc(sizeof(float) * N * k);
  Arena ar;
  arena_init(&ar, 1 << 20);
  lm_head_topk(f, h, N, T, k, i1, p1, NULL);
  lm_head_topk(b16, h, N, T, k, i2, p2, &ar);   /* scratch from an arena, released after */
  const size_t used = ar.used;
  arena_free(&ar);
  /* the f32 teacher's top-k is logits_topk's, bit for bit */
  int32_t *i0 = k < V ? t5g_malloc(sizeof(int32_t) * N * k) : NULL;
  float *p0 = t5g_malloc(sizeof(float) * N * k);
  logits_topk(h, N, f->dec.embed, f->cfg.dec.final_logit_softcapping, T, k, i0, p0);
  int same0 = memcmp(p0, p1, sizeof(float) * N * k) == 0 && (!i0 || memcmp(i0, i1, sizeof(int32_t) * N * k) == 0);
  free(i0); free(p0);
  RefEnt *ref = t5g_malloc(sizeof(RefEnt) * V);
  int ok = 1;
  if (used != 0) { snprintf(why, wn, "lm_head_topk left %zu bytes in the arena", used); ok = 0; }
  if (ok && !same0) { snprintf(why, wn, "the f32 teacher's top-k differs from logits_topk"); ok = 0; }
  double worst = 0, worst_ref = 0, top_mass = 0;
  for (int64_t r = 0; r < N && ok; r++) {
    ref_topk(h + r * d, f->dec.embed->data, V, d, f->cfg.dec.final_logit_softcapping, T, k, ref);
    top_mass += k < V ? 0 : ref[0].p;
    for (int j = 0; j < k; j++) {
      const int64_t o = r * k + j;
      if (i1 && i1[o] != i2[o]) { snprintf(why, wn, "row %lld rank %d: id %d (f32) vs %d (bf16)", (long long)r, j, i1[o], i2[o]); ok = 0; break; }
      if (i1 && i1[o] != ref[j].id) { snprintf(why, wn, "row %lld rank %d: id %d vs reference %d", (long long)r, j, i1[o], ref[j].id); ok = 0; break; }
      double e = fabs((double)p1[o] - p2[o]), er = fabs((double)p2[o] - ref[j].p);
      if (e > worst) worst = e;
      if (er > worst_ref) worst_ref = er;
    }
  }
  if (ok && worst > 1e-6) { snprintf(why, wn, "probabilities differ by %.3g (f32 vs bf16, N %lld, k %d)", worst, (long long)N, k); ok = 0; }
  if (ok && worst_ref > 1e-5) { snprintf(why, wn, "probabilities differ from the double reference by %.3g", worst_ref); ok = 0; }
  /* the distributions are far from uniform (a weak test otherwise) */
  if (ok && k < V && p2[0] < 2.0f / k) { snprintf(why, wn, "top probability %.3g: distribution too flat for a test", p2[0]); ok = 0; }
  free(ref); free(i1); free(i2); free(p1); free(p2);
  return ok;
}

TEST(topk_bf16_teacher_equals_rounded_f32) {
  ModelConfig c;
  CHECK(config_resolve("configs/models/tiny-gemma2.json", &c) == 0);
  Model f, b16;
  CHECK(make_teacher(&f, &c, 11) == 0);
  model_to_bf16(&b16, &f);
  wbf16_set_head_rows(&b16, 48);   /* V 512: 11 blocks, the last of 32 rows */
  const int B = 5, T = 64;         /* 320 rows: logit chunks of 256 + 64 rows */
  Batch b;
  make_batch(&b, B, T, c.dec.vocab_size, 3);
  float *h1 = hidden(&f, &b), *h2 = hidden(&b16, &b);
  const int64_t N = (int64_t)B * T, d = c.dec.hidden_size;
  CHECK_MSG(memcmp(h1, h2, sizeof(float) * N * d) == 0, "hidden states of the bf16 and rounded f32 teachers differ");
  char why[256] = "";
  const int ks[3] = {8, 40, 512};
  const float Ts[2] = {1.0f, 2.0f};
  for (int ki = 0; ki < 3; ki++)
    for (int ti = 0; ti < 2; ti++)
      CHECK_MSG(compare_topk(&f, &b16, h1, N, Ts[ti], ks[ki], why, sizeof why), "k %d T %g: %s", ks[ki], Ts[ti], why);
  /* few rows with the default head: the fused decoding kernel forms the logits */
  wbf16_set_head_rows(&b16, 0);
  CHECK_MSG(compare_topk(&f, &b16, h1 + 17 * d, 5, 2.0f, 8, why, sizeof why), "fused rows: %s", why);
  CHECK_MSG(compare_topk(&f, &b16, h1 + 3 * d, 300, 1.0f, 16, why, sizeof why), "default blocks: %s", why);
  free(h1); free(h2);
  batch_free(&b);
  model_free(&b16); model_free(&f);
}

/* AddressSanitizer keeps freed memory in quarantine and adds shadow memory: RSS figures mean
 * nothing there (tests/t_sanitizer.sh). */
#if defined(__SANITIZE_ADDRESS__)
#define RSS_MEANINGFUL 0
#else
#define RSS_MEANINGFUL 1
#endif

static int rm_rf(const char *dir) { char cmd[512]; snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir); return system(cmd); }

/* Resident memory of the teacher as train loads it (model_load_weights, no gradient buffer). */
TEST(teacher_memory_measured) {
  ModelConfig c;
  CHECK(config_resolve("configs/models/tiny-gemma2.json", &c) == 0);
  c.dec.vocab_size = 65536; c.dec.hidden_size = 256; c.dec.intermediate_size = 1024;
  c.dec.num_attention_heads = 4; c.dec.num_key_value_heads = 2; c.dec.head_dim = 64; c.dec.query_pre_attn_scalar = 64;
  Model src;
  CHECK(make_teacher(&src, &c, 5) == 0);
  const int64_t P = config_param_counts(&c).total;
  CHECK(P > 20000000);
  char dir[] = "/tmp/t5g_tbf16_XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  char d1[300];
  snprintf(d1, sizeof d1, "%s/teacher", dir);
  HfSaveOptions so = {ST_BF16, 0, 0};
  CHECK(hf_save(&src.ps, &src.cfg, d1, &so) == 0);
  model_free(&src);
  int64_t grew[2];
  for (int bf = 0; bf < 2; bf++) {
    int64_t r0 = t5g_current_rss();
    Model t;
    CHECK_MSG(model_load_weights(&t, d1, bf ? WEIGHTS_BF16 : WEIGHTS_F32) == 0, "%s", t5g_last_error());
    grew[bf] = t5g_current_rss() - r0;
    CHECK(t.ps.grad == NULL);
    if (!RSS_MEANINGFUL) { model_free(&t); continue; }
    if (!bf) CHECK_MSG(grew[0] >= 4 * P - (4 << 20) && grew[0] <= 4 * P + (8 << 20), "f32 teacher: +%lld bytes for %lld parameters", (long long)grew[0], (long long)P);
    else {
      CHECK_MSG(grew[1] >= 2 * P - (4 << 20) && grew[1] <= 2 * P + wbf16_extra_bytes(&c, t5g_threads()) + (8 << 20),
                "bf16 teacher: +%lld bytes for %lld parameters (extra allowed %lld)", (long long)grew[1], (long long)P,
                (long long)wbf16_extra_bytes(&c, t5g_threads()));
      CHECK_MSG(grew[1] < 0.6 * grew[0], "bf16 teacher +%lld bytes vs f32 +%lld", (long long)grew[1], (long long)grew[0]);
      /* a forward and the top-k (LM-head blocks now allocated): within the prediction */
      Batch b;
      make_batch(&b, 2, 16, c.dec.vocab_size, 9);
      float *h = hidden(&t, &b);
      int32_t ids[32 * 4]; float pr[32 * 4];
      lm_head_topk(&t, h, 32, 1.0f, 4, ids, pr, NULL);
      free(h); batch_free(&b);
      int64_t now = t5g_current_rss() - r0;
      CHECK_MSG(now <= memory_teacher_weights(&c, 1) + (8 << 20), "bf16 teacher after a forward: +%lld bytes, predicted weights %lld",
                (long long)now, (long long)memory_teacher_weights(&c, 1));
    }
    model_free(&t);
  }
  CHECK(rm_rf(dir) == 0);
}

TEST(memory_train_distill_counts_teacher) {
  ModelConfig s, t, tiny;
  CHECK(config_resolve("configs/models/t5gemma-s-s.json", &s) == 0);
  CHECK(config_resolve("configs/models/gemma-2-2b.json", &t) == 0);
  CHECK(config_resolve("configs/models/tiny-t5gemma.json", &tiny) == 0);
  CHECK(s.dec.vocab_size == t.dec.vocab_size);
  const int B = 2, Te = 256, Td = 192;
  const int64_t PT = config_param_counts(&t).total, N = (int64_t)B * Td, V = t.dec.vocab_size, dT = t.dec.hidden_size;
  for (int rc = 0; rc < 2; rc++) {
    MemEstimate base = memory_train(&s, B, Te, Td, rc, 1, 0);
    MemEstimate none = memory_train_distill(&s, B, Te, Td, rc, 1, 0, NULL, 1, 16);
    CHECK(memcmp(&base, &none, sizeof base) == 0);
    MemEstimate f = memory_train_distill(&s, B, Te, Td, rc, 1, 0, &t, 0, 16);
    MemEstimate b = memory_train_distill(&s, B, Te, Td, rc, 1, 0, &t, 1, 16);
    MemEstimate b32 = memory_train_distill(&s, B, Te, Td, rc, 1, 0, &t, 1, 32);
    MemEstimate full = memory_train_distill(&s, B, Te, Td, rc, 1, 0, &t, 1, 0);
    CHECK_EQ_INT(f.weights - base.weights, 4 * PT);
    CHECK_EQ_INT(b.weights - base.weights, 2 * PT + wbf16_extra_bytes(&t, t5g_threads()));
    CHECK_EQ_INT(memory_teacher_weights(&t, 1), 2 * PT + wbf16_extra_bytes(&t, t5g_threads()));
    CHECK(b.weights - base.weights < 0.55 * (f.weights - base.weights));
    CHECK(f.grads == base.grads && b.optimizer == base.optimizer && b.overhead == base.overhead);
    CHECK(f.activations == b.activations);
    /* the soft targets (ids and probs) always add; the teacher's transient phase only beyond
     * the student's activations */
    CHECK(b.activations - base.activations >= 8 * N * 16);
    CHECK_EQ_INT(b32.activations - b.activations, 8 * N * 16);
    CHECK_EQ_INT(full.activations - b.activations, 4 * N * V - 8 * N * 16);
    CHECK_EQ_INT(b.total, b.weights + b.grads + b.optimizer + b.activations + b.overhead);
    /* a longer prefix never needs less */
    CHECK(memory_train_distill(&s, B, 4 * Te, Td, rc, 1, 0, &t, 1, 16).activations - memory_train(&s, B, 4 * Te, Td, rc, 1, 0).activations >=
          b.activations - base.activations);
  }
  /* a tiny student: the teacher's top-k phase (its four [B·L, d_T] forward buffers, the gathered
   * rows [N, d_T] and a 256-row logits chunk of V 256000) exceeds the student's activations and
   * its forward (one 2B layer over 272 tokens), and counts in full beyond them */
  const int Te1 = 16, Td1 = 256;
  const int64_t N1 = Td1, BL1 = Te1 + Td1;
  MemEstimate tb = memory_train(&tiny, 1, Te1, Td1, 0, 1, 0), td = memory_train_distill(&tiny, 1, Te1, Td1, 0, 1, 0, &t, 1, 64);
  CHECK_EQ_INT(td.activations - tb.activations, 8 * N1 * 64 + 4 * (4 * BL1 * dT + N1 * dT + 256 * V) - tb.activations);
}

TEST_MAIN()
