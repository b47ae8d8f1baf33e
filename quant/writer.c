/*
 * writer.c — writes an opened loupe_model as a .loupe file (docs/FORMAT.md)
 * and runs the whole `quantize` job: policy, conversion on a thread pool,
 * checksums, temp file + fsync + rename, and verification by reloading.
 *
 * Names in the file are loupe's canonical weight names (lp_weight_slots),
 * whatever the source format was: the writer stores what the model holds.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../src/error.h"
#include "../src/threadpool.h"
#include "loupe_format.h"

/* ------------------------------------------------------------ options */

void lp_quant_opts_default(lp_quant_opts *o) {
    memset(o, 0, sizeof *o);
    o->type = LP_Q8;
}

int lp_quant_type_parse(const char *s, lp_dtype *out) {
    if (!strcmp(s, "int8") || !strcmp(s, "q8") || !strcmp(s, "q8_0")) *out = LP_Q8;
    else if (!strcmp(s, "f16")) *out = LP_F16;
    else if (!strcmp(s, "f32")) *out = LP_F32;
    else return -1;
    return 0;
}

const char *lp_quant_type_name(lp_dtype t) {
    switch (t) {
    case LP_F32: return "f32";
    case LP_F16: return "f16";
    case LP_BF16: return "bf16";
    case LP_Q8:
    case LP_Q8P: return "int8";
    }
    return "?";
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void add_note(lp_quant_report *rep, const char *fmt, const char *name,
                     const char *detail) {
    if (rep->n_notes >= LOUPE_MAX_NOTES) return;
    snprintf(rep->notes[rep->n_notes++], sizeof rep->notes[0], fmt, name, detail);
}

/* ------------------------------------------------------------ metadata */

#define HPF(k, t, f) {k, t, offsetof(lp_hparams, f)}
const lp_meta_field lp_hp_fields[] = {
    HPF("hp.n_vocab", LOUPE_M_I32, n_vocab),
    HPF("hp.n_ctx", LOUPE_M_I32, n_ctx),
    HPF("hp.dim", LOUPE_M_I32, dim),
    HPF("hp.n_layers", LOUPE_M_I32, n_layers),
    HPF("hp.n_heads", LOUPE_M_I32, n_heads),
    HPF("hp.n_kv_heads", LOUPE_M_I32, n_kv_heads),
    HPF("hp.head_dim", LOUPE_M_I32, head_dim),
    HPF("hp.ffn_dim", LOUPE_M_I32, ffn_dim),
    HPF("hp.norm_eps", LOUPE_M_F32, norm_eps),
    HPF("hp.tied_head", LOUPE_M_I32, tied_head),
    HPF("hp.qkv_bias", LOUPE_M_I32, qkv_bias),
    HPF("hp.rope_theta", LOUPE_M_F32, rope_theta),
    HPF("hp.rope_neox", LOUPE_M_I32, rope_neox),
    HPF("hp.rot_dim", LOUPE_M_I32, rot_dim),
    HPF("hp.rope_factor", LOUPE_M_F32, rope_factor),
    HPF("hp.rope_low_freq_factor", LOUPE_M_F32, rope_low_freq_factor),
    HPF("hp.rope_high_freq_factor", LOUPE_M_F32, rope_high_freq_factor),
    HPF("hp.rope_orig_ctx", LOUPE_M_I32, rope_orig_ctx),
    HPF("gen.bos_id", LOUPE_M_I32, bos_id),
    HPF("gen.eos_id", LOUPE_M_I32, eos_id),
};
const int lp_n_hp_fields = sizeof lp_hp_fields / sizeof lp_hp_fields[0];

#define TKF(k, f) {k, LOUPE_M_I32, offsetof(lp_tok_spec, f)}
const lp_meta_field lp_tok_fields[] = {
    TKF("tok.bos_id", bos_id),
    TKF("tok.eos_id", eos_id),
    TKF("tok.unk_id", unk_id),
    TKF("tok.pad_id", pad_id),
    TKF("tok.add_bos", add_bos),
    TKF("tok.add_eos", add_eos),
    TKF("tok.add_prefix_space", add_prefix_space),
    TKF("tok.byte_fallback", byte_fallback),
    TKF("tok.ignore_merges", ignore_merges),
};
const int lp_n_tok_fields = sizeof lp_tok_fields / sizeof lp_tok_fields[0];

static void mb_put(lp_meta_buf *b, const void *d, size_t n) {
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void mb_u32(lp_meta_buf *b, uint32_t v) {
    uint8_t x[4];
    for (int i = 0; i < 4; i++) x[i] = (uint8_t)(v >> (8 * i));
    mb_put(b, x, 4);
}

static void mb_u64(lp_meta_buf *b, uint64_t v) {
    uint8_t x[8];
    for (int i = 0; i < 8; i++) x[i] = (uint8_t)(v >> (8 * i));
    mb_put(b, x, 8);
}

static void mb_key(lp_meta_buf *b, const char *key, uint32_t type) {
    mb_u32(b, (uint32_t)strlen(key));
    mb_put(b, key, strlen(key));
    mb_u32(b, type);
    b->n_entries++;
}

static void mb_f32(lp_meta_buf *b, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    mb_u32(b, u);
}

void lp_meta_begin(lp_meta_buf *b) {
    memset(b, 0, sizeof *b);
    mb_u64(b, 0); /* entry count, patched by lp_meta_end */
}

void lp_meta_end(lp_meta_buf *b) {
    if (b->oom) return;
    for (int i = 0; i < 8; i++) b->p[i] = (uint8_t)(b->n_entries >> (8 * i));
}

void lp_meta_i32(lp_meta_buf *b, const char *key, int32_t v) {
    mb_key(b, key, LOUPE_M_I32);
    mb_u32(b, (uint32_t)v);
}

void lp_meta_f32(lp_meta_buf *b, const char *key, float v) {
    mb_key(b, key, LOUPE_M_F32);
    mb_f32(b, v);
}

void lp_meta_str(lp_meta_buf *b, const char *key, const char *s) {
    mb_key(b, key, LOUPE_M_STR);
    mb_u64(b, strlen(s));
    mb_put(b, s, strlen(s));
}

void lp_meta_arr_str(lp_meta_buf *b, const char *key, const char *const *s, int n) {
    mb_key(b, key, LOUPE_M_ARR_STR);
    mb_u64(b, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        size_t len = s[i] ? strlen(s[i]) : 0;
        mb_u64(b, len);
        mb_put(b, s[i], len);
    }
}

void lp_meta_arr_f32(lp_meta_buf *b, const char *key, const float *v, int n) {
    mb_key(b, key, LOUPE_M_ARR_F32);
    mb_u64(b, (uint64_t)n);
    for (int i = 0; i < n; i++) mb_f32(b, v[i]);
}

void lp_meta_arr_u8(lp_meta_buf *b, const char *key, const uint8_t *v, int n) {
    mb_key(b, key, LOUPE_M_ARR_U8);
    mb_u64(b, (uint64_t)n);
    mb_put(b, v, (size_t)n);
}

void lp_meta_arr_i32(lp_meta_buf *b, const char *key, const int *v, int n) {
    mb_key(b, key, LOUPE_M_ARR_I32);
    mb_u64(b, (uint64_t)n);
    for (int i = 0; i < n; i++) mb_u32(b, (uint32_t)v[i]);
}

/* ------------------------------------------------------------ plan */

/* One tensor to write: its source, target type and place in the file.
 * dst_type LP_Q8P is int8 (type 3) in layout 1. */
typedef struct {
    const lp_weight_slot *slot;
    lp_dtype src_type, dst_type;
    const void *src;
    int n_dims;
    int64_t shape[LP_MAX_DIMS];
    int64_t rows, cols;   /* as a matrix (vectors: 1 row) */
    uint64_t offset, size, checksum;
} lp_plan_item;

/* Type policy: vectors stay f32; matmul weights the chosen type; --keep
 * rules override matrices; int8 needs cols % 32 == 0 and is packed for the
 * kernels (LP_Q8P, layout 1) unless format 1.0 is asked for.
 * The token embedding is only looked up, one row per token, so int8 would
 * save little time for its rounding error, and f32 doubles the file for
 * nothing (f16 is lossless in practice: KL ~1e-6, docs/QUANTIZATION.md).
 * So: f32 for --type f32, else f16; an embedding that is already int8 in
 * the source (GGUF Q8_0) stays int8, the one lossless choice. But when the
 * output head is tied to it (GPT-2), it is also a matmul weight read in full
 * for every generated token, the largest one: then --type int8 makes it
 * int8 like the other matmuls (as a GGUF Q8_0 file has it). */
static lp_dtype embed_type(const lp_mat *src, lp_dtype type, int tied_head) {
    if (type == LP_F32) return LP_F32;
    if (type == LP_Q8 && (tied_head || src->type == LP_Q8 || src->type == LP_Q8P)) return LP_Q8;
    return LP_F16;
}

static lp_dtype choose_type(const lp_weight_slot *s, const lp_mat *src, int tied_head,
                            const lp_quant_opts *o, lp_quant_report *rep) {
    if (s->kind == LP_SLOT_VEC) {
        for (int k = 0; k < o->n_keep; k++)
            if (fnmatch(o->keep[k].glob, s->name, 0) == 0 && o->keep[k].type != LP_F32) {
                add_note(rep, "%s: %s", s->name, "a vector weight, kept f32");
                break;
            }
        return LP_F32;
    }
    lp_dtype t = s->kind == LP_SLOT_EMBED ? embed_type(src, o->type, tied_head) : o->type;
    for (int k = 0; k < o->n_keep; k++)
        if (fnmatch(o->keep[k].glob, s->name, 0) == 0) {
            t = o->keep[k].type;
            break;
        }
    if (t == LP_Q8 && src->cols % LP_QK8) {
        t = src->type == LP_F16 ? LP_F16 : LP_F32;
        add_note(rep, "%s: %s", s->name,
                 t == LP_F16 ? "n_in not a multiple of 32, kept f16"
                             : "n_in not a multiple of 32, kept f32");
    }
    return t == LP_Q8 && !o->format_1_0 ? LP_Q8P : t;
}

/* Bytes of a (rows, cols) matrix of type t; packed int8 with its padding. */
static uint64_t mat_bytes(lp_dtype t, int64_t rows, int64_t cols) {
    if (t == LP_Q8P) return lp_q8p_bytes(rows, cols);
    return lp_dtype_bytes(t, (uint64_t)rows * (uint64_t)cols);
}

static loupe_status build_plan(const loupe_model *m, lp_weights *w,
                               const lp_quant_opts *o, lp_quant_report *rep,
                               lp_weight_slot **slots_out, lp_plan_item **items_out,
                               int *n_out) {
    int n_slots = lp_weight_slots(&m->hp, w, NULL, 0);
    lp_weight_slot *slots = calloc((size_t)n_slots, sizeof *slots);
    lp_plan_item *items = calloc((size_t)n_slots, sizeof *items);
    if (!slots || !items) {
        free(slots);
        free(items);
        return lp_fail(LOUPE_ERR_NOMEM, "quantize: out of memory");
    }
    lp_weight_slots(&m->hp, w, slots, n_slots);
    int n = 0;
    for (int i = 0; i < n_slots; i++) {
        const lp_weight_slot *s = &slots[i];
        lp_plan_item *it = &items[n];
        it->slot = s;
        if (s->kind == LP_SLOT_VEC) {
            if (!*s->vec) continue; /* optional weight the model does not have */
            it->src = *s->vec;
            it->src_type = it->dst_type = choose_type(s, NULL, m->hp.tied_head, o, rep);
            it->rows = s->cols ? s->rows / s->cols : 1;
            it->cols = s->cols ? s->cols : s->rows;
            it->n_dims = s->cols ? 2 : 1;
            it->shape[0] = s->cols ? it->rows : it->cols;
            it->shape[1] = s->cols ? it->cols : 0;
        } else {
            if (!s->mat->data) continue;
            if (s->mat->rows != s->rows || s->mat->cols != s->cols) {
                loupe_status rc = lp_fail(LOUPE_ERR_SHAPE, "quantize: %s is (%d, %d), "
                                          "expected (%lld, %lld)", s->name, s->mat->rows,
                                          s->mat->cols, (long long)s->rows, (long long)s->cols);
                free(slots);
                free(items);
                return rc;
            }
            it->src = s->mat->data;
            it->src_type = s->mat->type;
            it->dst_type = choose_type(s, s->mat, m->hp.tied_head, o, rep);
            it->rows = s->rows;
            it->cols = s->cols;
            it->n_dims = 2;
            it->shape[0] = s->rows;
            it->shape[1] = s->cols;
        }
        it->size = mat_bytes(it->dst_type, it->rows, it->cols);
        rep->src_bytes += mat_bytes(it->src_type, it->rows, it->cols);
        n++;
    }
    *slots_out = slots;
    *items_out = items;
    *n_out = n;
    return LOUPE_OK;
}

/* ------------------------------------------------------------ metadata */

static const char *arch_str(lp_arch a) { return a == LP_ARCH_GPT2 ? "gpt2" : "llama"; }

static const char *act_str(lp_act a) {
    return a == LP_ACT_GELU_TANH ? "gelu_tanh" : a == LP_ACT_GELU_ERF ? "gelu_erf" : "silu";
}

static const char *rope_scaling_str(lp_rope_scaling s) {
    return s == LP_ROPE_SCALING_LINEAR ? "linear" : s == LP_ROPE_SCALING_LLAMA3 ? "llama3" : "none";
}

/* Source files of a model path: the file itself, or the regular files of a
 * directory (sorted, hidden ones skipped). Names are malloc'd. */
static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int list_sources(const char *src, int is_dir, char ***out) {
    int n = 0, cap = 16;
    char **files = malloc((size_t)cap * sizeof *files);
    if (!files) return -1;
    if (!is_dir) {
        const char *base = strrchr(src, '/');
        files[n++] = strdup(base ? base + 1 : src);
    } else {
        DIR *d = opendir(src);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            char path[4096];
            struct stat st;
            snprintf(path, sizeof path, "%s/%s", src, e->d_name);
            if (e->d_name[0] == '.' || stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
            if (n == cap) {
                char **nf = realloc(files, (size_t)(cap *= 2) * sizeof *files);
                if (!nf) break;
                files = nf;
            }
            files[n++] = strdup(e->d_name);
        }
        if (d) closedir(d);
    }
    for (int i = 0; i < n; i++)
        if (!files[i]) { /* strdup failed */
            for (int j = 0; j < n; j++) free(files[j]);
            free(files);
            return -1;
        }
    qsort(files, (size_t)n, sizeof *files, cmp_str);
    *out = files;
    return n;
}

static void free_strs(char **s, int n) {
    if (!s) return;
    for (int i = 0; i < n; i++) free(s[i]);
    free(s);
}

/* Provenance: tool, options, source path, its files and their sha256. */
static loupe_status put_provenance(lp_meta_buf *b, const loupe_model *m,
                                   const lp_quant_opts *o) {
    const char *src = m->path ? m->path : "";
    lp_meta_str(b, "prov.tool", "loupe quantize " LOUPE_VERSION_STRING);
    lp_meta_str(b, "prov.source", src);
    lp_meta_str(b, "prov.source_kind", m->source_kind ? m->source_kind : "");
    lp_meta_str(b, "prov.type", lp_quant_type_name(o->type));
    char **keep = calloc((size_t)o->n_keep + 1, sizeof *keep);
    if (!keep) return lp_fail(LOUPE_ERR_NOMEM, "quantize: out of memory");
    for (int k = 0; k < o->n_keep; k++) {
        size_t len = strlen(o->keep[k].glob) + 8;
        if ((keep[k] = malloc(len)))
            snprintf(keep[k], len, "%s=%s", o->keep[k].glob, lp_quant_type_name(o->keep[k].type));
        else
            b->oom = 1;
    }
    if (!b->oom) lp_meta_arr_str(b, "prov.keep", (const char *const *)keep, o->n_keep);
    free_strs(keep, o->n_keep);

    struct stat st;
    int is_dir = stat(src, &st) == 0 && S_ISDIR(st.st_mode);
    char **files = NULL, **hex = NULL;
    int n = *src ? list_sources(src, is_dir, &files) : 0;
    if (n < 0) return lp_fail(LOUPE_ERR_NOMEM, "quantize: out of memory");
    hex = calloc((size_t)n + 1, sizeof *hex);
    loupe_status rc = hex ? LOUPE_OK : lp_fail(LOUPE_ERR_NOMEM, "quantize: out of memory");
    for (int i = 0; i < n && rc == LOUPE_OK; i++) {
        char path[4096];
        if (is_dir) snprintf(path, sizeof path, "%s/%s", src, files[i]);
        else snprintf(path, sizeof path, "%s", src);
        if (!(hex[i] = malloc(65))) rc = lp_fail(LOUPE_ERR_NOMEM, "quantize: out of memory");
        else rc = lp_sha256_file(path, hex[i]);
    }
    if (rc == LOUPE_OK) {
        lp_meta_arr_str(b, "prov.files", (const char *const *)files, n);
        lp_meta_arr_str(b, "prov.sha256", (const char *const *)hex, n);
    }
    free_strs(files, n);
    free_strs(hex, n);
    return rc;
}

static loupe_status build_meta(const loupe_model *m, const lp_quant_opts *o,
                               lp_meta_buf *b) {
    const lp_hparams *hp = &m->hp;
    lp_meta_begin(b);
    lp_meta_str(b, "hp.arch", arch_str(hp->arch));
    lp_meta_str(b, "hp.model_type", hp->model_type);
    lp_meta_str(b, "hp.act", act_str(hp->act));
    lp_meta_str(b, "hp.rope_scaling", rope_scaling_str(hp->rope_scaling));
    for (int i = 0; i < lp_n_hp_fields; i++) {
        const lp_meta_field *f = &lp_hp_fields[i];
        const char *p = (const char *)hp + f->offset;
        if (f->type == LOUPE_M_I32) lp_meta_i32(b, f->key, *(const int *)p);
        else lp_meta_f32(b, f->key, *(const float *)p);
    }

    const lp_tok_spec *t = lp_tok_get_spec(m->tok);
    if (!t) return lp_fail(LOUPE_ERR_TOKENIZER, "quantize: the model has no tokenizer spec");
    lp_meta_str(b, "tok.kind", t->kind == LP_TOK_SPM ? "spm" : "bpe_bytes");
    lp_meta_arr_str(b, "tok.pieces", (const char *const *)t->pieces, t->n_vocab);
    if (t->scores) lp_meta_arr_f32(b, "tok.scores", t->scores, t->n_vocab);
    if (t->attrs) lp_meta_arr_u8(b, "tok.attrs", t->attrs, t->n_vocab);
    lp_meta_arr_str(b, "tok.merges", (const char *const *)t->merges, t->n_merges);
    lp_meta_arr_str(b, "tok.pre_regex", (const char *const *)t->pre_regex, t->n_pre);
    if (t->pre_behavior) lp_meta_arr_u8(b, "tok.pre_behavior", t->pre_behavior, t->n_pre);
    if (t->pre_name) lp_meta_str(b, "tok.pre_name", t->pre_name);
    if (t->chat_template) lp_meta_str(b, "tok.chat_template", t->chat_template);
    lp_meta_arr_i32(b, "tok.eos_extra", t->eos_extra, t->n_eos_extra);
    for (int i = 0; i < lp_n_tok_fields; i++) {
        const lp_meta_field *f = &lp_tok_fields[i];
        lp_meta_i32(b, f->key, *(const int *)((const char *)t + f->offset));
    }
    LP_TRY(put_provenance(b, m, o));
    lp_meta_end(b);
    if (b->oom) return lp_fail(LOUPE_ERR_NOMEM, "quantize: out of memory building metadata");
    return LOUPE_OK;
}

/* ------------------------------------------------------------ conversion */

/* A conversion split into tasks of whole units: rows, or groups of 16
 * rows for a packed int8 destination. */
typedef struct {
    const lp_plan_item *it;
    void *dst;
    int64_t n_units, units_per_task;
    _Atomic int failed; /* a nonzero return of a task (-1 .. -4) */
} lp_conv_job;

static void conv_task(void *ctx, int i, int thread) {
    (void)thread;
    lp_conv_job *j = ctx;
    const lp_plan_item *it = j->it;
    int64_t u0 = (int64_t)i * j->units_per_task;
    int64_t u1 = u0 + j->units_per_task < j->n_units ? u0 + j->units_per_task : j->n_units;
    int rc = it->dst_type == LP_Q8P
                 ? lp_convert_groups_q8p(it->src_type, it->src, j->dst, it->rows, it->cols, u0, u1)
                 : lp_convert_rows(it->src_type, it->src, it->dst_type, j->dst, it->cols, u0, u1);
    if (rc) atomic_store(&j->failed, rc); /* any of them: the tensor fails */
}

static loupe_status pwrite_all(int fd, const void *buf, uint64_t n, uint64_t off,
                               const char *path) {
    const uint8_t *p = buf;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : (size_t)n;
        ssize_t w = pwrite(fd, p, chunk, (off_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            return lp_fail(LOUPE_ERR_IO, "%s: write failed: %s", path,
                           w < 0 ? strerror(errno) : "no progress");
        p += w;
        off += (uint64_t)w;
        n -= (uint64_t)w;
    }
    return LOUPE_OK;
}

/* Converts one tensor, checksums it and writes it at its offset. */
static loupe_status write_tensor(int fd, const char *path, lp_plan_item *it, lp_pool *pool) {
    if (it->src_type == it->dst_type) { /* bytes as held: no copy */
        it->checksum = lp_xxh64(it->src, (size_t)it->size, 0);
        return pwrite_all(fd, it->src, it->size, it->offset, path);
    }
    void *dst = malloc((size_t)it->size);
    if (!dst) return lp_fail(LOUPE_ERR_NOMEM, "%s: %s: out of memory (%llu bytes)", path,
                             it->slot->name, (unsigned long long)it->size);
    int n_tasks = lp_pool_size(pool) * 4;
    lp_conv_job job = {it, dst, it->dst_type == LP_Q8P ? LP_Q8P_GROUPS(it->rows) : it->rows, 0, 0};
    job.units_per_task = (job.n_units + n_tasks - 1) / n_tasks;
    if (job.units_per_task < 1) job.units_per_task = 1;
    n_tasks = (int)((job.n_units + job.units_per_task - 1) / job.units_per_task);
    lp_pool_run(pool, n_tasks, conv_task, &job);
    loupe_status rc = LOUPE_OK;
    int failed = atomic_load(&job.failed);
    if (failed == -2)
        rc = lp_fail(LOUPE_ERR_NOMEM, "%s: %s: out of memory converting", path, it->slot->name);
    else if (failed == -3)
        rc = lp_fail(LOUPE_ERR_FORMAT, "%s: %s: the source holds NaN or infinite weights, "
                     "which int8 cannot store", path, it->slot->name);
    else if (failed == -4)
        rc = lp_fail(LOUPE_ERR_FORMAT, "%s: %s: the source holds weights beyond f16's range "
                     "(|w| > 65504); keep the tensor f32 with --keep '%s=f32'", path,
                     it->slot->name, it->slot->name);
    else if (failed)
        rc = lp_fail(LOUPE_ERR_UNSUPPORTED, "%s: %s: cannot convert %s to %s", path,
                     it->slot->name, lp_quant_type_name(it->src_type),
                     lp_quant_type_name(it->dst_type));
    if (rc == LOUPE_OK) {
        it->checksum = lp_xxh64(dst, (size_t)it->size, 0);
        rc = pwrite_all(fd, dst, it->size, it->offset, path);
    }
    free(dst);
    return rc;
}

/* ------------------------------------------------------------ file */

static void put_le(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void dir_entry(uint8_t *e, const lp_plan_item *it) {
    memset(e, 0, LOUPE_DIR_ENTRY_SIZE);
    memcpy(e, it->slot->name, strlen(it->slot->name));
    int packed = it->dst_type == LP_Q8P;
    put_le(e + 48, packed ? LOUPE_T_Q8 : (uint32_t)it->dst_type, 4);
    put_le(e + 52, packed ? LOUPE_LAYOUT_Q8P : LOUPE_LAYOUT_ROWS, 4);
    put_le(e + 56, (uint32_t)it->n_dims, 4);
    for (int d = 0; d < it->n_dims; d++) put_le(e + 64 + 8 * d, (uint64_t)it->shape[d], 8);
    put_le(e + 96, it->offset, 8);
    put_le(e + 104, it->size, 8);
    put_le(e + 112, it->checksum, 8);
}

static uint64_t align_up(uint64_t x) { return (x + LOUPE_ALIGN - 1) / LOUPE_ALIGN * LOUPE_ALIGN; }

/* Where each section and tensor goes. */
typedef struct {
    uint64_t meta_off, meta_size, dir_off, dir_size, data_off, data_size, file_size;
    uint64_t tensor_bytes; /* sum of tensor sizes (no padding) */
} lp_layout;

/* header | meta | directory | data, each tensor at the next multiple of 64 */
static lp_layout plan_layout(lp_plan_item *items, int n, uint64_t meta_size) {
    lp_layout L = {0};
    L.meta_off = LOUPE_HEADER_SIZE;
    L.meta_size = meta_size;
    L.dir_off = L.meta_off + meta_size;
    L.dir_size = (uint64_t)n * LOUPE_DIR_ENTRY_SIZE;
    L.data_off = align_up(L.dir_off + L.dir_size);
    uint64_t off = L.data_off, end = L.data_off;
    for (int i = 0; i < n; i++) {
        items[i].offset = off;
        end = off + items[i].size;
        off = align_up(end);
        L.tensor_bytes += items[i].size;
    }
    L.data_size = end - L.data_off;
    L.file_size = end;
    return L;
}

static void make_header(uint8_t h[LOUPE_HEADER_SIZE], const lp_layout *L, int n,
                        const uint8_t *meta, const uint8_t *dir, int minor) {
    memset(h, 0, LOUPE_HEADER_SIZE);
    memcpy(h, LOUPE_FILE_MAGIC, LOUPE_MAGIC_LEN);
    put_le(h + 8, LOUPE_FORMAT_MAJOR, 2);
    put_le(h + 10, (uint64_t)minor, 2);
    uint32_t mark = LOUPE_ENDIAN_MARK; /* native order, as the tensor data */
    memcpy(h + 12, &mark, 4);
    put_le(h + 16, L->file_size, 8);
    put_le(h + 24, L->meta_off, 8);
    put_le(h + 32, L->meta_size, 8);
    put_le(h + 40, L->dir_off, 8);
    put_le(h + 48, L->dir_size, 8);
    put_le(h + 56, L->data_off, 8);
    put_le(h + 64, L->data_size, 8);
    put_le(h + 72, (uint32_t)n, 4);
    put_le(h + 80, lp_xxh64(meta, (size_t)L->meta_size, 0), 8);
    put_le(h + 88, lp_xxh64(dir, (size_t)L->dir_size, 0), 8);
    put_le(h + 120, lp_xxh64(h, 120, 0), 8);
}

/* Converts and writes every tensor, filling the directory; reports progress. */
static loupe_status write_tensors(int fd, const char *path, lp_plan_item *items, int n,
                                  uint8_t *dir, uint64_t total, const lp_quant_opts *o) {
    lp_pool *pool = lp_pool_new(o->n_threads);
    if (!pool) return lp_fail(LOUPE_ERR_NOMEM, "quantize: cannot start threads");
    loupe_status rc = LOUPE_OK;
    uint64_t done_bytes = 0;
    double t0 = now_s(); /* rates count tensor work, not source hashing */
    for (int i = 0; i < n && rc == LOUPE_OK; i++) {
        rc = write_tensor(fd, path, &items[i], pool);
        done_bytes += items[i].size;
        dir_entry(dir + (size_t)i * LOUPE_DIR_ENTRY_SIZE, &items[i]);
        if (rc == LOUPE_OK && o->progress) {
            lp_quant_progress p = {i + 1, n, done_bytes, total, now_s() - t0, items[i].slot->name};
            o->progress(o->user, &p);
        }
    }
    lp_pool_free(pool);
    return rc;
}

/* Writes the whole file into fd (fresh, empty); path names it in messages. */
static loupe_status write_fd(const loupe_model *m, int fd, const char *path,
                             const lp_quant_opts *o, lp_quant_report *rep) {
    double t0 = now_s();
    lp_weights w = m->w; /* slots point into a private shallow copy */
    lp_layer *layers = calloc((size_t)m->hp.n_layers + 1, sizeof *layers);
    if (!layers) return lp_fail(LOUPE_ERR_NOMEM, "quantize: out of memory");
    if (m->hp.n_layers) memcpy(layers, m->w.layers, (size_t)m->hp.n_layers * sizeof *layers);
    w.layers = layers;

    lp_weight_slot *slots = NULL;
    lp_plan_item *items = NULL;
    int n = 0;
    lp_meta_buf meta = {0};
    uint8_t *dir = NULL, h[LOUPE_HEADER_SIZE];
    loupe_status rc = build_plan(m, &w, o, rep, &slots, &items, &n);
    if (rc == LOUPE_OK) rc = build_meta(m, o, &meta);
    if (rc == LOUPE_OK && !(dir = calloc((size_t)n + 1, LOUPE_DIR_ENTRY_SIZE)))
        rc = lp_fail(LOUPE_ERR_NOMEM, "quantize: out of memory");
    lp_layout L = plan_layout(items, n, meta.n);
    if (rc == LOUPE_OK && ftruncate(fd, (off_t)L.file_size) != 0) /* gaps read as zeros */
        rc = lp_fail(LOUPE_ERR_IO, "%s: cannot size to %llu bytes: %s", path,
                     (unsigned long long)L.file_size, strerror(errno));
    if (rc == LOUPE_OK) rc = write_tensors(fd, path, items, n, dir, L.tensor_bytes, o);
    if (rc == LOUPE_OK) {
        make_header(h, &L, n, meta.p, dir, o->format_1_0 ? 0 : LOUPE_FORMAT_MINOR);
        rc = pwrite_all(fd, meta.p, L.meta_size, L.meta_off, path);
    }
    if (rc == LOUPE_OK) rc = pwrite_all(fd, dir, L.dir_size, L.dir_off, path);
    if (rc == LOUPE_OK) rc = pwrite_all(fd, h, sizeof h, 0, path); /* last: marks it whole */
    if (rc == LOUPE_OK && fsync(fd) != 0)
        rc = lp_fail(LOUPE_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
    rep->dst_bytes = L.file_size;
    rep->n_tensors = n;
    rep->seconds = now_s() - t0;
    free(dir);
    free(meta.p);
    free(items);
    free(slots);
    free(layers);
    return rc;
}

loupe_status lp_loupe_write(const loupe_model *m, const char *path, const lp_quant_opts *o,
                            lp_quant_report *rep) {
    lp_quant_report local;
    if (!rep) rep = &local;
    memset(rep, 0, sizeof *rep);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return lp_fail(LOUPE_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    loupe_status rc = write_fd(m, fd, path, o, rep);
    if (close(fd) != 0 && rc == LOUPE_OK)
        rc = lp_fail(LOUPE_ERR_IO, "%s: close failed: %s", path, strerror(errno));
    return rc;
}

/* ------------------------------------------------------------ the job */

/* A temp file in dst's directory: anonymous (O_TMPFILE: nothing is left
 * behind even on SIGKILL) where the file system allows, else a hidden
 * named one. *tmp gets a path that opens it. */
static int open_temp(const char *dir, const char *base, char *tmp, size_t cap, int *anon) {
#ifdef O_TMPFILE
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
    if (fd >= 0) {
        *anon = 1;
        int len = snprintf(tmp, cap, "/proc/self/fd/%d", fd);
        (void)len;
        if (access(tmp, R_OK) == 0) return fd;
        close(fd);
    }
#endif
    *anon = 0;
    int len = snprintf(tmp, cap, "%s/.%s.partial-XXXXXX", dir, base);
    if (len < 0 || (size_t)len >= cap) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd2 = mkstemp(tmp);
    if (fd2 >= 0) fchmod(fd2, 0644);
    return fd2;
}

static void split_path(const char *path, char *dir, size_t cap, const char **base) {
    const char *slash = strrchr(path, '/');
    if (!slash) {
        snprintf(dir, cap, ".");
        *base = path;
    } else {
        snprintf(dir, cap, "%.*s", slash == path ? 1 : (int)(slash - path), path);
        *base = slash + 1;
    }
}

/* Gives the verified temp file its final name atomically. */
static loupe_status publish(const char *tmp, int anon, const char *dir, const char *base,
                            const char *dst) {
    char named[8400];
    const char *from = tmp;
    if (anon) { /* an anonymous file needs a name first; rename then replaces dst */
        int len = snprintf(named, sizeof named, "%s/.%s.partial-%ld", dir, base, (long)getpid());
        if (len < 0 || (size_t)len >= sizeof named)
            return lp_fail(LOUPE_ERR_IO, "%s: path too long", dst);
        unlink(named);
        if (linkat(AT_FDCWD, tmp, AT_FDCWD, named, AT_SYMLINK_FOLLOW) != 0)
            return lp_fail(LOUPE_ERR_IO, "%s: cannot link the temp file: %s", dst,
                           strerror(errno));
        from = named;
    }
    if (rename(from, dst) != 0) {
        int e = errno;
        unlink(from);
        return lp_fail(LOUPE_ERR_IO, "%s: cannot rename the temp file into place: %s", dst,
                       strerror(e));
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { /* make the rename itself durable */
        fsync(dfd);
        close(dfd);
    }
    return LOUPE_OK;
}

loupe_status lp_quantize_file(const char *src, const char *dst, const lp_quant_opts *o,
                              lp_quant_report *rep) {
    lp_quant_report local;
    if (!rep) rep = &local;
    memset(rep, 0, sizeof *rep);
    if (o->type != LP_F32 && o->type != LP_F16 && o->type != LP_Q8)
        return lp_fail(LOUPE_ERR_ARG, "quantize: type must be f32, f16 or int8");
    struct stat ss, ds;
    if (stat(src, &ss) != 0)
        return lp_fail(LOUPE_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    if (stat(dst, &ds) == 0) {
        if (ss.st_dev == ds.st_dev && ss.st_ino == ds.st_ino)
            return lp_fail(LOUPE_ERR_ARG, "%s: refusing to overwrite the source", dst);
        if (S_ISDIR(ds.st_mode)) return lp_fail(LOUPE_ERR_ARG, "%s: is a directory", dst);
        if (!o->force)
            return lp_fail(LOUPE_ERR_ARG, "%s: exists (use --force to overwrite)", dst);
    }
    char dir[4096], tmp[4200];
    const char *base;
    split_path(dst, dir, sizeof dir, &base);

    loupe_model *m = NULL;
    loupe_model_params mp = {o->n_threads};
    LP_TRY(loupe_model_open(src, &mp, &m));
    int anon = 0;
    int fd = open_temp(dir, base, tmp, sizeof tmp, &anon);
    if (fd < 0) {
        int e = errno;
        loupe_model_close(m);
        return lp_fail(LOUPE_ERR_IO, "%s: cannot create a temp file in %s: %s", dst, dir,
                       strerror(e));
    }
    loupe_status rc = write_fd(m, fd, dst, o, rep);
    loupe_model_close(m);
    if (rc == LOUPE_OK) {
        double t0 = now_s();
        rc = lp_loupe_verify(tmp);
        if (rc != LOUPE_OK) lp_error_prefix("%s: verification of the written file failed", dst);
        rep->seconds += now_s() - t0;
    }
    if (rc == LOUPE_OK) rc = publish(tmp, anon, dir, base, dst);
    else if (!anon) unlink(tmp);
    /* The pages just written sit in the page cache as small folios, and a
     * mapping of them keeps 4 KiB TLB entries: decoding from such a file
     * measured 7-17% slower than from the same bytes read back cold, which
     * the kernel caches in large folios mapped by 2 MiB entries. The data
     * is on disk (fsync), so dropping the clean pages loses nothing. */
    if (rc == LOUPE_OK) /* a length past the end: len 0 would keep the partial last page */
        posix_fadvise(fd, 0, (off_t)(rep->dst_bytes | 0xfffff) + 1, POSIX_FADV_DONTNEED);
    close(fd);
    return rc;
}
