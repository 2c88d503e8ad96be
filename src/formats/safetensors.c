/* safetensors.c: read (mmap) and write safetensors files, single or sharded.
 *
 * DESIGN: layout is u64 LE header length N | N bytes JSON | data buffer. The header is validated
 * fully before any view is handed out: known dtype, non-negative shape whose element count times
 * the dtype size equals end - begin (checked for overflow), offsets inside the data buffer, and no
 * two tensors overlapping. A sharded model is a directory with model.safetensors.index.json whose
 * weight_map names the shard of each tensor; every shard is mapped and every mapped tensor must be
 * listed. Views point into the read-only maps: nothing is copied. */
#include "streamtune/formats.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_HEADER_MAX (100u * 1024u * 1024u) /* the reference reader's limit */
#define ST_MAX_SHARDS 4096

int64_t st_tensor_numel(const struct st_tensor_view *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

static int cmp_offset(const void *a, const void *b) {
    const struct st_tensor_view *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : (x->nbytes > y->nbytes);
}

static int cmp_name_ptr(const void *a, const void *b) {
    const struct st_tensor_view *x = a, *y = b;
    return strcmp(x->name, y->name);
}

void st_st_header_free(struct st_st_header *h) {
    st_free(h->tensors);
    st_free(h->names);
    h->tensors = NULL;
    h->names = NULL;
    h->n_tensors = 0;
}

/* Read a JSON number that must be a non-negative integer exactly representable (< 2^53). */
static int json_u64(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 1;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != (double)(uint64_t)d) return 1;
    *out = (uint64_t)d;
    return 0;
}

/* Parse exactly one JSON value followed by nothing but whitespace (the padding writers add).
 * On failure returns NULL and *bad_off is the byte offset of the error (-1 when unknown). */
static cJSON *json_parse_whole(const char *s, size_t len, long *bad_off) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(s, len, &end, 0);
    if (!root) {
        const char *ep = cJSON_GetErrorPtr();
        *bad_off = ep && ep >= s && ep <= s + len ? (long)(ep - s) : -1;
        return NULL;
    }
    for (const char *q = end && end >= s ? end : s + len; q < s + len; q++) {
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
            *bad_off = (long)(q - s);
            cJSON_Delete(root);
            return NULL;
        }
    }
    return root;
}

