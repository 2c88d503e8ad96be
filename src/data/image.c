/* image.c: probe and decode JPEG (libjpeg-turbo), PNG (libpng) and WebP (libwebp) from memory
 * into 8-bit RGB, with the pixel limit checked before anything is decoded.
 *
 * DESIGN
 * - st_image_probe parses the headers itself (JPEG markers up to SOFn, PNG signature and IHDR
 *   with its CRC, WebP through WebPGetFeatures, which reads only the RIFF chunk headers), so a
 *   30000 x 30000 header is refused without a decoder ever being created.
 * - Library errors come back as values: libjpeg's error_exit and libpng's error callback format
 *   the library's message and longjmp to the decoder, which frees everything it made (the state
 *   that must survive the jump lives in a context struct, not in locals). libjpeg warnings
 *   (corrupt entropy data it can recover from) are not fatal, as in Pillow; running out of data
 *   is: our source manager stops with "truncated" where jpeg_mem_src would pad with a fake EOI.
 * - libpng allocates through st_malloc (png_create_read_struct_2), so tests can fail its Nth
 *   allocation; libjpeg and libwebp use their own allocators.
 * - Conversions to RGB follow Pillow's convert("RGB"): see include/streamtune/image.h.
 * - JPEG may be decoded at a DCT scale num/8 and only over a region (img_jpeg_decode_part);
 *   st_image_decode is the whole image at full size. */
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
/* jpeglib.h needs stdio.h and size_t first */
#include <jerror.h>
#include <jpeglib.h>
#include <png.h>
#include <webp/decode.h>
#include <zlib.h>

#include "data/image_internal.h"

const char *st_image_format_name(enum st_image_format f) {
    switch (f) {
    case ST_IMAGE_JPEG: return "JPEG";
    case ST_IMAGE_PNG: return "PNG";
    case ST_IMAGE_WEBP: return "WebP";
    default: return "unknown";
    }
}

void st_image_free(struct st_image *im) {
    if (!im) return;
    st_free(im->px);
    memset(im, 0, sizeof *im);
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---- probe ---- */

static enum st_status probe_jpeg(const uint8_t *d, size_t n, struct st_image_info *info,
                                 struct st_error *err) {
    size_t p = 2;
    for (;;) {
        /* a marker is 0xFF (fill bytes allowed) then a code; anything else between segments is
         * garbage libjpeg skips with a warning, and so do we */
        while (p < n && d[p] != 0xFF)
            p++;
        while (p < n && d[p] == 0xFF)
            p++;
        if (p >= n)
            return st_errorf(err, ST_ERR_FORMAT,
                             "JPEG: truncated header (%zu bytes, no frame header found)", n);
        uint8_t m = d[p++];
        if (m == 0xD8 || m == 0x01 || (m >= 0xD0 && m <= 0xD7)) continue; /* no length */
        if (m == 0xD9 || m == 0xDA)
            return st_errorf(err, ST_ERR_FORMAT, "JPEG: %s before the frame header (byte %zu)",
                             m == 0xDA ? "scan" : "end of image", p - 2);
        if (p + 2 > n)
            return st_errorf(err, ST_ERR_FORMAT, "JPEG: truncated header at byte %zu", p);
        size_t seg = (size_t)d[p] << 8 | d[p + 1];
        if (seg < 2)
            return st_errorf(err, ST_ERR_FORMAT, "JPEG: bad segment length %zu at byte %zu", seg,
                             p);
        int sof = m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
        if (sof) {
            if (seg < 8 || p + 8 > n)
                return st_errorf(err, ST_ERR_FORMAT, "JPEG: truncated frame header at byte %zu", p);
            info->format = ST_IMAGE_JPEG;
            info->bit_depth = d[p + 2];
            info->h = (int)((uint32_t)d[p + 3] << 8 | d[p + 4]);
            info->w = (int)((uint32_t)d[p + 5] << 8 | d[p + 6]);
            info->channels = d[p + 7];
            if (info->w == 0)
                return st_errorf(err, ST_ERR_FORMAT, "JPEG: frame header with width 0");
            if (info->h == 0)
                return st_errorf(err, ST_ERR_UNSUPPORTED,
                                 "JPEG: height defined by a DNL marker (frame header height 0) is "
                                 "not supported");
            if (info->channels != 1 && info->channels != 3 && info->channels != 4)
                return st_errorf(err, ST_ERR_FORMAT, "JPEG: %d components (1, 3 or 4 expected)",
                                 info->channels);
            return ST_OK;
        }
        p += seg;
    }
}

static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};

