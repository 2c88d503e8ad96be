/* test_image.c: image decode and transforms (src/data/image*.c) against Pillow + torchvision.
 *
 * Goldens: tests/golden/image/ from tools/image_reference.py (inputs, expected outputs of Pillow
 * and torchvision, cases.txt describing each check with its tolerance in 8-bit units). The
 * claim checked is bit-exactness (tolerance 0) for decode, resize, centre crop, the random
 * pipeline with our RNG, colour adjustments and normalisation; the issue asks for <= 2/255.
 * The DCT-scaled JPEG path is compared with Pillow's draft() decode (same scale) exactly, and
 * with a full decode for information (printed, loosely bounded).
 * Also: errors and limits (30000 x 30000 header, truncation, bad CRCs, empty and unknown
 * data), determinism of random transforms, region decode == full decode, failed allocations,
 * and the fuzz corpus replayed.
 *
 * `test_image --bench DIR [SECONDS]` is the C side of bench/image_bench.py: decode + random
 * resized crop + flip + normalise to 224 x 224 for every .jpg in DIR, one thread, and prints
 * images/s for st_image_load and for a whole-image decode + st_image_apply (kept here because
 * the bench has no C target of its own yet). */
#define LLVMFuzzerTestOneInput st_fuzz_image_one
#include "../fuzz/fuzz_image.c"
#undef LLVMFuzzerTestOneInput

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/image_internal.h"
#include "harness.h"
#include "streamtune/image.h"

#define GOLD ST_SOURCE_DIR "/tests/golden/image"

static uint8_t *read_all(const char *path, size_t *len) {
    char *buf = NULL;
    struct st_error err = {0};
    if (st_read_file(path, 64u << 20, &buf, len, &err)) {
        fprintf(stderr, "  cannot read %s: %s\n", path, err.msg);
        return NULL;
    }
    return (uint8_t *)buf;
}

static int load_png(const char *name, struct st_image *im) {
    char path[1024];
    snprintf(path, sizeof path, GOLD "/%s", name);
    size_t len;
    uint8_t *d = read_all(path, &len);
    if (!d) return -1;
    struct st_error err = {0};
    enum st_status rc = st_image_decode(d, len, NULL, im, &err);
    st_free(d);
    if (rc) fprintf(stderr, "  %s: %s\n", name, err.msg);
    return rc ? -1 : 0;
}

/* max |a - b| over two same-sized images; -1 when the sizes differ */
static int max_diff(const struct st_image *a, const struct st_image *b, double *mean) {
    if (a->w != b->w || a->h != b->h || a->c != b->c) return -1;
    size_t n = (size_t)a->w * a->h * a->c;
    int m = 0;
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a->px[i] - (int)b->px[i]);
        if (d > m) m = d;
        s += d;
    }
    if (mean) *mean = n ? s / (double)n : 0;
    return m;
}

/* ---- golden cases ---- */

struct kind_stat {
    const char *name;
    int cases, worst;
};
static struct kind_stat kinds[] = {{"decode", 0, 0}, {"resize", 0, 0}, {"center", 0, 0},
                                   {"none", 0, 0},   {"random", 0, 0}, {"adjust", 0, 0},
                                   {"clip", 0, 0}};

static void note(const char *kind, int diff) {
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(kinds[i].name, kind) == 0) {
            kinds[i].cases++;
            if (diff > kinds[i].worst || diff < 0) kinds[i].worst = diff < 0 ? 999 : diff;
        }
}

static enum st_image_filter parse_filter(const char *s) {
    return strcmp(s, "bicubic") == 0 ? ST_IMAGE_BICUBIC : ST_IMAGE_BILINEAR;
}

static float tv_lut[2][3][256]; /* torchvision ToTensor+Normalize per byte: [clip, siglip] */
static int tv_lut_ok;

/* Compare got with the expected PNG; tol in 8-bit units. */
static void check_image(const char *kind, const char *line, const struct st_image *got,
                        const char *exp_name, int tol) {
    struct st_image exp;
    if (load_png(exp_name, &exp)) {
        CHECKF(0, "%s: cannot load %s", line, exp_name);
        return;
    }
    double mean = 0;
    int d = max_diff(got, &exp, &mean);
    note(kind, d);
    CHECKF(d >= 0 && d <= tol, "%s: max diff %d (mean %.4f), size %dx%d vs %dx%d", line, d, mean,
           got->w, got->h, exp.w, exp.h);
    st_image_free(&exp);
}

