/* test_formats.c: bad input to the format parsers (safetensors, sharded index, model folder,
 * config.json), a write/read round trip, and fail-the-Nth-allocation runs.
 *
 * DESIGN: every corrupt input is written into a fresh mkdtemp directory (removed at the end).
 * Each bad case checks three things: (a) the status code, (b) that the message names the file
 * and the field / byte offset / tensor at fault (strstr), (c) that st_alloc_live_count() is back
 * where it started (no leak on the error path). Valid bases come from tests/golden/. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "streamtune/config.h"
#include "streamtune/formats.h"
#include "streamtune/model.h"

#define GOLDEN ST_SOURCE_DIR "/tests/golden"

static char tmp_root[256];

/* ---------------------------------------------------------------- small file helpers */

static void rm_rf(const char *path) {
    struct stat sb;
    if (lstat(path, &sb) != 0) return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d))) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
                char sub[1024];
                snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
                rm_rf(sub);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* tmp_root/name (name may contain one level of directory). */
static const char *tmp_path(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", tmp_root, name);
    return buf;
}

static int write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    int ok = n == 0 || fwrite(p, 1, n, f) == n;
    return (fclose(f) == 0 && ok) ? 0 : 1;
}

/* Whole file via plain malloc (not st_malloc: test buffers stay out of the leak counts). */
static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[len] = '\0';
    if (n) *n = (size_t)len;
    return buf;
}

/* Copy the regular files of src into dst (created). */
static void copy_dir(const char *src, const char *dst) {
    mkdir(dst, 0700);
    DIR *d = opendir(src);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char a[1024], b[1024];
        snprintf(a, sizeof a, "%s/%s", src, e->d_name);
        snprintf(b, sizeof b, "%s/%s", dst, e->d_name);
        size_t n;
        char *buf = read_all(a, &n);
        if (buf) write_bytes(b, buf, n);
        free(buf);
    }
    closedir(d);
}

/* s with the first occurrence of `from` replaced by `to` (malloc'd); NULL when from is absent. */
static char *replace1(const char *s, const char *from, const char *to) {
    const char *p = strstr(s, from);
    if (!p) return NULL;
    size_t a = (size_t)(p - s), fl = strlen(from), tl = strlen(to), rest = strlen(p + fl);
    char *r = malloc(a + tl + rest + 1);
    memcpy(r, s, a);
    memcpy(r + a, to, tl);
    memcpy(r + a + tl, p + fl, rest + 1);
    return r;
}

/* A safetensors file: u64 LE `hlen`, `hbytes` bytes of header, data_len zero bytes of data. */
static int write_st_raw(const char *path, uint64_t hlen, const char *header, size_t hbytes,
                        size_t data_len) {
    size_t n = 8 + hbytes + data_len;
    uint8_t *buf = calloc(1, n);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(hlen >> (8 * i));
    memcpy(buf + 8, header, hbytes);
    int rc = write_bytes(path, buf, n);
    free(buf);
    return rc;
}
static int write_st(const char *path, const char *header, size_t data_len) {
    return write_st_raw(path, strlen(header), header, strlen(header), data_len);
}

/* ---------------------------------------------------------------- the check */

/* rc must be `want`; on an error the message must contain every string of subs (NULL-ended);
 * the live allocation count must be back at live0. `line` is the caller's line. */
static void expect_(int line, enum st_status rc, const struct st_error *err, enum st_status want,
                    size_t live0, const char *const *subs) {
    CHECKF(rc == want, "line %d: status '%s', want '%s' (message: %s)", line, st_status_str(rc),
           st_status_str(want), rc ? err->msg : "");
    if (rc != ST_OK && rc == want)
        for (int i = 0; subs[i]; i++)
            CHECKF(strstr(err->msg, subs[i]) != NULL, "line %d: message \"%s\" does not name '%s'",
                   line, err->msg, subs[i]);
    CHECKF(st_alloc_live_count() == live0, "line %d: %ld allocations leaked", line,
           (long)st_alloc_live_count() - (long)live0);
}
#define EXPECT(rc, err, want, live0, ...)                                                          \
    expect_(__LINE__, rc, &(err), want, live0, (const char *const[]){__VA_ARGS__, NULL})

/* Open `path` as safetensors; on success close it. */
static enum st_status open_close(const char *path, struct st_error *err) {
    struct st_safetensors *s = NULL;
    enum st_status rc = st_safetensors_open(&s, path, err);
    if (rc == ST_OK) st_safetensors_close(s);
    return rc;
}

/* ---------------------------------------------------------------- safetensors: file level */

TEST(st_truncated_and_absurd) {
    char p[512];
    struct st_error err = {0};
    size_t live0 = st_alloc_live_count();

    tmp_path(p, sizeof p, "empty.safetensors");
    write_bytes(p, "", 0);
    EXPECT(open_close(p, &err), err, ST_ERR_FORMAT, live0, p, "0 bytes", "8-byte header length");

    tmp_path(p, sizeof p, "five.safetensors");
    write_bytes(p, "\x10\0\0\0\0", 5);
    EXPECT(open_close(p, &err), err, ST_ERR_FORMAT, live0, p, "5 bytes", "8-byte header length");

    /* header cut short: the length says 100, 40 bytes follow */
    tmp_path(p, sizeof p, "cut_header.safetensors");
    const char *h = "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}";
    write_st_raw(p, 100, h, 40, 0);
    EXPECT(open_close(p, &err), err, ST_ERR_FORMAT, live0, p, "header length 100", "bytes 0-7",
           "exceeds the file size 48");

    /* header length absurd (2^40) */
    tmp_path(p, sizeof p, "absurd.safetensors");
    write_st_raw(p, 1ull << 40, h, strlen(h), 4);
    EXPECT(open_close(p, &err), err, ST_ERR_FORMAT, live0, p, "header length 1099511627776",
           "bytes 0-7", "absurd");
    /* all 64 bits set: no wrap-around in the length arithmetic */
    write_st_raw(p, UINT64_MAX, h, strlen(h), 4);
    EXPECT(open_close(p, &err), err, ST_ERR_FORMAT, live0, p, "bytes 0-7");

    /* data cut short: the tensor wants bytes [0, 16) of a 10-byte data buffer */
    tmp_path(p, sizeof p, "cut_data.safetensors");
    write_st(p, "{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", 10);
    EXPECT(open_close(p, &err), err, ST_ERR_FORMAT, live0, p, "tensor 'w'", "data_offsets [0, 16]",
           "out of range", "10 bytes");

    /* a directory with no weights; a missing file */
    tmp_path(p, sizeof p, "no_weights");
    mkdir(p, 0700);
    EXPECT(open_close(p, &err), err, ST_ERR_IO, live0, p, "no model.safetensors");
    tmp_path(p, sizeof p, "missing.safetensors");
    EXPECT(open_close(p, &err), err, ST_ERR_IO, live0, p, "cannot open");
}

