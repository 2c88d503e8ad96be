/* transpose16.h: a 16 x 16 block of 32-bit values (floats, or pairs of BF16 moved as floats)
 * transposed in registers: unpack pairs of rows, shuffle within 128-bit lanes, then two rounds of
 * 128-bit lane shuffles (64 shuffles instead of 256 scalar loads and stores). x86-64 with
 * AVX-512F only; include where the caller's functions are built for it. */
#ifndef ST_KERNELS_CPU_TRANSPOSE16_H
#define ST_KERNELS_CPU_TRANSPOSE16_H
#include <immintrin.h>

/* o[j] lane i = a[i] lane j */
__attribute__((target("avx512f"), always_inline)) static inline void tr16(const __m512 a[16],
                                                                           __m512 o[16]) {
    __m512 t[16], r[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]);
    }
    for (int g = 0; g < 4; g++) { /* r[4g + c], lane L: column 4L + c of rows 4g.. 4g+3 */
        r[4 * g] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        r[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
        r[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        r[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) { /* 4 x 4 transpose of 128-bit lanes */
        __m512 u0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);
        __m512 u1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
        __m512 u2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
        __m512 u3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
        o[c] = _mm512_shuffle_f32x4(u0, u2, 0x88);
        o[4 + c] = _mm512_shuffle_f32x4(u1, u3, 0x88);
        o[8 + c] = _mm512_shuffle_f32x4(u0, u2, 0xDD);
        o[12 + c] = _mm512_shuffle_f32x4(u1, u3, 0xDD);
    }
}
#endif
