/* test_kernels.c: every kernel of include/streamtune/kernels.h, on every backend (ref and cpu).
 *
 * DESIGN: the oracle lives here and is written independently of the library: plain float64 loops
 * implementing the math exactly as kernels.h documents it (layouts, masks, accumulation rules).
 * - Forward outputs are compared with it.
 * - Backward outputs are compared with central finite differences, in float64, of
 *   L = sum(dout * forward(x)), taken for every input element (sizes are small, so this is cheap).
 * - Every output/gradient buffer is prefilled with a nonzero pattern: a `+=` kernel must add to it
 *   and a `=` kernel must overwrite it, exactly as the header says.
 * - Sizes are odd on purpose (C=37, H=23, V=67, hd=10/6, N=5, B=2) so SIMD tails run.
 * - The RoPE tables are checked against the HF formulas (default, linear, llama3).
 * - The cpu backend is also compared with ref on larger shapes.
 * Tolerances are stated per check: max|diff| <= tol * max(1, max|expected|). */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kernels/cpu/attention.h"
#include "streamtune/bf16.h"
#include "streamtune/kernels.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* Forward vs float64: float32 rounding of short sums stays well under this (relative to
 * max(1, max|ref|)). */
#define FWD_TOL 1e-5
/* float32 backward kernel vs exact (float64 finite-difference) gradient. The FD estimate itself
 * is accurate to ~1e-9 here (h = 1e-6, O(h^2) truncation, ~1e-10 rounding); the rest is the
 * kernel's float32 arithmetic, which is ~1e-6 relative on these sizes. 1e-4 leaves margin while
 * still catching any wrong term (the brief allows 1e-3). */
#define BWD_TOL 1e-4
/* cpu vs ref on larger shapes: both float32, different summation orders (BLAS, SIMD). */
#define XB_TOL 1e-5
#define FD_H 1e-6

/* ---------------------------------------------------------------- small helpers */

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint32_t rng_u32(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}
static float rng_uniform(float lo, float hi) {
    return lo + (hi - lo) * (float)((double)rng_u32() / 4294967296.0);
}
static void fill_uniform(float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = rng_uniform(lo, hi);
}
/* A nonzero pattern used to prefill buffers (so `=` vs `+=` is visible). */
static void fill_pattern(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = 0.5f + 0.25f * (float)(i % 7);
}

static float *fnew(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) abort();
    return p;
}
static double *dnew(size_t n) {
    double *p = calloc(n ? n : 1, sizeof *p);
    if (!p) abort();
    return p;
}
static double *to_double(const float *x, size_t n) {
    double *d = dnew(n);
    for (size_t i = 0; i < n; i++) d[i] = (double)x[i];
    return d;
}
static float *fcopy(const float *x, size_t n) {
    float *p = fnew(n);
    memcpy(p, x, (n ? n : 1) * sizeof *p);
    return p;
}
/* exp[i] = prefill[i] + g[i]: what a `+=` kernel must leave in a prefilled buffer. */
static double *plus_prefill(const float *prefill, const double *g, size_t n) {
    double *e = dnew(n);
    for (size_t i = 0; i < n; i++) e[i] = (double)prefill[i] + g[i];
    return e;
}
static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

struct cmp {
    double err, max_ref, got_w, ref_w;
    size_t worst;
};
/* max |got - ref| (NaN/inf in got = infinite error), max |ref| and where the worst one is. */
static struct cmp compare(const float *got, const double *ref, size_t n) {
    struct cmp c = {0, 0, 0, 0, 0};
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (!isfinite(d)) d = INFINITY;
        if (d > c.err || (i == 0 && d == c.err)) {
            c.err = d;
            c.worst = i;
            c.got_w = got[i];
            c.ref_w = ref[i];
        }
        if (fabs(ref[i]) > c.max_ref) c.max_ref = fabs(ref[i]);
    }
    return c;
}
static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

static char lbl_buf[256];
#define LBL(...) (snprintf(lbl_buf, sizeof lbl_buf, __VA_ARGS__), lbl_buf)

/* max|got - ref| <= rtol * max(1, max|ref|), reported with the backend, a label and the worst
 * element. */
#define CHECK_CLOSE(kp, what, got, ref, n, rtol)                                              \
    do {                                                                                      \
        struct cmp c_ = compare((got), (ref), (n));                                           \
        double tol_ = (rtol) * fmax(1.0, c_.max_ref);                                         \
        CHECKF(c_.err <= tol_,                                                                \
               "%s %s: max|diff| %.3g > tol %.3g (max|ref| %.3g; worst [%zu] got %.9g want "  \
               "%.9g)",                                                                       \
               (kp)->name, (what), c_.err, tol_, c_.max_ref, c_.worst, c_.got_w, c_.ref_w);   \
    } while (0)

/* Central finite differences of f with respect to every element of x (perturbed in place). */
typedef double (*loss_fn)(const void *ctx);
static void fd_grad(double *g, double *x, size_t n, loss_fn f, const void *ctx) {
    for (size_t i = 0; i < n; i++) {
        double xi = x[i];
        x[i] = xi + FD_H;
        double lp = f(ctx);
        x[i] = xi - FD_H;
        double lm = f(ctx);
        x[i] = xi;
        g[i] = (lp - lm) / (2.0 * FD_H);
    }
}

#define NBACKENDS 2
static const struct st_kernels *backend(int i) {
    return i == 0 ? st_kernels_ref() : st_kernels_cpu();
}
/* The cpu table with the portable attention kernels: the fallback for CPUs without AVX-512, which
 * the cpu table itself does not run here for hd % 16 == 0 when this CPU has AVX-512. */
static const struct st_kernels *cpu_portable_attention(void) {
    static struct st_kernels t;
    t = *st_kernels_cpu();
    t.name = "cpu (portable attention)";
    t.attention_forward = st_cpu_attention_forward_portable;
    t.attention_backward = st_cpu_attention_backward_portable;
    return &t;
}

/* ---------------------------------------------------------------- float64 oracle */

static void ref_embedding(double *out, const int32_t *ids, const double *wte, double scale,
                          size_t N, size_t C) {
    for (size_t n = 0; n < N; n++)
        for (size_t c = 0; c < C; c++) out[n * C + c] = wte[(size_t)ids[n] * C + c] * scale;
}

static void ref_rmsnorm(double *out, double *rstd, const double *inp, const double *w, double eps,
                        double offset, size_t N, size_t C) {
    for (size_t n = 0; n < N; n++) {
        const double *x = inp + n * C;
        double ss = 0;
        for (size_t c = 0; c < C; c++) ss += x[c] * x[c];
        double r = 1.0 / sqrt(ss / (double)C + eps);
        if (rstd) rstd[n] = r;
        for (size_t c = 0; c < C; c++) out[n * C + c] = x[c] * r * (w[c] + offset);
    }
}

/* Rotate-half: for j < hd/2, out[j] = x[j] c - x[j+h2] s, out[j+h2] = x[j+h2] c + x[j] s. */
static void ref_rope(double *out, const double *inp, const float *cosT, const float *sinT,
                     const int32_t *pos, size_t N, size_t nh, size_t hd) {
    size_t h2 = hd / 2;
    for (size_t n = 0; n < N; n++)
        for (size_t h = 0; h < nh; h++) {
            const double *x = inp + (n * nh + h) * hd;
            double *o = out + (n * nh + h) * hd;
            for (size_t j = 0; j < h2; j++) {
                double c = cosT[(size_t)pos[n] * h2 + j], s = sinT[(size_t)pos[n] * h2 + j];
                double a = x[j], b = x[j + h2];
                o[j] = a * c - b * s;
                o[j + h2] = b * c + a * s;
            }
        }
}

/* Query i sits at p = Tk - Tq + i; sees key j iff j <= p, p - j < window (window > 0), same seg. */
static int att_visible(const int32_t *seg, int window, size_t b, size_t Tq, size_t Tk, size_t i,
                       size_t j) {
    size_t p = Tk - Tq + i;
    if (j > p) return 0;
    if (window > 0 && p - j >= (size_t)window) return 0;
    if (seg && seg[b * Tk + j] != seg[b * Tk + p]) return 0;
    return 1;
}

static void ref_attention(double *out, double *lse, const double *q, const double *k,
                          const double *v, const int32_t *seg, double scale, int window, size_t B,
                          size_t Tq, size_t Tk, size_t nh, size_t nkv, size_t hd) {
    size_t group = nh / nkv;
    double *s = dnew(Tk);
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < nh; h++) {
            size_t kh = h / group;
            for (size_t i = 0; i < Tq; i++) {
                const double *qi = q + ((b * Tq + i) * nh + h) * hd;
                double m = -INFINITY;
                for (size_t j = 0; j < Tk; j++) {
                    if (!att_visible(seg, window, b, Tq, Tk, i, j)) continue;
                    const double *kj = k + ((b * Tk + j) * nkv + kh) * hd;
                    double d = 0;
                    for (size_t e = 0; e < hd; e++) d += qi[e] * kj[e];
                    s[j] = d * scale;
                    if (s[j] > m) m = s[j];
                }
                double sum = 0;
                for (size_t j = 0; j < Tk; j++) {
                    s[j] = att_visible(seg, window, b, Tq, Tk, i, j) ? exp(s[j] - m) : 0.0;
                    sum += s[j];
                }
                double *o = out + ((b * Tq + i) * nh + h) * hd;
                if (lse) lse[(b * nh + h) * Tq + i] = m + log(sum);
                for (size_t e = 0; e < hd; e++) o[e] = 0;
                for (size_t j = 0; j < Tk; j++) {
                    double pj = s[j] / sum;
                    const double *vj = v + ((b * Tk + j) * nkv + kh) * hd;
                    for (size_t e = 0; e < hd; e++) o[e] += pj * vj[e];
                }
            }
        }
    free(s);
}

static double ref_act(double x, enum st_act act) {
    if (act == ST_ACT_SILU) return x / (1.0 + exp(-x));
    return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}
static void ref_glu(double *out, const double *gate, const double *up, enum st_act act, size_t N,
                    size_t H) {
    for (size_t i = 0; i < N * H; i++) out[i] = ref_act(gate[i], act) * up[i];
}

static void ref_linear(double *out, const double *inp, const double *w, const double *bias,
                       size_t N, size_t C, size_t OC) {
    for (size_t n = 0; n < N; n++)
        for (size_t o = 0; o < OC; o++) {
            double s = bias ? bias[o] : 0.0;
            for (size_t c = 0; c < C; c++) s += inp[n * C + c] * w[o * C + c];
            out[n * OC + o] = s;
        }
}

static void ref_crossentropy(double *losses, const double *logits, const int32_t *targets,
                             size_t N, size_t V) {
    for (size_t n = 0; n < N; n++) {
        if (targets[n] < 0) {
            losses[n] = 0;
            continue;
        }
        const double *l = logits + n * V;
        double m = -INFINITY, s = 0;
        for (size_t i = 0; i < V; i++)
            if (l[i] > m) m = l[i];
        for (size_t i = 0; i < V; i++) s += exp(l[i] - m);
        losses[n] = log(s) + m - l[targets[n]];
    }
}
/* Analytic dlogits = dloss * (softmax - onehot) (0 on ignored rows): used only where finite
 * differences are pointless (the +-1000 stability case). */
