/* examples.c: JSON records -> (ids, labels), and the packer that lays examples into batches.
 * See include/streamtune/examples.h for the formats and the masking rules. */
#include <cjson/cJSON.h>
#include <string.h>

#include "streamtune/examples.h"

void st_example_options_default(struct st_example_options *o) {
    memset(o, 0, sizeof *o);
    o->text_field = "text";
    o->prompt_field = "prompt";
    o->completion_field = "completion";
    o->messages_field = "messages";
    o->tools_field = "tools";
    o->add_eos = 1;
    o->max_len = 2048;
}

enum st_status st_data_format_parse(const char *s, enum st_data_format *out, struct st_error *err) {
    if (!strcmp(s, "auto")) *out = ST_FMT_AUTO;
    else if (!strcmp(s, "text")) *out = ST_FMT_TEXT;
    else if (!strcmp(s, "completions") || !strcmp(s, "completion")) *out = ST_FMT_COMPLETIONS;
    else if (!strcmp(s, "chat")) *out = ST_FMT_CHAT;
    else if (!strcmp(s, "ids")) *out = ST_FMT_IDS;
    else
        return st_errorf(err, ST_ERR_ARG,
                         "--data-format '%s': expected auto, text, completions, chat or ids", s);
    return ST_OK;
}

void st_example_free(struct st_example *e) {
    st_free(e->ids);
    st_free(e->labels);
    memset(e, 0, sizeof *e);
}

static int ex_push(struct st_example *e, int32_t id, int32_t label) {
    if (e->n == e->cap) {
        size_t nc = e->cap ? e->cap * 2 : 256;
        int32_t *a = st_realloc(e->ids, nc * sizeof *a);
        if (!a) return 1;
        e->ids = a;
        int32_t *b = st_realloc(e->labels, nc * sizeof *b);
        if (!b) return 1;
        e->labels = b;
        e->cap = nc;
    }
    e->ids[e->n] = id;
    e->labels[e->n++] = label;
    return 0;
}

static int32_t eos_id(const struct st_tokenizer *tok, const struct st_model_config *c) {
    int32_t e = tok ? st_tokenizer_eos_id(tok) : -1;
    if (e < 0 && c->n_eos) e = c->eos_token_ids[0];
    return e;
}

/* Encode text; token t is trained when train_from <= offset (offset -1: template tokens, not
 * trained unless train_all). */
static enum st_status encode_masked(struct st_example *ex, const struct st_tokenizer *tok,
                                    const char *text, size_t len, int add_special,
                                    size_t train_from, int train_all, const char *where,
                                    struct st_error *err) {
    struct st_ids v = {0};
    enum st_status rc = st_tokenizer_encode(tok, text, len, add_special, &v, err);
    if (rc) return st_error_prefix(err, "%s: ", where);
    for (size_t i = 0; i < v.n && !rc; i++) {
        int trained = train_all || (v.offsets[i] >= 0 && (size_t)v.offsets[i] >= train_from);
        if (ex_push(ex, v.ids[i], trained ? v.ids[i] : -100))
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
    }
    st_ids_free(&v);
    return rc;
}

/* Tool calls written as JSON text: an object {"name": ..., "arguments": ...} or a list of them
 * (LLaMA-Factory's tool_call part, ShareGPT's function_call turn; a list for parallel calls),
 * appended to calls as chat templates' tool_calls entries. 0 when the text is neither. */
static int add_tool_calls(cJSON *calls, const char *json) {
    cJSON *v = cJSON_Parse(json);
    int n = 0, ok = cJSON_IsObject(v) || (cJSON_IsArray(v) && cJSON_GetArraySize(v) > 0);
    for (cJSON *f = cJSON_IsArray(v) ? v->child : v; ok && f; f = cJSON_IsArray(v) ? f->next : NULL)
        ok = cJSON_IsObject(f) && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(f, "name"));
    while (ok && v) {
        cJSON *f = cJSON_IsArray(v) ? cJSON_DetachItemFromArray(v, 0) : v;
        if (f == v) v = NULL;
        if (!f) break;
        cJSON *c = cJSON_CreateObject();
        if (!c || !cJSON_AddStringToObject(c, "type", "function")) {
            cJSON_Delete(c);
            cJSON_Delete(f);
            ok = 0;
            break;
        }
        cJSON_AddItemToObject(c, "function", f);
        cJSON_AddItemToArray(calls, c);
        n++;
    }
    cJSON_Delete(v);
    return ok && n > 0;
}

