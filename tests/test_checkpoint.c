/* test_checkpoint.c: HDF5 training checkpoints (round trip, integrity, run directory, averaging)
 * and the stop-signal flag. tests/t_checkpoint_h5py.sh reads a checkpoint written by this program
 * (T5G_CKPT_EXPORT=<dir> mode, see the end) with h5py. */
#define _GNU_SOURCE
#include <hdf5.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "tests/check.h"
#include "model/params.h"
#include "model/rng.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "train/checkpoint.h"
#include "train/signals.h"

/* ---- fixtures ---------------------------------------------------------------------------- */
typedef struct { const char *name; int ndim; int64_t shape[3]; ParamGroup g; } Spec;
static const Spec specs[] = {
  {"model.encoder.embed_tokens.weight", 2, {50, 16}, PG_EMBED},
  {"model.encoder.layers.0.self_attn.q_proj.weight", 2, {32, 16}, PG_MATRIX},
  {"model.encoder.layers.0.pre_self_attn_layernorm.weight", 1, {16}, PG_NORM},
  {"model.decoder.layers.0.cross_attn.k_proj.weight", 2, {8, 16}, PG_MATRIX},
  {"model.decoder.layers.0.mlp.gate_proj.weight", 2, {700, 123}, PG_MATRIX},  /* > 256 KiB: several checksum blocks */
  {"model.decoder.norm.weight", 1, {5}, PG_NORM},
};
#define NSPEC ((int)(sizeof specs / sizeof *specs))

static void make_store(ParamStore *ps, uint64_t seed, int nspec) {
  params_init(ps);
  for (int i = 0; i < nspec; i++) params_add(ps, specs[i].name, specs[i].ndim, specs[i].shape, specs[i].g);
  params_finalize(ps);
  Rng r; rng_seed(&r, seed);
  for (int i = 0; i < ps->n; i++)
    for (int64_t j = 0; j < ps->e[i].t.n; j++) ps->e[i].t.data[j] = (float)rng_normal(&r);
}

/* A few AdamW steps, the cross-attention entry frozen for the first two, so counters differ. */
static void train_a_bit(ParamStore *ps, AdamW *opt, int steps, uint64_t seed) {
  Rng r; rng_seed(&r, seed);
  for (int s = 0; s < steps; s++) {
    params_set_frozen(ps, 3, s < 2);
    for (int i = 0; i < ps->n; i++)
      for (int64_t j = 0; j < ps->e[i].t.n; j++) ps->e[i].t.grad[j] = (float)(0.01 * rng_normal(&r));
    adamw_clip_grad_norm(ps, opt->cfg.max_grad_norm, NULL);
    adamw_step(opt, ps, 1e-3);
  }
  params_set_frozen(ps, 3, 0);
}

static char g_dir[256];
static const char *tdir(void) {
  if (!g_dir[0]) {
    snprintf(g_dir, sizeof g_dir, "/tmp/t5g-test-ckpt-XXXXXX");
    if (!mkdtemp(g_dir)) t5g_fatal("mkdtemp failed");
  }
  return g_dir;
}
static void rm_rf(const char *d) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
  if (system(cmd) != 0) fprintf(stderr, "warning: %s failed\n", cmd);
}

static const int64_t reader_state[] = {3, 0, 123456789012345LL, -1, INT64_MIN, INT64_MAX};
static const char *train_json = "{\"objective\": \"prefixlm\", \"lr\": 0.0001, \"note\": \"quote \\\" and \u00e9\"}";
static const char *model_json = "{\"model_type\": \"t5gemma\"}";

/* Write a full training checkpoint for `step`. */
static int save_full(const char *path, int64_t step, const ParamStore *ps, const AdamW *opt, const LrSchedule *s) {
  Ckpt *c = ckpt_create(path, step);
  if (!c) return -1;
  uint64_t rng_state = 0xfedcba9876543210ULL;
  int64_t rs = (int64_t)rng_state;
  if (ckpt_put_params(c, ps) || ckpt_put_adamw(c, ps, opt) || ckpt_put_schedule(c, s) ||
      ckpt_put_i64s(c, "reader", reader_state, 6) || ckpt_put_i64s(c, "rng", &rs, 1) ||
      ckpt_put_i64s(c, "empty", NULL, 0) || ckpt_put_str(c, CKPT_TRAIN_CONFIG, train_json) ||
      ckpt_put_str(c, CKPT_MODEL_CONFIG, model_json) || ckpt_put_str(c, "empty_str", "") ||
      ckpt_put_tokenizer_id(c, 0x1234567890abcdefULL, 256000)) {
    ckpt_abandon(c);
    return -1;
  }
  return ckpt_commit(c);
}

