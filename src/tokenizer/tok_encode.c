/* tok_encode.c: encode text to ids, HF `tokenizers` semantics step by step.
 *
 * Pipeline per input: sanitize UTF-8 -> split out added tokens that match the raw text
 * (leftmost-longest, with lstrip/rstrip/single_word) -> normalize each remaining segment -> split
 * out added tokens that match normalized text -> pre-tokenize into pieces -> BPE each piece ->
 * post-processor template. Each byte carries the input offset it came from, so every token
 * knows where it starts. BPE merges pairs with a binary heap ordered by (merge rank, position),
 * the order HF uses, in O(n log n) per piece. */
#include <string.h>
#include <utf8proc.h>

#include "tok_internal.h"

struct work {
    const struct st_tokenizer *t;
    struct pool norm, pre_a, pre_b;
    struct st_ids *out;
    /* BPE scratch */
    int32_t *sym_id, *sym_prev, *sym_next, *sym_start, *sym_len;
    uint64_t *heap;
    size_t sym_cap, heap_n, heap_cap;
};

static int ids_push(struct st_ids *v, int32_t id, int32_t off) {
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 64;
        int32_t *a = st_realloc(v->ids, nc * sizeof *a);
        if (!a) return 1;
        v->ids = a;
        int32_t *o = st_realloc(v->offsets, nc * sizeof *o);
        if (!o) return 1;
        v->offsets = o;
        v->cap = nc;
    }
    v->ids[v->n] = id;
    v->offsets[v->n] = off;
    v->n++;
    return 0;
}

void st_ids_free(struct st_ids *v) {
    st_free(v->ids);
    st_free(v->offsets);
    memset(v, 0, sizeof *v);
}

/* ---------------------------------------------------------------- BPE */

static int sym_reserve(struct work *w, size_t n) {
    if (n <= w->sym_cap) return 0;
    size_t nc = w->sym_cap ? w->sym_cap : 64;
    while (nc < n) nc *= 2;
    int32_t **arrs[5] = {&w->sym_id, &w->sym_prev, &w->sym_next, &w->sym_start, &w->sym_len};
    for (int i = 0; i < 5; i++) {
        int32_t *p = st_realloc(*arrs[i], nc * sizeof *p);
        if (!p) return 1;
        *arrs[i] = p;
    }
    uint64_t *h = st_realloc(w->heap, nc * sizeof *h);
    if (!h) return 1;
    w->heap = h;
    w->sym_cap = w->heap_cap = nc;
    return 0;
}

/* heap of (rank << 32 | pos): smallest rank first, then leftmost position */
static void heap_push(struct work *w, uint64_t v) {
    size_t i = w->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (w->heap[p] <= v) break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = v;
}

static uint64_t heap_pop(struct work *w) {
    uint64_t top = w->heap[0], v = w->heap[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && w->heap[c + 1] < w->heap[c]) c++;
        if (w->heap[c] >= v) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = v;
    return top;
}

static void try_pair(struct work *w, int32_t pos) {
    int32_t nx = w->sym_next[pos];
    if (nx < 0) return;
    uint64_t m;
    uint64_t key = ((uint64_t)(uint32_t)w->sym_id[pos] << 32) | (uint32_t)w->sym_id[nx];
    if (u64map_get(&w->t->merges, key, &m)) heap_push(w, (m & 0xffffffff00000000ULL) | (uint32_t)pos);
}

