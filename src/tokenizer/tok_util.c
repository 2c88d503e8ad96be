/* tok_util.c: the tokenizer's hash maps, piece pool and UTF-8 helpers. */
#include <string.h>

#include "tok_internal.h"

/* ---------------------------------------------------------------- strmap */

static uint64_t hash_bytes(const char *s, uint32_t n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (uint32_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

static int strmap_grow(struct strmap *m) {
    size_t ncap = m->cap ? m->cap * 2 : 1024;
    uint32_t *slots = st_calloc(ncap, sizeof *slots);
    if (!slots) return 1;
    for (size_t i = 0; i < m->n; i++) {
        size_t h = (size_t)hash_bytes(m->keys[i], m->klen[i]) & (ncap - 1);
        while (slots[h]) h = (h + 1) & (ncap - 1);
        slots[h] = (uint32_t)i + 1;
    }
    st_free(m->slots);
    m->slots = slots;
    m->cap = ncap;
    return 0;
}

int strmap_put(struct strmap *m, const char *key, uint32_t len, int32_t val) {
    if ((m->n + 1) * 2 > m->cap && strmap_grow(m)) return 1;
    size_t h = (size_t)hash_bytes(key, len) & (m->cap - 1);
    while (m->slots[h]) {
        uint32_t k = m->slots[h] - 1;
        if (m->klen[k] == len && memcmp(m->keys[k], key, len) == 0) {
            m->vals[k] = val;
            return 0;
        }
        h = (h + 1) & (m->cap - 1);
    }
    if (m->n == m->kcap) {
        size_t nk = m->kcap ? m->kcap * 2 : 1024;
        const char **keys = st_realloc(m->keys, nk * sizeof *keys);
        if (!keys) return 1;
        m->keys = keys;
        uint32_t *kl = st_realloc(m->klen, nk * sizeof *kl);
        if (!kl) return 1;
        m->klen = kl;
        int32_t *v = st_realloc(m->vals, nk * sizeof *v);
        if (!v) return 1;
        m->vals = v;
        m->kcap = nk;
    }
    m->keys[m->n] = key;
    m->klen[m->n] = len;
    m->vals[m->n] = val;
    m->slots[h] = (uint32_t)++m->n;
    return 0;
}

int32_t strmap_get(const struct strmap *m, const char *key, uint32_t len) {
    if (!m->cap) return -1;
    size_t h = (size_t)hash_bytes(key, len) & (m->cap - 1);
    while (m->slots[h]) {
        uint32_t k = m->slots[h] - 1;
        if (m->klen[k] == len && memcmp(m->keys[k], key, len) == 0) return m->vals[k];
        h = (h + 1) & (m->cap - 1);
    }
    return -1;
}

void strmap_free(struct strmap *m) {
    st_free(m->slots);
    st_free(m->keys);
    st_free(m->klen);
    st_free(m->vals);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- u64map */

static size_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

static int u64map_grow(struct u64map *m) {
    size_t ncap = m->cap ? m->cap * 2 : 1024;
    uint64_t *k = st_malloc(ncap * sizeof *k), *v = st_malloc(ncap * sizeof *v);
    uint8_t *u = st_calloc(ncap, 1);
    if (!k || !v || !u) {
        st_free(k);
        st_free(v);
        st_free(u);
        return 1;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->used[i]) continue;
        size_t h = mix64(m->keys[i]) & (ncap - 1);
        while (u[h]) h = (h + 1) & (ncap - 1);
        u[h] = 1;
        k[h] = m->keys[i];
        v[h] = m->vals[i];
    }
    st_free(m->keys);
    st_free(m->vals);
    st_free(m->used);
    m->keys = k;
    m->vals = v;
    m->used = u;
    m->cap = ncap;
    return 0;
}

int u64map_put(struct u64map *m, uint64_t key, uint64_t val) {
    if ((m->n + 1) * 2 > m->cap && u64map_grow(m)) return 1;
    size_t h = mix64(key) & (m->cap - 1);
    while (m->used[h]) {
        if (m->keys[h] == key) {
            m->vals[h] = val;
            return 0;
        }
        h = (h + 1) & (m->cap - 1);
    }
    m->used[h] = 1;
    m->keys[h] = key;
    m->vals[h] = val;
    m->n++;
    return 0;
}

int u64map_get(const struct u64map *m, uint64_t key, uint64_t *val) {
    if (!m->cap) return 0;
    size_t h = mix64(key) & (m->cap - 1);
    while (m->used[h]) {
        if (m->keys[h] == key) {
            *val = m->vals[h];
            return 1;
        }
        h = (h + 1) & (m->cap - 1);
    }
    return 0;
}

void u64map_free(struct u64map *m) {
    st_free(m->keys);
    st_free(m->vals);
    st_free(m->used);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- pool */

int pool_reserve(struct pool *p, size_t extra) {
    if (p->n + extra <= p->cap) return 0;
    size_t nc = p->cap ? p->cap : 256;
    while (nc < p->n + extra) nc *= 2;
    char *s = st_realloc(p->s, nc);
    if (!s) return 1;
    p->s = s;
    int32_t *o = st_realloc(p->orig, nc * sizeof *o);
    if (!o) return 1;
    p->orig = o;
    p->cap = nc;
    return 0;
}

int pool_push_range(struct pool *p, size_t off, size_t len, int32_t origin) {
    if (p->nr == p->rcap) {
        size_t nc = p->rcap ? p->rcap * 2 : 64;
        struct range *r = st_realloc(p->r, nc * sizeof *r);
        if (!r) return 1;
        p->r = r;
        p->rcap = nc;
    }
    p->r[p->nr++] = (struct range){off, len, origin};
    return 0;
}

int pool_append(struct pool *p, const char *s, size_t len, const int32_t *orig, int32_t fill) {
    if (pool_reserve(p, len)) return 1;
    if (len) memcpy(p->s + p->n, s, len);
    for (size_t i = 0; i < len; i++) p->orig[p->n + i] = orig ? orig[i] : fill;
    p->n += len;
    return 0;
}

void pool_clear(struct pool *p) {
    p->n = 0;
    p->nr = 0;
}

void pool_free(struct pool *p) {
    st_free(p->s);
    st_free(p->orig);
    st_free(p->r);
    memset(p, 0, sizeof *p);
}

/* ---------------------------------------------------------------- utf8 */

int utf8_valid_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    int len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) { len = 3; lo = 0xA0; }
    else if (c >= 0xE1 && c <= 0xEC) len = 3;
    else if (c == 0xED) { len = 3; hi = 0x9F; }
    else if (c >= 0xEE && c <= 0xEF) len = 3;
    else if (c == 0xF0) { len = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) { len = 4; hi = 0x8F; }
    else return 0;
    if ((size_t)len > n) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (int i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return len;
}

int utf8_decode(const unsigned char *s, uint32_t *cp) {
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xE0) {
        *cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (c < 0xF0) {
        *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
          ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

int utf8_encode(uint32_t cp, char *o) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the maximal prefix of a valid sequence at s (at least 1): the bytes one U+FFFD
 * replaces (Unicode "substitution of maximal subparts", as WHATWG and Python do). */
static int maximal_subpart(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    int len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) { len = 3; lo = 0xA0; }
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) len = 3;
    else if (c == 0xED) { len = 3; hi = 0x9F; }
    else if (c == 0xF0) { len = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) { len = 4; hi = 0x8F; }
    else return 1;
    int k = 1;
    if ((size_t)k < n && s[k] >= lo && s[k] <= hi) {
        k++;
        while (k < len && (size_t)k < n && s[k] >= 0x80 && s[k] <= 0xBF) k++;
    }
    return k;
}

int utf8_sanitize(struct pool *p, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    if (pool_reserve(p, n + 16)) return 1;
    size_t i = 0;
    while (i < n) {
        /* fast path: ASCII run */
        if (u[i] < 0x80) {
            if (pool_reserve(p, 1)) return 1;
            p->s[p->n] = (char)u[i];
            p->orig[p->n++] = (int32_t)i;
            i++;
            continue;
        }
        int l = utf8_valid_len(u + i, n - i);
        if (l) {
            if (pool_reserve(p, (size_t)l)) return 1;
            for (int k = 0; k < l; k++) {
                p->s[p->n] = (char)u[i + (size_t)k];
                p->orig[p->n++] = (int32_t)i;
            }
            i += (size_t)l;
        } else {
            int m = maximal_subpart(u + i, n - i);
            if (pool_reserve(p, 3)) return 1;
            static const char fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
            for (int k = 0; k < 3; k++) {
                p->s[p->n] = fffd[k];
                p->orig[p->n++] = (int32_t)i;
            }
            i += (size_t)m;
        }
    }
    return 0;
}
