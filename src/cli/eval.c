/* eval.c: `streamtune eval --model DIR --data FILE.jsonl [--json]`: mean next-token cross-entropy
 * over every predicted token of every record ({"ids": [...]} per line), and perplexity.
 * Two passes over the file: the first validates every record and finds the longest, so the
 * activations are planned once; the second packs records into rows of up to PACK_TOKENS (a
 * longer record alone) and scores them, several rows at a time on as many threads (see
 * score_rows). Memory does not grow with the file. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#ifdef _OPENMP
#include <omp.h>
#endif
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
    long z = st_json_nul_escape(line, len);
    if (z >= 0)
        return st_errorf(err, ST_ERR_FORMAT, "%s:%ld: byte %ld: a string holds \\u0000 (a NUL "
                         "character), which is not supported", path, lineno, z);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(line, len, &end, 0);
    while (root && end < line + len && (*end == ' ' || *end == '\t' || *end == '\r')) end++;
    if (root && end != line + len) {
        cJSON_Delete(root);
        return st_errorf(err, ST_ERR_FORMAT, "%s:%ld: text after the JSON object at byte %ld",
                         path, lineno, (long)(end - line));
    }
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

/* Rows are scored MAX_WORKERS at most at a time, one per thread, each on its own model view
 * (model.h) and activations, when the base model's matmuls are streamtune's own kernels (BF16 or
 * packed F32 panels; an adapter's small BLAS calls then run on one thread each), the --threads
 * allow it and the extra activations fit WORKER_BYTES. A forward of a few hundred rows split over
 * threads synchronises them some 200 times (every GEMM, norm and attention call), which left a
 * core idle ~8% of the time (bench/NOTES.md); rows on separate threads never wait for each
 * other. Each row's loss is the same on any thread (the kernels give the same result for any
 * thread count), and the sums are added in row order, so the result does not depend on the
 * thread count either. A batch of one row, or a longer record, runs on all threads at once.
 * The extra workers' memory is at most WORKER_BYTES, and at most an eighth of the RAM; when a row
 * per thread does not fit, every row runs on all threads at once. */
#define MAX_WORKERS 64
#define WORKER_BYTES ((size_t)1 << 30)

struct row {
    int32_t *ids, *seg;
    size_t used, packed; /* tokens, records */
    double sum;          /* its scoring: loss sum, predicted tokens, status */
    size_t count;
    enum st_status rc;
    struct st_error err;
};

struct scorer {
    int nw; /* workers: row slots, model views and activations (slot 0: the model and the main
             * activations, planned for the longest record) */
    struct row rows[MAX_WORKERS];
    struct st_model views[MAX_WORKERS], *m[MAX_WORKERS];
    struct st_acts acts[MAX_WORKERS], *a[MAX_WORKERS];
    double sum, t0;
    size_t count, done;
    struct cli_progress prog;
};

static int workers(const struct st_model *m, size_t pack) {
#ifdef _OPENMP
    int t = st_threads_get();
    if (t < 2 || !(m->bf16 || m->f32_panels)) return 1; /* a quantised base too: each row's
                                                          * view dequantises its own tiles */
    int rank = m->lora ? m->lora->cfg.rank : 0;
    size_t per = st_acts_bytes(&m->cfg, 1, pack, ST_ACTS_INFER | ST_ACTS_CHUNKED_HEAD, rank);
    if (per == SIZE_MAX) return 1; /* too big to plan */
    per += m->bscratch_bytes + m->qscratch_bytes;
    size_t budget = WORKER_BYTES;
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    if (pages > 0 && psz > 0 && (size_t)pages / 8 * (size_t)psz < budget)
        budget = (size_t)pages / 8 * (size_t)psz;
    /* a row per thread, or none: fewer workers than threads would leave threads idle */
    size_t fit = 1 + budget / (per ? per : 1);
    return (size_t)t <= fit && t <= MAX_WORKERS ? t : 1;
#else
    (void)m, (void)pack;
    return 1;
#endif
}

/* Score rows [first, first + n) (row first + i on worker i; with first > 0, n is 1 and it runs
 * on worker 0), then add their losses in row order and advance the progress. */
