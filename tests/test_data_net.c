/* test_data_net.c: the stream against real servers on 127.0.0.1, started and stopped here:
 * nginx (a config written by the test), @20minutes/s3rver (SigV4-checking S3) and the project's
 * fault proxy (tests/servers/faultproxy.js: resets, truncated bodies, 503 SlowDown, 500, 429 and
 * stalls) in front of them.
 *
 * What it checks: with 30% of requests faulted, a 10,000-sample dataset (plain, gzip, zstd and
 * tar shards, records carrying their ids) streams over HTTP and over S3 with every sample exactly
 * once and in the same order as a fault-free run; paginated ListObjectsV2 (continuation tokens
 * with / + =); resuming in a new process gives the uninterrupted sequence and fetches only the
 * bytes not yet consumed; ranks 0..3 of 4 are disjoint and cover the dataset (by shards over S3,
 * by equal sample counts through an index over HTTP with faults); Retry-After is
 * honoured; an object rewritten mid-read is detected (If-Match / ETag); 403 / 404 / bad
 * credentials / bad URL / corrupt gzip / corrupt tar / refused connections give one-line errors
 * naming the URL; with ST_SLOW_TESTS=1, streaming 2 GiB keeps the peak RSS under the budget +
 * 64 MiB. Servers that are not installed make their tests skip with a message. */
#include "harness.h"
#include "servers/helpers.h"
#include "streamtune/data.h"

#include <cjson/cJSON.h>
#include <pthread.h>

#define N_SHARDS 20
#define PER 500
#define TOTAL (N_SHARDS * PER)

static char *g_dir;
static char *g_urls[N_SHARDS];
static struct td_server g_nginx, g_s3, g_px_http, g_px_s3;
static int g_have_nginx, g_have_s3;
static char g_why_nginx[200] = "", g_why_s3[200] = "";

struct run {
    int64_t ids[TOTAL + 16];
    int n;
    struct st_stream_stats st;
    char state[1 << 20]; /* with the shuffle buffer the record carries its samples */
    enum st_status rc;
    struct st_error err;
    double secs;
};

static int64_t sample_id(const struct st_sample *s) {
    const struct st_sample_field *cls = st_sample_field(s, "cls");
    if (cls) return td_sample_id(cls->data, cls->size, 1);
    return td_sample_id(s->data, s->size, 0);
}

static void run_stream(const struct st_stream_options *o, int stop, struct run *r) {
    memset(r, 0, sizeof *r);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct st_stream *s;
    r->rc = st_stream_open(&s, o, &r->err);
    if (r->rc) return;
    for (;;) {
        if (stop >= 0 && r->n >= stop) break;
        struct st_sample smp;
        enum st_status rc = st_stream_next(s, &smp, &r->err);
        if (rc == ST_STREAM_END) break;
        if (rc) {
            r->rc = rc;
            break;
        }
        if (r->n < TOTAL + 16) r->ids[r->n] = sample_id(&smp);
        r->n++;
    }
    if (st_stream_state(s, r->state, sizeof r->state) >= sizeof r->state) r->state[0] = 0;
    st_stream_stats(s, &r->st);
    st_stream_close(s);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    r->secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
}

static int exactly_once(const struct run *r) {
    if (r->n != TOTAL) return 0;
    static char seen[TOTAL];
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < r->n; i++) {
        if (r->ids[i] < 0 || r->ids[i] >= TOTAL || seen[r->ids[i]]) return 0;
        seen[r->ids[i]] = 1;
    }
    return 1;
}

static void opts(struct st_stream_options *o) {
    st_stream_options_init(o);
    o->seed = 1234;
    o->shuffle_shards = 4;
    o->memory_budget = 48u << 20;
    o->part_size = 64 * 1024;
    o->connections = 8;
    o->epochs = 1;
    o->backoff_base = 0.02;
    o->backoff_max = 0.2;
    o->max_retries = 12;
    o->stall_timeout = 1;
    o->connect_timeout = 2;
}

static void s3_opts(struct st_stream_options *o, const char *endpoint) {
    opts(o);
    o->endpoint_url = endpoint;
    o->access_key_id = "S3RVER";
    o->secret_access_key = "S3RVER";
    o->region = "us-east-1";
}

static int start_proxy(struct td_server *px, int port, const char *const *extra, int n_extra) {
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    const char *args[32];
    int k = 0;
    args[k++] = "--target";
    args[k++] = target;
    for (int i = 0; i < n_extra && k < 30; i++)
        args[k++] = extra[i];
    return td_node_start(px, "faultproxy.js", args, k);
}

static const char *const faulty[] = {"--fault-rate", "0.3",  "--seed",        "11",
                                     "--stall-ms",   "1500", "--retry-after", "0"};

/* ---- HTTP ---- */

