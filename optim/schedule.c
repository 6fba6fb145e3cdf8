/* schedule.c: learning-rate schedules (see schedule.h). */
#include "optim/schedule.h"
#include <math.h>
#include <strings.h>
#include "model/util.h"

static const char *const decay_names[] = {"constant", "cosine", "linear", "wsd"};

void lr_schedule_default(LrSchedule *s) {
  s->decay = LR_COSINE;
  s->peak_lr = 1e-4;
  s->warmup_steps = 100;
  s->total_steps = 10000;
  s->min_lr = 0.0;
  s->min_lr_ratio = 0.1;
  s->wsd_decay_frac = 0.1;
  s->rewarm_at = 0;
  s->rewarm_steps = 0;
}

const char *lr_decay_name(LrDecay d) {
  return (unsigned)d < sizeof decay_names / sizeof *decay_names ? decay_names[d] : "unknown";
}

int lr_decay_parse(const char *name, LrDecay *out) {
  for (unsigned i = 0; i < sizeof decay_names / sizeof *decay_names; i++)
    if (name && strcasecmp(name, decay_names[i]) == 0) { *out = (LrDecay)i; return 0; }
  return t5g_error("learning-rate schedule: expected one of constant, cosine, linear, wsd; found \"%s\"",
                   name ? name : "(null)");
}

double lr_schedule_floor(const LrSchedule *s) {
  return s->min_lr_ratio > 0 ? s->min_lr_ratio * s->peak_lr : s->min_lr;
}

int lr_schedule_check(const LrSchedule *s, const char *source) {
  const char *src = source ? source : "learning-rate schedule";
  if ((unsigned)s->decay > LR_WSD) return t5g_error("%s: decay: unknown kind %d", src, (int)s->decay);
  if (!(s->peak_lr > 0 && isfinite(s->peak_lr))) return t5g_error("%s: lr must be > 0, found %g", src, s->peak_lr);
  if (s->warmup_steps < 0) return t5g_error("%s: warmup_steps must be >= 0, found %lld", src, (long long)s->warmup_steps);
  if (s->total_steps < 0) return t5g_error("%s: total_steps must be >= 0, found %lld", src, (long long)s->total_steps);
  if (s->rewarm_steps < 0 || s->rewarm_at < 0)
    return t5g_error("%s: the second warm-up (at step %lld, %lld steps) must have both >= 0", src, (long long)s->rewarm_at,
                     (long long)s->rewarm_steps);
  if (s->min_lr_ratio < 0 || s->min_lr_ratio > 1)
    return t5g_error("%s: min_lr_ratio must be in [0, 1], found %g", src, s->min_lr_ratio);
  if (s->min_lr < 0 || s->min_lr > s->peak_lr)
    return t5g_error("%s: min_lr must be in [0, lr = %g], found %g", src, s->peak_lr, s->min_lr);
  if (s->decay == LR_COSINE || s->decay == LR_LINEAR) {
    if (s->total_steps <= s->warmup_steps)
      return t5g_error("%s: total_steps (%lld) must exceed warmup_steps (%lld) for the %s schedule", src,
                       (long long)s->total_steps, (long long)s->warmup_steps, lr_decay_name(s->decay));
  }
  if (s->decay == LR_WSD) {
    if (!(s->wsd_decay_frac > 0 && s->wsd_decay_frac <= 1))
      return t5g_error("%s: wsd_decay_frac must be in (0, 1], found %g", src, s->wsd_decay_frac);
    int64_t d = (int64_t)llround(s->wsd_decay_frac * (double)s->total_steps);
    if (d < 1 || s->total_steps - d < s->warmup_steps)
      return t5g_error("%s: the wsd decay phase (%lld steps = %g x total_steps %lld) must be >= 1 step and "
                       "start after the %lld warm-up steps", src, (long long)d, s->wsd_decay_frac,
                       (long long)s->total_steps, (long long)s->warmup_steps);
  }
  return 0;
}

static double lr_base(const LrSchedule *s, int64_t step);

double lr_schedule_lr(const LrSchedule *s, int64_t step) {
  if (step < 0) step = 0;
  double lr = lr_base(s, step);
  if (s->rewarm_steps > 0 && step >= s->rewarm_at && step < s->rewarm_at + s->rewarm_steps)
    lr *= (double)(step - s->rewarm_at + 1) / (double)s->rewarm_steps;
  return lr;
}

static double lr_base(const LrSchedule *s, int64_t step) {
  const double peak = s->peak_lr;
  if (step < s->warmup_steps) return peak * (double)(step + 1) / (double)s->warmup_steps;
  if (s->decay == LR_CONSTANT) return peak;
  const double floor = lr_schedule_floor(s);
  if (s->decay == LR_WSD) {
    int64_t d = (int64_t)llround(s->wsd_decay_frac * (double)s->total_steps);
    if (d < 1) d = 1;
    int64_t start = s->total_steps - d;
    if (step < start) return peak;
    if (step >= s->total_steps) return floor;
    return peak - (peak - floor) * (double)(step - start) / (double)d;
  }
  int64_t span = s->total_steps - s->warmup_steps;
  double q = span > 0 ? (double)(step - s->warmup_steps) / (double)span : 1.0;
  if (q > 1) q = 1;
  if (s->decay == LR_COSINE) return floor + (peak - floor) * 0.5 * (1.0 + cos(M_PI * q));
  return peak - (peak - floor) * q;  /* LR_LINEAR */
}
