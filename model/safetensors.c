/* safetensors.c: reader and streaming writer for Hugging Face safetensors checkpoints.
 * Format and rules: see safetensors.h. JSON via cJSON. */
#define _GNU_SOURCE
#include "model/safetensors.h"
#include "model/util.h"
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER 100000000LL   /* the reference implementation's MAX_HEADER_SIZE */

/* ---- dtypes and element conversions ------------------------------------------------------- */

const char *st_dtype_name(StDtype t) {
  switch (t) { case ST_F32: return "F32"; case ST_F16: return "F16"; case ST_BF16: return "BF16"; case ST_I32: return "I32"; }
  return "?";
}
int st_dtype_size(StDtype t) { return t == ST_F32 || t == ST_I32 ? 4 : 2; }

int st_dtype_parse(const char *s, StDtype *t) {
  static const struct { const char *name; StDtype t; } names[] = {
    {"F32", ST_F32}, {"f32", ST_F32}, {"fp32", ST_F32}, {"float32", ST_F32},
    {"BF16", ST_BF16}, {"bf16", ST_BF16}, {"bfloat16", ST_BF16},
    {"F16", ST_F16}, {"f16", ST_F16}, {"fp16", ST_F16}, {"float16", ST_F16},
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(s, names[i].name) == 0) { *t = names[i].t; return 0; }
  return t5g_error("dtype: expected one of f32, bf16, f16 (or F32, BF16, F16, float32, bfloat16, float16), found \"%s\"", s);
}

static inline uint32_t f2u(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static inline float u2f(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

float st_bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t st_f32_to_bf16(float x) {
  uint32_t u = f2u(x);
  if ((u & 0x7fffffffu) > 0x7f800000u)          /* NaN: keep sign and top payload, set quiet bit */
    return (uint16_t)((u >> 16) | 0x0040u);
  /* round to nearest, ties to even: add 0x7fff plus the lowest kept bit; a carry propagates into
   * the exponent (and to infinity past the largest finite value), as it should. */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

float st_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0) {                                /* zero or subnormal: man * 2^-24, exact in f32 */
    float v = (float)man * 0x1p-24f;
    return u2f(f2u(v) | sign);
  }
  if (exp == 31) return u2f(sign | 0x7f800000u | (man << 13)); /* inf / NaN (payload kept) */
  return u2f(sign | ((exp + 112u) << 23) | (man << 13));        /* rebias 15 -> 127 */
}

uint16_t st_f32_to_f16(float x) {
  uint32_t u = f2u(x);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) {                        /* inf or NaN */
    if (a == 0x7f800000u) return sign | 0x7c00u;
    return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  /* quiet NaN */
  }
  if (a >= 0x477ff000u) return sign | 0x7c00u;   /* >= 65520 rounds (ties to even) to inf */
  if (a >= 0x38800000u) {                        /* result is a normal f16 (>= 2^-14) */
    a += 0xfffu + ((a >> 13) & 1u);              /* round to nearest even at bit 13 */
    return (uint16_t)(sign | ((a - 0x38000000u) >> 13));   /* rebias 127 -> 15 */
  }
  /* subnormal or zero: units of 2^-24; scaling by 2^24 is exact, rint rounds ties to even; a
   * result of 1024 is the smallest normal's encoding, which is correct. */
  float s = u2f(a) * 0x1p24f;
  return (uint16_t)(sign | (uint16_t)lrintf(s));
}

void st_convert_to_f32(StDtype dtype, const void *src, float *dst, int64_t n) {
  const unsigned char *s = src;
  if (dtype == ST_F32) { memcpy(dst, src, (size_t)n * 4); return; }
  if (dtype == ST_I32) { for (int64_t i = 0; i < n; i++) { int32_t v; memcpy(&v, s + 4 * i, 4); dst[i] = (float)v; } return; }
  #pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; i++) {
    uint16_t h; memcpy(&h, s + 2 * i, 2);
    dst[i] = dtype == ST_BF16 ? st_bf16_to_f32(h) : st_f16_to_f32(h);
  }
}

