/*
 * threadpool.h — a small pthread pool. lp_pool_run() splits n_tasks over the
 * workers and the caller, and returns when all are done. Workers spin
 * briefly, then sleep on a condition variable, so a busy machine does not
 * starve them; when workers keep arriving late, the caller runs jobs alone
 * for a while.
 */
#ifndef LOUPE_THREADPOOL_H
#define LOUPE_THREADPOOL_H

typedef struct lp_pool lp_pool;

/* task(ctx, i, thread) runs for i in [0, n_tasks); thread in [0, size). */
typedef void (*lp_task_fn)(void *ctx, int i, int thread);

lp_pool *lp_pool_new(int n_threads); /* n_threads <= 0: all cores */
void lp_pool_free(lp_pool *p);
int lp_pool_size(const lp_pool *p);
/* Times the pool has run its jobs on the caller alone because workers
 * kept arriving late (their cores busy elsewhere); see threadpool.c. */
int lp_pool_solo_periods(const lp_pool *p);
void lp_pool_run(lp_pool *p, int n_tasks, lp_task_fn task, void *ctx);
int lp_ncpu(void);

#endif
