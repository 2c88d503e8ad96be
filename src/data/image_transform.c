/* image_transform.c: presets, per-sample seeds, the crop/resize plan, colour jitter, flip and
 * normalisation; st_image_load ties decode and transform together.
 *
 * DESIGN
 * - A transform is planned from the image's size alone: a source box (in the original image's
 *   pixels) mapped onto a virtual output of ow x oh pixels, of which a window of size x size is
 *   produced, with the filter reading only a clamp region. CROP_CENTER: box = clamp = the whole
 *   image, ow x oh = the shortest-side resize, window = the centre crop. CROP_NONE: the whole
 *   image onto size x size. CROP_RANDOM: box = clamp = the random crop onto size x size (PIL
 *   resizes the cropped image, so the filter never reads outside it).
 * - Because the plan needs only the size, st_image_load plans from the header, picks the JPEG
 *   DCT scale num/8 = the smallest of 1/8, 1/4, 1/2, 1 with box_w * num / 8 >= ow and
 *   box_h * num / 8 >= oh (the scales with SIMD in libjpeg-turbo), maps the
 *   plan into the scaled image (box edges on the image border go to the scaled border, as
 *   Pillow's draft() + resize does; inner edges scale by num/8), computes the resize
 *   coefficients, and asks the decoder for just the rows and columns they read.
 * - Random draws, all from one xoshiro256** seeded with the sample seed: random crop (as
 *   torchvision's get_params: per try a uniform area fraction and a log-uniform aspect ratio,
 *   then row and column), flip (one uniform, if flip_p > 0), jitter (if any range > 0: an order
 *   of the four operations, then the factors for brightness, contrast, saturation, hue, each
 *   only when enabled). torchvision draws in the same order with torch's generator; the values
 *   differ, the distributions are the same.
 * - Normalisation uses a 3 x 256 table of ((float)v / 255 - mean) / std (float32 steps, as
 *   ToTensor + Normalize compute them), so the output is a table lookup per byte. */
#include <math.h>
#include <string.h>

#include "data/image_internal.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#endif

/* ---- presets and seeds ---- */

enum st_status st_image_transform_preset(struct st_image_transform *t, enum st_image_preset p) {
    memset(t, 0, sizeof *t);
    t->scale[0] = 0.08f;
    t->scale[1] = 1.0f;
    t->ratio[0] = 3.0f / 4.0f;
    t->ratio[1] = 4.0f / 3.0f;
    t->jpeg_scale = 1;
    switch (p) {
    case ST_IMAGE_PRESET_CLIP: {
        static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
        static const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
        t->size = t->resize_size = 224;
        t->crop = ST_IMAGE_CROP_CENTER;
        t->filter = ST_IMAGE_BICUBIC;
        memcpy(t->mean, mean, sizeof mean);
        memcpy(t->std, std, sizeof std);
        return ST_OK;
    }
    case ST_IMAGE_PRESET_SIGLIP_224:
    case ST_IMAGE_PRESET_SIGLIP_384:
        t->size = t->resize_size = p == ST_IMAGE_PRESET_SIGLIP_224 ? 224 : 384;
        t->crop = ST_IMAGE_CROP_NONE;
        t->filter = ST_IMAGE_BILINEAR;
        for (int c = 0; c < 3; c++)
            t->mean[c] = t->std[c] = 0.5f;
        return ST_OK;
    }
    return ST_ERR_ARG;
}

static uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t st_image_seed(uint64_t seed, uint64_t epoch, const char *key) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a of the key */
    for (const unsigned char *p = (const unsigned char *)(key ? key : ""); *p; p++) {
        h ^= *p;
        h *= 0x100000001b3ULL;
    }
    return mix64(mix64(mix64(seed) ^ epoch) ^ h);
}

/* ---- random resized crop (torchvision 0.14 RandomResizedCrop.get_params) ---- */

