/*
 * loupe_format.h — the packed .loupe weight file (docs/FORMAT.md describes
 * it byte by byte): constants, the parsed view readers share, checksums,
 * the int8/f16 converters and the writer behind the `quantize` tool.
 *
 * A .loupe file is self-contained: header | metadata | tensor directory |
 * tensor data (each tensor 64-byte aligned). All integers little-endian.
 */
#ifndef LOUPE_FORMAT_H
#define LOUPE_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include "../src/model.h"
#include "blocks.h"

/* ------------------------------------------------------------ constants */

/* 8 bytes: "LOUPE", CR, LF, SUB (like PNG's signature: a text-mode copy
 * that rewrites line ends is caught at once). */
#define LOUPE_FILE_MAGIC "LOUPE\r\n\x1a"
#define LOUPE_MAGIC_LEN 8
#define LOUPE_FORMAT_MAJOR 1
#define LOUPE_FORMAT_MINOR 1 /* 1.1: int8 matrices packed (layout 1) */
#define LOUPE_ENDIAN_MARK 0x01020304u /* reads back as this on a LE host */
#define LOUPE_HEADER_SIZE 128
#define LOUPE_DIR_ENTRY_SIZE 128
#define LOUPE_NAME_MAX 48             /* name field incl. at least one NUL */
#define LOUPE_ALIGN 64                /* tensor data alignment */
#define LOUPE_MAX_TENSORS (1 << 20)
#define LOUPE_MAX_META (1 << 16)      /* metadata entries */

/* Tensor element types in the file (same numbers as lp_dtype). */
enum { LOUPE_T_F32 = 0, LOUPE_T_F16 = 1, LOUPE_T_Q8 = 3 };
/* Tensor layouts (directory entry field). 0: row-major rows of elements or
 * of int8 blocks. 1 (format 1.1): a 2-D int8 matrix packed for the matmul
 * kernels, the bytes of lp_q8p_pack (quant/blocks.h), padding rows included;
 * readers hand it on as LP_Q8P. A reader refuses layouts it does not know,
 * which is why a new layout needs only a minor version. */
enum { LOUPE_LAYOUT_ROWS = 0, LOUPE_LAYOUT_Q8P = 1 };

/* ------------------------------------------------------------ checksums */

/* xxHash64 (seed 0 in the file) of n bytes. */
uint64_t lp_xxh64(const void *data, size_t n, uint64_t seed);

/* SHA-256, streaming (provenance of the source files). */
typedef struct {
    uint32_t h[8];
    uint64_t n_bytes;
    uint8_t buf[64];
    size_t n_buf;
} lp_sha256;

void lp_sha256_init(lp_sha256 *s);
void lp_sha256_update(lp_sha256 *s, const void *data, size_t n);
void lp_sha256_final(lp_sha256 *s, uint8_t out[32]);
/* Hex digest of a whole file into hex (65 bytes). */
loupe_status lp_sha256_file(const char *path, char hex[65]);

/* ------------------------------------------------------------ converters */

/* GGUF Q8_0: per block of 32, d = max|x| / 127, q = roundf(x * (1/d)),
 * d stored as fp16 (the f32 d is used for q, as ggml does). n % 32 == 0.
 * Returns how many x were NaN or infinite (stored as 0, left out of d). */
int lp_quantize_q8(const float *x, lp_block_q8 *y, int64_t n);
void lp_dequantize_q8(const lp_block_q8 *x, float *y, int64_t n);

/* Converts rows [r0, r1) of a (rows, cols) matrix from src type st to dst
 * type dt (F32, F16, BF16, Q8 or Q8P source, Q8P being a whole packed
 * matrix; F32, F16, Q8 destination, row-major; Q8 -> Q8 and Q8P -> Q8 move
 * the blocks bit for bit). Returns 0; -1 if the pair is not supported or
 * cols is not a multiple of 32 where int8 is involved; -2 out of memory;
 * -3 if a NaN or infinite value was quantized to int8, -4 if a finite value
 * overflowed f16 (|x| > 65504) (all rows written either way). */