void st_convert_from_f32(StDtype dtype, const float *src, void *dst, int64_t n) {
  unsigned char *d = dst;
  if (dtype == ST_F32) { memcpy(dst, src, (size_t)n * 4); return; }
  if (dtype == ST_I32) { for (int64_t i = 0; i < n; i++) { int32_t v = (int32_t)lrintf(src[i]); memcpy(d + 4 * i, &v, 4); } return; }
  #pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; i++) {
    uint16_t h = dtype == ST_BF16 ? st_f32_to_bf16(src[i]) : st_f32_to_f16(src[i]);
    memcpy(d + 2 * i, &h, 2);
  }
}

const char *st_shape_str(int ndim, const int64_t *shape, char *buf, size_t n) {
  size_t o = 0;
  o += snprintf(buf + o, n - o, "[");
  for (int i = 0; i < ndim && o < n; i++) o += snprintf(buf + o, n - o, i ? ", %lld" : "%lld", (long long)shape[i]);
  if (o < n) snprintf(buf + o, n - o, "]");
  return buf;
}

/* ---- reader ------------------------------------------------------------------------------- */

static void reader_add(StReader *r, const StTensor *t, int *cap) {
  if (r->n == *cap) { *cap = *cap ? *cap * 2 : 64; r->t = t5g_realloc(r->t, sizeof(StTensor) * *cap); }
  r->t[r->n++] = *t;
}

/* A JSON number that is a non-negative integer representable exactly (<= 2^53). */
static int json_uint(const cJSON *j, int64_t *v) {
  if (!cJSON_IsNumber(j)) return -1;
  double d = j->valuedouble;
  if (!(d >= 0) || d > 9007199254740992.0 || d != floor(d)) return -1;
  *v = (int64_t)d;
  return 0;
}

static int parse_dtype(const char *path, const char *name, const cJSON *j, StDtype *t) {
  if (!cJSON_IsString(j)) return t5g_error("%s: tensor \"%s\": \"dtype\" must be a string", path, name);
  const char *s = j->valuestring;
  if (strcmp(s, "F32") == 0) { *t = ST_F32; return 0; }
  if (strcmp(s, "F16") == 0) { *t = ST_F16; return 0; }
  if (strcmp(s, "BF16") == 0) { *t = ST_BF16; return 0; }
  if (strcmp(s, "I32") == 0) { *t = ST_I32; return 0; }
  static const char *known[] = {"F64", "I64", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL",
                                "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64", NULL};
  for (int i = 0; known[i]; i++)
    if (strcmp(s, known[i]) == 0)
      return t5g_error("%s: tensor \"%s\" has dtype %s, which is not supported (supported: BF16, F16, F32, I32)", path, name, s);
  return t5g_error("%s: tensor \"%s\" has unknown dtype \"%s\" (supported: BF16, F16, F32, I32)", path, name, s);
}

static int cmp_by_begin(const void *a, const void *b) {
  const StTensor *x = *(const StTensor *const *)a, *y = *(const StTensor *const *)b;
  const char *bx = x->data, *by = y->data;
  return bx < by ? -1 : bx > by ? 1 : 0;
}

