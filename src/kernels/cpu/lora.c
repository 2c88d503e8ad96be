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
 * Both read the big matrix forward, a few rows at a time, with software prefetch a few rows
 * ahead: its rows are 3-16 KiB apart, and a pass down all N rows at once (as reduce did, one
 * 32-column chunk at a time) was N strided streams, latency-bound at 10-26 GFLOP/s; now 35-65
 * (bench/NOTES.md, session 13).
 * The rank-r updates (out += s xa b^T, dinp += dxa a: K = r, cheap for sgemm to pack) stay with
 * sgemm (with BF16 panels the model adds them in the GEMM instead: lora_forward with out NULL,
 * lora_backward with dinp NULL, then st_bf16_gemm_px_lr), and so does everything on CPUs without
 * AVX-512F/VL (or with ST_NO_AVX512=1), AArch64 included. sgemm's copy routines were half of
 * LoRA's 5.6% of a bf16 training step; with these kernels LoRA was ~3.5% (xw and reduce 2%, the
 * updates in sgemm 1.7%; in the BF16 GEMM the updates cost ~0.4%). */
#include <cblas.h>
#include <stddef.h>
#include <string.h>

#include "lora.h"
#include "streamtune/f32.h"

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
#define INLINE static inline __attribute__((always_inline))

#define KBLK 512 /* xw: k per stack tile of W (8 x KBLK floats, 16 KiB) */
#define XR 8     /* xw: rows per thread in multiples of XR */
#define CW 32    /* reduce: columns per chunk (two 16-float vectors) */
#define RJ 8     /* reduce: ranks per register block */
#define SC 256   /* reduce: columns per slice (its partial sums: RJ x SC floats, 8 KiB) */
#define NB 16    /* reduce: rows per block (streams through y at once) */
#define XPF 4    /* xw: rows ahead that x is prefetched from */

/* ---------------------------------------------------------------- reduce */

/* Z(j, c) += s sum_n x[n][j] y[n][c] for the columns [c0, c1), all j < r; Z(j, c) at
 * z[j zj + c zc]. Each sum runs in one accumulator over n in order, then times s into Z. The
 * columns go in slices of SC, the rows of each slice in blocks of NB: a block's rows are NB
 * forward streams through y (1 KiB per row per slice), and each chunk prefetches its lines of
 * the next block's rows; all N rows of a 32-column chunk in one pass were N strided streams,
 * latency-bound (10-26 GFLOP/s). The partial sums wait in t between blocks, stored exactly: the
 * same bits as one pass. */
INLINE void reduce_cols(float *z, size_t zj, size_t zc, const float *x, size_t r, const float *y,
                        size_t ldy, size_t N, size_t c0, size_t c1, float s) {
    for (size_t s0 = c0; s0 < c1; s0 += SC) {
        size_t sw = c1 - s0 < SC ? c1 - s0 : SC;
        for (size_t j0 = 0; j0 < r; j0 += RJ) {
            size_t nj = r - j0 < RJ ? r - j0 : RJ;
            _Alignas(64) float t[RJ * SC];
            memset(t, 0, sizeof t);
            for (size_t n0 = 0; n0 < N; n0 += NB) {
                size_t n1 = N - n0 < NB ? N : n0 + NB;
                int pf = n1 + NB <= N;
                for (size_t cc = 0; cc < sw; cc += CW) {
                    size_t w = sw - cc < CW ? sw - cc : CW;
                    float *tc = t + cc;
                    const float *yc = y + s0 + cc;
                    if (nj == RJ && w == CW) {
                        v16 acc[RJ][2];
#pragma GCC unroll 8
                        for (int j = 0; j < RJ; j++) {
                            acc[j][0] = *(const v16 *)(tc + j * SC);
                            acc[j][1] = *(const v16 *)(tc + j * SC + 16);
                        }
                        for (size_t n = n0; n < n1; n++) {
                            const float *yn = yc + n * ldy, *xn = x + n * r + j0;
                            v16 b0 = *(const v16u *)yn, b1 = *(const v16u *)(yn + 16);
                            if (pf) { /* the next block's lines of this chunk */
                                __builtin_prefetch(yn + NB * ldy);
                                __builtin_prefetch(yn + NB * ldy + 16);
                            }
#pragma GCC unroll 8
                            for (int j = 0; j < RJ; j++) {
                                acc[j][0] += xn[j] * b0;
                                acc[j][1] += xn[j] * b1;
                            }
                        }
#pragma GCC unroll 8
                        for (int j = 0; j < RJ; j++) {
                            *(v16 *)(tc + j * SC) = acc[j][0];
                            *(v16 *)(tc + j * SC + 16) = acc[j][1];
                        }
                    } else { /* a rank tail or a narrow last chunk */
                        for (size_t n = n0; n < n1; n++)
                            for (size_t j = 0; j < nj; j++) {
                                float a = x[n * r + j0 + j];
                                for (size_t c = 0; c < w; c++)
                                    tc[j * SC + c] += a * yc[n * ldy + c];
                            }
                    }
                }
            }
            for (size_t j = 0; j < nj; j++)
                for (size_t c = 0; c < sw; c++)
                    z[(j0 + j) * zj + (s0 + c) * zc] += s * t[j * SC + c];
        }
    }
}

/* ---------------------------------------------------------------- drivers */

