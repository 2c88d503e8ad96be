/* test_data_stream.c: the stream over local shards (file paths): every sample exactly once per
 * epoch, the same order for the same seed whatever the threads and part sizes, disjoint
 * partitions, epochs, resumption mid-epoch that reads only what was not consumed (byte counts),
 * the memory budget, index manifests, and one-line errors for bad input. Shards mix plain JSONL,
 * .gz, multi-frame .zst and tar; every record carries its id. */
#include "harness.h"
#include "servers/helpers.h"
#include "streamtune/data.h"

#include <cjson/cJSON.h>

#define MAXN 20000

struct run {
    int64_t ids[MAXN];
    int n;
    struct st_stream_stats st;
    char state[1 << 20]; /* with the shuffle buffer the record carries its samples */
    enum st_status rc;
    struct st_error err;
};

static int64_t sample_id(const struct st_sample *s) {
    const struct st_sample_field *cls = st_sample_field(s, "cls");
    if (cls) return td_sample_id(cls->data, cls->size, 1);
    return td_sample_id(s->data, s->size, 0);
}

/* Stream one epoch (or `stop` samples) into r. */
static void run_stream(const struct st_stream_options *o, int stop, struct run *r) {
    memset(r, 0, sizeof *r);
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
        if (r->n < MAXN) r->ids[r->n] = sample_id(&smp);
        r->n++;
    }
    if (st_stream_state(s, r->state, sizeof r->state) >= sizeof r->state) r->state[0] = 0;
    st_stream_stats(s, &r->st);
    st_stream_close(s);
}

static int exactly_once(const struct run *r, int total) {
    if (r->n != total) return 0;
    char *seen = calloc((size_t)total, 1);
    int ok = 1;
    for (int i = 0; i < r->n && ok; i++) {
        if (r->ids[i] < 0 || r->ids[i] >= total || seen[r->ids[i]])
            ok = 0;
        else
            seen[r->ids[i]] = 1;
    }
    free(seen);
    return ok;
}

static char *g_dir; /* mixed dataset */
static int g_total;
static const int g_shards = 12, g_per = 250;

static void base_opts(struct st_stream_options *o, const char *url) {
    st_stream_options_init(o);
    o->url = url;
    o->seed = 7;
    o->shuffle_shards = 4;
    o->memory_budget = 24u << 20;
    o->part_size = 16 * 1024;
    o->connections = 4;
    o->epochs = 1;
    o->backoff_base = 0.01;
}

TEST(exactly_once_and_deterministic) {
    struct st_stream_options o;
    base_opts(&o, g_dir);
    static struct run a, b, c, d, e;
    run_stream(&o, -1, &a);
    CHECKF(a.rc == ST_OK, "%s", a.err.msg);
    CHECKF(exactly_once(&a, g_total), "%d samples", a.n);
    CHECK(a.st.mem_peak <= o.memory_budget && a.st.mem_peak > 0);
    CHECK(a.st.shards_done == (uint64_t)g_shards && a.st.samples == (uint64_t)g_total);
    /* same seed, other threads and part sizes: same order */
    o.threads = 2;
    o.part_size = 4096;
    o.connections = 1;
    run_stream(&o, -1, &b);
    CHECK(b.n == a.n && memcmp(a.ids, b.ids, sizeof(int64_t) * (size_t)a.n) == 0);
    /* another seed: another order; the next epoch: another order */
    base_opts(&o, g_dir);
    o.seed = 8;
    run_stream(&o, -1, &c);
    CHECK(exactly_once(&c, g_total) && memcmp(a.ids, c.ids, sizeof(int64_t) * (size_t)a.n) != 0);
    base_opts(&o, g_dir);
    o.epoch = 1;
    run_stream(&o, -1, &d);
    CHECK(exactly_once(&d, g_total) && memcmp(a.ids, d.ids, sizeof(int64_t) * (size_t)a.n) != 0);
    /* interleaving: consecutive samples come from different shards often */
    int switches = 0;
    for (int i = 1; i < a.n; i++)
        switches += a.ids[i] / g_per != a.ids[i - 1] / g_per;
    CHECKF(switches > a.n / 2, "%d shard switches in %d samples", switches, a.n);
    /* no shuffle: listing order, ids ascending */
    base_opts(&o, g_dir);
    o.shuffle = 0;
    o.shuffle_shards = 0;
    run_stream(&o, -1, &e);
    int ascending = e.n == g_total;
    for (int i = 0; i < e.n && ascending; i++)
        ascending = e.ids[i] == i;
    CHECK(ascending);
}

