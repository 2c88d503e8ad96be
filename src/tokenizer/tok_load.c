/* tok_load.c: tokenizer.json -> struct st_tokenizer.
 *
 * DESIGN: everything the pipeline will run is validated here: each component type is known (an
 * unknown one is refused by name, with its JSON path), every merge names two vocab tokens whose
 * concatenation is a vocab token, every id is in range. Regexes are compiled once with PCRE2
 * (UTF + Unicode properties + JIT), which speaks the Oniguruma dialect HF's patterns use. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "tok_internal.h"

#define MAX_TOKENIZER_JSON (512u << 20)

static const cJSON *get(const cJSON *o, const char *k) {
    return cJSON_GetObjectItemCaseSensitive(o, k);
}
static const char *get_str(const cJSON *o, const char *k) {
    const cJSON *v = get(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}
static int get_bool(const cJSON *o, const char *k, int def) {
    const cJSON *v = get(o, k);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

/* Compile a regex, or a literal string escaped as a regex. */
static enum st_status compile_pattern(pcre2_code **out, const cJSON *pattern, const char *where,
                                      const char *what, struct st_error *err) {
    const char *rx = get_str(pattern, "Regex");
    const char *lit = get_str(pattern, "String");
    if (!rx && !lit)
        return st_errorf(err, ST_ERR_FORMAT, "%s: %s.pattern needs \"Regex\" or \"String\"", what,
                         where);
    uint32_t opts = lit ? (PCRE2_UTF | PCRE2_LITERAL) : (PCRE2_UTF | PCRE2_UCP);
    int ec;
    PCRE2_SIZE eo;
    const char *src = rx ? rx : lit;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED, opts, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return st_errorf(err, ST_ERR_FORMAT, "%s: %s.pattern: regex error at offset %zu: %s", what,
                         where, (size_t)eo, (const char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if JIT fails */
    *out = re;
    return ST_OK;
}

/* ---------------------------------------------------------------- normalizers */

static void free_norm(struct normalizer *n) {
    if (!n) return;
    st_free(n->a);
    st_free(n->b);
    if (n->re) pcre2_code_free(n->re);
    for (int i = 0; i < n->n_items; i++) free_norm(&n->items[i]);
    st_free(n->items);
}

static enum st_status parse_norm(struct normalizer *n, const cJSON *j, const char *where,
                                 const char *what, struct st_error *err) {
    memset(n, 0, sizeof *n);
    const char *type = get_str(j, "type");
    if (!type) return st_errorf(err, ST_ERR_FORMAT, "%s: %s has no \"type\"", what, where);
    if (!strcmp(type, "NFC")) n->type = N_NFC;
    else if (!strcmp(type, "NFD")) n->type = N_NFD;
    else if (!strcmp(type, "NFKC")) n->type = N_NFKC;
    else if (!strcmp(type, "NFKD")) n->type = N_NFKD;
    else if (!strcmp(type, "Lowercase")) n->type = N_LOWER;
    else if (!strcmp(type, "Prepend")) {
        n->type = N_PREPEND;
        const char *p = get_str(j, "prepend");
        if (!p) return st_errorf(err, ST_ERR_FORMAT, "%s: %s.prepend missing", what, where);
        if (!(n->a = st_strdup(p))) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    } else if (!strcmp(type, "Replace")) {
        n->type = N_REPLACE;
        const char *c = get_str(j, "content");
        if (!c) return st_errorf(err, ST_ERR_FORMAT, "%s: %s.content missing", what, where);
        if (!(n->b = st_strdup(c))) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
        enum st_status rc = compile_pattern(&n->re, get(j, "pattern"), where, what, err);
        if (rc) return rc;
    } else if (!strcmp(type, "Strip")) {
        n->type = N_STRIP;
        n->strip_left = get_bool(j, "strip_left", 1);
        n->strip_right = get_bool(j, "strip_right", 1);
    } else if (!strcmp(type, "Sequence")) {
        n->type = N_SEQ;
        const cJSON *items = get(j, "normalizers");
        if (!cJSON_IsArray(items))
            return st_errorf(err, ST_ERR_FORMAT, "%s: %s.normalizers is not a list", what, where);
        int cnt = cJSON_GetArraySize(items);
        n->items = st_calloc((size_t)(cnt ? cnt : 1), sizeof *n->items);
        if (!n->items) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
        int i = 0;
        for (const cJSON *x = items->child; x; x = x->next, i++) {
            char w[256];
            snprintf(w, sizeof w, "%s.normalizers[%d]", where, i);
            n->n_items = i + 1;
            enum st_status rc = parse_norm(&n->items[i], x, w, what, err);
            if (rc) return rc;
        }
    } else {
        return st_errorf(err, ST_ERR_UNSUPPORTED,
                         "%s: %s: normalizer type \"%s\" is not supported (supported: NFC, NFD, "
                         "NFKC, NFKD, Lowercase, Prepend, Replace, Strip, Sequence)",
                         what, where, type);
    }
    return ST_OK;
}

/* ---------------------------------------------------------------- pre-tokenizers */

static void free_pre(struct pretok *p) {
    if (!p) return;
    if (p->re) pcre2_code_free(p->re);
    for (int i = 0; i < p->n_items; i++) free_pre(&p->items[i]);
    st_free(p->items);
}

static const char *GPT2_RE =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static enum st_status parse_prepend_scheme(const cJSON *j, int *out, const char *where,
                                           const char *what, struct st_error *err) {
    const char *ps = get_str(j, "prepend_scheme");
    if (ps) {
        if (!strcmp(ps, "always")) *out = 0;
        else if (!strcmp(ps, "first")) *out = 1;
        else if (!strcmp(ps, "never")) *out = 2;
        else return st_errorf(err, ST_ERR_FORMAT, "%s: %s.prepend_scheme \"%s\" is unknown", what,
                              where, ps);
    } else {
        *out = get_bool(j, "add_prefix_space", 1) ? 0 : 2; /* older files */
    }
    return ST_OK;
}

static enum st_status parse_pre(struct pretok *p, const cJSON *j, const char *where,
                                const char *what, struct st_error *err) {
    memset(p, 0, sizeof *p);
    const char *type = get_str(j, "type");
    if (!type) return st_errorf(err, ST_ERR_FORMAT, "%s: %s has no \"type\"", what, where);
    if (!strcmp(type, "Split")) {
        p->type = P_SPLIT;
        const char *b = get_str(j, "behavior");
        if (!b) return st_errorf(err, ST_ERR_FORMAT, "%s: %s.behavior missing", what, where);
        if (!strcmp(b, "Removed")) p->behavior = SB_REMOVED;
        else if (!strcmp(b, "Isolated")) p->behavior = SB_ISOLATED;
        else if (!strcmp(b, "MergedWithPrevious")) p->behavior = SB_MERGED_PREV;
        else if (!strcmp(b, "MergedWithNext")) p->behavior = SB_MERGED_NEXT;
        else if (!strcmp(b, "Contiguous")) p->behavior = SB_CONTIGUOUS;
        else return st_errorf(err, ST_ERR_FORMAT, "%s: %s.behavior \"%s\" is unknown", what, where, b);
        p->invert = get_bool(j, "invert", 0);
        return compile_pattern(&p->re, get(j, "pattern"), where, what, err);
    }
    if (!strcmp(type, "ByteLevel")) {
        p->type = P_BYTELEVEL;
        p->add_prefix_space = get_bool(j, "add_prefix_space", 1);
        p->use_regex = get_bool(j, "use_regex", 1);
        if (p->use_regex) {
            cJSON *pat = cJSON_CreateObject();
            if (!pat) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
            cJSON_AddStringToObject(pat, "Regex", GPT2_RE);
            enum st_status rc = compile_pattern(&p->re, pat, where, what, err);
            cJSON_Delete(pat);
            if (rc) return rc;
        }
        return ST_OK;
    }
    if (!strcmp(type, "Metaspace")) {
        p->type = P_METASPACE;
        const char *r = get_str(j, "replacement");
        if (!r) r = "\xe2\x96\x81";
        if (strlen(r) >= sizeof p->replacement)
            return st_errorf(err, ST_ERR_FORMAT, "%s: %s.replacement too long", what, where);
        strcpy(p->replacement, r);
        p->split = get_bool(j, "split", 1);
        return parse_prepend_scheme(j, &p->prepend_scheme, where, what, err);
    }
    if (!strcmp(type, "Digits")) {
        p->type = P_DIGITS;
        p->individual_digits = get_bool(j, "individual_digits", 0);
        const char *rx = p->individual_digits ? "\\p{N}" : "\\p{N}+";
        int ec;
        PCRE2_SIZE eo;
        p->re = pcre2_compile((PCRE2_SPTR)rx, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec, &eo,
                              NULL);
        if (!p->re) return st_errorf(err, ST_ERR_NOMEM, "cannot compile digits regex");
        p->behavior = SB_ISOLATED;
        return ST_OK;
    }
    if (!strcmp(type, "Sequence")) {
        p->type = P_SEQ;
        const cJSON *items = get(j, "pretokenizers");
        if (!cJSON_IsArray(items))
            return st_errorf(err, ST_ERR_FORMAT, "%s: %s.pretokenizers is not a list", what, where);
        int cnt = cJSON_GetArraySize(items);
        p->items = st_calloc((size_t)(cnt ? cnt : 1), sizeof *p->items);
        if (!p->items) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
        int i = 0;
        for (const cJSON *x = items->child; x; x = x->next, i++) {
            char w[256];
            snprintf(w, sizeof w, "%s.pretokenizers[%d]", where, i);
            p->n_items = i + 1;
            enum st_status rc = parse_pre(&p->items[i], x, w, what, err);
            if (rc) return rc;
        }
        return ST_OK;
    }
    return st_errorf(err, ST_ERR_UNSUPPORTED,
                     "%s: %s: pre-tokenizer type \"%s\" is not supported (supported: Split, "
                     "ByteLevel, Metaspace, Digits, Sequence)",
                     what, where, type);
}

/* ---------------------------------------------------------------- decoders */

static void free_dec(struct decoder *d) {
    if (!d) return;
    st_free(d->a);
    st_free(d->b);
    for (int i = 0; i < d->n_items; i++) free_dec(&d->items[i]);
    st_free(d->items);
}

static enum st_status parse_dec(struct decoder *d, const cJSON *j, const char *where,
                                const char *what, struct st_error *err) {
    memset(d, 0, sizeof *d);
    const char *type = get_str(j, "type");
    if (!type) return st_errorf(err, ST_ERR_FORMAT, "%s: %s has no \"type\"", what, where);
    if (!strcmp(type, "ByteLevel")) d->type = D_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) d->type = D_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse")) d->type = D_FUSE;
    else if (!strcmp(type, "Metaspace")) {
        d->type = D_METASPACE;
        const char *r = get_str(j, "replacement");
        if (!r) r = "\xe2\x96\x81";
        if (strlen(r) >= sizeof d->replacement)
            return st_errorf(err, ST_ERR_FORMAT, "%s: %s.replacement too long", what, where);
        strcpy(d->replacement, r);
        return parse_prepend_scheme(j, &d->prepend_scheme, where, what, err);
    } else if (!strcmp(type, "Replace")) {
        d->type = D_REPLACE;
        const cJSON *pat = get(j, "pattern");
        const char *lit = get_str(pat, "String"), *c = get_str(j, "content");
        if (!lit || !c)
            return st_errorf(err, ST_ERR_UNSUPPORTED,
                             "%s: %s: Replace decoder needs a \"String\" pattern and content", what,
                             where);
        d->a = st_strdup(lit);
        d->b = st_strdup(c);
        if (!d->a || !d->b) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    } else if (!strcmp(type, "Strip")) {
        d->type = D_STRIP;
        const char *c = get_str(j, "content");
        if (!c || strlen(c) >= sizeof d->strip_content)
            return st_errorf(err, ST_ERR_FORMAT, "%s: %s.content missing", what, where);
        strcpy(d->strip_content, c);
        const cJSON *s = get(j, "start"), *e = get(j, "stop");
        d->strip_start = cJSON_IsNumber(s) ? s->valueint : 0;
        d->strip_stop = cJSON_IsNumber(e) ? e->valueint : 0;
    } else if (!strcmp(type, "Sequence")) {
        d->type = D_SEQ;
        const cJSON *items = get(j, "decoders");
        if (!cJSON_IsArray(items))
            return st_errorf(err, ST_ERR_FORMAT, "%s: %s.decoders is not a list", what, where);
        int cnt = cJSON_GetArraySize(items);
        d->items = st_calloc((size_t)(cnt ? cnt : 1), sizeof *d->items);
        if (!d->items) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
        int i = 0;
        for (const cJSON *x = items->child; x; x = x->next, i++) {
            char w[256];
            snprintf(w, sizeof w, "%s.decoders[%d]", where, i);
            d->n_items = i + 1;
            enum st_status rc = parse_dec(&d->items[i], x, w, what, err);
            if (rc) return rc;
        }
    } else {
        return st_errorf(err, ST_ERR_UNSUPPORTED,
                         "%s: %s: decoder type \"%s\" is not supported (supported: ByteLevel, "
                         "Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence)",
                         what, where, type);
    }
    return ST_OK;
}

/* ---------------------------------------------------------------- model */

static void byte_level_tables(struct st_tokenizer *t) {
    int bs[256], n = 0, in[256] = {0};
    for (int b = '!'; b <= '~'; b++) in[b] = 1;
    for (int b = 0xA1; b <= 0xAC; b++) in[b] = 1;
    for (int b = 0xAE; b <= 0xFF; b++) in[b] = 1;
    for (int i = 0; i < 512; i++) t->bl_dec[i] = -1;
    for (int b = 0; b < 256; b++) {
        int cp = in[b] ? b : 256 + n++;
        bs[b] = cp;
        t->bl_enc_len[b] = (uint8_t)utf8_encode((uint32_t)cp, t->bl_enc[b]);
        t->bl_dec[cp] = (int16_t)b;
    }
    (void)bs;
}

static enum st_status parse_merge(const cJSON *m, const char **a, size_t *al, const char **b,
                                  size_t *bl) {
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring, *sp = strchr(s, ' ');
        if (!sp || sp == s || !sp[1] || strchr(sp + 1, ' ')) return ST_ERR_FORMAT;
        *a = s;
        *al = (size_t)(sp - s);
        *b = sp + 1;
        *bl = strlen(sp + 1);
        return ST_OK;
    }
    if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
        cJSON_IsString(m->child->next)) {
        *a = m->child->valuestring;
        *al = strlen(*a);
        *b = m->child->next->valuestring;
        *bl = strlen(*b);
        return ST_OK;
    }
    return ST_ERR_FORMAT;
}