static void ref_crossentropy_grad(double *d, const double *logits, const int32_t *targets,
                                  double dloss, size_t N, size_t V) {
    for (size_t n = 0; n < N; n++) {
        const double *l = logits + n * V;
        if (targets[n] < 0) {
            for (size_t i = 0; i < V; i++) d[n * V + i] = 0;
            continue;
        }
        double m = -INFINITY, s = 0;
        for (size_t i = 0; i < V; i++)
            if (l[i] > m) m = l[i];
        for (size_t i = 0; i < V; i++) s += exp(l[i] - m);
        for (size_t i = 0; i < V; i++)
            d[n * V + i] = dloss * (exp(l[i] - m) / s - ((int32_t)i == targets[n] ? 1.0 : 0.0));
    }
}

/* HF rope init: inv_freq[j] = theta^(-2j/hd), then linear (/factor) or llama3 scaling
 * (transformers' _compute_llama3_parameters). counts[0..2] = #kept, #divided, #smoothed. */
static void ref_inv_freq(double *inv, int counts[3], const struct st_rope_params *p, size_t hd) {
    counts[0] = counts[1] = counts[2] = 0;
    for (size_t j = 0; j < hd / 2; j++) {
        double f = 1.0 / pow(p->theta, (double)(2 * j) / (double)hd);
        if (p->type == ST_ROPE_LINEAR) {
            f /= p->factor;
        } else if (p->type == ST_ROPE_LLAMA3) {
            double L = (double)p->original_max_pos;
            double low_wl = L / p->low_freq_factor, high_wl = L / p->high_freq_factor;
            double wl = 2.0 * 3.14159265358979323846 / f;
            if (wl < high_wl) {
                counts[0]++;
            } else if (wl > low_wl) {
                f = f / p->factor;
                counts[1]++;
            } else {
                double smooth = (L / wl - p->low_freq_factor) /
                                (p->high_freq_factor - p->low_freq_factor);
                f = (1.0 - smooth) * f / p->factor + smooth * f;
                counts[2]++;
            }
        }
        inv[j] = f;
    }
}

/* ---------------------------------------------------------------- the backend tables */

static int tables_ok;

TEST(tables_complete) {
    tables_ok = 1;
    for (int bi = 0; bi < NBACKENDS; bi++) {
        const struct st_kernels *kp = backend(bi);
        CHECKF(kp != NULL, "backend %d is NULL", bi);
        if (!kp) {
            tables_ok = 0;
            continue;
        }
        int ok = kp->name && kp->embedding_forward && kp->embedding_backward &&
                 kp->rmsnorm_forward && kp->rmsnorm_backward && kp->rope_forward &&
                 kp->rope_backward && kp->attention_forward && kp->attention_backward &&
                 kp->glu_forward && kp->glu_backward && kp->linear_forward &&
                 kp->linear_backward && kp->crossentropy_forward && kp->crossentropy_backward &&
                 kp->lora_forward && kp->lora_backward;
        CHECKF(ok, "backend %d (%s) has a NULL entry", bi, kp->name ? kp->name : "?");
        if (!ok) tables_ok = 0;
    }
    CHECK(st_kernels_ref() != st_kernels_cpu());
    const struct st_kernels *bf = st_kernels_cpu_bf16(); /* --compute bf16's table */
    CHECK(bf && bf->name && bf->attention_forward && bf->attention_backward &&
          bf->linear_forward && bf->lora_forward && bf->lora_backward &&
          bf->crossentropy_backward && bf->rmsnorm_forward && bf->glu_forward);
}

/* ---------------------------------------------------------------- RoPE tables */

TEST(rope_inv_freq) {
    struct {
        const char *name;
        struct st_rope_params p;
        size_t hd;
        int need_all_branches;
    } cases[] = {
        {"default hd=8", {500000.0, ST_ROPE_DEFAULT, 1, 1, 1, 0}, 8, 0},
        {"default hd=10", {10000.0, ST_ROPE_DEFAULT, 1, 1, 1, 0}, 10, 0},
        {"default hd=64", {10000.0, ST_ROPE_DEFAULT, 1, 1, 1, 0}, 64, 0},
        {"linear f=4 hd=10", {10000.0, ST_ROPE_LINEAR, 4.0, 1, 1, 0}, 10, 0},
        {"linear f=2.5 hd=6", {1000000.0, ST_ROPE_LINEAR, 2.5, 1, 1, 0}, 6, 0},
        /* wavelens 6.3, 167, 4443, 118143 vs high_wl 64, low_wl 256: keep, smooth, divide x2 */
        {"llama3 hd=8 L=256", {500000.0, ST_ROPE_LLAMA3, 8.0, 1.0, 4.0, 256}, 8, 1},
        {"llama3.1 hd=64 L=8192", {500000.0, ST_ROPE_LLAMA3, 8.0, 1.0, 4.0, 8192}, 64, 1},
        {"llama3 hd=10 f=32 L=128", {10000.0, ST_ROPE_LLAMA3, 32.0, 1.0, 4.0, 128}, 10, 0},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        size_t h2 = cases[ci].hd / 2;
        float *got = fnew(h2);
        double *want = dnew(h2);
        int counts[3];
        fill_pattern(got, h2);
        ref_inv_freq(want, counts, &cases[ci].p, cases[ci].hd);
        st_rope_inv_freq(got, &cases[ci].p, cases[ci].hd);
        if (cases[ci].need_all_branches)
            CHECKF(counts[0] > 0 && counts[1] > 0 && counts[2] > 0,
                   "%s: test params must hit all llama3 branches (%d %d %d)", cases[ci].name,
                   counts[0], counts[1], counts[2]);
        /* Per element relative 1e-5: values span 1 .. 1e-6, so an absolute bound would say
         * nothing about the small ones. A float32 computation like HF's (theta ** (float)(2j/hd))
         * is within ~1e-6 relative of the exact value; double-then-round within 6e-8. */
        for (size_t j = 0; j < h2; j++) {
            double rel = fabs((double)got[j] - want[j]) / want[j];
            CHECKF(rel <= 1e-5, "%s: inv_freq[%zu] = %.9g, want %.9g (rel %.3g)", cases[ci].name,
                   j, got[j], want[j], rel);
        }
        free(got);
        free(want);
    }
}

TEST(rope_table) {
    /* inv_freq 1, 0.1, 0.01, 0.001 (theta 1e4, hd 8) and positions up to 2999: angles up to
     * 3000 rad. The header promises HF's angle, the float32 product (float)pos * inv_freq (which
     * differs from the exact double angle by up to ~1e-4 rad there), then cos/sin in double. */
    const size_t hd = 8, h2 = hd / 2, T = 3000;
    struct st_rope_params p = {10000.0, ST_ROPE_DEFAULT, 1, 1, 1, 0};
    double invd[4];
    int counts[3];
    ref_inv_freq(invd, counts, &p, hd);
    float inv[4];
    for (size_t j = 0; j < h2; j++) inv[j] = (float)invd[j];
    float *c = fnew(T * h2), *s = fnew(T * h2);
    fill_pattern(c, T * h2);
    fill_pattern(s, T * h2);
    st_rope_table(c, s, inv, T, hd);
    double *cw = dnew(T * h2), *sw = dnew(T * h2);
    for (size_t t = 0; t < T; t++)
        for (size_t j = 0; j < h2; j++) {
            double a = (double)((float)t * inv[j]); /* float32 product, as HF */
            cw[t * h2 + j] = cos(a);
            sw[t * h2 + j] = sin(a);
        }
    /* Same float angle, cos/sin in double rounded to float: within 6e-8; bound 1e-6 abs. */
    struct cmp cc = compare(c, cw, T * h2), cs = compare(s, sw, T * h2);
    CHECKF(cc.err <= 1e-6, "rope_table cos: max|diff| %.3g at pos %zu j %zu: got %.9g want %.9g",
           cc.err, cc.worst / h2, cc.worst % h2, cc.got_w, cc.ref_w);
    CHECKF(cs.err <= 1e-6, "rope_table sin: max|diff| %.3g at pos %zu j %zu: got %.9g want %.9g",
           cs.err, cs.worst / h2, cs.worst % h2, cs.got_w, cs.ref_w);
    free(c);
    free(s);
    free(cw);
    free(sw);
}

TEST(gelu_helper) {
    /* st_gelu_tanh vs the float64 tanh-GELU: float32 rounding only, 1e-6 * max(1, |ref|). */
    double worst = 0;
    float worst_x = 0;
    for (int i = -2400; i <= 2400; i++) {
        float x = (float)i * 0.005f;
        double want = ref_act((double)x, ST_ACT_GELU_TANH);
        double err = fabs((double)st_gelu_tanh(x) - want) / fmax(1.0, fabs(want));
        if (!(err <= worst)) {
            worst = isfinite(err) ? err : INFINITY;
            worst_x = x;
        }
    }
    CHECKF(worst <= 1e-6, "st_gelu_tanh: rel err %.3g at x=%g", worst, worst_x);
}

/* ---------------------------------------------------------------- embedding */

struct emb_ctx {
    double *wte, *out;
    const double *dout;
    const int32_t *ids;
    double scale;
    size_t N, C;
};
static double emb_loss(const void *p) {
    const struct emb_ctx *c = p;
    ref_embedding(c->out, c->ids, c->wte, c->scale, c->N, c->C);
    return dot(c->dout, c->out, c->N * c->C);
}

TEST(embedding) {
    const size_t V = 11, C = 37, N = 9;
    const int32_t ids[9] = {3, 0, 10, 3, 7, 3, 10, 1, 5}; /* repeats: dwte rows must sum */
    const float scales[2] = {1.0f, 6.0827625f /* sqrt(37), Gemma-style */};
    for (int bi = 0; bi < NBACKENDS; bi++) {
        const struct st_kernels *kp = backend(bi);
        for (int si = 0; si < 2; si++) {
            float scale = scales[si];
            float *wte = fnew(V * C), *out = fnew(N * C), *dout = fnew(N * C);
            float *dwte = fnew(V * C), *pre = fnew(V * C);
            fill_uniform(wte, V * C, -1, 1);
            fill_uniform(dout, N * C, -1, 1);
            double *wd = to_double(wte, V * C), *dd = to_double(dout, N * C);
            double *want = dnew(N * C), *g = dnew(V * C), *scratch = dnew(N * C);

            fill_pattern(out, N * C);
            kp->embedding_forward(out, ids, wte, scale, N, C);
            ref_embedding(want, ids, wd, (double)scale, N, C);
            CHECK_CLOSE(kp, LBL("embedding fwd scale=%g", scale), out, want, N * C, FWD_TOL);

            /* dwte is a parameter gradient: `+=` onto the prefilled pattern (unused rows keep
             * it). */
            fill_pattern(pre, V * C);
            memcpy(dwte, pre, V * C * sizeof *dwte);
            kp->embedding_backward(dwte, dout, ids, scale, N, C);
            struct emb_ctx ctx = {wd, scratch, dd, ids, (double)scale, N, C};
            fd_grad(g, wd, V * C, emb_loss, &ctx);
            double *e = plus_prefill(pre, g, V * C);
            CHECK_CLOSE(kp, LBL("embedding dwte (+=) scale=%g", scale), dwte, e, V * C, BWD_TOL);

            free(e);
            free(wte), free(out), free(dout), free(dwte), free(pre);
            free(wd), free(dd), free(want), free(g), free(scratch);
        }
    }
}

