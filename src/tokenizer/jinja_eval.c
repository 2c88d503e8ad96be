/* jinja_eval.c: the chat-template interpreter (AST from jinja.c -> rendered text).
 *
 * DESIGN: a tree walker over immutable values in a per-render arena. Errors (raise_exception,
 * type errors, caps) record a message naming the template line:column and longjmp back to
 * stj_render, which frees the arena: nothing else needs cleaning up. Hostile templates are
 * bounded by four caps: rendered bytes (every buffer and every string built), arena bytes,
 * evaluation steps (statements, expressions, loop iterations, sort/unique work), and macro-call
 * depth (expression depth is already capped by the parser).
 * Semantics are @huggingface/jinja 0.5.11's (scoping: a for loop opens one scope for all its
 * iterations, `if` opens none, macros see the caller's scope; `none`/undefined render as "";
 * booleans render "true"/"false"; lists/dicts render as JSON; attribute access on undefined or
 * none gives undefined). Where it has no answer, Python Jinja2's is used (tests with arguments,
 * strip(chars), round, escape, map(filter), select/reject, string iteration); see
 * docs/chat-templates.md for the full list of differences.
 */
#include "tokenizer/jinja.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#define DEF_MAX_OUTPUT (16u << 20)
#define DEF_MAX_MEMORY (256u << 20)
#define DEF_MAX_STEPS 20000000ull
#define DEF_MAX_DEPTH 64
#define MAX_RANGE 1000000
#define MAX_RECURSION 1000 /* nested eval/exec calls in all: bounds the C stack */

enum { F_BUILTIN = 1, F_METHOD, F_MACRO, F_CALLER };
enum { B_RANGE = 1, B_RAISE, B_STRFTIME, B_NAMESPACE };
enum {
    M_UPPER = 1,
    M_LOWER,
    M_STRIP,
    M_LSTRIP,
    M_RSTRIP,
    M_TITLE,
    M_CAPITALIZE,
    M_STARTSWITH,
    M_ENDSWITH,
    M_SPLIT,
    M_REPLACE,
    M_FIND,
    M_COUNT,
    M_JOIN, /* string */
    M_GET,
    M_ITEMS,
    M_KEYS,
    M_VALUES,
    M_DICTSORT /* dict */
};

struct svar {
    const char *name;
    size_t nlen;
    struct stj_val v;
};
struct scope {
    struct scope *parent;
    struct svar *v;
    size_t n, cap;
};

struct stj_func {
    int kind, id;
    struct stj_val self;
    const struct stj_node *node;
    struct scope *scope;
};

struct rctx {
    const struct stj_template *t;
    struct stj_arena a;
    size_t max_out;
    uint64_t max_steps, steps;
    int max_depth, depth;
    int rdepth; /* nesting of eval() + exec_stmt() calls */
    int64_t now;
    int has_now;
    jmp_buf jb;
    struct st_error *err;
    enum st_status code;
};

/* arguments of a call */
struct args {
    struct stj_val *pos;
    size_t n;
    struct stj_dict *kw; /* may be NULL */
};

static _Noreturn void rerr(struct rctx *c, const struct stj_node *at, enum st_status code,
                           const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static _Noreturn void rerr(struct rctx *c, const struct stj_node *at, enum st_status code,
                           const char *fmt, ...) {
    char where[256], msg[400];
    stj_template_where(c->t, at ? at->pos : 0, where, sizeof where);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    st_errorf(c->err, code, "%s: %s", where, msg);
    c->code = code;
    longjmp(c->jb, 1);
}

static const char *kind_name(struct stj_val v) {
    switch (v.kind) {
    case STJ_UNDEF: return "undefined";
    case STJ_NONE: return "none";
    case STJ_BOOL: return "boolean";
    case STJ_INT: return "integer";
    case STJ_FLOAT: return "float";
    case STJ_STR: return "string";
    case STJ_LIST: return "list";
    case STJ_DICT: return v.u.d->ns ? "namespace" : "dict";
    default: return "function";
    }
}

static void *ralloc(struct rctx *c, const struct stj_node *at, size_t n) {
    void *p = stj_alloc(&c->a, n);
    if (!p) rerr(c, at, ST_ERR_NOMEM, "render memory exceeds the cap of %zu bytes", c->a.cap);
    return p;
}

static void step(struct rctx *c, const struct stj_node *at, uint64_t k) {
    c->steps += k;
    if (c->steps > c->max_steps)
        rerr(c, at, ST_ERR_NOMEM, "template evaluation exceeds %llu steps (runaway loop?)",
             (unsigned long long)c->max_steps);
}

static void bput(struct rctx *c, const struct stj_node *at, struct stj_buf *b, const char *s,
                 size_t n) {
    if (stj_buf_put(&c->a, b, s, n, c->max_out)) {
        if (b->n + n > c->max_out || n > c->max_out)
            rerr(c, at, ST_ERR_NOMEM, "rendered text exceeds the cap of %zu bytes", c->max_out);
        rerr(c, at, ST_ERR_NOMEM, "render memory exceeds the cap of %zu bytes", c->a.cap);
    }
}
static void bputs(struct rctx *c, const struct stj_node *at, struct stj_buf *b, const char *s) {
    bput(c, at, b, s, strlen(s));
}

static struct stj_val mklist(struct rctx *c, const struct stj_node *at, size_t n) {
    struct stj_list *l = ralloc(c, at, sizeof *l);
    l->n = n;
    l->items = ralloc(c, at, (n ? n : 1) * sizeof *l->items); /* never NULL: memcpy-safe */
    struct stj_val v = {0};
    v.kind = STJ_LIST;
    v.u.l = l;
    return v;
}
static struct stj_val mkdict(struct rctx *c, const struct stj_node *at) {
    struct stj_dict *d = ralloc(c, at, sizeof *d);
    memset(d, 0, sizeof *d);
    struct stj_val v = {0};
    v.kind = STJ_DICT;
    v.u.d = d;
    return v;
}
static void dset(struct rctx *c, const struct stj_node *at, struct stj_dict *d, const char *k,
                 size_t kn, struct stj_val v) {
    if (stj_dict_set(&c->a, d, k, kn, v))
        rerr(c, at, ST_ERR_NOMEM, "render memory exceeds the cap of %zu bytes", c->a.cap);
}
static struct stj_val mkfunc(struct rctx *c, const struct stj_node *at, int kind, int id,
                             struct stj_val self, const struct stj_node *node, struct scope *s) {
    struct stj_func *f = ralloc(c, at, sizeof *f);
    f->kind = kind;
    f->id = id;
    f->self = self;
    f->node = node;
    f->scope = s;
    struct stj_val v = {0};
    v.kind = STJ_FUNC;
    v.u.fn = f;
    return v;
}
static struct stj_val cstr(const char *s) {
    return stj_str(s, strlen(s));
}

/* ---- scopes ---- */
static struct scope *scope_new(struct rctx *c, const struct stj_node *at, struct scope *parent) {
    struct scope *s = ralloc(c, at, sizeof *s);
    memset(s, 0, sizeof *s);
    s->parent = parent;
    return s;
}
static struct stj_val *scope_find(struct scope *s, const char *name, size_t n) {
    for (; s; s = s->parent)
        for (size_t i = 0; i < s->n; i++)
            if (s->v[i].nlen == n && memcmp(s->v[i].name, name, n) == 0) return &s->v[i].v;
    return NULL;
}
static void scope_set(struct rctx *c, const struct stj_node *at, struct scope *s, const char *name,
                      size_t n, struct stj_val v) {
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i].nlen == n && memcmp(s->v[i].name, name, n) == 0) {
            s->v[i].v = v;
            return;
        }
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 8;
        struct svar *nv = ralloc(c, at, nc * sizeof *nv);
        if (s->n) memcpy(nv, s->v, s->n * sizeof *nv);
        s->v = nv;
        s->cap = nc;
    }
    s->v[s->n].name = name;
    s->v[s->n].nlen = n;
    s->v[s->n].v = v;
    s->n++;
}

/* ---- Unicode case mapping: simple one-to-one mappings (utf8proc), locale-independent ---- */
static uint32_t cp_upper(uint32_t cp) {
    if (cp < 0x80) return (cp >= 'a' && cp <= 'z') ? cp - 32 : cp;
    return (uint32_t)utf8proc_toupper((utf8proc_int32_t)cp);
}
static uint32_t cp_lower(uint32_t cp) {
    if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
    return (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp);
}

/* number of code points */
static size_t cp_count(const char *s, size_t n) {
    size_t k = 0, adv;
    for (size_t i = 0; i < n; i += adv) {
        stj_utf8_decode(s, n, i, &adv);
        k++;
    }
    return k;
}

/* ---- conversions ---- */
static int truthy(struct stj_val v) {
    switch (v.kind) {
    case STJ_UNDEF:
    case STJ_NONE: return 0;
    case STJ_BOOL: return v.u.b;
    case STJ_INT: return v.u.i != 0;
    case STJ_FLOAT: return v.u.f != 0 && !isnan(v.u.f);
    case STJ_STR: return v.u.s.n > 0;
    case STJ_LIST: return v.u.l->n > 0;
    case STJ_DICT: return v.u.d->ns ? 1 : v.u.d->n > 0;
    default: return 1;
    }
}

static size_t fmt_float(double f, char *buf) {
    if (f == 0 && signbit(f)) return (size_t)snprintf(buf, 40, "-0.0");
    if (isfinite(f) && f == floor(f) && fabs(f) < 1e21) return (size_t)snprintf(buf, 40, "%.1f", f);
    return stj_fmt_js_number(f, buf);
}

/* Append the text form of v (JavaScript toString semantics of the oracle). */
static void put_text(struct rctx *c, const struct stj_node *at, struct stj_buf *b,
                     struct stj_val v) {
    char num[48];
    switch (v.kind) {
    case STJ_UNDEF:
    case STJ_NONE: return;
    case STJ_BOOL: bputs(c, at, b, v.u.b ? "true" : "false"); return;
    case STJ_INT:
        bput(c, at, b, num, (size_t)snprintf(num, sizeof num, "%lld", (long long)v.u.i));
        return;
    case STJ_FLOAT: bput(c, at, b, num, fmt_float(v.u.f, num)); return;
    case STJ_STR: bput(c, at, b, v.u.s.p, v.u.s.n); return;
    case STJ_LIST:
    case STJ_DICT: {
        struct stj_json_opts o = {-1, 0, 0, NULL, NULL, "undefined"};
        int rc = stj_to_json(&c->a, b, c->max_out, v, &o, 0);
        if (rc == -3) rerr(c, at, ST_ERR_FORMAT, "value nested too deeply to render");
        if (rc == -2) rerr(c, at, ST_ERR_FORMAT, "cannot render a function inside a value");
        if (rc) rerr(c, at, ST_ERR_NOMEM, "rendered text exceeds the cap of %zu bytes", c->max_out);
        return;
    }
    default: return;
    }
}

/* String form used by ~ and + (errors for undefined/none are raised by the callers). */
static struct stj_val to_str(struct rctx *c, const struct stj_node *at, struct stj_val v) {
    if (v.kind == STJ_STR) return v;
    struct stj_buf b = {0};
    if (v.kind == STJ_NONE)
        bputs(c, at, &b, "None");
    else
        put_text(c, at, &b, v);
    return stj_str(b.p ? b.p : "", b.n);
}

static struct stj_val concat(struct rctx *c, const struct stj_node *at, struct stj_val x,
                             struct stj_val y) {
    if (x.u.s.n > c->max_out || y.u.s.n > c->max_out - x.u.s.n)
        rerr(c, at, ST_ERR_NOMEM, "string exceeds the cap of %zu bytes", c->max_out);
    size_t n = x.u.s.n + y.u.s.n;
    char *p = ralloc(c, at, n ? n : 1);
    if (x.u.s.n) memcpy(p, x.u.s.p, x.u.s.n);
    if (y.u.s.n) memcpy(p + x.u.s.n, y.u.s.p, y.u.s.n);
    return stj_str(p, n);
}

/* JavaScript ToNumber for loose equality. */
static double js_to_number(struct stj_val v) {
    if (v.kind == STJ_INT) return (double)v.u.i;
    if (v.kind == STJ_FLOAT) return v.u.f;
    if (v.kind == STJ_BOOL) return v.u.b;
    if (v.kind != STJ_STR) return NAN;
    const char *s = v.u.s.p;
    size_t n = v.u.s.n, i = 0, j = n, adv;
    while (i < n && stj_is_js_space(stj_utf8_decode(s, n, i, &adv)))
        i += adv;
    while (j > i) {
        size_t st = j - 1;
        while (st > i && ((unsigned char)s[st] & 0xC0) == 0x80)
            st--;
        if (stj_is_js_space(stj_utf8_decode(s, n, st, &adv)))
            j = st;
        else
            break;
    }
    if (i == j) return 0;
    if (j - i > 60) return NAN;
    char tmp[64];
    memcpy(tmp, s + i, j - i);
    tmp[j - i] = 0;
    for (size_t k = 0; tmp[k]; k++) {
        char ch = tmp[k];
        if (!((ch >= '0' && ch <= '9') || ch == '.' || ch == 'e' || ch == 'E' || ch == '+' ||
              ch == '-'))
            return strcmp(tmp, "Infinity") == 0 || strcmp(tmp, "+Infinity") == 0 ? INFINITY
                   : strcmp(tmp, "-Infinity") == 0                               ? -INFINITY
                                                                                 : NAN;
    }
    char *end;
    double d = strtod(tmp, &end);
    return *end ? NAN : d;
}

