/* stream.c: the CloudStreamingDataset stream: epoch plan, slots, shard readers, the I/O thread
 * (libcurl multi + file reads), parse threads, resume state and statistics.
 *
 * DESIGN
 * - Order. Epoch e's shard order is a Fisher-Yates permutation from (seed, e); partition p of P
 *   takes positions i with i % P == p (its "plan"). K slots read plan shards; each next() draws
 *   j = rng() mod n_slots and returns slot j's next record; an exhausted slot is replaced in
 *   place by the next plan shard (or removed) and the draw repeated. Everything that decides the
 *   order is content (records, ends of shards), never timing.
 * - Readers. A reader reads one shard from a start point (compressed byte offset at a frame
 *   boundary, decompressed offset, records to skip, record index there). The I/O thread fetches
 *   its bytes as parts (ranged GETs / preads) into the reader's part list; a parse thread
 *   decompresses and splits the parts in order into sample nodes on the reader's queue; the
 *   consumer pops nodes. Each record remembers the point after it, which becomes the slot's
 *   resume point when the consumer takes it.
 * - Memory. Every reader (K slots + L look-ahead) has the same quota q: a quarter for parts in
 *   flight, a quarter for the decoder, half for parsed records plus the parser's carry buffer.
 *   Records are limited to q/8, so one more record never breaks the half. The consumer's current
 *   record is covered by one extra record reserve. The budget is thus split before any byte
 *   moves: mem_peak <= budget always, and no reader can starve another (no deadlock: each
 *   reader only waits for its own consumer).
 * - Locking. One mutex guards the reader lists, queues and counters; the I/O thread alone
 *   touches parts that are queued or in flight, a parse thread alone the reader it claimed
 *   (reader.parsing) and DONE parts at the head of its list. Condition variables: cv_data
 *   (consumer), cv_parse (parse threads); the I/O thread is woken with curl_multi_wakeup. */
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "data/internal.h"

#define NODE_OVERHEAD_MAX (32u * 1024)
#define CONN_OVERHEAD (256u * 1024) /* curl buffers per connection, reserved off the top */
#define MIN_QUOTA (1u << 20)
#define OUTBUF_SIZE (128u * 1024)
#define FIRST_PART (1u << 20)

enum { P_QUEUED = 0, P_RUNNING, P_WAIT, P_DONE };

struct part {
    struct part *next;
    struct reader *r;
    uint64_t off, len; /* range asked; len shrinks to what exists at the end of an object */
    uint8_t *buf;
    size_t mem;   /* bytes reserved */
    uint64_t got; /* valid bytes from off */
    int state, attempts, hashed;
    double retry_at;
    size_t consumed; /* parse position */
    CURL *h;
    struct fetch_xfer x;
};

/* One entry of an epoch's plan: a shard and the records of it this partition reads. */
struct plan_item {
    uint32_t shard;
    uint64_t first, end; /* record range [first, end); end = UINT64_MAX: to the end */
};

struct node {
    struct node *next;
    size_t mem;
    struct st_sample s;
    uint64_t a_off, a_doff, a_skip, a_index; /* resume point after this record */
};

struct reader {
    struct reader *next; /* in the look-ahead list */
    uint32_t shard;
    int64_t epoch;
    uint32_t pos; /* position in its epoch's plan */
    struct fetch_target t;
    char etag[128]; /* learned from the first answer when the listing had none */
    enum st_shard_format fmt;
    char *name; /* for messages and keys */
    size_t name_len;
    /* start point */
    uint64_t s_off, s_doff, s_skip, s_index;
    /* resume point: after the last record the consumer took */
    uint64_t r_off, r_doff, r_skip, r_index;
    /* fetching (I/O thread) */
    uint64_t fetch_off;
    int fetch_eof;
    struct part *parts, *parts_tail;
    size_t parts_mem;
    int n_parts;
    /* parsing (the claiming parse thread) */
    int parsing, parse_init, parse_done, parse_done_local;
    enum comp comp;
    struct decomp dec;
    int dec_on;
    uint8_t *outbuf;
    size_t out_len, out_pos;
    int out_full;
    struct jsonl jl;
    struct tar tr;
    uint64_t in_off;                    /* compressed offset of the next byte into the decoder */
    uint64_t rs_off, rs_doff, rs_index; /* current restart point (compressed) */
    int boundary; /* a frame ended: commit a restart point when the parser is idle */
    uint64_t boundary_off;
    uint64_t skip_left;
    struct sha256 sha;
    int hashing;
    size_t parser_mem, dec_mem;
    uint64_t n_records; /* records seen (for the index check) */
    uint64_t limit;     /* stop before this record index (sample partitioning) */
    int limit_hit;      /* reached it: the rest of the shard is not ours (under the lock) */
    int limit_local;    /* the same, as the parse thread saw it (parse-thread owned) */
    /* queue */
    struct node *q_head, *q_tail;
    size_t q_mem;
    /* failure */
    int failed;
    struct st_error err;
};

struct st_stream {
    struct st_stream_options o;
    struct dataset ds;
    struct fetch_policy pol;
    /* plan */
    int P, p;                 /* partitions, ours */
    int by_samples;           /* partition by record counts (an index gives them) */
    int64_t epoch, end_epoch; /* current epoch; stop before end_epoch (INT64_MAX: never) */
    struct plan_item *plan;   /* this epoch's plan */
    uint32_t plan_n;
    struct plan_item *plan2; /* next epoch's (for look-ahead) */
    uint32_t plan2_n;
    int64_t plan2_epoch;
    uint32_t next_pos; /* next plan position to put in a slot */
    struct st_rng rng;
    int finished; /* past end_epoch */
    /* readers */
    int K, L;
    struct reader **slots;
    int n_slots;
    struct reader *la_head, *la_tail; /* look-ahead readers in plan order */
    int n_la;
    int64_t la_epoch; /* where the next look-ahead reader comes from */
    int la_done;      /* fill_lookahead found nothing more */
    uint32_t la_pos;
    struct reader *want; /* the reader the consumer waits for */
    /* budget */
    size_t quota, part_size, max_rec, node_max, half;
    int wlog_max;
    atomic_size_t mem_used, mem_peak;
    /* consumer */
    struct node *cur;
    /* sample shuffle buffer (consumer side): B slots, nbuf filled, buf_mem of buf_cap bytes;
     * draining: the raw stream ended its epoch, empty the buffer before reporting it */
    int B, nbuf, draining;
    enum st_status buf_rc; /* an error the raw stream gave while filling: after the buffer */
    struct st_error buf_err;
    struct node **buf;
    size_t buf_mem, buf_cap;
    struct st_rng brng;
    int failed;
    struct st_error fail_err;
    /* threads */
    pthread_mutex_t mu;
    pthread_cond_t cv_data, cv_parse;
    pthread_t io_thread, *parse_threads;
    int n_parse_threads, io_started;
    int stop, parse_waiting;
    CURLM *multi;
    CURL **handles;
    int n_handles, n_free;
    CURL **free_handles;
    struct st_rng jitter;
    /* stats */
    struct st_stream_stats st;
    double t_open;
    int first_sample_unset;
};

/* ---- options ---- */

void st_stream_options_init(struct st_stream_options *o) {
    memset(o, 0, sizeof *o);
    o->shuffle = 1;
    o->seed = 0;
    o->shuffle_shards = 0; /* 0: 8 with shuffle, 1 without */
    o->shuffle_buffer = -1; /* 1000 with shuffle, 0 without */
    o->world_size = 1;
    o->num_workers = 1;
    o->memory_budget = (size_t)512 << 20;
    o->part_size = (size_t)8 << 20;
    o->connections = 16;
    o->threads = 1;
    o->prefetch_shards = -1;
    o->max_retries = 10;
    o->backoff_base = 0.2;
    o->backoff_max = 10;
    o->retry_after_max = 30;
    o->stall_timeout = 30;
    o->connect_timeout = 10;
    o->json_check = 1;
    o->verify_hashes = 1;
}

const char st_stream_options_help[] =
    "stream options:\n"
    "  --stream-memory SIZE   memory budget of the stream (default 512M); never exceeded\n"
    "  --seed N               shuffle seed (default 0)    --no-shuffle  shards in listing order\n"
    "  --shuffle-shards K     shards read at once and interleaved (default 8)\n"
    "  --shuffle-buffer N     samples shuffled in a buffer after that (default 1000; 0: off)\n"
    "  --epoch E              first epoch (default 0)     --epochs N  stop after N epochs\n"
    "  --rank R --world-size W, --worker I --num-workers N   disjoint partition to read\n"
    "  --partition samples|shards|auto   equal sample counts per rank (needs an index; auto)\n"
    "  --connections N        parallel transfers (default 16)\n"
    "  --part-size SIZE       ranged GET size (default 8M)\n"
    "  --prefetch-shards N    look-ahead shards beyond the K being read (default K/2)\n"
    "  --parse-threads N      decompress/parse threads (default 1)\n"
    "  --retries N            retries per request (default 10); --backoff S (0.2), "
    "--backoff-max S (10)\n"
    "  --stall-timeout S      retry a transfer that stalls this long (default 30)\n"
    "  --format jsonl|tar     shard format (default: from the file name)\n"
    "  --no-json-check        do not validate JSONL records\n"
    "  --endpoint-url URL --region R --profile P   S3 settings (else AWS_* variables, "
    "~/.aws)\n"
    "  --anonymous            unsigned S3 requests (public buckets)\n";

int st_stream_option_is_flag(const char *name) {
    return strcmp(name, "no-shuffle") == 0 || strcmp(name, "shuffle") == 0 ||
           strcmp(name, "no-json-check") == 0 || strcmp(name, "anonymous") == 0;
}

