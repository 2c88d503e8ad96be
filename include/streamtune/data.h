/* streamtune data layer: CloudStreamingDataset.
 *
 * Streams training samples from shards on disk (file:// or plain paths), HTTP(S) servers and
 * S3-compatible object stores (s3://, SigV4), decompressing (gzip, zstd) and parsing (JSONL,
 * WebDataset tar) in memory on the stream's own threads, inside a fixed memory budget.
 *
 * DESIGN
 * - The order of samples is a pure function of (dataset listing, seed, epoch, partition): shard
 *   order is a seeded permutation per epoch; the shards of this partition are read by K
 *   "slots" (options.shuffle_shards) and each next() picks a slot with the stream's st_rng and
 *   returns that slot's next sample, so samples of K shards are interleaved at random while each
 *   shard is read front to back. Timing, retries and faults never change the order.
 * - The state record (st_stream_state) holds the epoch, the rng, the next shard of the plan and,
 *   per slot, the byte offset where its next sample starts (for compressed shards: the last
 *   frame boundary before it plus a count of records to skip). Resuming opens each slot at that
 *   offset with a ranged read, so consumed bytes are not downloaded again.
 * - Memory: the budget (options.memory_budget) is split into equal quotas for the K slot readers
 *   and the look-ahead readers (the next shards of the plan), each quota holding fetched parts,
 *   decoder state and parsed samples. No allocation of stream data happens without a reservation,
 *   so stats.mem_peak never exceeds the budget.
 * - Threads: one I/O thread runs a libcurl multi handle (parallel ranged GETs, retries with
 *   back-off and jitter) and reads files; parse threads decompress and split shards; the caller
 *   only calls st_stream_next, which returns a sample that stays valid until the next call.
 */
#ifndef STREAMTUNE_DATA_H
#define STREAMTUNE_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "streamtune/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Returned by st_stream_next at the end of an epoch. It is not an error (no message is written);
 * the next call starts the following epoch, unless options.epochs says the stream is over, in
 * which case every further call returns ST_STREAM_END again. */
#define ST_STREAM_END ((enum st_status)64)

/* ---- samples ---- */

struct st_sample_field {
    const char *name;    /* "json" for a JSONL record; the extension ("jpg", "seg.png") in a tar */
    const uint8_t *data; /* size bytes followed by a NUL (not counted in size) */
    size_t size;
};

struct st_sample {
    const char *key; /* JSONL: "<shard name>:<record number>"; tar: the WebDataset key */
    const char *url; /* the shard it came from */
    uint32_t shard;  /* index of that shard in the dataset listing */
    uint64_t index;  /* record number within the shard (0-based) */
    uint64_t offset; /* byte offset of the record in the decompressed shard */
    int n_fields;
    const struct st_sample_field *fields;
    /* fields[0], for convenience: the raw line bytes of a JSONL record (no newline) */
    const uint8_t *data;
    size_t size;
};

/* The field called name, or NULL. */
const struct st_sample_field *st_sample_field(const struct st_sample *s, const char *name);

/* ---- options ---- */

enum st_shard_format { ST_FORMAT_AUTO = 0, ST_FORMAT_JSONL, ST_FORMAT_TAR };

struct st_stream_options {
    /* Source. url: a file or directory path, file:// URL, http(s):// URL, s3://bucket/prefix, or
     * an index manifest (*.json; see st_index_write). Brace lists expand: shard-{000..099}.tar.
     * Alternatively urls/n_urls: an explicit list of shard URLs. */
    const char *url;
    const char *const *urls;
    int n_urls;
    enum st_shard_format format; /* AUTO: from the file name (.tar/.tgz/.tar.* = tar, else JSONL) */

    /* S3: endpoint (else AWS_ENDPOINT_URL, else AWS), region (else AWS_REGION/AWS_DEFAULT_REGION,
     * the profile's region, or us-east-1), profile (else AWS_PROFILE, else "default"). Explicit
     * keys override the environment and ~/.aws/credentials. anonymous: send unsigned requests. */
    const char *endpoint_url;
    const char *region;
    const char *profile;
    const char *access_key_id, *secret_access_key, *session_token;
    int anonymous;

