/* jinja.c: chat-template preprocessing, lexer and parser (Jinja2 subset -> AST).
 *
 * DESIGN: the grammar, operator precedence and whitespace handling are @huggingface/jinja's
 * (lexer.ts / parser.ts), which is what transformers.js and the Hub render with and matches
 * Python Jinja2 on the templates models ship:
 *   1. preprocess: drop one trailing newline; lstrip_blocks (spaces/tabs before {% / {# at the
 *      start of a line); trim_blocks (the newline after %} / #}); remove {% generation %} tags.
 *      Every output byte keeps the offset of the source byte it came from, so errors name the
 *      line and column of the original template.
 *   2. lex into tokens ({%- / -%} / {{- / -}} / {#- / -#} trim the neighbouring text).
 *   3. recursive descent into struct stj_node trees, with a nesting cap (no stack overflow on
 *      hostile input) and errors that say what was expected, where.
 * Unclosed blocks, unknown tags and malformed expressions are errors at parse time; the
 * interpreter (jinja_eval.c) never sees a malformed tree.
 */
#include "tokenizer/jinja.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STJ_MAX_TEMPLATE (4u << 20) /* bytes of template source */
#define STJ_MAX_NEST 200            /* nesting of blocks + parenthesised expressions */

enum tok_type {
    T_TEXT = 1,
    T_NUM,
    T_STR,
    T_IDENT,
    T_EQUALS,
    T_LPAREN,
    T_RPAREN,
    T_OPEN_STMT,
    T_CLOSE_STMT,
    T_OPEN_EXPR,
    T_CLOSE_EXPR,
    T_LBRACKET,
    T_RBRACKET,
    T_LBRACE,
    T_RBRACE,
    T_COMMA,
    T_DOT,
    T_COLON,
    T_PIPE,
    T_ADD,
    T_MUL,
    T_POW,
    T_CMP,
    T_UNARY,
    T_COMMENT
};

static const char *tok_name(int t) {
    switch (t) {
    case T_TEXT: return "text";
    case T_NUM: return "number";
    case T_STR: return "string";
    case T_IDENT: return "identifier";
    case T_EQUALS: return "'='";
    case T_LPAREN: return "'('";
    case T_RPAREN: return "')'";
    case T_OPEN_STMT: return "'{%'";
    case T_CLOSE_STMT: return "'%}'";
    case T_OPEN_EXPR: return "'{{'";
    case T_CLOSE_EXPR: return "'}}'";
    case T_LBRACKET: return "'['";
    case T_RBRACKET: return "']'";
    case T_LBRACE: return "'{'";
    case T_RBRACE: return "'}'";
    case T_COMMA: return "','";
    case T_DOT: return "'.'";
    case T_COLON: return "':'";
    case T_PIPE: return "'|'";
    case T_ADD: return "operator";
    case T_MUL: return "operator";
    case T_POW: return "'**'";
    case T_CMP: return "comparison";
    case T_UNARY: return "unary operator";
    case T_COMMENT: return "comment";
    default: return "end of template";
    }
}

struct tok {
    uint8_t type;
    const char *p;
    size_t n;
    uint32_t pos;
};

struct pctx {
    struct stj_template *t;
    const char *s; /* preprocessed text */
    const uint32_t *pos;
    size_t n;
    struct tok *toks;
    size_t nt, cap;
    size_t cur;
    int depth;
    jmp_buf jb;
    struct st_error *err;
    enum st_status code;
};

void stj_template_where(const struct stj_template *t, uint32_t pos, char *buf, size_t cap) {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < pos && i < t->src_len; i++) {
        if (t->src[i] == '\n') {
            line++;
            col = 1;
        } else if (((unsigned char)t->src[i] & 0xC0) != 0x80) {
            col++;
        }
    }
    snprintf(buf, cap, "%s:%zu:%zu", t->what, line, col);
}

