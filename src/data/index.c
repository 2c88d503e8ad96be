/* index.c: `streamtune data index`: read every shard once and write an index manifest.
 *
 * DESIGN: the manifest is JSON, one shard per line so it diffs well:
 *   {"streamtune_index": 1, "shards": [
 *     {"url": "shard-000.jsonl.zst", "bytes": 123, "samples": 500, "sha256": "..."}, ...],
 *    "samples": N, "bytes": B}
 * URLs are relative to the manifest's location when they start with base_url. Each shard is read
 * sequentially in ranged parts (retries as in the stream), hashed over its stored bytes, and
 * decoded and parsed with the stream's own parsers, so an index is only written for shards the
 * stream can read. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/internal.h"

struct counter {
    uint64_t n;
};

static int count_rec(void *ctx, const struct rec *r, struct st_error *err) {
    ((struct counter *)ctx)->n++;
    return 0;
}

static enum st_status scan_shard(const struct dataset *d, uint32_t i, const struct fetch_policy *p,
                                 size_t part, uint64_t *samples, uint64_t *bytes, char sha[65],
                                 struct st_error *err) {
    struct fetch_target t;
    dataset_target(d, i, &t);
    enum shard_fmt { F_JSONL, F_TAR } fmt = d->fmt[i] == ST_FORMAT_TAR ? F_TAR : F_JSONL;
    const size_t max_rec = (size_t)256 << 20;
    struct sha256 h;
    sha256_init(&h);
    struct decomp dec;
    int dec_on = 0, started = 0;
    enum comp comp = COMP_NONE;
    struct jsonl jl;
    struct tar tr;
    if (fmt == F_TAR)
        tar_init(&tr, 0, 0, max_rec);
    else
        jsonl_init(&jl, 0, 0, max_rec, 1);
    struct counter c = {0};
    uint8_t *out = st_malloc(1 << 17);
    struct dbuf b;
    dbuf_init(&b, part);
    enum st_status rc = out ? ST_OK : st_errorf(err, ST_ERR_NOMEM, "out of memory");
    uint64_t off = 0, size = t.size;
    while (rc == ST_OK) {
        if (size != ST_SIZE_UNKNOWN && off >= size) break;
        dbuf_reset(&b);
        uint64_t sz = ST_SIZE_UNKNOWN;
        rc = fetch_sync(&t, p, off, part, &b, &sz, NULL, 0, err);
        if (rc) break;
        if (size == ST_SIZE_UNKNOWN) size = sz;
        if (b.len == 0) break;
        sha256_update(&h, b.p, b.len);
        const uint8_t *in = (const uint8_t *)b.p;
        size_t n = b.len;
        if (!started) {
            started = 1;
            comp = decomp_sniff(in, n);
            if (comp == COMP_NONE) comp = comp_from_name(d->list.shards[i].name);
            if (comp != COMP_NONE) {
                if ((rc = decomp_init(&dec, comp, 27, 0, t.display, err))) break;
                dec_on = 1;
            }
        }
        while (rc == ST_OK && n) {
            const uint8_t *chunk = in;
            size_t chunk_n = n, used_in = n;
            if (dec_on) {
                int fe;
                rc = decomp_run(&dec, in, n, &used_in, out, 1 << 17, &chunk_n, &fe, t.display, err);
                if (rc) break;
                chunk = out;
                if (!used_in && !chunk_n) break;
            }
            size_t used;
            rc = fmt == F_TAR
                     ? tar_feed(&tr, chunk, chunk_n, &used, count_rec, &c, t.display, err)
                     : jsonl_feed(&jl, chunk, chunk_n, &used, count_rec, &c, t.display, err);
            in += used_in;
            n -= used_in;
        }
        off += b.len;
        if (size == ST_SIZE_UNKNOWN && b.len < part) break;
    }
    while (rc == ST_OK && dec_on) { /* flush */
        size_t used_in, chunk_n, used;
        int fe;
        rc = decomp_run(&dec, NULL, 0, &used_in, out, 1 << 17, &chunk_n, &fe, t.display, err);
        if (rc || !chunk_n) break;
        rc = fmt == F_TAR ? tar_feed(&tr, out, chunk_n, &used, count_rec, &c, t.display, err)
                          : jsonl_feed(&jl, out, chunk_n, &used, count_rec, &c, t.display, err);
    }
    if (rc == ST_OK && dec_on) rc = decomp_finish(&dec, t.display, err);
    if (rc == ST_OK)
        rc = fmt == F_TAR ? tar_end(&tr, count_rec, &c, t.display, err)
                          : jsonl_end(&jl, count_rec, &c, t.display, err);
    if (dec_on) decomp_free(&dec);
    if (fmt == F_TAR)
        tar_free(&tr);
    else
        jsonl_free(&jl);
    dbuf_free(&b);
    st_free(out);
    if (rc) return rc;
    *samples = c.n;
    *bytes = off;
    sha256_final_hex(&h, sha);
    return ST_OK;
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

/* path with its folder resolved (realpath) and its own name kept: a shard that is a symlink (a
 * Hugging Face snapshot links train.jsonl to a blob) keeps the name its format and split come
 * from. 0 when the folder does not resolve. */
