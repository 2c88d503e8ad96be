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
#include <unistd.h>

#include <cjson/cJSON.h>

#include "streamtune/bf16.h"
#include "streamtune/f32.h"
#include "streamtune/nf4.h"

#define LAYER_FMT "model.layers.%d.%s"

struct request {
    char name[160];
    int ndim;
    int64_t shape[2];
    const float **dst;
    int optional; /* absent is fine (e.g. a bias the config does not ask for) */
    struct st_qweight *qslot; /* a projection, embedding or head: its quantised form goes here */
    int quantize;             /* quantise it while loading (the load options ask for it) */
    const void **pf, **pb;    /* panel destinations (projections and an untied head) */
    int pack;                 /* pack it into panels (BF16 or F32) instead of keeping F32 */
    int bnb;                  /* stored quantised by bitsandbytes (NF4): used as stored */
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
    q->qslot = NULL;
    q->quantize = q->bnb = q->pack = 0;
    q->pf = q->pb = NULL;
}

static void add_layer_req(struct request *r, int *n, int l, const char *what, int64_t d0,
                          int64_t d1, const float **dst) {
    char name[160];
    snprintf(name, sizeof name, LAYER_FMT, l, what);
    add_req(r, n, name, d0, d1, dst);
}

void st_model_load_options_init(struct st_model_load_options *o) {
    memset(o, 0, sizeof *o);
    o->double_quant = 1;
}

/* Storage of one quantised matrix inside the arena (sizes as st_qweight_bytes). */
static size_t qstore_bytes(enum st_quant kind, size_t rows, size_t cols, int dq) {
    size_t n = rows * cols, nb = st_nf4_nblocks(n);
    if (kind == ST_QUANT_INT8) return st_arena_round(n) + st_arena_round(rows * 4);
    if (!dq) return st_arena_round(st_nf4_packed_size(n)) + st_arena_round(nb * 4);
    return st_arena_round(st_nf4_packed_size(n)) + st_arena_round(nb) +
           st_arena_round(st_nf4_nested_nblocks(nb) * 4);
}

size_t st_model_weight_bytes(const struct st_model_config *c,
                             const struct st_model_load_options *o) {
    size_t D = (size_t)c->dim, H = (size_t)c->hidden_dim, V = (size_t)c->vocab_size;
    size_t QD = (size_t)c->n_heads * (size_t)c->head_dim;
    size_t KD = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    enum st_quant qk = o ? o->quantize : ST_QUANT_NONE;
    int dq = o ? o->double_quant : 0, qe = qk && !(o && o->keep_embeddings);
    size_t shapes[7][2] = {{QD, D}, {KD, D}, {KD, D}, {D, QD}, {H, D}, {H, D}, {D, H}};
    size_t total = 0, scratch = 0;
    for (int m = 0; m < 7; m++) {
        size_t b = qk ? qstore_bytes(qk, shapes[m][0], shapes[m][1], dq)
                      : shapes[m][0] * shapes[m][1] * 4;
        total += b * (size_t)c->n_layers;
        /* the tile scratch of the biggest one, for this compute (as the load sizes it) */
        struct st_qweight shape = {.kind = qk, .rows = shapes[m][0], .cols = shapes[m][1]};
        size_t f = qk ? 4 * st_qweight_scratch_floats_for(&shape, o && o->compute_bf16) : 0;
        if (f > scratch) scratch = f;
    }
    total += (size_t)c->n_layers * (2 * D + (c->qkv_bias ? QD + 2 * KD : 0) +
                                     (c->o_bias ? D : 0) + (c->mlp_bias ? 2 * H + D : 0)) * 4;
    size_t heads = c->tie_embeddings ? 1 : 2;
    total += heads * (qe ? qstore_bytes(qk, V, D, dq) : V * D * 4) + D * 4;
    if (qe) { /* a quantised head's tiles */
        struct st_qweight shape = {.kind = qk, .rows = V, .cols = D};
        size_t f = 4 * st_qweight_scratch_floats_for(&shape, o && o->compute_bf16);
        if (f > scratch) scratch = f;
    }
    return total + scratch;
}

static int needs_convert(const struct st_tensor_view *t) {
    return t->dtype != ST_F32 || ((uintptr_t)t->data & 3u) != 0;
}

/* ---- checkpoints quantised by bitsandbytes (transformers' 4-bit serialisation) ---- */

static const struct st_tensor_view *sub_tensor(const struct st_model *m, const char *base,
                                               const char *suffix) {
    char name[256];
    snprintf(name, sizeof name, "%s.%s", base, suffix);
    return st_safetensors_find(m->st, name);
}

static enum st_status bnb_tensor(const struct st_model *m, const char *base, const char *suffix,
                                 enum st_dtype dt, size_t numel, const struct st_tensor_view **out,
                                 struct st_error *err) {
    const struct st_tensor_view *t = sub_tensor(m, base, suffix);
    if (!t)
        return st_errorf(err, ST_ERR_FORMAT, "%s: bitsandbytes NF4 weight without its %s.%s tensor",
                         m->path, base, suffix);
    if (t->dtype != dt || (size_t)st_tensor_numel(t) != numel)
        return st_errorf(err, ST_ERR_FORMAT, "%s: %s.%s is %s with %lld elements, expected %s "
                         "with %zu", m->path, base, suffix, st_dtype_name(t->dtype),
                         (long long)st_tensor_numel(t), st_dtype_name(dt), numel);
    *out = t;
    return ST_OK;
}

/* Is r stored as bitsandbytes NF4 ({name}.quant_state.bitsandbytes__nf4 present)? Validates the
 * quant state and its tensors, adds the bytes its float arrays take in the arena. */
