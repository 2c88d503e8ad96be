/* jsonl.c: JSON Lines records from a stream of decompressed bytes.
 *
 * DESIGN: records are handed out as their raw line bytes (the trainer parses them); a record cut
 * by the end of an input chunk is carried over in a buffer capped at max_rec. Blank lines are
 * skipped and a trailing "\r" is dropped. Validation uses a small allocation-free JSON checker
 * instead of cJSON because cJSON_Parse writes a process-global error slot on every call, which
 * races when several threads parse (the parse threads here and the trainer's thread). */
#include <stdio.h>
#include <string.h>

#include "data/internal.h"

void jsonl_init(struct jsonl *p, uint64_t start_off, uint64_t first_index, size_t max_rec,
                int json_check) {
    dbuf_init(&p->carry, max_rec);
    p->off = start_off;
    p->line = 1;
    p->rec = first_index;
    p->max_rec = max_rec;
    p->json_check = json_check;
}

size_t jsonl_mem(const struct jsonl *p) {
    return p->carry.cap;
}

void jsonl_free(struct jsonl *p) {
    dbuf_free(&p->carry);
}

/* ---- a strict JSON checker (RFC 8259 grammar; no allocation; depth-capped) ---- */

struct jc {
    const uint8_t *p, *end;
    int depth;
};

static void jc_ws(struct jc *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int jc_lit(struct jc *c, const char *w) {
    size_t n = strlen(w);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, w, n) != 0) return 1;
    c->p += n;
    return 0;
}

