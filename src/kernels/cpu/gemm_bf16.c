/* gemm_bf16.c: out (M, N) (+)= X (M, K) @ B where B is a frozen weight packed once into BF16
 * panels, on AVX512_BF16 (vdpbf16ps) or AArch64 BF16 (BFDOT), with a portable fallback.
 *
 * Layout: B (K, N) is packed in panels of NR = 32 columns; a panel holds, for each pair of rows
 * (k, k+1), the 32 columns' two values interleaved ([n0:k, n0:k+1, n1:k, n1:k+1, ...], 64 BF16),
 * zero-padded at the right edge and for odd K. X is converted to BF16 pairs per call (round to
 * nearest even) into tiles of MR rows interleaved pair by pair (see st_bf16_pack_x). The micro-kernel keeps an MR x NR tile of
 * float accumulators in 16 zmm registers and, per pair of k, broadcasts X's pair of each row and
 * issues one vdpbf16ps per (row, 16 columns): acc += x_k * b_k + x_k+1 * b_k+1, with float
 * accumulation. Threads split the panels (disjoint output columns: deterministic for any count).
 *
 * AArch64 with FEAT_BF16 (HWCAP2_BF16 at run time; ST_NO_NEON=1 forces the portable kernel) runs
 * the same layout through BFDOT: a register of the panel holds 4 columns' pairs, a register of the
 * X tile 4 rows' pairs, and vbfdotq_laneq_f32 adds one row's pair dotted with each column's pair.
 * 8 x 32 accumulators do not fit in 32 registers, so the kernel walks the panel in strips of 8
 * columns (16 accumulators). BFDOT is not vdpbf16ps: it rounds the sum of the two (exact)
 * products, then the accumulation, each to odd, and flushes denormals to zero (FPCR is ignored),
 * so results differ from the other kernels by float summation error (still one fixed order per
 * output, whatever the thread count).
 *
 * "wt" packs a weight W (OC, C) for out = X W^T (B[k][n] = W[n][k]); "w" packs it for
 * dX = dY W (B[k][n] = W[k][n]). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "fexp.h"
#ifdef __x86_64__
#include "transpose16.h"
#endif
#include "streamtune/bf16.h"
#include "streamtune/core.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define X86 1
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#include <sys/auxv.h>
#define A64 1
#ifndef HWCAP2_BF16
#define HWCAP2_BF16 (1UL << 14) /* arch/arm64/include/uapi/asm/hwcap.h */
#endif
#endif

#include "gemm_driver.h"
#ifdef A64
#include "gemm_neon.h"
#endif

#define NR GEMM_NR
#define MR GEMM_MR
#define KC 16384 /* at most this many pairs of k per block (balanced: gemm_kc): a tile's k loop
                  * streams its panel (128 B per pair, up to 2 MiB) from L2 or L3 at 8 B per
                  * cycle, which costs less than storing and reloading the C tiles between
                  * k blocks. On the Zen 4 dev VM (1 MiB L2, 32 MiB L3), against panel blocks
                  * of 288 pairs (36 KiB, sized for L1): +3-7% at transformer shapes (gate/up
                  * 768 x 2048 +7%, 8B-model MLP shapes +9%, a 32000-vocabulary head's dY W
                  * +20%); 1024 and 2048 in between (bench/NOTES.md, session 7) */

int st_bf16_native(void);

static inline uint16_t f2bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

size_t st_bf16_panels_bytes(size_t K, size_t N) {
    size_t np = (N + NR - 1) / NR, kp = (K + 1) / 2;
    return np * kp * NR * 2 * sizeof(uint16_t);
}

/* Packing goes row by row of W (OC, C), each row read once: from w itself, or filled by a
 * callback (dequantisation) into a per-thread buffer. Rows are split over threads; a thread writes
 * only its rows' slots (disjoint). "wt": row n is column n of B: it lands in panel n / NR, slot
 * n % NR of every pair line q. "w": rows 2q and 2q+1 are B's pair line q: one 64-value line in
 * every panel. Padding (columns past N, the odd K's partner) is written as zeros. */
struct row_src {
    const float *w;      /* whole matrix, or NULL: */
    st_bf16_row_fn fn;   /* fn(ctx, r, buf) fills buf (C floats) with row r */
    void *ctx;
    float *scratch;      /* 2 * C floats per thread */
};

static const float *src_row(const struct row_src *s, size_t r, size_t C, float *buf) {
    if (s->w) return s->w + r * C;
    s->fn(s->ctx, r, buf);
    return buf;
}

#ifdef X86
/* The packings' vector paths (AVX512_BF16 CPUs): vcvtne2ps2bf16 rounds 32 floats to nearest even
 * like f2bf. "wt": a row's pairs q.. q + 15 are the 16 dwords of one conversion (the row's
 * values are consecutive), scattered one per pair line (NR dwords apart); returns the pairs done.
 * The scalar loop did two f2bf and two 16-bit stores per pair: 1.7% of a QLoRA step (tiles are
 * packed every step), and most of a --compute bf16 load. Used row by row only where fewer than
 * 16 rows of scratch per thread are given; else wt_group_avx512. */
__attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl"))) static size_t
wt_row_avx512(uint32_t *d, const float *r, size_t C) {
    const __m512i idx = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(NR));
    size_t q = 0;
    for (; 2 * q + 32 <= C; q += 16) {
        __m512i v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(r + 2 * q + 16),
                                                 _mm512_loadu_ps(r + 2 * q));
        _mm512_i32scatter_epi32(d + q * NR, idx, v, 4);
    }
    return q;
}

/* "w": one pair line of a full panel: columns c of rows r0 and r1 (NULL: zeros) interleaved,
 * (r0[c], r1[c]) for c < NR */
__attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl"))) static void
w_line_avx512(uint16_t *d, const float *r0, const float *r1) {
    const __m512i il = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                        24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
                                        16, 0);
    for (int h = 0; h < NR; h += 16) {
        __m512 a = _mm512_loadu_ps(r0 + h), b = r1 ? _mm512_loadu_ps(r1 + h) : _mm512_setzero_ps();
        __m512i v = (__m512i)_mm512_cvtne2ps_pbh(b, a); /* a's 16 values, then b's */
        _mm512_storeu_si512(d + 2 * h, _mm512_permutexvar_epi16(il, v));
    }
}
#endif