enum st_status st_stream_option_set(struct st_stream_options *o, const char *name,
                                    const char *value, int *known, struct st_error *err) {
    *known = 1;
    int64_t v;
    double d;
    size_t sz;
    if (strcmp(name, "stream-memory") == 0 || strcmp(name, "part-size") == 0) {
        OPT_NEED();
        if (st_parse_size(value, &sz) || sz == 0)
            return st_errorf(err, ST_ERR_ARG, "--%s: expected a size like 512M or 2G, got '%s'",
                             name, value);
        if (name[0] == 's')
            o->memory_budget = sz;
        else
            o->part_size = sz;
        return ST_OK;
    }
    if (strcmp(name, "seed") == 0) {
        OPT_NEED();
        char *end;
        unsigned long long u = strtoull(value, &end, 10);
        if (!*value || *end || value[0] == '-')
            return st_errorf(err, ST_ERR_ARG, "--seed: expected a non-negative integer, got '%s'",
                             value);
        o->seed = u;
        return ST_OK;
    }
    if (strcmp(name, "no-shuffle") == 0) {
        o->shuffle = 0;
        return ST_OK;
    }
    if (strcmp(name, "shuffle") == 0) {
        o->shuffle = 1;
        return ST_OK;
    }
    if (strcmp(name, "shuffle-shards") == 0) OPT_INT(o->shuffle_shards, 1, 256);
    if (strcmp(name, "shuffle-buffer") == 0) OPT_INT(o->shuffle_buffer, 0, 1 << 24);
    if (strcmp(name, "epoch") == 0) OPT_INT(o->epoch, 0, INT64_MAX / 2);
    if (strcmp(name, "epochs") == 0) OPT_INT(o->epochs, 0, INT64_MAX / 2);
    if (strcmp(name, "rank") == 0) OPT_INT(o->rank, 0, 1 << 20);
    if (strcmp(name, "world-size") == 0) OPT_INT(o->world_size, 1, 1 << 20);
    if (strcmp(name, "worker") == 0) OPT_INT(o->worker, 0, 4096);
    if (strcmp(name, "num-workers") == 0) OPT_INT(o->num_workers, 1, 4096);
    if (strcmp(name, "connections") == 0) OPT_INT(o->connections, 1, 256);
    if (strcmp(name, "parse-threads") == 0) OPT_INT(o->threads, 1, 64);
    if (strcmp(name, "prefetch-shards") == 0) OPT_INT(o->prefetch_shards, 0, 256);
    if (strcmp(name, "retries") == 0) OPT_INT(o->max_retries, 0, 1000);
    if (strcmp(name, "backoff") == 0) OPT_DBL(o->backoff_base, 0, 600);
    if (strcmp(name, "backoff-max") == 0) OPT_DBL(o->backoff_max, 0, 3600);
    if (strcmp(name, "stall-timeout") == 0) OPT_DBL(o->stall_timeout, 1, 3600);
    if (strcmp(name, "connect-timeout") == 0) OPT_DBL(o->connect_timeout, 0.1, 3600);
    if (strcmp(name, "format") == 0) {
        OPT_NEED();
        if (strcmp(value, "jsonl") == 0)
            o->format = ST_FORMAT_JSONL;
        else if (strcmp(value, "tar") == 0)
            o->format = ST_FORMAT_TAR;
        else if (strcmp(value, "auto") == 0)
            o->format = ST_FORMAT_AUTO;
        else
            return st_errorf(err, ST_ERR_ARG, "--format: expected jsonl, tar or auto, got '%s'",
                             value);
        return ST_OK;
    }
    if (strcmp(name, "partition") == 0) {
        OPT_NEED();
        if (strcmp(value, "samples") == 0)
            o->partition_by_samples = 1;
        else if (strcmp(value, "shards") == 0)
            o->partition_by_samples = -1;
        else if (strcmp(value, "auto") == 0)
            o->partition_by_samples = 0;
        else
            return st_errorf(err, ST_ERR_ARG,
                             "--partition: expected samples, shards or auto, got '%s'", value);
        return ST_OK;
    }
    if (strcmp(name, "no-json-check") == 0) {
        o->json_check = -1;
        return ST_OK;
    }
    if (strcmp(name, "endpoint-url") == 0) {
        OPT_NEED();
        o->endpoint_url = value;
        return ST_OK;
    }
    if (strcmp(name, "region") == 0) {
        OPT_NEED();
        o->region = value;
        return ST_OK;
    }
    if (strcmp(name, "profile") == 0) {
        OPT_NEED();
        o->profile = value;
        return ST_OK;
    }
    if (strcmp(name, "anonymous") == 0) {
        o->anonymous = 1;
        return ST_OK;
    }
    *known = 0;
    return st_errorf(err, ST_ERR_ARG, "unknown stream option --%s", name);
}

const struct st_sample_field *st_sample_field(const struct st_sample *s, const char *name) {
    for (int i = 0; i < s->n_fields; i++)
        if (strcmp(s->fields[i].name, name) == 0) return &s->fields[i];
    return NULL;
}

/* ---- memory accounting ---- */

static void mem_add(struct st_stream *s, size_t n) {
    size_t now = atomic_fetch_add(&s->mem_used, n) + n;
    size_t peak = atomic_load(&s->mem_peak);
    while (now > peak && !atomic_compare_exchange_weak(&s->mem_peak, &peak, now)) {
    }
}
static void mem_sub(struct st_stream *s, size_t n) {
    atomic_fetch_sub(&s->mem_used, n);
}

/* ---- plan ---- */

static uint64_t rng_below(struct st_rng *r, uint64_t n) {
    /* rejection sampling: no modulo bias */
    uint64_t lim = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = st_rng_u64(r);
    while (x >= lim);
    return x % n;
}

/* floor(a * b / c) without overflow (a < 2^53, b < c < 2^31) */
static uint64_t muldiv(uint64_t a, uint64_t b, uint64_t c) {
    return (a / c) * b + (a % c) * b / c;
}

/* Epoch `epoch`'s plan for this partition. Shard partitioning: positions i of the permutation with
 * i % P == p. Sample partitioning (every shard's record count known): the permutation's records
 * laid end to end, partition p takes records [p*T/P, (p+1)*T/P): equal counts (+-1) for every
 * rank; the first and last shard of a range may be read in part. */
