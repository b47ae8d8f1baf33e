/*
 * model.c — opening and closing a model, binding tensors to weights,
 * hyper-parameter validation (with RoPE frequencies), and the reports.
 */
#include "model.h"

#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/stat.h>

#include "error.h"
#include "threadpool.h"
#include "../quant/loupe_format.h"

#define LP_ALIGN 64 /* owned buffers: cache-line aligned for the kernels */

const char *lp_arch_name(lp_arch a) {
    switch (a) {
    case LP_ARCH_GPT2: return "gpt2";
    case LP_ARCH_LLAMA: return "llama";
    }
    return "unknown";
}

/* ------------------------------------------------------------ ownership */

/* Room for one more owned buffer; 0 on OOM. */
static int lp_owned_room(loupe_model *m) {
    if (m->n_owned < m->cap_owned) return 1;
    int nc = m->cap_owned ? 2 * m->cap_owned : 32;
    void **p = realloc(m->owned, sizeof *p * (size_t)nc);
    if (!p) return 0;
    m->owned = p;
    m->cap_owned = nc;
    return 1;
}

void *lp_model_alloc(loupe_model *m, size_t bytes) {
    if (!lp_owned_room(m)) return NULL;
    size_t sz = (bytes + LP_ALIGN - 1) / LP_ALIGN * LP_ALIGN;
    void *buf = aligned_alloc(LP_ALIGN, sz ? sz : LP_ALIGN);
    if (!buf) return NULL;
    m->owned[m->n_owned++] = buf;
    return buf;
}

loupe_status lp_model_add_tensor(loupe_model *m, const char *name, lp_dtype type, int n_dims,
                                 const int64_t *shape, uint64_t bytes) {
    lp_tensor_entry *e = realloc(m->tensors, sizeof *e * (size_t)(m->n_tensors + 1));
    if (!e) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    m->tensors = e;
    e = &m->tensors[m->n_tensors];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    if (!e->name) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    m->n_tensors++;
    e->type = type;
    e->n_dims = n_dims < 0 ? 0 : n_dims > LP_MAX_DIMS ? LP_MAX_DIMS : n_dims;
    uint64_t n = 1;
    for (int i = 0; i < e->n_dims; i++) {
        e->shape[i] = shape[i];
        n *= (uint64_t)shape[i];
    }
    m->n_params += n;
    m->weight_bytes += bytes;
    return LOUPE_OK;
}

lp_mat lp_mat_rows(const lp_mat *w, int r0, int n) {
    lp_mat s = *w;
    s.rows = n;
    if (w->type != LP_Q8P) {
        s.data = (const uint8_t *)w->data + lp_dtype_bytes(w->type, (uint64_t)r0 * w->cols);
    } else if (r0 % LP_Q8P_ROWS == 0) {
        s.data = (const uint8_t *)w->data + (size_t)(r0 / LP_Q8P_ROWS) * LP_Q8P_GROUP_BYTES(w->cols);
    } else {
        s.data = NULL; /* a group would hold rows of two matrices */
    }
    return s;
}

/* ------------------------------------------------------------ binding */

/* What the shapes are checked against, for messages. */
static const char *lp_hp_source(const loupe_model *m) {
    const char *k = m->source_kind ? m->source_kind : "";
    if (strcmp(k, "hf") == 0) return "config.json";
    if (strcmp(k, "gguf") == 0) return "the GGUF metadata";
    return "the model header";
}

