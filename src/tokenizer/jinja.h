/* jinja.h: internal interface of streamtune's small Jinja2 interpreter (chat templates).
 *
 * DESIGN: three files, one concern each.
 *   jinja_value.c  arena allocator, the tagged value type, JSON text -> values, values -> JSON
 *                  (tojson), number formatting, UTF-8 helpers.
 *   jinja.c        preprocessing (trim_blocks, lstrip_blocks, {% generation %}), lexer and
 *                  recursive-descent parser -> AST, following @huggingface/jinja's grammar.
 *   jinja_eval.c   the tree-walking interpreter: scopes, statements, operators, filters, tests,
 *                  string/dict methods, macros, with caps on output, steps, memory and depth.
 * Every value and AST node lives in an arena (one per template, one per render), so a render
 * error is a longjmp back to the entry point followed by freeing the arena: no leaks, no
 * reference counts. Strings are UTF-8 byte slices (not NUL-terminated); values are immutable
 * except namespace objects, so input values can be shared by many renders.
 * Semantics follow @huggingface/jinja 0.5.11 (the oracle of the tests); where it lacks a feature
 * Python Jinja2 (what transformers uses) decides; docs/chat-templates.md lists the differences.
 */
#ifndef ST_TOKENIZER_JINJA_H
#define ST_TOKENIZER_JINJA_H

#include <stddef.h>
#include <stdint.h>

#include "streamtune/core.h"

/* ---- arena ---- */
struct stj_chunk;
struct stj_arena {
    struct stj_chunk *head;
    size_t total; /* bytes taken from st_malloc so far */
    size_t cap;   /* refuse to grow past this (0: no cap) */
};
/* 16-byte aligned, uninitialised; NULL when the cap is reached or malloc fails. */
void *stj_alloc(struct stj_arena *a, size_t n);
void stj_arena_free(struct stj_arena *a);

/* ---- values ---- */
enum stj_kind {
    STJ_UNDEF = 0,
    STJ_NONE,
    STJ_BOOL,
    STJ_INT,
    STJ_FLOAT,
    STJ_STR,
    STJ_LIST,
    STJ_DICT, /* also namespace() objects (dict->ns) and keyword-argument bundles */
    STJ_FUNC,
};

struct stj_list;
struct stj_dict;
struct stj_func;

struct stj_val {
    uint8_t kind;
    uint8_t tuple; /* STJ_LIST built from a tuple literal */
    union {
        int b;
        int64_t i;
        double f;
        struct {
            const char *p;
            size_t n;
        } s;
        struct stj_list *l;
        struct stj_dict *d;
        struct stj_func *fn;
    } u;
};

struct stj_list {
    size_t n;
    struct stj_val *items;
};

struct stj_kv {
    const char *k;
    size_t kn;
    struct stj_val v;
};

struct stj_dict {
    size_t n, cap;
    struct stj_kv *e;
    int ns;     /* a namespace(): attribute assignment allowed, no dict methods */
    int kwargs; /* keyword arguments of a call */
};

static inline struct stj_val stj_undef(void) {
    struct stj_val v = {0};
    return v;
}
static inline struct stj_val stj_none(void) {
    struct stj_val v = {0};
    v.kind = STJ_NONE;
    return v;
}
static inline struct stj_val stj_bool(int b) {
    struct stj_val v = {0};
    v.kind = STJ_BOOL;
    v.u.b = b != 0;
    return v;
}
static inline struct stj_val stj_int(int64_t i) {
    struct stj_val v = {0};
    v.kind = STJ_INT;
    v.u.i = i;
    return v;
}
static inline struct stj_val stj_float(double f) {
    struct stj_val v = {0};
    v.kind = STJ_FLOAT;
    v.u.f = f;
    return v;
}
static inline struct stj_val stj_str(const char *p, size_t n) {
    struct stj_val v = {0};
    v.kind = STJ_STR;
    v.u.s.p = p;
    v.u.s.n = n;
    return v;
}

/* Dict lookup by key bytes; NULL when absent. */
struct stj_val *stj_dict_get(const struct stj_dict *d, const char *k, size_t kn);
/* Insert or replace (keeps the first position of a key). 0 ok, -1 out of memory. */
int stj_dict_set(struct stj_arena *a, struct stj_dict *d, const char *k, size_t kn,
                 struct stj_val v);

/* Parse JSON text into values allocated in `a` (objects keep key order; integral numbers that fit
 * int64 become STJ_INT, as JavaScript's Number.isInteger does). Nesting is capped at max_depth.
 * On failure returns -1 (-2 when out of memory) and writes "byte N: why" into msg. */
int stj_json_parse(struct stj_arena *a, const char *s, size_t n, int max_depth, struct stj_val *out,
                   char *msg, size_t msgcap);

/* ---- growable byte buffer in an arena, with a hard cap ---- */
struct stj_buf {
    char *p;
    size_t n, cap;
};
/* Append; -1 when out of memory or past max (the buffer is left unchanged). */
int stj_buf_put(struct stj_arena *a, struct stj_buf *b, const char *s, size_t n, size_t max);

/* JSON serialisation as transformers' tojson (json.dumps(ensure_ascii=False)) and
 * @huggingface/jinja's toJSON: separators ", " / ": " (or "," with indent), indent < 0 = none.
 * undef_as: text for undefined values ("null" for tojson, "undefined" for rendering).
 * Returns 0, -1 out of memory/cap, -2 not serialisable (function), -3 nesting too deep. */
