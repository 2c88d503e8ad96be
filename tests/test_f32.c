/* test_f32.c: the F32 panel GEMM (include/streamtune/f32.h) against float64 loops on odd shapes
 * (edges of the 8 x 32 tile, K across k blocks, rows across blocks of 128), with bias,
 * with X read in place and packed (14-row tiles, blocks of 126 rows: bitwise the same),
 * accumulate, both packings (X W^T and dY W), row strides, 1 and 3 threads (bitwise the same);
 * panels of 16 MB or more (row blocks of 512);
 * the AVX-512 kernel and the portable fallback (ST_NO_AVX512=1, rerun by ctest) alike, and the
 * AArch64 NEON kernel (ST_NO_NEON=1: portable) under qemu (tests/test_aarch64.sh). It prints
 * which kernel ran. The tolerance is 1e-5 of sum |x w| (float summation). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "streamtune/f32.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static uint64_t rs = 0x13198A2E03707344ull;
static float urand(void) {
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return (float)((rs >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static void gemm_case(size_t M, size_t K, size_t N, int transposed, int with_bias, int acc,
                      size_t pad) {
    size_t ldx = K + pad, ldo = N + pad;
    float *x = malloc(M * ldx * 4), *w = malloc(K * N * 4), *out = malloc(M * ldo * 4);
    float *out1 = malloc(M * ldo * 4), *bias = malloc(N * 4);
    double *want = malloc(M * N * 8), *mag = malloc(M * N * 8);
    float *panels = malloc(st_f32_panels_bytes(K, N));
    if (!x || !w || !out || !out1 || !bias || !want || !mag || !panels) abort();
    for (size_t i = 0; i < M * ldx; i++) x[i] = urand();
    for (size_t i = 0; i < K * N; i++) w[i] = urand();
    for (size_t i = 0; i < N; i++) bias[i] = urand();
    for (size_t i = 0; i < M * ldo; i++) out[i] = urand();
    memcpy(out1, out, M * ldo * 4);
    float *out0 = malloc(M * ldo * 4); /* the start, for the packed call */
    if (!out0) abort();
    memcpy(out0, out, M * ldo * 4);
    /* w holds W (OC=N, C=K) for X W^T, or W (OC=K, C=N) for dY W */
    if (transposed)
        st_f32_pack_wt(panels, w, N, K);
    else
        st_f32_pack_w(panels, w, K, N);
    for (size_t m = 0; m < M; m++)
        for (size_t n = 0; n < N; n++) {
            double s = acc ? out[m * ldo + n] : 0, a = 0;
            if (with_bias) s += bias[n];
            for (size_t k = 0; k < K; k++) {
                double p = (double)x[m * ldx + k] * (transposed ? w[n * K + k] : w[k * N + n]);
                s += p;
                a += fabs(p);
            }
            want[m * N + n] = s;
            mag[m * N + n] = a + fabs(s) + 1e-30;
        }
    float pad_canary = out[ldo - 1];
#ifdef _OPENMP
    int saved = omp_get_max_threads();
    omp_set_num_threads(3);
    st_f32_gemm(out1, ldo, x, ldx, panels, with_bias ? bias : NULL, M, K, N, acc);
    omp_set_num_threads(1);
#endif
    st_f32_gemm(out, ldo, x, ldx, panels, with_bias ? bias : NULL, M, K, N, acc);
#ifdef _OPENMP
    omp_set_num_threads(saved);
    CHECKF(memcmp(out, out1, M * ldo * 4) == 0, "M=%zu K=%zu N=%zu: 1 and 3 threads differ", M, K, N);
#endif
    /* X packed first (st_f32_gemm_px): bitwise the in-place result, on 3 threads; the start of
     * out starting from out0 */
    {
        float *xp = malloc(st_f32_x_floats(M, K) * 4 + 4), *outp = malloc(M * ldo * 4);
        if (!xp || !outp) abort();
        memcpy(outp, out0, M * ldo * 4);
#ifdef _OPENMP
        omp_set_num_threads(3);
#endif
        st_f32_pack_x(xp, x, M, K, ldx);
        st_f32_gemm_px(outp, ldo, xp, panels, with_bias ? bias : NULL, M, K, N, acc);
#ifdef _OPENMP
        omp_set_num_threads(saved);
#endif
        if (st_f32_packed() || !st_f32_native()) { /* the same kernel family: the same bits */
            CHECKF(memcmp(out, outp, M * ldo * 4) == 0, "M=%zu K=%zu N=%zu acc=%d: packed X "
                   "differs from in place", M, K, N, acc);
        } else { /* NEON in place, the portable loop packed (never used there): the tolerance */
            double wp = 0;
            for (size_t m = 0; m < M; m++)
                for (size_t n = 0; n < N; n++) {
                    double e = fabs(outp[m * ldo + n] - want[m * N + n]) / mag[m * N + n];
                    if (!(e <= wp)) wp = e;
                }
            CHECKF(wp < 1e-5, "M=%zu K=%zu N=%zu acc=%d: packed X rel error %.3g", M, K, N, acc, wp);
        }
        free(xp), free(outp);
    }
    double worst = 0;
    for (size_t m = 0; m < M; m++)
        for (size_t n = 0; n < N; n++) {
            double e = fabs(out[m * ldo + n] - want[m * N + n]) / mag[m * N + n];
            if (e > worst) worst = e;
        }
    CHECKF(worst < 1e-5, "M=%zu K=%zu N=%zu %s bias=%d acc=%d pad=%zu: rel error %.3g (native %d)",
           M, K, N, transposed ? "XW^T" : "dYW", with_bias, acc, pad, worst, st_f32_native());
    if (pad) CHECK(out[ldo - 1] == pad_canary); /* the stride's padding is not written */
    free(x), free(w), free(out), free(out1), free(bias), free(want), free(mag), free(panels);
    free(out0);
}

