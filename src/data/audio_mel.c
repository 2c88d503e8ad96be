/* audio_mel.c: Whisper's log-mel spectrogram (n_fft 400, hop 160, Slaney mel, 30 s chunks).
 *
 * DESIGN
 * - Frames are processed MEL_LANES at a time in structure-of-arrays form: every complex value of
 *   the FFT is MEL_LANES reals then MEL_LANES imaginaries, one frame per lane, so each butterfly is
 *   a plain loop over lanes that the compiler turns into SIMD without shuffles (any ISA; no
 *   intrinsics, so no scalar fallback is needed).
 * - The 400-point real DFT of a windowed frame x is the 200-point complex FFT of
 *   z[m] = x[2m] + i x[2m+1] followed by the usual split: X[k] = E[k] + W400^k O[k] with
 *   E = (Z[k] + conj Z[200-k]) / 2, O = (Z[k] - conj Z[200-k]) / 2i, for k = 0..200.
 * - The complex FFT is KISS FFT's mixed-radix decimation in time (radices 4, 2, 5, 5) flattened:
 *   the input permutation of its recursion is precomputed, so gathering a windowed frame writes
 *   straight into leaf order, then four butterfly levels run in place. Twiddles are computed in
 *   float64 and stored as float32; the arithmetic is float32.
 * - The split step computes 2X (no halving) and the mel weights carry the factor 1/4, exactly (a
 *   power of two). Filters are stored sparse (first bin, count, weights): about 2 bins per filter.
 * - log10 is a branch-free polynomial (musl's logf reduction, atanh series to s^9; relative error
 *   < 1e-7) that vectorises over lanes; libm's log10f per value would cost as much as the FFT.
 * - The plan owns the reflect-padded 30 s waveform (1.9 MB) so the gather reads one buffer.
 */
#include <math.h>
#include <string.h>

#include "streamtune/audio.h"

#define MEL_LANES 8
#define MEL_NFFT ST_AUDIO_N_FFT     /* 400 */
#define MEL_NC (MEL_NFFT / 2)       /* 200-point complex FFT */
#define MEL_BINS (MEL_NFFT / 2 + 1) /* 201 */
#define MEL_PAD (MEL_NFFT / 2)      /* centre padding, each side */
#define MEL_BLOCKS ((ST_AUDIO_FRAMES + MEL_LANES - 1) / MEL_LANES)
/* padded waveform: the chunk, reflect padding, and zeros read by the lanes past frame 2999 */
#define MEL_PADDED (ST_AUDIO_CHUNK + 2 * MEL_PAD + MEL_LANES * ST_AUDIO_HOP)

struct mel_cv { /* MEL_LANES complex values */
    float r[MEL_LANES];
    float i[MEL_LANES];
};

struct mel_level { /* one butterfly level: radix p, m values per sub-FFT, twiddle stride */
    int p, m, fstride;
};

struct st_audio_mel {
    int n_mels;
    int levels;
    struct mel_level level[4];
    struct st_arena arena;
    float *window;         /* (400,) periodic Hann */
    float (*tw)[2];        /* (200, 2) exp(-2 pi i k / 200) */
    float (*split)[2];     /* (201, 2) exp(-2 pi i k / 400) */
    int *perm;             /* (200,) leaf order of the complex FFT's input */
    int *fstart, *fcount;  /* (n_mels,) first nonzero bin and count of each filter */
    int *foff;             /* (n_mels,) offset of each filter's weights in fw */
    float *fw;             /* packed weights * 1/4 */
    float *padded;         /* (MEL_PADDED,) reflect-padded chunk */
    struct mel_cv *z;      /* (200,) FFT work */
    float (*pw)[MEL_LANES];  /* (201, lanes) 4 |X|^2 */
};

/* ---- Slaney mel scale (librosa.hz_to_mel / mel_to_hz with htk=False) ---- */
static double hz_to_mel(double f) {
    const double f_sp = 200.0 / 3, min_log_hz = 1000.0, min_log_mel = min_log_hz / f_sp;
    const double logstep = log(6.4) / 27.0;
    return f >= min_log_hz ? min_log_mel + log(f / min_log_hz) / logstep : f / f_sp;
}

