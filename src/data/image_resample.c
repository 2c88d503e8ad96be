/* image_resample.c: Pillow's antialiased resize (PIL.Image.resize with BILINEAR or BICUBIC),
 * reproduced bit for bit, for RGB images.
 *
 * DESIGN: the convention is Pillow's Resample.c. Along an axis, output pixel i of a resize of
 * the input range [b0, b1) onto N pixels has its centre at b0 + (i + 0.5) * scale, scale =
 * (b1 - b0) / N; the filter's support is stretched by max(scale, 1) (that is the antialiasing);
 * the taps are input pixels [int(centre - support + 0.5), int(centre + support + 0.5)) clipped
 * to the input, weighted filter((x - centre + 0.5) / max(scale, 1)), normalised to sum 1 in
 * double, then rounded half away from zero to 22 fractional bits. A pass accumulates in int32
 * from 0.5 (1 << 21), shifts right by 22 and clips to 0..255. The horizontal pass runs first
 * (only on the rows the vertical pass reads) and its result is stored as 8-bit rows; then the
 * vertical pass. Doing the same arithmetic in the same order is what makes it bit-exact; the
 * evaluation order of the filter polynomials matters, so FP contraction (FMA) is off here.
 *
 * Unlike Pillow, coefficients are made only for a window of the output ([o0, o0 + n)): a centre
 * crop after a resize computes only the kept pixels, and each pixel's coefficients depend only
 * on its own index, so the window equals cropping the full resize. */
#include <math.h>
#include <string.h>

#include "data/image_internal.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#endif

#define IMG_PREC 22

static double filter_bilinear(double x) {
    if (x < 0.0) x = -x;
    if (x < 1.0) return 1.0 - x;
    return 0.0;
}

static double filter_bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

void img_coeffs_free(struct img_coeffs *c) {
    st_free(c->bounds);
    st_free(c->k);
    memset(c, 0, sizeof *c);
}