static int is_num(struct stj_val v) {
    return v.kind == STJ_INT || v.kind == STJ_FLOAT;
}
static double num_of(struct stj_val v) {
    return v.kind == STJ_INT ? (double)v.u.i : v.kind == STJ_FLOAT ? v.u.f : v.u.b;
}

/* JavaScript == on the underlying values (the oracle's `left.value == right.value`). */
static int loose_eq(struct stj_val x, struct stj_val y) {
    int xn = x.kind == STJ_UNDEF || x.kind == STJ_NONE,
        yn = y.kind == STJ_UNDEF || y.kind == STJ_NONE;
    if (xn || yn) return xn && yn;
    if (x.kind == STJ_STR && y.kind == STJ_STR)
        return x.u.s.n == y.u.s.n && memcmp(x.u.s.p, y.u.s.p, x.u.s.n) == 0;
    if (x.kind == STJ_INT && y.kind == STJ_INT) return x.u.i == y.u.i;
    int xp = x.kind <= STJ_STR, yp = y.kind <= STJ_STR;
    if (xp && yp) return js_to_number(x) == js_to_number(y);
    if (x.kind != y.kind) return 0;
    if (x.kind == STJ_LIST) return x.u.l == y.u.l;
    if (x.kind == STJ_DICT) return x.u.d == y.u.d;
    return x.u.fn == y.u.fn;
}

/* JavaScript === on the underlying values. */
static int strict_eq(struct stj_val x, struct stj_val y) {
    if (is_num(x) && is_num(y)) {
        if (x.kind == STJ_INT && y.kind == STJ_INT) return x.u.i == y.u.i;
        return num_of(x) == num_of(y);
    }
    if (x.kind != y.kind) return 0;
    switch (x.kind) {
    case STJ_UNDEF:
    case STJ_NONE: return 1;
    case STJ_BOOL: return x.u.b == y.u.b;
    case STJ_STR: return x.u.s.n == y.u.s.n && memcmp(x.u.s.p, y.u.s.p, x.u.s.n) == 0;
    case STJ_LIST: return x.u.l == y.u.l;
    case STJ_DICT: return x.u.d == y.u.d;
    default: return x.u.fn == y.u.fn;
    }
}

static int bytes_cmp(const char *a, size_t an, const char *b, size_t bn) {
    size_t m = an < bn ? an : bn;
    int r = m ? memcmp(a, b, m) : 0;
    if (r) return r < 0 ? -1 : 1;
    return an < bn ? -1 : an > bn;
}

static int ascii_lower_cmp(const char *a, size_t an, const char *b, size_t bn) {
    size_t m = an < bn ? an : bn;
    for (size_t i = 0; i < m; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z') x += 32;
        if (y >= 'A' && y <= 'Z') y += 32;
        if (x != y) return x < y ? -1 : 1;
    }
    return an < bn ? -1 : an > bn;
}

/* compareRuntimeValues of the oracle (sort, dictsort). */
static int compare_vals(struct rctx *c, const struct stj_node *at, struct stj_val x,
                        struct stj_val y, int case_sensitive) {
    if (x.kind == STJ_NONE && y.kind == STJ_NONE) return 0;
    if (x.kind == STJ_UNDEF && y.kind == STJ_UNDEF) return 0;
    int xn = is_num(x) || x.kind == STJ_BOOL, yn = is_num(y) || y.kind == STJ_BOOL;
    if (xn && yn) {
        double a = num_of(x), b = num_of(y);
        return a < b ? -1 : a > b;
    }
    if (x.kind == STJ_STR && y.kind == STJ_STR)
        return case_sensitive ? bytes_cmp(x.u.s.p, x.u.s.n, y.u.s.p, y.u.s.n)
                              : ascii_lower_cmp(x.u.s.p, x.u.s.n, y.u.s.p, y.u.s.n);
    rerr(c, at, ST_ERR_FORMAT, "cannot compare %s with %s", kind_name(x), kind_name(y));
}

/* ---- string helpers ---- */
static struct stj_val str_map_case(struct rctx *c, const struct stj_node *at, struct stj_val s,
                                   int upper) {
    char *o = ralloc(c, at, s.u.s.n * 3 + 4); /* a bad byte (1) becomes U+FFFD (3) */
    size_t k = 0, adv;
    for (size_t i = 0; i < s.u.s.n; i += adv) {
        uint32_t cp = stj_utf8_decode(s.u.s.p, s.u.s.n, i, &adv);
        uint32_t m = upper ? cp_upper(cp) : cp_lower(cp);
        if (cp == 0xFFFD && adv == 1) m = 0xFFFD;
        char enc[4];
        size_t en = stj_utf8_encode(m, enc);
        memcpy(o + k, enc, en);
        k += en;
    }
    return stj_str(o, k);
}

/* oracle's title: /\b\w/g upper-cased (ASCII word characters, rest unchanged) */
static struct stj_val str_title(struct rctx *c, const struct stj_node *at, struct stj_val s) {
    char *o = ralloc(c, at, s.u.s.n + 1);
    int prev_word = 0;
    for (size_t i = 0; i < s.u.s.n; i++) {
        char ch = s.u.s.p[i];
        int w = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                ch == '_';
        o[i] = (w && !prev_word && ch >= 'a' && ch <= 'z') ? (char)(ch - 32) : ch;
        prev_word = w;
    }
    return stj_str(o, s.u.s.n);
}

static struct stj_val str_capitalize(struct rctx *c, const struct stj_node *at, struct stj_val s) {
    if (!s.u.s.n) return s;
    size_t adv;
    uint32_t cp = stj_utf8_decode(s.u.s.p, s.u.s.n, 0, &adv);
    char enc[4];
    size_t en = stj_utf8_encode(cp == 0xFFFD && adv == 1 ? cp : cp_upper(cp), enc);
    char *o = ralloc(c, at, s.u.s.n + 4);
    memcpy(o, enc, en);
    memcpy(o + en, s.u.s.p + adv, s.u.s.n - adv);
    return stj_str(o, en + s.u.s.n - adv);
}

static int cp_in(uint32_t cp, struct stj_val chars) {
    size_t adv;
    for (size_t i = 0; i < chars.u.s.n; i += adv)
        if (stj_utf8_decode(chars.u.s.p, chars.u.s.n, i, &adv) == cp) return 1;
    return 0;
}

/* strip (which: 1 left, 2 right, 3 both). chars == NULL: JavaScript whitespace (trim). */
static struct stj_val str_strip(struct stj_val s, int which, const struct stj_val *chars) {
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, i = 0, j = n, adv;
    if (which & 1)
        while (i < n) {
            uint32_t cp = stj_utf8_decode(p, n, i, &adv);
            if (chars ? cp_in(cp, *chars) : stj_is_js_space(cp))
                i += adv;
            else
                break;
        }
    if (which & 2)
        while (j > i) {
            size_t st = j - 1;
            while (st > i && ((unsigned char)p[st] & 0xC0) == 0x80)
                st--;
            uint32_t cp = stj_utf8_decode(p, n, st, &adv);
            if (st + adv != j) break;
            if (chars ? cp_in(cp, *chars) : stj_is_js_space(cp))
                j = st;
            else
                break;
        }
    return stj_str(p + i, j - i);
}

static const char *mem_find(const char *h, size_t hn, const char *nd, size_t nn) {
    if (nn == 0) return h;
    if (nn > hn) return NULL;
    for (size_t i = 0; i + nn <= hn; i++)
        if (h[i] == nd[0] && memcmp(h + i, nd, nn) == 0) return h + i;
    return NULL;
}

static int starts_with(struct stj_val s, struct stj_val p) {
    return p.u.s.n <= s.u.s.n && memcmp(s.u.s.p, p.u.s.p, p.u.s.n) == 0;
}
static int ends_with(struct stj_val s, struct stj_val p) {
    return p.u.s.n <= s.u.s.n && memcmp(s.u.s.p + s.u.s.n - p.u.s.n, p.u.s.p, p.u.s.n) == 0;
}

static struct stj_val str_replace(struct rctx *c, const struct stj_node *at, struct stj_val s,
                                  struct stj_val old, struct stj_val rep, int64_t count) {
    struct stj_buf b = {0};
    if (count < 0) count = INT64_MAX;
    if (old.u.s.n == 0) {
        /* insert at every code-point boundary, including both ends */
        size_t adv;
        for (size_t i = 0; i <= s.u.s.n; i += adv) {
            if (count > 0) {
                bput(c, at, &b, rep.u.s.p, rep.u.s.n);
                count--;
            }
            if (i == s.u.s.n) break;
            stj_utf8_decode(s.u.s.p, s.u.s.n, i, &adv);
            bput(c, at, &b, s.u.s.p + i, adv);
        }
        return stj_str(b.p ? b.p : "", b.n);
    }
    size_t i = 0;
    while (i < s.u.s.n) {
        const char *f = count > 0 ? mem_find(s.u.s.p + i, s.u.s.n - i, old.u.s.p, old.u.s.n) : NULL;
        if (!f) break;
        size_t k = (size_t)(f - s.u.s.p);
        bput(c, at, &b, s.u.s.p + i, k - i);
        bput(c, at, &b, rep.u.s.p, rep.u.s.n);
        i = k + old.u.s.n;
        count--;
    }
    bput(c, at, &b, s.u.s.p + i, s.u.s.n - i);
    return stj_str(b.p ? b.p : "", b.n);
}

/* list of the code points of s, as strings */
static struct stj_val str_chars(struct rctx *c, const struct stj_node *at, struct stj_val s) {
    struct stj_val l = mklist(c, at, cp_count(s.u.s.p, s.u.s.n));
    size_t k = 0, adv;
    for (size_t i = 0; i < s.u.s.n; i += adv) {
        stj_utf8_decode(s.u.s.p, s.u.s.n, i, &adv);
        l.u.l->items[k++] = stj_str(s.u.s.p + i, adv);
    }
    return l;
}

/* ---- arguments ---- */
static struct stj_val *kwarg(const struct args *a, const char *name) {
    return a->kw ? stj_dict_get(a->kw, name, strlen(name)) : NULL;
}
/* positional i, else keyword `name`, else NULL */
static struct stj_val *arg_at(const struct args *a, size_t i, const char *name) {
    if (i < a->n) return &a->pos[i];
    return name ? kwarg(a, name) : NULL;
}
static int arg_bool(struct rctx *c, const struct stj_node *at, const struct args *a, size_t i,
                    const char *name, int def) {
    struct stj_val *v = arg_at(a, i, name);
    if (!v || v->kind == STJ_UNDEF) return def;
    if (v->kind != STJ_BOOL && v->kind != STJ_INT)
        rerr(c, at, ST_ERR_FORMAT, "argument '%s' must be a boolean", name);
    return truthy(*v);
}

/* ---- evaluation ---- */
static struct stj_val eval(struct rctx *c, const struct stj_node *n, struct scope *s);
static int exec_block(struct rctx *c, struct stj_node *const *list, size_t n, struct scope *s,
                      struct stj_buf *out);
static struct stj_val call_value(struct rctx *c, const struct stj_node *at, struct stj_val fn,
                                 struct args *a, struct scope *s);
static int run_test(struct rctx *c, const struct stj_node *at, const char *name, size_t nlen,
                    struct stj_val x, const struct args *a, struct scope *s);
static struct stj_val apply_filter(struct rctx *c, const struct stj_node *f, struct stj_val x,
                                   struct scope *s);

static void eval_args(struct rctx *c, struct stj_node *const *list, size_t n, struct scope *s,
                      struct args *out) {
    size_t np = 0;
    for (size_t i = 0; i < n; i++)
        if (list[i]->type != STJ_N_KWARG && list[i]->type != STJ_N_KWSPREAD) np++;
    out->pos = np ? ralloc(c, list[0], np * sizeof *out->pos) : NULL;
    out->n = 0;
    out->kw = NULL;
    size_t cap = np;
    for (size_t i = 0; i < n; i++) {
        const struct stj_node *x = list[i];
        if (x->type == STJ_N_SPREAD) {
            struct stj_val v = eval(c, x->a, s);
            if (v.kind != STJ_LIST)
                rerr(c, x, ST_ERR_FORMAT, "cannot unpack a %s with *", kind_name(v));
            struct stj_val *np2 = ralloc(c, x, (cap + v.u.l->n + 1) * sizeof *np2);
            if (out->n) memcpy(np2, out->pos, out->n * sizeof *np2);
            out->pos = np2;
            cap += v.u.l->n + 1;
            for (size_t k = 0; k < v.u.l->n; k++)
                out->pos[out->n++] = v.u.l->items[k];
        } else if (x->type != STJ_N_KWARG && x->type != STJ_N_KWSPREAD) {
            out->pos[out->n++] = eval(c, x, s);
        }
    }
    for (size_t i = 0; i < n; i++) {
        const struct stj_node *x = list[i];
        if (x->type == STJ_N_KWARG) {
            if (!out->kw) {
                out->kw = mkdict(c, x).u.d;
                out->kw->kwargs = 1;
            }
            if (stj_dict_get(out->kw, x->s, x->sn))
                rerr(c, x, ST_ERR_FORMAT, "keyword argument '%.*s' given twice", (int)x->sn, x->s);
            dset(c, x, out->kw, x->s, x->sn, eval(c, x->a, s));
        } else if (x->type == STJ_N_KWSPREAD) {
            struct stj_val v = eval(c, x->a, s);
            if (v.kind != STJ_DICT)
                rerr(c, x, ST_ERR_FORMAT, "argument after ** must be a mapping");
            if (!out->kw) {
                out->kw = mkdict(c, x).u.d;
                out->kw->kwargs = 1;
            }
            for (size_t k = 0; k < v.u.d->n; k++)
                dset(c, x, out->kw, v.u.d->e[k].k, v.u.d->e[k].kn, v.u.d->e[k].v);
        }
    }
}

