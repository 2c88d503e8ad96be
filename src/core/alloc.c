/* alloc.c: the one allocator of the library. Counts live allocations and bytes and can fail the
 * Nth allocation (tests use it to prove every error path frees what it took).
 *
 * DESIGN: a 16-byte header in front of each block stores its size so st_free can keep the byte
 * count exact without malloc_usable_size. Counters are atomics: loader threads allocate too. */
#include "streamtune/core.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define HDR 16

static atomic_size_t live_count;
static atomic_size_t live_bytes;
static atomic_size_t peak_bytes;
static atomic_long fail_countdown; /* 0 = off; otherwise allocations left until one fails */

void st_alloc_fail_nth(long n) { atomic_store(&fail_countdown, n); }
size_t st_alloc_live_count(void) { return atomic_load(&live_count); }
size_t st_alloc_live_bytes(void) { return atomic_load(&live_bytes); }
size_t st_alloc_peak_bytes(void) { return atomic_load(&peak_bytes); }

static int should_fail(void) {
    long c = atomic_load(&fail_countdown);
    while (c > 0) {
        if (atomic_compare_exchange_weak(&fail_countdown, &c, c - 1)) return c == 1;
    }
    return 0;
}

static void account(size_t n, int sign) {
    if (sign > 0) {
        atomic_fetch_add(&live_count, 1);
        size_t now = atomic_fetch_add(&live_bytes, n) + n;
        size_t peak = atomic_load(&peak_bytes);
        while (now > peak && !atomic_compare_exchange_weak(&peak_bytes, &peak, now)) {
        }
    } else {
        atomic_fetch_sub(&live_count, 1);
        atomic_fetch_sub(&live_bytes, n);
    }
}

void *st_malloc(size_t n) {
    if (n > SIZE_MAX - HDR || should_fail()) return NULL;
    uint8_t *p = malloc(n + HDR);
    if (!p) return NULL;
    memcpy(p, &n, sizeof n);
    account(n, +1);
    return p + HDR;
}

void *st_calloc(size_t count, size_t size) {
    size_t n;
    if (st_mul_size(count, size, &n)) return NULL;
    void *p = st_malloc(n);
    if (p) memset(p, 0, n);
    return p;
}

void *st_realloc(void *p, size_t n) {
    if (!p) return st_malloc(n);
    if (n > SIZE_MAX - HDR || should_fail()) return NULL;
    uint8_t *base = (uint8_t *)p - HDR;
    size_t old;
    memcpy(&old, base, sizeof old);
    uint8_t *q = realloc(base, n + HDR);
    if (!q) return NULL;
    memcpy(q, &n, sizeof n);
    account(old, -1);
    account(n, +1);
    return q + HDR;
}

void st_free(void *p) {
    if (!p) return;
    uint8_t *base = (uint8_t *)p - HDR;
    size_t n;
    memcpy(&n, base, sizeof n);
    account(n, -1);
    free(base);
}

char *st_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = st_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

int st_mul_size(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 1;
    *out = a * b;
    return 0;
}

int st_add_size(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return 1;
    *out = a + b;
    return 0;
}

/* ---- arena ---- */

size_t st_arena_round(size_t n) { return (n + 63) & ~(size_t)63; }

enum st_status st_arena_init(struct st_arena *a, size_t size, struct st_error *err) {
    a->base = NULL;
    a->size = 0;
    a->used = 0;
    if (size == 0) return ST_OK;
    size_t total;
    if (st_add_size(size, 64, &total)) return st_errorf(err, ST_ERR_NOMEM, "arena size overflow");
    uint8_t *raw = st_malloc(total);
    if (!raw)
        return st_errorf(err, ST_ERR_NOMEM, "cannot allocate %.1f MiB", (double)size / 1048576.0);
    memset(raw, 0, total);
    /* keep the raw pointer just before the aligned base so st_arena_free can find it */
    uintptr_t aligned = ((uintptr_t)raw + 63) & ~(uintptr_t)63;
    if (aligned - (uintptr_t)raw < sizeof(void *)) aligned += 64;
    if (aligned + size > (uintptr_t)raw + total) {
        /* needed the extra 64 for the back pointer: grow once */
        st_free(raw);
        if (st_add_size(size, 128, &total)) return st_errorf(err, ST_ERR_NOMEM, "arena overflow");
        raw = st_malloc(total);
        if (!raw)
            return st_errorf(err, ST_ERR_NOMEM, "cannot allocate %.1f MiB",
                             (double)size / 1048576.0);
        memset(raw, 0, total);
        aligned = ((uintptr_t)raw + 64 + 63) & ~(uintptr_t)63;
    }
    memcpy((void *)(aligned - sizeof(void *)), &raw, sizeof raw);
    a->base = (uint8_t *)aligned;
    a->size = size;
    return ST_OK;
}

void *st_arena_take(struct st_arena *a, size_t n) {
    size_t r = st_arena_round(n);
    if (r > a->size - a->used) return NULL;
    void *p = a->base + a->used;
    a->used += r;
    return p;
}

void st_arena_free(struct st_arena *a) {
    if (a->base) {
        void *raw;
        memcpy(&raw, a->base - sizeof(void *), sizeof raw);
        st_free(raw);
    }
    a->base = NULL;
    a->size = a->used = 0;
}
