/* audio.c: encoded audio in memory -> mono float32 (libsndfile virtual I/O), resampling (libsoxr).
 *
 * DESIGN (see include/streamtune/audio.h for the contract)
 * - One path for probe and decode: open the header through SF_VIRTUAL_IO over the caller's bytes
 *   and check rate, channels and duration against the limits before any frame is decoded.
 * - Truncation is caught by comparing decoded frames with the frames the header declares (FLAC
 *   STREAMINFO, OGG last granule, MP3 Xing/estimate). libsndfile silently shortens a WAV whose
 *   data chunk runs past the end, so WAV gets its own small RIFF walk (wav_declared_bytes).
 * - Output memory grows geometrically with the frames decoded (never sized from the header), so a
 *   header that lies about its length cannot make us allocate. A header that gives no length is
 *   held to max_seconds while decoding.
 * - Samples must be finite and |x| <= 1e6 (float WAV can hold anything): a NaN would poison a
 *   training step and a 1e20 would overflow the power spectrum.
 * - libsndfile keeps the text of a failed open in a global: when two threads fail at once, the
 *   "(libsndfile: ...)" part of one message may describe the other's file. Our own part is exact.
 */
#include <math.h>
#include <sndfile.h>
#include <soxr.h>
#include <stdio.h>
#include <string.h>

#include "streamtune/audio.h"

#define AUDIO_BLOCK_FLOATS 16384 /* interleaved floats per sf_readf_float call */
#define AUDIO_SAMPLE_MAX 1e6f

/* ---- virtual I/O over a read-only buffer ---- */
struct vmem {
    const unsigned char *data;
    sf_count_t size, pos;
};

static sf_count_t vm_len(void *u) { return ((struct vmem *)u)->size; }

static sf_count_t vm_seek(sf_count_t off, int whence, void *u) {
    struct vmem *m = u;
    sf_count_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? m->pos : m->size;
    if ((off > 0 && base > INT64_MAX - off) || base + off < 0) return -1;
    m->pos = base + off;
    return m->pos;
}

static sf_count_t vm_read(void *ptr, sf_count_t count, void *u) {
    struct vmem *m = u;
    if (count <= 0 || m->pos >= m->size) return 0;
    if (count > m->size - m->pos) count = m->size - m->pos;
    memcpy(ptr, m->data + m->pos, (size_t)count);
    m->pos += count;
    return count;
}

static sf_count_t vm_write(const void *ptr, sf_count_t count, void *u) {
    (void)ptr, (void)count, (void)u;
    return 0;
}

static sf_count_t vm_tell(void *u) { return ((struct vmem *)u)->pos; }

static SF_VIRTUAL_IO vm_io = {vm_len, vm_seek, vm_read, vm_write, vm_tell};

/* ---- helpers ---- */
static const char *nm(const char *name) { return name && *name ? name : "audio"; }

static void limits_resolve(const struct st_audio_limits *in, struct st_audio_limits *out) {
    struct st_audio_limits l = {0};
    if (in) l = *in;
    if (!(l.max_seconds > 0)) l.max_seconds = ST_AUDIO_MAX_SECONDS;
    if (l.max_rate <= 0) l.max_rate = ST_AUDIO_MAX_RATE;
    if (l.max_channels <= 0) l.max_channels = ST_AUDIO_MAX_CHANNELS;
    *out = l;
}

static const char *format_name(int f) {
    switch (f & SF_FORMAT_TYPEMASK) {
    case SF_FORMAT_WAV: case SF_FORMAT_WAVEX: return "WAV";
    case SF_FORMAT_RF64: return "RF64";
    case SF_FORMAT_W64: return "W64";
    case SF_FORMAT_FLAC: return "FLAC";
    case SF_FORMAT_OGG: return (f & SF_FORMAT_SUBMASK) == SF_FORMAT_OPUS ? "OGG/Opus" : "OGG";
    case SF_FORMAT_MPEG:
        switch (f & SF_FORMAT_SUBMASK) {
        case SF_FORMAT_MPEG_LAYER_I: return "MP1";
        case SF_FORMAT_MPEG_LAYER_II: return "MP2";
        default: return "MP3";
        }
    case SF_FORMAT_AIFF: return "AIFF";
    case SF_FORMAT_AU: return "AU";
    case SF_FORMAT_CAF: return "CAF";
    default: return "audio";
    }
}

int st_audio_have_mp3(void) {
    static int cached = -1; /* benign race: every thread computes the same value */
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v >= 0) return v;
    int count = 0;
    v = 0;
    sf_command(NULL, SFC_GET_FORMAT_MAJOR_COUNT, &count, sizeof count);
    for (int i = 0; i < count; i++) {
        SF_FORMAT_INFO fi = {0};
        fi.format = i;
        if (sf_command(NULL, SFC_GET_FORMAT_MAJOR, &fi, sizeof fi) == 0 &&
            (fi.format & SF_FORMAT_TYPEMASK) == SF_FORMAT_MPEG)
            v = 1;
    }
    __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    return v;
}

