/*
 * gguf.c — reads a GGUF (v2, v3) file: metadata table and tensor infos.
 *
 * Layout (little-endian):
 *   "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv   x { string key | u32 value type | value }
 *   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type
 *                 | u64 offset (relative to the data section) }
 *   padding to `general.alignment` (default 32) | data section
 * A string is u64 length + bytes (no NUL). An array value is u32 element
 * type | u64 count | elements (arrays may nest).
 *
 * Every count and length is checked against the bytes left in the file
 * before anything is allocated, so a corrupt header cannot make us allocate
 * or read beyond the mapping.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "tensors.h"

#define LP_GG_MAX_DEPTH 8       /* nested array levels we follow */
#define LP_GG_MAX_KEY 65535     /* spec limit on key length */
#define LP_GG_MAX_NAME 4096     /* tensor names are short; refuse junk */
#define LP_GG_MIN_KV 13         /* key len (8) + type (4) + 1 byte value */
#define LP_GG_MIN_TENSOR 32     /* name len + n_dims + ne[0] + type + offset */

/* ------------------------------------------------------------ ggml types */

static const char *const lp_ggml_type_names[] = {
    "F32",     "F16",     "Q4_0",     "Q4_1",    "Q4_2",     "Q4_3",       "Q5_0",
    "Q5_1",    "Q8_0",    "Q8_1",     "Q2_K",    "Q3_K",     "Q4_K",       "Q5_K",
    "Q6_K",    "Q8_K",    "IQ2_XXS",  "IQ2_XS",  "IQ3_XXS",  "IQ1_S",      "IQ4_NL",
    "IQ3_S",   "IQ2_S",   "IQ4_XS",   "I8",      "I16",      "I32",        "I64",
    "F64",     "IQ1_M",   "BF16",     "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8",  "TQ1_0",
    "TQ2_0",   "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4"};

#define LP_GG_N_TYPES ((uint32_t)(sizeof lp_ggml_type_names / sizeof *lp_ggml_type_names))

/* ggml type id -> lp_dtype, -1 if loupe does not read it. */
static int lp_gg_dtype(uint32_t t) {
    switch (t) {
    case 0: return LP_F32;
    case 1: return LP_F16;
    case 8: return LP_Q8;
    case 30: return LP_BF16;
    default: return -1;
    }
}

/* ------------------------------------------------------------ cursor */

typedef struct {
    const char *path;
    const uint8_t *p;
    size_t size, off;
} lp_gg_cur;

static loupe_status lp_gg_need(lp_gg_cur *c, uint64_t n, const char *what) {
    if (n > c->size - c->off)
        return lp_fail(LOUPE_ERR_FORMAT,
                       "%s: truncated: %s needs %llu bytes at offset %zu but the file has %zu",
                       c->path, what, (unsigned long long)n, c->off, c->size);
    return LOUPE_OK;
}

static uint64_t lp_gg_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static loupe_status lp_gg_u32(lp_gg_cur *c, uint32_t *v, const char *what) {
    LP_TRY(lp_gg_need(c, 4, what));
    *v = (uint32_t)lp_gg_le(c->p + c->off, 4);
    c->off += 4;
    return LOUPE_OK;
}

static loupe_status lp_gg_u64(lp_gg_cur *c, uint64_t *v, const char *what) {
    LP_TRY(lp_gg_need(c, 8, what));
    *v = lp_gg_le(c->p + c->off, 8);
    c->off += 8;
    return LOUPE_OK;
}

static loupe_status lp_gg_str(lp_gg_cur *c, const char **s, uint64_t *len, const char *what) {
    LP_TRY(lp_gg_u64(c, len, what));
    LP_TRY(lp_gg_need(c, *len, what));
    *s = (const char *)c->p + c->off;
    c->off += (size_t)*len;
    return LOUPE_OK;
}

/* ------------------------------------------------------------ metadata */

/* Byte size of a fixed-size value type; 0 for string and array. */
static size_t lp_gg_scalar_size(uint32_t t) {
    static const size_t sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t < sizeof sz / sizeof *sz ? sz[t] : 0;
}

