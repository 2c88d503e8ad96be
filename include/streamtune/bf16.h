/* streamtune BF16 GEMM: frozen weights packed once into BF16 panels, multiplied with float
 * activations rounded to BF16 on the fly, accumulated in float (AVX512_BF16 vdpbf16ps where the
 * CPU has it, a portable loop otherwise: same results up to float summation order).
 * See src/kernels/cpu/gemm_bf16.c for the layout. */
#ifndef STREAMTUNE_BF16_H
#define STREAMTUNE_BF16_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when this CPU runs the AVX512_BF16 kernel. */
int st_bf16_native(void);

/* Bytes of the packed panels of a (K, N) right-hand side. */
size_t st_bf16_panels_bytes(size_t K, size_t N);
/* Pack W (OC, C) for out = X W^T (K = C, N = OC): dst has st_bf16_panels_bytes(C, OC) bytes. */
void st_bf16_pack_wt(uint16_t *dst, const float *w, size_t OC, size_t C);
/* Pack W (OC, C) for dX = dY W (K = OC, N = C): dst has st_bf16_panels_bytes(OC, C) bytes. */
void st_bf16_pack_w(uint16_t *dst, const float *w, size_t OC, size_t C);

/* Scratch for the BF16 copy of X (M, K). */
size_t st_bf16_x_bytes(size_t M, size_t K);

/* out (M, N; row stride ldo) = X (M, K; stride ldx) @ B (+ bias (N) if not NULL), or += when
 * accumulate. panels: B packed as above; xscratch: st_bf16_x_bytes(M, K) bytes. */
void st_bf16_gemm(float *out, size_t ldo, const float *x, size_t ldx, const uint16_t *panels,
                  const float *bias, size_t M, size_t K, size_t N, int accumulate,
                  uint32_t *xscratch);

#ifdef __cplusplus
}
#endif
#endif
