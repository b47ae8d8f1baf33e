/*
 * attn_block.h — the ISA-free halves of attention that avx512.c, avx2.c and
 * neon.c share.
 *
 * Decode (T < LP_ATTN_MIN_T): lp_attn_decode, one query and one head at a
 * time. Each ISA file supplies the scores and the value sums
 * (lp_attn_decode_ops). At decode the cache comes from DRAM (the weights
 * read since the layer last ran have evicted it), so these should read a
 * head's keys, then its values, in order: with the session's head-major
 * cache (kv_row_ld = head_dim) that is one sequential read each.
 *
 * Prefill: the blocked kernel, avx512.c (16 lanes), avx2.c and neon.c (8
 * lanes): block layout, transposing the queries in, the loop over key
 * chunks, and writing the outputs (and probabilities) back. Each ISA file
 * supplies the vector half:
 * copying a chunk of keys or values, scores, the lane-wise softmax, and
 * the value sums (lp_attn_block_ops).
 *
 * One block: queries t0..t0+nq-1 of head h, one per lane. Scores of key j
 * for the block are row j of S (lanes floats): S[j] = scale * sum_i
 * K[j,i] Qt[i], then exp(S[j] - max), so the softmax over keys is
 * lane-wise; Ot[d] = sum_j V[j,d] S[j]. Keys and values are read
 * LP_ATTN_KC rows at a time, in place from an f32 cache whose rows are a
 * multiple of 16 floats, else copied (f16 converted) into C, rows padded
 * to hdp = head_dim rounded up to 16 and zero-filled. Plain C: included
 * by files built with ISA flags, it holds no intrinsics.
 */
#ifndef LOUPE_SIMD_ATTN_BLOCK_H
#define LOUPE_SIMD_ATTN_BLOCK_H

#include <string.h>

#include "kernels.h"

typedef struct {
    const lp_attn_args *a;
    int lanes;        /* queries per block: the vector width */
    int hd, hdp;      /* head_dim and head_dim rounded up to 16 */
    size_t kv_ld;     /* row stride of k, v */
    size_t kv_off;    /* where this head's KV head starts in k, v */
    int t0, nq;       /* queries t0..t0+nq-1 */
    int n_keys;       /* keys any of them sees: pos0 + t0 + nq */
    float *S;         /* (n_keys rounded up to KC, lanes) scores, then exp */
    float *Qt;        /* (hdp, lanes) queries transposed, zero lanes >= nq */
    float *Ot;        /* (hdp, lanes) outputs transposed, unnormalised */
    float *C;         /* (KC, hdp) one chunk of keys or values */
    const float *K;   /* the chunk the ops read, rows hdp apart: C, or the
                         cache itself where its rows are f32, hdp long and
                         all below n_keys (lp_attn_chunk) */
} lp_attn_block;

typedef struct {
    /* rows j0..j0+rows-1 of a K or V cache into b->C, zero beyond the
     * head's columns and beyond b->n_keys */
    void (*load_chunk)(const lp_attn_block *b, const void *cache, int j0, int rows);
    /* S[j0 .. j0+rows) from the keys in b->K (rows % 8 == 0); -inf where a
     * lane's query comes before the key */
    void (*scores)(const lp_attn_block *b, int j0, int rows);
    /* S[j] = exp(S[j] - max_j S) over n rows; lane-wise sums into sum */
    void (*softmax)(float *S, int n, int lanes, float *sum);
    /* Ot += V^T S over the values j0..j0+rows-1 in b->K */
    void (*values)(const lp_attn_block *b, int j0, int rows);
} lp_attn_block_ops;

/* out (and probs) of the block's queries: Ot / sum, transposed. */
static inline void lp_attn_block_write(const lp_attn_block *b, int h, const float *sum) {
    const lp_attn_args *a = b->a;
    const size_t q_ld = (size_t)a->n_heads * b->hd;
    for (int l = 0; l < b->nq; l++) {
        const int t = b->t0 + l;
        const float inv = 1.0f / sum[l];
        float *out = a->out + (size_t)t * q_ld + (size_t)h * b->hd; // (hd)
        for (int d = 0; d < b->hd; d++) out[d] = b->Ot[(size_t)d * b->lanes + l] * inv;
        if (!a->probs) continue;
        float *p = a->probs + ((size_t)h * a->T + t) * a->probs_ld; // (probs_ld)
        const int seen = a->pos0 + t + 1;
        for (int j = 0; j < seen; j++) p[j] = b->S[(size_t)j * b->lanes + l] * inv;
        memset(p + seen, 0, (size_t)(a->probs_ld - seen) * sizeof *p);
    }
}

/* Points b->K at rows j0..j0+rows-1 of cache: in place when they are f32
 * rows of exactly hdp floats, all of them keys (prefill with the default
 * cache and head_dim 64 or 128: no copy), else copied into b->C. */