TEST(http_faults_exactly_once) {
    if (!g_have_nginx) TEST_SKIP("%s", g_why_nginx);
    static struct run ref, got, idx;
    struct st_stream_options o;
    opts(&o);
    char *urls[N_SHARDS];
    for (int i = 0; i < N_SHARDS; i++) {
        urls[i] = malloc(256);
        snprintf(urls[i], 256, "%s/%s", g_nginx.url, g_urls[i]);
    }
    o.urls = (const char *const *)urls;
    o.n_urls = N_SHARDS;
    run_stream(&o, -1, &ref);
    CHECKF(ref.rc == ST_OK, "%s", ref.err.msg);
    CHECKF(exactly_once(&ref), "fault-free run: %d samples", ref.n);
    CHECK(ref.st.retries == 0);
    /* the same through the fault proxy: 30% of requests faulted */
    for (int i = 0; i < N_SHARDS; i++)
        snprintf(urls[i], 256, "%s/%s", g_px_http.url, g_urls[i]);
    run_stream(&o, -1, &got);
    CHECKF(got.rc == ST_OK, "%s", got.err.msg);
    CHECKF(exactly_once(&got), "faulted run: %d samples", got.n);
    CHECK(got.n == ref.n && memcmp(got.ids, ref.ids, sizeof(int64_t) * TOTAL) == 0);
    CHECKF(got.st.retries >= got.st.requests / 8, "%llu retries for %llu requests",
           (unsigned long long)got.st.retries, (unsigned long long)got.st.requests);
    /* every kind of fault happened and was retried as its kind (stalls end in a reset after
     * 1.5 s here, before curl's low-speed window notices: test stall_retried covers those) */
    CHECK(got.st.retry_conn && got.st.retry_truncated && got.st.retry_5xx &&
          got.st.retry_throttled);
    printf("  http, 30%% faults: %llu requests, %llu retries (conn %llu, timeout %llu, truncated "
           "%llu, 5xx %llu, throttled %llu), %.2f s\n",
           (unsigned long long)got.st.requests, (unsigned long long)got.st.retries,
           (unsigned long long)got.st.retry_conn, (unsigned long long)got.st.retry_timeout,
           (unsigned long long)got.st.retry_truncated, (unsigned long long)got.st.retry_5xx,
           (unsigned long long)got.st.retry_throttled, got.secs);
    /* through an index manifest (sizes known: parallel parts from the start), still faulted */
    char idx_url[256];
    snprintf(idx_url, sizeof idx_url, "%s/index.json", g_px_http.url);
    opts(&o);
    o.url = idx_url;
    run_stream(&o, -1, &idx);
    CHECKF(idx.rc == ST_OK, "%s", idx.err.msg);
    CHECK(idx.n == ref.n && memcmp(idx.ids, ref.ids, sizeof(int64_t) * TOTAL) == 0);
    CHECK(idx.st.retries > 0);
    /* ranks 0..3 of 4 through the index (equal sample counts), still faulted: disjoint, and
     * together the dataset */
    static char seen[TOTAL];
    memset(seen, 0, sizeof seen);
    int total = 0, dup = 0;
    for (int rank = 0; rank < 4; rank++) {
        opts(&o);
        o.url = idx_url;
        o.rank = rank;
        o.world_size = 4;
        run_stream(&o, -1, &got);
        CHECKF(got.rc == ST_OK && got.n == TOTAL / 4, "rank %d: %d samples %s", rank, got.n,
               got.err.msg);
        for (int i = 0; i < got.n; i++) {
            if (got.ids[i] < 0 || got.ids[i] >= TOTAL || seen[got.ids[i]])
                dup++;
            else
                seen[got.ids[i]] = 1;
        }
        total += got.n;
    }
    CHECKF(total == TOTAL && dup == 0, "%d samples over 4 ranks, %d repeated", total, dup);
    for (int i = 0; i < N_SHARDS; i++)
        free(urls[i]);
}

/* ---- S3 ---- */

