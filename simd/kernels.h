/*
 * kernels.h — the kernel table. Every numeric inner loop of loupe goes
 * through one of these function pointers; simd/scalar.c holds the reference
 * implementation of each, and each ISA file (avx2.c, avx512.c, neon.c) fills
 * a table with its own versions where it has them and the scalar ones
 * elsewhere. dispatch.c picks the table once at start-up.
 *
 * simd/ knows nothing about models: only vectors, matrices and blocks.
 * Shapes are written (rows, cols), row-major. Matrix weights are stored
 * (n_out, n_in): one row per output feature, as in nn.Linear.
 */
#ifndef LOUPE_KERNELS_H
#define LOUPE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "../quant/blocks.h"

/* Element type of a matrix or a KV cache. */
typedef enum {
    LP_F32 = 0,
    LP_F16 = 1,
    LP_BF16 = 2, /* accepted as a source only; converted at load */
    LP_Q8 = 3,   /* lp_block_q8 rows; n_in must be a multiple of 32 */
    LP_Q8P = 4   /* int8 packed for the kernels (quant/blocks.h); in memory only */
} lp_dtype;

/* 1/d for a block scale d = max|x| / 127, or 0 when d is below the
 * smallest normal float (max|x| < 1.5e-36): from d < 2^-128 on, 1/d
 * overflows to inf and x * (1/d) to inf or NaN, whose conversion to int is
 * undefined, so such a block quantizes to q = 0 on every ISA (its values
 * are far below anything a product can resolve). */
#define LP_Q8_MIN_SCALE 0x1p-126f
static inline float lp_q8_inverse(float d) {
    return d >= LP_Q8_MIN_SCALE ? 1.0f / d : 0.0f;
}

/* A block holding NaN or inf quantizes to q = 0, corr = 0, d = NaN: every
 * product with it is NaN (no undefined float-to-int conversion), as in f32. */
static inline void lp_q8a_nonfinite(int8_t *qs, float *d, int32_t *corr) {
    for (int j = 0; j < LP_QK8; j++) qs[j] = 0;
    *d = __builtin_nanf("");
    *corr = 0;
}

/* T activation rows quantized for gemm_q8p by quantize_q8a: per block of
 * 32, d = max|x| / 127 (f32, not rounded to fp16), q = round(x / d), and
 * corr = -128 * sum(q) (undoes the +128 of packed weights). */
typedef struct {
    const int8_t *qs;     /* (T, n_in) */
    const float *d;       /* (T, n_in/32) */
    const int32_t *corr;  /* (T, n_in/32) */
    const int8_t *tiles;  /* optional: the same rows as pack_q8a laid them out
                             for this table's gemm_q8p, or NULL */
} lp_q8_act;

/* Arguments of one attention call: T queries at absolute positions
 * pos0..pos0+T-1, each attending causally to keys 0..its own position.
 * Grouped-query: query head h reads KV head h / (n_heads / n_kv_heads).
 * The cache layout is given by two strides: the session keeps each KV
 * head's keys contiguous (kv_row_ld = head_dim, kv_head_ld = n_ctx *
 * head_dim), so a thread taking some heads reads whole blocks of memory. */
typedef struct {
    int T, pos0;
    int n_heads, n_kv_heads, head_dim;
    float scale;          /* usually 1/sqrt(head_dim) */
    const float *q;       /* (T, n_heads*head_dim) */
    const void *k, *v;    /* key/value j of KV head g: head_dim kv_type elements
                             at j * kv_row_ld + g * kv_head_ld */
    size_t kv_row_ld;     /* elements from one position to the next */
    size_t kv_head_ld;    /* elements from one KV head to the next */
    lp_dtype kv_type;     /* LP_F32 or LP_F16 */
    float *out;           /* (T, n_heads*head_dim) */
    float *probs;         /* optional (n_heads, T, probs_ld) softmax weights;
                             NULL = not wanted (costs nothing) */
    int probs_ld;         /* row stride of probs, >= pos0+T */
    float *scratch;       /* per-thread scratch of lp_attn_scratch_floats(pos0+T,
                             head_dim) floats, 64-byte aligned */
} lp_attn_args;