/* Message content into nm: a string as is; a list of typed parts ("text" or "value"), text parts
 * joined into "content", "reasoning" parts into "reasoning_content" and "tool_call" parts (JSON
 * text) into "tool_calls", as chat templates expect them. Another part type is an error: its
 * text glued into the content would train on something the template never shows. */
static enum st_status put_content(cJSON *nm, const cJSON *c, const char *where, int i,
                                  struct st_error *err) {
    if (!cJSON_IsArray(c)) {
        if (!cJSON_AddStringToObject(nm, "content", cJSON_IsString(c) ? c->valuestring : ""))
            return st_errorf(err, ST_ERR_NOMEM, "out of memory");
        return ST_OK;
    }
    struct dbuf_s {
        char *p;
        size_t n;
    } txt = {0}, rsn = {0}, *d;
    cJSON *calls = NULL;
    enum st_status rc = ST_OK;
    int k = 0;
    for (const cJSON *p = c->child; p && !rc; p = p->next, k++) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(p, "type");
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "text");
        if (!cJSON_IsString(t)) t = cJSON_GetObjectItemCaseSensitive(p, "value");
        if (cJSON_IsString(p)) t = p;
        const char *type = cJSON_IsString(ty) ? ty->valuestring : "text";
        if (!cJSON_IsString(t)) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: messages[%d].content[%d] has no \"text\" or "
                           "\"value\" string", where, i, k);
            break;
        }
        if (!strcmp(type, "tool_call")) {
            if (!calls && !(calls = cJSON_CreateArray())) {
                rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
                break;
            }
            if (!add_tool_calls(calls, t->valuestring))
                rc = st_errorf(err, ST_ERR_FORMAT, "%s: messages[%d].content[%d]: a tool_call "
                               "part's value is not a JSON object with a \"name\" (or a list of "
                               "them)", where, i, k);
            continue;
        }
        if (!strcmp(type, "text")) d = &txt;
        else if (!strcmp(type, "reasoning") || !strcmp(type, "thinking")) d = &rsn;
        else {
            rc = st_errorf(err, ST_ERR_UNSUPPORTED, "%s: messages[%d].content[%d] is a \"%s\" "
                           "part: text training takes text, reasoning and tool_call parts", where,
                           i, k, type);
            break;
        }
        size_t l = strlen(t->valuestring);
        char *q = st_realloc(d->p, d->n + l + 1);
        if (!q) {
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            break;
        }
        memcpy(q + d->n, t->valuestring, l + 1);
        d->p = q;
        d->n += l;
    }
    if (!rc && (!cJSON_AddStringToObject(nm, "content", txt.p ? txt.p : "") ||
                (rsn.p && !cJSON_AddStringToObject(nm, "reasoning_content", rsn.p))))
        rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
    if (!rc && calls) {
        cJSON_AddItemToObject(nm, "tool_calls", calls);
        calls = NULL;
    }
    cJSON_Delete(calls);
    st_free(txt.p);
    st_free(rsn.p);
    return rc;
}

static const char *sharegpt_role(const char *from) {
    if (!strcmp(from, "human") || !strcmp(from, "user")) return "user";
    if (!strcmp(from, "gpt") || !strcmp(from, "assistant") || !strcmp(from, "model") ||
        !strcmp(from, "function_call"))
        return "assistant";
    if (!strcmp(from, "system")) return "system";
    if (!strcmp(from, "observation") || !strcmp(from, "tool") || !strcmp(from, "function")) return "tool";
    return NULL;
}

