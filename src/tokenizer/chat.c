/* chat.c: chat-template API on top of the Jinja interpreter: loading from a model directory,
 * rendering a conversation from JSON, and assistant spans for loss masking.
 *
 * DESIGN: the input JSON is parsed once per call into an arena and shared by every render of
 * that call (values are immutable; `messages[:i]` is a view, not a copy), so the 2N+1 renders
 * that st_chat_render_spans needs for N assistant turns cost no re-parsing. The span method is
 * documented in include/streamtune/chat.h and docs/chat-templates.md.
 */
#include "streamtune/chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/jinja.h"

#define MAX_CONFIG_BYTES (64u << 20)
#define MAX_JSON_DEPTH 200

struct st_chat_template {
    struct stj_template *t;
    char *bos, *eos;
    char *eot; /* detected end-of-turn marker, NULL if none */
};

static const char *const known_eot[] = {"<|eot_id|>",
                                        "<|im_end|>",
                                        "<end_of_turn>",
                                        "<|end|>",
                                        "<|eot|>",
                                        "<|END_OF_TURN_TOKEN|>",
                                        "<\xef\xbd\x9c"
                                        "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
                                        "<|endoftext|>",
                                        NULL};

static void detect_eot(struct st_chat_template *ct) {
    st_free(ct->eot);
    ct->eot = NULL;
    for (int i = 0; known_eot[i]; i++)
        if (stj_template_contains(ct->t, known_eot[i])) {
            ct->eot = st_strdup(known_eot[i]);
            return;
        }
    if (ct->eos && *ct->eos && stj_template_contains(ct->t, "eos_token"))
        ct->eot = st_strdup(ct->eos);
}

enum st_status st_chat_template_parse(struct st_chat_template **out, const char *src, size_t len,
                                      const char *what, struct st_error *err) {
    *out = NULL;
    struct st_chat_template *ct = st_calloc(1, sizeof *ct);
    if (!ct) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    enum st_status rc = stj_template_parse(&ct->t, src, len, what, err);
    if (rc) {
        st_free(ct);
        return rc;
    }
    detect_eot(ct);
    *out = ct;
    return ST_OK;
}

void st_chat_template_free(struct st_chat_template *t) {
    if (!t) return;
    stj_template_free(t->t);
    st_free(t->bos);
    st_free(t->eos);
    st_free(t->eot);
    st_free(t);
}

const char *st_chat_template_bos(const struct st_chat_template *t) {
    return t->bos;
}
const char *st_chat_template_eos(const struct st_chat_template *t) {
    return t->eos;
}
const char *st_chat_template_source(const struct st_chat_template *t, size_t *len) {
    if (len) *len = t->t->src_len;
    return t->t->src;
}

/* ---- loading ---- */
static char *dup_bytes(const char *p, size_t n) {
    char *s = st_malloc(n + 1);
    if (!s) return NULL;
    if (n) memcpy(s, p, n);
    s[n] = 0;
    return s;
}

static int file_exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fclose(f);
    return 1;
}

/* a special token entry: "text" or {"content": "text", ...} */
static char *token_string(struct stj_val *v) {
    if (!v) return NULL;
    if (v->kind == STJ_STR) return dup_bytes(v->u.s.p, v->u.s.n);
    if (v->kind == STJ_DICT) {
        struct stj_val *c = stj_dict_get(v->u.d, "content", 7);
        if (c && c->kind == STJ_STR) return dup_bytes(c->u.s.p, c->u.s.n);
    }
    return NULL;
}

