/* util.c: capped growable buffers, URL encoding and schemes, brace expansion, size parsing.
 *
 * DESIGN: every buffer that grows from input has a hard cap (dbuf.max); brace expansion is capped
 * in the number of results so a pattern like {0..999999999} is refused, not expanded. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/internal.h"

void dbuf_init(struct dbuf *b, size_t max) {
    b->p = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

int dbuf_reserve(struct dbuf *b, size_t n) {
    size_t need;
    if (st_add_size(b->len, n, &need) || need > b->max) return 1;
    if (need + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need + 1) {
        if (cap > SIZE_MAX / 2) {
            cap = need + 1;
            break;
        }
        cap *= 2;
    }
    if (cap > b->max + 1) cap = b->max + 1;
    char *p = st_realloc(b->p, cap);
    if (!p) return 1;
    b->p = p;
    b->cap = cap;
    return 0;
}

int dbuf_add(struct dbuf *b, const void *d, size_t n) {
    if (dbuf_reserve(b, n)) return 1;
    if (n) memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int dbuf_addstr(struct dbuf *b, const char *s) {
    return dbuf_add(b, s, strlen(s));
}

int dbuf_printf(struct dbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return 1;
    if ((size_t)n < sizeof small) return dbuf_add(b, small, (size_t)n);
    if (dbuf_reserve(b, (size_t)n)) return 1;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void dbuf_reset(struct dbuf *b) {
    b->len = 0;
    if (b->p) b->p[0] = '\0';
}

void dbuf_free(struct dbuf *b) {
    st_free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

char *dbuf_take(struct dbuf *b) {
    if (!b->p && dbuf_reserve(b, 0)) return NULL;
    if (b->len == 0) b->p[0] = '\0';
    char *p = b->p;
    b->p = NULL;
    b->len = b->cap = 0;
    return p;
}

/* ---- URLs ---- */

