/* jinja_value.c: arena, values, JSON in and out, number formatting and UTF-8 helpers for the
 * chat-template interpreter (see jinja.h for the design).
 *
 * DESIGN: the JSON reader is our own (not cJSON) so that every byte is allocated from the
 * render/input arena through st_malloc, key order is kept exactly, and nesting is capped.
 * The JSON writer reproduces Python's json.dumps(ensure_ascii=False) byte for byte for the
 * values chat templates see (strings, integers, booleans, null, lists, dicts); floats are
 * written the way JavaScript writes them (@huggingface/jinja's behaviour).
 */
#include "tokenizer/jinja.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena ---- */
struct stj_chunk {
    struct stj_chunk *next;
    size_t size, used;
    _Alignas(16) unsigned char data[];
};

#define STJ_CHUNK_MIN (64 * 1024)

void *stj_alloc(struct stj_arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    struct stj_chunk *c = a->head;
    if (!c || c->size - c->used < n) {
        size_t sz = n > STJ_CHUNK_MIN ? n : STJ_CHUNK_MIN;
        if (c && c->size * 2 > sz && c->size < 16 * 1024 * 1024)
            sz = c->size * 2 > n ? c->size * 2 : n;
        size_t total;
        if (st_add_size(sz, sizeof(struct stj_chunk), &total)) return NULL;
        if (a->cap && (a->total + total > a->cap || total > a->cap)) return NULL;
        struct stj_chunk *nc = st_malloc(total);
        if (!nc) return NULL;
        nc->size = sz;
        nc->used = 0;
        nc->next = a->head;
        a->head = nc;
        a->total += total;
        c = nc;
    }
    void *p = c->data + c->used;
    c->used += n;
    return p;
}

void stj_arena_free(struct stj_arena *a) {
    struct stj_chunk *c = a->head;
    while (c) {
        struct stj_chunk *next = c->next;
        st_free(c);
        c = next;
    }
    a->head = NULL;
    a->total = 0;
}

/* ---- dicts ---- */
struct stj_val *stj_dict_get(const struct stj_dict *d, const char *k, size_t kn) {
    for (size_t i = 0; i < d->n; i++)
        if (d->e[i].kn == kn && memcmp(d->e[i].k, k, kn) == 0) return &d->e[i].v;
    return NULL;
}

int stj_dict_set(struct stj_arena *a, struct stj_dict *d, const char *k, size_t kn,
                 struct stj_val v) {
    struct stj_val *old = stj_dict_get(d, k, kn);
    if (old) {
        *old = v;
        return 0;
    }
    if (d->n == d->cap) {
        size_t nc = d->cap ? d->cap * 2 : 8;
        struct stj_kv *ne = stj_alloc(a, nc * sizeof *ne);
        if (!ne) return -1;
        if (d->n) memcpy(ne, d->e, d->n * sizeof *ne);
        d->e = ne;
        d->cap = nc;
    }
    d->e[d->n].k = k;
    d->e[d->n].kn = kn;
    d->e[d->n].v = v;
    d->n++;
    return 0;
}

