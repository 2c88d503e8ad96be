/* source.c: from what the user names to a list of shards: directories, globs, brace lists,
 * http(s) URLs, S3 prefixes (ListObjectsV2 with pagination) and index manifests; and the index
 * writer (`streamtune data index`).
 *
 * DESIGN: the listing is fixed when a stream opens; every rank and worker must see the same list
 * in the same order (the epoch's permutation is applied to it), so directory and S3 listings are
 * sorted by name and the fingerprint of the names goes into the resume state. Only names that look
 * like shards (.jsonl/.ndjson/.tar/.tgz, optionally .gz/.zst; not .json) are taken from a directory
 * or prefix, so a README or an index.json beside the shards is not read as data. An index manifest
 * gives byte sizes (so HTTP shards need no HEAD), sample counts and SHA-256 hashes. */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/internal.h"

#define MAX_SHARDS 1000000u
#define INDEX_MAX_BYTES (256u << 20)

static int ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

/* The name without a trailing compression suffix, lower-cased into buf. */
static const char *base_ext(const char *name, char *buf, size_t cap) {
    snprintf(buf, cap, "%s", name);
    for (char *p = buf; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    static const char *comp[] = {".gz", ".gzip", ".zst", ".zstd"};
    for (size_t i = 0; i < sizeof comp / sizeof *comp; i++)
        if (ends_with(buf, comp[i])) {
            buf[strlen(buf) - strlen(comp[i])] = '\0';
            break;
        }
    return buf;
}

static int is_shard_name(const char *name) {
    char b[1024];
    base_ext(name, b, sizeof b);
    /* not plain .json: an index manifest or state file may sit beside the shards */
    return ends_with(b, ".jsonl") || ends_with(b, ".ndjson") || ends_with(b, ".tar") ||
           ends_with(b, ".tgz") || ends_with(b, ".tzst");
}

static int is_index_name(const char *url) {
    char b[1024];
    snprintf(b, sizeof b, "%s", url);
    char *q = strchr(b, '?');
    if (q) *q = '\0';
    for (char *p = b; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return ends_with(b, ".json") && !ends_with(b, ".jsonl");
}

static enum st_shard_format format_of(const char *name, enum st_shard_format forced) {
    if (forced != ST_FORMAT_AUTO) return forced;
    char b[1024];
    base_ext(name, b, sizeof b);
    if (ends_with(b, ".tar") || ends_with(b, ".tgz") || ends_with(b, ".tzst")) return ST_FORMAT_TAR;
    return ST_FORMAT_JSONL;
}

void st_shard_list_free(struct st_shard_list *l) {
    if (!l) return;
    for (uint32_t i = 0; i < l->n; i++) {
        st_free(l->shards[i].url);
        st_free(l->shards[i].name);
        st_free(l->shards[i].etag);
    }
    st_free(l->shards);
    l->shards = NULL;
    l->n = 0;
}

/* A growing list of shards (cap tracked separately from n). */
struct slist {
    struct st_shard_list *l;
    uint32_t cap;
    char **req;
    enum url_scheme *scheme;
};

static enum st_status push_shard(struct slist *s, const char *url, const char *name, uint64_t size,
                                 const char *etag, int64_t samples, const char *sha,
                                 const char *req, enum url_scheme scheme, struct st_error *err) {
    struct st_shard_list *l = s->l;
    if (l->n >= MAX_SHARDS) return st_errorf(err, ST_ERR_ARG, "more than %u shards", MAX_SHARDS);
    if (l->n == s->cap) {
        uint32_t nc = s->cap ? s->cap * 2 : 64;
        struct st_shard_info *a = st_realloc(l->shards, nc * sizeof *a);
        if (a) l->shards = a;
        char **r = a ? st_realloc(s->req, nc * sizeof *r) : NULL;
        if (r) s->req = r;
        enum url_scheme *sc = r ? st_realloc(s->scheme, nc * sizeof *sc) : NULL;
        if (sc) s->scheme = sc;
        if (!a || !r || !sc) return st_errorf(err, ST_ERR_NOMEM, "out of memory listing shards");
        s->cap = nc;
    }
    struct st_shard_info *sh = &l->shards[l->n];
    memset(sh, 0, sizeof *sh);
    sh->url = st_strdup(url);
    sh->name = st_strdup(name);
    sh->etag = etag && *etag ? st_strdup(etag) : NULL;
    sh->size = size;
    sh->samples = samples;
    if (sha) snprintf(sh->sha256, sizeof sh->sha256, "%s", sha);
    char *r = st_strdup(req);
    if (!sh->url || !sh->name || (etag && *etag && !sh->etag) || !r) {
        st_free(sh->url);
        st_free(sh->name);
        st_free(sh->etag);
        st_free(r);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory listing shards");
    }
    s->req[l->n] = r;
    s->scheme[l->n] = scheme;
    l->n++;
    return ST_OK;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static enum st_status add_file(struct slist *s, const char *display, const char *path,
                               const char *name, struct st_error *err) {
    struct stat sb;
    if (stat(path, &sb) != 0)
        return st_errorf(err, ST_ERR_IO, "%s: cannot open: %s", display, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return st_errorf(err, ST_ERR_IO, "%s: not a regular file", display);
    return push_shard(s, display, name, (uint64_t)sb.st_size, NULL, -1, NULL, path, URL_FILE, err);
}

static enum st_status list_dir(struct slist *s, const char *dir, struct st_error *err) {
    DIR *d = opendir(dir);
    if (!d) return st_errorf(err, ST_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    enum st_status rc = ST_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !is_shard_name(e->d_name)) continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            char **a = nc <= MAX_SHARDS ? st_realloc(names, nc * sizeof *a) : NULL;
            if (!a) {
                rc = st_errorf(err, ST_ERR_NOMEM, "%s: too many files", dir);
                break;
            }
            names = a;
            cap = nc;
        }
        if (!(names[n] = st_strdup(e->d_name))) {
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            break;
        }
        n++;
    }
    closedir(d);
    if (rc == ST_OK && n) qsort(names, n, sizeof *names, cmp_str);
    size_t dl = strlen(dir), added = 0;
    for (size_t i = 0; rc == ST_OK && i < n; i++) {
        size_t pl = dl + strlen(names[i]) + 2;
        char *path = st_malloc(pl);
        if (!path) {
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            break;
        }
        snprintf(path, pl, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", names[i]);
        /* a shard's name that cannot be opened (a dangling link: a dataset not fetched, an
         * unmounted disk) is an error, not a shard less; a subdirectory is not a shard */
        struct stat sb;
        if (stat(path, &sb) != 0)
            rc = st_errorf(err, ST_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        else if (S_ISREG(sb.st_mode))
            rc = add_file(s, path, path, names[i], err), added++;
        else
            st_log(ST_LOG_WARN, "%s: not a regular file, skipped", path);
        st_free(path);
    }
    str_array_free(names, n);
    if (rc == ST_OK && added == 0)
        rc = st_errorf(err, ST_ERR_IO,
                       "%s: no shards in this directory (expected *.jsonl, *.tar, optionally .gz "
                       "or .zst)",
                       dir);
    return rc;
}

static enum st_status list_s3(struct slist *s, const struct s3_cfg *c, const struct fetch_policy *p,
                              const char *url, struct st_error *err) {
    char *bucket, *key;
    enum st_status rc = s3_split(url, &bucket, &key, err);
    if (rc) return rc;
    char *token = NULL, *lurl = NULL;
    struct dbuf body;
    dbuf_init(&body, 64u << 20);
    /* "dir/" or "" lists a prefix; "name*" a raw prefix; else the object itself if it exists,
     * otherwise the "directory" key/ */
    size_t kl = strlen(key);
    int raw_prefix = kl && key[kl - 1] == '*';
    if (raw_prefix) key[--kl] = '\0';
    int exact = kl && key[kl - 1] != '/' && !raw_prefix;
    uint32_t before = s->l->n;
    int exact_found = 0;
    struct s3_list_page pg = {0};
    /* page size: 1000 (the S3 maximum); STREAMTUNE_S3_MAX_KEYS lowers it (tests use it to
     * exercise pagination and continuation tokens on small buckets) */
    int max_keys = 1000;
    const char *mk = getenv("STREAMTUNE_S3_MAX_KEYS");
    int64_t mkv;
    if (mk && st_parse_i64(mk, 1, 1000, &mkv) == 0) max_keys = (int)mkv;
    for (int page = 0;; page++) {
        st_free(lurl);
        lurl = NULL;
        if ((rc = s3_list_url(c, bucket, key, token, max_keys, &lurl, err))) break;
        char disp[1200];
        snprintf(disp, sizeof disp, "s3://%s/%s (listing)", bucket, key);
        struct fetch_target t = {URL_S3, disp, lurl, NULL, c, ST_SIZE_UNKNOWN, NULL};
        dbuf_reset(&body);
        if ((rc = fetch_sync(&t, p, 0, ST_SIZE_UNKNOWN, &body, NULL, NULL, 0, err))) break;
        if ((rc = s3_parse_list(body.p ? body.p : "", body.len, &pg, err))) {
            st_error_prefix(err, "s3://%s/%s: ", bucket, key);
            break;
        }
        for (size_t i = 0; i < pg.n && rc == ST_OK; i++) {
            const char *k = pg.objs[i].key;
            size_t pl = strlen(key);
            if (exact && strcmp(k, key) == 0) {
                exact_found = 1;
            } else if (exact) {
                /* only keys under "key/" count as the directory */
                if (strncmp(k, key, pl) != 0 || k[pl] != '/') continue;
            }
            if (!exact_found && !is_shard_name(k)) continue;
            if (exact_found && strcmp(k, key) != 0) continue;
            char *ourl = NULL;
            if ((rc = s3_object_url(c, bucket, k, &ourl, err))) break;
            size_t ul = strlen(bucket) + strlen(k) + 8;
            char *disp_url = st_malloc(ul);
            if (!disp_url) {
                st_free(ourl);
                rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
                break;
            }
            snprintf(disp_url, ul, "s3://%s/%s", bucket, k);
            const char *name = k + (exact_found ? 0 : pl);
            while (*name == '/')
                name++;
            if (!*name) name = k;
            rc = push_shard(s, disp_url, name, pg.objs[i].size, pg.objs[i].etag, -1, NULL, ourl,
                            URL_S3, err);
            st_free(ourl);
            st_free(disp_url);
        }
        st_free(token);
        token = pg.next_token;
        pg.next_token = NULL;
        int more = pg.truncated;
        s3_list_page_free(&pg);
        if (rc || !more || exact_found) break;
        if (page > 100000) {
            rc = st_errorf(err, ST_ERR_NET, "s3://%s/%s: listing does not end", bucket, key);
            break;
        }
    }
    if (rc == ST_OK && exact_found) {
        /* keep only the exact object */
        struct st_shard_list *l = s->l;
        for (uint32_t i = before; i < l->n; i++) {
            if (strcmp(l->shards[i].url + 5 + strlen(bucket) + 1, key) == 0 && i != before) {
                struct st_shard_info tmp = l->shards[before];
                l->shards[before] = l->shards[i];
                l->shards[i] = tmp;
                char *tr = s->req[before];
                s->req[before] = s->req[i];
                s->req[i] = tr;
            }
        }
        while (l->n > before + 1) {
            l->n--;
            st_free(l->shards[l->n].url);
            st_free(l->shards[l->n].name);
            st_free(l->shards[l->n].etag);
            st_free(s->req[l->n]);
        }
    }
    if (rc == ST_OK && s->l->n == before)
        rc = st_errorf(err, ST_ERR_IO,
                       "s3://%s/%s: no shards found (no object with this key, and no *.jsonl or "
                       "*.tar objects under it)",
                       bucket, key);
    st_free(token);
    st_free(lurl);
    dbuf_free(&body);
    st_free(bucket);
    st_free(key);
    return rc;
}

/* ---- index manifests ---- */

static int json_u53(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 1;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != (double)(uint64_t)d) return 1;
    *out = (uint64_t)d;
    return 0;
}

static char *resolve(const char *base, const char *rel) {
    const char *r;
    if (url_scheme(rel, &r) != URL_FILE || strstr(rel, "://") || rel[0] == '/')
        return st_strdup(rel);
    const char *slash = strrchr(base, '/');
    size_t dl = slash ? (size_t)(slash - base + 1) : 0;
    size_t n = dl + strlen(rel) + 1;
    char *o = st_malloc(n);
    if (o) {
        memcpy(o, base, dl);
        strcpy(o + dl, rel);
    }
    return o;
}

enum st_status index_parse(const char *json, size_t len, const char *base,
                           struct st_shard_list *out, const char *what, struct st_error *err) {
    memset(out, 0, sizeof *out);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return st_errorf(err, ST_ERR_FORMAT, "%s: not valid JSON", what);
    enum st_status rc = ST_OK;
    const cJSON *shards = cJSON_GetObjectItemCaseSensitive(root, "shards");
    const char *kurl = "url", *kbytes = "bytes", *ksamples = "samples", *arr = "shards";
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(root, "__kind__");
    if (cJSON_IsString(kind) && strcmp(kind->valuestring, "wids-shard-index-v1") == 0) {
        shards = cJSON_GetObjectItemCaseSensitive(root, "shardlist");
        kbytes = "filesize";
        ksamples = "nsamples";
        arr = "shardlist";
    } else {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "streamtune_index");
        uint64_t ver;
        if (!cJSON_IsObject(root) || json_u53(v, &ver)) {
            cJSON_Delete(root);
            return st_errorf(err, ST_ERR_FORMAT,
                             "%s: not an index manifest (no \"streamtune_index\" version or "
                             "\"__kind__\": \"wids-shard-index-v1\")",
                             what);
        }
        if (ver != 1) {
            cJSON_Delete(root);
            return st_errorf(err, ST_ERR_UNSUPPORTED, "%s: index version %llu is not supported",
                             what, (unsigned long long)ver);
        }
    }
    int n = cJSON_GetArraySize(shards);
    if (!cJSON_IsArray(shards) || n < 1 || (unsigned)n > MAX_SHARDS) {
        cJSON_Delete(root);
        return st_errorf(err, ST_ERR_FORMAT, "%s: %s: expected a non-empty array of shards", what,
                         arr);
    }
    out->shards = st_calloc((size_t)n, sizeof *out->shards);
    if (!out->shards) {
        cJSON_Delete(root);
        return st_errorf(err, ST_ERR_NOMEM, "%s: out of memory", what);
    }
    out->from_index = 1;
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, shards) {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(e, kurl);
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(e, kbytes);
        const cJSON *sm = cJSON_GetObjectItemCaseSensitive(e, ksamples);
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(e, "sha256");
        uint64_t bytes, samples;
        if (!cJSON_IsString(u) || !u->valuestring[0] || strlen(u->valuestring) > 4096) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: %s[%d].%s: expected a URL string", what, arr, i,
                           kurl);
            break;
        }
        if (json_u53(b, &bytes)) {
            rc = st_errorf(err, ST_ERR_FORMAT, "%s: %s[%d].%s: expected a byte count", what, arr, i,
                           kbytes);
            break;
        }
        int64_t ns = -1;
        if (sm) {
            if (json_u53(sm, &samples)) {
                rc = st_errorf(err, ST_ERR_FORMAT, "%s: %s[%d].%s: expected a sample count", what,
                               arr, i, ksamples);
                break;
            }
            ns = (int64_t)samples;
        }
        struct st_shard_info *sh = &out->shards[i];
        if (h && !cJSON_IsNull(h)) {
            int ok = cJSON_IsString(h) && strlen(h->valuestring) == 64;
            for (int k = 0; ok && k < 64; k++)
                ok = isxdigit((unsigned char)h->valuestring[k]);
            if (!ok) {
                rc = st_errorf(err, ST_ERR_FORMAT, "%s: %s[%d].sha256: expected 64 hex digits",
                               what, arr, i);
                break;
            }
            for (int k = 0; k < 64; k++)
                sh->sha256[k] = (char)tolower((unsigned char)h->valuestring[k]);
        }
        sh->url = resolve(base, u->valuestring);
        sh->name = st_strdup(u->valuestring);
        sh->size = bytes;
        sh->samples = ns;
        out->n = (uint32_t)i + 1;
        if (!sh->url || !sh->name) {
            rc = st_errorf(err, ST_ERR_NOMEM, "%s: out of memory", what);
            break;
        }
        i++;
    }
    cJSON_Delete(root);
    if (rc) st_shard_list_free(out);
    return rc;
}