/* ---- checksum ---------------------------------------------------------------------------- */
/* Independent FNV-1a (byte loop written here) over 256 KiB blocks, then over the block hashes. */
static uint64_t fnv_ref(const unsigned char *p, size_t n, uint64_t h) {
  for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 1099511628211ULL; }
  return h;
}
static uint64_t checksum_ref(const unsigned char *p, size_t n) {
  uint64_t h = 14695981039346656037ULL;
  for (size_t o = 0; o < n; o += 262144) {
    uint64_t b = fnv_ref(p + o, n - o < 262144 ? n - o : 262144, 14695981039346656037ULL);
    unsigned char le[8];
    for (int k = 0; k < 8; k++) le[k] = (unsigned char)(b >> (8 * k));
    h = fnv_ref(le, 8, h);
  }
  return h;
}

TEST(checksum_definition) {
  size_t sizes[] = {0, 1, 262143, 262144, 262145, 4 * 262144, 5 * 262144 + 7, 8 * 262144, 9 * 262144, 17 * 262144 + 1};
  unsigned char *buf = t5g_malloc(17 * 262144 + 1);
  Rng r; rng_seed(&r, 5);
  for (size_t i = 0; i < 17 * 262144 + 1; i++) buf[i] = (unsigned char)rng_u64(&r);
  for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++)
    CHECK_MSG(ckpt_checksum(buf, sizes[k]) == checksum_ref(buf, sizes[k]), "size %zu", sizes[k]);
  CHECK(ckpt_checksum(buf, 0) == 14695981039346656037ULL);
  /* a single flipped bit anywhere changes it */
  uint64_t h = ckpt_checksum(buf, 9 * 262144);
  buf[6 * 262144 + 77] ^= 0x10;
  CHECK(ckpt_checksum(buf, 9 * 262144) != h);
  free(buf);
}

/* ---- round trip -------------------------------------------------------------------------- */
TEST(roundtrip_bit_exact) {
  ParamStore ps; make_store(&ps, 1, NSPEC);
  AdamWConfig cfg; adamw_config_default(&cfg);
  cfg.beta2 = 0.975; cfg.weight_decay = 0.05; cfg.decay_embed = 1; cfg.max_grad_norm = 0.7;
  AdamW opt; CHECK(adamw_init(&opt, &ps, &cfg, 0, ps.n_total) == 0);
  train_a_bit(&ps, &opt, 5, 2);
  LrSchedule s; lr_schedule_default(&s);
  s.decay = LR_WSD; s.peak_lr = 3e-4; s.warmup_steps = 7; s.total_steps = 1000; s.min_lr = 1e-6; s.min_lr_ratio = 0;
  s.wsd_decay_frac = 0.25;
  char *path = ckpt_path_for_step(tdir(), 1234);
  CHECK_MSG(save_full(path, 1234, &ps, &opt, &s) == 0, "%s", t5g_last_error());
  char *tmp = t5g_tmp_name(path);
  CHECK(t5g_file_exists(path) && !t5g_file_exists(tmp));
  free(tmp);

  ParamStore q; make_store(&q, 99, NSPEC);
  AdamWConfig cfg2; adamw_config_default(&cfg2);
  AdamW o2; CHECK(adamw_init(&o2, &q, &cfg2, 0, q.n_total) == 0);
  Ckpt *c = ckpt_open(path);
  CHECK_MSG(c != NULL, "%s", t5g_last_error());
  CHECK_EQ_INT(ckpt_step(c), 1234);
  CHECK_MSG(ckpt_get_params(c, &q) == 0, "%s", t5g_last_error());
  CHECK_MSG(ckpt_get_adamw(c, &q, &o2) == 0, "%s", t5g_last_error());
  CHECK(memcmp(ps.data, q.data, ps.n_total * sizeof(float)) == 0);
  CHECK(memcmp(opt.m, o2.m, ps.n_total * sizeof(float)) == 0);
  CHECK(memcmp(opt.v, o2.v, ps.n_total * sizeof(float)) == 0);
  CHECK(memcmp(opt.entry_step, o2.entry_step, ps.n * sizeof(int64_t)) == 0);
  CHECK_EQ_INT(o2.entry_step[3], 3);
  CHECK_EQ_INT(o2.entry_step[0], 5);
  CHECK_EQ_INT(o2.step, 5);
  AdamWConfig rc;
  CHECK(ckpt_get_adamw_config(c, &rc) == 0);
  CHECK(rc.beta1 == cfg.beta1 && rc.beta2 == cfg.beta2 && rc.eps == cfg.eps && rc.weight_decay == cfg.weight_decay &&
        rc.decay_embed == cfg.decay_embed && rc.max_grad_norm == cfg.max_grad_norm);
  o2.cfg = rc;  /* resume with the stored hyperparameters */
  LrSchedule rs; memset(&rs, 0, sizeof rs);
  CHECK(ckpt_get_schedule(c, &rs) == 0);
  CHECK(rs.decay == s.decay && rs.peak_lr == s.peak_lr && rs.warmup_steps == s.warmup_steps &&
        rs.total_steps == s.total_steps && rs.min_lr == s.min_lr && rs.min_lr_ratio == s.min_lr_ratio &&
        rs.wsd_decay_frac == s.wsd_decay_frac);
  int64_t st[6];
  CHECK_EQ_INT(ckpt_len_i64s(c, "reader"), 6);
  CHECK(ckpt_get_i64s(c, "reader", st, 6) == 0);
  CHECK(memcmp(st, reader_state, sizeof st) == 0);
  int64_t rng;
  CHECK(ckpt_get_i64s(c, "rng", &rng, 1) == 0);
  CHECK((uint64_t)rng == 0xfedcba9876543210ULL);
  CHECK_EQ_INT(ckpt_len_i64s(c, "empty"), 0);
  CHECK(ckpt_get_i64s(c, "empty", NULL, 0) == 0);
  char *js = ckpt_get_str(c, CKPT_TRAIN_CONFIG);
  CHECK_STR(js, train_json);
  free(js);
  js = ckpt_get_str(c, CKPT_MODEL_CONFIG);
  CHECK_STR(js, model_json);
  free(js);
  js = ckpt_get_str(c, "empty_str");
  CHECK_STR(js, "");
  free(js);
  uint64_t th; int64_t tv;
  CHECK(ckpt_get_tokenizer_id(c, &th, &tv) == 0);
  CHECK(th == 0x1234567890abcdefULL && tv == 256000);
  CHECK(ckpt_has(c, "reader") && !ckpt_has(c, "nothing"));
  CHECK_MSG(ckpt_verify(c) == 0, "%s", t5g_last_error());
  /* errors on the state API */
  CHECK(ckpt_get_i64s(c, "reader", st, 5) == -1);
  CHECK(strstr(t5g_last_error(), "has 6 values, expected 5") != NULL);
  CHECK(ckpt_get_i64s(c, "nothing", st, 1) == -1);
  CHECK(strstr(t5g_last_error(), "/state/nothing is missing") && strstr(t5g_last_error(), path));
  CHECK(ckpt_len_i64s(c, CKPT_TRAIN_CONFIG) == -1);
  ckpt_close(c);

  /* continuing from the loaded state gives exactly the same next step */
  train_a_bit(&ps, &opt, 2, 77);
  train_a_bit(&q, &o2, 2, 77);
  CHECK(memcmp(ps.data, q.data, ps.n_total * sizeof(float)) == 0);
  CHECK(memcmp(opt.v, o2.v, ps.n_total * sizeof(float)) == 0);
  adamw_free(&opt); adamw_free(&o2);
  params_free(&ps); params_free(&q);
  unlink(path);
  free(path);
}