static void run_case(char *line) {
    char orig[512];
    snprintf(orig, sizeof orig, "%s", line);
    char *f[32];
    int nf = 0;
    for (char *save = NULL, *t = strtok_r(line, " \n", &save); t && nf < 32;
         t = strtok_r(NULL, " \n", &save))
        f[nf++] = t;
    if (nf == 0 || f[0][0] == '#') return;
    struct st_error err = {0};
    if (strcmp(f[0], "seed") == 0 && nf == 5) {
        uint64_t seed = strtoull(f[1], NULL, 10), epoch = strtoull(f[2], NULL, 10);
        uint64_t want = strtoull(f[4], NULL, 10);
        const char *key = strcmp(f[3], "-") == 0 ? "" : f[3];
        CHECKF(st_image_seed(seed, epoch, key) == want, "%s: got %llu", orig,
               (unsigned long long)st_image_seed(seed, epoch, key));
        return;
    }
    char path[1024];
    snprintf(path, sizeof path, GOLD "/%s", f[1]);
    size_t len;
    uint8_t *data = read_all(path, &len);
    if (!data) {
        CHECKF(0, "%s: missing input", orig);
        return;
    }
    struct st_image in = {0}, out = {0};
    enum st_status rc = st_image_decode(data, len, NULL, &in, &err);
    CHECKF(rc == ST_OK, "%s: decode: %s", orig, err.msg);
    if (rc) goto done;
    if (strcmp(f[0], "decode") == 0 && nf == 4) {
        check_image("decode", orig, &in, f[2], atoi(f[3]));
    } else if (strcmp(f[0], "resize") == 0 && nf == 7) {
        rc = st_image_resize(&in, atoi(f[2]), atoi(f[3]), parse_filter(f[4]), &out, &err);
        CHECKF(rc == ST_OK, "%s: %s", orig, err.msg);
        if (!rc) check_image("resize", orig, &out, f[5], atoi(f[6]));
    } else if ((strcmp(f[0], "center") == 0 && nf == 8) || (strcmp(f[0], "none") == 0 && nf == 6)) {
        int center = f[0][0] == 'c';
        struct st_image_transform t;
        st_image_transform_preset(&t, ST_IMAGE_PRESET_CLIP);
        t.crop = center ? ST_IMAGE_CROP_CENTER : ST_IMAGE_CROP_NONE;
        t.size = atoi(f[2]);
        t.resize_size = center ? atoi(f[3]) : 0;
        t.filter = parse_filter(f[center ? 4 : 3]);
        t.jpeg_scale = center ? atoi(f[5]) : 0;
        const char *exp = f[center ? 6 : 4];
        int tol = atoi(f[center ? 7 : 5]);
        rc = st_image_load(data, len, NULL, &t, 0, NULL, &out, &err);
        CHECKF(rc == ST_OK, "%s: %s", orig, err.msg);
        if (!rc) check_image(f[0], orig, &out, exp, tol);
        if (!t.jpeg_scale) { /* the decoded-image path gives the same bytes */
            struct st_image out2;
            rc = st_image_apply(&in, &t, 0, NULL, &out2, &err);
            CHECKF(rc == ST_OK && max_diff(&out, &out2, NULL) == 0, "%s: apply != load", orig);
            st_image_free(&out2);
        }
    } else if (strcmp(f[0], "random") == 0 && nf == 16) {
        struct st_image_transform t;
        st_image_transform_preset(&t, ST_IMAGE_PRESET_CLIP);
        t.crop = ST_IMAGE_CROP_RANDOM;
        t.size = atoi(f[2]);
        t.filter = parse_filter(f[3]);
        uint64_t seed = strtoull(f[4], NULL, 10);
        t.scale[0] = strtof(f[5], NULL), t.scale[1] = strtof(f[6], NULL);
        t.ratio[0] = strtof(f[7], NULL), t.ratio[1] = strtof(f[8], NULL);
        t.flip_p = strtof(f[9], NULL);
        t.brightness = strtof(f[10], NULL), t.contrast = strtof(f[11], NULL);
        t.saturation = strtof(f[12], NULL), t.hue = strtof(f[13], NULL);
        t.jpeg_scale = 0;
        rc = st_image_load(data, len, NULL, &t, seed, NULL, &out, &err);
        CHECKF(rc == ST_OK, "%s: %s", orig, err.msg);
        if (!rc) check_image("random", orig, &out, f[14], atoi(f[15]));
        struct st_image out2;
        rc = st_image_apply(&in, &t, seed, NULL, &out2, &err);
        CHECKF(rc == ST_OK && max_diff(&out, &out2, NULL) == 0, "%s: apply != load", orig);
        st_image_free(&out2);
        if (in.w * in.h > 100000) { /* DCT-scaled: the pixels differ; how much, for the record */
            t.jpeg_scale = 1;
            rc = st_image_load(data, len, NULL, &t, seed, NULL, &out2, &err);
            struct st_image exp;
            if (!rc && !load_png(f[14], &exp)) {
                double mean = 0;
                int d = max_diff(&out2, &exp, &mean);
                printf("     DCT-scaled random crop vs full decode: max %d, mean %.3f (8-bit)\n", d,
                       mean);
                CHECKF(d >= 0 && mean < 2.0, "%s: DCT-scaled mean diff %.3f", orig, mean);
                st_image_free(&exp);
            }
            st_image_free(&out2);
        }
    } else if (strcmp(f[0], "adjust") == 0 && nf == 8) {
        rc = st_image_adjust(&in, strtof(f[2], NULL), strtof(f[3], NULL), strtof(f[4], NULL),
                             strtof(f[5], NULL), &err);
        CHECKF(rc == ST_OK, "%s: %s", orig, err.msg);
        if (!rc) check_image("adjust", orig, &in, f[6], atoi(f[7]));
    } else if (strcmp(f[0], "norm") == 0 && nf == 10) {
        float mean[3], std[3];
        for (int c = 0; c < 3; c++)
            mean[c] = strtof(f[2 + c], NULL), std[c] = strtof(f[5 + c], NULL);
        size_t n = (size_t)3 * in.w * in.h, l32, l16;
        float *got = st_malloc(n * sizeof(float));
        uint16_t *got16 = st_malloc(n * sizeof(uint16_t));
        char p32[1024], p16[1024];
        snprintf(p32, sizeof p32, GOLD "/%s", f[8]);
        snprintf(p16, sizeof p16, GOLD "/%s", f[9]);
        uint8_t *e32 = read_all(p32, &l32), *e16 = read_all(p16, &l16);
        CHECKF(e32 && e16 && l32 == n * 4 && l16 == n * 2, "%s: reference sizes", orig);
        if (got && got16 && e32 && e16 && l32 == n * 4 && l16 == n * 2) {
            st_image_to_f32(&in, mean, std, got);
            st_image_to_bf16(&in, mean, std, got16);
            float *ref = st_malloc(n * sizeof(float));
            memcpy(ref, e32, n * 4);
            double m = test_max_abs_diff(got, ref, n, NULL);
            int bad16 = 0;
            for (size_t i = 0; i < n; i++) {
                uint16_t r;
                memcpy(&r, e16 + 2 * i, 2);
                bad16 += r != got16[i];
            }
            printf("     normalise (%s): max |f32 - torchvision| = %g, bf16 mismatches %d\n", f[8],
                   m, bad16);
            CHECKF(m == 0 && bad16 == 0, "%s: f32 diff %g, %d bf16 mismatches", orig, m, bad16);
            /* keep torchvision's table for the clip cases: the ramp holds every byte value */
            int which = strstr(f[8], "clip") ? 0 : 1;
            size_t hw = (size_t)in.w * in.h;
            for (int c = 0; c < 3; c++)
                for (size_t i = 0; i < hw; i++)
                    tv_lut[which][c][in.px[3 * i + c]] = ref[c * hw + i];
            tv_lut_ok |= 1 << which;
            st_free(ref);
        }
        st_free(got);
        st_free(got16);
        st_free(e32);
        st_free(e16);
    } else if (strcmp(f[0], "clip") == 0 && nf == 5) {
        struct st_image_transform t;
        st_image_transform_preset(&t, ST_IMAGE_PRESET_CLIP);
        t.jpeg_scale = atoi(f[2]);
        rc = st_image_load(data, len, NULL, &t, 0, NULL, &out, &err);
        CHECKF(rc == ST_OK && out.w == 224 && out.h == 224, "%s: %s", orig, err.msg);
        struct st_image exp;
        if (!rc && (tv_lut_ok & 1) && !load_png(f[3], &exp)) {
            size_t hw = 224 * 224;
            float *got = st_malloc(3 * hw * sizeof(float)),
                  *ref = st_malloc(3 * hw * sizeof(float));
            st_image_to_f32(&out, t.mean, t.std, got);
            for (int c = 0; c < 3; c++)
                for (size_t i = 0; i < hw; i++)
                    ref[c * hw + i] = tv_lut[0][c][exp.px[3 * i + c]];
            double m = test_max_abs_diff(got, ref, 3 * hw, NULL);
            int d8 = max_diff(&out, &exp, NULL);
            note("clip", d8);
            printf("     CLIP preset (jpeg_scale %d) vs torchvision: max |f32 diff| = %g (%.3f/255 "
                   "in pixel units)\n",
                   t.jpeg_scale, m, m * 255.0 * 0.27577711);
            CHECKF(m <= atoi(f[4]) / 255.0 / 0.26130258, "%s: f32 diff %g", orig, m);
            st_free(got);
            st_free(ref);
            st_image_free(&exp);
        } else {
            CHECKF(0, "%s: no reference (norm cases must come first)", orig);
        }
    } else {
        CHECKF(0, "bad case line: %s", orig);
    }
done:
    st_image_free(&in);
    st_image_free(&out);
    st_free(data);
}