TEST(partitions) {
    static struct run r[4];
    char *seen = calloc((size_t)g_total, 1);
    int total = 0, dup = 0;
    for (int k = 0; k < 4; k++) {
        struct st_stream_options o;
        base_opts(&o, g_dir);
        /* ranks 0..1 of 2 with 2 workers each = 4 partitions */
        o.world_size = 2;
        o.rank = k / 2;
        o.num_workers = 2;
        o.worker = k % 2;
        run_stream(&o, -1, &r[k]);
        CHECKF(r[k].rc == ST_OK, "%s", r[k].err.msg);
        CHECK(r[k].n > 0);
        for (int i = 0; i < r[k].n; i++) {
            if (seen[r[k].ids[i]]) dup++;
            seen[r[k].ids[i]] = 1;
        }
        total += r[k].n;
    }
    CHECK(dup == 0 && total == g_total);
    free(seen);
}

TEST(epochs) {
    struct st_stream_options o;
    base_opts(&o, g_dir);
    o.epochs = 2;
    struct st_stream *s;
    struct st_error err;
    CHECK(st_stream_open(&s, &o, &err) == ST_OK);
    int n0 = 0, n1 = 0, ends = 0;
    struct st_sample smp;
    enum st_status rc;
    while ((rc = st_stream_next(s, &smp, &err)) == ST_OK)
        n0++;
    CHECK(rc == ST_STREAM_END);
    while ((rc = st_stream_next(s, &smp, &err)) == ST_OK)
        n1++;
    CHECK(rc == ST_STREAM_END);
    for (int i = 0; i < 3; i++)
        ends += st_stream_next(s, &smp, &err) == ST_STREAM_END;
    CHECK(n0 == g_total && n1 == g_total && ends == 3);
    struct st_stream_stats st;
    st_stream_stats(s, &st);
    CHECK(st.epoch == 2 && st.samples == (uint64_t)(2 * g_total));
    st_stream_close(s);
}

TEST(resume) {
    struct st_stream_options o;
    base_opts(&o, g_dir);
    static struct run full, first, rest;
    run_stream(&o, -1, &full);
    CHECK(exactly_once(&full, g_total));
    int stops[] = {0, 1, 137, 250, 251, 999, 1500, 2400, g_total - 1, g_total};
    for (size_t k = 0; k < sizeof stops / sizeof *stops; k++) {
        base_opts(&o, g_dir);
        run_stream(&o, stops[k], &first);
        CHECK(first.rc == ST_OK && first.n == stops[k]);
        base_opts(&o, g_dir);
        o.resume_state = first.state;
        o.shuffle_shards = 4;
        run_stream(&o, -1, &rest);
        CHECKF(rest.rc == ST_OK, "%s", rest.err.msg);
        CHECKF(first.n + rest.n == g_total, "stop %d: %d + %d", stops[k], first.n, rest.n);
        int same = first.n + rest.n == g_total &&
                   memcmp(full.ids, first.ids, sizeof(int64_t) * (size_t)first.n) == 0 &&
                   memcmp(full.ids + first.n, rest.ids, sizeof(int64_t) * (size_t)rest.n) == 0;
        CHECKF(same, "stop %d: resumed sequence differs", stops[k]);
    }
    /* a state for other options is refused with a message */
    base_opts(&o, g_dir);
    run_stream(&o, 10, &first);
    o.resume_state = first.state;
    o.world_size = 2;
    run_stream(&o, -1, &rest);
    CHECK(rest.rc == ST_ERR_ARG);
    CHECKF(strstr(rest.err.msg, "cannot resume from the state record") != NULL, "%s", rest.err.msg);
    base_opts(&o, g_dir);
    o.resume_state = "{\"streamtune_stream\": 1}";
    run_stream(&o, -1, &rest);
    CHECK(rest.rc == ST_ERR_ARG);
}

/* Resuming reads only what was not consumed: on plain JSONL shards, the bytes the resumed run
 * fetches equal the dataset size minus the bytes before each slot's offset and the shards done. */
