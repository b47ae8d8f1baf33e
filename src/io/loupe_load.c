/*
 * loupe_load.c — reads a packed .loupe file (docs/FORMAT.md): validates the
 * header, metadata and directory against the file before trusting any
 * offset, size or count, then points the model's weights straight into the
 * read-only mapping (zero copy: tensors are 64-byte aligned, int8 matrices
 * already packed for the kernels in format 1.1) and rebuilds the tokenizer
 * from the stored spec.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../quant/loupe_format.h"
#include "../error.h"
#include "../model.h"

/* ------------------------------------------------------------ weight slots */

static int slot_mat(lp_weight_slot *out, int cap, int n, const char *name,
                    lp_slot_kind kind, lp_mat *mat, int64_t rows, int64_t cols,
                    int required) {
    if (n < cap) {
        lp_weight_slot *s = &out[n];
        memset(s, 0, sizeof *s);
        snprintf(s->name, sizeof s->name, "%s", name);
        s->kind = kind;
        s->mat = mat;
        s->rows = rows;
        s->cols = cols;
        s->required = required;
    }
    return n + 1;
}

static int slot_vec(lp_weight_slot *out, int cap, int n, const char *name,
                    const float **vec, int64_t rows, int64_t cols, int required) {
    if (n < cap) {
        lp_weight_slot *s = &out[n];
        memset(s, 0, sizeof *s);
        snprintf(s->name, sizeof s->name, "%s", name);
        s->kind = LP_SLOT_VEC;
        s->vec = vec;
        s->rows = rows;
        s->cols = cols;
        s->required = required;
    }
    return n + 1;
}

int lp_weight_slots(const lp_hparams *hp, lp_weights *w, lp_weight_slot *out, int cap) {
    int gpt2 = hp->arch == LP_ARCH_GPT2, n = 0;
    int64_t D = hp->dim, F = hp->ffn_dim, V = hp->n_vocab;
    int64_t Q = (int64_t)hp->n_heads * hp->head_dim, KV = (int64_t)hp->n_kv_heads * hp->head_dim;
    char nm[LOUPE_NAME_MAX];
    n = slot_mat(out, cap, n, "token_embd", LP_SLOT_EMBED, &w->tok_embd, V, D, 1);
    n = slot_vec(out, cap, n, "position_embd", &w->pos_embd, (int64_t)hp->n_ctx * D, D, gpt2);
    for (int l = 0; l < hp->n_layers; l++) {
        lp_layer *L = &w->layers[l];
        int qb = gpt2 || hp->qkv_bias;
#define MAT(suffix, field, r, c, req) \
    (snprintf(nm, sizeof nm, "blk.%d." suffix, l), \
     n = slot_mat(out, cap, n, nm, LP_SLOT_MATMUL, &L->field, r, c, req))
#define VEC(suffix, field, len, req) \
    (snprintf(nm, sizeof nm, "blk.%d." suffix, l), \
     n = slot_vec(out, cap, n, nm, &L->field, len, 0, req))
        VEC("attn_norm", attn_norm_w, D, 1);
        VEC("attn_norm_b", attn_norm_b, D, gpt2);
        MAT("attn_q", wq, Q, D, 1);
        MAT("attn_k", wk, KV, D, 1);
        MAT("attn_v", wv, KV, D, 1);
        VEC("attn_q_b", bq, Q, qb);
        VEC("attn_k_b", bk, KV, qb);
        VEC("attn_v_b", bv, KV, qb);
        MAT("attn_output", wo, D, Q, 1);
        VEC("attn_output_b", bo, D, gpt2);
        VEC("ffn_norm", ffn_norm_w, D, 1);
        VEC("ffn_norm_b", ffn_norm_b, D, gpt2);
        MAT("ffn_gate", w_gate, F, D, !gpt2);
        MAT("ffn_up", w_up, F, D, 1);
        VEC("ffn_up_b", b_up, F, gpt2);
        MAT("ffn_down", w_down, D, F, 1);
        VEC("ffn_down_b", b_down, D, gpt2);
#undef MAT
#undef VEC
    }
    n = slot_vec(out, cap, n, "output_norm", &w->out_norm_w, D, 0, 1);
    n = slot_vec(out, cap, n, "output_norm_b", &w->out_norm_b, D, 0, gpt2);
    if (!hp->tied_head)
        n = slot_mat(out, cap, n, "output", LP_SLOT_MATMUL, &w->lm_head, V, D, 1);
    return n;
}

/* ------------------------------------------------------------ parsing */

static uint64_t rd64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* Is [off, off+len) inside [0, size)? (overflow-safe) */
static int in_bounds(uint64_t off, uint64_t len, uint64_t size) {
    return off <= size && len <= size - off;
}

