/*
 * avx512.c — kernels for x86-64 with AVX-512 F/BW/VL/DQ and VNNI
 * (Ice Lake, Cascade Lake, Zen 4 and later). Matmuls and the
 * transcendental vector ops use 16-wide vectors; the int8 matmul uses
 * vpdpbusd. Short or memory-bound ops reuse the AVX2 versions, which the
 * same CPU runs at the same speed.
 */
#include <immintrin.h>

#include <math.h>
#include <sleef.h>
#include <string.h>

#include "attn_block.h"
#include "avx2.h"

#define LP_INLINE static inline __attribute__((always_inline))
/* Loops over the TT tokens / RT rows of a tile: constant trip counts, fully
 * unrolled so that acc[][] stays in registers (also at -O2). */
#define for_tokens(a) _Pragma("GCC unroll 4") for (int a = 0; a < TT; a++)
#define for_rows(b) _Pragma("GCC unroll 4") for (int b = 0; b < RT; b++)

/* -------------------------------------------------------------- helpers */

/* Lanes [0, min(m,16)). Masked loads never touch memory of masked lanes. */
LP_INLINE __mmask16 first16(int m) {
    return m >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << m) - 1);
}

LP_INLINE __m512 ld(const float *p, int m) {
    return m >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(first16(m), p);
}

LP_INLINE void st(float *p, __m512 v, int m) {
    if (m >= 16) _mm512_storeu_ps(p, v);
    else _mm512_mask_storeu_ps(p, first16(m), v);
}

LP_INLINE __m512 ld_h(const uint16_t *p, int m) {
    const __m256i h = m >= 16 ? _mm256_loadu_si256((const __m256i *)p)
                              : _mm256_maskz_loadu_epi16(first16(m), p);
    return _mm512_cvtph_ps(h);
}

/* ------------------------------------------------------ gemm f32 / f16 */

/* One step of a tile: acc[a][b] += x[a][i, i+m) * w[b][i, i+m); m = 16
 * is the constant full-vector case, m < 16 the masked tail. */
LP_INLINE void gemm_step(const int TT, const int RT, const int F16, const float *const *x,
                         const void *const *w, int i, int m, __m512 acc[4][4]) {
    __m512 wv[4];
    for_rows(b) wv[b] = F16 ? ld_h((const uint16_t *)w[b] + i, m) : ld((const float *)w[b] + i, m);
    for_tokens(a) {
        const __m512 xv = ld(x[a] + i, m);
        for_rows(b) acc[a][b] = _mm512_fmadd_ps(xv, wv[b], acc[a][b]);
    }
}

/* 4 tokens x 4 rows = 16 accumulators of the 32 zmm registers. */
LP_INLINE void gemm_tile(const int TT, const int RT, const int F16, int n_in, const float *X,
                         const void *W, float *Y, int ldy, int t0, int r0) {
    __m512 acc[4][4];
    const float *x[4];
    const void *w[4];
    const size_t esize = F16 ? sizeof(uint16_t) : sizeof(float);
    for_tokens(a) x[a] = X + (size_t)(t0 + a) * n_in;
    for_rows(b) w[b] = (const char *)W + (size_t)(r0 + b) * n_in * esize;
    for_tokens(a)
        for_rows(b) acc[a][b] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n_in; i += 16) gemm_step(TT, RT, F16, x, w, i, 16, acc);
    if (i < n_in) gemm_step(TT, RT, F16, x, w, i, n_in - i, acc);
    for_tokens(a)
        for_rows(b) Y[(size_t)(t0 + a) * ldy + r0 + b] = _mm512_reduce_add_ps(acc[a][b]);
}

LP_INLINE void gemm_rows(const int F16, int T, int n_in, const float *X, const void *W,
                         float *Y, int ldy, int r0, int r1) {
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        int t = 0;
        for (; t + 4 <= T; t += 4) gemm_tile(4, 4, F16, n_in, X, W, Y, ldy, t, r);
        for (; t < T; t++) gemm_tile(1, 4, F16, n_in, X, W, Y, ldy, t, r);
    }
    for (; r < r1; r++) {
        int t = 0;
        for (; t + 4 <= T; t += 4) gemm_tile(4, 1, F16, n_in, X, W, Y, ldy, t, r);
        for (; t < T; t++) gemm_tile(1, 1, F16, n_in, X, W, Y, ldy, t, r);
    }
}

