/* fuzz_tar.c: libFuzzer target for the WebDataset tar reader (tar_feed/tar_end, src/data/tar.c).
 *
 * DESIGN: byte 0 of the input picks the piece size the archive is fed in (1..256 bytes, or all at
 * once), so header, pax and long-name state that straddles pieces is exercised; byte 1 picks
 * whether the emitter pauses after each sample (the stream does that when its queue is full). The
 * rest is the archive. Properties beyond "no crash, no sanitizer report": every sample has 1..64
 * fields, a key, field data inside the record cap with a NUL after it, offsets that increase and
 * record indexes that count up; a refusal is ST_ERR_FORMAT or ST_ERR_NOMEM with a message naming
 * the shard; nothing leaks. tests/test_data.c includes this file (entry point renamed) to replay
 * fuzz/corpus/tar and fuzz/crashers/tar, so static names carry the ft_ prefix. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/data/internal.h"

#define FT_REQUIRE(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_tar: property violated: %s: ", #cond);                           \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define FT_MAX_REC 65536

struct ft_ctx {
    uint64_t last_end, next_index;
    int pause;
};

static int ft_emit(void *vctx, const struct rec *r, struct st_error *err) {
    struct ft_ctx *c = vctx;
    FT_REQUIRE(r->key && r->key[0], "sample without a key");
    FT_REQUIRE(r->n_fields >= 1 && r->n_fields <= TAR_MAX_FIELDS, "%d fields", r->n_fields);
    FT_REQUIRE(r->index == c->next_index, "index %llu, expected %llu", (unsigned long long)r->index,
               (unsigned long long)c->next_index);
    FT_REQUIRE(r->offset >= c->last_end && r->end > r->offset, "offsets %llu..%llu after %llu",
               (unsigned long long)r->offset, (unsigned long long)r->end,
               (unsigned long long)c->last_end);
    size_t total = 0;
    for (int i = 0; i < r->n_fields; i++) {
        FT_REQUIRE(r->fields[i].name && r->fields[i].data, "field %d", i);
        FT_REQUIRE(r->fields[i].data[r->fields[i].size] == '\0', "field %d not NUL-terminated", i);
        total += r->fields[i].size + 1;
    }
    FT_REQUIRE(total <= FT_MAX_REC, "sample of %zu bytes", total);
    c->last_end = r->end;
    c->next_index++;
    return c->pause;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    size_t piece = data[0] ? data[0] : (size_t)-1;
    struct ft_ctx c = {0, 0, data[1] & 1};
    data += 2;
    size -= 2;
    size_t live = st_alloc_live_count();
    struct tar t;
    tar_init(&t, 0, 0, FT_MAX_REC);
    struct st_error err = {0};
    enum st_status rc = ST_OK;
    size_t pos = 0;
    while (pos < size && rc == ST_OK) {
        size_t n = size - pos < piece ? size - pos : piece, used;
        rc = tar_feed(&t, data + pos, n, &used, ft_emit, &c, "f.tar", &err);
        FT_REQUIRE(used <= n, "used %zu of %zu", used, n);
        pos += used;
    }
    if (rc == ST_OK) rc = tar_end(&t, ft_emit, &c, "f.tar", &err);
    if (rc)
        FT_REQUIRE((rc == ST_ERR_FORMAT || rc == ST_ERR_NOMEM) &&
                       strncmp(err.msg, "f.tar: ", 7) == 0,
                   "status %d: %s", (int)rc, err.msg);
    tar_free(&t);
    FT_REQUIRE(st_alloc_live_count() == live, "%zu allocations leaked",
               st_alloc_live_count() - live);
    return 0;
}
