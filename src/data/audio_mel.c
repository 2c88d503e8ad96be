/* audio_mel.c: Whisper's log-mel spectrogram (n_fft 400, hop 160, Slaney mel, 30 s chunks).
 *
 * DESIGN
 * - Frames are processed MEL_LANES at a time in structure-of-arrays form: every complex value of
 *   the FFT is MEL_LANES reals then MEL_LANES imaginaries, one frame per lane, so butterflies are
 *   element-wise vector operations with no shuffles. The vectors are GCC/Clang vector types
 *   (mel_v): the compiler lowers them to the target's SIMD (AVX2, NEON, ...) or to scalar code,
 *   so there are no intrinsics and no separate fallback. (Plain loops over lanes were 2x slower:
 *   GCC vectorised the butterflies' outer loop instead.)
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
 * - Gathering frames is the other cost: 3000 frames x 400 strided samples. The plan keeps the
 *   reflect-padded 30 s chunk as rows of one hop (160 samples) stored transposed (1.9 MB), so
 *   sample t of MEL_LANES consecutive frames is MEL_LANES consecutive floats: one vector load.
 *   Building it is one pass over the input (no separate padded copy).
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
/* rows of one hop of the padded chunk read by the frames (frame f reads rows f, f+1, f+2) */
#define MEL_ROWS ((size_t)MEL_BLOCKS * MEL_LANES + 2)

/* MEL_LANES floats, one per frame. GCC/Clang vector extensions (the project is GNU C already:
 * __attribute__ in core.h); element-wise operators, a scalar operand is broadcast. */
typedef float mel_v __attribute__((vector_size(MEL_LANES * sizeof(float))));
typedef int32_t mel_vi __attribute__((vector_size(MEL_LANES * sizeof(int32_t))));

struct mel_cv { /* MEL_LANES complex values */
    mel_v r, i;
};

