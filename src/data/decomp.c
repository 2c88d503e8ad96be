/* decomp.c: streaming gzip (zlib) and zstd decoding with frame boundaries reported.
 *
 * DESIGN: decomp_run stops at the end of each zstd frame or gzip member and says so
 * (frame_end), because a frame boundary that falls between two records is a place a resumed
 * stream can restart decoding from with a ranged read. Both libraries allocate through
 * st_malloc (zlib's zalloc, zstd's customMem) so the decoders are counted like everything else,
 * and zstd's window is capped (ZSTD_d_windowLogMax) so a hostile frame cannot ask for 2 GiB. */
#define ZSTD_STATIC_LINKING_ONLY
#include <stdio.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "data/internal.h"

enum comp decomp_sniff(const uint8_t *p, size_t n) {
    if (n >= 2 && p[0] == 0x1f && p[1] == 0x8b) return COMP_GZIP;
    if (n >= 4 && p[0] == 0x28 && p[1] == 0xb5 && p[2] == 0x2f && p[3] == 0xfd) return COMP_ZSTD;
    /* a zstd skippable frame (magic 0x184D2A50-5F): pzstd starts every frame with one */
    if (n >= 4 && (p[0] & 0xf0) == 0x50 && p[1] == 0x2a && p[2] == 0x4d && p[3] == 0x18)
        return COMP_ZSTD;
    return COMP_NONE;
}

static int ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

enum comp comp_from_name(const char *name) {
    if (ends_with(name, ".gz") || ends_with(name, ".tgz") || ends_with(name, ".gzip"))
        return COMP_GZIP;
    if (ends_with(name, ".zst") || ends_with(name, ".zstd") || ends_with(name, ".tzst"))
        return COMP_ZSTD;
    return COMP_NONE;
}

size_t decomp_mem(enum comp kind, int wlog_max) {
    if (kind == COMP_GZIP) return 64 * 1024;
    if (kind == COMP_ZSTD) return ZSTD_estimateDStreamSize((size_t)1 << wlog_max);
    return 0;
}

static voidpf z_alloc(voidpf opaque, uInt items, uInt size) {
    (void)opaque;
    return st_calloc(items, size);
}
static void z_free(voidpf opaque, voidpf p) {
    (void)opaque;
    st_free(p);
}
static void *zs_alloc(void *opaque, size_t n) {
    (void)opaque;
    return st_malloc(n);
}
static void zs_free(void *opaque, void *p) {
    (void)opaque;
    st_free(p);
}

enum st_status decomp_init(struct decomp *d, enum comp kind, int wlog_max, uint64_t in_base,
                           const char *what, struct st_error *err) {
    memset(d, 0, sizeof *d);
    d->kind = kind;
    d->wlog_max = wlog_max;
    d->in_base = in_base;
    if (kind == COMP_GZIP) {
        z_stream *z = st_calloc(1, sizeof *z);
        if (!z) return st_errorf(err, ST_ERR_NOMEM, "%s: cannot allocate a gzip decoder", what);
        z->zalloc = z_alloc;
        z->zfree = z_free;
        if (inflateInit2(z, 16 + MAX_WBITS) != Z_OK) {
            st_free(z);
            return st_errorf(err, ST_ERR_NOMEM, "%s: cannot start a gzip decoder", what);
        }
        d->z = z;
    } else if (kind == COMP_ZSTD) {
        ZSTD_customMem mem = {zs_alloc, zs_free, NULL};
        ZSTD_DCtx *zs = ZSTD_createDCtx_advanced(mem);
        if (!zs) return st_errorf(err, ST_ERR_NOMEM, "%s: cannot allocate a zstd decoder", what);
        ZSTD_DCtx_setParameter(zs, ZSTD_d_windowLogMax, wlog_max);
        d->zs = zs;
    }
    return ST_OK;
}

