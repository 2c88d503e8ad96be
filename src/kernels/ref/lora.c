/* lora.c: the LoRA op pair. Forward y += scale * (x A^T) B^T with the low-rank product x A^T
 * saved; B (A x) is never formed as a full (OC, C) matrix. Sums in double (reference). */
#include "ref.h"

void st_ref_lora_forward(float *out, float *xa, const float *inp, const float *a, const float *b,
                         float scale, size_t N, size_t C, size_t OC, size_t r) {
    for (size_t n = 0; n < N; n++) {
        const float *x = inp + n * C; // inp (N, C)
        float *h = xa + n * r;        // xa (N, r)
        for (size_t k = 0; k < r; k++) {
            double s = 0;
            for (size_t c = 0; c < C; c++) s += (double)x[c] * a[k * C + c]; // a (r, C)
            h[k] = (float)s;
        }
        for (size_t o = 0; out && o < OC; o++) {
            double s = 0;
            for (size_t k = 0; k < r; k++) s += (double)h[k] * b[o * r + k]; // b (OC, r)
            out[n * OC + o] += scale * (float)s;
        }
    }
}

/* dB += scale dout^T xa ; dxa = scale dout B ; dA += dxa^T inp ; dinp += dxa A */
void st_ref_lora_backward(float *dinp, float *da, float *db, float *dxa, const float *dout,
                          const float *inp, const float *xa, const float *a, const float *b,
                          float scale, size_t N, size_t C, size_t OC, size_t r) {
    for (size_t o = 0; o < OC; o++)
        for (size_t k = 0; k < r; k++) {
            double s = 0;
            for (size_t n = 0; n < N; n++) s += (double)dout[n * OC + o] * xa[n * r + k];
            db[o * r + k] += scale * (float)s;
        }
    for (size_t n = 0; n < N; n++)
        for (size_t k = 0; k < r; k++) {
            double s = 0;
            for (size_t o = 0; o < OC; o++) s += (double)dout[n * OC + o] * b[o * r + k];
            dxa[n * r + k] = scale * (float)s;
        }
    for (size_t k = 0; k < r; k++)
        for (size_t c = 0; c < C; c++) {
            double s = 0;
            for (size_t n = 0; n < N; n++) s += (double)dxa[n * r + k] * inp[n * C + c];
            da[k * C + c] += (float)s;
        }
    if (dinp)
        for (size_t n = 0; n < N; n++)
            for (size_t c = 0; c < C; c++) {
                double s = 0;
                for (size_t k = 0; k < r; k++) s += (double)dxa[n * r + k] * a[k * C + c];
                dinp[n * C + c] += (float)s;
            }
}