static void lp_shape_str(int n_dims, const int64_t *shape, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n_dims && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

static loupe_status lp_shape_error(const loupe_model *m, const lp_tensor_info *t, int n_want,
                                   const int64_t *want) {
    char got[128], exp[128];
    lp_shape_str(t->n_dims, t->shape, got, sizeof got);
    lp_shape_str(n_want, want, exp, sizeof exp);
    return lp_fail(LOUPE_ERR_SHAPE, "%s: %s: shape %s but %s implies %s", t->file ? t->file : "?",
                   t->name, got, lp_hp_source(m), exp);
}

loupe_status lp_check_shape(const loupe_model *m, const lp_tensor_info *t, int n_dims,
                            const int64_t *want) {
    int ok = t->n_dims == n_dims;
    for (int i = 0; ok && i < n_dims; i++) ok = t->shape[i] == want[i];
    return ok ? LOUPE_OK : lp_shape_error(m, t, n_dims, want);
}

/* n elements of a float tensor as f32 (src may be unaligned). */
static void lp_to_f32(const uint8_t *src, lp_dtype type, float *dst, size_t n) {
    if (type == LP_F32) {
        memcpy(dst, src, 4 * n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        if (type == LP_F16) {
            dst[i] = lp_f16_to_f32(h);
        } else {
            uint32_t bits = (uint32_t)h << 16; /* BF16 is the top half of an f32 */
            memcpy(&dst[i], &bits, 4);
        }
    }
}

static size_t lp_type_align(lp_dtype t) {
    return t == LP_F32 ? 4 : 2;
}

#define LP_TILE 32 /* transpose tile: both sides stay in cache */

/* Tile [r0, r1) x [c0, c1) of a (R, C) source, transposed into dst (C, R). */
static void lp_transpose_tile(const lp_tensor_info *t, int64_t R, int64_t C, int64_t r0,
                              int64_t r1, int64_t c0, int64_t c1, lp_dtype dst_type,
                              void *dst) {
    const uint8_t *src = t->data;
    size_t el = t->type == LP_F32 ? 4 : 2;
    float row[LP_TILE];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *s = src + el * (size_t)(r * C + c0);
        if (dst_type == LP_F16) {
            for (int64_t c = c0; c < c1; c++)
                memcpy((uint16_t *)dst + (size_t)(c * R + r), s + 2 * (size_t)(c - c0), 2);
            continue;
        }
        lp_to_f32(s, t->type, row, (size_t)(c1 - c0));
        for (int64_t c = c0; c < c1; c++) ((float *)dst)[c * R + r] = row[c - c0];
    }
}

/* Owned copy of an (R, C) tensor, transposed to (C, R) if asked, as
 * dst_type (F32, or F16 from F16). */
static void *lp_convert(loupe_model *m, const lp_tensor_info *t, int64_t R, int64_t C,
                        int transpose, lp_dtype dst_type) {
    size_t n = (size_t)(R * C);
    void *dst = lp_model_alloc(m, lp_dtype_bytes(dst_type, n)); /* (R, C) or (C, R) */
    if (!dst) return NULL;
    if (!transpose) {
        if (dst_type == LP_F16) memcpy(dst, t->data, 2 * n);
        else lp_to_f32(t->data, t->type, dst, n);
        return dst;
    }
    for (int64_t r0 = 0; r0 < R; r0 += LP_TILE)
        for (int64_t c0 = 0; c0 < C; c0 += LP_TILE)
            lp_transpose_tile(t, R, C, r0, r0 + LP_TILE < R ? r0 + LP_TILE : R, c0,
                              c0 + LP_TILE < C ? c0 + LP_TILE : C, dst_type, dst);
    return dst;
}

/* ------------------------------------------------------------ int8 packing */

#define LP_PACK_MAX_THREADS 64
#define LP_PACK_MIN_BYTES (4u << 20)    /* smaller jobs pack on the caller */
#define LP_PACK_CHUNK_BYTES (16u << 20) /* source released after each chunk */

/* Groups [g0, g1) of one packing job. */
typedef struct {
    const lp_block_q8 *src; /* (rows, cols/32) */
    int64_t rows, cols;
    void *dst;
    int64_t g0, g1;
} lp_pack_part;

static void *lp_pack_thread(void *arg) {
    const lp_pack_part *p = arg;
    lp_q8p_pack(p->src, p->rows, p->cols, p->dst, p->g0, p->g1);
    return NULL;
}

/* Packs groups [g0, g1) of (rows, cols) Q8_0 rows into dst (a whole
 * packed matrix), split over up to n_threads threads (the caller is one of
 * them; a thread that cannot start leaves its share to the caller). */
static void lp_pack_groups(const lp_block_q8 *src, int64_t rows, int64_t cols, void *dst,
                           int64_t g0, int64_t g1, int n_threads) {
    int64_t n = g1 - g0;
    if ((size_t)n * LP_Q8P_GROUP_BYTES(cols) < LP_PACK_MIN_BYTES) n_threads = 1;
    if (n_threads > LP_PACK_MAX_THREADS) n_threads = LP_PACK_MAX_THREADS;
    if (n_threads > n) n_threads = (int)n;
    if (n_threads < 1) n_threads = 1;
    lp_pack_part part[LP_PACK_MAX_THREADS];
    pthread_t th[LP_PACK_MAX_THREADS];
    int started[LP_PACK_MAX_THREADS] = {0};
    for (int i = 0; i < n_threads; i++) {
        part[i] = (lp_pack_part){src, rows, cols, dst, g0 + n * i / n_threads,
                                 g0 + n * (i + 1) / n_threads};
        if (i > 0) started[i] = pthread_create(&th[i], NULL, lp_pack_thread, &part[i]) == 0;
    }
    for (int i = 0; i < n_threads; i++)
        if (!started[i]) lp_pack_thread(&part[i]);
    for (int i = 1; i < n_threads; i++)
        if (started[i]) pthread_join(th[i], NULL);
}

/* Packs (rows, cols) Q8_0 rows into dst (lp_q8p_bytes(rows, cols)) chunk
 * by chunk, giving back the file pages of each chunk once packed (ts:
 * NULL for a source outside the mappings), so no more than a chunk of the
 * source is resident next to the packed copy. */
static void lp_pack_q8(const lp_tensor_set *ts, const lp_block_q8 *src, int64_t rows,
                       int64_t cols, void *dst, int n_threads) {
    const int64_t n_groups = LP_Q8P_GROUPS(rows), nb = cols / LP_QK8;
    int64_t chunk = (int64_t)(LP_PACK_CHUNK_BYTES / LP_Q8P_GROUP_BYTES(cols));
    if (chunk < 1) chunk = 1;
    for (int64_t g = 0; g < n_groups; g += chunk) {
        int64_t g1 = g + chunk < n_groups ? g + chunk : n_groups;
        lp_pack_groups(src, rows, cols, dst, g, g1, n_threads);
        int64_t r0 = g * LP_Q8P_ROWS, r1 = g1 * LP_Q8P_ROWS < rows ? g1 * LP_Q8P_ROWS : rows;
        lp_tensor_set_release(ts, src + r0 * nb, (uint64_t)((r1 - r0) * nb) * sizeof *src);
    }
}

/* Rows [r0, r0 + n) of an int8 tensor t (Q8_0 rows or LP_Q8P, cols wide),
 * packed into dst. Rows that are not already aligned Q8_0 blocks go through
 * a temporary copy. */
static loupe_status lp_pack_rows(loupe_model *m, const lp_tensor_info *t, int64_t r0,
                                 int64_t n, int64_t cols, void *dst) {
    const int64_t nb = cols / LP_QK8;
    const uint8_t *src = (const uint8_t *)t->data + (size_t)(r0 * nb) * sizeof(lp_block_q8);
    if (t->type == LP_Q8 && (uintptr_t)src % _Alignof(lp_block_q8) == 0) {
        lp_pack_q8(&m->ts, (const lp_block_q8 *)(const void *)src, n, cols, dst, m->load_threads);
        return LOUPE_OK;
    }
    lp_block_q8 *tmp = malloc((size_t)(n * nb) * sizeof *tmp + 1); /* (n, nb) */
    if (!tmp) return lp_fail(LOUPE_ERR_NOMEM, "%s: %s: out of memory", t->file, t->name);
    if (t->type == LP_Q8)
        memcpy(tmp, src, (size_t)(n * nb) * sizeof *tmp);
    else
        for (int64_t r = 0; r < n; r++) lp_q8p_unpack_row(t->data, cols, r0 + r, tmp + r * nb);
    lp_pack_q8(NULL, tmp, n, cols, dst, m->load_threads);
    free(tmp);
    return LOUPE_OK;
}

/* An int8 tensor as LP_Q8P: zero-copy if already packed and aligned, else
 * packed (or copied) into an owned buffer. */
static loupe_status lp_bind_q8(loupe_model *m, const lp_tensor_info *t, int rows, int cols,
                               lp_mat *out) {
    size_t bytes = lp_q8p_bytes(rows, cols);
    out->type = LP_Q8P;
    if (t->type == LP_Q8P && (uintptr_t)t->data % LP_ALIGN == 0) {
        out->data = t->data; /* zero-copy: points into the mapping */
        return LOUPE_OK;
    }
    void *p = lp_model_alloc(m, bytes);
    if (!p) return lp_fail(LOUPE_ERR_NOMEM, "%s: %s: out of memory", t->file, t->name);
    if (t->type == LP_Q8P) memcpy(p, t->data, bytes);
    else LP_TRY(lp_pack_rows(m, t, 0, rows, cols, p));
    lp_tensor_set_release(&m->ts, t->data, t->nbytes); /* one copy resident */
    out->data = p;
    return LOUPE_OK;
}

/* Shape and int8 checks shared by lp_bind_mat and lp_bind_mat_parts. */
static loupe_status lp_check_mat(const loupe_model *m, const lp_tensor_info *t, int rows,
                                 int cols, int transpose) {
    int64_t want[2] = {transpose ? cols : rows, transpose ? rows : cols};
    if (t->n_dims != 2 || t->shape[0] != want[0] || t->shape[1] != want[1])
        return lp_shape_error(m, t, 2, want);
    if (t->type != LP_Q8 && t->type != LP_Q8P) return LOUPE_OK;
    if (cols % LP_QK8)
        return lp_fail(LOUPE_ERR_SHAPE, "%s: %s: Q8_0 needs rows of a multiple of %d, got %d",
                       t->file, t->name, LP_QK8, cols);
    if (transpose)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: %s: a Q8_0 tensor cannot be transposed",
                       t->file, t->name);
    uint64_t want_bytes = t->type == LP_Q8P ? lp_q8p_bytes(rows, cols)
                                            : lp_dtype_bytes(LP_Q8, (uint64_t)rows * cols);
    if (t->nbytes != want_bytes)
        return lp_fail(LOUPE_ERR_SHAPE, "%s: %s: %llu bytes, a %s %d x %d matrix takes %llu",
                       t->file, t->name, (unsigned long long)t->nbytes,
                       t->type == LP_Q8P ? "packed int8" : "Q8_0", rows, cols,
                       (unsigned long long)want_bytes);
    return LOUPE_OK;
}

