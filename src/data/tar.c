/* tar.c: WebDataset samples from a POSIX tar stream (ustar, GNU, pax), read front to back.
 *
 * DESIGN: a byte-driven state machine (header -> data -> padding) so input can arrive in pieces
 * of any size. Every header is validated before use: checksum (unsigned or signed sum), octal or
 * base-256 size below 2^62, pax records with consistent lengths. Only regular files become
 * fields; pax 'x' (path, size) and GNU 'L' long names apply to the next member; everything else
 * is skipped. Grouping follows webdataset's tariterators.py: key = path up to the first dot of
 * the basename, extension = the rest, lower-cased; a new key flushes the sample; a repeated
 * extension within a sample is an error; names starting "__x__" (metadata) are skipped. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "data/internal.h"

enum { TS_HEADER = 0, TS_DATA, TS_PAD, TS_END };
enum { M_SKIP = 0, M_FIELD, M_LONGNAME, M_PAX };

#define TAR_META_MAX (1u << 20)

void tar_init(struct tar *t, uint64_t start_off, uint64_t first_index, size_t max_rec) {
    memset(t, 0, sizeof *t);
    t->off = start_off;
    t->rec = first_index;
    t->max_rec = max_rec;
    t->pax_size = -1;
    dbuf_init(&t->meta, max_rec < TAR_META_MAX ? max_rec : TAR_META_MAX);
    dbuf_init(&t->key, 64 * 1024);
    dbuf_init(&t->data, max_rec);
}

static void clear_sample(struct tar *t) {
    for (int i = 0; i < t->n_fields; i++)
        st_free(t->field_name[i]);
    t->n_fields = 0;
    dbuf_reset(&t->key);
    dbuf_reset(&t->data);
}

void tar_free(struct tar *t) {
    clear_sample(t);
    dbuf_free(&t->meta);
    dbuf_free(&t->key);
    dbuf_free(&t->data);
    st_free(t->long_name);
    st_free(t->pax_path);
    t->long_name = t->pax_path = NULL;
}

size_t tar_mem(const struct tar *t) {
    return t->meta.cap + t->key.cap + t->data.cap;
}

int wds_split(const char *name, size_t *key_len, const char **ext) {
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    const char *dot = strchr(base, '.');
    if (!dot || dot == base) return 1; /* [^.]+ needs at least one character */
    *key_len = (size_t)(dot - name);
    *ext = dot + 1;
    return 0;
}

/* webdataset skips "__x__"-style metadata names (skip_meta and meta_prefix/suffix). */
static int is_meta_name(const char *name) {
    if (name[0] == '_' && name[1] == '_') {
        const char *p = name + 2;
        while (*p && *p != '/') {
            if (p[0] == '_' && p[1] == '_' && (p[2] == '\0' || p[2] == '/')) return 1;
            p++;
        }
        size_t n = strlen(name);
        if (!strchr(name, '/') && n >= 4 && name[n - 1] == '_' && name[n - 2] == '_') return 1;
    }
    return 0;
}

static int parse_octal(const uint8_t *f, size_t n, uint64_t *out) {
    if (f[0] & 0x80) {              /* base-256 (GNU): big-endian in the remaining bytes */
        if (f[0] != 0x80) return 1; /* negative or too large */
        uint64_t v = 0;
        for (size_t i = 1; i < n; i++) {
            if (v >> 54) return 1;
            v = v << 8 | f[i];
        }
        if (v >> 62) return 1;
        *out = v;
        return 0;
    }
    size_t i = 0;
    while (i < n && (f[i] == ' ' || f[i] == '\0'))
        i++;
    uint64_t v = 0;
    int digits = 0;
    for (; i < n && f[i] >= '0' && f[i] <= '7'; i++, digits++) {
        if (v >> 58) return 1;
        v = v * 8 + (uint64_t)(f[i] - '0');
    }
    for (; i < n; i++)
        if (f[i] != ' ' && f[i] != '\0') return 1;
    if (!digits) v = 0;
    *out = v;
    return 0;
}

static int checksum_ok(const uint8_t *h) {
    uint64_t stored;
    if (parse_octal(h + 148, 8, &stored)) return 0;
    uint64_t us = 0;
    int64_t ss = 0;
    for (int i = 0; i < 512; i++) {
        uint8_t c = (i >= 148 && i < 156) ? ' ' : h[i];
        us += c;
        ss += (int8_t)c;
    }
    return stored == us || (int64_t)stored == ss;
}