TEST(s3_faults_exactly_once) {
    if (!g_have_s3) TEST_SKIP("%s", g_why_s3);
    static struct run ref, got;
    struct st_stream_options o;
    s3_opts(&o, g_s3.url);
    o.url = "s3://data/ds/";
    setenv("STREAMTUNE_S3_MAX_KEYS", "7", 1); /* 3 pages: continuation tokens are exercised */
    struct st_shard_list l;
    struct st_error err;
    CHECKF(st_data_list(&o, &l, &err) == ST_OK, "%s", err.msg);
    CHECK(l.n == N_SHARDS);
    if (l.n == N_SHARDS) {
        CHECK(strcmp(l.shards[0].url, "s3://data/ds/shard-000.jsonl") == 0);
        CHECK(strcmp(l.shards[0].name, "shard-000.jsonl") == 0 && l.shards[0].etag);
        CHECK(l.shards[3].size > 0 && l.shards[3].size != UINT64_MAX);
    }
    st_shard_list_free(&l);
    run_stream(&o, -1, &ref);
    CHECKF(ref.rc == ST_OK, "%s", ref.err.msg);
    CHECKF(exactly_once(&ref), "fault-free run: %d samples", ref.n);
    s3_opts(&o, g_px_s3.url);
    o.url = "s3://data/ds/";
    run_stream(&o, -1, &got);
    unsetenv("STREAMTUNE_S3_MAX_KEYS");
    CHECKF(got.rc == ST_OK, "%s", got.err.msg);
    CHECKF(exactly_once(&got), "faulted run: %d samples", got.n);
    CHECK(got.n == ref.n && memcmp(got.ids, ref.ids, sizeof(int64_t) * TOTAL) == 0);
    CHECK(got.st.retries > 0);
    printf("  s3, 30%% faults: %llu requests, %llu retries (conn %llu, timeout %llu, truncated "
           "%llu, 5xx %llu, throttled %llu), %.2f s\n",
           (unsigned long long)got.st.requests, (unsigned long long)got.st.retries,
           (unsigned long long)got.st.retry_conn, (unsigned long long)got.st.retry_timeout,
           (unsigned long long)got.st.retry_truncated, (unsigned long long)got.st.retry_5xx,
           (unsigned long long)got.st.retry_throttled, got.secs);
}

TEST(s3_ranks_disjoint) {
    if (!g_have_s3) TEST_SKIP("%s", g_why_s3);
    static struct run r;
    static char seen[TOTAL];
    memset(seen, 0, sizeof seen);
    int total = 0, dup = 0;
    for (int rank = 0; rank < 4; rank++) {
        struct st_stream_options o;
        s3_opts(&o, g_s3.url);
        o.url = "s3://data/ds/";
        o.rank = rank;
        o.world_size = 4;
        run_stream(&o, -1, &r);
        CHECKF(r.rc == ST_OK, "%s", r.err.msg);
        CHECK(r.n > 0);
        for (int i = 0; i < r.n; i++) {
            if (r.ids[i] < 0 || r.ids[i] >= TOTAL || seen[r.ids[i]])
                dup++;
            else
                seen[r.ids[i]] = 1;
        }
        total += r.n;
    }
    CHECKF(dup == 0 && total == TOTAL, "%d samples over 4 ranks, %d repeated", total, dup);
}

/* ---- resume in a new process ---- */

static int child_main(int argc, char **argv) {
    /* --child URL_FILE STATE_FILE OUT_FILE */
    if (argc < 5) return 2;
    char *urls_text, *state;
    size_t n;
    struct st_error err;
    if (st_read_file(argv[2], 1 << 20, &urls_text, &n, &err) ||
        st_read_file(argv[3], 1 << 20, &state, &n, &err))
        return 3;
    const char *urls[N_SHARDS];
    int k = 0;
    for (char *p = urls_text, *nl; p && *p && k < N_SHARDS; p = nl) {
        nl = strchr(p, '\n');
        if (nl) *nl++ = '\0';
        urls[k++] = p;
    }
    struct st_stream_options o;
    opts(&o);
    o.stall_timeout = 30; /* byte counts are exact only without retries */
    o.shuffle_buffer = 0; /* byte counts by slot offsets (buffered resume: test_data_stream) */
    o.urls = urls;
    o.n_urls = k;
    o.resume_state = state;
    static struct run r;
    run_stream(&o, -1, &r);
    FILE *f = fopen(argv[4], "w");
    if (!f) return 4;
    fprintf(f, "%d %d %llu\n", (int)r.rc, r.n, (unsigned long long)r.st.bytes_fetched);
    for (int i = 0; i < r.n; i++)
        fprintf(f, "%lld\n", (long long)r.ids[i]);
    fclose(f);
    st_free(urls_text);
    st_free(state);
    return 0;
}