static loupe_status parse_header(lp_loupe_file *f) {
    const uint8_t *h = f->data;
    const char *P = f->path;
    if (f->size < LOUPE_MAGIC_LEN || memcmp(h, LOUPE_FILE_MAGIC, LOUPE_MAGIC_LEN) != 0) {
        if (f->size >= 5 && memcmp(h, LOUPE_FILE_MAGIC, 5) == 0)
            return lp_fail(LOUPE_ERR_FORMAT, "%s: damaged .loupe signature (line ends "
                           "rewritten by a text-mode copy?)", P);
        return lp_fail(LOUPE_ERR_FORMAT, "%s: not a .loupe file (bad magic)", P);
    }
    if (f->size < 16)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: truncated: %llu bytes, shorter than the header",
                       P, (unsigned long long)f->size);
    uint32_t mark; /* native order on both sides: tensor data is host-order */
    memcpy(&mark, h + 12, 4);
    if (mark != LOUPE_ENDIAN_MARK)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: endianness marker %02x %02x %02x %02x: "
                       "the file's byte order differs from this machine's", P, h[12], h[13],
                       h[14], h[15]);
    f->major = rd16(h + 8);
    f->minor = rd16(h + 10);
    if (f->major > LOUPE_FORMAT_MAJOR)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: .loupe format version %u.%u is newer "
                       "than this loupe reads (%d.x); upgrade loupe or re-run quantize",
                       P, f->major, f->minor, LOUPE_FORMAT_MAJOR);
    if (f->major < 1) return lp_fail(LOUPE_ERR_FORMAT, "%s: bad format version 0.%u", P, f->minor);
    if (f->size < LOUPE_HEADER_SIZE)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: truncated: %llu bytes, shorter than the "
                       "header", P, (unsigned long long)f->size);
    if (lp_xxh64(h, 120, 0) != rd64(h + 120))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: header checksum mismatch (file damaged)", P);
    uint64_t file_size = rd64(h + 16);
    if (file_size != f->size)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: %s: header says %llu bytes, file has %llu", P,
                       f->size < file_size ? "truncated" : "wrong size",
                       (unsigned long long)file_size, (unsigned long long)f->size);
    f->meta_off = rd64(h + 24);
    f->meta_size = rd64(h + 32);
    f->dir_off = rd64(h + 40);
    f->dir_size = rd64(h + 48);
    f->data_off = rd64(h + 56);
    f->data_size = rd64(h + 64);
    uint32_t n = rd32(h + 72);
    /* sections in order, inside the file, not overlapping */
    if (f->meta_off < LOUPE_HEADER_SIZE || !in_bounds(f->meta_off, f->meta_size, f->size) ||
        f->dir_off < f->meta_off + f->meta_size || !in_bounds(f->dir_off, f->dir_size, f->size) ||
        f->data_off < f->dir_off + f->dir_size || !in_bounds(f->data_off, f->data_size, f->size) ||
        f->data_off % LOUPE_ALIGN)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: section table out of range (meta %llu+%llu, "
                       "directory %llu+%llu, data %llu+%llu, file %llu bytes)", P,
                       (unsigned long long)f->meta_off, (unsigned long long)f->meta_size,
                       (unsigned long long)f->dir_off, (unsigned long long)f->dir_size,
                       (unsigned long long)f->data_off, (unsigned long long)f->data_size,
                       (unsigned long long)f->size);
    if (n > LOUPE_MAX_TENSORS || (uint64_t)n * LOUPE_DIR_ENTRY_SIZE != f->dir_size)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor count %u does not fit the directory "
                       "(%llu bytes of %d-byte entries)", P, n,
                       (unsigned long long)f->dir_size, LOUPE_DIR_ENTRY_SIZE);
    f->n_tensors = (int)n;
    if (lp_xxh64(h + f->meta_off, (size_t)f->meta_size, 0) != rd64(h + 80))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata checksum mismatch (file damaged)", P);
    if (lp_xxh64(h + f->dir_off, (size_t)f->dir_size, 0) != rd64(h + 88))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor directory checksum mismatch (file "
                       "damaged)", P);
    return LOUPE_OK;
}

