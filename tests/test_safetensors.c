/* test_safetensors.c: safetensors reader/writer (model/safetensors.c) and HF checkpoint I/O of a
 * ParamStore (model/hf_io.c).
 *
 * Rounding is checked against an independent reference: the correctly rounded neighbour found by
 * binary search over the (monotonic) bit patterns of non-negative bf16/f16 values, whose values
 * are computed from the IEEE formula sign·(1+m/2^M)·2^(e-bias) in double; ties go to the even
 * pattern. Bad files are crafted byte by byte. tests/t_safetensors_py.sh checks our files with
 * an independent Python reader (exchange modes at the end of this file). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
#include "tests/check.h"
#include "model/hf_io.h"
#include "model/rng.h"
#include "model/safetensors.h"
#include "model/util.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static void rm_rf(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char *p = t5g_path_join(dir, e->d_name);
    struct stat st;
    if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) rm_rf(p); else unlink(p);
    free(p);
  }
  closedir(d);
  rmdir(dir);
}

static char *make_tmpdir(void) {
  char t[] = "/tmp/t5g-test-st-XXXXXX";
  T5G_ASSERT(mkdtemp(t));
  return t5g_strdup(t);
}

static int count_files(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d))) if (e->d_name[0] != '.') n++;
  if (d) closedir(d);
  return n;
}

static uint32_t f2u(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static float u2f(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

/* IEEE value of a non-negative pattern with M mantissa bits, exponent bias B, max exponent field
 * Emax (all ones = inf). The inf pattern is given the value 2^(Emax-B) (the next binade), which is
 * where round-to-nearest would go past the largest finite value. */
static double pat_val(uint32_t p, int M, int B, int Emax) {
  uint32_t e = p >> M, m = p & ((1u << M) - 1);
  if (e == (uint32_t)Emax) return ldexp(1.0, Emax - B);
  if (e == 0) return ldexp((double)m, 1 - B - M);
  return ldexp(1.0 + (double)m / (1u << M), (int)e - B);
}
/* Correctly rounded (nearest, ties to even) pattern for x (not NaN). */
static uint16_t ref_round(float x, int M, int B, int Emax, uint16_t sign_bit) {
  double a = fabs((double)x);
  uint32_t inf = (uint32_t)Emax << M, lo = 0, hi = inf;
  if (a >= pat_val(inf, M, B, Emax)) return (uint16_t)((signbit(x) ? sign_bit : 0) | inf);
  while (lo < hi) {                      /* largest p with val(p) <= a */
    uint32_t mid = (lo + hi + 1) / 2;
    if (pat_val(mid, M, B, Emax) <= a) lo = mid; else hi = mid - 1;
  }
  uint32_t p = lo;
  double dl = a - pat_val(p, M, B, Emax), dh = pat_val(p + 1, M, B, Emax) - a;
  if (dh < dl || (dh == dl && (p & 1))) p++;
  return (uint16_t)((signbit(x) ? sign_bit : 0) | p);
}
static uint16_t ref_bf16(float x) { return ref_round(x, 7, 127, 255, 0x8000); }
static uint16_t ref_f16(float x) { return ref_round(x, 10, 15, 31, 0x8000); }
/* Values of finite and infinite (not NaN) patterns. */
static double ref_bf16_val(uint16_t h) {
  double v = (h & 0x7fff) == 0x7f80 ? INFINITY : pat_val(h & 0x7fff, 7, 127, 255);
  return (h & 0x8000) ? -v : v;
}
static double ref_f16_val(uint16_t h) {
  double v = (h & 0x7fff) == 0x7c00 ? INFINITY : pat_val(h & 0x7fff, 10, 15, 31);
  return (h & 0x8000) ? -v : v;
}

/* ---- element conversions ------------------------------------------------------------------- */

TEST(bf16_rounding_values) {
  struct { float x; uint16_t want; } v[] = {
    {1.0f, 0x3f80}, {-2.0f, 0xc000}, {0.0f, 0x0000}, {-0.0f, 0x8000},
    {u2f(0x3f808000), 0x3f80},   /* 1 + 2^-8: halfway between 1 (even) and 1+2^-7 -> 1 */
    {u2f(0x3f818000), 0x3f82},   /* 1 + 3·2^-8: halfway between 0x3f81 (odd) and 0x3f82 -> 0x3f82 */
    {u2f(0x3f808001), 0x3f81},   /* just above halfway -> up */
    {u2f(0x3f807fff), 0x3f80},   /* just below halfway -> down */
    {u2f(0xbf818000), 0xbf82},   /* negative tie */
    {3.14159265f, 0x4049},       /* 3.140625 */
    {INFINITY, 0x7f80}, {-INFINITY, 0xff80},
    {u2f(0x7f7fffff), 0x7f80},   /* FLT_MAX rounds past the largest bf16 to inf */
    {u2f(0x7f7f7fff), 0x7f7f},   /* stays finite */
    {u2f(0x00000001), 0x0000},   /* smallest f32 subnormal -> 0 */
    {u2f(0x00008000), 0x0000},   /* subnormal tie -> even (0) */
    {u2f(0x00018000), 0x0002},   /* subnormal tie -> even (2) */
  };
  for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
    CHECK_MSG(st_f32_to_bf16(v[i].x) == v[i].want, "case %zu: %.9g -> 0x%04x, want 0x%04x", i, v[i].x, st_f32_to_bf16(v[i].x), v[i].want);
    CHECK_MSG(ref_bf16(v[i].x) == v[i].want, "reference disagrees on case %zu", i);
  }
  /* NaN stays NaN with its sign; a signalling NaN becomes quiet */
  uint16_t n1 = st_f32_to_bf16(u2f(0x7fc00000)), n2 = st_f32_to_bf16(u2f(0xffc00001)), n3 = st_f32_to_bf16(u2f(0x7f800001));
  CHECK(n1 == 0x7fc0);
  CHECK(n2 == 0xffc0);
  CHECK(isnan(st_bf16_to_f32(n3)) && (n3 & 0x8000) == 0);
  CHECK(isnan(st_bf16_to_f32(st_f32_to_bf16(u2f(0x7fffffff)))));
}