enum st_status st_chat_template_load(struct st_chat_template **out, const char *dir,
                                     struct st_error *err) {
    *out = NULL;
    char path[4096], jpath[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    snprintf(jpath, sizeof jpath, "%s/chat_template.jinja", dir);
    struct stj_arena a = {0};
    a.cap = 4 * (size_t)MAX_CONFIG_BYTES;
    char *cfg = NULL, *src = NULL;
    size_t cfg_len = 0, src_len = 0;
    enum st_status rc = ST_OK;
    struct stj_val root = {0};
    char *bos = NULL, *eos = NULL;
    char what[4200];
    if (file_exists(path)) {
        rc = st_read_file(path, MAX_CONFIG_BYTES, &cfg, &cfg_len, err);
        if (rc) return rc;
        char msg[160] = "";
        if (stj_json_parse(&a, cfg, cfg_len, MAX_JSON_DEPTH, &root, msg, sizeof msg) ||
            root.kind != STJ_DICT) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: %s", path,
                           root.kind != STJ_DICT && !msg[0] ? "not a JSON object" : msg);
            goto done;
        }
        bos = token_string(stj_dict_get(root.u.d, "bos_token", 9));
        eos = token_string(stj_dict_get(root.u.d, "eos_token", 9));
    }
    if (file_exists(jpath)) {
        rc = st_read_file(jpath, 4u << 20, &src, &src_len, err);
        if (rc) goto done;
        snprintf(what, sizeof what, "%s", jpath);
    } else if (root.kind == STJ_DICT && stj_dict_get(root.u.d, "chat_template", 13)) {
        struct stj_val *ctv = stj_dict_get(root.u.d, "chat_template", 13);
        if (ctv->kind == STJ_STR) {
            src = dup_bytes(ctv->u.s.p, ctv->u.s.n);
            src_len = ctv->u.s.n;
            snprintf(what, sizeof what, "%s chat_template", path);
        } else if (ctv->kind == STJ_LIST) {
            for (size_t i = 0; i < ctv->u.l->n; i++) {
                struct stj_val *e = &ctv->u.l->items[i];
                if (e->kind != STJ_DICT) continue;
                struct stj_val *nm = stj_dict_get(e->u.d, "name", 4);
                struct stj_val *tp = stj_dict_get(e->u.d, "template", 8);
                if (nm && nm->kind == STJ_STR && nm->u.s.n == 7 &&
                    memcmp(nm->u.s.p, "default", 7) == 0 && tp && tp->kind == STJ_STR) {
                    src = dup_bytes(tp->u.s.p, tp->u.s.n);
                    src_len = tp->u.s.n;
                    snprintf(what, sizeof what, "%s chat_template[%zu] (default)", path, i);
                    break;
                }
            }
            if (!src) {
                rc = st_errorf(err, ST_ERR_FORMAT,
                               "%s: chat_template is a list without a template named \"default\"",
                               path);
                goto done;
            }
        } else {
            rc =
                st_errorf(err, ST_ERR_FORMAT, "%s: chat_template must be a string or a list", path);
            goto done;
        }
    } else {
        snprintf(jpath, sizeof jpath, "%s/chat_template.json", dir);
        if (file_exists(jpath)) {
            char *js = NULL;
            size_t jl = 0;
            rc = st_read_file(jpath, MAX_CONFIG_BYTES, &js, &jl, err);
            if (rc) goto done;
            struct stj_val r2;
            char msg[160] = "";
            struct stj_val *ctv = NULL;
            if (stj_json_parse(&a, js, jl, MAX_JSON_DEPTH, &r2, msg, sizeof msg) == 0 &&
                r2.kind == STJ_DICT)
                ctv = stj_dict_get(r2.u.d, "chat_template", 13);
            if (ctv && ctv->kind == STJ_STR) {
                src = dup_bytes(ctv->u.s.p, ctv->u.s.n);
                src_len = ctv->u.s.n;
                snprintf(what, sizeof what, "%s chat_template", jpath);
            }
            st_free(js);
            if (!src) {
                rc = st_errorf(err, ST_ERR_FORMAT, "%s: no \"chat_template\" string%s%s", jpath,
                               msg[0] ? ": " : "", msg);
                goto done;
            }
        } else {
            rc = st_errorf(err, ST_ERR_UNSUPPORTED,
                           "%s: no chat template (no chat_template.jinja, no \"chat_template\" in "
                           "tokenizer_config.json, no chat_template.json)",
                           dir);
            goto done;
        }
    }
    if (!src) {
        rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
        goto done;
    }
    {
        struct st_chat_template *ct = NULL;
        rc = st_chat_template_parse(&ct, src, src_len, what, err);
        if (rc) { /* a template that does not parse is broken, not absent (whatever the cause) */
            if (rc != ST_ERR_NOMEM) rc = err->code = ST_ERR_FORMAT;
            goto done;
        }
        ct->bos = bos;
        ct->eos = eos;
        bos = eos = NULL;
        detect_eot(ct);
        *out = ct;
    }
done:
    st_free(bos);
    st_free(eos);
    st_free(cfg);
    st_free(src);
    stj_arena_free(&a);
    return rc;
}

/* ---- rendering ---- */
struct prepared {
    struct stj_arena a;
    struct stj_val messages, tools, vars;
    const char *bos, *eos;
    struct stj_limits lim;
};

