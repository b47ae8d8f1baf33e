/*
 * open_time.c — how long loupe_model_open() takes on one model file.
 *
 *   open_time MODEL [N]
 *
 * Prints one line of JSON: the cold open (the file's pages dropped from the
 * page cache first with posix_fadvise, which touches no other file), then
 * the minimum and median of N warm opens (default 10). A .loupe file is
 * mapped, not read, so its open time should not grow with its size.
 *
 * Built by bench/e2e.sh against the library of a build directory:
 *   cc -O2 -Iinclude bench/open_time.c -Lbuild -lloupe -Wl,-rpath,build
 */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "loupe.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Drops the file's clean pages from the page cache; 0 on success. */
static int drop_cache(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    return rc;
}

/* One open + close; returns the open's milliseconds, or -1 on error. */
static double time_open(const char *path) {
    loupe_model_params mp = {.n_threads = 1};
    loupe_model *m;
    double t0 = now_ms();
    if (loupe_model_open(path, &mp, &m) != LOUPE_OK) {
        fprintf(stderr, "open_time: %s\n", loupe_last_error());
        return -1;
    }
    double ms = now_ms() - t0;
    loupe_model_close(m);
    return ms;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: open_time MODEL [N]\n");
        return 2;
    }
    int n = argc == 3 ? atoi(argv[2]) : 10;
    if (n < 1 || n > 1000) {
        fprintf(stderr, "open_time: N must be in [1, 1000]\n");
        return 2;
    }
    int dropped = drop_cache(argv[1]) == 0;
    double cold = time_open(argv[1]);
    if (cold < 0) return 1;
    double *warm = malloc(sizeof(double) * (size_t)n); /* (n) */
    if (!warm) return 1;
    for (int i = 0; i < n; i++)
        if ((warm[i] = time_open(argv[1])) < 0) return 1;
    qsort(warm, (size_t)n, sizeof(double), cmp_double);
    printf("{\"model\": \"%s\", \"cold_ms\": %.3f, \"cold_cache_dropped\": %s, "
           "\"warm_min_ms\": %.3f, \"warm_median_ms\": %.3f, \"warm_n\": %d}\n",
           argv[1], cold, dropped ? "true" : "false", warm[0], warm[n / 2], n);
    free(warm);
    return 0;
}
