/* decode.c: the sample decoder over st_stream: a reader thread fills a ring with copies of the
 * stream's samples, decode threads turn image and audio fields into tensors, the consumer takes
 * entries in ring (= stream) order. Options, resume records and statistics are here too.
 *
 * DESIGN (see include/streamtune/decode.h for the contract)
 * - Ring. Entries have sequence numbers; [head, tail) are live, ring[seq % cap]. The reader
 *   appends at tail while tail - head < cap; decode threads claim entries at next_decode in
 *   order (several decode at once, each owning its entry); the consumer waits for the entry at
 *   head to be DONE and hands it out, keeping it ("held") until its next call. One mutex (mu)
 *   guards the indices and states; cv_space wakes the reader, cv_work the decode threads,
 *   cv_done the consumer.
 * - Epoch ends travel through the ring as END entries, so the reader reads on into the next
 *   epoch while the consumer finishes this one; each entry carries the epoch it belongs to.
 * - State. A second mutex (smu) is held by the reader around st_stream_next plus the push of
 *   the entry it made, and by st_decoder_state, which thus sees a stream position and a ring
 *   that agree: the record is the stream state plus every entry not yet handed out (and, after
 *   a resume, the replayed entries not yet pushed). Lock order: smu, then mu.
 * - Bad samples are decided by the decode threads but counted, logged and skipped (or turned
 *   into the decoder's error) by the consumer, in order: counts do not depend on threads. */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/internal.h"
#include "streamtune/decode.h"

/* ---- options ---- */

void st_decode_options_init(struct st_decode_options *o) {
    memset(o, 0, sizeof *o);
    o->decode = 1;
    o->threads = 2;
    o->ahead = 0; /* 4 * threads + 2 */
    o->on_bad = ST_BAD_SAMPLE_FAIL;
    o->dtype = ST_F32;
    o->transform = ST_DECODE_CLIP;
    o->crop_scale[0] = 0.08f;
    o->crop_scale[1] = 1.0f;
    o->mel_bins = 80;
}

const char st_decode_options_help[] =
    "decode options (data cat/bench --decode, data preview):\n"
    "  --decode-threads N     decode threads (default 2)\n"
    "  --decode-ahead N       decoded samples in flight (default 4 x threads + 2)\n"
    "  --on-bad-sample fail|skip   a sample that does not decode stops the stream (fail,\n"
    "                         default) or is dropped, counted and named in --stats (skip)\n"
    "  --transform clip|siglip|siglip-384|none   image preset (default clip; none: [0,1] pixels)\n"
    "  --image-size N         output size (default: the preset's)\n"
    "  --random-crop          RandomResizedCrop (--crop-scale MIN,MAX, default 0.08,1)\n"
    "  --flip P               horizontal flip probability    --color-jitter B,C,S,H\n"
    "  --dtype f32|bf16       tensor type (default f32)      --decode-seed N (default --seed)\n"
    "  --max-image-pixels N   refuse larger images before decoding (default 89478485)\n"
    "  --max-audio-seconds S  refuse longer audio before decoding (default 600)\n"
    "  --mel-bins 80|128      log-mel bins (default 80)\n"
    "  --audio-gain-db MIN,MAX  --audio-shift SAMPLES  --freq-masks N,W  --time-masks N,W\n";

/* "a,b" (or "a,b,c,d") into n doubles. */
static int parse_list(const char *s, double *out, int n) {
    char buf[128];
    if (!s || strlen(s) >= sizeof buf) return 1;
    snprintf(buf, sizeof buf, "%s", s);
    char *p = buf;
    for (int i = 0; i < n; i++) {
        char *c = strchr(p, ',');
        if ((c == NULL) != (i == n - 1)) return 1;
        if (c) *c = '\0';
        if (st_parse_f64(p, &out[i])) return 1;
        p = c ? c + 1 : p;
    }
    return 0;
}