static enum st_status parse_json_arg(struct prepared *p, const char *name, const char *s, size_t n,
                                     struct stj_val *out, struct st_error *err) {
    char msg[160];
    if (!n) n = strlen(s);
    int rc = stj_json_parse(&p->a, s, n, MAX_JSON_DEPTH, out, msg, sizeof msg);
    if (rc)
        return st_errorf(err, rc == -2 ? ST_ERR_NOMEM : ST_ERR_FORMAT, "%s JSON: %s", name, msg);
    return ST_OK;
}

static enum st_status prepare(const struct st_chat_template *t, const struct st_chat_input *in,
                              struct prepared *p, struct st_error *err) {
    memset(p, 0, sizeof *p);
    p->a.cap = in->limits.max_memory_bytes ? in->limits.max_memory_bytes : (256u << 20);
    if (!in->messages_json) return st_errorf(err, ST_ERR_ARG, "chat input: messages_json is NULL");
    enum st_status rc =
        parse_json_arg(p, "messages", in->messages_json, in->messages_len, &p->messages, err);
    if (rc) return rc;
    if (p->messages.kind != STJ_LIST)
        return st_errorf(err, ST_ERR_ARG, "messages JSON: must be an array");
    p->tools = stj_none();
    if (in->tools_json) {
        rc = parse_json_arg(p, "tools", in->tools_json, in->tools_len, &p->tools, err);
        if (rc) return rc;
    }
    p->vars = stj_undef();
    if (in->vars_json) {
        rc = parse_json_arg(p, "vars", in->vars_json, in->vars_len, &p->vars, err);
        if (rc) return rc;
        if (p->vars.kind != STJ_DICT)
            return st_errorf(err, ST_ERR_ARG, "vars JSON: must be an object");
    }
    p->bos = in->bos_token ? in->bos_token : t->bos;
    p->eos = in->eos_token ? in->eos_token : t->eos;
    p->lim.max_output = in->limits.max_output_bytes;
    p->lim.max_memory = in->limits.max_memory_bytes;
    p->lim.max_steps = in->limits.max_steps;
    p->lim.max_depth = in->limits.max_depth;
    p->lim.has_now = in->fixed_time;
    p->lim.now = in->now;
    return ST_OK;
}

/* render messages[:n] */
static enum st_status render_n(const struct st_chat_template *t, struct prepared *p, size_t n,
                               int agp, char **out, size_t *len, struct st_error *err) {
    struct stj_var vars[64];
    size_t nv = 0;
    struct stj_list view = {n, p->messages.u.l->items};
    struct stj_val msgs = p->messages;
    msgs.u.l = &view;
    if (p->vars.kind == STJ_DICT) {
        /* extra variables first: the standard ones below take precedence */
        struct stj_dict *d = p->vars.u.d;
        for (size_t i = 0; i < d->n && nv < 56; i++) {
            /* names must be NUL-terminated for stj_var: the JSON keys are not; copy them */
            char *nm = stj_alloc(&p->a, d->e[i].kn + 1);
            if (!nm) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
            memcpy(nm, d->e[i].k, d->e[i].kn);
            nm[d->e[i].kn] = 0;
            vars[nv].name = nm;
            vars[nv++].value = d->e[i].v;
        }
    }
    vars[nv].name = "messages";
    vars[nv++].value = msgs;
    vars[nv].name = "tools";
    vars[nv++].value = p->tools;
    vars[nv].name = "add_generation_prompt";
    vars[nv++].value = stj_bool(agp);
    if (p->bos) {
        vars[nv].name = "bos_token";
        vars[nv++].value = stj_str(p->bos, strlen(p->bos));
    }
    if (p->eos) {
        vars[nv].name = "eos_token";
        vars[nv++].value = stj_str(p->eos, strlen(p->eos));
    }
    return stj_render(t->t, vars, nv, &p->lim, out, len, err);
}

enum st_status st_chat_template_render(const struct st_chat_template *t,
                                       const struct st_chat_input *in, char **out, size_t *len,
                                       struct st_error *err) {
    *out = NULL;
    if (len) *len = 0;
    struct prepared p;
    enum st_status rc = prepare(t, in, &p, err);
    if (!rc) rc = render_n(t, &p, p.messages.u.l->n, in->add_generation_prompt, out, len, err);
    stj_arena_free(&p.a);
    return rc;
}

/* ---- spans ---- */
static const char *find_last(const char *h, size_t hn, const char *nd, size_t nn) {
    if (nn == 0 || nn > hn) return NULL;
    for (size_t i = hn - nn + 1; i-- > 0;)
        if (memcmp(h + i, nd, nn) == 0) return h + i;
    return NULL;
}
static const char *find_first(const char *h, size_t hn, const char *nd, size_t nn) {
    if (nn == 0 || nn > hn) return NULL;
    for (size_t i = 0; i + nn <= hn; i++)
        if (memcmp(h + i, nd, nn) == 0) return h + i;
    return NULL;
}

