/*
 * threadpool.c — persistent pthread workers for the forward pass.
 *
 * lp_pool_run() publishes a job (a new generation number), wakes the
 * workers, and takes part itself. Tasks are claimed from an atomic counter,
 * so uneven tasks balance. Waiting threads spin on an atomic load for about
 * LP_SPIN_NS (a decode step launches many small jobs back to back, and a
 * futex wake-up costs more than the gap between them) and then sleep on a
 * condition variable, so a machine whose cores are busy elsewhere — or an
 * emulator — is not starved by spinning threads. No system call is made
 * while spinning.
 *
 * Jobs end when the last thread finishes, so one worker whose core is
 * taken by another process holds up every job of a decode step (there are
 * ~100 a token). Every thread therefore times its share of each job: had
 * the fastest thread run all n tasks at the pace it ran its own k, the job
 * would have taken (its time) * n / k. When, in two windows of
 * LP_WINDOW_NS of jobs in a row, that estimate is at least 10% below the
 * time the jobs took, the caller runs the jobs alone for a while
 * (LP_SOLO_MIN_NS, doubling up to LP_SOLO_MAX_NS while it keeps
 * happening), then tries the workers again. With the workers asleep the
 * kernel moves the caller to a free core if it was on the busy one. On an
 * idle machine each thread runs about 1/n_threads of the tasks and the
 * estimate is about n_threads times the actual. Results do not depend on
 * the number of threads, so this changes only speed.
 */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define LP_SPIN_NS 100000 /* 0.1 ms */
#define LP_WINDOW_NS 20000000LL    /* 20 ms of job time per verdict */
#define LP_SOLO_MIN_NS 50000000LL  /* 50 ms */
#define LP_SOLO_MAX_NS 800000000LL /* 0.8 s */

/* One thread's share of the current job. */
typedef struct {
    int64_t ns; /* from its first task claim to its last task's end */
    int n;      /* tasks it ran */
} lp_share;

struct lp_pool {
    int n_threads; /* including the caller */
    lp_share *shares; /* (n_threads) written by each thread before it reports done */
    pthread_t *workers;
    pthread_mutex_t mu;
    pthread_cond_t wake;   /* workers wait here for a new generation */
    pthread_cond_t done;   /* the caller waits here for completion */
    atomic_uint generation;
    atomic_int next_task;
    atomic_ullong claimed; /* tasks taken, when there is one per thread */
    atomic_uint n_done;    /* workers finished with the current job */
    int stop;
    /* current job */
    lp_task_fn task;
    void *ctx;
    int n_tasks;
    /* late workers (caller only) */
    int64_t window_job_ns;  /* time spent in jobs in the current window */
    int64_t window_solo_ns; /* estimate of them run by the fastest thread alone */
    int64_t solo_until_ns;  /* before this, jobs run on the caller alone */
    int64_t solo_ns;        /* length of the next solo period */
    int slow_windows;       /* consecutive windows the estimate beat */
    int solo_periods;       /* how many have begun (for tests and logs) */
};

typedef struct {
    lp_pool *pool;
    int thread;
} lp_worker_arg;

