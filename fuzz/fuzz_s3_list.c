/* fuzz_s3_list.c: libFuzzer target for the S3 XML readers (s3_parse_list, s3_parse_error,
 * xml_tag_text; src/data/s3.c): ListObjectsV2 answers and <Error> documents from a server.
 *
 * DESIGN: the input is the XML text as received (not NUL-terminated: the readers take a length).
 * Properties: an accepted page has keys that are non-empty C strings of at most 3 KiB, ETags of
 * at most 255 bytes, and a continuation token exactly when IsTruncated; the error reader always
 * returns terminated strings within their buffers; nothing leaks. tests/test_data.c replays
 * fuzz/corpus/s3_list and fuzz/crashers/s3_list; static names carry fx_. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/data/internal.h"

#define FX_REQUIRE(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_s3_list: property violated: %s: ", #cond);                       \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t live = st_alloc_live_count();
    const char *xml = (const char *)data;
    struct s3_list_page pg;
    struct st_error err = {0};
    if (s3_parse_list(xml, size, &pg, &err) == ST_OK) {
        for (size_t i = 0; i < pg.n; i++) {
            FX_REQUIRE(pg.objs[i].key && strlen(pg.objs[i].key) <= 3072, "key %zu", i);
            FX_REQUIRE(!pg.objs[i].etag || strlen(pg.objs[i].etag) < 256, "etag %zu", i);
        }
        FX_REQUIRE(!pg.truncated == !pg.next_token, "truncated %d, token %p", pg.truncated,
                   (void *)pg.next_token);
        s3_list_page_free(&pg);
    } else {
        FX_REQUIRE(err.msg[0] != '\0', "refusal without a message");
    }
    char code[64], msg[200];
    s3_parse_error(xml, size, code, sizeof code, msg, sizeof msg);
    FX_REQUIRE(memchr(code, 0, sizeof code) && memchr(msg, 0, sizeof msg), "unterminated");
    char tag[32];
    xml_tag_text(xml, size, "Key", tag, sizeof tag);
    FX_REQUIRE(memchr(tag, 0, sizeof tag), "unterminated tag text");
    FX_REQUIRE(st_alloc_live_count() == live, "%zu allocations leaked",
               st_alloc_live_count() - live);
    return 0;
}