#ifdef X86
/* "wt" for 16 rows at once (rows[i]: row n0 + i of W, NULL past OC; n0 % 16 == 0): each row's
 * pairs q0.. q0 + 15 rounded in one conversion (masked loads: zeros past C, as the odd K's
 * partner), the 16 x 16 block of pairs transposed in registers (tr16), and each pair line's 16
 * slots written with one store (d: line 0's slot n0 % NR; lines NR units apart). The per-row
 * scatters were 2.8% of a QLoRA step on the AMX machine (Intel's scatter stores one element at a
 * time), 9x the "w" packing. */
__attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl"))) static void
wt_group_avx512(uint32_t *d, const float *const rows[16], size_t C, size_t kp) {
    for (size_t q0 = 0; q0 < kp; q0 += 16) {
        size_t k0 = 2 * q0, m = C - k0 < 32 ? C - k0 : 32;
        __mmask16 lo = (__mmask16)(m >= 16 ? 0xffffu : (1u << m) - 1);
        __mmask16 hi = (__mmask16)(m <= 16 ? 0u : m >= 32 ? 0xffffu : (1u << (m - 16)) - 1);
        __m512 a[16], o[16];
        for (int i = 0; i < 16; i++)
            a[i] = rows[i] ? (__m512)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, rows[i] + k0 + 16),
                                                         _mm512_maskz_loadu_ps(lo, rows[i] + k0))
                           : _mm512_setzero_ps();
        tr16(a, o);
        for (size_t j = 0; j < 16 && q0 + j < kp; j++)
            _mm512_storeu_ps((float *)(d + (q0 + j) * NR), o[j]);
    }
}
#endif

/* threads for a packing that reads per rows of scratch per thread when W's rows come from fn */
static int pack_threads(const struct row_src *s, size_t scratch_rows, size_t per) {
    int nt = omp_get_max_threads();
    if (!s->w && (size_t)nt * per > scratch_rows) nt = (int)(scratch_rows / per);
    return nt < 1 ? 1 : nt;
}

static void pack_wt_src(uint16_t *dst, const struct row_src *s, size_t OC, size_t C,
                        size_t scratch_rows) {
    size_t np = (OC + NR - 1) / NR, kp = (C + 1) / 2;
    int native = st_bf16_native();
    (void)native; /* x86 only */
#ifdef X86
    if (native && (s->w || scratch_rows >= 16)) { /* groups of 16 rows */
#pragma omp parallel num_threads(pack_threads(s, scratch_rows, 16))
        {
            float *buf = s->w ? NULL : s->scratch + (size_t)omp_get_thread_num() * 16 * C;
#pragma omp for schedule(static)
            for (size_t g = 0; g < np * NR / 16; g++) {
                const float *rows[16];
                for (size_t i = 0; i < 16; i++)
                    rows[i] = 16 * g + i < OC ? src_row(s, 16 * g + i, C, buf ? buf + i * C : NULL)
                                              : NULL;
                wt_group_avx512((uint32_t *)(dst + (16 * g / NR) * kp * NR * 2) + 16 * g % NR,
                                rows, C, kp);
            }
        }
        return;
    }
#endif
#pragma omp parallel num_threads(pack_threads(s, scratch_rows, 2))
    {
        float *buf = s->w ? NULL : s->scratch + (size_t)omp_get_thread_num() * 2 * C;
#pragma omp for schedule(static)
        for (size_t n = 0; n < np * NR; n++) {
            uint16_t *d = dst + (n / NR) * kp * NR * 2 + (n % NR) * 2;
            if (n >= OC) {
                for (size_t q = 0; q < kp; q++) d[q * NR * 2] = d[q * NR * 2 + 1] = 0;
                continue;
            }
            const float *r = src_row(s, n, C, buf);
            size_t q0 = 0;
#ifdef X86
            if (native) q0 = wt_row_avx512((uint32_t *)d, r, C); /* d: 4-byte aligned */
#endif
            for (size_t q = q0; q < C / 2; q++) {
                d[q * NR * 2] = f2bf(r[2 * q]);
                d[q * NR * 2 + 1] = f2bf(r[2 * q + 1]);
            }
            if (C & 1) {
                d[(kp - 1) * NR * 2] = f2bf(r[C - 1]);
                d[(kp - 1) * NR * 2 + 1] = 0;
            }
        }
    }
}

static void pack_w_src(uint16_t *dst, const struct row_src *s, size_t OC, size_t C,
                       size_t scratch_rows) {
    size_t np = (C + NR - 1) / NR, kp = (OC + 1) / 2;
    int native = st_bf16_native();
    (void)native; /* x86 only */
#pragma omp parallel num_threads(pack_threads(s, scratch_rows, 2))
    {
        float *buf = s->w ? NULL : s->scratch + (size_t)omp_get_thread_num() * 2 * C;
#pragma omp for schedule(static)
        for (size_t q = 0; q < kp; q++) {
            const float *r0 = src_row(s, 2 * q, C, buf), *r1 = NULL;
            if (2 * q + 1 < OC) r1 = src_row(s, 2 * q + 1, C, buf ? buf + C : NULL);
            for (size_t p = 0; p < np; p++) {
                uint16_t *d = dst + (p * kp + q) * NR * 2;
                size_t n0 = p * NR, nn = C - n0 < NR ? C - n0 : NR;
#ifdef X86
                if (native && nn == NR) {
                    w_line_avx512(d, r0 + n0, r1 ? r1 + n0 : NULL);
                    continue;
                }
#endif
                for (size_t c = 0; c < nn; c++) {
                    d[2 * c] = f2bf(r0[n0 + c]);
                    d[2 * c + 1] = r1 ? f2bf(r1[n0 + c]) : 0;
                }
                for (size_t c = nn; c < NR; c++) d[2 * c] = d[2 * c + 1] = 0;
            }
        }
    }
}

void st_bf16_pack_wt(uint16_t *dst, const float *w, size_t OC, size_t C) {
    struct row_src s = {w, NULL, NULL, NULL};
    pack_wt_src(dst, &s, OC, C, 0);
}

void st_bf16_pack_w(uint16_t *dst, const float *w, size_t OC, size_t C) {
    struct row_src s = {w, NULL, NULL, NULL};
    pack_w_src(dst, &s, OC, C, 0);
}

void st_bf16_pack_wt_rows(uint16_t *dst, size_t OC, size_t C, st_bf16_row_fn fn, void *ctx,
                          float *scratch, size_t scratch_rows) {
    struct row_src s = {NULL, fn, ctx, scratch};
    pack_wt_src(dst, &s, OC, C, scratch_rows);
}

