/* model.c: load a Hugging Face decoder model and run the configurable block forward.
 *
 * DESIGN: loading is two passes over a request table (name, shape, destination pointer): the first
 * validates every tensor and sums the bytes that need converting to F32 (BF16, F16, or an F32
 * tensor that is not 4-byte aligned in the map); the second fills one arena. The forward reads like
 * the architecture: embed -> L x (norm, attention, residual, norm, MLP, residual) -> norm -> head.
 * All buffers come from st_acts (planned up front). */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define LAYER_FMT "model.layers.%d.%s"

struct request {
    char name[160];
    int ndim;
    int64_t shape[2];
    const float **dst;
    int optional; /* absent is fine (e.g. a bias the config does not ask for) */
};

static void add_req(struct request *r, int *n, const char *name, int64_t d0, int64_t d1,
                    const float **dst) {
    struct request *q = &r[(*n)++];
    snprintf(q->name, sizeof q->name, "%s", name);
    q->ndim = d1 ? 2 : 1;
    q->shape[0] = d0;
    q->shape[1] = d1;
    q->dst = dst;
    q->optional = 0;
}

static void add_layer_req(struct request *r, int *n, int l, const char *what, int64_t d0,
                          int64_t d1, const float **dst) {
    char name[160];
    snprintf(name, sizeof name, LAYER_FMT, l, what);
    add_req(r, n, name, d0, d1, dst);
}

static int needs_convert(const struct st_tensor_view *t) {
    return t->dtype != ST_F32 || ((uintptr_t)t->data & 3u) != 0;
}

enum st_status st_model_load(struct st_model *m, const char *dir, struct st_error *err) {
    memset(m, 0, sizeof *m);
    snprintf(m->path, sizeof m->path, "%s", dir);
    m->k = st_kernels_cpu();
    enum st_status rc = st_config_load(&m->cfg, dir, err);
    if (rc) return rc;
    const struct st_model_config *c = &m->cfg;
    rc = st_safetensors_open(&m->st, dir, err);
    if (rc) return rc;

    int64_t D = c->dim, H = c->hidden_dim, V = c->vocab_size;
    int64_t QD = (int64_t)c->n_heads * c->head_dim, KD = (int64_t)c->n_kv_heads * c->head_dim;
    int max_req = 3 + c->n_layers * 16;
    struct request *req = st_calloc((size_t)max_req, sizeof *req);
    m->layers = st_calloc((size_t)c->n_layers, sizeof *m->layers);
    m->inv_freq = st_calloc((size_t)c->head_dim / 2, sizeof(float));
    if (!req || !m->layers || !m->inv_freq) {
        st_free(req);
        st_model_free(m);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory loading %s", dir);
    }
    int n = 0;
    add_req(req, &n, "model.embed_tokens.weight", V, D, &m->embed);
    add_req(req, &n, "model.norm.weight", D, 0, &m->final_norm);
    if (!c->tie_embeddings) add_req(req, &n, "lm_head.weight", V, D, &m->lm_head);
    for (int l = 0; l < c->n_layers; l++) {
        struct st_layer_weights *w = &m->layers[l];
        add_layer_req(req, &n, l, "input_layernorm.weight", D, 0, &w->in_norm);
        add_layer_req(req, &n, l, "self_attn.q_proj.weight", QD, D, &w->wq);
        add_layer_req(req, &n, l, "self_attn.k_proj.weight", KD, D, &w->wk);
        add_layer_req(req, &n, l, "self_attn.v_proj.weight", KD, D, &w->wv);
        add_layer_req(req, &n, l, "self_attn.o_proj.weight", D, QD, &w->wo);
        if (c->qkv_bias) {
            add_layer_req(req, &n, l, "self_attn.q_proj.bias", QD, 0, &w->bq);
            add_layer_req(req, &n, l, "self_attn.k_proj.bias", KD, 0, &w->bk);
            add_layer_req(req, &n, l, "self_attn.v_proj.bias", KD, 0, &w->bv);
        }
        if (c->o_bias) add_layer_req(req, &n, l, "self_attn.o_proj.bias", D, 0, &w->bo);
        add_layer_req(req, &n, l, "post_attention_layernorm.weight", D, 0, &w->post_norm);
        add_layer_req(req, &n, l, "mlp.gate_proj.weight", H, D, &w->wg);
        add_layer_req(req, &n, l, "mlp.up_proj.weight", H, D, &w->wu);
        add_layer_req(req, &n, l, "mlp.down_proj.weight", D, H, &w->wd);
        if (c->mlp_bias) {
            add_layer_req(req, &n, l, "mlp.gate_proj.bias", H, 0, &w->bg);
            add_layer_req(req, &n, l, "mlp.up_proj.bias", H, 0, &w->bu);
            add_layer_req(req, &n, l, "mlp.down_proj.bias", D, 0, &w->bd);
        }
    }
    /* pass 1: validate and size the conversions */
    size_t convert_bytes = 0;
    for (int i = 0; i < n; i++) {
        const struct st_tensor_view *t;
        rc = st_safetensors_expect(m->st, req[i].name, req[i].ndim, req[i].shape, &t, err);
        if (rc) goto fail;
        m->n_params += (size_t)st_tensor_numel(t);
        m->bytes_on_disk += t->nbytes;
        if (needs_convert(t)) convert_bytes += st_arena_round((size_t)st_tensor_numel(t) * 4);
    }
    if (c->tie_embeddings && st_safetensors_find(m->st, "lm_head.weight"))
        st_log(ST_LOG_DEBUG, "%s: tie_word_embeddings is true; ignoring lm_head.weight", dir);
    m->dtype = st_safetensors_find(m->st, "model.embed_tokens.weight")->dtype;
    /* pass 2: point into the map or convert */
    rc = st_arena_init(&m->converted, convert_bytes, err);
    if (rc) {
        st_error_prefix(err, "%s: converting weights to F32: ", dir);
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        const struct st_tensor_view *t = st_safetensors_find(m->st, req[i].name);
        if (!needs_convert(t)) {
            *req[i].dst = t->data;
            continue;
        }
        size_t numel = (size_t)st_tensor_numel(t);
        float *dst = st_arena_take(&m->converted, numel * 4);
        ST_ASSERT(dst);
        rc = st_convert_to_f32(dst, t->data, t->dtype, numel, err);
        if (rc) goto fail;
        *req[i].dst = dst;
    }
    if (c->tie_embeddings) m->lm_head = m->embed;
    struct st_rope_params rp = {c->rope_theta, c->rope_type, c->rope_factor,
                                c->rope_low_freq_factor, c->rope_high_freq_factor,
                                c->rope_original_max_pos};
    st_rope_inv_freq(m->inv_freq, &rp, (size_t)c->head_dim);
    st_free(req);
    return ST_OK;
fail:
    st_free(req);
    st_model_free(m);
    return rc;
}

