/* attention.c: the cpu backend's causal flash attention (contract: st_kernels.attention_forward
 * and _backward in include/streamtune/kernels.h), an AVX-512 register-blocked kernel with a
 * portable fallback.
 *
 * DESIGN. Work is split over (batch, head) in the forward and (batch, kv head) in the backward: a
 * backward task owns the dk/dv rows of its kv head, so query heads that share it (GQA) never race
 * and no float is added atomically. Every output element is summed by one task in an order fixed
 * by the shapes alone: the results are the same for any thread count.
 *
 * The portable kernel (the one before issue 8) takes one query row at a time against key blocks
 * transposed once per block; its inner loops do one vector load per FMA.
 *
 * The AVX-512 kernel (hd % 16 == 0, hd <= 256) goes in blocks of KB = 64 keys and micro-tiles of
 * MR = 6 query rows. Everything is one register-blocked micro-kernel, mk(): C (R x 16 NV) (+)=
 * A (R x K) B (K x 16 NV), A's entries broadcast, B's rows loaded as NV zmm, R x NV <= 24
 * accumulators (R <= 6, NV <= 4), so each FMA reads ~0.4 vectors instead of one:
 *   S  = Q_tile K_blk^T   (A = q rows, B = K_blk transposed once per block to hd x 64)
 *   dP = dO_tile V_blk^T  (B = V_blk transposed)
 *   O  = c O + P V_blk, dQ += dS K_blk   (A = P or dS rows, B = V or K rows, hd in strips of 64)
 *   dV += P^T dO, dK += dS^T Q           (R = 6 keys, A = columns of a P/dS panel)
 * S and dP are computed only up to the tile's last visible key (in steps of 16), P V and dS K only
 * over the keys the tile sees, dV and dK only over the rows that see the keys.
 * Forward: per chunk of up to QC query rows, for each key block the rows that see it go by
 * micro-tiles: scores, mask (causal/window as a 64-bit row mask, segments by a vector compare;
 * blocks no row of the tile sees are skipped), online softmax with a vectorised exp (the same
 * polynomial as fexp), then O rows (in `out`) rescaled and updated. Backward: per chunk, D =
 * rowsum(dO * O) once per row; per key block (K and V transposed once for all the heads) and
 * head, panels of up to QS rows: P = exp(S scale - lse) and dS = P (dP - D) scale per
 * micro-tile, then dV, dK for the block's keys six at a time over the panel's rows, and dQ for
 * the panel's rows. dq, dk, dv are zeroed first and accumulated in place.
 *
 * With --compute bf16 on AMX CPUs (mode 2: bf16_forward) the products run on the tile unit: S,
 * dP and P V on tiles of 16 query rows, dQ on the panel's dS rows as pairs of keys, dV and dK on
 * P and dS paired over the panel's rows and transposed (keys x pairs); operands rounded to BF16
 * as in the vdpbf16ps path, softmax, P and dS in float. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "../ref/ref.h"
#include "attention.h"
#include "fexp.h"
#ifdef __x86_64__
#include "transpose16.h"
#endif
#include "streamtune/bf16.h"
#include "streamtune/core.h"

/* ---------------------------------------------------------------- portable kernel
 * One query row at a time. Keys go in blocks of ATT_BLK: the block's K (and V in the backward) is
 * transposed once into hd x ATT_BLK scratch on the stack, so a query row's scores for the whole
 * block are plain vector FMAs over the keys (no horizontal sums); the running max/sum per query
 * row is rescaled once per block. */
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

void st_cpu_attention_forward_portable(float *out, float *lse, const float *q, const float *k,
                                       const float *v, const int32_t *seg, float scale,
                                       int window, size_t B, size_t Tq, size_t Tk, size_t nh,
                                       size_t nkv, size_t hd) {
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
_Static_assert(ATT_RB == 4, "the portable backward unrolls four rows");

void st_cpu_attention_backward_portable(float *dq, float *dk, float *dv, const float *dout,
                                        const float *out, const float *lse, const float *q,
                                        const float *k, const float *v, const int32_t *seg,
                                        float scale, int window, size_t B, size_t Tq, size_t Tk,
                                        size_t nh, size_t nkv, size_t hd) {
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

/* ---------------------------------------------------------------- AVX-512 kernel */
#if defined(__x86_64__)
#include <immintrin.h>
#define X86 1
#define AVX512 __attribute__((target("avx512f")))
#define AVX512BF __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define INLINE static inline __attribute__((always_inline))

#define MR 6      /* query rows (or keys, for dV/dK) per micro-tile */
#define KB 64     /* keys per block: 4 zmm of scores per row */
#define QC 512    /* forward: query rows per chunk (running max and sum on the stack) */
#define QS 64     /* backward: query rows per P/dS panel (32: 2.5% slower) */
#define DMAX 8192 /* backward: D values per chunk, over all query heads of the kv head */

/* fexp on 16 lanes for the arguments here: x <= ~0 (scores minus the running max, or minus the
 * lse), so no clamps; -inf gives NaN, which every caller masks to 0. */
AVX512 INLINE __m512 exp16(__m512 x) { return fexp16_nc(x); }

/* The micro-kernels' last step: C (+)= the accumulators. mode 0: C = acc; 1: C += acc; 2: C =
 * cs[r] C + acc. The old C is added after the k loop, so that its loads (rows of out, dq, dk,
 * dv, often not in L1) do not hold up the first FMAs. */
AVX512 INLINE void mk_store(const int R, const int NV, const int mode, __m512 acc[MR][4],
                            float *c, size_t crs, const float *cs) {
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            float *cv = c + r * crs + 16 * v;
            if (mode == 1) acc[r][v] = _mm512_add_ps(acc[r][v], _mm512_loadu_ps(cv));
            if (mode == 2)
                acc[r][v] = _mm512_fmadd_ps(_mm512_loadu_ps(cv), _mm512_set1_ps(cs[r]), acc[r][v]);
            _mm512_storeu_ps(cv, acc[r][v]);
        }
}

/* The micro-kernel. C (R, 16 NV) rows at c + r crs; A[r][k] = a[r ars + k aks]; B row k at
 * b + k bks (16 NV floats); mode as mk_store. R, NV and mode are constants at every call
 * (through the MK_FN dispatchers): the accumulators stay in registers. */
AVX512 INLINE void mk(const int R, const int NV, const int mode, size_t K, const float *a,
                      size_t ars, size_t aks, const float *b, size_t bks, float *c, size_t crs,
                      const float *cs) {
    __m512 acc[MR][4];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
    for (size_t k = 0; k < K; k++) {
        const float *bk = b + k * bks, *ak = a + k * aks;
        __m512 bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) bv[v] = _mm512_loadu_ps(bk + 16 * v);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            __m512 x = _mm512_set1_ps(ak[r * ars]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(x, bv[v], acc[r][v]);
        }
    }
    mk_store(R, NV, mode, acc, c, crs, cs);
}

/* The BF16 micro-kernel (AVX512_BF16): mk with k in pairs. A[r][k2] is a 32-bit pair of bf16
 * (k = 2 k2 in the low half, 2 k2 + 1 in the high half) at a[r ars + k2 aks]; B's pair row k2 at
 * b + k2 bks holds 16 NV such pairs, one per column; one vdpbf16ps per (row, 16 columns, pair):
 * twice the FMA rate of mk, products summed in float. */
AVX512BF INLINE void mkb(const int R, const int NV, const int mode, size_t K2, const uint32_t *a,
                         size_t ars, size_t aks, const uint32_t *b, size_t bks, float *c,
                         size_t crs, const float *cs) {
    __m512 acc[MR][4];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
    for (size_t k = 0; k < K2; k++) {
        const uint32_t *bk = b + k * bks, *ak = a + k * aks;
        __m512bh bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) bv[v] = (__m512bh)_mm512_loadu_si512(bk + 16 * v);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            __m512bh x = (__m512bh)_mm512_set1_epi32((int)ak[r * ars]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x, bv[v]);
        }
    }
    mk_store(R, NV, mode, acc, c, crs, cs);
}

