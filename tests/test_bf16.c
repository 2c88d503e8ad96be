/* test_bf16.c: the BF16 GEMM (include/streamtune/bf16.h) against float64 loops over the same
 * BF16-rounded operands, on odd shapes (edges of the 8 x 32 and AMX 32 x 32 tiles, odd K, K across
 * blocks), with bias, accumulate, both packings (X W^T and dY W), row strides; the AMX-BF16 kernel
 * (where the CPU has it; ST_AMX_KC=32 reruns it with small k blocks), the AVX512_BF16 one
 * (ST_NO_AMX=1) and the portable fallback (ST_NO_AVX512BF16=1) alike, with 1 and 3 threads
 * (bitwise the same); on AArch64 the BFDOT kernel and the portable one (no FEAT_BF16, or
 * ST_NO_NEON=1) under qemu (tests/test_aarch64.sh). It prints which kernel ran. Products of two
 * BF16 values are exact in float, so the only error is float summation (BFDOT: rounded to odd,
 * denormals flushed; AMX: denormals flushed): the tolerance is 1e-5 of sum |x w|. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "streamtune/bf16.h"
#include "streamtune/core.h"
#include "streamtune/formats.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static uint64_t rs = 0x243F6A8885A308D3ull;
static float urand(void) {
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return (float)((rs >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}
static float bf(float f) { return st_bf16_to_f32(st_f32_to_bf16(f)); }

/* r > 0: with a rank-r low-rank term (st_bf16_gemm_px_lr; float, scale 0.7), its W as (N, r)
 * with the X W^T packing and as (r, N) with dY W, as the LoRA forward and backward use it */
static void gemm_case_lr(size_t M, size_t K, size_t N, int transposed, int with_bias, int acc,
                         size_t pad, size_t r) {
    size_t ldx = K + pad, ldo = N + pad;
    float *lx = malloc((M * r + 1) * 4), *lw = malloc((N * r + 1) * 4);
    if (!lx || !lw) abort();
    for (size_t i = 0; i < M * r; i++) lx[i] = urand();
    for (size_t i = 0; i < N * r; i++) lw[i] = urand();
    struct st_lowrank lr = {lx, r, lw, transposed ? r : 1, transposed ? 1 : N, 0.7f};
    float *x = malloc(M * ldx * 4), *w = malloc(K * N * 4), *out = malloc(M * ldo * 4);
    float *bias = malloc(N * 4);
    double *want = malloc(M * N * 8), *mag = malloc(M * N * 8);
    uint16_t *panels = malloc(st_bf16_panels_bytes(K, N));
    uint32_t *xs = malloc(st_bf16_x_bytes(M, K));
    if (!x || !w || !out || !bias || !want || !mag || !panels || !xs) abort();
    for (size_t i = 0; i < M * ldx; i++) x[i] = urand();
    for (size_t i = 0; i < K * N; i++) w[i] = urand();
    for (size_t i = 0; i < N; i++) bias[i] = urand();
    for (size_t i = 0; i < M * ldo; i++) out[i] = urand();
    /* w holds W (OC=N, C=K) for X W^T, or W (OC=K, C=N) for dY W */
    if (transposed)
        st_bf16_pack_wt(panels, w, N, K);
    else
        st_bf16_pack_w(panels, w, K, N);
    for (size_t m = 0; m < M; m++)
        for (size_t n = 0; n < N; n++) {
            double s = acc ? out[m * ldo + n] : 0, a = 0;
            if (with_bias) s += bias[n];
            for (size_t k = 0; k < K; k++) {
                double wv = bf(transposed ? w[n * K + k] : w[k * N + n]);
                double p = (double)bf(x[m * ldx + k]) * wv;
                s += p;
                a += fabs(p);
            }
            for (size_t j = 0; j < r; j++) {
                double p = 0.7 * lx[m * r + j] * lw[n * lr.wn + j * lr.wj];
                s += p;
                a += fabs(p);
            }
            want[m * N + n] = s;
            mag[m * N + n] = a + fabs(s) + 1e-30;
        }
    float pad_canary = out[ldo - 1];
#ifdef _OPENMP /* the same bits with 3 threads as with 1 (each output summed by one thread) */
    float *out3 = malloc(M * ldo * 4);
    if (!out3) abort();
    memcpy(out3, out, M * ldo * 4);
    int saved = omp_get_max_threads();
    omp_set_num_threads(3);
    st_bf16_pack_x(xs, x, M, K, ldx);
    st_bf16_gemm_px_lr(out3, ldo, xs, panels, with_bias ? bias : NULL, M, K, N, acc,
                       r ? &lr : NULL);
    omp_set_num_threads(1);
#endif
    if (r) {
        /* the W tiles built once per call, and (their allocation failing) per tile block: the
         * same terms in the same order, so the same bits */
        float *outf = malloc(M * ldo * 4);
        if (!outf) abort();
        memcpy(outf, out, M * ldo * 4);
        st_bf16_pack_x(xs, x, M, K, ldx);
        st_alloc_fail_nth(1);
        st_bf16_gemm_px_lr(outf, ldo, xs, panels, with_bias ? bias : NULL, M, K, N, acc, &lr);
        st_alloc_fail_nth(0);
        st_bf16_gemm_px_lr(out, ldo, xs, panels, with_bias ? bias : NULL, M, K, N, acc, &lr);
        CHECKF(memcmp(out, outf, M * ldo * 4) == 0, "M=%zu K=%zu N=%zu r=%zu: the per-block W "
               "tiles give other bits", M, K, N, r);
        free(outf);
    } else {
        st_bf16_gemm(out, ldo, x, ldx, panels, with_bias ? bias : NULL, M, K, N, acc, xs);
    }
#ifdef _OPENMP
    omp_set_num_threads(saved);
    CHECKF(memcmp(out, out3, M * ldo * 4) == 0, "M=%zu K=%zu N=%zu: 1 and 3 threads differ", M, K, N);
    free(out3);
#endif
    double worst = 0;
    for (size_t m = 0; m < M; m++)
        for (size_t n = 0; n < N; n++) {
            double e = fabs(out[m * ldo + n] - want[m * N + n]) / mag[m * N + n];
            if (e > worst) worst = e;
        }
    CHECKF(worst < 1e-5,
           "M=%zu K=%zu N=%zu %s bias=%d acc=%d pad=%zu r=%zu: rel error %.3g (native %d)", M, K,
           N, transposed ? "XW^T" : "dYW", with_bias, acc, pad, r, worst, st_bf16_native());
    if (pad) CHECK(out[ldo - 1] == pad_canary); /* the stride's padding is not written */
    free(x), free(w), free(out), free(bias), free(want), free(mag), free(panels), free(xs);
    free(lx), free(lw);
}