static enum st_status make_plan(struct st_stream *s, int64_t epoch, struct plan_item **out,
                                uint32_t *n, struct st_error *err) {
    uint32_t N = s->ds.list.n;
    uint32_t *perm = st_malloc((size_t)(N ? N : 1) * sizeof *perm);
    struct plan_item *pl = st_malloc((size_t)(N ? N : 1) * sizeof *pl);
    if (!perm || !pl) {
        st_free(perm);
        st_free(pl);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory planning epoch %lld", (long long)epoch);
    }
    for (uint32_t i = 0; i < N; i++)
        perm[i] = i;
    if (s->o.shuffle && N > 1) {
        struct st_rng r;
        st_rng_seed(&r, seed_mix(seed_mix(s->o.seed, 0x73686172ULL), (uint64_t)epoch));
        for (uint32_t i = N - 1; i > 0; i--) {
            uint32_t j = (uint32_t)rng_below(&r, (uint64_t)i + 1);
            uint32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
    }
    uint32_t k = 0;
    if (s->by_samples) {
        uint64_t T = 0;
        for (uint32_t i = 0; i < N; i++)
            T += (uint64_t)s->ds.list.shards[i].samples;
        uint64_t lo = muldiv(T, (uint64_t)s->p, (uint64_t)s->P);
        uint64_t hi = muldiv(T, (uint64_t)s->p + 1, (uint64_t)s->P);
        uint64_t c = 0;
        for (uint32_t i = 0; i < N; i++) {
            uint64_t cnt = (uint64_t)s->ds.list.shards[perm[i]].samples;
            uint64_t a = c > lo ? c : lo, b = c + cnt < hi ? c + cnt : hi;
            if (a < b) {
                pl[k].shard = perm[i];
                pl[k].first = a - c;
                pl[k].end = b - c == cnt ? UINT64_MAX : b - c;
                k++;
            }
            c += cnt;
        }
    } else {
        for (uint32_t i = 0; i < N; i++)
            if (i % (uint32_t)s->P == (uint32_t)s->p) {
                pl[k].shard = perm[i];
                pl[k].first = 0;
                pl[k].end = UINT64_MAX;
                k++;
            }
    }
    st_free(perm);
    *out = pl;
    *n = k;
    return ST_OK;
}

static void epoch_rng(struct st_stream *s, int64_t epoch) {
    st_rng_seed(&s->rng, seed_mix(seed_mix(seed_mix(s->o.seed, 0x736c6f74ULL), (uint64_t)epoch),
                                  (uint64_t)s->p));
}

/* The shuffle buffer's rng for the current epoch. */
/* Count a sample returned to the caller (under the lock). */
static void count_sample(struct st_stream *s) {
    s->st.samples++;
    if (s->first_sample_unset) {
        s->st.first_sample_s = st_time_now() - s->t_open;
        s->first_sample_unset = 0;
    }
}

static void buffer_rng(struct st_stream *s) {
    st_rng_seed(&s->brng, seed_mix(seed_mix(seed_mix(s->o.seed, 0x62756666ULL), (uint64_t)s->epoch),
                                   (uint64_t)s->p));
}

/* ---- readers ---- */

static void node_free(struct st_stream *s, struct node *n) {
    mem_sub(s, n->mem);
    st_free(n);
}

static void part_free(struct st_stream *s, struct part *p) {
    if (p->buf) {
        st_free(p->buf);
        mem_sub(s, p->mem);
    }
    st_free(p);
}

static void reader_free(struct st_stream *s, struct reader *r) {
    if (!r) return;
    struct part *p = r->parts;
    while (p) {
        struct part *nx = p->next;
        part_free(s, p);
        p = nx;
    }
    struct node *n = r->q_head;
    while (n) {
        struct node *nx = n->next;
        node_free(s, n);
        n = nx;
    }
    if (r->parse_init) {
        if (r->fmt == ST_FORMAT_TAR)
            tar_free(&r->tr);
        else
            jsonl_free(&r->jl);
        mem_sub(s, r->parser_mem);
    }
    if (r->dec_on) decomp_free(&r->dec);
    if (r->dec_mem) mem_sub(s, r->dec_mem);
    st_free(r->outbuf);
    st_free(r);
}

/* A reader for plan item it, starting at (off, doff) with `skip` records to drop there and
 * record index `index` at that point. A fresh reader (off = 0, index = 0) also skips the records
 * before the item's first. */
static struct reader *reader_new(struct st_stream *s, int64_t epoch, uint32_t pos,
                                 const struct plan_item *it, uint64_t off, uint64_t doff,
                                 uint64_t skip, uint64_t index) {
    struct reader *r = st_calloc(1, sizeof *r);
    if (!r) return NULL;
    uint32_t shard = it->shard;
    if (off == 0 && index == 0 && skip < it->first) skip = it->first;
    r->shard = shard;
    r->epoch = epoch;
    r->pos = pos;
    r->limit = it->end;
    dataset_target(&s->ds, shard, &r->t);
    r->fmt = s->ds.fmt[shard];
    r->name = s->ds.list.shards[shard].name;
    r->name_len = strlen(r->name);
    r->s_off = r->r_off = r->fetch_off = r->in_off = r->rs_off = off;
    r->s_doff = r->r_doff = r->rs_doff = doff;
    r->s_skip = r->r_skip = r->skip_left = skip;
    r->s_index = r->r_index = r->rs_index = index;
    r->hashing = off == 0 && r->limit == UINT64_MAX && s->o.verify_hashes > 0 &&
                 s->ds.list.shards[shard].sha256[0];
    if (r->hashing) sha256_init(&r->sha);
    if (r->t.size != ST_SIZE_UNKNOWN && off >= r->t.size) r->fetch_eof = 1;
    if (index + skip >= r->limit) /* nothing left to read */
        r->fetch_eof = r->limit_hit = r->limit_local = r->parse_done = 1;
    return r;
}

static void reader_fail(struct reader *r, const struct st_error *e) {
    if (r->failed) return;
    r->failed = 1;
    r->err = *e;
}

/* Plan of epoch e if we have it (current or next), else NULL. */
static const struct plan_item *plan_of(struct st_stream *s, int64_t e, uint32_t *n) {
    if (e == s->epoch) {
        *n = s->plan_n;
        return s->plan;
    }
    if (s->plan2 && e == s->plan2_epoch) {
        *n = s->plan2_n;
        return s->plan2;
    }
    return NULL;
}

/* Create look-ahead readers up to L (under the lock). */
static enum st_status fill_lookahead(struct st_stream *s, struct st_error *err) {
    while (s->n_la < s->L) {
        uint32_t n;
        if (s->la_epoch >= s->end_epoch) return ST_OK;
        if (s->la_epoch > s->epoch + 1) return ST_OK;
        const struct plan_item *pl = plan_of(s, s->la_epoch, &n);
        if (!pl) {
            st_free(s->plan2);
            s->plan2 = NULL;
            enum st_status rc = make_plan(s, s->la_epoch, &s->plan2, &s->plan2_n, err);
            if (rc) return rc;
            s->plan2_epoch = s->la_epoch;
            continue;
        }
        if (s->la_pos >= n) {
            s->la_epoch++;
            s->la_pos = 0;
            continue;
        }
        struct reader *r = reader_new(s, s->la_epoch, s->la_pos, &pl[s->la_pos], 0, 0, 0, 0);
        if (!r) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
        if (s->la_tail)
            s->la_tail->next = r;
        else
            s->la_head = r;
        s->la_tail = r;
        s->n_la++;
        s->la_pos++;
    }
    return ST_OK;
}

/* The reader for plan position next_pos of the current epoch: the head of the look-ahead list,
 * or a new one. */
static struct reader *take_next(struct st_stream *s) {
    struct reader *r = s->la_head;
    if (r && r->epoch == s->epoch && r->pos == s->next_pos) {
        s->la_head = r->next;
        if (!s->la_head) s->la_tail = NULL;
        s->n_la--;
        r->next = NULL;
    } else {
        r = reader_new(s, s->epoch, s->next_pos, &s->plan[s->next_pos], 0, 0, 0, 0);
        if (!r) return NULL;
        if (s->la_epoch < s->epoch || (s->la_epoch == s->epoch && s->la_pos <= s->next_pos)) {
            s->la_epoch = s->epoch;
            s->la_pos = s->next_pos + 1;
        }
    }
    s->next_pos++;
    return r;
}

/* ---- parsing ---- */

struct emit_ctx {
    struct st_stream *s;
    struct reader *r;
    struct node *head, *tail;
    size_t produced;
    size_t q_mem0;
};

/* A sample node holding copies of key and fields (sizes known; data may be NULL to fill in
 * later), reserved against the budget. NULL with err set on failure. */
static struct node *node_make(struct st_stream *s, const char *key, const char *url,
                              uint32_t shard, uint64_t index, uint64_t offset, int n_fields,
                              const struct rec_field *fields, struct st_error *err) {
    size_t over = sizeof(struct node) + (size_t)n_fields * sizeof(struct st_sample_field) +
                  strlen(key) + 1;
    size_t data = 0;
    for (int i = 0; i < n_fields; i++) {
        over += strlen(fields[i].name) + 1;
        data += fields[i].size + 1;
    }
    if (over > NODE_OVERHEAD_MAX) {
        st_errorf(err, ST_ERR_FORMAT, "%s: sample '%s' has too long a key or field names", url,
                  key);
        return NULL;
    }
    size_t total = over + data + 16;
    struct node *n = st_malloc(total);
    if (!n) {
        st_errorf(err, ST_ERR_NOMEM, "%s: out of memory for a %zu-byte sample", url, total);
        return NULL;
    }
    mem_add(s, total);
    memset(n, 0, sizeof *n);
    n->mem = total;
    struct st_sample_field *f = (struct st_sample_field *)(n + 1);
    char *p = (char *)(f + n_fields);
    size_t kl = strlen(key) + 1;
    memcpy(p, key, kl);
    n->s.key = p;
    p += kl;
    for (int i = 0; i < n_fields; i++) {
        size_t nl = strlen(fields[i].name) + 1;
        memcpy(p, fields[i].name, nl);
        f[i].name = p;
        p += nl;
    }
    for (int i = 0; i < n_fields; i++) {
        if (fields[i].data) memcpy(p, fields[i].data, fields[i].size);
        p[fields[i].size] = '\0';
        f[i].data = (const uint8_t *)p;
        f[i].size = fields[i].size;
        p += fields[i].size + 1;
    }
    n->s.url = url;
    n->s.shard = shard;
    n->s.index = index;
    n->s.offset = offset;
    n->s.n_fields = n_fields;
    n->s.fields = f;
    n->s.data = n_fields ? f[0].data : (const uint8_t *)"";
    n->s.size = n_fields ? f[0].size : 0;
    return n;
}

static int on_record(void *vctx, const struct rec *rec, struct st_error *err) {
    struct emit_ctx *c = vctx;
    struct st_stream *s = c->s;
    struct reader *r = c->r;
    if (rec->index >= r->limit) { /* the rest belongs to the next partition */
        r->limit_local = 1;
        return 1;
    }
    r->n_records++;
    if (r->skip_left) {
        r->skip_left--;
        return 0;
    }
    char keybuf[1100];
    const char *key = rec->key;
    if (!key) { /* "<shard name>:<index>", without printf (this runs per record) */
        size_t nl = r->name_len < sizeof keybuf - 24 ? r->name_len : sizeof keybuf - 24;
        memcpy(keybuf, r->name, nl);
        keybuf[nl++] = ':';
        char digits[24];
        int k = 0;
        uint64_t v = rec->index;
        do
            digits[k++] = (char)('0' + v % 10);
        while ((v /= 10) && k < 23);
        while (k)
            keybuf[nl++] = digits[--k];
        keybuf[nl] = '\0';
        key = keybuf;
    }
    struct node *n = node_make(s, key, r->t.display, r->shard, rec->index, rec->offset,
                               rec->n_fields, rec->fields, err);
    if (!n) return -1;
    size_t total = n->mem;
    if (r->comp == COMP_NONE) {
        n->a_off = n->a_doff = rec->end;
        n->a_skip = 0;
    } else {
        n->a_off = r->rs_off;
        n->a_doff = r->rs_doff;
        n->a_skip = rec->index + 1 - r->rs_index;
    }
    n->a_index = rec->index + 1;
    if (c->tail)
        c->tail->next = n;
    else
        c->head = n;
    c->tail = n;
    c->produced += total;
    if (c->q_mem0 + c->produced + s->max_rec + s->node_max > s->half) return 1; /* pause */
    return 0;
}

static size_t parser_mem(const struct reader *r) {
    return r->fmt == ST_FORMAT_TAR ? tar_mem(&r->tr) : jsonl_mem(&r->jl);
}

static void track_parser_mem(struct st_stream *s, struct reader *r) {
    size_t m = parser_mem(r);
    if (m > r->parser_mem)
        mem_add(s, m - r->parser_mem);
    else
        mem_sub(s, r->parser_mem - m);
    r->parser_mem = m;
}

static enum st_status feed(struct st_stream *s, struct reader *r, struct emit_ctx *c,
                           const uint8_t *d, size_t n, size_t *used, struct st_error *err) {
    enum st_status rc = r->fmt == ST_FORMAT_TAR
                            ? tar_feed(&r->tr, d, n, used, on_record, c, r->t.display, err)
                            : jsonl_feed(&r->jl, d, n, used, on_record, c, r->t.display, err);
    track_parser_mem(s, r);
    return rc;
}

static int parser_idle(const struct reader *r) {
    return r->fmt == ST_FORMAT_JSONL && r->jl.carry.len == 0;
}

static uint64_t parser_off(const struct reader *r) {
    return r->fmt == ST_FORMAT_TAR ? r->tr.off : r->jl.off;
}

/* Commit a pending restart point once all output before it is parsed. */
static void maybe_commit(struct reader *r) {
    if (r->boundary && r->out_pos == r->out_len && parser_idle(r)) {
        r->rs_off = r->boundary_off;
        r->rs_doff = parser_off(r);
        r->rs_index = r->jl.rec;
        r->boundary = 0;
    }
}

/* First touch: choose the decoder from the bytes (and name), start the parser. */
static enum st_status parse_start(struct st_stream *s, struct reader *r, const uint8_t *d, size_t n,
                                  struct st_error *err) {
    /* the bytes, else the name: a .gz or .zst whose bytes are neither is reported corrupt by
     * the decoder rather than read as records */
    r->comp = decomp_sniff(d, n);
    if (r->comp == COMP_NONE) r->comp = comp_from_name(r->name);
    if (r->comp != COMP_NONE) {
        size_t dm = decomp_mem(r->comp, s->wlog_max) + OUTBUF_SIZE;
        r->outbuf = st_malloc(OUTBUF_SIZE);
        if (!r->outbuf) return st_errorf(err, ST_ERR_NOMEM, "%s: out of memory", r->t.display);
        r->dec_mem = dm;
        mem_add(s, dm);
        enum st_status rc = decomp_init(&r->dec, r->comp, s->wlog_max, r->s_off, r->t.display, err);
        if (rc) return rc;
        r->dec_on = 1;
    }
    if (r->fmt == ST_FORMAT_TAR)
        tar_init(&r->tr, r->s_doff, r->s_index, s->max_rec);
    else
        jsonl_init(&r->jl, r->s_doff, r->s_index, s->max_rec, s->o.json_check > 0);
    r->parse_init = 1;
    return ST_OK;
}

/* End of the shard: flush the decoder and the parser, check counts and hashes. */
static enum st_status parse_finish(struct st_stream *s, struct reader *r, struct emit_ctx *c,
                                   struct st_error *err) {
    enum st_status rc;
    if (r->limit_local) return ST_OK;
    if (!r->parse_init && (rc = parse_start(s, r, (const uint8_t *)"", 0, err))) return rc;
    if (r->comp != COMP_NONE) {
        for (;;) {
            if (r->out_pos < r->out_len) {
                size_t used;
                if ((rc = feed(s, r, c, r->outbuf + r->out_pos, r->out_len - r->out_pos, &used,
                               err)))
                    return rc;
                r->out_pos += used;
                if (r->out_pos < r->out_len) return ST_OK; /* paused */
            }
            size_t in_used, out_len;
            int fe;
            if ((rc = decomp_run(&r->dec, NULL, 0, &in_used, r->outbuf, OUTBUF_SIZE, &out_len, &fe,
                                 r->t.display, err)))
                return rc;
            r->out_len = out_len;
            r->out_pos = 0;
            if (!out_len) break;
        }
        if ((rc = decomp_finish(&r->dec, r->t.display, err))) return rc;
    }
    rc = r->fmt == ST_FORMAT_TAR ? tar_end(&r->tr, on_record, c, r->t.display, err)
                                 : jsonl_end(&r->jl, on_record, c, r->t.display, err);
    track_parser_mem(s, r);
    if (rc || r->limit_local) return rc;
    if (r->skip_left)
        return st_errorf(err, ST_ERR_FORMAT,
                         "%s: the resume state points %llu records past the end of this shard "
                         "(was it rewritten?)",
                         r->t.display, (unsigned long long)r->skip_left);
    const struct st_shard_info *sh = &s->ds.list.shards[r->shard];
    if (r->s_off == 0 && r->s_skip == 0 && sh->samples >= 0 &&
        (uint64_t)sh->samples != r->n_records)
        return st_errorf(err, ST_ERR_FORMAT,
                         "%s: the index lists %lld samples but the shard has %llu: rebuild the "
                         "index (streamtune data index)",
                         r->t.display, (long long)sh->samples, (unsigned long long)r->n_records);
    if (r->hashing) {
        char hex[65];
        sha256_final_hex(&r->sha, hex);
        if (strcmp(hex, sh->sha256) != 0)
            return st_errorf(err, ST_ERR_FORMAT,
                             "%s: SHA-256 %s differs from the index's %s: the shard changed or is "
                             "damaged",
                             r->t.display, hex, sh->sha256);
    }
    r->parse_done_local = 1;
    return ST_OK;
}

/* Parse from part p (DONE, at the head of r's list) until it is used up or the queue is full.
 * p == NULL: the shard is fully fetched and consumed: finish it. */
static enum st_status parse_step(struct st_stream *s, struct reader *r, struct part *p,
                                 struct emit_ctx *c, struct st_error *err) {
    enum st_status rc;
    if (!p) return parse_finish(s, r, c, err);
    if (!p->hashed) {
        if (r->hashing) sha256_update(&r->sha, p->buf, (size_t)p->got);
        p->hashed = 1;
    }
    if (!r->parse_init && (rc = parse_start(s, r, p->buf, (size_t)p->got, err))) return rc;
    if (r->comp == COMP_NONE) {
        size_t used;
        rc = feed(s, r, c, p->buf + p->consumed, (size_t)p->got - p->consumed, &used, err);
        p->consumed += used;
        return rc;
    }
    if (r->limit_local) return ST_OK;
    for (;;) {
        if (r->out_pos < r->out_len) {
            size_t used;
            if ((rc = feed(s, r, c, r->outbuf + r->out_pos, r->out_len - r->out_pos, &used, err)))
                return rc;
            r->out_pos += used;
            if (r->out_pos < r->out_len) return ST_OK; /* paused: queue full */
        }
        maybe_commit(r);
        if (c->q_mem0 + c->produced + s->max_rec + s->node_max > s->half) return ST_OK;
        if (p->consumed == p->got && !r->out_full) return ST_OK;
        size_t in_used, out_len;
        int fe;
        rc = decomp_run(&r->dec, p->buf + p->consumed, (size_t)p->got - p->consumed, &in_used,
                        r->outbuf, OUTBUF_SIZE, &out_len, &fe, r->t.display, err);
        if (rc) return rc;
        p->consumed += in_used;
        r->in_off = p->off + p->consumed;
        r->out_len = out_len;
        r->out_pos = 0;
        r->out_full = out_len == OUTBUF_SIZE;
        if (fe) {
            r->boundary = 1;
            r->boundary_off = r->in_off;
        }
        if (!in_used && !out_len && !fe) {
            r->out_full = 0;
            if (p->consumed == p->got) return ST_OK;
        }
    }
}

/* Free the parts of r that the I/O thread is not transferring; a reader whose limit was hit and
 * that has no parts left is done (under the lock). */
static void drop_idle_parts(struct st_stream *s, struct reader *r) {
    struct part **pp = &r->parts, *last = NULL;
    while (*pp) {
        struct part *p = *pp;
        if (p->state == P_RUNNING) {
            last = p;
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        r->parts_mem -= p->mem;
        r->n_parts--;
        part_free(s, p);
    }
    r->parts_tail = last;
    if (r->limit_hit && !r->parts) {
        r->parse_done = 1;
        pthread_cond_broadcast(&s->cv_data);
    }
}

/* Pick a reader with work for a parse thread (under the lock): the one the consumer waits for
 * first, then slots, then look-ahead readers in plan order. */
/* A parse step starts only when the reader's queue is below the low-water mark (half its limit),
 * so the consumer and a parse thread do not ping-pong one record at a time. */
static size_t q_low(const struct st_stream *s) {
    return (s->half - s->max_rec - s->node_max) / 2;
}

static int has_parse_work(struct st_stream *s, struct reader *r) {
    if (r->parsing || r->failed || r->parse_done || r->limit_hit) return 0;
    if (r->q_mem > q_low(s)) return 0;
    if (r->parts) return r->parts->state == P_DONE;
    return r->fetch_eof;
}

static struct reader *pick_parse(struct st_stream *s) {
    if (s->want && has_parse_work(s, s->want)) return s->want;
    for (int i = 0; i < s->n_slots; i++)
        if (has_parse_work(s, s->slots[i])) return s->slots[i];
    for (struct reader *r = s->la_head; r; r = r->next)
        if (has_parse_work(s, r)) return r;
    return NULL;
}

static void *parse_main(void *arg) {
    struct st_stream *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        struct reader *r = pick_parse(s);
        if (!r) {
            s->parse_waiting++;
            pthread_cond_wait(&s->cv_parse, &s->mu);
            s->parse_waiting--;
            continue;
        }
        r->parsing = 1;
        struct part *p = r->parts;
        struct emit_ctx c = {s, r, NULL, NULL, 0, r->q_mem};
        pthread_mutex_unlock(&s->mu);

        struct st_error err = {0};
        uint64_t d0 = r->parse_init ? parser_off(r) : r->s_doff;
        enum st_status rc = parse_step(s, r, p, &c, &err);
        uint64_t d1 = r->parse_init ? parser_off(r) : r->s_doff;
        int done = rc == ST_OK && r->parse_done_local;
        int limit = r->limit_local;

        pthread_mutex_lock(&s->mu);
        s->st.bytes_decoded += d1 - d0;
        if (c.head) {
            if (r->q_tail)
                r->q_tail->next = c.head;
            else
                r->q_head = c.head;
            r->q_tail = c.tail;
            r->q_mem += c.produced;
        }
        if (rc) reader_fail(r, &err);
        if (done) r->parse_done = 1;
        if (limit) r->limit_hit = 1;
        if (!rc && r->limit_hit) {
            /* the rest of the shard is another partition's: drop the parts that are not in
             * flight; the I/O thread cancels those that are and finishes the reader */
            r->fetch_eof = 1;
            drop_idle_parts(s, r);
            if (s->multi) curl_multi_wakeup(s->multi);
        } else if (p && !rc && p->consumed == p->got) {
            r->parts = p->next;
            if (!r->parts) r->parts_tail = NULL;
            r->parts_mem -= p->mem;
            r->n_parts--;
            part_free(s, p);
            if (s->multi) curl_multi_wakeup(s->multi);
        }
        r->parsing = 0;
        pthread_cond_broadcast(&s->cv_data);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- the I/O thread ---- */

/* Readers in fetch priority order: the one the consumer waits for, slots, look-ahead. */
static int priority_list(struct st_stream *s, struct reader **out, int cap) {
    int n = 0;
    if (s->want && n < cap) out[n++] = s->want;
    for (int i = 0; i < s->n_slots && n < cap; i++)
        if (s->slots[i] != s->want) out[n++] = s->slots[i];
    for (struct reader *r = s->la_head; r && n < cap; r = r->next)
        out[n++] = r;
    return n;
}

/* A new part for r if its window has room (under the lock). */
static struct part *new_part(struct st_stream *s, struct reader *r) {
    if (r->failed || r->fetch_eof) return NULL;
    uint64_t len = s->part_size;
    /* a shard's first part is small, so its first records (and an unknown size) arrive soon */
    if (r->fetch_off == r->s_off && len > FIRST_PART) len = FIRST_PART;
    if (r->t.size == ST_SIZE_UNKNOWN) {
        /* size unknown until the first answer: one part at a time */
        if (r->parts_tail && r->parts_tail->state != P_DONE) return NULL;
    } else if (r->t.size - r->fetch_off < len) {
        len = r->t.size - r->fetch_off;
    }
    size_t window = s->quota / 4;
    if (r->parts_mem + len > window && r->parts) return NULL;
    struct part *p = st_calloc(1, sizeof *p);
    if (!p) return NULL;
    p->buf = st_malloc(len ? (size_t)len : 1);
    if (!p->buf) {
        st_free(p);
        return NULL;
    }
    p->mem = len ? (size_t)len : 1;
    mem_add(s, p->mem);
    p->r = r;
    p->off = r->fetch_off;
    p->len = len;
    p->state = P_QUEUED;
    r->fetch_off += len;
    if (r->t.size != ST_SIZE_UNKNOWN && r->fetch_off >= r->t.size) r->fetch_eof = 1;
    if (r->parts_tail)
        r->parts_tail->next = p;
    else
        r->parts = p;
    r->parts_tail = p;
    r->parts_mem += p->mem;
    r->n_parts++;
    s->st.requests++;
    return p;
}

/* Apply the outcome of one attempt (under the lock). */
static void part_outcome(struct st_stream *s, struct part *p, enum fetch_verdict v, uint64_t size,
                         enum retry_kind kind, double retry_after, const struct st_error *e) {
    struct reader *r = p->r;
    if (r->limit_hit) {
        /* the parser already reached this partition's last record: whatever this transfer
         * brought is another partition's. Drop it now; a part left DONE here would never be
         * parsed nor freed, and the consumer would wait for the reader forever. */
        p->state = P_DONE;
        if (!r->parsing) drop_idle_parts(s, r);
        pthread_cond_broadcast(&s->cv_data);
        return;
    }
    if (v == FV_OK) {
        if (size != ST_SIZE_UNKNOWN && r->t.size == ST_SIZE_UNKNOWN) {
            r->t.size = size;
            if (r->fetch_off > size) r->fetch_off = size;
            if (r->fetch_off >= size) r->fetch_eof = 1;
        }
        if (p->got < p->len) {
            uint64_t end = r->t.size;
            if (end != ST_SIZE_UNKNOWN && p->off + p->got < end) {
                struct st_error fe;
                st_errorf(&fe, ST_ERR_IO,
                          "%s: only %llu bytes at byte offset %llu, the object is "
                          "%llu bytes (it changed?)",
                          r->t.display, (unsigned long long)p->got, (unsigned long long)p->off,
                          (unsigned long long)end);
                reader_fail(r, &fe);
                return;
            }
            p->len = p->got; /* the end of the object */
            if (end == ST_SIZE_UNKNOWN) r->fetch_eof = 1;
        }
        p->state = P_DONE;
        pthread_cond_broadcast(&s->cv_parse);
        return;
    }
    if (v == FV_RETRY && p->attempts < s->o.max_retries) {
        p->attempts++;
        s->st.retries++;
        switch (kind) {
        case RK_CONN: s->st.retry_conn++; break;
        case RK_TIMEOUT: s->st.retry_timeout++; break;
        case RK_TRUNCATED: s->st.retry_truncated++; break;
        case RK_5XX: s->st.retry_5xx++; break;
        case RK_THROTTLED: s->st.retry_throttled++; break;
        default: break;
        }
        p->state = P_WAIT;
        p->retry_at = st_time_now() + fetch_backoff(&s->pol, p->attempts, retry_after, &s->jitter);
        st_log(ST_LOG_DEBUG, "retry %d: %s", p->attempts, e->msg);
        return;
    }
    struct st_error fe = *e;
    if (v == FV_RETRY) st_error_prefix(&fe, "giving up after %d attempts: ", p->attempts + 1);
    reader_fail(r, &fe);
    pthread_cond_broadcast(&s->cv_data);
}

static void *io_main(void *arg) {
    struct st_stream *s = arg;
    int cap = s->K + s->L + 2;
    struct reader **prio = st_malloc((size_t)cap * sizeof *prio);
    struct part **starts = st_malloc((size_t)(s->n_handles + 8) * sizeof *starts);
    struct part **cancels = st_malloc((size_t)(s->n_handles + 8) * sizeof *cancels);
    pthread_mutex_lock(&s->mu);
    if (!prio || !starts || !cancels) {
        struct st_error e;
        st_errorf(&e, ST_ERR_NOMEM, "out of memory starting the I/O thread");
        s->failed = 1;
        s->fail_err = e;
        s->stop = 1;
        pthread_cond_broadcast(&s->cv_data);
    }
    while (!s->stop) {
        double now = st_time_now(), next_due = now + 1.0;
        int n = priority_list(s, prio, cap);
        int avail_h = s->n_free, avail_f = 2, n_start = 0, n_cancel = 0;
        /* readers past their limit: free the parts nobody will parse (retries waiting, parts
         * that finished after the limit was seen) so they can finish */
        for (int i = 0; i < n; i++)
            if (prio[i]->limit_hit && !prio[i]->parse_done && !prio[i]->parsing)
                drop_idle_parts(s, prio[i]);
        /* transfers for records another partition reads: abandon them */
        for (int i = 0; i < n; i++)
            if (prio[i]->limit_hit && !prio[i]->parse_done)
                for (struct part *p = prio[i]->parts; p && n_cancel < s->n_handles; p = p->next)
                    if (p->state == P_RUNNING && p->h) cancels[n_cancel++] = p;
        /* retries that are due, then new parts, round-robin over readers by priority */
        for (int i = 0; i < n; i++)
            for (struct part *p = prio[i]->parts; p; p = p->next) {
                if (p->state != P_WAIT || prio[i]->failed || prio[i]->limit_hit) continue;
                int file = prio[i]->t.scheme == URL_FILE;
                if (p->retry_at > now) {
                    if (p->retry_at < next_due) next_due = p->retry_at;
                } else if (file ? avail_f > 0 : avail_h > 0) {
                    if (file)
                        avail_f--;
                    else
                        avail_h--;
                    p->state = P_RUNNING;
                    starts[n_start++] = p;
                }
            }
        for (int progress = 1; progress;) {
            progress = 0;
            for (int i = 0; i < n; i++) {
                int file = prio[i]->t.scheme == URL_FILE;
                if (file ? avail_f <= 0 : avail_h <= 0) continue;
                struct part *p = new_part(s, prio[i]);
                if (!p) continue;
                if (file)
                    avail_f--;
                else
                    avail_h--;
                p->state = P_RUNNING;
                starts[n_start++] = p;
                progress = 1;
            }
        }
        pthread_mutex_unlock(&s->mu);

        if (n_cancel) {
            for (int i = 0; i < n_cancel; i++) {
                struct part *p = cancels[i];
                curl_multi_remove_handle(s->multi, p->h);
                fetch_xfer_cleanup(&p->x);
                s->free_handles[s->n_free++] = p->h;
                p->h = NULL;
            }
            pthread_mutex_lock(&s->mu);
            for (int i = 0; i < n_cancel; i++)
                cancels[i]->state = P_DONE;
            for (int i = 0; i < n_cancel; i++)
                if (!cancels[i]->r->parsing) drop_idle_parts(s, cancels[i]->r);
            /* parts changed state: a parse thread may now have work, and the consumer may be
             * waiting on a reader these parts belonged to (a lost wakeup here hung the stream) */
            pthread_cond_broadcast(&s->cv_parse);
            pthread_cond_broadcast(&s->cv_data);
            pthread_mutex_unlock(&s->mu);
        }

        for (int i = 0; i < n_start; i++) {
            struct part *p = starts[i];
            struct reader *r = p->r;
            if (r->t.scheme == URL_FILE) {
                uint64_t got = 0;
                struct st_error e = {0};
                enum st_status rc =
                    fetch_file(&r->t, p->off + p->got, p->len - p->got, p->buf + p->got, &got, &e);
                pthread_mutex_lock(&s->mu);
                s->st.bytes_fetched += got;
                p->got += got;
                if (rc && !r->limit_hit) {
                    reader_fail(r, &e);
                    pthread_cond_broadcast(&s->cv_data);
                } else {
                    part_outcome(s, p, FV_OK, ST_SIZE_UNKNOWN, RK_NONE, -1, &e);
                }
                pthread_mutex_unlock(&s->mu);
                continue;
            }
            CURL *h = s->free_handles[--s->n_free];
            memset(&p->x, 0, sizeof p->x);
            p->x.t = &r->t;
            p->x.off = p->off + p->got;
            p->x.len = p->len - p->got;
            p->x.buf = p->buf + p->got;
            struct st_error e = {0};
            enum st_status rc = fetch_setup(h, &p->x, &s->pol, p->attempts > 0, &e);
            if (rc == ST_OK) {
                curl_easy_setopt(h, CURLOPT_PRIVATE, p);
                if (curl_multi_add_handle(s->multi, h) != CURLM_OK) {
                    st_errorf(&e, ST_ERR_NET, "%s: cannot start a transfer", r->t.display);
                    rc = ST_ERR_NET;
                }
            }
            if (rc) {
                fetch_xfer_cleanup(&p->x);
                s->free_handles[s->n_free++] = h;
                pthread_mutex_lock(&s->mu);
                reader_fail(r, &e);
                pthread_cond_broadcast(&s->cv_data);
                pthread_mutex_unlock(&s->mu);
                continue;
            }
            p->h = h;
        }

        int running = 0;
        curl_multi_perform(s->multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(s->multi, &left))) {
            if (m->msg != CURLMSG_DONE) continue;
            CURL *h = m->easy_handle;
            CURLcode cc = m->data.result;
            struct part *p = NULL;
            curl_easy_getinfo(h, CURLINFO_PRIVATE, (char **)&p);
            curl_multi_remove_handle(s->multi, h);
            s->free_handles[s->n_free++] = h;
            if (!p) continue;
            p->h = NULL;
            uint64_t size = ST_SIZE_UNKNOWN;
            enum retry_kind kind;
            double ra;
            struct st_error e = {0};
            pthread_mutex_lock(&s->mu);
            enum fetch_verdict v = fetch_judge(&p->x, cc, &size, &kind, &ra, &e);
            fetch_xfer_cleanup(&p->x);
            if (v == FV_OK && !p->r->t.etag && p->x.etag[0]) {
                /* later parts carry If-Match with it, so a rewrite mid-read is caught */
                snprintf(p->r->etag, sizeof p->r->etag, "%s", p->x.etag);
                p->r->t.etag = p->r->etag;
            }
            s->st.bytes_fetched += p->x.got + p->x.skip;
            p->got += p->x.got;
            part_outcome(s, p, v, size, kind, ra, &e);
            pthread_mutex_unlock(&s->mu);
        }
        double wait = next_due - st_time_now();
        int ms = wait <= 0 ? 0 : wait > 1 ? 1000 : (int)(wait * 1000) + 1;
        if (n_start && running == 0) ms = 0;
        curl_multi_poll(s->multi, NULL, 0, ms, NULL);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    /* abandon transfers in flight */
    for (int i = 0; i < s->n_handles; i++) {
        struct part *p = NULL;
        curl_easy_getinfo(s->handles[i], CURLINFO_PRIVATE, (char **)&p);
        int busy = 1;
        for (int k = 0; k < s->n_free; k++)
            if (s->free_handles[k] == s->handles[i]) busy = 0;
        if (busy) {
            curl_multi_remove_handle(s->multi, s->handles[i]);
            if (p) fetch_xfer_cleanup(&p->x);
        }
    }
    st_free(prio);
    st_free(starts);
    st_free(cancels);
    return NULL;
}

/* ---- state ---- */

size_t st_stream_state(struct st_stream *s, char *buf, size_t cap) {
    struct dbuf b;
    dbuf_init(&b, ((size_t)1 << 20) + s->buf_mem / 3 * 4 + 64 * (size_t)s->nbuf);
    pthread_mutex_lock(&s->mu);
    dbuf_printf(
        &b,
        "{\"streamtune_stream\":1,\"dataset\":\"%016llx\",\"seed\":%llu,\"partition\":[%d,"
        "%d],\"by_samples\":%d,\"shuffle\":%d,\"k\":%d,\"epoch\":%lld,\"next\":%u,\"rng\":[",
        (unsigned long long)s->ds.fingerprint, (unsigned long long)s->o.seed, s->p, s->P,
        s->by_samples, s->o.shuffle ? 1 : 0, s->K, (long long)s->epoch, s->next_pos);
    for (int i = 0; i < 4; i++)
        dbuf_printf(&b, "%s\"%016llx\"", i ? "," : "", (unsigned long long)s->rng.s[i]);
    dbuf_addstr(&b, "],\"slots\":[");
    for (int i = 0; i < s->n_slots; i++) {
        struct reader *r = s->slots[i];
        dbuf_printf(&b, "%s[%u,%llu,%llu,%llu,%llu]", i ? "," : "", r->pos,
                    (unsigned long long)r->r_off, (unsigned long long)r->r_doff,
                    (unsigned long long)r->r_skip, (unsigned long long)r->r_index);
    }
    dbuf_addstr(&b, "]");
    if (s->B) {
        /* the buffered samples themselves: [shard, index, offset, key, [[name, data]...]],
         * strings in base64 */
        dbuf_printf(&b, ",\"shuffle_buffer\":%d,\"buffer\":{\"drain\":%d,\"rng\":[", s->B,
                    s->draining);
        for (int i = 0; i < 4; i++)
            dbuf_printf(&b, "%s\"%016llx\"", i ? "," : "", (unsigned long long)s->brng.s[i]);
        dbuf_addstr(&b, "],\"samples\":[");
        for (int i = 0; i < s->nbuf; i++) {
            const struct st_sample *x = &s->buf[i]->s;
            dbuf_printf(&b, "%s[%u,%llu,%llu,\"", i ? "," : "", x->shard,
                        (unsigned long long)x->index, (unsigned long long)x->offset);
            b64_encode(&b, x->key, strlen(x->key));
            dbuf_addstr(&b, "\",[");
            for (int k = 0; k < x->n_fields; k++) {
                dbuf_addstr(&b, k ? ",[\"" : "[\"");
                b64_encode(&b, x->fields[k].name, strlen(x->fields[k].name));
                dbuf_addstr(&b, "\",\"");
                b64_encode(&b, x->fields[k].data, x->fields[k].size);
                dbuf_addstr(&b, "\"]");
            }
            dbuf_addstr(&b, "]]");
        }
        dbuf_addstr(&b, "]}");
    }
    dbuf_addstr(&b, "}");
    pthread_mutex_unlock(&s->mu);
    size_t n = b.len;
    if (cap) {
        size_t k = n < cap - 1 ? n : cap - 1;
        if (b.p) memcpy(buf, b.p, k);
        buf[k] = '\0';
    }
    dbuf_free(&b);
    return n;
}

static int json_u64(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 1;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != (double)(uint64_t)d) return 1;
    *out = (uint64_t)d;
    return 0;
}

static int b64_field(const cJSON *v, uint8_t **out, size_t *n) {
    if (!cJSON_IsString(v)) return 1;
    size_t tn = strlen(v->valuestring);
    *out = st_malloc(tn / 4 * 3 + 1);
    if (!*out) return 1;
    long long k = b64_decode(v->valuestring, tn, *out);
    if (k < 0) {
        st_free(*out);
        *out = NULL;
        return 1;
    }
    (*out)[k] = 0;
    *n = (size_t)k;
    return 0;
}

/* The shuffle buffer from a state record: *why is set when it is malformed. */
static enum st_status restore_buffer(struct st_stream *s, const cJSON *b, const char **why,
                                     struct st_error *err) {
    const cJSON *rng = cJSON_GetObjectItemCaseSensitive(b, "rng");
    const cJSON *smp = cJSON_GetObjectItemCaseSensitive(b, "samples");
    uint64_t drain;
    if (!cJSON_IsObject(b) || !cJSON_IsArray(rng) || cJSON_GetArraySize(rng) != 4 ||
        !cJSON_IsArray(smp) || cJSON_GetArraySize(smp) > s->B ||
        json_u64(cJSON_GetObjectItemCaseSensitive(b, "drain"), &drain) || drain > 1) {
        *why = "bad shuffle buffer";
        return ST_OK;
    }
    for (int i = 0; i < 4; i++) {
        const cJSON *x = cJSON_GetArrayItem(rng, i);
        char *end;
        if (!cJSON_IsString(x) || strlen(x->valuestring) != 16) {
            *why = "bad shuffle buffer rng";
            return ST_OK;
        }
        s->brng.s[i] = strtoull(x->valuestring, &end, 16);
        if (*end) {
            *why = "bad shuffle buffer rng";
            return ST_OK;
        }
    }
    s->draining = (int)drain;
    const cJSON *e;
    cJSON_ArrayForEach(e, smp) {
        uint64_t a[3];
        const cJSON *fl = cJSON_GetArrayItem(e, 4);
        if (!cJSON_IsArray(e) || cJSON_GetArraySize(e) != 5 || !cJSON_IsArray(fl) ||
            json_u64(cJSON_GetArrayItem(e, 0), &a[0]) ||
            json_u64(cJSON_GetArrayItem(e, 1), &a[1]) ||
            json_u64(cJSON_GetArrayItem(e, 2), &a[2]) || a[0] >= s->ds.list.n ||
            cJSON_GetArraySize(fl) > 1024) {
            *why = "bad shuffle buffer sample";
            return ST_OK;
        }
        int nf = cJSON_GetArraySize(fl);
        struct rec_field f[1024];
        uint8_t *key = NULL;
        size_t kn;
        int ok = !b64_field(cJSON_GetArrayItem(e, 3), &key, &kn) && strlen((char *)key) == kn;
        int k = 0;
        for (; ok && k < nf; k++) {
            const cJSON *fe = cJSON_GetArrayItem(fl, k);
            uint8_t *name = NULL, *data = NULL;
            size_t nn = 0;
            if (!cJSON_IsArray(fe) || cJSON_GetArraySize(fe) != 2 ||
                b64_field(cJSON_GetArrayItem(fe, 0), &name, &nn) ||
                b64_field(cJSON_GetArrayItem(fe, 1), &data, &f[k].size) ||
                strlen((char *)name) != nn) {
                st_free(name);
                st_free(data);
                ok = 0;
                break;
            }
            f[k].name = (const char *)name;
            f[k].data = data;
        }
        struct node *n = NULL;
        if (ok && s->buf_mem + 2 * s->node_max <= s->buf_cap) {
            n = node_make(s, (const char *)key, s->ds.list.shards[a[0]].url, (uint32_t)a[0],
                          a[1], a[2], nf, f, err);
            if (!n) ok = -1;
        } else if (ok) {
            ok = 0;
        }
        for (int i = 0; i < k; i++) {
            st_free((void *)f[i].name);
            st_free((void *)f[i].data);
        }
        st_free(key);
        if (ok < 0) return err->code ? err->code : ST_ERR_NOMEM;
        if (!ok) {
            *why = "bad shuffle buffer sample (or it does not fit this --stream-memory)";
            return ST_OK;
        }
        s->buf[s->nbuf++] = n;
        s->buf_mem += n->mem;
    }
    return ST_OK;
}

static enum st_status apply_state(struct st_stream *s, const char *text, struct st_error *err) {
    cJSON *root = cJSON_Parse(text);
    enum st_status rc = ST_OK;
    const char *bad = NULL;
    uint64_t v, epoch = 0, next = 0;
    if (!root || json_u64(cJSON_GetObjectItemCaseSensitive(root, "streamtune_stream"), &v) ||
        v != 1) {
        bad = "not a stream state record";
        goto out;
    }
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(root, "dataset");
    char fp[32];
    snprintf(fp, sizeof fp, "%016llx", (unsigned long long)s->ds.fingerprint);
    if (!cJSON_IsString(ds) || strcmp(ds->valuestring, fp) != 0) {
        bad = "it was saved for a different dataset (the shard list differs)";
        goto out;
    }
    const cJSON *part = cJSON_GetObjectItemCaseSensitive(root, "partition");
    uint64_t seed, pp, PP, sh, k;
    if (json_u64(cJSON_GetObjectItemCaseSensitive(root, "seed"), &seed) || !cJSON_IsArray(part) ||
        cJSON_GetArraySize(part) != 2 || json_u64(cJSON_GetArrayItem(part, 0), &pp) ||
        json_u64(cJSON_GetArrayItem(part, 1), &PP) ||
        json_u64(cJSON_GetObjectItemCaseSensitive(root, "shuffle"), &sh) ||
        json_u64(cJSON_GetObjectItemCaseSensitive(root, "k"), &k) ||
        json_u64(cJSON_GetObjectItemCaseSensitive(root, "epoch"), &epoch) ||
        json_u64(cJSON_GetObjectItemCaseSensitive(root, "next"), &next)) {
        bad = "a field is missing or malformed";
        goto out;
    }
    if (s->o.seed != 0 && seed != s->o.seed) {
        bad = "it was saved with another --seed";
        goto out;
    }
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(root, "by_samples");
    uint64_t bsv = 0;
    if (bs && json_u64(bs, &bsv)) {
        bad = "a field is missing or malformed";
        goto out;
    }
    if (pp != (uint64_t)s->p || PP != (uint64_t)s->P || bsv != (uint64_t)s->by_samples) {
        bad = "it was saved for another rank/world size/worker";
        goto out;
    }
    if (sh != (uint64_t)(s->o.shuffle ? 1 : 0) || k != (uint64_t)s->K) {
        bad = "it was saved with other shuffle settings (--no-shuffle / --shuffle-shards)";
        goto out;
    }
    s->o.seed = seed;
    if ((int64_t)epoch < 0 || epoch > (uint64_t)INT64_MAX / 2) {
        bad = "bad epoch";
        goto out;
    }
    s->epoch = (int64_t)epoch;
    const cJSON *rng = cJSON_GetObjectItemCaseSensitive(root, "rng");
    if (!cJSON_IsArray(rng) || cJSON_GetArraySize(rng) != 4) {
        bad = "bad rng";
        goto out;
    }
    for (int i = 0; i < 4; i++) {
        const cJSON *x = cJSON_GetArrayItem(rng, i);
        char *end;
        if (!cJSON_IsString(x) || strlen(x->valuestring) != 16) {
            bad = "bad rng";
            goto out;
        }
        s->rng.s[i] = strtoull(x->valuestring, &end, 16);
        if (*end) {
            bad = "bad rng";
            goto out;
        }
    }
    if ((rc = make_plan(s, s->epoch, &s->plan, &s->plan_n, err))) goto out;
    if (next > s->plan_n) {
        bad = "the shard position is past the end of the epoch";
        goto out;
    }
    s->next_pos = (uint32_t)next;
    const cJSON *slots = cJSON_GetObjectItemCaseSensitive(root, "slots");
    if (!cJSON_IsArray(slots) || cJSON_GetArraySize(slots) > s->K) {
        bad = "bad slots";
        goto out;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, slots) {
        uint64_t a[5];
        if (!cJSON_IsArray(e) || cJSON_GetArraySize(e) != 5) {
            bad = "bad slot";
            goto out;
        }
        for (int i = 0; i < 5; i++)
            if (json_u64(cJSON_GetArrayItem(e, i), &a[i])) {
                bad = "bad slot";
                goto out;
            }
        if (a[0] >= next || a[3] > a[4]) {
            bad = "bad slot";
            goto out;
        }
        uint32_t shard = s->plan[a[0]].shard;
        uint64_t size = s->ds.list.shards[shard].size;
        if (size != ST_SIZE_UNKNOWN && a[1] > size) {
            bad = "a slot offset is past the end of its shard";
            goto out;
        }
        struct reader *r =
            reader_new(s, s->epoch, (uint32_t)a[0], &s->plan[a[0]], a[1], a[2], a[3], a[4] - a[3]);
        if (!r) {
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            goto out;
        }
        r->r_index = a[4];
        r->r_skip = a[3];
        s->slots[s->n_slots++] = r;
    }
    uint64_t bsz = 0;
    const cJSON *bsj = cJSON_GetObjectItemCaseSensitive(root, "shuffle_buffer");
    if (bsj && json_u64(bsj, &bsz)) {
        bad = "bad shuffle_buffer";
        goto out;
    }
    if (bsz != (uint64_t)s->B) {
        bad = "it was saved with another --shuffle-buffer";
        goto out;
    }
    if (s->B) {
        const char *why = NULL;
        if ((rc = restore_buffer(s, cJSON_GetObjectItemCaseSensitive(root, "buffer"), &why, err)))
            goto out;
        if (why) {
            bad = why;
            goto out;
        }
    }
out:
    cJSON_Delete(root);
    if (bad) rc = st_errorf(err, ST_ERR_ARG, "cannot resume from the state record: %s", bad);
    return rc;
}

/* ---- open / next / close ---- */

static void stop_threads(struct st_stream *s) {
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->cv_parse);
    pthread_cond_broadcast(&s->cv_data);
    pthread_mutex_unlock(&s->mu);
    if (s->multi) curl_multi_wakeup(s->multi);
    if (s->io_started) pthread_join(s->io_thread, NULL);
    for (int i = 0; i < s->n_parse_threads; i++)
        pthread_join(s->parse_threads[i], NULL);
    s->io_started = 0;
    s->n_parse_threads = 0;
}

void st_stream_cancel(struct st_stream *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    if (!s->failed) {
        s->failed = 1;
        st_errorf(&s->fail_err, ST_ERR_IO, "the stream was cancelled");
    }
    s->stop = 1; /* the I/O and parse threads leave their loops; close joins them */
    pthread_cond_broadcast(&s->cv_parse);
    pthread_cond_broadcast(&s->cv_data);
    pthread_mutex_unlock(&s->mu);
    if (s->multi) curl_multi_wakeup(s->multi);
}

void st_stream_close(struct st_stream *s) {
    if (!s) return;
    stop_threads(s);
    if (s->cur) node_free(s, s->cur);
    for (int i = 0; i < s->nbuf; i++)
        node_free(s, s->buf[i]);
    st_free(s->buf);
    for (int i = 0; i < s->n_slots; i++)
        reader_free(s, s->slots[i]);
    struct reader *r = s->la_head;
    while (r) {
        struct reader *nx = r->next;
        reader_free(s, r);
        r = nx;
    }
    for (int i = 0; i < s->n_handles; i++)
        curl_easy_cleanup(s->handles[i]);
    if (s->multi) curl_multi_cleanup(s->multi);
    st_free(s->handles);
    st_free(s->free_handles);
    st_free(s->parse_threads);
    st_free(s->slots);
    st_free(s->plan);
    st_free(s->plan2);
    dataset_free(&s->ds);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv_data);
    pthread_cond_destroy(&s->cv_parse);
    st_free(s);
}