/* Slices of the optimizer state load independently (ZeRO-1). */
TEST(moments_slice_load) {
  ParamStore ps; make_store(&ps, 3, NSPEC);
  AdamWConfig cfg; adamw_config_default(&cfg);
  AdamW opt; CHECK(adamw_init(&opt, &ps, &cfg, 0, ps.n_total) == 0);
  train_a_bit(&ps, &opt, 3, 4);
  char *path = ckpt_path_for_step(tdir(), 77);
  LrSchedule s; lr_schedule_default(&s);
  CHECK_MSG(save_full(path, 77, &ps, &opt, &s) == 0, "%s", t5g_last_error());
  Ckpt *c = ckpt_open(path);
  CHECK(c != NULL);
  int64_t cuts[] = {0, 7, ps.e[4].offset + 1000, ps.e[4].offset + 50000, ps.n_total};
  for (int k = 0; k + 1 < 5; k++) {
    AdamW part; CHECK(adamw_init(&part, &ps, &cfg, cuts[k], cuts[k + 1]) == 0);
    memset(part.m, 0x7f, (cuts[k + 1] - cuts[k]) * sizeof(float));  /* garbage must be overwritten */
    CHECK_MSG(ckpt_get_adamw(c, &ps, &part) == 0, "%s", t5g_last_error());
    CHECK(memcmp(part.m, opt.m + cuts[k], (cuts[k + 1] - cuts[k]) * sizeof(float)) == 0);
    CHECK(memcmp(part.v, opt.v + cuts[k], (cuts[k + 1] - cuts[k]) * sizeof(float)) == 0);
    CHECK(memcmp(part.entry_step, opt.entry_step, ps.n * sizeof(int64_t)) == 0);
    CHECK_EQ_INT(part.step, 3);
    adamw_free(&part);
  }
  /* a sliced state cannot be written directly */
  AdamW part; CHECK(adamw_init(&part, &ps, &cfg, 0, 100) == 0);
  Ckpt *w = ckpt_create(path, 1);
  CHECK(ckpt_put_adamw(w, &ps, &part) == -1);
  CHECK(strstr(t5g_last_error(), "ckpt_put_moments") != NULL);
  CHECK(ckpt_commit(w) == -1);  /* refused after a failed write; the old file is untouched */
  ckpt_close(c);
  c = ckpt_open(path);
  CHECK(c != NULL && ckpt_step(c) == 77);
  ckpt_close(c);
  adamw_free(&part); adamw_free(&opt);
  params_free(&ps);
  unlink(path);
  free(path);
}