static int real_dir_path(const char *path, char out[PATH_MAX]) {
    char dir[PATH_MAX], rd[PATH_MAX];
    const char *sl = strrchr(path, '/'), *name = sl ? sl + 1 : path;
    if (sl) snprintf(dir, sizeof dir, "%.*s", (int)(sl == path ? 1 : sl - path), path);
    else snprintf(dir, sizeof dir, ".");
    if (!*name || !realpath(dir, rd)) return 0;
    return snprintf(out, PATH_MAX, "%s%s%s", rd, strcmp(rd, "/") ? "/" : "", name) < PATH_MAX;
}

enum st_status st_index_write(const struct st_stream_options *opts, const char *base_url,
                              const char *out_path,
                              void (*progress)(uint32_t done, uint32_t total, void *ctx), void *ctx,
                              struct st_error *err) {
    struct dataset d;
    enum st_status rc = dataset_open(&d, opts, err);
    if (rc) return rc;
    struct fetch_policy p;
    fetch_policy_from(&p, opts);
    size_t part = opts->part_size ? opts->part_size : (8u << 20);
    uint64_t *ns = st_calloc(d.list.n, sizeof *ns), *nb = st_calloc(d.list.n, sizeof *nb);
    char(*sha)[65] = st_calloc(d.list.n, sizeof *sha);
    if (!ns || !nb || !sha) rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
    for (uint32_t i = 0; rc == ST_OK && i < d.list.n; i++) {
        rc = scan_shard(&d, i, &p, part, &ns[i], &nb[i], sha[i], err);
        if (progress && rc == ST_OK) progress(i + 1, d.list.n, ctx);
    }
    /* base: given, else the source URL (a directory or prefix gets its trailing slash) */
    char base[4096] = "";
    if (base_url)
        snprintf(base, sizeof base, "%s", base_url);
    else if (opts->url && !strchr(opts->url, '{') && !strchr(opts->url, '*')) {
        snprintf(base, sizeof base, "%s", opts->url);
        int is_single = d.list.n == 1 && strcmp(d.list.shards[0].url, opts->url) == 0;
        if (is_single) {
            char *sl = strrchr(base, '/');
            if (sl)
                sl[1] = '\0';
            else
                base[0] = '\0';
        } else if (base[0] && base[strlen(base) - 1] != '/') {
            strncat(base, "/", sizeof base - strlen(base) - 1);
        }
    }
    /* A manifest written to a local file and local shards: their paths relative to the
     * manifest's folder (how a reader resolves them), or absolute when outside it. (Remote
     * shards stay relative to their source: that manifest is meant to sit beside them.) */
    int to_file = strcmp(out_path, "-") != 0, local = to_file && !base_url;
    for (uint32_t i = 0; local && i < d.list.n; i++)
        local = strstr(d.list.shards[i].url, "://") == NULL;
    char mdir[PATH_MAX] = "";
    if (local) {
        char od[PATH_MAX];
        snprintf(od, sizeof od, "%s", out_path);
        char *sl = strrchr(od, '/');
        if (sl) sl[sl == od] = '\0';
        else snprintf(od, sizeof od, ".");
        if (!realpath(od, mdir)) local = 0;
    }
    FILE *f = NULL;
    char tmp[PATH_MAX + 32] = "";
    /* a file: via a temporary one renamed over it once whole; not /dev/stdout, a pipe, a link */
    struct stat ost;
    int direct = to_file && lstat(out_path, &ost) == 0 && !S_ISREG(ost.st_mode);
    if (rc == ST_OK) {
        if (to_file && !direct) snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out_path, (long)getpid());
        f = !to_file ? stdout : direct ? fopen(out_path, "w") : fopen(tmp, "w");
        if (!f) rc = st_errorf(err, ST_ERR_IO, "%s: cannot write", tmp[0] ? tmp : out_path);
    }
    if (rc == ST_OK) {
        uint64_t ts = 0, tb = 0;
        fprintf(f, "{\"streamtune_index\": 1, \"shards\": [\n");
        for (uint32_t i = 0; i < d.list.n; i++) {
            const char *u = d.list.shards[i].url;
            char abs[PATH_MAX];
            size_t ml = strlen(mdir);
            if (local && real_dir_path(u, abs)) {
                u = abs;
                if (strncmp(abs, mdir, ml) == 0 && abs[ml] == '/') u = abs + ml + 1;
                else if (ml == 1 && abs[0] == '/') u = abs + 1; /* the manifest in / */
            } else {
                size_t bl = strlen(base);
                if (bl && strncmp(u, base, bl) == 0 && u[bl]) u += bl;
            }
            fprintf(f, "  {\"url\": ");
            json_str(f, u);
            fprintf(f, ", \"bytes\": %llu, \"samples\": %llu, \"sha256\": \"%s\"}%s\n",
                    (unsigned long long)nb[i], (unsigned long long)ns[i], sha[i],
                    i + 1 < d.list.n ? "," : "");
            ts += ns[i];
            tb += nb[i];
        }
        fprintf(f, "], \"samples\": %llu, \"bytes\": %llu}\n", (unsigned long long)ts,
                (unsigned long long)tb);
        if (f != stdout) {
            int bad = fflush(f) != 0 || (!direct && fsync(fileno(f)) != 0);
            if (fclose(f) != 0 || bad || (!direct && rename(tmp, out_path) != 0))
                rc = st_errorf(err, ST_ERR_IO, "%s: write failed", out_path);
        } else {
            fflush(f);
        }
    }
    if (rc && tmp[0]) unlink(tmp);
    st_free(ns);
    st_free(nb);
    st_free(sha);
    dataset_free(&d);
    return rc;
}
