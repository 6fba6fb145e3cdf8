/* adamw.h: AdamW over the flat parameter buffer of a ParamStore, and global gradient clipping.
 *
 * Math (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, Alg. 2, with
 * Adam's bias correction from Kingma & Ba 2015, Alg. 1), in the form torch.optim.AdamW uses
 * (the decay is scaled by the learning rate, i.e. lambda_t = lr_t * weight_decay):
 *     t     = entry_step[e] + 1                  (per-entry step, see "Frozen entries" below)
 *     p    <- p * (1 - lr * wd_e)                (decoupled decay; wd_e = 0 for undecayed groups)
 *     m    <- beta1 * m + (1 - beta1) * g
 *     v    <- beta2 * v + (1 - beta2) * g^2
 *     p    <- p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * All state is f32; the bias-correction factors are computed in double per entry and step.
 *
 * Parameter groups (params.h, spec 4.4 "weight decay"): PG_MATRIX entries are decayed; PG_EMBED
 * entries are decayed only when cfg.decay_embed is set; PG_NORM entries (RMSNorm gains) are never
 * decayed.
 *
 * Frozen entries (ParamEntry.frozen, e.g. everything but cross-attention during the 9B-2B
 * warm-up, spec 3.1): skipped entirely - parameter, m, v and the entry's step counter are left
 * untouched, and their gradient is excluded from the clipping norm (as torch skips parameters
 * whose .grad is None). Each entry keeps its own step counter entry_step[e] = number of updates
 * it has received, so an entry unfrozen after K steps starts with t = 1 and gets the full bias
 * correction on its first update (m and v are still zero then), exactly as torch's per-parameter
 * state['step'] does. With a global counter instead (t = K + 1 at the first update, so both
 * corrections ~ 1), the first updates would be (1 - beta1) / sqrt(1 - beta2) * sign(g) instead
 * of sign(g): 3.2x too large with beta2 = 0.999, 0.45x with 0.95, and the error decays only
 * over ~1 / (1 - beta2) steps - the uncorrected-Adam start-up that bias correction exists to fix.
 * Re-freezing an entry keeps its m, v and counter; it resumes where it stopped.
 *
 * Contract with the loss (gradient accumulation): the objective divides its summed token losses
 * by a normaliser = the total number of target tokens of the whole accumulated batch (all
 * micro-batches, and under data parallelism all ranks), and backward ACCUMULATES (+=) into
 * ps->grad over the micro-batches (tensor.h). When adamw_step runs, ps->grad therefore holds the
 * gradient of the mean token loss of the accumulated batch; the optimizer neither divides by the
 * number of micro-batches nor by the token count. The caller zeroes ps->grad (params_zero_grad)
 * after the step. The gradients of frozen entries are ignored.
 * Data parallelism: with a SUM allreduce each rank divides by the global token count; with a
 * MEAN allreduce (dist_allreduce_mean, dist_reduce_scatter_mean) each rank must divide by
 * global_tokens / world instead, so that the mean of the ranks' gradients is again the gradient
 * of the mean token loss of the global batch.
 *
 * One training step:
 *     int nonfinite;
 *     double gnorm = adamw_clip_grad_norm(ps, opt.cfg.max_grad_norm, &nonfinite);
 *     if (!nonfinite) adamw_step(&opt, ps, lr_schedule_lr(&sched, opt.step));
 *     params_zero_grad(ps);
 * A non-finite norm means some gradient is inf/NaN: the caller should skip the step (and log it);
 * clipping leaves such gradients unscaled.
 *
 * Slices (ZeRO-1, peer-systems 6): an AdamW state covers a slice [lo, hi) of the flat buffer
 * (any bounds, not necessarily entry-aligned); its m and v hold hi - lo floats, element i of the
 * flat buffer being m[i - lo]. adamw_step updates ps->data only in [lo, hi), reading ps->grad
 * only there. The per-entry step counters are kept for ALL entries on every slice and advance
 * identically (the frozen flags are the same on every rank), so slices never disagree on t.
 * Under ZeRO-1: reduce-scatter the gradient, clip with adamw_grad_sumsq over the local slice +
 * an allreduce of the sum + adamw_scale_grad, step on the slice, all-gather the parameters.
 * The full-buffer case is lo = 0, hi = ps->n_total.
 *
 * Performance: one fused pass per step (reads p, g, m, v; writes p, m, v), OpenMP over fixed
 * chunks of the slice; the inner loop is AVX-512 / AVX2 (bit-identical to the scalar tail,
 * which handles the remainder). Alignment padding between entries is never touched.
 * Determinism: results do not depend on the thread count (the update is elementwise; the
 * gradient norm sums fixed chunks in a fixed order).
 */
