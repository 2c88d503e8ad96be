/* fuse.c: merge a LoRA adapter into its base model and write a Hugging Face model folder.
 *
 * DESIGN: tensor by tensor and rows at a time, never the whole model twice in memory: each adapted
 * weight is converted to F32, W' = W + scale * B A is added in float32, and the result is stored
 * back in the tensor's own dtype (so a bf16 model stays bf16; merging rounds to that dtype). Every
 * other tensor is copied byte for byte. A quantised base (QLoRA) is dequantised and written as
 * BF16, merged or not; the auxiliary tensors of a bitsandbytes checkpoint are dropped and so is
 * config.json's quantization_config. One model.safetensors is written (temp, fsync, rename), and
 * the tokenizer/config files are copied. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "streamtune/model.h"
#include "streamtune/nf4.h"

static const char *copy_files[] = {"generation_config.json", "tokenizer.json",
                                   "tokenizer_config.json", "special_tokens_map.json",
                                   "chat_template.jinja", "tokenizer.model", NULL};

/* Which LoRA module, if any, this tensor name is: model.layers.{l}.{self_attn|mlp}.{m}.weight */
static const struct st_lora_module *adapted(const struct st_lora *lo, const char *name) {
    int l;
    char mod[32], tail[16];
    if (sscanf(name, "model.layers.%d.self_attn.%31[a-z_].%15s", &l, mod, tail) != 3 &&
        sscanf(name, "model.layers.%d.mlp.%31[a-z_].%15s", &l, mod, tail) != 3)
        return NULL;
    if (strcmp(tail, "weight") != 0 || l < 0 || l >= lo->n_layers) return NULL;
    for (int m = 0; m < ST_LIN_COUNT; m++)
        if (!strcmp(mod, st_lin_name((enum st_lin)m))) return st_lora_get(lo, l, m);
    return NULL;
}