/* ---- model mismatch ---------------------------------------------------------------------- */
TEST(model_mismatch_refused) {
  ParamStore ps; make_store(&ps, 1, NSPEC);
  char *path = ckpt_path_for_step(tdir(), 5);
  Ckpt *c = ckpt_create(path, 5);
  CHECK(c && ckpt_put_params(c, &ps) == 0);
  CHECK(ckpt_put_i64s(c, "a/b", NULL, 0) == -1);
  CHECK(strstr(t5g_last_error(), "without '/'") != NULL);
  ckpt_abandon(c);
  c = ckpt_create(path, 5);
  CHECK(ckpt_put_params(c, &ps) == 0);
  CHECK(ckpt_put_i64s(c, "x", reader_state, 2) == 0);
  CHECK(ckpt_put_i64s(c, "x", reader_state, 2) == -1);
  CHECK(strstr(t5g_last_error(), "written twice") != NULL);
  ckpt_abandon(c);
  char *tmp = t5g_tmp_name(path);
  CHECK(!t5g_file_exists(tmp) && !t5g_file_exists(path));
  free(tmp);
  c = ckpt_create(path, 5);
  CHECK(ckpt_put_params(c, &ps) == 0 && ckpt_commit(c) == 0);
  /* fewer entries in the model: the extra one is named */
  ParamStore small; make_store(&small, 1, NSPEC - 1);
  c = ckpt_open(path);
  CHECK(ckpt_get_params(c, &small) == -1);
  CHECK_MSG(strstr(t5g_last_error(), "model.decoder.norm.weight is not a parameter of the model") != NULL, "%s", t5g_last_error());
  /* a different shape */
  ParamStore other; params_init(&other);
  for (int i = 0; i < NSPEC; i++) {
    int64_t sh[3] = {specs[i].shape[0], specs[i].shape[1], specs[i].shape[2]};
    if (i == 1) { sh[0] = 16; sh[1] = 32; }
    params_add(&other, specs[i].name, specs[i].ndim, sh, specs[i].g);
  }
  params_finalize(&other);
  CHECK(ckpt_get_params(c, &other) == -1);
  CHECK_MSG(strstr(t5g_last_error(), "/params/model.encoder.layers.0.self_attn.q_proj.weight has shape [32, 16], the model expects [16, 32]"),
            "%s", t5g_last_error());
  /* a missing entry, and no optimizer state */
  ParamStore more; params_init(&more);
  for (int i = 0; i < NSPEC; i++) params_add(&more, specs[i].name, specs[i].ndim, specs[i].shape, specs[i].g);
  params_add(&more, "lm_head.out_proj.weight", 2, (int64_t[]){50, 16}, PG_EMBED);
  params_finalize(&more);
  CHECK(ckpt_get_params(c, &more) == -1);
  CHECK(strstr(t5g_last_error(), "/params/lm_head.out_proj.weight is missing") != NULL);
  AdamWConfig cfg; adamw_config_default(&cfg);
  AdamW opt; adamw_init(&opt, &ps, &cfg, 0, ps.n_total);
  CHECK(ckpt_get_adamw(c, &ps, &opt) == -1);
  CHECK(strstr(t5g_last_error(), "/optimizer is missing") != NULL);
  ckpt_close(c);
  adamw_free(&opt);
  params_free(&ps); params_free(&small); params_free(&other); params_free(&more);
  unlink(path);
  free(path);
}

/* ---- integrity --------------------------------------------------------------------------- */
static int copy_file(const char *src, const char *dst, off_t truncate_at) {
  size_t n;
  char *buf = t5g_read_file(src, &n);
  if (!buf) return -1;
  if (truncate_at >= 0 && (size_t)truncate_at < n) n = (size_t)truncate_at;
  FILE *f = fopen(dst, "wb");
  int ok = f && fwrite(buf, 1, n, f) == n;
  if (f) fclose(f);
  free(buf);
  return ok ? 0 : -1;
}