static int64_t to_index(struct rctx *c, const struct stj_node *at, struct stj_val v,
                        const char *what) {
    if (v.kind == STJ_INT) return v.u.i;
    rerr(c, at, ST_ERR_FORMAT, "%s must be an integer, got %s", what, kind_name(v));
}

/* Python slice semantics (the oracle's utils.slice) */
static struct stj_val do_slice(struct rctx *c, const struct stj_node *at, struct stj_val obj,
                               const struct stj_node *sl, struct scope *s) {
    if (obj.kind != STJ_LIST && obj.kind != STJ_STR)
        rerr(c, at, ST_ERR_FORMAT, "cannot slice a %s", kind_name(obj));
    struct stj_val chars = obj.kind == STJ_STR ? str_chars(c, at, obj) : obj;
    int64_t len = (int64_t)chars.u.l->n;
    struct stj_val vs = sl->a ? eval(c, sl->a, s) : stj_undef();
    struct stj_val ve = sl->b ? eval(c, sl->b, s) : stj_undef();
    struct stj_val vt = sl->c ? eval(c, sl->c, s) : stj_undef();
    int64_t step_ = vt.kind == STJ_UNDEF ? 1 : to_index(c, at, vt, "slice step");
    if (step_ == 0) rerr(c, at, ST_ERR_FORMAT, "slice step cannot be zero");
    int has_s = vs.kind != STJ_UNDEF, has_e = ve.kind != STJ_UNDEF;
    int64_t start = has_s ? to_index(c, at, vs, "slice start") : 0;
    int64_t stop = has_e ? to_index(c, at, ve, "slice stop") : 0;
    if (step_ > 0) {
        if (!has_s)
            start = 0;
        else if (start < 0)
            start = len + start < 0 ? 0 : len + start;
        else if (start > len)
            start = len;
        if (!has_e)
            stop = len;
        else if (stop < 0)
            stop = len + stop < 0 ? 0 : len + stop;
        else if (stop > len)
            stop = len;
    } else {
        if (!has_s)
            start = len - 1;
        else if (start < 0)
            start = len + start < -1 ? -1 : len + start;
        else if (start > len - 1)
            start = len - 1;
        if (!has_e)
            stop = -1;
        else if (stop < -1)
            stop = len + stop < -1 ? -1 : len + stop;
        else if (stop > len - 1)
            stop = len - 1;
    }
    size_t cnt = 0;
    for (int64_t i = start; step_ > 0 ? i < stop : i > stop; i += step_)
        cnt++;
    step(c, at, cnt);
    struct stj_val out = mklist(c, at, cnt);
    size_t k = 0;
    for (int64_t i = start; step_ > 0 ? i < stop : i > stop; i += step_)
        out.u.l->items[k++] = chars.u.l->items[i];
    if (obj.kind == STJ_LIST) return out;
    struct stj_buf b = {0};
    for (size_t i = 0; i < cnt; i++)
        bput(c, at, &b, out.u.l->items[i].u.s.p, out.u.l->items[i].u.s.n);
    return stj_str(b.p ? b.p : "", b.n);
}

static int str_method_id(const char *p, size_t n) {
    static const struct {
        const char *name;
        int id;
    } m[] = {{"upper", M_UPPER},           {"lower", M_LOWER},
             {"strip", M_STRIP},           {"lstrip", M_LSTRIP},
             {"rstrip", M_RSTRIP},         {"title", M_TITLE},
             {"capitalize", M_CAPITALIZE}, {"startswith", M_STARTSWITH},
             {"endswith", M_ENDSWITH},     {"split", M_SPLIT},
             {"replace", M_REPLACE},       {"find", M_FIND},
             {"count", M_COUNT},           {"join", M_JOIN}};
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
        if (strlen(m[i].name) == n && memcmp(m[i].name, p, n) == 0) return m[i].id;
    return 0;
}
static int dict_method_id(const char *p, size_t n) {
    static const struct {
        const char *name;
        int id;
    } m[] = {{"get", M_GET},
             {"items", M_ITEMS},
             {"keys", M_KEYS},
             {"values", M_VALUES},
             {"dictsort", M_DICTSORT}};
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
        if (strlen(m[i].name) == n && memcmp(m[i].name, p, n) == 0) return m[i].id;
    return 0;
}

/* obj.name / obj[key] */
static struct stj_val get_member(struct rctx *c, const struct stj_node *at, struct stj_val obj,
                                 struct stj_val prop) {
    if (obj.kind == STJ_DICT) {
        if (prop.kind != STJ_STR)
            rerr(c, at, ST_ERR_FORMAT, "cannot index a %s with a %s", kind_name(obj),
                 kind_name(prop));
        struct stj_val *v = stj_dict_get(obj.u.d, prop.u.s.p, prop.u.s.n);
        if (v) return *v;
        if (!obj.u.d->ns) {
            int id = dict_method_id(prop.u.s.p, prop.u.s.n);
            if (id) return mkfunc(c, at, F_METHOD, id, obj, NULL, NULL);
        }
        return stj_undef();
    }
    if (obj.kind == STJ_LIST || obj.kind == STJ_STR) {
        if (prop.kind == STJ_INT) {
            int64_t i = prop.u.i;
            if (obj.kind == STJ_LIST) {
                int64_t len = (int64_t)obj.u.l->n;
                if (i < 0) i += len;
                if (i < 0 || i >= len) return stj_undef();
                return obj.u.l->items[i];
            }
            /* strings index by code point */
            int64_t len = (int64_t)cp_count(obj.u.s.p, obj.u.s.n);
            if (i < 0) i += len;
            if (i < 0 || i >= len) return stj_undef();
            size_t off = 0, adv = 0;
            for (int64_t k = 0; k <= i; k++) {
                if (k) off += adv;
                stj_utf8_decode(obj.u.s.p, obj.u.s.n, off, &adv);
            }
            return stj_str(obj.u.s.p + off, adv);
        }
        if (prop.kind == STJ_STR) {
            if (prop.u.s.n == 6 && memcmp(prop.u.s.p, "length", 6) == 0)
                return stj_int(obj.kind == STJ_LIST ? (int64_t)obj.u.l->n
                                                    : (int64_t)cp_count(obj.u.s.p, obj.u.s.n));
            if (obj.kind == STJ_STR) {
                int id = str_method_id(prop.u.s.p, prop.u.s.n);
                if (id) return mkfunc(c, at, F_METHOD, id, obj, NULL, NULL);
            }
            return stj_undef();
        }
        rerr(c, at, ST_ERR_FORMAT, "cannot index a %s with a %s", kind_name(obj), kind_name(prop));
    }
    if (prop.kind != STJ_STR)
        rerr(c, at, ST_ERR_FORMAT, "cannot index a %s with a %s", kind_name(obj), kind_name(prop));
    return stj_undef();
}

static struct stj_val eval_member(struct rctx *c, const struct stj_node *n, struct scope *s) {
    struct stj_val obj = eval(c, n->a, s);
    struct stj_val prop;
    if (n->flag) {
        if (n->b->type == STJ_N_SLICE) return do_slice(c, n, obj, n->b, s);
        prop = eval(c, n->b, s);
    } else if (n->b->type == STJ_N_INT) {
        prop = stj_int(n->b->i);
    } else {
        prop = stj_str(n->b->s, n->b->sn);
    }
    return get_member(c, n, obj, prop);
}

static struct stj_val arith_int(struct rctx *c, const struct stj_node *at, int op, int64_t a,
                                int64_t b) {
    int64_t r;
    switch (op) {
    case STJ_OP_ADD:
        if (__builtin_add_overflow(a, b, &r)) return stj_float((double)a + (double)b);
        return stj_int(r);
    case STJ_OP_SUB:
        if (__builtin_sub_overflow(a, b, &r)) return stj_float((double)a - (double)b);
        return stj_int(r);
    case STJ_OP_MUL:
        if (__builtin_mul_overflow(a, b, &r)) return stj_float((double)a * (double)b);
        return stj_int(r);
    case STJ_OP_DIV:
        if (b == 0) rerr(c, at, ST_ERR_FORMAT, "division by zero");
        return stj_float((double)a / (double)b);
    case STJ_OP_FLOORDIV:
        if (b == 0) rerr(c, at, ST_ERR_FORMAT, "division by zero");
        if (b == -1 && a == INT64_MIN) return stj_float(-(double)a);
        r = a / b;
        if ((a % b != 0) && ((a < 0) != (b < 0))) r--;
        return stj_int(r);
    case STJ_OP_MOD:
        if (b == 0) rerr(c, at, ST_ERR_FORMAT, "modulo by zero");
        if (b == -1) return stj_int(0);
        return stj_int(a % b); /* JavaScript %: sign of the dividend */
    }
    return stj_undef();
}