static loupe_status lp_gg_bad_type(lp_gg_cur *c, const char *key, uint32_t t) {
    return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata %s: unknown value type %u", c->path, key, t);
}

/* Walks over an array payload (elements of type t, n of them), checking
 * every length; nested arrays recurse up to LP_GG_MAX_DEPTH. */
static loupe_status lp_gg_skip_array(lp_gg_cur *c, const char *key, uint32_t t, uint64_t n,
                                     int depth) {
    if (t == LP_META_STRING) {
        if (n > (c->size - c->off) / 8)
            return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata %s: %llu strings cannot fit in the file",
                           c->path, key, (unsigned long long)n);
        for (uint64_t i = 0; i < n; i++) {
            const char *s;
            uint64_t len;
            LP_TRY(lp_gg_str(c, &s, &len, key));
        }
        return LOUPE_OK;
    }
    if (t == LP_META_ARRAY) {
        if (depth >= LP_GG_MAX_DEPTH)
            return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata %s: arrays nested deeper than %d",
                           c->path, key, LP_GG_MAX_DEPTH);
        if (n > (c->size - c->off) / 12)
            return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata %s: %llu arrays cannot fit in the file",
                           c->path, key, (unsigned long long)n);
        for (uint64_t i = 0; i < n; i++) {
            uint32_t et;
            uint64_t en;
            LP_TRY(lp_gg_u32(c, &et, key));
            LP_TRY(lp_gg_u64(c, &en, key));
            LP_TRY(lp_gg_skip_array(c, key, et, en, depth + 1));
        }
        return LOUPE_OK;
    }
    size_t el = lp_gg_scalar_size(t);
    if (!el) return lp_gg_bad_type(c, key, t);
    if (n > (c->size - c->off) / el)
        return lp_fail(LOUPE_ERR_FORMAT,
                       "%s: metadata %s: array of %llu elements goes beyond the end of the file",
                       c->path, key, (unsigned long long)n);
    c->off += (size_t)(n * el);
    return LOUPE_OK;
}

/* String arrays also get pointer and length tables (owned by the entry). */
static loupe_status lp_gg_string_array(lp_gg_cur *c, lp_meta *m) {
    size_t start = c->off;
    LP_TRY(lp_gg_skip_array(c, m->key, LP_META_STRING, m->arr_n, 0));
    /* (arr_n) each */
    m->arr_strs = malloc(sizeof *m->arr_strs * (size_t)(m->arr_n ? m->arr_n : 1));
    m->arr_lens = malloc(sizeof *m->arr_lens * (size_t)(m->arr_n ? m->arr_n : 1));
    if (!m->arr_strs || !m->arr_lens)
        return lp_fail(LOUPE_ERR_NOMEM, "%s: metadata %s: out of memory for %llu strings",
                       c->path, m->key, (unsigned long long)m->arr_n);
    size_t p = start;
    for (uint64_t i = 0; i < m->arr_n; i++) {
        uint64_t len = lp_gg_le(c->p + p, 8);
        m->arr_lens[i] = len;
        m->arr_strs[i] = (const char *)c->p + p + 8;
        p += 8 + (size_t)len;
    }
    return LOUPE_OK;
}

