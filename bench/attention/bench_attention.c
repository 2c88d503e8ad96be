/* bench_attention.c: single-process GFLOP/s of the cpu backend's causal flash attention, forward
 * and backward, against the portable kernel it replaced (st_cpu_attention_*_portable, the old
 * one-query-row-at-a-time loops) and the BF16 path of --compute bf16 (st_cpu_attention_*_bf16)
 * on the same inputs. Threads from the environment (OMP_NUM_THREADS=1 for single-thread
 * numbers). Best of 9 interleaved runs (the box is shared:
 * the minimum is the least disturbed by other processes).
 *
 * FLOPs counted (multiply and add = 2), over the visible (query, key) pairs V only
 * (causal, T x T: V = T (T + 1) / 2 per head):
 *   forward  = 2 matmuls (S = Q K^T, O = P V)                     = 4 V hd nh B
 *   backward = 5 matmuls (S again, dP = dO V^T, dV, dK, dQ)       = 10 V hd nh B
 * exp, the masks and the softmax bookkeeping are not counted.
 * Usage: bench_attention [T hd nh nkv B window]   (default 512 64 9 3 1 0: SmolLM2-135M). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/attention.h"
#include "streamtune/bf16.h"
#include "streamtune/core.h"

#define REPS 9

/* The kernels timed, in turn: --compute bf16's path, the dispatched float kernel, the portable
 * one (the last is the speed-up baseline; differences are printed against the float kernel). */
static const struct {
    const char *name;
    void (*fwd)(float *, float *, const float *, const float *, const float *, const int32_t *,
                float, int, size_t, size_t, size_t, size_t, size_t, size_t);
    void (*bwd)(float *, float *, float *, const float *, const float *, const float *,
                const float *, const float *, const float *, const int32_t *, float, int, size_t,
                size_t, size_t, size_t, size_t, size_t);
} kern[] = {
    {"bf16", st_cpu_attention_forward_bf16, st_cpu_attention_backward_bf16},
    {"f32", st_cpu_attention_forward, st_cpu_attention_backward},
    {"portable", st_cpu_attention_forward_portable, st_cpu_attention_backward_portable},
};
#define NK 3

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double best(double *t) {
    qsort(t, REPS, sizeof *t, cmp);
    return t[0];
}

static float *fill(size_t n, unsigned seed, float amp) {
    float *x = malloc(n * sizeof *x);
    if (!x) abort();
    for (size_t i = 0; i < n; i++) x[i] = amp * ((float)((i * 7919 + seed) % 1000) / 500.0f - 1.0f);
    return x;
}

static double maxdiff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        m = d > m || d != d ? d : m;
    }
    return m;
}

int main(int argc, char **argv) {
    size_t T = 512, hd = 64, nh = 9, nkv = 3, B = 1;
    int window = 0;
    if (argc >= 6) {
        T = (size_t)atol(argv[1]), hd = (size_t)atol(argv[2]), nh = (size_t)atol(argv[3]);
        nkv = (size_t)atol(argv[4]), B = (size_t)atol(argv[5]);
        if (argc >= 7) window = atoi(argv[6]);
    }
    if (!T || !hd || !nh || !nkv || nh % nkv || !B) {
        fprintf(stderr, "usage: bench_attention [T hd nh nkv B window]\n");
        return 2;
    }
    size_t nq = B * T * nh * hd, nk = B * T * nkv * hd, na = B * nh * T;
    float *q = fill(nq, 1, 1.0f), *k = fill(nk, 2, 1.0f), *v = fill(nk, 3, 1.0f);
    float *dout = fill(nq, 4, 1.0f), *out[NK], *lse[NK], *dq[NK], *dk[NK], *dv[NK];
    for (int i = 0; i < NK; i++) {
        out[i] = fill(nq, 5, 0), lse[i] = fill(na, 6, 0), dq[i] = fill(nq, 7, 0);
        dk[i] = fill(nk, 8, 0), dv[i] = fill(nk, 9, 0);
    }
    float scale = 1.0f / sqrtf((float)hd);
    double pairs = 0; /* visible (query, key) pairs per head */
    for (size_t i = 0; i < T; i++)
        pairs += window > 0 && i + 1 > (size_t)window ? (double)window : (double)(i + 1);
    double ff = 4.0 * pairs * (double)(hd * nh * B), fb = 2.5 * ff;
    printf("attention B=%zu T=%zu nh=%zu nkv=%zu hd=%zu window=%d  avx512=%d avx512bf16=%d\n", B,
           T, nh, nkv, hd, window, st_cpu_attention_native(), st_bf16_native());
    printf("FLOPs: forward %.3f G (4 V hd nh B), backward %.3f G (10 V hd nh B), V = %.0f visible "
           "pairs per head\n", ff / 1e9, fb / 1e9, pairs);

    double tf[NK][REPS], tb[NK][REPS];
    for (int r = 0; r < REPS; r++)
        for (int i = 0; i < NK; i++) {
            double t0 = st_time_now();
            kern[i].fwd(out[i], lse[i], q, k, v, NULL, scale, window, B, T, T, nh, nkv, hd);
            tf[i][r] = st_time_now() - t0;
            t0 = st_time_now();
            kern[i].bwd(dq[i], dk[i], dv[i], dout, out[i], lse[i], q, k, v, NULL, scale, window, B,
                        T, T, nh, nkv, hd);
            tb[i][r] = st_time_now() - t0;
        }
    printf("%-9s %21s %21s   %s\n", "kernel", "forward", "backward", "speed-up over portable (f, b)");
    for (int i = 0; i < NK; i++) {
        double f = best(tf[i]), b = best(tb[i]), f0 = best(tf[NK - 1]), b0 = best(tb[NK - 1]);
        printf("%-9s %8.2f ms %6.1f GF/s %8.2f ms %6.1f GF/s   %.2fx %.2fx\n", kern[i].name,
               f * 1e3, ff / f / 1e9, b * 1e3, fb / b / 1e9, f0 / f, b0 / b);
    }
    for (int i = 0; i < NK; i++)
        if (i != 1)
            printf("max |%s - f32|: out %.2e lse %.2e dq %.2e dk %.2e dv %.2e\n", kern[i].name,
                   maxdiff(out[i], out[1], nq), maxdiff(lse[i], lse[1], na),
                   maxdiff(dq[i], dq[1], nq), maxdiff(dk[i], dk[1], nk),
                   maxdiff(dv[i], dv[1], nk));
    for (int i = 0; i < NK; i++) free(out[i]), free(lse[i]), free(dq[i]), free(dk[i]), free(dv[i]);
    free(q), free(k), free(v), free(dout);
    return 0;
}