static struct stj_val eval_binop(struct rctx *c, const struct stj_node *n, struct scope *s) {
    int op = n->op;
    struct stj_val l = eval(c, n->a, s);
    if (op == STJ_OP_AND) return truthy(l) ? eval(c, n->b, s) : l;
    if (op == STJ_OP_OR) return truthy(l) ? l : eval(c, n->b, s);
    struct stj_val r = eval(c, n->b, s);
    if (op == STJ_OP_EQ) return stj_bool(loose_eq(l, r));
    if (op == STJ_OP_NE) return stj_bool(!loose_eq(l, r));
    if (l.kind == STJ_UNDEF || r.kind == STJ_UNDEF) {
        if (r.kind == STJ_UNDEF && (op == STJ_OP_IN || op == STJ_OP_NOTIN))
            return stj_bool(op == STJ_OP_NOTIN);
        rerr(c, n, ST_ERR_FORMAT, "cannot apply an operator to an undefined value");
    }
    if (l.kind == STJ_NONE || r.kind == STJ_NONE)
        rerr(c, n, ST_ERR_FORMAT, "cannot apply an operator to none");
    if (op == STJ_OP_CONCAT) return concat(c, n, to_str(c, n, l), to_str(c, n, r));
    int ln = is_num(l) || l.kind == STJ_BOOL, rn = is_num(r) || r.kind == STJ_BOOL;
    if (op == STJ_OP_POW && ln && rn) {
        double a = num_of(l), b = num_of(r);
        if (a == 0 && b < 0) rerr(c, n, ST_ERR_FORMAT, "0 cannot be raised to a negative power");
        double res = pow(a, b);
        if (!isfinite(res)) rerr(c, n, ST_ERR_FORMAT, "exponentiation result is not finite");
        int isf = l.kind == STJ_FLOAT || r.kind == STJ_FLOAT || b < 0;
        if (!isf && fabs(res) < 9.2e18) {
            /* exact integer power */
            int64_t base = (int64_t)a, e = (int64_t)b, acc = 1;
            int ovf = 0;
            while (e-- > 0 && !ovf)
                ovf = __builtin_mul_overflow(acc, base, &acc);
            if (!ovf) return stj_int(acc);
        }
        return isf ? stj_float(res) : (fabs(res) < 9.2e18 ? stj_int((int64_t)res) : stj_float(res));
    }
    if (is_num(l) && is_num(r)) {
        if (l.kind == STJ_INT && r.kind == STJ_INT) {
            int64_t a = l.u.i, b = r.u.i;
            switch (op) {
            case STJ_OP_ADD:
            case STJ_OP_SUB:
            case STJ_OP_MUL:
            case STJ_OP_DIV:
            case STJ_OP_FLOORDIV:
            case STJ_OP_MOD: return arith_int(c, n, op, a, b);
            case STJ_OP_LT: return stj_bool(a < b);
            case STJ_OP_GT: return stj_bool(a > b);
            case STJ_OP_LE: return stj_bool(a <= b);
            case STJ_OP_GE: return stj_bool(a >= b);
            }
        } else {
            double a = num_of(l), b = num_of(r);
            switch (op) {
            case STJ_OP_ADD: return stj_float(a + b);
            case STJ_OP_SUB: return stj_float(a - b);
            case STJ_OP_MUL: return stj_float(a * b);
            case STJ_OP_DIV:
                if (b == 0) rerr(c, n, ST_ERR_FORMAT, "division by zero");
                return stj_float(a / b);
            case STJ_OP_FLOORDIV:
                if (b == 0) rerr(c, n, ST_ERR_FORMAT, "division by zero");
                return stj_float(floor(a / b));
            case STJ_OP_MOD:
                if (b == 0) rerr(c, n, ST_ERR_FORMAT, "modulo by zero");
                return stj_float(fmod(a, b));
            case STJ_OP_LT: return stj_bool(a < b);
            case STJ_OP_GT: return stj_bool(a > b);
            case STJ_OP_LE: return stj_bool(a <= b);
            case STJ_OP_GE: return stj_bool(a >= b);
            }
        }
    } else if (l.kind == STJ_LIST && r.kind == STJ_LIST) {
        if (op == STJ_OP_ADD) {
            size_t total = l.u.l->n + r.u.l->n;
            step(c, n, total);
            struct stj_val out = mklist(c, n, total);
            if (l.u.l->n) memcpy(out.u.l->items, l.u.l->items, l.u.l->n * sizeof(struct stj_val));
            if (r.u.l->n)
                memcpy(out.u.l->items + l.u.l->n, r.u.l->items, r.u.l->n * sizeof(struct stj_val));
            return out;
        }
    } else if (r.kind == STJ_LIST && (op == STJ_OP_IN || op == STJ_OP_NOTIN)) {
        int found = 0;
        step(c, n, r.u.l->n);
        for (size_t i = 0; i < r.u.l->n && !found; i++)
            found = strict_eq(r.u.l->items[i], l);
        return stj_bool(op == STJ_OP_IN ? found : !found);
    }
    if ((l.kind == STJ_STR || r.kind == STJ_STR) && op == STJ_OP_ADD &&
        !(l.kind == STJ_LIST && r.kind == STJ_LIST))
        return concat(c, n, to_str(c, n, l), to_str(c, n, r));
    if (l.kind == STJ_STR && r.kind == STJ_STR) {
        switch (op) {
        case STJ_OP_IN:
        case STJ_OP_NOTIN: {
            int found = mem_find(r.u.s.p, r.u.s.n, l.u.s.p, l.u.s.n) != NULL;
            return stj_bool(op == STJ_OP_IN ? found : !found);
        }
        case STJ_OP_LT: return stj_bool(bytes_cmp(l.u.s.p, l.u.s.n, r.u.s.p, r.u.s.n) < 0);
        case STJ_OP_GT: return stj_bool(bytes_cmp(l.u.s.p, l.u.s.n, r.u.s.p, r.u.s.n) > 0);
        case STJ_OP_LE: return stj_bool(bytes_cmp(l.u.s.p, l.u.s.n, r.u.s.p, r.u.s.n) <= 0);
        case STJ_OP_GE: return stj_bool(bytes_cmp(l.u.s.p, l.u.s.n, r.u.s.p, r.u.s.n) >= 0);
        }
    }
    if (l.kind == STJ_STR && r.kind == STJ_DICT && !r.u.d->ns &&
        (op == STJ_OP_IN || op == STJ_OP_NOTIN)) {
        int found = stj_dict_get(r.u.d, l.u.s.p, l.u.s.n) != NULL;
        return stj_bool(op == STJ_OP_IN ? found : !found);
    }
    static const char *const names[] = {"",   "or", "and", "==",     "!=", "<", ">",
                                        "<=", ">=", "in",  "not in", "+",  "-", "~",
                                        "*",  "/",  "//",  "%",      "**"};
    rerr(c, n, ST_ERR_FORMAT, "unsupported operator '%s' between %s and %s", names[op],
         kind_name(l), kind_name(r));
}

static struct stj_val eval_unary(struct rctx *c, const struct stj_node *n, struct scope *s) {
    struct stj_val v = eval(c, n->a, s);
    if (n->op == 'n') return stj_bool(!truthy(v));
    int neg = n->op == '-';
    if (v.kind == STJ_INT) {
        if (neg && v.u.i == INT64_MIN) return stj_float(-(double)v.u.i);
        return stj_int(neg ? -v.u.i : v.u.i);
    }
    if (v.kind == STJ_BOOL) return stj_int(neg ? -(int64_t)v.u.b : v.u.b);
    if (v.kind == STJ_FLOAT) return stj_float(neg ? -v.u.f : v.u.f);
    rerr(c, n, ST_ERR_FORMAT, "unary '%c' needs a number, got %s", n->op, kind_name(v));
}

static struct stj_val eval_call(struct rctx *c, const struct stj_node *n, struct scope *s) {
    struct args a;
    eval_args(c, n->list, n->n, s, &a);
    struct stj_val fn = eval(c, n->a, s);
    if (fn.kind != STJ_FUNC) {
        if (n->a->type == STJ_N_IDENT)
            rerr(c, n, ST_ERR_FORMAT, "'%.*s' is %s, not a function", (int)n->a->sn, n->a->s,
                 fn.kind == STJ_UNDEF ? "undefined" : kind_name(fn));
        if (n->a->type == STJ_N_MEMBER && !n->a->flag && n->a->b->type == STJ_N_IDENT)
            rerr(c, n, ST_ERR_FORMAT, "'%.*s' is not a method of this value", (int)n->a->b->sn,
                 n->a->b->s);
        rerr(c, n, ST_ERR_FORMAT, "cannot call a %s", kind_name(fn));
    }
    return call_value(c, n, fn, &a, s);
}

static struct stj_val eval_inner(struct rctx *c, const struct stj_node *n, struct scope *s) {
    step(c, n, 1);
    switch (n->type) {
    case STJ_N_STR: return stj_str(n->s, n->sn);
    case STJ_N_INT: return stj_int(n->i);
    case STJ_N_FLOAT: return stj_float(n->f);
    case STJ_N_IDENT: {
        struct stj_val *v = scope_find(s, n->s, n->sn);
        return v ? *v : stj_undef();
    }
    case STJ_N_LIST:
    case STJ_N_TUPLE: {
        struct stj_val l = mklist(c, n, n->n);
        for (size_t i = 0; i < n->n; i++)
            l.u.l->items[i] = eval(c, n->list[i], s);
        l.tuple = n->type == STJ_N_TUPLE;
        return l;
    }
    case STJ_N_DICT: {
        struct stj_val d = mkdict(c, n);
        for (size_t i = 0; i < n->n; i++) {
            struct stj_val k = eval(c, n->list[i], s);
            if (k.kind != STJ_STR)
                rerr(c, n->list[i], ST_ERR_FORMAT, "dict keys must be strings, got %s",
                     kind_name(k));
            dset(c, n, d.u.d, k.u.s.p, k.u.s.n, eval(c, n->list2[i], s));
        }
        return d;
    }
    case STJ_N_BINOP: return eval_binop(c, n, s);
    case STJ_N_UNARY: return eval_unary(c, n, s);
    case STJ_N_FILTER: return apply_filter(c, n, eval(c, n->a, s), s);
    case STJ_N_TEST: {
        struct stj_val x = eval(c, n->a, s);
        struct args a;
        eval_args(c, n->list, n->n, s, &a);
        int r = run_test(c, n, n->s, n->sn, x, &a, s);
        return stj_bool(n->flag ? !r : r);
    }
    case STJ_N_SELECT: return truthy(eval(c, n->b, s)) ? eval(c, n->a, s) : stj_undef();
    case STJ_N_TERNARY: return truthy(eval(c, n->a, s)) ? eval(c, n->b, s) : eval(c, n->c, s);
    case STJ_N_CALL: return eval_call(c, n, s);
    case STJ_N_MEMBER: return eval_member(c, n, s);
    default: rerr(c, n, ST_ERR_FORMAT, "this construct is not an expression here");
    }
}

static void enter_rec(struct rctx *c, const struct stj_node *n) {
    if (++c->rdepth > MAX_RECURSION)
        rerr(c, n, ST_ERR_NOMEM, "template evaluation nested deeper than %d levels", MAX_RECURSION);
}

static struct stj_val eval(struct rctx *c, const struct stj_node *n, struct scope *s) {
    enter_rec(c, n);
    struct stj_val v = eval_inner(c, n, s);
    c->rdepth--;
    return v;
}

/* ---- tests ---- */
static int run_test(struct rctx *c, const struct stj_node *at, const char *name, size_t nlen,
                    struct stj_val x, const struct args *a, struct scope *s) {
    (void)s;
#define IS(lit) (nlen == sizeof(lit) - 1 && memcmp(name, lit, nlen) == 0)
    struct stj_val arg = a && a->n ? a->pos[0] : stj_undef();
    if (IS("defined")) return x.kind != STJ_UNDEF;
    if (IS("undefined")) return x.kind == STJ_UNDEF;
    if (IS("none")) return x.kind == STJ_NONE;
    if (IS("boolean")) return x.kind == STJ_BOOL;
    if (IS("true")) return x.kind == STJ_BOOL && x.u.b;
    if (IS("false")) return x.kind == STJ_BOOL && !x.u.b;
    if (IS("string")) return x.kind == STJ_STR;
    if (IS("number")) return is_num(x);
    if (IS("integer")) return x.kind == STJ_INT;
    if (IS("float")) return x.kind == STJ_FLOAT;
    if (IS("mapping")) return x.kind == STJ_DICT && !x.u.d->ns;
    if (IS("iterable")) return x.kind == STJ_LIST || x.kind == STJ_STR;
    if (IS("sequence"))
        return x.kind == STJ_LIST || x.kind == STJ_STR || (x.kind == STJ_DICT && !x.u.d->ns);
    if (IS("callable")) return x.kind == STJ_FUNC;
    if (IS("odd") || IS("even")) {
        if (x.kind != STJ_INT)
            rerr(c, at, ST_ERR_FORMAT, "'%.*s' test needs an integer, got %s", (int)nlen, name,
                 kind_name(x));
        return IS("odd") ? (x.u.i % 2 != 0) : (x.u.i % 2 == 0);
    }
    if (IS("divisibleby")) {
        if (x.kind != STJ_INT || arg.kind != STJ_INT)
            rerr(c, at, ST_ERR_FORMAT, "'divisibleby' needs integers");
        if (arg.u.i == 0) rerr(c, at, ST_ERR_FORMAT, "'divisibleby' by zero");
        return arg.u.i == -1 ? 1 : x.u.i % arg.u.i == 0;
    }
    if (IS("lower") || IS("upper")) {
        if (x.kind != STJ_STR) return 0;
        struct stj_val m = str_map_case(c, at, x, IS("upper"));
        return m.u.s.n == x.u.s.n && memcmp(m.u.s.p, x.u.s.p, x.u.s.n) == 0;
    }
    if (IS("equalto") || IS("eq") || IS("sameas")) return strict_eq(x, arg);
    if (IS("ne")) return !strict_eq(x, arg);
    if (IS("gt") || IS("greaterthan") || IS("ge") || IS("lt") || IS("lessthan") || IS("le")) {
        int cmp;
        if (is_num(x) && is_num(arg))
            cmp = num_of(x) < num_of(arg) ? -1 : num_of(x) > num_of(arg);
        else if (x.kind == STJ_STR && arg.kind == STJ_STR)
            cmp = bytes_cmp(x.u.s.p, x.u.s.n, arg.u.s.p, arg.u.s.n);
        else
            rerr(c, at, ST_ERR_FORMAT, "cannot compare %s with %s", kind_name(x), kind_name(arg));
        if (IS("gt") || IS("greaterthan")) return cmp > 0;
        if (IS("ge")) return cmp >= 0;
        if (IS("lt") || IS("lessthan")) return cmp < 0;
        return cmp <= 0;
    }
    if (IS("in")) {
        if (arg.kind == STJ_LIST) {
            for (size_t i = 0; i < arg.u.l->n; i++)
                if (strict_eq(arg.u.l->items[i], x)) return 1;
            return 0;
        }
        if (arg.kind == STJ_STR && x.kind == STJ_STR)
            return mem_find(arg.u.s.p, arg.u.s.n, x.u.s.p, x.u.s.n) != NULL;
        if (arg.kind == STJ_DICT && x.kind == STJ_STR)
            return stj_dict_get(arg.u.d, x.u.s.p, x.u.s.n) != NULL;
        rerr(c, at, ST_ERR_FORMAT, "'in' test: cannot look for a %s in a %s", kind_name(x),
             kind_name(arg));
    }
    if (IS("escaped")) return 0;
#undef IS
    rerr(c, at, ST_ERR_FORMAT, "unknown test '%.*s'", (int)nlen, name);
}

/* ---- sorting (stable merge sort; the comparator may longjmp, which is fine: arena memory) ---- */
struct sort_ctx {
    struct rctx *c;
    const struct stj_node *at;
    int reverse, case_sensitive, by_value;
    const char *attr; /* dotted path or NULL */
    size_t attr_n;
};

static struct stj_val attr_path(struct stj_val item, const char *path, size_t n) {
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && path[j] != '.')
            j++;
        if (item.kind == STJ_DICT) {
            struct stj_val *v = stj_dict_get(item.u.d, path + i, j - i);
            if (!v) return stj_undef();
            item = *v;
        } else if (item.kind == STJ_LIST) {
            int64_t idx = 0;
            if (j == i) return stj_undef();
            for (size_t k = i; k < j; k++) {
                if (path[k] < '0' || path[k] > '9' || idx > 100000000) return stj_undef();
                idx = idx * 10 + (path[k] - '0');
            }
            if (idx >= (int64_t)item.u.l->n) return stj_undef();
            item = item.u.l->items[idx];
        } else {
            return stj_undef();
        }
        i = j + 1;
    }
    return item;
}

