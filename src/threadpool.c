/*
 * threadpool.c — persistent pthread workers for the forward pass.
 *
 * Publishing a job. The caller writes the job (task functions, task count
 * and, for a redoable job, a copy of its context) into a slot of atomic
 * words under a sequence number that is odd while it writes and 2 * gen
 * once job gen is out (a seqlock), wakes the workers and takes part itself.
 * A worker copies the slot and checks that the number did not move.
 *
 * Claiming tasks. Tasks are claimed from one word holding the job's
 * generation and the next task, or for a job of one task per thread a bit
 * per task (thread t takes task t first, so that jobs over the same rows in
 * a row keep each thread's rows in its own cache). A claim is a
 * compare-and-swap that fails once a newer job is out, so a worker that was
 * descheduled holding an old copy of the slot takes nothing.
 *
 * Ending a job. A job ends when n_tasks tasks are done, so workers that did
 * not wake in time hold nothing up. Waiting threads spin on an atomic load
 * for about LP_SPIN_NS (a decode step launches many small jobs back to
 * back, and a futex wake-up costs more than the gap between them) and then
 * sleep on a condition variable, so a machine whose cores are busy
 * elsewhere — or an emulator — is not starved by spinning threads. The
 * mutex is taken only when a thread sleeps. A worker that finds itself on
 * the caller's core moves off it (lp_keep_off_caller).
 *
 * Redoable jobs. A worker whose core another process takes is descheduled
 * for milliseconds, most likely in the middle of a task, and a decode step
 * is ~100 jobs. In a redoable job a task computes into its thread's own
 * memory and then commits; a compare-and-swap of the task's state word
 * (generation, OPEN -> COMMITTING) decides who publishes it. Once every
 * task is claimed, when the done count has not moved for twice the caller's
 * own mean task time (at least LP_PATIENCE_MIN_NS), the caller computes the
 * open tasks itself and commits those it wins; the late worker loses its
 * compare-and-swap when it resumes and throws its result away. It computes
 * on its own copy of the context, since the caller's may be gone by then.
 *
 * Going solo. A job that is not redoable waits for a late worker's task.
 * The caller times its own share of each: had it run all n tasks at the
 * pace it ran its own k, the job would have taken (its time) * n / k. When,
 * in two windows of LP_WINDOW_NS of such jobs in a row, that estimate is at
 * least 10% below the time the jobs took, the caller runs them alone for a
 * while (LP_SOLO_MIN_NS, doubling up to LP_SOLO_MAX_NS while it keeps
 * happening), then tries the workers again. Redoable jobs always use the
 * workers. Results do not depend on the number of threads or on which
 * thread ran a task, so all this changes only speed.
 */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LP_SPIN_NS 100000          /* 0.1 ms */
#define LP_PATIENCE_MIN_NS 20000   /* 20 us */
#define LP_WINDOW_NS 20000000LL    /* 20 ms of job time per verdict */
#define LP_SOLO_MIN_NS 50000000LL  /* 50 ms */
#define LP_SOLO_MAX_NS 800000000LL /* 0.8 s */

/* The claim word: the generation above, the next task (or a bit per task)
 * in the low LP_CLAIM_BITS. */
#define LP_CLAIM_BITS 24
#define LP_CLAIM_LOW ((1ull << LP_CLAIM_BITS) - 1)
#define LP_MAX_TASKS ((int)LP_CLAIM_LOW) /* more run on the caller alone */

typedef _Atomic(uint64_t) lp_atomic_u64;

/* A redoable task's state word: generation << 2 | one of these. */
enum { LP_OPEN = 1, LP_COMMITTING = 2, LP_DONE = 3 };

typedef struct {
    lp_task_fn task;   /* compute, for a redoable job */
    lp_task_fn commit; /* after task, or NULL */
    void *ctx;
    size_t ctx_size;   /* > 0: redoable, ctx copied into the slot */
    int n_tasks;
    int affinity;      /* one task per thread: task t on thread t first */
} lp_job;

#define LP_HEAD_WORDS ((sizeof(lp_job) + 7) / 8)
#define LP_SLOT_WORDS (LP_HEAD_WORDS + LP_POOL_CTX_MAX / 8)