enum st_status decomp_run(struct decomp *d, const uint8_t *in, size_t in_len, size_t *in_used,
                          uint8_t *out, size_t out_cap, size_t *out_len, int *frame_end,
                          const char *what, struct st_error *err) {
    *frame_end = 0;
    *in_used = 0;
    *out_len = 0;
    if (d->kind == COMP_GZIP) {
        z_stream *z = d->z;
        /* zero bytes after a member (or where a resumed read starts: a member boundary) are
         * padding, as gzip(1) takes them; a file that starts with them is not gzip */
        if (!d->in_frame && (d->ended || d->in_base > 0)) {
            size_t k = 0;
            while (k < in_len && in[k] == 0) k++;
            if (k) {
                *in_used = k;
                d->in_total += k;
                return ST_OK;
            }
        }
        z->next_in = (Bytef *)in;
        z->avail_in = (uInt)(in_len > 0x40000000u ? 0x40000000u : in_len);
        z->next_out = out;
        z->avail_out = (uInt)(out_cap > 0x40000000u ? 0x40000000u : out_cap);
        uInt in0 = z->avail_in, out0 = z->avail_out;
        int r = inflate(z, Z_NO_FLUSH);
        *in_used = in0 - z->avail_in;
        *out_len = out0 - z->avail_out;
        uint64_t at = d->in_base + d->in_total + *in_used;
        d->in_total += *in_used;
        if (*in_used || *out_len) d->in_frame = 1;
        if (r == Z_STREAM_END) {
            inflateReset(z);
            d->in_frame = 0;
            *frame_end = 1;
            d->ended = 1;
            return ST_OK;
        }
        if (r == Z_OK || r == Z_BUF_ERROR) return ST_OK;
        return st_errorf(err, ST_ERR_FORMAT, "%s: corrupt gzip data near compressed byte %llu: %s",
                         what, (unsigned long long)at,
                         z->msg ? z->msg : (r == Z_MEM_ERROR ? "out of memory" : "bad data"));
    }
    if (d->kind == COMP_ZSTD) {
        ZSTD_inBuffer ib = {in, in_len, 0};
        ZSTD_outBuffer ob = {out, out_cap, 0};
        size_t r = ZSTD_decompressStream(d->zs, &ob, &ib);
        *in_used = ib.pos;
        *out_len = ob.pos;
        uint64_t at = d->in_base + d->in_total + ib.pos;
        d->in_total += ib.pos;
        if (ZSTD_isError(r)) {
            if (ZSTD_getErrorCode(r) == ZSTD_error_frameParameter_windowTooLarge)
                return st_errorf(err, ST_ERR_NOMEM,
                                 "%s: zstd frame needs a window larger than the %d MiB this "
                                 "stream's budget allows per shard; raise --stream-memory, or "
                                 "lower --shuffle-shards or --prefetch-shards",
                                 what, (1 << d->wlog_max) >> 20);
            /* zstd does not say where in its input it failed (ib.pos stays put) */
            return st_errorf(err, ST_ERR_FORMAT,
                             "%s: corrupt zstd data in compressed bytes %llu to %llu: %s", what,
                             (unsigned long long)at, (unsigned long long)(at + in_len),
                             ZSTD_getErrorName(r));
        }
        if (ib.pos || ob.pos) d->in_frame = 1;
        if (r == 0 && d->in_frame) { /* frame decoded and fully flushed */
            d->in_frame = 0;
            *frame_end = 1;
            d->ended = 1;
        }
        return ST_OK;
    }
    /* no compression: copy */
    size_t n = in_len < out_cap ? in_len : out_cap;
    memcpy(out, in, n);
    *in_used = *out_len = n;
    d->in_total += n;
    return ST_OK;
}

enum st_status decomp_finish(struct decomp *d, const char *what, struct st_error *err) {
    if (d->kind != COMP_NONE && d->in_frame)
        return st_errorf(err, ST_ERR_FORMAT,
                         "%s: truncated %s data: the stream ends inside a frame at compressed "
                         "byte %llu",
                         what, d->kind == COMP_GZIP ? "gzip" : "zstd",
                         (unsigned long long)(d->in_base + d->in_total));
    return ST_OK;
}

void decomp_free(struct decomp *d) {
    if (d->z) {
        inflateEnd(d->z);
        st_free(d->z);
    }
    if (d->zs) ZSTD_freeDCtx(d->zs);
    d->z = d->zs = NULL;
}
