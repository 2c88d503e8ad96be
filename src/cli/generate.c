/* generate.c: `streamtune generate --model DIR --prompt-ids 1,2,3 [--max-tokens N --temperature T
 * --top-k K --top-p P --seed S --ignore-eos --json]`.
 * Sampling defaults follow the model's generation_config.json the way Hugging Face generate()
 * does (do_sample false -> greedy; its temperature/top_k/top_p and extra eos ids otherwise);
 * command-line flags override it. Ids stream to stdout as they are made; --json prints
 * {"ids": [...]} (generated ids only) at the end. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "streamtune/tokenizer.h"

static const char *usage =
    "usage: streamtune generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [options]\n"
    "  --prompt TEXT      encoded with the model's tokenizer.json (BOS as its post-processor adds)\n"
    "  --adapter DIR      apply a PEFT LoRA adapter (adapter_config.json + .safetensors)\n"
    CLI_LOAD_HELP
    "  --max-tokens N     tokens to generate (default 64)\n"
    "  --temperature T    0 = greedy (default: generation_config.json, else greedy)\n"
    "  --top-k K          keep the K most likely tokens (0 = off)\n"
    "  --top-p P          nucleus sampling mass (1 = off)\n"
    "  --seed S           random seed (default 0)\n"
    "  --ignore-eos       keep going after an end-of-sequence token\n"
    "  --json             print {\"ids\": [...]} (with --prompt also \"text\") at the end\n";

/* Defaults from DIR/generation_config.json (absent file: nothing changes). */
static void read_generation_config(const char *dir, struct st_sampler *s,
                                   struct st_model_config *c) {
    char path[2048], *text;
    size_t len;
    struct st_error err;
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    if (st_read_file(path, 1u << 20, &text, &len, &err)) return;
    cJSON *root = cJSON_ParseWithLength(text, len);
    st_free(text);
    if (!root) {
        st_log(ST_LOG_WARN, "%s: not valid JSON; ignoring it", path);
        return;
    }
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(root, "do_sample");
    if (cJSON_IsTrue(ds)) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "temperature");
        const cJSON *k = cJSON_GetObjectItemCaseSensitive(root, "top_k");
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "top_p");
        s->temperature = cJSON_IsNumber(t) ? (float)t->valuedouble : 1.0f;
        s->top_k = cJSON_IsNumber(k) ? k->valueint : 50; /* HF's default */
        s->top_p = cJSON_IsNumber(p) ? (float)p->valuedouble : 1.0f;
    }
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    const cJSON *one = cJSON_IsNumber(eos) ? eos : NULL;
    for (const cJSON *x = one ? one : (cJSON_IsArray(eos) ? eos->child : NULL); x;
         x = one ? NULL : x->next) {
        if (!cJSON_IsNumber(x) || x->valueint < 0 || x->valueint >= c->vocab_size) continue;
        int seen = 0;
        for (int i = 0; i < c->n_eos; i++) seen |= c->eos_token_ids[i] == x->valueint;
        if (!seen && c->n_eos < ST_MAX_EOS) c->eos_token_ids[c->n_eos++] = x->valueint;
    }
    cJSON_Delete(root);
}

static int parse_id_list(const char *s, int32_t **out, size_t *n) {
    size_t cap = 16, k = 0;
    int32_t *ids = st_malloc(cap * sizeof *ids);
    if (!ids) return 1;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
            st_free(ids);
            return 1;
        }
        if (k == cap) {
            int32_t *q = st_realloc(ids, 2 * cap * sizeof *ids);
            if (!q) {
                st_free(ids);
                return 1;
            }
            ids = q;
            cap *= 2;
        }
        ids[k++] = (int32_t)v;
        p = *end ? end + 1 : end;
    }
    if (k == 0) {
        st_free(ids);
        return 1;
    }
    *out = ids;
    *n = k;
    return 0;
}

struct printer {
    int first;
    struct st_decode_stream *ds; /* text mode when set */
};