/* Normalise messages (OpenAI or ShareGPT style) into what chat templates expect; weight[i] = 0
 * for messages not to be trained (loss_weight 0). */
static enum st_status normalise_messages(const cJSON *msgs, const cJSON *system, cJSON **out,
                                         uint8_t **weight, const char *where,
                                         struct st_error *err) {
    int n = cJSON_GetArraySize(msgs), i = 0;
    /* ShareGPT's record-level "system" string: a system turn first, unless the list has one */
    const cJSON *first = msgs->child;
    const cJSON *fr = first ? cJSON_GetObjectItem(first, "role") : NULL;
    if (!cJSON_IsString(fr) && first) fr = cJSON_GetObjectItem(first, "from");
    int add_sys = cJSON_IsString(system) && *system->valuestring &&
                  !(cJSON_IsString(fr) && !strcmp(fr->valuestring, "system"));
    cJSON *arr = cJSON_CreateArray();
    uint8_t *w = st_calloc((size_t)(n + add_sys ? n + add_sys : 1), 1);
    enum st_status rc = ST_OK;
    if (!arr || !w) rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
    if (!rc && add_sys) {
        cJSON *sm = cJSON_CreateObject();
        if (!sm || !cJSON_AddStringToObject(sm, "role", "system") ||
            !cJSON_AddStringToObject(sm, "content", system->valuestring)) {
            cJSON_Delete(sm);
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
        } else {
            cJSON_AddItemToArray(arr, sm);
        }
    }
    for (const cJSON *m = msgs->child; m && !rc; m = m->next, i++) {
        const cJSON *role = cJSON_GetObjectItem(m, "role");
        const cJSON *content = cJSON_GetObjectItem(m, "content");
        const char *r = cJSON_IsString(role) ? role->valuestring : NULL, *from = NULL;
        if (!r) { /* ShareGPT: {"from": "human", "value": "..."} */
            const cJSON *fm = cJSON_GetObjectItem(m, "from");
            from = cJSON_IsString(fm) ? fm->valuestring : NULL;
            r = from ? sharegpt_role(from) : NULL;
            content = cJSON_GetObjectItem(m, "value");
        } else if (sharegpt_role(r)) { /* "human", "gpt", "model" under "role" too */
            from = r;
            r = sharegpt_role(r);
        }
        if (!cJSON_IsObject(m) || !r) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: messages[%d] has no role (or known 'from')",
                           where, i);
            break;
        }
        cJSON *nm = cJSON_CreateObject();
        if (!nm || !cJSON_AddStringToObject(nm, "role", r)) {
            cJSON_Delete(nm);
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            break;
        }
        if (from && !strcmp(from, "function_call")) { /* the value is the call, as JSON */
            cJSON *calls = cJSON_CreateArray();
            if (!calls || !cJSON_IsString(content) || !add_tool_calls(calls, content->valuestring)) {
                cJSON_Delete(calls);
                cJSON_Delete(nm);
                rc = st_errorf(err, ST_ERR_FORMAT, "%s: messages[%d]: a function_call turn's "
                               "value is not a JSON object with a \"name\" (or a list of them)",
                               where, i);
                break;
            }
            cJSON_AddStringToObject(nm, "content", "");
            cJSON_AddItemToObject(nm, "tool_calls", calls);
        } else if ((rc = put_content(nm, content, where, i, err))) {
            cJSON_Delete(nm);
            break;
        }
        for (const cJSON *f = m->child; f; f = f->next) /* keep tool_calls, name, reasoning, ... */
            if (strcmp(f->string, "role") && strcmp(f->string, "content") &&
                strcmp(f->string, "from") && strcmp(f->string, "value") &&
                strcmp(f->string, "loss_weight") && !cJSON_GetObjectItemCaseSensitive(nm, f->string))
                cJSON_AddItemToObject(nm, f->string, cJSON_Duplicate(f, 1));
        cJSON_AddItemToArray(arr, nm);
        /* loss_weight: 0 (not trained) or 1; a fraction cannot weigh tokens here */
        const cJSON *lw = cJSON_GetObjectItem(m, "loss_weight"); /* null: absent */
        int train = !(cJSON_IsFalse(lw) || (cJSON_IsNumber(lw) && lw->valuedouble == 0));
        if (lw && !cJSON_IsNull(lw) && !cJSON_IsBool(lw) &&
            !(cJSON_IsNumber(lw) && (lw->valuedouble == 0 || lw->valuedouble == 1))) {
            rc = st_errorf(err, ST_ERR_UNSUPPORTED, "%s: messages[%d].loss_weight must be 0 or 1",
                           where, i);
            break;
        }
        w[i + add_sys] = (uint8_t)train;
    }
    if (rc) {
        cJSON_Delete(arr);
        st_free(w);
        return rc;
    }
    if (add_sys) w[0] = 1;
    *out = arr;
    *weight = w;
    return ST_OK;
}