void st_model_free(struct st_model *m) {
    st_safetensors_close(m->st);
    st_arena_free(&m->converted);
    st_free(m->layers);
    st_free(m->inv_freq);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- activations */

/* The plan: a list of (pointer slot, float count). Used both to size and to carve the arena. */
struct plan_item {
    void **slot;
    size_t count; /* elements of 4 bytes */
};

static int make_plan(struct plan_item *items, struct st_acts *a, const struct st_model_config *c,
                     size_t B, size_t T, int keep_all) {
    size_t N = B * T, D = (size_t)c->dim, H = (size_t)c->hidden_dim, V = (size_t)c->vocab_size;
    size_t QD = (size_t)c->n_heads * (size_t)c->head_dim;
    size_t KD = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    size_t L = (size_t)c->n_layers, sets = keep_all ? L : 1, hd2 = (size_t)c->head_dim / 2;
    int n = 0;
#define ITEM(p, cnt) items[n++] = (struct plan_item){(void **)(p), (cnt)}
    ITEM(&a->res, (keep_all ? L + 1 : 2) * N * D);
    ITEM(&a->rstdf, N);
    ITEM(&a->xf, N * D);
    ITEM(&a->logits, N * V);
    ITEM(&a->tmp, N * (D > H ? D : H));
    ITEM(&a->cos, T * hd2);
    ITEM(&a->sin, T * hd2);
    ITEM(&a->pos, N);
    for (size_t l = 0; l < sets; l++) {
        struct st_layer_acts *la = a ? &a->layer[l] : NULL;
        ITEM(la ? &la->res_mid : NULL, N * D);
        ITEM(la ? &la->rstd1 : NULL, N);
        ITEM(la ? &la->rstd2 : NULL, N);
        ITEM(la ? &la->xn1 : NULL, N * D);
        ITEM(la ? &la->xn2 : NULL, N * D);
        ITEM(la ? &la->q : NULL, N * QD);
        ITEM(la ? &la->k : NULL, N * KD);
        ITEM(la ? &la->v : NULL, N * KD);
        ITEM(la ? &la->att : NULL, B * (size_t)c->n_heads * T * T);
        ITEM(la ? &la->ay : NULL, N * QD);
        ITEM(la ? &la->gate : NULL, N * H);
        ITEM(la ? &la->up : NULL, N * H);
        ITEM(la ? &la->g : NULL, N * H);
    }
#undef ITEM
    return n;
}

static size_t plan_items_max(const struct st_model_config *c, int keep_all) {
    return 8 + 13 * (size_t)(keep_all ? c->n_layers : 1);
}

size_t st_acts_bytes(const struct st_model_config *c, size_t B, size_t T, int keep_all) {
    /* sizes only: walk the plan with a dummy acts whose layer array is NULL */
    size_t nmax = plan_items_max(c, keep_all);
    struct plan_item *items = st_calloc(nmax, sizeof *items);
    struct st_layer_acts *layers = st_calloc(keep_all ? (size_t)c->n_layers : 1, sizeof *layers);
    if (!items || !layers) {
        st_free(items);
        st_free(layers);
        return SIZE_MAX;
    }
    struct st_acts dummy = {.layer = layers};
    int n = make_plan(items, &dummy, c, B, T, keep_all);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        size_t bytes;
        if (st_mul_size(items[i].count, 4, &bytes) || st_add_size(total, st_arena_round(bytes), &total)) {
            total = SIZE_MAX;
            break;
        }
    }
    st_free(items);
    st_free(layers);
    return total;
}

