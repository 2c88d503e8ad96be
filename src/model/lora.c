/* lora.c: LoRA adapters: allocation, PEFT initialisation, PEFT adapter files (save and load).
 *
 * DESIGN: one size table (layer x module -> (out, in)) drives allocation, saving and loading, so
 * the three always agree. Saving writes adapter_model.safetensors with PEFT's key names and
 * adapter_config.json with PEFT's fields; loading accepts any PEFT LoRA adapter whose tensors
 * match the model (layers and modules are taken from the keys present, so layers_to_transform
 * and partial target lists load as they are). */
#include "streamtune/lora.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "streamtune/formats.h"

static const char *lin_names[ST_LIN_COUNT] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                              "gate_proj", "up_proj", "down_proj"};

const char *st_lin_name(enum st_lin l) { return lin_names[l]; }

void st_lin_shape(const struct st_model_config *c, enum st_lin l, size_t *out, size_t *in) {
    size_t D = (size_t)c->dim, H = (size_t)c->hidden_dim;
    size_t QD = (size_t)c->n_heads * (size_t)c->head_dim;
    size_t KD = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    switch (l) {
    case ST_LIN_Q: *out = QD; *in = D; break;
    case ST_LIN_K:
    case ST_LIN_V: *out = KD; *in = D; break;
    case ST_LIN_O: *out = D; *in = QD; break;
    case ST_LIN_GATE:
    case ST_LIN_UP: *out = H; *in = D; break;
    default: *out = D; *in = H; break;
    }
}

void st_lora_key(char *buf, size_t n, int layer, enum st_lin m, int is_b) {
    snprintf(buf, n, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", layer,
             m <= ST_LIN_O ? "self_attn" : "mlp", lin_names[m], is_b ? 'B' : 'A');
}

enum st_status st_lora_parse_targets(const char *s, unsigned *mask, struct st_error *err) {
    *mask = 0;
    if (!strcmp(s, "all-linear") || !strcmp(s, "all")) {
        *mask = ST_LIN_ALL;
        return ST_OK;
    }
    char buf[512];
    snprintf(buf, sizeof buf, "%s", s);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
        if (!strcmp(tok, "attn")) {
            *mask |= 0xfu;
            continue;
        }
        if (!strcmp(tok, "mlp")) {
            *mask |= 0x70u;
            continue;
        }
        int found = 0;
        for (int l = 0; l < ST_LIN_COUNT; l++)
            if (!strcmp(tok, lin_names[l]) || (!strncmp(tok, lin_names[l], 1) && !tok[1] &&
                                               l <= ST_LIN_O)) {
                *mask |= 1u << l;
                found = 1;
            }
        if (!found)
            return st_errorf(err, ST_ERR_ARG,
                             "--targets: unknown module '%s' (use q_proj, k_proj, v_proj, o_proj, "
                             "gate_proj, up_proj, down_proj, attn, mlp or all-linear)",
                             tok);
    }
    if (!*mask) return st_errorf(err, ST_ERR_ARG, "--targets: no module named");
    return ST_OK;
}

void st_lora_free(struct st_lora *lo) {
    st_free(lo->mod);
    st_free(lo->params);
    st_free(lo->grads);
    memset(lo, 0, sizeof *lo);
}

void st_lora_zero_grads(struct st_lora *lo) {
    memset(lo->grads, 0, lo->n_params * sizeof(float));
}

enum st_status st_lora_grad_view(struct st_lora *g, const struct st_lora *lo,
                                 struct st_error *err) {
    size_t nm = (size_t)lo->n_layers * ST_LIN_COUNT;
    *g = *lo;
    g->params = NULL;
    g->mod = st_malloc((nm ? nm : 1) * sizeof *g->mod);
    g->grads = st_calloc(lo->n_params ? lo->n_params : 1, sizeof(float));
    if (!g->mod || !g->grads) {
        st_lora_grad_view_free(g);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory for adapter gradients");
    }
    for (size_t i = 0; i < nm; i++) {
        g->mod[i] = lo->mod[i];
        if (lo->mod[i].ga) {
            g->mod[i].ga = g->grads + (lo->mod[i].ga - lo->grads);
            g->mod[i].gb = g->grads + (lo->mod[i].gb - lo->grads);
        }
    }
    return ST_OK;
}

void st_lora_grad_view_free(struct st_lora *g) {
    st_free(g->mod);
    st_free(g->grads);
    memset(g, 0, sizeof *g);
}

static float lora_scale(const struct st_lora_config *lc) {
    return lc->rslora ? lc->alpha / sqrtf((float)lc->rank) : lc->alpha / (float)lc->rank;
}

