/* config.c: Gemma 2 / T5Gemma configurations: parse, validate, save Hugging Face config.json,
 * resolve presets, parameter counts and FLOPs (model/config.h).
 *
 * Sources: transformers configuration_gemma2.py and configuration_t5gemma.py (spec 1.1, 1.7,
 * 2.8); every default below is the default of those classes.
 *
 * Choices (documented here and in the README "Choices"):
 *  - Embedding scale. Both stacks multiply embeddings by sqrt(hidden_size) of their own stack
 *    (spec 1.6, 2.5). By default (embed_scale_bf16 = 0) the scale is sqrt(d) computed in f32,
 *    the natural value for an f32 implementation. embed_scale_bf16 = 1 rounds it to bf16 first,
 *    as transformers does when it runs in bf16 (e.g. d = 3584: 59.866518 -> 59.75), for
 *    bit-faithful comparisons against bf16 Hugging Face runs.
 *  - Our own keys. transformers has no field for these two choices, so they live in one extra
 *    object of config.json, which transformers ignores (unknown keys become plain attributes):
 *        "t5gemma_c": {"encoder_causal": 0, "embed_scale_bf16": 0}
 *    encoder_causal = 1 makes the T5Gemma encoder causal (the ablation of spec 4.5; default 0,
 *    bidirectional as in the paper). Keys are read when present (true/false or 0/1), written back
 *    by config_save, and unknown keys inside "t5gemma_c" are refused (typos).
 *  - "gelu_tanh" is accepted as a synonym of "gelu_pytorch_tanh" (same function, spec 1.4) and
 *    written back as "gelu_pytorch_tanh", the name transformers' ACT2FN knows.
 *  - T5Gemma top-level fields override the module configs as transformers does: vocab_size
 *    (default 256000), dropout_rate and attention_dropout are set on both modules. A module that
 *    states a different vocab_size than the top level is refused rather than silently changed.
 *    pad/eos/bos ids are the top-level ones, else the decoder module's (defaults 0/1/2). An
 *    eos_token_id given as a list ([1, 107]) keeps its first entry.
 *  - The decoder's cross_attention_hidden_size is set to the encoder hidden size when absent
 *    (transformers always sets it so); a different stated value is refused.
 *  - RoPE: "rope_theta" or the newer "rope_parameters" {"rope_type": "default", "rope_theta": x}
 *    (also per layer type {"sliding_attention": {...}, "full_attention": {...}}, which must agree:
 *    Gemma 2 uses one base for both, spec 1.5); rope_parameters wins over rope_theta as in
 *    transformers. Any other rope_type or a non-null rope_scaling is refused (unsupported).
 *  - gemma2 "dropout_rate": not a Gemma2Config field (transformers keeps it as a plain attribute
 *    and ignores it); read when present and written back when non-zero, for decoder-only
 *    pretraining with dropout.
 *  - Refused as unsupported: attention_bias true, use_bidirectional_attention true (gemma2),
 *    is_encoder_decoder false (t5gemma), tie_word_embeddings false.
 *  - Written files: numbers that transformers types as float are written with a decimal point
 *    (30.0, not 30): its strict config dataclasses reject an int where a float is declared.
 */
#define _GNU_SOURCE
#include "model/config.h"
#include "model/util.h"
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- defaults --------------------------------------------------------------------------- */

void stack_config_defaults(StackConfig *s) {
  memset(s, 0, sizeof *s);
  s->vocab_size = 256000;
  s->hidden_size = 2304;
  s->intermediate_size = 9216;
  s->num_hidden_layers = 26;
  s->num_attention_heads = 8;
  s->num_key_value_heads = 4;
  s->head_dim = 256;
  s->query_pre_attn_scalar = 256;
  s->sliding_window = 4096;
  s->max_position_embeddings = 8192;
  s->rope_theta = 10000.0f;
  s->rms_norm_eps = 1e-6f;
  s->attn_logit_softcapping = 50.0f;
  s->final_logit_softcapping = 30.0f;
  snprintf(s->hidden_activation, sizeof s->hidden_activation, "gelu_pytorch_tanh");
  for (int i = 0; i < T5G_MAX_LAYERS; i++) s->layer_sliding[i] = (i % 2 == 0);
  s->cross_attention_hidden_size = 0;
  s->dropout_rate = 0.0f;
  s->attention_dropout = 0.0f;
  s->initializer_range = 0.02f;
}

/* ---- JSON field readers: absent keys keep the default; errors name source and field ------- */

typedef struct { const char *src; const char *pfx; } Ctx;   /* pfx: "", "encoder." or "decoder." */

static const char *jtype(const cJSON *j) {
  if (cJSON_IsNull(j)) return "null";
  if (cJSON_IsBool(j)) return "a boolean";
  if (cJSON_IsNumber(j)) return "a number";
  if (cJSON_IsString(j)) return "a string";
  if (cJSON_IsArray(j)) return "an array";
  if (cJSON_IsObject(j)) return "an object";
  return "invalid";
}

static int rd_int(const Ctx *c, const cJSON *o, const char *key, int *out) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!j) return 0;
  if (!cJSON_IsNumber(j)) return t5g_error("%s: %s%s: expected an integer, found %s", c->src, c->pfx, key, jtype(j));
  double d = j->valuedouble;
  if (d != floor(d)) return t5g_error("%s: %s%s: expected an integer, found %g", c->src, c->pfx, key, d);
  if (d < INT_MIN || d > INT_MAX)
    return t5g_error("%s: %s%s: %g is out of range: expected an integer from %d to %d", c->src, c->pfx, key, d, INT_MIN, INT_MAX);
  *out = (int)d;
  return 0;
}

/* eos_token_id may be an int or a list of ints (first kept). */
static int rd_token_id(const Ctx *c, const cJSON *o, const char *key, int *out) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!j || cJSON_IsNull(j)) return 0;
  if (cJSON_IsArray(j)) {
    const cJSON *f = j->child;
    if (!f || !cJSON_IsNumber(f) || f->valuedouble != floor(f->valuedouble))
      return t5g_error("%s: %s%s: expected an integer or a non-empty list of integers", c->src, c->pfx, key);
    *out = (int)f->valuedouble;
    return 0;
  }
  return rd_int(c, o, key, out);
}