/* Where query head h's KV head starts in k and v, in elements. */
static inline size_t lp_attn_kv_off(const lp_attn_args *a, int h) {
    return (size_t)(h / (a->n_heads / a->n_kv_heads)) * a->kv_head_ld;
}

/* Blocked prefill attention (avx512.c, avx2.c, neon.c) takes up to
 * LP_ATTN_QB queries at a time, one per vector lane, and copies keys and
 * values LP_ATTN_KC at a time. */
#define LP_ATTN_QB 16
#define LP_ATTN_KC 64
/* Calls with fewer queries (decode) take one query at a time. */
#define LP_ATTN_MIN_T 8

/* Floats of scratch one thread needs for an attention call over n_keys
 * keys, in any table: scores (n_keys rounded up to LP_ATTN_KC, QB), queries
 * and outputs transposed (2, head_dim rounded up to 16, QB), one chunk of
 * keys or values (KC, head_dim rounded up to 16). A multiple of 16. */
static inline size_t lp_attn_scratch_floats(int n_keys, int head_dim) {
    const size_t hdp = ((size_t)head_dim + 15) / 16 * 16;
    const size_t keys = ((size_t)n_keys + LP_ATTN_KC - 1) / LP_ATTN_KC * LP_ATTN_KC;
    return keys * LP_ATTN_QB + 2 * hdp * LP_ATTN_QB + (size_t)LP_ATTN_KC * hdp;
}