static double mel_to_hz(double m) {
    const double f_sp = 200.0 / 3, min_log_hz = 1000.0, min_log_mel = min_log_hz / f_sp;
    const double logstep = log(6.4) / 27.0;
    return m >= min_log_mel ? min_log_hz * exp(logstep * (m - min_log_mel)) : f_sp * m;
}

/* Dense (n_mels, 201) float64 Slaney filterbank (librosa.filters.mel, norm="slaney"). */
static void slaney_filters(double *w, int n_mels) {
    double mel_f[258];
    double lo = hz_to_mel(0.0), hi = hz_to_mel(ST_AUDIO_RATE / 2.0);
    for (int i = 0; i < n_mels + 2; i++) mel_f[i] = mel_to_hz(lo + (hi - lo) * i / (n_mels + 1));
    for (int m = 0; m < n_mels; m++) {
        double enorm = 2.0 / (mel_f[m + 2] - mel_f[m]);
        for (int k = 0; k < MEL_BINS; k++) {
            double f = (double)k * ST_AUDIO_RATE / MEL_NFFT;
            double lower = (f - mel_f[m]) / (mel_f[m + 1] - mel_f[m]);
            double upper = (mel_f[m + 2] - f) / (mel_f[m + 2] - mel_f[m + 1]);
            double v = lower < upper ? lower : upper;
            w[(size_t)m * MEL_BINS + k] = v > 0 ? v * enorm : 0.0;
        }
    }
}

/* Leaf order of KISS FFT's recursion: perm[j] = input index that lands at position j. */
static void make_perm(int *perm, int out, int in, int fstride, const struct mel_level *lv,
                      int levels) {
    int p = lv[0].p, m = lv[0].m;
    if (levels == 1) {
        for (int k = 0; k < p; k++) perm[out + k] = in + k * fstride;
        return;
    }
    for (int q = 0; q < p; q++)
        make_perm(perm, out + q * m, in + q * fstride, fstride * p, lv + 1, levels - 1);
}

enum st_status st_audio_mel_init(struct st_audio_mel **plan, int n_mels, struct st_error *err) {
    *plan = NULL;
    if (n_mels < 1 || n_mels > 256)
        return st_errorf(err, ST_ERR_ARG, "log-mel: %d mel bins (1..256; Whisper uses 80 or 128)",
                         n_mels);
    double *dense = st_malloc((size_t)n_mels * MEL_BINS * sizeof *dense);
    struct st_audio_mel *p = st_calloc(1, sizeof *p);
    if (!dense || !p) {
        st_free(dense);
        st_free(p);
        return st_errorf(err, ST_ERR_NOMEM, "log-mel: out of memory for the plan");
    }
    slaney_filters(dense, n_mels);
    size_t nnz = 0;
    for (size_t i = 0; i < (size_t)n_mels * MEL_BINS; i++) nnz += dense[i] > 0;

    size_t need = st_arena_round(MEL_NFFT * sizeof(float)) +
                  st_arena_round(MEL_NC * 2 * sizeof(float)) +
                  st_arena_round(MEL_BINS * 2 * sizeof(float)) +
                  st_arena_round(MEL_NC * sizeof(int)) +
                  3 * st_arena_round((size_t)n_mels * sizeof(int)) +
                  st_arena_round((nnz + 1) * sizeof(float)) +
                  st_arena_round(MEL_PADDED * sizeof(float)) +
                  st_arena_round(MEL_NC * sizeof(struct mel_cv)) +
                  st_arena_round(MEL_BINS * MEL_LANES * sizeof(float));
    enum st_status rc = st_arena_init(&p->arena, need, err);
    if (rc) {
        st_free(dense);
        st_free(p);
        return st_error_prefix(err, "log-mel plan: ");
    }
    struct st_arena *a = &p->arena;
    p->n_mels = n_mels;
    p->window = st_arena_take(a, MEL_NFFT * sizeof(float));
    p->tw = st_arena_take(a, MEL_NC * 2 * sizeof(float));
    p->split = st_arena_take(a, MEL_BINS * 2 * sizeof(float));
    p->perm = st_arena_take(a, MEL_NC * sizeof(int));
    p->fstart = st_arena_take(a, (size_t)n_mels * sizeof(int));
    p->fcount = st_arena_take(a, (size_t)n_mels * sizeof(int));
    p->foff = st_arena_take(a, (size_t)n_mels * sizeof(int));
    p->fw = st_arena_take(a, (nnz + 1) * sizeof(float));
    p->padded = st_arena_take(a, MEL_PADDED * sizeof(float));
    p->z = st_arena_take(a, MEL_NC * sizeof(struct mel_cv));
    p->pw = st_arena_take(a, MEL_BINS * MEL_LANES * sizeof(float));
    ST_ASSERT(p->pw != NULL);