/* Allocate for the modules marked in present[l * ST_LIN_COUNT + m]. */
static enum st_status lora_alloc(struct st_lora *lo, const struct st_model_config *c,
                                 const struct st_lora_config *lc, const uint8_t *present,
                                 struct st_error *err) {
    memset(lo, 0, sizeof *lo);
    lo->cfg = *lc;
    lo->scale = lora_scale(lc);
    lo->n_layers = c->n_layers;
    size_t nm = (size_t)c->n_layers * ST_LIN_COUNT, total = 0, r = (size_t)lc->rank;
    lo->mod = st_calloc(nm, sizeof *lo->mod);
    if (!lo->mod) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < nm; i++) {
        if (!present[i]) continue;
        size_t out, in;
        st_lin_shape(c, (enum st_lin)(i % ST_LIN_COUNT), &out, &in);
        total += r * in + out * r;
    }
    lo->n_params = total;
    lo->params = st_calloc(total ? total : 1, sizeof(float));
    lo->grads = st_calloc(total ? total : 1, sizeof(float));
    if (!lo->params || !lo->grads) {
        st_lora_free(lo);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory for %zu LoRA parameters", total);
    }
    size_t off = 0;
    for (size_t i = 0; i < nm; i++) {
        if (!present[i]) continue;
        struct st_lora_module *m = &lo->mod[i];
        st_lin_shape(c, (enum st_lin)(i % ST_LIN_COUNT), &m->out, &m->in);
        m->a = lo->params + off;
        m->ga = lo->grads + off;
        off += r * m->in;
        m->b = lo->params + off;
        m->gb = lo->grads + off;
        off += m->out * r;
    }
    return ST_OK;
}

enum st_status st_lora_init(struct st_lora *lo, const struct st_model_config *c,
                            const struct st_lora_config *lc, uint64_t seed, struct st_error *err) {
    if (lc->rank < 1 || lc->rank > 4096)
        return st_errorf(err, ST_ERR_ARG, "--rank %d: expected 1..4096", lc->rank);
    if (!(lc->alpha > 0)) return st_errorf(err, ST_ERR_ARG, "--alpha must be positive");
    if (lc->dropout < 0 || lc->dropout >= 1)
        return st_errorf(err, ST_ERR_ARG, "--dropout %g: expected [0, 1)", lc->dropout);
    if (lc->first_layer < 0 || lc->first_layer >= c->n_layers)
        return st_errorf(err, ST_ERR_ARG, "--layers: the model has %d layers", c->n_layers);
    if (!(lc->targets & ST_LIN_ALL)) return st_errorf(err, ST_ERR_ARG, "no LoRA target modules");
    size_t nm = (size_t)c->n_layers * ST_LIN_COUNT;
    uint8_t *present = st_calloc(nm, 1);
    if (!present) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    for (int l = lc->first_layer; l < c->n_layers; l++)
        for (int m = 0; m < ST_LIN_COUNT; m++)
            present[(size_t)l * ST_LIN_COUNT + (size_t)m] = (lc->targets >> m) & 1u;
    enum st_status rc = lora_alloc(lo, c, lc, present, err);
    st_free(present);
    if (rc) return rc;
    /* PEFT default: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); B = 0 */
    struct st_rng rng;
    st_rng_seed(&rng, seed ^ 0x10aa5eedULL);
    size_t r = (size_t)lc->rank;
    for (size_t i = 0; i < nm; i++) {
        struct st_lora_module *m = &lo->mod[i];
        if (!m->a) continue;
        float bound = 1.0f / sqrtf((float)m->in);
        for (size_t k = 0; k < r * m->in; k++) m->a[k] = (2.0f * st_rng_uniformf(&rng) - 1.0f) * bound;
    }
    return ST_OK;
}

/* ---------------------------------------------------------------- files */