#define MK_CASE(F, R, NV, MODE)                                                               \
    case (R) * 4 + (NV) - 1:                                                                  \
        F(R, NV, MODE, K, a, ars, aks, b, bks, c, crs, cs);                                   \
        break;
#define MK_ROW(F, R, MODE)                                                                    \
    MK_CASE(F, R, 1, MODE) MK_CASE(F, R, 2, MODE) MK_CASE(F, R, 3, MODE) MK_CASE(F, R, 4, MODE)
/* name(R in 1..MR, NV in 1..4, ...): micro-kernel F (mk, or mkb with T = uint32_t) with
 * constant R, NV and mode */
#define MK_FN(ATTR, name, F, T, MODE)                                                         \
    ATTR static void name(size_t R, size_t NV, size_t K, const T *a, size_t ars, size_t aks,  \
                          const T *b, size_t bks, float *c, size_t crs, const float *cs) {    \
        switch (R * 4 + NV - 1) {                                                             \
            MK_ROW(F, 1, MODE)                                                                \
            MK_ROW(F, 2, MODE)                                                                \
            MK_ROW(F, 3, MODE)                                                                \
            MK_ROW(F, 4, MODE)                                                                \
            MK_ROW(F, 5, MODE)                                                                \
            MK_ROW(F, 6, MODE)                                                                \
        default:                                                                              \
            break;                                                                            \
        }                                                                                     \
    }
_Static_assert(MR == 6, "MK_FN lists R = 1..6");
_Static_assert(MR % 2 == 0 && QS % 2 == 0, "the BF16 backward pairs a panel's rows within tiles");
MK_FN(AVX512, mk_set, mk, float, 0)
MK_FN(AVX512, mk_add, mk, float, 1)
MK_FN(AVX512, mk_scale_add, mk, float, 2)
MK_FN(AVX512BF, mkb_set, mkb, uint32_t, 0)
MK_FN(AVX512BF, mkb_add, mkb, uint32_t, 1)
MK_FN(AVX512BF, mkb_scale_add, mkb, uint32_t, 2)

/* C (rows, hd) (+)= A (rows, K) B (K, hd) in strips of 64 columns (hd % 16 == 0) */
AVX512 static void mk_strips(int mode, size_t R, size_t hd, size_t K, const float *a, size_t ars,
                             size_t aks, const float *b, size_t bks, float *c, size_t crs,
                             const float *cs) {
    for (size_t d0 = 0; d0 < hd; d0 += 64) {
        size_t nv = hd - d0 >= 64 ? 4 : (hd - d0) / 16;
        if (mode == 1)
            mk_add(R, nv, K, a, ars, aks, b + d0, bks, c + d0, crs, cs);
        else
            mk_scale_add(R, nv, K, a, ars, aks, b + d0, bks, c + d0, crs, cs);
    }
}

/* kt (hd x KB) = rows 0..n-1 of x (stride kvs) transposed; columns >= n zero, in 16 x 16 tiles
 * through registers (tr16) */
AVX512 static void transpose_kb(float *kt, const float *x, size_t n, size_t kvs, size_t hd) {
    for (size_t t0 = 0; t0 < KB; t0 += 16)
        for (size_t d0 = 0; d0 < hd; d0 += 16) {
            __m512 a[16], o[16];
            for (size_t i = 0; i < 16; i++)
                a[i] = t0 + i < n ? _mm512_loadu_ps(x + (t0 + i) * kvs + d0) : _mm512_setzero_ps();
            tr16(a, o);
            for (size_t j = 0; j < 16; j++) _mm512_storeu_ps(kt + (d0 + j) * KB + t0, o[j]);
        }
}

/* ---- the BF16 path (st_cpu_attention_*_bf16): the five products through mkb, softmax and
 * everything else in float. Operands are rounded to bf16 (round to nearest even) as they are
 * packed, once per key block (K, V) or per tile/panel (Q, dO rows, P, dS): A operands as pairs
 * along their k (rows_bf), B operands as pair rows (pairs_bf, or K^T through transpose_kb). */

/* mkb_strips: mk_strips for mkb (K2 pairs; b's pair rows have bks units, one per column) */
AVX512BF static void mkb_strips(int mode, size_t R, size_t hd, size_t K2, const uint32_t *a,
                                size_t ars, size_t aks, const uint32_t *b, size_t bks, float *c,
                                size_t crs, const float *cs) {
    for (size_t d0 = 0; d0 < hd; d0 += 64) {
        size_t nv = hd - d0 >= 64 ? 4 : (hd - d0) / 16;
        if (mode == 1)
            mkb_add(R, nv, K2, a, ars, aks, b + d0, bks, c + d0, crs, cs);
        else
            mkb_scale_add(R, nv, K2, a, ars, aks, b + d0, bks, c + d0, crs, cs);
    }
}

/* Rows of q, K, V, O and dO are qs or kvs floats apart (2304-3072 bytes at dim 576-768): a stride
 * past what the L1 stride prefetcher follows (2 KiB), and each row only 2-4 lines, so reading
 * them row by row waited on memory. PF_ROWS rows ahead are prefetched into L2 instead. */
#define PF_ROWS 4
INLINE void prefetch_row(const float *r, size_t w) {
    for (size_t j = 0; j < w; j += 16) _mm_prefetch((const char *)(r + j), _MM_HINT_T1);
}

/* d row i (stride ds units) = row i of x (stride xs) as w / 2 pairs (2 j, 2 j + 1), for
 * i < n; w % 16 == 0 */
AVX512BF static void rows_bf(uint32_t *d, size_t ds, const float *x, size_t n, size_t xs,
                             size_t w) {
    for (size_t i = 0; i < n; i++) {
        const float *r = x + i * xs;
        if (i + PF_ROWS < n) prefetch_row(r + PF_ROWS * xs, w);
        uint32_t *o = d + i * ds;
        size_t j = 0;
        for (; j + 32 <= w; j += 32) /* cvtne2ps_pbh(a, b): b's values in the low half */
            _mm512_storeu_si512(o + j / 2, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(r + j + 16),
                                                                       _mm512_loadu_ps(r + j)));
        if (j < w)
            _mm256_storeu_si256((__m256i *)(o + j / 2),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r + j)));
    }
}

/* 16 units (bf16 of a[j], of b[j]) for j < 16: cvtne2ps gives a's 16 values then b's, vpermw
 * interleaves them */
AVX512BF INLINE __m512i pair16(__m512 a, __m512 b) {
    const __m512i il = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                        24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
                                        16, 0);
    return _mm512_permutexvar_epi16(il, (__m512i)_mm512_cvtne2ps_pbh(b, a));
}

/* d pair row p (stride ds units) for p < np: unit j = (bf16 of x[2p][j], of x[2p + 1][j]) for
 * j < w (rows of x at stride xs; rows >= n read as 0); w % 16 == 0. */
AVX512BF static void pairs_bf(uint32_t *d, size_t ds, const float *x, size_t n, size_t xs,
                              size_t np, size_t w) {
    for (size_t p = 0; p < np; p++) {
        const float *r0 = x + 2 * p * xs, *r1 = r0 + xs;
        int h0 = 2 * p < n, h1 = 2 * p + 1 < n;
        if (2 * p + PF_ROWS + 1 < n) {
            prefetch_row(r0 + PF_ROWS * xs, w);
            prefetch_row(r1 + PF_ROWS * xs, w);
        }
        for (size_t j = 0; j < w; j += 16) {
            __m512 a = h0 ? _mm512_loadu_ps(r0 + j) : _mm512_setzero_ps();
            __m512 b = h1 ? _mm512_loadu_ps(r1 + j) : _mm512_setzero_ps();
            _mm512_storeu_si512(d + p * ds + j, pair16(a, b));
        }
    }
}

/* kt2 (hd / 2 pair rows x KB) = the block's rows 0..n-1 of x (stride kvs) as pairs along hd,
 * transposed (columns >= n zero): the B operand of Q K^T and dO V^T. xb: KB x hd / 2 scratch. */