int lp_convert_rows(lp_dtype st, const void *src, lp_dtype dt, void *dst,
                    int64_t cols, int64_t r0, int64_t r1);
/* Writes groups [g0, g1) of 16 rows of the packed int8 matrix dst
 * (lp_q8p_bytes(rows, cols) bytes) from a (rows, cols) source of type st
 * (F32, F16, BF16 quantized as lp_quantize_q8; Q8 and Q8P only move bytes).
 * Returns 0, -1 (unsupported type, cols % 32), -2 (out of memory) or -3
 * (a NaN or infinite value). */
int lp_convert_groups_q8p(lp_dtype st, const void *src, void *dst, int64_t rows,
                          int64_t cols, int64_t g0, int64_t g1);

/* ------------------------------------------------------------ weight slots */

/* One named weight of lp_weights: where it lives and its expected shape.
 * The writer and the reader walk the same list, so names and shapes agree
 * by construction. */
typedef enum { LP_SLOT_MATMUL, LP_SLOT_EMBED, LP_SLOT_VEC } lp_slot_kind;

typedef struct {
    char name[LOUPE_NAME_MAX];
    lp_slot_kind kind;
    lp_mat *mat;          /* MATMUL / EMBED slots */
    const float **vec;    /* VEC slots (f32 only) */
    int64_t rows, cols;   /* vectors: rows = n, cols = 0 (1-D) or the inner
                             dim of a 2-D vector weight (position table) */
    int required;         /* the architecture needs it */
} lp_weight_slot;

/* Fills out[0..cap) with the slots of a model with hyper-parameters hp whose
 * weights are (or will be) in w; returns the slot count (call with cap 0 to
 * size). The lm_head slot exists only when the head is not tied. */
int lp_weight_slots(const lp_hparams *hp, lp_weights *w, lp_weight_slot *out,
                    int cap);

/* ------------------------------------------------------------ metadata */

/* Value types of metadata entries. */
enum {
    LOUPE_M_I32 = 1,     /* int32 */
    LOUPE_M_F32 = 2,     /* IEEE binary32 */
    LOUPE_M_STR = 3,     /* u64 length + UTF-8 bytes (no NUL) */
    LOUPE_M_ARR_STR = 4, /* u64 count + count strings as above */
    LOUPE_M_ARR_F32 = 5, /* u64 count + count binary32 */
    LOUPE_M_ARR_U8 = 6,  /* u64 count + count bytes */
    LOUPE_M_ARR_I32 = 7  /* u64 count + count int32 */
};

/* A fixed-type scalar field of a struct stored under a key. */
typedef struct {
    const char *key;
    uint32_t type; /* LOUPE_M_I32 (an int field) or LOUPE_M_F32 (a float) */
    size_t offset;
} lp_meta_field;

extern const lp_meta_field lp_hp_fields[];  /* lp_hparams scalars */
extern const int lp_n_hp_fields;
extern const lp_meta_field lp_tok_fields[]; /* lp_tok_spec scalars */
extern const int lp_n_tok_fields;

/* Metadata serializer: sets oom on allocation failure, checked once. */
typedef struct {
    uint8_t *p;
    size_t n, cap;
    uint64_t n_entries;
    int oom;
} lp_meta_buf;

void lp_meta_begin(lp_meta_buf *b);
void lp_meta_end(lp_meta_buf *b); /* patches the entry count */
void lp_meta_i32(lp_meta_buf *b, const char *key, int32_t v);
void lp_meta_f32(lp_meta_buf *b, const char *key, float v);
void lp_meta_str(lp_meta_buf *b, const char *key, const char *s);
void lp_meta_arr_str(lp_meta_buf *b, const char *key, const char *const *s, int n);
void lp_meta_arr_f32(lp_meta_buf *b, const char *key, const float *v, int n);
void lp_meta_arr_u8(lp_meta_buf *b, const char *key, const uint8_t *v, int n);
void lp_meta_arr_i32(lp_meta_buf *b, const char *key, const int *v, int n);