void st_image_random_crop(int w, int h, const float scale[2], const float ratio[2],
                          struct st_rng *rng, int box[4]) {
    double area = (double)w * (double)h;
    double s0 = scale[0], s1 = scale[1], r0 = ratio[0], r1 = ratio[1];
    double lr0 = log(r0), lr1 = log(r1);
    for (int t = 0; t < 10; t++) {
        double target = area * (s0 + (s1 - s0) * st_rng_uniform(rng));
        double ar = exp(lr0 + (lr1 - lr0) * st_rng_uniform(rng));
        double cwf = nearbyint(sqrt(target * ar)), chf = nearbyint(sqrt(target / ar));
        if (cwf > 0 && cwf <= w && chf > 0 && chf <= h) {
            int cw = (int)cwf, ch = (int)chf;
            int y = (int)(st_rng_u64(rng) % (uint64_t)(h - ch + 1));
            int x = (int)(st_rng_u64(rng) % (uint64_t)(w - cw + 1));
            box[0] = x, box[1] = y, box[2] = cw, box[3] = ch;
            return;
        }
    }
    /* fallback: the whole image, clamped to the ratio range, centred */
    double in_ratio = (double)w / (double)h;
    double rmin = r0 < r1 ? r0 : r1, rmax = r0 < r1 ? r1 : r0;
    int cw = w, ch = h;
    if (in_ratio < rmin)
        ch = (int)nearbyint(cw / rmin);
    else if (in_ratio > rmax)
        cw = (int)nearbyint(ch * rmax);
    if (cw < 1) cw = 1;
    if (ch < 1) ch = 1;
    if (cw > w) cw = w;
    if (ch > h) ch = h;
    box[0] = (w - cw) / 2, box[1] = (h - ch) / 2, box[2] = cw, box[3] = ch;
}

/* ---- plan ---- */

struct img_plan {
    int bx0, by0, bx1, by1; /* source box, original pixels (integers in every mode) */
    int ow, oh;             /* virtual output the box maps onto */
    int wx, wy, n;          /* window [wx, wx + n) x [wy, wy + n) of it */
    int clamp_is_box;       /* CROP_RANDOM: the filter reads only the box, else the image */
    int flip;
    int n_ops, ops[4]; /* jitter operations in order: 0 brightness 1 contrast 2 sat 3 hue */
    float factor[4];
};

static enum st_status check_transform(const struct st_image_transform *t, struct st_error *err) {
    if (!t) return st_errorf(err, ST_ERR_ARG, "image transform: NULL");
    if (t->size < 1 || t->size > 16384)
        return st_errorf(err, ST_ERR_ARG, "image transform: size %d (1..16384)", t->size);
    if (t->crop == ST_IMAGE_CROP_CENTER && t->resize_size && t->resize_size < t->size)
        return st_errorf(
            err, ST_ERR_ARG,
            "image transform: resize_size %d < size %d (the centre crop would need padding)",
            t->resize_size, t->size);
    if (t->crop == ST_IMAGE_CROP_CENTER && t->resize_size > 65535)
        return st_errorf(err, ST_ERR_ARG, "image transform: resize_size %d", t->resize_size);
    if (t->crop != ST_IMAGE_CROP_CENTER && t->crop != ST_IMAGE_CROP_NONE &&
        t->crop != ST_IMAGE_CROP_RANDOM)
        return st_errorf(err, ST_ERR_ARG, "image transform: unknown crop mode %d", (int)t->crop);
    if (t->filter != ST_IMAGE_BILINEAR && t->filter != ST_IMAGE_BICUBIC)
        return st_errorf(err, ST_ERR_ARG, "image transform: unknown filter %d", (int)t->filter);
    if (t->crop == ST_IMAGE_CROP_RANDOM &&
        !(t->scale[0] > 0 && t->scale[0] <= t->scale[1] && t->scale[1] <= 1 && t->ratio[0] > 0 &&
          t->ratio[0] <= t->ratio[1] && t->ratio[1] < 1e6))
        return st_errorf(err, ST_ERR_ARG,
                         "image transform: random crop scale (%g, %g) / ratio (%g, %g): need 0 < "
                         "s0 <= s1 <= 1 and 0 < r0 <= r1",
                         (double)t->scale[0], (double)t->scale[1], (double)t->ratio[0],
                         (double)t->ratio[1]);
    if (!(t->flip_p >= 0 && t->flip_p <= 1))
        return st_errorf(err, ST_ERR_ARG, "image transform: flip_p %g", (double)t->flip_p);
    if (!(t->brightness >= 0 && t->contrast >= 0 && t->saturation >= 0 && t->brightness < 1e3 &&
          t->contrast < 1e3 && t->saturation < 1e3 && t->hue >= 0 && t->hue <= 0.5f))
        return st_errorf(err, ST_ERR_ARG,
                         "image transform: jitter (%g, %g, %g, hue %g): need >= 0 and hue <= 0.5",
                         (double)t->brightness, (double)t->contrast, (double)t->saturation,
                         (double)t->hue);
    for (int c = 0; c < 3; c++)
        if (!(t->std[c] != 0) || t->mean[c] != t->mean[c])
            return st_errorf(err, ST_ERR_ARG, "image transform: std[%d] = %g", c,
                             (double)t->std[c]);
    return ST_OK;
}

