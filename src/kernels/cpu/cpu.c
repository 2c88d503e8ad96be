/* cpu.c: the CPU backend. Matmuls go to OpenBLAS (sgemm); row-wise ops run the reference code on
 * OpenMP-parallel chunks of rows, so they stay identical to ref. Attention splits (batch, head)
 * pairs across threads. Faster fused kernels replace entries here as the profile asks. */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../ref/ref.h"

/* exp for float arguments without libm calls, so `omp simd` loops vectorise it (Cephes' expf:
 * x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, scaled by 2^n; about 1 ulp). Arguments below
 * -87.3 return ~1e-38 instead of denormals/0: callers map masked (-inf) entries to 0 themselves. */
static inline float fexp(float x) {
    x = x < -87.3f ? -87.3f : x > 88.7f ? 88.7f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float sc;
    memcpy(&sc, &e, 4);
    return y * sc;
}

static void linear_forward(float *out, const float *inp, const float *w, const float *bias,
                           size_t N, size_t C, size_t OC) {
    // out (N, OC) = inp (N, C) @ w (OC, C)^T
    if (bias) {
        for (size_t n = 0; n < N; n++) memcpy(out + n * OC, bias, OC * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OC, (int)C, 1.0f, inp,
                (int)C, w, (int)C, bias ? 1.0f : 0.0f, out, (int)OC);
}

static void linear_backward(float *dinp, float *dw, float *dbias, const float *dout,
                            const float *inp, const float *w, size_t N, size_t C, size_t OC) {
    if (dinp) // dinp (N, C) += dout (N, OC) @ w (OC, C)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)C, (int)OC, 1.0f,
                    dout, (int)OC, w, (int)C, 1.0f, dinp, (int)C);
    if (dw) // dw (OC, C) += dout^T (OC, N) @ inp (N, C)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)OC, (int)C, (int)N, 1.0f, dout,
                    (int)OC, inp, (int)C, 1.0f, dw, (int)C);
    if (dbias)
        for (size_t n = 0; n < N; n++)
            for (size_t o = 0; o < OC; o++) dbias[o] += dout[n * OC + o];
}

static void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                            float eps, float offset, size_t N, size_t C) {
#pragma omp parallel for schedule(static) if (N * C > 32768)
    for (size_t n = 0; n < N; n++)
        st_ref_rmsnorm_forward(out + n * C, rstd + n, inp + n * C, weight, eps, offset, 1, C);
}

static void rope_forward(float *out, const float *inp, const float *cos_t, const float *sin_t,
                         const int32_t *pos, size_t N, size_t nh, size_t hd) {
#pragma omp parallel for schedule(static) if (N * nh * hd > 32768)
    for (size_t n = 0; n < N; n++)
        st_ref_rope_forward(out + n * nh * hd, inp + n * nh * hd, cos_t, sin_t, pos + n, 1, nh,
                            hd);
}

static void rope_backward(float *dinp, const float *dout, const float *cos_t, const float *sin_t,
                          const int32_t *pos, size_t N, size_t nh, size_t hd) {
#pragma omp parallel for schedule(static) if (N * nh * hd > 32768)
    for (size_t n = 0; n < N; n++)
        st_ref_rope_backward(dinp + n * nh * hd, dout + n * nh * hd, cos_t, sin_t, pos + n, 1, nh,
                             hd);
}

static void glu_forward(float *out, const float *gate, const float *up, enum st_act act, size_t N,
                        size_t H) {
#pragma omp parallel for schedule(static) if (N * H > 32768)
    for (size_t n = 0; n < N; n++) st_ref_glu_forward(out + n * H, gate + n * H, up + n * H, act, 1, H);
}

static void glu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                         const float *up, enum st_act act, size_t N, size_t H) {
#pragma omp parallel for schedule(static) if (N * H > 32768)
    for (size_t n = 0; n < N; n++)
        st_ref_glu_backward(dgate + n * H, dup + n * H, dout + n * H, gate + n * H, up + n * H,
                            act, 1, H);
}