enum st_status img_coeffs_init(struct img_coeffs *c, int in_size, float b0, float b1, int out_size,
                               int o0, int n, enum st_image_filter f, struct st_error *err) {
    memset(c, 0, sizeof *c);
    if (in_size < 1 || out_size < 1 || n < 1 || o0 < 0 || o0 > out_size - n || !(b1 > b0))
        return st_errorf(err, ST_ERR_ARG, "resample: bad geometry (input %d, box %g..%g, output "
                         "%d, window %d+%d)", in_size, (double)b0, (double)b1, out_size, o0, n);
    int identity = out_size == in_size && b0 == 0.0f && b1 == (float)in_size;
    double (*fn)(double) = f == ST_IMAGE_BICUBIC ? filter_bicubic : filter_bilinear;
    double support0 = f == ST_IMAGE_BICUBIC ? 2.0 : 1.0;
    double scale = (double)(b1 - b0) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = support0 * filterscale;
    double ksz = identity ? 1.0 : ceil(support) * 2 + 1;
    if (ksz > (double)in_size + 4.0) ksz = (double)in_size + 4.0; /* taps never exceed the input */
    c->ksize = (int)ksz;
    c->n = n;
    size_t nk;
    if (st_mul_size((size_t)n, (size_t)c->ksize, &nk))
        return st_errorf(err, ST_ERR_NOMEM, "resample: %d x %d coefficients overflow", n, c->ksize);
    c->bounds = st_calloc((size_t)n * 2, sizeof(int));
    c->k = st_calloc(nk, sizeof(int32_t));
    double *w = st_calloc((size_t)c->ksize, sizeof(double));
    if (!c->bounds || !c->k || !w) {
        st_free(w);
        img_coeffs_free(c);
        return st_errorf(err, ST_ERR_NOMEM, "resample: out of memory for %zu coefficients", nk);
    }
    double ss = 1.0 / filterscale;
    for (int i = 0; i < n; i++) {
        int xx = o0 + i;
        int32_t *k = c->k + (size_t)i * (size_t)c->ksize;
        if (identity) {
            c->bounds[2 * i] = xx;
            c->bounds[2 * i + 1] = 1;
            k[0] = 1 << IMG_PREC;
            continue;
        }
        double center = b0 + (xx + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        if (xmax < 0) xmax = 0;
        if (xmax > c->ksize) xmax = c->ksize; /* cannot happen for boxes inside the input */
        double ww = 0.0;
        for (int x = 0; x < xmax; x++) {
            w[x] = fn((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        for (int x = 0; x < xmax; x++) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            k[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << IMG_PREC))
                         : (int32_t)(0.5 + v * (1 << IMG_PREC));
        }
        c->bounds[2 * i] = xmin;
        c->bounds[2 * i + 1] = xmax;
    }
    st_free(w);
    return ST_OK;
}

void img_coeffs_span(const struct img_coeffs *c, int *lo, int *hi) {
    int l = 0, h = 0, any = 0;
    for (int i = 0; i < c->n; i++) {
        int a = c->bounds[2 * i], b = a + c->bounds[2 * i + 1];
        if (b <= a) continue;
        if (!any || a < l) l = a;
        if (!any || b > h) h = b;
        any = 1;
    }
    *lo = l;
    *hi = any ? h : l;
}

void img_coeffs_shift(struct img_coeffs *c, int d) {
    for (int i = 0; i < c->n; i++) c->bounds[2 * i] += d;
}

static inline uint8_t clip_acc(int32_t v) {
    if (v < 0) return 0;
    v >>= IMG_PREC;
    return v > 255 ? 255 : (uint8_t)v;
}

enum st_status img_resample(const uint8_t *src, size_t stride, const struct img_coeffs *cx,
                            const struct img_coeffs *cy, struct st_image *out,
                            struct st_error *err) {
    memset(out, 0, sizeof *out);
    int ylo, yhi;
    img_coeffs_span(cy, &ylo, &yhi);
    int rows = yhi - ylo;
    size_t row_bytes = (size_t)cx->n * 3, tmp_bytes, out_bytes;
    if (st_mul_size(row_bytes, (size_t)(rows > 0 ? rows : 1), &tmp_bytes) ||
        st_mul_size(row_bytes, (size_t)cy->n, &out_bytes))
        return st_errorf(err, ST_ERR_NOMEM, "resample: %d x %d output overflows", cx->n, cy->n);
    uint8_t *tmp = st_malloc(tmp_bytes);
    int32_t *acc = st_malloc(row_bytes * sizeof(int32_t));
    out->px = st_malloc(out_bytes);
    if (!tmp || !acc || !out->px) {
        st_free(tmp);
        st_free(acc);
        st_free(out->px);
        out->px = NULL;
        return st_errorf(err, ST_ERR_NOMEM, "resample: out of memory for a %d x %d image", cx->n,
                         cy->n);
    }
    /* horizontal pass over the rows [ylo, yhi) the vertical pass reads */
    const int32_t half = 1 << (IMG_PREC - 1);
    for (int r = 0; r < rows; r++) {
        const uint8_t *in = src + (size_t)(ylo + r) * stride;
        uint8_t *o = tmp + (size_t)r * row_bytes;
        for (int i = 0; i < cx->n; i++) {
            const int32_t *k = cx->k + (size_t)i * (size_t)cx->ksize;
            const uint8_t *p = in + (size_t)cx->bounds[2 * i] * 3;
            int cnt = cx->bounds[2 * i + 1];
            int32_t s0 = half, s1 = half, s2 = half;
            for (int t = 0; t < cnt; t++) {
                s0 += p[3 * t + 0] * k[t];
                s1 += p[3 * t + 1] * k[t];
                s2 += p[3 * t + 2] * k[t];
            }
            o[3 * i + 0] = clip_acc(s0);
            o[3 * i + 1] = clip_acc(s1);
            o[3 * i + 2] = clip_acc(s2);
        }
    }
    /* vertical pass: whole rows at a time, so the inner loop is contiguous */
    for (int j = 0; j < cy->n; j++) {
        const int32_t *k = cy->k + (size_t)j * (size_t)cy->ksize;
        int y0 = cy->bounds[2 * j] - ylo, cnt = cy->bounds[2 * j + 1];
        for (size_t i = 0; i < row_bytes; i++) acc[i] = half;
        for (int t = 0; t < cnt; t++) {
            const uint8_t *row = tmp + (size_t)(y0 + t) * row_bytes;
            int32_t kt = k[t];
            for (size_t i = 0; i < row_bytes; i++) acc[i] += row[i] * kt;
        }
        uint8_t *o = out->px + (size_t)j * row_bytes;
        for (size_t i = 0; i < row_bytes; i++) o[i] = clip_acc(acc[i]);
    }
    st_free(tmp);
    st_free(acc);
    out->w = cx->n;
    out->h = cy->n;
    out->c = 3;
    return ST_OK;
}