TEST(resume_bytes) {
    char *dir = td_tmpdir("plain");
    int kinds[] = {TD_JSONL, TD_ZST};
    CHECK(td_make_dataset(dir, 6, 300, kinds, 2) == 0);
    struct st_stream_options o;
    base_opts(&o, dir);
    o.shuffle_shards = 3;
    o.prefetch_shards = 0;
    static struct run first, rest;
    struct st_shard_list l;
    struct st_error err;
    CHECK(st_data_list(&o, &l, &err) == ST_OK);
    uint64_t total = 0;
    for (uint32_t i = 0; i < l.n; i++)
        total += l.shards[i].size;
    int stops[] = {200, 450, 1000};
    for (int k = 0; k < 3; k++) {
        base_opts(&o, dir);
        o.shuffle_shards = 3;
        o.prefetch_shards = 0;
        o.shuffle_buffer = 0; /* byte accounting by slot offsets (the buffer test is resume) */
        run_stream(&o, stops[k], &first);
        o.resume_state = first.state;
        run_stream(&o, -1, &rest);
        CHECK(rest.rc == ST_OK && first.n + rest.n == 1800);
        /* consumed = shards finished + each slot's offset; finished shards = the plan positions
         * below "next" that are not slots. The plan is the same permutation the stream made:
         * recover which shards the slots hold by their positions, and the rest by elimination
         * (sizes of finished shards = total - sizes of slots' shards - unstarted shards). */
        cJSON *j = cJSON_Parse(first.state);
        cJSON *slots = cJSON_GetObjectItem(j, "slots");
        int next = cJSON_GetObjectItem(j, "next")->valueint;
        /* the resumed stream reads: every shard at plan position >= next whole, and each slot
         * from its offset. Its stats tell shards_done; the bytes must equal exactly
         * sum(unstarted) + sum(slot size - off). We get sizes per plan position from a stream of
         * the same options that records each shard's first sample. */
        struct st_stream *s;
        struct st_stream_options po;
        base_opts(&po, dir);
        po.shuffle_shards = 1; /* same shard permutation (it depends on seed and epoch only) */
        po.shuffle_buffer = 0;
        uint32_t order[16];
        int no = 0;
        CHECK(st_stream_open(&s, &po, &err) == ST_OK);
        struct st_sample smp;
        while (st_stream_next(s, &smp, &err) == ST_OK)
            if (no == 0 || order[no - 1] != smp.shard) order[no++] = smp.shard;
        st_stream_close(s);
        CHECK(no == 6);
        uint64_t expect = 0;
        for (int pos = next; pos < no; pos++)
            expect += l.shards[order[pos]].size;
        cJSON *sl;
        cJSON_ArrayForEach(sl, slots) {
            int pos = cJSON_GetArrayItem(sl, 0)->valueint;
            uint64_t off = (uint64_t)cJSON_GetArrayItem(sl, 1)->valuedouble;
            expect += l.shards[order[pos]].size - off;
        }
        CHECKF(rest.st.bytes_fetched == expect,
               "stop %d: resumed run fetched %llu bytes, expected %llu (dataset %llu)", stops[k],
               (unsigned long long)rest.st.bytes_fetched, (unsigned long long)expect,
               (unsigned long long)total);
        CHECK(expect < total);
        cJSON_Delete(j);
    }
    st_shard_list_free(&l);
    td_rm_rf(dir);
    free(dir);
}