/* Flash-style attention on the CPU. Work is split over (batch, head) in the forward and (batch,
 * kv head) in the backward (a task owns its dk/dv rows: no races, deterministic). Keys go in
 * blocks of ATT_BLK: the block's K (and V in the backward) is transposed once into hd x ATT_BLK
 * scratch on the stack, so a query row's scores for the whole block are plain vector FMAs over
 * the keys (no horizontal sums); the running max/sum per query row is rescaled once per block. */
#define ATT_BLK 64
#define ATT_HD_MAX 256

static void key_range(size_t p, int window, size_t *j0, size_t *j1) {
    *j1 = p + 1;
    *j0 = window > 0 && p + 1 > (size_t)window ? p + 1 - (size_t)window : 0;
}

/* kt (hd x ATT_BLK) = rows jb..jb+n of x (stride kvs) transposed; columns >= n zero */
static void transpose_block(float *kt, const float *x, size_t jb, size_t n, size_t kvs,
                            size_t hd) {
    for (size_t t = 0; t < n; t++) {
        const float *r = x + (jb + t) * kvs;
        for (size_t d = 0; d < hd; d++) kt[d * ATT_BLK + t] = r[d];
    }
    for (size_t t = n; t < ATT_BLK; t++)
        for (size_t d = 0; d < hd; d++) kt[d * ATT_BLK + t] = 0;
}

/* s[t] = scale * q . k_t over the block (kt transposed) */
static void block_scores(float *s, const float *q, const float *kt, size_t hd, float scale) {
    for (size_t t = 0; t < ATT_BLK; t++) s[t] = 0;
    for (size_t d = 0; d < hd; d++) {
        float qd = q[d];
        const float *kr = kt + d * ATT_BLK;
#pragma omp simd
        for (size_t t = 0; t < ATT_BLK; t++) s[t] += qd * kr[t];
    }
    for (size_t t = 0; t < ATT_BLK; t++) s[t] *= scale;
}

/* -inf where query position p may not see key jb + t (causal, window, segment, block end) */
static void block_mask(float *s, size_t jb, size_t n, size_t p, int window, const int32_t *seg) {
    size_t j0, j1;
    key_range(p, window, &j0, &j1);
    for (size_t t = 0; t < ATT_BLK; t++) {
        size_t j = jb + t;
        if (t >= n || j < j0 || j >= j1 || (seg && seg[j] != seg[p])) s[t] = -INFINITY;
    }
}