/* A worker's copy of the slot: the job, then a redoable job's context. */
typedef struct {
    _Alignas(64) uint64_t w[LP_SLOT_WORDS];
} lp_slot_copy;

struct lp_pool {
    int n_threads; /* including the caller */
    pthread_t *workers;
    pthread_mutex_t mu;
    pthread_cond_t wake;   /* workers wait here for a new job */
    pthread_cond_t done;   /* the caller waits here for the last task */
    lp_atomic_u64 seq;     /* 2 * generation of the job out; odd while one is written */
    lp_atomic_u64 slot[LP_SLOT_WORDS];
    lp_atomic_u64 claim;   /* generation << LP_CLAIM_BITS | next task, or task bits */
    lp_atomic_u64 n_done;  /* tasks of the current job done */
    lp_atomic_u64 *state;  /* (max_redo) state words of a redoable job's tasks */
    int max_redo;
    atomic_int stop;
    atomic_int sleepers;   /* workers waiting on wake */
    atomic_int caller_sleeps; /* the caller waits on done */
    atomic_int caller_cpu; /* where the caller published the job, or -1 */
    atomic_llong stall_ns; /* lp_pool_stall_workers */
    /* the caller's */
    uint64_t gen;           /* of the last job published */
    long redone;            /* tasks run again */
    int64_t window_job_ns;  /* time spent in jobs in the current window */
    int64_t window_solo_ns; /* estimate of them run by the caller alone */
    int64_t solo_until_ns;  /* before this, jobs that are not redoable run alone */
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

static void lp_sleep_ns(int64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    nanosleep(&ts, NULL);
}

/* Spins until *word != seen or about ns pass; returns the last value. */
static uint64_t lp_spin_while_equal(lp_atomic_u64 *word, uint64_t seen, int64_t ns) {
    int64_t deadline = 0;
    for (unsigned i = 1;; i++) {
        uint64_t v = atomic_load_explicit(word, memory_order_acquire);
        if (v != seen) return v;
        if ((i & 255) == 0) { /* look at the clock now and then */
            int64_t now = lp_now_ns();
            if (!deadline) deadline = now + ns;
            else if (now > deadline) return v;
        }
    }
}

/* ------------------------------------------------------------ placement */

/* The CPU the calling thread runs on, or -1. */
static int lp_cpu(void) {
#ifdef __linux__
    return sched_getcpu();
#else
    return -1;
#endif
}

/* A worker the scheduler has put on the caller's core (it wakes workers
 * there when no core is idle, e.g. when another process holds the other
 * one) only takes turns with the caller, and as both stay runnable the
 * load balancer leaves them so. Such a worker takes itself off that core:
 * its allowed CPUs become those it started with less the caller's. On an
 * idle machine the scheduler keeps them apart and this never happens. */
typedef struct {
#ifdef __linux__
    cpu_set_t allowed; /* at start */
#endif
    int ok;            /* allowed is known and has another CPU */
    int avoided;       /* the CPU left out now, or -1 */
} lp_placement;

static void lp_placement_init(lp_placement *pl) {
    pl->ok = 0;
    pl->avoided = -1;
#ifdef __linux__
    pl->ok = sched_getaffinity(0, sizeof pl->allowed, &pl->allowed) == 0 &&
             CPU_COUNT(&pl->allowed) > 1;
#endif
}

static void lp_keep_off_caller(lp_pool *p, lp_placement *pl) {
#ifdef __linux__
    const int caller = atomic_load_explicit(&p->caller_cpu, memory_order_relaxed);
    if (!pl->ok || caller < 0 || caller >= CPU_SETSIZE || caller == pl->avoided ||
        lp_cpu() != caller || !CPU_ISSET(caller, &pl->allowed))
        return;
    cpu_set_t set = pl->allowed;
    CPU_CLR(caller, &set);
    if (sched_setaffinity(0, sizeof set, &set) == 0) pl->avoided = caller;
    else pl->ok = 0; /* not allowed here: leave placement to the scheduler */
#else
    (void)p;
    (void)pl;
#endif
}

/* ------------------------------------------------------------ slot */

/* Writes job into the slot as generation ++p->gen and wakes the workers. */
static void lp_publish(lp_pool *p, const lp_job *job) {
    const uint64_t gen = ++p->gen;
    const size_t n_words = LP_HEAD_WORDS + (job->ctx_size + 7) / 8;
    uint64_t w[LP_SLOT_WORDS];
    memset(w, 0, n_words * sizeof *w); /* padding, and the context's last word */
    memcpy(w, job, sizeof *job);
    if (job->ctx_size) memcpy(w + LP_HEAD_WORDS, job->ctx, job->ctx_size);
    atomic_store_explicit(&p->seq, 2 * gen - 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    for (size_t i = 0; i < n_words; i++) atomic_store_explicit(&p->slot[i], w[i], memory_order_relaxed);
    atomic_store_explicit(&p->claim, gen << LP_CLAIM_BITS, memory_order_relaxed);
    atomic_store_explicit(&p->n_done, 0, memory_order_relaxed);
    if (job->ctx_size)
        for (int i = 0; i < job->n_tasks; i++)
            atomic_store_explicit(&p->state[i], gen << 2 | LP_OPEN, memory_order_relaxed);
    atomic_store_explicit(&p->caller_cpu, lp_cpu(), memory_order_relaxed);
    atomic_store(&p->seq, 2 * gen); /* seq_cst, against lp_wait_job's sleepers */
    if (atomic_load(&p->sleepers)) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
}

/* Copies the slot of sequence number s (read with acquire) into c: 0 if
 * the caller has begun writing another job meanwhile. */
static int lp_read_slot(lp_pool *p, uint64_t s, lp_slot_copy *c) {
    for (size_t i = 0; i < LP_HEAD_WORDS; i++)
        c->w[i] = atomic_load_explicit(&p->slot[i], memory_order_relaxed);
    lp_job job;
    memcpy(&job, c->w, sizeof job);
    const size_t ctx_words = job.ctx_size <= LP_POOL_CTX_MAX ? (job.ctx_size + 7) / 8 : 0;
    for (size_t i = 0; i < ctx_words; i++)
        c->w[LP_HEAD_WORDS + i] = atomic_load_explicit(&p->slot[LP_HEAD_WORDS + i], memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(&p->seq, memory_order_relaxed) == s;
}

/* ------------------------------------------------------------ tasks */

/* The next task of job gen for this thread, or -1 when none is left or a
 * newer job is out. *cursor: tasks of an affinity job already passed. */
static int lp_claim(lp_pool *p, const lp_job *job, uint64_t gen, int thread, int *cursor) {
    const uint64_t tag = gen << LP_CLAIM_BITS;
    uint64_t c = atomic_load_explicit(&p->claim, memory_order_relaxed);
    for (;;) {
        if ((c & ~LP_CLAIM_LOW) != tag) return -1;
        const uint64_t low = c & LP_CLAIM_LOW;
        int i;
        uint64_t next;
        if (job->affinity) {
            const int n = job->n_tasks;
            while (*cursor < n && (low >> ((thread + *cursor) % n) & 1)) ++*cursor;
            if (*cursor >= n) return -1;
            i = (thread + *cursor) % n;
            next = c | 1ull << i;
        } else {
            if (low >= (uint64_t)job->n_tasks) return -1;
            i = (int)low;
            next = c + 1;
        }
        if (atomic_compare_exchange_weak_explicit(&p->claim, &c, next, memory_order_acq_rel,
                                                  memory_order_relaxed))
            return i;
    }
}

/* Counts a task done; the worker that finishes the job wakes the caller if
 * it sleeps. */
static void lp_task_done(lp_pool *p, const lp_job *job, int thread) {
    const uint64_t done = atomic_fetch_add(&p->n_done, 1) + 1;
    if (thread != 0 && done == (uint64_t)job->n_tasks && atomic_load(&p->caller_sleeps)) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_signal(&p->done);
        pthread_mutex_unlock(&p->mu);
    }
}

/* Commits task i of redoable job gen from this thread's memory if no one
 * has yet; returns whether it did. */
static int lp_commit(lp_pool *p, const lp_job *job, uint64_t gen, int i, int thread) {
    uint64_t open = gen << 2 | LP_OPEN;
    if (!atomic_compare_exchange_strong_explicit(&p->state[i], &open, gen << 2 | LP_COMMITTING,
                                                 memory_order_acq_rel, memory_order_relaxed))
        return 0;
    job->commit(job->ctx, i, thread);
    atomic_store_explicit(&p->state[i], gen << 2 | LP_DONE, memory_order_release);
    return 1;
}

/* Runs tasks of job gen until none is left; returns how many it ran. ctx:
 * the job's own, or (a worker in a redoable job) its copy. */
static int lp_pool_work(lp_pool *p, const lp_job *job, void *ctx, uint64_t gen, int thread) {
    const int64_t stall =
        thread && job->ctx_size ? atomic_load_explicit(&p->stall_ns, memory_order_relaxed) : 0;
    int n = 0, cursor = 0;
    for (int i; (i = lp_claim(p, job, gen, thread, &cursor)) >= 0; n++) {
        if (stall) lp_sleep_ns(stall);
        job->task(ctx, i, thread);
        if (job->ctx_size) {
            if (!lp_commit(p, job, gen, i, thread)) continue;
        } else if (job->commit) {
            job->commit(ctx, i, thread);
        }
        lp_task_done(p, job, thread);
    }
    return n;
}

/* ------------------------------------------------------------ workers */

/* Spins, then sleeps, until the sequence number differs from seen (or the
 * pool stops); returns it. */
static uint64_t lp_wait_job(lp_pool *p, uint64_t seen) {
    uint64_t s = lp_spin_while_equal(&p->seq, seen, LP_SPIN_NS);
    if (s != seen) return s;
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->sleepers, 1); /* seq_cst, against lp_publish's seq */
    while ((s = atomic_load(&p->seq)) == seen && !atomic_load_explicit(&p->stop, memory_order_relaxed))
        pthread_cond_wait(&p->wake, &p->mu);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->mu);
    return s;
}