enum st_status st_acts_init(struct st_acts *a, const struct st_model *m, size_t B, size_t T,
                            int keep_all, struct st_error *err) {
    memset(a, 0, sizeof *a);
    const struct st_model_config *c = &m->cfg;
    if (B == 0 || T == 0) return st_errorf(err, ST_ERR_ARG, "batch and sequence must be > 0");
    if (T > (size_t)c->max_seq_len)
        return st_errorf(err, ST_ERR_ARG,
                         "sequence length %zu exceeds the model's max_position_embeddings %d", T,
                         c->max_seq_len);
    size_t bytes = st_acts_bytes(c, B, T, keep_all);
    if (bytes == SIZE_MAX)
        return st_errorf(err, ST_ERR_NOMEM, "activation plan for batch %zu x sequence %zu overflows",
                         B, T);
    size_t L = (size_t)c->n_layers;
    a->layer = st_calloc(L, sizeof *a->layer);
    size_t nmax = plan_items_max(c, keep_all);
    struct plan_item *items = st_calloc(nmax, sizeof *items);
    if (!a->layer || !items) {
        st_free(items);
        st_acts_free(a);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    }
    enum st_status rc = st_arena_init(&a->arena, bytes, err);
    if (rc) {
        st_free(items);
        st_acts_free(a);
        return st_errorf(err, ST_ERR_NOMEM,
                         "activations for batch %zu x sequence %zu need %.1f MiB, which cannot "
                         "be allocated: reduce the batch size or the sequence length",
                         B, T, (double)bytes / 1048576.0);
    }
    int n = make_plan(items, a, c, B, T, keep_all);
    for (int i = 0; i < n; i++) {
        *items[i].slot = st_arena_take(&a->arena, items[i].count * 4);
        ST_ASSERT(*items[i].slot);
    }
    st_free(items);
    if (!keep_all)
        for (size_t l = 1; l < L; l++) a->layer[l] = a->layer[0];
    a->B = B;
    a->T = T;
    a->keep_all = keep_all;
    st_rope_table(a->cos, a->sin, m->inv_freq, T, (size_t)c->head_dim);
    return ST_OK;
}

void st_acts_free(struct st_acts *a) {
    st_arena_free(&a->arena);
    st_free(a->layer);
    memset(a, 0, sizeof *a);
}

/* ---------------------------------------------------------------- forward */

static enum st_status check_ids(const struct st_model *m, const int32_t *ids, size_t N,
                                struct st_error *err) {
    for (size_t i = 0; i < N; i++)
        if (ids[i] < 0 || ids[i] >= m->cfg.vocab_size)
            return st_errorf(err, ST_ERR_ARG, "token id %d at index %zu is outside the vocabulary "
                             "[0, %d)", ids[i], i, m->cfg.vocab_size);
    return ST_OK;
}

/* One transformer block. x_in (N, D) residual in; x_out (N, D) residual out (may not alias x_in
 * because backward needs x_in). K/V of the new tokens are written at kall/vall + (Tk - Tq) rows
 * (per batch), and attention reads Tk rows from there. */