TEST(golden) {
    size_t len;
    char *text = (char *)read_all(GOLD "/cases.txt", &len);
    CHECKF(text != NULL, "tests/golden/image/cases.txt missing (tools/image_reference.py)");
    if (!text) return;
    int n = 0;
    for (char *save = NULL, *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        char line[1024];
        snprintf(line, sizeof line, "%s", l);
        run_case(line);
        n++;
    }
    st_free(text);
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        printf("     %-7s %2d cases, max |ours - Pillow/torchvision| = %d/255\n", kinds[i].name,
               kinds[i].cases, kinds[i].worst);
    CHECKF(n > 50, "only %d case lines", n);
}

/* ---- errors and limits ---- */

/* A baseline JPEG header claiming w x h, with no tables or scan after it. */
static size_t craft_jpeg_header(uint8_t *b, int w, int h) {
    size_t n = 0;
    b[n++] = 0xFF, b[n++] = 0xD8;                          /* SOI */
    b[n++] = 0xFF, b[n++] = 0xE0, b[n++] = 0, b[n++] = 16; /* APP0 JFIF */
    memcpy(b + n, "JFIF\0\1\1\0\0\1\0\1\0\0", 14);
    n += 14;
    b[n++] = 0xFF, b[n++] = 0xC0, b[n++] = 0, b[n++] = 17, b[n++] = 8; /* SOF0, 8-bit */
    b[n++] = (uint8_t)(h >> 8), b[n++] = (uint8_t)h, b[n++] = (uint8_t)(w >> 8),
    b[n++] = (uint8_t)w;
    b[n++] = 3;
    for (int c = 1; c <= 3; c++)
        b[n++] = (uint8_t)c, b[n++] = c == 1 ? 0x22 : 0x11, b[n++] = 0;
    b[n++] = 0xFF, b[n++] = 0xD9; /* EOI */
    return n;
}

