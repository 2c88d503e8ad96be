/* qlinear.c: quantised frozen weights (quant.h): dequantise tiles of rows into a bounded scratch
 * and multiply them (F32: the F32 panel GEMM where it has a SIMD kernel, else OpenBLAS; BF16:
 * the BF16 GEMM); chunked quantisation of safetensors tensors at load.
 *
 * The tile is up to a few MiB (about 1M weights, 4 MiB of floats, at least 16 rows), so the
 * dequantisation (one pass over the codes per matmul) is cheap next to the GEMM for the batch
 * sizes of training, and memory holds at most one tile of a dequantised matrix (a small model's
 * matrices are one tile each). */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "streamtune/bf16.h"
#include "streamtune/core.h"
#include "streamtune/f32.h"
#include "streamtune/nf4.h"
#include "streamtune/quant.h"

const char *st_quant_name(enum st_quant q) {
    switch (q) {
    case ST_QUANT_NF4: return "nf4";
    case ST_QUANT_INT8: return "int8";
    default: return "none";
    }
}

int st_quant_parse(const char *s, enum st_quant *out) {
    if (!strcmp(s, "nf4")) *out = ST_QUANT_NF4;
    else if (!strcmp(s, "int8")) *out = ST_QUANT_INT8;
    else if (!strcmp(s, "none") || !strcmp(s, "f32")) *out = ST_QUANT_NONE;
    else return 1;
    return 0;
}

size_t st_qweight_bytes(enum st_quant kind, size_t rows, size_t cols, int double_quant) {
    size_t n = rows * cols;
    if (kind == ST_QUANT_INT8) return n + rows * sizeof(float);
    if (kind != ST_QUANT_NF4) return n * sizeof(float);
    size_t nb = st_nf4_nblocks(n);
    if (!double_quant) return st_nf4_packed_size(n) + nb * sizeof(float);
    return st_nf4_packed_size(n) + nb + st_nf4_nested_nblocks(nb) * sizeof(float);
}

static float absmax_of(const struct st_qweight *w, size_t b) {
    if (w->absmax) return w->absmax[b];
    const float *map = w->nested_map ? w->nested_map : ST_NF4_DYNAMIC_MAP;
    float p = map[w->aq[b]] * w->nested_absmax[b / ST_NF4_NESTED_BLOCK];
    return p + w->nested_offset;
}

#if defined(__x86_64__)
#include <immintrin.h>
/* One whole NF4 block (64 codes, 32 bytes, high nibble first) times its absmax: the 16-entry
 * code table is one zmm, so vpermps looks 16 codes up at once; the same products as the scalar
 * loop, bit for bit. The scalar loop was 4-5% of a QLoRA step once the GEMMs ran on AMX. */
__attribute__((target("avx512f"))) static void nf4_block_avx512(float *d, const uint8_t *q,
                                                                 const float *code, float am) {
    const __m512 lut = _mm512_loadu_ps(code), s = _mm512_set1_ps(am);
    /* codes 2j, 2j + 1 = the high, low nibble of byte j: from hi (index j), lo (16 + j) */
    const __m512i i0 = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i i1 = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24,
                                        8);
    for (int h = 0; h < 2; h++) {
        __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + 16 * h)));
        __m512i hi = _mm512_srli_epi32(x, 4), lo = _mm512_and_si512(x, _mm512_set1_epi32(15));
        __m512i c0 = _mm512_permutex2var_epi32(hi, i0, lo), c1 = _mm512_permutex2var_epi32(hi, i1, lo);
        _mm512_storeu_ps(d + 32 * h, _mm512_mul_ps(_mm512_permutexvar_ps(c0, lut), s));
        _mm512_storeu_ps(d + 32 * h + 16, _mm512_mul_ps(_mm512_permutexvar_ps(c1, lut), s));
    }
}

/* AVX-512F unless ST_NO_AVX512=1: the F32 kernels' check, cached by detect_once (cpu.c) at
 * model load, not first made in the packing threads */
static int nf4_avx512(void) { return st_f32_native(); }
#endif