enum st_status st_decode_option_set(struct st_decode_options *o, const char *name,
                                    const char *value, int *known, struct st_error *err) {
    *known = 1;
    int64_t v;
    double d[4];
#define LIST(n, what)                                                                              \
    do {                                                                                           \
        OPT_NEED();                                                                                \
        if (parse_list(value, d, n))                                                               \
            return st_errorf(err, ST_ERR_ARG, "--%s: expected %s, got '%s'", name, what, value);   \
    } while (0)
    if (!strcmp(name, "decode-threads")) OPT_INT(o->threads, 1, 256);
    if (!strcmp(name, "decode-ahead")) OPT_INT(o->ahead, 1, 65536);
    if (!strcmp(name, "decode-seed")) {
        OPT_NEED();
        char *end;
        unsigned long long u = strtoull(value, &end, 10);
        if (!*value || *end || value[0] == '-')
            return st_errorf(err, ST_ERR_ARG,
                             "--decode-seed: expected a non-negative integer, got '%s'", value);
        o->seed = u;
        o->seed_set = 1;
        return ST_OK;
    }
    if (!strcmp(name, "on-bad-sample")) {
        OPT_NEED();
        if (!strcmp(value, "skip"))
            o->on_bad = ST_BAD_SAMPLE_SKIP;
        else if (!strcmp(value, "fail"))
            o->on_bad = ST_BAD_SAMPLE_FAIL;
        else
            return st_errorf(err, ST_ERR_ARG, "--on-bad-sample: expected skip or fail, got '%s'",
                             value);
        return ST_OK;
    }
    if (!strcmp(name, "dtype")) {
        OPT_NEED();
        if (!strcmp(value, "f32") || !strcmp(value, "float32"))
            o->dtype = ST_F32;
        else if (!strcmp(value, "bf16") || !strcmp(value, "bfloat16"))
            o->dtype = ST_BF16;
        else
            return st_errorf(err, ST_ERR_ARG, "--dtype: expected f32 or bf16, got '%s'", value);
        return ST_OK;
    }
    if (!strcmp(name, "transform")) {
        OPT_NEED();
        if (!strcmp(value, "clip"))
            o->transform = ST_DECODE_CLIP;
        else if (!strcmp(value, "siglip") || !strcmp(value, "siglip-224"))
            o->transform = ST_DECODE_SIGLIP;
        else if (!strcmp(value, "siglip-384"))
            o->transform = ST_DECODE_SIGLIP_384;
        else if (!strcmp(value, "none"))
            o->transform = ST_DECODE_NONE;
        else
            return st_errorf(err, ST_ERR_ARG,
                             "--transform: expected clip, siglip, siglip-384 or none, got '%s'",
                             value);
        return ST_OK;
    }
    if (!strcmp(name, "image-size")) OPT_INT(o->image_size, 1, 8192);
    if (!strcmp(name, "random-crop")) {
        o->random_crop = 1;
        return ST_OK;
    }
    if (!strcmp(name, "crop-scale")) {
        LIST(2, "MIN,MAX with 0 < MIN <= MAX <= 1");
        if (!(d[0] > 0 && d[0] <= d[1] && d[1] <= 1))
            return st_errorf(err, ST_ERR_ARG,
                             "--crop-scale: expected 0 < MIN <= MAX <= 1, got '%s'", value);
        o->crop_scale[0] = (float)d[0];
        o->crop_scale[1] = (float)d[1];
        o->random_crop = 1;
        return ST_OK;
    }
    if (!strcmp(name, "flip")) {
        OPT_NEED();
        if (st_parse_f64(value, d) || !(d[0] >= 0 && d[0] <= 1))
            return st_errorf(err, ST_ERR_ARG, "--flip: expected a probability, got '%s'", value);
        o->flip_p = (float)d[0];
        return ST_OK;
    }
    if (!strcmp(name, "color-jitter")) {
        LIST(4, "B,C,S,H (each >= 0, H <= 0.5)");
        if (!(d[0] >= 0 && d[1] >= 0 && d[2] >= 0 && d[3] >= 0 && d[3] <= 0.5))
            return st_errorf(err, ST_ERR_ARG,
                             "--color-jitter: expected B,C,S,H >= 0 with H <= 0.5, "
                             "got '%s'",
                             value);
        for (int i = 0; i < 4; i++)
            o->jitter[i] = (float)d[i];
        return ST_OK;
    }
    if (!strcmp(name, "max-image-pixels")) {
        OPT_NEED();
        if (st_parse_i64(value, 1, INT64_MAX, &v))
            return st_errorf(err, ST_ERR_ARG, "--max-image-pixels: expected a count, got '%s'",
                             value);
        o->max_image_pixels = (uint64_t)v;
        return ST_OK;
    }
    if (!strcmp(name, "max-audio-seconds")) {
        OPT_NEED();
        if (st_parse_f64(value, d) || !(d[0] > 0 && d[0] <= 1e6))
            return st_errorf(err, ST_ERR_ARG, "--max-audio-seconds: expected seconds, got '%s'",
                             value);
        o->max_audio_seconds = d[0];
        return ST_OK;
    }
    if (!strcmp(name, "mel-bins")) OPT_INT(o->mel_bins, 1, 256);
    if (!strcmp(name, "audio-gain-db")) {
        LIST(2, "MIN,MAX in dB");
        if (!(d[0] <= d[1] && d[0] >= -120 && d[1] <= 120))
            return st_errorf(err, ST_ERR_ARG, "--audio-gain-db: expected MIN <= MAX, got '%s'",
                             value);
        o->audio_aug.gain_db_min = (float)d[0];
        o->audio_aug.gain_db_max = (float)d[1];
        return ST_OK;
    }
    if (!strcmp(name, "audio-shift")) OPT_INT(o->audio_aug.shift_max, 0, ST_AUDIO_CHUNK);
    if (!strcmp(name, "freq-masks") || !strcmp(name, "time-masks")) {
        LIST(2, "COUNT,WIDTH");
        if (!(d[0] >= 0 && d[0] <= 64 && d[1] >= 0 && d[1] <= ST_AUDIO_FRAMES) ||
            d[0] != (int)d[0] || d[1] != (int)d[1])
            return st_errorf(err, ST_ERR_ARG, "--%s: expected COUNT,WIDTH integers, got '%s'", name,
                             value);
        if (name[0] == 'f') {
            o->audio_aug.freq_masks = (int)d[0];
            o->audio_aug.freq_mask_max = (int)d[1];
        } else {
            o->audio_aug.time_masks = (int)d[0];
            o->audio_aug.time_mask_max = (int)d[1];
        }
        return ST_OK;
    }
#undef LIST
    *known = 0;
    return st_errorf(err, ST_ERR_ARG, "unknown option --%s", name);
}