/* ---------------------------------------------------------------- safetensors: header level */

struct hdr_case {
    const char *name;         /* also the file name */
    const char *header;       /* JSON header */
    size_t data_len;          /* bytes of (zero) data after it */
    const char *s1, *s2, *s3; /* what the message must name, besides the file */
};

#define W_F32_4 "\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]"
static const struct hdr_case hdr_cases[] = {
    {"not_json", "{\"w\": {" W_F32_4 "}", 16, "not valid JSON", "header byte", NULL},
    {"not_json_text", "hello", 0, "not valid JSON", "header byte 0", NULL},
    {"trailing_bytes", "{}   xyz", 0, "not valid JSON", "header byte 5", NULL},
    {"not_object", "[1, 2]", 0, "not a JSON object", NULL, NULL},
    {"string_root", "\"w\"", 0, "not a JSON object", NULL, NULL},
    {"entry_not_object", "{\"w\": 5}", 0, "tensor 'w'", "not an object", NULL},
    {"no_dtype", "{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "tensor 'w'", "'dtype'",
     NULL},
    {"dtype_not_string", "{\"w\": {\"dtype\": 4, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
     "tensor 'w'", "'dtype'", NULL},
    {"unknown_dtype", "{\"w\": {\"dtype\": \"F33\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
     "tensor 'w'", "unknown dtype 'F33'", NULL},
    {"shape_missing", "{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, "tensor 'w'",
     "'shape'", NULL},
    {"shape_not_array", "{\"w\": {\"dtype\": \"F32\", \"shape\": 4, \"data_offsets\": [0, 16]}}",
     16, "tensor 'w'", "'shape'", NULL},
    {"shape_negative",
     "{\"w\": {\"dtype\": \"F32\", \"shape\": [-1, 4], \"data_offsets\": [0, 16]}}", 16,
     "tensor 'w'", "shape[0]", "non-negative integer"},
    {"shape_fraction",
     "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 1.5], \"data_offsets\": [0, 12]}}", 16,
     "tensor 'w'", "shape[1]", "integer"},
    {"shape_string", "{\"w\": {\"dtype\": \"F32\", \"shape\": [\"4\"], \"data_offsets\": [0, 16]}}",
     16, "tensor 'w'", "shape[0]", NULL},
    {"shape_huge_number",
     "{\"w\": {\"dtype\": \"U8\", \"shape\": [1e300], \"data_offsets\": [0, 1]}}", 1, "tensor 'w'",
     "shape[0]", NULL},
    {"shape_9_dims",
     "{\"w\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 1]}}", 1,
     "tensor 'w'", "9 dimensions", NULL},
    /* numel = 2^80 overflows 64 bits */
    {"shape_numel_overflow",
     "{\"w\": {\"dtype\": \"U8\", \"shape\": [1099511627776, 1099511627776], "
     "\"data_offsets\": [0, 1]}}",
     1, "tensor 'w'", "shape overflows", NULL},
    /* numel = 2^62 fits, numel * 4 bytes does not */
    {"shape_bytes_overflow",
     "{\"w\": {\"dtype\": \"F32\", \"shape\": [2147483648, 2147483648], \"data_offsets\": [0, 4]}}",
     4, "tensor 'w'", "shape overflows", NULL},
    /* numel * size fits in 64 bits but is far past the data */
    {"shape_huge_fits",
     "{\"w\": {\"dtype\": \"F32\", \"shape\": [1048576, 1048576], \"data_offsets\": [0, 16]}}", 16,
     "tensor 'w'", "needs 4398046511104 bytes", "span 16"},
    {"offsets_missing", "{\"w\": {\"dtype\": \"F32\", \"shape\": [4]}}", 16, "tensor 'w'",
     "'data_offsets'", NULL},
    {"offsets_one", "{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [16]}}", 16,
     "tensor 'w'", "'data_offsets'", NULL},
    {"offsets_three", "{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 8, 16]}}",
     16, "tensor 'w'", "'data_offsets'", NULL},
    {"offsets_negative",
     "{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [-16, 0]}}", 16, "tensor 'w'",
     "'data_offsets'", NULL},
    {"offsets_fraction",
     "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0.5, 4.5]}}", 16,
     "tensor 'w'", "'data_offsets'", NULL},
    {"offsets_out_of_range",
     "{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [1000, 1016]}}", 16,
     "tensor 'w'", "data_offsets [1000, 1016] out of range", "16 bytes"},
    {"offsets_begin_gt_end",
     "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}}", 16, "tensor 'w'",
     "data_offsets [8, 4]", "begin is after end"},
    {"size_mismatch", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 8]}}",
     16, "tensor 'w'", "F32", "needs 16 bytes but data_offsets span 8"},
    {"size_mismatch_bf16",
     "{\"w\": {\"dtype\": \"BF16\", \"shape\": [4], \"data_offsets\": [0, 16]}}", 16, "tensor 'w'",
     "BF16", "needs 8 bytes"},
    {"overlap",
     "{\"a\": {" W_F32_4
     "}, \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}",
     16, "'a'", "'b'", "overlap"},
    {"overlap_same", "{\"a\": {" W_F32_4 "}, \"b\": {" W_F32_4 "}}", 16, "'a'", "'b'", "overlap"},
    /* an empty tensor between two overlapping ones must not hide the overlap */
    {"overlap_behind_empty",
     "{\"a\": {" W_F32_4 "}, \"e\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 8]},"
     " \"c\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}",
     16, "'a'", "'c'", "overlap"},
    {"duplicate_name",
     "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
     "\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}",
     16, "tensor 'w'", "appears twice", NULL},
    {"metadata_not_string",
     "{\"__metadata__\": {\"format\": \"pt\", \"step\": 5}, \"w\": {" W_F32_4 "}}", 16,
     "__metadata__.step", "not a string", NULL},
    {"metadata_nested", "{\"__metadata__\": {\"x\": {\"y\": \"z\"}}}", 0, "__metadata__.x",
     "not a string", NULL},
    {"metadata_not_object", "{\"__metadata__\": \"pt\"}", 0, "__metadata__", "not an object", NULL},
};