static inline void lp_attn_chunk(lp_attn_block *b, const lp_attn_block_ops *ops,
                                 const void *cache, int j0, int rows) {
    if (b->a->kv_type == LP_F32 && b->hd == b->hdp && b->kv_ld == (size_t)b->hd &&
        j0 + rows <= b->n_keys) {
        b->K = (const float *)cache + (size_t)j0 * b->kv_ld + b->kv_off;
        return;
    }
    ops->load_chunk(b, cache, j0, rows);
    b->K = b->C;
}

/* All queries of head h, `lanes` at a time (lanes <= LP_ATTN_QB). */
static inline void lp_attn_head_blocked(const lp_attn_args *a, int h, int lanes,
                                        const lp_attn_block_ops *ops) {
    const int hd = a->head_dim, hdp = (hd + 15) / 16 * 16, KC = LP_ATTN_KC;
    lp_attn_block b = {.a = a, .lanes = lanes, .hd = hd, .hdp = hdp};
    b.kv_ld = a->kv_row_ld;
    b.kv_off = lp_attn_kv_off(a, h);
    const int keys_max = (a->pos0 + a->T + KC - 1) / KC * KC;
    b.S = a->scratch; /* lp_attn_scratch_floats counts LP_ATTN_QB lanes */
    b.Qt = b.S + (size_t)keys_max * lanes;
    b.Ot = b.Qt + (size_t)hdp * lanes;
    b.C = b.Ot + (size_t)hdp * lanes;
    const size_t q_ld = (size_t)a->n_heads * hd;
    for (b.t0 = 0; b.t0 < a->T; b.t0 += lanes) {
        b.nq = a->T - b.t0 < lanes ? a->T - b.t0 : lanes;
        b.n_keys = a->pos0 + b.t0 + b.nq;
        memset(b.Qt, 0, (size_t)hdp * lanes * sizeof(float));
        memset(b.Ot, 0, (size_t)hdp * lanes * sizeof(float));
        for (int l = 0; l < b.nq; l++)
            for (int i = 0; i < hd; i++)
                b.Qt[(size_t)i * lanes + l] = a->q[(size_t)(b.t0 + l) * q_ld + (size_t)h * hd + i];
        const int n_rows = (b.n_keys + 7) / 8 * 8; /* score rows, masked past n_keys */
        for (int j0 = 0; j0 < n_rows; j0 += KC) {
            const int rows = n_rows - j0 < KC ? n_rows - j0 : KC;
            lp_attn_chunk(&b, ops, a->k, j0, rows);
            ops->scores(&b, j0, rows);
        }
        float sum[LP_ATTN_QB];
        ops->softmax(b.S, n_rows, lanes, sum);
        for (int j0 = 0; j0 < n_rows; j0 += KC) {
            const int rows = n_rows - j0 < KC ? n_rows - j0 : KC;
            lp_attn_chunk(&b, ops, a->v, j0, rows);
            ops->values(&b, j0, rows);
        }
        lp_attn_block_write(&b, h, sum);
    }
}

/* ------------------------------------------------------------ decode */

typedef struct {
    /* S[j] = scale * dot(q, key j of head h's KV head), j < n_keys */
    void (*scores)(const lp_attn_args *a, int h, const float *q, int n_keys, float *S);
    /* out = sum_j S[j] * value j of head h's KV head, j < n_keys */
    void (*values)(const lp_attn_args *a, int h, const float *S, int n_keys, float *out);
    /* x = softmax(x) over n */
    void (*softmax)(float *x, int n);
} lp_attn_decode_ops;

/* Heads [h0, h1) of every query, one query at a time. */
static inline void lp_attn_decode(const lp_attn_args *a, int h0, int h1,
                                  const lp_attn_decode_ops *ops) {
    const int hd = a->head_dim;
    const size_t q_ld = (size_t)a->n_heads * hd;
    float *S = a->scratch; // (pos0+T)
    for (int h = h0; h < h1; h++)
        for (int t = 0; t < a->T; t++) {
            const int n_keys = a->pos0 + t + 1;
            ops->scores(a, h, a->q + t * q_ld + (size_t)h * hd, n_keys, S);
            ops->softmax(S, n_keys);
            ops->values(a, h, S, n_keys, a->out + t * q_ld + (size_t)h * hd);
            if (!a->probs) continue;
            float *p = a->probs + ((size_t)h * a->T + t) * a->probs_ld; // (probs_ld)
            memcpy(p, S, (size_t)n_keys * sizeof *p);
            memset(p + n_keys, 0, (size_t)(a->probs_ld - n_keys) * sizeof *p);
        }
}

#endif /* LOUPE_SIMD_ATTN_BLOCK_H */
