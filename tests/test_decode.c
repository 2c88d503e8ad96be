/* test_decode.c: the sample decoder and the mixer (include/streamtune/decode.h) on generated
 * WebDatasets of JPEG, PNG, FLAC and WAV samples (tests/mm_data.h), locally and from the S3 test
 * server through the fault proxy.
 *
 * What it checks:
 * - order and tensors: the decoded sequence is the stream's sequence, every sample exactly once,
 *   and every tensor (with random crops, flips, jitter, gain, shift and SpecAugment on) is the
 *   same for 1..4 decode threads and any read-ahead, and equal to calling the image/audio
 *   modules directly with the seed of (seed, epoch, key); augmentations change between epochs;
 * - resume: stopping after k samples (mid-epoch, at an epoch's end, in the second epoch), saving
 *   the state and continuing in a new decoder gives the uninterrupted (key, checksum) sequence;
 * - bad samples: a 30000x30000 JPEG header, a truncated FLAC, a PNG with a bad CRC and a zero-byte
 *   image are skipped, counted by class and named with skip, and stop the stream with a one-line
 *   message naming the sample with fail; limits (--max-image-pixels, --max-audio-seconds) refuse
 *   before decoding;
 * - mixing: NAME=URL:WEIGHT parsing, weights within 4 standard deviations over 4000 draws,
 *   determinism, exact resume, the epoch rules (first / all exhausted), budgets split;
 * - damaged decoder and mix records are refused with a one-line message or harmless, never a
 *   crash (ASan);
 * - with s3rver and the fault proxy (30% of requests faulted): a mixed image/audio WebDataset
 *   decoded exactly once with the fault-free run's tensors, and resumed in a new process after a
 *   mid-epoch stop with the uninterrupted sequence.
 * `test_decode --write-dataset DIR` writes the datasets for tests/test_decode_cli.py. */
#include "harness.h"
#include "mm_data.h"
#include "streamtune/decode.h"

#define N_SHARDS 6
#define PER 24
#define TOTAL (N_SHARDS * PER)
#define MAXN 8192
#define END_MARK (-2)

static char *g_dir, *g_img, *g_txt, *g_bad;

/* ---- sequences ---- */

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t sample_sum(const struct st_decoded_sample *s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    h = fnv(h, s->key, strlen(s->key));
    for (int i = 0; i < s->n_fields; i++) {
        const struct st_decoded_field *f = &s->fields[i];
        h = fnv(h, f->name, strlen(f->name));
        if (f->data)
            h = fnv(h, f->data, f->nbytes);
        else
            h = fnv(h, f->raw, f->raw_size);
    }
    return h;
}

static int64_t sample_id(const struct st_decoded_sample *s) {
    const struct st_decoded_field *c = st_decoded_field(s, "cls");
    if (c) return strtoll((const char *)c->raw, NULL, 10);
    const struct st_decoded_field *j = st_decoded_field(s, "json");
    return j ? td_sample_id(j->raw, j->raw_size, 0) : -1;
}

struct seq {
    int n, samples, ends;
    int64_t id[MAXN];
    uint64_t sum[MAXN];
    int src[MAXN];
    enum st_status rc;
    struct st_error err;
    char *state;
    struct st_decode_stats st;
};

static void seq_add(struct seq *q, int64_t id, uint64_t sum, int src) {
    if (q->n < MAXN) {
        q->id[q->n] = id;
        q->sum[q->n] = sum;
        q->src[q->n] = src;
        q->n++;
    }
}

static char *take_state(size_t (*fn)(void *, char *, size_t), void *h) {
    size_t cap = fn(h, NULL, 0) + 4096;
    for (;;) {
        char *b = malloc(cap + 1);
        size_t n = fn(h, b, cap + 1);
        if (n <= cap) return b;
        free(b);
        cap = n + n / 4;
    }
}
static size_t dec_state(void *h, char *b, size_t c) {
    return st_decoder_state(h, b, c);
}
static size_t mix_state(void *h, char *b, size_t c) {
    return st_mix_state(h, b, c);
}

/* Decode until `stop` samples (-1: no limit) or `max_ends` epoch ends; the state after. */
static void run_dec(const struct st_stream_options *so, const struct st_decode_options *o, int stop,
                    int max_ends, struct seq *q) {
    memset(q, 0, sizeof *q);
    struct st_decoder *d;
    q->rc = st_decoder_open(&d, so, o, &q->err);
    if (q->rc) return;
    for (;;) {
        if (stop >= 0 && q->samples >= stop) break;
        struct st_decoded_sample s;
        enum st_status rc = st_decoder_next(d, &s, &q->err);
        if (rc == ST_STREAM_END) {
            seq_add(q, END_MARK, 0, 0);
            if (++q->ends >= max_ends) break;
            continue;
        }
        if (rc) {
            q->rc = rc;
            break;
        }
        seq_add(q, sample_id(&s), sample_sum(&s), 0);
        q->samples++;
    }
    q->state = take_state(dec_state, d);
    st_decoder_stats(d, &q->st);
    st_decoder_close(d);
}