static _Noreturn void perr(struct pctx *c, uint32_t pos, enum st_status code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static _Noreturn void perr(struct pctx *c, uint32_t pos, enum st_status code, const char *fmt,
                           ...) {
    char where[256], msg[384];
    stj_template_where(c->t, pos, where, sizeof where);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    st_errorf(c->err, code, "%s: %s", where, msg);
    c->code = code;
    longjmp(c->jb, 1);
}

static void *palloc(struct pctx *c, size_t n) {
    void *p = stj_alloc(&c->t->arena, n);
    if (!p) perr(c, 0, ST_ERR_NOMEM, "out of memory parsing the template");
    return p;
}

/* ---- preprocessing ---- */
struct ppbuf {
    char *s;
    uint32_t *pos;
    size_t n;
};

static int is_line_start(const char *s, size_t i) {
    if (i == 0) return 1;
    unsigned char p = (unsigned char)s[i - 1];
    if (p == '\n' || p == '\r') return 1;
    /* U+2028 / U+2029 (JavaScript line terminators for the m flag) */
    if (i >= 3 && (unsigned char)s[i - 3] == 0xE2 && (unsigned char)s[i - 2] == 0x80 &&
        (p == 0xA8 || p == 0xA9))
        return 1;
    return 0;
}

/* JavaScript \s at s[i]: length of the whitespace character, 0 if none. */
static size_t js_space_at(const char *s, size_t n, size_t i) {
    size_t adv;
    uint32_t cp = stj_utf8_decode(s, n, i, &adv);
    return stj_is_js_space(cp) && !(cp == 0xFFFD && adv == 1) ? adv : 0;
}

static int ident_at(const char *s, size_t n, size_t i, const char *w) {
    size_t k = strlen(w);
    return i + k <= n && memcmp(s + i, w, k) == 0;
}

/* If s[i..] is a {% generation %} / {% endgeneration %} tag (with optional '-' marks), return
 * its length and set the strip flags. */
static size_t generation_tag(const char *s, size_t n, size_t i, int *lstrip, int *rstrip) {
    if (!(i + 1 < n && s[i] == '{' && s[i + 1] == '%')) return 0;
    size_t j = i + 2;
    *lstrip = *rstrip = 0;
    if (j < n && s[j] == '-') {
        *lstrip = 1;
        j++;
    }
    size_t w;
    while (j < n && (w = js_space_at(s, n, j)))
        j += w;
    if (ident_at(s, n, j, "end")) j += 3;
    if (!ident_at(s, n, j, "generation")) return 0;
    j += 10;
    while (j < n && (w = js_space_at(s, n, j)))
        j += w;
    if (j < n && s[j] == '-') {
        *rstrip = 1;
        j++;
    }
    if (!(j + 1 < n && s[j] == '%' && s[j + 1] == '}')) return 0;
    return j + 2 - i;
}

static void preprocess(struct pctx *c, const char *src, size_t len, struct ppbuf *out,
                       uint32_t *posa, uint32_t *posb, char *sa, char *sb) {
    /* pass 0: copy, dropping one trailing newline */
    size_t n = len;
    if (n && src[n - 1] == '\n') n--;
    for (size_t i = 0; i < n; i++) {
        sa[i] = src[i];
        posa[i] = (uint32_t)i;
    }
    /* pass 1: lstrip_blocks: /^[ \t]*({[#%-])/gm -> "$1" */
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        if (is_line_start(sa, i)) {
            size_t j = i;
            while (j < n && (sa[j] == ' ' || sa[j] == '\t'))
                j++;
            if (j > i && j + 1 < n && sa[j] == '{' &&
                (sa[j + 1] == '#' || sa[j + 1] == '%' || sa[j + 1] == '-'))
                i = j;
        }
        sb[m] = sa[i];
        posb[m] = posa[i];
        m++;
        i++;
    }
    n = m;
    /* pass 2: trim_blocks: /([#%-]})\n/g -> "$1" */
    m = 0;
    for (size_t i = 0; i < n;) {
        if (i + 2 < n && (sb[i] == '#' || sb[i] == '%' || sb[i] == '-') && sb[i + 1] == '}' &&
            sb[i + 2] == '\n') {
            sa[m] = sb[i];
            posa[m++] = posb[i];
            sa[m] = sb[i + 1];
            posa[m++] = posb[i + 1];
            i += 3;
            continue;
        }
        sa[m] = sb[i];
        posa[m++] = posb[i];
        i++;
    }
    n = m;
    /* pass 3: /(\s*){%(-?)\s*(?:end)?generation\s*(-?)%}(\s*)/g -> lstrip/rstrip aware removal */
    m = 0;
    size_t cur = 0;
    for (size_t i = 0; i < n;) {
        int ls, rs;
        size_t tl = sa[i] == '{' ? generation_tag(sa, n, i, &ls, &rs) : 0;
        if (!tl) {
            i++;
            continue;
        }
        /* the whitespace run before the tag, not reaching back past the previous match */
        size_t ws = i;
        for (;;) {
            size_t k = ws, found = 0;
            /* step back one UTF-8 character */
            while (k > cur) {
                k--;
                if (((unsigned char)sa[k] & 0xC0) != 0x80) break;
            }
            if (k < ws && k >= cur) {
                size_t w = js_space_at(sa, n, k);
                if (w && k + w == ws) found = 1;
            }
            if (!found) break;
            ws = k;
        }
        size_t after = i + tl, ae = after, w;
        while (ae < n && (w = js_space_at(sa, n, ae)))
            ae += w;
        size_t keep_to = ls ? ws : i;
        for (size_t k = cur; k < keep_to; k++) {
            sb[m] = sa[k];
            posb[m++] = posa[k];
        }
        if (!rs)
            for (size_t k = after; k < ae; k++) {
                sb[m] = sa[k];
                posb[m++] = posa[k];
            }
        cur = ae;
        i = ae;
    }
    for (size_t k = cur; k < n; k++) {
        sb[m] = sa[k];
        posb[m++] = posa[k];
    }
    out->s = sb;
    out->pos = posb;
    out->n = m;
    (void)c;
}

/* ---- lexer ---- */
static void push_tok(struct pctx *c, int type, const char *p, size_t n, uint32_t pos) {
    if (c->nt == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 256;
        struct tok *nt = st_realloc(c->toks, nc * sizeof *nt);
        if (!nt) perr(c, pos, ST_ERR_NOMEM, "out of memory lexing the template");
        c->toks = nt;
        c->cap = nc;
    }
    c->toks[c->nt].type = (uint8_t)type;
    c->toks[c->nt].p = p;
    c->toks[c->nt].n = n;
    c->toks[c->nt].pos = pos;
    c->nt++;
}

static int last_type(struct pctx *c) {
    return c->nt ? c->toks[c->nt - 1].type : 0;
}

static void strip_trailing_ws(struct pctx *c) {
    if (!c->nt || c->toks[c->nt - 1].type != T_TEXT) return;
    struct tok *t = &c->toks[c->nt - 1];
    /* trimEnd: drop trailing JavaScript whitespace characters */
    for (;;) {
        size_t k = t->n;
        if (!k) break;
        size_t st = k - 1;
        while (st > 0 && ((unsigned char)t->p[st] & 0xC0) == 0x80)
            st--;
        size_t w = js_space_at(t->p, t->n, st);
        if (w && st + w == k)
            t->n = st;
        else
            break;
    }
    if (t->n == 0) c->nt--;
}

static size_t skip_ws(const char *s, size_t n, size_t i) {
    size_t w;
    while (i < n && (w = js_space_at(s, n, i)))
        i += w;
    return i;
}