/* ---------------------------------------------------------------- rmsnorm */

struct rms_ctx {
    double *inp, *w, *out;
    const double *dout;
    double eps, offset;
    size_t N, C;
};
static double rms_loss(const void *p) {
    const struct rms_ctx *c = p;
    ref_rmsnorm(c->out, NULL, c->inp, c->w, c->eps, c->offset, c->N, c->C);
    return dot(c->dout, c->out, c->N * c->C);
}

TEST(rmsnorm) {
    const size_t N = 5, Cs[3] = {37, 16, 3};
    const float eps = 1e-5f;
    for (int bi = 0; bi < NBACKENDS; bi++) {
        const struct st_kernels *kp = backend(bi);
        for (int oi = 0; oi < 2; oi++)
            for (int ci = 0; ci < 3; ci++) {
                size_t C = Cs[ci];
                float off = (float)oi;
                float *inp = fnew(N * C), *w = fnew(C), *out = fnew(N * C), *rstd = fnew(N);
                float *dout = fnew(N * C), *dinp = fnew(N * C), *dw = fnew(C);
                float *pre_i = fnew(N * C), *pre_w = fnew(C);
                fill_uniform(inp, N * C, -2, 2);
                if (off == 0)
                    fill_uniform(w, C, 0.5f, 1.5f);
                else
                    fill_uniform(w, C, -0.5f, 0.5f); /* Gemma stores w, uses (1 + w) */
                fill_uniform(dout, N * C, -1, 1);
                double *id = to_double(inp, N * C), *wd = to_double(w, C);
                double *dd = to_double(dout, N * C);
                double *want = dnew(N * C), *rwant = dnew(N), *scratch = dnew(N * C);

                fill_pattern(out, N * C);
                fill_pattern(rstd, N);
                kp->rmsnorm_forward(out, rstd, inp, w, eps, off, N, C);
                ref_rmsnorm(want, rwant, id, wd, (double)eps, (double)off, N, C);
                CHECK_CLOSE(kp, LBL("rmsnorm fwd C=%zu off=%g out", C, off), out, want, N * C,
                            FWD_TOL);
                CHECK_CLOSE(kp, LBL("rmsnorm fwd C=%zu off=%g rstd", C, off), rstd, rwant, N,
                            FWD_TOL);

                /* in place: out == inp */
                float *buf = fcopy(inp, N * C), *rstd2 = fnew(N);
                kp->rmsnorm_forward(buf, rstd2, buf, w, eps, off, N, C);
                CHECK_CLOSE(kp, LBL("rmsnorm fwd in-place C=%zu off=%g", C, off), buf, want,
                            N * C, FWD_TOL);

                /* backward: dinp `+=` (residual), dweight `+=` (parameter). */
                struct rms_ctx ctx = {id, wd, scratch, dd, (double)eps, (double)off, N, C};
                double *gi = dnew(N * C), *gw = dnew(C);
                fd_grad(gi, id, N * C, rms_loss, &ctx);
                fd_grad(gw, wd, C, rms_loss, &ctx);
                fill_pattern(pre_i, N * C);
                fill_pattern(pre_w, C);
                memcpy(dinp, pre_i, N * C * sizeof *dinp);
                memcpy(dw, pre_w, C * sizeof *dw);
                kp->rmsnorm_backward(dinp, dw, dout, inp, w, rstd, off, N, C);
                double *ei = plus_prefill(pre_i, gi, N * C), *ew = plus_prefill(pre_w, gw, C);
                CHECK_CLOSE(kp, LBL("rmsnorm dinp (+=) C=%zu off=%g", C, off), dinp, ei, N * C,
                            BWD_TOL);
                CHECK_CLOSE(kp, LBL("rmsnorm dweight (+=) C=%zu off=%g", C, off), dw, ew, C,
                            BWD_TOL);

                /* frozen norm: dweight NULL, dinp still right */
                memcpy(dinp, pre_i, N * C * sizeof *dinp);
                kp->rmsnorm_backward(dinp, NULL, dout, inp, w, rstd, off, N, C);
                CHECK_CLOSE(kp, LBL("rmsnorm dinp (+=, dweight NULL) C=%zu off=%g", C, off),
                            dinp, ei, N * C, BWD_TOL);

                free(inp), free(w), free(out), free(rstd), free(dout), free(dinp), free(dw);
                free(pre_i), free(pre_w), free(buf), free(rstd2);
                free(id), free(wd), free(dd), free(want), free(rwant), free(scratch);
                free(gi), free(gw), free(ei), free(ew);
            }
    }
}

/* ---------------------------------------------------------------- rope */

struct rope_ctx {
    double *inp, *out;
    const double *dout;
    const float *cosT, *sinT;
    const int32_t *pos;
    size_t N, nh, hd;
};
static double rope_loss(const void *p) {
    const struct rope_ctx *c = p;
    ref_rope(c->out, c->inp, c->cosT, c->sinT, c->pos, c->N, c->nh, c->hd);
    return dot(c->dout, c->out, c->N * c->nh * c->hd);
}

/* cos/sin tables (T, hd/2) built here, independently of st_rope_table. */
static void make_rope_tables(float *cosT, float *sinT, size_t T, size_t hd) {
    size_t h2 = hd / 2;
    for (size_t t = 0; t < T; t++)
        for (size_t j = 0; j < h2; j++) {
            double a = (double)t * pow(10000.0, -(double)(2 * j) / (double)hd);
            cosT[t * h2 + j] = (float)cos(a);
            sinT[t * h2 + j] = (float)sin(a);
        }
}

TEST(rope) {
    const size_t N = 5, nh = 3, T = 13, hds[3] = {10, 6, 16};
    const int32_t pos[5] = {7, 0, 12, 3, 7}; /* unsorted, repeated: the kernel must use pos[n] */
    for (int bi = 0; bi < NBACKENDS; bi++) {
        const struct st_kernels *kp = backend(bi);
        for (int hi = 0; hi < 3; hi++) {
            size_t hd = hds[hi], n = N * nh * hd;
            float *cosT = fnew(T * hd / 2), *sinT = fnew(T * hd / 2);
            make_rope_tables(cosT, sinT, T, hd);
            float *inp = fnew(n), *out = fnew(n), *dout = fnew(n), *dinp = fnew(n);
            fill_uniform(inp, n, -1, 1);
            fill_uniform(dout, n, -1, 1);
            double *id = to_double(inp, n), *dd = to_double(dout, n);
            double *want = dnew(n), *scratch = dnew(n), *g = dnew(n);

            fill_pattern(out, n);
            kp->rope_forward(out, inp, cosT, sinT, pos, N, nh, hd);
            ref_rope(want, id, cosT, sinT, pos, N, nh, hd);
            CHECK_CLOSE(kp, LBL("rope fwd hd=%zu", hd), out, want, n, FWD_TOL);
            float *buf = fcopy(inp, n);
            kp->rope_forward(buf, buf, cosT, sinT, pos, N, nh, hd);
            CHECK_CLOSE(kp, LBL("rope fwd in-place hd=%zu", hd), buf, want, n, FWD_TOL);

            /* dinp `=` R^T dout: prefilled buffer must be overwritten. */
            struct rope_ctx ctx = {id, scratch, dd, cosT, sinT, pos, N, nh, hd};
            fd_grad(g, id, n, rope_loss, &ctx);
            fill_pattern(dinp, n);
            kp->rope_backward(dinp, dout, cosT, sinT, pos, N, nh, hd);
            CHECK_CLOSE(kp, LBL("rope dinp (=) hd=%zu", hd), dinp, g, n, BWD_TOL);
            memcpy(buf, dout, n * sizeof *buf);
            kp->rope_backward(buf, buf, cosT, sinT, pos, N, nh, hd);
            CHECK_CLOSE(kp, LBL("rope dinp in-place (dinp == dout) hd=%zu", hd), buf, g, n,
                        BWD_TOL);

            free(cosT), free(sinT), free(inp), free(out), free(dout), free(dinp), free(buf);
            free(id), free(dd), free(want), free(scratch), free(g);
        }
    }
}

/* ---------------------------------------------------------------- attention */

struct att_ctx {
    double *q, *k, *v, *out;
    const double *dout;
    const int32_t *seg;
    double scale;
    int window;
    size_t B, Tq, Tk, nh, nkv, hd;
};
static double att_loss(const void *p) {
    const struct att_ctx *c = p;
    ref_attention(c->out, NULL, c->q, c->k, c->v, c->seg, c->scale, c->window, c->B, c->Tq, c->Tk,
                  c->nh, c->nkv, c->hd);
    return dot(c->dout, c->out, c->B * c->Tq * c->nh * c->hd);
}

struct att_case {
    const char *name;
    size_t B, Tq, Tk, nh, nkv, hd;
    int window, use_seg; /* use_seg > 1: segments of that many keys (else 3) */
};

/* Packed segments: contiguous runs with a boundary every len positions (3 when len < 2),
 * different per batch. */
static void make_segments_len(int32_t *seg, size_t B, size_t Tk, int len) {
    size_t L = len < 2 ? 3 : (size_t)len;
    for (size_t b = 0; b < B; b++) {
        int32_t id = (int32_t)(10 * b + 3);
        for (size_t j = 0; j < Tk; j++) {
            if (j > 0 && (j + b) % L == 0) id++;
            seg[b * Tk + j] = id;
        }
    }
}
static void make_segments(int32_t *seg, size_t B, size_t Tk) { make_segments_len(seg, B, Tk, 3); }