static enum st_status score_rows(struct scorer *sc, size_t first, size_t n,
                                 struct st_error *err) {
    if (n == 0) return ST_OK;
    struct row *rows = sc->rows + first;
    if (n == 1) {
        rows[0].rc = st_model_score(sc->m[0], sc->a[0], rows[0].ids, rows[0].seg, rows[0].used,
                                    &rows[0].sum, &rows[0].count, &rows[0].err);
    } else {
        st_blas_threads(1); /* an adapter's BLAS calls: on each row's own thread */
        /* each row's kernels on its own thread, plus the threads of the rows done first (a
         * shorter row, a slower core: core.h, st_share) */
        struct st_share share = {0};
#ifdef _OPENMP
        int levels = omp_get_max_active_levels();
        omp_set_max_active_levels(2);
#pragma omp parallel for num_threads((int)n) schedule(static, 1)
#endif
        for (size_t i = 0; i < n; i++) {
            st_share_join(&share);
            rows[i].rc = st_model_score(sc->m[i], sc->a[i], rows[i].ids, rows[i].seg,
                                        rows[i].used, &rows[i].sum, &rows[i].count, &rows[i].err);
            st_share_leave();
        }
#ifdef _OPENMP
        omp_set_max_active_levels(levels);
#endif
        st_blas_threads(st_threads_get());
    }
    enum st_status rc = ST_OK;
    for (size_t i = 0; i < n; i++) {
        if (!rc && rows[i].rc) {
            rc = rows[i].rc;
            *err = rows[i].err;
        }
        sc->sum += rows[i].sum;
        sc->count += rows[i].count;
        sc->done += rows[i].packed;
        rows[i].used = rows[i].packed = 0;
        rows[i].sum = 0, rows[i].count = 0;
    }
    char extra[64];
    snprintf(extra, sizeof extra, "%.0f tok/s", (double)sc->count / (st_time_now() - sc->t0 + 1e-9));
    cli_progress_update(&sc->prog, (double)sc->done, extra);
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
     * attention stays within the record, so each scores as if alone), a forward per row: short
     * records share one forward instead of one small one each. A longer record is a row of its
     * own (attention does not skip other segments' keys, so rows stay short). */
    size_t pack = (size_t)m.cfg.max_seq_len;
    if (pack > PACK_TOKENS) pack = PACK_TOKENS;
    size_t T = maxlen > pack ? maxlen : pack;
    if (T < 2) T = 2;
    /* the head and the loss go head_rows rows at a time (model.h: at most 256 MiB of logits) */
    if (!rc) rc = st_acts_init(&a, &m, 1, T, ST_ACTS_INFER | ST_ACTS_CHUNKED_HEAD, &err);
    struct scorer *sc = st_calloc(1, sizeof *sc);
    if (!sc && !rc) rc = st_errorf(&err, ST_ERR_NOMEM, "out of memory");
    if (sc) sc->nw = rc ? 0 : workers(&m, pack);
    for (int w = 0; !rc && w < sc->nw; w++) {
        if (!(sc->rows[w].ids = st_malloc(T * sizeof(int32_t))) ||
            !(sc->rows[w].seg = st_malloc(T * sizeof(int32_t))))
            rc = st_errorf(&err, ST_ERR_NOMEM, "out of memory");
        if (!rc && w > 0 && (rc = st_model_view(&sc->views[w], &m, &err)) == ST_OK)
            rc = st_acts_init(&sc->acts[w], &sc->views[w], 1, pack,
                              ST_ACTS_INFER | ST_ACTS_CHUNKED_HEAD, &err);
        sc->m[w] = w ? &sc->views[w] : &m;
        sc->a[w] = w ? &sc->acts[w] : &a;
        if (rc && w > 0) { /* no memory for one more worker: every row on all threads (fewer
                              * workers than threads would leave threads idle) */
            st_log(ST_LOG_WARN, "eval: a row per thread does not fit (%s): one row at a time",
                   err.msg);
            for (int v = 1; v <= w; v++) {
                st_free(sc->rows[v].ids);
                st_free(sc->rows[v].seg);
                if (sc->views[v].view) {
                    st_acts_free(&sc->acts[v]);
                    st_model_free(&sc->views[v]);
                }
                memset(&sc->rows[v], 0, sizeof sc->rows[v]);
            }
            sc->nw = 1;
            rc = ST_OK;
            memset(&err, 0, sizeof err);
            break;
        }
    }
    if (!rc) st_log(ST_LOG_DEBUG, "eval: %d row%s at a time", sc->nw, sc->nw > 1 ? "s" : "");
    /* pass 2: score */
    if (!rc) {
        rewind(f);
        lineno = 0;
        size_t nb = 0; /* rows[0..nb) are complete, rows[nb] is being filled */
        cli_progress_start(&sc->prog, "eval", (double)records);
        sc->t0 = st_time_now();
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
                if (!rc && n > T)
                    rc = st_errorf(&err, ST_ERR_FORMAT, "%s:%ld: record has %zu ids: the file "
                                   "changed while it was read", data, lineno, n);
                if (rc) break;
            }
            struct row *r = &sc->rows[nb];
            if (r->packed && (len < 0 || r->used + n > pack)) { /* rows[nb] is complete */
                if (r->used > pack) { /* a long record: the rows before it, then it alone on the
                                       * main activations (planned for the longest) */
                    rc = score_rows(sc, 0, nb, &err);
                    if (!rc) rc = score_rows(sc, nb, 1, &err);
                    nb = 0;
                } else if (++nb == (size_t)sc->nw) {
                    rc = score_rows(sc, 0, nb, &err);
                    nb = 0;
                }
                if (rc) break;
            }
            if (len < 0) {
                rc = score_rows(sc, 0, nb, &err);
                break;
            }
            r = &sc->rows[nb];
            for (size_t i = 0; i < n; i++) {
                r->ids[r->used + i] = ids[i];
                r->seg[r->used + i] = (int32_t)r->packed;
            }
            r->used += n;
            r->packed++;
        }
        cli_progress_end(&sc->prog);
        if (!rc && ferror(f)) rc = st_errorf(&err, ST_ERR_IO, "%s: read error", data);
        secs = st_time_now() - sc->t0;
    }
    for (int w = 0; sc && w < sc->nw; w++) {
        st_free(sc->rows[w].ids);
        st_free(sc->rows[w].seg);
        if (w > 0 && sc->views[w].view) {
            st_acts_free(&sc->acts[w]);
            st_model_free(&sc->views[w]);
        }
    }
    if (sc) sum = sc->sum, count = sc->count;
    st_free(sc);
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
    if (!isfinite(loss))
        st_log(ST_LOG_WARN, "eval: the loss is not finite (%g): the model's weights overflow or "
               "are damaged", loss);
    char lb[40], pb[40];
    if (json)
        printf("{\"loss\": %s, \"ppl\": %s, \"tokens\": %zu, \"records\": %zu, "
               "\"seconds\": %.4f, \"tokens_per_s\": %.1f}\n",
               st_json_num(lb, sizeof lb, "%.6f", loss), st_json_num(pb, sizeof pb, "%.6f", exp(loss)),
               count, records, secs, secs > 0 ? (double)count / secs : 0.0);
    else
        printf("loss %.4f  ppl %.4f  over %zu predicted tokens in %zu records\n", loss, exp(loss),
               count, records);
    return 0;
}