static void gemm_f32(int T, int n_in, const float *X, const float *W, float *Y,
                     int ldy, int r0, int r1) {
    gemm_rows(0, T, n_in, X, W, Y, ldy, r0, r1);
}

/* Decode (T = 1) with fp16 weights: a read of the matrix from DRAM. RT
 * streams: stream b reads rows r0 + b*q .. r0 + b*q + q-1 (q = rows / RT),
 * one long sequential read across rows that the hardware prefetcher keeps
 * ahead of; a whole 64-byte line of each row per step, two accumulators
 * per row. Two streams read fastest while x (fp32, 2 bytes per weight
 * byte) stays in L1; for longer rows x comes from L2 and eight rows share
 * each x load. Zen 4, GB/s (plain read 20-26): 2048-wide rows 4 or 8
 * adjacent rows per tile 16-19, RT = 2 20-28; 5632-wide rows RT = 2 15-17,
 * RT = 8 16-20 (x from L1 would give 22-25: the rest is x traffic).
 * Each stream also prefetches F16_DECODE_PF bytes ahead: the hardware
 * prefetcher stops at every 4 KB page (a 2048-wide row), and page cache
 * under a hypervisor can read far slower than anonymous memory when left
 * to it. Xeon (AMX, KVM) TinyLlama decode +13-20%, GPT-2 +12-25%. */
#define F16_DECODE_PF 2048
LP_INLINE void gemv_f16(const int RT, int n_in, const float *x, const uint16_t *W, float *y,
                        int r0, int r1) {
    const int q = (r1 - r0) / RT;
    for (int k = r0; k < r0 + q; k++) {
        __m512 a0[8], a1[8];
        const uint16_t *w[8]; // (n_in) each
#pragma GCC unroll 8
        for (int b = 0; b < RT; b++) {
            a0[b] = a1[b] = _mm512_setzero_ps();
            w[b] = W + (size_t)(k + b * q) * n_in;
        }
        int i = 0;
        for (; i + 32 <= n_in; i += 32) {
            const __m512 x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + 16);
#pragma GCC unroll 8
            for (int b = 0; b < RT; b++) {
                _mm_prefetch((const char *)(w[b] + i) + F16_DECODE_PF, _MM_HINT_T0);
                a0[b] = _mm512_fmadd_ps(x0, ld_h(w[b] + i, 16), a0[b]);
                a1[b] = _mm512_fmadd_ps(x1, ld_h(w[b] + i + 16, 16), a1[b]);
            }
        }
        for (; i < n_in; i += 16) {
            const __m512 x0 = ld(x + i, n_in - i);
#pragma GCC unroll 8
            for (int b = 0; b < RT; b++) a0[b] = _mm512_fmadd_ps(x0, ld_h(w[b] + i, n_in - i), a0[b]);
        }
#pragma GCC unroll 8
        for (int b = 0; b < RT; b++) y[k + b * q] = _mm512_reduce_add_ps(_mm512_add_ps(a0[b], a1[b]));
    }
}

static void gemm_f16(int T, int n_in, const float *X, const uint16_t *W, float *Y,
                     int ldy, int r0, int r1) {
    if (T == 1) {
        const int RT = n_in <= 4096 ? 2 : 8; /* x (4 n_in bytes) fits L1 with room to spare */
        if (RT == 2) gemv_f16(2, n_in, X, W, Y, r0, r1);
        else gemv_f16(8, n_in, X, W, Y, r0, r1);
        r0 += (r1 - r0) / RT * RT; /* < RT rows left */
    }
    gemm_rows(1, T, n_in, X, W, Y, ldy, r0, r1);
}

/* -------------------------------------------------------------- gemm q8 */

/* Two consecutive blocks per zmm: lanes 0-7 hold block k's int32 sums,
 * lanes 8-15 block k+1's, so the scale vector has d_k in its low half and
 * d_{k+1} in its high half. With one block left (nb odd) the high half is
 * zero and contributes nothing. */
LP_INLINE __m512i load_qs(const lp_block_q8 *b, const int two) {
    const __m512i lo = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)b[0].qs));
    return two ? _mm512_inserti64x4(lo, _mm256_loadu_si256((const __m256i *)b[1].qs), 1) : lo;
}

