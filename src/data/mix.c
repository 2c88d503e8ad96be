/* mix.c: weighted mixing of several decoded streams (--data NAME=URL:WEIGHT ...).
 *
 * DESIGN: each source is a full st_decoder (its own stream, I/O, parse and decode threads and
 * memory budget), so every source prefetches on its own and a slow one only delays the samples
 * drawn from it. The order is a pure function of the seed: next() draws u from the mix's st_rng
 * and takes the first source whose cumulative normalised weight exceeds u. Sources cycle through
 * their own epochs (their streams have no epoch limit); the mix's epoch ends when the first
 * source ends one (ST_MIX_STOP_FIRST) or when all have ended one (ST_MIX_STOP_ALL). The state is
 * the rng, the mix epoch, the per-source "ended" flags and each decoder's own record. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/internal.h"
#include "streamtune/decode.h"

#define MIX_MAX_SOURCES 64
#define MIX_MIN_BUDGET ((size_t)4 << 20)

struct st_mix {
    int n;
    struct st_decoder **dec;
    char **names;
    double *weights, *cum;
    int *ended;
    uint64_t *counts;
    struct st_rng rng;
    int64_t epoch, end_epoch;
    enum st_mix_stop stop;
    int failed, finished;
    struct st_error fail_err;
};

enum st_status st_mix_source_parse(const char *spec, struct st_mix_source *out, char **storage,
                                   struct st_error *err) {
    memset(out, 0, sizeof *out);
    *storage = NULL;
    const char *eq = strchr(spec, '=');
    const char *colon = strrchr(spec, ':');
    if (!eq || eq == spec || !colon || colon < eq + 2)
        return st_errorf(err, ST_ERR_ARG, "--data '%s': expected NAME=URL:WEIGHT", spec);
    for (const char *p = spec; p < eq; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return st_errorf(err, ST_ERR_ARG,
                             "--data '%s': the name may hold letters, digits, '_', '-', '.'", spec);
    }
    double w;
    if (st_parse_f64(colon + 1, &w) || !(w > 0) || !isfinite(w))
        return st_errorf(err, ST_ERR_ARG,
                         "--data '%s': the weight after the last ':' must be a positive number",
                         spec);
    size_t n = strlen(spec);
    char *s = st_malloc(n + 1);
    if (!s) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    memcpy(s, spec, n + 1);
    s[eq - spec] = '\0';
    s[colon - spec] = '\0';
    out->name = s;
    out->url = s + (eq - spec) + 1;
    out->weight = w;
    *storage = s;
    return ST_OK;
}

void st_mix_close(struct st_mix *m) {
    if (!m) return;
    for (int i = 0; i < m->n; i++) {
        if (m->dec) st_decoder_close(m->dec[i]);
        if (m->names) st_free(m->names[i]);
    }
    st_free(m->dec);
    st_free(m->names);
    st_free(m->weights);
    st_free(m->cum);
    st_free(m->ended);
    st_free(m->counts);
    st_free(m);
}

static int hex64(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsString(v) || strlen(v->valuestring) != 16) return 1;
    char *end;
    *out = strtoull(v->valuestring, &end, 16);
    return *end != '\0';
}

/* Fill m's rng/epoch/flags from a mix record and return each source's record (strings to
 * st_free) in states[]. */