static char *field_str(const uint8_t *f, size_t n) {
    size_t len = 0;
    while (len < n && f[len])
        len++;
    char *s = st_malloc(len + 1);
    if (s) {
        memcpy(s, f, len);
        s[len] = '\0';
    }
    return s;
}

/* Parse pax records "<len> key=value\n" for path and size. */
static enum st_status parse_pax(struct tar *t, const char *what, struct st_error *err) {
    const char *p = t->meta.p ? t->meta.p : "", *end = p + t->meta.len;
    while (p < end) {
        const char *sp = memchr(p, ' ', (size_t)(end - p));
        if (!sp || sp == p || sp - p > 20) goto bad;
        uint64_t len = 0;
        for (const char *q = p; q < sp; q++) {
            if (*q < '0' || *q > '9') goto bad;
            len = len * 10 + (uint64_t)(*q - '0');
        }
        if (len <= (uint64_t)(sp - p) + 1 || len > (uint64_t)(end - p) || p[len - 1] != '\n')
            goto bad;
        const char *kv = sp + 1, *rec_end = p + len - 1;
        const char *eq = memchr(kv, '=', (size_t)(rec_end - kv));
        if (!eq) goto bad;
        size_t klen = (size_t)(eq - kv), vlen = (size_t)(rec_end - eq - 1);
        if (klen == 4 && memcmp(kv, "path", 4) == 0) {
            if (memchr(eq + 1, '\0', vlen)) goto bad;
            st_free(t->pax_path);
            t->pax_path = st_malloc(vlen + 1);
            if (!t->pax_path) return st_errorf(err, ST_ERR_NOMEM, "%s: out of memory", what);
            memcpy(t->pax_path, eq + 1, vlen);
            t->pax_path[vlen] = '\0';
        } else if (klen == 4 && memcmp(kv, "size", 4) == 0) {
            uint64_t v = 0;
            if (vlen == 0 || vlen > 18) goto bad;
            for (size_t i = 0; i < vlen; i++) {
                char c = eq[1 + i];
                if (c < '0' || c > '9') goto bad;
                v = v * 10 + (uint64_t)(c - '0');
            }
            t->pax_size = (int64_t)v;
        }
        p += len;
    }
    return ST_OK;
bad:
    return st_errorf(err, ST_ERR_FORMAT,
                     "%s: corrupt tar: malformed pax header at byte offset %llu", what,
                     (unsigned long long)t->member_off);
}

static int flush_sample(struct tar *t, rec_emit_fn emit, void *ctx, struct st_error *err) {
    if (!t->n_fields) return 0;
    struct rec_field f[TAR_MAX_FIELDS];
    for (int i = 0; i < t->n_fields; i++) {
        f[i].name = t->field_name[i];
        f[i].data = (const uint8_t *)t->data.p + t->field_off[i];
        f[i].size = t->field_size[i];
    }
    struct rec r = {t->key.p, t->rec, t->sample_off, t->sample_end, t->n_fields, f};
    t->rec++;
    int rc = emit(ctx, &r, err);
    clear_sample(t);
    return rc;
}

