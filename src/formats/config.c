/* config.c: Hugging Face config.json -> struct st_model_config.
 *
 * DESIGN: each supported model_type maps to block options; everything the block cannot do yet is
 * refused with ST_ERR_UNSUPPORTED and a message that names the key, rather than silently computing
 * a different model. Both transformers v4 keys (rope_theta, torch_dtype) and v5 keys
 * (rope_parameters, dtype, layer_types) are read. */
#include "streamtune/config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *supported = "llama, mistral, qwen2, gemma";

/* Known model types we do not run yet, with the nearest reason, to give a useful message. */
static const char *known_unsupported[] = {
    "gemma2", "gemma3", "gemma3_text", "qwen3", "qwen3_moe", "qwen2_moe", "mixtral", "phi",
    "phi3", "gpt2", "gpt_neox", "falcon", "mpt", "olmo", "olmo2", "cohere", "starcoder2",
    "deepseek_v2", "deepseek_v3", "qwen2_vl", "llava", "whisper", "mllama", "granite", NULL,
};

static const cJSON *get(const cJSON *o, const char *k) {
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

/* Integer key: required (def < 0 means required) or defaulted. Range-checked. */
static enum st_status get_int(const cJSON *o, const char *key, int def, int lo, int hi, int *out,
                              const char *what, struct st_error *err) {
    const cJSON *v = get(o, key);
    if (!v || cJSON_IsNull(v)) {
        if (def == INT32_MIN)
            return st_errorf(err, ST_ERR_FORMAT, "%s: missing required key '%s'", what, key);
        *out = def;
        return ST_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return st_errorf(err, ST_ERR_FORMAT, "%s: '%s' must be an integer", what, key);
    if (v->valuedouble < lo || v->valuedouble > hi)
        return st_errorf(err, ST_ERR_FORMAT, "%s: '%s' = %.0f is out of range [%d, %d]", what, key,
                         v->valuedouble, lo, hi);
    *out = (int)v->valuedouble;
    return ST_OK;
}

static enum st_status get_num(const cJSON *o, const char *key, double def, double *out,
                              const char *what, struct st_error *err) {
    const cJSON *v = get(o, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return ST_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return st_errorf(err, ST_ERR_FORMAT, "%s: '%s' must be a number", what, key);
    *out = v->valuedouble;
    return ST_OK;
}

static int get_bool(const cJSON *o, const char *key, int def) {
    const cJSON *v = get(o, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return def;
}

#define TRY(x)                                                                                \
    do {                                                                                      \
        enum st_status rc_ = (x);                                                             \
        if (rc_) return rc_;                                                                  \
    } while (0)

static enum st_status parse_rope(struct st_model_config *c, const cJSON *root, const char *what,
                                 struct st_error *err) {
    const cJSON *params = get(root, "rope_parameters"); /* transformers v5 */
    TRY(get_num(root, "rope_theta", 10000.0, &c->rope_theta, what, err));
    if (cJSON_IsObject(params))
        TRY(get_num(params, "rope_theta", c->rope_theta, &c->rope_theta, what, err));
    if (!(c->rope_theta > 0))
        return st_errorf(err, ST_ERR_FORMAT, "%s: 'rope_theta' must be positive", what);
    /* RoPE on part of each head (Phi, GPT-NeoX style): not implemented, so refused rather than
     * computed on the whole head */
    for (int i = 0; i < 2; i++) {
        const cJSON *pf = get(i ? params : root, "partial_rotary_factor");
        if (pf && !cJSON_IsNull(pf) && !(cJSON_IsNumber(pf) && pf->valuedouble == 1.0))
            return st_errorf(err, ST_ERR_UNSUPPORTED, "%s: '%spartial_rotary_factor' other than 1 "
                             "(rotary embedding on part of each head) is not supported", what,
                             i ? "rope_parameters." : "");
    }
    const cJSON *rs = get(root, "rope_scaling");
    if (!cJSON_IsObject(rs) && cJSON_IsObject(params)) rs = params;
    c->rope_type = ST_ROPE_DEFAULT;
    c->rope_factor = 1.0;
    if (rs && !cJSON_IsNull(rs)) {
        if (!cJSON_IsObject(rs))
            return st_errorf(err, ST_ERR_FORMAT, "%s: 'rope_scaling' must be an object or null",
                             what);
        const cJSON *t = get(rs, "rope_type");
        if (!cJSON_IsString(t)) t = get(rs, "type");
        const char *type = cJSON_IsString(t) ? t->valuestring : "default";
        const char *key = rs == params ? "rope_parameters" : "rope_scaling";
        if (strcmp(type, "default") == 0) {
            c->rope_type = ST_ROPE_DEFAULT;
        } else if (strcmp(type, "linear") == 0) {
            c->rope_type = ST_ROPE_LINEAR;
            TRY(get_num(rs, "factor", 1.0, &c->rope_factor, what, err));
        } else if (strcmp(type, "llama3") == 0) {
            c->rope_type = ST_ROPE_LLAMA3;
            TRY(get_num(rs, "factor", 8.0, &c->rope_factor, what, err));
            TRY(get_num(rs, "low_freq_factor", 1.0, &c->rope_low_freq_factor, what, err));
            TRY(get_num(rs, "high_freq_factor", 4.0, &c->rope_high_freq_factor, what, err));
            TRY(get_int(rs, "original_max_position_embeddings", 8192, 1, 1 << 24,
                        &c->rope_original_max_pos, what, err));
            if (!(c->rope_high_freq_factor > c->rope_low_freq_factor) ||
                !(c->rope_low_freq_factor > 0))
                return st_errorf(err, ST_ERR_FORMAT,
                                 "%s: %s: need high_freq_factor > low_freq_factor > 0", what, key);
        } else {
            return st_errorf(err, ST_ERR_UNSUPPORTED,
                             "%s: %s type '%s' is not supported yet (supported: default, linear, "
                             "llama3)",
                             what, key, type);
        }
        if (!(c->rope_factor > 0))
            return st_errorf(err, ST_ERR_FORMAT, "%s: %s.factor must be positive", what, key);
    }
    return ST_OK;
}

enum st_status st_config_parse(struct st_model_config *c, const char *json, size_t len,
                               const char *what, struct st_error *err) {
    memset(c, 0, sizeof *c);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        const char *ep = cJSON_GetErrorPtr();
        long off = ep && ep >= json && ep <= json + len ? (long)(ep - json) : -1;
        return st_errorf(err, ST_ERR_FORMAT, "%s: not valid JSON (near byte %ld)", what, off);
    }
    enum st_status rc = ST_OK;
    /* nothing but whitespace may follow the object */
    for (const char *q = end && end >= json ? end : json + len; q < json + len; q++) {
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: not valid JSON (unexpected byte %ld after the "
                           "object)", what, (long)(q - json));
            goto done;
        }
    }
    if (!cJSON_IsObject(root)) {
        rc = st_errorf(err, ST_ERR_FORMAT, "%s: not a JSON object", what);
        goto done;
    }
#undef TRY
#define TRY(x)                                                                                \
    do {                                                                                      \
        rc = (x);                                                                             \
        if (rc) goto done;                                                                    \
    } while (0)

    const cJSON *mt = get(root, "model_type");
    if (!cJSON_IsString(mt)) {
        rc = st_errorf(err, ST_ERR_FORMAT, "%s: missing string key 'model_type'", what);
        goto done;
    }
    const char *type = mt->valuestring;
    int is_llama = strcmp(type, "llama") == 0, is_mistral = strcmp(type, "mistral") == 0;
    int is_qwen2 = strcmp(type, "qwen2") == 0, is_gemma = strcmp(type, "gemma") == 0;
    if (!(is_llama || is_mistral || is_qwen2 || is_gemma)) {
        int known = 0;
        for (int i = 0; known_unsupported[i]; i++) known |= strcmp(type, known_unsupported[i]) == 0;
        rc = st_errorf(err, ST_ERR_UNSUPPORTED,
                       "%s: model_type '%s' is %s (supported: %s)", what, type,
                       known ? "not supported yet" : "unknown", supported);
        goto done;
    }
    snprintf(c->model_type, sizeof c->model_type, "%s", type);
    const cJSON *arch = get(root, "architectures");
    if (cJSON_IsArray(arch) && cJSON_IsString(arch->child))
        snprintf(c->architecture, sizeof c->architecture, "%s", arch->child->valuestring);

    TRY(get_int(root, "vocab_size", INT32_MIN, 1, 1 << 24, &c->vocab_size, what, err));
    TRY(get_int(root, "hidden_size", INT32_MIN, 1, 1 << 16, &c->dim, what, err));
    TRY(get_int(root, "intermediate_size", INT32_MIN, 1, 1 << 20, &c->hidden_dim, what, err));
    TRY(get_int(root, "num_hidden_layers", INT32_MIN, 1, ST_MAX_LAYERS, &c->n_layers, what, err));
    TRY(get_int(root, "num_attention_heads", INT32_MIN, 1, 1024, &c->n_heads, what, err));
    TRY(get_int(root, "num_key_value_heads", c->n_heads, 1, 1024, &c->n_kv_heads, what, err));
    if (c->n_heads % c->n_kv_heads) {
        rc = st_errorf(err, ST_ERR_FORMAT,
                       "%s: num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)",
                       what, c->n_heads, c->n_kv_heads);
        goto done;
    }
    int def_hd = c->dim / c->n_heads;
    TRY(get_int(root, "head_dim", def_hd, 1, 4096, &c->head_dim, what, err));
    if (c->head_dim % 2) {
        rc = st_errorf(err, ST_ERR_FORMAT, "%s: head_dim %d must be even for RoPE", what,
                       c->head_dim);
        goto done;
    }
    const cJSON *hd = get(root, "head_dim"); /* null means "use the default", like absent */
    if ((!hd || cJSON_IsNull(hd)) && c->dim % c->n_heads) {
        rc = st_errorf(err, ST_ERR_FORMAT,
                       "%s: hidden_size %d is not divisible by num_attention_heads %d and no "
                       "head_dim is given",
                       what, c->dim, c->n_heads);
        goto done;
    }
    TRY(get_int(root, "max_position_embeddings", 2048, 1, 1 << 24, &c->max_seq_len, what, err));
    double eps = 1e-6;
    TRY(get_num(root, "rms_norm_eps", 1e-6, &eps, what, err));
    if (!(eps > 0) || eps > 1 || !((float)eps > 0)) { /* 1e-50 > 0, but (float)1e-50 == 0 */
        rc = st_errorf(err, ST_ERR_FORMAT, "%s: 'rms_norm_eps' = %g must be in (0, 1] (as float32)",
                       what, eps);
        goto done;
    }
    c->norm_eps = (float)eps;
    TRY(parse_rope(c, root, what, err));

    /* activation */
    const char *act_key = "hidden_act";
    const cJSON *act = get(root, "hidden_act");
    if (is_gemma && cJSON_IsString(get(root, "hidden_activation"))) {
        act_key = "hidden_activation";
        act = get(root, "hidden_activation");
    }
    const char *an = cJSON_IsString(act) ? act->valuestring : (is_gemma ? "gelu_pytorch_tanh" : "silu");
    if (strcmp(an, "silu") == 0 || strcmp(an, "swish") == 0) {
        c->act = ST_ACT_SILU;
    } else if (strcmp(an, "gelu_pytorch_tanh") == 0 || strcmp(an, "gelu_new") == 0 ||
               (is_gemma && strcmp(an, "gelu") == 0)) {
        /* Gemma's checkpoints say "gelu" but were trained with the tanh approximation; HF forces it. */
        c->act = ST_ACT_GELU_TANH;
    } else {
        rc = st_errorf(err, ST_ERR_UNSUPPORTED,
                       "%s: %s '%s' is not supported (supported: silu, gelu_pytorch_tanh)", what,
                       act_key, an);
        goto done;
    }

    /* biases */
    int attn_bias = get_bool(root, "attention_bias", 0);
    c->qkv_bias = is_qwen2 ? 1 : attn_bias;
    c->o_bias = is_qwen2 ? 0 : attn_bias;
    c->mlp_bias = get_bool(root, "mlp_bias", 0);
    c->tie_embeddings = get_bool(root, "tie_word_embeddings", is_gemma ? 1 : 0);
    c->norm_offset = is_gemma ? 1.0f : 0.0f;
    c->embed_scale = is_gemma ? sqrtf((float)c->dim) : 1.0f;

    /* sliding window */
    const cJSON *lt = get(root, "layer_types");
    int sw = 0;
    TRY(get_int(root, "sliding_window", 0, 0, 1 << 30, &sw, what, err));
    if (cJSON_IsArray(lt)) {
        if (cJSON_GetArraySize(lt) != c->n_layers) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: layer_types has %d entries for %d layers",
                           what, cJSON_GetArraySize(lt), c->n_layers);
            goto done;
        }
        int l = 0;
        for (const cJSON *x = lt->child; x; x = x->next, l++) {
            if (!cJSON_IsString(x)) {
                rc = st_errorf(err, ST_ERR_FORMAT, "%s: layer_types[%d] is not a string", what, l);
                goto done;
            }
            if (strcmp(x->valuestring, "sliding_attention") == 0) c->layer_sliding[l] = 1;
            else if (strcmp(x->valuestring, "full_attention") != 0) {
                rc = st_errorf(err, ST_ERR_UNSUPPORTED, "%s: layer_types[%d] '%s' not supported",
                               what, l, x->valuestring);
                goto done;
            }
        }
        if (is_qwen2 && !get_bool(root, "use_sliding_window", 0)) memset(c->layer_sliding, 0, sizeof c->layer_sliding);
    } else if (is_mistral && sw > 0) {
        for (int l = 0; l < c->n_layers; l++) c->layer_sliding[l] = 1;
    } else if (is_qwen2 && get_bool(root, "use_sliding_window", 0) && sw > 0) {
        int from = 0;
        TRY(get_int(root, "max_window_layers", c->n_layers, 0, ST_MAX_LAYERS, &from, what, err));
        for (int l = from; l < c->n_layers; l++) c->layer_sliding[l] = 1;
    }
    c->sliding_window = sw;
    for (int l = 0; l < c->n_layers; l++)
        if (c->layer_sliding[l] && sw <= 0) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: layer %d uses sliding attention but "
                           "'sliding_window' is not a positive integer", what, l);
            goto done;
        }

    /* special tokens */
    TRY(get_int(root, "bos_token_id", -1, -1, c->vocab_size - 1, &c->bos_token_id, what, err));
    TRY(get_int(root, "pad_token_id", -1, -1, 1 << 30, &c->pad_token_id, what, err));
    const cJSON *eos = get(root, "eos_token_id");
    if (cJSON_IsArray(eos)) {
        int k = 0;
        for (const cJSON *x = eos->child; x; x = x->next, k++) {
            if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) ||
                x->valuedouble < 0 || x->valuedouble >= c->vocab_size || c->n_eos >= ST_MAX_EOS) {
                rc = st_errorf(err, ST_ERR_FORMAT,
                               "%s: eos_token_id[%d] is not a token id in [0, %d) (at most %d ids)",
                               what, k, c->vocab_size, ST_MAX_EOS);
                goto done;
            }
            c->eos_token_ids[c->n_eos++] = (int)x->valuedouble;
        }
    } else if (eos && !cJSON_IsNull(eos)) {
        int e;
        TRY(get_int(root, "eos_token_id", -1, 0, c->vocab_size - 1, &e, what, err));
        c->eos_token_ids[c->n_eos++] = e;
    }
    const cJSON *dt = get(root, "torch_dtype");
    if (!cJSON_IsString(dt)) dt = get(root, "dtype");
    snprintf(c->torch_dtype, sizeof c->torch_dtype, "%s", cJSON_IsString(dt) ? dt->valuestring : "");
    const cJSON *qc = get(root, "quantization_config");
    if (cJSON_IsObject(qc)) {
        /* bitsandbytes 4-bit NF4 (the QLoRA checkpoints transformers saves) is read as stored;
         * other methods (GPTQ, AWQ, bnb 8-bit, FP4 ...) are not */
        const cJSON *qm = get(qc, "quant_method"), *qt = get(qc, "bnb_4bit_quant_type");
        int bnb_nf4 = cJSON_IsString(qm) && strcmp(qm->valuestring, "bitsandbytes") == 0 &&
                      cJSON_IsTrue(get(qc, "load_in_4bit")) && cJSON_IsString(qt) &&
                      strcmp(qt->valuestring, "nf4") == 0;
        if (!bnb_nf4) {
            rc = st_errorf(err, ST_ERR_UNSUPPORTED,
                           "%s: quantization_config %s is not supported: only bitsandbytes 4-bit "
                           "NF4 checkpoints are; or use the bf16/f16/f32 model (and --quantize)",
                           what, cJSON_IsString(qm) ? qm->valuestring : "(no quant_method)");
            goto done;
        }
    }
done:
    cJSON_Delete(root);
    return rc;
}

enum st_status st_config_load(struct st_model_config *c, const char *dir, struct st_error *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text;
    size_t len;
    enum st_status rc = st_read_file(path, 16u << 20, &text, &len, err);
    if (rc) return rc;
    rc = st_config_parse(c, text, len, path, err);
    st_free(text);
    return rc;
}

int st_config_layer_window(const struct st_model_config *c, int layer) {
    return c->layer_sliding[layer] ? c->sliding_window : 0;
}
