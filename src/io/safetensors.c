/*
 * safetensors.c — reads one .safetensors file into a tensor set.
 *
 * Layout: u64 little-endian N | N bytes of JSON header | data section.
 * The header maps each tensor name to {"dtype", "shape", "data_offsets":
 * [begin, end]} with offsets relative to the data section; "__metadata__"
 * holds free-form strings and is ignored. Nothing in the header is trusted:
 * every number is checked against the file before a tensor is recorded.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "tensors.h"

#define LP_ST_MAX_INT 9007199254740992.0 /* 2^53: exact in a JSON double */

/* One tensor's byte range in the data section, for the overlap check. */
typedef struct {
    uint64_t begin, end;
    int tensor; /* index in ts->t */
} lp_st_range;

/* ------------------------------------------------------------ fields */

/* dtype string -> lp_dtype; -1 if loupe cannot read it. */
static int lp_st_dtype(const char *s) {
    if (strcmp(s, "F32") == 0) return LP_F32;
    if (strcmp(s, "F16") == 0) return LP_F16;
    if (strcmp(s, "BF16") == 0) return LP_BF16;
    return -1;
}

/* A JSON number that is a non-negative integer below 2^53. */
static int lp_st_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double d = j->valuedouble;
    if (!(d >= 0 && d < LP_ST_MAX_INT) || d != (double)(uint64_t)d) return -1;
    *out = (uint64_t)d;
    return 0;
}

static void lp_st_shape_str(const lp_tensor_info *t, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < t->n_dims && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "",
                              (long long)t->shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

/* Fills t->shape from a JSON array; *nelem gets the element count. */
static loupe_status lp_st_shape(const char *path, const char *name, const cJSON *shape,
                                lp_tensor_info *t, uint64_t *nelem) {
    if (!cJSON_IsArray(shape))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: \"shape\" is not an array", path, name);
    int nd = cJSON_GetArraySize(shape);
    if (nd > LP_MAX_DIMS)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: tensor %s has %d dimensions (at most %d)",
                       path, name, nd, LP_MAX_DIMS);
    uint64_t n = 1;
    int i = 0, overflow = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, shape) {
        uint64_t v;
        if (lp_st_uint(d, &v))
            return lp_fail(LOUPE_ERR_FORMAT,
                           "%s: tensor %s: shape entry %d is not a non-negative integer", path,
                           name, i);
        t->shape[i++] = (int64_t)v;
        if (__builtin_mul_overflow(n, v, &n)) overflow = 1;
    }
    t->n_dims = nd;
    if (overflow || n > ((uint64_t)1 << 62)) {
        char s[160];
        lp_st_shape_str(t, s, sizeof s);
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: shape %s overflows the element count",
                       path, name, s);
    }
    *nelem = n;
    return LOUPE_OK;
}

/* ------------------------------------------------------------ one entry */