/* Records an int8 matrix as Q8_0 (the numbers; the packing is an in-memory
 * detail) with its in-memory bytes. */
static loupe_status lp_add_mat_tensor(loupe_model *m, const lp_tensor_info *t, lp_dtype type,
                                      uint64_t bytes) {
    return lp_model_add_tensor(m, t->name, type == LP_Q8P ? LP_Q8 : type, t->n_dims, t->shape,
                               bytes);
}

loupe_status lp_bind_mat(loupe_model *m, const lp_tensor_info *t, int rows, int cols,
                         int transpose, lp_mat *out) {
    LP_TRY(lp_check_mat(m, t, rows, cols, transpose));
    out->rows = rows;
    out->cols = cols;
    lp_dtype type = t->type;
    int aligned = (uintptr_t)t->data % lp_type_align(type) == 0;
    if (type == LP_Q8 || type == LP_Q8P) {
        LP_TRY(lp_bind_q8(m, t, rows, cols, out));
    } else if (!transpose && aligned && type != LP_BF16) {
        out->type = type;
        out->data = t->data; /* zero-copy: points into the mapping */
    } else {
        out->type = type == LP_F16 ? LP_F16 : LP_F32;
        out->data = lp_convert(m, t, t->shape[0], t->shape[1], transpose, out->type);
        if (!out->data)
            return lp_fail(LOUPE_ERR_NOMEM, "%s: %s: out of memory converting %d x %d", t->file,
                           t->name, rows, cols);
    }
    uint64_t bytes = out->type == LP_Q8P ? lp_q8p_bytes(rows, cols)
                                         : lp_dtype_bytes(out->type, (uint64_t)rows * cols);
    return lp_add_mat_tensor(m, t, out->type, bytes);
}

