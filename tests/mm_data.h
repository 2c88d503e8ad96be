/* mm_data.h: multimodal WebDataset shards for the decoder tests: JPEG and PNG images (libjpeg,
 * libpng), WAV and FLAC clips (libsndfile) at 8, 16 and 22.05 kHz, each sample with a `cls`
 * field holding its id and a `txt` caption, plus a shard of bad samples (a 30000x30000 JPEG
 * header, a truncated FLAC, a PNG with a bad CRC, a zero-byte image) between good ones.
 * Contents are a pure function of the id, so any lost, repeated or reordered sample shows. */
#ifndef ST_TEST_MM_DATA_H
#define ST_TEST_MM_DATA_H

#include <jpeglib.h>
#include <math.h>
#include <png.h>
#include <sndfile.h>

#include "servers/helpers.h"

/* ---- audio into memory (libsndfile virtual I/O) ---- */
struct mm_mbuf {
    unsigned char *d;
    sf_count_t n, pos, cap;
};
static sf_count_t mm_len(void *u) {
    return ((struct mm_mbuf *)u)->n;
}
static sf_count_t mm_seek(sf_count_t off, int wh, void *u) {
    struct mm_mbuf *m = u;
    sf_count_t p = wh == SEEK_SET ? off : wh == SEEK_CUR ? m->pos + off : m->n + off;
    if (p < 0) return -1;
    m->pos = p;
    return p;
}
static sf_count_t mm_read(void *p, sf_count_t c, void *u) {
    struct mm_mbuf *m = u;
    if (m->pos >= m->n) return 0;
    if (c > m->n - m->pos) c = m->n - m->pos;
    memcpy(p, m->d + m->pos, (size_t)c);
    m->pos += c;
    return c;
}
static sf_count_t mm_write(const void *p, sf_count_t c, void *u) {
    struct mm_mbuf *m = u;
    if (m->pos + c > m->cap) {
        m->cap = (m->pos + c) * 2;
        m->d = realloc(m->d, (size_t)m->cap);
    }
    if (m->pos > m->n) memset(m->d + m->n, 0, (size_t)(m->pos - m->n));
    memcpy(m->d + m->pos, p, (size_t)c);
    m->pos += c;
    if (m->pos > m->n) m->n = m->pos;
    return c;
}
static sf_count_t mm_tell(void *u) {
    return ((struct mm_mbuf *)u)->pos;
}

/* A clip of sample `id`: a chirp plus a little deterministic noise, in format fmt. */
static inline void mm_audio(struct tbuf *out, int64_t id, int fmt) {
    static SF_VIRTUAL_IO io = {mm_len, mm_seek, mm_read, mm_write, mm_tell};
    static const int rates[] = {8000, 16000, 22050};
    int rate = rates[id % 3];
    int frames = (int)(rate * (0.3 + 0.1 * (double)(id % 7)));
    int channels = 1 + (int)(id % 2);
    struct mm_mbuf m = {0};
    SF_INFO info = {0};
    info.samplerate = rate;
    info.channels = channels;
    info.format = fmt;
    SNDFILE *f = sf_open_virtual(&io, SFM_WRITE, &info, &m);
    if (!f) return;
    float *buf = malloc(sizeof(float) * (size_t)frames * (size_t)channels);
    uint64_t x = (uint64_t)id * 0x9e3779b97f4a7c15ULL + 1;
    double f0 = 200.0 + (double)(id % 11) * 90.0;
    for (int i = 0; i < frames; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        double t = (double)i / rate;
        double v = 0.4 * sin(2 * 3.14159265358979 * (f0 + 300 * t) * t) +
                   0.02 * ((double)(x >> 11) / 9007199254740992.0 - 0.5);
        for (int c = 0; c < channels; c++)
            buf[(size_t)i * (size_t)channels + (size_t)c] = (float)(c ? 0.5 * v : v);
    }
    sf_writef_float(f, buf, frames);
    sf_close(f);
    free(buf);
    tb_add(out, m.d, (size_t)m.n);
    free(m.d);
}

/* ---- images into memory ---- */
static inline void mm_pixels(uint8_t *px, int w, int h, int64_t id) {
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = px + ((size_t)y * (size_t)w + (size_t)x) * 3;
            p[0] = (uint8_t)(x * 255 / (w > 1 ? w - 1 : 1));
            p[1] = (uint8_t)(y * 255 / (h > 1 ? h - 1 : 1));
            p[2] = (uint8_t)(((x / 8 + y / 8 + (int)id) % 2) ? 200 : 40);
        }
}

static inline void mm_jpeg(struct tbuf *out, int w, int h, int64_t id) {
    uint8_t *px = malloc((size_t)w * (size_t)h * 3);
    mm_pixels(px, w, h, id);
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr jerr;
    c.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&c);
    unsigned char *mem = NULL;
    unsigned long len = 0;
    jpeg_mem_dest(&c, &mem, &len);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 85, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = px + (size_t)c.next_scanline * (size_t)w * 3;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    tb_add(out, mem, len);
    free(mem);
    free(px);
}

static void mm_png_write(png_structp p, png_bytep d, png_size_t n) {
    tb_add(png_get_io_ptr(p), d, n);
}
static void mm_png_flush(png_structp p) {
    (void)p;
}