int lp_ncpu(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static int64_t lp_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spins until *word != seen or LP_SPIN_NS pass; returns the last value. */
static unsigned lp_spin_while_equal(atomic_uint *word, unsigned seen) {
    int64_t deadline = 0;
    for (unsigned i = 1;; i++) {
        unsigned v = atomic_load_explicit(word, memory_order_acquire);
        if (v != seen) return v;
        if ((i & 255) == 0) { /* look at the clock now and then */
            int64_t now = lp_now_ns();
            if (!deadline) deadline = now + LP_SPIN_NS;
            else if (now > deadline) return v;
        }
    }
}

/* Runs tasks of the current job until none is left; books its share. A
 * job of one task per thread is run task t on thread t where it can be
 * (each thread takes its own first, then any left), so that jobs over the
 * same rows in a row keep each thread's rows in its own cache. */
static void lp_pool_work(lp_pool *p, int thread) {
    const int64_t t0 = lp_now_ns();
    int n = 0;
    if (p->n_tasks == p->n_threads && p->n_tasks <= 64) { /* one bit each in claimed */
        for (int k = 0; k < p->n_tasks; k++) {
            const int i = (thread + k) % p->n_tasks;
            const unsigned long long bit = 1ull << i;
            if (atomic_fetch_or_explicit(&p->claimed, bit, memory_order_relaxed) & bit) continue;
            p->task(p->ctx, i, thread);
            n++;
        }
    } else {
        for (;; n++) {
            int i = atomic_fetch_add_explicit(&p->next_task, 1, memory_order_relaxed);
            if (i >= p->n_tasks) break;
            p->task(p->ctx, i, thread);
        }
    }
    p->shares[thread] = (lp_share){n ? lp_now_ns() - t0 : 0, n};
}

static void *lp_worker_main(void *arg) {
    lp_worker_arg *wa = arg;
    lp_pool *p = wa->pool;
    int thread = wa->thread;
    free(wa);
    unsigned seen = 0;
    for (;;) {
        /* spin, then sleep, until a new generation is published */
        unsigned gen = lp_spin_while_equal(&p->generation, seen);
        if (gen == seen) {
            pthread_mutex_lock(&p->mu);
            while ((gen = atomic_load(&p->generation)) == seen && !p->stop)
                pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (p->stop) return NULL;
        seen = gen;
        lp_pool_work(p, thread);
        if (atomic_fetch_add_explicit(&p->n_done, 1, memory_order_acq_rel) + 1 ==
            (unsigned)p->n_threads - 1) {
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
    p->shares = calloc((size_t)n_threads, sizeof *p->shares);
    if (!p->shares) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->generation, 0);
    atomic_init(&p->next_task, 0);
    atomic_init(&p->claimed, 0);
    atomic_init(&p->n_done, 0);
    p->solo_ns = LP_SOLO_MIN_NS;
    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (!p->workers) {
            free(p->shares);
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
    free(p->shares);
    free(p);
}

int lp_pool_size(const lp_pool *p) { return p ? p->n_threads : 1; }

int lp_pool_solo_periods(const lp_pool *p) { return p ? p->solo_periods : 0; }

/* Books one job of n_tasks that took job_ns, from the threads' shares.
 * Decides at the end of each window whether to go solo. */
static void lp_pool_observe(lp_pool *p, int n_tasks, int64_t job_ns, int64_t t_end) {
    int64_t solo = job_ns * n_tasks; /* no share booked: no evidence */
    for (int t = 0; t < p->n_threads; t++) {
        const lp_share sh = p->shares[t];
        if (sh.n && sh.ns * n_tasks / sh.n < solo) solo = sh.ns * n_tasks / sh.n;
    }
    p->window_job_ns += job_ns;
    p->window_solo_ns += solo;
    if (p->window_job_ns < LP_WINDOW_NS) return;
    const int slow = 10 * p->window_solo_ns < 9 * p->window_job_ns;
    p->slow_windows = slow ? p->slow_windows + 1 : 0;
    if (p->slow_windows >= 2) { /* one alone is often a hiccup of the host */
        p->slow_windows = 0;
        p->solo_until_ns = t_end + p->solo_ns;
        p->solo_periods++;
        if (p->solo_ns < LP_SOLO_MAX_NS) p->solo_ns *= 2;
    } else if (!slow) {
        p->solo_ns = LP_SOLO_MIN_NS;
    }
    p->window_job_ns = p->window_solo_ns = 0;
}

void lp_pool_run(lp_pool *p, int n_tasks, lp_task_fn task, void *ctx) {
    if (n_tasks <= 0) return;
    const int64_t t0 = p && p->n_threads > 1 && n_tasks > 1 ? lp_now_ns() : 0;
    if (!p || p->n_threads == 1 || n_tasks == 1 || t0 < p->solo_until_ns) {
        for (int i = 0; i < n_tasks; i++) task(ctx, i, 0);
        return;
    }
    p->task = task;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next_task, 0, memory_order_relaxed);
    atomic_store_explicit(&p->claimed, 0, memory_order_relaxed);
    atomic_store_explicit(&p->n_done, 0, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);

    lp_pool_work(p, 0);

    /* wait for the workers: spin while the count moves, then sleep */
    unsigned all = (unsigned)p->n_threads - 1, done;
    while ((done = atomic_load_explicit(&p->n_done, memory_order_acquire)) < all) {
        if (lp_spin_while_equal(&p->n_done, done) != done) continue;
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->n_done) < all) pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
    const int64_t t_end = lp_now_ns();
    lp_pool_observe(p, n_tasks, t_end - t0, t_end);
}
