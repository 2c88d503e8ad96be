/* gemm_f32.c: out (M, N) (+)= X (M, K) @ B where B is a frozen weight packed once into F32
 * panels: the F32 twin of gemm_bf16.c (same driver, same determinism), for training and
 * evaluation in F32 without a BLAS call per matmul.
 *
 * Layout: B (K, N) is packed in panels of NR = 32 columns; a panel holds, for each k, the 32
 * columns' values (zero-padded at the right edge). X is read in place (row stride ldx). The
 * micro-kernel keeps an MR x NR tile of float accumulators in 16 zmm registers and, per k,
 * broadcasts X's value of each row and issues one FMA per (row, 16 columns); k goes in blocks of
 * up to KC, balanced (a panel block streamed from L2, up to 1 MiB). Threads and blocks:
 * gemm_driver.h.
 *
 * On AArch64 (Advanced SIMD is mandatory there, so no run-time check) the 8 x 32 tile does not
 * fit in 32 registers of 4 floats: the NEON kernel walks the panel in strips of 8 columns
 * (16 accumulators), loads 4 consecutive k of each row's X into a register and multiplies with
 * vfmaq_laneq_f32. Every output is still one FMA chain in k order, whatever the thread count.
 * ST_NO_AVX512=1 (x86-64) and ST_NO_NEON=1 (AArch64) force the portable kernel.
 *
 * "wt" packs a weight W (OC, C) for out = X W^T (B[k][n] = W[n][k]); "w" packs it for
 * dX = dY W (B[k][n] = W[k][n]).
 *
 * Packed X (st_f32_gemm_px): X copied once into tiles of PR = 14 rows interleaved by k, so the
 * kernel's broadcasts walk one stream and a 14 x 32 tile (28 accumulators) shares each panel
 * line among 14 rows, with the panel prefetched 16 k ahead. Each output is the same FMA chain as
 * in the in-place kernel: the results are bitwise those of st_f32_gemm. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "streamtune/core.h"
#include "streamtune/f32.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define X86 1
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#define A64 1
#endif

#include "gemm_driver.h"
#ifdef A64
#include "gemm_neon.h"
#endif

#define NR GEMM_NR
#define MR GEMM_MR
#define KC 8192 /* at most this many k per block (balanced: gemm_kc): a tile streams its panel
                 * (128 B per k, up to 1 MiB) from L2 rather than store and reload its C tiles
                 * between k blocks: +4-5% at the 110M shapes over 288 (36 KiB panel blocks,
                 * sized for L1), gate/up +9% (bench/NOTES.md, session 7) */

size_t st_f32_panels_bytes(size_t K, size_t N) {
    return (N + NR - 1) / NR * K * NR * sizeof(float);
}

void st_f32_pack_wt(float *dst, const float *w, size_t OC, size_t C) {
    size_t np = (OC + NR - 1) / NR;
#pragma omp parallel for schedule(static)
    for (size_t n = 0; n < np * NR; n++) { /* row n of W is column n of B */
        float *d = dst + (n / NR) * C * NR + n % NR;
        for (size_t k = 0; k < C; k++) d[k * NR] = n < OC ? w[n * C + k] : 0.0f;
    }
}

void st_f32_pack_w(float *dst, const float *w, size_t OC, size_t C) {
    size_t np = (C + NR - 1) / NR;
#pragma omp parallel for schedule(static)
    for (size_t k = 0; k < OC; k++) /* row k of W is row k of B */
        for (size_t p = 0; p < np; p++) {
            float *d = dst + (p * OC + k) * NR;
            size_t n0 = p * NR, nn = C - n0 < NR ? C - n0 : NR;
            memcpy(d, w + k * C + n0, nn * sizeof(float));
            memset(d + nn, 0, (NR - nn) * sizeof(float));
        }
}

/* Portable micro-kernel: c (mr, nr valid of NR) = init + x rows @ panel block, or += when init
 * is NULL (init: NR floats, the starting value of every row). X's (row r, k) is x[r rs + k ks]:
 * rs = ldx, ks = 1 in place; rs = 1, ks = PR packed. */
static void kernel_generic(float *c, size_t ldc, const float *x, size_t rs, size_t ks,
                           const float *bp, size_t nk, size_t mr, size_t nr, const float *init) {
    for (size_t r = 0; r < mr; r++) {
        float acc[NR] = {0};
        if (init)
            memcpy(acc, init, sizeof acc);
        else
            memcpy(acc, c + r * ldc, nr * sizeof(float));
        for (size_t k = 0; k < nk; k++) {
            float xv = x[r * rs + k * ks];
            const float *b = bp + k * NR;
#pragma omp simd
            for (size_t n = 0; n < NR; n++) acc[n] += xv * b[n];
        }
        memcpy(c + r * ldc, acc, nr * sizeof(float));
    }
}