static loupe_status lp_gg_value(lp_gg_cur *c, lp_meta *m) {
    uint32_t t = m->type;
    if (t == LP_META_STRING) {
        LP_TRY(lp_gg_str(c, &m->v.str.s, &m->v.str.len, m->key));
        return LOUPE_OK;
    }
    if (t == LP_META_ARRAY) {
        uint32_t at;
        LP_TRY(lp_gg_u32(c, &at, m->key));
        LP_TRY(lp_gg_u64(c, &m->arr_n, m->key));
        if (at > LP_META_F64) return lp_gg_bad_type(c, m->key, at);
        m->arr_type = (lp_meta_type)at;
        m->arr_data = c->p + c->off;
        if (at == LP_META_STRING) return lp_gg_string_array(c, m);
        return lp_gg_skip_array(c, m->key, at, m->arr_n, 1);
    }
    size_t el = lp_gg_scalar_size(t);
    if (!el) return lp_gg_bad_type(c, m->key, t);
    LP_TRY(lp_gg_need(c, el, m->key));
    const uint8_t *p = c->p + c->off;
    uint64_t raw = lp_gg_le(p, (int)el);
    c->off += el;
    switch (t) {
    case LP_META_U8: case LP_META_U16: case LP_META_U32: case LP_META_U64:
        m->v.u = raw;
        break;
    case LP_META_I8: m->v.i = (int8_t)raw; break;
    case LP_META_I16: m->v.i = (int16_t)raw; break;
    case LP_META_I32: m->v.i = (int32_t)raw; break;
    case LP_META_I64: m->v.i = (int64_t)raw; break;
    case LP_META_BOOL: m->v.b = raw != 0; break;
    case LP_META_F32: {
        float f;
        uint32_t b = (uint32_t)raw;
        memcpy(&f, &b, 4);
        m->v.f = f;
        break;
    }
    case LP_META_F64: memcpy(&m->v.f, &raw, 8); break;
    default: break;
    }
    return LOUPE_OK;
}

static loupe_status lp_gg_read_meta(lp_gg_cur *c, lp_tensor_set *ts, uint64_t n_kv) {
    int k0 = ts->n_meta;
    lp_meta *meta = realloc(ts->meta, sizeof *meta * (size_t)(k0 + n_kv + 1));
    if (!meta) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory for metadata", c->path);
    ts->meta = meta;
    for (uint64_t i = 0; i < n_kv; i++) {
        const char *key;
        uint64_t klen;
        uint32_t type;
        LP_TRY(lp_gg_str(c, &key, &klen, "metadata key"));
        if (klen == 0 || klen > LP_GG_MAX_KEY)
            return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata key %llu has length %llu", c->path,
                           (unsigned long long)i, (unsigned long long)klen);
        lp_meta *m = &ts->meta[ts->n_meta];
        memset(m, 0, sizeof *m);
        m->key = malloc((size_t)klen + 1);
        if (!m->key) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", c->path);
        memcpy(m->key, key, (size_t)klen);
        m->key[klen] = 0;
        ts->n_meta++; /* from here on, truncate() frees the entry */
        for (int j = k0; j < ts->n_meta - 1; j++)
            if (strcmp(ts->meta[j].key, m->key) == 0)
                return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata key %s appears twice", c->path,
                               m->key);
        LP_TRY(lp_gg_u32(c, &type, m->key));
        if (type > LP_META_F64) return lp_gg_bad_type(c, m->key, type);
        m->type = (lp_meta_type)type;
        LP_TRY(lp_gg_value(c, m));
    }
    return LOUPE_OK;
}

/* ------------------------------------------------------------ tensors */

static loupe_status lp_gg_tensor_info(lp_gg_cur *c, lp_tensor_set *ts, uint64_t *offset) {
    const char *name;
    uint64_t nlen;
    uint32_t nd, type;
    LP_TRY(lp_gg_str(c, &name, &nlen, "tensor name"));
    if (nlen == 0 || nlen > LP_GG_MAX_NAME)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %d has a name of %llu bytes", c->path, ts->n,
                       (unsigned long long)nlen);
    lp_tensor_info *t = lp_tensor_set_add(ts, name, (size_t)nlen);
    if (!t) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", c->path);
    LP_TRY(lp_gg_u32(c, &nd, t->name));
    if (nd < 1 || nd > LP_MAX_DIMS)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s has %u dimensions (1 to %d allowed)",
                       c->path, t->name, nd, LP_MAX_DIMS);
    uint64_t ne[LP_MAX_DIMS], nelem = 1;
    int overflow = 0;
    for (uint32_t i = 0; i < nd; i++) {
        LP_TRY(lp_gg_u64(c, &ne[i], t->name));
        if (ne[i] >= ((uint64_t)1 << 62) || __builtin_mul_overflow(nelem, ne[i], &nelem))
            overflow = 1;
    }
    if (overflow || nelem >= ((uint64_t)1 << 62))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: dimensions overflow the element count",
                       c->path, t->name);
    LP_TRY(lp_gg_u32(c, &type, t->name));
    LP_TRY(lp_gg_u64(c, offset, t->name));
    int dt = lp_gg_dtype(type);
    if (dt < 0 && type < LP_GG_N_TYPES)
        return lp_fail(LOUPE_ERR_UNSUPPORTED,
                       "%s: unsupported tensor type %s for %s (loupe reads F32, F16, BF16, Q8_0)",
                       c->path, lp_ggml_type_names[type], t->name);
    if (dt < 0)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: unknown tensor type id %u for %s", c->path,
                       type, t->name);
    if (dt == LP_Q8 && ne[0] % LP_QK8 != 0)
        return lp_fail(LOUPE_ERR_FORMAT,
                       "%s: tensor %s: Q8_0 rows of %llu elements are not a multiple of %d",
                       c->path, t->name, (unsigned long long)ne[0], LP_QK8);
    t->type = (lp_dtype)dt;
    t->n_dims = (int)nd;
    for (uint32_t i = 0; i < nd; i++) t->shape[i] = (int64_t)ne[nd - 1 - i];
    t->nbytes = lp_dtype_bytes(t->type, nelem);
    t->file = c->path;
    return LOUPE_OK;
}