LP_INLINE __m512 load_d(const lp_block_q8 *b, const int two) {
    const __m512 lo = _mm512_set1_ps(_cvtsh_ss(b[0].d));
    return two ? _mm512_insertf32x8(lo, _mm256_set1_ps(_cvtsh_ss(b[1].d)), 1) : lo;
}

/* vpdpbusd multiplies unsigned by signed bytes: |w| times x with w's sign
 * equals w * x (w, x in [-127, 127] as quantize_q8 produces). */
LP_INLINE void q8_step(const int TT, const int RT, const int two, const lp_block_q8 *const *x,
                       const lp_block_q8 *const *w, int k, __m512 acc[4][4]) {
    __m512i wa[4];
    __mmask64 wneg[4];
    __m512 dw[4];
    for_rows(b) {
        const __m512i wq = load_qs(w[b] + k, two);
        wa[b] = _mm512_abs_epi8(wq);
        wneg[b] = _mm512_movepi8_mask(wq);
        dw[b] = load_d(w[b] + k, two);
    }
    for_tokens(a) {
        const __m512i xq = load_qs(x[a] + k, two);
        const __m512 dx = load_d(x[a] + k, two);
        for_rows(b) {
            const __m512i sx = _mm512_mask_sub_epi8(xq, wneg[b], _mm512_setzero_si512(), xq);
            const __m512i is = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wa[b], sx);
            acc[a][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(dx, dw[b]), acc[a][b]);
        }
    }
}

LP_INLINE void tile_q8(const int TT, const int RT, int nb, const lp_block_q8 *X,
                       const lp_block_q8 *W, float *Y, int ldy, int t0, int r0) {
    __m512 acc[4][4];
    const lp_block_q8 *x[4], *w[4];
    for_tokens(a) x[a] = X + (size_t)(t0 + a) * nb;
    for_rows(b) w[b] = W + (size_t)(r0 + b) * nb;
    for_tokens(a)
        for_rows(b) acc[a][b] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 2 <= nb; k += 2) q8_step(TT, RT, 1, x, w, k, acc);
    if (k < nb) q8_step(TT, RT, 0, x, w, k, acc);
    for_tokens(a)
        for_rows(b)
            Y[(size_t)(t0 + a) * ldy + r0 + b] = _mm512_reduce_add_ps(acc[a][b]);
}

static void gemm_q8(int T, int n_in, const lp_block_q8 *Xq, const lp_block_q8 *W,
                    float *Y, int ldy, int r0, int r1) {
    const int nb = n_in / LP_QK8;
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        int t = 0;
        for (; t + 4 <= T; t += 4) tile_q8(4, 4, nb, Xq, W, Y, ldy, t, r);
        for (; t < T; t++) tile_q8(1, 4, nb, Xq, W, Y, ldy, t, r);
    }
    for (; r < r1; r++) {
        int t = 0;
        for (; t + 4 <= T; t += 4) tile_q8(4, 1, nb, Xq, W, Y, ldy, t, r);
        for (; t < T; t++) tile_q8(1, 1, nb, Xq, W, Y, ldy, t, r);
    }
}

/* ------------------------------------------------------ gemm q8 packed */

/* Tiles of TT tokens x NG groups of 16 rows (LP_Q8P, quant/blocks.h). Per
 * block b: acc_i[t][g] = corr[t][b], then for each of the 8 k-quads j one
 * vpdpbusd with the 64-byte weight load (4 k of 16 rows, unsigned q+128) and
 * x[t][32b+4j..+3] broadcast from memory; then one fma scales the 16 int32
 * sums by d_w[b][0..15] * d_x[t][b]. No horizontal sums: lane i is row i. */
#define Q8P_MR 6 /* tokens per tile: 6 x 2 x (int32 + f32) = 24 zmm accumulators */
/* Loops over the TT tokens / NG groups of a tile, fully unrolled so that
 * every accumulator is a register. */
#define for_tok(a) _Pragma("GCC unroll 8") for (int a = 0; a < TT; a++)
#define for_grp(n) _Pragma("GCC unroll 4") for (int n = 0; n < NG; n++)

/* Broadcasts 4 activation bytes as one int32 (memcpy: any alignment). */
LP_INLINE __m512i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* One tile: tokens [t0, t0+TT) x groups g, g+gs, ... (NG of them); writes
 * rows < n_out. pf, if not NULL, is where the next groups start: the tile
 * prefetches pf_bytes of them into L2, spread over its blocks. */