enum st_status st_decode_image_transform(const struct st_decode_options *o,
                                         struct st_image_transform *t, int *native,
                                         struct st_error *err) {
    *native = 0;
    enum st_image_preset p = o->transform == ST_DECODE_SIGLIP       ? ST_IMAGE_PRESET_SIGLIP_224
                             : o->transform == ST_DECODE_SIGLIP_384 ? ST_IMAGE_PRESET_SIGLIP_384
                                                                    : ST_IMAGE_PRESET_CLIP;
    if (o->transform == ST_DECODE_NONE) p = ST_IMAGE_PRESET_SIGLIP_224; /* square, bilinear */
    enum st_status rc = st_image_transform_preset(t, p);
    if (rc) return st_errorf(err, rc, "unknown image preset");
    if (o->transform == ST_DECODE_NONE) {
        for (int i = 0; i < 3; i++) {
            t->mean[i] = 0.0f;
            t->std[i] = 1.0f;
        }
        if (!o->image_size) {
            *native = 1;
            if (o->random_crop || o->flip_p > 0 || o->jitter[0] > 0 || o->jitter[1] > 0 ||
                o->jitter[2] > 0 || o->jitter[3] > 0)
                return st_errorf(err, ST_ERR_ARG,
                                 "--transform none without --image-size decodes images whole; "
                                 "augmentations need --image-size");
        }
    }
    if (o->image_size) {
        t->size = o->image_size;
        t->resize_size = o->image_size;
    }
    if (o->random_crop) {
        t->crop = ST_IMAGE_CROP_RANDOM;
        t->scale[0] = o->crop_scale[0];
        t->scale[1] = o->crop_scale[1];
        t->ratio[0] = 3.0f / 4.0f;
        t->ratio[1] = 4.0f / 3.0f;
    }
    t->flip_p = o->flip_p;
    t->brightness = o->jitter[0];
    t->contrast = o->jitter[1];
    t->saturation = o->jitter[2];
    t->hue = o->jitter[3];
    if (o->dtype != ST_F32 && o->dtype != ST_BF16)
        return st_errorf(err, ST_ERR_ARG, "decode dtype must be F32 or BF16");
    return ST_OK;
}

/* ---- fields ---- */

static enum st_field_kind field_kind(const char *name) {
    const char *dot = strrchr(name, '.');
    const char *ext = dot ? dot + 1 : name;
    static const char *const img[] = {"jpg", "jpeg", "png", "webp"};
    static const char *const aud[] = {"flac", "wav", "mp3", "ogg"};
    for (size_t i = 0; i < sizeof img / sizeof *img; i++)
        if (!strcmp(ext, img[i])) return ST_FIELD_IMAGE;
    for (size_t i = 0; i < sizeof aud / sizeof *aud; i++)
        if (!strcmp(ext, aud[i])) return ST_FIELD_AUDIO;
    return ST_FIELD_RAW;
}

const struct st_decoded_field *st_decoded_field(const struct st_decoded_sample *s,
                                                const char *name) {
    for (int i = 0; i < s->n_fields; i++)
        if (!strcmp(s->fields[i].name, name)) return &s->fields[i];
    return NULL;
}

/* ---- entries ---- */

enum { E_SAMPLE = 0, E_END };
enum { S_RAW = 0, S_BUSY, S_DONE };
enum { BAD_NONE = 0, BAD_LIMIT, BAD_CORRUPT, BAD_UNSUPPORTED };

struct entry {
    int kind, st;
    int64_t epoch;
    uint32_t shard;
    uint64_t index, offset;
    char *key, *url;
    int n;
    struct st_decoded_field *f; /* n; name/raw point into blob, data owned */
    char *blob;
    enum st_status rc; /* a bad sample: its status and message */
    int bad;
    struct st_error err;
    int n_img, n_aud;
};

static void entry_free(struct entry *e) {
    if (!e) return;
    for (int i = 0; i < e->n; i++)
        st_free((void *)e->f[i].data);
    st_free(e->f);
    st_free(e->blob);
    st_free(e);
}

/* A sample entry holding copies of key, url and fields (names[i], datas[i], sizes[i]). */
static struct entry *entry_new(const char *key, const char *url, int n, const char *const *names,
                               const uint8_t *const *datas, const size_t *sizes) {
    size_t total = strlen(key) + 1 + strlen(url) + 1, t2;
    for (int i = 0; i < n; i++) {
        if (st_add_size(total, strlen(names[i]) + 1, &t2) || st_add_size(t2, sizes[i], &t2) ||
            st_add_size(t2, 1, &total))
            return NULL;
    }
    struct entry *e = st_calloc(1, sizeof *e);
    if (!e) return NULL;
    e->blob = st_malloc(total);
    e->f = n ? st_calloc((size_t)n, sizeof *e->f) : NULL;
    if (!e->blob || (n && !e->f)) {
        entry_free(e);
        return NULL;
    }
    char *p = e->blob;
    size_t k = strlen(key) + 1;
    memcpy(p, key, k);
    e->key = p;
    p += k;
    k = strlen(url) + 1;
    memcpy(p, url, k);
    e->url = p;
    p += k;
    e->n = n;
    for (int i = 0; i < n; i++) {
        k = strlen(names[i]) + 1;
        memcpy(p, names[i], k);
        e->f[i].name = p;
        p += k;
        if (sizes[i]) memcpy(p, datas[i], sizes[i]);
        p[sizes[i]] = '\0';
        e->f[i].raw = (const uint8_t *)p;
        e->f[i].raw_size = sizes[i];
        e->f[i].kind = field_kind(e->f[i].name);
        p += sizes[i] + 1;
    }
    return e;
}

static struct entry *entry_from_sample(const struct st_sample *s) {
    enum { MAXF = 64 };
    const char *names[MAXF];
    const uint8_t *datas[MAXF];
    size_t sizes[MAXF];
    int n = s->n_fields < MAXF ? s->n_fields : MAXF; /* the tar reader allows 64 */
    for (int i = 0; i < n; i++) {
        names[i] = s->fields[i].name;
        datas[i] = s->fields[i].data;
        sizes[i] = s->fields[i].size;
    }
    struct entry *e = entry_new(s->key ? s->key : "", s->url ? s->url : "", n, names, datas, sizes);
    if (!e) return NULL;
    e->shard = s->shard;
    e->index = s->index;
    e->offset = s->offset;
    return e;
}

static int entry_needs_decode(const struct entry *e) {
    for (int i = 0; i < e->n; i++)
        if (e->f[i].kind != ST_FIELD_RAW) return 1;
    return 0;
}

