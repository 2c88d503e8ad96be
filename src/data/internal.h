/* internal.h: what the files of src/data share. Nothing here is public API.
 *
 * Layers (each only calls the ones below it):
 *   stream.c            plan, slots, readers, I/O and parse threads, state, stats
 *   source.c            listing (directories, brace lists, S3 ListObjectsV2, index manifests)
 *   fetch.c  s3.c       ranged reads: curl easy setup, response checks, retry policy; SigV4
 *   jsonl.c  tar.c      record parsers over decompressed bytes
 *   decomp.c sha256.c util.c
 */
#ifndef ST_DATA_INTERNAL_H
#define ST_DATA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "streamtune/core.h"
#include "streamtune/data.h"

#define ST_SIZE_UNKNOWN UINT64_MAX

/* ---- util.c ---- */

/* A growable byte buffer with a hard cap (curl's dynbuf idea). p is NUL-terminated when non-NULL
 * (one byte beyond len is always allocated). */
struct dbuf {
    char *p;
    size_t len, cap, max;
};
void dbuf_init(struct dbuf *b, size_t max);
/* 0 on success; 1 when the cap would be exceeded or memory ran out (b unchanged). */
int dbuf_add(struct dbuf *b, const void *d, size_t n);
int dbuf_addstr(struct dbuf *b, const char *s);
int dbuf_printf(struct dbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int dbuf_reserve(struct dbuf *b, size_t n); /* room for n more bytes */
void dbuf_reset(struct dbuf *b);            /* len = 0, keeps the memory */
void dbuf_free(struct dbuf *b);
/* Take ownership of the buffer (NUL-terminated; an empty string when nothing was added). */
char *dbuf_take(struct dbuf *b);

/* Standard base64 (RFC 4648, padded) of n bytes appended to b; 0 on success. */
int b64_encode(struct dbuf *b, const void *d, size_t n);
/* Decode text (length tn) into out (room for tn / 4 * 3 bytes); -1 on malformed input, else the
 * decoded length. */
long long b64_decode(const char *text, size_t tn, uint8_t *out);

/* Percent-encode s into b (RFC 3986 unreserved kept; '/' kept when keep_slash). */
int url_encode(struct dbuf *b, const char *s, int keep_slash);
/* Decode %XX escapes (and '+' -> ' ' when plus) in place; returns 1 on a malformed escape. */
int url_decode_inplace(char *s, int plus);

enum url_scheme { URL_FILE = 0, URL_HTTP, URL_S3 };
/* Scheme of a URL; file:// and plain paths are URL_FILE. *rest points after "scheme://" (for
 * file://, at the path). Returns -1 for an unsupported scheme ("ftp://..."). */
int url_scheme(const char *url, const char **rest);

/* Expand brace lists: "a{00..02}b{x,y}" -> a00bx a00by a01bx ... (at most max results).
 * *out is an st_malloc'd array of st_malloc'd strings. */
enum st_status brace_expand(const char *pattern, size_t max, char ***out, size_t *n,
                            struct st_error *err);
void str_array_free(char **a, size_t n);

/* Mix integers into a 64-bit seed (splitmix-style). */
uint64_t seed_mix(uint64_t a, uint64_t b);

/* ---- sha256.c ---- */
struct sha256 {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t n;
};
void sha256_init(struct sha256 *c);
void sha256_update(struct sha256 *c, const void *data, size_t n);
void sha256_final_hex(struct sha256 *c, char hex[65]);

/* ---- decomp.c: streaming gzip/zstd ---- */
enum comp { COMP_NONE = 0, COMP_GZIP, COMP_ZSTD };

struct decomp {
    enum comp kind;
    void *z;      /* z_stream* (gzip) */
    void *zs;     /* ZSTD_DCtx* */
    int in_frame; /* inside a frame/member (EOF now would be truncation) */
    int ended;    /* a frame/member has ended (gzip: zero bytes after one are padding) */
    int wlog_max;
    uint64_t in_total; /* compressed bytes consumed since init */
    uint64_t in_base;  /* compressed offset of the first byte fed (for messages) */
};
/* Compression from the first bytes (magic numbers); COMP_NONE when neither. */
enum comp decomp_sniff(const uint8_t *p, size_t n);
/* Compression from a file name (.gz, .tgz, .zst, .zstd); COMP_NONE otherwise. */
enum comp comp_from_name(const char *name);
/* Bytes to reserve for a decoder of this kind (window + buffers). */
size_t decomp_mem(enum comp kind, int wlog_max);
/* in_base: compressed offset where decoding starts (a frame/member boundary). */
enum st_status decomp_init(struct decomp *d, enum comp kind, int wlog_max, uint64_t in_base,
                           const char *what, struct st_error *err);
/* Decode from in[0, in_len) into out[0, out_cap). *frame_end is set when a frame or gzip member
 * ended at in[*in_used] (the decoder is then ready for the next one). Errors name what and the
 * compressed byte offset. */
enum st_status decomp_run(struct decomp *d, const uint8_t *in, size_t in_len, size_t *in_used,
                          uint8_t *out, size_t out_cap, size_t *out_len, int *frame_end,
                          const char *what, struct st_error *err);
/* At the end of the input: an error when a frame was cut short. */
enum st_status decomp_finish(struct decomp *d, const char *what, struct st_error *err);
void decomp_free(struct decomp *d);

/* ---- records: what the parsers emit ---- */
struct rec_field {
    const char *name;
    const uint8_t *data;
    size_t size;
};
struct rec {
    const char *key; /* NULL for JSONL (the reader makes "<shard>:<n>") */
    uint64_t index;  /* record number in the shard */
    uint64_t offset; /* decompressed offset of its first byte */
    uint64_t end;    /* decompressed offset just past it (where the next record's data starts) */
    int n_fields;
    const struct rec_field *fields;
};
/* Called for each record. Return 0 to go on, 1 to pause the parser after this record (feed then
 * returns with the rest of its input unused), or -1 with err set to fail. */
typedef int (*rec_emit_fn)(void *ctx, const struct rec *r, struct st_error *err);

/* ---- jsonl.c ---- */
struct jsonl {
    struct dbuf carry; /* the start of a record cut by the end of the previous input */
    uint64_t off;      /* decompressed offset of the next input byte */
    uint64_t line;     /* 1-based line number of the next line */
    uint64_t rec;      /* records emitted so far (+ first index) */
    size_t max_rec;    /* longest record accepted */
    int json_check;
};
void jsonl_init(struct jsonl *p, uint64_t start_off, uint64_t first_index, size_t max_rec,
                int json_check);
/* Split in[0, n) into records; *used = bytes consumed (all of them unless the emitter paused). */
enum st_status jsonl_feed(struct jsonl *p, const uint8_t *in, size_t n, size_t *used,
                          rec_emit_fn emit, void *ctx, const char *what, struct st_error *err);
/* End of shard: emits a last record without a newline. */
enum st_status jsonl_end(struct jsonl *p, rec_emit_fn emit, void *ctx, const char *what,
                         struct st_error *err);
size_t jsonl_mem(const struct jsonl *p);
void jsonl_free(struct jsonl *p);
/* Validate one record as JSON; 0 when fine, else *bad_at = offset of the error within it. */
int jsonl_check_record(const uint8_t *d, size_t n, size_t *bad_at);

/* ---- tar.c: WebDataset samples from a tar stream ---- */
#define TAR_MAX_FIELDS 64
struct tar {
    int state; /* see tar.c */
    uint8_t hdr[512];
    size_t hdr_fill;
    uint64_t off;        /* offset of the next input byte */
    uint64_t member_off; /* header offset of the current member */
    uint64_t remaining;  /* data bytes left in the current member */
    uint64_t pad;        /* padding bytes left after it */
    int zero_blocks;
    int mode;         /* what to do with the member data (tar.c) */
    struct dbuf meta; /* pax 'x' record or GNU long name being read */
    char *long_name;  /* from a GNU 'L' header, for the next member */
    char *pax_path;   /* from a pax 'x' header, for the next member */
    int64_t pax_size; /* -1 when absent */
    /* sample under construction */
    struct dbuf key;
    struct dbuf data; /* field payloads, each followed by a NUL */
    int n_fields;
    size_t field_off[TAR_MAX_FIELDS], field_size[TAR_MAX_FIELDS];
    char *field_name[TAR_MAX_FIELDS];
    uint64_t sample_off, sample_end;
    uint64_t rec;
    size_t max_rec;
    int ended; /* saw the end-of-archive blocks */
};
void tar_init(struct tar *t, uint64_t start_off, uint64_t first_index, size_t max_rec);
enum st_status tar_feed(struct tar *t, const uint8_t *in, size_t n, size_t *used, rec_emit_fn emit,
                        void *ctx, const char *what, struct st_error *err);
enum st_status tar_end(struct tar *t, rec_emit_fn emit, void *ctx, const char *what,
                       struct st_error *err);
size_t tar_mem(const struct tar *t);
void tar_free(struct tar *t);
/* WebDataset's name split: key = path up to the first dot of the basename, ext = the rest.
 * Returns 0 and sets *key_len and *ext when the name has an extension; 1 otherwise. */
int wds_split(const char *name, size_t *key_len, const char **ext);

/* ---- s3.c ---- */
struct s3_cfg {
    char *endpoint; /* "http://127.0.0.1:9000" (path-style) or NULL: AWS virtual-hosted */
    char *region;
    char *akid, *secret, *token;
    int anonymous;
    char sigv4[96]; /* "aws:amz:<region>:s3" */
};
enum st_status s3_cfg_load(struct s3_cfg *c, const struct st_stream_options *o,
                           struct st_error *err);
void s3_cfg_free(struct s3_cfg *c);
/* Split "s3://bucket/key" (rest = "bucket/key"). */
enum st_status s3_split(const char *url, char **bucket, char **key, struct st_error *err);
/* Request URL of an object, keys encoded per segment. */
enum st_status s3_object_url(const struct s3_cfg *c, const char *bucket, const char *key,
                             char **out, struct st_error *err);
/* ListObjectsV2 request URL (query sorted and encoded for SigV4). token may be NULL. */
enum st_status s3_list_url(const struct s3_cfg *c, const char *bucket, const char *prefix,
                           const char *token, int max_keys, char **out, struct st_error *err);
struct s3_obj {
    char *key;
    uint64_t size;
    char *etag;
};
struct s3_list_page {
    struct s3_obj *objs;
    size_t n;
    int truncated;
    char *next_token;
};
/* Parse a ListBucketResult (keys URL-decoded when EncodingType is url). */
enum st_status s3_parse_list(const char *xml, size_t len, struct s3_list_page *out,
                             struct st_error *err);
void s3_list_page_free(struct s3_list_page *p);
/* Code and Message of an S3 <Error> document ("" when absent). */
void s3_parse_error(const char *xml, size_t len, char *code, size_t code_cap, char *msg,
                    size_t msg_cap);
/* Text of the first <tag>...</tag> in xml[0, len), entities decoded, into out (capped). */
int xml_tag_text(const char *xml, size_t len, const char *tag, char *out, size_t cap);

/* ---- fetch.c ---- */
struct fetch_policy {
    int max_retries;
    double backoff_base, backoff_max, retry_after_max;
    double stall_timeout, connect_timeout;
};
void fetch_policy_from(struct fetch_policy *p, const struct st_stream_options *o);

/* What to read: a file path, or an http(s) URL with optional S3 signing. */
struct fetch_target {
    enum url_scheme scheme;
    const char *display;     /* the URL the user gave (s3://..., http://..., path) */
    const char *url;         /* request URL (http/s3) */
    const char *path;        /* file path */
    const struct s3_cfg *s3; /* signing (NULL: plain HTTP) */
    uint64_t size;           /* ST_SIZE_UNKNOWN when unknown */
    const char *etag;        /* expected ETag or NULL */
};

enum retry_kind { RK_NONE = 0, RK_CONN, RK_TIMEOUT, RK_TRUNCATED, RK_5XX, RK_THROTTLED };

/* One attempt of a ranged GET [off, off + len) into buf (len may run past the end of an object
 * of unknown size: the answer is then shorter). */
struct fetch_xfer {
    const struct fetch_target *t;
    uint64_t off, len;
    uint8_t *buf;
    struct dbuf *grow; /* instead of buf: append to a growable buffer (whole-object reads) */
    uint64_t got;      /* bytes stored */
    long status;
    int header_seen;
    uint64_t skip; /* bytes of a 200 answer to drop (server ignored the Range) */
    int overflow;  /* the server sent more than asked */
    int have_cr;
    uint64_t cr_first, cr_last, cr_total; /* Content-Range (cr_total UINT64_MAX for '*') */
    int64_t content_length;
    double retry_after; /* seconds, -1 when absent */
    char etag[128];
    char errbody[1024];
    size_t errbody_len;
    void *headers; /* struct curl_slist* */
    char curl_err[256];
};
/* Configure an easy handle for x (URL, range, SigV4 headers, callbacks, timeouts). */
enum st_status fetch_setup(void *curl, struct fetch_xfer *x, const struct fetch_policy *p,
                           int fresh_connection, struct st_error *err);
void fetch_xfer_cleanup(struct fetch_xfer *x);

enum fetch_verdict { FV_OK = 0, FV_RETRY, FV_FATAL };
/* Judge a finished attempt. On FV_OK, *size is the object's total size when the answer told it
 * (else unchanged). On FV_RETRY, *kind and *retry_after (-1 none) are set and err holds the
 * reason; on FV_FATAL err holds the one-line message. */
enum fetch_verdict fetch_judge(struct fetch_xfer *x, int curl_code, uint64_t *size,
                               enum retry_kind *kind, double *retry_after, struct st_error *err);
/* Delay before retry number `attempt` (1-based): full jitter over min(max, base * 2^(a-1)),
 * at least Retry-After (capped). */
double fetch_backoff(const struct fetch_policy *p, int attempt, double retry_after,
                     struct st_rng *rng);
/* Read [off, off + len) of a file into buf; *got = bytes read (short at EOF). */
enum st_status fetch_file(const struct fetch_target *t, uint64_t off, uint64_t len, uint8_t *buf,
                          uint64_t *got, struct st_error *err);
/* Whole-object (or range) read with retries into a growable buffer, for listings and manifests.
 * *size (may be NULL) gets the object's size when known. */
enum st_status fetch_sync(const struct fetch_target *t, const struct fetch_policy *p, uint64_t off,
                          uint64_t len, struct dbuf *out, uint64_t *size, char *etag_out,
                          size_t etag_cap, struct st_error *err);
/* curl_global_init once (thread-safe). */
void fetch_global_init(void);

/* ---- source.c ---- */
/* A dataset: listing + how to reach it. */
struct dataset {
    struct st_shard_list list;
    struct s3_cfg s3;
    int have_s3;
    enum url_scheme *scheme;   /* per shard */
    char **req_url;            /* per shard: request URL (http/s3) or path (file) */
    enum st_shard_format *fmt; /* per shard */
    uint64_t fingerprint;      /* of the shard names */
};
enum st_status dataset_open(struct dataset *d, const struct st_stream_options *o,
                            struct st_error *err);
void dataset_free(struct dataset *d);
void dataset_target(const struct dataset *d, uint32_t i, struct fetch_target *t);
/* Parse an index manifest (ours or wids-shard-index-v1); shard URLs are resolved against
 * base (the manifest's URL). */
enum st_status index_parse(const char *json, size_t len, const char *base,
                           struct st_shard_list *out, const char *what, struct st_error *err);

/* Option parsing shared by st_stream_option_set and st_decode_option_set: they expect locals
 * `name` (the option without --), `value` (NULL when absent), `err`, `int64_t v` and `double d`,
 * and return from the enclosing function. */
#define OPT_NEED()                                                                                 \
    do {                                                                                           \
        if (!value) return st_errorf(err, ST_ERR_ARG, "--%s needs a value", name);                 \
    } while (0)
#define OPT_INT(field, lo, hi)                                                                     \
    do {                                                                                           \
        OPT_NEED();                                                                                \
        if (st_parse_i64(value, lo, hi, &v))                                                       \
            return st_errorf(err, ST_ERR_ARG,                                                      \
                             "--%s: expected an integer in [%lld, %lld], got '%s'", name,          \
                             (long long)(lo), (long long)(hi), value);                             \
        field = v;                                                                                 \
        return ST_OK;                                                                              \
    } while (0)
#define OPT_DBL(field, lo, hi)                                                                     \
    do {                                                                                           \
        OPT_NEED();                                                                                \
        if (st_parse_f64(value, &d) || d < (lo) || d > (hi))                                       \
            return st_errorf(err, ST_ERR_ARG, "--%s: expected a number in [%g, %g], got '%s'",     \
                             name, (double)(lo), (double)(hi), value);                             \
        field = d;                                                                                 \
        return ST_OK;                                                                              \
    } while (0)

#endif