/* Checks one metadata value and returns its byte size (0 on error). */
static uint64_t meta_value_size(const uint8_t *p, uint64_t avail, uint32_t type,
                                uint64_t *count) {
    uint64_t n;
    *count = 1;
    switch (type) {
    case LOUPE_M_I32:
    case LOUPE_M_F32: return avail >= 4 ? 4 : 0;
    case LOUPE_M_STR:
    case LOUPE_M_ARR_U8:
        if (avail < 8) return 0;
        n = rd64(p);
        *count = n;
        return n <= avail - 8 ? 8 + n : 0;
    case LOUPE_M_ARR_F32:
    case LOUPE_M_ARR_I32:
        if (avail < 8) return 0;
        n = rd64(p);
        *count = n;
        return n <= (avail - 8) / 4 ? 8 + 4 * n : 0;
    case LOUPE_M_ARR_STR: {
        if (avail < 8) return 0;
        n = rd64(p);
        *count = n;
        if (n > (avail - 8) / 8) return 0; /* each string needs >= 8 bytes */
        uint64_t off = 8;
        for (uint64_t i = 0; i < n; i++) {
            if (avail - off < 8) return 0;
            uint64_t len = rd64(p + off);
            if (len > avail - off - 8) return 0;
            off += 8 + len;
        }
        return off;
    }
    }
    return 0;
}

static loupe_status parse_meta(lp_loupe_file *f) {
    const uint8_t *p = f->data + f->meta_off;
    uint64_t size = f->meta_size, off = 8;
    if (size < 8) return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata section too small", f->path);
    uint64_t n = rd64(p);
    if (n > LOUPE_MAX_META || n > (size - 8) / 9)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata entry count %llu is absurd for a "
                       "%llu-byte section", f->path, (unsigned long long)n,
                       (unsigned long long)size);
    f->meta = calloc((size_t)n + 1, sizeof *f->meta);
    if (!f->meta) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", f->path);
    for (uint64_t i = 0; i < n; i++) {
        lp_loupe_meta *e = &f->meta[i];
        if (size - off < 8 || rd32(p + off) > size - off - 8) /* key + type fit */
            return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata entry %llu: key runs past the "
                           "section", f->path, (unsigned long long)i);
        e->key_len = rd32(p + off);
        e->key = (const char *)p + off + 4;
        off += 4 + e->key_len;
        e->type = rd32(p + off);
        off += 4;
        e->val_size = meta_value_size(p + off, size - off, e->type, &e->count);
        if (!e->val_size) {
            char key[48]; /* printable copy: the bytes may be garbage */
            size_t k = 0;
            for (; k < e->key_len && k < sizeof key - 1; k++)
                key[k] = e->key[k] >= 0x20 && e->key[k] < 0x7f ? e->key[k] : '?';
            key[k] = 0;
            return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata entry %llu \"%s\": %s", f->path,
                           (unsigned long long)i, key,
                           e->type < LOUPE_M_I32 || e->type > LOUPE_M_ARR_I32
                               ? "unknown value type"
                               : "value runs past the end of the section");
        }
        e->val = p + off + (e->type == LOUPE_M_I32 || e->type == LOUPE_M_F32 ? 0 : 8);
        off += e->val_size;
        f->n_meta = (int)i + 1;
        for (uint64_t j = 0; j < i; j++)
            if (f->meta[j].key_len == e->key_len && !memcmp(f->meta[j].key, e->key, e->key_len))
                return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata key %.*s appears twice",
                               f->path, (int)e->key_len, e->key);
    }
    if (off != size)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: %llu stray bytes after the metadata entries",
                       f->path, (unsigned long long)(size - off));
    return LOUPE_OK;
}

static int cmp_by_offset(const void *a, const void *b) {
    const lp_loupe_tensor *x = *(lp_loupe_tensor *const *)a, *y = *(lp_loupe_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Layout 1: a 2-D int8 matrix packed for the kernels (LP_Q8P), as many
 * bytes as its groups of 16 rows take, padding included. Called once the
 * shape is known to be sane (element count < 2^48). */
static loupe_status check_packed(const lp_loupe_file *f, lp_loupe_tensor *t) {
    const char *P = f->path;
    if (t->type != LP_Q8)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: layout 1 (packed int8) on an %s "
                       "tensor; only int8 matrices are packed", P, t->name,
                       t->type == LP_F16 ? "f16" : "f32");
    if (t->n_dims != 2)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: layout 1 (packed int8) needs a "
                       "matrix, not %d dimensions", P, t->name, t->n_dims);
    uint64_t want = lp_q8p_bytes(t->shape[0], t->shape[1]);
    if (t->size != want)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: size %llu bytes, but a packed int8 "
                       "(%lld, %lld) matrix needs %llu (%lld groups of %d rows)", P, t->name,
                       (unsigned long long)t->size, (long long)t->shape[0],
                       (long long)t->shape[1], (unsigned long long)want,
                       (long long)LP_Q8P_GROUPS(t->shape[0]), LP_Q8P_ROWS);
    t->type = LP_Q8P;
    return LOUPE_OK;
}

