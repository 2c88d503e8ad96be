/* ref.h: the reference kernels (plain C loops), shared by the ref and cpu backend tables. */
#ifndef ST_KERNELS_REF_H
#define ST_KERNELS_REF_H
#include "streamtune/kernels.h"

void st_ref_embedding_forward(float *out, const int32_t *ids, const float *wte, float scale,
                              size_t N, size_t C);
void st_ref_embedding_backward(float *dwte, const float *dout, const int32_t *ids, float scale,
                               size_t N, size_t C);
void st_ref_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                            float eps, float offset, size_t N, size_t C);
void st_ref_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                             const float *weight, const float *rstd, float offset, size_t N,
                             size_t C);
void st_ref_rope_forward(float *out, const float *inp, const float *cos, const float *sin,
                         const int32_t *pos, size_t N, size_t nh, size_t hd);
void st_ref_rope_backward(float *dinp, const float *dout, const float *cos, const float *sin,
                          const int32_t *pos, size_t N, size_t nh, size_t hd);
void st_ref_attention_forward(float *out, float *lse, const float *q, const float *k,
                              const float *v, const int32_t *seg, float scale, int window,
                              size_t B, size_t Tq, size_t Tk, size_t nh, size_t nkv, size_t hd);
void st_ref_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                               const float *out, const float *lse, const float *q, const float *k,
                               const float *v, const int32_t *seg, float scale, int window,
                               size_t B, size_t Tq, size_t Tk, size_t nh, size_t nkv, size_t hd);
void st_ref_glu_forward(float *out, const float *gate, const float *up, enum st_act act, size_t N,
                        size_t H);
void st_ref_glu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                         const float *up, enum st_act act, size_t N, size_t H);
void st_ref_linear_forward(float *out, const float *inp, const float *w, const float *bias,
                           size_t N, size_t C, size_t OC);
void st_ref_linear_backward(float *dinp, float *dw, float *dbias, const float *dout,
                            const float *inp, const float *w, size_t N, size_t C, size_t OC);
void st_ref_crossentropy_forward(float *losses, const float *logits, const int32_t *targets,
                                 size_t N, size_t V);
void st_ref_crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets,
                                  float dloss, size_t N, size_t V);

void st_ref_lora_forward(float *out, float *xa, const float *inp, const float *a, const float *b,
                         float scale, size_t N, size_t C, size_t OC, size_t r);
void st_ref_lora_backward(float *dinp, float *da, float *db, float *dxa, const float *dout,
                          const float *inp, const float *xa, const float *a, const float *b,
                          float scale, size_t N, size_t C, size_t OC, size_t r);

/* One attention head for one query row, and its backward. */
void st_ref_attention_row(float *out, float *lse, const float *q, const float *k, const float *v,
                          const int32_t *seg, float scale, int window, size_t Tq, size_t Tk,
                          size_t i, size_t kv_stride, size_t hd);
void st_ref_attention_row_backward(float *dqi, float *dk, float *dv, const float *dy,
                                   const float *oi, float lse, const float *qi, const float *k,
                                   const float *v, const int32_t *seg, float scale, int window,
                                   size_t Tq, size_t Tk, size_t i, size_t kv_stride, size_t hd);
#endif