/* A complete 512-byte header is in t->hdr. Returns <0 on error, 1 when the emitter paused. */
static int on_header(struct tar *t, rec_emit_fn emit, void *ctx, const char *what,
                     struct st_error *err) {
    const uint8_t *h = t->hdr;
    int zero = 1;
    for (int i = 0; i < 512; i++)
        if (h[i]) {
            zero = 0;
            break;
        }
    if (zero) {
        /* end of archive (one zero block is enough, as GNU tar -i accepts) */
        t->state = TS_END;
        t->ended = 1;
        return flush_sample(t, emit, ctx, err);
    }
    if (!checksum_ok(h)) {
        st_errorf(err, ST_ERR_FORMAT,
                  "%s: corrupt tar: bad header checksum at byte offset %llu (not a tar file, or "
                  "damaged)",
                  what, (unsigned long long)t->member_off);
        return -1;
    }
    uint64_t size;
    if (parse_octal(h + 124, 12, &size)) {
        st_errorf(err, ST_ERR_FORMAT,
                  "%s: corrupt tar: bad size field in the header at byte "
                  "offset %llu",
                  what, (unsigned long long)t->member_off);
        return -1;
    }
    char type = (char)h[156];
    if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
        /* metadata for the next member: its size is what we read */
    } else if (t->pax_size >= 0) {
        size = (uint64_t)t->pax_size;
    }
    t->remaining = size;
    t->pad = (512 - size % 512) % 512;
    t->mode = M_SKIP;
    int rc = 0;
    if (type == 'L' || type == 'x') {
        if (size > t->meta.max) {
            st_errorf(err, ST_ERR_FORMAT,
                      "%s: corrupt tar: %s header of %llu bytes at byte offset %llu is too large",
                      what, type == 'L' ? "long-name" : "pax", (unsigned long long)size,
                      (unsigned long long)t->member_off);
            return -1;
        }
        dbuf_reset(&t->meta);
        t->mode = type == 'L' ? M_LONGNAME : M_PAX;
    } else if (type == '0' || type == '\0' || type == '7') {
        char *name = NULL;
        if (t->pax_path) {
            name = t->pax_path;
            t->pax_path = NULL;
        } else if (t->long_name) {
            name = t->long_name;
            t->long_name = NULL;
        } else if (memcmp(h + 257, "ustar\0", 6) == 0 && h[345]) {
            char *pre = field_str(h + 345, 155), *nm = field_str(h, 100);
            if (pre && nm) {
                name = st_malloc(strlen(pre) + strlen(nm) + 2);
                if (name) snprintf(name, strlen(pre) + strlen(nm) + 2, "%s/%s", pre, nm);
            }
            st_free(pre);
            st_free(nm);
        } else {
            name = field_str(h, 100);
        }
        if (!name) {
            st_errorf(err, ST_ERR_NOMEM, "%s: out of memory", what);
            return -1;
        }
        size_t key_len;
        const char *ext;
        if (!is_meta_name(name) && wds_split(name, &key_len, &ext) == 0) {
            if (t->n_fields && (t->key.len != key_len || memcmp(t->key.p, name, key_len) != 0))
                rc = flush_sample(t, emit, ctx, err);
            if (rc < 0) {
                st_free(name);
                return -1;
            }
            if (!t->n_fields) {
                dbuf_reset(&t->key);
                if (dbuf_add(&t->key, name, key_len)) {
                    st_errorf(err, ST_ERR_FORMAT,
                              "%s: tar member name too long at byte offset %llu", what,
                              (unsigned long long)t->member_off);
                    st_free(name);
                    return -1;
                }
                t->sample_off = t->member_off;
            }
            char *e = st_strdup(ext);
            if (!e) {
                st_free(name);
                st_errorf(err, ST_ERR_NOMEM, "%s: out of memory", what);
                return -1;
            }
            for (char *q = e; *q; q++)
                *q = (char)tolower((unsigned char)*q);
            for (int i = 0; i < t->n_fields; i++)
                if (strcmp(t->field_name[i], e) == 0) {
                    st_errorf(err, ST_ERR_FORMAT,
                              "%s: tar member '%s' at byte offset %llu repeats extension '%s' of "
                              "sample '%s'",
                              what, name, (unsigned long long)t->member_off, e, t->key.p);
                    st_free(e);
                    st_free(name);
                    return -1;
                }
            size_t need;
            if (t->n_fields >= TAR_MAX_FIELDS || st_add_size(t->data.len, 1, &need) ||
                size > t->max_rec || need + size > t->max_rec ||
                dbuf_reserve(&t->data, (size_t)size + 1)) {
                st_errorf(err, ST_ERR_FORMAT,
                          "%s: sample '%s' at byte offset %llu is larger than %zu bytes (or has "
                          "more than %d files), the largest this stream's budget allows",
                          what, t->key.p, (unsigned long long)t->sample_off, t->max_rec,
                          TAR_MAX_FIELDS);
                st_free(e);
                st_free(name);
                return -1;
            }
            t->field_name[t->n_fields] = e;
            t->field_off[t->n_fields] = t->data.len;
            t->field_size[t->n_fields] = (size_t)size;
            t->n_fields++;
            t->mode = M_FIELD;
        }
        st_free(name);
    }
    if (type != 'x' && type != 'L' && type != 'g' && type != 'K') {
        /* pax/long-name overrides applied to this member only */
        st_free(t->long_name);
        st_free(t->pax_path);
        t->long_name = t->pax_path = NULL;
        t->pax_size = -1;
    }
    t->state = t->remaining ? TS_DATA : (t->pad ? TS_PAD : TS_HEADER);
    if (t->state == TS_HEADER && t->mode == M_FIELD) {
        t->data.p[t->data.len] = '\0';
        if (dbuf_add(&t->data, "", 1)) return -1; /* reserved above */
        t->sample_end = t->off;
    }
    return rc;
}