TEST(attention) {
    const struct att_case cases[] = {
        {"mha", 1, 5, 5, 3, 3, 6, 0, 0},
        {"gqa nh=6 nkv=2", 2, 5, 5, 6, 2, 10, 0, 0},
        {"kv-cache Tq=3 Tk=7", 2, 3, 7, 6, 2, 6, 0, 0},
        {"decode Tq=1 Tk=6", 2, 1, 6, 6, 2, 10, 0, 0},
        {"window=3", 2, 7, 7, 4, 2, 10, 3, 0},
        {"seg packing", 2, 8, 8, 6, 2, 10, 0, 1},
        /* keys 0..2 seen by no query: dk, dv rows there must be 0 (`=`) */
        {"mqa+kv-cache+window=3+seg", 2, 4, 9, 6, 1, 6, 3, 1},
        /* hd % 16 == 0: the cpu table's AVX-512 kernel where the CPU has it (13 rows: two
         * 6-row tiles and a 1-row tail) */
        {"hd=16 gqa T=13", 1, 13, 13, 4, 2, 16, 0, 0},
        {"hd=32 kv-cache Tq=5 Tk=11 window=4 seg", 2, 5, 11, 4, 2, 32, 4, 1},
    };
    for (int bi = 0; bi < NBACKENDS + 1; bi++) { /* ref, cpu, cpu's portable attention */
        const struct st_kernels *kp = bi < NBACKENDS ? backend(bi) : cpu_portable_attention();
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            const struct att_case *a = &cases[ci];
            size_t nq = a->B * a->Tq * a->nh * a->hd, nk = a->B * a->Tk * a->nkv * a->hd;
            size_t na = a->B * a->nh * a->Tq;
            float scale = 1.0f / sqrtf((float)a->hd);
            int32_t *seg = NULL;
            if (a->use_seg) {
                seg = malloc(a->B * a->Tk * sizeof *seg);
                if (!seg) abort();
                make_segments(seg, a->B, a->Tk);
            }
            float *q = fnew(nq), *k = fnew(nk), *v = fnew(nk), *out = fnew(nq), *att = fnew(na);
            float *dout = fnew(nq), *dq = fnew(nq), *dk = fnew(nk), *dv = fnew(nk);
            fill_uniform(q, nq, -2, 2);
            fill_uniform(k, nk, -2, 2);
            fill_uniform(v, nk, -1, 1);
            fill_uniform(dout, nq, -1, 1);
            double *qd = to_double(q, nq), *kd = to_double(k, nk), *vd = to_double(v, nk);
            double *dd = to_double(dout, nq);
            double *want = dnew(nq), *awant = dnew(na), *scratch = dnew(nq);

            fill_pattern(out, nq);
            for (size_t i = 0; i < na; i++) att[i] = 7.0f; /* lse: every row written */
            kp->attention_forward(out, att, q, k, v, seg, scale, a->window, a->B, a->Tq, a->Tk,
                                  a->nh, a->nkv, a->hd);
            ref_attention(want, awant, qd, kd, vd, seg, (double)scale, a->window, a->B, a->Tq,
                          a->Tk, a->nh, a->nkv, a->hd);
            CHECK_CLOSE(kp, LBL("attention fwd %s out", a->name), out, want, nq, FWD_TOL);
            CHECK_CLOSE(kp, LBL("attention fwd %s log-sum-exp", a->name), att, awant, na, FWD_TOL);

            /* dq, dk, dv `=`: prefilled buffers must be overwritten. */
            struct att_ctx ctx = {qd, kd, vd, scratch, dd, seg, (double)scale, a->window,
                                  a->B, a->Tq, a->Tk, a->nh, a->nkv, a->hd};
            double *gq = dnew(nq), *gk = dnew(nk), *gv = dnew(nk);
            fd_grad(gq, qd, nq, att_loss, &ctx);
            fd_grad(gk, kd, nk, att_loss, &ctx);
            fd_grad(gv, vd, nk, att_loss, &ctx);
            fill_pattern(dq, nq);
            fill_pattern(dk, nk);
            fill_pattern(dv, nk);
            kp->attention_backward(dq, dk, dv, dout, out, att, q, k, v, seg, scale, a->window,
                                   a->B, a->Tq, a->Tk, a->nh, a->nkv, a->hd);
            CHECK_CLOSE(kp, LBL("attention %s dq (=)", a->name), dq, gq, nq, BWD_TOL);
            CHECK_CLOSE(kp, LBL("attention %s dk (=)", a->name), dk, gk, nk, BWD_TOL);
            CHECK_CLOSE(kp, LBL("attention %s dv (=)", a->name), dv, gv, nk, BWD_TOL);

            free(seg), free(q), free(k), free(v), free(out), free(att), free(dout);
            free(dq), free(dk), free(dv), free(qd), free(kd), free(vd), free(dd);
            free(want), free(awant), free(scratch), free(gq), free(gk), free(gv);
        }
    }
}

/* ---------------------------------------------------------------- glu */

struct glu_ctx {
    double *gate, *up, *out;
    const double *dout;
    enum st_act act;
    size_t N, H;
};
static double glu_loss(const void *p) {
    const struct glu_ctx *c = p;
    ref_glu(c->out, c->gate, c->up, c->act, c->N, c->H);
    return dot(c->dout, c->out, c->N * c->H);
}

TEST(glu) {
    const size_t N = 5, Hs[3] = {23, 1, 16};
    const enum st_act acts[2] = {ST_ACT_SILU, ST_ACT_GELU_TANH};
    const char *act_names[2] = {"silu", "gelu_tanh"};
    for (int bi = 0; bi < NBACKENDS; bi++) {
        const struct st_kernels *kp = backend(bi);
        for (int ai = 0; ai < 2; ai++)
            for (int hi = 0; hi < 3; hi++) {
                size_t H = Hs[hi], n = N * H;
                enum st_act act = acts[ai];
                float *gate = fnew(n), *up = fnew(n), *out = fnew(n), *dout = fnew(n);
                float *dgate = fnew(n), *dup = fnew(n);
                fill_uniform(gate, n, -5, 5);
                fill_uniform(up, n, -2, 2);
                fill_uniform(dout, n, -1, 1);
                double *gd = to_double(gate, n), *ud = to_double(up, n), *dd = to_double(dout, n);
                double *want = dnew(n), *scratch = dnew(n), *gg = dnew(n), *gu = dnew(n);

                fill_pattern(out, n);
                kp->glu_forward(out, gate, up, act, N, H);
                ref_glu(want, gd, ud, act, N, H);
                CHECK_CLOSE(kp, LBL("glu fwd %s H=%zu", act_names[ai], H), out, want, n, FWD_TOL);

                /* dgate, dup `=` */
                struct glu_ctx ctx = {gd, ud, scratch, dd, act, N, H};
                fd_grad(gg, gd, n, glu_loss, &ctx);
                fd_grad(gu, ud, n, glu_loss, &ctx);
                fill_pattern(dgate, n);
                fill_pattern(dup, n);
                kp->glu_backward(dgate, dup, dout, gate, up, act, N, H);
                CHECK_CLOSE(kp, LBL("glu dgate (=) %s H=%zu", act_names[ai], H), dgate, gg, n,
                            BWD_TOL);
                CHECK_CLOSE(kp, LBL("glu dup (=) %s H=%zu", act_names[ai], H), dup, gu, n,
                            BWD_TOL);

                free(gate), free(up), free(out), free(dout), free(dgate), free(dup);
                free(gd), free(ud), free(dd), free(want), free(scratch), free(gg), free(gu);
            }
    }
}


/* ---------------------------------------------------------------- lora */

struct lora_ctx {
    double *inp, *a, *b, *out, *h;
    const double *dout;
    double scale;
    size_t N, C, OC, r;
};
/* out = scale * (inp a^T) b^T in float64 (the LoRA term alone; out starts at 0) */
static void ref_lora(const struct lora_ctx *c) {
    for (size_t n = 0; n < c->N; n++) {
        for (size_t k = 0; k < c->r; k++) {
            double s = 0;
            for (size_t j = 0; j < c->C; j++) s += c->inp[n * c->C + j] * c->a[k * c->C + j];
            c->h[n * c->r + k] = s;
        }
        for (size_t o = 0; o < c->OC; o++) {
            double s = 0;
            for (size_t k = 0; k < c->r; k++) s += c->h[n * c->r + k] * c->b[o * c->r + k];
            c->out[n * c->OC + o] = c->scale * s;
        }
    }
}
static double lora_loss(const void *p) {
    const struct lora_ctx *c = p;
    ref_lora(c);
    return dot(c->dout, c->out, c->N * c->OC);
}

TEST(lora) {
    const struct {
        size_t N, C, OC, r;
    } cases[] = {{5, 37, 23, 4}, {3, 16, 16, 1}, {1, 9, 30, 8}, {7, 12, 5, 3}};
    for (int bi = 0; bi < NBACKENDS; bi++) {
        const struct st_kernels *kp = backend(bi);
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            size_t N = cases[ci].N, C = cases[ci].C, OC = cases[ci].OC, r = cases[ci].r;
            float scale = 1.75f;
            float *inp = fnew(N * C), *a = fnew(r * C), *b = fnew(OC * r), *out = fnew(N * OC);
            float *xa = fnew(N * r), *dout = fnew(N * OC), *dinp = fnew(N * C);
            float *da = fnew(r * C), *db = fnew(OC * r), *dxa = fnew(N * r);
            float *pre_o = fnew(N * OC), *pre_i = fnew(N * C), *pre_a = fnew(r * C),
                  *pre_b = fnew(OC * r);
            fill_uniform(inp, N * C, -1, 1);
            fill_uniform(a, r * C, -1, 1);
            fill_uniform(b, OC * r, -1, 1);
            fill_uniform(dout, N * OC, -1, 1);
            double *id = to_double(inp, N * C), *ad = to_double(a, r * C), *bd = to_double(b, OC * r);
            double *dd = to_double(dout, N * OC), *want = dnew(N * OC), *h = dnew(N * r);
            struct lora_ctx ctx = {id, ad, bd, want, h, dd, scale, N, C, OC, r};
            /* forward: out += scale (inp a^T) b^T on top of what is there; xa saved */
            fill_pattern(pre_o, N * OC);
            memcpy(out, pre_o, N * OC * sizeof *out);
            kp->lora_forward(out, xa, inp, a, b, scale, N, C, OC, r);
            ref_lora(&ctx);
            double *ewant = plus_prefill(pre_o, want, N * OC);
            CHECK_CLOSE(kp, LBL("lora fwd (+=) N=%zu C=%zu OC=%zu r=%zu", N, C, OC, r), out, ewant,
                        N * OC, FWD_TOL);
            CHECK_CLOSE(kp, LBL("lora xa N=%zu r=%zu", N, r), xa, h, N * r, FWD_TOL);
            /* backward: da, db, dinp all += */
            double *gi = dnew(N * C), *ga = dnew(r * C), *gb = dnew(OC * r);
            fd_grad(gi, id, N * C, lora_loss, &ctx);
            fd_grad(ga, ad, r * C, lora_loss, &ctx);
            fd_grad(gb, bd, OC * r, lora_loss, &ctx);
            fill_pattern(pre_i, N * C);
            fill_pattern(pre_a, r * C);
            fill_pattern(pre_b, OC * r);
            double *ei = plus_prefill(pre_i, gi, N * C), *ea = plus_prefill(pre_a, ga, r * C);
            double *eb = plus_prefill(pre_b, gb, OC * r);
            for (int with_dinp = 1; with_dinp >= 0; with_dinp--) {
                memcpy(dinp, pre_i, N * C * sizeof *dinp);
                memcpy(da, pre_a, r * C * sizeof *da);
                memcpy(db, pre_b, OC * r * sizeof *db);
                kp->lora_backward(with_dinp ? dinp : NULL, da, db, dxa, dout, inp, xa, a, b, scale,
                                  N, C, OC, r);
                if (with_dinp)
                    CHECK_CLOSE(kp, LBL("lora dinp (+=) N=%zu C=%zu OC=%zu r=%zu", N, C, OC, r),
                                dinp, ei, N * C, BWD_TOL);
                CHECK_CLOSE(kp, LBL("lora da (+=) N=%zu C=%zu r=%zu", N, C, r), da, ea, r * C,
                            BWD_TOL);
                CHECK_CLOSE(kp, LBL("lora db (+=) N=%zu OC=%zu r=%zu", N, OC, r), db, eb, OC * r,
                            BWD_TOL);
            }
            free(inp), free(a), free(b), free(out), free(xa), free(dout), free(dinp), free(da);
            free(db), free(dxa), free(pre_o), free(pre_i), free(pre_a), free(pre_b), free(id);
            free(ad), free(bd), free(dd), free(want), free(h), free(gi), free(ga), free(gb);
            free(ei), free(ea), free(eb), free(ewant);
        }
    }
}