static enum st_status plan_make(int w, int h, const struct st_image_transform *t, uint64_t seed,
                                struct img_plan *p, struct st_error *err) {
    memset(p, 0, sizeof *p);
    struct st_rng rng;
    st_rng_seed(&rng, seed);
    p->n = t->size;
    p->bx1 = w, p->by1 = h;
    if (t->crop == ST_IMAGE_CROP_CENTER) {
        /* torchvision Resize(int): short side -> s, long side -> int(s * long / short) */
        int s = t->resize_size ? t->resize_size : t->size;
        int64_t shrt = w <= h ? w : h, lng = w <= h ? h : w;
        double nld = (double)((int64_t)s * lng) / (double)shrt;
        if (nld > 1 << 24)
            return st_errorf(
                err, ST_ERR_ARG,
                "image transform: a %dx%d image resized to short side %d would be %.0f pixels long",
                w, h, s, nld);
        int nl = (int)nld;
        p->ow = w <= h ? s : nl;
        p->oh = w <= h ? nl : s;
        /* CenterCrop: int(round((H - h) / 2.0)), Python rounds half to even */
        p->wx = (int)nearbyint((p->ow - t->size) / 2.0);
        p->wy = (int)nearbyint((p->oh - t->size) / 2.0);
    } else if (t->crop == ST_IMAGE_CROP_NONE) {
        p->ow = p->oh = t->size;
    } else {
        int box[4];
        st_image_random_crop(w, h, t->scale, t->ratio, &rng, box);
        p->bx0 = box[0], p->by0 = box[1], p->bx1 = box[0] + box[2], p->by1 = box[1] + box[3];
        p->ow = p->oh = t->size;
        p->clamp_is_box = 1;
    }
    if (t->flip_p > 0) p->flip = st_rng_uniform(&rng) < t->flip_p;
    float range[4] = {t->brightness, t->contrast, t->saturation, t->hue};
    if (range[0] > 0 || range[1] > 0 || range[2] > 0 || range[3] > 0) {
        int order[4] = {0, 1, 2, 3};
        for (int i = 3; i > 0; i--) {
            int j = (int)(st_rng_u64(&rng) % (uint64_t)(i + 1));
            int tmp = order[i];
            order[i] = order[j];
            order[j] = tmp;
        }
        float factor[4] = {1, 1, 1, 0};
        for (int k = 0; k < 4; k++) {
            if (!(range[k] > 0)) continue;
            double lo = k == 3 ? -range[k] : (range[k] < 1 ? 1.0 - range[k] : 0.0);
            double hi = k == 3 ? range[k] : 1.0 + range[k];
            factor[k] = (float)(lo + (hi - lo) * st_rng_uniform(&rng));
        }
        for (int i = 0; i < 4; i++) {
            if (!(range[order[i]] > 0)) continue;
            p->ops[p->n_ops] = order[i];
            p->factor[p->n_ops++] = factor[order[i]];
        }
    }
    return ST_OK;
}

/* ---- colour ---- */

