/* streamtune images: decode JPEG, PNG and WebP from memory into 8-bit RGB, and the transforms
 * vision encoders expect (resize, center / random-resized crop, flip, colour jitter, normalise)
 * into float32 or bf16 CHW tensors, with the conventions of Pillow + torchvision.
 *
 * DESIGN
 * - Limits come first. st_image_probe reads format and dimensions from the header alone (JPEG
 *   markers up to SOFn, PNG IHDR with its CRC, WebP RIFF chunks); decode refuses an image whose
 *   w*h exceeds st_image_limits.max_pixels before any pixel is decoded or buffer allocated. The
 *   default is Pillow's MAX_IMAGE_PIXELS (89,478,485; Pillow warns above it and refuses above
 *   twice it). Corrupt or truncated input is a status and a one-line message, never a crash:
 *   libjpeg and libpng errors longjmp back into the decoder, which frees what it made.
 * - Pixels are 8-bit RGB, HWC. Conversions follow Pillow's Image.convert("RGB"): alpha is
 *   dropped (not composited), palette and gray expand, 16-bit PNG keeps the high byte, CMYK
 *   JPEG uses Pillow's cmyk2rgb. (Pillow itself clips 16-bit *grayscale* PNGs to 255 when
 *   converting mode I to RGB; we keep the high byte there too.) Animated WebP is refused.
 * - Resize is Pillow's Image.resize, bit for bit: separable, horizontal pass first, the filter
 *   support scaled by the downscale factor (antialiasing), pixel centres at (x + 0.5) * scale,
 *   coefficients normalised then rounded to 22-bit fixed point, the intermediate rounded and
 *   clipped to 8 bits. BILINEAR is the triangle filter (support 1), BICUBIC Keys' cubic with
 *   a = -0.5 (support 2). torchvision's transforms on PIL images call exactly this.
 * - Crops follow torchvision: Resize(int) keeps the aspect with the long side int(s * long /
 *   short); CenterCrop puts the box at int(round((H - h) / 2.0)) (round half to even);
 *   RandomResizedCrop is get_params of torchvision 0.14 (10 tries, then the ratio-clamped
 *   central fallback), computed in double precision with our RNG; crop-then-resize clamps the
 *   filter to the crop, as PIL does on the cropped image. Colour jitter is PIL ImageEnhance
 *   (blend with black / the mean gray / the grayscale image) in a random order, as
 *   torchvision's ColorJitter; hue rotates PIL's 8-bit HSV hue.
 * - Every random choice comes from one 64-bit seed; st_image_seed(seed, epoch, key) derives it
 *   from the run seed, the epoch and the sample key, so a resumed run sees the same crops.
 * - JPEG decode at the size the transform needs: st_image_load plans the crop and resize from
 *   the header, decodes with libjpeg-turbo's DCT scaling at the smallest of 1/8, 1/4, 1/2 whose
 *   output is not smaller than the resize target (never below it; the other M/8 scales have no
 *   SIMD: 5/8-7/8 decode slower than 8/8, 3/8 than 1/2), and only the rows and columns the
 *   resize filter reads (jpeg_skip_scanlines / jpeg_crop_scanline). With jpeg_scale = 0, or
 *   when no scaling applies, the pixels equal a full decode's; with scaling, those of Pillow's
 *   Image.draft() at the same scale.
 * - Normalisation is torchvision's ToTensor + Normalize in float32: (v / 255 - mean) / std,
 *   each step rounded to float32 (the same bits); bf16 rounds that float to nearest even.
 */
#ifndef STREAMTUNE_IMAGE_H
#define STREAMTUNE_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "streamtune/core.h"