static enum st_status probe_png(const uint8_t *d, size_t n, struct st_image_info *info,
                                struct st_error *err) {
    if (n < 33) return st_errorf(err, ST_ERR_FORMAT, "PNG: truncated header (%zu bytes)", n);
    if (be32(d + 8) != 13 || memcmp(d + 12, "IHDR", 4) != 0)
        return st_errorf(err, ST_ERR_FORMAT, "PNG: first chunk is not a 13-byte IHDR");
    uint32_t crc = (uint32_t)crc32(0L, d + 12, 17);
    if (crc != be32(d + 29))
        return st_errorf(err, ST_ERR_FORMAT,
                         "PNG: bad CRC in IHDR chunk (stored %08x, computed %08x)", be32(d + 29),
                         crc);
    uint32_t w = be32(d + 16), h = be32(d + 20);
    int depth = d[24], ct = d[25];
    if (w == 0 || h == 0 || w > 0x7fffffffu || h > 0x7fffffffu)
        return st_errorf(err, ST_ERR_FORMAT, "PNG: bad dimensions %ux%u in IHDR", w, h);
    int ok = 0, ch = 0;
    switch (ct) {
    case 0:
        ok = depth == 1 || depth == 2 || depth == 4 || depth == 8 || depth == 16;
        ch = 1;
        break;
    case 2:
        ok = depth == 8 || depth == 16;
        ch = 3;
        break;
    case 3:
        ok = depth == 1 || depth == 2 || depth == 4 || depth == 8;
        ch = 3;
        break;
    case 4:
        ok = depth == 8 || depth == 16;
        ch = 2;
        break;
    case 6:
        ok = depth == 8 || depth == 16;
        ch = 4;
        break;
    }
    if (!ok)
        return st_errorf(err, ST_ERR_FORMAT, "PNG: bad colour type %d with bit depth %d", ct,
                         depth);
    info->format = ST_IMAGE_PNG;
    info->w = (int)w;
    info->h = (int)h;
    info->bit_depth = depth;
    info->channels = ch;
    return ST_OK;
}

static enum st_status probe_webp(const uint8_t *d, size_t n, struct st_image_info *info,
                                 struct st_error *err) {
    WebPBitstreamFeatures f;
    VP8StatusCode rc = WebPGetFeatures(d, n, &f);
    if (rc == VP8_STATUS_NOT_ENOUGH_DATA)
        return st_errorf(err, ST_ERR_FORMAT, "WebP: truncated header (%zu bytes)", n);
    if (rc != VP8_STATUS_OK)
        return st_errorf(err, ST_ERR_FORMAT, "WebP: bad header (libwebp status %d)", (int)rc);
    if (f.width <= 0 || f.height <= 0)
        return st_errorf(err, ST_ERR_FORMAT, "WebP: bad dimensions %dx%d", f.width, f.height);
    info->format = ST_IMAGE_WEBP;
    info->w = f.width;
    info->h = f.height;
    info->channels = f.has_alpha ? 4 : 3;
    info->bit_depth = 8;
    if (f.has_animation)
        return st_errorf(err, ST_ERR_UNSUPPORTED, "WebP: animated images are not supported (%dx%d)",
                         f.width, f.height);
    return ST_OK;
}

enum st_status st_image_probe(const uint8_t *data, size_t len, struct st_image_info *info,
                              struct st_error *err) {
    memset(info, 0, sizeof *info);
    if (!data || len == 0) return st_errorf(err, ST_ERR_FORMAT, "empty image data (0 bytes)");
    if (len >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF)
        return probe_jpeg(data, len, info, err);
    if (len >= 8 && memcmp(data, png_sig, 8) == 0) return probe_png(data, len, info, err);
    if (len >= 12 && memcmp(data, "RIFF", 4) == 0 && memcmp(data + 8, "WEBP", 4) == 0)
        return probe_webp(data, len, info, err);
    char hex[3 * 8 + 1] = "";
    for (size_t i = 0, o = 0; i < len && i < 8; i++)
        o += (size_t)snprintf(hex + o, sizeof hex - o, "%s%02x", i ? " " : "", data[i]);
    return st_errorf(
        err, ST_ERR_FORMAT,
        "unrecognised image format (%zu bytes starting %s; JPEG, PNG and WebP are supported)", len,
        hex);
}