/* BPE one piece s[0..n) whose bytes came from input offsets orig[]. */
static int bpe_piece(struct work *w, const char *s, size_t n, const int32_t *orig) {
    const struct st_tokenizer *t = w->t;
    if (n == 0) return 0;
    if (t->ignore_merges) {
        int32_t id = strmap_get(&t->vocab, s, (uint32_t)n);
        if (id >= 0) return ids_push(w->out, id, orig[0]);
    }
    /* each byte can become at most one symbol (byte fallback), plus one pending unk */
    if (sym_reserve(w, n + 1)) return 1;
    int32_t ns = 0;
    int32_t unk_start = -1, unk_len = 0;
    char buf[64];
    size_t pl = t->cont_prefix ? strlen(t->cont_prefix) : 0;
    size_t sl = t->eow_suffix ? strlen(t->eow_suffix) : 0;
#define ADD_SYM(id_, start_, len_)                                                            \
    do {                                                                                      \
        w->sym_id[ns] = (id_);                                                                \
        w->sym_start[ns] = (start_);                                                          \
        w->sym_len[ns] = (len_);                                                              \
        ns++;                                                                                 \
    } while (0)
    size_t i = 0;
    while (i < n) {
        int cl = utf8_valid_len((const unsigned char *)s + i, n - i);
        if (cl == 0) cl = 1; /* cannot happen after sanitizing; be safe */
        int first = i == 0, last = i + (size_t)cl == n;
        const char *cs = s + i;
        size_t csl = (size_t)cl;
        if ((!first && pl) || (last && sl)) {
            size_t k = 0;
            if (!first && pl && pl + csl + sl < sizeof buf) {
                memcpy(buf, t->cont_prefix, pl);
                k = pl;
            }
            memcpy(buf + k, cs, csl);
            k += csl;
            if (last && sl && k + sl < sizeof buf) {
                memcpy(buf + k, t->eow_suffix, sl);
                k += sl;
            }
            cs = buf;
            csl = k;
        }
        int32_t id = strmap_get(&t->vocab, cs, (uint32_t)csl);
        if (id >= 0) {
            if (unk_start >= 0) {
                ADD_SYM(t->unk_id, unk_start, unk_len);
                unk_start = -1;
            }
            ADD_SYM(id, (int32_t)i, cl);
        } else {
            int done = 0;
            if (t->byte_fallback) {
                int ok = 1;
                for (size_t k = 0; k < csl && ok; k++) ok = t->byte_ids[(unsigned char)cs[k]] >= 0;
                if (ok) {
                    if (sym_reserve(w, (size_t)ns + csl + 2)) return 1;
                    /* HF does not flush a pending unk here (it stays pending) */
                    for (size_t k = 0; k < csl; k++)
                        ADD_SYM(t->byte_ids[(unsigned char)cs[k]], (int32_t)i, 1);
                    done = 1;
                }
            }
            if (!done && t->unk_id >= 0) {
                if (unk_start >= 0 && t->fuse_unk) {
                    unk_len += cl;
                } else {
                    if (unk_start >= 0) ADD_SYM(t->unk_id, unk_start, unk_len);
                    unk_start = (int32_t)i;
                    unk_len = cl;
                }
            }
        }
        i += (size_t)cl;
    }
    if (unk_start >= 0) ADD_SYM(t->unk_id, unk_start, unk_len);
#undef ADD_SYM
    for (int32_t k = 0; k < ns; k++) {
        w->sym_prev[k] = k - 1;
        w->sym_next[k] = k + 1 < ns ? k + 1 : -1;
    }
    w->heap_n = 0;
    for (int32_t k = 0; k + 1 < ns; k++) try_pair(w, k);
    while (w->heap_n) {
        uint64_t top = heap_pop(w);
        int32_t pos = (int32_t)(top & 0xffffffffu);
        if (w->sym_len[pos] == 0) continue; /* merged away */
        int32_t nx = w->sym_next[pos];
        if (nx < 0) continue;
        uint64_t m, key = ((uint64_t)(uint32_t)w->sym_id[pos] << 32) | (uint32_t)w->sym_id[nx];
        if (!u64map_get(&t->merges, key, &m) || (m >> 32) != (top >> 32)) continue; /* stale */
        w->sym_id[pos] = (int32_t)(m & 0xffffffffu);
        w->sym_len[pos] += w->sym_len[nx];
        w->sym_len[nx] = 0;
        w->sym_next[pos] = w->sym_next[nx];
        if (w->sym_next[nx] >= 0) w->sym_prev[w->sym_next[nx]] = pos;
        if (w->sym_prev[pos] >= 0) try_pair(w, w->sym_prev[pos]);
        try_pair(w, pos);
    }
    for (int32_t k = 0; k >= 0 && k < ns; k = w->sym_next[k])
        if (ids_push(w->out, w->sym_id[k], orig[w->sym_start[k]])) return 1;
    return 0;
}