static int sort_cmp(struct sort_ctx *sc, struct stj_val x, struct stj_val y) {
    if (sc->attr) {
        x = attr_path(x, sc->attr, sc->attr_n);
        y = attr_path(y, sc->attr, sc->attr_n);
    } else if (sc->by_value >= 0) {
        x = x.u.l->items[sc->by_value];
        y = y.u.l->items[sc->by_value];
    }
    int r = compare_vals(sc->c, sc->at, x, y, sc->case_sensitive);
    return sc->reverse ? -r : r;
}

static void merge_sort(struct sort_ctx *sc, struct stj_val *v, struct stj_val *tmp, size_t n) {
    if (n < 2) return;
    size_t h = n / 2;
    merge_sort(sc, v, tmp, h);
    merge_sort(sc, v + h, tmp, n - h);
    step(sc->c, sc->at, n);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n)
        tmp[k++] = sort_cmp(sc, v[j], v[i]) < 0 ? v[j++] : v[i++];
    while (i < h)
        tmp[k++] = v[i++];
    while (j < n)
        tmp[k++] = v[j++];
    memcpy(v, tmp, n * sizeof *v);
}

static struct stj_val sorted_copy(struct rctx *c, const struct stj_node *at, struct stj_val l,
                                  struct sort_ctx *sc) {
    struct stj_val out = mklist(c, at, l.u.l->n);
    if (l.u.l->n) memcpy(out.u.l->items, l.u.l->items, l.u.l->n * sizeof(struct stj_val));
    struct stj_val *tmp = l.u.l->n ? ralloc(c, at, l.u.l->n * sizeof *tmp) : NULL;
    merge_sort(sc, out.u.l->items, tmp, l.u.l->n);
    return out;
}

static struct stj_val dict_items(struct rctx *c, const struct stj_node *at, struct stj_dict *d) {
    struct stj_val out = mklist(c, at, d->n);
    for (size_t i = 0; i < d->n; i++) {
        struct stj_val pair = mklist(c, at, 2);
        pair.u.l->items[0] = stj_str(d->e[i].k, d->e[i].kn);
        pair.u.l->items[1] = d->e[i].v;
        out.u.l->items[i] = pair;
    }
    return out;
}

static struct stj_val dictsort(struct rctx *c, const struct stj_node *at, struct stj_dict *d,
                               const struct args *a) {
    struct sort_ctx sc = {c, at, 0, 0, 0, NULL, 0};
    sc.case_sensitive = arg_bool(c, at, a, 0, "case_sensitive", 0);
    struct stj_val *by = arg_at(a, 1, "by");
    if (by && by->kind != STJ_UNDEF) {
        if (by->kind != STJ_STR) rerr(c, at, ST_ERR_FORMAT, "dictsort: 'by' must be a string");
        if (by->u.s.n == 5 && memcmp(by->u.s.p, "value", 5) == 0)
            sc.by_value = 1;
        else if (!(by->u.s.n == 3 && memcmp(by->u.s.p, "key", 3) == 0))
            rerr(c, at, ST_ERR_FORMAT, "dictsort: 'by' must be 'key' or 'value'");
    }
    sc.reverse = arg_bool(c, at, a, 2, "reverse", 0);
    return sorted_copy(c, at, dict_items(c, at, d), &sc);
}

/* ---- builtin functions and methods ---- */
static struct stj_val str_split(struct rctx *c, const struct stj_node *at, struct stj_val self,
                                const struct args *a) {
    struct stj_val *sep = arg_at(a, 0, "sep");
    struct stj_val *mx = arg_at(a, 1, "maxsplit");
    int64_t maxsplit = -1;
    if (mx && mx->kind != STJ_UNDEF) {
        if (mx->kind != STJ_INT) rerr(c, at, ST_ERR_FORMAT, "split: maxsplit must be an integer");
        maxsplit = mx->u.i;
    }
    struct stj_val parts[64];
    size_t np = 0, cap = 64;
    struct stj_val *pv = parts;
    const char *p = self.u.s.p;
    size_t n = self.u.s.n;
#define PUSH(v_)                                                                                   \
    do {                                                                                           \
        if (np == cap) {                                                                           \
            struct stj_val *nv_ = ralloc(c, at, cap * 2 * sizeof *nv_);                            \
            memcpy(nv_, pv, np * sizeof *nv_);                                                     \
            pv = nv_;                                                                              \
            cap *= 2;                                                                              \
        }                                                                                          \
        pv[np++] = (v_);                                                                           \
    } while (0)
    if (!sep || sep->kind == STJ_UNDEF || sep->kind == STJ_NONE) {
        size_t i = 0, adv;
        for (;;) {
            while (i < n && stj_is_js_space(stj_utf8_decode(p, n, i, &adv)))
                i += adv;
            if (i >= n) break;
            if (maxsplit >= 0 && (int64_t)np >= maxsplit) {
                PUSH(stj_str(p + i, n - i));
                break;
            }
            size_t st = i;
            while (i < n && !stj_is_js_space(stj_utf8_decode(p, n, i, &adv)))
                i += adv;
            PUSH(stj_str(p + st, i - st));
        }
    } else {
        if (sep->kind != STJ_STR) rerr(c, at, ST_ERR_FORMAT, "split: separator must be a string");
        if (sep->u.s.n == 0) rerr(c, at, ST_ERR_FORMAT, "split: empty separator");
        size_t i = 0;
        for (;;) {
            const char *f = (maxsplit < 0 || (int64_t)np < maxsplit)
                                ? mem_find(p + i, n - i, sep->u.s.p, sep->u.s.n)
                                : NULL;
            if (!f) {
                PUSH(stj_str(p + i, n - i));
                break;
            }
            size_t k = (size_t)(f - p);
            PUSH(stj_str(p + i, k - i));
            i = k + sep->u.s.n;
        }
    }
#undef PUSH
    step(c, at, np);
    struct stj_val out = mklist(c, at, np);
    memcpy(out.u.l->items, pv, np * sizeof *pv);
    return out;
}

static struct stj_val call_method(struct rctx *c, const struct stj_node *at, struct stj_func *f,
                                  const struct args *a) {
    struct stj_val self = f->self;
    struct stj_val *a0 = a->n > 0 ? &a->pos[0] : NULL;
    switch (f->id) {
    case M_UPPER: return str_map_case(c, at, self, 1);
    case M_LOWER: return str_map_case(c, at, self, 0);
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP: {
        int which = f->id == M_STRIP ? 3 : f->id == M_LSTRIP ? 1 : 2;
        if (a0 && a0->kind == STJ_STR) return str_strip(self, which, a0);
        if (a0 && a0->kind != STJ_NONE && a0->kind != STJ_UNDEF)
            rerr(c, at, ST_ERR_FORMAT, "strip: argument must be a string or none");
        return str_strip(self, which, NULL);
    }
    case M_TITLE: return str_title(c, at, self);
    case M_CAPITALIZE: return str_capitalize(c, at, self);
    case M_STARTSWITH:
    case M_ENDSWITH: {
        if (!a0) rerr(c, at, ST_ERR_FORMAT, "startswith/endswith need an argument");
        int (*fn)(struct stj_val, struct stj_val) = f->id == M_STARTSWITH ? starts_with : ends_with;
        if (a0->kind == STJ_STR) return stj_bool(fn(self, *a0));
        if (a0->kind == STJ_LIST) {
            for (size_t i = 0; i < a0->u.l->n; i++) {
                if (a0->u.l->items[i].kind != STJ_STR)
                    rerr(c, at, ST_ERR_FORMAT, "startswith/endswith: tuple items must be strings");
                if (fn(self, a0->u.l->items[i])) return stj_bool(1);
            }
            return stj_bool(0);
        }
        rerr(c, at, ST_ERR_FORMAT, "startswith/endswith: argument must be a string or tuple");
    }
    case M_SPLIT: return str_split(c, at, self, a);
    case M_REPLACE: {
        struct stj_val *old = arg_at(a, 0, NULL), *rep = arg_at(a, 1, NULL);
        struct stj_val *cnt = arg_at(a, 2, "count");
        if (!old || !rep || old->kind != STJ_STR || rep->kind != STJ_STR)
            rerr(c, at, ST_ERR_FORMAT, "replace: needs two string arguments");
        int64_t count = -1;
        if (cnt && cnt->kind == STJ_INT)
            count = cnt->u.i;
        else if (cnt && cnt->kind != STJ_NONE && cnt->kind != STJ_UNDEF)
            rerr(c, at, ST_ERR_FORMAT, "replace: count must be an integer");
        return str_replace(c, at, self, *old, *rep, count);
    }
    case M_FIND:
    case M_COUNT: {
        if (!a0 || a0->kind != STJ_STR) rerr(c, at, ST_ERR_FORMAT, "find/count need a string");
        if (f->id == M_FIND) {
            const char *x = mem_find(self.u.s.p, self.u.s.n, a0->u.s.p, a0->u.s.n);
            return stj_int(x ? (int64_t)cp_count(self.u.s.p, (size_t)(x - self.u.s.p)) : -1);
        }
        if (a0->u.s.n == 0) return stj_int((int64_t)cp_count(self.u.s.p, self.u.s.n) + 1);
        int64_t k = 0;
        size_t i = 0;
        const char *x;
        while ((x = mem_find(self.u.s.p + i, self.u.s.n - i, a0->u.s.p, a0->u.s.n))) {
            k++;
            i = (size_t)(x - self.u.s.p) + a0->u.s.n;
        }
        return stj_int(k);
    }
    case M_JOIN: {
        if (!a0 || a0->kind != STJ_LIST) rerr(c, at, ST_ERR_FORMAT, "join: needs a list");
        struct stj_buf b = {0};
        for (size_t i = 0; i < a0->u.l->n; i++) {
            if (i) bput(c, at, &b, self.u.s.p, self.u.s.n);
            if (a0->u.l->items[i].kind != STJ_STR)
                rerr(c, at, ST_ERR_FORMAT, "join: list items must be strings");
            bput(c, at, &b, a0->u.l->items[i].u.s.p, a0->u.l->items[i].u.s.n);
        }
        return stj_str(b.p ? b.p : "", b.n);
    }
    case M_GET: {
        if (!a0 || a0->kind != STJ_STR) rerr(c, at, ST_ERR_FORMAT, "get: key must be a string");
        struct stj_val *v = stj_dict_get(self.u.d, a0->u.s.p, a0->u.s.n);
        if (v) return *v;
        return a->n > 1 ? a->pos[1] : stj_none();
    }
    case M_ITEMS: return dict_items(c, at, self.u.d);
    case M_KEYS:
    case M_VALUES: {
        struct stj_val out = mklist(c, at, self.u.d->n);
        for (size_t i = 0; i < self.u.d->n; i++)
            out.u.l->items[i] =
                f->id == M_KEYS ? stj_str(self.u.d->e[i].k, self.u.d->e[i].kn) : self.u.d->e[i].v;
        return out;
    }
    case M_DICTSORT: return dictsort(c, at, self.u.d, a);
    }
    rerr(c, at, ST_ERR_FORMAT, "unknown method");
}

