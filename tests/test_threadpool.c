/*
 * test_threadpool.c — the thread pool (src/threadpool.c).
 *
 * Expectations: every task of every job runs exactly once, on a thread
 * index inside the pool; and a worker that keeps arriving late (here it
 * sleeps 2 ms in each task it takes, as a thread whose core is taken by
 * another process would stall) makes the caller run jobs alone, after which
 * prompt workers are used again.
 */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "src/threadpool.h"

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void spin_ns(int64_t ns) {
    const int64_t end = now_ns() + ns;
    while (now_ns() < end) {
    }
}

static void sleep_ns(long ns) {
    struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------ every task once */

#define MAX_TASKS 97

typedef struct {
    atomic_int runs[MAX_TASKS];
    atomic_int bad_thread;
    int n_threads;
} once_ctx;

static void once_task(void *ctx, int i, int thread) {
    once_ctx *c = ctx;
    atomic_fetch_add(&c->runs[i], 1);
    if (thread < 0 || thread >= c->n_threads) atomic_fetch_add(&c->bad_thread, 1);
}

static void test_every_task_once(void **state) {
    (void)state;
    static const int threads[] = {1, 2, 3};
    static const int tasks[] = {1, 2, 3, 7, 64, MAX_TASKS}; /* 2, 3: one per thread */
    for (size_t a = 0; a < sizeof threads / sizeof *threads; a++) {
        lp_pool *p = lp_pool_new(threads[a]);
        assert_non_null(p);
        assert_int_equal(lp_pool_size(p), threads[a]);
        for (int rep = 0; rep < 200; rep++)
            for (size_t b = 0; b < sizeof tasks / sizeof *tasks; b++) {
                once_ctx c = {.n_threads = threads[a]};
                lp_pool_run(p, tasks[b], once_task, &c);
                for (int i = 0; i < tasks[b]; i++) assert_int_equal(atomic_load(&c.runs[i]), 1);
                for (int i = tasks[b]; i < MAX_TASKS; i++) assert_int_equal(atomic_load(&c.runs[i]), 0);
                assert_int_equal(atomic_load(&c.bad_thread), 0);
            }
        lp_pool_free(p);
    }
}

/* ------------------------------------------------------------ late workers */

typedef struct {
    atomic_int slow;         /* workers stall 2 ms per task */
    atomic_int task_us;      /* otherwise a task computes this long */
    atomic_int by_thread[2]; /* tasks run per thread */
} late_ctx;

static void late_task(void *ctx, int i, int thread) {
    late_ctx *c = ctx;
    (void)i;
    atomic_fetch_add(&c->by_thread[thread], 1);
    if (thread != 0 && atomic_load(&c->slow)) sleep_ns(2000000);
    else spin_ns(1000 * (int64_t)atomic_load(&c->task_us));
}

static void test_late_worker_goes_solo(void **state) {
    (void)state;
    lp_pool *p = lp_pool_new(2);
    assert_non_null(p);
    late_ctx c = {0};
    atomic_store(&c.slow, 1);
    atomic_store(&c.task_us, 50);
    /* each job waits ~2 ms for the worker: solo after two windows of 20 ms
     * (under valgrind, which runs one thread at a time, the worker may take
     * no task at all: the caller's own pace then shows it alone is faster) */
    int jobs = 0;
    while (lp_pool_solo_periods(p) == 0 && jobs < 500) lp_pool_run(p, 8, late_task, &c), jobs++;
    assert_int_equal(lp_pool_solo_periods(p), 1);

    /* alone now: 5 jobs of 8 x 50 us, well inside the 50 ms period */
    const int worker_before = atomic_load(&c.by_thread[1]);
    const int64_t t0 = now_ns();
    for (int j = 0; j < 5; j++) lp_pool_run(p, 8, late_task, &c);
    if (now_ns() - t0 < 40000000) assert_int_equal(atomic_load(&c.by_thread[1]), worker_before);

    /* the worker is prompt again: after the period it is used again (tasks
     * of 0.5 ms give it time to join even when threads take turns) */
    atomic_store(&c.slow, 0);
    atomic_store(&c.task_us, 500);
    sleep_ns(900000000L); /* longer than any solo period (0.8 s at most) */
    const int worker_after = atomic_load(&c.by_thread[1]);
    for (int j = 0; j < 100 && atomic_load(&c.by_thread[1]) == worker_after; j++)
        lp_pool_run(p, 8, late_task, &c);
    assert_true(atomic_load(&c.by_thread[1]) > worker_after);
    lp_pool_free(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_task_once),
        cmocka_unit_test(test_late_worker_goes_solo),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