static void run_mix(const struct st_stream_options *so, const struct st_decode_options *o,
                    const struct st_mix_source *src, int n, enum st_mix_stop stop_rule, int stop,
                    int max_ends, struct seq *q) {
    memset(q, 0, sizeof *q);
    struct st_mix *m;
    q->rc = st_mix_open(&m, so, o, src, n, stop_rule, &q->err);
    if (q->rc) return;
    for (;;) {
        if (stop >= 0 && q->samples >= stop) break;
        struct st_decoded_sample s;
        enum st_status rc = st_mix_next(m, &s, &q->err);
        if (rc == ST_STREAM_END) {
            seq_add(q, END_MARK, 0, 0);
            if (++q->ends >= max_ends) break;
            continue;
        }
        if (rc) {
            q->rc = rc;
            break;
        }
        seq_add(q, sample_id(&s), sample_sum(&s), s.source);
        q->samples++;
    }
    q->state = take_state(mix_state, m);
    st_mix_stats(m, &q->st, NULL);
    st_mix_close(m);
}

static int seq_equal(const struct seq *a, int a_off, const struct seq *b, int n) {
    if (a_off + n > a->n || n > b->n) return 0;
    for (int i = 0; i < n; i++)
        if (a->id[a_off + i] != b->id[i] || a->sum[a_off + i] != b->sum[i] ||
            a->src[a_off + i] != b->src[i])
            return 0;
    return 1;
}

/* ids 0..total-1 each exactly once among the first n entries (END marks ignored) */
static int exactly_once(const struct seq *q, int from, int to, int total) {
    static char seen[MAXN];
    memset(seen, 0, sizeof seen);
    int k = 0;
    for (int i = from; i < to; i++) {
        if (q->id[i] == END_MARK) continue;
        if (q->id[i] < 0 || q->id[i] >= total || seen[q->id[i]]) return 0;
        seen[q->id[i]] = 1;
        k++;
    }
    return k == total;
}

static void stream_opts(struct st_stream_options *so, const char *url) {
    st_stream_options_init(so);
    so->url = url;
    so->seed = 7;
    so->shuffle_shards = 3;
    so->shuffle_buffer = 8;
    so->memory_budget = 64u << 20;
    so->epochs = 1;
}

/* augmentation of every kind on, small images so the test is quick under sanitizers */
static void decode_opts(struct st_decode_options *o, int threads, int ahead) {
    st_decode_options_init(o);
    o->threads = threads;
    o->ahead = ahead;
    o->image_size = 48;
    o->random_crop = 1;
    o->flip_p = 0.5f;
    o->jitter[0] = o->jitter[1] = o->jitter[2] = 0.2f;
    o->jitter[3] = 0.05f;
    o->audio_aug.gain_db_min = -6;
    o->audio_aug.gain_db_max = 6;
    o->audio_aug.shift_max = 1600;
    o->audio_aug.freq_masks = 2;
    o->audio_aug.freq_mask_max = 10;
    o->audio_aug.time_masks = 2;
    o->audio_aug.time_mask_max = 50;
}

/* ---- tests ---- */