/* ---- the decoder ---- */

struct worker {
    struct st_decoder *d;
    pthread_t th;
    int started;
};

struct st_decoder {
    struct st_stream *s;
    struct st_decode_options o;
    struct st_image_transform t;
    int native;
    uint64_t seed;
    struct st_image_limits ilim;
    struct st_audio_limits alim;

    pthread_mutex_t mu, smu;
    pthread_cond_t cv_space, cv_work, cv_done;
    struct entry **ring;
    uint64_t cap, head, tail, next_decode;
    int held;
    int stop;

    /* reader */
    pthread_t reader;
    int reader_started;
    int64_t read_epoch, end_epoch;
    int64_t next_epoch; /* the consumer's: the epoch its next sample belongs to (stats) */
    int reader_done; /* no more entries will come: reader_rc says why */
    enum st_status reader_rc;
    struct st_error reader_err;
    struct entry **replay; /* from a resume record, pushed before the stream is read */
    int n_replay, replay_i;

    struct worker *workers;
    int n_workers;

    /* consumer */
    int failed;
    struct st_error fail_err;
    struct st_decode_stats st;
    double t_open;
};

static enum st_status decode_image(struct st_decoder *d, struct entry *e,
                                   struct st_decoded_field *f, struct st_image_work *work,
                                   struct st_error *err) {
    struct st_image_info info;
    if (st_image_probe(f->raw, f->raw_size, &info, err) == ST_OK) {
        f->src_w = info.w;
        f->src_h = info.h;
    }
    struct st_image im;
    enum st_status rc;
    if (d->native)
        rc = st_image_decode(f->raw, f->raw_size, &d->ilim, &im, err);
    else
        rc = st_image_load(f->raw, f->raw_size, &d->ilim, &d->t,
                           st_image_seed(d->seed, (uint64_t)e->epoch, e->key), work, &im, err);
    if (rc) return rc;
    size_t es = d->o.dtype == ST_BF16 ? 2 : 4, n;
    if (st_mul_size((size_t)im.w * (size_t)im.h, 3 * es, &n)) {
        st_image_free(&im);
        return st_errorf(err, ST_ERR_NOMEM, "image too large");
    }
    void *data = st_malloc(n);
    if (!data) {
        st_image_free(&im);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory for a %dx%d image tensor", im.w, im.h);
    }
    if (d->o.dtype == ST_BF16)
        st_image_to_bf16(&im, d->t.mean, d->t.std, data);
    else
        st_image_to_f32(&im, d->t.mean, d->t.std, data);
    f->dtype = d->o.dtype;
    f->ndim = 3;
    f->shape[0] = 3;
    f->shape[1] = im.h;
    f->shape[2] = im.w;
    f->data = data;
    f->nbytes = n;
    st_image_free(&im);
    return ST_OK;
}

/* s in at most cap - 1 bytes: its head and tail around "...", so a long URL or key leaves room for
 * the reason after it in a message, and two long keys that differ at the end stay apart */
static const char *shortened(char *out, size_t cap, const char *s) {
    size_t n = strlen(s);
    if (n < cap) return s;
    size_t tail = (cap - 4) / 2, head = cap - 4 - tail;
    snprintf(out, cap, "%.*s...%s", (int)head, s, s + n - tail);
    return out;
}

static enum st_status decode_audio(struct st_decoder *d, struct entry *e,
                                   struct st_decoded_field *f, struct st_audio_mel **mel,
                                   struct st_error *err) {
    char label[200], kb[96];
    snprintf(label, sizeof label, "%s.%s", shortened(kb, sizeof kb, e->key), f->name);
    struct st_audio a;
    enum st_status rc = st_audio_decode(f->raw, f->raw_size, label, &d->alim, &a, err);
    if (rc) return rc;
    const struct st_audio_aug *aug = &d->o.audio_aug;
    uint64_t aseed = st_audio_aug_seed(d->seed, e->epoch, e->key);
    if (aug->gain_db_min != 0 || aug->gain_db_max != 0 || aug->shift_max > 0)
        st_audio_augment_wave(aug, aseed, a.pcm, a.n);
    if (!*mel && (rc = st_audio_mel_init(mel, d->o.mel_bins, err))) {
        st_audio_free(&a);
        return rc;
    }
    size_t cells = (size_t)d->o.mel_bins * ST_AUDIO_FRAMES;
    float *m = st_malloc(cells * sizeof(float));
    if (!m) {
        st_audio_free(&a);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory for a log-mel");
    }
    st_audio_log_mel(*mel, m, a.pcm, a.n);
    f->src_seconds = (double)a.n / ST_AUDIO_RATE;
    st_audio_free(&a);
    if (aug->freq_masks > 0 || aug->time_masks > 0)
        st_audio_augment_mel(aug, aseed, m, d->o.mel_bins, ST_AUDIO_FRAMES);
    void *data = m;
    size_t nbytes = cells * sizeof(float);
    if (d->o.dtype == ST_BF16) {
        uint16_t *b = st_malloc(cells * sizeof(uint16_t));
        if (!b) {
            st_free(m);
            return st_errorf(err, ST_ERR_NOMEM, "out of memory for a log-mel");
        }
        for (size_t i = 0; i < cells; i++)
            b[i] = st_f32_to_bf16(m[i]);
        st_free(m);
        data = b;
        nbytes = cells * sizeof(uint16_t);
    }
    f->dtype = d->o.dtype;
    f->ndim = 2;
    f->shape[0] = d->o.mel_bins;
    f->shape[1] = ST_AUDIO_FRAMES;
    f->data = data;
    f->nbytes = nbytes;
    return ST_OK;
}

