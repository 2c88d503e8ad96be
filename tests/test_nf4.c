/* test_nf4.c: NF4 quantisation (include/streamtune/nf4.h) against the float64 bitsandbytes
 * reference in tools/nf4_reference.py (golden tests/golden/nf4/nf4_golden.safetensors), and the NF4
 * matmul against float64 loops over the dequantised weights.
 * - Code table: the 16 values of FACTS.md A.5, bit for bit.
 * - Quantise: codes (packed bytes) identical, absmax identical, dequantised values identical, and
 *   the round-trip error statistics (mse, max, mean |err|) equal to the reference's to 1e-12 rel.
 * - Ties (values exactly on a midpoint take the lower code), an all-zero block, a ragged odd tail.
 * - Nibble order: a hand-made pair whose high/low swap decodes different values.
 * - Double quantisation: dynamic map, q, nested absmax, offset, reconstruction identical.
 * - Matmul forward/backward vs float64 (1e-5 relative to max(1, max|ref|)); odd N and OC; backward
 *   also vs central finite differences in float64 of the dequantised-weight linear map. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "streamtune/core.h"
#include "streamtune/f32.h"
#include "streamtune/formats.h"
#include "streamtune/nf4.h"
#include "streamtune/quant.h"
#include "streamtune/bf16.h"

static double bf16r(float f) { return st_bf16_to_f32(st_f32_to_bf16(f)); }

#define GOLDEN ST_SOURCE_DIR "/tests/golden/nf4/nf4_golden.safetensors"
#define MM_TOL 1e-5
#define STAT_TOL 1e-12

static struct st_safetensors *golden;

static void *g_copies[256];
static int g_ncopies;
static const void *gt(const char *name, enum st_dtype dt, size_t *n) {
    const struct st_tensor_view *t = st_safetensors_find(golden, name);
    if (!t || t->dtype != dt) {
        fprintf(stderr, "golden tensor %s missing or wrong dtype\n", name);
        abort();
    }
    *n = (size_t)st_tensor_numel(t);
    /* tensors in the mapped file need not be aligned for their type: hand out aligned copies
     * (kept until exit; the golden is small) */
    void *c = malloc(t->nbytes ? t->nbytes : 1);
    if (!c || g_ncopies == 256) abort();
    memcpy(c, t->data, t->nbytes);
    g_copies[g_ncopies++] = c;
    return c;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double rng_uniform(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}
static float rng_gauss(void) {
    double u = rng_uniform() + 1e-300, v = rng_uniform();
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}
static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

static void err_stats(double st[3], const float *ref, const float *got, size_t n) {
    double se = 0, mx = 0, sa = 0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)got[i] - (double)ref[i];
        se += e * e;
        sa += fabs(e);
        if (fabs(e) > mx) mx = fabs(e);
    }
    st[0] = se / (double)n;
    st[1] = mx;
    st[2] = sa / (double)n;
}
/* b may point into the mapped golden file, where F64 data need not be 8-byte aligned */
static int stats_equal(const double *a, const double *b_unaligned) {
    double b[3];
    memcpy(b, b_unaligned, sizeof b);
    for (int k = 0; k < 3; k++)
        if (fabs(a[k] - b[k]) > STAT_TOL * fabs(b[k])) return 0;
    return 1;
}

