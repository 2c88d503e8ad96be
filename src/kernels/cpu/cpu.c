/* cpu.c: the CPU backend. Plain matmuls go to OpenBLAS (sgemm), LoRA to lora.c, attention to
 * attention.c; row-wise ops run on OpenMP-parallel chunks of rows, most with the reference's
 * code (identical to ref), RMSNorm and GLU with vector loops. Faster fused kernels replace
 * entries here as the profile asks. */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../ref/ref.h"
#include "attention.h"
#include "lora.h"
#include "fexp.h"
#include "streamtune/bf16.h"
#include "streamtune/f32.h"


static void linear_forward(float *out, const float *inp, const float *w, const float *bias,
                           size_t N, size_t C, size_t OC) {
    // out (N, OC) = inp (N, C) @ w (OC, C)^T
    if (bias) {
        for (size_t n = 0; n < N; n++) memcpy(out + n * OC, bias, OC * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OC, (int)C, 1.0f, inp,
                (int)C, w, (int)C, bias ? 1.0f : 0.0f, out, (int)OC);
}

static void linear_backward(float *dinp, float *dw, float *dbias, const float *dout,
                            const float *inp, const float *w, size_t N, size_t C, size_t OC) {
    if (dinp) // dinp (N, C) += dout (N, OC) @ w (OC, C)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)C, (int)OC, 1.0f,
                    dout, (int)OC, w, (int)C, 1.0f, dinp, (int)C);
    if (dw) // dw (OC, C) += dout^T (OC, N) @ inp (N, C)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)OC, (int)C, (int)N, 1.0f, dout,
                    (int)OC, inp, (int)C, 1.0f, dw, (int)C);
    if (dbias)
        for (size_t n = 0; n < N; n++)
            for (size_t o = 0; o < OC; o++) dbias[o] += dout[n * OC + o];
}

/* One row of the reference's RMSNorm with vector loops: the double sums are reassociated (omp
 * simd reduction over double lanes; the reference's serial double chain took ~4 cycles per
 * element, 2% of a training step), everything else as ref. */
static void rms_row_forward(float *y, float *rstd, const float *x, const float *w, float eps,
                            float offset, size_t C) {
    double ss = 0;
#pragma omp simd reduction(+ : ss)
    for (size_t c = 0; c < C; c++) ss += (double)x[c] * x[c];
    float r = (float)(1.0 / sqrt(ss / (double)C + eps));
    *rstd = r;
#pragma omp simd
    for (size_t c = 0; c < C; c++) y[c] = x[c] * r * (w[c] + offset);
}

/* dx += r (dy g - xh mean(dy g xh)), xh = x r, g = w + offset (frozen weight) */
static void rms_row_backward(float *dx, const float *dy, const float *x, const float *w, float r,
                             float offset, size_t C) {
    double dot = 0;
#pragma omp simd reduction(+ : dot)
    for (size_t c = 0; c < C; c++) dot += (double)dy[c] * (w[c] + offset) * x[c] * r;
    float m = (float)(dot / (double)C);
#pragma omp simd
    for (size_t c = 0; c < C; c++) dx[c] += r * (dy[c] * (w[c] + offset) - x[c] * r * m);
}

static void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                            float eps, float offset, size_t N, size_t C) {
#pragma omp parallel for schedule(static) if (N * C > 32768)
    for (size_t n = 0; n < N; n++)
        rms_row_forward(out + n * C, rstd + n, inp + n * C, weight, eps, offset, C);
}

/* Rows split over threads when the weight is frozen (dweight NULL: LoRA training); with a weight
 * gradient the reference's single pass keeps its summation order. */
static void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                             const float *weight, const float *rstd, float offset, size_t N,
                             size_t C) {
    if (dweight) {
        st_ref_rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, offset, N, C);
        return;
    }
#pragma omp parallel for schedule(static) if (N * C > 32768)
    for (size_t n = 0; n < N; n++)
        rms_row_backward(dinp + n * C, dout + n * C, inp + n * C, weight, rstd[n], offset, C);
}