static enum st_status chat_example(struct st_example *ex, const cJSON *msgs, const cJSON *tools,
                                   const cJSON *system, const char *where, const struct st_tokenizer *tok,
                                   const struct st_chat_template *tmpl,
                                   const struct st_example_options *o, struct st_error *err) {
    if (!tmpl && o->tmpl_error)
        return st_errorf(err, ST_ERR_FORMAT, "%s: the model's chat template does not load: %s",
                         where, o->tmpl_error);
    if (!tmpl)
        return st_errorf(err, ST_ERR_UNSUPPORTED, "%s: a chat record needs the model's chat "
                         "template (tokenizer_config.json chat_template or chat_template.jinja)",
                         where);
    cJSON *norm = NULL;
    uint8_t *weight = NULL;
    enum st_status rc = normalise_messages(msgs, system, &norm, &weight, where, err);
    if (rc) return rc;
    char *mj = cJSON_PrintUnformatted(norm), *tj = tools ? cJSON_PrintUnformatted(tools) : NULL;
    cJSON_Delete(norm);
    char *text = NULL;
    size_t len = 0, n_spans = 0;
    struct st_chat_span *spans = NULL;
    if (!mj) rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
    if (!rc) {
        struct st_chat_input in = {0};
        in.messages_json = mj;
        in.tools_json = tj;
        /* a template without its own bos/eos (e.g. a bare chat_template.jinja) gets the tokenizer's */
        if (!st_chat_template_bos(tmpl) && st_tokenizer_bos_id(tok) >= 0)
            in.bos_token = st_tokenizer_id_to_token(tok, st_tokenizer_bos_id(tok));
        if (!st_chat_template_eos(tmpl) && st_tokenizer_eos_id(tok) >= 0)
            in.eos_token = st_tokenizer_id_to_token(tok, st_tokenizer_eos_id(tok));
        rc = st_chat_render_spans(tmpl, &in, &text, &len, &spans, &n_spans, err);
        if (rc) st_error_prefix(err, "%s: ", where);
    }
    struct st_ids v = {0};
    if (!rc) rc = st_tokenizer_encode(tok, text, len, 0, &v, err);
    for (size_t i = 0; !rc && i < v.n; i++) {
        int trained = o->train_on_prompt;
        for (size_t k = 0; !trained && k < n_spans; k++)
            trained = weight[spans[k].message] && v.offsets[i] >= 0 &&
                      (size_t)v.offsets[i] >= spans[k].begin && (size_t)v.offsets[i] < spans[k].end;
        if (ex_push(ex, v.ids[i], trained ? v.ids[i] : -100))
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
    }
    st_ids_free(&v);
    st_free(text);
    st_free(spans);
    st_free(weight);
    cJSON_free(mj);
    cJSON_free(tj);
    return rc;
}