loupe_status lp_bind_mat_parts(loupe_model *m, const lp_tensor_info *t, int n_parts,
                               const int *rows, int cols, int transpose, lp_mat *out) {
    int total = 0, aligned = 1;
    for (int i = 0; i < n_parts; i++) {
        aligned &= total % LP_Q8P_ROWS == 0;
        total += rows[i];
    }
    if ((t->type != LP_Q8 && t->type != LP_Q8P) || aligned) {
        lp_mat whole;
        LP_TRY(lp_bind_mat(m, t, total, cols, transpose, &whole));
        for (int i = 0, r0 = 0; i < n_parts; r0 += rows[i++]) out[i] = lp_mat_rows(&whole, r0, rows[i]);
        return LOUPE_OK;
    }
    /* int8 split inside a group of 16 rows: each part gets its own groups */
    LP_TRY(lp_check_mat(m, t, total, cols, transpose));
    uint64_t bytes = 0;
    for (int i = 0, r0 = 0; i < n_parts; r0 += rows[i++]) {
        size_t nb = lp_q8p_bytes(rows[i], cols);
        void *p = lp_model_alloc(m, nb);
        if (!p) return lp_fail(LOUPE_ERR_NOMEM, "%s: %s: out of memory", t->file, t->name);
        LP_TRY(lp_pack_rows(m, t, r0, rows[i], cols, p));
        out[i] = (lp_mat){LP_Q8P, rows[i], cols, p};
        bytes += nb;
    }
    lp_tensor_set_release(&m->ts, t->data, t->nbytes);
    return lp_add_mat_tensor(m, t, LP_Q8P, bytes);
}

loupe_status lp_bind_vec(loupe_model *m, const lp_tensor_info *t, int64_t n,
                         const float **out) {
    int64_t count = 1;
    for (int i = 0; i < t->n_dims; i++) count *= t->shape[i];
    if (t->n_dims < 1 || t->n_dims > 2 || count != n) return lp_shape_error(m, t, 1, &n);
    if (t->type == LP_F32 && (uintptr_t)t->data % 4 == 0) {
        *out = t->data;
    } else {
        float *dst = lp_model_alloc(m, (size_t)n * sizeof(float)); /* (n) */
        if (!dst) return lp_fail(LOUPE_ERR_NOMEM, "%s: %s: out of memory", t->file, t->name);
        if (t->type == LP_Q8) {
            for (int64_t b = 0; b < n / LP_QK8; b++) {
                lp_block_q8 blk;
                memcpy(&blk, (const uint8_t *)t->data + b * sizeof blk, sizeof blk);
                float d = lp_f16_to_f32(blk.d);
                for (int j = 0; j < LP_QK8; j++) dst[b * LP_QK8 + j] = d * blk.qs[j];
            }
        } else if (t->type == LP_Q8P) { /* packed (rows, cols): row by row */
            int64_t cols = t->shape[t->n_dims - 1];
            for (int64_t r = 0; r < n / cols; r++)
                lp_q8p_dequant_row(t->data, cols, r, dst + r * cols);
        } else {
            lp_to_f32(t->data, t->type, dst, (size_t)n);
        }
        *out = dst;
    }
    return lp_model_add_tensor(m, t->name, LP_F32, t->n_dims, t->shape,
                               (uint64_t)n * sizeof(float));
}

/* ------------------------------------------------------------ hparams */

static loupe_status lp_range(const char *what, long long v, long long lo, long long hi) {
    if (v < lo || v > hi)
        return lp_fail(LOUPE_ERR_FORMAT, "%s %lld is out of range [%lld, %lld]", what, v, lo, hi);
    return LOUPE_OK;
}

