/* dtype.c: safetensors dtype names and sizes, and the float conversions (bf16, f16 <-> f32). */
#include "streamtune/formats.h"

#include <math.h>
#include <string.h>

static const struct {
    enum st_dtype t;
    const char *name;
    size_t size;
} dtypes[] = {
    {ST_F32, "F32", 4},  {ST_F16, "F16", 2},   {ST_BF16, "BF16", 2}, {ST_F64, "F64", 8},
    {ST_I8, "I8", 1},    {ST_U8, "U8", 1},     {ST_I16, "I16", 2},   {ST_U16, "U16", 2},
    {ST_I32, "I32", 4},  {ST_U32, "U32", 4},   {ST_I64, "I64", 8},   {ST_U64, "U64", 8},
    {ST_BOOL, "BOOL", 1}, {ST_F8_E4M3, "F8_E4M3", 1}, {ST_F8_E5M2, "F8_E5M2", 1},
};

size_t st_dtype_size(enum st_dtype t) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].t == t) return dtypes[i].size;
    return 0;
}

const char *st_dtype_name(enum st_dtype t) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].t == t) return dtypes[i].name;
    return "INVALID";
}

enum st_dtype st_dtype_from_name(const char *name) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (strcmp(dtypes[i].name, name) == 0) return dtypes[i].t;
    return ST_DTYPE_INVALID;
}

float st_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t st_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t st_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;
    if (a >= 0x477ff000u) return sign | 0x7c00u; /* overflow -> inf (rounds up past 65504) */
    if (a < 0x33000001u) return sign;            /* underflow to zero */
    int e = (int)(a >> 23);
    uint32_t man = (a & 0x7fffffu) | 0x800000u;
    int shift;
    uint16_t he;
    if (e < 113) { /* subnormal half */
        shift = 126 - e;
        he = 0;
    } else {
        shift = 13;
        he = (uint16_t)((e - 112) << 10);
        man &= 0x7fffffu;
    }
    uint32_t half_man = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1);
    uint32_t halfway = 1u << (shift - 1);
    uint32_t r = (uint32_t)he + half_man;
    if (rem > halfway || (rem == halfway && (half_man & 1u))) r++;
    return (uint16_t)(sign | r);
}

enum st_status st_convert_to_f32(float *dst, const void *src, enum st_dtype t, size_t n,
                                 struct st_error *err) {
    switch (t) {
    case ST_F32:
        memcpy(dst, src, n * 4);
        return ST_OK;
    case ST_BF16: {
        const uint8_t *p = src;
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = st_bf16_to_f32(h);
        }
        return ST_OK;
    }
    case ST_F16: {
        const uint8_t *p = src;
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = st_f16_to_f32(h);
        }
        return ST_OK;
    }
    case ST_F64: {
        const uint8_t *p = src;
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        return ST_OK;
    }
    default:
        return st_errorf(err, ST_ERR_UNSUPPORTED, "cannot convert dtype %s to F32",
                         st_dtype_name(t));
    }
}