    const double pi = 3.14159265358979323846;
    for (int t = 0; t < MEL_NFFT; t++) /* torch.hann_window(400), periodic */
        p->window[t] = (float)(0.5 - 0.5 * cos(2 * pi * t / MEL_NFFT));
    for (int k = 0; k < MEL_NC; k++) {
        p->tw[k][0] = (float)cos(-2 * pi * k / MEL_NC);
        p->tw[k][1] = (float)sin(-2 * pi * k / MEL_NC);
    }
    for (int k = 0; k < MEL_BINS; k++) {
        p->split[k][0] = (float)cos(-2 * pi * k / MEL_NFFT);
        p->split[k][1] = (float)sin(-2 * pi * k / MEL_NFFT);
    }
    p->split[MEL_NC][0] = -1.0f; /* k = 200: exactly -1 */
    p->split[MEL_NC][1] = 0.0f;

    static const int radix[4] = {4, 2, 5, 5}; /* 200 = 4 * 2 * 5 * 5 */
    int m = MEL_NC, fstride = 1;
    p->levels = 4;
    for (int l = 0; l < 4; l++) {
        m /= radix[l];
        p->level[l] = (struct mel_level){radix[l], m, fstride};
        fstride *= radix[l];
    }
    make_perm(p->perm, 0, 0, 1, p->level, p->levels);

    int off = 0;
    for (int mm = 0; mm < n_mels; mm++) {
        const double *row = dense + (size_t)mm * MEL_BINS;
        int first = -1, last = -1;
        for (int k = 0; k < MEL_BINS; k++)
            if (row[k] > 0) {
                if (first < 0) first = k;
                last = k;
            }
        p->fstart[mm] = first < 0 ? 0 : first;
        p->fcount[mm] = first < 0 ? 0 : last - first + 1;
        p->foff[mm] = off;
        for (int k = 0; k < p->fcount[mm]; k++)
            p->fw[off + k] = (float)row[first + k] * 0.25f;
        off += p->fcount[mm];
    }
    ST_ASSERT((size_t)off <= nnz + 1);
    st_free(dense);
    *plan = p;
    return ST_OK;
}

void st_audio_mel_free(struct st_audio_mel *plan) {
    if (!plan) return;
    st_arena_free(&plan->arena);
    st_free(plan);
}

int st_audio_mel_bins(const struct st_audio_mel *plan) { return plan->n_mels; }

void st_audio_mel_filters(const struct st_audio_mel *p, float *filters) {
    memset(filters, 0, (size_t)p->n_mels * MEL_BINS * sizeof *filters);
    for (int m = 0; m < p->n_mels; m++)
        for (int k = 0; k < p->fcount[m]; k++)
            filters[(size_t)m * MEL_BINS + p->fstart[m] + k] = p->fw[p->foff[m] + k] * 4.0f;
}

/* ---- butterflies over lanes (KISS FFT's forward kf_bfly2/4/5) ---- */
#define CMUL_R(ar, ai, br, bi) ((ar) * (br) - (ai) * (bi))
#define CMUL_I(ar, ai, br, bi) ((ar) * (bi) + (ai) * (br))

static void bfly2(struct mel_cv *restrict F, int fstride, const float (*tw)[2], int m) {
    for (int u = 0; u < m; u++) {
        const float wr = tw[u * fstride][0], wi = tw[u * fstride][1];
        struct mel_cv *f0 = F + u, *f1 = F + u + m;
        for (int l = 0; l < MEL_LANES; l++) {
            float tr = CMUL_R(f1->r[l], f1->i[l], wr, wi);
            float ti = CMUL_I(f1->r[l], f1->i[l], wr, wi);
            f1->r[l] = f0->r[l] - tr;
            f1->i[l] = f0->i[l] - ti;
            f0->r[l] += tr;
            f0->i[l] += ti;
        }
    }
}