/* ---------------------------------------------------------------- normalizers */

/* Find the next regex match in s[from..n); returns 1 with [*ms, *me). */
static int re_next(pcre2_code *re, pcre2_match_data *md, const char *s, size_t n, size_t from,
                   size_t *ms, size_t *me) {
    if (from > n) return 0;
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc < 0) return 0;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    *ms = ov[0];
    *me = ov[1];
    return 1;
}

static size_t next_char(const char *s, size_t n, size_t i) {
    int l = utf8_valid_len((const unsigned char *)s + i, n - i);
    return i + (size_t)(l ? l : 1);
}

static int norm_unicode(const struct normalizer *nm, const char *s, size_t n, const int32_t *orig,
                        struct pool *out) {
    int ascii = 1;
    for (size_t i = 0; i < n && ascii; i++) ascii = (unsigned char)s[i] < 0x80;
    if (ascii) return pool_append(out, s, n, orig, 0);
    int opts = UTF8PROC_STABLE;
    if (nm->type == N_NFC || nm->type == N_NFKC) opts |= UTF8PROC_COMPOSE;
    else opts |= UTF8PROC_DECOMPOSE;
    if (nm->type == N_NFKC || nm->type == N_NFKD) opts |= UTF8PROC_COMPAT;
    /* Normalize runs that start at a starter (combining class 0) separately so each run keeps its
     * own offset; accept that only if it equals normalizing the whole piece. */
    utf8proc_uint8_t *whole = NULL;
    utf8proc_ssize_t wl = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &whole,
                                       (utf8proc_option_t)opts);
    if (wl < 0) return pool_append(out, s, n, orig, 0); /* cannot happen on valid UTF-8 */
    size_t base = out->n;
    int ok = 1;
    size_t i = 0;
    while (i < n && ok) {
        size_t j = next_char(s, n, i);
        while (j < n) {
            uint32_t cp;
            utf8_decode((const unsigned char *)s + j, &cp);
            if (utf8proc_get_property((utf8proc_int32_t)cp)->combining_class == 0 &&
                !(cp >= 0x1160 && cp <= 0x11FF)) /* Hangul V/T jamo compose with the L before */
                break;
            j = next_char(s, n, j);
        }
        utf8proc_uint8_t *r = NULL;
        utf8proc_ssize_t rl = utf8proc_map((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(j - i),
                                           &r, (utf8proc_option_t)opts);
        if (rl < 0) {
            ok = 0;
            break;
        }
        int same = (size_t)rl == j - i && !memcmp(r, s + i, j - i);
        int e = same ? pool_append(out, s + i, j - i, orig + i, 0)
                     : pool_append(out, (const char *)r, (size_t)rl, NULL, orig[i]);
        free(r); /* utf8proc allocates with malloc */
        if (e) {
            free(whole);
            return 1;
        }
        i = j;
    }
    if (!ok || out->n - base != (size_t)wl || memcmp(out->s + base, whole, (size_t)wl) != 0) {
        out->n = base; /* runs interacted: give the whole result the piece's first offset */
        int e = pool_append(out, (const char *)whole, (size_t)wl, NULL, n ? orig[0] : 0);
        free(whole);
        return e;
    }
    free(whole);
    return 0;
}

static int is_ws(uint32_t cp) {
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)cp);
    return cp == ' ' || (cp >= 9 && cp <= 13) || cp == 0x85 || p->category == UTF8PROC_CATEGORY_ZS ||
           p->category == UTF8PROC_CATEGORY_ZL || p->category == UTF8PROC_CATEGORY_ZP;
}