static inline mel_v v_load(const float *p) { /* unaligned */
    mel_v v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline mel_v v_max(mel_v a, mel_v b) {
    mel_vi gt = a > b, ai, bi;
    memcpy(&ai, &a, sizeof ai);
    memcpy(&bi, &b, sizeof bi);
    mel_vi r = (ai & gt) | (bi & ~gt);
    memcpy(&a, &r, sizeof a);
    return a;
}

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
    int (*gofs)[2];        /* (200, 2) where the leaf-order inputs start in cols */
    float (*gw)[2];        /* (200, 2) their window values */
    float *cols;           /* (160, MEL_ROWS) the padded chunk, transposed rows of one hop */
    struct mel_cv *z;      /* (200,) FFT work */
    mel_v *pw;             /* (201,) 4 |X|^2 */
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
                  2 * st_arena_round(MEL_NC * 2 * sizeof(int)) +
                  st_arena_round(MEL_ROWS * ST_AUDIO_HOP * sizeof(float)) +
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
    p->gofs = st_arena_take(a, MEL_NC * 2 * sizeof(int));
    p->gw = st_arena_take(a, MEL_NC * 2 * sizeof(float));
    p->cols = st_arena_take(a, MEL_ROWS * ST_AUDIO_HOP * sizeof(float));
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
    for (int j = 0; j < MEL_NC; j++)
        for (int h = 0; h < 2; h++) {
            int t = 2 * p->perm[j] + h; /* sample of the frame; z = x[2m] + i x[2m + 1] */
            p->gofs[j][h] = (t % ST_AUDIO_HOP) * (int)MEL_ROWS + t / ST_AUDIO_HOP;
            p->gw[j][h] = p->window[t];
        }

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
static void bfly2(struct mel_cv *restrict F, int fstride, const float (*tw)[2], int m) {
    for (int u = 0; u < m; u++) {
        const float wr = tw[u * fstride][0], wi = tw[u * fstride][1];
        const mel_v ar = F[u + m].r, ai = F[u + m].i;
        const mel_v tr = ar * wr - ai * wi, ti = ar * wi + ai * wr;
        const mel_v br = F[u].r, bi = F[u].i;
        F[u + m].r = br - tr;
        F[u + m].i = bi - ti;
        F[u].r = br + tr;
        F[u].i = bi + ti;
    }
}

static void bfly4(struct mel_cv *restrict F, int fstride, const float (*tw)[2], int m) {
    for (int u = 0; u < m; u++) {
        const float w1r = tw[u * fstride][0], w1i = tw[u * fstride][1];
        const float w2r = tw[2 * u * fstride][0], w2i = tw[2 * u * fstride][1];
        const float w3r = tw[3 * u * fstride][0], w3i = tw[3 * u * fstride][1];
        struct mel_cv *f0 = F + u, *f1 = f0 + m, *f2 = f0 + 2 * m, *f3 = f0 + 3 * m;
        const mel_v s0r = f1->r * w1r - f1->i * w1i, s0i = f1->r * w1i + f1->i * w1r;
        const mel_v s1r = f2->r * w2r - f2->i * w2i, s1i = f2->r * w2i + f2->i * w2r;
        const mel_v s2r = f3->r * w3r - f3->i * w3i, s2i = f3->r * w3i + f3->i * w3r;
        const mel_v s5r = f0->r - s1r, s5i = f0->i - s1i;
        const mel_v a0r = f0->r + s1r, a0i = f0->i + s1i;
        const mel_v s3r = s0r + s2r, s3i = s0i + s2i;
        const mel_v s4r = s0r - s2r, s4i = s0i - s2i;
        f2->r = a0r - s3r;
        f2->i = a0i - s3i;
        f0->r = a0r + s3r;
        f0->i = a0i + s3i;
        f1->r = s5r + s4i;
        f1->i = s5i - s4r;
        f3->r = s5r - s4i;
        f3->i = s5i + s4r;
    }
}

/* Radix 5 on (s0, s1..s4 already multiplied by their twiddles), ya/yb = exp(-2 pi i {1,2} / 5). */
static inline void bfly5_core(struct mel_cv *f0, struct mel_cv *f1, struct mel_cv *f2,
                              struct mel_cv *f3, struct mel_cv *f4, mel_v s1r, mel_v s1i,
                              mel_v s2r, mel_v s2i, mel_v s3r, mel_v s3i, mel_v s4r, mel_v s4i,
                              float yar, float yai, float ybr, float ybi) {
    const mel_v s0r = f0->r, s0i = f0->i;
    const mel_v s7r = s1r + s4r, s7i = s1i + s4i;
    const mel_v s10r = s1r - s4r, s10i = s1i - s4i;
    const mel_v s8r = s2r + s3r, s8i = s2i + s3i;
    const mel_v s9r = s2r - s3r, s9i = s2i - s3i;
    f0->r = s0r + s7r + s8r;
    f0->i = s0i + s7i + s8i;
    const mel_v s5r = s0r + s7r * yar + s8r * ybr, s5i = s0i + s7i * yar + s8i * ybr;
    const mel_v s6r = s10i * yai + s9i * ybi, s6i = -(s10r * yai + s9r * ybi);
    f1->r = s5r - s6r;
    f1->i = s5i - s6i;
    f4->r = s5r + s6r;
    f4->i = s5i + s6i;
    const mel_v s11r = s0r + s7r * ybr + s8r * yar, s11i = s0i + s7i * ybr + s8i * yar;
    const mel_v s12r = s9i * yai - s10i * ybi, s12i = s10r * ybi - s9r * yai;
    f2->r = s11r + s12r;
    f2->i = s11i + s12i;
    f3->r = s11r - s12r;
    f3->i = s11i - s12i;
}

static void bfly5(struct mel_cv *restrict F, int fstride, const float (*tw)[2], int m) {
    const float yar = tw[fstride * m][0], yai = tw[fstride * m][1];
    const float ybr = tw[2 * fstride * m][0], ybi = tw[2 * fstride * m][1];
    for (int u = 0; u < m; u++) {
        struct mel_cv *f0 = F + u, *f1 = f0 + m, *f2 = f0 + 2 * m, *f3 = f0 + 3 * m,
                      *f4 = f0 + 4 * m;
        if (u == 0) { /* all twiddles 1 (the leaf level has only u = 0) */
            bfly5_core(f0, f1, f2, f3, f4, f1->r, f1->i, f2->r, f2->i, f3->r, f3->i, f4->r, f4->i,
                       yar, yai, ybr, ybi);
            continue;
        }
        const float *w1 = tw[u * fstride], *w2 = tw[2 * u * fstride], *w3 = tw[3 * u * fstride],
                    *w4 = tw[4 * u * fstride];
        bfly5_core(f0, f1, f2, f3, f4, f1->r * w1[0] - f1->i * w1[1],
                   f1->r * w1[1] + f1->i * w1[0], f2->r * w2[0] - f2->i * w2[1],
                   f2->r * w2[1] + f2->i * w2[0], f3->r * w3[0] - f3->i * w3[1],
                   f3->r * w3[1] + f3->i * w3[0], f4->r * w4[0] - f4->i * w4[1],
                   f4->r * w4[1] + f4->i * w4[0], yar, yai, ybr, ybi);
    }
}

/* In-place 200-point FFT of z, whose input is already in leaf order (perm). */
static void fft200(const struct st_audio_mel *p, struct mel_cv *z) {
    for (int lv = p->levels - 1; lv >= 0; lv--) {
        const struct mel_level L = p->level[lv];
        const int span = L.p * L.m;
        for (int b = 0; b < MEL_NC; b += span) {
            switch (L.p) {
            case 2: bfly2(z + b, L.fstride, p->tw, L.m); break;
            case 4: bfly4(z + b, L.fstride, p->tw, L.m); break;
            case 5: bfly5(z + b, L.fstride, p->tw, L.m); break;
            default: ST_ASSERT(0);
            }
        }
    }
}

/* log10 of each lane, x > 0 finite (musl logf's reduction, then an atanh series to s^9: relative
 * error < 1e-7 before float rounding). */
static inline mel_v v_log10(mel_v x) {
    const float ln2 = 0.69314718055994530942f, inv_ln10 = 0.43429448190325182765f;
    mel_vi ix;
    memcpy(&ix, &x, sizeof ix);
    ix += 0x3f800000 - 0x3f3504f3;
    const mel_vi k = (ix >> 23) - 0x7f; /* ix > 0: x is a positive finite float */
    mel_vi mb = (ix & 0x007fffff) + 0x3f3504f3; /* mantissa in [sqrt(1/2), sqrt(2)) */
    mel_v mf;
    memcpy(&mf, &mb, sizeof mf);
    const mel_v f = mf - 1.0f;
    const mel_v s = f / (2.0f + f);
    const mel_v z = s * s;
    const mel_v r = z * (1.0f / 3 + z * (1.0f / 5 + z * (1.0f / 7 + z * (1.0f / 9))));
    const mel_v lm = 2.0f * s + 2.0f * s * r;
    return (__builtin_convertvector(k, mel_v) * ln2 + lm) * inv_ln10;
}

/* Value i of the reflect-padded chunk: x = pcm[0..nx) then zeros to 480000 samples (pad_or_trim),
 * padded by 200 reflected samples on each side (torch.stft center=True), zeros after that. */
static inline float padded_at(const float *pcm, size_t nx, size_t i) {
    const size_t N = ST_AUDIO_CHUNK;
    size_t j;
    if (i < MEL_PAD)
        j = MEL_PAD - i;
    else if (i < MEL_PAD + N)
        j = i - MEL_PAD;
    else if (i < 2 * MEL_PAD + N)
        j = N - 2 - (i - MEL_PAD - N);
    else
        return 0.0f;
    return j < nx ? pcm[j] : 0.0f;
}

void st_audio_log_mel(struct st_audio_mel *p, float *out, const float *pcm, size_t n) {
    const size_t nx = n < ST_AUDIO_CHUNK ? n : ST_AUDIO_CHUNK;
    /* The padded chunk as rows of one hop, stored transposed: cols[c * MEL_ROWS + r] = padded
     * sample r * 160 + c. Sample t of frame f is then cols[(t % 160) * MEL_ROWS + f + t / 160],
     * so the value t of MEL_LANES consecutive frames is MEL_LANES consecutive floats. */
    float *cols = p->cols;
    for (size_t r = 0; r < MEL_ROWS;) {
        const size_t i0 = r * ST_AUDIO_HOP;
        if (r + MEL_LANES <= MEL_ROWS && i0 >= MEL_PAD &&
            i0 - MEL_PAD + MEL_LANES * ST_AUDIO_HOP <= nx) {
            /* MEL_LANES whole rows inside the input: one vector store per column */
            const float *src = pcm + (i0 - MEL_PAD);
            for (int c = 0; c < ST_AUDIO_HOP; c++) {
                mel_v v;
                for (int l = 0; l < MEL_LANES; l++) v[l] = src[l * ST_AUDIO_HOP + c];
                memcpy(cols + (size_t)c * MEL_ROWS + r, &v, sizeof v);
            }
            r += MEL_LANES;
        } else {
            for (int c = 0; c < ST_AUDIO_HOP; c++)
                cols[(size_t)c * MEL_ROWS + r] = padded_at(pcm, nx, i0 + (size_t)c);
            r++;
        }
    }

    const int n_mels = p->n_mels;
    struct mel_cv *restrict z = p->z;
    mel_v *restrict pw = p->pw;
    mel_v vmax = (mel_v){0} - INFINITY;

    for (int b = 0; b < MEL_BLOCKS; b++) {
        const int f0 = b * MEL_LANES;
        /* windowed frames, straight into the FFT's leaf order */
        for (int j = 0; j < MEL_NC; j++) {
            z[j].r = v_load(cols + p->gofs[j][0] + f0) * p->gw[j][0];
            z[j].i = v_load(cols + p->gofs[j][1] + f0) * p->gw[j][1];
        }
        fft200(p, z);
        /* split into the real DFT's bins, 4 |X[k]|^2 */
        for (int k = 0; k < MEL_BINS; k++) {
            const struct mel_cv A = z[k % MEL_NC], B = z[(MEL_NC - k) % MEL_NC];
            const float wr = p->split[k][0], wi = p->split[k][1];
            const mel_v er = A.r + B.r, ei = A.i - B.i, orr = A.i + B.i, oi = B.r - A.r;
            const mel_v xr = er + wr * orr - wi * oi, xi = ei + wr * oi + wi * orr;
            pw[k] = xr * xr + xi * xi;
        }
        /* mel filters (sparse), clamp at 1e-10, log10 */
        const mel_v tiny = (mel_v){0} + 1e-10f;
        const int nvalid = ST_AUDIO_FRAMES - f0 < MEL_LANES ? ST_AUDIO_FRAMES - f0 : MEL_LANES;
        for (int m = 0; m < n_mels; m++) {
            mel_v acc = {0};
            const float *fw = p->fw + p->foff[m];
            const mel_v *pk = pw + p->fstart[m];
            for (int k = 0; k < p->fcount[m]; k++) acc += fw[k] * pk[k];
            const mel_v lg = v_log10(v_max(acc, tiny));
            if (nvalid == MEL_LANES) {
                vmax = v_max(lg, vmax);
                memcpy(out + (size_t)m * ST_AUDIO_FRAMES + f0, &lg, sizeof lg);
            } else {
                for (int l = 0; l < nvalid; l++) {
                    out[(size_t)m * ST_AUDIO_FRAMES + f0 + l] = lg[l];
                    vmax[l] = lg[l] > vmax[l] ? lg[l] : vmax[l];
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
        out[i] = (v + 4.0f) * 0.25f;
    }
}