static int print_token(void *ctx, int32_t id) {
    struct printer *p = ctx;
    if (p->ds) {
        const char *piece;
        struct st_error err;
        if (st_decode_stream_step(p->ds, id, &piece, &err) == ST_OK) fputs(piece, stdout);
    } else {
        printf(p->first ? "%d" : " %d", id);
    }
    p->first = 0;
    fflush(stdout);
    return 0;
}

int cmd_generate(int argc, char **argv) {
    const char *dir = NULL, *prompt = NULL, *prompt_text = NULL, *adapter = NULL;
    const char *temp_s = NULL, *topk_s = NULL, *topp_s = NULL;
    long max_tokens = 64, seed = 0;
    int json = 0, ignore_eos = 0, q;
    struct st_model_load_options lo;
    st_model_load_options_init(&lo);
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        const char *v;
        const char *a = argv[i];
        if ((v = cli_opt(argc, argv, &i, "--model", &missing))) dir = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--prompt-ids", &missing))) prompt = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--prompt", &missing))) prompt_text = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--adapter", &missing))) adapter = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--max-tokens", &missing))) {
            if (cli_int(v, 0, 1 << 24, &max_tokens))
                return cli_usage(usage, "--max-tokens: expected an integer >= 0, got '%s'", v);
        } else if (!missing && (v = cli_opt(argc, argv, &i, "--temperature", &missing))) temp_s = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--top-k", &missing))) topk_s = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--top-p", &missing))) topp_s = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--seed", &missing))) {
            if (cli_int(v, 0, INT64_MAX, &seed))
                return cli_usage(usage, "--seed: expected a non-negative integer, got '%s'", v);
        } else if (missing) return cli_usage(usage, "%s needs a value", a);
        else if ((q = cli_load_flag(argc, argv, &i, &lo)) != 0) {
            if (q < 0) return 2;
        } else if (strcmp(a, "--json") == 0) json = 1;
        else if (strcmp(a, "--ignore-eos") == 0) ignore_eos = 1;
        else if (strcmp(a, "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        } else return cli_usage(usage, "generate: unknown option '%s'", a);
    }
    if (!dir) return cli_usage(usage, "generate: --model DIR is required");
    if (!prompt == !prompt_text)
        return cli_usage(usage, "generate: give exactly one of --prompt TEXT or --prompt-ids");
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (prompt && parse_id_list(prompt, &ids, &n_ids))
        return cli_usage(usage, "--prompt-ids: expected comma-separated token ids, got '%s'",
                         prompt);

    struct st_error err = {0};
    struct st_model m;
    if (st_model_load_ex(&m, dir, &lo, &err)) {
        st_free(ids);
        return cli_fail(json, &err);
    }
    struct st_lora lora = {0};
    if (adapter) {
        if (st_lora_load(&lora, &m.cfg, adapter, &err)) {
            st_free(ids);
            st_model_free(&m);
            return cli_fail(json, &err);
        }
        m.lora = &lora;
    }
    struct st_tokenizer *tok = NULL;
    if (prompt_text) {
        struct st_ids enc = {0};
        if (st_tokenizer_load(&tok, dir, &err) ||
            st_tokenizer_encode(tok, prompt_text, strlen(prompt_text), 1, &enc, &err)) {
            st_tokenizer_free(tok);
            st_model_free(&m);
            return cli_fail(json, &err);
        }
        ids = enc.ids;
        n_ids = enc.n;
        st_free(enc.offsets);
        if (n_ids == 0) {
            st_errorf(&err, ST_ERR_ARG, "--prompt encodes to no tokens");
            st_free(ids);
            st_tokenizer_free(tok);
            st_model_free(&m);
            return cli_fail(json, &err);
        }
    }
    struct st_gen_params gp = {.max_tokens = (int)max_tokens,
                               .sampler = {0.0f, 0, 1.0f},
                               .seed = (uint64_t)seed,
                               .stop_at_eos = !ignore_eos};
    read_generation_config(dir, &gp.sampler, &m.cfg);
    double d;
    long k;
    int bad = 0;
    if (temp_s) {
        if (cli_float(temp_s, 0, 100, &d)) bad = cli_usage(usage, "--temperature: expected 0..100, got '%s'", temp_s);
        else gp.sampler.temperature = (float)d;
    }
    if (!bad && topk_s) {
        if (cli_int(topk_s, 0, INT32_MAX, &k)) bad = cli_usage(usage, "--top-k: expected an integer >= 0, got '%s'", topk_s);
        else gp.sampler.top_k = (int)k;
    }
    if (!bad && topp_s) {
        if (cli_float(topp_s, 0, 1, &d) || d == 0) bad = cli_usage(usage, "--top-p: expected (0, 1], got '%s'", topp_s);
        else gp.sampler.top_p = (float)d;
    }
    if (bad) {
        st_free(ids);
        st_tokenizer_free(tok);
        st_model_free(&m);
        return bad;
    }
    int32_t *out = st_malloc((size_t)(max_tokens ? max_tokens : 1) * sizeof *out);
    size_t n_out = 0;
    struct st_decode_stream ds;
    st_decode_stream_init(&ds, tok, 1);
    struct printer pr = {1, tok ? &ds : NULL};
    if (tok && st_decode_stream_prefill(&ds, ids, n_ids, &err)) { /* the prompt as context */
        st_decode_stream_free(&ds);
        st_decode_stream_init(&ds, tok, 1);
    }
    if (tok && !json) fputs(prompt_text, stdout);
    double t0 = st_time_now();
    enum st_status rc = out ? st_model_generate(&m, ids, n_ids, &gp, out, &n_out,
                                                json ? NULL : print_token, &pr, &err)
                            : st_errorf(&err, ST_ERR_NOMEM, "out of memory");
    double el = st_time_now() - t0;
    if (!json && tok) fputs(st_decode_stream_flush(&ds), stdout);
    if (!json && (n_out || tok)) printf("\n");
    fflush(stdout);
    if (!rc && json) {
        printf("{\"ids\": [");
        for (size_t i = 0; i < n_out; i++) printf(i ? ", %d" : "%d", out[i]);
        printf("]");
        if (tok) {
            /* the continuation as it reads after the prompt: decode(prompt's tail + out) past
             * decode(prompt's tail), as the streamed text (a leading space stays) */
            size_t nt = n_ids < 8 ? n_ids : 8;
            int32_t *all = st_malloc((nt + n_out + 1) * sizeof *all);
            char *ctx = NULL, *text = NULL;
            size_t cl = 0, tl = 0;
            if (all) {
                memcpy(all, ids + n_ids - nt, nt * sizeof *all);
                memcpy(all + nt, out, n_out * sizeof *all);
            }
            if (all && st_tokenizer_decode(tok, all, nt, 1, &ctx, &cl, &err) == ST_OK &&
                st_tokenizer_decode(tok, all, nt + n_out, 1, &text, &tl, &err) == ST_OK) {
                size_t from = cl <= tl && memcmp(text, ctx, cl) == 0 ? cl : 0;
                if (!from) { /* a decoder rewrote the prompt's text: the ids alone */
                    st_free(text);
                    text = NULL;
                    if (st_tokenizer_decode(tok, out, n_out, 1, &text, &tl, &err)) text = NULL;
                }
                if (text) {
                    printf(", \"text\": ");
                    cli_json_string_n(stdout, text + from, tl - from);
                }
            }
            st_free(text);
            st_free(ctx);
            st_free(all);
        }
        printf("}\n");
    }
    if (!rc)
        st_log(ST_LOG_INFO, "%zu prompt + %zu generated tokens in %.2fs (%.1f tok/s)", n_ids,
               n_out, el, (double)n_out / (el + 1e-9));
    st_decode_stream_free(&ds);
    st_tokenizer_free(tok);
    st_lora_free(&lora);
    st_free(out);
    st_free(ids);
    st_model_free(&m);
    return rc ? cli_fail(json, &err) : 0;
}
