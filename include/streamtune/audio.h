/* streamtune audio samples: decode from memory, mono 16 kHz float32, Whisper log-mel, augment.
 *
 * DESIGN
 * - Decode. st_audio_decode reads an encoded file held in memory (a WebDataset field) through
 *   libsndfile's virtual I/O: WAV, FLAC, OGG/Vorbis (and Opus), MP3 (libsndfile >= 1.1 built with
 *   mpg123; st_audio_have_mp3() says whether this build has it), and the rest libsndfile reads.
 *   Channels are mixed down to mono as their mean; the result is resampled to 16 kHz with libsoxr,
 *   recipe soxr_quality_spec(SOXR_HQ, 0): 20-bit precision, linear phase, passband to 91.3% of the
 *   output Nyquist (7.3 kHz), stopband from Nyquist. Input already at 16 kHz is not resampled.
 *   Samples are libsndfile's normalised floats (integer PCM / 2^(bits-1)).
 * - Limits before decoding. The header is opened first (st_audio_probe) and its duration
 *   (frames / rate) is refused above limits.max_seconds (--max-audio-seconds); sample rate and
 *   channel count are checked too. A header that does not state its length (streamed FLAC,
 *   damaged OGG) is held to the same cap while decoding. Output memory grows with the frames
 *   actually decoded, never with what a header claims, so a lying header costs nothing.
 * - Damage. Zero bytes, an unrecognised format, a FLAC/OGG/WAV that decodes to fewer frames than
 *   its header declares (truncation), a file with no frames: ST_ERR_FORMAT with a one-line
 *   message naming the sample. MP3 lengths are estimates unless the file has a Xing/Info header,
 *   so an MP3 counts as truncated only when more than 5% (and 2 frames of 1152) short. libsndfile,
 *   libFLAC, libmpg123 and libsoxr allocate with malloc, outside st_malloc's accounting; libmpg123
 *   may print a warning to stderr for a damaged MP3 (libsndfile gives no way to silence it).
 * - Log-mel (st_audio_log_mel) is Whisper's log_mel_spectrogram: the waveform is padded with
 *   zeros or trimmed to 30 s (480000 samples, whisper.audio.pad_or_trim), a centred STFT with
 *   reflect padding (torch.stft(center=True, pad_mode="reflect")), n_fft 400, hop 160, periodic
 *   Hann window, power |X|^2 of bins 0..200, the last of the 3001 frames dropped; a Slaney-scale,
 *   Slaney-normalised mel filterbank (librosa.filters.mel(sr=16000, n_fft=400, n_mels, htk=False,
 *   norm="slaney"), computed here from the formulas); log10(max(mel, 1e-10)); clamp below at
 *   (global max - 8); (x + 4) / 4. Output (n_mels, 3000) row-major float32. The FFT is our own:
 *   the 400-point real DFT is a 200-point complex FFT (mixed radix 4*2*5*5) plus a split step,
 *   float32 arithmetic with twiddles computed in float64, run on 8 frames at once (one per SIMD
 *   lane). A plan (struct st_audio_mel) holds window, filters, twiddles and scratch, so calls
 *   allocate nothing; a plan serves one thread at a time.
 * - Augmentation is deterministic: every random choice comes from st_audio_aug_seed(seed, epoch,
 *   sample key), so a resumed run sees the same augmentations. Waveform: gain (uniform in dB),
 *   time shift (uniform integer in [-shift_max, shift_max] samples; zero-fill by default,
 *   circular optional). Spectrogram: SpecAugment frequency and time masks (counts and maximum
 *   widths; width uniform in [0, max], start uniform where the mask fits; masked values set to
 *   mask_value, 0 like torchaudio's masking by default). Waveform and spectrogram draws use
 *   separate streams derived from the sample seed, so either may be applied alone.
 * - Errors are values: every fallible call returns enum st_status and writes "NAME: message"
 *   into err (NAME is the sample name passed in, "audio" when NULL).
 */
#ifndef STREAMTUNE_AUDIO_H
#define STREAMTUNE_AUDIO_H

#include <stddef.h>
#include <stdint.h>

#include "core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ST_AUDIO_RATE 16000          /* rate of st_audio_decode's output and of the log-mel */
#define ST_AUDIO_N_FFT 400           /* Whisper's STFT size (25 ms) */
#define ST_AUDIO_HOP 160             /* Whisper's hop (10 ms) */
#define ST_AUDIO_CHUNK 480000        /* 30 s at 16 kHz: the log-mel's input length */
#define ST_AUDIO_FRAMES 3000         /* log-mel frames of a 30 s chunk */
#define ST_AUDIO_MAX_SECONDS 600.0   /* default --max-audio-seconds */
#define ST_AUDIO_MAX_RATE 384000     /* default cap on the stored sample rate */
#define ST_AUDIO_MAX_CHANNELS 64     /* default cap on the channel count */

/* Caps checked against the header before decoding. Zero fields take the defaults above. */
struct st_audio_limits {
    double max_seconds; /* refuse longer audio (--max-audio-seconds) */
    int max_rate;       /* refuse a stored rate above this (Hz) */
    int max_channels;   /* refuse more channels than this */
};