static int is_digit(char ch) {
    return ch >= '0' && ch <= '9';
}
static int is_word(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || is_digit(ch) || ch == '_';
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* A quoted string literal starting at s[i] (the quote). Returns the index after the closing
 * quote; the unescaped bytes go to *out (arena). */
static size_t lex_string(struct pctx *c, size_t i, const char **out, size_t *outn) {
    const char *s = c->s;
    size_t n = c->n;
    char q = s[i];
    uint32_t start_pos = c->pos[i];
    size_t j = i + 1, esc = 0;
    while (j < n && s[j] != q) {
        if (s[j] == '\\') {
            esc = 1;
            j++;
        }
        j++;
    }
    if (j >= n) perr(c, start_pos, ST_ERR_FORMAT, "unterminated string literal");
    if (!esc) {
        *out = s + i + 1;
        *outn = j - i - 1;
        return j + 1;
    }
    char *o = palloc(c, j - i + 4);
    size_t k = 0;
    uint32_t pending_hi = 0;
    for (size_t x = i + 1; x < j; x++) {
        if (s[x] != '\\') {
            o[k++] = s[x];
            continue;
        }
        char e = s[++x];
        switch (e) {
        case 'n': o[k++] = '\n'; break;
        case 't': o[k++] = '\t'; break;
        case 'r': o[k++] = '\r'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'v': o[k++] = '\v'; break;
        case '\'': o[k++] = '\''; break;
        case '"': o[k++] = '"'; break;
        case '\\': o[k++] = '\\'; break;
        case 'x':
        case 'u': {
            int len = e == 'x' ? 2 : 4;
            uint32_t v = 0;
            for (int d = 0; d < len; d++) {
                int h = x + 1 + (size_t)d < j ? hexval(s[x + 1 + (size_t)d]) : -1;
                if (h < 0)
                    perr(c, c->pos[x], ST_ERR_FORMAT, "invalid \\%c escape in string literal", e);
                v = v * 16 + (uint32_t)h;
            }
            x += (size_t)len;
            if (v >= 0xD800 && v <= 0xDBFF) {
                pending_hi = v;
                continue;
            }
            if (v >= 0xDC00 && v <= 0xDFFF && pending_hi) {
                v = 0x10000 + ((pending_hi - 0xD800) << 10) + (v - 0xDC00);
            }
            pending_hi = 0;
            k += stj_utf8_encode(v, o + k);
            continue;
        }
        default:
            /* Python keeps unknown escapes as written ("\d" stays backslash-d) */
            o[k++] = '\\';
            o[k++] = e;
            break;
        }
        if (pending_hi) {
            k += stj_utf8_encode(0xFFFD, o + k);
            pending_hi = 0;
        }
    }
    *out = o;
    *outn = k;
    return j + 1;
}

static void lex(struct pctx *c) {
    const char *s = c->s;
    size_t n = c->n, i = 0;
    int curly = 0;
    while (i < n) {
        int lt = last_type(c);
        if (lt == 0 || lt == T_CLOSE_STMT || lt == T_CLOSE_EXPR || lt == T_COMMENT) {
            size_t st = i;
            while (i < n && !(s[i] == '{' && i + 1 < n &&
                              (s[i + 1] == '%' || s[i + 1] == '{' || s[i + 1] == '#')))
                i++;
            if (i > st) {
                push_tok(c, T_TEXT, s + st, i - st, c->pos[st]);
                continue;
            }
        }
        if (i + 1 < n && s[i] == '{' && s[i + 1] == '#') {
            uint32_t p0 = c->pos[i];
            i += 2;
            int strip_before = i < n && s[i] == '-';
            if (strip_before) i++;
            size_t st = i;
            while (!(i + 1 < n && s[i] == '#' && s[i + 1] == '}')) {
                if (i + 2 >= n) perr(c, p0, ST_ERR_FORMAT, "unclosed comment: missing '#}'");
                i++;
            }
            int strip_after = i > st && s[i - 1] == '-';
            if (strip_before) strip_trailing_ws(c);
            push_tok(c, T_COMMENT, s + st, i - st, p0);
            i += 2;
            if (strip_after) i = skip_ws(s, n, i);
            continue;
        }
        if (i + 2 < n + 0 && s[i] == '{' && s[i + 1] == '%' && s[i + 2] == '-') {
            strip_trailing_ws(c);
            push_tok(c, T_OPEN_STMT, s + i, 2, c->pos[i]);
            i += 3;
            continue;
        }
        if (i + 2 < n && s[i] == '{' && s[i + 1] == '{' && s[i + 2] == '-') {
            strip_trailing_ws(c);
            push_tok(c, T_OPEN_EXPR, s + i, 2, c->pos[i]);
            curly = 0;
            i += 3;
            continue;
        }
        i = skip_ws(s, n, i);
        if (i >= n) {
            perr(c, c->pos[n ? n - 1 : 0], ST_ERR_FORMAT,
                 "unexpected end of template inside a tag (missing '%%}' or '}}')");
        }
        if (i + 2 < n + 0 && s[i] == '-' && s[i + 1] == '%' && s[i + 2] == '}') {
            push_tok(c, T_CLOSE_STMT, s + i, 2, c->pos[i]);
            i = skip_ws(s, n, i + 3);
            continue;
        }
        if (i + 2 < n && s[i] == '-' && s[i + 1] == '}' && s[i + 2] == '}') {
            push_tok(c, T_CLOSE_EXPR, s + i, 2, c->pos[i]);
            i = skip_ws(s, n, i + 3);
            continue;
        }
        char ch = s[i];
        if (ch == '-' || ch == '+') {
            if (lt == T_TEXT || lt == 0)
                perr(c, c->pos[i], ST_ERR_FORMAT, "unexpected character '%c'", ch);
            lt = last_type(c);
            if (!(lt == T_IDENT || lt == T_NUM || lt == T_STR || lt == T_RPAREN ||
                  lt == T_RBRACKET)) {
                size_t st = i;
                i++;
                size_t d = i;
                while (i < n && is_digit(s[i]))
                    i++;
                if (i > d && i + 1 < n && s[i] == '.' && is_digit(s[i + 1])) {
                    i++;
                    while (i < n && is_digit(s[i]))
                        i++;
                }
                if (i > d)
                    push_tok(c, T_NUM, s + st, i - st, c->pos[st]);
                else
                    push_tok(c, T_UNARY, s + st, 1, c->pos[st]);
                continue;
            }
        }
        static const struct {
            const char *seq;
            int type;
        } table[] = {
            {"{%", T_OPEN_STMT}, {"%}", T_CLOSE_STMT}, {"{{", T_OPEN_EXPR}, {"}}", T_CLOSE_EXPR},
            {"(", T_LPAREN},     {")", T_RPAREN},      {"{", T_LBRACE},     {"}", T_RBRACE},
            {"[", T_LBRACKET},   {"]", T_RBRACKET},    {",", T_COMMA},      {".", T_DOT},
            {":", T_COLON},      {"|", T_PIPE},        {"<=", T_CMP},       {">=", T_CMP},
            {"==", T_CMP},       {"!=", T_CMP},        {"<", T_CMP},        {">", T_CMP},
            {"+", T_ADD},        {"-", T_ADD},         {"~", T_ADD},        {"**", T_POW},
            {"*", T_MUL},        {"//", T_MUL},        {"/", T_MUL},        {"%", T_MUL},
            {"=", T_EQUALS},
        };
        int matched = 0;
        for (size_t k = 0; k < sizeof table / sizeof table[0]; k++) {
            if (table[k].type == T_CLOSE_EXPR && curly > 0) continue;
            size_t L = strlen(table[k].seq);
            if (i + L <= n && memcmp(s + i, table[k].seq, L) == 0) {
                push_tok(c, table[k].type, s + i, L, c->pos[i]);
                if (table[k].type == T_OPEN_EXPR)
                    curly = 0;
                else if (table[k].type == T_LBRACE)
                    curly++;
                else if (table[k].type == T_RBRACE)
                    curly--;
                i += L;
                matched = 1;
                break;
            }
        }
        if (matched) continue;
        if (ch == '\'' || ch == '"') {
            const char *p;
            size_t pn;
            uint32_t p0 = c->pos[i];
            i = lex_string(c, i, &p, &pn);
            push_tok(c, T_STR, p, pn, p0);
            continue;
        }
        if (is_digit(ch)) {
            size_t st = i;
            while (i < n && is_digit(s[i]))
                i++;
            if (last_type(c) != T_DOT && i + 1 < n && s[i] == '.' && is_digit(s[i + 1])) {
                i++;
                while (i < n && is_digit(s[i]))
                    i++;
            }
            push_tok(c, T_NUM, s + st, i - st, c->pos[st]);
            continue;
        }
        if (is_word(ch)) {
            size_t st = i;
            while (i < n && is_word(s[i]))
                i++;
            push_tok(c, T_IDENT, s + st, i - st, c->pos[st]);
            continue;
        }
        size_t adv;
        uint32_t cp = stj_utf8_decode(s, n, i, &adv);
        perr(c, c->pos[i], ST_ERR_FORMAT, "unexpected character U+%04X inside a tag", cp);
    }
}

/* ---- parser ---- */
static struct tok *peek(struct pctx *c, size_t k) {
    return c->cur + k < c->nt ? &c->toks[c->cur + k] : NULL;
}
static uint32_t cur_pos(struct pctx *c) {
    struct tok *t = peek(c, 0);
    if (t) return t->pos;
    return c->nt ? c->toks[c->nt - 1].pos : 0;
}
static int is(struct pctx *c, int type) {
    struct tok *t = peek(c, 0);
    return t && t->type == type;
}
static int is_ident(struct pctx *c, size_t k, const char *name) {
    struct tok *t = peek(c, k);
    return t && t->type == T_IDENT && t->n == strlen(name) && memcmp(t->p, name, t->n) == 0;
}
static int tok_is(const struct tok *t, const char *v) {
    return t->n == strlen(v) && memcmp(t->p, v, t->n) == 0;
}
/* {% NAME ... where NAME is one of the names */
static int is_stmt(struct pctx *c, const char *const *names) {
    if (!is(c, T_OPEN_STMT)) return 0;
    for (; *names; names++)
        if (is_ident(c, 1, *names)) return 1;
    return 0;
}

static struct tok *expect(struct pctx *c, int type, const char *what) {
    struct tok *t = peek(c, 0);
    if (!t || t->type != type) {
        if (!t) perr(c, cur_pos(c), ST_ERR_FORMAT, "expected %s, got end of template", what);
        perr(c, t->pos, ST_ERR_FORMAT, "expected %s, got %s '%.*s'", what, tok_name(t->type),
             (int)(t->n > 40 ? 40 : t->n), t->p);
    }
    c->cur++;
    return t;
}

static struct stj_node *node(struct pctx *c, int type, uint32_t pos) {
    struct stj_node *nd = palloc(c, sizeof *nd);
    memset(nd, 0, sizeof *nd);
    nd->type = (uint8_t)type;
    nd->pos = pos;
    return nd;
}

/* growable node list (arena) */
struct nlist {
    struct stj_node **v;
    size_t n, cap;
};
static void nl_push(struct pctx *c, struct nlist *l, struct stj_node *x) {
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 4;
        struct stj_node **nv = palloc(c, nc * sizeof *nv);
        if (l->n) memcpy(nv, l->v, l->n * sizeof *nv);
        l->v = nv;
        l->cap = nc;
    }
    l->v[l->n++] = x;
}

