/* linear.c: y = x W^T + b with W stored (OC, C) as Hugging Face stores it. Plain loops; the cpu
 * backend uses BLAS. Dot products accumulate in double so the reference is the better one. */
#include "ref.h"

void st_ref_linear_forward(float *out, const float *inp, const float *w, const float *bias,
                           size_t N, size_t C, size_t OC) {
    for (size_t n = 0; n < N; n++)
        for (size_t o = 0; o < OC; o++) {
            const float *x = inp + n * C, *wr = w + o * C;
            double s = bias ? bias[o] : 0.0;
            for (size_t c = 0; c < C; c++) s += (double)x[c] * wr[c];
            out[n * OC + o] = (float)s;
        }
}

void st_ref_linear_backward(float *dinp, float *dw, float *dbias, const float *dout,
                            const float *inp, const float *w, size_t N, size_t C, size_t OC) {
    if (dinp)
        for (size_t n = 0; n < N; n++)
            for (size_t c = 0; c < C; c++) {
                double s = 0;
                for (size_t o = 0; o < OC; o++) s += (double)dout[n * OC + o] * w[o * C + c];
                dinp[n * C + c] += (float)s;
            }
    if (dw)
        for (size_t o = 0; o < OC; o++)
            for (size_t c = 0; c < C; c++) {
                double s = 0;
                for (size_t n = 0; n < N; n++) s += (double)dout[n * OC + o] * inp[n * C + c];
                dw[o * C + c] += (float)s;
            }
    if (dbias)
        for (size_t o = 0; o < OC; o++) {
            double s = 0;
            for (size_t n = 0; n < N; n++) s += dout[n * OC + o];
            dbias[o] += (float)s;
        }
}