/* Map and validate one file; append it to r->files and its tensors to r->t. */
static int open_one(StReader *r, const char *path, int *cap) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return t5g_error("%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) { close(fd); return t5g_error("%s: cannot stat: %s", path, strerror(errno)); }
  if (!S_ISREG(st.st_mode)) { close(fd); return t5g_error("%s: not a regular file", path); }
  size_t size = (size_t)st.st_size;
  if (size < 8) { close(fd); return t5g_error("%s: truncated: the file is %zu bytes, shorter than the 8-byte header length", path, size); }
  void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) return t5g_error("%s: cannot map %zu bytes: %s", path, size, strerror(errno));

  int fi = r->n_files;
  r->files = t5g_realloc(r->files, sizeof(StFile) * (fi + 1));
  StFile *f = &r->files[fi];
  f->path = t5g_strdup(path); f->map = map; f->size = size; f->data_start = 0;
  r->n_files++;

  const unsigned char *p = map;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
  if (hlen > (uint64_t)size - 8)
    return t5g_error("%s: header length %llu runs past the end of the file (%zu bytes; truncated or not a safetensors file)",
                     path, (unsigned long long)hlen, size);
  if (hlen > (uint64_t)ST_MAX_HEADER)
    return t5g_error("%s: header length %llu exceeds the 100 MB limit", path, (unsigned long long)hlen);
  if (hlen < 2) return t5g_error("%s: header of %llu bytes cannot hold a JSON object", path, (unsigned long long)hlen);
  f->data_start = 8 + (int64_t)hlen;
  int64_t data_size = (int64_t)size - f->data_start;

  const char *end = NULL;
  cJSON *h = cJSON_ParseWithLengthOpts((const char *)p + 8, (size_t)hlen, &end, 0);
  if (!h) return t5g_error("%s: header is not valid JSON (error near byte %lld of the header)", path,
                           (long long)(cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - (const char *)p - 8 : 0));
  for (const char *q = end; q && q < (const char *)p + 8 + hlen; q++)
    if (*q != ' ' && *q != '\n' && *q != '\r' && *q != '\t') {
      cJSON_Delete(h);
      return t5g_error("%s: header has trailing bytes after the JSON object", path);
    }
  if (!cJSON_IsObject(h)) { cJSON_Delete(h); return t5g_error("%s: header is not a JSON object", path); }

  int first = r->n, rc = 0;
  for (cJSON *e = h->child; e; e = e->next) {
    const char *name = e->string ? e->string : "";
    if (strcmp(name, "__metadata__") == 0) {
      if (!cJSON_IsObject(e)) { rc = t5g_error("%s: \"__metadata__\" must be an object", path); break; }
      continue;
    }
    if (!cJSON_IsObject(e)) { rc = t5g_error("%s: tensor \"%s\": entry must be an object", path, name); break; }
    StTensor t; memset(&t, 0, sizeof t);
    t.file = fi;
    if (parse_dtype(path, name, cJSON_GetObjectItemCaseSensitive(e, "dtype"), &t.dtype)) { rc = -1; break; }
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(sh)) { rc = t5g_error("%s: tensor \"%s\": \"shape\" must be an array", path, name); break; }
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_MAX_DIMS) { rc = t5g_error("%s: tensor \"%s\" has %d dimensions, at most %d are supported", path, name, nd, ST_MAX_DIMS); break; }
    t.ndim = nd; t.numel = 1;
    int k = 0; int bad = 0;
    for (const cJSON *d = sh->child; d; d = d->next, k++) {
      if (json_uint(d, &t.shape[k])) { bad = 1; break; }
      if (t.shape[k] > 0 && t.numel > (INT64_MAX / 8) / t.shape[k]) { bad = 2; break; }
      t.numel *= t.shape[k];
    }
    if (bad == 1) { rc = t5g_error("%s: tensor \"%s\": shape entry %d is not a non-negative integer", path, name, k); break; }
    if (bad == 2) { rc = t5g_error("%s: tensor \"%s\": shape is too large (element count overflows)", path, name); break; }
    t.nbytes = t.numel * st_dtype_size(t.dtype);
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    int64_t b = 0, en = 0;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || json_uint(off->child, &b) || json_uint(off->child->next, &en)) {
      rc = t5g_error("%s: tensor \"%s\": \"data_offsets\" must be two non-negative integers [begin, end]", path, name); break;
    }
    if (b > en || en > data_size) {
      rc = t5g_error("%s: tensor \"%s\": data_offsets [%lld, %lld] are outside the data section of %lld bytes (truncated file?)",
                     path, name, (long long)b, (long long)en, (long long)data_size); break;
    }
    if (en - b != t.nbytes) {
      char sb[160];
      rc = t5g_error("%s: tensor \"%s\": data_offsets [%lld, %lld] hold %lld bytes, but shape %s of %s needs %lld",
                     path, name, (long long)b, (long long)en, (long long)(en - b), st_shape_str(t.ndim, t.shape, sb, sizeof sb),
                     st_dtype_name(t.dtype), (long long)t.nbytes); break;
    }
    t.data = p + f->data_start + b;
    t.name = t5g_strdup(name);
    reader_add(r, &t, cap);
  }
  cJSON_Delete(h);
  if (rc) return rc;

  /* overlaps: sort this file's non-empty tensors by start */
  int m = 0;
  StTensor **v = t5g_malloc(sizeof(StTensor *) * (size_t)(r->n - first + 1));
  for (int i = first; i < r->n; i++) if (r->t[i].nbytes > 0) v[m++] = &r->t[i];
  if (m > 1) qsort(v, m, sizeof *v, cmp_by_begin);
  for (int i = 1; i < m; i++) {
    const char *pe = (const char *)v[i - 1]->data + v[i - 1]->nbytes;
    if ((const char *)v[i]->data < pe) {
      long long b0 = (const char *)v[i - 1]->data - (const char *)p - f->data_start;
      long long b1 = (const char *)v[i]->data - (const char *)p - f->data_start;
      rc = t5g_error("%s: tensors \"%s\" [%lld, %lld) and \"%s\" [%lld, %lld) overlap", path,
                     v[i - 1]->name, b0, b0 + (long long)v[i - 1]->nbytes, v[i]->name, b1, b1 + (long long)v[i]->nbytes);
      break;
    }
  }
  free(v);
  return rc;
}

