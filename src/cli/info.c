/* info.c: `streamtune info --model DIR [--json]`: what the model is and what it costs in memory. */
#include <string.h>

#include "cli.h"

static const char *usage = "usage: streamtune info --model DIR [--json]\n";

int cmd_info(int argc, char **argv) {
    const char *dir = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        const char *v;
        if ((v = cli_opt(argc, argv, &i, "--model", &missing))) dir = v;
        else if (missing) return cli_usage(usage, "--model needs a value");
        else if (strcmp(argv[i], "--json") == 0) json = 1;
        else if (strcmp(argv[i], "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        } else return cli_usage(usage, "info: unknown option '%s'", argv[i]);
    }
    if (!dir) return cli_usage(usage, "info: --model DIR is required");
    struct st_model m;
    struct st_error err;
    if (st_model_load(&m, dir, &err)) return cli_fail(json, &err);
    const struct st_model_config *c = &m.cfg;
    size_t kv_per_token = 2 * (size_t)c->n_layers * (size_t)c->n_kv_heads * (size_t)c->head_dim * 4;
    /* what the loaded weights hold: F32 tensors used from the map, F32 copies of 16-bit ones,
     * and quantised storage (a bitsandbytes checkpoint's codes stay mapped) */
    size_t resident = m.mapped_bytes + m.converted.size + m.qarena.size;
    size_t act_1x = st_acts_bytes(c, 1, (size_t)(c->max_seq_len < 2048 ? c->max_seq_len : 2048), 0, 0);
    int n_sliding = 0;
    for (int l = 0; l < c->n_layers; l++) n_sliding += c->layer_sliding[l];
    if (json) {
        printf("{\"model\": ");
        cli_json_string(stdout, dir);
        printf(", \"model_type\": ");
        cli_json_string(stdout, c->model_type);
        printf(", \"architecture\": ");
        cli_json_string(stdout, c->architecture);
        printf(", \"params\": %zu, \"dtype\": \"%s\", \"vocab_size\": %d, \"hidden_size\": %d, "
               "\"intermediate_size\": %d, \"layers\": %d, \"heads\": %d, \"kv_heads\": %d, "
               "\"head_dim\": %d, \"context\": %d, \"tied_embeddings\": %s, \"sliding_window\": %d, "
               "\"sliding_layers\": %d, \"rope_theta\": %g, \"weights_bytes\": %zu, "
               "\"memory_bytes\": %zu, \"kv_bytes_per_token\": %zu, \"activation_bytes_2048\": %zu}\n",
               m.n_params, st_dtype_name(m.dtype), c->vocab_size, c->dim, c->hidden_dim,
               c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->max_seq_len,
               c->tie_embeddings ? "true" : "false", c->sliding_window, n_sliding, c->rope_theta,
               m.bytes_on_disk, resident, kv_per_token, act_1x);
    } else {
        printf("model         %s\n", dir);
        printf("architecture  %s (model_type %s)\n", c->architecture[0] ? c->architecture : "?",
               c->model_type);
        printf("parameters    %zu (%.2f M)\n", m.n_params, (double)m.n_params / 1e6);
        printf("dtype         %s on disk, F32 compute\n", st_dtype_name(m.dtype));
        printf("shape         vocab %d, hidden %d, intermediate %d, layers %d\n", c->vocab_size,
               c->dim, c->hidden_dim, c->n_layers);
        printf("attention     %d heads, %d kv heads, head_dim %d%s", c->n_heads, c->n_kv_heads,
               c->head_dim, n_sliding ? "" : "\n");
        if (n_sliding) printf(", sliding window %d on %d layers\n", c->sliding_window, n_sliding);
        printf("context       %d tokens, rope theta %g%s\n", c->max_seq_len, c->rope_theta,
               c->rope_type == ST_ROPE_LLAMA3   ? " (llama3 scaling)"
               : c->rope_type == ST_ROPE_LINEAR ? " (linear scaling)"
                                                : "");
        printf("embeddings    %s\n", c->tie_embeddings ? "tied" : "untied");
        printf("memory        weights %.1f MiB on disk, %.1f MiB loaded%s; KV cache %.1f "
               "KiB/token\n",
               (double)m.bytes_on_disk / 1048576.0, (double)resident / 1048576.0,
               m.quant ? " (quantised)" : " (F32)", (double)kv_per_token / 1024.0);
    }
    st_model_free(&m);
    return 0;
}