AVX512BF static void pack_kt_bf(uint32_t *kt2, uint32_t *xb, const float *x, size_t n,
                                size_t kvs, size_t hd) {
    rows_bf(xb, hd / 2, x, n, kvs, hd);
    transpose_kb((float *)kt2, (const float *)xb, n, hd / 2, hd / 2); /* moves bits only */
}

/* Bit t set iff query position p sees key jb + t by causality and window (t < n). */
static uint64_t vis_mask(size_t p, size_t jb, size_t n, int window) {
    if (p < jb) return 0;
    size_t hi = p - jb + 1 < n ? p - jb + 1 : n, lo = 0;
    if (window > 0 && p + 1 > jb + (size_t)window) lo = p + 1 - (size_t)window - jb;
    if (lo >= hi) return 0;
    return (hi >= 64 ? ~0ull : (1ull << hi) - 1) & ~((1ull << lo) - 1);
}

/* The block's segment ids (4 zmm, 0 past n; all 0 without seg) and, per row, the keys in the
 * row's segment. */
AVX512 static void seg_load(__m512i sv[4], const int32_t *sg, size_t jb, size_t n) {
    for (int v = 0; v < 4; v++) {
        size_t t0 = 16 * (size_t)v, m = n > t0 ? n - t0 : 0;
        __mmask16 k = m >= 16 ? 0xffff : (__mmask16)((1u << m) - 1);
        sv[v] = sg ? _mm512_maskz_loadu_epi32(k, sg + jb + t0) : _mm512_setzero_si512();
    }
}
AVX512 static uint64_t seg_mask(const __m512i sv[4], int32_t id) {
    __m512i x = _mm512_set1_epi32(id);
    uint64_t m = 0;
    for (int v = 0; v < 4; v++) m |= (uint64_t)_mm512_cmpeq_epi32_mask(sv[v], x) << (16 * v);
    return m;
}

/* vms[r] = the keys of the block [jb, jb + n) that query position p0 + r sees, for r < rc
 * (causality, window, segment); returns whether any row sees one */
AVX512 static int tile_vis(uint64_t *vms, size_t rc, size_t p0, size_t jb, size_t n, int window,
                           const int32_t *sg, const __m512i sv[4]) {
    int any = 0;
    for (size_t r = 0; r < rc; r++) {
        uint64_t vm = vis_mask(p0 + r, jb, n, window);
        if (sg && vm) vm &= seg_mask(sv, sg[p0 + r]);
        vms[r] = vm;
        any |= vm != 0;
    }
    return any;
}

/* Rows i of [i0, i1) (query positions off + i) that see some key of the block [jb, jb + n). */
static void block_rows(size_t *ra, size_t *rb, size_t i0, size_t i1, size_t off, size_t jb,
                       size_t n, int window) {
    *ra = jb > off && jb - off > i0 ? jb - off : i0;
    *rb = i1;
    if (window > 0) { /* p < jb + n - 1 + window */
        size_t e = jb + n - 1 + (size_t)window, ie = e > off ? e - off : 0;
        if (ie < *rb) *rb = ie;
    }
}

/* Keys [*tlo, *thi) of the block seen by some query position in [p0, p1]. */
static void tile_keys(size_t *tlo, size_t *thi, size_t p0, size_t p1, size_t jb, size_t n,
                      int window) {
    *thi = p1 + 1 - jb < n ? p1 + 1 - jb : n;
    *tlo = window > 0 && p0 + 1 > jb + (size_t)window ? p0 + 1 - (size_t)window - jb : 0;
}

AVX512 static float dot16(const float *x, const float *y, size_t hd) {
    __m512 s = _mm512_setzero_ps();
    for (size_t d = 0; d < hd; d += 16)
        s = _mm512_fmadd_ps(_mm512_loadu_ps(x + d), _mm512_loadu_ps(y + d), s);
    return _mm512_reduce_add_ps(s);
}

/* Lane r (r < 8) of the result: the maximum (max != 0) or the sum of the 16 lanes of x[r]. The
 * 8 reductions side by side: 128-bit halves, then quarters, then within the 4-lane quarters
 * (15 shuffles for 8 rows instead of 8 dependent chains of 6). */
AVX512 INLINE __m512 hred8(const __m512 x[8], int max) {
#define OP(a, b) (max ? _mm512_max_ps(a, b) : _mm512_add_ps(a, b))
    __m512 b[4], c[2];
    for (int i = 0; i < 4; i++) /* b[i]: x[2i]'s 8-lane partial in quarters 0-1, x[2i+1]'s 2-3 */
        b[i] = OP(_mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0x44),
                  _mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0xEE));
    for (int j = 0; j < 2; j++) /* c[j] quarter q: x[4j + q]'s 4-lane partial */
        c[j] = OP(_mm512_shuffle_f32x4(b[2 * j], b[2 * j + 1], 0x88),
                  _mm512_shuffle_f32x4(b[2 * j], b[2 * j + 1], 0xDD));
    /* quarter q: (x[q] twice, x[4 + q] twice), then each lane pair reduced */
    __m512 u = OP(_mm512_shuffle_ps(c[0], c[1], 0x44), _mm512_shuffle_ps(c[0], c[1], 0xEE));
    u = OP(u, _mm512_permute_ps(u, 0xB1));
#undef OP
    return _mm512_permutexvar_ps(_mm512_set_epi32(15, 15, 15, 15, 15, 15, 15, 15, 14, 10, 6, 2,
                                                  12, 8, 4, 0),
                                 u);
}

/* A key block's B operands: F32 K^T (and V^T in the backward), or the BF16 path's K^T and V^T
 * pair-interleaved (kt2, vt2: hd / 2 x KB), K or V paired over keys (kv2: KB / 2 x hd) and the
 * rows_bf scratch of pack_kt_bf. */
union blk {
    struct {
        float kt[ATT_HD_MAX * KB], vt[ATT_HD_MAX * KB];
    } f;
    struct {
        uint32_t kt2[ATT_HD_MAX / 2 * KB], vt2[ATT_HD_MAX / 2 * KB], kv2[KB / 2 * ATT_HD_MAX],
            xb[KB * ATT_HD_MAX / 2];
    } b;
};

/* The forward tile's softmax step, its rc rows side by side, NV vectors of scores (P) per row:
 * each row's block maximum of its visible (vms) scaled scores, all rows' maxima at once (hred8),
 * the running max M and the rescale factors cf, then each row's exponentials (into P) and sum,
 * and all rows' sums at once into lsum. NV is constant at every call (the switch in
 * forward_task), so e[] stays in registers. */
AVX512 INLINE void softmax_step(const int NV, float *P, float *M, float *lsum, float *cf, size_t rc,
                                const uint64_t *vms, __m512 vscale) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 red[8];
#pragma GCC unroll 8
    for (int r = 0; r < 8; r++) {
        red[r] = ninf;
        if ((size_t)r >= rc) continue;
        uint64_t vm = vms[r];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            __mmask16 mv = (__mmask16)(vm >> (16 * v));
            red[r] = _mm512_max_ps(
                red[r],
                _mm512_mask_mul_ps(ninf, mv, _mm512_loadu_ps(P + r * KB + 16 * v), vscale));
        }
    }
    /* lane r: row r's old and new running max, and c = exp(old - new) (1 when unchanged, 0
     * from -inf) */
    __mmask16 rk = (__mmask16)((1u << rc) - 1);
    __m512 mo = _mm512_mask_loadu_ps(ninf, rk, M);
    __m512 mn = _mm512_max_ps(mo, hred8(red, 1));
    __m512 cv = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(mo, ninf, _CMP_NEQ_UQ),
                                    exp16(_mm512_sub_ps(mo, mn)));
    cv = _mm512_mask_mov_ps(cv, _mm512_cmp_ps_mask(mo, mn, _CMP_EQ_OQ), _mm512_set1_ps(1.0f));