/* ---- datasets ---- */

void dataset_free(struct dataset *d) {
    if (d->req_url)
        for (uint32_t i = 0; i < d->list.n; i++)
            st_free(d->req_url[i]);
    st_free(d->req_url);
    st_free(d->scheme);
    st_free(d->fmt);
    st_shard_list_free(&d->list);
    if (d->have_s3) s3_cfg_free(&d->s3);
    memset(d, 0, sizeof *d);
}

void dataset_target(const struct dataset *d, uint32_t i, struct fetch_target *t) {
    t->scheme = d->scheme[i];
    t->display = d->list.shards[i].url;
    t->url = d->scheme[i] == URL_FILE ? NULL : d->req_url[i];
    t->path = d->scheme[i] == URL_FILE ? d->req_url[i] : NULL;
    t->s3 = d->scheme[i] == URL_S3 ? &d->s3 : NULL;
    t->size = d->list.shards[i].size;
    t->etag = d->list.shards[i].etag;
}

static enum st_status need_s3(struct dataset *d, const struct st_stream_options *o,
                              struct st_error *err) {
    if (d->have_s3) return ST_OK;
    enum st_status rc = s3_cfg_load(&d->s3, o, err);
    if (rc == ST_OK) d->have_s3 = 1;
    return rc;
}