static enum st_status bnb_probe(struct st_model *m, struct request *r, int *found, size_t *bytes,
                                struct st_error *err) {
    *found = 0;
    const struct st_tensor_view *qs = sub_tensor(m, r->name, "quant_state.bitsandbytes__nf4");
    if (!qs) {
        if (sub_tensor(m, r->name, "quant_state.bitsandbytes__fp4"))
            return st_errorf(err, ST_ERR_UNSUPPORTED, "%s: %s is bitsandbytes FP4; only NF4 "
                             "checkpoints are supported", m->path, r->name);
        return ST_OK;
    }
    cJSON *js = qs->dtype == ST_U8 ? cJSON_ParseWithLength(qs->data, qs->nbytes) : NULL;
    const cJSON *qt = cJSON_GetObjectItemCaseSensitive(js, "quant_type");
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(js, "blocksize");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(js, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(js, "nested_offset");
    const cJSON *nbs = cJSON_GetObjectItemCaseSensitive(js, "nested_blocksize");
    size_t rows = (size_t)r->shape[0], cols = (size_t)r->shape[1], n = rows * cols;
    const char *bad = NULL;
    if (!js)
        bad = "not a JSON object (U8 bytes)";
    else if (!cJSON_IsString(qt) || strcmp(qt->valuestring, "nf4") != 0)
        bad = "quant_type is not \"nf4\"";
    else if (!cJSON_IsNumber(bs) || bs->valuedouble != ST_NF4_BLOCK)
        bad = "blocksize is not 64 (the only one supported)";
    else if (!cJSON_IsArray(sh) || cJSON_GetArraySize(sh) != 2 ||
             cJSON_GetArrayItem(sh, 0)->valuedouble != (double)rows ||
             cJSON_GetArrayItem(sh, 1)->valuedouble != (double)cols)
        bad = "its shape differs from the one config.json implies";
    else if (off && (!cJSON_IsNumber(off) || !cJSON_IsNumber(nbs) ||
                     nbs->valuedouble != ST_NF4_NESTED_BLOCK))
        bad = "nested_offset/nested_blocksize are malformed (nested blocks must be 256)";
    float offset = off ? (float)off->valuedouble : 0.0f;
    int nested = off != NULL;
    cJSON_Delete(js);
    if (bad)
        return st_errorf(err, ST_ERR_FORMAT, "%s: %s.quant_state.bitsandbytes__nf4: %s", m->path,
                         r->name, bad);
    size_t nb = st_nf4_nblocks(n), nn = st_nf4_nested_nblocks(nb);
    const struct st_tensor_view *w, *am, *qm, *na = NULL, *nm = NULL;
    const struct st_tensor_view *wv = st_safetensors_find(m->st, r->name);
    enum st_status rc;
    if (!wv || wv->dtype != ST_U8 || (size_t)st_tensor_numel(wv) != st_nf4_packed_size(n))
        return st_errorf(err, ST_ERR_FORMAT, "%s: %s: bitsandbytes NF4 codes must be U8 with %zu "
                         "elements", m->path, r->name, st_nf4_packed_size(n));
    w = wv;
    if ((rc = bnb_tensor(m, r->name, "absmax", nested ? ST_U8 : ST_F32, nb, &am, err)) ||
        (rc = bnb_tensor(m, r->name, "quant_map", ST_F32, 16, &qm, err)))
        return rc;
    if (nested && ((rc = bnb_tensor(m, r->name, "nested_absmax", ST_F32, nn, &na, err)) ||
                   (rc = bnb_tensor(m, r->name, "nested_quant_map", ST_F32, 256, &nm, err))))
        return rc;
    *bytes += st_arena_round(16 * 4) +
              (nested ? st_arena_round(nn * 4) + st_arena_round(256 * 4) : st_arena_round(nb * 4));
    m->n_params += n;
    m->bytes_on_disk += w->nbytes + am->nbytes + qm->nbytes + (na ? na->nbytes + nm->nbytes : 0);
    m->mapped_bytes += w->nbytes + (nested ? am->nbytes : 0);
    r->qslot->nested_offset = offset;
    r->bnb = 1;
    *found = 1;
    return ST_OK;
}

/* aligned copy of a small float tensor into the arena */
static const float *arena_floats(struct st_arena *a, const struct st_tensor_view *t) {
    float *d = st_arena_take(a, t->nbytes);
    ST_ASSERT(d);
    memcpy(d, t->data, t->nbytes);
    return d;
}

/* Point the bitsandbytes weights' qweights at the map (codes, 8-bit absmax) and the arena. */
static enum st_status bnb_load(struct st_model *m, struct request *req, int n,
                               struct st_error *err) {
    for (int i = 0; i < n; i++) {
        if (!req[i].bnb) continue;
        struct st_qweight *q = req[i].qslot;
        float offset = q->nested_offset;
        memset(q, 0, sizeof *q);
        q->kind = ST_QUANT_NF4;
        q->rows = (size_t)req[i].shape[0];
        q->cols = (size_t)req[i].shape[1];
        q->q = st_safetensors_find(m->st, req[i].name)->data;
        const struct st_tensor_view *am = sub_tensor(m, req[i].name, "absmax");
        q->quant_map = arena_floats(&m->qarena, sub_tensor(m, req[i].name, "quant_map"));
        if (am->dtype == ST_U8) {
            q->aq = am->data;
            q->nested_absmax = arena_floats(&m->qarena, sub_tensor(m, req[i].name, "nested_absmax"));
            q->nested_map = arena_floats(&m->qarena, sub_tensor(m, req[i].name, "nested_quant_map"));
            q->nested_offset = offset;
        } else {
            q->absmax = arena_floats(&m->qarena, am);
        }
        *req[i].dst = NULL;
    }
    (void)err;
    return ST_OK;
}

/* Panels of kind PK_BF16 (--compute bf16) or PK_F32 (pack_f32), both orientations. */
enum { PK_NONE, PK_BF16, PK_F32 };

static size_t panel_bytes(int pk, size_t K, size_t N) {
    return pk == PK_BF16 ? st_bf16_panels_bytes(K, N) : st_f32_panels_bytes(K, N);
}

/* f (X W^T) and b (dY W) panels of W (rows, cols) */
static void pack_pair(int pk, void *f, void *b, const float *w, size_t rows, size_t cols) {
    if (pk == PK_BF16) {
        st_bf16_pack_wt(f, w, rows, cols);
        st_bf16_pack_w(b, w, rows, cols);
    } else {
        st_f32_pack_wt(f, w, rows, cols);
        st_f32_pack_w(b, w, rows, cols);
    }
}

/* Pack the requested F32/BF16/F16 tensors into panels (both orientations) one by one, through
 * one F32 buffer of the largest; tied_head: room for the embedding's too. */
#define BSCRATCH_BYTES ((size_t)8 << 20)
static enum st_status pack_all(struct st_model *m, int pk, struct request *req, int n,
                               size_t p_bytes, size_t pack_max, int tied_head,
                               struct st_error *err) {
    const struct st_model_config *c = &m->cfg;
    size_t V = (size_t)c->vocab_size, D = (size_t)c->dim;
    if (tied_head)
        p_bytes += st_arena_round(panel_bytes(pk, D, V)) + st_arena_round(panel_bytes(pk, V, D));
    /* room for at least one row tile of the widest K (the vocabulary, in the head's backward):
     * the GEMM rounds X in tiles of rows (st_bf16_x_rows) */
    size_t kmax = V, H = (size_t)c->hidden_dim, QD = (size_t)c->n_heads * (size_t)c->head_dim;
    kmax = kmax > H ? kmax : H;
    kmax = kmax > QD ? kmax : QD;
    kmax = kmax > D ? kmax : D;
    size_t bs = BSCRATCH_BYTES, need = st_arena_round(st_bf16_x_bytes(8, kmax));
    if (bs < need) bs = need;
    /* the F32 GEMM packs X into it where that is faster (st_f32_packed), else reads X in place;
     * a K too wide for one row block there (a head's backward) is read in place too */
    if (pk == PK_F32) bs = st_f32_packed() ? BSCRATCH_BYTES : 0;
    enum st_status rc = st_arena_init(&m->parena, p_bytes + bs, err);
    if (rc) return rc;
    m->bf16 = pk == PK_BF16;
    m->f32_panels = pk == PK_F32;
    m->lora_fused = m->bf16 && !st_env_flag("ST_NO_LORA_FUSION");
    m->bscratch = bs ? st_arena_take(&m->parena, bs) : NULL;
    m->bscratch_bytes = bs;
    float *tmp = pack_max ? st_malloc(pack_max * 4) : NULL;
    if (pack_max && !tmp) return st_errorf(err, ST_ERR_NOMEM, "out of memory packing weights");
    for (int i = 0; i < n && !rc; i++) {
        if (!req[i].pack) continue;
        const struct st_tensor_view *t = st_safetensors_find(m->st, req[i].name);
        size_t rows = (size_t)req[i].shape[0], cols = (size_t)req[i].shape[1];
        if ((rc = st_convert_to_f32(tmp, t->data, t->dtype, rows * cols, err))) break;
        void *f = st_arena_take(&m->parena, panel_bytes(pk, cols, rows));
        void *b = st_arena_take(&m->parena, panel_bytes(pk, rows, cols));
        ST_ASSERT(f && b);
        pack_pair(pk, f, b, tmp, rows, cols);
        *req[i].pf = f;
        *req[i].pb = b;
        *req[i].dst = NULL;
        st_tensor_drop_pages(t);
    }
    st_free(tmp);
    return rc;
}

/* The k per slice when all M rows of X, k columns of them, fit bytes of BF16 scratch: a multiple
 * of 64 (whole pairs and whole AMX tiles of 16 pairs; st_bf16_gemm_px_k), at least 1024; or 0 */
static size_t slice_k(size_t bytes, size_t M, size_t K) {
    size_t k = 1024;
    if (st_bf16_x_bytes(M, k) > bytes) return 0;
    while (k < K && st_bf16_x_bytes(M, 2 * k) <= bytes) k *= 2;
    return k;
}

/* out (M, N) (+)= x (M, K) @ panels: F32 panels in one call; BF16 ones in row chunks that fit
 * the model's BF16 scratch. ce: x holds logits, and X is their cross-entropy gradient, packed
 * straight from the logits and the rows' losses (st_bf16_pack_ce_grad; BF16 panels only). */
static void panel_mm_src(const struct st_model *m, float *out, const float *x, const void *pan,
                         const float *bias, size_t M, size_t K, size_t N, int acc,
                         const struct st_lowrank *lr, const struct st_ce_rows *ce) {
    if (m->f32_panels) {
        ST_ASSERT(!lr && !ce);
        size_t rows = m->bscratch ? st_f32_x_rows(m->bscratch_bytes / sizeof(float), K) : 0;
        if (!rows) {
            st_f32_gemm(out, N, x, K, pan, bias, M, K, N, acc);
            return;
        }
        for (size_t r0 = 0; r0 < M; r0 += rows) {
            size_t mr = M - r0 < rows ? M - r0 : rows;
            st_f32_pack_x((float *)m->bscratch, x + r0 * K, mr, K, K);
            st_f32_gemm_px(out + r0 * N, N, (const float *)m->bscratch, pan, bias, mr, K, N, acc);
        }
        return;
    }
    size_t rows = st_bf16_x_rows(m->bscratch_bytes, K); /* pack_all leaves room for one tile */
    /* K too wide for all M rows (the head's backward, K = the vocabulary): slices of K over all
     * the rows instead of chunks of rows over all K, when the panels are big (SmolLM2's 49152 x
     * 576 head: chunks of 64 rows streamed its 56 MB of panels 16 times per 1024 rows) */
    size_t ks = rows < M && !lr && !bias ? slice_k(m->bscratch_bytes, M, K) : 0;
    if (ks && st_bf16_panels_bytes(K, N) >= ((size_t)16 << 20)) {
        for (size_t k0 = 0; k0 < K; k0 += ks) {
            size_t kn = K - k0 < ks ? K - k0 : ks;
            if (ce) {
                struct st_ce_rows cc = *ce;
                cc.col0 = ce->col0 + k0;
                st_bf16_pack_ce_grad(m->bscratch, x + k0, &cc, M, kn, K);
            } else {
                st_bf16_pack_x(m->bscratch, x + k0, M, kn, K);
            }
            st_bf16_gemm_px_k(out, N, m->bscratch, pan, K, k0, M, kn, N, acc || k0 > 0);
        }
        return;
    }
    for (size_t r0 = 0; r0 < M; r0 += rows) {
        size_t mr = M - r0 < rows ? M - r0 : rows;
        struct st_lowrank lc;
        if (lr) lc = *lr, lc.x = lr->x + r0 * lr->r; /* this chunk's rows of x */
        if (ce) {
            struct st_ce_rows cc = {ce->loss + r0, ce->targets + r0, ce->dloss, ce->col0};
            st_bf16_pack_ce_grad(m->bscratch, x + r0 * K, &cc, mr, K, K);
        }
        else
            st_bf16_pack_x(m->bscratch, x + r0 * K, mr, K, K);
        st_bf16_gemm_px_lr(out + r0 * N, N, m->bscratch, pan, bias, mr, K, N, acc,
                           lr ? &lc : NULL);
    }
}

static void panel_mm(const struct st_model *m, float *out, const float *x, const void *pan,
                     const float *bias, size_t M, size_t K, size_t N, int acc,
                     const struct st_lowrank *lr) {
    panel_mm_src(m, out, x, pan, bias, M, K, N, acc, lr, NULL);
}

/* Quantised matmuls through the BF16 GEMM, in row chunks that fit the BF16 scratch. */
static void q_forward(const struct st_model *m, float *out, const float *x,
                      const struct st_qweight *w, const float *bias, size_t M) {
    /* the scratch was sized for this compute's tiles only (st_qweight_scratch_floats_for) */
    ST_ASSERT(m->qscratch_bytes >= 4 * st_qweight_scratch_floats_for(w, m->bf16));
    if (!m->bf16) {
        st_qlinear_forward(out, x, w, bias, m->qscratch, M);
        return;
    }
    size_t rows = st_bf16_x_rows(m->bscratch_bytes, w->cols);
    for (size_t r0 = 0; r0 < M; r0 += rows)
        st_qlinear_forward_bf16(out + r0 * w->rows, x + r0 * w->cols, w, bias, m->qscratch,
                                m->bscratch, M - r0 < rows ? M - r0 : rows);
}

/* dx (M, cols) (+)= dy (M, rows) @ W: acc 0 writes dx; lr (BF16 only): a low-rank term added to
 * dx; ce (BF16 only): dy holds logits, and the product is of their cross-entropy gradient */
static void q_backward_ex(const struct st_model *m, float *dx, const float *dy,
                          const struct st_qweight *w, size_t M, int acc,
                          const struct st_lowrank *lr, const struct st_ce_rows *ce) {
    ST_ASSERT(m->qscratch_bytes >= 4 * st_qweight_scratch_floats_for(w, m->bf16));
    if (!m->bf16) {
        ST_ASSERT(!lr && !ce);
        if (!acc) memset(dx, 0, M * w->cols * sizeof(float));
        st_qlinear_backward_input(dx, dy, w, m->qscratch, M);
        return;
    }
    size_t rows = st_bf16_x_rows(m->bscratch_bytes, st_qweight_tile_rows_bf16(w));
    for (size_t r0 = 0; r0 < M; r0 += rows) {
        struct st_lowrank lc;
        struct st_ce_rows cc;
        if (lr) lc = *lr, lc.x = lr->x + r0 * lr->r; /* this chunk's rows */
        if (ce) cc = *ce, cc.loss = ce->loss + r0, cc.targets = ce->targets + r0;
        st_qlinear_backward_input_bf16_ex(dx + r0 * w->cols, dy + r0 * w->rows, w, m->qscratch,
                                          m->bscratch, M - r0 < rows ? M - r0 : rows, acc,
                                          lr ? &lc : NULL, ce ? &cc : NULL);
    }
}

static void q_backward(const struct st_model *m, float *dx, const float *dy,
                       const struct st_qweight *w, size_t M) {
    q_backward_ex(m, dx, dy, w, M, 1, NULL, NULL);
}

/* Quantise the requested tensors one by one into m->qarena, releasing each one's mapped pages. */
static enum st_status quantize_all(struct st_model *m, struct request *req, int n, enum st_quant qk,
                                   int dq, float *chunk, float *amt, struct st_error *err) {
    size_t done = 0, total = 0;
    for (int i = 0; i < n; i++)
        if (req[i].quantize && !req[i].bnb) total++;
    for (int i = 0; i < n; i++) {
        if (!req[i].quantize || req[i].bnb) continue;
        const struct st_tensor_view *t = st_safetensors_find(m->st, req[i].name);
        size_t rows = (size_t)req[i].shape[0], cols = (size_t)req[i].shape[1], nel = rows * cols;
        size_t nb = st_nf4_nblocks(nel);
        uint8_t *q = NULL, *aq = NULL;
        float *absmax = NULL, *nested = NULL, *scale = NULL;
        if (qk == ST_QUANT_INT8) {
            q = st_arena_take(&m->qarena, nel);
            scale = st_arena_take(&m->qarena, rows * 4);
        } else {
            q = st_arena_take(&m->qarena, st_nf4_packed_size(nel));
            if (dq) {
                aq = st_arena_take(&m->qarena, nb);
                nested = st_arena_take(&m->qarena, st_nf4_nested_nblocks(nb) * 4);
            } else {
                absmax = st_arena_take(&m->qarena, nb * 4);
            }
        }
        ST_ASSERT(q);
        enum st_status rc = st_qweight_quantize_tensor(req[i].qslot, qk, t, dq, q, absmax, aq,
                                                       nested, scale, amt, chunk, err);
        if (rc) return rc;
        *req[i].dst = NULL;
        st_tensor_drop_pages(t);
        done++;
        if (total > 8 && st_log_get_level() >= ST_LOG_INFO && isatty(2))
            fprintf(stderr, "\rquantising to %s: %zu/%zu tensors", st_quant_name(qk), done, total);
    }
    if (total > 8 && st_log_get_level() >= ST_LOG_INFO && isatty(2)) fprintf(stderr, "\n");
    return ST_OK;
}

enum st_status st_model_load(struct st_model *m, const char *dir, struct st_error *err) {
    return st_model_load_ex(m, dir, NULL, err);
}

enum st_status st_model_load_ex(struct st_model *m, const char *dir,
                                const struct st_model_load_options *o, struct st_error *err) {
    memset(m, 0, sizeof *m);
    snprintf(m->path, sizeof m->path, "%s", dir);
    /* --compute bf16 also runs attention's products in BF16 */
    m->k = o && o->compute_bf16 ? st_kernels_cpu_bf16() : st_kernels_cpu();
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
    enum st_quant qk = o ? o->quantize : ST_QUANT_NONE;
    int qe = qk && !o->keep_embeddings;
    add_req(req, &n, "model.embed_tokens.weight", V, D, &m->embed);
    req[n - 1].qslot = &m->q_embed, req[n - 1].quantize = qe;
    add_req(req, &n, "model.norm.weight", D, 0, &m->final_norm);
    if (!c->tie_embeddings) {
        add_req(req, &n, "lm_head.weight", V, D, &m->lm_head);
        req[n - 1].qslot = &m->q_head, req[n - 1].quantize = qe;
        req[n - 1].pf = &m->head_bf, req[n - 1].pb = &m->head_bb;
    }
    for (int l = 0; l < c->n_layers; l++) {
        struct st_layer_weights *w = &m->layers[l];
        add_layer_req(req, &n, l, "input_layernorm.weight", D, 0, &w->in_norm);
        add_layer_req(req, &n, l, "self_attn.q_proj.weight", QD, D, &w->wq);
        req[n - 1].qslot = &w->q[ST_LIN_Q], req[n - 1].quantize = qk != 0;
        req[n - 1].pf = &w->bf[ST_LIN_Q], req[n - 1].pb = &w->bb[ST_LIN_Q];
        add_layer_req(req, &n, l, "self_attn.k_proj.weight", KD, D, &w->wk);
        req[n - 1].qslot = &w->q[ST_LIN_K], req[n - 1].quantize = qk != 0;
        req[n - 1].pf = &w->bf[ST_LIN_K], req[n - 1].pb = &w->bb[ST_LIN_K];
        add_layer_req(req, &n, l, "self_attn.v_proj.weight", KD, D, &w->wv);
        req[n - 1].qslot = &w->q[ST_LIN_V], req[n - 1].quantize = qk != 0;
        req[n - 1].pf = &w->bf[ST_LIN_V], req[n - 1].pb = &w->bb[ST_LIN_V];
        add_layer_req(req, &n, l, "self_attn.o_proj.weight", D, QD, &w->wo);
        req[n - 1].qslot = &w->q[ST_LIN_O], req[n - 1].quantize = qk != 0;
        req[n - 1].pf = &w->bf[ST_LIN_O], req[n - 1].pb = &w->bb[ST_LIN_O];
        if (c->qkv_bias) {
            add_layer_req(req, &n, l, "self_attn.q_proj.bias", QD, 0, &w->bq);
            add_layer_req(req, &n, l, "self_attn.k_proj.bias", KD, 0, &w->bk);
            add_layer_req(req, &n, l, "self_attn.v_proj.bias", KD, 0, &w->bv);
        }
        if (c->o_bias) add_layer_req(req, &n, l, "self_attn.o_proj.bias", D, 0, &w->bo);
        add_layer_req(req, &n, l, "post_attention_layernorm.weight", D, 0, &w->post_norm);
        add_layer_req(req, &n, l, "mlp.gate_proj.weight", H, D, &w->wg);
        req[n - 1].qslot = &w->q[ST_LIN_GATE], req[n - 1].quantize = qk != 0;
        req[n - 1].pf = &w->bf[ST_LIN_GATE], req[n - 1].pb = &w->bb[ST_LIN_GATE];
        add_layer_req(req, &n, l, "mlp.up_proj.weight", H, D, &w->wu);
        req[n - 1].qslot = &w->q[ST_LIN_UP], req[n - 1].quantize = qk != 0;
        req[n - 1].pf = &w->bf[ST_LIN_UP], req[n - 1].pb = &w->bb[ST_LIN_UP];
        add_layer_req(req, &n, l, "mlp.down_proj.weight", D, H, &w->wd);
        req[n - 1].qslot = &w->q[ST_LIN_DOWN], req[n - 1].quantize = qk != 0;
        req[n - 1].pf = &w->bf[ST_LIN_DOWN], req[n - 1].pb = &w->bb[ST_LIN_DOWN];
        if (c->mlp_bias) {
            add_layer_req(req, &n, l, "mlp.gate_proj.bias", H, 0, &w->bg);
            add_layer_req(req, &n, l, "mlp.up_proj.bias", H, 0, &w->bu);
            add_layer_req(req, &n, l, "mlp.down_proj.bias", D, 0, &w->bd);
        }
    }
    /* pass 1: validate and size the conversions and the quantised storage */
    size_t convert_bytes = 0, q_bytes = 0, scratch = 0, nb_max = 0;
    int dq = o ? o->double_quant : 0;
    size_t bnb_bytes = 0, p_bytes = 0, pack_max = 0;
    int pk = !o ? PK_NONE : o->compute_bf16 ? PK_BF16 : o->pack_f32 ? PK_F32 : PK_NONE;
    for (int i = 0; i < n; i++) {
        const struct st_tensor_view *t;
        if (req[i].qslot) {
            int found = 0;
            if ((rc = bnb_probe(m, &req[i], &found, &bnb_bytes, err))) goto fail;
            if (found) {
                struct st_qweight shape = {.kind = ST_QUANT_NF4, .rows = (size_t)req[i].shape[0],
                                           .cols = (size_t)req[i].shape[1]};
                if (st_qweight_scratch_floats_for(&shape, pk == PK_BF16) > scratch)
                    scratch = st_qweight_scratch_floats_for(&shape, pk == PK_BF16);
                continue;
            }
        }
        rc = st_safetensors_expect(m->st, req[i].name, req[i].ndim, req[i].shape, &t, err);
        if (rc) goto fail;
        m->n_params += (size_t)st_tensor_numel(t);
        m->bytes_on_disk += t->nbytes;
        if (pk && req[i].pf && !req[i].quantize) {
            size_t rows = (size_t)req[i].shape[0], cols = (size_t)req[i].shape[1];
            req[i].pack = 1;
            p_bytes += st_arena_round(panel_bytes(pk, cols, rows)) +
                       st_arena_round(panel_bytes(pk, rows, cols));
            if (rows * cols > pack_max) pack_max = rows * cols;
            continue;
        }
        if (req[i].quantize) {
            size_t rows = (size_t)req[i].shape[0], cols = (size_t)req[i].shape[1];
            q_bytes += qstore_bytes(qk, rows, cols, dq);
            size_t nb = st_nf4_nblocks(rows * cols);
            if (nb > nb_max) nb_max = nb;
            struct st_qweight shape = {.kind = qk, .rows = rows, .cols = cols};
            /* the tiles of the compute's own matmuls (F32: ~4 MiB; BF16: ~8 MiB of panels):
             * sized for both, an F32 QLoRA run held 16 MiB per view for an 8B down_proj */
            if (st_qweight_scratch_floats_for(&shape, pk == PK_BF16) > scratch)
                scratch = st_qweight_scratch_floats_for(&shape, pk == PK_BF16);
        } else if (needs_convert(t)) {
            convert_bytes += st_arena_round((size_t)st_tensor_numel(t) * 4);
        } else {
            m->mapped_bytes += t->nbytes;
        }
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
    if (qk || bnb_bytes) {
        m->quant = bnb_bytes ? ST_QUANT_NF4 : qk;
        rc = st_arena_init(&m->qarena, q_bytes + bnb_bytes + st_arena_round(scratch * 4), err);
        float *chunk = st_malloc(ST_QUANT_CHUNK * 4);
        float *amt = dq && qk == ST_QUANT_NF4 ? st_malloc((nb_max ? nb_max : 1) * 4) : NULL;
        if (!rc && (!chunk || (dq && qk == ST_QUANT_NF4 && !amt)))
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
        if (!rc) {
            m->qscratch = st_arena_take(&m->qarena, (scratch ? scratch : 1) * 4);
            m->qscratch_bytes = (scratch ? scratch : 1) * 4;
            rc = bnb_bytes ? bnb_load(m, req, n, err) : ST_OK;
            if (!rc) rc = quantize_all(m, req, n, qk, dq, chunk, amt, err);
        }
        st_free(chunk);
        st_free(amt);
        if (rc) {
            st_error_prefix(err, "%s: quantising to %s: ", dir, st_quant_name(qk));
            goto fail;
        }
        m->qbytes = q_bytes;
    }
    if (pk && (rc = pack_all(m, pk, req, n, p_bytes, pack_max, c->tie_embeddings && !qe, err)))
        goto fail;
    for (int i = 0; i < n; i++) {
        const struct st_tensor_view *t = st_safetensors_find(m->st, req[i].name);
        if (req[i].quantize || req[i].bnb || req[i].pack) continue;
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
        st_tensor_drop_pages(t);
    }
    if (c->tie_embeddings) {
        m->lm_head = m->embed;
        m->q_head = m->q_embed;
        if (pk && !m->q_embed.kind) { /* the head is the embedding: pack it too */
            size_t Vs = (size_t)V, Ds = (size_t)D;
            void *f = st_arena_take(&m->parena, panel_bytes(pk, Ds, Vs));
            void *b = st_arena_take(&m->parena, panel_bytes(pk, Vs, Ds));
            ST_ASSERT(f && b);
            pack_pair(pk, f, b, m->embed, Vs, Ds);
            m->head_bf = f;
            m->head_bb = b;
        }
    }
    /* converted tensors no longer need their mapped pages: keep RSS what the plan says */
    if (convert_bytes) st_safetensors_drop_cache(m->st);
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
    if (m->view) { /* its scratch only (parena: the view's own arena) */
        st_arena_free(&m->parena);
        memset(m, 0, sizeof *m);
        return;
    }
    st_safetensors_close(m->st);
    st_arena_free(&m->converted);
    st_arena_free(&m->qarena);
    st_arena_free(&m->parena);
    st_free(m->layers);
    st_free(m->inv_freq);
    memset(m, 0, sizeof *m);
}

enum st_status st_model_view(struct st_model *v, const struct st_model *m,
                             struct st_error *err) {
    *v = *m;
    v->view = 1;
    v->qscratch = NULL, v->bscratch = NULL;
    /* the model's arenas stay the model's; the view's own holds its scratch (aligned as the
     * model's, so the kernels' loads of it split no cache lines) */
    memset(&v->converted, 0, sizeof v->converted);
    memset(&v->qarena, 0, sizeof v->qarena);
    memset(&v->parena, 0, sizeof v->parena);
    size_t qb = m->qscratch ? st_arena_round(m->qscratch_bytes) : 0;
    size_t bb = m->bscratch ? st_arena_round(m->bscratch_bytes) : 0;
    if (qb + bb == 0) return ST_OK;
    enum st_status rc = st_arena_init(&v->parena, qb + bb, err);
    if (rc) {
        memset(v, 0, sizeof *v);
        st_error_prefix(err, "a model view's scratch: ");
        return rc;
    }
    if (qb) v->qscratch = st_arena_take(&v->parena, m->qscratch_bytes);
    if (bb) v->bscratch = st_arena_take(&v->parena, m->bscratch_bytes);
    return ST_OK;
}

/* ---------------------------------------------------------------- activations */

/* The plan: a list of (pointer slot, float count). Used both to size and to carve the arena. */
struct plan_item {
    void **slot;
    size_t count; /* elements of 4 bytes */
};

#define MAX_PLAN_ITEMS(L, sets) (32 + (size_t)(sets) * (13 + ST_LIN_COUNT))

/* Rows of the logits buffer with ST_ACTS_CHUNKED_HEAD: at most 256 MiB of logits, in whole
 * blocks of 512 rows where that fits (the BF16 GEMM's row block for a matrix as big as a head:
 * each block streams the head's panels from memory once, and a quantised head is dequantised once
 * per chunk), else a multiple of 8 (the row tiles). 16 MiB chunks (80-128 rows) streamed the head
 * 16-26 times per 2048-token step each way: 2-3% of a bf16 step; QLoRA's head dequantisation was
 * most of its extra time with them. */
static size_t head_rows(const struct st_model_config *c, size_t N, int mode) {
    if (!(mode & ST_ACTS_CHUNKED_HEAD)) return N;
    size_t r = ((size_t)1 << 26) / (size_t)c->vocab_size;
    if (r >= 512)
        r -= r % 512;
    else if (r > 8)
        r -= r % 8;
    if (r < 1) r = 1;
    return r < N ? r : N;
}

static size_t make_plan(struct plan_item *items, struct st_acts *a, const struct st_model_config *c,
                        size_t B, size_t T, int mode_flags, int rank) {
    int mode = mode_flags & 3;
    size_t N = B * T, D = (size_t)c->dim, H = (size_t)c->hidden_dim, V = (size_t)c->vocab_size;
    size_t QD = (size_t)c->n_heads * (size_t)c->head_dim;
    size_t KD = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    size_t L = (size_t)c->n_layers, hd2 = (size_t)c->head_dim / 2, r = (size_t)rank;
    size_t sets = mode == ST_ACTS_TRAIN ? L : 1, DH = D > H ? D : H;
    size_t n = 0;
#define ITEM(p, cnt) items[n++] = (struct plan_item){(void **)(p), (cnt)}
    ITEM(&a->res, (mode != ST_ACTS_INFER ? L + 1 : 2) * N * D);
    ITEM(&a->rstdf, N);
    ITEM(&a->xf, N * D);
    ITEM(&a->logits, head_rows(c, N, mode_flags) * V);
    ITEM(&a->tmp, N * DH);
    ITEM(&a->cos, T * hd2);
    ITEM(&a->sin, T * hd2);
    ITEM(&a->pos, N);
    ITEM(&a->losses, N);
    ITEM(&a->targets, N);
    if (r) ITEM(&a->xd, N * DH);
    if (mode != ST_ACTS_INFER) {
        ITEM(&a->dres0, N * D);
        ITEM(&a->dres1, N * D);
        ITEM(&a->dxn, N * D);
        ITEM(&a->dq, N * QD);
        ITEM(&a->day, N * QD);
        ITEM(&a->dk, N * KD);
        ITEM(&a->dv, N * KD);
        ITEM(&a->dg, N * H);
        ITEM(&a->dgate, N * H);
        ITEM(&a->dup, N * H);
        if (r) {
            ITEM(&a->dxa, N * r);
            ITEM(&a->dxd, N * DH);
        }
    }
    for (size_t l = 0; l < sets; l++) {
        struct st_layer_acts *la = &a->layer[l];
        ITEM(&la->res_mid, N * D);
        ITEM(&la->rstd1, N);
        ITEM(&la->rstd2, N);
        ITEM(&la->xn1, N * D);
        ITEM(&la->xn2, N * D);
        ITEM(&la->q, N * QD);
        ITEM(&la->k, N * KD);
        ITEM(&la->v, N * KD);
        ITEM(&la->lse, B * (size_t)c->n_heads * T);
        ITEM(&la->ay, N * QD);
        ITEM(&la->gate, N * H);
        ITEM(&la->up, N * H);
        ITEM(&la->g, N * H);
        if (r)
            for (int m = 0; m < ST_LIN_COUNT; m++) ITEM(&la->xa[m], N * r);
    }
#undef ITEM
    return n;
}

size_t st_acts_bytes(const struct st_model_config *c, size_t B, size_t T, int mode, int rank) {
    size_t sets = (mode & 3) == ST_ACTS_TRAIN ? (size_t)c->n_layers : 1;
    size_t nmax = MAX_PLAN_ITEMS(c->n_layers, sets);
    struct plan_item *items = st_calloc(nmax, sizeof *items);
    struct st_layer_acts *layers = st_calloc(sets, sizeof *layers);
    if (!items || !layers) {
        st_free(items);
        st_free(layers);
        return SIZE_MAX;
    }
    struct st_acts dummy = {.layer = layers};
    size_t n = make_plan(items, &dummy, c, B, T, mode, rank), total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t bytes;
        if (st_mul_size(items[i].count, 4, &bytes) ||
            st_add_size(total, st_arena_round(bytes), &total)) {
            total = SIZE_MAX;
            break;
        }
    }
    st_free(items);
    st_free(layers);
    return total;
}

enum st_status st_acts_init(struct st_acts *a, const struct st_model *m, size_t B, size_t T,
                            int mode, struct st_error *err) {
    memset(a, 0, sizeof *a);
    const struct st_model_config *c = &m->cfg;
    if (B == 0 || T == 0) return st_errorf(err, ST_ERR_ARG, "batch and sequence must be > 0");
    if (T > (size_t)c->max_seq_len)
        return st_errorf(err, ST_ERR_ARG,
                         "sequence length %zu exceeds the model's max_position_embeddings %d", T,
                         c->max_seq_len);
    int rank = m->lora ? m->lora->cfg.rank : 0;
    size_t bytes = st_acts_bytes(c, B, T, mode, rank);
    if (bytes == SIZE_MAX)
        return st_errorf(err, ST_ERR_NOMEM, "activation plan for batch %zu x sequence %zu overflows",
                         B, T);
    size_t L = (size_t)c->n_layers, sets = (mode & 3) == ST_ACTS_TRAIN ? L : 1;
    a->layer = st_calloc(L, sizeof *a->layer);
    struct plan_item *items = st_calloc(MAX_PLAN_ITEMS(L, sets), sizeof *items);
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
                         "be allocated: reduce the batch size or the sequence length%s",
                         B, T, (double)bytes / 1048576.0,
                         (mode & 3) == ST_ACTS_TRAIN ? ", or use gradient checkpointing" : "");
    }
    size_t n = make_plan(items, a, c, B, T, mode, rank);
    for (size_t i = 0; i < n; i++) {
        *items[i].slot = st_arena_take(&a->arena, items[i].count * 4);
        ST_ASSERT(*items[i].slot);
    }
    st_free(items);
    for (size_t l = sets; l < L; l++) a->layer[l] = a->layer[0];
    a->B = B;
    a->T = T;
    a->keep_all = mode & 3;
    a->chunked = (mode & ST_ACTS_CHUNKED_HEAD) != 0;
    a->head_rows = head_rows(c, B * T, mode);
    a->rank = rank;
    st_rope_table(a->cos, a->sin, m->inv_freq, T, (size_t)c->head_dim);
    return ST_OK;
}

