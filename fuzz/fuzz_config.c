/* fuzz_config.c: libFuzzer target for the config.json parser (st_config_parse).
 *
 * DESIGN: the input is the config.json text, passed with its exact length (not NUL-terminated, so
 * ASan sees any read past it). Beyond "no crash, no sanitizer report" it checks that a refusal is
 * ST_ERR_FORMAT or ST_ERR_UNSUPPORTED with a message naming the file, that an accepted config
 * satisfies every invariant the model code relies on (sizes >= 1, heads divisible by KV heads,
 * even head_dim, token ids inside the vocabulary, positive RoPE parameters, windows for sliding
 * layers), and that nothing leaks. A violated property aborts, which libFuzzer reports as a crash.
 * tests/test_fuzz_replay.c includes this file (entry point renamed) to replay fuzz/corpus and
 * fuzz/crashers in ordinary builds, so all static names here carry the fc_ prefix. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "streamtune/config.h"

#define FC_REQUIRE(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_config: property violated: %s: ", #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void fc_check(const struct st_model_config *c) {
    FC_REQUIRE(memchr(c->model_type, 0, sizeof c->model_type) &&
                   memchr(c->architecture, 0, sizeof c->architecture) &&
                   memchr(c->torch_dtype, 0, sizeof c->torch_dtype),
               "unterminated string");
    FC_REQUIRE(strcmp(c->model_type, "llama") == 0 || strcmp(c->model_type, "mistral") == 0 ||
                   strcmp(c->model_type, "qwen2") == 0 || strcmp(c->model_type, "gemma") == 0,
               "model_type '%s'", c->model_type);
    FC_REQUIRE(c->vocab_size >= 1 && c->dim >= 1 && c->hidden_dim >= 1, "sizes %d %d %d",
               c->vocab_size, c->dim, c->hidden_dim);
    FC_REQUIRE(c->n_layers >= 1 && c->n_layers <= ST_MAX_LAYERS, "n_layers %d", c->n_layers);
    FC_REQUIRE(c->n_heads >= 1 && c->n_kv_heads >= 1 && c->n_heads % c->n_kv_heads == 0,
               "heads %d / %d", c->n_heads, c->n_kv_heads);
    FC_REQUIRE(c->head_dim >= 2 && c->head_dim % 2 == 0, "head_dim %d", c->head_dim);
    FC_REQUIRE(c->max_seq_len >= 1, "max_seq_len %d", c->max_seq_len);
    FC_REQUIRE(c->norm_eps > 0 && c->norm_eps <= 1, "norm_eps %g", (double)c->norm_eps);
    FC_REQUIRE(isfinite(c->rope_theta) && c->rope_theta > 0, "rope_theta %g", c->rope_theta);
    FC_REQUIRE(isfinite(c->rope_factor) && c->rope_factor > 0, "rope_factor %g", c->rope_factor);
    if (c->rope_type == ST_ROPE_LLAMA3)
        FC_REQUIRE(c->rope_high_freq_factor > c->rope_low_freq_factor &&
                       c->rope_low_freq_factor > 0 && c->rope_original_max_pos >= 1,
                   "llama3 rope %g %g %d", c->rope_low_freq_factor, c->rope_high_freq_factor,
                   c->rope_original_max_pos);
    FC_REQUIRE(c->act == ST_ACT_SILU || c->act == ST_ACT_GELU_TANH, "act %d", (int)c->act);
    FC_REQUIRE(c->n_eos >= 0 && c->n_eos <= ST_MAX_EOS, "n_eos %d", c->n_eos);
    for (int i = 0; i < c->n_eos; i++)
        FC_REQUIRE(c->eos_token_ids[i] >= 0 && c->eos_token_ids[i] < c->vocab_size, "eos %d",
                   c->eos_token_ids[i]);
    FC_REQUIRE(c->bos_token_id >= -1 && c->bos_token_id < c->vocab_size, "bos %d", c->bos_token_id);
    FC_REQUIRE(c->sliding_window >= 0, "sliding_window %d", c->sliding_window);
    for (int l = 0; l < c->n_layers; l++) {
        int w = st_config_layer_window(c, l);
        FC_REQUIRE(w >= 0 && (!c->layer_sliding[l] || w > 0), "layer %d window %d", l, w);
    }
    for (int l = c->n_layers; l < ST_MAX_LAYERS; l++)
        FC_REQUIRE(c->layer_sliding[l] == 0, "layer %d past n_layers marked sliding", l);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t live0 = st_alloc_live_count();
    struct st_model_config c;
    struct st_error err = {0};
    enum st_status rc = st_config_parse(&c, (const char *)data, size, "fuzz/config.json", &err);
    if (rc) {
        FC_REQUIRE(rc == ST_ERR_FORMAT || rc == ST_ERR_UNSUPPORTED, "status %d: %s", (int)rc,
                   err.msg);
        FC_REQUIRE(strstr(err.msg, "fuzz/config.json") != NULL, "message without the file: %s",
                   err.msg);
    } else {
        fc_check(&c);
    }
    FC_REQUIRE(st_alloc_live_count() == live0, "%ld allocations leaked",
               (long)st_alloc_live_count() - (long)live0);
    return 0;
}