#define Q8P_DECODE_PF 1024 /* see gemv_q8p */
LP_INLINE void q8p_tile(const int TT, const int NG, int n_in, const lp_q8_act *X,
                        const uint8_t *W, int n_out, float *Y, int ldy, int t0, int g, int gs,
                        const uint8_t *pf, size_t pf_bytes) {
    const int nb = n_in / LP_QK8;
    const uint8_t *grp[4];  /* (nb, 544) each */
    const int8_t *xq[Q8P_MR]; /* (n_in) each */
    const float *xd[Q8P_MR];  /* (nb) each */
    const int32_t *xc[Q8P_MR];
    __m512 acc[Q8P_MR][4];
    for_grp(n) grp[n] = W + (size_t)(g + n * gs) * LP_Q8P_GROUP_BYTES(n_in);
    if (TT == 1) /* decode: fetch the scales now, the values stream after them */
        for_grp(n) for (int i = 0; i < nb * 32; i += 64) _mm_prefetch((const char *)grp[n] + i, _MM_HINT_T0);
    for_tok(a) {
        xq[a] = X->qs + (size_t)(t0 + a) * n_in;
        xd[a] = X->d + (size_t)(t0 + a) * nb;
        xc[a] = X->corr + (size_t)(t0 + a) * nb;
        for_grp(n) acc[a][n] = _mm512_setzero_ps();
    }
    const size_t pf_step = pf_bytes / (size_t)nb; /* n_next x 544 bytes per block */
    for (int b = 0; b < nb; b++) {
        __m512i ai[Q8P_MR][4];
        const uint8_t *qs[4]; /* (8, 16, 4) each */
        if (pf)
            for (size_t i = 0; i < pf_step; i += 64)
                _mm_prefetch((const char *)pf + b * pf_step + i, _MM_HINT_T1);
        for_grp(n) qs[n] = grp[n] + (size_t)nb * 32 + (size_t)b * 512;
        if (TT == 1) /* decode: see gemv_q8p */
            for_grp(n) for (int j = 0; j < 8; j++)
                _mm_prefetch((const char *)qs[n] + Q8P_DECODE_PF + 64 * j, _MM_HINT_T0);
        for_tok(a)
            for_grp(n) ai[a][n] = _mm512_set1_epi32(xc[a][b]);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            __m512i w[4];
            for_grp(n) w[n] = _mm512_loadu_si512(qs[n] + 64 * j);
            for_tok(a) {
                const __m512i xb = bcast4(xq[a] + 32 * b + 4 * j);
                for_grp(n) ai[a][n] = _mm512_dpbusd_epi32(ai[a][n], w[n], xb);
            }
        }
        for_grp(n) {
            const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(grp[n] + 32 * b)));
            for_tok(a) {
                const __m512 s = _mm512_mul_ps(dw, _mm512_set1_ps(xd[a][b]));
                acc[a][n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai[a][n]), s, acc[a][n]);
            }
        }
    }
    for_grp(n) {
        const int r = (g + n * gs) * LP_Q8P_ROWS, rows = n_out - r; /* < 16: the last group */
        for_tok(a) st(Y + (size_t)(t0 + a) * ldy + r, acc[a][n], rows);
    }
}

/* All token tiles of groups [g, g+NG): the tail tile has 1..MR-1 tokens.
 * The first tile prefetches the next n_next groups, so that the other
 * tiles' compute hides their trip from DRAM (matrices larger than L3). */
LP_INLINE void q8p_groups(const int NG, int T, int n_in, const lp_q8_act *X, const uint8_t *W,
                          int n_out, float *Y, int ldy, int g, int n_next) {
    const size_t gb = LP_Q8P_GROUP_BYTES(n_in);
    const uint8_t *pf = n_next ? W + (size_t)(g + NG) * gb : NULL;
    const size_t pf_bytes = (size_t)n_next * gb;
    int t = 0;
    for (; t + Q8P_MR <= T; t += Q8P_MR, pf = NULL)
        q8p_tile(Q8P_MR, NG, n_in, X, W, n_out, Y, ldy, t, g, 1, pf, pf_bytes);
    switch (T - t) {
    case 5: q8p_tile(5, NG, n_in, X, W, n_out, Y, ldy, t, g, 1, pf, pf_bytes); break;
    case 4: q8p_tile(4, NG, n_in, X, W, n_out, Y, ldy, t, g, 1, pf, pf_bytes); break;
    case 3: q8p_tile(3, NG, n_in, X, W, n_out, Y, ldy, t, g, 1, pf, pf_bytes); break;
    case 2: q8p_tile(2, NG, n_in, X, W, n_out, Y, ldy, t, g, 1, pf, pf_bytes); break;
    case 1: q8p_tile(1, NG, n_in, X, W, n_out, Y, ldy, t, g, 1, pf, pf_bytes); break;
    default: break;
    }
}