/* The request URL/path of one URL the user (or a manifest) named. */
static enum st_status request_of(struct dataset *d, const struct st_stream_options *o,
                                 const char *url, enum url_scheme *scheme, char **req,
                                 struct st_error *err) {
    const char *rest;
    int sc = url_scheme(url, &rest);
    if (sc < 0)
        return st_errorf(err, ST_ERR_ARG,
                         "%s: bad URL: unsupported scheme (use a path, file://, http://, https:// "
                         "or s3://)",
                         url);
    *scheme = (enum url_scheme)sc;
    if (sc == URL_FILE) {
        if (strncmp(url, "file://", 7) == 0 && strncmp(rest, "localhost/", 10) == 0) rest += 9;
        if (strncmp(url, "file://", 7) == 0 && rest[0] != '/')
            return st_errorf(err, ST_ERR_ARG, "%s: bad URL: file:// URLs need an absolute path",
                             url);
        *req = st_strdup(rest);
        if (*req && strncmp(url, "file://", 7) == 0 && url_decode_inplace(*req, 0)) {
            st_free(*req);
            return st_errorf(err, ST_ERR_ARG, "%s: bad URL: bad %%-escape", url);
        }
    } else if (sc == URL_HTTP) {
        const char *host_end = rest + strcspn(rest, "/?#");
        if (host_end == rest) return st_errorf(err, ST_ERR_ARG, "%s: bad URL: no host name", url);
        *req = st_strdup(url);
    } else {
        enum st_status rc = need_s3(d, o, err);
        if (rc) return rc;
        char *bucket, *key;
        if ((rc = s3_split(url, &bucket, &key, err))) return rc;
        if (!*key) {
            st_free(bucket);
            st_free(key);
            return st_errorf(err, ST_ERR_ARG, "%s: bad URL: no object key", url);
        }
        rc = s3_object_url(&d->s3, bucket, key, req, err);
        st_free(bucket);
        st_free(key);
        return rc;
    }
    return *req ? ST_OK : st_errorf(err, ST_ERR_NOMEM, "out of memory");
}