#ifndef T5G_ADAMW_H
#define T5G_ADAMW_H

#include <stdint.h>
#include "model/params.h"

typedef struct AdamWConfig {
  double beta1;            /* default 0.9 */
  double beta2;            /* default 0.95 */
  double eps;              /* default 1e-8 */
  double weight_decay;     /* lambda, default 0.1 (spec 4.4: "weight decay", value unstated) */
  int decay_embed;         /* 1: also decay PG_EMBED entries; default 0 */
  double max_grad_norm;    /* global L2 clip (spec 4.4: 1.0); <= 0 disables; default 1.0 */
} AdamWConfig;

/* Defaults above. beta2 = 0.95 and wd = 0.1 follow common LLM practice (e.g. llm.c's GPT-2
 * runs); the T5Gemma papers do not state them (spec 4.4, 8). */
void adamw_config_default(AdamWConfig *c);
/* Range checks: 0 <= beta < 1, eps > 0, weight_decay >= 0. -1 with t5g_error naming the field
 * (`source` names where the values came from, e.g. a config file). */
int  adamw_config_check(const AdamWConfig *c, const char *source);

/* Per-entry coefficients, recomputed at every step (internal scratch). */
typedef struct AdamWCoef { float step_size, rbc2, decay; int skip; } AdamWCoef;

typedef struct AdamW {
  AdamWConfig cfg;
  int n_entries;           /* = ps->n at init */
  int64_t n_total;         /* = ps->n_total at init */
  int64_t lo, hi;          /* slice of the flat buffer covered by m and v */
  float *m, *v;            /* hi - lo floats each, 64-byte aligned, zero at init */
  int64_t *entry_step;     /* [n_entries]: updates applied to each entry so far */
  int64_t step;            /* adamw_step calls so far (the global optimizer step) */
  AdamWCoef *coef;         /* [n_entries] scratch */
} AdamW;

/* State for the slice [lo, hi) of a finalized ParamStore (0 <= lo <= hi <= ps->n_total), with
 * zero moments and counters. -1 with t5g_error on bad bounds or config. */
int  adamw_init(AdamW *opt, const ParamStore *ps, const AdamWConfig *cfg, int64_t lo, int64_t hi);
void adamw_free(AdamW *opt);

/* Whether entry e is weight-decayed under cfg (group rule above; frozen-ness is separate). */
int  adamw_entry_decays(const AdamWConfig *cfg, const ParamEntry *e);

/* One AdamW update of ps->data[lo, hi) from ps->grad[lo, hi) with learning rate lr (already
 * scheduled). Increments opt->step and entry_step[e] of every non-frozen entry (all entries, not
 * only those inside the slice). The ParamStore must be the one the state was made for (same
 * entry count and n_total; otherwise internal error). */
void adamw_step(AdamW *opt, ParamStore *ps, double lr);

/* Sum of squared gradients over the non-frozen entries' elements inside [lo, hi), in double.
 * Fixed chunking: the result depends only on the data and (lo, hi), not on the thread count. */
double adamw_grad_sumsq(const ParamStore *ps, int64_t lo, int64_t hi);
/* ps->grad[i] *= s for non-frozen elements in [lo, hi). */
void   adamw_scale_grad(ParamStore *ps, int64_t lo, int64_t hi, float s);
/* Clip factor for a global norm (torch.nn.utils.clip_grad_norm_): max_norm / (norm + 1e-6) when
 * that is < 1, else 1. Returns 1 when max_norm <= 0 or the norm is not finite. */
double adamw_clip_coef(double norm, double max_norm);
/* Global gradient clipping over the whole buffer (single process): computes the L2 norm of the
 * non-frozen gradients (returned, before clipping, for logging), and scales them by
 * adamw_clip_coef(norm, max_norm). *nonfinite (may be NULL) is set to 1 when the norm is inf or
 * NaN (some gradient is non-finite; nothing is scaled then), else 0. */
double adamw_clip_grad_norm(ParamStore *ps, double max_norm, int *nonfinite);

#endif