void st_acts_free(struct st_acts *a) {
    st_arena_free(&a->arena);
    st_free(a->layer);
    memset(a, 0, sizeof *a);
}

/* ---------------------------------------------------------------- LoRA-aware linear */

/* Dropout keep mask: a pure function of (seed, layer, module, element) so backward, gradient
 * checkpointing and resumed runs regenerate exactly the same mask. */
static inline int dropout_keep(uint64_t seed, int l, int mod, size_t i, float p) {
    uint64_t z = seed ^ ((uint64_t)(l + 1) << 40) ^ ((uint64_t)(mod + 1) << 32);
    z += (uint64_t)i * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (float)(z >> 40) * 0x1.0p-24f >= p;
}

/* elements [i0, i0 + n) of the mask (i0: m->dropout_tok0 tokens in, so that a group of rows run
 * on its own draws the masks of the same rows in the whole micro-batch) */
static void dropout_apply(float *dst, const float *src, size_t n, size_t i0, uint64_t seed, int l,
                          int mod, float p) {
    float inv = 1.0f / (1.0f - p);
    for (size_t i = 0; i < n; i++)
        dst[i] = dropout_keep(seed, l, mod, i0 + i, p) ? src[i] * inv : 0.0f;
}

struct lin {
    const struct st_model *m;
    struct st_layer_acts *la;
    float *xd, *dxd, *dxa; /* scratch */
    int layer;
};