TEST(bf16_all_patterns_and_random) {
  for (uint32_t h = 0; h < 65536; h++) {
    float f = st_bf16_to_f32((uint16_t)h);
    int nan = ((h & 0x7f80) == 0x7f80) && (h & 0x7f);
    if (nan) { CHECK_MSG(isnan(f), "0x%04x", h); CHECK(isnan(st_bf16_to_f32(st_f32_to_bf16(f)))); continue; }
    CHECK_MSG((double)f == ref_bf16_val((uint16_t)h) && (signbit(f) != 0) == ((h & 0x8000) != 0), "bf16 0x%04x -> %.9g", h, f);
    CHECK_MSG(st_f32_to_bf16(f) == h, "round trip 0x%04x", h);
  }
  Rng r; rng_seed(&r, 1);
  for (int i = 0; i < 300000; i++) {
    uint32_t u;
    if (i % 3 == 0) {                    /* exact midpoints and their neighbours */
      uint32_t p = (uint32_t)rng_below(&r, 0x7f7f);
      u = (p << 16) | 0x8000u;
      u += (uint32_t)rng_below(&r, 3) - 1;
      u |= (uint32_t)(rng_u64(&r) & 1) << 31;
    } else u = (uint32_t)rng_u64(&r);
    float x = u2f(u);
    if (isnan(x)) continue;
    CHECK_MSG(st_f32_to_bf16(x) == ref_bf16(x), "0x%08x -> 0x%04x, reference 0x%04x", u, st_f32_to_bf16(x), ref_bf16(x));
  }
}

TEST(f16_rounding_values) {
  struct { float x; uint16_t want; } v[] = {
    {1.0f, 0x3c00}, {-2.0f, 0xc000}, {-0.0f, 0x8000}, {65504.0f, 0x7bff},
    {65519.0f, 0x7bff},               /* below the halfway point 65520 */
    {65520.0f, 0x7c00},               /* halfway to 2^16: ties to even -> inf */
    {1e6f, 0x7c00}, {-1e6f, 0xfc00}, {INFINITY, 0x7c00},
    {0x1p-24f, 0x0001},               /* smallest subnormal */
    {0x1p-25f, 0x0000},               /* tie between 0 and 2^-24 -> 0 (even) */
    {0x3p-25f, 0x0002},               /* tie between 1 and 2 units -> 2 */
    {0x1.000002p-25f, 0x0001},        /* just above the tie */
    {0x1p-14f, 0x0400},               /* smallest normal */
    {1023.5f * 0x1p-24f, 0x0400},     /* tie between 0x03ff (odd) and 0x0400 -> 0x0400 */
    {1022.5f * 0x1p-24f, 0x03fe},     /* tie -> even 0x03fe */
    {1.0f + 0x1p-11f, 0x3c00},        /* tie -> 1.0 */
    {1.0f + 0x3p-11f, 0x3c02},        /* tie -> 0x3c02 */
    {0.1f, 0x2e66},
  };
  for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
    CHECK_MSG(st_f32_to_f16(v[i].x) == v[i].want, "case %zu: %.9g -> 0x%04x, want 0x%04x", i, v[i].x, st_f32_to_f16(v[i].x), v[i].want);
    CHECK_MSG(ref_f16(v[i].x) == v[i].want, "reference disagrees on case %zu", i);
  }
  CHECK(st_f32_to_f16(NAN) == 0x7e00 || (st_f32_to_f16(NAN) & 0x7c00) == 0x7c00);
  CHECK(isnan(st_f16_to_f32(st_f32_to_f16(u2f(0x7f800001)))));
  CHECK((st_f32_to_f16(u2f(0xffc00000)) & 0x8000) != 0);
  /* f16 -> f32 special values */
  CHECK(st_f16_to_f32(0x0001) == 0x1p-24f);
  CHECK(st_f16_to_f32(0x03ff) == 1023 * 0x1p-24f);
  CHECK(st_f16_to_f32(0x8001) == -0x1p-24f);
  CHECK(st_f16_to_f32(0x7bff) == 65504.0f);
  CHECK(isinf(st_f16_to_f32(0xfc00)) && st_f16_to_f32(0xfc00) < 0);
  CHECK(isnan(st_f16_to_f32(0x7e01)) && isnan(st_f16_to_f32(0xfc01)));
}

TEST(f16_all_patterns_and_random) {
  for (uint32_t h = 0; h < 65536; h++) {
    float f = st_f16_to_f32((uint16_t)h);
    int nan = ((h & 0x7c00) == 0x7c00) && (h & 0x3ff);
    if (nan) { CHECK_MSG(isnan(f), "0x%04x", h); CHECK(isnan(st_f16_to_f32(st_f32_to_f16(f)))); continue; }
    CHECK_MSG((double)f == ref_f16_val((uint16_t)h) && (signbit(f) != 0) == ((h & 0x8000) != 0), "f16 0x%04x -> %.9g", h, f);
    CHECK_MSG(st_f32_to_f16(f) == h, "round trip 0x%04x", h);
  }
  Rng r; rng_seed(&r, 2);
  for (int i = 0; i < 300000; i++) {
    float x;
    if (i % 3 == 0) {                    /* midpoints between neighbouring f16 values, +-1 f32 ulp */
      uint32_t p = (uint32_t)rng_below(&r, 0x7bff);
      double mid = (ref_f16_val((uint16_t)p) + ref_f16_val((uint16_t)(p + 1))) / 2;
      x = (float)mid;                    /* exact: 12 significant bits */
      x = u2f(f2u(x) + (uint32_t)rng_below(&r, 3) - 1);
      if (rng_u64(&r) & 1) x = -x;
    } else if (i % 3 == 1) {             /* magnitudes around the f16 range */
      x = (float)ldexp(rng_uniform_d(&r) + 0.5, (int)rng_below(&r, 50) - 30);
      if (rng_u64(&r) & 1) x = -x;
    } else x = u2f((uint32_t)rng_u64(&r));
    if (isnan(x)) continue;
    CHECK_MSG(st_f32_to_f16(x) == ref_f16(x), "%a (0x%08x) -> 0x%04x, reference 0x%04x", x, f2u(x), st_f32_to_f16(x), ref_f16(x));
  }
}

/* ---- files: round trips -------------------------------------------------------------------- */

typedef struct { const char *name; int ndim; int64_t shape[4]; float *data; int64_t n; } Item;

