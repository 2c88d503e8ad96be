/* bench_gemm.c: GFLOP/s of the BF16 GEMM (st_bf16_gemm) against OpenBLAS sgemm on the same
 * shapes, same process, same threads (OMP/OpenBLAS thread counts from the environment). Median of
 * 7 runs each. Usage: bench_gemm [M K N]...   (default: LoRA-training shapes of SmolLM2-135M and
 * a 110M Llama at 2048 tokens). State OPENBLAS_CORETYPE when you record results. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "streamtune/bf16.h"
#include "streamtune/core.h"

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void one(size_t M, size_t K, size_t N) {
    float *x = malloc(M * K * 4), *w = malloc(N * K * 4), *out = malloc(M * N * 4);
    uint16_t *pan = malloc(st_bf16_panels_bytes(K, N));
    uint32_t *xs = malloc(st_bf16_x_bytes(M, K));
    for (size_t i = 0; i < M * K; i++) x[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    for (size_t i = 0; i < N * K; i++) w[i] = (float)((i * 104729) % 1000) / 1000.0f - 0.5f;
    st_bf16_pack_wt(pan, w, N, K);
    double tb[7], ts[7], flop = 2.0 * (double)M * (double)N * (double)K;
    for (int r = 0; r < 7; r++) {
        double t0 = st_time_now();
        st_bf16_gemm(out, N, x, K, pan, NULL, M, K, N, 0, xs);
        tb[r] = st_time_now() - t0;
        t0 = st_time_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, x,
                    (int)K, w, (int)K, 0.0f, out, (int)N);
        ts[r] = st_time_now() - t0;
    }
    qsort(tb, 7, sizeof *tb, cmp);
    qsort(ts, 7, sizeof *ts, cmp);
    printf("M=%5zu K=%5zu N=%6zu  bf16 %7.1f GFLOP/s  sgemm %7.1f GFLOP/s  ratio %.2f  (native %d)\n",
           M, K, N, flop / tb[3] / 1e9, flop / ts[3] / 1e9, ts[3] / tb[3], st_bf16_native());
    free(x), free(w), free(out), free(pan), free(xs);
}

int main(int argc, char **argv) {
    const char *ct = getenv("OPENBLAS_CORETYPE");
    printf("OPENBLAS_CORETYPE=%s\n", ct ? ct : "(unset)");
    if (argc >= 4) {
        for (int i = 1; i + 2 < argc; i += 3)
            one((size_t)atol(argv[i]), (size_t)atol(argv[i + 1]), (size_t)atol(argv[i + 2]));
        return 0;
    }
    size_t shapes[][3] = {{2048, 576, 576},  {2048, 576, 192},  {2048, 576, 1536},
                          {2048, 1536, 576}, {2048, 576, 49152}, {2048, 768, 768},
                          {2048, 768, 2048}, {2048, 2048, 768}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        one(shapes[i][0], shapes[i][1], shapes[i][2]);
    return 0;
}