/* Try to use a checkpoint fully: open, params, optimizer, state, verify. */
static int load_everything(const char *path, ParamStore *ps, AdamW *opt) {
  Ckpt *c = ckpt_open(path);
  if (!c) return -1;
  int64_t st[6];
  int rc = ckpt_get_params(c, ps) || ckpt_get_adamw(c, ps, opt) || ckpt_get_i64s(c, "reader", st, 6) ||
           ckpt_verify(c);
  ckpt_close(c);
  return rc ? -1 : 0;
}

/* File offset of a dataset's raw data (contiguous layout). */
static long long ds_offset(const char *path, const char *dpath) {
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) return -1;
  hid_t d = H5Dopen2(f, dpath, H5P_DEFAULT);
  haddr_t a = d >= 0 ? H5Dget_offset(d) : HADDR_UNDEF;
  if (d >= 0) H5Dclose(d);
  H5Fclose(f);
  return a == HADDR_UNDEF ? -1 : (long long)a;
}
static int flip_byte(const char *path, long long off) {
  int fd = open(path, O_RDWR);
  if (fd < 0) return -1;
  unsigned char b;
  int ok = pread(fd, &b, 1, off) == 1;
  b ^= 0x40;
  ok = ok && pwrite(fd, &b, 1, off) == 1;
  close(fd);
  return ok ? 0 : -1;
}

TEST(truncated_file_refused) {
  ParamStore ps; make_store(&ps, 8, NSPEC);
  AdamWConfig cfg; adamw_config_default(&cfg);
  AdamW opt; adamw_init(&opt, &ps, &cfg, 0, ps.n_total);
  train_a_bit(&ps, &opt, 2, 3);
  LrSchedule s; lr_schedule_default(&s);
  char *good = ckpt_path_for_step(tdir(), 10);
  CHECK(save_full(good, 10, &ps, &opt, &s) == 0);
  struct stat stt; CHECK(stat(good, &stt) == 0);
  off_t size = stt.st_size;
  CHECK(load_everything(good, &ps, &opt) == 0);
  off_t cuts[] = {0, 1, 100, 2048, size / 5, size / 3, size / 2, 2 * size / 3, size - 4096, size - 1};
  char *bad = ckpt_path_for_step(tdir(), 11);
  for (unsigned k = 0; k < sizeof cuts / sizeof *cuts; k++) {
    CHECK(copy_file(good, bad, cuts[k]) == 0);
    int rc = load_everything(bad, &ps, &opt);
    CHECK_MSG(rc == -1, "file truncated to %lld of %lld bytes was accepted", (long long)cuts[k], (long long)size);
    CHECK_MSG(strstr(t5g_last_error(), bad) != NULL, "error does not name the file: %s", t5g_last_error());
  }
  unlink(bad); unlink(good);
  free(bad); free(good);
  adamw_free(&opt);
  params_free(&ps);
}

TEST(flipped_byte_detected) {
  ParamStore ps; make_store(&ps, 8, NSPEC);
  AdamWConfig cfg; adamw_config_default(&cfg);
  AdamW opt; adamw_init(&opt, &ps, &cfg, 0, ps.n_total);
  train_a_bit(&ps, &opt, 2, 3);
  LrSchedule s; lr_schedule_default(&s);
  char *path = ckpt_path_for_step(tdir(), 20);
  const char *targets[] = {"/params/model.decoder.layers.0.mlp.gate_proj.weight",
                           "/optimizer/v/model.encoder.layers.0.pre_self_attn_layernorm.weight",
                           "/state/reader"};
  for (int k = 0; k < 3; k++) {
    CHECK(save_full(path, 20, &ps, &opt, &s) == 0);
    long long off = ds_offset(path, targets[k]);
    CHECK(off > 0);
    CHECK(flip_byte(path, off + (k == 0 ? 200001 : 13)) == 0);
    Ckpt *c = ckpt_open(path);
    CHECK_MSG(c != NULL, "%s", t5g_last_error());  /* metadata intact: opens */
    int64_t st[6];
    int rc = k == 0 ? ckpt_get_params(c, &ps) : k == 1 ? ckpt_get_adamw(c, &ps, &opt) : ckpt_get_i64s(c, "reader", st, 6);
    CHECK(rc == -1);
    const char *e = t5g_last_error();
    CHECK_MSG(strstr(e, path) && strstr(e, targets[k]) && strstr(e, "checksum"), "%s", e);
    CHECK(ckpt_verify(c) == -1);
    CHECK_MSG(strstr(t5g_last_error(), targets[k]) != NULL, "%s", t5g_last_error());
    ckpt_close(c);
  }
  unlink(path);
  free(path);
  adamw_free(&opt);
  params_free(&ps);
}