#ifdef X86
/* The tile's k loop for R rows (R constant at each call: the 2 R accumulators stay in registers
 * from the loads of c (or init) to the stores, with no stack copies between). */
#define TILE_BODY(R)                                                                              \
    do {                                                                                          \
        __m512 acc[R][2];                                                                         \
        _Pragma("GCC unroll 8") for (int r = 0; r < (R); r++) {                                   \
            const float *src = init ? init : c + r * ldc;                                         \
            acc[r][0] = _mm512_maskz_loadu_ps(m0, src);                                           \
            acc[r][1] = _mm512_maskz_loadu_ps(m1, src + 16);                                      \
        }                                                                                         \
        for (size_t k = 0; k < nk; k++) {                                                         \
            __m512 b0 = _mm512_loadu_ps(bp + k * NR), b1 = _mm512_loadu_ps(bp + k * NR + 16);     \
            _Pragma("GCC unroll 8") for (int r = 0; r < (R); r++) {                               \
                __m512 a = _mm512_set1_ps(x[r * ldx + k]);                                        \
                acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);                                    \
                acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);                                    \
            }                                                                                     \
        }                                                                                         \
        _Pragma("GCC unroll 8") for (int r = 0; r < (R); r++) {                                   \
            _mm512_mask_storeu_ps(c + r * ldc, m0, acc[r][0]);                                    \
            _mm512_mask_storeu_ps(c + r * ldc + 16, m1, acc[r][1]);                               \
        }                                                                                         \
    } while (0)

/* nt full tiles, one after another down the rows */
__attribute__((target("avx512f"))) static void
kernel_avx512_full(float *c, size_t ldc, const float *x, size_t ldx, size_t nt, const float *bp,
                   size_t nk, __mmask16 m0, __mmask16 m1, const float *init) {
    for (size_t t = 0; t < nt; t++, c += MR * ldc, x += MR * ldx) TILE_BODY(MR);
}

/* 1..MR - 1 rows: one case per row count, so that each keeps its accumulators in registers */
__attribute__((target("avx512f"))) static void
kernel_avx512_part(float *c, size_t ldc, const float *x, size_t ldx, const float *bp, size_t nk,
                   size_t mr, __mmask16 m0, __mmask16 m1, const float *init) {
    GEMM_PARTIAL_ROWS(mr, TILE_BODY)
}

__attribute__((target("avx512f"))) static void kernel_avx512(float *c, size_t ldc,
                                                             const float *x, size_t ldx,
                                                             const float *bp, size_t nk,
                                                             size_t rows, size_t nr,
                                                             const float *init) {
    /* valid columns of the panel's two 16-float halves */
    __mmask16 m0 = (__mmask16)(nr >= 16 ? 0xffffu : (1u << nr) - 1);
    __mmask16 m1 = (__mmask16)(nr <= 16 ? 0u : nr >= 32 ? 0xffffu : (1u << (nr - 16)) - 1);
    size_t nt = rows / MR;
    if (nt) kernel_avx512_full(c, ldc, x, ldx, nt, bp, nk, m0, m1, init);
    if (rows % MR)
        kernel_avx512_part(c + nt * MR * ldc, ldc, x + nt * MR * ldx, ldx, bp, nk, rows % MR,
                           m0, m1, init);
}
#endif

#ifdef A64
/* One strip (gemm_neon.h) of the tile: columns [0, nc) (nc <= 8) of c, bp and init, which point
 * at the strip's first column; xr: MR row pointers (rows past mr repeat row 0: computed, never
 * stored). */
static void strip_neon(float *c, size_t ldc, const float *const *xr, const float *bp, size_t nk,
                       size_t mr, size_t nc, const float *init) {
    float t[MR][STRIP_NC];
    float32x4_t acc[MR][2], b0, b1;
    strip_stage_in(t, c, ldc, mr, nc, init);
    STRIP_EACH_ROW(STRIP_LOAD);
    size_t k = 0;
    for (; k + 4 <= nk; k += 4) {
        float32x4_t xv[MR];
#define LOADX(r) (xv[r] = vld1q_f32(xr[r] + k))
        STRIP_EACH_ROW(LOADX);
#define FMA(r)                                                                                     \
    (acc[r][0] = vfmaq_laneq_f32(acc[r][0], b0, xv[r], j),                                         \
     acc[r][1] = vfmaq_laneq_f32(acc[r][1], b1, xv[r], j))
#define STEP(jj)                                                                                   \
    do {                                                                                           \
        enum { j = jj };                                                                           \
        b0 = vld1q_f32(bp + (k + j) * NR), b1 = vld1q_f32(bp + (k + j) * NR + 4);                  \
        STRIP_EACH_ROW(FMA);                                                                       \
    } while (0)
        STEP(0); STEP(1); STEP(2); STEP(3);
#undef STEP
#undef FMA
#undef LOADX
    }
    for (; k < nk; k++) {
        b0 = vld1q_f32(bp + k * NR), b1 = vld1q_f32(bp + k * NR + 4);
#define FMA1(r)                                                                                    \
    (acc[r][0] = vfmaq_n_f32(acc[r][0], b0, xr[r][k]),                                             \
     acc[r][1] = vfmaq_n_f32(acc[r][1], b1, xr[r][k]))
        STRIP_EACH_ROW(FMA1);
#undef FMA1
    }
    STRIP_EACH_ROW(STRIP_STORE);
    strip_stage_out(c, ldc, t, mr, nc);
}

