/* optim.c: AdamW (torch 1.13 arithmetic), gradient norm and clipping, learning-rate schedules. */
#include <math.h>
#include <string.h>

#include "streamtune/train.h"

void st_adamw_step(float *p, const float *g, float *m, float *v, size_t n,
                   const struct st_adamw *o, long t) {
    double bc1 = 1.0 - pow(o->beta1, (double)t), bc2 = 1.0 - pow(o->beta2, (double)t);
    float step_size = (float)(o->lr / bc1);
    float bc2_sqrt = (float)sqrt(bc2);
    float decay = 1.0f - o->lr * o->weight_decay;
    float b1 = o->beta1, b2 = o->beta2, eps = o->eps;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        p[i] *= decay;
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        p[i] -= step_size * m[i] / denom;
    }
}

double st_grad_norm(const float *g, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    return sqrt(s);
}

double st_grad_clip(float *g, size_t n, double max_norm) {
    double norm = st_grad_norm(g, n);
    if (max_norm > 0) {
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1.0)
            for (size_t i = 0; i < n; i++) g[i] = (float)(g[i] * coef);
    }
    return norm;
}

double st_lr_at(enum st_schedule s, double lr, double min_lr, long warmup, long total, long step) {
    if (warmup > 0 && step < warmup) return lr * (double)(step + 1) / (double)warmup;
    if (s == ST_SCHED_CONSTANT || total <= warmup + 1) return lr;
    double frac = (double)(step - warmup) / (double)(total - 1 - warmup);
    if (frac > 1) frac = 1;
    if (s == ST_SCHED_LINEAR) return min_lr + (lr - min_lr) * (1.0 - frac);
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + cos(3.14159265358979323846 * frac));
}

enum st_status st_schedule_parse(const char *s, enum st_schedule *out, struct st_error *err) {
    if (!strcmp(s, "constant")) *out = ST_SCHED_CONSTANT;
    else if (!strcmp(s, "cosine")) *out = ST_SCHED_COSINE;
    else if (!strcmp(s, "linear")) *out = ST_SCHED_LINEAR;
    else
        return st_errorf(err, ST_ERR_ARG, "--schedule '%s': expected constant, cosine or linear",
                         s);
    return ST_OK;
}
