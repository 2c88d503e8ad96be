/* streamtune core: status codes and error messages, counted allocator, arena, logging, timers,
 * random numbers and thread settings.
 *
 * DESIGN: errors are values. Every fallible function returns enum st_status and, when it fails,
 * writes a one-line message into a caller-owned struct st_error (never a global), naming the file,
 * URL, JSON path or byte offset at fault. All heap memory goes through st_malloc & co. so tests can
 * count allocations and make the Nth one fail (sqlite's malloc.c idea).
 */
#ifndef STREAMTUNE_CORE_H
#define STREAMTUNE_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum st_status {
    ST_OK = 0,
    ST_ERR_IO,          /* open/read/write/mmap failed */
    ST_ERR_FORMAT,      /* malformed file or record */
    ST_ERR_NOMEM,       /* allocation failed or a size cap was exceeded */
    ST_ERR_NET,         /* network failure */
    ST_ERR_SHAPE,       /* tensor shape or dtype mismatch */
    ST_ERR_UNSUPPORTED, /* well-formed but not supported (yet) */
    ST_ERR_ARG,         /* bad argument from the caller / command line */
};

#define ST_ERROR_MSG_MAX 512

struct st_error {
    enum st_status code;
    char msg[ST_ERROR_MSG_MAX];
};

/* Short name of a status ("format error", ...). Never NULL. */
const char *st_status_str(enum st_status s);

/* Record an error: sets err->code and formats err->msg. err may be NULL. Returns code, so callers
 * write `return st_errorf(err, ST_ERR_FORMAT, "%s: ...", path);`. */
