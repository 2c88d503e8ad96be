/* streamtune NF4: bitsandbytes-compatible 4-bit NormalFloat storage of a frozen base (QLoRA).
 *
 * DESIGN: plain functions over arrays with explicit sizes, as the kernels in kernels.h: outputs
 * first, then inputs, then sizes; no allocation, no threads. The scheme is bitsandbytes' (CUDA
 * kQuantizeBlockwise / dQuantizeNF4 / dQuantize, functional.quantize_4bit), reproduced bit for bit
 * and checked against tools/nf4_reference.py (golden: tests/golden/nf4/nf4_golden.safetensors):
 * - Blocks of ST_NF4_BLOCK (64) consecutive elements of the flattened weight (row-major (OC, C)).
 *   absmax[b] = max |w| over block b. x = float32(w * float32(1 / absmax)); the code is the number
 *   of the 15 float32 midpoints between sorted code values that x is strictly greater than (bnb's
 *   decision tree), so the NEAREST code, and a value exactly on a midpoint takes the LOWER code.
 *   An all-zero block (absmax 0) gets code 0 everywhere, as bnb's NaN path does; it dequantises to 0.
 * - Packing: two codes per byte, the FIRST element in the HIGH nibble.
 * - A tail (n % 64 != 0) is one more block padded logically with zeros: absmax covers only the real
 *   elements, the padding takes code 7 (0.0), and for odd n the low nibble of the last byte holds
 *   that padding code. So packed has (n + 1) / 2 bytes and absmax ceil(n / 64) floats.
 * - Dequantise: w = float32(ST_NF4_CODE[q] * absmax).
 * - Double quantisation of absmax (nb values): offset = mean(absmax) (float64 mean rounded to float;
 *   torch's float32 mean can differ from it in the last ulp), v = absmax - offset, blocks of 256,
 *   nested_absmax = max |v| per block, 8-bit codes by bnb's dQuantize binary search over the signed
 *   dynamic map (st_nf4_dynamic_map), absmax' = float32(map[q] * nested_absmax) + offset. */
#ifndef STREAMTUNE_NF4_H
#define STREAMTUNE_NF4_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ST_NF4_BLOCK 64
#define ST_NF4_NESTED_BLOCK 256

/* The 16 NF4 values (index = 4-bit code), bitsandbytes / QLoRA. */
extern const float ST_NF4_CODE[16];
/* bitsandbytes create_dynamic_map(signed=True) (256 ascending floats; the default `code` of
 * quantize_blockwise and so the nested_quant_map of double-quantised checkpoints), as torch computes
 * it in float32 (torch.linspace boundaries, float32 means, times float32 10^(i-6)). */
extern const float ST_NF4_DYNAMIC_MAP[256];

/* Bytes of packed codes and number of absmax values for n weights. */
static inline size_t st_nf4_packed_size(size_t n) { return (n + 1) / 2; }
static inline size_t st_nf4_nblocks(size_t n) { return (n + ST_NF4_BLOCK - 1) / ST_NF4_BLOCK; }
static inline size_t st_nf4_nested_nblocks(size_t nb) {
    return (nb + ST_NF4_NESTED_BLOCK - 1) / ST_NF4_NESTED_BLOCK;
}

/* The NF4 code of x (already divided by absmax): bnb's dQuantizeNF4. NaN gives 0. */
uint8_t st_nf4_code_of(float x);

/* packed ((n+1)/2), absmax (ceil(n/64)) = NF4 of w (n). */
void st_nf4_quantize(uint8_t *packed, float *absmax, const float *w, size_t n);
/* w (n) = NF4[code] * absmax[block]. */
void st_nf4_dequantize(float *w, const uint8_t *packed, const float *absmax, size_t n);
/* w (len) = elements [start, start + len) of the dequantised tensor (any start, any parity). */
void st_nf4_dequantize_range(float *w, const uint8_t *packed, const float *absmax, size_t start,
                             size_t len);

/* Double quantisation: q (nb), nested_absmax (ceil(nb/256)), *offset from absmax (nb), with
 * ST_NF4_DYNAMIC_MAP. */
void st_nf4_quantize_absmax(uint8_t *q, float *nested_absmax, float *offset, const float *absmax,
                            size_t nb);
/* absmax (nb) = map[q] * nested_absmax[i / 256] + offset, with map = ST_NF4_DYNAMIC_MAP. */
void st_nf4_dequantize_absmax(float *absmax, const uint8_t *q, const float *nested_absmax,
                              float offset, size_t nb);
/* The same with an explicit 256-entry map (a checkpoint's `.nested_quant_map`). */
void st_nf4_dequantize_absmax_map(float *absmax, const uint8_t *q, const float *nested_absmax,
                                  float offset, const float *map, size_t nb);

/* out (N, OC) = inp (N, C) @ W^T + bias (OC, may be NULL), W (OC, C) = dequant(packed, absmax),
 * packed (OC*C/2 rounded up), absmax (ceil(OC*C/64)). W is dequantised one row at a time into
 * scratch (C floats); the whole matrix is never materialised. Dot products accumulate in double.
 * out is overwritten (=). */
void st_nf4_matmul_forward(float *out, const float *inp, const uint8_t *packed,
                           const float *absmax, const float *bias, float *scratch, size_t N,
                           size_t C, size_t OC);
/* dinp (N, C) += dout (N, OC) @ W, W as in forward (the base is frozen: no weight gradient).
 * scratch: C floats. Accumulates (+=) because the input is shared with the LoRA branch. */
void st_nf4_matmul_backward_input(float *dinp, const float *dout, const uint8_t *packed,
                                  const float *absmax, float *scratch, size_t N, size_t C,
                                  size_t OC);

#ifdef __cplusplus
}
#endif
#endif