/* Apply normalizer nm to s[0..n) (with offsets), appending the result to out. */
static int normalize(const struct normalizer *nm, const char *s, size_t n, const int32_t *orig,
                     struct pool *out) {
    switch (nm->type) {
    case N_SEQ: {
        if (nm->n_items == 0) return pool_append(out, s, n, orig, 0);
        struct pool a = {0}, b = {0};
        int e = pool_append(&a, s, n, orig, 0);
        for (int k = 0; k < nm->n_items && !e; k++) {
            pool_clear(&b);
            e = normalize(&nm->items[k], a.s, a.n, a.orig, &b);
            struct pool tmp = a;
            a = b;
            b = tmp;
        }
        if (!e) e = pool_append(out, a.s, a.n, a.orig, 0);
        pool_free(&a);
        pool_free(&b);
        return e;
    }
    case N_PREPEND:
        if (n == 0) return 0;
        if (pool_append(out, nm->a, strlen(nm->a), NULL, orig[0])) return 1;
        return pool_append(out, s, n, orig, 0);
    case N_REPLACE: {
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(nm->re, NULL);
        if (!md) return 1;
        size_t pos = 0, ms, me, bl = strlen(nm->b);
        int e = 0;
        while (!e && re_next(nm->re, md, s, n, pos, &ms, &me)) {
            if (me == ms) { /* empty match: skip a char */
                if (ms >= n) break;
                size_t nx = next_char(s, n, ms);
                e = pool_append(out, s + pos, nx - pos, orig + pos, 0);
                pos = nx;
                continue;
            }
            e = pool_append(out, s + pos, ms - pos, orig + pos, 0) ||
                pool_append(out, nm->b, bl, NULL, orig[ms]);
            pos = me;
        }
        if (!e) e = pool_append(out, s + pos, n - pos, orig + pos, 0);
        pcre2_match_data_free(md);
        return e;
    }
    case N_LOWER: {
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            int l = utf8_decode((const unsigned char *)s + i, &cp);
            char enc[4];
            int el = utf8_encode((uint32_t)utf8proc_tolower((utf8proc_int32_t)cp), enc);
            if (pool_append(out, enc, (size_t)el, NULL, orig[i])) return 1;
            i += (size_t)l;
        }
        return 0;
    }
    case N_STRIP: {
        size_t b = 0, e = n;
        while (nm->strip_left && b < e) {
            uint32_t cp;
            int l = utf8_decode((const unsigned char *)s + b, &cp);
            if (!is_ws(cp)) break;
            b += (size_t)l;
        }
        while (nm->strip_right && e > b) {
            size_t k = e - 1;
            while (k > b && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
            uint32_t cp;
            utf8_decode((const unsigned char *)s + k, &cp);
            if (!is_ws(cp)) break;
            e = k;
        }
        return pool_append(out, s + b, e - b, orig + b, 0);
    }
    default:
        return norm_unicode(nm, s, n, orig, out);
    }
}

/* ---------------------------------------------------------------- pre-tokenizers */

struct seg {
    size_t b, e;
    int match;
};

/* Split piece [off, off+len) of `in` with regex re and HF's delimiter behaviour; push pieces to
 * out (copying bytes). */
static int split_piece(pcre2_code *re, enum split_behavior beh, int invert, const struct pool *in,
                       size_t off, size_t len, struct pool *out) {
    const char *s = in->s + off;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) return 1;
    size_t cap = 16, n = 0;
    struct seg *sg = st_malloc(cap * sizeof *sg);
    if (!sg) {
        pcre2_match_data_free(md);
        return 1;
    }
    int e = 0;