enum st_status st_example_from_json(struct st_example *ex, const char *json, size_t len,
                                    const char *where, const struct st_tokenizer *tok,
                                    const struct st_chat_template *tmpl,
                                    const struct st_model_config *cfg,
                                    const struct st_example_options *o, struct st_error *err) {
    ex->n = 0;
    long z = st_json_nul_escape(json, len);
    if (z >= 0)
        return st_errorf(err, ST_ERR_FORMAT, "%s: byte %ld: a string holds \\u0000 (a NUL "
                         "character), which is not supported", where, z);
    cJSON *r = cJSON_ParseWithLength(json, len);
    if (!r || !cJSON_IsObject(r)) {
        cJSON_Delete(r);
        return st_errorf(err, ST_ERR_FORMAT, "%s: not a JSON object", where);
    }
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(r, o->text_field);
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(r, o->prompt_field);
    const cJSON *compl = cJSON_GetObjectItemCaseSensitive(r, o->completion_field);
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(r, o->messages_field);
    if (!cJSON_IsArray(msgs)) msgs = cJSON_GetObjectItemCaseSensitive(r, "conversations");
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(r, "ids");
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(r, o->tools_field);
    const cJSON *system = cJSON_GetObjectItemCaseSensitive(r, "system");
    cJSON *tools_parsed = NULL;
    enum st_status rc = ST_OK;
    if (cJSON_IsString(tools)) { /* LLaMA-Factory stores the list as JSON text */
        int empty = !*tools->valuestring;
        tools = tools_parsed = empty ? NULL : cJSON_Parse(tools->valuestring);
        if (!empty && !cJSON_IsArray(tools)) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: \"%s\" is a string that is not a JSON list",
                           where, o->tools_field);
            goto done;
        }
    } else if (tools && !cJSON_IsArray(tools) && !cJSON_IsNull(tools)) {
        rc = st_errorf(err, ST_ERR_FORMAT, "%s: \"%s\" is not a list", where, o->tools_field);
        goto done;
    }
    if (cJSON_IsArray(tools) && cJSON_GetArraySize(tools) == 0) tools = NULL;
    if (!cJSON_IsArray(tools)) tools = NULL;
    enum st_data_format f = o->format;
    if (f == ST_FMT_AUTO) {
        if (cJSON_IsArray(msgs)) f = ST_FMT_CHAT;
        else if (cJSON_IsString(prompt) && cJSON_IsString(compl)) f = ST_FMT_COMPLETIONS;
        else if (cJSON_IsString(text)) f = ST_FMT_TEXT;
        else if (cJSON_IsArray(ids)) f = ST_FMT_IDS;
        else {
            rc = st_errorf(err, ST_ERR_FORMAT,
                           "%s: cannot tell the format: no \"%s\" list, \"%s\"+\"%s\" strings, "
                           "\"%s\" string or \"ids\" list (set the field names with --text-field "
                           "etc.)",
                           where, o->messages_field, o->prompt_field, o->completion_field,
                           o->text_field);
            goto done;
        }
    }
    int32_t eos = eos_id(tok, cfg);
    switch (f) {
    case ST_FMT_TEXT:
        if (!cJSON_IsString(text)) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: no \"%s\" string", where, o->text_field);
            break;
        }
        if (!tok) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: a text record needs tokenizer.json", where);
            break;
        }
        rc = encode_masked(ex, tok, text->valuestring, strlen(text->valuestring), 1, 0, 1, where, err);
        if (!rc && o->add_eos && eos >= 0 && (ex->n == 0 || ex->ids[ex->n - 1] != eos) &&
            ex_push(ex, eos, eos))
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
        break;
    case ST_FMT_COMPLETIONS: {
        if (!cJSON_IsString(prompt) || !cJSON_IsString(compl)) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: needs \"%s\" and \"%s\" strings", where,
                           o->prompt_field, o->completion_field);
            break;
        }
        if (!tok) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: a completion record needs tokenizer.json", where);
            break;
        }
        if (tmpl || o->tmpl_error) { /* as a two-turn chat, like mlx-lm */
            cJSON *m = cJSON_CreateArray(), *u = cJSON_CreateObject(), *a = cJSON_CreateObject();
            cJSON_AddStringToObject(u, "role", "user");
            cJSON_AddStringToObject(u, "content", prompt->valuestring);
            cJSON_AddStringToObject(a, "role", "assistant");
            cJSON_AddStringToObject(a, "content", compl->valuestring);
            cJSON_AddItemToArray(m, u);
            cJSON_AddItemToArray(m, a);
            rc = chat_example(ex, m, NULL, NULL, where, tok, tmpl, o, err);
            cJSON_Delete(m);
            break;
        }
        size_t pl = strlen(prompt->valuestring), cl = strlen(compl->valuestring);
        char *t = st_malloc(pl + cl + 1);
        if (!t) {
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            break;
        }
        memcpy(t, prompt->valuestring, pl);
        memcpy(t + pl, compl->valuestring, cl + 1);
        rc = encode_masked(ex, tok, t, pl + cl, 1, pl, o->train_on_prompt, where, err);
        st_free(t);
        if (!rc && o->add_eos && eos >= 0 && (ex->n == 0 || ex->ids[ex->n - 1] != eos) &&
            ex_push(ex, eos, eos))
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
        break;
    }
    case ST_FMT_CHAT:
        if (!cJSON_IsArray(msgs)) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: no \"%s\" list", where, o->messages_field);
            break;
        }
        if (!tok) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: a chat record needs tokenizer.json", where);
            break;
        }
        rc = chat_example(ex, msgs, tools, system, where, tok, tmpl, o, err);
        break;
    case ST_FMT_IDS: {
        if (!cJSON_IsArray(ids)) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: no \"ids\" list", where);
            break;
        }
        int i = 0;
        for (const cJSON *x = ids->child; x && !rc; x = x->next, i++) {
            if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble >= cfg->vocab_size ||
                x->valuedouble != (double)(int32_t)x->valuedouble)
                rc = st_errorf(err, ST_ERR_FORMAT, "%s: ids[%d] is not a token id in [0, %d)",
                               where, i, cfg->vocab_size);
            else if (ex_push(ex, (int32_t)x->valuedouble, (int32_t)x->valuedouble))
                rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
        }
        break;
    }
    default:
        break;
    }
    for (size_t i = 0; !rc && i < ex->n; i++)
        if (ex->ids[i] < 0 || ex->ids[i] >= cfg->vocab_size)
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: token id %d is outside the model's vocabulary "
                           "of %d (tokenizer and model do not match?)", where, ex->ids[i],
                           cfg->vocab_size);
    if (!rc && o->max_len > 0 && ex->n > (size_t)o->max_len) ex->n = (size_t)o->max_len;
