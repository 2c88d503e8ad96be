/* fuzz_image.c: libFuzzer target for the image entry points (st_image_probe, st_image_decode,
 * st_image_load; src/data/image*.c), JPEG, PNG and WebP.
 *
 * DESIGN: byte 0 picks the entry point (decode, load with a centre crop, load with a random
 * resized crop + flip + jitter, with or without JPEG DCT scaling), byte 1 the output size and
 * seed; the rest is the image. max_pixels is 1 M so big headers exercise the refusal and the
 * decoders stay fast. Properties beyond "no crash, no sanitizer report": a decoded image has the
 * probed size, 3 channels and pixels; a loaded one is size x size; a refusal is FORMAT, NOMEM or
 * UNSUPPORTED with a message; nothing leaks. tests/test_image.c includes this file (entry point
 * renamed) to replay fuzz/corpus/image and fuzz/crashers/image, so static names carry fi_. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "streamtune/image.h"

#define FI_REQUIRE(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_image: property violated: %s: ", #cond);                         \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void fi_check_refusal(enum st_status rc, const struct st_error *err) {
    FI_REQUIRE(rc == ST_ERR_FORMAT || rc == ST_ERR_NOMEM || rc == ST_ERR_UNSUPPORTED,
               "status %d: %s", (int)rc, err->msg);
    FI_REQUIRE(err->msg[0] != '\0', "status %d without a message", (int)rc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    int mode = data[0] & 7, param = data[1];
    data += 2;
    size -= 2;
    size_t live = st_alloc_live_count();
    struct st_image_limits lim = {1u << 20};
    struct st_error err = {0};
    struct st_image_info info;
    enum st_status prc = st_image_probe(data, size, &info, &err);
    if (prc) fi_check_refusal(prc, &err);
    struct st_image im;
    if (mode < 2) {
        enum st_status rc = st_image_decode(data, size, &lim, &im, &err);
        if (rc == ST_OK) {
            FI_REQUIRE(prc == ST_OK && im.w == info.w && im.h == info.h && im.c == 3 && im.px,
                       "decoded %dx%dx%d, probe %dx%d", im.w, im.h, im.c, info.w, info.h);
            st_image_free(&im);
        } else {
            fi_check_refusal(rc, &err);
            FI_REQUIRE(im.px == NULL, "pixels left after a failure");
        }
    } else {
        struct st_image_transform t;
        st_image_transform_preset(&t, ST_IMAGE_PRESET_CLIP);
        t.size = 1 + (param & 63);
        t.resize_size = t.size + (param >> 6);
        t.jpeg_scale = mode & 1;
        if (mode >= 4) {
            t.crop = ST_IMAGE_CROP_RANDOM;
            t.filter = ST_IMAGE_BILINEAR;
            t.flip_p = 0.5f;
            if (mode >= 6) t.brightness = t.contrast = t.saturation = 0.4f, t.hue = 0.1f;
        }
        /* mode 7 also runs through a workspace, twice: reused buffers give the same image */
        struct st_image_work *work = NULL;
        if (mode == 7 && st_image_work_init(&work, &err)) return 0;
        enum st_status rc =
            st_image_load(data, size, &lim, &t, (uint64_t)param * 7919u, work, &im, &err);
        if (work) {
            struct st_image again;
            enum st_status rc2 =
                st_image_load(data, size, &lim, &t, (uint64_t)param * 7919u, work, &again, &err);
            FI_REQUIRE(rc2 == rc, "second load through the workspace: %d then %d", (int)rc,
                       (int)rc2);
            if (rc == ST_OK)
                FI_REQUIRE(memcmp(im.px, again.px, (size_t)t.size * t.size * 3) == 0,
                           "a reused workspace changed the pixels");
            st_image_free(&again);
            st_image_work_free(work);
        }
        if (rc == ST_OK) {
            FI_REQUIRE(prc == ST_OK && im.w == t.size && im.h == t.size && im.c == 3 && im.px,
                       "loaded %dx%dx%d for size %d", im.w, im.h, im.c, t.size);
            st_image_free(&im);
        } else {
            fi_check_refusal(rc, &err);
        }
    }
    FI_REQUIRE(st_alloc_live_count() == live, "%zu allocations leaked",
               st_alloc_live_count() - live);
    return 0;
}
