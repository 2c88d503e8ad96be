/* helpers.h: what the data tests share: temporary directories, synthetic shards whose records
 * carry their own ids, and real servers on 127.0.0.1 (nginx with a generated config, s3rver via
 * tests/servers/s3rver.js, the fault proxy tests/servers/faultproxy.js) started and stopped by
 * the test itself on free ports.
 *
 * DESIGN: children are started with fork+exec and PR_SET_PDEATHSIG so a crashed test never
 * leaves a server behind; each server prints or is probed for its port; stopping is SIGTERM then
 * waitpid. A server binary that is absent makes the caller skip with a message (td_which). */
#ifndef ST_TEST_SERVERS_HELPERS_H
#define ST_TEST_SERVERS_HELPERS_H

#define ZSTD_STATIC_LINKING_ONLY
#include <arpa/inet.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#ifndef ST_SOURCE_DIR
#define ST_SOURCE_DIR "."
#endif

/* ---- files ---- */

static inline char *td_tmpdir(const char *tag) {
    const char *base = getenv("TMPDIR");
    char tmpl[512];
    snprintf(tmpl, sizeof tmpl, "%s/st-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

static inline void td_rm_rf(const char *path) {
    struct stat sb;
    if (lstat(path, &sb) != 0) return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d))) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
                char p[4096];
                snprintf(p, sizeof p, "%s/%s", path, e->d_name);
                td_rm_rf(p);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

static inline int td_write(const char *path, const void *d, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    int bad = n && fwrite(d, 1, n, f) != n;
    bad |= fclose(f) != 0;
    return bad;
}

/* ---- growable byte buffer (test side; plain malloc) ---- */
struct tbuf {
    uint8_t *p;
    size_t n, cap;
};
static inline void tb_add(struct tbuf *b, const void *d, size_t n) {
    if (!n && b->p) return;
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 4096;
        while (c < b->n + n + 1)
            c *= 2;
        b->p = realloc(b->p, c);
        b->cap = c;
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
    b->p[b->n] = 0;
}
static inline void tb_printf(struct tbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline void tb_printf(struct tbuf *b, const char *fmt, ...) {
    char tmp[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) tb_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* ---- compression ---- */

static inline void td_gzip(const uint8_t *d, size_t n, struct tbuf *out) {
    z_stream z;
    memset(&z, 0, sizeof z);
    deflateInit2(&z, 6, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY);
    uLong bound = deflateBound(&z, (uLong)n) + 64;
    uint8_t *o = malloc(bound);
    z.next_in = (Bytef *)d;
    z.avail_in = (uInt)n;
    z.next_out = o;
    z.avail_out = (uInt)bound;
    deflate(&z, Z_FINISH);
    tb_add(out, o, bound - z.avail_out);
    deflateEnd(&z);
    free(o);
}

/* One zstd frame per `lines_per_frame` lines (0: one frame), like a seekable writer. */
static inline void td_zstd(const uint8_t *d, size_t n, int lines_per_frame, struct tbuf *out) {
    size_t start = 0;
    while (start < n || (n == 0 && start == 0)) {
        size_t end = n;
        if (lines_per_frame > 0) {
            int lines = 0;
            for (size_t i = start; i < n; i++)
                if (d[i] == '\n' && ++lines == lines_per_frame) {
                    end = i + 1;
                    break;
                }
        }
        size_t bound = ZSTD_compressBound(end - start);
        uint8_t *o = malloc(bound);
        size_t r = ZSTD_compress(o, bound, d + start, end - start, 3);
        tb_add(out, o, r);
        free(o);
        start = end;
        if (n == 0) break;
    }
}

/* ---- tar ---- */

static inline void td_tar_member(struct tbuf *t, const char *name, const void *d, size_t n) {
    uint8_t h[512];
    memset(h, 0, sizeof h);
    snprintf((char *)h, 100, "%s", name);
    snprintf((char *)h + 100, 8, "%07o", 0644);
    snprintf((char *)h + 108, 8, "%07o", 0);
    snprintf((char *)h + 116, 8, "%07o", 0);
    snprintf((char *)h + 124, 12, "%011llo", (unsigned long long)n);
    snprintf((char *)h + 136, 12, "%011o", 1700000000);
    h[156] = '0';
    memcpy(h + 257,
           "ustar\0"
           "00",
           8);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++)
        sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum);
    h[155] = ' ';
    tb_add(t, h, 512);
    tb_add(t, d, n);
    static const uint8_t zero[512];
    if (n % 512) tb_add(t, zero, 512 - n % 512);
}

