/* fetch.c: one ranged read as libcurl sees it, the checks on the answer, and the retry policy.
 *
 * DESIGN: the stream's I/O thread (stream.c) drives many of these on a curl multi handle; the
 * setup, callbacks and the verdict on each finished attempt live here so the multi loop and the
 * synchronous reads (listings, manifests) share them. A verdict is one of OK, RETRY (connection
 * errors, timeouts, truncated bodies, 5xx, 408, 429, 503 SlowDown, S3 RequestTimeout: resumed
 * from the first missing byte) or FATAL (403, 404, 412, bad URL, unknown host, TLS, a server
 * that answers another range than asked): retrying cannot fix those, so the message says which
 * URL and what to check. Bytes are stored only when the answer is for exactly the bytes asked
 * (206 with a matching Content-Range, or 200 whose first `off` bytes are dropped when a server
 * ignores Range); an ETag that differs from the listed one means the object changed mid-read. */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/internal.h"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
}
void fetch_global_init(void) {
    pthread_once(&curl_once, curl_init_once);
}

void fetch_policy_from(struct fetch_policy *p, const struct st_stream_options *o) {
    p->max_retries = o->max_retries;
    p->backoff_base = o->backoff_base;
    p->backoff_max = o->backoff_max;
    p->retry_after_max = o->retry_after_max;
    p->stall_timeout = o->stall_timeout;
    p->connect_timeout = o->connect_timeout;
}

/* ---- callbacks ---- */

static int hdr_is(const char *line, size_t n, const char *name, const char **val, size_t *vn) {
    size_t k = strlen(name);
    if (n <= k || strncasecmp(line, name, k) != 0 || line[k] != ':') return 0;
    const char *v = line + k + 1, *e = line + n;
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ' || e[-1] == '\t'))
        e--;
    *val = v;
    *vn = (size_t)(e - v);
    return 1;
}