enum st_status st_stream_open(struct st_stream **out, const struct st_stream_options *opts,
                              struct st_error *err) {
    *out = NULL;
    const struct st_stream_options *o = opts;
    if (o->world_size < 1 || o->rank < 0 || o->rank >= o->world_size)
        return st_errorf(err, ST_ERR_ARG, "rank %d is not in [0, world size %d)", o->rank,
                         o->world_size);
    if (o->num_workers < 1 || o->worker < 0 || o->worker >= o->num_workers)
        return st_errorf(err, ST_ERR_ARG, "worker %d is not in [0, workers %d)", o->worker,
                         o->num_workers);
    if (o->shuffle_shards < 0 || o->shuffle_shards > 256 || o->connections < 1 ||
        o->connections > 256 || o->threads < 1 || o->threads > 64 || o->max_retries < 0 ||
        o->epoch < 0 || o->epochs < 0 || o->prefetch_shards > 256)
        return st_errorf(err, ST_ERR_ARG, "stream options out of range");
    fetch_global_init();
    struct st_stream *s = st_calloc(1, sizeof *s);
    if (!s) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    s->o = *o;
    s->t_open = st_time_now();
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv_data, NULL);
    pthread_cond_init(&s->cv_parse, NULL);
    fetch_policy_from(&s->pol, o);
    st_rng_seed(&s->jitter, seed_mix(o->seed, (uint64_t)(st_time_now() * 1e6)));
    enum st_status rc = dataset_open(&s->ds, o, err);
    if (rc) {
        st_stream_close(s);
        return rc;
    }
    s->P = o->world_size * o->num_workers;
    s->p = o->rank * o->num_workers + o->worker;
    int counts = s->ds.list.n > 0;
    for (uint32_t i = 0; i < s->ds.list.n; i++)
        if (s->ds.list.shards[i].samples < 0) counts = 0;
    if (o->partition_by_samples > 0 && !counts) {
        rc = st_errorf(err, ST_ERR_ARG,
                       "--partition samples needs every shard's record count: stream from an "
                       "index manifest (streamtune data index)");
        st_stream_close(s);
        return rc;
    }
    s->by_samples = counts && o->partition_by_samples >= 0;
    s->K = o->shuffle_shards > 0 ? o->shuffle_shards : (o->shuffle ? 8 : 1);
    s->L = o->prefetch_shards >= 0 ? o->prefetch_shards : (s->K / 2 > 0 ? s->K / 2 : 1);
    s->B = o->shuffle_buffer >= 0 ? o->shuffle_buffer : (o->shuffle ? 1000 : 0);
    /* budget layout (see DESIGN); a shuffle buffer takes a quarter */
    s->buf_cap = s->B ? o->memory_budget / 4 : 0;
    size_t fixed = (size_t)o->connections * CONN_OVERHEAD + NODE_OVERHEAD_MAX + s->buf_cap;
    size_t nread = (size_t)(s->K + s->L);
    size_t q = o->memory_budget > fixed ? (o->memory_budget - fixed) / (nread * 8 + 1) * 8 : 0;
    if (q < MIN_QUOTA) {
        /* the least budget that passes: the readers' quotas and the connections after the
         * shuffle buffer's quarter of the budget itself, and that quarter big enough for two of
         * the largest records (the check below) */
        size_t base = fixed - s->buf_cap + (nread * 8 + 1) * MIN_QUOTA / 8, least = base;
        if (s->B) {
            least = (base * 4 + 2) / 3;
            size_t for_buf = 8 * (MIN_QUOTA / 8 + NODE_OVERHEAD_MAX);
            if (least < for_buf) least = for_buf;
        }
        rc = st_errorf(err, ST_ERR_ARG,
                       "--stream-memory %zu MiB is too small for %zu shard readers and %d "
                       "connections: give at least %zu MiB (or lower --shuffle-shards, "
                       "--prefetch-shards, --connections)",
                       o->memory_budget >> 20, nread, o->connections,
                       (least + (1 << 20) - 1) >> 20);
        st_stream_close(s);
        return rc;
    }
    s->quota = q;
    s->half = q / 2;
    s->max_rec = q / 8;
    s->node_max = s->max_rec + NODE_OVERHEAD_MAX;
    if (s->B && s->buf_cap < 2 * s->node_max) {
        rc = st_errorf(err, ST_ERR_ARG,
                       "--stream-memory %zu MiB is too small for a shuffle buffer: give more or "
                       "--shuffle-buffer 0",
                       o->memory_budget >> 20);
        st_stream_close(s);
        return rc;
    }
    if (s->B) {
        s->buf = st_calloc((size_t)s->B, sizeof *s->buf);
        if (!s->buf) {
            st_stream_close(s);
            return st_errorf(err, ST_ERR_NOMEM, "out of memory");
        }
    }
    size_t ps = o->part_size < q / 8 ? o->part_size : q / 8;
    if (ps < 4096) ps = 4096;
    s->part_size = ps;
    s->wlog_max = 10;
    for (int w = 27; w >= 10; w--)
        if (decomp_mem(COMP_ZSTD, w) + OUTBUF_SIZE <= q / 4) {
            s->wlog_max = w;
            break;
        }
    s->st.mem_budget = o->memory_budget;
    s->st.n_shards = s->ds.list.n;
    s->end_epoch = o->epochs > 0 ? o->epoch + o->epochs : INT64_MAX;
    s->slots = st_calloc((size_t)s->K, sizeof *s->slots);
    if (!s->slots) {
        st_stream_close(s);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    }
    s->epoch = o->epoch;
    if (o->resume_state && *o->resume_state) {
        rc = apply_state(s, o->resume_state, err);
    } else {
        rc = make_plan(s, s->epoch, &s->plan, &s->plan_n, err);
        epoch_rng(s, s->epoch);
        buffer_rng(s);
    }
    if (rc) {
        st_stream_close(s);
        return rc;
    }
    if (s->plan_n == 0 && s->ds.list.n > 0)
        st_log(ST_LOG_WARN, "partition %d of %d gets no shards (%u shards in the dataset)", s->p,
               s->P, s->ds.list.n);
    s->st.plan_shards = s->plan_n;
    s->st.epoch = s->epoch;
    s->first_sample_unset = 1;
    if (s->epoch >= s->end_epoch) s->finished = 1;
    s->la_epoch = s->epoch;
    s->la_pos = s->next_pos;
    if ((rc = fill_lookahead(s, err))) {
        st_stream_close(s);
        return rc;
    }
    /* curl handles and threads */
    s->multi = curl_multi_init();
    s->n_handles = o->connections;
    s->handles = st_calloc((size_t)s->n_handles, sizeof *s->handles);
    s->free_handles = st_calloc((size_t)s->n_handles, sizeof *s->free_handles);
    s->parse_threads = st_calloc((size_t)o->threads, sizeof *s->parse_threads);
    if (!s->multi || !s->handles || !s->free_handles || !s->parse_threads) {
        st_stream_close(s);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    }
    curl_multi_setopt(s->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)o->connections);
    for (int i = 0; i < s->n_handles; i++) {
        s->handles[i] = curl_easy_init();
        if (!s->handles[i]) {
            s->n_handles = i;
            st_stream_close(s);
            return st_errorf(err, ST_ERR_NOMEM, "cannot create curl handles");
        }
        s->free_handles[s->n_free++] = s->handles[i];
    }
    if (pthread_create(&s->io_thread, NULL, io_main, s) != 0) {
        st_stream_close(s);
        return st_errorf(err, ST_ERR_NOMEM, "cannot start the I/O thread");
    }
    s->io_started = 1;
    for (int i = 0; i < o->threads; i++) {
        if (pthread_create(&s->parse_threads[i], NULL, parse_main, s) != 0) {
            st_stream_close(s);
            return st_errorf(err, ST_ERR_NOMEM, "cannot start parse threads");
        }
        s->n_parse_threads++;
    }
    *out = s;
    return ST_OK;
}

