/* streamtune F32 panel GEMM: frozen weights packed once into F32 panels and multiplied with
 * float activations on AVX-512 or AArch64 NEON (a portable loop elsewhere), the F32 twin of
 * bf16.h. Used for the frozen matmuls of training and evaluation in F32
 * (src/kernels/cpu/gemm_f32.c). */
#ifndef STREAMTUNE_F32_H
#define STREAMTUNE_F32_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when this CPU runs a SIMD kernel: AVX-512 on x86-64 (ST_NO_AVX512=1 forces the portable
 * one), NEON on AArch64 (ST_NO_NEON=1 forces the portable one). */
int st_f32_native(void);

/* Bytes of the packed panels of a (K, N) right-hand side. */
size_t st_f32_panels_bytes(size_t K, size_t N);
/* Pack W (OC, C) for out = X W^T (K = C, N = OC): dst has st_f32_panels_bytes(C, OC) bytes. */
void st_f32_pack_wt(float *dst, const float *w, size_t OC, size_t C);
/* Pack W (OC, C) for dX = dY W (K = OC, N = C): dst has st_f32_panels_bytes(OC, C) bytes. */
void st_f32_pack_w(float *dst, const float *w, size_t OC, size_t C);

/* out (M, N; row stride ldo) = X (M, K; stride ldx) @ B (+ bias (N) if not NULL), or += when
 * accumulate. No scratch: X is read in place. */
void st_f32_gemm(float *out, size_t ldo, const float *x, size_t ldx, const float *panels,
                 const float *bias, size_t M, size_t K, size_t N, int accumulate);

/* The same product with X packed first (tiles of 14 rows interleaved by k: the AVX-512 kernel's
 * broadcasts then walk one stream), bitwise equal to st_f32_gemm. st_f32_packed(): 1 where that
 * is the faster path (x86-64 AVX-512; elsewhere it works, through the portable loop). xp holds
 * st_f32_x_floats(M, K) floats; st_f32_x_rows(floats, K): the most rows of K floats a buffer of
 * that many floats holds in whole row blocks (126 rows; 0: not one block). */
int st_f32_packed(void);
size_t st_f32_x_floats(size_t M, size_t K);
size_t st_f32_x_rows(size_t floats, size_t K);
void st_f32_pack_x(float *xp, const float *x, size_t M, size_t K, size_t ldx);
void st_f32_gemm_px(float *out, size_t ldo, const float *xp, const float *panels,
                    const float *bias, size_t M, size_t K, size_t N, int accumulate);

#ifdef __cplusplus
}
#endif
#endif
