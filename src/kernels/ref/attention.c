/* attention.c: causal multi-head attention with GQA, optional sliding window and packing
 * segments. The T x T probabilities are stored for backward (the fast backend will not). */
#include <math.h>

#include "ref.h"

/* One query row i of one head. q (hd); k, v rows j at k + j * kv_stride; att (Tk) out. */
void st_ref_attention_row(float *out, float *att, const float *q, const float *k, const float *v,
                          const int32_t *seg, float scale, int window, size_t Tq, size_t Tk,
                          size_t i, size_t kv_stride, size_t hd) {
    size_t p = Tk - Tq + i; /* absolute position of this query */
    float maxv = -INFINITY;
    for (size_t j = 0; j < Tk; j++) {
        int visible = j <= p && (window <= 0 || p - j < (size_t)window) &&
                      (!seg || seg[j] == seg[p]);
        if (!visible) {
            att[j] = -INFINITY;
            continue;
        }
        const float *kj = k + j * kv_stride;
        float s = 0;
        for (size_t d = 0; d < hd; d++) s += q[d] * kj[d];
        s *= scale;
        att[j] = s;
        if (s > maxv) maxv = s;
    }
    double sum = 0;
    for (size_t j = 0; j < Tk; j++) {
        float e = att[j] == -INFINITY ? 0.0f : expf(att[j] - maxv);
        att[j] = e;
        sum += e;
    }
    float inv = sum > 0 ? (float)(1.0 / sum) : 0.0f;
    for (size_t d = 0; d < hd; d++) out[d] = 0;
    for (size_t j = 0; j < Tk; j++) {
        att[j] *= inv;
        if (att[j] == 0) continue;
        const float *vj = v + j * kv_stride;
        for (size_t d = 0; d < hd; d++) out[d] += att[j] * vj[d];
    }
}

void st_ref_attention_forward(float *out, float *att, const float *q, const float *k,
                              const float *v, const int32_t *seg, float scale, int window,
                              size_t B, size_t Tq, size_t Tk, size_t nh, size_t nkv, size_t hd) {
    size_t group = nh / nkv, kvs = nkv * hd;
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < nh; h++)
            for (size_t i = 0; i < Tq; i++) {
                size_t kh = h / group;
                st_ref_attention_row(out + ((b * Tq + i) * nh + h) * hd,
                                     att + ((b * nh + h) * Tq + i) * Tk,
                                     q + ((b * Tq + i) * nh + h) * hd, k + b * Tk * kvs + kh * hd,
                                     v + b * Tk * kvs + kh * hd, seg ? seg + b * Tk : NULL, scale,
                                     window, Tq, Tk, i, kvs, hd);
            }
}

/* out = P V, P = softmax(S), S = scale Q K^T:
 * dV += P^T dout; dP = dout V^T; dS = P * (dP - rowsum(dP * P)); dQ = scale dS K; dK += scale dS^T Q */
void st_ref_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                               const float *att, const float *q, const float *k, const float *v,
                               float scale, size_t B, size_t Tq, size_t Tk, size_t nh,
                               size_t nkv, size_t hd) {
    size_t group = nh / nkv, kvs = nkv * hd;
    for (size_t i = 0; i < B * Tq * nh * hd; i++) dq[i] = 0;
    for (size_t i = 0; i < B * Tk * kvs; i++) dk[i] = dv[i] = 0;
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < nh; h++) {
            size_t kh = h / group;
            for (size_t i = 0; i < Tq; i++) {
                const float *P = att + ((b * nh + h) * Tq + i) * Tk;
                const float *dy = dout + ((b * Tq + i) * nh + h) * hd;
                const float *qi = q + ((b * Tq + i) * nh + h) * hd;
                float *dqi = dq + ((b * Tq + i) * nh + h) * hd;
                double rowdot = 0;
                for (size_t j = 0; j < Tk; j++) {
                    if (P[j] == 0) continue;
                    const float *vj = v + (b * Tk + j) * kvs + kh * hd;
                    float dp = 0;
                    for (size_t d = 0; d < hd; d++) dp += dy[d] * vj[d];
                    rowdot += (double)dp * P[j];
                }
                for (size_t j = 0; j < Tk; j++) {
                    if (P[j] == 0) continue;
                    const float *vj = v + (b * Tk + j) * kvs + kh * hd;
                    const float *kj = k + (b * Tk + j) * kvs + kh * hd;
                    float *dvj = dv + (b * Tk + j) * kvs + kh * hd;
                    float *dkj = dk + (b * Tk + j) * kvs + kh * hd;
                    float dp = 0;
                    for (size_t d = 0; d < hd; d++) {
                        dp += dy[d] * vj[d];
                        dvj[d] += P[j] * dy[d];
                    }
                    float ds = P[j] * (dp - (float)rowdot) * scale;
                    for (size_t d = 0; d < hd; d++) {
                        dqi[d] += ds * kj[d];
                        dkj[d] += ds * qi[d];
                    }
                }
            }
        }
}
