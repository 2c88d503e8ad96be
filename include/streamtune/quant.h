/* streamtune quantised frozen weights (QLoRA base): NF4 (bitsandbytes layout, optionally with
 * double-quantised absmax) and int8 with one absmax per output channel.
 *
 * DESIGN: a struct st_qweight describes one frozen (rows, cols) row-major matrix; its arrays point
 * either into a safetensors map (a checkpoint quantised by bitsandbytes) or into the model's
 * arena (quantised at load). Nothing ever holds a whole dequantised matrix: the matmuls dequantise
 * a tile of rows into a bounded scratch and multiply it (F32: the F32 panel GEMM, OpenBLAS on
 * CPUs without its SIMD kernel; BF16: the BF16 GEMM). Dequantisation reproduces
 * bitsandbytes exactly (see nf4.h): absmax[b] = float32(float32(nested_map[aq[b]] *
 * nested_absmax[b / 256]) + offset) with double quantisation, w = float32(quant_map[code] *
 * absmax[b]). Int8: w = float32(q * scale[row]), scale = absmax(row) / 127, q = round(w / scale). */
#ifndef STREAMTUNE_QUANT_H
#define STREAMTUNE_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "streamtune/core.h"
#include "streamtune/formats.h"

#ifdef __cplusplus
extern "C" {
#endif

enum st_quant { ST_QUANT_NONE = 0, ST_QUANT_NF4, ST_QUANT_INT8 };
const char *st_quant_name(enum st_quant q); /* "none", "nf4", "int8" */
/* "nf4", "int8", "none" (or "f32"); 1 for anything else. */
int st_quant_parse(const char *s, enum st_quant *out);

struct st_qweight {
    enum st_quant kind; /* NONE: this struct is unused (the weight is a float array) */
    size_t rows, cols;
    const uint8_t *q;   /* NF4: (rows*cols+1)/2 packed codes, first element in the high nibble;
                           INT8: rows*cols int8 values */
    /* NF4 absmax, one per 64 elements: either float (absmax) or double-quantised (aq codes with
     * nested_absmax per 256 blocks, nested_offset and the 256-entry nested_map). */
    const float *absmax;
    const uint8_t *aq;
    const float *nested_absmax;
    float nested_offset;
    const float *nested_map; /* default ST_NF4_DYNAMIC_MAP */
    const float *quant_map;  /* 16 code values; default ST_NF4_CODE */
    const float *scale;      /* INT8: rows scales */
};

/* Bytes the quantised storage of a (rows, cols) matrix takes (codes + absmax/scales). double_quant
 * applies to NF4. */
size_t st_qweight_bytes(enum st_quant kind, size_t rows, size_t cols, int double_quant);

/* Rows [r0, r0 + n) dequantised into dst (n, cols). */
void st_qweight_dequant_rows(float *dst, const struct st_qweight *w, size_t r0, size_t n);

/* Rows of the scratch tile the matmuls use for this matrix (the F32 ones; the BF16 variants below
 * take bigger tiles), the scratch floats either needs, and those of the F32 (bf16 0) or the BF16
 * (bf16 1) matmuls alone. */
size_t st_qweight_tile_rows(const struct st_qweight *w);
size_t st_qweight_tile_rows_bf16(const struct st_qweight *w);
size_t st_qweight_scratch_floats(const struct st_qweight *w);
size_t st_qweight_scratch_floats_for(const struct st_qweight *w, int bf16);

/* The same matmuls through the BF16 GEMM (bf16.h): each dequantised tile is packed into BF16
 * panels in the scratch and multiplied there (dequantisation fused into the GEMM's packing).
 * xscratch: st_bf16_x_bytes(N, max(rows, cols)) bytes. */
void st_qlinear_forward_bf16(float *out, const float *inp, const struct st_qweight *w,
                             const float *bias, float *scratch, uint32_t *xscratch, size_t N);
void st_qlinear_backward_input_bf16(float *dinp, const float *dout, const struct st_qweight *w,
                                    float *scratch, uint32_t *xscratch, size_t N);
/* st_qlinear_forward_bf16 from inp already rounded (st_bf16_pack_x of all N rows, shared by the
 * matmuls of one input), plus the low-rank term lr (NULL: none; bf16.h) */
struct st_lowrank;
void st_qlinear_forward_bf16_px(float *out, const uint32_t *xp, const struct st_qweight *w,
                                const float *bias, float *scratch, size_t N,
                                const struct st_lowrank *lr);

/* st_qlinear_backward_input_bf16 where acc 0 writes dinp rather than adding to it, the low-rank
 * term lr (NULL: none; bf16.h) is added once, and ce (NULL: dout is the gradient) says dout holds
 * logits whose softmax cross-entropy gradient is the one to multiply (bf16.h st_ce_rows: rounded
 * straight from the logits, each tile's columns with their offset in col0). */
struct st_ce_rows;
void st_qlinear_backward_input_bf16_ex(float *dinp, const float *dout, const struct st_qweight *w,
                                       float *scratch, uint32_t *xscratch, size_t N, int acc,
                                       const struct st_lowrank *lr, const struct st_ce_rows *ce);

/* out (N, rows) = inp (N, cols) @ W^T + bias (may be NULL). scratch: st_qweight_scratch_floats. */
void st_qlinear_forward(float *out, const float *inp, const struct st_qweight *w,
                        const float *bias, float *scratch, size_t N);
/* dinp (N, cols) += dout (N, rows) @ W. */
void st_qlinear_backward_input(float *dinp, const float *dout, const struct st_qweight *w,
                               float *scratch, size_t N);

/* Quantise a (rows, cols) tensor of a safetensors map (F32/BF16/F16) in chunks (never the whole
 * tensor in float32) into caller-provided arrays: NF4: codes ((n+1)/2 bytes) and either absmax
 * floats (double_quant 0) or aq (nb bytes) and nested_absmax (ceil(nb/256)) (double_quant 1),
 * with absmax_tmp (nb floats) as scratch; INT8: q (n) and scale (rows). chunk: scratch of
 * ST_QUANT_CHUNK floats. Fills *w to point at the arrays. */
#define ST_QUANT_CHUNK ((size_t)1 << 16)
enum st_status st_qweight_quantize_tensor(struct st_qweight *w, enum st_quant kind,
                                          const struct st_tensor_view *t, int double_quant,
                                          uint8_t *q, float *absmax, uint8_t *aq,
                                          float *nested_absmax, float *scale, float *absmax_tmp,
                                          float *chunk, struct st_error *err);

#ifdef __cplusplus
}
#endif
#endif