static enum st_status parse_mix_state(struct st_mix *m, const char *text, char **states,
                                      struct st_error *err) {
    cJSON *root = cJSON_Parse(text);
    const char *bad = NULL;
    const cJSON *names = root ? cJSON_GetObjectItemCaseSensitive(root, "names") : NULL;
    const cJSON *rng = root ? cJSON_GetObjectItemCaseSensitive(root, "rng") : NULL;
    const cJSON *ended = root ? cJSON_GetObjectItemCaseSensitive(root, "ended") : NULL;
    const cJSON *src = root ? cJSON_GetObjectItemCaseSensitive(root, "sources") : NULL;
    const cJSON *ep = root ? cJSON_GetObjectItemCaseSensitive(root, "epoch") : NULL;
    if (!root || !cJSON_GetObjectItemCaseSensitive(root, "streamtune_mix")) {
        bad = "not a mix record (written by a run with --data NAME=URL:WEIGHT)";
        goto out;
    }
    if (!cJSON_IsArray(names) || cJSON_GetArraySize(names) != m->n || !cJSON_IsArray(src) ||
        cJSON_GetArraySize(src) != m->n || !cJSON_IsArray(ended) ||
        cJSON_GetArraySize(ended) != m->n || !cJSON_IsArray(rng) || cJSON_GetArraySize(rng) != 4 ||
        !cJSON_IsNumber(ep) || ep->valuedouble < 0) {
        bad = "malformed";
        goto out;
    }
    for (int i = 0; i < m->n; i++) {
        const cJSON *nm = cJSON_GetArrayItem(names, i);
        if (!cJSON_IsString(nm) || strcmp(nm->valuestring, m->names[i]) != 0) {
            bad = "it was written for other sources (names and order must match)";
            goto out;
        }
    }
    for (int i = 0; i < 4; i++)
        if (hex64(cJSON_GetArrayItem(rng, i), &m->rng.s[i])) {
            bad = "bad rng";
            goto out;
        }
    m->epoch = (int64_t)ep->valuedouble;
    for (int i = 0; i < m->n; i++) {
        m->ended[i] = cJSON_IsTrue(cJSON_GetArrayItem(ended, i)) ||
                      (cJSON_IsNumber(cJSON_GetArrayItem(ended, i)) &&
                       cJSON_GetArrayItem(ended, i)->valuedouble != 0);
        char *s = cJSON_PrintUnformatted(cJSON_GetArrayItem(src, i));
        if (!s) {
            bad = "out of memory";
            goto out;
        }
        states[i] = st_strdup(s);
        cJSON_free(s);
        if (!states[i]) {
            bad = "out of memory";
            goto out;
        }
    }
out:
    cJSON_Delete(root);
    if (bad) return st_errorf(err, ST_ERR_FORMAT, "mix resume state: %s", bad);
    return ST_OK;
}

enum st_status st_mix_open(struct st_mix **out, const struct st_stream_options *base,
                           const struct st_decode_options *o, const struct st_mix_source *src,
                           int n_sources, enum st_mix_stop stop, struct st_error *err) {
    *out = NULL;
    if (n_sources < 1 || n_sources > MIX_MAX_SOURCES)
        return st_errorf(err, ST_ERR_ARG, "a mix needs 1 to %d sources", MIX_MAX_SOURCES);
    size_t fixed = 0;
    int n_share = 0;
    double wsum = 0;
    for (int i = 0; i < n_sources; i++) {
        if (!src[i].name || !src[i].url || !(src[i].weight > 0) || !isfinite(src[i].weight))
            return st_errorf(err, ST_ERR_ARG, "mix source %d: needs a name, a URL and a weight > 0",
                             i);
        for (int j = 0; j < i; j++)
            if (!strcmp(src[i].name, src[j].name))
                return st_errorf(err, ST_ERR_ARG, "mix: two sources are called '%s'", src[i].name);
        if (src[i].memory_budget)
            fixed += src[i].memory_budget;
        else
            n_share++;
        wsum += src[i].weight;
    }
    size_t share = 0;
    if (n_share) {
        if (fixed >= base->memory_budget ||
            (base->memory_budget - fixed) / (size_t)n_share < MIX_MIN_BUDGET)
            return st_errorf(err, ST_ERR_ARG,
                             "mix: --stream-memory %zu MiB leaves less than %zu MiB for each of "
                             "%d sources without their own budget; raise --stream-memory",
                             base->memory_budget >> 20, MIX_MIN_BUDGET >> 20, n_share);
        share = (base->memory_budget - fixed) / (size_t)n_share;
    }
    struct st_mix *m = st_calloc(1, sizeof *m);
    if (!m) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    m->n = n_sources;
    m->stop = stop;
    m->dec = st_calloc((size_t)n_sources, sizeof *m->dec);
    m->names = st_calloc((size_t)n_sources, sizeof *m->names);
    m->weights = st_calloc((size_t)n_sources, sizeof *m->weights);
    m->cum = st_calloc((size_t)n_sources, sizeof *m->cum);
    m->ended = st_calloc((size_t)n_sources, sizeof *m->ended);
    m->counts = st_calloc((size_t)n_sources, sizeof *m->counts);
    char **states = st_calloc((size_t)n_sources, sizeof *states);
    enum st_status rc = ST_OK;
    if (!m->dec || !m->names || !m->weights || !m->cum || !m->ended || !m->counts || !states) {
        rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
        goto done;
    }
    double acc = 0;
    for (int i = 0; i < n_sources; i++) {
        if (!(m->names[i] = st_strdup(src[i].name))) {
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            goto done;
        }
        m->weights[i] = src[i].weight;
        acc += src[i].weight / wsum;
        m->cum[i] = acc;
    }
    m->cum[n_sources - 1] = 1.0; /* no rounding gap at the top */
    st_rng_seed(&m->rng, seed_mix(seed_mix(base->seed, 0x6d697873ULL), (uint64_t)n_sources));
    m->epoch = base->epoch;
    m->end_epoch = base->epochs > 0 ? base->epoch + base->epochs : INT64_MAX;
    if (base->resume_state && (rc = parse_mix_state(m, base->resume_state, states, err))) goto done;
    if (m->epoch >= m->end_epoch) m->finished = 1;
    for (int i = 0; i < n_sources; i++) {
        struct st_stream_options so = *base;
        so.url = src[i].url;
        so.urls = NULL;
        so.n_urls = 0;
        so.memory_budget = src[i].memory_budget ? src[i].memory_budget : share;
        so.epochs = 0;
        so.resume_state = states[i];
        if ((rc = st_decoder_open(&m->dec[i], &so, o, err))) {
            st_error_prefix(err, "source '%s': ", src[i].name);
            goto done;
        }
    }
done:
    for (int i = 0; states && i < n_sources; i++)
        st_free(states[i]);
    st_free(states);
    if (rc) {
        st_mix_close(m);
        return rc;
    }
    *out = m;
    return ST_OK;
}