static inline void td_tar_end(struct tbuf *t) {
    static const uint8_t zero[1024];
    tb_add(t, zero, 1024);
}

/* ---- synthetic datasets ---- */

enum td_kind { TD_JSONL = 0, TD_GZ, TD_ZST, TD_TAR };
static const char *const td_ext[] = {".jsonl", ".jsonl.gz", ".jsonl.zst", ".tar"};

/* Record text of sample `id`: deterministic, variable length (some long ones cross parts). */
static inline void td_record(struct tbuf *b, int64_t id, int shard, int i) {
    uint64_t x = (uint64_t)id * 0x9e3779b97f4a7c15ULL + 12345;
    x ^= x >> 29;
    int len = (int)(x % 200);
    if (x % 97 == 0) len = 3000 + (int)(x % 5000);
    tb_printf(b, "{\"id\": %lld, \"shard\": %d, \"i\": %d, \"text\": \"", (long long)id, shard, i);
    for (int k = 0; k < len; k++) {
        char c = (char)('a' + (x >> (k % 50)) % 26);
        if (k % 7 == 6) c = ' ';
        tb_add(b, &c, 1);
    }
    tb_printf(b, "\"}");
}

/* Write n_shards shards of `per` samples each into dir (kinds cycle through `kinds`), ids
 * 0..n_shards*per-1 in shard order. Names: shard-000.jsonl, shard-001.jsonl.gz, ... */
static inline int td_make_dataset(const char *dir, int n_shards, int per, const int *kinds,
                                  int n_kinds) {
    for (int s = 0; s < n_shards; s++) {
        int kind = kinds[s % n_kinds];
        struct tbuf raw = {0}, out = {0};
        for (int i = 0; i < per; i++) {
            int64_t id = (int64_t)s * per + i;
            if (kind == TD_TAR) {
                struct tbuf rec = {0};
                td_record(&rec, id, s, i);
                char name[128];
                snprintf(name, sizeof name, "s%03d/%06d.json", s, i);
                td_tar_member(&raw, name, rec.p, rec.n);
                char idtxt[32];
                int k = snprintf(idtxt, sizeof idtxt, "%lld", (long long)id);
                snprintf(name, sizeof name, "s%03d/%06d.cls", s, i);
                td_tar_member(&raw, name, idtxt, (size_t)k);
                free(rec.p);
            } else {
                td_record(&raw, id, s, i);
                tb_add(&raw, "\n", 1);
            }
        }
        if (kind == TD_TAR) td_tar_end(&raw);
        const uint8_t *data = raw.p ? raw.p : (const uint8_t *)"";
        if (kind == TD_GZ)
            td_gzip(data, raw.n, &out);
        else if (kind == TD_ZST)
            td_zstd(data, raw.n, 37, &out);
        else
            tb_add(&out, data, raw.n);
        char path[4096];
        snprintf(path, sizeof path, "%s/shard-%03d%s", dir, s, td_ext[kind]);
        int bad = td_write(path, out.p, out.n);
        free(raw.p);
        free(out.p);
        if (bad) return 1;
    }
    return 0;
}

/* The id a sample carries: "id": N in a JSONL record, or the .cls field of a tar sample. */
static inline int64_t td_sample_id(const uint8_t *d, size_t n, int is_cls) {
    if (is_cls) return strtoll((const char *)d, NULL, 10);
    const char *p = strstr((const char *)d, "\"id\": ");
    return p ? strtoll(p + 6, NULL, 10) : -1;
}

/* ---- processes ---- */

static inline int td_which(const char *name, char *out, size_t cap) {
    if (strchr(name, '/')) {
        snprintf(out, cap, "%s", name);
        return access(out, X_OK) == 0;
    }
    const char *path = getenv("PATH");
    char buf[4096];
    snprintf(buf, sizeof buf, "%s:/usr/sbin:/sbin", path ? path : "/usr/bin:/bin");
    for (char *tok = buf, *next; tok; tok = next) {
        next = strchr(tok, ':');
        if (next) *next++ = '\0';
        snprintf(out, cap, "%s/%s", *tok ? tok : ".", name);
        if (access(out, X_OK) == 0) return 1;
    }
    return 0;
}