enum st_status img_check_limits(const struct st_image_info *info, const struct st_image_limits *lim,
                                struct st_error *err) {
    uint64_t max = lim && lim->max_pixels ? lim->max_pixels : ST_IMAGE_MAX_PIXELS_DEFAULT;
    uint64_t px = (uint64_t)info->w * (uint64_t)info->h;
    if (px > max)
        return st_errorf(err, ST_ERR_NOMEM,
                         "%s: %dx%d image (%llu pixels) exceeds the limit of %llu pixels "
                         "(max_pixels); refused before decoding",
                         st_image_format_name(info->format), info->w, info->h,
                         (unsigned long long)px, (unsigned long long)max);
    return ST_OK;
}

/* Allocate w x h x 3 bytes with the multiplication checked. */
static uint8_t *alloc_rgb(int w, int h, const char *fmt, struct st_error *err) {
    size_t n;
    if (st_mul_size((size_t)w, (size_t)h, &n) || st_mul_size(n, 3, &n)) {
        st_errorf(err, ST_ERR_NOMEM, "%s: %dx%d image size overflows", fmt, w, h);
        return NULL;
    }
    uint8_t *p = st_malloc(n ? n : 1);
    if (!p)
        st_errorf(err, ST_ERR_NOMEM, "%s: out of memory for a %dx%d image (%zu bytes)", fmt, w, h,
                  n);
    return p;
}

/* ---- JPEG ---- */

/* A progressive JPEG may hold thousands of tiny scans, each a pass over the whole image (a
 * known way to make decoding slow); TurboJPEG 3 refuses more than 500 by default, as do we. */
#define IMG_JPEG_MAX_SCANS 500
#define IMG_JPEG_CROP_SLACK 8

struct jpeg_ctx {
    struct jpeg_error_mgr pub;
    struct jpeg_progress_mgr progress;
    jmp_buf jmp;
    char msg[JMSG_LENGTH_MAX];
    int truncated, too_many_scans;
    size_t len;
    /* owned while decoding; freed by the decoder on every path */
    JSAMPLE *row;
    uint8_t *px;
};

static void jpeg_on_error(j_common_ptr cinfo) {
    struct jpeg_ctx *c = (struct jpeg_ctx *)cinfo->err;
    if (c->truncated)
        snprintf(c->msg, sizeof c->msg, "truncated data (%zu bytes; the image needs more)", c->len);
    else if (c->too_many_scans)
        snprintf(c->msg, sizeof c->msg, "more than %d progressive scans", IMG_JPEG_MAX_SCANS);
    else
        (*cinfo->err->format_message)(cinfo, c->msg);
    longjmp(c->jmp, 1);
}

static void jpeg_on_message(j_common_ptr cinfo, int level) {
    (void)cinfo, (void)level;
}

static void jpeg_on_progress(j_common_ptr cinfo) {
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    if (d->input_scan_number > IMG_JPEG_MAX_SCANS) {
        ((struct jpeg_ctx *)cinfo->err)->too_many_scans = 1;
        ERREXIT(cinfo, JERR_NOT_COMPILED); /* the message is replaced in jpeg_on_error */
    }
}

static void src_init(j_decompress_ptr cinfo) {
    (void)cinfo;
}
static void src_term(j_decompress_ptr cinfo) {
    (void)cinfo;
}

static boolean src_fill(j_decompress_ptr cinfo) {
    /* all data was given at once: asking for more means the file ended early */
    struct jpeg_ctx *c = (struct jpeg_ctx *)cinfo->err;
    c->truncated = 1;
    ERREXIT(cinfo, JERR_INPUT_EOF);
    return FALSE;
}