static void attention_forward(float *out, float *lse, const float *q, const float *k,
                              const float *v, const int32_t *seg, float scale, int window,
                              size_t B, size_t Tq, size_t Tk, size_t nh, size_t nkv, size_t hd) {
    size_t group = nh / nkv, kvs = nkv * hd;
    if (hd > ATT_HD_MAX) { /* not a shape of these families: the reference rows */
        st_ref_attention_forward(out, lse, q, k, v, seg, scale, window, B, Tq, Tk, nh, nkv, hd);
        return;
    }
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < nh; h++) {
            size_t kh = h / group;
            const float *kb = k + b * Tk * kvs + kh * hd, *vb = v + b * Tk * kvs + kh * hd;
            const int32_t *sg = seg ? seg + b * Tk : NULL;
            float kt[ATT_HD_MAX * ATT_BLK], s[ATT_BLK];
            float *L = lse + (b * nh + h) * Tq; /* holds the running max until the end */
            for (size_t i = 0; i < Tq; i++) {
                memset(out + ((b * Tq + i) * nh + h) * hd, 0, hd * sizeof(float));
                L[i] = -INFINITY;
            }
            /* running sums: reuse nothing shared; one float per row on the stack in chunks */
            float lsum[512];
            for (size_t i0 = 0; i0 < Tq; i0 += 512) {
                size_t ni = Tq - i0 < 512 ? Tq - i0 : 512;
                for (size_t i = 0; i < ni; i++) lsum[i] = 0;
                size_t pmax = Tk - Tq + i0 + ni - 1, pmin = Tk - Tq + i0;
                size_t jlo = window > 0 && pmin + 1 > (size_t)window ? pmin + 1 - (size_t)window : 0;
                for (size_t jb = jlo - jlo % ATT_BLK; jb <= pmax; jb += ATT_BLK) {
                    size_t n = Tk - jb < ATT_BLK ? Tk - jb : ATT_BLK;
                    transpose_block(kt, kb, jb, n, kvs, hd);
                    for (size_t i = i0; i < i0 + ni; i++) {
                        size_t p = Tk - Tq + i, j0, j1;
                        key_range(p, window, &j0, &j1);
                        if (jb >= j1 || jb + n <= j0) continue;
                        const float *qi = q + ((b * Tq + i) * nh + h) * hd;
                        float *oi = out + ((b * Tq + i) * nh + h) * hd;
                        block_scores(s, qi, kt, hd, scale);
                        block_mask(s, jb, n, p, window, sg);
                        float bm = -INFINITY;
                        for (size_t t = 0; t < ATT_BLK; t++) bm = s[t] > bm ? s[t] : bm;
                        if (bm == -INFINITY) continue;
                        float m = L[i];
                        if (bm > m) {
                            float c = fexp(m - bm);
                            if (m == -INFINITY) c = 0;
                            lsum[i - i0] *= c;
                            for (size_t d = 0; d < hd; d++) oi[d] *= c;
                            m = L[i] = bm;
                        }
                        float l = 0;
#pragma omp simd reduction(+ : l)
                        for (size_t t = 0; t < ATT_BLK; t++) {
                            float e = s[t] == -INFINITY ? 0.0f : fexp(s[t] - m);
                            s[t] = e;
                            l += e;
                        }
                        lsum[i - i0] += l;
                        size_t t = 0; /* four keys per pass over the output row */
                        for (; t + 4 <= n; t += 4) {
                            const float *v0 = vb + (jb + t) * kvs, *v1 = v0 + kvs;
                            const float *v2 = v1 + kvs, *v3 = v2 + kvs;
                            float e0 = s[t], e1 = s[t + 1], e2 = s[t + 2], e3 = s[t + 3];
#pragma omp simd
                            for (size_t d = 0; d < hd; d++)
                                oi[d] += e0 * v0[d] + e1 * v1[d] + e2 * v2[d] + e3 * v3[d];
                        }
                        for (; t < n; t++) {
                            const float *vj = vb + (jb + t) * kvs;
                            float e = s[t];
#pragma omp simd
                            for (size_t d = 0; d < hd; d++) oi[d] += e * vj[d];
                        }
                    }
                }
                for (size_t i = i0; i < i0 + ni; i++) {
                    float *oi = out + ((b * Tq + i) * nh + h) * hd, l = lsum[i - i0];
                    float inv = l > 0 ? 1.0f / l : 0.0f;
                    for (size_t d = 0; d < hd; d++) oi[d] *= inv;
                    L[i] = l > 0 ? L[i] + logf(l) : -INFINITY;
                }
            }
        }
}

/* Backward split over (batch, kv head): each task owns the dk/dv rows of its kv head, so query
 * heads sharing a kv head (GQA) never race. Per key block: K and V transposed once; query rows go
 * in groups of ATT_RB of one head: P and dP as vector FMAs over the keys, then every dV/dK row of
 * the block is read and written once per group (ATT_RB products per element), and dQ takes the
 * keys ATT_RB at a time. */
#define ATT_RB 4 /* the updates below are written out for four rows */
_Static_assert(ATT_RB == 4, "attention_backward unrolls four rows");