static void expect_error(const char *what, enum st_status rc, const struct st_error *err,
                         enum st_status want, const char *needle1, const char *needle2) {
    CHECKF(rc == want, "%s: status %d (%s), wanted %d", what, (int)rc, err->msg, (int)want);
    CHECKF(strstr(err->msg, needle1) != NULL, "%s: message \"%s\" lacks \"%s\"", what, err->msg,
           needle1);
    if (needle2)
        CHECKF(strstr(err->msg, needle2) != NULL, "%s: message \"%s\" lacks \"%s\"", what, err->msg,
               needle2);
    printf("     %-26s -> %s\n", what, err->msg);
}

TEST(limits_and_errors) {
    uint8_t hdr[64];
    size_t n = craft_jpeg_header(hdr, 30000, 30000);
    struct st_error err = {0};
    struct st_image_info info;
    CHECK(st_image_probe(hdr, n, &info, &err) == ST_OK);
    CHECK(info.format == ST_IMAGE_JPEG && info.w == 30000 && info.h == 30000 && info.channels == 3);
    size_t live = st_alloc_live_count(), peak_before = st_alloc_peak_bytes();
    struct st_image im;
    enum st_status rc = st_image_decode(hdr, n, NULL, &im, &err);
    expect_error("30000x30000 JPEG header", rc, &err, ST_ERR_NOMEM, "30000x30000", "max_pixels");
    CHECK(strstr(err.msg, "900000000") != NULL && strstr(err.msg, "89478485") != NULL);
    CHECK(im.px == NULL && st_alloc_live_count() == live);
    CHECKF(st_alloc_peak_bytes() == peak_before, "the refusal allocated (peak %zu -> %zu)",
           peak_before, st_alloc_peak_bytes());
    struct st_image_transform t;
    st_image_transform_preset(&t, ST_IMAGE_PRESET_CLIP);
    rc = st_image_load(hdr, n, NULL, &t, 1, NULL, &im, &err);
    CHECK(rc == ST_ERR_NOMEM && strstr(err.msg, "30000x30000"));
    /* with the limit raised, the same bytes reach libjpeg, which finds no tables or scan: so it
     * was the limit that refused them above, before any decoding */
    struct st_image_limits big = {1000000000ULL};
    rc = st_image_decode(hdr, n, &big, &im, &err);
    CHECKF(rc == ST_ERR_FORMAT && strncmp(err.msg, "JPEG: ", 6) == 0, "raised limit: %d %s",
           (int)rc, err.msg);
    printf("     %-26s -> %s\n", "(same, limit raised)", err.msg);

    rc = st_image_decode((const uint8_t *)"", 0, NULL, &im, &err);
    expect_error("zero-byte file", rc, &err, ST_ERR_FORMAT, "empty image data", "0 bytes");
    rc = st_image_decode((const uint8_t *)"GIF89a\1\0\1\0", 10, NULL, &im, &err);
    expect_error("unknown format", rc, &err, ST_ERR_FORMAT, "unrecognised image format", "47 49");

    size_t len;
    uint8_t *jpg = read_all(GOLD "/photo_131x97.jpg", &len);
    CHECK(jpg != NULL);
    if (jpg) {
        rc = st_image_decode(jpg, len * 6 / 10, NULL, &im, &err);
        expect_error("truncated JPEG (60%)", rc, &err, ST_ERR_FORMAT, "JPEG: truncated", NULL);
        rc = st_image_decode(jpg, len - 2, NULL, &im, &err); /* only the EOI marker missing */
        expect_error("JPEG without EOI", rc, &err, ST_ERR_FORMAT, "JPEG: truncated", NULL);
        rc = st_image_decode(jpg, 40, NULL, &im, &err);
        expect_error("JPEG cut in the header", rc, &err, ST_ERR_FORMAT, "JPEG: truncated", NULL);
        rc = st_image_load(jpg, len * 6 / 10, NULL, &t, 3, NULL, &im, &err);
        expect_error("truncated JPEG, load", rc, &err, ST_ERR_FORMAT, "JPEG: truncated", NULL);
        /* a crop of rows well above the cut: the decode stops before the missing tail, and
         * the file is still bad (whether a sample is bad must not depend on the crop) */
        size_t blen;
        uint8_t *wide = read_all(GOLD "/big_900x500.jpg", &blen);
        CHECK(wide != NULL);
        if (wide) {
            struct st_image_transform tc;
            st_image_transform_preset(&tc, ST_IMAGE_PRESET_CLIP);
            tc.size = 16;
            tc.resize_size = 500;
            rc = st_image_load(wide, blen, NULL, &tc, 3, NULL, &im, &err);
            CHECKF(rc == ST_OK, "%s", err.msg);
            if (!rc) st_image_free(&im);
            rc = st_image_load(wide, blen * 8 / 10, NULL, &tc, 3, NULL, &im, &err);
            expect_error("truncated JPEG, a crop above the cut", rc, &err, ST_ERR_FORMAT,
                         "JPEG: truncated", NULL);
            st_free(wide);
        }
        /* data after the EOI (a Motion Photo's video, an SEF trailer) with marker-like bytes in
         * it: the image is whole */
        uint8_t *tail = st_malloc(len + 16);
        CHECK(tail != NULL);
        if (tail) {
            memcpy(tail, jpg, len);
            memcpy(tail + len, "\xff\xda\x00\x08trail\xff\x00\x01", 13);
            rc = st_image_decode(tail, len + 13, NULL, &im, &err);
            CHECKF(rc == ST_OK, "JPEG with a trailer after its EOI: %s", err.msg);
            if (!rc) st_image_free(&im);
            st_free(tail);
        }
        struct st_image_limits small = {1000};
        rc = st_image_decode(jpg, len, &small, &im, &err);
        expect_error("JPEG over a small limit", rc, &err, ST_ERR_NOMEM, "131x97", "1000 pixels");
        st_free(jpg);
    }
    uint8_t *png = read_all(GOLD "/grad_97x61.png", &len);
    CHECK(png != NULL);
    if (png) {
        uint8_t *bad = st_malloc(len);
        memcpy(bad, png, len);
        bad[29] ^= 0x55; /* IHDR's CRC */
        rc = st_image_decode(bad, len, NULL, &im, &err);
        expect_error("PNG, bad IHDR CRC", rc, &err, ST_ERR_FORMAT, "PNG: bad CRC", "IHDR");
        memcpy(bad, png, len);
        bad[len - 16] ^= 0x55; /* the CRC of the last IDAT (IEND is the last 12 bytes) */
        rc = st_image_decode(bad, len, NULL, &im, &err);
        expect_error("PNG, bad IDAT CRC", rc, &err, ST_ERR_FORMAT, "PNG: IDAT", "CRC");
        CHECK(im.px == NULL);
        memcpy(bad, png, len);
        bad[len - 20] ^= 0x55; /* IDAT data (zlib's checksum): zlib finds it before the CRC */
        rc = st_image_decode(bad, len, NULL, &im, &err);
        expect_error("PNG, corrupt IDAT data", rc, &err, ST_ERR_FORMAT, "PNG: IDAT", NULL);
        rc = st_image_decode(png, len / 2, NULL, &im, &err);
        expect_error("truncated PNG", rc, &err, ST_ERR_FORMAT, "PNG: ", NULL);
        struct st_image_limits small = {5916};
        rc = st_image_decode(png, len, &small, &im, &err);
        expect_error("PNG over a small limit", rc, &err, ST_ERR_NOMEM, "97x61", "5917 pixels");
        small.max_pixels = 5917;
        rc = st_image_decode(png, len, &small, &im, &err);
        CHECKF(rc == ST_OK, "PNG at exactly the limit: %s", err.msg);
        st_image_free(&im);
        st_free(bad);
        st_free(png);
    }
    uint8_t *webp = read_all(GOLD "/lossy_81x53.webp", &len);
    CHECK(webp != NULL);
    if (webp) {
        rc = st_image_decode(webp, len / 2, NULL, &im, &err);
        expect_error("truncated WebP", rc, &err, ST_ERR_FORMAT, "WebP: ", NULL);
        st_free(webp);
    }
    uint8_t *anim = read_all(GOLD "/anim_8x8.webp", &len);
    CHECK(anim != NULL);
    if (anim) {
        rc = st_image_decode(anim, len, NULL, &im, &err);
        expect_error("animated WebP", rc, &err, ST_ERR_UNSUPPORTED, "WebP: animated", NULL);
        st_free(anim);
    }
    /* transform arguments */
    t.resize_size = 100;
    t.size = 200;
    CHECK(st_image_load(hdr, n, NULL, &t, 0, NULL, &im, &err) == ST_ERR_ARG);
    CHECK(strstr(err.msg, "resize_size 100 < size 200") != NULL);
    CHECK(st_alloc_live_count() == live);
}