/* Shape, type, size and placement of one directory entry. */
static loupe_status check_entry(const lp_loupe_file *f, const uint8_t *e, lp_loupe_tensor *t,
                                int i) {
    const char *P = f->path;
    if (!memchr(e, 0, LOUPE_NAME_MAX) || !e[0])
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %d: name empty or not NUL-terminated", P, i);
    memcpy(t->name, e, LOUPE_NAME_MAX);
    uint32_t type = rd32(e + 48);
    t->layout = rd32(e + 52);
    uint32_t nd = rd32(e + 56);
    if (type != LOUPE_T_F32 && type != LOUPE_T_F16 && type != LOUPE_T_Q8)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: tensor %s: unknown type %u", P, t->name, type);
    t->type = (lp_dtype)type;
    if (t->layout != LOUPE_LAYOUT_ROWS && t->layout != LOUPE_LAYOUT_Q8P)
        return lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: tensor %s: unknown layout %u (this loupe "
                       "reads layouts 0 and 1 of format %d.%d; a newer loupe wrote it?)", P,
                       t->name, t->layout, LOUPE_FORMAT_MAJOR, LOUPE_FORMAT_MINOR);
    if (nd < 1 || nd > LP_MAX_DIMS)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: %u dimensions", P, t->name, nd);
    t->n_dims = (int)nd;
    uint64_t count = 1;
    for (int d = 0; d < LP_MAX_DIMS; d++) {
        uint64_t v = rd64(e + 64 + 8 * d);
        if (d >= t->n_dims) {
            if (v) return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: unused dimension %d is %llu",
                                  P, t->name, d, (unsigned long long)v);
            continue;
        }
        /* element count < 2^48 (256 T elements) keeps every byte count exact */
        if (v == 0 || v >= (1ull << 48) || count > ((1ull << 48) - 1) / v)
            return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: shape dimension %d = %llu gives "
                           "an impossible element count", P, t->name, d,
                           (unsigned long long)v);
        t->shape[d] = (int64_t)v;
        count *= v;
    }
    if (t->type == LP_Q8 && t->shape[t->n_dims - 1] % LP_QK8)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: int8 rows of %lld elements are not "
                       "whole blocks of %d", P, t->name, (long long)t->shape[t->n_dims - 1],
                       LP_QK8);
    t->offset = rd64(e + 96);
    t->size = rd64(e + 104);
    t->checksum = rd64(e + 112);
    if (t->layout == LOUPE_LAYOUT_Q8P) LP_TRY(check_packed(f, t));
    else if (t->size != lp_dtype_bytes(t->type, count))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: size %llu bytes, but its shape and "
                       "type need %llu", P, t->name, (unsigned long long)t->size,
                       (unsigned long long)lp_dtype_bytes(t->type, count));
    if (t->offset % LOUPE_ALIGN)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: offset %llu is not %d-byte aligned", P,
                       t->name, (unsigned long long)t->offset, LOUPE_ALIGN);
    if (t->offset < f->data_off ||
        !in_bounds(t->offset - f->data_off, t->size, f->data_size))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: bytes %llu..%llu lie outside the "
                       "data section (%llu..%llu)", P, t->name,
                       (unsigned long long)t->offset, (unsigned long long)(t->offset + t->size),
                       (unsigned long long)f->data_off,
                       (unsigned long long)(f->data_off + f->data_size));
    return LOUPE_OK;
}

static loupe_status parse_dir(lp_loupe_file *f) {
    f->t = calloc((size_t)f->n_tensors + 1, sizeof *f->t);
    lp_loupe_tensor **order = calloc((size_t)f->n_tensors + 1, sizeof *order);
    loupe_status rc = LOUPE_OK;
    if (!f->t || !order) rc = lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", f->path);
    for (int i = 0; i < f->n_tensors && rc == LOUPE_OK; i++) {
        rc = check_entry(f, f->data + f->dir_off + (uint64_t)i * LOUPE_DIR_ENTRY_SIZE, &f->t[i], i);
        order[i] = &f->t[i];
    }
    if (rc == LOUPE_OK) { /* no two tensors share bytes */
        qsort(order, (size_t)f->n_tensors, sizeof *order, cmp_by_offset);
        for (int i = 1; i < f->n_tensors && rc == LOUPE_OK; i++)
            if (order[i - 1]->offset + order[i - 1]->size > order[i]->offset)
                rc = lp_fail(LOUPE_ERR_FORMAT, "%s: tensors %s and %s overlap", f->path,
                             order[i - 1]->name, order[i]->name);
    }
    for (int i = 0; i < f->n_tensors && rc == LOUPE_OK; i++)
        for (int j = 0; j < i; j++) /* small n: the quadratic check is fine */
            if (!strcmp(f->t[i].name, f->t[j].name)) {
                rc = lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s appears twice", f->path, f->t[i].name);
                break;
            }
    free(order);
    return rc;
}