static void make_items(Item *it, int n, uint64_t seed) {
  static const struct { const char *name; int ndim; int64_t shape[4]; } spec[] = {
    {"model.embed_tokens.weight", 2, {37, 11}}, {"model.norm.weight", 1, {11}}, {"scalar", 0, {0}},
    {"empty", 2, {0, 5}}, {"cube", 3, {3, 4, 5}}, {"four.d", 4, {2, 3, 2, 3}},
    {"model.layers.0.mlp.up_proj.weight", 2, {50, 11}}, {"z.last", 1, {7}},
  };
  T5G_ASSERT(n == (int)(sizeof spec / sizeof *spec));
  Rng r; rng_seed(&r, seed);
  for (int i = 0; i < n; i++) {
    it[i].name = spec[i].name; it[i].ndim = spec[i].ndim;
    it[i].n = 1;
    for (int d = 0; d < spec[i].ndim; d++) { it[i].shape[d] = spec[i].shape[d]; it[i].n *= spec[i].shape[d]; }
    it[i].data = t5g_malloc(sizeof(float) * (size_t)(it[i].n + 1));
    for (int64_t j = 0; j < it[i].n; j++) it[i].data[j] = (float)(rng_normal(&r) * (j % 7 == 0 ? 1e3 : 1.0));
  }
}
#define NITEMS 8

static int save_items(const char *dir, StDtype dt, int64_t max_shard, Item *it, int n) {
  StSaveItem s[NITEMS];
  for (int i = 0; i < n; i++) s[i] = (StSaveItem){it[i].name, it[i].ndim, it[i].shape, it[i].data};
  return st_save(dir, NULL, dt, max_shard, n, s);
}

TEST(round_trip_all_dtypes) {
  Item it[NITEMS];
  make_items(it, NITEMS, 7);
  it[0].data[1] = NAN; it[0].data[2] = INFINITY; it[0].data[3] = -0.0f; it[0].data[4] = 1e-42f; it[0].data[5] = 70000.0f;
  char *dir = make_tmpdir();
  for (int k = 0; k < 3; k++) {
    StDtype dt = k == 0 ? ST_F32 : k == 1 ? ST_BF16 : ST_F16;
    CHECK_MSG(save_items(dir, dt, 0, it, NITEMS) == 0, "%s", t5g_last_error());
    StReader r;
    CHECK_MSG(st_open(&r, dir) == 0, "%s", t5g_last_error());
    CHECK_EQ_INT(r.n, NITEMS);
    CHECK_EQ_INT(r.n_files, 1);
    for (int i = 0; i < NITEMS; i++) {
      const StTensor *t = st_find(&r, it[i].name);
      CHECK_MSG(t, "%s missing", it[i].name);
      CHECK(t->dtype == dt && t->ndim == it[i].ndim && t->numel == it[i].n);
      for (int d = 0; d < it[i].ndim; d++) CHECK(t->shape[d] == it[i].shape[d]);
      float *out = t5g_malloc(sizeof(float) * (size_t)(it[i].n + 1));
      st_read_f32(t, out);
      for (int64_t j = 0; j < it[i].n; j++) {
        float x = it[i].data[j];
        if (isnan(x)) { CHECK(isnan(out[j])); continue; }
        double want = dt == ST_F32 ? x : dt == ST_BF16 ? ref_bf16_val(ref_bf16(x)) : ref_f16_val(ref_f16(x));
        CHECK_MSG(f2u(out[j]) == f2u((float)want), "%s %s[%lld]: %.9g -> %.9g, want %.9g", st_dtype_name(dt), it[i].name, (long long)j, x, out[j], want);
      }
      free(out);
    }
    CHECK(!st_find(&r, "nope"));
    st_close(&r);
  }
  /* data section is 8-byte aligned and tensors are contiguous in plan order */
  CHECK(save_items(dir, ST_F32, 0, it, NITEMS) == 0);
  StReader r;
  CHECK(st_open(&r, dir) == 0);
  CHECK_EQ_INT(r.files[0].data_start % 8, 0);
  const char *base = (const char *)r.files[0].map + r.files[0].data_start;
  int64_t off = 0;
  for (int i = 0; i < NITEMS; i++) {
    const StTensor *t = st_find(&r, it[i].name);
    CHECK_EQ_INT((const char *)t->data - base, off);
    off += t->nbytes;
  }
  CHECK_EQ_INT(r.files[0].data_start + off, (int64_t)r.files[0].size);
  st_close(&r);
  for (int i = 0; i < NITEMS; i++) free(it[i].data);
  rm_rf(dir); free(dir);
}

TEST(sharded_equals_single) {
  Item it[NITEMS];
  make_items(it, NITEMS, 11);
  char *d1 = make_tmpdir(), *d2 = make_tmpdir();
  CHECK(save_items(d1, ST_BF16, 0, it, NITEMS) == 0);
  /* bf16 sizes: 814, 22, 2, 0, 120, 72, 1100, 14 bytes; max 800 -> greedy packing:
   * [814] [22 2 0 120 72] [1100] [14] -> 4 files, two of them bigger than max (one tensor each) */
  CHECK_MSG(save_items(d2, ST_BF16, 800, it, NITEMS) == 0, "%s", t5g_last_error());
  char p[512];
  for (int k = 1; k <= 4; k++) {
    snprintf(p, sizeof p, "%s/model-%05d-of-00004.safetensors", d2, k);
    CHECK_MSG(t5g_file_exists(p), "%s missing", p);
  }
  snprintf(p, sizeof p, "%s/model.safetensors.index.json", d2);
  char *idx = t5g_read_file(p, NULL);
  CHECK(idx);
  cJSON *j = cJSON_Parse(idx);
  free(idx);
  CHECK(j);
  CHECK_EQ_INT(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "metadata"), "total_size")->valuedouble, 814 + 22 + 2 + 0 + 120 + 72 + 1100 + 14);
  cJSON *wm = cJSON_GetObjectItem(j, "weight_map");
  CHECK_EQ_INT(cJSON_GetArraySize(wm), NITEMS);
  CHECK_STR(cJSON_GetObjectItem(wm, "model.embed_tokens.weight")->valuestring, "model-00001-of-00004.safetensors");
  CHECK_STR(cJSON_GetObjectItem(wm, "cube")->valuestring, "model-00002-of-00004.safetensors");
  CHECK_STR(cJSON_GetObjectItem(wm, "model.layers.0.mlp.up_proj.weight")->valuestring, "model-00003-of-00004.safetensors");
  CHECK_STR(cJSON_GetObjectItem(wm, "z.last")->valuestring, "model-00004-of-00004.safetensors");
  cJSON_Delete(j);
  CHECK_EQ_INT(count_files(d2), 5);   /* no temporary files left */
  StReader a, b, c;
  CHECK(st_open(&a, d1) == 0);
  CHECK_MSG(st_open(&b, d2) == 0, "%s", t5g_last_error());
  CHECK(st_open(&c, p) == 0);          /* the index path itself */
  CHECK_EQ_INT(b.n_files, 4);
  CHECK(a.n == b.n && b.n == c.n);
  for (int i = 0; i < a.n; i++) {
    const StTensor *x = &a.t[i], *y = st_find(&b, x->name);
    CHECK(y && y->numel == x->numel && y->dtype == x->dtype && y->ndim == x->ndim);
    CHECK(memcmp(x->shape, y->shape, sizeof(int64_t) * x->ndim) == 0);
    CHECK(memcmp(x->data, y->data, (size_t)x->nbytes) == 0);
  }
  st_close(&a); st_close(&b); st_close(&c);
  /* a single-file save into the sharded directory replaces it: index and shards removed */
  CHECK(save_items(d2, ST_F32, 0, it, NITEMS) == 0);
  CHECK_EQ_INT(count_files(d2), 1);
  CHECK(st_open(&b, d2) == 0 && b.n_files == 1 && b.t[0].dtype == ST_F32);
  st_close(&b);
  /* and a sharded save with another shard count removes the single file and old shards */
  CHECK(save_items(d2, ST_BF16, 800, it, NITEMS) == 0);
  CHECK(save_items(d2, ST_BF16, 2000, it, NITEMS) == 0);   /* [814 22 2 0 120 72] [1100 14] */
  CHECK_EQ_INT(count_files(d2), 3);
  CHECK(st_open(&b, d2) == 0 && b.n_files == 2);
  st_close(&b);
  for (int i = 0; i < NITEMS; i++) free(it[i].data);
  rm_rf(d1); rm_rf(d2); free(d1); free(d2);
}