static int jc_hex(int ch) {
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static int jc_string(struct jc *c) {
    c->p++; /* opening quote */
    while (c->p < c->end) {
        /* the common case first: plain characters */
        while (c->p < c->end && *c->p >= 0x20 && *c->p < 0x80 && *c->p != '"' && *c->p != '\\')
            c->p++;
        if (c->p >= c->end) break;
        uint8_t ch = *c->p;
        if (ch >= 0x80) { /* RFC 8259: a string is UTF-8 */
            size_t k = st_utf8_seq(c->p, (size_t)(c->end - c->p));
            if (!k) return 1;
            c->p += k;
            continue;
        }
        if (ch == '"') {
            c->p++;
            return 0;
        }
        if (ch < 0x20) return 1;
        if (ch == '\\') {
            if (c->end - c->p < 2) return 1;
            uint8_t e = c->p[1];
            if (e == 'u') {
                if (c->end - c->p < 6) return 1;
                for (int i = 2; i < 6; i++)
                    if (!jc_hex(c->p[i])) return 1;
                c->p += 6;
                continue;
            }
            if (!strchr("\"\\/bfnrt", e) || e == 0) return 1;
            c->p += 2;
            continue;
        }
        c->p++;
    }
    return 1;
}

static int jc_digits(struct jc *c) {
    const uint8_t *s = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
        c->p++;
    return c->p == s;
}

static int jc_number(struct jc *c) {
    if (c->p < c->end && *c->p == '-') c->p++;
    if (c->p >= c->end) return 1;
    if (*c->p == '0')
        c->p++;
    else if (jc_digits(c))
        return 1;
    if (c->p < c->end && *c->p == '.') {
        c->p++;
        if (jc_digits(c)) return 1;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-')) c->p++;
        if (jc_digits(c)) return 1;
    }
    return 0;
}

static int jc_value(struct jc *c) {
    jc_ws(c);
    if (c->p >= c->end) return 1;
    uint8_t ch = *c->p;
    if (ch == '"') return jc_string(c);
    if (ch == '{' || ch == '[') {
        if (++c->depth > 512) return 1;
        uint8_t close = ch == '{' ? '}' : ']';
        c->p++;
        jc_ws(c);
        if (c->p < c->end && *c->p == close) {
            c->p++;
            c->depth--;
            return 0;
        }
        for (;;) {
            if (ch == '{') {
                jc_ws(c);
                if (c->p >= c->end || *c->p != '"' || jc_string(c)) return 1;
                jc_ws(c);
                if (c->p >= c->end || *c->p != ':') return 1;
                c->p++;
            }
            if (jc_value(c)) return 1;
            jc_ws(c);
            if (c->p >= c->end) return 1;
            if (*c->p == ',') {
                c->p++;
                continue;
            }
            if (*c->p == close) {
                c->p++;
                c->depth--;
                return 0;
            }
            return 1;
        }
    }
    if (ch == 't') return jc_lit(c, "true");
    if (ch == 'f') return jc_lit(c, "false");
    if (ch == 'n') return jc_lit(c, "null");
    if (ch == '-' || (ch >= '0' && ch <= '9')) return jc_number(c);
    return 1;
}

int jsonl_check_record(const uint8_t *d, size_t n, size_t *bad_at) {
    struct jc c = {d, d + n, 0};
    int bad = jc_value(&c);
    if (!bad) {
        jc_ws(&c);
        bad = c.p != c.end;
    }
    if (bad) *bad_at = (size_t)(c.p - d);
    return bad;
}

/* ---- records ---- */

static int blank(const uint8_t *d, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (d[i] != ' ' && d[i] != '\t' && d[i] != '\r') return 0;
    return 1;
}

/* One complete line [d, d + n) starting at offset off, ending (with its newline) at end. */
static int line_done(struct jsonl *p, const uint8_t *d, size_t n, uint64_t off, uint64_t end,
                     rec_emit_fn emit, void *ctx, const char *what, struct st_error *err) {
    uint64_t line = p->line++;
    if (n && d[n - 1] == '\r') n--;
    if (off == 0 && n >= 3 && d[0] == 0xef && d[1] == 0xbb && d[2] == 0xbf) /* a UTF-8 BOM */
        d += 3, n -= 3, off += 3;
    if (blank(d, n)) return 0;
    if (p->json_check) {
        size_t bad;
        if (jsonl_check_record(d, n, &bad)) {
            char snip[48];
            size_t from = bad > 16 ? bad - 16 : 0, k = 0;
            for (size_t i = from; i < n && k + 1 < sizeof snip && i < from + 40; i++)
                snip[k++] = d[i] >= 0x20 && d[i] < 0x7f ? (char)d[i] : '?';
            snip[k] = '\0';
            st_errorf(err, ST_ERR_FORMAT,
                      "%s: line %llu (byte offset %llu): invalid JSON at byte %zu of the record "
                      "near '%s'",
                      what, (unsigned long long)line, (unsigned long long)(off + bad), bad, snip);
            return -1;
        }
    }
    static const char name[] = "json";
    struct rec_field f = {name, d, n};
    struct rec r = {NULL, p->rec, off, end, 1, &f};
    p->rec++;
    return emit(ctx, &r, err);
}

enum st_status jsonl_feed(struct jsonl *p, const uint8_t *in, size_t n, size_t *used,
                          rec_emit_fn emit, void *ctx, const char *what, struct st_error *err) {
    size_t i = 0;
    *used = 0;
    while (i < n) {
        const uint8_t *nl = memchr(in + i, '\n', n - i);
        if (!nl) {
            if (dbuf_add(&p->carry, in + i, n - i))
                return st_errorf(err, ST_ERR_FORMAT,
                                 "%s: line %llu (byte offset %llu) is longer than %zu bytes, the "
                                 "largest record this stream's budget allows",
                                 what, (unsigned long long)p->line,
                                 (unsigned long long)(p->off - p->carry.len), p->max_rec);
            p->off += n - i;
            i = n;
            break;
        }
        size_t len = (size_t)(nl - (in + i));
        uint64_t start = p->off - p->carry.len;
        uint64_t end = p->off + len + 1;
        int r;
        if (p->carry.len) {
            if (dbuf_add(&p->carry, in + i, len))
                return st_errorf(err, ST_ERR_FORMAT,
                                 "%s: line %llu (byte offset %llu) is longer than %zu bytes, the "
                                 "largest record this stream's budget allows",
                                 what, (unsigned long long)p->line, (unsigned long long)start,
                                 p->max_rec);
            r = line_done(p, (const uint8_t *)p->carry.p, p->carry.len, start, end, emit, ctx, what,
                          err);
            dbuf_reset(&p->carry);
        } else {
            if (len > p->max_rec)
                return st_errorf(err, ST_ERR_FORMAT,
                                 "%s: line %llu (byte offset %llu) is longer than %zu bytes, the "
                                 "largest record this stream's budget allows",
                                 what, (unsigned long long)p->line, (unsigned long long)start,
                                 p->max_rec);
            r = line_done(p, in + i, len, start, end, emit, ctx, what, err);
        }
        p->off = end;
        i += len + 1;
        if (r < 0) {
            *used = 0;
            return err ? err->code : ST_ERR_FORMAT;
        }
        if (r > 0) break;
    }
    *used = i;
    return ST_OK;
}

enum st_status jsonl_end(struct jsonl *p, rec_emit_fn emit, void *ctx, const char *what,
                         struct st_error *err) {
    if (!p->carry.len) return ST_OK;
    uint64_t start = p->off - p->carry.len;
    int r = line_done(p, (const uint8_t *)p->carry.p, p->carry.len, start, p->off, emit, ctx, what,
                      err);
    dbuf_reset(&p->carry);
    if (r < 0) return err ? err->code : ST_ERR_FORMAT;
    return ST_OK;
}