/* ---------------------------------------------------------------- linear */

struct lin_ctx {
    double *inp, *w, *bias, *out;
    const double *dout;
    size_t N, C, OC;
};
static double lin_loss(const void *p) {
    const struct lin_ctx *c = p;
    ref_linear(c->out, c->inp, c->w, c->bias, c->N, c->C, c->OC);
    return dot(c->dout, c->out, c->N * c->OC);
}

TEST(linear) {
    const struct {
        size_t N, C, OC;
        int bias;
    } cases[] = {{5, 37, 23, 1}, {5, 37, 23, 0}, {3, 10, 1, 0}, {1, 1, 7, 1}, {2, 17, 33, 1}};
    for (int bi = 0; bi < NBACKENDS; bi++) {
        const struct st_kernels *kp = backend(bi);
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            size_t N = cases[ci].N, C = cases[ci].C, OC = cases[ci].OC;
            int hb = cases[ci].bias;
            float *inp = fnew(N * C), *w = fnew(OC * C), *bias = fnew(OC), *out = fnew(N * OC);
            float *dout = fnew(N * OC), *dinp = fnew(N * C), *dw = fnew(OC * C), *db = fnew(OC);
            float *pre_i = fnew(N * C), *pre_w = fnew(OC * C), *pre_b = fnew(OC);
            fill_uniform(inp, N * C, -1, 1);
            fill_uniform(w, OC * C, -1, 1);
            fill_uniform(bias, OC, -1, 1);
            fill_uniform(dout, N * OC, -1, 1);
            double *id = to_double(inp, N * C), *wd = to_double(w, OC * C);
            double *bd = hb ? to_double(bias, OC) : dnew(OC); /* zero bias == NULL bias */
            double *dd = to_double(dout, N * OC);
            double *want = dnew(N * OC), *scratch = dnew(N * OC);

            fill_pattern(out, N * OC);
            kp->linear_forward(out, inp, w, hb ? bias : NULL, N, C, OC);
            ref_linear(want, id, wd, hb ? bd : NULL, N, C, OC);
            CHECK_CLOSE(kp, LBL("linear fwd N=%zu C=%zu OC=%zu bias=%d", N, C, OC, hb), out, want,
                        N * OC, FWD_TOL);

            /* dinp, dw, dbias all `+=`; each may be NULL. FD with respect to a bias vector
             * (zero when the layer has none): its gradient is sum_n dout either way. */
            struct lin_ctx ctx = {id, wd, bd, scratch, dd, N, C, OC};
            double *gi = dnew(N * C), *gw = dnew(OC * C), *gb = dnew(OC);
            fd_grad(gi, id, N * C, lin_loss, &ctx);
            fd_grad(gw, wd, OC * C, lin_loss, &ctx);
            fd_grad(gb, bd, OC, lin_loss, &ctx);
            fill_pattern(pre_i, N * C);
            fill_pattern(pre_w, OC * C);
            fill_pattern(pre_b, OC);
            double *ei = plus_prefill(pre_i, gi, N * C), *ew = plus_prefill(pre_w, gw, OC * C);
            double *eb = plus_prefill(pre_b, gb, OC);
            for (int mask = 7; mask >= 0; mask--) {
                memcpy(dinp, pre_i, N * C * sizeof *dinp);
                memcpy(dw, pre_w, OC * C * sizeof *dw);
                memcpy(db, pre_b, OC * sizeof *db);
                kp->linear_backward(mask & 1 ? dinp : NULL, mask & 2 ? dw : NULL,
                                    mask & 4 ? db : NULL, dout, inp, w, N, C, OC);
                if (mask & 1)
                    CHECK_CLOSE(kp, LBL("linear dinp (+=) N=%zu C=%zu OC=%zu mask=%d", N, C, OC,
                                        mask),
                                dinp, ei, N * C, BWD_TOL);
                if (mask & 2)
                    CHECK_CLOSE(kp, LBL("linear dw (+=) N=%zu C=%zu OC=%zu mask=%d", N, C, OC,
                                        mask),
                                dw, ew, OC * C, BWD_TOL);
                if (mask & 4)
                    CHECK_CLOSE(kp, LBL("linear dbias (+=) N=%zu C=%zu OC=%zu mask=%d", N, C, OC,
                                        mask),
                                db, eb, OC, BWD_TOL);
            }

            free(inp), free(w), free(bias), free(out), free(dout), free(dinp), free(dw), free(db);
            free(pre_i), free(pre_w), free(pre_b), free(id), free(wd), free(bd), free(dd);
            free(want), free(scratch), free(gi), free(gw), free(gb), free(ei), free(ew), free(eb);
        }
    }
}

/* ---------------------------------------------------------------- cross-entropy */

struct ce_ctx {
    double *logits, *losses;
    const int32_t *targets;
    double dloss;
    size_t N, V;
};
static double ce_loss(const void *p) {
    const struct ce_ctx *c = p;
    ref_crossentropy(c->losses, c->logits, c->targets, c->N, c->V);
    double s = 0;
    for (size_t n = 0; n < c->N; n++) s += c->losses[n];
    return c->dloss * s;
}

TEST(crossentropy) {
    const size_t N = 6, V = 67;
    const int32_t targets[6] = {5, -100, 0, 66, -100, 31};
    const float dloss = 0.37f;
    for (int bi = 0; bi < NBACKENDS; bi++) {
        const struct st_kernels *kp = backend(bi);
        float *logits = fnew(N * V), *losses = fnew(N), *dl = fnew(N * V);
        fill_uniform(logits, N * V, -4, 4);
        double *ld = to_double(logits, N * V), *want = dnew(N), *scratch = dnew(N);
        double *g = dnew(N * V);

        fill_pattern(losses, N);
        kp->crossentropy_forward(losses, logits, targets, N, V);
        ref_crossentropy(want, ld, targets, N, V);
        CHECK_CLOSE(kp, "crossentropy fwd", losses, want, N, FWD_TOL);
        CHECKF(losses[1] == 0.0f && losses[4] == 0.0f, "%s crossentropy: ignored losses %g %g",
               kp->name, losses[1], losses[4]);

        /* dlogits `=` dloss * d(sum losses)/dlogits; ignored rows exactly 0. */
        struct ce_ctx ctx = {ld, scratch, targets, (double)dloss, N, V};
        fd_grad(g, ld, N * V, ce_loss, &ctx);
        fill_pattern(dl, N * V);
        kp->crossentropy_backward(dl, logits, targets, dloss, N, V);
        CHECK_CLOSE(kp, "crossentropy dlogits (=) dloss=0.37", dl, g, N * V, BWD_TOL);
        int zero = 1;
        for (size_t i = 0; i < V; i++) zero &= dl[1 * V + i] == 0.0f && dl[4 * V + i] == 0.0f;
        CHECKF(zero, "%s crossentropy: ignored rows of dlogits not exactly 0", kp->name);

        /* in place: dlogits == logits */
        float *buf = fcopy(logits, N * V);
        kp->crossentropy_backward(buf, buf, targets, dloss, N, V);
        CHECK_CLOSE(kp, "crossentropy dlogits in-place", buf, g, N * V, BWD_TOL);

        free(logits), free(losses), free(dl), free(buf), free(ld), free(want), free(scratch);
        free(g);
    }
}

TEST(crossentropy_stability) {
    const size_t N = 5, V = 67;
    const int32_t targets[5] = {7, 8, 3, 10, -100};
    const float dloss = 0.37f;
    float *logits = fnew(N * V);
    for (size_t i = 0; i < V; i++) {
        logits[0 * V + i] = i == 7 ? 1000.0f : -1000.0f; /* loss ~ 0 */
        logits[1 * V + i] = i == 7 ? 1000.0f : -1000.0f; /* target at -1000: loss ~ 2000 */
        logits[2 * V + i] = i % 2 ? 1000.0f : -1000.0f;  /* many maxima + target 999 */
        logits[3 * V + i] = 1000.0f - 0.5f * (float)i;   /* large common offset */
        logits[4 * V + i] = i % 3 ? -1000.0f : 1000.0f;  /* ignored */
    }
    logits[2 * V + 3] = 999.0f;
    double *ld = to_double(logits, N * V), *want = dnew(N), *gwant = dnew(N * V);
    ref_crossentropy(want, ld, targets, N, V);
    ref_crossentropy_grad(gwant, ld, targets, (double)dloss, N, V);
    for (int bi = 0; bi < NBACKENDS; bi++) {
        const struct st_kernels *kp = backend(bi);
        float *losses = fnew(N), *dl = fnew(N * V);
        fill_pattern(losses, N);
        kp->crossentropy_forward(losses, logits, targets, N, V);
        CHECKF(all_finite(losses, N), "%s crossentropy +-1000: non-finite loss", kp->name);
        /* losses up to 2000: float32 relative rounding; 1e-5 * max(1, max|ref|) */
        CHECK_CLOSE(kp, "crossentropy fwd +-1000", losses, want, N, FWD_TOL);
        fill_pattern(dl, N * V);
        kp->crossentropy_backward(dl, logits, targets, dloss, N, V);
        CHECKF(all_finite(dl, N * V), "%s crossentropy +-1000: non-finite dlogits", kp->name);
        /* analytic float64 gradient; float32 softmax is accurate to ~1e-7 here */
        CHECK_CLOSE(kp, "crossentropy dlogits +-1000", dl, gwant, N * V, FWD_TOL);
        free(losses), free(dl);
    }
    free(logits), free(ld), free(want), free(gwant);
}

/* The cpu attention (float and BF16) does not depend on the thread count (each output element is
 * summed by one task, in an order fixed by the shapes): bitwise the same results with 1 and 3
 * threads. */