TEST(streaming_writer_rules) {
  char *dir = make_tmpdir();
  int64_t s1[2] = {2, 3}, s2[1] = {4};
  float a[6] = {1, 2, 3, 4, 5, 6}, b[4] = {7, 8, 9, 10};
  /* out-of-order writes are fine */
  StWriter *w = st_writer_begin(dir, "weights", ST_F32, 0);
  CHECK(w);
  CHECK(st_writer_plan(w, "a", 2, s1) == 0 && st_writer_plan(w, "b", 1, s2) == 0);
  CHECK(st_writer_plan(w, "a", 1, s2) != 0 && strstr(t5g_last_error(), "\"a\" planned twice"));
  CHECK(st_writer_write(w, "b", b) == 0 && st_writer_write(w, "a", a) == 0);
  CHECK(st_writer_write(w, "a", a) != 0 && strstr(t5g_last_error(), "\"a\" written twice"));
  CHECK(st_writer_write(w, "c", a) != 0 && strstr(t5g_last_error(), "\"c\" was not planned"));
  CHECK(st_writer_plan(w, "late", 1, s2) != 0 && strstr(t5g_last_error(), "late"));
  CHECK(st_writer_finish(w) == 0);
  char p[512]; snprintf(p, sizeof p, "%s/weights.safetensors", dir);
  StReader r;
  CHECK_MSG(st_open(&r, p) == 0, "%s", t5g_last_error());
  float out[6];
  st_read_f32(st_find(&r, "a"), out); CHECK(memcmp(out, a, sizeof a) == 0);
  st_read_f32(st_find(&r, "b"), out); CHECK(memcmp(out, b, sizeof b) == 0);
  st_close(&r);
  /* a tensor never written: finish fails, names it, leaves no file behind */
  rm_rf(dir); free(dir); dir = make_tmpdir();
  w = st_writer_begin(dir, NULL, ST_BF16, 0);
  CHECK(st_writer_plan(w, "a", 2, s1) == 0 && st_writer_plan(w, "b", 1, s2) == 0);
  CHECK(st_writer_write(w, "a", a) == 0);
  CHECK(st_writer_finish(w) != 0 && strstr(t5g_last_error(), "\"b\" was planned but never written"));
  CHECK_EQ_INT(count_files(dir), 0);
  /* abort removes the temporaries */
  w = st_writer_begin(dir, NULL, ST_F16, 8);
  CHECK(st_writer_plan(w, "a", 2, s1) == 0 && st_writer_plan(w, "b", 1, s2) == 0);
  CHECK(st_writer_write(w, "a", a) == 0);
  CHECK_EQ_INT(st_writer_n_files(w), 2);
  CHECK(count_files(dir) == 2);
  st_writer_abort(w);
  CHECK_EQ_INT(count_files(dir), 0);
  /* bad plans */
  w = st_writer_begin(dir, NULL, ST_F32, 0);
  int64_t neg[1] = {-3};
  CHECK(st_writer_plan(w, "n", 1, neg) != 0 && strstr(t5g_last_error(), "\"n\""));
  CHECK(st_writer_plan(w, "__metadata__", 1, s2) != 0);
  CHECK(st_writer_plan(w, "", 1, s2) != 0);
  st_writer_abort(w);
  /* zero tensors: a valid empty file */
  CHECK(st_save(dir, NULL, ST_F32, 0, 0, NULL) == 0);
  CHECK(st_open(&r, dir) == 0 && r.n == 0);
  st_close(&r);
  rm_rf(dir); free(dir);
}

/* ---- files: bad inputs --------------------------------------------------------------------- */

static void write_raw(const char *path, uint64_t hlen, const char *header, const void *data, size_t nd) {
  FILE *f = fopen(path, "wb");
  T5G_ASSERT(f);
  unsigned char b[8];
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)(hlen >> (8 * i));
  fwrite(b, 1, 8, f);
  fwrite(header, 1, strlen(header), f);
  if (nd) fwrite(data, 1, nd, f);
  fclose(f);
}
static void write_st(const char *path, const char *header, size_t nd) {
  static char zeros[4096];
  write_raw(path, strlen(header), header, zeros, nd);
}

