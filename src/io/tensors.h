/*
 * tensors.h — what every checkpoint reader produces: a set of named tensors
 * pointing into read-only file mappings, plus (for GGUF) a metadata table.
 * Readers validate every offset, size and count against the file before
 * trusting it; the model binder (src/model_load.c) then checks shapes.
 */
#ifndef LOUPE_TENSORS_H
#define LOUPE_TENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "../../simd/kernels.h"
#include "loupe.h"

#define LP_MAX_DIMS 4

/* A read-only memory mapping of a whole file. */
typedef struct {
    char *path;
    const uint8_t *data;
    size_t size;
} lp_mapping;

loupe_status lp_map_file(const char *path, lp_mapping *out);
void lp_unmap_file(lp_mapping *m);

typedef struct {
    char *name;
    lp_dtype type;
    int n_dims;
    int64_t shape[LP_MAX_DIMS]; /* PyTorch order: outermost first, so a
                                   Linear weight is (n_out, n_in). GGUF's
                                   ne[] is reversed into this order. */
    const void *data;           /* into a mapping; checked in bounds */
    uint64_t nbytes;
    uint64_t file_offset;       /* for messages */
    const char *file;           /* path of the file it came from */
} lp_tensor_info;

/* ---- GGUF metadata values (only what loupe reads is kept typed) ---- */
typedef enum {
    LP_META_U8, LP_META_I8, LP_META_U16, LP_META_I16, LP_META_U32, LP_META_I32,
    LP_META_F32, LP_META_BOOL, LP_META_STRING, LP_META_ARRAY, LP_META_U64,
    LP_META_I64, LP_META_F64
} lp_meta_type;

typedef struct {
    char *key;
    lp_meta_type type;
    lp_meta_type arr_type;  /* for arrays */
    uint64_t arr_n;         /* for arrays */
    union {
        int64_t i; uint64_t u; double f; int b;
        struct { const char *s; uint64_t len; } str; /* into the mapping */
    } v;
    const uint8_t *arr_data; /* raw array payload inside the mapping */
    const char **arr_strs;   /* string arrays: arr_n pointers into the mapping */
    uint64_t *arr_lens;      /* ...and their lengths (owned arrays) */
} lp_meta;

typedef struct {
    lp_tensor_info *t;
    int n;
    lp_mapping *maps;
    int n_maps;
    lp_meta *meta; /* GGUF only */
    int n_meta;
    uint32_t gguf_version;
    /* name index (open addressing, slots hold tensor index + 1), built by
       lp_tensor_set_index; lp_tensor_find scans linearly if it is stale */
    int *hash;
    int hash_cap, hash_n;
} lp_tensor_set;

void lp_tensor_set_free(lp_tensor_set *ts);
const lp_tensor_info *lp_tensor_find(const lp_tensor_set *ts, const char *name);
const lp_meta *lp_meta_find(const lp_tensor_set *ts, const char *key);
const char *lp_dtype_name(lp_dtype t);
/* Bytes for n elements of type t (n must be a multiple of 32 for Q8). */
uint64_t lp_dtype_bytes(lp_dtype t, uint64_t n);

/* ---- helpers for readers ---- */
/* Moves *map into ts (map is zeroed). Returns its index, -1 on OOM. */
int lp_tensor_set_add_map(lp_tensor_set *ts, lp_mapping *map);
/* Appends a zeroed tensor named name[0..len) (copied); NULL on OOM. */
lp_tensor_info *lp_tensor_set_add(lp_tensor_set *ts, const char *name, size_t len);
/* Drops tensors, mappings and metadata added after the counts given
   (a reader's error path). */
void lp_tensor_set_truncate(lp_tensor_set *ts, int n, int n_maps, int n_meta);
/* Rebuilds the name index; LOUPE_ERR_FORMAT if a name occurs twice. */
loupe_status lp_tensor_set_index(lp_tensor_set *ts);
/* Gives back the resident pages of [p, p + n) if that range lies in one of
   ts's mappings (a tensor copied at load is not read from the file again):
   only whole pages inside the range, so neighbours stay resident; reading
   them again faults them back in from the file. No-op elsewhere. */
void lp_tensor_set_release(const lp_tensor_set *ts, const void *p, uint64_t n);

/* Readers. path: a file. Append to ts (so shards accumulate). */
loupe_status lp_read_safetensors(const char *path, lp_tensor_set *ts);
loupe_status lp_read_gguf(const char *path, lp_tensor_set *ts);

#endif