static void enter(struct pctx *c) {
    if (++c->depth > STJ_MAX_NEST)
        perr(c, cur_pos(c), ST_ERR_FORMAT, "template nested too deeply (more than %d levels)",
             STJ_MAX_NEST);
}
static void leave(struct pctx *c) {
    c->depth--;
}

static struct stj_node *parse_expr(struct pctx *c);
static struct stj_node *parse_primary(struct pctx *c);
static struct stj_node *parse_any(struct pctx *c);

static struct stj_node *parse_seq(struct pctx *c, int primary) {
    uint32_t p0 = cur_pos(c);
    struct stj_node *first = primary ? parse_primary(c) : parse_expr(c);
    if (!is(c, T_COMMA)) return first;
    struct nlist l = {0};
    nl_push(c, &l, first);
    while (is(c, T_COMMA)) {
        c->cur++;
        if (is(c, T_RPAREN) || is(c, T_EQUALS) || is(c, T_CLOSE_STMT)) break;
        nl_push(c, &l, primary ? parse_primary(c) : parse_expr(c));
    }
    struct stj_node *t = node(c, STJ_N_TUPLE, p0);
    t->list = l.v;
    t->n = l.n;
    return t;
}

static void parse_args(struct pctx *c, int params, struct stj_node ***out, size_t *outn) {
    expect(c, T_LPAREN, "'(' to start the argument list");
    enter(c);
    struct nlist l = {0};
    int saw_kw = 0;
    while (!is(c, T_RPAREN)) {
        if (!peek(c, 0)) perr(c, cur_pos(c), ST_ERR_FORMAT, "unclosed argument list: missing ')'");
        uint32_t p0 = cur_pos(c);
        int kwspread = is(c, T_POW);
        int spread = is(c, T_MUL) && tok_is(peek(c, 0), "*");
        if (params && (kwspread || spread))
            perr(c, p0, ST_ERR_FORMAT, "argument unpacking is not allowed in parameter lists");
        struct stj_node *arg;
        if (kwspread || spread) {
            c->cur++;
            arg = node(c, kwspread ? STJ_N_KWSPREAD : STJ_N_SPREAD, p0);
            arg->a = parse_expr(c);
        } else {
            arg = parse_expr(c);
            if (is(c, T_EQUALS)) {
                c->cur++;
                if (arg->type != STJ_N_IDENT)
                    perr(c, p0, ST_ERR_FORMAT, "expected an identifier before '='");
                struct stj_node *kw = node(c, STJ_N_KWARG, p0);
                kw->s = arg->s;
                kw->sn = arg->sn;
                kw->a = parse_expr(c);
                arg = kw;
                saw_kw = 1;
            } else if (params && arg->type != STJ_N_IDENT) {
                perr(c, p0, ST_ERR_FORMAT, "expected a parameter name");
            } else if (saw_kw) {
                perr(c, p0, ST_ERR_FORMAT,
                     params ? "non-default parameter follows a default parameter"
                            : "positional argument follows a keyword argument");
            }
        }
        nl_push(c, &l, arg);
        if (is(c, T_COMMA))
            c->cur++;
        else if (!is(c, T_RPAREN))
            perr(c, cur_pos(c), ST_ERR_FORMAT, "expected ',' or ')' in the argument list");
    }
    c->cur++;
    leave(c);
    *out = l.v;
    *outn = l.n;
}