#pragma GCC unroll 8
    for (int r = 0; r < 8; r++) {
        red[r] = _mm512_setzero_ps();
        if ((size_t)r >= rc) continue;
        uint64_t vm = vms[r];
        float *pr = P + r * KB;
        if (!vm) {
            memset(pr, 0, KB * sizeof(float));
            continue;
        }
        __m512 mnv = _mm512_permutexvar_ps(_mm512_set1_epi32(r), mn), e[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            __mmask16 mv = (__mmask16)(vm >> (16 * v));
            e[v] = _mm512_maskz_mov_ps(
                mv, exp16(_mm512_fmsub_ps(_mm512_loadu_ps(pr + 16 * v), vscale, mnv)));
            red[r] = _mm512_add_ps(red[r], e[v]);
        }
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) _mm512_storeu_ps(pr + 16 * v, e[v]);
    }
    __m512 lo = _mm512_mask_loadu_ps(_mm512_setzero_ps(), rk, lsum);
    _mm512_mask_storeu_ps(lsum, rk, _mm512_fmadd_ps(lo, cv, hred8(red, 0)));
    _mm512_mask_storeu_ps(M, rk, mn);
    _mm512_mask_storeu_ps(cf, rk, cv);
}

/* ---- AMX (CPUs with AMX-BF16, whose vdpbf16ps issues at half the fp32 FMA rate): the BF16
 * forward's two products per tile of AT = 16 query rows on the tile unit, the rest as the BF16
 * path (the same operands: kt2, kv2, Q and P rows as pairs; softmax_step in float). Tiles 0-3:
 * C (16 rows x 16 floats each: S's 64 keys, or 64 dims of O); 4: A (16 rows x 16 pairs); 6, 7:
 * B (16 pair rows x 16 columns), loaded in turn. */
#define AT 16
#define AMXA __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))
#include "amx.h" /* TILE_LOAD: behind a compiler barrier */
AMXA static void amx_att_release(void) { _tile_release(); }
AMXA static void amx_att_config(void) { amx_config_16x64(); }

/* S (AT x KB floats, stride KB) = the rows qt (AT rows of hd / 2 pairs, stride hd / 2) times
 * the key block kt2 (hd / 2 pair rows x KB keys) */
AMXA static void amx_scores(float *S, const uint32_t *qt, const uint32_t *kt2, size_t hd) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (size_t k = 0; k < hd / 2; k += AT) {
        const uint32_t *b = kt2 + k * KB;
        TILE_LOAD(4, qt + k, hd / 2 * 4);
        TILE_LOAD(6, b, KB * 4);
        _tile_dpbf16ps(0, 4, 6);
        TILE_LOAD(7, b + 16, KB * 4);
        _tile_dpbf16ps(1, 4, 7);
        TILE_LOAD(6, b + 32, KB * 4);
        _tile_dpbf16ps(2, 4, 6);
        TILE_LOAD(7, b + 48, KB * 4);
        _tile_dpbf16ps(3, 4, 7);
    }
    _tile_stored(0, S, KB * 4);
    _tile_stored(1, S + 16, KB * 4);
    _tile_stored(2, S + 32, KB * 4);
    _tile_stored(3, S + 48, KB * 4);
}

/* C rows r < nr (<= AT; stride cs; hd columns) += A (AT rows of np pairs, stride as) B (np pair
 * rows of hd, stride bs), np % AT == 0, in strips of 64 columns; or, with cf, C = cf[r] C + A B.
 * C is loaded and stored in place when it has AT rows and no cf, else the product goes through
 * Ot (AT x 64 floats) */
AMXA static void amx_acc(float *c, size_t cs, size_t nr, size_t hd, const uint32_t *a, size_t as,
                         size_t np, const uint32_t *b, size_t bs, const float *cf, float *Ot) {
    for (size_t e0 = 0; e0 < hd; e0 += 64) {
        size_t ne = hd - e0 >= 64 ? 4 : (hd - e0) / 16; /* hd % 32 == 0: 2 or 4 */
        float *cc = c + e0;
        size_t ccs = cs;
        if (cf) { /* the product alone, from zero */
            cc = Ot, ccs = 64;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
        } else {
            if (nr < AT) { /* C's rows, then zeros */
                for (size_t r = 0; r < AT; r++) {
                    if (r < nr) memcpy(Ot + r * 64, cc + r * cs, 16 * ne * sizeof(float));
                    else memset(Ot + r * 64, 0, 16 * ne * sizeof(float));
                }
                cc = Ot, ccs = 64;
            }
            TILE_LOAD(0, cc, ccs * 4);
            TILE_LOAD(1, cc + 16, ccs * 4);
            if (ne > 2) {
                TILE_LOAD(2, cc + 32, ccs * 4);
                TILE_LOAD(3, cc + 48, ccs * 4);
            }
        }
        for (size_t k = 0; k < np; k += AT) {
            const uint32_t *bk = b + k * bs + e0;
            TILE_LOAD(4, a + k, as * 4);
            TILE_LOAD(6, bk, bs * 4);
            _tile_dpbf16ps(0, 4, 6);
            TILE_LOAD(7, bk + 16, bs * 4);
            _tile_dpbf16ps(1, 4, 7);
            if (ne > 2) {
                TILE_LOAD(6, bk + 32, bs * 4);
                _tile_dpbf16ps(2, 4, 6);
                TILE_LOAD(7, bk + 48, bs * 4);
                _tile_dpbf16ps(3, 4, 7);
            }
        }
        _tile_stored(0, cc, ccs * 4);
        _tile_stored(1, cc + 16, ccs * 4);
        if (ne > 2) {
            _tile_stored(2, cc + 32, ccs * 4);
            _tile_stored(3, cc + 48, ccs * 4);
        }
        for (size_t r = 0; cc == Ot && r < nr; r++) {
            float *o = c + e0 + r * cs;
            if (!cf) {
                memcpy(o, Ot + r * 64, 16 * ne * sizeof(float));
                continue;
            }
            __m512 f = _mm512_set1_ps(cf[r]);
            for (size_t d = 0; d < 16 * ne; d += 16)
                _mm512_storeu_ps(o + d, _mm512_fmadd_ps(_mm512_loadu_ps(o + d), f,
                                                         _mm512_loadu_ps(Ot + r * 64 + d)));
        }
    }
}

/* O's rows r < rc (stride qs) = cf[r] O + P V: pb (AT rows of KB / 2 pairs of keys, stride
 * KB / 2), kv2 (KB / 2 pair rows x hd) */
AMXA static void amx_pv(float *o, size_t qs, size_t rc, const uint32_t *pb, const uint32_t *kv2,
                        size_t hd, const float *cf, float *Ot) {
    amx_acc(o, qs, rc, hd, pb, KB / 2, KB / 2, kv2, hd, cf, Ot);
}

/* One (batch, head) of the forward: q, out rows i at + i qs; kb, vb rows j at + j kvs; L (Tq).
 * out =, L =. bf: the BF16 path (hd % 32 == 0). */
