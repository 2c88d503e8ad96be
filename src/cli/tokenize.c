/* tokenize.c: `streamtune tokenize` and `streamtune detokenize`.
 * tokenize --model DIR (--text T | --file F|-) [--no-special] [--json]
 *   Each input line of F (or the one --text) is encoded. Human output: count, ids and tokens.
 *   --json: one JSON array of ids per input line, in order.
 * detokenize --model DIR [--ids 1,2,3 | --file F|-] [--skip-special] [--json]
 *   Each input line holds ids (a JSON array, or numbers separated by commas/spaces).
 *   --json: one JSON string per input line. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "streamtune/tokenizer.h"

static const char *tok_usage =
    "usage: streamtune tokenize --model DIR (--text TEXT | --file FILE|-) [--no-special] [--json]\n"
    "  encodes TEXT, or each line of FILE; --no-special skips BOS/EOS of the post-processor\n"
    "  --json prints one JSON array of ids per input line\n";
static const char *detok_usage =
    "usage: streamtune detokenize --model DIR (--ids 1,2,3 | --file FILE|-) [--skip-special] [--json]\n"
    "  each input line holds ids: a JSON array or numbers separated by commas or spaces\n"
    "  --json prints one JSON string per input line\n";

static void print_token_str(const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\n') fputs("\\n", stdout);
        else if (*p == '\t') fputs("\\t", stdout);
        else if (*p == '\r') fputs("\\r", stdout);
        else if (*p < 0x20) printf("\\x%02x", *p);
        else putchar(*p);
    }
}

static int encode_one(const struct st_tokenizer *t, const char *text, size_t len, int special,
                      int json, struct st_error *err) {
    struct st_ids ids = {0};
    if (st_tokenizer_encode(t, text, len, special, &ids, err)) return 1;
    if (json) {
        putchar('[');
        for (size_t i = 0; i < ids.n; i++) printf(i ? ", %d" : "%d", ids.ids[i]);
        puts("]");
    } else {
        printf("%zu tokens\n", ids.n);
        for (size_t i = 0; i < ids.n; i++) {
            printf("%8d  ", ids.ids[i]);
            print_token_str(st_tokenizer_id_to_token(t, ids.ids[i]));
            putchar('\n');
        }
    }
    st_ids_free(&ids);
    return 0;
}

static FILE *open_input(const char *path, struct st_error *err) {
    if (!strcmp(path, "-")) return stdin;
    FILE *f = fopen(path, "rb");
    if (!f) st_errorf(err, ST_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    return f;
}

int cmd_tokenize(int argc, char **argv) {
    const char *dir = NULL, *text = NULL, *file = NULL;
    int json = 0, special = 1;
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        const char *v;
        if ((v = cli_opt(argc, argv, &i, "--model", &missing))) dir = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--text", &missing))) text = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--file", &missing))) file = v;
        else if (missing) return cli_usage(tok_usage, "%s needs a value", argv[i]);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--no-special")) special = 0;
        else if (!strcmp(argv[i], "--help")) {
            fputs(tok_usage, stdout);
            return 0;
        } else return cli_usage(tok_usage, "tokenize: unknown option '%s'", argv[i]);
    }
    if (!dir) return cli_usage(tok_usage, "tokenize: --model DIR is required");
    if (!text == !file) return cli_usage(tok_usage, "tokenize: give exactly one of --text or --file");
    struct st_error err = {0};
    struct st_tokenizer *t;
    if (st_tokenizer_load(&t, dir, &err)) return cli_fail(json, &err);
    int rc = 0;
    if (text) {
        rc = encode_one(t, text, strlen(text), special, json, &err);
    } else {
        FILE *f = open_input(file, &err);
        if (!f) rc = 1;
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        while (!rc && f && (n = getline(&line, &cap, f)) >= 0) {
            size_t k = (size_t)n;
            if (k && line[k - 1] == '\n') k--;
            if (k && line[k - 1] == '\r') k--;
            rc = encode_one(t, line, k, special, json, &err);
        }
        free(line);
        if (f && f != stdin) fclose(f);
    }
    st_tokenizer_free(t);
    return rc ? cli_fail(json, &err) : 0;
}

/* Parse "[1, 2]" or "1,2 3" into ids. */
static int parse_ids_line(const char *s, int32_t **ids, size_t *n, size_t *cap) {
    *n = 0;
    const char *p = s;
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '[' || *p == ']' || *p == '\t' || *p == '\r') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) return 1;
        if (*n == *cap) {
            *cap = *cap ? *cap * 2 : 64;
            int32_t *q = st_realloc(*ids, *cap * sizeof *q);
            if (!q) return 1;
            *ids = q;
        }
        (*ids)[(*n)++] = (int32_t)v;
        p = end;
    }
    return 0;
}