/* Decode (T = 1) is a read of the whole matrix from DRAM. Two streams:
 * stream n walks groups g0 + n*q .. g0 + n*q + q-1, a contiguous range, so
 * each stream is one long sequential read that the hardware prefetcher
 * keeps ahead of, across groups; the scales at the head of each group are
 * prefetched when the group starts. (Measured on Zen 4: 4 adjacent groups
 * per tile read 16-20 GB/s at n_in = 768, this 19-24, a plain read 20-25.)
 * Each stream also prefetches Q8P_DECODE_PF bytes (two blocks) ahead of
 * its loads, past the 4 KB pages the hardware prefetcher stops at: on a
 * Xeon under KVM, TinyLlama decode +11%, GPT-2 +12-16%. */
static void gemv_q8p(int n_in, const lp_q8_act *X, const uint8_t *W, int n_out, float *Y,
                     int g0, int g1) {
    const int q = (g1 - g0) / 2;
    for (int k = 0; k < q; k++) q8p_tile(1, 2, n_in, X, W, n_out, Y, 0, 0, g0 + k, q, NULL, 0);
    if (g0 + 2 * q < g1) q8p_tile(1, 1, n_in, X, W, n_out, Y, 0, 0, g1 - 1, 1, NULL, 0);
}

/* Prefill: groups outer, tokens inner; a pair of groups (2 x nb x 544
 * bytes) stays in L2 while every token tile passes over it. */
static void gemm_q8p(int T, int n_in, const lp_q8_act *X, const uint8_t *W, int n_out,
                     float *Y, int ldy, int g0, int g1) {
    if (T == 1) {
        gemv_q8p(n_in, X, W, n_out, Y, g0, g1);
        return;
    }
    int g = g0;
    for (; g + 2 <= g1; g += 2) /* the next pair (or single group) is prefetched */
        q8p_groups(2, T, n_in, X, W, n_out, Y, ldy, g, g1 - g - 2 < 2 ? g1 - g - 2 : 2);
    if (g < g1) q8p_groups(1, T, n_in, X, W, n_out, Y, ldy, g, 0);
}

/* Rounds half away from zero exactly like roundf: truncate |v|, add 1 when
 * the dropped fraction (exact in fp32) is >= 0.5, restore the sign. */
LP_INLINE __m512 round_away(__m512 v) {
    const __m512 a = _mm512_abs_ps(v);
    const __m512 t = _mm512_roundscale_ps(a, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __mmask16 up = _mm512_cmp_ps_mask(_mm512_sub_ps(a, t), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __m512 r = _mm512_mask_add_ps(t, up, t, _mm512_set1_ps(1.0f));
    return _mm512_castsi512_ps(_mm512_or_si512(
        _mm512_castps_si512(r),
        _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32((int)0x80000000u))));
}

/* Lane b of the result: the max (or sum) of the 16 lanes of v[b]. Four
 * rounds each halve the vectors and the lanes per block; v holds the
 * blocks in the order 0 4 8 12 1 5 9 13 .. (SIXTEEN_ORDER), for which the
 * lanes come out in block order. */
#define SIXTEEN_ORDER(k) (4 * ((k) % 4) + (k) / 4)
#define REDUCE16(name, op)                                                                     \
    LP_INLINE __m512 name(__m512 v[16]) {                                                      \
        for (int i = 0; i < 8; i++) /* 8 lanes per block */                                    \
            v[i] = op(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),                      \
                      _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));                     \
        for (int i = 0; i < 4; i++) /* 4 */                                                    \
            v[i] = op(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x88),                      \
                      _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xdd));                     \
        for (int i = 0; i < 2; i++) /* 2 */                                                    \
            v[i] = op(_mm512_shuffle_ps(v[2 * i], v[2 * i + 1], 0x44),                         \
                      _mm512_shuffle_ps(v[2 * i], v[2 * i + 1], 0xee));                        \
        return op(_mm512_shuffle_ps(v[0], v[1], 0x88), _mm512_shuffle_ps(v[0], v[1], 0xdd)); \
    }
