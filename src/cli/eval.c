/* eval.c: `streamtune eval --model DIR --data FILE.jsonl [--json]`: mean next-token cross-entropy
 * over every predicted token of every record ({"ids": [...]} per line), and perplexity.
 * Two passes over the file: the first validates every record and finds the longest, so the
 * activations are planned once; the second packs records into rows of up to PACK_TOKENS (a
 * longer record alone) and scores them a row at a time. Memory does not grow with the file. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "streamtune/tokenizer.h"

static const char *usage =
    "usage: streamtune eval --model DIR [--adapter DIR] --data FILE.jsonl [--json]\n"
    "  each line of FILE.jsonl is {\"ids\": [token ids]} or {\"text\": \"...\"} (tokenized with the\n"
    "  model's tokenizer.json, BOS added as its post-processor says); blank lines are skipped\n"
    CLI_LOAD_HELP;

#define MAX_LINE (64u << 20)
/* records are packed into rows of up to this many tokens: GEMMs of 512 rows run near the
 * kernel's peak, and the weights stream once per row, not per record */
#define PACK_TOKENS 512u

/* Parse one record's ids into *ids (growing *cap). */
static enum st_status parse_ids(const char *line, size_t len, const char *path, long lineno,
                                int vocab, const struct st_tokenizer *tok, const char *dir,
                                int32_t **ids, size_t *cap, size_t *n, struct st_error *err) {
    cJSON *root = cJSON_ParseWithLength(line, len);
    if (!root) return st_errorf(err, ST_ERR_FORMAT, "%s:%ld: not valid JSON", path, lineno);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "ids");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(root, "text");
    enum st_status rc = ST_OK;
    if (!cJSON_IsArray(arr) && cJSON_IsString(text)) {
        if (!tok) {
            rc = st_errorf(err, ST_ERR_FORMAT,
                           "%s:%ld: a text record needs %s/tokenizer.json, which could not be "
                           "loaded", path, lineno, dir);
            goto done;
        }
        struct st_ids v = {0};
        rc = st_tokenizer_encode(tok, text->valuestring, strlen(text->valuestring), 1, &v, err);
        if (!rc && v.n > *cap) {
            int32_t *p = st_realloc(*ids, v.n * sizeof *p);
            if (!p) rc = st_errorf(err, ST_ERR_NOMEM, "%s:%ld: out of memory", path, lineno);
            else {
                *ids = p;
                *cap = v.n;
            }
        }
        for (size_t i = 0; !rc && i < v.n; i++) {
            if (v.ids[i] >= vocab)
                rc = st_errorf(err, ST_ERR_FORMAT, "%s:%ld: the tokenizer gives id %d, outside the "
                               "model's vocabulary of %d", path, lineno, v.ids[i], vocab);
            else (*ids)[i] = v.ids[i];
        }
        *n = v.n;
        st_ids_free(&v);
        goto done;
    }
    if (!cJSON_IsArray(arr)) {
        rc = st_errorf(err, ST_ERR_FORMAT,
                       "%s:%ld: record has neither an \"ids\" array nor a \"text\" string", path,
                       lineno);
        goto done;
    }
    size_t k = 0, count = (size_t)cJSON_GetArraySize(arr);
    if (count > *cap) {
        int32_t *p = st_realloc(*ids, count * sizeof *p);
        if (!p) {
            rc = st_errorf(err, ST_ERR_NOMEM, "%s:%ld: out of memory", path, lineno);
            goto done;
        }
        *ids = p;
        *cap = count;
    }
    for (const cJSON *x = arr->child; x; x = x->next, k++) {
        if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble < 0 ||
            x->valuedouble >= vocab) {
            rc = st_errorf(err, ST_ERR_FORMAT,
                           "%s:%ld: ids[%zu] is not a token id in [0, %d)", path, lineno, k, vocab);
            goto done;
        }
        (*ids)[k] = (int32_t)x->valuedouble;
    }
    *n = count;
