/*
 * threadpool.h — a small pthread pool. lp_pool_run() splits n_tasks over the
 * workers and the caller, and returns when all are done. Workers spin
 * briefly, then sleep on a condition variable, so a busy machine does not
 * starve them. A job ends when its tasks are done, not when every worker
 * has reported: a worker that never woke holds nothing up. A task a worker
 * took but has not finished holds the job up, unless the job is redoable
 * (lp_pool_run_redo): then the caller runs it again itself and the first
 * to finish publishes it. When workers keep holding jobs up, the caller
 * runs the jobs that are not redoable alone for a while.
 */
#ifndef LOUPE_THREADPOOL_H
#define LOUPE_THREADPOOL_H

#include <stddef.h>
#include <stdint.h>

typedef struct lp_pool lp_pool;

/* task(ctx, i, thread) runs for i in [0, n_tasks); thread in [0, size). */
typedef void (*lp_task_fn)(void *ctx, int i, int thread);

/* Largest context a redoable job copies for its workers. */
#define LP_POOL_CTX_MAX 512

lp_pool *lp_pool_new(int n_threads); /* n_threads <= 0: all cores */
void lp_pool_free(lp_pool *p);
int lp_pool_size(const lp_pool *p);
/* Times the pool has run its jobs on the caller alone because workers
 * kept arriving late (their cores busy elsewhere); see threadpool.c. */
int lp_pool_solo_periods(const lp_pool *p);
/* Tasks of redoable jobs the caller has run again because the worker that
 * took them was late. */
long lp_pool_redone(const lp_pool *p);
void lp_pool_run(lp_pool *p, int n_tasks, lp_task_fn task, void *ctx);

/* A job whose tasks may run twice. compute(copy, i, thread) works on a
 * copy of the ctx_size bytes at ctx and may still be running after the job
 * has ended (its worker was descheduled and the caller redid the task), so
 * it writes only memory owned by its thread and reads only memory that
 * outlives the job (what it reads may have changed by then: its result is
 * then thrown away). commit(ctx, i, thread) publishes what compute left in
 * that thread's memory; it runs exactly once per task, on ctx itself, while
 * the job lasts. Jobs of more tasks than the pool can track, or a larger
 * ctx, run like lp_pool_run with compute then commit per task. */
void lp_pool_run_redo(lp_pool *p, int n_tasks, lp_task_fn compute, lp_task_fn commit, void *ctx,
                      size_t ctx_size);

/* For tests: workers sleep this long before each redoable task they
 * compute, as a worker whose core another process holds would stall. */
void lp_pool_stall_workers(lp_pool *p, int64_t ns);

int lp_ncpu(void);

#endif