TEST(index_manifest) {
    char *dir = td_tmpdir("idx");
    int kinds[] = {TD_ZST, TD_TAR, TD_GZ};
    CHECK(td_make_dataset(dir, 5, 100, kinds, 3) == 0);
    char idx[600];
    snprintf(idx, sizeof idx, "%s/index.json", dir);
    struct st_stream_options o;
    base_opts(&o, dir);
    struct st_error err;
    CHECK(st_index_write(&o, NULL, idx, NULL, NULL, &err) == ST_OK);
    struct st_shard_list l;
    base_opts(&o, idx);
    CHECK(st_data_list(&o, &l, &err) == ST_OK);
    CHECK(l.n == 5 && l.from_index && l.shards[0].samples == 100 && l.shards[0].sha256[0]);
    CHECK(strstr(l.shards[1].url, dir) == l.shards[1].url); /* relative names resolved */
    st_shard_list_free(&l);
    static struct run r;
    run_stream(&o, -1, &r);
    CHECKF(r.rc == ST_OK && exactly_once(&r, 500), "%s", r.err.msg);
    /* with the counts of an index, ranks get equal sample counts: 3 ranks of 500 samples in 5
     * shards of 100 read 166/167/167, disjoint, covering the dataset; shards at the boundaries
     * are read in part by both neighbours (and their transfers cancelled) */
    size_t live = st_alloc_live_count();
    for (int epoch = 0; epoch < 2; epoch++) {
        static char seen[500];
        memset(seen, 0, sizeof seen);
        int total = 0, bad = 0;
        for (int rank = 0; rank < 3; rank++) {
            base_opts(&o, idx);
            o.world_size = 3;
            o.rank = rank;
            o.epoch = epoch;
            o.shuffle_shards = 2;
            run_stream(&o, -1, &r);
            CHECKF(r.rc == ST_OK, "%s", r.err.msg);
            CHECKF(r.n == (rank == 0 ? 166 : 167), "rank %d: %d samples", rank, r.n);
            for (int i = 0; i < r.n; i++) {
                if (r.ids[i] < 0 || r.ids[i] >= 500 || seen[r.ids[i]])
                    bad++;
                else
                    seen[r.ids[i]] = 1;
            }
            total += r.n;
            /* resume inside the partition gives the same sequence */
            static struct run full, part1, part2;
            full = r;
            run_stream(&o, 77, &part1);
            o.resume_state = part1.state;
            run_stream(&o, -1, &part2);
            CHECKF(part2.rc == ST_OK && part1.n + part2.n == full.n &&
                       memcmp(full.ids, part1.ids, sizeof(int64_t) * 77) == 0 &&
                       memcmp(full.ids + 77, part2.ids, sizeof(int64_t) * (size_t)part2.n) == 0,
                   "rank %d: resumed partition differs (%s)", rank, part2.err.msg);
        }
        CHECKF(total == 500 && bad == 0, "epoch %d: %d samples, %d repeated", epoch, total, bad);
    }
    CHECKF(st_alloc_live_count() == live, "%zu allocations leaked", st_alloc_live_count() - live);
    base_opts(&o, dir);
    o.partition_by_samples = 1;
    run_stream(&o, -1, &r);
    CHECK(r.rc == ST_ERR_ARG);
    CHECKF(strstr(r.err.msg, "--partition samples needs every shard's record count") != NULL, "%s",
           r.err.msg);
    base_opts(&o, idx);
    /* the directory listing skips index.json; a changed shard is caught by its hash */
    char path[700];
    snprintf(path, sizeof path, "%s/shard-001.tar", dir);
    FILE *f = fopen(path, "r+b");
    fseek(f, 600, SEEK_SET);
    fputc('#', f);
    fclose(f);
    run_stream(&o, -1, &r);
    CHECK(r.rc == ST_ERR_FORMAT);
    CHECKF(strstr(r.err.msg, "shard-001.tar: SHA-256") != NULL, "%s", r.err.msg);
    td_rm_rf(dir);
    free(dir);
}

/* The sample shuffle buffer: one shard of 3000 records comes out shuffled (not in file order),
 * exactly once, no record earlier than B places before its file position; resuming mid-buffer
 * and in the drain at the end of the epoch continues the sequence; another --shuffle-buffer is
 * refused. */
TEST(shuffle_buffer) {
    char *dir = td_tmpdir("one");
    char p[600];
    struct tbuf raw = {0};
    const int n = 3000, B = 500;
    for (int i = 0; i < n; i++)
        td_record(&raw, i, 0, i), tb_add(&raw, "\n", 1);
    snprintf(p, sizeof p, "%s/one.jsonl", dir);
    td_write(p, raw.p, raw.n);
    struct st_stream_options o;
    static struct run plain, full, first, rest;
    base_opts(&o, p);
    o.shuffle_buffer = 0;
    run_stream(&o, -1, &plain);
    int in_order = plain.n == n;
    for (int i = 0; i < plain.n && in_order; i++)
        in_order = plain.ids[i] == i;
    CHECK(in_order);
    base_opts(&o, p);
    o.shuffle_buffer = B;
    run_stream(&o, -1, &full);
    CHECK(exactly_once(&full, n));
    int moved = 0, early = 0;
    for (int i = 0; i < full.n; i++) {
        moved += full.ids[i] != i;
        early += full.ids[i] > i + B; /* emitted before it could have entered the buffer */
    }
    CHECKF(moved > n / 2 && early == 0, "moved %d, early %d", moved, early);
    int stops[] = {1, 499, 500, 1234, n - B, n - 7};
    for (size_t k = 0; k < sizeof stops / sizeof *stops; k++) {
        run_stream(&o, stops[k], &first);
        struct st_stream_options r = o;
        r.resume_state = first.state;
        run_stream(&r, -1, &rest);
        int same = first.rc == ST_OK && rest.rc == ST_OK && first.n + rest.n == n &&
                   memcmp(full.ids, first.ids, sizeof(int64_t) * (size_t)first.n) == 0 &&
                   memcmp(full.ids + first.n, rest.ids, sizeof(int64_t) * (size_t)rest.n) == 0;
        CHECKF(same, "stop %d: %d + %d, resumed sequence differs (%s)", stops[k], first.n,
               rest.n, rest.err.msg);
    }
    struct st_stream_options r = o;
    r.resume_state = first.state;
    r.shuffle_buffer = B + 1;
    run_stream(&r, -1, &rest);
    CHECKF(rest.rc == ST_ERR_ARG && strstr(rest.err.msg, "--shuffle-buffer"), "%s",
           rest.err.msg);
    free(raw.p);
    td_rm_rf(dir);
    free(dir);
}