void st_bf16_pack_w_rows(uint16_t *dst, size_t OC, size_t C, st_bf16_row_fn fn, void *ctx,
                         float *scratch, size_t scratch_rows) {
    struct row_src s = {NULL, fn, ctx, scratch};
    pack_w_src(dst, &s, OC, C, scratch_rows);
}

/* X is rounded into row tiles of MR rows interleaved by pair: tile t holds, for each pair q,
 * the MR rows' pairs side by side (xp[(t * kp + q) * MR + r]), so the micro-kernel's broadcasts
 * walk one contiguous stream instead of MR rows; rows past M are zero. */
/* On AMX CPUs (st_bf16_amx) X is instead in A tiles: AT rows x AT pairs, 1 KiB each, stored
 * whole (row r, pair q at xp[(r / AT) AT ks + (q / AT) AT AT + (r % AT) AT + q % AT]), ks = kp
 * rounded up to whole tiles, rows rounded up to 2 AT (the kernel's two A tiles), padding zero.
 * A tile load is then one contiguous 1 KiB stream; as rows of the matrix (32 rows 1.5 KiB apart
 * at K = 768) the kernel ran at a third of the speed (the prefetchers do not follow). */
#define AT 16 /* AMX tile: 16 rows of 64 bytes (16 pairs; 16 floats of C) */
static size_t amx_ks(size_t kp) { return (kp + AT - 1) / AT * AT; }
static size_t amx_rows(size_t M) { return (M + 2 * AT - 1) / (2 * AT) * (2 * AT); }

size_t st_bf16_x_bytes(size_t M, size_t K) {
    size_t kp = (K + 1) / 2;
    if (st_bf16_amx()) return amx_rows(M) * amx_ks(kp) * sizeof(uint32_t);
    return (M + MR - 1) / MR * MR * kp * sizeof(uint32_t);
}

size_t st_bf16_x_rows(size_t bytes, size_t K) {
    size_t kp = (K + 1) / 2, unit = st_bf16_amx() ? 2 * AT : MR;
    size_t per = st_bf16_amx() ? amx_ks(kp) : kp; /* pairs per row */
    size_t rows = bytes / ((per ? per : 1) * sizeof(uint32_t));
    return rows - rows % unit;
}

#ifdef X86
/* pairs [q0, q0 + n) of a row of K floats, with vcvtne2ps2bf16 (round to nearest even, as f2bf)
 * for whole groups of 16 pairs, of sc exp(x - lse) instead of x when ce; returns how many were
 * done */
__attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl"))) static size_t
pairs_avx512(uint32_t *d, const float *r, size_t q0, size_t n, size_t K, float lse, float sc,
             int ce) {
    size_t q = 0;
    for (; q + 16 <= n && 2 * (q0 + q) + 32 <= K; q += 16) {
        __m512 lo = _mm512_loadu_ps(r + 2 * (q0 + q)), hi = _mm512_loadu_ps(r + 2 * (q0 + q) + 16);
        if (ce) { /* sc exp(x - lse), as tile_avx512 */
            __m512 l = _mm512_set1_ps(lse), c = _mm512_set1_ps(sc);
            lo = _mm512_mul_ps(c, fexp16(_mm512_sub_ps(lo, l)));
            hi = _mm512_mul_ps(c, fexp16(_mm512_sub_ps(hi, l)));
        }
        /* cvtne2ps_pbh(a, b): b's 16 values in the low half, a's in the high half */
        _mm512_storeu_si512(d + q, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
    return q;
}
#endif

#define XQ 256 /* pairs per interleaving chunk */

#ifdef X86
/* A whole tile of 8 rows, pairs [0, 8 * (K / 16)): each row's 16 floats become 8 pairs in a ymm
 * (vcvtne2ps2bf16), and the 8 x 8 block of pairs is transposed in registers (the classic
 * unpack / shuffle / permute2f128 transpose) into the interleaved layout. With lse (not NULL):
 * row i's values are sc[i] exp(x - lse[i]), and 0 when sc[i] is 0. Returns the pairs done. */
__attribute__((target("avx512f,avx512bf16,avx512vl"))) static size_t
tile_avx512(uint32_t *d, const float *x, size_t ldx, size_t K, const float *lse,
            const float *sc) {
    size_t q = 0;
    for (; 2 * q + 16 <= K; q += 8) {
        __m256 r[8], t[8], u[8];
        for (int i = 0; i < 8; i++) {
            const float *src = x + (size_t)i * ldx + 2 * q;
            if (lse && sc[i] == 0)
                r[i] = _mm256_setzero_ps();
            else if (lse) /* the row's 16 values of sc exp(x - lse) (cvtneps: the same pairs) */
                r[i] = (__m256)_mm512_cvtneps_pbh(_mm512_mul_ps(
                    _mm512_set1_ps(sc[i]),
                    fexp16(_mm512_sub_ps(_mm512_loadu_ps(src), _mm512_set1_ps(lse[i])))));
            else
                r[i] = (__m256)_mm256_cvtne2ps_pbh(_mm256_loadu_ps(src + 8), _mm256_loadu_ps(src));
        }
        for (int i = 0; i < 8; i += 2) {
            t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int i = 0; i < 8; i += 4) {
            u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
            u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
            u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
            u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
        }
        uint32_t *o = d + q * MR;
        for (int i = 0; i < 4; i++) {
            _mm256_storeu_ps((float *)(o + i * MR), _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
            _mm256_storeu_ps((float *)(o + (i + 4) * MR), _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
        }
    }
    return q;
}
#endif

/* row m's lse (its loss plus its target's logit) and scale (dloss, or 0 for a target < 0) */
static void ce_row(const struct st_ce_rows *ce, const float *row, size_t m, float *lse, float *sc) {
    int32_t t = ce->targets[m];
    *lse = t < 0 ? 0.0f : ce->loss[m] + row[(ptrdiff_t)t - (ptrdiff_t)ce->col0];
    *sc = t < 0 ? 0.0f : ce->dloss;
}

/* row m's target as a column of the slice x (K columns from ce->col0), or -1 outside it */
static ptrdiff_t ce_col(const struct st_ce_rows *ce, size_t m, size_t K) {
    ptrdiff_t t = (ptrdiff_t)ce->targets[m] - (ptrdiff_t)ce->col0;
    return ce->targets[m] < 0 || t < 0 || t >= (ptrdiff_t)K ? -1 : t;
}

/* pairs [q0, q0 + qn) of a row of K floats (of sc exp(x - lse) when ce) into d[0..qn) */
static void row_pairs(uint32_t *d, const float *row, size_t q0, size_t qn, size_t K, float lse,
                      float sc, int ce, int native) {
    size_t q = 0;
#ifdef X86
    if (native) q = pairs_avx512(d, row, q0, qn, K, lse, sc, ce);
#endif
    (void)native;
    for (; q < qn; q++) {
        size_t k = 2 * (q0 + q);
        float a = row[k], b = k + 1 < K ? row[k + 1] : 0.0f;
        if (ce) a = sc * fexp(a - lse), b = sc * fexp(b - lse);
        uint16_t lo = f2bf(a), hi = k + 1 < K ? f2bf(b) : 0;
        d[q] = (uint32_t)lo | (uint32_t)hi << 16;
    }
}

/* the target tg's half of its pair u: sc (exp(x - lse) - 1) */
static void ce_target(uint32_t *u, ptrdiff_t tg, const float *row, float lse, float sc) {
    uint16_t v = f2bf(sc * (fexp(row[tg] - lse) - 1.0f));
    *u = tg % 2 ? (*u & 0xffffu) | (uint32_t)v << 16 : (*u & 0xffff0000u) | v;
}

/* st_bf16_pack_x, of the rows of x or (ce) of the rows sc exp(x - lse): rows with sc 0 (ignored
 * targets) are zero without any exp, as rows past M */
static void pack_x_amx(uint32_t *xp, const float *x, size_t M, size_t K, size_t ldx,
                       const struct st_ce_rows *ce) {
    size_t kp = (K + 1) / 2, ks = amx_ks(kp), mp = amx_rows(M);
#pragma omp parallel for schedule(static) if (M * K > 16384)
    for (size_t m = 0; m < mp; m++) {
        uint32_t *d = xp + m / AT * AT * ks + m % AT * AT; /* pair q at d[q / AT AT AT + q % AT] */
        float lse = 0, sc = 0;
        if (ce && m < M) ce_row(ce, x + m * ldx, m, &lse, &sc);
        int zero = m >= M || (ce && sc == 0);
        for (size_t q = 0; q < ks; q += AT) { /* one tile row: 16 pairs, straight into place */
            uint32_t *t = d + q * AT;
            size_t qv = zero || q >= kp ? 0 : kp - q < AT ? kp - q : AT;
            row_pairs(t, x + m * ldx, q, qv, K, lse, sc, ce != NULL, 1);
            memset(t + qv, 0, (AT - qv) * sizeof(uint32_t));
        }
        ptrdiff_t tg = ce && !zero ? ce_col(ce, m, K) : -1;
        if (tg >= 0)
            ce_target(d + (size_t)tg / 2 / AT * AT * AT + (size_t)tg / 2 % AT, tg, x + m * ldx, lse,
                      sc);
    }
}

static void pack_x(uint32_t *xp, const float *x, size_t M, size_t K, size_t ldx,
                   const struct st_ce_rows *ce) {
    if (st_bf16_amx()) {
        pack_x_amx(xp, x, M, K, ldx, ce);
        return;
    }
    size_t kp = (K + 1) / 2, nt = (M + MR - 1) / MR;
    int native = st_bf16_native();
#pragma omp parallel for schedule(static) if (M * K > 16384)
    for (size_t t = 0; t < nt; t++) {
        uint32_t tmp[MR][XQ];
        float lse[MR] = {0}, sc[MR] = {0};
        for (size_t r = 0; ce && r < MR && t * MR + r < M; r++)
            ce_row(ce, x + (t * MR + r) * ldx, t * MR + r, &lse[r], &sc[r]);
        size_t qfast = 0; /* pairs done in registers (whole tiles, whole groups of 8 pairs) */
#ifdef X86
        if (native && t * MR + MR <= M)
            qfast = tile_avx512(xp + t * kp * MR, x + t * MR * ldx, ldx, K, ce ? lse : NULL, sc);
#endif
        for (size_t q0 = qfast; q0 < kp; q0 += XQ) {
            size_t qn = kp - q0 < XQ ? kp - q0 : XQ;
            for (size_t r = 0; r < MR; r++) {
                size_t m = t * MR + r;
                if (m >= M || (ce && sc[r] == 0)) {
                    memset(tmp[r], 0, qn * sizeof(uint32_t));
                    continue;
                }
                row_pairs(tmp[r], x + m * ldx, q0, qn, K, lse[r], sc[r], ce != NULL, native);
            }
            uint32_t *d = xp + (t * kp + q0) * MR;
            for (size_t q = 0; q < qn; q++)
                for (size_t r = 0; r < MR; r++) d[q * MR + r] = tmp[r][q];
        }
        /* each target's entry: sc (exp(x - lse) - 1) */
        for (size_t r = 0; ce && r < MR && t * MR + r < M; r++) {
            ptrdiff_t tg = ce_col(ce, t * MR + r, K);
            if (tg >= 0)
                ce_target(xp + (t * kp + (size_t)tg / 2) * MR + r, tg,
                          x + (t * MR + r) * ldx, lse[r], sc[r]);
        }
    }
    (void)native;
}

void st_bf16_pack_x(uint32_t *xp, const float *x, size_t M, size_t K, size_t ldx) {
    pack_x(xp, x, M, K, ldx, NULL);
}

void st_bf16_pack_ce_grad(uint32_t *xp, const float *logits, const struct st_ce_rows *ce, size_t M,
                          size_t K, size_t ldx) {
    pack_x(xp, logits, M, K, ldx, ce);
}

/* Portable micro-kernel: c (mr, nr valid of NR) = init + xp rows @ panel block, or += when init
 * is NULL (init: NR floats, the starting value of every row: zeros or the bias). */
static void kernel_generic(float *c, size_t ldc, const uint32_t *xp, const uint16_t *bp,
                           size_t nq, size_t mr, size_t nr,
                           const float *init) {
    for (size_t r = 0; r < mr; r++)
        if (init) memcpy(c + r * ldc, init, nr * sizeof(float));
    for (size_t r = 0; r < mr; r++)
        for (size_t q = 0; q < nq; q++) {
            uint32_t pr = xp[q * MR + r];
            float x0 = bf2f((uint16_t)pr), x1 = bf2f((uint16_t)(pr >> 16));
            const uint16_t *b = bp + q * NR * 2;
            for (size_t n = 0; n < nr; n++) c[r * ldc + n] += x0 * bf2f(b[2 * n]) + x1 * bf2f(b[2 * n + 1]);
        }
}

#ifdef X86
#define BF16_TARGET __attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl,prfchw")))
/* The tile's k loop over nq pairs for R rows (R constant at each call: the 2 R accumulators stay
 * in registers from the loads of c (or init) to the stores, with no stack copies between). */
#define TILE_BODY(R)                                                                              \
    do {                                                                                          \
        __m512 acc[R][2];                                                                         \
        _Pragma("GCC unroll 8") for (int r = 0; r < (R); r++) {                                   \
            const float *src = init ? init : c + r * ldc;                                         \
            acc[r][0] = _mm512_maskz_loadu_ps(m0, src);                                           \
            acc[r][1] = _mm512_maskz_loadu_ps(m1, src + 16);                                      \
        }                                                                                         \
        for (size_t q = 0; q < nq; q++) {                                                         \
            __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + q * NR * 2);                          \
            __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + q * NR * 2 + 32);                     \
            _Pragma("GCC unroll 8") for (int r = 0; r < (R); r++) {                               \
                __m512bh a = (__m512bh)_mm512_set1_epi32((int)xp[q * MR + r]);                    \
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);                                   \
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);                                   \
            }                                                                                     \
        }                                                                                         \
        for (size_t j = 0; lw && j < lr; j++) { /* the low-rank term, on the last k block */      \
            __m512 w0 = _mm512_load_ps(lw + j * NR), w1 = _mm512_load_ps(lw + j * NR + 16);       \
            _Pragma("GCC unroll 8") for (int r = 0; r < (R); r++) {                               \
                __m512 xv = _mm512_set1_ps(lx[r * lr + j]);                                       \
                acc[r][0] = _mm512_fmadd_ps(xv, w0, acc[r][0]);                                   \
                acc[r][1] = _mm512_fmadd_ps(xv, w1, acc[r][1]);                                   \
            }                                                                                     \
        }                                                                                         \
        _Pragma("GCC unroll 8") for (int r = 0; r < (R); r++) {                                   \
            _mm512_mask_storeu_ps(c + r * ldc, m0, acc[r][0]);                                    \
            _mm512_mask_storeu_ps(c + r * ldc + 16, m1, acc[r][1]);                               \
        }                                                                                         \
    } while (0)