static int rd_float(const Ctx *c, const cJSON *o, const char *key, float *out) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!j) return 0;
  if (!cJSON_IsNumber(j)) return t5g_error("%s: %s%s: expected a number, found %s", c->src, c->pfx, key, jtype(j));
  *out = (float)j->valuedouble;
  return 0;
}

/* null means "no soft-capping" (0). */
static int rd_cap(const Ctx *c, const cJSON *o, const char *key, float *out) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (j && cJSON_IsNull(j)) { *out = 0; return 0; }
  return rd_float(c, o, key, out);
}

/* true/false or 0/1; returns 1 in *present when the key exists. */
static int rd_bool(const Ctx *c, const cJSON *o, const char *key, int *out) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!j) return 0;
  if (cJSON_IsBool(j)) { *out = cJSON_IsTrue(j); return 0; }
  if (cJSON_IsNumber(j) && (j->valuedouble == 0 || j->valuedouble == 1)) { *out = (int)j->valuedouble; return 0; }
  return t5g_error("%s: %s%s: expected true or false, found %s", c->src, c->pfx, key, jtype(j));
}

static int rd_theta(const Ctx *c, const cJSON *rp, const char *where, float *theta) {
  const cJSON *ty = cJSON_GetObjectItemCaseSensitive(rp, "rope_type");
  if (!ty) ty = cJSON_GetObjectItemCaseSensitive(rp, "type");
  if (ty && !(cJSON_IsString(ty) && strcmp(ty->valuestring, "default") == 0))
    return t5g_error("%s: %s%s.rope_type: expected \"default\" (RoPE scaling is not supported), found %s%s%s",
                     c->src, c->pfx, where, cJSON_IsString(ty) ? "\"" : "", cJSON_IsString(ty) ? ty->valuestring : jtype(ty),
                     cJSON_IsString(ty) ? "\"" : "");
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(rp, "rope_theta");
  if (t) {
    if (!cJSON_IsNumber(t)) return t5g_error("%s: %s%s.rope_theta: expected a number, found %s", c->src, c->pfx, where, jtype(t));
    *theta = (float)t->valuedouble;
  }
  return 0;
}

/* Read one Gemma 2 stack (the gemma2 root, or a t5gemma module) over defaults already in s. */
static int parse_stack(const Ctx *c, const cJSON *o, StackConfig *s, int is_gemma2) {
  if (rd_int(c, o, "vocab_size", &s->vocab_size) || rd_int(c, o, "hidden_size", &s->hidden_size) ||
      rd_int(c, o, "intermediate_size", &s->intermediate_size) || rd_int(c, o, "num_hidden_layers", &s->num_hidden_layers) ||
      rd_int(c, o, "num_attention_heads", &s->num_attention_heads) || rd_int(c, o, "num_key_value_heads", &s->num_key_value_heads) ||
      rd_int(c, o, "head_dim", &s->head_dim) || rd_float(c, o, "query_pre_attn_scalar", &s->query_pre_attn_scalar) ||
      rd_int(c, o, "max_position_embeddings", &s->max_position_embeddings) || rd_float(c, o, "rms_norm_eps", &s->rms_norm_eps) ||
      rd_cap(c, o, "attn_logit_softcapping", &s->attn_logit_softcapping) ||
      rd_cap(c, o, "final_logit_softcapping", &s->final_logit_softcapping) ||
      rd_float(c, o, "dropout_rate", &s->dropout_rate) || rd_float(c, o, "attention_dropout", &s->attention_dropout) ||
      rd_float(c, o, "initializer_range", &s->initializer_range))
    return -1;

  /* sliding_window (legacy: sliding_window_size) */
  const char *sw_key = cJSON_GetObjectItemCaseSensitive(o, "sliding_window") ? "sliding_window" : "sliding_window_size";
  const cJSON *sw = cJSON_GetObjectItemCaseSensitive(o, sw_key);
  if (sw && cJSON_IsNull(sw)) return t5g_error("%s: %s%s: null (no sliding window) is not supported; expected a positive integer", c->src, c->pfx, sw_key);
  if (rd_int(c, o, sw_key, &s->sliding_window)) return -1;

  /* hidden_activation (legacy: hidden_act) */
  const cJSON *act = cJSON_GetObjectItemCaseSensitive(o, "hidden_activation");
  const char *act_key = "hidden_activation";
  if (!act || cJSON_IsNull(act)) { act = cJSON_GetObjectItemCaseSensitive(o, "hidden_act"); act_key = "hidden_act"; }
  if (act && !cJSON_IsNull(act)) {
    if (!cJSON_IsString(act)) return t5g_error("%s: %s%s: expected a string, found %s", c->src, c->pfx, act_key, jtype(act));
    if (strcmp(act->valuestring, "gelu_pytorch_tanh") != 0 && strcmp(act->valuestring, "gelu_tanh") != 0)
      return t5g_error("%s: %s%s: expected \"gelu_pytorch_tanh\" (or \"gelu_tanh\"), found \"%s\"", c->src, c->pfx, act_key, act->valuestring);
    snprintf(s->hidden_activation, sizeof s->hidden_activation, "gelu_pytorch_tanh");
  }

  /* RoPE */
  const cJSON *rs = cJSON_GetObjectItemCaseSensitive(o, "rope_scaling");
  if (rs && !cJSON_IsNull(rs)) return t5g_error("%s: %s%s: expected null (RoPE scaling is not supported), found %s", c->src, c->pfx, "rope_scaling", jtype(rs));
  if (rd_float(c, o, "rope_theta", &s->rope_theta)) return -1;
  const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o, "rope_parameters");
  if (rp && !cJSON_IsNull(rp)) {
    if (!cJSON_IsObject(rp)) return t5g_error("%s: %srope_parameters: expected an object, found %s", c->src, c->pfx, jtype(rp));
    const cJSON *sl = cJSON_GetObjectItemCaseSensitive(rp, "sliding_attention");
    const cJSON *fu = cJSON_GetObjectItemCaseSensitive(rp, "full_attention");
    if (cJSON_IsObject(sl) || cJSON_IsObject(fu)) {
      float ts = s->rope_theta, tf = s->rope_theta;
      if (cJSON_IsObject(sl) && rd_theta(c, sl, "rope_parameters.sliding_attention", &ts)) return -1;
      if (cJSON_IsObject(fu) && rd_theta(c, fu, "rope_parameters.full_attention", &tf)) return -1;
      if (ts != tf) return t5g_error("%s: %srope_parameters: sliding_attention rope_theta %g differs from full_attention rope_theta %g (Gemma 2 uses one base, spec 1.5)",
                                     c->src, c->pfx, ts, tf);
      s->rope_theta = ts;
    } else if (rd_theta(c, rp, "rope_parameters", &s->rope_theta)) return -1;
  }

  int flag = 0;
  if (rd_bool(c, o, "attention_bias", &flag)) return -1;
  if (flag) return t5g_error("%s: %sattention_bias: expected false (attention biases are not supported), found true", c->src, c->pfx);
  if (is_gemma2) {
    const cJSON *ub = cJSON_GetObjectItemCaseSensitive(o, "use_bidirectional_attention");
    if (ub && !cJSON_IsNull(ub)) {
      flag = 0;
      if (rd_bool(c, o, "use_bidirectional_attention", &flag)) return -1;
      if (flag) return t5g_error("%s: use_bidirectional_attention: expected false or null (not supported for gemma2; use a t5gemma encoder), found true", c->src);
    }
  }

  /* layer_types (optional; default: sliding on even layers, spec 1.5) */
  if (s->num_hidden_layers < 1 || s->num_hidden_layers > T5G_MAX_LAYERS)
    return t5g_error("%s: %snum_hidden_layers: expected 1..%d, found %d", c->src, c->pfx, T5G_MAX_LAYERS, s->num_hidden_layers);
  const cJSON *lt = cJSON_GetObjectItemCaseSensitive(o, "layer_types");
  for (int i = 0; i < T5G_MAX_LAYERS; i++) s->layer_sliding[i] = (i < s->num_hidden_layers) && (i % 2 == 0);
  if (lt && !cJSON_IsNull(lt)) {
    if (!cJSON_IsArray(lt)) return t5g_error("%s: %slayer_types: expected a list of strings, found %s", c->src, c->pfx, jtype(lt));
    int n = cJSON_GetArraySize(lt);
    if (n != s->num_hidden_layers && !cJSON_GetObjectItemCaseSensitive(o, "num_hidden_layers"))
      return t5g_error("%s: %slayer_types has %d entries, but %snum_hidden_layers is not in the file and defaults to %d "
                       "(the default of transformers' %s); add \"num_hidden_layers\": %d", c->src, c->pfx, n, c->pfx,
                       s->num_hidden_layers, c->pfx[0] ? "T5GemmaModuleConfig" : "Gemma2Config", n);
    if (n != s->num_hidden_layers)
      return t5g_error("%s: %slayer_types has %d entries, num_hidden_layers is %d", c->src, c->pfx, n, s->num_hidden_layers);
    int i = 0;
    for (const cJSON *e = lt->child; e; e = e->next, i++) {
      if (cJSON_IsString(e) && strcmp(e->valuestring, "sliding_attention") == 0) s->layer_sliding[i] = 1;
      else if (cJSON_IsString(e) && strcmp(e->valuestring, "full_attention") == 0) s->layer_sliding[i] = 0;
      else return t5g_error("%s: %slayer_types[%d]: expected \"sliding_attention\" or \"full_attention\", found %s%s%s", c->src, c->pfx, i,
                            cJSON_IsString(e) ? "\"" : "", cJSON_IsString(e) ? e->valuestring : jtype(e), cJSON_IsString(e) ? "\"" : "");
    }
  }
  return 0;
}