/* What a header says (st_audio_probe). */
struct st_audio_info {
    const char *format; /* "WAV", "FLAC", "OGG", "MP3", ... (static string) */
    int sf_format;      /* libsndfile's SF_FORMAT_* major|subtype */
    int channels;
    int rate;           /* stored sample rate (Hz) */
    int64_t frames;     /* frames per channel; -1 when the header does not say */
    double seconds;     /* frames / rate; -1 when unknown */
};

/* Decoded mono audio. pcm (n,) float32 at `rate` Hz, owned (st_audio_free). */
struct st_audio {
    float *pcm;
    size_t n;
    int rate;
};

/* 1 when this libsndfile can decode MP3 (built with mpg123), else 0. */
int st_audio_have_mp3(void);

/* Read the header of an encoded file (data, size) and check it against lim (NULL: defaults).
 * name labels messages. Decodes nothing. Returns ST_OK, ST_ERR_FORMAT (empty, unrecognised or
 * damaged header), ST_ERR_UNSUPPORTED (MP3 without mpg123), ST_ERR_NOMEM (over a cap). */
enum st_status st_audio_probe(const void *data, size_t size, const char *name,
                              const struct st_audio_limits *lim, struct st_audio_info *info,
                              struct st_error *err);

/* Decode (data, size) to mono float32 at the stored rate (mean of the channels), after the checks
 * of st_audio_probe. On success *out owns its pcm (st_audio_free); on failure *out is empty. */
enum st_status st_audio_decode_native(const void *data, size_t size, const char *name,
                                      const struct st_audio_limits *lim, struct st_audio *out,
                                      struct st_error *err);

/* Resample a in place to `rate` Hz with libsoxr (SOXR_HQ); nothing happens when a->rate == rate.
 * The output has round(n * rate / a->rate) samples. On failure a is unchanged. */
enum st_status st_audio_resample(struct st_audio *a, int rate, const char *name,
                                 struct st_error *err);

/* st_audio_decode_native followed by st_audio_resample to ST_AUDIO_RATE (16 kHz): the waveform
 * the log-mel wants. */
enum st_status st_audio_decode(const void *data, size_t size, const char *name,
                               const struct st_audio_limits *lim, struct st_audio *out,
                               struct st_error *err);

/* Free a's samples and empty it (a may be empty). */
void st_audio_free(struct st_audio *a);

/* ---- Whisper log-mel spectrogram ---- */
struct st_audio_mel; /* plan: window, mel filters, FFT twiddles, scratch (~2.1 MB) */

/* Make a plan for n_mels mel bins (Whisper: 80, or 128 for large-v3; any 1..256 accepted). */
enum st_status st_audio_mel_init(struct st_audio_mel **plan, int n_mels, struct st_error *err);
void st_audio_mel_free(struct st_audio_mel *plan);
int st_audio_mel_bins(const struct st_audio_mel *plan);

/* The mel filterbank as float32 (n_mels, 201) row-major into filters (tests compare it). */
void st_audio_mel_filters(const struct st_audio_mel *plan, float *filters);

/* Whisper's log-mel of pcm (n,) at 16 kHz: the first 30 s, zero-padded when shorter. out
 * (n_mels, ST_AUDIO_FRAMES) row-major. Allocates nothing; the plan is busy during the call. */
void st_audio_log_mel(struct st_audio_mel *plan, float *out, const float *pcm, size_t n);

/* ---- augmentation ---- */
enum st_audio_shift { ST_AUDIO_SHIFT_ZERO = 0, ST_AUDIO_SHIFT_CIRCULAR = 1 };

/* Augmentation settings; all-zero does nothing. */
struct st_audio_aug {
    float gain_db_min, gain_db_max; /* gain uniform in [min, max] dB (equal: fixed gain) */
    int64_t shift_max;              /* time shift uniform in [-shift_max, shift_max] samples */
    enum st_audio_shift shift_mode; /* zero-fill (default) or circular */
    int freq_masks, freq_mask_max;  /* SpecAugment: count and max width (mel bins) */
    int time_masks, time_mask_max;  /* SpecAugment: count and max width (frames) */
    float mask_value;               /* value written into masks (0 as torchaudio) */
};

/* The per-sample seed: a hash of (seed, epoch, key). key is the WebDataset sample key. */
uint64_t st_audio_aug_seed(uint64_t seed, int64_t epoch, const char *key);

/* Gain and time shift of pcm (n,) in place, from sample_seed. Allocates nothing. */
void st_audio_augment_wave(const struct st_audio_aug *aug, uint64_t sample_seed, float *pcm,
                           size_t n);

/* SpecAugment masks on mel (n_mels, n_frames) row-major in place, from sample_seed. */
void st_audio_augment_mel(const struct st_audio_aug *aug, uint64_t sample_seed, float *mel,
                          int n_mels, int n_frames);

#ifdef __cplusplus
}
#endif
#endif