static void src_skip(j_decompress_ptr cinfo, long n) {
    struct jpeg_source_mgr *s = cinfo->src;
    if (n <= 0) return;
    if ((size_t)n > s->bytes_in_buffer) {
        s->next_input_byte += s->bytes_in_buffer;
        s->bytes_in_buffer = 0;
        src_fill(cinfo);
        return;
    }
    s->next_input_byte += n;
    s->bytes_in_buffer -= (size_t)n;
}

void img_jpeg_scaled_size(int w, int h, int num, int *sw, int *sh) {
    *sw = (int)(((int64_t)w * num + 7) / 8);
    *sh = (int)(((int64_t)h * num + 7) / 8);
}

/* Pillow's cmyk2rgb after undoing Adobe's inversion (libjpeg returns Adobe CMYK inverted). */
static void cmyk_to_rgb(uint8_t *dst, const uint8_t *src, int n, int inverted) {
    for (int i = 0; i < n; i++) {
        int c = src[4 * i], m = src[4 * i + 1], y = src[4 * i + 2], k = src[4 * i + 3];
        if (inverted) c = 255 - c, m = 255 - m, y = 255 - y, k = 255 - k;
        int nk = 255 - k, v[3] = {c, m, y};
        for (int j = 0; j < 3; j++) {
            int t = v[j] * nk + 128;
            int r = nk - (((t >> 8) + t) >> 8);
            dst[3 * i + j] = (uint8_t)(r < 0 ? 0 : r > 255 ? 255 : r);
        }
    }
}

/* Everything the JPEG decoder touches after setjmp lives here (in memory, not in registers that
 * longjmp could restore stale); jpeg_body does the work, the caller owns the setjmp. */
struct jpeg_job {
    struct jpeg_decompress_struct cinfo;
    struct jpeg_source_mgr src;
    struct jpeg_ctx ctx;
    const struct st_image_info *info;
    int num, rx0, ry0, rx1, ry1;
    struct st_image_work *work;
    struct img_part *part;
};

