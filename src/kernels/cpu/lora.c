/* lora.c: the cpu backend's LoRA kernels (contract: st_kernels.lora_forward/_backward in
 * include/streamtune/kernels.h) without BLAS.
 *
 * DESIGN. Every LoRA product has a rank-r side (r = 4..64, far below the other sizes), so each is
 * one pass over a big (N, C) or (N, OC) matrix with the rank-r operand held in registers or on the
 * stack: memory-bound streaming, where a BLAS call spent half its time packing (sgemm's copy
 * routines were half of LoRA's 5% of a bf16 training step). Three shapes cover the six products:
 *   xw:     y (N, r) = s x (N, K) W, W (K, r) by strides   (xa = inp a^T, dxa = s dout b)
 *   update: out (N, M) += x (N, r) Y, Y (r, M) by strides  (out += s xa b^T, dinp += dxa a)
 *   reduce: Z (r, M) += s x (N, r)^T y (N, M)              (db += s dout^T xa, da += dxa^T inp)
 * The rank-r operand is copied, block by block, into a small zero-padded stack tile in the layout
 * the loop wants (and scaled there); the rest is read in place. Rows (xw, update) or column
 * chunks (reduce) are split over threads: every output element is summed by one thread in an
 * order fixed by the shapes, so results do not depend on the thread count.
 * The loops are written once with GCC vector types and compiled twice: for AVX-512 (chosen at
 * run time, st_f32_native(), ST_NO_AVX512=1 forces the other) and for the build's baseline (NEON
 * on AArch64). */
#include <stddef.h>
#include <string.h>

#include "lora.h"
#include "streamtune/f32.h"

typedef float v8 __attribute__((vector_size(32)));
typedef float v16 __attribute__((vector_size(64)));
typedef float v8u __attribute__((vector_size(32), aligned(4), may_alias));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
#define INLINE static inline __attribute__((always_inline))

#define KBLK 512 /* xw: k per stack tile of W (KBLK x 8 floats, 16 KiB) */
#define XR 8     /* xw: rows per register block (8 accumulators of 8 lanes) */
#define CW 32    /* update, reduce: columns per chunk (two 16-float vectors) */
#define UR 4     /* update: rows per register block */
#define RJ 8     /* reduce: ranks per register block */
#define RMAX 256 /* update: the stack tile holds RMAX x CW floats; larger r goes in passes */

/* ---------------------------------------------------------------- xw */

/* y rows [n0, n1), lanes [j0, j0 + nj) (nj <= 8) = s x @ W[:, j0..]; W(k, j) = w[k sk + j sj] */
INLINE void xw_body(float *y, size_t r, const float *x, size_t ldx, size_t n0, size_t n1,
                    size_t K, const float *w, size_t sk, size_t sj, size_t j0, size_t nj,
                    float s) {
    _Alignas(32) float wt[KBLK * 8];
    for (size_t k0 = 0; k0 < K; k0 += KBLK) {
        size_t kb = K - k0 < KBLK ? K - k0 : KBLK;
        for (size_t k = 0; k < kb; k++)
            for (size_t j = 0; j < 8; j++)
                wt[k * 8 + j] = j < nj ? s * w[(k0 + k) * sk + (j0 + j) * sj] : 0.0f;
        size_t n = n0;
        for (; n + XR <= n1; n += XR) {
            v8 acc[XR];
#pragma GCC unroll 8
            for (int i = 0; i < XR; i++) acc[i] = (v8){0};
            const float *xk = x + n * ldx + k0;
            for (size_t k = 0; k < kb; k++) {
                v8 wk = *(const v8 *)(wt + k * 8);
#pragma GCC unroll 8
                for (int i = 0; i < XR; i++) acc[i] += xk[i * ldx + k] * wk;
            }
            for (int i = 0; i < XR; i++) {
                float *yr = y + (n + i) * r + j0;
                for (size_t j = 0; j < nj; j++) yr[j] = (k0 ? yr[j] : 0.0f) + acc[i][j];
            }
        }
        for (; n < n1; n++) { /* the last rows of the range, one at a time */
            v8 acc = {0};
            const float *xk = x + n * ldx + k0;
            for (size_t k = 0; k < kb; k++) acc += xk[k] * *(const v8 *)(wt + k * 8);
            float *yr = y + n * r + j0;
            for (size_t j = 0; j < nj; j++) yr[j] = (k0 ? yr[j] : 0.0f) + acc[j];
        }
    }
}

INLINE void xw_rows(float *y, size_t r, const float *x, size_t ldx, size_t n0, size_t n1,
                    size_t K, const float *w, size_t sk, size_t sj, float s) {
    for (size_t j0 = 0; j0 < r; j0 += 8)
        xw_body(y, r, x, ldx, n0, n1, K, w, sk, sj, j0, r - j0 < 8 ? r - j0 : 8, s);
}

/* ---------------------------------------------------------------- update */

