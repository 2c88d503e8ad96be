/* util.c: logging, monotonic time, RNG (xoshiro256** seeded by splitmix64), thread settings,
 * checked number parsing, environment switches and whole-file reads. */
#include "streamtune/core.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- logging ---- */
static enum st_log_level log_level = ST_LOG_INFO;
void st_log_set_level(enum st_log_level lvl) { log_level = lvl; }
enum st_log_level st_log_get_level(void) { return log_level; }

void st_log(enum st_log_level lvl, const char *fmt, ...) {
    if (lvl > log_level) return;
    static const char *names[] = {"error", "warning", "info", "debug"};
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "streamtune: %s: %s\n", names[lvl], line);
}

/* ---- time ---- */
double st_time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- rng ---- */
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void st_rng_seed(struct st_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t st_rng_u64(struct st_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double st_rng_uniform(struct st_rng *r) { return (double)(st_rng_u64(r) >> 11) * 0x1.0p-53; }
float st_rng_uniformf(struct st_rng *r) { return (float)(st_rng_u64(r) >> 40) * 0x1.0p-24f; }

double st_rng_normal(struct st_rng *r) {
    double u1 = st_rng_uniform(r), u2 = st_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* ---- threads ---- */
extern void openblas_set_num_threads(int) __attribute__((weak));
static int n_threads = 1;

void st_threads_set(int n) {
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    n_threads = n;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    if (openblas_set_num_threads) openblas_set_num_threads(n);
}

int st_threads_get(void) { return n_threads; }

static _Thread_local struct st_share *share; /* the share this thread's group is in */
static _Thread_local int share_n;                /* the threads its kernels run on */

void st_share_join(struct st_share *s) {
    ST_ASSERT(!share); /* a join without its leave would keep a pointer to a dead share */
    share = s, share_n = 1;
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
}

void st_share_leave(void) {
    if (!share) return;
    __atomic_add_fetch(&share->spare, share_n, __ATOMIC_ACQ_REL);
    share = NULL, share_n = 0;
}

void st_share_poll(void) {
    if (!share) return;
    int sp = __atomic_load_n(&share->spare, __ATOMIC_ACQUIRE), took = 0;
    while (sp > 0)
        if (__atomic_compare_exchange_n(&share->spare, &sp, sp - 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            took++, sp--;
    if (!took) return;
    share_n += took;
#ifdef _OPENMP
    omp_set_num_threads(share_n);
#endif
}

void st_blas_threads(int n) {
    if (openblas_set_num_threads) openblas_set_num_threads(n);
}

/* ---- parsing ---- */
int st_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    if (!s || !*s) return 1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end != '\0' || v < lo || v > hi) return 1;
    *out = v;
    return 0;
}

int st_env_flag(const char *name) {
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

const char *st_json_num(char *b, size_t n, const char *fmt, double v) {
    if (!isfinite(v)) return "null";
    snprintf(b, n, fmt, v);
    return b;
}

size_t st_utf8_seq(const unsigned char *p, size_t n) {
    unsigned c = p[0];
    size_t k = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3
             : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (k == 0 || k > n) return 0;
    for (size_t i = 1; i < k; i++)
        if ((p[i] & 0xc0) != 0x80) return 0;
    if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f) || (c == 0xf0 && p[1] < 0x90) ||
        (c == 0xf4 && p[1] > 0x8f))
        return 0;
    return k;
}

long st_json_nul_escape(const char *s, size_t n) {
    for (size_t i = 0; i + 1 < n; i++)
        if (s[i] == '\\') {
            if (s[i + 1] == 'u' && i + 6 <= n && memcmp(s + i + 2, "0000", 4) == 0) return (long)i;
            i++; /* the escaped character */
        }
    return -1;
}

int st_parse_f64(const char *s, double *out) {
    if (!s || !*s) return 1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end != '\0' || !isfinite(v)) return 1;
    *out = v;
    return 0;
}

enum st_status st_read_file(const char *path, size_t max_bytes, char **out, size_t *len,
                            struct st_error *err) {
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return st_errorf(err, ST_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return st_errorf(err, ST_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > max_bytes) {
        fclose(f);
        return st_errorf(err, ST_ERR_FORMAT, "%s: file is %lld bytes, more than the %zu allowed",
                         path, (long long)sb.st_size, max_bytes);
    }
    size_t n = (size_t)sb.st_size;
    char *buf = st_malloc(n + 1);
    if (!buf) {
        fclose(f);
        return st_errorf(err, ST_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, n + 1);
    }
    if (n && fread(buf, 1, n, f) != n) {
        st_free(buf);
        fclose(f);
        return st_errorf(err, ST_ERR_IO, "%s: short read", path);
    }
    fclose(f);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return ST_OK;
}

/* ---- files ---- */
#include <fcntl.h>
#include <libgen.h>

static void fsync_dir_of(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    int fd = open(dirname(buf), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

enum st_status st_write_file_atomic(const char *path, const void *data, size_t len,
                                    struct st_error *err) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return st_errorf(err, ST_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            unlink(tmp);
            return st_errorf(err, ST_ERR_IO, "%s: write failed: %s", path, strerror(e));
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        return st_errorf(err, ST_ERR_IO, "%s: fsync failed: %s", path, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return st_errorf(err, ST_ERR_IO, "%s: rename failed: %s", path, strerror(e));
    }
    fsync_dir_of(path);
    return ST_OK;
}

enum st_status st_mkdirs(const char *path, struct st_error *err) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            struct stat sb;
            if (stat(buf, &sb) != 0) {
                if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                    return st_errorf(err, ST_ERR_IO, "%s: cannot create directory: %s", buf,
                                     strerror(errno));
            } else if (!S_ISDIR(sb.st_mode)) {
                return st_errorf(err, ST_ERR_IO, "%s: exists and is not a directory", buf);
            }
            *p = c;
            if (c == '\0') break;
        }
    }
    return ST_OK;
}