/* Remove the `complete` attribute, as if the writer had died before finishing. */
static int make_incomplete(const char *path) {
  hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
  if (f < 0) return -1;
  herr_t st = H5Adelete(f, "complete");
  H5Fclose(f);
  return st < 0 ? -1 : 0;
}

TEST(incomplete_and_foreign_refused) {
  ParamStore ps; make_store(&ps, 8, 3);
  char *path = ckpt_path_for_step(tdir(), 30);
  Ckpt *c = ckpt_create(path, 30);
  CHECK(c && ckpt_put_params(c, &ps) == 0 && ckpt_commit(c) == 0);
  CHECK(make_incomplete(path) == 0);
  CHECK(ckpt_open(path) == NULL);
  CHECK_MSG(strstr(t5g_last_error(), path) && strstr(t5g_last_error(), "incomplete"), "%s", t5g_last_error());
  /* an HDF5 file that is not ours */
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  H5Fclose(f);
  CHECK(ckpt_open(path) == NULL);
  CHECK(strstr(t5g_last_error(), "t5gemma-checkpoint") != NULL);
  /* not HDF5 at all */
  FILE *t = fopen(path, "w"); fputs("hello\n", t); fclose(t);
  CHECK(ckpt_open(path) == NULL);
  CHECK(strstr(t5g_last_error(), path) != NULL);
  unlink(path);
  CHECK(ckpt_open(path) == NULL);
  CHECK(strstr(t5g_last_error(), "No such file") != NULL);
  free(path);
  params_free(&ps);
}

/* ---- run directory ----------------------------------------------------------------------- */
typedef struct { ParamStore *ps; AdamW *opt; int calls; } LoadCtx;
static int load_cb(Ckpt *c, void *ud) {
  LoadCtx *l = ud;
  l->calls++;
  int64_t st[6];
  if (ckpt_get_params(c, l->ps) || ckpt_get_adamw(c, l->ps, l->opt) || ckpt_get_i64s(c, "reader", st, 6)) return -1;
  return 0;
}

static char *mk_run_dir(const char *name) {
  char *d = t5g_path_join(tdir(), name);
  rm_rf(d);
  t5g_mkdir_p(d);
  return d;
}

TEST(latest_with_fallback) {
  char *dir = mk_run_dir("run-fallback");
  ParamStore ps; make_store(&ps, 8, NSPEC);
  AdamWConfig cfg; adamw_config_default(&cfg);
  AdamW opt; adamw_init(&opt, &ps, &cfg, 0, ps.n_total);
  LrSchedule s; lr_schedule_default(&s);
  ParamStore q; make_store(&q, 0, NSPEC);
  AdamW o2; adamw_init(&o2, &q, &cfg, 0, q.n_total);
  LoadCtx lc = {&q, &o2, 0};
  char *loaded = NULL;
  CHECK_EQ_INT(ckpt_load_latest(dir, load_cb, &lc, &loaded), 0);  /* empty: fresh start */
  CHECK(loaded == NULL && lc.calls == 0);
  float *at200 = t5g_malloc(ps.n_total * sizeof(float));
  for (int k = 1; k <= 3; k++) {
    train_a_bit(&ps, &opt, 1, k);
    if (k == 2) memcpy(at200, ps.data, ps.n_total * sizeof(float));
    char *p = ckpt_path_for_step(dir, 100 * k);
    CHECK(save_full(p, 100 * k, &ps, &opt, &s) == 0);
    free(p);
  }
  /* unrelated files are ignored */
  char *junk = t5g_path_join(dir, "ckpt-abc.h5"); FILE *jf = fopen(junk, "w"); fclose(jf); free(junk);
  CkptFile *fl; int nf;
  CHECK(ckpt_list(dir, &fl, &nf) == 0);
  CHECK_EQ_INT(nf, 3);
  CHECK(fl[0].step == 100 && fl[1].step == 200 && fl[2].step == 300);
  ckpt_list_free(fl, nf);
  int64_t st = 0;
  char *latest = ckpt_find_latest(dir, &st);
  CHECK(latest && st == 300 && strstr(latest, "ckpt-00000300.h5"));
  free(latest);
  /* corrupt the newest: a flipped byte in a moment */
  char *p300 = ckpt_path_for_step(dir, 300);
  CHECK(flip_byte(p300, ds_offset(p300, "/optimizer/m/model.decoder.layers.0.mlp.gate_proj.weight") + 1001) == 0);
  CHECK_EQ_INT(ckpt_load_latest(dir, load_cb, &lc, &loaded), 1);
  CHECK(loaded && strstr(loaded, "ckpt-00000200.h5"));
  CHECK_EQ_INT(lc.calls, 2);
  CHECK(memcmp(q.data, at200, ps.n_total * sizeof(float)) == 0);
  CHECK_EQ_INT(o2.step, 2);
  free(loaded);
  /* newest truncated, the one before incomplete: falls back to 100 */
  char *p200 = ckpt_path_for_step(dir, 200);
  CHECK(copy_file(p200, p300, 5000) == 0);
  CHECK(make_incomplete(p200) == 0);
  CHECK_EQ_INT(ckpt_load_latest(dir, load_cb, &lc, &loaded), 1);
  CHECK(loaded && strstr(loaded, "ckpt-00000100.h5"));
  CHECK_EQ_INT(o2.step, 1);
  free(loaded);
  latest = ckpt_find_latest(dir, &st);
  CHECK(latest && st == 100);
  free(latest);
  /* none usable */
  char *p100 = ckpt_path_for_step(dir, 100);
  CHECK(make_incomplete(p100) == 0);
  CHECK_EQ_INT(ckpt_load_latest(dir, load_cb, &lc, &loaded), -1);
  CHECK_MSG(strstr(t5g_last_error(), "none of the 3 checkpoints") && strstr(t5g_last_error(), "incomplete"), "%s", t5g_last_error());
  CHECK(ckpt_find_latest(dir, &st) == NULL);
  free(p100); free(p200); free(p300); free(at200);
  adamw_free(&opt); adamw_free(&o2);
  params_free(&ps); params_free(&q);
  rm_rf(dir);
  free(dir);
}