/* out rows [n0, n1) += x (N, r) @ Y; Y(j, c) = s y[j sj + c sc] (M columns) */
INLINE void update_rows(float *out, size_t ldo, const float *x, size_t r, size_t n0, size_t n1,
                        const float *y, size_t sj, size_t sc, size_t M, float s) {
    _Alignas(64) float yc[RMAX * CW];
    for (size_t j0 = 0; j0 < r; j0 += RMAX) {
        size_t nj = r - j0 < RMAX ? r - j0 : RMAX;
        for (size_t c0 = 0; c0 < M; c0 += CW) {
            size_t w = M - c0 < CW ? M - c0 : CW;
            for (size_t j = 0; j < nj; j++)
                for (size_t c = 0; c < CW; c++)
                    yc[j * CW + c] = c < w ? s * y[(j0 + j) * sj + (c0 + c) * sc] : 0.0f;
            size_t n = n0;
            if (w == CW)
                for (; n + UR <= n1; n += UR) {
                    v16 acc[UR][2];
                    const float *xr = x + n * r + j0;
                    float *o = out + n * ldo + c0;
#pragma GCC unroll 4
                    for (int i = 0; i < UR; i++) {
                        acc[i][0] = *(const v16u *)(o + i * ldo);
                        acc[i][1] = *(const v16u *)(o + i * ldo + 16);
                    }
                    for (size_t j = 0; j < nj; j++) {
                        v16 b0 = *(const v16 *)(yc + j * CW), b1 = *(const v16 *)(yc + j * CW + 16);
#pragma GCC unroll 4
                        for (int i = 0; i < UR; i++) {
                            float a = xr[i * r + j];
                            acc[i][0] += a * b0;
                            acc[i][1] += a * b1;
                        }
                    }
#pragma GCC unroll 4
                    for (int i = 0; i < UR; i++) {
                        *(v16u *)(o + i * ldo) = acc[i][0];
                        *(v16u *)(o + i * ldo + 16) = acc[i][1];
                    }
                }
            for (; n < n1; n++) /* a narrow last chunk, or the last rows */
                for (size_t c = 0; c < w; c++) {
                    float acc = out[n * ldo + c0 + c];
                    for (size_t j = 0; j < nj; j++) acc += x[n * r + j0 + j] * yc[j * CW + c];
                    out[n * ldo + c0 + c] = acc;
                }
        }
    }
}

/* ---------------------------------------------------------------- reduce */

/* Z(j, c) += s sum_n x[n][j] y[n][c] for the columns [c0, c0 + w) (w <= CW), all j < r;
 * Z(j, c) at z[j zj + c zc] */
INLINE void reduce_chunk(float *z, size_t zj, size_t zc, const float *x, size_t r,
                         const float *y, size_t ldy, size_t N, size_t c0, size_t w, float s) {
    for (size_t j0 = 0; j0 < r; j0 += RJ) {
        size_t nj = r - j0 < RJ ? r - j0 : RJ;
        _Alignas(64) float t[RJ * CW];
        if (nj == RJ && w == CW) {
            v16 acc[RJ][2];
#pragma GCC unroll 8
            for (int j = 0; j < RJ; j++) acc[j][0] = acc[j][1] = (v16){0};
            for (size_t n = 0; n < N; n++) {
                const float *yn = y + n * ldy + c0, *xn = x + n * r + j0;
                v16 b0 = *(const v16u *)yn, b1 = *(const v16u *)(yn + 16);
#pragma GCC unroll 8
                for (int j = 0; j < RJ; j++) {
                    acc[j][0] += xn[j] * b0;
                    acc[j][1] += xn[j] * b1;
                }
            }
            for (int j = 0; j < RJ; j++) {
                *(v16 *)(t + j * CW) = acc[j][0];
                *(v16 *)(t + j * CW + 16) = acc[j][1];
            }
        } else { /* a rank tail or a narrow last chunk */
            memset(t, 0, sizeof t);
            for (size_t n = 0; n < N; n++)
                for (size_t j = 0; j < nj; j++) {
                    float a = x[n * r + j0 + j];
                    for (size_t c = 0; c < w; c++) t[j * CW + c] += a * y[n * ldy + c0 + c];
                }
        }
        for (size_t j = 0; j < nj; j++)
            for (size_t c = 0; c < w; c++) z[(j0 + j) * zj + (c0 + c) * zc] += s * t[j * CW + c];
    }
}

/* ---------------------------------------------------------------- the two builds */

struct lora_ops {
    void (*xw)(float *, size_t, const float *, size_t, size_t, size_t, size_t, const float *,
               size_t, size_t, float);
    void (*update)(float *, size_t, const float *, size_t, size_t, size_t, const float *, size_t,
                   size_t, size_t, float);
    void (*reduce)(float *, size_t, size_t, const float *, size_t, const float *, size_t, size_t,
                   size_t, size_t, float);
};