static struct stj_node *parse_member(struct pctx *c, struct stj_node *obj) {
    while (is(c, T_DOT) || is(c, T_LBRACKET)) {
        struct tok *op = peek(c, 0);
        c->cur++;
        struct stj_node *m = node(c, STJ_N_MEMBER, op->pos);
        m->a = obj;
        if (op->type == T_LBRACKET) {
            enter(c);
            struct stj_node *parts[3] = {0};
            int np = 0, slice = 0;
            uint32_t p0 = cur_pos(c);
            while (!is(c, T_RBRACKET)) {
                if (!peek(c, 0)) perr(c, p0, ST_ERR_FORMAT, "unclosed '['");
                if (np >= 3) perr(c, p0, ST_ERR_FORMAT, "a slice takes at most 3 parts");
                if (is(c, T_COLON)) {
                    parts[np++] = NULL;
                    c->cur++;
                    slice = 1;
                } else {
                    parts[np++] = parse_expr(c);
                    if (is(c, T_COLON)) {
                        c->cur++;
                        slice = 1;
                    } else if (!is(c, T_RBRACKET)) {
                        perr(c, cur_pos(c), ST_ERR_FORMAT, "expected ']'");
                    }
                }
            }
            if (np == 0) perr(c, p0, ST_ERR_FORMAT, "empty subscript '[]'");
            c->cur++;
            if (slice) {
                struct stj_node *sl = node(c, STJ_N_SLICE, p0);
                sl->a = parts[0];
                sl->b = np > 1 ? parts[1] : NULL;
                sl->c = np > 2 ? parts[2] : NULL;
                m->b = sl;
            } else {
                m->b = parts[0];
            }
            m->flag = 1;
            leave(c);
        } else {
            struct tok *t = peek(c, 0);
            if (!t || (t->type != T_IDENT && t->type != T_NUM))
                perr(c, op->pos, ST_ERR_FORMAT, "expected an attribute name after '.'");
            struct stj_node *prop = parse_primary(c);
            if (prop->type != STJ_N_IDENT && prop->type != STJ_N_INT)
                perr(c, op->pos, ST_ERR_FORMAT, "expected an attribute name after '.'");
            m->b = prop;
        }
        obj = m;
    }
    return obj;
}

static struct stj_node *parse_call(struct pctx *c, struct stj_node *callee) {
    for (;;) {
        struct stj_node *call = node(c, STJ_N_CALL, callee->pos);
        call->a = callee;
        parse_args(c, 0, &call->list, &call->n);
        callee = parse_member(c, call);
        if (!is(c, T_LPAREN)) return callee;
    }
}

static struct stj_node *parse_call_member(struct pctx *c) {
    struct stj_node *m = parse_member(c, parse_primary(c));
    if (is(c, T_LPAREN)) return parse_call(c, m);
    return m;
}

static struct stj_node *parse_unary_sign(struct pctx *c) {
    struct tok *t = peek(c, 0);
    if (t && (t->type == T_UNARY || t->type == T_ADD) && (tok_is(t, "-") || tok_is(t, "+"))) {
        c->cur++;
        enter(c);
        struct stj_node *u = node(c, STJ_N_UNARY, t->pos);
        u->op = (uint8_t)t->p[0];
        u->a = parse_unary_sign(c);
        leave(c);
        return u;
    }
    return parse_call_member(c);
}

static struct stj_node *parse_filter(struct pctx *c) {
    struct stj_node *operand = parse_unary_sign(c);
    while (is(c, T_PIPE)) {
        uint32_t p0 = cur_pos(c);
        c->cur++;
        struct tok *t = peek(c, 0);
        if (!t || t->type != T_IDENT)
            perr(c, p0, ST_ERR_FORMAT, "expected a filter name after '|'");
        c->cur++;
        struct stj_node *f = node(c, STJ_N_FILTER, t->pos);
        f->a = operand;
        f->s = t->p;
        f->sn = t->n;
        if (is(c, T_LPAREN)) {
            parse_args(c, 0, &f->list, &f->n);
            f->flag = 1;
        }
        operand = f;
    }
    return operand;
}

/* tests that take one argument, which may be written without parentheses */
static int test_takes_arg(const struct tok *t) {
    static const char *const names[] = {"divisibleby", "equalto",  "eq", "ne", "sameas",
                                        "in",          "gt",       "ge", "lt", "le",
                                        "greaterthan", "lessthan", NULL};
    for (int i = 0; names[i]; i++)
        if (tok_is(t, names[i])) return 1;
    return 0;
}

static struct stj_node *parse_test(struct pctx *c) {
    struct stj_node *operand = parse_filter(c);
    while (is_ident(c, 0, "is")) {
        uint32_t p0 = cur_pos(c);
        c->cur++;
        int neg = 0;
        if (is_ident(c, 0, "not")) {
            neg = 1;
            c->cur++;
        }
        struct tok *t = peek(c, 0);
        if (!t || t->type != T_IDENT) {
            /* `is none` / `is true` are identifiers too; anything else is an error */
            perr(c, p0, ST_ERR_FORMAT, "expected a test name after 'is'");
        }
        c->cur++;
        struct stj_node *te = node(c, STJ_N_TEST, t->pos);
        te->a = operand;
        te->s = t->p;
        te->sn = t->n;
        te->flag = (uint8_t)neg;
        if (is(c, T_LPAREN)) {
            parse_args(c, 0, &te->list, &te->n);
        } else if (test_takes_arg(t)) {
            struct tok *nx = peek(c, 0);
            if (nx && (nx->type == T_NUM || nx->type == T_STR || nx->type == T_IDENT ||
                       nx->type == T_LBRACKET || nx->type == T_LBRACE)) {
                struct stj_node *arg = parse_call_member(c);
                te->list = palloc(c, sizeof *te->list);
                te->list[0] = arg;
                te->n = 1;
            }
        }
        operand = te;
    }
    return operand;
}

static struct stj_node *binop(struct pctx *c, int op, uint32_t pos, struct stj_node *a,
                              struct stj_node *b) {
    struct stj_node *nd = node(c, STJ_N_BINOP, pos);
    nd->op = (uint8_t)op;
    nd->a = a;
    nd->b = b;
    return nd;
}

static struct stj_node *parse_pow(struct pctx *c) {
    struct stj_node *l = parse_test(c);
    while (is(c, T_POW)) {
        uint32_t p = cur_pos(c);
        c->cur++;
        l = binop(c, STJ_OP_POW, p, l, parse_test(c));
    }
    return l;
}