static void gemm_case(size_t M, size_t K, size_t N, int transposed, int with_bias, int acc,
                      size_t pad) {
    gemm_case_lr(M, K, N, transposed, with_bias, acc, pad, 0);
}

TEST(gemm) {
    gemm_case(1, 1, 1, 1, 0, 0, 0);
    gemm_case(8, 64, 32, 1, 0, 0, 0);      /* exactly one tile */
    gemm_case(13, 37, 45, 1, 1, 0, 3);     /* ragged everything, bias, strides */
    gemm_case(9, 577, 70, 1, 0, 1, 0);     /* accumulate */
    gemm_case(17, 100, 33, 0, 0, 1, 5);    /* the dY W packing */
    gemm_case(64, 576, 192, 1, 1, 0, 0);   /* a transformer-ish shape */
    gemm_case(3, 1031, 7, 0, 1, 1, 1);
    gemm_case(300, 1500, 70, 1, 1, 0, 2);  /* 3 row blocks, bias */
    gemm_case(260, 600, 65, 0, 0, 0, 0);   /* 3 row blocks, zero start, ragged last panel */
    gemm_case(1093, 70, 45, 1, 1, 1, 0);   /* AMX: 2 row blocks (of 1024), accumulate, bias */
    gemm_case(5, 33001, 40, 1, 1, 0, 0);   /* K over two k blocks (16501 pairs), bias */
    gemm_case(9, 40000, 33, 0, 0, 1, 2);   /* the dY W packing, accumulate */
    gemm_case(14, 289, 33, 1, 1, 0, 1);   /* a 6-row last tile */
    gemm_case(15, 577, 40, 0, 0, 1, 0);   /* a 7-row last tile */
    gemm_case(14, 0, 33, 1, 1, 0, 0);     /* K = 0: out = bias */
    gemm_case(10, 0, 20, 0, 0, 1, 0);     /* K = 0, accumulate: out unchanged */
    /* a low-rank term on the tiles' last k block: ragged panels and last tiles, k blocks, 3 row
     * blocks, the most ranks taken, K = 0 */
    gemm_case_lr(13, 37, 45, 1, 1, 0, 3, 8);
    gemm_case_lr(17, 100, 33, 0, 0, 1, 5, 3);
    gemm_case_lr(9, 577, 70, 1, 0, 1, 0, 16);
    gemm_case_lr(260, 600, 65, 0, 1, 0, 0, ST_LOWRANK_MAX);
    gemm_case_lr(14, 0, 33, 1, 1, 0, 0, 4);
    gemm_case_lr(10, 33001, 35, 1, 0, 1, 0, 8); /* only on the last of two k blocks */
}

