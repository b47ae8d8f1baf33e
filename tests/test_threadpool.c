/*
 * test_threadpool.c — the thread pool (src/threadpool.c) and the forward
 * pass's use of it.
 *
 * Expectations: every task of every job runs exactly once, on a thread
 * index inside the pool; a worker that keeps arriving late (here it sleeps
 * 2 ms in each task it takes, as a thread whose core is taken by another
 * process would stall) makes the caller run jobs alone, after which prompt
 * workers are used again. Redoable jobs: every task is committed exactly
 * once with the value its compute step gives, also when late workers make
 * the caller redo their tasks, and workers compute on an intact copy of the
 * context after the caller's is gone; a decode with a late worker gives
 * logits bit-identical to one thread's.
 */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loupe.h"
#include "quant/loupe_format.h"
#include "src/session.h"
#include "src/threadpool.h"
#include "testutil.h"

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

/* ------------------------------------------------------------ redoable jobs */

#define REDO_MAGIC 0x5eed1234u
#define REDO_MAX_TASKS 300
#define REDO_MAX_THREADS 3

/* The context a redoable job's workers copy. priv and commits outlive
 * every job; the struct itself lives in run_redo_job's frame only. */
typedef struct {
    unsigned magic;
    int job;                 /* value of this job */
    int task_us;             /* each compute takes this long */
    float *priv;             /* (REDO_MAX_THREADS, REDO_MAX_TASKS) */
    float *out;              /* (REDO_MAX_TASKS) */
    atomic_int *commits;     /* (REDO_MAX_TASKS) */
    char pad[200];           /* a context of a realistic size */
} redo_ctx;

static atomic_int bad_copies; /* computes that saw a torn or foreign context */

static float redo_value(int job, int i) { return (float)(job * 1000 + i); }

static void redo_compute(void *ctx, int i, int thread) {
    const redo_ctx *c = ctx;
    if (c->magic != REDO_MAGIC || thread < 0 || thread >= REDO_MAX_THREADS) {
        atomic_fetch_add(&bad_copies, 1);
        return;
    }
    spin_ns(1000 * (int64_t)c->task_us);
    c->priv[thread * REDO_MAX_TASKS + i] = redo_value(c->job, i);
}

static void redo_commit(void *ctx, int i, int thread) {
    const redo_ctx *c = ctx;
    c->out[i] = c->priv[thread * REDO_MAX_TASKS + i];
    atomic_fetch_add(&c->commits[i], 1);
}

/* One job whose context dies with this frame; checks its outcome. */
static void run_redo_job(lp_pool *p, int n, int job, int task_us, size_t ctx_size, float *priv,
                         float *out, atomic_int *commits) {
    redo_ctx c = {REDO_MAGIC, job, task_us, priv, out, commits, {0}};
    for (int i = 0; i < REDO_MAX_TASKS; i++) atomic_store(&commits[i], 0), out[i] = -1;
    lp_pool_run_redo(p, n, redo_compute, redo_commit, &c, ctx_size);
    for (int i = 0; i < n; i++) {
        if (atomic_load(&commits[i]) != 1 || out[i] != redo_value(job, i))
            fail_msg("job %d (%d tasks): task %d committed %d times, value %g", job, n, i,
                     atomic_load(&commits[i]), (double)out[i]);
    }
    for (int i = n; i < REDO_MAX_TASKS; i++) assert_int_equal(atomic_load(&commits[i]), 0);
    memset(&c, 0xA5, sizeof c); /* what a worker still holding this frame would see */
}

/* The memory redoable test jobs write; it outlives their pools. */
typedef struct {
    float *priv, *out;
    atomic_int *commits;
} redo_bufs;

static redo_bufs redo_bufs_new(void) {
    redo_bufs b = {calloc(REDO_MAX_THREADS * REDO_MAX_TASKS, sizeof(float)),
                   calloc(REDO_MAX_TASKS, sizeof(float)), calloc(REDO_MAX_TASKS, sizeof(atomic_int))};
    assert_true(b.priv && b.out && b.commits);
    return b;
}

static void redo_bufs_free(redo_bufs *b) {
    free(b->priv);
    free(b->out);
    free(b->commits);
}

static void test_redo_every_task_once(void **state) {
    (void)state;
    redo_bufs rb = redo_bufs_new();
    float *priv = rb.priv, *out = rb.out;
    atomic_int *commits = rb.commits;
    /* 300 tasks with 2 threads: more than the pool tracks (run without
     * redoing); a context over LP_POOL_CTX_MAX likewise */
    static const int tasks[] = {1, 2, 3, 7, 64, 97, REDO_MAX_TASKS};
    int job = 0;
    for (int threads = 1; threads <= REDO_MAX_THREADS; threads++) {
        lp_pool *p = lp_pool_new(threads);
        assert_non_null(p);
        for (int rep = 0; rep < 100; rep++)
            for (size_t b = 0; b < sizeof tasks / sizeof *tasks; b++) {
                run_redo_job(p, tasks[b], ++job, 0, sizeof(redo_ctx), priv, out, commits);
                run_redo_job(p, tasks[b], ++job, 0, LP_POOL_CTX_MAX + 1, priv, out, commits);
            }
        lp_pool_free(p);
    }
    assert_int_equal(atomic_load(&bad_copies), 0);
    redo_bufs_free(&rb);
}