static struct stj_node *parse_mul(struct pctx *c) {
    struct stj_node *l = parse_pow(c);
    while (is(c, T_MUL)) {
        struct tok *t = peek(c, 0);
        c->cur++;
        int op = tok_is(t, "*")    ? STJ_OP_MUL
                 : tok_is(t, "//") ? STJ_OP_FLOORDIV
                 : tok_is(t, "/")  ? STJ_OP_DIV
                                   : STJ_OP_MOD;
        l = binop(c, op, t->pos, l, parse_pow(c));
    }
    return l;
}

static struct stj_node *parse_add(struct pctx *c) {
    struct stj_node *l = parse_mul(c);
    while (is(c, T_ADD)) {
        struct tok *t = peek(c, 0);
        c->cur++;
        int op = t->p[0] == '+' ? STJ_OP_ADD : t->p[0] == '-' ? STJ_OP_SUB : STJ_OP_CONCAT;
        l = binop(c, op, t->pos, l, parse_mul(c));
    }
    return l;
}

static struct stj_node *parse_cmp(struct pctx *c) {
    struct stj_node *l = parse_add(c);
    for (;;) {
        int op;
        uint32_t p = cur_pos(c);
        if (is_ident(c, 0, "not") && is_ident(c, 1, "in")) {
            op = STJ_OP_NOTIN;
            c->cur += 2;
        } else if (is_ident(c, 0, "in")) {
            op = STJ_OP_IN;
            c->cur++;
        } else if (is(c, T_CMP)) {
            struct tok *t = peek(c, 0);
            c->cur++;
            op = tok_is(t, "==")   ? STJ_OP_EQ
                 : tok_is(t, "!=") ? STJ_OP_NE
                 : tok_is(t, "<=") ? STJ_OP_LE
                 : tok_is(t, ">=") ? STJ_OP_GE
                 : tok_is(t, "<")  ? STJ_OP_LT
                                   : STJ_OP_GT;
        } else {
            break;
        }
        l = binop(c, op, p, l, parse_add(c));
    }
    return l;
}

static struct stj_node *parse_not(struct pctx *c) {
    if (is_ident(c, 0, "not")) {
        uint32_t p = cur_pos(c);
        c->cur++;
        enter(c);
        struct stj_node *u = node(c, STJ_N_UNARY, p);
        u->op = 'n';
        u->a = parse_not(c);
        leave(c);
        return u;
    }
    return parse_cmp(c);
}

static struct stj_node *parse_and(struct pctx *c) {
    struct stj_node *l = parse_not(c);
    while (is_ident(c, 0, "and")) {
        uint32_t p = cur_pos(c);
        c->cur++;
        l = binop(c, STJ_OP_AND, p, l, parse_not(c));
    }
    return l;
}

static struct stj_node *parse_or(struct pctx *c) {
    struct stj_node *l = parse_and(c);
    while (is_ident(c, 0, "or")) {
        uint32_t p = cur_pos(c);
        c->cur++;
        l = binop(c, STJ_OP_OR, p, l, parse_and(c));
    }
    return l;
}

static struct stj_node *parse_expr(struct pctx *c) {
    enter(c);
    if (!peek(c, 0))
        perr(c, cur_pos(c), ST_ERR_FORMAT, "expected an expression, got end of template");
    struct stj_node *a = parse_or(c);
    if (is_ident(c, 0, "if")) {
        uint32_t p = cur_pos(c);
        c->cur++;
        struct stj_node *test = parse_or(c);
        if (is_ident(c, 0, "else")) {
            c->cur++;
            struct stj_node *t = node(c, STJ_N_TERNARY, p);
            t->a = test;
            t->b = a;
            t->c = parse_expr(c);
            a = t;
        } else {
            struct stj_node *s = node(c, STJ_N_SELECT, p);
            s->a = a;
            s->b = test;
            a = s;
        }
    }
    leave(c);
    return a;
}

static struct stj_node *parse_primary(struct pctx *c) {
    struct tok *t = peek(c, 0);
    if (!t) perr(c, cur_pos(c), ST_ERR_FORMAT, "expected an expression, got end of template");
    c->cur++;
    switch (t->type) {
    case T_NUM: {
        int is_float = memchr(t->p, '.', t->n) != NULL;
        char tmp[64];
        size_t k = t->n < sizeof tmp - 1 ? t->n : sizeof tmp - 1;
        memcpy(tmp, t->p, k);
        tmp[k] = 0;
        struct stj_node *nd = node(c, is_float ? STJ_N_FLOAT : STJ_N_INT, t->pos);
        double d = strtod(tmp, NULL);
        if (is_float) {
            nd->f = d;
        } else if (d >= 9.2e18 || d <= -9.2e18) {
            nd->type = STJ_N_FLOAT;
            nd->f = d;
        } else {
            nd->i = strtoll(tmp, NULL, 10);
        }
        return nd;
    }
    case T_STR: {
        struct stj_node *nd = node(c, STJ_N_STR, t->pos);
        if (!is(c, T_STR)) {
            nd->s = t->p;
            nd->sn = t->n;
            return nd;
        }
        /* adjacent literals concatenate: 'a' "b" */
        size_t total = t->n;
        for (size_t k = c->cur; k < c->nt && c->toks[k].type == T_STR; k++)
            total += c->toks[k].n;
        char *buf = palloc(c, total + 1);
        memcpy(buf, t->p, t->n);
        size_t off = t->n;
        while (is(c, T_STR)) {
            struct tok *u = peek(c, 0);
            memcpy(buf + off, u->p, u->n);
            off += u->n;
            c->cur++;
        }
        nd->s = buf;
        nd->sn = off;
        return nd;
    }
    case T_IDENT: {
        struct stj_node *nd = node(c, STJ_N_IDENT, t->pos);
        nd->s = t->p;
        nd->sn = t->n;
        return nd;
    }
    case T_LPAREN: {
        enter(c);
        struct stj_node *e = parse_seq(c, 0);
        expect(c, T_RPAREN, "')'");
        leave(c);
        return e;
    }
    case T_LBRACKET: {
        enter(c);
        struct stj_node *nd = node(c, STJ_N_LIST, t->pos);
        struct nlist l = {0};
        while (!is(c, T_RBRACKET)) {
            if (!peek(c, 0)) perr(c, t->pos, ST_ERR_FORMAT, "unclosed list literal: missing ']'");
            nl_push(c, &l, parse_expr(c));
            if (is(c, T_COMMA))
                c->cur++;
            else if (!is(c, T_RBRACKET))
                perr(c, cur_pos(c), ST_ERR_FORMAT, "expected ',' or ']'");
        }
        c->cur++;
        nd->list = l.v;
        nd->n = l.n;
        leave(c);
        return nd;
    }
    case T_LBRACE: {
        enter(c);
        struct stj_node *nd = node(c, STJ_N_DICT, t->pos);
        struct nlist k = {0}, v = {0};
        while (!is(c, T_RBRACE)) {
            if (!peek(c, 0)) perr(c, t->pos, ST_ERR_FORMAT, "unclosed dict literal: missing '}'");
            nl_push(c, &k, parse_expr(c));
            expect(c, T_COLON, "':' between key and value");
            nl_push(c, &v, parse_expr(c));
            if (is(c, T_COMMA))
                c->cur++;
            else if (!is(c, T_RBRACE))
                perr(c, cur_pos(c), ST_ERR_FORMAT, "expected ',' or '}'");
        }
        c->cur++;
        nd->list = k.v;
        nd->list2 = v.v;
        nd->n = k.n;
        nd->n2 = v.n;
        leave(c);
        return nd;
    }
    default:
        perr(c, t->pos, ST_ERR_FORMAT, "expected an expression, got %s '%.*s'", tok_name(t->type),
             (int)(t->n > 40 ? 40 : t->n), t->p);
    }
}