enum st_status st_st_header_parse(struct st_st_header *h, const char *json, size_t json_len,
                                  uint64_t data_len, const char *what, struct st_error *err) {
    memset(h, 0, sizeof *h);
    long bad = 0;
    cJSON *root = json_parse_whole(json, json_len, &bad);
    if (!root)
        return st_errorf(err, ST_ERR_FORMAT, "%s: header is not valid JSON (near header byte %ld)",
                         what, bad);
    enum st_status rc = ST_OK;
    if (!cJSON_IsObject(root)) {
        rc = st_errorf(err, ST_ERR_FORMAT, "%s: header is not a JSON object", what);
        goto done;
    }
    int n = 0;
    size_t names_len = 0;
    for (cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        n++;
        names_len += strlen(e->string) + 1;
    }
    h->tensors = st_calloc((size_t)(n ? n : 1), sizeof *h->tensors);
    h->names = st_malloc(names_len ? names_len : 1);
    if (!h->tensors || !h->names) {
        rc = st_errorf(err, ST_ERR_NOMEM, "%s: out of memory for %d tensor entries", what, n);
        goto done;
    }
    char *np = h->names;
    int i = 0;
    for (cJSON *e = root->child; e; e = e->next) {
        const char *name = e->string;
        if (strcmp(name, "__metadata__") == 0) {
            if (!cJSON_IsObject(e)) {
                rc = st_errorf(err, ST_ERR_FORMAT, "%s: __metadata__ is not an object", what);
                goto done;
            }
            for (cJSON *m = e->child; m; m = m->next) {
                if (!cJSON_IsString(m)) {
                    rc = st_errorf(err, ST_ERR_FORMAT,
                                   "%s: __metadata__.%s is not a string", what, m->string);
                    goto done;
                }
            }
            continue;
        }
        struct st_tensor_view *t = &h->tensors[i];
        size_t len = strlen(name) + 1;
        memcpy(np, name, len);
        t->name = np;
        np += len;
        if (!cJSON_IsObject(e)) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: tensor '%s': entry is not an object", what,
                           name);
            goto done;
        }
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        if (!cJSON_IsString(dt)) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: tensor '%s': missing or non-string 'dtype'",
                           what, name);
            goto done;
        }
        t->dtype = st_dtype_from_name(dt->valuestring);
        if (t->dtype == ST_DTYPE_INVALID) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", what, name,
                           dt->valuestring);
            goto done;
        }
        if (!cJSON_IsArray(sh)) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: tensor '%s': missing or non-array 'shape'",
                           what, name);
            goto done;
        }
        int nd = cJSON_GetArraySize(sh);
        if (nd > ST_MAX_DIMS) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: tensor '%s': %d dimensions (max %d)", what,
                           name, nd, ST_MAX_DIMS);
            goto done;
        }
        t->ndim = nd;
        uint64_t numel = 1;
        int d = 0;
        for (const cJSON *x = sh->child; x; x = x->next, d++) {
            uint64_t v;
            if (json_u64(x, &v)) {
                rc = st_errorf(err, ST_ERR_FORMAT,
                               "%s: tensor '%s': shape[%d] is not a non-negative integer", what,
                               name, d);
                goto done;
            }
            t->shape[d] = (int64_t)v;
            if (v != 0 && numel > UINT64_MAX / v) {
                rc = st_errorf(err, ST_ERR_FORMAT, "%s: tensor '%s': shape overflows", what, name);
                goto done;
            }
            numel *= v;
        }
        uint64_t esz = st_dtype_size(t->dtype);
        if (numel > UINT64_MAX / esz) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: tensor '%s': shape overflows", what, name);
            goto done;
        }
        uint64_t want = numel * esz;
        uint64_t b, en;
        if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || json_u64(off->child, &b) ||
            json_u64(off->child->next, &en)) {
            rc = st_errorf(err, ST_ERR_FORMAT,
                           "%s: tensor '%s': 'data_offsets' must be [begin, end] integers", what,
                           name);
            goto done;
        }
        if (en < b) {
            rc = st_errorf(err, ST_ERR_FORMAT,
                           "%s: tensor '%s': data_offsets [%llu, %llu] begin is after end", what,
                           name, (unsigned long long)b, (unsigned long long)en);
            goto done;
        }
        if (en > data_len) {
            rc = st_errorf(err, ST_ERR_FORMAT,
                           "%s: tensor '%s': data_offsets [%llu, %llu] out of range (data buffer "
                           "is %llu bytes)",
                           what, name, (unsigned long long)b, (unsigned long long)en,
                           (unsigned long long)data_len);
            goto done;
        }
        if (en - b != want) {
            rc = st_errorf(err, ST_ERR_FORMAT,
                           "%s: tensor '%s': dtype %s x shape needs %llu bytes but data_offsets "
                           "span %llu",
                           what, name, st_dtype_name(t->dtype), (unsigned long long)want,
                           (unsigned long long)(en - b));
            goto done;
        }
        if (want > SIZE_MAX) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: tensor '%s' too large", what, name);
            goto done;
        }
        t->offset = b;
        t->nbytes = (size_t)want;
        i++;
    }
    h->n_tensors = n;
    /* duplicate names (JSON allows them, safetensors does not) */
    if (n > 1) {
        struct st_tensor_view *tmp = st_malloc((size_t)n * sizeof *tmp);
        if (!tmp) {
            rc = st_errorf(err, ST_ERR_NOMEM, "%s: out of memory", what);
            goto done;
        }
        memcpy(tmp, h->tensors, (size_t)n * sizeof *tmp);
        qsort(tmp, (size_t)n, sizeof *tmp, cmp_name_ptr);
        for (int k = 1; k < n && rc == ST_OK; k++)
            if (strcmp(tmp[k - 1].name, tmp[k].name) == 0)
                rc = st_errorf(err, ST_ERR_FORMAT, "%s: tensor '%s' appears twice in the header",
                               what, tmp[k].name);
        /* overlap check on offset order: compare each tensor with the last non-empty one before
         * it (empty tensors own no bytes, and must not hide an overlap between their neighbours) */
        qsort(tmp, (size_t)n, sizeof *tmp, cmp_offset);
        int prev = -1;
        for (int k = 0; k < n && rc == ST_OK; k++) {
            if (tmp[k].nbytes == 0) continue;
            if (prev >= 0 && tmp[prev].offset + tmp[prev].nbytes > tmp[k].offset)
                rc = st_errorf(err, ST_ERR_FORMAT,
                               "%s: tensors '%s' and '%s' overlap in the data buffer (bytes %llu "
                               "and %llu)",
                               what, tmp[prev].name, tmp[k].name,
                               (unsigned long long)tmp[prev].offset,
                               (unsigned long long)tmp[k].offset);
            prev = k;
        }
        st_free(tmp);
    }