TEST(order_threads_and_tensors) {
    struct st_stream_options so;
    stream_opts(&so, g_img);
    static struct seq ref, got;
    struct st_decode_options o;
    decode_opts(&o, 1, 2);
    run_dec(&so, &o, -1, 1, &ref);
    CHECKF(ref.rc == ST_OK, "%s", ref.err.msg);
    CHECKF(ref.samples == TOTAL && exactly_once(&ref, 0, ref.n, TOTAL), "%d samples", ref.samples);
    CHECK(ref.st.samples == TOTAL && ref.st.images + ref.st.audio == TOTAL && ref.st.skipped == 0);
    CHECK(ref.st.images > TOTAL / 4 && ref.st.audio > TOTAL / 4);
    /* the plain stream's order */
    {
        struct st_stream *s;
        struct st_error err;
        CHECK(st_stream_open(&s, &so, &err) == ST_OK);
        struct st_sample smp;
        int i = 0, same = 1;
        while (st_stream_next(s, &smp, &err) == ST_OK) {
            const struct st_sample_field *c = st_sample_field(&smp, "cls");
            same &= i < ref.n && c && strtoll((const char *)c->data, NULL, 10) == ref.id[i];
            i++;
        }
        st_stream_close(s);
        CHECKF(same && i == TOTAL, "decoded order differs from the stream's (%d samples)", i);
    }
    int cfg[][2] = {{2, 0}, {4, 3}, {3, 40}, {2, 2}};
    for (size_t k = 0; k < sizeof cfg / sizeof *cfg; k++) {
        decode_opts(&o, cfg[k][0], cfg[k][1]);
        run_dec(&so, &o, -1, 1, &got);
        CHECKF(got.rc == ST_OK && got.n == ref.n && seq_equal(&ref, 0, &got, ref.n),
               "threads %d ahead %d: a different sequence or different tensors (%s)", cfg[k][0],
               cfg[k][1], got.err.msg);
        free(got.state);
    }
    printf("  %d samples (%llu images, %llu clips): same keys and tensors for 1..4 threads; "
           "decode %.2f thread-s, consumer waited %.2f s\n",
           ref.samples, (unsigned long long)ref.st.images, (unsigned long long)ref.st.audio,
           ref.st.decode_s, ref.st.wait_s);
    free(ref.state);

    /* tensors equal the modules called directly with the sample's seed */
    decode_opts(&o, 2, 0);
    struct st_decoder *d;
    struct st_error err;
    CHECK(st_decoder_open(&d, &so, &o, &err) == ST_OK);
    struct st_image_transform t;
    int native;
    CHECK(st_decode_image_transform(&o, &t, &native, &err) == ST_OK && !native);
    struct st_audio_mel *mel = NULL;
    CHECK(st_audio_mel_init(&mel, 80, &err) == ST_OK);
    int checked_img = 0, checked_aud = 0, bad = 0;
    for (int i = 0; i < 24; i++) {
        struct st_decoded_sample s;
        if (st_decoder_next(d, &s, &err) != ST_OK) break;
        for (int k = 0; k < s.n_fields; k++) {
            const struct st_decoded_field *f = &s.fields[k];
            if (f->kind == ST_FIELD_IMAGE) {
                struct st_image im;
                CHECK(st_image_load(f->raw, f->raw_size, NULL, &t, st_image_seed(7, 0, s.key), NULL,
                                    &im, &err) == ST_OK);
                float *x = malloc((size_t)3 * im.w * im.h * 4);
                st_image_to_f32(&im, t.mean, t.std, x);
                bad += f->nbytes != (size_t)3 * im.w * im.h * 4 || f->shape[1] != 48 ||
                       f->shape[2] != 48 || memcmp(x, f->data, f->nbytes) != 0;
                free(x);
                st_image_free(&im);
                checked_img++;
            } else if (f->kind == ST_FIELD_AUDIO) {
                struct st_audio a;
                CHECK(st_audio_decode(f->raw, f->raw_size, "x", NULL, &a, &err) == ST_OK);
                uint64_t as = st_audio_aug_seed(7, 0, s.key);
                st_audio_augment_wave(&o.audio_aug, as, a.pcm, a.n);
                float *m = malloc(sizeof(float) * 80 * ST_AUDIO_FRAMES);
                st_audio_log_mel(mel, m, a.pcm, a.n);
                st_audio_augment_mel(&o.audio_aug, as, m, 80, ST_AUDIO_FRAMES);
                bad += f->shape[0] != 80 || f->shape[1] != ST_AUDIO_FRAMES ||
                       memcmp(m, f->data, f->nbytes) != 0 ||
                       fabs(f->src_seconds - (double)a.n / 16000) > 1e-9;
                free(m);
                st_audio_free(&a);
                checked_aud++;
            }
        }
    }
    CHECKF(bad == 0 && checked_img > 3 && checked_aud > 3,
           "%d of %d images / %d clips differ from direct calls", bad, checked_img, checked_aud);
    st_audio_mel_free(mel);
    st_decoder_close(d);

    /* augmentations differ between epochs (same sample, other crop / gain / masks) */
    static struct seq two;
    so.epochs = 2;
    decode_opts(&o, 2, 0);
    run_dec(&so, &o, -1, 2, &two);
    CHECKF(two.rc == ST_OK && two.samples == 2 * TOTAL && two.ends == 2, "%s", two.err.msg);
    static uint64_t e0[TOTAL];
    int phase = 0, differ = 0, pairs = 0;
    for (int i = 0; i < two.n; i++) {
        if (two.id[i] == END_MARK) {
            phase++;
            continue;
        }
        if (two.id[i] < 0 || two.id[i] >= TOTAL) continue;
        if (phase == 0) e0[two.id[i]] = two.sum[i];
        if (phase == 1) {
            pairs++;
            differ += e0[two.id[i]] != two.sum[i];
        }
    }
    CHECKF(pairs == TOTAL && differ > TOTAL * 9 / 10, "%d of %d samples changed between epochs",
           differ, pairs);
    CHECK(exactly_once(&two, 0, TOTAL + 1, TOTAL) && exactly_once(&two, TOTAL + 1, two.n, TOTAL));
    free(two.state);
}

