/* test_qlora.c: QLoRA (issue 5) against a float64 reference: tiny models loaded with
 * st_model_load_ex(quantize = NF4 or INT8) vs tests/golden/qlora/<model>_<quant>.safetensors from
 * tools/make_qlora_golden.py, which quantises the same weights with tools/nf4_reference.py (or the
 * int8 rule), dequantises them, and runs make_reference.py's float64 forward/backward on them.
 * - Dequantised weights: every quantised tensor (7 projections per layer, the embedding, an untied
 *   lm_head) through st_qweight_dequant_rows equals the reference bit for bit (FNV-1a 64 of the
 *   float32 bytes; layer 0 k_proj also element by element, reporting the max error).
 * - Logits without LoRA: per position, max_v |got - want| <= 1e-4 * max_v |want|.
 * - With the golden LoRA init (rank 4, alpha 8, all 7 modules): loss within 1e-4 relative; every
 *   A/B gradient max |got - want| <= 1e-4 * max |want| per tensor; on the cpu and ref kernels;
 *   gradient checkpointing bit-identical to keeping all activations.
 * - Teeth: the unquantised model misses the golden logits by > 1e-3 (10x the tolerance), and so do
 *   the other load options (the generator asserts the same in float64).
 * - Load options: keep_embeddings (embedding/head stay float, projections unchanged) and, for NF4,
 *   double_quant = 0 (float absmax): their own hashes and logits. */
#include <stdint.h>

#include "harness.h"
#include "streamtune/model.h"
#include "streamtune/train.h"

#define TOL 1e-4
#define TEETH 1e-3

static const char *models[] = {"llama2_f32", "qwen2_bias", NULL};
static const char *proj[ST_LIN_COUNT] = {"self_attn.q_proj", "self_attn.k_proj",
                                         "self_attn.v_proj", "self_attn.o_proj",
                                         "mlp.gate_proj",    "mlp.up_proj",
                                         "mlp.down_proj"};
#define FULL_LAYER 0
#define FULL_MOD ST_LIN_K
#define FULL_NAME "model.layers.0.self_attn.k_proj.weight"

/* An aligned copy of a golden tensor (tensors in the mapped file need not be aligned), or NULL. */
static void *gcopy(struct st_safetensors *g, const char *name, enum st_dtype dt, size_t *n) {
    const struct st_tensor_view *t = st_safetensors_find(g, name);
    if (!t || t->dtype != dt) {
        CHECKF(0, "golden tensor %s missing or not %s", name, st_dtype_name(dt));
        return NULL;
    }
    void *c = malloc(t->nbytes ? t->nbytes : 1);
    if (!c) abort();
    memcpy(c, t->data, t->nbytes);
    if (n) *n = (size_t)st_tensor_numel(t);
    return c;
}

static uint64_t fnv1a64(const float *x, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    const unsigned char *p = (const unsigned char *)x; /* little-endian hosts only, like the maps */
    for (size_t i = 0; i < n * 4; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static float *dequant_all(const struct st_qweight *w) {
    float *d = malloc(w->rows * w->cols * sizeof *d);
    if (!d) abort();
    st_qweight_dequant_rows(d, w, 0, w->rows);
    return d;
}

/* Every quantised tensor of m against prefix<name> hashes of the golden; returns how many. */
static int check_hashes(const struct st_model *m, struct st_safetensors *g, const char *prefix,
                        const char *label) {
    int n = 0, bad = 0;
    int nt = m->cfg.n_layers * ST_LIN_COUNT + (m->q_embed.kind ? 1 : 0) +
             (m->q_head.kind && !m->cfg.tie_embeddings ? 1 : 0);
    for (int i = 0; i < nt; i++) {
        char name[200], key[260];
        const struct st_qweight *w;
        int l = i / ST_LIN_COUNT, mod = i % ST_LIN_COUNT;
        if (l < m->cfg.n_layers) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, proj[mod]);
            w = &m->layers[l].q[mod];
        } else if (i == m->cfg.n_layers * ST_LIN_COUNT && m->q_embed.kind) {
            snprintf(name, sizeof name, "model.embed_tokens.weight");
            w = &m->q_embed;
        } else {
            snprintf(name, sizeof name, "lm_head.weight");
            w = &m->q_head;
        }
        snprintf(key, sizeof key, "%s%s", prefix, name);
        int64_t *want = gcopy(g, key, ST_I64, NULL);
        if (!want) continue;
        CHECKF(w->kind == m->quant, "%s %s: not quantised", label, name);
        if (w->kind == m->quant) {
            float *d = dequant_all(w);
            uint64_t h = fnv1a64(d, w->rows * w->cols);
            CHECKF(h == (uint64_t)want[0], "%s %s: dequantised weights differ from the reference "
                   "(hash %016llx vs %016llx)", label, name, (unsigned long long)h,
                   (unsigned long long)want[0]);
            bad += h != (uint64_t)want[0];
            free(d);
        }
        free(want);
        n++;
    }
    return n - bad;
}