/* inp (N, C) rounded to BF16 once for the matmuls of modules mods[0..n) (q, k, v; gate, up),
 * which share it; NULL (each matmul rounds it itself) unless the model computes in BF16, each of
 * them has BF16 panels or is quantised (its tiles' panels multiply the shared copy: QLoRA rounded
 * the input of q, k and v three times) and all N rows fit the scratch. */
static const uint32_t *shared_x(const struct lin *c, const int *mods, int n, const float *inp,
                                size_t N, size_t C) {
    const struct st_model *m = c->m;
    const struct st_layer_weights *w = &m->layers[c->layer];
    if (!m->bf16 || st_bf16_x_bytes(N, C) > m->bscratch_bytes) return NULL;
    for (int i = 0; i < n; i++)
        if (!w->q[mods[i]].kind && !w->bf[mods[i]]) return NULL;
    st_bf16_pack_x(m->bscratch, inp, N, C, C);
    return m->bscratch;
}

/* out (N, OC) = inp W^T + bias (+ LoRA of module mod when attached); xp: inp already rounded
 * (shared_x) or NULL */
static void lin_forward(const struct lin *c, int mod, float *out, const float *inp,
                        const uint32_t *xp, const float *w, const float *bias, size_t N, size_t C,
                        size_t OC) {
    st_share_poll(); /* threads lent by row groups done first (core.h) */
    const struct st_model *m = c->m;
    const struct st_qweight *qw = &m->layers[c->layer].q[mod];
    const void *bf = m->layers[c->layer].bf[mod];
    const struct st_lora_module *lm = m->lora ? st_lora_get(m->lora, c->layer, mod) : NULL;
    const float *x = inp; /* the LoRA path's input */
    size_t r = lm ? (size_t)m->lora->cfg.rank : 0;
    float *xa = lm ? c->la->xa[mod] : NULL;
    if (lm && m->training && m->lora->cfg.dropout > 0) {
        dropout_apply(c->xd, inp, N * C, m->dropout_tok0 * C, m->dropout_seed, c->layer, mod,
                      m->lora->cfg.dropout);
        x = c->xd;
    }
    /* BF16 panels (or a quantised weight's, from the shared rounding of its input): xa first,
     * then scale xa b^T joins the GEMM's tiles before they are stored */
    int qx = qw->kind && m->bf16 && xp; /* quantised, its input already rounded */
    if (lm && ((bf && !qw->kind) || qx) && m->lora_fused && r <= ST_LOWRANK_MAX) {
        m->k->lora_forward(NULL, xa, x, lm->a, lm->b, m->lora->scale, N, C, OC, r);
        struct st_lowrank lr = {xa, r, lm->b, r, 1, m->lora->scale};
        if (qx)
            st_qlinear_forward_bf16_px(out, xp, qw, bias, m->qscratch, N, &lr);
        else if (xp)
            st_bf16_gemm_px_lr(out, OC, xp, bf, bias, N, C, OC, 0, &lr);
        else
            panel_mm(m, out, inp, bf, bias, N, C, OC, 0, &lr);
        return;
    }
    if (qx)
        st_qlinear_forward_bf16_px(out, xp, qw, bias, m->qscratch, N, NULL);
    else if (qw->kind)
        q_forward(m, out, inp, qw, bias, N);
    else if (bf && xp)
        st_bf16_gemm_px(out, OC, xp, bf, bias, N, C, OC, 0);
    else if (bf)
        panel_mm(m, out, inp, bf, bias, N, C, OC, 0, NULL);
    else
        m->k->linear_forward(out, inp, w, bias, N, C, OC);
    if (lm) m->k->lora_forward(out, xa, x, lm->a, lm->b, m->lora->scale, N, C, OC, r);
}