AVX512 static void forward_task(float *out, float *L, const float *q, const float *kb,
                                const float *vb, const int32_t *sg, float scale, int window,
                                size_t Tq, size_t Tk, size_t qs, size_t kvs, size_t hd, int bf,
                                uint32_t *qall) {
    _Alignas(64) union blk u;
    _Alignas(64) float P[AT * KB], Ot[AT * 64];
    _Alignas(64) uint32_t qb[AT * ATT_HD_MAX / 2], pb[AT * KB / 2];
    float *kt = u.f.kt;
    float M[QC], lsum[QC], cf[AT]; /* running max and sum per row of the chunk */
    int amx = bf == 2;
    if (amx) { /* the tiles' rows past a tile's last (never stored) read defined values */
        memset(P, 0, sizeof P);
        memset(qb, 0, sizeof qb);
        memset(pb, 0, sizeof pb);
        amx_att_config();
    }
    size_t off = Tk - Tq;
    const __m512 vscale = _mm512_set1_ps(scale);
    for (size_t i0 = 0; i0 < Tq; i0 += QC) {
        size_t ni = Tq - i0 < QC ? Tq - i0 : QC;
        for (size_t i = 0; i < ni; i++) {
            memset(out + (i0 + i) * qs, 0, hd * sizeof(float));
            M[i] = -INFINITY, lsum[i] = 0;
        }
        /* BF16: the chunk's query rows rounded once (qall: QC x hd / 2 pairs), not once per
         * key block: strided float rows of q, re-read for every block, were ~7% of the task */
        if (bf && qall) rows_bf(qall, hd / 2, q + i0 * qs, ni, qs, hd);
        if (amx && qall) memset(qall + ni * (hd / 2), 0, AT * (hd / 2) * sizeof *qall);
        size_t pmin = off + i0, pmax = off + i0 + ni - 1;
        size_t jlo = window > 0 && pmin + 1 > (size_t)window ? pmin + 1 - (size_t)window : 0;
        for (size_t jb = jlo - jlo % KB; jb <= pmax; jb += KB) {
            size_t n = Tk - jb < KB ? Tk - jb : KB, ra, rb;
            block_rows(&ra, &rb, i0, i0 + ni, off, jb, n, window);
            if (ra >= rb) continue;
            if (bf) {
                pack_kt_bf(u.b.kt2, u.b.xb, kb + jb * kvs, n, kvs, hd);
                pairs_bf(u.b.kv2, hd, vb + jb * kvs, n, kvs, KB / 2, hd);
            } else {
                transpose_kb(kt, kb + jb * kvs, n, kvs, hd);
            }
            __m512i sv[4];
            seg_load(sv, sg, jb, n);
            for (size_t r0 = ra; amx && r0 < rb; r0 += AT) { /* AMX: tiles of AT rows */
                size_t rc = rb - r0 < AT ? rb - r0 : AT;
                const uint32_t *qt = qall ? qall + (r0 - i0) * (hd / 2) : qb;
                if (!qall) rows_bf(qb, hd / 2, q + r0 * qs, rc, qs, hd);
                uint64_t vms[AT] = {0};
                if (!tile_vis(vms, rc, off + r0, jb, n, window, sg, sv)) continue;
                amx_scores(P, qt, u.b.kt2, hd);
                float *Mt = M + (r0 - i0), *lt = lsum + (r0 - i0);
                softmax_step(4, P, Mt, lt, cf, rc < 8 ? rc : 8, vms, vscale);
                if (rc > 8)
                    softmax_step(4, P + 8 * KB, Mt + 8, lt + 8, cf + 8, rc - 8, vms + 8, vscale);
                rows_bf(pb, KB / 2, P, rc, KB, KB);
                amx_pv(out + r0 * qs, qs, rc, pb, u.b.kv2, hd, cf, Ot);
            }
            for (size_t r0 = ra; !amx && r0 < rb; r0 += MR) {
                size_t rc = rb - r0 < MR ? rb - r0 : MR, tlo, thi;
                tile_keys(&tlo, &thi, off + r0, off + r0 + rc - 1, jb, n, window);
                size_t nv = (thi + 15) / 16; /* S (rc x 16 nv): the keys up to the tile's last */
                if (bf) {
                    const uint32_t *qt = qall ? qall + (r0 - i0) * (hd / 2) : qb;
                    if (!qall) rows_bf(qb, hd / 2, q + r0 * qs, rc, qs, hd);
                    mkb_set(rc, nv, hd / 2, qt, hd / 2, 1, u.b.kt2, KB, P, KB, NULL);
                } else {
                    mk_set(rc, nv, hd, q + r0 * qs, qs, 1, kt, KB, P, KB, NULL);
                }
                uint64_t vms[MR];
                if (!tile_vis(vms, rc, off + r0, jb, n, window, sg, sv)) continue;
                float *Mt = M + (r0 - i0), *lt = lsum + (r0 - i0);
                switch (nv) {
                case 1: softmax_step(1, P, Mt, lt, cf, rc, vms, vscale); break;
                case 2: softmax_step(2, P, Mt, lt, cf, rc, vms, vscale); break;
                case 3: softmax_step(3, P, Mt, lt, cf, rc, vms, vscale); break;
                default: softmax_step(4, P, Mt, lt, cf, rc, vms, vscale); break;
                }
                /* BF16: P's rows as pairs of keys (columns from 16 nv on are not read) */
                if (bf) rows_bf(pb, KB / 2, P, rc, KB, 16 * nv);
                /* O (rc x hd) = cf O + P V over the keys the tile sees */
                if (bf) { /* in whole pairs of keys: P is 0 at the keys added (no row sees them) */
                    size_t t2 = tlo / 2, n2 = (thi + 1) / 2 - t2;
                    mkb_strips(2, rc, hd, n2, pb + t2, KB / 2, 1, u.b.kv2 + t2 * hd, hd,
                               out + r0 * qs, qs, cf);
                } else {
                    mk_strips(2, rc, hd, thi - tlo, P + tlo, KB, 1, vb + (jb + tlo) * kvs, kvs,
                              out + r0 * qs, qs, cf);
                }
            }
        }
        for (size_t i = 0; i < ni; i++) {
            float *oi = out + (i0 + i) * qs, l = lsum[i], inv = l > 0 ? 1.0f / l : 0.0f;
            __m512 vi = _mm512_set1_ps(inv);
            for (size_t d = 0; d < hd; d += 16)
                _mm512_storeu_ps(oi + d, _mm512_mul_ps(_mm512_loadu_ps(oi + d), vi));
            L[i0 + i] = l > 0 ? M[i] + logf(l) : -INFINITY;
        }
    }
    if (amx) amx_att_release();
}

/* The segment ids of one sequence, or NULL when they are all the same (one document: nothing to
 * mask, and the per-row segment masks are skipped) */
static const int32_t *seg_or_null(const int32_t *seg, size_t n) {
    if (!seg) return NULL;
    for (size_t i = 1; i < n; i++)
        if (seg[i] != seg[0]) return seg;
    return NULL;
}

AVX512 static void attention_forward_avx512(float *out, float *lse, const float *q,
                                            const float *k, const float *v, const int32_t *seg,
                                            float scale, int window, size_t B, size_t Tq,
                                            size_t Tk, size_t nh, size_t nkv, size_t hd, int bf) {
    size_t group = nh / nkv, kvs = nkv * hd, qs = nh * hd;
    /* (AMX: AT rows more, zeros, for the chunk's last tile) */
    size_t qn = ((Tq < QC ? Tq : QC) + (bf == 2 ? AT : 0)) * (hd / 2);
    size_t nt = (size_t)omp_get_max_threads();
    if (nt > B * nh) nt = B * nh; /* a team never has more threads than omp_get_max_threads() */
    /* each thread's rounded query rows (forward_task's qall; without them, per tile) */
    uint32_t *qall = bf && nt > 0 && qn > 0 ? st_malloc(nt * qn * sizeof *qall) : NULL;
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < nh; h++) {
            size_t kh = h / group, o = b * Tq * qs + h * hd;
            forward_task(out + o, lse + (b * nh + h) * Tq, q + o, k + b * Tk * kvs + kh * hd,
                         v + b * Tk * kvs + kh * hd, seg_or_null(seg ? seg + b * Tk : NULL, Tk),
                         scale, window, Tq, Tk, qs, kvs, hd, bf,
                         qall && (size_t)omp_get_thread_num() < nt ? qall + omp_get_thread_num() * qn
                                                                    : NULL);
        }
    st_free(qall);
}

/* A row's 16 keys from v of the backward: P = exp(S scale - L) (0 where m clears a key) and
 * dS = P (dP - D) scale, from the row's scores S and dP at s and dp */
AVX512 INLINE void p_ds16(__m512 *e, __m512 *g, __mmask16 m, const float *s, const float *dp,
                          __m512 vs, __m512 L, __m512 D) {
    *e = _mm512_maskz_mov_ps(m, exp16(_mm512_fmsub_ps(_mm512_loadu_ps(s), vs, L)));
    *g = _mm512_mul_ps(_mm512_mul_ps(*e, _mm512_sub_ps(_mm512_loadu_ps(dp), D)), vs);
}