/* max over positions of max_v |a - b| / max_v |b| */
static double logits_rel(const float *got, const float *want, size_t N, size_t V) {
    double worst = 0;
    for (size_t i = 0; i < N; i++) {
        double ref, d = test_max_abs_diff(got + i * V, want + i * V, V, &ref);
        double r = d / (ref > 0 ? ref : 1);
        if (r > worst || r != r) worst = r != r ? INFINITY : r;
    }
    return worst;
}

/* Forward ids (B, T) without LoRA; returns the row metric against want (B*T, V). */
static double forward_rel(struct st_model *m, const int32_t *ids, size_t B, size_t T,
                          const float *want) {
    struct st_error err;
    struct st_acts a;
    const struct st_lora *keep = m->lora;
    m->lora = NULL;
    double r = INFINITY;
    if (st_acts_init(&a, m, B, T, ST_ACTS_INFER, &err)) {
        CHECKF(0, "%s", err.msg);
        m->lora = keep;
        return r;
    }
    if (st_model_forward(m, &a, ids, NULL, &err) == ST_OK)
        r = logits_rel(a.logits, want, B * T, (size_t)m->cfg.vocab_size);
    else
        CHECKF(0, "%s", err.msg);
    st_acts_free(&a);
    m->lora = keep;
    return r;
}

static int load(struct st_model *m, const char *model, enum st_quant q, int dq, int keep_emb) {
    char dir[1024];
    struct st_error err;
    struct st_model_load_options o;
    st_model_load_options_init(&o);
    o.quantize = q;
    o.double_quant = dq;
    o.keep_embeddings = keep_emb;
    snprintf(dir, sizeof dir, "%s/tests/golden/%s", ST_SOURCE_DIR, model);
    if (st_model_load_ex(m, dir, &o, &err)) {
        CHECKF(0, "%s (%s): %s", model, st_quant_name(q), err.msg);
        return 1;
    }
    return 0;
}

/* Copy the golden's LoRA init (PEFT keys) into lo. */
static int copy_lora(struct st_lora *lo, struct st_safetensors *g) {
    for (int l = 0; l < lo->n_layers; l++)
        for (int m = 0; m < ST_LIN_COUNT; m++) {
            struct st_lora_module *x = &lo->mod[(size_t)l * ST_LIN_COUNT + (size_t)m];
            for (int isb = 0; isb < 2; isb++) {
                char key[200];
                st_lora_key(key, sizeof key, l, (enum st_lin)m, isb);
                const struct st_tensor_view *t = st_safetensors_find(g, key);
                size_t n = (size_t)lo->cfg.rank * (isb ? x->out : x->in);
                if (!t || t->dtype != ST_F32 || (size_t)st_tensor_numel(t) != n) return 1;
                memcpy(isb ? x->b : x->a, t->data, n * 4);
            }
        }
    return 0;
}

