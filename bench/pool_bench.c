/*
 * pool_bench.c — the cost of one lp_pool_run() round trip: publish a job,
 * wake the workers, run n_tasks empty tasks, wait for every worker. A decode
 * step runs about 8 jobs per layer (q, k, v, attention, o, up, gate, down)
 * plus the head, so this times 8 * n_layers + 1 is the thread pool's share
 * of a generated token.
 *
 *   pool_bench [THREADS] [JOBS] [TASKS]   (defaults 2, 200000, 8)
 *
 * Built by bench/e2e.sh against the static library of a build directory
 * (lp_pool_* are internal, not exported by libloupe.so).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "src/threadpool.h"

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* An empty task that still leaves a trace, so nothing is optimised out. */
static void count_task(void *ctx, int i, int thread) {
    (void)i;
    (void)thread;
    atomic_fetch_add_explicit((atomic_long *)ctx, 1, memory_order_relaxed);
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    long jobs = argc > 2 ? atol(argv[2]) : 200000;
    int tasks = argc > 3 ? atoi(argv[3]) : 8;
    if (threads < 1 || jobs < 1 || tasks < 1) {
        fprintf(stderr, "usage: pool_bench [THREADS] [JOBS] [TASKS]\n");
        return 2;
    }
    lp_pool *p = lp_pool_new(threads);
    if (!p) return 1;
    atomic_long done = 0;
    for (long j = 0; j < 1000; j++) lp_pool_run(p, tasks, count_task, &done); /* warm-up */
    double t0 = now_ns();
    for (long j = 0; j < jobs; j++) lp_pool_run(p, tasks, count_task, &done);
    double ns = (now_ns() - t0) / (double)jobs;
    long expect = (jobs + 1000) * tasks;
    lp_pool_free(p);
    printf("{\"threads\": %d, \"tasks\": %d, \"jobs\": %ld, \"ns_per_job\": %.1f, \"ok\": %s}\n",
           threads, tasks, jobs, ns, atomic_load(&done) == expect ? "true" : "false");
    return atomic_load(&done) == expect ? 0 : 1;
}