/* nt full tiles, one after another down the rows (X tiles xts units apart). lw (NULL: none):
 * the low-rank term's W for the panel (lr rows of NR floats, scaled), lx its x rows (lr each).
 * Inlined into two kernels, with lw NULL at compile time and without: the low-rank loop in the
 * plain GEMM's kernel cost it 1-2%. */
BF16_TARGET static inline __attribute__((always_inline)) void
full_tiles(float *c, size_t ldc, const uint32_t *xp, size_t xts, size_t nt, const uint16_t *bp,
           size_t nq, __mmask16 m0, __mmask16 m1, const float *init, const float *lw,
           const float *lx, size_t lr) {
    for (size_t t = 0; t < nt; t++, c += MR * ldc, xp += xts) {
        if (t + 1 < nt) /* the next tile's rows of c, for writing: their misses overlap this
                         * tile's k loop instead of stalling its stores (or its loads) */
            for (int r = 0; r < MR; r++) {
                __builtin_prefetch(c + (MR + r) * ldc, 1, 3);
                __builtin_prefetch(c + (MR + r) * ldc + 16, 1, 3);
            }
        TILE_BODY(MR);
        if (lw) lx += MR * lr; /* (lx is NULL without the term) */
    }
}
BF16_TARGET static void kernel_avx512_full(float *c, size_t ldc, const uint32_t *xp, size_t xts,
                                           size_t nt, const uint16_t *bp, size_t nq,
                                           __mmask16 m0, __mmask16 m1, const float *init) {
    full_tiles(c, ldc, xp, xts, nt, bp, nq, m0, m1, init, NULL, NULL, 0);
}
BF16_TARGET static void kernel_avx512_full_lr(float *c, size_t ldc, const uint32_t *xp,
                                              size_t xts, size_t nt, const uint16_t *bp,
                                              size_t nq, __mmask16 m0, __mmask16 m1,
                                              const float *init, const float *lw, const float *lx,
                                              size_t lr) {
    full_tiles(c, ldc, xp, xts, nt, bp, nq, m0, m1, init, lw, lx, lr);
}

/* 1..MR - 1 rows: one case per row count, so that each keeps its accumulators in registers */
BF16_TARGET static void kernel_avx512_part(float *c, size_t ldc, const uint32_t *xp,
                                           const uint16_t *bp, size_t nq, size_t mr,
                                           __mmask16 m0, __mmask16 m1, const float *init,
                                           const float *lw, const float *lx, size_t lr) {
    GEMM_PARTIAL_ROWS(mr, TILE_BODY)
}

/* rows rows of c (X tiles xts units apart) */
BF16_TARGET static void kernel_avx512(float *c, size_t ldc, const uint32_t *xp, size_t xts,
                                      const uint16_t *bp, size_t nq, size_t rows, size_t nr,
                                      const float *init, const float *lw, const float *lx,
                                      size_t lr) {
    /* valid columns of the panel's two 16-float halves */
    __mmask16 m0 = (__mmask16)(nr >= 16 ? 0xffffu : (1u << nr) - 1);
    __mmask16 m1 = (__mmask16)(nr <= 16 ? 0u : nr >= 32 ? 0xffffu : (1u << (nr - 16)) - 1);
    size_t nt = rows / MR;
    if (nt && lw)
        kernel_avx512_full_lr(c, ldc, xp, xts, nt, bp, nq, m0, m1, init, lw, lx, lr);
    else if (nt)
        kernel_avx512_full(c, ldc, xp, xts, nt, bp, nq, m0, m1, init);
    if (rows % MR)
        kernel_avx512_part(c + nt * MR * ldc, ldc, xp + nt * xts, bp, nq, rows % MR, m0, m1,
                           init, lw, lw ? lx + nt * MR * lr : NULL, lr);
}
#endif