REDUCE16(reduce16_max, _mm512_max_ps)
REDUCE16(reduce16_add, _mm512_add_ps)
#undef REDUCE16

/* One block: qs = round(x * id) (32); returns its values as floats, two
 * to a lane (integers below 2^13: their sums are exact). */
LP_INLINE __m512 q8a_block(const float *x, __m512 id, int8_t *qs) {
    const __m512 r0 = round_away(_mm512_mul_ps(_mm512_loadu_ps(x), id));
    const __m512 r1 = round_away(_mm512_mul_ps(_mm512_loadu_ps(x + 16), id));
    _mm_storeu_si128((__m128i *)qs, _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(r0)));
    _mm_storeu_si128((__m128i *)(qs + 16), _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(r1)));
    return _mm512_add_ps(r0, r1);
}

/* 16 blocks (512 values) with no NaN or inf: the per-block reductions and
 * divisions done 16 blocks at a time. Same arithmetic as quantize_q8a's
 * block loop, so the same bits. */
LP_INLINE void quantize_q8a_x16(const float *x, int8_t *qs, float *d, int32_t *corr) {
    __m512 m[16], sum[16];
    for (int k = 0; k < 16; k++) {
        const float *xb = x + SIXTEEN_ORDER(k) * LP_QK8;
        m[k] = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xb)), _mm512_abs_ps(_mm512_loadu_ps(xb + 16)));
    }
    const __m512 dv = _mm512_div_ps(reduce16_max(m), _mm512_set1_ps(127.0f));
    const __mmask16 nz = _mm512_cmp_ps_mask(dv, _mm512_set1_ps(LP_Q8_MIN_SCALE), _CMP_GE_OQ);
    _Alignas(64) float id[16];
    _mm512_store_ps(id, _mm512_maskz_div_ps(nz, _mm512_set1_ps(1.0f), dv));
    _mm512_storeu_ps(d, dv);
    for (int b = 0; b < 16; b++)
        sum[SIXTEEN_ORDER(b)] = q8a_block(x + b * LP_QK8, _mm512_set1_ps(id[b]), qs + b * LP_QK8);
    _mm512_storeu_si512(corr, _mm512_mullo_epi32(_mm512_cvtps_epi32(reduce16_add(sum)),
                                                  _mm512_set1_epi32(-128)));
}

/* Whether 16 blocks hold only finite values. */
LP_INLINE int finite_x16(const float *x) {
    __mmask16 bad = 0;
    for (int i = 0; i < 16 * LP_QK8; i += 16) bad |= _mm512_fpclass_ps_mask(_mm512_loadu_ps(x + i), 0x99);
    return bad == 0;
}

/* Bit-identical to the scalar twin: same fp32 d = amax / 127, same
 * x * (1/d), same rounding; corr from the exact int32 sum. */
static void quantize_q8a(const float *x, int n, int8_t *qs, float *d, int32_t *corr) {
    int b = 0;
    for (; b + 16 <= n / LP_QK8; b += 16) {
        const size_t o = (size_t)b * LP_QK8;
        if (!finite_x16(x + o)) break;
        quantize_q8a_x16(x + o, qs + o, d + b, corr + b);
    }
    for (; b < n / LP_QK8; b++) {
        const __m512 v0 = _mm512_loadu_ps(x + (size_t)b * LP_QK8);
        const __m512 v1 = _mm512_loadu_ps(x + (size_t)b * LP_QK8 + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        if (_mm512_fpclass_ps_mask(v0, 0x99) | _mm512_fpclass_ps_mask(v1, 0x99)) { /* NaN, inf */
            lp_q8a_nonfinite(qs + (size_t)b * LP_QK8, &d[b], &corr[b]);
            continue;
        }
        d[b] = amax / 127.0f;
        const __m512 id = _mm512_set1_ps(lp_q8_inverse(d[b]));
        const __m512 sum = q8a_block(x + (size_t)b * LP_QK8, id, qs + (size_t)b * LP_QK8);
        corr[b] = -128 * (int32_t)_mm512_reduce_add_ps(sum);
    }
}

/* ----------------------------------------------------------- vector ops */

static float dot_f32(const float *a, const float *b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) s0 = _mm512_fmadd_ps(ld(a + i, n - i), ld(b + i, n - i), s0);
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static void softmax(float *x, int n) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < n; i += 16) mx = _mm512_mask_max_ps(mx, first16(n - i), mx, ld(x + i, n - i));
    const __m512 maxv = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        const int m = n - i;
        const __m512 e = _mm512_maskz_mov_ps(first16(m), Sleef_expf16_u10avx512f(
                                                             _mm512_sub_ps(ld(x + i, m), maxv)));
        sum = _mm512_add_ps(sum, e);
        st(x + i, e, m);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int i = 0; i < n; i += 16) st(x + i, _mm512_mul_ps(ld(x + i, n - i), inv), n - i);
}