static void *lp_worker_main(void *arg) {
    lp_worker_arg *wa = arg;
    lp_pool *p = wa->pool;
    const int thread = wa->thread;
    free(wa);
    lp_slot_copy copy;
    lp_job job;
    lp_placement pl;
    lp_placement_init(&pl);
    for (uint64_t seen = 0;;) {
        const uint64_t s = lp_wait_job(p, seen);
        if (atomic_load_explicit(&p->stop, memory_order_relaxed)) return NULL;
        seen = s;
        if ((s & 1) || !lp_read_slot(p, s, &copy)) continue; /* being written: wait for it */
        memcpy(&job, copy.w, sizeof job);
        lp_keep_off_caller(p, &pl);
        lp_pool_work(p, &job, job.ctx_size ? (void *)(copy.w + LP_HEAD_WORDS) : job.ctx, s / 2,
                     thread);
    }
}

lp_pool *lp_pool_new(int n_threads) {
    if (n_threads <= 0) n_threads = lp_ncpu();
    lp_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads;
    p->max_redo = 16 * n_threads < 256 ? 256 : 16 * n_threads;
    p->state = calloc((size_t)p->max_redo, sizeof *p->state);
    if (!p->state) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->seq, 0);
    for (size_t i = 0; i < LP_SLOT_WORDS; i++) atomic_init(&p->slot[i], 0);
    atomic_init(&p->claim, 0);
    atomic_init(&p->n_done, 0);
    for (int i = 0; i < p->max_redo; i++) atomic_init(&p->state[i], 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->caller_sleeps, 0);
    atomic_init(&p->caller_cpu, -1);
    atomic_init(&p->stall_ns, 0);
    p->solo_ns = LP_SOLO_MIN_NS;
    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (!p->workers) {
            free(p->state);
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
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->seq, 2); /* wakes spinning workers; sleeping ones: */
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->n_threads; t++) pthread_join(p->workers[t - 1], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->workers);
    free(p->state);
    free(p);
}

