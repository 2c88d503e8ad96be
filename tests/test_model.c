/* test_model.c: model parity with the PyTorch goldens in tests/golden (made by
 * tools/make_reference.py), KV-cache decoding equal to the full forward, sampling, and the real
 * stories260K model from ../shared/data (greedy ids and cross-entropy from its expected.json). */
#include <cjson/cJSON.h>

#include "harness.h"
#include "streamtune/model.h"

static const char *variants[] = {"llama2_f32",   "llama3_gqa_bf16", "llama_linear_f16",
                                 "mistral_window", "qwen2_bias",    "gemma_geglu",
                                 "smollm_sharded", NULL};

struct golden {
    struct st_safetensors *st;
    const int32_t *ids;
    const float *logits;
    float loss;
    size_t B, T, V;
};

static int load_golden(struct golden *g, const char *dir) {
    char path[1024];
    struct st_error err;
    snprintf(path, sizeof path, "%s/golden.safetensors", dir);
    if (st_safetensors_open(&g->st, path, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const struct st_tensor_view *ids = st_safetensors_find(g->st, "input_ids");
    const struct st_tensor_view *lg = st_safetensors_find(g->st, "logits");
    const struct st_tensor_view *ls = st_safetensors_find(g->st, "loss");
    if (!ids || !lg || !ls || ids->dtype != ST_I32 || lg->dtype != ST_F32) return 1;
    g->ids = ids->data;
    g->logits = lg->data;
    memcpy(&g->loss, ls->data, 4);
    g->B = (size_t)ids->shape[0];
    g->T = (size_t)ids->shape[1];
    g->V = (size_t)lg->shape[2];
    return 0;
}

/* Full forward logits equal PyTorch's: max |diff| <= 1e-4 * max |ref| (the bound). */
TEST(golden_logits) {
    for (int vi = 0; variants[vi]; vi++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/tests/golden/%s", ST_SOURCE_DIR, variants[vi]);
        struct golden g;
        if (load_golden(&g, dir)) {
            CHECKF(0, "cannot load golden for %s", variants[vi]);
            continue;
        }
        struct st_model m;
        struct st_error err;
        enum st_status rc = st_model_load(&m, dir, &err);
        CHECKF(rc == ST_OK, "%s: %s", variants[vi], err.msg);
        if (rc) {
            st_safetensors_close(g.st);
            continue;
        }
        CHECK((size_t)m.cfg.vocab_size == g.V);
        const struct st_kernels *backends[] = {st_kernels_ref(), st_kernels_cpu()};
        for (int bi = 0; bi < 2; bi++) {
            m.k = backends[bi];
            struct st_acts a;
            rc = st_acts_init(&a, &m, g.B, g.T, bi, &err); /* keep_all on for one of them */
            CHECKF(rc == ST_OK, "%s", err.msg);
            if (rc) continue;
            rc = st_model_forward(&m, &a, g.ids, NULL, &err);
            CHECK(rc == ST_OK);
            double maxref;
            double d = test_max_abs_diff(a.logits, g.logits, g.B * g.T * g.V, &maxref);
            printf("  %-18s %-3s logits max|diff| %.3g (max|ref| %.3g, rel %.3g)\n", variants[vi],
                   m.k->name, d, maxref, d / maxref);
            CHECKF(d <= 1e-4 * maxref, "%s/%s: %g > 1e-4 * %g", variants[vi], m.k->name, d,
                   maxref);
            /* loss: mean next-token CE over all B*(T-1) predictions, via st_model_score */
            struct st_acts a1;
            CHECK(st_acts_init(&a1, &m, 1, g.T, 0, &err) == ST_OK);
            double sum = 0;
            size_t count = 0;
            for (size_t b = 0; b < g.B; b++)
                CHECK(st_model_score(&m, &a1, g.ids + b * g.T, NULL, g.T, &sum, &count, &err) ==
                      ST_OK);
            CHECK(count == g.B * (g.T - 1));
            double loss = sum / (double)count;
            CHECKF(fabs(loss - g.loss) <= 1e-4 * fabs(g.loss), "%s loss %.7f vs %.7f",
                   variants[vi], loss, g.loss);
            /* the same with a chunked head: 4 rows at a time (fewer than planned, so several
             * chunks and a short last one on these small vocabularies) */
            struct st_acts a2;
            CHECK(st_acts_init(&a2, &m, 1, g.T, ST_ACTS_INFER | ST_ACTS_CHUNKED_HEAD, &err) ==
                  ST_OK);
            CHECK(a2.head_rows >= 4);
            a2.head_rows = 4;
            double sum2 = 0;
            size_t count2 = 0;
            for (size_t b = 0; b < g.B; b++)
                CHECK(st_model_score(&m, &a2, g.ids + b * g.T, NULL, g.T, &sum2, &count2, &err) ==
                      ST_OK);
            CHECK(count2 == count);
            CHECKF(fabs(sum2 - sum) <= 1e-6 * fabs(sum), "%s chunked score %.7f vs %.7f",
                   variants[vi], sum2, sum);
            st_acts_free(&a2);
            /* packed: a 5-token record (row 0's start), then the B rows, in one row with a
             * segment id per record, scores as the records alone (head chunks of 16 rows
             * straddle the records) */
            size_t np = 5 + g.B * g.T;
            int32_t *pids = malloc(np * sizeof *pids), *pseg = malloc(np * sizeof *pseg);
            memcpy(pids, g.ids, 5 * sizeof *pids);
            memcpy(pids + 5, g.ids, g.B * g.T * sizeof *pids);
            for (size_t i = 0; i < np; i++) pseg[i] = i < 5 ? 7 : 8 + (int32_t)((i - 5) / g.T);
            double s5 = 0, sp = 0;
            size_t c5 = 0, cp = 0;
            CHECK(st_model_score(&m, &a1, g.ids, NULL, 5, &s5, &c5, &err) == ST_OK);
            struct st_acts a3;
            CHECK(st_acts_init(&a3, &m, 1, np, ST_ACTS_INFER | ST_ACTS_CHUNKED_HEAD, &err) ==
                  ST_OK);
            CHECK(a3.head_rows >= 16);
            a3.head_rows = 16;
            CHECK(st_model_score(&m, &a3, pids, pseg, np, &sp, &cp, &err) == ST_OK);
            CHECK(cp == count + c5);
            CHECKF(fabs(sp - (sum + s5)) <= 2e-6 * fabs(sum + s5), "%s packed score %.7f vs %.7f",
                   variants[vi], sp, sum + s5);
            st_acts_free(&a3);
            free(pids);
            free(pseg);
            st_acts_free(&a1);
            st_acts_free(&a);
        }
        st_model_free(&m);
        st_safetensors_close(g.st);
    }
}

/* The KV-cache path (prefill in chunks, then one token at a time) gives the same logits as the
 * full forward at every position. */
TEST(kv_cache_matches_forward) {
    for (int vi = 0; variants[vi]; vi++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/tests/golden/%s", ST_SOURCE_DIR, variants[vi]);
        struct golden g;
        if (load_golden(&g, dir)) continue;
        struct st_model m;
        struct st_error err;
        if (st_model_load(&m, dir, &err)) {
            st_safetensors_close(g.st);
            continue;
        }
        for (size_t chunk = 1; chunk <= 4; chunk += 3) {
            struct st_kv_state *s;
            CHECK(st_kv_init(&s, &m, g.T, chunk, &err) == ST_OK);
            for (size_t t = 0; t < g.T; t += chunk) {
                size_t n = g.T - t < chunk ? g.T - t : chunk;
                const float *lg;
                CHECK(st_kv_forward(&m, s, g.ids + g.T + t, n, &lg, &err) == ST_OK); /* row b=1 */
                const float *ref = g.logits + (g.T + t + n - 1) * g.V;
                double maxref, d = test_max_abs_diff(lg, ref, g.V, &maxref);
                CHECKF(d <= 1e-4 * maxref, "%s chunk %zu pos %zu: %g", variants[vi], chunk,
                       t + n - 1, d);
            }
            CHECK(st_kv_len(s) == g.T);
            const float *lg;
            CHECK(st_kv_forward(&m, s, g.ids, 1, &lg, &err) == ST_ERR_ARG); /* context full */
            st_kv_free(s);
        }
        st_model_free(&m);
        st_safetensors_close(g.st);
    }
}

TEST(sampling) {
    float logits[6] = {0.1f, 2.0f, -1.0f, 1.9f, 0.0f, -3.0f};
    char scratch[6 * 8];
    struct st_rng rng;
    st_rng_seed(&rng, 1);
    struct st_sampler greedy = {0, 0, 1};
    CHECK(st_sample(logits, 6, &greedy, &rng, scratch) == 1);
    struct st_sampler top1 = {1.0f, 1, 1};
    for (int i = 0; i < 50; i++) CHECK(st_sample(logits, 6, &top1, &rng, scratch) == 1);
    struct st_sampler top2 = {1.0f, 2, 1};
    int seen[6] = {0};
    for (int i = 0; i < 2000; i++) seen[st_sample(logits, 6, &top2, &rng, scratch)]++;
    CHECK(seen[1] > 0 && seen[3] > 0 && seen[0] + seen[2] + seen[4] + seen[5] == 0);
    /* p(1) / p(3) = e^0.1: about 0.525 of draws are id 1 */
    CHECKF(fabs(seen[1] / 2000.0 - 0.525) < 0.04, "frequency %g", seen[1] / 2000.0);
    /* top-p 0.5: ids 1 (0.39 of the mass) and 3 (0.35) reach it, nothing else */
    struct st_sampler topp = {1.0f, 0, 0.5f};
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < 2000; i++) seen[st_sample(logits, 6, &topp, &rng, scratch)]++;
    CHECK(seen[1] > 0 && seen[3] > 0 && seen[0] + seen[2] + seen[4] + seen[5] == 0);
    /* full sampling reaches everything with the right frequencies (temperature 1) */
    struct st_sampler full = {1.0f, 0, 1.0f};
    memset(seen, 0, sizeof seen);
    int n = 20000;
    for (int i = 0; i < n; i++) seen[st_sample(logits, 6, &full, &rng, scratch)]++;
    double z = 0;
    for (int i = 0; i < 6; i++) z += exp(logits[i]);
    for (int i = 0; i < 6; i++)
        CHECKF(fabs(seen[i] / (double)n - exp(logits[i]) / z) < 0.015, "id %d", i);
    /* same seed, same draws */
    struct st_rng r1, r2;
    st_rng_seed(&r1, 7);
    st_rng_seed(&r2, 7);
    for (int i = 0; i < 20; i++)
        CHECK(st_sample(logits, 6, &full, &r1, scratch) == st_sample(logits, 6, &full, &r2, scratch));
}

static int json_ids(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    for (const cJSON *x = arr ? arr->child : NULL; x && n < cap; x = x->next) out[n++] = (int32_t)x->valueint;
    return n;
}

/* The real pretrained stories260K: greedy generation reproduces llama2.c's ids, logits and
 * cross-entropies match expected.json. */
TEST(stories260k) {
    char dir[1024], path[1200];
    snprintf(dir, sizeof dir, "%s/data/models/stories260K", test_shared_dir());
    snprintf(path, sizeof path, "%s/expected.json", dir);
    char *text;
    size_t len;
    struct st_error err;
    if (st_read_file(path, 16u << 20, &text, &len, &err))
        TEST_SKIP("%s is absent (the shared test data is not beside this checkout)", path);
    cJSON *root = cJSON_ParseWithLength(text, len);
    st_free(text);
    CHECK(root != NULL);
    if (!root) return;
    struct st_model m;
    enum st_status rc = st_model_load(&m, dir, &err);
    CHECKF(rc == ST_OK, "%s", err.msg);
    if (rc) {
        cJSON_Delete(root);
        return;
    }
    CHECK(m.n_params == 260032);
    int32_t prompt[600], want[600], got[600];
    const cJSON *cases = cJSON_GetObjectItem(root, "greedy");
    int ncase = 0;
    for (const cJSON *c = cases ? cases->child : NULL; c; c = c->next, ncase++) {
        int np = json_ids(cJSON_GetObjectItem(c, "prompt_ids"), prompt, 600);
        int nw = json_ids(cJSON_GetObjectItem(c, "generated_ids"), want, 600);
        struct st_gen_params gp = {.max_tokens = nw, .sampler = {0, 0, 1}, .seed = 0,
                                   .stop_at_eos = 0};
        size_t ng = 0;
        CHECK(st_model_generate(&m, prompt, (size_t)np, &gp, got, &ng, NULL, NULL, &err) == ST_OK);
        CHECK(ng == (size_t)nw);
        int first_bad = -1;
        for (int i = 0; i < nw && first_bad < 0; i++)
            if (got[i] != want[i]) first_bad = i;
        CHECKF(first_bad < 0, "greedy case %d differs at generated token %d", ncase, first_bad);
    }
    CHECK(ncase == 3);
    /* logits of prompt 0 vs run.c float32 (which agrees with float64 to 3.2e-5) */
    const cJSON *lp = cJSON_GetObjectItem(root, "logits_prompt0");
    int np = json_ids(cJSON_GetObjectItem(lp, "ids"), prompt, 600);
    struct st_acts a;
    CHECK(st_acts_init(&a, &m, 1, (size_t)np, 0, &err) == ST_OK);
    CHECK(st_model_forward(&m, &a, prompt, NULL, &err) == ST_OK);
    double worst = 0;
    int t = 0;
    for (const cJSON *row = cJSON_GetObjectItem(lp, "logits")->child; row; row = row->next, t++) {
        int v = 0;
        for (const cJSON *x = row->child; x; x = x->next, v++) {
            double d = fabs(a.logits[(size_t)t * 512 + (size_t)v] - x->valuedouble);
            if (d > worst) worst = d;
        }
    }
    st_acts_free(&a);
    printf("  stories260K logits vs run.c: max|diff| %.3g\n", worst);
    CHECKF(worst < 1e-4, "%g", worst);
    /* cross-entropy of the expected sequences (float64 reference; tolerance 1e-5 relative) */
    for (const cJSON *c = cJSON_GetObjectItem(root, "cross_entropy")->child; c; c = c->next) {
        int n = json_ids(cJSON_GetObjectItem(c, "ids"), prompt, 600);
        double want_ce = cJSON_GetObjectItem(c, "mean_ce_nats")->valuedouble;
        CHECK(st_acts_init(&a, &m, 1, (size_t)n, 0, &err) == ST_OK);
        double sum = 0;
        size_t cnt = 0;
        CHECK(st_model_score(&m, &a, prompt, NULL, (size_t)n, &sum, &cnt, &err) == ST_OK);
        st_acts_free(&a);
        CHECKF(fabs(sum / cnt - want_ce) < 1e-5 * want_ce + 1e-6, "CE %.6f vs %.6f", sum / cnt,
               want_ce);
    }
    st_model_free(&m);
    cJSON_Delete(root);
}

int main(void) {
    st_threads_set(2);
    RUN(golden_logits);
    RUN(kv_cache_matches_forward);
    RUN(sampling);
    RUN(stories260k);
    return test_finish();
}