/* ---- buffers ---- */
int stj_buf_put(struct stj_arena *a, struct stj_buf *b, const char *s, size_t n, size_t max) {
    if (n == 0) return 0;
    if (n > max || b->n > max - n) return -1;
    if (b->n + n > b->cap) {
        size_t nc = b->cap ? b->cap : 64;
        while (nc < b->n + n)
            nc = nc > SIZE_MAX / 2 ? b->n + n : nc * 2;
        char *np = stj_alloc(a, nc);
        if (!np) return -1;
        if (b->n) memcpy(np, b->p, b->n);
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

/* ---- UTF-8 ---- */
uint32_t stj_utf8_decode(const char *str, size_t n, size_t i, size_t *adv) {
    const unsigned char *s = (const unsigned char *)str;
    unsigned char c = s[i];
    *adv = 1;
    if (c < 0x80) return c;
    int len;
    uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
        min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
        min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
        min = 0x10000;
    } else {
        return 0xFFFD;
    }
    if (i + (size_t)len > n) return 0xFFFD;
    for (int k = 1; k < len; k++) {
        if ((s[i + k] & 0xC0) != 0x80) return 0xFFFD;
        cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0xFFFD;
    *adv = (size_t)len;
    return cp;
}

size_t stj_utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    if (cp > 0x10FFFF) cp = 0xFFFD;
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

int stj_is_js_space(uint32_t c) {
    return c == ' ' || (c >= 0x09 && c <= 0x0D) || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000 || c == 0xFEFF;
}

/* ---- numbers ---- */
size_t stj_fmt_js_number(double x, char *buf) {
    if (isnan(x)) return (size_t)snprintf(buf, 32, "NaN");
    if (isinf(x)) return (size_t)snprintf(buf, 32, x < 0 ? "-Infinity" : "Infinity");
    if (x == 0) return (size_t)snprintf(buf, 32, "0");
    /* shortest %.*e that round-trips: digits d1..dk and decimal exponent e (x = 0.d1..dk *
     * 10^(e+1)) */
    char tmp[40];
    int prec;
    for (prec = 0; prec < 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec, x);
        if (strtod(tmp, NULL) == x) break;
    }
    snprintf(tmp, sizeof tmp, "%.*e", prec, x);
    char digits[24];
    int nd = 0;
    const char *p = tmp;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') digits[nd++] = *p;
    int e10 = atoi(p + 1); /* exponent of the first digit */
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = 0;
    int n = e10 + 1; /* JS spec: k = nd, n = position of decimal point */
    char *o = buf;
    if (neg) *o++ = '-';
    if (nd <= n && n <= 21) {
        memcpy(o, digits, (size_t)nd);
        o += nd;
        for (int i = 0; i < n - nd; i++)
            *o++ = '0';
    } else if (0 < n && n <= 21) {
        memcpy(o, digits, (size_t)n);
        o += n;
        *o++ = '.';
        memcpy(o, digits + n, (size_t)(nd - n));
        o += nd - n;
    } else if (-6 < n && n <= 0) {
        *o++ = '0';
        *o++ = '.';
        for (int i = 0; i < -n; i++)
            *o++ = '0';
        memcpy(o, digits, (size_t)nd);
        o += nd;
    } else {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            memcpy(o, digits + 1, (size_t)(nd - 1));
            o += nd - 1;
        }
        o += snprintf(o, 8, "e%c%d", n - 1 >= 0 ? '+' : '-', abs(n - 1));
    }
    *o = 0;
    return (size_t)(o - buf);
}

/* ---- JSON reader ---- */
struct jr {
    struct stj_arena *a;
    const char *s;
    size_t n, i;
    int max_depth;
    char *msg;
    size_t msgcap;
    int oom;
};

static int jr_fail(struct jr *r, const char *why) {
    snprintf(r->msg, r->msgcap, "byte %zu: %s", r->i, why);
    if (strcmp(why, "out of memory") == 0) r->oom = 1;
    return -1;
}

static void jr_ws(struct jr *r) {
    while (r->i < r->n &&
           (r->s[r->i] == ' ' || r->s[r->i] == '\t' || r->s[r->i] == '\n' || r->s[r->i] == '\r'))
        r->i++;
}