TEST(code_table) {
    static const float facts[16] = {
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
        -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
        0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
    CHECK(memcmp(facts, ST_NF4_CODE, sizeof facts) == 0);
    size_t n;
    const float *g = gt("nf4_code", ST_F32, &n);
    CHECK(n == 16 && memcmp(g, ST_NF4_CODE, sizeof facts) == 0);
    /* every code value quantises to itself; a value equal to a threshold (bnb's decimal literal
     * rounded to float32, within one ulp of the midpoint) takes the lower code, one ulp above the
     * upper code */
    for (int q = 0; q < 16; q++) CHECK(st_nf4_code_of(ST_NF4_CODE[q]) == q);
    const float *th = gt("nf4_thresholds", ST_F32, &n);
    CHECK(n == 15);
    for (int q = 0; q < 15; q++) {
        float mid = (float)(((double)ST_NF4_CODE[q] + ST_NF4_CODE[q + 1]) / 2.0);
        CHECKF(fabsf(th[q] - mid) <= fabsf(nextafterf(mid, 2.0f) - mid), "threshold %d", q);
        CHECKF(st_nf4_code_of(th[q]) == q, "threshold %d", q);
        CHECKF(st_nf4_code_of(nextafterf(th[q], 2.0f)) == q + 1, "above threshold %d", q);
    }
    CHECK(st_nf4_code_of(NAN) == 0);
    const float *m = gt("dynamic_map", ST_F32, &n);
    CHECK(n == 256 && memcmp(m, ST_NF4_DYNAMIC_MAP, sizeof ST_NF4_DYNAMIC_MAP) == 0);
    CHECK(ST_NF4_DYNAMIC_MAP[127] == 0.0f && ST_NF4_DYNAMIC_MAP[255] == 1.0f);
    for (int i = 1; i < 256; i++) CHECK(ST_NF4_DYNAMIC_MAP[i - 1] < ST_NF4_DYNAMIC_MAP[i]);
}

/* Quantise golden case `p` (g or t) and compare everything with the reference. */
static void check_case(const char *p) {
    char name[64];
    size_t n, np, na, nd, ns;
    snprintf(name, sizeof name, "%s_w", p);
    const float *w = gt(name, ST_F32, &n);
    snprintf(name, sizeof name, "%s_packed", p);
    const uint8_t *ep = gt(name, ST_U8, &np);
    snprintf(name, sizeof name, "%s_absmax", p);
    const float *ea = gt(name, ST_F32, &na);
    snprintf(name, sizeof name, "%s_deq", p);
    const float *ed = gt(name, ST_F32, &nd);
    snprintf(name, sizeof name, "%s_stats", p);
    double es[3] = {0, 0, 0};
    { const void *es_p = gt(name, ST_F64, &ns); if (es_p) memcpy(es, es_p, sizeof es); }
    CHECK(np == st_nf4_packed_size(n) && na == st_nf4_nblocks(n) && nd == n && ns == 3);
    uint8_t *packed = xmalloc(np);
    float *absmax = xmalloc(na * sizeof *absmax), *deq = xmalloc(n * sizeof *deq);
    st_nf4_quantize(packed, absmax, w, n);
    size_t bad = 0;
    for (size_t i = 0; i < np; i++) bad += packed[i] != ep[i];
    CHECKF(bad == 0, "%s: %zu packed bytes differ", p, bad);
    CHECKF(memcmp(absmax, ea, na * sizeof *ea) == 0, "%s: absmax differs", p);
    st_nf4_dequantize(deq, packed, absmax, n);
    CHECKF(memcmp(deq, ed, n * sizeof *ed) == 0, "%s: dequantised values differ", p);
    double st[3];
    err_stats(st, w, deq, n);
    CHECKF(stats_equal(st, es), "%s: mse %.9e/%.9e max %.9e/%.9e mean %.9e/%.9e", p, st[0], es[0],
           st[1], es[1], st[2], es[2]);
    printf("  %s: n=%zu mse=%.6e max|err|=%.6e mean|err|=%.6e (reference %.6e %.6e %.6e)\n", p,
           n, st[0], st[1], st[2], es[0], es[1], es[2]);
    free(packed);
    free(absmax);
    free(deq);
}

TEST(quantize_gaussian_vs_reference) {
    check_case("g");
    /* block 20 is all zeros: codes 0 (bnb), dequantised 0; block 30 holds exact midpoints */
    size_t n;
    const float *w = gt("g_w", ST_F32, &n);
    uint8_t packed[32];
    float a;
    st_nf4_quantize(packed, &a, w + 20 * 64, 64);
    CHECK(a == 0.0f && packed[0] == 0 && packed[31] == 0);
    st_nf4_quantize(packed, &a, w + 30 * 64, 64);
    CHECK(a == 1.0f);
    CHECK(packed[0] == ((15 << 4) | 0));  /* 1.0 then midpoint 0|1 -> 0 */
    CHECK((packed[8] >> 4) == 1);         /* w[16]: just above midpoint 0|1 -> 1 */
}

TEST(quantize_tail) { check_case("t"); }

TEST(nibble_order) {
    /* block of 64: w[0] = 1.0 (code 15), w[1] = -1.0 (code 0), rest 0 (code 7) */
    float w[64] = {0}, back[64], a;
    uint8_t packed[32];
    w[0] = 1.0f;
    w[1] = -1.0f;
    w[2] = 0.5626170039176941f; /* code 13 */
    st_nf4_quantize(packed, &a, w, 64);
    CHECK(a == 1.0f);
    CHECK(packed[0] == 0xF0);
    CHECK(packed[1] == 0xD7);
    CHECK(packed[2] == 0x77);
    st_nf4_dequantize(back, packed, &a, 64);
    CHECK(back[0] == 1.0f && back[1] == -1.0f && back[2] == w[2] && back[3] == 0.0f);
    /* a low-nibble-first reader would decode different values */
    uint8_t swapped[32];
    for (int i = 0; i < 32; i++) swapped[i] = (uint8_t)((packed[i] << 4) | (packed[i] >> 4));
    st_nf4_dequantize(back, swapped, &a, 64);
    CHECK(back[0] == -1.0f && back[1] == 1.0f);
    /* odd n: the last low nibble is the zero padding (code 7) */
    float w3[3] = {0.25f, -0.5f, 1.0f}, a3;
    uint8_t p3[2];
    st_nf4_quantize(p3, &a3, w3, 3);
    CHECK(a3 == 1.0f && (p3[1] >> 4) == 15 && (p3[1] & 15) == 7);
    /* dequantize_range from an odd start */
    float r[2];
    st_nf4_dequantize_range(r, packed, &a, 1, 2);
    CHECK(r[0] == -1.0f && r[1] == w[2]);
}

static void check_dq(const char *absmax_name, const char *q_name, const char *nested_name,
                     const char *off_name, const char *rec_name, const char *stats_name) {
    size_t nb, nq, nn, no, nr, ns;
    const float *a = gt(absmax_name, ST_F32, &nb);
    const uint8_t *eq = gt(q_name, ST_U8, &nq);
    const float *en = gt(nested_name, ST_F32, &nn);
    const float *eo = gt(off_name, ST_F32, &no);
    const float *er = gt(rec_name, ST_F32, &nr);
    CHECK(nq == nb && nn == st_nf4_nested_nblocks(nb) && no == 1 && nr == nb);
    uint8_t *q = xmalloc(nb);
    float *nested = xmalloc(nn * sizeof *nested), *rec = xmalloc(nb * sizeof *rec), off;
    st_nf4_quantize_absmax(q, nested, &off, a, nb);
    size_t bad = 0;
    for (size_t i = 0; i < nb; i++) bad += q[i] != eq[i];
    CHECKF(bad == 0, "%s: %zu of %zu 8-bit codes differ", q_name, bad, nb);
    CHECKF(memcmp(nested, en, nn * sizeof *en) == 0, "%s differs", nested_name);
    CHECKF(off == eo[0], "offset %.9g vs %.9g", off, eo[0]);
    st_nf4_dequantize_absmax(rec, q, nested, off, nb);
    CHECKF(memcmp(rec, er, nb * sizeof *er) == 0, "%s differs", rec_name);
    double st[3];
    err_stats(st, a, rec, nb);
    if (stats_name) {
        double es[3] = {0, 0, 0};
    { const void *es_p = gt(stats_name, ST_F64, &ns); if (es_p) memcpy(es, es_p, sizeof es); }
        CHECK(stats_equal(st, es));
    }
    /* bounded: bnb's search returns an entry adjacent to x's bracket, so each error is at most
     * the widest gap of the map times the nested absmax (+ float rounding) */
    double gap = 0;
    for (int k = 1; k < 256; k++)
        gap = fmax(gap, (double)ST_NF4_DYNAMIC_MAP[k] - ST_NF4_DYNAMIC_MAP[k - 1]);
    for (size_t i = 0; i < nb; i++) {
        double bound = nested[i / 256] * gap + 1e-6 * fabs(a[i]);
        if (!(fabs((double)rec[i] - a[i]) <= bound * 1.0001 + 1e-12)) {
            CHECKF(0, "%s[%zu] error %.3g > bound %.3g", absmax_name, i,
                   fabs((double)rec[i] - a[i]), bound);
            break;
        }
    }
    printf("  %s: nb=%zu mse=%.6e max|err|=%.6e mean|err|=%.6e offset=%.9g\n", absmax_name, nb,
           st[0], st[1], st[2], off);
    free(q);
    free(nested);
    free(rec);
}

TEST(double_quant) {
    check_dq("a_absmax", "a_q", "a_nested", "a_offset", "a_rec", "a_stats");
    check_dq("g_absmax", "g_dq_q", "g_dq_nested", "g_dq_offset", "g_dq_absmax",
             "g_dq_absmax_stats");
    /* the full pipeline: weights dequantised with double-quantised absmax */
    size_t n, na, ns;
    const float *w = gt("g_w", ST_F32, &n);
    const uint8_t *p = gt("g_packed", ST_U8, &ns);
    const float *ra = gt("g_dq_absmax", ST_F32, &na);
    double es[3] = {0, 0, 0};
    { const void *es_p = gt("g_dq_stats", ST_F64, &ns); if (es_p) memcpy(es, es_p, sizeof es); }
    float *deq = xmalloc(n * sizeof *deq);
    st_nf4_dequantize(deq, p, ra, n);
    double st[3];
    err_stats(st, w, deq, n);
    CHECK(stats_equal(st, es));
    printf("  g with double quant: mse=%.6e max|err|=%.6e mean|err|=%.6e\n", st[0], st[1], st[2]);
    free(deq);
    /* constant absmax: nested absmax 0, codes 0, reconstruction == offset exactly */
    float c[5] = {0.125f, 0.125f, 0.125f, 0.125f, 0.125f}, r[5], nested, off;
    uint8_t q[5];
    st_nf4_quantize_absmax(q, &nested, &off, c, 5);
    st_nf4_dequantize_absmax(r, q, &nested, off, 5);
    CHECK(nested == 0.0f && off == 0.125f && q[0] == 0 && r[4] == 0.125f);
}

/* float64 oracle: out = inp @ W^T + bias, with W dequantised */
static void mm_ref(double *out, const float *inp, const float *W, const float *bias, size_t N,
                   size_t C, size_t OC) {
    for (size_t i = 0; i < N; i++)
        for (size_t o = 0; o < OC; o++) {
            double s = bias ? bias[o] : 0.0;
            for (size_t c = 0; c < C; c++) s += (double)inp[i * C + c] * W[o * C + c];
            out[i * OC + o] = s;
        }
}

static void check_matmul(size_t N, size_t C, size_t OC, int with_bias) {
    size_t nw = OC * C;
    float *w = xmalloc(nw * sizeof *w), *W = xmalloc(nw * sizeof *W);
    for (size_t i = 0; i < nw; i++) w[i] = 0.02f * rng_gauss();
    uint8_t *packed = xmalloc(st_nf4_packed_size(nw));
    float *absmax = xmalloc(st_nf4_nblocks(nw) * sizeof *absmax);
    st_nf4_quantize(packed, absmax, w, nw);
    st_nf4_dequantize(W, packed, absmax, nw);
    float *inp = xmalloc(N * C * sizeof *inp), *bias = xmalloc(OC * sizeof *bias);
    float *out = xmalloc(N * OC * sizeof *out), *dout = xmalloc(N * OC * sizeof *dout);
    float *dinp = xmalloc(N * C * sizeof *dinp), *scratch = xmalloc(C * sizeof *scratch);
    double *ref = xmalloc(N * OC * sizeof *ref);
    for (size_t i = 0; i < N * C; i++) inp[i] = rng_gauss();
    for (size_t i = 0; i < OC; i++) bias[i] = 0.1f * rng_gauss();
    for (size_t i = 0; i < N * OC; i++) dout[i] = rng_gauss(), out[i] = 7.0f;
    const float *b = with_bias ? bias : NULL;

    st_nf4_matmul_forward(out, inp, packed, absmax, b, scratch, N, C, OC);
    mm_ref(ref, inp, W, b, N, C, OC);
    double md = 0, mr = 0;
    for (size_t i = 0; i < N * OC; i++) {
        md = fmax(md, fabs(out[i] - ref[i]));
        mr = fmax(mr, fabs(ref[i]));
    }
    CHECKF(md <= MM_TOL * fmax(1.0, mr), "forward N=%zu C=%zu OC=%zu: %.3g (max %.3g)", N, C, OC,
           md, mr);

    /* backward: dinp += dout @ W. Prefill to check `+=`. Oracle 1: float64 loops. Oracle 2:
     * central finite differences of L(x) = sum(dout * (x @ W^T)) in float64. */
    for (size_t i = 0; i < N * C; i++) dinp[i] = 0.5f + 0.25f * (float)(i % 7);
    st_nf4_matmul_backward_input(dinp, dout, packed, absmax, scratch, N, C, OC);
    double mdb = 0, mrb = 0, mfd = 0;
    const double h = 1e-3;
    for (size_t i = 0; i < N; i++)
        for (size_t c = 0; c < C; c++) {
            double g = 0;
            for (size_t o = 0; o < OC; o++) g += (double)dout[i * OC + o] * W[o * C + c];
            /* FD: L depends on x[i,c] only through row i; exact in float64 up to rounding */
            double lp = 0, lm = 0;
            for (size_t o = 0; o < OC; o++) {
                double sp = 0, sm = 0;
                for (size_t k = 0; k < C; k++) {
                    double x = inp[i * C + k];
                    sp += (k == c ? x + h : x) * W[o * C + k];
                    sm += (k == c ? x - h : x) * W[o * C + k];
                }
                lp += dout[i * OC + o] * sp;
                lm += dout[i * OC + o] * sm;
            }
            double fd = (lp - lm) / (2 * h);
            double pre = 0.5 + 0.25 * (double)((i * C + c) % 7);
            double got = (double)dinp[i * C + c] - pre;
            mdb = fmax(mdb, fabs((double)dinp[i * C + c] - (pre + g)));
            mfd = fmax(mfd, fabs(got - fd));
            mrb = fmax(mrb, fabs(pre + g));
        }
    CHECKF(mdb <= MM_TOL * fmax(1.0, mrb), "backward N=%zu C=%zu OC=%zu: %.3g", N, C, OC, mdb);
    CHECKF(mfd <= 1e-4 * fmax(1.0, mrb), "backward vs FD N=%zu C=%zu OC=%zu: %.3g", N, C, OC,
           mfd);
    printf("  matmul N=%zu C=%zu OC=%zu: fwd %.2e (|ref| %.2f) bwd %.2e vs fd %.2e\n", N, C, OC,
           md, mr, mdb, mfd);
    free(w), free(W), free(packed), free(absmax), free(inp), free(bias), free(out), free(dout);
    free(dinp), free(scratch), free(ref);
}

TEST(matmul) {
    check_matmul(5, 128, 37, 1);
    check_matmul(3, 192, 11, 0);
    check_matmul(1, 64, 1, 1);
    check_matmul(7, 100, 9, 1); /* C not a multiple of 64: blocks and bytes straddle rows */
    check_matmul(4, 37, 5, 0);  /* odd C: rows start mid-byte */
}

/* Quantised weights (quant.h): a (rows, cols) F32/BF16 tensor quantised tensor by tensor through
 * st_qweight_quantize_tensor gives the same codes as st_nf4_quantize over the whole array (chunks
 * of whole blocks), st_qweight_dequant_rows of any row range equals st_nf4_dequantize with the
 * reconstructed absmax, and the tiled F32 matmuls (panel GEMM; OpenBLAS under ST_NO_AVX512=1:
 * test_nf4_fallback) equal float64 loops over the dequantised matrix (1e-5 relative) and give
 * the same bits on 1 and 3 threads, on odd shapes where blocks straddle rows and tiles. INT8
 * likewise. */
static void qweight_case(enum st_quant kind, int dq, size_t R, size_t C, enum st_dtype dt) {
    size_t n = R * C, nb = st_nf4_nblocks(n);
    float *w = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++) w[i] = rng_gauss() * 0.05f;
    uint16_t *h = xmalloc(n * 2);
    if (dt == ST_BF16) /* the loader quantises what it reads: compare against the bf16 values */
        for (size_t i = 0; i < n; i++) {
            h[i] = st_f32_to_bf16(w[i]);
            w[i] = st_bf16_to_f32(h[i]);
        }
    struct st_tensor_view tv = {.name = "w", .dtype = dt, .ndim = 2, .shape = {(int64_t)R,
                                (int64_t)C}, .nbytes = n * (dt == ST_BF16 ? 2 : 4),
                                .data = dt == ST_BF16 ? (const void *)h : (const void *)w};
    uint8_t *q = xmalloc(n), *aq = xmalloc(nb);
    float *absmax = xmalloc(nb * 4), *nested = xmalloc((nb / 256 + 1) * 4), *scale = xmalloc(R * 4);
    float *tmp = xmalloc(nb * 4), *chunk = xmalloc(ST_QUANT_CHUNK * 4);
    struct st_qweight qw;
    struct st_error err;
    CHECK(st_qweight_quantize_tensor(&qw, kind, &tv, dq, q, absmax, aq, nested, scale, tmp, chunk,
                                     &err) == ST_OK);
    float *deq = xmalloc(n * 4), *rows = xmalloc(n * 4);
    if (kind == ST_QUANT_NF4) {
        uint8_t *q2 = xmalloc(st_nf4_packed_size(n));
        float *am2 = xmalloc(nb * 4);
        st_nf4_quantize(q2, am2, w, n);
        CHECK(memcmp(q2, q, st_nf4_packed_size(n)) == 0);
        if (dq) {
            uint8_t *aq2 = xmalloc(nb);
            float *nest2 = xmalloc((nb / 256 + 1) * 4), off2;
            st_nf4_quantize_absmax(aq2, nest2, &off2, am2, nb);
            CHECK(memcmp(aq2, aq, nb) == 0 && off2 == qw.nested_offset);
            st_nf4_dequantize_absmax(am2, aq2, nest2, off2, nb);
            free(aq2);
            free(nest2);
        } else {
            CHECK(memcmp(am2, absmax, nb * 4) == 0);
        }
        st_nf4_dequantize(deq, q2, am2, n);
        free(q2);
        free(am2);
    } else {
        for (size_t r = 0; r < R; r++) {
            float am = 0;
            for (size_t c = 0; c < C; c++) am = fmaxf(am, fabsf(w[r * C + c]));
            CHECK(scale[r] == am / 127.0f);
            for (size_t c = 0; c < C; c++) {
                int8_t v = ((int8_t *)q)[r * C + c];
                deq[r * C + c] = (float)v * scale[r];
                /* round to nearest: within half a step */
                if (fabsf(deq[r * C + c] - w[r * C + c]) > scale[r] * 0.5001f) CHECK(0);
            }
        }
    }
    /* any row range, including ranges whose first element is odd */
    size_t r0 = R / 3, nr = R - R / 3 - 1;
    st_qweight_dequant_rows(rows, &qw, r0, nr);
    CHECK(memcmp(rows, deq + r0 * C, nr * C * 4) == 0);
    st_qweight_dequant_rows(rows, &qw, 0, R);
    CHECK(memcmp(rows, deq, n * 4) == 0);
    /* matmuls */
    size_t N = 7;
    float *x = xmalloc(N * C * 4), *out = xmalloc(N * R * 4), *bias = xmalloc(R * 4);
    float *dout = xmalloc(N * R * 4), *dinp = xmalloc(N * C * 4);
    float *scr = xmalloc(st_qweight_scratch_floats(&qw) * 4);
    for (size_t i = 0; i < N * C; i++) x[i] = rng_gauss();
    for (size_t i = 0; i < R; i++) bias[i] = rng_gauss();
    for (size_t i = 0; i < N * R; i++) dout[i] = rng_gauss();
    for (size_t i = 0; i < N * C; i++) dinp[i] = 1.0f;
    st_qlinear_forward(out, x, &qw, bias, scr, N);
    st_qlinear_backward_input(dinp, dout, &qw, scr, N);
    double emax = 0, ref_max = 1, bmax = 0, bref = 1;
    for (size_t i = 0; i < N; i++)
        for (size_t o = 0; o < R; o++) {
            double s = bias[o];
            for (size_t c = 0; c < C; c++) s += (double)x[i * C + c] * deq[o * C + c];
            emax = fmax(emax, fabs(s - out[i * R + o]));
            ref_max = fmax(ref_max, fabs(s));
        }
    for (size_t i = 0; i < N; i++)
        for (size_t c = 0; c < C; c++) {
            double s = 1.0;
            for (size_t o = 0; o < R; o++) s += (double)dout[i * R + o] * deq[o * C + c];
            bmax = fmax(bmax, fabs(s - dinp[i * C + c]));
            bref = fmax(bref, fabs(s));
        }
    CHECKF(emax / ref_max < MM_TOL && bmax / bref < MM_TOL,
           "%s dq=%d %zux%zu: forward %.3g, backward %.3g relative", st_quant_name(kind), dq, R, C,
           emax / ref_max, bmax / bref);
    /* the same bits on 1 and 3 threads (eval compares losses across thread counts), on enough
     * rows that the GEMM splits them; OpenBLAS (the fallback) promises no such thing */
    if (st_f32_native()) {
        size_t N2 = 45;
        float *x2 = xmalloc(N2 * C * 4), *d2 = xmalloc(N2 * R * 4);
        float *o[2], *g[2];
        for (size_t i = 0; i < N2 * C; i++) x2[i] = rng_gauss();
        for (size_t i = 0; i < N2 * R; i++) d2[i] = rng_gauss();
        for (int t = 0; t < 2; t++) {
            st_threads_set(t ? 3 : 1);
            o[t] = xmalloc(N2 * R * 4), g[t] = xmalloc(N2 * C * 4);
            memset(g[t], 0, N2 * C * 4);
            st_qlinear_forward(o[t], x2, &qw, bias, scr, N2);
            st_qlinear_backward_input(g[t], d2, &qw, scr, N2);
        }
        st_threads_set(0);
        CHECKF(memcmp(o[0], o[1], N2 * R * 4) == 0 && memcmp(g[0], g[1], N2 * C * 4) == 0,
               "%s %zux%zu: 1 and 3 threads give different bits", st_quant_name(kind), R, C);
        for (int t = 0; t < 2; t++) free(o[t]), free(g[t]);
        free(x2);
        free(d2);
    }
    /* the BF16 variants: float64 over the BF16-rounded dequantised weights and inputs; products
     * of BF16 values are exact in float, so 1e-5 of sum |x w| bounds the summation error */
    uint32_t *xs = xmalloc(st_bf16_x_bytes(N, R > C ? R : C));
    for (size_t i = 0; i < N * C; i++) dinp[i] = 1.0f;
    st_qlinear_forward_bf16(out, x, &qw, bias, scr, xs, N);
    st_qlinear_backward_input_bf16(dinp, dout, &qw, scr, xs, N);
    double fe = 0, be = 0;
    for (size_t i = 0; i < N; i++)
        for (size_t o = 0; o < R; o++) {
            double s = bias[o], a = fabs(bias[o]);
            for (size_t c = 0; c < C; c++) {
                double p = (double)bf16r(x[i * C + c]) * bf16r(deq[o * C + c]);
                s += p;
                a += fabs(p);
            }
            fe = fmax(fe, fabs(s - out[i * R + o]) / (a + 1e-30));
        }
    for (size_t i = 0; i < N; i++)
        for (size_t c = 0; c < C; c++) {
            double s = 1.0, a = 1.0;
            for (size_t o = 0; o < R; o++) {
                double p = (double)bf16r(dout[i * R + o]) * bf16r(deq[o * C + c]);
                s += p;
                a += fabs(p);
            }
            be = fmax(be, fabs(s - dinp[i * C + c]) / a);
        }
    CHECKF(fe < 1e-5 && be < 1e-5, "%s dq=%d %zux%zu BF16: forward %.3g, backward %.3g of sum|xw|",
           st_quant_name(kind), dq, R, C, fe, be);
    /* from X rounded beforehand (st_qlinear_forward_bf16_px: the shared rounding of q, k, v), with
     * a rank-3 low-rank term s xl W^T (W (R, 3)) joining every tile's GEMM at its own columns */
    {
        size_t rk = 3;
        float *xl = xmalloc(N * rk * 4), *wl = xmalloc(R * rk * 4), *o2 = xmalloc(N * R * 4);
        for (size_t i = 0; i < N * rk; i++) xl[i] = rng_gauss();
        for (size_t i = 0; i < R * rk; i++) wl[i] = rng_gauss();
        struct st_lowrank lr = {xl, rk, wl, rk, 1, 0.7f};
        st_bf16_pack_x(xs, x, N, C, C);
        st_qlinear_forward_bf16_px(o2, xs, &qw, bias, scr, N, &lr);
        double le = 0;
        for (size_t i = 0; i < N; i++)
            for (size_t o = 0; o < R; o++) {
                double t = 0, a = 0;
                for (size_t j = 0; j < rk; j++) {
                    t += 0.7 * xl[i * rk + j] * wl[o * rk + j];
                    a += fabs(0.7 * xl[i * rk + j] * wl[o * rk + j]);
                }
                double want = out[i * R + o] + t; /* the term on the plain variant's result */
                for (size_t c = 0; c < C; c++) a += fabs((double)bf16r(x[i * C + c]) * bf16r(deq[o * C + c]));
                le = fmax(le, fabs(want - o2[i * R + o]) / (a + fabs(bias[o]) + 1e-30));
            }
        CHECKF(le < 2e-5, "%s dq=%d %zux%zu BF16 from rounded X, low-rank term: %.3g of sum|xw|",
               st_quant_name(kind), dq, R, C, le);
        /* the backward's _ex form: acc 0 writes dinp (poisoned first), and a rank-3 term s dxl A
         * (A (3, C), the layout of a LoRA A) is added once over all tiles: the plain result (which
         * started from 1.0) minus 1 plus the term */
        float *dxl = xmalloc(N * rk * 4), *al = xmalloc(rk * C * 4), *d2 = xmalloc(N * C * 4);
        for (size_t i = 0; i < N * rk; i++) dxl[i] = rng_gauss();
        for (size_t i = 0; i < rk * C; i++) al[i] = rng_gauss();
        for (size_t i = 0; i < N * C; i++) d2[i] = NAN;
        struct st_lowrank lb = {dxl, rk, al, 1, C, 0.7f};
        st_qlinear_backward_input_bf16_ex(d2, dout, &qw, scr, xs, N, 0, &lb, NULL);
        double lbe = 0;
        for (size_t i = 0; i < N; i++)
            for (size_t c = 0; c < C; c++) {
                double t = 0, a = 1e-30;
                for (size_t j = 0; j < rk; j++) t += 0.7 * dxl[i * rk + j] * al[j * C + c];
                for (size_t o = 0; o < R; o++) a += fabs((double)bf16r(dout[i * R + o]) * bf16r(deq[o * C + c]));
                double want = (double)dinp[i * C + c] - 1.0 + t;
                double e = fabs(want - d2[i * C + c]) / (a + fabs(t) + 1.0);
                if (!(e <= lbe)) lbe = e; /* a NaN (the poison left) sticks */
            }
        CHECKF(lbe < 2e-5, "%s dq=%d %zux%zu BF16 backward, acc 0 + low-rank term: %.3g",
               st_quant_name(kind), dq, R, C, lbe);
        /* ce: dout as logits over a vocabulary of R, the product of their cross-entropy gradient
         * dloss (softmax - onehot), rounded from the logits tile by tile (col0), against float64
         * within the gradient's BF16 rounding (2^-8 of sum |g w|); targets at 0, R - 1, the tile
         * edges, and ignored rows */
        int32_t *tg = xmalloc(N * 4);
        float *loss = xmalloc(N * 4);
        double *g = xmalloc(R * 8);
        size_t trb = st_qweight_tile_rows_bf16(&qw);
        for (size_t i = 0; i < N; i++) {
            size_t t = i == 0 ? 0 : i == 1 ? R - 1 : i == 2 ? (trb < R ? trb : R / 2)
                                                 : i == 3 ? (trb - 1 < R ? trb - 1 : R / 3)
                                                          : (i * 7919) % R;
            tg[i] = i == 4 ? -100 : (int32_t)t;
            double mx = -INFINITY, se = 0;
            for (size_t o = 0; o < R; o++) mx = fmax(mx, dout[i * R + o]);
            for (size_t o = 0; o < R; o++) se += exp(dout[i * R + o] - mx);
            loss[i] = tg[i] < 0 ? 0.0f : (float)(mx + log(se) - dout[i * R + t]);
        }
        for (size_t i = 0; i < N * C; i++) d2[i] = NAN;
        struct st_ce_rows ce = {loss, tg, 0.37f, 0};
        st_qlinear_backward_input_bf16_ex(d2, dout, &qw, scr, xs, N, 0, NULL, &ce);
        double cee = 0;
        for (size_t i = 0; i < N; i++) {
            double mx = -INFINITY, se = 0;
            for (size_t o = 0; o < R; o++) mx = fmax(mx, dout[i * R + o]);
            for (size_t o = 0; o < R; o++) se += exp(dout[i * R + o] - mx);
            for (size_t o = 0; o < R; o++)
                g[o] = tg[i] < 0 ? 0 : 0.37 * (exp(dout[i * R + o] - mx) / se - (o == (size_t)tg[i]));
            for (size_t c = 0; c < C; c++) {
                double sum = 0, a = 1e-30;
                for (size_t o = 0; o < R; o++) {
                    double p = g[o] * bf16r(deq[o * C + c]);
                    sum += p;
                    a += fabs(p);
                }
                double e = fabs(sum - d2[i * C + c]) / a;
                if (!(e <= cee)) cee = e;
            }
        }
        CHECKF(cee < 4e-3, "%s dq=%d %zux%zu BF16 backward of the cross-entropy gradient (%zu-row "
               "tiles): %.3g of sum|g w|", st_quant_name(kind), dq, R, C, trb, cee);
        free(tg), free(loss), free(g);
        free(dxl), free(al), free(d2);
        free(xl), free(wl), free(o2);
    }
    free(xs);
    void *all[] = {w, h, q, aq, absmax, nested, scale, tmp, chunk, deq, rows, x, out, bias, dout,
                   dinp, scr};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) free(all[i]);
}