static int is_assistant(struct stj_val m) {
    if (m.kind != STJ_DICT) return 0;
    struct stj_val *r = stj_dict_get(m.u.d, "role", 4);
    return r && r->kind == STJ_STR && r->u.s.n == 9 && memcmp(r->u.s.p, "assistant", 9) == 0;
}

/* the assistant's content as rendered text to look for (string content, or its first text part) */
static int content_of(struct stj_val m, const char **p, size_t *n) {
    struct stj_val *c = stj_dict_get(m.u.d, "content", 7);
    if (!c) return 0;
    if (c->kind == STJ_STR) {
        *p = c->u.s.p;
        *n = c->u.s.n;
        return 1;
    }
    if (c->kind == STJ_LIST)
        for (size_t i = 0; i < c->u.l->n; i++) {
            struct stj_val it = c->u.l->items[i];
            if (it.kind != STJ_DICT) continue;
            struct stj_val *tx = stj_dict_get(it.u.d, "text", 4);
            if (tx && tx->kind == STJ_STR) {
                *p = tx->u.s.p;
                *n = tx->u.s.n;
                return 1;
            }
        }
    return 0;
}

enum st_status st_chat_render_spans(const struct st_chat_template *t,
                                    const struct st_chat_input *in, char **out, size_t *len,
                                    struct st_chat_span **spans, size_t *n_spans,
                                    struct st_error *err) {
    *out = NULL;
    if (len) *len = 0;
    *spans = NULL;
    *n_spans = 0;
    struct prepared p;
    enum st_status rc = prepare(t, in, &p, err);
    char *full = NULL, *pre = NULL, *q = NULL;
    size_t full_n = 0, pre_n = 0, q_n = 0, ns = 0;
    struct st_chat_span *sp = NULL;
    if (rc) goto done;
    size_t nm = p.messages.u.l->n;
    rc = render_n(t, &p, nm, in->add_generation_prompt, &full, &full_n, err);
    if (rc) goto done;
    size_t na = 0;
    for (size_t i = 0; i < nm; i++)
        na += is_assistant(p.messages.u.l->items[i]);
    sp = st_calloc(na ? na : 1, sizeof *sp);
    if (!sp) {
        rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
        goto done;
    }
    const char *eot = in->end_of_turn ? in->end_of_turn : t->eot;
    size_t eot_n = eot ? strlen(eot) : 0;
    for (size_t i = 0; i < nm; i++) {
        struct stj_val m = p.messages.u.l->items[i];
        if (!is_assistant(m)) continue;
        st_free(pre);
        st_free(q);
        pre = q = NULL;
        rc = render_n(t, &p, i, 1, &pre, &pre_n, err);
        if (rc) {
            st_error_prefix(err, "spans: rendering messages[:%zu] with the generation prompt: ", i);
            goto done;
        }
        size_t begin = pre_n;
        if (pre_n > full_n || memcmp(pre, full, pre_n) != 0) {
            /* The generation prompt differs from how an earlier turn opens in the full
             * conversation (Qwen3 with enable_thinking=false appends an empty think block that
             * old turns do not have): start after the part of the generation prompt that the
             * full rendering does contain. */
            char *p0 = NULL;
            size_t p0_n = 0;
            rc = render_n(t, &p, i, 0, &p0, &p0_n, err);
            if (rc) {
                st_error_prefix(err, "spans: rendering messages[:%zu]: ", i);
                goto done;
            }
            int gp = p0_n <= pre_n && memcmp(p0, pre, p0_n) == 0; /* pre = p0 + the prompt */
            int ok = gp && p0_n <= full_n && memcmp(p0, full, p0_n) == 0;
            st_free(p0);
            size_t g = 0;
            while (ok && p0_n + g < pre_n && p0_n + g < full_n && pre[p0_n + g] == full[p0_n + g])
                g++;
            if (ok && g > 0) {
                begin = p0_n + g;
            } else {
                /* Earlier turns render differently before this one than in the full
                 * conversation (Qwen3 shows the reasoning of the turns after the last user query
                 * only): the turn opens with the generation prompt's text (or its first line)
                 * at its first occurrence after the previous assistant span. */
                size_t from = ns ? sp[ns - 1].end : 0;
                const char *h = gp ? pre + p0_n : NULL, *at = NULL;
                size_t hn = gp ? pre_n - p0_n : 0;
                if (hn) at = find_first(full + from, full_n - from, h, hn);
                if (hn && !at) {
                    const char *nl = memchr(h, '\n', hn);
                    if (nl && (size_t)(nl - h) + 1 < hn) {
                        hn = (size_t)(nl - h) + 1;
                        at = find_first(full + from, full_n - from, h, hn);
                    }
                }
                if (!at) {
                    rc = st_errorf(err, ST_ERR_UNSUPPORTED,
                                   "spans: message %zu: the prompt before this assistant turn "
                                   "(messages[:%zu] rendered with add_generation_prompt) is not a "
                                   "prefix of the full rendering, and its generation prompt does "
                                   "not follow the previous assistant turn there, so its start "
                                   "cannot be located",
                                   i, i);
                    goto done;
                }
                begin = (size_t)(at - full) + hn;
            }
        }
        size_t end = 0;
        int method = 0;
        rc = render_n(t, &p, i + 1, 0, &q, &q_n, err);
        if (rc) {
            st_error_prefix(err, "spans: rendering messages[:%zu]: ", i + 1);
            goto done;
        }
        size_t L = 0;
        while (L < q_n && L < full_n && q[L] == full[L])
            L++;
        if (L >= begin) {
            const char *mk = eot_n ? find_last(full + begin, L - begin, eot, eot_n) : NULL;
            if (mk) {
                end = (size_t)(mk - full) + eot_n;
                method = L == q_n ? ST_CHAT_SPAN_PREFIX : ST_CHAT_SPAN_COMMON_PREFIX;
            } else if (L == q_n && !eot_n) {
                end = q_n;
                method = ST_CHAT_SPAN_PREFIX;
            }
        }
        if (!method) {
            /* the turn renders differently once later turns exist: find its content in the full
             * rendering, then the end-of-turn marker after it */
            const char *cp;
            size_t cn;
            const char *at = NULL;
            if (content_of(m, &cp, &cn)) {
                at = cn ? find_first(full + begin, full_n - begin, cp, cn) : full + begin;
                for (int pass = 0; !at && pass < 2; pass++) {
                    /* templates often trim the content (pass 0), and drop the reasoning of old
                     * turns written inline as <think>...</think> (pass 1: what follows it) */
                    const char *tk = pass ? find_last(cp, cn, "</think>", 8) : NULL;
                    if (pass && !tk) break;
                    if (tk) cn -= (size_t)(tk + 8 - cp), cp = tk + 8;
                    while (cn && (*cp == ' ' || *cp == '\n' || *cp == '\t' || *cp == '\r'))
                        cp++, cn--;
                    while (cn && (cp[cn - 1] == ' ' || cp[cn - 1] == '\n' || cp[cn - 1] == '\t' ||
                                  cp[cn - 1] == '\r'))
                        cn--;
                    at = cn ? find_first(full + begin, full_n - begin, cp, cn) : full + begin;
                }
            }
            const char *mk = NULL;
            if (at && eot_n) {
                size_t from = (size_t)(at - full) + cn;
                mk = find_first(full + from, full_n - from, eot, eot_n);
            }
            if (!mk) {
                rc = st_errorf(err, ST_ERR_UNSUPPORTED,
                               "spans: message %zu: the template renders this assistant turn "
                               "differently once later turns follow, and %s",
                               i,
                               !at ? "its content was not found in the full rendering"
                                   : "no end-of-turn marker follows its content");
                goto done;
            }
            end = (size_t)(mk - full) + eot_n;
            method = ST_CHAT_SPAN_CONTENT;
        }
        sp[ns].message = i;
        sp[ns].begin = begin;
        sp[ns].end = end;
        sp[ns].method = method;
        ns++;
    }
    for (size_t k = 1; k < ns; k++)
        if (sp[k].begin < sp[k - 1].end) {
            /* a located span ran into a later turn: refuse rather than train on other turns */
            rc = st_errorf(err, ST_ERR_UNSUPPORTED,
                           "spans: message %zu: its span would overlap assistant message %zu",
                           sp[k - 1].message, sp[k].message);
            goto done;
        }
    *out = full;
    full = NULL;
    if (len) *len = full_n;
    *spans = sp;
    sp = NULL;
    *n_spans = ns;
done:
    st_free(full);
    st_free(pre);
    st_free(q);
    st_free(sp);
    stj_arena_free(&p.a);
    return rc;
}
