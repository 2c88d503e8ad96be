/* peak.c: the machine's measured arithmetic peak, to state model FLOPs utilisation against what
 * this CPU really does rather than a datasheet figure. Each thread runs independent chains of
 * register-only FMAs (fp32 vfmadd231ps) and BF16 dot-products (vdpbf16ps), in 512- and 256-bit
 * forms (a core with 256-bit FP pipes issues two 256-bit operations per cycle but one 512-bit:
 * the faster form is the peak). FLOPs: an fp32 FMA lane = 2; a vdpbf16ps fp32 lane = 4 (two
 * products, two adds). All threads run at once; the best of 3 runs is printed.
 * Usage: bench_peak [threads]   (default: OMP_NUM_THREADS or all cores). Prints one JSON line. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define X86 1
#endif

#define CHAINS 16
#define ITERS 20000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Each function returns FLOPs done; the accumulators are summed into *sink so nothing is elided. */
#ifdef X86
__attribute__((target("avx512f"))) static double fma512(float *sink) {
    __m512 a[CHAINS], x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < CHAINS; i++) a[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < ITERS; n++) {
#pragma GCC unroll 16
        for (int i = 0; i < CHAINS; i++) a[i] = _mm512_fmadd_ps(a[i], x, y);
        __asm__ volatile("" : "+v"(x));
    }
    for (int i = 0; i < CHAINS; i++) *sink += _mm512_reduce_add_ps(a[i]);
    return (double)ITERS * CHAINS * 16 * 2;
}

__attribute__((target("avx2,fma"))) static double fma256(float *sink) {
    __m256 a[CHAINS], x = _mm256_set1_ps(1.0000001f), y = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < CHAINS; i++) a[i] = _mm256_set1_ps((float)i);
    for (long n = 0; n < ITERS; n++) {
#pragma GCC unroll 16
        for (int i = 0; i < CHAINS; i++) a[i] = _mm256_fmadd_ps(a[i], x, y);
        __asm__ volatile("" : "+v"(x));
    }
    float t[8];
    for (int i = 0; i < CHAINS; i++) {
        _mm256_storeu_ps(t, a[i]);
        for (int j = 0; j < 8; j++) *sink += t[j];
    }
    return (double)ITERS * CHAINS * 8 * 2;
}

__attribute__((target("avx512f,avx512bf16"))) static double bf512(float *sink) {
    __m512 a[CHAINS];
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), y = (__m512bh)_mm512_set1_epi32(0x33803380);
    for (int i = 0; i < CHAINS; i++) a[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < ITERS; n++) {
#pragma GCC unroll 16
        for (int i = 0; i < CHAINS; i++) a[i] = _mm512_dpbf16_ps(a[i], x, y);
        __asm__ volatile("" : "+v"(x));
    }
    for (int i = 0; i < CHAINS; i++) *sink += _mm512_reduce_add_ps(a[i]);
    return (double)ITERS * CHAINS * 16 * 4;
}

__attribute__((target("avx512f,avx512bf16,avx512vl"))) static double bf256(float *sink) {
    __m256 a[CHAINS];
    __m256bh x = (__m256bh)_mm256_set1_epi32(0x3f803f80), y = (__m256bh)_mm256_set1_epi32(0x33803380);
    for (int i = 0; i < CHAINS; i++) a[i] = _mm256_set1_ps((float)i);
    for (long n = 0; n < ITERS; n++) {
#pragma GCC unroll 16
        for (int i = 0; i < CHAINS; i++) a[i] = _mm256_dpbf16_ps(a[i], x, y);
        __asm__ volatile("" : "+v"(x));
    }
    float t[8];
    for (int i = 0; i < CHAINS; i++) {
        _mm256_storeu_ps(t, a[i]);
        for (int j = 0; j < 8; j++) *sink += t[j];
    }
    return (double)ITERS * CHAINS * 8 * 4;
}
#endif

typedef double (*probe)(float *);

/* GFLOP/s of all threads running `f` at once, best of 3 */
static double measure(probe f, int threads) {
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        double flop = 0, t0 = 0, t1 = 0;
        float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : flop, sink)
        {
#pragma omp barrier
#pragma omp master
            t0 = now();
            flop += f(&sink);
#pragma omp barrier
#pragma omp master
            t1 = now();
        }
        double g = flop / (t1 - t0) / 1e9;
        if (g > best) best = g;
        if (sink == 12345.0f) fprintf(stderr, " ");
    }
    return best;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : omp_get_max_threads();
    if (threads < 1) threads = 1;
#ifdef X86
    __builtin_cpu_init();
    double f512 = 0, f256 = 0, b512 = 0, b256 = 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) f256 = measure(fma256, threads);
    if (__builtin_cpu_supports("avx512f")) f512 = measure(fma512, threads);
    if (__builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vl")) {
        b512 = measure(bf512, threads);
        b256 = measure(bf256, threads);
    }
    printf("{\"threads\": %d, \"fp32_fma_gflops\": %.1f, \"bf16_dp_gflops\": %.1f, "
           "\"fp32_zmm\": %.1f, \"fp32_ymm\": %.1f, \"bf16_zmm\": %.1f, \"bf16_ymm\": %.1f}\n",
           threads, f512 > f256 ? f512 : f256, b512 > b256 ? b512 : b256, f512, f256, b512, b256);
#else
    printf("{\"threads\": %d, \"fp32_fma_gflops\": 0, \"bf16_dp_gflops\": 0}\n", threads);
#endif
    return 0;
}