static int cmp_by_name(const void *a, const void *b) {
  return strcmp(((const StTensor *)a)->name, ((const StTensor *)b)->name);
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

static char *dir_of(const char *path) {
  char *d = t5g_strdup(path);
  char *s = strrchr(d, '/');
  if (s) { if (s == d) s[1] = 0; else *s = 0; } else strcpy(d, ".");
  return d;
}

static int open_index(StReader *r, const char *index_path, int *cap) {
  char *text = t5g_read_file(index_path, NULL);
  if (!text) return -1;
  cJSON *j = cJSON_Parse(text);
  free(text);
  if (!j) return t5g_error("%s: not valid JSON", index_path);
  int rc = 0;
  const cJSON *wm = cJSON_GetObjectItemCaseSensitive(j, "weight_map");
  char *dir = dir_of(index_path);
  char **fnames = NULL; int nf = 0;
  if (!cJSON_IsObject(j) || !cJSON_IsObject(wm)) { rc = t5g_error("%s: expected an object with a \"weight_map\" object", index_path); goto done; }
  for (const cJSON *e = wm->child; e; e = e->next) {
    if (!cJSON_IsString(e)) { rc = t5g_error("%s: weight_map[\"%s\"] must be a file name string", index_path, e->string); goto done; }
    const char *fn = e->valuestring;
    if (!fn[0] || strchr(fn, '/') || strcmp(fn, ".") == 0 || strcmp(fn, "..") == 0) {
      rc = t5g_error("%s: weight_map[\"%s\"] = \"%s\" is not a plain file name in the index's directory", index_path, e->string, fn); goto done;
    }
    int k = 0;
    while (k < nf && strcmp(fnames[k], fn) != 0) k++;
    if (k == nf) { fnames = t5g_realloc(fnames, sizeof(char *) * (nf + 1)); fnames[nf++] = (char *)fn; }
  }
  for (int k = 0; k < nf; k++) {
    char *p = t5g_path_join(dir, fnames[k]);
    rc = open_one(r, p, cap);
    free(p);
    if (rc) goto done;
  }
  if (r->n > 1) qsort(r->t, r->n, sizeof(StTensor), cmp_by_name);
  for (int i = 1; i < r->n; i++)
    if (strcmp(r->t[i - 1].name, r->t[i].name) == 0) {
      rc = t5g_error("%s: tensor \"%s\" appears in both %s and %s", index_path, r->t[i].name,
                     r->files[r->t[i - 1].file].path, r->files[r->t[i].file].path); goto done;
    }
  for (const cJSON *e = wm->child; e; e = e->next) {
    const StTensor *t = st_find(r, e->string);
    if (!t) { rc = t5g_error("%s: weight_map lists tensor \"%s\" in %s, but that file has no such tensor", index_path, e->string, e->valuestring); goto done; }
    const char *tf = strrchr(r->files[t->file].path, '/');
    tf = tf ? tf + 1 : r->files[t->file].path;
    if (strcmp(tf, e->valuestring) != 0) {
      rc = t5g_error("%s: weight_map lists tensor \"%s\" in %s, but it is stored in %s", index_path, e->string, e->valuestring, tf); goto done;
    }
  }
  for (int i = 0; i < r->n; i++)
    if (!cJSON_GetObjectItemCaseSensitive(wm, r->t[i].name)) {
      rc = t5g_error("%s: tensor \"%s\" of %s is not listed in the index's weight_map", index_path, r->t[i].name, r->files[r->t[i].file].path); goto done;
    }
done:
  free(fnames);
  free(dir);
  cJSON_Delete(j);
  return rc;
}

int st_open(StReader *r, const char *path) {
  memset(r, 0, sizeof *r);
  r->source = t5g_strdup(path);
  int cap = 0, rc;
  struct stat st;
  if (stat(path, &st) != 0) { rc = t5g_error("%s: cannot open: %s", path, strerror(errno)); goto out; }
  if (S_ISDIR(st.st_mode)) {
    char *single = t5g_path_join(path, "model.safetensors");
    char *index = t5g_path_join(path, "model.safetensors.index.json");
    if (t5g_file_exists(single)) rc = open_one(r, single, &cap);
    else if (t5g_file_exists(index)) rc = open_index(r, index, &cap);
    else rc = t5g_error("%s: no model.safetensors or model.safetensors.index.json in this directory", path);
    free(single); free(index);
  } else if (ends_with(path, ".json")) {
    rc = open_index(r, path, &cap);
  } else {
    rc = open_one(r, path, &cap);
  }
  if (rc == 0 && r->n_files <= 1) {
    if (r->n > 1) qsort(r->t, r->n, sizeof(StTensor), cmp_by_name);
    for (int i = 1; i < r->n; i++)
      if (strcmp(r->t[i - 1].name, r->t[i].name) == 0) { rc = t5g_error("%s: tensor \"%s\" appears twice in the header", r->files[0].path, r->t[i].name); break; }
  }
out:
  if (rc) { char msg[2048]; snprintf(msg, sizeof msg, "%s", t5g_last_error()); st_close(r); t5g_error("%s", msg); }
  return rc;
}

void st_close(StReader *r) {
  for (int i = 0; i < r->n; i++) free(r->t[i].name);
  for (int i = 0; i < r->n_files; i++) { if (r->files[i].map) munmap(r->files[i].map, r->files[i].size); free(r->files[i].path); }
  free(r->t); free(r->files); free(r->source);
  memset(r, 0, sizeof *r);
}

const StTensor *st_find(const StReader *r, const char *name) {
  int lo = 0, hi = r->n - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2, c = strcmp(r->t[mid].name, name);
    if (c == 0) return &r->t[mid];
    if (c < 0) lo = mid + 1; else hi = mid - 1;
  }
  return NULL;
}