TEST(errors) {
    char *dir = td_tmpdir("bad");
    char p[600];
    struct st_stream_options o;
    static struct run r;
    /* corrupt gzip */
    struct tbuf raw = {0}, gz = {0};
    for (int i = 0; i < 2000; i++)
        td_record(&raw, i, 0, i), tb_add(&raw, "\n", 1);
    td_gzip(raw.p, raw.n, &gz);
    for (size_t i = 12; i < 40; i++)
        gz.p[i] ^= 0x5a;
    snprintf(p, sizeof p, "%s/broken.jsonl.gz", dir);
    td_write(p, gz.p, gz.n);
    base_opts(&o, p);
    run_stream(&o, -1, &r);
    CHECK(r.rc == ST_ERR_FORMAT);
    CHECKF(strstr(r.err.msg, "broken.jsonl.gz: corrupt gzip data near compressed byte") != NULL &&
               !strchr(r.err.msg, '\n'),
           "%s", r.err.msg);
    /* corrupt tar */
    struct tbuf t = {0};
    td_tar_member(&t, "a.txt", "hello", 5);
    td_tar_member(&t, "b.txt", "world", 5);
    t.p[1024 + 130] ^= 0x11; /* size field of the second header */
    snprintf(p, sizeof p, "%s/broken.tar", dir);
    td_write(p, t.p, t.n);
    base_opts(&o, p);
    run_stream(&o, -1, &r);
    CHECK(r.rc == ST_ERR_FORMAT);
    CHECKF(strstr(r.err.msg, "broken.tar: corrupt tar: bad header checksum at byte offset 1024") !=
               NULL,
           "%s", r.err.msg);
    /* a JSONL record that is not JSON */
    snprintf(p, sizeof p, "%s/bad.jsonl", dir);
    td_write(p, "{\"id\": 1}\n{\"id\": 2,,}\n", 22);
    base_opts(&o, p);
    run_stream(&o, -1, &r);
    CHECK(r.rc == ST_ERR_FORMAT && r.n == 1);
    CHECKF(strstr(r.err.msg, "bad.jsonl: line 2 (byte offset 19): invalid JSON") != NULL, "%s",
           r.err.msg);
    /* missing file, bad scheme, empty directory, tiny budget */
    snprintf(p, sizeof p, "%s/nope.jsonl", dir);
    base_opts(&o, p);
    run_stream(&o, -1, &r);
    CHECK(r.rc == ST_ERR_IO);
    CHECKF(strstr(r.err.msg, "nope.jsonl: cannot open: No such file") != NULL, "%s", r.err.msg);
    base_opts(&o, "ftp://example.com/x.jsonl");
    run_stream(&o, -1, &r);
    CHECK(r.rc == ST_ERR_ARG);
    CHECKF(strstr(r.err.msg, "ftp://example.com/x.jsonl: bad URL: unsupported scheme") != NULL,
           "%s", r.err.msg);
    snprintf(p, sizeof p, "%s/empty", dir);
    mkdir(p, 0755);
    base_opts(&o, p);
    run_stream(&o, -1, &r);
    CHECK(r.rc == ST_ERR_IO);
    CHECKF(strstr(r.err.msg, "no shards in this directory") != NULL, "%s", r.err.msg);
    base_opts(&o, g_dir);
    o.memory_budget = 2u << 20;
    run_stream(&o, -1, &r);
    CHECK(r.rc == ST_ERR_ARG);
    CHECKF(strstr(r.err.msg, "--stream-memory 2 MiB is too small") != NULL, "%s", r.err.msg);
    /* a record larger than the budget allows */
    struct tbuf big = {0};
    tb_add(&big, "{\"t\": \"", 7);
    for (int i = 0; i < 900000; i++)
        tb_add(&big, "x", 1);
    tb_add(&big, "\"}\n", 3);
    snprintf(p, sizeof p, "%s/big.jsonl", dir);
    td_write(p, big.p, big.n);
    base_opts(&o, p);
    o.memory_budget = 8u << 20;
    o.connections = 1;
    o.shuffle_shards = 1;
    o.prefetch_shards = 0;
    run_stream(&o, -1, &r);
    CHECK(r.rc == ST_ERR_FORMAT);
    CHECKF(strstr(r.err.msg, "big.jsonl: line 1 (byte offset 0) is longer than") != NULL, "%s",
           r.err.msg);
    free(raw.p);
    free(gz.p);
    free(t.p);
    free(big.p);
    td_rm_rf(dir);
    free(dir);
}