TEST(st_bad_headers) {
    for (size_t i = 0; i < sizeof hdr_cases / sizeof hdr_cases[0]; i++) {
        const struct hdr_case *c = &hdr_cases[i];
        char name[128], p[512];
        snprintf(name, sizeof name, "%s.safetensors", c->name);
        tmp_path(p, sizeof p, name);
        write_st(p, c->header, c->data_len);
        struct st_error err = {0};
        size_t live0 = st_alloc_live_count();
        /* whole file */
        enum st_status rc = open_close(p, &err);
        CHECKF(rc == ST_ERR_FORMAT, "%s: status '%s': %s", c->name, st_status_str(rc), err.msg);
        const char *subs[] = {p, c->s1, c->s2, c->s3};
        for (int k = 0; k < 4 && rc; k++)
            if (subs[k])
                CHECKF(strstr(err.msg, subs[k]) != NULL, "%s: message \"%s\" does not name '%s'",
                       c->name, err.msg, subs[k]);
        CHECKF(st_alloc_live_count() == live0, "%s: leak", c->name);
        /* the pure parser on the same bytes */
        struct st_st_header hdr;
        struct st_error err2 = {0};
        rc = st_st_header_parse(&hdr, c->header, strlen(c->header), c->data_len, "buf.hdr", &err2);
        CHECKF(rc == ST_ERR_FORMAT, "%s (buffer): status '%s'", c->name, st_status_str(rc));
        CHECKF(strstr(err2.msg, "buf.hdr") != NULL, "%s: %s", c->name, err2.msg);
        CHECKF(hdr.tensors == NULL && hdr.names == NULL && hdr.n_tensors == 0,
               "%s: header not reset", c->name);
        CHECKF(st_alloc_live_count() == live0, "%s (buffer): leak", c->name);
    }
}

/* Valid corner cases the parser must accept. */
TEST(st_good_headers) {
    size_t live0 = st_alloc_live_count();
    struct st_error err = {0};
    struct st_st_header h;
    /* empty header, whitespace padding, metadata only, a 0-element and a scalar tensor, a hole */
    const char *good[] = {
        "{}",
        "{}       ",
        "{\"__metadata__\": {\"format\": \"pt\"}}\n",
        "{\"e\": {\"dtype\": \"F32\", \"shape\": [0, 5], \"data_offsets\": [0, 0]}, "
        "\"s\": {\"dtype\": \"I64\", \"shape\": [], \"data_offsets\": [0, 8]}, "
        "\"z\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [15, 16]}}",
    };
    int want_n[] = {0, 0, 0, 3};
    for (int i = 0; i < 4; i++) {
        enum st_status rc = st_st_header_parse(&h, good[i], strlen(good[i]), 16, "good", &err);
        CHECKF(rc == ST_OK, "good[%d]: %s", i, err.msg);
        if (rc) continue;
        CHECK(h.n_tensors == want_n[i]);
        if (i == 3) {
            CHECK(strcmp(h.tensors[0].name, "e") == 0 && h.tensors[0].nbytes == 0);
            CHECK(h.tensors[1].ndim == 0 && h.tensors[1].nbytes == 8);
            CHECK(st_tensor_numel(&h.tensors[1]) == 1 && st_tensor_numel(&h.tensors[0]) == 0);
            CHECK(h.tensors[2].offset == 15);
        }
        st_st_header_free(&h);
    }
    CHECK(st_alloc_live_count() == live0);
}

/* ---------------------------------------------------------------- safetensors: write + read */

TEST(st_round_trip) {
    float f32[6] = {0.5f, -1.25f, 3.0f, 1e-30f, -0.0f, 65504.0f};
    uint16_t bf16[5] = {0x3f80, 0xbf80, 0x7f80, 0x0001, 0x4049};
    uint16_t f16[4] = {0x3c00, 0xc000, 0x7bff, 0x0400};
    int32_t i32[3] = {-1, 0, 2147483647};
    int64_t i64 = -42;
    uint8_t u8[3] = {1, 2, 255};
    struct st_tensor_out outs[] = {
        {"model.f32", ST_F32, 2, {2, 3}, f32}, {"model.bf16", ST_BF16, 1, {5}, bf16},
        {"empty", ST_F32, 2, {0, 7}, NULL},    {"model.f16", ST_F16, 2, {2, 2}, f16},
        {"ints", ST_I32, 1, {3}, i32},         {"scalar", ST_I64, 0, {0}, &i64},
        {"bytes", ST_U8, 3, {1, 3, 1}, u8},
    };
    int n = (int)(sizeof outs / sizeof outs[0]);
    char p[512];
    tmp_path(p, sizeof p, "round.safetensors");
    struct st_error err = {0};
    size_t live0 = st_alloc_live_count();
    enum st_status rc = st_safetensors_write(p, outs, n, &err);
    CHECKF(rc == ST_OK, "%s", err.msg);
    CHECK(st_alloc_live_count() == live0);

    size_t fsize;
    uint8_t *file = (uint8_t *)read_all(p, &fsize);
    CHECK(file && fsize > 8);
    if (!file) return;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)file[i] << (8 * i);
    CHECKF(hlen % 8 == 0, "header length %llu is not padded to 8", (unsigned long long)hlen);

    struct st_safetensors *s = NULL;
    rc = st_safetensors_open(&s, p, &err);
    CHECKF(rc == ST_OK, "%s", err.msg);
    if (rc == ST_OK) {
        CHECK(st_safetensors_count(s) == n);
        for (int i = 0; i < n; i++) {
            const struct st_tensor_view *t = st_safetensors_find(s, outs[i].name);
            CHECKF(t != NULL, "%s not found", outs[i].name);
            if (!t) continue;
            size_t bytes = st_dtype_size(outs[i].dtype);
            for (int d = 0; d < outs[i].ndim; d++)
                bytes *= (size_t)outs[i].shape[d];
            CHECKF(t->dtype == outs[i].dtype, "%s: dtype %s", t->name, st_dtype_name(t->dtype));
            CHECKF(t->ndim == outs[i].ndim, "%s: ndim %d", t->name, t->ndim);
            for (int d = 0; d < t->ndim && d < outs[i].ndim; d++)
                CHECKF(t->shape[d] == outs[i].shape[d], "%s: shape[%d]", t->name, d);
            CHECKF(t->nbytes == bytes, "%s: %zu bytes, want %zu", t->name, t->nbytes, bytes);
            CHECK(bytes == 0 || memcmp(t->data, outs[i].data, bytes) == 0);
            CHECK(strcmp(t->file, p) == 0);
            /* offset is the absolute position in the file */
            CHECK(t->offset >= 8 + hlen && t->offset + t->nbytes <= fsize);
            CHECK(bytes == 0 || memcmp(file + t->offset, outs[i].data, bytes) == 0);
        }
        CHECK(st_safetensors_find(s, "nope") == NULL);
        CHECK(st_safetensors_at(s, n) == NULL && st_safetensors_at(s, -1) == NULL);
        /* expect(): shape and dtype checks name the tensor */
        const struct st_tensor_view *t;
        int64_t good_shape[2] = {2, 3}, bad_shape[2] = {3, 2};
        CHECK(st_safetensors_expect(s, "model.f32", 2, good_shape, &t, &err) == ST_OK);
        EXPECT(st_safetensors_expect(s, "model.f32", 2, bad_shape, &t, &err), err, ST_ERR_SHAPE,
               st_alloc_live_count(), "model.f32", "[2, 3]", "expected [3, 2]", p);
        int64_t ishape[1] = {3};
        EXPECT(st_safetensors_expect(s, "ints", 1, ishape, &t, &err), err, ST_ERR_UNSUPPORTED,
               st_alloc_live_count(), "'ints'", "I32", p);
        EXPECT(st_safetensors_expect(s, "absent", 1, ishape, &t, &err), err, ST_ERR_FORMAT,
               st_alloc_live_count(), "'absent'", p);
        st_safetensors_close(s);
    }
    CHECK(st_alloc_live_count() == live0);

    /* every proper prefix of the valid file is refused, naming the file */
    char q[512];
    tmp_path(q, sizeof q, "prefix.safetensors");
    int bad = 0;
    for (size_t cut = 0; cut < fsize; cut++) {
        write_bytes(q, file, cut);
        rc = open_close(q, &err);
        if (rc != ST_ERR_FORMAT || !strstr(err.msg, q) || st_alloc_live_count() != live0) {
            if (bad++ < 3)
                CHECKF(0, "prefix of %zu bytes: status '%s': %s", cut, st_status_str(rc), err.msg);
        }
    }
    CHECKF(bad == 0, "%d prefixes not refused", bad);
    free(file);

    /* writing into a missing directory fails cleanly, naming the path */
    tmp_path(q, sizeof q, "no/such/dir.safetensors");
    EXPECT(st_safetensors_write(q, outs, n, &err), err, ST_ERR_IO, live0, "no/such/dir");
}