#ifdef _OPENMP
static void attention_threads_of(const struct st_kernels *cpu) {
    const size_t B = 2, Tq = 90, Tk = 100, nh = 6, nkv = 2, hd = 64;
    size_t nq = B * Tq * nh * hd, nk = B * Tk * nkv * hd, na = B * nh * Tq;
    int32_t seg[2 * 100];
    make_segments(seg, B, Tk);
    float *q = fnew(nq), *k = fnew(nk), *v = fnew(nk), *dout = fnew(nq), *o[2], *l[2], *dq[2],
          *dk[2], *dv[2];
    fill_uniform(q, nq, -2, 2);
    fill_uniform(k, nk, -2, 2);
    fill_uniform(v, nk, -1, 1);
    fill_uniform(dout, nq, -1, 1);
    int saved = omp_get_max_threads();
    for (int i = 0; i < 2; i++) {
        omp_set_num_threads(i ? 3 : 1);
        o[i] = fnew(nq), l[i] = fnew(na), dq[i] = fnew(nq), dk[i] = fnew(nk), dv[i] = fnew(nk);
        cpu->attention_forward(o[i], l[i], q, k, v, seg, 0.125f, 40, B, Tq, Tk, nh, nkv, hd);
        cpu->attention_backward(dq[i], dk[i], dv[i], dout, o[i], l[i], q, k, v, seg, 0.125f, 40,
                                B, Tq, Tk, nh, nkv, hd);
    }
    omp_set_num_threads(saved);
    CHECKF(memcmp(o[0], o[1], nq * sizeof(float)) == 0, "%s: out", cpu->name);
    CHECKF(memcmp(l[0], l[1], na * sizeof(float)) == 0, "%s: lse", cpu->name);
    CHECKF(memcmp(dq[0], dq[1], nq * sizeof(float)) == 0, "%s: dq", cpu->name);
    CHECKF(memcmp(dk[0], dk[1], nk * sizeof(float)) == 0, "%s: dk", cpu->name);
    CHECKF(memcmp(dv[0], dv[1], nk * sizeof(float)) == 0, "%s: dv", cpu->name);
    for (int i = 0; i < 2; i++) free(o[i]), free(l[i]), free(dq[i]), free(dk[i]), free(dv[i]);
    free(q), free(k), free(v), free(dout);
}

/* Three forwards side by side, each on a thread of its own (nested regions of one thread, as
 * eval runs rows), give the bits of one forward alone; T past the forward's 512-row query
 * chunk. */
static void attention_nested_of(const struct st_kernels *cpu) {
    const size_t B = 1, T = 600, nh = 4, nkv = 2, hd = 64;
    size_t nq = B * T * nh * hd, nk = B * T * nkv * hd, na = B * nh * T;
    int32_t seg[600];
    make_segments(seg, B, T);
    float *q = fnew(nq), *k = fnew(nk), *v = fnew(nk), *o[4], *l[4];
    fill_uniform(q, nq, -2, 2);
    fill_uniform(k, nk, -2, 2);
    fill_uniform(v, nk, -1, 1);
    for (int i = 0; i < 4; i++) o[i] = fnew(nq), l[i] = fnew(na);
    cpu->attention_forward(o[0], l[0], q, k, v, seg, 0.125f, 0, B, T, T, nh, nkv, hd);
#pragma omp parallel for num_threads(3) schedule(static, 1)
    for (int i = 1; i < 4; i++) {
        omp_set_num_threads(1);
        cpu->attention_forward(o[i], l[i], q, k, v, seg, 0.125f, 0, B, T, T, nh, nkv, hd);
    }
    for (int i = 1; i < 4; i++) {
        CHECKF(memcmp(o[0], o[i], nq * sizeof(float)) == 0, "%s nested %d: out", cpu->name, i);
        CHECKF(memcmp(l[0], l[i], na * sizeof(float)) == 0, "%s nested %d: lse", cpu->name, i);
    }
    for (int i = 0; i < 4; i++) free(o[i]), free(l[i]);
    free(q), free(k), free(v);
}
#endif
TEST(attention_threads) {
#ifndef _OPENMP
    TEST_SKIP("built without OpenMP");
#else
    attention_threads_of(st_kernels_cpu());
    attention_threads_of(st_kernels_cpu_bf16());
    attention_nested_of(st_kernels_cpu());
    attention_nested_of(st_kernels_cpu_bf16());
#endif
}

/* ---------------------------------------------------------------- cpu vs ref, larger shapes */

#define CHECK_XBT(what, a, b, n, tol)                                                         \
    do {                                                                                      \
        double *bd_ = to_double((b), (n));                                                    \
        CHECK_CLOSE(cpu, (what), (a), bd_, (n), (tol));                                       \
        free(bd_);                                                                            \
    } while (0)
#define CHECK_XB(what, a, b, n) CHECK_XBT(what, a, b, n, XB_TOL)

/* The cpu LoRA kernels on larger odd shapes and ranks against ref, with 1 and 3 threads. */
TEST(lora_large) {
    const struct st_kernels *cpu = st_kernels_cpu(), *ref = st_kernels_ref();
    const struct {
        size_t N, C, OC, r;
    } cases[] = {{131, 200, 77, 8},    {70, 65, 130, 3},  {33, 97, 64, 17},
                 {100, 576, 192, 64}, {300, 700, 333, 9}, /* above the kernels' threading size */
                 {37, 9, 5, 300},
                 /* K = OC > 512 in dout b (two k blocks), and on 3 threads several 256-column
                  * slices per thread in the reductions */
                 {150, 1100, 900, 8}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        size_t N = cases[ci].N, C = cases[ci].C, OC = cases[ci].OC, r = cases[ci].r;
        float *inp = fnew(N * C), *a = fnew(r * C), *b = fnew(OC * r), *dout = fnew(N * OC);
        fill_uniform(inp, N * C, -1, 1);
        fill_uniform(a, r * C, -1, 1);
        fill_uniform(b, OC * r, -1, 1);
        fill_uniform(dout, N * OC, -1, 1);
        float *o[3], *xa[3], *di[3], *da[3], *db[3], *dxa[3];
        for (int i = 0; i < 3; i++) { /* 0: cpu 1 thread, 1: cpu 3 threads, 2: ref */
            const struct st_kernels *kp = i == 2 ? ref : cpu;
            o[i] = fnew(N * OC), xa[i] = fnew(N * r), di[i] = fnew(N * C), da[i] = fnew(r * C);
            db[i] = fnew(OC * r), dxa[i] = fnew(N * r);
            fill_pattern(o[i], N * OC), fill_pattern(di[i], N * C), fill_pattern(da[i], r * C);
            fill_pattern(db[i], OC * r);
#ifdef _OPENMP
            int saved = omp_get_max_threads();
            omp_set_num_threads(i == 1 ? 3 : 1);
#endif
            kp->lora_forward(o[i], xa[i], inp, a, b, 0.75f, N, C, OC, r);
            kp->lora_backward(di[i], da[i], db[i], dxa[i], dout, inp, xa[i], a, b, 0.75f, N, C,
                              OC, r);
#ifdef _OPENMP
            omp_set_num_threads(saved);
#endif
        }
        CHECK_XB(LBL("cpu~ref lora out N=%zu C=%zu OC=%zu r=%zu", N, C, OC, r), o[0], o[2], N * OC);
        CHECK_XB(LBL("cpu~ref lora xa r=%zu", r), xa[0], xa[2], N * r);
        CHECK_XB(LBL("cpu~ref lora dinp r=%zu", r), di[0], di[2], N * C);
        CHECK_XB(LBL("cpu~ref lora da r=%zu", r), da[0], da[2], r * C);
        CHECK_XB(LBL("cpu~ref lora db r=%zu", r), db[0], db[2], OC * r);
        CHECK_XB(LBL("cpu(3 threads)~ref lora out r=%zu", r), o[1], o[2], N * OC);
        CHECK_XB(LBL("cpu(3 threads)~ref lora dinp r=%zu", r), di[1], di[2], N * C);
        CHECK_XB(LBL("cpu(3 threads)~ref lora da r=%zu", r), da[1], da[2], r * C);
        CHECK_XB(LBL("cpu(3 threads)~ref lora db r=%zu", r), db[1], db[2], OC * r);
        /* rows (forward, dinp) and column chunks (da, db) are split over threads, each output
         * summed by one thread in a fixed order: the same bits for any thread count */
        CHECK(memcmp(o[0], o[1], N * OC * sizeof(float)) == 0);
        CHECK(memcmp(di[0], di[1], N * C * sizeof(float)) == 0);
        CHECK(memcmp(da[0], da[1], r * C * sizeof(float)) == 0);
        CHECK(memcmp(db[0], db[1], OC * r * sizeof(float)) == 0);
        CHECK(memcmp(xa[0], xa[1], N * r * sizeof(float)) == 0);
        CHECK(memcmp(dxa[0], dxa[1], N * r * sizeof(float)) == 0);
        for (int i = 0; i < 3; i++)
            free(o[i]), free(xa[i]), free(di[i]), free(da[i]), free(db[i]), free(dxa[i]);
        free(inp), free(a), free(b), free(dout);
    }
}

/* bf16 of x, round to nearest even (finite x) */
static float bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}
static float *bf16_copy(const float *x, size_t n) {
    float *y = fnew(n);
    for (size_t i = 0; i < n; i++) y[i] = bf16_round(x[i]);
    return y;
}

/* cpu's attention against ref's on case a: max|diff| <= tol * max(1, max|ref|). bf_inputs: ref
 * gets q, k, v and dout rounded to bf16 (what a BF16 kernel multiplies). */
/* cpu-bf16's attention runs its BF16 path: AVX512_BF16 and the AVX-512 kernel (on AMX CPUs, whose
 * vdpbf16ps issues at half the fp32 FMA rate, the products on the tile unit; test_kernels_noamx
 * runs the vdpbf16ps path there) */
static int bf16_attention(void) { return st_bf16_native() && st_cpu_attention_native(); }