static enum st_status read_whole(struct dataset *d, const struct st_stream_options *o,
                                 const char *url, size_t max, struct dbuf *out,
                                 struct st_error *err) {
    enum url_scheme sc;
    char *req = NULL;
    enum st_status rc = request_of(d, o, url, &sc, &req, err);
    if (rc) return rc;
    struct fetch_policy p;
    fetch_policy_from(&p, o);
    struct fetch_target t = {sc,
                             url,
                             sc == URL_FILE ? NULL : req,
                             sc == URL_FILE ? req : NULL,
                             sc == URL_S3 ? &d->s3 : NULL,
                             ST_SIZE_UNKNOWN,
                             NULL};
    dbuf_init(out, max);
    rc = fetch_sync(&t, &p, 0, ST_SIZE_UNKNOWN, out, NULL, NULL, 0, err);
    st_free(req);
    if (rc) dbuf_free(out);
    return rc;
}

static enum st_status add_url(struct dataset *d, struct slist *s, const struct st_stream_options *o,
                              const char *url, struct st_error *err) {
    const char *rest;
    int sc = url_scheme(url, &rest);
    if (sc < 0)
        return st_errorf(err, ST_ERR_ARG,
                         "%s: bad URL: unsupported scheme (use a path, file://, http://, https:// "
                         "or s3://)",
                         url);
    if (is_index_name(url)) {
        struct dbuf body;
        enum st_status rc = read_whole(d, o, url, INDEX_MAX_BYTES, &body, err);
        if (rc) return rc;
        struct st_shard_list idx;
        rc = index_parse(body.p ? body.p : "", body.len, url, &idx, url, err);
        dbuf_free(&body);
        if (rc) return rc;
        for (uint32_t i = 0; i < idx.n && rc == ST_OK; i++) {
            enum url_scheme ssc;
            char *req = NULL;
            rc = request_of(d, o, idx.shards[i].url, &ssc, &req, err);
            if (rc == ST_OK)
                rc = push_shard(s, idx.shards[i].url, idx.shards[i].name, idx.shards[i].size, NULL,
                                idx.shards[i].samples,
                                idx.shards[i].sha256[0] ? idx.shards[i].sha256 : NULL, req, ssc,
                                err);
            st_free(req);
        }
        st_shard_list_free(&idx);
        if (rc == ST_OK) s->l->from_index = 1;
        return rc;
    }
    if (sc == URL_S3) {
        enum st_status rc = need_s3(d, o, err);
        if (rc) return rc;
        struct fetch_policy p;
        fetch_policy_from(&p, o);
        return list_s3(s, &d->s3, &p, url, err);
    }
    if (sc == URL_HTTP) {
        enum url_scheme ssc;
        char *req = NULL;
        enum st_status rc = request_of(d, o, url, &ssc, &req, err);
        if (rc) return rc;
        const char *q = url + strcspn(url, "?#");
        const char *slash = url;
        for (const char *p = url; p < q; p++)
            if (*p == '/') slash = p + 1;
        char name[1024];
        snprintf(name, sizeof name, "%.*s", (int)(q - slash), slash);
        rc = push_shard(s, url, name[0] ? name : url, ST_SIZE_UNKNOWN, NULL, -1, NULL, req,
                        URL_HTTP, err);
        st_free(req);
        return rc;
    }
    enum url_scheme fsc;
    char *path = NULL;
    enum st_status rc = request_of(d, o, url, &fsc, &path, err);
    if (rc) return rc;
    if (strpbrk(path, "*?[")) {
        glob_t g;
        int gr = glob(path, 0, NULL, &g);
        if (gr == GLOB_NOMATCH || (gr == 0 && g.gl_pathc == 0)) {
            rc = st_errorf(err, ST_ERR_IO, "%s: no files match", url);
        } else if (gr != 0) {
            rc = st_errorf(err, ST_ERR_IO, "%s: cannot list", url);
        } else {
            for (size_t i = 0; i < g.gl_pathc && rc == ST_OK; i++) {
                const char *b = strrchr(g.gl_pathv[i], '/');
                rc = add_file(s, g.gl_pathv[i], g.gl_pathv[i], b ? b + 1 : g.gl_pathv[i], err);
            }
        }
        if (gr == 0) globfree(&g);
        st_free(path);
        return rc;
    }
    struct stat sb;
    if (stat(path, &sb) != 0) {
        rc = st_errorf(err, ST_ERR_IO, "%s: cannot open: %s", url, strerror(errno));
    } else if (S_ISDIR(sb.st_mode)) {
        rc = list_dir(s, path, err);
    } else {
        const char *b = strrchr(path, '/');
        rc = add_file(s, url, path, b ? b + 1 : path, err);
    }
    st_free(path);
    return rc;
}

