/*
 * membw.c — sustained read bandwidth from DRAM, the ceiling of decode speed
 * (a decode step reads every weight once). Each thread sums its own slice
 * of a buffer far larger than the last-level cache; the best of R passes.
 *
 *   membw [THREADS] [MIB] [PASSES] [FILE]     (defaults 1, 1024, 5)
 *
 * With FILE the buffer is that file's read-only mapping, advised
 * MADV_HUGEPAGE as loupe maps a model (MIB is ignored; one untimed pass
 * faults it in): the ceiling for a decode reading those very page-cache
 * pages. Under a hypervisor their speed depends on where the guest placed
 * them, and it has been seen 35% below an anonymous buffer's.
 *
 * Built by bench/e2e.sh with -O3 -march=native so the sum is vectorised.
 */
#define _GNU_SOURCE /* MADV_HUGEPAGE */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    const uint64_t *p; /* (n) this thread's slice */
    size_t n;
    pthread_barrier_t *start;
    uint64_t sum;
} membw_slice;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Eight independent sums keep several loads in flight. */
static void *read_slice(void *arg) {
    membw_slice *s = arg;
    pthread_barrier_wait(s->start);
    uint64_t a[8] = {0};
    for (size_t i = 0; i + 8 <= s->n; i += 8)
        for (int k = 0; k < 8; k++) a[k] += s->p[i + k];
    s->sum = a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
    return NULL;
}

/* One pass over the buffer with t threads; returns seconds. */
static double one_pass(const uint64_t *buf, size_t n, int t, uint64_t *sink) {
    pthread_t th[64];
    membw_slice sl[64];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)t + 1);
    size_t per = n / (size_t)t / 8 * 8;
    for (int i = 0; i < t; i++) {
        sl[i] = (membw_slice){buf + (size_t)i * per, per, &start, 0};
        pthread_create(&th[i], NULL, read_slice, &sl[i]);
    }
    pthread_barrier_wait(&start);
    double t0 = now_s();
    for (int i = 0; i < t; i++) pthread_join(th[i], NULL);
    double dt = now_s() - t0;
    for (int i = 0; i < t; i++) *sink += sl[i].sum;
    pthread_barrier_destroy(&start);
    return dt;
}

/* The read-only mapping of path (n words), or NULL with a message. */
static const uint64_t *map_file(const char *path, size_t *n) {
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size < 64 * 1048576) {
        fprintf(stderr, "membw: %s: cannot open, or smaller than 64 MiB\n", path);
        if (fd >= 0) close(fd);
        return NULL;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        fprintf(stderr, "membw: %s: cannot mmap\n", path);
        return NULL;
    }
    madvise(p, (size_t)st.st_size, MADV_HUGEPAGE);
    *n = (size_t)st.st_size / sizeof(uint64_t);
    return p;
}

int main(int argc, char **argv) {
    int t = argc > 1 ? atoi(argv[1]) : 1;
    size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 1024;
    int passes = argc > 3 ? atoi(argv[3]) : 5;
    const char *path = argc > 4 ? argv[4] : NULL;
    if (t < 1 || t > 64 || (mib < 64 && !path) || passes < 1 || argc > 5) {
        fprintf(stderr, "usage: membw [THREADS 1..64] [MIB >= 64] [PASSES] [FILE]\n");
        return 2;
    }
    size_t n = mib * 1048576 / sizeof(uint64_t);
    uint64_t sink = 0;
    const uint64_t *buf;
    uint64_t *own = NULL;
    if (path) {
        if (!(buf = map_file(path, &n))) return 1;
        one_pass(buf, n, t, &sink); /* fault the mapping in */
        mib = n * sizeof(uint64_t) / 1048576;
    } else {
        if (!(buf = own = malloc(n * sizeof *own))) return 1; /* (n) */
        for (size_t i = 0; i < n; i++) own[i] = i; /* fault every page in */
    }
    double best = 1e30;
    for (int r = 0; r < passes; r++) {
        double dt = one_pass(buf, n, t, &sink);
        if (dt < best) best = dt;
    }
    size_t bytes = n / (size_t)t / 8 * 8 * (size_t)t * sizeof(uint64_t);
    printf("{\"threads\": %d, \"mib\": %zu, \"best_gb_s\": %.2f, \"check\": %llu%s%s%s}\n", t,
           mib, bytes / best / 1e9, (unsigned long long)(sink & 0xff), path ? ", \"file\": \"" : "",
           path ? path : "", path ? "\"" : "");
    if (path) munmap((void *)buf, n * sizeof(uint64_t));
    free(own);
    return 0;
}