static void from_f32(void *dst, const float *src, enum st_dtype t, size_t n) {
    uint8_t *d = dst;
    for (size_t i = 0; i < n; i++) {
        if (t == ST_F32) memcpy(d + 4 * i, &src[i], 4);
        else if (t == ST_BF16) {
            uint16_t h = st_f32_to_bf16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        } else {
            uint16_t h = st_f32_to_f16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
    }
}

static enum st_status copy_file(const char *src, const char *dst, struct st_error *err) {
    char *text;
    size_t len;
    enum st_status rc = st_read_file(src, 1u << 30, &text, &len, err);
    if (rc) return rc;
    rc = st_write_file_atomic(dst, text, len, err);
    st_free(text);
    return rc;
}

/* The quantised form of tensor `name` in m, if any (a projection, the embedding or the head). */
static const struct st_qweight *quantised(const struct st_model *m, const char *name) {
    int l;
    char mod[32], tail[16];
    if (!m->quant) return NULL;
    const struct st_qweight *q = NULL;
    if (!strcmp(name, "model.embed_tokens.weight")) q = &m->q_embed;
    else if (!strcmp(name, "lm_head.weight")) q = &m->q_head;
    else if ((sscanf(name, "model.layers.%d.self_attn.%31[a-z_].%15s", &l, mod, tail) == 3 ||
              sscanf(name, "model.layers.%d.mlp.%31[a-z_].%15s", &l, mod, tail) == 3) &&
             !strcmp(tail, "weight") && l >= 0 && l < m->cfg.n_layers)
        for (int k = 0; k < ST_LIN_COUNT; k++)
            if (!strcmp(mod, st_lin_name((enum st_lin)k))) q = &m->layers[l].q[k];
    return q && q->kind ? q : NULL;
}

/* A bitsandbytes auxiliary tensor ({p}.weight.absmax, .quant_map, .quant_state.*, ...). */
static int bnb_aux(const char *name) {
    const char *w = strstr(name, ".weight.");
    if (!w) return 0;
    const char *t = w + 8;
    return !strcmp(t, "absmax") || !strcmp(t, "quant_map") || !strcmp(t, "nested_absmax") ||
           !strcmp(t, "nested_quant_map") || !strncmp(t, "quant_state.", 12);
}

/* config.json without quantization_config (the fused model is 16-bit). */
static enum st_status write_config(const char *model_dir, const char *out_dir, int quantised_base,
                                   struct st_error *err) {
    char src[4096], dst[4096], *text;
    size_t len;
    snprintf(src, sizeof src, "%s/config.json", model_dir);
    snprintf(dst, sizeof dst, "%s/config.json", out_dir);
    enum st_status rc = st_read_file(src, 1u << 26, &text, &len, err);
    if (rc) return rc;
    cJSON *js = cJSON_ParseWithLength(text, len);
    if (js && cJSON_GetObjectItemCaseSensitive(js, "quantization_config")) {
        cJSON_DeleteItemFromObjectCaseSensitive(js, "quantization_config");
        quantised_base = 1;
    }
    if (js && quantised_base) cJSON_ReplaceItemInObjectCaseSensitive(js, "torch_dtype",
                                                                      cJSON_CreateString("bfloat16"));
    char *out = js && quantised_base ? cJSON_Print(js) : NULL;
    if (out)
        rc = st_write_file_atomic(dst, out, strlen(out), err);
    else
        rc = st_write_file_atomic(dst, text, len, err);
    cJSON_free(out);
    cJSON_Delete(js);
    st_free(text);
    return rc;
}

enum st_status st_model_fuse(const char *model_dir, const char *adapter_dir, const char *out_dir,
                             struct st_error *err) {
    return st_model_fuse_ex(model_dir, adapter_dir, out_dir, NULL, err);
}

#define FUSE_CHUNK ((size_t)1 << 20) /* elements per slice of a merged tensor */

enum st_status st_model_fuse_ex(const char *model_dir, const char *adapter_dir,
                                const char *out_dir, const struct st_model_load_options *o,
                                struct st_error *err) {
    struct st_model m;
    struct st_model_load_options lopt; /* fusing reads the stored tensors: nothing to pack */
    st_model_load_options_init(&lopt);
    if (o) lopt = *o;
    lopt.compute_bf16 = lopt.pack_f32 = 0;
    /* the output over the base (or the adapter) would replace the files being read */
    struct stat so, sm, sa;
    int out_exists = stat(out_dir, &so) == 0;
    int on_model = out_exists && stat(model_dir, &sm) == 0 && so.st_dev == sm.st_dev &&
                   so.st_ino == sm.st_ino;
    int on_adapter = out_exists && stat(adapter_dir, &sa) == 0 && so.st_dev == sa.st_dev &&
                     so.st_ino == sa.st_ino;
    if (on_model || on_adapter)
        return st_errorf(err, ST_ERR_ARG, "fuse: --out %s is the %s's folder: write the fused "
                         "model to another", out_dir, on_model ? "base model" : "adapter");
    enum st_status rc = st_model_load_ex(&m, model_dir, &lopt, err);
    if (rc) return rc;
    struct st_lora lo;
    if ((rc = st_lora_load(&lo, &m.cfg, adapter_dir, err))) {
        st_model_free(&m);
        return rc;
    }
    if ((rc = st_mkdirs(out_dir, err))) goto done;
    int n = st_safetensors_count(m.st);
    /* header */
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    uint64_t off = 0;
    size_t max_cols = 1;
    for (int i = 0; i < n; i++) {
        const struct st_tensor_view *t = st_safetensors_at(m.st, i);
        if (m.quant && bnb_aux(t->name)) continue;
        const struct st_qweight *q = quantised(&m, t->name);
        const struct st_lora_module *lm = adapted(&lo, t->name);
        enum st_dtype dt = q ? ST_BF16 : t->dtype;
        int64_t shape[2] = {q ? (int64_t)q->rows : t->shape[0], q ? (int64_t)q->cols : t->shape[1]};
        int ndim = q ? 2 : t->ndim;
        size_t nbytes = q ? q->rows * q->cols * 2 : t->nbytes;
        cJSON *e = cJSON_AddObjectToObject(root, t->name);
        cJSON_AddStringToObject(e, "dtype", st_dtype_name(dt));
        cJSON *sh = cJSON_AddArrayToObject(e, "shape");
        for (int d = 0; d < ndim; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)(d < 2 ? shape[d] : t->shape[d])));
        cJSON *of = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + nbytes)));
        off += nbytes;
        if (lm && !q &&
            ((t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16) || t->ndim != 2 ||
             (size_t)t->shape[0] != lm->out || (size_t)t->shape[1] != lm->in)) {
            cJSON_Delete(root);
            rc = st_errorf(err, ST_ERR_SHAPE, "%s: tensor '%s' does not match the adapter",
                           t->file, t->name);
            goto done;
        }
        if ((lm || q) && (size_t)shape[1] > max_cols) max_cols = (size_t)shape[1];
    }
    char *js = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!js) {
        rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
        goto done;
    }
    size_t jl = strlen(js), padded = (jl + 7) & ~(size_t)7;
    size_t cap = FUSE_CHUNK > max_cols ? FUSE_CHUNK / max_cols * max_cols : max_cols;
    float *w = st_malloc(cap * sizeof(float));
    void *packed = st_malloc(cap * sizeof(float));
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = w && packed ? fopen(tmp, "wb") : NULL;
    if (!f) {
        rc = w && packed ? st_errorf(err, ST_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno))
                         : st_errorf(err, ST_ERR_NOMEM, "out of memory");
        cJSON_free(js);
        st_free(w);
        st_free(packed);
        goto done;
    }
    uint8_t hl[8];
    for (int i = 0; i < 8; i++) hl[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int ok = fwrite(hl, 1, 8, f) == 8 && fwrite(js, 1, jl, f) == jl;
    for (size_t i = jl; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
    cJSON_free(js);
    size_t r = (size_t)lo.cfg.rank;
    for (int i = 0; ok && !rc && i < n; i++) {
        const struct st_tensor_view *t = st_safetensors_at(m.st, i);
        if (m.quant && bnb_aux(t->name)) continue;
        const struct st_qweight *q = quantised(&m, t->name);
        const struct st_lora_module *lm = adapted(&lo, t->name);
        if (!lm && !q) {
            ok = t->nbytes == 0 || fwrite(t->data, 1, t->nbytes, f) == t->nbytes;
            continue;
        }
        size_t rows = q ? q->rows : (size_t)t->shape[0], cols = q ? q->cols : (size_t)t->shape[1];
        enum st_dtype dt = q ? ST_BF16 : t->dtype;
        size_t step = cap / cols, es = st_dtype_size(t->dtype);
        for (size_t r0 = 0; ok && r0 < rows; r0 += step) {
            size_t nr = rows - r0 < step ? rows - r0 : step;
            if (q)
                st_qweight_dequant_rows(w, q, r0, nr);
            else if ((rc = st_convert_to_f32(w, (const uint8_t *)t->data + r0 * cols * es,
                                             t->dtype, nr * cols, err)))
                break;
            /* W (out, in) += scale * B (out, r) A (r, in), accumulated in double per element */
            for (size_t o2 = 0; lm && o2 < nr; o2++)
                for (size_t c = 0; c < cols; c++) {
                    double s = 0;
                    for (size_t k = 0; k < r; k++)
                        s += (double)lm->b[(r0 + o2) * r + k] * lm->a[k * lm->in + c];
                    w[o2 * cols + c] += (float)(lo.scale * s);
                }
            from_f32(packed, w, dt, nr * cols);
            ok = fwrite(packed, 1, nr * cols * st_dtype_size(dt), f) == nr * cols * st_dtype_size(dt);
        }
    }
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = (fclose(f) == 0) && ok;
    st_free(w);
    st_free(packed);
    if (!rc && (!ok || rename(tmp, path) != 0))
        rc = st_errorf(err, ST_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    if (rc) {
        unlink(tmp);
        goto done;
    }
    rc = write_config(model_dir, out_dir, m.quant != ST_QUANT_NONE, err);
    for (int i = 0; copy_files[i] && !rc; i++) {
        char src[4096], dst[4096];
        snprintf(src, sizeof src, "%s/%s", model_dir, copy_files[i]);
        snprintf(dst, sizeof dst, "%s/%s", out_dir, copy_files[i]);
        if (access(src, R_OK) == 0) rc = copy_file(src, dst, err);
    }
done:
    st_lora_free(&lo);
    st_model_free(&m);
    return rc;
}
