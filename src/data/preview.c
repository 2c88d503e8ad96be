/* preview.c: pictures of decoded fields for `streamtune data preview`: an image tensor turned
 * back into pixels (de-normalised) and a log-mel drawn as a spectrogram, plus a small PNG writer.
 *
 * DESIGN: tiles are square; an image keeps its aspect (bilinear sampling of the tensor, centred
 * on black); a log-mel is averaged over the frames that fall on each column and coloured with a
 * viridis-like map between its minimum and maximum, low frequencies at the bottom; only the
 * frames that hold the clip are drawn (a 3 s clip is 90% padding of the 30 s window). */
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include "streamtune/decode.h"

static float tensor_at(const struct st_decoded_field *f, size_t i) {
    if (f->dtype == ST_BF16) return st_bf16_to_f32(((const uint16_t *)f->data)[i]);
    return ((const float *)f->data)[i];
}

static uint8_t clamp8(float v) {
    if (!(v > 0)) return 0;
    if (v > 255) return 255;
    return (uint8_t)(v + 0.5f);
}

/* viridis at t in [0, 1], 9 control points, linear in between */
static void viridis(float t, uint8_t rgb[3]) {
    static const uint8_t cp[9][3] = {{68, 1, 84},    {71, 44, 122},  {59, 81, 139},
                                     {44, 113, 142}, {33, 144, 141}, {39, 173, 129},
                                     {92, 200, 99},  {170, 220, 50}, {253, 231, 37}};
    if (!(t > 0)) t = 0;
    if (t > 1) t = 1;
    float x = t * 8;
    int i = (int)x;
    if (i > 7) i = 7;
    float a = x - (float)i;
    for (int c = 0; c < 3; c++)
        rgb[c] = clamp8((1 - a) * cp[i][c] + a * cp[i + 1][c]);
}

enum st_status st_decode_render(const struct st_decoded_field *f, const struct st_decode_options *o,
                                uint8_t *rgb, int tile, struct st_error *err) {
    if (tile < 1) return st_errorf(err, ST_ERR_ARG, "tile size must be positive");
    memset(rgb, 0, (size_t)tile * (size_t)tile * 3);
    if (f->kind == ST_FIELD_IMAGE && f->ndim == 3 && f->data) {
        struct st_image_transform t;
        int native;
        enum st_status rc = st_decode_image_transform(o, &t, &native, err);
        if (rc) return rc;
        int64_t H = f->shape[1], W = f->shape[2];
        double s = (double)tile / (double)(W > H ? W : H);
        int ow = (int)(W * s + 0.5), oh = (int)(H * s + 0.5);
        if (ow < 1) ow = 1;
        if (oh < 1) oh = 1;
        int x0 = (tile - ow) / 2, y0 = (tile - oh) / 2;
        for (int y = 0; y < oh; y++) {
            double sy = ((double)y + 0.5) / s - 0.5;
            if (sy < 0) sy = 0;
            if (sy > (double)(H - 1)) sy = (double)(H - 1);
            int64_t ya = (int64_t)sy, yb = ya + 1 < H ? ya + 1 : ya;
            float fy = (float)(sy - (double)ya);
            for (int x = 0; x < ow; x++) {
                double sx = ((double)x + 0.5) / s - 0.5;
                if (sx < 0) sx = 0;
                if (sx > (double)(W - 1)) sx = (double)(W - 1);
                int64_t xa = (int64_t)sx, xb = xa + 1 < W ? xa + 1 : xa;
                float fx = (float)(sx - (double)xa);
                uint8_t *px = rgb + ((size_t)(y0 + y) * (size_t)tile + (size_t)(x0 + x)) * 3;
                for (int c = 0; c < 3; c++) {
                    size_t base = (size_t)c * (size_t)(H * W);
                    float v = (1 - fy) * ((1 - fx) * tensor_at(f, base + (size_t)(ya * W + xa)) +
                                          fx * tensor_at(f, base + (size_t)(ya * W + xb))) +
                              fy * ((1 - fx) * tensor_at(f, base + (size_t)(yb * W + xa)) +
                                    fx * tensor_at(f, base + (size_t)(yb * W + xb)));
                    px[c] = clamp8((v * t.std[c] + t.mean[c]) * 255.0f);
                }
            }
        }
        return ST_OK;
    }
    if (f->kind == ST_FIELD_AUDIO && f->ndim == 2 && f->data) {
        int64_t M = f->shape[0], T = f->shape[1];
        size_t n = (size_t)(M * T);
        /* draw the frames that hold the clip (a short clip is mostly padding otherwise) */
        int64_t used = (int64_t)ceil(f->src_seconds * ST_AUDIO_RATE / ST_AUDIO_HOP);
        if (used >= 1 && used < T) T = used;
        float lo = tensor_at(f, 0), hi = lo;
        for (size_t i = 1; i < n; i++) {
            float v = tensor_at(f, i);
            if (v < lo) lo = v;
            if (v > hi) hi = v;
        }
        float span = hi > lo ? hi - lo : 1;
        for (int x = 0; x < tile; x++) {
            int64_t t0 = (int64_t)x * T / tile, t1 = (int64_t)(x + 1) * T / tile;
            if (t1 <= t0) t1 = t0 + 1;
            for (int y = 0; y < tile; y++) {
                int64_t m = (int64_t)(tile - 1 - y) * M / tile;
                float acc = 0;
                for (int64_t k = t0; k < t1; k++)
                    acc += tensor_at(f, (size_t)(m * f->shape[1] + k));
                viridis((acc / (float)(t1 - t0) - lo) / span,
                        rgb + ((size_t)y * (size_t)tile + (size_t)x) * 3);
            }
        }
        return ST_OK;
    }
    return st_errorf(err, ST_ERR_ARG, "field '%s' is not a decoded image or audio field", f->name);
}

struct png_ctx {
    char msg[200];
};

static void png_err(png_structp p, png_const_charp m) {
    struct png_ctx *c = png_get_error_ptr(p);
    snprintf(c->msg, sizeof c->msg, "%s", m);
    png_longjmp(p, 1);
}

static void png_warn(png_structp p, png_const_charp m) {
    (void)p;
    (void)m;
}

enum st_status st_png_write(const char *path, const uint8_t *rgb, int w, int h,
                            struct st_error *err) {
    if (w < 1 || h < 1 || w > 1 << 20 || h > 1 << 20)
        return st_errorf(err, ST_ERR_ARG, "%s: bad PNG size %dx%d", path, w, h);
    FILE *fp = fopen(path, "wb");
    if (!fp) return st_errorf(err, ST_ERR_IO, "%s: cannot create the file", path);
    struct png_ctx ctx = {""};
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, &ctx, png_err, png_warn);
    png_infop info = p ? png_create_info_struct(p) : NULL;
    if (!p || !info) {
        png_destroy_write_struct(&p, &info);
        fclose(fp);
        return st_errorf(err, ST_ERR_NOMEM, "%s: out of memory", path);
    }
    if (setjmp(png_jmpbuf(p))) {
        png_destroy_write_struct(&p, &info);
        fclose(fp);
        return st_errorf(err, ST_ERR_IO, "%s: writing the PNG failed: %s", path, ctx.msg);
    }
    png_init_io(p, fp);
    png_set_IHDR(p, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(p, info);
    for (int y = 0; y < h; y++)
        png_write_row(p, (png_const_bytep)(rgb + (size_t)y * (size_t)w * 3));
    png_write_end(p, NULL);
    png_destroy_write_struct(&p, &info);
    if (fclose(fp) != 0) return st_errorf(err, ST_ERR_IO, "%s: cannot write the file", path);
    return ST_OK;
}