static loupe_status lp_check_sizes(lp_hparams *hp) {
    LP_TRY(lp_range("vocabulary size", hp->n_vocab, 1, 1 << 24));
    LP_TRY(lp_range("context length", hp->n_ctx, 1, 1 << 24));
    LP_TRY(lp_range("hidden size", hp->dim, 1, 1 << 20));
    LP_TRY(lp_range("layer count", hp->n_layers, 1, 1 << 16));
    LP_TRY(lp_range("attention head count", hp->n_heads, 1, 1 << 14));
    LP_TRY(lp_range("key/value head count", hp->n_kv_heads, 1, hp->n_heads));
    LP_TRY(lp_range("feed-forward size", hp->ffn_dim, 1, 1 << 22));
    if (hp->n_heads % hp->n_kv_heads)
        return lp_fail(LOUPE_ERR_FORMAT,
                       "%d attention heads are not a multiple of %d key/value heads",
                       hp->n_heads, hp->n_kv_heads);
    if (hp->head_dim == 0) {
        if (hp->dim % hp->n_heads)
            return lp_fail(LOUPE_ERR_FORMAT,
                           "hidden size %d is not divisible by %d attention heads", hp->dim,
                           hp->n_heads);
        hp->head_dim = hp->dim / hp->n_heads;
    }
    LP_TRY(lp_range("head dimension", hp->head_dim, 1, 1 << 14));
    if (hp->arch == LP_ARCH_GPT2 && hp->head_dim * hp->n_heads != hp->dim)
        return lp_fail(LOUPE_ERR_FORMAT, "GPT-2: %d heads of %d do not make hidden size %d",
                       hp->n_heads, hp->head_dim, hp->dim);
    if (!(hp->norm_eps > 0 && hp->norm_eps < 1))
        return lp_fail(LOUPE_ERR_FORMAT, "norm epsilon %g must be in (0, 1)", hp->norm_eps);
    if (hp->bos_id < -1 || hp->bos_id >= hp->n_vocab)
        return lp_fail(LOUPE_ERR_FORMAT, "bos token id %d is outside the vocabulary of %d",
                       hp->bos_id, hp->n_vocab);
    if (hp->eos_id < -1 || hp->eos_id >= hp->n_vocab)
        return lp_fail(LOUPE_ERR_FORMAT, "eos token id %d is outside the vocabulary of %d",
                       hp->eos_id, hp->n_vocab);
    return LOUPE_OK;
}

static loupe_status lp_check_rope(lp_hparams *hp) {
    if (hp->rot_dim == 0) hp->rot_dim = hp->head_dim;
    if (hp->rot_dim < 2 || hp->rot_dim > hp->head_dim || hp->rot_dim % 2)
        return lp_fail(LOUPE_ERR_FORMAT, "rotary dimension %d must be even and in [2, %d]",
                       hp->rot_dim, hp->head_dim);
    if (!(hp->rope_theta > 0 && isfinite(hp->rope_theta)))
        return lp_fail(LOUPE_ERR_FORMAT, "rope theta %g must be positive", hp->rope_theta);
    if (hp->rope_scaling == LP_ROPE_SCALING_NONE) return LOUPE_OK;
    if (!(hp->rope_factor > 0 && isfinite(hp->rope_factor)))
        return lp_fail(LOUPE_ERR_FORMAT, "rope scaling factor %g must be positive",
                       hp->rope_factor);
    if (hp->rope_scaling == LP_ROPE_SCALING_LLAMA3) {
        if (!(hp->rope_low_freq_factor > 0) ||
            !(hp->rope_high_freq_factor > hp->rope_low_freq_factor) || hp->rope_orig_ctx < 1)
            return lp_fail(LOUPE_ERR_FORMAT,
                           "llama3 rope scaling needs 0 < low_freq_factor (%g) < "
                           "high_freq_factor (%g) and original_max_position_embeddings "
                           "(%d) >= 1",
                           hp->rope_low_freq_factor, hp->rope_high_freq_factor,
                           hp->rope_orig_ctx);
    }
    return LOUPE_OK;
}

/* inv_freq[i] = 1 / theta^(2i / rot_dim), then the scaling, following
 * transformers' rope_utils (default, linear, llama3) in f32. */
static void lp_rope_freqs(const lp_hparams *hp, float *inv) {
    int half = hp->rot_dim / 2;
    for (int i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)hp->rot_dim;
        inv[i] = 1.0f / (float)pow(hp->rope_theta, e);
    }
    if (hp->rope_scaling == LP_ROPE_SCALING_LINEAR) {
        for (int i = 0; i < half; i++) inv[i] /= hp->rope_factor;
    } else if (hp->rope_scaling == LP_ROPE_SCALING_LLAMA3) {
        double old_ctx = hp->rope_orig_ctx;
        double lo = hp->rope_low_freq_factor, hi = hp->rope_high_freq_factor;
        double low_wavelen = old_ctx / lo, high_wavelen = old_ctx / hi;
        float factor = hp->rope_factor;
        for (int i = 0; i < half; i++) {
            float wavelen = (float)(2 * M_PI) / inv[i];
            if (wavelen < high_wavelen) continue;        /* high frequency: kept */
            if (wavelen > low_wavelen) {                 /* low frequency: divided */
                inv[i] = inv[i] / factor;
                continue;
            }
            float smooth = (float)(((float)(old_ctx / wavelen)) - lo) / (float)(hi - lo);
            inv[i] = (1 - smooth) * inv[i] / factor + smooth * inv[i];
        }
    }
}

loupe_status lp_hparams_validate(loupe_model *m) {
    lp_hparams *hp = &m->hp;
    if (hp->arch != LP_ARCH_GPT2 && hp->arch != LP_ARCH_LLAMA)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "unknown architecture id %d", (int)hp->arch);
    LP_TRY(lp_check_sizes(hp));
    if (hp->arch == LP_ARCH_GPT2) {
        hp->rot_dim = 0; /* learned positions, no RoPE */
        return LOUPE_OK;
    }
    LP_TRY(lp_check_rope(hp));
    float *inv = lp_model_alloc(m, sizeof(float) * (size_t)(hp->rot_dim / 2)); /* (rot_dim/2) */
    if (!inv) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    lp_rope_freqs(hp, inv);
    m->rope_inv_freq = inv;
    return LOUPE_OK;
}