/* forward + loss + backward with the attached adapter; grads in lo->grads; mean loss */
static double step(struct st_model *m, struct st_acts *a, struct st_lora *lo, const int32_t *ids,
                   const int32_t *targets) {
    struct st_error err;
    double sum = 0;
    size_t count = 0;
    st_lora_zero_grads(lo);
    CHECK(st_model_forward(m, a, ids, NULL, &err) == ST_OK);
    CHECK(st_model_loss(m, a, targets, &sum, &count, &err) == ST_OK);
    CHECK(count > 0);
    CHECK(st_model_backward(m, a, ids, targets, NULL, (float)(1.0 / (double)count), lo, &err) ==
          ST_OK);
    return sum / (double)(count ? count : 1);
}

/* worst per-tensor max|got - want| / max|want| over every LoRA gradient */
static double check_grads(struct st_lora *lo, struct st_safetensors *g, const char *label) {
    double worst = 0;
    for (int l = 0; l < lo->n_layers; l++)
        for (int m = 0; m < ST_LIN_COUNT; m++) {
            const struct st_lora_module *x = st_lora_get(lo, l, m);
            for (int isb = 0; isb < 2; isb++) {
                char key[200], name[240];
                st_lora_key(key, sizeof key, l, (enum st_lin)m, isb);
                snprintf(name, sizeof name, "grad.%s", key);
                size_t n;
                float *want = gcopy(g, name, ST_F32, &n);
                if (!want) continue;
                CHECKF(n == (size_t)lo->cfg.rank * (isb ? x->out : x->in), "%s shape", name);
                double ref, d = test_max_abs_diff(isb ? x->gb : x->ga, want, n, &ref);
                double r = d / (ref > 0 ? ref : 1);
                if (r > worst || r != r) worst = r != r ? INFINITY : r;
                CHECKF(d <= TOL * ref, "%s %s: max|diff| %g > %g * %g", label, name, d, TOL, ref);
                free(want);
            }
        }
    return worst;
}