/* One tensor's byte range in the data section, for the overlap check. */
typedef struct {
    uint64_t begin, end;
    int tensor;
} lp_gg_range;

static int lp_gg_cmp_range(const void *a, const void *b) {
    const lp_gg_range *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Places tensors [t0, ts->n) in the data section at data_start and checks
 * each is aligned, inside the file, and overlaps no other. */
static loupe_status lp_gg_place(lp_gg_cur *c, lp_tensor_set *ts, int t0,
                                const uint64_t *offsets, uint64_t data_start,
                                uint64_t align) {
    int n = ts->n - t0;
    uint64_t data_size = c->size - data_start;
    lp_gg_range *r = malloc(sizeof *r * (size_t)(n ? n : 1)); /* (n) */
    if (!r) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", c->path);
    loupe_status st = LOUPE_OK;
    for (int i = 0; i < n && st == LOUPE_OK; i++) {
        lp_tensor_info *t = &ts->t[t0 + i];
        uint64_t off = offsets[i];
        if (off % align)
            st = lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: offset %llu is not a multiple of the "
                         "alignment %llu", c->path, t->name, (unsigned long long)off,
                         (unsigned long long)align);
        else if (off > data_size || t->nbytes > data_size - off)
            st = lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: bytes [%llu, %llu) of the data "
                         "section are out of bounds: it holds %llu bytes (file truncated?)",
                         c->path, t->name, (unsigned long long)off,
                         (unsigned long long)(off + t->nbytes), (unsigned long long)data_size);
        if (st != LOUPE_OK) break; /* off is not a usable offset */
        t->data = c->p + data_start + off;
        t->file_offset = data_start + off;
        r[i] = (lp_gg_range){off, off + t->nbytes, t0 + i};
    }
    if (st == LOUPE_OK) {
        qsort(r, (size_t)n, sizeof *r, lp_gg_cmp_range);
        int last = -1; /* previous non-empty range */
        for (int i = 0; i < n; i++) {
            if (r[i].begin == r[i].end) continue; /* empty tensors occupy nothing */
            if (last >= 0 && r[i].begin < r[last].end) {
                st = lp_fail(LOUPE_ERR_FORMAT, "%s: tensors %s and %s overlap in the data section",
                             c->path, ts->t[r[last].tensor].name, ts->t[r[i].tensor].name);
                break;
            }
            last = i;
        }
    }
    free(r);
    return st;
}

/* ------------------------------------------------------------ header */