static int parse_u64(const char *s, size_t n, uint64_t *out) {
    if (!n || n > 19) return 1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

static size_t on_header(char *d, size_t sz, size_t nm, void *ud) {
    struct fetch_xfer *x = ud;
    size_t n = sz * nm;
    const char *v;
    size_t vn;
    if (n >= 5 && strncmp(d, "HTTP/", 5) == 0) {
        /* a new answer (after a redirect or 100): forget the previous one's headers */
        const char *sp = memchr(d, ' ', n);
        x->status = 0;
        if (sp && (size_t)(sp - d) + 4 <= n) {
            uint64_t st;
            if (parse_u64(sp + 1, 3, &st) == 0) x->status = (long)st;
        }
        x->have_cr = 0;
        x->etag[0] = '\0';
        x->retry_after = -1;
        x->content_length = -1;
        x->errbody_len = 0;
        x->header_seen = 1;
    } else if (hdr_is(d, n, "content-range", &v, &vn)) {
        // "bytes a-b/t" or "bytes */t"
        if (vn > 6 && strncasecmp(v, "bytes ", 6) == 0) {
            const char *p = v + 6, *e = v + vn;
            const char *slash = memchr(p, '/', (size_t)(e - p));
            if (slash) {
                uint64_t total = UINT64_MAX;
                if (!(e - slash == 2 && slash[1] == '*') &&
                    parse_u64(slash + 1, (size_t)(e - slash - 1), &total))
                    return n;
                if (slash - p == 1 && *p == '*') {
                    x->have_cr = 2; /* unsatisfied range: only the total */
                    x->cr_total = total;
                } else {
                    const char *dash = memchr(p, '-', (size_t)(slash - p));
                    uint64_t a, b;
                    if (dash && parse_u64(p, (size_t)(dash - p), &a) == 0 &&
                        parse_u64(dash + 1, (size_t)(slash - dash - 1), &b) == 0 && b >= a) {
                        x->have_cr = 1;
                        x->cr_first = a;
                        x->cr_last = b;
                        x->cr_total = total;
                    }
                }
            }
        }
    } else if (hdr_is(d, n, "etag", &v, &vn)) {
        size_t k = vn < sizeof x->etag - 1 ? vn : sizeof x->etag - 1;
        memcpy(x->etag, v, k);
        x->etag[k] = '\0';
    } else if (hdr_is(d, n, "retry-after", &v, &vn)) {
        uint64_t s;
        if (parse_u64(v, vn, &s) == 0) x->retry_after = (double)s;
    } else if (hdr_is(d, n, "content-length", &v, &vn)) {
        uint64_t cl;
        if (parse_u64(v, vn, &cl) == 0 && cl < (uint64_t)INT64_MAX) x->content_length = (int64_t)cl;
    }
    return n;
}

static size_t on_write(char *d, size_t sz, size_t nm, void *ud) {
    struct fetch_xfer *x = ud;
    size_t n = sz * nm;
    if (x->status < 200 || x->status >= 300) {
        /* an error document (S3 XML): keep the start for the message */
        size_t room = sizeof x->errbody - 1 - x->errbody_len;
        size_t k = n < room ? n : room;
        memcpy(x->errbody + x->errbody_len, d, k);
        x->errbody_len += k;
        x->errbody[x->errbody_len] = '\0';
        return n;
    }
    const char *p = d;
    size_t left = n;
    if (x->status == 206) {
        if (x->have_cr != 1 || x->cr_first != x->off) {
            x->overflow = 2; /* answer for other bytes than asked: store nothing */
            return 0;
        }
    } else if (x->status == 200 && x->skip < x->off) {
        /* the server ignored Range: drop the bytes before off */
        uint64_t drop = x->off - x->skip;
        if (drop >= left) {
            x->skip += left;
            return n;
        }
        x->skip += drop;
        p += drop;
        left -= (size_t)drop;
    }
    if (x->grow) {
        if (dbuf_add(x->grow, p, left)) {
            x->overflow = 3; /* larger than the cap */
            return 0;
        }
        x->got += left;
        return n;
    }
    uint64_t room = x->len - x->got;
    size_t k = left < room ? left : (size_t)room;
    memcpy(x->buf + x->got, p, k);
    x->got += k;
    if (k < left) {
        x->overflow = 1; /* more than asked (200 for a range): we have all we need */
        return 0;
    }
    return n;
}

enum st_status fetch_setup(void *curl, struct fetch_xfer *x, const struct fetch_policy *p,
                           int fresh_connection, struct st_error *err) {
    CURL *h = curl;
    const struct fetch_target *t = x->t;
    curl_easy_reset(h);
    x->got = 0;
    x->status = 0;
    x->header_seen = 0;
    x->skip = 0;
    x->overflow = 0;
    x->have_cr = 0;
    x->content_length = -1;
    x->retry_after = -1;
    x->etag[0] = '\0';
    x->errbody_len = 0;
    x->errbody[0] = '\0';
    x->curl_err[0] = '\0';
    struct curl_slist *hl = NULL, *tmp;
    char line[512];
    int bad = 0;
#define ADDH(...)                                                                                  \
    do {                                                                                           \
        snprintf(line, sizeof line, __VA_ARGS__);                                                  \
        tmp = curl_slist_append(hl, line);                                                         \
        if (!tmp)                                                                                  \
            bad = 1;                                                                               \
        else                                                                                       \
            hl = tmp;                                                                              \
    } while (0)
    if (t->etag && *t->etag) ADDH("If-Match: %s", t->etag);
    if (t->s3 && !t->s3->anonymous) {
        ADDH("x-amz-content-sha256: UNSIGNED-PAYLOAD");
        if (t->s3->token) ADDH("x-amz-security-token: %s", t->s3->token);
    }
#undef ADDH
    if (bad) {
        curl_slist_free_all(hl);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    }
    x->headers = hl;
    char range[64] = "";
    if (x->len != ST_SIZE_UNKNOWN && x->len > 0)
        snprintf(range, sizeof range, "%llu-%llu", (unsigned long long)x->off,
                 (unsigned long long)(x->off + x->len - 1));
    else if (x->off > 0)
        snprintf(range, sizeof range, "%llu-", (unsigned long long)x->off);
    CURLcode c = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (c == CURLE_OK) c = curl_easy_setopt(h, opt, val);                                      \
    } while (0)
    SET(CURLOPT_URL, t->url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_FOLLOWLOCATION, t->s3 ? 0L : 1L);
    SET(CURLOPT_MAXREDIRS, 5L);
    if (range[0]) SET(CURLOPT_RANGE, range);
    SET(CURLOPT_HTTPHEADER, hl);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, x);
    SET(CURLOPT_WRITEFUNCTION, on_write);
    SET(CURLOPT_WRITEDATA, x);
    SET(CURLOPT_ERRORBUFFER, x->curl_err);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)(p->connect_timeout * 1000));
    SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
    SET(CURLOPT_LOW_SPEED_TIME, (long)(p->stall_timeout < 1 ? 1 : p->stall_timeout + 0.5));
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_BUFFERSIZE, 128L * 1024);
    if (fresh_connection) SET(CURLOPT_FRESH_CONNECT, 1L);
    if (t->s3 && !t->s3->anonymous) {
        SET(CURLOPT_AWS_SIGV4, t->s3->sigv4);
        SET(CURLOPT_USERNAME, t->s3->akid);
        SET(CURLOPT_PASSWORD, t->s3->secret);
    }