/* What the first bytes look like, for messages about files libsndfile refused. */
static const char *sniff(const unsigned char *p, size_t n) {
    if (n >= 12 && !memcmp(p, "RIFF", 4) && !memcmp(p + 8, "WAVE", 4)) return "WAV";
    if (n >= 4 && !memcmp(p, "fLaC", 4)) return "FLAC";
    if (n >= 4 && !memcmp(p, "OggS", 4)) return "OGG";
    if (n >= 3 && !memcmp(p, "ID3", 3)) return "MP3";
    if (n >= 2 && p[0] == 0xff && (p[1] & 0xe0) == 0xe0 && (p[1] & 0x06) != 0) return "MP3";
    return NULL;
}

static uint32_t rd_le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* For a RIFF/WAVE file: the data chunk's declared size and the bytes present after its header.
 * Returns 0 when found; placeholders of streaming writers (0, >= 0x7ffff000) count as absent. */
static int wav_declared_bytes(const unsigned char *p, size_t n, uint64_t *declared,
                              uint64_t *present) {
    if (n < 12 || memcmp(p, "RIFF", 4) || memcmp(p + 8, "WAVE", 4)) return -1;
    size_t off = 12;
    for (int i = 0; i < 256 && off <= n - 8 && n >= 8; i++) {
        uint32_t sz = rd_le32(p + off + 4);
        if (!memcmp(p + off, "data", 4)) {
            if (sz == 0 || sz >= 0x7ffff000u) return -1;
            *declared = sz;
            *present = n - off - 8;
            return 0;
        }
        uint64_t next = (uint64_t)off + 8 + sz + (sz & 1);
        if (next > n) return -1;
        off = (size_t)next;
    }
    return -1;
}

/* Open the header and check it. On ST_OK *sfp is open (the caller closes it). */
static enum st_status open_checked(const void *data, size_t size, const char *name,
                                   const struct st_audio_limits *lim_in, struct vmem *vm,
                                   SNDFILE **sfp, SF_INFO *si, struct st_audio_info *info,
                                   struct st_error *err) {
    const char *n = nm(name);
    struct st_audio_limits lim;
    limits_resolve(lim_in, &lim);
    *sfp = NULL;
    memset(info, 0, sizeof *info);
    if (!data || size == 0) return st_errorf(err, ST_ERR_FORMAT, "%s: empty input (0 bytes)", n);
    if ((uint64_t)size > (uint64_t)INT64_MAX)
        return st_errorf(err, ST_ERR_NOMEM, "%s: input of %zu bytes is too large", n, size);
    vm->data = data;
    vm->size = (sf_count_t)size;
    vm->pos = 0;
    memset(si, 0, sizeof *si);
    SNDFILE *sf = sf_open_virtual(&vm_io, SFM_READ, si, vm);
    if (!sf) {
        const unsigned char *p = data;
        const char *kind = sniff(p, size);
        if (kind && !strcmp(kind, "MP3") && !st_audio_have_mp3())
            return st_errorf(err, ST_ERR_UNSUPPORTED,
                             "%s: MP3 input, but this libsndfile cannot decode MP3 (libsndfile >= "
                             "1.1 built with mpg123 is needed)",
                             n);
        if (kind)
            return st_errorf(err, ST_ERR_FORMAT, "%s: damaged or truncated %s header (%zu bytes; "
                             "libsndfile: %s)", n, kind, size, sf_strerror(NULL));
        return st_errorf(err, ST_ERR_FORMAT,
                         "%s: not a recognised audio format (%zu bytes, first bytes %02x %02x %02x "
                         "%02x; libsndfile: %s)",
                         n, size, p[0], size > 1 ? p[1] : 0, size > 2 ? p[2] : 0,
                         size > 3 ? p[3] : 0, sf_strerror(NULL));
    }
    info->format = format_name(si->format);
    info->sf_format = si->format;
    info->channels = si->channels;
    info->rate = si->samplerate;
    int known = si->frames >= 0 && si->frames != SF_COUNT_MAX;
    info->frames = known ? (int64_t)si->frames : -1;
    info->seconds = known && si->samplerate > 0 ? (double)si->frames / si->samplerate : -1;
    enum st_status rc = ST_OK;
    if (si->channels < 1)
        rc = st_errorf(err, ST_ERR_FORMAT, "%s: %s header gives %d channels", n, info->format,
                       si->channels);
    else if (si->channels > lim.max_channels)
        rc = st_errorf(err, ST_ERR_NOMEM, "%s: %d channels exceed the cap of %d", n, si->channels,
                       lim.max_channels);
    else if (si->samplerate < 1)
        rc = st_errorf(err, ST_ERR_FORMAT, "%s: %s header gives a sample rate of %d Hz", n,
                       info->format, si->samplerate);
    else if (si->samplerate > lim.max_rate)
        rc = st_errorf(err, ST_ERR_NOMEM, "%s: sample rate %d Hz exceeds the cap of %d Hz", n,
                       si->samplerate, lim.max_rate);
    else if (known && info->seconds > lim.max_seconds)
        rc = st_errorf(err, ST_ERR_NOMEM,
                       "%s: %.1f s of audio (%s header: %lld frames at %d Hz) exceeds "
                       "--max-audio-seconds %g; refused before decoding",
                       n, info->seconds, info->format, (long long)si->frames, si->samplerate,
                       lim.max_seconds);
    if (rc) {
        sf_close(sf);
        return rc;
    }
    *sfp = sf;
    return ST_OK;
}

