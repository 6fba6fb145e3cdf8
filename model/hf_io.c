/* hf_io.c: ParamStore <-> Hugging Face checkpoint directory (model/hf_io.h). */
#define _GNU_SOURCE
#include "model/hf_io.h"
#include "model/util.h"
#include <stdlib.h>
#include <string.h>

const char *hf_lm_head_name(ModelKind kind) { return kind == MODEL_T5GEMMA ? "lm_head.out_proj.weight" : "lm_head.weight"; }
const char *hf_tied_embedding_name(ModelKind kind) { return kind == MODEL_T5GEMMA ? "model.decoder.embed_tokens.weight" : "model.embed_tokens.weight"; }

/* Appends to a bounded message buffer. */
typedef struct { char *buf; size_t cap, len; } Msg;
static void msg_add(Msg *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void msg_add(Msg *m, const char *fmt, ...) {
  if (m->len + 1 >= m->cap) return;
  va_list ap; va_start(ap, fmt);
  int k = vsnprintf(m->buf + m->len, m->cap - m->len, fmt, ap);
  va_end(ap);
  if (k > 0) m->len += (size_t)k < m->cap - m->len ? (size_t)k : m->cap - m->len - 1;
}

/* Are two stored tensors (same numel) equal as f32 values? Bitwise when the dtypes agree. */
static int same_values(const StTensor *a, const StTensor *b) {
  if (a->numel != b->numel) return 0;
  if (a->dtype == b->dtype) return memcmp(a->data, b->data, (size_t)a->nbytes) == 0;
  enum { CH = 1 << 16 };
  float *x = t5g_malloc(sizeof(float) * CH), *y = t5g_malloc(sizeof(float) * CH);
  int eq = 1;
  for (int64_t i = 0; i < a->numel && eq; i += CH) {
    int64_t m = a->numel - i < CH ? a->numel - i : CH;
    st_convert_to_f32(a->dtype, (const char *)a->data + i * st_dtype_size(a->dtype), x, m);
    st_convert_to_f32(b->dtype, (const char *)b->data + i * st_dtype_size(b->dtype), y, m);
    eq = memcmp(x, y, sizeof(float) * (size_t)m) == 0;
  }
  free(x); free(y);
  return eq;
}

/* A stored tensor that the store lacks but that is the tied head of an embedding it has. */
static int tied_head_ok(const ParamStore *ps, const StReader *r, const StTensor *t, Msg *err, int *n_err) {
  static const char *pairs[2][2] = {
    {"lm_head.weight", "model.embed_tokens.weight"},
    {"lm_head.out_proj.weight", "model.decoder.embed_tokens.weight"},
  };
  for (int k = 0; k < 2; k++) {
    if (strcmp(t->name, pairs[k][0]) != 0 || params_find(ps, pairs[k][1]) < 0) continue;
    const StTensor *e = st_find(r, pairs[k][1]);
    if (!e) return 1;   /* the missing embedding is reported on its own */
    char s1[160], s2[160];
    if (e->ndim != t->ndim || memcmp(e->shape, t->shape, sizeof(int64_t) * t->ndim) != 0) {
      msg_add(err, "%s%s: tied head \"%s\" has shape %s but \"%s\" has %s", (*n_err)++ ? "; " : "", st_tensor_file(r, t),
              t->name, st_shape_str(t->ndim, t->shape, s1, sizeof s1), e->name, st_shape_str(e->ndim, e->shape, s2, sizeof s2));
      return 1;
    }
    if (!same_values(t, e))
      msg_add(err, "%s%s: \"%s\" differs from \"%s\"; an untied LM head is not supported (tie_word_embeddings must be true)",
              (*n_err)++ ? "; " : "", st_tensor_file(r, t), t->name, e->name);
    return 1;
  }
  return 0;
}

static int load_f32(void *ctx, int i, const StReader *r, const StTensor *t) {
  ParamStore *ps = ctx;
  st_read_f32(t, ps->e[i].t.data);
  return 0;
}

int hf_load_params(ParamStore *ps, const char *path) {
  T5G_ASSERT(ps->finalized);
  return hf_load_params_with(ps, path, load_f32, ps);
}

int hf_load_params_with(ParamStore *ps, const char *path, HfLoadFn load, void *ctx) {
  StReader r;
  if (st_open(&r, path)) return -1;
  char buf[1900];
  Msg err = {buf, sizeof buf, 0};
  int n_err = 0;
  /* missing tensors and shape mismatches */
  int n_missing = 0, n_shape = 0;
  for (int i = 0; i < ps->n; i++) {
    const ParamEntry *e = &ps->e[i];
    const StTensor *t = st_find(&r, e->name);
    if (!t) {
      if (n_missing < 8) msg_add(&err, "%stensor \"%s\" is missing", n_err++ ? "; " : "", e->name);
      n_missing++;
      continue;
    }
    if (t->ndim != e->t.ndim || memcmp(t->shape, e->t.shape, sizeof(int64_t) * e->t.ndim) != 0) {
      char s1[160], s2[160];
      if (n_shape < 8)
        msg_add(&err, "%s%s: tensor \"%s\": expected shape %s, found %s", n_err++ ? "; " : "", st_tensor_file(&r, t), e->name,
                st_shape_str(e->t.ndim, e->t.shape, s1, sizeof s1), st_shape_str(t->ndim, t->shape, s2, sizeof s2));
      n_shape++;
    } else if (t->dtype == ST_I32) {
      if (n_shape < 8) msg_add(&err, "%s%s: tensor \"%s\" has dtype I32; model weights must be BF16, F16 or F32", n_err++ ? "; " : "", st_tensor_file(&r, t), e->name);
      n_shape++;
    }
  }
  if (n_missing > 8) msg_add(&err, " (%d missing in all)", n_missing);
  if (n_shape > 8) msg_add(&err, " (%d shape mismatches in all)", n_shape);
  /* unexpected tensors */
  int n_unexp = 0;
  for (int i = 0; i < r.n; i++) {
    const StTensor *t = &r.t[i];
    if (params_find(ps, t->name) >= 0) continue;
    if (tied_head_ok(ps, &r, t, &err, &n_err)) continue;
    if (n_unexp == 0) msg_add(&err, "%sunexpected tensors not in the model: ", n_err++ ? "; " : "");
    if (n_unexp < 8) msg_add(&err, "%s\"%s\" (%s)", n_unexp ? ", " : "", t->name, st_tensor_file(&r, t));
    n_unexp++;
  }
  if (n_unexp > 8) msg_add(&err, " and %d more", n_unexp - 8);
  if (n_err) {
    t5g_error("%s: checkpoint does not match the model: %s", path, buf);
    st_close(&r);
    return -1;
  }
  for (int i = 0; i < ps->n; i++)
    if (load(ctx, i, &r, st_find(&r, ps->e[i].name)) != 0) { st_close(&r); return -1; }
  st_close(&r);
  return 0;
}

int hf_save(const ParamStore *ps, const ModelConfig *c, const char *dir, const HfSaveOptions *opt) {
  HfSaveOptions o = {ST_F32, 0, 0};
  if (opt) o = *opt;
  char *cfg_path = t5g_path_join(dir, "config.json");
  if (config_validate(c, cfg_path)) { free(cfg_path); return -1; }
  const char *head = hf_lm_head_name(c->kind), *emb = hf_tied_embedding_name(c->kind);
  int ei = params_find(ps, emb);
  if (o.write_lm_head && ei < 0) {
    free(cfg_path);
    return t5g_error("%s: write_lm_head: the model has no \"%s\" to copy into \"%s\"", dir, emb, head);
  }
  if (ei >= 0) {   /* the store must be a model of this config: check the tied embedding's shape */
    const Tensor *et = &ps->e[ei].t;
    if (et->ndim != 2 || et->shape[0] != c->dec.vocab_size || et->shape[1] != c->dec.hidden_size) {
      char sb[64];
      int rc = t5g_error("%s: \"%s\" has shape %s but the config says [vocab_size %d, hidden_size %d]", dir, emb,
                         tensor_shape_str(et, sb, sizeof sb), c->dec.vocab_size, c->dec.hidden_size);
      free(cfg_path);
      return rc;
    }
  }
  int write_head = o.write_lm_head && params_find(ps, head) < 0;
  StWriter *w = st_writer_begin(dir, "model", o.dtype, o.max_shard_bytes);
  if (!w) { free(cfg_path); return -1; }
  for (int i = 0; i < ps->n; i++)
    if (st_writer_plan(w, ps->e[i].name, ps->e[i].t.ndim, ps->e[i].t.shape)) goto fail;
  if (write_head && st_writer_plan(w, head, ps->e[ei].t.ndim, ps->e[ei].t.shape)) goto fail;
  for (int i = 0; i < ps->n; i++)
    if (st_writer_write(w, ps->e[i].name, ps->e[i].t.data)) goto fail;
  if (write_head && st_writer_write(w, head, ps->e[ei].t.data)) goto fail;
  if (st_writer_finish(w)) { free(cfg_path); return -1; }
  const char *tdt = o.dtype == ST_BF16 ? "bfloat16" : o.dtype == ST_F16 ? "float16" : "float32";
  char *js = config_to_json_dtype(c, tdt);
  T5gOutFile out;
  int rc = t5g_open_out(&out, cfg_path);
  if (rc == 0) { fputs(js, out.f); rc = t5g_commit_file(&out); }
  free(js);
  free(cfg_path);
  return rc;
fail:
  st_writer_abort(w);
  free(cfg_path);
  return -1;
}