#undef SET
    if (c != CURLE_OK) {
        curl_slist_free_all(hl);
        x->headers = NULL;
        return st_errorf(err, ST_ERR_UNSUPPORTED, "%s: libcurl refused an option: %s", t->display,
                         curl_easy_strerror(c));
    }
    return ST_OK;
}

void fetch_xfer_cleanup(struct fetch_xfer *x) {
    curl_slist_free_all(x->headers);
    x->headers = NULL;
}

/* ---- verdict ---- */

static const char *strip_etag(const char *e, size_t *n) {
    if (strncmp(e, "W/", 2) == 0) e += 2;
    size_t k = strlen(e);
    if (k >= 2 && e[0] == '"' && e[k - 1] == '"') {
        e++;
        k -= 2;
    }
    *n = k;
    return e;
}

static int etag_differs(const char *a, const char *b) {
    size_t na, nb;
    const char *x = strip_etag(a, &na), *y = strip_etag(b, &nb);
    return na != nb || memcmp(x, y, na) != 0;
}

static void range_str(const struct fetch_xfer *x, char *b, size_t cap) {
    if (x->len == ST_SIZE_UNKNOWN)
        snprintf(b, cap, "bytes %llu-", (unsigned long long)x->off);
    else
        snprintf(b, cap, "bytes %llu-%llu", (unsigned long long)x->off,
                 (unsigned long long)(x->off + x->len - 1));
}

