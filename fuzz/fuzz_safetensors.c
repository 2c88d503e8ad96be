/* fuzz_safetensors.c: libFuzzer target for the safetensors reader.
 *
 * DESIGN: the input is a whole safetensors file. It goes (1) through st_st_header_parse on the
 * bytes after the 8-byte length, and (2) into a memfd that st_safetensors_open maps like any other
 * file; the two must agree. An input starting with '{' can never be a usable safetensors file (its
 * length bytes would be ASCII, far past the header limit), so such inputs are also tried as a
 * model.safetensors.index.json beside two small valid shards, which fuzzes the sharded path.
 * Beyond "no crash, no sanitizer report" it checks: every accepted tensor lies inside the data,
 * has nbytes = dtype x shape and the bytes of the input at its offset; accepted tensors do not
 * overlap; every refusal carries a message naming the file; nothing leaks (st_alloc_live_count).
 * A violated property aborts, which libFuzzer reports as a crash.
 * tests/test_fuzz_replay.c includes this file (entry point renamed) to replay fuzz/corpus and
 * fuzz/crashers in ordinary builds, so all static names here carry the fs_ prefix. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "streamtune/formats.h"

#define FS_REQUIRE(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_safetensors: property violated: %s: ", #cond);                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Bytes dtype x shape, computed independently of the parser (0 if any dimension is 0). */
static uint64_t fs_expected_bytes(const struct st_tensor_view *t) {
    uint64_t n = st_dtype_size(t->dtype);
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] == 0) return 0;
    for (int d = 0; d < t->ndim; d++) {
        FS_REQUIRE(t->shape[d] > 0, "tensor '%s' shape[%d] = %lld", t->name, d,
                   (long long)t->shape[d]);
        FS_REQUIRE((uint64_t)t->shape[d] <= UINT64_MAX / n, "tensor '%s': size overflows", t->name);
        n *= (uint64_t)t->shape[d];
    }
    return n;
}

/* Tensors t[0..n) with offsets relative to `base` inside a data buffer of data_len bytes. */
static void fs_check_views(const struct st_tensor_view *t, int n, uint64_t base,
                           uint64_t data_len) {
    for (int i = 0; i < n; i++) {
        FS_REQUIRE(t[i].name != NULL, "tensor %d has no name", i);
        FS_REQUIRE(st_dtype_size(t[i].dtype) > 0, "tensor '%s': dtype %d", t[i].name,
                   (int)t[i].dtype);
        FS_REQUIRE(t[i].ndim >= 0 && t[i].ndim <= ST_MAX_DIMS, "tensor '%s': ndim %d", t[i].name,
                   t[i].ndim);
        FS_REQUIRE(fs_expected_bytes(&t[i]) == t[i].nbytes, "tensor '%s': nbytes %zu", t[i].name,
                   t[i].nbytes);
        FS_REQUIRE(t[i].offset >= base, "tensor '%s': offset before the data", t[i].name);
        uint64_t rel = t[i].offset - base;
        FS_REQUIRE(rel <= data_len && t[i].nbytes <= data_len - rel,
                   "tensor '%s': [%llu, +%zu) outside %llu data bytes", t[i].name,
                   (unsigned long long)rel, t[i].nbytes, (unsigned long long)data_len);
    }
    if (n > 256) return; /* the pairwise check is quadratic */
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            if (!t[i].nbytes || !t[j].nbytes) continue;
            int apart = t[i].offset + t[i].nbytes <= t[j].offset ||
                        t[j].offset + t[j].nbytes <= t[i].offset;
            FS_REQUIRE(apart, "tensors '%s' and '%s' overlap", t[i].name, t[j].name);
            FS_REQUIRE(strcmp(t[i].name, t[j].name) != 0, "tensor '%s' twice", t[i].name);
        }
}

/* Exercise the dtype conversions on small float tensors. */
static void fs_convert(const struct st_tensor_view *t) {
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64)
        return;
    size_t n = t->nbytes / st_dtype_size(t->dtype);
    if (n == 0 || n > 4096) return;
    float *dst = malloc(n * sizeof *dst);
    if (!dst) return;
    struct st_error err = {0};
    FS_REQUIRE(st_convert_to_f32(dst, t->data, t->dtype, n, &err) == ST_OK, "convert '%s': %s",
               t->name, err.msg);
    free(dst);
}