/* ------------------------------------------------------------ open/close */

void loupe_model_close(loupe_model *m) {
    if (!m) return;
    if (m->tok) lp_tok_free(m->tok);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    for (int i = 0; i < m->n_tensors; i++) free(m->tensors[i].name);
    free(m->tensors);
    lp_tensor_set_free(&m->ts);
    free(m->path);
    free(m->source_kind);
    free(m);
}

/* Which loader a file needs, from its first bytes and name. */
static loupe_status lp_sniff(const char *path, const char **kind) {
    FILE *f = fopen(path, "rb");
    if (!f) return lp_fail(LOUPE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    uint8_t head[8] = {0};
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    size_t len = strlen(path);
    if (n >= 4 && memcmp(head, "GGUF", 4) == 0) {
        *kind = "gguf";
    } else if (memcmp(head, LOUPE_FILE_MAGIC, LOUPE_MAGIC_LEN) == 0 ||
               (len > 6 && strcmp(path + len - 6, ".loupe") == 0)) {
        *kind = "loupe"; /* its loader checks the magic itself */
    } else if (n == 0) {
        return lp_fail(LOUPE_ERR_FORMAT, "%s: empty file", path);
    } else {
        return lp_fail(LOUPE_ERR_FORMAT, "%s: not a GGUF, .loupe file or model directory",
                       path);
    }
    return LOUPE_OK;
}

/* Every matrix weight, for the pass below: (2 + 7 * n_layers) pointers. */
static int lp_all_mats(loupe_model *m, lp_mat **out) {
    int n = 0;
    out[n++] = &m->w.tok_embd;
    out[n++] = &m->w.lm_head;
    for (int l = 0; m->w.layers && l < m->hp.n_layers; l++) {
        lp_layer *L = &m->w.layers[l];
        lp_mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++) out[n++] = mats[i];
    }
    return n;
}

/* One int8 matrix a loader bound directly (Q8_0 rows, or packed but not
 * 64-byte aligned) as an aligned LP_Q8P copy. */
static loupe_status lp_pack_mat(loupe_model *m, lp_mat *w) {
    lp_tensor_info t;
    memset(&t, 0, sizeof t);
    t.name = (char *)"matrix";
    t.file = m->path;
    t.type = w->type;
    t.data = w->data;
    t.nbytes = w->type == LP_Q8P ? lp_q8p_bytes(w->rows, w->cols)
                                 : lp_dtype_bytes(LP_Q8, (uint64_t)w->rows * w->cols);
    return lp_bind_q8(m, &t, w->rows, w->cols, w);
}

static int lp_in_mappings(const loupe_model *m, const void *p) {
    for (int i = 0; i < m->ts.n_maps; i++) {
        const lp_mapping *map = &m->ts.maps[i];
        if (map->data && (const uint8_t *)p >= map->data && (const uint8_t *)p < map->data + map->size)
            return 1;
    }
    return 0;
}

#define LP_FOLIO_MAX ((uintptr_t)2 << 20) /* largest page-cache folio mapped at once */

/* An f32 vector of n elements that points into a mapping, as an owned
 * copy; the pages the copy mapped (a whole folio) are given back at once. */
static loupe_status lp_own_vec(loupe_model *m, const float **v, size_t n) {
    if (!*v || !lp_in_mappings(m, *v)) return LOUPE_OK;
    float *p = lp_model_alloc(m, n * sizeof *p); /* (n) */
    if (!p) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    memcpy(p, *v, n * sizeof *p);
    for (int i = 0; i < m->ts.n_maps; i++) {
        const lp_mapping *map = &m->ts.maps[i];
        uintptr_t lo = (uintptr_t)*v & ~(LP_FOLIO_MAX - 1);
        uintptr_t hi = ((uintptr_t)(*v + n) + LP_FOLIO_MAX - 1) & ~(LP_FOLIO_MAX - 1);
        uintptr_t a = (uintptr_t)map->data, b = a + map->size;
        if ((uintptr_t)*v < a || (uintptr_t)*v >= b) continue;
        lo = lo < a ? a : lo;
        hi = hi > b ? b : hi;
        lp_tensor_set_release(&m->ts, (const void *)lo, hi - lo);
    }
    *v = p;
    return LOUPE_OK;
}

/* Once int8 weights were packed out of a file, the file pages are given
 * back. The kernel maps a file's page cache in large folios (up to 2 MB),
 * so reading a small vector in place would map packed-away neighbours
 * again: the vectors (a few hundred kB) get copies, then every page of the
 * mappings is released; anything still read in place faults back in. */