static void bfly4(struct mel_cv *restrict F, int fstride, const float (*tw)[2], int m) {
    for (int u = 0; u < m; u++) {
        const float w1r = tw[u * fstride][0], w1i = tw[u * fstride][1];
        const float w2r = tw[2 * u * fstride][0], w2i = tw[2 * u * fstride][1];
        const float w3r = tw[3 * u * fstride][0], w3i = tw[3 * u * fstride][1];
        struct mel_cv *f0 = F + u, *f1 = f0 + m, *f2 = f0 + 2 * m, *f3 = f0 + 3 * m;
        for (int l = 0; l < MEL_LANES; l++) {
            float s0r = CMUL_R(f1->r[l], f1->i[l], w1r, w1i);
            float s0i = CMUL_I(f1->r[l], f1->i[l], w1r, w1i);
            float s1r = CMUL_R(f2->r[l], f2->i[l], w2r, w2i);
            float s1i = CMUL_I(f2->r[l], f2->i[l], w2r, w2i);
            float s2r = CMUL_R(f3->r[l], f3->i[l], w3r, w3i);
            float s2i = CMUL_I(f3->r[l], f3->i[l], w3r, w3i);
            float s5r = f0->r[l] - s1r, s5i = f0->i[l] - s1i;
            float a0r = f0->r[l] + s1r, a0i = f0->i[l] + s1i;
            float s3r = s0r + s2r, s3i = s0i + s2i;
            float s4r = s0r - s2r, s4i = s0i - s2i;
            f2->r[l] = a0r - s3r;
            f2->i[l] = a0i - s3i;
            f0->r[l] = a0r + s3r;
            f0->i[l] = a0i + s3i;
            f1->r[l] = s5r + s4i;
            f1->i[l] = s5i - s4r;
            f3->r[l] = s5r - s4i;
            f3->i[l] = s5i + s4r;
        }
    }
}

static void bfly5(struct mel_cv *restrict F, int fstride, const float (*tw)[2], int m) {
    const float yar = tw[fstride * m][0], yai = tw[fstride * m][1];
    const float ybr = tw[2 * fstride * m][0], ybi = tw[2 * fstride * m][1];
    for (int u = 0; u < m; u++) {
        float w[4][2];
        for (int k = 0; k < 4; k++) {
            w[k][0] = tw[(k + 1) * u * fstride][0];
            w[k][1] = tw[(k + 1) * u * fstride][1];
        }
        struct mel_cv *f0 = F + u, *f1 = f0 + m, *f2 = f0 + 2 * m, *f3 = f0 + 3 * m,
                      *f4 = f0 + 4 * m;
        for (int l = 0; l < MEL_LANES; l++) {
            float s0r = f0->r[l], s0i = f0->i[l];
            float s1r = CMUL_R(f1->r[l], f1->i[l], w[0][0], w[0][1]);
            float s1i = CMUL_I(f1->r[l], f1->i[l], w[0][0], w[0][1]);
            float s2r = CMUL_R(f2->r[l], f2->i[l], w[1][0], w[1][1]);
            float s2i = CMUL_I(f2->r[l], f2->i[l], w[1][0], w[1][1]);
            float s3r = CMUL_R(f3->r[l], f3->i[l], w[2][0], w[2][1]);
            float s3i = CMUL_I(f3->r[l], f3->i[l], w[2][0], w[2][1]);
            float s4r = CMUL_R(f4->r[l], f4->i[l], w[3][0], w[3][1]);
            float s4i = CMUL_I(f4->r[l], f4->i[l], w[3][0], w[3][1]);
            float s7r = s1r + s4r, s7i = s1i + s4i;
            float s10r = s1r - s4r, s10i = s1i - s4i;
            float s8r = s2r + s3r, s8i = s2i + s3i;
            float s9r = s2r - s3r, s9i = s2i - s3i;
            f0->r[l] = s0r + s7r + s8r;
            f0->i[l] = s0i + s7i + s8i;
            float s5r = s0r + s7r * yar + s8r * ybr, s5i = s0i + s7i * yar + s8i * ybr;
            float s6r = s10i * yai + s9i * ybi, s6i = -(s10r * yai + s9r * ybi);
            f1->r[l] = s5r - s6r;
            f1->i[l] = s5i - s6i;
            f4->r[l] = s5r + s6r;
            f4->i[l] = s5i + s6i;
            float s11r = s0r + s7r * ybr + s8r * yar, s11i = s0i + s7i * ybr + s8i * yar;
            float s12r = -s10i * ybi + s9i * yai, s12i = s10r * ybi - s9r * yai;
            f2->r[l] = s11r + s12r;
            f2->i[l] = s11i + s12i;
            f3->r[l] = s11r - s12r;
            f3->i[l] = s11i - s12i;
        }
    }
}