int lp_pool_size(const lp_pool *p) { return p ? p->n_threads : 1; }

int lp_pool_solo_periods(const lp_pool *p) { return p ? p->solo_periods : 0; }

long lp_pool_redone(const lp_pool *p) { return p ? p->redone : 0; }

void lp_pool_stall_workers(lp_pool *p, int64_t ns) {
    if (p) atomic_store(&p->stall_ns, ns > 0 ? ns : 0);
}

/* ------------------------------------------------------------ caller */

/* Books one job of n_tasks that took job_ns, the caller having run k of
 * them in own_ns. Decides at the end of each window whether to go solo. */
static void lp_pool_observe(lp_pool *p, int n_tasks, int64_t job_ns, int64_t own_ns, int k,
                            int64_t t_end) {
    const int64_t solo = k ? own_ns * n_tasks / k : job_ns * n_tasks; /* none run: no evidence */
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

/* The caller computes the tasks of redoable job gen still open (claimed by
 * a worker that has not committed them) and commits those it wins. */
static void lp_redo_open(lp_pool *p, const lp_job *job, uint64_t gen) {
    const uint64_t open = gen << 2 | LP_OPEN;
    for (int i = 0; i < job->n_tasks; i++) {
        if (atomic_load_explicit(&p->state[i], memory_order_acquire) != open) continue;
        job->task(job->ctx, i, 0);
        p->redone++;
        if (lp_commit(p, job, gen, i, 0)) lp_task_done(p, job, 0);
    }
}

/* Waits until every task of job gen is done; redoes open ones after
 * patience_ns without progress if the job is redoable. */
static void lp_wait_done(lp_pool *p, const lp_job *job, uint64_t gen, int64_t patience_ns) {
    const uint64_t n = (uint64_t)job->n_tasks;
    int may_redo = job->ctx_size > 0;
    for (uint64_t d; (d = atomic_load_explicit(&p->n_done, memory_order_acquire)) < n;) {
        if (lp_spin_while_equal(&p->n_done, d, may_redo ? patience_ns : LP_SPIN_NS) != d) continue;
        if (may_redo) { /* every task is claimed, and the count stands still */
            lp_redo_open(p, job, gen);
            may_redo = 0;
            continue;
        }
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->caller_sleeps, 1); /* seq_cst, against lp_task_done's count */
        while (atomic_load(&p->n_done) < n) pthread_cond_wait(&p->done, &p->mu);
        atomic_store(&p->caller_sleeps, 0);
        pthread_mutex_unlock(&p->mu);
    }
}

