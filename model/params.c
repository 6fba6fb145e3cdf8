#include "model/params.h"
#include <stdlib.h>
#include <string.h>

void params_init(ParamStore *ps) { memset(ps, 0, sizeof *ps); }

int params_add(ParamStore *ps, const char *name, int ndim, const int64_t *shape, ParamGroup group) {
  T5G_ASSERT(!ps->finalized);
  if (params_find(ps, name) >= 0) t5g_fatal("internal error: parameter %s registered twice", name);
  if (ps->n == ps->cap) { ps->cap = ps->cap ? ps->cap * 2 : 256; ps->e = t5g_realloc(ps->e, sizeof(ParamEntry) * ps->cap); }
  ParamEntry *e = &ps->e[ps->n];
  memset(e, 0, sizeof *e);
  e->name = t5g_strdup(name);
  tensor_set_shape(&e->t, ndim, shape);
  e->t.name = e->name;
  e->t.requires_grad = 1;
  e->group = group;
  e->offset = ps->n_total;
  ps->n_total += (e->t.n + 15) & ~(int64_t)15;
  return ps->n++;
}

void params_finalize(ParamStore *ps) {
  T5G_ASSERT(!ps->finalized);
  size_t bytes = (size_t)ps->n_total * sizeof(float);
  ps->data = t5g_alloc_aligned(bytes);
  ps->grad = t5g_alloc_aligned(bytes);
  memset(ps->data, 0, bytes);
  memset(ps->grad, 0, bytes);
  for (int i = 0; i < ps->n; i++) {
    ps->e[i].t.data = ps->data + ps->e[i].offset;
    ps->e[i].t.grad = ps->grad + ps->e[i].offset;
  }
  ps->finalized = 1;
}

void params_free(ParamStore *ps) {
  for (int i = 0; i < ps->n; i++) free(ps->e[i].name);
  free(ps->e); free(ps->data); free(ps->grad);
  memset(ps, 0, sizeof *ps);
}

int params_find(const ParamStore *ps, const char *name) {
  for (int i = 0; i < ps->n; i++) if (strcmp(ps->e[i].name, name) == 0) return i;
  return -1;
}

Tensor *params_get(ParamStore *ps, const char *name) {
  int i = params_find(ps, name);
  return i < 0 ? NULL : &ps->e[i].t;
}

void params_set_frozen(ParamStore *ps, int i, int frozen) {
  ps->e[i].frozen = frozen;
  ps->e[i].t.requires_grad = !frozen;
}

void params_zero_grad(ParamStore *ps) {
  if (ps->grad) memset(ps->grad, 0, (size_t)ps->n_total * sizeof(float));
}

int64_t params_count(const ParamStore *ps, const char *substr) {
  int64_t n = 0;
  for (int i = 0; i < ps->n; i++) if (!substr || strstr(ps->e[i].name, substr)) n += ps->e[i].t.n;
  return n;
}

int64_t params_count_trainable(const ParamStore *ps) {
  int64_t n = 0;
  for (int i = 0; i < ps->n; i++) if (!ps->e[i].frozen) n += ps->e[i].t.n;
  return n;
}