static int parse_extras(const Ctx *c, const cJSON *root, ModelConfig *m) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, "t5gemma_c");
  if (!x || cJSON_IsNull(x)) return 0;
  if (!cJSON_IsObject(x)) return t5g_error("%s: t5gemma_c: expected an object, found %s", c->src, jtype(x));
  Ctx cx = {c->src, "t5gemma_c."};
  for (const cJSON *e = x->child; e; e = e->next)
    if (strcmp(e->string, "encoder_causal") != 0 && strcmp(e->string, "embed_scale_bf16") != 0)
      return t5g_error("%s: t5gemma_c.%s: unknown key (known: encoder_causal, embed_scale_bf16)", c->src, e->string);
  if (rd_bool(&cx, x, "encoder_causal", &m->encoder_causal) || rd_bool(&cx, x, "embed_scale_bf16", &m->embed_scale_bf16)) return -1;
  return 0;
}

static void name_from_source(const char *src, char *out, size_t n) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", src);
  size_t L = strlen(buf);
  while (L > 1 && buf[L - 1] == '/') buf[--L] = 0;
  char *base = strrchr(buf, '/');
  if (strcmp(base ? base + 1 : buf, "config.json") == 0 && base) {   /* <dir>/config.json -> dir */
    *base = 0;
    base = strrchr(buf, '/');
  }
  char *b = base ? base + 1 : buf;
  size_t bl = strlen(b);
  if (bl > 5 && strcmp(b + bl - 5, ".json") == 0) b[bl - 5] = 0;
  snprintf(out, n, "%s", b);
}