void st_qweight_dequant_rows(float *dst, const struct st_qweight *w, size_t r0, size_t n) {
    size_t C = w->cols;
    if (w->kind == ST_QUANT_INT8) {
        const int8_t *q = (const int8_t *)w->q;
        for (size_t r = r0; r < r0 + n; r++) {
            float s = w->scale[r];
            const int8_t *qr = q + r * C;
            float *d = dst + (r - r0) * C;
            for (size_t c = 0; c < C; c++) d[c] = (float)qr[c] * s;
        }
        return;
    }
    const float *code = w->quant_map ? w->quant_map : ST_NF4_CODE;
    size_t i = r0 * C, end = (r0 + n) * C;
    float *d = dst;
    while (i < end) {
        size_t b = i / ST_NF4_BLOCK, stop = (b + 1) * ST_NF4_BLOCK;
        if (stop > end) stop = end;
        float am = absmax_of(w, b);
#if defined(__x86_64__)
        if (stop - i == ST_NF4_BLOCK && nf4_avx512()) { /* a whole block (i on its start) */
            nf4_block_avx512(d, w->q + i / 2, code, am);
            d += ST_NF4_BLOCK, i = stop;
            continue;
        }
#endif
        /* odd start: low nibble first, then whole bytes (two codes each) */
        if ((i & 1) && i < stop) {
            *d++ = code[w->q[i / 2] & 15] * am;
            i++;
        }
        for (; i + 1 < stop; i += 2) {
            uint8_t byte = w->q[i / 2];
            d[0] = code[byte >> 4] * am;
            d[1] = code[byte & 15] * am;
            d += 2;
        }
        if (i < stop) {
            *d++ = code[w->q[i / 2] >> 4] * am;
            i++;
        }
    }
}

/* Tiles of about 1M weights (4 MiB of floats) for the F32 matmuls, which dequantise a whole tile
 * into floats and pack them into F32 panels (or hand the floats to OpenBLAS): a 135M model's
 * matrices are one tile each, an 8B model's 14336 x 4096 ones 56. Each tile is one GEMM pass,
 * and in the backward one more read and write of the whole input gradient (256K-weight tiles
 * made an NF4 step 15-20% slower). */
static size_t tile_rows_of(const struct st_qweight *w, size_t weights) {
    size_t rows = weights / (w->cols ? w->cols : 1);
    if (rows < 16) rows = 16;
    if (rows > w->rows) rows = w->rows;
    return rows ? rows : 1;
}

size_t st_qweight_tile_rows(const struct st_qweight *w) {
    return tile_rows_of(w, (size_t)1 << 20);
}

/* The BF16 matmuls dequantise 16 rows at a time per packing thread straight into BF16 panels, so
 * their tiles are bigger: about 4M weights (8 MiB of panels). bench_qlinear, 110M Llama shapes at
 * 2048 rows, NF4 over BF16 time with 1M-weight tiles: down (768 x 2048) backward x1.38, gate
 * (2048 x 768) backward x1.12, the 32000 x 768 head forward x1.14. */
size_t st_qweight_tile_rows_bf16(const struct st_qweight *w) {
    return tile_rows_of(w, (size_t)1 << 22);
}

/* float rows the BF16 packings dequantise into: 16 per thread (pack_wt_src's groups) for at most
 * 8 packing threads (the packings use fewer threads than that when they are more); a constant, so
 * the scratch sized at load stays big enough whatever the thread count later */
static size_t bf16_float_rows(void) { return 16 * 8; }

/* the BF16 panels of a tile (the "wt" or "w" packing, whichever is bigger), in floats */
static size_t bf16_panel_floats(const struct st_qweight *w) {
    size_t tr = st_qweight_tile_rows_bf16(w);
    size_t a = st_bf16_panels_bytes(w->cols, tr), b = st_bf16_panels_bytes(tr, w->cols);
    return ((a > b ? a : b) + 63) / 64 * 16; /* whole cache lines, so the floats after stay aligned */
}

/* the F32 panels of a tile (the "wt" or "w" packing, whichever is bigger), in floats */
static size_t f32_panel_floats(const struct st_qweight *w) {
    size_t tr = st_qweight_tile_rows(w);
    size_t a = st_f32_panels_bytes(w->cols, tr), b = st_f32_panels_bytes(tr, w->cols);
    return ((a > b ? a : b) + 63) / 64 * 16;
}

size_t st_qweight_scratch_floats_for(const struct st_qweight *w, int bf16) {
    if (!bf16) return f32_panel_floats(w) + st_qweight_tile_rows(w) * w->cols;
    return bf16_panel_floats(w) + bf16_float_rows() * w->cols;
}
size_t st_qweight_scratch_floats(const struct st_qweight *w) {
    size_t f32 = st_qweight_scratch_floats_for(w, 0), bf = st_qweight_scratch_floats_for(w, 1);
    return f32 > bf ? f32 : bf;
}

/* Row r of a tile starting at row r0, dequantised (called from the packing threads). */
struct tile_rows {
    const struct st_qweight *w;
    size_t r0;
};

static void tile_row(void *ctx, size_t r, float *buf) {
    const struct tile_rows *t = ctx;
    st_qweight_dequant_rows(buf, t->w, t->r0 + r, 1);
}

