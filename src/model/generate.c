/* generate.c: KV-cache inference and sampling.
 *
 * DESIGN: decoding reuses st_block_forward with B = 1: the new tokens' K/V rows are written straight
 * into the cache at the current length, and attention reads every cached row. A prompt is
 * prefilled in chunks; each decode step is a chunk of one. The sampler is greedy at temperature
 * 0, else temperature -> top-k -> top-p (nucleus) -> draw, like Hugging Face's warper order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct st_kv_state {
    size_t max_T, chunk, len;
    float *kc, *vc;          // (L, max_T, nkv*hd)
    struct st_layer_acts la; // sized for chunk tokens, lse (nh, chunk)
    float *x0, *x1, *tmp;    // (chunk, D), (chunk, D), (chunk, max(D, H))
    float *xf, *rstdf;       // (1, D), (1)
    float *logits;           // (V)
    float *cos, *sin;        // (max_T, hd/2)
    int32_t *pos;            // (chunk)
    struct st_arena arena;
};

enum st_status st_kv_init(struct st_kv_state **out, const struct st_model *m, size_t max_T,
                          size_t chunk, struct st_error *err) {
    *out = NULL;
    const struct st_model_config *c = &m->cfg;
    if (max_T == 0 || chunk == 0) return st_errorf(err, ST_ERR_ARG, "empty KV cache");
    if (max_T > (size_t)c->max_seq_len)
        return st_errorf(err, ST_ERR_ARG,
                         "context of %zu tokens exceeds the model's max_position_embeddings %d",
                         max_T, c->max_seq_len);
    if (chunk > max_T) chunk = max_T;
    size_t L = (size_t)c->n_layers, D = (size_t)c->dim, H = (size_t)c->hidden_dim;
    size_t V = (size_t)c->vocab_size, nh = (size_t)c->n_heads, hd = (size_t)c->head_dim;
    size_t QD = nh * hd, KD = (size_t)c->n_kv_heads * hd;
    size_t r = m->lora ? (size_t)m->lora->cfg.rank : 0;
    struct st_kv_state *s = st_calloc(1, sizeof *s);
    if (!s) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    struct {
        void **slot;
        size_t count;
    } items[] = {
        {(void **)&s->kc, L * max_T * KD}, {(void **)&s->vc, L * max_T * KD},
        {(void **)&s->la.res_mid, chunk * D}, {(void **)&s->la.rstd1, chunk},
        {(void **)&s->la.rstd2, chunk}, {(void **)&s->la.xn1, chunk * D},
        {(void **)&s->la.xn2, chunk * D}, {(void **)&s->la.q, chunk * QD},
        {(void **)&s->la.lse, nh * chunk}, {(void **)&s->la.ay, chunk * QD},
        {(void **)&s->la.gate, chunk * H}, {(void **)&s->la.up, chunk * H},
        {(void **)&s->la.g, chunk * H}, {(void **)&s->x0, chunk * D}, {(void **)&s->x1, chunk * D},
        {(void **)&s->tmp, chunk * (D > H ? D : H)}, {(void **)&s->xf, D},
        {(void **)&s->rstdf, 1}, {(void **)&s->logits, V}, {(void **)&s->cos, max_T * hd / 2},
        {(void **)&s->sin, max_T * hd / 2}, {(void **)&s->pos, chunk},
        {(void **)&s->la.xa[0], chunk * r}, {(void **)&s->la.xa[1], chunk * r},
        {(void **)&s->la.xa[2], chunk * r}, {(void **)&s->la.xa[3], chunk * r},
        {(void **)&s->la.xa[4], chunk * r}, {(void **)&s->la.xa[5], chunk * r},
        {(void **)&s->la.xa[6], chunk * r},
    };
    size_t n_items = sizeof items / sizeof items[0], total = 0;
    for (size_t i = 0; i < n_items; i++) total += st_arena_round(items[i].count * 4);
    enum st_status rc = st_arena_init(&s->arena, total, err);
    if (rc) {
        st_free(s);
        return st_errorf(err, ST_ERR_NOMEM, "KV cache for %zu positions needs %.1f MiB", max_T,
                         (double)total / 1048576.0);
    }
    for (size_t i = 0; i < n_items; i++) {
        *items[i].slot = st_arena_take(&s->arena, items[i].count * 4);
        ST_ASSERT(*items[i].slot);
    }
    s->max_T = max_T;
    s->chunk = chunk;
    st_rope_table(s->cos, s->sin, m->inv_freq, max_T, hd);
    *out = s;
    return ST_OK;
}

void st_kv_free(struct st_kv_state *s) {
    if (!s) return;
    st_arena_free(&s->arena);
    st_free(s);
}

size_t st_kv_len(const struct st_kv_state *s) { return s->len; }
void st_kv_reset(struct st_kv_state *s) { s->len = 0; }

enum st_status st_kv_forward(const struct st_model *m, struct st_kv_state *s, const int32_t *ids,
                             size_t n, const float **logits, struct st_error *err) {
    const struct st_model_config *c = &m->cfg;
    if (n == 0 || n > s->chunk)
        return st_errorf(err, ST_ERR_ARG, "chunk of %zu tokens (allowed 1..%zu)", n, s->chunk);
    if (s->len + n > s->max_T)
        return st_errorf(err, ST_ERR_ARG, "context full: %zu + %zu tokens > %zu", s->len, n,
                         s->max_T);
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return st_errorf(err, ST_ERR_ARG, "token id %d is outside the vocabulary [0, %d)",
                             ids[i], c->vocab_size);
        s->pos[i] = (int32_t)(s->len + i);
    }
    size_t D = (size_t)c->dim, KD = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    size_t Tk = s->len + n;
    st_model_embed(m, s->x0, ids, n);
    float *x_in = s->x0, *x_out = s->x1;
    for (int l = 0; l < c->n_layers; l++) {
        float *kl = s->kc + (size_t)l * s->max_T * KD, *vl = s->vc + (size_t)l * s->max_T * KD;
        st_block_forward(m, l, &s->la, x_out, x_in, kl, vl, s->pos, NULL, s->cos, s->sin, s->tmp,
                         NULL, 1, n, Tk);
        float *t = x_in;
        x_in = x_out;
        x_out = t;
    }
    const float *last = x_in + (n - 1) * D;
    m->k->rmsnorm_forward(s->xf, s->rstdf, last, m->final_norm, c->norm_eps, c->norm_offset, 1, D);
    st_model_head(m, s->logits, s->xf, 1);
    s->len = Tk;
    *logits = s->logits;
    return ST_OK;
}

/* ---------------------------------------------------------------- sampling */

