/* image_internal.h: what the image module's files share (image.c decodes, image_resample.c
 * resizes the Pillow way, image_transform.c plans and applies transforms). Not public. */
#ifndef ST_DATA_IMAGE_INTERNAL_H
#define ST_DATA_IMAGE_INTERNAL_H

#include "streamtune/image.h"

/* Part of an image decoded at scale num/8: im holds the pixels [x0, x0 + im.w) x
 * [y0, y0 + im.h) of the scaled image, which is sw x sh (ceil(w * num / 8) for JPEG). */
struct img_part {
    struct st_image im;
    int x0, y0;
    int sw, sh;
    int num;
    int borrowed; /* im.px belongs to someone else (a view of a decoded image) */
};

/* st_image_work: one reusable buffer per use. img_work_take returns n bytes (grown as needed
 * and kept when w is non-NULL, else a fresh allocation); img_work_give releases a fresh one and
 * leaves a kept one. */
enum { IMG_WORK_DECODE, IMG_WORK_T1, IMG_WORK_H, IMG_WORK_TMP, IMG_WORK_ACC, IMG_WORK_SLOTS };
struct st_image_work {
    void *buf[IMG_WORK_SLOTS];
    size_t cap[IMG_WORK_SLOTS];
};
void *img_work_take(struct st_image_work *w, int slot, size_t n);
void img_work_give(struct st_image_work *w, void *p);

/* The JPEG DCT scale (num of num/8, 1..8) and the scaled size for an image of w x h. */
void img_jpeg_scaled_size(int w, int h, int num, int *sw, int *sh);

/* Decode a JPEG at scale num/8 (1..8), at least the scaled-image region [rx0, rx1) x
 * [ry0, ry1): part->x0 and im.w say which columns came (widened to libjpeg's iMCU columns, or
 * the whole width). Pixels inside the region equal a full decode at that scale; columns outside
 * it may not (crop edges). With work, part->im.px is the work's buffer (part->borrowed). Limits
 * are checked on the full image first. */
enum st_status img_jpeg_decode_part(const uint8_t *data, size_t len,
                                    const struct st_image_limits *lim, int num, int rx0, int ry0,
                                    int rx1, int ry1, struct st_image_work *work,
                                    struct img_part *part, struct st_error *err);

/* Probe + limit check (the message names the dimensions and the limit). */
enum st_status img_check_limits(const struct st_image_info *info, const struct st_image_limits *lim,
                                struct st_error *err);

/* Pillow resampling coefficients for one axis: output pixels [o0, o0 + n) of a resize of the
 * input range [b0, b1) (floats, in input pixels; Pillow's box) onto out_size pixels, reading only
 * input pixels [0, in_size). bounds[2i] is the first input pixel, bounds[2i+1] the count; k
 * holds ksize fixed-point (22-bit) weights per output pixel. */
struct img_coeffs {
    int n, ksize;
    int *bounds; /* (n, 2) */
    int32_t *k;  /* (n, ksize) */
};
enum st_status img_coeffs_init(struct img_coeffs *c, int in_size, float b0, float b1, int out_size,
                               int o0, int n, enum st_image_filter f, struct st_error *err);
void img_coeffs_free(struct img_coeffs *c);
/* Lowest input index read and one past the highest (over all outputs). */
void img_coeffs_span(const struct img_coeffs *c, int *lo, int *hi);
/* Add d to every first-input index (the input moved by d pixels in a buffer). */
void img_coeffs_shift(struct img_coeffs *c, int d);

/* Separable resample: src RGB rows of stride bytes, indexed by the coefficients' input pixels;
 * out (cy.n, cx.n, 3) allocated. Horizontal pass first into 8-bit rows, then vertical, as
 * Pillow. An identity axis (same size, whole box) has one weight of 1.0 per output: Pillow
 * skips that pass, and a copy is what it computes. */
enum st_status img_resample(const uint8_t *src, size_t stride, const struct img_coeffs *cx,
                            const struct img_coeffs *cy, struct st_image_work *work,
                            struct st_image *out, struct st_error *err);

#endif