/* The leaf level: radix 5, one value per sub-FFT, all twiddles 1. */
static void bfly5_leaf(struct mel_cv *restrict F, const float (*tw)[2], int fstride) {
    const float yar = tw[fstride][0], yai = tw[fstride][1];
    const float ybr = tw[2 * fstride][0], ybi = tw[2 * fstride][1];
    struct mel_cv *f0 = F, *f1 = F + 1, *f2 = F + 2, *f3 = F + 3, *f4 = F + 4;
    for (int l = 0; l < MEL_LANES; l++) {
        float s0r = f0->r[l], s0i = f0->i[l];
        float s7r = f1->r[l] + f4->r[l], s7i = f1->i[l] + f4->i[l];
        float s10r = f1->r[l] - f4->r[l], s10i = f1->i[l] - f4->i[l];
        float s8r = f2->r[l] + f3->r[l], s8i = f2->i[l] + f3->i[l];
        float s9r = f2->r[l] - f3->r[l], s9i = f2->i[l] - f3->i[l];
        f0->r[l] = s0r + s7r + s8r;
        f0->i[l] = s0i + s7i + s8i;
        float s5r = s0r + s7r * yar + s8r * ybr, s5i = s0i + s7i * yar + s8i * ybr;
        float s6r = s10i * yai + s9i * ybi, s6i = -(s10r * yai + s9r * ybi);
        f1->r[l] = s5r - s6r;
        f1->i[l] = s5i - s6i;
        f4->r[l] = s5r + s6r;
        f4->i[l] = s5i + s6i;
        float s11r = s0r + s7r * ybr + s8r * yar, s11i = s0i + s7i * ybr + s8i * yar;
        float s12r = -s10i * ybi + s9i * yai, s12i = s10r * ybi - s9r * yai;
        f2->r[l] = s11r + s12r;
        f2->i[l] = s11i + s12i;
        f3->r[l] = s11r - s12r;
        f3->i[l] = s11i - s12i;
    }
}

/* In-place 200-point FFT of z, whose input is already in leaf order (perm). */
static void fft200(const struct st_audio_mel *p, struct mel_cv *z) {
    for (int lv = p->levels - 1; lv >= 0; lv--) {
        const struct mel_level L = p->level[lv];
        int span = L.p * L.m;
        for (int b = 0; b < MEL_NC; b += span) {
            struct mel_cv *F = z + b;
            switch (L.p) {
            case 2: bfly2(F, L.fstride, p->tw, L.m); break;
            case 4: bfly4(F, L.fstride, p->tw, L.m); break;
            case 5:
                if (L.m == 1)
                    bfly5_leaf(F, p->tw, L.fstride);
                else
                    bfly5(F, L.fstride, p->tw, L.m);
                break;
            default: ST_ASSERT(0);
            }
        }
    }
}

/* log10 of each lane, x > 0 finite (musl logf's reduction; atanh series). */
static inline void log10_lanes(float *restrict y, const float *restrict x) {
    const float ln2 = 0.69314718055994530942f, inv_ln10 = 0.43429448190325182765f;
    for (int l = 0; l < MEL_LANES; l++) {
        union { float f; uint32_t u; } v = {x[l]};
        uint32_t ix = v.u + (0x3f800000u - 0x3f3504f3u);
        int k = (int)(ix >> 23) - 0x7f;
        v.u = (ix & 0x007fffffu) + 0x3f3504f3u; /* mantissa in [sqrt(1/2), sqrt(2)) */
        float f = v.f - 1.0f;
        float s = f / (2.0f + f);
        float z = s * s;
        float r = z * (1.0f / 3 + z * (1.0f / 5 + z * (1.0f / 7 + z * (1.0f / 9))));
        float lm = 2.0f * s + 2.0f * s * r;
        y[l] = ((float)k * ln2 + lm) * inv_ln10;
    }
}