/* Decode every image/audio field of e; a failure makes e a bad sample (its message names the
 * shard, the sample and the field). */
static void decode_entry(struct st_decoder *d, struct entry *e, struct st_image_work *work,
                         struct st_audio_mel **mel) {
    for (int i = 0; i < e->n; i++) {
        struct st_decoded_field *f = &e->f[i];
        struct st_error err = {0};
        enum st_status rc = ST_OK;
        if (f->kind == ST_FIELD_IMAGE) {
            rc = decode_image(d, e, f, work, &err);
            char ub[128], kb[96];
            if (rc)
                st_error_prefix(&err, "%s: %s.%s: ", shortened(ub, sizeof ub, e->url),
                                shortened(kb, sizeof kb, e->key), f->name);
            e->n_img++;
        } else if (f->kind == ST_FIELD_AUDIO) {
            rc = decode_audio(d, e, f, mel, &err); /* message starts with KEY.EXT */
            char ub[128];
            if (rc) st_error_prefix(&err, "%s: ", shortened(ub, sizeof ub, e->url));
            e->n_aud++;
        }
        if (rc) {
            e->rc = rc;
            e->err = err;
            e->err.code = rc;
            e->bad = rc == ST_ERR_NOMEM         ? BAD_LIMIT
                     : rc == ST_ERR_UNSUPPORTED ? BAD_UNSUPPORTED
                                                : BAD_CORRUPT;
            return;
        }
    }
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    struct st_decoder *d = w->d;
    struct st_image_work *work = NULL;
    struct st_audio_mel *mel = NULL;
    struct st_error err;
    if (st_image_work_init(&work, &err)) work = NULL; /* optional: NULL allocates per call */
    pthread_mutex_lock(&d->mu);
    for (;;) {
        struct entry *e = NULL;
        while (!d->stop) {
            if (d->next_decode < d->head) d->next_decode = d->head;
            while (d->next_decode < d->tail && d->ring[d->next_decode % d->cap]->st != S_RAW)
                d->next_decode++;
            if (d->next_decode < d->tail) {
                e = d->ring[d->next_decode % d->cap];
                d->next_decode++;
                break;
            }
            pthread_cond_wait(&d->cv_work, &d->mu);
        }
        if (!e) break;
        e->st = S_BUSY;
        pthread_mutex_unlock(&d->mu);
        double t0 = st_time_now();
        decode_entry(d, e, work, &mel);
        double dt = st_time_now() - t0;
        pthread_mutex_lock(&d->mu);
        e->st = S_DONE;
        d->st.decode_s += dt;
        pthread_cond_broadcast(&d->cv_done);
    }
    pthread_mutex_unlock(&d->mu);
    st_image_work_free(work);
    st_audio_mel_free(mel);
    return NULL;
}

/* Append e (reader side, mu held); space was reserved. */
static void push_locked(struct st_decoder *d, struct entry *e) {
    if (e->kind == E_END || !d->o.decode || !entry_needs_decode(e) || e->st == S_DONE)
        e->st = S_DONE;
    else
        e->st = S_RAW;
    d->ring[d->tail % d->cap] = e;
    d->tail++;
    if (e->st == S_RAW) pthread_cond_signal(&d->cv_work);
    pthread_cond_broadcast(&d->cv_done);
}

static void reader_finish_locked(struct st_decoder *d, enum st_status rc,
                                 const struct st_error *err) {
    d->reader_done = 1;
    d->reader_rc = rc;
    if (err) d->reader_err = *err;
    pthread_cond_broadcast(&d->cv_done);
}

static void *reader_main(void *arg) {
    struct st_decoder *d = arg;
    for (;;) {
        pthread_mutex_lock(&d->mu);
        while (!d->stop && d->tail - d->head >= d->cap)
            pthread_cond_wait(&d->cv_space, &d->mu);
        int stop = d->stop;
        pthread_mutex_unlock(&d->mu);
        if (stop) break;
        pthread_mutex_lock(&d->smu);
        if (d->replay_i < d->n_replay) {
            pthread_mutex_lock(&d->mu);
            push_locked(d, d->replay[d->replay_i]);
            d->replay[d->replay_i++] = NULL;
            pthread_mutex_unlock(&d->mu);
            pthread_mutex_unlock(&d->smu);
            continue;
        }
        if (d->read_epoch >= d->end_epoch) { /* the last epoch's END is in the ring */
            pthread_mutex_lock(&d->mu);
            reader_finish_locked(d, ST_STREAM_END, NULL);
            pthread_mutex_unlock(&d->mu);
            pthread_mutex_unlock(&d->smu);
            break;
        }
        struct st_sample smp;
        struct st_error err = {0};
        enum st_status rc = st_stream_next(d->s, &smp, &err);
        struct entry *e = NULL;
        if (rc == ST_OK) {
            e = entry_from_sample(&smp);
            if (!e) {
                rc = ST_ERR_NOMEM;
                st_errorf(&err, ST_ERR_NOMEM, "%s: out of memory copying sample '%s'", smp.url,
                          smp.key);
            } else {
                e->kind = E_SAMPLE;
                e->epoch = d->read_epoch;
            }
        } else if (rc == ST_STREAM_END) {
            e = st_calloc(1, sizeof *e);
            if (!e) {
                rc = ST_ERR_NOMEM;
                st_errorf(&err, ST_ERR_NOMEM, "out of memory");
            } else {
                e->kind = E_END;
                e->epoch = d->read_epoch++;
            }
        }
        pthread_mutex_lock(&d->mu);
        if (e)
            push_locked(d, e);
        else
            reader_finish_locked(d, rc, &err);
        pthread_mutex_unlock(&d->mu);
        pthread_mutex_unlock(&d->smu);
        if (!e) break;
    }
    return NULL;
}