enum st_status dataset_open(struct dataset *d, const struct st_stream_options *o,
                            struct st_error *err) {
    memset(d, 0, sizeof *d);
    struct slist s = {&d->list, 0, NULL, NULL};
    enum st_status rc = ST_OK;
    int n_in = o->urls ? o->n_urls : (o->url ? 1 : 0);
    if (n_in <= 0 || (!o->urls && !*o->url))
        return st_errorf(err, ST_ERR_ARG, "no data source given (a path, http(s):// or s3:// URL)");
    for (int u = 0; u < n_in && rc == ST_OK; u++) {
        const char *url = o->urls ? o->urls[u] : o->url;
        if (!url || !*url) {
            rc = st_errorf(err, ST_ERR_ARG, "empty data URL");
            break;
        }
        char **exp;
        size_t ne;
        if ((rc = brace_expand(url, MAX_SHARDS, &exp, &ne, err))) break;
        for (size_t i = 0; i < ne && rc == ST_OK; i++)
            rc = add_url(d, &s, o, exp[i], err);
        str_array_free(exp, ne);
    }
    d->req_url = s.req;
    d->scheme = s.scheme;
    if (rc == ST_OK) {
        d->fmt = st_calloc(d->list.n ? d->list.n : 1, sizeof *d->fmt);
        if (!d->fmt) rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
    }
    if (rc) {
        dataset_free(d);
        return rc;
    }
    uint64_t fp = seed_mix(0x5354524541ULL, d->list.n);
    for (uint32_t i = 0; i < d->list.n; i++) {
        d->fmt[i] = format_of(d->list.shards[i].name, o->format);
        uint64_t h = 1469598103934665603ULL;
        for (const char *p = d->list.shards[i].name; *p; p++)
            h = (h ^ (uint8_t)*p) * 1099511628211ULL;
        fp = seed_mix(fp, h);
    }
    d->fingerprint = fp;
    return ST_OK;
}

enum st_status st_data_list(const struct st_stream_options *opts, struct st_shard_list *out,
                            struct st_error *err) {
    struct dataset d;
    memset(out, 0, sizeof *out);
    enum st_status rc = dataset_open(&d, opts, err);
    if (rc) return rc;
    *out = d.list;
    d.list.shards = NULL;
    uint32_t n = d.list.n;
    d.list.n = 0;
    for (uint32_t i = 0; i < n; i++)
        st_free(d.req_url[i]);
    dataset_free(&d);
    return ST_OK;
}

enum st_status st_data_read_url(const struct st_stream_options *opts, const char *url,
                                size_t max_bytes, uint8_t **out, size_t *len,
                                struct st_error *err) {
    struct dataset d;
    memset(&d, 0, sizeof d);
    struct dbuf b;
    *out = NULL;
    *len = 0;
    enum st_status rc = read_whole(&d, opts, url, max_bytes, &b, err);
    if (d.have_s3) s3_cfg_free(&d.s3);
    if (rc) return rc;
    *len = b.len;
    *out = (uint8_t *)dbuf_take(&b);
    return *out ? ST_OK : st_errorf(err, ST_ERR_NOMEM, "out of memory");
}