loupe_status lp_loupe_parse(const uint8_t *data, uint64_t size, const char *path,
                            int verify_data, lp_loupe_file *out) {
    memset(out, 0, sizeof *out);
    out->data = data;
    out->size = size;
    out->path = path;
    loupe_status rc = parse_header(out);
    if (rc == LOUPE_OK) rc = parse_meta(out);
    if (rc == LOUPE_OK) rc = parse_dir(out);
    for (int i = 0; i < out->n_tensors && rc == LOUPE_OK && verify_data; i++) {
        const lp_loupe_tensor *t = &out->t[i];
        if (lp_xxh64(data + t->offset, (size_t)t->size, 0) != t->checksum)
            rc = lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s: data checksum mismatch (file "
                         "damaged)", path, t->name);
    }
    if (rc != LOUPE_OK) lp_loupe_file_free(out);
    return rc;
}

void lp_loupe_file_free(lp_loupe_file *f) {
    free(f->t);
    free(f->meta);
    f->t = NULL;
    f->meta = NULL;
    f->n_tensors = f->n_meta = 0;
}

const lp_loupe_meta *lp_loupe_meta_find(const lp_loupe_file *f, const char *key) {
    size_t len = strlen(key);
    for (int i = 0; i < f->n_meta; i++)
        if (f->meta[i].key_len == len && !memcmp(f->meta[i].key, key, len)) return &f->meta[i];
    return NULL;
}

/* ------------------------------------------------------------ metadata values */

/* The entry key of type type; LOUPE_ERR_MISSING / FORMAT if absent / wrong. */
static loupe_status need(const lp_loupe_file *f, const char *key, uint32_t type, int optional,
                         const lp_loupe_meta **out) {
    *out = lp_loupe_meta_find(f, key);
    if (!*out) {
        if (optional) return LOUPE_OK;
        return lp_fail(LOUPE_ERR_MISSING, "%s: metadata key %s missing", f->path, key);
    }
    if ((*out)->type != type)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata %s has type %u, expected %u", f->path,
                       key, (*out)->type, type);
    return LOUPE_OK;
}

/* A string value as a malloc'd C string; rejects embedded NULs. */
static loupe_status dup_str(const lp_loupe_file *f, const char *key, const uint8_t *s,
                            uint64_t len, char **out) {
    if (memchr(s, 0, (size_t)len))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata %s: string contains a NUL byte", f->path,
                       key);
    *out = malloc((size_t)len + 1);
    if (!*out) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", f->path);
    memcpy(*out, s, (size_t)len);
    (*out)[len] = 0;
    return LOUPE_OK;
}

static loupe_status get_str(const lp_loupe_file *f, const char *key, int optional, char **out) {
    const lp_loupe_meta *e;
    *out = NULL;
    LP_TRY(need(f, key, LOUPE_M_STR, optional, &e));
    return e ? dup_str(f, key, e->val, e->count, out) : LOUPE_OK;
}

static void free_strs(char **s, uint64_t n) {
    for (uint64_t i = 0; i < n; i++) free(s[i]);
    free(s);
}

/* A string array (malloc'd strings); *n gets its length. */
static loupe_status get_strs(const lp_loupe_file *f, const char *key, char ***out, int *n) {
    const lp_loupe_meta *e;
    *out = NULL;
    *n = 0;
    LP_TRY(need(f, key, LOUPE_M_ARR_STR, 0, &e));
    if (e->count > (1u << 30))
        return lp_fail(LOUPE_ERR_FORMAT, "%s: metadata %s has %llu strings", f->path, key,
                       (unsigned long long)e->count);
    char **s = calloc((size_t)e->count + 1, sizeof *s);
    if (!s) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", f->path);
    const uint8_t *p = e->val;
    for (uint64_t i = 0; i < e->count; i++) {
        uint64_t len = rd64(p);
        loupe_status rc = dup_str(f, key, p + 8, len, &s[i]);
        if (rc != LOUPE_OK) {
            free_strs(s, i);
            return rc;
        }
        p += 8 + len;
    }
    *out = s;
    *n = (int)e->count;
    return LOUPE_OK;
}

/* A 4-byte little-endian scalar (int or float) into a struct field. */
static void put_field(void *base, size_t offset, const uint8_t *val) {
    uint32_t v = rd32(val);
    memcpy((char *)base + offset, &v, 4);
}

/* ------------------------------------------------------------ hparams */

