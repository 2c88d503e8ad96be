/* glu.c: gated MLP nonlinearity, SwiGLU (SiLU) or GeGLU (tanh-approximated GELU). */
#include <math.h>

#include "ref.h"

#define GELU_C 0.7978845608028654f /* sqrt(2/pi) */

float st_gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(GELU_C * (x + 0.044715f * x * x * x)));
}

static float act_f(float x, enum st_act act) {
    if (act == ST_ACT_SILU) return x / (1.0f + expf(-x));
    return st_gelu_tanh(x);
}

static float act_df(float x, enum st_act act) {
    if (act == ST_ACT_SILU) {
        float s = 1.0f / (1.0f + expf(-x));
        return s * (1.0f + x * (1.0f - s));
    }
    float u = GELU_C * (x + 0.044715f * x * x * x);
    float t = tanhf(u);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_C * (1.0f + 3 * 0.044715f * x * x);
}

void st_ref_glu_forward(float *out, const float *gate, const float *up, enum st_act act, size_t N,
                        size_t H) {
    for (size_t i = 0; i < N * H; i++) out[i] = act_f(gate[i], act) * up[i];
}

void st_ref_glu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                         const float *up, enum st_act act, size_t N, size_t H) {
    for (size_t i = 0; i < N * H; i++) {
        float g = gate[i];
        dup[i] = dout[i] * act_f(g, act);
        dgate[i] = dout[i] * up[i] * act_df(g, act);
    }
}