/* Parse statements until one of the stop tags ({% stop ... %}); the stop tag is not consumed.
 * `opener` names the enclosing block in the error for a missing end tag. */
static void parse_body(struct pctx *c, const char *const *stops, const char *opener,
                       uint32_t open_pos, struct stj_node ***out, size_t *outn) {
    struct nlist l = {0};
    while (!is_stmt(c, stops)) {
        if (!peek(c, 0)) {
            perr(c, open_pos, ST_ERR_FORMAT, "unclosed {%% %s %%}: missing {%% %s %%}", opener,
                 stops[0]);
        }
        struct stj_node *s = parse_any(c);
        if (s) nl_push(c, &l, s);
    }
    *out = l.v;
    *outn = l.n;
}

static void expect_end(struct pctx *c, const char *name) {
    expect(c, T_OPEN_STMT, "'{%'");
    if (!is_ident(c, 0, name)) perr(c, cur_pos(c), ST_ERR_FORMAT, "expected '%s'", name);
    c->cur++;
    expect(c, T_CLOSE_STMT, "'%}'");
}

static struct stj_node *parse_if(struct pctx *c, uint32_t open_pos) {
    static const char *const stops[] = {"endif", "elif", "else", NULL};
    static const char *const stops_else[] = {"endif", NULL};
    struct stj_node *nd = node(c, STJ_N_IF, open_pos);
    nd->a = parse_expr(c);
    expect(c, T_CLOSE_STMT, "'%}' to close the if tag");
    parse_body(c, stops, "if", open_pos, &nd->list, &nd->n);
    if (is_ident(c, 1, "elif")) {
        uint32_t p = cur_pos(c);
        c->cur += 2;
        enter(c);
        struct stj_node *e = parse_if(c, p);
        leave(c);
        nd->list2 = palloc(c, sizeof *nd->list2);
        nd->list2[0] = e;
        nd->n2 = 1;
    } else if (is_ident(c, 1, "else")) {
        c->cur += 2;
        expect(c, T_CLOSE_STMT, "'%}' after else");
        parse_body(c, stops_else, "if", open_pos, &nd->list2, &nd->n2);
    }
    return nd; /* the caller consumes {% endif %} (once for a whole elif chain) */
}

static struct stj_node *parse_stmt(struct pctx *c) {
    struct tok *open = expect(c, T_OPEN_STMT, "'{%'");
    struct tok *t = peek(c, 0);
    if (!t || t->type != T_IDENT)
        perr(c, open->pos, ST_ERR_FORMAT, "expected a tag name after '{%%'");
    uint32_t p0 = open->pos;
    c->cur++;
    enter(c);
    struct stj_node *res = NULL;
    if (tok_is(t, "set")) {
        res = node(c, STJ_N_SET, p0);
        res->a = parse_seq(c, 0);
        if (res->a->type != STJ_N_IDENT && res->a->type != STJ_N_TUPLE &&
            res->a->type != STJ_N_MEMBER)
            perr(c, p0, ST_ERR_FORMAT, "cannot assign to this expression");
        if (is(c, T_EQUALS)) {
            c->cur++;
            res->b = parse_seq(c, 0);
        } else {
            static const char *const stops[] = {"endset", NULL};
            expect(c, T_CLOSE_STMT, "'=' or '%}' in set");
            parse_body(c, stops, "set", p0, &res->list, &res->n);
            c->cur += 2;
        }
        expect(c, T_CLOSE_STMT, "'%}' to close the set tag");
    } else if (tok_is(t, "if")) {
        res = parse_if(c, p0);
        expect_end(c, "endif");
    } else if (tok_is(t, "for")) {
        static const char *const stops[] = {"endfor", "else", NULL};
        static const char *const stops_else[] = {"endfor", NULL};
        res = node(c, STJ_N_FOR, p0);
        res->a = parse_seq(c, 1);
        if (res->a->type != STJ_N_IDENT && res->a->type != STJ_N_TUPLE)
            perr(c, p0, ST_ERR_FORMAT, "expected a loop variable or tuple after 'for'");
        if (res->a->type == STJ_N_TUPLE)
            for (size_t k = 0; k < res->a->n; k++)
                if (res->a->list[k]->type != STJ_N_IDENT)
                    perr(c, p0, ST_ERR_FORMAT, "loop variables must be names");
        if (!is_ident(c, 0, "in"))
            perr(c, cur_pos(c), ST_ERR_FORMAT, "expected 'in' after the loop variable");
        c->cur++;
        struct stj_node *it = parse_expr(c);
        if (it->type == STJ_N_SELECT) {
            res->b = it->a;
            res->c = it->b;
        } else {
            res->b = it;
        }
        if (is_ident(c, 0, "recursive"))
            perr(c, cur_pos(c), ST_ERR_UNSUPPORTED, "recursive loops are not supported");
        expect(c, T_CLOSE_STMT, "'%}' to close the for tag");
        parse_body(c, stops, "for", p0, &res->list, &res->n);
        if (is_ident(c, 1, "else")) {
            c->cur += 2;
            expect(c, T_CLOSE_STMT, "'%}' after else");
            parse_body(c, stops_else, "for", p0, &res->list2, &res->n2);
        }
        expect_end(c, "endfor");
    } else if (tok_is(t, "macro")) {
        static const char *const stops[] = {"endmacro", NULL};
        res = node(c, STJ_N_MACRO, p0);
        struct tok *name = peek(c, 0);
        if (!name || name->type != T_IDENT) perr(c, p0, ST_ERR_FORMAT, "expected a macro name");
        c->cur++;
        res->s = name->p;
        res->sn = name->n;
        parse_args(c, 1, &res->list, &res->n);
        expect(c, T_CLOSE_STMT, "'%}' to close the macro tag");
        parse_body(c, stops, "macro", p0, &res->list2, &res->n2);
        expect(c, T_OPEN_STMT, "'{%'");
        c->cur++;
        if (is(c, T_IDENT)) c->cur++; /* {% endmacro name %} */
        expect(c, T_CLOSE_STMT, "'%}'");
    } else if (tok_is(t, "call")) {
        static const char *const stops[] = {"endcall", NULL};
        res = node(c, STJ_N_CALLBLOCK, p0);
        if (is(c, T_LPAREN)) parse_args(c, 1, &res->list, &res->n);
        struct stj_node *callee = parse_primary(c);
        if (callee->type != STJ_N_IDENT)
            perr(c, p0, ST_ERR_FORMAT, "expected a macro name after call");
        struct stj_node *call = node(c, STJ_N_CALL, callee->pos);
        call->a = callee;
        parse_args(c, 0, &call->list, &call->n);
        res->a = call;
        expect(c, T_CLOSE_STMT, "'%}' to close the call tag");
        parse_body(c, stops, "call", p0, &res->list2, &res->n2);
        expect_end(c, "endcall");
    } else if (tok_is(t, "filter")) {
        static const char *const stops[] = {"endfilter", NULL};
        res = node(c, STJ_N_FILTERBLOCK, p0);
        struct tok *name = peek(c, 0);
        if (!name || name->type != T_IDENT) perr(c, p0, ST_ERR_FORMAT, "expected a filter name");
        c->cur++;
        struct stj_node *f = node(c, STJ_N_FILTER, name->pos);
        f->s = name->p;
        f->sn = name->n;
        if (is(c, T_LPAREN)) {
            parse_args(c, 0, &f->list, &f->n);
            f->flag = 1;
        }
        res->a = f;
        expect(c, T_CLOSE_STMT, "'%}' to close the filter tag");
        parse_body(c, stops, "filter", p0, &res->list, &res->n);
        expect_end(c, "endfilter");
    } else if (tok_is(t, "break") || tok_is(t, "continue")) {
        res = node(c, tok_is(t, "break") ? STJ_N_BREAK : STJ_N_CONTINUE, p0);
        expect(c, T_CLOSE_STMT, "'%}'");
    } else {
        static const char *const ends[] = {"endif",     "endfor", "endmacro", "endcall", "endset",
                                           "endfilter", "elif",   "else",     NULL};
        for (int k = 0; ends[k]; k++)
            if (tok_is(t, ends[k]))
                perr(c, p0, ST_ERR_FORMAT, "unexpected {%% %s %%} (no open block it closes)",
                     ends[k]);
        perr(c, p0, ST_ERR_FORMAT, "unknown tag '%.*s'", (int)(t->n > 40 ? 40 : t->n), t->p);
    }
    leave(c);
    return res;
}