static loupe_status lp_gg_header(lp_gg_cur *c, lp_tensor_set *ts, uint64_t *n_tensors,
                                 uint64_t *n_kv) {
    if (c->size < 4 || memcmp(c->p, "GGUF", 4) != 0)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: not a GGUF file (bad magic)", c->path);
    c->off = 4;
    uint32_t version;
    LP_TRY(lp_gg_u32(c, &version, "version"));
    if (version == 1)
        return lp_fail(LOUPE_ERR_UNSUPPORTED,
                       "%s: GGUF version 1 is not supported (loupe reads versions 2 and 3)",
                       c->path);
    if (version == 0x02000000u || version == 0x03000000u)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: big-endian GGUF files are not supported",
                       c->path);
    if (version != 2 && version != 3)
        return lp_fail(LOUPE_ERR_UNSUPPORTED,
                       "%s: unknown GGUF version %u (loupe reads versions 2 and 3)", c->path,
                       version);
    ts->gguf_version = version;
    LP_TRY(lp_gg_u64(c, n_tensors, "tensor count"));
    LP_TRY(lp_gg_u64(c, n_kv, "metadata count"));
    size_t left = c->size - c->off;
    if (*n_tensors > left / LP_GG_MIN_TENSOR || *n_tensors > (1u << 30))
        return lp_fail(LOUPE_ERR_FORMAT,
                       "%s: tensor count %llu is impossible for a file of %zu bytes", c->path,
                       (unsigned long long)*n_tensors, c->size);
    if (*n_kv > left / LP_GG_MIN_KV || *n_kv > (1u << 30))
        return lp_fail(LOUPE_ERR_FORMAT,
                       "%s: metadata count %llu is impossible for a file of %zu bytes", c->path,
                       (unsigned long long)*n_kv, c->size);
    return LOUPE_OK;
}

/* general.alignment: a u32 power of two; 32 when absent. */
static loupe_status lp_gg_alignment(lp_gg_cur *c, const lp_tensor_set *ts, uint64_t *align) {
    *align = 32;
    const lp_meta *m = lp_meta_find(ts, "general.alignment");
    if (!m) return LOUPE_OK;
    if (m->type != LP_META_U32)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: general.alignment must be a u32", c->path);
    if (m->v.u == 0 || (m->v.u & (m->v.u - 1)) || m->v.u > (1u << 20))
        return lp_fail(LOUPE_ERR_FORMAT,
                       "%s: general.alignment %llu is not a power of two up to 2^20", c->path,
                       (unsigned long long)m->v.u);
    *align = m->v.u;
    return LOUPE_OK;
}

static loupe_status lp_gg_parse(lp_gg_cur *c, lp_tensor_set *ts) {
    uint64_t n_tensors = 0, n_kv = 0, align = 32;
    LP_TRY(lp_gg_header(c, ts, &n_tensors, &n_kv));
    LP_TRY(lp_gg_read_meta(c, ts, n_kv));
    LP_TRY(lp_gg_alignment(c, ts, &align));
    int t0 = ts->n;
    /* (n_tensors) data offsets, placed once all infos are read */
    uint64_t *offsets = malloc(sizeof *offsets * (size_t)(n_tensors ? n_tensors : 1));
    if (!offsets) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", c->path);
    loupe_status st = LOUPE_OK;
    for (uint64_t i = 0; i < n_tensors && st == LOUPE_OK; i++)
        st = lp_gg_tensor_info(c, ts, &offsets[i]);
    if (st == LOUPE_OK && n_tensors > 0) {
        uint64_t data_start = (c->off + align - 1) / align * align;
        if (data_start > c->size)
            st = lp_fail(LOUPE_ERR_FORMAT, "%s: truncated: the data section would start at byte "
                         "%llu but the file has %zu", c->path,
                         (unsigned long long)data_start, c->size);
        else
            st = lp_gg_place(c, ts, t0, offsets, data_start, align);
    }
    free(offsets);
    return st;
}

loupe_status lp_read_gguf(const char *path, lp_tensor_set *ts) {
    int n0 = ts->n, m0 = ts->n_maps, k0 = ts->n_meta;
    lp_mapping map;
    LP_TRY(lp_map_file(path, &map));
    int mi = lp_tensor_set_add_map(ts, &map);
    if (mi < 0) {
        lp_unmap_file(&map);
        return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    }
    lp_gg_cur c = {ts->maps[mi].path, ts->maps[mi].data, ts->maps[mi].size, 0};
    loupe_status st = lp_gg_parse(&c, ts);
    if (st == LOUPE_OK) st = lp_tensor_set_index(ts);
    if (st != LOUPE_OK) lp_tensor_set_truncate(ts, n0, m0, k0);
    return st;
}
