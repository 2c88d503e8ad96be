/* nf4.c: bitsandbytes NF4 quantisation, double quantisation of absmax, and the NF4 matmul
 * (forward, input gradient). See include/streamtune/nf4.h for the exact scheme; every float
 * operation here is the float32 operation bnb's CUDA kernels perform, in the same order, so codes
 * and absmax values are bit-identical. Products and sums that decide a code are written as separate
 * statements so no compiler contracts them into an FMA. */
#include "streamtune/nf4.h"

#include <math.h>

const float ST_NF4_CODE[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

/* create_dynamic_map(signed=True) exactly as torch computes it (tools/nf4_reference.py holds the
 * same table and re-derives it with torch when available). Ascending; [127] = 0, [255] = 1. */
const float ST_NF4_DYNAMIC_MAP[256] = {
    -0x1.fc6666p-1f, -0x1.f53332p-1f, -0x1.eep-1f, -0x1.e6ccccp-1f,
    -0x1.df9998p-1f, -0x1.d86666p-1f, -0x1.d13334p-1f, -0x1.cap-1f,
    -0x1.c2ccccp-1f, -0x1.bb9998p-1f, -0x1.b46666p-1f, -0x1.ad3332p-1f,
    -0x1.a6p-1f, -0x1.9eccccp-1f, -0x1.979998p-1f, -0x1.906666p-1f,
    -0x1.893334p-1f, -0x1.82p-1f, -0x1.7acccep-1f, -0x1.73999ap-1f,
    -0x1.6c6668p-1f, -0x1.653334p-1f, -0x1.5ep-1f, -0x1.56cccep-1f,
    -0x1.4f999ap-1f, -0x1.486666p-1f, -0x1.413334p-1f, -0x1.3ap-1f,
    -0x1.32ccccp-1f, -0x1.2b999ap-1f, -0x1.246668p-1f, -0x1.1d3334p-1f,
    -0x1.16p-1f, -0x1.0eccccp-1f, -0x1.07999ap-1f, -0x1.006666p-1f,
    -0x1.f26668p-2f, -0x1.e4p-2f, -0x1.d59998p-2f, -0x1.c73334p-2f,
    -0x1.b8ccccp-2f, -0x1.aa6664p-2f, -0x1.9cp-2f, -0x1.8d9998p-2f,
    -0x1.7f3334p-2f, -0x1.70ccccp-2f, -0x1.626664p-2f, -0x1.54p-2f,
    -0x1.459998p-2f, -0x1.373334p-2f, -0x1.28ccccp-2f, -0x1.1a6668p-2f,
    -0x1.0cp-2f, -0x1.fb3334p-3f, -0x1.de6668p-3f, -0x1.c1999ap-3f,
    -0x1.a4ccccp-3f, -0x1.88p-3f, -0x1.6b3332p-3f, -0x1.4e6666p-3f,
    -0x1.31999ap-3f, -0x1.14ccccp-3f, -0x1.fp-4f, -0x1.b66668p-4f,
    -0x1.93d70ap-4f, -0x1.8851eap-4f, -0x1.7ccccep-4f, -0x1.7147aep-4f,
    -0x1.65c29p-4f, -0x1.5a3d7p-4f, -0x1.4eb85p-4f, -0x1.433334p-4f,
    -0x1.37ae14p-4f, -0x1.2c28f6p-4f, -0x1.20a3d6p-4f, -0x1.151ebap-4f,
    -0x1.09999ap-4f, -0x1.fc28f4p-5f, -0x1.e51ebap-5f, -0x1.ce147ap-5f,
    -0x1.b70a3ep-5f, -0x1.ap-5f, -0x1.88f5c2p-5f, -0x1.71eb86p-5f,
    -0x1.5ae146p-5f, -0x1.43d70ap-5f, -0x1.2ccccep-5f, -0x1.15c28ep-5f,
    -0x1.fd70a4p-6f, -0x1.cf5c26p-6f, -0x1.a147aep-6f, -0x1.733334p-6f,
    -0x1.451eb8p-6f, -0x1.170a3ep-6f, -0x1.d1eb86p-7f, -0x1.75c29p-7f,
    -0x1.3e76c8p-7f, -0x1.2c083p-7f, -0x1.19999ap-7f, -0x1.072b02p-7f,
    -0x1.e978d4p-8f, -0x1.c49ba6p-8f, -0x1.9fbe76p-8f, -0x1.7ae148p-8f,
    -0x1.56041ap-8f, -0x1.3126e8p-8f, -0x1.0c49bap-8f, -0x1.ced914p-9f,
    -0x1.851eb8p-9f, -0x1.3b645ap-9f, -0x1.e353f8p-10f, -0x1.4fdf3ap-10f,
    -0x1.eecbfep-11f, -0x1.b3d07cp-11f, -0x1.78d5p-11f, -0x1.3dd982p-11f,
    -0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f,
    -0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f,
    -0x1.040bfep-17f, -0x1.b43528p-19f, -0x1.27476ep-21f, 0x0.0p+0f,
    0x1.27476ep-21f, 0x1.b43528p-19f, 0x1.040bfep-17f, 0x1.64840cp-16f,
    0x1.6f0068p-15f, 0x1.15df66p-14f, 0x1.743e96p-14f, 0x1.47ae16p-13f,
    0x1.19ce0ap-12f, 0x1.8fc506p-12f, 0x1.02de02p-11f, 0x1.3dd982p-11f,
    0x1.78d5p-11f, 0x1.b3d07cp-11f, 0x1.eecbfep-11f, 0x1.4fdf3ap-10f,
    0x1.e353f8p-10f, 0x1.3b645ap-9f, 0x1.851eb8p-9f, 0x1.ced914p-9f,
    0x1.0c49bap-8f, 0x1.3126e8p-8f, 0x1.56041ap-8f, 0x1.7ae148p-8f,
    0x1.9fbe76p-8f, 0x1.c49ba6p-8f, 0x1.e978d4p-8f, 0x1.072b02p-7f,
    0x1.19999ap-7f, 0x1.2c083p-7f, 0x1.3e76c8p-7f, 0x1.75c29p-7f,
    0x1.d1eb86p-7f, 0x1.170a3ep-6f, 0x1.451eb8p-6f, 0x1.733334p-6f,
    0x1.a147aep-6f, 0x1.cf5c26p-6f, 0x1.fd70a4p-6f, 0x1.15c28ep-5f,
    0x1.2ccccep-5f, 0x1.43d70ap-5f, 0x1.5ae146p-5f, 0x1.71eb86p-5f,
    0x1.88f5c2p-5f, 0x1.ap-5f, 0x1.b70a3ep-5f, 0x1.ce147ap-5f,
    0x1.e51ebap-5f, 0x1.fc28f4p-5f, 0x1.09999ap-4f, 0x1.151ebap-4f,
    0x1.20a3d6p-4f, 0x1.2c28f6p-4f, 0x1.37ae14p-4f, 0x1.433334p-4f,
    0x1.4eb85p-4f, 0x1.5a3d7p-4f, 0x1.65c29p-4f, 0x1.7147aep-4f,
    0x1.7ccccep-4f, 0x1.8851eap-4f, 0x1.93d70ap-4f, 0x1.b66668p-4f,
    0x1.fp-4f, 0x1.14ccccp-3f, 0x1.31999ap-3f, 0x1.4e6666p-3f,
    0x1.6b3332p-3f, 0x1.88p-3f, 0x1.a4ccccp-3f, 0x1.c1999ap-3f,
    0x1.de6668p-3f, 0x1.fb3334p-3f, 0x1.0cp-2f, 0x1.1a6668p-2f,
    0x1.28ccccp-2f, 0x1.373334p-2f, 0x1.459998p-2f, 0x1.54p-2f,
    0x1.626664p-2f, 0x1.70ccccp-2f, 0x1.7f3334p-2f, 0x1.8d9998p-2f,
    0x1.9cp-2f, 0x1.aa6664p-2f, 0x1.b8ccccp-2f, 0x1.c73334p-2f,
    0x1.d59998p-2f, 0x1.e4p-2f, 0x1.f26668p-2f, 0x1.006666p-1f,
    0x1.07999ap-1f, 0x1.0eccccp-1f, 0x1.16p-1f, 0x1.1d3334p-1f,
    0x1.246668p-1f, 0x1.2b999ap-1f, 0x1.32ccccp-1f, 0x1.3ap-1f,
    0x1.413334p-1f, 0x1.486666p-1f, 0x1.4f999ap-1f, 0x1.56cccep-1f,
    0x1.5ep-1f, 0x1.653334p-1f, 0x1.6c6668p-1f, 0x1.73999ap-1f,
    0x1.7acccep-1f, 0x1.82p-1f, 0x1.893334p-1f, 0x1.906666p-1f,
    0x1.979998p-1f, 0x1.9eccccp-1f, 0x1.a6p-1f, 0x1.ad3332p-1f,
    0x1.b46666p-1f, 0x1.bb9998p-1f, 0x1.c2ccccp-1f, 0x1.cap-1f,
    0x1.d13334p-1f, 0x1.d86666p-1f, 0x1.df9998p-1f, 0x1.e6ccccp-1f,
    0x1.eep-1f, 0x1.f53332p-1f, 0x1.fc6666p-1f, 0x1.0p+0f,};

/* bnb dQuantizeNF4: a decision tree over the float32 midpoints between adjacent code values
 * (strict `>`, so a value on a midpoint takes the lower code; NaN falls through to 0). */
uint8_t st_nf4_code_of(float x) {
    if (x > 0.03979014977812767f) {
        if (x > 0.3893125355243683f) {
            if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? 15 : 14;
            return x > 0.5016634166240692f ? 13 : 12;
        }
        if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? 11 : 10;
        return x > 0.1202552504837513f ? 9 : 8;
    }
    if (x > -0.33967943489551544f) {
        if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? 7 : 6;
        return x > -0.23460740596055984f ? 5 : 4;
    }
    if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? 3 : 2;
    return x > -0.8480964004993439f ? 1 : 0;
}

void st_nf4_quantize(uint8_t *packed, float *absmax, const float *w, size_t n) {
    /* packed ((n+1)/2), absmax (ceil(n/64)), w (n). Blocks are independent (each writes its own
     * 32 bytes and absmax): split over threads when there are many (loading quantises every
     * weight through here), same bits for any thread count. */
    size_t nb = st_nf4_nblocks(n);
#pragma omp parallel for schedule(static) if (nb >= 256)
    for (size_t b = 0; b < nb; b++) {
        size_t lo = b * ST_NF4_BLOCK, hi = lo + ST_NF4_BLOCK;
        if (hi > n) hi = n;
        float m = 0.0f;
        for (size_t i = lo; i < hi; i++) m = fmaxf(m, fabsf(w[i]));
        absmax[b] = m;
        float scale = m > 0.0f ? 1.0f / m : 0.0f;
        /* logical block of 64 (zero padded); codes written in pairs, first in the high nibble */
        for (size_t i = lo; i < lo + ST_NF4_BLOCK && i < n + (n & 1); i += 2) {
            uint8_t c[2];
            for (int k = 0; k < 2; k++) {
                float v = i + (size_t)k < n ? w[i + (size_t)k] : 0.0f;
                float x = v * scale;
                c[k] = m > 0.0f ? st_nf4_code_of(x) : 0; /* bnb: 0 * inf = NaN -> code 0 */
            }
            packed[i / 2] = (uint8_t)((c[0] << 4) | c[1]);
        }
    }
}

void st_nf4_dequantize_range(float *w, const uint8_t *packed, const float *absmax, size_t start,
                             size_t len) {
    /* w (len) = dequant elements [start, start+len) */
    for (size_t j = 0; j < len; j++) {
        size_t i = start + j;
        uint8_t byte = packed[i / 2];
        uint8_t q = (i & 1) ? (uint8_t)(byte & 15) : (uint8_t)(byte >> 4);
        w[j] = ST_NF4_CODE[q] * absmax[i / ST_NF4_BLOCK];
    }
}

void st_nf4_dequantize(float *w, const uint8_t *packed, const float *absmax, size_t n) {
    st_nf4_dequantize_range(w, packed, absmax, 0, n);
}

/* bnb dQuantize<0>: a 7-step binary search over the 256 sorted map entries, then a float32
 * midpoint test against the neighbour on the side x lies. Not always the exact nearest entry
 * (the search never lands on 255 directly), but exactly what bnb stores. */
static uint8_t dyn_quantize(const float *code, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f;
    float val = code[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = code[pivot];
    }
    if (upper_pivot == 255) upper = code[upper_pivot];
    if (lower_pivot == 0) lower = code[lower_pivot];
    if (x > val) {
        float sum = upper + val;
        float mid = sum * 0.5f;
        return (uint8_t)(x > mid ? upper_pivot : pivot);
    }
    float sum = lower + val;
    float mid = sum * 0.5f;
    return (uint8_t)(x < mid ? lower_pivot : pivot);
}

void st_nf4_quantize_absmax(uint8_t *q, float *nested_absmax, float *offset, const float *absmax,
                            size_t nb) {
    /* q (nb), nested_absmax (ceil(nb/256)), offset (1), absmax (nb) */
    double s = 0.0;
    for (size_t i = 0; i < nb; i++) s += absmax[i];
    float off = nb ? (float)(s / (double)nb) : 0.0f;
    *offset = off;
    size_t nn = st_nf4_nested_nblocks(nb);
    for (size_t j = 0; j < nn; j++) {
        size_t lo = j * ST_NF4_NESTED_BLOCK, hi = lo + ST_NF4_NESTED_BLOCK;
        if (hi > nb) hi = nb;
        float m = 0.0f;
        for (size_t i = lo; i < hi; i++) m = fmaxf(m, fabsf(absmax[i] - off));
        nested_absmax[j] = m;
        float scale = m > 0.0f ? 1.0f / m : 0.0f;
        for (size_t i = lo; i < hi; i++) {
            float v = absmax[i] - off;
            float x = v * scale;
            /* bnb with nested absmax 0: NaN, every comparison false, the search ends at 0 */
            q[i] = m > 0.0f ? dyn_quantize(ST_NF4_DYNAMIC_MAP, x) : 0;
        }
    }
}

void st_nf4_dequantize_absmax_map(float *absmax, const uint8_t *q, const float *nested_absmax,
                                  float offset, const float *map, size_t nb) {
    for (size_t i = 0; i < nb; i++) {
        float p = map[q[i]] * nested_absmax[i / ST_NF4_NESTED_BLOCK];
        absmax[i] = p + offset;
    }
}

void st_nf4_dequantize_absmax(float *absmax, const uint8_t *q, const float *nested_absmax,
                              float offset, size_t nb) {
    st_nf4_dequantize_absmax_map(absmax, q, nested_absmax, offset, ST_NF4_DYNAMIC_MAP, nb);
}

void st_nf4_matmul_forward(float *out, const float *inp, const uint8_t *packed,
                           const float *absmax, const float *bias, float *scratch, size_t N,
                           size_t C, size_t OC) {
    /* out (N, OC) =, inp (N, C), W (OC, C) nf4, bias (OC) or NULL, scratch (C) */
    for (size_t o = 0; o < OC; o++) {
        st_nf4_dequantize_range(scratch, packed, absmax, o * C, C);
        for (size_t n = 0; n < N; n++) {
            const float *x = inp + n * C;
            double s = bias ? bias[o] : 0.0;
            for (size_t c = 0; c < C; c++) s += (double)x[c] * scratch[c];
            out[n * OC + o] = (float)s;
        }
    }
}

void st_nf4_matmul_backward_input(float *dinp, const float *dout, const uint8_t *packed,
                                  const float *absmax, float *scratch, size_t N, size_t C,
                                  size_t OC) {
    /* dinp (N, C) +=, dout (N, OC), W (OC, C) nf4, scratch (C). One dequantised row at a time:
     * each dinp element gathers its OC terms in float (the forward keeps double). */
    for (size_t o = 0; o < OC; o++) {
        st_nf4_dequantize_range(scratch, packed, absmax, o * C, C);
        for (size_t n = 0; n < N; n++) {
            float g = dout[n * OC + o];
            float *d = dinp + n * C;
            for (size_t c = 0; c < C; c++) d[c] += g * scratch[c];
        }
    }
}