TEST(resume_exact) {
    struct st_stream_options so;
    stream_opts(&so, g_img);
    so.epochs = 2;
    struct st_decode_options o;
    decode_opts(&o, 2, 0);
    static struct seq full, fb, a, b;
    run_dec(&so, &o, -1, 2, &full);
    CHECKF(full.rc == ST_OK && full.samples == 2 * TOTAL, "%s", full.err.msg);
    struct st_stream_options so0 = so;
    so0.shuffle_buffer = 0;
    run_dec(&so0, &o, -1, 2, &fb); /* the reference without a shuffle buffer */
    CHECKF(fb.rc == ST_OK && fb.samples == 2 * TOTAL, "%s", fb.err.msg);
    free(fb.state);
    int stops[] = {0, 1, 37, TOTAL - 1, TOTAL, TOTAL + 5, 2 * TOTAL - 1};
    for (size_t k = 0; k < sizeof stops / sizeof *stops; k++) {
        for (int buf = 0; buf < 2; buf++) {
            struct st_stream_options so2 = buf ? so : so0;
            const struct seq *ref = buf ? &full : &fb;
            run_dec(&so2, &o, stops[k], 2, &a);
            CHECKF(a.rc == ST_OK, "%s", a.err.msg);
            struct st_stream_options so3 = so2;
            so3.resume_state = a.state;
            struct st_decode_options o3;
            decode_opts(&o3, 3, 5); /* other threads and read-ahead: same sequence */
            run_dec(&so3, &o3, -1, 2 - a.ends, &b);
            CHECKF(b.rc == ST_OK, "stop %d: %s", stops[k], b.err.msg);
            int ok =
                a.n + b.n == ref->n && seq_equal(ref, 0, &a, a.n) && seq_equal(ref, a.n, &b, b.n);
            CHECKF(ok,
                   "stop %d (shuffle buffer %d): %d + %d entries do not continue the %d of "
                   "the uninterrupted run",
                   stops[k], so2.shuffle_buffer, a.n, b.n, ref->n);
            if (k == 2 && buf)
                printf("  resume after %d samples: state %zu bytes (shuffle buffer 8, %d in "
                       "flight at most)\n",
                       stops[k], strlen(a.state), 4 * o.threads + 2);
            free(a.state);
            free(b.state);
        }
    }
    free(full.state);
    /* a plain stream record resumes too (position of the stream, nothing in flight) */
    struct st_stream *s;
    struct st_error err;
    so.epochs = 1;
    so.shuffle_buffer = 0;
    CHECK(st_stream_open(&s, &so, &err) == ST_OK);
    struct st_sample smp;
    for (int i = 0; i < 50; i++)
        st_stream_next(s, &smp, &err);
    char *st = malloc(1 << 16);
    st_stream_state(s, st, 1 << 16);
    st_stream_close(s);
    run_dec(&so, &o, -1, 1, &full);
    so.resume_state = st;
    run_dec(&so, &o, -1, 1, &b);
    CHECKF(b.rc == ST_OK && b.samples == TOTAL - 50 && seq_equal(&full, 50, &b, b.n),
           "resume from a stream record: %d samples %s", b.samples, b.err.msg);
    free(st);
    free(full.state);
    free(b.state);
    /* garbage is refused with a message */
    so.resume_state = "{\"streamtune_decode\":1,\"epoch\":0,\"pending\":[[0,1]],\"stream\":{}}";
    struct st_decoder *d;
    CHECK(st_decoder_open(&d, &so, &o, &err) == ST_ERR_FORMAT && d == NULL);
    CHECKF(strstr(err.msg, "resume state") != NULL, "%s", err.msg);
}