struct stj_json_opts {
    int indent; /* < 0: no indent */
    int ensure_ascii;
    int sort_keys;
    const char *item_sep, *key_sep; /* NULL: defaults */
    const char *undef_as;
};
int stj_to_json(struct stj_arena *a, struct stj_buf *b, size_t max, struct stj_val v,
                const struct stj_json_opts *o, int depth);

/* JavaScript's Number.prototype.toString for a double (shortest round trip). buf >= 32 bytes. */
size_t stj_fmt_js_number(double x, char *buf);

/* UTF-8: decode one code point at s[i] (len n), setting *adv (>= 1); invalid bytes decode as
 * U+FFFD with *adv = 1. */
uint32_t stj_utf8_decode(const char *s, size_t n, size_t i, size_t *adv);
size_t stj_utf8_encode(uint32_t cp, char *out); /* out >= 4 bytes */
/* JavaScript's \s (what String.prototype.trim removes). */
int stj_is_js_space(uint32_t cp);

/* ---- templates ---- */
struct stj_template;

/* Parse a template (len bytes of UTF-8). `what` names it in messages ("model/tokenizer_config.json
 * chat_template"); errors read "what:LINE:COL: message". Caller frees with stj_template_free. */
enum st_status stj_template_parse(struct stj_template **out, const char *src, size_t len,
                                  const char *what, struct st_error *err);
void stj_template_free(struct stj_template *t);
/* Source text (as given) and whether it contains `needle`. */
int stj_template_contains(const struct stj_template *t, const char *needle);

/* ---- AST (shared by jinja.c and jinja_eval.c only) ---- */
enum stj_node_type {
    /* statements */
    STJ_N_IF = 1,      /* a test, list body, list2 else-body */
    STJ_N_FOR,         /* a target (IDENT/TUPLE), b iterable, c filter test or NULL, list, list2 */
    STJ_N_SET,         /* a target, b value or NULL (block set: list body) */
    STJ_N_MACRO,       /* s name, list params (IDENT/KWARG), list2 body */
    STJ_N_CALLBLOCK,   /* a CALL node, list caller params, list2 body */
    STJ_N_FILTERBLOCK, /* a FILTER node (operand NULL), list body */
    STJ_N_BREAK,
    STJ_N_CONTINUE,
    /* expressions (an expression is also a statement that renders its value) */
    STJ_N_STR,     /* s (text outside tags is a STR too) */
    STJ_N_INT,     /* i */
    STJ_N_FLOAT,   /* f */
    STJ_N_IDENT,   /* s */
    STJ_N_LIST,    /* list */
    STJ_N_TUPLE,   /* list */
    STJ_N_DICT,    /* list keys, list2 values */
    STJ_N_BINOP,   /* op, a, b */
    STJ_N_UNARY,   /* op ('-', '+', 'n' for not), a */
    STJ_N_FILTER,  /* a operand, s name, list args, flag 1 when called with () */
    STJ_N_TEST,    /* a operand, s name, list args, flag 1 when negated */
    STJ_N_SELECT,  /* a lhs, b test ("x if c" without else) */
    STJ_N_TERNARY, /* a cond, b if-true, c if-false */
    STJ_N_CALL,    /* a callee, list args */
    STJ_N_MEMBER,  /* a object, b property, flag 1 when computed ([...]) */
    STJ_N_SLICE,   /* a start, b stop, c step (each may be NULL) */
    STJ_N_KWARG,   /* s name, a value */
    STJ_N_SPREAD,  /* a */
    STJ_N_KWSPREAD /* a */
};

enum stj_binop {
    STJ_OP_OR = 1,
    STJ_OP_AND,
    STJ_OP_EQ,
    STJ_OP_NE,
    STJ_OP_LT,
    STJ_OP_GT,
    STJ_OP_LE,
    STJ_OP_GE,
    STJ_OP_IN,
    STJ_OP_NOTIN,
    STJ_OP_ADD,
    STJ_OP_SUB,
    STJ_OP_CONCAT,
    STJ_OP_MUL,
    STJ_OP_DIV,
    STJ_OP_FLOORDIV,
    STJ_OP_MOD,
    STJ_OP_POW
};

struct stj_node {
    uint8_t type;
    uint8_t op;
    uint8_t flag;
    uint32_t pos; /* byte offset in the original source (for line:col in messages) */
    struct stj_node *a, *b, *c;
    struct stj_node **list, **list2;
    size_t n, n2;
    const char *s;
    size_t sn;
    int64_t i;
    double f;
};

struct stj_template {
    struct stj_arena arena; /* AST, strings */
    char *src;              /* copy of the source (NUL-terminated) */
    size_t src_len;
    char *what;
    struct stj_node **body;
    size_t n;
};

/* "what:LINE:COL" of a source offset into buf. */
void stj_template_where(const struct stj_template *t, uint32_t pos, char *buf, size_t cap);

struct stj_var {
    const char *name;
    struct stj_val value;
};

struct stj_limits {
    size_t max_output;  /* bytes of rendered text */
    size_t max_memory;  /* bytes of the render arena */
    uint64_t max_steps; /* statements + expressions evaluated + loop iterations */
    int max_depth;      /* macro-call nesting */
    int64_t now;        /* strftime_now: seconds since the epoch, UTC; used when has_now */
    int has_now;
};

/* Render with the given variables (their values must outlive the call). On success *out is a
 * NUL-terminated st_malloc'd string of *len bytes. */
enum st_status stj_render(const struct stj_template *t, const struct stj_var *vars, size_t nvars,
                          const struct stj_limits *lim, char **out, size_t *len,
                          struct st_error *err);

#endif