#define PUSH_SEG(b_, e_, m_)                                                                  \
    do {                                                                                      \
        if (n == cap) {                                                                       \
            struct seg *ns_ = st_realloc(sg, 2 * cap * sizeof *sg);                           \
            if (!ns_) { e = 1; break; }                                                       \
            sg = ns_;                                                                         \
            cap *= 2;                                                                         \
        }                                                                                     \
        sg[n++] = (struct seg){(b_), (e_), (m_)};                                             \
    } while (0)
    size_t prev = 0, pos = 0, ms, me;
    while (!e && pos <= len && re_next(re, md, s, len, pos, &ms, &me)) {
        if (prev != ms) PUSH_SEG(prev, ms, 0);
        PUSH_SEG(ms, me, 1);
        prev = me;
        pos = me > ms ? me : (ms < len ? next_char(s, len, ms) : len + 1);
    }
    if (!e && prev != len) PUSH_SEG(prev, len, 0);
#undef PUSH_SEG
    pcre2_match_data_free(md);
    if (invert)
        for (size_t k = 0; k < n; k++) sg[k].match = !sg[k].match;
    /* merge per behaviour (HF normalizer.rs split) */
    size_t m = 0;
    int prev_match = 0;
    if (beh == SB_MERGED_NEXT) {
        /* fold from the right */
        for (size_t k = n; k-- > 0;) {
            if (sg[k].match && !prev_match && m > 0) {
                sg[n - m].b = sg[k].b; /* the last pushed (leftmost so far) */
            } else {
                sg[n - 1 - m] = (struct seg){sg[k].b, sg[k].e, 0};
                m++;
            }
            prev_match = sg[k].match;
        }
        /* results live in sg[n-m .. n) in order */
        memmove(sg, sg + (n - m), m * sizeof *sg);
    } else {
        for (size_t k = 0; k < n; k++) {
            int im = sg[k].match;
            if (beh == SB_ISOLATED) {
                sg[m++] = (struct seg){sg[k].b, sg[k].e, 0};
            } else if (beh == SB_REMOVED) {
                sg[m++] = sg[k];
            } else if (beh == SB_CONTIGUOUS) {
                if (im == prev_match && m > 0) sg[m - 1].e = sg[k].e;
                else sg[m++] = (struct seg){sg[k].b, sg[k].e, 0};
            } else { /* merged with previous */
                if (im && !prev_match && m > 0) sg[m - 1].e = sg[k].e;
                else sg[m++] = (struct seg){sg[k].b, sg[k].e, 0};
            }
            prev_match = im;
        }
    }
    for (size_t k = 0; k < m && !e; k++) {
        if (sg[k].match || sg[k].e == sg[k].b) continue; /* removed or empty */
        size_t start = out->n;
        e = pool_append(out, s + sg[k].b, sg[k].e - sg[k].b, in->orig + off + sg[k].b, 0) ||
            pool_push_range(out, start, sg[k].e - sg[k].b, in->orig[off + sg[k].b]);
    }
    st_free(sg);
    return e;
}

