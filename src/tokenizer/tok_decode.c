/* tok_decode.c: ids -> text through the decoder chain (HF semantics: each decoder maps a list of
 * token strings to a list of strings), and streaming decode for generation. */
#include <string.h>

#include "tok_internal.h"

struct strlist {
    char **s;
    size_t *len;
    size_t n, cap;
};

static int sl_push(struct strlist *l, const char *s, size_t n) {
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 16;
        char **a = st_realloc(l->s, nc * sizeof *a);
        if (!a) return 1;
        l->s = a;
        size_t *b = st_realloc(l->len, nc * sizeof *b);
        if (!b) return 1;
        l->len = b;
        l->cap = nc;
    }
    char *c = st_malloc(n + 1);
    if (!c) return 1;
    memcpy(c, s, n);
    c[n] = '\0';
    l->s[l->n] = c;
    l->len[l->n++] = n;
    return 0;
}

static void sl_free(struct strlist *l) {
    for (size_t i = 0; i < l->n; i++) st_free(l->s[i]);
    st_free(l->s);
    st_free(l->len);
    memset(l, 0, sizeof *l);
}

/* growable byte buffer */
struct buf {
    char *p;
    size_t n, cap;
};
static int buf_add(struct buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 64;
        while (nc < b->n + n + 1) nc *= 2;
        char *q = st_realloc(b->p, nc);
        if (!q) return 1;
        b->p = q;
        b->cap = nc;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

/* Rust's String::from_utf8_lossy: maximal invalid subparts -> U+FFFD. */
static int lossy_utf8(struct buf *out, const char *s, size_t n) {
    struct pool p = {0};
    int e = utf8_sanitize(&p, s, n) || buf_add(out, p.s ? p.s : "", p.n);
    pool_free(&p);
    return e;
}

static int is_byte_token(const char *s, size_t n, unsigned *byte) {
    if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return 0;
    unsigned v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *byte = v;
    return 1;
}

static int decode_step(const struct st_tokenizer *t, const struct decoder *d, struct strlist *in,
                       struct strlist *out) {
    int e = 0;
    switch (d->type) {
    case D_SEQ: {
        struct strlist a = {0}, b = {0};
        for (size_t i = 0; i < in->n && !e; i++) e = sl_push(&a, in->s[i], in->len[i]);
        for (int k = 0; k < d->n_items && !e; k++) {
            sl_free(&b);
            e = decode_step(t, &d->items[k], &a, &b);
            struct strlist tmp = a;
            a = b;
            b = tmp;
        }
        for (size_t i = 0; i < a.n && !e; i++) e = sl_push(out, a.s[i], a.len[i]);
        sl_free(&a);
        sl_free(&b);
        return e;
    }
    case D_BYTELEVEL: {
        struct buf raw = {0}, txt = {0};
        for (size_t i = 0; i < in->n && !e; i++) {
            const char *s = in->s[i];
            size_t n = in->len[i], k = 0;
            while (k < n && !e) {
                int l = utf8_valid_len((const unsigned char *)s + k, n - k);
                if (!l) l = 1;
                uint32_t cp = 0;
                if (l > 1 || (unsigned char)s[k] < 0x80) utf8_decode((const unsigned char *)s + k, &cp);
                if (cp < 512 && t->bl_dec[cp] >= 0) {
                    char c = (char)t->bl_dec[cp];
                    e = buf_add(&raw, &c, 1);
                } else {
                    e = buf_add(&raw, s + k, (size_t)l); /* not a byte-level char: keep it */
                }
                k += (size_t)l;
            }
        }
        if (!e) e = lossy_utf8(&txt, raw.p ? raw.p : "", raw.n);
        if (!e) e = sl_push(out, txt.p ? txt.p : "", txt.n);
        st_free(raw.p);
        st_free(txt.p);
        return e;
    }
    case D_METASPACE: {
        size_t rl = strlen(d->replacement);
        for (size_t i = 0; i < in->n && !e; i++) {
            struct buf b = {0};
            const char *s = in->s[i];
            size_t n = in->len[i];
            for (size_t k = 0; k < n && !e;) {
                if (k + rl <= n && !memcmp(s + k, d->replacement, rl)) {
                    if (!(i == 0 && d->prepend_scheme != 2)) e = buf_add(&b, " ", 1);
                    k += rl;
                } else {
                    e = buf_add(&b, s + k, 1);
                    k++;
                }
            }
            if (!e) e = sl_push(out, b.p ? b.p : "", b.n);
            st_free(b.p);
        }
        return e;
    }
    case D_REPLACE: {
        size_t al = strlen(d->a), bl = strlen(d->b);
        for (size_t i = 0; i < in->n && !e; i++) {
            struct buf b = {0};
            const char *s = in->s[i];
            size_t n = in->len[i];
            for (size_t k = 0; k < n && !e;) {
                if (al && k + al <= n && !memcmp(s + k, d->a, al)) {
                    e = buf_add(&b, d->b, bl);
                    k += al;
                } else {
                    e = buf_add(&b, s + k, 1);
                    k++;
                }
            }
            if (!e) e = sl_push(out, b.p ? b.p : "", b.n);
            st_free(b.p);
        }
        return e;
    }
    case D_BYTEFALLBACK: {
        struct buf bytes = {0};
        size_t nbytes = 0;
        for (size_t i = 0; i <= in->n && !e; i++) {
            unsigned byte;
            if (i < in->n && is_byte_token(in->s[i], in->len[i], &byte)) {
                char c = (char)byte;
                e = buf_add(&bytes, &c, 1);
                nbytes++;
                continue;
            }
            if (nbytes) {
                /* valid UTF-8 as a whole, or one U+FFFD per byte (HF) */
                size_t k = 0;
                int valid = 1;
                while (k < bytes.n && valid) {
                    int l = utf8_valid_len((const unsigned char *)bytes.p + k, bytes.n - k);
                    if (!l) valid = 0;
                    k += (size_t)(l ? l : 1);
                }
                if (valid) e = sl_push(out, bytes.p, bytes.n);
                else
                    for (size_t q = 0; q < nbytes && !e; q++) e = sl_push(out, "\xef\xbf\xbd", 3);
                bytes.n = 0;
                nbytes = 0;
            }
            if (i < in->n && !e) e = sl_push(out, in->s[i], in->len[i]);
        }
        st_free(bytes.p);
        return e;
    }
    case D_FUSE: {
        struct buf b = {0};
        for (size_t i = 0; i < in->n && !e; i++) e = buf_add(&b, in->s[i], in->len[i]);
        if (!e) e = sl_push(out, b.p ? b.p : "", b.n);
        st_free(b.p);
        return e;
    }
    case D_STRIP: {
        size_t cl = strlen(d->strip_content);
        for (size_t i = 0; i < in->n && !e; i++) {
            const char *s = in->s[i];
            size_t b = 0, en = in->len[i];
            for (int k = 0; k < d->strip_start && b + cl <= en && !memcmp(s + b, d->strip_content, cl); k++) b += cl;
            for (int k = 0; k < d->strip_stop && en >= b + cl && !memcmp(s + en - cl, d->strip_content, cl); k++) en -= cl;
            e = sl_push(out, s + b, en - b);
        }
        return e;
    }
    }
    return 0;
}

enum st_status st_tokenizer_decode(const struct st_tokenizer *t, const int32_t *ids, size_t n,
                                   int skip_special, char **text, size_t *len,
                                   struct st_error *err) {
    *text = NULL;
    *len = 0;
    struct strlist toks = {0}, res = {0};
    int e = 0;
    for (size_t i = 0; i < n && !e; i++) {
        if (ids[i] < 0 || ids[i] >= t->vocab_size || !t->id_to_str[ids[i]]) {
            sl_free(&toks);
            return st_errorf(err, ST_ERR_ARG, "token id %d at index %zu is not in the vocabulary",
                             ids[i], i);
        }
        if (skip_special && t->is_special[ids[i]]) continue;
        const char *s = t->id_to_str[ids[i]];
        e = sl_push(&toks, s, strlen(s));
    }
    struct buf out = {0};
    if (!e) {
        if (t->dec) {
            e = decode_step(t, t->dec, &toks, &res);
            for (size_t i = 0; i < res.n && !e; i++) e = buf_add(&out, res.s[i], res.len[i]);
        } else { /* no decoder: HF joins tokens with spaces */
            for (size_t i = 0; i < toks.n && !e; i++)
                e = (i && buf_add(&out, " ", 1)) || buf_add(&out, toks.s[i], toks.len[i]);
        }
    }
    sl_free(&toks);
    sl_free(&res);
    if (!e && !out.p) e = buf_add(&out, "", 0);
    if (e) {
        st_free(out.p);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory decoding %zu ids", n);
    }
    *text = out.p;
    *len = out.n;
    return ST_OK;
}

/* ---------------------------------------------------------------- streaming */

void st_decode_stream_init(struct st_decode_stream *s, const struct st_tokenizer *t,
                           int skip_special) {
    memset(s, 0, sizeof *s);
    s->t = t;
    s->skip_special = skip_special;
}

void st_decode_stream_free(struct st_decode_stream *s) {
    st_free(s->ids);
    st_free(s->prefix);
    st_free(s->piece);
    memset(s, 0, sizeof *s);
}

enum st_status st_decode_stream_prefill(struct st_decode_stream *s, const int32_t *ids, size_t n,
                                        struct st_error *err) {
    if (n > 8) ids += n - 8, n = 8; /* enough context for any decoder's first-token rule */
    if (n > s->cap) {
        int32_t *a = st_realloc(s->ids, 64 * sizeof *a);
        if (!a) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
        s->ids = a;
        s->cap = 64;
    }
    if (n) memcpy(s->ids, ids, n * sizeof *ids);
    s->n = s->read_index = n;
    s->prefix_index = 0;
    st_free(s->prefix);
    s->prefix = NULL;
    s->prefix_len = 0;
    return st_tokenizer_decode(s->t, s->ids, s->n, s->skip_special, &s->prefix, &s->prefix_len,
                               err);
}

static int ends_with_fffd(const char *s, size_t n) {
    return n >= 3 && !memcmp(s + n - 3, "\xef\xbf\xbd", 3);
}

static const char *set_piece(struct st_decode_stream *s, const char *src, size_t n) {
    char *p = st_malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, src, n);
    p[n] = '\0';
    st_free(s->piece);
    s->piece = p;
    return p;
}