/* dinp (N, C) += dout W (+ LoRA path); LoRA gradients into lo (frozen base: no dW). dinp NULL:
 * only the LoRA gradients (nothing below needs d inp). */
static void lin_backward(const struct lin *c, int mod, struct st_lora *lo, float *dinp,
                         int overwrite, const float *dout, const float *inp, const float *w,
                         size_t N, size_t C, size_t OC) {
    st_share_poll(); /* threads lent by row groups done first (core.h) */
    const struct st_model *m = c->m;
    const struct st_qweight *qw = &m->layers[c->layer].q[mod];
    const void *bb = m->layers[c->layer].bb[mod];
    const struct st_lora_module *lm = lo ? st_lora_get(lo, c->layer, mod) : NULL;
    /* BF16 panels, no dropout: the LoRA gradients and dxa first, then dxa a joins the GEMM's
     * tiles of dinp before they are stored */
    if (lm && dinp && ((bb && !qw->kind) || (qw->kind && m->bf16)) && m->lora_fused &&
        (size_t)lo->cfg.rank <= ST_LOWRANK_MAX && !(m->training && lo->cfg.dropout > 0)) {
        size_t r = (size_t)lo->cfg.rank;
        m->k->lora_backward(NULL, lm->ga, lm->gb, c->dxa, dout, inp, c->la->xa[mod], lm->a, lm->b,
                            lo->scale, N, C, OC, r);
        struct st_lowrank lr = {c->dxa, r, lm->a, 1, C, 1.0f};
        if (qw->kind)
            q_backward_ex(m, dinp, dout, qw, N, !overwrite, &lr, NULL);
        else
            panel_mm(m, dinp, dout, bb, NULL, N, OC, C, !overwrite, &lr);
        return;
    }
    /* overwrite: dinp is not zeroed and this is its first term (a packed or quantised weight
     * writes it directly, saving a memset and a read of dinp; the other paths zero it first) */
    if (dinp && overwrite && !bb && !qw->kind) memset(dinp, 0, N * C * sizeof(float));
    if (!dinp)
        ; /* the LoRA gradients only */
    else if (qw->kind)
        q_backward_ex(m, dinp, dout, qw, N, !overwrite, NULL, NULL);
    else if (bb)
        panel_mm(m, dinp, dout, bb, NULL, N, OC, C, !overwrite, NULL);
    else
        m->k->linear_backward(dinp, NULL, NULL, dout, inp, w, N, C, OC);
    if (!lm) return;
    size_t r = (size_t)lo->cfg.rank;
    float p = lo->cfg.dropout;
    if (m->training && p > 0) {
        dropout_apply(c->xd, inp, N * C, m->dropout_tok0 * C, m->dropout_seed, c->layer, mod, p);
        if (dinp) memset(c->dxd, 0, N * C * sizeof(float));
        m->k->lora_backward(dinp ? c->dxd : NULL, lm->ga, lm->gb, c->dxa, dout, c->xd,
                            c->la->xa[mod], lm->a, lm->b, lo->scale, N, C, OC, r);
        float inv = 1.0f / (1.0f - p);
        for (size_t i = 0; dinp && i < N * C; i++)
            if (dropout_keep(m->dropout_seed, c->layer, mod, m->dropout_tok0 * C + i, p))
                dinp[i] += c->dxd[i] * inv;
    } else {
        m->k->lora_backward(dinp, lm->ga, lm->gb, c->dxa, dout, inp, c->la->xa[mod], lm->a, lm->b,
                            lo->scale, N, C, OC, r);
    }
}