/* Workers stall 1 ms before each task they take: the caller redoes those
 * tasks, each is still committed once with its value, the late workers'
 * computes (after their job has ended, on their copy of a context whose
 * frame is gone) change nothing, and the pool does not go solo. */
static void test_redo_late_worker(void **state) {
    (void)state;
    redo_bufs rb = redo_bufs_new();
    float *priv = rb.priv, *out = rb.out;
    atomic_int *commits = rb.commits;
    for (int threads = 2; threads <= REDO_MAX_THREADS; threads++) {
        lp_pool *p = lp_pool_new(threads);
        assert_non_null(p);
        lp_pool_stall_workers(p, 1000000);
        int job = 0;
        for (int j = 0; j < 400 && (j < 50 || lp_pool_redone(p) == 0); j++)
            run_redo_job(p, 8 + j % 9, ++job, 50, sizeof(redo_ctx), priv, out, commits);
        assert_true(lp_pool_redone(p) > 0);
        assert_int_equal(lp_pool_solo_periods(p), 0);
        lp_pool_stall_workers(p, 0);
        sleep_ns(3000000); /* the late computes end meanwhile */
        for (int j = 0; j < 20; j++)
            run_redo_job(p, 16, ++job, 20, sizeof(redo_ctx), priv, out, commits);
        lp_pool_free(p);
    }
    assert_int_equal(atomic_load(&bad_copies), 0);
    redo_bufs_free(&rb);
}

/* ------------------------------------------------------------ decode */

#define DECODE_PROMPT 256 /* enough keys for threads to take attention heads */
#define DECODE_STEPS 4

/* (DECODE_STEPS, V) logits of decode steps after a prompt, one token at a
 * time, on `threads` threads; workers stalled stall_ns before each redoable
 * task; *redone: tasks the caller ran again. */
static float *decode_logits(loupe_model *m, int threads, int64_t stall_ns, long *redone) {
    const int V = loupe_n_vocab(m);
    loupe_session_params sp = {.n_ctx = 0, .n_threads = threads};
    loupe_session *s = NULL;
    assert_int_equal(loupe_session_new(m, &sp, &s), LOUPE_OK);
    int32_t ids[DECODE_PROMPT + DECODE_STEPS];
    for (int i = 0; i < DECODE_PROMPT + DECODE_STEPS; i++) ids[i] = (i * 37 + 11) % V;
    assert_int_equal(loupe_eval(s, ids, DECODE_PROMPT, NULL, 0), LOUPE_OK);
    lp_pool_stall_workers(s->pool, stall_ns);
    float *lg = malloc(sizeof(float) * DECODE_STEPS * (size_t)V);
    assert_non_null(lg);
    for (int t = 0; t < DECODE_STEPS; t++)
        if (loupe_eval(s, ids + DECODE_PROMPT + t, 1, lg + (size_t)t * V, 0) != LOUPE_OK)
            fail_msg("decode: %s", loupe_last_error());
    *redone = lp_pool_redone(s->pool);
    loupe_session_free(s);
    return lg;
}

/* A one-layer GPT-2 512 wide (tests/ref/synth.py gpt2-wide), as int8 and
 * f16: its decode matmuls and (past 256 keys) attention are redoable pool
 * jobs. With the worker stalled 1 ms per task the caller redoes tasks, and
 * the logits equal one thread's bit for bit. */
static void test_decode_late_worker_exact(void **state) {
    (void)state;
    char dir[512], dst[600];
    snprintf(dir, sizeof dir, "%s", tu_tmp("pool-gpt2-wide"));
    assert_int_equal(tu_system("'%s' '%s' --variant gpt2-wide --out '%s'", tu_python(),
                               tu_src("tests/ref/synth.py"), dir), 0);
    static const lp_dtype types[] = {LP_Q8, LP_F16};
    for (int k = 0; k < 2; k++) {
        snprintf(dst, sizeof dst, "%s-%d.loupe", dir, k);
        lp_quant_opts o;
        lp_quant_opts_default(&o);
        o.type = types[k];
        o.force = 1;
        if (lp_quantize_file(dir, dst, &o, NULL) != LOUPE_OK) fail_msg("quantize: %s", loupe_last_error());
        loupe_model *m = NULL;
        if (loupe_model_open(dst, NULL, &m) != LOUPE_OK) fail_msg("open: %s", loupe_last_error());
        long redone_one = 0, redone_two = 0;
        float *one = decode_logits(m, 1, 0, &redone_one);
        float *two = decode_logits(m, 2, 1000000, &redone_two);
        if (memcmp(one, two, sizeof(float) * DECODE_STEPS * (size_t)loupe_n_vocab(m)))
            fail_msg("%s: decode logits with a late worker differ from one thread's", dst);
        assert_int_equal(redone_one, 0);
        assert_true(redone_two > 0);
        free(one);
        free(two);
        loupe_model_close(m);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_task_once),
        cmocka_unit_test(test_late_worker_goes_solo),
        cmocka_unit_test(test_redo_every_task_once),
        cmocka_unit_test(test_redo_late_worker),
        cmocka_unit_test(test_decode_late_worker_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