TEST(bad_samples) {
    struct st_stream_options so;
    stream_opts(&so, g_bad);
    so.shuffle = 0;
    so.shuffle_buffer = 0;
    struct st_decode_options o;
    decode_opts(&o, 3, 0);
    o.on_bad = ST_BAD_SAMPLE_SKIP;
    static struct seq q;
    run_dec(&so, &o, -1, 1, &q);
    CHECKF(q.rc == ST_OK, "%s", q.err.msg);
    int64_t want[] = {1000, 1001, 1002, 1003, 1004, END_MARK};
    int same = q.n == 6;
    for (int i = 0; same && i < 6; i++)
        same = q.id[i] == want[i];
    CHECKF(same, "skip: %d entries, not the five good samples", q.n);
    CHECKF(q.st.skipped == 4 && q.st.skipped_limit == 1 && q.st.skipped_corrupt == 3 &&
               q.st.n_skip_log == 4,
           "skipped %llu (limit %llu, corrupt %llu)", (unsigned long long)q.st.skipped,
           (unsigned long long)q.st.skipped_limit, (unsigned long long)q.st.skipped_corrupt);
    const char *keys[] = {"bad-huge", "bad-trunc", "bad-crc", "bad-empty"};
    const char *why[] = {"30000x30000", "bad-trunc.flac", "CRC", "empty"};
    for (int i = 0; i < 4 && i < q.st.n_skip_log; i++) {
        CHECKF(!strcmp(q.st.skip_log[i].key, keys[i]) && strstr(q.st.skip_log[i].reason, why[i]) &&
                   strstr(q.st.skip_log[i].reason, keys[i]) &&
                   !strchr(q.st.skip_log[i].reason, '\n'),
               "skip %d: %s: %s", i, q.st.skip_log[i].key, q.st.skip_log[i].reason);
        printf("     skipped %-10s %s\n", q.st.skip_log[i].key, q.st.skip_log[i].reason);
    }
    free(q.state);
    /* the same with any thread count: identical counts */
    decode_opts(&o, 1, 2);
    o.on_bad = ST_BAD_SAMPLE_SKIP;
    run_dec(&so, &o, -1, 1, &q);
    CHECK(q.rc == ST_OK && q.n == 6 && q.st.skipped == 4);
    free(q.state);
    /* fail: the first good sample, then a one-line error naming the sample; sticky */
    decode_opts(&o, 3, 0);
    struct st_decoder *d;
    struct st_error err;
    CHECK(st_decoder_open(&d, &so, &o, &err) == ST_OK);
    struct st_decoded_sample s;
    CHECK(st_decoder_next(d, &s, &err) == ST_OK && sample_id(&s) == 1000);
    enum st_status rc = st_decoder_next(d, &s, &err);
    CHECKF(rc == ST_ERR_NOMEM && strstr(err.msg, "bad-huge.jpg") &&
               strstr(err.msg, "30000x30000") && strstr(err.msg, "bad.tar") &&
               !strchr(err.msg, '\n'),
           "fail: %d %s", (int)rc, err.msg);
    printf("     fail: %s\n", err.msg);
    struct st_error err2;
    CHECK(st_decoder_next(d, &s, &err2) == rc && !strcmp(err2.msg, err.msg));
    st_decoder_close(d);
    /* limits refuse good samples before decoding */
    decode_opts(&o, 2, 0);
    o.on_bad = ST_BAD_SAMPLE_SKIP;
    o.max_image_pixels = 100;
    o.max_audio_seconds = 0.05;
    stream_opts(&so, g_img);
    run_dec(&so, &o, -1, 1, &q);
    CHECKF(q.rc == ST_OK && q.samples == 0 && q.st.skipped == TOTAL && q.st.skipped_limit == TOTAL,
           "limits: %d delivered, %llu skipped (%llu by limits)", q.samples,
           (unsigned long long)q.st.skipped, (unsigned long long)q.st.skipped_limit);
    free(q.state);
    /* not decoding: every field passes through */
    decode_opts(&o, 2, 0);
    o.decode = 0;
    stream_opts(&so, g_bad);
    so.shuffle = 0;
    run_dec(&so, &o, -1, 1, &q);
    CHECK(q.rc == ST_OK && q.samples == 9 && q.st.images == 0);
    free(q.state);
}

TEST(mix_parse) {
    struct st_mix_source m;
    char *store;
    struct st_error err;
    CHECK(st_mix_source_parse("img=s3://b/x/:0.3", &m, &store, &err) == ST_OK &&
          !strcmp(m.name, "img") && !strcmp(m.url, "s3://b/x/") && m.weight == 0.3);
    st_free(store);
    CHECK(st_mix_source_parse("t=http://h:8080/a.jsonl:2", &m, &store, &err) == ST_OK &&
          !strcmp(m.url, "http://h:8080/a.jsonl") && m.weight == 2);
    st_free(store);
    const char *bad[] = {"noweight=s3://x/y", "=u:1",  "a=:1", "a b=x:1", "a=x:-1",
                         "a=x:abc",           "a=x:0", "a=x:", "nothing", "a=x:inf"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        enum st_status rc = st_mix_source_parse(bad[i], &m, &store, &err);
        CHECKF(rc == ST_ERR_ARG && store == NULL && strstr(err.msg, "--data"), "'%s': %d %s",
               bad[i], (int)rc, err.msg);
    }
}