/* ---- resume records ---- */

static int json_num(const cJSON *v, double lo, double hi, double *out) {
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi)) return 1;
    *out = v->valuedouble;
    return 0;
}

/* A base64 JSON string into a fresh NUL-terminated buffer. */
static uint8_t *b64_string(const cJSON *v, size_t *n) {
    if (!cJSON_IsString(v)) return NULL;
    size_t tn = strlen(v->valuestring);
    uint8_t *out = st_malloc(tn / 4 * 3 + 1);
    if (!out) return NULL;
    long long k = b64_decode(v->valuestring, tn, out);
    if (k < 0) {
        st_free(out);
        return NULL;
    }
    out[k] = 0;
    if (n) *n = (size_t)k;
    return out;
}

/* One pending entry: [epoch] for an epoch end, [epoch, shard, index, offset, key, url,
 * [[name, data], ...]] for a sample (strings base64). */
static struct entry *pending_entry(const cJSON *a) {
    double ep, sh, ix, of;
    int n = cJSON_GetArraySize(a);
    if (!cJSON_IsArray(a) || (n != 1 && n != 7)) return NULL;
    if (json_num(cJSON_GetArrayItem(a, 0), 0, 9e15, &ep)) return NULL;
    if (n == 1) {
        struct entry *e = st_calloc(1, sizeof *e);
        if (e) {
            e->kind = E_END;
            e->epoch = (int64_t)ep;
        }
        return e;
    }
    if (json_num(cJSON_GetArrayItem(a, 1), 0, 4294967295.0, &sh) ||
        json_num(cJSON_GetArrayItem(a, 2), 0, 9e15, &ix) ||
        json_num(cJSON_GetArrayItem(a, 3), 0, 9e15, &of))
        return NULL;
    const cJSON *fl = cJSON_GetArrayItem(a, 6);
    int nf = cJSON_GetArraySize(fl);
    if (!cJSON_IsArray(fl) || nf > TAR_MAX_FIELDS) return NULL;
    uint8_t *key = b64_string(cJSON_GetArrayItem(a, 4), NULL);
    uint8_t *url = b64_string(cJSON_GetArrayItem(a, 5), NULL);
    uint8_t *names[TAR_MAX_FIELDS] = {0}, *datas[TAR_MAX_FIELDS] = {0};
    size_t sizes[TAR_MAX_FIELDS] = {0};
    int ok = key && url;
    for (int i = 0; i < nf && ok; i++) {
        const cJSON *p = cJSON_GetArrayItem(fl, i);
        names[i] = b64_string(cJSON_GetArrayItem(p, 0), NULL);
        datas[i] = b64_string(cJSON_GetArrayItem(p, 1), &sizes[i]);
        ok = cJSON_GetArraySize(p) == 2 && names[i] && datas[i];
    }
    struct entry *e = NULL;
    if (ok) {
        e = entry_new((char *)key, (char *)url, nf, (const char *const *)names,
                      (const uint8_t *const *)datas, sizes);
        if (e) {
            e->kind = E_SAMPLE;
            e->epoch = (int64_t)ep;
            e->shard = (uint32_t)sh;
            e->index = (uint64_t)ix;
            e->offset = (uint64_t)of;
        }
    }
    for (int i = 0; i < nf; i++) {
        st_free(names[i]);
        st_free(datas[i]);
    }
    st_free(key);
    st_free(url);
    return e;
}

/* Split a decoder record into the stream's record (*stream_state, st_malloc'd), the epoch of
 * the reader and the pending entries. A plain stream record is accepted as well. */
static enum st_status parse_state(struct st_decoder *d, const char *text, char **stream_state,
                                  struct st_error *err) {
    cJSON *root = cJSON_Parse(text);
    const char *bad = NULL;
    double ep = 0;
    if (!root || !cJSON_IsObject(root)) {
        bad = "not a JSON object";
        goto out;
    }
    if (cJSON_GetObjectItemCaseSensitive(root, "streamtune_stream")) { /* a plain stream record */
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(root, "buffer");
        double drain = 0;
        if (json_num(cJSON_GetObjectItemCaseSensitive(root, "epoch"), 0, 9e15, &ep)) {
            bad = "bad epoch";
            goto out;
        }
        if (b) json_num(cJSON_GetObjectItemCaseSensitive(b, "drain"), 0, 1, &drain);
        d->read_epoch = (int64_t)ep - (int64_t)drain; /* a draining buffer holds the last epoch */
        *stream_state = st_strdup(text);
        if (!*stream_state) bad = "out of memory";
        goto out;
    }
    if (!cJSON_GetObjectItemCaseSensitive(root, "streamtune_decode")) {
        bad = "neither a decoder nor a stream record";
        goto out;
    }
    if (json_num(cJSON_GetObjectItemCaseSensitive(root, "epoch"), 0, 9e15, &ep)) {
        bad = "bad epoch";
        goto out;
    }
    d->read_epoch = (int64_t)ep;
    const cJSON *pend = cJSON_GetObjectItemCaseSensitive(root, "pending");
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(root, "stream");
    if (!cJSON_IsArray(pend) || !cJSON_IsObject(st)) {
        bad = "missing pending or stream";
        goto out;
    }
    int n = cJSON_GetArraySize(pend);
    if (n > 0) {
        d->replay = st_calloc((size_t)n, sizeof *d->replay);
        if (!d->replay) {
            bad = "out of memory";
            goto out;
        }
    }
    for (int i = 0; i < n; i++) {
        d->replay[i] = pending_entry(cJSON_GetArrayItem(pend, i));
        if (!d->replay[i]) {
            bad = "bad pending sample";
            goto out;
        }
        d->n_replay = i + 1;
    }
    char *s = cJSON_PrintUnformatted(st);
    if (!s) {
        bad = "out of memory";
        goto out;
    }
    *stream_state = st_strdup(s);
    cJSON_free(s);
    if (!*stream_state) bad = "out of memory";
out:
    cJSON_Delete(root);
    if (bad) return st_errorf(err, ST_ERR_FORMAT, "resume state: %s", bad);
    return ST_OK;
}