static struct stj_val call_builtin(struct rctx *c, const struct stj_node *at, int id,
                                   const struct args *a) {
    switch (id) {
    case B_RAISE: {
        struct stj_val m = a->n ? a->pos[0] : stj_undef();
        struct stj_val ms = m.kind == STJ_STR ? m : to_str(c, at, m);
        rerr(c, at, ST_ERR_FORMAT, "raise_exception: %.*s", (int)(ms.u.s.n > 300 ? 300 : ms.u.s.n),
             ms.u.s.p);
    }
    case B_RANGE: {
        int64_t v[3] = {0, 0, 1};
        if (a->n < 1 || a->n > 3) rerr(c, at, ST_ERR_FORMAT, "range takes 1 to 3 integers");
        for (size_t i = 0; i < a->n; i++)
            v[i] = to_index(c, at, a->pos[i], "range argument");
        int64_t start = a->n == 1 ? 0 : v[0], stop = a->n == 1 ? v[0] : v[1];
        int64_t st = a->n == 3 ? v[2] : 1;
        if (st == 0) rerr(c, at, ST_ERR_FORMAT, "range() step must not be zero");
        double cnt_d = st > 0 ? ceil(((double)stop - (double)start) / (double)st)
                              : ceil(((double)start - (double)stop) / (double)-st);
        if (cnt_d < 0) cnt_d = 0;
        if (cnt_d > MAX_RANGE)
            rerr(c, at, ST_ERR_NOMEM, "range of %.0f items exceeds the cap of %d", cnt_d,
                 MAX_RANGE);
        size_t cnt = (size_t)cnt_d;
        step(c, at, cnt);
        struct stj_val out = mklist(c, at, cnt);
        for (size_t i = 0; i < cnt; i++)
            out.u.l->items[i] = stj_int(start + (int64_t)i * st);
        return out;
    }
    case B_STRFTIME: {
        if (a->n < 1 || a->pos[0].kind != STJ_STR)
            rerr(c, at, ST_ERR_FORMAT, "strftime_now needs a format string");
        struct stj_val f = a->pos[0];
        if (f.u.s.n > 256) rerr(c, at, ST_ERR_FORMAT, "strftime_now: format too long");
        char fmt[260], out[1024];
        memcpy(fmt, f.u.s.p, f.u.s.n);
        fmt[f.u.s.n] = 0;
        struct tm tm;
        time_t now = c->has_now ? (time_t)c->now : time(NULL);
        if (c->has_now)
            gmtime_r(&now, &tm);
        else
            localtime_r(&now, &tm);
        size_t k = strftime(out, sizeof out, fmt, &tm);
        char *o = ralloc(c, at, k + 1);
        memcpy(o, out, k);
        return stj_str(o, k);
    }
    case B_NAMESPACE: {
        struct stj_val ns = mkdict(c, at);
        ns.u.d->ns = 1;
        if (a->n > 1) rerr(c, at, ST_ERR_FORMAT, "namespace takes at most 1 positional argument");
        if (a->n == 1) {
            struct stj_val src = a->pos[0];
            if (src.kind == STJ_DICT) {
                for (size_t i = 0; i < src.u.d->n; i++)
                    dset(c, at, ns.u.d, src.u.d->e[i].k, src.u.d->e[i].kn, src.u.d->e[i].v);
            } else if (src.kind == STJ_LIST) {
                for (size_t i = 0; i < src.u.l->n; i++) {
                    struct stj_val p = src.u.l->items[i];
                    if (p.kind != STJ_LIST || p.u.l->n != 2 || p.u.l->items[0].kind != STJ_STR)
                        rerr(c, at, ST_ERR_FORMAT, "namespace expects [key, value] pairs");
                    dset(c, at, ns.u.d, p.u.l->items[0].u.s.p, p.u.l->items[0].u.s.n,
                         p.u.l->items[1]);
                }
            } else {
                rerr(c, at, ST_ERR_FORMAT, "namespace: a %s is not iterable", kind_name(src));
            }
        }
        if (a->kw)
            for (size_t i = 0; i < a->kw->n; i++)
                dset(c, at, ns.u.d, a->kw->e[i].k, a->kw->e[i].kn, a->kw->e[i].v);
        return ns;
    }
    }
    rerr(c, at, ST_ERR_FORMAT, "unknown builtin");
}

/* bind macro (or caller) parameters into scope ms */
static void bind_params(struct rctx *c, const struct stj_node *at, struct stj_node *const *params,
                        size_t np, const struct args *a, struct scope *ms) {
    struct stj_dict *kw = mkdict(c, at).u.d;
    if (a->kw)
        for (size_t i = 0; i < a->kw->n; i++)
            dset(c, at, kw, a->kw->e[i].k, a->kw->e[i].kn, a->kw->e[i].v);
    const struct stj_node *pending[64];
    size_t npend = 0;
    for (size_t i = 0; i < np; i++) {
        const struct stj_node *p = params[i];
        struct stj_val v = stj_undef();
        int have = 0;
        if (i < a->n) {
            v = a->pos[i];
            have = 1;
        } else {
            for (size_t k = 0; k < kw->n; k++) {
                if (kw->e[k].kn == p->sn && memcmp(kw->e[k].k, p->s, p->sn) == 0) {
                    v = kw->e[k].v;
                    have = 1;
                    /* remove it from the leftover kwargs */
                    memmove(&kw->e[k], &kw->e[k + 1], (kw->n - k - 1) * sizeof *kw->e);
                    kw->n--;
                    break;
                }
            }
        }
        if (!have && p->type == STJ_N_KWARG) {
            if (npend < 64) pending[npend++] = p;
        }
        scope_set(c, at, ms, p->s, p->sn, v);
    }
    size_t nextra = a->n > np ? a->n - np : 0;
    struct stj_val varargs = mklist(c, at, nextra);
    for (size_t i = 0; i < nextra; i++)
        varargs.u.l->items[i] = a->pos[np + i];
    scope_set(c, at, ms, "varargs", 7, varargs);
    struct stj_val kwv = {0};
    kwv.kind = STJ_DICT;
    kwv.u.d = kw;
    scope_set(c, at, ms, "kwargs", 6, kwv);
    for (size_t i = 0; i < npend; i++)
        scope_set(c, at, ms, pending[i]->s, pending[i]->sn, eval(c, pending[i]->a, ms));
}

static struct stj_val run_body(struct rctx *c, const struct stj_node *at,
                               struct stj_node *const *body, size_t n, struct scope *s) {
    struct stj_buf b = {0};
    int rc = exec_block(c, body, n, s, &b);
    if (rc) rerr(c, at, ST_ERR_FORMAT, "'break' or 'continue' outside a loop");
    return stj_str(b.p ? b.p : "", b.n);
}

static struct stj_val call_value(struct rctx *c, const struct stj_node *at, struct stj_val fn,
                                 struct args *a, struct scope *s) {
    struct stj_func *f = fn.u.fn;
    switch (f->kind) {
    case F_BUILTIN: return call_builtin(c, at, f->id, a);
    case F_METHOD: return call_method(c, at, f, a);
    case F_MACRO:
    case F_CALLER: {
        if (++c->depth > c->max_depth)
            rerr(c, at, ST_ERR_NOMEM, "macro calls nested deeper than %d", c->max_depth);
        const struct stj_node *m = f->node;
        struct scope *ms;
        struct stj_val out;
        if (f->kind == F_MACRO) {
            ms = scope_new(c, at, s); /* the oracle's macros see the caller's scope */
            bind_params(c, at, m->list, m->n, a, ms);
            out = run_body(c, at, m->list2, m->n2, ms);
        } else {
            ms = scope_new(c, at, f->scope);
            bind_params(c, at, m->list, m->n, a, ms);
            out = run_body(c, at, m->list2, m->n2, ms);
        }
        c->depth--;
        return out;
    }
    }
    rerr(c, at, ST_ERR_FORMAT, "cannot call this value");
}

/* ---- filters ---- */
static int64_t js_parse_int(struct stj_val s, int *ok) {
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, i = 0, adv;
    while (i < n && stj_is_js_space(stj_utf8_decode(p, n, i, &adv)))
        i += adv;
    int neg = 0;
    if (i < n && (p[i] == '+' || p[i] == '-')) neg = p[i++] == '-';
    size_t st = i;
    int64_t v = 0;
    while (i < n && p[i] >= '0' && p[i] <= '9') {
        if (v < INT64_MAX / 10) v = v * 10 + (p[i] - '0');
        i++;
    }
    *ok = i > st;
    return neg ? -v : v;
}

static double js_parse_float(struct stj_val s, int *ok) {
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, i = 0, adv;
    while (i < n && stj_is_js_space(stj_utf8_decode(p, n, i, &adv)))
        i += adv;
    char tmp[64];
    size_t k = 0;
    if (i < n && (p[i] == '+' || p[i] == '-')) tmp[k++] = p[i++];
    size_t digits = 0;
    while (i < n && p[i] >= '0' && p[i] <= '9' && k < 40) {
        tmp[k++] = p[i++];
        digits++;
    }
    if (i < n && p[i] == '.' && k < 40) {
        tmp[k++] = p[i++];
        while (i < n && p[i] >= '0' && p[i] <= '9' && k < 40) {
            tmp[k++] = p[i++];
            digits++;
        }
    }
    if (digits && i < n && (p[i] == 'e' || p[i] == 'E')) {
        size_t save = k, si = i;
        tmp[k++] = p[i++];
        if (i < n && (p[i] == '+' || p[i] == '-')) tmp[k++] = p[i++];
        size_t ed = 0;
        while (i < n && p[i] >= '0' && p[i] <= '9' && k < 60) {
            tmp[k++] = p[i++];
            ed++;
        }
        if (!ed) {
            k = save;
            i = si;
        }
    }
    tmp[k] = 0;
    *ok = digits > 0;
    return digits ? strtod(tmp, NULL) : 0;
}

static struct stj_val html_escape(struct rctx *c, const struct stj_node *at, struct stj_val s) {
    struct stj_buf b = {0};
    size_t run = 0;
    for (size_t i = 0; i < s.u.s.n; i++) {
        const char *r = NULL;
        switch (s.u.s.p[i]) {
        case '&': r = "&amp;"; break;
        case '<': r = "&lt;"; break;
        case '>': r = "&gt;"; break;
        case '"': r = "&#34;"; break;
        case '\'': r = "&#39;"; break;
        }
        if (r) {
            bput(c, at, &b, s.u.s.p + run, i - run);
            bputs(c, at, &b, r);
            run = i + 1;
        }
    }
    bput(c, at, &b, s.u.s.p + run, s.u.s.n - run);
    return stj_str(b.p ? b.p : "", b.n);
}

static double py_round(double x, int64_t prec, const char *method) {
    double m = pow(10.0, (double)prec);
    if (strcmp(method, "ceil") == 0) return ceil(x * m) / m;
    if (strcmp(method, "floor") == 0) return floor(x * m) / m;
    /* Python's round(): the decimal nearest the double's exact value, ties to even (glibc's
     * printf rounds that way: 2.675 is 2.67499999... and gives 2.67, where x * 100 rounds up) */
    if (prec >= 0) {
        char b[720];
        snprintf(b, sizeof b, "%.*f", (int)prec, x);
        return strtod(b, NULL);
    }
    double y = x * m;
    double r = nearbyint(y);
    if (fabs(y - trunc(y)) != 0.5) r = round(y);
    return r / m;
}

static struct stj_val apply_named_filter(struct rctx *c, const struct stj_node *at,
                                         const char *name, size_t nlen, struct stj_val x,
                                         const struct args *a, struct scope *s);

static struct stj_val apply_filter(struct rctx *c, const struct stj_node *f, struct stj_val x,
                                   struct scope *s) {
    struct args a;
    eval_args(c, f->list, f->n, s, &a);
    return apply_named_filter(c, f, f->s, f->sn, x, &a, s);
}