static void attention_backward(float *dq, float *dk, float *dv, const float *dout,
                               const float *out, const float *lse, const float *q, const float *k,
                               const float *v, const int32_t *seg, float scale, int window,
                               size_t B, size_t Tq, size_t Tk, size_t nh, size_t nkv, size_t hd) {
    size_t group = nh / nkv, kvs = nkv * hd;
    if (hd > ATT_HD_MAX) {
        st_ref_attention_backward(dq, dk, dv, dout, out, lse, q, k, v, seg, scale, window, B, Tq,
                                  Tk, nh, nkv, hd);
        return;
    }
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (size_t b = 0; b < B; b++)
        for (size_t kh = 0; kh < nkv; kh++) {
            const float *kb = k + b * Tk * kvs + kh * hd, *vb = v + b * Tk * kvs + kh * hd;
            float *dkb = dk + b * Tk * kvs + kh * hd, *dvb = dv + b * Tk * kvs + kh * hd;
            const int32_t *sg = seg ? seg + b * Tk : NULL;
            float kt[ATT_HD_MAX * ATT_BLK], vt[ATT_HD_MAX * ATT_BLK];
            float P[ATT_RB][ATT_BLK], dS[ATT_RB][ATT_BLK], zero[ATT_HD_MAX];
            memset(zero, 0, sizeof zero);
            for (size_t j = 0; j < Tk; j++) {
                memset(dkb + j * kvs, 0, hd * sizeof(float));
                memset(dvb + j * kvs, 0, hd * sizeof(float));
            }
            for (size_t h = kh * group; h < (kh + 1) * group; h++)
                for (size_t i = 0; i < Tq; i++)
                    memset(dq + ((b * Tq + i) * nh + h) * hd, 0, hd * sizeof(float));
            size_t pmax = Tk - 1, pmin = Tk - Tq;
            size_t jlo = window > 0 && pmin + 1 > (size_t)window ? pmin + 1 - (size_t)window : 0;
            for (size_t jb = jlo - jlo % ATT_BLK; jb <= pmax; jb += ATT_BLK) {
                size_t n = Tk - jb < ATT_BLK ? Tk - jb : ATT_BLK;
                transpose_block(kt, kb, jb, n, kvs, hd);
                transpose_block(vt, vb, jb, n, kvs, hd);
                for (size_t h = kh * group; h < (kh + 1) * group; h++)
                    for (size_t i0 = 0; i0 < Tq; i0 += ATT_RB) {
                        /* the group's rows: P, dS (zero rows for rows that see no key here) */
                        const float *dyr[ATT_RB], *qr[ATT_RB];
                        float *dqr[ATT_RB];
                        int any = 0;
                        for (size_t r = 0; r < ATT_RB; r++) {
                            size_t i = i0 + r, p = Tk - Tq + i, j0, j1;
                            dyr[r] = qr[r] = zero;
                            dqr[r] = NULL;
                            memset(P[r], 0, sizeof P[r]);
                            memset(dS[r], 0, sizeof dS[r]);
                            if (i >= Tq) continue;
                            key_range(p, window, &j0, &j1);
                            size_t off = ((b * Tq + i) * nh + h) * hd;
                            float L = lse[(b * nh + h) * Tq + i];
                            if (jb >= j1 || jb + n <= j0 || L == -INFINITY) continue;
                            const float *dy = dout + off, *oi = out + off;
                            float D = 0;
#pragma omp simd reduction(+ : D)
                            for (size_t d = 0; d < hd; d++) D += dy[d] * oi[d];
                            float *s = P[r], *dp = dS[r];
                            block_scores(s, q + off, kt, hd, scale);
                            block_mask(s, jb, n, p, window, sg);
                            block_scores(dp, dy, vt, hd, 1.0f);
#pragma omp simd
                            for (size_t t = 0; t < ATT_BLK; t++) {
                                float pj = s[t] == -INFINITY ? 0.0f : fexp(s[t] - L);
                                s[t] = pj;
                                dp[t] = pj * (dp[t] - D) * scale;
                            }
                            dyr[r] = dy;
                            qr[r] = q + off;
                            dqr[r] = dq + off;
                            any = 1;
                        }
                        if (!any) continue;
                        /* dV_t += sum_r P[r][t] dy_r, dK_t += sum_r dS[r][t] q_r */
                        for (size_t t = 0; t < n; t++) {
                            float p0 = P[0][t], p1 = P[1][t], p2 = P[2][t], p3 = P[3][t];
                            float s0 = dS[0][t], s1 = dS[1][t], s2 = dS[2][t], s3 = dS[3][t];
                            if (p0 == 0 && p1 == 0 && p2 == 0 && p3 == 0) continue;
                            float *dvj = dvb + (jb + t) * kvs, *dkj = dkb + (jb + t) * kvs;
                            const float *y0 = dyr[0], *y1 = dyr[1], *y2 = dyr[2], *y3 = dyr[3];
                            const float *a0 = qr[0], *a1 = qr[1], *a2 = qr[2], *a3 = qr[3];
#pragma omp simd
                            for (size_t d = 0; d < hd; d++) {
                                dvj[d] += p0 * y0[d] + p1 * y1[d] + p2 * y2[d] + p3 * y3[d];
                                dkj[d] += s0 * a0[d] + s1 * a1[d] + s2 * a2[d] + s3 * a3[d];
                            }
                        }
                        /* dQ_r += sum_t dS[r][t] k_t, four keys per pass */
                        for (size_t r = 0; r < ATT_RB; r++) {
                            float *dqi = dqr[r];
                            if (!dqi) continue;
                            const float *ds = dS[r];
                            size_t t = 0;
                            for (; t + 4 <= n; t += 4) {
                                const float *k0 = kb + (jb + t) * kvs, *k1 = k0 + kvs;
                                const float *k2 = k1 + kvs, *k3 = k2 + kvs;
                                float c0 = ds[t], c1 = ds[t + 1], c2 = ds[t + 2], c3 = ds[t + 3];
#pragma omp simd
                                for (size_t d = 0; d < hd; d++)
                                    dqi[d] += c0 * k0[d] + c1 * k1[d] + c2 * k2[d] + c3 * k3[d];
                            }
                            for (; t < n; t++) {
                                const float *k0 = kb + (jb + t) * kvs;
                                float c0 = ds[t];
#pragma omp simd
                                for (size_t d = 0; d < hd; d++) dqi[d] += c0 * k0[d];
                            }
                        }
                    }
            }
        }
}