/* ---------------------------------------------------------------- forward */

void st_model_embed(const struct st_model *m, float *out, const int32_t *ids, size_t N) {
    size_t D = (size_t)m->cfg.dim;
    if (!m->q_embed.kind) {
        m->k->embedding_forward(out, ids, m->embed, m->cfg.embed_scale, N, D);
        return;
    }
    for (size_t n = 0; n < N; n++) {
        float *o = out + n * D;
        st_qweight_dequant_rows(o, &m->q_embed, (size_t)ids[n], 1);
        if (m->cfg.embed_scale != 1.0f)
            for (size_t d = 0; d < D; d++) o[d] *= m->cfg.embed_scale;
    }
}

void st_model_head(const struct st_model *m, float *logits, const float *x, size_t N) {
    if (m->head_bf)
        panel_mm(m, logits, x, m->head_bf, NULL, N, (size_t)m->cfg.dim,
                 (size_t)m->cfg.vocab_size, 0, NULL);
    else if (m->q_head.kind)
        q_forward(m, logits, x, &m->q_head, NULL, N);
    else
        m->k->linear_forward(logits, x, m->lm_head, NULL, N, (size_t)m->cfg.dim,
                             (size_t)m->cfg.vocab_size);
}

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
 * (per batch), and attention reads Tk rows from there. xd is LoRA-dropout scratch (training). */