static enum st_status jpeg_body(struct jpeg_job *j, struct st_error *err) {
    struct jpeg_decompress_struct *ci = &j->cinfo;
    const struct st_image_info *info = j->info;
    jpeg_read_header(ci, TRUE);
    if ((int)ci->image_width != info->w || (int)ci->image_height != info->h)
        return st_errorf(err, ST_ERR_FORMAT, "JPEG: frame header says %dx%d, decoder %ux%u",
                         info->w, info->h, ci->image_width, ci->image_height);
    int cmyk = ci->jpeg_color_space == JCS_CMYK || ci->jpeg_color_space == JCS_YCCK;
    ci->out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    ci->scale_num = (unsigned)j->num;
    ci->scale_denom = 8;
    jpeg_start_decompress(ci);
    int sw = (int)ci->output_width, sh = (int)ci->output_height, ow, oh;
    img_jpeg_scaled_size(info->w, info->h, j->num, &ow, &oh);
    if (sw != ow || sh != oh || ci->output_components != (cmyk ? 4 : 3))
        return st_errorf(err, ST_ERR_FORMAT, "JPEG: scaled output %dx%dx%d, expected %dx%d", sw, sh,
                         ci->output_components, ow, oh);
    int rx0 = j->rx0 < 0 ? 0 : j->rx0 > sw - 1 ? sw - 1 : j->rx0;
    int ry0 = j->ry0 < 0 ? 0 : j->ry0 > sh - 1 ? sh - 1 : j->ry0;
    int rx1 = j->rx1 <= rx0 ? rx0 + 1 : j->rx1 > sw ? sw : j->rx1;
    int ry1 = j->ry1 <= ry0 ? ry0 + 1 : j->ry1 > sh ? sh : j->ry1;
    /* jpeg_crop_scanline starts at an iMCU column and upsamples chroma with the crop's edges
     * replicated, so the outermost columns of a crop differ from a full decode (up to 13 levels
     * on 4:2:0): decode IMG_JPEG_CROP_SLACK more columns each side; the inexact ones lie outside
     * [rx0, rx1), which is all the caller reads. */
    int cx0 = rx0 - IMG_JPEG_CROP_SLACK < 0 ? 0 : rx0 - IMG_JPEG_CROP_SLACK;
    int cx1 = rx1 + IMG_JPEG_CROP_SLACK > sw ? sw : rx1 + IMG_JPEG_CROP_SLACK;
    JDIMENSION xoff = (JDIMENSION)cx0, width = (JDIMENSION)(cx1 - cx0);
    if (cx0 > 0 || cx1 < sw)
        jpeg_crop_scanline(ci, &xoff, &width);
    else
        xoff = 0, width = (JDIMENSION)sw;
    if ((int)xoff > rx0 || (int)(xoff + width) < rx1)
        return st_errorf(err, ST_ERR_FORMAT, "JPEG: crop %u+%u does not cover %d..%d", xoff, width,
                         rx0, rx1);
    int w = (int)width, h = ry1 - ry0;
    size_t n;
    if (st_mul_size((size_t)w * 3, (size_t)h, &n))
        return st_errorf(err, ST_ERR_NOMEM, "JPEG: %dx%d region overflows", w, h);
    if (!(j->ctx.px = img_work_take(j->work, IMG_WORK_DECODE, n)))
        return st_errorf(err, ST_ERR_NOMEM, "JPEG: out of memory for a %dx%d region", w, h);
    if (cmyk && !(j->ctx.row = st_malloc((size_t)w * 4)))
        return st_errorf(err, ST_ERR_NOMEM, "JPEG: out of memory for a row");
    if (ry0 > 0) jpeg_skip_scanlines(ci, (JDIMENSION)ry0);
    for (int y = 0; y < h; y++) {
        uint8_t *dst = j->ctx.px + (size_t)y * (size_t)w * 3;
        JSAMPROW r = cmyk ? j->ctx.row : dst;
        /* only a suspending source returns 0 rows; ours errors out instead */
        if (jpeg_read_scanlines(ci, &r, 1) != 1)
            return st_errorf(err, ST_ERR_FORMAT, "JPEG: decoder returned no row %d", ry0 + y);
        if (cmyk) cmyk_to_rgb(dst, j->ctx.row, w, ci->saw_Adobe_marker);
    }
    if (ry1 == sh) jpeg_finish_decompress(ci); /* reads to EOI: a truncated tail is an error */
    struct img_part *part = j->part;
    part->im.w = w;
    part->im.h = h;
    part->im.c = 3;
    part->im.px = j->ctx.px;
    j->ctx.px = NULL;
    part->x0 = (int)xoff;
    part->y0 = ry0;
    part->sw = sw;
    part->sh = sh;
    part->num = j->num;
    part->borrowed = j->work != NULL;
    return ST_OK;
}

/* Whether the main image's segments run to its end-of-image marker: 1 yes, 0 the data ends first
 * (truncated), -1 the structure is not one to judge (libjpeg then reports what is wrong). Walks
 * the marker segments by their lengths (an EXIF thumbnail sits inside APP1), each scan's
 * entropy-coded data up to the next marker (there 0xFF is followed by 0x00 or a restart marker),
 * and stops at the EOI: data after it (a Motion Photo's video, MPO's second image) is not read.
 * A decode of some rows only (a crop) stops before a cut tail, so this is checked up front: a
 * file is bad whatever region is asked for. */
static int jpeg_complete(const uint8_t *d, size_t n) {
    if (n < 4 || d[0] != 0xff || d[1] != 0xd8) return -1;
    size_t i = 2;
    while (i < n) {
        if (d[i] != 0xff) return -1;
        while (i < n && d[i] == 0xff) i++; /* fill bytes */
        if (i >= n) return 0;
        uint8_t m = d[i++];
        if (m == 0xd9) return 1;
        if (m == 0xd8 || m == 0x01 || (m >= 0xd0 && m <= 0xd7)) continue; /* no length */
        if (n - i < 2) return 0;
        size_t len = (size_t)d[i] << 8 | d[i + 1];
        if (len < 2) return -1;
        if (n - i < len) return 0;
        i += len;
        if (m == 0xda)
            while (i < n && !(d[i] == 0xff && i + 1 < n && d[i + 1] != 0x00 &&
                              !(d[i + 1] >= 0xd0 && d[i + 1] <= 0xd7)))
                i++;
    }
    return 0;
}

