/* streamtune LoRA: low-rank adapters on the linear layers of a frozen model, PEFT-compatible.
 *
 * DESIGN: all A and B matrices live in one allocation (params), their gradients in a second of
 * the same layout (grads), so the optimizer is one loop over a flat array. A is (r, in) and B is
 * (out, r) exactly as PEFT stores lora_A.weight / lora_B.weight; y = W x + scale * B (A x) with
 * scale = alpha / r (alpha / sqrt(r) with rsLoRA). Initialisation is PEFT's default: A
 * Kaiming-uniform(a = sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)), and B = 0. */
#ifndef STREAMTUNE_LORA_H
#define STREAMTUNE_LORA_H

#include "streamtune/config.h"

#ifdef __cplusplus
extern "C" {
#endif

enum st_lin { ST_LIN_Q = 0, ST_LIN_K, ST_LIN_V, ST_LIN_O, ST_LIN_GATE, ST_LIN_UP, ST_LIN_DOWN,
              ST_LIN_COUNT };
#define ST_LIN_ALL 0x7fu
const char *st_lin_name(enum st_lin l); /* "q_proj", ... */
/* (out, in) of a module for config c. */
void st_lin_shape(const struct st_model_config *c, enum st_lin l, size_t *out, size_t *in);

struct st_lora_config {
    int rank;
    float alpha;
    float dropout;
    int rslora;
    unsigned targets;  /* bit l set: module l gets an adapter */
    int first_layer;   /* layers >= first_layer get adapters */
};
/* Parse a --targets value: "q_proj,v_proj", "all-linear"/"all", "attn" (q,k,v,o), "mlp". */
enum st_status st_lora_parse_targets(const char *s, unsigned *mask, struct st_error *err);

struct st_lora_module {
    float *a, *b;   /* (r, in), (out, r); NULL when not targeted */
    float *ga, *gb; /* gradients, same shapes */
    size_t in, out;
};
struct st_lora {
    struct st_lora_config cfg;
    float scale;
    int n_layers;
    struct st_lora_module *mod; /* n_layers * ST_LIN_COUNT, index l * ST_LIN_COUNT + m */
    float *params, *grads;      /* n_params each */
    size_t n_params;
};
static inline const struct st_lora_module *st_lora_get(const struct st_lora *lo, int l, int m) {
    const struct st_lora_module *x = &lo->mod[(size_t)l * ST_LIN_COUNT + (size_t)m];
    return x->a ? x : 0;
}

/* Allocate adapters for model config c and initialise them like PEFT from seed. */
enum st_status st_lora_init(struct st_lora *lo, const struct st_model_config *c,
                            const struct st_lora_config *lc, uint64_t seed, struct st_error *err);
void st_lora_free(struct st_lora *lo);
void st_lora_zero_grads(struct st_lora *lo);
/* A gradient view of lo: the same adapters (a, b point at lo's params) with gradients of its own
 * (zeroed), for a backward on another thread whose gradients are added to lo's afterwards. Free
 * it with st_lora_grad_view_free; lo must outlive it. */
enum st_status st_lora_grad_view(struct st_lora *g, const struct st_lora *lo,
                                 struct st_error *err);
void st_lora_grad_view_free(struct st_lora *g);

/* PEFT files: DIR/adapter_config.json + DIR/adapter_model.safetensors, written atomically
 * (each file: temp, fsync, rename). base_model names the base in adapter_config.json. */
enum st_status st_lora_save(const struct st_lora *lo, const char *dir, const char *base_model,
                            struct st_error *err);
/* Load a PEFT adapter for a model with config c (rank/alpha/targets from adapter_config.json;
 * every tensor checked against the model's shapes). */
enum st_status st_lora_load(struct st_lora *lo, const struct st_model_config *c, const char *dir,
                            struct st_error *err);
/* The PEFT key of module m of layer l, A or B. */
void st_lora_key(char *buf, size_t n, int layer, enum st_lin m, int is_b);

#ifdef __cplusplus
}
#endif
#endif