static int decode_line(const struct st_tokenizer *t, const char *line, int skip, int json,
                       const char *where, struct st_error *err) {
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    if (parse_ids_line(line, &ids, &n, &cap)) {
        st_free(ids);
        st_errorf(err, ST_ERR_FORMAT, "%s: expected token ids, got '%.60s'", where, line);
        return 1;
    }
    char *text;
    size_t len;
    enum st_status rc = st_tokenizer_decode(t, ids, n, skip, &text, &len, err);
    st_free(ids);
    if (rc) {
        st_error_prefix(err, "%s: ", where);
        return 1;
    }
    if (json) {
        cli_json_string_n(stdout, text, len);
        putchar('\n');
    } else {
        fwrite(text, 1, len, stdout);
        putchar('\n');
    }
    st_free(text);
    return 0;
}

int cmd_detokenize(int argc, char **argv) {
    const char *dir = NULL, *ids = NULL, *file = NULL;
    int json = 0, skip = 0;
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        const char *v;
        if ((v = cli_opt(argc, argv, &i, "--model", &missing))) dir = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--ids", &missing))) ids = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--file", &missing))) file = v;
        else if (missing) return cli_usage(detok_usage, "%s needs a value", argv[i]);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--skip-special")) skip = 1;
        else if (!strcmp(argv[i], "--help")) {
            fputs(detok_usage, stdout);
            return 0;
        } else return cli_usage(detok_usage, "detokenize: unknown option '%s'", argv[i]);
    }
    if (!dir) return cli_usage(detok_usage, "detokenize: --model DIR is required");
    if (ids && file) return cli_usage(detok_usage, "detokenize: give --ids or --file, not both");
    if (ids) { /* a malformed --ids is a usage error (exit 2), caught before any loading */
        int32_t *chk = NULL;
        size_t cn = 0, cc = 0;
        int bad = parse_ids_line(ids, &chk, &cn, &cc);
        st_free(chk);
        if (bad) return cli_usage(detok_usage, "--ids: expected token ids, got '%.60s'", ids);
    }
    struct st_error err = {0};
    struct st_tokenizer *t;
    if (st_tokenizer_load(&t, dir, &err)) return cli_fail(json, &err);
    int rc = 0;
    if (ids) {
        rc = decode_line(t, ids, skip, json, "--ids", &err);
    } else {
        const char *path = file ? file : "-";
        FILE *f = open_input(path, &err);
        if (!f) rc = 1;
        char *line = NULL, where[256];
        size_t cap = 0;
        long lineno = 0;
        ssize_t n;
        while (!rc && f && (n = getline(&line, &cap, f)) >= 0) {
            lineno++;
            if (n && line[n - 1] == '\n') line[n - 1] = '\0';
            snprintf(where, sizeof where, "%s:%ld", !strcmp(path, "-") ? "stdin" : path, lineno);
            rc = decode_line(t, line, skip, json, where, &err);
        }
        free(line);
        if (f && f != stdin) fclose(f);
    }
    st_tokenizer_free(t);
    return rc ? cli_fail(json, &err) : 0;
}