/* ---- (1) the pure header parser ---- */
static void fs_header(const uint8_t *data, size_t size, enum st_status *rc_out) {
    *rc_out = ST_OK;
    if (size < 8) return;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)data[i] << (8 * i);
    if (hlen > size - 8) return;
    struct st_st_header h;
    struct st_error err = {0};
    enum st_status rc = st_st_header_parse(&h, (const char *)data + 8, (size_t)hlen,
                                           size - 8 - hlen, "fuzz.safetensors", &err);
    *rc_out = rc;
    if (rc) {
        FS_REQUIRE(rc == ST_ERR_FORMAT || rc == ST_ERR_NOMEM, "status %d", (int)rc);
        FS_REQUIRE(strstr(err.msg, "fuzz.safetensors") != NULL, "message without the file: %s",
                   err.msg);
        FS_REQUIRE(h.tensors == NULL && h.n_tensors == 0, "header not reset after an error");
        return;
    }
    fs_check_views(h.tensors, h.n_tensors, 0, size - 8 - hlen);
    st_st_header_free(&h);
}

/* ---- (2) the file path: memfd (or a temp file) + st_safetensors_open ---- */
static int fs_fd = -1;
static char fs_path[64];

static int fs_file_init(void) {
    if (fs_fd >= 0) return 0;
#ifdef SYS_memfd_create
    fs_fd = (int)syscall(SYS_memfd_create, "st_fuzz", 0);
#endif
    if (fs_fd < 0) { /* no memfd: an unlinked temp file, reached the same way */
        char tmpl[] = "/tmp/st_fuzz_st.XXXXXX";
        fs_fd = mkstemp(tmpl);
        if (fs_fd >= 0) unlink(tmpl);
    }
    if (fs_fd < 0) return 1;
    snprintf(fs_path, sizeof fs_path, "/proc/self/fd/%d", fs_fd);
    struct stat sb;
    if (stat(fs_path, &sb) != 0) {
        close(fs_fd);
        fs_fd = -1;
        return 1;
    }
    return 0;
}

static int fs_write_all(int fd, const uint8_t *data, size_t size) {
    if (ftruncate(fd, 0) != 0) return 1;
    size_t done = 0;
    while (done < size) {
        ssize_t w = pwrite(fd, data + done, size - done, (off_t)done);
        if (w <= 0) return 1;
        done += (size_t)w;
    }
    return 0;
}

static void fs_file(const uint8_t *data, size_t size, int header_checked, enum st_status hrc) {
    if (fs_file_init() || fs_write_all(fs_fd, data, size)) return;
    struct st_safetensors *s = NULL;
    struct st_error err = {0};
    enum st_status rc = st_safetensors_open(&s, fs_path, &err);
    /* the file layer adds only the size checks to the header parser: they must agree */
    if (header_checked)
        FS_REQUIRE(rc == hrc, "st_safetensors_open says %d, st_st_header_parse says %d (%s)",
                   (int)rc, (int)hrc, err.msg);
    if (rc) {
        FS_REQUIRE(s == NULL, "handle returned with an error");
        FS_REQUIRE(strstr(err.msg, fs_path) != NULL, "message without the file: %s", err.msg);
        return;
    }
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)data[i] << (8 * i);
    int n = st_safetensors_count(s);
    for (int i = 0; i < n; i++) {
        const struct st_tensor_view *t = st_safetensors_at(s, i);
        fs_check_views(t, 1, 8 + hlen, size - 8 - hlen);
        FS_REQUIRE(st_safetensors_find(s, t->name) == t, "find('%s') is another view", t->name);
        FS_REQUIRE(t->nbytes == 0 || memcmp(t->data, data + t->offset, t->nbytes) == 0,
                   "tensor '%s': view bytes differ from the file at its offset", t->name);
        FS_REQUIRE(t->file && strcmp(t->file, fs_path) == 0, "tensor '%s': file", t->name);
        fs_convert(t);
    }
    if (n > 1 && n <= 256) {
        struct st_tensor_view *all = malloc((size_t)n * sizeof *all);
        for (int i = 0; i < n; i++)
            all[i] = *st_safetensors_at(s, i);
        fs_check_views(all, n, 8 + hlen, size - 8 - hlen);
        free(all);
    }
    st_safetensors_close(s);
}