typedef struct lp_kernels {
    const char *name; /* "scalar", "avx2", "avx512", "neon" */

    /* ---- matmul: Y[t, r] = sum_i X[t, i] * W[r, i] for rows r in [r0, r1)
     * X: (T, n_in) f32; W: (n_out, n_in); Y: (T, ldy). Threads split r. */
    void (*gemm_f32)(int T, int n_in, const float *X, const float *W,
                     float *Y, int ldy, int r0, int r1);
    void (*gemm_f16)(int T, int n_in, const float *X, const uint16_t *W,
                     float *Y, int ldy, int r0, int r1);
    /* int8: X already quantized per block (T, n_in/32) by quantize_q8. */
    void (*gemm_q8)(int T, int n_in, const lp_block_q8 *Xq,
                    const lp_block_q8 *W, float *Y, int ldy, int r0, int r1);
    /* x (n) -> n/32 blocks, scale = max|x|/127, round to nearest. */
    void (*quantize_q8)(const float *x, lp_block_q8 *y, int n);
    /* int8 packed weights (LP_Q8P, quant/blocks.h): Y[t, r] = sum over
     * blocks b of (float)(dot(q_x, q_w) over b) * (d_x[t, b] * d_w[r, b]),
     * for rows r of groups [g0, g1) with r < n_out (the padding rows of the
     * last group are not written). Threads split groups. */
    void (*gemm_q8p)(int T, int n_in, const lp_q8_act *X, const uint8_t *W,
                     int n_out, float *Y, int ldy, int g0, int g1);
    /* One activation row x (n) -> qs (n), d (n/32), corr (n/32). */
    void (*quantize_q8a)(const float *x, int n, int8_t *qs, float *d, int32_t *corr);
    /* Optional (NULL in all tables but amx): quantized activations laid out
     * for this table's gemm_q8p, once per matmul rather than once per call.
     * q8a_tiles_bytes(T, n_in): the bytes for T rows; pack_q8a(X, n_in, i,
     * b0, b1, tiles): blocks [b0, b1) of rows [16i, 16i + 16) of X into
     * tiles, which holds all T rows (the last T % 16 rows are never
     * packed). gemm_q8p reads X->tiles if set, else lays the rows out
     * itself. */
    size_t (*q8a_tiles_bytes)(int T, int n_in);
    void (*pack_q8a)(const lp_q8_act *X, int n_in, int i, int b0, int b1, int8_t *tiles);
    /* f16 weights in bf16 arithmetic, for prefill: Y[t, r] = sum_i Xb[t, i]
     * * bf16(W[r, i]), Xb (T, n_in) bf16 from f32_to_bf16, each f16 weight
     * rounded to bf16 (nearest even), products exact, sums in f32 (the
     * semantics of vdpbf16ps and of AMX bf16 tiles). n_in % 32 == 0. NULL
     * in tables that compute f16 matmuls exactly (all but avx512bf16). */
    void (*gemm_f16_bf16)(int T, int n_in, const uint16_t *Xb, const uint16_t *W,
                          float *Y, int ldy, int r0, int r1);
    /* x (n) f32 -> bf16, nearest even; NULL where gemm_f16_bf16 is. */
    void (*f32_to_bf16)(const float *x, uint16_t *y, int n);

    /* ---- attention heads [h0, h1) of one call */
    void (*attention)(const lp_attn_args *a, int h0, int h1);

    /* ---- vector ops (n elements) */
    float (*dot_f32)(const float *a, const float *b, int n);
    void (*rmsnorm)(float *out, const float *x, const float *w, int n, float eps);
    void (*layernorm)(float *out, const float *x, const float *w,
                      const float *b, int n, float eps);
    void (*softmax)(float *x, int n);               /* in place, max-subtracted */
    void (*gelu_tanh)(float *x, int n);             /* in place, gelu_new */
    void (*gelu_erf)(float *x, int n);              /* in place, exact */
    void (*swiglu)(float *out, const float *gate, const float *up, int n); /* silu(g)*u */
    /* Rotates n_heads vectors of head_dim in place; only the first rot_dim
     * dims rotate. cs/sn: (rot_dim/2) for this position. neox=1: pairs
     * (i, i+rot_dim/2) (HF rotate_half); neox=0: pairs (2i, 2i+1) (GGUF). */
    void (*rope)(float *x, int n_heads, int head_dim, int rot_dim,
                 const float *cs, const float *sn, int neox);
    void (*add)(float *y, const float *x, int n);   /* y += x */
    void (*f16_to_f32)(const uint16_t *x, float *y, int n);
    void (*f32_to_f16)(const float *x, uint16_t *y, int n);
} lp_kernels;

/* The scalar reference table; always available. */
extern const lp_kernels lp_kernels_scalar;

/* Reference twins of the bf16 entries (not in the scalar table, which
 * computes f16 matmuls exactly): what the avx512bf16 table is tested
 * against. Denormal bf16 values count as zero, as in vdpbf16ps. */
uint16_t lp_ref_bf16_round(float f);
void lp_ref_f32_to_bf16(const float *x, uint16_t *y, int n);
void lp_ref_gemm_f16_bf16(int T, int n_in, const uint16_t *Xb, const uint16_t *W, float *Y,
                          int ldy, int r0, int r1);

/* The table in use: chosen on first call from CPU features and LOUPE_ISA. */
const lp_kernels *lp_kern(void);
/* Forces a table by name; returns 0 on success, -1 if unknown, -2 if this
 * CPU cannot run it. */
int lp_kern_force(const char *name);
/* Table by name if this CPU can run it, else NULL (for tests and benches). */
const lp_kernels *lp_kern_get(const char *name);
/* NULL-terminated list of every table name compiled in. */
const char *const *lp_kern_names(void);
/* Human-readable CPU feature report and the reason for the choice. */
size_t lp_cpu_report(char *buf, size_t cap);
/* Chooses again from the CPU features and LOUPE_ISA, as on first use
 * (for tests; must not race with kernel calls on other threads). */
void lp_kern_reset(void);

#endif /* LOUPE_KERNELS_H */
