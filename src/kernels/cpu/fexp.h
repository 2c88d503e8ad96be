/* fexp.h: the cpu kernels' float exp (cpu.c, attention.c, gemm_bf16.c's cross-entropy packing):
 * scalar, and 16 lanes with or without the clamps. */
#ifndef ST_KERNELS_CPU_FEXP_H
#define ST_KERNELS_CPU_FEXP_H
#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp for float arguments without libm calls, so `omp simd` loops vectorise it (Cephes' expf:
 * x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, scaled by 2^n; about 1 ulp). Arguments below
 * -87.3 return ~1e-38 instead of denormals/0: callers map masked (-inf) entries to 0 themselves. */
static inline float fexp(float x) {
    x = x < -87.3f ? -87.3f : x > 88.7f ? 88.7f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    int32_t ni = n == n ? (int32_t)n : 0; /* NaN in, NaN out (y is NaN): no int of a NaN */
    uint32_t e = (uint32_t)(ni + 127) << 23;
    float sc;
    memcpy(&sc, &e, 4);
    return y * sc;
}

#if defined(__x86_64__)
#include <immintrin.h>
/* fexp on 16 lanes, the same polynomial, without the clamps: for arguments known to be in
 * range or <= 0 (scalef makes 2^n of a very negative n exactly 0; -inf gives NaN) */
__attribute__((target("avx512f"))) static inline __m512 fexp16_nc(__m512 x) {
    __m512 n = _mm512_roundscale_ps(
        _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, n);
}

/* fexp on 16 lanes, the same clamps as fexp */
__attribute__((target("avx512f"))) static inline __m512 fexp16(__m512 x) {
    return fexp16_nc(_mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f)));
}
#endif
#endif
