/* harness.h: the one test harness. Each test binary defines tests with TEST(name) and lists them
 * in main via RUN(name); a failing CHECK prints file:line and makes the binary exit non-zero. */
#ifndef ST_TEST_HARNESS_H
#define ST_TEST_HARNESS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int st_test_failures;
static int st_test_checks;
static const char *st_test_current = "";

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        st_test_checks++;                                                                     \
        if (!(cond)) {                                                                        \
            st_test_failures++;                                                               \
            fprintf(stderr, "  FAIL %s:%d [%s]: %s\n", __FILE__, __LINE__, st_test_current,   \
                    #cond);                                                                   \
        }                                                                                     \
    } while (0)

#define CHECKF(cond, ...)                                                                     \
    do {                                                                                      \
        st_test_checks++;                                                                     \
        if (!(cond)) {                                                                        \
            st_test_failures++;                                                               \
            fprintf(stderr, "  FAIL %s:%d [%s]: %s: ", __FILE__, __LINE__, st_test_current,   \
                    #cond);                                                                   \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fprintf(stderr, "\n");                                                            \
        }                                                                                     \
    } while (0)

#define TEST(name) static void test_##name(void)
#define RUN(name)                                                                             \
    do {                                                                                      \
        st_test_current = #name;                                                              \
        int before_ = st_test_failures;                                                       \
        test_##name();                                                                        \
        printf("%s %s\n", st_test_failures == before_ ? "ok  " : "FAIL", #name);              \
    } while (0)

#define TEST_SKIP(...)                                                                        \
    do {                                                                                      \
        printf("skip %s: ", st_test_current);                                                 \
        printf(__VA_ARGS__);                                                                  \
        printf("\n");                                                                         \
        return;                                                                               \
    } while (0)

static inline int test_finish(void) {
    printf("%d checks, %d failures\n", st_test_checks, st_test_failures);
    return st_test_failures ? 1 : 0;
}

/* max |a - b| over n floats, and max |b| (for relative tolerances). */
static inline double test_max_abs_diff(const float *a, const float *b, size_t n, double *max_ref) {
    double m = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d) m = d != d ? INFINITY : d;
        if (fabs((double)b[i]) > r) r = fabs((double)b[i]);
    }
    if (max_ref) *max_ref = r;
    return m;
}

/* Directory of the source tree (set by CMake) and the shared data directory. */
#ifndef ST_SOURCE_DIR
#define ST_SOURCE_DIR "."
#endif
static inline const char *test_shared_dir(void) {
    const char *e = getenv("ST_SHARED_DIR");
    return e && *e ? e : ST_SOURCE_DIR "/../shared";
}

#endif