done:
    cJSON_Delete(root);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    const char *dir = NULL, *data = NULL, *adapter = NULL;
    int json = 0, q;
    struct st_model_load_options lo;
    st_model_load_options_init(&lo);
    lo.pack_f32 = 1; /* F32 scoring through packed panels (--compute f32-blas: BLAS) */
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        const char *v;
        if ((v = cli_opt(argc, argv, &i, "--model", &missing))) dir = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--data", &missing))) data = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--adapter", &missing))) adapter = v;
        else if (missing) return cli_usage(usage, "%s needs a value", argv[i]);
        else if ((q = cli_load_flag(argc, argv, &i, &lo)) != 0) {
            if (q < 0) return 2;
        } else if (strcmp(argv[i], "--json") == 0) json = 1;
        else if (strcmp(argv[i], "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        } else return cli_usage(usage, "eval: unknown option '%s'", argv[i]);
    }
    if (!dir || !data) return cli_usage(usage, "eval: --model DIR and --data FILE are required");

    struct st_error err = {0};
    struct st_model m;
    if (st_model_load_ex(&m, dir, &lo, &err)) return cli_fail(json, &err);
    struct st_lora lora = {0};
    if (adapter) {
        if (st_lora_load(&lora, &m.cfg, adapter, &err)) {
            st_model_free(&m);
            return cli_fail(json, &err);
        }
        m.lora = &lora;
    }
    struct st_tokenizer *tok = NULL;
    struct st_error terr;
    if (st_tokenizer_load(&tok, dir, &terr)) tok = NULL; /* only text records need it */
    FILE *f = fopen(data, "rb");
    if (!f) {
        st_errorf(&err, ST_ERR_IO, "%s: cannot open: %s", data, strerror(errno));
        st_tokenizer_free(tok);
        st_lora_free(&lora);
        st_model_free(&m);
        return cli_fail(json, &err);
    }
    char *line = NULL;
    size_t lcap = 0, icap = 0, n = 0, maxlen = 0, records = 0;
    int32_t *ids = NULL;
    ssize_t len;
    long lineno = 0;
    enum st_status rc = ST_OK;
    /* pass 1: validate, find the longest record */
    while (!rc && (len = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        if ((size_t)len > MAX_LINE) {
            rc = st_errorf(&err, ST_ERR_FORMAT, "%s:%ld: line longer than %u bytes", data, lineno,
                           MAX_LINE);
            break;
        }
        size_t k = (size_t)len;
        while (k && (line[k - 1] == '\n' || line[k - 1] == '\r' || line[k - 1] == ' ')) k--;
        if (k == 0) continue;
        rc = parse_ids(line, k, data, lineno, m.cfg.vocab_size, tok, dir, &ids, &icap, &n, &err);
        if (rc) break;
        if (n > (size_t)m.cfg.max_seq_len)
            rc = st_errorf(&err, ST_ERR_FORMAT,
                           "%s:%ld: record has %zu ids, more than the model's context of %d", data,
                           lineno, n, m.cfg.max_seq_len);
        if (n > maxlen) maxlen = n;
        records++;
    }
    if (!rc && ferror(f)) rc = st_errorf(&err, ST_ERR_IO, "%s: read error", data);
    if (!rc && records == 0) rc = st_errorf(&err, ST_ERR_FORMAT, "%s: no records", data);
    double sum = 0, secs = 0;
    size_t count = 0;
    struct st_acts a = {0};
    /* Records are packed into rows of up to `pack` tokens (a segment each: positions restart and
     * attention stays within the record, so each scores as if alone) and scored a row at a
     * time: short records share one forward instead of one small one each. A longer record is
     * a row of its own (attention does not skip other segments' keys, so rows stay short). */
    size_t pack = (size_t)m.cfg.max_seq_len;
    if (pack > PACK_TOKENS) pack = PACK_TOKENS;
    size_t T = maxlen > pack ? maxlen : pack;
    if (T < 2) T = 2;
    int32_t *row = NULL, *seg = NULL;
    /* the head and the loss go head_rows rows at a time (model.h: at most 256 MiB of logits) */
    if (!rc) rc = st_acts_init(&a, &m, 1, T, ST_ACTS_INFER | ST_ACTS_CHUNKED_HEAD, &err);
    if (!rc && (!(row = st_malloc(T * sizeof *row)) || !(seg = st_malloc(T * sizeof *seg))))
        rc = st_errorf(&err, ST_ERR_NOMEM, "out of memory");
    /* pass 2: score */
    if (!rc) {
        rewind(f);
        lineno = 0;
        size_t done = 0, used = 0, packed = 0;
        struct cli_progress prog;
        cli_progress_start(&prog, "eval", (double)records);
        double t0 = st_time_now();
        for (;;) {
            len = getline(&line, &lcap, f);
            n = 0;
            if (len >= 0) {
                lineno++;
                size_t k = (size_t)len;
                while (k && (line[k - 1] == '\n' || line[k - 1] == '\r' || line[k - 1] == ' ')) k--;
                if (k == 0) continue;
                rc = parse_ids(line, k, data, lineno, m.cfg.vocab_size, tok, dir, &ids, &icap, &n,
                               &err);
                if (rc) break;
            }
            if (packed && (len < 0 || used + n > pack)) { /* score the row */
                rc = st_model_score(&m, &a, row, seg, used, &sum, &count, &err);
                if (rc) break;
                done += packed;
                used = packed = 0;
                char extra[64];
                snprintf(extra, sizeof extra, "%.0f tok/s",
                         (double)count / (st_time_now() - t0 + 1e-9));
                cli_progress_update(&prog, (double)done, extra);
            }
            if (len < 0) break;
            for (size_t i = 0; i < n; i++) {
                row[used + i] = ids[i];
                seg[used + i] = (int32_t)packed;
            }
            used += n;
            packed++;
        }
        cli_progress_end(&prog);
        if (!rc && ferror(f)) rc = st_errorf(&err, ST_ERR_IO, "%s: read error", data);
        secs = st_time_now() - t0;
    }
    st_free(row);
    st_free(seg);
    st_acts_free(&a);
    free(line);
    st_free(ids);
    fclose(f);
    st_tokenizer_free(tok);
    st_lora_free(&lora);
    st_model_free(&m);
    if (rc) return cli_fail(json, &err);
    if (count == 0) {
        st_errorf(&err, ST_ERR_FORMAT, "%s: no record has two or more ids, nothing to predict",
                  data);
        return cli_fail(json, &err);
    }
    double loss = sum / (double)count;
    if (json)
        printf("{\"loss\": %.6f, \"ppl\": %.6f, \"tokens\": %zu, \"records\": %zu, "
               "\"seconds\": %.4f, \"tokens_per_s\": %.1f}\n",
               loss, exp(loss), count, records, secs, secs > 0 ? (double)count / secs : 0.0);
    else
        printf("loss %.4f  ppl %.4f  over %zu predicted tokens in %zu records\n", loss, exp(loss),
               count, records);
    return 0;
}