/* A parsed entry: points into the file, already bounds-checked. */
typedef struct {
    const char *key; /* not NUL-terminated */
    uint32_t key_len, type;
    uint64_t count;     /* array elements or string bytes; 1 for scalars */
    const uint8_t *val; /* payload after the count */
    uint64_t val_size;
} lp_loupe_meta;

/* ------------------------------------------------------------ parsed file */

typedef struct {
    char name[LOUPE_NAME_MAX];
    lp_dtype type;              /* LP_Q8P for an int8 tensor in layout 1 */
    uint32_t layout;
    int n_dims;
    int64_t shape[LP_MAX_DIMS]; /* outermost first */
    uint64_t offset, size;      /* absolute, bytes */
    uint64_t checksum;          /* xxh64 of the data */
} lp_loupe_tensor;

typedef struct {
    const uint8_t *data; /* whole file (a mapping; not owned) */
    uint64_t size;
    const char *path;    /* for messages */
    uint16_t major, minor;
    uint64_t meta_off, meta_size, dir_off, dir_size, data_off, data_size;
    int n_tensors;
    lp_loupe_tensor *t;  /* (n_tensors) owned */
    lp_loupe_meta *meta; /* (n_meta) owned */
    int n_meta;
} lp_loupe_file;

/* Validates header, metadata and directory (checksums included, every
 * offset/size/count checked against the file); with verify_data also every
 * tensor's checksum. */
loupe_status lp_loupe_parse(const uint8_t *data, uint64_t size, const char *path,
                            int verify_data, lp_loupe_file *out);
void lp_loupe_file_free(lp_loupe_file *f);
/* The metadata entry named key, or NULL. */
const lp_loupe_meta *lp_loupe_meta_find(const lp_loupe_file *f, const char *key);
/* Maps path and runs lp_loupe_parse(verify_data = 1) plus a full model load;
 * the `--verify` path. */
loupe_status lp_loupe_verify(const char *path);

/* ------------------------------------------------------------ writer */

typedef struct {
    char glob[LOUPE_NAME_MAX * 2]; /* fnmatch pattern on tensor names */
    lp_dtype type;                 /* F32, F16 or Q8 */
} lp_keep_rule;

typedef struct {
    int tensors_done, n_tensors;
    uint64_t bytes_done, bytes_total; /* output bytes */
    double seconds;                   /* since the first tensor started */
    const char *name;                 /* tensor just written */
} lp_quant_progress;

typedef struct {
    lp_dtype type;              /* matmul weights: LP_F32, LP_F16, LP_Q8 */
    int n_threads;              /* 0 = all cores */
    int force;                  /* overwrite an existing dst */
    const lp_keep_rule *keep;   /* (n_keep) first match wins */
    int n_keep;
    int format_1_0;             /* write format 1.0: int8 matrices row-major
                                   (layout 0), for loupe 1.0 readers */
    void (*progress)(void *user, const lp_quant_progress *p);
    void *user;
} lp_quant_opts;

#define LOUPE_MAX_NOTES 64
typedef struct {
    uint64_t src_bytes;    /* source weights as the model held them */
    uint64_t dst_bytes;    /* size of the written file */
    int n_tensors;
    double seconds;
    int n_notes;
    char notes[LOUPE_MAX_NOTES][160]; /* e.g. tensors kept at f32 */
} lp_quant_report;

void lp_quant_opts_default(lp_quant_opts *o);
/* Parses "int8" / "q8" / "f16" / "f32" into *out; -1 if unknown. */
int lp_quant_type_parse(const char *s, lp_dtype *out);
const char *lp_quant_type_name(lp_dtype t); /* "f32", "f16", "int8" */

/* Writes an opened model to path (plain write, no temp file). */
loupe_status lp_loupe_write(const loupe_model *m, const char *path,
                            const lp_quant_opts *o, lp_quant_report *rep);
/* The whole `quantize` job: refuses dst == src and an existing dst unless
 * o->force; opens src; writes a temp file beside dst, fsyncs it, verifies
 * it (every checksum, full reload), then renames it over dst. */
loupe_status lp_quantize_file(const char *src, const char *dst,
                              const lp_quant_opts *o, lp_quant_report *rep);

#endif /* LOUPE_FORMAT_H */
