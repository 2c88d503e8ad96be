/* streamtune kernels: forward/backward pairs over plain float32 arrays with explicit sizes.
 *
 * DESIGN: argument order is outputs, forward caches, inputs and weights, scalars, sizes.
 * Accumulation rule, stated per kernel: parameter gradients `+=`, activation gradients `=`, and
 * gradients that flow into the residual stream or a shared input `+=`. Kernels never allocate and
 * never create threads of their own (the cpu table may use OpenMP loops). A backend is a table of
 * these functions (struct st_kernels); model code only calls through the table.
 * Layouts are row-major; "(N, C)" means N rows of C contiguous floats. */
#ifndef STREAMTUNE_KERNELS_H
#define STREAMTUNE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "streamtune/config.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- RoPE frequency table (not a kernel: computed once per model) ---- */
struct st_rope_params {
    double theta;
    enum st_rope_type type;
    double factor, low_freq_factor, high_freq_factor;
    int original_max_pos;
};
/* inv_freq (hd/2): HF "rotate_half" frequencies with linear or llama3 scaling applied. */
void st_rope_inv_freq(float *inv_freq, const struct st_rope_params *p, size_t hd);
/* cos, sin (T, hd/2) for positions 0..T-1. The angle is the float32 product (float)pos *
 * inv_freq[j], exactly as Hugging Face computes it (so long positions round the same way); cos and
 * sin of that float angle are then taken in double and rounded. */
void st_rope_table(float *cos, float *sin, const float *inv_freq, size_t T, size_t hd);

/* The backend table. Every entry has a reference implementation in src/kernels/ref. */
struct st_kernels {
    const char *name;

    /* out (N, C) = wte[ids[n]] * scale; wte (V, C). ids must be in [0, V): checked by callers. */
    void (*embedding_forward)(float *out, const int32_t *ids, const float *wte, float scale,
                              size_t N, size_t C);
    /* dwte (V, C) += scale * dout rows at ids. */
    void (*embedding_backward)(float *dwte, const float *dout, const int32_t *ids, float scale,
                               size_t N, size_t C);

    /* out (N, C) = inp * rstd * (weight + offset); rstd (N) saved for backward.
     * offset is 0 (Llama) or 1 (Gemma's (1 + w)). out may equal inp. */
    void (*rmsnorm_forward)(float *out, float *rstd, const float *inp, const float *weight,
                            float eps, float offset, size_t N, size_t C);
    /* dinp (N, C) += ..., dweight (C) += ... (dweight may be NULL for a frozen norm). */
    void (*rmsnorm_backward)(float *dinp, float *dweight, const float *dout, const float *inp,
                             const float *weight, const float *rstd, float offset, size_t N,
                             size_t C);

    /* Rotate-half RoPE on x (N, nh, hd) at positions pos (N) using cos/sin tables (T, hd/2)
     * with every pos < T. out may equal inp. */
    void (*rope_forward)(float *out, const float *inp, const float *cos, const float *sin,
                         const int32_t *pos, size_t N, size_t nh, size_t hd);
    /* dinp (N, nh, hd) = R^T dout. dinp may equal dout. */
    void (*rope_backward)(float *dinp, const float *dout, const float *cos, const float *sin,
                          const int32_t *pos, size_t N, size_t nh, size_t hd);

