/* objectives.c: causal LM, PrefixLM, UL2 and SFT example builders and the batch assembler.
 * The math and the layouts are documented in data/objectives.h (spec 4.2, 4.3, 4.6; T5
 * t5/data/preprocessors.py for span corruption and the length arithmetic). */
#include "data/objectives.h"
#include "model/util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define OBJ_MAGIC 0x7F6A0B1E00LL

/* ------------------------------------------------------------------------------------------ */
/* Token stream: documents decorated with optional <bos> / <eos>, read one at a time.           */

typedef struct TokStream {
  DocSource src;
  DocSeeker sk;
  int has_sk;
  int bos, eos;             /* decorate each document */
  int32_t bos_id, eos_id;
  const int32_t *doc;       /* current raw document (valid until the next src.next call) */
  int64_t doc_n;            /* its raw length */
  int64_t len;              /* decorated length = bos + doc_n + eos */
  int64_t off;              /* decorated tokens consumed */
  int have;                 /* a current document is loaded */
  int exhausted;            /* the source returned 0 */
  int64_t pos[DOCPOS_LEN];  /* source position of the current document */
  int64_t ndocs;            /* documents read (including skipped empty ones) */
} TokStream;

static inline int32_t ts_tok(const TokStream *s, int64_t i) {
  if (s->bos) { if (i == 0) return s->bos_id; i--; }
  if (i < s->doc_n) return s->doc[i];
  return s->eos_id;
}

/* Load the next non-empty document. 1, 0 at the end of the source, -1 on error. */
static int ts_fetch(TokStream *s) {
  if (s->exhausted) return 0;
  for (;;) {
    int64_t pos[DOCPOS_LEN] = {0};
    if (s->has_sk && s->sk.tell(s->sk.ctx, pos) < 0) return -1;
    const int32_t *ids = NULL;
    int64_t n = 0;
    int r = s->src.next(s->src.ctx, &ids, &n);
    if (r < 0) return -1;
    if (r == 0) { s->exhausted = 1; s->have = 0; return 0; }
    s->ndocs++;
    if (n < 0 || (n > 0 && !ids))
      return t5g_error("document source: document %lld has length %lld (expected >= 0 with data)",
                       (long long)s->ndocs, (long long)n);
    for (int64_t i = 0; i < n; i++)
      if (ids[i] < 0)
        return t5g_error("document source: document %lld, token %lld: id %d (expected >= 0)",
                         (long long)s->ndocs, (long long)i, (int)ids[i]);
    if (n == 0) continue;  /* empty documents are skipped */
    s->doc = ids; s->doc_n = n; s->len = n + s->bos + s->eos; s->off = 0; s->have = 1;
    memcpy(s->pos, pos, sizeof pos);
    return 1;
  }
}

/* Copy up to n tokens into out (and the number of the document each came from into docid, if
 * not NULL). Returns the count (< n only at the end of the source) or -1. */
static int64_t ts_take(TokStream *s, int32_t *out, int64_t *docid, int64_t n) {
  int64_t got = 0;
  while (got < n) {
    if (!s->have || s->off == s->len) {
      int r = ts_fetch(s);
      if (r < 0) return -1;
      if (r == 0) break;
    }
    int64_t k = s->len - s->off;
    if (k > n - got) k = n - got;
    for (int64_t j = 0; j < k; j++) {
      out[got + j] = ts_tok(s, s->off + j);
      if (docid) docid[got + j] = s->ndocs;
    }
    s->off += k; got += k;
  }
  return got;
}

/* ------------------------------------------------------------------------------------------ */

struct Objective {
  ObjKind kind;
  int Te, Td, packed;
  ObjSpecials sp;
  int32_t *sentinels;
  uint64_t seed;
  Rng rng;
  int64_t rows;
  TokStream ts;
  /* causal */
  int segments;
  /* prefix LM */
  PrefixLMOptions plm;
  int64_t plm_N;            /* window length */
  /* UL2 */
  Ul2Denoiser *den;
  int n_den;
  int64_t *rawlen;
  double wsum;
  /* SFT */
  SftOptions sft;
  const SftData *data;
  SftEncoder enc;
  int64_t n_ex, per_rank, epoch, idx, *perm, perm_epoch;  /* idx: this rank's position k */
  SftConv conv;
  int32_t *sids; uint8_t *strain;
  /* scratch */
  int32_t *buf, *inp, *tgt;
  int64_t *docid;
  uint8_t *mask;
  int64_t cap;
};

static int check_specials(const ObjSpecials *sp, const char *who) {
  if (!sp) return t5g_error("%s: special ids missing", who);
  if (sp->pad < 0 || sp->eos < 0 || sp->bos < 0)
    return t5g_error("%s: special ids <pad> %d, <eos> %d, <bos> %d: all must be >= 0 (look them up "
                     "with tokenizer_specials)", who, (int)sp->pad, (int)sp->eos, (int)sp->bos);
  if (sp->n_sentinels < 0 || sp->n_sentinels > OBJ_MAX_SENTINELS || (sp->n_sentinels > 0 && !sp->sentinels))
    return t5g_error("%s: %d sentinel ids (expected 0..%d with an array)", who, sp->n_sentinels,
                     OBJ_MAX_SENTINELS);
  for (int i = 0; i < sp->n_sentinels; i++)
    if (sp->sentinels[i] < 0)
      return t5g_error("%s: sentinel %d has id %d (not in the vocabulary?)", who, i, (int)sp->sentinels[i]);
  return 0;
}