void st_read_f32(const StTensor *t, float *out) { st_convert_to_f32(t->dtype, t->data, out, t->numel); }

const char *st_tensor_file(const StReader *r, const StTensor *t) { return r->files[t->file].path; }

void st_release(const StReader *r, const StTensor *t, int64_t byte_off, int64_t nbytes) {
  if (nbytes <= 0) return;
  const StFile *f = &r->files[t->file];
  const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t base = (uintptr_t)f->map, end_map = base + f->size;
  uintptr_t a = (uintptr_t)t->data + (uintptr_t)byte_off, b = a + (uintptr_t)nbytes;
  a &= ~(page - 1);                        /* outward to whole pages, within the mapping */
  b = (b + page - 1) & ~(page - 1);
  if (a < base) a = base;
  if (b > end_map) b = end_map;
  if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);   /* advisory: failure changes nothing */
}

/* ---- writer ------------------------------------------------------------------------------- */

typedef struct WTensor {
  char *name; int ndim; int64_t shape[ST_MAX_DIMS]; int64_t numel, nbytes;
  int file; int64_t begin; int written;
} WTensor;

typedef struct WFile { char *path, *tmp; int fd; int64_t data_start, data_size; } WFile;

struct StWriter {
  char *dir, *prefix;
  StDtype dtype;
  int64_t max_shard;
  WTensor *t; int n, cap;
  int laid_out, n_files;
  WFile *f;
  int next;                 /* hint: index after the last written tensor */
  void *buf;                /* conversion chunk */
  float *buf2;              /* f32 chunk filled by st_writer_write_fn callbacks (non-F32 files) */
};

#define ST_CHUNK ((int64_t)1 << 20)   /* elements converted per write */

StWriter *st_writer_begin(const char *dir, const char *prefix, StDtype dtype, int64_t max_shard_bytes) {
  if (t5g_mkdir_p(dir)) return NULL;
  StWriter *w = t5g_calloc(1, sizeof *w);
  w->dir = t5g_strdup(dir);
  w->prefix = t5g_strdup(prefix ? prefix : "model");
  w->dtype = dtype;
  w->max_shard = max_shard_bytes;
  return w;
}

