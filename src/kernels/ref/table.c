/* table.c: the reference backend table. */
#include "ref.h"

static const struct st_kernels ref_table = {
    .name = "ref",
    .embedding_forward = st_ref_embedding_forward,
    .embedding_backward = st_ref_embedding_backward,
    .rmsnorm_forward = st_ref_rmsnorm_forward,
    .rmsnorm_backward = st_ref_rmsnorm_backward,
    .rope_forward = st_ref_rope_forward,
    .rope_backward = st_ref_rope_backward,
    .attention_forward = st_ref_attention_forward,
    .attention_backward = st_ref_attention_backward,
    .glu_forward = st_ref_glu_forward,
    .glu_backward = st_ref_glu_backward,
    .linear_forward = st_ref_linear_forward,
    .linear_backward = st_ref_linear_backward,
    .lora_forward = st_ref_lora_forward,
    .lora_backward = st_ref_lora_backward,
    .crossentropy_forward = st_ref_crossentropy_forward,
    .crossentropy_backward = st_ref_crossentropy_backward,
};

const struct st_kernels *st_kernels_ref(void) { return &ref_table; }