/* Start argv[0] with stdout on a pipe (*out_fd) unless out_fd is NULL; returns the pid. */
static inline pid_t td_spawn(char *const argv[], int *out_fd, const char *log_path) {
    int fds[2] = {-1, -1};
    if (out_fd && pipe(fds) != 0) return -1;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        if (out_fd) {
            dup2(fds[1], 1);
            close(fds[0]);
            close(fds[1]);
        }
        int lf = open(log_path ? log_path : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (lf >= 0) {
            dup2(lf, 2);
            if (!out_fd) dup2(lf, 1);
            close(lf);
        }
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) dup2(nul, 0);
        execv(argv[0], argv);
        _exit(127);
    }
    if (out_fd) {
        close(fds[1]);
        *out_fd = fds[0];
    }
    return pid;
}

/* Read "PORT <n>" from fd within timeout_s. */
static inline int td_read_port(int fd, double timeout_s) {
    char buf[512];
    size_t n = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double el = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        if (el > timeout_s) return -1;
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 100) <= 0) continue;
        ssize_t r = read(fd, buf + n, sizeof buf - 1 - n);
        if (r <= 0) return -1;
        n += (size_t)r;
        buf[n] = '\0';
        char *p = strstr(buf, "PORT ");
        if (p && strchr(p, '\n')) return atoi(p + 5);
        if (n >= sizeof buf - 1) return -1;
    }
}

static inline int td_free_port(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof a;
    int port = -1;
    if (bind(s, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(s, (struct sockaddr *)&a, &l) == 0)
        port = ntohs(a.sin_port);
    close(s);
    return port;
}

static inline int td_wait_port(int port, double timeout_s) {
    for (int i = 0; i < (int)(timeout_s * 50); i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons((uint16_t)port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int ok = connect(s, (struct sockaddr *)&a, sizeof a) == 0;
        close(s);
        if (ok) return 0;
        usleep(20000);
    }
    return 1;
}

struct td_server {
    pid_t pid;
    int port;
    char dir[512]; /* its scratch directory (removed by td_stop) */
    char url[128]; /* http://127.0.0.1:PORT */
};

static inline void td_stop(struct td_server *s) {
    if (s->pid > 0) {
        kill(s->pid, SIGTERM);
        int st;
        for (int i = 0; i < 100; i++) {
            if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
                s->pid = 0;
                break;
            }
            usleep(20000);
        }
        if (s->pid > 0) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &st, 0);
        }
        s->pid = 0;
    }
    if (s->dir[0]) td_rm_rf(s->dir);
    s->dir[0] = '\0';
}

/* nginx serving root on a free port (Range, 206/416, If-Match, keep-alive). 0 on success; 2
 * when nginx is not installed. */
static inline int td_nginx_start(struct td_server *s, const char *root) {
    memset(s, 0, sizeof *s);
    char bin[1024];
    if (!td_which("nginx", bin, sizeof bin)) return 2;
    char *d = td_tmpdir("nginx");
    if (!d) return 1;
    snprintf(s->dir, sizeof s->dir, "%s", d);
    free(d);
    for (int attempt = 0; attempt < 5; attempt++) {
        s->port = td_free_port();
        char conf[1024], text[4096];
        snprintf(conf, sizeof conf, "%s/nginx.conf", s->dir);
        snprintf(text, sizeof text,
                 "daemon off;\nmaster_process off;\nworker_processes 1;\n"
                 "error_log %s/error.log warn;\npid %s/nginx.pid;\n"
                 "events { worker_connections 1024; }\n"
                 "http {\n  access_log off;\n  sendfile on;\n  keepalive_requests 1000000;\n"
                 "  client_body_temp_path %s/body;\n  proxy_temp_path %s/proxy;\n"
                 "  fastcgi_temp_path %s/fcgi;\n  uwsgi_temp_path %s/uwsgi;\n"
                 "  scgi_temp_path %s/scgi;\n  types { application/octet-stream bin; }\n"
                 "  server {\n    listen 127.0.0.1:%d;\n    root %s;\n"
                 "    location / { autoindex off; }\n  }\n}\n",
                 s->dir, s->dir, s->dir, s->dir, s->dir, s->dir, s->dir, s->port, root);
        td_write(conf, text, strlen(text));
        char log[1024];
        snprintf(log, sizeof log, "%s/stderr.log", s->dir);
        char *argv[] = {bin, "-p", s->dir, "-c", conf, "-e", "stderr", NULL};
        s->pid = td_spawn(argv, NULL, log);
        if (s->pid > 0 && td_wait_port(s->port, 5) == 0) {
            snprintf(s->url, sizeof s->url, "http://127.0.0.1:%d", s->port);
            return 0;
        }
        if (s->pid > 0) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, NULL, 0);
            s->pid = 0;
        }
    }
    return 1;
}