/* ---------------------------------------------------------------- sharded */

static const char *SHARD1 = "model-00001-of-00002.safetensors";
static const char *UP1 =
    "\"model.layers.1.mlp.up_proj.weight\": \"model-00002-of-00002.safetensors\"";

/* Copy smollm_sharded into tmp/name and rewrite its index with `from` -> `to` (from NULL: write
 * `whole` as the index). Returns the directory in dir. */
static void sharded_variant(char *dir, size_t n, const char *name, const char *from, const char *to,
                            const char *whole) {
    tmp_path(dir, n, name);
    copy_dir(GOLDEN "/smollm_sharded", dir);
    char idx[1024];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    if (from) {
        char *text = read_all(idx, NULL);
        char *new_text = text ? replace1(text, from, to) : NULL;
        CHECKF(new_text != NULL, "%s: '%s' not in the golden index", name, from);
        if (new_text) write_bytes(idx, new_text, strlen(new_text));
        free(text);
        free(new_text);
    } else if (whole) {
        write_bytes(idx, whole, strlen(whole));
    }
}

TEST(sharded) {
    char dir[512], idx[600];
    struct st_error err = {0};
    size_t live0 = st_alloc_live_count();

    /* the fine one: every weight_map entry is found in the shard it names */
    sharded_variant(dir, sizeof dir, "sh_ok", NULL, NULL, NULL);
    struct st_safetensors *s = NULL;
    enum st_status rc = st_safetensors_open(&s, dir, &err);
    CHECKF(rc == ST_OK, "%s", err.msg);
    if (rc == ST_OK) {
        snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
        char *text = read_all(idx, NULL);
        cJSON *root = cJSON_Parse(text);
        cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
        CHECK(cJSON_GetArraySize(wm) == st_safetensors_count(s));
        for (cJSON *e = wm ? wm->child : NULL; e; e = e->next) {
            const struct st_tensor_view *t = st_safetensors_find(s, e->string);
            CHECKF(t != NULL, "%s missing", e->string);
            if (t) CHECK(strstr(t->file, e->valuestring) != NULL);
        }
        cJSON_Delete(root);
        free(text);
        st_safetensors_close(s);
    }
    CHECK(st_alloc_live_count() == live0);

    /* weight_map names a missing file */
    sharded_variant(dir, sizeof dir, "sh_missing", UP1,
                    "\"model.layers.1.mlp.up_proj.weight\": \"model-00003-of-00003.safetensors\"",
                    NULL);
    EXPECT(open_close(dir, &err), err, ST_ERR_IO, live0, "model.safetensors.index.json",
           "weight_map", "model-00003-of-00003.safetensors", "cannot open");

    /* '/' or '..' in a shard name */
    const char *escapes[] = {"../model-00001-of-00002.safetensors", "sub/x.safetensors",
                             "/etc/passwd", "..", ""};
    for (int i = 0; i < 5; i++) {
        char to[256], nm[32], want[200];
        snprintf(to, sizeof to, "\"model.layers.1.mlp.up_proj.weight\": \"%s\"", escapes[i]);
        snprintf(nm, sizeof nm, "sh_escape%d", i);
        snprintf(want, sizeof want, "'%s'", escapes[i]);
        sharded_variant(dir, sizeof dir, nm, UP1, to, NULL);
        EXPECT(open_close(dir, &err), err, ST_ERR_FORMAT, live0, "model.safetensors.index.json",
               "weight_map.model.layers.1.mlp.up_proj.weight", want);
    }

    /* a tensor that is not in the shard the index names */
    sharded_variant(dir, sizeof dir, "sh_wrong_shard", UP1,
                    "\"model.layers.1.mlp.up_proj.weight\": \"model-00001-of-00002.safetensors\"",
                    NULL);
    EXPECT(open_close(dir, &err), err, ST_ERR_FORMAT, live0, "model.safetensors.index.json",
           "'model.layers.1.mlp.up_proj.weight'", "in model-00001-of-00002.safetensors",
           "it is in model-00002-of-00002.safetensors");

    /* a tensor the index lists that no shard has */
    sharded_variant(dir, sizeof dir, "sh_phantom", "\"weight_map\": {",
                    "\"weight_map\": {\"extra.weight\": \"model-00001-of-00002.safetensors\",",
                    NULL);
    EXPECT(open_close(dir, &err), err, ST_ERR_FORMAT, live0, "model.safetensors.index.json",
           "'extra.weight'", SHARD1, "does not contain it");

    /* a tensor a shard has that the index does not list */
    sharded_variant(dir, sizeof dir, "sh_unlisted",
                    "\"model.norm.weight\": \"model-00002-of-00002.safetensors\"",
                    "\"extra.weight\": \"model-00002-of-00002.safetensors\"", NULL);
    EXPECT(open_close(dir, &err), err, ST_ERR_FORMAT, live0, "model.safetensors.index.json",
           "'extra.weight'", "does not contain it");
    sharded_variant(dir, sizeof dir, "sh_unlisted2",
                    ",\n    \"model.norm.weight\": \"model-00002-of-00002.safetensors\"", "", NULL);
    EXPECT(open_close(dir, &err), err, ST_ERR_FORMAT, live0, "model.safetensors.index.json",
           "'model.norm.weight'", "model-00002-of-00002.safetensors", "not in weight_map");

    /* malformed index */
    sharded_variant(dir, sizeof dir, "sh_value_type", UP1,
                    "\"model.layers.1.mlp.up_proj.weight\": 2", NULL);
    EXPECT(open_close(dir, &err), err, ST_ERR_FORMAT, live0, "model.safetensors.index.json",
           "weight_map.model.layers.1.mlp.up_proj.weight", "not a string");
    sharded_variant(dir, sizeof dir, "sh_no_map", NULL, NULL, "{\"metadata\": {}}");
    EXPECT(open_close(dir, &err), err, ST_ERR_FORMAT, live0, "model.safetensors.index.json",
           "'weight_map'");
    sharded_variant(dir, sizeof dir, "sh_empty_map", NULL, NULL, "{\"weight_map\": {}}");
    EXPECT(open_close(dir, &err), err, ST_ERR_FORMAT, live0, "model.safetensors.index.json",
           "weight_map is empty");
    sharded_variant(dir, sizeof dir, "sh_not_json", NULL, NULL, "{\"weight_map\": {\"a\": ");
    EXPECT(open_close(dir, &err), err, ST_ERR_FORMAT, live0, "model.safetensors.index.json",
           "not valid JSON", "byte");
    sharded_variant(dir, sizeof dir, "sh_trailing", NULL, NULL, "{\"weight_map\": {}} {}");
    EXPECT(open_close(dir, &err), err, ST_ERR_FORMAT, live0, "model.safetensors.index.json",
           "not valid JSON", "byte 19");

    /* a corrupt shard: named in the message along with the index */
    sharded_variant(dir, sizeof dir, "sh_bad_shard", NULL, NULL, NULL);
    char shard[600];
    snprintf(shard, sizeof shard, "%s/model-00002-of-00002.safetensors", dir);
    size_t n;
    char *bytes = read_all(shard, &n);
    if (bytes) write_bytes(shard, bytes, n - 100);
    free(bytes);
    EXPECT(open_close(dir, &err), err, ST_ERR_FORMAT, live0, "model.safetensors.index.json",
           "model-00002-of-00002.safetensors", "out of range");

    /* the same tensor in two shards */
    tmp_path(dir, sizeof dir, "sh_twice");
    mkdir(dir, 0700);
    float x[2] = {1, 2};
    struct st_tensor_out a[] = {{"x", ST_F32, 1, {2}, x}, {"y", ST_F32, 1, {2}, x}};
    snprintf(shard, sizeof shard, "%s/a.safetensors", dir);
    CHECK(st_safetensors_write(shard, a, 2, &err) == ST_OK);
    snprintf(shard, sizeof shard, "%s/b.safetensors", dir);
    CHECK(st_safetensors_write(shard, a + 1, 1, &err) == ST_OK);
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    const char *twice = "{\"weight_map\": {\"x\": \"a.safetensors\", \"y\": \"b.safetensors\"}}";
    write_bytes(idx, twice, strlen(twice));
    EXPECT(open_close(dir, &err), err, ST_ERR_FORMAT, live0, "tensor 'y'", "a.safetensors",
           "b.safetensors", "both");
}