void st_block_forward(const struct st_model *m, int l, struct st_layer_acts *la, float *x_out,
                      const float *x_in, float *kall, float *vall, const int32_t *pos,
                      const int32_t *seg, const float *cos_t, const float *sin_t, float *tmp,
                      float *xd, size_t B, size_t Tq, size_t Tk) {
    const struct st_model_config *c = &m->cfg;
    const struct st_kernels *k = m->k;
    const struct st_layer_weights *w = &m->layers[l];
    size_t N = B * Tq, D = (size_t)c->dim, H = (size_t)c->hidden_dim;
    size_t nh = (size_t)c->n_heads, nkv = (size_t)c->n_kv_heads, hd = (size_t)c->head_dim;
    size_t QD = nh * hd, KD = nkv * hd;
    ST_ASSERT(B == 1 || Tq == Tk);
    float *knew = kall + (Tk - Tq) * KD, *vnew = vall + (Tk - Tq) * KD;
    struct lin lc = {m, la, xd, NULL, NULL, l};

    // attention
    k->rmsnorm_forward(la->xn1, la->rstd1, x_in, w->in_norm, c->norm_eps, c->norm_offset, N, D);
    static const int qkv[] = {ST_LIN_Q, ST_LIN_K, ST_LIN_V}, gu[] = {ST_LIN_GATE, ST_LIN_UP};
    const uint32_t *xp = shared_x(&lc, qkv, 3, la->xn1, N, D);
    lin_forward(&lc, ST_LIN_Q, la->q, la->xn1, xp, w->wq, w->bq, N, D, QD);
    lin_forward(&lc, ST_LIN_K, knew, la->xn1, xp, w->wk, w->bk, N, D, KD);
    lin_forward(&lc, ST_LIN_V, vnew, la->xn1, xp, w->wv, w->bv, N, D, KD);
    k->rope_forward(la->q, la->q, cos_t, sin_t, pos, N, nh, hd);
    k->rope_forward(knew, knew, cos_t, sin_t, pos, N, nkv, hd);
    st_share_poll();
    k->attention_forward(la->ay, la->lse, la->q, kall, vall, seg, 1.0f / sqrtf((float)hd),
                         st_config_layer_window(c, l), B, Tq, Tk, nh, nkv, hd);
    lin_forward(&lc, ST_LIN_O, tmp, la->ay, NULL, w->wo, w->bo, N, QD, D);
    for (size_t i = 0; i < N * D; i++) la->res_mid[i] = x_in[i] + tmp[i];

    // MLP
    k->rmsnorm_forward(la->xn2, la->rstd2, la->res_mid, w->post_norm, c->norm_eps,
                       c->norm_offset, N, D);
    xp = shared_x(&lc, gu, 2, la->xn2, N, D);
    lin_forward(&lc, ST_LIN_GATE, la->gate, la->xn2, xp, w->wg, w->bg, N, D, H);
    lin_forward(&lc, ST_LIN_UP, la->up, la->xn2, xp, w->wu, w->bu, N, D, H);
    k->glu_forward(la->g, la->gate, la->up, c->act, N, H);
    lin_forward(&lc, ST_LIN_DOWN, tmp, la->g, NULL, w->wd, w->bd, N, H, D);
    for (size_t i = 0; i < N * D; i++) x_out[i] = la->res_mid[i] + tmp[i];
}

static float *layer_in(struct st_acts *a, const struct st_model_config *c, int l) {
    size_t ND = a->B * a->T * (size_t)c->dim;
    return a->keep_all != ST_ACTS_INFER ? a->res + (size_t)l * ND : a->res + (size_t)(l % 2) * ND;
}

/* Embedding, blocks and final norm: a->xf (N, D). */
static enum st_status forward_body(const struct st_model *m, struct st_acts *a, const int32_t *ids,
                                   const int32_t *seg, struct st_error *err) {
    const struct st_model_config *c = &m->cfg;
    size_t B = a->B, T = a->T, N = B * T, D = (size_t)c->dim;
    enum st_status rc = check_ids(m, ids, N, err);
    if (rc) return rc;
    if ((m->lora ? m->lora->cfg.rank : 0) != a->rank)
        return st_errorf(err, ST_ERR_ARG, "activations were planned for LoRA rank %d, the model "
                         "has rank %d", a->rank, m->lora ? m->lora->cfg.rank : 0);
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < T; t++) {
            /* positions restart at each new segment (packed documents) */
            size_t i = b * T + t;
            a->pos[i] = (t == 0 || (seg && seg[i] != seg[i - 1])) ? 0 : a->pos[i - 1] + 1;
        }
    st_model_embed(m, a->res, ids, N);
    for (int l = 0; l < c->n_layers; l++) {
        struct st_layer_acts *la = &a->layer[l];
        st_block_forward(m, l, la, layer_in(a, c, l + 1), layer_in(a, c, l), la->k, la->v, a->pos,
                         seg, a->cos, a->sin, a->tmp, a->xd, B, T, T);
    }
    m->k->rmsnorm_forward(a->xf, a->rstdf, layer_in(a, c, c->n_layers), m->final_norm, c->norm_eps,
                          c->norm_offset, N, D);
    a->head_grad = 0;
    return ST_OK;
}

enum st_status st_model_forward(const struct st_model *m, struct st_acts *a, const int32_t *ids,
                                const int32_t *seg, struct st_error *err) {
    if (a->chunked)
        return st_errorf(err, ST_ERR_ARG, "activations planned with a chunked head hold no whole "
                         "logits: use st_model_forward_loss");
    enum st_status rc = forward_body(m, a, ids, seg, err);
    if (rc) return rc;
    st_model_head(m, a->logits, a->xf, a->B * a->T);
    return ST_OK;
}

static enum st_status check_targets(const struct st_model *m, const int32_t *targets, size_t N,
                                    struct st_error *err) {
    for (size_t i = 0; i < N; i++)
        if (targets[i] >= m->cfg.vocab_size || (targets[i] < 0 && targets[i] != -100))
            return st_errorf(err, ST_ERR_ARG, "target %d at index %zu is neither a token id nor "
                             "-100", targets[i], i);
    return ST_OK;
}

enum st_status st_model_forward_loss(const struct st_model *m, struct st_acts *a,
                                     const int32_t *ids, const int32_t *seg,
                                     const int32_t *targets, float grad_scale, double *loss_sum,
                                     size_t *count, struct st_error *err) {
    size_t N = a->B * a->T, V = (size_t)m->cfg.vocab_size, D = (size_t)m->cfg.dim;
    enum st_status rc = check_targets(m, targets, N, err);
    if (rc) return rc;
    if (grad_scale != 0 && a->keep_all == ST_ACTS_INFER)
        return st_errorf(err, ST_ERR_ARG, "a gradient needs activations planned for training");
    if ((rc = forward_body(m, a, ids, seg, err))) return rc;
    if (grad_scale != 0) memset(a->dxn, 0, N * D * sizeof(float));
    size_t R = a->chunked ? a->head_rows : N, n = 0;
    double s = 0;
    for (size_t r0 = 0; r0 < N; r0 += R) {
        size_t nr = N - r0 < R ? N - r0 : R;
        const int32_t *tg = targets + r0;
        st_share_poll();
        st_model_head(m, a->logits, a->xf + r0 * D, nr);
        m->k->crossentropy_forward(a->losses + r0, a->logits, tg, nr, V);
        for (size_t i = 0; i < nr; i++)
            if (tg[i] >= 0) {
                s += a->losses[r0 + i];
                n++;
            }
        if (grad_scale == 0) continue;
        /* the head's backward for these rows: dxn rows += dlogits (nr, V) @ head (V, D) */
        if ((m->head_bb && !m->f32_panels) || (m->q_head.kind && m->bf16)) {
            /* BF16: dlogits never exist in float */
            struct st_ce_rows ce = {a->losses + r0, tg, grad_scale, 0};
            if (m->q_head.kind)
                q_backward_ex(m, a->dxn + r0 * D, a->logits, &m->q_head, nr, 1, NULL, &ce);
            else
                panel_mm_src(m, a->dxn + r0 * D, a->logits, m->head_bb, NULL, nr, V, D, 1, NULL,
                             &ce);
            continue;
        }
        m->k->crossentropy_backward(a->logits, a->logits, tg, grad_scale, nr, V);
        if (m->head_bb)
            panel_mm(m, a->dxn + r0 * D, a->logits, m->head_bb, NULL, nr, V, D, 1, NULL);
        else if (m->q_head.kind)
            q_backward(m, a->dxn + r0 * D, a->logits, &m->q_head, nr);
        else
            m->k->linear_backward(a->dxn + r0 * D, NULL, NULL, a->logits, a->xf + r0 * D,
                                  m->lm_head, nr, D, V);
    }
    *loss_sum += s;
    *count += n;
    a->head_grad = grad_scale != 0;
    return ST_OK;
}