/* 0.5 v (1 + tanh(u)) = v / (1 + exp(-2u)): one exp and a division cost
 * less than SLEEF's tanh, and nothing cancels for v < 0. exp overflows to
 * inf for u < -44, giving v / inf = -0, the limit. */
static void gelu_tanh(float *x, int n) {
    const __m512 k2 = _mm512_set1_ps(-2.0f * 0.7978845608028654f), c = _mm512_set1_ps(0.044715f);
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int i = 0; i < n; i += 16) {
        const __m512 v = ld(x + i, n - i);
        const __m512 m2u = _mm512_mul_ps(k2, _mm512_fmadd_ps(_mm512_mul_ps(c, v),
                                                             _mm512_mul_ps(v, v), v));
        const __m512 e = Sleef_expf16_u10avx512f(m2u);
        st(x + i, _mm512_div_ps(v, _mm512_add_ps(one, e)), n - i);
    }
}

static void gelu_erf(float *x, int n) {
    const __m512 r2 = _mm512_set1_ps(0.7071067811865476f);
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    for (int i = 0; i < n; i += 16) {
        const __m512 v = ld(x + i, n - i);
        const __m512 e = Sleef_erff16_u10avx512f(_mm512_mul_ps(v, r2));
        st(x + i, _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, e)), n - i);
    }
}

static void swiglu(float *out, const float *gate, const float *up, int n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int i = 0; i < n; i += 16) {
        const int m = n - i;
        const __m512 g = ld(gate + i, m);
        const __m512 e = Sleef_expf16_u10avx512f(_mm512_sub_ps(_mm512_setzero_ps(), g));
        const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
        st(out + i, _mm512_mul_ps(silu, ld(up + i, m)), m);
    }
}

/* ------------------------------------------------------------ attention */

/* Prefill attention, 16 queries at a time, one per lane: the vector half
 * of attn_block.h's blocked kernel. Each key is read once per block instead
 * of once per query, and no dot product needs a horizontal sum. */

/* Rows j0..j0+rows-1 of a K or V cache into b->C (rows % 8 == 0), zero
 * beyond the head's columns and beyond b->n_keys. */
static void attn_load_chunk(const lp_attn_block *b, const void *cache, int j0, int rows) {
    const int f16 = b->a->kv_type == LP_F16;
    for (int r = 0; r < rows; r++) {
        float *dst = b->C + (size_t)r * b->hdp; // (hdp)
        const size_t src = (size_t)(j0 + r) * b->kv_ld + b->kv_off;
        for (int i = 0; i < b->hdp; i += 16) {
            const int m = j0 + r < b->n_keys ? b->hd - i : 0;
            const __m512 v = m <= 0 ? _mm512_setzero_ps()
                             : f16  ? ld_h((const uint16_t *)cache + src + i, m)
                                    : ld((const float *)cache + src + i, m);
            _mm512_storeu_ps(dst + i, v); /* masked loads zero the padding */
        }
    }
}

/* S[j0 .. j0+rows) = scale * K Qt for the chunk in b->K, with keys after a
 * query's own position set to -inf in its lane. */