/* ---------------------------------------------------------------- model folder */

/* Rewrite dir/model.safetensors from src: drop tensor `drop`, retype tensor `retype` to dt. */
static enum st_status rewrite_model(const char *src, const char *dir, const char *drop,
                                    const char *retype, enum st_dtype dt) {
    struct st_error err;
    struct st_safetensors *s = NULL;
    enum st_status rc = st_safetensors_open(&s, src, &err);
    if (rc) return rc;
    int n = st_safetensors_count(s), m = 0;
    struct st_tensor_out *outs = calloc((size_t)n, sizeof *outs);
    for (int i = 0; i < n; i++) {
        const struct st_tensor_view *t = st_safetensors_at(s, i);
        if (drop && strcmp(t->name, drop) == 0) continue;
        struct st_tensor_out *o = &outs[m++];
        o->name = t->name;
        o->dtype = retype && strcmp(t->name, retype) == 0 ? dt : t->dtype;
        o->ndim = t->ndim;
        memcpy(o->shape, t->shape, sizeof o->shape);
        o->data = t->data;
    }
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    rc = st_safetensors_write(path, outs, m, &err);
    free(outs);
    st_safetensors_close(s);
    return rc;
}

TEST(model_folder) {
    char dir[512], cfg[600], weights[600];
#define LLAMA2 GOLDEN "/llama2_f32"
    tmp_path(dir, sizeof dir, "model");
    copy_dir(LLAMA2, dir);
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    snprintf(weights, sizeof weights, "%s/model.safetensors", dir);
    struct st_model m;
    struct st_error err = {0};
    size_t live0 = st_alloc_live_count();

    enum st_status rc = st_model_load(&m, dir, &err);
    CHECKF(rc == ST_OK, "%s", err.msg);
    if (rc == ST_OK) st_model_free(&m);
    CHECK(st_alloc_live_count() == live0);

    /* a missing tensor */
    const char *up = "model.layers.1.mlp.up_proj.weight";
    CHECK(rewrite_model(LLAMA2 "/model.safetensors", dir, up, NULL, ST_F32) == ST_OK);
    EXPECT(st_model_load(&m, dir, &err), err, ST_ERR_FORMAT, live0, weights,
           "missing tensor 'model.layers.1.mlp.up_proj.weight'");

    /* a weight stored as I32 */
    const char *k = "model.layers.0.self_attn.k_proj.weight";
    CHECK(rewrite_model(LLAMA2 "/model.safetensors", dir, NULL, k, ST_I32) == ST_OK);
    EXPECT(st_model_load(&m, dir, &err), err, ST_ERR_UNSUPPORTED, live0, weights,
           "tensor 'model.layers.0.self_attn.k_proj.weight'", "dtype I32");

    /* shapes against a config that says otherwise */
    CHECK(rewrite_model(LLAMA2 "/model.safetensors", dir, NULL, NULL, ST_F32) == ST_OK);
    char *text = read_all(cfg, NULL);
    char *wrong = text ? replace1(text, "\"hidden_size\": 40", "\"hidden_size\": 48") : NULL;
    CHECK(wrong != NULL);
    if (wrong) write_bytes(cfg, wrong, strlen(wrong));
    EXPECT(st_model_load(&m, dir, &err), err, ST_ERR_SHAPE, live0, weights,
           "tensor 'model.embed_tokens.weight'", "shape [67, 40]", "expected [67, 48]",
           "config.json");
    free(wrong);
    wrong = text ? replace1(text, "\"intermediate_size\": 72", "\"intermediate_size\": 70") : NULL;
    if (wrong) write_bytes(cfg, wrong, strlen(wrong));
    EXPECT(st_model_load(&m, dir, &err), err, ST_ERR_SHAPE, live0, weights,
           "tensor 'model.layers.0.mlp.gate_proj.weight'", "expected [70, 40]");
    free(wrong);

    /* missing config.json, then missing weights */
    unlink(cfg);
    EXPECT(st_model_load(&m, dir, &err), err, ST_ERR_IO, live0, cfg, "cannot open");
    if (text) write_bytes(cfg, text, strlen(text));
    free(text);
    unlink(weights);
    EXPECT(st_model_load(&m, dir, &err), err, ST_ERR_IO, live0, dir, "no model.safetensors");
}

