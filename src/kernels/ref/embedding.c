/* embedding.c: token embedding lookup (with Gemma's sqrt(dim) scale) and its backward. */
#include "ref.h"

void st_ref_embedding_forward(float *out, const int32_t *ids, const float *wte, float scale,
                              size_t N, size_t C) {
    for (size_t n = 0; n < N; n++) {
        const float *row = wte + (size_t)ids[n] * C; // wte (V, C)
        for (size_t c = 0; c < C; c++) out[n * C + c] = row[c] * scale;
    }
}

void st_ref_embedding_backward(float *dwte, const float *dout, const int32_t *ids, float scale,
                               size_t N, size_t C) {
    for (size_t n = 0; n < N; n++) {
        float *row = dwte + (size_t)ids[n] * C;
        for (size_t c = 0; c < C; c++) row[c] += scale * dout[n * C + c];
    }
}