/* The BF16 backward's P and dS for panel rows 2p and 2p + 1 (two = 0: row 2p only, the other
 * 0), from row u's scores S and dP at s + u KB and dp + u KB (the first 16 nv columns; 0 from
 * there on), its visible keys vm[u] (0: the row is all 0), L[u] and D[u]. Written as bf16 only:
 * pair row p of P and of dS (pp, sp: pairs_bf's layout, KB units) and dS's rows as pairs of keys
 * (sb rows 2p, 2p + 1 when two: rows_bf's layout, KB / 2 units each). */
AVX512BF static void p_ds_pair_bf(uint32_t *pp, uint32_t *sp, uint32_t *sb, int two,
                                  const float *s, const float *dp, const uint64_t vm[2],
                                  const float L[2], const float D[2], size_t nv, float scale) {
    const __m512 vs = _mm512_set1_ps(scale), z = _mm512_setzero_ps();
    __m512 g[2][4];
#pragma GCC unroll 4
    for (size_t v = 0; v < 4; v++) {
        __m512 e[2] = {z, z};
        for (int u = 0; u < 2; u++) {
            __mmask16 m = (__mmask16)(vm[u] >> (16 * v));
            g[u][v] = z;
            if (v < nv && m)
                p_ds16(&e[u], &g[u][v], m, s + u * KB + 16 * v, dp + u * KB + 16 * v, vs,
                       _mm512_set1_ps(L[u]), _mm512_set1_ps(D[u]));
        }
        _mm512_storeu_si512(pp + 16 * v, pair16(e[0], e[1]));
        _mm512_storeu_si512(sp + 16 * v, pair16(g[0][v], g[1][v]));
    }
    for (int u = 0; u < 1 + two; u++)
        for (size_t v = 0; v < 4; v += 2) /* cvtne2ps_pbh(a, b): b's values in the low half */
            _mm512_storeu_si512(sb + u * (KB / 2) + 8 * v,
                                (__m512i)_mm512_cvtne2ps_pbh(g[u][v + 1], g[u][v]));
}

/* backward: query rows per chunk for a kv head read by group query heads (at least 1; group >
 * DMAX: D is computed per row and block instead) */
static size_t bw_chunk(size_t group) {
    size_t c = DMAX / group < QC ? DMAX / group : QC;
    return c < 1 ? 1 : c;
}

/* One (batch, kv head) of the backward, with the group query heads that read it: row i of head h
 * (0 <= h < group) of q, dq, dout, out at + h hd + i qs; lse of head h at lse + h Tq; kb, vb, dkb,
 * dvb rows j at + j kvs. dq, dkb, dvb =. */