int st_writer_plan(StWriter *w, const char *name, int ndim, const int64_t *shape) {
  if (w->laid_out) return t5g_error("%s: tensor \"%s\" planned after writing started", w->dir, name);
  if (!name || !name[0]) return t5g_error("%s: empty tensor name", w->dir);
  if (strcmp(name, "__metadata__") == 0) return t5g_error("%s: \"__metadata__\" is reserved and cannot name a tensor", w->dir);
  if (ndim < 0 || ndim > ST_MAX_DIMS) return t5g_error("%s: tensor \"%s\" has %d dimensions (0..%d supported)", w->dir, name, ndim, ST_MAX_DIMS);
  for (int i = 0; i < w->n; i++)
    if (strcmp(w->t[i].name, name) == 0) return t5g_error("%s: tensor \"%s\" planned twice", w->dir, name);
  WTensor t; memset(&t, 0, sizeof t);
  t.ndim = ndim; t.numel = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return t5g_error("%s: tensor \"%s\": negative dimension %lld", w->dir, name, (long long)shape[i]);
    if (shape[i] > 0 && t.numel > (INT64_MAX / 8) / shape[i]) return t5g_error("%s: tensor \"%s\": shape too large", w->dir, name);
    t.shape[i] = shape[i];
    t.numel *= shape[i];
  }
  t.nbytes = t.numel * st_dtype_size(w->dtype);
  t.name = t5g_strdup(name);
  if (w->n == w->cap) { w->cap = w->cap ? w->cap * 2 : 64; w->t = t5g_realloc(w->t, sizeof(WTensor) * w->cap); }
  w->t[w->n++] = t;
  return 0;
}

int st_writer_n_files(const StWriter *w) { return w->n_files; }

static int pwrite_all(int fd, const void *buf, int64_t n, int64_t off) {
  const char *p = buf;
  while (n > 0) {
    ssize_t k = pwrite(fd, p, (size_t)(n > (1 << 30) ? (1 << 30) : n), (off_t)off);
    if (k < 0) { if (errno == EINTR) continue; return -1; }
    if (k == 0) { errno = EIO; return -1; }
    p += k; n -= k; off += k;
  }
  return 0;
}

static char *shard_name(const StWriter *w, int i) {
  char fn[512];
  if (w->n_files == 1) snprintf(fn, sizeof fn, "%s.safetensors", w->prefix);
  else snprintf(fn, sizeof fn, "%s-%05d-of-%05d.safetensors", w->prefix, i + 1, w->n_files);
  return t5g_path_join(w->dir, fn);
}

static cJSON *raw_int(long long v) { char s[32]; snprintf(s, sizeof s, "%lld", v); return cJSON_CreateRaw(s); }