void st_block_forward(const struct st_model *m, int l, struct st_layer_acts *la, float *x_out,
                      const float *x_in, float *kall, float *vall, const int32_t *pos,
                      const int32_t *seg, const float *cos_t, const float *sin_t, float *tmp,
                      size_t B, size_t Tq, size_t Tk) {
    const struct st_model_config *c = &m->cfg;
    const struct st_kernels *k = m->k;
    const struct st_layer_weights *w = &m->layers[l];
    size_t N = B * Tq, D = (size_t)c->dim, H = (size_t)c->hidden_dim;
    size_t nh = (size_t)c->n_heads, nkv = (size_t)c->n_kv_heads, hd = (size_t)c->head_dim;
    size_t QD = nh * hd, KD = nkv * hd;
    ST_ASSERT(B == 1 || Tq == Tk);
    float *knew = kall + (Tk - Tq) * KD, *vnew = vall + (Tk - Tq) * KD;

    // attention
    k->rmsnorm_forward(la->xn1, la->rstd1, x_in, w->in_norm, c->norm_eps, c->norm_offset, N, D);
    k->linear_forward(la->q, la->xn1, w->wq, w->bq, N, D, QD);
    k->linear_forward(knew, la->xn1, w->wk, w->bk, N, D, KD);
    k->linear_forward(vnew, la->xn1, w->wv, w->bv, N, D, KD);
    k->rope_forward(la->q, la->q, cos_t, sin_t, pos, N, nh, hd);
    k->rope_forward(knew, knew, cos_t, sin_t, pos, N, nkv, hd);
    k->attention_forward(la->ay, la->att, la->q, kall, vall, seg, 1.0f / sqrtf((float)hd),
                         st_config_layer_window(c, l), B, Tq, Tk, nh, nkv, hd);
    k->linear_forward(tmp, la->ay, w->wo, w->bo, N, QD, D);
    for (size_t i = 0; i < N * D; i++) la->res_mid[i] = x_in[i] + tmp[i];

    // MLP
    k->rmsnorm_forward(la->xn2, la->rstd2, la->res_mid, w->post_norm, c->norm_eps,
                       c->norm_offset, N, D);
    k->linear_forward(la->gate, la->xn2, w->wg, w->bg, N, D, H);
    k->linear_forward(la->up, la->xn2, w->wu, w->bu, N, D, H);
    k->glu_forward(la->g, la->gate, la->up, c->act, N, H);
    k->linear_forward(tmp, la->g, w->wd, w->bd, N, H, D);
    for (size_t i = 0; i < N * D; i++) x_out[i] = la->res_mid[i] + tmp[i];
}

enum st_status st_model_forward(const struct st_model *m, struct st_acts *a, const int32_t *ids,
                                const int32_t *seg, struct st_error *err) {
    const struct st_model_config *c = &m->cfg;
    size_t B = a->B, T = a->T, N = B * T, D = (size_t)c->dim;
    enum st_status rc = check_ids(m, ids, N, err);
    if (rc) return rc;
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < T; t++) {
            /* positions restart at each new segment (packed documents) */
            size_t i = b * T + t;
            a->pos[i] = (t == 0 || (seg && seg[i] != seg[i - 1])) ? 0 : a->pos[i - 1] + 1;
        }
    m->k->embedding_forward(a->res, ids, m->embed, c->embed_scale, N, D);
    for (int l = 0; l < c->n_layers; l++) {
        float *x_in = a->keep_all ? a->res + (size_t)l * N * D : a->res + (size_t)(l % 2) * N * D;
        float *x_out = a->keep_all ? x_in + N * D : a->res + (size_t)((l + 1) % 2) * N * D;
        struct st_layer_acts *la = &a->layer[l];
        st_block_forward(m, l, la, x_out, x_in, la->k, la->v, a->pos, seg, a->cos, a->sin, a->tmp,
                         B, T, T);
    }
    float *x_last = a->keep_all ? a->res + (size_t)c->n_layers * N * D
                                : a->res + (size_t)(c->n_layers % 2) * N * D;
    m->k->rmsnorm_forward(a->xf, a->rstdf, x_last, m->final_norm, c->norm_eps, c->norm_offset, N,
                          D);
    m->k->linear_forward(a->logits, a->xf, m->lm_head, NULL, N, D, (size_t)c->vocab_size);
    return ST_OK;
}

enum st_status st_model_score(const struct st_model *m, struct st_acts *a, const int32_t *ids,
                              size_t n, double *loss_sum, size_t *count, struct st_error *err) {
    if (a->B != 1 || n > a->T)
        return st_errorf(err, ST_ERR_ARG, "sequence of %zu tokens does not fit the planned %zu",
                         n, a->T);
    if (n < 2) return ST_OK;
    /* run on exactly n tokens: use a view of the planned buffers with T = n */
    size_t T = a->T;
    a->T = n;
    enum st_status rc = st_model_forward(m, a, ids, NULL, err);
    a->T = T;
    if (rc) return rc;
    size_t V = (size_t)m->cfg.vocab_size;
    float *losses = a->rstdf; /* n floats of scratch, free after the forward */
    m->k->crossentropy_forward(losses, a->logits, ids + 1, n - 1, V);
    for (size_t i = 0; i + 1 < n; i++) *loss_sum += losses[i];
    *count += n - 1;
    return ST_OK;
}