AVX512 static void backward_task(float *dq, float *dkb, float *dvb, const float *dout,
                                 const float *out, const float *lse, const float *q,
                                 const float *kb, const float *vb, const int32_t *sg, float scale,
                                 int window, size_t group, size_t Tq, size_t Tk, size_t qs,
                                 size_t kvs, size_t hd, int bf, uint32_t *cvt) {
    _Alignas(64) union blk u;
    _Alignas(64) float P[QS * KB], dS[QS * KB]; /* BF16: a tile's S and dP rows only */
    /* BF16 path: a tile's Q and dO rows (qb, db); the panel's P and dS rows paired over rows (pp,
     * sp: QS / 2 x KB), dS rows as pairs of keys (sb: QS x KB / 2), Q and dO rows paired (qp, dp:
     * QS / 2 x hd) */
    _Alignas(64) uint32_t qb[AT * ATT_HD_MAX / 2], db[AT * ATT_HD_MAX / 2];
    _Alignas(64) uint32_t pp[QS / 2 * KB], sp[QS / 2 * KB], sb[QS * KB / 2];
    _Alignas(64) uint32_t qp[QS / 2 * ATT_HD_MAX], dp[QS / 2 * ATT_HD_MAX];
    float *kt = u.f.kt, *vt = u.f.vt;
    float D[DMAX];
    size_t off = Tk - Tq, QCb = bw_chunk(group);
    /* BF16 with cvt: the chunk's Q and dO rows of every head rounded once (4 arrays of cu units
     * per head), not once per key block: as rows of pairs along hd (the A operands of S and dP)
     * and paired over rows (the B operands of dK and dV) */
    size_t cu = (QCb + AT) * (hd / 2);
    const __m512 vscale = _mm512_set1_ps(scale);
    /* bf 2 (AMX CPUs): S and dP on the tile unit from the BF16 path's operands (tiles of AT rows:
     * the rows past a tile's last read zeros, never stored), P, dS and the other three products
     * in float. bf 1: all five through vdpbf16ps. */
    int amx = bf == 2;
    size_t tr = amx ? AT : MR; /* rows per tile */
    /* AMX: P and dS paired over the panel's rows and transposed (keys x pairs: the A operands
     * of dV and dK), C staging */
    _Alignas(64) uint32_t ppT[KB * KB], spT[KB * KB];
    _Alignas(64) float Ot[AT * 64];
    if (amx) {
        memset(qb, 0, sizeof qb);
        memset(db, 0, sizeof db);
        amx_att_config();
    }
    for (size_t j = 0; j < Tk; j++) {
        memset(dkb + j * kvs, 0, hd * sizeof(float));
        memset(dvb + j * kvs, 0, hd * sizeof(float));
    }
    for (size_t h = 0; h < group; h++)
        for (size_t i = 0; i < Tq; i++) memset(dq + h * hd + i * qs, 0, hd * sizeof(float));
    for (size_t i0 = 0; i0 < Tq; i0 += QCb) {
        size_t ni = Tq - i0 < QCb ? Tq - i0 : QCb;
        float *Dh = group * ni <= DMAX ? D : NULL;
        for (size_t h = 0; h < group && Dh; h++)
            for (size_t i = 0; i < ni; i++) {
                size_t o = h * hd + (i0 + i) * qs;
                if (i + PF_ROWS < ni) {
                    prefetch_row(dout + o + PF_ROWS * qs, hd);
                    prefetch_row(out + o + PF_ROWS * qs, hd);
                }
                D[h * ni + i] = dot16(dout + o, out + o, hd);
            }
        for (size_t h = 0; bf && cvt && h < group; h++) {
            uint32_t *c4 = cvt + 4 * h * cu; /* Q rows, dO rows, Q pairs, dO pairs */
            const float *qh = q + h * hd + i0 * qs, *dyh = dout + h * hd + i0 * qs;
            rows_bf(c4, hd / 2, qh, ni, qs, hd);
            rows_bf(c4 + cu, hd / 2, dyh, ni, qs, hd);
            if (amx) { /* rows only, and AT rows of zeros after them */
                memset(c4 + ni * (hd / 2), 0, AT * (hd / 2) * sizeof *c4);
                memset(c4 + cu + ni * (hd / 2), 0, AT * (hd / 2) * sizeof *c4);
                continue;
            }
            pairs_bf(c4 + 2 * cu, hd, qh, ni, qs, (ni + 1) / 2, hd);
            pairs_bf(c4 + 3 * cu, hd, dyh, ni, qs, (ni + 1) / 2, hd);
        }
        size_t pmin = off + i0, pmax = off + i0 + ni - 1;
        size_t jlo = window > 0 && pmin + 1 > (size_t)window ? pmin + 1 - (size_t)window : 0;
        for (size_t jb = jlo - jlo % KB; jb <= pmax; jb += KB) {
            size_t n = Tk - jb < KB ? Tk - jb : KB, ra, rb;
            block_rows(&ra, &rb, i0, i0 + ni, off, jb, n, window);
            if (ra >= rb) continue;
            /* BF16: panels from an even row of the chunk, with cvt or without (the same pairs
             * of rows, so the same bits either way); row ra - 1 sees none of the block: P = dS
             * = 0 there */
            if (bf == 1) ra -= (ra - i0) % 2;
            const float *kj = kb + jb * kvs, *vj = vb + jb * kvs;
            float *dkj = dkb + jb * kvs, *dvj = dvb + jb * kvs;
            if (bf) {
                pack_kt_bf(u.b.kt2, u.b.xb, kj, n, kvs, hd);
                pack_kt_bf(u.b.vt2, u.b.xb, vj, n, kvs, hd);
                pairs_bf(u.b.kv2, hd, kj, n, kvs, KB / 2, hd);
            } else {
                transpose_kb(kt, kj, n, kvs, hd);
                transpose_kb(vt, vj, n, kvs, hd);
            }
            __m512i sv[4];
            seg_load(sv, sg, jb, n);
            for (size_t h = 0; h < group; h++) {
                const float *qh = q + h * hd, *dyh = dout + h * hd, *Lh = lse + h * Tq;
                float *dqh = dq + h * hd;
                const uint32_t *c4 = bf && cvt ? cvt + 4 * h * cu : NULL;
                for (size_t s0 = ra; s0 < rb; s0 += QS) {
                    size_t ns = rb - s0 < QS ? rb - s0 : QS;
                    int any = 0;
                    /* the panel: P and dS (ns x 64), zero where masked (BF16: straight to
                     * pp, sp and sb, from each tile's S and dP in P and dS) */
                    for (size_t r0 = s0; r0 < s0 + ns; r0 += tr) {
                        size_t rc = s0 + ns - r0 < tr ? s0 + ns - r0 : tr, tlo, thi;
                        tile_keys(&tlo, &thi, off + r0, off + r0 + rc - 1, jb, n, window);
                        size_t nv = (thi + 15) / 16; /* columns from 16 nv on: zero */
                        float *pr0 = P + (r0 - s0) * KB, *dr0 = dS + (r0 - s0) * KB;
                        if (bf) {
                            const uint32_t *qt = qb, *dt = db;
                            if (c4) {
                                qt = c4 + (r0 - i0) * (hd / 2), dt = qt + cu;
                            } else {
                                rows_bf(qb, hd / 2, qh + r0 * qs, rc, qs, hd);
                                rows_bf(db, hd / 2, dyh + r0 * qs, rc, qs, hd);
                            }
                            if (amx) { /* AT rows (the panel holds them: QS % AT == 0) */
                                amx_scores(pr0, qt, u.b.kt2, hd);
                                amx_scores(dr0, dt, u.b.vt2, hd);
                            } else {
                                mkb_set(rc, nv, hd / 2, qt, hd / 2, 1, u.b.kt2, KB, pr0, KB, NULL);
                                mkb_set(rc, nv, hd / 2, dt, hd / 2, 1, u.b.vt2, KB, dr0, KB, NULL);
                            }
                        } else {
                            mk_set(rc, nv, hd, qh + r0 * qs, qs, 1, kt, KB, pr0, KB, NULL);
                            mk_set(rc, nv, hd, dyh + r0 * qs, qs, 1, vt, KB, dr0, KB, NULL);
                        }
                        /* each row's visible keys (0: P = dS = 0), lse and D */
                        uint64_t vm[AT + 1] = {0};
                        float Lr[AT + 1] = {0}, Dr[AT + 1] = {0};
                        for (size_t r = 0; r < rc; r++) {
                            size_t i = r0 + r, p = off + i;
                            uint64_t m = Lh[i] == -INFINITY ? 0 : vis_mask(p, jb, n, window);
                            if (sg && m) m &= seg_mask(sv, sg[p]);
                            if (!m) continue;
                            vm[r] = m, Lr[r] = Lh[i], any = 1;
                            Dr[r] = Dh ? Dh[h * ni + i - i0]
                                       : dot16(dyh + i * qs, out + h * hd + i * qs, hd);
                        }
                        /* BF16: P and dS of pairs of rows straight to their bf16 operands; the
                         * row after an odd last one (vm 0) reads as 0 */
                        for (size_t r = 0; bf == 1 && r < rc; r += 2) {
                            size_t pr = r0 - s0 + r;
                            p_ds_pair_bf(pp + pr / 2 * KB, sp + pr / 2 * KB, sb + pr * (KB / 2),
                                         r + 1 < rc, pr0 + r * KB, dr0 + r * KB, vm + r, Lr + r,
                                         Dr + r, nv, scale);
                        }
                        for (size_t r = 0; bf != 1 && r < rc; r++) {
                            float *pr = pr0 + r * KB, *dr = dr0 + r * KB;
                            __m512 e, g, Lv = _mm512_set1_ps(Lr[r]), Dv = _mm512_set1_ps(Dr[r]);
                            for (size_t v = 0; v < 4; v++) {
                                e = g = _mm512_setzero_ps();
                                __mmask16 mv = (__mmask16)(vm[r] >> (16 * v));
                                if (v < nv && mv)
                                    p_ds16(&e, &g, mv, pr + 16 * v, dr + 16 * v, vscale, Lv, Dv);
                                _mm512_storeu_ps(pr + 16 * v, e);
                                _mm512_storeu_ps(dr + 16 * v, g);
                            }
                        }
                    }
                    if (!any) continue;
                    /* the panel's Q and dO paired over rows (with cvt: the chunk's, from the
                     * panel's first pair; the row after the panel is one of the chunk's, or 0) */
                    const uint32_t *qpp = qp, *dpp = dp;
                    if (bf == 1) { /* the panel's Q and dO operands */
                        size_t np = (ns + 1) / 2;
                        if (c4) {
                            qpp = c4 + 2 * cu + (s0 - i0) / 2 * hd, dpp = qpp + cu;
                        } else {
                            pairs_bf(dp, hd, dyh + s0 * qs, ns, qs, np, hd);
                            pairs_bf(qp, hd, qh + s0 * qs, ns, qs, np, hd);
                        }
                    }
                    /* dV (keys t0.., hd) += P^T dO, dK += dS^T Q over the rows that see the keys
                     * (BF16: in whole pairs of rows from s0; P and dS are 0 at the rows added;
                     * AMX: the panel's rows in pairs (0 past ns) and the block's keys, in tiles
                     * of AT keys) */
                    if (amx) {
                        size_t np = ((ns + 1) / 2 + AT - 1) / AT * AT;
                        pairs_bf(pp, KB, P, ns, KB, QS / 2, KB);
                        pairs_bf(sp, KB, dS, ns, KB, QS / 2, KB);
                        transpose_kb((float *)ppT, (const float *)pp, QS / 2, KB, KB);
                        transpose_kb((float *)spT, (const float *)sp, QS / 2, KB, KB);
                        pairs_bf(dp, hd, dyh + s0 * qs, ns, qs, QS / 2, hd);
                        pairs_bf(qp, hd, qh + s0 * qs, ns, qs, QS / 2, hd);
                        for (size_t t0 = 0; t0 < n; t0 += AT) {
                            size_t kc = n - t0 < AT ? n - t0 : AT;
                            amx_acc(dvj + t0 * kvs, kvs, kc, hd, ppT + t0 * KB, KB, np, dp, hd,
                                    NULL, Ot);
                            amx_acc(dkj + t0 * kvs, kvs, kc, hd, spT + t0 * KB, KB, np, qp, hd,
                                    NULL, Ot);
                        }
                    }
                    for (size_t t0 = 0; !amx && t0 < n; t0 += MR) {
                        size_t kc = n - t0 < MR ? n - t0 : MR, ka, kz;
                        block_rows(&ka, &kz, s0, s0 + ns, off, jb + t0, kc, window);
                        if (ka >= kz) continue;
                        if (bf == 1) {
                            size_t a2 = (ka - s0) / 2, n2 = (kz - s0 + 1) / 2 - a2;
                            mkb_strips(1, kc, hd, n2, pp + a2 * KB + t0, 1, KB, dpp + a2 * hd, hd,
                                       dvj + t0 * kvs, kvs, NULL);
                            mkb_strips(1, kc, hd, n2, sp + a2 * KB + t0, 1, KB, qpp + a2 * hd, hd,
                                       dkj + t0 * kvs, kvs, NULL);
                            continue;
                        }
                        size_t pa = (ka - s0) * KB + t0;
                        mk_strips(1, kc, hd, kz - ka, P + pa, 1, KB, dyh + ka * qs, qs,
                                  dvj + t0 * kvs, kvs, NULL);
                        mk_strips(1, kc, hd, kz - ka, dS + pa, 1, KB, qh + ka * qs, qs,
                                  dkj + t0 * kvs, kvs, NULL);
                    }
                    /* dQ (rows, hd) += dS K over the keys the rows see (BF16: whole pairs; AMX:
                     * the panel's dS rows as pairs of keys, all the block's keys) */
                    if (amx) rows_bf(sb, KB / 2, dS, ns, KB, KB);
                    for (size_t r0 = s0; amx && r0 < s0 + ns; r0 += AT)
                        amx_acc(dqh + r0 * qs, qs, s0 + ns - r0 < AT ? s0 + ns - r0 : AT, hd,
                                sb + (r0 - s0) * (KB / 2), KB / 2, KB / 2, u.b.kv2, hd, NULL, Ot);
                    for (size_t r0 = s0; !amx && r0 < s0 + ns; r0 += MR) {
                        size_t rc = s0 + ns - r0 < MR ? s0 + ns - r0 : MR, tlo, thi;
                        tile_keys(&tlo, &thi, off + r0, off + r0 + rc - 1, jb, n, window);
                        if (bf == 1) {
                            size_t t2 = tlo / 2, n2 = (thi + 1) / 2 - t2;
                            mkb_strips(1, rc, hd, n2, sb + (r0 - s0) * KB / 2 + t2, KB / 2, 1,
                                       u.b.kv2 + t2 * hd, hd, dqh + r0 * qs, qs, NULL);
                            continue;
                        }
                        mk_strips(1, rc, hd, thi - tlo, dS + (r0 - s0) * KB + tlo, KB, 1,
                                  kj + tlo * kvs, kvs, dqh + r0 * qs, qs, NULL);
                    }
                }
            }
        }
    }
    if (amx) amx_att_release();
}