TEST(http_resume_new_process) {
    if (!g_have_nginx) TEST_SKIP("%s", g_why_nginx);
    static struct run full, first;
    struct st_stream_options o;
    opts(&o);
    char *urls[N_SHARDS];
    uint64_t sizes[N_SHARDS];
    struct tbuf list = {0};
    for (int i = 0; i < N_SHARDS; i++) {
        urls[i] = malloc(256);
        snprintf(urls[i], 256, "%s/%s", g_nginx.url, g_urls[i]);
        tb_printf(&list, "%s\n", urls[i]);
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", g_dir, g_urls[i]);
        struct stat sb;
        sizes[i] = stat(p, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    }
    o.urls = (const char *const *)urls;
    o.n_urls = N_SHARDS;
    o.stall_timeout = 30; /* byte counts are exact only without retries */
    o.shuffle_buffer = 0; /* byte counts by slot offsets (buffered resume: test_data_stream) */
    run_stream(&o, -1, &full);
    CHECK(exactly_once(&full));
    /* shard order of the epoch (plan), from a K=1 stream with the same seed */
    int order[N_SHARDS], no = 0;
    {
        struct st_stream_options po = o;
        po.shuffle_shards = 1;
        struct st_stream *s;
        struct st_error err;
        CHECK(st_stream_open(&s, &po, &err) == ST_OK);
        struct st_sample smp;
        while (st_stream_next(s, &smp, &err) == ST_OK)
            if ((no == 0 || order[no - 1] != (int)smp.shard) && no < N_SHARDS)
                order[no++] = (int)smp.shard;
        st_stream_close(s);
    }
    CHECK(no == N_SHARDS);
    char *tmp = td_tmpdir("resume");
    char urls_path[600], state_path[600], out_path[600];
    snprintf(urls_path, sizeof urls_path, "%s/urls", tmp);
    snprintf(state_path, sizeof state_path, "%s/state.json", tmp);
    snprintf(out_path, sizeof out_path, "%s/out", tmp);
    td_write(urls_path, list.p, list.n);
    int stops[] = {1, 733, 4999, 8123};
    for (int k = 0; k < 4 && no == N_SHARDS; k++) {
        run_stream(&o, stops[k], &first);
        CHECK(first.rc == ST_OK && first.n == stops[k]);
        td_write(state_path, first.state, strlen(first.state));
        char *argv[] = {"/proc/self/exe", "--child", urls_path, state_path, out_path, NULL};
        char self[1024];
        ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
        self[sl > 0 ? sl : 0] = '\0';
        argv[0] = self;
        char log[700];
        snprintf(log, sizeof log, "%s/child.log", tmp);
        pid_t pid = td_spawn(argv, NULL, log);
        int st = -1;
        waitpid(pid, &st, 0);
        CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x (log %s)", st, log);
        if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
            char tail[2000] = "";
            FILE *lf = fopen(log, "r");
            if (lf) {
                size_t r = fread(tail, 1, sizeof tail - 1, lf);
                tail[r] = 0;
                fclose(lf);
            }
            fprintf(stderr, "  child log: %s\n", tail);
        }
        FILE *f = fopen(out_path, "r");
        int rc = -1, n = 0;
        unsigned long long bytes = 0;
        CHECK(f && fscanf(f, "%d %d %llu", &rc, &n, &bytes) == 3);
        CHECK(rc == 0 && first.n + n == TOTAL);
        int same = first.n + n == TOTAL &&
                   memcmp(full.ids, first.ids, sizeof(int64_t) * (size_t)first.n) == 0;
        for (int i = 0; f && i < n && same; i++) {
            long long id;
            same = fscanf(f, "%lld", &id) == 1 && id == full.ids[first.n + i];
        }
        if (f) fclose(f);
        CHECKF(same, "stop %d: the new process did not continue the sequence", stops[k]);
        /* bytes: every unstarted shard whole + each slot from its offset, nothing consumed */
        cJSON *j = cJSON_Parse(first.state);
        int next = cJSON_GetObjectItem(j, "next")->valueint;
        uint64_t expect = 0;
        for (int pos = next; pos < no; pos++)
            expect += sizes[order[pos]];
        cJSON *sl2;
        cJSON_ArrayForEach(sl2, cJSON_GetObjectItem(j, "slots")) {
            int pos = cJSON_GetArrayItem(sl2, 0)->valueint;
            expect += sizes[order[pos]] - (uint64_t)cJSON_GetArrayItem(sl2, 1)->valuedouble;
        }
        cJSON_Delete(j);
        CHECKF(bytes == expect, "stop %d: resumed process fetched %llu bytes, expected %llu",
               stops[k], bytes, (unsigned long long)expect);
        printf("  resume after %d samples: new process fetched %llu bytes (dataset %llu)\n",
               stops[k], bytes, (unsigned long long)full.st.bytes_fetched);
    }
    td_rm_rf(tmp);
    free(tmp);
    free(list.p);
    for (int i = 0; i < N_SHARDS; i++)
        free(urls[i]);
}

/* ---- Retry-After, changed objects ---- */

TEST(retry_after_honoured) {
    if (!g_have_nginx) TEST_SKIP("%s", g_why_nginx);
    struct td_server px;
    const char *args[] = {"--faults", "slowdown", "--fault-first", "1", "--retry-after", "1"};
    if (start_proxy(&px, g_nginx.port, args, 6)) {
        CHECK(0);
        return;
    }
    char url[256];
    snprintf(url, sizeof url, "%s/%s", px.url, g_urls[0]);
    struct st_stream_options o;
    opts(&o);
    o.url = url;
    o.stall_timeout = 30; /* no stall retries on a loaded machine: only the 503 */
    static struct run r;
    run_stream(&o, -1, &r);
    CHECKF(r.rc == ST_OK && r.n == PER, "%s", r.err.msg);
    CHECK(r.st.retry_throttled == 1 && r.st.retries >= 1);
    CHECKF(r.secs >= 1.0, "Retry-After: 1 was not waited for (%.3f s)", r.secs);
    td_stop(&px);
}