static void rope_forward(float *out, const float *inp, const float *cos_t, const float *sin_t,
                         const int32_t *pos, size_t N, size_t nh, size_t hd) {
#pragma omp parallel for schedule(static) if (N * nh * hd > 32768)
    for (size_t n = 0; n < N; n++)
        st_ref_rope_forward(out + n * nh * hd, inp + n * nh * hd, cos_t, sin_t, pos + n, 1, nh,
                            hd);
}

static void rope_backward(float *dinp, const float *dout, const float *cos_t, const float *sin_t,
                          const int32_t *pos, size_t N, size_t nh, size_t hd) {
#pragma omp parallel for schedule(static) if (N * nh * hd > 32768)
    for (size_t n = 0; n < N; n++)
        st_ref_rope_backward(dinp + n * nh * hd, dout + n * nh * hd, cos_t, sin_t, pos + n, 1, nh,
                             hd);
}

/* Attention: src/kernels/cpu/attention.c (AVX-512 register-blocked kernel, portable fallback). */

#if defined(__x86_64__)
#include <immintrin.h>
/* fexp on 16 lanes (same polynomial) */

__attribute__((target("avx512f"))) static float row_lse_avx512(const float *x, size_t V) {
    __m512 vm = _mm512_set1_ps(-INFINITY);
    size_t v = 0;
    for (; v + 16 <= V; v += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(x + v));
    float m = _mm512_reduce_max_ps(vm);
    for (; v < V; v++) m = x[v] > m ? x[v] : m;
    __m512 vs = _mm512_setzero_ps(), mm = _mm512_set1_ps(m);
    for (v = 0; v + 16 <= V; v += 16) vs = _mm512_add_ps(vs, fexp16(_mm512_sub_ps(_mm512_loadu_ps(x + v), mm)));
    float s = _mm512_reduce_add_ps(vs);
    for (; v < V; v++) s += fexp(x[v] - m);
    return m + logf(s);
}

/* d = scale * exp(x - lse) */
__attribute__((target("avx512f"))) static void softmax_scaled_avx512(float *d, const float *x,
                                                                     float lse, float scale,
                                                                     size_t V) {
    __m512 l = _mm512_set1_ps(lse), sc = _mm512_set1_ps(scale);
    size_t v = 0;
    for (; v + 16 <= V; v += 16)
        _mm512_storeu_ps(d + v, _mm512_mul_ps(sc, fexp16(_mm512_sub_ps(_mm512_loadu_ps(x + v), l))));
    for (; v < V; v++) d[v] = scale * fexp(x[v] - lse);
}
#endif

static int have_avx512(void) {
#if defined(__x86_64__)
    static int v = -1;
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512f");
    }
    return v;
#else
    return 0;
#endif
}

/* GLU with the activation built on fexp so the loops vectorise (libm's expf/tanhf calls kept them
 * scalar: 5% of a bf16 training step). SiLU: s = 1 / (1 + e^-x); tanh(u) = 1 - 2 / (e^2u + 1),
 * with 2u clamped to +-40 (tanh is +-1 in float there). Elements [i0, i1) per call: AVX-512 in
 * vectors of 16, the scalar code for the rest and on other CPUs (same formulas). */
#define GELU_C 0.7978845608028654f /* sqrt(2/pi) */

static inline float tanh_f(float u) {
    float u2 = 2.0f * u;
    u2 = u2 > 40.0f ? 40.0f : u2 < -40.0f ? -40.0f : u2;
    return 1.0f - 2.0f / (fexp(u2) + 1.0f);
}

