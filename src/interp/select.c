/*
 * select.c — parsing layer/head selections: "0,2-4", "all", "1.0,3.2-3".
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "interp.h"

/* Reads a non-negative decimal at *p (no sign), advancing *p. */
static int lp_read_uint(const char **p, long *v) {
    const char *s = *p;
    if (!isdigit((unsigned char)*s)) return 0;
    long x = 0;
    while (isdigit((unsigned char)*s)) {
        x = x * 10 + (*s - '0');
        if (x > 100000000) return 0;
        s++;
    }
    *p = s;
    *v = x;
    return 1;
}

static int lp_is_all(const char *spec) {
    return !spec || !*spec || strcmp(spec, "all") == 0 || strcmp(spec, "*") == 0;
}

/* Parses "A" or "A-B" at *p into [lo, hi]; 0 on a syntax error. */
static int lp_read_range(const char **p, long *lo, long *hi) {
    while (**p == ' ') (*p)++;
    if (!lp_read_uint(p, lo)) return 0;
    *hi = *lo;
    if (**p == '-') {
        (*p)++;
        if (!lp_read_uint(p, hi)) return 0;
    }
    while (**p == ' ') (*p)++;
    return 1;
}

loupe_status loupe_parse_index_set(const char *spec, int n, int *out, int *n_out) {
    if (!out || !n_out || n < 0) return lp_fail(LOUPE_ERR_ARG, "loupe_parse_index_set: bad arguments");
    *n_out = 0;
    if (lp_is_all(spec)) {
        for (int i = 0; i < n; i++) out[i] = i;
        *n_out = n;
        return LOUPE_OK;
    }
    unsigned char *seen = calloc((size_t)n + 1, 1);
    if (!seen) return lp_fail(LOUPE_ERR_NOMEM, "out of memory parsing '%s'", spec);
    const char *p = spec;
    for (;;) {
        long lo, hi;
        const char *item = p;
        if (!lp_read_range(&p, &lo, &hi) || (*p != ',' && *p != 0)) {
            free(seen);
            return lp_fail(LOUPE_ERR_ARG,
                           "selection '%s': cannot read '%s' (expected e.g. 0,2-4 or all)",
                           spec, item);
        }
        if (lo > hi || hi >= n) {
            free(seen);
            return lp_fail(LOUPE_ERR_ARG, "selection '%s': %ld-%ld is outside 0-%d", spec, lo,
                           hi, n - 1);
        }
        for (long i = lo; i <= hi; i++) seen[i] = 1;
        if (*p == 0) break;
        p++;
    }
    int k = 0;
    for (int i = 0; i < n; i++)
        if (seen[i]) out[k++] = i;
    free(seen);
    *n_out = k;
    return LOUPE_OK;
}

loupe_status loupe_parse_heads(const char *spec, int n_layers, int n_heads, int **pairs,
                               int *n_out) {
    if (!spec || !pairs || !n_out || n_layers <= 0 || n_heads <= 0)
        return lp_fail(LOUPE_ERR_ARG, "loupe_parse_heads: bad arguments");
    *pairs = NULL;
    *n_out = 0;
    size_t cap = (size_t)n_layers * n_heads;
    unsigned char *seen = calloc(cap, 1);
    if (!seen) return lp_fail(LOUPE_ERR_NOMEM, "out of memory parsing '%s'", spec);
    const char *p = spec;
    for (;;) {
        long layer, lo, hi;
        const char *item = p;
        while (*p == ' ') p++;
        int ok = lp_read_uint(&p, &layer) && *p == '.';
        if (ok) {
            p++;
            ok = lp_read_range(&p, &lo, &hi) && (*p == ',' || *p == 0);
        }
        if (!ok) {
            free(seen);
            return lp_fail(LOUPE_ERR_ARG,
                           "heads '%s': cannot read '%s' (expected LAYER.HEAD items such as "
                           "0.1,2.0-3)", spec, item);
        }
        if (layer >= n_layers || lo > hi || hi >= n_heads) {
            free(seen);
            return lp_fail(LOUPE_ERR_ARG,
                           "heads '%s': %ld.%ld-%ld is outside the model's %d layers x %d heads",
                           spec, layer, lo, hi, n_layers, n_heads);
        }
        for (long h = lo; h <= hi; h++) seen[layer * n_heads + h] = 1;
        if (*p == 0) break;
        p++;
    }
    int k = 0;
    for (size_t i = 0; i < cap; i++) k += seen[i];
    int *out = malloc((size_t)(k ? k : 1) * 2 * sizeof(int));
    if (!out) {
        free(seen);
        return lp_fail(LOUPE_ERR_NOMEM, "out of memory parsing '%s'", spec);
    }
    k = 0;
    for (size_t i = 0; i < cap; i++) {
        if (!seen[i]) continue;
        out[2 * k] = (int)(i / (size_t)n_heads);
        out[2 * k + 1] = (int)(i % (size_t)n_heads);
        k++;
    }
    free(seen);
    *pairs = out;
    *n_out = k;
    return LOUPE_OK;
}