static struct stj_val apply_named_filter(struct rctx *c, const struct stj_node *at,
                                         const char *name, size_t nlen, struct stj_val x,
                                         const struct args *a, struct scope *s) {
#define IS(lit) (nlen == sizeof(lit) - 1 && memcmp(name, lit, nlen) == 0)
#define NEED(cond, what)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            rerr(c, at, ST_ERR_FORMAT, "filter '%.*s' cannot be applied to %s (needs %s)",         \
                 (int)nlen, name, kind_name(x), what);                                             \
    } while (0)
    if (IS("safe")) return x;
    if (IS("tojson")) {
        struct stj_json_opts o = {-1, 0, 0, NULL, NULL, "null"};
        struct stj_val *ind = kwarg(a, "indent");
        if (ind && ind->kind == STJ_INT)
            o.indent = ind->u.i > 256 ? 256 : (int)ind->u.i;
        else if (ind && ind->kind != STJ_NONE)
            rerr(c, at, ST_ERR_FORMAT, "tojson: indent must be an integer");
        o.ensure_ascii = arg_bool(c, at, &(struct args){NULL, 0, a->kw}, 0, "ensure_ascii", 0);
        o.sort_keys = arg_bool(c, at, &(struct args){NULL, 0, a->kw}, 0, "sort_keys", 0);
        struct stj_val *sep = kwarg(a, "separators");
        char *seps[2] = {NULL, NULL};
        if (sep && sep->kind == STJ_LIST) {
            if (sep->u.l->n != 2 || sep->u.l->items[0].kind != STJ_STR ||
                sep->u.l->items[1].kind != STJ_STR)
                rerr(c, at, ST_ERR_FORMAT, "tojson: separators must be two strings");
            for (int k = 0; k < 2; k++) {
                struct stj_val e = sep->u.l->items[k];
                seps[k] = ralloc(c, at, e.u.s.n + 1);
                memcpy(seps[k], e.u.s.p, e.u.s.n);
                seps[k][e.u.s.n] = 0;
            }
            o.item_sep = seps[0];
            o.key_sep = seps[1];
        }
        struct stj_buf b = {0};
        int rc = stj_to_json(&c->a, &b, c->max_out, x, &o, 0);
        if (rc == -2) rerr(c, at, ST_ERR_FORMAT, "tojson: cannot serialise a function");
        if (rc == -3) rerr(c, at, ST_ERR_FORMAT, "tojson: value nested too deeply");
        if (rc) rerr(c, at, ST_ERR_NOMEM, "tojson output exceeds the cap of %zu bytes", c->max_out);
        return stj_str(b.p ? b.p : "", b.n);
    }
    if (IS("default") || IS("d")) {
        struct stj_val def = a->n > 0 ? a->pos[0] : cstr("");
        int boolean = arg_bool(c, at, a, 1, "boolean", 0);
        if (x.kind == STJ_UNDEF || (boolean && !truthy(x))) return def;
        return x;
    }
    if (IS("length") || IS("count")) {
        if (x.kind == STJ_STR) return stj_int((int64_t)cp_count(x.u.s.p, x.u.s.n));
        if (x.kind == STJ_LIST) return stj_int((int64_t)x.u.l->n);
        NEED(x.kind == STJ_DICT && !x.u.d->ns, "a string, list or dict");
        return stj_int((int64_t)x.u.d->n);
    }
    if (IS("list")) {
        if (x.kind == STJ_LIST) return x;
        if (x.kind == STJ_STR) return str_chars(c, at, x);
        NEED(x.kind == STJ_DICT && !x.u.d->ns, "a list, string or dict");
        struct stj_val out = mklist(c, at, x.u.d->n);
        for (size_t i = 0; i < x.u.d->n; i++)
            out.u.l->items[i] = stj_str(x.u.d->e[i].k, x.u.d->e[i].kn);
        return out;
    }
    if (IS("first") || IS("last")) {
        struct stj_val l = x.kind == STJ_STR ? str_chars(c, at, x) : x;
        NEED(l.kind == STJ_LIST, "a list or string");
        if (!l.u.l->n) return stj_undef();
        return IS("first") ? l.u.l->items[0] : l.u.l->items[l.u.l->n - 1];
    }
    if (IS("reverse")) {
        struct stj_val l = x.kind == STJ_STR ? str_chars(c, at, x) : x;
        NEED(l.kind == STJ_LIST, "a list or string");
        struct stj_val out = mklist(c, at, l.u.l->n);
        for (size_t i = 0; i < l.u.l->n; i++)
            out.u.l->items[i] = l.u.l->items[l.u.l->n - 1 - i];
        if (x.kind == STJ_LIST) return out;
        struct stj_buf b = {0};
        for (size_t i = 0; i < out.u.l->n; i++)
            bput(c, at, &b, out.u.l->items[i].u.s.p, out.u.l->items[i].u.s.n);
        return stj_str(b.p ? b.p : "", b.n);
    }
    if (IS("sort")) {
        NEED(x.kind == STJ_LIST, "a list");
        struct sort_ctx sc = {c, at, 0, 0, -1, NULL, 0};
        sc.reverse = arg_bool(c, at, a, 0, "reverse", 0);
        sc.case_sensitive = arg_bool(c, at, a, 1, "case_sensitive", 0);
        struct stj_val *attr = arg_at(a, 2, "attribute");
        char num[32];
        if (attr && attr->kind == STJ_STR) {
            sc.attr = attr->u.s.p;
            sc.attr_n = attr->u.s.n;
        } else if (attr && attr->kind == STJ_INT) {
            int k = snprintf(num, sizeof num, "%lld", (long long)attr->u.i);
            sc.attr = num;
            sc.attr_n = (size_t)k;
        } else if (attr && attr->kind != STJ_NONE && attr->kind != STJ_UNDEF) {
            rerr(c, at, ST_ERR_FORMAT, "sort: attribute must be a string or integer");
        }
        return sorted_copy(c, at, x, &sc);
    }
    if (IS("dictsort")) {
        NEED(x.kind == STJ_DICT && !x.u.d->ns, "a dict");
        return dictsort(c, at, x.u.d, a);
    }
    if (IS("items")) {
        NEED(x.kind == STJ_DICT && !x.u.d->ns, "a dict");
        return dict_items(c, at, x.u.d);
    }
    if (IS("join")) {
        struct stj_val *sep = arg_at(a, 0, "d");
        if (!sep) sep = kwarg(a, "separator");
        struct stj_val *attr = kwarg(a, "attribute");
        if (sep && sep->kind != STJ_STR && sep->kind != STJ_UNDEF)
            rerr(c, at, ST_ERR_FORMAT, "join: separator must be a string");
        struct stj_val l = x.kind == STJ_STR ? str_chars(c, at, x) : x;
        NEED(l.kind == STJ_LIST, "a list or string");
        struct stj_buf b = {0};
        for (size_t i = 0; i < l.u.l->n; i++) {
            if (i && sep && sep->kind == STJ_STR) bput(c, at, &b, sep->u.s.p, sep->u.s.n);
            struct stj_val it = l.u.l->items[i];
            if (attr && attr->kind == STJ_STR) it = attr_path(it, attr->u.s.p, attr->u.s.n);
            if (it.kind != STJ_NONE && it.kind != STJ_UNDEF) put_text(c, at, &b, it);
        }
        return stj_str(b.p ? b.p : "", b.n);
    }
    if (IS("string")) {
        if (x.kind == STJ_STR) return x;
        if (x.kind == STJ_UNDEF) return cstr("");
        return to_str(c, at, x);
    }
    if (IS("unique")) {
        NEED(x.kind == STJ_LIST, "a list");
        struct stj_val out = mklist(c, at, x.u.l->n);
        size_t k = 0;
        for (size_t i = 0; i < x.u.l->n; i++) {
            int seen = 0;
            step(c, at, k);
            for (size_t j = 0; j < k && !seen; j++)
                seen = strict_eq(out.u.l->items[j], x.u.l->items[i]);
            if (!seen) out.u.l->items[k++] = x.u.l->items[i];
        }
        out.u.l->n = k;
        return out;
    }
    if (IS("upper") || IS("lower")) {
        NEED(x.kind == STJ_STR, "a string");
        return str_map_case(c, at, x, IS("upper"));
    }
    if (IS("title")) {
        NEED(x.kind == STJ_STR, "a string");
        return str_title(c, at, x);
    }
    if (IS("capitalize")) {
        NEED(x.kind == STJ_STR, "a string");
        return str_capitalize(c, at, x);
    }
    if (IS("trim")) {
        NEED(x.kind == STJ_STR, "a string");
        struct stj_val *chars = arg_at(a, 0, "chars");
        if (chars && chars->kind == STJ_STR) return str_strip(x, 3, chars);
        return str_strip(x, 3, NULL);
    }
    if (IS("indent")) {
        NEED(x.kind == STJ_STR, "a string");
        struct stj_val *w = arg_at(a, 0, "width");
        struct stj_val ind;
        if (!w || w->kind == STJ_UNDEF) {
            ind = cstr("    ");
        } else if (w->kind == STJ_INT) {
            int64_t k = w->u.i < 0 ? 0 : w->u.i > 1024 ? 1024 : w->u.i;
            char *sp = ralloc(c, at, (size_t)k + 1);
            memset(sp, ' ', (size_t)k);
            ind = stj_str(sp, (size_t)k);
        } else if (w->kind == STJ_STR) {
            ind = *w;
        } else {
            rerr(c, at, ST_ERR_FORMAT, "indent: width must be an integer or string");
        }
        int first = arg_bool(c, at, a, 1, "first", 0), blank = arg_bool(c, at, a, 2, "blank", 0);
        struct stj_buf b = {0};
        size_t i = 0, line = 0;
        for (;;) {
            const char *nl = memchr(x.u.s.p + i, '\n', x.u.s.n - i);
            size_t e = nl ? (size_t)(nl - x.u.s.p) : x.u.s.n;
            if (!((!first && line == 0) || (!blank && e == i)))
                bput(c, at, &b, ind.u.s.p, ind.u.s.n);
            bput(c, at, &b, x.u.s.p + i, e - i);
            if (!nl) break;
            bput(c, at, &b, "\n", 1);
            i = e + 1;
            line++;
        }
        return stj_str(b.p ? b.p : "", b.n);
    }
    if (IS("replace")) {
        NEED(x.kind == STJ_STR, "a string");
        struct stj_func fm = {F_METHOD, M_REPLACE, x, NULL, NULL};
        return call_method(c, at, &fm, a);
    }
    if (IS("int")) {
        struct stj_val def = a->n > 0              ? a->pos[0]
                             : kwarg(a, "default") ? *kwarg(a, "default")
                                                   : stj_int(0);
        if (x.kind == STJ_STR) {
            int ok;
            int64_t v = js_parse_int(x, &ok);
            return ok ? stj_int(v) : def;
        }
        if (x.kind == STJ_INT) return x;
        if (x.kind == STJ_FLOAT)
            return isfinite(x.u.f) && fabs(x.u.f) < 9.2e18 ? stj_int((int64_t)floor(x.u.f)) : def;
        if (x.kind == STJ_BOOL) return stj_int(x.u.b);
        NEED(0, "a string, number or boolean");
    }
    if (IS("float")) {
        struct stj_val def = a->n > 0              ? a->pos[0]
                             : kwarg(a, "default") ? *kwarg(a, "default")
                                                   : stj_float(0);
        if (x.kind == STJ_STR) {
            int ok;
            double v = js_parse_float(x, &ok);
            return ok ? stj_float(v) : def;
        }
        if (is_num(x)) return stj_float(num_of(x));
        if (x.kind == STJ_BOOL) return stj_float(x.u.b);
        NEED(0, "a string, number or boolean");
    }
    if (IS("abs")) {
        NEED(is_num(x), "a number");
        if (x.kind == STJ_INT)
            return x.u.i == INT64_MIN ? stj_float(-(double)x.u.i)
                                      : stj_int(x.u.i < 0 ? -x.u.i : x.u.i);
        return stj_float(fabs(x.u.f));
    }
    if (IS("round")) {
        NEED(is_num(x), "a number");
        struct stj_val *p = arg_at(a, 0, "precision");
        struct stj_val *m = arg_at(a, 1, "method");
        int64_t prec = p && p->kind == STJ_INT ? p->u.i : 0;
        if (prec > 300) prec = 300;
        if (prec < -300) prec = -300;
        const char *method = "common";
        if (m && m->kind == STJ_STR) {
            if (m->u.s.n == 4 && memcmp(m->u.s.p, "ceil", 4) == 0)
                method = "ceil";
            else if (m->u.s.n == 5 && memcmp(m->u.s.p, "floor", 5) == 0)
                method = "floor";
            else if (!(m->u.s.n == 6 && memcmp(m->u.s.p, "common", 6) == 0))
                rerr(c, at, ST_ERR_FORMAT, "round: method must be common, ceil or floor");
        }
        if (x.kind == STJ_INT && strcmp(method, "common") == 0 && prec >= 0) return x;
        return stj_float(py_round(num_of(x), prec, method));
    }
    if (IS("bool")) return stj_bool(truthy(x));
    if (IS("e") || IS("escape")) {
        struct stj_val sv = x.kind == STJ_STR ? x : to_str(c, at, x);
        return html_escape(c, at, sv);
    }
    if (IS("selectattr") || IS("rejectattr")) {
        int sel = IS("selectattr");
        NEED(x.kind == STJ_LIST, "a list");
        if (a->n < 1 || a->pos[0].kind != STJ_STR)
            rerr(c, at, ST_ERR_FORMAT, "%s needs an attribute name",
                 sel ? "selectattr" : "rejectattr");
        struct stj_val attr = a->pos[0];
        struct stj_val out = mklist(c, at, x.u.l->n);
        size_t k = 0;
        struct args ta = {a->n > 2 ? &a->pos[2] : NULL, a->n > 2 ? a->n - 2 : 0, NULL};
        for (size_t i = 0; i < x.u.l->n; i++) {
            struct stj_val it = x.u.l->items[i];
            if (it.kind != STJ_DICT)
                rerr(c, at, ST_ERR_FORMAT, "%s can only be applied to a list of objects",
                     sel ? "selectattr" : "rejectattr");
            step(c, at, 1);
            struct stj_val *v = stj_dict_get(it.u.d, attr.u.s.p, attr.u.s.n);
            int r = 0;
            if (v) {
                if (a->n > 1) {
                    if (a->pos[1].kind != STJ_STR)
                        rerr(c, at, ST_ERR_FORMAT, "test name must be a string");
                    r = run_test(c, at, a->pos[1].u.s.p, a->pos[1].u.s.n, *v, &ta, s);
                } else {
                    r = truthy(*v);
                }
            }
            if (sel ? r : !r) out.u.l->items[k++] = it;
        }
        out.u.l->n = k;
        return out;
    }
    if (IS("select") || IS("reject")) {
        int sel = IS("select");
        NEED(x.kind == STJ_LIST, "a list");
        struct stj_val out = mklist(c, at, x.u.l->n);
        size_t k = 0;
        struct args ta = {a->n > 1 ? &a->pos[1] : NULL, a->n > 1 ? a->n - 1 : 0, NULL};
        for (size_t i = 0; i < x.u.l->n; i++) {
            step(c, at, 1);
            int r;
            if (a->n > 0) {
                if (a->pos[0].kind != STJ_STR)
                    rerr(c, at, ST_ERR_FORMAT, "test name must be a string");
                r = run_test(c, at, a->pos[0].u.s.p, a->pos[0].u.s.n, x.u.l->items[i], &ta, s);
            } else {
                r = truthy(x.u.l->items[i]);
            }
            if (sel ? r : !r) out.u.l->items[k++] = x.u.l->items[i];
        }
        out.u.l->n = k;
        return out;
    }
    if (IS("map")) {
        NEED(x.kind == STJ_LIST, "a list");
        struct stj_val *attr = kwarg(a, "attribute");
        struct stj_val out = mklist(c, at, x.u.l->n);
        if (attr) {
            if (attr->kind != STJ_STR)
                rerr(c, at, ST_ERR_FORMAT, "map: attribute must be a string");
            struct stj_val *def = kwarg(a, "default");
            for (size_t i = 0; i < x.u.l->n; i++) {
                struct stj_val it = x.u.l->items[i];
                if (it.kind != STJ_DICT) rerr(c, at, ST_ERR_FORMAT, "map: items must be objects");
                struct stj_val v = attr_path(it, attr->u.s.p, attr->u.s.n);
                out.u.l->items[i] = v.kind == STJ_UNDEF && def ? *def : v;
            }
            return out;
        }
        if (a->n < 1 || a->pos[0].kind != STJ_STR)
            rerr(c, at, ST_ERR_FORMAT, "map needs attribute= or a filter name");
        struct args fa = {a->n > 1 ? &a->pos[1] : NULL, a->n > 1 ? a->n - 1 : 0, a->kw};
        for (size_t i = 0; i < x.u.l->n; i++) {
            step(c, at, 1);
            out.u.l->items[i] = apply_named_filter(c, at, a->pos[0].u.s.p, a->pos[0].u.s.n,
                                                   x.u.l->items[i], &fa, s);
        }
        return out;
    }
    if (IS("sum")) {
        NEED(x.kind == STJ_LIST, "a list");
        struct stj_val *attr = kwarg(a, "attribute");
        struct stj_val *start = arg_at(a, 1, "start");
        struct stj_val acc = start ? *start : stj_int(0);
        for (size_t i = 0; i < x.u.l->n; i++) {
            struct stj_val it = x.u.l->items[i];
            if (attr && attr->kind == STJ_STR) it = attr_path(it, attr->u.s.p, attr->u.s.n);
            if (!is_num(it) || !is_num(acc))
                rerr(c, at, ST_ERR_FORMAT, "sum: items must be numbers");
            if (acc.kind == STJ_INT && it.kind == STJ_INT)
                acc = arith_int(c, at, STJ_OP_ADD, acc.u.i, it.u.i);
            else
                acc = stj_float(num_of(acc) + num_of(it));
        }
        return acc;
    }
    if (IS("min") || IS("max")) {
        NEED(x.kind == STJ_LIST, "a list");
        if (!x.u.l->n) return stj_undef();
        int cs = arg_bool(c, at, a, 0, "case_sensitive", 0);
        struct stj_val best = x.u.l->items[0];
        for (size_t i = 1; i < x.u.l->n; i++) {
            int r = compare_vals(c, at, x.u.l->items[i], best, cs);
            if (IS("min") ? r < 0 : r > 0) best = x.u.l->items[i];
        }
        return best;
    }