/* ---------------------------------------------------------------- config.json */

static const char *BASE_CFG =
    "{\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": 64, "
    "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
    "\"num_key_value_heads\": 2, \"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, "
    "\"hidden_act\": \"silu\", \"bos_token_id\": 1, \"eos_token_id\": 2}";

/* BASE_CFG with `from` replaced by `to` (from NULL: unchanged) and `extra` keys added at the end.
 */
static char *cfg_variant(const char *from, const char *to, const char *extra) {
    char *a = from ? replace1(BASE_CFG, from, to) : strdup(BASE_CFG);
    if (!a) return NULL;
    if (extra) {
        char ins[1024];
        snprintf(ins, sizeof ins, ", %s}", extra);
        char *b = malloc(strlen(a) + strlen(ins) + 1);
        size_t k = strlen(a) - 1; /* the closing brace */
        memcpy(b, a, k);
        strcpy(b + k, ins);
        free(a);
        a = b;
    }
    return a;
}

struct cfg_case {
    const char *from, *to, *extra;
    enum st_status want;
    const char *s1, *s2; /* what the message must name besides the file */
};

static const struct cfg_case cfg_bad[] = {
    {"\"model_type\": \"llama\", ", "", NULL, ST_ERR_FORMAT, "'model_type'", NULL},
    {"\"llama\"", "7", NULL, ST_ERR_FORMAT, "'model_type'", NULL},
    {"\"llama\"", "\"gemma2\"", NULL, ST_ERR_UNSUPPORTED, "'gemma2' is not supported yet",
     "supported: llama, mistral, qwen2, gemma"},
    {"\"llama\"", "\"qwen3\"", NULL, ST_ERR_UNSUPPORTED, "'qwen3' is not supported yet",
     "supported: llama, mistral, qwen2, gemma"},
    {"\"llama\"", "\"frobnicator\"", NULL, ST_ERR_UNSUPPORTED, "'frobnicator' is unknown",
     "supported: llama, mistral, qwen2, gemma"},
    {"\"hidden_size\": 64, ", "", NULL, ST_ERR_FORMAT, "missing required key 'hidden_size'", NULL},
    {"\"vocab_size\": 100, ", "", NULL, ST_ERR_FORMAT, "'vocab_size'", NULL},
    {"\"num_attention_heads\": 4, ", "", NULL, ST_ERR_FORMAT, "'num_attention_heads'", NULL},
    {"\"hidden_size\": 64", "\"hidden_size\": \"64\"", NULL, ST_ERR_FORMAT,
     "'hidden_size' must be an integer", NULL},
    {"\"hidden_size\": 64", "\"hidden_size\": 64.5", NULL, ST_ERR_FORMAT,
     "'hidden_size' must be an integer", NULL},
    {"\"hidden_size\": 64", "\"hidden_size\": true", NULL, ST_ERR_FORMAT, "'hidden_size'", NULL},
    {"\"hidden_size\": 64", "\"hidden_size\": -64", NULL, ST_ERR_FORMAT, "'hidden_size' = -64",
     "out of range"},
    {"\"hidden_size\": 64", "\"hidden_size\": 1e12", NULL, ST_ERR_FORMAT, "'hidden_size'",
     "out of range"},
    {"\"hidden_size\": 64", "\"hidden_size\": 1e400", NULL, ST_ERR_FORMAT, "'hidden_size'", NULL},
    {"\"vocab_size\": 100", "\"vocab_size\": 0", NULL, ST_ERR_FORMAT, "'vocab_size' = 0",
     "out of range"},
    {"\"num_hidden_layers\": 2", "\"num_hidden_layers\": 513", NULL, ST_ERR_FORMAT,
     "'num_hidden_layers' = 513", "out of range"},
    {"\"intermediate_size\": 128", "\"intermediate_size\": 2147483648", NULL, ST_ERR_FORMAT,
     "'intermediate_size'", "out of range"},
    {"\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3", NULL, ST_ERR_FORMAT,
     "num_attention_heads (4)", "num_key_value_heads (3)"},
    {"\"num_key_value_heads\": 2", "\"num_key_value_heads\": 0", NULL, ST_ERR_FORMAT,
     "'num_key_value_heads' = 0", NULL},
    {NULL, NULL, "\"head_dim\": 15", ST_ERR_FORMAT, "head_dim 15", "even"},
    {"\"hidden_size\": 64", "\"hidden_size\": 36", NULL, ST_ERR_FORMAT, "head_dim 9", "even"},
    {"\"hidden_size\": 64", "\"hidden_size\": 66", NULL, ST_ERR_FORMAT, "hidden_size 66",
     "num_attention_heads 4"},
    /* found by fuzz_config: "head_dim": null took the default hidden_size / heads = 0 unchecked */
    {"\"hidden_size\": 64", "\"hidden_size\": 2", "\"head_dim\": null", ST_ERR_FORMAT,
     "hidden_size 2", "num_attention_heads 4"},
    {"\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 0", NULL, ST_ERR_FORMAT, "'rms_norm_eps'", NULL},
    /* found by fuzz_config: positive as a double, 0 as the float the kernels use */
    {"\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 1e-85", NULL, ST_ERR_FORMAT,
     "'rms_norm_eps' = 1e-85", NULL},
    {"\"rope_theta\": 10000.0", "\"rope_theta\": -1", NULL, ST_ERR_FORMAT, "'rope_theta'", NULL},
    {"\"rope_theta\": 10000.0", "\"rope_theta\": \"big\"", NULL, ST_ERR_FORMAT,
     "'rope_theta' must be a number", NULL},
    {NULL, NULL, "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0}", ST_ERR_UNSUPPORTED,
     "rope_scaling type 'yarn'", "supported: default, linear, llama3"},
    {NULL, NULL, "\"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 2.0}",
     ST_ERR_UNSUPPORTED, "rope_scaling type 'dynamic'", NULL},
    {NULL, NULL, "\"rope_parameters\": {\"rope_type\": \"yarn\", \"rope_theta\": 1e6}",
     ST_ERR_UNSUPPORTED, "rope_parameters type 'yarn'", NULL},
    {NULL, NULL, "\"rope_scaling\": \"linear\"", ST_ERR_FORMAT, "'rope_scaling'", NULL},
    {NULL, NULL, "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 0}", ST_ERR_FORMAT,
     "rope_scaling.factor", NULL},
    {NULL, NULL,
     "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 4, "
     "\"high_freq_factor\": 1}",
     ST_ERR_FORMAT, "rope_scaling", "high_freq_factor > low_freq_factor"},
    {"\"silu\"", "\"relu\"", NULL, ST_ERR_UNSUPPORTED, "hidden_act 'relu'",
     "supported: silu, gelu_pytorch_tanh"},
    {"\"eos_token_id\": 2", "\"eos_token_id\": [2, 1000]", NULL, ST_ERR_FORMAT, "eos_token_id[1]",
     NULL},
    {"\"eos_token_id\": 2", "\"eos_token_id\": [2.5]", NULL, ST_ERR_FORMAT, "eos_token_id[0]",
     NULL},
    {"\"eos_token_id\": 2", "\"eos_token_id\": [\"2\"]", NULL, ST_ERR_FORMAT, "eos_token_id[0]",
     NULL},
    {"\"eos_token_id\": 2", "\"eos_token_id\": [1,2,3,4,5,6,7,8,9]", NULL, ST_ERR_FORMAT,
     "eos_token_id[8]", NULL},
    {"\"eos_token_id\": 2", "\"eos_token_id\": 100", NULL, ST_ERR_FORMAT, "'eos_token_id' = 100",
     "out of range"},
    {"\"eos_token_id\": 2", "\"eos_token_id\": \"2\"", NULL, ST_ERR_FORMAT,
     "'eos_token_id' must be an integer", NULL},
    {"\"bos_token_id\": 1", "\"bos_token_id\": 100", NULL, ST_ERR_FORMAT, "'bos_token_id' = 100",
     NULL},
    {NULL, NULL,
     "\"quantization_config\": {\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true}",
     ST_ERR_UNSUPPORTED, "quantization_config", NULL},
    {NULL, NULL, "\"layer_types\": [\"full_attention\"]", ST_ERR_FORMAT,
     "layer_types has 1 entries for 2 layers", NULL},
    {NULL, NULL, "\"layer_types\": [\"full_attention\", \"chunked_attention\"]", ST_ERR_UNSUPPORTED,
     "layer_types[1] 'chunked_attention'", NULL},
    {NULL, NULL, "\"layer_types\": [\"full_attention\", 3]", ST_ERR_FORMAT, "layer_types[1]", NULL},
    {"\"llama\"", "\"mistral\"", "\"layer_types\": [\"sliding_attention\", \"full_attention\"]",
     ST_ERR_FORMAT, "layer 0 uses sliding attention", "'sliding_window'"},
    {NULL, NULL, "\"sliding_window\": -4", ST_ERR_FORMAT, "'sliding_window'", NULL},
};