/* HF's DecodeStream: decode a window of recent ids; the text is new once it is longer than the
 * window's already-emitted prefix and does not end in U+FFFD (an unfinished character: byte
 * fallback decodes a run of byte tokens as a whole). The window keeps the emitted ids as context
 * so decoders that treat the first token specially (Metaspace, Strip) stay exact. */
enum st_status st_decode_stream_step(struct st_decode_stream *s, int32_t id, const char **piece,
                                     struct st_error *err) {
    *piece = "";
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        int32_t *a = st_realloc(s->ids, nc * sizeof *a);
        if (!a) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
        s->ids = a;
        s->cap = nc;
    }
    s->ids[s->n++] = id;
    char *text;
    size_t len;
    enum st_status rc = st_tokenizer_decode(s->t, s->ids + s->prefix_index, s->n - s->prefix_index,
                                            s->skip_special, &text, &len, err);
    if (rc) {
        s->n--;
        return rc;
    }
    if (len > s->prefix_len && !ends_with_fffd(text, len)) {
        /* the emitted prefix normally stays a prefix; if a decoder rewrote it, emit the tail */
        size_t from = (s->prefix_len <= len && !memcmp(text, s->prefix ? s->prefix : "", s->prefix_len))
                          ? s->prefix_len : len;
        const char *p = set_piece(s, text + from, len - from);
        if (!p) {
            st_free(text);
            return st_errorf(err, ST_ERR_NOMEM, "out of memory");
        }
        *piece = p;
        /* slide the window: keep ids from read_index as context */
        size_t keep_from = s->read_index;
        memmove(s->ids, s->ids + keep_from, (s->n - keep_from) * sizeof *s->ids);
        s->n -= keep_from;
        s->prefix_index = 0;
        s->read_index = s->n;
        /* prefix = decode(window[prefix_index..read_index]) */
        st_free(s->prefix);
        s->prefix = NULL;
        s->prefix_len = 0;
        rc = st_tokenizer_decode(s->t, s->ids, s->n, s->skip_special, &s->prefix, &s->prefix_len, err);
    }
    st_free(text);
    return rc;
}

const char *st_decode_stream_flush(struct st_decode_stream *s) {
    if (s->read_index >= s->n) return "";
    char *text;
    size_t len;
    struct st_error err;
    if (st_tokenizer_decode(s->t, s->ids + s->prefix_index, s->n - s->prefix_index,
                            s->skip_special, &text, &len, &err))
        return "";
    size_t from = s->prefix_len <= len ? s->prefix_len : len;
    const char *p = set_piece(s, text + from, len - from);
    st_free(text);
    s->read_index = s->n;
    return p ? p : "";
}