static int hex4(const char *s, uint32_t *out) {
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        char c = s[k];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static int jr_string(struct jr *r, const char **out, size_t *outn) {
    r->i++; /* opening quote */
    size_t start = r->i, esc = 0;
    while (r->i < r->n && r->s[r->i] != '"') {
        if ((unsigned char)r->s[r->i] < 0x20) return jr_fail(r, "control character in string");
        if (r->s[r->i] == '\\') {
            esc = 1;
            r->i++;
        }
        r->i++;
    }
    if (r->i >= r->n) return jr_fail(r, "unterminated string");
    size_t end = r->i;
    r->i++;
    if (!esc) {
        *out = r->s + start;
        *outn = end - start;
        return 0;
    }
    char *o = stj_alloc(r->a, end - start + 1);
    if (!o) return jr_fail(r, "out of memory");
    size_t k = 0;
    for (size_t i = start; i < end; i++) {
        char c = r->s[i];
        if (c != '\\') {
            o[k++] = c;
            continue;
        }
        c = r->s[++i];
        switch (c) {
        case '"': o[k++] = '"'; break;
        case '\\': o[k++] = '\\'; break;
        case '/': o[k++] = '/'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'n': o[k++] = '\n'; break;
        case 'r': o[k++] = '\r'; break;
        case 't': o[k++] = '\t'; break;
        case 'u': {
            uint32_t cp;
            if (i + 4 >= end || hex4(r->s + i + 1, &cp)) return jr_fail(r, "bad \\u escape");
            i += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF && i + 6 < end && r->s[i + 1] == '\\' &&
                r->s[i + 2] == 'u') {
                uint32_t lo;
                if (!hex4(r->s + i + 3, &lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
            }
            k += stj_utf8_encode(cp, o + k); /* a lone surrogate becomes U+FFFD */
            break;
        }
        default: r->i = i; return jr_fail(r, "bad escape");
        }
    }
    *out = o;
    *outn = k;
    return 0;
}

static int jr_value(struct jr *r, struct stj_val *out, int depth);

static int jr_number(struct jr *r, struct stj_val *out) {
    size_t start = r->i;
    if (r->i < r->n && r->s[r->i] == '-') r->i++;
    if (r->i >= r->n || r->s[r->i] < '0' || r->s[r->i] > '9') return jr_fail(r, "bad number");
    if (r->s[r->i] == '0')
        r->i++;
    else
        while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9')
            r->i++;
    if (r->i < r->n && r->s[r->i] == '.') {
        r->i++;
        if (r->i >= r->n || r->s[r->i] < '0' || r->s[r->i] > '9') return jr_fail(r, "bad number");
        while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9')
            r->i++;
    }
    if (r->i < r->n && (r->s[r->i] == 'e' || r->s[r->i] == 'E')) {
        r->i++;
        if (r->i < r->n && (r->s[r->i] == '+' || r->s[r->i] == '-')) r->i++;
        if (r->i >= r->n || r->s[r->i] < '0' || r->s[r->i] > '9') return jr_fail(r, "bad number");
        while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9')
            r->i++;
    }
    char tmp[64];
    size_t len = r->i - start;
    double d;
    if (len < sizeof tmp) {
        memcpy(tmp, r->s + start, len);
        tmp[len] = 0;
        d = strtod(tmp, NULL);
    } else {
        char *t = stj_alloc(r->a, len + 1);
        if (!t) return jr_fail(r, "out of memory");
        memcpy(t, r->s + start, len);
        t[len] = 0;
        d = strtod(t, NULL);
    }
    if (d == floor(d) && fabs(d) < 9007199254740992.0)
        *out = stj_int((int64_t)d);
    else
        *out = stj_float(d);
    return 0;
}

static int jr_value(struct jr *r, struct stj_val *out, int depth) {
    jr_ws(r);
    if (r->i >= r->n) return jr_fail(r, "unexpected end of JSON");
    char c = r->s[r->i];
    if (c == '{' || c == '[') {
        if (depth >= r->max_depth) return jr_fail(r, "JSON nested too deeply");
        r->i++;
        if (c == '{') {
            struct stj_dict *d = stj_alloc(r->a, sizeof *d);
            if (!d) return jr_fail(r, "out of memory");
            memset(d, 0, sizeof *d);
            jr_ws(r);
            if (r->i < r->n && r->s[r->i] == '}') {
                r->i++;
            } else {
                for (;;) {
                    jr_ws(r);
                    if (r->i >= r->n || r->s[r->i] != '"') return jr_fail(r, "expected a key");
                    const char *k;
                    size_t kn;
                    if (jr_string(r, &k, &kn)) return -1;
                    jr_ws(r);
                    if (r->i >= r->n || r->s[r->i] != ':') return jr_fail(r, "expected ':'");
                    r->i++;
                    struct stj_val v;
                    if (jr_value(r, &v, depth + 1)) return -1;
                    if (stj_dict_set(r->a, d, k, kn, v)) return jr_fail(r, "out of memory");
                    jr_ws(r);
                    if (r->i < r->n && r->s[r->i] == ',') {
                        r->i++;
                        continue;
                    }
                    if (r->i < r->n && r->s[r->i] == '}') {
                        r->i++;
                        break;
                    }
                    return jr_fail(r, "expected ',' or '}'");
                }
            }
            out->kind = STJ_DICT;
            out->tuple = 0;
            out->u.d = d;
            return 0;
        }
        struct stj_list *l = stj_alloc(r->a, sizeof *l);
        if (!l) return jr_fail(r, "out of memory");
        l->n = 0;
        l->items = NULL;
        size_t cap = 0;
        jr_ws(r);
        if (r->i < r->n && r->s[r->i] == ']') {
            r->i++;
        } else {
            for (;;) {
                struct stj_val v;
                if (jr_value(r, &v, depth + 1)) return -1;
                if (l->n == cap) {
                    size_t nc = cap ? cap * 2 : 4;
                    struct stj_val *ni = stj_alloc(r->a, nc * sizeof *ni);
                    if (!ni) return jr_fail(r, "out of memory");
                    if (l->n) memcpy(ni, l->items, l->n * sizeof *ni);
                    l->items = ni;
                    cap = nc;
                }
                l->items[l->n++] = v;
                jr_ws(r);
                if (r->i < r->n && r->s[r->i] == ',') {
                    r->i++;
                    continue;
                }
                if (r->i < r->n && r->s[r->i] == ']') {
                    r->i++;
                    break;
                }
                return jr_fail(r, "expected ',' or ']'");
            }
        }
        out->kind = STJ_LIST;
        out->tuple = 0;
        out->u.l = l;
        return 0;
    }
    if (c == '"') {
        const char *p;
        size_t n;
        if (jr_string(r, &p, &n)) return -1;
        *out = stj_str(p, n);
        return 0;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return jr_number(r, out);
    if (r->n - r->i >= 4 && memcmp(r->s + r->i, "true", 4) == 0) {
        r->i += 4;
        *out = stj_bool(1);
        return 0;
    }
    if (r->n - r->i >= 5 && memcmp(r->s + r->i, "false", 5) == 0) {
        r->i += 5;
        *out = stj_bool(0);
        return 0;
    }
    if (r->n - r->i >= 4 && memcmp(r->s + r->i, "null", 4) == 0) {
        r->i += 4;
        *out = stj_none();
        return 0;
    }
    return jr_fail(r, "unexpected character");
}

int stj_json_parse(struct stj_arena *a, const char *s, size_t n, int max_depth, struct stj_val *out,
                   char *msg, size_t msgcap) {
    struct jr r = {a, s, n, 0, max_depth, msg, msgcap, 0};
    if (jr_value(&r, out, 0)) return r.oom ? -2 : -1;
    jr_ws(&r);
    if (r.i != n) return jr_fail(&r, "trailing characters after JSON value");
    return 0;
}

/* ---- JSON writer ---- */
static int put(struct stj_arena *a, struct stj_buf *b, size_t max, const char *s, size_t n) {
    return stj_buf_put(a, b, s, n, max);
}
static int puts_(struct stj_arena *a, struct stj_buf *b, size_t max, const char *s) {
    return stj_buf_put(a, b, s, strlen(s), max);
}

static int json_string(struct stj_arena *a, struct stj_buf *b, size_t max, const char *s, size_t n,
                       int ascii) {
    if (put(a, b, max, "\"", 1)) return -1;
    size_t run = 0; /* start of a run of bytes copied verbatim */
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        char esc[16];
        size_t en = 0;
        size_t adv = 1;
        if (c == '"')
            en = (size_t)snprintf(esc, sizeof esc, "\\\"");
        else if (c == '\\')
            en = (size_t)snprintf(esc, sizeof esc, "\\\\");
        else if (c == '\n')
            en = (size_t)snprintf(esc, sizeof esc, "\\n");
        else if (c == '\r')
            en = (size_t)snprintf(esc, sizeof esc, "\\r");
        else if (c == '\t')
            en = (size_t)snprintf(esc, sizeof esc, "\\t");
        else if (c == '\b')
            en = (size_t)snprintf(esc, sizeof esc, "\\b");
        else if (c == '\f')
            en = (size_t)snprintf(esc, sizeof esc, "\\f");
        else if (c < 0x20)
            en = (size_t)snprintf(esc, sizeof esc, "\\u%04x", c);
        else if (c >= 0x80) {
            uint32_t cp = stj_utf8_decode(s, n, i, &adv);
            if (ascii || (cp == 0xFFFD && adv == 1)) {
                if (cp >= 0x10000) {
                    uint32_t v = cp - 0x10000;
                    en = (size_t)snprintf(esc, sizeof esc, "\\u%04x\\u%04x", 0xD800 + (v >> 10),
                                          0xDC00 + (v & 0x3FF));
                } else if (ascii) {
                    en = (size_t)snprintf(esc, sizeof esc, "\\u%04x", cp);
                } else {
                    en = stj_utf8_encode(0xFFFD, esc); /* invalid byte */
                }
            }
        } else if (c == 0x7F && ascii) {
            en = (size_t)snprintf(esc, sizeof esc, "\\u007f");
        }
        if (en) {
            if (put(a, b, max, s + run, i - run) || put(a, b, max, esc, en)) return -1;
            i += adv;
            run = i;
        } else {
            i += adv;
        }
    }
    if (put(a, b, max, s + run, n - run)) return -1;
    return put(a, b, max, "\"", 1);
}

static int newline_indent(struct stj_arena *a, struct stj_buf *b, size_t max, int indent,
                          int depth) {
    if (put(a, b, max, "\n", 1)) return -1;
    for (long i = 0; i < (long)indent * depth; i++)
        if (put(a, b, max, " ", 1)) return -1;
    return 0;
}

static int kv_cmp(const void *x, const void *y) {
    const struct stj_kv *p = x, *q = y;
    size_t m = p->kn < q->kn ? p->kn : q->kn;
    int c = memcmp(p->k, q->k, m);
    if (c) return c;
    return p->kn < q->kn ? -1 : p->kn > q->kn;
}

int stj_to_json(struct stj_arena *a, struct stj_buf *b, size_t max, struct stj_val v,
                const struct stj_json_opts *o, int depth) {
    if (depth > 256) return -3;
    const char *isep = o->item_sep ? o->item_sep : (o->indent > 0 ? "," : ", ");
    const char *ksep = o->key_sep ? o->key_sep : ": ";
    char num[40];
    switch (v.kind) {
    case STJ_UNDEF: return puts_(a, b, max, o->undef_as ? o->undef_as : "null");
    case STJ_NONE: return puts_(a, b, max, "null");
    case STJ_BOOL: return puts_(a, b, max, v.u.b ? "true" : "false");
    case STJ_INT: {
        int k = snprintf(num, sizeof num, "%lld", (long long)v.u.i);
        return put(a, b, max, num, (size_t)k);
    }
    case STJ_FLOAT: {
        if (!isfinite(v.u.f)) return puts_(a, b, max, "null");
        size_t k = stj_fmt_js_number(v.u.f, num);
        return put(a, b, max, num, k);
    }
    case STJ_STR: return json_string(a, b, max, v.u.s.p, v.u.s.n, o->ensure_ascii);
    case STJ_LIST: {
        const struct stj_list *l = v.u.l;
        if (put(a, b, max, "[", 1)) return -1;
        for (size_t i = 0; i < l->n; i++) {
            if (i && puts_(a, b, max, isep)) return -1;
            if (o->indent > 0 && newline_indent(a, b, max, o->indent, depth + 1)) return -1;
            int rc = stj_to_json(a, b, max, l->items[i], o, depth + 1);
            if (rc) return rc;
        }
        if (o->indent > 0 && l->n && newline_indent(a, b, max, o->indent, depth)) return -1;
        return put(a, b, max, "]", 1);
    }
    case STJ_DICT: {
        const struct stj_dict *d = v.u.d;
        const struct stj_kv *e = d->e;
        if (o->sort_keys && d->n > 1) {
            struct stj_kv *s = stj_alloc(a, d->n * sizeof *s);
            if (!s) return -1;
            memcpy(s, d->e, d->n * sizeof *s);
            qsort(s, d->n, sizeof *s, kv_cmp); /* keys are unique: order is total */
            e = s;
        }
        if (put(a, b, max, "{", 1)) return -1;
        for (size_t i = 0; i < d->n; i++) {
            if (i && puts_(a, b, max, isep)) return -1;
            if (o->indent > 0 && newline_indent(a, b, max, o->indent, depth + 1)) return -1;
            if (json_string(a, b, max, e[i].k, e[i].kn, o->ensure_ascii)) return -1;
            if (puts_(a, b, max, ksep)) return -1;
            int rc = stj_to_json(a, b, max, e[i].v, o, depth + 1);
            if (rc) return rc;
        }
        if (o->indent > 0 && d->n && newline_indent(a, b, max, o->indent, depth)) return -1;
        return put(a, b, max, "}", 1);
    }
    default: return -2;
    }
}