static enum st_status parse_model(struct st_tokenizer *t, const cJSON *model, const cJSON *added,
                                  const char *what, struct st_error *err) {
    const char *type = get_str(model, "type");
    if (!type || strcmp(type, "BPE") != 0)
        return st_errorf(err, ST_ERR_UNSUPPORTED,
                         "%s: model.type \"%s\" is not supported (only BPE; WordPiece, Unigram and "
                         "WordLevel are not)",
                         what, type ? type : "(missing)");
    if (cJSON_IsNumber(get(model, "dropout")) && get(model, "dropout")->valuedouble > 0)
        st_log(ST_LOG_WARN, "%s: model.dropout is ignored (no BPE dropout at encode time)", what);
    const cJSON *vocab = get(model, "vocab"), *merges = get(model, "merges");
    if (!cJSON_IsObject(vocab)) return st_errorf(err, ST_ERR_FORMAT, "%s: model.vocab is not an object", what);
    if (merges && !cJSON_IsArray(merges))
        return st_errorf(err, ST_ERR_FORMAT, "%s: model.merges is not a list", what);
    /* vocab size = max id + 1 over vocab and added tokens */
    int64_t max_id = -1;
    for (const cJSON *v = vocab->child; v; v = v->next) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 16777216 ||
            v->valuedouble != (double)(int32_t)v->valuedouble)
            return st_errorf(err, ST_ERR_FORMAT, "%s: model.vocab[\"%s\"] is not a valid id",
                             what, v->string);
        if (v->valueint > max_id) max_id = v->valueint;
    }
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next) {
        const cJSON *id = get(a, "id");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > 16777216)
            return st_errorf(err, ST_ERR_FORMAT, "%s: added_tokens entry has no valid \"id\"", what);
        if (id->valueint > max_id) max_id = id->valueint;
    }
    t->vocab_size = (int32_t)(max_id + 1);
    t->id_to_str = st_calloc((size_t)(t->vocab_size ? t->vocab_size : 1), sizeof *t->id_to_str);
    t->is_special = st_calloc((size_t)(t->vocab_size ? t->vocab_size : 1), 1);
    if (!t->id_to_str || !t->is_special) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    /* all vocab strings live in one arena; id_to_str and the vocab map point into it */
    size_t total = 1;
    for (const cJSON *v = vocab->child; v; v = v->next) total += strlen(v->string) + 1;
    t->arena = st_malloc(total);
    if (!t->arena) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    char *ap = t->arena;
    for (const cJSON *v = vocab->child; v; v = v->next) {
        size_t kl = strlen(v->string);
        memcpy(ap, v->string, kl + 1);
        if (!t->id_to_str[v->valueint]) t->id_to_str[v->valueint] = ap;
        if (strmap_get(&t->vocab, ap, (uint32_t)kl) >= 0)
            return st_errorf(err, ST_ERR_FORMAT, "%s: model.vocab has \"%s\" twice", what, ap);
        if (strmap_put(&t->vocab, ap, (uint32_t)kl, v->valueint))
            return st_errorf(err, ST_ERR_NOMEM, "out of memory");
        ap += kl + 1;
    }
    t->byte_fallback = get_bool(model, "byte_fallback", 0);
    t->fuse_unk = get_bool(model, "fuse_unk", 0);
    t->ignore_merges = get_bool(model, "ignore_merges", 0);
    const char *cp = get_str(model, "continuing_subword_prefix");
    const char *ews = get_str(model, "end_of_word_suffix");
    t->cont_prefix = (cp && *cp) ? st_strdup(cp) : NULL;
    t->eow_suffix = (ews && *ews) ? st_strdup(ews) : NULL;
    if ((cp && *cp && !t->cont_prefix) || (ews && *ews && !t->eow_suffix))
        return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    const char *unk = get_str(model, "unk_token");
    t->unk_id = -1;
    if (unk) {
        t->unk_id = strmap_get(&t->vocab, unk, (uint32_t)strlen(unk));
        if (t->unk_id < 0)
            return st_errorf(err, ST_ERR_FORMAT, "%s: model.unk_token \"%s\" is not in the vocab",
                             what, unk);
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_ids[b] = strmap_get(&t->vocab, name, 6);
    }
    /* merges */
    size_t pl = t->cont_prefix ? strlen(t->cont_prefix) : 0;
    int rank = 0;
    char buf[1024];
    for (const cJSON *m = merges ? merges->child : NULL; m; m = m->next, rank++) {
        const char *a, *b;
        size_t al, bl;
        if (parse_merge(m, &a, &al, &b, &bl))
            return st_errorf(err, ST_ERR_FORMAT,
                             "%s: model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]", what, rank);
        int32_t ia = strmap_get(&t->vocab, a, (uint32_t)al), ib = strmap_get(&t->vocab, b, (uint32_t)bl);
        if (ia < 0 || ib < 0)
            return st_errorf(err, ST_ERR_FORMAT, "%s: model.merges[%d]: \"%.*s\" is not in the vocab",
                             what, rank, (int)(ia < 0 ? al : bl), ia < 0 ? a : b);
        /* merged token = a + b without b's continuing-subword prefix */
        size_t skip = (pl && bl >= pl && !memcmp(b, t->cont_prefix, pl)) ? pl : 0;
        if (al + bl - skip >= sizeof buf)
            return st_errorf(err, ST_ERR_FORMAT, "%s: model.merges[%d] is too long", what, rank);
        memcpy(buf, a, al);
        memcpy(buf + al, b + skip, bl - skip);
        int32_t inew = strmap_get(&t->vocab, buf, (uint32_t)(al + bl - skip));
        if (inew < 0)
            return st_errorf(err, ST_ERR_FORMAT,
                             "%s: model.merges[%d]: the merged token \"%.*s\" is not in the vocab",
                             what, rank, (int)(al + bl - skip), buf);
        uint64_t key = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib, old;
        if (u64map_get(&t->merges, key, &old)) continue; /* first (highest priority) wins */
        if (u64map_put(&t->merges, key, ((uint64_t)(uint32_t)rank << 32) | (uint32_t)inew))
            return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    }
    return ST_OK;
}