static void add_pending(struct dbuf *b, const struct entry *e, int *first) {
    dbuf_addstr(b, *first ? "[" : ",[");
    *first = 0;
    if (e->kind == E_END) {
        dbuf_printf(b, "%lld]", (long long)e->epoch);
        return;
    }
    dbuf_printf(b, "%lld,%u,%llu,%llu,\"", (long long)e->epoch, e->shard,
                (unsigned long long)e->index, (unsigned long long)e->offset);
    b64_encode(b, e->key, strlen(e->key));
    dbuf_addstr(b, "\",\"");
    b64_encode(b, e->url, strlen(e->url));
    dbuf_addstr(b, "\",[");
    for (int i = 0; i < e->n; i++) {
        dbuf_addstr(b, i ? ",[\"" : "[\"");
        b64_encode(b, e->f[i].name, strlen(e->f[i].name));
        dbuf_addstr(b, "\",\"");
        b64_encode(b, e->f[i].raw, e->f[i].raw_size);
        dbuf_addstr(b, "\"]");
    }
    dbuf_addstr(b, "]]");
}

size_t st_decoder_state(struct st_decoder *d, char *buf, size_t cap) {
    struct dbuf b;
    dbuf_init(&b, (size_t)1 << 40);
    pthread_mutex_lock(&d->smu);
    pthread_mutex_lock(&d->mu);
    dbuf_printf(&b, "{\"streamtune_decode\":1,\"epoch\":%lld,\"pending\":[",
                (long long)d->read_epoch);
    int first = 1;
    for (uint64_t q = d->head + (d->held ? 1 : 0); q < d->tail; q++)
        add_pending(&b, d->ring[q % d->cap], &first);
    for (int i = d->replay_i; i < d->n_replay; i++)
        add_pending(&b, d->replay[i], &first);
    pthread_mutex_unlock(&d->mu);
    dbuf_addstr(&b, "],\"stream\":");
    size_t n = st_stream_state(d->s, NULL, 0);
    if (dbuf_reserve(&b, n + 2) == 0) {
        st_stream_state(d->s, b.p + b.len, n + 1);
        b.len += n;
    }
    pthread_mutex_unlock(&d->smu);
    dbuf_addstr(&b, "}");
    n = b.len;
    if (cap) {
        size_t k = n < cap - 1 ? n : cap - 1;
        if (b.p) memcpy(buf, b.p, k);
        buf[k] = '\0';
    }
    dbuf_free(&b);
    return n;
}

/* ---- lifecycle ---- */

void st_decoder_close(struct st_decoder *d) {
    if (!d) return;
    pthread_mutex_lock(&d->mu);
    d->stop = 1;
    pthread_cond_broadcast(&d->cv_space);
    pthread_cond_broadcast(&d->cv_work);
    pthread_mutex_unlock(&d->mu);
    /* the reader may sit in st_stream_next: closing the stream would race with it, so wait for
     * it to return (the stream delivers or fails; it never blocks forever) */
    if (d->reader_started) pthread_join(d->reader, NULL);
    for (int i = 0; i < d->n_workers; i++)
        if (d->workers[i].started) pthread_join(d->workers[i].th, NULL);
    st_stream_close(d->s);
    if (d->ring)
        for (uint64_t q = d->head; q < d->tail; q++)
            entry_free(d->ring[q % d->cap]);
    for (int i = 0; i < d->n_replay; i++)
        entry_free(d->replay[i]);
    st_free(d->replay);
    st_free(d->ring);
    st_free(d->workers);
    pthread_mutex_destroy(&d->mu);
    pthread_mutex_destroy(&d->smu);
    pthread_cond_destroy(&d->cv_space);
    pthread_cond_destroy(&d->cv_work);
    pthread_cond_destroy(&d->cv_done);
    st_free(d);
}

enum st_status st_decoder_open(struct st_decoder **out, const struct st_stream_options *so,
                               const struct st_decode_options *o, struct st_error *err) {
    *out = NULL;
    struct st_decode_options defaults;
    if (!o) {
        st_decode_options_init(&defaults);
        o = &defaults;
    }
    if (o->threads < 1 || o->threads > 256 || o->ahead < 0 || o->mel_bins < 1 || o->mel_bins > 256)
        return st_errorf(err, ST_ERR_ARG, "decode options: threads 1..256, mel bins 1..256");
    struct st_decoder *d = st_calloc(1, sizeof *d);
    if (!d) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&d->mu, NULL);
    pthread_mutex_init(&d->smu, NULL);
    pthread_cond_init(&d->cv_space, NULL);
    pthread_cond_init(&d->cv_work, NULL);
    pthread_cond_init(&d->cv_done, NULL);
    d->o = *o;
    d->t_open = st_time_now();
    enum st_status rc = st_decode_image_transform(o, &d->t, &d->native, err);
    if (rc) goto fail;
    d->seed = o->seed_set ? o->seed : so->seed;
    d->ilim.max_pixels = o->max_image_pixels;
    d->alim.max_seconds = o->max_audio_seconds;
    d->cap = (uint64_t)(o->ahead > 0 ? o->ahead : 4 * o->threads + 2);
    if (d->cap < 2) d->cap = 2; /* the held sample plus one being read */
    d->ring = st_calloc((size_t)d->cap, sizeof *d->ring);
    d->n_workers = o->decode ? o->threads : 0;
    d->workers = d->n_workers ? st_calloc((size_t)d->n_workers, sizeof *d->workers) : NULL;
    if (!d->ring || (d->n_workers && !d->workers)) {
        rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
        goto fail;
    }
    d->read_epoch = so->epoch;
    d->end_epoch = so->epochs > 0 ? so->epoch + so->epochs : INT64_MAX;
    struct st_stream_options sopt = *so;
    char *stream_state = NULL;
    if (so->resume_state) {
        if ((rc = parse_state(d, so->resume_state, &stream_state, err))) goto fail;
        sopt.resume_state = stream_state;
    }
    d->next_epoch = d->read_epoch;
    rc = st_stream_open(&d->s, &sopt, err);
    st_free(stream_state);
    if (rc) goto fail;
    if (pthread_create(&d->reader, NULL, reader_main, d) != 0) {
        rc = st_errorf(err, ST_ERR_NOMEM, "cannot start the decoder's reader thread");
        goto fail;
    }
    d->reader_started = 1;
    for (int i = 0; i < d->n_workers; i++) {
        d->workers[i].d = d;
        if (pthread_create(&d->workers[i].th, NULL, worker_main, &d->workers[i]) != 0) {
            rc = st_errorf(err, ST_ERR_NOMEM, "cannot start decode thread %d", i);
            goto fail;
        }
        d->workers[i].started = 1;
    }
    *out = d;
    return ST_OK;