int url_encode(struct dbuf *b, const char *s, int keep_slash) {
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' ||
            (keep_slash && c == '/')) {
            if (dbuf_add(b, p, 1)) return 1;
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            if (dbuf_add(b, e, 3)) return 1;
        }
    }
    return 0;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int url_decode_inplace(char *s, int plus) {
    char *w = s;
    for (const char *r = s; *r; r++) {
        if (*r == '%') {
            int h = hexval((unsigned char)r[1]), l = h >= 0 ? hexval((unsigned char)r[2]) : -1;
            if (h < 0 || l < 0) return 1;
            *w++ = (char)(h * 16 + l);
            r += 2;
        } else if (plus && *r == '+') {
            *w++ = ' ';
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
    return 0;
}

int url_scheme(const char *url, const char **rest) {
    const char *sep = strstr(url, "://");
    if (!sep) {
        *rest = url;
        return URL_FILE;
    }
    for (const char *p = url; p < sep; p++)
        if (!isalnum((unsigned char)*p) && *p != '+' && *p != '-' && *p != '.') {
            *rest = url; /* "://" inside a path */
            return URL_FILE;
        }
    size_t n = (size_t)(sep - url);
    *rest = sep + 3;
    if (n == 4 && strncmp(url, "file", 4) == 0) return URL_FILE;
    if ((n == 4 && strncmp(url, "http", 4) == 0) || (n == 5 && strncmp(url, "https", 5) == 0))
        return URL_HTTP;
    if (n == 2 && strncmp(url, "s3", 2) == 0) return URL_S3;
    return -1;
}

/* ---- brace expansion ---- */

void str_array_free(char **a, size_t n) {
    if (!a) return;
    for (size_t i = 0; i < n; i++)
        st_free(a[i]);
    st_free(a);
}

struct strvec {
    char **v;
    size_t n, cap, max;
};

static int sv_push(struct strvec *sv, char *s) {
    if (sv->n >= sv->max) return 1;
    if (sv->n == sv->cap) {
        size_t cap = sv->cap ? sv->cap * 2 : 16;
        char **v = st_realloc(sv->v, cap * sizeof *v);
        if (!v) return 1;
        sv->v = v;
        sv->cap = cap;
    }
    sv->v[sv->n++] = s;
    return 0;
}

/* Find the first top-level "{...}" group: sets *open and *close; 0 when found. */
static int find_group(const char *s, const char **open, const char **close) {
    for (const char *p = s; *p; p++) {
        if (*p != '{') continue;
        int depth = 0;
        for (const char *q = p; *q; q++) {
            if (*q == '{')
                depth++;
            else if (*q == '}' && --depth == 0) {
                *open = p;
                *close = q;
                return 0;
            }
        }
        return 1; /* unbalanced: treat the rest literally */
    }
    return 1;
}

/* Numeric range "a..b" with the width of the wider bound when either has a leading zero. */
static int parse_range(const char *s, size_t n, long long *a, long long *b, int *width) {
    const char *dots = NULL;
    for (size_t i = 0; i + 1 < n; i++)
        if (s[i] == '.' && s[i + 1] == '.') {
            dots = s + i;
            break;
        }
    if (!dots) return 1;
    char x[32], y[32];
    size_t lx = (size_t)(dots - s), ly = n - lx - 2;
    if (lx == 0 || ly == 0 || lx >= sizeof x || ly >= sizeof y) return 1;
    memcpy(x, s, lx);
    x[lx] = '\0';
    memcpy(y, dots + 2, ly);
    y[ly] = '\0';
    for (size_t i = 0; i < lx; i++)
        if (!isdigit((unsigned char)x[i])) return 1;
    for (size_t i = 0; i < ly; i++)
        if (!isdigit((unsigned char)y[i])) return 1;
    errno = 0;
    *a = strtoll(x, NULL, 10);
    *b = strtoll(y, NULL, 10);
    if (errno) return 1;
    *width = ((x[0] == '0' && lx > 1) || (y[0] == '0' && ly > 1)) ? (int)(lx > ly ? lx : ly) : 0;
    return 0;
}

static enum st_status expand_rec(const char *s, struct strvec *sv, int depth,
                                 struct st_error *err) {
    if (depth > 16) return st_errorf(err, ST_ERR_ARG, "brace pattern nested too deeply");
    const char *open, *close;
    if (find_group(s, &open, &close)) {
        char *d = st_strdup(s);
        if (!d || sv_push(sv, d)) {
            st_free(d);
            return st_errorf(err, ST_ERR_ARG, "brace pattern expands to more than %zu names",
                             sv->max);
        }
        return ST_OK;
    }
    size_t pre = (size_t)(open - s);
    const char *body = open + 1;
    size_t body_n = (size_t)(close - body);
    const char *post = close + 1;
    struct dbuf b;
    dbuf_init(&b, 1 << 20);
    enum st_status rc = ST_OK;
    long long a, z;
    int width;
    if (parse_range(body, body_n, &a, &z, &width) == 0) {
        long long step = a <= z ? 1 : -1;
        unsigned long long count = (unsigned long long)(a <= z ? z - a : a - z) + 1;
        if (count > sv->max) {
            return st_errorf(err, ST_ERR_ARG, "brace range {%.*s} has %llu names, more than %zu",
                             (int)body_n, body, count, sv->max);
        }
        for (long long v = a;; v += step) {
            dbuf_reset(&b);
            if (dbuf_add(&b, s, pre) || dbuf_printf(&b, "%0*lld", width, v) ||
                dbuf_addstr(&b, post)) {
                rc = st_errorf(err, ST_ERR_NOMEM, "brace pattern too long");
                break;
            }
            rc = expand_rec(b.p, sv, depth + 1, err);
            if (rc || v == z) break;
        }
    } else {
        /* comma list at depth 0 of the body */
        int d = 0;
        const char *item = body;
        int has_comma = 0;
        for (const char *p = body; p <= close; p++) {
            if (p < close && *p == '{')
                d++;
            else if (p < close && *p == '}')
                d--;
            if (p == close || (*p == ',' && d == 0)) {
                if (p < close) has_comma = 1;
                if (p == close && !has_comma) break;
                dbuf_reset(&b);
                if (dbuf_add(&b, s, pre) || dbuf_add(&b, item, (size_t)(p - item)) ||
                    dbuf_addstr(&b, post)) {
                    rc = st_errorf(err, ST_ERR_NOMEM, "brace pattern too long");
                    break;
                }
                rc = expand_rec(b.p, sv, depth + 1, err);
                if (rc) break;
                item = p + 1;
            }
        }
        if (!has_comma && rc == ST_OK) {
            /* "{x}" without a comma or range is literal (as in bash) */
            char *lit = st_strdup(s);
            if (!lit || sv_push(sv, lit)) {
                st_free(lit);
                rc = st_errorf(err, ST_ERR_ARG, "brace pattern expands to too many names");
            }
        }
    }
    dbuf_free(&b);
    return rc;
}

enum st_status brace_expand(const char *pattern, size_t max, char ***out, size_t *n,
                            struct st_error *err) {
    struct strvec sv = {NULL, 0, 0, max};
    enum st_status rc = expand_rec(pattern, &sv, 0, err);
    if (rc) {
        str_array_free(sv.v, sv.n);
        *out = NULL;
        *n = 0;
        return rc;
    }
    *out = sv.v;
    *n = sv.n;
    return ST_OK;
}

uint64_t seed_mix(uint64_t a, uint64_t b) {
    uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ULL + (a << 6) + (a >> 2));
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

int st_parse_size(const char *s, size_t *out) {
    if (!s || !*s) return 1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0)) return 1;
    double mul = 1;
    if (*end) {
        char u = (char)toupper((unsigned char)*end);
        const char *rest = end + 1;
        if (u == 'K')
            mul = 1024.0;
        else if (u == 'M')
            mul = 1048576.0;
        else if (u == 'G')
            mul = 1073741824.0;
        else if (u == 'T')
            mul = 1099511627776.0;
        else if (u == 'B' && !*rest)
            mul = 1, rest = end + 1;
        else
            return 1;
        if (*rest == 'i' || *rest == 'I') rest++;
        if (*rest == 'B' || *rest == 'b') rest++;
        if (*rest) return 1;
    }
    double bytes = v * mul;
    if (bytes >= 18446744073709551615.0 || bytes != bytes) return 1;
    *out = (size_t)bytes;
    return 0;
}