/* ---- determinism ---- */

TEST(determinism) {
    size_t len;
    uint8_t *jpg = read_all(GOLD "/photo_131x97.jpg", &len);
    CHECK(jpg != NULL);
    if (!jpg) return;
    struct st_image_transform t;
    st_image_transform_preset(&t, ST_IMAGE_PRESET_CLIP);
    t.size = 64;
    t.crop = ST_IMAGE_CROP_RANDOM;
    t.flip_p = 0.5f;
    t.brightness = t.contrast = t.saturation = 0.4f;
    t.hue = 0.1f;
    struct st_error err = {0};
    struct st_image a, b, c, d;
    uint64_t s = st_image_seed(42, 0, "000001");
    CHECK(st_image_load(jpg, len, NULL, &t, s, NULL, &a, &err) == ST_OK);
    CHECK(st_image_load(jpg, len, NULL, &t, st_image_seed(42, 0, "000001"), NULL, &b, &err) ==
          ST_OK);
    CHECK(st_image_load(jpg, len, NULL, &t, st_image_seed(42, 0, "000002"), NULL, &c, &err) ==
          ST_OK);
    CHECK(st_image_load(jpg, len, NULL, &t, st_image_seed(42, 1, "000001"), NULL, &d, &err) ==
          ST_OK);
    CHECK(max_diff(&a, &b, NULL) == 0);
    struct st_image_work *work = NULL;
    CHECK(st_image_work_init(&work, &err) == ST_OK);
    for (int k = 0; k < 3; k++) { /* through a reused workspace: the same bytes */
        struct st_image e;
        CHECK(st_image_load(jpg, len, NULL, &t, k == 1 ? st_image_seed(7, 0, "x") : s, work, &e,
                            &err) == ST_OK);
        if (k != 1) CHECK(max_diff(&a, &e, NULL) == 0);
        st_image_free(&e);
    }
    st_image_work_free(work);
    CHECKF(max_diff(&a, &c, NULL) > 0, "another key gave the same augmentation");
    CHECKF(max_diff(&a, &d, NULL) > 0, "another epoch gave the same augmentation");
    CHECK(st_image_seed(42, 0, "000001") != st_image_seed(43, 0, "000001"));
    st_image_free(&a);
    st_image_free(&b);
    st_image_free(&c);
    st_image_free(&d);
    /* crops: same seed same box; boxes inside the image; the fallback when no try fits */
    int box[4], box2[4];
    float scale[2] = {0.08f, 1.0f}, ratio[2] = {3.0f / 4.0f, 4.0f / 3.0f};
    for (uint64_t k = 0; k < 2000; k++) {
        struct st_rng r1, r2;
        st_rng_seed(&r1, k);
        st_rng_seed(&r2, k);
        st_image_random_crop(500, 375, scale, ratio, &r1, box);
        st_image_random_crop(500, 375, scale, ratio, &r2, box2);
        CHECK(memcmp(box, box2, sizeof box) == 0);
        CHECK(box[0] >= 0 && box[1] >= 0 && box[2] >= 1 && box[3] >= 1 && box[0] + box[2] <= 500 &&
              box[1] + box[3] <= 375);
    }
    float wide[2] = {50.0f, 90.0f};
    struct st_rng r;
    st_rng_seed(&r, 1);
    st_image_random_crop(100, 100, scale, wide, &r, box); /* every try is wider than the image */
    CHECKF(box[0] == 0 && box[1] == 49 && box[2] == 100 && box[3] == 2, "fallback box %d,%d %dx%d",
           box[0], box[1], box[2], box[3]);
    st_free(jpg);
}