/* ---------------------------------------------------------------- added tokens */

static enum st_status trie_add(struct st_tokenizer *t, int which, const char *s, uint32_t len,
                               int32_t token_index) {
    if (t->trie_nodes[which] == 0) t->trie_nodes[which] = 1; /* root */
    size_t node = 0;
    for (uint32_t i = 0; i < len; i++) {
        uint64_t key = ((uint64_t)node << 8) | (unsigned char)s[i], child;
        if (u64map_get(&t->trie[which], key, &child)) {
            node = (size_t)child;
            continue;
        }
        child = t->trie_nodes[which]++;
        if (u64map_put(&t->trie[which], key, child)) return ST_ERR_NOMEM;
        node = (size_t)child;
    }
    if (t->trie_nodes[which] > t->trie_cap[which]) {
        size_t nc = t->trie_cap[which] ? t->trie_cap[which] : 256;
        while (nc < t->trie_nodes[which]) nc *= 2;
        int32_t *term = st_realloc(t->trie_term[which], nc * sizeof *term);
        if (!term) return ST_ERR_NOMEM;
        memset(term + t->trie_cap[which], 0, (nc - t->trie_cap[which]) * sizeof *term);
        t->trie_term[which] = term;
        t->trie_cap[which] = nc;
    }
    t->trie_term[which][node] = token_index + 1;
    return ST_OK;
}