int config_parse(const char *json, const char *source, ModelConfig *m) {
  memset(m, 0, sizeof *m);
  cJSON *root = cJSON_Parse(json);
  if (!root) return t5g_error("%s: not valid JSON (error near \"%.30s\")", source, cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() : "?");
  int rc = -1;
  Ctx c = {source, ""};
  if (!cJSON_IsObject(root)) { t5g_error("%s: expected a JSON object", source); goto out; }
  char dup[256];
  if (t5g_json_duplicate_key(root, dup, sizeof dup)) {   /* we would read the first, transformers the last */
    t5g_error("%s: key \"%s\" appears more than once (we would read the first value, Hugging Face's Python loader the last): "
              "keep one", source, dup);
    goto out;
  }
  const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
  if (!mt || !cJSON_IsString(mt)) { t5g_error("%s: model_type: expected \"gemma2\" or \"t5gemma\", found %s", source, mt ? jtype(mt) : "no model_type"); goto out; }
  m->tie_word_embeddings = 1;
  m->pad_token_id = 0; m->eos_token_id = 1; m->bos_token_id = 2;
  if (strcmp(mt->valuestring, "gemma2") == 0) {
    m->kind = MODEL_GEMMA2;
    stack_config_defaults(&m->dec);
    if (parse_stack(&c, root, &m->dec, 1)) goto out;
    if (rd_token_id(&c, root, "pad_token_id", &m->pad_token_id) || rd_token_id(&c, root, "eos_token_id", &m->eos_token_id) ||
        rd_token_id(&c, root, "bos_token_id", &m->bos_token_id) || rd_bool(&c, root, "tie_word_embeddings", &m->tie_word_embeddings))
      goto out;
  } else if (strcmp(mt->valuestring, "t5gemma") == 0) {
    m->kind = MODEL_T5GEMMA;
    const cJSON *je = cJSON_GetObjectItemCaseSensitive(root, "encoder");
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    if (je && !cJSON_IsNull(je) && !cJSON_IsObject(je)) { t5g_error("%s: encoder: expected an object, found %s", source, jtype(je)); goto out; }
    if (jd && !cJSON_IsNull(jd) && !cJSON_IsObject(jd)) { t5g_error("%s: decoder: expected an object, found %s", source, jtype(jd)); goto out; }
    if (je && cJSON_IsNull(je)) je = NULL;
    if (jd && cJSON_IsNull(jd)) jd = NULL;
    if (!jd) jd = je;                              /* transformers: decoder defaults to the encoder config */
    Ctx ce = {source, "encoder."}, cd = {source, "decoder."};
    stack_config_defaults(&m->enc);
    stack_config_defaults(&m->dec);
    if (je && parse_stack(&ce, je, &m->enc, 0)) goto out;
    if (jd && parse_stack(&cd, jd, &m->dec, 0)) goto out;
    /* decoder special ids, then top-level overrides */
    int dpad = 0, deos = 1, dbos = 2;
    if (jd && (rd_token_id(&cd, jd, "pad_token_id", &dpad) || rd_token_id(&cd, jd, "eos_token_id", &deos) ||
               rd_token_id(&cd, jd, "bos_token_id", &dbos))) goto out;
    m->pad_token_id = dpad; m->eos_token_id = deos; m->bos_token_id = dbos;
    if (rd_token_id(&c, root, "pad_token_id", &m->pad_token_id) || rd_token_id(&c, root, "eos_token_id", &m->eos_token_id) ||
        rd_token_id(&c, root, "bos_token_id", &m->bos_token_id) || rd_bool(&c, root, "tie_word_embeddings", &m->tie_word_embeddings))
      goto out;
    int ied = 1;
    if (rd_bool(&c, root, "is_encoder_decoder", &ied)) goto out;
    if (!ied) { t5g_error("%s: is_encoder_decoder: expected true (encoder-only T5Gemma models are not supported), found false", source); goto out; }
    /* top-level vocab_size / dropout override both modules (transformers' shared attributes) */
    int vocab = 256000;
    if (rd_int(&c, root, "vocab_size", &vocab)) goto out;
    const char *which[2] = {"encoder", "decoder"};
    const cJSON *mods[2] = {je, jd};
    StackConfig *st[2] = {&m->enc, &m->dec};
    for (int k = 0; k < 2; k++) {
      if (mods[k] && cJSON_GetObjectItemCaseSensitive(mods[k], "vocab_size") && st[k]->vocab_size != vocab) {
        t5g_error("%s: %s.vocab_size is %d but the top-level vocab_size is %d%s (transformers sets the modules' vocab_size from the top level)",
                  source, which[k], st[k]->vocab_size, vocab, cJSON_GetObjectItemCaseSensitive(root, "vocab_size") ? "" : " (its default; absent from the file)");
        goto out;
      }
      st[k]->vocab_size = vocab;
    }
    float dr = 0, ad = 0;
    if (rd_float(&c, root, "dropout_rate", &dr) || rd_float(&c, root, "attention_dropout", &ad)) goto out;
    m->enc.dropout_rate = m->dec.dropout_rate = dr;
    m->enc.attention_dropout = m->dec.attention_dropout = ad;
    /* cross-attention width: set from the encoder when absent (transformers always overwrites it) */
    m->enc.cross_attention_hidden_size = 0;
    m->dec.cross_attention_hidden_size = m->enc.hidden_size;
    if (jd && rd_int(&cd, jd, "cross_attention_hidden_size", &m->dec.cross_attention_hidden_size)) goto out;
  } else {
    t5g_error("%s: model_type: expected \"gemma2\" or \"t5gemma\", found \"%s\"", source, mt->valuestring);
    goto out;
  }
  if (m->kind == MODEL_GEMMA2) {
    m->dec.cross_attention_hidden_size = 0;
    memset(&m->enc, 0, sizeof m->enc);
  }
  if (parse_extras(&c, root, m)) goto out;
  name_from_source(source, m->name, sizeof m->name);
  rc = config_validate(m, source);
out:
  cJSON_Delete(root);
  return rc;
}

int config_load(const char *path, ModelConfig *c) {
  struct stat st;
  char *file = NULL;
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) file = t5g_path_join(path, "config.json");
  else file = t5g_strdup(path);
  char *text = t5g_read_file(file, NULL);
  if (!text) { free(file); return -1; }
  int rc = config_parse(text, file, c);
  free(text); free(file);
  return rc;
}

/* ---- validation --------------------------------------------------------------------------- */