static loupe_status read_hparams(const lp_loupe_file *f, lp_hparams *hp) {
    char *arch = NULL, *act = NULL, *rs = NULL, *mt = NULL;
    loupe_status rc = get_str(f, "hp.arch", 0, &arch);
    if (rc == LOUPE_OK) rc = get_str(f, "hp.act", 0, &act);
    if (rc == LOUPE_OK) rc = get_str(f, "hp.rope_scaling", 0, &rs);
    if (rc == LOUPE_OK) rc = get_str(f, "hp.model_type", 0, &mt);
    if (rc == LOUPE_OK) {
        if (!strcmp(arch, "gpt2")) hp->arch = LP_ARCH_GPT2;
        else if (!strcmp(arch, "llama")) hp->arch = LP_ARCH_LLAMA;
        else rc = lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: unknown architecture \"%s\"", f->path, arch);
    }
    if (rc == LOUPE_OK) {
        if (!strcmp(act, "gelu_tanh")) hp->act = LP_ACT_GELU_TANH;
        else if (!strcmp(act, "gelu_erf")) hp->act = LP_ACT_GELU_ERF;
        else if (!strcmp(act, "silu")) hp->act = LP_ACT_SILU;
        else rc = lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: unknown activation \"%s\"", f->path, act);
    }
    if (rc == LOUPE_OK) {
        if (!strcmp(rs, "none")) hp->rope_scaling = LP_ROPE_SCALING_NONE;
        else if (!strcmp(rs, "linear")) hp->rope_scaling = LP_ROPE_SCALING_LINEAR;
        else if (!strcmp(rs, "llama3")) hp->rope_scaling = LP_ROPE_SCALING_LLAMA3;
        else rc = lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: unknown rope scaling \"%s\"", f->path, rs);
    }
    if (rc == LOUPE_OK && strlen(mt) >= sizeof hp->model_type)
        rc = lp_fail(LOUPE_ERR_FORMAT, "%s: model_type \"%.40s\" too long", f->path, mt);
    if (rc == LOUPE_OK) snprintf(hp->model_type, sizeof hp->model_type, "%s", mt);
    for (int i = 0; i < lp_n_hp_fields && rc == LOUPE_OK; i++) {
        const lp_meta_field *fd = &lp_hp_fields[i];
        const lp_loupe_meta *e;
        rc = need(f, fd->key, fd->type, 0, &e);
        if (rc == LOUPE_OK) put_field(hp, fd->offset, e->val);
    }
    free(arch);
    free(act);
    free(rs);
    free(mt);
    return rc;
}

/* ------------------------------------------------------------ tokenizer */

static loupe_status read_tok_arrays(const lp_loupe_file *f, lp_tok_spec *s) {
    const lp_loupe_meta *e;
    int n;
    LP_TRY(get_strs(f, "tok.pieces", &s->pieces, &n));
    s->n_vocab = n;
    if (n == 0) return lp_fail(LOUPE_ERR_TOKENIZER, "%s: empty vocabulary", f->path);
    LP_TRY(need(f, "tok.scores", LOUPE_M_ARR_F32, 1, &e));
    if (e) {
        if (e->count != (uint64_t)n)
            return lp_fail(LOUPE_ERR_FORMAT, "%s: tok.scores has %llu values for %d pieces",
                           f->path, (unsigned long long)e->count, n);
        if (!(s->scores = malloc((size_t)n * sizeof *s->scores)))
            return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", f->path);
        for (int i = 0; i < n; i++) put_field(s->scores, (size_t)i * 4, e->val + 4 * i);
    }
    if (!(s->attrs = calloc((size_t)n, 1)))
        return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", f->path);
    LP_TRY(need(f, "tok.attrs", LOUPE_M_ARR_U8, 1, &e));
    if (e) {
        if (e->count != (uint64_t)n)
            return lp_fail(LOUPE_ERR_FORMAT, "%s: tok.attrs has %llu values for %d pieces",
                           f->path, (unsigned long long)e->count, n);
        memcpy(s->attrs, e->val, (size_t)n);
    }
    LP_TRY(get_strs(f, "tok.merges", &s->merges, &n));
    s->n_merges = n;
    LP_TRY(get_strs(f, "tok.pre_regex", &s->pre_regex, &n));
    s->n_pre = n;
    LP_TRY(need(f, "tok.pre_behavior", LOUPE_M_ARR_U8, 1, &e));
    if (e) { /* absent: every pattern isolates its matches */
        if (e->count != (uint64_t)n)
            return lp_fail(LOUPE_ERR_FORMAT, "%s: tok.pre_behavior has %llu values for %d patterns",
                           f->path, (unsigned long long)e->count, n);
        if (!(s->pre_behavior = malloc((size_t)n + 1)))
            return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", f->path);
        memcpy(s->pre_behavior, e->val, (size_t)n);
        for (int i = 0; i < n; i++)
            if ((s->pre_behavior[i] & ~LP_PRE_INVERT) > LP_PRE_CONTIGUOUS)
                return lp_fail(LOUPE_ERR_FORMAT, "%s: tok.pre_behavior[%d] = %d is not a split behaviour",
                               f->path, i, s->pre_behavior[i]);
    }
    LP_TRY(need(f, "tok.eos_extra", LOUPE_M_ARR_I32, 0, &e));
    if (e->count > (uint64_t)s->n_vocab)
        return lp_fail(LOUPE_ERR_FORMAT, "%s: tok.eos_extra has %llu ids", f->path,
                       (unsigned long long)e->count);
    s->n_eos_extra = (int)e->count;
    if (!(s->eos_extra = calloc((size_t)e->count + 1, sizeof *s->eos_extra)))
        return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", f->path);
    for (uint64_t i = 0; i < e->count; i++) {
        s->eos_extra[i] = (int32_t)rd32(e->val + 4 * i);
        if (s->eos_extra[i] < 0 || s->eos_extra[i] >= s->n_vocab)
            return lp_fail(LOUPE_ERR_TOKENIZER, "%s: tok.eos_extra id %d out of range", f->path,
                           s->eos_extra[i]);
    }
    return LOUPE_OK;
}