/* st_open must fail with a message containing the file path and every expected piece. */
static int expect_fail(const char *path, const char *want1, const char *want2, char *why, size_t n) {
  StReader r;
  int rc = st_open(&r, path);
  if (rc == 0) { st_close(&r); snprintf(why, n, "%s was accepted", path); return 0; }
  const char *m = t5g_last_error();
  if (!strstr(m, path) && !strstr(path, m)) {
    /* the path in the message may be the directory's or the shard's; accept either prefix */
    char dir[512]; snprintf(dir, sizeof dir, "%s", path);
    char *s = strrchr(dir, '/'); if (s) *s = 0;
    if (!strstr(m, dir)) { snprintf(why, n, "message does not name the file: %s", m); return 0; }
  }
  if (want1 && !strstr(m, want1)) { snprintf(why, n, "message lacks \"%s\": %s", want1, m); return 0; }
  if (want2 && !strstr(m, want2)) { snprintf(why, n, "message lacks \"%s\": %s", want2, m); return 0; }
  return 1;
}

TEST(bad_files) {
  char *dir = make_tmpdir();
  char p[512], why[1024];
  snprintf(p, sizeof p, "%s/bad.safetensors", dir);
  struct { const char *header; size_t nd; const char *w1, *w2; } cases[] = {
    {"{bad json", 0, "not valid JSON", NULL},
    {"[1,2,3]", 0, "not a JSON object", NULL},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}  xx", 8, "trailing", NULL},
    {"{\"w1\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"w2\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 24, "overlap", "\"w2\""},
    {"{\"mism\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,8]}}", 8, "\"mism\"", "needs 16"},
    {"{\"big\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 12, "\"big\"", "outside the data section"},
    {"{\"d64\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, "\"d64\"", "F64, which is not supported"},
    {"{\"q\":{\"dtype\":\"Q4_K\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2, "\"q\"", "unknown dtype"},
    {"{\"i8\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, "\"i8\"", "I8"},
    {"{\"neg\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0, "\"neg\"", "shape entry 0"},
    {"{\"frac\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "\"frac\"", "shape"},
    {"{\"nooff\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "\"nooff\"", "data_offsets"},
    {"{\"rev\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, "\"rev\"", "data_offsets"},
    {"{\"nodt\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "\"nodt\"", "dtype"},
    {"{\"notobj\":5}", 0, "\"notobj\"", NULL},
    {"{\"dup\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"dup\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "\"dup\"", "twice"},
    {"{\"__metadata__\":5}", 0, "__metadata__", NULL},
    {"{\"huge\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1073741824],\"data_offsets\":[0,4]}}", 4, "\"huge\"", "too large"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    write_st(p, cases[i].header, cases[i].nd);
    CHECK_MSG(expect_fail(p, cases[i].w1, cases[i].w2, why, sizeof why), "case %zu: %s", i, why);
  }
  /* the same headers, made valid, are accepted (the cases fail for the stated reason) */
  write_st(p, "{\"w1\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"w2\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]},"
              "\"__metadata__\":{\"format\":\"pt\"}}   ", 24);
  StReader r;
  CHECK_MSG(st_open(&r, p) == 0, "%s", t5g_last_error());
  st_close(&r);
  /* short files and bad header lengths */
  write_raw(p, 0, "", NULL, 0);
  FILE *f = fopen(p, "wb"); fwrite("abcde", 1, 5, f); fclose(f);
  CHECK_MSG(expect_fail(p, "truncated", NULL, why, sizeof why), "%s", why);
  write_raw(p, 1000, "{}", NULL, 0);
  CHECK_MSG(expect_fail(p, "header length 1000 runs past the end", NULL, why, sizeof why), "%s", why);
  write_raw(p, UINT64_MAX, "{}", NULL, 0);
  CHECK_MSG(expect_fail(p, "runs past the end", NULL, why, sizeof why), "%s", why);
  /* a good file truncated: the last tensor's data runs past the end */
  Item it[NITEMS];
  make_items(it, NITEMS, 3);
  char sub[600]; snprintf(sub, sizeof sub, "%s/trunc", dir);
  CHECK(save_items(sub, ST_F32, 0, it, NITEMS) == 0);
  char mp[700]; snprintf(mp, sizeof mp, "%s/model.safetensors", sub);
  struct stat st; CHECK(stat(mp, &st) == 0);
  CHECK(truncate(mp, st.st_size - 4) == 0);
  CHECK_MSG(expect_fail(mp, "\"z.last\"", "outside the data section", why, sizeof why), "%s", why);
  CHECK(truncate(mp, 3) == 0);
  CHECK_MSG(expect_fail(mp, "truncated", NULL, why, sizeof why), "%s", why);
  /* sharded checkpoint problems */
  char sh[600]; snprintf(sh, sizeof sh, "%s/sharded", dir);
  CHECK(save_items(sh, ST_BF16, 800, it, NITEMS) == 0);
  char ip[700]; snprintf(ip, sizeof ip, "%s/model.safetensors.index.json", sh);
  char *orig = t5g_read_file(ip, NULL);
  CHECK(orig);
  struct { const char *from, *to, *w1, *w2; } ic[] = {
    {"\"z.last\":\t\"model-00004-of-00004.safetensors\"", "\"z.last\":\t\"model-00009-of-00009.safetensors\"", "model-00009-of-00009.safetensors", "cannot open"},
    {"\"z.last\":\t\"model-00004-of-00004.safetensors\"", "\"z.last\":\t\"model-00003-of-00004.safetensors\"", "\"z.last\"", "no such tensor"},
    {"\"cube\":\t\"model-00002-of-00004.safetensors\"", "\"cube\":\t\"model-00001-of-00004.safetensors\"", "\"cube\"", "stored in model-00002"},
    {"\"z.last\":\t\"model-00004-of-00004.safetensors\"", "\"y.other\":\t\"model-00004-of-00004.safetensors\"", "\"y.other\"", "no such tensor"},
    {"\"z.last\":\t\"model-00004-of-00004.safetensors\"", "\"z.last\":\t\"../model-00004-of-00004.safetensors\"", "\"z.last\"", "plain file name"},
    {"\"weight_map\"", "\"weightmap\"", "weight_map", NULL},
  };
  for (size_t i = 0; i < sizeof ic / sizeof *ic; i++) {
    char *s = strstr(orig, ic[i].from);
    CHECK_MSG(s, "index text lacks %s", ic[i].from);
    FILE *g = fopen(ip, "w");
    fwrite(orig, 1, s - orig, g); fputs(ic[i].to, g); fputs(s + strlen(ic[i].from), g);
    fclose(g);
    CHECK_MSG(expect_fail(sh, ic[i].w1, ic[i].w2, why, sizeof why), "index case %zu: %s", i, why);
  }
  /* a tensor of a shard missing from the weight_map (shard 2 stays referenced by others) */
  {
    cJSON *j = cJSON_Parse(orig);
    CHECK(j);
    cJSON_DeleteItemFromObject(cJSON_GetObjectItem(j, "weight_map"), "cube");
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    FILE *g = fopen(ip, "w"); fputs(txt, g); fclose(g);
    free(txt);
    CHECK_MSG(expect_fail(sh, "\"cube\"", "not listed in the index", why, sizeof why), "%s", why);
  }
  /* the same tensor in two shards */
  {
    FILE *g = fopen(ip, "w"); fputs(orig, g); fclose(g);
    char s4[700]; snprintf(s4, sizeof s4, "%s/model-00004-of-00004.safetensors", sh);
    char hdr[] = "{\"cube\":{\"dtype\":\"BF16\",\"shape\":[3,4,5],\"data_offsets\":[0,120]}}";
    write_st(s4, hdr, 120);
    CHECK_MSG(expect_fail(sh, "\"cube\"", "appears in both", why, sizeof why), "%s", why);
  }
  free(orig);
  /* no checkpoint in a directory; a missing path */
  char empty[600]; snprintf(empty, sizeof empty, "%s/empty", dir);
  CHECK(t5g_mkdir_p(empty) == 0);
  CHECK(expect_fail(empty, "no model.safetensors", NULL, why, sizeof why));
  snprintf(p, sizeof p, "%s/nonexistent.safetensors", dir);
  CHECK(expect_fail(p, "cannot open", NULL, why, sizeof why));
  for (int i = 0; i < NITEMS; i++) free(it[i].data);
  rm_rf(dir); free(dir);
}

