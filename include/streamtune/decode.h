/* streamtune decoded samples: WebDataset samples of a stream turned into tensors on worker
 * threads (images -> normalised CHW, audio -> Whisper log-mel, text passed through), and weighted
 * mixing of several such streams.
 *
 * DESIGN
 * - A decoder owns one st_stream, one reader thread and `threads` decode threads. The reader
 *   calls st_stream_next and copies each sample into a ring of `ahead` entries; decode threads
 *   take entries in ring order and decode them in parallel; st_decoder_next hands entries out in
 *   ring order, which is the stream's order. So the sequence (and every tensor) is the same for
 *   any thread count, and decoding overlaps the consumer (at most `ahead` samples in flight,
 *   the one the consumer holds included).
 * - Fields by extension (the part after the last dot of the field name, lower-cased as the tar
 *   reader groups them): jpg jpeg png webp -> image tensor (3, H, W); flac wav mp3 ogg -> log-mel
 *   (n_mels, 3000); anything else (txt, json, cls, ...) is passed through as bytes. Every random
 *   choice of a sample comes from (seed, epoch, sample key) through st_image_seed and
 *   st_audio_aug_seed, so the same sample gets the same crop in a resumed run, on any machine.
 * - Bad samples. A field that fails to decode (corrupt, truncated, unsupported, over a limit)
 *   makes the sample bad. ST_BAD_SAMPLE_FAIL (the default, as webdataset's reraise handler)
 *   stops the decoder with a one-line message "URL: KEY.EXT: reason"; ST_BAD_SAMPLE_SKIP drops
 *   the sample, logs a warning, and counts and names it in st_decode_stats. Skips are counted in
 *   delivery order, so counts are the same for any thread count. Errors of the stream itself
 *   (network, corrupt tar) always stop the decoder.
 * - Resumption without per-sample cost. The reader is ahead of the consumer, so the stream's own
 *   state describes a later position. st_decoder_state pauses the reader between two
 *   st_stream_next calls and writes the stream's state plus the samples read but not yet
 *   delivered (raw bytes, base64) and the epoch ends among them; a decoder opened with that
 *   record replays them first, then continues the stream. Nothing is recorded per sample; the
 *   record grows by at most `ahead` raw samples (plus the stream's own shuffle buffer, see
 *   docs/data.md: prefer a small --shuffle-buffer for large image/audio samples).
 * - Mixing (st_mix): N decoders, each with its own stream, threads and memory budget, so a slow
 *   source never stalls another's prefetch. Each next() draws a source with probability
 *   weight / sum(weights) from the mix's seeded rng and returns that source's next sample.
 *   Sources cycle through their own epochs independently. A mix epoch ends (ST_STREAM_END) when
 *   the first source ends an epoch (ST_MIX_STOP_FIRST, default; HF interleave_datasets'
 *   "first_exhausted") or once every source has ended one since the mix epoch began
 *   (ST_MIX_STOP_ALL, "all_exhausted"; sources that end early start their next epoch). The
 *   state is the mix rng, the mix epoch, the per-source "ended" flags and each decoder's state.
 */
#ifndef STREAMTUNE_DECODE_H
#define STREAMTUNE_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "streamtune/audio.h"
#include "streamtune/core.h"
#include "streamtune/data.h"
#include "streamtune/formats.h"
#include "streamtune/image.h"