static loupe_status read_tokenizer(const lp_loupe_file *f, lp_tok_spec *s) {
    char *kind = NULL;
    memset(s, 0, sizeof *s);
    LP_TRY(get_str(f, "tok.kind", 0, &kind));
    if (!strcmp(kind, "spm")) s->kind = LP_TOK_SPM;
    else if (!strcmp(kind, "bpe_bytes")) s->kind = LP_TOK_BPE_BYTES;
    else {
        loupe_status rc = lp_fail(LOUPE_ERR_TOKENIZER, "%s: unknown tokenizer kind \"%s\"",
                                  f->path, kind);
        free(kind);
        return rc;
    }
    free(kind);
    LP_TRY(read_tok_arrays(f, s));
    LP_TRY(get_str(f, "tok.pre_name", 1, &s->pre_name));
    LP_TRY(get_str(f, "tok.chat_template", 1, &s->chat_template));
    for (int i = 0; i < lp_n_tok_fields; i++) {
        const lp_meta_field *fd = &lp_tok_fields[i];
        const lp_loupe_meta *e;
        LP_TRY(need(f, fd->key, fd->type, 0, &e));
        put_field(s, fd->offset, e->val);
    }
    return LOUPE_OK;
}

/* ------------------------------------------------------------ binding */

static const lp_loupe_tensor *find_tensor(const lp_loupe_file *f, const char *name) {
    for (int i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->t[i].name, name)) return &f->t[i];
    return NULL;
}

/* A directory entry as the model binder sees tensors (LP_Q8P for layout 1). */
static lp_tensor_info tensor_info(const lp_loupe_file *f, const lp_loupe_tensor *t) {
    lp_tensor_info ti = {0};
    ti.name = (char *)t->name;
    ti.type = t->type;
    ti.n_dims = t->n_dims;
    memcpy(ti.shape, t->shape, sizeof ti.shape);
    ti.data = f->data + t->offset;
    ti.nbytes = t->size;
    ti.file_offset = t->offset;
    ti.file = f->path;
    return ti;
}

/* Points one slot at its tensor after checking type and shape, through
 * lp_bind_mat / lp_bind_vec, which keep f32, f16 and packed int8 in the
 * mapping (zero copy), pack row-major int8 (layout 0, format 1.0) at load,
 * and record the weight for `loupe info`. */
static loupe_status bind_slot(loupe_model *m, const lp_loupe_file *f, const lp_weight_slot *s,
                              const lp_loupe_tensor *t) {
    lp_tensor_info ti = tensor_info(f, t);
    if (s->kind == LP_SLOT_VEC) {
        int64_t n = 1;
        for (int d = 0; d < t->n_dims; d++) n *= t->shape[d];
        int ok = t->type == LP_F32 && n == s->rows &&
                 (s->cols ? t->n_dims == 2 && t->shape[1] == s->cols : t->n_dims == 1);
        if (!ok)
            return lp_fail(LOUPE_ERR_SHAPE, "%s: tensor %s: %s with %lld elements, expected "
                           "f32 with %lld", f->path, s->name, lp_dtype_name(t->type),
                           (long long)n, (long long)s->rows);
        return lp_bind_vec(m, &ti, s->rows, s->vec);
    }
    if (t->n_dims != 2 || t->shape[0] != s->rows || t->shape[1] != s->cols)
        return lp_fail(LOUPE_ERR_SHAPE, "%s: tensor %s: shape (%lld, %lld), expected (%lld, %lld)",
                       f->path, s->name, (long long)t->shape[0],
                       (long long)(t->n_dims > 1 ? t->shape[1] : 0), (long long)s->rows,
                       (long long)s->cols);
    return lp_bind_mat(m, &ti, (int)s->rows, (int)s->cols, 0, s->mat);
}