/* ---- base64 ---- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int b64_encode(struct dbuf *b, const void *d, size_t n) {
    const uint8_t *p = d;
    if (dbuf_reserve(b, (n + 2) / 3 * 4)) return 1;
    char *o = b->p + b->len;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = b64_alphabet[(v >> 6) & 63];
        *o++ = b64_alphabet[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = i + 1 < n ? b64_alphabet[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    b->len = (size_t)(o - b->p);
    b->p[b->len] = '\0';
    return 0;
}

static int b64_value(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

long long b64_decode(const char *t, size_t tn, uint8_t *out) {
    if (tn % 4) return -1;
    size_t o = 0;
    for (size_t i = 0; i < tn; i += 4) {
        int pad = (t[i + 3] == '=') + (t[i + 2] == '=' && t[i + 3] == '=');
        if (pad && i + 4 != tn) return -1;
        int a = b64_value(t[i]), b = b64_value(t[i + 1]);
        int c = pad >= 2 ? 0 : b64_value(t[i + 2]), d = pad >= 1 ? 0 : b64_value(t[i + 3]);
        if (a < 0 || b < 0 || c < 0 || d < 0) return -1;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        out[o++] = (uint8_t)(v >> 16);
        if (pad < 2) out[o++] = (uint8_t)(v >> 8);
        if (pad < 1) out[o++] = (uint8_t)v;
    }
    return (long long)o;
}