/* ---- hf_io ---------------------------------------------------------------------------------- */

typedef struct { const char *name; int ndim; int64_t shape[2]; ParamGroup g; } PSpec;
static const PSpec pspec[] = {
  {"model.embed_tokens.weight", 2, {512, 64}, PG_EMBED},
  {"model.layers.0.self_attn.q_proj.weight", 2, {64, 64}, PG_MATRIX},
  {"model.layers.0.self_attn.k_proj.weight", 2, {32, 64}, PG_MATRIX},
  {"model.layers.0.mlp.up_proj.weight", 2, {128, 64}, PG_MATRIX},
  {"model.layers.0.input_layernorm.weight", 1, {64}, PG_NORM},
  {"model.norm.weight", 1, {64}, PG_NORM},
};
#define NPSPEC ((int)(sizeof pspec / sizeof *pspec))

/* a store with entries [lo, hi) of pspec, and optionally one spec replaced */
static void make_store(ParamStore *ps, int skip, const PSpec *extra, uint64_t seed) {
  params_init(ps);
  for (int i = 0; i < NPSPEC; i++) if (i != skip) params_add(ps, pspec[i].name, pspec[i].ndim, pspec[i].shape, pspec[i].g);
  if (extra) params_add(ps, extra->name, extra->ndim, extra->shape, extra->g);
  params_finalize(ps);
  Rng r; rng_seed(&r, seed);
  for (int i = 0; i < ps->n; i++)
    for (int64_t j = 0; j < ps->e[i].t.n; j++) ps->e[i].t.data[j] = (float)rng_normal(&r);
}

static int stores_equal(const ParamStore *a, const ParamStore *b, StDtype dt) {
  if (a->n != b->n) return 0;
  for (int i = 0; i < a->n; i++) {
    const Tensor *x = &a->e[i].t, *y = params_get((ParamStore *)b, a->e[i].name);
    if (!y || y->n != x->n) return 0;
    for (int64_t j = 0; j < x->n; j++) {
      float want = dt == ST_F32 ? x->data[j] : dt == ST_BF16 ? (float)ref_bf16_val(ref_bf16(x->data[j])) : (float)ref_f16_val(ref_f16(x->data[j]));
      if (f2u(want) != f2u(y->data[j])) return 0;
    }
  }
  return 1;
}

TEST(hf_save_load) {
  ModelConfig c;
  CHECK_MSG(config_resolve("tiny-gemma2", &c) == 0, "%s", t5g_last_error());
  ParamStore a, b;
  make_store(&a, -1, NULL, 5);
  char *dir = make_tmpdir();
  for (int k = 0; k < 3; k++) {
    HfSaveOptions o = {k == 0 ? ST_F32 : k == 1 ? ST_BF16 : ST_F16, k == 2 ? 40000 : 0, 0};
    CHECK_MSG(hf_save(&a, &c, dir, &o) == 0, "%s", t5g_last_error());
    ModelConfig c2;
    CHECK_MSG(config_load(dir, &c2) == 0, "%s", t5g_last_error());
    CHECK(c2.kind == MODEL_GEMMA2 && c2.dec.hidden_size == 64);
    char cp[512]; snprintf(cp, sizeof cp, "%s/config.json", dir);
    char *txt = t5g_read_file(cp, NULL);
    const char *tdt = k == 0 ? "\"float32\"" : k == 1 ? "\"bfloat16\"" : "\"float16\"";
    CHECK_MSG(txt && strstr(txt, tdt), "torch_dtype %s not in config.json", tdt);
    free(txt);
    make_store(&b, -1, NULL, 99);
    CHECK_MSG(hf_load_params(&b, dir) == 0, "%s", t5g_last_error());
    CHECK_MSG(stores_equal(&a, &b, o.dtype), "dtype %s: loaded values differ", st_dtype_name(o.dtype));
    params_free(&b);
  }
  /* lm_head written on request: a copy of the embedding, accepted and skipped on load */
  HfSaveOptions o = {ST_BF16, 0, 1};
  CHECK(hf_save(&a, &c, dir, &o) == 0);
  StReader r;
  CHECK(st_open(&r, dir) == 0);
  const StTensor *h = st_find(&r, "lm_head.weight"), *e = st_find(&r, "model.embed_tokens.weight");
  CHECK(h && e && h->nbytes == e->nbytes && memcmp(h->data, e->data, (size_t)h->nbytes) == 0);
  st_close(&r);
  make_store(&b, -1, NULL, 98);
  CHECK_MSG(hf_load_params(&b, dir) == 0, "%s", t5g_last_error());
  CHECK(stores_equal(&a, &b, ST_BF16));
  params_free(&b);
  /* default: no lm_head stored */
  CHECK(hf_save(&a, &c, dir, NULL) == 0);
  CHECK(st_open(&r, dir) == 0 && !st_find(&r, "lm_head.weight") && r.n == NPSPEC);
  st_close(&r);
  /* a config that does not match the store is refused */
  ModelConfig big;
  CHECK(config_resolve("gemma2-s", &big) == 0);
  CHECK(hf_save(&a, &big, dir, NULL) != 0 && strstr(t5g_last_error(), "model.embed_tokens.weight"));
  params_free(&a);
  rm_rf(dir); free(dir);
}

