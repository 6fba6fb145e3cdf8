/* params.h: all parameters of a model in one flat f32 buffer, with named views.
 *
 * Names are the Hugging Face tensor names (spec 1.7, 2.7), e.g. "model.layers.3.mlp.up_proj.weight"
 * or "model.decoder.layers.0.cross_attn.k_proj.weight"; shapes are PyTorch [out, in].
 * `data` and `grad` are twin buffers of n_total floats (64-byte aligned, zero-initialised);
 * entry i occupies [offset, offset + n). The optimizer, gradient allreduce and checkpoint I/O
 * are single loops over these buffers. Entries are padded to 16 floats so every tensor starts
 * 64-byte aligned.
 */
#ifndef T5G_PARAMS_H
#define T5G_PARAMS_H

#include "model/tensor.h"

/* Parameter groups (optimizer, issue 5): weight decay applies only to PG_MATRIX by default. */
typedef enum { PG_MATRIX = 0, PG_NORM = 1, PG_EMBED = 2 } ParamGroup;

typedef struct ParamEntry {
  char *name;
  Tensor t;                 /* view: t.data = data + offset, t.grad = grad + offset */
  int64_t offset;           /* in floats */
  ParamGroup group;
  int frozen;               /* 1: no gradient is computed (t.requires_grad = 0) */
  int cross_attn;           /* 1: belongs to a decoder cross-attention block (warm-up set) */
} ParamEntry;

typedef struct ParamStore {
  ParamEntry *e;
  int n, cap;
  int64_t n_total;          /* floats, including alignment padding */
  float *data, *grad;
  int finalized;
} ParamStore;

void params_init(ParamStore *ps);
/* Register a tensor (before params_finalize). Returns its index. Duplicate names abort. */
int  params_add(ParamStore *ps, const char *name, int ndim, const int64_t *shape, ParamGroup group);
/* Allocate data and grad (zeroed) and point every entry's view into them. */
void params_finalize(ParamStore *ps);
void params_free(ParamStore *ps);
/* Lookup by exact name: the entry index, or -1. */
int  params_find(const ParamStore *ps, const char *name);
Tensor *params_get(ParamStore *ps, const char *name);   /* NULL when absent */
/* Freeze or unfreeze one entry (sets t.requires_grad accordingly). */
void params_set_frozen(ParamStore *ps, int i, int frozen);
void params_zero_grad(ParamStore *ps);
/* Number of real (unpadded) parameters, optionally only those whose name contains `substr`. */
int64_t params_count(const ParamStore *ps, const char *substr);
int64_t params_count_trainable(const ParamStore *ps);

#endif