#if defined(__x86_64__)
#include <immintrin.h>
/* fexp on 16 lanes (same polynomial) */
__attribute__((target("avx512f"))) static inline __m512 fexp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f));
    __m512 n = _mm512_roundscale_ps(
        _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, n);
}

__attribute__((target("avx512f"))) static float row_lse_avx512(const float *x, size_t V) {
    __m512 vm = _mm512_set1_ps(-INFINITY);
    size_t v = 0;
    for (; v + 16 <= V; v += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(x + v));
    float m = _mm512_reduce_max_ps(vm);
    for (; v < V; v++) m = x[v] > m ? x[v] : m;
    __m512 vs = _mm512_setzero_ps(), mm = _mm512_set1_ps(m);
    for (v = 0; v + 16 <= V; v += 16) vs = _mm512_add_ps(vs, fexp16(_mm512_sub_ps(_mm512_loadu_ps(x + v), mm)));
    float s = _mm512_reduce_add_ps(vs);
    for (; v < V; v++) s += fexp(x[v] - m);
    return m + logf(s);
}

/* d = scale * exp(x - lse) */
__attribute__((target("avx512f"))) static void softmax_scaled_avx512(float *d, const float *x,
                                                                     float lse, float scale,
                                                                     size_t V) {
    __m512 l = _mm512_set1_ps(lse), sc = _mm512_set1_ps(scale);
    size_t v = 0;
    for (; v + 16 <= V; v += 16)
        _mm512_storeu_ps(d + v, _mm512_mul_ps(sc, fexp16(_mm512_sub_ps(_mm512_loadu_ps(x + v), l))));
    for (; v < V; v++) d[v] = scale * fexp(x[v] - lse);
}
#endif

static int have_avx512(void) {
#if defined(__x86_64__)
    static int v = -1;
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512f");
    }
    return v;
#else
    return 0;
#endif
}