/* a(x) and a'(x) of the activation */
static inline void act_scalar(float x, enum st_act act, float *a, float *da) {
    if (act == ST_ACT_SILU) {
        float s = 1.0f / (1.0f + fexp(-x));
        *a = x * s;
        *da = s * (1.0f + x * (1.0f - s));
    } else {
        float t = tanh_f(GELU_C * (x + 0.044715f * x * x * x));
        *a = 0.5f * x * (1.0f + t);
        *da = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_C * (1.0f + 3 * 0.044715f * x * x);
    }
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static inline void act16(__m512 x, enum st_act act, __m512 *a,
                                                            __m512 *da) {
    const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
    if (act == ST_ACT_SILU) {
        __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, fexp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
        *a = _mm512_mul_ps(x, s);
        if (da) *da = _mm512_mul_ps(s, _mm512_fmadd_ps(x, _mm512_sub_ps(one, s), one));
    } else {
        __m512 x2 = _mm512_mul_ps(x, x);
        __m512 u = _mm512_mul_ps(_mm512_set1_ps(GELU_C),
                                 _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), x2), x, x));
        __m512 u2 = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(u, u), _mm512_set1_ps(-40.0f)),
                                  _mm512_set1_ps(40.0f));
        __m512 t = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(fexp16(u2), one)));
        __m512 opt = _mm512_add_ps(one, t);
        *a = _mm512_mul_ps(_mm512_mul_ps(half, x), opt);
        if (da) {
            __m512 g = _mm512_fmadd_ps(_mm512_set1_ps(3 * 0.044715f), x2, one);
            __m512 r = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(half, x), _mm512_fnmadd_ps(t, t, one)),
                                     _mm512_mul_ps(_mm512_set1_ps(GELU_C), g));
            *da = _mm512_fmadd_ps(half, opt, r);
        }
    }
}

__attribute__((target("avx512f"))) static size_t glu_fwd16(float *out, const float *gate,
                                                           const float *up, enum st_act act,
                                                           size_t i0, size_t i1) {
    size_t i = i0;
    for (; i + 16 <= i1; i += 16) {
        __m512 a;
        act16(_mm512_loadu_ps(gate + i), act, &a, NULL);
        _mm512_storeu_ps(out + i, _mm512_mul_ps(a, _mm512_loadu_ps(up + i)));
    }
    return i;
}

__attribute__((target("avx512f"))) static size_t glu_bwd16(float *dgate, float *dup,
                                                           const float *dout, const float *gate,
                                                           const float *up, enum st_act act,
                                                           size_t i0, size_t i1) {
    size_t i = i0;
    for (; i + 16 <= i1; i += 16) {
        __m512 a, da, dy = _mm512_loadu_ps(dout + i);
        act16(_mm512_loadu_ps(gate + i), act, &a, &da);
        _mm512_storeu_ps(dup + i, _mm512_mul_ps(dy, a));
        _mm512_storeu_ps(dgate + i, _mm512_mul_ps(_mm512_mul_ps(dy, _mm512_loadu_ps(up + i)), da));
    }
    return i;
}
#endif

#define GLU_CHUNK 4096 /* elements per parallel work item */

static void glu_forward(float *out, const float *gate, const float *up, enum st_act act, size_t N,
                        size_t H) {
    size_t n = N * H, nc = (n + GLU_CHUNK - 1) / GLU_CHUNK;
    int v16 = have_avx512();
#pragma omp parallel for schedule(static) if (n > 32768)
    for (size_t c = 0; c < nc; c++) {
        size_t i = c * GLU_CHUNK, i1 = i + GLU_CHUNK < n ? i + GLU_CHUNK : n;
#if defined(__x86_64__)
        if (v16) i = glu_fwd16(out, gate, up, act, i, i1);
#endif
        for (; i < i1; i++) {
            float a, da;
            act_scalar(gate[i], act, &a, &da);
            out[i] = a * up[i];
        }
    }
    (void)v16;
}

static void glu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                         const float *up, enum st_act act, size_t N, size_t H) {
    size_t n = N * H, nc = (n + GLU_CHUNK - 1) / GLU_CHUNK;
    int v16 = have_avx512();
#pragma omp parallel for schedule(static) if (n > 32768)
    for (size_t c = 0; c < nc; c++) {
        size_t i = c * GLU_CHUNK, i1 = i + GLU_CHUNK < n ? i + GLU_CHUNK : n;
#if defined(__x86_64__)
        if (v16) i = glu_bwd16(dgate, dup, dout, gate, up, act, i, i1);
#endif
        for (; i < i1; i++) {
            float a, da;
            act_scalar(gate[i], act, &a, &da);
            dup[i] = dout[i] * a;
            dgate[i] = dout[i] * up[i] * da;
        }
    }
    (void)v16;
}

