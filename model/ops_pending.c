/* ops_pending.c: TEMPORARY build scaffolding while the op files are written in parallel.
 * Weak definitions, overridden by the real ops; deleted once every op has landed. */
#include "model/ops.h"
#define PENDING(ret, name, args) ret name args __attribute__((weak)); ret name args { t5g_fatal("%s is not implemented yet", #name); }
PENDING(Tensor *, op_linear, (Graph *g, Tensor *x, Tensor *w))
PENDING(Tensor *, op_matmul, (Graph *g, Tensor *a, int ta, Tensor *b, int tb))
PENDING(Tensor *, op_embedding, (Graph *g, const int32_t *ids, int ndim, const int64_t *shape, Tensor *E, float scale))
PENDING(Tensor *, op_rmsnorm, (Graph *g, Tensor *x, Tensor *w, float eps))
PENDING(Tensor *, op_add, (Graph *g, Tensor *a, Tensor *b))
PENDING(Tensor *, op_softcap, (Graph *g, Tensor *x, float cap))
PENDING(Tensor *, op_rope, (Graph *g, Tensor *x, const int32_t *pos, float theta))
PENDING(Tensor *, op_geglu, (Graph *g, Tensor *gate, Tensor *up))
PENDING(Tensor *, op_dropout, (Graph *g, Tensor *x, float p))
PENDING(Tensor *, op_attention, (Graph *g, Tensor *q, Tensor *k, Tensor *v, const AttnMask *mask, float scale, float softcap))
PENDING(Tensor *, op_softcap_ce, (Graph *g, Tensor *h, Tensor *E, const int32_t *labels, float cap, float normalizer, float *row_nll, LossStats *stats))
PENDING(Tensor *, op_softcap_ce_distill, (Graph *g, Tensor *h, Tensor *E, const int32_t *labels, const int32_t *t_ids, const float *t_probs, int k, float cap, float temperature, float alpha, float normalizer, LossStats *stats))
PENDING(void, logits_topk, (const float *h, int64_t N, const Tensor *E, float cap, float temperature, int k, int32_t *ids_out, float *probs_out))
PENDING(void, logits_full, (const float *h, int64_t N, const Tensor *E, float cap, float *out))
