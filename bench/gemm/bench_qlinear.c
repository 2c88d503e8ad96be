/* bench_qlinear.c: the cost of QLoRA's quantised matmuls against the BF16 ones they replace, per
 * weight shape, in the same process and turns (issue 8's QLoRA >= 0.85 of bf16 LoRA).
 *
 * For a weight W (OC, C) and N rows: the forward out = X W^T from X already rounded (BF16 panels
 * packed once, against NF4 dequantised tile by tile into panels: st_qlinear_forward_bf16_px), the
 * backward dX = dY W (st_bf16_pack_x + GEMM on "w" panels, against
 * st_qlinear_backward_input_bf16_ex), and the NF4 dequantisation alone (into floats, one tile at
 * a time, as the packing threads do it). The variants run in
 * turns, 9 rounds, medians; ms and the NF4/BF16 ratio per shape. Usage: bench_qlinear [N OC C]...
 * (default: N 2048 and the matrices of the 110M Llama shape: q (768 x 768), gate (2048 x 768),
 * down (768 x 2048), head (32000 x 768)). Threads from OMP_NUM_THREADS. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "streamtune/bf16.h"
#include "streamtune/core.h"
#include "streamtune/quant.h"

#define ROUNDS 9

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double med(double *t) {
    qsort(t, ROUNDS, sizeof *t, cmp);
    return t[ROUNDS / 2] * 1e3;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

static void one(size_t N, size_t OC, size_t C) {
    float *x = xmalloc(N * C * 4), *dy = xmalloc(N * OC * 4), *out = xmalloc(N * OC * 4);
    float *dx = xmalloc(N * C * 4), *w = xmalloc(OC * C * 4);
    size_t nb = (OC * C + 63) / 64;
    uint8_t *codes = xmalloc((OC * C + 1) / 2);
    float *absmax = xmalloc(nb * 4);
    uint32_t s = 12345;
    for (size_t i = 0; i < (OC * C + 1) / 2; i++) codes[i] = (uint8_t)((s = s * 1103515245u + 12345u) >> 16);
    for (size_t i = 0; i < nb; i++) absmax[i] = 0.01f + (float)(i % 97) * 1e-4f;
    struct st_qweight qw = {.kind = ST_QUANT_NF4, .rows = OC, .cols = C, .q = codes,
                            .absmax = absmax};
    st_qweight_dequant_rows(w, &qw, 0, OC); /* the BF16 side multiplies the same weights */
    for (size_t i = 0; i < N * C; i++) x[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    for (size_t i = 0; i < N * OC; i++) dy[i] = (float)((i * 104729) % 1000) / 1000.0f - 0.5f;
    uint16_t *pf = xmalloc(st_bf16_panels_bytes(C, OC)), *pb = xmalloc(st_bf16_panels_bytes(OC, C));
    st_bf16_pack_wt(pf, w, OC, C);
    st_bf16_pack_w(pb, w, OC, C);
    size_t xb = st_bf16_x_bytes(N, OC > C ? OC : C);
    uint32_t *xp = xmalloc(st_bf16_x_bytes(N, C)), *xs = xmalloc(xb);
    float *scr = xmalloc(st_qweight_scratch_floats(&qw) * 4);
    st_bf16_pack_x(xp, x, N, C, C);
    double tf[ROUNDS], tq[ROUNDS], tb[ROUNDS], tqb[ROUNDS], tp[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        double t0 = st_time_now();
        st_bf16_gemm_px(out, OC, xp, pf, NULL, N, C, OC, 0);
        tf[r] = st_time_now() - t0;
        t0 = st_time_now();
        st_qlinear_forward_bf16_px(out, xp, &qw, NULL, scr, N, NULL);
        tq[r] = st_time_now() - t0;
        t0 = st_time_now();
        st_bf16_pack_x(xs, dy, N, OC, OC);
        st_bf16_gemm_px(dx, C, xs, pb, NULL, N, OC, C, 0);
        tb[r] = st_time_now() - t0;
        t0 = st_time_now();
        st_qlinear_backward_input_bf16_ex(dx, dy, &qw, scr, xs, N, 0, NULL, NULL);
        tqb[r] = st_time_now() - t0;
        t0 = st_time_now(); /* dequantisation alone, tile by tile (into W, the same values) */
        size_t tr = st_qweight_tile_rows_bf16(&qw);
        for (size_t r0 = 0; r0 < OC; r0 += tr)
            st_qweight_dequant_rows(w + r0 * C, &qw, r0, OC - r0 < tr ? OC - r0 : tr);
        tp[r] = st_time_now() - t0;
    }
    double f = med(tf), q = med(tq), b = med(tb), qb = med(tqb), p = med(tp);
    double gf = 2.0 * (double)N * (double)OC * (double)C / 1e6;
    printf("N=%zu W %5zu x %5zu  fwd bf16 %7.2f ms (%4.0f GF/s) nf4 %7.2f ms  x%.2f | bwd bf16 %7.2f"
           " ms nf4 %7.2f ms  x%.2f | dequant %6.2f ms\n",
           N, OC, C, f, gf / f, q, q / f, b, qb, qb / b, p);
    free(x), free(dy), free(out), free(dx), free(w), free(codes), free(absmax), free(pf);
    free(pb), free(xp), free(xs), free(scr);
}

int main(int argc, char **argv) {
    printf("kernel: %s\n", st_bf16_kernel_name());
    if (argc >= 4) {
        for (int i = 1; i + 2 < argc; i += 3)
            one((size_t)atol(argv[i]), (size_t)atol(argv[i + 1]), (size_t)atol(argv[i + 2]));
        return 0;
    }
    one(2048, 768, 768);
    one(2048, 2048, 768);
    one(2048, 768, 2048);
    one(2048, 32000, 768);
    return 0;
}