TEST(mix) {
    struct st_stream_options so;
    stream_opts(&so, NULL);
    so.epochs = 0;
    so.shuffle_buffer = 4;
    struct st_decode_options o;
    decode_opts(&o, 2, 0);
    struct st_mix_source src[2] = {{"images", g_img, 0.3, 0}, {"text", g_txt, 0.7, 0}};
    static struct seq a, b, c;
    run_mix(&so, &o, src, 2, ST_MIX_STOP_FIRST, 4000, 1 << 30, &a);
    CHECKF(a.rc == ST_OK && a.samples == 4000, "%s", a.err.msg);
    int n0 = 0;
    for (int i = 0; i < a.n; i++)
        n0 += a.id[i] != END_MARK && a.src[i] == 0;
    double p = (double)n0 / 4000, sd = sqrt(0.3 * 0.7 / 4000);
    CHECKF(fabs(p - 0.3) < 4 * sd, "images drawn %.4f of the time, weight 0.3 (sd %.4f)", p, sd);
    printf("  mix 0.3/0.7 over 4000 samples: images %.4f (|diff| %.1f sd), %d mix epoch ends\n", p,
           fabs(p - 0.3) / sd, a.ends);
    CHECK(a.st.stream.mem_budget == so.memory_budget); /* two halves */
    /* deterministic for a seed; another seed, another sequence */
    run_mix(&so, &o, src, 2, ST_MIX_STOP_FIRST, 600, 1 << 30, &b);
    CHECK(b.rc == ST_OK && seq_equal(&a, 0, &b, b.n));
    free(b.state);
    so.seed = 8;
    run_mix(&so, &o, src, 2, ST_MIX_STOP_FIRST, 600, 1 << 30, &b);
    CHECK(b.rc == ST_OK && !seq_equal(&a, 0, &b, b.n));
    free(b.state);
    so.seed = 7;
    /* resume at several points (mid-epoch, across mix epoch ends) */
    int stops[] = {1, 150, 333, 580};
    for (size_t k = 0; k < sizeof stops / sizeof *stops; k++) {
        run_mix(&so, &o, src, 2, ST_MIX_STOP_FIRST, stops[k], 1 << 30, &b);
        struct st_stream_options so2 = so;
        so2.resume_state = b.state;
        struct st_decode_options o2;
        decode_opts(&o2, 1, 3);
        run_mix(&so2, &o2, src, 2, ST_MIX_STOP_FIRST, 600 - stops[k], 1 << 30, &c);
        CHECKF(c.rc == ST_OK && seq_equal(&a, 0, &b, b.n) && seq_equal(&a, b.n, &c, c.n),
               "mix resume after %d: %s", stops[k], c.err.msg);
        free(b.state);
        free(c.state);
    }
    /* a record of other sources is refused */
    struct st_mix_source other[2] = {{"images", g_img, 0.3, 0}, {"words", g_txt, 0.7, 0}};
    struct st_stream_options so3 = so;
    so3.resume_state = a.state;
    struct st_mix *m;
    struct st_error err;
    CHECK(st_mix_open(&m, &so3, &o, other, 2, ST_MIX_STOP_FIRST, &err) == ST_ERR_FORMAT);
    CHECKF(strstr(err.msg, "other sources"), "%s", err.msg);
    free(a.state);
    /* epoch rules: the first mix epoch ends with the first source's epoch (first) or once
     * both have ended one (all); per-source budgets */
    so.shuffle = 0;
    src[0].memory_budget = 24u << 20;
    so.epochs = 1;
    run_mix(&so, &o, src, 2, ST_MIX_STOP_ALL, -1, 1, &a);
    CHECKF(a.rc == ST_OK && a.ends == 1, "%s", a.err.msg);
    static char seen0[TOTAL], seen1[400];
    memset(seen0, 0, sizeof seen0);
    memset(seen1, 0, sizeof seen1);
    int k0 = 0, k1 = 0;
    for (int i = 0; i < a.n; i++) {
        if (a.id[i] == END_MARK) continue;
        if (a.src[i] == 0 && a.id[i] >= 0 && a.id[i] < TOTAL && !seen0[a.id[i]]++) k0++;
        if (a.src[i] == 1 && a.id[i] >= 0 && a.id[i] < 400 && !seen1[a.id[i]]++) k1++;
    }
    CHECKF(k0 == TOTAL && k1 == 300, "all: %d of %d images, %d of 300 records", k0, TOTAL, k1);
    free(a.state);
    run_mix(&so, &o, src, 2, ST_MIX_STOP_FIRST, -1, 1, &a);
    int c0 = 0, c1 = 0;
    for (int i = 0; i < a.n; i++)
        if (a.id[i] != END_MARK) {
            if (a.src[i])
                c1++;
            else
                c0++;
        }
    CHECKF(a.rc == ST_OK && (c0 == TOTAL || c1 == 300) && c0 <= TOTAL && c1 <= 300,
           "first: %d images, %d records before the mix epoch ended", c0, c1);
    struct st_mix *m2;
    CHECK(st_mix_open(&m2, &so, &o, src, 2, ST_MIX_STOP_FIRST, &err) == ST_OK);
    struct st_decode_stats tot, per[2];
    st_mix_stats(m2, &tot, per);
    CHECK(per[0].stream.mem_budget == (24u << 20) && per[1].stream.mem_budget == (40u << 20));
    st_mix_close(m2);
    free(a.state);
    /* too little memory for a share is refused, naming the knob */
    so.memory_budget = 6u << 20;
    src[0].memory_budget = 0;
    CHECK(st_mix_open(&m2, &so, &o, src, 2, ST_MIX_STOP_FIRST, &err) == ST_ERR_ARG &&
          strstr(err.msg, "--stream-memory"));
}

/* Damaged resume records (decoder and mix) are refused with a status or, when the damage is
 * harmless, accepted; never a crash or a leak (run under ASan in CI). */