TEST(keep_last_k) {
  char *dir = mk_run_dir("run-prune");
  ParamStore ps; make_store(&ps, 8, 3);
  for (int k = 0; k <= 7; k++) {
    char *p = ckpt_path_for_step(dir, k == 0 ? 50 : 100 * k);
    Ckpt *c = ckpt_create(p, 100 * k);
    CHECK(c && ckpt_put_params(c, &ps) == 0 && ckpt_commit(c) == 0);
    if (k == 0 || k == 7) CHECK(make_incomplete(p) == 0);  /* 50 and 700 are incomplete */
    free(p);
  }
  /* temporaries: one of a dead writer, one of ours (kept), one of a live process (init, pid 1) */
  char *dead = t5g_path_join(dir, "ckpt-00000800.h5.tmp.2147483600");
  char ours_name[64]; snprintf(ours_name, sizeof ours_name, "ckpt-00000800.h5.tmp.%d", (int)getpid());
  char *ours = t5g_path_join(dir, ours_name);
  char *live = t5g_path_join(dir, "ckpt-00000800.h5.tmp.1");
  FILE *f;
  f = fopen(dead, "w"); fclose(f); f = fopen(ours, "w"); fclose(f); f = fopen(live, "w"); fclose(f);
  int del = ckpt_prune(dir, 3);
  CHECK_MSG(del == 5, "deleted %d (%s)", del, del < 0 ? t5g_last_error() : "");
  CkptFile *fl; int nf;
  CHECK(ckpt_list(dir, &fl, &nf) == 0);
  CHECK_EQ_INT(nf, 4);  /* 400 500 600 kept, 700 (newer, incomplete) left alone */
  CHECK(fl[0].step == 400 && fl[1].step == 500 && fl[2].step == 600 && fl[3].step == 700);
  ckpt_list_free(fl, nf);
  CHECK(!t5g_file_exists(dead) && t5g_file_exists(ours) && t5g_file_exists(live));
  CHECK_EQ_INT(ckpt_prune(dir, 3), 0);   /* idempotent */
  CHECK_EQ_INT(ckpt_prune(dir, 10), 0);  /* fewer than K complete: nothing deleted */
  CHECK_EQ_INT(ckpt_prune(dir, 1), 2);
  CHECK(ckpt_prune(dir, 0) == -1);
  CHECK(ckpt_list(dir, &fl, &nf) == 0);
  CHECK(nf == 2 && fl[0].step == 600 && fl[1].step == 700);
  ckpt_list_free(fl, nf);
  free(dead); free(ours); free(live);
  params_free(&ps);
  rm_rf(dir);
  free(dir);
}