static int validate_stack(const StackConfig *s, const char *src, const char *pfx) {
#define POS(f) if (s->f <= 0) return t5g_error("%s: %s" #f ": expected a positive value, found %d", src, pfx, s->f)
  POS(vocab_size); POS(hidden_size); POS(intermediate_size); POS(num_attention_heads);
  POS(num_key_value_heads); POS(head_dim); POS(sliding_window); POS(max_position_embeddings);
#undef POS
  if (s->num_hidden_layers < 1 || s->num_hidden_layers > T5G_MAX_LAYERS)
    return t5g_error("%s: %snum_hidden_layers: expected 1..%d (T5G_MAX_LAYERS), found %d", src, pfx, T5G_MAX_LAYERS, s->num_hidden_layers);
  if (s->num_attention_heads % s->num_key_value_heads != 0)
    return t5g_error("%s: %snum_attention_heads (%d) is not divisible by num_key_value_heads (%d)", src, pfx,
                     s->num_attention_heads, s->num_key_value_heads);
  if (s->head_dim % 2 != 0)
    return t5g_error("%s: %shead_dim: expected an even number (RoPE rotates halves, spec 1.5), found %d", src, pfx, s->head_dim);
  if (!(s->query_pre_attn_scalar > 0) || !isfinite(s->query_pre_attn_scalar))
    return t5g_error("%s: %squery_pre_attn_scalar: expected a positive number, found %g", src, pfx, s->query_pre_attn_scalar);
  if (!(s->rope_theta > 0) || !isfinite(s->rope_theta))
    return t5g_error("%s: %srope_theta: expected a positive number, found %g", src, pfx, s->rope_theta);
  if (!(s->rms_norm_eps > 0) || !isfinite(s->rms_norm_eps))
    return t5g_error("%s: %srms_norm_eps: expected a positive number, found %g", src, pfx, s->rms_norm_eps);
  if (!(s->attn_logit_softcapping >= 0) || !isfinite(s->attn_logit_softcapping))
    return t5g_error("%s: %sattn_logit_softcapping: expected a positive number or null (none), found %g", src, pfx, s->attn_logit_softcapping);
  if (!(s->final_logit_softcapping >= 0) || !isfinite(s->final_logit_softcapping))
    return t5g_error("%s: %sfinal_logit_softcapping: expected a positive number or null (none), found %g", src, pfx, s->final_logit_softcapping);
  if (strcmp(s->hidden_activation, "gelu_pytorch_tanh") != 0 && strcmp(s->hidden_activation, "gelu_tanh") != 0)
    return t5g_error("%s: %shidden_activation: expected \"gelu_pytorch_tanh\" (or \"gelu_tanh\"), found \"%s\"", src, pfx, s->hidden_activation);
  if (!(s->dropout_rate >= 0 && s->dropout_rate < 1))
    return t5g_error("%s: %sdropout_rate: expected a value in [0, 1), found %g", src, pfx, s->dropout_rate);
  if (!(s->attention_dropout >= 0 && s->attention_dropout < 1))
    return t5g_error("%s: %sattention_dropout: expected a value in [0, 1), found %g", src, pfx, s->attention_dropout);
  if (!(s->initializer_range >= 0) || !isfinite(s->initializer_range))
    return t5g_error("%s: %sinitializer_range: expected a non-negative number, found %g", src, pfx, s->initializer_range);
  for (int i = 0; i < s->num_hidden_layers; i++)
    if (s->layer_sliding[i] > 1) return t5g_error("%s: %slayer_types[%d]: unknown layer type code %d", src, pfx, i, s->layer_sliding[i]);
  return 0;
}

int config_validate(const ModelConfig *c, const char *source) {
  const char *src = source ? source : (c->name[0] ? c->name : "config");
  if (c->kind != MODEL_GEMMA2 && c->kind != MODEL_T5GEMMA)
    return t5g_error("%s: model_type: expected gemma2 or t5gemma, found kind %d", src, (int)c->kind);
  if (c->tie_word_embeddings != 1)
    return t5g_error("%s: tie_word_embeddings: expected true (Gemma ties the LM head to the %sembedding), found false", src,
                     c->kind == MODEL_T5GEMMA ? "decoder " : "");
  if (c->encoder_causal != 0 && c->encoder_causal != 1)
    return t5g_error("%s: t5gemma_c.encoder_causal: expected 0 or 1, found %d", src, c->encoder_causal);
  if (c->embed_scale_bf16 != 0 && c->embed_scale_bf16 != 1)
    return t5g_error("%s: t5gemma_c.embed_scale_bf16: expected 0 or 1, found %d", src, c->embed_scale_bf16);
  if (c->kind == MODEL_GEMMA2) {
    if (validate_stack(&c->dec, src, "")) return -1;
    if (c->dec.cross_attention_hidden_size != 0)
      return t5g_error("%s: cross_attention_hidden_size: a gemma2 model has no cross-attention; expected 0, found %d", src, c->dec.cross_attention_hidden_size);
    /* transformers' Gemma2Config.validate_architecture refuses this; keep our files loadable */
    if (c->dec.hidden_size % c->dec.num_attention_heads != 0)
      return t5g_error("%s: hidden_size (%d) is not a multiple of num_attention_heads (%d), which transformers' Gemma2Config refuses",
                       src, c->dec.hidden_size, c->dec.num_attention_heads);
    if (c->encoder_causal) return t5g_error("%s: t5gemma_c.encoder_causal: a gemma2 model has no encoder; expected 0, found 1", src);
  } else {
    if (validate_stack(&c->enc, src, "encoder.") || validate_stack(&c->dec, src, "decoder.")) return -1;
    if (c->enc.vocab_size != c->dec.vocab_size)
      return t5g_error("%s: encoder.vocab_size (%d) differs from decoder.vocab_size (%d); T5Gemma uses one tokenizer", src, c->enc.vocab_size, c->dec.vocab_size);
    if (c->dec.cross_attention_hidden_size != c->enc.hidden_size)
      return t5g_error("%s: decoder.cross_attention_hidden_size: expected the encoder hidden_size %d, found %d", src,
                       c->enc.hidden_size, c->dec.cross_attention_hidden_size);
    if (c->enc.cross_attention_hidden_size != 0)
      return t5g_error("%s: encoder.cross_attention_hidden_size: the encoder has no cross-attention; expected 0, found %d", src, c->enc.cross_attention_hidden_size);
    if (c->enc.dropout_rate != c->dec.dropout_rate || c->enc.attention_dropout != c->dec.attention_dropout)
      return t5g_error("%s: dropout_rate/attention_dropout differ between encoder (%g/%g) and decoder (%g/%g); transformers has one top-level value of each",
                       src, c->enc.dropout_rate, c->enc.attention_dropout, c->dec.dropout_rate, c->dec.attention_dropout);
  }
  int V = c->dec.vocab_size;
  if (c->pad_token_id < 0 || c->pad_token_id >= V) return t5g_error("%s: pad_token_id: expected 0..%d, found %d", src, V - 1, c->pad_token_id);
  if (c->eos_token_id < 0 || c->eos_token_id >= V) return t5g_error("%s: eos_token_id: expected 0..%d, found %d", src, V - 1, c->eos_token_id);
  if (c->bos_token_id < 0 || c->bos_token_id >= V) return t5g_error("%s: bos_token_id: expected 0..%d, found %d", src, V - 1, c->bos_token_id);
  return 0;
}