static enum st_status parse_added(struct st_tokenizer *t, const cJSON *added, const char *what,
                                  struct st_error *err) {
    int n = added ? cJSON_GetArraySize(added) : 0;
    t->added = st_calloc((size_t)(n ? n : 1), sizeof *t->added);
    if (!t->added) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    int i = 0;
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next, i++) {
        const char *content = get_str(a, "content");
        if (!content || !*content)
            return st_errorf(err, ST_ERR_FORMAT, "%s: added_tokens[%d] has no \"content\"", what, i);
        struct added_token *at = &t->added[t->n_added];
        at->id = get(a, "id")->valueint;
        at->len = (uint32_t)strlen(content);
        at->content = st_strdup(content);
        if (!at->content) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
        at->special = (uint8_t)get_bool(a, "special", 0);
        at->lstrip = (uint8_t)get_bool(a, "lstrip", 0);
        at->rstrip = (uint8_t)get_bool(a, "rstrip", 0);
        at->single_word = (uint8_t)get_bool(a, "single_word", 0);
        at->normalized = (uint8_t)get_bool(a, "normalized", !at->special);
        t->n_added++;
        /* an added token's string is its id's string, even where the vocab has another */
        t->id_to_str[at->id] = at->content;
        if (at->special) t->is_special[at->id] = 1;
        if (trie_add(t, at->normalized ? 1 : 0, content, at->len, t->n_added - 1))
            return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    }
    return ST_OK;
}