static inline void mm_png(struct tbuf *out, int w, int h, int64_t id) {
    uint8_t *px = malloc((size_t)w * (size_t)h * 3);
    mm_pixels(px, w, h, id);
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(p);
    png_set_write_fn(p, out, mm_png_write, mm_png_flush);
    png_set_IHDR(p, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(p, info);
    for (int y = 0; y < h; y++)
        png_write_row(p, px + (size_t)y * (size_t)w * 3);
    png_write_end(p, NULL);
    png_destroy_write_struct(&p, &info);
    free(px);
}

/* A baseline JPEG header claiming w x h, with no tables or scan after it. */
static inline size_t mm_jpeg_header(uint8_t *b, int w, int h) {
    size_t n = 0;
    b[n++] = 0xFF, b[n++] = 0xD8;
    b[n++] = 0xFF, b[n++] = 0xE0, b[n++] = 0, b[n++] = 16;
    memcpy(b + n, "JFIF\0\1\1\0\0\1\0\1\0\0", 14);
    n += 14;
    b[n++] = 0xFF, b[n++] = 0xC0, b[n++] = 0, b[n++] = 17, b[n++] = 8;
    b[n++] = (uint8_t)(h >> 8), b[n++] = (uint8_t)h, b[n++] = (uint8_t)(w >> 8),
    b[n++] = (uint8_t)w;
    b[n++] = 3;
    for (int c = 1; c <= 3; c++)
        b[n++] = (uint8_t)c, b[n++] = c == 1 ? 0x22 : 0x11, b[n++] = 0;
    b[n++] = 0xFF, b[n++] = 0xD9;
    return n;
}

/* ---- samples and shards ---- */

/* Kind of sample `id`: 0 jpg, 1 png, 2 flac, 3 wav. */
static inline int mm_kind(int64_t id) {
    return (int)((id * 7 + id / 5) % 4);
}

static inline void mm_sample(struct tbuf *tar, int64_t id, const char *prefix) {
    char name[160];
    struct tbuf f = {0};
    int kind = mm_kind(id);
    int w = 40 + (int)((id * 37) % 160), h = 30 + (int)((id * 53) % 120);
    static const char *const ext[] = {"jpg", "png", "flac", "wav"};
    if (kind == 0) mm_jpeg(&f, w, h, id);
    if (kind == 1) mm_png(&f, w, h, id);
    if (kind == 2) mm_audio(&f, id, SF_FORMAT_FLAC | SF_FORMAT_PCM_16);
    if (kind == 3) mm_audio(&f, id, SF_FORMAT_WAV | SF_FORMAT_PCM_16);
    snprintf(name, sizeof name, "%s%06lld.%s", prefix, (long long)id, ext[kind]);
    td_tar_member(tar, name, f.p, f.n);
    char txt[64];
    int k = snprintf(txt, sizeof txt, "%lld", (long long)id);
    snprintf(name, sizeof name, "%s%06lld.cls", prefix, (long long)id);
    td_tar_member(tar, name, txt, (size_t)k);
    k = snprintf(txt, sizeof txt, "a %s of sample %lld", kind < 2 ? "picture" : "recording",
                 (long long)id);
    snprintf(name, sizeof name, "%s%06lld.txt", prefix, (long long)id);
    td_tar_member(tar, name, txt, (size_t)k);
    free(f.p);
}

/* n_shards tar shards mm-000.tar ... of `per` samples each; ids 0..n_shards*per-1. */
static inline int mm_make_dataset(const char *dir, int n_shards, int per) {
    for (int s = 0; s < n_shards; s++) {
        struct tbuf t = {0};
        for (int i = 0; i < per; i++)
            mm_sample(&t, (int64_t)s * per + i, "");
        td_tar_end(&t);
        char path[4096];
        snprintf(path, sizeof path, "%s/mm-%03d.tar", dir, s);
        int bad = td_write(path, t.p, t.n);
        free(t.p);
        if (bad) return 1;
    }
    return 0;
}

/* The bad-sample shard: good ids 1000..1004 around four bad samples, keys bad-*. Order:
 * 1000, bad-huge (30000x30000 JPEG header), 1001, bad-trunc (half a FLAC), 1002, bad-crc
 * (PNG with a corrupted IHDR CRC), bad-empty (zero-byte jpg), 1003, 1004. */
static inline int mm_make_bad_shard(const char *path) {
    struct tbuf t = {0}, f = {0};
    mm_sample(&t, 1000, "");
    uint8_t hdr[64];
    size_t n = mm_jpeg_header(hdr, 30000, 30000);
    td_tar_member(&t, "bad-huge.jpg", hdr, n);
    td_tar_member(&t, "bad-huge.cls", "-1", 2);
    mm_sample(&t, 1001, "");
    mm_audio(&f, 5, SF_FORMAT_FLAC | SF_FORMAT_PCM_16);
    td_tar_member(&t, "bad-trunc.flac", f.p, f.n / 2);
    td_tar_member(&t, "bad-trunc.cls", "-1", 2);
    mm_sample(&t, 1002, "");
    f.n = 0;
    mm_png(&f, 50, 40, 7);
    f.p[29] ^= 0x55; /* IHDR's CRC: bytes 29..32 */
    td_tar_member(&t, "bad-crc.png", f.p, f.n);
    td_tar_member(&t, "bad-crc.cls", "-1", 2);
    td_tar_member(&t, "bad-empty.jpg", "", 0);
    td_tar_member(&t, "bad-empty.cls", "-1", 2);
    mm_sample(&t, 1003, "");
    mm_sample(&t, 1004, "");
    td_tar_end(&t);
    int bad = td_write(path, t.p, t.n);
    free(t.p);
    free(f.p);
    return bad;
}

#endif