/* ---- writing ------------------------------------------------------------------------------ */

/* Shortest decimal that reads back as the same float, always with a '.' or exponent so that
 * Python's json gives a float. */
static cJSON *raw_float(float v) {
  char s[48];
  int p;
  for (p = 6; p <= 9; p++) { snprintf(s, sizeof s, "%.*g", p, (double)v); if (strtof(s, NULL) == v) break; }
  if (!strpbrk(s, ".eEn")) strncat(s, ".0", sizeof s - strlen(s) - 1);
  return cJSON_CreateRaw(s);
}
/* An integer when integral (transformers types query_pre_attn_scalar as int), else a float. */
static cJSON *num_int_or_float(float v) {
  if (v == floorf(v) && fabsf(v) < 1e9f) return cJSON_CreateNumber((double)v);
  return raw_float(v);
}
static void add_float(cJSON *o, const char *k, float v) { cJSON_AddItemToObject(o, k, raw_float(v)); }
static void add_cap(cJSON *o, const char *k, float v) { if (v > 0) add_float(o, k, v); else cJSON_AddNullToObject(o, k); }

static void add_stack_fields(cJSON *o, const StackConfig *s) {
  cJSON_AddFalseToObject(o, "attention_bias");
  add_float(o, "attention_dropout", s->attention_dropout);
  add_cap(o, "attn_logit_softcapping", s->attn_logit_softcapping);
  add_cap(o, "final_logit_softcapping", s->final_logit_softcapping);
  cJSON_AddNumberToObject(o, "head_dim", s->head_dim);
  cJSON_AddStringToObject(o, "hidden_activation", "gelu_pytorch_tanh");
  cJSON_AddNumberToObject(o, "hidden_size", s->hidden_size);
  add_float(o, "initializer_range", s->initializer_range);
  cJSON_AddNumberToObject(o, "intermediate_size", s->intermediate_size);
  cJSON *lt = cJSON_AddArrayToObject(o, "layer_types");
  for (int i = 0; i < s->num_hidden_layers; i++)
    cJSON_AddItemToArray(lt, cJSON_CreateString(s->layer_sliding[i] ? "sliding_attention" : "full_attention"));
  cJSON_AddNumberToObject(o, "max_position_embeddings", s->max_position_embeddings);
  cJSON_AddNumberToObject(o, "num_attention_heads", s->num_attention_heads);
  cJSON_AddNumberToObject(o, "num_hidden_layers", s->num_hidden_layers);
  cJSON_AddNumberToObject(o, "num_key_value_heads", s->num_key_value_heads);
  cJSON_AddItemToObject(o, "query_pre_attn_scalar", num_int_or_float(s->query_pre_attn_scalar));
  add_float(o, "rms_norm_eps", s->rms_norm_eps);
  cJSON *rp = cJSON_AddObjectToObject(o, "rope_parameters");
  cJSON_AddStringToObject(rp, "rope_type", "default");
  add_float(rp, "rope_theta", s->rope_theta);
  add_float(o, "rope_theta", s->rope_theta);
  cJSON_AddNumberToObject(o, "sliding_window", s->sliding_window);
}

char *config_to_json_dtype(const ModelConfig *c, const char *torch_dtype) {
  cJSON *o = cJSON_CreateObject();
  if (c->kind == MODEL_GEMMA2) {
    cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("Gemma2ForCausalLM"));
    cJSON_AddStringToObject(o, "model_type", "gemma2");
    add_stack_fields(o, &c->dec);
    cJSON_AddNumberToObject(o, "bos_token_id", c->bos_token_id);
    cJSON_AddStringToObject(o, "cache_implementation", "hybrid");
    if (c->dec.dropout_rate > 0) add_float(o, "dropout_rate", c->dec.dropout_rate);
    cJSON_AddNumberToObject(o, "eos_token_id", c->eos_token_id);
    cJSON_AddNumberToObject(o, "pad_token_id", c->pad_token_id);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_word_embeddings);
    cJSON_AddStringToObject(o, "torch_dtype", torch_dtype);
    cJSON_AddTrueToObject(o, "use_cache");
    cJSON_AddNumberToObject(o, "vocab_size", c->dec.vocab_size);
  } else {
    cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("T5GemmaForConditionalGeneration"));
    cJSON_AddStringToObject(o, "model_type", "t5gemma");
    cJSON_AddTrueToObject(o, "is_encoder_decoder");
    const StackConfig *st[2] = {&c->enc, &c->dec};
    const char *names[2] = {"encoder", "decoder"};
    for (int k = 0; k < 2; k++) {
      cJSON *m = cJSON_AddObjectToObject(o, names[k]);
      add_stack_fields(m, st[k]);
      if (k == 1) cJSON_AddNumberToObject(m, "cross_attention_hidden_size", c->dec.cross_attention_hidden_size);
      add_float(m, "dropout_rate", st[k]->dropout_rate);
      cJSON_AddBoolToObject(m, "is_decoder", k == 1);
      cJSON_AddStringToObject(m, "model_type", "t5_gemma_module");
      cJSON_AddNumberToObject(m, "bos_token_id", c->bos_token_id);
      cJSON_AddNumberToObject(m, "eos_token_id", c->eos_token_id);
      cJSON_AddNumberToObject(m, "pad_token_id", c->pad_token_id);
      cJSON_AddStringToObject(m, "torch_dtype", torch_dtype);
      cJSON_AddTrueToObject(m, "use_cache");
      cJSON_AddNumberToObject(m, "vocab_size", st[k]->vocab_size);
    }
    add_float(o, "attention_dropout", c->dec.attention_dropout);
    cJSON_AddNumberToObject(o, "bos_token_id", c->bos_token_id);
    add_float(o, "classifier_dropout_rate", 0.0f);
    add_float(o, "dropout_rate", c->dec.dropout_rate);
    cJSON_AddNumberToObject(o, "eos_token_id", c->eos_token_id);
    add_float(o, "initializer_range", c->dec.initializer_range);
    cJSON_AddNumberToObject(o, "pad_token_id", c->pad_token_id);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_word_embeddings);
    cJSON_AddStringToObject(o, "torch_dtype", torch_dtype);
    cJSON_AddTrueToObject(o, "use_cache");
    cJSON_AddNumberToObject(o, "vocab_size", c->dec.vocab_size);
  }
  cJSON *x = cJSON_AddObjectToObject(o, "t5gemma_c");
  cJSON_AddNumberToObject(x, "encoder_causal", c->encoder_causal);
  cJSON_AddNumberToObject(x, "embed_scale_bf16", c->embed_scale_bf16);
  char *s = cJSON_Print(o);
  cJSON_Delete(o);
  size_t n = strlen(s);
  char *out = t5g_malloc(n + 2);
  memcpy(out, s, n); out[n] = '\n'; out[n + 1] = 0;
  cJSON_free(s);
  return out;
}