static loupe_status bind_weights(loupe_model *m, const lp_loupe_file *f) {
    lp_hparams *hp = &m->hp;
    /* every layer needs at least 8 tensors: refuse an inflated layer count
     * before building a slot for each */
    if ((int64_t)hp->n_layers * 8 + 1 > (int64_t)f->n_tensors)
        return lp_fail(LOUPE_ERR_MISSING, "%s: hp.n_layers = %d needs at least %lld tensors, "
                       "the file has %lld", f->path, hp->n_layers,
                       (long long)hp->n_layers * 8 + 1, (long long)f->n_tensors);
    m->w.layers = lp_model_alloc(m, (size_t)hp->n_layers * sizeof *m->w.layers + 1);
    if (!m->w.layers) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", f->path);
    memset(m->w.layers, 0, (size_t)hp->n_layers * sizeof *m->w.layers);
    int n = lp_weight_slots(hp, &m->w, NULL, 0);
    lp_weight_slot *slots = malloc((size_t)n * sizeof *slots);
    char *used = calloc((size_t)f->n_tensors + 1, 1);
    loupe_status rc = LOUPE_OK;
    if (!slots || !used) rc = lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", f->path);
    if (rc == LOUPE_OK) lp_weight_slots(hp, &m->w, slots, n);
    for (int i = 0; i < n && rc == LOUPE_OK; i++) {
        const lp_loupe_tensor *t = find_tensor(f, slots[i].name);
        if (!t) {
            if (slots[i].required)
                rc = lp_fail(LOUPE_ERR_MISSING, "%s: required tensor %s missing", f->path,
                             slots[i].name);
            continue;
        }
        used[t - f->t] = 1;
        rc = bind_slot(m, f, &slots[i], t);
    }
    for (int i = 0; i < f->n_tensors && rc == LOUPE_OK; i++)
        if (!used[i])
            rc = lp_fail(LOUPE_ERR_FORMAT, "%s: tensor %s is not a weight of a %s model with "
                         "these hyper-parameters", f->path, f->t[i].name,
                         hp->arch == LP_ARCH_GPT2 ? "gpt2" : "llama");
    if (rc == LOUPE_OK && hp->tied_head) m->w.lm_head = m->w.tok_embd;
    free(slots);
    free(used);
    return rc;
}

/* ------------------------------------------------------------ entry points */

static loupe_status load_parsed(loupe_model *m, const lp_loupe_file *f) {
    LP_TRY(read_hparams(f, &m->hp));
    lp_tok_spec spec;
    loupe_status rc = read_tokenizer(f, &spec);
    if (rc == LOUPE_OK) rc = lp_tok_build(&spec, &m->tok);
    lp_tok_spec_free(&spec);
    if (rc != LOUPE_OK) {
        lp_error_prefix("%s: tokenizer", f->path);
        return rc;
    }
    LP_TRY(lp_hparams_validate(m));
    return bind_weights(m, f);
}

loupe_status lp_load_loupe(loupe_model *m, const char *path) {
    lp_mapping map;
    LP_TRY(lp_map_file(path, &map));
    lp_loupe_file f;
    loupe_status rc = lp_loupe_parse(map.data, map.size, path, 0, &f);
    if (rc != LOUPE_OK) {
        lp_unmap_file(&map);
        return rc;
    }
    /* the mapping belongs to the model from here on (weights point into it) */
    if (lp_tensor_set_add_map(&m->ts, &map) < 0) {
        lp_loupe_file_free(&f);
        lp_unmap_file(&map);
        return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    }
    rc = load_parsed(m, &f);
    lp_loupe_file_free(&f);
    return rc;
}

loupe_status lp_loupe_verify(const char *path) {
    lp_mapping map;
    LP_TRY(lp_map_file(path, &map));
    lp_loupe_file f;
    loupe_status rc = lp_loupe_parse(map.data, map.size, path, 1, &f);
    lp_loupe_file_free(&f);
    lp_unmap_file(&map);
    if (rc != LOUPE_OK) return rc;
    loupe_model *m = NULL;
    loupe_model_params mp = {0};
    rc = loupe_model_open(path, &mp, &m);
    loupe_model_close(m);
    return rc;
}