static int pre_one(const struct st_tokenizer *t, const struct pretok *pt, struct pool *in,
                   struct pool *out) {
    for (size_t r = 0; r < in->nr; r++) {
        size_t off = in->r[r].off, len = in->r[r].len;
        if (len == 0) continue;
        const char *s = in->s + off;
        const int32_t *orig = in->orig + off;
        switch (pt->type) {
        case P_SPLIT:
        case P_DIGITS:
            if (split_piece(pt->re, pt->type == P_DIGITS ? SB_ISOLATED : pt->behavior, pt->invert,
                            in, off, len, out))
                return 1;
            break;
        case P_BYTELEVEL: {
            struct pool tmp = {0};
            int e = 0;
            if (pt->add_prefix_space && s[0] != ' ') e = pool_append(&tmp, " ", 1, NULL, orig[0]);
            e = e || pool_append(&tmp, s, len, orig, 0) || pool_push_range(&tmp, 0, tmp.n, orig[0]);
            struct pool split = {0};
            struct pool *src = &tmp;
            if (!e && pt->use_regex) {
                e = split_piece(pt->re, SB_ISOLATED, 0, &tmp, 0, tmp.n, &split);
                src = &split;
            }
            for (size_t k = 0; k < src->nr && !e; k++) {
                size_t start = out->n;
                for (size_t b = src->r[k].off; b < src->r[k].off + src->r[k].len && !e; b++) {
                    unsigned char c = (unsigned char)src->s[b];
                    e = pool_append(out, t->bl_enc[c], t->bl_enc_len[c], NULL, src->orig[b]);
                }
                if (!e) e = pool_push_range(out, start, out->n - start, src->orig[src->r[k].off]);
            }
            pool_free(&tmp);
            pool_free(&split);
            if (e) return 1;
            break;
        }
        case P_METASPACE: {
            struct pool tmp = {0};
            size_t rl = strlen(pt->replacement);
            int e = 0;
            int at_start = orig[0] == 0;
            int prepend = pt->prepend_scheme == 0 || (pt->prepend_scheme == 1 && at_start);
            /* HF checks after replacing spaces, so a leading space counts as the replacement */
            if (prepend && s[0] != ' ' && !(len >= rl && !memcmp(s, pt->replacement, rl)))
                e = pool_append(&tmp, pt->replacement, rl, NULL, orig[0]);
            for (size_t b = 0; b < len && !e; b++) {
                if (s[b] == ' ') e = pool_append(&tmp, pt->replacement, rl, NULL, orig[b]);
                else e = pool_append(&tmp, s + b, 1, orig + b, 0);
            }
            if (!e && !pt->split) {
                size_t start = out->n;
                e = pool_append(out, tmp.s, tmp.n, tmp.orig, 0) ||
                    pool_push_range(out, start, tmp.n, orig[0]);
            } else if (!e) {
                /* split on the replacement, each piece starting with it (MergedWithNext) */
                size_t b = 0;
                while (b < tmp.n && !e) {
                    size_t k = b + 1;
                    while (k < tmp.n && !(k + rl <= tmp.n && !memcmp(tmp.s + k, pt->replacement, rl))) k++;
                    if (b == 0 && !(tmp.n >= rl && !memcmp(tmp.s, pt->replacement, rl))) {
                        /* text before the first replacement */
                        k = 0;
                        while (k < tmp.n && !(k + rl <= tmp.n && !memcmp(tmp.s + k, pt->replacement, rl))) k++;
                    }
                    size_t start = out->n;
                    e = pool_append(out, tmp.s + b, k - b, tmp.orig + b, 0) ||
                        pool_push_range(out, start, k - b, tmp.orig[b]);
                    b = k;
                }
            }
            pool_free(&tmp);
            if (e) return 1;
            break;
        }
        case P_SEQ:
            break; /* handled by pretokenize */
        }
    }
    return 0;
}

/* Run a pre-tokenizer (possibly a sequence) over the pieces of in; result in out. */
static int pretokenize_all(const struct st_tokenizer *t, const struct pretok *pt, struct pool *in,
                           struct pool *out) {
    if (pt->type != P_SEQ) return pre_one(t, pt, in, out);
    struct pool a = {0}, b = {0};
    int e = pool_append(&a, in->s, in->n, in->orig, 0);
    for (size_t r = 0; r < in->nr && !e; r++) e = pool_push_range(&a, in->r[r].off, in->r[r].len, in->r[r].origin);
    for (int k = 0; k < pt->n_items && !e; k++) {
        pool_clear(&b);
        e = pretokenize_all(t, &pt->items[k], &a, &b);
        struct pool tmp = a;
        a = b;
        b = tmp;
    }
    for (size_t r = 0; r < a.nr && !e; r++) {
        size_t start = out->n;
        e = pool_append(out, a.s + a.r[r].off, a.r[r].len, a.orig + a.r[r].off, 0) ||
            pool_push_range(out, start, a.r[r].len, a.r[r].origin);
    }
    pool_free(&a);
    pool_free(&b);
    return e;
}

/* ---------------------------------------------------------------- added tokens */

