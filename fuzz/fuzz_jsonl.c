/* fuzz_jsonl.c: libFuzzer target for the JSONL splitter and JSON checker (src/data/jsonl.c),
 * optionally behind the gzip/zstd decoder (src/data/decomp.c).
 *
 * DESIGN: byte 0 picks the piece size (1..255, or all at once) and byte 1 the options: bit 0 JSON
 * checking, bit 1 pausing after each record, bits 2-3 the decoder (none, gzip, zstd; the rest of
 * the input is then compressed data). Properties: records contain no newline, are non-empty,
 * fit the record cap, have increasing offsets and counting indexes, and pass
 * the JSON checker when checking is on; refusals are ST_ERR_FORMAT/ST_ERR_NOMEM with a message
 * naming the shard; nothing leaks. tests/test_data.c replays fuzz/corpus/jsonl and
 * fuzz/crashers/jsonl through this file (entry point renamed); static names carry fj_. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/data/internal.h"

#define FJ_REQUIRE(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_jsonl: property violated: %s: ", #cond);                         \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define FJ_MAX_REC 4096

struct fj_ctx {
    uint64_t last_end, next_index;
    int pause, check;
};

static int fj_emit(void *vctx, const struct rec *r, struct st_error *err) {
    struct fj_ctx *c = vctx;
    FJ_REQUIRE(r->n_fields == 1 && strcmp(r->fields[0].name, "json") == 0, "fields");
    const uint8_t *d = r->fields[0].data;
    size_t n = r->fields[0].size;
    FJ_REQUIRE(n <= FJ_MAX_REC && !memchr(d, '\n', n), "record of %zu bytes", n);
    FJ_REQUIRE(n > 0, "empty record");
    FJ_REQUIRE(r->index == c->next_index && r->offset >= c->last_end && r->end > r->offset,
               "index/offsets");
    size_t bad;
    if (c->check) FJ_REQUIRE(jsonl_check_record(d, n, &bad) == 0, "unchecked record");
    c->last_end = r->end;
    c->next_index++;
    return c->pause;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    size_t piece = data[0] ? data[0] : (size_t)-1;
    struct fj_ctx c = {0, 0, (data[1] >> 1) & 1, data[1] & 1};
    enum comp kind = (enum comp)((data[1] >> 2) % 3);
    data += 2;
    size -= 2;
    size_t live = st_alloc_live_count();
    struct jsonl p;
    jsonl_init(&p, 0, 0, FJ_MAX_REC, c.check);
    struct decomp d;
    struct st_error err = {0};
    enum st_status rc = decomp_init(&d, kind, 20, 0, "f.jsonl", &err);
    uint8_t out[1000];
    size_t pos = 0;
    int spins = 0;
    while (rc == ST_OK && spins < 100000) {
        spins++;
        size_t n = size - pos < piece ? size - pos : piece, in_used, out_len, used;
        int fe;
        rc = decomp_run(&d, data + pos, n, &in_used, out, sizeof out, &out_len, &fe, "f.jsonl",
                        &err);
        if (rc) break;
        pos += in_used;
        for (size_t k = 0; k < out_len && rc == ST_OK; k += used) {
            rc = jsonl_feed(&p, out + k, out_len - k, &used, fj_emit, &c, "f.jsonl", &err);
            if (!used && rc == ST_OK) FJ_REQUIRE(0, "feed made no progress");
        }
        if (pos == size && !out_len && !fe) break;
    }
    if (rc == ST_OK) rc = decomp_finish(&d, "f.jsonl", &err);
    if (rc == ST_OK) rc = jsonl_end(&p, fj_emit, &c, "f.jsonl", &err);
    if (rc)
        FJ_REQUIRE((rc == ST_ERR_FORMAT || rc == ST_ERR_NOMEM) &&
                       strncmp(err.msg, "f.jsonl: ", 9) == 0,
                   "status %d: %s", (int)rc, err.msg);
    decomp_free(&d);
    jsonl_free(&p);
    FJ_REQUIRE(st_alloc_live_count() == live, "%zu allocations leaked",
               st_alloc_live_count() - live);
    return 0;
}
