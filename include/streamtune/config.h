/* streamtune model configuration: Hugging Face config.json -> the options of one transformer block.
 *
 * DESIGN: families differ only in options (norm offset, activation, biases, RoPE variant, GQA,
 * sliding window, embedding scale), never in code paths copied per family. */
#ifndef STREAMTUNE_CONFIG_H
#define STREAMTUNE_CONFIG_H

#include "streamtune/core.h"

#ifdef __cplusplus
extern "C" {
#endif

enum st_act { ST_ACT_SILU = 0, ST_ACT_GELU_TANH };
enum st_rope_type { ST_ROPE_DEFAULT = 0, ST_ROPE_LINEAR, ST_ROPE_LLAMA3 };

#define ST_MAX_EOS 8
#define ST_MAX_LAYERS 512

struct st_model_config {
    char model_type[32];   /* "llama", "mistral", "qwen2", "gemma" */
    char architecture[64]; /* architectures[0] */
    int vocab_size;
    int dim;        /* hidden_size */
    int hidden_dim; /* intermediate_size */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int max_seq_len; /* max_position_embeddings */
    float norm_eps;
    float norm_offset; /* 1.0 for Gemma's (1 + w) RMSNorm, else 0 */
    float embed_scale; /* sqrt(dim) for Gemma, else 1 */
    enum st_act act;
    int qkv_bias, o_bias, mlp_bias;
    int tie_embeddings;
    /* RoPE */
    double rope_theta;
    enum st_rope_type rope_type;
    double rope_factor;
    double rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_pos;
    /* attention */
    int sliding_window;                    /* window size for the layers that use one */
    uint8_t layer_sliding[ST_MAX_LAYERS];  /* 1 where layer l uses the sliding window */
    /* tokens */
    int bos_token_id; /* -1 when absent */
    int eos_token_ids[ST_MAX_EOS];
    int n_eos;
    int pad_token_id;
    char torch_dtype[16];
};

/* Parse config.json text. `what` names the file in error messages. Unsupported model types
 * (and unsupported options of supported ones) are ST_ERR_UNSUPPORTED with a message that says so. */
enum st_status st_config_parse(struct st_model_config *c, const char *json, size_t len,
                               const char *what, struct st_error *err);
/* Read DIR/config.json. */
enum st_status st_config_load(struct st_model_config *c, const char *dir, struct st_error *err);
/* Sliding window for layer l (0 = none). */
int st_config_layer_window(const struct st_model_config *c, int layer);

#ifdef __cplusplus
}
#endif
#endif