/* ---- (3) '{...' inputs: a sharded index beside two valid shards ---- */

/* A safetensors file: u64 LE header length, header, data. */
static int fs_write_st(const char *path, const char *header, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    uint8_t len[8];
    uint64_t hl = strlen(header);
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)(hl >> (8 * i));
    int ok = fwrite(len, 1, 8, f) == 8 && fwrite(header, 1, hl, f) == hl &&
             (n == 0 || fwrite(data, 1, n, f) == n);
    return (fclose(f) == 0 && ok) ? 0 : 1;
}

/* Each input gets a fresh directory, removed before returning (nothing is left behind when the
 * fuzzer stops on a time limit, and no input sees another's files). */
static void fs_index_input(const uint8_t *data, size_t size) {
    static const uint8_t a_data[14] = {0,    0,    0x80, 0x3f, 0,    0,    0,
                                       0xc0, 0x80, 0x3f, 0,    0x40, 0x40, 0xc0};
    static const uint8_t b_data[4] = {7, 0, 0, 0};
    char dir[] = "/tmp/st_fuzz_index.XXXXXX";
    if (!mkdtemp(dir)) return;
    char a[64], b[64], idx[80];
    snprintf(a, sizeof a, "%s/a.safetensors", dir);
    snprintf(b, sizeof b, "%s/b.safetensors", dir);
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    int bad = fs_write_st(a,
                          "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                          "\"y\":{\"dtype\":\"BF16\",\"shape\":[1,3],\"data_offsets\":[8,14]}}",
                          a_data, sizeof a_data);
    bad |= fs_write_st(b,
                       "{\"z\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                       "\"e\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[4,4]}}",
                       b_data, sizeof b_data);
    FILE *f = fopen(idx, "wb");
    if (f) {
        bad |= size && fwrite(data, 1, size, f) != size;
        bad |= fclose(f) != 0;
    } else {
        bad = 1;
    }
    if (!bad) {
        struct st_safetensors *s = NULL;
        struct st_error err = {0};
        enum st_status rc = st_safetensors_open(&s, dir, &err);
        if (rc) {
            FS_REQUIRE(s == NULL && err.msg[0], "error without a message");
        } else {
            /* accepted: all tensors of the shards it names (the index must list every one) */
            int n = st_safetensors_count(s);
            FS_REQUIRE(n == 2 || n == 4, "%d tensors from shards of 2", n);
            for (int i = 0; i < n; i++) {
                const struct st_tensor_view *t = st_safetensors_at(s, i);
                FS_REQUIRE(strncmp(t->file, dir, strlen(dir)) == 0, "tensor '%s' from %s", t->name,
                           t->file);
            }
            st_safetensors_close(s);
        }
    }
    unlink(a);
    unlink(b);
    unlink(idx);
    rmdir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t live0 = st_alloc_live_count();
    enum st_status hrc;
    fs_header(data, size, &hrc);
    /* the header parser only ran when the length fits; st_safetensors_open also refuses lengths
     * over its 100 MiB limit first, so compare only below it */
    uint64_t hlen = 0;
    for (int i = 0; i < 8 && size >= 8; i++)
        hlen |= (uint64_t)data[i] << (8 * i);
    int checked = size >= 8 && hlen <= size - 8 && hlen <= 100u * 1024u * 1024u;
    fs_file(data, size, checked, hrc);
    if (size > 0 && data[0] == '{') fs_index_input(data, size);
    FS_REQUIRE(st_alloc_live_count() == live0, "%ld allocations leaked",
               (long)st_alloc_live_count() - (long)live0);
    return 0;
}
