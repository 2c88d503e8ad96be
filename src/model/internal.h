/* internal.h: model-internal functions shared between model.c and generate.c (and the trainer). */
#ifndef ST_MODEL_INTERNAL_H
#define ST_MODEL_INTERNAL_H
#include "streamtune/model.h"

/* One transformer block forward (see model.c). */
void st_block_forward(const struct st_model *m, int l, struct st_layer_acts *la, float *x_out,
                      const float *x_in, float *kall, float *vall, const int32_t *pos,
                      const int32_t *seg, const float *cos_t, const float *sin_t, float *tmp,
                      float *xd, size_t B, size_t Tq, size_t Tk);
/* out (N, D) = embedding rows of ids (times embed_scale); logits (N, V) = x (N, D) @ head^T.
 * Both read quantised storage when the model has it. */
void st_model_embed(const struct st_model *m, float *out, const int32_t *ids, size_t N);
void st_model_head(const struct st_model *m, float *logits, const float *x, size_t N);
#endif