TEST(damaged_states) {
    struct st_stream_options so;
    stream_opts(&so, g_img);
    struct st_decode_options o;
    decode_opts(&o, 1, 4);
    static struct seq a;
    run_dec(&so, &o, 20, 1, &a);
    CHECK(a.rc == ST_OK && a.state);
    struct st_mix_source src[2] = {{"images", g_img, 0.5, 0}, {"text", g_txt, 0.5, 0}};
    static struct seq m;
    struct st_stream_options ms = so;
    ms.url = NULL;
    run_mix(&ms, &o, src, 2, ST_MIX_STOP_FIRST, 30, 1, &m);
    CHECK(m.rc == ST_OK && m.state);
    uint64_t x = 0x1234567;
    int refused = 0, accepted = 0;
    for (int it = 0; it < 160; it++) {
        const char *orig = it % 2 ? m.state : a.state;
        size_t n = strlen(orig);
        char *t = malloc(n + 1);
        memcpy(t, orig, n + 1);
        int kind = it % 4;
        for (int k = 0; k < 1 + it % 3; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t at = (size_t)(x % n);
            static const char pool[] = "0123456789[]{}\",:-eE.AZaz+/= ";
            if (kind == 0) t[at] = pool[(x >> 20) % (sizeof pool - 1)]; /* a changed byte */
            if (kind == 1) t[at] = '\0';                                /* truncated */
            if (kind == 2 && at + 8 < n) memset(t + at, '9', 8);        /* huge numbers */
            if (kind == 3) t[at] = (char)(0x80 | (x >> 33));            /* not UTF-8 */
        }
        struct st_stream_options s2 = it % 2 ? ms : so;
        s2.resume_state = t;
        struct st_error err;
        enum st_status rc;
        if (it % 2) {
            struct st_mix *mx;
            rc = st_mix_open(&mx, &s2, &o, src, 2, ST_MIX_STOP_FIRST, &err);
            if (!rc) {
                struct st_decoded_sample smp;
                for (int i = 0; i < 5 && st_mix_next(mx, &smp, &err) == ST_OK; i++)
                    ;
                st_mix_close(mx);
            }
        } else {
            struct st_decoder *d;
            rc = st_decoder_open(&d, &s2, &o, &err);
            if (!rc) {
                struct st_decoded_sample smp;
                for (int i = 0; i < 5 && st_decoder_next(d, &smp, &err) == ST_OK; i++)
                    ;
                st_decoder_close(d);
            }
        }
        if (rc) {
            refused++;
            CHECKF(err.msg[0] && !strchr(err.msg, '\n'), "refusal without a one-line message");
        } else {
            accepted++;
        }
        free(t);
    }
    printf("  160 damaged records: %d refused with a message, %d harmless (accepted)\n", refused,
           accepted);
    CHECK(refused > 80);
    free(a.state);
    free(m.state);
}

/* ---- S3 + faults ---- */

#define NET_SHARDS 8
#define NET_PER 30
#define NET_TOTAL (NET_SHARDS * NET_PER)

static void net_opts(struct st_stream_options *so, const char *endpoint) {
    st_stream_options_init(so);
    so->url = "s3://mmdata/ds/";
    so->endpoint_url = endpoint;
    so->access_key_id = "S3RVER";
    so->secret_access_key = "S3RVER";
    so->region = "us-east-1";
    so->seed = 99;
    so->shuffle_shards = 3;
    so->shuffle_buffer = 6;
    so->memory_budget = 48u << 20;
    so->part_size = 16 * 1024;
    so->connections = 8;
    so->epochs = 1;
    so->backoff_base = 0.02;
    so->backoff_max = 0.2;
    so->max_retries = 12;
    so->stall_timeout = 1;
    so->connect_timeout = 2;
}

/* --child ENDPOINT STATE_FILE OUT_FILE: resume the decoded stream, write "rc n" + id sum lines */
static int child_main(int argc, char **argv) {
    if (argc < 5) return 2;
    char *state;
    size_t n;
    struct st_error err;
    st_log_set_level(ST_LOG_ERROR);
    if (st_read_file(argv[3], (size_t)1 << 30, &state, &n, &err)) return 3;
    struct st_stream_options so;
    net_opts(&so, argv[2]);
    so.resume_state = state;
    struct st_decode_options o;
    decode_opts(&o, 3, 0);
    static struct seq q;
    run_dec(&so, &o, -1, 1, &q);
    FILE *f = fopen(argv[4], "w");
    if (!f) return 4;
    fprintf(f, "%d %d\n", (int)q.rc, q.n);
    for (int i = 0; i < q.n; i++)
        fprintf(f, "%lld %llu\n", (long long)q.id[i], (unsigned long long)q.sum[i]);
    if (q.rc) fprintf(f, "%s\n", q.err.msg);
    fclose(f);
    st_free(state);
    free(q.state);
    return 0;
}