static int is_word_char(const char *s, size_t n, size_t i) {
    uint32_t cp;
    utf8_decode((const unsigned char *)s + i, &cp);
    (void)n;
    if (cp == '_') return 1;
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)cp);
    return (p->category >= UTF8PROC_CATEGORY_LU && p->category <= UTF8PROC_CATEGORY_LO) ||
           (p->category >= UTF8PROC_CATEGORY_ND && p->category <= UTF8PROC_CATEGORY_NO);
}

static size_t prev_char(const char *s, size_t i) {
    size_t k = i - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    return k;
}

/* Longest added token of trie `which` starting at s[i]: returns its index + 1 and length. */
static int trie_longest(const struct st_tokenizer *t, int which, const char *s, size_t n, size_t i,
                        size_t *mlen) {
    if (!t->trie_nodes[which]) return 0;
    size_t node = 0;
    int best = 0;
    for (size_t k = i; k < n; k++) {
        uint64_t child;
        if (!u64map_get(&t->trie[which], ((uint64_t)node << 8) | (unsigned char)s[k], &child)) break;
        node = (size_t)child;
        if (t->trie_term[which][node]) {
            best = t->trie_term[which][node];
            *mlen = k + 1 - i;
        }
    }
    return best;
}

struct match {
    size_t b, e;
    int32_t id;
};

/* Find added-token matches of trie `which` in s[0..n) with HF's rules. */
static int find_added(const struct st_tokenizer *t, int which, const char *s, size_t n,
                      struct match **out, size_t *nout) {
    *out = NULL;
    *nout = 0;
    if (!t->trie_nodes[which]) return 0;
    size_t cap = 0, cnt = 0, start_offset = 0;
    struct match *m = NULL;
    size_t i = 0;
    while (i < n) {
        size_t ml = 0;
        int k = trie_longest(t, which, s, n, i, &ml);
        if (!k) {
            i++;
            continue;
        }
        const struct added_token *at = &t->added[k - 1];
        size_t b = i, e = i + ml;
        i = e; /* non-overlapping iteration continues after this match either way */
        if (at->single_word) {
            int start_ok = b == 0 || !is_word_char(s, n, prev_char(s, b));
            int stop_ok = e == n || !is_word_char(s, n, e);
            if (!start_ok || !stop_ok) continue;
        }
        if (at->lstrip) {
            size_t nb = b;
            while (nb > 0) {
                size_t pc = prev_char(s, nb);
                uint32_t cp;
                utf8_decode((const unsigned char *)s + pc, &cp);
                if (!is_ws(cp)) break;
                nb = pc;
            }
            b = nb > start_offset ? nb : start_offset;
        }
        if (at->rstrip) {
            while (e < n) {
                uint32_t cp;
                int l = utf8_decode((const unsigned char *)s + e, &cp);
                if (!is_ws(cp)) break;
                e += (size_t)l;
            }
            i = e;
        }
        if (cnt == cap) {
            cap = cap ? cap * 2 : 8;
            struct match *nm = st_realloc(m, cap * sizeof *m);
            if (!nm) {
                st_free(m);
                return 1;
            }
            m = nm;
        }
        m[cnt++] = (struct match){b, e, at->id};
        start_offset = e;
    }
    *out = m;
    *nout = cnt;
    return 0;
}

/* ---------------------------------------------------------------- driver */

/* Normalized text segment: split out normalized added tokens, pre-tokenize, BPE. */
static int encode_normalized(struct work *w, const char *s, size_t n, const int32_t *orig) {
    const struct st_tokenizer *t = w->t;
    struct match *m;
    size_t nm;
    if (find_added(t, 1, s, n, &m, &nm)) return 1;
    size_t pos = 0;
    int e = 0;
    for (size_t k = 0; k <= nm && !e; k++) {
        size_t gb = pos, ge = k < nm ? m[k].b : n;
        if (ge > gb) {
            struct pool *a = &w->pre_a, *b = &w->pre_b;
            pool_clear(a);
            pool_clear(b);
            e = pool_append(a, s + gb, ge - gb, orig + gb, 0) || pool_push_range(a, 0, ge - gb, orig[gb]);
            struct pool *src = a;
            if (!e && t->pre) {
                e = pretokenize_all(t, t->pre, a, b);
                src = b;
            }
            for (size_t r = 0; r < src->nr && !e; r++)
                e = bpe_piece(w, src->s + src->r[r].off, src->r[r].len, src->orig + src->r[r].off);
        }
        if (k < nm && !e) {
            e = ids_push(w->out, m[k].id, orig[m[k].b]);
            pos = m[k].e;
        }
    }
    st_free(m);
    return e;
}