static enum st_status member_done(struct tar *t, const char *what, struct st_error *err) {
    if (t->mode == M_FIELD) {
        if (dbuf_add(&t->data, "", 1)) /* the NUL after the field (room was reserved) */
            return st_errorf(err, ST_ERR_NOMEM, "%s: out of memory", what);
    } else if (t->mode == M_LONGNAME) {
        st_free(t->long_name);
        t->long_name = field_str((const uint8_t *)(t->meta.p ? t->meta.p : ""), t->meta.len);
        if (!t->long_name) return st_errorf(err, ST_ERR_NOMEM, "%s: out of memory", what);
    } else if (t->mode == M_PAX) {
        enum st_status rc = parse_pax(t, what, err);
        if (rc) return rc;
    }
    return ST_OK;
}

enum st_status tar_feed(struct tar *t, const uint8_t *in, size_t n, size_t *used, rec_emit_fn emit,
                        void *ctx, const char *what, struct st_error *err) {
    size_t i = 0;
    int paused = 0;
    *used = 0; /* on an error nothing counts as used */
    while (i < n && !paused) {
        switch (t->state) {
        case TS_HEADER: {
            if (t->hdr_fill == 0) t->member_off = t->off;
            size_t take = 512 - t->hdr_fill < n - i ? 512 - t->hdr_fill : n - i;
            memcpy(t->hdr + t->hdr_fill, in + i, take);
            t->hdr_fill += take;
            i += take;
            t->off += take;
            if (t->hdr_fill == 512) {
                t->hdr_fill = 0;
                int r = on_header(t, emit, ctx, what, err);
                if (r < 0) return err && err->code ? err->code : ST_ERR_FORMAT;
                if (r > 0) paused = 1;
            }
            break;
        }
        case TS_DATA: {
            size_t take = t->remaining < n - i ? (size_t)t->remaining : n - i;
            if (t->mode == M_FIELD) {
                if (dbuf_add(&t->data, in + i, take))
                    return st_errorf(err, ST_ERR_NOMEM, "%s: out of memory", what);
            } else if (t->mode == M_LONGNAME || t->mode == M_PAX) {
                if (dbuf_add(&t->meta, in + i, take))
                    return st_errorf(err, ST_ERR_FORMAT,
                                     "%s: corrupt tar header at byte offset %llu", what,
                                     (unsigned long long)t->member_off);
            }
            i += take;
            t->off += take;
            t->remaining -= take;
            if (t->remaining == 0) {
                enum st_status rc = member_done(t, what, err);
                if (rc) return rc;
                t->state = t->pad ? TS_PAD : TS_HEADER;
                if (t->state == TS_HEADER && t->mode == M_FIELD) t->sample_end = t->off;
            }
            break;
        }
        case TS_PAD: {
            size_t take = t->pad < n - i ? (size_t)t->pad : n - i;
            i += take;
            t->off += take;
            t->pad -= take;
            if (t->pad == 0) {
                t->state = TS_HEADER;
                if (t->mode == M_FIELD) t->sample_end = t->off;
            }
            break;
        }
        default: /* TS_END: ignore the zero padding after the end marker */
            t->off += n - i;
            i = n;
            break;
        }
    }
    *used = i;
    return ST_OK;
}

enum st_status tar_end(struct tar *t, rec_emit_fn emit, void *ctx, const char *what,
                       struct st_error *err) {
    if (t->state == TS_END) return ST_OK;
    if (t->state != TS_HEADER || t->hdr_fill != 0)
        return st_errorf(err, ST_ERR_FORMAT,
                         "%s: truncated tar: the shard ends inside the member whose header is at "
                         "byte offset %llu",
                         what, (unsigned long long)t->member_off);
    if (flush_sample(t, emit, ctx, err) < 0) return err && err->code ? err->code : ST_ERR_FORMAT;
    return ST_OK;
}