static loupe_status lp_st_entry(const lp_mapping *map, uint64_t base, const cJSON *e,
                                lp_tensor_set *ts, lp_st_range *range) {
    const char *path = map->path, *name = e->string;
    if (!cJSON_IsObject(e))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: header entry is not an object", path,
                       name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: missing or non-string \"dtype\"", path,
                       name);
    int type = lp_st_dtype(dt->valuestring);
    if (type < 0)
        return lp_fail(LOUPE_ERR_UNSUPPORTED,
                       "%s: unsupported dtype %s for tensor %s (loupe reads F32, F16, BF16)",
                       path, dt->valuestring, name);
    lp_tensor_info tmp = {0};
    uint64_t nelem = 0, begin = 0, end = 0;
    LP_TRY(lp_st_shape(path, name, shape, &tmp, &nelem));
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
        lp_st_uint(cJSON_GetArrayItem(offs, 0), &begin) ||
        lp_st_uint(cJSON_GetArrayItem(offs, 1), &end))
        return lp_fail(LOUPE_ERR_FORMAT,
                       "%s: tensor %s: \"data_offsets\" must be two non-negative integers", path,
                       name);
    uint64_t data_size = map->size - base;
    if (begin > end)
        return lp_fail(LOUPE_ERR_FORMAT,
                       "%s: tensor %s: data_offsets [%llu, %llu] end before they begin", path,
                       name, (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return lp_fail(LOUPE_ERR_FORMAT,
                       "%s: tensor %s: data_offsets [%llu, %llu] out of bounds: the data "
                       "section holds %llu bytes (file truncated?)",
                       path, name, (unsigned long long)begin, (unsigned long long)end,
                       (unsigned long long)data_size);
    uint64_t nbytes = lp_dtype_bytes((lp_dtype)type, nelem);
    if (end - begin != nbytes) {
        char s[160];
        lp_st_shape_str(&tmp, s, sizeof s);
        return lp_fail(LOUPE_ERR_FORMAT,
                       "%s: tensor %s: data_offsets span %llu bytes but %s shape %s needs %llu",
                       path, name, (unsigned long long)(end - begin), dt->valuestring, s,
                       (unsigned long long)nbytes);
    }
    lp_tensor_info *t = lp_tensor_set_add(ts, name, strlen(name));
    if (!t) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    char *owned = t->name;
    *t = tmp;
    t->name = owned;
    t->type = (lp_dtype)type;
    t->data = map->data + base + begin;
    t->nbytes = nbytes;
    t->file_offset = base + begin;
    t->file = map->path;
    range->begin = begin;
    range->end = end;
    range->tensor = ts->n - 1;
    return LOUPE_OK;
}

/* ------------------------------------------------------------ overlap */

static int lp_st_cmp_range(const void *a, const void *b) {
    const lp_st_range *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static loupe_status lp_st_check_overlap(const char *path, lp_st_range *r, int n,
                                        const lp_tensor_set *ts) {
    qsort(r, (size_t)n, sizeof *r, lp_st_cmp_range);
    uint64_t end = 0;
    int last = -1;
    for (int i = 0; i < n; i++) {
        if (r[i].begin == r[i].end) continue; /* empty tensors occupy nothing */
        if (last >= 0 && r[i].begin < end)
            return lp_fail(LOUPE_ERR_FORMAT, "%s: tensors %s and %s overlap in the data section",
                           path, ts->t[last].name, ts->t[r[i].tensor].name);
        end = r[i].end;
        last = r[i].tensor;
    }
    return LOUPE_OK;
}

/* ------------------------------------------------------------ file */

static loupe_status lp_st_parse(const lp_mapping *map, lp_tensor_set *ts) {
    const char *path = map->path;
    if (map->size < 8)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: file too small (%zu bytes) for a safetensors header",
                       path, map->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | map->data[i];
    if (hlen > map->size - 8)
        return lp_fail(LOUPE_ERR_FORMAT,
                       "%s: header length %llu goes beyond the end of the file (%zu bytes)", path,
                       (unsigned long long)hlen, map->size);
    cJSON *root = cJSON_ParseWithLength((const char *)map->data + 8, (size_t)hlen);
    if (!root)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: header is not valid JSON (%llu bytes)", path,
                       (unsigned long long)hlen);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return lp_fail(LOUPE_ERR_FORMAT, "%s: header is not a JSON object", path);
    }
    int n = cJSON_GetArraySize(root);
    lp_st_range *ranges = malloc(sizeof *ranges * (size_t)(n ? n : 1)); /* (n) */
    if (!ranges) {
        cJSON_Delete(root);
        return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    }
    loupe_status st = LOUPE_OK;
    int nr = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        st = lp_st_entry(map, 8 + hlen, e, ts, &ranges[nr]);
        if (st != LOUPE_OK) break;
        nr++;
    }
    if (st == LOUPE_OK) st = lp_st_check_overlap(path, ranges, nr, ts);
    free(ranges);
    cJSON_Delete(root);
    return st;
}

loupe_status lp_read_safetensors(const char *path, lp_tensor_set *ts) {
    int n0 = ts->n, m0 = ts->n_maps, k0 = ts->n_meta;
    lp_mapping map;
    LP_TRY(lp_map_file(path, &map));
    int mi = lp_tensor_set_add_map(ts, &map);
    if (mi < 0) {
        lp_unmap_file(&map);
        return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    }
    lp_mapping view = ts->maps[mi];
    loupe_status st = lp_st_parse(&view, ts);
    if (st == LOUPE_OK) st = lp_tensor_set_index(ts);
    if (st != LOUPE_OK) lp_tensor_set_truncate(ts, n0, m0, k0);
    return st;
}