static void attn_scores(const lp_attn_block *b, int j0, int rows) {
    const int hd = b->hd, hdp = b->hdp;
    const __m512 scale = _mm512_set1_ps(b->a->scale);
    const int last_common = b->a->pos0 + b->t0; /* every lane sees keys <= this */
    for (int r = 0; r < rows; r += 8) {
        const float *k = b->K + (size_t)r * hdp; // (8, hdp)
        __m512 acc[8];
        _Pragma("GCC unroll 8") for (int u = 0; u < 8; u++) acc[u] = _mm512_setzero_ps();
        for (int i = 0; i < hd; i++) {
            const __m512 q = _mm512_loadu_ps(b->Qt + (size_t)i * 16);
            _Pragma("GCC unroll 8") for (int u = 0; u < 8; u++)
                acc[u] = _mm512_fmadd_ps(_mm512_set1_ps(k[u * hdp + i]), q, acc[u]);
        }
        _Pragma("GCC unroll 8") for (int u = 0; u < 8; u++) {
            const int j = j0 + r + u, late = j - last_common; /* lanes < late can't see j */
            const __mmask16 sees = late <= 0 ? (__mmask16)0xffff
                                   : late >= 16 ? (__mmask16)0 : (__mmask16)(0xffffu << late);
            const __m512 s = _mm512_mask_mul_ps(_mm512_set1_ps(-INFINITY), sees, acc[u], scale);
            _mm512_storeu_ps(b->S + (size_t)j * 16, s);
        }
    }
}

/* S[j] = exp(S[j] - max_j S) over n keys (16 lanes); lane-wise sums. */
static void attn_softmax_lanes(float *S, int n, int lanes, float *sum_out) {
    (void)lanes;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < n; j++) mx = _mm512_max_ps(mx, _mm512_loadu_ps(S + (size_t)j * 16));
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < n; j++) {
        const __m512 e = Sleef_expf16_u10avx512f(_mm512_sub_ps(_mm512_loadu_ps(S + (size_t)j * 16), mx));
        _mm512_storeu_ps(S + (size_t)j * 16, e);
        sum = _mm512_add_ps(sum, e);
    }
    _mm512_storeu_ps(sum_out, sum);
}

/* Ot += V^T P over the rows of the chunk in b->K (keys j0..j0+rows-1). */
static void attn_values(const lp_attn_block *b, int j0, int rows) {
    const int hdp = b->hdp;
    for (int d0 = 0; d0 < hdp; d0 += 16) {
        float *o = b->Ot + (size_t)d0 * 16; // (16, 16)
        __m512 acc[16];
        _Pragma("GCC unroll 16") for (int u = 0; u < 16; u++) acc[u] = _mm512_loadu_ps(o + u * 16);
        for (int r = 0; r < rows; r++) {
            const __m512 p = _mm512_loadu_ps(b->S + (size_t)(j0 + r) * 16);
            const float *v = b->K + (size_t)r * hdp + d0; // (16)
            _Pragma("GCC unroll 16") for (int u = 0; u < 16; u++)
                acc[u] = _mm512_fmadd_ps(_mm512_set1_ps(v[u]), p, acc[u]);
        }
        _Pragma("GCC unroll 16") for (int u = 0; u < 16; u++) _mm512_storeu_ps(o + u * 16, acc[u]);
    }
}

static const lp_attn_block_ops attn_ops = {attn_load_chunk, attn_scores, attn_softmax_lanes,
                                            attn_values};

/* One query at a time below LP_ATTN_MIN_T queries (decode), else blocked. */
static void attention(const lp_attn_args *a, int h0, int h1) {
    if (a->T < LP_ATTN_MIN_T) {
        lp_avx2_attention(a, h0, h1);
        return;
    }
    for (int h = h0; h < h1; h++) lp_attn_head_blocked(a, h, 16, &attn_ops);
}

/* ---------------------------------------------------------------- table */

const lp_kernels lp_kernels_avx512 = {
    .name = "avx512",
    .gemm_f32 = gemm_f32,
    .gemm_f16 = gemm_f16,
    .gemm_q8 = gemm_q8,
    .quantize_q8 = lp_avx2_quantize_q8,
    .gemm_q8p = gemm_q8p,
    .quantize_q8a = quantize_q8a,
    .attention = attention,
    .dot_f32 = dot_f32,
    .rmsnorm = lp_avx2_rmsnorm,
    .layernorm = lp_avx2_layernorm,
    .softmax = softmax,
    .gelu_tanh = gelu_tanh,
    .gelu_erf = gelu_erf,
    .swiglu = swiglu,
    .rope = lp_avx2_rope,
    .add = lp_avx2_add,
    .f16_to_f32 = lp_avx2_f16_to_f32,
    .f32_to_f16 = lp_avx2_f32_to_f16,
};
