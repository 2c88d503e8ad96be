/* rmsnorm.c: RMSNorm y = x / sqrt(mean(x^2) + eps) * (w + offset); offset 1 is Gemma's (1 + w).
 * Sums are in double: C can be 8192 and the norm feeds every layer. */
#include <math.h>

#include "ref.h"

void st_ref_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                            float eps, float offset, size_t N, size_t C) {
    for (size_t n = 0; n < N; n++) {
        const float *x = inp + n * C;
        double ss = 0;
        for (size_t c = 0; c < C; c++) ss += (double)x[c] * x[c];
        float r = (float)(1.0 / sqrt(ss / (double)C + eps));
        rstd[n] = r;
        float *y = out + n * C;
        for (size_t c = 0; c < C; c++) y[c] = x[c] * r * (weight[c] + offset);
    }
}

/* With xh = x * r and g = w + offset: dx = r * (dy*g - xh * mean(dy*g*xh)), dw += dy * xh. */
void st_ref_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                             const float *weight, const float *rstd, float offset, size_t N,
                             size_t C) {
    for (size_t n = 0; n < N; n++) {
        const float *x = inp + n * C, *dy = dout + n * C;
        float r = rstd[n];
        double dot = 0;
        for (size_t c = 0; c < C; c++) dot += (double)dy[c] * (weight[c] + offset) * x[c] * r;
        float m = (float)(dot / (double)C);
        for (size_t c = 0; c < C; c++) {
            float xh = x[c] * r;
            if (dweight) dweight[c] += dy[c] * xh;
            dinp[n * C + c] += r * (dy[c] * (weight[c] + offset) - xh * m);
        }
    }
}