static void run_config(const char *model, enum st_quant q) {
    char path[1200], label[64];
    struct st_error err;
    snprintf(label, sizeof label, "%s/%s", model, st_quant_name(q));
    snprintf(path, sizeof path, "%s/tests/golden/qlora/%s_%s.safetensors", ST_SOURCE_DIR, model,
             st_quant_name(q));
    struct st_safetensors *g;
    if (st_safetensors_open(&g, path, &err)) {
        CHECKF(0, "%s", err.msg);
        return;
    }
    struct st_model m;
    if (load(&m, model, q, 1, 0)) {
        st_safetensors_close(g);
        return;
    }
    const struct st_tensor_view *tv = st_safetensors_find(g, "input_ids");
    CHECK(tv && tv->ndim == 2);
    size_t B = (size_t)tv->shape[0], T = (size_t)tv->shape[1], V = (size_t)m.cfg.vocab_size;
    int32_t *ids = gcopy(g, "input_ids", ST_I32, NULL);
    int32_t *targets = gcopy(g, "targets", ST_I32, NULL);
    float *want_logits = gcopy(g, "logits", ST_F32, NULL);
    float *want_loss = gcopy(g, "loss", ST_F32, NULL);
    if (!ids || !targets || !want_logits || !want_loss) goto out;

    /* what got quantised */
    CHECK(m.quant == q && m.q_embed.kind == q && m.q_head.kind == q && m.qbytes > 0);
    CHECK(m.cfg.tie_embeddings ? m.q_head.q == m.q_embed.q : m.q_head.q != m.q_embed.q);
    for (int l = 0; l < m.cfg.n_layers; l++) {
        CHECK(m.layers[l].in_norm && m.layers[l].post_norm);
        for (int k = 0; k < ST_LIN_COUNT; k++) CHECK(m.layers[l].q[k].kind == q);
    }
    size_t qel = m.q_embed.rows * m.q_embed.cols * (m.cfg.tie_embeddings ? 1 : 2);
    for (int l = 0; l < m.cfg.n_layers; l++)
        for (int k = 0; k < ST_LIN_COUNT; k++) qel += m.layers[l].q[k].rows * m.layers[l].q[k].cols;
    CHECKF(m.qbytes < qel * (q == ST_QUANT_NF4 ? 1 : 2), "%s: %zu quantised bytes for %zu weights",
           label, m.qbytes, qel);

    /* dequantised weights, bit for bit */
    int nq = check_hashes(&m, g, "hash.", label);
    size_t nfull;
    float *want_full = gcopy(g, "deq." FULL_NAME, ST_F32, &nfull);
    double full_err = INFINITY;
    if (want_full) {
        const struct st_qweight *w = &m.layers[FULL_LAYER].q[FULL_MOD];
        CHECK(nfull == w->rows * w->cols);
        float *d = dequant_all(w);
        full_err = test_max_abs_diff(d, want_full, nfull, NULL);
        CHECKF(!memcmp(d, want_full, nfull * 4), "%s %s: dequantised max |diff| %g", label,
               FULL_NAME, full_err);
        /* a row range that starts mid-block and mid-byte gives the same values */
        size_t r0 = w->rows / 3, nr = w->rows - r0;
        st_qweight_dequant_rows(d, w, r0, nr);
        CHECKF(!memcmp(d, want_full + r0 * w->cols, nr * w->cols * 4),
               "%s %s: rows from %zu differ", label, FULL_NAME, r0);
        free(d);
        free(want_full);
    }

    /* logits without LoRA, on both kernel backends */
    double lrel = 0;
    const struct st_kernels *backends[2] = {st_kernels_cpu(), st_kernels_ref()};
    for (int bi = 0; bi < 2; bi++) {
        m.k = backends[bi];
        double r = forward_rel(&m, ids, B, T, want_logits);
        CHECKF(r <= TOL, "%s %s logits: row rel diff %.3g", label, m.k->name, r);
        if (r > lrel) lrel = r;
    }
    m.k = st_kernels_cpu();

    /* teeth: the float model does not pass, nor does a different quantised weight */
    struct st_model mf;
    double frel = 0;
    if (!load(&mf, model, ST_QUANT_NONE, 1, 0)) {
        CHECK(mf.quant == ST_QUANT_NONE && !mf.q_embed.kind && !mf.layers[0].q[0].kind);
        frel = forward_rel(&mf, ids, B, T, want_logits);
        CHECKF(frel > TEETH, "%s: the unquantised model matches the quantised golden (%.3g)",
               label, frel);
        const struct st_qweight *w = &m.layers[FULL_LAYER].q[FULL_MOD];
        float *d = dequant_all(w);
        CHECK(memcmp(d, mf.layers[FULL_LAYER].wk, w->rows * w->cols * 4) != 0);
        free(d);
        st_model_free(&mf);
    }

    /* LoRA: loss and every gradient, cpu and ref kernels; checkpointing identical */
    int32_t rank = 0;
    float alpha = 0;
    const struct st_tensor_view *tr = st_safetensors_find(g, "lora_rank");
    const struct st_tensor_view *ta = st_safetensors_find(g, "lora_alpha");
    CHECK(tr && ta);
    if (tr) memcpy(&rank, tr->data, 4);
    if (ta) memcpy(&alpha, ta->data, 4);
    struct st_lora_config lc = {rank, alpha, 0.0f, 0, ST_LIN_ALL, 0};
    struct st_lora lo;
    if (st_lora_init(&lo, &m.cfg, &lc, 1, &err) || copy_lora(&lo, g)) {
        CHECKF(0, "%s: cannot set up the adapter", label);
    } else {
        m.lora = &lo;
        m.training = 1;
        double worst = 0, worst_loss = 0;
        for (int bi = 0; bi < 2; bi++) {
            m.k = backends[bi];
            struct st_acts a;
            CHECK(st_acts_init(&a, &m, B, T, ST_ACTS_TRAIN, &err) == ST_OK);
            double loss = step(&m, &a, &lo, ids, targets);
            double dl = fabs(loss - want_loss[0]) / fabs(want_loss[0]);
            if (dl > worst_loss) worst_loss = dl;
            CHECKF(dl <= TOL, "%s %s loss %.7f vs %.7f", label, m.k->name, loss, want_loss[0]);
            double w = check_grads(&lo, g, label);
            if (w > worst) worst = w;
            st_acts_free(&a);
        }
        m.k = st_kernels_cpu();
        struct st_acts a, c;
        CHECK(st_acts_init(&a, &m, B, T, ST_ACTS_TRAIN, &err) == ST_OK);
        CHECK(st_acts_init(&c, &m, B, T, ST_ACTS_CHECKPOINT, &err) == ST_OK);
        double l1 = step(&m, &a, &lo, ids, targets);
        float *g1 = malloc(lo.n_params * sizeof *g1);
        if (!g1) abort();
        memcpy(g1, lo.grads, lo.n_params * sizeof *g1);
        double l2 = step(&m, &c, &lo, ids, targets);
        CHECKF(l1 == l2 && !memcmp(g1, lo.grads, lo.n_params * sizeof *g1),
               "%s: checkpointing changed the loss or gradients", label);
        free(g1);
        st_acts_free(&a);
        st_acts_free(&c);
        m.lora = NULL;
        st_lora_free(&lo);
        printf("  %-15s %2d tensors bit-equal (k_proj max|diff| %g); logits row rel %.2e "
               "(float model %.2e); loss %.6f rel %.2e; worst grad rel %.2e\n",
               label, nq, full_err, lrel, frel, want_loss[0], worst_loss, worst);
    }

    /* keep_embeddings: embedding and head float, projections as before */
    struct st_model mk;
    float *want_k = gcopy(g, "keepemb.logits", ST_F32, NULL);
    if (want_k && !load(&mk, model, q, 1, 1)) {
        CHECK(mk.quant == q && !mk.q_embed.kind && !mk.q_head.kind && mk.embed && mk.lm_head);
        CHECK(mk.qbytes < m.qbytes);
        int nk = check_hashes(&mk, g, "hash.", label);
        CHECK(nk == mk.cfg.n_layers * ST_LIN_COUNT);
        double r = forward_rel(&mk, ids, B, T, want_k);
        CHECKF(r <= TOL, "%s keep_embeddings logits: row rel diff %.3g", label, r);
        double r0 = logits_rel(want_k, want_logits, B * T, V);
        CHECK(r0 > TEETH);
        printf("  %-15s keep_embeddings: %d tensors bit-equal, logits row rel %.2e (default "
               "golden %.2e)\n", label, nk, r, r0);
        st_model_free(&mk);
    }
    free(want_k);

    /* NF4 without double quantisation: float absmax */
    struct st_model mn;
    float *want_n = q == ST_QUANT_NF4 ? gcopy(g, "nodq.logits", ST_F32, NULL) : NULL;
    if (want_n && !load(&mn, model, q, 0, 0)) {
        const struct st_qweight *w = &mn.layers[0].q[0];
        CHECK(w->kind == ST_QUANT_NF4 && w->absmax && !w->aq && mn.q_embed.absmax);
        CHECK(mn.qbytes > m.qbytes);
        int nn = check_hashes(&mn, g, "nodq.hash.", label);
        CHECK(nn == nq);
        double r = forward_rel(&mn, ids, B, T, want_n);
        CHECKF(r <= TOL, "%s double_quant=0 logits: row rel diff %.3g", label, r);
        double r0 = logits_rel(want_n, want_logits, B * T, V);
        CHECK(r0 > TEETH);
        printf("  %-15s double_quant=0: %d tensors bit-equal, logits row rel %.2e (default "
               "golden %.2e)\n", label, nn, r, r0);
        st_model_free(&mn);
    }
    free(want_n);

out:
    free(ids);
    free(targets);
    free(want_logits);
    free(want_loss);
    st_model_free(&m);
    st_safetensors_close(g);
}

TEST(nf4) {
    for (int i = 0; models[i]; i++) run_config(models[i], ST_QUANT_NF4);
}

TEST(int8) {
    for (int i = 0; models[i]; i++) run_config(models[i], ST_QUANT_INT8);
}

int main(void) {
    st_threads_set(2);
    RUN(nf4);
    RUN(int8);
    return test_finish();
}