enum fetch_verdict fetch_judge(struct fetch_xfer *x, int curl_code, uint64_t *size,
                               enum retry_kind *kind, double *retry_after, struct st_error *err) {
    const struct fetch_target *t = x->t;
    const char *what = t->display;
    CURLcode cc = (CURLcode)curl_code;
    char rs[64];
    range_str(x, rs, sizeof rs);
    *kind = RK_NONE;
    *retry_after = -1;
    if (x->overflow == 2) {
        st_errorf(err, ST_ERR_NET, "%s: the server answered %s to a request for %s", what,
                  x->have_cr == 1 ? "another range" : "206 without a Content-Range", rs);
        return FV_FATAL;
    }
    if (x->overflow == 3) {
        st_errorf(err, ST_ERR_FORMAT, "%s: larger than the %zu bytes allowed", what,
                  x->grow ? x->grow->max : 0);
        return FV_FATAL;
    }
    if (cc != CURLE_OK && !(cc == CURLE_WRITE_ERROR && x->overflow == 1)) {
        const char *detail = x->curl_err[0] ? x->curl_err : curl_easy_strerror(cc);
        switch (cc) {
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
            st_errorf(err, ST_ERR_NET, "%s: cannot resolve the host (%s): check the URL%s", what,
                      detail, t->s3 ? " and --endpoint-url / AWS_ENDPOINT_URL" : "");
            return FV_FATAL;
        case CURLE_UNSUPPORTED_PROTOCOL:
        case CURLE_URL_MALFORMAT:
            st_errorf(err, ST_ERR_ARG, "%s: bad URL (%s)", what, detail);
            return FV_FATAL;
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_CERTPROBLEM:
            st_errorf(err, ST_ERR_NET, "%s: TLS certificate problem (%s)", what, detail);
            return FV_FATAL;
        case CURLE_TOO_MANY_REDIRECTS:
            st_errorf(err, ST_ERR_NET, "%s: too many redirects", what);
            return FV_FATAL;
        case CURLE_OPERATION_TIMEDOUT: *kind = RK_TIMEOUT; break;
        case CURLE_PARTIAL_FILE: *kind = RK_TRUNCATED; break;
        default: *kind = RK_CONN; break;
        }
        st_errorf(err, ST_ERR_NET, "%s: %s: %s", what, rs, detail);
        return FV_RETRY;
    }
    long st = x->status;
    if (st >= 200 && st < 300 && t->etag && *t->etag && x->etag[0] &&
        etag_differs(t->etag, x->etag)) {
        st_errorf(err, ST_ERR_NET,
                  "%s: the object changed while it was being read (ETag %s, now %s): the "
                  "dataset must not be rewritten during training",
                  what, t->etag, x->etag);
        return FV_FATAL;
    }
    if (st == 206) {
        if (x->have_cr != 1) {
            st_errorf(err, ST_ERR_NET, "%s: 206 answer without a Content-Range", what);
            return FV_FATAL;
        }
        uint64_t total = x->cr_total;
        if (total != UINT64_MAX && t->size != ST_SIZE_UNKNOWN && total != t->size) {
            st_errorf(err, ST_ERR_NET,
                      "%s: the object is %llu bytes, not the %llu listed: it changed after "
                      "listing",
                      what, (unsigned long long)total, (unsigned long long)t->size);
            return FV_FATAL;
        }
        uint64_t expect = x->cr_last - x->cr_first + 1;
        if (x->len != ST_SIZE_UNKNOWN && expect > x->len) expect = x->len;
        if (x->got < expect) {
            *kind = RK_TRUNCATED;
            st_errorf(err, ST_ERR_NET, "%s: %s: short body (%llu of %llu bytes)", what, rs,
                      (unsigned long long)x->got, (unsigned long long)expect);
            return FV_RETRY;
        }
        if (total != UINT64_MAX) *size = total;
        return FV_OK;
    }
    if (st == 200) {
        int64_t cl = x->content_length;
        if (cl >= 0 && t->size != ST_SIZE_UNKNOWN && (uint64_t)cl != t->size) {
            st_errorf(err, ST_ERR_NET,
                      "%s: the object is %lld bytes, not the %llu listed: it changed after "
                      "listing",
                      what, (long long)cl, (unsigned long long)t->size);
            return FV_FATAL;
        }
        if (cl >= 0) {
            uint64_t total = (uint64_t)cl;
            uint64_t expect = x->off >= total ? 0 : total - x->off;
            if (x->len != ST_SIZE_UNKNOWN && expect > x->len) expect = x->len;
            if (x->got < expect) {
                *kind = RK_TRUNCATED;
                st_errorf(err, ST_ERR_NET, "%s: %s: short body (%llu of %llu bytes)", what, rs,
                          (unsigned long long)x->got, (unsigned long long)expect);
                return FV_RETRY;
            }
            *size = total;
        }
        return FV_OK;
    }
    if (st == 416 && x->have_cr == 2 && x->cr_total != UINT64_MAX && x->off == x->cr_total) {
        *size = x->cr_total; /* asked from the end of an object of unknown size: nothing more */
        return FV_OK;
    }
    if (st == 416 && x->have_cr == 2 && x->cr_total != UINT64_MAX && x->off > x->cr_total) {
        st_errorf(err, ST_ERR_FORMAT, "%s: asked for byte %llu of an object of %llu bytes: it "
                  "changed (shrank) since it was read", what, (unsigned long long)x->off,
                  (unsigned long long)x->cr_total);
        return FV_FATAL;
    }
    char code[64], msg[200];
    s3_parse_error(x->errbody, x->errbody_len, code, sizeof code, msg, sizeof msg);
    char detail[300];
    if (code[0])
        snprintf(detail, sizeof detail, "HTTP %ld %s: %s", st, code, msg);
    else
        snprintf(detail, sizeof detail, "HTTP %ld", st);
    if (st == 408 || st == 429 || st >= 500 || (st == 400 && strcmp(code, "RequestTimeout") == 0)) {
        *kind = st == 429 || (st == 503 && (strcmp(code, "SlowDown") == 0 || x->retry_after >= 0))
                    ? RK_THROTTLED
                : st >= 500 ? RK_5XX
                            : RK_TIMEOUT;
        *retry_after = x->retry_after;
        st_errorf(err, ST_ERR_NET, "%s: %s: %s", what, rs, detail);
        return FV_RETRY;
    }
    if (st == 401 || st == 403) {
        const char *hint;
        if (t->s3 && t->s3->anonymous)
            hint = "no AWS credentials were found: set AWS_ACCESS_KEY_ID and "
                   "AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials";
        else if (strcmp(code, "InvalidAccessKeyId") == 0)
            hint = "check the access key id (AWS_ACCESS_KEY_ID or the profile's "
                   "aws_access_key_id)";
        else if (strcmp(code, "SignatureDoesNotMatch") == 0)
            hint = "check the secret key (AWS_SECRET_ACCESS_KEY or the profile's "
                   "aws_secret_access_key) and the region";
        else if (strcmp(code, "RequestTimeTooSkewed") == 0)
            hint = "the system clock is off: sync it with NTP";
        else if (strcmp(code, "ExpiredToken") == 0)
            hint = "the session token expired: refresh AWS_SESSION_TOKEN";
        else if (t->s3)
            hint = "check the credentials and that they may read this bucket";
        else
            hint = "the server refused access";
        st_errorf(err, ST_ERR_NET, "%s: access denied (%s): %s", what, detail, hint);
        return FV_FATAL;
    }
    if (st == 404) {
        st_errorf(err, ST_ERR_IO, "%s: not found (%s): check the URL%s", what, detail,
                  strcmp(code, "NoSuchBucket") == 0 ? " (the bucket does not exist)" : "");
        return FV_FATAL;
    }
    if (st == 412) {
        st_errorf(err, ST_ERR_NET,
                  "%s: the object changed while it was being read (HTTP 412: ETag %s no longer "
                  "matches)",
                  what, t->etag ? t->etag : "?");
        return FV_FATAL;
    }
    if (st == 416) {
        if (t->size != ST_SIZE_UNKNOWN && x->off < t->size) /* inside the size it was listed with */
            st_errorf(err, ST_ERR_NET,
                      "%s: the object changed since it was listed (HTTP 416 for %s, inside its "
                      "listed size of %llu bytes)",
                      what, rs, (unsigned long long)t->size);
        else
            st_errorf(err, ST_ERR_NET, "%s: %s is outside the object (HTTP 416)", what, rs);
        return FV_FATAL;
    }
    if (st == 0) {
        st_errorf(err, ST_ERR_NET, "%s: no HTTP answer", what);
        *kind = RK_CONN;
        return FV_RETRY;
    }
    st_errorf(err, ST_ERR_NET, "%s: unexpected answer (%s)", what, detail);
    return FV_FATAL;
}