/* NEON micro-kernel: the contract of kernel_generic, strip by strip (strips wholly past nr are
 * skipped: the panel's zero padding needs no work). */
static void kernel_neon(float *c, size_t ldc, const float *x, size_t ldx, const float *bp,
                        size_t nk, size_t mr, size_t nr, const float *init) {
    const float *xr[MR];
    for (size_t r = 0; r < MR; r++) xr[r] = x + (r < mr ? r : 0) * ldx;
    for (size_t s = 0; s < nr; s += STRIP_NC)
        strip_neon(c + s, ldc, xr, bp + s, nk, mr, nr - s < STRIP_NC ? nr - s : STRIP_NC,
                   init ? init + s : NULL);
}
#endif

/* ---- packed X: tiles of PR rows, xp[(t K + k) PR + r] (rows past M zero); row blocks of PMC */
#define PR 14
#define PMC (9 * PR)

#ifdef X86
#include "transpose16.h"

/* The tile's rows (mr valid) from x into d, 16 k at a time through a register transpose (rows
 * 14 and 15 of the 16 x 16 block are padding); returns the k done. */
__attribute__((target("avx512f"))) static size_t pack_tile_avx512(float *d, const float *x,
                                                                  size_t ldx, size_t K,
                                                                  size_t mr) {
    size_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 a[16], o[16];
        for (size_t r = 0; r < 16; r++)
            a[r] = r < mr ? _mm512_loadu_ps(x + r * ldx + k) : _mm512_setzero_ps();
        tr16(a, o);
        for (int j = 0; j < 16; j++) _mm512_mask_storeu_ps(d + (k + (size_t)j) * PR, 0x3fff, o[j]);
    }
    return k;
}