size_t st_sample_scratch_bytes(size_t V) { return V * (sizeof(float) + sizeof(int32_t)); }

static int32_t argmax(const float *x, size_t V) {
    size_t best = 0;
    for (size_t i = 1; i < V; i++)
        if (x[i] > x[best]) best = i;
    return (int32_t)best;
}

struct cand {
    float p;
    int32_t id;
};

static int cmp_cand_desc(const void *a, const void *b) {
    const struct cand *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->id < y->id ? -1 : (x->id > y->id); /* ties: lower id first, deterministic */
}

int32_t st_sample(const float *logits, size_t V, const struct st_sampler *s, struct st_rng *rng,
                  void *scratch) {
    if (s->temperature <= 0 || V == 1) return argmax(logits, V);
    struct cand *c = scratch; /* V entries: sizeof(struct cand) == float + int32 */
    float maxv = logits[argmax(logits, V)];
    double sum = 0;
    for (size_t i = 0; i < V; i++) {
        float e = expf((logits[i] - maxv) / s->temperature);
        c[i].p = e;
        c[i].id = (int32_t)i;
        sum += e;
    }
    size_t n = V;
    int need_sort = (s->top_k > 0 && (size_t)s->top_k < V) || (s->top_p > 0 && s->top_p < 1);
    if (need_sort) {
        qsort(c, V, sizeof *c, cmp_cand_desc);
        if (s->top_k > 0 && (size_t)s->top_k < n) n = (size_t)s->top_k;
        sum = 0;
        for (size_t i = 0; i < n; i++) sum += c[i].p;
        if (s->top_p > 0 && s->top_p < 1) {
            /* keep the smallest prefix whose mass reaches top_p (always at least one token) */
            double acc = 0;
            size_t keep = n;
            for (size_t i = 0; i < n; i++) {
                acc += c[i].p / sum;
                if (acc >= s->top_p) {
                    keep = i + 1;
                    break;
                }
            }
            n = keep;
            sum = 0;
            for (size_t i = 0; i < n; i++) sum += c[i].p;
        }
    }
    double r = st_rng_uniform(rng) * sum, acc = 0;
    for (size_t i = 0; i < n; i++) {
        acc += c[i].p;
        if (r < acc) return c[i].id;
    }
    return c[n - 1].id;
}

static int is_eos(const struct st_model_config *c, int32_t id) {
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_token_ids[i] == id) return 1;
    return 0;
}

enum st_status st_model_generate(const struct st_model *m, const int32_t *prompt, size_t n_prompt,
                                 const struct st_gen_params *p, int32_t *out, size_t *n_out,
                                 int (*on_token)(void *ctx, int32_t id), void *ctx,
                                 struct st_error *err) {
    *n_out = 0;
    if (n_prompt == 0) return st_errorf(err, ST_ERR_ARG, "empty prompt");
    if (p->max_tokens <= 0) return ST_OK;
    size_t max_T = n_prompt + (size_t)p->max_tokens;
    if (max_T > (size_t)m->cfg.max_seq_len)
        return st_errorf(err, ST_ERR_ARG,
                         "prompt (%zu tokens) + max tokens (%d) exceeds the model's context of "
                         "%d tokens",
                         n_prompt, p->max_tokens, m->cfg.max_seq_len);
    struct st_kv_state *s;
    size_t chunk = n_prompt < 256 ? n_prompt : 256;
    enum st_status rc = st_kv_init(&s, m, max_T, chunk, err);
    if (rc) return rc;
    void *scratch = st_malloc(st_sample_scratch_bytes((size_t)m->cfg.vocab_size));
    if (!scratch) {
        st_kv_free(s);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    }
    struct st_rng rng;
    st_rng_seed(&rng, p->seed);
    const float *logits = NULL;
    for (size_t i = 0; i < n_prompt && !rc; i += chunk) {
        size_t n = n_prompt - i < chunk ? n_prompt - i : chunk;
        rc = st_kv_forward(m, s, prompt + i, n, &logits, err);
    }
    for (int t = 0; t < p->max_tokens && !rc; t++) {
        int32_t id = st_sample(logits, (size_t)m->cfg.vocab_size, &p->sampler, &rng, scratch);
        out[(*n_out)++] = id;
        if (on_token && on_token(ctx, id)) break;
        if (p->stop_at_eos && is_eos(&m->cfg, id)) break;
        if (t + 1 < p->max_tokens) rc = st_kv_forward(m, s, &id, 1, &logits, err);
    }
    st_free(scratch);
    st_kv_free(s);
    return rc;
}