#ifdef X86
/* AMX-BF16 (Sapphire Rapids and later). Eight tiles: C as 2 x 2 tiles of 16 x 16 floats (32
 * rows x the panel's 32 columns), two A tiles (16 rows x 16 pairs of X, row-major, stride ks)
 * and two B tiles (16 pair lines x 16 columns: the panel's lines are 32 columns' pairs, 128 bytes
 * apart, so the left and right halves are B tiles as packed). tdpbf16ps adds, for each output,
 * 16 pairs' products in float (denormals flushed, as AVX512_BF16 does not): the same terms as the
 * other kernels, summed in another order. */
#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl")))
#include "amx.h" /* TILE_LOAD: behind a compiler barrier (ib, bt and cb are filled just before) */

/* c (rows x nr; stride ldc) = init + X rows @ the panel's pairs [0, nq), or += when init is NULL;
 * xa: the first A tile (st_bf16_x_bytes's layout, rows zero-padded to whole pairs of tiles), bp:
 * the panel's first pair line. A block's pairs after the last whole tile (only on the last k
 * block: the blocks start on tiles) come from a zero-padded copy of the panel's last lines, X being
 * zero past kp. lw: the low-rank term (tiles()), added after the tiles are stored. */
AMX_TARGET static void amx_tiles(float *c, size_t ldc, const uint32_t *xa, size_t ks, size_t rows,
                                 const uint16_t *bp, size_t nq, size_t nr, const float *init,
                                 const float *lw, const float *lx, size_t lr) {
    amx_config_16x64();
    _Alignas(64) uint16_t bt[AT * NR * 2];  /* the last partial tile of pair lines */
    _Alignas(64) float cb[2 * AT][NR];      /* C of a partial tile block */
    _Alignas(64) float ib[AT][NR];          /* init in every row */
    size_t nfull = nq / AT * AT, ntail = nq - nfull;
    if (ntail) {
        memcpy(bt, bp + nfull * NR * 2, ntail * NR * 2 * sizeof(uint16_t));
        memset(bt + ntail * NR * 2, 0, (AT - ntail) * NR * 2 * sizeof(uint16_t));
    }
    for (size_t r = 0; init && r < AT; r++) memcpy(ib[r], init, NR * sizeof(float));
    for (size_t m = 0; m < rows; m += 2 * AT) {
        size_t mr = rows - m < 2 * AT ? rows - m : 2 * AT;
        float *cm = c + m * ldc, *cs = cm;
        size_t lds = ldc;
        int two = mr > AT, direct = mr == 2 * AT && nr == NR;
        if (!direct) { /* stage C through cb */
            cs = &cb[0][0], lds = NR;
            for (size_t r = 0; r < 2 * AT; r++)
                for (size_t n = 0; n < NR; n++)
                    cb[r][n] = r < mr && n < nr ? (init ? init[n] : cm[r * ldc + n]) : 0.0f;
        }
        if (init && direct) {
            TILE_LOAD(0, ib[0], NR * 4);
            TILE_LOAD(1, ib[0] + AT, NR * 4);
            TILE_LOAD(2, ib[0], NR * 4);
            TILE_LOAD(3, ib[0] + AT, NR * 4);
        } else {
            TILE_LOAD(0, cs, lds * 4);
            TILE_LOAD(1, cs + AT, lds * 4);
            TILE_LOAD(2, cs + AT * lds, lds * 4);
            TILE_LOAD(3, cs + AT * lds + AT, lds * 4);
        }
        const uint32_t *a = xa + m * ks;
        for (size_t q = 0; two && q < nq; q += AT) {
            const uint16_t *b = q < nfull ? bp + q * NR * 2 : bt;
            if (q + AT < nfull) { /* the next step's tiles into L1: +5-10% at 2048-row shapes */
                const char *pa = (const char *)(a + (q + AT) * AT), *pb = (const char *)(b + AT * NR * 2);
                for (int l = 0; l < AT; l++) {
                    _mm_prefetch(pa + 64 * l, _MM_HINT_T0);
                    _mm_prefetch(pa + AT * ks * 4 + 64 * l, _MM_HINT_T0);
                    _mm_prefetch(pb + 128 * l, _MM_HINT_T0);
                    _mm_prefetch(pb + 128 * l + 64, _MM_HINT_T0);
                }
            }
            TILE_LOAD(4, a + q * AT, AT * 4);
            TILE_LOAD(6, b, NR * 4);
            _tile_dpbf16ps(0, 4, 6);
            TILE_LOAD(7, b + NR, NR * 4);
            _tile_dpbf16ps(1, 4, 7);
            TILE_LOAD(5, a + AT * ks + q * AT, AT * 4);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        for (size_t q = 0; !two && q < nq; q += AT) {
            const uint16_t *b = q < nfull ? bp + q * NR * 2 : bt;
            TILE_LOAD(4, a + q * AT, AT * 4);
            TILE_LOAD(6, b, NR * 4);
            _tile_dpbf16ps(0, 4, 6);
            TILE_LOAD(7, b + NR, NR * 4);
            _tile_dpbf16ps(1, 4, 7);
        }
        _tile_stored(0, cs, lds * 4);
        _tile_stored(1, cs + AT, lds * 4);
        if (two || direct) {
            _tile_stored(2, cs + AT * lds, lds * 4);
            _tile_stored(3, cs + AT * lds + AT, lds * 4);
        }
        if (!direct)
            for (size_t r = 0; r < mr; r++) memcpy(cm + r * ldc, cb[r], nr * sizeof(float));
        /* the low-rank term: c[r][n] += sum_j lx[r][j] lw[j][n] */
        __mmask16 k0 = (__mmask16)(nr >= 16 ? 0xffffu : (1u << nr) - 1);
        __mmask16 k1 = (__mmask16)(nr <= 16 ? 0u : nr >= 32 ? 0xffffu : (1u << (nr - 16)) - 1);
        for (size_t r = 0; lw && r < mr; r++) {
            float *o = cm + r * ldc;
            __m512 s0 = _mm512_maskz_loadu_ps(k0, o), s1 = _mm512_maskz_loadu_ps(k1, o + 16);
            for (size_t j = 0; j < lr; j++) {
                __m512 xv = _mm512_set1_ps(lx[(m + r) * lr + j]);
                s0 = _mm512_fmadd_ps(xv, _mm512_load_ps(lw + j * NR), s0);
                s1 = _mm512_fmadd_ps(xv, _mm512_load_ps(lw + j * NR + 16), s1);
            }
            _mm512_mask_storeu_ps(o, k0, s0);
            _mm512_mask_storeu_ps(o + 16, k1, s1);
        }
    }
    _tile_release();
}
#endif

#ifdef A64
/* One strip (gemm_neon.h) of the tile: columns [0, nc) (nc <= 8) of c and init, bp pointing at
 * the strip's first column pair; rows past mr are zeros in xp (computed, never stored). The
 * target is arch=armv8.2-a+bf16, not "+bf16": GCC 12's BF16 intrinsics are built for
 * armv8.2-a+bf16 and inline only into a function whose target includes all of it. */
__attribute__((target("arch=armv8.2-a+bf16"))) static void
strip_bfdot(float *c, size_t ldc, const uint32_t *xp, const uint16_t *bp, size_t nq, size_t mr,
            size_t nc, const float *init) {
    float t[MR][STRIP_NC];
    float32x4_t acc[MR][2];
    strip_stage_in(t, c, ldc, mr, nc, init);
    STRIP_EACH_ROW(STRIP_LOAD);
    for (size_t q = 0; q < nq; q++) {
        const uint16_t *b = bp + q * NR * 2;
        bfloat16x8_t b0 = vreinterpretq_bf16_u16(vld1q_u16(b));
        bfloat16x8_t b1 = vreinterpretq_bf16_u16(vld1q_u16(b + 8));
        bfloat16x8_t x03 = vreinterpretq_bf16_u32(vld1q_u32(xp + q * MR));
        bfloat16x8_t x47 = vreinterpretq_bf16_u32(vld1q_u32(xp + q * MR + 4));
        /* lane r & 3 of x03 (rows 0-3) or x47 (rows 4-7): row r's pair */
#define DOT(r)                                                                                     \
    (acc[r][0] = vbfdotq_laneq_f32(acc[r][0], b0, (r) < 4 ? x03 : x47, (r) & 3),                   \
     acc[r][1] = vbfdotq_laneq_f32(acc[r][1], b1, (r) < 4 ? x03 : x47, (r) & 3))
        STRIP_EACH_ROW(DOT);
#undef DOT
    }
    STRIP_EACH_ROW(STRIP_STORE);
    strip_stage_out(c, ldc, t, mr, nc);
}

/* BFDOT micro-kernel: the contract of kernel_generic, strip by strip (strips wholly past nr are
 * skipped). */
static void kernel_bfdot(float *c, size_t ldc, const uint32_t *xp, const uint16_t *bp, size_t nq,
                         size_t mr, size_t nr, const float *init) {
    for (size_t s = 0; s < nr; s += STRIP_NC)
        strip_bfdot(c + s, ldc, xp, bp + s * 2, nq, mr, nr - s < STRIP_NC ? nr - s : STRIP_NC,
                    init ? init + s : NULL);
}
#endif

int st_bf16_native(void) {
#ifdef X86
    static int v = -1;
    if (v < 0) {
        __builtin_cpu_init();
        v = !st_env_flag("ST_NO_AVX512BF16") && __builtin_cpu_supports("avx512bf16") &&
            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    }
    return v;
#elif defined(A64)
    static int v = -1;
    if (v < 0) v = !st_env_flag("ST_NO_NEON") && (getauxval(AT_HWCAP2) & HWCAP2_BF16) != 0;
    return v;
#else
    return 0;
#endif
}

#ifdef X86
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
/* AMX-TILE and AMX-BF16 (CPUID.7.0:EDX bits 24, 22), the tile state enabled by the OS (XCR0
 * bits 17, 18), and Linux's permission for this process to use it (arch_prctl
 * ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, process-wide) */
static int amx_usable(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 22)))
        return 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0; /* OSXSAVE */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return 0;
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
}
#endif