static loupe_status lp_release_mappings(loupe_model *m) {
    const lp_hparams *hp = &m->hp;
    const size_t C = (size_t)hp->dim, F = (size_t)hp->ffn_dim;
    const size_t Q = (size_t)hp->n_heads * hp->head_dim, KV = (size_t)hp->n_kv_heads * hp->head_dim;
    for (int l = 0; m->w.layers && l < hp->n_layers; l++) {
        lp_layer *L = &m->w.layers[l];
        LP_TRY(lp_own_vec(m, &L->attn_norm_w, C));
        LP_TRY(lp_own_vec(m, &L->attn_norm_b, C));
        LP_TRY(lp_own_vec(m, &L->bq, Q));
        LP_TRY(lp_own_vec(m, &L->bk, KV));
        LP_TRY(lp_own_vec(m, &L->bv, KV));
        LP_TRY(lp_own_vec(m, &L->bo, C));
        LP_TRY(lp_own_vec(m, &L->ffn_norm_w, C));
        LP_TRY(lp_own_vec(m, &L->ffn_norm_b, C));
        LP_TRY(lp_own_vec(m, &L->b_up, F));
        LP_TRY(lp_own_vec(m, &L->b_down, C));
    }
    LP_TRY(lp_own_vec(m, &m->w.out_norm_w, C));
    LP_TRY(lp_own_vec(m, &m->w.out_norm_b, C));
    LP_TRY(lp_own_vec(m, &m->w.pos_embd, (size_t)hp->n_ctx * C));
    for (int i = 0; i < m->ts.n_maps; i++)
        lp_tensor_set_release(&m->ts, m->ts.maps[i].data, m->ts.maps[i].size);
    return LOUPE_OK;
}

/* After a loader: leaves every matrix F32, F16 or aligned LP_Q8P, the
 * only types lp_matmul reads. Matrices sharing data (a tied head) still
 * share it afterwards. */
static loupe_status lp_finish_weights(loupe_model *m) {
    int cap = 2 + 7 * (m->w.layers ? m->hp.n_layers : 0);
    lp_mat **mats = malloc(sizeof *mats * (size_t)cap);
    const void **orig = malloc(sizeof *orig * (size_t)cap);
    loupe_status st = mats && orig ? LOUPE_OK : lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    int n = st == LOUPE_OK ? lp_all_mats(m, mats) : 0;
    for (int i = 0; i < n && st == LOUPE_OK; i++) {
        lp_mat *w = mats[i];
        orig[i] = w->data;
        int misaligned = w->type == LP_Q8P && (uintptr_t)w->data % LP_ALIGN;
        if (!w->data || (w->type != LP_Q8 && !misaligned)) continue;
        int j = 0;
        while (j < i && !(orig[j] == w->data && mats[j]->rows == w->rows)) j++;
        if (j < i) *w = *mats[j]; /* already packed: shared */
        else st = lp_pack_mat(m, w);
    }
    /* int8 packed at load (so its file pages were released) */
    int packed = 0;
    for (int i = 0; i < n && st == LOUPE_OK; i++)
        packed |= mats[i]->type == LP_Q8P && !lp_in_mappings(m, mats[i]->data);
    free(mats);
    free((void *)orig);
    if (st == LOUPE_OK && packed && m->ts.n_maps) st = lp_release_mappings(m);
    return st;
}

static loupe_status lp_open(loupe_model *m, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0)
        return lp_fail(LOUPE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    const char *kind = "hf";
    if (!S_ISDIR(st.st_mode)) LP_TRY(lp_sniff(path, &kind));
    m->source_kind = strdup(kind);
    if (!m->source_kind) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    if (strcmp(kind, "hf") == 0) LP_TRY(lp_load_hf_dir(m, path));
    else if (strcmp(kind, "gguf") == 0) LP_TRY(lp_load_gguf(m, path));
    else LP_TRY(lp_load_loupe(m, path));
    LP_TRY(lp_finish_weights(m));
    if (m->tok && lp_tok_n_vocab(m->tok) > m->hp.n_vocab)
        return lp_fail(LOUPE_ERR_SHAPE,
                       "%s: the tokenizer has %d tokens but the model's embedding only %d rows",
                       path, lp_tok_n_vocab(m->tok), m->hp.n_vocab);
    return LOUPE_OK;
}

loupe_status loupe_model_open(const char *path, const loupe_model_params *params,
                              loupe_model **out) {
    if (!out) return lp_fail(LOUPE_ERR_ARG, "loupe_model_open: NULL out");
    *out = NULL;
    if (!path || !*path) return lp_fail(LOUPE_ERR_ARG, "loupe_model_open: empty path");
    loupe_model *m = calloc(1, sizeof *m);
    if (!m) return lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    m->path = strdup(path);
    m->load_threads = params && params->n_threads > 0 ? params->n_threads : lp_ncpu();
    loupe_status st = m->path ? lp_open(m, path) : lp_fail(LOUPE_ERR_NOMEM, "out of memory");
    if (st != LOUPE_OK) {
        loupe_model_close(m);
        return st;
    }
    *out = m;
    return LOUPE_OK;
}

/* ------------------------------------------------------------ reports */