/* ---- region decode equals a crop of the full decode ---- */

TEST(jpeg_regions) {
    const char *files[] = {"photo_131x97.jpg", "prog444_120x90.jpg", "gray_73x55.jpg",
                           "cmyk_40x30.jpg", "big_900x500.jpg"};
    int worst = 0, checked = 0;
    for (size_t fi = 0; fi < sizeof files / sizeof files[0]; fi++) {
        char path[1024];
        snprintf(path, sizeof path, GOLD "/%s", files[fi]);
        size_t len;
        uint8_t *d = read_all(path, &len);
        CHECK(d != NULL);
        if (!d) continue;
        struct st_rng r;
        st_rng_seed(&r, fi);
        for (int num = 1; num <= 8; num++) {
            struct img_part full, part;
            struct st_error err = {0};
            if (img_jpeg_decode_part(d, len, NULL, num, 0, 0, 1 << 30, 1 << 30, NULL, &full,
                                     &err)) {
                CHECKF(0, "%s at %d/8: %s", files[fi], num, err.msg);
                continue;
            }
            struct st_image_work *work = NULL;
            CHECK(st_image_work_init(&work, &err) == ST_OK);
            for (int k = 0; k < 12; k++) {
                int x0 = (int)(st_rng_u64(&r) % (uint64_t)full.sw);
                int y0 = (int)(st_rng_u64(&r) % (uint64_t)full.sh);
                int x1 = x0 + 1 + (int)(st_rng_u64(&r) % (uint64_t)(full.sw - x0));
                int y1 = y0 + 1 + (int)(st_rng_u64(&r) % (uint64_t)(full.sh - y0));
                /* every other region through the workspace (its buffer reused) */
                if (img_jpeg_decode_part(d, len, NULL, num, x0, y0, x1, y1, k & 1 ? work : NULL,
                                         &part, &err)) {
                    CHECKF(0, "%s region: %s", files[fi], err.msg);
                    continue;
                }
                CHECK(part.x0 <= x0 && part.y0 == y0 && part.x0 + part.im.w >= x1 &&
                      part.im.h == y1 - y0);
                int m = 0; /* inside the requested region (the crop's slack may differ) */
                for (int y = 0; y < part.im.h; y++)
                    for (int x = (x0 - part.x0) * 3; x < (x1 - part.x0) * 3; x++) {
                        int a = part.im.px[(size_t)y * part.im.w * 3 + x];
                        int b = full.im.px[((size_t)(y + part.y0) * full.im.w + part.x0) * 3 + x];
                        if (abs(a - b) > m) m = abs(a - b);
                    }
                if (m > worst) worst = m;
                if (m)
                    printf("     %s %d/8 region %d,%d..%d,%d (got x0 %d w %d): max %d\n", files[fi],
                           num, x0, y0, x1, y1, part.x0, part.im.w, m);
                checked++;
                if (!part.borrowed) st_image_free(&part.im);
            }
            st_image_work_free(work);
            st_image_free(&full.im);
        }
        st_free(d);
    }
    printf("     %d regions at scales 1/8..8/8: max |region - full decode| = %d\n", checked, worst);
    CHECK(worst == 0 && checked > 400);
}

