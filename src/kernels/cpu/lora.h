/* lora.h: the cpu backend's LoRA kernels (src/kernels/cpu/lora.c), with the contract of
 * st_kernels.lora_forward/_backward (include/streamtune/kernels.h): streaming passes with the
 * rank-r operand on the stack, AVX-512 where the CPU has it, no BLAS; results do not depend on
 * the thread count. */
#ifndef ST_KERNELS_CPU_LORA_H
#define ST_KERNELS_CPU_LORA_H
#include <stddef.h>

/* 1 when the AVX-512 kernels run (else sgemm); cached after the first call */
int st_cpu_lora_native(void);
void st_cpu_lora_forward(float *out, float *xa, const float *inp, const float *a, const float *b,
                         float scale, size_t N, size_t C, size_t OC, size_t r);
void st_cpu_lora_backward(float *dinp, float *da, float *db, float *dxa, const float *dout,
                          const float *inp, const float *xa, const float *a, const float *b,
                          float scale, size_t N, size_t C, size_t OC, size_t r);
#endif