TEST(config_bad) {
    const char *what = "cfgdir/config.json";
    size_t live0 = st_alloc_live_count();
    for (size_t i = 0; i < sizeof cfg_bad / sizeof cfg_bad[0]; i++) {
        const struct cfg_case *c = &cfg_bad[i];
        char *text = cfg_variant(c->from, c->to, c->extra);
        CHECKF(text != NULL, "case %zu: '%s' not in the base config", i, c->from);
        if (!text) continue;
        struct st_model_config cfg;
        struct st_error err = {0};
        enum st_status rc = st_config_parse(&cfg, text, strlen(text), what, &err);
        CHECKF(rc == c->want, "case %zu (%s): status '%s', want '%s': %s", i, text,
               st_status_str(rc), st_status_str(c->want), rc ? err.msg : "");
        const char *subs[] = {what, c->s1, c->s2};
        for (int k = 0; k < 3 && rc; k++)
            if (subs[k])
                CHECKF(strstr(err.msg, subs[k]) != NULL, "case %zu: message \"%s\" lacks '%s'", i,
                       err.msg, subs[k]);
        free(text);
    }
    /* not JSON / not an object / junk after the object */
    const char *broken[] = {"", "{\"model_type\": ", "[1, 2]", "null", "{\"a\": 1} x"};
    const char *broken_says[] = {"not valid JSON", "not valid JSON", "not a JSON object",
                                 "not a JSON object", "byte 9"};
    for (int i = 0; i < 5; i++) {
        struct st_model_config cfg;
        struct st_error err = {0};
        EXPECT(st_config_parse(&cfg, broken[i], strlen(broken[i]), what, &err), err, ST_ERR_FORMAT,
               live0, what, broken_says[i]);
    }
    /* the buffer need not be NUL-terminated: only len bytes are read */
    char buf[64];
    memset(buf, 'x', sizeof buf);
    memcpy(buf, "{\"model_type\": \"llama\"", 22);
    struct st_model_config cfg;
    struct st_error err = {0};
    EXPECT(st_config_parse(&cfg, buf, 22, what, &err), err, ST_ERR_FORMAT, live0, what,
           "not valid JSON");

    /* st_config_load: missing file, not JSON */
    char dir[512], path[600];
    tmp_path(dir, sizeof dir, "cfg_load");
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/config.json", dir);
    EXPECT(st_config_load(&cfg, dir, &err), err, ST_ERR_IO, live0, path, "cannot open");
    write_bytes(path, "{\"model_type\": \"llama\",,}", 25);
    EXPECT(st_config_load(&cfg, dir, &err), err, ST_ERR_FORMAT, live0, path, "not valid JSON",
           "near byte 2");
    CHECK(st_alloc_live_count() == live0);
}

static int cfg_ok(struct st_model_config *cfg, const char *from, const char *to,
                  const char *extra) {
    char *text = cfg_variant(from, to, extra);
    if (!text) return 1;
    struct st_error err = {0};
    enum st_status rc = st_config_parse(cfg, text, strlen(text), "ok/config.json", &err);
    if (rc) fprintf(stderr, "  %s\n  -> %s\n", text, err.msg);
    free(text);
    return rc != ST_OK;
}