/* Runs job on the pool; the caller takes part. */
static void lp_run_job(lp_pool *p, lp_job *job, int64_t t0) {
    job->affinity = job->n_tasks == p->n_threads && job->n_tasks <= LP_CLAIM_BITS;
    lp_publish(p, job);
    const int k = lp_pool_work(p, job, job->ctx, p->gen, 0);
    const int64_t own_ns = lp_now_ns() - t0;
    int64_t patience = k ? 2 * own_ns / k : LP_SPIN_NS;
    if (patience < LP_PATIENCE_MIN_NS) patience = LP_PATIENCE_MIN_NS;
    lp_wait_done(p, job, p->gen, patience);
    if (!job->ctx_size) {
        const int64_t t_end = lp_now_ns();
        lp_pool_observe(p, job->n_tasks, t_end - t0, own_ns, k, t_end);
    }
}

void lp_pool_run(lp_pool *p, int n_tasks, lp_task_fn task, void *ctx) {
    if (n_tasks <= 0) return;
    const int64_t t0 = p && p->n_threads > 1 && n_tasks > 1 ? lp_now_ns() : 0;
    if (!p || p->n_threads == 1 || n_tasks == 1 || n_tasks > LP_MAX_TASKS || t0 < p->solo_until_ns) {
        for (int i = 0; i < n_tasks; i++) task(ctx, i, 0);
        return;
    }
    lp_job job = {task, NULL, ctx, 0, n_tasks, 0};
    lp_run_job(p, &job, t0);
}

void lp_pool_run_redo(lp_pool *p, int n_tasks, lp_task_fn compute, lp_task_fn commit, void *ctx,
                      size_t ctx_size) {
    if (n_tasks <= 0) return;
    const int redoable = p && n_tasks <= p->max_redo && ctx_size > 0 && ctx_size <= LP_POOL_CTX_MAX;
    const int64_t t0 = p && p->n_threads > 1 && n_tasks > 1 ? lp_now_ns() : 0;
    if (!p || p->n_threads == 1 || n_tasks == 1 || n_tasks > LP_MAX_TASKS ||
        (!redoable && t0 < p->solo_until_ns)) {
        for (int i = 0; i < n_tasks; i++) compute(ctx, i, 0), commit(ctx, i, 0);
        return;
    }
    lp_job job = {compute, commit, ctx, redoable ? ctx_size : 0, n_tasks, 0};
    lp_run_job(p, &job, t0);
}