TEST(gemm) {
    gemm_case(1, 1, 1, 1, 0, 0, 0);
    gemm_case(8, 64, 32, 1, 0, 0, 0);      /* exactly one tile */
    gemm_case(13, 37, 45, 1, 1, 0, 3);     /* ragged everything, bias, strides */
    gemm_case(9, 577, 70, 1, 0, 1, 0);     /* accumulate */
    gemm_case(17, 100, 33, 0, 0, 1, 5);    /* the dY W packing */
    gemm_case(64, 576, 192, 1, 1, 0, 0);   /* a transformer-ish shape */
    gemm_case(3, 1031, 7, 0, 1, 1, 1);     /* accumulate with bias */
    gemm_case(300, 600, 70, 1, 1, 0, 2);   /* 3 row blocks, bias */
    gemm_case(260, 300, 65, 0, 0, 0, 0);   /* 3 row blocks, zero start, ragged last panel */
    gemm_case(14, 289, 33, 1, 1, 0, 1);   /* a 6-row last tile */
    gemm_case(15, 577, 40, 0, 0, 1, 0);   /* a 7-row last tile */
    gemm_case(14, 0, 33, 1, 1, 0, 0);     /* K = 0: out = bias */
    gemm_case(10, 0, 20, 0, 0, 1, 0);     /* K = 0, accumulate: out unchanged */
    gemm_case(5, 16385, 40, 1, 1, 0, 0);  /* K over three k blocks (5462 each), bias */
    gemm_case(9, 9001, 33, 0, 0, 1, 2);   /* two k blocks, the dY W packing, accumulate */
    gemm_case(140, 70, 64, 1, 1, 1, 3);   /* packed X: a full block of 126 rows and one tile */
    gemm_case(127, 33, 40, 0, 1, 0, 0);   /* packed X: a 1-row second block, K past 16 + 16 */
}

/* Panels of 16 MB or more (an LM head's backward, dY W with K = the vocabulary) run in row blocks
 * of 512, not 128: 515 rows (a second, 3-row block), K = 4097, N = 1024 (16.8 MB of panels). The
 * in-place result is bitwise the packed-X one (row blocks of 126) and, on rows at both blocks'
 * edges, within 1e-5 of float64 (a full reference would cost 2G multiply-adds). Two 4.3 GFLOP
 * products: run with the x86 native kernels only (the row blocking is the shared driver's; the
 * portable loop, and NEON under qemu in test_aarch64, took minutes for it). */
TEST(big_panels) {
#if !defined(__x86_64__)
    return;
#endif
    if (!st_f32_native()) return;
    size_t M = 515, K = 4097, N = 1024;
    float *x = malloc(M * K * 4), *w = malloc(K * N * 4), *out = malloc(M * N * 4);
    float *outp = malloc(M * N * 4), *panels = malloc(st_f32_panels_bytes(K, N));
    float *xp = malloc(st_f32_x_floats(M, K) * 4);
    if (!x || !w || !out || !outp || !panels || !xp) abort();
    CHECK(st_f32_panels_bytes(K, N) >= ((size_t)16 << 20));
    for (size_t i = 0; i < M * K; i++) x[i] = urand();
    for (size_t i = 0; i < K * N; i++) w[i] = urand();
    st_f32_pack_w(panels, w, K, N);
    st_f32_gemm(out, N, x, K, panels, NULL, M, K, N, 0);
    st_f32_pack_x(xp, x, M, K, K);
    st_f32_gemm_px(outp, N, xp, panels, NULL, M, K, N, 0);
    if (st_f32_packed() || !st_f32_native())
        CHECK(memcmp(out, outp, M * N * 4) == 0);
    static const size_t rows[] = {0, 127, 128, 511, 512, 514};
    double worst = 0;
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++)
        for (size_t n = 0; n < N; n++) {
            size_t m = rows[i];
            double s = 0, a = 0;
            for (size_t k = 0; k < K; k++) {
                double p = (double)x[m * K + k] * w[k * N + n];
                s += p, a += fabs(p);
            }
            double e = fabs(out[m * N + n] - s) / (a + fabs(s) + 1e-30);
            if (!(e <= worst)) worst = e;
        }
    CHECKF(worst < 1e-5, "big panels: rel error %.3g on the block edges' rows", worst);
    free(x), free(w), free(out), free(outp), free(panels), free(xp);
}

int main(void) {
    printf("kernel: %s\n", st_f32_native() ? "native" : "portable");
    RUN(gemm);
    RUN(big_panels);
    return test_finish();
}