enum st_status st_mix_next(struct st_mix *m, struct st_decoded_sample *out, struct st_error *err) {
    if (m->failed) {
        if (err) *err = m->fail_err;
        return m->fail_err.code ? m->fail_err.code : ST_ERR_IO;
    }
    if (m->finished) return ST_STREAM_END;
    for (;;) {
        double u = st_rng_uniform(&m->rng);
        int j = 0;
        while (j < m->n - 1 && u >= m->cum[j])
            j++;
        struct st_error e = {0};
        enum st_status rc = st_decoder_next(m->dec[j], out, &e);
        if (rc == ST_OK) {
            out->source = j;
            out->source_name = m->names[j];
            m->counts[j]++;
            return ST_OK;
        }
        if (rc != ST_STREAM_END) {
            m->failed = 1;
            m->fail_err = e;
            m->fail_err.code = rc;
            st_error_prefix(&m->fail_err, "source '%s': ", m->names[j]);
            if (err) *err = m->fail_err;
            return rc;
        }
        /* source j ended an epoch; its next call starts the following one */
        m->ended[j] = 1;
        int all = 1;
        for (int i = 0; i < m->n; i++)
            all &= m->ended[i];
        if (m->stop == ST_MIX_STOP_FIRST || all) {
            for (int i = 0; i < m->n; i++)
                m->ended[i] = 0;
            m->epoch++;
            if (m->epoch >= m->end_epoch) m->finished = 1;
            return ST_STREAM_END;
        }
    }
}