/* log sum_v exp(x_v): max, then the sum of fexp */
static float row_lse(const float *x, size_t V) {
#if defined(__x86_64__)
    if (have_avx512()) return row_lse_avx512(x, V);
#endif
    float m = -INFINITY;
    for (size_t v = 0; v < V; v++) m = x[v] > m ? x[v] : m;
    double s = 0;
    for (size_t v = 0; v < V; v++) s += fexp(x[v] - m);
    return m + (float)log(s);
}

static void softmax_scaled(float *d, const float *x, float lse, float scale, size_t V) {
#if defined(__x86_64__)
    if (have_avx512()) {
        softmax_scaled_avx512(d, x, lse, scale, V);
        return;
    }
#endif
    for (size_t v = 0; v < V; v++) d[v] = scale * fexp(x[v] - lse);
}

static void crossentropy_forward(float *losses, const float *logits, const int32_t *targets,
                                 size_t N, size_t V) {
#pragma omp parallel for schedule(static) if (N * V > 65536)
    for (size_t n = 0; n < N; n++)
        losses[n] = targets[n] < 0 ? 0.0f : row_lse(logits + n * V, V) - logits[n * V + targets[n]];
}

static void crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets,
                                  float dloss, size_t N, size_t V) {
#pragma omp parallel for schedule(static) if (N * V > 65536)
    for (size_t n = 0; n < N; n++) {
        float *d = dlogits + n * V;
        const float *x = logits + n * V;
        if (targets[n] < 0) {
            memset(d, 0, V * sizeof(float));
            continue;
        }
        float lse = row_lse(x, V), xt = x[targets[n]];
        softmax_scaled(d, x, lse, dloss, V);
        d[targets[n]] = dloss * (fexp(xt - lse) - 1.0f);
    }
}

/* LoRA with BLAS: xa = inp a^T (N x r), out += scale xa b^T. */
static void lora_forward(float *out, float *xa, const float *inp, const float *a, const float *b,
                         float scale, size_t N, size_t C, size_t OC, size_t r) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)r, (int)C, 1.0f, inp, (int)C,
                a, (int)C, 0.0f, xa, (int)r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OC, (int)r, scale, xa,
                (int)r, b, (int)r, 1.0f, out, (int)OC);
}

static void lora_backward(float *dinp, float *da, float *db, float *dxa, const float *dout,
                          const float *inp, const float *xa, const float *a, const float *b,
                          float scale, size_t N, size_t C, size_t OC, size_t r) {
    // db (OC, r) += scale dout^T (OC, N) xa (N, r)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)OC, (int)r, (int)N, scale, dout,
                (int)OC, xa, (int)r, 1.0f, db, (int)r);
    // dxa (N, r) = scale dout (N, OC) b (OC, r)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)r, (int)OC, scale, dout,
                (int)OC, b, (int)r, 0.0f, dxa, (int)r);
    // da (r, C) += dxa^T (r, N) inp (N, C)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)r, (int)C, (int)N, 1.0f, dxa, (int)r,
                inp, (int)C, 1.0f, da, (int)C);
    if (dinp) // dinp (N, C) += dxa (N, r) a (r, C)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)C, (int)r, 1.0f, dxa,
                    (int)r, a, (int)C, 1.0f, dinp, (int)C);
}

static const struct st_kernels cpu_table = {
    .name = "cpu",
    .embedding_forward = st_ref_embedding_forward,
    .embedding_backward = st_ref_embedding_backward,
    .rmsnorm_forward = rmsnorm_forward,
    .rmsnorm_backward = st_ref_rmsnorm_backward,
    .rope_forward = rope_forward,
    .rope_backward = rope_backward,
    .attention_forward = attention_forward,
    .attention_backward = attention_backward,
    .glu_forward = glu_forward,
    .glu_backward = glu_backward,
    .linear_forward = linear_forward,
    .linear_backward = linear_backward,
    .lora_forward = lora_forward,
    .lora_backward = lora_backward,
    .crossentropy_forward = crossentropy_forward,
    .crossentropy_backward = crossentropy_backward,
};

const struct st_kernels *st_kernels_cpu(void) { return &cpu_table; }