TEST(hf_load_errors) {
  ModelConfig c;
  CHECK(config_resolve("tiny-gemma2", &c) == 0);
  ParamStore a, b;
  make_store(&a, -1, NULL, 5);
  char *dir = make_tmpdir();
  CHECK(hf_save(&a, &c, dir, NULL) == 0);
  /* missing tensor: the store has one the checkpoint lacks */
  PSpec extra = {"model.layers.0.mlp.down_proj.weight", 2, {64, 128}, PG_MATRIX};
  make_store(&b, -1, &extra, 1);
  CHECK(hf_load_params(&b, dir) != 0);
  CHECK_MSG(strstr(t5g_last_error(), "\"model.layers.0.mlp.down_proj.weight\" is missing"), "%s", t5g_last_error());
  CHECK(strstr(t5g_last_error(), dir));
  params_free(&b);
  /* wrong shape: expected and found */
  PSpec wrong = {"model.layers.0.self_attn.k_proj.weight", 2, {64, 32}, PG_MATRIX};
  make_store(&b, 2, &wrong, 1);
  CHECK(hf_load_params(&b, dir) != 0);
  CHECK_MSG(strstr(t5g_last_error(), "\"model.layers.0.self_attn.k_proj.weight\": expected shape [64, 32], found [32, 64]"), "%s", t5g_last_error());
  params_free(&b);
  PSpec wrong1 = {"model.norm.weight", 2, {1, 64}, PG_NORM};
  make_store(&b, 5, &wrong1, 1);
  CHECK(hf_load_params(&b, dir) != 0);
  CHECK_MSG(strstr(t5g_last_error(), "expected shape [1, 64], found [64]"), "%s", t5g_last_error());
  params_free(&b);
  /* unexpected tensor: the checkpoint has one the store lacks */
  make_store(&b, 3, NULL, 1);
  CHECK(hf_load_params(&b, dir) != 0);
  CHECK_MSG(strstr(t5g_last_error(), "unexpected tensors") && strstr(t5g_last_error(), "\"model.layers.0.mlp.up_proj.weight\""), "%s", t5g_last_error());
  params_free(&b);
  /* an lm_head that is not the embedding */
  {
    StSaveItem items[NPSPEC + 1];
    for (int i = 0; i < NPSPEC; i++) items[i] = (StSaveItem){a.e[i].name, a.e[i].t.ndim, a.e[i].t.shape, a.e[i].t.data};
    float *other = t5g_malloc(sizeof(float) * 512 * 64);
    memcpy(other, a.e[0].t.data, sizeof(float) * 512 * 64);
    other[777] += 1.0f;
    items[NPSPEC] = (StSaveItem){"lm_head.weight", 2, a.e[0].t.shape, other};
    CHECK(st_save(dir, NULL, ST_F32, 0, NPSPEC + 1, items) == 0);
    make_store(&b, -1, NULL, 1);
    CHECK(hf_load_params(&b, dir) != 0);
    CHECK_MSG(strstr(t5g_last_error(), "\"lm_head.weight\" differs from \"model.embed_tokens.weight\""), "%s", t5g_last_error());
    /* equal values in another dtype are accepted */
    items[NPSPEC].data = a.e[0].t.data;
    CHECK(st_save(dir, NULL, ST_F32, 0, NPSPEC + 1, items) == 0);
    CHECK_MSG(hf_load_params(&b, dir) == 0, "%s", t5g_last_error());
    /* an lm_head of the wrong shape */
    int64_t sh[2] = {64, 512};
    items[NPSPEC].shape = sh;
    CHECK(st_save(dir, NULL, ST_F32, 0, NPSPEC + 1, items) == 0);
    CHECK(hf_load_params(&b, dir) != 0 && strstr(t5g_last_error(), "tied head \"lm_head.weight\" has shape [64, 512]"));
    /* lm_head.out_proj.weight is not a head of this (gemma2) store: unexpected */
    items[NPSPEC] = (StSaveItem){"lm_head.out_proj.weight", 2, a.e[0].t.shape, a.e[0].t.data};
    CHECK(st_save(dir, NULL, ST_F32, 0, NPSPEC + 1, items) == 0);
    CHECK(hf_load_params(&b, dir) != 0 && strstr(t5g_last_error(), "\"lm_head.out_proj.weight\""));
    params_free(&b);
    free(other);
  }
  /* not a checkpoint */
  make_store(&b, -1, NULL, 1);
  CHECK(hf_load_params(&b, "/nonexistent-ckpt") != 0 && strstr(t5g_last_error(), "/nonexistent-ckpt"));
  params_free(&b);
  params_free(&a);
  rm_rf(dir); free(dir);
}

/* T5Gemma: the tied head is lm_head.out_proj.weight <- model.decoder.embed_tokens.weight */
TEST(hf_t5gemma_tied_head) {
  ModelConfig c;
  CHECK(config_resolve("tiny-t5gemma", &c) == 0);
  ParamStore a, b;
  params_init(&a);
  int64_t se[2] = {512, 64}, sn[1] = {64};
  params_add(&a, "model.encoder.embed_tokens.weight", 2, se, PG_EMBED);
  params_add(&a, "model.decoder.embed_tokens.weight", 2, se, PG_EMBED);
  params_add(&a, "model.decoder.norm.weight", 1, sn, PG_NORM);
  params_finalize(&a);
  Rng r; rng_seed(&r, 3);
  for (int64_t j = 0; j < a.n_total; j++) a.data[j] = (float)rng_normal(&r);
  char *dir = make_tmpdir();
  HfSaveOptions o = {ST_F32, 0, 1};
  CHECK_MSG(hf_save(&a, &c, dir, &o) == 0, "%s", t5g_last_error());
  StReader rd;
  CHECK(st_open(&rd, dir) == 0);
  const StTensor *h = st_find(&rd, "lm_head.out_proj.weight"), *e = st_find(&rd, "model.decoder.embed_tokens.weight");
  CHECK(h && e && memcmp(h->data, e->data, (size_t)e->nbytes) == 0);
  CHECK(!st_find(&rd, "lm_head.weight"));
  st_close(&rd);
  params_init(&b);
  params_add(&b, "model.encoder.embed_tokens.weight", 2, se, PG_EMBED);
  params_add(&b, "model.decoder.embed_tokens.weight", 2, se, PG_EMBED);
  params_add(&b, "model.decoder.norm.weight", 1, sn, PG_NORM);
  params_finalize(&b);
  CHECK_MSG(hf_load_params(&b, dir) == 0, "%s", t5g_last_error());
  CHECK(memcmp(a.data, b.data, sizeof(float) * (size_t)a.n_total) == 0);
  CHECK_STR(hf_lm_head_name(MODEL_T5GEMMA), "lm_head.out_proj.weight");
  CHECK_STR(hf_tied_embedding_name(MODEL_GEMMA2), "model.embed_tokens.weight");
  params_free(&a); params_free(&b);
  rm_rf(dir); free(dir);
}

