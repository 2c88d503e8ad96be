/* bench_attention.c: single-process GFLOP/s of the cpu backend's causal flash attention, forward
 * and backward, against the portable kernel it replaced (st_cpu_attention_*_portable, the old
 * one-query-row-at-a-time loops) on the same inputs. Threads from the environment
 * (OMP_NUM_THREADS=1 for single-thread numbers). Best of 9 interleaved runs (the box is shared:
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
#include "streamtune/core.h"

#define REPS 9

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
    float *dout = fill(nq, 4, 1.0f), *out[2], *lse[2], *dq[2], *dk[2], *dv[2];
    for (int i = 0; i < 2; i++) {
        out[i] = fill(nq, 5, 0), lse[i] = fill(na, 6, 0), dq[i] = fill(nq, 7, 0);
        dk[i] = fill(nk, 8, 0), dv[i] = fill(nk, 9, 0);
    }
    float scale = 1.0f / sqrtf((float)hd);
    double pairs = 0; /* visible (query, key) pairs per head */
    for (size_t i = 0; i < T; i++)
        pairs += window > 0 && i + 1 > (size_t)window ? (double)window : (double)(i + 1);
    double ff = 4.0 * pairs * (double)(hd * nh * B), fb = 2.5 * ff;
    printf("attention B=%zu T=%zu nh=%zu nkv=%zu hd=%zu window=%d  native=%d\n", B, T, nh, nkv, hd,
           window, st_cpu_attention_native());
    printf("FLOPs: forward %.3f G (4 V hd nh B), backward %.3f G (10 V hd nh B), V = %.0f visible "
           "pairs per head\n", ff / 1e9, fb / 1e9, pairs);

    double tf[2][REPS], tb[2][REPS];
    for (int r = 0; r < REPS; r++)
        for (int i = 0; i < 2; i++) { /* 0: the dispatched kernel, 1: the portable one */
            double t0 = st_time_now();
            (i ? st_cpu_attention_forward_portable : st_cpu_attention_forward)(
                out[i], lse[i], q, k, v, NULL, scale, window, B, T, T, nh, nkv, hd);
            tf[i][r] = st_time_now() - t0;
            t0 = st_time_now();
            (i ? st_cpu_attention_backward_portable : st_cpu_attention_backward)(
                dq[i], dk[i], dv[i], dout, out[i], lse[i], q, k, v, NULL, scale, window, B, T, T,
                nh, nkv, hd);
            tb[i][r] = st_time_now() - t0;
        }
    double f[2], b[2];
    for (int i = 0; i < 2; i++) f[i] = best(tf[i]), b[i] = best(tb[i]);
    printf("forward   new %8.2f ms %7.1f GFLOP/s   old %8.2f ms %7.1f GFLOP/s   speed-up %.2fx\n",
           f[0] * 1e3, ff / f[0] / 1e9, f[1] * 1e3, ff / f[1] / 1e9, f[1] / f[0]);
    printf("backward  new %8.2f ms %7.1f GFLOP/s   old %8.2f ms %7.1f GFLOP/s   speed-up %.2fx\n",
           b[0] * 1e3, fb / b[0] / 1e9, b[1] * 1e3, fb / b[1] / 1e9, b[1] / b[0]);
    printf("max |new - old|: out %.2e lse %.2e dq %.2e dk %.2e dv %.2e\n",
           maxdiff(out[0], out[1], nq), maxdiff(lse[0], lse[1], na), maxdiff(dq[0], dq[1], nq),
           maxdiff(dk[0], dk[1], nk), maxdiff(dv[0], dv[1], nk));
    for (int i = 0; i < 2; i++) free(out[i]), free(lse[i]), free(dq[i]), free(dk[i]), free(dv[i]);
    free(q), free(k), free(v), free(dout);
    return 0;
}