enum st_status st_audio_probe(const void *data, size_t size, const char *name,
                              const struct st_audio_limits *lim, struct st_audio_info *info,
                              struct st_error *err) {
    struct vmem vm;
    SNDFILE *sf;
    SF_INFO si;
    struct st_audio_info tmp;
    if (!info) info = &tmp;
    enum st_status rc = open_checked(data, size, name, lim, &vm, &sf, &si, info, err);
    if (rc) return rc;
    sf_close(sf);
    return ST_OK;
}

void st_audio_free(struct st_audio *a) {
    if (!a) return;
    st_free(a->pcm);
    a->pcm = NULL;
    a->n = 0;
    a->rate = 0;
}

enum st_status st_audio_decode_native(const void *data, size_t size, const char *name,
                                      const struct st_audio_limits *lim_in, struct st_audio *out,
                                      struct st_error *err) {
    const char *n = nm(name);
    memset(out, 0, sizeof *out);
    struct st_audio_limits lim;
    limits_resolve(lim_in, &lim);
    struct vmem vm;
    SNDFILE *sf;
    SF_INFO si;
    struct st_audio_info info;
    enum st_status rc = open_checked(data, size, name, &lim, &vm, &sf, &si, &info, err);
    if (rc) return rc;

    const int ch = si.channels;
    const int64_t cap = (int64_t)(lim.max_seconds * si.samplerate); /* frames allowed */
    sf_count_t block = AUDIO_BLOCK_FLOATS / ch;
    if (block < 64) block = 64;
    float *buf = st_malloc((size_t)block * (size_t)ch * sizeof *buf);
    size_t capacity = info.frames >= 0 && info.frames < (1 << 20) ? (size_t)info.frames : 1 << 20;
    if (capacity < 1024) capacity = 1024;
    float *pcm = st_malloc(capacity * sizeof *pcm);
    size_t got = 0;
    if (!buf || !pcm) {
        rc = st_errorf(err, ST_ERR_NOMEM, "%s: out of memory decoding audio", n);
        goto fail;
    }
    const float inv = 1.0f / (float)ch;
    for (;;) {
        sf_count_t r = sf_readf_float(sf, buf, block);
        if (r <= 0) break;
        if ((int64_t)got + r > cap) {
            if (info.frames < 0)
                rc = st_errorf(err, ST_ERR_NOMEM,
                               "%s: audio exceeds --max-audio-seconds %g while decoding (the %s "
                               "header does not state its length)",
                               n, lim.max_seconds, info.format);
            else
                rc = st_errorf(err, ST_ERR_NOMEM,
                               "%s: audio exceeds --max-audio-seconds %g while decoding (past the "
                               "%lld frames its %s header declares)",
                               n, lim.max_seconds, (long long)info.frames, info.format);
            goto fail;
        }
        if (got + (size_t)r > capacity) {
            size_t nc = capacity * 2;
            while (nc < got + (size_t)r) nc *= 2;
            float *p = st_realloc(pcm, nc * sizeof *pcm);
            if (!p) {
                rc = st_errorf(err, ST_ERR_NOMEM, "%s: out of memory decoding audio", n);
                goto fail;
            }
            pcm = p;
            capacity = nc;
        }
        float *dst = pcm + got;
        if (ch == 1) {
            memcpy(dst, buf, (size_t)r * sizeof *dst);
        } else if (ch == 2) {
            for (sf_count_t i = 0; i < r; i++) dst[i] = (buf[2 * i] + buf[2 * i + 1]) * 0.5f;
        } else {
            for (sf_count_t i = 0; i < r; i++) {
                float s = 0;
                for (int c = 0; c < ch; c++) s += buf[i * ch + c];
                dst[i] = s * inv;
            }
        }
        for (sf_count_t i = 0; i < r; i++) {
            if (!(fabsf(dst[i]) <= AUDIO_SAMPLE_MAX)) {
                rc = st_errorf(err, ST_ERR_FORMAT,
                               "%s: sample %lld is %g (non-finite or beyond +-1e6); refused", n,
                               (long long)(got + (size_t)i), (double)dst[i]);
                goto fail;
            }
        }
        got += (size_t)r;
    }
    if (sf_error(sf)) {
        rc = st_errorf(err, ST_ERR_FORMAT, "%s: %s decoding failed after %zu frames: %s", n,
                       info.format, got, sf_strerror(sf));
        goto fail;
    }
    if (info.frames >= 0 && (int64_t)got < info.frames) {
        int64_t missing = info.frames - (int64_t)got;
        int mp3 = (si.format & SF_FORMAT_TYPEMASK) == SF_FORMAT_MPEG;
        if (!mp3 || (missing > 2304 && missing > info.frames / 20)) {
            rc = st_errorf(err, ST_ERR_FORMAT,
                           "%s: truncated or damaged %s: the header declares %lld frames, only "
                           "%zu decode (%zu bytes of input)",
                           n, info.format, (long long)info.frames, got, size);
            goto fail;
        }
    }
    uint64_t declared, present;
    if (((si.format & SF_FORMAT_TYPEMASK) == SF_FORMAT_WAV ||
         (si.format & SF_FORMAT_TYPEMASK) == SF_FORMAT_WAVEX) &&
        wav_declared_bytes(data, size, &declared, &present) == 0 && declared > present) {
        rc = st_errorf(err, ST_ERR_FORMAT,
                       "%s: truncated WAV: the data chunk declares %llu bytes, %llu are present", n,
                       (unsigned long long)declared, (unsigned long long)present);
        goto fail;
    }
    if (got == 0) {
        rc = st_errorf(err, ST_ERR_FORMAT, "%s: no audio frames decoded (empty, truncated or "
                       "damaged %s)", n, info.format);
        goto fail;
    }
    if (capacity > got + got / 8) {
        float *p = st_realloc(pcm, got * sizeof *pcm);
        if (p) pcm = p;
    }
    st_free(buf);
    sf_close(sf);
    out->pcm = pcm;
    out->n = got;
    out->rate = si.samplerate;
    return ST_OK;
fail:
    st_free(buf);
    st_free(pcm);
    sf_close(sf);
    return rc;
}

