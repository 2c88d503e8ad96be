/* audio_aug.c: deterministic audio augmentations (gain, time shift, SpecAugment masks).
 *
 * DESIGN: the sample seed is splitmix64-mixed from (seed, epoch, FNV-1a 64 of the sample key), so
 * it depends on what the sample is, not on which worker decodes it or when. The waveform and the
 * spectrogram draw from two xoshiro streams derived from that seed (tags 1 and 2), so applying one
 * without the other does not change the other's choices. Draws happen in a fixed order (gain,
 * shift; frequency masks, then time masks) whether or not a setting is zero, so changing one
 * setting does not reshuffle the others. Nothing here allocates.
 */
#include <math.h>
#include <string.h>

#include "streamtune/audio.h"

static uint64_t mix64(uint64_t x) { /* splitmix64's finaliser */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t st_audio_aug_seed(uint64_t seed, int64_t epoch, const char *key) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a 64 */
    for (const unsigned char *s = (const unsigned char *)(key ? key : ""); *s; s++) {
        h ^= *s;
        h *= 0x100000001b3ull;
    }
    return mix64(mix64(mix64(seed) ^ (uint64_t)epoch) ^ h);
}

/* Uniform integer in [lo, hi] (hi - lo < 2^63). */
static int64_t draw_int(struct st_rng *r, int64_t lo, int64_t hi) {
    if (hi <= lo) return lo;
    uint64_t span = (uint64_t)(hi - lo) + 1;
    return lo + (int64_t)(st_rng_u64(r) % span); /* bias < span / 2^64: irrelevant here */
}

static void reverse(float *a, size_t n) {
    for (size_t i = 0, j = n; i + 1 < j; i++, j--) {
        float t = a[i];
        a[i] = a[j - 1];
        a[j - 1] = t;
    }
}

void st_audio_augment_wave(const struct st_audio_aug *aug, uint64_t sample_seed, float *pcm,
                           size_t n) {
    struct st_rng r;
    st_rng_seed(&r, mix64(sample_seed ^ 1));
    double u = st_rng_uniform(&r);
    double db = aug->gain_db_min + (aug->gain_db_max - aug->gain_db_min) * u;
    int64_t smax = aug->shift_max > 0 ? aug->shift_max : 0;
    int64_t shift = draw_int(&r, -smax, smax);
    if (db != 0.0) {
        float g = (float)pow(10.0, db / 20.0);
        for (size_t i = 0; i < n; i++) pcm[i] *= g;
    }
    if (shift == 0 || n == 0) return;
    size_t s = (size_t)(shift < 0 ? -shift : shift);
    if (aug->shift_mode == ST_AUDIO_SHIFT_CIRCULAR) {
        s %= n;
        if (s == 0) return;
        size_t k = shift > 0 ? s : n - s; /* rotate right by k: out[i] = in[i - k] */
        reverse(pcm, n);
        reverse(pcm, k);
        reverse(pcm + k, n - k);
        return;
    }
    if (s >= n) {
        memset(pcm, 0, n * sizeof *pcm);
    } else if (shift > 0) { /* later: out[i] = in[i - s], zeros first */
        memmove(pcm + s, pcm, (n - s) * sizeof *pcm);
        memset(pcm, 0, s * sizeof *pcm);
    } else { /* earlier: out[i] = in[i + s], zeros last */
        memmove(pcm, pcm + s, (n - s) * sizeof *pcm);
        memset(pcm + n - s, 0, s * sizeof *pcm);
    }
}

void st_audio_augment_mel(const struct st_audio_aug *aug, uint64_t sample_seed, float *mel,
                          int n_mels, int n_frames) {
    struct st_rng r;
    st_rng_seed(&r, mix64(sample_seed ^ 2));
    for (int i = 0; i < aug->freq_masks; i++) {
        int w = (int)draw_int(&r, 0, aug->freq_mask_max < n_mels ? aug->freq_mask_max : n_mels);
        int start = (int)draw_int(&r, 0, n_mels - w);
        for (int m = start; m < start + w; m++)
            for (int t = 0; t < n_frames; t++) mel[(size_t)m * n_frames + t] = aug->mask_value;
    }
    for (int i = 0; i < aug->time_masks; i++) {
        int w = (int)draw_int(&r, 0, aug->time_mask_max < n_frames ? aug->time_mask_max : n_frames);
        int start = (int)draw_int(&r, 0, n_frames - w);
        for (int m = 0; m < n_mels; m++)
            for (int t = start; t < start + w; t++) mel[(size_t)m * n_frames + t] = aug->mask_value;
    }
}