static enum st_status fail(struct st_stream *s, const struct st_error *e, struct st_error *err) {
    if (!s->failed) {
        s->failed = 1;
        s->fail_err = *e;
    }
    if (err) *err = s->fail_err;
    pthread_mutex_unlock(&s->mu);
    return s->fail_err.code ? s->fail_err.code : ST_ERR_IO;
}

/* The next record of the interleaved shards; the caller owns *outn. */
static enum st_status next_raw(struct st_stream *s, struct node **outn, struct st_error *err) {
    pthread_mutex_lock(&s->mu);
    if (s->failed) return fail(s, &s->fail_err, err);
    for (;;) {
        if (s->finished) {
            pthread_mutex_unlock(&s->mu);
            return ST_STREAM_END;
        }
        struct st_error e = {0};
        int created = 0;
        while (s->n_slots < s->K && s->next_pos < s->plan_n) {
            struct reader *r = take_next(s);
            if (!r) {
                st_errorf(&e, ST_ERR_NOMEM, "out of memory");
                return fail(s, &e, err);
            }
            s->slots[s->n_slots++] = r;
            created = 1;
        }
        if (s->n_la < s->L && !s->la_done) {
            int before = s->n_la;
            if (fill_lookahead(s, &e)) return fail(s, &e, err);
            if (s->n_la > before)
                created = 1;
            else
                s->la_done = 1; /* nothing left to look ahead at (until the next epoch) */
        }
        if (created && s->multi) curl_multi_wakeup(s->multi); /* new readers to fetch for */
        if (s->n_slots == 0) {
            /* end of the epoch */
            s->epoch++;
            s->next_pos = 0;
            epoch_rng(s, s->epoch);
            if (s->epoch >= s->end_epoch) {
                s->finished = 1;
            } else if (s->plan2 && s->plan2_epoch == s->epoch) {
                st_free(s->plan);
                s->plan = s->plan2;
                s->plan_n = s->plan2_n;
                s->plan2 = NULL;
            } else {
                st_free(s->plan);
                s->plan = NULL;
                if (make_plan(s, s->epoch, &s->plan, &s->plan_n, &e)) return fail(s, &e, err);
            }
            s->st.epoch = s->epoch;
            s->st.plan_shards = s->plan_n;
            s->la_done = 0;
            pthread_mutex_unlock(&s->mu);
            return ST_STREAM_END;
        }
        int j = s->n_slots > 1 ? (int)rng_below(&s->rng, (uint64_t)s->n_slots) : 0;
        struct reader *r = s->slots[j];
        if (s->want != r) {
            s->want = r;
            if (s->parse_waiting) pthread_cond_broadcast(&s->cv_parse);
        }
        if (!r->q_head && !r->failed && !r->parse_done) {
            double t0 = st_time_now();
            while (!r->q_head && !r->failed && !r->parse_done && !s->stop)
                pthread_cond_wait(&s->cv_data, &s->mu);
            s->st.wait_s += st_time_now() - t0;
        }
        if (s->failed) return fail(s, &s->fail_err, err);
        if (!r->q_head && r->failed) return fail(s, &r->err, err); /* records before it first */
        if (r->q_head) {
            struct node *n = r->q_head;
            r->q_head = n->next;
            if (!r->q_head) r->q_tail = NULL;
            int was_full = r->q_mem > q_low(s);
            r->q_mem -= n->mem;
            r->r_off = n->a_off;
            r->r_doff = n->a_doff;
            r->r_skip = n->a_skip;
            r->r_index = n->a_index;
            *outn = n;
            if (was_full && r->q_mem <= q_low(s) && s->parse_waiting)
                pthread_cond_broadcast(&s->cv_parse);
            pthread_mutex_unlock(&s->mu);
            return ST_OK;
        }
        /* the shard is done: replace the slot in place, or remove it */
        if (s->want == r) s->want = NULL;
        reader_free(s, r);
        s->st.shards_done++;
        if (s->next_pos < s->plan_n) {
            struct reader *nr = take_next(s);
            if (!nr) {
                s->slots[j] = s->slots[--s->n_slots];
                st_errorf(&e, ST_ERR_NOMEM, "out of memory");
                return fail(s, &e, err);
            }
            s->slots[j] = nr;
            if (s->multi) curl_multi_wakeup(s->multi);
        } else {
            memmove(s->slots + j, s->slots + j + 1,
                    (size_t)(s->n_slots - j - 1) * sizeof *s->slots);
            s->n_slots--;
        }
    }
}

