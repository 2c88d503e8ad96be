/* streamtune training: optimizer, learning-rate schedules, gradient clipping, and the trainer.
 *
 * DESIGN: the optimizer is one loop over flat arrays (the adapter's params/grads and two moment
 * arrays of the same length). Its arithmetic is torch.optim.AdamW's (PyTorch 1.13) so a loss
 * trajectory can be compared with a PyTorch run step by step. */
#ifndef STREAMTUNE_TRAIN_H
#define STREAMTUNE_TRAIN_H

#include <stddef.h>

#include "streamtune/core.h"

#ifdef __cplusplus
extern "C" {
#endif

struct st_adamw {
    float lr, beta1, beta2, eps, weight_decay;
};
/* One AdamW step (t counts from 1): p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). */
void st_adamw_step(float *p, const float *g, float *m, float *v, size_t n,
                   const struct st_adamw *o, long t);

/* Global L2 norm of g (n floats), accumulated in double. */
double st_grad_norm(const float *g, size_t n);
/* Clip to max_norm the way torch.nn.utils.clip_grad_norm_ does: coef = max_norm / (norm + 1e-6),
 * applied when coef < 1. Returns the norm before clipping. max_norm <= 0: no clipping. */
double st_grad_clip(float *g, size_t n, double max_norm);

enum st_schedule { ST_SCHED_CONSTANT = 0, ST_SCHED_COSINE, ST_SCHED_LINEAR };
/* Learning rate at optimizer step `step` (0-based) of `total`: linear warm-up from lr/warmup to
 * lr over `warmup` steps, then constant, cosine or linear decay to min_lr at step total - 1. */
double st_lr_at(enum st_schedule s, double lr, double min_lr, long warmup, long total, long step);
enum st_status st_schedule_parse(const char *s, enum st_schedule *out, struct st_error *err);

#ifdef __cplusplus
}
#endif
#endif