/* st_bf16_pack_ce_grad: the cross-entropy gradient packed from the logits and the losses, through
 * the GEMM (out = packed gradient @ W), against float64: dloss (softmax - onehot) @ bf16(W), within
 * the gradient's BF16 rounding (2^-8 of sum |g w|, 4e-3); rows whose target is < 0 give exactly
 * 0; 1 and 3 threads the same bits. Targets on both halves of a pair, at column 0 and K - 1. The
 * same product from slices of the logits' columns (col0; a QLoRA head's tiles): each slice's
 * gradient @ its rows of W, summed, within the same bound. And from slices of 64 columns through
 * st_bf16_gemm_px_k on the whole matrix's panels (the head's backward when K is too wide for the
 * scratch): bitwise the single product (slices start on whole AMX tiles of pairs). */
static void ce_case(size_t M, size_t K, size_t N, size_t pad) {
    size_t ldx = K + pad;
    float *x = malloc(M * ldx * 4), *w = malloc(K * N * 4), *loss = malloc(M * 4);
    float *out = malloc(M * N * 4), *out3 = malloc(M * N * 4);
    int32_t *tg = malloc(M * 4);
    double *g = malloc(K * 8);
    uint16_t *panels = malloc(st_bf16_panels_bytes(K, N));
    uint32_t *xs = malloc(st_bf16_x_bytes(M, K));
    if (!x || !w || !loss || !out || !out3 || !tg || !g || !panels || !xs) abort();
    for (size_t i = 0; i < M * ldx; i++) x[i] = 8 * urand();
    for (size_t i = 0; i < K * N; i++) w[i] = urand();
    st_bf16_pack_w(panels, w, K, N);
    const float dloss = 0.37f;
    for (size_t m = 0; m < M; m++) {
        size_t t = m % 5 == 0 ? 0 : m % 5 == 1 ? K - 1 : (m * 7919) % K;
        tg[m] = m % 4 == 3 ? -100 : (int32_t)t;
        double mx = -INFINITY, se = 0;
        for (size_t k = 0; k < K; k++) mx = x[m * ldx + k] > mx ? x[m * ldx + k] : mx;
        for (size_t k = 0; k < K; k++) se += exp(x[m * ldx + k] - mx);
        loss[m] = tg[m] < 0 ? 0.0f : (float)(mx + log(se) - x[m * ldx + t]);
    }
    struct st_ce_rows ce = {loss, tg, dloss, 0};
    /* slices of about K / 3 columns (odd widths where K allows), summed into outs */
    float *outs = malloc(M * N * 4);
    uint16_t *ps = malloc(st_bf16_panels_bytes(K, N));
    if (!outs || !ps) abort();
    size_t ks = K / 3 | 1;
    for (size_t c0 = 0; c0 < K; c0 += ks) {
        size_t kn = K - c0 < ks ? K - c0 : ks;
        struct st_ce_rows cs = {loss, tg, dloss, c0};
        st_bf16_pack_w(ps, w + c0 * N, kn, N);
        st_bf16_pack_ce_grad(xs, x + c0, &cs, M, kn, ldx);
        st_bf16_gemm_px(outs, N, xs, ps, NULL, M, kn, N, c0 > 0);
    }
    int saved = 1;
#ifdef _OPENMP
    saved = omp_get_max_threads();
    omp_set_num_threads(3);
#endif
    st_bf16_pack_ce_grad(xs, x, &ce, M, K, ldx);
    st_bf16_gemm_px(out3, N, xs, panels, NULL, M, K, N, 0);
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
    st_bf16_pack_ce_grad(xs, x, &ce, M, K, ldx);
    st_bf16_gemm_px(out, N, xs, panels, NULL, M, K, N, 0);
#ifdef _OPENMP
    omp_set_num_threads(saved);
#endif
    CHECKF(memcmp(out, out3, M * N * 4) == 0, "ce M=%zu K=%zu: 1 and 3 threads differ", M, K);
    (void)saved;
    for (size_t c0 = 0; c0 < K; c0 += 64) { /* k slices of the whole panels, into out3 */
        size_t kn = K - c0 < 64 ? K - c0 : 64;
        struct st_ce_rows cs = {loss, tg, dloss, c0};
        st_bf16_pack_ce_grad(xs, x + c0, &cs, M, kn, ldx);
        st_bf16_gemm_px_k(out3, N, xs, panels, K, c0, M, kn, N, c0 > 0);
    }
    CHECKF(memcmp(out, out3, M * N * 4) == 0, "ce M=%zu K=%zu: k slices of 64 differ from one "
           "product", M, K);
    double worst = 0, worst_s = 0;
    for (size_t m = 0; m < M; m++) {
        if (tg[m] < 0) {
            for (size_t n = 0; n < N; n++)
                CHECKF(out[m * N + n] == 0.0f && outs[m * N + n] == 0.0f,
                       "ce M=%zu K=%zu: ignored row %zu not 0", M, K, m);
            continue;
        }
        double mx = -INFINITY, se = 0;
        for (size_t k = 0; k < K; k++) mx = x[m * ldx + k] > mx ? x[m * ldx + k] : mx;
        for (size_t k = 0; k < K; k++) se += exp(x[m * ldx + k] - mx);
        for (size_t k = 0; k < K; k++)
            g[k] = dloss * (exp(x[m * ldx + k] - mx) / se - (k == (size_t)tg[m]));
        for (size_t n = 0; n < N; n++) {
            double s = 0, a = 1e-30;
            for (size_t k = 0; k < K; k++) {
                double p = g[k] * bf(w[k * N + n]);
                s += p;
                a += fabs(p);
            }
            double e = fabs(out[m * N + n] - s) / a;
            if (e > worst) worst = e;
            e = fabs(outs[m * N + n] - s) / a;
            if (e > worst_s) worst_s = e;
        }
    }
    CHECKF(worst < 4e-3, "ce M=%zu K=%zu N=%zu pad=%zu: rel error %.3g (native %d)", M, K, N, pad,
           worst, st_bf16_native());
    CHECKF(worst_s < 4e-3, "ce M=%zu K=%zu N=%zu pad=%zu, slices of %zu columns: rel error %.3g", M,
           K, N, pad, ks, worst_s);
    free(x), free(w), free(loss), free(out), free(out3), free(tg), free(g), free(panels);
    free(outs), free(ps);
    free(xs);
}