    /* Order. shuffle: permute shards per epoch and interleave shuffle_shards slots at random
     * (0 = read shards in listing order, one at a time). */
    int shuffle;
    uint64_t seed;
    int shuffle_shards; /* K: shards read at once and interleaved (default 8; 1 without shuffle) */
    /* Sample shuffle buffer after the interleave (webdataset/HF style): holds up to this many
     * samples and returns a random one of them; -1 = default (1000 with shuffle, 0 without).
     * It gets a quarter of memory_budget; its samples travel in the state record, so a resumed
     * stream continues exactly (and the record grows by their size, base64-encoded). Samples
     * never cross an epoch boundary: the buffer drains at the end of each epoch. */
    int shuffle_buffer;
    int64_t epoch;      /* first epoch (default 0) */
    int64_t epochs;     /* stop after this epoch count (0 = never stop; next() starts the next) */

    /* Partition p = rank * num_workers + worker of P = world_size * num_workers. By shards: the
     * shards at positions i % P == p of the epoch's order. By samples (needs every shard's
     * record count, i.e. an index manifest): the epoch's records laid end to end in that order,
     * partition p takes records [p*T/P, (p+1)*T/P), so every rank gets the same count (+-1);
     * the shards at a boundary are read in part by both neighbours. partition_by_samples:
     * 0 = by samples when an index gives the counts (default), 1 = require it, -1 = by shards. */
    int rank, world_size;
    int worker, num_workers;
    int partition_by_samples;

    /* Resources. */
    size_t memory_budget; /* bytes for all stream buffers (default 512 MiB) */
    size_t part_size;     /* ranged GET size (default 8 MiB; lowered to fit the budget) */
    int connections;      /* parallel transfers (default 16) */
    int threads;          /* parse threads (default 1) */
    int prefetch_shards;  /* look-ahead readers beyond the K slots (default K/2, at least 1) */

    /* Retries: attempts after the first (default 10); back-off base and cap in seconds (0.2, 10),
     * full jitter; Retry-After is honoured up to retry_after_max (30 s). A transfer that moves
     * fewer than 1 byte/s for stall_timeout seconds (default 30) is retried. */
    int max_retries;
    double backoff_base, backoff_max, retry_after_max, stall_timeout, connect_timeout;

    /* Records. json_check: validate every JSONL record with cJSON (default 1; -1 turns it off).
     * verify_hashes: with an index, check each shard's SHA-256 when it was read whole (default 1;
     * -1 turns it off). */
    int json_check;
    int verify_hashes;

    /* Resume from a record returned by st_stream_state (NULL: start of options.epoch). */
    const char *resume_state;
};

/* Defaults for every field (url left NULL). */
void st_stream_options_init(struct st_stream_options *o);

/* Set one option from its command-line name and text value, e.g. ("stream-memory", "512M"),
 * ("seed", "7"), ("shuffle-shards", "8"), ("endpoint-url", U). Strings are not copied: value must
 * outlive the options. Returns ST_ERR_ARG with a message for an unknown name or bad value, and
 * sets *known = 0 when name is not a stream option (so a CLI can try its own options). */
enum st_status st_stream_option_set(struct st_stream_options *o, const char *name,
                                    const char *value, int *known, struct st_error *err);
/* 1 when the stream option name (without the dashes) takes no value: shuffle, no-shuffle,
 * no-json-check, anonymous. */
int st_stream_option_is_flag(const char *name);
/* One line per option for --help texts. */
extern const char st_stream_options_help[];

/* Parse "512M", "2G", "65536", "1.5GiB" into bytes. 0 on success. */
int st_parse_size(const char *s, size_t *out);

/* ---- the stream ---- */

struct st_stream;