#define LORA_BUILD(ATTR, SUFFIX)                                                              \
    ATTR static void xw_##SUFFIX(float *y, size_t r, const float *x, size_t ldx, size_t n0,   \
                                 size_t n1, size_t K, const float *w, size_t sk, size_t sj,   \
                                 float s) {                                                   \
        xw_rows(y, r, x, ldx, n0, n1, K, w, sk, sj, s);                                       \
    }                                                                                         \
    ATTR static void update_##SUFFIX(float *out, size_t ldo, const float *x, size_t r,        \
                                     size_t n0, size_t n1, const float *y, size_t sj,         \
                                     size_t sc, size_t M, float s) {                          \
        update_rows(out, ldo, x, r, n0, n1, y, sj, sc, M, s);                                 \
    }                                                                                         \
    ATTR static void reduce_##SUFFIX(float *z, size_t zj, size_t zc, const float *x,          \
                                     size_t r, const float *y, size_t ldy, size_t N,          \
                                     size_t c0, size_t w, float s) {                          \
        reduce_chunk(z, zj, zc, x, r, y, ldy, N, c0, w, s);                                   \
    }                                                                                         \
    static const struct lora_ops ops_##SUFFIX = {xw_##SUFFIX, update_##SUFFIX, reduce_##SUFFIX};

LORA_BUILD(, generic)
#if defined(__x86_64__)
LORA_BUILD(__attribute__((target("avx512f,avx512vl"))), avx512)
#endif

static const struct lora_ops *ops(void) {
#if defined(__x86_64__)
    if (st_f32_native()) return &ops_avx512;
#endif
    return &ops_generic;
}

/* ---------------------------------------------------------------- drivers */

#ifdef _OPENMP
#include <omp.h>
#endif

/* This thread's rows [*n0, *n1) of N, in ranges of whole XR-row blocks (the last one takes the
 * tail) */
static void row_range(size_t N, size_t *n0, size_t *n1) {
    size_t nt = 1, t = 0;
#ifdef _OPENMP
    nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
#endif
    size_t per = (N / nt + XR - 1) / XR * XR;
    *n0 = t * per < N ? t * per : N;
    *n1 = t + 1 == nt ? N : *n0 + per < N ? *n0 + per : N;
}

#define PAR_MIN 65536 /* elements of the big operand below which one thread does it all */

static void xw(float *y, size_t r, const float *x, size_t ldx, size_t N, size_t K,
               const float *w, size_t sk, size_t sj, float s) {
    const struct lora_ops *o = ops();
#pragma omp parallel if (N * K >= PAR_MIN)
    {
        size_t n0, n1;
        row_range(N, &n0, &n1);
        if (n0 < n1) o->xw(y, r, x, ldx, n0, n1, K, w, sk, sj, s);
    }
}

static void update(float *out, size_t ldo, const float *x, size_t r, size_t N, const float *y,
                   size_t sj, size_t sc, size_t M, float s) {
    const struct lora_ops *o = ops();
#pragma omp parallel if (N * M >= PAR_MIN)
    {
        size_t n0, n1;
        row_range(N, &n0, &n1);
        if (n0 < n1) o->update(out, ldo, x, r, n0, n1, y, sj, sc, M, s);
    }
}

static void reduce(float *z, size_t zj, size_t zc, const float *x, size_t r, const float *y,
                   size_t N, size_t M, float s) {
    const struct lora_ops *o = ops();
    size_t nc = (M + CW - 1) / CW;
#pragma omp parallel for schedule(static) if (N * M >= PAR_MIN)
    for (size_t ci = 0; ci < nc; ci++) {
        size_t c0 = ci * CW;
        o->reduce(z, zj, zc, x, r, y, M, N, c0, M - c0 < CW ? M - c0 : CW, s);
    }
}

void st_cpu_lora_forward(float *out, float *xa, const float *inp, const float *a, const float *b,
                         float scale, size_t N, size_t C, size_t OC, size_t r) {
    xw(xa, r, inp, C, N, C, a, 1, C, 1.0f);            /* xa = inp a^T: W(c, j) = a[j][c] */
    update(out, OC, xa, r, N, b, 1, r, OC, scale);      /* out += s xa b^T: Y(j, o) = b[o][j] */
}

void st_cpu_lora_backward(float *dinp, float *da, float *db, float *dxa, const float *dout,
                          const float *inp, const float *xa, const float *a, const float *b,
                          float scale, size_t N, size_t C, size_t OC, size_t r) {
    reduce(db, 1, r, xa, r, dout, N, OC, scale);       /* db[o][j] += s sum_n dout[n][o] xa[n][j] */
    xw(dxa, r, dout, OC, N, OC, b, r, 1, scale);       /* dxa = s dout b: W(o, j) = b[o][j] */
    reduce(da, C, 1, dxa, r, inp, N, C, 1.0f);         /* da[j][c] += sum_n dxa[n][j] inp[n][c] */
    if (dinp) update(dinp, C, dxa, r, N, a, C, 1, C, 1.0f); /* dinp += dxa a */
}