done:
    cJSON_Delete(tools_parsed);
    cJSON_Delete(r);
    return rc;
}

/* ---------------------------------------------------------------- packer */

struct st_packer {
    size_t B, T;
    int pack;
    int32_t pad;
    struct st_example *pend; /* examples of the batch being built, in order */
    size_t n_pend, cap_pend;
    int complete;            /* pend[0..n_pend-1) form a complete batch; the last one overflowed */
};

enum st_status st_packer_init(struct st_packer **out, size_t B, size_t T, int pack, int32_t pad,
                              struct st_error *err) {
    *out = st_calloc(1, sizeof **out);
    if (!*out) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    (*out)->B = B;
    (*out)->T = T;
    (*out)->pack = pack;
    (*out)->pad = pad;
    return ST_OK;
}

void st_packer_free(struct st_packer *p) {
    if (!p) return;
    for (size_t i = 0; i < p->n_pend; i++) st_example_free(&p->pend[i]);
    st_free(p->pend);
    st_free(p);
}

/* Rows that the examples pend[0..n) occupy (greedy, in order); -1 if pend[n-1] starts row B. */
static size_t rows_used(const struct st_packer *p, size_t n) {
    if (!p->pack) return n;
    size_t rows = 0, fill = p->T; /* fill = used tokens of the current row (T: none open) */
    for (size_t i = 0; i < n; i++) {
        size_t len = p->pend[i].n;
        if (fill + len > p->T) {
            rows++;
            fill = 0;
        }
        fill += len;
    }
    return rows;
}