enum st_status img_jpeg_decode_part(const uint8_t *data, size_t len,
                                    const struct st_image_limits *lim, int num, int rx0, int ry0,
                                    int rx1, int ry1, struct st_image_work *work,
                                    struct img_part *part, struct st_error *err) {
    memset(part, 0, sizeof *part);
    struct st_image_info info;
    enum st_status rc = st_image_probe(data, len, &info, err);
    if (rc) return rc;
    if (info.format != ST_IMAGE_JPEG)
        return st_errorf(err, ST_ERR_ARG, "not a JPEG (%s)", st_image_format_name(info.format));
    if ((rc = img_check_limits(&info, lim, err))) return rc;
    if (num < 1 || num > 8) return st_errorf(err, ST_ERR_ARG, "JPEG: bad DCT scale %d/8", num);
    if (jpeg_complete(data, len) == 0)
        return st_errorf(err, ST_ERR_FORMAT, "JPEG: truncated data (%zu bytes; no end-of-image "
                         "marker after the last scan)", len);
    struct jpeg_job *j = st_calloc(1, sizeof *j);
    if (!j) return st_errorf(err, ST_ERR_NOMEM, "JPEG: out of memory for the decoder");
    j->info = &info;
    j->num = num, j->rx0 = rx0, j->ry0 = ry0, j->rx1 = rx1, j->ry1 = ry1;
    j->part = part;
    j->work = work;
    j->ctx.len = len;
    j->cinfo.err = jpeg_std_error(&j->ctx.pub);
    j->ctx.pub.error_exit = jpeg_on_error;
    j->ctx.pub.emit_message = jpeg_on_message;
    j->src.init_source = src_init;
    j->src.fill_input_buffer = src_fill;
    j->src.skip_input_data = src_skip;
    j->src.resync_to_restart = jpeg_resync_to_restart;
    j->src.term_source = src_term;
    j->src.next_input_byte = data;
    j->src.bytes_in_buffer = len;
    if (setjmp(j->ctx.jmp)) {
        rc = st_errorf(err, ST_ERR_FORMAT, "JPEG: %s", j->ctx.msg);
    } else {
        jpeg_create_decompress(&j->cinfo);
        j->cinfo.src = &j->src;
        j->ctx.progress.progress_monitor = jpeg_on_progress;
        j->cinfo.progress = &j->ctx.progress;
        rc = jpeg_body(j, err);
    }
    jpeg_destroy_decompress(&j->cinfo); /* also aborts an unfinished decode */
    st_free(j->ctx.row);
    if (j->ctx.px) img_work_give(work, j->ctx.px);
    st_free(j);
    if (rc) memset(part, 0, sizeof *part);
    return rc;
}

/* ---- PNG ---- */

struct png_ctx {
    jmp_buf jmp;
    char msg[256];
    uint8_t *px;
    png_bytep *rows;
};

static void png_on_error(png_structp png, png_const_charp msg) {
    struct png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg ? msg : "decode error");
    longjmp(c->jmp, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png, (void)msg;
}

static png_voidp png_alloc(png_structp png, png_alloc_size_t n) {
    (void)png;
    return st_malloc(n ? n : 1);
}

static void png_dealloc(png_structp png, png_voidp p) {
    (void)png;
    st_free(p);
}

struct png_reader {
    const uint8_t *d;
    size_t n, pos;
};

static void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
    struct png_reader *r = png_get_io_ptr(png);
    if (n > r->n - r->pos) png_error(png, "truncated data");
    memcpy(out, r->d + r->pos, n);
    r->pos += n;
}