static int encode_raw_segment(struct work *w, const char *s, size_t n, const int32_t *orig) {
    if (!w->t->norm) return encode_normalized(w, s, n, orig);
    pool_clear(&w->norm);
    if (normalize(w->t->norm, s, n, orig, &w->norm)) return 1;
    /* normalized text may live in w->norm, which encode_normalized does not touch */
    return encode_normalized(w, w->norm.s, w->norm.n, w->norm.orig);
}

static void work_free(struct work *w) {
    pool_free(&w->norm);
    pool_free(&w->pre_a);
    pool_free(&w->pre_b);
    st_free(w->sym_id);
    st_free(w->sym_prev);
    st_free(w->sym_next);
    st_free(w->sym_start);
    st_free(w->sym_len);
    st_free(w->heap);
}

enum st_status st_tokenizer_encode(const struct st_tokenizer *t, const char *text, size_t len,
                                   int add_special, struct st_ids *out, struct st_error *err) {
    if (len > (size_t)INT32_MAX)
        return st_errorf(err, ST_ERR_ARG, "text of %zu bytes is too long to encode", len);
    struct work w = {.t = t};
    struct pool in = {0};
    struct st_ids body = {0};
    w.out = &body;
    int e = utf8_sanitize(&in, text, len);
    struct match *m = NULL;
    size_t nm = 0;
    if (!e) e = find_added(t, 0, in.s, in.n, &m, &nm);
    size_t pos = 0;
    for (size_t k = 0; k <= nm && !e; k++) {
        size_t ge = k < nm ? m[k].b : in.n;
        if (ge > pos) e = encode_raw_segment(&w, in.s + pos, ge - pos, in.orig + pos);
        if (k < nm && !e) {
            e = ids_push(&body, m[k].id, in.orig[m[k].b]);
            pos = m[k].e;
        }
    }
    st_free(m);
    /* post-processor */
    if (!e) {
        if (add_special && t->n_tmpl) {
            for (int i = 0; i < t->n_tmpl && !e; i++) {
                if (t->tmpl[i].is_sequence) {
                    for (size_t k = 0; k < body.n && !e; k++) e = ids_push(out, body.ids[k], body.offsets[k]);
                } else {
                    for (int k = 0; k < t->tmpl[i].n_ids && !e; k++) e = ids_push(out, t->tmpl[i].ids[k], -1);
                }
            }
        } else {
            for (size_t k = 0; k < body.n && !e; k++) e = ids_push(out, body.ids[k], body.offsets[k]);
        }
    }
    st_ids_free(&body);
    pool_free(&in);
    work_free(&w);
    if (e) return st_errorf(err, ST_ERR_NOMEM, "out of memory encoding %zu bytes", len);
    return ST_OK;
}

enum st_status st_tokenizer_encode_batch(const struct st_tokenizer *t, const char *const *texts,
                                         const size_t *lens, size_t n, int add_special,
                                         struct st_ids *out, int threads, struct st_error *err) {
    if (threads <= 0) threads = st_threads_get();
    enum st_status rc = ST_OK;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (size_t i = 0; i < n; i++) {
        struct st_error e1;
        if (st_tokenizer_encode(t, texts[i], lens[i], add_special, &out[i], &e1) != ST_OK) {
#pragma omp critical
            {
                if (rc == ST_OK) {
                    rc = e1.code;
                    if (err) *err = e1;
                }
            }
        }
    }
    return rc;
}
