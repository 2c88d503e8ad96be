/* fuzz_index.c: libFuzzer target for index manifests (index_parse, src/data/source.c): ours
 * ({"streamtune_index": 1, "shards": [...]}) and wids-shard-index-v1.
 *
 * DESIGN: the input is the manifest text, resolved against a fixed base URL. Properties: an
 * accepted manifest has 1..1e6 shards, each with a non-empty URL that is absolute or starts with
 * the base directory, a name, a size below 2^53, a sample count of -1 or below 2^53 and a hash
 * that is empty or 64 lower-case hex digits; a refusal is ST_ERR_FORMAT/ST_ERR_UNSUPPORTED with
 * a message naming the manifest; nothing leaks. tests/test_data.c replays fuzz/corpus/index and
 * fuzz/crashers/index; static names carry fi_. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/data/internal.h"

#define FI_REQUIRE(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_index: property violated: %s: ", #cond);                         \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t live = st_alloc_live_count();
    struct st_shard_list l;
    struct st_error err = {0};
    enum st_status rc =
        index_parse((const char *)data, size, "s3://bkt/dir/index.json", &l, "index.json", &err);
    if (rc == ST_OK) {
        FI_REQUIRE(l.n >= 1 && l.n <= 1000000, "%u shards", l.n);
        for (uint32_t i = 0; i < l.n; i++) {
            const struct st_shard_info *s = &l.shards[i];
            FI_REQUIRE(s->url && s->url[0] && s->name && s->name[0], "shard %u url/name", i);
            FI_REQUIRE(strstr(s->url, "://") || s->url[0] == '/' ||
                           strncmp(s->url, "s3://bkt/dir/", 13) == 0,
                       "shard %u url %s", i, s->url);
            FI_REQUIRE(s->size < (1ull << 53) && s->samples >= -1, "shard %u numbers", i);
            size_t h = strlen(s->sha256);
            FI_REQUIRE(h == 0 || h == 64, "shard %u hash length %zu", i, h);
            for (size_t k = 0; k < h; k++)
                FI_REQUIRE(isxdigit((unsigned char)s->sha256[k]) &&
                               !isupper((unsigned char)s->sha256[k]),
                           "shard %u hash", i);
        }
        st_shard_list_free(&l);
    } else {
        FI_REQUIRE((rc == ST_ERR_FORMAT || rc == ST_ERR_UNSUPPORTED || rc == ST_ERR_NOMEM) &&
                       strncmp(err.msg, "index.json: ", 12) == 0,
                   "status %d: %s", (int)rc, err.msg);
    }
    FI_REQUIRE(st_alloc_live_count() == live, "%zu allocations leaked",
               st_alloc_live_count() - live);
    return 0;
}