static inline uint8_t blend(int deg, int v, float f) {
    float t = (float)deg + f * (float)(v - deg); /* PIL ImagingBlend */
    if (t <= 0.0f) return 0;
    if (t >= 255.0f) return 255;
    return (uint8_t)t;
}

static inline int luma(const uint8_t *p) { /* PIL's rgb2l (ITU-R 601-2, 16-bit fixed point) */
    return (p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16;
}

static void rgb_to_hsv(const uint8_t *in, uint8_t *out) { /* PIL's rgb2hsv_row */
    uint8_t r = in[0], g = in[1], b = in[2];
    uint8_t maxc = r > g ? (r > b ? r : b) : (g > b ? g : b);
    uint8_t minc = r < g ? (r < b ? r : b) : (g < b ? g : b);
    uint8_t uh = 0, us = 0;
    if (minc != maxc) {
        float h, cr = (float)(maxc - minc), s = cr / (float)maxc;
        float rc = (float)(maxc - r) / cr, gc = (float)(maxc - g) / cr, bc = (float)(maxc - b) / cr;
        if (r == maxc)
            h = bc - gc;
        else if (g == maxc)
            h = (float)(2.0 + rc - bc);
        else
            h = (float)(4.0 + gc - rc);
        h = (float)fmod(h / 6.0 + 1.0, 1.0);
        int ih = (int)(h * 255.0), is = (int)(s * 255.0);
        uh = (uint8_t)(ih < 0 ? 0 : ih > 255 ? 255 : ih);
        us = (uint8_t)(is < 0 ? 0 : is > 255 ? 255 : is);
    }
    out[0] = uh, out[1] = us, out[2] = maxc;
}

static void hsv_to_rgb(const uint8_t *in, uint8_t *out) { /* PIL's hsv2rgb */
    uint8_t h = in[0], s = in[1], v = in[2];
    if (s == 0) {
        out[0] = out[1] = out[2] = v;
        return;
    }
    int i = (int)floor((float)h * 6.0 / 255.0);
    float f = (float)((float)h * 6.0 / 255.0 - (float)i);
    float fs = (float)((float)s / 255.0);
    int pi = (int)round((float)v * (1.0 - fs));
    int qi = (int)round((float)v * (1.0 - fs * f));
    int ti = (int)round((float)v * (1.0 - fs * (1.0 - f)));
    uint8_t p = (uint8_t)(pi < 0 ? 0 : pi > 255 ? 255 : pi);
    uint8_t q = (uint8_t)(qi < 0 ? 0 : qi > 255 ? 255 : qi);
    uint8_t t = (uint8_t)(ti < 0 ? 0 : ti > 255 ? 255 : ti);
    switch (i % 6) {
    case 0: out[0] = v, out[1] = t, out[2] = p; break;
    case 1: out[0] = q, out[1] = v, out[2] = p; break;
    case 2: out[0] = p, out[1] = v, out[2] = t; break;
    case 3: out[0] = p, out[1] = q, out[2] = v; break;
    case 4: out[0] = t, out[1] = p, out[2] = v; break;
    default: out[0] = v, out[1] = p, out[2] = q; break;
    }
}

static void adjust_one(struct st_image *im, int op, float f) {
    size_t n = (size_t)im->w * (size_t)im->h;
    uint8_t *px = im->px;
    if (op == 0) { /* Brightness: blend with black */
        for (size_t i = 0; i < 3 * n; i++)
            px[i] = blend(0, px[i], f);
    } else if (op == 1) { /* Contrast: blend with the mean luma, int(mean + 0.5) */
        uint64_t sum = 0;
        for (size_t i = 0; i < n; i++)
            sum += (uint64_t)luma(px + 3 * i);
        int mean = (int)((double)sum / (double)(n ? n : 1) + 0.5);
        for (size_t i = 0; i < 3 * n; i++)
            px[i] = blend(mean, px[i], f);
    } else if (op == 2) { /* Color: blend with the grayscale image */
        for (size_t i = 0; i < n; i++) {
            int l = luma(px + 3 * i);
            for (int c = 0; c < 3; c++)
                px[3 * i + c] = blend(l, px[3 * i + c], f);
        }
    } else { /* hue: rotate PIL's 8-bit HSV hue by int(f * 255) */
        int shift = (int)((double)f * 255.0);
        uint8_t hsv[3];
        for (size_t i = 0; i < n; i++) {
            rgb_to_hsv(px + 3 * i, hsv);
            hsv[0] = (uint8_t)((hsv[0] + shift) & 255);
            hsv_to_rgb(hsv, px + 3 * i);
        }
    }
}

enum st_status st_image_adjust(struct st_image *im, float brightness, float contrast,
                               float saturation, float hue, struct st_error *err) {
    if (!(brightness >= 0 && contrast >= 0 && saturation >= 0 && hue >= -0.5f && hue <= 0.5f))
        return st_errorf(err, ST_ERR_ARG,
                         "image adjust: factors (%g, %g, %g, hue %g): need >= 0 and |hue| <= 0.5",
                         (double)brightness, (double)contrast, (double)saturation, (double)hue);
    if (brightness != 1.0f) adjust_one(im, 0, brightness);
    if (contrast != 1.0f) adjust_one(im, 1, contrast);
    if (saturation != 1.0f) adjust_one(im, 2, saturation);
    if (hue != 0.0f) adjust_one(im, 3, hue);
    return ST_OK;
}

void st_image_flip(struct st_image *im) {
    for (int y = 0; y < im->h; y++) {
        uint8_t *row = im->px + (size_t)y * (size_t)im->w * 3;
        for (int a = 0, b = im->w - 1; a < b; a++, b--) {
            uint8_t t[3];
            memcpy(t, row + 3 * a, 3);
            memcpy(row + 3 * a, row + 3 * b, 3);
            memcpy(row + 3 * b, t, 3);
        }
    }
}

/* ---- running a plan ---- */

/* Run plan p on an image that comes at scale num/8 (scaled size sw x sh). decode() is given the
 * scaled-image region the filter reads and returns the part it decoded. */
typedef enum st_status (*img_decode_fn)(void *ctx, int num, int rx0, int ry0, int rx1, int ry1,
                                        struct st_image_work *work, struct img_part *part,
                                        struct st_error *err);

static int scale_lo(int v, int num) {
    return (int)(((int64_t)v * num) / 8);
}
static int scale_hi(int v, int num) {
    return (int)(((int64_t)v * num + 7) / 8);
}

static enum st_status plan_run(const struct img_plan *p, const struct st_image_transform *t, int w,
                               int h, int num, img_decode_fn decode, void *ctx,
                               struct st_image_work *work, struct st_image *out,
                               struct st_error *err) {
    int sw, sh;
    img_jpeg_scaled_size(w, h, num, &sw, &sh);
    /* clamp region and box in scaled pixels; edges on the border map to the scaled border */
    int cx0 = 0, cy0 = 0, cx1 = sw, cy1 = sh;
    if (p->clamp_is_box) {
        cx0 = scale_lo(p->bx0, num), cy0 = scale_lo(p->by0, num);
        cx1 = p->bx1 == w ? sw : scale_hi(p->bx1, num);
        cy1 = p->by1 == h ? sh : scale_hi(p->by1, num);
    }
    float f = (float)num / 8.0f;
    float b0x = (p->bx0 == 0 ? 0.0f : (float)p->bx0 * f) - (float)cx0;
    float b1x = (p->bx1 == w ? (float)sw : (float)p->bx1 * f) - (float)cx0;
    float b0y = (p->by0 == 0 ? 0.0f : (float)p->by0 * f) - (float)cy0;
    float b1y = (p->by1 == h ? (float)sh : (float)p->by1 * f) - (float)cy0;
    struct img_coeffs kx, ky;
    enum st_status rc =
        img_coeffs_init(&kx, cx1 - cx0, b0x, b1x, p->ow, p->wx, p->n, t->filter, err);
    if (rc) return rc;
    if ((rc = img_coeffs_init(&ky, cy1 - cy0, b0y, b1y, p->oh, p->wy, p->n, t->filter, err))) {
        img_coeffs_free(&kx);
        return rc;
    }
    int xlo, xhi, ylo, yhi;
    img_coeffs_span(&kx, &xlo, &xhi);
    img_coeffs_span(&ky, &ylo, &yhi);
    struct img_part part;
    rc = decode(ctx, num, cx0 + xlo, cy0 + ylo, cx0 + xhi, cy0 + yhi, work, &part, err);
    if (!rc && (part.x0 > cx0 + xlo || part.y0 > cy0 + ylo || part.x0 + part.im.w < cx0 + xhi ||
                part.y0 + part.im.h < cy0 + yhi)) {
        if (!part.borrowed) st_image_free(&part.im);
        rc = st_errorf(err, ST_ERR_FORMAT,
                       "image: decoder returned region %d,%d+%dx%d, not the %d,%d..%d,%d asked for",
                       part.x0, part.y0, part.im.w, part.im.h, cx0 + xlo, cy0 + ylo, cx0 + xhi,
                       cy0 + yhi);
    }
    if (rc) {
        img_coeffs_free(&kx);
        img_coeffs_free(&ky);
        return rc;
    }
    img_coeffs_shift(&kx, cx0 - part.x0);
    img_coeffs_shift(&ky, cy0 - part.y0);
    rc = img_resample(part.im.px, (size_t)part.im.w * 3, &kx, &ky, work, out, err);
    img_coeffs_free(&kx);
    img_coeffs_free(&ky);
    if (!part.borrowed) st_image_free(&part.im);
    if (rc) return rc;
    if (p->flip) st_image_flip(out);
    for (int i = 0; i < p->n_ops; i++)
        adjust_one(out, p->ops[i], p->factor[i]);
    return ST_OK;
}

/* "decoder" for an already-decoded image: a borrowed view of the whole of it */
static enum st_status view_decode(void *ctx, int num, int rx0, int ry0, int rx1, int ry1,
                                  struct st_image_work *work, struct img_part *part,
                                  struct st_error *err) {
    const struct st_image *in = ctx;
    (void)num, (void)rx0, (void)ry0, (void)rx1, (void)ry1, (void)work, (void)err;
    memset(part, 0, sizeof *part);
    part->im = *in;
    part->sw = in->w, part->sh = in->h, part->num = 8;
    part->borrowed = 1;
    return ST_OK;
}

enum st_status st_image_apply(const struct st_image *in, const struct st_image_transform *t,
                              uint64_t seed, struct st_image_work *work, struct st_image *out,
                              struct st_error *err) {
    memset(out, 0, sizeof *out);
    enum st_status rc = check_transform(t, err);
    if (rc) return rc;
    if (!in || !in->px || in->c != 3 || in->w < 1 || in->h < 1)
        return st_errorf(err, ST_ERR_ARG, "image apply: need an RGB image");
    struct img_plan p;
    if ((rc = plan_make(in->w, in->h, t, seed, &p, err))) return rc;
    return plan_run(&p, t, in->w, in->h, 8, view_decode, (void *)in, work, out, err);
}

enum st_status st_image_resize(const struct st_image *in, int w, int h, enum st_image_filter f,
                               struct st_image *out, struct st_error *err) {
    memset(out, 0, sizeof *out);
    if (!in || !in->px || in->c != 3 || in->w < 1 || in->h < 1 || w < 1 || h < 1 ||
        (f != ST_IMAGE_BILINEAR && f != ST_IMAGE_BICUBIC))
        return st_errorf(err, ST_ERR_ARG, "image resize: bad arguments (%dx%d -> %dx%d)",
                         in ? in->w : 0, in ? in->h : 0, w, h);
    struct img_coeffs kx, ky;
    enum st_status rc = img_coeffs_init(&kx, in->w, 0.0f, (float)in->w, w, 0, w, f, err);
    if (rc) return rc;
    if ((rc = img_coeffs_init(&ky, in->h, 0.0f, (float)in->h, h, 0, h, f, err))) {
        img_coeffs_free(&kx);
        return rc;
    }
    rc = img_resample(in->px, (size_t)in->w * 3, &kx, &ky, NULL, out, err);
    img_coeffs_free(&kx);
    img_coeffs_free(&ky);
    return rc;
}

struct jpeg_src {
    const uint8_t *data;
    size_t len;
    const struct st_image_limits *lim;
};

static enum st_status jpeg_decode(void *ctx, int num, int rx0, int ry0, int rx1, int ry1,
                                  struct st_image_work *work, struct img_part *part,
                                  struct st_error *err) {
    const struct jpeg_src *s = ctx;
    return img_jpeg_decode_part(s->data, s->len, s->lim, num, rx0, ry0, rx1, ry1, work, part, err);
}

enum st_status st_image_load(const uint8_t *data, size_t len, const struct st_image_limits *lim,
                             const struct st_image_transform *t, uint64_t seed,
                             struct st_image_work *work, struct st_image *out,
                             struct st_error *err) {
    memset(out, 0, sizeof *out);
    enum st_status rc = check_transform(t, err);
    if (rc) return rc;
    struct st_image_info info;
    if ((rc = st_image_probe(data, len, &info, err))) return rc;
    if ((rc = img_check_limits(&info, lim, err))) return rc;
    if (info.format != ST_IMAGE_JPEG) {
        struct st_image full;
        if ((rc = st_image_decode(data, len, lim, &full, err))) return rc;
        rc = st_image_apply(&full, t, seed, work, out, err);
        st_image_free(&full);
        return rc;
    }
    struct img_plan p;
    if ((rc = plan_make(info.w, info.h, t, seed, &p, err))) return rc;
    int num = 8;
    if (t->jpeg_scale) {
        /* the smallest of 1/8, 1/4, 1/2 with box * num / 8 >= output on both axes: libjpeg-turbo
         * has SIMD IDCTs for those and 8/8 only; 5/8..7/8 decode slower than 8/8 and 3/8
         * slower than 1/2 (bench/NOTES.md). They are also the scales Pillow's draft() uses. */
        int64_t bw = p.bx1 - p.bx0, bh = p.by1 - p.by0;
        int64_t nx = (8 * (int64_t)p.ow + bw - 1) / bw, ny = (8 * (int64_t)p.oh + bh - 1) / bh;
        int64_t need = nx > ny ? nx : ny;
        num = need <= 1 ? 1 : need <= 2 ? 2 : need <= 4 ? 4 : 8;
    }
    struct jpeg_src src = {data, len, lim};
    return plan_run(&p, t, info.w, info.h, num, jpeg_decode, &src, work, out, err);
}

/* ---- normalisation ---- */

static void norm_table(const float mean[3], const float std[3], float lut[3][256]) {
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) {
            float x = (float)v / 255.0f;
            x = x - mean[c];
            lut[c][v] = x / std[c];
        }
}