enum st_status st_audio_resample(struct st_audio *a, int rate, const char *name,
                                 struct st_error *err) {
    const char *n = nm(name);
    if (rate <= 0 || a->rate <= 0)
        return st_errorf(err, ST_ERR_ARG, "%s: resampling %d Hz to %d Hz", n, a->rate, rate);
    if (a->rate == rate || a->n == 0) {
        a->rate = rate;
        return ST_OK;
    }
    double olen_d = floor((double)a->n * rate / a->rate + 0.5);
    if (olen_d < 1) olen_d = 1;
    if (olen_d > (double)(SIZE_MAX / sizeof(float)) / 2)
        return st_errorf(err, ST_ERR_NOMEM, "%s: resampled audio too large", n);
    size_t olen = (size_t)olen_d;
    float *o = st_malloc(olen * sizeof *o);
    if (!o) return st_errorf(err, ST_ERR_NOMEM, "%s: out of memory resampling", n);
    soxr_io_spec_t io = soxr_io_spec(SOXR_FLOAT32_I, SOXR_FLOAT32_I);
    soxr_quality_spec_t q = soxr_quality_spec(SOXR_HQ, 0);
    size_t idone = 0, odone = 0;
    soxr_error_t e =
        soxr_oneshot(a->rate, rate, 1, a->pcm, a->n, &idone, o, olen, &odone, &io, &q, NULL);
    if (e) {
        st_free(o);
        return st_errorf(err, ST_ERR_FORMAT, "%s: resampling %d Hz to %d Hz failed: %s", n,
                         a->rate, rate, e);
    }
    if (odone < olen) memset(o + odone, 0, (olen - odone) * sizeof *o);
    st_free(a->pcm);
    a->pcm = o;
    a->n = olen;
    a->rate = rate;
    return ST_OK;
}

enum st_status st_audio_decode(const void *data, size_t size, const char *name,
                               const struct st_audio_limits *lim, struct st_audio *out,
                               struct st_error *err) {
    enum st_status rc = st_audio_decode_native(data, size, name, lim, out, err);
    if (rc) return rc;
    rc = st_audio_resample(out, ST_AUDIO_RATE, name, err);
    if (rc) st_audio_free(out);
    return rc;
}