/* ---------------------------------------------------------------- post-processor */

static int32_t token_id(const struct st_tokenizer *t, const char *s) {
    for (int i = 0; i < t->n_added; i++)
        if (!strcmp(t->added[i].content, s)) return t->added[i].id;
    return strmap_get(&t->vocab, s, (uint32_t)strlen(s));
}

static enum st_status parse_post(struct st_tokenizer *t, const cJSON *pp, const char *where,
                                 const char *what, struct st_error *err) {
    if (!pp || cJSON_IsNull(pp)) return ST_OK;
    const char *type = get_str(pp, "type");
    if (!type) return st_errorf(err, ST_ERR_FORMAT, "%s: %s has no \"type\"", what, where);
    if (!strcmp(type, "ByteLevel")) return ST_OK; /* offsets only */
    if (!strcmp(type, "Sequence")) {
        const cJSON *items = get(pp, "processors");
        int i = 0;
        for (const cJSON *x = cJSON_IsArray(items) ? items->child : NULL; x; x = x->next, i++) {
            char w[256];
            snprintf(w, sizeof w, "%s.processors[%d]", where, i);
            enum st_status rc = parse_post(t, x, w, what, err);
            if (rc) return rc;
        }
        return ST_OK;
    }
    if (strcmp(type, "TemplateProcessing") != 0)
        return st_errorf(err, ST_ERR_UNSUPPORTED,
                         "%s: %s: post-processor type \"%s\" is not supported (supported: "
                         "TemplateProcessing, ByteLevel, Sequence)",
                         what, where, type);
    const cJSON *single = get(pp, "single"), *specials = get(pp, "special_tokens");
    if (!cJSON_IsArray(single))
        return st_errorf(err, ST_ERR_FORMAT, "%s: %s.single is not a list", what, where);
    int n = cJSON_GetArraySize(single);
    st_free(t->tmpl);
    t->tmpl = st_calloc((size_t)(n ? n : 1), sizeof *t->tmpl);
    if (!t->tmpl) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    t->n_tmpl = 0;
    for (const cJSON *it = single->child; it; it = it->next) {
        struct tmpl_item *ti = &t->tmpl[t->n_tmpl];
        const cJSON *sp = get(it, "SpecialToken"), *sq = get(it, "Sequence");
        if (sq) {
            ti->is_sequence = 1;
        } else if (sp) {
            const char *name = get_str(sp, "id");
            const cJSON *def = name ? get(specials, name) : NULL;
            const cJSON *ids = def ? get(def, "ids") : NULL;
            if (!name) return st_errorf(err, ST_ERR_FORMAT, "%s: %s.single: SpecialToken without id", what, where);
            if (cJSON_IsArray(ids)) {
                for (const cJSON *x = ids->child; x && ti->n_ids < 4; x = x->next) {
                    if (!cJSON_IsNumber(x) || x->valueint < 0 || x->valueint >= t->vocab_size)
                        return st_errorf(err, ST_ERR_FORMAT, "%s: %s.special_tokens.%s: bad id",
                                         what, where, name);
                    ti->ids[ti->n_ids++] = x->valueint;
                }
            } else {
                int32_t id = token_id(t, name);
                if (id < 0)
                    return st_errorf(err, ST_ERR_FORMAT, "%s: %s: special token \"%s\" is unknown",
                                     what, where, name);
                ti->ids[ti->n_ids++] = id;
            }
        } else {
            return st_errorf(err, ST_ERR_FORMAT, "%s: %s.single has an item that is neither "
                             "SpecialToken nor Sequence", what, where);
        }
        t->n_tmpl++;
    }
    return ST_OK;
}

