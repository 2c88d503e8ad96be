/* attention.h: the cpu backend's causal flash attention (src/kernels/cpu/attention.c). The
 * contract (layouts, masks, lse, accumulation rules) is st_kernels.attention_forward/_backward's
 * in include/streamtune/kernels.h. cpu.c's table calls the dispatching pair; the portable pair is
 * the fallback, exported so that tests and bench/attention can run it on any machine. */
#ifndef ST_KERNELS_CPU_ATTENTION_H
#define ST_KERNELS_CPU_ATTENTION_H
#include <stddef.h>
#include <stdint.h>

/* out, q (B, Tq, nh, hd); k, v (B, Tk, nkv, hd); lse (B, nh, Tq); seg (B, Tk) or NULL.
 * out =, lse =. Register-blocked AVX-512 kernel where the CPU has it and hd % 16 == 0 and
 * hd <= 256, the portable kernel otherwise. */
void st_cpu_attention_forward(float *out, float *lse, const float *q, const float *k,
                              const float *v, const int32_t *seg, float scale, int window,
                              size_t B, size_t Tq, size_t Tk, size_t nh, size_t nkv, size_t hd);
/* dq (B, Tq, nh, hd) =, dk, dv (B, Tk, nkv, hd) =; dout, out (B, Tq, nh, hd); lse as saved. */
void st_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                               const float *out, const float *lse, const float *q, const float *k,
                               const float *v, const int32_t *seg, float scale, int window,
                               size_t B, size_t Tq, size_t Tk, size_t nh, size_t nkv, size_t hd);

/* The same contract, one query row at a time (vector loops over keys and hd; any CPU). */
void st_cpu_attention_forward_portable(float *out, float *lse, const float *q, const float *k,
                                       const float *v, const int32_t *seg, float scale,
                                       int window, size_t B, size_t Tq, size_t Tk, size_t nh,
                                       size_t nkv, size_t hd);
void st_cpu_attention_backward_portable(float *dq, float *dk, float *dv, const float *dout,
                                        const float *out, const float *lse, const float *q,
                                        const float *k, const float *v, const int32_t *seg,
                                        float scale, int window, size_t B, size_t Tq, size_t Tk,
                                        size_t nh, size_t nkv, size_t hd);

/* The same contract with the five products in BF16 (operands rounded to bf16, products summed in
 * float; softmax, lse and the output in float), as PyTorch's bf16 autocast and flash attention
 * do: where the CPU has AVX512_BF16 and hd % 32 == 0 (and the AVX-512 kernel runs), the float
 * kernels otherwise. Results differ from the float kernel by bf16 rounding (~3 significant
 * digits); they do not depend on the thread count either. */
void st_cpu_attention_forward_bf16(float *out, float *lse, const float *q, const float *k,
                                   const float *v, const int32_t *seg, float scale, int window,
                                   size_t B, size_t Tq, size_t Tk, size_t nh, size_t nkv,
                                   size_t hd);
void st_cpu_attention_backward_bf16(float *dq, float *dk, float *dv, const float *dout,
                                    const float *out, const float *lse, const float *q,
                                    const float *k, const float *v, const int32_t *seg,
                                    float scale, int window, size_t B, size_t Tq, size_t Tk,
                                    size_t nh, size_t nkv, size_t hd);

/* 1 when st_cpu_attention_* runs the AVX-512 kernel for hd % 16 == 0 (the CPU has AVX-512F and
 * ST_ATTENTION_PORTABLE is unset or "0"). */
int st_cpu_attention_native(void);
#endif