done:
    cJSON_Delete(root);
    if (rc != ST_OK) st_st_header_free(h);
    return rc;
}

/* ---------------------------------------------------------------- files */

struct st_shard {
    char *path;
    void *map;
    size_t map_len;
    struct st_st_header hdr;
};

struct st_safetensors {
    struct st_shard *shards;
    int n_shards;
    struct st_tensor_view *index; /* all tensors of all shards, sorted by name */
    int n;
};

static enum st_status shard_open(struct st_shard *sh, const char *path, struct st_error *err) {
    memset(sh, 0, sizeof *sh);
    sh->path = st_strdup(path);
    if (!sh->path) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    int fd = open(path, O_RDONLY);
    if (fd < 0) return st_errorf(err, ST_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return st_errorf(err, ST_ERR_IO, "%s: not a regular file", path);
    }
    uint64_t fsize = (uint64_t)sb.st_size;
    if (fsize < 8) {
        close(fd);
        return st_errorf(err, ST_ERR_FORMAT,
                         "%s: file is %llu bytes, too short for the 8-byte header length", path,
                         (unsigned long long)fsize);
    }
    void *map = mmap(NULL, (size_t)fsize, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return st_errorf(err, ST_ERR_IO, "%s: mmap failed: %s", path,
                                            strerror(errno));
    sh->map = map;
    sh->map_len = (size_t)fsize;
    const uint8_t *p = map;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)p[i] << (8 * i);
    if (hlen > ST_HEADER_MAX)
        return st_errorf(err, ST_ERR_FORMAT,
                         "%s: header length %llu (bytes 0-7) is absurd (limit %u)", path,
                         (unsigned long long)hlen, ST_HEADER_MAX);
    if (hlen > fsize - 8)
        return st_errorf(err, ST_ERR_FORMAT,
                         "%s: header length %llu (bytes 0-7) exceeds the file size %llu "
                         "(truncated file?)",
                         path, (unsigned long long)hlen, (unsigned long long)fsize);
    enum st_status rc =
        st_st_header_parse(&sh->hdr, (const char *)p + 8, (size_t)hlen, fsize - 8 - hlen, path, err);
    if (rc) return rc;
    const uint8_t *data = p + 8 + hlen;
    for (int i = 0; i < sh->hdr.n_tensors; i++) {
        struct st_tensor_view *t = &sh->hdr.tensors[i];
        t->data = data + t->offset;
        t->offset += 8 + hlen;
        t->file = sh->path;
    }
    return ST_OK;
}

static void shard_close(struct st_shard *sh) {
    if (sh->map) munmap(sh->map, sh->map_len);
    st_st_header_free(&sh->hdr);
    st_free(sh->path);
}

void st_safetensors_close(struct st_safetensors *s) {
    if (!s) return;
    for (int i = 0; i < s->n_shards; i++) shard_close(&s->shards[i]);
    st_free(s->shards);
    st_free(s->index);
    st_free(s);
}

static int path_is_dir(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}
static int path_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* Shard file names from the index: unique values of weight_map, validated as plain names. */
static enum st_status read_index(const char *dir, const char *index_path, char ***files_out,
                                 int *n_out, cJSON **map_out, struct st_error *err) {
    char *text;
    size_t len;
    enum st_status rc = st_read_file(index_path, 64u << 20, &text, &len, err);
    if (rc) return rc;
    long bad = 0;
    cJSON *root = json_parse_whole(text, len, &bad);
    st_free(text);
    if (!root)
        return st_errorf(err, ST_ERR_FORMAT, "%s: not valid JSON (near byte %ld)", index_path, bad);
    cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        return st_errorf(err, ST_ERR_FORMAT, "%s: missing object 'weight_map'", index_path);
    }
    char **files = NULL;
    int n = 0;
    for (cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e)) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: weight_map.%s is not a string", index_path,
                           e->string);
            break;
        }
        const char *f = e->valuestring;
        if (!*f || strchr(f, '/') || strcmp(f, "..") == 0) {
            rc = st_errorf(err, ST_ERR_FORMAT,
                           "%s: weight_map.%s names '%s', which is not a file in %s", index_path,
                           e->string, f, dir);
            break;
        }
        int seen = 0;
        for (int i = 0; i < n && !seen; i++) seen = strcmp(files[i], f) == 0;
        if (seen) continue;
        if (n >= ST_MAX_SHARDS) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: more than %d shards", index_path,
                           ST_MAX_SHARDS);
            break;
        }
        char **nf = st_realloc(files, (size_t)(n + 1) * sizeof *files);
        if (!nf) {
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            break;
        }
        files = nf;
        files[n] = st_strdup(f);
        if (!files[n]) {
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            break;
        }
        n++;
    }
    if (rc == ST_OK && n == 0) rc = st_errorf(err, ST_ERR_FORMAT, "%s: weight_map is empty",
                                              index_path);
    if (rc) {
        for (int i = 0; i < n; i++) st_free(files[i]);
        st_free(files);
        cJSON_Delete(root);
        return rc;
    }
    *files_out = files;
    *n_out = n;
    *map_out = root;
    return ST_OK;
}