TEST(s3_faults_decode_and_resume) {
    struct td_server s3 = {0}, px = {0};
    int r = td_s3rver_start(&s3, "mmdata");
    if (r == 2) TEST_SKIP("node or tools/node_modules/@20minutes/s3rver is not installed");
    CHECKF(r == 0, "s3rver did not start");
    if (r) return;
    char *dir = td_tmpdir("mmnet");
    CHECK(mm_make_dataset(dir, NET_SHARDS, NET_PER) == 0);
    CHECK(td_s3_upload_dir(s3.url, "mmdata", "ds/", dir) == 0);
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", s3.port);
    const char *args[] = {"--target", target,       "--fault-rate", "0.3",           "--seed",
                          "5",        "--stall-ms", "1500",         "--retry-after", "0"};
    CHECK(td_node_start(&px, "faultproxy.js", args, 10) == 0);
    static struct seq ref, got, first;
    struct st_stream_options so;
    struct st_decode_options o;
    decode_opts(&o, 3, 0);
    net_opts(&so, s3.url);
    run_dec(&so, &o, -1, 1, &ref);
    CHECKF(ref.rc == ST_OK && ref.samples == NET_TOTAL && exactly_once(&ref, 0, ref.n, NET_TOTAL),
           "fault-free: %d samples %s", ref.samples, ref.err.msg);
    free(ref.state);
    net_opts(&so, px.url);
    run_dec(&so, &o, -1, 1, &got);
    CHECKF(got.rc == ST_OK && got.n == ref.n && seq_equal(&ref, 0, &got, got.n),
           "30%% faults: %d samples, not the fault-free sequence (%s)", got.samples, got.err.msg);
    CHECK(got.st.stream.retries > 0);
    printf("  s3 + 30%% faults: %d samples decoded exactly once, same tensors; %llu requests, "
           "%llu retries\n",
           got.samples, (unsigned long long)got.st.stream.requests,
           (unsigned long long)got.st.stream.retries);
    free(got.state);
    /* stop mid-epoch, resume in a new process (through the faulty proxy) */
    char state_path[600], out_path[600], log[600], self[1024];
    snprintf(state_path, sizeof state_path, "%s/state.json", dir);
    snprintf(out_path, sizeof out_path, "%s/out", dir);
    snprintf(log, sizeof log, "%s/child.log", dir);
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    self[sl > 0 ? sl : 0] = '\0';
    int stops[] = {1, 97, NET_TOTAL - 1, NET_TOTAL};
    for (size_t k = 0; k < sizeof stops / sizeof *stops; k++) {
        run_dec(&so, &o, stops[k], 1, &first);
        CHECKF(first.rc == ST_OK && first.samples == stops[k], "%s", first.err.msg);
        td_write(state_path, first.state, strlen(first.state));
        char *argv[] = {self, "--child", px.url, state_path, out_path, NULL};
        pid_t pid = td_spawn(argv, NULL, log);
        int st = -1;
        waitpid(pid, &st, 0);
        CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x (log %s)", st, log);
        FILE *f = fopen(out_path, "r");
        int rc = -1, n = 0;
        CHECK(f && fscanf(f, "%d %d", &rc, &n) == 2);
        int same = rc == 0 && first.n + n == ref.n && seq_equal(&ref, 0, &first, first.n);
        for (int i = 0; f && same && i < n; i++) {
            long long id;
            unsigned long long sum;
            same = fscanf(f, "%lld %llu", &id, &sum) == 2 && id == ref.id[first.n + i] &&
                   sum == ref.sum[first.n + i];
        }
        if (f) fclose(f);
        CHECKF(same, "stop %d: the new process did not continue the sequence (rc %d, %d + %d)",
               stops[k], rc, first.n, n);
        printf("  resumed in a new process after %d samples: state %zu bytes, sequence "
               "continued\n",
               stops[k], strlen(first.state));
        free(first.state);
    }
    td_stop(&px);
    td_stop(&s3);
    td_rm_rf(dir);
    free(dir);
}

/* ---- setup ---- */

static int write_datasets(const char *root) {
    char p[4096];
    snprintf(p, sizeof p, "%s/img", root);
    mkdir(p, 0755);
    if (mm_make_dataset(p, N_SHARDS, PER)) return 1;
    snprintf(p, sizeof p, "%s/txt", root);
    mkdir(p, 0755);
    int kinds[] = {TD_JSONL};
    if (td_make_dataset(p, 3, 100, kinds, 1)) return 1;
    snprintf(p, sizeof p, "%s/bad", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/bad/bad.tar", root);
    return mm_make_bad_shard(p);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--child")) return child_main(argc, argv);
    if (argc > 2 && !strcmp(argv[1], "--write-dataset")) return write_datasets(argv[2]);
    signal(SIGPIPE, SIG_IGN);
    st_log_set_level(ST_LOG_ERROR); /* skipped samples are logged as warnings: checked in stats */
    g_dir = td_tmpdir("decode");
    if (!g_dir || write_datasets(g_dir)) {
        fprintf(stderr, "cannot write the datasets\n");
        return 1;
    }
    char p[4096];
    snprintf(p, sizeof p, "%s/img", g_dir);
    g_img = strdup(p);
    snprintf(p, sizeof p, "%s/txt", g_dir);
    g_txt = strdup(p);
    snprintf(p, sizeof p, "%s/bad/bad.tar", g_dir);
    g_bad = strdup(p);
    RUN(order_threads_and_tensors);
    RUN(resume_exact);
    RUN(bad_samples);
    RUN(mix_parse);
    RUN(mix);
    RUN(damaged_states);
    RUN(s3_faults_decode_and_resume);
    td_rm_rf(g_dir);
    free(g_dir);
    free(g_img);
    free(g_txt);
    free(g_bad);
    CHECK(st_alloc_live_count() == 0);
    return test_finish();
}