    /* Causal multi-head attention with GQA (query head h reads kv head h / (nh / nkv)).
     * q (B, Tq, nh, hd); k, v (B, Tk, nkv, hd) with Tk >= Tq; out (B, Tq, nh, hd);
     * lse (B, nh, Tq) = log sum_j exp(s_ij) per query row, saved for backward (flash-style: the
     * T x T probabilities are never stored; -inf for a row that sees no key).
     * Query i sits at position p = Tk - Tq + i and sees key j iff j <= p, and p - j < window
     * when window > 0, and seg[b, j] == seg[b, p] when seg (B, Tk) is not NULL (packing).
     * scale multiplies q.k (1/sqrt(hd) for these families). */
    void (*attention_forward)(float *out, float *lse, const float *q, const float *k,
                              const float *v, const int32_t *seg, float scale, int window,
                              size_t B, size_t Tq, size_t Tk, size_t nh, size_t nkv, size_t hd);
    /* dq (B, Tq, nh, hd) =, dk, dv (B, Tk, nkv, hd) =; recomputes the probabilities from q, k,
     * lse (same seg/window as the forward); out is the forward's output. */
    void (*attention_backward)(float *dq, float *dk, float *dv, const float *dout,
                               const float *out, const float *lse, const float *q, const float *k,
                               const float *v, const int32_t *seg, float scale, int window,
                               size_t B, size_t Tq, size_t Tk, size_t nh, size_t nkv, size_t hd);

    /* Gated MLP nonlinearity: out (N, H) = act(gate) * up, act = SiLU (SwiGLU) or tanh-GELU
     * (GeGLU). */
    void (*glu_forward)(float *out, const float *gate, const float *up, enum st_act act,
                        size_t N, size_t H);
    /* dgate, dup (N, H) =. */
    void (*glu_backward)(float *dgate, float *dup, const float *dout, const float *gate,
                         const float *up, enum st_act act, size_t N, size_t H);

    /* out (N, OC) = inp (N, C) @ w (OC, C)^T + bias (OC) (bias may be NULL). */
    void (*linear_forward)(float *out, const float *inp, const float *w, const float *bias,
                           size_t N, size_t C, size_t OC);
    /* dinp (N, C) += dout @ w; dw (OC, C) += dout^T @ inp; dbias (OC) += sum_n dout.
     * Any of dinp, dw, dbias may be NULL (frozen weights get no gradient). */
    void (*linear_backward)(float *dinp, float *dw, float *dbias, const float *dout,
                            const float *inp, const float *w, size_t N, size_t C, size_t OC);

    /* LoRA on a linear layer (PEFT math): out (N, OC) += scale * xa @ b^T where
     * xa (N, r) = inp (N, C) @ a^T is saved for backward; a (r, C), b (OC, r). Dropout, when
     * used, is applied by the caller to inp. out NULL: xa only (the caller adds the rest). */
    void (*lora_forward)(float *out, float *xa, const float *inp, const float *a, const float *b,
                         float scale, size_t N, size_t C, size_t OC, size_t r);
    /* da (r, C) +=, db (OC, r) +=, dinp (N, C) += (dinp may be NULL); dxa (N, r) is scratch. */
    void (*lora_backward)(float *dinp, float *da, float *db, float *dxa, const float *dout,
                          const float *inp, const float *xa, const float *a, const float *b,
                          float scale, size_t N, size_t C, size_t OC, size_t r);

    /* losses (N) = -log softmax(logits[n])[targets[n]]; 0 where targets[n] < 0 (ignored, the
     * -100 convention). logits (N, V). targets must be < V. */
    void (*crossentropy_forward)(float *losses, const float *logits, const int32_t *targets,
                                 size_t N, size_t V);
    /* dlogits (N, V) = dloss * (softmax(logits) - onehot(target)); rows with target < 0 = 0.
     * dlogits may equal logits (in place). */
    void (*crossentropy_backward)(float *dlogits, const float *logits, const int32_t *targets,
                                  float dloss, size_t N, size_t V);
};

/* Plain C reference: straightforward loops, never optimised away, the oracle for every backend. */
const struct st_kernels *st_kernels_ref(void);
/* CPU backend: OpenBLAS matmuls, OpenMP loops. */
const struct st_kernels *st_kernels_cpu(void);
/* The CPU backend for --compute bf16: attention's matrix products in BF16 (AVX512_BF16), the
 * rest as st_kernels_cpu(). */
const struct st_kernels *st_kernels_cpu_bf16(void);

/* Helpers shared by kernels and the sampler. */
float st_gelu_tanh(float x);

#ifdef __cplusplus
}
#endif
#endif