double fetch_backoff(const struct fetch_policy *p, int attempt, double retry_after,
                     struct st_rng *rng) {
    double cap = p->backoff_base * ldexp(1.0, attempt > 30 ? 30 : attempt - 1);
    if (cap > p->backoff_max) cap = p->backoff_max;
    double d = cap * st_rng_uniform(rng);
    if (retry_after >= 0) {
        double ra = retry_after < p->retry_after_max ? retry_after : p->retry_after_max;
        if (d < ra) d = ra;
    }
    return d;
}

/* ---- files ---- */

enum st_status fetch_file(const struct fetch_target *t, uint64_t off, uint64_t len, uint8_t *buf,
                          uint64_t *got, struct st_error *err) {
    *got = 0;
    int fd = open(t->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return st_errorf(err, ST_ERR_IO, "%s: cannot open: %s", t->display, strerror(errno));
    /* a listed size (a directory's stat, an index's "bytes") that the file no longer has: it
     * changed after listing, as fetch_judge says of an object (reading a prefix would drop the
     * rest silently, and the index's hash covers only that prefix) */
    struct stat sb;
    if (t->size != ST_SIZE_UNKNOWN && fstat(fd, &sb) == 0 && (uint64_t)sb.st_size != t->size) {
        close(fd);
        return st_errorf(err, ST_ERR_IO,
                         "%s: the file is %llu bytes, not the %llu listed: it changed after "
                         "listing",
                         t->display, (unsigned long long)sb.st_size, (unsigned long long)t->size);
    }
    uint64_t done = 0;
    while (done < len) {
        size_t want = len - done > (1u << 30) ? (1u << 30) : (size_t)(len - done);
        ssize_t r = pread(fd, buf + done, want, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            return st_errorf(err, ST_ERR_IO, "%s: read failed at byte offset %llu: %s", t->display,
                             (unsigned long long)(off + done), strerror(e));
        }
        if (r == 0) break;
        done += (uint64_t)r;
    }
    close(fd);
    *got = done;
    return ST_OK;
}

/* ---- synchronous reads ---- */

static void sleep_s(double s) {
    if (s <= 0) return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

enum st_status fetch_sync(const struct fetch_target *t, const struct fetch_policy *p, uint64_t off,
                          uint64_t len, struct dbuf *out, uint64_t *size, char *etag_out,
                          size_t etag_cap, struct st_error *err) {
    if (etag_out && etag_cap) etag_out[0] = '\0';
    if (t->scheme == URL_FILE) {
        struct stat sb;
        if (stat(t->path, &sb) != 0)
            return st_errorf(err, ST_ERR_IO, "%s: cannot open: %s", t->display, strerror(errno));
        if (!S_ISREG(sb.st_mode))
            return st_errorf(err, ST_ERR_IO, "%s: not a regular file", t->display);
        uint64_t fsz = (uint64_t)sb.st_size;
        if (size) *size = fsz;
        uint64_t n = off >= fsz ? 0 : fsz - off;
        if (len != ST_SIZE_UNKNOWN && n > len) n = len;
        if (n > out->max - out->len)
            return st_errorf(err, ST_ERR_FORMAT, "%s: larger than the %zu bytes allowed",
                             t->display, out->max);
        if (dbuf_reserve(out, (size_t)n))
            return st_errorf(err, ST_ERR_NOMEM, "%s: out of memory", t->display);
        uint64_t got;
        enum st_status rc = fetch_file(t, off, n, (uint8_t *)out->p + out->len, &got, err);
        if (rc) return rc;
        out->len += (size_t)got;
        out->p[out->len] = '\0';
        return ST_OK;
    }
    fetch_global_init();
    CURL *h = curl_easy_init();
    if (!h) return st_errorf(err, ST_ERR_NOMEM, "%s: cannot create a curl handle", t->display);
    struct st_rng rng;
    st_rng_seed(&rng, (uint64_t)(uintptr_t)out ^ (uint64_t)(st_time_now() * 1e9));
    size_t start_len = out->len;
    enum st_status rc = ST_OK;
    for (int attempt = 0;; attempt++) {
        uint64_t have = out->len - start_len;
        struct fetch_xfer x;
        memset(&x, 0, sizeof x);
        x.t = t;
        x.off = off + have;
        x.len = len == ST_SIZE_UNKNOWN ? ST_SIZE_UNKNOWN : len - have;
        x.grow = out;
        if ((rc = fetch_setup(h, &x, p, attempt > 0, err))) break;
        CURLcode cc = curl_easy_perform(h);
        uint64_t sz = ST_SIZE_UNKNOWN;
        enum retry_kind kind;
        double ra;
        enum fetch_verdict v = fetch_judge(&x, cc, &sz, &kind, &ra, err);
        fetch_xfer_cleanup(&x);
        if (v == FV_OK) {
            if (size) *size = sz;
            if (etag_out && etag_cap) snprintf(etag_out, etag_cap, "%s", x.etag);
            rc = ST_OK;
            break;
        }
        /* bytes stored are always exactly [x.off, x.off + got): the next attempt asks for
         * the rest */
        if (v == FV_FATAL || attempt >= p->max_retries) {
            if (v != FV_FATAL) st_error_prefix(err, "giving up after %d attempts: ", attempt + 1);
            rc = err ? err->code : ST_ERR_NET;
            break;
        }
        st_log(ST_LOG_DEBUG, "retrying: %s", err ? err->msg : "");
        sleep_s(fetch_backoff(p, attempt + 1, ra, &rng));
    }
    curl_easy_cleanup(h);
    return rc;
}