/* A node script of tests/servers with arguments; it prints "PORT n". 2: node absent. */
static inline int td_node_start(struct td_server *s, const char *script, const char *const *args,
                                int n_args) {
    memset(s, 0, sizeof *s);
    char node[1024];
    if (!td_which("node", node, sizeof node)) return 2;
    char *d = td_tmpdir("node");
    if (!d) return 1;
    snprintf(s->dir, sizeof s->dir, "%s", d);
    free(d);
    char path[1024], log[1024];
    snprintf(path, sizeof path, "%s/tests/servers/%s", ST_SOURCE_DIR, script);
    snprintf(log, sizeof log, "%s/stderr.log", s->dir);
    char *argv[64];
    int k = 0;
    argv[k++] = node;
    argv[k++] = "--openssl-legacy-provider";
    argv[k++] = path;
    for (int i = 0; i < n_args && k < 62; i++)
        argv[k++] = (char *)args[i];
    argv[k] = NULL;
    int fd;
    s->pid = td_spawn(argv, &fd, log);
    if (s->pid <= 0) return 1;
    s->port = td_read_port(fd, 20);
    close(fd);
    if (s->port <= 0) {
        char tail[600] = "";
        FILE *f = fopen(log, "r");
        if (f) {
            size_t r = fread(tail, 1, sizeof tail - 1, f);
            tail[r] = 0;
            fclose(f);
        }
        fprintf(stderr, "  %s did not start: %s\n", script, tail);
        td_stop(s);
        return 1;
    }
    snprintf(s->url, sizeof s->url, "http://127.0.0.1:%d", s->port);
    return 0;
}

/* s3rver with bucket `bucket` (data in its own scratch dir); access key/secret S3RVER/S3RVER. */
static inline int td_s3rver_start(struct td_server *s, const char *bucket) {
    char modules[1024];
    snprintf(modules, sizeof modules, "%s/tools/node_modules/@20minutes/s3rver/lib/s3rver.js",
             ST_SOURCE_DIR);
    if (access(modules, R_OK) != 0) return 2;
    const char *args[] = {"--bucket", bucket};
    return td_node_start(s, "s3rver.js", args, 2);
}

/* PUT an object with SigV4 (what `curl --aws-sigv4` does). 0 on success. */
static inline int td_s3_put(const char *endpoint, const char *bucket, const char *key,
                            const void *data, size_t n) {
    char url[2048];
    snprintf(url, sizeof url, "%s/%s/%s", endpoint, bucket, key);
    CURL *h = curl_easy_init();
    /* no "Expect:" removal entry: curl 7.88's SigV4 signs it (empty) without sending it */
    struct curl_slist *hl = curl_slist_append(NULL, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "PUT");
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, data);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)n);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_AWS_SIGV4, "aws:amz:us-east-1:s3");
    curl_easy_setopt(h, CURLOPT_USERPWD, "S3RVER:S3RVER");
    FILE *devnull = fopen("/dev/null", "w");
    curl_easy_setopt(h, CURLOPT_WRITEDATA, devnull);
    CURLcode c = curl_easy_perform(h);
    long st = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &st);
    fclose(devnull);
    curl_slist_free_all(hl);
    curl_easy_cleanup(h);
    return c != CURLE_OK || st != 200;
}

/* Upload every regular file of dir to bucket/prefix/<name>. */
static inline int td_s3_upload_dir(const char *endpoint, const char *bucket, const char *prefix,
                                   const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 1;
    struct dirent *e;
    int bad = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[4096], key[2048];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        FILE *f = fopen(path, "rb");
        uint8_t *buf = malloc((size_t)sb.st_size + 1);
        size_t r = fread(buf, 1, (size_t)sb.st_size, f);
        fclose(f);
        snprintf(key, sizeof key, "%s%s", prefix, e->d_name);
        bad |= r != (size_t)sb.st_size || td_s3_put(endpoint, bucket, key, buf, r);
        free(buf);
    }
    closedir(d);
    return bad;
}

#endif