TEST(config_good) {
    struct st_model_config c;
    CHECK(cfg_ok(&c, NULL, NULL, NULL) == 0);
    CHECK(c.n_eos == 1 && c.eos_token_ids[0] == 2 && c.bos_token_id == 1);
    CHECK(c.head_dim == 16 && c.n_kv_heads == 2 && c.rope_type == ST_ROPE_DEFAULT);
    /* eos_token_id: int, list, null, absent */
    CHECK(cfg_ok(&c, "\"eos_token_id\": 2", "\"eos_token_id\": [2, 5, 99]", NULL) == 0);
    CHECK(c.n_eos == 3 && c.eos_token_ids[0] == 2 && c.eos_token_ids[1] == 5 &&
          c.eos_token_ids[2] == 99);
    CHECK(cfg_ok(&c, "\"eos_token_id\": 2", "\"eos_token_id\": null", NULL) == 0);
    CHECK(c.n_eos == 0);
    CHECK(cfg_ok(&c, ", \"eos_token_id\": 2", "", NULL) == 0);
    CHECK(c.n_eos == 0);
    /* transformers v5: rope_parameters and dtype */
    CHECK(cfg_ok(&c, ", \"rope_theta\": 10000.0", "",
                 "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 500000.0}, "
                 "\"dtype\": \"bfloat16\"") == 0);
    CHECK(c.rope_theta == 500000.0 && c.rope_type == ST_ROPE_DEFAULT);
    CHECK(strcmp(c.torch_dtype, "bfloat16") == 0);
    CHECK(cfg_ok(&c, ", \"rope_theta\": 10000.0", "",
                 "\"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": 500000.0, "
                 "\"factor\": 32.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                 "\"original_max_position_embeddings\": 8192}") == 0);
    CHECK(c.rope_type == ST_ROPE_LLAMA3 && c.rope_factor == 32.0 && c.rope_theta == 500000.0 &&
          c.rope_original_max_pos == 8192);
    /* v4 rope_scaling linear; rope_scaling null */
    CHECK(cfg_ok(&c, NULL, NULL, "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}") == 0);
    CHECK(c.rope_type == ST_ROPE_LINEAR && c.rope_factor == 2.0);
    CHECK(cfg_ok(&c, NULL, NULL, "\"rope_scaling\": null") == 0);
    CHECK(c.rope_type == ST_ROPE_DEFAULT);
    /* v5 layer_types with a window (mistral style) */
    CHECK(cfg_ok(&c, "\"llama\"", "\"mistral\"",
                 "\"sliding_window\": 8, \"layer_types\": [\"sliding_attention\", "
                 "\"full_attention\"]") == 0);
    CHECK(st_config_layer_window(&c, 0) == 8 && st_config_layer_window(&c, 1) == 0);
    /* gemma: "gelu" means the tanh approximation; (1 + w) norm; tied embeddings */
    CHECK(cfg_ok(&c, "\"llama\"", "\"gemma\"", "\"hidden_activation\": \"gelu\"") == 0);
    CHECK(c.act == ST_ACT_GELU_TANH && c.norm_offset == 1.0f && c.tie_embeddings == 1);
    /* trailing whitespace, and a file that ends in a newline */
    char *t = cfg_variant(NULL, NULL, NULL);
    char buf[2048];
    snprintf(buf, sizeof buf, "\n  %s \n\t\r\n", t);
    free(t);
    struct st_error err = {0};
    CHECKF(st_config_parse(&c, buf, strlen(buf), "ws", &err) == ST_OK, "%s", err.msg);

    /* every golden config loads */
    const char *golden[] = {"llama2_f32", "llama3_gqa_bf16", "llama_linear_f16", "mistral_window",
                            "qwen2_bias", "gemma_geglu",     "smollm_sharded"};
    size_t live0 = st_alloc_live_count();
    for (int i = 0; i < 7; i++) {
        char dir[512];
        snprintf(dir, sizeof dir, GOLDEN "/%s", golden[i]);
        enum st_status rc = st_config_load(&c, dir, &err);
        CHECKF(rc == ST_OK, "%s: %s", golden[i], err.msg);
    }
    CHECK(st_alloc_live_count() == live0);
}

/* ---------------------------------------------------------------- fail the Nth allocation */

typedef enum st_status (*load_fn)(const char *arg, struct st_error *err);

static enum st_status do_open(const char *arg, struct st_error *err) {
    return open_close(arg, err);
}
static enum st_status do_config(const char *arg, struct st_error *err) {
    struct st_model_config c;
    return st_config_load(&c, arg, err);
}
static enum st_status do_model(const char *arg, struct st_error *err) {
    struct st_model m;
    enum st_status rc = st_model_load(&m, arg, err);
    if (rc == ST_OK) st_model_free(&m);
    return rc;
}
static enum st_status do_header(const char *arg, struct st_error *err) {
    struct st_st_header h;
    enum st_status rc = st_st_header_parse(&h, arg, strlen(arg), 64, "hdr", err);
    if (rc == ST_OK) st_st_header_free(&h);
    return rc;
}

/* For N = 1, 2, ...: fail the Nth allocation of fn(arg). Each run must be ST_ERR_NOMEM with a
 * message and no leak, until N passes the number of allocations and the call succeeds. A probe
 * allocation after the call tells whether the failure fired inside it: a success with the failure
 * fired means an allocation failure was swallowed. */
static void fail_nth(const char *label, load_fn fn, const char *arg) {
    long n;
    int done = 0;
    for (n = 1; n < 100000 && !done; n++) {
        size_t live0 = st_alloc_live_count();
        struct st_error err = {0};
        st_alloc_fail_nth(n);
        enum st_status rc = fn(arg, &err);
        void *probe = st_malloc(1); /* NULL iff the countdown had not reached 0 inside fn */
        st_alloc_fail_nth(0);
        if (rc == ST_OK) {
            CHECKF(probe == NULL, "%s: allocation %ld failed but the call succeeded", label, n);
            done = 1;
        } else {
            CHECKF(rc == ST_ERR_NOMEM, "%s: allocation %ld failed: status '%s': %s", label, n,
                   st_status_str(rc), err.msg);
            CHECKF(probe != NULL && err.msg[0], "%s: allocation %ld: no failure seen / no message",
                   label, n);
        }
        st_free(probe);
        CHECKF(st_alloc_live_count() == live0, "%s: allocation %ld failed: %ld leaked", label, n,
               (long)st_alloc_live_count() - (long)live0);
    }
    CHECKF(done, "%s: never succeeded", label);
    printf("     %s: %ld allocations, each failure handled\n", label, n - 2);
}

TEST(fail_nth_allocation) {
    fail_nth("sharded open", do_open, GOLDEN "/smollm_sharded");
    fail_nth("single-file open", do_open, GOLDEN "/llama3_gqa_bf16/model.safetensors");
    fail_nth("config load", do_config, GOLDEN "/smollm_sharded");
    fail_nth("header parse", do_header,
             "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
             "\"b\": {\"dtype\": \"BF16\", \"shape\": [4], \"data_offsets\": [8, 16]}}");
    fail_nth("model load (sharded)", do_model, GOLDEN "/smollm_sharded");
    fail_nth("model load (bf16)", do_model, GOLDEN "/llama3_gqa_bf16");
    /* error paths allocate too: a sharded model whose index leaves a tensor out */
    char dir[512];
    sharded_variant(dir, sizeof dir, "nth_unlisted",
                    ",\n    \"model.norm.weight\": \"model-00002-of-00002.safetensors\"", "", NULL);
    int bad = 0;
    for (long n = 1; n < 64; n++) {
        size_t live0 = st_alloc_live_count();
        struct st_error err = {0};
        st_alloc_fail_nth(n);
        enum st_status rc = open_close(dir, &err);
        st_alloc_fail_nth(0);
        if ((rc != ST_ERR_NOMEM && rc != ST_ERR_FORMAT) || st_alloc_live_count() != live0) {
            if (bad++ == 0)
                CHECKF(0, "unlisted, allocation %ld: status '%s': %s", n, st_status_str(rc),
                       err.msg);
        }
    }
    CHECKF(bad == 0, "unlisted: %d runs went wrong", bad);
}

int main(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/st_test_formats.XXXXXX");
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(st_truncated_and_absurd);
    RUN(st_bad_headers);
    RUN(st_good_headers);
    RUN(st_round_trip);
    RUN(sharded);
    RUN(model_folder);
    RUN(config_bad);
    RUN(config_good);
    RUN(fail_nth_allocation);
    rm_rf(tmp_root);
    return test_finish();
}