void st_image_to_f32(const struct st_image *im, const float mean[3], const float std[3],
                     float *out) {
    float lut[3][256];
    norm_table(mean, std, lut);
    size_t n = (size_t)im->w * (size_t)im->h;
    float *o0 = out, *o1 = out + n, *o2 = out + 2 * n;
    const uint8_t *p = im->px;
    for (size_t i = 0; i < n; i++, p += 3) {
        o0[i] = lut[0][p[0]];
        o1[i] = lut[1][p[1]];
        o2[i] = lut[2][p[2]];
    }
}

static uint16_t f32_to_bf16(float f) { /* round to nearest even; inputs are finite */
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

void st_image_to_bf16(const struct st_image *im, const float mean[3], const float std[3],
                      uint16_t *out) {
    float lut[3][256];
    uint16_t lut16[3][256];
    norm_table(mean, std, lut);
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++)
            lut16[c][v] = f32_to_bf16(lut[c][v]);
    size_t n = (size_t)im->w * (size_t)im->h;
    uint16_t *o0 = out, *o1 = out + n, *o2 = out + 2 * n;
    const uint8_t *p = im->px;
    for (size_t i = 0; i < n; i++, p += 3) {
        o0[i] = lut16[0][p[0]];
        o1[i] = lut16[1][p[1]];
        o2[i] = lut16[2][p[2]];
    }
}