/* A proxy whose first answer sends part of its body, then nothing for 20 s; o reads the first
 * shard through it (url holds the URL), its samples in file order. 1 when it cannot start. */
static int stalled_first_shard(struct td_server *px, char url[256], struct st_stream_options *o) {
    const char *args[] = {"--faults", "stall", "--fault-first", "1", "--stall-ms", "20000"};
    if (start_proxy(px, g_nginx.port, args, 6)) return 1;
    snprintf(url, 256, "%s/%s", px->url, g_urls[0]);
    opts(o);
    o->url = url;
    o->shuffle_buffer = 0;
    return 0;
}

TEST(stall_retried) {
    if (!g_have_nginx) TEST_SKIP("%s", g_why_nginx);
    /* the stalled transfer is abandoned (curl's low-speed check averages over ~5 s, so this
     * takes about 6 s) and resumed */
    struct td_server px;
    char url[256];
    struct st_stream_options o;
    if (stalled_first_shard(&px, url, &o)) {
        CHECK(0);
        return;
    }
    static struct run r;
    run_stream(&o, -1, &r);
    CHECKF(r.rc == ST_OK && r.n == PER, "%s", r.err.msg);
    for (int i = 0; i < r.n && i < PER; i++)
        if (r.ids[i] != i) {
            CHECKF(0, "sample %d has id %lld", i, (long long)r.ids[i]);
            break;
        }
    CHECKF(r.st.retry_timeout == 1, "%llu timeouts", (unsigned long long)r.st.retry_timeout);
    td_stop(&px);
}

struct next_call {
    struct st_stream *s;
    enum st_status rc;
    struct st_error err;
};

static void *call_next(void *arg) {
    struct next_call *c = arg;
    struct st_sample smp;
    c->rc = st_stream_next(c->s, &smp, &c->err);
    return NULL;
}

TEST(cancel_unblocks_next) {
    if (!g_have_nginx) TEST_SKIP("%s", g_why_nginx);
    /* next() waits on a transfer that stalls for 20 s (abandoned and retried after ~6 s); a
     * cancel from another thread returns it at once with an error, and close is prompt (a
     * trainer past its last step is not held by a slow server) */
    struct td_server px;
    char url[256];
    struct st_stream_options o;
    if (stalled_first_shard(&px, url, &o)) {
        CHECK(0);
        return;
    }
    struct next_call c = {0};
    struct st_error err;
    CHECKF(st_stream_open(&c.s, &o, &err) == ST_OK, "%s", err.msg);
    if (!c.s) {
        td_stop(&px);
        return;
    }
    pthread_t th;
    CHECK(pthread_create(&th, NULL, call_next, &c) == 0);
    struct timespec ts = {0, 300 * 1000 * 1000};
    nanosleep(&ts, NULL);
    st_stream_cancel(c.s);
    pthread_join(th, NULL);
    CHECKF(c.rc != ST_OK && strstr(c.err.msg, "cancelled"), "next after cancel: %d %s", c.rc,
           c.err.msg);
    struct st_sample smp;
    CHECK(st_stream_next(c.s, &smp, &err) != ST_OK); /* and every call after it */
    st_stream_close(c.s);
    td_stop(&px);
}

static void rewrite_mid_read(struct st_stream_options *o, const char *path, const char *what,
                             int s3) {
    /* an 8 MB shard, more than the stream holds with this budget (parts + parsed records under
     * 3 MB); read a little, rewrite it, read on: later ranges see the new object */
    struct tbuf raw = {0};
    for (int i = 0; i < 40000; i++)
        td_record(&raw, i, 0, i), tb_add(&raw, "\n", 1);
    if (s3)
        td_s3_put(g_s3.url, "data", "mut/big.jsonl", raw.p, raw.n);
    else
        td_write(path, raw.p, raw.n);
    o->memory_budget = 4u << 20;
    o->shuffle_shards = 1;
    o->prefetch_shards = 0;
    o->connections = 1;
    o->part_size = 16 * 1024;
    struct st_stream *s;
    struct st_error err;
    CHECKF(st_stream_open(&s, o, &err) == ST_OK, "%s", err.msg);
    struct st_sample smp;
    CHECK(st_stream_next(s, &smp, &err) == ST_OK);
    raw.p[10] = '9'; /* same size, other content */
    tb_add(&raw, "\n", 1);
    if (s3)
        td_s3_put(g_s3.url, "data", "mut/big.jsonl", raw.p, raw.n);
    else
        td_write(path, raw.p, raw.n); /* nginx's ETag is mtime-size: the size changed */
    enum st_status rc;
    int n = 1;
    while ((rc = st_stream_next(s, &smp, &err)) == ST_OK)
        n++;
    /* "changed while it was being read" (ETag / 412) or "changed after listing" (size) */
    CHECKF(rc == ST_ERR_NET && strstr(err.msg, "changed"), "%s: %s (%d)", what, err.msg, n);
    CHECK(n < 40000);
    st_stream_close(s);
    free(raw.p);
}

