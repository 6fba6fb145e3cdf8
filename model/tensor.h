/* tensor.h: tensors, the activation arena, and the autograd tape.
 *
 * Design (spec: docs/engine.md):
 *  - A Tensor is f32, contiguous, row-major, up to 4 dimensions, with a name. `data` holds the
 *    values; `grad` (same shape) holds dLoss/dTensor, or NULL.
 *  - Parameters are views into one flat buffer (ParamStore, params.h); their `grad` points into a
 *    twin flat gradient buffer, so optimizer, allreduce and checkpoint I/O are single loops.
 *  - Activations and their gradients come from a per-step Arena: a bump allocator reset at the
 *    start of every step; in steady state no malloc happens per op.
 *  - The tape (Graph) records, for each op run with gradients enabled, a backward function and a
 *    context (its inputs, outputs and whatever it saved, all arena-allocated).
 *    graph_backward() seeds d(loss)=1 and replays the tape in reverse. Backward functions
 *    ACCUMULATE (+=) into input gradients, so parameter gradients accumulate over micro-batches
 *    until the caller zeroes the flat gradient buffer.
 *  - requires_grad: parameters that train have it set; frozen parameters do not. An op's output
 *    requires grad iff some input does. An op records itself on the tape only when gradients are
 *    enabled (g->grad_enabled) and its output requires grad; backward skips every gradient that
 *    no one needs (e.g. no dW for a frozen weight, no dX for the token ids).
 *  - Activation gradients are allocated lazily, zero-filled, from the arena the first time a
 *    backward function needs them (tensor_grad()).
 *  - No-grad mode (g->grad_enabled = 0) records and saves nothing: for evaluation, generation and
 *    a distillation teacher.
 */
#ifndef T5G_TENSOR_H
#define T5G_TENSOR_H

#include <stdint.h>
#include <stddef.h>
#include "model/util.h"

#define T5G_MAX_DIMS 4

typedef struct Tensor {
  float *data;
  float *grad;              /* NULL until needed (activations) or always set (trainable params) */
  int ndim;
  int64_t shape[T5G_MAX_DIMS];
  int64_t n;                /* number of elements */
  int requires_grad;
  const char *name;         /* static or arena string; for messages and debugging */
} Tensor;

/* ---- Arena: bump allocator, 64-byte aligned blocks. -------------------------------------- */
typedef struct ArenaChunk ArenaChunk;
typedef struct Arena {
  ArenaChunk *chunks;       /* list of chunks; the first is the current one */
  size_t chunk_size;        /* default size of a new chunk */
  size_t used;              /* bytes handed out since the last reset */
  size_t peak;              /* maximum of `used` ever seen */
  size_t capacity;          /* bytes held in all chunks */
  ArenaChunk *spare;        /* chunks given back by arena_release, reused before any malloc */
} Arena;

void   arena_init(Arena *a, size_t chunk_size);
void  *arena_alloc(Arena *a, size_t bytes);          /* 64-byte aligned, uninitialised */
void  *arena_calloc(Arena *a, size_t bytes);         /* zero-filled */
/* Forget everything handed out. When the previous step spilled into several chunks, they are
 * merged into one chunk big enough for the peak, so the next step allocates nothing. */
void   arena_reset(Arena *a);
void   arena_free(Arena *a);
/* Stack discipline: everything allocated after arena_mark() is given back by arena_release()
 * (activation recomputation allocates a layer's activations, uses them, and releases them). */
typedef struct ArenaMark { ArenaChunk *chunk; size_t off, used; } ArenaMark;
ArenaMark arena_mark(Arena *a);
void   arena_release(Arena *a, ArenaMark m);
char  *arena_strdup(Arena *a, const char *s);

/* ---- Graph: the tape plus the arena, the grad mode, and per-op timing. -------------------- */
typedef void (*BackwardFn)(void *ctx);

typedef struct TapeNode {
  BackwardFn backward;
  void *ctx;
  int kind;                 /* OpKind, for the profile */
} TapeNode;

/* Kinds of work, for the time split reported by bench and train (`profile`). */
typedef enum {
  OPK_MATMUL = 0, OPK_ATTENTION, OPK_NORM, OPK_ELEMENTWISE, OPK_LOSS, OPK_EMBED,
  OPK_OPTIMIZER, OPK_DATA, OPK_COMM, OPK_COUNT
} OpKind;
extern const char *const op_kind_names[OPK_COUNT];