enum st_status st_model_loss(const struct st_model *m, struct st_acts *a, const int32_t *targets,
                             double *loss_sum, size_t *count, struct st_error *err) {
    size_t N = a->B * a->T, V = (size_t)m->cfg.vocab_size;
    if (a->chunked)
        return st_errorf(err, ST_ERR_ARG, "activations planned with a chunked head hold no whole "
                         "logits: use st_model_forward_loss");
    enum st_status rc = check_targets(m, targets, N, err);
    if (rc) return rc;
    m->k->crossentropy_forward(a->losses, a->logits, targets, N, V);
    double s = 0;
    size_t n = 0;
    for (size_t i = 0; i < N; i++)
        if (targets[i] >= 0) {
            s += a->losses[i];
            n++;
        }
    *loss_sum += s;
    *count += n;
    return ST_OK;
}

/* ---------------------------------------------------------------- backward */

/* Block backward: dres (N, D) holds d loss / d x_out on entry and d loss / d x_in on exit (both
 * through the residual; layer 0 leaves it as it came). The forward list, reversed. */
static void block_backward(const struct st_model *m, int l, struct st_layer_acts *la,
                           struct st_acts *a, const float *x_in, float *dres, float *dres_mid,
                           const int32_t *seg, struct st_lora *lo) {
    const struct st_model_config *c = &m->cfg;
    const struct st_kernels *k = m->k;
    const struct st_layer_weights *w = &m->layers[l];
    size_t B = a->B, T = a->T, N = B * T, D = (size_t)c->dim, H = (size_t)c->hidden_dim;
    size_t nh = (size_t)c->n_heads, nkv = (size_t)c->n_kv_heads, hd = (size_t)c->head_dim;
    size_t QD = nh * hd, KD = nkv * hd;
    struct lin lc = {m, la, a->xd, a->dxd, a->dxa, l};

    // MLP: x_out = res_mid + down(glu(gate(xn2), up(xn2))), xn2 = norm(res_mid)
    lin_backward(&lc, ST_LIN_DOWN, lo, a->dg, 1, dres, la->g, w->wd, N, H, D);
    k->glu_backward(a->dgate, a->dup, a->dg, la->gate, la->up, c->act, N, H);
    lin_backward(&lc, ST_LIN_GATE, lo, a->dxn, 1, a->dgate, la->xn2, w->wg, N, D, H);
    lin_backward(&lc, ST_LIN_UP, lo, a->dxn, 0, a->dup, la->xn2, w->wu, N, D, H);
    memcpy(dres_mid, dres, N * D * sizeof(float));
    k->rmsnorm_backward(dres_mid, NULL, a->dxn, la->res_mid, w->post_norm, la->rstd2,
                        c->norm_offset, N, D);

    // attention: res_mid = x_in + o(attn(rope(q(xn1)), rope(k(xn1)), v(xn1))), xn1 = norm(x_in)
    lin_backward(&lc, ST_LIN_O, lo, a->day, 1, dres_mid, la->ay, w->wo, N, QD, D);
    st_share_poll();
    k->attention_backward(a->dq, a->dk, a->dv, a->day, la->ay, la->lse, la->q, la->k, la->v, seg,
                          1.0f / sqrtf((float)hd), st_config_layer_window(c, l), B, T, T, nh, nkv,
                          hd);
    k->rope_backward(a->dq, a->dq, a->cos, a->sin, a->pos, N, nh, hd);
    k->rope_backward(a->dk, a->dk, a->cos, a->sin, a->pos, N, nkv, hd);
    /* layer 0: the embeddings are frozen, so nothing needs d loss / d x_in through q, k, v and
     * the norm: only their LoRA gradients (dres is left as d loss / d x_out) */
    float *dxn = l > 0 ? a->dxn : NULL;
    lin_backward(&lc, ST_LIN_Q, lo, dxn, 1, a->dq, la->xn1, w->wq, N, D, QD);
    lin_backward(&lc, ST_LIN_K, lo, dxn, 0, a->dk, la->xn1, w->wk, N, D, KD);
    lin_backward(&lc, ST_LIN_V, lo, dxn, 0, a->dv, la->xn1, w->wv, N, D, KD);
    if (!dxn) return;
    memcpy(dres, dres_mid, N * D * sizeof(float));
    k->rmsnorm_backward(dres, NULL, a->dxn, x_in, w->in_norm, la->rstd1, c->norm_offset, N, D);
}

enum st_status st_model_backward(const struct st_model *m, struct st_acts *a, const int32_t *ids,
                                 const int32_t *targets, const int32_t *seg, float grad_scale,
                                 struct st_lora *lo, struct st_error *err) {
    (void)ids;
    const struct st_model_config *c = &m->cfg;
    if (a->keep_all == ST_ACTS_INFER)
        return st_errorf(err, ST_ERR_ARG, "backward needs activations planned for training");
    size_t N = a->B * a->T, D = (size_t)c->dim, V = (size_t)c->vocab_size;
    // loss -> logits -> final norm (st_model_forward_loss may have done the head already)
    if (!a->head_grad) {
        if (a->chunked)
            return st_errorf(err, ST_ERR_ARG, "with a chunked head, run st_model_forward_loss "
                             "with a grad_scale before backward");
        m->k->crossentropy_backward(a->logits, a->logits, targets, grad_scale, N, V);
        memset(a->dxn, 0, N * D * sizeof(float));
        if (m->head_bb)
            panel_mm(m, a->dxn, a->logits, m->head_bb, NULL, N, V, D, 1, NULL);
        else if (m->q_head.kind)
            q_backward(m, a->dxn, a->logits, &m->q_head, N);
        else
            m->k->linear_backward(a->dxn, NULL, NULL, a->logits, a->xf, m->lm_head, N, D, V);
    }
    a->head_grad = 0;
    memset(a->dres0, 0, N * D * sizeof(float));
    m->k->rmsnorm_backward(a->dres0, NULL, a->dxn, layer_in(a, c, c->n_layers), m->final_norm,
                           a->rstdf, c->norm_offset, N, D);
    // blocks, last to first
    for (int l = c->n_layers - 1; l >= 0; l--) {
        struct st_layer_acts *la = &a->layer[l];
        if (a->keep_all == ST_ACTS_CHECKPOINT) /* recompute this layer's activations */
            st_block_forward(m, l, la, layer_in(a, c, l + 1), layer_in(a, c, l), la->k, la->v,
                             a->pos, seg, a->cos, a->sin, a->tmp, a->xd, a->B, a->T, a->T);
        block_backward(m, l, la, a, layer_in(a, c, l), a->dres0, a->dres1, seg, lo);
    }
    return ST_OK;
}

enum st_status st_model_score(const struct st_model *m, struct st_acts *a, const int32_t *ids,
                              const int32_t *seg, size_t n, double *loss_sum, size_t *count,
                              struct st_error *err) {
    if (a->B != 1 || n > a->T)
        return st_errorf(err, ST_ERR_ARG, "sequence of %zu tokens does not fit the planned %zu",
                         n, a->T);
    if (n < 2) return ST_OK;
    /* row t predicts ids[t + 1] within its segment; then forward_loss (chunked head or not) on
     * exactly n tokens: a view of the planned buffers with T = n */
    for (size_t t = 0; t < n; t++)
        a->targets[t] = t + 1 < n && (!seg || seg[t + 1] == seg[t]) ? ids[t + 1] : -100;
    size_t T = a->T;
    a->T = n;
    enum st_status rc = st_model_forward_loss(m, a, ids, seg, a->targets, 0, loss_sum, count, err);
    a->T = T;
    return rc;
}
