/* tensor.c: arena, tape and tensor construction (see tensor.h). */
#include "model/tensor.h"
#include <stdlib.h>
#include <string.h>

const char *const op_kind_names[OPK_COUNT] = {
  "matmul", "attention", "norm", "elementwise", "loss", "embedding", "optimizer", "data", "comm"
};

struct ArenaChunk { ArenaChunk *next; size_t size, off; char *mem; };

static ArenaChunk *chunk_new(size_t size) {
  ArenaChunk *c = t5g_malloc(sizeof *c);
  c->next = NULL; c->size = size; c->off = 0;
  c->mem = t5g_alloc_aligned(size);
  /* Touch every page now, on all threads: a new chunk's pages are otherwise faulted in one by one
   * by whichever op first writes them (tensor_grad's memset, on the main thread): perf showed
   * 0.9 s of serial page faults for S-S's 2 GB chunk in the step after arena_reset merged them. */
  const size_t page = 4096;
  #pragma omp parallel for schedule(static) if (size >= ((size_t)16 << 20))
  for (size_t o = 0; o < size; o += page) c->mem[o] = 0;
  return c;
}

void arena_init(Arena *a, size_t chunk_size) {
  memset(a, 0, sizeof *a);
  a->chunk_size = chunk_size ? chunk_size : ((size_t)64 << 20);
}

void *arena_alloc(Arena *a, size_t bytes) {
  size_t need = (bytes + 63) & ~(size_t)63;
  if (need == 0) need = 64;
  ArenaChunk *c = a->chunks;
  if (!c || c->off + need > c->size) {
    size_t sz = need > a->chunk_size ? need : a->chunk_size;
    ArenaChunk *n = NULL, **pp = &a->spare;
    for (; *pp; pp = &(*pp)->next) if ((*pp)->size >= need) { n = *pp; *pp = n->next; n->off = 0; sz = n->size; break; }
    if (!n) n = chunk_new(sz);
    n->next = c;
    a->chunks = n;
    a->capacity += sz;
    c = n;
  }
  void *p = c->mem + c->off;
  c->off += need;
  a->used += need;
  if (a->used > a->peak) a->peak = a->used;
  return p;
}

void *arena_calloc(Arena *a, size_t bytes) {
  void *p = arena_alloc(a, bytes);
  memset(p, 0, bytes);
  return p;
}

static void free_chunks(ArenaChunk *c) {
  while (c) { ArenaChunk *n = c->next; free(c->mem); free(c); c = n; }
}

void arena_reset(Arena *a) {
  /* spare chunks stay for the next step's recomputation */
  if (a->chunks && a->chunks->next) {
    /* Several chunks: replace them by one that holds the peak, so the next step has no malloc. */
    size_t want = a->peak > a->chunk_size ? a->peak : a->chunk_size;
    ArenaChunk *c = a->chunks;
    while (c) { ArenaChunk *n = c->next; free(c->mem); free(c); c = n; }
    a->chunks = chunk_new(want);
    a->capacity = want;
  }
  if (a->chunks) a->chunks->off = 0;
  a->used = 0;
}

void arena_free(Arena *a) {
  free_chunks(a->chunks);
  free_chunks(a->spare);
  a->chunks = a->spare = NULL; a->used = a->capacity = 0;
}

ArenaMark arena_mark(Arena *a) {
  ArenaMark m = {a->chunks, a->chunks ? a->chunks->off : 0, a->used};
  return m;
}

void arena_release(Arena *a, ArenaMark m) {
  /* chunks created after the mark are freed (the peak is remembered, so arena_reset later
   * merges into one chunk large enough) */
  while (a->chunks && a->chunks != m.chunk) {
    ArenaChunk *c = a->chunks;
    a->chunks = c->next;
    a->capacity -= c->size;
    c->next = a->spare;
    a->spare = c;
  }
  if (a->chunks) a->chunks->off = m.off;
  a->used = m.used;
}

char *arena_strdup(Arena *a, const char *s) {
  size_t n = strlen(s) + 1;
  char *d = arena_alloc(a, n);
  memcpy(d, s, n);
  return d;
}

void graph_init(Graph *g, Arena *arena) {
  memset(g, 0, sizeof *g);
  g->arena = arena;
  g->grad_enabled = 1;
  g->cap_nodes = 1024;
  g->nodes = t5g_malloc(sizeof(TapeNode) * g->cap_nodes);
}

void graph_reset(Graph *g) {
  g->n_nodes = 0;
  g->n_marks = 0;
  arena_reset(g->arena);
}

void graph_free(Graph *g) {
  free(g->nodes); g->nodes = NULL; g->n_nodes = g->cap_nodes = 0;
  free(g->marks); g->marks = NULL; g->n_marks = g->cap_marks = 0;
}

void graph_mark_params(Graph *g, int64_t lo, int64_t hi) {
  if (!g->grad_enabled) return;
  if (g->n_marks == g->cap_marks) {
    g->cap_marks = g->cap_marks ? 2 * g->cap_marks : 64;
    g->marks = t5g_realloc(g->marks, sizeof *g->marks * g->cap_marks);
  }
  g->marks[g->n_marks++] = (struct GraphMark){g->n_nodes, lo, hi};
}