TEST(qweight) {
    qweight_case(ST_QUANT_NF4, 1, 37, 100, ST_F32);   /* blocks straddle rows, odd total */
    qweight_case(ST_QUANT_NF4, 0, 37, 100, ST_F32);
    qweight_case(ST_QUANT_NF4, 1, 2100, 1027, ST_BF16); /* 3 tiles, > 1 chunk, ragged tail */
    qweight_case(ST_QUANT_NF4, 1, 2100, 4100, ST_BF16); /* 3 of the BF16 matmuls' tiles too */
    qweight_case(ST_QUANT_NF4, 1, 1, 64 * 257 + 3, ST_F32); /* one row, > 256 blocks */
    qweight_case(ST_QUANT_INT8, 0, 37, 100, ST_F32);
    qweight_case(ST_QUANT_INT8, 0, 2100, 1027, ST_BF16);
    /* codes + 8-bit absmax per 64 + float nested absmax per 256 blocks: 0.5156 bytes/weight */
    CHECK(st_qweight_bytes(ST_QUANT_NF4, 4096, 4096, 1) == 4096 * 4096 / 2 + 4096 * 64 + 1024 * 4);
}

int main(void) {
    struct st_error err = {0};
    if (st_safetensors_open(&golden, GOLDEN, &err) != ST_OK) {
        fprintf(stderr, "cannot open %s\n", GOLDEN);
        return 1;
    }
    RUN(code_table);
    RUN(quantize_gaussian_vs_reference);
    RUN(quantize_tail);
    RUN(nibble_order);
    RUN(double_quant);
    RUN(matmul);
    RUN(qweight);
    st_safetensors_close(golden);
    for (int i = 0; i < g_ncopies; i++) free(g_copies[i]);
    return test_finish();
}