#undef NEED
#undef IS
    rerr(c, at, ST_ERR_FORMAT, "unknown filter '%.*s'", (int)nlen, name);
}

/* ---- statements ---- */
enum { FLOW_NONE = 0, FLOW_BREAK, FLOW_CONTINUE };

static void assign(struct rctx *c, const struct stj_node *at, const struct stj_node *target,
                   struct stj_val v, struct scope *s) {
    if (target->type == STJ_N_IDENT) {
        scope_set(c, at, s, target->s, target->sn, v);
    } else if (target->type == STJ_N_TUPLE) {
        if (v.kind != STJ_LIST) rerr(c, at, ST_ERR_FORMAT, "cannot unpack a %s", kind_name(v));
        if (v.u.l->n != target->n)
            rerr(c, at, ST_ERR_FORMAT, "too %s values to unpack (expected %zu, got %zu)",
                 v.u.l->n < target->n ? "few" : "many", target->n, v.u.l->n);
        for (size_t i = 0; i < target->n; i++) {
            if (target->list[i]->type != STJ_N_IDENT)
                rerr(c, at, ST_ERR_FORMAT, "can only unpack into names");
            scope_set(c, at, s, target->list[i]->s, target->list[i]->sn, v.u.l->items[i]);
        }
    } else if (target->type == STJ_N_MEMBER) {
        struct stj_val obj = eval(c, target->a, s);
        if (obj.kind != STJ_DICT || !obj.u.d->ns)
            rerr(c, at, ST_ERR_FORMAT, "cannot set an attribute on a %s (only on namespace())",
                 kind_name(obj));
        const struct stj_node *p = target->b;
        if (!target->flag && p->type == STJ_N_IDENT) {
            dset(c, at, obj.u.d, p->s, p->sn, v);
        } else {
            struct stj_val k = target->flag ? eval(c, p, s) : stj_undef();
            if (k.kind != STJ_STR) rerr(c, at, ST_ERR_FORMAT, "namespace attribute must be a name");
            dset(c, at, obj.u.d, k.u.s.p, k.u.s.n, v);
        }
    } else {
        rerr(c, at, ST_ERR_FORMAT, "invalid assignment target");
    }
}

static int exec_for(struct rctx *c, const struct stj_node *n, struct scope *outer,
                    struct stj_buf *out) {
    struct scope *s = scope_new(c, n, outer);
    struct stj_val it = eval(c, n->b, s);
    if (it.kind == STJ_DICT && !it.u.d->ns) {
        struct stj_val keys = mklist(c, n, it.u.d->n);
        for (size_t i = 0; i < it.u.d->n; i++)
            keys.u.l->items[i] = stj_str(it.u.d->e[i].k, it.u.d->e[i].kn);
        it = keys;
    } else if (it.kind == STJ_STR) {
        it = str_chars(c, n, it);
    } else if (it.kind != STJ_LIST) {
        rerr(c, n, ST_ERR_FORMAT, "cannot loop over a %s", kind_name(it));
    }
    struct stj_list *items = it.u.l;
    if (n->c) {
        /* loop filter: `for x in xs if cond` */
        struct stj_val kept = mklist(c, n, items->n);
        size_t k = 0;
        for (size_t i = 0; i < items->n; i++) {
            struct scope *ls = scope_new(c, n, s);
            assign(c, n, n->a, items->items[i], ls);
            if (truthy(eval(c, n->c, ls))) kept.u.l->items[k++] = items->items[i];
        }
        kept.u.l->n = k;
        items = kept.u.l;
    }
    size_t len = items->n;
    if (len == 0) {
        if (exec_block(c, n->list2, n->n2, s, out))
            rerr(c, n, ST_ERR_FORMAT, "'break' or 'continue' outside a loop");
        return FLOW_NONE;
    }
    /* one loop object, updated in place each iteration */
    struct stj_val loop = mkdict(c, n);
    static const char *const keys[] = {"index", "index0", "revindex", "revindex0", "first",
                                       "last",  "length", "previtem", "nextitem"};
    for (int k = 0; k < 9; k++)
        dset(c, n, loop.u.d, keys[k], strlen(keys[k]), stj_undef());
    struct stj_kv *e = loop.u.d->e;
    for (size_t i = 0; i < len; i++) {
        step(c, n, 1);
        e[0].v = stj_int((int64_t)i + 1);
        e[1].v = stj_int((int64_t)i);
        e[2].v = stj_int((int64_t)(len - i));
        e[3].v = stj_int((int64_t)(len - i - 1));
        e[4].v = stj_bool(i == 0);
        e[5].v = stj_bool(i == len - 1);
        e[6].v = stj_int((int64_t)len);
        e[7].v = i > 0 ? items->items[i - 1] : stj_undef();
        e[8].v = i + 1 < len ? items->items[i + 1] : stj_undef();
        scope_set(c, n, s, "loop", 4, loop);
        assign(c, n, n->a, items->items[i], s);
        int fl = exec_block(c, n->list, n->n, s, out);
        if (fl == FLOW_BREAK) break;
    }
    return FLOW_NONE;
}

static int exec_stmt_inner(struct rctx *c, const struct stj_node *n, struct scope *s,
                           struct stj_buf *out) {
    switch (n->type) {
    case STJ_N_STR: bput(c, n, out, n->s, n->sn); return FLOW_NONE;
    case STJ_N_IF:
        step(c, n, 1);
        if (truthy(eval(c, n->a, s))) return exec_block(c, n->list, n->n, s, out);
        return exec_block(c, n->list2, n->n2, s, out);
    case STJ_N_FOR: return exec_for(c, n, s, out);
    case STJ_N_SET:
        step(c, n, 1);
        if (n->b)
            assign(c, n, n->a, eval(c, n->b, s), s);
        else
            assign(c, n, n->a, run_body(c, n, n->list, n->n, s), s);
        return FLOW_NONE;
    case STJ_N_MACRO:
        scope_set(c, n, s, n->s, n->sn, mkfunc(c, n, F_MACRO, 0, stj_undef(), n, NULL));
        return FLOW_NONE;
    case STJ_N_CALLBLOCK: {
        step(c, n, 1);
        const struct stj_node *call = n->a;
        struct args a;
        eval_args(c, call->list, call->n, s, &a);
        struct stj_val fn = eval(c, call->a, s);
        if (fn.kind != STJ_FUNC)
            rerr(c, n, ST_ERR_FORMAT, "'%.*s' is not a macro", (int)call->a->sn, call->a->s);
        struct scope *cs = scope_new(c, n, s);
        scope_set(c, n, cs, "caller", 6, mkfunc(c, n, F_CALLER, 0, stj_undef(), n, s));
        put_text(c, n, out, call_value(c, n, fn, &a, cs));
        return FLOW_NONE;
    }
    case STJ_N_FILTERBLOCK: {
        struct stj_val body = run_body(c, n, n->list, n->n, s);
        put_text(c, n, out, apply_filter(c, n->a, body, s));
        return FLOW_NONE;
    }
    case STJ_N_BREAK: return FLOW_BREAK;
    case STJ_N_CONTINUE: return FLOW_CONTINUE;
    default: put_text(c, n, out, eval(c, n, s)); return FLOW_NONE;
    }
}

static int exec_stmt(struct rctx *c, const struct stj_node *n, struct scope *s,
                     struct stj_buf *out) {
    enter_rec(c, n);
    int fl = exec_stmt_inner(c, n, s, out);
    c->rdepth--;
    return fl;
}

static int exec_block(struct rctx *c, struct stj_node *const *list, size_t n, struct scope *s,
                      struct stj_buf *out) {
    for (size_t i = 0; i < n; i++) {
        int fl = exec_stmt(c, list[i], s, out);
        if (fl) return fl;
    }
    return FLOW_NONE;
}

enum st_status stj_render(const struct stj_template *t, const struct stj_var *vars, size_t nvars,
                          const struct stj_limits *lim, char **out, size_t *len,
                          struct st_error *err) {
    *out = NULL;
    if (len) *len = 0;
    struct rctx *c = st_calloc(1, sizeof *c);
    if (!c) return st_errorf(err, ST_ERR_NOMEM, "%s: out of memory", t->what);
    c->t = t;
    c->err = err;
    c->max_out = lim && lim->max_output ? lim->max_output : DEF_MAX_OUTPUT;
    c->a.cap = lim && lim->max_memory ? lim->max_memory : DEF_MAX_MEMORY;
    c->max_steps = lim && lim->max_steps ? lim->max_steps : DEF_MAX_STEPS;
    c->max_depth = lim && lim->max_depth > 0 ? lim->max_depth : DEF_MAX_DEPTH;
    c->has_now = lim ? lim->has_now : 0;
    c->now = lim ? lim->now : 0;
    enum st_status rc = ST_OK;
    if (setjmp(c->jb) == 0) {
        struct scope *g = scope_new(c, NULL, NULL);
        scope_set(c, NULL, g, "true", 4, stj_bool(1));
        scope_set(c, NULL, g, "false", 5, stj_bool(0));
        scope_set(c, NULL, g, "none", 4, stj_none());
        scope_set(c, NULL, g, "True", 4, stj_bool(1));
        scope_set(c, NULL, g, "False", 5, stj_bool(0));
        scope_set(c, NULL, g, "None", 4, stj_none());
        scope_set(c, NULL, g, "range", 5,
                  mkfunc(c, NULL, F_BUILTIN, B_RANGE, stj_undef(), NULL, NULL));
        scope_set(c, NULL, g, "raise_exception", 15,
                  mkfunc(c, NULL, F_BUILTIN, B_RAISE, stj_undef(), NULL, NULL));
        scope_set(c, NULL, g, "strftime_now", 12,
                  mkfunc(c, NULL, F_BUILTIN, B_STRFTIME, stj_undef(), NULL, NULL));
        scope_set(c, NULL, g, "namespace", 9,
                  mkfunc(c, NULL, F_BUILTIN, B_NAMESPACE, stj_undef(), NULL, NULL));
        for (size_t i = 0; i < nvars; i++)
            scope_set(c, NULL, g, vars[i].name, strlen(vars[i].name), vars[i].value);
        struct scope *top = scope_new(c, NULL, g);
        struct stj_buf b = {0};
        if (exec_block(c, t->body, t->n, top, &b))
            rerr(c, NULL, ST_ERR_FORMAT, "'break' or 'continue' outside a loop");
        char *res = st_malloc(b.n + 1);
        if (!res) rerr(c, NULL, ST_ERR_NOMEM, "out of memory (%zu bytes of output)", b.n);
        if (b.n) memcpy(res, b.p, b.n);
        res[b.n] = 0;
        *out = res;
        if (len) *len = b.n;
    } else {
        rc = c->code ? c->code : ST_ERR_FORMAT;
    }
    stj_arena_free(&c->a);
    st_free(c);
    return rc;
}