static Objective *obj_new_common(ObjKind kind, int Te, int Td, const ObjSpecials *sp,
                                 uint64_t seed, int64_t cap) {
  Objective *o = t5g_calloc(1, sizeof *o);
  o->kind = kind; o->Te = Te; o->Td = Td; o->sp = *sp; o->seed = seed;
  rng_seed(&o->rng, seed);
  if (sp->n_sentinels > 0) {
    o->sentinels = t5g_malloc(sizeof(int32_t) * sp->n_sentinels);
    memcpy(o->sentinels, sp->sentinels, sizeof(int32_t) * sp->n_sentinels);
  }
  o->sp.sentinels = o->sentinels;
  o->cap = cap;
  o->buf = t5g_malloc(sizeof(int32_t) * (cap + 2));
  o->docid = t5g_malloc(sizeof(int64_t) * (cap + 2));
  o->mask = t5g_malloc(cap + 2);
  o->inp = t5g_malloc(sizeof(int32_t) * (cap + 3));
  o->tgt = t5g_malloc(sizeof(int32_t) * (cap + 3));
  return o;
}

static void ts_init(TokStream *s, DocSource src, const DocSeeker *sk, int bos, int eos,
                    const ObjSpecials *sp) {
  memset(s, 0, sizeof *s);
  s->src = src;
  if (sk && sk->tell && sk->seek) { s->sk = *sk; s->has_sk = 1; }
  s->bos = bos ? 1 : 0; s->eos = eos ? 1 : 0;
  s->bos_id = sp->bos; s->eos_id = sp->eos;
}

void obj_free(Objective *o) {
  if (!o) return;
  free(o->sentinels); free(o->den); free(o->rawlen); free(o->perm);
  sft_conv_free(&o->conv);
  free(o->sids); free(o->strain);
  free(o->buf); free(o->docid); free(o->mask); free(o->inp); free(o->tgt);
  free(o);
}

ObjKind obj_kind(const Objective *o) { return o->kind; }
int obj_enc_len(const Objective *o) { return o->Te; }
int obj_dec_len(const Objective *o) { return o->Td; }
int obj_packed(const Objective *o) { return o->packed; }

/* ------------------------------------------------------------------------------------------ */
/* Causal LM                                                                                    */

CausalOptions obj_causal_defaults(int T) {
  CausalOptions c = { .T = T, .bos = 1, .segments = 0 };
  return c;
}

Objective *obj_causal_new(const CausalOptions *opt, const ObjSpecials *sp, DocSource src,
                          const DocSeeker *seeker, uint64_t seed) {
  if (check_specials(sp, "causal LM") < 0) return NULL;
  if (!src.next) { t5g_error("causal LM: document source has no next()"); return NULL; }
  if (opt->T < 1) { t5g_error("causal LM: row length T = %d (expected >= 1)", opt->T); return NULL; }
  Objective *o = obj_new_common(OBJ_CAUSAL, 0, opt->T, sp, seed, (int64_t)opt->T + 1);
  o->segments = opt->segments ? 1 : 0;
  o->packed = o->segments;
  ts_init(&o->ts, src, seeker, opt->bos, 1, sp);
  return o;
}

/* Row writers return 1 (row filled), 0 (source exhausted, row left as padding), -1 (error), and
 * set *ne / *nd to the number of real encoder / decoder positions. */