struct st_stream_stats {
    double elapsed_s;       /* since open */
    double first_sample_s;  /* open to the first sample returned (-1 before) */
    double wait_s;          /* time the consumer spent waiting inside st_stream_next */
    uint64_t samples;       /* samples returned */
    uint64_t bytes_fetched; /* bytes received from the sources (disk or network), retries too */
    uint64_t bytes_decoded; /* bytes of decompressed shard data parsed */
    uint64_t requests;      /* ranged reads issued (first attempts) */
    uint64_t retries;       /* attempts after a failure */
    uint64_t retry_conn, retry_timeout, retry_truncated, retry_5xx, retry_throttled;
    uint64_t shards_done;                  /* shards read to their end */
    double bytes_per_s, samples_per_s;     /* averages since open */
    size_t mem_budget, mem_used, mem_peak; /* bytes reserved by the stream (peak <= budget) */
    int64_t epoch;                         /* current epoch */
    uint32_t n_shards;                     /* shards in the dataset listing */
    uint32_t plan_shards;                  /* shards of this partition in the current epoch */
};

/* Open a stream: lists the source, plans the epoch and starts the I/O and parse threads (which
 * start fetching at once). On failure *out is NULL and err names the URL and what to check. */
enum st_status st_stream_open(struct st_stream **out, const struct st_stream_options *opts,
                              struct st_error *err);

/* Next sample into *out (valid until the next call or st_stream_close). Returns ST_OK,
 * ST_STREAM_END at the end of an epoch, or an error (the stream is then unusable: close it). */
enum st_status st_stream_next(struct st_stream *s, struct st_sample *out, struct st_error *err);

/* From another thread: stop the stream's transfers and make its st_stream_next calls return an
 * error instead of waiting for data (a consumer that needs no more samples, e.g. a trainer past
 * its last step, is not kept waiting on a slow or dead server). Samples the shuffle buffer
 * already holds may still come first, as before any read error. Then st_stream_close it. */
void st_stream_cancel(struct st_stream *s);

/* Write the resume record (a one-line JSON object) describing the position after the last
 * sample returned. Without a shuffle buffer it is < 4 KiB for K <= 64; with one it also holds the
 * buffered samples. Returns its length, or the length needed if >= cap (call again with a
 * buffer of that size + 1). Call it from the thread that calls st_stream_next. */
size_t st_stream_state(struct st_stream *s, char *buf, size_t cap);

void st_stream_stats(struct st_stream *s, struct st_stream_stats *out);

/* Stop the threads and free everything (NULL is fine). */
void st_stream_close(struct st_stream *s);

/* ---- listing and index ---- */

struct st_shard_info {
    char *url;       /* full URL or path */
    char *name;      /* display name: the part after the source prefix */
    uint64_t size;   /* bytes; UINT64_MAX when unknown (HTTP without an index) */
    char *etag;      /* NULL when unknown */
    int64_t samples; /* -1 when unknown (no index) */
    char sha256[65]; /* hex, "" when unknown */
};

struct st_shard_list {
    struct st_shard_info *shards;
    uint32_t n;
    int from_index; /* listed by an index manifest */
};

/* List the shards a source names (same rules as st_stream_options.url/urls). */
enum st_status st_data_list(const struct st_stream_options *opts, struct st_shard_list *out,
                            struct st_error *err);
void st_shard_list_free(struct st_shard_list *l);

/* Read every shard of the source once and write an index manifest (JSON: shard URLs relative to
 * base_url when they start with it, byte sizes, sample counts, SHA-256) to out_path ("-" for
 * stdout). progress(done, total, ctx) is called after each shard (may be NULL). */
enum st_status st_index_write(const struct st_stream_options *opts, const char *base_url,
                              const char *out_path,
                              void (*progress)(uint32_t done, uint32_t total, void *ctx), void *ctx,
                              struct st_error *err);

/* Read a whole object (file, http(s), s3) into memory, at most max_bytes (with retries). */
enum st_status st_data_read_url(const struct st_stream_options *opts, const char *url,
                                size_t max_bytes, uint8_t **out, size_t *len, struct st_error *err);

#ifdef __cplusplus
}
#endif
#endif
