/* attention.c: causal multi-head attention with GQA, optional sliding window and packing
 * segments, flash-style: the forward keeps only each row's log-sum-exp of the scores (never the
 * T x T probabilities), the backward recomputes the probabilities from it. Plain loops; the cpu
 * backend runs the same row functions on blocks of keys in parallel. */
#include <math.h>

#include "ref.h"

static int visible(const int32_t *seg, int window, size_t p, size_t j) {
    return j <= p && (window <= 0 || p - j < (size_t)window) && (!seg || seg[j] == seg[p]);
}

/* One query row i of one head, online softmax over the keys (one pass). q (hd); k, v rows j at
 * k + j * kv_stride; out (hd); *lse = log sum_j exp(s_j) over the visible keys. */
void st_ref_attention_row(float *out, float *lse, const float *q, const float *k, const float *v,
                          const int32_t *seg, float scale, int window, size_t Tq, size_t Tk,
                          size_t i, size_t kv_stride, size_t hd) {
    size_t p = Tk - Tq + i; /* absolute position of this query */
    float m = -INFINITY, l = 0;
    for (size_t d = 0; d < hd; d++) out[d] = 0;
    for (size_t j = 0; j < Tk; j++) {
        if (!visible(seg, window, p, j)) continue;
        const float *kj = k + j * kv_stride, *vj = v + j * kv_stride;
        float s = 0;
        for (size_t d = 0; d < hd; d++) s += q[d] * kj[d];
        s *= scale;
        if (s > m) { /* a new maximum: rescale what was summed so far */
            float c = expf(m - s);
            l *= c;
            for (size_t d = 0; d < hd; d++) out[d] *= c;
            m = s;
        }
        float e = expf(s - m);
        l += e;
        for (size_t d = 0; d < hd; d++) out[d] += e * vj[d];
    }
    float inv = l > 0 ? 1.0f / l : 0.0f;
    for (size_t d = 0; d < hd; d++) out[d] *= inv;
    *lse = l > 0 ? m + logf(l) : -INFINITY;
}

void st_ref_attention_forward(float *out, float *lse, const float *q, const float *k,
                              const float *v, const int32_t *seg, float scale, int window,
                              size_t B, size_t Tq, size_t Tk, size_t nh, size_t nkv, size_t hd) {
    size_t group = nh / nkv, kvs = nkv * hd;
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < nh; h++)
            for (size_t i = 0; i < Tq; i++) {
                size_t kh = h / group;
                st_ref_attention_row(out + ((b * Tq + i) * nh + h) * hd,
                                     lse + (b * nh + h) * Tq + i,
                                     q + ((b * Tq + i) * nh + h) * hd, k + b * Tk * kvs + kh * hd,
                                     v + b * Tk * kvs + kh * hd, seg ? seg + b * Tk : NULL, scale,
                                     window, Tq, Tk, i, kvs, hd);
            }
}

/* Backward of one query row (accumulating into dq_i, dk, dv): P_j = exp(s_j - lse),
 * dV_j += P_j dout; dP_j = dout . v_j; dS_j = P_j (dP_j - D), D = dout . out; dq_i += scale dS K,
 * dK_j += scale dS_j q_i. */
void st_ref_attention_row_backward(float *dqi, float *dk, float *dv, const float *dy,
                                   const float *oi, float lse, const float *qi, const float *k,
                                   const float *v, const int32_t *seg, float scale, int window,
                                   size_t Tq, size_t Tk, size_t i, size_t kv_stride, size_t hd) {
    size_t p = Tk - Tq + i;
    float D = 0;
    for (size_t d = 0; d < hd; d++) D += dy[d] * oi[d];
    for (size_t j = 0; j < Tk; j++) {
        if (!visible(seg, window, p, j)) continue;
        const float *kj = k + j * kv_stride, *vj = v + j * kv_stride;
        float *dkj = dk + j * kv_stride, *dvj = dv + j * kv_stride;
        float s = 0, dp = 0;
        for (size_t d = 0; d < hd; d++) {
            s += qi[d] * kj[d];
            dp += dy[d] * vj[d];
        }
        float pj = expf(s * scale - lse);
        float ds = pj * (dp - D) * scale;
        for (size_t d = 0; d < hd; d++) {
            dvj[d] += pj * dy[d];
            dqi[d] += ds * kj[d];
            dkj[d] += ds * qi[d];
        }
    }
}

void st_ref_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                               const float *out, const float *lse, const float *q, const float *k,
                               const float *v, const int32_t *seg, float scale, int window,
                               size_t B, size_t Tq, size_t Tk, size_t nh, size_t nkv, size_t hd) {
    size_t group = nh / nkv, kvs = nkv * hd;
    for (size_t i = 0; i < B * Tq * nh * hd; i++) dq[i] = 0;
    for (size_t i = 0; i < B * Tk * kvs; i++) dk[i] = dv[i] = 0;
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < nh; h++) {
            size_t kh = h / group;
            for (size_t i = 0; i < Tq; i++) {
                size_t r = ((b * Tq + i) * nh + h) * hd;
                st_ref_attention_row_backward(dq + r, dk + b * Tk * kvs + kh * hd,
                                              dv + b * Tk * kvs + kh * hd, dout + r, out + r,
                                              lse[(b * nh + h) * Tq + i], q + r,
                                              k + b * Tk * kvs + kh * hd,
                                              v + b * Tk * kvs + kh * hd, seg ? seg + b * Tk : NULL,
                                              scale, window, Tq, Tk, i, kvs, hd);
            }
        }
}