/* ---- failed allocations: every st_malloc failure is a clean ST_ERR_NOMEM, nothing leaks ---- */

TEST(alloc_failures) {
    const char *files[] = {"palette_63x47.png", "photo_131x97.jpg", "lossy_81x53.webp"};
    for (size_t fi = 0; fi < sizeof files / sizeof files[0]; fi++) {
        char path[1024];
        snprintf(path, sizeof path, GOLD "/%s", files[fi]);
        size_t len;
        uint8_t *d = read_all(path, &len);
        if (!d) continue;
        struct st_image_transform t;
        st_image_transform_preset(&t, ST_IMAGE_PRESET_CLIP);
        t.size = 32;
        t.crop = ST_IMAGE_CROP_RANDOM;
        int nth, ok_at = 0;
        for (nth = 1; nth < 200 && !ok_at; nth++) {
            size_t live = st_alloc_live_count();
            struct st_error err = {0};
            struct st_image im;
            struct st_image_work *work = NULL;
            if (fi == 1) CHECK(st_image_work_init(&work, &err) == ST_OK); /* also a workspace */
            st_alloc_fail_nth(nth);
            enum st_status rc = st_image_load(d, len, NULL, &t, 5, work, &im, &err);
            st_alloc_fail_nth(0);
            st_image_work_free(work);
            if (rc == ST_OK) {
                ok_at = nth;
                st_image_free(&im);
            } else {
                CHECKF(rc == ST_ERR_NOMEM || rc == ST_ERR_FORMAT,
                       "%s, failing allocation %d: %d %s", files[fi], nth, (int)rc, err.msg);
                CHECKF(err.msg[0] != 0, "no message");
            }
            CHECKF(st_alloc_live_count() == live, "%s: leak after failing allocation %d", files[fi],
                   nth);
        }
        CHECKF(ok_at > 1, "%s: never succeeded", files[fi]);
        printf("     %-18s every one of %d allocations failed in turn: clean errors, no leaks\n",
               files[fi], ok_at - 1);
        st_free(d);
    }
}