int st_packer_add(struct st_packer *p, const struct st_example *ex, struct st_error *err) {
    if (p->complete) return 1;
    if (p->n_pend == p->cap_pend) {
        size_t nc = p->cap_pend ? p->cap_pend * 2 : 16;
        struct st_example *a = st_realloc(p->pend, nc * sizeof *a);
        if (!a) {
            st_errorf(err, ST_ERR_NOMEM, "out of memory");
            return -1;
        }
        p->pend = a;
        p->cap_pend = nc;
    }
    struct st_example *c = &p->pend[p->n_pend];
    memset(c, 0, sizeof *c);
    size_t n = ex->n < p->T ? ex->n : p->T;
    c->ids = st_malloc((n ? n : 1) * sizeof *c->ids);
    c->labels = st_malloc((n ? n : 1) * sizeof *c->labels);
    if (!c->ids || !c->labels) {
        st_example_free(c);
        st_errorf(err, ST_ERR_NOMEM, "out of memory");
        return -1;
    }
    memcpy(c->ids, ex->ids, n * sizeof *c->ids);
    memcpy(c->labels, ex->labels, n * sizeof *c->labels);
    c->n = c->cap = n;
    p->n_pend++;
    /* complete when the rows needed exceed B (this example overflowed) or exactly B rows of one
     * example each without packing */
    if (rows_used(p, p->n_pend) > p->B) p->complete = 1;
    else if (!p->pack && p->n_pend == p->B) p->complete = 2;
    return p->complete ? 1 : 0;
}

int st_packer_take(struct st_packer *p, struct st_batch *out, int flush) {
    memset(out, 0, sizeof *out);
    size_t n; /* examples in this batch */
    if (p->complete == 1) n = p->n_pend - 1;
    else if (p->complete == 2 || (flush && p->n_pend)) n = p->n_pend;
    else return 0;
    size_t B = p->B, T = p->T;
    if (!p->pack) {
        T = 0;
        for (size_t i = 0; i < n; i++)
            if (p->pend[i].n > T) T = p->pend[i].n;
    }
    out->B = B;
    out->T = T;
    out->ids = st_malloc(B * T * sizeof(int32_t));
    out->targets = st_malloc(B * T * sizeof(int32_t));
    out->seg = p->pack ? st_malloc(B * T * sizeof(int32_t)) : NULL;
    if (!out->ids || !out->targets || (p->pack && !out->seg)) {
        st_batch_free(out);
        return 0;
    }
    for (size_t i = 0; i < B * T; i++) {
        out->ids[i] = p->pad;
        out->targets[i] = -100;
        if (out->seg) out->seg[i] = -1;
    }
    size_t row = 0, fill = 0;
    for (size_t i = 0; i < n; i++) {
        const struct st_example *e = &p->pend[i];
        if (p->pack) {
            if (fill + e->n > T) {
                row++;
                fill = 0;
            }
        } else {
            row = i;
            fill = 0;
        }
        for (size_t t = 0; t < e->n; t++) {
            size_t k = row * T + fill + t;
            out->ids[k] = e->ids[t];
            out->targets[k] = t + 1 < e->n ? e->labels[t + 1] : -100;
            if (out->seg) out->seg[k] = (int32_t)i;
            if (out->targets[k] >= 0) out->targets_n++;
        }
        out->tokens += e->n;
        fill += e->n;
    }
    /* drop the taken examples; keep the overflow one */
    for (size_t i = 0; i < n; i++) st_example_free(&p->pend[i]);
    memmove(p->pend, p->pend + n, (p->n_pend - n) * sizeof *p->pend);
    p->n_pend -= n;
    p->complete = 0;
    return 1;
}

size_t st_packer_pending(const struct st_packer *p, const struct st_example **out) {
    *out = p->pend;
    return p->n_pend;
}

void st_batch_free(struct st_batch *b) {
    st_free(b->ids);
    st_free(b->targets);
    st_free(b->seg);
    memset(b, 0, sizeof *b);
}