/* c (mr of PR rows, nr valid columns) = init + X tile @ panel block, or += when init is NULL */
__attribute__((target("avx512f"))) static void kernel_packed_avx512(float *c, size_t ldc,
                                                                   const float *xt,
                                                                   const float *bp, size_t nk,
                                                                   size_t mr, size_t nr,
                                                                   const float *init) {
    __mmask16 m0 = (__mmask16)(nr >= 16 ? 0xffffu : (1u << nr) - 1);
    __mmask16 m1 = (__mmask16)(nr <= 16 ? 0u : nr >= 32 ? 0xffffu : (1u << (nr - 16)) - 1);
    __m512 acc[PR][2];
    _Pragma("GCC unroll 14") for (size_t r = 0; r < PR; r++) {
        const float *src = init ? init : c + (r < mr ? r : 0) * ldc;
        int live = init || r < mr;
        acc[r][0] = live ? _mm512_maskz_loadu_ps(m0, src) : _mm512_setzero_ps();
        acc[r][1] = live ? _mm512_maskz_loadu_ps(m1, src + 16) : _mm512_setzero_ps();
    }
    for (size_t k = 0; k < nk; k++) {
        _mm_prefetch((const char *)(bp + (k + 16) * NR), _MM_HINT_T0);
        _mm_prefetch((const char *)(bp + (k + 16) * NR + 16), _MM_HINT_T0);
        __m512 b0 = _mm512_loadu_ps(bp + k * NR), b1 = _mm512_loadu_ps(bp + k * NR + 16);
        _Pragma("GCC unroll 14") for (size_t r = 0; r < PR; r++) {
            __m512 a = _mm512_set1_ps(xt[k * PR + r]);
            acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    for (size_t r = 0; r < mr; r++) {
        _mm512_mask_storeu_ps(c + r * ldc, m0, acc[r][0]);
        _mm512_mask_storeu_ps(c + r * ldc + 16, m1, acc[r][1]);
    }
}
#endif

int st_f32_packed(void) {
#ifdef X86
    return st_f32_native();
#else
    return 0; /* the NEON kernel reads X in place faster than the portable packed loop */
#endif
}

size_t st_f32_x_floats(size_t M, size_t K) { return (M + PR - 1) / PR * PR * K; }

size_t st_f32_x_rows(size_t floats, size_t K) {
    size_t rows = floats / (K ? K : 1);
    return rows - rows % PMC;
}

void st_f32_pack_x(float *xp, const float *x, size_t M, size_t K, size_t ldx) {
    size_t nt = (M + PR - 1) / PR;
    int native = st_f32_native();
    (void)native; /* x86 only */
#pragma omp parallel for schedule(static) if (M * K > 16384)
    for (size_t t = 0; t < nt; t++) {
        size_t mr = M - t * PR < PR ? M - t * PR : PR, k0 = 0;
        float *d = xp + t * K * PR;
        const float *xr = x + t * PR * ldx;
#ifdef X86
        if (native) k0 = pack_tile_avx512(d, xr, ldx, K, mr);
#endif
        for (size_t k = k0; k < K; k++)
            for (size_t r = 0; r < PR; r++) d[k * PR + r] = r < mr ? xr[r * ldx + k] : 0.0f;
    }
}

struct f32p_args {
    const float *xp, *panels;
    size_t K;
    int native;
};

static void f32p_tile(const void *ctx, float *c, size_t ldc, size_t m0, size_t m1, size_t k0,
                      size_t nk, size_t p, size_t nr, const float *init) {
    const struct f32p_args *g = ctx;
    const float *bp = g->panels + (p * g->K + k0) * NR;
    for (size_t m = m0; m < m1; m += PR, c += PR * ldc) { /* m0: a multiple of PMC */
        size_t mr = m1 - m < PR ? m1 - m : PR;
        const float *xt = g->xp + m * g->K + k0 * PR; /* tile m / PR starts at m K */
#ifdef X86
        if (g->native) {
            kernel_packed_avx512(c, ldc, xt, bp, nk, mr, nr, init);
            continue;
        }
#endif
        kernel_generic(c, ldc, xt, 1, PR, bp, nk, mr, nr, init);
    }
}

void st_f32_gemm_px(float *out, size_t ldo, const float *xp, const float *panels,
                    const float *bias, size_t M, size_t K, size_t N, int accumulate) {
    struct f32p_args g = {xp, panels, K, st_f32_native()};
    gemm_drive(out, ldo, bias, M, K, N, gemm_kc(K, KC), PMC, accumulate, f32p_tile, &g);
}

int st_f32_native(void) {
#ifdef X86
    static int v = -1;
    if (v < 0) {
        __builtin_cpu_init();
        v = !st_env_flag("ST_NO_AVX512") && __builtin_cpu_supports("avx512f");
    }
    return v;
#elif defined(A64)
    static int v = -1;
    if (v < 0) v = !st_env_flag("ST_NO_NEON");
    return v;
#else
    return 0;
#endif
}

struct f32_args {
    const float *x, *panels;
    size_t ldx, K;
    int native;
};

static void f32_tile(const void *ctx, float *c, size_t ldc, size_t m0, size_t m1, size_t k0,
                     size_t nk, size_t p, size_t nr, const float *init) {
    const struct f32_args *g = ctx;
    const float *x = g->x + m0 * g->ldx + k0, *bp = g->panels + (p * g->K + k0) * NR;
#ifdef X86
    if (g->native) {
        kernel_avx512(c, ldc, x, g->ldx, bp, nk, m1 - m0, nr, init);
        return;
    }
#endif
    for (size_t m = m0; m < m1; m += MR, c += MR * ldc, x += MR * g->ldx) {
        size_t mr = m1 - m < MR ? m1 - m : MR;
#ifdef A64
        if (g->native) {
            kernel_neon(c, ldc, x, g->ldx, bp, nk, mr, nr, init);
            continue;
        }
#endif
        kernel_generic(c, ldc, x, g->ldx, 1, bp, nk, mr, nr, init);
    }
}

void st_f32_gemm(float *out, size_t ldo, const float *x, size_t ldx, const float *panels,
                 const float *bias, size_t M, size_t K, size_t N, int accumulate) {
    struct f32_args g = {x, panels, ldx, K, st_f32_native()};
    /* rows per block: GEMM_MC, or 512 when the panels are big (an LM head's backward: 98 MB of
     * F32 panels for 32000 x 768, K = 32000), so that they stream from memory once per 512 rows,
     * not per 128 (the row blocks' X is read from L3 either way) */
    size_t mc = N * K * sizeof(float) >= ((size_t)16 << 20) ? 512 : GEMM_MC;
    gemm_drive(out, ldo, bias, M, K, N, gemm_kc(K, KC), mc, accumulate, f32_tile, &g);
}
