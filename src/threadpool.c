/*
 * threadpool.c — persistent pthread workers for the forward pass.
 *
 * lp_pool_run() publishes a job (a new generation number), wakes the
 * workers, and takes part itself. Tasks are claimed from an atomic counter,
 * so uneven tasks balance. Waiting threads spin for a short while (a decode
 * step launches many small jobs back to back) and then sleep on a condition
 * variable, so a machine whose cores are busy elsewhere is not starved by
 * spinning threads.
 */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define LP_SPIN_ITERS 20000

struct lp_pool {
    int n_threads; /* including the caller */
    pthread_t *workers;
    pthread_mutex_t mu;
    pthread_cond_t wake;   /* workers wait here for a new generation */
    pthread_cond_t done;   /* the caller waits here for completion */
    atomic_uint generation;
    atomic_int next_task;
    atomic_int n_done;     /* threads finished with the current job */
    atomic_int sleepers_done;
    int stop;
    /* current job */
    lp_task_fn task;
    void *ctx;
    int n_tasks;
};

typedef struct {
    lp_pool *pool;
    int thread;
} lp_worker_arg;

int lp_ncpu(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void lp_pool_work(lp_pool *p, int thread) {
    for (;;) {
        int i = atomic_fetch_add_explicit(&p->next_task, 1, memory_order_relaxed);
        if (i >= p->n_tasks) break;
        p->task(p->ctx, i, thread);
    }
}

static void *lp_worker_main(void *arg) {
    lp_worker_arg *wa = arg;
    lp_pool *p = wa->pool;
    int thread = wa->thread;
    free(wa);
    unsigned seen = 0;
    for (;;) {
        /* spin, then sleep, until a new generation is published */
        unsigned gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen) {
            if (++spins < LP_SPIN_ITERS) {
                sched_yield();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->generation) == seen && !p->stop)
                pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
            spins = 0;
            if (p->stop) return NULL;
        }
        if (p->stop) return NULL;
        seen = gen;
        lp_pool_work(p, thread);
        if (atomic_fetch_add_explicit(&p->n_done, 1, memory_order_acq_rel) + 1 ==
            p->n_threads - 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

lp_pool *lp_pool_new(int n_threads) {
    if (n_threads <= 0) n_threads = lp_ncpu();
    lp_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->generation, 0);
    atomic_init(&p->next_task, 0);
    atomic_init(&p->n_done, 0);
    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (!p->workers) {
            free(p);
            return NULL;
        }
        for (int t = 1; t < n_threads; t++) {
            lp_worker_arg *wa = malloc(sizeof *wa);
            if (!wa || (wa->pool = p, wa->thread = t,
                        pthread_create(&p->workers[t - 1], NULL, lp_worker_main, wa)) != 0) {
                free(wa);
                p->n_threads = t; /* run with the workers we have */
                break;
            }
        }
    }
    return p;
}

void lp_pool_free(lp_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    atomic_fetch_add(&p->generation, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->n_threads; t++) pthread_join(p->workers[t - 1], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->workers);
    free(p);
}

int lp_pool_size(const lp_pool *p) { return p ? p->n_threads : 1; }

void lp_pool_run(lp_pool *p, int n_tasks, lp_task_fn task, void *ctx) {
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int i = 0; i < n_tasks; i++) task(ctx, i, 0);
        return;
    }
    p->task = task;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next_task, 0, memory_order_relaxed);
    atomic_store_explicit(&p->n_done, 0, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);

    lp_pool_work(p, 0);

    int spins = 0;
    while (atomic_load_explicit(&p->n_done, memory_order_acquire) < p->n_threads - 1) {
        if (++spins < LP_SPIN_ITERS) {
            sched_yield();
            continue;
        }
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->n_done) < p->n_threads - 1)
            pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}