void st_audio_log_mel(struct st_audio_mel *p, float *out, const float *pcm, size_t n) {
    float *pad = p->padded;
    const size_t N = ST_AUDIO_CHUNK;
    size_t nx = n < N ? n : N;
    /* whisper pad_or_trim, then torch.stft's reflect padding of 200 on each side */
    if (nx) memcpy(pad + MEL_PAD, pcm, nx * sizeof *pad);
    if (nx < N) memset(pad + MEL_PAD + nx, 0, (N - nx) * sizeof *pad);
    const float *x = pad + MEL_PAD;
    for (int i = 0; i < MEL_PAD; i++) pad[i] = x[MEL_PAD - i];
    for (int j = 0; j < MEL_PAD; j++) pad[MEL_PAD + N + j] = x[N - 2 - j];
    /* the tail past MEL_PAD + N + MEL_PAD stays zero from the arena */

    const int n_mels = p->n_mels;
    struct mel_cv *z = p->z;
    float(*pw)[MEL_LANES] = p->pw;
    const float *w = p->window;
    float vmax[MEL_LANES];
    for (int l = 0; l < MEL_LANES; l++) vmax[l] = -INFINITY;

    for (int b = 0; b < MEL_BLOCKS; b++) {
        const int f0 = b * MEL_LANES;
        /* gather windowed frames into leaf order */
        for (int j = 0; j < MEL_NC; j++) {
            const int t = 2 * p->perm[j];
            const float wa = w[t], wb = w[t + 1];
            const float *src = pad + (size_t)f0 * ST_AUDIO_HOP + t;
            for (int l = 0; l < MEL_LANES; l++) {
                z[j].r[l] = src[l * ST_AUDIO_HOP] * wa;
                z[j].i[l] = src[l * ST_AUDIO_HOP + 1] * wb;
            }
        }
        fft200(p, z);
        /* split into the real DFT's bins, 4 |X[k]|^2 */
        for (int k = 0; k < MEL_BINS; k++) {
            const struct mel_cv *A = &z[k % MEL_NC], *B = &z[(MEL_NC - k) % MEL_NC];
            const float wr = p->split[k][0], wi = p->split[k][1];
            for (int l = 0; l < MEL_LANES; l++) {
                float er = A->r[l] + B->r[l], ei = A->i[l] - B->i[l];
                float orr = A->i[l] + B->i[l], oi = B->r[l] - A->r[l];
                float xr = er + wr * orr - wi * oi;
                float xi = ei + wr * oi + wi * orr;
                pw[k][l] = xr * xr + xi * xi;
            }
        }
        /* mel filters, log10 */
        const int nvalid = ST_AUDIO_FRAMES - f0 < MEL_LANES ? ST_AUDIO_FRAMES - f0 : MEL_LANES;
        for (int m = 0; m < n_mels; m++) {
            float acc[MEL_LANES] = {0};
            const float *fw = p->fw + p->foff[m];
            const int k0 = p->fstart[m], cnt = p->fcount[m];
            for (int k = 0; k < cnt; k++)
                for (int l = 0; l < MEL_LANES; l++) acc[l] += fw[k] * pw[k0 + k][l];
            for (int l = 0; l < MEL_LANES; l++) acc[l] = acc[l] > 1e-10f ? acc[l] : 1e-10f;
            float lg[MEL_LANES];
            log10_lanes(lg, acc);
            if (nvalid == MEL_LANES) {
                for (int l = 0; l < MEL_LANES; l++) vmax[l] = lg[l] > vmax[l] ? lg[l] : vmax[l];
                memcpy(out + (size_t)m * ST_AUDIO_FRAMES + f0, lg, sizeof lg);
            } else {
                for (int l = 0; l < nvalid; l++) {
                    vmax[l] = lg[l] > vmax[l] ? lg[l] : vmax[l];
                    out[(size_t)m * ST_AUDIO_FRAMES + f0 + l] = lg[l];
                }
            }
        }
    }
    float gmax = vmax[0];
    for (int l = 1; l < MEL_LANES; l++) gmax = vmax[l] > gmax ? vmax[l] : gmax;
    const float floor_v = gmax - 8.0f;
    const size_t total = (size_t)n_mels * ST_AUDIO_FRAMES;
    for (size_t i = 0; i < total; i++) {
        float v = out[i] > floor_v ? out[i] : floor_v;
        out[i] = (v + 4.0f) / 4.0f;
    }
}