/* log sum_v exp(x_v): max, then the sum of fexp */
static float row_lse(const float *x, size_t V) {
#if defined(__x86_64__)
    if (have_avx512()) return row_lse_avx512(x, V);
#endif
    float m = -INFINITY;
    for (size_t v = 0; v < V; v++) m = x[v] > m ? x[v] : m;
    double s = 0;
    for (size_t v = 0; v < V; v++) s += fexp(x[v] - m);
    return m + (float)log(s);
}

static void softmax_scaled(float *d, const float *x, float lse, float scale, size_t V) {
#if defined(__x86_64__)
    if (have_avx512()) {
        softmax_scaled_avx512(d, x, lse, scale, V);
        return;
    }
#endif
    for (size_t v = 0; v < V; v++) d[v] = scale * fexp(x[v] - lse);
}

static void crossentropy_forward(float *losses, const float *logits, const int32_t *targets,
                                 size_t N, size_t V) {
#pragma omp parallel for schedule(static) if (N * V > 65536)
    for (size_t n = 0; n < N; n++)
        losses[n] = targets[n] < 0 ? 0.0f : row_lse(logits + n * V, V) - logits[n * V + targets[n]];
}

static void crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets,
                                  float dloss, size_t N, size_t V) {
#pragma omp parallel for schedule(static) if (N * V > 65536)
    for (size_t n = 0; n < N; n++) {
        float *d = dlogits + n * V;
        const float *x = logits + n * V;
        if (targets[n] < 0) {
            memset(d, 0, V * sizeof(float));
            continue;
        }
        float lse = row_lse(x, V), xt = x[targets[n]];
        softmax_scaled(d, x, lse, dloss, V);
        d[targets[n]] = dloss * (fexp(xt - lse) - 1.0f);
    }
}

/* Every entry but the name and attention (which --compute bf16 swaps for its BF16 path) */
#define CPU_ENTRIES                                                                           \
    .embedding_forward = st_ref_embedding_forward,                                            \
    .embedding_backward = st_ref_embedding_backward, .rmsnorm_forward = rmsnorm_forward,      \
    .rmsnorm_backward = rmsnorm_backward, .rope_forward = rope_forward,                       \
    .rope_backward = rope_backward, .glu_forward = glu_forward, .glu_backward = glu_backward, \
    .linear_forward = linear_forward, .linear_backward = linear_backward,                     \
    .lora_forward = st_cpu_lora_forward, .lora_backward = st_cpu_lora_backward,               \
    .crossentropy_forward = crossentropy_forward,                                             \
    .crossentropy_backward = crossentropy_backward

static const struct st_kernels cpu_table = {
    .name = "cpu",
    .attention_forward = st_cpu_attention_forward,
    .attention_backward = st_cpu_attention_backward,
    CPU_ENTRIES,
};

/* --compute bf16: attention's products in BF16 (attention.h) */
static const struct st_kernels cpu_bf16_table = {
    .name = "cpu-bf16",
    .attention_forward = st_cpu_attention_forward_bf16,
    .attention_backward = st_cpu_attention_backward_bf16,
    CPU_ENTRIES,
};

/* The CPU checks cache their answer in a static on first use; make that first use here, at model
 * load on one thread, rather than in threads that run forwards side by side (eval's rows). */
static void detect_once(void) {
    (void)have_avx512();
    (void)st_cpu_attention_native();
    (void)st_cpu_lora_native();
    (void)st_f32_native();
    (void)st_bf16_native();
    (void)st_bf16_amx();
}

const struct st_kernels *st_kernels_cpu(void) {
    detect_once();
    return &cpu_table;
}
const struct st_kernels *st_kernels_cpu_bf16(void) {
    detect_once();
    return &cpu_bf16_table;
}