TEST(object_changed_mid_read) {
    if (!g_have_nginx) TEST_SKIP("%s", g_why_nginx);
    char path[600], url[256];
    snprintf(path, sizeof path, "%s/mut.jsonl", g_dir);
    snprintf(url, sizeof url, "%s/mut.jsonl", g_nginx.url);
    struct st_stream_options o;
    opts(&o);
    o.url = url;
    rewrite_mid_read(&o, path, "http", 0);
    unlink(path);
    if (!g_have_s3) TEST_SKIP("%s", g_why_s3);
    s3_opts(&o, g_s3.url);
    o.url = "s3://data/mut/big.jsonl";
    rewrite_mid_read(&o, NULL, "s3", 1);
}

/* ---- errors ---- */

static void expect_error(struct st_stream_options *o, enum st_status code, const char *a,
                         const char *b) {
    static struct run r;
    run_stream(o, -1, &r);
    CHECKF(r.rc == code, "wanted status %d, got %d: %s", (int)code, (int)r.rc, r.err.msg);
    CHECKF(strstr(r.err.msg, a) && (!b || strstr(r.err.msg, b)) && !strchr(r.err.msg, '\n'),
           "message: %s", r.err.msg);
}

TEST(errors) {
    struct st_stream_options o;
    char url[512];
    /* bad URLs */
    opts(&o);
    o.url = "http:///x.jsonl";
    expect_error(&o, ST_ERR_ARG, "http:///x.jsonl: bad URL", NULL);
    opts(&o);
    o.url = "s3://Bad_Bucket/x";
    expect_error(&o, ST_ERR_ARG, "s3://Bad_Bucket/x: bad URL", NULL);
    opts(&o);
    o.url = "http://no-such-host.invalid/x.jsonl";
    expect_error(&o, ST_ERR_NET, "http://no-such-host.invalid/x.jsonl: cannot resolve the host",
                 NULL);
    /* nothing listening: retried, then a message naming the URL */
    int port = td_free_port();
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x.jsonl", port);
    opts(&o);
    o.url = url;
    o.max_retries = 2;
    expect_error(&o, ST_ERR_NET, "giving up after 3 attempts", url);
    if (g_have_nginx) {
        snprintf(url, sizeof url, "%s/missing.jsonl", g_nginx.url);
        opts(&o);
        o.url = url;
        expect_error(&o, ST_ERR_IO, "missing.jsonl: not found (HTTP 404)", "check the URL");
        snprintf(url, sizeof url, "%s/broken.jsonl.gz", g_nginx.url);
        o.url = url;
        expect_error(&o, ST_ERR_FORMAT, "broken.jsonl.gz: corrupt gzip data near compressed byte",
                     NULL);
        snprintf(url, sizeof url, "%s/broken.tar", g_nginx.url);
        o.url = url;
        expect_error(&o, ST_ERR_FORMAT,
                     "broken.tar: corrupt tar: bad header checksum at byte "
                     "offset 1024",
                     NULL);
    }
    if (g_have_s3) {
        s3_opts(&o, g_s3.url);
        o.url = "s3://data/ds/";
        o.secret_access_key = "wrong-secret";
        expect_error(&o, ST_ERR_NET, "access denied (HTTP 403 SignatureDoesNotMatch",
                     "check the secret key");
        s3_opts(&o, g_s3.url);
        o.url = "s3://data/ds/";
        o.access_key_id = "NOBODY";
        expect_error(&o, ST_ERR_NET, "HTTP 403 InvalidAccessKeyId", "check the access key id");
        s3_opts(&o, g_s3.url);
        o.url = "s3://nobucket/ds/";
        expect_error(&o, ST_ERR_IO, "not found (HTTP 404 NoSuchBucket", "bucket does not exist");
        s3_opts(&o, g_s3.url);
        o.url = "s3://data/ds/shard-000.jsonl.missing";
        expect_error(&o, ST_ERR_IO, "s3://data/ds/shard-000.jsonl.missing", "no shards found");
        /* objects listed, then a bad secret only for reads would also be 403: covered above */
    }
}

/* ---- memory: RSS under the budget + 64 MiB on a 2 GiB dataset (ST_SLOW_TESTS=1) ---- */

static long vm_hwm_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) v = strtol(line + 6, NULL, 10);
    if (f) fclose(f);
    return v;
}