static void xb_attention(const struct st_kernels *cpu, const struct st_kernels *ref,
                         const struct att_case *a, double tol, int bf_inputs) {
    size_t nq = a->B * a->Tq * a->nh * a->hd, nk = a->B * a->Tk * a->nkv * a->hd;
    size_t na = a->B * a->nh * a->Tq;
    float scale = 1.0f / sqrtf((float)a->hd);
    int32_t *seg = NULL;
    if (a->use_seg) {
        seg = malloc(a->B * a->Tk * sizeof *seg);
        if (!seg) abort();
        make_segments_len(seg, a->B, a->Tk, a->use_seg);
    }
    float *q = fnew(nq), *k = fnew(nk), *v = fnew(nk), *dout = fnew(nq);
    fill_uniform(q, nq, -2, 2);
    fill_uniform(k, nk, -2, 2);
    fill_uniform(v, nk, -1, 1);
    fill_uniform(dout, nq, -1, 1);
    float *rq = bf_inputs ? bf16_copy(q, nq) : q, *rk = bf_inputs ? bf16_copy(k, nk) : k;
    float *rv = bf_inputs ? bf16_copy(v, nk) : v, *rd = bf_inputs ? bf16_copy(dout, nq) : dout;
    float *o[2], *att[2], *dq[2], *dk[2], *dv[2];
    for (int i = 0; i < 2; i++) {
        const struct st_kernels *kp = i ? ref : cpu;
        o[i] = fnew(nq), att[i] = fnew(na), dq[i] = fnew(nq), dk[i] = fnew(nk), dv[i] = fnew(nk);
        fill_pattern(o[i], nq);
        fill_pattern(att[i], na);
        fill_pattern(dq[i], nq);
        fill_pattern(dk[i], nk);
        fill_pattern(dv[i], nk);
        kp->attention_forward(o[i], att[i], i ? rq : q, i ? rk : k, i ? rv : v, seg, scale,
                              a->window, a->B, a->Tq, a->Tk, a->nh, a->nkv, a->hd);
    }
    for (int i = 0; i < 2; i++) /* both backwards on ref's out/lse, so only the backward differs */
        (i ? ref : cpu)->attention_backward(dq[i], dk[i], dv[i], i ? rd : dout, o[1], att[1],
                                            i ? rq : q, i ? rk : k, i ? rv : v, seg, scale,
                                            a->window, a->B, a->Tq, a->Tk, a->nh, a->nkv, a->hd);
    CHECK_XBT(LBL("cpu~ref attention %s out", a->name), o[0], o[1], nq, tol);
    CHECK_XBT(LBL("cpu~ref attention %s lse", a->name), att[0], att[1], na, tol);
    CHECK_XBT(LBL("cpu~ref attention %s dq", a->name), dq[0], dq[1], nq, tol);
    CHECK_XBT(LBL("cpu~ref attention %s dk", a->name), dk[0], dk[1], nk, tol);
    CHECK_XBT(LBL("cpu~ref attention %s dv", a->name), dv[0], dv[1], nk, tol);
    for (int i = 0; i < 2; i++) free(o[i]), free(att[i]), free(dq[i]), free(dk[i]), free(dv[i]);
    if (bf_inputs) free(rq), free(rk), free(rv), free(rd);
    free(seg), free(q), free(k), free(v), free(dout);
}

TEST(cpu_matches_ref) {
    /* Tolerance for every check here: max|cpu - ref| <= 1e-5 * max(1, max|ref|). */
    const struct st_kernels *cpu = st_kernels_cpu(), *ref = st_kernels_ref();

    { /* linear N=64 C=96 OC=80 with bias */
        const size_t N = 64, C = 96, OC = 80;
        float *inp = fnew(N * C), *w = fnew(OC * C), *bias = fnew(OC), *dout = fnew(N * OC);
        fill_uniform(inp, N * C, -1, 1);
        fill_uniform(w, OC * C, -1, 1);
        fill_uniform(bias, OC, -1, 1);
        fill_uniform(dout, N * OC, -1, 1);
        float *o[2], *di[2], *dw[2], *db[2];
        for (int i = 0; i < 2; i++) {
            const struct st_kernels *kp = i ? ref : cpu;
            o[i] = fnew(N * OC), di[i] = fnew(N * C), dw[i] = fnew(OC * C), db[i] = fnew(OC);
            fill_pattern(o[i], N * OC);
            fill_pattern(di[i], N * C);
            fill_pattern(dw[i], OC * C);
            fill_pattern(db[i], OC);
            kp->linear_forward(o[i], inp, w, bias, N, C, OC);
            kp->linear_backward(di[i], dw[i], db[i], dout, inp, w, N, C, OC);
        }
        CHECK_XB("cpu~ref linear out", o[0], o[1], N * OC);
        CHECK_XB("cpu~ref linear dinp", di[0], di[1], N * C);
        CHECK_XB("cpu~ref linear dw", dw[0], dw[1], OC * C);
        CHECK_XB("cpu~ref linear dbias", db[0], db[1], OC);
        for (int i = 0; i < 2; i++) free(o[i]), free(di[i]), free(dw[i]), free(db[i]);
        free(inp), free(w), free(bias), free(dout);
    }

    /* Attention: the AVX-512 kernel (hd % 16 == 0, on CPUs with it) and the portable one, on
     * several key blocks of 64 and row tiles of 6 with tails, GQA 9/3, Tq < Tk, windows (down to
     * 1: every row sees only its own key), segments, hd 16..256 and one hd the fast kernel does
     * not take (40). */
    const struct att_case acases[] = {
        {"B=2 T=33 nh=4 nkv=2 hd=16", 2, 33, 33, 4, 2, 16, 0, 0},
        {"B=2 Tq=17 Tk=33 window=9 seg", 2, 17, 33, 4, 2, 16, 9, 1},
        {"B=1 T=40 nh=8 nkv=1 hd=64", 1, 40, 40, 8, 1, 64, 0, 0},
        {"B=2 T=131 nh=9 nkv=3 hd=64", 2, 131, 131, 9, 3, 64, 0, 0},
        {"B=1 T=1 nh=9 nkv=3 hd=64", 1, 1, 1, 9, 3, 64, 0, 0},
        {"B=2 Tq=1 Tk=150 hd=64 (decode)", 2, 1, 150, 4, 2, 64, 0, 0},
        {"B=2 Tq=37 Tk=200 hd=128 window=70 seg", 2, 37, 200, 4, 2, 128, 70, 1},
        {"B=1 T=77 hd=80 window=1", 1, 77, 77, 2, 1, 80, 1, 0},
        {"B=1 T=67 hd=256 seg", 1, 67, 67, 2, 1, 256, 0, 1},
        /* keys 0..90 are seen by no query: their dk, dv rows must be 0 */
        {"B=1 Tq=20 Tk=140 hd=48 window=30", 1, 20, 140, 6, 2, 48, 30, 0},
        {"B=1 T=200 hd=32 window=100 seg", 1, 200, 200, 3, 1, 32, 100, 1},
        {"B=1 T=70 hd=40 (portable)", 1, 70, 70, 4, 2, 40, 0, 0},
        /* more than one chunk of query rows (512; 8192 / group with many query heads) */
        {"B=1 Tq=600 Tk=700 hd=32 window=300 seg", 1, 600, 700, 2, 1, 32, 300, 1},
        {"B=1 T=300 nh=32 nkv=1 hd=16", 1, 300, 300, 32, 1, 16, 0, 0},
    };
    for (size_t i = 0; i < sizeof acases / sizeof acases[0]; i++) {
        xb_attention(cpu, ref, &acases[i], XB_TOL, 0);
        xb_attention(cpu_portable_attention(), ref, &acases[i], XB_TOL, 0);
    }

    /* Row-wise ops: sizes past 32768 (65536 for cross-entropy) elements so that backends which
     * thread only above a size threshold run their threaded path here. */
    { /* rmsnorm N=131 C=259 offset 1 */
        const size_t N = 131, C = 259;
        float *inp = fnew(N * C), *w = fnew(C), *dout = fnew(N * C);
        fill_uniform(inp, N * C, -2, 2);
        fill_uniform(w, C, -0.5f, 0.5f);
        fill_uniform(dout, N * C, -1, 1);
        float *o[2], *r[2], *di[2], *dw[2];
        for (int i = 0; i < 2; i++) {
            const struct st_kernels *kp = i ? ref : cpu;
            o[i] = fnew(N * C), r[i] = fnew(N), di[i] = fnew(N * C), dw[i] = fnew(C);
            fill_pattern(di[i], N * C);
            fill_pattern(dw[i], C);
            kp->rmsnorm_forward(o[i], r[i], inp, w, 1e-6f, 1.0f, N, C);
        }
        for (int i = 0; i < 2; i++) /* both on ref's rstd */
            (i ? ref : cpu)->rmsnorm_backward(di[i], dw[i], dout, inp, w, r[1], 1.0f, N, C);
        CHECK_XB("cpu~ref rmsnorm out", o[0], o[1], N * C);
        CHECK_XB("cpu~ref rmsnorm rstd", r[0], r[1], N);
        CHECK_XB("cpu~ref rmsnorm dinp", di[0], di[1], N * C);
        for (int i = 0; i < 2; i++) { /* frozen weight (NULL dweight): the row-parallel path */
            fill_pattern(di[i], N * C);
            (i ? ref : cpu)->rmsnorm_backward(di[i], NULL, dout, inp, w, r[1], 1.0f, N, C);
        }
        CHECK_XB("cpu~ref rmsnorm dinp (frozen weight)", di[0], di[1], N * C);
        CHECK_XB("cpu~ref rmsnorm dweight", dw[0], dw[1], C);
        for (int i = 0; i < 2; i++) free(o[i]), free(r[i]), free(di[i]), free(dw[i]);
        free(inp), free(w), free(dout);
    }

    for (int ai = 0; ai < 2; ai++) { /* glu N=131 H=259 */
        const size_t N = 131, H = 259, n = N * H;
        enum st_act act = ai ? ST_ACT_GELU_TANH : ST_ACT_SILU;
        float *gate = fnew(n), *up = fnew(n), *dout = fnew(n);
        fill_uniform(gate, n, -6, 6);
        fill_uniform(up, n, -2, 2);
        fill_uniform(dout, n, -1, 1);
        float *o[2], *dg[2], *du[2];
        for (int i = 0; i < 2; i++) {
            const struct st_kernels *kp = i ? ref : cpu;
            o[i] = fnew(n), dg[i] = fnew(n), du[i] = fnew(n);
            fill_pattern(dg[i], n);
            fill_pattern(du[i], n);
            kp->glu_forward(o[i], gate, up, act, N, H);
            kp->glu_backward(dg[i], du[i], dout, gate, up, act, N, H);
        }
        CHECK_XB(LBL("cpu~ref glu act=%d out", ai), o[0], o[1], n);
        CHECK_XB(LBL("cpu~ref glu act=%d dgate", ai), dg[0], dg[1], n);
        CHECK_XB(LBL("cpu~ref glu act=%d dup", ai), du[0], du[1], n);
        for (int i = 0; i < 2; i++) free(o[i]), free(dg[i]), free(du[i]);
        free(gate), free(up), free(dout);
    }

    { /* rope N=161 nh=4 hd=64 T=200 */
        const size_t N = 161, nh = 4, hd = 64, T = 200, n = N * nh * hd;
        float *cosT = fnew(T * hd / 2), *sinT = fnew(T * hd / 2);
        make_rope_tables(cosT, sinT, T, hd);
        int32_t pos[161];
        for (size_t i = 0; i < N; i++) pos[i] = (int32_t)(rng_u32() % T);
        float *inp = fnew(n), *dout = fnew(n);
        fill_uniform(inp, n, -1, 1);
        fill_uniform(dout, n, -1, 1);
        float *o[2], *di[2];
        for (int i = 0; i < 2; i++) {
            const struct st_kernels *kp = i ? ref : cpu;
            o[i] = fnew(n), di[i] = fnew(n);
            fill_pattern(di[i], n);
            kp->rope_forward(o[i], inp, cosT, sinT, pos, N, nh, hd);
            kp->rope_backward(di[i], dout, cosT, sinT, pos, N, nh, hd);
        }
        CHECK_XB("cpu~ref rope out", o[0], o[1], n);
        CHECK_XB("cpu~ref rope dinp", di[0], di[1], n);
        for (int i = 0; i < 2; i++) free(o[i]), free(di[i]);
        free(cosT), free(sinT), free(inp), free(dout);
    }

    { /* embedding V=50 C=259 N=140 */
        const size_t V = 50, C = 259, N = 140;
        int32_t ids[140];
        for (size_t i = 0; i < N; i++) ids[i] = (int32_t)(rng_u32() % V);
        float *wte = fnew(V * C), *dout = fnew(N * C);
        fill_uniform(wte, V * C, -1, 1);
        fill_uniform(dout, N * C, -1, 1);
        float *o[2], *dw[2];
        for (int i = 0; i < 2; i++) {
            const struct st_kernels *kp = i ? ref : cpu;
            o[i] = fnew(N * C), dw[i] = fnew(V * C);
            fill_pattern(dw[i], V * C);
            kp->embedding_forward(o[i], ids, wte, 3.5f, N, C);
            kp->embedding_backward(dw[i], dout, ids, 3.5f, N, C);
        }
        CHECK_XB("cpu~ref embedding out", o[0], o[1], N * C);
        CHECK_XB("cpu~ref embedding dwte", dw[0], dw[1], V * C);
        for (int i = 0; i < 2; i++) free(o[i]), free(dw[i]);
        free(wte), free(dout);
    }

    { /* crossentropy N=67 V=1031 */
        const size_t N = 67, V = 1031;
        int32_t targets[67];
        for (size_t i = 0; i < N; i++) targets[i] = (int32_t)(rng_u32() % V);
        targets[0] = 0, targets[1] = 1030, targets[2] = -100, targets[5] = -1;
        float *logits = fnew(N * V);
        fill_uniform(logits, N * V, -8, 8);
        float *l[2], *d[2];
        for (int i = 0; i < 2; i++) {
            const struct st_kernels *kp = i ? ref : cpu;
            l[i] = fnew(N), d[i] = fnew(N * V);
            fill_pattern(d[i], N * V);
            kp->crossentropy_forward(l[i], logits, targets, N, V);
            kp->crossentropy_backward(d[i], logits, targets, 0.37f, N, V);
        }
        CHECK_XB("cpu~ref crossentropy losses", l[0], l[1], N);
        CHECK_XB("cpu~ref crossentropy dlogits", d[0], d[1], N * V);
        for (int i = 0; i < 2; i++) free(l[i]), free(d[i]);
        free(logits);
    }
}

