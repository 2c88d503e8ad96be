/* peak.c: the machine's measured arithmetic peak, to state model FLOPs utilisation against what
 * this CPU really does rather than a datasheet figure. Each thread runs independent chains of
 * register-only FMAs (fp32 vfmadd231ps) and BF16 dot-products (vdpbf16ps), in 512- and 256-bit
 * forms (a core with 256-bit FP pipes issues two 256-bit operations per cycle but one 512-bit:
 * the faster form is the peak), and AMX tdpbf16ps where the CPU has AMX. FLOPs: an fp32 FMA lane
 * = 2; a vdpbf16ps fp32 lane = 4 (two products, two adds); a tdpbf16ps 16 x 16 x 32 x 2. All
 * threads run at once; the best of 3 runs is printed.
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

/* AMX-BF16: four independent C tiles, tdpbf16ps from register tiles only (16 x 16 outputs, 32
 * products each: 16384 FLOPs per instruction); the tile unit's peak, which no GEMM that loads its
 * operands reaches (tile loads from L1 cost about 45% here: see bench/NOTES.md, session 10) */
struct amx_cfg {
    unsigned char palette, start_row, reserved[14];
    unsigned short colsb[16];
    unsigned char rows[16];
};
__attribute__((target("amx-tile,amx-bf16"))) static double amx(float *sink) {
    struct amx_cfg c = {.palette = 1};
    for (int i = 0; i < 8; i++) c.colsb[i] = 64, c.rows[i] = 16;
    _tile_loadconfig(&c);
    _Alignas(64) unsigned short ab[16 * 32];
    for (int i = 0; i < 16 * 32; i++) ab[i] = 0x3f80;
    _tile_loadd(4, ab, 64);
    _tile_loadd(5, ab, 64);
    _tile_loadd(6, ab, 64);
    _tile_loadd(7, ab, 64);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    long n = ITERS / 16;
    for (long i = 0; i < n; i++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _Alignas(64) float out[16 * 16];
    _tile_stored(0, out, 64);
    *sink += out[0];
    _tile_release();
    return (double)n * 4 * 16384;
}

#include <sys/syscall.h>
#include <unistd.h>
#include <cpuid.h>
/* AMX-TILE and AMX-BF16 in CPUID, and Linux's permission for the tile data (as gemm_bf16.c) */
static int amx_ok(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 22)))
        return 0;
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
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
    double ax = amx_ok() ? measure(amx, threads) : 0;
    printf("{\"threads\": %d, \"fp32_fma_gflops\": %.1f, \"bf16_dp_gflops\": %.1f, "
           "\"amx_bf16_gflops\": %.1f, \"fp32_zmm\": %.1f, \"fp32_ymm\": %.1f, \"bf16_zmm\": %.1f, "
           "\"bf16_ymm\": %.1f}\n",
           threads, f512 > f256 ? f512 : f256, b512 > b256 ? b512 : b256, ax, f512, f256, b512,
           b256);
#else
    printf("{\"threads\": %d, \"fp32_fma_gflops\": 0, \"bf16_dp_gflops\": 0, \"amx_bf16_gflops\": 0}\n",
           threads);
#endif
    return 0;
}
