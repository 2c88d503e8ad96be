/* gemm_driver.h: the loop nest shared by the panel GEMMs (gemm_bf16.c, gemm_f32.c).
 *
 * out (M, N) = start + X @ B, B packed in panels of GEMM_NR columns. Rows go in blocks of mc
 * (GEMM_MC; more for panels too big to stay in cache) outside; panels are split over threads
 * inside, so every
 * panel is streamed once per row block, not once per row tile. The static schedule gives a thread
 * the same panels in every row block and row blocks write disjoint outputs, so no barrier is
 * needed between them (nowait: with passive waiting each barrier cost a futex wake-up, about 6% of
 * a forward pass); each output element is summed by one thread in a fixed order, so results do
 * not depend on the thread count. k goes in blocks of kc units (a pair of k for BF16, one k for
 * F32): the first block starts the tile from zeros or the bias, in registers (a separate pass over
 * out was 5% of a forward on a 49k-vocabulary head); later blocks, and accumulate, add to out. */
#ifndef ST_KERNELS_CPU_GEMM_DRIVER_H
#define ST_KERNELS_CPU_GEMM_DRIVER_H
#include <stddef.h>
#include <string.h>

#define GEMM_NR 32  /* columns per panel */
#define GEMM_MR 8   /* rows per micro-tile */
#define GEMM_MC 128 /* rows per block (the usual mc) */

/* BODY(R) with R = mr in 1..GEMM_MR - 1 a constant in each case (tile kernels for the last rows:
 * constant row counts keep their accumulators in registers) */
#define GEMM_PARTIAL_ROWS(mr, BODY)                                                           \
    switch (mr) {                                                                             \
    case 1: BODY(1); break;                                                                   \
    case 2: BODY(2); break;                                                                   \
    case 3: BODY(3); break;                                                                   \
    case 4: BODY(4); break;                                                                   \
    case 5: BODY(5); break;                                                                   \
    case 6: BODY(6); break;                                                                   \
    case 7: BODY(7); break;                                                                   \
    default: break; /* callers pass 1..7 */                                                   \
    }
_Static_assert(GEMM_MR == 8, "GEMM_PARTIAL_ROWS lists 1..7 rows");

/* k block size for K units and at most kc_max per block: the blocks balanced (K = 20000 and
 * kc_max 16384 are two blocks of 10000, not 16384 + 3616: each extra block reloads and stores
 * the C tiles) */
static inline size_t gemm_kc(size_t K, size_t kc_max) {
    if (K == 0) return 1; /* one empty block: the tiles get their start (zeros or the bias) */
    size_t nb = K > kc_max ? (K + kc_max - 1) / kc_max : 1;
    return (K + nb - 1) / nb;
}

/* The micro-tiles of one row block and one k block: c (rows [m0, m1) of stride ldc, nr valid
 * columns of panel p; c points at row m0) = init + X rows [m0, m1) @ panel p's k units
 * [k0, k0 + nk), or += when init is NULL, in tiles of GEMM_MR rows (the last may be shorter).
 * One call per block, not per tile (two calls per 8-row tile were ~3.5% of the samples of a
 * bf16 forward). */
typedef void (*gemm_tile_fn)(const void *ctx, float *c, size_t ldc, size_t m0, size_t m1,
                             size_t k0, size_t nk, size_t p, size_t nr, const float *init);

static inline void gemm_drive(float *out, size_t ldo, const float *bias, size_t M, size_t K,
                              size_t N, size_t kc, size_t mc, int accumulate, gemm_tile_fn tile,
                              const void *ctx) {
    size_t np = (N + GEMM_NR - 1) / GEMM_NR;
#pragma omp parallel
    for (size_t mb = 0; mb < M; mb += mc) {
        size_t me = M - mb < mc ? M : mb + mc;
#pragma omp for schedule(static) nowait
        for (size_t p = 0; p < np; p++) {
            size_t n0 = p * GEMM_NR, nr = N - n0 < GEMM_NR ? N - n0 : GEMM_NR;
            float start[GEMM_NR] = {0};
            if (!accumulate && bias) memcpy(start, bias + n0, nr * sizeof(float));
            if (accumulate && bias)
                for (size_t m = mb; m < me; m++)
                    for (size_t n = 0; n < nr; n++) out[m * ldo + n0 + n] += bias[n0 + n];
            for (size_t k0 = 0; k0 < K || k0 == 0; k0 += kc) {
                size_t nk = K - k0 < kc ? K - k0 : kc;
                const float *init = k0 == 0 && !accumulate ? start : NULL;
                tile(ctx, out + mb * ldo + n0, ldo, mb, me, k0, nk, p, nr, init);
            }
        }
    }
}
#endif