/* --compute bf16's attention (st_kernels_cpu_bf16: the five products in BF16 where the CPU has
 * AVX512_BF16 and hd % 32 == 0, the float kernel otherwise) against the ref kernels run on q, k,
 * v and dout rounded to bf16, on the shapes of cpu_matches_ref and more: key blocks with tails,
 * odd row and key counts (pairs padded with zeros), GQA, Tq < Tk, windows, short and long
 * segments across key blocks, several query chunks. What remains is the rounding of P and dS to
 * bf16 (relative 2^-9): measured up to 4e-3 of max(1, max|ref|), so BF_TOL = 8e-3; an index or
 * padding error gives errors of order 1. */
#define BF_TOL 8e-3
TEST(attention_bf16) {
    const struct st_kernels *bf = st_kernels_cpu_bf16(), *cpu = st_kernels_cpu();
    const struct st_kernels *ref = st_kernels_ref();
    const struct att_case cases[] = {
        {"B=2 T=33 nh=4 nkv=2 hd=32", 2, 33, 33, 4, 2, 32, 0, 0},
        {"B=2 Tq=17 Tk=33 window=9 seg hd=32", 2, 17, 33, 4, 2, 32, 9, 1},
        {"B=1 T=40 nh=8 nkv=1 hd=64", 1, 40, 40, 8, 1, 64, 0, 0},
        {"B=2 T=131 nh=9 nkv=3 hd=64", 2, 131, 131, 9, 3, 64, 0, 0},
        {"B=1 T=1 nh=9 nkv=3 hd=64", 1, 1, 1, 9, 3, 64, 0, 0},
        {"B=2 Tq=1 Tk=150 hd=64 (decode)", 2, 1, 150, 4, 2, 64, 0, 0},
        {"B=2 Tq=37 Tk=201 hd=128 window=70 seg", 2, 37, 201, 4, 2, 128, 70, 1},
        {"B=1 T=67 hd=256 seg", 1, 67, 67, 2, 1, 256, 0, 1},
        {"B=1 Tq=20 Tk=141 hd=96 window=31", 1, 20, 141, 6, 2, 96, 31, 0},
        {"B=1 T=77 hd=64 window=1", 1, 77, 77, 2, 1, 64, 1, 0},
        {"B=1 T=70 hd=48 (float kernel)", 1, 70, 70, 4, 2, 48, 0, 0},
        {"B=1 Tq=601 Tk=701 hd=32 window=300 seg", 1, 601, 701, 2, 1, 32, 300, 1},
        /* segments of 97 keys across key blocks, a window inside them */
        {"B=2 Tq=150 Tk=203 hd=64 window=45 seg=97", 2, 150, 203, 6, 2, 64, 45, 97},
        {"B=1 T=301 hd=128 seg=61", 1, 301, 301, 4, 4, 128, 0, 61},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* else the float kernel, held to its own tolerance */
        int bfk = cases[i].hd % 32 == 0 && bf16_attention();
        xb_attention(bf, ref, &cases[i], bfk ? BF_TOL : XB_TOL, bfk);
    }

    /* the BF16 path really runs where it should: its output differs from the float kernel's */
    const struct att_case *a = &cases[3];
    size_t nq = a->B * a->Tq * a->nh * a->hd, nk = a->B * a->Tk * a->nkv * a->hd;
    float *q = fnew(nq), *k = fnew(nk), *v = fnew(nk), *dy = fnew(nq), *o[2], *l[2], *g[2][3];
    fill_uniform(q, nq, -2, 2);
    fill_uniform(k, nk, -2, 2);
    fill_uniform(v, nk, -1, 1);
    fill_uniform(dy, nq, -1, 1);
    for (int i = 0; i < 2; i++) {
        const struct st_kernels *kp = i ? cpu : bf;
        o[i] = fnew(nq), l[i] = fnew(a->B * a->nh * a->Tq);
        g[i][0] = fnew(nq), g[i][1] = fnew(nk), g[i][2] = fnew(nk);
        kp->attention_forward(o[i], l[i], q, k, v, NULL, 0.125f, 0, a->B, a->Tq, a->Tk, a->nh,
                              a->nkv, a->hd);
    }
    for (int i = 0; i < 2; i++) /* both on the float kernel's out and lse */
        (i ? cpu : bf)->attention_backward(g[i][0], g[i][1], g[i][2], dy, o[1], l[1], q, k, v,
                                           NULL, 0.125f, 0, a->B, a->Tq, a->Tk, a->nh, a->nkv,
                                           a->hd);
    int same = memcmp(o[0], o[1], nq * sizeof(float)) == 0 &&
               memcmp(g[0][0], g[1][0], nq * sizeof(float)) == 0 &&
               memcmp(g[0][1], g[1][1], nk * sizeof(float)) == 0;
    if (bf16_attention())
        CHECKF(!same, "cpu-bf16 attention gave the float kernel's bits on a CPU with AVX512_BF16");
    else
        CHECKF(same, "cpu-bf16 attention without AVX512_BF16 must be the float kernel");
    for (int i = 0; i < 2; i++) free(o[i]), free(l[i]), free(g[i][0]), free(g[i][1]), free(g[i][2]);
    free(q), free(k), free(v), free(dy);

    /* The forward and the backward with their per-thread buffers of rounded Q (and dO) rows and
     * without them (the allocation failing, or a thread past the buffers taking a task) give the
     * same bits, on query offsets Tk - Tq that are odd (panels from an even row of the chunk
     * either way) */
    const struct att_case *odd[] = {&cases[8], &cases[12]};
    for (size_t c = 0; c < 2; c++) {
        a = odd[c];
        nq = a->B * a->Tq * a->nh * a->hd, nk = a->B * a->Tk * a->nkv * a->hd;
        float *x[4], *y[2][3], *lse = fnew(a->B * a->nh * a->Tq), *out = fnew(nq);
        int32_t *seg = malloc(a->B * a->Tk * sizeof *seg);
        if (!seg) abort();
        for (size_t i = 0; i < a->B * a->Tk; i++) seg[i] = (int32_t)((i % a->Tk) / 97);
        for (int i = 0; i < 4; i++) x[i] = fnew(i == 1 || i == 2 ? nk : nq);
        for (int i = 0; i < 4; i++) fill_uniform(x[i], i == 1 || i == 2 ? nk : nq, -1, 1);
        const int32_t *sg = a->use_seg ? seg : NULL;
        bf->attention_forward(out, lse, x[0], x[1], x[2], sg, 0.125f, a->window, a->B, a->Tq,
                              a->Tk, a->nh, a->nkv, a->hd);
        { /* the forward's rounded query rows: per chunk in a buffer, or (no buffer) per tile */
            float *o2 = fnew(nq), *l2 = fnew(a->B * a->nh * a->Tq);
            st_alloc_fail_nth(1);
            bf->attention_forward(o2, l2, x[0], x[1], x[2], sg, 0.125f, a->window, a->B, a->Tq,
                                  a->Tk, a->nh, a->nkv, a->hd);
            st_alloc_fail_nth(0);
            CHECKF(memcmp(o2, out, nq * 4) == 0 && memcmp(l2, lse, a->B * a->nh * a->Tq * 4) == 0,
                   "%s: attention forward with and without its row buffer differ", a->name);
            free(o2), free(l2);
        }
        for (int f = 0; f < 2; f++) {
            y[f][0] = fnew(nq), y[f][1] = fnew(nk), y[f][2] = fnew(nk);
            if (f) st_alloc_fail_nth(1);
            bf->attention_backward(y[f][0], y[f][1], y[f][2], x[3], out, lse, x[0], x[1], x[2], sg,
                                   0.125f, a->window, a->B, a->Tq, a->Tk, a->nh, a->nkv, a->hd);
            st_alloc_fail_nth(0);
        }
        CHECKF(memcmp(y[0][0], y[1][0], nq * 4) == 0 && memcmp(y[0][1], y[1][1], nk * 4) == 0 &&
                   memcmp(y[0][2], y[1][2], nk * 4) == 0,
               "%s: attention backward with and without its row buffer differ", a->name);
        for (int i = 0; i < 4; i++) free(x[i]);
        for (int f = 0; f < 2; f++) free(y[f][0]), free(y[f][1]), free(y[f][2]);
        free(lse), free(out), free(seg);
    }
}

int main(void) {
    RUN(tables_complete);
    RUN(rope_inv_freq);
    RUN(rope_table);
    RUN(gelu_helper);
    if (!tables_ok) return test_finish(); /* calling a NULL entry would crash the binary */
    RUN(embedding);
    RUN(rmsnorm);
    RUN(rope);
    RUN(attention);
    RUN(attention_threads);
    RUN(glu);
    RUN(linear);
    RUN(lora);
    RUN(crossentropy);
    RUN(crossentropy_stability);
    RUN(lora_large);
    RUN(cpu_matches_ref);
    RUN(attention_bf16);
    return test_finish();
}