static enum st_status decode_png(const uint8_t *data, size_t len, const struct st_image_info *info,
                                 struct st_image *out, struct st_error *err) {
    struct png_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    struct png_reader rd = {data, len, 0};
    png_structp png = png_create_read_struct_2(PNG_LIBPNG_VER_STRING, &ctx, png_on_error,
                                               png_on_warning, NULL, png_alloc, png_dealloc);
    if (!png) return st_errorf(err, ST_ERR_NOMEM, "PNG: out of memory creating the decoder");
    png_infop pi = png_create_info_struct(png);
    if (!pi) {
        png_destroy_read_struct(&png, NULL, NULL);
        return st_errorf(err, ST_ERR_NOMEM, "PNG: out of memory creating the decoder");
    }
    if (setjmp(ctx.jmp)) {
        png_destroy_read_struct(&png, &pi, NULL);
        st_free(ctx.px);
        st_free(ctx.rows);
        return st_errorf(err, ST_ERR_FORMAT, "PNG: %s", ctx.msg);
    }
    png_set_read_fn(png, &rd, png_read_mem);
    /* our probe already enforced the pixel cap; libpng's own 1M-per-side cap would be stricter */
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
    png_set_chunk_malloc_max(png, 8u << 20); /* ancillary chunks (zTXt, iCCP) are capped too */
    png_read_info(png, pi);
    png_uint_32 w = png_get_image_width(png, pi), h = png_get_image_height(png, pi);
    if ((int)w != info->w || (int)h != info->h)
        png_error(png, "IHDR changed between probe and decode");
    int ct = png_get_color_type(png, pi), depth = png_get_bit_depth(png, pi);
    /* Everything to 8-bit RGB(A): palette and low-depth gray expand, tRNS becomes alpha (then
     * dropped), 16-bit keeps its high byte (Pillow's RGB;16B unpacker does the same). */
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (ct == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16) png_set_strip_16(png);
    if (ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
    png_set_strip_alpha(png); /* also the alpha that palette expansion makes from tRNS */
    png_set_interlace_handling(png);
    png_read_update_info(png, pi);
    if (png_get_channels(png, pi) != 3 || png_get_bit_depth(png, pi) != 8)
        png_error(png, "unexpected layout after conversion to RGB");
    ctx.px = alloc_rgb((int)w, (int)h, "PNG", err);
    if (!ctx.px) {
        png_destroy_read_struct(&png, &pi, NULL);
        return err ? err->code : ST_ERR_NOMEM;
    }
    ctx.rows = st_calloc(h, sizeof(png_bytep));
    if (!ctx.rows) png_error(png, "out of memory for row pointers");
    for (png_uint_32 y = 0; y < h; y++)
        ctx.rows[y] = ctx.px + (size_t)y * w * 3;
    png_read_image(png, ctx.rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &pi, NULL);
    st_free(ctx.rows);
    out->w = (int)w;
    out->h = (int)h;
    out->c = 3;
    out->px = ctx.px;
    return ST_OK;
}

/* ---- WebP ---- */

static enum st_status decode_webp(const uint8_t *data, size_t len, const struct st_image_info *info,
                                  struct st_image *out, struct st_error *err) {
    uint8_t *px = alloc_rgb(info->w, info->h, "WebP", err);
    if (!px) return err ? err->code : ST_ERR_NOMEM;
    size_t stride = (size_t)info->w * 3, size = stride * (size_t)info->h;
    if (!WebPDecodeRGBInto(data, len, px, size, (int)stride)) {
        st_free(px);
        return st_errorf(err, ST_ERR_FORMAT, "WebP: corrupt or truncated data (%zu bytes, %dx%d)",
                         len, info->w, info->h);
    }
    out->w = info->w;
    out->h = info->h;
    out->c = 3;
    out->px = px;
    return ST_OK;
}

enum st_status st_image_decode(const uint8_t *data, size_t len, const struct st_image_limits *lim,
                               struct st_image *out, struct st_error *err) {
    memset(out, 0, sizeof *out);
    struct st_image_info info;
    enum st_status rc = st_image_probe(data, len, &info, err);
    if (rc) return rc;
    if ((rc = img_check_limits(&info, lim, err))) return rc;
    switch (info.format) {
    case ST_IMAGE_JPEG: {
        struct img_part part;
        rc = img_jpeg_decode_part(data, len, lim, 8, 0, 0, info.w, info.h, NULL, &part, err);
        if (rc) return rc;
        *out = part.im;
        return ST_OK;
    }
    case ST_IMAGE_PNG: return decode_png(data, len, &info, out, err);
    case ST_IMAGE_WEBP: return decode_webp(data, len, &info, out, err);
    default: return st_errorf(err, ST_ERR_FORMAT, "unrecognised image format");
    }
}
