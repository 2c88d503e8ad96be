/* crossentropy.c: softmax cross-entropy over the vocabulary, stable (max subtracted), with
 * ignored positions (target < 0, the -100 convention). */
#include <math.h>

#include "ref.h"

static double logsumexp(const float *x, size_t V) {
    float m = -INFINITY;
    for (size_t v = 0; v < V; v++)
        if (x[v] > m) m = x[v];
    double s = 0;
    for (size_t v = 0; v < V; v++) s += exp((double)x[v] - m);
    return m + log(s);
}

void st_ref_crossentropy_forward(float *losses, const float *logits, const int32_t *targets,
                                 size_t N, size_t V) {
    for (size_t n = 0; n < N; n++) {
        if (targets[n] < 0) {
            losses[n] = 0;
            continue;
        }
        const float *x = logits + n * V;
        losses[n] = (float)(logsumexp(x, V) - x[targets[n]]);
    }
}

void st_ref_crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets,
                                  float dloss, size_t N, size_t V) {
    for (size_t n = 0; n < N; n++) {
        float *d = dlogits + n * V;
        const float *x = logits + n * V;
        if (targets[n] < 0) {
            for (size_t v = 0; v < V; v++) d[v] = 0;
            continue;
        }
        double lse = logsumexp(x, V);
        int32_t t = targets[n];
        for (size_t v = 0; v < V; v++) {
            float p = (float)exp((double)x[v] - lse);
            d[v] = dloss * (p - (v == (size_t)t ? 1.0f : 0.0f));
        }
    }
}