TEST(average_of_last_k) {
  char *dir = mk_run_dir("run-avg");
  ParamStore ps[4];
  char *paths[4];
  for (int k = 0; k < 4; k++) {
    make_store(&ps[k], 100 + k, NSPEC);
    paths[k] = ckpt_path_for_step(dir, 1000 * (k + 1));
    Ckpt *c = ckpt_create(paths[k], 1000 * (k + 1));
    CHECK(c && ckpt_put_params(c, &ps[k]) == 0 && ckpt_commit(c) == 0);
  }
  ParamStore out; make_store(&out, 0, NSPEC);
  CHECK_MSG(ckpt_average((const char *const *)paths, 3, &out) == 0, "%s", t5g_last_error());
  for (int64_t q = 0; q < out.n_total; q++) {
    double mean = ((double)ps[0].data[q] + ps[1].data[q] + ps[2].data[q]) / 3.0;
    CHECK_MSG(fabs(out.data[q] - mean) <= 3e-7 * (1 + fabs(mean)), "[%lld] %.9g vs %.9g", (long long)q, out.data[q], mean);
  }
  /* the newest 2 of the run directory: steps 3000 and 4000 */
  int used = 0;
  CHECK(ckpt_average_last(dir, 2, &out, &used) == 0 && used == 2);
  for (int64_t q = 0; q < out.n_total; q++) {
    double mean = ((double)ps[2].data[q] + ps[3].data[q]) / 2.0;
    CHECK(fabs(out.data[q] - mean) <= 3e-7 * (1 + fabs(mean)));
  }
  /* K larger than available: all 4; an incomplete newest one is skipped */
  CHECK(make_incomplete(paths[3]) == 0);
  CHECK(ckpt_average_last(dir, 5, &out, &used) == 0 && used == 3);
  CHECK_NEAR(out.data[5], ((double)ps[0].data[5] + ps[1].data[5] + ps[2].data[5]) / 3.0, 1e-6);
  /* k = 1 is a plain load */
  CHECK(ckpt_average((const char *const *)paths, 1, &out) == 0);
  CHECK(memcmp(out.data, ps[0].data, out.n_total * sizeof(float)) == 0);
  /* a corrupt member is named */
  CHECK(flip_byte(paths[1], ds_offset(paths[1], "/params/model.encoder.embed_tokens.weight") + 8) == 0);
  CHECK(ckpt_average((const char *const *)paths, 3, &out) == -1);
  CHECK_MSG(strstr(t5g_last_error(), paths[1]) && strstr(t5g_last_error(), "embed_tokens"), "%s", t5g_last_error());
  for (int k = 0; k < 4; k++) { params_free(&ps[k]); free(paths[k]); }
  params_free(&out);
  rm_rf(dir);
  free(dir);
}

/* ---- signals ----------------------------------------------------------------------------- */
TEST(stop_signal_flag) {
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    t5g_signals_install();
    if (t5g_stop_requested() != 0) _exit(2);
    raise(SIGTERM);
    if (t5g_stop_requested() != SIGTERM) _exit(3);
    t5g_signals_clear();
    raise(SIGINT);
    if (t5g_stop_requested() != SIGINT) _exit(4);
    raise(SIGINT);  /* second request: the default action ends the process */
    _exit(5);
  }
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK_MSG(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT, "child status %d (exit %d)", status,
            WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

TEST(zz_cleanup) { rm_rf(tdir()); CHECK(!t5g_file_exists(tdir())); }

/* ---- export mode for tests/t_checkpoint_h5py.sh ------------------------------------------ */
/* Writes <dir>/ckpt-00000042.h5 and <dir>/expect.txt: per parameter "name ndim d0 d1 ... first last"
 * (values %.9g), then "state reader v0..v5" and the two strings on their own lines. */
static void export_mode(const char *dir) {
  ParamStore ps; make_store(&ps, 42, NSPEC);
  AdamWConfig cfg; adamw_config_default(&cfg);
  AdamW opt; adamw_init(&opt, &ps, &cfg, 0, ps.n_total);
  train_a_bit(&ps, &opt, 3, 1);
  LrSchedule s; lr_schedule_default(&s);
  char *path = ckpt_path_for_step(dir, 42);
  if (save_full(path, 42, &ps, &opt, &s) != 0) { fprintf(stderr, "%s\n", t5g_last_error()); exit(2); }
  char *ex = t5g_path_join(dir, "expect.txt");
  FILE *f = fopen(ex, "w");
  if (!f) exit(2);
  for (int i = 0; i < ps.n; i++) {
    const ParamEntry *e = &ps.e[i];
    fprintf(f, "%s %d", e->name, e->t.ndim);
    for (int d = 0; d < e->t.ndim; d++) fprintf(f, " %lld", (long long)e->t.shape[d]);
    fprintf(f, " %.9g %.9g %lld\n", e->t.data[0], e->t.data[e->t.n - 1], (long long)opt.entry_step[i]);
  }
  fprintf(f, "state reader");
  for (int k = 0; k < 6; k++) fprintf(f, " %lld", (long long)reader_state[k]);
  fprintf(f, "\n%s\n%s\n", train_json, model_json);
  int bad = fclose(f) != 0;
  free(ex); free(path);
  adamw_free(&opt);
  params_free(&ps);
  exit(bad ? 2 : 0);
}

__attribute__((constructor(200))) static void maybe_export(void) {
  const char *d = getenv("T5G_CKPT_EXPORT");
  if (d && *d) export_mode(d);
}

TEST_MAIN()