AVX512 static void attention_backward_avx512(float *dq, float *dk, float *dv, const float *dout,
                                             const float *out, const float *lse, const float *q,
                                             const float *k, const float *v, const int32_t *seg,
                                             float scale, int window, size_t B, size_t Tq,
                                             size_t Tk, size_t nh, size_t nkv, size_t hd,
                                             int bf) {
    size_t group = nh / nkv, kvs = nkv * hd, qs = nh * hd, nt = (size_t)omp_get_max_threads();
    if (nt > B * nkv) nt = B * nkv;
    /* each thread's rounded Q and dO rows (backward_task's cvt; without them, per panel) */
    size_t cn = 4 * group * (bw_chunk(group) + AT) * (hd / 2);
    uint32_t *cvt = bf && nt > 0 ? st_malloc(nt * cn * sizeof *cvt) : NULL;
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (size_t b = 0; b < B; b++)
        for (size_t kh = 0; kh < nkv; kh++) {
            size_t o = b * Tq * qs + kh * group * hd, ko = b * Tk * kvs + kh * hd;
            size_t t = (size_t)omp_get_thread_num();
            backward_task(dq + o, dk + ko, dv + ko, dout + o, out + o,
                          lse + (b * nh + kh * group) * Tq, q + o, k + ko, v + ko,
                          seg_or_null(seg ? seg + b * Tk : NULL, Tk), scale, window, group, Tq, Tk,
                          qs, kvs, hd, bf, cvt && t < nt ? cvt + t * cn : NULL);
        }
    st_free(cvt);
}
#endif

int st_cpu_attention_native(void) {
#ifdef X86
    static int v = -1;
    if (v < 0) {
        __builtin_cpu_init();
        v = !st_env_flag("ST_ATTENTION_PORTABLE") && __builtin_cpu_supports("avx512f");
    }
    return v;
#else
    return 0;
#endif
}

#ifdef X86
static int use_avx512(size_t hd) {
    return hd > 0 && hd % 16 == 0 && hd <= ATT_HD_MAX && st_cpu_attention_native();
}
#endif

/* The BF16 path where asked for (bf), hd % 32 == 0 and the CPU's vdpbf16ps is worth it: on CPUs
 * with AMX (Sapphire Rapids and later) it issues at half the rate of fp32 FMAs (bench_peak: 147
 * against 276 GFLOP/s on 2 threads), slower than the float path there (bench_attention, session
 * 10: bench/NOTES.md); those CPUs run the products on AMX instead (bf16_forward, mode 2). */
static int bf16_path(int bf, size_t hd) {
    return bf && hd % 32 == 0 && st_bf16_native() && !st_bf16_amx();
}

/* 2 on AMX CPUs (the products on the tile unit, for the forward and the backward), else
 * bf16_path */
static int bf16_forward(int bf, size_t hd) {
    return bf && hd % 32 == 0 && st_bf16_native() && st_bf16_amx() ? 2 : bf16_path(bf, hd);
}

/* bf: the BF16 path where asked for (bf16_path) */
static void forward(int bf, float *out, float *lse, const float *q, const float *k, const float *v,
                    const int32_t *seg, float scale, int window, size_t B, size_t Tq, size_t Tk,
                    size_t nh, size_t nkv, size_t hd) {
#ifdef X86
    if (use_avx512(hd)) {
        attention_forward_avx512(out, lse, q, k, v, seg, scale, window, B, Tq, Tk, nh, nkv, hd,
                                 bf16_forward(bf, hd));
        return;
    }
#endif
    (void)bf;
    st_cpu_attention_forward_portable(out, lse, q, k, v, seg, scale, window, B, Tq, Tk, nh, nkv,
                                      hd);
}

static void backward(int bf, float *dq, float *dk, float *dv, const float *dout, const float *out,
                     const float *lse, const float *q, const float *k, const float *v,
                     const int32_t *seg, float scale, int window, size_t B, size_t Tq, size_t Tk,
                     size_t nh, size_t nkv, size_t hd) {
#ifdef X86
    if (use_avx512(hd)) {
        attention_backward_avx512(dq, dk, dv, dout, out, lse, q, k, v, seg, scale, window, B, Tq,
                                  Tk, nh, nkv, hd, bf16_forward(bf, hd));
        return;
    }
#endif
    (void)bf;
    st_cpu_attention_backward_portable(dq, dk, dv, dout, out, lse, q, k, v, seg, scale, window, B,
                                       Tq, Tk, nh, nkv, hd);
}

void st_cpu_attention_forward(float *out, float *lse, const float *q, const float *k,
                              const float *v, const int32_t *seg, float scale, int window,
                              size_t B, size_t Tq, size_t Tk, size_t nh, size_t nkv, size_t hd) {
    forward(0, out, lse, q, k, v, seg, scale, window, B, Tq, Tk, nh, nkv, hd);
}

void st_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                               const float *out, const float *lse, const float *q, const float *k,
                               const float *v, const int32_t *seg, float scale, int window,
                               size_t B, size_t Tq, size_t Tk, size_t nh, size_t nkv, size_t hd) {
    backward(0, dq, dk, dv, dout, out, lse, q, k, v, seg, scale, window, B, Tq, Tk, nh, nkv, hd);
}

void st_cpu_attention_forward_bf16(float *out, float *lse, const float *q, const float *k,
                                   const float *v, const int32_t *seg, float scale, int window,
                                   size_t B, size_t Tq, size_t Tk, size_t nh, size_t nkv,
                                   size_t hd) {
    forward(1, out, lse, q, k, v, seg, scale, window, B, Tq, Tk, nh, nkv, hd);
}

void st_cpu_attention_backward_bf16(float *dq, float *dk, float *dv, const float *dout,
                                    const float *out, const float *lse, const float *q,
                                    const float *k, const float *v, const int32_t *seg,
                                    float scale, int window, size_t B, size_t Tq, size_t Tk,
                                    size_t nh, size_t nkv, size_t hd) {
    backward(1, dq, dk, dv, dout, out, lse, q, k, v, seg, scale, window, B, Tq, Tk, nh, nkv, hd);
}
