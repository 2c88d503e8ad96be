/* lora.c: the cpu backend's LoRA kernels (contract: st_kernels.lora_forward/_backward in
 * include/streamtune/kernels.h).
 *
 * DESIGN. Every LoRA product has a rank-r side (r = 4..128, far below the other sizes). Two of
 * the shapes have the big matrix on their reduction side, where sgemm spent most of its time
 * packing (copying) it; they get AVX-512 kernels of their own, one pass over the big matrix per
 * 8 ranks with the rank-r operand in a small zero-padded stack tile (scaled there):
 *   xw:     y (N, r) = s x (N, K) W, W (K, r) by strides   (xa = inp a^T, dxa = s dout b)
 *   reduce: Z (r, M) += s x (N, r)^T y (N, M)              (db += s dout^T xa, da += dxa^T inp)
 * Rows (xw) or 32-column chunks (reduce) are split over threads: every output element is summed
 * by one thread in an order fixed by the shapes, so results do not depend on the thread count.
 * The rank-r updates (out += s xa b^T, dinp += dxa a: K = r, cheap for sgemm to pack) stay with
 * sgemm (with BF16 panels the model adds them in the GEMM instead: lora_forward with out NULL,
 * lora_backward with dinp NULL, then st_bf16_gemm_px_lr), and so does everything on CPUs without
 * AVX-512F/VL (or with ST_NO_AVX512=1), AArch64 included. The kernels are written with GCC
 * vector types; sgemm's copy routines were half of LoRA's 5.6% of a bf16 training step; with
 * these kernels LoRA is ~3.5% (xw and reduce 2%, the updates in sgemm 1.7%; in the BF16 GEMM
 * the updates cost ~0.4%). */
#include <cblas.h>
#include <stddef.h>
#include <string.h>

#include "lora.h"
#include "streamtune/f32.h"

typedef float v8 __attribute__((vector_size(32)));
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
#define INLINE static inline __attribute__((always_inline))

#define KBLK 512 /* xw: k per stack tile of W (KBLK x 8 floats, 16 KiB) */
#define XR 8     /* xw: rows per register block (8 accumulators of 8 lanes) */
#define CW 32    /* reduce: columns per chunk (two 16-float vectors) */
#define RJ 8     /* reduce: ranks per register block */

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

/* ---------------------------------------------------------------- drivers */

#if defined(__x86_64__)
#define AVX512 __attribute__((target("avx512f,avx512vl")))
AVX512 static void xw_avx512(float *y, size_t r, const float *x, size_t ldx, size_t n0,
                             size_t n1, size_t K, const float *w, size_t sk, size_t sj, float s) {
    xw_rows(y, r, x, ldx, n0, n1, K, w, sk, sj, s);
}
AVX512 static void reduce_avx512(float *z, size_t zj, size_t zc, const float *x, size_t r,
                                 const float *y, size_t ldy, size_t N, size_t c0, size_t w,
                                 float s) {
    reduce_chunk(z, zj, zc, x, r, y, ldy, N, c0, w, s);
}

/* the AVX-512 kernels run (else sgemm) */
int st_cpu_lora_native(void) {
    static int v = -1;
    if (v < 0) v = st_f32_native() && __builtin_cpu_supports("avx512vl");
    return v;
}

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

/* y (N, r) = s x (N, K) W; W(k, j) = w[k sk + j sj] */
static void xw(float *y, size_t r, const float *x, size_t ldx, size_t N, size_t K,
               const float *w, size_t sk, size_t sj, float s) {
    if (K == 0) { /* an empty sum: y = 0 */
        memset(y, 0, N * r * sizeof(float));
        return;
    }
#pragma omp parallel if (N * K >= PAR_MIN)
    {
        size_t n0, n1;
        row_range(N, &n0, &n1);
        if (n0 < n1) xw_avx512(y, r, x, ldx, n0, n1, K, w, sk, sj, s);
    }
}

/* Z(j, c) += s sum_n x[n][j] y[n][c] (y: N x M); Z(j, c) at z[j zj + c zc] */
static void reduce(float *z, size_t zj, size_t zc, const float *x, size_t r, const float *y,
                   size_t N, size_t M, float s) {
    size_t nc = (M + CW - 1) / CW;
#pragma omp parallel for schedule(static) if (N * M >= PAR_MIN)
    for (size_t ci = 0; ci < nc; ci++) {
        size_t c0 = ci * CW;
        reduce_avx512(z, zj, zc, x, r, y, M, N, c0, M - c0 < CW ? M - c0 : CW, s);
    }
}
#endif

void st_cpu_lora_forward(float *out, float *xa, const float *inp, const float *a, const float *b,
                         float scale, size_t N, size_t C, size_t OC, size_t r) {
#if defined(__x86_64__)
    if (st_cpu_lora_native())
        xw(xa, r, inp, C, N, C, a, 1, C, 1.0f); /* xa = inp a^T: W(c, j) = a[j][c] */
    else
#endif
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)r, (int)C, 1.0f, inp,
                    (int)C, a, (int)C, 0.0f, xa, (int)r);
    // out (N, OC) += scale xa (N, r) b^T (r, OC)
    if (out)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OC, (int)r, scale, xa,
                    (int)r, b, (int)r, 1.0f, out, (int)OC);
}

void st_cpu_lora_backward(float *dinp, float *da, float *db, float *dxa, const float *dout,
                          const float *inp, const float *xa, const float *a, const float *b,
                          float scale, size_t N, size_t C, size_t OC, size_t r) {
#if defined(__x86_64__)
    if (st_cpu_lora_native()) {
        reduce(db, 1, r, xa, r, dout, N, OC, scale); /* db[o][j] += s sum_n dout[n][o] xa[n][j] */
        xw(dxa, r, dout, OC, N, OC, b, r, 1, scale); /* dxa = s dout b: W(o, j) = b[o][j] */
        reduce(da, C, 1, dxa, r, inp, N, C, 1.0f);   /* da[j][c] += sum_n dxa[n][j] inp[n][c] */
    } else
#endif
    {
        // db (OC, r) += scale dout^T (OC, N) xa (N, r)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)OC, (int)r, (int)N, scale,
                    dout, (int)OC, xa, (int)r, 1.0f, db, (int)r);
        // dxa (N, r) = scale dout (N, OC) b (OC, r)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)r, (int)OC, scale,
                    dout, (int)OC, b, (int)r, 0.0f, dxa, (int)r);
        // da (r, C) += dxa^T (r, N) inp (N, C)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)r, (int)C, (int)N, 1.0f, dxa,
                    (int)r, inp, (int)C, 1.0f, da, (int)C);
    }
    if (dinp) // dinp (N, C) += dxa (N, r) a (r, C)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)C, (int)r, 1.0f, dxa,
                    (int)r, a, (int)C, 1.0f, dinp, (int)C);
}