static int causal_row(Objective *o, Batch *b, int r, int *ne, int *nd) {
  int T = o->Td;
  int64_t got = ts_take(&o->ts, o->buf, o->docid, (int64_t)T + 1);
  if (got < 0) return -1;
  if (got < 2) return 0;               /* nothing left to predict */
  if (got == (int64_t)T + 1) o->ts.off -= 1;  /* the last token starts the next row */
  int n = (int)got - 1;
  int32_t *ids = b->dec_ids + (size_t)r * T, *lab = b->labels + (size_t)r * T;
  int32_t *seg = b->dec_seg ? b->dec_seg + (size_t)r * T : NULL;
  int32_t sgn = 1;
  for (int t = 0; t < n; t++) {
    ids[t] = o->buf[t];
    if (t > 0 && o->docid[t] != o->docid[t - 1]) sgn++;
    if (o->segments) {
      lab[t] = o->docid[t + 1] == o->docid[t] ? o->buf[t + 1] : -100;
      if (seg) seg[t] = sgn;
    } else {
      lab[t] = o->buf[t + 1];
    }
  }
  *ne = 0; *nd = n;
  return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* PrefixLM                                                                                     */

PrefixLMOptions obj_prefixlm_defaults(int Te, int Td) {
  PrefixLMOptions p = { .Te = Te, .Td = Td, .bos = 1, .pack = 1, .random_density = 0.0 };
  return p;
}

/* T5 random_prefix_noise_mask's lower bound on the prefix length for a window of m tokens. */
static int64_t plm_lo(int64_t m, double d) {
  int64_t lo = (int64_t)nearbyint((1.0 - 2.0 * d) * (double)(m - 1));
  if (lo < 1) lo = 1;
  if (lo > m - 1) lo = m - 1;
  return lo;
}

Objective *obj_prefixlm_new(const PrefixLMOptions *opt, const ObjSpecials *sp, DocSource src,
                            const DocSeeker *seeker, uint64_t seed) {
  if (check_specials(sp, "PrefixLM") < 0) return NULL;
  if (!src.next) { t5g_error("PrefixLM: document source has no next()"); return NULL; }
  if (opt->Te < 1 || opt->Td < 1) {
    t5g_error("PrefixLM: lengths Te = %d, Td = %d (expected >= 1)", opt->Te, opt->Td);
    return NULL;
  }
  double d = opt->random_density;
  if (!(d >= 0.0 && d <= 0.5)) {
    t5g_error("PrefixLM: random_density = %g (expected 0 for the equal split, or in (0, 0.5] as "
              "T5's random_prefix_noise_mask)", d);
    return NULL;
  }
  int64_t N = (int64_t)opt->Te + opt->Td;
  if (d > 0) {
    /* largest N whose every split in [lo(N), N-1] fits: N-1 <= Te and N - lo(N) <= Td */
    int64_t best = -1;
    for (int64_t m = 2; m <= (int64_t)opt->Te + 1; m++) {
      if (m - plm_lo(m, d) > opt->Td) break;
      best = m;
    }
    if (best < 2) {
      t5g_error("PrefixLM: no window fits Te = %d, Td = %d with random_density %g", opt->Te, opt->Td, d);
      return NULL;
    }
    N = best;
  }
  Objective *o = obj_new_common(OBJ_PREFIXLM, opt->Te, opt->Td, sp, seed, N);
  o->plm = *opt;
  o->plm_N = N;
  ts_init(&o->ts, src, seeker, opt->bos, 1, sp);
  return o;
}

static int prefixlm_row(Objective *o, Batch *b, int r, int *ne, int *nd) {
  int64_t N = o->plm_N, m;
  if (o->plm.pack) {
    m = ts_take(&o->ts, o->buf, NULL, N);
    if (m < 0) return -1;
    if (m < 2) return 0;
  } else {
    for (;;) {
      int rc = ts_fetch(&o->ts);
      if (rc <= 0) return rc;
      m = o->ts.len < N ? o->ts.len : N;
      for (int64_t i = 0; i < m; i++) o->buf[i] = ts_tok(&o->ts, i);
      o->ts.off = o->ts.len;  /* the whole document is used (the rest beyond N is dropped) */
      if (m >= 2) break;
    }
  }
  int64_t e;
  if (o->plm.random_density > 0) {
    int64_t lo = plm_lo(m, o->plm.random_density);
    e = lo + (int64_t)rng_below(&o->rng, (uint64_t)(m - 1 - lo + 1));
  } else {
    e = m / 2;
  }
  if (e < m - o->Td) e = m - o->Td;
  if (e > o->Te) e = o->Te;
  int64_t t = m - e;
  int32_t *enc = b->enc_ids + (size_t)r * o->Te;
  int32_t *dec = b->dec_ids + (size_t)r * o->Td, *lab = b->labels + (size_t)r * o->Td;
  for (int64_t i = 0; i < e; i++) enc[i] = o->buf[i];
  dec[0] = o->sp.bos;
  for (int64_t i = 0; i < t; i++) {
    lab[i] = o->buf[e + i];
    if (i + 1 < t) dec[i + 1] = o->buf[e + i];
  }
  *ne = (int)e; *nd = (int)t;
  return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* UL2: T5 span corruption arithmetic                                                          */

void ul2_span_counts(int64_t n, double noise_density, double mean_span, int64_t *num_noise,
                     int64_t *num_spans) {
  /* random_spans_noise_mask computes in float32 (to_float(length) * noise_density, tf.round =
   * half to even); nearbyintf rounds half to even in the default rounding mode. */
  int64_t len = n < 2 ? 2 : n;
  float fn = (float)len * (float)noise_density;
  int64_t nn = (int64_t)nearbyintf(fn);
  if (nn < 1) nn = 1;
  if (nn > len - 1) nn = len - 1;
  int64_t ns = (int64_t)nearbyintf((float)nn / (float)mean_span);
  if (ns < 1) ns = 1;
  if (ns > len - nn) ns = len - nn;  /* each non-noise part must be positive */
  if (ns > nn) ns = nn;
  *num_noise = nn; *num_spans = ns;
}

int64_t ul2_suffix_len(int64_t n, double noise_density) {
  int64_t s = (int64_t)nearbyintf((float)n * (float)noise_density);
  if (s < 1) s = 1;
  if (s > n - 1) s = n - 1;
  return s;
}

static int den_has_mode(const Ul2Denoiser *d) { return d->mode_token >= 0 || d->mode_name[0]; }

void ul2_lengths(const Ul2Denoiser *d, int64_t n, int64_t *inputs_len, int64_t *targets_len) {
  int64_t mode = den_has_mode(d) ? 1 : 0;
  if (d->kind == UL2_SPAN) {
    int64_t nn, ns;
    ul2_span_counts(n, d->noise_density, d->mean_span, &nn, &ns);
    *inputs_len = mode + (n - nn) + ns + 1;
    *targets_len = nn + ns + 1;
  } else {
    int64_t s = ul2_suffix_len(n, d->noise_density), sent = d->suffix_sentinel ? 1 : 0;
    *inputs_len = mode + (n - s) + sent + 1;
    *targets_len = s + sent + 1;
  }
}

int64_t ul2_raw_length(const Ul2Denoiser *d, int Te, int Td) {
  int64_t best = -1;
  for (int64_t m = 2; m <= (int64_t)Te + Td; m++) {
    int64_t a, t;
    ul2_lengths(d, m, &a, &t);
    if (a > Te || t > Td) break;
    best = m;
  }
  if (best < 2)
    return t5g_error("UL2: a %s denoiser (r = %g) cannot fit encoder length %d and decoder length %d",
                     d->kind == UL2_SPAN ? "span" : "suffix", d->noise_density, Te, Td);
  return best;
}

/* Lazy uniform random segmentation of `items` into `segs` positive parts: choose segs-1 of the
 * items-1 gaps by selection sampling (Knuth's algorithm S), which gives every subset equal
 * probability, as T5's stateless_shuffle of cut indicators does. */
typedef struct { int64_t items, gap, need; } Segmenter;
static int64_t seg_next(Segmenter *g, Rng *rng) {
  int64_t len = 1;
  while (g->gap < g->items - 1) {
    int64_t remaining = g->items - 1 - g->gap;
    int cut = g->need > 0 && (int64_t)rng_below(rng, (uint64_t)remaining) < g->need;
    g->gap++;
    if (cut) { g->need--; return len; }
    len++;
  }
  return len;
}

int64_t ul2_noise_mask(int64_t n, double noise_density, double mean_span, Rng *rng, uint8_t *mask) {
  int64_t nn, ns;
  ul2_span_counts(n, noise_density, mean_span, &nn, &ns);
  Segmenter noise = { nn, 0, ns - 1 }, plain = { n - nn, 0, ns - 1 };
  int64_t p = 0;
  for (int64_t i = 0; i < ns; i++) {
    int64_t a = seg_next(&plain, rng);
    int64_t c = seg_next(&noise, rng);
    memset(mask + p, 0, (size_t)a); p += a;
    memset(mask + p, 1, (size_t)c); p += c;
  }
  T5G_ASSERT(p == n);
  return ns;
}

void ul2_corrupt(const int32_t *tokens, const uint8_t *mask, int64_t n, const int32_t *sentinels,
                 int n_sentinels, int32_t eos, int32_t mode, int32_t *inputs, int64_t *n_inputs,
                 int32_t *targets, int64_t *n_targets) {
  int64_t a = 0, t = 0, in_noise = 0, in_plain = 0;
  if (mode >= 0) inputs[a++] = mode;
  for (int64_t i = 0; i < n; i++) {
    int first = i == 0 || mask[i] != mask[i - 1];
    if (mask[i]) {
      /* noise: a new run gets the next sentinel in the inputs; the token goes to the targets */
      if (first) { if (n_sentinels > 0) inputs[a++] = sentinels[in_noise % n_sentinels]; in_noise++; }
      targets[t++] = tokens[i];
    } else {
      if (first) { if (n_sentinels > 0) targets[t++] = sentinels[in_plain % n_sentinels]; in_plain++; }
      inputs[a++] = tokens[i];
    }
  }
  inputs[a++] = eos;
  targets[t++] = eos;
  *n_inputs = a; *n_targets = t;
}

/* ------------------------------------------------------------------------------------------ */
/* UL2: mixtures                                                                                */

static Ul2Denoiser den_span(double mu, double r, double w) {
  Ul2Denoiser d = { .kind = UL2_SPAN, .mean_span = mu, .noise_density = r, .weight = w, .mode_token = -1 };
  return d;
}
static Ul2Denoiser den_suffix(double r, double w) {
  Ul2Denoiser d = { .kind = UL2_SUFFIX, .noise_density = r, .weight = w, .mode_token = -1 };
  return d;
}

int ul2_preset(const char *name, Ul2Denoiser *out, int max) {
  Ul2Denoiser tmp[8];
  int n = 0;
  if (!strcmp(name, "t5gemma2")) {
    tmp[n++] = den_span(3, 0.15, 1); tmp[n++] = den_span(12, 0.5, 1);
    tmp[n++] = den_span(32, 0.15, 1); tmp[n++] = den_span(32, 0.5, 1);
    tmp[n++] = den_suffix(0.75, 4);
  } else if (!strcmp(name, "ul2")) {
    tmp[n++] = den_span(3, 0.15, 1); tmp[n++] = den_span(8, 0.15, 1);
    tmp[n++] = den_suffix(0.25, 1);
    tmp[n++] = den_span(3, 0.5, 1); tmp[n++] = den_span(8, 0.5, 1);
    tmp[n++] = den_span(64, 0.15, 1); tmp[n++] = den_span(64, 0.5, 1);
  } else if (!strcmp(name, "t5")) {
    tmp[n++] = den_span(3, 0.15, 1);
  } else {
    return t5g_error("UL2: unknown mixture preset \"%s\" (expected t5gemma2, ul2 or t5)", name);
  }
  if (n > max) return t5g_error("UL2: preset \"%s\" has %d denoisers, room for %d", name, n, max);
  memcpy(out, tmp, sizeof(Ul2Denoiser) * n);
  return n;
}

static int parse_num(const char *s, double *v) {
  char *end;
  *v = strtod(s, &end);
  return end != s && *end == 0;
}

int ul2_parse(const char *spec, Ul2Denoiser *out, int max) {
  if (!spec || !*spec) return t5g_error("UL2: empty mixture specification");
  if (!strchr(spec, ':')) return ul2_preset(spec, out, max);
  char *copy = t5g_strdup(spec), *save = NULL;
  int n = 0, rc = 0;
  for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
    char orig[256];
    snprintf(orig, sizeof orig, "%s", item);
    char *f[6] = {0};
    int nf = 0;
    char *p = item;
    while (nf < 6) {
      f[nf++] = p;
      char *c = strchr(p, ':');
      if (!c) break;
      *c = 0; p = c + 1;
    }
    Ul2Denoiser d;
    memset(&d, 0, sizeof d);
    d.mode_token = -1; d.weight = 1;
    int k;  /* index of the weight field */
    if (!strcmp(f[0], "span")) {
      d.kind = UL2_SPAN;
      if (nf < 3 || nf > 5 || !parse_num(f[1], &d.mean_span) || !parse_num(f[2], &d.noise_density)) {
        rc = t5g_error("UL2: mixture item \"%s\": expected span:MU:R[:WEIGHT[:MODE]]", orig); break;
      }
      k = 3;
    } else if (!strcmp(f[0], "suffix") || !strcmp(f[0], "ssuffix")) {
      d.kind = UL2_SUFFIX;
      d.suffix_sentinel = f[0][0] == 's' && f[0][1] == 's';
      if (nf < 2 || nf > 4 || !parse_num(f[1], &d.noise_density)) {
        rc = t5g_error("UL2: mixture item \"%s\": expected suffix:R[:WEIGHT[:MODE]]", orig); break;
      }
      k = 2;
    } else {
      rc = t5g_error("UL2: mixture item \"%s\": expected it to start with span:, suffix: or ssuffix:", f[0]);
      break;
    }
    if (nf > k && !parse_num(f[k], &d.weight)) {
      rc = t5g_error("UL2: mixture item \"%s\": weight \"%s\" is not a number", orig, f[k]); break;
    }
    if (nf > k + 1) {
      if (strlen(f[k + 1]) >= sizeof d.mode_name) {
        rc = t5g_error("UL2: mode token name \"%s\" is too long", f[k + 1]); break;
      }
      strcpy(d.mode_name, f[k + 1]);
    }
    if (n >= max) { rc = t5g_error("UL2: more than %d denoisers in \"%s\"", max, spec); break; }
    out[n++] = d;
  }
  free(copy);
  return rc < 0 ? -1 : n;
}

Ul2Options obj_ul2_defaults(int Te, int Td, const Ul2Denoiser *d, int n) {
  Ul2Options u = { .Te = Te, .Td = Td, .bos = 0, .doc_eos = 1, .denoisers = d, .n_denoisers = n };
  return u;
}

Objective *obj_ul2_new(const Ul2Options *opt, const ObjSpecials *sp, DocSource src,
                       const DocSeeker *seeker, uint64_t seed) {
  if (check_specials(sp, "UL2") < 0) return NULL;
  if (!src.next) { t5g_error("UL2: document source has no next()"); return NULL; }
  if (opt->Te < 2 || opt->Td < 2) {
    t5g_error("UL2: lengths Te = %d, Td = %d (expected >= 2)", opt->Te, opt->Td);
    return NULL;
  }
  if (opt->n_denoisers < 1 || !opt->denoisers) { t5g_error("UL2: no denoisers given"); return NULL; }
  double wsum = 0;
  int64_t maxraw = 0;
  int64_t *raw = t5g_malloc(sizeof(int64_t) * opt->n_denoisers);
  for (int k = 0; k < opt->n_denoisers; k++) {
    const Ul2Denoiser *d = &opt->denoisers[k];
    const char *err = NULL;
    if (d->kind != UL2_SPAN && d->kind != UL2_SUFFIX) err = "kind must be span or suffix";
    else if (!(d->noise_density > 0 && d->noise_density < 1)) err = "noise density must be in (0, 1)";
    else if (d->kind == UL2_SPAN && !(d->mean_span >= 1)) err = "mean span length must be >= 1";
    else if (!(d->weight > 0) || !isfinite(d->weight)) err = "weight must be > 0";
    else if (d->mode_name[0] && d->mode_token < 0) err = "mode token name was not resolved to an id";
    else if ((d->kind == UL2_SPAN || d->suffix_sentinel) && sp->n_sentinels < 1)
      err = "needs sentinel ids (ObjSpecials.sentinels; default names <unused0>, <unused1>, ...)";
    if (err) {
      t5g_error("UL2: denoiser %d (%s, mu %g, r %g, weight %g%s%s): %s", k,
                d->kind == UL2_SPAN ? "span" : "suffix", d->mean_span, d->noise_density, d->weight,
                d->mode_name[0] ? ", mode " : "", d->mode_name, err);
      free(raw);
      return NULL;
    }
    raw[k] = ul2_raw_length(d, opt->Te, opt->Td);
    if (raw[k] < 0) { free(raw); return NULL; }
    if (raw[k] > maxraw) maxraw = raw[k];
    wsum += d->weight;
  }
  Objective *o = obj_new_common(OBJ_UL2, opt->Te, opt->Td, sp, seed, maxraw);
  o->n_den = opt->n_denoisers;
  o->den = t5g_malloc(sizeof(Ul2Denoiser) * o->n_den);
  memcpy(o->den, opt->denoisers, sizeof(Ul2Denoiser) * o->n_den);
  o->rawlen = raw;
  o->wsum = wsum;
  ts_init(&o->ts, src, seeker, opt->bos, opt->doc_eos, sp);
  return o;
}

static int ul2_pick(Objective *o) {
  double u = rng_uniform_d(&o->rng) * o->wsum, acc = 0;
  for (int k = 0; k < o->n_den; k++) {
    acc += o->den[k].weight;
    if (u < acc) return k;
  }
  return o->n_den - 1;
}

static int ul2_row(Objective *o, Batch *b, int r, int *ne, int *nd) {
  int k = ul2_pick(o);
  const Ul2Denoiser *d = &o->den[k];
  int64_t m = ts_take(&o->ts, o->buf, NULL, o->rawlen[k]);
  if (m < 0) return -1;
  if (m < 2) return 0;
  int nsent = o->sp.n_sentinels;
  if (d->kind == UL2_SPAN) {
    ul2_noise_mask(m, d->noise_density, d->mean_span, &o->rng, o->mask);
  } else {
    int64_t s = ul2_suffix_len(m, d->noise_density);
    memset(o->mask, 0, (size_t)(m - s));
    memset(o->mask + (m - s), 1, (size_t)s);
    if (!d->suffix_sentinel) nsent = 0;
  }
  int64_t ni, nt;
  ul2_corrupt(o->buf, o->mask, m, o->sentinels, nsent, o->sp.eos, d->mode_token, o->inp, &ni,
              o->tgt, &nt);
  T5G_ASSERT(ni <= o->Te && nt <= o->Td);
  int32_t *enc = b->enc_ids + (size_t)r * o->Te;
  int32_t *dec = b->dec_ids + (size_t)r * o->Td, *lab = b->labels + (size_t)r * o->Td;
  memcpy(enc, o->inp, sizeof(int32_t) * ni);
  dec[0] = o->sp.bos;
  for (int64_t i = 0; i < nt; i++) {
    lab[i] = o->tgt[i];
    if (i + 1 < nt) dec[i + 1] = o->tgt[i];
  }
  *ne = (int)ni; *nd = (int)nt;
  return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* SFT                                                                                          */

SftOptions obj_sft_defaults(int Te, int Td) {
  SftOptions s = { .Te = Te, .Td = Td, .encdec = Te > 0, .eos_after_eot = 1, .shuffle = 1,
                   .epochs = 0, .skip_long = 0, .rank = 0, .world_size = 1 };
  return s;
}

Objective *obj_sft_new(const SftOptions *opt, const SftData *data, SftEncoder enc,
                       const ObjSpecials *sp, uint64_t seed) {
  if (check_specials(sp, "SFT") < 0) return NULL;
  if (sp->start_of_turn < 0 || sp->end_of_turn < 0) {
    t5g_error("SFT: <start_of_turn> (%d) and <end_of_turn> (%d) ids are required",
              (int)sp->start_of_turn, (int)sp->end_of_turn);
    return NULL;
  }
  if (!data || !enc.encode) { t5g_error("SFT: no data or no text encoder"); return NULL; }
  if (opt->encdec ? (opt->Te < 1 || opt->Td < 1) : (opt->Te != 0 || opt->Td < 1)) {
    t5g_error("SFT: lengths Te = %d, Td = %d (encoder-decoder needs both >= 1; decoder-only needs "
              "Te = 0, Td >= 1)", opt->Te, opt->Td);
    return NULL;
  }
  if (opt->epochs < 0) { t5g_error("SFT: epochs = %d (expected >= 0)", opt->epochs); return NULL; }
  if (opt->world_size < 1 || opt->rank < 0 || opt->rank >= opt->world_size) {
    t5g_error("SFT: rank %d of world size %d (expected 0 <= rank < world_size)", opt->rank, opt->world_size);
    return NULL;
  }
  int64_t n = sft_count(data);
  if (n < opt->world_size) {
    t5g_error("SFT: %s has %lld examples, fewer than the %d data-parallel ranks", sft_path(data),
              (long long)n, opt->world_size);
    return NULL;
  }
  Objective *o = obj_new_common(OBJ_SFT, opt->Te, opt->Td, sp, seed, 1);
  o->sft = *opt;
  o->data = data;
  o->enc = enc;
  o->n_ex = n;
  o->per_rank = n / opt->world_size;
  o->perm = t5g_malloc(sizeof(int64_t) * n);
  o->perm_epoch = -1;
  int64_t cap = (int64_t)opt->Td + 1;
  o->sids = t5g_malloc(sizeof(int32_t) * cap);
  o->strain = t5g_malloc(cap);
  return o;
}

/* The example order of an epoch: identity, or a Fisher-Yates permutation from (seed, epoch). */
static void sft_make_perm(Objective *o) {
  if (o->perm_epoch == o->epoch) return;
  for (int64_t i = 0; i < o->n_ex; i++) o->perm[i] = i;
  if (o->sft.shuffle) {
    Rng r;
    rng_seed(&r, splitmix64(o->seed) ^ splitmix64((uint64_t)o->epoch + 0x5f7e));
    for (int64_t i = o->n_ex - 1; i > 0; i--) {
      int64_t j = (int64_t)rng_below(&r, (uint64_t)i + 1);
      int64_t t = o->perm[i]; o->perm[i] = o->perm[j]; o->perm[j] = t;
    }
  }
  o->perm_epoch = o->epoch;
}

/* Write example c into row r. 1 = written, 2 = skipped (too long with skip_long, or nothing to
 * predict). */
static int sft_place(Objective *o, const SftConv *c, Batch *b, int r, int *ne, int *nd) {
  int64_t P = c->prompt_len, A = c->n - c->prompt_len;
  if (o->sft.encdec) {
    int Te = o->Te, Td = o->Td;
    if (o->sft.skip_long && (P > Te || A > Td)) return 2;
    int32_t *enc = b->enc_ids + (size_t)r * Te;
    int32_t *dec = b->dec_ids + (size_t)r * Td, *lab = b->labels + (size_t)r * Td;
    int64_t e;
    if (P <= Te) {
      memcpy(enc, c->ids, sizeof(int32_t) * P); e = P;
    } else {  /* keep <bos> and the end of the prompt */
      enc[0] = c->ids[0];
      memcpy(enc + 1, c->ids + (P - (Te - 1)), sizeof(int32_t) * (Te - 1)); e = Te;
    }
    int64_t t = A < Td ? A : Td;
    const int32_t *ans = c->ids + P;
    dec[0] = o->sp.bos;
    for (int64_t i = 0; i < t; i++) {
      lab[i] = ans[i];
      if (i + 1 < t) dec[i + 1] = ans[i];
    }
    *ne = (int)e; *nd = (int)t;
    return 1;
  }
  int64_t cap = (int64_t)o->Td + 1;
  if (o->sft.skip_long && c->n > cap) return 2;
  int64_t keepP = P, keepA = A;
  if (c->n > cap) {
    int64_t half = P < cap / 2 ? P : cap / 2;
    keepP = cap - A > half ? cap - A : half;
    if (keepP > P) keepP = P;
    keepA = cap - keepP < A ? cap - keepP : A;
  }
  int64_t L = 0;
  if (keepP > 0) {  /* <bos> and the last keepP - 1 prompt tokens */
    o->sids[L] = c->ids[0]; o->strain[L] = c->train[0]; L++;
    for (int64_t i = P - (keepP - 1); i < P; i++) { o->sids[L] = c->ids[i]; o->strain[L] = c->train[i]; L++; }
  }
  for (int64_t i = P; i < P + keepA; i++) { o->sids[L] = c->ids[i]; o->strain[L] = c->train[i]; L++; }
  if (L < 2) return 2;
  int32_t *dec = b->dec_ids + (size_t)r * o->Td, *lab = b->labels + (size_t)r * o->Td;
  for (int64_t t = 0; t + 1 < L; t++) {
    dec[t] = o->sids[t];
    lab[t] = o->strain[t + 1] ? o->sids[t + 1] : -100;
  }
  *ne = 0; *nd = (int)(L - 1);
  return 1;
}

static int sft_row(Objective *o, Batch *b, int r, int *ne, int *nd) {
  for (int64_t skipped = 0;;) {
    if (o->idx >= o->per_rank) { o->epoch++; o->idx = 0; }
    if (o->sft.epochs > 0 && o->epoch >= o->sft.epochs) return 0;
    sft_make_perm(o);
    int64_t ex = o->perm[o->sft.rank + o->idx * o->sft.world_size];
    o->idx++;
    if (sft_render(o->data, ex, o->enc, &o->sp, o->sft.eos_after_eot, &o->conv) < 0) return -1;
    int rc = sft_place(o, &o->conv, b, r, ne, nd);
    if (rc == 1) return 1;
    if (++skipped >= o->per_rank)
      return t5g_error("SFT: %s: %lld examples in a row were skipped as too long for Te = %d, "
                       "Td = %d (skip_long = 0 truncates instead)", sft_path(o->data),
                       (long long)skipped, o->Te, o->Td);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Batch assembly                                                                               */

void obj_batch_alloc(const Objective *o, Batch *b, int B) {
  batch_alloc(b, B, o->Te, o->Td, o->packed);
}

static void fill_positions(int32_t *pos, uint8_t *mask, const int32_t *seg, int n, int T) {
  int32_t p = 0;
  for (int t = 0; t < T; t++) {
    if (t < n) {
      if (seg && t > 0 && seg[t] != seg[t - 1]) p = 0;
      pos[t] = p++; mask[t] = 1;
    } else {
      pos[t] = 0; mask[t] = 0;
    }
  }
}

int obj_next_batch(Objective *o, Batch *b) {
  if (b->Te != o->Te || b->Td != o->Td || b->B < 1)
    return t5g_error("objective: batch has B = %d, Te = %d, Td = %d; the objective builds rows of "
                     "Te = %d, Td = %d (allocate with obj_batch_alloc)", b->B, b->Te, b->Td, o->Te, o->Td);
  if (o->packed && !b->dec_seg)
    return t5g_error("objective: packed rows need segment arrays (allocate with obj_batch_alloc)");
  int any = 0, done = 0;
  for (int r = 0; r < b->B; r++) {
    size_t re = (size_t)r * o->Te, rd = (size_t)r * o->Td;
    for (int t = 0; t < o->Te; t++) b->enc_ids[re + t] = o->sp.pad;
    if (b->enc_seg) memset(b->enc_seg + re, 0, sizeof(int32_t) * o->Te);
    for (int t = 0; t < o->Td; t++) { b->dec_ids[rd + t] = o->sp.pad; b->labels[rd + t] = -100; }
    if (b->dec_seg) memset(b->dec_seg + rd, 0, sizeof(int32_t) * o->Td);
    int ne = 0, nd = 0, rc = 0;
    if (!done) {
      switch (o->kind) {
        case OBJ_CAUSAL: rc = causal_row(o, b, r, &ne, &nd); break;
        case OBJ_PREFIXLM: rc = prefixlm_row(o, b, r, &ne, &nd); break;
        case OBJ_UL2: rc = ul2_row(o, b, r, &ne, &nd); break;
        case OBJ_SFT: rc = sft_row(o, b, r, &ne, &nd); break;
      }
      if (rc < 0) return -1;
      if (rc == 0) { done = 1; ne = nd = 0; }
      else { any = 1; o->rows++; }
    }
    if (o->Te > 0) {
      if (b->enc_seg) for (int t = 0; t < ne; t++) b->enc_seg[re + t] = 1;
      fill_positions(b->enc_pos + re, b->enc_mask + re, NULL, ne, o->Te);
    }
    if (b->dec_seg && !o->packed) for (int t = 0; t < nd; t++) b->dec_seg[rd + t] = 1;
    fill_positions(b->dec_pos + rd, b->dec_mask + rd, o->packed ? b->dec_seg + rd : NULL, nd, o->Td);
  }
  batch_count_targets(b);
  return any;
}

/* ------------------------------------------------------------------------------------------ */
/* Resume state                                                                                 */

int obj_save(const Objective *o, ObjState *st) {
  memset(st, 0, sizeof *st);
  st->v[0] = OBJ_MAGIC + o->kind;
  st->v[1] = (int64_t)o->rng.s;
  st->v[2] = o->rows;
  if (o->kind == OBJ_SFT) {
    st->v[3] = o->epoch; st->v[4] = o->idx; st->v[5] = o->n_ex;
    st->v[6] = o->sft.rank; st->v[7] = o->sft.world_size;
    return 0;
  }
  const TokStream *s = &o->ts;
  st->v[3] = s->have; st->v[4] = s->off; st->v[5] = s->doc_n; st->v[6] = s->ndocs;
  st->v[7] = s->exhausted;
  if (s->have) {
    if (!s->has_sk)
      return t5g_error("objective: cannot save the resume state in the middle of a document "
                       "without a DocSeeker (the source's tell/seek)");
    memcpy(st->v + 8, s->pos, sizeof s->pos);
  } else if (s->has_sk && !s->exhausted) {
    if (s->sk.tell(s->sk.ctx, st->v + 8) < 0) return -1;
  }
  return 0;
}

int obj_restore(Objective *o, const ObjState *st) {
  if (st->v[0] != OBJ_MAGIC + o->kind)
    return t5g_error("objective: resume state is for objective kind %lld, this builder is kind %d",
                     (long long)(st->v[0] - OBJ_MAGIC), (int)o->kind);
  o->rng.s = (uint64_t)st->v[1];
  o->rows = st->v[2];
  if (o->kind == OBJ_SFT) {
    if (st->v[5] != o->n_ex)
      return t5g_error("SFT: resume state was saved with %lld examples, %s has %lld",
                       (long long)st->v[5], sft_path(o->data), (long long)o->n_ex);
    if (st->v[7] != o->sft.world_size)
      return t5g_error("SFT: resume state was saved by rank %lld of %lld ranks; this builder is rank "
                       "%d of %d (resuming SFT at another world size is not supported)",
                       (long long)st->v[6], (long long)st->v[7], o->sft.rank, o->sft.world_size);
    if (st->v[3] < 0 || st->v[4] < 0 || st->v[4] > o->per_rank)
      return t5g_error("SFT: resume state has epoch %lld, index %lld (expected index in [0, %lld])",
                       (long long)st->v[3], (long long)st->v[4], (long long)o->per_rank);
    o->epoch = st->v[3]; o->idx = st->v[4]; o->perm_epoch = -1;
    return 0;
  }
  TokStream *s = &o->ts;
  s->have = 0; s->exhausted = (int)st->v[7]; s->ndocs = st->v[6];
  s->doc = NULL; s->doc_n = 0; s->len = 0; s->off = 0;
  if (s->exhausted) return 0;
  if (!s->has_sk) {
    if (st->v[3])
      return t5g_error("objective: the resume state is inside a document; restoring it needs a "
                       "DocSeeker (the source's tell/seek)");
    return 0;  /* nothing was read: the caller positions the source */
  }
  if (s->sk.seek(s->sk.ctx, st->v + 8) < 0) return -1;
  if (st->v[3]) {
    const int32_t *ids = NULL;
    int64_t n = 0;
    int r = s->src.next(s->src.ctx, &ids, &n);
    if (r < 0) return -1;
    if (r == 0 || n != st->v[5])
      return t5g_error("objective: resume: the source at the saved position returned %s%lld tokens; "
                       "the state expects a document of %lld tokens (different data or shard order?)",
                       r == 0 ? "no document, " : "a document of ", r == 0 ? 0LL : (long long)n,
                       (long long)st->v[5]);
    s->doc = ids; s->doc_n = n; s->len = n + s->bos + s->eos;
    if (st->v[4] < 0 || st->v[4] > s->len)
      return t5g_error("objective: resume: offset %lld outside the document of %lld tokens",
                       (long long)st->v[4], (long long)s->len);
    s->off = st->v[4]; s->have = 1;
    memcpy(s->pos, st->v + 8, sizeof s->pos);
  }
  return 0;
}