enum st_status st_safetensors_open(struct st_safetensors **out, const char *path,
                                   struct st_error *err) {
    *out = NULL;
    struct st_safetensors *s = st_calloc(1, sizeof *s);
    if (!s) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    enum st_status rc = ST_OK;
    char buf[4096];
    char **files = NULL;
    int n_files = 0;
    cJSON *index_root = NULL;
    char index_path[4096] = "";

    if (path_is_dir(path)) {
        snprintf(buf, sizeof buf, "%s/model.safetensors", path);
        snprintf(index_path, sizeof index_path, "%s/model.safetensors.index.json", path);
        if (path_exists(buf)) {
            files = st_malloc(sizeof *files);
            if (!files || !(files[0] = st_strdup(buf))) {
                st_free(files);
                files = NULL;
                rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
                goto fail;
            }
            n_files = 1;
            index_path[0] = '\0';
        } else if (path_exists(index_path)) {
            rc = read_index(path, index_path, &files, &n_files, &index_root, err);
            if (rc) goto fail;
            for (int i = 0; i < n_files; i++) {
                snprintf(buf, sizeof buf, "%s/%s", path, files[i]);
                char *full = st_strdup(buf);
                if (!full) {
                    rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
                    goto fail;
                }
                st_free(files[i]);
                files[i] = full;
            }
        } else {
            rc = st_errorf(err, ST_ERR_IO,
                           "%s: no model.safetensors or model.safetensors.index.json in this "
                           "directory",
                           path);
            goto fail;
        }
    } else {
        files = st_malloc(sizeof *files);
        if (!files || !(files[0] = st_strdup(path))) {
            st_free(files);
            files = NULL;
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            goto fail;
        }
        n_files = 1;
        index_path[0] = '\0';
    }

    s->shards = st_calloc((size_t)n_files, sizeof *s->shards);
    if (!s->shards) {
        rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
        goto fail;
    }
    size_t total = 0;
    for (int i = 0; i < n_files; i++) {
        s->n_shards = i + 1;
        rc = shard_open(&s->shards[i], files[i], err);
        if (rc) {
            if (index_root) st_error_prefix(err, "%s: shard named in weight_map: ", index_path);
            goto fail;
        }
        total += (size_t)s->shards[i].hdr.n_tensors;
    }
    s->index = st_calloc(total ? total : 1, sizeof *s->index);
    if (!s->index) {
        rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < s->n_shards; i++)
        for (int k = 0; k < s->shards[i].hdr.n_tensors; k++) s->index[s->n++] = s->shards[i].hdr.tensors[k];
    qsort(s->index, (size_t)s->n, sizeof *s->index, cmp_name_ptr);
    for (int k = 1; k < s->n; k++)
        if (strcmp(s->index[k - 1].name, s->index[k].name) == 0) {
            rc = st_errorf(err, ST_ERR_FORMAT, "tensor '%s' appears in both %s and %s",
                           s->index[k].name, s->index[k - 1].file, s->index[k].file);
            goto fail;
        }
    if (index_root) {
        /* every tensor the index names must be in the shard it names, and every tensor of every
         * shard must be named */
        cJSON *wm = cJSON_GetObjectItemCaseSensitive(index_root, "weight_map");
        uint8_t *listed = st_calloc(s->n ? (size_t)s->n : 1, 1);
        if (!listed) {
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            goto fail;
        }
        for (cJSON *e = wm->child; e && rc == ST_OK; e = e->next) {
            const struct st_tensor_view *t = st_safetensors_find(s, e->string);
            if (!t) {
                rc = st_errorf(err, ST_ERR_FORMAT,
                               "%s: weight_map lists tensor '%s' in %s, but that file does not "
                               "contain it",
                               index_path, e->string, e->valuestring);
                break;
            }
            const char *base = strrchr(t->file, '/');
            base = base ? base + 1 : t->file;
            if (strcmp(base, e->valuestring) != 0) {
                rc = st_errorf(err, ST_ERR_FORMAT,
                               "%s: weight_map puts tensor '%s' in %s, but it is in %s",
                               index_path, e->string, e->valuestring, base);
                break;
            }
            listed[t - s->index] = 1;
        }
        for (int k = 0; k < s->n && rc == ST_OK; k++)
            if (!listed[k])
                rc = st_errorf(err, ST_ERR_FORMAT, "%s: tensor '%s' is in %s but not in weight_map",
                               index_path, s->index[k].name, s->index[k].file);
        st_free(listed);
        if (rc) goto fail;
    }
    for (int i = 0; i < n_files; i++) st_free(files[i]);
    st_free(files);
    cJSON_Delete(index_root);
    *out = s;
    return ST_OK;
fail:
    for (int i = 0; i < n_files; i++) st_free(files[i]);
    st_free(files);
    cJSON_Delete(index_root);
    st_safetensors_close(s);
    return rc;
}