/* ---- exchange modes for tests/t_safetensors_py.sh --------------------------------------------
 * T5G_ST_PY_EXPORT=<dir>: write, with our writer, <dir>/{f32,bf16,f16}/model.safetensors and a
 * sharded bf16 checkpoint <dir>/sharded/, each holding
 *   "bits"  [4096]  f32 values with bit patterns u_i = (i·2654435761 + 12345) mod 2^32, where
 *                   i % 4 == 1 are replaced by u_i & 0x8fffffff (moderate magnitudes), NaN kept
 *   "mid"   [3, 128] halfway values: f32 bits ((1000 + i) << 16) | 0x8000 for i < 128 (bf16 ties),
 *                   then 1 + (2k+1)·2^-11 (f16 ties), then (2k+1)·2^-25 (f16 subnormal ties)
 *   "scal"  []      3.5
 * plus config.json files of tiny-gemma2 (config_gemma2.json) and tiny-t5gemma-unequal
 * (config_t5gemma.json) written by config_save. The Python side recomputes the values.
 * T5G_ST_PY_IMPORT=<dir>: read <dir>/py.safetensors (written by Python) and compare every tensor
 * with <dir>/expect.txt ("name count" lines) + <dir>/expect.bin (f32 values, concatenated). */
static void fill_exchange(float *bits, float *mid) {
  for (uint32_t i = 0; i < 4096; i++) {
    uint32_t u = i * 2654435761u + 12345u;
    if (i % 4 == 1) u &= 0x8fffffffu;
    bits[i] = u2f(u);
  }
  for (int i = 0; i < 128; i++) mid[i] = u2f(((1000u + (uint32_t)i) << 16) | 0x8000u);
  for (int k = 0; k < 128; k++) mid[128 + k] = 1.0f + (float)(2 * k + 1) * 0x1p-11f;
  for (int k = 0; k < 128; k++) mid[256 + k] = (float)(2 * k + 1) * 0x1p-25f;
}

static int export_mode(const char *dir) {
  float bits[4096], mid[384], scal = 3.5f;
  fill_exchange(bits, mid);
  int64_t sb[1] = {4096}, sm[2] = {3, 128};
  StSaveItem items[3] = {{"bits", 1, sb, bits}, {"mid", 2, sm, mid}, {"scal", 0, NULL, &scal}};
  const char *sub[4] = {"f32", "bf16", "f16", "sharded"};
  StDtype dt[4] = {ST_F32, ST_BF16, ST_F16, ST_BF16};
  for (int k = 0; k < 4; k++) {
    char *d = t5g_path_join(dir, sub[k]);
    if (st_save(d, NULL, dt[k], k == 3 ? 1000 : 0, 3, items)) { fprintf(stderr, "%s\n", t5g_last_error()); return 1; }
    free(d);
  }
  ModelConfig c;
  const char *pre[2] = {"tiny-gemma2", "tiny-t5gemma-unequal"}, *out[2] = {"config_gemma2.json", "config_t5gemma.json"};
  for (int k = 0; k < 2; k++) {
    char *p = t5g_path_join(dir, out[k]);
    if (config_resolve(pre[k], &c) || config_save(&c, p)) { fprintf(stderr, "%s\n", t5g_last_error()); return 1; }
    free(p);
  }
  return 0;
}

static int import_mode(const char *dir) {
  char *p = t5g_path_join(dir, "py.safetensors");
  StReader r;
  if (st_open(&r, p)) { printf("FAIL st_py_import: %s\n", t5g_last_error()); return 1; }
  free(p);
  p = t5g_path_join(dir, "expect.txt");
  FILE *ft = fopen(p, "r");
  free(p);
  p = t5g_path_join(dir, "expect.bin");
  FILE *fb = fopen(p, "rb");
  free(p);
  if (!ft || !fb) { printf("FAIL st_py_import: cannot open expect files\n"); return 1; }
  char name[256]; long long n; int bad = 0, ntens = 0;
  while (fscanf(ft, "%255s %lld", name, &n) == 2) {
    ntens++;
    const StTensor *t = st_find(&r, name);
    if (!t || t->numel != n) { printf("FAIL st_py_import: tensor %s missing or wrong size\n", name); bad = 1; break; }
    float *want = t5g_malloc(sizeof(float) * (size_t)(n + 1)), *got = t5g_malloc(sizeof(float) * (size_t)(n + 1));
    if (fread(want, sizeof(float), (size_t)n, fb) != (size_t)n) { printf("FAIL st_py_import: expect.bin short\n"); bad = 1; }
    st_read_f32(t, got);
    for (long long j = 0; j < n && !bad; j++)
      if (!(isnan(want[j]) ? isnan(got[j]) : f2u(want[j]) == f2u(got[j]))) {
        printf("FAIL st_py_import: %s[%lld] = %a, Python says %a\n", name, j, got[j], want[j]); bad = 1;
      }
    free(want); free(got);
    if (bad) break;
  }
  if (!bad && ntens != r.n) { printf("FAIL st_py_import: %d expected tensors, file has %d\n", ntens, r.n); bad = 1; }
  if (!bad) printf("PASS st_py_import (%d tensors)\n", ntens);
  fclose(ft); fclose(fb);
  st_close(&r);
  return bad;
}

__attribute__((constructor(200))) static void maybe_exchange(void) {
  const char *e = getenv("T5G_ST_PY_EXPORT"), *i = getenv("T5G_ST_PY_IMPORT");
  if (e && *e) exit(export_mode(e));
  if (i && *i) exit(import_mode(i));
}

TEST_MAIN()
