/* test_core.c: status messages, allocator counting and fail-the-Nth, arena, rng, parsing, threads
 * lent between row groups (st_share). */
#include "harness.h"
#include "streamtune/core.h"
#ifdef _OPENMP
#include <omp.h>
#endif

TEST(errors) {
    struct st_error err = {0};
    enum st_status rc = st_errorf(&err, ST_ERR_FORMAT, "%s: bad byte at %d", "x.bin", 7);
    CHECK(rc == ST_ERR_FORMAT);
    CHECK(err.code == ST_ERR_FORMAT);
    CHECK(strcmp(err.msg, "x.bin: bad byte at 7") == 0);
    st_error_prefix(&err, "loading: ");
    CHECK(strcmp(err.msg, "loading: x.bin: bad byte at 7") == 0);
    CHECK(strcmp(st_status_str(ST_OK), "ok") == 0);
    CHECK(st_errorf(NULL, ST_ERR_IO, "nothing") == ST_ERR_IO);
}

TEST(alloc_counts) {
    size_t live = st_alloc_live_count(), bytes = st_alloc_live_bytes();
    void *a = st_malloc(100);
    void *b = st_calloc(10, 10);
    CHECK(a && b);
    CHECK(st_alloc_live_count() == live + 2);
    CHECK(st_alloc_live_bytes() == bytes + 200);
    a = st_realloc(a, 1000);
    CHECK(st_alloc_live_bytes() == bytes + 1100);
    st_free(a);
    st_free(b);
    CHECK(st_alloc_live_count() == live);
    CHECK(st_alloc_live_bytes() == bytes);
    CHECK(st_calloc(SIZE_MAX / 2, 4) == NULL); /* overflow refused */
}

TEST(alloc_fail_nth) {
    st_alloc_fail_nth(2);
    void *a = st_malloc(8);
    void *b = st_malloc(8);
    void *c = st_malloc(8);
    CHECK(a != NULL);
    CHECK(b == NULL);
    CHECK(c != NULL);
    st_free(a);
    st_free(c);
    st_alloc_fail_nth(0);
}

TEST(arena) {
    struct st_arena a;
    struct st_error err;
    CHECK(st_arena_init(&a, 1000, &err) == ST_OK);
    float *x = st_arena_take(&a, 10 * sizeof(float));
    float *y = st_arena_take(&a, 100);
    CHECK(x && y);
    CHECK(((uintptr_t)x & 63) == 0 && ((uintptr_t)y & 63) == 0);
    CHECK(x[0] == 0 && x[9] == 0);
    CHECK(st_arena_take(&a, 1000) == NULL);
    st_arena_free(&a);
    st_alloc_fail_nth(1);
    CHECK(st_arena_init(&a, 1000, &err) == ST_ERR_NOMEM);
    st_alloc_fail_nth(0);
}

TEST(rng) {
    struct st_rng r1, r2;
    st_rng_seed(&r1, 42);
    st_rng_seed(&r2, 42);
    for (int i = 0; i < 100; i++) CHECK(st_rng_u64(&r1) == st_rng_u64(&r2));
    double sum = 0, sq = 0;
    int n = 20000;
    for (int i = 0; i < n; i++) {
        double u = st_rng_uniform(&r1);
        CHECK(u >= 0 && u < 1);
        double z = st_rng_normal(&r1);
        sum += z;
        sq += z * z;
    }
    CHECKF(fabs(sum / n) < 0.05, "mean %g", sum / n);
    CHECKF(fabs(sq / n - 1) < 0.05, "var %g", sq / n);
}

TEST(parse) {
    int64_t v;
    double d;
    CHECK(st_parse_i64("123", 0, 1000, &v) == 0 && v == 123);
    CHECK(st_parse_i64("12x", 0, 1000, &v) != 0);
    CHECK(st_parse_i64("", 0, 1000, &v) != 0);
    CHECK(st_parse_i64("2000", 0, 1000, &v) != 0);
    CHECK(st_parse_f64("0.5", &d) == 0 && d == 0.5);
    CHECK(st_parse_f64("nan", &d) != 0);
    CHECK(st_parse_f64("1e", &d) != 0);
}

/* Two groups: the one that ends first gives its thread back; the other, polling, takes it and its
 * next team has 2 threads; when it ends too, both are spare. Polling outside a share changes
 * nothing. */
TEST(share) {
#ifdef _OPENMP
    struct st_share s = {0};
    if (omp_get_thread_limit() < 3 || omp_get_dynamic()) { /* no room for a nested team of 2 */
        printf("  (share: OMP_THREAD_LIMIT < 3 or OMP_DYNAMIC, skipped)\n");
        return;
    }
    int levels = omp_get_max_active_levels(), outer = omp_get_max_threads();
    omp_set_max_active_levels(2);
    int two = 0, before = -1, after = -1, team = -1;
#pragma omp parallel num_threads(2)
    {
#pragma omp single
        two = omp_get_num_threads() == 2;
        st_share_join(&s);
        if (two && omp_get_thread_num() == 1) {
            st_share_leave();
        } else if (two) {
            before = omp_get_max_threads();
            st_share_poll(); /* nothing to take yet, or the thread given back already */
            double t0 = st_time_now(); /* thread 1 leaves at once: 10 s is a broken share */
            while (omp_get_max_threads() < 2 && st_time_now() - t0 < 10) st_share_poll();
            after = omp_get_max_threads();
#pragma omp parallel
            {
#pragma omp master
                team = omp_get_num_threads();
            }
        }
        st_share_leave(); /* every thread that joined (a second leave does nothing) */
    }
    omp_set_max_active_levels(levels);
    if (!two) {
        printf("  (share: no second thread here, skipped)\n");
        return;
    }
    CHECKF(before == 1 && after == 2 && team == 2, "before %d after %d team %d", before, after,
           team);
    CHECKF(s.spare == 2, "spare %d", s.spare);
    st_share_poll();
    CHECK(omp_get_max_threads() == outer);
#endif
}

int main(void) {
    RUN(errors);
    RUN(alloc_counts);
    RUN(alloc_fail_nth);
    RUN(arena);
    RUN(rng);
    RUN(parse);
    RUN(share);
    return test_finish();
}