char *config_to_json(const ModelConfig *c) { return config_to_json_dtype(c, "float32"); }

int config_save(const ModelConfig *c, const char *path) {
  if (config_validate(c, path)) return -1;
  char *s = config_to_json(c);
  T5gOutFile o;
  if (t5g_open_out(&o, path)) { free(s); return -1; }
  fputs(s, o.f);
  free(s);
  return t5g_commit_file(&o);
}

/* ---- presets ------------------------------------------------------------------------------ */

static int is_dir(const char *p) { struct stat st; return stat(p, &st) == 0 && S_ISDIR(st.st_mode); }

static void list_presets(const char *dir, char *out, size_t n) {
  DIR *d = opendir(dir);
  out[0] = 0;
  if (!d) return;
  char *names[256]; int k = 0;
  struct dirent *e;
  while ((e = readdir(d)) && k < 256) {
    size_t L = strlen(e->d_name);
    if (L > 5 && strcmp(e->d_name + L - 5, ".json") == 0) { names[k] = t5g_strdup(e->d_name); names[k][L - 5] = 0; k++; }
  }
  closedir(d);
  for (int i = 1; i < k; i++) { char *x = names[i]; int j = i - 1; while (j >= 0 && strcmp(names[j], x) > 0) { names[j + 1] = names[j]; j--; } names[j + 1] = x; }
  size_t o = 0;
  for (int i = 0; i < k; i++) { if (o < n) o += snprintf(out + o, n - o, "%s%s", i ? ", " : "", names[i]); free(names[i]); }
}

int config_resolve(const char *name_or_path, ModelConfig *c) {
  if (!name_or_path || !name_or_path[0]) return t5g_error("model: empty name (expected a preset name, a config.json or a checkpoint directory)");
  if (t5g_file_exists(name_or_path)) {
    if (is_dir(name_or_path)) {
      char *f = t5g_path_join(name_or_path, "config.json");
      int ok = t5g_file_exists(f);
      free(f);
      if (!ok) return t5g_error("%s: a directory without config.json (expected a checkpoint directory)", name_or_path);
    }
    return config_load(name_or_path, c);
  }
  if (strchr(name_or_path, '/') || strstr(name_or_path, ".json"))
    return t5g_error("%s: no such file or directory", name_or_path);
  /* preset: ./configs/models/<name>.json, then next to the executable and in its parent */
  char *dirs[3]; int nd = 0;
  dirs[nd++] = t5g_strdup("configs/models");
  char exe[4096];
  ssize_t L = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (L > 0) {
    exe[L] = 0;
    char *s = strrchr(exe, '/');
    if (s) {
      *s = 0;
      dirs[nd++] = t5g_path_join(exe[0] ? exe : "/", "configs/models");
      s = strrchr(exe, '/');
      if (s) { *s = 0; dirs[nd++] = t5g_path_join(exe[0] ? exe : "/", "configs/models"); }
    }
  }
  char *file = t5g_malloc(strlen(name_or_path) + 8);
  sprintf(file, "%s.json", name_or_path);
  int rc = 1;
  for (int i = 0; i < nd && rc == 1; i++) {
    char *path = t5g_path_join(dirs[i], file);
    if (t5g_file_exists(path)) {
      rc = config_load(path, c);
      if (rc == 0) snprintf(c->name, sizeof c->name, "%s", name_or_path);
    }
    free(path);
  }
  if (rc == 1) {
    char avail[2048] = "";
    for (int i = 0; i < nd && !avail[0]; i++) list_presets(dirs[i], avail, sizeof avail);
    char where[3 * 4200] = "";
    for (int i = 0, o = 0; i < nd; i++) o += snprintf(where + o, sizeof where - o, "%s%s", i ? ", " : "", dirs[i]);
    rc = t5g_error("%s: not a file, a directory or a preset (looked for %s in %s); presets: %s",
                   name_or_path, file, where, avail[0] ? avail : "(none found)");
  }
  free(file);
  for (int i = 0; i < nd; i++) free(dirs[i]);
  return rc;
}

/* ---- parameter counts ----------------------------------------------------------------------
 * Per layer of a stack with d = hidden_size, F = intermediate_size, H heads, K KV heads, h
 * head_dim (spec 1.7, 2.7; no biases):
 *   self-attention  q: H·h·d, k: K·h·d, v: K·h·d, o: d·H·h
 *   MLP             gate, up: F·d each, down: d·F          -> 3·d·F
 *   norms           4·d (pre/post attention, pre/post feed-forward)
 * T5Gemma decoder layers add cross-attention (d_enc = cross_attention_hidden_size):
 *   q: H·h·d, k, v: K·h·d_enc each, o: d·H·h, norms 2·d (pre/post cross-attention)
 * Body = L · layer + d (final norm). Embedding = V·d per stack (T5Gemma has separate encoder and
 * decoder tables); the LM head is tied to the (decoder) embedding and not counted again. */