#if defined(__x86_64__)
#define AVX512 __attribute__((target("avx512f,avx512vl")))
#include <immintrin.h>
/* 8 accumulators of 16 lanes -> their 8 sums (lanes 0..7) */
AVX512 INLINE __m256 hsum8(__m512 a[8]) {
    __m512 s[4], t[2];
    for (int i = 0; i < 4; i++) /* quarters 0+2 and 1+3 of a pair */
        s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
    for (int i = 0; i < 2; i++) /* one quarter per accumulator */
        t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0xDD));
    __m512 p = _mm512_add_ps(_mm512_unpacklo_ps(t[0], t[1]), _mm512_unpackhi_ps(t[0], t[1]));
    p = _mm512_add_ps(p, _mm512_permute_ps(p, 0x4E));
    const __m512i ix = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castps512_ps256(_mm512_permutexvar_ps(ix, p));
}

/* y rows [n0, n1), lanes [j0, j0 + nj) (nj <= 8) = s x @ W[:, j0..]: lanes over k (16 k per
 * vector, x's rows read forward), two rows at a time, the 8 sums of a row added across lanes
 * at the end of each k block */
AVX512 static void xw_k16(float *y, size_t r, const float *x, size_t ldx, size_t n0, size_t n1,
                          size_t K, const float *w, size_t sk, size_t sj, size_t j0, size_t nj,
                          float s) {
    _Alignas(64) float wt[8 * KBLK]; /* wt[j KBLK + k] = s W(k0 + k, j0 + j), 0 past kb */
    for (size_t k0 = 0; k0 < K; k0 += KBLK) {
        size_t kb = K - k0 < KBLK ? K - k0 : KBLK, kv = (kb + 15) / 16;
        for (size_t j = 0; j < 8; j++)
            for (size_t k = 0; k < 16 * kv; k++)
                wt[j * KBLK + k] = j < nj && k < kb ? s * w[(k0 + k) * sk + (j0 + j) * sj] : 0.0f;
        __mmask16 tail = (__mmask16)(kb % 16 ? (1u << (kb % 16)) - 1 : 0xFFFF);
        size_t n = n0;
        for (; n + 2 <= n1; n += 2) {
            __m512 a0[8], a1[8];
            for (int j = 0; j < 8; j++) a0[j] = a1[j] = _mm512_setzero_ps();
            const float *x0 = x + n * ldx + k0, *x1 = x0 + ldx;
            int pf = n + 1 + XPF < n1;
            for (size_t v = 0; v < kv; v++) {
                __mmask16 m = v + 1 < kv ? 0xFFFF : tail;
                __m512 u0 = _mm512_maskz_loadu_ps(m, x0 + 16 * v);
                __m512 u1 = _mm512_maskz_loadu_ps(m, x1 + 16 * v);
                if (pf) { /* the rows XPF ahead: past the hardware prefetchers' reach */
                    _mm_prefetch((const char *)(x0 + XPF * ldx + 16 * v), _MM_HINT_T0);
                    _mm_prefetch((const char *)(x1 + XPF * ldx + 16 * v), _MM_HINT_T0);
                }
#pragma GCC unroll 8
                for (int j = 0; j < 8; j++) {
                    __m512 wj = _mm512_load_ps(wt + j * KBLK + 16 * v);
                    a0[j] = _mm512_fmadd_ps(u0, wj, a0[j]);
                    a1[j] = _mm512_fmadd_ps(u1, wj, a1[j]);
                }
            }
            _Alignas(32) float h[2][8];
            _mm256_store_ps(h[0], hsum8(a0));
            _mm256_store_ps(h[1], hsum8(a1));
            for (size_t i = 0; i < 2; i++) {
                float *yr = y + (n + i) * r + j0;
                for (size_t j = 0; j < nj; j++) yr[j] = (k0 ? yr[j] : 0.0f) + h[i][j];
            }
        }
        for (; n < n1; n++) { /* an odd last row */
            __m512 a0[8];
            for (int j = 0; j < 8; j++) a0[j] = _mm512_setzero_ps();
            const float *x0 = x + n * ldx + k0;
            for (size_t v = 0; v < kv; v++) {
                __m512 u0 = _mm512_maskz_loadu_ps(v + 1 < kv ? 0xFFFF : tail, x0 + 16 * v);
                for (int j = 0; j < 8; j++)
                    a0[j] = _mm512_fmadd_ps(u0, _mm512_load_ps(wt + j * KBLK + 16 * v), a0[j]);
            }
            _Alignas(32) float h[8];
            _mm256_store_ps(h, hsum8(a0));
            float *yr = y + n * r + j0;
            for (size_t j = 0; j < nj; j++) yr[j] = (k0 ? yr[j] : 0.0f) + h[j];
        }
    }
}

AVX512 static void xw_avx512(float *y, size_t r, const float *x, size_t ldx, size_t n0,
                             size_t n1, size_t K, const float *w, size_t sk, size_t sj, float s) {
    for (size_t j0 = 0; j0 < r; j0 += 8)
        xw_k16(y, r, x, ldx, n0, n1, K, w, sk, sj, j0, r - j0 < 8 ? r - j0 : 8, s);
}
AVX512 static void reduce_avx512(float *z, size_t zj, size_t zc, const float *x, size_t r,
                                 const float *y, size_t ldy, size_t N, size_t c0, size_t c1,
                                 float s) {
    reduce_cols(z, zj, zc, x, r, y, ldy, N, c0, c1, s);
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
#pragma omp parallel if (N * M >= PAR_MIN)
    { /* each thread a range of whole chunks */
        size_t nt = 1, t = 0;
#ifdef _OPENMP
        nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
#endif
        size_t c0 = t * nc / nt * CW, c1 = (t + 1) * nc / nt * CW;
        if (c1 > M) c1 = M;
        if (c0 < c1) reduce_avx512(z, zj, zc, x, r, y, M, N, c0, c1, s);
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