/* Fix the layout, create the temporary files and write their headers. */
static int writer_layout(StWriter *w) {
  int nf = 1; int64_t cur = 0;
  for (int i = 0; i < w->n; i++) {
    WTensor *t = &w->t[i];
    if (w->max_shard > 0 && cur > 0 && cur + t->nbytes > w->max_shard) { nf++; cur = 0; }
    t->file = nf - 1; t->begin = cur; cur += t->nbytes;
  }
  w->n_files = nf;
  w->f = t5g_calloc(nf, sizeof(WFile));
  for (int i = 0; i < nf; i++) w->f[i].fd = -1;
  w->laid_out = 1;
  for (int i = 0; i < nf; i++) {
    WFile *f = &w->f[i];
    f->path = shard_name(w, i);
    f->tmp = t5g_tmp_name(f->path);
    cJSON *h = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(h, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    for (int k = 0; k < w->n; k++) {
      WTensor *t = &w->t[k];
      if (t->file != i) continue;
      cJSON *e = cJSON_AddObjectToObject(h, t->name);
      cJSON_AddStringToObject(e, "dtype", st_dtype_name(w->dtype));
      cJSON *sh = cJSON_AddArrayToObject(e, "shape");
      for (int d = 0; d < t->ndim; d++) cJSON_AddItemToArray(sh, raw_int(t->shape[d]));
      cJSON *off = cJSON_AddArrayToObject(e, "data_offsets");
      cJSON_AddItemToArray(off, raw_int(t->begin));
      cJSON_AddItemToArray(off, raw_int(t->begin + t->nbytes));
      f->data_size = t->begin + t->nbytes;
    }
    char *js = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    size_t len = strlen(js), padded = (len + 7) & ~(size_t)7;   /* data section 8-byte aligned */
    unsigned char *hdr = t5g_malloc(8 + padded);
    uint64_t L = padded;
    for (int b = 0; b < 8; b++) hdr[b] = (unsigned char)(L >> (8 * b));
    memcpy(hdr + 8, js, len);
    memset(hdr + 8 + len, ' ', padded - len);
    free(js);
    f->data_start = 8 + (int64_t)padded;
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int rc = 0;
    if (f->fd < 0) rc = t5g_error("%s: cannot create %s: %s", f->path, f->tmp, strerror(errno));
    else if (pwrite_all(f->fd, hdr, 8 + (int64_t)padded, 0)) rc = t5g_error("%s: writing the header: %s", f->path, strerror(errno));
    else if (ftruncate(f->fd, (off_t)(f->data_start + f->data_size)) != 0) rc = t5g_error("%s: cannot size the file to %lld bytes: %s", f->path, (long long)(f->data_start + f->data_size), strerror(errno));
    free(hdr);
    if (rc) return rc;
  }
  w->buf = t5g_malloc((size_t)ST_CHUNK * 4);
  w->buf2 = t5g_malloc((size_t)ST_CHUNK * 4);
  return 0;
}

int st_writer_write_fn(StWriter *w, const char *name, StFillFn fill, void *ctx) {
  if (!w->laid_out && writer_layout(w)) return -1;
  int k = -1;
  if (w->next < w->n && strcmp(w->t[w->next].name, name) == 0) k = w->next;
  else for (int i = 0; i < w->n; i++) if (strcmp(w->t[i].name, name) == 0) { k = i; break; }
  if (k < 0) return t5g_error("%s: tensor \"%s\" was not planned before writing", w->dir, name);
  WTensor *t = &w->t[k];
  WFile *f = &w->f[t->file];
  if (t->written) return t5g_error("%s: tensor \"%s\" written twice", f->path, name);
  int es = st_dtype_size(w->dtype);
  float *chunk = w->dtype == ST_F32 ? w->buf : w->buf2;
  for (int64_t i = 0; i < t->numel; i += ST_CHUNK) {
    int64_t m = t->numel - i < ST_CHUNK ? t->numel - i : ST_CHUNK;
    if (fill(ctx, i, m, chunk) != 0) return -1;
    const void *src = chunk;
    if (w->dtype != ST_F32) { st_convert_from_f32(w->dtype, chunk, w->buf, m); src = w->buf; }
    if (pwrite_all(f->fd, src, m * es, f->data_start + t->begin + i * es))
      return t5g_error("%s: writing tensor \"%s\": %s", f->path, name, strerror(errno));
  }
  t->written = 1;
  w->next = k + 1;
  return 0;
}

static int fill_from_array(void *ctx, int64_t offset, int64_t n, float *out) {
  memcpy(out, (const float *)ctx + offset, (size_t)n * sizeof(float));
  return 0;
}

int st_writer_write(StWriter *w, const char *name, const float *data) {
  return st_writer_write_fn(w, name, fill_from_array, (void *)data);
}

static void writer_free(StWriter *w) {
  for (int i = 0; i < w->n; i++) free(w->t[i].name);
  for (int i = 0; i < w->n_files; i++) {
    if (w->f[i].fd >= 0) close(w->f[i].fd);
    free(w->f[i].path); free(w->f[i].tmp);
  }
  free(w->f); free(w->t); free(w->buf); free(w->buf2); free(w->dir); free(w->prefix); free(w);
}

void st_writer_abort(StWriter *w) {
  if (!w) return;
  for (int i = 0; i < w->n_files; i++) if (w->f[i].tmp) t5g_tmp_unlink(w->f[i].tmp);
  writer_free(w);
}

/* Remove "<prefix>-NNNNN-of-MMMMM.safetensors" files of an earlier save that this one does not
 * use (keep_of = our shard count, 0 for a single-file save). */
static void remove_stale_shards(const StWriter *w, int keep_of) {
  DIR *d = opendir(w->dir);
  if (!d) return;
  struct dirent *e;
  size_t pl = strlen(w->prefix);
  while ((e = readdir(d))) {
    const char *s = e->d_name;
    int a, b, n = 0;
    if (strncmp(s, w->prefix, pl) != 0 || s[pl] != '-') continue;
    if (sscanf(s + pl, "-%5d-of-%5d.safetensors%n", &a, &b, &n) != 2 || s[pl + n] != 0) continue;
    if (strlen(s + pl) != strlen("-00001-of-00001.safetensors")) continue;
    if (b == keep_of) continue;
    char *p = t5g_path_join(w->dir, s);
    unlink(p);
    free(p);
  }
  closedir(d);
}

int st_writer_finish(StWriter *w) {
  if (!w->laid_out && writer_layout(w)) { st_writer_abort(w); return -1; }
  for (int i = 0; i < w->n; i++)
    if (!w->t[i].written) {
      int rc = t5g_error("%s: tensor \"%s\" was planned but never written", w->f[w->t[i].file].path, w->t[i].name);
      st_writer_abort(w);
      return rc;
    }
  for (int i = 0; i < w->n_files; i++) {
    WFile *f = &w->f[i];
    if (fsync(f->fd) != 0 || close(f->fd) != 0) {
      f->fd = -1;
      int rc = t5g_error("%s: write failed (disk full?): %s", f->path, strerror(errno));
      st_writer_abort(w);
      return rc;
    }
    f->fd = -1;
  }
  for (int i = 0; i < w->n_files; i++) {
    WFile *f = &w->f[i];
    if (t5g_rename_durable(f->tmp, f->path)) { st_writer_abort(w); return -1; }
    free(f->tmp); f->tmp = NULL;
    t5g_remove_stale_tmps(f->path);   /* "<shard>.tmp.<pid>" of earlier writers killed mid-write */
  }
  char fn[512];
  snprintf(fn, sizeof fn, "%s.safetensors.index.json", w->prefix);
  char *index = t5g_path_join(w->dir, fn);
  int rc = 0;
  if (w->n_files > 1) {
    int64_t total = 0;
    for (int i = 0; i < w->n; i++) total += w->t[i].nbytes;
    cJSON *j = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(j, "metadata");
    cJSON_AddItemToObject(meta, "total_size", raw_int(total));
    cJSON *wm = cJSON_AddObjectToObject(j, "weight_map");
    /* sorted by name, as transformers writes it */
    int *ord = t5g_malloc(sizeof(int) * (size_t)(w->n + 1));
    for (int i = 0; i < w->n; i++) ord[i] = i;
    for (int i = 1; i < w->n; i++) {          /* insertion sort: n is at most a few thousand */
      int x = ord[i], k = i - 1;
      while (k >= 0 && strcmp(w->t[ord[k]].name, w->t[x].name) > 0) { ord[k + 1] = ord[k]; k--; }
      ord[k + 1] = x;
    }
    for (int i = 0; i < w->n; i++) {
      const char *base = strrchr(w->f[w->t[ord[i]].file].path, '/');
      cJSON_AddStringToObject(wm, w->t[ord[i]].name, base ? base + 1 : w->f[w->t[ord[i]].file].path);
    }
    free(ord);
    char *js = cJSON_Print(j);
    cJSON_Delete(j);
    T5gOutFile o;
    if (t5g_open_out(&o, index) == 0) {
      fputs(js, o.f); fputc('\n', o.f);
      rc = t5g_commit_file(&o);
    } else rc = -1;
    free(js);
    if (rc == 0) {
      snprintf(fn, sizeof fn, "%s.safetensors", w->prefix);
      char *single = t5g_path_join(w->dir, fn);
      unlink(single);
      free(single);
      remove_stale_shards(w, w->n_files);
    }
  } else {
    unlink(index);
    remove_stale_shards(w, 0);
  }
  free(index);
  writer_free(w);
  return rc;
}

int st_save(const char *dir, const char *prefix, StDtype dtype, int64_t max_shard_bytes, int n, const StSaveItem *items) {
  StWriter *w = st_writer_begin(dir, prefix, dtype, max_shard_bytes);
  if (!w) return -1;
  for (int i = 0; i < n; i++)
    if (st_writer_plan(w, items[i].name, items[i].ndim, items[i].shape)) { st_writer_abort(w); return -1; }
  for (int i = 0; i < n; i++)
    if (st_writer_write(w, items[i].name, items[i].data)) { st_writer_abort(w); return -1; }
  return st_writer_finish(w);
}