void graph_record(Graph *g, BackwardFn fn, void *ctx, OpKind kind) {
  if (g->n_nodes == g->cap_nodes) {
    g->cap_nodes *= 2;
    g->nodes = t5g_realloc(g->nodes, sizeof(TapeNode) * g->cap_nodes);
  }
  g->nodes[g->n_nodes++] = (TapeNode){fn, ctx, kind};
}

void graph_backward(Graph *g, Tensor *loss) {
  T5G_ASSERT(loss->n == 1);
  if (!loss->requires_grad) { g->n_nodes = 0; return; }
  float *dl = tensor_grad(g, loss);
  dl[0] += 1.0f;
  int mk = g->n_marks - 1;
  for (int i = g->n_nodes - 1; i >= 0; i--) {
    TapeNode *nd = &g->nodes[i];
    double t0 = g->profile ? t5g_now() : 0, c0 = g->profile ? t5g_cpu_now() : 0;
    nd->backward(nd->ctx);
    if (g->profile) { g->prof_sec[nd->kind] += t5g_now() - t0; g->prof_cpu[nd->kind] += t5g_cpu_now() - c0; }
    /* every node of the marked span has run: its parameters' gradients are final */
    for (; mk >= 0 && g->marks[mk].node >= i; mk--)
      if (g->bwd_hook) g->bwd_hook(g->bwd_hook_ud, g->marks[mk].lo, g->marks[mk].hi);
  }
  for (; mk >= 0; mk--) if (g->bwd_hook) g->bwd_hook(g->bwd_hook_ud, g->marks[mk].lo, g->marks[mk].hi);
  g->n_nodes = 0;
  g->n_marks = 0;
}

void tensor_set_shape(Tensor *t, int ndim, const int64_t *shape) {
  T5G_ASSERT(ndim >= 1 && ndim <= T5G_MAX_DIMS);
  t->ndim = ndim;
  t->n = 1;
  for (int i = 0; i < T5G_MAX_DIMS; i++) {
    t->shape[i] = i < ndim ? shape[i] : 1;
    if (i < ndim) { T5G_ASSERT(shape[i] >= 0); t->n *= shape[i]; }
  }
}

Tensor *tensor_new(Graph *g, const char *name, int ndim, const int64_t *shape) {
  Tensor *t = arena_alloc(g->arena, sizeof *t);
  memset(t, 0, sizeof *t);
  tensor_set_shape(t, ndim, shape);
  t->name = name;
  t->data = arena_alloc(g->arena, (size_t)t->n * sizeof(float));
  return t;
}
Tensor *tensor_new2(Graph *g, const char *name, int64_t d0, int64_t d1) { int64_t s[2] = {d0, d1}; return tensor_new(g, name, 2, s); }
Tensor *tensor_new3(Graph *g, const char *name, int64_t d0, int64_t d1, int64_t d2) { int64_t s[3] = {d0, d1, d2}; return tensor_new(g, name, 3, s); }
Tensor *tensor_new4(Graph *g, const char *name, int64_t d0, int64_t d1, int64_t d2, int64_t d3) { int64_t s[4] = {d0, d1, d2, d3}; return tensor_new(g, name, 4, s); }

Tensor *tensor_zeros(Graph *g, const char *name, int ndim, const int64_t *shape) {
  Tensor *t = tensor_new(g, name, ndim, shape);
  memset(t->data, 0, (size_t)t->n * sizeof(float));
  return t;
}

Tensor *tensor_wrap(Graph *g, const char *name, float *data, int ndim, const int64_t *shape) {
  Tensor *t = arena_alloc(g->arena, sizeof *t);
  memset(t, 0, sizeof *t);
  tensor_set_shape(t, ndim, shape);
  t->name = name;
  t->data = data;
  return t;
}

float *tensor_grad(Graph *g, Tensor *t) {
  if (!t->grad) t->grad = arena_calloc(g->arena, (size_t)t->n * sizeof(float));
  return t->grad;
}

Tensor *tensor_view(Graph *g, Tensor *t, int ndim, const int64_t *shape) {
  Tensor *v = arena_alloc(g->arena, sizeof *v);
  *v = *t;
  tensor_set_shape(v, ndim, shape);
  T5G_ASSERT(v->n == t->n);
  if (t->requires_grad && g->grad_enabled && !t->grad) t->grad = arena_calloc(g->arena, (size_t)t->n * sizeof(float));
  v->grad = t->grad;
  return v;
}

int tensor_same_shape(const Tensor *a, const Tensor *b) {
  if (a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++) if (a->shape[i] != b->shape[i]) return 0;
  return 1;
}

const char *tensor_shape_str(const Tensor *t, char *buf, size_t n) {
  size_t o = 0;
  o += snprintf(buf + o, n - o, "[");
  for (int i = 0; i < t->ndim && o < n; i++) o += snprintf(buf + o, n - o, i ? ", %lld" : "%lld", (long long)t->shape[i]);
  if (o < n) snprintf(buf + o, n - o, "]");
  return buf;
}