static int64_t layer_params(const StackConfig *s) {
  int64_t d = s->hidden_size, F = s->intermediate_size, qh = (int64_t)s->num_attention_heads * s->head_dim,
          kh = (int64_t)s->num_key_value_heads * s->head_dim;
  int64_t n = qh * d + 2 * kh * d + d * qh + 3 * d * F + 4 * d;
  if (s->cross_attention_hidden_size > 0) n += qh * d + 2 * kh * s->cross_attention_hidden_size + d * qh + 2 * d;
  return n;
}

ParamCounts config_param_counts(const ModelConfig *c) {
  ParamCounts p; memset(&p, 0, sizeof p);
  p.dec_embed = (int64_t)c->dec.vocab_size * c->dec.hidden_size;
  p.dec_body = layer_params(&c->dec) * c->dec.num_hidden_layers + c->dec.hidden_size;
  if (c->kind == MODEL_T5GEMMA) {
    p.enc_embed = (int64_t)c->enc.vocab_size * c->enc.hidden_size;
    p.enc_body = layer_params(&c->enc) * c->enc.num_hidden_layers + c->enc.hidden_size;
  }
  p.total = p.enc_embed + p.enc_body + p.dec_embed + p.dec_body;
  return p;
}

/* ---- FLOPs ----------------------------------------------------------------------------------
 * Forward FLOPs, counting a matrix product of [m,k]·[k,n] as 2·m·n·k. Per token of a stack:
 *   projections and MLP: 2 · (q + k + v + o + gate + up + down weights) per layer
 *                        = 2 · (2·H·h·d + 2·K·h·d + 3·d·F)
 *   self-attention:      scores q·k and the weighted sum P·V: 2 · 2·H·h·T_eff per layer, where
 *                        T_eff is the number of keys the token sees, averaged over the T
 *                        positions: causal full (i+1 keys, mean (T+1)/2); causal sliding
 *                        min(i+1, W); bidirectional full T; bidirectional sliding |i-j| < W.
 *   cross-attention (decoder tokens, cross_T > 0): q and o projections 2·2·H·h·d plus scores and
 *                        values over all cross_T encoder tokens 2·2·H·h·cross_T, per layer. The
 *                        K/V projections of the encoder output (2·2·K·h·d_enc per decoder layer)
 *                        depend on the encoder length, not the decoder's, so they are counted
 *                        per ENCODER token, in config_flops_per_example.
 *   LM head:             2·V·d per decoder token (causal = 1); encoder tokens (causal = 0) have
 *                        none. (For the encoder_causal ablation use config_flops_per_example.)
 * Not counted: norms, RoPE, soft-capping, softmax, GELU, the embedding lookup (O(d) or O(T) per
 * token against O(d²)). Backward is usually taken as 2x forward (training = 3x forward). */
static double mean_keys(int T, int causal, int W) {
  if (T <= 0) return 0;
  double sum = 0;
  for (int64_t i = 0; i < T; i++) {
    int64_t n;
    if (causal) n = (W > 0 && i + 1 > W) ? W : i + 1;
    else {
      int64_t lo = (W > 0 && i > W - 1) ? W - 1 : i, hi = (W > 0 && T - 1 - i > W - 1) ? W - 1 : T - 1 - i;
      n = lo + hi + 1;
    }
    sum += (double)n;
  }
  return sum / T;
}

static double stack_flops(const StackConfig *s, int T, int causal, int cross_T, int lm_head) {
  double d = s->hidden_size, F = s->intermediate_size, qh = (double)s->num_attention_heads * s->head_dim,
         kh = (double)s->num_key_value_heads * s->head_dim;
  double per_layer = 2.0 * (2 * qh * d + 2 * kh * d + 3 * d * F);
  double keys_sliding = mean_keys(T, causal, s->sliding_window), keys_full = mean_keys(T, causal, 0);
  double f = 0;
  for (int l = 0; l < s->num_hidden_layers; l++) {
    f += per_layer + 4.0 * qh * (s->layer_sliding[l] ? keys_sliding : keys_full);
    if (cross_T > 0) f += 2.0 * 2 * qh * d + 4.0 * qh * cross_T;
  }
  if (lm_head) f += 2.0 * s->vocab_size * d;
  return f;
}

double config_flops_per_token(const StackConfig *s, int T, int causal, int cross_T) {
  return stack_flops(s, T, causal, cross_T, causal != 0);
}

void config_flops_parts(const ModelConfig *c, int Te, int Td, double *enc, double *dec, double *head, double *cross_w) {
  const StackConfig *d = &c->dec;
  *head = 2.0 * d->vocab_size * d->hidden_size;
  *cross_w = 0;
  if (c->kind == MODEL_GEMMA2) {
    *enc = 0;
    *dec = (double)Td * stack_flops(d, Td, 1, 0, 0);
    return;
  }
  double kv = 2.0 * 2 * (double)d->num_key_value_heads * d->head_dim * c->enc.hidden_size * d->num_hidden_layers;
  *enc = Te > 0 ? (double)Te * (stack_flops(&c->enc, Te, c->encoder_causal, 0, 0) + kv) : 0;
  *dec = (double)Td * stack_flops(d, Td, 1, Te, 0);
  if (Te > 0)
    *cross_w = (double)Te * kv + (double)Td * d->num_hidden_layers * 2.0 * 2 * (double)d->num_attention_heads * d->head_dim * d->hidden_size;
}

double config_flops_per_example(const ModelConfig *c, int Te, int Td) {
  if (c->kind == MODEL_GEMMA2) return (double)Td * stack_flops(&c->dec, Td, 1, 0, 1);
  double kv = 2.0 * 2 * (double)c->dec.num_key_value_heads * c->dec.head_dim * c->enc.hidden_size * c->dec.num_hidden_layers;
  double enc = Te > 0 ? (double)Te * (stack_flops(&c->enc, Te, c->encoder_causal, 0, 0) + kv) : 0;
  return enc + (double)Td * stack_flops(&c->dec, Td, 1, Te, 1);
}