static size_t amx_kc(void);

int st_bf16_amx(void) {
#ifdef X86
    static int v = -1;
    if (v < 0) {
        (void)amx_kc(); /* its cached setting too, on this (the first, single) call */
        v = st_bf16_native() && !st_env_flag("ST_NO_AMX") && amx_usable();
    }
    return v;
#else
    return 0;
#endif
}

const char *st_bf16_kernel_name(void) {
    if (!st_bf16_native()) return "portable";
    if (st_bf16_amx()) return "AMX-BF16";
#ifdef A64
    return "AArch64 BFDOT";
#else
    return "AVX512_BF16";
#endif
}

void st_bf16_gemm(float *out, size_t ldo, const float *x, size_t ldx, const uint16_t *panels,
                  const float *bias, size_t M, size_t K, size_t N, int accumulate,
                  uint32_t *xscratch) {
    st_bf16_pack_x(xscratch, x, M, K, ldx);
    st_bf16_gemm_px(out, ldo, xscratch, panels, bias, M, K, N, accumulate);
}

/* pairs per k block on AMX (ST_AMX_KC: for measuring) */
static size_t amx_kc(void) {
    static size_t v = 0;
    if (!v) {
        const char *e = getenv("ST_AMX_KC");
        v = e && atoi(e) >= AT ? (size_t)atoi(e) : 16384;
    }
    return v;
}

struct bf16_args {
    const uint32_t *xp;
    const uint16_t *panels;
    size_t kp;       /* X's pairs (the k slice's) */
    size_t pkp, pq0; /* the panels' pairs per panel, and the slice's first pair in them */
    int native, amx;
    const struct st_lowrank *lr;
    const float *lw; /* NULL, or every panel's lowrank_w (panel p at p r NR) */
};

/* The low-rank term's W for panel p: wt[j NR + n] = s W(p NR + n, j), zero past nr */
static void lowrank_w(float *wt, const struct st_lowrank *lr, size_t p, size_t nr) {
    for (size_t j = 0; j < lr->r; j++)
        for (size_t n = 0; n < NR; n++)
            wt[j * NR + n] = n < nr ? lr->s * lr->w[(p * NR + n) * lr->wn + j * lr->wj] : 0.0f;
}

/* The tiles of rows [m0, m1) of panel p, k pairs [q0, q0 + nq); lw (NULL: none): the low-rank
 * term's W for the panel (lowrank_w), added on this, the last, k block. The AVX-512 kernel adds
 * it to its accumulators rank by rank; the others add each element's sum over the ranks after
 * the tile (the same terms, summed in another order). */
