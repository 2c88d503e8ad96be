/* fuzz_tokenizer.c: libFuzzer target for the tokenizer loader and encoder.
 * First input byte picks the mode:
 *   even: the rest is a tokenizer.json; if it loads, encode/decode a few fixed strings with it.
 *   odd:  the rest is text; encode it with two small built-in tokenizers (byte-level with a regex
 *         pre-tokenizer, NFC, added tokens with lstrip/rstrip/single_word; SentencePiece-style
 *         with byte fallback and Metaspace), then decode and stream-decode the ids. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "streamtune/tokenizer.h"

static const char *BYTELEVEL_JSON =
    "{\"added_tokens\":[{\"id\":20,\"content\":\"<|s|>\",\"special\":true,\"lstrip\":true,"
    "\"rstrip\":true,\"single_word\":false,\"normalized\":false},{\"id\":21,\"content\":\"wo\","
    "\"special\":false,\"single_word\":true,\"normalized\":true,\"lstrip\":false,\"rstrip\":false}],"
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},{\"type\":"
    "\"Replace\",\"pattern\":{\"Regex\":\"\\\\s{3,}\"},\"content\":\"  \"}]},"
    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
    "{\"Regex\":\"(?i:'s|'t)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
    "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"Digits\",\"individual_digits\":true},"
    "{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"use_regex\":false}]},"
    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":"
    "\"<|s|>\"}},{\"Sequence\":{\"id\":\"A\"}}],\"special_tokens\":{}},"
    "\"decoder\":{\"type\":\"ByteLevel\"},"
    "\"model\":{\"type\":\"BPE\",\"ignore_merges\":true,\"vocab\":{\"a\":0,\"b\":1,\"c\":2,"
    "\"\\u0120\":3,\"ab\":4,\"\\u0120a\":5,\"abc\":6,\"w\":7,\"o\":8},"
    "\"merges\":[\"a b\",[\"\\u0120\",\"a\"],\"ab c\"]}}";

static const char *SP_JSON =
    "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},{\"id\":1,\"content\":"
    "\"<s>\",\"special\":true}],\"normalizer\":null,"
    "\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":"
    "\"first\",\"split\":true},"
    "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":"
    "\"\\u2581\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":"
    "\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
    "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,\"byte_fallback\":true,"
    "\"vocab\":{\"<unk>\":0,\"<s>\":1,\"<0x41>\":2,\"<0xC3>\":3,\"<0xA9>\":4,\"\\u2581\":5,\"h\":6,"
    "\"i\":7,\"hi\":8,\"\\u2581hi\":9},\"merges\":[\"h i\",\"\\u2581 hi\"]}}";

static struct st_tokenizer *builtin[2]; /* loaded once, kept for the process */

static void exercise(const struct st_tokenizer *t, const char *s, size_t n) {
    struct st_error err;
    struct st_ids ids = {0};
    if (st_tokenizer_encode(t, s, n, 1, &ids, &err) != ST_OK) return;
    char *text;
    size_t len;
    if (st_tokenizer_decode(t, ids.ids, ids.n, 0, &text, &len, &err) == ST_OK) st_free(text);
    if (st_tokenizer_decode(t, ids.ids, ids.n, 1, &text, &len, &err) == ST_OK) st_free(text);
    struct st_decode_stream ds;
    st_decode_stream_init(&ds, t, 0);
    for (size_t i = 0; i < ids.n && i < 64; i++) {
        const char *piece;
        st_decode_stream_step(&ds, ids.ids[i], &piece, &err);
    }
    st_decode_stream_flush(&ds);
    st_decode_stream_free(&ds);
    st_ids_free(&ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct st_error err;
    if (!builtin[0]) {
        if (st_tokenizer_parse(&builtin[0], BYTELEVEL_JSON, strlen(BYTELEVEL_JSON), "bytelevel", &err) ||
            st_tokenizer_parse(&builtin[1], SP_JSON, strlen(SP_JSON), "sp", &err))
            abort(); /* the built-in tokenizers must load */
    }
    if (size == 0) return 0;
    const char *rest = (const char *)data + 1;
    size_t n = size - 1;
    if ((data[0] & 1) == 0) {
        struct st_tokenizer *t;
        if (st_tokenizer_parse(&t, rest, n, "fuzz.json", &err) == ST_OK) {
            static const char *probes[] = {"", "hello world", "  x\n\ty", "<s>é😀 123"};
            for (int i = 0; i < 4; i++) exercise(t, probes[i], strlen(probes[i]));
            st_tokenizer_free(t);
        }
    } else {
        exercise(builtin[0], rest, n);
        exercise(builtin[1], rest, n);
    }
    return 0;
}
