/*
 * tensorset.c — the tensor set every reader fills: growth, rollback on a
 * reader's error, a hashed name index, lookups, dtype facts.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../error.h"
#include "tensors.h"

/* ------------------------------------------------------------ dtypes */

const char *lp_dtype_name(lp_dtype t) {
    switch (t) {
    case LP_F32: return "F32";
    case LP_F16: return "F16";
    case LP_BF16: return "BF16";
    case LP_Q8: return "Q8_0";
    case LP_Q8P: return "Q8_0 (packed)";
    }
    return "?";
}

uint64_t lp_dtype_bytes(lp_dtype t, uint64_t n) {
    switch (t) {
    case LP_F32: return n * 4;
    case LP_F16:
    case LP_BF16: return n * 2;
    case LP_Q8: return n / LP_QK8 * sizeof(lp_block_q8);
    case LP_Q8P: return n / LP_QK8 * sizeof(lp_block_q8); /* without the padding rows */
    }
    return 0;
}

/* ------------------------------------------------------------ growth */

/* Grows *arr (of *cap elements of size el) to hold need elements. */
static int lp_grow(void **arr, int *cap, int need, size_t el) {
    if (need <= *cap) return 0;
    int nc = *cap ? *cap * 2 : 16;
    while (nc < need) nc *= 2;
    void *p = realloc(*arr, (size_t)nc * el);
    if (!p) return -1;
    *arr = p;
    *cap = nc;
    return 0;
}

/* The set keeps no capacities: arrays grow to the next power of two. */
static int lp_cap_of(int n) {
    int c = 0;
    if (n > 0) for (c = 16; c < n; c *= 2) {}
    return c;
}

int lp_tensor_set_add_map(lp_tensor_set *ts, lp_mapping *map) {
    int cap = lp_cap_of(ts->n_maps);
    void *arr = ts->maps;
    if (lp_grow(&arr, &cap, ts->n_maps + 1, sizeof *ts->maps)) return -1;
    ts->maps = arr;
    ts->maps[ts->n_maps] = *map;
    memset(map, 0, sizeof *map);
    return ts->n_maps++;
}

lp_tensor_info *lp_tensor_set_add(lp_tensor_set *ts, const char *name, size_t len) {
    int cap = lp_cap_of(ts->n);
    void *arr = ts->t;
    if (lp_grow(&arr, &cap, ts->n + 1, sizeof *ts->t)) return NULL;
    ts->t = arr;
    char *copy = malloc(len + 1);
    if (!copy) return NULL;
    memcpy(copy, name, len);
    copy[len] = 0;
    lp_tensor_info *t = &ts->t[ts->n++];
    memset(t, 0, sizeof *t);
    t->name = copy;
    return t;
}

static void lp_meta_free_one(lp_meta *m) {
    free(m->key);
    free((void *)m->arr_strs);
    free(m->arr_lens);
}

void lp_tensor_set_truncate(lp_tensor_set *ts, int n, int n_maps, int n_meta) {
    for (int i = n; i < ts->n; i++) free(ts->t[i].name);
    if (ts->n > n) ts->n = n;
    if (ts->hash_n > n) ts->hash_n = -1; /* index now stale */
    for (int i = n_maps; i < ts->n_maps; i++) lp_unmap_file(&ts->maps[i]);
    if (ts->n_maps > n_maps) ts->n_maps = n_maps;
    for (int i = n_meta; i < ts->n_meta; i++) lp_meta_free_one(&ts->meta[i]);
    if (ts->n_meta > n_meta) ts->n_meta = n_meta;
}

void lp_tensor_set_free(lp_tensor_set *ts) {
    if (!ts) return;
    lp_tensor_set_truncate(ts, 0, 0, 0);
    free(ts->t);
    free(ts->maps);
    free(ts->meta);
    free(ts->hash);
    memset(ts, 0, sizeof *ts);
}

/* ------------------------------------------------------------ index */

static uint32_t lp_hash_name(const char *s) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

loupe_status lp_tensor_set_index(lp_tensor_set *ts) {
    int cap = 16;
    while (cap < 2 * ts->n) cap *= 2;
    int *hash = calloc((size_t)cap, sizeof *hash); /* (cap) */
    if (!hash) return lp_fail(LOUPE_ERR_NOMEM, "out of memory indexing %d tensors", ts->n);
    for (int i = 0; i < ts->n; i++) {
        uint32_t j = lp_hash_name(ts->t[i].name) & (uint32_t)(cap - 1);
        while (hash[j]) {
            const lp_tensor_info *o = &ts->t[hash[j] - 1];
            if (strcmp(o->name, ts->t[i].name) == 0) {
                free(hash);
                return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s appears twice (also in %s)",
                               ts->t[i].file ? ts->t[i].file : "?", ts->t[i].name,
                               o->file ? o->file : "?");
            }
            j = (j + 1) & (uint32_t)(cap - 1);
        }
        hash[j] = i + 1;
    }
    free(ts->hash);
    ts->hash = hash;
    ts->hash_cap = cap;
    ts->hash_n = ts->n;
    return LOUPE_OK;
}

const lp_tensor_info *lp_tensor_find(const lp_tensor_set *ts, const char *name) {
    if (!ts || !name) return NULL;
    if (ts->hash && ts->hash_n == ts->n) {
        uint32_t mask = (uint32_t)(ts->hash_cap - 1);
        for (uint32_t j = lp_hash_name(name) & mask; ts->hash[j]; j = (j + 1) & mask) {
            const lp_tensor_info *t = &ts->t[ts->hash[j] - 1];
            if (strcmp(t->name, name) == 0) return t;
        }
        return NULL;
    }
    for (int i = 0; i < ts->n; i++)
        if (strcmp(ts->t[i].name, name) == 0) return &ts->t[i];
    return NULL;
}

const lp_meta *lp_meta_find(const lp_tensor_set *ts, const char *key) {
    if (!ts || !key) return NULL;
    for (int i = 0; i < ts->n_meta; i++)
        if (strcmp(ts->meta[i].key, key) == 0) return &ts->meta[i];
    return NULL;
}

/* ------------------------------------------------------------ residency */

void lp_tensor_set_release(const lp_tensor_set *ts, const void *p, uint64_t n) {
    if (!ts || !p || n == 0) return;
    const uint8_t *lo = p, *hi = lo + n;
    for (int i = 0; i < ts->n_maps; i++) {
        const lp_mapping *m = &ts->maps[i];
        if (!m->data || lo < m->data || hi > m->data + m->size) continue;
        uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
        uintptr_t a = ((uintptr_t)lo + page - 1) / page * page; /* first whole page */
        uintptr_t b = (uintptr_t)hi / page * page;              /* end of the last */
        /* read-only private file pages: dropping them loses nothing */
        if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
        return;
    }
}