TEST(no_leaks) {
    size_t live = st_alloc_live_count();
    struct st_stream_options o;
    base_opts(&o, g_dir);
    static struct run r;
    run_stream(&o, 777, &r); /* closed mid-epoch with transfers in flight */
    CHECK(r.rc == ST_OK);
    CHECKF(st_alloc_live_count() == live, "%zu allocations leaked", st_alloc_live_count() - live);
}

/* ---- the `streamtune data` command (run as: test_data_stream --cli path/to/streamtune) ---- */

static const char *g_cli;

/* Run the CLI with args (a shell word list without quotes); stdout into out, stderr into err. */
static int cli(const char *args, struct tbuf *out, char *err, size_t err_cap) {
    char errf[600], cmd[4096];
    snprintf(errf, sizeof errf, "%s/cli-stderr", g_dir);
    snprintf(cmd, sizeof cmd, "%s %s 2>%s", g_cli, args, errf);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char buf[65536];
    size_t n;
    memset(out, 0, sizeof *out);
    while ((n = fread(buf, 1, sizeof buf, p)) > 0)
        tb_add(out, buf, n);
    if (!out->p) tb_add(out, "", 0);
    int st = pclose(p);
    FILE *f = fopen(errf, "r");
    size_t k = f ? fread(err, 1, err_cap - 1, f) : 0;
    err[k] = '\0';
    if (f) fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int count_lines(const struct tbuf *b) {
    int n = 0;
    for (size_t i = 0; i < b->n; i++)
        n += b->p[i] == '\n';
    return n;
}

TEST(cli_commands) {
    struct tbuf out, a, b2;
    char err[4096], args[2048], state[600], idx[600];
    snprintf(state, sizeof state, "%s/state.json", g_dir);
    snprintf(idx, sizeof idx, "%s/cli-index.json", g_dir);
    snprintf(args, sizeof args, "data ls %s --json", g_dir);
    CHECKF(cli(args, &out, err, sizeof err) == 0, "%s", err);
    cJSON *j = cJSON_Parse((const char *)out.p);
    CHECK(j && cJSON_GetObjectItem(j, "count")->valueint == g_shards);
    cJSON_Delete(j);
    free(out.p);
    /* cat: listing order by default */
    snprintf(args, sizeof args, "data cat %s --limit 5", g_dir);
    CHECK(cli(args, &out, err, sizeof err) == 0);
    CHECK(count_lines(&out) == 5 && strncmp((const char *)out.p, "{\"id\": 0, ", 10) == 0);
    free(out.p);
    /* cat with --state-out, then --resume: the two parts make the whole epoch */
    const char *so = "--shuffle --seed 7 --shuffle-shards 4 --part-size 16K --stream-memory 32M";
    snprintf(args, sizeof args, "data cat %s %s", g_dir, so);
    CHECK(cli(args, &out, err, sizeof err) == 0 && count_lines(&out) == g_total);
    snprintf(args, sizeof args, "data cat %s %s --limit 1234 --state-out %s", g_dir, so, state);
    CHECK(cli(args, &a, err, sizeof err) == 0 && count_lines(&a) == 1234);
    snprintf(args, sizeof args, "data cat %s %s --resume %s --stats", g_dir, so, state);
    CHECKF(cli(args, &b2, err, sizeof err) == 0, "%s", err);
    CHECKF(strstr(err, "samples 1766 in") != NULL, "stats: %s", err);
    CHECK(a.n + b2.n == out.n && memcmp(out.p, a.p, a.n) == 0 &&
          memcmp(out.p + a.n, b2.p, b2.n) == 0);
    free(out.p);
    free(a.p);
    free(b2.p);
    /* index, then ls and bench through it */
    snprintf(args, sizeof args, "data index %s -o %s --json", g_dir, idx);
    CHECKF(cli(args, &out, err, sizeof err) == 0, "%s", err);
    j = cJSON_Parse((const char *)out.p);
    CHECKF(j && cJSON_IsString(cJSON_GetObjectItem(j, "out")) &&
               strcmp(cJSON_GetObjectItem(j, "out")->valuestring, idx) == 0,
           "data index --json: %s", (const char *)out.p);
    cJSON_Delete(j);
    free(out.p);
    snprintf(args, sizeof args, "data ls %s --json", idx);
    CHECK(cli(args, &out, err, sizeof err) == 0);
    j = cJSON_Parse((const char *)out.p);
    CHECK(j && cJSON_GetObjectItem(j, "samples") &&
          cJSON_GetObjectItem(j, "samples")->valueint == g_total);
    cJSON_Delete(j);
    free(out.p);
    snprintf(args, sizeof args, "data bench %s --json", idx);
    CHECK(cli(args, &out, err, sizeof err) == 0);
    j = cJSON_Parse((const char *)out.p);
    CHECK(j && cJSON_GetObjectItem(j, "samples")->valueint == g_total);
    CHECK(j && cJSON_GetObjectItem(j, "first_sample_s")->valuedouble >= 0);
    cJSON_Delete(j);
    free(out.p);
    /* an index written outside the dataset's folder: its shard paths still resolve */
    {
        char idx2[700];
        snprintf(idx2, sizeof idx2, "%s-outside.json", g_dir);
        snprintf(args, sizeof args, "data index %s -o %s", g_dir, idx2);
        CHECKF(cli(args, &out, err, sizeof err) == 0, "%s", err);
        free(out.p);
        snprintf(args, sizeof args, "data cat %s", idx2);
        CHECKF(cli(args, &out, err, sizeof err) == 0 && count_lines(&out) == g_total,
               "index outside the folder: %s", err);
        free(out.p);
        unlink(idx2);
    }
    /* a shard that is a symlink (a Hugging Face snapshot links train.jsonl to a blob) keeps its
     * own name in the index: its format and split come from it */
    {
        char sub[600], blob[700], link[700], ix[700];
        snprintf(sub, sizeof sub, "%s-snap", g_dir);
        snprintf(blob, sizeof blob, "%s/blob0", sub);
        snprintf(link, sizeof link, "%s/train.jsonl", sub);
        snprintf(ix, sizeof ix, "%s/index.json", sub);
        CHECK(mkdir(sub, 0755) == 0);
        td_write(blob, "{\"a\": 1}\n{\"a\": 2}\n", 18);
        CHECK(symlink("blob0", link) == 0);
        snprintf(args, sizeof args, "data index %s -o %s", link, ix);
        CHECKF(cli(args, &out, err, sizeof err) == 0, "%s", err);
        free(out.p);
        char *text = NULL;
        size_t tl = 0;
        struct st_error e2;
        CHECK(st_read_file(ix, 1 << 20, &text, &tl, &e2) == ST_OK);
        CHECKF(text && strstr(text, "\"url\": \"train.jsonl\""), "%s", text ? text : "");
        st_free(text);
        snprintf(args, sizeof args, "data cat %s", ix);
        CHECKF(cli(args, &out, err, sizeof err) == 0 && count_lines(&out) == 2, "%s", err);
        free(out.p);
        unlink(ix);
        unlink(link);
        unlink(blob);
        rmdir(sub);
    }
    /* --epochs N reads N epochs (each epoch's end is not the stream's) */
    snprintf(args, sizeof args, "data cat %s --epochs 3", idx);
    CHECKF(cli(args, &out, err, sizeof err) == 0, "%s", err);
    CHECKF(count_lines(&out) == 3 * g_total, "%d lines", count_lines(&out));
    free(out.p);
    snprintf(args, sizeof args, "data bench %s --epochs 2 --json", idx);
    CHECK(cli(args, &out, err, sizeof err) == 0);
    j = cJSON_Parse((const char *)out.p);
    CHECK(j && cJSON_GetObjectItem(j, "samples")->valueint == 2 * g_total);
    cJSON_Delete(j);
    free(out.p);
    unlink(idx);
    /* a local shard that changed after the index was written: an error, not its first bytes */
    {
        char sub[600], f[700], fi[700];
        snprintf(sub, sizeof sub, "%s/grow", g_dir);
        CHECK(mkdir(sub, 0755) == 0);
        snprintf(f, sizeof f, "%s/a.jsonl", sub);
        snprintf(fi, sizeof fi, "%s/index.json", sub);
        td_write(f, "{\"a\": 1}\n", 9);
        snprintf(args, sizeof args, "data index %s -o %s", sub, fi);
        CHECKF(cli(args, &out, err, sizeof err) == 0, "%s", err);
        free(out.p);
        FILE *fp = fopen(f, "ab");
        CHECK(fp && fputs("{\"a\": 2}\n", fp) >= 0 && fclose(fp) == 0);
        snprintf(args, sizeof args, "data cat %s", fi);
        CHECK(cli(args, &out, err, sizeof err) == 1);
        CHECKF(strstr(err, "a.jsonl: the file is 18 bytes, not the 9 listed") != NULL, "%s", err);
        free(out.p);
        /* a dangling link in a directory (a dataset not fetched): an error naming it */
        unlink(fi);
        unlink(f);
        snprintf(f, sizeof f, "%s/b.jsonl", sub);
        CHECK(symlink("/nonexistent/b.jsonl", f) == 0);
        snprintf(args, sizeof args, "data ls %s", sub);
        CHECK(cli(args, &out, err, sizeof err) == 1);
        CHECKF(strstr(err, "b.jsonl: cannot open") != NULL, "%s", err);
        free(out.p);
        unlink(f);
        rmdir(sub);
    }
    /* errors: one line, exit codes 1 (runtime) and 2 (usage) */
    snprintf(args, sizeof args, "data cat %s/nope.jsonl", g_dir);
    CHECK(cli(args, &out, err, sizeof err) == 1);
    CHECKF(strstr(err, "streamtune: error: ") == err && strstr(err, "nope.jsonl: cannot open") &&
               count_lines(&(struct tbuf){(uint8_t *)err, strlen(err), 0}) == 1,
           "%s", err);
    free(out.p);
    snprintf(args, sizeof args, "data cat %s --json", "s3://x");
    CHECK(cli(args, &out, err, sizeof err) == 1);
    CHECKF(strstr((const char *)out.p, "\"error\"") != NULL, "%s", (const char *)out.p);
    free(out.p);
    CHECK(cli("data cat", &out, err, sizeof err) == 2);
    free(out.p);
    CHECK(cli("data frob x", &out, err, sizeof err) == 2);
    free(out.p);
    snprintf(args, sizeof args, "data cat %s --stream-memory lots", g_dir);
    CHECK(cli(args, &out, err, sizeof err) == 2);
    CHECKF(strstr(err, "--stream-memory: expected a size") != NULL, "%s", err);
    free(out.p);
    CHECK(cli("data --help", &out, err, sizeof err) == 0 &&
          strstr((const char *)out.p, "--stream-memory"));
    free(out.p);
}

int main(int argc, char **argv) {
    g_dir = td_tmpdir("mixed");
    int kinds[] = {TD_JSONL, TD_GZ, TD_ZST, TD_TAR};
    if (!g_dir || td_make_dataset(g_dir, g_shards, g_per, kinds, 4)) {
        fprintf(stderr, "cannot write the test dataset\n");
        return 1;
    }
    g_total = g_shards * g_per;
    if (argc > 2 && strcmp(argv[1], "--cli") == 0) {
        g_cli = argv[2];
        RUN(cli_commands);
        td_rm_rf(g_dir);
        free(g_dir);
        return test_finish();
    }
    RUN(exactly_once_and_deterministic);
    RUN(partitions);
    RUN(epochs);
    RUN(resume);
    RUN(resume_bytes);
    RUN(shuffle_buffer);
    RUN(index_manifest);
    RUN(errors);
    RUN(no_leaks);
    td_rm_rf(g_dir);
    free(g_dir);
    return test_finish();
}