TEST(ce_grad) {
    ce_case(13, 37, 9, 3);   /* ragged tile and pairs, odd K, a row stride */
    ce_case(24, 1000, 17, 0); /* whole tiles: the register path, on 3 threads */
    ce_case(21, 4097, 5, 1);  /* a 5-row last tile, odd K past the register groups */
    ce_case(8, 1, 3, 0);      /* one column: every gradient 0 */
    ce_case(21, 4097, 40, 1); /* two panels: the k slices' panel stride */
}

/* The packings from rows given by a callback (st_bf16_pack_*_rows: dequantised tiles) equal the
 * packings of the whole matrix byte for byte, with scratch for 16 rows per thread (the "wt"
 * packing's groups of 16 rows) and for fewer (row by row), on ragged shapes and odd C */
struct rows_ctx {
    const float *w;
    size_t C;
};
static void rows_fn(void *ctx, size_t r, float *buf) {
    const struct rows_ctx *c = ctx;
    memcpy(buf, c->w + r * c->C, c->C * sizeof(float));
}
TEST(pack_rows) {
    const size_t shapes[][2] = {{45, 37}, {70, 100}, {16, 64}, {1, 33}, {300, 7}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        size_t OC = shapes[s][0], C = shapes[s][1];
        float *w = malloc(OC * C * sizeof *w), *scr = malloc(64 * C * sizeof *scr);
        if (!w || !scr) abort();
        for (size_t i = 0; i < OC * C; i++) w[i] = urand();
        w[0] = NAN; /* NaN stays NaN either way */
        struct rows_ctx ctx = {w, C};
        for (int t = 0; t < 2; t++) { /* t 0: W^T ("wt"), 1: W ("w") */
            size_t K = t ? OC : C, N = t ? C : OC, nb = st_bf16_panels_bytes(K, N);
            uint16_t *ref = malloc(nb), *got = malloc(nb);
            if (!ref || !got) abort();
            if (t)
                st_bf16_pack_w(ref, w, OC, C);
            else
                st_bf16_pack_wt(ref, w, OC, C);
            const size_t scratch_rows[] = {64, 4};
            for (size_t k = 0; k < 2; k++) {
                memset(got, 0xA5, nb);
                if (t)
                    st_bf16_pack_w_rows(got, OC, C, rows_fn, &ctx, scr, scratch_rows[k]);
                else
                    st_bf16_pack_wt_rows(got, OC, C, rows_fn, &ctx, scr, scratch_rows[k]);
                CHECKF(memcmp(ref, got, nb) == 0, "%s rows OC=%zu C=%zu scratch %zu rows differ",
                       t ? "w" : "wt", OC, C, scratch_rows[k]);
            }
            free(ref), free(got);
        }
        free(w), free(scr);
    }
}

int main(void) {
    printf("kernel: %s\n", st_bf16_kernel_name());
    RUN(gemm);
    RUN(ce_grad);
    RUN(pack_rows);
    return test_finish();
}