static struct stj_node *parse_any(struct pctx *c) {
    struct tok *t = peek(c, 0);
    switch (t->type) {
    case T_COMMENT: c->cur++; return NULL;
    case T_TEXT: {
        c->cur++;
        struct stj_node *nd = node(c, STJ_N_STR, t->pos);
        nd->s = t->p;
        nd->sn = t->n;
        return nd;
    }
    case T_OPEN_STMT: return parse_stmt(c);
    case T_OPEN_EXPR: {
        c->cur++;
        struct stj_node *e = parse_expr(c);
        expect(c, T_CLOSE_EXPR, "'}}' to close the expression");
        return e;
    }
    default:
        perr(c, t->pos, ST_ERR_FORMAT, "unexpected %s '%.*s'", tok_name(t->type),
             (int)(t->n > 40 ? 40 : t->n), t->p);
    }
}

enum st_status stj_template_parse(struct stj_template **out, const char *src, size_t len,
                                  const char *what, struct st_error *err) {
    *out = NULL;
    if (!what) what = "template";
    if (len > STJ_MAX_TEMPLATE)
        return st_errorf(err, ST_ERR_FORMAT, "%s: template is %zu bytes, more than the %u allowed",
                         what, len, STJ_MAX_TEMPLATE);
    struct stj_template *t = st_calloc(1, sizeof *t);
    if (!t) return st_errorf(err, ST_ERR_NOMEM, "%s: out of memory", what);
    t->src = st_malloc(len + 1);
    t->what = st_strdup(what);
    uint32_t *posa = st_malloc((len + 1) * sizeof *posa);
    uint32_t *posb = st_malloc((len + 1) * sizeof *posb);
    char *sa = st_malloc(len + 1);
    if (!t->src || !t->what || !posa || !posb || !sa) {
        st_free(posa);
        st_free(posb);
        st_free(sa);
        stj_template_free(t);
        return st_errorf(err, ST_ERR_NOMEM, "%s: out of memory", what);
    }
    if (len) memcpy(t->src, src, len);
    t->src[len] = 0;
    t->src_len = len;

    struct pctx *c = st_calloc(1, sizeof *c);
    char *sb = stj_alloc(&t->arena, len + 1); /* preprocessed text: tokens point into it */
    if (!c || !sb) {
        st_free(c);
        st_free(posa);
        st_free(posb);
        st_free(sa);
        stj_template_free(t);
        return st_errorf(err, ST_ERR_NOMEM, "%s: out of memory", what);
    }
    c->t = t;
    c->err = err;
    enum st_status rc = ST_OK;
    if (setjmp(c->jb) == 0) {
        struct ppbuf pp;
        preprocess(c, t->src, len, &pp, posa, posb, sa, sb);
        c->s = pp.s;
        c->pos = pp.pos;
        c->n = pp.n;
        lex(c);
        struct nlist body = {0};
        while (c->cur < c->nt) {
            struct stj_node *s = parse_any(c);
            if (s) nl_push(c, &body, s);
        }
        t->body = body.v;
        t->n = body.n;
    } else {
        rc = c->code ? c->code : ST_ERR_FORMAT;
    }
    st_free(c->toks);
    st_free(c);
    st_free(posa);
    st_free(posb);
    st_free(sa);
    if (rc) {
        stj_template_free(t);
        return rc;
    }
    *out = t;
    return ST_OK;
}

void stj_template_free(struct stj_template *t) {
    if (!t) return;
    stj_arena_free(&t->arena);
    st_free(t->src);
    st_free(t->what);
    st_free(t);
}

int stj_template_contains(const struct stj_template *t, const char *needle) {
    size_t k = strlen(needle);
    if (!k) return 1;
    for (size_t i = 0; i + k <= t->src_len; i++)
        if (memcmp(t->src + i, needle, k) == 0) return 1;
    return 0;
}