/* ---------------------------------------------------------------- load */

void st_tokenizer_free(struct st_tokenizer *t) {
    if (!t) return;
    strmap_free(&t->vocab);
    st_free(t->id_to_str); /* entries point into arena or added[].content */
    st_free(t->arena);
    st_free(t->is_special);
    u64map_free(&t->merges);
    st_free(t->cont_prefix);
    st_free(t->eow_suffix);
    for (int i = 0; i < t->n_added; i++) st_free(t->added[i].content);
    st_free(t->added);
    for (int w = 0; w < 2; w++) {
        u64map_free(&t->trie[w]);
        st_free(t->trie_term[w]);
    }
    free_norm(t->norm);
    st_free(t->norm);
    free_pre(t->pre);
    st_free(t->pre);
    free_dec(t->dec);
    st_free(t->dec);
    st_free(t->tmpl);
    st_free(t);
}

enum st_status st_tokenizer_parse(struct st_tokenizer **out, const char *json, size_t len,
                                  const char *what, struct st_error *err) {
    *out = NULL;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return st_errorf(err, ST_ERR_FORMAT, "%s: not valid JSON", what);
    struct st_tokenizer *t = st_calloc(1, sizeof *t);
    enum st_status rc = ST_OK;
    if (!t) {
        rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
        goto done;
    }
    t->bos_id = t->eos_id = -1;
    byte_level_tables(t);
    const cJSON *model = get(root, "model"), *added = get(root, "added_tokens");
    if (!cJSON_IsObject(model)) {
        rc = st_errorf(err, ST_ERR_FORMAT, "%s: no \"model\" object", what);
        goto done;
    }
    if (added && !cJSON_IsArray(added) && !cJSON_IsNull(added)) {
        rc = st_errorf(err, ST_ERR_FORMAT, "%s: added_tokens is not a list", what);
        goto done;
    }
    if (cJSON_IsNull(added)) added = NULL;
    if ((rc = parse_model(t, model, added, what, err))) goto done;
    if ((rc = parse_added(t, added, what, err))) goto done;
    const cJSON *nj = get(root, "normalizer"), *pj = get(root, "pre_tokenizer"),
                *dj = get(root, "decoder");
    if (nj && !cJSON_IsNull(nj)) {
        t->norm = st_calloc(1, sizeof *t->norm);
        if (!t->norm) {
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            goto done;
        }
        if ((rc = parse_norm(t->norm, nj, "normalizer", what, err))) goto done;
    }
    if (pj && !cJSON_IsNull(pj)) {
        t->pre = st_calloc(1, sizeof *t->pre);
        if (!t->pre) {
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            goto done;
        }
        if ((rc = parse_pre(t->pre, pj, "pre_tokenizer", what, err))) goto done;
    }
    if (dj && !cJSON_IsNull(dj)) {
        t->dec = st_calloc(1, sizeof *t->dec);
        if (!t->dec) {
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            goto done;
        }
        if ((rc = parse_dec(t->dec, dj, "decoder", what, err))) goto done;
    }
    if ((rc = parse_post(t, get(root, "post_processor"), "post_processor", what, err))) goto done;
    for (int i = 0; i < t->n_tmpl; i++) /* BOS = the first special of the template, if any */
        if (!t->tmpl[i].is_sequence && t->tmpl[i].n_ids && i == 0) t->bos_id = t->tmpl[i].ids[0];
done:
    cJSON_Delete(root);
    if (rc) {
        st_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return ST_OK;
}

/* bos/eos names from tokenizer_config.json: strings or {"content": ...} objects */
static void read_tokenizer_config(struct st_tokenizer *t, const char *dir) {
    char path[4096], *text;
    size_t len;
    struct st_error err;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (st_read_file(path, 64u << 20, &text, &len, &err)) return;
    cJSON *root = cJSON_ParseWithLength(text, len);
    st_free(text);
    if (!root) {
        st_log(ST_LOG_WARN, "%s: not valid JSON; ignoring it", path);
        return;
    }
    const char *keys[2] = {"bos_token", "eos_token"};
    int32_t *dst[2] = {&t->bos_id, &t->eos_id};
    for (int k = 0; k < 2; k++) {
        const cJSON *v = get(root, keys[k]);
        const char *s = cJSON_IsString(v) ? v->valuestring : get_str(v, "content");
        if (s) {
            int32_t id = token_id(t, s);
            if (id >= 0) *dst[k] = id;
        }
    }
    cJSON_Delete(root);
}

enum st_status st_tokenizer_load(struct st_tokenizer **out, const char *path,
                                 struct st_error *err) {
    char file[4096], dir[4096];
    size_t pl = strlen(path);
    if (pl >= 5 && !strcmp(path + pl - 5, ".json")) {
        snprintf(file, sizeof file, "%s", path);
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        else strcpy(dir, ".");
    } else {
        snprintf(file, sizeof file, "%s/tokenizer.json", path);
        snprintf(dir, sizeof dir, "%s", path);
    }
    char *text;
    size_t len;
    enum st_status rc = st_read_file(file, MAX_TOKENIZER_JSON, &text, &len, err);
    if (rc) return rc;
    rc = st_tokenizer_parse(out, text, len, file, err);
    st_free(text);
    if (rc) return rc;
    read_tokenizer_config(*out, dir);
    return ST_OK;
}

int st_tokenizer_vocab_size(const struct st_tokenizer *t) { return t->vocab_size; }
const char *st_tokenizer_id_to_token(const struct st_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->vocab_size ? t->id_to_str[id] : NULL;
}
int32_t st_tokenizer_token_to_id(const struct st_tokenizer *t, const char *s) {
    return token_id(t, s);
}
int st_tokenizer_is_special(const struct st_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->vocab_size && t->is_special[id];
}
int32_t st_tokenizer_bos_id(const struct st_tokenizer *t) { return t->bos_id; }
int32_t st_tokenizer_eos_id(const struct st_tokenizer *t) { return t->eos_id; }