#ifdef __cplusplus
extern "C" {
#endif

enum st_image_format { ST_IMAGE_UNKNOWN = 0, ST_IMAGE_JPEG, ST_IMAGE_PNG, ST_IMAGE_WEBP };

/* What the header says. channels as stored (1 gray, 2 gray+alpha, 3 RGB/YCbCr/palette,
 * 4 RGBA/CMYK/palette with transparency); bit_depth per sample (PNG 1..16, JPEG 8 or 12). */
struct st_image_info {
    enum st_image_format format;
    int w, h;
    int channels;
    int bit_depth;
};

/* Pillow's Image.MAX_IMAGE_PIXELS, int(1024 * 1024 * 1024 // 4 // 3). */
#define ST_IMAGE_MAX_PIXELS_DEFAULT 89478485ULL

/* Caps checked against the header before decoding. A NULL limits pointer or max_pixels == 0
 * means the default. */
struct st_image_limits {
    uint64_t max_pixels;
};

/* An 8-bit image: px (h, w, c) row-major, c == 3 (RGB) for everything this module returns.
 * px is owned (st_malloc); st_image_free releases it. */
struct st_image {
    int w, h, c;
    uint8_t *px;
};

/* Format and dimensions from the header only (no pixel decoding, no allocation). Returns
 * ST_ERR_FORMAT for empty, unrecognised or malformed headers, ST_ERR_UNSUPPORTED for
 * well-formed images this module cannot decode (animated WebP, DNL-height JPEG). */
enum st_status st_image_probe(const uint8_t *data, size_t len, struct st_image_info *info,
                              struct st_error *err);

/* Decode a whole JPEG/PNG/WebP into RGB (see DESIGN for conversions). Refuses w*h above the
 * limit with ST_ERR_NOMEM before decoding; corrupt or truncated data gives ST_ERR_FORMAT. On
 * failure *out is zeroed. The message starts with the format ("JPEG: ...", "PNG: ..."). */
enum st_status st_image_decode(const uint8_t *data, size_t len, const struct st_image_limits *lim,
                               struct st_image *out, struct st_error *err);

void st_image_free(struct st_image *im);

enum st_image_filter { ST_IMAGE_BILINEAR = 0, ST_IMAGE_BICUBIC = 1 };

/* PIL.Image.resize((w, h), BILINEAR | BICUBIC) of an RGB image, bit-exact. *out is allocated. */
enum st_status st_image_resize(const struct st_image *in, int w, int h, enum st_image_filter f,
                               struct st_image *out, struct st_error *err);

/* Mirror left-right in place (torchvision hflip). */
void st_image_flip(struct st_image *im);

/* PIL ImageEnhance Brightness, Contrast, Color (saturation) with these factors (1 = unchanged),
 * in that order, then hue shifted by hue (-0.5..0.5; 0 = unchanged) as torchvision's adjust_hue
 * on PIL images. In place. Returns ST_ERR_ARG for factors out of range. */
enum st_status st_image_adjust(struct st_image *im, float brightness, float contrast,
                               float saturation, float hue, struct st_error *err);

enum st_image_crop {
    ST_IMAGE_CROP_CENTER = 0, /* resize shortest side to resize_size, center crop size x size */
    ST_IMAGE_CROP_NONE,       /* resize to size x size, aspect not kept */
    ST_IMAGE_CROP_RANDOM,     /* RandomResizedCrop(size, scale, ratio) */
};

/* One sample's transform. Random parts (crop RANDOM, flip_p > 0, jitter ranges > 0) draw from
 * the seed passed to st_image_apply / st_image_load, in this order: crop, flip, jitter. */
struct st_image_transform {
    int size;        /* output is size x size */
    int resize_size; /* CROP_CENTER: shortest side before the crop (0 = size) */
    enum st_image_crop crop;
    enum st_image_filter filter;
    float scale[2];                         /* CROP_RANDOM: fraction of the area, e.g. (0.08, 1) */
    float ratio[2];                         /* CROP_RANDOM: aspect w/h range, e.g. (3/4, 4/3) */
    float flip_p;                           /* probability of a horizontal flip */
    float brightness, contrast, saturation; /* ColorJitter: factor in [max(0, 1-b), 1+b]; 0 off */
    float hue;             /* ColorJitter: shift in [-hue, hue], hue <= 0.5; 0 off */
    float mean[3], std[3]; /* normalisation, per RGB channel */
    int jpeg_scale;        /* 1: JPEG may decode with DCT scaling (st_image_load) */
};

enum st_image_preset {
    ST_IMAGE_PRESET_CLIP = 0,   /* 224, shortest side bicubic, center crop, CLIP mean/std */
    ST_IMAGE_PRESET_SIGLIP_224, /* 224x224 bilinear, no crop, mean/std 0.5 */
    ST_IMAGE_PRESET_SIGLIP_384, /* 384x384 bilinear, no crop, mean/std 0.5 */
};

/* Fill *t with a preset (no augmentation; jpeg_scale on). Callers then turn on what they want,
 * e.g. t.crop = ST_IMAGE_CROP_RANDOM, t.flip_p = 0.5. Returns ST_ERR_ARG for an unknown preset. */
enum st_status st_image_transform_preset(struct st_image_transform *t, enum st_image_preset p);

/* Seed of one sample's random transform: a hash of (run seed, epoch, sample key), stable
 * across runs and platforms. key is NUL-terminated (the WebDataset key, e.g. "000123"). */
uint64_t st_image_seed(uint64_t seed, uint64_t epoch, const char *key);

/* torchvision RandomResizedCrop.get_params for a w x h image: box = {x, y, bw, bh}. Draws from
 * rng (2 uniforms per try, then 2 for the position). Exposed for tests and previews. */
void st_image_random_crop(int w, int h, const float scale[2], const float ratio[2],
                          struct st_rng *rng, int box[4]);

/* Scratch buffers (decoded region, resize intermediates) that one thread reuses across
 * st_image_apply / st_image_load calls, so a loader thread does not pay the allocator and fresh
 * page faults per image (~20% of the time at 224 x 224). Optional: NULL allocates per call.
 * Never shared between threads at the same time. */
struct st_image_work;
enum st_status st_image_work_init(struct st_image_work **w, struct st_error *err);
void st_image_work_free(struct st_image_work *w);

/* Geometric and colour transform of a decoded image: *out is size x size RGB (allocated).
 * work may be NULL. Returns ST_ERR_ARG for a bad transform (size < 1, resize_size < size,
 * empty ranges). */
enum st_status st_image_apply(const struct st_image *in, const struct st_image_transform *t,
                              uint64_t seed, struct st_image_work *work, struct st_image *out,
                              struct st_error *err);

/* Decode + transform in one step, decoding JPEG at the scale and region the transform needs
 * (see DESIGN). Limits as st_image_decode (checked on the full image). work may be NULL. */
enum st_status st_image_load(const uint8_t *data, size_t len, const struct st_image_limits *lim,
                             const struct st_image_transform *t, uint64_t seed,
                             struct st_image_work *work, struct st_image *out,
                             struct st_error *err);

/* Normalise an RGB image into CHW: out (3, h, w). */
void st_image_to_f32(const struct st_image *im, const float mean[3], const float std[3],
                     float *out);
void st_image_to_bf16(const struct st_image *im, const float mean[3], const float std[3],
                      uint16_t *out);

const char *st_image_format_name(enum st_image_format f); /* "JPEG", "PNG", "WebP", "unknown" */

#ifdef __cplusplus
}
#endif
#endif