static void tiles(const struct bf16_args *g, float *c, size_t ldc, size_t m0, size_t m1,
                  size_t q0, size_t nq, size_t p, size_t nr, const float *init, const float *lw) {
    const uint32_t *xp = g->xp + m0 * g->kp + q0 * MR; /* X tiles MR * kp units apart */
    const uint16_t *bp = g->panels + (p * g->pkp + g->pq0 + q0) * NR * 2;
    const struct st_lowrank *lr = lw ? g->lr : NULL;
#ifdef X86
    if (g->amx) {
        size_t ks = amx_ks(g->kp);
        amx_tiles(c, ldc, g->xp + m0 * ks + q0 * AT, ks, m1 - m0, bp, nq, nr, init, lw,
                  lr ? lr->x + m0 * lr->r : NULL, lr ? lr->r : 0);
        return;
    }
    if (g->native) {
        kernel_avx512(c, ldc, xp, MR * g->kp, bp, nq, m1 - m0, nr, init, lw,
                      lr ? lr->x + m0 * lr->r : NULL, lr ? lr->r : 0);
        return;
    }
#endif
    float *c0 = c;
    for (size_t m = m0; m < m1; m += MR, c += MR * ldc, xp += MR * g->kp) {
        size_t mr = m1 - m < MR ? m1 - m : MR;
#ifdef A64
        if (g->native) {
            kernel_bfdot(c, ldc, xp, bp, nq, mr, nr, init);
            continue;
        }
#endif
        kernel_generic(c, ldc, xp, bp, nq, mr, nr, init);
    }
    for (size_t m = m0; lr && m < m1; m++) /* the low-rank term after the tiles */
        for (size_t n = 0; n < nr; n++) {
            float t = 0;
            for (size_t j = 0; j < lr->r; j++) t += lr->x[m * lr->r + j] * lw[j * NR + n];
            c0[(m - m0) * ldc + n] += t;
        }
}

/* tiles with the low-rank term's W in a stack tile (16 KiB, only here) */
static void tiles_lr(const struct bf16_args *g, float *c, size_t ldc, size_t m0, size_t m1,
                     size_t q0, size_t nq, size_t p, size_t nr, const float *init) {
    _Alignas(64) float wt[ST_LOWRANK_MAX * NR];
    lowrank_w(wt, g->lr, p, nr);
    tiles(g, c, ldc, m0, m1, q0, nq, p, nr, init, wt);
}

static void bf16_tile(const void *ctx, float *c, size_t ldc, size_t m0, size_t m1, size_t q0,
                      size_t nq, size_t p, size_t nr, const float *init) {
    const struct bf16_args *g = ctx;
    if (g->lr && q0 + nq >= g->kp && g->lw) /* the last k block */
        tiles(g, c, ldc, m0, m1, q0, nq, p, nr, init, g->lw + p * g->lr->r * NR);
    else if (g->lr && q0 + nq >= g->kp)
        tiles_lr(g, c, ldc, m0, m1, q0, nq, p, nr, init);
    else
        tiles(g, c, ldc, m0, m1, q0, nq, p, nr, init, NULL);
}

void st_bf16_gemm_px(float *out, size_t ldo, const uint32_t *xscratch, const uint16_t *panels,
                     const float *bias, size_t M, size_t K, size_t N, int accumulate) {
    st_bf16_gemm_px_lr(out, ldo, xscratch, panels, bias, M, K, N, accumulate, NULL);
}

/* out (+)= X (M, K) @ the panels' k rows [k0, k0 + K) (panels of Kp rows; k0 even, and K even
 * unless k0 + K == Kp); xscratch: X's K columns */
static void gemm_slice(float *out, size_t ldo, const uint32_t *xscratch, const uint16_t *panels,
                       size_t Kp, size_t k0, const float *bias, size_t M, size_t K, size_t N,
                       int accumulate, const struct st_lowrank *lr) {
    ST_ASSERT(!lr || lr->r <= ST_LOWRANK_MAX);
    ST_ASSERT(k0 % 2 == 0 && k0 + K <= Kp && (K % 2 == 0 || k0 + K == Kp));
    struct bf16_args g = {xscratch, panels, (K + 1) / 2, (Kp + 1) / 2, k0 / 2, st_bf16_native(),
                          st_bf16_amx(), lr && lr->r > 0 ? lr : NULL, NULL};
    /* the low-rank W tiles once per call, not per row block and panel (the scalar lowrank_w was
     * 0.4% of a training step); without the memory, each tile block builds its own */
    size_t np = (N + NR - 1) / NR;
    void *raw = g.lr ? st_malloc(np * g.lr->r * NR * sizeof(float) + 64) : NULL;
    /* 64-byte aligned, as the stack tile: the kernel loads W with aligned loads */
    float *lw = raw ? (float *)(((uintptr_t)raw + 63) & ~(uintptr_t)63) : NULL;
    for (size_t p = 0; lw && p < np; p++)
        lowrank_w(lw + p * g.lr->r * NR, g.lr, p, N - p * NR < NR ? N - p * NR : NR);
    g.lw = lw;
    /* rows per block: GEMM_MC, or up to 512 when the panels are big (an LM head: 49 MB of BF16
     * for 32000 x 768), so that they stream from memory once per 512 rows, not per 128 */
    size_t mc = N * g.kp * 4 >= ((size_t)16 << 20) ? 512 : GEMM_MC;
    /* AMX: blocks of 1024 rows (A, up to 1.5 MiB at K = 768, stays in a 2 MiB L2): interleaved
     * runs at 2048 x 768 x 2048, 2 threads, medians of 5: 726 (128 rows), 903 (512), 928 (1024),
     * 838 (2048) GFLOP/s; 2048 x 2048 x 768: 598, 605, 615, 620 */
    if (g.amx) mc = 1024;
    size_t kc = gemm_kc(g.kp, KC);
    if (g.amx) kc = amx_ks(gemm_kc(g.kp, amx_kc())); /* blocks start on whole tiles */
    gemm_drive(out, ldo, bias, M, g.kp, N, kc, mc, accumulate, bf16_tile, &g);
    st_free(raw);
}

void st_bf16_gemm_px_lr(float *out, size_t ldo, const uint32_t *xscratch, const uint16_t *panels,
                        const float *bias, size_t M, size_t K, size_t N, int accumulate,
                        const struct st_lowrank *lr) {
    gemm_slice(out, ldo, xscratch, panels, K, 0, bias, M, K, N, accumulate, lr);
}

void st_bf16_gemm_px_k(float *out, size_t ldo, const uint32_t *xscratch, const uint16_t *panels,
                       size_t Kp, size_t k0, size_t M, size_t K, size_t N, int accumulate) {
    gemm_slice(out, ldo, xscratch, panels, Kp, k0, NULL, M, K, N, accumulate, NULL);
}
