/*
 * session.h — one conversation/request over a shared model: KV cache,
 * scratch activations, thread pool. Everything mutable lives here.
 */
#ifndef LOUPE_SESSION_H
#define LOUPE_SESSION_H

#include "model.h"
#include "threadpool.h"

/* A registered hook: layer -1 matches every layer (or a layer-less point). */
typedef struct {
    loupe_hook_point point;
    int layer;
    loupe_hook_fn fn;
    void *user;
} lp_hook;

/* A matmul's input rows (T, n) quantized for LP_Q8P weights (lp_q8_act);
 * n <= wide = max(dim, ffn_dim, n_heads*head_dim). */
typedef struct {
    int8_t *qs;       /* (T, n) */
    float *d;         /* (T, n/32) */
    int32_t *corr;    /* (T, n/32) */
    int8_t *tiles;    /* qs laid out by the table's pack_q8a (amx), grown on first use */
    size_t cap_tiles; /* bytes */
} lp_q8_buf;

struct loupe_session {
    const loupe_model *m;
    int n_ctx;           /* KV cache capacity in positions */
    int pos;             /* tokens already in the cache */
    lp_pool *pool;
    /* KV cache: (n_layers, n_kv_heads, n_ctx, head_dim) of kv_type, each
     * KV head's positions together (forward.c lp_kv_store) */
    lp_dtype kv_type;    /* LP_F32 or LP_F16 */
    void *k_cache, *v_cache;
    float *kbuf, *vbuf;  /* (T, n_kv_heads*head_dim) new keys and values, f32 */
    /* token history (for repetition penalties): (n_ctx) */
    int32_t *history;
    /* scratch for a batch of up to cap_T tokens */
    int cap_T;
    float *x;       /* (T, dim) residual stream */
    float *xn;      /* (T, dim) normed input */
    float *q;       /* (T, n_heads*head_dim) */
    float *att;     /* (T, n_heads*head_dim) attention output (z) */
    float *hb;      /* (T, ffn_dim) */
    float *hb2;     /* (T, ffn_dim) */
    float *proj;    /* (T, dim) */
    /* a matmul's input rows quantized for LP_Q8P weights: [0] the matmul
     * at hand's; [1] the MLP down matmul's, which the up matmul's epilogue
     * writes while it reads [0] */
    lp_q8_buf xq[2];
    /* ... or rounded to bf16 for f16 weights in prefill (gemm_f16_bf16):
     * the same memory as xq[0].qs (allocated for 2 bytes per element),
     * since one matmul uses one of them */
    uint16_t *xb16;  /* (T, n) */
    float *attn_scratch; /* (n_threads, attn_scratch_ld), 64-byte aligned */
    size_t attn_scratch_ld; /* lp_attn_scratch_floats(n_ctx, head_dim), a multiple of 16 */
    float *task_y;  /* (n_threads, task_y_ld) each thread's rows of a decode matmul or
                       attention (forward.c, redoable jobs); NULL with one thread */
    size_t task_y_ld; /* widest matmul output (vocabulary, ffn), a multiple of 16 */
    float *logits;  /* (n_vocab) last position */
    /* hooks */
    lp_hook *hooks;
    int n_hooks, cap_hooks;
    unsigned hooked_points; /* bit per loupe_hook_point with any hook */
    int (*abort_fn)(void *user); /* checked before every layer; survives clear_hooks */
    void *abort_user;
    float *pattern;         /* (n_heads, T, n_keys) when attn.pattern is hooked */
    size_t cap_pattern;
};

#endif