void st_qlinear_forward_bf16_px(float *out, const uint32_t *xp, const struct st_qweight *w,
                                const float *bias, float *scratch, size_t N,
                                const struct st_lowrank *lr) {
    size_t OC = w->rows, C = w->cols, tr = st_qweight_tile_rows_bf16(w);
    uint16_t *pan = (uint16_t *)scratch;
    float *rows = scratch + bf16_panel_floats(w);
    for (size_t r0 = 0; r0 < OC; r0 += tr) {
        size_t nr = OC - r0 < tr ? OC - r0 : tr;
        struct tile_rows t = {w, r0};
        st_bf16_pack_wt_rows(pan, nr, C, tile_row, &t, rows, bf16_float_rows());
        struct st_lowrank lt; /* the tile's output columns r0.. of the low-rank term */
        if (lr) lt = *lr, lt.w = lr->w + r0 * lr->wn;
        st_bf16_gemm_px_lr(out + r0, OC, xp, pan, bias ? bias + r0 : NULL, N, C, nr, 0,
                           lr ? &lt : NULL);
    }
}

void st_qlinear_forward_bf16(float *out, const float *inp, const struct st_qweight *w,
                             const float *bias, float *scratch, uint32_t *xscratch, size_t N) {
    st_bf16_pack_x(xscratch, inp, N, w->cols, w->cols); /* once for all tiles */
    st_qlinear_forward_bf16_px(out, xscratch, w, bias, scratch, N, NULL);
}

void st_qlinear_backward_input_bf16_ex(float *dinp, const float *dout, const struct st_qweight *w,
                                       float *scratch, uint32_t *xscratch, size_t N, int acc,
                                       const struct st_lowrank *lr, const struct st_ce_rows *ce) {
    size_t OC = w->rows, C = w->cols, tr = st_qweight_tile_rows_bf16(w);
    uint16_t *pan = (uint16_t *)scratch;
    float *rows = scratch + bf16_panel_floats(w);
    for (size_t r0 = 0; r0 < OC; r0 += tr) {
        size_t nr = OC - r0 < tr ? OC - r0 : tr;
        struct tile_rows t = {w, r0};
        st_bf16_pack_w_rows(pan, nr, C, tile_row, &t, rows, bf16_float_rows());
        /* dinp (N, C) (+)= dout[:, r0:r0+nr] @ tile (nr, C); the first tile writes dinp unless
         * acc, the last adds the low-rank term */
        if (ce) {
            struct st_ce_rows cc = *ce;
            cc.col0 = ce->col0 + r0;
            st_bf16_pack_ce_grad(xscratch, dout + r0, &cc, N, nr, OC);
        } else {
            st_bf16_pack_x(xscratch, dout + r0, N, nr, OC);
        }
        st_bf16_gemm_px_lr(dinp, C, xscratch, pan, NULL, N, nr, C, acc || r0 > 0,
                           r0 + nr == OC ? lr : NULL);
    }
}

void st_qlinear_backward_input_bf16(float *dinp, const float *dout, const struct st_qweight *w,
                                    float *scratch, uint32_t *xscratch, size_t N) {
    st_qlinear_backward_input_bf16_ex(dinp, dout, w, scratch, xscratch, N, 1, NULL, NULL);
}

/* Rows [r0, r0 + nr) dequantised into dst, 16-row slices over the threads (each element is
 * written by one thread: the same floats on any thread count) */
static void dequant_tile(float *dst, const struct st_qweight *w, size_t r0, size_t nr) {
    size_t C = w->cols;
#pragma omp parallel for schedule(static) if (nr * C >= 65536)
    for (size_t i = 0; i < nr; i += 16)
        st_qweight_dequant_rows(dst + i * C, w, r0 + i, nr - i < 16 ? nr - i : 16);
}

/* The F32 tiles go through the F32 panel GEMM (f32.h) where it has a SIMD kernel: each tile is
 * packed into panels at the scratch's start, then multiplied. Its sums do not depend on the
 * thread count; OpenBLAS's did (its Haswell kernels: an eval scored rows on 3 threads to a
 * different perplexity than on 1), and it is the kernel the F32 model's unquantised matmuls use.
 * Elsewhere (no AVX-512 nor NEON) OpenBLAS multiplies the dequantised floats. */
void st_qlinear_forward(float *out, const float *inp, const struct st_qweight *w,
                        const float *bias, float *scratch, size_t N) {
    size_t OC = w->rows, C = w->cols, tr = st_qweight_tile_rows(w);
    float *pan = scratch, *rows = scratch + f32_panel_floats(w);
    int native = st_f32_native();
    if (bias && !native)
        for (size_t n = 0; n < N; n++) memcpy(out + n * OC, bias, OC * sizeof(float));
    for (size_t r0 = 0; r0 < OC; r0 += tr) {
        size_t nr = OC - r0 < tr ? OC - r0 : tr;
        dequant_tile(rows, w, r0, nr);
        /* out[:, r0:r0+nr] (ld OC) = inp (N, C) @ tile (nr, C)^T (+ bias) */
        if (native) {
            st_f32_pack_wt(pan, rows, nr, C);
            st_f32_gemm(out + r0, OC, inp, C, pan, bias ? bias + r0 : NULL, N, C, nr, 0);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)nr, (int)C, 1.0f,
                        inp, (int)C, rows, (int)C, bias ? 1.0f : 0.0f, out + r0, (int)OC);
        }
    }
}