enum st_status st_lora_save(const struct st_lora *lo, const char *dir, const char *base_model,
                            struct st_error *err) {
    enum st_status rc = st_mkdirs(dir, err);
    if (rc) return rc;
    size_t nm = (size_t)lo->n_layers * ST_LIN_COUNT, n = 0;
    struct st_tensor_out *t = st_calloc(2 * nm + 1, sizeof *t);
    char(*names)[160] = st_calloc(2 * nm + 1, sizeof *names);
    if (!t || !names) {
        st_free(t);
        st_free(names);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    }
    unsigned targets = 0;
    int first = -1;
    size_t r = (size_t)lo->cfg.rank;
    for (size_t i = 0; i < nm; i++) {
        const struct st_lora_module *m = &lo->mod[i];
        if (!m->a) continue;
        int layer = (int)(i / ST_LIN_COUNT);
        enum st_lin l = (enum st_lin)(i % ST_LIN_COUNT);
        targets |= 1u << l;
        if (first < 0) first = layer;
        for (int isb = 0; isb < 2; isb++) {
            st_lora_key(names[n], sizeof names[n], layer, l, isb);
            t[n].name = names[n];
            t[n].dtype = ST_F32;
            t[n].ndim = 2;
            t[n].shape[0] = isb ? (int64_t)m->out : (int64_t)r;
            t[n].shape[1] = isb ? (int64_t)r : (int64_t)m->in;
            t[n].data = isb ? m->b : m->a;
            n++;
        }
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    rc = st_safetensors_write(path, t, (int)n, err);
    st_free(t);
    st_free(names);
    if (rc) return rc;
    /* adapter_config.json with PEFT's fields */
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "peft_type", "LORA");
    cJSON_AddStringToObject(cfg, "task_type", "CAUSAL_LM");
    cJSON_AddStringToObject(cfg, "base_model_name_or_path", base_model ? base_model : "");
    cJSON_AddNumberToObject(cfg, "r", lo->cfg.rank);
    cJSON_AddNumberToObject(cfg, "lora_alpha", lo->cfg.alpha);
    cJSON_AddNumberToObject(cfg, "lora_dropout", lo->cfg.dropout);
    cJSON *tm = cJSON_AddArrayToObject(cfg, "target_modules");
    for (int l = 0; l < ST_LIN_COUNT; l++)
        if (targets >> l & 1u) cJSON_AddItemToArray(tm, cJSON_CreateString(lin_names[l]));
    if (first > 0) {
        cJSON *lt = cJSON_AddArrayToObject(cfg, "layers_to_transform");
        for (int l = first; l < lo->n_layers; l++) cJSON_AddItemToArray(lt, cJSON_CreateNumber(l));
    } else {
        cJSON_AddNullToObject(cfg, "layers_to_transform");
    }
    cJSON_AddNullToObject(cfg, "layers_pattern");
    cJSON_AddStringToObject(cfg, "bias", "none");
    cJSON_AddBoolToObject(cfg, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(cfg, "inference_mode", 1);
    cJSON_AddBoolToObject(cfg, "init_lora_weights", 1);
    cJSON_AddNullToObject(cfg, "modules_to_save");
    cJSON_AddObjectToObject(cfg, "rank_pattern");
    cJSON_AddObjectToObject(cfg, "alpha_pattern");
    cJSON_AddBoolToObject(cfg, "use_rslora", lo->cfg.rslora);
    cJSON_AddBoolToObject(cfg, "use_dora", 0);
    cJSON_AddNullToObject(cfg, "revision");
    char *js = cJSON_Print(cfg);
    cJSON_Delete(cfg);
    if (!js) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    rc = st_write_file_atomic(path, js, strlen(js), err);
    cJSON_free(js);
    return rc;
}

enum st_status st_lora_load(struct st_lora *lo, const struct st_model_config *c, const char *dir,
                            struct st_error *err) {
    memset(lo, 0, sizeof *lo);
    char path[4096], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    enum st_status rc = st_read_file(path, 16u << 20, &text, &len, err);
    if (rc) return rc;
    cJSON *cfg = cJSON_ParseWithLength(text, len);
    st_free(text);
    if (!cfg) return st_errorf(err, ST_ERR_FORMAT, "%s: not valid JSON", path);
    struct st_lora_config lc = {0};
    const cJSON *pt = cJSON_GetObjectItem(cfg, "peft_type"), *r = cJSON_GetObjectItem(cfg, "r");
    const cJSON *al = cJSON_GetObjectItem(cfg, "lora_alpha");
    const cJSON *dr = cJSON_GetObjectItem(cfg, "lora_dropout");
    if (cJSON_IsString(pt) && strcmp(pt->valuestring, "LORA") != 0)
        rc = st_errorf(err, ST_ERR_UNSUPPORTED, "%s: peft_type '%s' is not supported (LORA only)",
                       path, pt->valuestring);
    else if (!cJSON_IsNumber(r) || r->valueint < 1 || r->valueint > 4096)
        rc = st_errorf(err, ST_ERR_FORMAT, "%s: 'r' must be an integer in 1..4096", path);
    else if (cJSON_IsTrue(cJSON_GetObjectItem(cfg, "use_dora")))
        rc = st_errorf(err, ST_ERR_UNSUPPORTED, "%s: use_dora is not supported yet", path);
    else if (cJSON_GetArraySize(cJSON_GetObjectItem(cfg, "rank_pattern")) > 0 ||
             cJSON_GetArraySize(cJSON_GetObjectItem(cfg, "alpha_pattern")) > 0)
        rc = st_errorf(err, ST_ERR_UNSUPPORTED,
                       "%s: rank_pattern/alpha_pattern are not supported yet", path);
    else if (cJSON_IsString(cJSON_GetObjectItem(cfg, "bias")) &&
             strcmp(cJSON_GetObjectItem(cfg, "bias")->valuestring, "none") != 0)
        rc = st_errorf(err, ST_ERR_UNSUPPORTED, "%s: bias other than \"none\" is not supported",
                       path);
    if (!rc) {
        lc.rank = r->valueint;
        lc.alpha = cJSON_IsNumber(al) ? (float)al->valuedouble : (float)lc.rank;
        lc.dropout = cJSON_IsNumber(dr) ? (float)dr->valuedouble : 0.0f;
        lc.rslora = cJSON_IsTrue(cJSON_GetObjectItem(cfg, "use_rslora"));
    }
    cJSON_Delete(cfg);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    struct st_safetensors *st;
    rc = st_safetensors_open(&st, path, err);
    if (rc) return rc;
    size_t nm = (size_t)c->n_layers * ST_LIN_COUNT;
    uint8_t *present = st_calloc(nm, 1);
    if (!present) {
        st_safetensors_close(st);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    }
    int found = 0;
    char key[2][200];
    for (size_t i = 0; i < nm && !rc; i++) {
        int layer = (int)(i / ST_LIN_COUNT);
        enum st_lin l = (enum st_lin)(i % ST_LIN_COUNT);
        st_lora_key(key[0], sizeof key[0], layer, l, 0);
        st_lora_key(key[1], sizeof key[1], layer, l, 1);
        const struct st_tensor_view *a = st_safetensors_find(st, key[0]);
        const struct st_tensor_view *b = st_safetensors_find(st, key[1]);
        if (!a && !b) continue;
        if (!a || !b) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: has %s but not %s", path, a ? key[0] : key[1],
                           a ? key[1] : key[0]);
            break;
        }
        size_t out, in;
        st_lin_shape(c, l, &out, &in);
        int64_t sa[2] = {lc.rank, (int64_t)in}, sb[2] = {(int64_t)out, lc.rank};
        const struct st_tensor_view *tv;
        rc = st_safetensors_expect(st, key[0], 2, sa, &tv, err);
        if (!rc) rc = st_safetensors_expect(st, key[1], 2, sb, &tv, err);
        present[i] = 1;
        found++;
        lc.targets |= 1u << l;
    }
    /* keys we do not understand (other adapters, modules_to_save) are an error, not ignored */
    for (int i = 0; !rc && i < st_safetensors_count(st); i++) {
        const char *name = st_safetensors_at(st, i)->name;
        int ok = strstr(name, ".lora_A.weight") || strstr(name, ".lora_B.weight");
        int layer = -1;
        if (ok && sscanf(name, "base_model.model.model.layers.%d.", &layer) != 1) ok = 0;
        if (ok && (layer < 0 || layer >= c->n_layers)) ok = 0;
        if (!ok)
            rc = st_errorf(err, ST_ERR_FORMAT,
                           "%s: tensor '%s' is not a LoRA weight of this %d-layer model", path,
                           name, c->n_layers);
    }
    if (!rc && !found) rc = st_errorf(err, ST_ERR_FORMAT, "%s: no LoRA tensors", path);
    if (!rc) rc = lora_alloc(lo, c, &lc, present, err);
    for (size_t i = 0; i < nm && !rc; i++) {
        struct st_lora_module *m = &lo->mod[i];
        if (!m->a) continue;
        int layer = (int)(i / ST_LIN_COUNT);
        st_lora_key(key[0], sizeof key[0], layer, (enum st_lin)(i % ST_LIN_COUNT), 0);
        st_lora_key(key[1], sizeof key[1], layer, (enum st_lin)(i % ST_LIN_COUNT), 1);
        const struct st_tensor_view *a = st_safetensors_find(st, key[0]);
        const struct st_tensor_view *b = st_safetensors_find(st, key[1]);
        rc = st_convert_to_f32(m->a, a->data, a->dtype, (size_t)st_tensor_numel(a), err);
        if (!rc) rc = st_convert_to_f32(m->b, b->data, b->dtype, (size_t)st_tensor_numel(b), err);
    }
    for (int l = 0; l < c->n_layers && !rc; l++) {
        int any = 0;
        for (int m = 0; m < ST_LIN_COUNT; m++) any |= present[(size_t)l * ST_LIN_COUNT + (size_t)m];
        if (any) {
            lo->cfg.first_layer = l;
            break;
        }
    }
    st_free(present);
    st_safetensors_close(st);
    if (rc) st_lora_free(lo);
    return rc;
}