#ifdef __cplusplus
extern "C" {
#endif

enum st_bad_sample { ST_BAD_SAMPLE_FAIL = 0, ST_BAD_SAMPLE_SKIP = 1 };

/* Image transform presets of the decoder (--transform). NONE: no geometric transform; the image
 * is decoded whole and scaled to [0, 1] (mean 0, std 1), or resized to image_size square
 * (bilinear) when image_size is set. */
enum st_decode_transform {
    ST_DECODE_CLIP = 0,
    ST_DECODE_SIGLIP,     /* SigLIP 224 */
    ST_DECODE_SIGLIP_384, /* SigLIP 384 */
    ST_DECODE_NONE,
};

struct st_decode_options {
    int decode;    /* 1 (default): decode images and audio; 0: pass every field through */
    int threads;   /* decode threads (default 2) */
    int ahead;     /* samples in flight, the consumer's included (default 4 * threads + 2) */
    uint64_t seed; /* augmentation seed; used when seed_set, else the stream's seed */
    int seed_set;
    enum st_bad_sample on_bad;
    enum st_dtype dtype; /* ST_F32 (default) or ST_BF16, for image and audio tensors */

    /* images: a preset, then overrides */
    enum st_decode_transform transform;
    int image_size;      /* 0: the preset's size */
    int random_crop;     /* RandomResizedCrop(size, crop_scale, 3/4..4/3) instead of the preset's */
    float crop_scale[2]; /* default 0.08, 1 */
    float flip_p;        /* horizontal flip probability (0) */
    float jitter[4];     /* brightness, contrast, saturation, hue (0: off) */
    uint64_t max_image_pixels; /* 0: ST_IMAGE_MAX_PIXELS_DEFAULT */

    /* audio */
    int mel_bins;             /* 80 (default) or 128; any 1..256 */
    double max_audio_seconds; /* 0: ST_AUDIO_MAX_SECONDS */
    struct st_audio_aug audio_aug;
};

void st_decode_options_init(struct st_decode_options *o);

/* Set one option by its command-line name: decode-threads, decode-ahead, decode-seed,
 * on-bad-sample (skip|fail), dtype (f32|bf16), transform (clip|siglip|siglip-384|none),
 * image-size, random-crop (flag: value NULL), crop-scale (MIN,MAX), flip (P), color-jitter
 * (B,C,S,H), max-image-pixels, max-audio-seconds, mel-bins, audio-gain-db (MIN,MAX), audio-shift
 * (samples), freq-masks (COUNT,WIDTH), time-masks (COUNT,WIDTH). *known = 0 for other names.
 * Returns ST_ERR_ARG with a message for a bad value. */
enum st_status st_decode_option_set(struct st_decode_options *o, const char *name,
                                    const char *value, int *known, struct st_error *err);
extern const char st_decode_options_help[];

/* The image transform the options describe (preset + overrides); *native = 1 for NONE without
 * a size (decode whole, no resize). Returns ST_ERR_ARG for an impossible combination. */
enum st_status st_decode_image_transform(const struct st_decode_options *o,
                                         struct st_image_transform *t, int *native,
                                         struct st_error *err);

/* ---- decoded samples ---- */

enum st_field_kind { ST_FIELD_RAW = 0, ST_FIELD_IMAGE, ST_FIELD_AUDIO };

struct st_decoded_field {
    const char *name; /* as in the sample: "jpg", "seg.png", "flac", "txt" */
    enum st_field_kind kind;
    const uint8_t *raw; /* the field's bytes as stored (NUL-terminated, size excluded) */
    size_t raw_size;
    /* IMAGE: data (3, H, W); AUDIO: data (n_mels, 3000); RAW: data NULL, ndim 0 */
    enum st_dtype dtype;
    int ndim;
    int64_t shape[3];
    const void *data;
    size_t nbytes;
    int src_w, src_h;   /* IMAGE: size of the stored image */
    double src_seconds; /* AUDIO: duration of the decoded audio */
};

struct st_decoded_sample {
    const char *key, *url; /* as st_sample */
    uint32_t shard;
    uint64_t index, offset;
    int64_t epoch; /* the source's epoch this sample belongs to (seeds its augmentation) */
    int source;    /* st_mix: index of the source; 0 for a decoder */
    const char *source_name; /* st_mix: the source's name; NULL for a decoder */
    int n_fields;
    const struct st_decoded_field *fields;
};

/* The field called name, or NULL. */
const struct st_decoded_field *st_decoded_field(const struct st_decoded_sample *s,
                                                const char *name);

/* ---- statistics ---- */

#define ST_DECODE_SKIP_LOG 32

struct st_decode_skip {
    char key[128];
    char reason[384]; /* "URL: KEY.EXT: message" */
};

struct st_decode_stats {
    struct st_stream_stats stream; /* of the decoder's stream (a mix: summed over sources) */
    uint64_t samples;              /* delivered */
    uint64_t images, audio;        /* fields decoded in delivered samples */
    uint64_t skipped;              /* bad samples dropped (ST_BAD_SAMPLE_SKIP) */
    uint64_t skipped_limit;        /* ... over --max-image-pixels / --max-audio-seconds */
    uint64_t skipped_corrupt;      /* ... corrupt, truncated, empty */
    uint64_t skipped_unsupported;  /* ... well-formed but not supported */
    double decode_s;               /* thread-seconds spent decoding */
    double wait_s;                 /* time the consumer waited inside next() */
    double elapsed_s, samples_per_s;
    int n_skip_log; /* the first ST_DECODE_SKIP_LOG skipped samples */
    struct st_decode_skip skip_log[ST_DECODE_SKIP_LOG];
};

/* ---- the decoder ---- */

struct st_decoder;

/* Open a stream (so) and start decoding ahead. so->resume_state may be a record written by
 * st_decoder_state (or a plain st_stream_state record). On failure *out is NULL. */
enum st_status st_decoder_open(struct st_decoder **out, const struct st_stream_options *so,
                               const struct st_decode_options *o, struct st_error *err);

/* Next decoded sample, valid until the next call or close. Returns ST_OK, ST_STREAM_END at the
 * end of an epoch (the next call starts the next one, as st_stream_next), or an error: the
 * stream's, or with ST_BAD_SAMPLE_FAIL the first bad sample's ("URL: KEY.EXT: reason"). After
 * an error every call returns it again. */
enum st_status st_decoder_next(struct st_decoder *d, struct st_decoded_sample *out,
                               struct st_error *err);

/* Resume record (one line of JSON) for the position after the last sample returned; returns its
 * length or the length needed when >= cap (as st_stream_state). Call it from the thread that
 * calls st_decoder_next; it waits for the reader's current st_stream_next to return. */
size_t st_decoder_state(struct st_decoder *d, char *buf, size_t cap);

/* Statistics (any thread). */
void st_decoder_stats(struct st_decoder *d, struct st_decode_stats *out);

void st_decoder_close(struct st_decoder *d);

/* ---- mixing ---- */

struct st_mix_source {
    const char *name;
    const char *url;
    double weight;        /* > 0 */
    size_t memory_budget; /* 0: an equal share of what the explicit ones leave of the base */
};

/* Parse "NAME=URL:WEIGHT" (--data): NAME is [A-Za-z0-9_.-]+, the weight follows the last ':' (a
 * URL may contain ':'). name and url point into *storage (st_malloc'd; st_free it). */
enum st_status st_mix_source_parse(const char *spec, struct st_mix_source *out, char **storage,
                                   struct st_error *err);

enum st_mix_stop { ST_MIX_STOP_FIRST = 0, ST_MIX_STOP_ALL = 1 };

struct st_mix;

/* Open a decoder per source: each gets a copy of base with url = the source's URL, memory_budget
 * = its share, epochs = 0 (sources cycle) and resume_state = its part of base->resume_state (a
 * record of st_mix_state). base->seed seeds the mix rng; base->epochs counts mix epochs (0:
 * never ends). Names must be distinct. */
enum st_status st_mix_open(struct st_mix **out, const struct st_stream_options *base,
                           const struct st_decode_options *o, const struct st_mix_source *src,
                           int n_sources, enum st_mix_stop stop, struct st_error *err);
/* As st_decoder_next; out->source / source_name say where the sample came from. */
enum st_status st_mix_next(struct st_mix *m, struct st_decoded_sample *out, struct st_error *err);
size_t st_mix_state(struct st_mix *m, char *buf, size_t cap);
/* Totals over the sources; per_source (n_sources entries, or NULL) gets each decoder's. Call it
 * (and st_mix_counts) from the thread that calls st_mix_next. */
void st_mix_stats(struct st_mix *m, struct st_decode_stats *total,
                  struct st_decode_stats *per_source);
/* Samples delivered per source so far (counts has n_sources entries). */
void st_mix_counts(struct st_mix *m, uint64_t *counts);
void st_mix_close(struct st_mix *m);

/* ---- previews ---- */

/* Render a decoded field into an RGB tile (tile x tile x 3): an image tensor de-normalised with
 * the transform's mean/std and resized (bilinear) to fit, centred on black; a log-mel as a
 * spectrogram picture of the frames that hold the clip (time left to right, low frequencies at
 * the bottom, a perceptual colour map over [min, max]). Returns ST_ERR_ARG for a RAW field. */
enum st_status st_decode_render(const struct st_decoded_field *f, const struct st_decode_options *o,
                                uint8_t *rgb, int tile, struct st_error *err);

/* Write an 8-bit RGB image rgb (h, w, 3) as a PNG file (libpng). */
enum st_status st_png_write(const char *path, const uint8_t *rgb, int w, int h,
                            struct st_error *err);

#ifdef __cplusplus
}
#endif
#endif