enum st_status st_errorf(struct st_error *err, enum st_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefix an existing message with context ("loading model: " + old message). */
enum st_status st_error_prefix(struct st_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Always-on invariant check for programming errors (never for bad input). */
#define ST_ASSERT(cond)                                                                       \
    do {                                                                                      \
        if (!(cond)) st_assert_fail(#cond, __FILE__, __LINE__);                               \
    } while (0)
_Noreturn void st_assert_fail(const char *expr, const char *file, int line);

/* ---- allocator: every heap allocation of the library goes through these ---- */
void *st_malloc(size_t n);
void *st_calloc(size_t count, size_t size); /* checks count*size for overflow */
void *st_realloc(void *p, size_t n);
void st_free(void *p);
char *st_strdup(const char *s);

/* Live allocation count and bytes (for leak checks and memory reports). */
size_t st_alloc_live_count(void);
size_t st_alloc_live_bytes(void);
size_t st_alloc_peak_bytes(void);
/* Make the Nth allocation from now fail (1 = the next one); 0 disables. Tests only. */
void st_alloc_fail_nth(long n);

/* Overflow-checked size arithmetic: return 0 on success, 1 on overflow. */
int st_mul_size(size_t a, size_t b, size_t *out);
int st_add_size(size_t a, size_t b, size_t *out);

/* ---- arena: one allocation, carved up by a plan ---- */
struct st_arena {
    uint8_t *base;
    size_t size;
    size_t used;
};
/* Allocate `size` bytes (zeroed), aligned to 64. */
enum st_status st_arena_init(struct st_arena *a, size_t size, struct st_error *err);
/* Carve n bytes aligned to 64; NULL when the plan was wrong (a bug: the caller asserts). */
void *st_arena_take(struct st_arena *a, size_t n);
void st_arena_free(struct st_arena *a);
/* Bytes needed for n bytes after alignment padding (use when planning). */
size_t st_arena_round(size_t n);

/* ---- logging ---- */
enum st_log_level { ST_LOG_ERROR = 0, ST_LOG_WARN, ST_LOG_INFO, ST_LOG_DEBUG };
void st_log_set_level(enum st_log_level lvl);
enum st_log_level st_log_get_level(void);
void st_log(enum st_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- time ---- */
double st_time_now(void); /* monotonic seconds */

/* ---- random numbers: xoshiro256**, seeded by splitmix64 ---- */
struct st_rng {
    uint64_t s[4];
};
void st_rng_seed(struct st_rng *r, uint64_t seed);
uint64_t st_rng_u64(struct st_rng *r);
double st_rng_uniform(struct st_rng *r);   /* [0, 1) with 53 bits */
float st_rng_uniformf(struct st_rng *r);   /* [0, 1) with 24 bits */
double st_rng_normal(struct st_rng *r);    /* standard normal (Box-Muller) */

/* ---- threads ---- */
/* Set the number of compute threads (OpenMP and BLAS). n <= 0 picks the number of cores. */
void st_threads_set(int n);
int st_threads_get(void);
/* BLAS calls on n threads (OpenBLAS's openblas_set_num_threads; no-op with another BLAS): 1
 * while several threads make BLAS calls of their own (OpenBLAS >= 0.3.7 takes concurrent calls),
 * st_threads_get() to restore. An OpenMP build of OpenBLAS sets OpenMP's count too. */
void st_blas_threads(int n);
/* Threads lent between row groups. train runs a micro-batch's rows in groups, one per thread; a
 * group that ends first leaves its thread idle while the others finish (5-12% of a step on a VM
 * whose two vCPUs run at different speeds). A thread that runs a group joins a share (its
 * kernels then run on 1 thread); between ops it polls, taking the threads that the groups done so
 * far gave back, and runs its next kernels on them too (nested OpenMP teams: the caller allows
 * 2 active levels). Kernels sum every output on one thread in a fixed order, so the results are
 * the same bits whoever helps. st_share_poll is a no-op on a thread outside a share. Every join
 * has its leave on the same thread (a join while joined is a programming error: ST_ASSERT). A
 * thread that runs several groups in turn (an outer team smaller than asked) gives its thread
 * back at each leave and takes a new one at its next join: never more threads than groups run
 * at once. Nested teams are new threads under libgomp (~0.1 ms per region): a few hundred per
 * lent group, small against the idle time they fill. */
struct st_share {
    int spare; /* threads given back and not yet taken (atomic) */
};
void st_share_join(struct st_share *s);
void st_share_leave(void); /* this group is done: its threads go back to the share */
void st_share_poll(void);

/* ---- small checked parsing helpers (no atoi/strtol surprises) ---- */
/* Parse a whole string as a base-10 integer in [lo, hi]. Returns 0 on success. */
int st_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out);
int st_parse_f64(const char *s, double *out);
/* 1 when the environment variable is set to something other than "" or "0" (the switches
 * ST_NO_AVX512, ST_NO_AVX512BF16, ST_NO_NEON, ST_ATTENTION_PORTABLE, ST_NO_LORA_FUSION with which
 * tests and users force a portable path) */
int st_env_flag(const char *name);
/* v formatted with fmt into b (n bytes) as a JSON number, or "null" when v is inf or NaN (JSON has
 * neither: a step whose tokens were all masked has no loss, a diverged run has NaN) */
const char *st_json_num(char *b, size_t n, const char *fmt, double v);
/* The byte offset of the first \u0000 escape (a NUL character) in the JSON text s (n bytes), or
 * -1. cJSON's strings are NUL-terminated, so such a string would silently lose its tail: the
 * readers of records and messages refuse it instead. */
long st_json_nul_escape(const char *s, size_t n);
/* The length (1-4) of the well-formed UTF-8 sequence at p (n > 0 bytes there; RFC 3629: no
 * overlongs, surrogates or code points past U+10FFFF), or 0 when it is not one. */
size_t st_utf8_seq(const unsigned char *p, size_t n);

/* Read a whole file into memory (NUL-terminated; *len excludes the NUL). Caps at max_bytes. */
enum st_status st_read_file(const char *path, size_t max_bytes, char **out, size_t *len,
                            struct st_error *err);

/* Write len bytes to path atomically: a temp file in the same directory, fsync, rename, fsync of
 * the directory. A crash leaves either the old file or the new one, never half of one. */
enum st_status st_write_file_atomic(const char *path, const void *data, size_t len,
                                    struct st_error *err);
/* mkdir -p; fails if path exists and is not a directory. */
enum st_status st_mkdirs(const char *path, struct st_error *err);

#ifdef __cplusplus
}
#endif
#endif
