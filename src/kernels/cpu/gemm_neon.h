/* gemm_neon.h: what the AArch64 micro-kernels of the panel GEMMs (gemm_f32.c: NEON FMA,
 * gemm_bf16.c: BFDOT) share. The MR x 32 tile of gemm_driver.h does not fit in 32 registers of
 * 4 floats, so both walk a panel in strips of MR rows x 8 columns: float32x4_t acc[MR][2], 16
 * accumulators. A strip starts from and ends in a staging tile t (MR x 8 floats): ragged rows and
 * columns then need no masked loads or stores (staging is 2 x 64 floats against nk x 128 FMAs). */
#ifndef ST_KERNELS_CPU_GEMM_NEON_H
#define ST_KERNELS_CPU_GEMM_NEON_H
#include <stddef.h>
#include <string.h>

#include "gemm_driver.h"

#define STRIP_NC 8 /* columns per strip */
_Static_assert(GEMM_MR == 8, "STRIP_EACH_ROW writes out 8 rows");

/* F(0); ... F(MR - 1): written out, so acc and the per-row registers stay in registers */
#define STRIP_EACH_ROW(F) F(0); F(1); F(2); F(3); F(4); F(5); F(6); F(7)
#define STRIP_LOAD(r) (acc[r][0] = vld1q_f32(t[r]), acc[r][1] = vld1q_f32(t[r] + 4))
#define STRIP_STORE(r) (vst1q_f32(t[r], acc[r][0]), vst1q_f32(t[r] + 4, acc[r][1]))

/* t (MR, STRIP_NC) = rows [0, mr) of init (nc floats each), or of c (stride ldc) when init is
 * NULL, in columns [0, nc); everything else zero. */
static inline void strip_stage_in(float t[GEMM_MR][STRIP_NC], const float *c, size_t ldc,
                                  size_t mr, size_t nc, const float *init) {
    memset(t, 0, GEMM_MR * sizeof t[0]);
    for (size_t r = 0; r < mr; r++) memcpy(t[r], init ? init : c + r * ldc, nc * sizeof(float));
}

/* c rows [0, mr), columns [0, nc) = t's */
static inline void strip_stage_out(float *c, size_t ldc, float t[GEMM_MR][STRIP_NC], size_t mr,
                                   size_t nc) {
    for (size_t r = 0; r < mr; r++) memcpy(c + r * ldc, t[r], nc * sizeof(float));
}
#endif