size_t st_mix_state(struct st_mix *m, char *buf, size_t cap) {
    struct dbuf b;
    dbuf_init(&b, (size_t)1 << 40);
    dbuf_addstr(&b, "{\"streamtune_mix\":1,\"names\":[");
    for (int i = 0; i < m->n; i++) {
        dbuf_addstr(&b, i ? ",\"" : "\"");
        /* names are [A-Za-z0-9_.-]+ when parsed from --data; escape the rest anyway */
        for (const char *p = m->names[i]; *p; p++) {
            if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
                dbuf_printf(&b, "\\u%04x", (unsigned char)*p);
            else
                dbuf_add(&b, p, 1);
        }
        dbuf_addstr(&b, "\"");
    }
    dbuf_addstr(&b, "],\"weights\":[");
    for (int i = 0; i < m->n; i++)
        dbuf_printf(&b, "%s%.17g", i ? "," : "", m->weights[i]);
    dbuf_printf(&b, "],\"epoch\":%lld,\"rng\":[", (long long)m->epoch);
    for (int i = 0; i < 4; i++)
        dbuf_printf(&b, "%s\"%016llx\"", i ? "," : "", (unsigned long long)m->rng.s[i]);
    dbuf_addstr(&b, "],\"ended\":[");
    for (int i = 0; i < m->n; i++)
        dbuf_printf(&b, "%s%d", i ? "," : "", m->ended[i]);
    dbuf_addstr(&b, "],\"sources\":[");
    for (int i = 0; i < m->n; i++) {
        if (i) dbuf_addstr(&b, ",");
        /* the reader may move on between two calls (the record then grows): ask until the
         * buffer was large enough for the record written */
        size_t cap2 = st_decoder_state(m->dec[i], NULL, 0) + 4096;
        for (;;) {
            if (dbuf_reserve(&b, cap2 + 1)) break;
            size_t n = st_decoder_state(m->dec[i], b.p + b.len, cap2 + 1);
            if (n <= cap2) {
                b.len += n;
                break;
            }
            cap2 = n + n / 4;
        }
    }
    dbuf_addstr(&b, "]}");
    size_t n = b.len;
    if (cap) {
        size_t k = n < cap - 1 ? n : cap - 1;
        if (b.p) memcpy(buf, b.p, k);
        buf[k] = '\0';
    }
    dbuf_free(&b);
    return n;
}

static void add_stream(struct st_stream_stats *a, const struct st_stream_stats *b) {
    a->elapsed_s = a->elapsed_s > b->elapsed_s ? a->elapsed_s : b->elapsed_s;
    if (b->first_sample_s >= 0 && (a->first_sample_s < 0 || b->first_sample_s < a->first_sample_s))
        a->first_sample_s = b->first_sample_s;
    a->wait_s += b->wait_s;
    a->samples += b->samples;
    a->bytes_fetched += b->bytes_fetched;
    a->bytes_decoded += b->bytes_decoded;
    a->requests += b->requests;
    a->retries += b->retries;
    a->retry_conn += b->retry_conn;
    a->retry_timeout += b->retry_timeout;
    a->retry_truncated += b->retry_truncated;
    a->retry_5xx += b->retry_5xx;
    a->retry_throttled += b->retry_throttled;
    a->shards_done += b->shards_done;
    a->mem_budget += b->mem_budget;
    a->mem_used += b->mem_used;
    a->mem_peak += b->mem_peak; /* an upper bound of the joint peak */
    a->n_shards += b->n_shards;
    a->plan_shards += b->plan_shards;
}

void st_mix_stats(struct st_mix *m, struct st_decode_stats *total,
                  struct st_decode_stats *per_source) {
    memset(total, 0, sizeof *total);
    total->stream.first_sample_s = -1;
    for (int i = 0; i < m->n; i++) {
        struct st_decode_stats s;
        st_decoder_stats(m->dec[i], &s);
        if (per_source) per_source[i] = s;
        add_stream(&total->stream, &s.stream);
        total->samples += s.samples;
        total->images += s.images;
        total->audio += s.audio;
        total->skipped += s.skipped;
        total->skipped_limit += s.skipped_limit;
        total->skipped_corrupt += s.skipped_corrupt;
        total->skipped_unsupported += s.skipped_unsupported;
        total->decode_s += s.decode_s;
        total->wait_s += s.wait_s;
        total->elapsed_s = total->elapsed_s > s.elapsed_s ? total->elapsed_s : s.elapsed_s;
        for (int k = 0; k < s.n_skip_log && total->n_skip_log < ST_DECODE_SKIP_LOG; k++)
            total->skip_log[total->n_skip_log++] = s.skip_log[k];
    }
    total->stream.epoch = m->epoch;
    total->stream.bytes_per_s = total->stream.elapsed_s > 0
                                    ? (double)total->stream.bytes_fetched / total->stream.elapsed_s
                                    : 0;
    total->stream.samples_per_s =
        total->stream.elapsed_s > 0 ? (double)total->stream.samples / total->stream.elapsed_s : 0;
    total->samples_per_s = total->elapsed_s > 0 ? (double)total->samples / total->elapsed_s : 0;
}

void st_mix_counts(struct st_mix *m, uint64_t *counts) {
    for (int i = 0; i < m->n; i++)
        counts[i] = m->counts[i];
}