fail:
    st_decoder_close(d);
    return rc;
}

static void count_skip(struct st_decoder *d, const struct entry *e) {
    d->st.skipped++;
    if (e->bad == BAD_LIMIT)
        d->st.skipped_limit++;
    else if (e->bad == BAD_UNSUPPORTED)
        d->st.skipped_unsupported++;
    else
        d->st.skipped_corrupt++;
    if (d->st.n_skip_log < ST_DECODE_SKIP_LOG) {
        struct st_decode_skip *k = &d->st.skip_log[d->st.n_skip_log++];
        char kb[sizeof k->key];
        snprintf(k->key, sizeof k->key, "%s", shortened(kb, sizeof kb, e->key));
        snprintf(k->reason, sizeof k->reason, "%s", e->err.msg);
    }
    st_log(ST_LOG_WARN, "skipped a bad sample: %s", e->err.msg);
}

enum st_status st_decoder_next(struct st_decoder *d, struct st_decoded_sample *out,
                               struct st_error *err) {
    struct st_error local;
    if (!err) err = &local;
    struct entry *drop = NULL;
    pthread_mutex_lock(&d->mu);
    if (d->held) {
        drop = d->ring[d->head % d->cap];
        d->ring[d->head % d->cap] = NULL;
        d->head++;
        d->held = 0;
        pthread_cond_signal(&d->cv_space);
    }
    double waited = 0;
    enum st_status rc;
    for (;;) {
        if (d->failed) {
            *err = d->fail_err;
            rc = d->fail_err.code ? d->fail_err.code : ST_ERR_FORMAT;
            break;
        }
        if (d->head < d->tail) {
            struct entry *e = d->ring[d->head % d->cap];
            if (e->st != S_DONE) {
                double t0 = st_time_now();
                pthread_cond_wait(&d->cv_done, &d->mu);
                waited += st_time_now() - t0;
                continue;
            }
            if (e->kind == E_END || e->rc) {
                d->ring[d->head % d->cap] = NULL;
                d->head++;
                pthread_cond_signal(&d->cv_space);
                if (e->kind == E_END) {
                    d->next_epoch = e->epoch + 1;
                    d->st.wait_s += waited;
                    pthread_mutex_unlock(&d->mu);
                    entry_free(drop);
                    entry_free(e);
                    return ST_STREAM_END;
                }
                if (d->o.on_bad == ST_BAD_SAMPLE_SKIP) {
                    count_skip(d, e);
                    pthread_mutex_unlock(&d->mu);
                    entry_free(e);
                    pthread_mutex_lock(&d->mu);
                    continue;
                }
                d->failed = 1;
                d->fail_err = e->err;
                pthread_mutex_unlock(&d->mu);
                entry_free(e);
                pthread_mutex_lock(&d->mu);
                continue;
            }
            d->held = 1;
            d->st.samples++;
            d->st.images += (uint64_t)e->n_img;
            d->st.audio += (uint64_t)e->n_aud;
            memset(out, 0, sizeof *out);
            out->key = e->key;
            out->url = e->url;
            out->shard = e->shard;
            out->index = e->index;
            out->offset = e->offset;
            out->epoch = e->epoch;
            out->n_fields = e->n;
            out->fields = e->f;
            rc = ST_OK;
            break;
        }
        if (d->reader_done) {
            if (d->reader_rc == ST_STREAM_END) {
                rc = ST_STREAM_END;
                break;
            }
            *err = d->reader_err;
            rc = d->reader_rc;
            break;
        }
        double t0 = st_time_now();
        pthread_cond_wait(&d->cv_done, &d->mu);
        waited += st_time_now() - t0;
    }
    d->st.wait_s += waited;
    pthread_mutex_unlock(&d->mu);
    entry_free(drop);
    return rc;
}

void st_decoder_stats(struct st_decoder *d, struct st_decode_stats *out) {
    pthread_mutex_lock(&d->mu);
    *out = d->st;
    int64_t epoch = d->next_epoch;
    pthread_mutex_unlock(&d->mu);
    st_stream_stats(d->s, &out->stream);
    out->stream.epoch = epoch; /* the consumer's, not the reader's (which reads ahead) */
    out->elapsed_s = st_time_now() - d->t_open;
    out->samples_per_s = out->elapsed_s > 0 ? (double)out->samples / out->elapsed_s : 0;
}