void st_qlinear_backward_input(float *dinp, const float *dout, const struct st_qweight *w,
                               float *scratch, size_t N) {
    size_t OC = w->rows, C = w->cols, tr = st_qweight_tile_rows(w);
    float *pan = scratch, *rows = scratch + f32_panel_floats(w);
    int native = st_f32_native();
    for (size_t r0 = 0; r0 < OC; r0 += tr) {
        size_t nr = OC - r0 < tr ? OC - r0 : tr;
        dequant_tile(rows, w, r0, nr);
        /* dinp (N, C) += dout[:, r0:r0+nr] (ld OC) @ tile (nr, C) */
        if (native) {
            st_f32_pack_w(pan, rows, nr, C);
            st_f32_gemm(dinp, C, dout + r0, OC, pan, NULL, N, nr, C, 1);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)C, (int)nr, 1.0f,
                        dout + r0, (int)OC, rows, (int)C, 1.0f, dinp, (int)C);
        }
    }
}

/* float32 of elements [start, start + n) of a tensor view */
static enum st_status view_f32(float *dst, const struct st_tensor_view *t, size_t start, size_t n,
                               struct st_error *err) {
    size_t es = t->dtype == ST_F32 ? 4 : 2;
    return st_convert_to_f32(dst, (const uint8_t *)t->data + start * es, t->dtype, n, err);
}

enum st_status st_qweight_quantize_tensor(struct st_qweight *w, enum st_quant kind,
                                          const struct st_tensor_view *t, int double_quant,
                                          uint8_t *q, float *absmax, uint8_t *aq,
                                          float *nested_absmax, float *scale, float *absmax_tmp,
                                          float *chunk, struct st_error *err) {
    if (t->ndim != 2 || (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16))
        return st_errorf(err, ST_ERR_FORMAT, "%s: only 2-D F32/BF16/F16 tensors can be quantised",
                         t->name);
    memset(w, 0, sizeof *w);
    w->kind = kind;
    w->rows = (size_t)t->shape[0];
    w->cols = (size_t)t->shape[1];
    size_t R = w->rows, C = w->cols, n = R * C;
    enum st_status rc;
    if (kind == ST_QUANT_INT8) {
        /* per row: absmax, scale = absmax / 127, q = round-half-even(w / scale) clamped */
        int8_t *qi = (int8_t *)q;
        for (size_t r = 0; r < R; r++) {
            float am = 0;
            for (size_t c0 = 0; c0 < C; c0 += ST_QUANT_CHUNK) {
                size_t k = C - c0 < ST_QUANT_CHUNK ? C - c0 : ST_QUANT_CHUNK;
                if ((rc = view_f32(chunk, t, r * C + c0, k, err))) return rc;
                for (size_t c = 0; c < k; c++)
                    if (fabsf(chunk[c]) > am) am = fabsf(chunk[c]);
            }
            float s = am / 127.0f;
            scale[r] = s;
            float inv = s > 0 ? 1.0f / s : 0.0f;
            for (size_t c0 = 0; c0 < C; c0 += ST_QUANT_CHUNK) {
                size_t k = C - c0 < ST_QUANT_CHUNK ? C - c0 : ST_QUANT_CHUNK;
                if ((rc = view_f32(chunk, t, r * C + c0, k, err))) return rc;
                for (size_t c = 0; c < k; c++) {
                    float v = nearbyintf(chunk[c] * inv);
                    qi[r * C + c0 + c] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
                }
            }
        }
        w->q = q;
        w->scale = scale;
        return ST_OK;
    }
    if (kind != ST_QUANT_NF4) return st_errorf(err, ST_ERR_ARG, "unknown quantisation");
    float *am = double_quant ? absmax_tmp : absmax;
    /* chunks of whole blocks: packing and absmax stay aligned (ST_QUANT_CHUNK % 64 == 0) */
    for (size_t i = 0; i < n; i += ST_QUANT_CHUNK) {
        size_t k = n - i < ST_QUANT_CHUNK ? n - i : ST_QUANT_CHUNK;
        if ((rc = view_f32(chunk, t, i, k, err))) return rc;
        st_nf4_quantize(q + i / 2, am + i / ST_NF4_BLOCK, chunk, k);
    }
    w->q = q;
    if (double_quant) {
        st_nf4_quantize_absmax(aq, nested_absmax, &w->nested_offset, am, st_nf4_nblocks(n));
        w->aq = aq;
        w->nested_absmax = nested_absmax;
    } else {
        w->absmax = absmax;
    }
    return ST_OK;
}
