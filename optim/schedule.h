/* schedule.h: learning-rate schedules, a pure function lr(step) of a small config.
 *
 * `step` is the number of optimizer updates already taken (AdamW.step before the update), so the
 * first update uses lr(0).
 *   warm-up   step < warmup_steps:  lr = peak_lr * (step + 1) / warmup_steps
 *             (linear ramp that reaches peak_lr at step warmup_steps - 1 and never gives a wasted
 *             zero-lr first step; llm.c's convention. spec 4.4: 100 warm-up steps.)
 *   then, with progress q = (step - warmup_steps) / (total_steps - warmup_steps) clamped to [0, 1]
 *   and floor = lr_schedule_floor():
 *     constant  lr = peak_lr (no decay; the floor is unused)
 *     cosine    lr = floor + (peak_lr - floor) * 0.5 * (1 + cos(pi * q))     (spec 4.4 "cosine")
 *     linear    lr = peak_lr - (peak_lr - floor) * q
 *     wsd       warm-up / stable / decay (Hu et al. 2024, MiniCPM): lr = peak_lr until the last
 *               decay_steps = round(wsd_decay_frac * total_steps) steps, then linear to floor:
 *               lr = peak_lr - (peak_lr - floor) * (step - (total_steps - decay_steps)) / decay_steps
 *   At and after total_steps the decaying schedules stay at the floor.
 *   rewarm    optional second linear ramp, for parameters that start training late (the unequal
 *             pair's warm-up trains cross-attention alone, then unfreezes everything, spec 3.1:
 *             the unfrozen parameters start with fresh AdamW moments, whose first updates are
 *             ~lr per weight whatever the gradient's size): for rewarm_at <= step < rewarm_at +
 *             rewarm_steps the lr above is multiplied by (step - rewarm_at + 1) / rewarm_steps.
 *             rewarm_steps = 0 (default) turns it off. The paper does not say what the learning
 *             rate does after the warm-up; docs/experiments.md measures both.
 */
#ifndef T5G_SCHEDULE_H
#define T5G_SCHEDULE_H

#include <stdint.h>

typedef enum { LR_CONSTANT = 0, LR_COSINE = 1, LR_LINEAR = 2, LR_WSD = 3 } LrDecay;

typedef struct LrSchedule {
  LrDecay decay;
  double peak_lr;          /* learning rate after warm-up */
  int64_t warmup_steps;    /* >= 0 */
  int64_t total_steps;     /* end of the decay; > warmup_steps for cosine/linear */
  double min_lr;           /* absolute floor, used when min_lr_ratio <= 0 */
  double min_lr_ratio;     /* floor as a fraction of peak_lr (0..1); takes precedence when > 0 */
  double wsd_decay_frac;   /* wsd: fraction of total_steps spent decaying (0..1], default 0.1 */
  int64_t rewarm_at;       /* >= 0: step at which the second ramp starts */
  int64_t rewarm_steps;    /* >= 0: its length; 0 = no second ramp (default) */
} LrSchedule;

/* cosine, peak 1e-4, 100 warm-up steps (spec 4.4), total 10000, floor 0.1 * peak, wsd 0.1. */
void lr_schedule_default(LrSchedule *s);
/* Consistency checks (peak > 0, warm-up <= total, floor <= peak, ...); -1 with t5g_error naming
 * the field and `source`. */
int  lr_schedule_check(const LrSchedule *s, const char *source);
/* The floor the decaying schedules end at. */
double lr_schedule_floor(const LrSchedule *s);
/* The learning rate for the update after `step` updates (step >= 0; negative counts as 0). */
double lr_schedule_lr(const LrSchedule *s, int64_t step);

/* "constant" | "cosine" | "linear" | "wsd" (case-insensitive) -> *out; -1 with t5g_error listing
 * the accepted names otherwise. */
int  lr_decay_parse(const char *name, LrDecay *out);
const char *lr_decay_name(LrDecay d);

#endif