/* ---- fuzz corpus replay ---- */

static char replay_current[1024];

static void replay_on_signal(int sig) {
    const char *a = "test_image: crashed while replaying ";
    ssize_t r = write(2, a, strlen(a));
    r = write(2, replay_current, strlen(replay_current));
    r = write(2, "\n", 1);
    (void)r;
    signal(sig, SIG_DFL);
    raise(sig);
}

static int replay_dir(const char *dir) {
    DIR *dd = opendir(dir);
    if (!dd) return -1;
    int count = 0;
    struct dirent *e;
    while ((e = readdir(dd))) {
        if (e->d_name[0] == '.') continue;
        snprintf(replay_current, sizeof replay_current, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (stat(replay_current, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        FILE *fp = fopen(replay_current, "rb");
        if (!fp) continue;
        size_t len = (size_t)sb.st_size;
        uint8_t *buf = malloc(len ? len : 1);
        size_t got = len ? fread(buf, 1, len, fp) : 0;
        fclose(fp);
        /* every seed under every mode: the first two bytes are the fuzzer's parameters */
        for (int mode = 0; mode < 8 && got >= 2; mode++) {
            buf[0] = (uint8_t)mode;
            st_fuzz_image_one(buf, got);
        }
        free(buf);
        count++;
    }
    closedir(dd);
    replay_current[0] = 0;
    return count;
}

TEST(fuzz_replay) {
    signal(SIGSEGV, replay_on_signal);
    signal(SIGABRT, replay_on_signal);
    int n = replay_dir(ST_SOURCE_DIR "/fuzz/corpus/image");
    CHECKF(n > 0, "no seeds in fuzz/corpus/image");
    int k = replay_dir(ST_SOURCE_DIR "/fuzz/crashers/image");
    printf("     %d seeds x 8 modes, %d crashers\n", n, k < 0 ? 0 : k);
    signal(SIGSEGV, SIG_DFL);
    signal(SIGABRT, SIG_DFL);
}

/* ---- bench mode (bench/image_bench.py) ---- */

static int bench(const char *dir, double seconds) {
    DIR *dd = opendir(dir);
    if (!dd) {
        fprintf(stderr, "cannot open %s\n", dir);
        return 2;
    }
    uint8_t *data[1024];
    size_t lens[1024];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dd)) && n < 1024) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 4, ".jpg") != 0) continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if ((data[n] = read_all(path, &lens[n]))) n++;
    }
    closedir(dd);
    if (n == 0) return 2;
    struct st_image_transform t;
    st_image_transform_preset(&t, ST_IMAGE_PRESET_CLIP);
    t.crop = ST_IMAGE_CROP_RANDOM;
    t.filter = ST_IMAGE_BILINEAR; /* RandomResizedCrop's default */
    t.flip_p = 0.5f;
    float *out = st_malloc(3 * 224 * 224 * sizeof(float));
    struct st_image_work *work = NULL;
    struct st_error werr;
    if (st_image_work_init(&work, &werr)) return 1;
    /* mode 0: st_image_load (DCT scaling + region decode); mode 1: st_image_decode of the
     * whole image + st_image_apply, the same work as Pillow's full decode */
    for (int mode = 0; mode < 2; mode++) {
        long done = 0;
        double t0 = st_time_now(), el = 0;
        double check = 0;
        while (el < seconds || done < n) {
            int i = (int)(done % n);
            struct st_image im, full;
            struct st_error err = {0};
            uint64_t seed = st_image_seed(0, (uint64_t)(done / n), "k") ^ (uint64_t)i;
            enum st_status rc;
            if (mode == 0) {
                rc = st_image_load(data[i], lens[i], NULL, &t, seed, work, &im, &err);
            } else {
                rc = st_image_decode(data[i], lens[i], NULL, &full, &err);
                if (!rc) rc = st_image_apply(&full, &t, seed, work, &im, &err);
                st_image_free(&full);
            }
            if (rc) {
                fprintf(stderr, "image %d: %s\n", i, err.msg);
                return 1;
            }
            st_image_to_f32(&im, t.mean, t.std, out);
            check += out[1000];
            st_image_free(&im);
            done++;
            el = st_time_now() - t0;
        }
        printf("%s images/s %.1f (%ld images, %.2f s, checksum %.3f)\n",
               mode ? "streamtune_decode_all" : "streamtune", done / el, done, el, check);
    }
    st_free(out);
    st_image_work_free(work);
    for (int i = 0; i < n; i++)
        st_free(data[i]);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "--bench") == 0)
        return bench(argv[2], argc >= 4 ? atof(argv[3]) : 3.0);
    RUN(golden);
    RUN(limits_and_errors);
    RUN(determinism);
    RUN(jpeg_regions);
    RUN(alloc_failures);
    RUN(fuzz_replay);
    return test_finish();
}