const struct st_tensor_view *st_safetensors_find(const struct st_safetensors *s, const char *name) {
    int lo = 0, hi = s->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(s->index[mid].name, name);
        if (c == 0) return &s->index[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

void st_safetensors_drop_cache(const struct st_safetensors *s) {
    for (int i = 0; i < s->n_shards; i++)
        if (s->shards[i].map) madvise(s->shards[i].map, s->shards[i].map_len, MADV_DONTNEED);
}

void st_tensor_drop_pages(const struct st_tensor_view *t) {
    if (!t->nbytes) return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)t->data & ~(page - 1);
    uintptr_t b = ((uintptr_t)t->data + t->nbytes + page - 1) & ~(page - 1);
    madvise((void *)a, b - a, MADV_DONTNEED);
}

int st_safetensors_count(const struct st_safetensors *s) { return s->n; }
const struct st_tensor_view *st_safetensors_at(const struct st_safetensors *s, int i) {
    return i >= 0 && i < s->n ? &s->index[i] : NULL;
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

enum st_status st_safetensors_expect(const struct st_safetensors *s, const char *name, int ndim,
                                     const int64_t *shape, const struct st_tensor_view **out,
                                     struct st_error *err) {
    const struct st_tensor_view *t = st_safetensors_find(s, name);
    *out = t;
    if (!t) {
        const char *where = s->n_shards == 1 ? s->shards[0].path : "the model's shards";
        return st_errorf(err, ST_ERR_FORMAT, "%s: missing tensor '%s'", where, name);
    }
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char a[128], b[128];
        shape_str(a, sizeof a, t->ndim, t->shape);
        shape_str(b, sizeof b, ndim, shape);
        return st_errorf(err, ST_ERR_SHAPE, "%s: tensor '%s' has shape %s, expected %s (check "
                         "config.json)", t->file, name, a, b);
    }
    if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16)
        return st_errorf(err, ST_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s; F32, BF16 and "
                         "F16 are supported", t->file, name, st_dtype_name(t->dtype));
    return ST_OK;
}

/* ---------------------------------------------------------------- writing */

enum st_status st_safetensors_write(const char *path, const struct st_tensor_out *tensors, int n,
                                    struct st_error *err) {
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const struct st_tensor_out *t = &tensors[i];
        uint64_t bytes = st_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim; d++) bytes *= (uint64_t)t->shape[d];
        cJSON *e = cJSON_AddObjectToObject(root, t->name);
        cJSON_AddStringToObject(e, "dtype", st_dtype_name(t->dtype));
        cJSON *sh = cJSON_AddArrayToObject(e, "shape");
        for (int d = 0; d < t->ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
        cJSON *of = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + bytes)));
        off += bytes;
    }
    char *js = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!js) return st_errorf(err, ST_ERR_NOMEM, "%s: cannot build header", path);
    size_t jl = strlen(js);
    size_t padded = (jl + 7) & ~(size_t)7;

    /* stream to a temp file in the same directory, fsync, rename, fsync the directory: a large
     * model is never held twice in memory and a crash never leaves half a file */
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        cJSON_free(js);
        return st_errorf(err, ST_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    }
    uint8_t hl[8];
    for (int i = 0; i < 8; i++) hl[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int ok = fwrite(hl, 1, 8, f) == 8 && fwrite(js, 1, jl, f) == jl;
    for (size_t i = jl; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
    cJSON_free(js);
    for (int i = 0; ok && i < n; i++) {
        size_t bytes = st_dtype_size(tensors[i].dtype);
        for (int d = 0; d < tensors[i].ndim; d++) bytes *= (size_t)tensors[i].shape[d];
        ok = bytes == 0 || fwrite(tensors[i].data, 1, bytes, f) == bytes;
    }
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return st_errorf(err, ST_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return ST_OK;
}
