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
        return st_errorf(err, ST_ERR_ARG,
                         "resample: bad geometry (input %d, box %g..%g, output %d, window %d+%d)",
                         in_size, (double)b0, (double)b1, out_size, o0, n);
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
    for (int i = 0; i < c->n; i++)
        c->bounds[2 * i] += d;
}

static inline uint8_t clip_acc(int32_t v) {
    if (v < 0) return 0;
    v >>= IMG_PREC;
    return v > 255 ? 255 : (uint8_t)v;
}

/* One pass along rows: out row j (width bytes) = clip(sum over taps t of in row
 * (c->bounds[2j] - row0 + t) * c->k[j][t]), for every byte of the row at once, so the inner loop
 * is contiguous and vectorises. Integer sums are exact in any order, so this computes exactly
 * Pillow's per-pixel loops. acc holds width int32. */
static void pass_rows(const uint8_t *in, size_t in_stride, int row0, size_t width,
                      const struct img_coeffs *c, uint8_t *out, size_t out_stride, int32_t *acc) {
    const int32_t half = 1 << (IMG_PREC - 1);
    for (int j = 0; j < c->n; j++) {
        const int32_t *k = c->k + (size_t)j * (size_t)c->ksize;
        int first = c->bounds[2 * j] - row0, cnt = c->bounds[2 * j + 1];
        for (size_t i = 0; i < width; i++)
            acc[i] = half;
        for (int t = 0; t < cnt; t++) {
            const uint8_t *row = in + (size_t)(first + t) * in_stride;
            int32_t kt = k[t];
            for (size_t i = 0; i < width; i++)
                acc[i] += row[i] * kt;
        }
        uint8_t *o = out + (size_t)j * out_stride;
        for (size_t i = 0; i < width; i++)
            o[i] = clip_acc(acc[i]);
    }
}

/* Transpose RGB pixels: in (rows, cols) with stride in_stride -> out (cols, rows), rows * 3
 * bytes per out row. Blocked so both sides stay in cache. */
static void transpose_rgb(const uint8_t *in, size_t in_stride, int rows, int cols, uint8_t *out) {
    const int B = 16;
    size_t out_stride = (size_t)rows * 3;
    for (int y0 = 0; y0 < rows; y0 += B)
        for (int x0 = 0; x0 < cols; x0 += B) {
            int y1 = y0 + B < rows ? y0 + B : rows, x1 = x0 + B < cols ? x0 + B : cols;
            for (int y = y0; y < y1; y++) {
                const uint8_t *s = in + (size_t)y * in_stride;
                for (int x = x0; x < x1; x++) {
                    uint8_t *d = out + (size_t)x * out_stride + (size_t)y * 3;
                    d[0] = s[3 * x], d[1] = s[3 * x + 1], d[2] = s[3 * x + 2];
                }
            }
        }
}

void *img_work_take(struct st_image_work *w, int slot, size_t n) {
    if (!w) return st_malloc(n ? n : 1);
    if (w->cap[slot] < n) {
        st_free(w->buf[slot]);
        w->buf[slot] = st_malloc(n);
        w->cap[slot] = w->buf[slot] ? n : 0;
    }
    return w->buf[slot];
}

void img_work_give(struct st_image_work *w, void *p) {
    if (!w) st_free(p);
}

enum st_status st_image_work_init(struct st_image_work **w, struct st_error *err) {
    *w = st_calloc(1, sizeof **w);
    return *w ? ST_OK : st_errorf(err, ST_ERR_NOMEM, "image: out of memory for a workspace");
}

void st_image_work_free(struct st_image_work *w) {
    if (!w) return;
    for (int i = 0; i < IMG_WORK_SLOTS; i++)
        st_free(w->buf[i]);
    st_free(w);
}

enum st_status img_resample(const uint8_t *src, size_t stride, const struct img_coeffs *cx,
                            const struct img_coeffs *cy, struct st_image_work *work,
                            struct st_image *out, struct st_error *err) {
    memset(out, 0, sizeof *out);
    int ylo, yhi, xlo, xhi;
    img_coeffs_span(cy, &ylo, &yhi);
    img_coeffs_span(cx, &xlo, &xhi);
    int rows = yhi - ylo, cols = xhi - xlo;
    if (rows < 1) rows = 1, yhi = ylo + 1;
    if (cols < 1) cols = 1, xhi = xlo + 1;
    /* The horizontal pass is a pass along rows of the transposed region: transpose the
     * [xlo, xhi) x [ylo, yhi) source (cols rows of rows * 3 bytes), filter, transpose back into
     * the 8-bit intermediate (rows, cx->n), then the vertical pass. */
    size_t tcol = (size_t)rows * 3, tmp_row = (size_t)cx->n * 3, nt, nh, nacc, nout;
    if (st_mul_size(tcol, (size_t)cols, &nt) || st_mul_size(tcol, (size_t)cx->n, &nh) ||
        st_mul_size(tmp_row, (size_t)cy->n, &nout))
        return st_errorf(err, ST_ERR_NOMEM, "resample: %d x %d output overflows", cx->n, cy->n);
    nacc = (tcol > tmp_row ? tcol : tmp_row) * sizeof(int32_t);
    uint8_t *t1 = img_work_take(work, IMG_WORK_T1, nt);
    uint8_t *h = img_work_take(work, IMG_WORK_H, nh);
    uint8_t *tmp = img_work_take(work, IMG_WORK_TMP, nh);
    int32_t *acc = img_work_take(work, IMG_WORK_ACC, nacc);
    out->px = st_malloc(nout);
    enum st_status rc = ST_OK;
    if (!t1 || !h || !tmp || !acc || !out->px) {
        st_free(out->px);
        out->px = NULL;
        rc = st_errorf(err, ST_ERR_NOMEM, "resample: out of memory for a %d x %d image", cx->n,
                       cy->n);
    } else {
        transpose_rgb(src + (size_t)ylo * stride + (size_t)xlo * 3, stride, rows, cols, t1);
        pass_rows(t1, tcol, xlo, tcol, cx, h, tcol, acc); /* (cx->n, rows * 3) */
        transpose_rgb(h, tcol, cx->n, rows, tmp);         /* (rows, cx->n * 3) */
        pass_rows(tmp, tmp_row, ylo, tmp_row, cy, out->px, tmp_row, acc);
        out->w = cx->n;
        out->h = cy->n;
        out->c = 3;
    }
    img_work_give(work, t1);
    img_work_give(work, h);
    img_work_give(work, tmp);
    img_work_give(work, acc);
    return rc;
}