typedef struct Graph {
  Arena *arena;
  TapeNode *nodes;
  int n_nodes, cap_nodes;
  int grad_enabled;         /* 1: record ops; 0: no-grad mode */
  int profile;              /* 1: accumulate seconds per OpKind into prof_sec and prof_cpu */
  double prof_sec[OPK_COUNT];   /* wall seconds */
  double prof_cpu[OPK_COUNT];   /* process CPU seconds (all threads): prof_cpu / prof_sec = cores busy */
  uint64_t dropout_seed;    /* base seed for dropout masks; op_dropout mixes in a per-call counter */
  uint64_t dropout_calls;
  /* Gradient-ready notifications (overlapping the gradient allreduce with backward, issue 9):
   * the model marks, at the start of each layer, the flat-buffer range [lo, hi) of that layer's
   * parameters (graph_mark_params); during graph_backward, once every node recorded after a
   * mark has run, that range's gradients are final and bwd_hook(ud, lo, hi) is called. */
  struct GraphMark { int node; int64_t lo, hi; } *marks;
  int n_marks, cap_marks;
  void (*bwd_hook)(void *ud, int64_t lo, int64_t hi);
  void *bwd_hook_ud;
} Graph;

void graph_init(Graph *g, Arena *arena);
/* Clears the tape and resets the arena (all activations of the previous step are gone). */
void graph_reset(Graph *g);
void graph_free(Graph *g);
/* Record a node. ctx must live in the arena (or outlive the backward pass). */
void graph_record(Graph *g, BackwardFn fn, void *ctx, OpKind kind);
/* Record that the nodes recorded from now on (until the next mark) are the only ones that write
 * the gradients of the flat parameter range [lo, hi). No-op in no-grad mode. */
void graph_mark_params(Graph *g, int64_t lo, int64_t hi);
/* Seed loss->grad with 1 (loss must be a scalar, n == 1) and run the tape backwards.
 * Afterwards the tape is cleared (a second backward needs a new forward). */
void graph_backward(Graph *g, Tensor *loss);

/* ---- Tensor construction. ---------------------------------------------------------------- */
/* New activation tensor in the arena, uninitialised data, grad NULL, requires_grad 0. */
Tensor *tensor_new(Graph *g, const char *name, int ndim, const int64_t *shape);
Tensor *tensor_new2(Graph *g, const char *name, int64_t d0, int64_t d1);
Tensor *tensor_new3(Graph *g, const char *name, int64_t d0, int64_t d1, int64_t d2);
Tensor *tensor_new4(Graph *g, const char *name, int64_t d0, int64_t d1, int64_t d2, int64_t d3);
Tensor *tensor_zeros(Graph *g, const char *name, int ndim, const int64_t *shape);
/* Wrap caller-owned memory (not copied). */
Tensor *tensor_wrap(Graph *g, const char *name, float *data, int ndim, const int64_t *shape);
/* A view of t with another shape and the same element count: shares data AND grad storage, so
 * gradients written through the view land in t. If t's grad is not yet allocated, it is
 * allocated (zeroed) now when t requires grad, so both see the same buffer. */
Tensor *tensor_view(Graph *g, Tensor *t, int ndim, const int64_t *shape);
/* The gradient buffer of t, allocated from the arena and zero-filled on first use. */
float  *tensor_grad(Graph *g, Tensor *t);
/* Whether an op producing from these inputs must track gradients. */
static inline int tensor_needs_grad(const Graph *g, const Tensor *t) { return g->grad_enabled && t && t->requires_grad; }

/* Shape helpers. */
void tensor_set_shape(Tensor *t, int ndim, const int64_t *shape);
int  tensor_same_shape(const Tensor *a, const Tensor *b);
const char *tensor_shape_str(const Tensor *t, char *buf, size_t n);  /* "[2, 16, 64]" */

/* Per-op profiling: wrap an op's forward or backward body. */
#define OP_PROFILE_BEGIN(g) double _t5g_t0 = (g)->profile ? t5g_now() : 0, _t5g_c0 = (g)->profile ? t5g_cpu_now() : 0
#define OP_PROFILE_END(g, kind) do { if ((g)->profile) { (g)->prof_sec[kind] += t5g_now() - _t5g_t0; \
                                                       (g)->prof_cpu[kind] += t5g_cpu_now() - _t5g_c0; } } while (0)

#endif