/* --rss-child URL_LIST_FILE BUDGET_MIB OUT: stream everything, report samples, bytes, VmHWM. */
static int rss_child(int argc, char **argv) {
    if (argc < 5) return 2;
    char *text;
    size_t n;
    struct st_error err;
    if (st_read_file(argv[2], 1 << 20, &text, &n, &err)) return 3;
    const char *urls[256];
    int k = 0;
    for (char *p = text, *nl; p && *p && k < 256; p = nl) {
        nl = strchr(p, '\n');
        if (nl) *nl++ = '\0';
        urls[k++] = p;
    }
    struct st_stream_options o;
    st_stream_options_init(&o);
    o.urls = urls;
    o.n_urls = k;
    o.epochs = 1;
    o.memory_budget = (size_t)atol(argv[3]) << 20;
    long before = vm_hwm_kib();
    struct st_stream *s;
    if (st_stream_open(&s, &o, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 4;
    }
    struct st_sample smp;
    enum st_status rc;
    uint64_t samples = 0, sum = 0;
    while ((rc = st_stream_next(s, &smp, &err)) == ST_OK) {
        samples++;
        sum += smp.size;
    }
    struct st_stream_stats st;
    st_stream_stats(s, &st);
    st_stream_close(s);
    FILE *f = fopen(argv[4], "w");
    fprintf(f, "%d %llu %llu %ld %ld %zu %.2f\n", (int)rc, (unsigned long long)samples,
            (unsigned long long)st.bytes_fetched, before, vm_hwm_kib(), st.mem_peak, st.elapsed_s);
    fclose(f);
    st_free(text);
    return rc == ST_STREAM_END ? 0 : 5;
}

TEST(rss_2gib) {
    const char *slow = getenv("ST_SLOW_TESTS");
    if (!slow || strcmp(slow, "1") != 0)
        TEST_SKIP("set ST_SLOW_TESTS=1 (writes and streams 2 GiB)");
    if (!g_have_nginx) TEST_SKIP("%s", g_why_nginx);
    /* 16 plain JSONL shards of 128 MiB, written record by record (the writer holds no shard) */
    char *dir = g_dir;
    const int shards = 16;
    const uint64_t shard_bytes = (uint64_t)128 << 20;
    struct tbuf list = {0};
    int64_t id = 0;
    for (int sh = 0; sh < shards; sh++) {
        char path[700], name[64];
        snprintf(name, sizeof name, "big-%02d.jsonl", sh);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        FILE *f = fopen(path, "wb");
        uint64_t w = 0;
        while (w < shard_bytes) {
            struct tbuf r = {0};
            td_record(&r, id++, sh, 0);
            tb_add(&r, "\n", 1);
            fwrite(r.p, 1, r.n, f);
            w += r.n;
            free(r.p);
        }
        fclose(f);
        tb_printf(&list, "%s/%s\n", g_nginx.url, name);
    }
    char lp[700], out[700];
    snprintf(lp, sizeof lp, "%s/rss-urls", dir);
    snprintf(out, sizeof out, "%s/rss-out", dir);
    td_write(lp, list.p, list.n);
    const char *budgets[] = {"256", "512"};
    for (int b = 0; b < 2; b++) {
        char self[1024];
        ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
        self[sl > 0 ? sl : 0] = '\0';
        char *argv[] = {self, "--rss-child", lp, (char *)budgets[b], out, NULL};
        pid_t pid = td_spawn(argv, NULL, NULL);
        int st;
        waitpid(pid, &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        FILE *f = fopen(out, "r");
        int rc = -1;
        unsigned long long samples = 0, bytes = 0;
        long before = 0, hwm = 0;
        size_t peak = 0;
        double secs = 0;
        CHECK(f && fscanf(f, "%d %llu %llu %ld %ld %zu %lf", &rc, &samples, &bytes, &before, &hwm,
                          &peak, &secs) == 7);
        if (f) fclose(f);
        long limit_kib = (atol(budgets[b]) + 64) * 1024;
        CHECK(samples == (unsigned long long)id && bytes >= (uint64_t)shards * shard_bytes);
        CHECKF(hwm < limit_kib, "budget %s MiB: peak RSS %ld KiB >= %ld KiB", budgets[b], hwm,
               limit_kib);
        printf("  budget %s MiB: %llu samples, %.2f GB in %.1f s; peak RSS %.1f MiB (%.1f MiB at "
               "open), stream buffers peak %.1f MiB\n",
               budgets[b], samples, (double)bytes / 1e9, secs, hwm / 1024.0, before / 1024.0,
               (double)peak / 1048576.0);
    }
    for (int sh = 0; sh < shards; sh++) {
        char path[700];
        snprintf(path, sizeof path, "%s/big-%02d.jsonl", dir, sh);
        unlink(path);
    }
    free(list.p);
}

/* ---- setup ---- */

static void setup(void) {
    g_dir = td_tmpdir("net");
    int kinds[] = {TD_JSONL, TD_GZ, TD_ZST, TD_TAR};
    if (td_make_dataset(g_dir, N_SHARDS, PER, kinds, 4)) {
        fprintf(stderr, "cannot write the dataset\n");
        exit(1);
    }
    for (int i = 0; i < N_SHARDS; i++) {
        g_urls[i] = malloc(64);
        snprintf(g_urls[i], 64, "shard-%03d%s", i, td_ext[kinds[i % 4]]);
    }
    /* index manifest with relative names (served by nginx beside the shards) */
    struct st_stream_options o;
    st_stream_options_init(&o);
    o.url = g_dir;
    char idx[600];
    snprintf(idx, sizeof idx, "%s/index.json", g_dir);
    struct st_error err;
    if (st_index_write(&o, NULL, idx, NULL, NULL, &err)) {
        fprintf(stderr, "index: %s\n", err.msg);
        exit(1);
    }
    /* broken shards for the error tests (not part of the listing: other directory names) */
    struct tbuf raw = {0}, gz = {0}, t = {0};
    for (int i = 0; i < 500; i++)
        td_record(&raw, i, 0, i), tb_add(&raw, "\n", 1);
    td_gzip(raw.p, raw.n, &gz);
    for (size_t i = 12; i < 40; i++)
        gz.p[i] ^= 0x5a;
    char p[700];
    snprintf(p, sizeof p, "%s/broken.jsonl.gz", g_dir);
    td_write(p, gz.p, gz.n);
    td_tar_member(&t, "a.txt", "hello", 5);
    td_tar_member(&t, "b.txt", "world", 5);
    t.p[1024 + 130] ^= 0x11;
    snprintf(p, sizeof p, "%s/broken.tar", g_dir);
    td_write(p, t.p, t.n);
    free(raw.p);
    free(gz.p);
    free(t.p);

    int r = td_nginx_start(&g_nginx, g_dir);
    if (r == 2)
        snprintf(g_why_nginx, sizeof g_why_nginx,
                 "nginx is not installed (scripts/setup installs nginx-light)");
    else if (r)
        snprintf(g_why_nginx, sizeof g_why_nginx, "nginx did not start");
    g_have_nginx = r == 0;
    if (g_have_nginx) {
        r = start_proxy(&g_px_http, g_nginx.port, faulty, 8);
        if (r) {
            g_have_nginx = 0;
            snprintf(g_why_nginx, sizeof g_why_nginx, "%s",
                     r == 2 ? "node is not installed (the fault proxy needs it)"
                            : "the fault proxy did not start");
        }
    }
    r = td_s3rver_start(&g_s3, "data");
    if (r == 2)
        snprintf(
            g_why_s3, sizeof g_why_s3,
            "node or tools/node_modules/@20minutes/s3rver is not installed (run scripts/setup)");
    else if (r)
        snprintf(g_why_s3, sizeof g_why_s3, "s3rver did not start");
    g_have_s3 = r == 0;
    if (g_have_s3) {
        /* the broken files are not uploaded: only the dataset's shards */
        for (int i = 0; i < N_SHARDS && g_have_s3; i++) {
            char path[700], key[128];
            snprintf(path, sizeof path, "%s/%s", g_dir, g_urls[i]);
            snprintf(key, sizeof key, "ds/%s", g_urls[i]);
            char *data;
            size_t n;
            struct st_error e;
            if (st_read_file(path, 1u << 30, &data, &n, &e) ||
                td_s3_put(g_s3.url, "data", key, data, n)) {
                g_have_s3 = 0;
                snprintf(g_why_s3, sizeof g_why_s3, "uploading to s3rver failed");
            }
            st_free(data);
        }
        if (g_have_s3 && start_proxy(&g_px_s3, g_s3.port, faulty, 8)) {
            g_have_s3 = 0;
            snprintf(g_why_s3, sizeof g_why_s3, "the fault proxy did not start");
        }
    }
}

static void teardown(void) {
    td_stop(&g_px_http);
    td_stop(&g_px_s3);
    td_stop(&g_nginx);
    td_stop(&g_s3);
    td_rm_rf(g_dir);
    free(g_dir);
    for (int i = 0; i < N_SHARDS; i++)
        free(g_urls[i]);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--child") == 0) return child_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "--rss-child") == 0) return rss_child(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    setup();
    RUN(http_faults_exactly_once);
    RUN(s3_faults_exactly_once);
    RUN(s3_ranks_disjoint);
    RUN(http_resume_new_process);
    RUN(retry_after_honoured);
    RUN(stall_retried);
    RUN(cancel_unblocks_next);
    RUN(object_changed_mid_read);
    RUN(errors);
    RUN(rss_2gib);
    teardown();
    return test_finish();
}
