/* fuzz_audio.c: libFuzzer target for the audio entry points (st_audio_probe, st_audio_decode and,
 * for some inputs, st_audio_log_mel; src/data/audio*.c).
 *
 * DESIGN: byte 0 of the input picks the limits (bits 0-2: max_seconds 0.25..2; bit 3: max
 * channels 2 instead of 8) and bits 6-7 (both set) whether a decoded sample also goes through the
 * log-mel (slow under ASan, so a quarter of the inputs). The rest is the encoded file, handed over
 * exactly (ASan sees over-reads). Small caps keep each run fast and make the caps reachable. Properties beyond "no crash, no sanitizer report":
 * probe and decode agree on success; a decoded sample is non-empty, at 16 kHz, finite, and no
 * longer than the cap allows (plus resampler rounding); the log-mel is finite and inside
 * [max - 2, max] after Whisper's clamp and scaling; a refusal is ST_ERR_FORMAT, ST_ERR_NOMEM or
 * ST_ERR_UNSUPPORTED with a message naming the sample ("f.audio: "); st_malloc'd memory never
 * leaks. tests/test_audio.c includes this file (entry point renamed) to replay fuzz/corpus/audio
 * and fuzz/crashers/audio, so static names carry the fa_ prefix.
 *
 * libsndfile 1.2.0 leaks libvorbis's vorbis_info (5.8 KB, from vorbis_info_init) when opening a
 * damaged OGG fails; that leak is outside this code and is suppressed for LeakSanitizer below.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "streamtune/audio.h"

#define FA_REQUIRE(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_audio: property violated: %s: ", #cond);                         \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* LeakSanitizer: libsndfile's open of a damaged OGG leaks vorbis_info (not ours to fix). */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:vorbis_info_init\n"; }

static struct st_audio_mel *fa_plan; /* made once; reachable, so never reported as a leak */
static float fa_mel[80 * ST_AUDIO_FRAMES];

static int fa_status_ok(enum st_status rc) {
    return rc == ST_ERR_FORMAT || rc == ST_ERR_NOMEM || rc == ST_ERR_UNSUPPORTED;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const uint8_t ctl = data[0];
    struct st_audio_limits lim = {0};
    lim.max_seconds = 0.25 * (1 + (ctl & 7));
    lim.max_channels = ctl & 8 ? 2 : 8;
    lim.max_rate = 96000;
    data++;
    size--;
    struct st_error err = {0};
    if (!fa_plan) FA_REQUIRE(st_audio_mel_init(&fa_plan, 80, &err) == ST_OK, "plan: %s", err.msg);
    uint8_t *copy = malloc(size ? size : 1); /* exactly size bytes */
    if (size) memcpy(copy, data, size);
    size_t live = st_alloc_live_count();

    struct st_audio_info info;
    enum st_status prc = st_audio_probe(copy, size, "f.audio", &lim, &info, &err);
    if (prc)
        FA_REQUIRE(fa_status_ok(prc) && strncmp(err.msg, "f.audio: ", 9) == 0,
                   "probe status %d: %s", (int)prc, err.msg);
    else
        FA_REQUIRE(info.channels >= 1 && info.channels <= lim.max_channels && info.rate >= 1 &&
                       info.rate <= lim.max_rate && info.seconds <= lim.max_seconds,
                   "probe accepted %d ch, %d Hz, %g s", info.channels, info.rate, info.seconds);

    struct st_audio a;
    memset(&err, 0, sizeof err);
    enum st_status rc = st_audio_decode(copy, size, "f.audio", &lim, &a, &err);
    if (rc) {
        FA_REQUIRE(fa_status_ok(rc) && strncmp(err.msg, "f.audio: ", 9) == 0, "status %d: %s",
                   (int)rc, err.msg);
        FA_REQUIRE(a.pcm == NULL && a.n == 0, "failed decode left %zu samples", a.n);
    } else {
        FA_REQUIRE(prc == ST_OK, "decode succeeded where probe failed: %d", (int)prc);
        FA_REQUIRE(a.pcm && a.n > 0 && a.rate == ST_AUDIO_RATE, "%zu samples at %d Hz", a.n,
                   a.rate);
        double cap = lim.max_seconds * ST_AUDIO_RATE + 2;
        FA_REQUIRE((double)a.n <= cap, "%zu samples over the cap %g", a.n, cap);
        for (size_t i = 0; i < a.n; i++)
            FA_REQUIRE(isfinite(a.pcm[i]), "sample %zu is %g", i, (double)a.pcm[i]);
        if ((ctl & 0xc0) == 0xc0) {
            st_audio_log_mel(fa_plan, fa_mel, a.pcm, a.n);
            float mx = -INFINITY;
            for (size_t i = 0; i < 80 * ST_AUDIO_FRAMES; i++) {
                FA_REQUIRE(isfinite(fa_mel[i]), "log-mel %zu is %g", i, (double)fa_mel[i]);
                if (fa_mel[i] > mx) mx = fa_mel[i];
            }
            for (size_t i = 0; i < 80 * ST_AUDIO_FRAMES; i++)
                FA_REQUIRE(fa_mel[i] >= mx - 2.0f - 1e-5f, "log-mel %zu: %g below max %g - 2", i,
                           (double)fa_mel[i], (double)mx);
        }
        st_audio_free(&a);
    }
    FA_REQUIRE(st_alloc_live_count() == live, "%zu allocations leaked",
               st_alloc_live_count() - live);
    free(copy);
    return 0;
}