void loupe_model_get_info(const loupe_model *m, loupe_model_info *out) {
    memset(out, 0, sizeof *out);
    if (!m) return;
    const lp_hparams *hp = &m->hp;
    out->arch = lp_arch_name(hp->arch);
    out->model_type = hp->model_type;
    out->n_vocab = hp->n_vocab;
    out->n_ctx = hp->n_ctx;
    out->dim = hp->dim;
    out->n_layers = hp->n_layers;
    out->n_heads = hp->n_heads;
    out->n_kv_heads = hp->n_kv_heads;
    out->head_dim = hp->head_dim;
    out->ffn_dim = hp->ffn_dim;
    out->bos_id = hp->bos_id;
    out->eos_id = hp->eos_id;
    out->n_params = m->n_params;
    out->weight_bytes = m->weight_bytes;
}

/* Appends to a bounded buffer, tracking the length actually written. */
typedef struct {
    char *buf;
    size_t cap, len;
} lp_out;

static void lp_put(lp_out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void lp_put(lp_out *o, const char *fmt, ...) {
    if (o->cap == 0 || o->len + 1 >= o->cap) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    o->len += (size_t)n < o->cap - o->len ? (size_t)n : o->cap - o->len - 1;
}

static const char *lp_act_name(lp_act a) {
    switch (a) {
    case LP_ACT_GELU_TANH: return "gelu (tanh approximation)";
    case LP_ACT_GELU_ERF: return "gelu (exact erf)";
    case LP_ACT_SILU: return "silu (SwiGLU)";
    }
    return "?";
}

static void lp_describe_hparams(const loupe_model *m, lp_out *o) {
    const lp_hparams *hp = &m->hp;
    lp_put(o, "model:         %s (%s)\n", m->path ? m->path : "?",
           m->source_kind ? m->source_kind : "?");
    lp_put(o, "architecture:  %s (model_type %s)\n", lp_arch_name(hp->arch), hp->model_type);
    lp_put(o, "vocabulary:    %d\ncontext:       %d\n", hp->n_vocab, hp->n_ctx);
    lp_put(o, "hidden size:   %d\nlayers:        %d\n", hp->dim, hp->n_layers);
    lp_put(o, "heads:         %d query, %d key/value, head_dim %d\n", hp->n_heads,
           hp->n_kv_heads, hp->head_dim);
    lp_put(o, "feed-forward:  %d, %s\n", hp->ffn_dim, lp_act_name(hp->act));
    lp_put(o, "norm:          %s, eps %g\n", hp->arch == LP_ARCH_GPT2 ? "layernorm" : "rmsnorm",
           hp->norm_eps);
    if (hp->arch == LP_ARCH_LLAMA) {
        static const char *sc[] = {"none", "linear", "llama3"};
        lp_put(o, "rope:          theta %g, %d of %d dims, %s pairs, scaling %s", hp->rope_theta,
               hp->rot_dim, hp->head_dim, hp->rope_neox ? "half-split" : "interleaved",
               sc[hp->rope_scaling]);
        if (hp->rope_scaling != LP_ROPE_SCALING_NONE) lp_put(o, " (factor %g)", hp->rope_factor);
        lp_put(o, "\nqkv bias:      %s\n", hp->qkv_bias ? "yes" : "no");
    }
    lp_put(o, "lm head:       %s\n", hp->tied_head ? "tied to the token embedding" : "separate");
    lp_put(o, "bos / eos:     %d / %d\n", hp->bos_id, hp->eos_id);
}

static void lp_describe_tok(const loupe_model *m, lp_out *o) {
    if (!m->tok) {
        lp_put(o, "tokenizer:     none\n");
        return;
    }
    const lp_tok_spec *s = lp_tok_get_spec(m->tok);
    lp_put(o, "tokenizer:     %s, %d tokens", s->kind == LP_TOK_SPM ? "SentencePiece BPE" :
           "byte-level BPE", lp_tok_n_vocab(m->tok));
    if (s->kind == LP_TOK_BPE_BYTES) lp_put(o, ", %d merges", s->n_merges);
    if (s->pre_name) lp_put(o, ", pre-tokenizer %s", s->pre_name);
    lp_put(o, "\n");
}

static void lp_describe_memory(const loupe_model *m, lp_out *o) {
    const lp_hparams *hp = &m->hp;
    double mib = 1024.0 * 1024.0;
    double kv_tok = 2.0 * hp->n_layers * hp->n_kv_heads * hp->head_dim * sizeof(float);
    lp_put(o, "parameters:    %llu\n", (unsigned long long)m->n_params);
    lp_put(o, "memory:        weights %.2f MiB; KV cache %.1f KiB per token, %.2f MiB at "
           "context %d\n", m->weight_bytes / mib, kv_tok / 1024.0, kv_tok * hp->n_ctx / mib,
           hp->n_ctx);
}

size_t loupe_model_describe(const loupe_model *m, char *buf, size_t cap) {
    lp_out o = {buf, cap, 0};
    if (cap) buf[0] = 0;
    if (!m) return 0;
    lp_describe_hparams(m, &o);
    lp_describe_tok(m, &o);
    lp_describe_memory(m, &o);
    lp_put(&o, "tensors:       %d\n", m->n_tensors);
    for (int i = 0; i < m->n_tensors; i++) {
        const lp_tensor_entry *e = &m->tensors[i];
        char shape[128];
        lp_shape_str(e->n_dims, e->shape, shape, sizeof shape);
        lp_put(&o, "  %-40s %-5s %s\n", e->name, lp_dtype_name(e->type), shape);
    }
    return o.len;
}