enum st_status st_stream_next(struct st_stream *s, struct st_sample *out, struct st_error *err) {
    struct st_error local;
    if (!err) err = &local;
    if (s->cur) { /* only this thread touches cur */
        node_free(s, s->cur);
        s->cur = NULL;
    }
    struct node *n;
    enum st_status rc;
    if (!s->B) {
        if ((rc = next_raw(s, &n, err))) return rc;
        pthread_mutex_lock(&s->mu);
        count_sample(s);
        pthread_mutex_unlock(&s->mu);
        s->cur = n;
        *out = n->s;
        return ST_OK;
    }
    /* fill the buffer while it has room for one more record besides the one being returned */
    while (!s->draining && s->nbuf < s->B && s->buf_mem + 2 * s->node_max <= s->buf_cap) {
        rc = next_raw(s, &n, err);
        if (rc == ST_STREAM_END) {
            s->draining = 1;
            break;
        }
        if (rc) { /* the samples read before the error come first, as without a buffer */
            s->buf_rc = rc;
            s->buf_err = *err;
            s->draining = 1;
            break;
        }
        pthread_mutex_lock(&s->mu); /* st_stream_stats reads the stream under it */
        s->buf[s->nbuf++] = n;
        s->buf_mem += n->mem;
        pthread_mutex_unlock(&s->mu);
    }
    if (!s->nbuf && s->buf_rc) {
        if (err) *err = s->buf_err;
        return s->buf_rc;
    }
    if (!s->nbuf) { /* drained: the epoch (already advanced by next_raw) is over */
        s->draining = 0;
        buffer_rng(s);
        return ST_STREAM_END;
    }
    pthread_mutex_lock(&s->mu);
    uint32_t j = s->nbuf > 1 ? (uint32_t)rng_below(&s->brng, (uint64_t)s->nbuf) : 0;
    n = s->buf[j];
    s->buf[j] = s->buf[--s->nbuf];
    s->buf_mem -= n->mem;
    count_sample(s);
    pthread_mutex_unlock(&s->mu);
    s->cur = n;
    *out = n->s;
    return ST_OK;
}

void st_stream_stats(struct st_stream *s, struct st_stream_stats *out) {
    pthread_mutex_lock(&s->mu);
    *out = s->st;
    if (s->first_sample_unset) out->first_sample_s = -1; /* written by count_sample, locked */
    pthread_mutex_unlock(&s->mu);
    out->elapsed_s = st_time_now() - s->t_open;
    out->mem_used = atomic_load(&s->mem_used);
    out->mem_peak = atomic_load(&s->mem_peak);
    out->bytes_per_s = out->elapsed_s > 0 ? (double)out->bytes_fetched / out->elapsed_s : 0;
    out->samples_per_s = out->elapsed_s > 0 ? (double)out->samples / out->elapsed_s : 0;
}
